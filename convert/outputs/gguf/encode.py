"""One tensor's bytes in its ggml type, produced chunk by chunk, and the error that cost, measured
against the source as it goes.

F32, F16 and BF16 are casts (as torch casts, counting values a narrowing cast loses, which
`--cast-loss` governs as for SafeTensors outputs); the block types go through the quantizers. Each
chunk is a whole number of rows (or of blocks, when one row is larger than a chunk), so memory
stays bounded by a chunk whatever the tensor's size (a stored transpose: by a group of rows, read
a band of stored rows at a time). The error is the dequantized value against
the source value (max abs, RMS, and RMS relative to the source's RMS): zero for a lossless write.

A tensor of several chunks is encoded on every CPU: numpy lets go of the GIL in its array
operations, and so do the compiled K-quant kernels (quants.py, kernels.py), so worker threads each
take a chunk (read from the source, quantize or cast, and measure while the chunk is still in the
CPU's cache) and the chunks come back in order, a few at a time. The error's sums (and a cast's
losses) are added in chunk order, so the figures do not depend on the threads.
"""

from __future__ import annotations

import math
import mmap
import os
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np

from convert.dtypes import DTYPES, CastLoss, CastLossError, cast_checked
from convert.manifest_model import QuantizationError
from convert.tensors import STRIPS_FROM, c_contiguous, iter_chunks, release_pages

from .ggml_types import GGMLType
from .quants import dequantize, quantize

