"""Streaming SafeTensors writer: plan the header from shapes, then write one tensor at a time.

Tensors whose bytes already lie contiguously in a source file are copied file to file by the
kernel (`copy_file_range`, else `sendfile`); views, byte swaps and casts are materialised in chunks.
A background thread hashes what is written, so digests cost no extra pass over the output.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .dtypes import DType, cast_array
from .errors import ConvertError, CorruptInputError, OutputWriteError
from .hashing import StreamHasher
from .safetensors_format import build_header
from .tensors import CHUNK_BYTES, TensorRef, iter_chunks, release_pages

Progress = Callable[[int], None]

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


@dataclass
class WriteItem:
    """One output tensor: its name and dtype in the file, and where its bytes come from."""

    name: str
    dtype: DType
    ref: TensorRef  # cast to `dtype` while streaming when the two differ

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
    sha256: str


@dataclass
class WrittenFile:
    name: str
    bytes: int
    sha256: str
    tensors: list[WrittenTensor]


def shard_items(items: list[WriteItem], max_shard_size: int | None) -> list[list[WriteItem]]:
    """Fill shards greedily in order; a tensor larger than the limit gets a shard of its own."""
    if not max_shard_size:
        return [items]
    shards: list[list[WriteItem]] = [[]]
    size = 0
    for item in items:
        if shards[-1] and size + item.nbytes > max_shard_size:
            shards.append([])
            size = 0
        shards[-1].append(item)
        size += item.nbytes
    return shards


def shard_file_names(count: int) -> list[str]:
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{count:05d}.safetensors" for i in range(1, count + 1)]


def file_order(items: list[WriteItem]) -> list[WriteItem]:
    """The reference writer's order inside a file: larger alignment first, then by name."""
    return sorted(items, key=lambda it: (-it.dtype.itemsize, it.name))


def write_safetensors(path: Path, items: list[WriteItem], metadata: dict[str, str],
                      progress: Progress | None = None) -> WrittenFile:
    ordered = file_order(items)
    header, offsets = build_header([(it.name, it.dtype.code, it.shape, it.nbytes) for it in ordered], metadata)
    hasher = StreamHasher()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        _write_all(fd, header, path)
        hasher.bytes(header)
        for item in ordered:
            hasher.begin_tensor()
            _write_tensor(fd, item, hasher, path)
            hasher.end_tensor()
            if progress:
                progress(item.nbytes)
        file_digest, digests = hasher.finish()
        os.fsync(fd)
    except BaseException:
        hasher.abort()
        raise
    finally:
        os.close(fd)
    tensors = [WrittenTensor(it.name, path.name, it.dtype.code, it.shape, off, dg)
               for it, off, dg in zip(ordered, offsets, digests)]
    return WrittenFile(path.name, len(header) + sum(it.nbytes for it in ordered), file_digest, tensors)


def _write_tensor(fd: int, item: WriteItem, hasher: StreamHasher, path: Path) -> None:
    ref = item.ref
    if ref.span is not None and item.dtype == ref.dtype:
        _copy_span(ref.span.path, ref.span.offset, ref.span.length, fd, path)
        hasher.tensor_range(ref.span.path, ref.span.offset, ref.span.length)
        return
    arr = ref.array()
    for chunk in iter_chunks(arr, CHUNK_BYTES):
        if chunk.dtype != item.dtype.numpy:
            chunk = cast_array(chunk, item.dtype.code)
        data = memoryview(chunk.reshape(-1).view(np.uint8))
        _write_all(fd, data, path)
        hasher.tensor_bytes(data)
        release_pages(arr)


def _write_all(fd: int, data: bytes | memoryview, path: Path) -> None:
    view = memoryview(data)
    while view:
        try:
            written = os.write(fd, view)
        except OSError as exc:
            raise _write_error(exc, path) from None
        view = view[written:]


def _copy_span(src_path: str, offset: int, length: int, dst_fd: int, dst_path: Path) -> None:
    """Copy a byte range file to file in the kernel; fall back to sendfile, then to plain reads."""
    src_fd = os.open(src_path, os.O_RDONLY)
    try:
        done = 0
        copier = _kernel_copy
        while done < length:
            try:
                n = copier(src_fd, dst_fd, offset + done, length - done)
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL, errno.EPERM) and copier is not _user_copy:
                    copier = _sendfile_copy if copier is _kernel_copy else _user_copy
                    continue
                raise _write_error(exc, dst_path) from None
            if n == 0:
                raise CorruptInputError(f"{Path(src_path).name}: ended early while copying a tensor (truncated?)")
            done += n
    finally:
        os.close(src_fd)


def _kernel_copy(src: int, dst: int, offset: int, count: int) -> int:
    return os.copy_file_range(src, dst, min(count, 1 << 30), offset)


def _sendfile_copy(src: int, dst: int, offset: int, count: int) -> int:
    return os.sendfile(dst, src, offset, min(count, 1 << 30))


def _user_copy(src: int, dst: int, offset: int, count: int) -> int:
    data = os.pread(src, min(count, CHUNK_BYTES), offset)
    view = memoryview(data)
    while view:
        view = view[os.write(dst, view):]
    return len(data)


def _write_error(exc: OSError, path: Path) -> ConvertError:
    if exc.errno == errno.ENOSPC:
        return OutputWriteError(f"disk full while writing {path.name}")
    return OutputWriteError(f"cannot write {path.name}: {exc.strerror or exc}")
