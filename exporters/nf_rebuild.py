"""A NeuralForecast model rebuilt with NeuralForecast's own class from the config this project
writes into a manifest (architecture.source_model): its constructor arguments, losses rebuilt from
their class and arguments, and the state dict loaded strictly.  Nothing from the save folder's
pickles is used: this is what proves a manifest holds enough to rebuild the model.
"""

from __future__ import annotations

import inspect
from typing import Any

from convert.errors import MappingError, UnsupportedFormatError

from .nf_values import is_skipped

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
        accepted = {p for k in klass.__mro__ if "__init__" in vars(k) for p in inspect.signature(k.__init__).parameters}
        unknown = sorted(k for k in kwargs if k not in accepted)
        dropped += unknown
        for key in unknown:
            del kwargs[key]
    return klass, kwargs, dropped


def rebuild_model(source_model: dict[str, Any], state: dict[str, Any], extra: dict[str, Any] | None = None,
                  drop_unknown: bool = False) -> tuple[Any, list[str]]:
    """(model, dropped argument names): the class called with the manifest's constructor config plus
    `extra` keyword arguments (trainer settings, say), then `load_state_dict(state, strict=True)`."""
    import torch

    klass, kwargs, dropped = constructor_arguments(source_model, drop_unknown)
    kwargs.update(extra or {})
    try:
        model = klass(**kwargs)
    except (TypeError, ValueError) as exc:  # arguments this release's class does not take or accept
        raise UnsupportedFormatError(f"{klass.__name__} cannot be rebuilt from the manifest: {exc}") from None
    try:
        with torch.no_grad():
            model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise MappingError(f"{source_model.get('alias') or source_model['class']}: the weights do not fit "
                           f"NeuralForecast's {klass.__name__}: {detail}") from None
    return model, dropped
