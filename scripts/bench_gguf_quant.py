"""Benchmark the GGUF quantizers against the references, in one process and one run.

    .venv/bin/python scripts/bench_gguf_quant.py                  # 256 MiB of float32, q8_0 and q4_k
    .venv/bin/python scripts/bench_gguf_quant.py --mib 1024 --reps 3 --types q8_0,q4_k,q6_k

The input is --mib of float32 weights (normal, std 0.02, as a trained layer) in 4096 x 4096 matrices
(64 MiB each, the last one smaller). Each type is timed three ways when it can be:
- ours: `convert.outputs.gguf.quants.quantize` over --chunk-mib pieces of rows, as the GGUF writer
  streams a tensor;
- gguf: `gguf.quants.quantize` on each whole matrix, as llama.cpp's converter calls it (q8_0, q4_0,
  q4_1, q5_0, q5_1, bf16: the types it quantizes);
- ggml: ggml's C quantizer `ggml_quantize_chunk` (one thread, no importance matrix: the code
  `llama-quantize` runs) on each whole matrix, when llama-cpp-python (the `ggml` extra) is installed.
Throughput is MB/s of float32 input (1 MB = 1e6 bytes), wall and CPU time, best of --reps; the bytes
of every method are checked equal. Targets (issue 31): q8_0 no slower than gguf; q4_k at most 2x
ggml's time and at least 100 MB/s. The machine may be shared: the load average is printed, and
ratios beat absolute figures.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for tests.support

from convert.outputs.gguf import quants  # noqa: E402
from convert.outputs.gguf.ggml_types import ggml_type  # noqa: E402
from tests.support.ggml import MISSING, ggml_quantizer  # noqa: E402

SIDE = 4096
GGUF_TYPES = {"bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"}


def matrices(mib: int) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    rows_left = mib * 2**20 // (SIDE * 4)
    out = []
    while rows_left > 0:
        rows = min(SIDE, rows_left)
        out.append(rng.standard_normal((rows, SIDE), dtype=np.float32) * np.float32(0.02))
        rows_left -= rows
    return out


def timed(fn: Callable[[], list[np.ndarray]], reps: int) -> tuple[float, float, list[np.ndarray]]:
    """Best wall and CPU seconds over `reps` runs, and the last run's output."""
    wall = cpu = float("inf")
    result: list[np.ndarray] = []
    for _ in range(reps):
        w0, c0 = time.perf_counter(), time.process_time()
        result = fn()
        wall, cpu = min(wall, time.perf_counter() - w0), min(cpu, time.process_time() - c0)
    return wall, cpu, result


def ours(data: list[np.ndarray], name: str, chunk_rows: int) -> list[np.ndarray]:
    t = ggml_type(name)
    out = []
    for m in data:
        q = np.empty((m.shape[0], t.row_bytes(m.shape[1])), dtype=np.uint8)
        for start in range(0, m.shape[0], chunk_rows):
            q[start : start + chunk_rows] = quants.quantize(m[start : start + chunk_rows], t)
        out.append(q)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="MiB of float32 input (default 256)")
    parser.add_argument("--types", default="q8_0,q4_k", help="comma-separated types (default q8_0,q4_k)")
    parser.add_argument("--reps", type=int, default=1, help="repetitions, best taken (default 1)")
    parser.add_argument("--chunk-mib", type=float, default=4.0, help="our piece of rows, MiB of float32 (default 4)")
    args = parser.parse_args()
    data = matrices(args.mib)
    total = sum(m.nbytes for m in data)
    chunk_rows = max(1, int(args.chunk_mib * 2**20 // (SIDE * 4)))
    ggml = ggml_quantizer()
    print(f"{total / 2**20:.0f} MiB float32, load average {os.getloadavg()[0]:.2f}, numpy {np.__version__}")
    if ggml is None:
        print(f"ggml: not measured: {MISSING}")
    for name in args.types.split(","):
        runs: dict[str, Callable[[], list[np.ndarray]]] = {"ours": lambda n=name: ours(data, n, chunk_rows)}
        if name in GGUF_TYPES:
            import gguf

            qtype = gguf.GGMLQuantizationType[name.upper()]
            runs["gguf"] = lambda q=qtype: [np.asarray(gguf.quants.quantize(m, q)).view(np.uint8) for m in data]
        if ggml is not None and ggml_type(name).quantized:
            runs["ggml"] = lambda n=name, g=ggml: [g(m, n) for m in data]
        results = {method: timed(fn, args.reps) for method, fn in runs.items()}
        reference = results["ours"][2]
        for method, (wall, cpu, out) in results.items():
            same = all(np.array_equal(a.reshape(b.shape), b) for a, b in zip(out, reference, strict=True))
            ratio = "" if method == "ours" else f"  ours/{method} time {results['ours'][0] / wall:.2f}x"
            print(
                f"{name:5} {method:5} {total / wall / 1e6:8.1f} MB/s wall {total / cpu / 1e6:8.1f} MB/s cpu"
                f"  bytes {'equal' if same else 'DIFFER'}{ratio}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
