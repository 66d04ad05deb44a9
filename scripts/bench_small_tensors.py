"""Benchmark the per-tensor cost: `convert pth-to-safetensors` and `convert verify --source` on many tiny
tensors, against `torch.load` + `safetensors.torch.save_file` in a fresh process.

    .venv/bin/python scripts/bench_small_tensors.py                       # 20,000 (3 reps) and 200,000 tensors (1)
    .venv/bin/python scripts/bench_small_tensors.py --tensors 20000 --scale 0 --reps 5 --json

The checkpoint is a `torch.nn.ModuleList` of tiny `Linear(4, 4)` layers (a weight and a bias each:
MoE language models have tens of thousands of tensors), its state dict written with `torch.save`.
Each repetition runs every contender as its own process, in an order rotated from one repetition to
the next, each starting warm (the last output deleted, `sync`, the source read once, the tool's
bytecode written by an untimed first run; none of it timed), and records wall and CPU time:

  peer    `torch.load(weights_only=True)` then `safetensors.torch.save_file`, torch's import included
  tool    `convert pth-to-safetensors SRC OUT` (fsyncs its output, writes the manifest, BLAKE3 digests)
  verify  `convert verify OUT --source SRC` on an output the tool wrote before the runs

Targets (issue 33), on --tensors: the tool's and verify's median wall time at most 0.5x the peer's,
measured side by side. With --scale N the same runs on N tensors, and the cost per tensor between
the two sizes (the slope, in microseconds) is printed beside the cost per tensor at the small size:
a slope no larger than that average says the work grows linearly. The exit status is 1 when a target
fails. The machine may be shared: ratios from one invocation beat absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pytorch import Runner, _log, prepare, tool_command  # noqa: E402

TARGET = 0.5  # tool (and verify) wall time / peer wall time
LAYER = (4, 4)  # each Linear: a 4x4 weight and a bias of 4


def generate(path: Path, tensors: int) -> None:
    """A ModuleList of `tensors // 2` tiny Linear layers, its state dict saved with torch.save."""
    import torch

    torch.manual_seed(0)
    layers = torch.nn.ModuleList(torch.nn.Linear(*LAYER) for _ in range(tensors // 2))
    torch.save(layers.state_dict(), path)


def peer(src: Path, dst: Path) -> None:
    """What a user without this tool would run: torch's own loader, then safetensors' own writer."""
    import torch
    from safetensors.torch import save_file

    dst.parent.mkdir(parents=True, exist_ok=True)
    save_file(torch.load(src, weights_only=True), dst)


def commands(src: Path, out: Path, verified: Path) -> dict[str, list[str]]:
    me = [sys.executable, str(Path(__file__).resolve())]
    return {
        "peer": [*me, "--_peer", str(src), str(out / "model.safetensors")],
        "tool": [*tool_command(), "pth-to-safetensors", str(src), str(out), "--json"],
        "verify": [*tool_command(), "verify", str(verified), "--source", str(src), "--json"],
    }


def measure(runner: Runner, tensors: int, reps: int) -> dict[str, dict[str, float]]:
    """Median wall and CPU seconds of each contender on a checkpoint of `tensors` tensors."""
    src = runner.workdir / f"modulelist-{tensors}.pt"
    if not src.exists():
        _log(f"writing {tensors} tensors with torch.save ...")
        runner.run("generate", [sys.executable, str(Path(__file__).resolve()), "--_generate", str(src), str(tensors)])
    out, verified = runner.workdir / "out", runner.workdir / f"verified-{tensors}"
    if not verified.exists():
        runner.run("prepare", commands(src, verified, verified)["tool"])
    cmds = commands(src, out, verified)
    names = list(cmds)
    samples: dict[str, list[tuple[float, float]]] = {name: [] for name in names}
    for rep in range(reps):
        order = names[rep % len(names) :] + names[: rep % len(names)]
        for name in order:
            prepare(src, out)
            wall, cpu, _rss, _stdout = runner.run(name, cmds[name])
            samples[name].append((wall, cpu))
            _log(f"{tensors} tensors, rep {rep + 1}: {name} {wall:.2f} s wall, {cpu:.2f} s CPU (load {os.getloadavg()[0]:.1f})")
    return {
        name: {
            "wall_s": statistics.median(w for w, _ in runs),
            "cpu_s": statistics.median(c for _, c in runs),
        }
        for name, runs in samples.items()
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tensors", type=int, default=20_000, help="tensors of the checkpoint the targets are judged on")
    parser.add_argument("--scale", type=int, default=200_000, help="a second, larger count for the slope (0: none)")
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--scale-reps", type=int, default=1, help="repetitions at --scale (each takes a minute or more)")
    parser.add_argument("--workdir", type=Path, help="where checkpoints and outputs go (default: a temporary folder)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    parser.add_argument("--_generate", nargs=2, help=argparse.SUPPRESS)
    parser.add_argument("--_peer", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._generate:
        return generate(Path(args._generate[0]), int(args._generate[1]))
    if args._peer:
        return peer(Path(args._peer[0]), Path(args._peer[1]))
    # An installed tool runs from bytecode (pip compiles it), as torch does; a checkout run with
    # PYTHONDONTWRITEBYTECODE would compile every module of the tool in every run, torch's not.
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)
    with tempfile.TemporaryDirectory(prefix="bench-small-", dir=args.workdir) as tmp:
        runner = Runner(Path(tmp))
        results = {args.tensors: measure(runner, args.tensors, args.reps)}
        if args.scale:
            results[args.scale] = measure(runner, args.scale, args.scale_reps)
    report = summarize(results, args.tensors, args.scale)
    if args.json:
        print(json.dumps(report, indent=1))
    else:
        print_report(report)
    sys.exit(0 if all(c["ok"] for c in report["checks"]) else 1)


def summarize(results: dict[int, dict[str, dict[str, float]]], small: int, scale: int) -> dict:
    base = results[small]
    checks = [
        {
            "what": f"{name} wall / peer wall at {small} tensors",
            "ratio": base[name]["wall_s"] / base["peer"]["wall_s"],
            "target": TARGET,
            "ok": base[name]["wall_s"] <= TARGET * base["peer"]["wall_s"],
        }
        for name in ("tool", "verify")
    ]
    kinds = ("wall", "cpu")
    per_tensor = {
        name: {
            **{f"us_per_tensor_{kind}": 1e6 * base[name][f"{kind}_s"] / small for kind in kinds},
            **{
                f"slope_us_per_tensor_{kind}": 1e6
                * (results[scale][name][f"{kind}_s"] - base[name][f"{kind}_s"])
                / (scale - small)
                for kind in (kinds if scale else ())
            },
        }
        for name in base
    }
    cpu_ratios = {name: base[name]["cpu_s"] / base["peer"]["cpu_s"] for name in ("tool", "verify")}
    return {
        "tensors": small,
        "scale": scale or None,
        "results": results,
        "per_tensor": per_tensor,
        "cpu_ratios": cpu_ratios,
        "checks": checks,
    }


def print_report(report: dict) -> None:
    small, scale = report["tensors"], report["scale"]
    header = "".join(f"{f'{n} tensors: wall (CPU)':>30}" for n in report["results"])
    slope = f"{'slope us/tensor':>22}" if scale else ""
    print(f"\n{'contender':<10}{header}{'us/tensor wall (CPU)':>24}{slope}")
    for name, cost in report["per_tensor"].items():
        cells = "".join(
            f"{'{:.2f} s ({:.2f} s)'.format(r[name]['wall_s'], r[name]['cpu_s']):>30}" for r in report["results"].values()
        )
        each = "{:.0f} ({:.0f})".format(cost["us_per_tensor_wall"], cost["us_per_tensor_cpu"])
        more = "{:.0f} ({:.0f})".format(cost["slope_us_per_tensor_wall"], cost["slope_us_per_tensor_cpu"]) if scale else ""
        print(f"{name:<10}{cells}{each:>24}{more:>22}")
    print()
    for check in report["checks"]:
        print(f"{'ok  ' if check['ok'] else 'FAIL'} {check['what']}: {check['ratio']:.2f}x (target <= {check['target']}x)")
    print("     CPU / peer CPU (informational): " + ", ".join(f"{k} {v:.2f}x" for k, v in report["cpu_ratios"].items()))
    if scale:
        print(f"(slope: the cost per tensor between {small} and {scale} tensors, wall and CPU)")


if __name__ == "__main__":
    main()
