"""ggml's quantizers and dequantizers, in numpy, byte for byte.

`quantize` turns float32 rows into the blocks ggml stores; `dequantize` turns blocks back into float32.
Both work on whole rows at once (the caller hands over a chunk of rows at a time, so memory stays flat).

Exactness is the point: a GGUF file written here must hold the bytes llama.cpp's own tools write, so
that `verify --source` can re-quantize and compare byte for byte, and so that a model quantized here
behaves as one quantized by llama.cpp. Every type equals ggml's own `ggml_quantize_chunk` without an
importance matrix (what `llama-quantize` runs), as tests/outputs/gguf/test_quants.py checks through
llama-cpp-python. The legacy quants (q4_0 ... q8_0) and bf16 follow ggml's reference C code as the
`gguf` package does (except the sign of a zero scale, where gguf's numpy min and max drift from
ggml's scan); the K-quants follow `quantize_row_q*_K_ref` (ggml-quants.c) step by step in float32:
every sum is accumulated in the C code's order (numpy's reduction along the first axis of a C-ordered
array adds the rows one after the other, the C loop's order), every product and quotient is rounded
where the C code rounds it, and `nearest_int` is ggml's bit trick. That is ggml as compiled for
x86-64, where ggml-base has no FMA: a compiler that fuses a*b+c (aarch64 by default) can change
ggml's own last bits, and so its bytes, on other machines. Quantizing takes float32 only: the caller
decides how wider floats narrow.

Values a quantized type cannot hold are refused (NaN, infinities, and blocks whose f16 scale would
overflow); the floating types (f32, f16, bf16) are plain casts, whose losses the caller checks as for
any `--dtype` cast.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from collections.abc import Callable
from typing import Any

import numpy as np

from convert.errors import MappingError
from convert.outputs.gguf.ggml_types import QK_K, GGMLType, ggml_type

F32 = np.float32
_HALF_DOWN = np.nextafter(F32(0.5), F32(0))  # the float below 0.5: x + copysign(it, x) truncates as roundf
_GROUP_MAX_EPS = F32(1e-15)  # ggml: below this a K-quant group counts as all zero
_F16_MAX = 65504.0
_ROUNDER = F32(12582912.0)  # 1.5 * 2**23: v + it - it is v rounded half to even, for |v| <= 2**22
_LEGACY_PIECE = 4096  # blocks of 32 quantized at once: 512 KiB of float32 in, temporaries near cache size
_K_PIECE = 512  # super-blocks quantized at once: 128 K values, 512 KiB per float32 temporary (fastest here)
# The K-quant searches run compiled (kernels.py, numba: the `fast` extra) when numba imports, in numpy
# otherwise; both give the same bytes. CONVERT_GGUF_KERNELS=numpy (or COMPILED = False) keeps numpy.
KERNELS_ENV = "CONVERT_GGUF_KERNELS"
COMPILED = os.environ.get(KERNELS_ENV, "") != "numpy"


class QuantizationError(MappingError):
    """Values a GGUF type cannot hold (exit 7, as other misfits between a tensor and its target)."""


def _type(qtype: GGMLType | str) -> GGMLType:
    return qtype if isinstance(qtype, GGMLType) else ggml_type(qtype)


# ---------------------------------------------------------------------------------------------- API


def quantize(rows: np.ndarray, qtype: GGMLType | str, what: str = "tensor") -> np.ndarray:
    """`rows` (2-D float32, each row a whole number of blocks) as ggml stores them: a uint8 array of
    one row of bytes per input row. A value a quantized type cannot hold raises QuantizationError
    (exit 7) naming `what`; a wrong shape or dtype is the caller's bug (ValueError)."""
    t = _type(qtype)
    if rows.ndim != 2 or rows.dtype != np.float32:
        raise ValueError(f"quantize takes 2-D float32 rows, not {rows.ndim}-D {rows.dtype}")
    if not t.fits(rows.shape[1]):
        raise ValueError(f"a row of {rows.shape[1]} values is not a whole number of {t.name} blocks ({t.block_size})")
    rows = np.ascontiguousarray(rows)
    shape = (rows.shape[0], t.row_bytes(rows.shape[1]))
    if t.name == "f32":
        return rows.astype("<f4", copy=False).view(np.uint8).reshape(shape)
    if t.name == "f16":
        with np.errstate(over="ignore"):
            return rows.astype("<f2").view(np.uint8).reshape(shape)
    if t.name == "bf16":
        return _bf16(rows).view(np.uint8).reshape(shape)
    blocks = rows.reshape(-1, t.block_size)
    quantizer = _QUANTIZERS[t.name]
    # Pieces whose temporaries stay in the CPU's cache: the K-quants make hundreds of passes over each.
    piece = _K_PIECE if t.block_size == QK_K else _LEGACY_PIECE
    out = np.empty((blocks.shape[0], t.type_size), dtype=np.uint8)
    with np.errstate(all="ignore"):
        for start in range(0, blocks.shape[0], piece):
            out[start : start + piece] = quantizer(blocks[start : start + piece], t, what)
    return out.reshape(shape)


