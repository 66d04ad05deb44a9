"""The K-quants' searches and last passes compiled with numba (the `fast` extra): the float32
operations of their numpy twins in quants.py (which follow ggml's quantize_row_q*_K_ref), in the
same order: 2.7x (q2_k, q5_k, q6_k) to 3.8x (q3_k) the speed of the numpy code, 3.6x for q4_k.

The numpy searches are vectorised across groups but make a full pass over the chunk for every
operation, some 15 passes per trial scale and 16 to 22 trials: they are bound by memory traffic.
Here a tile of TILE groups is copied into a small buffer and searched there, in L1: the loops run
over a group's values in the C code's order, and across the tile's groups innermost, which LLVM
vectorises (16 float32 lanes to an AVX-512 register) without reordering any group's additions:
each lane is one group. Every value is float32, and every operation rounds to float32 where ggml's
C code rounds (numba computes an operation on float32 values in float32; a Python float or an int
in the expression would make it float64, so every constant is cast); fastmath stays off, so nothing
is fused into an FMA or reassociated. nearest_int is ggml's bit trick, through a bitcast. One
difference from the numpy search, invisible in the bytes: make_qkx2's min of a group whose minimum
is a zero keeps the first zero's sign, as ggml's scan does (numpy's min takes either).

Inputs are the searches' columns: values of shape (values per group, groups), C order. The kernels
release the GIL (the encoder's worker threads run them at once) and are cached on disk when first
compiled (about 6 s for all of them, once per install); where no cache folder is writable they are
compiled in each process instead. quants.py imports this module only when numba is installed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numba
import numpy as np
from llvmlite import ir
from numba.core import types
from numba.extending import intrinsic

TILE = 64  # groups searched at once: four AVX-512 registers of float32 lanes (16 or 32: slower here)
# Rows of the kernels' per-group state: one array, whose rows the compiler can tell apart
_LO, _HI, _FIRST_LO, _SUM_W, _SUM_X, _BEST, _SCALE, _ISCALE, _CHOSEN, _CHOSEN_LO = range(10)
_SUM_L, _SUM_L2, _SUM_XL, _DET, _THIS_SCALE, _THIS_MIN, _CUR = range(10, 17)
_BIG, _SUM_LX, _SUM_L2X, _ACTIVE, _CHANGED = range(17, 22)  # make_qx and make_q3
_STATE = 22


def _jit(fn: Callable[..., Any]) -> Callable[..., Any]:
    """numba's njit as these kernels need it: no GIL, strict float32 (no fastmath), float errors as
    numpy's (inf and NaN, not exceptions), cached on disk when a cache folder is writable."""
    try:
        return numba.njit(fn, cache=True, nogil=True, fastmath=False, error_model="numpy")
    except RuntimeError:  # "cannot cache function ...": neither next to this file nor in the user's cache
        return numba.njit(fn, cache=False, nogil=True, fastmath=False, error_model="numpy")


def _nearest(typingctx: Any, v: Any) -> Any:
    """ggml's nearest_int as a float32: the low 23 bits of v + 1.5 * 2**23, less 2**22 (all in
    int32, as the C code's memcpy into an int; exact as a float, whatever v is)."""
    if v != types.float32:
        return None

    def codegen(context: Any, builder: Any, signature: Any, args: Any) -> Any:
        i32 = ir.IntType(32)
        shifted = builder.fadd(args[0], ir.Constant(ir.FloatType(), 12582912.0))
        bits = builder.and_(builder.bitcast(shifted, i32), ir.Constant(i32, 0x007FFFFF))
        return builder.sitofp(builder.sub(bits, ir.Constant(i32, 0x00400000)), ir.FloatType())

    return types.float32(types.float32), codegen


nearest: Any = intrinsic(_nearest)


