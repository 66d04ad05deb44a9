"""TensorFlow's tensor bundle (a checkpoint's `.index` table and `.data-NNNNN-of-NNNNN` shards) read
without TensorFlow, so a variable is a span of a mapped shard and never a copy in memory.

The `.index` file is a LevelDB-format table (TF writes it uncompressed): sorted keys, each a
variable's checkpoint key, whose values are `BundleEntryProto`s (dtype, shape, shard, offset, size);
the empty key holds the `BundleHeaderProto` (shard count, byte order). A numeric variable is its
raw C-order bytes at `offset` of its shard; a string scalar (the object graph) is a varint length,
a 4-byte checksum of the lengths, then the bytes. Each entry records a masked CRC32C of its bytes
(for a string: of its length as 4 little-endian bytes, the checksum, the bytes), which TensorFlow
checks on every read and so is checked here too, once per variable as the source opens. TensorFlow
itself costs some 600 MiB of RSS to import and copies every variable it reads, which is why this
module exists. A partitioned variable is assembled from its slices (exporters/tensorflow/slices.py):
cut along its first axis only, it is its slices' spans one after another, still never a copy.
"""

from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from convert import hashing
from convert.dtypes import BY_NUMPY_NAME, dtype as lookup_dtype
from convert.errors import CorruptInputError, UnsupportedFormatError
from convert.tensors import MappedFile, TensorRef, mapped_tensor, release_pages
from exporters.tensorflow import slices
from exporters.tensorflow.protos import parse

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_BYTES = 48  # two block handles padded to 40 bytes, then the magic
BLOCK_TRAILER = 5  # compression type byte and a masked CRC32C of the block and that byte
MAX_SHARDS = 100_000
BUNDLE_VERSION = 1  # the tensor bundle format read here, as TensorFlow numbers it (kTensorBundleVersion)
MAX_RANK = 64
# TensorFlow's DataType enum (types.proto) for the types SafeTensors holds, by numpy's name.
TF_DTYPES = {
    1: "float32",
    2: "float64",
    3: "int32",
    4: "uint8",
    5: "int16",
    6: "int8",
    8: "complex64",
    9: "int64",
    10: "bool",
    14: "bfloat16",
    17: "uint16",
    19: "float16",
    22: "uint32",
    23: "uint64",
    24: "float8_e5m2",
    25: "float8_e4m3fn",
}
DT_STRING = 7
# The others a checkpoint may hold, named in refusals.
TF_OTHER_DTYPES = {
    DT_STRING: "string",
    11: "qint8",
    12: "quint8",
    13: "qint32",
    15: "qint16",
    16: "quint16",
    18: "complex128",
    20: "resource",
    21: "variant",
    26: "float8_e4m3fnuz",
    27: "float8_e4m3b11fnuz",
    28: "float8_e5m2fnuz",
    29: "int4",
    30: "uint4",
    31: "int2",
    32: "uint2",
}


@dataclass(frozen=True)
class Entry:
    """One variable as the index describes it."""

    key: str
    dtype: int  # TensorFlow's DataType number
    shape: tuple[int, ...]
    shard: int
    offset: int
    size: int
    crc32c: int  # of the entry's bytes, unmasked
    slices: tuple[tuple[slices.Extent, ...], ...] = ()  # a partitioned variable's slices, stored under other keys

    @property
    def sliced(self) -> bool:
        return bool(self.slices)


