"""NeuralForecast save folders of every generation, converted model by model, without
NeuralForecast or torch.

`convert_folder` writes one output folder per model, named by its alias (with `_<i>` when an alias
repeats), each holding SafeTensors and a manifest whose architecture section carries the resolved
constructor config, the forecaster settings and each tensor's role; `models.json` beside them
lists the models.  The whole output appears atomically.  `open_neuralforecast` opens a folder as
one SourceModel (tensors named `<folder>/<tensor>`) for `convert inspect` and `convert batch`.
"""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convert.api import ConversionResult, ConvertOptions, Progress, convert_source
from convert.errors import CorruptInputError, SourceNotFoundError, UnsafeInputError, UnsupportedFormatError, UsageError
from convert.output import StagedOutput, write_file
from convert.source import SourceModel
from convert.tensors import TensorRef

from .nf_checks import check_shapes
from .nf_config import resolve, split_hparams
from .nf_folder import NFFolder, NFModel
from .nf_legacy import read_legacy
from .nf_roles import tensor_roles
from .nf_v2 import read_v2

MODELS_FILE = "models.json"
MAX_QUANTILES = 10_000
FORMAT = "neuralforecast"


@dataclass
class NFConversionResult:
    output: Path
    generation: str
    models: list[dict[str, Any]]  # alias, index, class, folder, source file, and the conversion result
    skipped: list[str]
    dry_run: bool
    seconds: float
    results: list[ConversionResult] = field(default_factory=list)

    @property
    def warnings(self) -> list[str]:
        return sorted({w for r in self.results for w in r.warnings})

    def to_json(self) -> dict[str, Any]:
        return {"output": str(self.output), "format": FORMAT, "generation": self.generation,
                "models": [{**m, "result": r.to_json()} for m, r in zip(self.models, self.results)],
                "skipped": self.skipped, "dry_run": self.dry_run, "seconds": round(self.seconds, 3),
                "warnings": self.warnings}


def open_folder(path: str | Path) -> NFFolder:
    """Read a NeuralForecast save folder of any generation."""
    folder = Path(path)
    if not folder.is_dir():
        raise SourceNotFoundError(f"no such folder: {folder}" if not folder.exists() else
                                  f"{folder}: a NeuralForecast save is a folder, not a file")
    if (folder / "configuration.json").is_file():
        return read_v2(folder)
    if any(p.suffix == ".ckpt" for p in folder.iterdir()):
        return read_legacy(folder)
    raise UnsupportedFormatError(f"{folder}: neither configuration.json (NeuralForecast 3.3+) nor .ckpt models "
                                 f"(older releases)")


def converted_folders(path: Path) -> list[Path] | None:
    """The model folders of an `nf-to-safetensors` output (models.json lists them; a model's own folder
    is one), or None when `path` is not such an output. A listed folder must be a plain name inside
    `path`: the names come from a file, and become output folders too."""
    from convert import manifest as manifest_mod

    if (path / MODELS_FILE).is_file():
        try:
            index = json.loads((path / MODELS_FILE).read_text(encoding="utf-8"))
            names = [m["folder"] for m in index["models"]] if index.get("format") == FORMAT else None
        except (ValueError, KeyError, TypeError, AttributeError):
            return None
        if names is None:
            return None
        for name in names:
            check_folder_name(str(name))
        return [path / str(name) for name in names]
    if (path / manifest_mod.MANIFEST_FILE).is_file():
        architecture = manifest_mod.load(path).get("architecture")
        source = architecture.get("source_model") if isinstance(architecture, dict) else None
        if isinstance(source, dict) and source.get("framework") == FORMAT:
            return [path]
    return None


def check_folder_name(name: str) -> None:
    """A model's output folder name must be one plain, visible path component."""
    if not name or name != Path(name).name or name.startswith(".") or name == MODELS_FILE or "\\" in name:
        raise UnsafeInputError(f"model alias {name!r} cannot name its own output folder")


def output_folders(models: list[NFModel]) -> list[str]:
    """Each model's output folder: its alias, with `_<i>` when the alias repeats."""
    counts = Counter(m.alias for m in models)
    names = [m.alias if counts[m.alias] == 1 else f"{m.alias}_{m.index}" for m in models]
    taken = set()
    for name in names:
        check_folder_name(name)
        if name in taken:
            raise UnsafeInputError(f"model alias {name!r} cannot name its own output folder")
        taken.add(name)
    return names


