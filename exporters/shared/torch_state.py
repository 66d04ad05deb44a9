"""State dicts into torch modules for the paths that rebuild a model (ONNX export, NeuralForecast):
every name accounted for, and a mismatch told in one line."""

from __future__ import annotations

from typing import Any

from convert.errors import MappingError


def load_strict(module: Any, state: dict[str, Any], what: str) -> None:
    """`module.load_state_dict(state, strict=True)`; a mismatch is a MappingError saying `what` does
    not fit, with torch's first lines (missing, unexpected and mis-shaped names)."""
    import torch

    try:
        with torch.no_grad():
            module.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        detail = "; ".join(line.strip() for line in str(exc).splitlines()[1:4])
        raise MappingError(f"{what}: {detail}") from None
