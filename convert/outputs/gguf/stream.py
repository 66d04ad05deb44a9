"""Write one GGUF file streaming: the header first, planned from the tensors' sizes, then each
tensor's bytes as its producer yields them, in info order, each padded to the alignment.

Memory stays bounded by one producer's chunk, however large the model: nothing is gathered before
it is written. As the SafeTensors writer does, a thread hashes what has landed (the file, and each
tensor's range) and another flushes it to disk while the next tensor is being quantized.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from convert.writer import landing_file, write_all

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
    ranges = [(data_start + i.offset, data_start + i.offset + i.nbytes) for i in infos]
    with landing_file(path, header, total, ranges, algorithm) as out:
        pos = data_start
        for item, info in zip(items, infos, strict=True):
            written = told = 0
            for chunk in item.chunks():
                write_all(out.fd, chunk, path)
                written += len(chunk)
                if written - told >= LANDED_STEP:
                    out.landed(pos + written)
                    told = written
            if written != item.nbytes:
                raise RuntimeError(f"tensor {item.name!r}: produced {written} bytes, planned {item.nbytes}")
            write_all(out.fd, bytes(-item.nbytes % alignment), path)
            pos = data_start + info.offset + padded(item.nbytes, alignment)
            out.landed(pos)
            if progress:
                progress(item.nbytes)
    file_digest, digests = out.file_digest, out.digests
    return WrittenGGUF(path.name, total, file_digest, data_start, infos, digests)
