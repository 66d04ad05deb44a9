"""The SafeTensors container: building a header, and reading one back with every rule checked.

The `safetensors` library parses files too, but it exposes neither the byte offsets the streaming
writer and verifier need, nor a way to read a header without mapping tensors; this module is the
small piece of the format the toolchain needs for that, and `verify` still re-reads every output
with the library's own parser.
"""

from __future__ import annotations

import json
import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .documents import parse_json
from .dtypes import DTYPES
from .errors import CorruptInputError
from .tensors import check_shape

MAX_HEADER_BYTES = 100_000_000
# Entries one header may hold: far above real files (a large MoE keeps under 100,000 tensors in all
# its shards), and small enough that parsing and checking them stays within a few hundred MB.
MAX_ENTRIES = 1 << 18
ALIGN = 8


@dataclass(frozen=True)
class HeaderEntry:
    name: str
    dtype: str
    shape: tuple[int, ...]
    begin: int  # relative to the data buffer
    end: int


@dataclass(frozen=True)
class Header:
    entries: list[HeaderEntry]  # in data order
    metadata: dict[str, str]
    data_start: int  # absolute file offset of the data buffer
    file_size: int


def build_header(
    entries: list[tuple[str, str, tuple[int, ...], int]], metadata: dict[str, str]
) -> tuple[bytes, list[tuple[int, int]]]:
    """Header bytes (length prefix, JSON, space padding) for (name, dtype, shape, nbytes) in data order."""
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = metadata
    offsets: list[tuple[int, int]] = []
    pos = 0
    for name, code, shape, nbytes in entries:
        header[name] = {"dtype": code, "shape": list(shape), "data_offsets": [pos, pos + nbytes]}
        offsets.append((pos, pos + nbytes))
        pos += nbytes
    body = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    body += b" " * (-(8 + len(body)) % ALIGN)
    return struct.pack("<Q", len(body)) + body, offsets


def read_header(path: str | Path) -> Header:
    """Parse and validate a SafeTensors header against the file's real size."""
    name = Path(path).name
    file_size = os.path.getsize(path)
    with open(path, "rb") as fh:
        prefix = fh.read(8)
        if len(prefix) != 8:
            raise CorruptInputError(f"{name}: too short to be SafeTensors")
        (n,) = struct.unpack("<Q", prefix)
        if n > MAX_HEADER_BYTES:
            raise CorruptInputError(f"{name}: header claims {n} bytes, over the format's 100 MB limit")
        if 8 + n > file_size:
            raise CorruptInputError(f"{name}: header claims {n} bytes but the file has {file_size} (truncated?)")
        raw = fh.read(n)
    if not raw.startswith(b"{"):
        raise CorruptInputError(f"{name}: header does not start with '{{'")
    if raw.count(b"{") > MAX_ENTRIES + 2:  # every entry is an object: an upper bound, before parsing
        raise CorruptInputError(f"{name}: header holds more than {MAX_ENTRIES} entries")
    doc = parse_json(raw, f"{name}: header", CorruptInputError)
    if not isinstance(doc, dict):
        raise CorruptInputError(f"{name}: header is not a JSON object")
    metadata = doc.pop("__metadata__", None) or {}
    if not isinstance(metadata, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in metadata.items()):
        raise CorruptInputError(f"{name}: __metadata__ must map strings to strings")
    entries = sorted((_entry(name, k, v) for k, v in doc.items()), key=lambda e: (e.begin, e.end))
    data_len = file_size - 8 - n
    pos = 0
    for e in entries:
        if e.begin != pos:
            problem = "overlaps the previous tensor" if e.begin < pos else "leaves a hole before it"
            raise CorruptInputError(f"{name}: tensor {e.name!r} {problem} (offset {e.begin}, expected {pos})")
        pos = e.end
    if pos != data_len:
        raise CorruptInputError(f"{name}: tensors cover {pos} bytes but the data buffer has {data_len} (truncated?)")
    return Header(entries, metadata, 8 + n, file_size)


def _entry(fname: str, key: str, info: object) -> HeaderEntry:
    if not isinstance(info, dict):
        raise CorruptInputError(f"{fname}: entry {key!r} is not an object")
    code, shape, offsets = info.get("dtype"), info.get("shape"), info.get("data_offsets")
    if not isinstance(code, str) or code not in DTYPES:
        raise CorruptInputError(f"{fname}: tensor {key!r} has unknown dtype {code!r}")
    if (
        not isinstance(shape, list)
        or not all(type(d) is int and d >= 0 for d in shape)
        or not isinstance(offsets, list)
        or len(offsets) != 2
        or not all(type(o) is int and o >= 0 for o in offsets)
    ):
        raise CorruptInputError(f"{fname}: tensor {key!r} has a malformed shape or data_offsets")
    begin, end = offsets
    check_shape(tuple(shape), DTYPES[code].itemsize, f"{fname}: tensor {key!r}")
    expected = math.prod(shape) * DTYPES[code].itemsize
    if end - begin != expected:
        raise CorruptInputError(f"{fname}: tensor {key!r} spans {end - begin} bytes but its shape needs {expected}")
    return HeaderEntry(key, code, tuple(shape), begin, end)
