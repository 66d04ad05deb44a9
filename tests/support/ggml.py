"""ggml's own quantizer, reached through ctypes in the library llama-cpp-python builds (the `ggml`
extra), for the tests and the benchmark that hold our quantizers against it."""

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
