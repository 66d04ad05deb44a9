"""A NeuralForecast model rebuilt with NeuralForecast's own class from the config this project
writes into a manifest (architecture.source_model): its constructor arguments, losses rebuilt from
their class and arguments, and the state dict loaded strictly.  Nothing from the save folder's
pickles is used: this is what proves a manifest holds enough to rebuild the model.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

from convert.errors import UnsupportedFormatError
from exporters.neuralforecast.values import is_skipped
from exporters.shared.torch_state import load_strict

LOSS_KEYS = ("loss", "valid_loss")


def make_loss(record: dict[str, Any] | None) -> Any:
    """A NeuralForecast loss object from its manifest record {"class", "args"}, or None."""
    if record is None:
        return None
    from neuralforecast.losses import pytorch as losses

    klass = getattr(losses, str(record["class"]), None)
    if not isinstance(klass, type):
        raise UnsupportedFormatError(f"NeuralForecast has no loss class {record['class']!r}")
    return klass(**record["args"])


def constructor_arguments(source_model: dict[str, Any], drop_unknown: bool) -> tuple[type, dict[str, Any], list[str]]:
    """(class, keyword arguments, dropped names). `drop_unknown` leaves out arguments the installed
    class no longer takes (an older release's), as NeuralForecast's own loader does, and values the
    reader could not keep (marked skipped), for which the class's default applies."""
    from neuralforecast import models

    name = str(source_model["class"])
    klass = getattr(models, name, None)
    if not isinstance(klass, type):
        raise UnsupportedFormatError(f"the installed NeuralForecast has no model class {name!r}")
    kwargs = {k: v for k, v in source_model["constructor"].items() if not is_skipped(v)}
    dropped = sorted(set(source_model["constructor"]) - set(kwargs))
    for key in LOSS_KEYS:
        kwargs[key] = make_loss(kwargs.get(key))
    if drop_unknown:
        accepted = {p for k in klass.__mro__ if "__init__" in vars(k) for p in inspect.signature(vars(k)["__init__"]).parameters}
        unknown = sorted(k for k in kwargs if k not in accepted)
        dropped += unknown
        for key in unknown:
            del kwargs[key]
    return klass, kwargs, dropped


def rebuild_model(
    source_model: dict[str, Any], state: dict[str, Any], extra: dict[str, Any] | None = None, drop_unknown: bool = False
) -> tuple[Any, list[str]]:
    """(model, argument names left at the class's defaults): the class called with the manifest's
    constructor config plus `extra` keyword arguments (trainer settings, say), then
    `load_state_dict(state, strict=True)`."""
    label = source_model.get("alias") or source_model["class"]
    try:
        klass, kwargs, dropped = constructor_arguments(source_model, drop_unknown)
        model = klass(**{**kwargs, **(extra or {})})
    except ImportError as exc:
        raise UnsupportedFormatError(
            f"rebuilding a NeuralForecast model needs the `neuralforecast` and `torch` extras: {exc}"
        ) from None
    except UnsupportedFormatError:
        raise
    except Exception as exc:  # NeuralForecast raises bare Exception, TypeError and ValueError on bad configs
        raise UnsupportedFormatError(
            f"{label}: NeuralForecast cannot rebuild {source_model['class']} from the manifest's config: {exc}"
        ) from None
    load_strict(model, state, f"{label}: the weights do not fit NeuralForecast's {klass.__name__}")
    return model, dropped


def converted_state(folder: Path, doc: dict[str, Any]) -> dict[str, Any]:
    """The state dict an `nf-to-safetensors` output folder holds (layout pytorch), ties restored."""
    from safetensors.torch import load_file

    tensors = {name: t for f in doc["files"] for name, t in load_file(folder / f["path"]).items()}
    return {**tensors, **{alias: tensors[kept] for alias, kept in doc["aliases"].items()}}
