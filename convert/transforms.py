"""The closed vocabulary of tensor transforms, as recorded in the manifest.

Each record is a JSON object with an "op"; `replay` applies a chain to source arrays, which is how
`verify --source` proves an output (re-applying a deterministic chain and comparing bytes is exact
even for lossy steps, and for invertible chains equality one way implies it the other).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .dtypes import dtype as lookup_dtype
from .errors import VerificationError


def replay(transforms: list[dict[str, Any]], sources: list[np.ndarray]) -> np.ndarray:
    if len(sources) != 1:
        raise VerificationError("transform chains over several sources are not known to this version")
    arr = sources[0]
    for t in transforms:
        op = t.get("op")
        if op == "cast":
            arr = arr.astype(lookup_dtype(t["to"]).numpy)
        else:
            raise VerificationError(f"unknown transform {op!r} in the manifest")
    return arr
