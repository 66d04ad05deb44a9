"""Generate the corpus of hostile inputs that every reader must refuse.

Every PyTorch file starts from a real ``torch.save`` of a small state dict; the object pickle is
then replaced by a hand-assembled one, so each gadget is spelled out opcode by opcode and the
corpus documents exactly which constructs the restricted unpickler has to reject. The other
containers are assembled the same way, field by field: SafeTensors headers, Flax msgpack (its
extension type 1 arrays), HDF5 and ``.keras`` files (written with h5py alone, when it is
installed), NeuralForecast save folders whose pickles name unknown classes, TorchScript archives
(data.pkl, constants.pkl and the code/ text), NumPy ``.npy``/``.npz`` files and pickles of arrays,
and TFLite flatbuffers (written by a small flatbuffer writer). Each container has its module in
scripts/hostile_corpus/; this script gathers them, writes the corpus and its catalog, and checks it.

Canary convention: every payload that executes code (if it ever ran) only creates a file named
``canary`` in the current working directory. Tests run the converter in an empty temporary cwd
and assert that ``canary`` never appears. Payloads do nothing else.

Usage::

    .venv/bin/python scripts/make_hostile.py [--out fixtures/hostile] [--self-check]

``--self-check`` loads every generated file that has an unsafe loader -- plain ``pickle.load``,
``torch.load(weights_only=False)``, ``torch.jit.load`` (then the module called once, then the
archive's pickles through pickle with stand-ins for ``__torch__`` classes), ``np.load(allow_pickle=True)``
-- in a throw-away subprocess and temp cwd, to prove each code-execution payload really creates the
canary; it first checks that the unedited containers load in their own frameworks. Tests never run
it. Files of the other kinds (SafeTensors, msgpack, HDF5, TFLite) have no unsafe loader and are
listed as not checked.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pickle
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from hostile_corpus.common import CANARY, DEFAULT_OUT, SIZE, WEIGHT_BYTES, Hostile
from hostile_corpus.h5_files import h5_files, stored_zip
from hostile_corpus.msgpack_files import msgpack_files
from hostile_corpus.nf_folders import neuralforecast_files, nf_config_value_files
from hostile_corpus.numpy_files import npy_header, npy_objects, numpy_files, objects, weight_array
from hostile_corpus.pickles import LEGACY, ZIP, benign, dump
from hostile_corpus.safetensors_files import safetensors_files
from hostile_corpus.tflite_files import tflite_files, tflite_model
from hostile_corpus.torch_files import (
    TorchBase,
    base_state,
    container_files,
    gadget_files,
    legacy_checkpoint,
    pickle_in_storage_files,
    raw_files,
    torch_base,
    zip_checkpoint,
)
from hostile_corpus.torchscript_archives import torchscript_files, ts_archive, ts_module


def has_h5py() -> bool:
    import importlib.util

    return importlib.util.find_spec("h5py") is not None


def corpus() -> list[Hostile]:
    base = torch_base()
    pickles = gadget_files(base) + pickle_in_storage_files(base) + container_files(base) + raw_files()
    others = (
        safetensors_files()
        + msgpack_files()
        + (h5_files() if has_h5py() else [])
        + neuralforecast_files(base)
        + nf_config_value_files()
        + torchscript_files()
        + numpy_files()
        + tflite_files()
    )
    return pickles + others


def write_corpus(files: Sequence[Hostile], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for item in files:
        if isinstance(item.data, bytes):
            (out / item.file).write_bytes(item.data)
            continue
        (out / item.file).mkdir(exist_ok=True)
        for name, data in item.data.items():
            (out / item.file / name).write_bytes(data)
    catalog = [{"file": f.file, "kind": f.kind, "attack": f.attack, "expect": f.expect} for f in files]
    (out / "catalog.json").write_text(json.dumps(catalog, indent=2) + "\n")


# Forged sizes make torch attempt multi-TiB allocations; the address-space cap fails them fast.
CHILD_PRELUDE = "import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))\n"
TORCH_LOAD = "import torch\ntorch.load(sys.argv[1], weights_only=False)"
NF_LOAD = (
    "import pathlib, pickle, torch\n"
    "for p in sorted(pathlib.Path(sys.argv[1]).iterdir()):\n"
    "    try:\n"
    "        torch.load(p, weights_only=False) if p.suffix == '.ckpt' else pickle.load(open(p, 'rb'))\n"
    "    except Exception as exc:\n"
    "        print(p.name, type(exc).__name__, exc, file=sys.stderr)\n"
)
PICKLE_LOAD = "import pickle\nwith open(sys.argv[1], 'rb') as f:\n    pickle.load(f)"
# torch.jit.load runs the archive's code (__setstate__ on load, forward when called); then every pickle
# of the archive through pickle with stand-ins for __torch__ classes and empty storages, as a reader
# would that only widened pickle's globals for TorchScript.
TORCHSCRIPT_LOAD = (
    "import pickle, torch, zipfile\n"
    "try:\n"
    "    torch.jit.load(sys.argv[1])(torch.ones(1, 3))\n"
    "except Exception as exc:\n"
    "    print('torch.jit.load', type(exc).__name__, file=sys.stderr)\n"
    "class Stub:\n"
    "    def __init__(self, *args, **kwargs): pass\n"
    "    def __setstate__(self, state): pass\n"
    "class Widened(pickle.Unpickler):\n"
    "    def find_class(self, module, name):\n"
    "        return Stub if module.startswith('__torch__') else super().find_class(module, name)\n"
    "    def persistent_load(self, pid):\n"
    "        return pid[1](pid[4])\n"
    "with zipfile.ZipFile(sys.argv[1]) as zf:\n"
    "    for name in [n for n in zf.namelist() if n.endswith('.pkl')]:\n"
    "        try:\n"
    "            Widened(zf.open(name)).load()\n"
    "        except Exception as exc:\n"
    "            print(name, type(exc).__name__, exc, file=sys.stderr)\n"
)
NUMPY_LOAD = "import numpy as np\nwith np.load(sys.argv[1], allow_pickle=True) as d:\n    [d[k] for k in d.files]"
LOADERS = {
    "raw-pickle": PICKLE_LOAD,
    "zip": TORCH_LOAD,
    "legacy": TORCH_LOAD,
    "neuralforecast": NF_LOAD,
    "torchscript": TORCHSCRIPT_LOAD,
    "npy": "import numpy as np\nnp.load(sys.argv[1], allow_pickle=True)",
    "npz": NUMPY_LOAD,
    "numpy-pickle": PICKLE_LOAD,
}


def creates_canary(path: Path, kind: str) -> tuple[bool, str]:
    """Load ``path`` unsafely in a child process inside an empty temp cwd; report canary and outcome."""
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD_PRELUDE + LOADERS[kind], str(path.resolve())],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
        )
        canary = Path(cwd, CANARY)
        deadline = time.monotonic() + 3  # popen-style payloads finish after the loader exits
        while not canary.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = proc.stderr.strip().splitlines()
        outcome = "loaded" if proc.returncode == 0 else (lines[-1][:90] if lines else f"exit {proc.returncode}")
        return canary.exists(), outcome


def check_benign_round_trip(base: TorchBase) -> None:
    """The assembled containers must be real checkpoints, so hostile files differ only by their gadget."""
    expected = base_state()["weight"]
    for name, data in (
        ("zip", zip_checkpoint(base, dump(benign(ZIP)))),
        ("legacy", legacy_checkpoint(base, dump(benign(LEGACY)))),
    ):
        loaded = torch.load(io.BytesIO(data), weights_only=True)
        if not torch.equal(loaded["weight"], expected):
            raise SystemExit(f"benign {name} checkpoint does not round-trip")
        print(f"benign {name} container round-trips through torch.load(weights_only=True)")
    check_benign_other_containers(expected.numpy())


def check_benign_other_containers(expected: object) -> None:
    """The TorchScript, NumPy and TFLite containers, unedited, load in their own frameworks and hold the
    base tensor, so each hostile file differs from a real one only by its attack."""
    import numpy as np

    npy = npy_header("<f4", SIZE) + WEIGHT_BYTES
    object_npy = npy_objects(objects(weight_array()))
    script = torch.jit.load(io.BytesIO(ts_archive(dump(ts_module()))))
    loaded = {
        "TorchScript (torch.jit.load)": script.state_dict()["weight"].numpy(),
        "npy (np.load)": np.load(io.BytesIO(npy)),
        "npz (np.load)": np.load(io.BytesIO(stored_zip([("weight.npy", npy)])))["weight"],
        "numpy pickle (pickle.loads)": pickle.loads(dump({"weight": weight_array()}, 3))["weight"],
        "object-array npy (np.load, allow_pickle)": np.load(io.BytesIO(object_npy), allow_pickle=True)[()],
    }
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf
    except ImportError:
        print("TensorFlow not installed: the TFLite container is not checked")
    else:
        interpreter = tf.lite.Interpreter(model_content=tflite_model())
        interpreter.allocate_tensors()
        weight_detail = next(d for d in interpreter.get_tensor_details() if d["name"] == "weight")
        loaded["TFLite (tf.lite.Interpreter)"] = interpreter.get_tensor(weight_detail["index"])
    for name, value in loaded.items():
        if not np.array_equal(value, expected) or value.dtype != np.float32:
            raise SystemExit(f"benign {name} container does not round-trip")
        print(f"benign {name} container round-trips")


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no "


def self_check(files: Sequence[Hostile], out: Path) -> int:
    """Prove every code-execution payload is live (and every inert one is not); nonzero on mismatch."""
    check_benign_round_trip(torch_base())
    unchecked = [f for f in files if f.kind not in LOADERS]
    files = [f for f in files if f.kind in LOADERS]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda f: creates_canary(out / f.file, f.kind), files))
    failures = 0
    for item in unchecked:
        print(f"n/a  no unsafe loader for {item.kind:14}  {item.file}")
    for item, (canary, outcome) in zip(files, results, strict=True):
        ok = canary == item.canary
        failures += not ok
        status = "ok  " if ok else "FAIL"
        print(f"{status} canary={yes_no(canary)} expected={yes_no(item.canary)}  {item.file:38} {outcome}")
    made = sum(canary for canary, _ in results)
    print(f"{made} of {len(files)} files created the canary; {sum(f.canary for f in files)} were expected to")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: fixtures/hostile)")
    parser.add_argument("--self-check", action="store_true", help="load every file unsafely in a child process and temp cwd")
    args = parser.parse_args()
    files = corpus()
    write_corpus(files, args.out)
    print(f"wrote {len(files)} hostile files and catalog.json to {args.out}")
    return self_check(files, args.out) if args.self_check else 0


if __name__ == "__main__":
    sys.exit(main())
