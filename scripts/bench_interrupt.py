"""How fast Ctrl-C stops a running batch: seconds from SIGINT (sent to the whole process group, as a
terminal does) to the batch's exit, over several trials, and whether anything half-written remained.

    .venv/bin/python scripts/bench_interrupt.py [--trials 5] [--after 1.5]

The target is 2 s (issue: batch on Ctrl-C stops within 2 s). Prints one line per trial and the worst.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def make_sources(folder: Path) -> None:
    """Forty small checkpoints and four of 256 MiB, so jobs are running when the signal comes."""
    import numpy as np
    from safetensors.numpy import save_file

    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(40):
        save_file({"w": rng.standard_normal((256, 1024), dtype=np.float32)}, str(folder / f"small{i}.safetensors"))
    for i in range(4):
        save_file({"w": rng.standard_normal((64, 1024, 1024), dtype=np.float32)}, str(folder / f"big{i}.safetensors"))


def trial(src: Path, out: Path, after: float) -> tuple[float, int, list[str]]:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "convert.cli", "batch", str(src), "--out-dir", str(out), "--jobs", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    time.sleep(after)
    sent = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    proc.communicate(timeout=120)
    stopped = time.monotonic() - sent
    leftovers = sorted(p.name for p in out.iterdir() if p.name.startswith(".")) if out.exists() else []
    return stopped, proc.returncode, leftovers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=5)
    parser.add_argument("--after", type=float, default=1.5, help="seconds into the batch when Ctrl-C comes")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "src"
        make_sources(src)
        worst = 0.0
        for i in range(args.trials):
            out = Path(tmp) / f"out{i}"
            stopped, code, leftovers = trial(src, out, args.after)
            worst = max(worst, stopped)
            print(f"trial {i}: stopped {stopped:.2f} s after SIGINT, exit {code}, half-written left: {leftovers or 'none'}")
        print(f"worst: {worst:.2f} s (target 2 s); load average {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
