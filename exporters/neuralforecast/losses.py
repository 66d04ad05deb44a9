"""What a NeuralForecast loss means for the network it trained: how many outputs per horizon step
(`outputsize_multiplier`), which quantiles or which distribution those outputs are, and the
arguments that rebuild it.

A Rust port needs these to size the output layer and to read its columns, and neither the 3.3+
metadata (constructor arguments only) nor the older pickles (attributes only) state all of them,
so they are derived here from NeuralForecast's own rules, without importing it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from convert.errors import CorruptInputError

_LEVEL = [80, 90]
_POINT = {"horizon_weight": None}
_IMPLICIT = {"cos_embedding_dim": 64, "concentration0": 1.0, "concentration1": 1.0}
_MIXTURE = {
    "level": _LEVEL,
    "quantiles": None,
    "num_samples": 1000,
    "return_params": False,
    "batch_correlation": False,
    "horizon_correlation": False,
    "weighted": False,
}

# Constructor arguments and their defaults, per loss class (neuralforecast.losses.pytorch).
SIGNATURES: dict[str, dict[str, Any]] = {
    **{name: dict(_POINT) for name in ("MAE", "MSE", "RMSE", "MAPE", "SMAPE")},
    "FreDF": {"alpha": 0.5, **_POINT},
    "MASE": {"seasonality": None, **_POINT},
    "relMSE": {"y_train": None, **_POINT},
    "QuantileLoss": {"q": None, **_POINT},
    "MQLoss": {"level": _LEVEL, "quantiles": None, **_POINT},
    "IQLoss": {**_IMPLICIT, **_POINT},
    "DistributionLoss": {
        "distribution": None,
        "level": _LEVEL,
        "quantiles": None,
        "num_samples": 1000,
        "return_params": False,
        **_POINT,
    },
    "PMM": {"n_components": 10, **_MIXTURE},
    "GMM": {"n_components": 1, **_MIXTURE},
    "NBMM": {"n_components": 1, **_MIXTURE},
    "HuberLoss": {"delta": 1.0, **_POINT},
    "TukeyLoss": {"c": 4.685, "normalize": True},
    "HuberQLoss": {"q": None, "delta": 1.0, **_POINT},
    "HuberMQLoss": {"level": _LEVEL, "quantiles": None, "delta": 1.0, **_POINT},
    "HuberIQLoss": {**_IMPLICIT, "delta": 1.0, **_POINT},
    "Accuracy": {},
    "sCRPS": {"level": _LEVEL, "quantiles": None},
}
_MULTI_QUANTILE = {"MQLoss", "HuberMQLoss", "sCRPS", "DistributionLoss", "PMM", "GMM", "NBMM"}
# Distribution parameters per horizon step (DistributionLoss); ISQF depends on its quantiles.
_DISTRIBUTION_PARAMS = {"Bernoulli": 1, "Normal": 2, "Poisson": 1, "StudentT": 3, "NegativeBinomial": 2, "Tweedie": 1}
# Outputs per mixture component.
_MIXTURE_OUTPUTS = {"PMM": 1, "GMM": 2, "NBMM": 2}


def level_quantiles(level: Sequence[float]) -> list[float]:
    """NeuralForecast's `level_to_outputs`: the median, then each level's lower and upper quantile,
    sorted, as the float32 values it stores. A level is a percentage (NeuralForecast checks 0-100 too);
    anything else is a malformed config, not a float32 overflow warning on stderr."""
    if not isinstance(level, (list, tuple)) or not all(type(lv) in (int, float) and 0 <= lv <= 100 for lv in level):
        raise ValueError(f"level {str(level)[:100]} is not a list of percentages")
    qs = sorted(q for lv in dict.fromkeys(level) for q in (50 - lv / 2, 50 + lv / 2))
    return (np.asarray([50.0, *qs], dtype=np.float32) / np.float32(100)).tolist()


def describe_loss(loss: dict[str, Any] | None, stored_quantiles: list[float] | None = None) -> dict[str, Any] | None:
    """The plain description of a loss: class, constructor args, output multiplier, quantiles,
    distribution. `loss` is {"class", "args", "state"} (3.3+) or {"class", "attributes"} (pickled);
    `stored_quantiles` are the values of its `quantiles` parameter when the weights hold them."""
    if loss is None:
        return None
    name = loss["class"]
    attributes = loss.get("attributes")
    state = loss.get("state") or {}
    quantiles = stored_quantiles or _list(state.get("quantiles")) or _list((attributes or {}).get("quantiles"))
    args = dict(loss.get("args") or {}) if attributes is None else recover_args(name, attributes, quantiles)
    if quantiles is None and name in _MULTI_QUANTILE:
        quantiles = (
            [float(q) for q in args["quantiles"]] if args.get("quantiles") else level_quantiles(args.get("level") or _LEVEL)
        )
    computed = output_multiplier(name, args, quantiles)
    stored = (attributes or {}).get("outputsize_multiplier")
    if isinstance(stored, int) and computed is not None and stored != computed:
        raise CorruptInputError(f"{name}: stored outputsize_multiplier {stored} disagrees with its arguments ({computed})")
    return {
        "class": name,
        "args": args,
        "outputsize_multiplier": stored if isinstance(stored, int) else computed,
        "is_distribution_output": name in ("DistributionLoss", "PMM", "GMM", "NBMM"),
        "distribution": args.get("distribution"),
        "quantiles": quantiles,
        "output_names": state.get("output_names") or (attributes or {}).get("output_names"),
    }


def output_multiplier(name: str, args: dict[str, Any], quantiles: list[float] | None) -> int | None:
    """Outputs per horizon step, as the loss's __init__ sets `outputsize_multiplier`."""
    if name in ("MQLoss", "HuberMQLoss"):
        return len(quantiles or [])
    if name == "DistributionLoss":
        dist = args.get("distribution")
        if dist == "ISQF":
            n_q, pieces = len(quantiles or []), int(args.get("num_pieces", 5))
            return 2 * (n_q - 1) * pieces + 2 + n_q
        return _DISTRIBUTION_PARAMS.get(str(dist))
    if name in _MIXTURE_OUTPUTS:
        return (_MIXTURE_OUTPUTS[name] + bool(args.get("weighted"))) * int(args.get("n_components", 1))
    if name == "sCRPS":
        return None  # a validation metric; it never sizes a network
    return 1


