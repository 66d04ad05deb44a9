"""The conversion pipeline: one source model, or a bundle of them, mapped, planned, written and
recorded. Readers hand it a SourceModel (or SourceBundle); the faces (API, CLI, batch) call it. It
never imports a reader.
"""

from __future__ import annotations

import json
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import manifest as manifest_mod
from .architecture import decide_from_source, decide_modules, infer_architecture
from .bundle_index import BUNDLE_INDEX, check_folder_name
from .contract import SourceBundle
from .errors import ConvertError, CorruptInputError, UnsafeInputError, UsageError
from .hashing import file_digest, new_digest
from .links import refuse_links
from .manifest_model import InferredArchitecture, Manifest, TensorEntry
from .mapping import MappedTensor, MappingResult, apply_dtypes, apply_layout, load_layout
from .options import ConvertOptions
from .output import StagedOutput, write_file
from .output_contract import Conversion, Outputs, WriteContext, Written
from .source import SourceModel
from .transforms import invertible
from .writer import WrittenTensor

Progress = Callable[[int], None]


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
        doc = {
            "output": str(self.output),
            "files": self.files,
            "tensors": self.tensors,
            "bytes": self.bytes,
            "aliases": self.aliases,
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
        }
        if self.dry_run:
            doc["plan"] = self.plan
        return doc


def convert_source(
    source: SourceModel, out: str | Path, options: ConvertOptions, outputs: Outputs, progress: Progress | None = None
) -> ConversionResult:
    """Map, plan, write and record one source model into the folder `out`, in the formats `outputs` names."""
    started = time.perf_counter()
    new_digest(options.digest)  # an unknown algorithm is refused before any work
    layout = load_layout(options.layout, options.layout_file, options.layout_options)
    staged = checked_destination([*source.files, *source.sidecars], out, options.overwrite)
    refuse_links([*source.files, *source.sidecars], options.follow_links)
    refuse_unencodable_names(source)
    architecture = infer_architecture([(t.name, t.shape) for t in source.tensors], source.config)
    decide_from_source(architecture, source.architecture)
    decide_modules(architecture, str(layout.options.get("module_types") or ""), UsageError)
    for output in outputs.all():
        output.decide(architecture, layout)
    mapping = apply_layout(layout, source.tensors, architecture)
    refuse_empty(source, mapping, outputs.tensors.empty_error)
    # the reader's warnings, then the layout's
    warnings = [*source.extras.get("warnings", []), *dropped_warning(source), *mapping.warnings]
    apply_dtypes(mapping.tensors, options.dtype, layout, options.cast_loss)
    kept, aliases = dedupe(mapping.tensors)
    tied = dict(aliases)
    if layout.ties == "duplicate":  # the loader looks every name up: write tied tensors under each
        kept, aliases = mapping.tensors, {}
    conversion = Conversion(source, layout, options, mapping, kept, aliases)
    companions = [(c, c.plan(conversion)) for c in outputs.companions]
    plan = outputs.tensors.plan(conversion)
    for planned in [*(p for _, p in companions), plan]:
        mapping.warnings.extend(planned.warnings)  # recorded in the manifest too
        warnings += [*planned.warnings, *planned.notices]
    if options.dry_run:
        return ConversionResult(
            staged.dest,
            plan.files,
            plan.tensors,
            plan.bytes,
            aliases,
            True,
            time.perf_counter() - started,
            warnings,
            plan.dry_run_rows(),
        )
    context = WriteContext(options.digest, progress)
    with ThreadPoolExecutor(max_workers=1) as pool:
        source_digests = pool.submit(lambda: [file_digest(p, options.digest) for p in source.files])
        with staged as staging:
            written = outputs.tensors.write(plan, staging, context)
            lost = record_cast_losses(kept, written)
            mapping.warnings.extend(lost)  # recorded in the manifest too
            warnings += lost
            sidecars = _copy_sidecars(source, staging)
            doc = build_manifest(conversion, architecture, outputs.tensors.name, written, sidecars, source_digests.result(), tied)
            for companion, companion_plan in companions:
                if not companion_plan.empty:
                    manifest_mod.add_sections(doc, companion.write(companion_plan, staging, context).records)
            write_file(staging / manifest_mod.MANIFEST_FILE, manifest_mod.dumps(doc))
    warnings += [f"removed {name}, the staging folder of a run that was killed" for name in staged.removed]
    return ConversionResult(
        staged.dest,
        [f["path"] for f in written.files],
        plan.tensors,
        plan.bytes,
        aliases,
        False,
        time.perf_counter() - started,
        warnings,
    )