def dequantize(data: np.ndarray, qtype: GGMLType | str, shape: tuple[int, ...]) -> np.ndarray:
    """The float32 values of `data` (bytes as `quantize` returns them, any shape) in `shape` (numpy
    order, the last axis the row)."""
    t = _type(qtype)
    n_values = int(np.prod(shape))
    raw = np.ascontiguousarray(data).view(np.uint8).reshape(-1)
    if n_values % t.block_size or raw.size != n_values // t.block_size * t.type_size:
        raise ValueError(f"{raw.size} bytes are not {t.name} data for shape {tuple(shape)}")
    if t.name == "f32":
        values = raw.view("<f4").astype(F32)
    elif t.name == "f16":
        values = raw.view("<f2").astype(F32)
    elif t.name == "bf16":
        values = (raw.view("<u2").astype(np.uint32) << 16).view(F32)
    else:
        with np.errstate(invalid="ignore", over="ignore"):  # an inf scale decodes to inf and NaN, as in ggml
            values = _DEQUANTIZERS[t.name](raw.reshape(-1, t.type_size))
    return values.reshape(shape)


# ---------------------------------------------------------------------------------------- helpers


def _bf16(x: np.ndarray) -> np.ndarray:
    """ggml_compute_fp32_to_bf16: NaN made quiet, everything else rounded to nearest even."""
    n = x.view(np.uint32)
    nan = (n & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000)
    rounded = (n + (np.uint32(0x7FFF) + ((n >> np.uint32(16)) & np.uint32(1)))) >> np.uint32(16)
    quiet = (n >> np.uint32(16)) | np.uint32(64)
    return np.where(nan, quiet, rounded).astype("<u2")


def _refuse_nonfinite(blocks: np.ndarray, t: GGMLType, what: str, *reduced: np.ndarray) -> None:
    """Raise when a block holds NaN or an infinity (one of its maxima or minima is then not finite)."""
    if all(np.isfinite(r).all() for r in reduced):
        return
    bad = int(np.count_nonzero(~np.isfinite(blocks)))
    raise QuantizationError(f"{what}: {bad} value(s) are NaN or infinite, which {t.name} cannot hold")


def _f16(values: np.ndarray, t: GGMLType, what: str) -> np.ndarray:
    """Block scales as ggml stores them (GGML_FP32_TO_FP16, round to nearest even), refusing overflow:
    an infinite scale would turn the whole block into inf and NaN."""
    half = values.astype("<f2")
    if not np.isfinite(half).all():
        worst = float(np.max(np.abs(values)))
        raise QuantizationError(
            f"{what}: a {t.name} block's f16 scale would be {worst:.4g}, and f16 holds at most {_F16_MAX:g}: "
            f"the values are too large for {t.name}"
        )
    return half


def _refuse_overflowed(scales: np.ndarray, blocks: np.ndarray, t: GGMLType, what: str) -> None:
    """Raise when a group's scale came out infinite or NaN: values so large that their squares or
    their spread overflow float32 (f16's limit on the stored scale is far lower, so nothing valid
    is refused here)."""
    if not np.isfinite(scales).all():
        worst = float(np.max(np.abs(blocks)))
        raise QuantizationError(f"{what}: values up to {worst:.4g} are too large for {t.name}: its scales overflow")


def _put(out: np.ndarray, start: int, part: np.ndarray) -> int:
    """Copy `part` (one row of bytes, or one value, per block) into `out` at byte `start`."""
    b = np.ascontiguousarray(part).view(np.uint8).reshape(out.shape[0], -1)
    out[:, start : start + b.shape[1]] = b
    return start + b.shape[1]


def _assemble(n_blocks: int, t: GGMLType, *parts: np.ndarray) -> np.ndarray:
    out = np.empty((n_blocks, t.type_size), dtype=np.uint8)
    at = 0
    for part in parts:
        at = _put(out, at, part)
    assert at == t.type_size
    return out


def _c_int(v: np.ndarray) -> np.ndarray:
    """C's float-to-int conversion as x86-64 compiles it (cvttss2si): truncation, and INT_MIN for
    NaN, infinities and values out of int32's range. Only blocks with subnormal scales reach these."""
    ok = np.isfinite(v) & (np.abs(v) < 2.0**31)
    return np.where(ok, np.trunc(np.where(ok, v, 0)), -(2**31)).astype(np.int64)


def _wrap8(v: np.ndarray) -> np.ndarray:
    """An int as C stores it in an int8_t (two's complement wrap)."""
    return ((v + 128) & 255) - 128


def _nearest_int(v: np.ndarray) -> np.ndarray:
    """ggml's nearest_int: add 1.5 * 2**23 and read the mantissa; round half to even in range, and the
    same bits as the C code out of range (its assert is compiled out)."""
    val = (v.astype(F32, copy=False) + F32(12582912.0)).view(np.int32)
    return (val & 0x007FFFFF) - 0x00400000


def _rint(v: np.ndarray) -> None:
    """Round `v` in place half to even, for |v| <= 2**22 (where it equals nearest_int); two additions,
    several times faster than np.rint on float32."""
    np.add(v, _ROUNDER, out=v)
    np.subtract(v, _ROUNDER, out=v)


def _seqsum(a: np.ndarray) -> np.ndarray:
    """Sum over the first axis, adding the rows one after the other as the C loops do. There are
    always several columns (8 or 16 groups per super-block): a single column would be reduced as one
    contiguous run, which numpy sums with eight partial sums."""
    return np.add.reduce(a, axis=0)


