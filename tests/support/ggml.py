"""ggml's own quantizer, reached through ctypes in the library llama-cpp-python builds (the `ggml`
extra), for the tests and the benchmark that hold our quantizers against it; and the rows they hold
them to (ordinary and adversarial cases, many distributions at many scales)."""

from __future__ import annotations

import ctypes
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np

from convert.outputs.gguf.ggml_types import ggml_type

MISSING = "the ggml tier needs llama-cpp-python (pip install 'rust-model-convert[ggml]', a cmake build of llama.cpp)"


def ggml_base_library() -> Path | None:
    """libggml-base as llama-cpp-python installs it (llama_cpp/lib/), found without importing llama_cpp."""
    spec = importlib.util.find_spec("llama_cpp")
    for folder in (spec.submodule_search_locations or []) if spec else []:
        found = sorted(Path(folder, "lib").glob("libggml-base.*"))
        if found:
            return found[0]
    return None


def ggml_quantizer() -> Callable[[np.ndarray, str], np.ndarray] | None:
    """`run(rows, type_name)`: ggml_quantize_chunk over float32 rows, one row of bytes per row; without
    an importance matrix it runs ggml's quantize_row_*_ref, as llama-quantize does. None when the
    library is not installed."""
    path = ggml_base_library()
    if path is None:
        return None
    fn = ctypes.CDLL(str(path)).ggml_quantize_chunk
    # (type, src, dst, start, nrows, n_per_row, imatrix) -> bytes written
    fn.argtypes = [
        ctypes.c_int,
        ctypes.c_void_p,
        ctypes.c_void_p,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_int64,
        ctypes.c_void_p,
    ]
    fn.restype = ctypes.c_size_t

    def run(rows: np.ndarray, name: str) -> np.ndarray:
        t = ggml_type(name)
        rows = np.ascontiguousarray(rows, dtype=np.float32)
        out = np.zeros((rows.shape[0], t.row_bytes(rows.shape[1])), dtype=np.uint8)
        written = fn(t.id, rows.ctypes.data, out.ctypes.data, 0, rows.shape[0], rows.shape[1], None)
        if written != out.size:
            raise RuntimeError(f"ggml_quantize_chunk wrote {written} bytes, not {out.size}")
        return out

    return run


def quantizer_cases() -> dict[str, np.ndarray]:
    """Rows of 512 values (two K-quant super-blocks, 16 legacy blocks), float32."""
    rng = np.random.default_rng(31)
    n = 512
    normal = rng.standard_normal((3, n))
    cases = {
        "normal": normal,
        "weights": normal * 0.02 + 0.001,  # a trained layer's scale
        "heavy-tailed": rng.standard_t(2, (3, n)),
        "positive": rng.random((3, n)) + 0.5,
        "negative": -rng.random((3, n)) * 3,
        "zeros": np.zeros((2, n)),
        "negative-zeros": -np.zeros((2, n)),
        "constant": np.full((2, n), 0.37),
        "negative-constant": np.full((2, n), -5.5),
        "integers": rng.integers(-8, 9, (3, n)).astype(float),  # ties for the symmetric quants
        "half-steps": rng.integers(-16, 17, (3, n)) / 2.0,
        "spike": np.where(np.arange(n) % 97 == 0, 40.0, 0.01) * rng.choice([-1, 1], (2, n)),
        "mixed-magnitudes": normal * 10.0 ** rng.integers(-30, 4, (3, n)),
        "sparse": normal * (rng.random((3, n)) < 0.05),
        "large": normal * 1e4,
        "tiny": normal * 1e-30,
        "near-f32-min": normal * 1e-37,  # scales below f32's normal range
        "subnormal": rng.integers(-3, 4, (2, n)) * 1.4e-45,
        # groups of 16 at scales 1e-8..1: most K-quant group scales round to 0 under the super-block's,
        # where ggml keeps the levels of its search
        "group-scales": normal * np.repeat(10.0 ** rng.uniform(-8, 0, (3, n // 16)), 16, axis=1),
        "one-value-groups": np.where(np.arange(n) % 16 == 5, 3.0, 0.0) * rng.standard_normal((2, n)),
    }
    return {k: v.astype(np.float32) for k, v in cases.items()}


def many_distributions() -> np.ndarray:
    """2,000 rows of 256 values: ten distributions, each row at its own scale from 1e-12 to 1e3."""
    rng = np.random.default_rng(7)
    shape = (200, 256)
    parts = [
        rng.standard_normal(shape),
        rng.uniform(-1, 1, shape),
        rng.laplace(size=shape),
        rng.lognormal(size=shape),
        rng.standard_t(1.5, shape),
        rng.integers(-20, 21, shape) * 0.125,
        np.round(rng.standard_normal(shape) * 4) / 4,
        rng.standard_normal(shape) * (rng.random(shape) < 0.1),
        rng.standard_normal(shape) + 100,
        -rng.random(shape) - 50,
    ]
    return (np.concatenate(parts) * 10.0 ** rng.uniform(-12, 3, (len(parts) * shape[0], 1))).astype(np.float32)
