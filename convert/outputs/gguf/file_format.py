"""The GGUF v3 container: metadata values, the header planned from the tensors' sizes, and a reader
that checks every count, length and offset against the file's real size.

The layout is ggml's (`docs/gguf.md`, and `src/gguf.cpp`, which is what llama.cpp loads with):
magic `GGUF`, u32 version, u64 tensor count, u64 key-value count, the key-value pairs, one info per
tensor (name, u32 dimension count, u64 dimensions in ggml order, which is the numpy shape reversed,
u32 ggml type, u64 offset from the data section), zero padding to `general.alignment`, then each
tensor's bytes in info order, each padded to the alignment. `gguf.cpp` refuses a file whose offsets
are not exactly that running padded sum, so the writer and the reader hold to it. This module knows
nothing of what a type's bytes mean, only each type's block (from ggml_types, or a caller's table).
"""

from __future__ import annotations

import math
import mmap
import os
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import IntEnum
from pathlib import Path
from typing import Any

from convert.errors import CorruptInputError, MappingError

from .ggml_types import BY_ID

MAGIC = b"GGUF"
VERSION = 3
ALIGNMENT = 32  # ggml's default; realizar assumes it whatever the key says
MAX_NAME_BYTES = 63  # gguf.cpp refuses names of GGML_MAX_NAME (64) bytes or more
MAX_DIMS = 4
# Header sizes a reader accepts before it allocates anything (gguf.cpp: 1 GiB strings and arrays).
MAX_STRING_BYTES = 1 << 30
MAX_ARRAY_ITEMS = 1 << 30

TypeSizes = Mapping[int, tuple[int, int]]  # ggml type id -> (elements per block, bytes per block)
TYPE_SIZES: TypeSizes = {t.id: (t.block_size, t.type_size) for t in BY_ID.values()}  # the types this tool writes


class ValueType(IntEnum):
    UINT8 = 0
    INT8 = 1
    UINT16 = 2
    INT16 = 3
    UINT32 = 4
    INT32 = 5
    FLOAT32 = 6
    BOOL = 7
    STRING = 8
    ARRAY = 9
    UINT64 = 10
    INT64 = 11
    FLOAT64 = 12


_SCALAR = {
    ValueType.UINT8: "B",
    ValueType.INT8: "b",
    ValueType.UINT16: "H",
    ValueType.INT16: "h",
    ValueType.UINT32: "I",
    ValueType.INT32: "i",
    ValueType.FLOAT32: "f",
    ValueType.BOOL: "?",
    ValueType.UINT64: "Q",
    ValueType.INT64: "q",
    ValueType.FLOAT64: "d",
}


@dataclass(frozen=True)
class Value:
    """A typed metadata value; an array holds `items` of one `item_type` (GGUF arrays are flat)."""

    type: ValueType
    value: Any
    item_type: ValueType | None = None

    def to_json(self) -> Any:
        return list(self.value) if self.type is ValueType.ARRAY else self.value


def u32(v: int) -> Value:
    return Value(ValueType.UINT32, v)


def u16(v: int) -> Value:
    return Value(ValueType.UINT16, v)


def i32(v: int) -> Value:
    return Value(ValueType.INT32, v)


def string(v: str) -> Value:
    return Value(ValueType.STRING, v)


@dataclass(frozen=True)
class TensorInfo:
    """One tensor of a GGUF file: `shape` in numpy order; `offset` from the data section's start."""

    name: str
    shape: tuple[int, ...]
    ggml_type: int
    nbytes: int
    offset: int

    @property
    def dims(self) -> tuple[int, ...]:
        """The dimensions as the file stores them (ggml order: the row length first)."""
        return tuple(reversed(self.shape))


def _pack_string(s: str) -> bytes:
    raw = s.encode("utf-8")
    return struct.pack("<Q", len(raw)) + raw


def _pack_value(v: Value) -> bytes:
    if v.type is ValueType.STRING:
        return _pack_string(v.value)
    if v.type is ValueType.ARRAY:
        if v.item_type is None or v.item_type is ValueType.ARRAY:
            raise ValueError("a GGUF array holds scalars or strings")
        head = struct.pack("<IQ", v.item_type, len(v.value))
        if v.item_type is ValueType.STRING:
            return head + b"".join(_pack_string(s) for s in v.value)
        return head + struct.pack(f"<{len(v.value)}{_SCALAR[v.item_type]}", *v.value)
    return struct.pack("<" + _SCALAR[v.type], v.value)


def check_name(name: str) -> None:
    """A tensor name ggml can hold: at most 63 bytes of UTF-8 (ggml keeps names in char[64])."""
    size = len(name.encode("utf-8"))
    if size > MAX_NAME_BYTES:
        raise MappingError(
            f"tensor name {name!r} is {size} bytes, over GGUF's {MAX_NAME_BYTES}-byte limit; shorten it with a layout rule file"
        )


def padded(n: int, alignment: int = ALIGNMENT) -> int:
    return n + (-n % alignment)


