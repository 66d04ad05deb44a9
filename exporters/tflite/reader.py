"""TFLite flatbuffers read without TensorFlow: a small reader of the parts of the TFLite schema
(tensorflow/compiler/mlir/lite/schema/schema.fbs) that hold weights, every offset checked against the
file's size.

Constant tensors (those with buffer data) are converted under their own names. Canonical layouts:
CONV_2D filters are OHWI and become OIHW, DEPTHWISE_CONV_2D filters [1, kh, kw, C] become [C, 1, kh, kw];
FULLY_CONNECTED weights are [out, in] already. int8/uint8/int16/int32 tensors with a quantization scale
are dequantized to f32 ((q - zero_point) * scale, per channel along the quantized dimension), or kept
with their scales as `<name>.scale` and `<name>.zero_point` (`quantized="keep"`); either way the
parameters are recorded in the manifest.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path
from typing import Any

import numpy as np

from convert import transforms as tf
from convert.dtypes import dtype as lookup_dtype
from convert.errors import CorruptInputError, UnsupportedFormatError, UsageError
from convert.source import SourceModel, open_mapped
from convert.tensors import MappedFile, TensorRef, check_shape, in_memory, mapped_tensor
from exporters.shared.options import QUANTIZED_MODES

IDENTIFIER = b"TFL3"
# TensorType -> SafeTensors code (STRING, RESOURCE, VARIANT, INT4, COMPLEX128 have none)
TENSOR_TYPES = {
    0: "F32",
    1: "F16",
    2: "I32",
    3: "U8",
    4: "I64",
    6: "BOOL",
    7: "I16",
    8: "C64",
    9: "I8",
    10: "F64",
    12: "U64",
    15: "U32",
    16: "U16",
    18: "BF16",
}
CONV_2D, DEPTHWISE_CONV_2D, FULLY_CONNECTED = 3, 4, 9
OHWI_TO_OIHW: list[dict[str, Any]] = [{"op": "permute", "axes": [0, 3, 1, 2]}]
DEPTHWISE_TO_TORCH: list[dict[str, Any]] = [{"op": "permute", "axes": [3, 0, 1, 2]}]


class _Flat:
    """Bounds-checked reads of a flatbuffer held in a memory map."""

    def __init__(self, data: Any, name: str) -> None:
        self.data, self.size, self.name = data, len(data), name

    def _need(self, pos: int, n: int) -> None:
        if pos < 0 or pos + n > self.size:
            raise CorruptInputError(
                f"{self.name}: flatbuffer offset {pos} (+{n}) is past the end of the file ({self.size} bytes)"
            )

    def u8(self, pos: int) -> int:
        self._need(pos, 1)
        return self.data[pos]

    def u16(self, pos: int) -> int:
        self._need(pos, 2)
        return struct.unpack_from("<H", self.data, pos)[0]

    def i32(self, pos: int) -> int:
        self._need(pos, 4)
        return struct.unpack_from("<i", self.data, pos)[0]

    def u32(self, pos: int) -> int:
        self._need(pos, 4)
        return struct.unpack_from("<I", self.data, pos)[0]

    def u64(self, pos: int) -> int:
        self._need(pos, 8)
        return struct.unpack_from("<Q", self.data, pos)[0]

    def field(self, table: int, index: int) -> int | None:
        """Where field `index` of the table at `table` is stored, or None when absent."""
        vtable = table - self.i32(table)
        vsize = self.u16(vtable)
        if 4 + 2 * index >= vsize:
            return None
        off = self.u16(vtable + 4 + 2 * index)
        return table + off if off else None

    def ref(self, table: int, index: int) -> int | None:
        """The target of an offset field (table, vector, string)."""
        pos = self.field(table, index)
        return None if pos is None else pos + self.u32(pos)

    def vector(self, table: int, index: int) -> tuple[int, int]:
        """(start of elements, count) of a vector field; (0, 0) when absent."""
        pos = self.ref(table, index)
        if pos is None:
            return 0, 0
        count = self.u32(pos)
        self._need(pos + 4, count)  # at least a byte per element
        return pos + 4, count

    def tables(self, table: int, index: int) -> list[int]:
        start, count = self.vector(table, index)
        return [start + 4 * i + self.u32(start + 4 * i) for i in range(count)]

    def scalars(self, table: int, index: int, fmt: str) -> list[Any]:
        start, count = self.vector(table, index)
        width = struct.calcsize(fmt)
        self._need(start, count * width)
        return list(struct.unpack_from(f"<{count}{fmt}", self.data, start)) if count else []

    def string(self, table: int, index: int) -> str:
        start, count = self.vector(table, index)
        self._need(start, count)
        return bytes(self.data[start : start + count]).decode("utf-8", "replace")

    def scalar(self, table: int, index: int, fmt: str, default: Any = 0) -> Any:
        pos = self.field(table, index)
        if pos is None:
            return default
        self._need(pos, struct.calcsize(fmt))
        return struct.unpack_from(f"<{fmt}", self.data, pos)[0]


def open_tflite(path: str | Path, quantized: str = "dequantize") -> SourceModel:
    """Read a .tflite model's constant tensors in canonical form (see the module docstring)."""
    if quantized not in QUANTIZED_MODES:
        raise UsageError(f"--quantized must be one of {', '.join(QUANTIZED_MODES)}, not {quantized!r}")
    return open_mapped(path, lambda p, mapped: _read(p, mapped, quantized))


