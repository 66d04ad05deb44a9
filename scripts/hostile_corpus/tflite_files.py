"""TFLite flatbuffers, written by a small flatbuffer writer."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass

from hostile_corpus.common import NUMEL, SIZE, WEIGHT_BYTES, Hostile
from hostile_corpus.numpy_files import WRAP_SHAPE
from hostile_corpus.pickles import NO_CANARY

TFLITE_IDENTIFIER = b"TFL3"
FULLY_CONNECTED, CONV_2D = 9, 3
TFLITE_FLOAT32, TFLITE_INT8 = 0, 9


@dataclass(frozen=True)
class Scalar:
    fmt: str  # struct format of one field: "B", "b", "I", "i", "Q", ...
    value: int


@dataclass(frozen=True)
class FbVector:
    items: tuple[object, ...] | bytes  # bytes: a [ubyte] vector; otherwise scalars (fmt) or tables/strings
    fmt: str = ""
    count: int | None = None  # a forged element count
    align: int = 4


@dataclass(frozen=True)
class FbTable:
    fields: tuple[object, ...]  # None (absent), Scalar, str, FbVector or FbTable, by field index
    soffset: int | None = None  # a forged offset to the vtable


class FlatWriter:
    """Lays a flatbuffer out front to back: each table's vtable right before it, children after it."""

    def __init__(self) -> None:
        self.out = bytearray(8)

    def _pad(self, align: int, ahead: int = 0) -> None:
        self.out += bytes(-(len(self.out) + ahead) % align)

    def node(self, node: object) -> int:
        if isinstance(node, FbTable):
            return self.table(node)
        if isinstance(node, str):
            return self.vector(FbVector(node.encode()), terminator=b"\0")
        if isinstance(node, FbVector):
            return self.vector(node)
        raise TypeError(f"cannot encode {node!r}")

    def table(self, table: FbTable) -> int:
        layout: list[tuple[int, int, object]] = []
        size = 4
        for index, value in enumerate(table.fields):
            if value is None:
                continue
            width = struct.calcsize("<" + value.fmt) if isinstance(value, Scalar) else 4
            size += -size % width
            layout.append((index, size, value))
            size += width
        vsize = 4 + 2 * len(table.fields)
        self._pad(8, vsize)
        vtable = len(self.out)
        slots = [0] * len(table.fields)
        for index, at, _ in layout:
            slots[index] = at
        self.out += struct.pack(f"<HH{len(slots)}H", vsize, size, *slots)
        start = len(self.out)
        body = bytearray(size)
        struct.pack_into("<i", body, 0, start - vtable if table.soffset is None else table.soffset)
        for _, at, value in layout:
            if isinstance(value, Scalar):
                struct.pack_into("<" + value.fmt, body, at, value.value)
        self.out += body
        for _, at, value in layout:
            if not isinstance(value, Scalar):
                self._link(start + at, value)
        return start

    def vector(self, vec: FbVector, terminator: bytes = b"") -> int:
        if isinstance(vec.items, bytes):
            data, width = vec.items, 1
        elif vec.fmt:
            data, width = struct.pack(f"<{len(vec.items)}{vec.fmt}", *vec.items), struct.calcsize(vec.fmt)
        else:
            data, width = bytes(4 * len(vec.items)), 4
        self._pad(max(vec.align, width), 4)
        start = len(self.out)
        self.out += struct.pack("<I", len(vec.items) if vec.count is None else vec.count) + data + terminator
        if not isinstance(vec.items, bytes) and not vec.fmt:
            for i, item in enumerate(vec.items):
                self._link(start + 4 + 4 * i, item)
        return start

    def _link(self, at: int, node: object) -> None:
        struct.pack_into("<I", self.out, at, self.node(node) - at)

    def finish(self, root: FbTable) -> bytes:
        struct.pack_into("<I4s", self.out, 0, self.table(root), TFLITE_IDENTIFIER)
        return bytes(self.out)


def tfl_tensor(name: str, shape: object, buffer: int, type_code: int = TFLITE_FLOAT32, quant: FbTable | None = None) -> FbTable:
    """Tensor: shape, type, buffer, name, quantization (schema fields 0-4)."""
    dims = shape if isinstance(shape, FbVector) else FbVector(tuple(shape), "i")
    return FbTable((dims, Scalar("b", type_code), Scalar("I", buffer), name, quant))


def tfl_buffer(data: bytes | None = None, offset: int | None = None, size: int | None = None) -> FbTable:
    """Buffer: data [ubyte], or (since 2.14) an offset and size into the file for large models."""
    if offset is None:
        return FbTable((FbVector(data or b"", align=16),))
    return FbTable((None, Scalar("Q", offset), Scalar("Q", size or 0)))


def tflite_model(
    weight: FbTable | None = None,
    buffers: Sequence[FbTable] | None = None,
    opcode: int = FULLY_CONNECTED,
    tensors: FbVector | None = None,
    inputs: tuple[int, ...] = (0, 1, -1),
) -> bytes:
    """One FULLY_CONNECTED y = x W^T with W a float32 (2, 3) constant: Model fields version,
    operator_codes, subgraphs, description, buffers."""
    weight = weight or tfl_tensor("weight", SIZE, 1)
    all_tensors = tensors or FbVector((tfl_tensor("input", (1, SIZE[1]), 0), weight, tfl_tensor("output", (1, SIZE[0]), 0)))
    operator = FbTable((Scalar("I", 0), FbVector(inputs, "i"), FbVector((2,), "i")))
    subgraph = FbTable((all_tensors, FbVector((0,), "i"), FbVector((2,), "i"), FbVector((operator,)), "main"))
    opcode_table = FbTable((Scalar("b", opcode), None, Scalar("i", 1), Scalar("i", opcode)))
    buffers = buffers or (tfl_buffer(), tfl_buffer(WEIGHT_BYTES))
    model = FbTable((Scalar("I", 3), FbVector((opcode_table,)), FbVector((subgraph,)), "hostile", FbVector(tuple(buffers))))
    return FlatWriter().finish(model)


