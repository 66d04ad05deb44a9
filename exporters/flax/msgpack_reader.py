"""Flax msgpack files (`flax.serialization.to_bytes`) read with msgpack and numpy alone: no JAX, no Flax.

Flax writes a tree of msgpack maps whose array leaves are extension values (code 1 for arrays, 3 for
numpy scalars), each holding msgpack of (shape, dtype name, C-ordered bytes). The structure is walked
with msgpack's streaming Unpacker, whose limits are set from the file size; of each array only the
small header is read. Every declared size is checked against the file before anything is mapped,
and the array bytes stay in the file: each leaf becomes a TensorRef over its byte span, read later
through a memory map. Flax splits arrays above 1 GiB into `__msgpack_chunked_array__` maps; those
are joined back on read.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, BinaryIO

import msgpack  # the flax extra; missing, the registry says which extra to install
import numpy as np

from convert.dtypes import DTYPES, DType
from convert.errors import CorruptInputError, UnsupportedFormatError
from convert.tensors import MappedFile, TensorRef, check_shape, mapped_tensor
from exporters.shared.param_tree import NonTensor, Tree

EXT_NDARRAY, EXT_COMPLEX, EXT_NPSCALAR = 1, 2, 3
CHUNKED_MARK = "__msgpack_chunked_array__"
MAX_DEPTH = 64
MAX_RANK = 32
# Structure, keys and scalars never need more than this at once; array bytes are never buffered.
MAX_VALUE_BYTES = 16 << 20
READ_SIZE = 16 << 10
# Flax writes `ndarray.dtype.name`; the numpy names of the SafeTensors dtypes are exactly those.
FLAX_DTYPES: dict[str, DType] = {d.numpy.name: d for d in DTYPES.values()}

_MAPS = frozenset([*range(0x80, 0x90), 0xDE, 0xDF])
_ARRAYS = frozenset([*range(0x90, 0xA0), 0xDC, 0xDD])
_FIXEXT = {0xD4: 1, 0xD5: 2, 0xD6: 4, 0xD7: 8, 0xD8: 16}
_EXT_LEN_BYTES = {0xC7: 1, 0xC8: 2, 0xC9: 4}
_BIN_LEN_BYTES = {0xC4: 1, 0xC5: 2, 0xC6: 4}


def read_msgpack(path: Path, mapped: MappedFile) -> Tree:
    """The tree of one Flax msgpack file; tensors are lazy refs named by their '/'-joined tree path."""
    with open(path, "rb", buffering=0) as fh:
        stream = _Stream(fh, mapped, path)
        try:
            head = stream.peek(1)
            if not head or head[0] not in _MAPS:
                raise UnsupportedFormatError(f"{path.name}: not a Flax msgpack file (it does not start with a map)")
            tree = stream.value((), 0)
            if stream.pos != mapped.size:
                raise CorruptInputError(f"{path.name}: {mapped.size - stream.pos} bytes follow the msgpack tree")
        except msgpack.OutOfData:
            raise CorruptInputError(f"{path.name}: ends inside the msgpack tree (truncated?)") from None
        except (ValueError, TypeError, msgpack.UnpackException) as exc:
            raise CorruptInputError(f"{path.name}: not valid msgpack ({type(exc).__name__}: {exc})") from None
    return _join_chunked(tree, ())


class _Stream:
    """msgpack's Unpacker over a file, re-created at an offset to step over array bytes unread."""

    def __init__(self, fh: BinaryIO, mapped: MappedFile, path: Path) -> None:
        self.fh, self.mapped, self.path, self.size = fh, mapped, path, mapped.size
        self.limit = max(1, min(self.size, MAX_VALUE_BYTES))
        self.seek(0)

    def seek(self, offset: int) -> None:
        self.fh.seek(offset)
        self.base = offset
        limit = self.limit
        self.unpacker = msgpack.Unpacker(
            self.fh,
            read_size=min(READ_SIZE, limit),
            max_buffer_size=limit,
            raw=False,
            strict_map_key=False,
            max_str_len=limit,
            max_bin_len=limit,
            max_array_len=limit,
            max_map_len=limit,
            max_ext_len=limit,
        )

    @property
    def pos(self) -> int:
        return self.base + self.unpacker.tell()

    def peek(self, n: int) -> bytes:
        return os.pread(self.fh.fileno(), n, self.pos)

    def fail(self, where: tuple[str, ...], message: str) -> CorruptInputError:
        path = "/".join(where) or "(root)"
        return CorruptInputError(f"{self.path.name}: {path if len(path) <= 120 else '...' + path[-117:]}: {message}")

    def value(self, where: tuple[str, ...], depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.fail(where, f"nested deeper than {MAX_DEPTH} levels")
        head = self.peek(1)
        if not head:
            raise msgpack.OutOfData()
        marker = head[0]
        if marker in _MAPS:
            count = self._count(self.unpacker.read_map_header(), where)
            node: Tree = {}
            for _ in range(count):
                key = self._key(where)
                if key in node:
                    raise self.fail(where, f"key {key!r} appears twice")
                node[key] = self.value((*where, key), depth + 1)
            return node
        if marker in _ARRAYS:
            count = self._count(self.unpacker.read_array_header(), where)
            return {str(i): self.value((*where, str(i)), depth + 1) for i in range(count)}
        if marker in _FIXEXT or marker in _EXT_LEN_BYTES:
            return self._extension(marker, where)
        return self.unpacker.unpack()  # nil, bool, int, float, str or bin: bounded by the limits

    def _count(self, count: int, where: tuple[str, ...]) -> int:
        if count > self.size - self.pos:  # every entry takes at least one byte
            raise self.fail(where, f"declares {count} entries; the file has {self.size - self.pos} bytes left")
        return count

    def _key(self, where: tuple[str, ...]) -> str:
        key = self.unpacker.unpack()
        if isinstance(key, bool) or not isinstance(key, (str, int)):
            raise self.fail(where, f"a map key is a {type(key).__name__}, not a name")
        return str(key)

    def _extension(self, marker: int, where: tuple[str, ...]) -> TensorRef | NonTensor:
        start = self.pos
        if marker in _FIXEXT:
            head_len, length = 2, _FIXEXT[marker]
        else:
            n = _EXT_LEN_BYTES[marker]
            head_len, length = 2 + n, int.from_bytes(self.peek(1 + n)[1:], "big")
        head = self.peek(head_len)
        if len(head) < head_len:
            raise msgpack.OutOfData()
        end = start + head_len + length
        if end > self.size:
            raise self.fail(
                where, f"an extension declares {length} bytes; the file has {self.size - start - head_len} left (truncated?)"
            )
        code = int.from_bytes(head[-1:], "big", signed=True)
        if code == EXT_COMPLEX:
            self.seek(end)
            return NonTensor("complex")
        if code not in (EXT_NDARRAY, EXT_NPSCALAR):
            raise UnsupportedFormatError(
                f"{self.path.name}: {'/'.join(where)}: msgpack extension type {code} is not one Flax writes"
            )
        self.unpacker.read_bytes(head_len)
        ref = self._array(where, end)
        self.seek(end)
        return ref

    def _array(self, where: tuple[str, ...], end: int) -> TensorRef:
        """Flax's array payload: msgpack of (shape, dtype name, bytes); only the bytes' place is kept."""
        if self.unpacker.read_array_header() != 3:
            raise self.fail(where, "an array extension does not hold (shape, dtype, bytes)")
        shape, dtype_name = self.unpacker.unpack(), self.unpacker.unpack()
        if (
            not isinstance(shape, list)
            or len(shape) > MAX_RANK
            or any(isinstance(d, bool) or not isinstance(d, int) or d < 0 for d in shape)
        ):
            raise self.fail(where, f"array shape {str(shape)[:80]} is not a list of at most {MAX_RANK} sizes")
        dt = FLAX_DTYPES.get(dtype_name) if isinstance(dtype_name, str) else None
        if dt is None:
            raise UnsupportedFormatError(
                f"{self.path.name}: {'/'.join(where)}: dtype {str(dtype_name)[:40]!r} has no SafeTensors equivalent"
            )
        head = self.peek(5)
        n = _BIN_LEN_BYTES.get(head[0]) if head else None
        if n is None or len(head) < 1 + n:
            raise self.fail(where, "array bytes are not a msgpack bin")
        nbytes = int.from_bytes(head[1 : 1 + n], "big")
        offset = self.pos + 1 + n
        if offset + nbytes != end:
            raise self.fail(where, f"array bytes ({nbytes}) do not fill their extension")
        try:
            check_shape(tuple(shape), dt.itemsize, "array")
        except CorruptInputError as exc:
            raise self.fail(where, str(exc)) from None
        declared = math.prod(shape) * dt.itemsize
        if declared != nbytes:
            raise self.fail(where, f"shape {shape} of {dt.code} needs {declared} bytes; the file holds {nbytes}")
        return mapped_tensor(self.mapped, "/".join(where), dt, tuple(shape), offset)


def _join_chunked(node: Any, where: tuple[str, ...]) -> Any:
    """Flax's chunked form of a big array back to one (lazy) tensor; everything else as it is."""
    if not isinstance(node, dict):
        return node
    if node.get(CHUNKED_MARK) is True:
        return _chunked_ref(node, where)
    return {k: _join_chunked(v, (*where, k)) for k, v in node.items()}


def _chunked_ref(node: Tree, where: tuple[str, ...]) -> TensorRef:
    name = "/".join(where)
    shape_map, chunk_map = node.get("shape"), node.get("chunks")
    if set(node) != {CHUNKED_MARK, "shape", "chunks"} or not isinstance(shape_map, dict) or not isinstance(chunk_map, dict):
        raise CorruptInputError(f"{name}: a chunked array without its shape and chunks")
    dims = [shape_map.get(str(i)) for i in range(len(shape_map))]
    shape = tuple(d for d in dims if isinstance(d, int) and not isinstance(d, bool) and d >= 0)
    if len(shape) != len(dims) or len(shape) > MAX_RANK:
        raise CorruptInputError(f"{name}: chunked array shape {str(dims)[:80]} is not a list of sizes")
    found = [chunk_map.get(str(i)) for i in range(len(chunk_map))]
    chunks = [c for c in found if isinstance(c, TensorRef) and len(c.shape) == 1]
    if not chunks or len(chunks) != len(found) or len({c.dtype for c in chunks}) != 1:
        raise CorruptInputError(f"{name}: chunks of a chunked array are not flat arrays of one dtype")
    check_shape(shape, chunks[0].dtype.itemsize, f"{name}: chunked array")
    if sum(c.numel for c in chunks) != math.prod(shape):
        raise CorruptInputError(
            f"{name}: chunks hold {sum(c.numel for c in chunks)} elements, shape {list(shape)} needs {math.prod(shape)}"
        )

    def load() -> np.ndarray:
        return np.concatenate([c.array() for c in chunks]).reshape(shape)

    return TensorRef(name, chunks[0].dtype, shape, load)