def plan_header(
    metadata: Mapping[str, Value], tensors: list[tuple[str, tuple[int, ...], int, int]], alignment: int = ALIGNMENT
) -> tuple[bytes, list[TensorInfo]]:
    """The header bytes, padded to the alignment (so the data section starts where they end), for
    (name, numpy shape, ggml type, nbytes) in data order; and each tensor's info with its offset."""
    infos: list[TensorInfo] = []
    seen: set[str] = set()
    pos = 0
    for name, shape, ggml_type, nbytes in tensors:
        check_name(name)
        if name in seen:
            raise MappingError(f"tensor name {name!r} appears twice; GGUF names must be unique")
        seen.add(name)
        if len(shape) > MAX_DIMS:
            raise MappingError(f"tensor {name!r} has {len(shape)} dimensions; GGUF holds at most {MAX_DIMS}")
        infos.append(TensorInfo(name, tuple(shape), ggml_type, nbytes, pos))
        pos += padded(nbytes, alignment)
    parts = [MAGIC, struct.pack("<IQQ", VERSION, len(infos), len(metadata))]
    for key, value in metadata.items():
        parts += [_pack_string(key), struct.pack("<I", value.type), _pack_value(value)]
    for info in infos:
        parts += [
            _pack_string(info.name),
            struct.pack(f"<I{len(info.dims)}QIQ", len(info.dims), *info.dims, info.ggml_type, info.offset),
        ]
    header = b"".join(parts)
    return header + bytes(-len(header) % alignment), infos


@dataclass
class GGUFFile:
    """A GGUF file's header, checked: every tensor lies inside the file, in gguf.cpp's order."""

    path: Path
    version: int
    metadata: dict[str, Value]
    tensors: list[TensorInfo]
    alignment: int
    data_start: int  # absolute offset of the data section
    file_size: int
    data_size: int = field(default=0)  # every tensor's bytes, each padded: where gguf.cpp expects the file to end

    def absolute(self, info: TensorInfo) -> tuple[int, int]:
        """The tensor's bytes as an absolute [begin, end) range of the file."""
        begin = self.data_start + info.offset
        return begin, begin + info.nbytes


class _Cursor:
    """Bounds-checked little-endian reads over a memory map: a count or length that claims more than
    the file holds is refused before anything is allocated for it."""

    def __init__(self, buf: mmap.mmap, name: str) -> None:
        self.buf = buf
        self.pos = 0
        self.name = name

    def fail(self, what: str) -> CorruptInputError:
        return CorruptInputError(f"{self.name}: {what}")

    def take(self, n: int, what: str) -> memoryview:
        if n > len(self.buf) - self.pos:
            raise self.fail(f"{what} at byte {self.pos} runs past the end of the file (truncated?)")
        view = memoryview(self.buf)[self.pos : self.pos + n]
        self.pos += n
        return view

    def unpack(self, fmt: str, what: str) -> Any:
        values = struct.unpack("<" + fmt, self.take(struct.calcsize("<" + fmt), what))
        return values[0] if len(values) == 1 else values

    def string(self, what: str, limit: int = MAX_STRING_BYTES) -> str:
        n = self.unpack("Q", what)
        if n > limit:
            raise self.fail(f"{what} claims {n} bytes, over the limit of {limit}")
        raw = bytes(self.take(n, what))
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            raise self.fail(f"{what} is not UTF-8") from None

    def remaining(self) -> int:
        return len(self.buf) - self.pos

    def value(self, vtype: int, what: str) -> Value:
        if vtype == ValueType.STRING:
            return Value(ValueType.STRING, self.string(what))
        if vtype == ValueType.ARRAY:
            item_type, count = self.unpack("IQ", what)
            if item_type not in _SCALAR and item_type != ValueType.STRING:
                raise self.fail(f"{what}: array of type {item_type}, which GGUF arrays cannot hold")
            smallest = 8 if item_type == ValueType.STRING else struct.calcsize(_SCALAR[ValueType(item_type)])
            if count > MAX_ARRAY_ITEMS or count * smallest > self.remaining():
                raise self.fail(f"{what}: array claims {count} items, more than the file holds")
            if item_type == ValueType.STRING:
                items: list[Any] = [self.string(f"{what}[{i}]") for i in range(count)]
            elif item_type == ValueType.BOOL:
                items = list(self._bools(count, what))
            else:
                code = _SCALAR[ValueType(item_type)]
                items = list(struct.unpack(f"<{count}{code}", self.take(count * struct.calcsize(code), what)))
            return Value(ValueType.ARRAY, items, ValueType(item_type))
        if vtype not in _SCALAR:
            raise self.fail(f"{what} has unknown value type {vtype}")
        if vtype == ValueType.BOOL:  # struct's "?" reads any non-zero byte as True
            return Value(ValueType.BOOL, self._bools(1, what)[0])
        return Value(ValueType(vtype), self.unpack(_SCALAR[ValueType(vtype)], what))

    def _bools(self, count: int, what: str) -> list[bool]:
        raw = bytes(self.take(count, what))
        if raw.strip(b"\x00\x01"):
            raise self.fail(f"{what}: a bool that is not 0 or 1")
        return [b == 1 for b in raw]


