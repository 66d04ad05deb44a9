"""The Python API: every CLI command is a thin shell over these functions.

    from convert.api import pth_to_safetensors, verify_output
    result = pth_to_safetensors("model.pt", "out/", dtype="f16")
    report = verify_output("out/", source="model.pt")
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import manifest as manifest_mod
from .architecture import decide_from_source, decide_modules, infer_architecture
from .errors import CorruptInputError, UnsupportedFormatError, UsageError
from .hashing import DEFAULT_ALGORITHM, file_digest, new_digest
from .links import refuse_links
from .mapping import Layout, MappedTensor, MappingResult, apply_dtypes, apply_layout, load_layout
from .output import StagedOutput, write_file
from .source import SourceModel
from .transforms import invertible
from .verify import VerifyReport, verify_output
from .writer import INDEX_FILE, WriteItem, WrittenFile, shard_file_names, shard_items, write_safetensors

Progress = Callable[[int], None]


@dataclass
class ConvertOptions:
    layout: str = "pytorch"
    layout_file: str | None = None  # a user's rule file (may extend a built-in layout)
    layout_options: dict[str, Any] = field(default_factory=dict)
    dtype: str | None = None  # --dtype: f32, f16, bf16, f64
    cast_loss: str = "refuse"  # --cast-loss: what a narrowing cast may do with values the target cannot hold
    max_shard_size: int | None = None  # bytes
    overwrite: bool = False
    dry_run: bool = False
    digest: str = DEFAULT_ALGORITHM  # --digest: blake3 or sha256, for every file and tensor in the manifest
    follow_links: bool = False  # read source files and sidecars that are symlinks or hard links
    request: dict[str, Any] | None = None  # a batch job's options, recorded so a rerun can skip done work


@dataclass
class ConversionResult:
    output: Path
    files: list[str]
    tensors: int
    bytes: int
    aliases: dict[str, str]
    dry_run: bool
    seconds: float
    warnings: list[str] = field(default_factory=list)
    plan: list[dict[str, Any]] = field(default_factory=list)  # filled on a dry run

    def to_json(self) -> dict[str, Any]:
        doc = {"output": str(self.output), "files": self.files, "tensors": self.tensors, "bytes": self.bytes,
               "aliases": self.aliases, "dry_run": self.dry_run, "seconds": round(self.seconds, 3),
               "warnings": self.warnings}
        if self.dry_run:
            doc["plan"] = self.plan
        return doc


def parse_size(text: str | int | None) -> int | None:
    """'5GB', '500MB', '10GiB', '1000000' -> bytes (decimal units as Hugging Face uses them)."""
    if text is None or isinstance(text, int):
        return text
    units = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
             "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}
    s = text.strip().upper()
    num = s.rstrip("KMGTIB")
    try:
        value = int(float(num) * units[s[len(num):]])
    except (KeyError, ValueError):
        raise UsageError(f"cannot read size {text!r} (examples: 5GB, 500MB, 2GiB)") from None
    if value <= 0:
        raise UsageError(f"size must be positive, got {text!r}")
    return value


def convert_source(source: SourceModel, out: str | Path, options: ConvertOptions,
                   progress: Progress | None = None) -> ConversionResult:
    """Map, plan, write and record one source model into the folder `out`."""
    started = time.perf_counter()
    new_digest(options.digest)  # an unknown algorithm is refused before any work
    layout = load_layout(options.layout, options.layout_file, options.layout_options)
    staged = StagedOutput(out, options.overwrite)
    staged.check()
    _refuse_output_holding_source(source, staged.dest)
    refuse_links([*source.files, *source.sidecars], options.follow_links)
    refuse_unencodable_names(source)
    architecture = infer_architecture([(t.name, t.shape) for t in source.tensors], source.config)
    decide_from_source(architecture, source.architecture)
    decide_modules(architecture, str(layout.options.get("module_types") or ""), UsageError)
    mapping = apply_layout(layout, source.tensors, architecture)
    refuse_empty(source, mapping)
    warnings = [*source.extras.get("warnings", []), *dropped_warning(source), *mapping.warnings]  # the reader's, then the layout's
    apply_dtypes(mapping.tensors, options.dtype, layout, options.cast_loss)
    kept, aliases = dedupe(mapping.tensors)
    tied = dict(aliases)
    if layout.ties == "duplicate":  # the loader looks every name up: write tied tensors under each
        kept, aliases = mapping.tensors, {}
    items = [WriteItem(m.name, m.dtype, m.ref, m.casts) for m in kept]
    shards = shard_items(items, options.max_shard_size)
    names = shard_file_names(len(shards))
    total = sum(it.nbytes for it in items)
    if options.dry_run:
        plan = [{"name": it.name, "file": fname, "dtype": it.dtype.code, "shape": list(it.shape), "bytes": it.nbytes}
                for fname, shard in zip(names, shards) for it in shard]
        return ConversionResult(staged.dest, names, len(items), total, aliases, True,
                                time.perf_counter() - started, warnings, plan)
    metadata = {"format": "pt", **aliases}
    with ThreadPoolExecutor(max_workers=1) as pool:
        source_digests = pool.submit(lambda: [file_digest(p, options.digest) for p in source.files])
        with staged as staging:
            written = [write_safetensors(staging / fname, shard, metadata, options.digest, progress)
                       for fname, shard in zip(names, shards)]
            lost = record_cast_losses(kept, written)
            mapping.warnings.extend(lost)  # recorded in the manifest too
            warnings += lost
            if len(written) > 1:
                index = _index_json(written, total, layout.index_metadata)
                for index_name in [INDEX_FILE, *layout.extra_index_names]:
                    write_file(staging / index_name, index)
            sidecars = _copy_sidecars(source, staging)
            doc = build_manifest(source, layout, options, mapping, architecture, kept, aliases, written, sidecars,
                                 source_digests.result(), tied)
            write_file(staging / manifest_mod.MANIFEST_FILE, manifest_mod.dumps(doc))
    warnings += [f"removed {name}, the staging folder of a run that was killed" for name in staged.removed]
    return ConversionResult(staged.dest, [w.name for w in written], len(items), total, aliases, False,
                            time.perf_counter() - started, warnings)


def refuse_unencodable_names(source: SourceModel) -> None:
    """Tensor names go into SafeTensors headers and onto stdout as UTF-8: a lone surrogate (which a
    pickle's BINUNICODE or an HDF5 name can carry) has no UTF-8 form and no loader would accept it."""
    for t in source.tensors:
        try:
            t.name.encode("utf-8")
        except UnicodeEncodeError:
            raise CorruptInputError(f"tensor name {t.name!r} is not valid Unicode (it holds a lone surrogate)") from None


def refuse_empty(source: SourceModel, mapping: MappingResult) -> None:
    """Zero tensors is never a success: the source's arrays were all dropped, or the layout's were."""
    if mapping.tensors:
        return
    why = (f"; the layout dropped {len(mapping.dropped)} ({', '.join(mapping.dropped[:3])})" if mapping.dropped
           else "")
    raise UnsupportedFormatError(f"no tensors to convert{_listed(source.dropped)}{why}")


def dropped_warning(source: SourceModel) -> list[str]:
    """One line saying how many source arrays the reader left out, and why (each in the manifest)."""
    if not source.dropped:
        return []
    return [f"{len(source.dropped)} source array(s) not converted (each listed in the manifest's source.dropped)"
            f"{_listed(source.dropped)}"]


def _listed(dropped: dict[str, str]) -> str:
    """The reasons with their counts, e.g. ': 18 training state optimizer (optimizer state), 2 ...'."""
    if not dropped:
        return ""
    counts = Counter(dropped.values())
    return ": " + ", ".join(f"{n} {why}" if n > 1 else f"{next(k for k, v in dropped.items() if v == why)!r} ({why})"
                            for why, n in counts.items())


def record_cast_losses(kept: list[MappedTensor], written: list[WrittenFile]) -> list[str]:
    """Put what each narrowing cast lost into its manifest step; a warning per tensor that lost values."""
    by_name = {t.name: t for w in written for t in w.tensors}
    warnings = []
    for m in kept:
        for step, lost in zip(m.casts, by_name[m.name].cast_losses):
            if step.get("lossless"):
                continue
            step.update(overflowed=lost.overflowed, flushed=lost.flushed)
            if lost:
                warnings.append(f"tensor {m.name!r}: {lost.describe(step['to'])} (--cast-loss {step['on_loss']})")
    return warnings


def _refuse_output_holding_source(source: SourceModel, dest: Path) -> None:
    """--overwrite replaces the whole destination folder, so never one that holds the source."""
    target = dest.resolve()
    for path in [*source.files, *source.sidecars]:
        resolved = Path(path).resolve()
        if resolved == target or target in resolved.parents:
            raise UsageError(f"{dest} holds the source file {resolved.name}; write the output to another folder")


def dedupe(mapped: list[MappedTensor]) -> tuple[list[MappedTensor], dict[str, str]]:
    """Store tied tensors once: {dropped alias: kept name}, as Hugging Face's save_model records it."""
    kept: list[MappedTensor] = []
    first: dict[Any, str] = {}
    aliases: dict[str, str] = {}
    for m in mapped:
        ident = m.identity
        if ident is not None and ident in first:
            aliases[m.name] = first[ident]
            continue
        if ident is not None:
            first[ident] = m.name
        kept.append(m)
    return kept, aliases


def _index_json(written: list[WrittenFile], total: int, extra: dict[str, str]) -> bytes:
    """Hugging Face's shard index; `extra` adds metadata keys a loader requires (TrustformeRS: format)."""
    weight_map = {t.name: w.name for w in written for t in w.tensors}
    doc = {"metadata": {"total_size": total, **extra}, "weight_map": dict(sorted(weight_map.items()))}
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def _copy_sidecars(source: SourceModel, staging: Path) -> list[str]:
    copied = []
    for path in source.sidecars:
        target = staging / path.name
        if target.exists():
            continue
        shutil.copyfile(path, target)
        copied.append(path.name)
    return copied


def build_manifest(source: SourceModel, layout: Layout, options: ConvertOptions, mapping: MappingResult,
                   architecture: dict[str, Any], kept: list[MappedTensor], aliases: dict[str, str],
                   written: list[WrittenFile], sidecars: list[str], source_digests: list[str],
                   tied: dict[str, str]) -> dict[str, Any]:
    by_name = {t.name: t for w in written for t in w.tensors}
    tensors = []
    for m in kept:
        t = by_name[m.name]
        can_invert, reason = invertible(m.transforms)
        entry = {
            "name": t.name, "file": t.file, "dtype": t.dtype, "shape": list(t.shape),
            "data_offsets": list(t.data_offsets), "digest": t.digest,
            "sources": [{"name": s.name, "dtype": s.dtype.code, "shape": list(s.shape)} for s in m.sources],
            "transforms": m.transforms, "lossy": m.lossy, "invertible": can_invert,
        }
        if reason:
            entry["not_invertible_because"] = reason
        if m.annotations:
            entry["annotations"] = m.annotations
        tensors.append(entry)
    return {
        "manifest_version": manifest_mod.MANIFEST_VERSION,
        "digest_algorithm": options.digest,
        "generator": manifest_mod.generator(),
        "source": {
            "format": source.format,
            "files": [{"path": str(p.absolute()), "bytes": os.path.getsize(p), "digest": d}
                      for p, d in zip(source.files, source_digests)],
            "details": source.extras,
            **({"dropped": source.dropped} if source.dropped else {}),
        },
        "target": {"format": "safetensors", "layout": layout.name, "rules": layout.source, "dtype": options.dtype,
                   "options": layout.options, "warnings": mapping.warnings, "request": options.request,
                   "ties": {"loader": layout.loader_ties, "written": layout.ties, "tied": tied}},
        "files": [{"path": w.name, "bytes": w.bytes, "digest": w.digest} for w in written],
        "index": INDEX_FILE if len(written) > 1 else None,
        "sidecars": sidecars,
        "tensors": tensors,
        "aliases": aliases,
        "dropped": [*source.dropped, *mapping.dropped],
        "architecture": {**architecture, "config": source.config, "source_model": source.architecture},
    }


def pth_to_safetensors(src: str | Path, out: str | Path, *, key: str | None = None, strip_prefix: str = "auto",
                       progress: Progress | None = None, **options: Any) -> ConversionResult:
    """Convert a torch checkpoint file or Hugging Face PyTorch folder; options as ConvertOptions,
    `strip_prefix` "auto", "none" or a prefix (see exporters.pytorch.select_tensors)."""
    from exporters.pytorch import open_pytorch

    opts = ConvertOptions(**options)
    opts.max_shard_size = parse_size(opts.max_shard_size)
    with open_pytorch(src, key, strip_prefix) as source:
        return convert_source(source, out, opts, progress)


def flax_to_safetensors(src: str | Path, out: str | Path, *, collections: tuple[str, ...] = ("params",),
                        unstack: tuple[str, ...] = (), progress: Progress | None = None,
                        **options: Any) -> ConversionResult:
    """Convert a Flax msgpack file, Hugging Face Flax folder or orbax checkpoint; options as ConvertOptions."""
    from .sources import reader

    opts = ConvertOptions(**options)
    opts.max_shard_size = parse_size(opts.max_shard_size)
    with reader("flax")(src, collections, unstack) as source:
        return convert_source(source, out, opts, progress)


def keras_to_safetensors(src: str | Path, out: str | Path, *, config: str | Path | None = None,
                         progress: Progress | None = None, **options: Any) -> ConversionResult:
    """Convert a Keras .keras, .weights.h5 or .h5 file, or a Hugging Face TF folder, without TensorFlow;
    `config`: the model config for a bare .weights.h5 (a .keras file or a JSON config)."""
    from exporters.keras import open_keras

    opts = ConvertOptions(**options)
    opts.max_shard_size = parse_size(opts.max_shard_size)
    with open_keras(src, config) as source:
        return convert_source(source, out, opts, progress)


def tf_to_safetensors(src: str | Path, out: str | Path, *, key: str | None = None,
                      progress: Progress | None = None, **options: Any) -> ConversionResult:
    """Convert a TF SavedModel folder or TF2 checkpoint (needs TensorFlow); `key`: the checkpoint
    object holding the model (default `model` if present)."""
    from exporters.tensorflow import open_tensorflow

    opts = ConvertOptions(**options)
    opts.max_shard_size = parse_size(opts.max_shard_size)
    with open_tensorflow(src, key) as source:
        return convert_source(source, out, opts, progress)


def nf_to_safetensors(src: str | Path, out: str | Path, *, progress: Progress | None = None,
                      **options: Any) -> Any:
    """Convert a NeuralForecast save folder (any generation): OUT/<alias>/ per model (SafeTensors +
    manifest with the constructor config) and OUT/models.json; returns an NFConversionResult."""
    from exporters.neuralforecast import convert_folder

    opts = ConvertOptions(**options)
    opts.max_shard_size = parse_size(opts.max_shard_size)
    return convert_folder(src, out, opts, progress)


def onnx_to_safetensors(src: str | Path, out: str | Path, *, progress: Progress | None = None,
                        **options: Any) -> ConversionResult:
    """Extract an ONNX model's initializers (external data too); options as ConvertOptions."""
    from exporters.onnx import open_onnx

    opts = ConvertOptions(**options)
    opts.max_shard_size = parse_size(opts.max_shard_size)
    with open_onnx(src) as source:
        return convert_source(source, out, opts, progress)


def npz_to_safetensors(src: str | Path, out: str | Path, *, progress: Progress | None = None,
                       **options: Any) -> ConversionResult:
    """Convert a .npz, .npy or pickle of NumPy arrays; options as ConvertOptions."""
    from exporters.numpy_arrays import open_numpy

    opts = ConvertOptions(**options)
    opts.max_shard_size = parse_size(opts.max_shard_size)
    with open_numpy(src) as source:
        return convert_source(source, out, opts, progress)


def tflite_to_safetensors(src: str | Path, out: str | Path, *, quantized: str = "dequantize",
                          progress: Progress | None = None, **options: Any) -> ConversionResult:
    """Convert a .tflite model's weights; `quantized` "dequantize" or "keep"; options as ConvertOptions."""
    from exporters.tflite import open_tflite

    opts = ConvertOptions(**options)
    opts.max_shard_size = parse_size(opts.max_shard_size)
    with open_tflite(src, quantized) as source:
        return convert_source(source, out, opts, progress)


def to_onnx(src: str | Path, out: str | Path, *, stage: Callable[[str], None] | None = None, **options: Any) -> Any:
    """Export a model's graph into the folder `out` as validated ONNX; options as
    exporters.onnx_export.spec.ExportOptions; `stage` hears each step as it starts. Returns an ExportResult."""
    from exporters.onnx_export.pipeline import to_onnx as export
    from exporters.onnx_export.spec import ExportOptions

    opts = ExportOptions(**options)
    opts.external_data_threshold = parse_size(opts.external_data_threshold)  # type: ignore[assignment]
    return export(src, out, opts, stage)


def inspect_path(path: str | Path, key: str | None = None) -> dict[str, Any]:
    """Name, dtype, shape and size of every tensor in any supported input."""
    from .sources import open_source

    with open_source(path, key) as source:
        refuse_unencodable_names(source)
        tensors = [{"name": t.name, "dtype": t.dtype.code, "shape": list(t.shape), "bytes": t.nbytes}
                   for t in source.tensors]
        return {"path": str(path), "format": source.format, "files": [str(p) for p in source.files],
                "tensors": tensors, "bytes": sum(t["bytes"] for t in tensors), "details": source.extras}


def _recorded_source(out: str | Path) -> tuple[str | None, dict[str, Any]]:
    """The source format and details an output's manifest records ({} when it cannot say: verify then
    reports what is wrong with the manifest)."""
    try:
        doc = json.loads((Path(out) / manifest_mod.MANIFEST_FILE).read_text())
        fmt, details = doc["source"]["format"], doc["source"]["details"]
    except (OSError, ValueError, KeyError, TypeError):
        return None, {}
    return (fmt, details) if isinstance(fmt, str) and isinstance(details, dict) else (None, {})


def _reopen(source: str | Path, out: str | Path, key: str | None) -> SourceModel:
    """The source opened as the conversion opened it (key, stripped prefix, quantized mode), so every
    name and value can be compared."""
    from .sources import open_source

    fmt, details = _recorded_source(out)
    if fmt == "tflite":
        from exporters.tflite import open_tflite

        mode = details.get("quantized")
        return open_tflite(source, mode if mode in ("dequantize", "keep") else "dequantize")
    if fmt is None or "pytorch" not in fmt:
        return open_source(source, key)
    recorded, prefix = details.get("key"), details.get("stripped_prefix")
    key = key if key or not isinstance(recorded, str) else recorded
    return open_source(source, key, prefix if isinstance(prefix, str) and prefix else "none")


def verify_path(out: str | Path, source: str | Path | None = None, key: str | None = None) -> VerifyReport:
    """Verify an output folder; with `source`, compare every tensor with it too."""
    if source is None:
        return verify_output(out)
    with _reopen(source, out, key) as src:
        return verify_output(out, src)