def _seqsum_of_products(*factors: np.ndarray) -> np.ndarray:
    """`_seqsum` of the factors' product (multiplied left to right, as the C code writes w*l*x), in
    one pass: einsum walks C-ordered columns with the rows outermost, adding them one after the
    other in float32, and skips the product's temporary."""
    subscripts = ",".join(["ij"] * len(factors)) + "->j"
    return np.einsum(subscripts, *factors)


def _nibbles(lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """Two 4-bit levels per byte, `lo` in the low nibble."""
    return (lo.astype(np.uint8) & 0x0F) | (hi.astype(np.uint8) << 4)


def _scale_inverse(d: np.ndarray) -> tuple[np.ndarray, bool]:
    """`d ? 1.0f/d : 0.0f`, and whether any d is subnormal (then products can leave the int8 range)."""
    inv = np.where(d == 0, F32(0), F32(1) / d)
    odd = bool(np.any((d != 0) & (np.abs(d) < np.finfo(F32).tiny)))
    return inv, odd


# ---------------------------------------------------------------------------------- columns


def _columns(blocks: np.ndarray, n: int) -> np.ndarray:
    """Groups of `n` values as columns: shape (n, groups), so that each C loop over a group's values
    becomes a loop over rows, vectorised across all groups."""
    return np.ascontiguousarray(blocks.reshape(-1, n).T)


def _rows_of(columns: np.ndarray, n_blocks: int) -> np.ndarray:
    """Back from `_columns`: one row of QK_K values per super-block."""
    return columns.T.reshape(n_blocks, QK_K)


# --------------------------------------------------------------------------------- legacy quants


# The legacy quantizers reduce over a block on columns (`_columns`: value j of every block in row j),
# where numpy's reductions run at full speed, and compute the levels on the blocks as they are; the
# float operations are the C code's.


def _q8_0(b: np.ndarray, t: GGMLType, what: str) -> np.ndarray:
    x = _columns(b, 32)
    amax = np.maximum(x.max(axis=0), -x.min(axis=0)) + F32(0)  # + 0: never -0.0, as ggml's fabsf max
    _refuse_nonfinite(b, t, what, amax)
    d = amax / F32(127)
    inv, odd = _scale_inverse(d)
    v = b * inv[:, None]
    # roundf, half away from zero: add the float just below 0.5 with v's sign (set bitwise, faster
    # than np.copysign), then truncate
    half = (v.view(np.uint32) & np.uint32(0x80000000)) | _HALF_DOWN.view(np.uint32)
    v += half.view(F32)
    qs = _wrap8(_c_int(v)).astype(np.int8) if odd else v.astype(np.int8)
    return _assemble(b.shape[0], t, _f16(d, t, what), qs)


def _signed_max(b: np.ndarray) -> np.ndarray:
    """The value of largest magnitude in each row, the first one on ties (ggml's strict `<` scan from
    0.0, which leaves +0.0 for a row of zeros: the `+ 0` turns -0.0 into +0.0)."""
    return np.take_along_axis(b, np.abs(b).argmax(axis=1)[:, None], axis=1)[:, 0] + F32(0)


def _signed_max_columns(x: np.ndarray) -> np.ndarray:
    """`_signed_max` of each column, from its max and min; only a column holding both a and -a as its
    extremes needs the order (the sweep from the last row leaves the first). NaN and infinities come
    through, for the caller's check."""
    lo, hi = x.min(axis=0), x.max(axis=0)
    out = np.where(hi > -lo, hi, lo)
    tie = (hi == -lo) & (hi != 0)
    if tie.any():
        sub, top = x[:, tie], hi[tie]
        first = np.zeros_like(top)
        for i in range(x.shape[0] - 1, -1, -1):
            np.copyto(first, sub[i], where=np.abs(sub[i]) == top)
        out[tie] = first
    return out + F32(0)


def _legacy_levels(v: np.ndarray, odd: bool, top: int) -> np.ndarray:
    """`MIN(top, (int8_t)v)` as ggml's legacy quantizers take a level (v is x*id + offset, truncated)."""
    if odd:
        return np.minimum(_wrap8(_c_int(v)), top) & 0xFF
    return np.minimum(v.astype(np.uint8), top)


def _symmetric(b: np.ndarray, t: GGMLType, what: str, half: int) -> tuple[np.ndarray, np.ndarray]:
    """q4_0 (half 8) and q5_0 (half 16): d = max / -half, levels MIN(2*half - 1, (int8_t)(x/d + half + 0.5))."""
    m = _signed_max_columns(_columns(b, 32))
    _refuse_nonfinite(b, t, what, m)
    d = m / F32(-half)
    inv, odd = _scale_inverse(d)
    v = b * inv[:, None]
    v += F32(half + 0.5)
    return _f16(d, t, what), _legacy_levels(v, odd, 2 * half - 1)


def _q4_0(b: np.ndarray, t: GGMLType, what: str) -> np.ndarray:
    d, q = _symmetric(b, t, what, 8)
    return _assemble(b.shape[0], t, d, _nibbles(q[:, :16], q[:, 16:]))


def _q5_0(b: np.ndarray, t: GGMLType, what: str) -> np.ndarray:
    d, q = _symmetric(b, t, what, 16)
    return _assemble(b.shape[0], t, d, _high_bits(q), _nibbles(q[:, :16], q[:, 16:]))


def _high_bits(q: np.ndarray) -> np.ndarray:
    """Bit 4 of each of a block's 32 levels, as one little-endian uint32 (bit j for value j)."""
    return np.packbits((q >> 4).astype(np.uint8) & 1, axis=1, bitorder="little")


def _min_max(x: np.ndarray, b: np.ndarray, t: GGMLType, what: str) -> tuple[np.ndarray, np.ndarray]:
    """Each block's min and max as ggml's strict scan finds them: when one is a zero, it is the block's
    first zero, with that zero's sign (numpy's min and max pick either sign; the sign reaches the
    stored f16 min and, through max - min, the scale)."""
    lo, hi = x.min(axis=0), x.max(axis=0)
    _refuse_nonfinite(b, t, what, lo, hi)
    zero_lo, zero_hi = lo == 0, hi == 0
    if zero_lo.any() or zero_hi.any():
        first_zero = x[np.argmax(x == 0, axis=0), np.arange(x.shape[1])]
        lo = np.where(zero_lo, first_zero, lo)
        hi = np.where(zero_hi, first_zero, hi)
    return lo, hi


def _asymmetric(b: np.ndarray, t: GGMLType, what: str, top: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """q4_1 (top 15) and q5_1 (top 31): d = (max - min) / top, levels (x - min)/d + 0.5 truncated;
    ggml clamps q4_1's to 15 and leaves q5_1's as (uint8_t), which never exceeds 31 anyway."""
    x = _columns(b, 32)
    lo, hi = _min_max(x, b, t, what)
    d = (hi - lo) / F32(top)
    inv, odd = _scale_inverse(d)
    v = b - lo[:, None]
    v *= inv[:, None]
    v += F32(0.5)
    if top == 31:
        q = (_c_int(v) & 0xFF) if odd else v.astype(np.uint8)
    else:
        q = _legacy_levels(v, odd, top)
    return _f16(d, t, what), _f16(lo, t, what), q


def _q4_1(b: np.ndarray, t: GGMLType, what: str) -> np.ndarray:
    d, m, q = _asymmetric(b, t, what, 15)
    return _assemble(b.shape[0], t, d, m, _nibbles(q[:, :16], q[:, 16:]))


def _q5_1(b: np.ndarray, t: GGMLType, what: str) -> np.ndarray:
    d, m, q = _asymmetric(b, t, what, 31)
    return _assemble(b.shape[0], t, d, m, _high_bits(q), _nibbles(q[:, :16], q[:, 16:]))


# ------------------------------------------------------------------------------ K-quant helpers


@functools.cache
def compiled_kernels() -> dict[str, Callable[..., Any]]:
    """kernels.TWINS, imported on first use (numba takes a while to import); empty without numba, or
    with a numba that cannot load here (numba refuses a numpy newer than it knows): the numpy code
    then gives the same bytes."""
    if importlib.util.find_spec("numba") is None:
        return {}
    try:
        kernels: Any = importlib.import_module("convert.outputs.gguf.kernels")
    except ImportError:
        return {}
    return dict(kernels.TWINS)


def _compiled(numpy_function: Callable[..., Any]) -> Callable[..., Any]:
    """The compiled twin of a numpy function here (same arguments, same results) when there is one
    and COMPILED holds, else the numpy function itself."""
    if not COMPILED:
        return numpy_function
    return compiled_kernels().get(numpy_function.__name__, numpy_function)


def _make_qkx2(
    x: np.ndarray, w: np.ndarray, nmax: int, rmin: float, rdelta: float, nstep: int, use_mad: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """ggml's make_qkx2_quants on columns: levels 0..nmax with a scale and a min per group, refined by
    `nstep + 1` trial scales and least squares. Returns (scale, -min, levels) per group.

    As in the C code, a trial that wins moves the min, and the later trials measure from the new min
    (their levels and their span). The trials run on preallocated buffers, and only the winning
    trial's inverse scale and min are kept: its levels are made again at the end (the same float32
    operations give the same levels)."""
    lo = x.min(axis=0)
    hi = x.max(axis=0)
    sum_w = _seqsum(w)
    sum_x = _seqsum(w * x)
    lo = np.where(lo > 0, F32(0), lo)
    flat = hi == lo
    first_lo = lo.copy()
    trial = np.empty_like(x)
    wl = np.empty_like(x)
    tmp = np.empty_like(x)

    def levels_of(iscale: np.ndarray, lo: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.subtract(x, lo, out=out)
        np.multiply(iscale, out, out=out)
        if np.isfinite(iscale[~flat]).all():
            # rounding is nearest_int while |iscale * (x - lo)| stays within 2**22, as it does here
            _rint(out)
            return np.clip(out, F32(0), F32(nmax), out=out)
        # a span so small that nmax / span overflows needs the C code's bits (which clamp inf to 0)
        out[...] = np.clip(_nearest_int(out), 0, nmax)
        return out

    def error(s: np.ndarray, m: np.ndarray, lv: np.ndarray) -> np.ndarray:
        np.multiply(s, lv, out=tmp)
        np.add(tmp, m, out=tmp)
        np.subtract(tmp, x, out=tmp)
        if use_mad:
            return _seqsum_of_products(np.abs(tmp, out=tmp), w)
        return _seqsum_of_products(tmp, tmp, w)  # diff*diff, times the weight

    iscale = F32(nmax) / (hi - lo)
    chosen, chosen_lo = iscale.copy(), lo.copy()
    scale = F32(1) / iscale
    best = error(scale, lo, levels_of(iscale, lo, trial))
    for step in range(nstep + 1):
        iscale = (F32(rmin) + F32(rdelta) * F32(step) + F32(nmax)) / (hi - lo)
        levels_of(iscale, lo, trial)
        np.multiply(w, trial, out=wl)
        sum_l = _seqsum(wl)
        sum_l2 = _seqsum_of_products(wl, trial)
        sum_xl = _seqsum_of_products(wl, x)
        det = sum_w * sum_l2 - sum_l * sum_l
        this_scale = (sum_w * sum_xl - sum_x * sum_l) / det
        this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det
        clamp = this_min > 0
        this_min = np.where(clamp, F32(0), this_min)
        this_scale = np.where(clamp, sum_xl / sum_l2, this_scale)
        cur = error(this_scale, this_min, trial)
        better = (det > 0) & (cur < best)
        np.copyto(chosen, iscale, where=better)
        np.copyto(chosen_lo, lo, where=better)
        np.copyto(best, cur, where=better)
        np.copyto(scale, this_scale, where=better)
        np.copyto(lo, this_min, where=better)
    scale = np.where(flat, F32(0), scale)
    levels = np.where(flat, F32(0), levels_of(chosen, chosen_lo, trial))
    return scale, -np.where(flat, first_lo, lo), levels


def _make_qx(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_qx_quants with rmse_type 1 and no importance weights (q6_K): symmetric levels
    -nmax..nmax-1, the scale refined over 18 trial scales by weighted least squares (weights x*x).
    Returns (scale, levels + nmax) per group. As in `_make_qkx2`, only the winning inverse scale is
    kept; `_rint` is nearest_int here, as |iscale * x| <= nmax + 1 in every group that is not zero."""
    big = _signed_max_columns(x)
    zero = np.abs(big) < _GROUP_MAX_EPS
    big = np.where(zero, F32(1), big)
    w = x * x
    wx = w * x
    lv = np.empty_like(x)

    def levels_of(iscale: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.multiply(iscale, x, out=out)
        _rint(out)
        return np.clip(out, -nmax, nmax - 1, out=out)

    def sums(iscale: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        levels_of(iscale, lv)
        return _seqsum_of_products(wx, lv), _seqsum_of_products(w, lv, lv)

    chosen = F32(-nmax) / big
    sumlx, suml2 = sums(chosen)
    scale = np.where(suml2 != 0, sumlx / suml2, F32(0))
    best = scale * sumlx
    for step in range(-9, 10):
        if step == 0:
            continue
        iscale = -(F32(nmax) + F32(0.1) * F32(step)) / big
        slx, sl2 = sums(iscale)
        better = (sl2 > 0) & (slx * slx > best * sl2)
        chosen = np.where(better, iscale, chosen)
        scale = np.where(better, slx / sl2, scale)
        best = np.where(better, scale * slx, best)
    scale = np.where(zero, F32(0), scale)
    levels = np.where(zero, F32(0), levels_of(chosen, lv) + F32(nmax))
    return scale, levels


def _make_q3(x: np.ndarray, nmax: int) -> tuple[np.ndarray, np.ndarray]:
    """ggml's make_q3_quants with do_rmse (q3_K): symmetric levels refined value by value, up to five
    passes, each change kept only when it improves the weighted fit. Returns (scale, levels + nmax)."""
    big = _signed_max_columns(x)
    zero = np.abs(big) < _GROUP_MAX_EPS
    w = x * x
    wx = w * x
    levels = np.clip(_nearest_int((F32(-nmax) / big) * x), -nmax, nmax - 1).astype(F32)
    sumlx = _seqsum(wx * levels)
    suml2 = _seqsum(w * levels * levels)
    active = np.ones(x.shape[1], dtype=bool)
    for _ in range(5):
        changed = np.zeros(x.shape[1], dtype=bool)
        for i in range(x.shape[0]):
            li = levels[i]
            slx = sumlx - wx[i] * li
            sl2 = suml2 - w[i] * li * li
            new = np.clip(_nearest_int(x[i] * sl2 / slx), -nmax, nmax - 1).astype(F32)
            take = active & (slx > 0) & (new != li)
            slx = slx + wx[i] * new
            sl2 = sl2 + w[i] * new * new
            take &= (sl2 > 0) & (slx * slx * suml2 > sumlx * sumlx * sl2)
            levels[i] = np.where(take, new, li)
            sumlx = np.where(take, slx, sumlx)
            suml2 = np.where(take, sl2, suml2)
            changed |= take
        active &= changed
        if not active.any():
            break
    scale = np.where(suml2 > 0, sumlx / suml2, F32(0))
    scale = np.where(zero, F32(0), scale)
    levels = np.where(zero, F32(0), levels + F32(nmax))
    return scale, levels


def _k_scales(values: np.ndarray, top: float) -> tuple[np.ndarray, np.ndarray]:
    """The largest positive group scale of each super-block (0 when none is positive, as ggml's loop
    starting at 0 finds) and the levels `nearest_int(top / max * value)` of every group."""
    biggest = values.max(axis=1)
    biggest = np.where(biggest > 0, biggest, F32(0))
    inv = np.where(biggest > 0, F32(top) / biggest, F32(0))
    return biggest, _nearest_int(inv[:, None] * values)


def _q45_weights(x: np.ndarray) -> np.ndarray:
    """q4_K's and q5_K's weights for the search: the group's RMS plus each value's magnitude."""
    return np.sqrt(_seqsum(x * x) / F32(32)) + np.abs(x)


def _requantize(
    x: np.ndarray, levels: np.ndarray, step: np.ndarray, offset: np.ndarray | None, lo: int, hi: int, base: int
) -> np.ndarray:
    """ggml's last pass: each group's values against its final (stored) scale `step`,
    `nearest_int((x + offset) / step)` clamped to lo..hi plus `base`; a group whose step is zero keeps
    the levels its search found."""
    shifted = x if offset is None else x + offset
    fresh = np.clip(_nearest_int(shifted / step), lo, hi) + base
    return np.where(step != 0, fresh, levels).astype(np.uint8)


def _refuse_nonfinite_blocks(blocks: np.ndarray, t: GGMLType, what: str) -> None:
    _refuse_nonfinite(blocks, t, what, blocks.max(axis=1), blocks.min(axis=1))


def _q45_k(blocks: np.ndarray, t: GGMLType, what: str, nmax: int, rmin: float, nstep: int) -> np.ndarray:
    """quantize_row_q4_K_ref (nmax 15) and quantize_row_q5_K_ref (nmax 31): 8 groups of 32 values with
    6-bit scales and mins under an f16 super-scale and super-min."""
    _refuse_nonfinite_blocks(blocks, t, what)
    nb = blocks.shape[0]
    x = _columns(blocks, 32)
    scales, mins, levels = _compiled(_make_qkx2)(x, _compiled(_q45_weights)(x), nmax, rmin, 0.1, nstep, False)
    _refuse_overflowed(np.stack([scales, mins]), blocks, t, what)
    max_scale, ls = _k_scales(scales.reshape(nb, 8), 63.0)
    max_min, lm = _k_scales(mins.reshape(nb, 8), 63.0)
    ls = np.minimum(ls & 0xFF, 63).astype(np.uint8)  # uint8_t ls = nearest_int(...); MIN(63, ls)
    lm = np.minimum(lm & 0xFF, 63).astype(np.uint8)
    d = _f16(max_scale / F32(63), t, what)
    dmin = _f16(max_min / F32(63), t, what)
    packed = np.empty((nb, 12), dtype=np.uint8)
    packed[:, 0:4] = ls[:, :4] | ((ls[:, 4:] >> 4) << 6)
    packed[:, 4:8] = lm[:, :4] | ((lm[:, 4:] >> 4) << 6)
    packed[:, 8:12] = (ls[:, 4:] & 0x0F) | ((lm[:, 4:] & 0x0F) << 4)
    step = (d.astype(F32)[:, None] * ls.astype(F32)).reshape(-1)
    offset = (dmin.astype(F32)[:, None] * lm.astype(F32)).reshape(-1)
    q = _rows_of(_compiled(_requantize)(x, levels, step, offset, 0, nmax, 0), nb).reshape(nb, 4, 2, 32)
    low = _nibbles(q[:, :, 0], q[:, :, 1])
    if nmax == 15:
        return _assemble(nb, t, d, dmin, packed, low)
    high = ((q >> 4) & 1) << (
        2 * np.arange(4, dtype=np.uint8)[None, :, None, None] + np.arange(2, dtype=np.uint8)[None, None, :, None]
    )
    return _assemble(nb, t, d, dmin, packed, high.sum(axis=(1, 2), dtype=np.uint8), low)


def _q4_k(blocks: np.ndarray, t: GGMLType, what: str) -> np.ndarray:
    return _q45_k(blocks, t, what, 15, -1.0, 20)


def _q5_k(blocks: np.ndarray, t: GGMLType, what: str) -> np.ndarray:
    return _q45_k(blocks, t, what, 31, -0.5, 15)


def _crumbs(q: np.ndarray) -> np.ndarray:
    """2-bit levels packed four to a byte as q2_K and q3_K store them: byte l of each 128-value half
    holds values l, l+32, l+64, l+96 from the low bits up."""
    parts = q.reshape(q.shape[0], 2, 4, 32).astype(np.uint8) << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]
    return parts.sum(axis=2, dtype=np.uint8).reshape(q.shape[0], 64)


def _q2_k(blocks: np.ndarray, t: GGMLType, what: str) -> np.ndarray:
    """quantize_row_q2_K_ref: 16 groups of 16 values, 2-bit levels, 4-bit scales and mins."""
    _refuse_nonfinite_blocks(blocks, t, what)
    nb = blocks.shape[0]
    x = _columns(blocks, 16)
    scales, mins, levels = _compiled(_make_qkx2)(x, np.abs(x), 3, -0.5, 0.1, 15, True)
    _refuse_overflowed(np.stack([scales, mins]), blocks, t, what)
    max_scale, ls = _k_scales(scales.reshape(nb, 16), 15.0)
    max_min, lm = _k_scales(mins.reshape(nb, 16), 15.0)
    ls = np.where(max_scale[:, None] > 0, ls & 0xFF, 0)
    packed = np.where(max_min[:, None] > 0, ls | (lm << 4), ls).astype(np.int64) & 0xFF
    d = _f16(max_scale / F32(15), t, what)
    dmin = _f16(max_min / F32(15), t, what)
    step = (d.astype(F32)[:, None] * (packed & 0x0F).astype(F32)).reshape(-1)
    offset = (dmin.astype(F32)[:, None] * (packed >> 4).astype(F32)).reshape(-1)
    q = _rows_of(_compiled(_requantize)(x, levels, step, offset, 0, 3, 0), nb)
    return _assemble(nb, t, packed.astype(np.uint8), _crumbs(q), d, dmin)


def _q3_k(blocks: np.ndarray, t: GGMLType, what: str) -> np.ndarray:
    """quantize_row_q3_K_ref: 16 groups of 16 values, 3-bit symmetric levels (a high-bit mask and 2
    low bits), 6-bit signed scales under an f16 super-scale."""
    _refuse_nonfinite_blocks(blocks, t, what)
    nb = blocks.shape[0]
    x = _columns(blocks, 16)
    scale, levels = _compiled(_make_q3)(x, 4)
    _refuse_overflowed(scale, blocks, t, what)
    scales = scale.reshape(nb, 16)
    biggest = _signed_max(scales)
    some = biggest != 0
    iscale = np.where(some, F32(-32) / np.where(some, biggest, F32(1)), F32(0))
    ls = np.clip(_wrap8(_nearest_int(iscale[:, None] * scales)), -32, 31) + 32
    ls = np.where(some[:, None], ls, 0).astype(np.uint8)
    packed = np.empty((nb, 12), dtype=np.uint8)
    packed[:, 0:8] = (ls[:, :8] & 0x0F) | ((ls[:, 8:] & 0x0F) << 4)
    packed[:, 8:12] = (((ls >> 4).reshape(nb, 4, 4)) << (2 * np.arange(4, dtype=np.uint8))[None, :, None]).sum(
        axis=1, dtype=np.uint8
    )
    d = _f16(np.where(some, F32(1) / np.where(some, iscale, F32(1)), F32(0)), t, what)
    step = (d.astype(F32)[:, None] * (ls.astype(F32) - F32(32))).reshape(-1)
    q = _rows_of(_compiled(_requantize)(x, levels, step, None, -4, 3, 4), nb)
    high = q > 3
    hmask = (high.reshape(nb, 8, 32).astype(np.uint8) << np.arange(8, dtype=np.uint8)[None, :, None]).sum(axis=1, dtype=np.uint8)
    return _assemble(nb, t, hmask, _crumbs(np.where(high, q - 4, q)), packed, d)


def _q6_k(blocks: np.ndarray, t: GGMLType, what: str) -> np.ndarray:
    """quantize_row_q6_K_ref: 16 groups of 16 values, 6-bit symmetric levels, int8 scales under an
    f16 super-scale."""
    _refuse_nonfinite_blocks(blocks, t, what)
    nb = blocks.shape[0]
    x = _columns(blocks, 16)
    scale, levels = _compiled(_make_qx)(x, 32)
    _refuse_overflowed(scale, blocks, t, what)
    scales = scale.reshape(nb, 16)
    biggest = _signed_max(scales)
    some = np.abs(biggest) >= _GROUP_MAX_EPS
    iscale = F32(-128) / np.where(some, biggest, F32(1))
    d = _f16(np.where(some, F32(1) / iscale, F32(0)), t, what)
    ls = _wrap8(np.minimum(127, _nearest_int(iscale[:, None] * scales)))
    ls = np.where(some[:, None], ls, 0).astype(np.int8)
    step = (d.astype(F32)[:, None] * ls.astype(F32)).reshape(-1)
    q = _rows_of(_compiled(_requantize)(x, levels, step, None, -32, 31, 32), nb)
    q = np.where(some[:, None], q, 0).reshape(nb, 2, 4, 32)  # an all-zero super-block is all zero bytes
    low = _nibbles(q[:, :, 0:2] & 0x0F, q[:, :, 2:4] & 0x0F)
    high = ((q >> 4) << (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]).sum(axis=2, dtype=np.uint8)
    return _assemble(nb, t, low, high, ls, d)


_QUANTIZERS = {
    "q8_0": _q8_0,
    "q4_0": _q4_0,
    "q4_1": _q4_1,
    "q5_0": _q5_0,
    "q5_1": _q5_1,
    "q2_k": _q2_k,
    "q3_k": _q3_k,
    "q4_k": _q4_k,
    "q5_k": _q5_k,
    "q6_k": _q6_k,
}


# -------------------------------------------------------------------------------- dequantizers


def _half(b: np.ndarray) -> np.ndarray:
    """Two bytes per block as the f16 they hold, in float32, one column."""
    return np.ascontiguousarray(b).view("<f2").astype(F32)


def _unpack_nibbles(qs: np.ndarray) -> np.ndarray:
    """Bytes holding value j in the low nibble and j + len in the high one, as 2*len values."""
    return np.concatenate([qs & 0x0F, qs >> 4], axis=-1)


def _unpack_high(qh: np.ndarray) -> np.ndarray:
    """Four bytes per block, a little-endian bit per value, as 32 bits."""
    return np.unpackbits(qh, axis=1, bitorder="little")


def _dq8_0(b: np.ndarray) -> np.ndarray:
    return b[:, 2:].view(np.int8).astype(F32) * _half(b[:, :2])


def _dq4_0(b: np.ndarray) -> np.ndarray:
    return _half(b[:, :2]) * (_unpack_nibbles(b[:, 2:]).astype(np.int8) - 8).astype(F32)


def _dq4_1(b: np.ndarray) -> np.ndarray:
    return _half(b[:, :2]) * _unpack_nibbles(b[:, 4:]).astype(F32) + _half(b[:, 2:4])


def _dq5_0(b: np.ndarray) -> np.ndarray:
    q = _unpack_nibbles(b[:, 6:]) | (_unpack_high(b[:, 2:6]) << 4)
    return _half(b[:, :2]) * (q.astype(np.int8) - 16).astype(F32)


def _dq5_1(b: np.ndarray) -> np.ndarray:
    q = _unpack_nibbles(b[:, 8:]) | (_unpack_high(b[:, 4:8]) << 4)
    return _half(b[:, :2]) * q.astype(F32) + _half(b[:, 2:4])


def _unpack_crumbs(qs: np.ndarray) -> np.ndarray:
    """The inverse of `_crumbs`: 64 bytes per block as 256 levels 0..3."""
    shifts = (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]
    return ((qs.reshape(-1, 2, 1, 32) >> shifts) & 3).reshape(-1, QK_K)


def _dq2_k(b: np.ndarray) -> np.ndarray:
    sc, d, dmin = b[:, :16], _half(b[:, 80:82]), _half(b[:, 82:84])
    dl = (d * (sc & 0x0F).astype(F32))[:, :, None]
    ml = (dmin * (sc >> 4).astype(F32))[:, :, None]
    q = _unpack_crumbs(b[:, 16:80]).reshape(-1, 16, 16).astype(F32)
    return (dl * q - ml).reshape(-1, QK_K)


def _dq3_k(b: np.ndarray) -> np.ndarray:
    hmask, qs, packed, d = b[:, :32], b[:, 32:96], b[:, 96:108], _half(b[:, 108:110])
    low = np.concatenate([packed[:, :8] & 0x0F, packed[:, :8] >> 4], axis=1)
    high = (packed[:, 8:12].reshape(-1, 1, 4) >> (2 * np.arange(4, dtype=np.uint8))[None, :, None]) & 3
    sc = (low | (high.reshape(-1, 16) << 4)).astype(np.int8) - 32
    h = (hmask.reshape(-1, 1, 32) >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    q = _unpack_crumbs(qs).astype(np.int8) - ((h.reshape(-1, QK_K) ^ 1) << 2).astype(np.int8)
    return ((d * sc.astype(F32))[:, :, None] * q.reshape(-1, 16, 16).astype(F32)).reshape(-1, QK_K)


def _k4_scales(packed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """get_scale_min_k4 for all 8 groups: 6-bit scales and mins from 12 bytes."""
    s = np.concatenate([packed[:, 0:4] & 63, (packed[:, 8:12] & 0x0F) | ((packed[:, 0:4] >> 6) << 4)], axis=1)
    m = np.concatenate([packed[:, 4:8] & 63, (packed[:, 8:12] >> 4) | ((packed[:, 4:8] >> 6) << 4)], axis=1)
    return s, m


def _dq45_k(b: np.ndarray, q: np.ndarray) -> np.ndarray:
    d, dmin = _half(b[:, 0:2]), _half(b[:, 2:4])
    s, m = _k4_scales(b[:, 4:16])
    dl = (d * s.astype(F32))[:, :, None]
    ml = (dmin * m.astype(F32))[:, :, None]
    return (dl * q.reshape(-1, 8, 32).astype(F32) - ml).reshape(-1, QK_K)


def _dq4_k(b: np.ndarray) -> np.ndarray:
    return _dq45_k(b, _unpack_nibbles(b[:, 16:].reshape(-1, 4, 32)))


def _dq5_k(b: np.ndarray) -> np.ndarray:
    low = _unpack_nibbles(b[:, 48:].reshape(-1, 4, 32)).reshape(-1, 8, 32)
    high = (b[:, 16:48].reshape(-1, 1, 32) >> np.arange(8, dtype=np.uint8)[None, :, None]) & 1
    return _dq45_k(b, low | (high << 4))


def _dq6_k(b: np.ndarray) -> np.ndarray:
    ql, qh, sc, d = b[:, :128], b[:, 128:192], b[:, 192:208].view(np.int8), _half(b[:, 208:210])
    low = _unpack_nibbles(ql.reshape(-1, 2, 64)).reshape(-1, 2, 4, 32)
    high = (qh.reshape(-1, 2, 1, 32) >> (2 * np.arange(4, dtype=np.uint8))[None, None, :, None]) & 3
    q = ((low | (high << 4)).astype(np.int8) - 32).astype(F32).reshape(-1, 16, 16)
    return ((d * sc.astype(F32))[:, :, None] * q).reshape(-1, QK_K)


_DEQUANTIZERS = {
    "q8_0": _dq8_0,
    "q4_0": _dq4_0,
    "q4_1": _dq4_1,
    "q5_0": _dq5_0,
    "q5_1": _dq5_1,
    "q2_k": _dq2_k,
    "q3_k": _dq3_k,
    "q4_k": _dq4_k,
    "q5_k": _dq5_k,
    "q6_k": _dq6_k,
}
