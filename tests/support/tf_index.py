"""Rewriting a TensorFlow checkpoint's `.index` table, for tests that forge what TensorFlow never
writes: its (key, value) pairs read with the reader's own parser, and written back sorted, every
entry a restart point, each block checksummed as a LevelDB table's is."""

from __future__ import annotations

import struct
from collections.abc import Callable
from pathlib import Path

from exporters.tensorflow import bundle

Pairs = list[tuple[bytes, bytes]]


def index_pairs(index: Path) -> Pairs:
    """Every (key, value) of the table, the header's (empty key) first."""
    data = index.read_bytes()
    _, pos = bundle._handle(data, len(data) - bundle.FOOTER_BYTES, "x")
    return [
        pair
        for _, handle in bundle._block_entries(data, bundle._handle(data, pos, "x")[0], "x")
        for pair in bundle._block_entries(data, bundle._handle(handle, 0, "x")[0], "x")
    ]


def rewrite_index(index: Path, edit: Callable[[Pairs], Pairs]) -> None:
    """Write the table back with its pairs as `edit` returns them."""
    pairs = sorted(edit(index_pairs(index)))
    data_block = _block(pairs)
    meta = _block([])
    index_block = _block([(pairs[-1][0], _varint(0) + _varint(len(data_block) - 5))])
    meta_at, index_at = len(data_block), len(data_block) + len(meta)
    handles = _varint(meta_at) + _varint(len(meta) - 5) + _varint(index_at) + _varint(len(index_block) - 5)
    footer = handles.ljust(40, b"\0") + struct.pack("<Q", bundle.TABLE_MAGIC)
    index.write_bytes(data_block + meta + index_block + footer)


def _varint(n: int) -> bytes:
    out = b""
    while n >= 0x80:
        out, n = out + bytes([n & 0x7F | 0x80]), n >> 7
    return out + bytes([n])


def _block(entries: Pairs) -> bytes:
    """One uncompressed block, no shared key prefixes, with its type byte and masked CRC32C."""
    import crc32c

    body, restarts = b"", []
    for key, value in entries:
        restarts.append(len(body))
        body += _varint(0) + _varint(len(key)) + _varint(len(value)) + key + value
    body += b"".join(struct.pack("<I", r) for r in restarts or [0]) + struct.pack("<I", len(restarts or [0]))
    crc = crc32c.crc32c(body + b"\0")
    masked = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    return body + b"\0" + struct.pack("<I", masked)
