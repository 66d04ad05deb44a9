"""The fuzzing harness the sweeps share (tests/safety/fuzz/, tests/safety/test_truncation.py,
scripts/hostile_campaign.py): one derandomized hypothesis profile scaled by CONVERT_FUZZ_SCALE, a
watchdog that turns a hang into a failure, `probe` (an input is accepted, or refused with a one-line
ConvertError; anything else fails), byte-level and JSON mutators, and seed files written by the real
libraries (torch, msgpack, h5py, NumPy, TensorFlow's TFLite converter)."""

from __future__ import annotations

import faulthandler
import io
import json
import os
import pickle
import signal
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings, strategies as st

from convert.errors import ConvertError
from tests.support import count_inputs

PROFILE = settings(
    derandomize=True, database=None, deadline=timedelta(seconds=5), print_blob=False, suppress_health_check=list(HealthCheck)
)
HANG_SECONDS = 10.0
# CI runs the budgets below; CONVERT_FUZZ_SCALE=20 (say) runs a deeper, still reproducible, local campaign.
SCALE = float(os.environ.get("CONVERT_FUZZ_SCALE", "1"))


def fuzz(max_examples: int) -> settings:
    return settings(PROFILE, max_examples=max(1, int(max_examples * SCALE)))


class Hang(BaseException):
    """Raised by the watchdog; a BaseException so no reader's `except Exception` can swallow it."""


