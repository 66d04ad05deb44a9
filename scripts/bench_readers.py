"""Benchmark every reader but PyTorch's (scripts/bench_pytorch.py) against the contract's floor and `cp`.

    .venv/bin/python scripts/bench_readers.py                       # every family, 1 GiB, 3 reps
    .venv/bin/python scripts/bench_readers.py --family keras-h5 --size-gib 2 --reps 5

Each family's model is written by its own library (Keras 3 with the numpy backend, flax.serialization,
onnx with external data, safetensors, NeuralForecast.save, tf.train.Checkpoint.write, Keras's SavedModel
export), about --size-gib of float32 Dense/Linear weights, into a folder of its own (`burn-native` is the
SafeTensors model re-laid to burn's own layout, every Linear weight transposed). Each repetition runs
`cp -r` of that folder, `cp -r` followed by `sync` (the copy made durable, as the tool makes its output
before it exits 0), the floor (the least work the manifest's contract asks: each file copied in the
kernel and flushed as it lands, three BLAKE3 passes over its bytes in threads, fsync; as in
bench_pytorch.py) and the matching `convert` command, as separate processes, in an order rotating from
one repetition to the next, each starting warm (the previous output deleted, `sync`, the source read
once; none of it timed), and records wall time, CPU time (user + system) and peak RSS (GNU time's %M
when present). Medians over repetitions, maximum for RSS.

Targets (issue 33): the tool's CPU time at most 1.3x the floor's for readers that copy tensors, 1.6x
for those that transpose (Keras, Flax, TF checkpoints, burn-native); peak RSS at most 200 MiB. Wall
time against cp+sync is printed beside it: this disk's wall times vary 3x from one hour to the next.
The machine may be shared: the load average is printed, and ratios from one invocation beat times.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_pytorch import MiB, Runner, _log, _need_space, floor_convert, tool_command  # noqa: E402

RSS_TARGET_MIB = 200.0
# CPU targets against the floor (issue 33): readers that copy tensors, and those that transpose.
COPY_TARGET, TRANSPOSE_TARGET = 1.3, 1.6
TRANSPOSING = ("keras-h5", "keras", "flax", "tensorflow", "burn-native")
WIDTH = 4096  # Dense/Linear width: 64 MiB of float32 per weight matrix


def _layers(size_bytes: int) -> int:
    return max(1, round(size_bytes / (WIDTH * WIDTH * 4)))


def _weights(n: int) -> list[tuple[object, object]]:
    """n (kernel [in, out], bias) pairs of random float32, made one at a time by the caller's loop."""
    import numpy as np

    rng = np.random.default_rng(0)
    return [(rng.random((WIDTH, WIDTH), dtype=np.float32) - 0.5, rng.random(WIDTH, dtype=np.float32)) for _ in range(n)]


