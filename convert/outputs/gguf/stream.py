"""Write one GGUF file streaming: the header first, planned from the tensors' sizes, then each
tensor's bytes as its producer yields them, in info order, each padded to the alignment.

Memory stays bounded by one producer's chunk, however large the model: nothing is gathered before
it is written. As the SafeTensors writer does, a thread hashes what has landed (the file, and each
tensor's range) and another flushes it to disk while the next tensor is being quantized.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from convert.durable import ProgressiveFlush
from convert.hashing import OutputHasher
from convert.writer import _write_error

from .file_format import ALIGNMENT, TensorInfo, Value, padded, plan_header

Progress = Callable[[int], None]
# The hashing thread is told of written bytes in steps this large: one small window per chunk (a
# quantizer's chunk is well under 1 MiB of output) would cost a mapping and a wake-up each.
LANDED_STEP = 8 << 20
Chunks = Iterable[bytes | memoryview]


@dataclass
class GGUFItem:
    """One tensor to write: its GGUF name, numpy-order shape, ggml type and size, and a callable
    that yields its bytes in order (called once, when the writer reaches it)."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    nbytes: int
    chunks: Callable[[], Chunks]


@dataclass
class WrittenGGUF:
    name: str
    bytes: int
    digest: str
    data_start: int
    tensors: list[TensorInfo]
    digests: list[str]  # per tensor, over its bytes (not its padding)


def write_gguf(
    path: Path,
    metadata: Mapping[str, Value],
    items: list[GGUFItem],
    algorithm: str,
    progress: Progress | None = None,
    alignment: int = ALIGNMENT,
) -> WrittenGGUF:
    """Write one GGUF file at `path` (which must not exist); its digest and each tensor's come back."""
    header, infos = plan_header(metadata, [(it.name, it.shape, it.ggml_type, it.nbytes) for it in items], alignment)
    data_start = len(header)
    total = data_start + sum(padded(it.nbytes, alignment) for it in items)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask decides
    hasher: OutputHasher | None = None
    flush: ProgressiveFlush | None = None
    try:
        _write_all(fd, header, path)
        hasher = OutputHasher(path, total, [(data_start + i.offset, data_start + i.offset + i.nbytes) for i in infos], algorithm)
        flush = ProgressiveFlush(fd)
        pos = data_start
        for item, info in zip(items, infos, strict=True):
            written = told = 0
            for chunk in item.chunks():
                _write_all(fd, chunk, path)
                written += len(chunk)
                if written - told >= LANDED_STEP:
                    _landed(hasher, flush, pos + written, path)
                    told = written
            if written != item.nbytes:
                raise RuntimeError(f"tensor {item.name!r}: produced {written} bytes, planned {item.nbytes}")
            _write_all(fd, bytes(-item.nbytes % alignment), path)
            pos = data_start + info.offset + padded(item.nbytes, alignment)
            _landed(hasher, flush, pos, path)
            if progress:
                progress(item.nbytes)
        try:
            file_digest, digests = hasher.finish()
            flush.finish()
        except OSError as exc:
            raise _write_error(exc, path) from None
    except BaseException:
        if hasher is not None:
            hasher.abort()
        if flush is not None:
            flush.abort()
        raise
    finally:
        os.close(fd)
    return WrittenGGUF(path.name, total, file_digest, data_start, infos, digests)


def _landed(hasher: OutputHasher, flush: ProgressiveFlush, upto: int, path: Path) -> None:
    try:
        hasher.advance(upto)
        flush.advance(upto)
    except OSError as exc:  # the output could not be read back or flushed
        raise _write_error(exc, path) from None


def _write_all(fd: int, data: bytes | memoryview, path: Path) -> None:
    view = memoryview(data).cast("B")
    while view:
        try:
            view = view[os.write(fd, view) :]
        except OSError as exc:
            raise _write_error(exc, path) from None