@_jit
def _qkx2(x, w, nmax, rmin, rdelta, nstep, use_mad, scale_out, min_out, levels):  # type: ignore[no-untyped-def]
    """make_qkx2_quants for every group: scale_out, min_out (-min) and levels filled."""
    n, groups = x.shape
    f_nmax = np.float32(nmax)
    f_rmin = np.float32(rmin)
    f_rdelta = np.float32(rdelta)
    zero = np.float32(0.0)
    xt = np.zeros((n, TILE), np.float32)
    wt = np.zeros((n, TILE), np.float32)
    lt = np.zeros((n, TILE), np.float32)  # a trial's levels
    st = np.zeros((_STATE, TILE), np.float32)
    for g0 in range(0, groups, TILE):
        t = min(TILE, groups - g0)
        for i in range(n):
            xt[i, :t] = x[i, g0 : g0 + t]
            wt[i, :t] = w[i, g0 : g0 + t]
        for g in range(TILE):
            st[_LO, g] = xt[0, g]
            st[_HI, g] = xt[0, g]
            st[_SUM_W, g] = wt[0, g]
            st[_SUM_X, g] = wt[0, g] * xt[0, g]
        for i in range(1, n):
            for g in range(TILE):
                v = xt[i, g]
                st[_LO, g] = v if v < st[_LO, g] else st[_LO, g]
                st[_HI, g] = v if v > st[_HI, g] else st[_HI, g]
                st[_SUM_W, g] = st[_SUM_W, g] + wt[i, g]
                st[_SUM_X, g] = st[_SUM_X, g] + wt[i, g] * v
        for g in range(TILE):
            lo = zero if st[_LO, g] > zero else st[_LO, g]
            st[_LO, g] = lo
            st[_FIRST_LO, g] = lo
            iscale = f_nmax / (st[_HI, g] - lo)
            st[_ISCALE, g] = iscale
            st[_SCALE, g] = np.float32(1.0) / iscale
            st[_CHOSEN, g] = iscale
            st[_CHOSEN_LO, g] = lo
            st[_BEST, g] = zero
        # the first levels and their error, against scale = 1 / iscale
        for i in range(n):
            for g in range(TILE):
                v = xt[i, g]
                q = min(max(nearest(st[_ISCALE, g] * (v - st[_LO, g])), zero), f_nmax)
                diff = st[_SCALE, g] * q + st[_LO, g] - v
                diff = abs(diff) if use_mad else diff * diff
                st[_BEST, g] = st[_BEST, g] + wt[i, g] * diff
        for step in range(nstep + 1):
            f_step = f_rmin + f_rdelta * np.float32(step) + f_nmax
            for g in range(TILE):
                st[_ISCALE, g] = f_step / (st[_HI, g] - st[_LO, g])
                st[_SUM_L, g] = zero
                st[_SUM_L2, g] = zero
                st[_SUM_XL, g] = zero
            for i in range(n):
                for g in range(TILE):
                    v = xt[i, g]
                    q = min(max(nearest(st[_ISCALE, g] * (v - st[_LO, g])), zero), f_nmax)
                    lt[i, g] = q
                    wl = wt[i, g] * q
                    st[_SUM_L, g] = st[_SUM_L, g] + wl
                    st[_SUM_L2, g] = st[_SUM_L2, g] + wl * q
                    st[_SUM_XL, g] = st[_SUM_XL, g] + wl * v
            for g in range(TILE):
                sum_w, sum_x = st[_SUM_W, g], st[_SUM_X, g]
                sum_l, sum_l2, sum_xl = st[_SUM_L, g], st[_SUM_L2, g], st[_SUM_XL, g]
                d = sum_w * sum_l2 - sum_l * sum_l
                s = (sum_w * sum_xl - sum_x * sum_l) / d
                m = (sum_l2 * sum_x - sum_l * sum_xl) / d
                clamp = m > zero
                st[_DET, g] = d
                st[_THIS_SCALE, g] = sum_xl / sum_l2 if clamp else s
                st[_THIS_MIN, g] = zero if clamp else m
                st[_CUR, g] = zero
            for i in range(n):
                for g in range(TILE):
                    v = xt[i, g]
                    diff = st[_THIS_SCALE, g] * lt[i, g] + st[_THIS_MIN, g] - v
                    diff = abs(diff) if use_mad else diff * diff
                    st[_CUR, g] = st[_CUR, g] + wt[i, g] * diff
            for g in range(TILE):
                better = st[_DET, g] > zero and st[_CUR, g] < st[_BEST, g]
                st[_CHOSEN, g] = st[_ISCALE, g] if better else st[_CHOSEN, g]
                st[_CHOSEN_LO, g] = st[_LO, g] if better else st[_CHOSEN_LO, g]
                st[_BEST, g] = st[_CUR, g] if better else st[_BEST, g]
                st[_SCALE, g] = st[_THIS_SCALE, g] if better else st[_SCALE, g]
                st[_LO, g] = st[_THIS_MIN, g] if better else st[_LO, g]
        for g in range(t):
            flat = st[_HI, g] == st[_FIRST_LO, g]
            scale_out[g0 + g] = zero if flat else st[_SCALE, g]
            min_out[g0 + g] = -(st[_FIRST_LO, g] if flat else st[_LO, g])
        for i in range(n):
            for g in range(TILE):
                q = min(max(nearest(st[_CHOSEN, g] * (xt[i, g] - st[_CHOSEN_LO, g])), zero), f_nmax)
                lt[i, g] = zero if st[_HI, g] == st[_FIRST_LO, g] else q
            levels[i, g0 : g0 + t] = lt[i, :t]


