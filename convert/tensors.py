"""Lazy tensor references: what a tensor is and how to read its bytes, never the bytes themselves.

Readers yield `TensorRef`s; the writer pulls one tensor at a time, so memory stays bounded by a
chunk rather than by the model.  A reference whose bytes already lie in one contiguous C-ordered
little-endian range of a file exposes it as `span`, which lets the writer copy file to file in the
kernel; one stored in parts that are its C-order bytes one after another (a TensorFlow variable
partitioned along its first axis) exposes them as `pieces`, copied alike. Everything else is read
through a numpy view over a memory map and materialised in chunks.
"""

from __future__ import annotations

import math
import mmap
import os
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass, field

import numpy as np

from .dtypes import DType, dtype as lookup_dtype
from .errors import CorruptInputError

CHUNK_BYTES = 16 << 20


@dataclass(frozen=True)
class FileSpan:
    """A contiguous byte range of a file holding a tensor in C order, little-endian."""

    path: str
    offset: int
    length: int


@dataclass
class TensorRef:
    name: str
    dtype: DType
    shape: tuple[int, ...]
    load: Callable[[], np.ndarray] = field(repr=False)
    span: FileSpan | None = None
    # Two refs with equal identity are the same memory (tied weights); None means never shared.
    identity: Hashable | None = None
    # No span, but these ranges hold the tensor's C-order bytes in order (its parts, stored apart).
    pieces: tuple[FileSpan, ...] = ()

    def ranges(self) -> tuple[FileSpan, ...]:
        """The file ranges whose bytes, in order, are this tensor's (empty when it is no file's bytes)."""
        return (self.span,) if self.span is not None else self.pieces

    @property
    def numel(self) -> int:
        return math.prod(self.shape)

    @property
    def nbytes(self) -> int:
        return self.numel * self.dtype.itemsize

    def renamed(self, name: str) -> TensorRef:
        """The same bytes under another name: span, pieces and identity kept, so zero-copy and ties survive."""
        return TensorRef(name, self.dtype, self.shape, self.load, self.span, self.identity, self.pieces)

    def array(self) -> np.ndarray:
        """A (possibly memory-mapped, non-contiguous) view with this ref's dtype and shape."""
        arr = self.load()
        if tuple(arr.shape) != self.shape:
            raise CorruptInputError(f"tensor {self.name!r}: read shape {arr.shape}, expected {self.shape}")
        return arr


def mapped_tensor(
    mapped: MappedFile, name: str, dt: DType, shape: tuple[int, ...], offset: int, *, shareable: bool = False
) -> TensorRef:
    """A C-order, little-endian tensor stored whole at `offset` of a mapped file (the caller has checked
    it fits). `shareable`: two refs at the same place are one tensor, tied, as SafeTensors and ONNX
    external data mean it; TFLite and msgpack buffers promise no such thing."""
    strides = contiguous_strides(shape)
    return TensorRef(
        name,
        dt,
        shape,
        lambda: mapped.view(offset, dt.numpy, shape, strides),
        span=FileSpan(mapped.path, offset, math.prod(shape) * dt.itemsize),
        identity=(mapped.path, offset, shape, dt.code) if shareable else None,
    )


def in_memory(name: str, arr: np.ndarray, dtype_code: str | None = None) -> TensorRef:
    """A reference to an array already in memory (small tensors from msgpack, results of transforms)."""
    dt = lookup_dtype(dtype_code) if dtype_code else _dtype_of(arr)
    return TensorRef(name, dt, tuple(arr.shape), lambda: arr)


def _dtype_of(arr: np.ndarray) -> DType:
    from .dtypes import from_numpy

    return from_numpy(arr.dtype.newbyteorder("=") if arr.dtype.byteorder == ">" else arr.dtype)


