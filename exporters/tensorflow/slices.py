"""A partitioned variable's slices, as TensorFlow's tensor bundle stores them, checked to tile it.

A variable made by a partitioner (tf.compat.v1's fixed_size_partitioner, TF2's ShardedVariable, a
checkpoint's MaxShardSizePolicy) has an index entry holding only its dtype, shape and the list of its
slices (TensorSliceProto: per dimension a start and a length, no length meaning the whole dimension).
Each slice's bytes are an entry of their own under a binary key: an OrderedCode encoding of 0, the
variable's name, the rank, then each dimension's start and length (-1 for the whole dimension) as
signed numbers. TensorFlow refuses slices that overlap or leave part of the variable uncovered, and
so does this module, before anything is allocated.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

Extent = tuple[int, int]  # (start, length); length -1: the whole dimension, as a slice key writes it
Box = tuple[tuple[int, int], ...]  # per dimension [start, stop)
SliceKey = tuple[str, tuple[Extent, ...]]  # what a slice key encodes: the variable's name, the slice's extents
MAX_SLICES = 1 << 14  # slices of one variable (TensorFlow's partitioners write tens, a sharding policy hundreds)
MAX_SIGNED_BYTES = 10  # an int64 as OrderedCode writes it


def decode_key(key: bytes, max_rank: int) -> SliceKey | None:
    """The variable's name and the slice's extents a slice key encodes; None when it is not one, or
    not in the one form TensorFlow writes (so that no two keys name one slice)."""
    if not key.startswith(b"\x00"):
        return None
    decoded = _string(key, 1)
    if decoded is None:
        return None
    raw, pos = decoded
    rank_bytes = key[pos] if pos < len(key) else 9
    digits = key[pos + 1 : pos + 1 + rank_bytes]
    if rank_bytes > 8 or len(digits) < rank_bytes or digits[:1] == b"\x00":
        return None
    rank, pos = int.from_bytes(digits, "big"), pos + 1 + rank_bytes
    if rank > max_rank:
        return None
    numbers = []
    for _ in range(2 * rank):
        number = _signed(key, pos)
        if number is None:
            return None
        value, pos = number
        numbers.append(value)
    if pos != len(key):
        return None
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    return name, tuple(zip(numbers[::2], numbers[1::2], strict=True))


def _string(key: bytes, pos: int) -> tuple[bytes, int] | None:
    """An OrderedCode string at `pos` (0 and 255 escaped as 00 FF and FF 00, ended by 00 01), and the
    position after it."""
    out = bytearray()
    while pos + 1 < len(key):
        byte, after = key[pos], key[pos + 1]
        if byte == 0x00 and after == 0x01:
            return bytes(out), pos + 2
        if (byte, after) in ((0x00, 0xFF), (0xFF, 0x00)):
            out.append(byte)
            pos += 2
        elif byte in (0x00, 0xFF):
            return None
        else:
            out.append(byte)
            pos += 1
    return None


def _signed(key: bytes, pos: int) -> tuple[int, int] | None:
    """An OrderedCode signed number at `pos`, and the position after it. Its first bit is the sign
    (1: not negative); as many bits as the encoding has bytes after the first follow with the sign's
    value, then one of the other; the rest is the number. A negative number is the bitwise inverse
    of the encoding of its complement."""
    if pos >= len(key):
        return None
    flip = 0xFF if key[pos] < 0x80 else 0
    head = ((key[pos] ^ flip) << 8) | ((key[pos + 1] ^ flip) if pos + 1 < len(key) else 0)
    length = 16 - (~head & 0xFFFF).bit_length()  # the leading one bits: the encoding's length
    if not 1 <= length <= MAX_SIGNED_BYTES or pos + length > len(key):
        return None
    raw = int.from_bytes(bytes(b ^ flip for b in key[pos : pos + length]), "big")
    magnitude = raw & ((1 << (7 * length - 1)) - 1)
    if magnitude >= 1 << 63 or _signed_length(magnitude) != length:
        return None
    return (~magnitude if flip else magnitude), pos + length


def _signed_length(magnitude: int) -> int:
    """The bytes OrderedCode takes for a number whose (complemented, if negative) value is `magnitude`."""
    return next(n for n in range(1, MAX_SIGNED_BYTES + 1) if magnitude < 1 << (7 * n - 1))


def extents(proto: Any) -> tuple[Extent, ...]:
    """A TensorSliceProto's extents, a missing length as -1 (the whole dimension)."""
    return tuple((e.start, e.length if e.HasField("length") else -1) for e in proto.extent)


