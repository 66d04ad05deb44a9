"""The SafeTensors output's face: plan shards from the mapped tensors, write them (and the index when
there are several), and verify them."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convert.errors import ConvertError, UnsupportedFormatError
from convert.hf_folder import SAFETENSORS_INDEX
from convert.manifest_model import InferredArchitecture, Manifest
from convert.mapping import Layout
from convert.options import OPTIONS
from convert.output import write_file
from convert.output_contract import Checked, Conversion, OutputOption, Plan, Role, WriteContext, Written, option_value
from convert.safetensors_format import build_header
from convert.safetensors_source import open_safetensors
from convert.source import SourceModel
from convert.verify import compare_with_source
from convert.writer import WriteItem, write_tensor_file

from .check import SharedHeaders, check_file
from .index import index_json, index_problems
from .sharding import file_order, oversized, shard_file_names, shard_items


@dataclass(frozen=True)
class _Work:
    """The shards to write, with what every file's metadata and the index carry."""

    shards: list[list[WriteItem]]
    names: list[str]
    metadata: dict[str, str]
    total: int
    index_metadata: dict[str, str]
    index_names: list[str]


class SafeTensorsOutput:
    name = "safetensors"
    role: Role = "tensors"
    empty_error: type[ConvertError] = UnsupportedFormatError  # the README's "no tensors: exit 4"
    options: Sequence[OutputOption] = (OPTIONS["max_shard_size"],)

    def decide(self, architecture: InferredArchitecture, layout: Layout) -> None:
        return None

    def plan(self, conversion: Conversion) -> Plan:
        limit = option_value(conversion, OPTIONS["max_shard_size"])
        items = [WriteItem(m.name, m.dtype, m.ref, m.casts) for m in conversion.kept]
        shards = shard_items(items, limit)
        names = shard_file_names(len(shards))
        total = sum(it.nbytes for it in items)
        layout = conversion.layout

        def rows() -> list[dict[str, Any]]:
            return [
                {"name": it.name, "file": fname, "dtype": it.dtype.code, "shape": list(it.shape), "bytes": it.nbytes}
                for fname, shard in zip(names, shards, strict=True)
                for it in shard
            ]

        work = _Work(
            shards,
            names,
            {"format": "pt", **conversion.aliases},
            total,
            layout.index_metadata,
            [SAFETENSORS_INDEX, *layout.extra_index_names],
        )
        return Plan(names, len(items), total, notices=oversized(items, limit), work=work, listing=rows)

    def write(self, plan: Plan, staging: Path, context: WriteContext) -> Written:
        work: _Work = plan.work
        files = []
        for fname, shard in zip(work.names, work.shards, strict=True):
            ordered = file_order(shard)
            header, offsets = build_header([(it.name, it.dtype.code, it.shape, it.nbytes) for it in ordered], work.metadata)
            files.append(write_tensor_file(staging / fname, header, ordered, offsets, context.digest, context.progress))
        tensors = [t for f in files for t in f.tensors]
        index = None
        if len(files) > 1:
            data = index_json(tensors, work.total, work.index_metadata)
            for index_name in work.index_names:
                write_file(staging / index_name, data)
            index = SAFETENSORS_INDEX
        return Written([{"path": f.name, "bytes": f.bytes, "digest": f.digest} for f in files], tensors, index)

    def verify(self, out_dir: Path, manifest: Manifest, source: SourceModel | None) -> Checked:
        if manifest["target"]["format"] != self.name:
            return Checked()
        checked = Checked(checked_files={f["path"] for f in manifest["files"]})
        headers = SharedHeaders()  # parsed once for the file checks and the comparison's reader
        with ThreadPoolExecutor(max_workers=1) as pool:  # the source is read while the files are hashed
            pending = None
            if source is not None:
                pending = pool.submit(compare_with_source, manifest, source, lambda: open_safetensors(out_dir, headers))
            for entry in manifest["files"]:
                check_file(out_dir, entry, manifest, checked, headers)
            if manifest.get("index"):
                checked.problems += index_problems(out_dir, manifest)
            if pending is not None:
                compared = pending.result()
                checked.compared_with_source = compared.compared_with_source
                checked.problems += compared.problems
        return checked
