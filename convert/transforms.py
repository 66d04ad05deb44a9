"""The closed vocabulary of tensor transforms, as recorded in the manifest.

A chain works on a list of arrays that starts as the output's source tensors, in order. Unary ops
act on the arrays named by `input` (an index) or on every array; `concat` and `add` join the arrays
named by `inputs` (default: all) into one, in place of the first. A chain ends with one array.

    cast         {"to": "F16", "on_loss"?}             lossless only when widening; values lost to
                                                       inf or zero refused unless on_loss is
                                                       "saturate" or "accept" (convert.dtypes)
    transpose    {} (reverse all axes) / permute {"axes": [...]}
    reshape      {"shape": [...]} (-1 allowed once)
    split        {"axis", "parts", "index"}            keep one of `parts` equal blocks
    gate_reorder {"axis", "parts", "order"}            blocks reordered: new block i = old block order[i]
    pad          {"axis", "after", "value"}            append constant entries
    concat       {"axis", "inputs"?}
    add          {"inputs"?}                           not invertible: a sum of several tensors
    select       {"inputs"}                            keep only these arrays, in this order

`verify --source` proves an output by replaying its chain on the source and comparing bytes, which
is exact for deterministic steps, lossy ones included; `invertible` says whether the output alone
determines its sources.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from .dtypes import CastLossError, DType, cast_array, cast_checked, dtype as lookup_dtype
from .errors import MappingError, UnsupportedFormatError
from .tensors import TensorRef
from .vocabulary import TRANSFORM_OPS

Shape = tuple[int, ...]
Spec = tuple[Shape, DType]

NOT_INVERTIBLE = {
    "add": "a sum of several tensors cannot be split back",
    "split": "one block of a tensor does not determine the others",
    "select": "the sources it leaves out are not in this tensor",
}


def _axis(axis: int, ndim: int, op: str) -> int:
    if not -ndim <= axis < ndim:
        raise MappingError(f"{op}: axis {axis} does not exist in a {ndim}-d tensor")
    return axis % ndim


def _targets(t: dict[str, Any], count: int) -> list[int]:
    if "input" in t:
        idx = int(t["input"])
        if not 0 <= idx < count:
            raise MappingError(f"{t['op']}: input {idx} does not exist")
        return [idx]
    return list(range(count))


def _join_targets(t: dict[str, Any], count: int) -> list[int]:
    idx = [int(i) for i in t.get("inputs", range(count))]
    if not idx or any(not 0 <= i < count for i in idx):
        raise MappingError(f"{t['op']}: inputs {idx} do not exist")
    return idx


# --- shapes and dtypes, computed without touching data -------------------------------------------


def _perm(t: dict[str, Any], ndim: int) -> list[int]:
    axes = t.get("axes")
    if axes is None:
        return list(reversed(range(ndim)))
    in_range = all(-ndim <= int(a) < ndim for a in axes)
    if not in_range or sorted(int(a) % max(ndim, 1) for a in axes) != list(range(ndim)):
        raise MappingError(f"{t['op']}: axes {axes} are not a permutation of {ndim} axes")
    return [int(a) % ndim for a in axes]


def _reshape(shape: Shape, target: list[int]) -> Shape:
    numel = math.prod(shape)
    known = math.prod(d for d in target if d != -1)
    out = [d if d != -1 else (numel // known if known else 0) for d in target]
    if math.prod(out) != numel or sum(d == -1 for d in target) > 1 or any(d < -1 for d in target):
        raise MappingError(f"reshape: cannot make {list(shape)} into {target}")
    return tuple(out)


def _block(shape: Shape, t: dict[str, Any]) -> tuple[int, int]:
    axis = _axis(int(t["axis"]), len(shape), t["op"])
    parts = int(t["parts"])
    if parts <= 0 or shape[axis] % parts:
        raise MappingError(f"{t['op']}: axis {axis} of size {shape[axis]} does not split into {parts} parts")
    return axis, shape[axis] // parts


def _unary_spec(t: dict[str, Any], shape: Shape, dt: DType) -> Spec:
    op = t["op"]
    if op == "cast":
        try:
            return shape, lookup_dtype(t["to"])
        except UnsupportedFormatError:
            raise MappingError(f"cast: unknown dtype {t['to']!r}") from None
    if op in ("transpose", "permute"):
        return tuple(shape[a] for a in _perm(t, len(shape))), dt
    if op == "reshape":
        return _reshape(shape, [int(d) for d in t["shape"]]), dt
    if op == "split":
        axis, size = _block(shape, t)
        if not 0 <= int(t["index"]) < int(t["parts"]):
            raise MappingError(f"split: index {t['index']} outside {t['parts']} parts")
        return shape[:axis] + (size,) + shape[axis + 1 :], dt
    if op == "gate_reorder":
        _block(shape, t)
        if sorted(t["order"]) != list(range(int(t["parts"]))):
            raise MappingError(f"gate_reorder: order {t['order']} is not a permutation")
        return shape, dt
    if op == "pad":
        axis = _axis(int(t["axis"]), len(shape), op)
        if int(t["after"]) < 0:
            raise MappingError(f"pad: after {t['after']} is negative")
        return shape[:axis] + (shape[axis] + int(t["after"]),) + shape[axis + 1 :], dt
    raise MappingError(f"unknown transform {op!r}")


def _join_spec(t: dict[str, Any], specs: list[Spec]) -> Spec:
    shapes = [s for s, _ in specs]
    dtypes = {d.code for _, d in specs}
    if len(dtypes) != 1:
        raise MappingError(f"{t['op']}: inputs have different dtypes {sorted(dtypes)}")
    if t["op"] == "add":
        if len(set(shapes)) != 1:
            raise MappingError(f"add: inputs have different shapes {shapes}")
        return specs[0]
    axis = _axis(int(t["axis"]), len(shapes[0]), "concat")
    rest = {s[:axis] + s[axis + 1 :] for s in shapes}
    if len(rest) != 1 or len({len(s) for s in shapes}) != 1:
        raise MappingError(f"concat: shapes {shapes} do not line up on axis {axis}")
    return shapes[0][:axis] + (sum(s[axis] for s in shapes),) + shapes[0][axis + 1 :], specs[0][1]


def output_spec(transforms: list[dict[str, Any]], sources: list[Spec]) -> Spec:
    """Shape and dtype a chain produces, checked step by step; MappingError if a step cannot apply."""
    return _run(transforms, sources, _unary_spec, _join_spec)


# --- data -----------------------------------------------------------------------------------------


def _unary_apply(t: dict[str, Any], arr: np.ndarray) -> np.ndarray:
    op = t["op"]
    if op == "cast":
        if t.get("lossless"):
            return cast_array(arr, t["to"])
        out, loss = cast_checked(arr, t["to"], t.get("on_loss", "refuse"))
        if loss and t.get("on_loss", "refuse") == "refuse":  # unless a rule or manifest says it may
            raise CastLossError(f"cast to {t['to']}", loss, t["to"])
        return out
    if op in ("transpose", "permute"):
        return arr.transpose(_perm(t, arr.ndim))
    if op == "reshape":
        return np.ascontiguousarray(arr).reshape([int(d) for d in t["shape"]])
    if op == "split":
        axis, size = _block(arr.shape, t)
        i = int(t["index"])
        return arr.take(range(i * size, (i + 1) * size), axis=axis)
    if op == "gate_reorder":
        axis, size = _block(arr.shape, t)
        return np.concatenate([arr.take(range(o * size, (o + 1) * size), axis=axis) for o in t["order"]], axis=axis)
    if op == "pad":
        axis = _axis(int(t["axis"]), arr.ndim, op)
        widths = [(0, 0)] * arr.ndim
        widths[axis] = (0, int(t["after"]))
        return np.pad(arr, widths, constant_values=t.get("value", 0))
    raise MappingError(f"unknown transform {op!r}")


def _join_apply(t: dict[str, Any], arrays: list[np.ndarray]) -> np.ndarray:
    if t["op"] == "add":
        total = arrays[0].copy()
        for a in arrays[1:]:
            total += a
        return total
    return np.concatenate(arrays, axis=int(t["axis"]))


def apply(transforms: list[dict[str, Any]], sources: list[np.ndarray]) -> np.ndarray:
    """Run a chain on source arrays (the same code writes outputs and replays them in verify)."""
    return _run(transforms, sources, lambda t, a: _unary_apply(t, a), _join_apply)


def _run(transforms: list[dict[str, Any]], items: list[Any], unary: Callable[..., Any], join: Callable[..., Any]) -> Any:
    items = list(items)
    is_spec = bool(items) and isinstance(items[0], tuple)
    for t in transforms:
        if not isinstance(t, dict) or t.get("op") not in TRANSFORM_OPS:
            raise MappingError(f"unknown transform {t.get('op') if isinstance(t, dict) else t!r}")
        try:
            if t.get("op") == "select":
                items = [items[i] for i in _join_targets(t, len(items))]
            elif t.get("op") in ("concat", "add"):
                idx = _join_targets(t, len(items))
                joined = join(t, [items[i] for i in idx])
                items = [joined if i == idx[0] else x for i, x in enumerate(items) if i == idx[0] or i not in idx]
            else:
                for i in _targets(t, len(items)):
                    items[i] = unary(t, *items[i]) if is_spec else unary(t, items[i])
        except (KeyError, TypeError, ValueError) as exc:  # a user's rule file or a manifest: a parameter missing or mistyped
            raise MappingError(f"{t.get('op')}: bad or missing parameter ({type(exc).__name__}: {exc})") from None
    if len(items) != 1:
        raise MappingError(f"a transform chain must end with one tensor, not {len(items)}")
    return items[0]


def derived(name: str, sources: list[TensorRef], transforms: list[dict[str, Any]]) -> TensorRef:
    """A lazy tensor made from `sources` by `transforms`, checked now and computed when read; with no
    transform and one source, that source renamed (its file span and identity kept)."""
    if not transforms and len(sources) == 1:
        return sources[0].renamed(name)
    shape, dt = output_spec(transforms, [(s.shape, s.dtype) for s in sources])
    return TensorRef(name, dt, shape, lambda: apply(transforms, [s.array() for s in sources]))


def invertible(transforms: list[dict[str, Any]]) -> tuple[bool, str | None]:
    """Whether the output alone determines its sources exactly, and if not, why."""
    for t in transforms:
        if t["op"] in NOT_INVERTIBLE:
            return False, NOT_INVERTIBLE[t["op"]]
        if t["op"] == "cast" and not t.get("lossless", False):
            return False, f"cast to {t['to']} loses precision"
    return True, None
