"""SafeTensors: an 8-byte little-endian header length, a JSON header, the data buffer."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

from hostile_corpus.common import NUMEL, SIZE, WEIGHT_BYTES, Hostile
from hostile_corpus.pickles import NO_CANARY


def st_entry(dtype: object = "F32", shape: object = list(SIZE), offsets: object = (0, 4 * NUMEL)) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets}


def safetensors_file(header: Mapping[str, object] | bytes, data: bytes = WEIGHT_BYTES, length: int | None = None) -> bytes:
    """Length prefix (the header's true length unless forged), header (JSON unless raw bytes), data."""
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def safetensors_files() -> list[Hostile]:
    def st(name: str, attack: str, data: bytes) -> Hostile:
        return Hostile(f"st_{name}.safetensors", "safetensors", attack + NO_CANARY, False, data)

    valid = json.dumps({"weight": st_entry()}, separators=(",", ":")).encode()
    return [
        st(
            "overlapping_offsets",
            "tensors a [0, 24) and b [8, 32) share bytes",
            safetensors_file({"a": st_entry(), "b": st_entry(offsets=(8, 32))}, WEIGHT_BYTES + bytes(8)),
        ),
        st(
            "offset_past_end",
            "data_offsets [2**40, 2**40 + 24) far past the 24-byte buffer",
            safetensors_file({"weight": st_entry(offsets=(2**40, 2**40 + 24))}),
        ),
        st(
            "offset_past_u64",
            "data_offsets beyond 2**64, which no u64 holds",
            safetensors_file({"weight": st_entry(offsets=(2**64, 2**64 + 24))}),
        ),
        st("negative_offset", "data_offsets [-8, 16)", safetensors_file({"weight": st_entry(offsets=(-8, 16))})),
        st(
            "offsets_reversed",
            "data_offsets [24, 0): end before begin",
            safetensors_file({"weight": st_entry(shape=[0], offsets=(24, 0))}),
        ),
        st(
            "header_over_limit",
            "length prefix 100_000_001: over the format's 100 MB header limit",
            safetensors_file(valid, length=100_000_001),
        ),
        st("header_past_eof", "length prefix 4096 for a file of a few dozen bytes", safetensors_file(valid, length=4096)),
        st(
            "header_not_utf8", "header bytes that are not UTF-8", safetensors_file(valid.replace(b'"weight"', b'"w\xff\xfeight"'))
        ),
        st("header_not_object", "header is a JSON array", safetensors_file(b"[1,2,3]", b"")),
        st(
            "header_deep_nesting",
            "header nests 5000 arrays: a recursive parser's stack",
            safetensors_file(b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}", b""),
        ),
        st("unknown_dtype", "dtype 'Q7'", safetensors_file({"weight": st_entry(dtype="Q7")})),
        st("dtype_not_string", "dtype ['F32']: not even hashable", safetensors_file({"weight": st_entry(dtype=["F32"])})),
        st(
            "shape_offset_mismatch",
            "shape (2, 3) float32 needs 24 bytes; offsets give 16",
            safetensors_file({"weight": st_entry(offsets=(0, 16))}, WEIGHT_BYTES[:16]),
        ),
        st(
            "shape_overflow",
            "shape (2**64, 2**64): an element count past any integer type",
            safetensors_file({"weight": st_entry(shape=[2**64, 2**64])}),
        ),
        st(
            "duplicate_name",
            "'weight' twice: JSON parsers disagree which one wins",
            safetensors_file(
                b'{"weight":'
                + json.dumps(st_entry()).encode()
                + b',"weight":'
                + json.dumps(st_entry(offsets=(24, 48))).encode()
                + b"}",
                WEIGHT_BYTES * 2,
            ),
        ),
        st(
            "metadata_not_strings",
            "__metadata__ {'format': 1}: not string to string",
            safetensors_file({"__metadata__": {"format": 1}, "weight": st_entry()}),
        ),
    ]