def refuse_unencodable_names(source: SourceModel) -> None:
    """Tensor names go into SafeTensors headers and onto stdout as UTF-8: a lone surrogate (which a
    pickle's BINUNICODE or an HDF5 name can carry) has no UTF-8 form and no loader would accept it."""
    for t in source.tensors:
        try:
            t.name.encode("utf-8")
        except UnicodeEncodeError:
            raise CorruptInputError(f"tensor name {t.name!r} is not valid Unicode (it holds a lone surrogate)") from None


def refuse_empty(source: SourceModel, mapping: MappingResult, error: type[ConvertError]) -> None:
    """Zero tensors is never a success: the source held none, its arrays were all dropped, or the
    layout's were; `error` the tensor output's class for it (SafeTensors: exit 4, GGUF: exit 7)."""
    if mapping.tensors:
        return
    why = f"; the layout dropped {len(mapping.dropped)} ({', '.join(mapping.dropped[:3])})" if mapping.dropped else ""
    raise error(f"no tensors to convert{_listed(source.dropped)}{why}")


def dropped_warning(source: SourceModel) -> list[str]:
    """One line saying how many source arrays the reader left out, and why (each in the manifest)."""
    if not source.dropped:
        return []
    return [
        f"{len(source.dropped)} source array(s) not converted (each listed in the manifest's source.dropped)"
        f"{_listed(source.dropped)}"
    ]


def _listed(dropped: dict[str, str]) -> str:
    """The reasons with their counts, e.g. ': 18 training state optimizer (optimizer state), 2 ...'."""
    if not dropped:
        return ""
    counts = Counter(dropped.values())
    return ": " + ", ".join(
        f"{n} {why}" if n > 1 else f"{next(k for k, v in dropped.items() if v == why)!r} ({why})" for why, n in counts.items()
    )


def record_cast_losses(kept: list[MappedTensor], written: Written) -> list[str]:
    """Put what each narrowing cast lost into its manifest step; a warning per tensor that lost values."""
    by_name = {t.name: t for t in written.tensors}
    warnings = []
    for m in kept:
        for step, lost in zip(m.casts, by_name[m.name].cast_losses, strict=True):
            if step.get("lossless"):
                continue
            step["overflowed"], step["flushed"] = lost.overflowed, lost.flushed
            if lost:
                warnings.append(f"tensor {m.name!r}: {lost.describe(step['to'])} (--cast-loss {step['on_loss']})")
    return warnings


def checked_destination(sources: Iterable[str | Path], out: str | Path, overwrite: bool) -> StagedOutput:
    """The output folder `out`, staged, refused before any work when it is or holds one of `sources`
    (--overwrite replaces the whole folder) or already holds something `overwrite` does not allow
    replacing: the one check every writer runs, and the faces run before opening a large source."""
    staged = StagedOutput(out, overwrite)
    target = staged.dest.resolve()
    for path in sources:
        resolved = Path(path).resolve()
        if resolved == target or target in resolved.parents:
            raise UsageError(f"{out} holds the source {resolved.name}; write the output to another folder")
    staged.check()
    return staged


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


def _copy_sidecars(source: SourceModel, staging: Path) -> list[str]:
    copied = []
    for path in source.sidecars:
        target = staging / path.name
        if target.exists():
            continue
        shutil.copyfile(path, target)
        copied.append(path.name)
    return copied


def build_manifest(
    conversion: Conversion,
    architecture: InferredArchitecture,
    target: str,
    written: Written,
    sidecars: list[str],
    source_digests: list[str],
    tied: dict[str, str],
) -> Manifest:
    source, layout, options, mapping = conversion.source, conversion.layout, conversion.options, conversion.mapping
    by_name = {t.name: t for t in written.tensors}
    return manifest_mod.build(
        options.digest,
        manifest_mod.SourceRecord(
            source.format,
            [manifest_mod.file_entry(p, str(p.absolute()), d) for p, d in zip(source.files, source_digests, strict=True)],
            source.extras,
            source.dropped,
            source.reader_options,
        ),
        manifest_mod.TargetRecord(
            target,
            layout.name,
            layout.source,
            options.dtype,
            layout.options,
            mapping.warnings,
            options.request,
            {"loader": layout.loader_ties, "written": layout.ties, "tied": tied},
            options.output_options,
        ),
        manifest_mod.Contents(
            written.files,
            [tensor_entry(m, by_name[m.name]) for m in conversion.kept],
            written.index,
            sidecars,
            conversion.aliases,
            [*source.dropped, *mapping.dropped],
        ),
        {**architecture, "config": source.config, "source_model": source.architecture},
    )


