"""What every hostile file shares: where the corpus goes, the canary its payloads would create, the
base tensor's geometry and bytes, and the catalog entry (Hostile)."""

from __future__ import annotations

import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "fixtures" / "hostile"

CANARY = "canary"
CANARY_SHELL = f"touch {CANARY}"
CANARY_ARGV = ("touch", CANARY)
CANARY_SOURCE = f"open({CANARY!r}, 'w').close()"
# marshal.dumps(compile(CANARY_SOURCE, "<hostile>", "exec")) under CPython 3.11. Kept as a
# constant so the corpus is byte-identical whichever Python version regenerates it.
CANARY_CODE_MARSHAL = bytes.fromhex(
    "630000000000000000000000000400000000000000f34200000097000200650064006401a6020000ab02"
    "0000000000000000a0010000000000000000000000000000000000000000a6000000ab00000000000000"
    "00000100640253002903da0663616e617279da01774e2902da046f70656eda05636c6f7365a900f30000"
    "0000fa093c686f7374696c653efa083c6d6f64756c653e7208000000010000007329000000f003010101"
    "d80004800480588873d10013d40013d70019d20019d1001bd4001bd0001bd0001bd0001b7206000000"
)

# The base checkpoint: one float32 tensor of shape (2, 3) in storage key "0".
NUMEL = 6
SIZE = (2, 3)
STRIDE = (3, 1)
ZIP_ROOT = "archive"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ZIP_ALIGNMENT = 64  # torch pads local headers so every record starts 64-byte aligned
SERIALIZATION_ID = b"0" * 40  # torch writes a random id; fixed here for reproducible bytes
EXT_CODE = 240  # copyreg extension codes 240-255 are reserved for private use

WEIGHT_BYTES = struct.pack(f"<{NUMEL}f", *range(NUMEL))  # the base tensor: float32 (2, 3), arange


@dataclass(frozen=True)
class Hostile:
    """One corpus file (or folder: name -> bytes) and its catalog entry."""

    file: str
    kind: str  # "zip", "legacy", "raw-pickle", "safetensors", "msgpack", "hdf5", "keras", "neuralforecast",
    # "torchscript", "npy", "npz", "numpy-pickle", "tflite"
    attack: str
    canary: bool
    data: bytes | Mapping[str, bytes]
    # "refused"; or "inert": converted, with the hostile part neither run nor carried into the output
    # (Keras Lambda layers: the weights are data, the marshalled code is dropped with a warning).
    expect: str = "refused"