def int8_quant_of(scale: float, zero_point: int) -> FbTable:
    """QuantizationParameters with one scale and one zero point (fields 2 and 3; axis 0)."""
    return FbTable((None, None, FbVector((scale,), "f"), FbVector((zero_point,), "q"), None, None, Scalar("i", 0)))


def tflite_files() -> list[Hostile]:
    def tfl(name: str, attack: str, data: bytes) -> Hostile:
        return Hostile(f"tflite_{name}.tflite", "tflite", attack + NO_CANARY, False, data)

    int8_quant = FbTable((None, None, FbVector((0.5,), "f"), FbVector((0, 0, 0), "q"), None, None, Scalar("i", 0)))
    return [
        tfl(
            "buffer_offset_past_end",
            "the weight's buffer lies at offset 2**40 (+24) of a file of a few hundred bytes",
            tflite_model(buffers=(tfl_buffer(), tfl_buffer(offset=2**40, size=4 * NUMEL))),
        ),
        tfl(
            "buffer_size_past_end",
            "the weight's buffer starts in the file and claims 2**63 bytes",
            tflite_model(buffers=(tfl_buffer(), tfl_buffer(offset=8, size=2**63))),
        ),
        tfl(
            "buffer_offset_wraps_u64",
            "buffer offset 2**64 - 8 and size 32: the end wraps to 24 in u64 arithmetic",
            tflite_model(buffers=(tfl_buffer(), tfl_buffer(offset=2**64 - 8, size=32))),
        ),
        tfl("buffer_index_out_of_range", "the weight names buffer 7 of 2", tflite_model(weight=tfl_tensor("weight", SIZE, 7))),
        tfl(
            "shape_wraps_int64",
            f"the weight's shape {list(WRAP_SHAPE)} has 4 * 2**64 + 6 elements: 6 (24 bytes) in int64",
            tflite_model(weight=tfl_tensor("weight", WRAP_SHAPE, 1)),
        ),
        tfl("negative_dimension", "the weight's shape is [-2, -3]", tflite_model(weight=tfl_tensor("weight", (-2, -3), 1))),
        tfl(
            "vector_length_huge",
            "the subgraph's tensor vector declares 2**31 - 1 entries",
            tflite_model(tensors=FbVector((tfl_tensor("weight", SIZE, 1),), count=2**31 - 1)),
        ),
        tfl(
            "vector_length_negative",
            "the weight's shape vector declares 0xFFFFFFFF (-1 as int32) dimensions",
            tflite_model(weight=tfl_tensor("weight", FbVector(SIZE, "i", count=2**32 - 1), 1)),
        ),
        tfl(
            "string_length_huge",
            "the weight's name declares 2**32 - 16 bytes",
            tflite_model(
                weight=FbTable((FbVector(SIZE, "i"), Scalar("b", 0), Scalar("I", 1), FbVector(b"weight", count=2**32 - 16)))
            ),
        ),
        tfl(
            "vtable_past_end",
            "the weight's table points 2**30 bytes back to its vtable, before the file starts",
            tflite_model(weight=FbTable(tfl_tensor("weight", SIZE, 1).fields, soffset=2**30)),
        ),
        tfl(
            "conv_filter_1d",
            "a CONV_2D whose filter is a 1-d tensor: an OHWI permutation of one axis",
            tflite_model(weight=tfl_tensor("weight", (NUMEL,), 1), opcode=CONV_2D),
        ),
        tfl(
            "scale_nan",
            "an int8 (2, 3) weight whose quantization scale is NaN: it would dequantize to all NaN",
            tflite_model(
                weight=tfl_tensor("weight", SIZE, 1, TFLITE_INT8, int8_quant_of(float("nan"), 0)),
                buffers=(tfl_buffer(), tfl_buffer(bytes(range(NUMEL)))),
            ),
        ),
        tfl(
            "zero_point_out_of_range",
            "an int8 (2, 3) weight whose zero point is 1000, outside int8",
            tflite_model(
                weight=tfl_tensor("weight", SIZE, 1, TFLITE_INT8, int8_quant_of(0.5, 1000)),
                buffers=(tfl_buffer(), tfl_buffer(bytes(range(NUMEL)))),
            ),
        ),
        tfl(
            "operator_input_out_of_range",
            "the FULLY_CONNECTED names tensor 7 of 3 as its weights",
            tflite_model(inputs=(0, 7, -1)),
        ),
        tfl(
            "zero_points_mismatch",
            "an int8 (2, 3) weight with one scale and three zero points",
            tflite_model(
                weight=tfl_tensor("weight", SIZE, 1, TFLITE_INT8, int8_quant),
                buffers=(tfl_buffer(), tfl_buffer(bytes(range(NUMEL)))),
            ),
        ),
    ]
