"""The GGUF output's face: plan every tensor's ggml type (refusing what GGUF cannot hold before any
output exists), write `model.gguf` or llama.cpp's split files streaming, record each tensor's type
and quantization error, and verify the files (with the source: re-quantized, byte for byte)."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from convert.errors import ConvertError, MappingError, UsageError
from convert.manifest_model import FileEntry, InferredArchitecture, Manifest
from convert.mapping import Layout
from convert.output_contract import Checked, Conversion, OutputOption, Plan, Role, WriteContext, Written, option_value
from convert.source import SourceModel

from . import build
from .check import check_files, compare_with_source
from .families import adapt
from .file_format import u32
from .options import DEFAULT_TYPE, NO_VOCAB, OPTIONS, TYPE, TYPE_OVERRIDE
from .presets import mixed, relabel


class GGUFOutput:
    name = "gguf"
    role: Role = "tensors"
    empty_error: type[ConvertError] = MappingError  # issue #31: a GGUF of no tensors is refused as names that do not fit (7)
    options: Sequence[OutputOption] = OPTIONS

    def decide(self, architecture: InferredArchitecture, layout: Layout) -> None:
        return None

    def plan(self, conversion: Conversion) -> Plan:
        opts = conversion.options
        if opts.dtype:
            raise UsageError("--dtype does not apply to GGUF outputs: --type (and --type-override) choose each tensor's type")
        family = adapt(conversion, bool(option_value(conversion, NO_VOCAB)))  # a language model: llama.cpp's names, keys
        mix = mixed(
            str(option_value(conversion, TYPE) or DEFAULT_TYPE),
            [(m.name, m.ref.shape) for m in conversion.kept],
            family.arch is not None,
        )
        gguf_plan = build.plan(
            conversion.kept,
            mix.base,
            (*mix.overrides, *(option_value(conversion, TYPE_OVERRIDE) or ())),
            opts.max_shard_size,
            opts.cast_loss,
        )
        relabel(gguf_plan.tensors, mix)
        metadata = build.file_metadata(family.metadata, gguf_plan)
        if mix.file_type is not None:
            metadata["general.file_type"] = u32(mix.file_type)
        work = (gguf_plan, metadata)
        tensors = gguf_plan.tensors
        return Plan(
            list(gguf_plan.files),
            len(tensors),
            sum(p.nbytes for p in tensors),
            warnings=gguf_plan.warnings,
            notices=[*family.notices, *gguf_plan.notices],
            work=work,
            listing=lambda: _rows(gguf_plan),
        )

    def write(self, plan: Plan, staging: Path, context: WriteContext) -> Written:
        gguf_plan, metadata = plan.work
        written = build.write(staging, gguf_plan, metadata, context.digest, context.progress)
        files: list[FileEntry] = [{"path": w.name, "bytes": w.bytes, "digest": w.digest} for w in written]
        return Written(files, build.written_tensors(gguf_plan, written))

    def verify(self, out_dir: Path, manifest: Manifest, source: SourceModel | None) -> Checked:
        if manifest["target"]["format"] != self.name:
            return Checked()
        checked = Checked(checked_files={f["path"] for f in manifest["files"]})
        with ThreadPoolExecutor(max_workers=1) as pool:  # the source is re-quantized while the files are hashed
            pending = pool.submit(compare_with_source, out_dir, manifest, source) if source is not None else None
            checked.files, checked.tensors, checked.problems = check_files(out_dir, manifest)
            if pending is not None:
                checked.compared_with_source, problems = pending.result()
                checked.problems += problems
        return checked


def _rows(gguf_plan: build.GGUFPlan) -> list[dict[str, Any]]:
    """--dry-run's listing: each tensor's file, GGUF name, ggml type, shape and bytes."""
    return [
        {"name": p.name, "file": fname, "dtype": p.choice.type.ggml_name, "shape": list(p.shape), "bytes": p.nbytes}
        for fname, shard in zip(gguf_plan.files, gguf_plan.shards, strict=True)
        for p in shard
    ]
