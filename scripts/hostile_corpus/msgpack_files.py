"""Flax msgpack: maps of arrays, an array being extension type 1 holding msgpack (shape, dtype, bytes)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeAlias

from hostile_corpus.common import SIZE, WEIGHT_BYTES, Hostile
from hostile_corpus.pickles import NO_CANARY


@dataclass(frozen=True)
class Ext:
    """A msgpack extension object: type code and payload."""

    code: int
    payload: bytes


@dataclass(frozen=True)
class Raw:
    """Bytes written as they are: a forged msgpack header with nothing (or too little) after it."""

    data: bytes


MsgValue: TypeAlias = "None | bool | int | str | bytes | list[MsgValue] | tuple[MsgValue, ...] | dict[str, MsgValue] | Ext | Raw"


def msgpack(value: MsgValue) -> bytes:
    """Encode with the 32-bit forms throughout (valid msgpack; each header is easy to forge)."""
    if isinstance(value, Raw):
        return value.data
    if value is None:
        return b"\xc0"
    if isinstance(value, bool):
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        return b"\xcf" + struct.pack(">Q", value) if value >= 0 else b"\xd3" + struct.pack(">q", value)
    if isinstance(value, str):
        return b"\xdb" + struct.pack(">I", len(value.encode())) + value.encode()
    if isinstance(value, bytes):
        return b"\xc6" + struct.pack(">I", len(value)) + value
    if isinstance(value, (list, tuple)):
        return b"\xdd" + struct.pack(">I", len(value)) + b"".join(msgpack(v) for v in value)
    if isinstance(value, dict):
        return b"\xdf" + struct.pack(">I", len(value)) + b"".join(msgpack(k) + msgpack(v) for k, v in value.items())
    if isinstance(value, Ext):
        return b"\xc9" + struct.pack(">Ib", len(value.payload), value.code) + value.payload
    raise TypeError(f"cannot encode {value!r}")


def ndarray(shape: Sequence[int], dtype: str = "float32", data: MsgValue = WEIGHT_BYTES) -> Ext:
    """``flax.serialization``'s array: extension type 1 around msgpack (shape, dtype name, buffer)."""
    return Ext(1, msgpack((list(shape), dtype, data)))


def msgpack_files() -> list[Hostile]:
    def mp(name: str, attack: str, tree: MsgValue) -> Hostile:
        return Hostile(f"msgpack_{name}.msgpack", "msgpack", attack + NO_CANARY, False, msgpack(tree))

    nested: MsgValue = WEIGHT_BYTES
    for _ in range(100):
        nested = ndarray((2**40, 2**40), "float32", nested)
    deep = Raw((b"\xdf\x00\x00\x00\x01" + msgpack("a")) * 2000 + msgpack({"kernel": ndarray(SIZE)}))  # {"a": {"a": ...
    return [
        mp(
            "ndarray_huge_shape",
            "array declaring shape (2**40, 2**40) float32 over 24 bytes",
            {"params": {"Dense_0": {"kernel": ndarray((2**40, 2**40))}}},
        ),
        mp(
            "ext_nested",
            "array whose buffer is an array, 100 deep, each declaring (2**40, 2**40)",
            {"params": {"Dense_0": {"kernel": nested}}},
        ),
        mp(
            "map_2pow32",
            "map header declaring 2**32 - 1 entries, one present",
            Raw(b"\xdf\xff\xff\xff\xff" + msgpack("params") + msgpack({})),
        ),
        mp("array_2pow32", "array header declaring 2**32 - 1 items, none present", {"params": Raw(b"\xdd\xff\xff\xff\xff")}),
        mp(
            "bin_4gib",
            "bin header declaring 4 GiB - 1 bytes, 24 present",
            {"params": {"w": Raw(b"\xc6\xff\xff\xff\xff" + WEIGHT_BYTES)}},
        ),
        mp("deep_nesting", "2000 nested maps: a recursive decoder's stack", {"params": deep}),
        mp("dtype_object", "array of dtype 'object': pointers, not data", {"params": {"kernel": ndarray((3,), "object")}}),
        mp("shape_negative", "array of shape (-1, 6): numpy would infer the rest", {"params": {"kernel": ndarray((-1, 6))}}),
    ]