def recover_args(name: str, attributes: dict[str, Any], quantiles: list[float] | None) -> dict[str, Any]:
    """Constructor arguments of a pickled loss: what its attributes kept, defaults for the rest (as
    NeuralForecast's own recovery does), and `level` read back from the stored quantiles."""
    signature = SIGNATURES.get(name)
    if signature is None:
        return {}
    args = {key: _plain_or(attributes.get(key, default), default) for key, default in signature.items()}
    if name == "DistributionLoss":
        args.update(attributes.get("distribution_kwargs") or {})
    if "level" in signature and quantiles:
        levels = quantile_levels(quantiles)
        args["level"], args["quantiles"] = (levels, None) if levels is not None else (args["level"], quantiles)
    return args


def quantile_levels(quantiles: list[float]) -> list[float] | None:
    """The `level` list whose quantiles are exactly these (median first), or None."""
    levels = sorted({round(100 - 200 * q, 4) for q in quantiles if q < 0.5})
    levels = [int(lv) if float(lv).is_integer() else lv for lv in levels]
    return levels if levels and level_quantiles(levels) == quantiles else None


def _plain_or(value: Any, default: Any) -> Any:
    """A value the pickle kept as data, else the default (a tensor outside the state dict)."""
    return default if isinstance(value, dict) and "__skipped__" in value else value


def _list(value: Any) -> list[float] | None:
    return [float(v) for v in value] if isinstance(value, list) and all(isinstance(v, (int, float)) for v in value) else None
