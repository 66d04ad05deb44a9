"""Legacy torch files as Python 2-era torch wrote them: protocol 2, byte-string keys (SHORT_BINSTRING),
cPickle's memo numbered from 1, storages saved on CUDA, tensors rebuilt with `_rebuild_tensor` (torch
<= 0.3) or `_rebuild_tensor_v2`. The pickle stream is written here with the structure torch 0.x wrote on
Python 2 (`torch/serialization.py` `_legacy_save`); `torch.load(encoding="latin1")` is the reference."""

from __future__ import annotations

import io
import pickle
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch as the reference reader")

from convert.api import verify_path  # noqa: E402
from tests.support import assert_cli_error, assert_no_output, load_output, read_manifest, run_cli  # noqa: E402

MAGIC = 0x1950A86A20F9469CFC6C
STORAGE_CLASS = {
    torch.float32: "FloatStorage",
    torch.float64: "DoubleStorage",
    torch.int64: "LongStorage",
    torch.float16: "HalfStorage",
    torch.uint8: "ByteStorage",
}


class _Global:
    """A class reference the stream names (`torch.cuda.FloatStorage`), written without importing it."""

    def __init__(self, module: str, name: str) -> None:
        self.module, self.name = module, name


class _Reduce:
    def __init__(self, fn: _Global, args: tuple[Any, ...]) -> None:
        self.fn, self.args = fn, args


class _Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Python's own pickler, made to write what cPickle on Python 2 wrote: str as (SHORT_)BINSTRING
    latin-1 bytes, memo indices starting at 1, globals by name."""

    def memoize(self, obj: Any) -> None:
        if self.fast:
            return
        idx = len(self.memo) + 1  # cPickle: "make sure memo keys are positive"
        self.write(self.put(idx))
        self.memo[id(obj)] = idx, obj

    def save_str(self, obj: str) -> None:
        raw = obj.encode("latin1")
        if len(raw) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(raw)]) + raw)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(raw)) + raw)
        self.memoize(obj)

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]
    dispatch[str] = save_str

    def save_marker_global(self, obj: _Global) -> None:
        self.write(pickle.GLOBAL + f"{obj.module}\n{obj.name}\n".encode("ascii"))
        self.memoize(obj)

    def save_marker_reduce(self, obj: _Reduce) -> None:
        self.save(obj.fn)
        self.save(obj.args)
        self.write(pickle.REDUCE)
        self.memoize(obj)

    dispatch[_Global] = save_marker_global
    dispatch[_Reduce] = save_marker_reduce


def _py2_dump(obj: Any, fh: io.BufferedWriter, persistent_id: Any = None) -> None:
    pickler = _Py2Pickler(fh, protocol=2)
    if persistent_id is not None:
        pickler.persistent_id = persistent_id
    pickler.dump(obj)


def write_py2_legacy(path: Path, state: dict[str, Any], device: str = "cuda:0", rebuild: str = "v1") -> None:
    """Write `state` (name -> torch tensor) as torch 0.x did on Python 2, storages saved on `device`."""
    storages: dict[str, Any] = {}
    module = "torch.cuda" if device.startswith("cuda") else "torch"

    class _StorageRef:
        def __init__(self, key: str, tensor: Any) -> None:
            self.key, self.tensor = key, tensor

    def persistent_id(obj: Any) -> Any:
        if isinstance(obj, _StorageRef):
            cls = _Global(module, STORAGE_CLASS[obj.tensor.dtype])
            return ("storage", cls, obj.key, device, obj.tensor.numel(), None)
        return None

    body: dict[str, Any] = {}
    for i, (name, tensor) in enumerate(state.items()):
        key = str(94000000 + i)  # torch 0.x used str(id(storage)) as the key
        storages[key] = tensor.contiguous()
        ref = _StorageRef(key, storages[key])
        size, stride = tuple(tensor.shape), tuple(tensor.contiguous().stride())
        if rebuild == "v1":
            body[name] = _Reduce(_Global("torch._utils", "_rebuild_tensor"), (ref, 0, size, stride))
        else:
            hooks = _Reduce(_Global("collections", "OrderedDict"), ())
            body[name] = _Reduce(_Global("torch._utils", "_rebuild_tensor_v2"), (ref, 0, size, stride, False, hooks))
    ordered = _Reduce(_Global("collections", "OrderedDict"), ([[k, v] for k, v in body.items()],))
    with open(path, "wb") as fh:
        _py2_dump(MAGIC, fh)
        _py2_dump(1001, fh)
        _py2_dump({"protocol_version": 1001, "little_endian": True, "type_sizes": {"short": 2, "int": 4, "long": 8}}, fh)
        _py2_dump(ordered, fh, persistent_id)
        _py2_dump(list(storages), fh)
        for tensor in storages.values():
            fh.write(struct.pack("<q", tensor.numel()))
            fh.write(tensor.numpy().tobytes())


def _state() -> dict[str, Any]:
    g = torch.Generator().manual_seed(3)
    return {
        "conv1.weight": torch.randn(4, 3, 3, 3, generator=g),
        "conv1.bias": torch.randn(4, generator=g),
        "bn1.running_mean": torch.randn(4, generator=g, dtype=torch.float64),
        "bn1.num_batches_tracked": torch.tensor(12, dtype=torch.int64),
        "fc.weight": torch.randn(2, 36, generator=g).half(),
        "caf\u00e9.mask": torch.tensor([1, 0, 1], dtype=torch.uint8),
    }


def reference_load(path: Path) -> dict[str, Any]:
    """torch's own reading of a legacy Python 2 file (our own fixture, so a full load is safe here)."""
    return torch.load(path, map_location="cpu", encoding="latin1", weights_only=False)


@pytest.mark.parametrize("device, rebuild", [("cuda:0", "v1"), ("cuda:1", "v2"), ("mps", "v2"), ("cpu", "v1")])
def test_python2_legacy_file_converts_like_torch_load(device: str, rebuild: str, tmp_path: Path) -> None:
    src = tmp_path / "py2.pth"
    state = _state()
    write_py2_legacy(src, state, device, rebuild)
    assert b"U\x0cconv1.weight" in src.read_bytes()  # SHORT_BINSTRING keys, as Python 2 wrote them
    expected = reference_load(src)
    assert set(expected) == set(state)
    out = tmp_path / "out"
    code, _, err = run_cli("pth-to-safetensors", src, out, "-q")
    assert code == 0, err
    stored = load_output(out)
    assert set(stored) == set(expected)
    for name, tensor in expected.items():
        assert stored[name].dtype == tensor.dtype and stored[name].shape == tensor.shape, name
        assert np.array_equal(stored[name].numpy(), tensor.numpy()), name
    assert read_manifest(out)["source"]["format"] == "pytorch-legacy"
    report = verify_path(out, src)
    assert report.ok and report.compared_with_source == len(state), report.problems


def test_memo_far_ahead_is_still_refused(tmp_path: Path) -> None:
    """Numbering from 1 is what cPickle does; a memo index far past the entries made is still corrupt."""
    src = tmp_path / "bad.pth"
    write_py2_legacy(src, _state())
    data = bytearray(src.read_bytes())
    at = data.index(b"q\x01")  # the first BINPUT of the header pickle
    data[at : at + 2] = b"r" + struct.pack("<I", 2**31 - 5)
    src.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out), 6, "memo entry")
    assert_no_output(out)