class Bundle:
    """An opened checkpoint: its entries by key and its shards mapped lazily; close() releases them."""

    def __init__(self, prefix: str, label: str) -> None:
        self.label = label
        index = Path(prefix + ".index")
        header, self.entries, self.slices = _read_index(index.read_bytes(), label)
        shards = header.num_shards
        if not 1 <= shards <= MAX_SHARDS or header.endianness not in (0, 1):
            raise _unreadable(label, f"the header declares {shards} shards, byte order {header.endianness}")
        if header.endianness == 1:
            raise UnsupportedFormatError(f"{label}: a big-endian TensorFlow checkpoint")
        version = header.version
        if version.min_consumer > BUNDLE_VERSION or BUNDLE_VERSION in version.bad_consumers:
            raise UnsupportedFormatError(
                f"{label}: a checkpoint in tensor bundle format {version.producer}, "
                f"readable from version {version.min_consumer} on (this reader knows version {BUNDLE_VERSION})"
            )
        self.shard_paths = [Path(f"{prefix}.data-{i:05d}-of-{shards:05d}") for i in range(shards)]
        missing = [p.name for p in self.shard_paths if not p.is_file()]
        if missing:
            raise _unreadable(label, f"missing data file {missing[0]}")
        self._mapped: dict[int, MappedFile] = {}

    def dtype_name(self, entry: Entry) -> str:
        return TF_DTYPES.get(entry.dtype) or TF_OTHER_DTYPES.get(entry.dtype, f"DataType {entry.dtype}")

    def string_scalar(self, key: str) -> bytes:
        """The bytes of a string scalar variable (the object graph)."""
        entry = self.entries[key]
        if entry.dtype != DT_STRING or entry.shape != () or entry.sliced:
            raise _unreadable(self.label, f"{key} is not a string scalar")
        with open(self._checked_shard(entry), "rb") as fh:
            fh.seek(entry.offset)
            data = fh.read(entry.size)
        if len(data) != entry.size:
            raise _unreadable(self.label, f"{key} lies past the end of its data file")
        length, pos = _varint(data, 0, self.label)
        if pos + 4 + length != len(data) or length >= 1 << 32:
            raise _unreadable(self.label, f"{key}: a string of {length} bytes in an entry of {len(data)}")
        from crc32c import crc32c

        if crc32c(data[pos:], crc32c(struct.pack("<I", length))) != entry.crc32c:
            raise _unreadable(self.label, f"{key} fails its checksum")
        return data[pos + 4 :]

    def tensor(self, entry: Entry) -> TensorRef:
        """A numeric variable as a span of its mapped shard, checked to lie inside it; a partitioned
        one assembled from its slices."""
        code = BY_NUMPY_NAME.get(self.dtype_name(entry))
        if code is None:
            raise UnsupportedFormatError(
                f"{self.label}: variable {entry.key} has dtype {self.dtype_name(entry)}, which SafeTensors cannot hold"
            )
        if entry.sliced:
            return self._partitioned(entry)
        dt = lookup_dtype(code)
        path = self._checked_shard(entry)
        shape = list(entry.shape)
        if entry.size != math.prod(entry.shape) * dt.itemsize:
            raise CorruptInputError(f"{self.label}: variable {entry.key} declares shape {shape} but {entry.size} bytes")
        if entry.offset + entry.size > path.stat().st_size:
            raise CorruptInputError(f"{self.label}: variable {entry.key} declares shape {shape}, more than the data files hold")
        if _file_crc32c(path, entry.offset, entry.size) != entry.crc32c:
            raise CorruptInputError(f"{self.label}: variable {entry.key} fails its checksum (a damaged data file)")
        mapped = self._mapped.get(entry.shard)
        if mapped is None:
            mapped = self._mapped[entry.shard] = MappedFile(str(path))
        return mapped_tensor(mapped, entry.key, dt, entry.shape, entry.offset)

    def _partitioned(self, entry: Entry) -> TensorRef:
        """A partitioned variable from its slices, each checked as a variable of its own (bounds,
        size, checksum) and all checked to tile it; its bytes are the slices' spans in order when
        it is cut along its first axis, else the slices are copied into one array when it is read."""
        if len(entry.slices) == 1 and slices.is_whole(entry.slices[0]):  # TensorFlow reads the entry itself
            return self.tensor(replace(entry, slices=()))
        boxes = []
        for extents in entry.slices:
            region = slices.box(extents, entry.shape)
            if isinstance(region, str):
                raise self._bad_slices(entry, region)
            boxes.append(region)
        problem = slices.tiling_problem(boxes, entry.shape)
        if problem is not None:
            raise self._bad_slices(entry, problem)
        parts = []
        for extents, region in zip(entry.slices, boxes, strict=True):
            stored = self.slices.get((entry.key, extents))
            lengths = tuple(b - a for a, b in region)
            if stored is None:
                raise self._bad_slices(entry, f"its slice [{_ranges(region)}] is missing")
            if stored.dtype != entry.dtype or stored.shape != lengths or stored.sliced:
                found = f"{self.dtype_name(stored)} {list(stored.shape)}"
                raise self._bad_slices(entry, f"its slice [{_ranges(region)}] holds {found}, not {list(lengths)}")
            parts.append(self.tensor(stored))
        dt, shape = parts[0].dtype, entry.shape
        order = slices.first_axis_order(boxes, shape)
        spans = tuple(parts[i].ranges()[0] for i in order) if order is not None else ()  # each slice is one span

        def assemble() -> np.ndarray:
            whole = np.empty(shape, dt.numpy)
            for part, region in zip(parts, boxes, strict=True):
                piece = part.array()
                whole[tuple(slice(a, b) for a, b in region)] = piece
                release_pages(piece)
            return whole

        span, pieces = (spans[0], ()) if len(spans) == 1 else (None, spans)
        return TensorRef(entry.key, dt, shape, assemble, span=span, pieces=pieces)

    def _bad_slices(self, entry: Entry, why: str) -> CorruptInputError:
        return CorruptInputError(f"{self.label}: partitioned variable {entry.key} is damaged ({why})")

    def close(self) -> None:
        for mapped in self._mapped.values():
            mapped.close()
        self._mapped.clear()

    def _checked_shard(self, entry: Entry) -> Path:
        if not 0 <= entry.shard < len(self.shard_paths) or entry.offset < 0 or entry.size < 0:
            raise _unreadable(self.label, f"{entry.key} points at shard {entry.shard}, offset {entry.offset}")
        return self.shard_paths[entry.shard]


