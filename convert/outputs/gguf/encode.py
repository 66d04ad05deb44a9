"""One tensor's bytes in its ggml type, produced chunk by chunk, and the error that cost, measured
against the source as it goes.

F32, F16 and BF16 are casts (as torch casts, counting values a narrowing cast loses, which
`--cast-loss` governs as for SafeTensors outputs); the block types go through the quantizers. Each
chunk is a whole number of rows (or of blocks, when one row is larger than a chunk), so memory
stays bounded by a chunk whatever the tensor's size. The error is the dequantized value against
the source value (max abs, RMS, and RMS relative to the source's RMS): zero for a lossless write.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np

from convert.dtypes import DTYPES, CastLoss, CastLossError, cast_checked
from convert.manifest_model import QuantizationError
from convert.tensors import iter_chunks, release_pages

from .ggml_types import GGMLType
from .quants import dequantize, quantize

# Of the source. A chunk's float32 values, blocks, dequantized values and error stay in the CPU's
# cache: q8_0 of a 256 MiB tensor took 0.33 s of CPU in 1 MiB chunks against 0.50 s in 8 MiB ones.
CHUNK_BYTES = 1 << 20
FLOAT_CODES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}  # ggml float types -> the cast's dtype code


@dataclass
class Measured:
    """The precision one tensor lost, accumulated over its chunks."""

    max_abs: float = 0.0
    sq_err: float = 0.0
    sq_ref: float = 0.0
    loss: CastLoss = field(default_factory=CastLoss)

    def add(self, ref: np.ndarray, got: np.ndarray, all_finite: bool = False) -> None:
        """`all_finite`: the caller knows both hold only finite values (a quantizer refuses others)."""
        ref32, got32 = ref.astype(np.float32, copy=False).reshape(-1), got.astype(np.float32, copy=False).reshape(-1)
        if not all_finite:
            finite = np.isfinite(ref32) & np.isfinite(got32)
            if not finite.all():  # a NaN or inf the source holds: written as it is, measured without it
                ref32, got32 = ref32[finite], got32[finite]
        if not ref32.size:
            return
        err = got32 - ref32
        self.max_abs = max(self.max_abs, float(err.max()), -float(err.min()))
        self.sq_err += float(np.dot(err, err))
        self.sq_ref += float(np.dot(ref32, ref32))

    def to_json(self, count: int) -> QuantizationError:
        rms = math.sqrt(self.sq_err / count) if count else 0.0
        ref_rms = math.sqrt(self.sq_ref / count) if count else 0.0
        return {"max_abs": self.max_abs, "rms": rms, "relative_rms": rms / ref_rms if ref_rms else 0.0}


def encoded(name: str, arr: np.ndarray, gtype: GGMLType, on_loss: str, measured: Measured) -> Iterator[memoryview]:
    """The bytes of `arr` (any float dtype, numpy shape) in `gtype`, in order."""
    if gtype.name in FLOAT_CODES:
        yield from _cast(name, arr, FLOAT_CODES[gtype.name], on_loss, measured)
        return
    row = arr.shape[-1]
    for piece in iter_chunks(arr, CHUNK_BYTES):
        with np.errstate(over="ignore"):  # a float64 beyond float32's range: inf, which quantize refuses
            values = np.ascontiguousarray(piece, dtype=np.float32)
        # whole rows, but a row larger than a chunk comes in pieces of whole blocks
        rows = values.reshape(-1, row if values.size % row == 0 else gtype.block_size)
        blocks = quantize(rows, gtype, f"tensor {name!r}")
        measured.add(values if piece.dtype == np.float32 else piece, dequantize(blocks, gtype, rows.shape), all_finite=True)
        yield blocks.reshape(-1).data
        release_pages(arr)


def _cast(name: str, arr: np.ndarray, code: str, on_loss: str, measured: Measured) -> Iterator[memoryview]:
    target = DTYPES[code].numpy
    for piece in iter_chunks(arr, CHUNK_BYTES):
        out = piece
        if piece.dtype != target:  # F32 to F32 is no cast, and loses nothing
            out, loss = cast_checked(piece, code, on_loss)
            measured.loss.add(loss)
            measured.add(piece, out)
        yield np.ascontiguousarray(out).reshape(-1).view(np.uint8).data
        release_pages(arr)
    if measured.loss and on_loss == "refuse":
        raise CastLossError(f"tensor {name!r}", measured.loss, code)
