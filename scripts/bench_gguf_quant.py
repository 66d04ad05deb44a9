"""Benchmark the GGUF quantizers against the references, in one process and one run.

    .venv/bin/python scripts/bench_gguf_quant.py                  # 256 MiB of float32, q8_0 and q4_k
    .venv/bin/python scripts/bench_gguf_quant.py --mib 1024 --reps 5 --types q8_0,q4_k,q6_k
    CONVERT_GGUF_KERNELS=numpy .venv/bin/python scripts/bench_gguf_quant.py   # without the compiled K-quants

The input is --mib of float32 weights (normal, std 0.02, as a trained layer) in 4096 x 4096 matrices
(64 MiB each, the last one smaller). Each type is timed these ways when it can be:
- ours: what `to-gguf` runs per tensor (`convert.outputs.gguf.encode.encoded`): 1 MiB chunks of
  rows quantized on the worker threads (encode.WORKERS, one per CPU), each chunk's error measured;
- ours-1t: the same on one thread (encode.WORKERS = 1): CPU time alone;
- numpy, numpy-1t: ours and ours-1t with the K-quant searches in numpy (quants.COMPILED = False, as
  CONVERT_GGUF_KERNELS=numpy sets it), when the compiled ones (numba: the `fast` extra) are what ours
  runs;
- gguf: `gguf.quants.quantize` on each whole matrix, as llama.cpp's converter calls it (q8_0, q4_0,
  q4_1, q5_0, q5_1, bf16: the types it quantizes);
- ggml: ggml's C quantizer `ggml_quantize_chunk` (one thread, no importance matrix: the code
  `llama-quantize` runs) on each whole matrix, when llama-cpp-python (the `ggml` extra) is installed;
- ggml-mt: the same, each matrix cut in encode.WORKERS slices of rows run on that many threads
  (ctypes lets go of the GIL), as llama-quantize spreads a tensor over its threads.
Throughput is MB/s of float32 input (1 MB = 1e6 bytes), wall and CPU time (the process's, all
threads), median of --reps runs, the runs of each type interleaved; the bytes of every method are
checked equal. Targets (issue 31): q8_0 no slower than gguf; q4_k at most 2x ggml's time and at
least 100 MB/s. The machine may be shared: the load average is printed, and ratios beat absolute
figures (CPU ratios most of all).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the repository, for tests.support

from convert.outputs.gguf import encode, quants  # noqa: E402
from convert.outputs.gguf.ggml_types import QK_K, ggml_type  # noqa: E402
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


def timed(fn: Callable[[], list[np.ndarray]]) -> tuple[float, float, list[np.ndarray]]:
    """Wall and CPU seconds (every thread's) of one run, and its output."""
    w0, c0 = time.perf_counter(), time.process_time()
    result = fn()
    return time.perf_counter() - w0, time.process_time() - c0, result


def ours(data: list[np.ndarray], name: str, workers: int, compiled: bool = quants.COMPILED) -> list[np.ndarray]:
    t = ggml_type(name)
    encode.WORKERS, saved = workers, encode.WORKERS
    quants.COMPILED, saved_compiled = compiled, quants.COMPILED
    try:
        out = []
        for m in data:
            chunks = encode.encoded("bench", m, t, "refuse", encode.Measured())
            out.append(np.frombuffer(b"".join(chunks), dtype=np.uint8).reshape(m.shape[0], -1))
        return out
    finally:
        encode.WORKERS, quants.COMPILED = saved, saved_compiled


def sliced(run: Callable[[np.ndarray, str], np.ndarray], m: np.ndarray, name: str, pool: ThreadPoolExecutor) -> np.ndarray:
    """ggml on `m` cut in as many slices of rows as the pool has threads, run at once."""
    cuts = np.array_split(np.arange(m.shape[0]), encode.WORKERS)
    return np.concatenate(list(pool.map(lambda rows: run(m[rows[0] : rows[-1] + 1], name), cuts)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256, help="MiB of float32 input (default 256)")
    parser.add_argument("--types", default="q8_0,q4_k", help="comma-separated types (default q8_0,q4_k)")
    parser.add_argument("--reps", type=int, default=3, help="repetitions, median taken (default 3)")
    args = parser.parse_args()
    data = matrices(args.mib)
    total = sum(m.nbytes for m in data)
    ggml = ggml_quantizer()
    load = os.getloadavg()[0]
    compiled = quants.COMPILED and bool(quants.compiled_kernels())
    kernels = "compiled (numba)" if compiled else "numpy (CONVERT_GGUF_KERNELS=numpy, or no numba)"
    print(f"{total / 2**20:.0f} MiB float32, {encode.WORKERS} worker threads, load average {load:.2f}, numpy {np.__version__}")
    print(f"K-quant kernels: {kernels}")
    if ggml is None:
        print(f"ggml: not measured: {MISSING}")
    pool = ThreadPoolExecutor(encode.WORKERS)
    for name in args.types.split(","):
        runs: dict[str, Callable[[], list[np.ndarray]]] = {
            "ours": lambda n=name: ours(data, n, encode.WORKERS),
            "ours-1t": lambda n=name: ours(data, n, 1),
        }
        ours([data[0][:1]], name, 1)  # the kernels compiled (or loaded from numba's cache) before the clock starts
        if compiled and ggml_type(name).block_size == QK_K:
            runs["numpy"] = lambda n=name: ours(data, n, encode.WORKERS, compiled=False)
            runs["numpy-1t"] = lambda n=name: ours(data, n, 1, compiled=False)
        if name in GGUF_TYPES:
            import gguf

            qtype = gguf.GGMLQuantizationType[name.upper()]
            runs["gguf"] = lambda q=qtype: [np.asarray(gguf.quants.quantize(m, q)).view(np.uint8) for m in data]
        if ggml is not None and ggml_type(name).quantized:
            runs["ggml"] = lambda n=name, g=ggml: [g(m, n) for m in data]
            runs["ggml-mt"] = lambda n=name, g=ggml: [sliced(g, m, n, pool) for m in data]
        samples: dict[str, list[tuple[float, float]]] = {method: [] for method in runs}
        outputs: dict[str, list[np.ndarray]] = {}
        for _ in range(args.reps):  # interleaved, so a burst of load hits every method alike
            for method, fn in runs.items():
                wall, cpu, outputs[method] = timed(fn)
                samples[method].append((wall, cpu))
        medians = {m: (statistics.median(w for w, _ in s), statistics.median(c for _, c in s)) for m, s in samples.items()}
        reference = outputs["ours"]
        for method, (wall, cpu) in medians.items():
            same = all(np.array_equal(a.reshape(b.shape), b) for a, b in zip(outputs[method], reference, strict=True))
            ratio = (
                ""
                if method == "ours"
                else f"  ours/{method}: wall {medians['ours'][0] / wall:.2f}x CPU {medians['ours'][1] / cpu:.2f}x"
            )
            print(
                f"{name:5} {method:8} {total / wall / 1e6:7.1f} MB/s wall {total / cpu / 1e6:7.1f} MB/s CPU"
                f"  bytes {'equal' if same else 'DIFFER'}{ratio}"
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