@_jit
def _load_tile(x, g0, t, xt, st):  # type: ignore[no-untyped-def]
    """Groups g0..g0+t of x into the tile xt, and each one's value of largest magnitude into st[_BIG]
    (the first on ties: ggml's strict scan from 0)."""
    zero = np.float32(0.0)
    for i in range(x.shape[0]):
        xt[i, :t] = x[i, g0 : g0 + t]
    for g in range(TILE):
        st[_BIG, g] = zero
    for i in range(x.shape[0]):
        for g in range(TILE):
            v = xt[i, g]
            st[_BIG, g] = v if abs(v) > abs(st[_BIG, g]) else st[_BIG, g]


@_jit
def _qx(x, nmax, scale_out, levels):  # type: ignore[no-untyped-def]
    """make_qx_quants (rmse_type 1, no importance) for every group: scale_out and levels + nmax."""
    n, groups = x.shape
    f_nmax = np.float32(nmax)
    lo = np.float32(-nmax)
    top = np.float32(nmax - 1)
    zero = np.float32(0.0)
    eps = np.float32(1e-15)
    xt = np.zeros((n, TILE), np.float32)
    lt = np.zeros((n, TILE), np.float32)
    st = np.zeros((_STATE, TILE), np.float32)
    for g0 in range(0, groups, TILE):
        t = min(TILE, groups - g0)
        _load_tile(x, g0, t, xt, st)
        # trial 0 is -nmax / max, then -(nmax + 0.1 * step) / max for step -9..9 but 0
        for trial in range(19):
            step = trial - 10 if trial <= 9 else trial - 9
            for g in range(TILE):
                big = st[_BIG, g]
                st[_ISCALE, g] = lo / big if trial == 0 else -(f_nmax + np.float32(0.1) * np.float32(step)) / big
                st[_SUM_LX, g] = zero
                st[_SUM_L2X, g] = zero
            for i in range(n):
                for g in range(TILE):
                    v = xt[i, g]
                    q = min(max(nearest(st[_ISCALE, g] * v), lo), top)
                    w = v * v
                    st[_SUM_LX, g] = st[_SUM_LX, g] + w * v * q
                    st[_SUM_L2X, g] = st[_SUM_L2X, g] + w * q * q
            for g in range(TILE):
                slx, sl2 = st[_SUM_LX, g], st[_SUM_L2X, g]
                if trial == 0:
                    s = slx / sl2 if sl2 != zero else zero
                    st[_CHOSEN, g] = st[_ISCALE, g]
                    st[_SCALE, g] = s
                    st[_BEST, g] = s * slx
                elif sl2 > zero and slx * slx > st[_BEST, g] * sl2:
                    s = slx / sl2
                    st[_CHOSEN, g] = st[_ISCALE, g]
                    st[_SCALE, g] = s
                    st[_BEST, g] = s * slx
        for g in range(t):
            scale_out[g0 + g] = zero if abs(st[_BIG, g]) < eps else st[_SCALE, g]
        for i in range(n):
            for g in range(TILE):
                q = min(max(nearest(st[_CHOSEN, g] * xt[i, g]), lo), top) + f_nmax
                lt[i, g] = zero if abs(st[_BIG, g]) < eps else q
            levels[i, g0 : g0 + t] = lt[i, :t]


@_jit
def _q3(x, nmax, scale_out, levels):  # type: ignore[no-untyped-def]
    """make_q3_quants (do_rmse) for every group: scale_out and levels + nmax."""
    n, groups = x.shape
    f_nmax = np.float32(nmax)
    lo = np.float32(-nmax)
    top = np.float32(nmax - 1)
    zero = np.float32(0.0)
    one = np.float32(1.0)
    eps = np.float32(1e-15)
    xt = np.zeros((n, TILE), np.float32)
    lt = np.zeros((n, TILE), np.float32)
    st = np.zeros((_STATE, TILE), np.float32)
    for g0 in range(0, groups, TILE):
        t = min(TILE, groups - g0)
        _load_tile(x, g0, t, xt, st)
        for g in range(TILE):
            st[_ISCALE, g] = lo / st[_BIG, g]
            st[_SUM_LX, g] = zero
            st[_SUM_L2X, g] = zero
            st[_ACTIVE, g] = one
        for i in range(n):
            for g in range(TILE):
                v = xt[i, g]
                q = min(max(nearest(st[_ISCALE, g] * v), lo), top)
                lt[i, g] = q
                w = v * v
                st[_SUM_LX, g] = st[_SUM_LX, g] + w * v * q
                st[_SUM_L2X, g] = st[_SUM_L2X, g] + w * q * q
        for _ in range(5):  # each level changed alone when that improves the fit, up to five passes
            for g in range(TILE):
                st[_CHANGED, g] = zero
            for i in range(n):
                for g in range(TILE):
                    v = xt[i, g]
                    li = lt[i, g]
                    w = v * v
                    sumlx, suml2 = st[_SUM_LX, g], st[_SUM_L2X, g]
                    slx = sumlx - w * v * li
                    sl2 = suml2 - w * li * li
                    new = min(max(nearest(v * sl2 / slx), lo), top)
                    take = st[_ACTIVE, g] != zero and slx > zero and new != li
                    slx = slx + w * v * new
                    sl2 = sl2 + w * new * new
                    take = take and sl2 > zero and slx * slx * suml2 > sumlx * sumlx * sl2
                    lt[i, g] = new if take else li
                    st[_SUM_LX, g] = slx if take else sumlx
                    st[_SUM_L2X, g] = sl2 if take else suml2
                    st[_CHANGED, g] = one if take else st[_CHANGED, g]
            more = False
            for g in range(TILE):
                st[_ACTIVE, g] = st[_ACTIVE, g] if st[_CHANGED, g] != zero else zero
                more = more or st[_ACTIVE, g] != zero
            if not more:
                break
        for g in range(t):
            sumlx, suml2 = st[_SUM_LX, g], st[_SUM_L2X, g]
            scale_out[g0 + g] = sumlx / suml2 if suml2 > zero and abs(st[_BIG, g]) >= eps else zero
        for i in range(n):
            for g in range(TILE):
                lt[i, g] = zero if abs(st[_BIG, g]) < eps else lt[i, g] + f_nmax
            levels[i, g0 : g0 + t] = lt[i, :t]


