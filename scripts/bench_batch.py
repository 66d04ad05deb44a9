"""Batch throughput: 200 small real checkpoints of mixed formats, converted with 1 and 2 workers.

    .venv/bin/python scripts/bench_batch.py [--files 200] [--reps 3]

Prints the median wall time per worker count, the speed-up (target: 2 workers >= 1.8x one), and the
per-file overhead of a batch against converting one file alone in a fresh process. Repetitions
alternate between worker counts, and every run starts from an empty output folder, so both see the
same machine state. Needs torch (to write the checkpoints) and safetensors.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CONVERT = [sys.executable, "-m", "convert.cli"]


def make_sources(folder: Path, count: int) -> list[Path]:
    """Small models in every PyTorch-side format the batch detects: zip, legacy, Lightning, SafeTensors."""
    import torch
    from safetensors.torch import save_file
    from torch import nn

    torch.manual_seed(0)
    paths = []
    for i in range(count):
        model = nn.Sequential(nn.Linear(64, 128), nn.LayerNorm(128), nn.Linear(128, 64), nn.BatchNorm1d(64))
        sd = model.state_dict()
        kind = i % 4
        if kind == 0:
            path = folder / f"m{i:03d}.pt"
            torch.save(sd, path)
        elif kind == 1:
            path = folder / f"m{i:03d}.bin"
            torch.save(sd, path, _use_new_zipfile_serialization=False)
        elif kind == 2:
            path = folder / f"m{i:03d}.ckpt"
            torch.save({"state_dict": sd, "epoch": i, "hyper_parameters": {"lr": 1e-3}}, path)
        else:
            path = folder / f"m{i:03d}.safetensors"
            save_file({k: v.contiguous() for k, v in sd.items()}, str(path), metadata={"format": "pt"})
        paths.append(path)
    return paths


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--files", type=int, default=200)
    parser.add_argument("--reps", type=int, default=3)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="bench-batch-"))
    try:
        src = work / "src"
        src.mkdir()
        paths = make_sources(src, args.files)
        times: dict[int, list[float]] = {1: [], 2: []}
        single: list[float] = []
        for rep in range(args.reps):
            for workers in ((1, 2) if rep % 2 == 0 else (2, 1)):
                out = work / f"out-{workers}"
                shutil.rmtree(out, ignore_errors=True)
                times[workers].append(timed([*CONVERT, "-q", "batch", str(src), "--out-dir", str(out),
                                             "--jobs", str(workers)]))
            one = work / "one"
            shutil.rmtree(one, ignore_errors=True)
            single.append(timed([*CONVERT, "-q", "pth-to-safetensors", str(paths[0]), str(one)]))
        t1, t2, alone = (statistics.median(times[1]), statistics.median(times[2]), statistics.median(single))
        speedup = t1 / t2
        print(f"{args.files} files (zip, legacy, Lightning .ckpt, SafeTensors), median of {args.reps} runs")
        print(f"  1 worker : {t1:7.2f} s  ({args.files / t1:6.1f} files/s)")
        print(f"  2 workers: {t2:7.2f} s  ({args.files / t2:6.1f} files/s)")
        print(f"  speed-up 2 vs 1 workers: {speedup:.2f}x (target >= 1.8x) {'PASS' if speedup >= 1.8 else 'FAIL'}")
        print(f"  one file alone, fresh process: {alone * 1000:.0f} ms; per file in a 1-worker batch: "
              f"{t1 / args.files * 1000:.1f} ms (overhead ratio {t1 / args.files / alone:.2f}x of converting alone)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
