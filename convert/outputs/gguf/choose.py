"""Which ggml type each tensor is written in: `--type`, then `--type-override PATTERN=TYPE`, with
llama.cpp's rules for what cannot take the type.

- Tensors of fewer than two dimensions (norms, biases, scalars) stay F32, as llama.cpp's converter
  keeps them, unless an override names them.
- A row (the last numpy dimension, ggml's `ne[0]`) that is not a whole number of the type's blocks
  falls back as `llama-quantize` chooses (`tensor_type_fallback` in `src/llama-quant.cpp`): Q2_K and
  Q3_K to Q4_0, Q4_K to Q5_0, Q5_K to Q5_1, Q6_K to Q8_0, and F16 when even that does not fit. A
  32-element type has no fallback there (llama-quantize stops); here it takes F16, the same last resort.
- Integer and bool tensors are refused: GGUF's I8 to I64 exist, but candle reads none of them.
Every choice other than `--type` itself carries its reason, printed and recorded in the manifest.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import regex

from convert.dtypes import DType
from convert.errors import MappingError, UsageError
from convert.mapping import PATTERN_BUDGET_S, compile_pattern

from .ggml_types import TYPES, GGMLType

FALLBACK = {"q2_k": "q4_0", "q3_k": "q4_0", "q4_k": "q5_0", "q5_k": "q5_1", "q6_k": "q8_0"}
LAST_RESORT = "f16"


@dataclass(frozen=True)
class Override:
    text: str  # as the user wrote it
    pattern: regex.Pattern[str]
    type: GGMLType


@dataclass(frozen=True)
class Choice:
    type: GGMLType  # what is written
    requested: GGMLType  # what --type or an override asked for
    reason: str | None  # why `type` is not plainly --type: None when it is
    fallback: bool = False  # the requested type could not hold its rows: printed as a warning


def parse_type(text: str, what: str = "--type") -> GGMLType:
    found = TYPES.get(text.strip().lower())
    if found is None:
        raise UsageError(f"{what} {text!r}: choose one of {', '.join(TYPES)}")
    return found


def parse_overrides(items: Sequence[str]) -> list[Override]:
    """`PATTERN=TYPE` items; the pattern in the layout rules' syntax (`{n}`, `{n:int}`, `{p...}`)."""
    out = []
    for item in items:
        pattern, sep, type_text = item.rpartition("=")
        if not sep or not pattern:
            raise UsageError(f"--type-override {item!r}: write PATTERN=TYPE, e.g. 'lm_head.weight=q6_k'")
        out.append(Override(item, compile_pattern(pattern), parse_type(type_text, f"--type-override {item!r}:")))
    return out


def refuse_unquantizable(name: str, dtype: DType) -> None:
    if not dtype.is_float or dtype.code == "C64":
        raise MappingError(
            f"tensor {name!r} is {dtype.code}: candle reads no GGUF integer type (I8 to I64); drop it with a layout "
            "rule (a BatchNorm counter: --layout-option drop_num_batches_tracked=true)"
        )


def choose(name: str, shape: tuple[int, ...], default: GGMLType, overrides: Sequence[Override], used: set[str]) -> Choice:
    """The type of one tensor; `used` collects the overrides that matched something."""
    requested, reason = default, None
    for o in overrides:  # the last matching override wins, as later flags refine earlier ones
        try:
            hit = o.pattern.match(name, timeout=PATTERN_BUDGET_S)
        except TimeoutError:
            raise UsageError(f"--type-override {o.text!r}: the pattern took too long on {name[:80]!r}") from None
        if hit:
            requested, reason = o.type, f"--type-override {o.text}"
            used.add(o.text)
    if reason is None and len(shape) < 2 and requested.name != "f32":
        return Choice(TYPES["f32"], requested, f"{len(shape)}-D: kept F32, as llama.cpp keeps norms and biases")
    row = shape[-1] if shape else 1
    if not math.prod(shape):
        return Choice(TYPES["f32"], requested, "no values: kept F32")
    if row % requested.block_size:
        fallback = TYPES[FALLBACK.get(requested.name, LAST_RESORT)]
        if row % fallback.block_size:
            fallback = TYPES[LAST_RESORT]
        why = f"rows of {row} are not a whole number of {requested.name}'s {requested.block_size}-element blocks: {fallback.name}"
        return Choice(fallback, requested, why if reason is None else f"{reason}; {why}", fallback=True)
    return Choice(requested, requested, reason)


def unused_overrides(overrides: Sequence[Override], used: set[str]) -> None:
    """An override that matched no tensor is a typo, refused before anything is written."""
    unused = [o.text for o in overrides if o.text not in used]
    if unused:
        raise UsageError(f"--type-override {unused[0]!r} matches no tensor")
