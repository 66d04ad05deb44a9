"""NeuralForecast save folders before 3.3: `{alias}_{i}.ckpt` with `alias_to_model.pkl`,
`configuration.pkl` and `dataset.pkl`.

From 1.7.1 to 3.2 a checkpoint is `torch.save({"hyper_parameters", "state_dict"})`, the hyper-
parameters holding live loss objects (inside Lightning's AttributeDict up to 3.1.5); up to 1.7.0
it is a full Lightning checkpoint with the same two entries among others.  Both are read by the
torch reader without torch, the pickles by the restricted unpickler: losses become records of their
class and attributes, pandas values in the configuration become plain values or are reported as
skipped.  `dataset.pkl` (the training data, torch tensors pickled whole) is never read.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from convert.errors import ConvertError, CorruptInputError, UnsafeInputError, UnsupportedFormatError
from convert.pickle_reader import DEFAULT_INERT, restricted_load
from convert.source import SourceModel
from exporters.neuralforecast.config import class_named
from exporters.neuralforecast.folder import NFFolder, NFModel, forecaster_settings, model_files
from exporters.neuralforecast.values import NF_SIDECAR_INERT, is_skipped, plain_checkpoint, plain_pickled, skipped
from exporters.pytorch.reader import open_torch_file

MAX_PICKLE = 64 << 20
LIGHTNING_KEYS = ("epoch", "global_step", "pytorch-lightning_version")


def read_legacy(folder: Path) -> NFFolder:
    alias_path, config_path = folder / "alias_to_model.pkl", folder / "configuration.pkl"
    alias_to_model = _pickle(alias_path) if alias_path.is_file() else {}
    if not isinstance(alias_to_model, dict):
        raise CorruptInputError(f"{alias_path.name}: not a mapping of aliases to model classes")
    config, skipped_notes = _configuration(config_path)
    forecaster, skipped_keys = forecaster_settings(config)
    skipped_notes += [f"configuration.pkl: {key}" for key in skipped_keys]
    if (folder / "dataset.pkl").is_file():
        skipped_notes.append("dataset.pkl: the training data (torch tensors pickled whole); not needed to forecast")
    sources: list[SourceModel] = []
    models = []
    try:
        for path, alias, index in model_files(folder, "ckpt"):
            source = open_torch_file(path, "state_dict")
            sources.append(source)
            models.append(_model(path, alias, index, alias_to_model, source))
    except BaseException:
        for source in sources:
            source.close()
        raise
    lightning = any(m.details.get("lightning") for m in models)
    generation = "lightning checkpoints (NeuralForecast up to 1.7.0)" if lightning else "ckpt (NeuralForecast 1.7.1 to 3.2)"
    sidecars = [p for p in (alias_path, config_path) if p.is_file()]
    return NFFolder(folder, generation, models, forecaster, sidecars, skipped_notes, [s.close for s in sources])


def _model(path: Path, alias: str, index: int, alias_to_model: dict[Any, Any], source: SourceModel) -> NFModel:
    facts = source.extras.get("checkpoint", {})
    hparams = plain_checkpoint(facts.get("hyper_parameters"))
    if not isinstance(hparams, dict) or "h" not in hparams:
        raise CorruptInputError(f"{path.name}: no NeuralForecast hyper_parameters beside the state dict")
    key = alias_to_model.get(alias, alias)
    class_name = class_named(str(key))
    if class_name is None:
        raise UnsupportedFormatError(f"{path.name}: {key!r} is not a NeuralForecast model class this tool knows")
    ties = _ties(source)
    details = {k: facts[k] for k in LIGHTNING_KEYS if k in facts}
    details["lightning"] = bool(details)
    details["skipped_hyper_parameters"] = sorted(k for k, v in hparams.items() if is_skipped(v))
    return NFModel(alias, index, path, class_name, hparams, source.tensors, ties, details)


def _ties(source: SourceModel) -> dict[str, str]:
    """{alias: first name} for state-dict entries that are views of the same storage bytes."""
    first: dict[Any, str] = {}
    ties = {}
    for t in source.tensors:
        if t.identity in first:
            ties[t.name] = first[t.identity]
        else:
            first[t.identity] = t.name
    return ties


def _configuration(path: Path) -> tuple[dict[str, Any], list[str]]:
    """The plain configuration, or an empty one and the reason when the pickle cannot be read. A pickle
    that names a global off the allow-list is refused, as everywhere else: it is an attack, not data."""
    if not path.is_file():
        return {}, ["configuration.pkl: missing; frequency and scalers unknown"]
    try:
        config = plain_pickled(_pickle(path, NF_SIDECAR_INERT))
    except UnsafeInputError:
        raise
    except ConvertError as exc:
        return {}, [f"configuration.pkl: not read ({exc})"]
    if not isinstance(config, dict):
        return {}, ["configuration.pkl: " + str(skipped("not a mapping"))]
    return config, []


def _pickle(path: Path, inert: tuple[str, ...] | None = None) -> Any:
    if path.stat().st_size > MAX_PICKLE:
        raise CorruptInputError(f"{path.name}: larger than {MAX_PICKLE >> 20} MiB")
    try:
        return restricted_load(path.read_bytes(), inert=inert or DEFAULT_INERT, what=path.name)
    except ConvertError as exc:
        raise type(exc)(f"{path.name}: {exc}") from None