# Of the source. A chunk's float32 values, blocks, dequantized values and error stay in the CPU's
# cache: q8_0 of a 256 MiB tensor took 0.33 s of CPU in 1 MiB chunks against 0.50 s in 8 MiB ones.
CHUNK_BYTES = 1 << 20
# Threads quantizing one tensor's chunks at once, and chunks in flight per thread beyond its own
# (memory: a chunk of source, its blocks and temporaries each, a few MiB in all).
WORKERS = min(4, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
AHEAD = 1
# A stored transpose is encoded a group of output rows at a time: as many as one page of a stored row
# holds, or fewer when their bytes would pass GROUP_BYTES (a group's pages are then read again by the next).
GROUP_BYTES = 8 << 20
_PAGE = mmap.PAGESIZE
FLOAT_CODES = {"f32": "F32", "f16": "F16", "bf16": "BF16"}  # ggml float types -> the cast's dtype code


@dataclass
class Measured:
    """The precision one tensor lost, accumulated over its chunks."""

    max_abs: float = 0.0
    sq_err: float = 0.0
    sq_ref: float = 0.0
    loss: CastLoss = field(default_factory=CastLoss)

    def merge(self, terms: tuple[float, float, float]) -> None:
        """One chunk's `error_terms`, added in the tensor's order."""
        max_abs, sq_err, sq_ref = terms
        self.max_abs = max(self.max_abs, max_abs)
        self.sq_err += sq_err
        self.sq_ref += sq_ref

    def to_json(self, count: int) -> QuantizationError:
        rms = math.sqrt(self.sq_err / count) if count else 0.0
        ref_rms = math.sqrt(self.sq_ref / count) if count else 0.0
        return {"max_abs": self.max_abs, "rms": rms, "relative_rms": rms / ref_rms if ref_rms else 0.0}


def error_terms(ref: np.ndarray, got: np.ndarray, all_finite: bool = False, scratch: bool = False) -> tuple[float, float, float]:
    """The largest |got - ref|, the sum of (got - ref)**2 and of ref**2, in float32 over finite values
    (`all_finite`: the caller knows there are no others); `scratch`: `got` is a float32 array nobody
    keeps (a dequantized chunk), which the difference overwrites."""
    ref32, got32 = ref.astype(np.float32, copy=False).reshape(-1), got.astype(np.float32, copy=False).reshape(-1)
    if not all_finite:
        finite = np.isfinite(ref32) & np.isfinite(got32)
        if not finite.all():  # a NaN or inf the source holds: written as it is, measured without it
            ref32, got32 = ref32[finite], got32[finite]
    if not ref32.size:
        return 0.0, 0.0, 0.0
    err = np.subtract(got32, ref32, out=got32) if scratch and all_finite else got32 - ref32
    return max(float(err.max()), -float(err.min())), float(np.dot(err, err)), float(np.dot(ref32, ref32))


Terms = tuple[float, float, float]
Encoded = tuple[np.ndarray, Terms | None]  # a quantized piece's blocks, and their error
Cast = tuple[np.ndarray, CastLoss, Terms | None]  # a cast piece, what the cast lost, and its error
Done = TypeVar("Done", Encoded, Cast)


def encoded(name: str, arr: np.ndarray, gtype: GGMLType, on_loss: str, measured: Measured | None) -> Iterator[memoryview]:
    """The bytes of `arr` (any float dtype, numpy shape) in `gtype`, in order; the error against the
    source added to `measured` (None: not measured, as when `verify` re-quantizes)."""
    if gtype.name in FLOAT_CODES:
        encode = _casting(name, FLOAT_CODES[gtype.name], on_loss, measured or Measured())
    else:
        encode = _quantizing(name, gtype, measured)
    if _stored_transposed(arr):
        yield from _by_row_groups(arr, gtype, encode)
        return
    for data in encode(iter_chunks(arr, CHUNK_BYTES), arr.nbytes > CHUNK_BYTES):
        yield data.reshape(-1).data
        release_pages(arr)


# Encodes pieces of whole blocks along their last axis, in order, into their bytes (uint8, the
# piece's shape with the last axis in bytes); on worker threads when told it is worth it.
Encoder = Callable[[Iterator[np.ndarray], bool], Iterator[np.ndarray]]


def _quantizing(name: str, gtype: GGMLType, measured: Measured | None) -> Encoder:
    def one(piece: np.ndarray) -> Encoded:
        """One piece's blocks, and their error (read while the piece is in the CPU's cache)."""
        with np.errstate(over="ignore"):  # a float64 beyond float32's range: inf, which quantize refuses
            values = c_contiguous(piece).astype(np.float32, copy=False)
        rows = values.reshape(-1, values.shape[-1])
        blocks = quantize(rows, gtype, f"tensor {name!r}")
        if measured is None:
            return blocks, None
        got = dequantize(blocks, gtype, rows.shape)
        return blocks, error_terms(values if piece.dtype == np.float32 else piece, got, all_finite=True, scratch=True)

    def encode(pieces: Iterator[np.ndarray], threaded: bool) -> Iterator[np.ndarray]:
        for blocks, terms in _in_order(one, pieces, threaded):
            if measured is not None and terms is not None:
                measured.merge(terms)
            yield blocks

    return encode


def _casting(name: str, code: str, on_loss: str, measured: Measured) -> Encoder:
    target = DTYPES[code].numpy

    def one(piece: np.ndarray) -> Cast:
        """One piece cast, what the cast lost and its error (none for F32 to F32: no cast)."""
        out = c_contiguous(piece)
        if piece.dtype == target:
            return out, CastLoss(), None
        out, loss = cast_checked(out, code, on_loss)
        return out, loss, error_terms(piece, out)

    def encode(pieces: Iterator[np.ndarray], threaded: bool) -> Iterator[np.ndarray]:
        for out, loss, terms in _in_order(one, pieces, threaded):
            measured.loss.add(loss)
            if terms is not None:
                measured.merge(terms)
            yield np.atleast_1d(out).view(np.uint8)  # a 0-d scalar's bytes too
        if measured.loss and on_loss == "refuse":
            raise CastLossError(f"tensor {name!r}", measured.loss, code)

    return encode


def _stored_transposed(arr: np.ndarray) -> bool:
    """A large 2-D view of a C-order array's transpose (a weight stored [in, out], read as [out, in])."""
    return arr.ndim == 2 and arr.size >= STRIPS_FROM and not arr.flags.c_contiguous and arr.T.flags.c_contiguous


def _by_row_groups(arr: np.ndarray, gtype: GGMLType, encode: Encoder) -> Iterator[memoryview]:
    """A stored transpose's bytes, a group of output rows at a time. Each output row is a column of
    the stored array, one value from every stored row: read in chunks of output rows, every chunk
    would touch a page of every stored row (the whole tensor's pages resident, or faulted in again
    for each chunk). Here a group of output rows as wide as a page is read a band of stored rows at
    a time, front to back, each band's bytes placed in the group's and its pages given back; blocks
    (and cast values) are independent, so the bytes are the same."""
    out_rows, row = arr.shape
    stored = arr.T
    group = max(1, min(out_rows, max(_PAGE // arr.itemsize, 1), GROUP_BYTES // gtype.row_bytes(row)))
    band = max(1, CHUNK_BYTES // (group * arr.itemsize * gtype.block_size)) * gtype.block_size
    starts = range(0, row, band)
    for first in range(0, out_rows, group):
        last = min(first + group, out_rows)
        out = np.empty((last - first, gtype.row_bytes(row)), np.uint8)
        pieces = (stored[start : start + band, first:last].T for start in starts)
        for start, data in zip(starts, encode(pieces, len(starts) > 1), strict=True):
            out[:, gtype.row_bytes(start) : gtype.row_bytes(start) + data.shape[1]] = data
            release_pages(arr)
        yield out.reshape(-1).data


def _in_order(work: Callable[[np.ndarray], Done], pieces: Iterator[np.ndarray], threaded: bool) -> Iterator[Done]:
    """`work` of each piece, in order: on WORKERS threads (a few pieces ahead) when `threaded`."""
    if not threaded or WORKERS < 2:
        yield from map(work, pieces)
        return
    with ThreadPoolExecutor(WORKERS, thread_name_prefix="quantize") as pool:
        pending: deque[Future[Done]] = deque()
        try:
            for piece in pieces:
                pending.append(pool.submit(work, piece))
                if len(pending) > WORKERS * (1 + AHEAD):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:  # an error, or a consumer that stopped: the queued pieces are not started
            for future in pending:
                future.cancel()