@contextmanager
def watchdog(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Interrupt the body if it runs longer than `seconds` (a hang is a bug like any other)."""

    def fire(signum: int, frame: Any) -> None:
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    # A hang inside C code (libhdf5 has had such bugs) never returns to Python to see the alarm: then
    # the process ends, printing every thread's stack, rather than leaving CI hanging.
    faulthandler.dump_traceback_later(3 * seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def probe(reader: str, run: Callable[[], Any]) -> bool:
    """Feed one input to a reader. True if accepted, False if refused with a one-line ConvertError;
    any other exception (or a hang) propagates and fails the harness with the input."""
    count_inputs("fuzz", reader)
    try:
        with watchdog():
            run()
    except Hang as exc:  # report it as a failure hypothesis can shrink
        raise AssertionError(f"{reader}: {exc}") from None
    except ConvertError as exc:
        message = str(exc)
        assert message.strip(), f"{type(exc).__name__} without a message"
        assert "\n" not in message, f"error message is not one line: {message!r}"
        return False
    count_inputs("fuzz (accepted)", reader)  # shows the harness reaches past the first checks
    return True


def read_all(source: Any) -> None:
    """Touch every byte of every tensor of an opened source (memory maps and views included)."""
    with source:
        for ref in source.tensors:
            arr = ref.array()
            assert tuple(arr.shape) == ref.shape
            if arr.size:
                np.ascontiguousarray(arr).view(np.uint8).sum()


INTERESTING_INTS = [
    0,
    1,
    2,
    3,
    7,
    8,
    64,
    127,
    128,
    255,
    256,
    2**15,
    2**16 - 1,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**53,
    2**62,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    2**100,
    -1,
    -2,
    -(2**31),
    -(2**63),
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], max_ops: int = 6) -> bytes:
    """A seed with a few flips, overwrites with boundary values, insertions, deletions, copies or a cut."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "byte", "int", "insert", "delete", "copy", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "int":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(INTERESTING_INTS)) % (1 << (8 * width))
            data[pos : pos + width] = value.to_bytes(width, draw(st.sampled_from(["little", "big"])))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "copy" and data:
            start = draw(st.integers(0, len(data) - 1))
            data[pos:pos] = data[start : start + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


def torch_seed_objects() -> list[Any]:
    """State dicts that reach every branch of the torch reader: dtypes, views, ties, nesting, numpy."""
    import argparse

    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=g)
    plain = {"lin.weight": w, "lin.bias": torch.zeros(4), "steps": torch.tensor(3), "mask": torch.ones(2, 2, dtype=torch.bool)}
    views = {
        "t": w.t(),
        "row": w[1],
        "exp": torch.ones(1).expand(3, 2),
        "half": w.half(),
        "bf": w[:2].bfloat16(),
        "tied": w,
        "empty": torch.zeros(0, 3),
        "u8": torch.arange(5, dtype=torch.uint8),
    }
    lightning = {
        "epoch": 2,
        "global_step": 10,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {"net.0.weight": w, "net.0.bias": torch.ones(4)},
        "hyper_parameters": {"lr": 1e-3, "loss": torch.nn.MSELoss(), "args": argparse.Namespace(depth=2)},
        "optimizer_states": [
            {
                "state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(4, 3)}},
                "param_groups": [{"lr": 1e-3, "params": [0]}],
            }
        ],
        "hparams": {"table": np.arange(3, dtype=np.int32), "scale": np.float32(0.5)},
    }
    return [plain, views, lightning, {"model": {"encoder": plain}, "ema": None}]


def torch_bytes(obj: Any, legacy: bool) -> bytes:
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def zip_entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def rezip(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(INTERESTING_INTS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)


JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=10
)


def json_paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from json_paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from json_paths(v, (*prefix, i))


@st.composite
def json_mutations(draw: st.DrawFn, doc: Any, max_ops: int = 3) -> Any:
    """`doc` with a few values replaced, keys dropped or added, or lists cut."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, max_ops))):
        paths = list(json_paths(doc))
        path = draw(st.sampled_from(paths))
        if not path:
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        op = draw(st.sampled_from(["replace", "drop", "add", "retype"]))
        if op == "replace":
            parent[path[-1]] = draw(JSON_VALUES)
        elif op == "drop":
            del parent[path[-1]]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(JSON_VALUES)
        elif op == "retype":
            value = parent[path[-1]]
            parent[path[-1]] = [value] if not isinstance(value, list) else {"0": value}
    return doc


def msgpack_seeds() -> list[bytes]:
    """Flax-style msgpack: nested dicts of ndarrays as extension type 1 (shape, dtype name, bytes)."""
    msgpack = pytest.importorskip("msgpack")

    def arr(a: np.ndarray) -> Any:
        return msgpack.ExtType(1, msgpack.packb((list(a.shape), a.dtype.name, a.tobytes()), use_bin_type=True))

    tree = {
        "params": {
            "Dense_0": {"kernel": arr(np.ones((3, 4), np.float32)), "bias": arr(np.zeros(4, np.float32))},
            "Embed_0": {"embedding": arr(np.arange(6, dtype=np.float16).reshape(2, 3))},
        },
        "batch_stats": {"BatchNorm_0": {"mean": arr(np.zeros(2, np.float32)), "var": arr(np.ones(2, np.float32))}},
        "step": 3,
    }
    return [msgpack.packb(tree, use_bin_type=True), msgpack.packb(tree["params"], use_bin_type=True)]


def h5_seeds(tmp: Path) -> list[bytes]:
    """Keras 2 `.h5` weights and a Keras 3 `.keras` archive, written with h5py alone."""
    h5py = pytest.importorskip("h5py")

    def h5(write: Callable[[Any], None]) -> bytes:
        path = tmp / "seed.h5"
        with h5py.File(path, "w") as f:
            write(f)
        return path.read_bytes()

    def keras2(f: Any) -> None:
        f.attrs["layer_names"] = [b"dense"]
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        g = f.create_group("dense")
        g.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        g.create_dataset("dense/kernel:0", data=np.ones((3, 4), np.float32))
        g.create_dataset("dense/bias:0", data=np.zeros(4, np.float32))

    def keras3(f: Any) -> None:
        f.create_dataset("layers/dense/vars/0", data=np.ones((3, 4), np.float32))
        f.create_dataset("layers/dense/vars/1", data=np.zeros(4, np.float32))

    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "name": "seq",
            "layers": [{"module": "keras.layers", "class_name": "Dense", "config": {"name": "dense", "units": 4}}],
        },
    }
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.6.0"}))
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.weights.h5", h5(keras3))
    return [h5(keras2), archive.getvalue()]


def tflite_seed_bytes() -> list[bytes]:
    """A float and an int8 model from TensorFlow's converter."""
    tf = pytest.importorskip("tensorflow")
    model = tf.keras.Sequential(
        [
            tf.keras.Input((6, 6, 2)),
            tf.keras.layers.Conv2D(3, 3),
            tf.keras.layers.DepthwiseConv2D(2),
            tf.keras.layers.Flatten(),
            tf.keras.layers.Dense(4),
        ]
    )
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    plain = converter.convert()
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    return [plain, converter.convert()]


def npy_bytes(arr: np.ndarray, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def npz_bytes(compressed: bool, **arrays: np.ndarray) -> bytes:
    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)
    return buf.getvalue()


def numpy_seed_bytes() -> dict[str, list[bytes]]:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3)).astype(np.float32)
    tree = {"params": {"Dense_0": {"kernel": w, "bias": np.zeros(4, np.float32)}}, "step": np.int64(3)}
    return {
        "npy": [
            npy_bytes(w),
            npy_bytes(np.asfortranarray(w)),
            npy_bytes(np.array([True, False])),
            npy_bytes(np.zeros((0, 2), np.float16)),
            npy_bytes(np.array([w, None], dtype=object), allow_pickle=True),
        ],
        "npz": [
            npz_bytes(False, a=w, b=np.arange(5)),
            npz_bytes(True, **{"layer/kernel": w, "layer/bias": np.ones(4, np.float32)}),
        ],
        "pkl": [pickle.dumps(tree, protocol=2), pickle.dumps([w, {"x": np.ones(2)}], protocol=4)],
    }


def torchscript_seed_bytes() -> list[bytes]:
    """A scripted module and its frozen form (weights as constants.pkl tensors)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    scripted = torch.jit.script(net.eval())
    frozen = torch.jit.freeze(scripted)  # weights become constants.pkl tensors
    out = []
    for module in (scripted, frozen):
        buf = io.BytesIO()
        torch.jit.save(module, buf)
        out.append(buf.getvalue())
    return out


def training_seed_bytes() -> list[bytes]:
    """Checkpoints as training loops write them: model and EMA weights, Adam moments after a step, an
    LR scheduler, a grad scaler's state and the RNG state."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=2)
    net(torch.ones(2, 3)).sum().backward()
    opt.step()
    sched.step()
    full = {
        "epoch": 3,
        "model": net.state_dict(),
        "ema": net.state_dict(),
        "optimizer": opt.state_dict(),
        "scheduler": sched.state_dict(),
        "scaler": {"scale": 65536.0, "growth_factor": 2.0, "_growth_tracker": 0},
        "rng_state": torch.get_rng_state(),
    }
    out = []
    for obj in (full, {"opt": opt.state_dict(), "net": net.state_dict()}):
        buf = io.BytesIO()
        torch.save(obj, buf)
        out.append(buf.getvalue())
    return out