class MappedFile:
    """An open file whose tensors are read through memory maps made per tensor.

    Each view owns a map of just the bytes it reaches; when the view is dropped the map goes with
    it, so RSS does not accumulate across tensors.  Within one large tensor, `release_pages` hands
    back what a chunk touched.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        self._fd: int | None = os.open(path, os.O_RDONLY)
        self.size = os.fstat(self._fd).st_size

    def view(self, offset: int, np_dtype: np.dtype, shape: tuple[int, ...], strides_elems: tuple[int, ...]) -> np.ndarray:
        """A strided view; the caller has checked that every element lies inside the file."""
        extent = strided_extent(0, shape, strides_elems) * np_dtype.itemsize
        if extent == 0:
            return np.zeros(shape, dtype=np_dtype)
        if self._fd is None:
            raise ValueError(f"{self.path} is closed")
        base = offset - offset % mmap.ALLOCATIONGRANULARITY
        window = mmap.mmap(self._fd, offset + extent - base, access=mmap.ACCESS_READ, offset=base)
        byte_strides = tuple(s * np_dtype.itemsize for s in strides_elems)
        return np.ndarray(shape, dtype=np_dtype, buffer=window, offset=offset - base, strides=byte_strides)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def release_pages(arr: np.ndarray) -> None:
    """Give back the pages a memory-mapped array has touched (they stay in the page cache)."""
    base: object = arr
    while isinstance(base, np.ndarray):
        base = base.base
    if isinstance(base, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        base.madvise(mmap.MADV_DONTNEED)


def strided_extent(storage_offset: int, shape: tuple[int, ...], stride: tuple[int, ...]) -> int:
    """Number of storage elements a strided view reaches: one past its last element (0 if empty)."""
    if any(s == 0 for s in shape):
        return 0
    return storage_offset + sum((n - 1) * st for n, st in zip(shape, stride, strict=True)) + 1


def is_c_contiguous(shape: tuple[int, ...], stride: tuple[int, ...]) -> bool:
    expected = 1
    for n, st in zip(reversed(shape), reversed(stride), strict=True):
        if n != 1 and st != expected:
            return False
        expected *= n
    return True


# A transposed 2-D view is copied in strips of TRANSPOSE_STRIP output columns by up to TRANSPOSE_BAND
# output rows: a strip reads a few source rows front to back and writes a cache line or so of each
# output row. Measured on 4096x4096 float32 here: numpy's own copy 0.5 GB/s (one element per cache line
# read, every line a row apart), 64x64 blocks 1.2 GB/s, these strips 2.4 to 2.8 GB/s; float16/bfloat16
# 2 GB/s, int8 1.1 GB/s, float64 2.8 GB/s (their own copies: 0.3, 0.14 and 0.9 GB/s).
TRANSPOSE_STRIP = 8
TRANSPOSE_BAND = 1024
STRIPS_FROM = 1 << 16  # elements; below this numpy's copy is as fast as any loop


def c_contiguous(arr: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """`arr` in C order: `arr` itself when it already is and no `out` is given, else a copy into `out`
    (a C-contiguous array of its shape and dtype, reused by the caller across chunks) or a new array."""
    if out is None:
        if arr.flags.c_contiguous:
            return arr
        if not _is_transposed_2d(arr):
            return np.ascontiguousarray(arr)
        out = np.empty(arr.shape, arr.dtype)
    if not _is_transposed_2d(arr):
        np.copyto(out, arr)
        return out
    rows, cols = arr.shape
    strip, band = TRANSPOSE_STRIP, TRANSPOSE_BAND
    for i in range(0, rows, band):
        src, dst = arr[i : i + band], out[i : i + band]
        for j in range(0, cols, strip):
            dst[:, j : j + strip] = src[:, j : j + strip]
    return out


def _is_transposed_2d(arr: np.ndarray) -> bool:
    """A large 2-D view whose rows are spread wider apart than its columns (a transpose of a C-order array)."""
    return arr.ndim == 2 and arr.size >= STRIPS_FROM and min(arr.shape) > 1 and abs(arr.strides[0]) < abs(arr.strides[1])


def iter_chunks(arr: np.ndarray, max_bytes: int = CHUNK_BYTES, reuse: bool = False) -> Iterator[np.ndarray]:
    """C-ordered contiguous pieces of `arr`, each at most about `max_bytes`, in order. With `reuse`, the
    pieces that must be copied are copied into one buffer, overwritten by the next piece: a caller that
    is done with each piece before asking for the next saves allocating (and faulting in) every one."""
    buffer: np.ndarray | None = None
    for block in row_blocks(arr, max_bytes):
        if not reuse or block.flags.c_contiguous or block.ndim == 0:
            yield c_contiguous(block)
            continue
        if buffer is None or buffer.size < block.size:
            buffer = np.empty(block.size, block.dtype)
        yield c_contiguous(block, buffer[: block.size].reshape(block.shape))


def row_blocks(arr: np.ndarray, max_bytes: int = CHUNK_BYTES) -> Iterator[np.ndarray]:
    """Views of `arr` whose C-order bytes, one block after another, are `arr`'s: runs of whole rows of
    at most about `max_bytes`, or pieces of one row when a row is larger."""
    if arr.nbytes <= max_bytes or arr.ndim == 0:
        yield arr
        return
    row_bytes = arr[0].nbytes
    if row_bytes == 0:
        yield arr
        return
    if row_bytes <= max_bytes:
        rows = max_bytes // row_bytes
        for start in range(0, arr.shape[0], rows):
            yield arr[start : start + rows]
        return
    for row in arr:
        yield from row_blocks(row, max_bytes)


MAX_RANK = 64  # numpy's NPY_MAXDIMS
_MAX_ARRAY_BYTES = 2**63  # numpy's intp: no array, not even an empty one, may span more


def check_shape(shape: tuple[int, ...], itemsize: int, what: str, strides: tuple[int, ...] = ()) -> None:
    """Refuse a shape (and element strides) numpy cannot build an array of before anything tries:
    more than 64 dimensions, or a size or stride past its intp, counted as numpy counts them (zero
    dimensions do not excuse the others: shape (0, 2**62) is refused by numpy too)."""
    if len(shape) > MAX_RANK:
        raise CorruptInputError(f"{what} has {len(shape)} dimensions; numpy allows at most {MAX_RANK}")
    if math.prod(max(d, 1) for d in shape) * max(itemsize, 1) >= _MAX_ARRAY_BYTES:
        raise CorruptInputError(f"{what} has shape {list(shape)[:8]}, too large for any array")
    if any(abs(s) * max(itemsize, 1) >= _MAX_ARRAY_BYTES for s in strides):
        raise CorruptInputError(f"{what} has a stride too large for any array")


def contiguous_strides(shape: tuple[int, ...]) -> tuple[int, ...]:
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))