def model_source(folder: NFFolder, model: NFModel, out_name: str) -> SourceModel:
    """One model as a SourceModel whose architecture is what a port needs to rebuild it."""
    label = f"{folder.path.name}/{model.file.name}"
    shapes = {t.name: t.shape for t in model.tensors}
    quantiles = {p: _values(model, f"{p}.quantiles") for p in ("loss", "valid_loss")}
    try:
        resolved = resolve(model.class_name, model.hparams, quantiles)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptInputError(f"{label}: hyper-parameters are malformed ({type(exc).__name__}: {exc})") from None
    constructor, trainer, arch = split_hparams(model.hparams)
    constructor["input_size"] = resolved["input_size"]  # NeuralForecast's own reading of input_size < 1
    for key in ("loss", "valid_loss"):
        if constructor.get(key) is not None:
            constructor[key] = {"class": resolved[key]["class"], "args": resolved[key]["args"]}
    check_shapes(label, model.class_name, resolved, arch, shapes)
    architecture = {
        "framework": FORMAT,
        "generation": folder.generation,
        "class": model.class_name,
        "alias": model.alias,
        "index": model.index,
        "folder": out_name,
        "source_file": model.file.name,
        "constructor": constructor,
        "architecture": arch,
        "trainer": trainer,
        "resolved": resolved,
        "forecaster": folder.forecaster,
        "ties": model.ties,
        "tensor_roles": tensor_roles(model.class_name, list(shapes)),
        "details": model.details,
    }
    return SourceModel(format=f"{FORMAT}-{model.file.suffix.lstrip('.')}", files=[model.file, *folder.sidecar_files],
                       tensors=model.tensors, extras={"skipped": folder.skipped}, architecture=architecture)


def _values(model: NFModel, name: str) -> list[float] | None:
    ref = next((t for t in model.tensors if t.name == name), None)
    if ref is not None and (len(ref.shape) != 1 or ref.numel > MAX_QUANTILES):
        raise CorruptInputError(f"{model.file.name}: {name} has shape {list(ref.shape)}, not a short list of quantiles")
    return None if ref is None else [float(v) for v in ref.array()]


def convert_folder(src: str | Path, out: str | Path, options: ConvertOptions,
                   progress: Progress | None = None) -> NFConversionResult:
    """Convert every model of a NeuralForecast folder into OUT/<folder>/ and list them in OUT/models.json."""
    started = time.perf_counter()
    staged = StagedOutput(out, options.overwrite)
    source, target = Path(src).resolve(), staged.dest.resolve()
    if source == target or target in source.parents:  # --overwrite would replace the source itself
        raise UsageError(f"{staged.dest} holds the source folder {source.name}; write the output to another folder")
    staged.check()
    inner = ConvertOptions(**{**options.__dict__, "overwrite": False})
    with open_folder(src) as folder:
        names = output_folders(folder.models)
        sources = [model_source(folder, m, n) for m, n in zip(folder.models, names)]  # every check before writing
        entries = [{"alias": m.alias, "index": m.index, "class": m.class_name, "folder": n, "source_file": m.file.name}
                   for m, n in zip(folder.models, names)]
        if options.dry_run:
            results = [convert_source(s, staged.dest / n, inner, progress) for s, n in zip(sources, names)]
            return NFConversionResult(staged.dest, folder.generation, entries, folder.skipped, True,
                                      time.perf_counter() - started, results)
        with staged as staging:
            results = [convert_source(s, staging / n, inner, progress) for s, n in zip(sources, names)]
            index = {"format": FORMAT, "generation": folder.generation, "source": str(folder.path.absolute()),
                     "forecaster": folder.forecaster, "skipped": folder.skipped,
                     "models": [{**e, "tensors": r.tensors, "bytes": r.bytes, "aliases": r.aliases}
                                for e, r in zip(entries, results)]}
            write_file(staging / MODELS_FILE, (json.dumps(index, indent=1) + "\n").encode("utf-8"))
    for result, name in zip(results, names):
        result.output = staged.dest / name
    return NFConversionResult(staged.dest, folder.generation, entries, folder.skipped, False,
                              time.perf_counter() - started, results)


def open_neuralforecast(path: str | Path) -> SourceModel:
    """The whole folder as one source, tensors named `<output folder>/<tensor>`: for inspect and batch."""
    folder = open_folder(path)
    try:
        names = output_folders(folder.models)
        parts = [model_source(folder, m, n) for m, n in zip(folder.models, names)]
    except BaseException:
        folder.close()
        raise
    tensors = [TensorRef(f"{n}/{t.name}", t.dtype, t.shape, t.load, t.span, t.identity)
               for n, part in zip(names, parts) for t in part.tensors]
    files = list(dict.fromkeys(f for part in parts for f in part.files))
    return SourceModel(format=FORMAT, files=files, tensors=tensors, extras={"skipped": folder.skipped},
                       architecture={"framework": FORMAT, "generation": folder.generation,
                                     "forecaster": folder.forecaster,
                                     "models": {n: part.architecture for n, part in zip(names, parts)}},
                       closers=[folder.close])
