"""Streaming tensor-file writer: a header, then one tensor at a time at the offset its format planned.

Formats (convert/outputs/: SafeTensors, GGUF) build their header and offsets; this module writes the
bytes, whatever the format.

Tensors whose bytes already lie contiguously in a source file (or in a few ranges, one after
another) are copied file to file by the kernel (`copy_file_range`, else `sendfile`), small ones
gathered into one write; views, byte swaps and casts are materialised in chunks.
A background thread hashes what is written, so digests cost no extra pass over the output, and
another flushes it to disk as it grows, so the disk works beside the CPU rather than after it.
"""

from __future__ import annotations

import errno
import mmap
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .dtypes import CastLoss, CastLossError, DType, cast_array, cast_checked
from .durable import ProgressiveFlush
from .errors import ConvertError, CorruptInputError, MappingError, OutputWriteError
from .hashing import OutputHasher
from .manifest_model import TensorRecord, Transform
from .tensors import CHUNK_BYTES, FileSpan, TensorRef, c_contiguous, iter_chunks, release_pages, row_blocks

Progress = Callable[[int], None]
Landed = Callable[[int], None]  # told that bytes [0, upto) of the output are written
COPY_PIECE = 64 << 20  # kernel copies in pieces, so the hashers and the flush can follow the writer
SMALL_TENSOR = 64 << 10  # copies up to this size are gathered and written together (_Gathered)
GATHER_BYTES = 4 << 20


@dataclass
class WriteItem:
    """One output tensor: its name and dtype in the file, and where its bytes come from."""

    name: str
    dtype: DType
    ref: TensorRef  # cast to `dtype` while streaming when the two differ
    casts: list[Transform] = field(default_factory=list)  # the cast steps that take `ref` to `dtype`

    @property
    def shape(self) -> tuple[int, ...]:
        return self.ref.shape

    @property
    def nbytes(self) -> int:
        return self.ref.numel * self.dtype.itemsize


@dataclass
class WrittenTensor:
    name: str
    file: str
    dtype: str
    shape: tuple[int, ...]
    data_offsets: tuple[int, int]
    digest: str
    cast_losses: list[CastLoss]  # per cast step of the item: what it lost
    # what its output format adds to its manifest entry (GGUF: quantization)
    record: TensorRecord = field(default_factory=lambda: TensorRecord())


@dataclass
class WrittenFile:
    name: str
    bytes: int
    digest: str
    tensors: list[WrittenTensor]


def write_tensor_file(
    path: Path,
    header: bytes,
    ordered: list[WriteItem],
    offsets: list[tuple[int, int]],
    algorithm: str,
    progress: Progress | None = None,
) -> WrittenFile:
    """Write one tensor file: `header` at its start, then each item at its [begin, end) offsets
    counted from the header's end, in that order. Its digest and every tensor's, in `algorithm`,
    come back with it."""
    total = len(header) + (offsets[-1][1] if offsets else 0)
    ranges = [(len(header) + b, len(header) + e) for b, e in offsets]
    with landing_file(path, header, total, ranges, algorithm) as out, _Gathered(out, path) as gathered:
        losses: list[list[CastLoss]] = []
        for item, (begin, end) in zip(ordered, offsets, strict=True):
            span = _small_copy(item)
            if span is not None:
                gathered.add(span, len(header) + begin)
                losses.append([])
            else:
                gathered.write()
                losses.append(_write_tensor(out.fd, item, len(header) + begin, out.landed, path))
                out.landed(len(header) + end)
            if progress:
                progress(item.nbytes)
    file_digest, digests = out.file_digest, out.digests
    tensors = [
        WrittenTensor(it.name, path.name, it.dtype.code, it.shape, off, dg, lost)
        for it, off, dg, lost in zip(ordered, offsets, digests, losses, strict=True)
    ]
    return WrittenFile(path.name, total, file_digest, tensors)


@dataclass
class LandingFile:
    """A new output file as it is written: `landed(upto)` tells the hashing thread (the file, and each
    tensor's range) and the flushing thread how far it is written; the digests are set when it is
    closed complete."""

    fd: int
    path: Path
    hasher: OutputHasher
    flush: ProgressiveFlush
    file_digest: str = ""
    digests: list[str] = field(default_factory=list)

    def landed(self, upto: int) -> None:
        try:
            self.hasher.advance(upto)
            self.flush.advance(upto)
        except OSError as exc:  # the output could not be read back or flushed
            raise write_error(exc, self.path) from None


