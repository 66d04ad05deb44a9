"""Element types: SafeTensors codes, their numpy equivalents (ml_dtypes for bf16/fp8), and the names
PyTorch pickles use for them.

The SafeTensors code is the one name used everywhere inside the toolchain; readers translate their
format's names into it at the edge.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import ml_dtypes
import numpy as np

from .errors import MappingError, UnsupportedFormatError

# ml_dtypes.finfo (numpy's, extended to bf16 and fp8) ships no annotations; its limits are read as floats.
_finfo: Callable[[Any], Any] = ml_dtypes.finfo

if TYPE_CHECKING:
    from numpy.typing import DTypeLike


@dataclass(frozen=True)
class DType:
    code: str  # SafeTensors dtype code, e.g. "F32"
    itemsize: int
    numpy: np.dtype
    is_float: bool


def _d(code: str, np_type: DTypeLike, is_float: bool) -> DType:
    dt = np.dtype(np_type)
    return DType(code, dt.itemsize, dt, is_float)


DTYPES: dict[str, DType] = {
    d.code: d
    for d in (
        _d("F64", np.float64, True),
        _d("F32", np.float32, True),
        _d("F16", np.float16, True),
        _d("BF16", ml_dtypes.bfloat16, True),
        _d("F8_E4M3", ml_dtypes.float8_e4m3fn, True),
        _d("F8_E5M2", ml_dtypes.float8_e5m2, True),
        _d("F8_E8M0", ml_dtypes.float8_e8m0fnu, True),
        _d("I64", np.int64, False),
        _d("I32", np.int32, False),
        _d("I16", np.int16, False),
        _d("I8", np.int8, False),
        _d("U64", np.uint64, False),
        _d("U32", np.uint32, False),
        _d("U16", np.uint16, False),
        _d("U8", np.uint8, False),
        _d("BOOL", np.bool_, False),
        _d("C64", np.complex64, False),
    )
}

# numpy's dtype names (which TensorFlow and the safetensors library use too) -> SafeTensors code.
BY_NUMPY_NAME: dict[str, str] = {d.numpy.name: d.code for d in DTYPES.values()}

# Legacy typed-storage class names written by torch.save (torch/storage.py).
TORCH_STORAGE_TYPES: dict[str, str] = {
    "DoubleStorage": "F64",
    "FloatStorage": "F32",
    "HalfStorage": "F16",
    "BFloat16Storage": "BF16",
    "LongStorage": "I64",
    "IntStorage": "I32",
    "ShortStorage": "I16",
    "CharStorage": "I8",
    "ByteStorage": "U8",
    "BoolStorage": "BOOL",
    "ComplexFloatStorage": "C64",
    # Real torch storages SafeTensors has no dtype for: known, so a checkpoint holding them is
    # unsupported (exit 4) rather than refused as hostile; their codes are not in DTYPES.
    "ComplexDoubleStorage": "C128",
    "QInt8Storage": "QINT8",
    "QUInt8Storage": "QUINT8",
    "QInt32Storage": "QINT32",
    "QUInt4x2Storage": "QUINT4X2",
    "QUInt2x4Storage": "QUINT2X4",
}

# torch dtype attribute names, as pickled (`torch.float8_e4m3fn`) for `_rebuild_tensor_v3`.
TORCH_DTYPES: dict[str, str] = {
    "float64": "F64",
    "double": "F64",
    "float32": "F32",
    "float": "F32",
    "float16": "F16",
    "half": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e8m0fnu": "F8_E8M0",
    "int64": "I64",
    "long": "I64",
    "int32": "I32",
    "int": "I32",
    "int16": "I16",
    "short": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
    "complex64": "C64",
    "cfloat": "C64",
    # no SafeTensors equivalent (codes not in DTYPES): unsupported, not unsafe
    "complex128": "C128",
    "cdouble": "C128",
    "complex32": "C32",
    "chalf": "C32",
    # quantized dtypes (a dynamic-quantized Linear pickles `torch.qint8` beside its qtensor): known,
    # so the qtensor reports quantization as unsupported rather than the dtype being refused as unsafe
    "qint8": "QINT8",
    "quint8": "QUINT8",
    "qint32": "QINT32",
    "quint4x2": "QUINT4X2",
    "quint2x4": "QUINT2X4",
}


def dtype(code: str) -> DType:
    try:
        return DTYPES[code]
    except (KeyError, TypeError):  # TypeError: a forged file's dtype that is not even hashable
        hint = "; quantized tensors are not supported (dequantize first)" if str(code).startswith("Q") else ""
        raise UnsupportedFormatError(f"dtype {code!r} has no SafeTensors equivalent{hint}") from None


def from_numpy(dt: np.dtype) -> DType:
    for d in DTYPES.values():
        if d.numpy == dt:
            return d
    raise UnsupportedFormatError(f"numpy dtype {dt} has no SafeTensors equivalent")


def cast_array(arr: np.ndarray, code: str) -> np.ndarray:
    """Cast as PyTorch does, so `--dtype` output equals `tensor.to(dtype)` bit for bit: torch turns
    float64 into 16- and 8-bit floats through float32 (two roundings), numpy would round once."""
    target = dtype(code)
    # A narrowing cast turns out-of-range values into inf, as torch's .to() does; numpy's
    # "overflow encountered in cast" warning would only be noise on stderr.
    with np.errstate(over="ignore"):
        if arr.dtype == np.float64 and target.is_float and target.itemsize < 4:
            arr = arr.astype(np.float32)
        return arr.astype(target.numpy)


# What a narrowing cast does with values the target cannot hold (--cast-loss).


@dataclass
class CastLoss:
    """Values a cast lost: finite ones that became inf or NaN (the largest finite value when
    saturating), and normal non-zero ones that became zero (below the target's subnormal range)."""

    overflowed: int = 0
    flushed: int = 0

    def __bool__(self) -> bool:
        return bool(self.overflowed or self.flushed)

    def add(self, other: CastLoss) -> None:
        self.overflowed += other.overflowed
        self.flushed += other.flushed

    def describe(self, target: str) -> str:
        parts = [
            f"{self.overflowed} finite value(s) into inf" if self.overflowed else "",
            f"{self.flushed} non-zero value(s) into zero" if self.flushed else "",
        ]
        return f"cast to {target} turns " + " and ".join(p for p in parts if p)


class CastLossError(MappingError):
    """A cast would lose values and nothing said it may (exit 7, as other layout misfits)."""

    def __init__(self, what: str, loss: CastLoss, target: str) -> None:
        super().__init__(
            f"{what}: {loss.describe(target)}; --cast-loss saturate clamps to the largest {target}, "
            "--cast-loss accept writes them as the cast gives them (either is recorded in the manifest)"
        )


def cast_checked(arr: np.ndarray, code: str, on_loss: str) -> tuple[np.ndarray, CastLoss]:
    """`cast_array`, counting what it lost; `saturate` turns the overflowed values into the target's
    largest finite value of the same sign. Refusing is the caller's part: it knows the tensor."""
    out = cast_array(arr, code)
    if not (np.issubdtype(arr.dtype, np.floating) or arr.dtype in _ML_FLOATS) or not dtype(code).is_float:
        return out, CastLoss()
    src = arr.astype(np.float64) if arr.dtype in _ML_FLOATS else arr
    overflow = np.isfinite(src) & _not_finite(out)
    flushed = _is_zero(out) & (np.abs(src) >= float(_finfo(arr.dtype).smallest_normal))
    if on_loss == "saturate" and overflow.any():
        out = out.copy()
        out[overflow] = np.copysign(float(_finfo(out.dtype).max), src[overflow]).astype(out.dtype)
    return out, CastLoss(int(np.count_nonzero(overflow)), int(np.count_nonzero(flushed)))


_ML_FLOATS = {d.numpy for d in DTYPES.values() if d.is_float and not np.issubdtype(d.numpy, np.floating)}
# 16-bit floats' exponent bits: all set is inf or NaN, none set with a zero mantissa is a zero. Read
# from the bits, the two tests take a sixth of the time numpy's float16 comparisons (or a float64
# copy) took on a 1 MiB chunk here (0.12 against 0.78 ms): casts to F16 and BF16 make both.
_EXPONENT_16 = {np.dtype(np.float16): np.uint16(0x7C00), np.dtype(DTYPES["BF16"].numpy): np.uint16(0x7F80)}
_MAGNITUDE_16 = np.uint16(0x7FFF)


def _not_finite(values: np.ndarray) -> np.ndarray:
    exponent = _EXPONENT_16.get(values.dtype)
    found: np.ndarray
    if exponent is not None:
        found = (values.view(np.uint16) & exponent) == exponent
    else:
        found = ~np.isfinite(values.astype(np.float64) if values.dtype in _ML_FLOATS else values)
    return found


def _is_zero(values: np.ndarray) -> np.ndarray:
    found: np.ndarray = (values.view(np.uint16) & _MAGNITUDE_16) == 0 if values.dtype in _EXPONENT_16 else values == 0
    return found