def _file_crc32c(path: Path, offset: int, size: int) -> int:
    """CRC32C of a file range, read window by window through short-lived maps (no copy held)."""
    from crc32c import crc32c

    value = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        for done in range(0, size, hashing.WINDOW):
            with hashing.mapped(fd, offset + done, min(hashing.WINDOW, size - done)) as window:
                value = crc32c(window, value)
    finally:
        os.close(fd)
    return value


def _unmask(masked: int) -> int:
    """The CRC a LevelDB-style masked CRC32C stands for (rotated by 15 bits, plus a constant)."""
    rotated = (masked - 0xA282EAD8) & 0xFFFFFFFF
    return ((rotated >> 17) | (rotated << 15)) & 0xFFFFFFFF


def _unreadable(label: str, why: str) -> CorruptInputError:
    return CorruptInputError(f"{label}: unreadable TensorFlow checkpoint ({why})")


def _ranges(region: slices.Box) -> str:
    return ", ".join(f"{a}:{b}" for a, b in region)


def _read_index(data: bytes, label: str) -> tuple[Any, dict[str, Entry], dict[slices.SliceKey, Entry]]:
    """The header, every variable's entry, and every slice's entry by (variable, extents) of an
    `.index` table; each slice is one its variable lists."""
    if len(data) < FOOTER_BYTES or struct.unpack_from("<Q", data, len(data) - 8)[0] != TABLE_MAGIC:
        raise _unreadable(label, "the .index file is not a TensorFlow table")
    footer = len(data) - FOOTER_BYTES
    _, pos = _handle(data, footer, label)  # the meta-index block: TensorFlow writes it empty
    index_block, _ = _handle(data, pos, label)
    header = None
    entries: dict[str, Entry] = {}
    stored_slices: dict[slices.SliceKey, Entry] = {}
    for _, value in _block_entries(data, index_block, label):
        for key, raw in _block_entries(data, _handle(value, 0, label)[0], label):
            if key == b"":
                header = parse("BundleHeaderProto", raw, f"{label}: damaged checkpoint index header")
                continue
            if key.startswith(b"\x00"):  # one slice of a partitioned variable (EncodeTensorNameSlice)
                decoded = slices.decode_key(key, MAX_RANK)
                if decoded is None:
                    raise _unreadable(label, f"a slice key that cannot be decoded: {key[:60]!r}")
                proto = parse("BundleEntryProto", raw, f"{label}: damaged checkpoint index entry for a slice of {decoded[0]}")
                stored_slices[decoded] = _entry(f"{decoded[0]} (a slice)", proto, label)
                continue
            name = _text(key, label)
            entries[name] = _entry(
                name, parse("BundleEntryProto", raw, f"{label}: damaged checkpoint index entry {name!r}"), label
            )
    if header is None:
        raise _unreadable(label, "no header in the .index file")
    listed = {name: set(entry.slices) for name, entry in entries.items() if entry.sliced}
    for name, extents in stored_slices:
        if extents not in listed.get(name, ()):
            raise CorruptInputError(f"{label}: a slice of {name} that no variable lists (a damaged index)")
    return header, entries, stored_slices