@_jit
def _weights45(x, out):  # type: ignore[no-untyped-def]
    """q4_K's and q5_K's weights: sqrt(sum of squares / 32) + |x| per value."""
    n, groups = x.shape
    sums = np.zeros(groups, np.float32)
    for i in range(n):
        for g in range(groups):
            sums[g] = sums[g] + x[i, g] * x[i, g]
    for g in range(groups):
        sums[g] = np.float32(np.sqrt(sums[g] / np.float32(32.0)))
    for i in range(n):
        for g in range(groups):
            out[i, g] = sums[g] + abs(x[i, g])


@_jit
def _requant(x, levels, step, offset, has_offset, lo, hi, base, out):  # type: ignore[no-untyped-def]
    """The last pass: nearest_int((x + offset) / step) clamped to lo..hi, plus base; the search's
    levels where step is 0."""
    n, groups = x.shape
    f_lo, f_hi, f_base = np.float32(lo), np.float32(hi), np.float32(base)
    for i in range(n):
        for g in range(groups):
            v = x[i, g] + offset[g] if has_offset else x[i, g]
            q = min(max(nearest(v / step[g]), f_lo), f_hi) + f_base
            out[i, g] = np.uint8(q if step[g] != np.float32(0.0) else levels[i, g])


def make_qkx2(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """quants._make_qkx2, compiled: (scale, -min, levels) per group."""
    scale = np.empty(x.shape[1], np.float32)
    neg_min = np.empty(x.shape[1], np.float32)
    levels = np.empty(x.shape, np.float32)
    _qkx2(np.ascontiguousarray(x), np.ascontiguousarray(w), nmax, rmin, rdelta, nstep, use_mad, scale, neg_min, levels)
    return scale, neg_min, levels


def make_qx(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """quants._make_qx, compiled: (scale, levels + nmax) per group."""
    scale = np.empty(x.shape[1], np.float32)
    levels = np.empty(x.shape, np.float32)
    _qx(np.ascontiguousarray(x), nmax, scale, levels)
    return scale, levels


def make_q3(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """quants._make_q3, compiled: (scale, levels + nmax) per group."""
    scale = np.empty(x.shape[1], np.float32)
    levels = np.empty(x.shape, np.float32)
    _q3(np.ascontiguousarray(x), nmax, scale, levels)
    return scale, levels


def q45_weights(x: np.ndarray) -> np.ndarray:
    """quants._q45_weights, compiled."""
    out = np.empty(x.shape, np.float32)
    _weights45(np.ascontiguousarray(x), out)
    return out


def requantize(
    x: np.ndarray, levels: np.ndarray, step: np.ndarray, offset: np.ndarray | None, lo: int, hi: int, base: int
) -> np.ndarray:
    """quants._requantize, compiled."""
    out = np.empty(x.shape, np.uint8)
    shift = step if offset is None else offset
    _requant(np.ascontiguousarray(x), np.ascontiguousarray(levels), step, shift, offset is not None, lo, hi, base, out)
    return out


# quants.py's numpy functions by name, and their compiled twins
TWINS: dict[str, Callable[..., Any]] = {
    "_make_qkx2": make_qkx2,
    "_make_qx": make_qx,
    "_make_q3": make_q3,
    "_q45_weights": q45_weights,
    "_requantize": requantize,
}
