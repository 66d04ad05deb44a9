"""Benchmark the cold-start cost of `convert pth-to-safetensors` on a small (~4 MB) checkpoint.

    .venv/bin/python scripts/bench_startup.py            # 5 runs
    .venv/bin/python scripts/bench_startup.py --runs 10 --json

Each run is a fresh process (interpreter start, imports, conversion, fsync), timed from spawn to
exit; the summary is the median, because the machine is shared and noisy. Then one run under
`python -X importtime` lists what the command imports: no heavy framework (torch, tensorflow, jax,
...) may appear, and the ten slowest imports are shown.

Target (DESIGN.md, "Performance targets"): under 0.5 s wall from a cold process, with no heavy
framework imported.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from bench_pytorch import tool_command

WALL_TARGET_S = 0.5
HEAVY = ("torch", "tensorflow", "keras", "jax", "jaxlib", "flax", "tf_keras", "transformers")


def generate_checkpoint(path: Path) -> int:
    """A ~4 MB state dict of a few Linear layers, written by torch in a child process."""
    code = (
        "import sys, torch\n"
        "from torch import nn\n"
        "torch.manual_seed(0)\n"
        "m = nn.Sequential(nn.Linear(512, 1024), nn.GELU(), nn.LayerNorm(1024), nn.Linear(1024, 512),\n"
        "                  nn.Linear(512, 10))\n"
        "torch.save(m.state_dict(), sys.argv[1])\n"
    )
    subprocess.run([sys.executable, "-c", code, str(path)], check=True)
    return path.stat().st_size


@dataclass
class Run:
    wall_s: float
    cpu_s: float  # user + system CPU of the child: robust to a busy machine, unlike wall time
    tool_reported_s: float | None  # the tool's own conversion time (--json "seconds")


def timed_run(src: Path, out: Path) -> Run:
    shutil.rmtree(out, ignore_errors=True)
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    proc = subprocess.run([*tool_command(), "pth-to-safetensors", str(src), str(out), "--json"], capture_output=True, text=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if proc.returncode != 0:
        sys.exit(f"bench: convert failed with exit code {proc.returncode}:\n{proc.stderr[-3000:]}")
    try:
        reported = float(json.loads(proc.stdout.strip().splitlines()[-1])["seconds"])
    except (ValueError, KeyError, IndexError, TypeError):
        reported = None
    return Run(round(wall, 3), round(cpu, 3), reported)


@dataclass
class Import:
    module: str
    self_us: int
    cumulative_us: int


def import_profile(src: Path, out: Path) -> list[Import]:
    """Every module the conversion imports, from `python -X importtime -m convert.cli ...`."""
    shutil.rmtree(out, ignore_errors=True)
    proc = subprocess.run(
        [sys.executable, "-X", "importtime", "-m", "convert.cli", "pth-to-safetensors", str(src), str(out), "-q"],
        capture_output=True,
        text=True,
    )
    if proc.returncode != 0:
        sys.exit(f"bench: convert under -X importtime failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    imports = []
    for line in proc.stderr.splitlines():
        if not line.startswith("import time:") or "self [us]" in line:
            continue
        self_us, cumulative_us, name = line[len("import time:") :].split("|", 2)
        imports.append(Import(name.strip(), int(self_us), int(cumulative_us)))
    return imports


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=5, help="fresh-process conversions to time (default 5)")
    parser.add_argument("--workdir", type=Path, help="scratch folder (default: a new folder under /tmp)")
    parser.add_argument("--keep", action="store_true", help="keep the scratch folder")
    parser.add_argument("--json", action="store_true", help="print the results as JSON on stdout")
    args = parser.parse_args()
    if args.runs < 1:
        parser.error("--runs must be at least 1")

    created = args.workdir is None
    workdir = Path(tempfile.mkdtemp(prefix="bench_startup-", dir="/tmp")) if created else args.workdir.absolute()
    workdir.mkdir(parents=True, exist_ok=True)
    src, out = workdir / "small.pt", workdir / "out"
    try:
        size = generate_checkpoint(src)
        load_before = os.getloadavg()[0]
        runs = [timed_run(src, out) for _ in range(args.runs)]
        imports = import_profile(src, out)
    finally:
        shutil.rmtree(out, ignore_errors=True)
        if not args.keep:
            if created:
                shutil.rmtree(workdir, ignore_errors=True)
            else:
                src.unlink(missing_ok=True)

    load_after = os.getloadavg()[0]
    walls = [r.wall_s for r in runs]
    median = statistics.median(walls)
    cpu_median = statistics.median(r.cpu_s for r in runs)
    reported = [r.tool_reported_s for r in runs if r.tool_reported_s is not None]
    heavy = sorted({i.module for i in imports if i.module.split(".")[0] in HEAVY})
    total_import_us = sum(i.self_us for i in imports)
    slowest_self = sorted(imports, key=lambda i: i.self_us, reverse=True)[:10]
    top_level = [i for i in imports if "." not in i.module]
    slowest_packages = sorted(top_level, key=lambda i: i.cumulative_us, reverse=True)[:10]
    checks = [
        {
            "target": f"median wall < {WALL_TARGET_S} s from a cold process",
            "value": median,
            "result": "PASS" if median < WALL_TARGET_S else "FAIL",
        },
        {
            "target": "no heavy framework imported (" + ", ".join(HEAVY) + ")",
            "value": heavy,
            "result": "PASS" if not heavy else "FAIL",
        },
    ]

    if args.json:
        print(
            json.dumps(
                {
                    "checkpoint_bytes": size,
                    "runs": [asdict(r) for r in runs],
                    "wall_median_s": round(median, 3),
                    "cpu_median_s": round(cpu_median, 3),
                    "load_average": [round(load_before, 2), round(load_after, 2)],
                    "cpus": os.cpu_count(),
                    "tool_reported_median_s": round(statistics.median(reported), 3) if reported else None,
                    "modules_imported": len(imports),
                    "import_self_total_s": round(total_import_us / 1e6, 3),
                    "heavy_modules": heavy,
                    "slowest_imports_self": [asdict(i) for i in slowest_self],
                    "slowest_top_level_cumulative": [asdict(i) for i in slowest_packages],
                    "targets": checks,
                },
                indent=2,
            )
        )
    else:
        print(
            f"checkpoint: {size / 1e6:.1f} MB; {len(runs)} fresh-process runs of "
            f"`{' '.join(Path(c).name for c in tool_command())} pth-to-safetensors SRC OUT`"
        )
        print("wall s: " + ", ".join(f"{w:.3f}" for w in walls))
        print(
            f"median wall: {median:.3f} s (min {min(walls):.3f}, max {max(walls):.3f}); median CPU (user+sys): "
            f"{cpu_median:.3f} s; load average {load_before:.1f} -> {load_after:.1f} on {os.cpu_count()} CPUs"
        )
        if reported:
            rep = statistics.median(reported)
            print(f"tool's own conversion time, median: {rep:.3f} s; interpreter start + imports + exit: {median - rep:.3f} s")
        print(f"\n-X importtime: {len(imports)} modules, {total_import_us / 1e6:.3f} s of import time in total")
        print("slowest imports (self time):")
        for i in slowest_self:
            print(f"  {i.self_us / 1000:8.1f} ms  {i.module}")
        print("slowest top-level packages (cumulative time):")
        for i in slowest_packages:
            print(f"  {i.cumulative_us / 1000:8.1f} ms  {i.module}")
        print()
        for row in checks:
            value = f"{row['value']:.3f} s" if isinstance(row["value"], float) else (", ".join(row["value"]) or "none")
            print(f"{row['result']}  {row['target']}: {value}")
    if any(row["result"] == "FAIL" for row in checks):
        sys.exit(1)


if __name__ == "__main__":
    main()
