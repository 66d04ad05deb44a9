"""A longer hostile-input campaign for local runs: every file of the hostile corpus and of the
NeuralForecast and example fixtures, then seeded byte-level mutants of them, each through
`convert auto` (and `inspect`) in a child under a 4 GiB address-space cap, in an empty folder.

A run fails the campaign when it exits 1 (an internal error), dies of a signal, prints anything but
exactly one stderr line on failure, leaves output or a staging folder behind after failing, creates
a `canary`, or exceeds the peak RSS or wall-time bounds. The summary prints the counts per exit code
and the worst peak RSS and wall time seen: the figures SECURITY.md quotes.

    PYTHONPATH=$PWD .venv/bin/python scripts/hostile_campaign.py --mutants 2000 --seed 18 --workers 2
"""

from __future__ import annotations

import argparse
import collections
import random
import shutil
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))

from hostile_run import PEAK_RSS_LIMIT, run_measured  # noqa: E402

WALL_LIMIT = 60.0
SEEDS = [REPO / "fixtures" / "example", REPO / "fixtures" / "hostile", REPO / "fixtures" / "neuralforecast"]


def seed_files() -> list[Path]:
    files = [p for root in SEEDS for p in sorted(root.rglob("*")) if p.is_file() and p.name != "catalog.json"]
    return [p for p in files if p.stat().st_size <= 4 << 20]


def mutate(data: bytes, rng: random.Random) -> bytes:
    """A few byte flips, splices, truncations or repeated runs: what fuzzers find structure with."""
    buf = bytearray(data)
    for _ in range(rng.randint(1, 6)):
        if not buf:
            break
        at = rng.randrange(len(buf))
        op = rng.randrange(5)
        if op == 0:
            buf[at] ^= 1 << rng.randrange(8)
        elif op == 1:
            buf[at:at + 8] = rng.choice([b"\xff" * 8, b"\x00" * 8, b"\x7f\xff\xff\xff\xff\xff\xff\xff"])
        elif op == 2:
            del buf[at:]
        elif op == 3:
            end = min(len(buf), at + rng.randint(1, 64))
            buf[at:at] = buf[at:end] * rng.randint(2, 50)
        else:
            other = rng.randrange(len(buf))
            buf[at:at + 16] = buf[other:other + 16]
    return bytes(buf)


def run_one(label: str, src: Path, work: Path) -> dict[str, object]:
    work.mkdir(parents=True)
    started = time.perf_counter()
    run = run_measured("auto", src, work / "out", cwd=work)
    wall = time.perf_counter() - started
    problems = []
    lines = run.stderr.splitlines()
    if run.code == 1 or run.code < 0:
        problems.append(f"exit {run.code}")
    if run.code not in (0, 130) and (len(lines) != 1 or not lines[0].startswith("convert: error: ")):
        problems.append(f"{len(lines)} stderr lines")
    if run.code != 0 and any(p.name != "canary" for p in work.iterdir()):
        problems.append("output left after a failure")
    if (work / "canary").exists():
        problems.append("CANARY: code ran")
    if run.peak_rss > PEAK_RSS_LIMIT or wall > WALL_LIMIT:
        problems.append(f"{run.peak_rss >> 20} MiB, {wall:.0f} s")
    shutil.rmtree(work, ignore_errors=True)
    return {"label": label, "code": run.code, "rss": run.peak_rss, "wall": wall, "problems": problems,
            "stderr": run.stderr[-300:]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mutants", type=int, default=500)
    parser.add_argument("--seed", type=int, default=18)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    seeds = seed_files()
    scratch = Path(tempfile.mkdtemp(prefix="hostile-campaign-"))
    cases: list[tuple[str, Path]] = [(str(p.relative_to(REPO)), p) for p in seeds]
    for i in range(args.mutants):
        seed = rng.choice(seeds)
        path = scratch / f"mutant{i}{''.join(seed.suffixes)}"
        path.write_bytes(mutate(seed.read_bytes(), rng))
        cases.append((f"mutant {i} of {seed.relative_to(REPO)}", path))
    started = time.perf_counter()
    with ThreadPoolExecutor(args.workers) as pool:
        results = list(pool.map(lambda ic: run_one(ic[1][0], ic[1][1], scratch / f"w{ic[0]}"), enumerate(cases)))
    shutil.rmtree(scratch, ignore_errors=True)
    codes = collections.Counter(r["code"] for r in results)
    failures = [r for r in results if r["problems"]]
    worst_rss = max(results, key=lambda r: r["rss"])
    worst_wall = max(results, key=lambda r: r["wall"])
    print(f"{len(results)} runs ({len(seeds)} files, {args.mutants} mutants, seed {args.seed}) in "
          f"{time.perf_counter() - started:.0f} s")
    print("exit codes: " + ", ".join(f"{c}: {n}" for c, n in sorted(codes.items())))
    print(f"worst peak RSS {worst_rss['rss'] >> 20} MiB ({worst_rss['label']}); "
          f"worst wall {worst_wall['wall']:.1f} s ({worst_wall['label']})")
    for r in failures:
        print(f"FAIL {r['label']}: {'; '.join(r['problems'])}: {r['stderr']!r}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
