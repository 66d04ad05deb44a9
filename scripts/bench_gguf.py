"""Benchmark `convert to-gguf --type q8_0` against the `gguf` package doing the same job the way
llama.cpp's converter does, and against `cp`+`sync` of the source, in one run.

    .venv/bin/python scripts/bench_gguf.py                 # ~1 GiB of float32 weights, 3 repetitions
    .venv/bin/python scripts/bench_gguf.py --reps 5 --also-double --json
    .venv/bin/python scripts/bench_gguf.py --reps 2 --q4-k          # also to-gguf --type q4_k

The checkpoint is scripts/bench_pytorch.py's GPT-2-like fp32 state dict (torch.save). Contenders,
each its own process, their order rotated from one repetition to the next:

  cp+sync   `cp SRC DST && sync DST`: the source copied and made durable
  tool      `convert to-gguf SRC OUT --type q8_0` (streaming, BLAKE3 digests, the quantization error
            measured per tensor, fsynced, a manifest)
  baseline  a fresh process: `torch.load(weights_only=True)`, then for every tensor
            `gguf.quants.quantize(..., Q8_0)` (1-D tensors kept F32, as convert_hf_to_gguf.py keeps
            them) added to a `gguf.GGUFWriter`, which writes the file (no fsync, no digests)
  verify    `convert verify OUT --source SRC` on an output the tool wrote before the runs
            (re-quantizes every tensor and compares bytes)
  tool-q4_k `convert to-gguf SRC OUT --type q4_k` (with --q4-k): its MB/s of float32 input and memory
            (the K-quants compiled when numba, the `fast` extra, is installed; CONVERT_GGUF_KERNELS=numpy
            in the environment times the numpy ones)

Peak RSS, wall and CPU time (user + system, every thread) as in bench_pytorch.py (GNU time when it
works). Targets (issue 31): the tool no slower than the baseline and at most 2x cp+sync; q4_k at
least 100 MB/s; peak RSS at most 200 MiB for both, flat from 1 to 2 GiB (--also-double). The ratios
are printed for wall and CPU time, all from this one run; on a shared machine (load average above the
CPU count) the wall ratios mostly measure the others' load. Exit status 1 when a target fails.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

from bench_pytorch import Runner, make_checkpoint, prepare, tool_command

RSS_TARGET_MIB = 200.0
BASELINE_TARGET = 1.0  # tool wall / baseline wall
CP_TARGET = 2.0  # tool wall / cp+sync wall
Q4_K_TARGET_MBS = 100.0  # to-gguf --type q4_k: MB/s of float32 input, at least


def baseline_convert(src: Path, dst: Path) -> None:
    """torch.load, then the gguf package's quantizer and writer, as llama.cpp's converter does it."""
    import gguf
    import numpy as np
    import torch

    state = torch.load(src, map_location="cpu", weights_only=True)
    writer = gguf.GGUFWriter(dst, "gpt2")
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_Q8_0)
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    for name, tensor in state.items():
        data = tensor.contiguous().numpy().astype(np.float32, copy=False)
        if data.ndim < 2 or data.shape[-1] % 32:
            writer.add_tensor(name, data, raw_dtype=gguf.GGMLQuantizationType.F32)
            continue
        q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, q, raw_dtype=gguf.GGMLQuantizationType.Q8_0)  # the shape comes from the bytes
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def contenders(src: Path, out: Path, verified: Path, q4_k: bool) -> dict[str, list[str]]:
    me = str(Path(__file__).resolve())
    cmds = {
        "cp+sync": ["sh", "-c", 'mkdir "$1" && cp "$3" "$2" && sync "$2"', "sh", str(out), str(out / "model.bin"), str(src)],
        "tool": [*tool_command(), "to-gguf", str(src), str(out), "--type", "q8_0", "--json"],
        "baseline": [sys.executable, me, "--_baseline", str(src), str(out / "model.gguf")],
        "verify": [*tool_command(), "verify", str(verified), "--source", str(src), "--json"],
    }
    if q4_k:
        cmds["tool-q4_k"] = [*tool_command(), "to-gguf", str(src), str(out), "--type", "q4_k", "--json"]
    return cmds


def scenario(runner: Runner, src: Path, reps: int, label: str, q4_k: bool) -> dict[str, dict[str, float]]:
    out, verified = runner.workdir / "out", runner.workdir / "verified"
    shutil.rmtree(verified, ignore_errors=True)
    runner.run("tool", [*tool_command(), "to-gguf", str(src), str(verified), "--type", "q8_0"])  # untimed
    if q4_k:  # untimed: numba compiles the K-quant kernels once per install (or edit), then loads them
        shutil.rmtree(out, ignore_errors=True)
        runner.run("tool-q4_k", [*tool_command(), "to-gguf", str(src), str(out), "--type", "q4_k"])
    cmds = contenders(src, out, verified, q4_k)
    order = list(cmds)
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in order}
    for rep in range(reps):
        for name in order[rep % len(order) :] + order[: rep % len(order)]:
            prepare(src, out)
            if name == "baseline":
                out.mkdir()
            wall, cpu, rss, _ = runner.run(name, cmds[name])
            samples[name].append((wall, cpu, rss))
            print(
                f"  [{label}] rep {rep + 1}/{reps} {name:<8} {wall:7.2f} s wall {cpu:6.2f} s CPU {rss:8.1f} MiB", file=sys.stderr
            )
    shutil.rmtree(out, ignore_errors=True)
    shutil.rmtree(verified, ignore_errors=True)
    return {
        name: {
            "wall_median_s": round(statistics.median(s[0] for s in runs), 3),
            "cpu_median_s": round(statistics.median(s[1] for s in runs), 2),
            "rss_max_mib": max(s[2] for s in runs),
        }
        for name, runs in samples.items()
    }


def _row(target: str, value: float, limit: float) -> dict[str, object]:
    return {"target": target, "value": round(value, 2), "limit": limit, "ok": value <= limit}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--also-double", action="store_true", help="also run on a checkpoint twice as large (RSS flat?)")
    parser.add_argument("--workdir", type=Path, help="keep the checkpoints here between runs")
    parser.add_argument(
        "--q4-k",
        action="store_true",
        help="also time to-gguf --type q4_k (about 8 CPU s per GiB with the fast extra, 27 without)",
    )
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--_baseline", nargs=2, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args._baseline:
        baseline_convert(Path(args._baseline[0]), Path(args._baseline[1]))
        return 0
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench-gguf-"))
    workdir.mkdir(parents=True, exist_ok=True)
    runner = Runner(workdir)
    sizes = [args.size_gib] + ([2 * args.size_gib] if args.also_double else [])
    results = {}
    for size in sizes:
        src, info = make_checkpoint(workdir, size * (1 << 30) / 1e9)
        results[f"{size:g} GiB"] = {"model": info, "summary": scenario(runner, src, args.reps, f"{size:g} GiB", args.q4_k)}
    rows = []
    for label, r in results.items():
        s = r["summary"]
        tool = s["tool"]["wall_median_s"]
        rows += [
            _row(f"tool / baseline wall ({label})", tool / s["baseline"]["wall_median_s"], BASELINE_TARGET),
            _row(f"tool / cp+sync wall ({label})", tool / s["cp+sync"]["wall_median_s"], CP_TARGET),
            _row(f"tool peak RSS MiB ({label})", s["tool"]["rss_max_mib"], RSS_TARGET_MIB),
            _row(f"verify --source peak RSS MiB ({label})", s["verify"]["rss_max_mib"], RSS_TARGET_MIB),
        ]
        cpu_rows = [  # CPU time: the yardstick on a shared, noisy machine; informational
            _row(f"tool / baseline CPU ({label}, informational)", s["tool"]["cpu_median_s"] / s["baseline"]["cpu_median_s"], 1.0),
            _row(
                f"tool / cp+sync CPU ({label}, informational)",
                s["tool"]["cpu_median_s"] / s["cp+sync"]["cpu_median_s"],
                CP_TARGET,
            ),
        ]
        if "tool-q4_k" in s:
            q4 = s["tool-q4_k"]
            mbs = r["model"]["tensor_bytes"] / 1e6
            rows += [
                _row(f"q4_k seconds per 100 MB of f32 ({label})", q4["wall_median_s"] / mbs * 100, 100 / Q4_K_TARGET_MBS),
                _row(f"tool-q4_k peak RSS MiB ({label})", q4["rss_max_mib"], RSS_TARGET_MIB),
            ]
            cpu_rows.append(
                _row(f"q4_k CPU seconds per 100 MB of f32 ({label}, informational)", q4["cpu_median_s"] / mbs * 100, 1.0)
            )
        rows += [{**row, "informational": True} for row in cpu_rows]
    if args.json:
        print(json.dumps({"results": results, "targets": rows, "rss": runner.rss_note}, indent=1))
    else:
        for label, r in results.items():
            for name, s in r["summary"].items():
                wall, cpu, rss = s["wall_median_s"], s["cpu_median_s"], s["rss_max_mib"]
                print(f"{label:>8} {name:<8} {wall:7.2f} s wall {cpu:7.2f} s CPU {rss:7.1f} MiB")
        for row in rows:
            print(f"{'PASS' if row['ok'] else 'FAIL'} {row['target']}: {row['value']} (limit {row['limit']})")
    if not args.workdir:
        shutil.rmtree(workdir, ignore_errors=True)
    return 0 if all(row["ok"] for row in rows if not row.get("informational")) else 1


if __name__ == "__main__":
    sys.exit(main())