def read_gguf(path: str | Path, type_sizes: TypeSizes = TYPE_SIZES) -> GGUFFile:
    """Parse and check a GGUF v2/v3 header as gguf.cpp does, against the file's real size: the
    counts, every string and array, names (unique, under 64 bytes), dimensions (at most 4, rows a
    whole number of blocks), known types, and offsets that are the running padded sum and end inside
    the file. Raises CorruptInputError naming the first problem."""
    path = Path(path)
    name = path.name
    size = os.path.getsize(path)
    if size < 24:
        raise CorruptInputError(f"{name}: {size} bytes, too short to be GGUF")
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as buf:
        cur = _Cursor(buf, name)
        try:
            return _parse(cur, path, size, type_sizes)
        finally:
            del cur


def _parse(cur: _Cursor, path: Path, size: int, type_sizes: TypeSizes) -> GGUFFile:
    if bytes(cur.take(4, "magic")) != MAGIC:
        raise cur.fail("not a GGUF file (no GGUF magic)")
    version, n_tensors, n_kv = cur.unpack("IQQ", "header")
    if version not in (2, 3):
        raise cur.fail(f"GGUF version {version}; this reader takes versions 2 and 3")
    # A key-value pair takes at least 13 bytes (empty-key length, type, a u8), a tensor info 24.
    if n_kv * 13 > cur.remaining() or n_tensors * 24 > cur.remaining():
        raise cur.fail(f"header claims {n_tensors} tensors and {n_kv} key-value pairs, more than the file holds")
    metadata: dict[str, Value] = {}
    for i in range(n_kv):
        key = cur.string(f"key {i}")
        if not key:
            raise cur.fail(f"key {i} is empty")
        if key in metadata:
            raise cur.fail(f"key {key!r} appears twice")
        metadata[key] = cur.value(cur.unpack("I", f"key {key!r}"), f"value of {key!r}")
    alignment = ALIGNMENT
    if "general.alignment" in metadata:
        a = metadata["general.alignment"]
        if a.type is not ValueType.UINT32 or a.value == 0 or a.value & (a.value - 1):
            raise cur.fail(f"general.alignment must be a u32 power of two, not {a.value!r}")
        alignment = a.value
    raw: list[tuple[str, tuple[int, ...], int, int]] = []
    names: set[str] = set()
    for i in range(n_tensors):
        tname = cur.string(f"tensor name {i}", MAX_NAME_BYTES)
        if tname in names:
            raise cur.fail(f"tensor name {tname!r} appears twice")
        names.add(tname)
        n_dims = cur.unpack("I", f"tensor {tname!r}")
        if n_dims > MAX_DIMS:
            raise cur.fail(f"tensor {tname!r} has {n_dims} dimensions; GGUF holds at most {MAX_DIMS}")
        dims = cur.unpack(f"{n_dims}Q", f"tensor {tname!r}") if n_dims else ()
        dims = (dims,) if isinstance(dims, int) else tuple(dims)
        ggml_type, offset = cur.unpack("IQ", f"tensor {tname!r}")
        raw.append((tname, dims, ggml_type, offset))
    data_start = padded(cur.pos, alignment) if n_tensors else cur.pos
    tensors: list[TensorInfo] = []
    expected = 0
    for tname, dims, ggml_type, offset in raw:
        if ggml_type not in type_sizes:
            raise cur.fail(f"tensor {tname!r} has ggml type {ggml_type}, which this reader does not know")
        block, block_bytes = type_sizes[ggml_type]
        numel = math.prod(dims)
        if any(d >= 1 << 63 for d in dims) or numel >= 1 << 63:
            raise cur.fail(f"tensor {tname!r} has dimensions {list(dims)} too large to address")
        if dims and dims[0] % block:
            raise cur.fail(f"tensor {tname!r}: rows of {dims[0]} are not a whole number of {block}-element blocks")
        nbytes = numel // block * block_bytes
        if offset != expected:
            raise cur.fail(f"tensor {tname!r} has offset {offset}, expected {expected} (tensors must follow in order)")
        if data_start + offset + nbytes > size:
            raise cur.fail(f"tensor {tname!r} ends at byte {data_start + offset + nbytes}, past the file's {size} (truncated?)")
        tensors.append(TensorInfo(tname, tuple(reversed(dims)), ggml_type, nbytes, offset))
        expected = offset + padded(nbytes, alignment)
    return GGUFFile(path, version, metadata, tensors, alignment, data_start, size, expected)


SINGLE_FILE = "model.gguf"


def shard_names(count: int) -> list[str]:
    """`model.gguf`, or llama.cpp's split names `model-00001-of-00003.gguf` (its gguf-split's pattern)."""
    if count == 1:
        return [SINGLE_FILE]
    return [f"model-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]


def split_keys(index: int, count: int, total_tensors: int) -> dict[str, Value]:
    """The keys llama.cpp reads to load split files (split.no counts from 0), typed as gguf-split
    writes them; none for a single file."""
    if count == 1:
        return {}
    return {
        "split.no": u16(index),
        "split.count": u16(count),
        "split.tensors.count": i32(total_tensors),
    }
