"""NeuralForecast save folders of every generation, converted model by model, without
NeuralForecast or torch.

`open_bundle` reads a folder as a SourceBundle: one model per output folder, named by its alias
(with `_<i>` when an alias repeats), each a SourceModel whose architecture carries the resolved
constructor config, the forecaster settings and each tensor's role. The core converts the bundle
(convert.pipeline.convert_bundle) and writes `models.json` beside the model folders.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from convert.bundle_index import bundle_folders, check_folder_name
from convert.contract import BundleModel, SourceBundle
from convert.errors import CorruptInputError, SourceNotFoundError, UnsafeInputError, UnsupportedFormatError
from convert.source import SourceModel
from exporters.neuralforecast.checks import check_shapes
from exporters.neuralforecast.config import resolve, split_hparams
from exporters.neuralforecast.folder import NFFolder, NFModel
from exporters.neuralforecast.legacy import read_legacy
from exporters.neuralforecast.networks import dense_networks
from exporters.neuralforecast.roles import tensor_roles
from exporters.neuralforecast.v2 import read_v2

MAX_QUANTILES = 10_000
FORMAT = "neuralforecast"


def open_folder(path: str | Path) -> NFFolder:
    """Read a NeuralForecast save folder of any generation."""
    folder = Path(path)
    if not folder.is_dir():
        raise SourceNotFoundError(
            f"no such folder: {folder}" if not folder.exists() else f"{folder}: a NeuralForecast save is a folder, not a file"
        )
    if (folder / "configuration.json").is_file():
        return read_v2(folder)
    if any(p.suffix == ".ckpt" for p in folder.iterdir()):
        return read_legacy(folder)
    raise UnsupportedFormatError(f"{folder}: neither configuration.json (NeuralForecast 3.3+) nor .ckpt models (older releases)")


def converted_folders(path: Path) -> list[Path] | None:
    """The model folders of an `nf-to-safetensors` output (its models.json lists them; a model's own
    folder is one), or None when `path` is not such an output."""
    from convert import manifest as manifest_mod

    folders = bundle_folders(path, FORMAT)
    if folders is not None:
        return folders
    if (path / manifest_mod.MANIFEST_FILE).is_file():
        architecture = manifest_mod.load(path).get("architecture")
        source = architecture.get("source_model") if isinstance(architecture, dict) else None
        if isinstance(source, dict) and source.get("framework") == FORMAT:
            return [path]
    return None


def output_folders(models: list[NFModel]) -> list[str]:
    """Each model's output folder: its alias, with `_<i>` when the alias repeats."""
    counts = Counter(m.alias for m in models)
    names = [m.alias if counts[m.alias] == 1 else f"{m.alias}_{m.index}" for m in models]
    for name in names:
        check_folder_name(name)
    if len(set(names)) != len(names):
        raise UnsafeInputError(f"model aliases {names} cannot each name their own output folder")
    return names


def model_source(folder: NFFolder, model: NFModel, out_name: str) -> SourceModel:
    """One model as a SourceModel whose architecture is what a port needs to rebuild it."""
    label = f"{folder.path.name}/{model.file.name}"
    shapes = {t.name: t.shape for t in model.tensors}
    quantiles = {p: _values(model, f"{p}.quantiles") for p in ("loss", "valid_loss")}
    try:
        resolved = resolve(model.class_name, model.hparams, quantiles)
    except (KeyError, TypeError, ValueError, AttributeError, OverflowError) as exc:
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
        "dense_networks": dense_networks(model.class_name, arch, shapes),
        "details": model.details,
    }
    return SourceModel(
        format=f"{FORMAT}-{model.file.suffix.lstrip('.')}",
        files=[model.file, *folder.sidecar_files],
        tensors=model.tensors,
        extras={"skipped": folder.skipped},
        architecture=architecture,
    )


def _values(model: NFModel, name: str) -> list[float] | None:
    ref = next((t for t in model.tensors if t.name == name), None)
    if ref is not None and (len(ref.shape) != 1 or ref.numel > MAX_QUANTILES):
        raise CorruptInputError(f"{model.file.name}: {name} has shape {list(ref.shape)}, not a short list of quantiles")
    return None if ref is None else [float(v) for v in ref.array()]


def open_bundle(path: str | Path) -> SourceBundle:
    """Every model of the folder, each with its output folder's name; all checked before any is written."""
    folder = open_folder(path)
    try:
        names = output_folders(folder.models)
        models = [
            BundleModel(
                name,
                model_source(folder, m, name),
                {"alias": m.alias, "index": m.index, "class": m.class_name, "source_file": m.file.name},
            )
            for m, name in zip(folder.models, names, strict=True)
        ]
    except BaseException:
        folder.close()
        raise
    return SourceBundle(
        FORMAT,
        folder.path,
        models,
        details={"generation": folder.generation, "forecaster": folder.forecaster},
        skipped=folder.skipped,
        closers=[folder.close],
    )