def _read(p: Path, mapped: MappedFile, quantized: str) -> SourceModel:
    if mapped.size < 8:
        raise CorruptInputError(f"{p.name}: too short to be a TFLite model")
    data = mapped.view(0, np.dtype(np.uint8), (mapped.size,), (1,))
    fb = _Flat(data, p.name)
    if bytes(data[4:8]) != IDENTIFIER:
        raise UnsupportedFormatError(f"{p.name}: not a TFLite flatbuffer (no TFL3 identifier)")
    model = fb.u32(0)
    buffers = fb.tables(model, 4)
    opcodes = [_builtin_code(fb, op) for op in fb.tables(model, 1)]
    tensors: list[TensorRef] = []
    origins: dict[str, Any] = {}
    quant: dict[str, Any] = {}
    for g, subgraph in enumerate(fb.tables(model, 2)):
        layout = _filter_layouts(fb, subgraph, opcodes)
        for t, tensor in enumerate(fb.tables(subgraph, 0)):
            ref = _constant(fb, p, mapped, buffers, tensor, f"{p.name}: subgraph {g} tensor {t}")
            if ref is None:
                continue
            name = ref.name if g == 0 else f"subgraph_{g}/{ref.name}"
            params = _quantization(fb, tensor, ref)
            transforms = layout.get(t, [])
            if transforms and len(ref.shape) != 4:
                raise CorruptInputError(f"{p.name}: {ref.name!r} is a convolution filter of shape {list(ref.shape)}, not 4-d")
            for out in _canonical(name, ref, params, transforms, quantized):
                tensors.append(out)
            origins[name] = {"from": ref.name, **({"transforms": transforms} if transforms else {})}
            if params is not None:
                axis = params[2]
                moved = transforms[0]["axes"].index(axis) if transforms and params[0].size > 1 else axis
                quant[name] = {
                    "scale": params[0].tolist(),
                    "zero_point": params[1].tolist(),
                    "axis_in_tflite": axis,
                    "axis": moved,
                    "mode": quantized,
                }
    names = [t.name for t in tensors]
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise CorruptInputError(f"{p.name}: two constant tensors are named {dup!r}")
    if not tensors:
        raise UnsupportedFormatError(f"{p.name}: the model holds no constant tensors")
    extras: dict[str, Any] = {"origins": origins, "version": fb.scalar(model, 0, "I"), "quantized": quantized}
    if quant:
        extras["quantization"] = quant
    architecture = {
        "framework": "tflite",
        "operators": sorted({str(c) for c in opcodes}),
        "description": fb.string(model, 3)[:200],
    }
    return SourceModel(
        format="tflite", files=[p], tensors=tensors, extras=extras, architecture=architecture, closers=[mapped.close]
    )


def _builtin_code(fb: _Flat, op: int) -> int:
    """OperatorCode.builtin_code, or the deprecated byte field of older files."""
    deprecated = fb.scalar(op, 0, "b")
    return max(fb.scalar(op, 3, "i"), deprecated)


def _filter_layouts(fb: _Flat, subgraph: int, opcodes: list[int]) -> dict[int, list[dict[str, Any]]]:
    """{tensor index: transforms} for the filters of the convolutions (input 1 of the operator)."""
    layouts: dict[int, list[dict[str, Any]]] = {}
    _, count = fb.vector(subgraph, 0)
    for op in fb.tables(subgraph, 3):
        index = fb.scalar(op, 0, "I")
        code = opcodes[index] if index < len(opcodes) else None
        inputs = fb.scalars(op, 1, "i")
        bad = [i for i in inputs if not -1 <= i < count]  # -1: an optional input left out
        if bad:  # a filter it names would be read untransposed
            raise CorruptInputError(f"{fb.name}: an operator's input {bad[0]} is not one of the {count} tensors")
        if len(inputs) > 1 and code in (CONV_2D, DEPTHWISE_CONV_2D):
            layouts[inputs[1]] = OHWI_TO_OIHW if code == CONV_2D else DEPTHWISE_TO_TORCH
    return layouts