def tensor_entry(m: MappedTensor, t: WrittenTensor) -> TensorEntry:
    """A written tensor's manifest entry: where it landed, what it came from and what was done to it."""
    can_invert, reason = invertible(m.transforms)
    entry: TensorEntry = {
        "name": t.name,
        "file": t.file,
        "dtype": t.dtype,
        "shape": list(t.shape),
        "data_offsets": list(t.data_offsets),
        "digest": t.digest,
        "sources": [{"name": s.name, "dtype": s.dtype.code, "shape": list(s.shape)} for s in m.sources],
        "transforms": m.transforms,
        "lossy": m.lossy,
        "invertible": can_invert,
    }
    if reason:
        entry["not_invertible_because"] = reason
    if m.annotations:
        entry["annotations"] = m.annotations
    record = t.record  # what the output format adds, in TensorRecord's key order (the order GGUF builds it in)
    if "quantization" in record:
        entry["quantization"] = record["quantization"]
    if "lossy" in record:
        entry["lossy"] = record["lossy"]
    if "invertible" in record:
        entry["invertible"] = record["invertible"]
    if "not_invertible_because" in record:
        entry["not_invertible_because"] = record["not_invertible_because"]
    return entry


@dataclass
class BundleResult:
    """A bundle's conversion: one ConversionResult per model folder, and the index beside them."""

    output: Path
    format: str
    details: dict[str, Any]  # the bundle's own facts (a NeuralForecast folder's generation, ...)
    models: list[dict[str, Any]]  # each model's index entry: its folder, and what the reader says of it
    skipped: list[str]
    dry_run: bool
    seconds: float
    results: list[ConversionResult] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return sorted({w for r in self.results for w in r.warnings})

    @property
    def bytes(self) -> int:
        return sum(r.bytes for r in self.results)

    def to_json(self) -> dict[str, Any]:
        return {
            "output": str(self.output),
            "format": self.format,
            **self.details,
            "models": [{**m, "result": r.to_json()} for m, r in zip(self.models, self.results, strict=True)],
            "skipped": self.skipped,
            "dry_run": self.dry_run,
            "seconds": round(self.seconds, 3),
            "warnings": self.warnings,
        }


def convert_bundle(
    bundle: SourceBundle, out: str | Path, options: ConvertOptions, outputs: Outputs, progress: Progress | None = None
) -> BundleResult:
    """Convert every model of a bundle into OUT/<folder>/ and list them in OUT/models.json; the whole
    output appears at once, or not at all."""
    started = time.perf_counter()
    staged = checked_destination([bundle.path], out, options.overwrite)
    taken: set[str] = set()
    for model in bundle.models:
        check_folder_name(model.folder)
        if model.folder in taken:
            raise UnsafeInputError(f"model name {model.folder!r} cannot name its own output folder")
        taken.add(model.folder)
    inner = ConvertOptions(**{**options.__dict__, "overwrite": False})
    entries = [{**m.entry, "folder": m.folder} for m in bundle.models]
    result = BundleResult(staged.dest, bundle.format, bundle.details, entries, bundle.skipped, options.dry_run, 0.0)
    if options.dry_run:
        result.results = [convert_source(m.source, staged.dest / m.folder, inner, outputs, progress) for m in bundle.models]
    else:
        with staged as staging:
            result.results = [convert_source(m.source, staging / m.folder, inner, outputs, progress) for m in bundle.models]
            index = {
                "format": bundle.format,
                **bundle.details,
                "source": str(bundle.path.absolute()),
                "skipped": bundle.skipped,
                "models": [
                    {**e, "tensors": r.tensors, "bytes": r.bytes, "aliases": r.aliases}
                    for e, r in zip(entries, result.results, strict=True)
                ],
            }
            write_file(staging / BUNDLE_INDEX, (json.dumps(index, indent=1) + "\n").encode("utf-8"))
        for converted, model in zip(result.results, bundle.models, strict=True):
            converted.output = staged.dest / model.folder
    result.seconds = time.perf_counter() - started
    return result
