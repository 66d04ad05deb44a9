"""Batch throughput: 200 small real checkpoints of mixed formats, converted with 1 and 2 workers.

    .venv/bin/python scripts/bench_batch.py [--files 200] [--reps 3]

Prints, per worker count, the median throughput of the batch itself (files over the summary's
wall_seconds: from the executor's start, pool start-up included, to the last result) and of the
whole command (interpreter start and imports included, the same for any worker count); the
throughput speed-up of 2 workers over 1 (target >= 1.8x); and the per-file overhead of a batch
against converting one file alone in a fresh process. Repetitions alternate between worker counts,
and every run starts from an empty output folder, so both see the same machine state. Needs torch
(to write the checkpoints) and safetensors.
"""

from __future__ import annotations

import argparse
import json
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


def timed(cmd: list[str]) -> tuple[float, str]:
    """(wall seconds, stdout) of a command that must succeed."""
    start = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        sys.exit(f"failed ({proc.returncode}): {' '.join(cmd)}\n{proc.stderr}")
    return elapsed, proc.stdout


def batch_command(sources: list[Path], out: Path, workers: int) -> list[str]:
    return [*CONVERT, "batch", *map(str, sources), "--out-dir", str(out), "--jobs", str(workers), "--json"]


def batch_seconds(stdout: str) -> float:
    """The batch's own wall_seconds, from its JSON summary (the last line)."""
    return float(json.loads(stdout.splitlines()[-1])["summary"]["wall_seconds"])


def batch_run(sources: list[Path], out: Path, workers: int) -> tuple[float, float]:
    """(command wall seconds, the batch's own wall_seconds), from an empty output folder."""
    shutil.rmtree(out, ignore_errors=True)
    elapsed, stdout = timed(batch_command(sources, out, workers))
    return elapsed, batch_seconds(stdout)


def halves_run(sources: list[Path], out: Path) -> float:
    """The machine's own ceiling for this work: two independent 1-worker batches of half the files
    each, started together (no pool, nothing shared but the machine); seconds until both are done,
    each measured as its batch wall_seconds."""
    half = len(sources) // 2
    shutil.rmtree(out, ignore_errors=True)
    procs = [
        subprocess.Popen(batch_command(part, out / str(i), 1), cwd=ROOT, stdout=subprocess.PIPE, text=True)
        for i, part in enumerate((sources[:half], sources[half:]))
    ]
    outputs = [proc.communicate()[0] for proc in procs]
    if any(proc.returncode for proc in procs):
        sys.exit("a half batch failed")
    return max(batch_seconds(o) for o in outputs)


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
        command: dict[int, list[float]] = {1: [], 2: []}
        inside: dict[int, list[float]] = {1: [], 2: []}
        single: list[float] = []
        halves: list[float] = []
        for rep in range(args.reps):
            for workers in (1, 2) if rep % 2 == 0 else (2, 1):
                whole, batch = batch_run(paths, work / f"out-{workers}", workers)
                command[workers].append(whole)
                inside[workers].append(batch)
            halves.append(halves_run(paths, work / "halves"))
            one = work / "one"
            shutil.rmtree(one, ignore_errors=True)
            single.append(timed([*CONVERT, "-q", "pth-to-safetensors", str(paths[0]), str(one)])[0])
        med = {k: {w: statistics.median(v[w]) for w in (1, 2)} for k, v in (("batch", inside), ("command", command))}
        alone = statistics.median(single)
        speedup = med["batch"][1] / med["batch"][2]
        print(f"{args.files} files (zip, legacy, Lightning .ckpt, SafeTensors), median of {args.reps} runs")
        for workers in (1, 2):
            b, c = med["batch"][workers], med["command"][workers]
            print(
                f"  {workers} worker{'s' if workers > 1 else ' '}: batch {b:6.2f} s ({args.files / b:6.1f} files/s); "
                f"whole command {c:6.2f} s ({args.files / c:6.1f} files/s)"
            )
        ceiling = med["batch"][1] / statistics.median(halves)
        print(
            f"  throughput speed-up 2 vs 1 workers: {speedup:.2f}x (target >= 1.8x) {'PASS' if speedup >= 1.8 else 'FAIL'}; "
            f"whole command {med['command'][1] / med['command'][2]:.2f}x"
        )
        print(
            f"  machine ceiling, two independent 1-worker batches of {args.files // 2} files at once: {ceiling:.2f}x; "
            f"the pool reaches {speedup / ceiling:.0%} of it"
        )
        t1 = med["command"][1]
        print(
            f"  one file alone, fresh process: {alone * 1000:.0f} ms; per file in a 1-worker batch: "
            f"{t1 / args.files * 1000:.1f} ms (overhead ratio {t1 / args.files / alone:.2f}x of converting alone)"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
