"""A NeuralForecast save folder as the readers of every generation hand it on: its models (class,
alias, stored hyper-parameters as plain values, state-dict tensors with their ties) and the
forecaster settings a port needs around them (frequency, columns, local scalers per series)."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convert.errors import CorruptInputError, UnsafeInputError
from convert.source import Closing
from convert.tensors import TensorRef
from exporters.neuralforecast.values import is_skipped

MODEL_FILE = re.compile(r"^(?P<alias>.+)_(?P<index>\d+)\.(?P<ext>safetensors|ckpt)$")
SIDECARS = frozenset({"configuration.safetensors", "dataset.safetensors"})
# What coreforecast's local scalers keep per series, column by column: y is scaled as (y - offset) / scale.
_SCALER_STATS = {
    "standard": ["offset (mean)", "scale (std)"],
    "minmax": ["offset (min)", "scale (max - min)"],
    "robust": ["offset (median)", "scale (mad)"],
    "robust-iqr": ["offset (median)", "scale (iqr)"],
    "boxcox": ["lambda"],
}
_SCALER_CLASSES = {"LocalStandardScaler": "standard", "LocalMinMaxScaler": "minmax", "LocalBoxCoxScaler": "boxcox"}


@dataclass
class NFModel:
    alias: str
    index: int
    file: Path
    class_name: str
    hparams: dict[str, Any]  # plain values
    tensors: list[TensorRef]  # state dict in canonical names; tied names share an identity
    ties: dict[str, str] = field(default_factory=dict)  # alias name -> stored name, as the source records it
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class NFFolder(Closing):
    path: Path
    generation: str  # "nf_format 2 (3.3+)", "ckpt (1.7.1 to 3.2)", "lightning (up to 1.7.0)"
    models: list[NFModel]
    forecaster: dict[str, Any]
    sidecar_files: list[Path]  # configuration files every model's manifest depends on
    skipped: list[str]
    closers: list[Callable[[], None]] = field(default_factory=list)


def model_files(folder: Path, ext: str) -> list[tuple[Path, str, int]]:
    """(file, alias, index) of every `{alias}_{i}.{ext}` in the folder, sorted as NeuralForecast loads them."""
    found = []
    for path in sorted(folder.iterdir()):
        m = MODEL_FILE.match(path.name)
        if m is None or m["ext"] != ext or path.name in SIDECARS or not path.is_file():
            continue
        alias = m["alias"]
        if alias.startswith(".") or any(c in alias for c in "/\\\0"):
            raise UnsafeInputError(f"{path.name}: model alias {alias!r} cannot name an output folder")
        found.append((path, alias, int(m["index"])))
    if not found:
        raise CorruptInputError(f"{folder}: a NeuralForecast folder without any {{alias}}_{{i}}.{ext} model file")
    return found


def forecaster_settings(config: dict[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """The NeuralForecast object's settings from its plain configuration, and what could not be read."""
    uids = config.get("uids")
    ids = uids if isinstance(uids, list) else None
    settings = {
        "freq": config.get("freq"),
        "h": config.get("h"),
        "fitted": config.get("_fitted"),
        "id_col": config.get("id_col", "unique_id"),
        "time_col": config.get("time_col", "ds"),
        "target_col": config.get("target_col", "y"),
        "local_scaler_type": config.get("local_scaler_type"),
        "local_static_scaler_type": config.get("local_static_scaler_type"),
        "series": {"ids": uids, "last_dates": config.get("last_dates")},
        "scalers": {str(col): _scaler(s, ids) for col, s in (config.get("scalers_") or {}).items()},
        "static_scalers": {str(col): _scaler(s, ids) for col, s in (config.get("static_scalers_") or {}).items()},
        "categorical_vocab": config.get("categorical_vocab_") or {},
        "prediction_intervals": config.get("prediction_intervals"),
    }
    skipped = [key for key, value in config.items() if is_skipped(value)]
    return settings, skipped


def _scaler(scaler: Any, ids: list[Any] | None) -> Any:
    """A fitted local scaler: its type, what its statistics columns are, and the rows per series."""
    if not isinstance(scaler, dict) or is_skipped(scaler):
        return scaler
    kind = _scaler_kind(scaler)
    stats = scaler.get("stats")
    entry = {
        "type": kind,
        "columns": _SCALER_STATS.get(kind),
        "stats": stats,
        "transform": "(y - offset) / scale" if kind != "boxcox" else "Box-Cox with lambda",
    }
    if ids is not None and isinstance(stats, list) and len(stats) == len(ids):
        entry["stats_by_series"] = {str(i): row for i, row in zip(ids, stats, strict=True)}
    return entry


def _scaler_kind(scaler: dict[str, Any]) -> str:
    kind = str(scaler.get("type"))
    if kind == "LocalRobustScaler":
        return "robust-iqr" if (scaler.get("settings") or {}).get("scale") == "iqr" else "robust"
    return _SCALER_CLASSES.get(kind, kind)
