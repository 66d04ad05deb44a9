"""NeuralForecast 3.3+ save folders (`nf_format` "2"): SafeTensors weights whose metadata holds the
class and the hyper-parameters as tagged JSON, and `configuration.json` (+ `.safetensors`).

Hyper-parameter arrays (a loss's quantiles, the series' last dates) live in the payloads under
`__hparams__.` keys; they are read into the config and never written out as weights.  Tied tensors
are stored once, the others listed in the `shared` metadata; they come back here as aliases of
the stored tensor, so the output records the tie instead of duplicating the bytes.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from convert.documents import parse_json
from convert.errors import CorruptInputError, SourceNotFoundError, UnsupportedFormatError
from convert.safetensors_format import read_header
from convert.safetensors_source import open_safetensors
from convert.source import SourceModel
from convert.tensors import TensorRef
from exporters.neuralforecast.folder import NFFolder, NFModel, forecaster_settings, model_files
from exporters.neuralforecast.values import ArrayLookup, decode_tagged

HPARAM_PREFIX = "__hparams__."
FORMAT = "2"
MAX_JSON = 32 << 20


def read_v2(folder: Path) -> NFFolder:
    config_path = folder / "configuration.json"
    document = _json(config_path)
    if (
        not isinstance(document, dict)
        or document.get("nf_format") != FORMAT
        or not isinstance(document.get("configuration"), dict)
    ):
        raise UnsupportedFormatError(
            f"{config_path.name}: not a NeuralForecast nf_format {FORMAT} configuration "
            f"(nf_format {document.get('nf_format') if isinstance(document, dict) else None!r})"
        )
    sidecars = [config_path]
    config_payload = folder / "configuration.safetensors"
    opened: list[SourceModel] = []
    try:
        arrays: ArrayLookup = _no_arrays(config_path.name)
        if config_payload.is_file():
            payload = open_safetensors(config_payload)
            opened.append(payload)
            sidecars.append(config_payload)
            arrays = _lookup(payload, config_payload.name)
        # `ds` (every training timestamp) is data, not a setting: left in the file, not decoded.
        config = decode_tagged({k: v for k, v in document["configuration"].items() if k != "ds"}, arrays)
        alias_to_model = config.pop("alias_to_model", {}) or {}
        forecaster, skipped = forecaster_settings(config)
        models = []
        for path, alias, index in model_files(folder, "safetensors"):
            model, source = _read_model(path, alias, index, alias_to_model)
            opened.append(source)
            models.append(model)
    except BaseException:
        for source in opened:
            source.close()
        raise
    return NFFolder(
        folder, f"nf_format {FORMAT} (NeuralForecast 3.3+)", models, forecaster, sidecars, skipped, [s.close for s in opened]
    )


def _read_model(path: Path, alias: str, index: int, alias_to_model: dict[str, Any]) -> tuple[NFModel, SourceModel]:
    metadata = read_header(path).metadata
    if metadata.get("nf_format") != FORMAT or "hyper_parameters" not in metadata:
        raise UnsupportedFormatError(f"{path.name}: SafeTensors without NeuralForecast nf_format {FORMAT} metadata")
    source = open_safetensors(path)
    try:
        refs = {t.name: t for t in source.tensors}
        hparams = decode_tagged(_loads(metadata["hyper_parameters"], path.name), _lookup(source, path.name))
        if not isinstance(hparams, dict) or "h" not in hparams:
            raise CorruptInputError(f"{path.name}: hyper_parameters are not a NeuralForecast model's")
        class_name = metadata.get("model_class") or _class_from_alias(alias_to_model, alias, path)
        weights = [t for t in source.tensors if not t.name.startswith(HPARAM_PREFIX)]
        ties = _ties(_loads(metadata.get("shared", "{}"), path.name), refs, path)
        tied = [refs[kept].renamed(name) for name, kept in ties.items()]
    except BaseException:
        source.close()
        raise
    model = NFModel(
        alias,
        index,
        path,
        class_name,
        hparams,
        weights + tied,
        ties,
        {"hparam_tensors": sorted(n for n in refs if n.startswith(HPARAM_PREFIX))},
    )
    return model, source


def _ties(shared: Any, refs: dict[str, TensorRef], path: Path) -> dict[str, str]:
    """{alias: stored name} from the `shared` metadata ({stored: [aliases]})."""
    if not isinstance(shared, dict):
        raise CorruptInputError(f"{path.name}: 'shared' metadata is not a mapping")
    ties = {}
    for kept, aliases in shared.items():
        if kept not in refs or not isinstance(aliases, list):
            raise CorruptInputError(f"{path.name}: 'shared' ties {kept!r}, which the file does not hold")
        for alias in aliases:
            if not isinstance(alias, str) or alias in refs:
                raise CorruptInputError(f"{path.name}: 'shared' alias {alias!r} is malformed or also stored")
            ties[alias] = kept
    return ties


def _class_from_alias(alias_to_model: dict[str, Any], alias: str, path: Path) -> str:
    name = alias_to_model.get(alias)
    if not isinstance(name, str):
        raise CorruptInputError(f"{path.name}: no model_class metadata and no alias_to_model entry for {alias!r}")
    return name


def _lookup(source: SourceModel, where: str) -> ArrayLookup:
    refs = {t.name: t for t in source.tensors}

    def read(key: str) -> np.ndarray:
        ref = refs.get(key)
        if ref is None:
            raise CorruptInputError(f"{where}: metadata points at tensor {key!r}, which the file lacks")
        return np.array(ref.array())

    return read


def _no_arrays(where: str) -> ArrayLookup:
    def read(key: str) -> np.ndarray:
        raise CorruptInputError(f"{where}: points at tensor {key!r} but there is no configuration.safetensors")

    return read


def _json(path: Path) -> Any:
    if not path.is_file():
        raise SourceNotFoundError(f"{path.parent}: no {path.name}")
    if path.stat().st_size > MAX_JSON:
        raise CorruptInputError(f"{path.name}: larger than {MAX_JSON >> 20} MiB")
    return _loads(path.read_bytes(), path.name)


def _loads(text: str | bytes, where: str) -> Any:
    return parse_json(text, where, CorruptInputError)
