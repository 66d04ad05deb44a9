"""From canonical tensors to a target layout's names and layouts.

A layout turns each source tensor into zero or more `MappedTensor`s: a target name, a lazy result,
and the record of what was done to get there (so `verify` can undo it).  The `pytorch` layout is the
identity; richer layouts are rule files (see convert/layouts/).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Hashable

from .dtypes import CAST_TARGETS, DType, dtype as lookup_dtype
from .errors import UsageError
from .tensors import TensorRef

IDENTITY_LAYOUTS = {"pytorch": "pytorch", "candle": "pytorch", "tch": "pytorch"}


@dataclass
class MappedTensor:
    name: str
    ref: TensorRef  # the tensor as it will be written, before any final cast
    sources: list[TensorRef]
    transforms: list[dict[str, Any]] = field(default_factory=list)
    lossy: bool = False
    out_dtype: DType | None = None  # set when a cast is requested

    @property
    def dtype(self) -> DType:
        return self.out_dtype or self.ref.dtype

    @property
    def identity(self) -> Hashable | None:
        """Equal for two outputs that would hold the same bytes because their sources are tied."""
        if self.ref.identity is None:
            return None
        return (self.ref.identity, repr(self.transforms), self.dtype.code)


def resolve_layout(name: str) -> str:
    try:
        return IDENTITY_LAYOUTS[name]
    except KeyError:
        raise UsageError(f"unknown layout {name!r}; known: {', '.join(sorted(IDENTITY_LAYOUTS))}") from None


def apply_layout(layout: str, tensors: list[TensorRef]) -> list[MappedTensor]:
    resolve_layout(layout)
    return [MappedTensor(t.name, t, [t]) for t in tensors]


# Float precision order: a cast to a type later in this list (or sideways, F16<->BF16) loses bits.
_FLOAT_RANK = {"F64": 3, "F32": 2, "F16": 1, "BF16": 1, "F8_E4M3": 0, "F8_E5M2": 0, "F8_E8M0": 0}


def apply_cast(mapped: list[MappedTensor], target: str | None) -> None:
    """Cast floating tensors to `target` (a --dtype name) while streaming; integers stay as they are."""
    if target is None:
        return
    code = CAST_TARGETS.get(target.lower())
    if code is None:
        raise UsageError(f"--dtype {target!r}: choose one of {', '.join(CAST_TARGETS)}")
    out = lookup_dtype(code)
    for m in mapped:
        src = m.ref.dtype
        if not src.is_float or src.code == code:
            continue
        lossy = _FLOAT_RANK[code] < _FLOAT_RANK[src.code] or (_FLOAT_RANK[code] == _FLOAT_RANK[src.code])
        m.transforms.append({"op": "cast", "from": src.code, "to": code, "lossless": not lossy})
        m.lossy = m.lossy or lossy
        m.out_dtype = out
