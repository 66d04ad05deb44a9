"""`convert inspect model.gguf`: a GGUF file's metadata and tensors, read by our checked reader, in
the shape `inspect` gives any input (tensors with their type, shape and bytes; totals by type)."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from .file_format import MAGIC, Value, ValueType, read_gguf
from .ggml_types import BY_ID

SHOWN_ITEMS = 8  # of a long array (a tokenizer's vocabulary): the first few, and the count


def is_gguf(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            return fh.read(4) == MAGIC
    except OSError:
        return False


def shown(value: Value) -> Any:
    """A metadata value for people and JSON: long arrays cut to their first items and their length."""
    if value.type is ValueType.ARRAY and len(value.value) > SHOWN_ITEMS:
        return {"first": list(value.value[:SHOWN_ITEMS]), "length": len(value.value)}
    return value.to_json()


def describe(path: str | Path) -> dict[str, Any]:
    header = read_gguf(path)
    tensors = []
    for t in header.tensors:
        gtype = BY_ID.get(t.ggml_type)
        tensors.append(
            {
                "name": t.name,
                "dtype": gtype.name.upper() if gtype else str(t.ggml_type),
                "shape": list(t.shape),
                "bytes": t.nbytes,
                "offset": header.data_start + t.offset,
            }
        )
    return {
        "path": str(path),
        "format": "gguf",
        "files": [str(path)],
        "tensors": tensors,
        "bytes": sum(t["bytes"] for t in tensors),
        "parameters": sum(math.prod(t.shape) for t in header.tensors),
        "details": {
            "version": header.version,
            "alignment": header.alignment,
            "metadata": {k: shown(v) for k, v in header.metadata.items()},
        },
    }
