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
    add_constant {"value"}                             every element plus `value`, computed in float64
                                                       and rounded once to the tensor's float dtype
                                                       (llama.cpp's Gemma norms: stored as 1 + weight)
    concat       {"axis", "inputs"?}
    add          {"inputs"?}                           not invertible: a sum of several tensors
    select       {"inputs"}                            keep only these arrays, in this order
    weight_norm  {"inputs"?}                           [g, v] -> g * v / ||v||, the norm over the axes
                                                       where g has size 1 (all when g is 0-d): what
                                                       torch's weight_norm computes in every forward
    spectral_norm {"dim", "eps"?, "inputs"?}           [w, u, v] -> w / sigma, sigma = u . (W v) with
                                                       W = w's axis `dim` first, the rest flattened:
                                                       torch's eval-mode spectral_norm; [w] (1-D) ->
                                                       w / max(||w||, eps)

`verify --source` proves an output by replaying its chain on the source and comparing bytes, which
is exact for deterministic steps, lossy ones included; `invertible` says whether the output alone
determines its sources.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

import numpy as np

from .dtypes import CastLossError, DType, cast_array, cast_checked, dtype as lookup_dtype, from_numpy
from .errors import MappingError, UnsupportedFormatError
from .tensors import TensorRef
from .vocabulary import TRANSFORM_OPS

Shape = tuple[int, ...]
Spec = tuple[Shape, DType]
T = TypeVar("T")  # what a chain runs on: arrays, or (shape, dtype) specs
Step = Mapping[str, Any]  # one transform, as rule files, readers and the manifest (a Transform) hold it

NOT_INVERTIBLE = {
    "add": "a sum of several tensors cannot be split back",
    "add_constant": "adding a constant rounds away the low bits of small values",
    "split": "one block of a tensor does not determine the others",
    "select": "the sources it leaves out are not in this tensor",
    "weight_norm": "a folded weight does not determine its magnitude and direction tensors",
    "spectral_norm": "a folded weight does not determine its unnormalized weight and power-iteration vectors",
}
JOINS = ("concat", "add", "weight_norm", "spectral_norm")  # ops that make one array of several
FOLDS = ("weight_norm", "spectral_norm")


def _axis(axis: int, ndim: int, op: str) -> int:
    if not -ndim <= axis < ndim:
        raise MappingError(f"{op}: axis {axis} does not exist in a {ndim}-d tensor")
    return axis % ndim


def _targets(t: Step, count: int) -> list[int]:
    if "input" in t:
        idx = int(t["input"])
        if not 0 <= idx < count:
            raise MappingError(f"{t['op']}: input {idx} does not exist")
        return [idx]
    return list(range(count))


def _join_targets(t: Step, count: int) -> list[int]:
    idx = [int(i) for i in t.get("inputs", range(count))]
    if not idx or any(not 0 <= i < count for i in idx):
        raise MappingError(f"{t['op']}: inputs {idx} do not exist")
    return idx


# --- shapes and dtypes, computed without touching data -------------------------------------------


def _perm(t: Step, ndim: int) -> list[int]:
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


def _block(shape: Shape, t: Step) -> tuple[int, int]:
    axis = _axis(int(t["axis"]), len(shape), t["op"])
    parts = int(t["parts"])
    if parts <= 0 or shape[axis] % parts:
        raise MappingError(f"{t['op']}: axis {axis} of size {shape[axis]} does not split into {parts} parts")
    return axis, shape[axis] // parts


def _unary_spec(t: Step, shape: Shape, dt: DType) -> Spec:
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
    if op == "add_constant":
        value = t["value"]
        if not dt.is_float or isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
            raise MappingError(f"add_constant: {value!r} to a {dt.code} tensor (a finite number to a float tensor)")
        return shape, dt
    raise MappingError(f"unknown transform {op!r}")


def _join_spec(t: Step, specs: list[Spec]) -> Spec:
    shapes = [s for s, _ in specs]
    dtypes = {d.code for _, d in specs}
    if len(dtypes) != 1:
        raise MappingError(f"{t['op']}: inputs have different dtypes {sorted(dtypes)}")
    if t["op"] in FOLDS:
        if not specs[0][1].is_float:
            raise MappingError(f"{t['op']}: inputs are {specs[0][1].code}, not floating point")
        if t["op"] == "weight_norm":
            _norm_axes(shapes)
            return specs[1]
        _spectral_dim(t, shapes)
        return specs[0]
    if t["op"] == "add":
        if len(set(shapes)) != 1:
            raise MappingError(f"add: inputs have different shapes {shapes}")
        return specs[0]
    axis = _axis(int(t["axis"]), len(shapes[0]), "concat")
    rest = {s[:axis] + s[axis + 1 :] for s in shapes}
    if len(rest) != 1 or len({len(s) for s in shapes}) != 1:
        raise MappingError(f"concat: shapes {shapes} do not line up on axis {axis}")
    return shapes[0][:axis] + (sum(s[axis] for s in shapes),) + shapes[0][axis + 1 :], specs[0][1]


def output_spec(transforms: Sequence[Step], sources: list[Spec]) -> Spec:
    """Shape and dtype a chain produces, checked step by step; MappingError if a step cannot apply."""
    return _run(transforms, sources, lambda t, spec: _unary_spec(t, *spec), _join_spec)


# --- data -----------------------------------------------------------------------------------------


def _unary_apply(t: Step, arr: np.ndarray) -> np.ndarray:
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
    if op == "add_constant":
        _unary_spec(t, arr.shape, from_numpy(arr.dtype))
        with np.errstate(over="ignore"):
            out = (arr.astype(np.float64) + float(t["value"])).astype(arr.dtype)
        if np.count_nonzero(np.isinf(out)) != np.count_nonzero(np.isinf(arr)):
            raise MappingError(f"add_constant: {t['value']} takes values of this {arr.dtype} tensor out of its range")
        return out
    raise MappingError(f"unknown transform {op!r}")


def _norm_axes(shapes: list[Shape]) -> tuple[int, ...]:
    """weight_norm's reduced axes: g is 0-d (one norm over all of v) or v's rank with size 1 on every
    axis but at most one, where it matches v (torch's `dim`)."""
    if len(shapes) != 2:
        raise MappingError(f"weight_norm: takes [g, v], not {len(shapes)} inputs")
    g, v = shapes
    fits = not g or (len(g) == len(v) and sum(a != 1 for a in g) <= 1 and all(a in (1, b) for a, b in zip(g, v, strict=True)))
    if not v or not fits:
        raise MappingError(f"weight_norm: magnitude {list(g)} does not fit direction {list(v)}")
    return tuple(i for i, a in enumerate(g) if a == 1) if g else tuple(range(len(v)))


def _spectral_dim(t: Step, shapes: list[Shape]) -> int:
    """spectral_norm's checked `dim`: u holds w.shape[dim] values, v the rest of w's."""
    w = shapes[0]
    if len(shapes) == 1:
        if len(w) != 1:
            raise MappingError(f"spectral_norm: a {len(w)}-d weight needs its u and v vectors")
        return 0
    if len(shapes) != 3 or not w:
        raise MappingError(f"spectral_norm: takes [w, u, v], not {len(shapes)} inputs")
    dim = _axis(int(t["dim"]), len(w), "spectral_norm")
    rows = w[dim]
    if shapes[1] != (rows,) or shapes[2] != ((math.prod(w) // rows) if rows else 0,):
        raise MappingError(f"spectral_norm: u {list(shapes[1])} and v {list(shapes[2])} do not fit {list(w)} at dim {dim}")
    return dim


def _fold(t: Step, arrays: list[np.ndarray]) -> np.ndarray:
    """A weight-norm or spectral-norm weight as torch's eval-mode forward computes it, in float64
    and rounded once to the inputs' dtype."""
    wide = [a.astype(np.float64) for a in arrays]
    if t["op"] == "weight_norm":
        g, v = wide
        norm = np.sqrt(np.square(v).sum(axis=_norm_axes([a.shape for a in arrays]), keepdims=True))
        out: np.ndarray = v * (g / norm)
    elif len(wide) == 1:
        (w,) = wide
        out = w / max(float(np.sqrt(np.square(w).sum())), float(t.get("eps", 1e-12)))
    else:
        w, u, v = wide
        dim = _spectral_dim(t, [a.shape for a in arrays])
        sigma = float(u @ (np.moveaxis(w, dim, 0).reshape(w.shape[dim], -1) @ v))
        out = w / sigma
    return out.astype(arrays[0].dtype)


def _join_apply(t: Step, arrays: list[np.ndarray]) -> np.ndarray:
    if t["op"] in FOLDS:
        return _fold(t, arrays)
    if t["op"] == "add":
        total = arrays[0].copy()
        for a in arrays[1:]:
            total += a
        return total
    return np.concatenate(arrays, axis=int(t["axis"]))


def apply(transforms: Sequence[Step], sources: list[np.ndarray]) -> np.ndarray:
    """Run a chain on source arrays (the same code writes outputs and replays them in verify)."""
    return _run(transforms, sources, lambda t, a: _unary_apply(t, a), _join_apply)


def _run(transforms: Sequence[Step], items: list[T], unary: Callable[[Step, T], T], join: Callable[[Step, list[T]], T]) -> T:
    items = list(items)
    for t in transforms:
        if not isinstance(t, dict) or t.get("op") not in TRANSFORM_OPS:
            raise MappingError(f"unknown transform {t.get('op') if isinstance(t, dict) else t!r}")
        try:
            if t.get("op") == "select":
                items = [items[i] for i in _join_targets(t, len(items))]
            elif t.get("op") in JOINS:
                idx = _join_targets(t, len(items))
                joined = join(t, [items[i] for i in idx])
                items = [joined if i == idx[0] else x for i, x in enumerate(items) if i == idx[0] or i not in idx]
            else:
                for i in _targets(t, len(items)):
                    items[i] = unary(t, items[i])
        except (KeyError, TypeError, ValueError) as exc:  # a user's rule file or a manifest: a parameter missing or mistyped
            raise MappingError(f"{t.get('op')}: bad or missing parameter ({type(exc).__name__}: {exc})") from None
    if len(items) != 1:
        raise MappingError(f"a transform chain must end with one tensor, not {len(items)}")
    return items[0]


def derived(name: str, sources: list[TensorRef], transforms: Sequence[Step]) -> TensorRef:
    """A lazy tensor made from `sources` by `transforms`, checked now and computed when read; with no
    transform and one source, that source renamed (its file span and identity kept)."""
    if not transforms and len(sources) == 1:
        return sources[0].renamed(name)
    shape, dt = output_spec(transforms, [(s.shape, s.dtype) for s in sources])
    return TensorRef(name, dt, shape, lambda: apply(transforms, [s.array() for s in sources]))


def invertible(transforms: Sequence[Step]) -> tuple[bool, str | None]:
    """Whether the output alone determines its sources exactly, and if not, why."""
    for t in transforms:
        if t["op"] in NOT_INVERTIBLE:
            return False, NOT_INVERTIBLE[t["op"]]
        if t["op"] == "cast" and not t.get("lossless", False):
            return False, f"cast to {t['to']} loses precision"
    return True, None