def box(slice_extents: tuple[Extent, ...], shape: tuple[int, ...]) -> Box | str:
    """The region of a variable of `shape` a slice covers, or why it cannot be one."""
    if len(slice_extents) != len(shape):
        return f"a slice of {len(slice_extents)} dimensions"
    region = []
    for (start, length), dim in zip(slice_extents, shape, strict=True):
        stop = dim if length == -1 else start + length
        if start < 0 or length < -1 or (length == -1 and start != 0) or stop > dim:
            return f"a slice at {_show(slice_extents)} past its shape {list(shape)}"
        region.append((start, stop))
    return tuple(region)


def is_whole(slice_extents: tuple[Extent, ...]) -> bool:
    """A slice TensorFlow takes for the whole variable (every length missing): it reads the variable's
    own entry, not a slice's."""
    return all(e == (0, -1) for e in slice_extents)


def tiling_problem(boxes: list[Box], shape: tuple[int, ...]) -> str | None:
    """Why the slices do not cover the variable exactly once (None when they do). They lie inside it
    (box() checked), so they tile it when none overlaps another and their sizes add up to its size.
    Overlaps are sought along the dimension the slices cut most, in order of their starts there: a
    slice is compared only with those that begin before it ends, not with every other."""
    covered = sum(math.prod(b - a for a, b in region) for region in boxes)
    if len(boxes) > 1 and shape:
        starts = np.array([[a for a, _ in region] for region in boxes], dtype=np.int64)
        stops = np.array([[b for _, b in region] for region in boxes], dtype=np.int64)
        axis = max(range(len(shape)), key=lambda d: len(np.unique(starts[:, d])))
        order = np.argsort(starts[:, axis], kind="stable")
        starts, stops = starts[order], stops[order]
        filled = np.all(stops > starts, axis=1)  # an empty slice overlaps nothing
        for i in np.flatnonzero(filled):
            later = slice(i + 1, int(np.searchsorted(starts[:, axis], stops[i, axis], side="left")))
            meets = np.all((starts[later] < stops[i]) & (starts[i] < stops[later]), axis=1) & filled[later]
            if meets.any():
                j = i + 1 + int(np.argmax(meets))
                return f"slices {_show_box(boxes[order[i]])} and {_show_box(boxes[order[j]])} overlap"
    if covered != math.prod(shape):
        return f"its slices cover {covered} of its {math.prod(shape)} elements"
    return None


def first_axis_order(boxes: list[Box], shape: tuple[int, ...]) -> list[int] | None:
    """The slices in order along the first axis when each spans every other dimension whole: then the
    variable's bytes are theirs concatenated. None for any other partitioning."""
    if not shape or any(region[1:] != tuple((0, d) for d in shape[1:]) for region in boxes):
        return None
    return sorted(range(len(boxes)), key=lambda i: boxes[i][0])


def _show(slice_extents: tuple[Extent, ...]) -> str:
    """Extents as TensorFlow writes a slice spec: `start,length` per dimension, `-` for a whole one."""
    return ":".join("-" if (start, length) == (0, -1) else f"{start},{length}" for start, length in slice_extents)


def _show_box(region: Box) -> str:
    return "[" + ", ".join(f"{a}:{b}" for a, b in region) + "]"