@contextmanager
def landing_file(path: Path, header: bytes, total: int, ranges: list[tuple[int, int]], algorithm: str) -> Iterator[LandingFile]:
    """Create `path` (which must not exist), write `header` at its start (the file offset after it),
    and hash and flush what lands in it while the caller writes the rest; on any error both threads
    stop. Every output format's file writer goes through here (SafeTensors files, GGUF files)."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides; read for maps
    hasher: OutputHasher | None = None
    flush: ProgressiveFlush | None = None
    try:
        write_all(fd, header, path)
        hasher = OutputHasher(path, total, ranges, algorithm)
        flush = ProgressiveFlush(fd)
        out = LandingFile(fd, path, hasher, flush)
        yield out
        try:
            out.file_digest, out.digests = hasher.finish()
            flush.finish()
        except OSError as exc:
            raise write_error(exc, path) from None
    except BaseException:
        if hasher is not None:
            hasher.abort()
        if flush is not None:
            flush.abort()
        raise
    finally:
        os.close(fd)


def write_all(fd: int, data: bytes | memoryview, path: Path) -> None:
    """Write all of `data` at the file's offset; an OSError is the output's write error."""
    view = memoryview(data).cast("B")
    while view:
        try:
            view = view[os.write(fd, view) :]
        except OSError as exc:
            raise write_error(exc, path) from None


def _small_copy(item: WriteItem) -> FileSpan | None:
    """The one source range of a small tensor written as its bytes are, for `_Gathered`; else None."""
    ranges = item.ref.ranges()
    if len(ranges) == 1 and ranges[0].length <= SMALL_TENSOR and item.dtype == item.ref.dtype and not item.casts:
        return ranges[0]
    return None


class _Gathered:
    """Small tensors copied as their bytes are, gathered into one write: 20,000 tensors of a few
    bytes each would otherwise cost an open, a copy_file_range, a close and a wake-up of the hashing
    and flushing threads apiece. Sources stay open until the file is written."""

    def __init__(self, out: LandingFile, path: Path) -> None:
        self._out, self._path = out, path
        self._sources: dict[str, int] = {}
        self._pending = bytearray()
        self._at = 0  # the output offset of the gathered bytes

    def __enter__(self) -> _Gathered:
        return self

    def __exit__(self, *exc: object) -> None:
        if exc[0] is None:
            self.write()
        for fd in self._sources.values():
            os.close(fd)

    def add(self, span: FileSpan, pos: int) -> None:
        """Gather the bytes of `span`, to land at output offset `pos`."""
        if self._pending and (pos != self._at + len(self._pending) or len(self._pending) >= GATHER_BYTES):
            self.write()
        if not self._pending:
            self._at = pos
        fd = self._sources.get(span.path)
        if fd is None:
            fd = self._sources[span.path] = os.open(span.path, os.O_RDONLY)
        data = os.pread(fd, span.length, span.offset)
        if len(data) != span.length:
            raise CorruptInputError(f"{Path(span.path).name}: ended early while copying a tensor (truncated?)")
        self._pending += data

    def write(self) -> None:
        """Write what is gathered, and say it has landed."""
        if self._pending:
            _pwrite_all(self._out.fd, self._pending, self._at, self._path)
            self._out.landed(self._at + len(self._pending))
            self._pending.clear()


def _write_tensor(fd: int, item: WriteItem, pos: int, landed: Landed, path: Path) -> list[CastLoss]:
    """Write one tensor; what each of its casts lost, counted over the whole tensor. A cast that lost
    values without leave (its `on_loss` is "refuse") fails the file after it has counted them all."""
    ref = item.ref
    losses = [CastLoss() for _ in item.casts]
    if ref.ranges() and item.dtype == ref.dtype and not item.casts:  # F32 -> BF16 -> F32 is no copy
        for span in ref.ranges():
            _copy_span(span.path, span.offset, span.length, fd, pos, path, landed)
            pos += span.length
        return losses
    try:
        arr = ref.array()
    except CastLossError as exc:  # a cast inside a layout rule's chain
        raise MappingError(f"tensor {item.name!r}: {exc}") from None
    if not _write_transposed(fd, arr, item, pos, path, losses) and not _write_mapped(fd, arr, item, pos, path, landed):
        for chunk in iter_chunks(arr, CHUNK_BYTES, reuse=True):
            data = _bytes(chunk, item, losses)
            _pwrite_all(fd, data, pos, path)
            pos += len(data)
            landed(pos)
            release_pages(arr)
    for step, lost in zip(item.casts, losses, strict=True):
        if lost and step.get("on_loss", "refuse") == "refuse":
            raise CastLossError(f"tensor {item.name!r}", lost, step["to"])
    return losses


def _bytes(block: np.ndarray, item: WriteItem, losses: list[CastLoss]) -> memoryview:
    """Little-endian bytes of a block in the item's dtype (cast as torch casts), counting what each
    narrowing cast loses into `losses`."""
    block = c_contiguous(block)  # before a cast, which would keep a transposed layout
    for step, lost in zip(item.casts, losses, strict=True):
        if step.get("lossless"):
            block = cast_array(block, step["to"])
        else:
            block, loss = cast_checked(block, step["to"], step.get("on_loss", "refuse"))
            lost.add(loss)
    if block.dtype != item.dtype.numpy:  # a big-endian source, written little-endian
        block = cast_array(block, item.dtype.code)
    return np.ascontiguousarray(block).reshape(-1).view(np.uint8).data  # a memoryview of its bytes


MAPPED_FROM = 1 << 20  # smaller views gain little from skipping the copy, and cost a mapping each
# A 2-D view is copied into the output's map in blocks of up to this many bytes (a map each), a group of
# whole columns at a time (_column_groups). A transposed view's group is a run of whole source rows,
# so each source page is mapped once; row blocks of 16 MiB read a page of every source row each, and
# the kernel's fault-around mapped and dropped each page four times. 1 GiB of Dense kernels re-laid to
# burn-native: 67,000 page faults against 110,000, 1.87 against 2.16 CPU-s (medians of 6 alternating
# runs; system time 0.56 s against 0.85).
TRANSPOSED_BLOCK = 4 * CHUNK_BYTES


def _write_mapped(fd: int, arr: np.ndarray, item: WriteItem, pos: int, path: Path, landed: Landed) -> bool:
    """A view whose bytes go to the file as they are once C-ordered (no cast, no byte swap) but must be
    copied to be (a transpose), copied straight into the output's pages through a shared map of it, a
    block of rows at a time; False when the view is not such a case, or the file system cannot
    allocate its range ahead (then the caller writes it in chunks).

    Copied into a buffer and written, it would cross memory twice more (the buffer, then the kernel's
    copy into the page cache: a third of the CPU the tool spent on a 1 GiB Keras file, by perf).
    The whole range is allocated first, so a full disk fails as an OSError, not as a SIGBUS when a
    page of the map is first written."""
    if item.casts or arr.dtype != item.dtype.numpy or arr.flags.c_contiguous or arr.nbytes < MAPPED_FROM:
        return False
    try:
        os.posix_fallocate(fd, pos, arr.nbytes)
    except OSError as exc:
        if exc.errno in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            return False
        raise write_error(exc, path) from None
    for block in row_blocks(arr, TRANSPOSED_BLOCK if arr.ndim == 2 else CHUNK_BYTES):
        base = pos - pos % mmap.ALLOCATIONGRANULARITY
        try:
            with mmap.mmap(fd, pos + block.nbytes - base, offset=base) as window:
                target = np.ndarray(block.shape, block.dtype, buffer=window, offset=pos - base)
                for columns in _column_groups(block):
                    c_contiguous(block[columns], target[columns])
                    release_pages(arr)
                del target  # the map closes only once no array uses it
        except OSError as exc:
            raise write_error(exc, path) from None
        pos += block.nbytes
        landed(pos)
    return True


def _column_groups(block: np.ndarray) -> Iterator[tuple[slice, ...]]:
    """Index tuples that split a 2-D block into groups of whole columns of about CHUNK_BYTES each (a
    transposed view's group is a contiguous run of its source, whose pages are handed back after it),
    or that take any other block whole."""
    if block.ndim != 2 or block.nbytes <= CHUNK_BYTES:
        yield (slice(None),)
        return
    rows, cols = block.shape
    width = max(1, CHUNK_BYTES // max(1, rows * block.itemsize))
    for c0 in range(0, cols, width):
        yield (slice(None), slice(c0, c0 + width))


def _write_transposed(fd: int, arr: np.ndarray, item: WriteItem, pos: int, path: Path, losses: list[CastLoss]) -> bool:
    """A transposed 2-D view (a Linear weight saved as `w.t()`), written in column tiles.

    Gathering its rows in chunks touches every page of the storage for each chunk when a chunk's rows
    are less than a page of each storage row; a tile of columns is instead a contiguous run of
    storage rows, read once, transposed in memory, and written as one segment per output row. False
    when the view is not such a case, when row chunks read each storage page once anyway (then fewer,
    larger writes win), or when the tile's segments would be tiny. (Sending views of up to 8192
    storage rows to the map instead saved 0.04 to 0.07 CPU-s on a 64 MiB PyTorch view, but a gzip
    HDF5 kernel of 8192x8192 then peaked at 199 to 343 MiB, against under 192 in tiles:
    tests/safety/campaign/test_limits.py.)
    """
    if arr.ndim != 2 or arr.nbytes <= CHUNK_BYTES or not 0 < arr.strides[0] < arr.strides[1]:
        return False
    rows, cols = arr.shape
    if CHUNK_BYTES // max(1, cols * arr.itemsize) * arr.itemsize >= mmap.PAGESIZE:
        return False
    itemsize = item.dtype.itemsize
    # Segments of at least 4 KiB: a tile then holds more than a chunk when there are many rows, but
    # gathering rows instead would touch every page of the storage at once (a 3 GB kernel: 3 GB RSS).
    width = max(1, CHUNK_BYTES // max(1, rows * arr.itemsize), -(-4096 // itemsize))
    for c0 in range(0, cols, width):
        tile = _bytes(np.ascontiguousarray(arr[:, c0 : c0 + width].T).T, item, losses)
        tile_width = min(width, cols - c0) * itemsize
        for r in range(rows):
            _pwrite_all(fd, tile[r * tile_width : (r + 1) * tile_width], pos + (r * cols + c0) * itemsize, path)
        release_pages(arr)
    return True


def _pwrite_all(fd: int, data: bytes | bytearray | memoryview, offset: int, path: Path) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.pwrite(fd, view, offset)
        except OSError as exc:
            raise write_error(exc, path) from None
        view = view[written:]
        offset += written


def _copy_span(src_path: str, offset: int, length: int, dst_fd: int, dst_pos: int, dst_path: Path, landed: Landed) -> None:
    """Copy a byte range file to file in the kernel (copy_file_range, else sendfile, else reads),
    saying as each piece lands."""
    src_fd = os.open(src_path, os.O_RDONLY)
    try:
        done = 0
        copier = _kernel_copy
        while done < length:
            try:
                n = copier(src_fd, dst_fd, offset + done, dst_pos + done, min(length - done, COPY_PIECE))
            except OSError as exc:
                unsupported = exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM)
                if unsupported and copier is not _user_copy:
                    copier = _sendfile_copy if copier is _kernel_copy else _user_copy
                    continue
                raise write_error(exc, dst_path) from None
            if n == 0:
                raise CorruptInputError(f"{Path(src_path).name}: ended early while copying a tensor (truncated?)")
            done += n
            landed(dst_pos + done)
    finally:
        os.close(src_fd)


def _kernel_copy(src: int, dst: int, src_off: int, dst_off: int, count: int) -> int:
    return os.copy_file_range(src, dst, count, src_off, dst_off)


def _sendfile_copy(src: int, dst: int, src_off: int, dst_off: int, count: int) -> int:
    os.lseek(dst, dst_off, os.SEEK_SET)
    return os.sendfile(dst, src, src_off, count)


def _user_copy(src: int, dst: int, src_off: int, dst_off: int, count: int) -> int:
    data = os.pread(src, min(count, CHUNK_BYTES), src_off)
    view = memoryview(data)
    while view:
        written = os.pwrite(dst, view, dst_off)
        view, dst_off = view[written:], dst_off + written
    return len(data)


def write_error(exc: OSError, path: Path) -> ConvertError:
    """An OSError while writing `path`, as the one-line output write error (exit 10)."""
    if exc.errno == errno.ENOSPC:
        return OutputWriteError(f"disk full while writing {path.name}")
    return OutputWriteError(f"cannot write {path.name}: {exc.strerror or exc}")