def _entry(name: str, proto: Any, label: str) -> Entry:
    dims = proto.shape.dim
    if proto.shape.unknown_rank or len(dims) > MAX_RANK or any(d.size < 0 for d in dims):
        raise CorruptInputError(f"{label}: variable {name} has no definite shape")
    shape = tuple(d.size for d in dims)
    if len(proto.slices) > slices.MAX_SLICES:
        raise CorruptInputError(
            f"{label}: variable {name} lists {len(proto.slices)} slices (at most {slices.MAX_SLICES} are read)"
        )
    listed = tuple(slices.extents(s) for s in proto.slices)
    if len(set(listed)) != len(listed):
        raise CorruptInputError(f"{label}: partitioned variable {name} is damaged (it lists one slice twice)")
    return Entry(name, proto.dtype, shape, proto.shard_id, proto.offset, proto.size, _unmask(proto.crc32c), listed)


def _text(key: bytes, label: str) -> str:
    try:
        return key.decode("utf-8")
    except UnicodeDecodeError:
        raise _unreadable(label, f"a key that is not UTF-8: {key[:40]!r}") from None


def _handle(data: bytes, pos: int, label: str) -> tuple[tuple[int, int], int]:
    """A block handle (offset, size) at `pos`, and the position after it."""
    offset, pos = _varint(data, pos, label)
    size, pos = _varint(data, pos, label)
    return (offset, size), pos


def _block_entries(data: bytes, handle: tuple[int, int], label: str) -> list[tuple[bytes, bytes]]:
    """The (key, value) pairs of one table block, prefix-compressed keys expanded."""
    offset, size = handle
    if offset + size + BLOCK_TRAILER > len(data) or size < 4:
        raise _unreadable(label, f"a block at {offset} of {size} bytes past the end of the .index file")
    from crc32c import crc32c

    stored = struct.unpack_from("<I", data, offset + size + 1)[0]
    if crc32c(memoryview(data)[offset : offset + size + 1]) != _unmask(stored):  # the block and its type byte
        raise _unreadable(label, f"the .index block at {offset} fails its checksum")
    if data[offset + size] != 0:
        raise UnsupportedFormatError(f"{label}: a compressed .index table (compression type {data[offset + size]})")
    block = data[offset : offset + size]
    restarts = struct.unpack_from("<I", block, size - 4)[0]
    end = size - 4 - 4 * restarts
    if end < 0:
        raise _unreadable(label, f"a block declaring {restarts} restart points in {size} bytes")
    pairs: list[tuple[bytes, bytes]] = []
    key, pos = b"", 0
    while pos < end:
        shared, pos = _varint(block, pos, label)
        unshared, pos = _varint(block, pos, label)
        value_len, pos = _varint(block, pos, label)
        if shared > len(key) or pos + unshared + value_len > end:
            raise _unreadable(label, f"a block entry at {offset + pos} runs past its block")
        key = key[:shared] + block[pos : pos + unshared]
        pos += unshared
        pairs.append((key, block[pos : pos + value_len]))
        pos += value_len
    return pairs


def _varint(data: bytes, pos: int, label: str) -> tuple[int, int]:
    value = shift = 0
    while pos < len(data) and shift < 64:
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos
        shift += 7
    raise _unreadable(label, "a truncated or overlong varint")