def _constant(fb: _Flat, p: Path, mapped: MappedFile, buffers: list[int], tensor: int, what: str) -> TensorRef | None:
    """The tensor's stored data as a lazy ref (None for activations, which have no buffer data)."""
    index = fb.scalar(tensor, 2, "I")
    if index == 0 or index >= len(buffers):
        if index >= len(buffers):
            raise CorruptInputError(f"{what}: buffer {index} does not exist ({len(buffers)} buffers)")
        return None
    buffer = buffers[index]
    start, count = fb.vector(buffer, 0)
    if count == 0:
        offset, size = fb.scalar(buffer, 1, "Q"), fb.scalar(buffer, 2, "Q")
        if size == 0:
            return None
        if offset + size > mapped.size:
            raise CorruptInputError(f"{what}: buffer data at {offset} (+{size}) is past the end of the file")
        start, count = offset, size
    name = fb.string(tensor, 3) or what
    if fb.field(tensor, 6) is not None:
        raise UnsupportedFormatError(f"{what} ({name!r}) is stored sparse (TFLite sparsity), which is not supported")
    type_code = fb.scalar(tensor, 1, "b")
    code = TENSOR_TYPES.get(type_code)
    if code is None:
        raise UnsupportedFormatError(f"{what} ({name!r}) has TFLite type {type_code}, which SafeTensors cannot hold")
    dt = lookup_dtype(code)
    shape = tuple(fb.scalars(tensor, 0, "i"))
    if any(n < 0 for n in shape):
        raise CorruptInputError(f"{what} ({name!r}) has a negative dimension")
    check_shape(shape, dt.itemsize, f"{what} ({name!r})")
    nbytes = math.prod(shape) * dt.itemsize
    if nbytes != count:
        raise CorruptInputError(f"{what} ({name!r}): buffer holds {count} bytes; {list(shape)} {code} needs {nbytes}")
    return mapped_tensor(mapped, name, dt, shape, start)


def _quantization(fb: _Flat, tensor: int, ref: TensorRef) -> tuple[np.ndarray, np.ndarray, int] | None:
    """(scale, zero_point, axis) of a quantized integer tensor, or None."""
    params = fb.ref(tensor, 4)
    if params is None or ref.dtype.code not in ("I8", "U8", "I16", "I32", "I64"):
        return None
    scale = np.array(fb.scalars(params, 2, "f"), np.float32)
    if not scale.size:
        return None
    zero = np.array(fb.scalars(params, 3, "q"), np.int64)
    zero = zero if zero.size else np.zeros_like(scale, np.int64)
    axis = fb.scalar(params, 6, "i")
    if zero.size != scale.size:
        raise CorruptInputError(f"tensor {ref.name!r}: {scale.size} scales but {zero.size} zero points")
    if not np.all(np.isfinite(scale) & (scale > 0)):  # it would dequantize to NaN, zero or flipped signs
        bad = scale[~(np.isfinite(scale) & (scale > 0))][0]
        raise CorruptInputError(f"tensor {ref.name!r}: quantization scale {bad} is not a positive finite number")
    info = np.iinfo(ref.dtype.numpy)
    if zero.size and not (info.min <= zero.min() and zero.max() <= info.max):
        raise CorruptInputError(f"tensor {ref.name!r}: zero points {zero.min()}..{zero.max()} leave {ref.dtype.code}'s range")
    if scale.size > 1 and (not 0 <= axis < len(ref.shape) or ref.shape[axis] != scale.size):
        raise CorruptInputError(f"tensor {ref.name!r}: {scale.size} scales do not fit its shape {list(ref.shape)}")
    return scale, zero, axis


def _canonical(
    name: str, ref: TensorRef, params: tuple[np.ndarray, np.ndarray, int] | None, transforms: list[dict[str, Any]], quantized: str
) -> list[TensorRef]:
    base = ref
    if params is not None and quantized == "dequantize":
        scale, zero, axis = params
        base = TensorRef(name, lookup_dtype("F32"), ref.shape, lambda: _dequantize(ref.array(), scale, zero, axis))
    out = tf.derived(name, [base], transforms)
    if params is None or quantized == "dequantize":
        return [out]
    scale, zero, _ = params
    return [out, in_memory(f"{name}.scale", scale, "F32"), in_memory(f"{name}.zero_point", zero, "I64")]


def _dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray, axis: int) -> np.ndarray:
    shape = [1] * q.ndim
    if scale.size > 1:
        shape[axis] = scale.size
    return ((q.astype(np.float64) - zero.reshape(shape)) * scale.reshape(shape).astype(np.float64)).astype(np.float32)