def generate(family: str, folder: Path, size_bytes: int) -> None:
    """Write the family's model into `folder` with the family's own library."""
    folder.mkdir(parents=True)
    n = _layers(size_bytes)
    if family in ("keras-h5", "keras"):
        os.environ["KERAS_BACKEND"] = "numpy"
        import keras

        model = keras.Sequential([keras.Input((WIDTH,)), *(keras.layers.Dense(WIDTH) for _ in range(n))])
        if family == "keras":
            model.save(folder / "model.keras")
        else:
            model.save_weights(folder / "model.weights.h5")
            (folder / "config.json").write_text(model.to_json())
    elif family == "flax":
        from flax import serialization

        params = {f"Dense_{i}": {"kernel": k, "bias": b} for i, (k, b) in enumerate(_weights(n))}
        (folder / "flax_model.msgpack").write_bytes(serialization.to_bytes({"params": params}))
    elif family == "onnx":
        import onnx
        from onnx import TensorProto, helper, numpy_helper

        nodes, inits, prev = [], [], "x"
        for i, (k, b) in enumerate(_weights(n)):
            inits += [numpy_helper.from_array(k, f"fc{i}.weight"), numpy_helper.from_array(b, f"fc{i}.bias")]
            nodes += [
                helper.make_node("MatMul", [prev, f"fc{i}.weight"], [f"m{i}"]),
                helper.make_node("Add", [f"m{i}", f"fc{i}.bias"], [f"y{i}"]),
            ]
            prev = f"y{i}"
        graph = helper.make_graph(
            nodes,
            "mlp",
            [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, WIDTH])],
            [helper.make_tensor_value_info(prev, TensorProto.FLOAT, [1, WIDTH])],
            inits,
        )
        onnx.save_model(
            helper.make_model(graph),
            folder / "model.onnx",
            save_as_external_data=True,
            all_tensors_to_one_file=True,
            location="model.onnx.data",
        )
    elif family in ("safetensors", "burn-native"):
        from safetensors.numpy import save_file

        tensors = {}
        for i, (k, b) in enumerate(_weights(n)):
            tensors[f"layers.{i}.weight"], tensors[f"layers.{i}.bias"] = k.T.copy(), b  # torch's [out, in]
        save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
    elif family == "neuralforecast":
        _neuralforecast(folder, n)
    elif family == "tensorflow":
        _tensorflow(folder, n, savedmodel=False)
    elif family == "tf-savedmodel":  # Keras's export stores every variable twice: half the layers
        _tensorflow(folder, max(1, n // 2), savedmodel=True)
    else:
        raise SystemExit(f"unknown family {family}")


def _neuralforecast(folder: Path, n: int) -> None:
    """`NeuralForecast.save` of an MLP of n 4096-by-4096 hidden layers after its input layer, fitted
    with max_steps=0 on a tiny synthetic series (that prepares the forecaster and trains nothing, so
    no optimizer state the size of the model is ever allocated)."""
    import logging
    import warnings

    import numpy as np
    import pandas as pd
    from neuralforecast import NeuralForecast
    from neuralforecast.models import MLP

    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)
    trainer = dict(max_steps=0, enable_progress_bar=False, enable_model_summary=False, logger=False, accelerator="cpu")
    model = MLP(h=12, input_size=24, hidden_size=WIDTH, num_layers=n + 1, **trainer)
    frame = pd.DataFrame(
        {"unique_id": "s", "ds": pd.date_range("2000-01-01", periods=60, freq="MS"), "y": np.arange(60, dtype=float)}
    )
    nf = NeuralForecast(models=[model], freq="MS")
    nf.fit(frame)
    folder.rmdir()  # NeuralForecast.save makes the folder itself
    nf.save(str(folder), overwrite=True)


def _tensorflow(folder: Path, n: int, savedmodel: bool) -> None:
    """A Keras MLP of n 4096-wide Dense layers as `tf.train.Checkpoint(model=...).write` (TF's own
    checkpoint format: an `.index` table and one `.data-*` shard), or as the SavedModel `model.export`
    writes (the same format under variables/)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    import tensorflow as tf

    model = tf.keras.Sequential([tf.keras.Input((WIDTH,)), *(tf.keras.layers.Dense(WIDTH) for _ in range(n))])
    if savedmodel:
        model.export(str(folder), verbose=False)
    else:
        tf.train.Checkpoint(model=model).write(str(folder / "ckpt"))


FAMILIES = ("keras-h5", "keras", "flax", "onnx", "safetensors", "burn-native", "neuralforecast", "tensorflow", "tf-savedmodel")


def convert_command(family: str, folder: Path, out: Path) -> list[str]:
    src = {
        "keras-h5": ["keras-to-safetensors", folder / "model.weights.h5", out, "--config", folder / "config.json"],
        "keras": ["keras-to-safetensors", folder / "model.keras", out],
        "flax": ["flax-to-safetensors", folder / "flax_model.msgpack", out],
        "onnx": ["onnx-to-safetensors", folder / "model.onnx", out],
        "safetensors": ["auto", folder / "model.safetensors", out, "--layout", "burn"],
        "burn-native": ["auto", folder / "model.safetensors", out, "--layout", "burn-native"],
        "neuralforecast": ["nf-to-safetensors", folder, out],
        "tensorflow": ["tf-to-safetensors", folder, out],
        "tf-savedmodel": ["tf-to-safetensors", folder, out],
    }[family]
    return [*tool_command(), *map(str, src), "--json"]


def _files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if p.is_file()]


def prepare(folder: Path, out: Path) -> None:
    shutil.rmtree(out, ignore_errors=True)
    subprocess.run(["sync"], check=True)
    for path in _files(folder):
        with open(path, "rb") as fh:
            while fh.read(8 * MiB):
                pass


def floor_folder(folder: Path, out: Path) -> None:
    """The floor contender for a source folder: each file copied and hashed as bench_pytorch's floor
    copies and hashes one (kernel copy flushed as it lands, three BLAKE3 passes in threads, fsync)."""
    for path in _files(folder):
        floor_convert(path, out / path.relative_to(folder))


def bench(runner: Runner, family: str, folder: Path, reps: int) -> dict:
    out = runner.workdir / "out"
    cmds = {
        "cp": ["cp", "-r", str(folder), str(out)],
        "cp+sync": ["sh", "-c", 'cp -r "$1" "$2" && sync', "sh", str(folder), str(out)],
        "floor": [sys.executable, __file__, "--_floor", str(folder), str(out)],
        "tool": convert_command(family, folder, out),
    }
    samples: dict[str, list[tuple[float, float, float]]] = {name: [] for name in cmds}
    order = list(cmds)
    for rep in range(reps):
        for name in order[rep % len(order) :] + order[: rep % len(order)]:
            prepare(folder, out)
            wall, cpu, rss, _ = runner.run(name, cmds[name])
            samples[name].append((wall, cpu, rss))
            _log(
                f"  [{family}] rep {rep + 1}/{reps} {name:<7} {wall:6.2f} s wall {cpu:6.2f} s CPU {rss:7.1f} MiB "
                f"(load {os.getloadavg()[0]:.1f})"
            )
    shutil.rmtree(out, ignore_errors=True)
    med = {
        name: {
            "wall_s": round(statistics.median(s[0] for s in v), 3),
            "cpu_s": round(statistics.median(s[1] for s in v), 2),
            "rss_max_mib": round(max(s[2] for s in v), 1),
        }
        for name, v in samples.items()
    }
    size = sum(p.stat().st_size for p in _files(folder))
    target = TRANSPOSE_TARGET if family in TRANSPOSING else COPY_TARGET
    return {
        "family": family,
        "source_bytes": size,
        **med,
        "tool/floor CPU": round(med["tool"]["cpu_s"] / med["floor"]["cpu_s"], 2),
        "cpu target": target,
        "tool/cp+sync wall": round(med["tool"]["wall_s"] / med["cp+sync"]["wall_s"], 2),
        "cpu ok": med["tool"]["cpu_s"] <= target * med["floor"]["cpu_s"],
        "rss ok": med["tool"]["rss_max_mib"] <= RSS_TARGET_MIB,
    }


def main() -> None:
    if len(sys.argv) == 5 and sys.argv[1] == "--_generate":
        generate(sys.argv[2], Path(sys.argv[3]), int(sys.argv[4]))
        return
    if len(sys.argv) == 4 and sys.argv[1] == "--_floor":
        floor_folder(Path(sys.argv[2]), Path(sys.argv[3]))
        return
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--family", action="append", choices=FAMILIES, help="repeatable (default: all)")
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--workdir", type=Path, help="scratch folder; models there are reused (default: new, removed)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    workdir = args.workdir.absolute() if args.workdir else Path(tempfile.mkdtemp(prefix="bench_readers-"))
    workdir.mkdir(parents=True, exist_ok=True)
    size = int(args.size_gib * 2**30)
    load_before = os.getloadavg()[0]
    rows = []
    try:
        runner = Runner(workdir)
        for family in args.family or FAMILIES:
            folder = workdir / f"{family}-{args.size_gib:g}GiB"
            if not folder.is_dir():
                _need_space(workdir, 2.5 * size)
                _log(f"generating {folder} ...")
                proc = subprocess.run(
                    [sys.executable, __file__, "--_generate", family, str(folder), str(size)], capture_output=True, text=True
                )
                if proc.returncode != 0:
                    shutil.rmtree(folder, ignore_errors=True)
                    sys.exit(f"bench: generating {family} failed:\n{proc.stderr[-3000:]}")
            rows.append(bench(runner, family, folder, args.reps))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)
    note = f"{os.cpu_count()} CPUs, load average {load_before:.1f} at start, {os.getloadavg()[0]:.1f} at end; {runner.rss_note}"
    if args.json:
        print(json.dumps({"rows": rows, "note": note}, indent=2))
        return
    print(
        f"{'family':<13} {'GiB':>5} {'floor CPU s':>11} {'tool CPU s':>10} {'CPU/floor':>9} {'target':>6} "
        f"{'cp+sync s':>9} {'tool s':>7} {'wall/cp+sync':>12} {'peak MiB':>9}"
    )
    for r in rows:
        flag = ("" if r["cpu ok"] else " CPU over target") + ("" if r["rss ok"] else f" rss>{RSS_TARGET_MIB:g}")
        print(
            f"{r['family']:<13} {r['source_bytes'] / 2**30:>5.2f} {r['floor']['cpu_s']:>11.2f} {r['tool']['cpu_s']:>10.2f} "
            f"{r['tool/floor CPU']:>8.2f}x {r['cpu target']:>5.1f}x {r['cp+sync']['wall_s']:>9.2f} "
            f"{r['tool']['wall_s']:>7.2f} {r['tool/cp+sync wall']:>11.2f}x {r['tool']['rss_max_mib']:>9.1f}{flag}"
        )
    print(f"note: {note}")


if __name__ == "__main__":
    main()
