"""TorchScript archives (torch.jit.save of scripted, traced and frozen modules) read without running or
importing anything: every tensor `torch.jit.load(f).state_dict()` returns comes out under its name with
equal bytes; frozen weights (constants.pkl) as CONSTANTS.c{i}; the code recorded as present, not run."""

from __future__ import annotations

import io
import pickle
import pickletools
import zipfile
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="needs torch to write TorchScript archives")

from tests.support import assert_cli_error, assert_no_output, convert_ok, load_output, read_manifest, run_cli  # noqa: E402


class Block(torch.nn.Module):
    def __init__(self, k: int) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(2, 2, k, padding=k // 2)  # two Conv1d configurations: mangled class names
        self.bn = torch.nn.BatchNorm1d(2)
        self.register_buffer("offset", torch.randn(2, 1))
        self.plain = torch.ones(1)  # a tensor attribute: not in state_dict()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.bn(self.conv(x))) + self.offset + self.plain


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([Block(3), Block(5)])
        self.gru = torch.nn.GRU(2, 4, batch_first=True)
        self.head = torch.nn.Linear(4, 3)
        self.gain = torch.nn.Parameter(torch.randn(3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = block(x)
        y, _ = self.gru(x.transpose(1, 2))
        return self.head(y[:, -1]) * self.gain


def net() -> Net:
    torch.manual_seed(0)
    model = Net().eval()
    with torch.no_grad():
        for block in model.blocks:
            block.bn.running_mean.normal_()
            block.bn.running_var.uniform_(0.5, 2)
    return model


def build(kind: str, path: Path) -> Any:
    model = net()
    x = torch.randn(2, 2, 7)
    if kind == "script":
        module = torch.jit.script(model)
    elif kind == "trace":
        module = torch.jit.trace(model, x)
    else:
        module = torch.jit.freeze(torch.jit.script(model))
    torch.jit.save(module, path)
    return x


def converted(src: Path, out: Path) -> tuple[dict[str, Any], str]:
    err = convert_ok("auto", src, out, verify=True)
    return load_output(out), err


@pytest.mark.parametrize("kind", ["script", "trace"])
def test_state_dict_of_the_archive_comes_out(kind: str, tmp_path: Path) -> None:
    src = tmp_path / f"{kind}.pt"
    x = build(kind, src)
    loaded = torch.jit.load(src)
    expected = loaded.state_dict()
    stored, err = converted(src, tmp_path / "out")
    constants = {k: stored.pop(k) for k in list(stored) if k.startswith("CONSTANTS.")}
    assert set(stored) == set(expected)
    # tracing turns the plain tensor attribute into a constant of the graph; scripting keeps it an attribute
    assert [c.tolist() for c in constants.values()] == ([[1.0]] if kind == "trace" else [])
    for name, tensor in expected.items():
        assert stored[name].dtype == tensor.dtype and torch.equal(stored[name], tensor), name
    # the weights compute what the archive computes, loaded into the eager module
    eager = Net().eval()
    eager.load_state_dict(stored, strict=True)
    with torch.no_grad():
        assert torch.allclose(eager(x), loaded(x), atol=1e-6, rtol=0)
    doc = read_manifest(tmp_path / "out")
    assert doc["source"]["format"] == "torchscript"
    assert doc["source"]["details"]["torchscript"]["code"] == "present, not run"
    modules = {m["name"]: m["type"] for m in doc["architecture"]["source_model"]["torchscript_modules"]}
    assert modules["blocks.1.conv"] == "torch.nn.modules.conv.Conv1d" and modules["gru"] == "torch.nn.modules.rnn.GRU"
    if kind == "script":
        assert sorted(doc["dropped"]) == ["blocks.0.plain", "blocks.1.plain"]
        assert "neither parameters nor buffers" in err


def test_frozen_archive_weights_are_its_constants(tmp_path: Path) -> None:
    src = tmp_path / "frozen.pt"
    build("freeze", src)
    with zipfile.ZipFile(src) as zf:
        root = zf.namelist()[0].split("/")[0]
        constants = torch.load(io.BytesIO(_constants_zip(zf, root)), weights_only=True)
    tensors = [c for c in constants if isinstance(c, torch.Tensor)]
    assert tensors, "freezing should have turned weights into constants"
    stored, _ = converted(src, tmp_path / "out")
    for i, c in enumerate(constants):
        if isinstance(c, torch.Tensor):
            assert torch.equal(stored[f"CONSTANTS.c{i}"], c)
    assert sum(n.startswith("CONSTANTS.") for n in stored) == len(tensors)


def _constants_zip(zf: zipfile.ZipFile, root: str) -> bytes:
    """The archive's constants.pkl and its storages repacked as a torch.save zip, for torch's own
    weights-only reader (torch.jit.load gives no access to the constants)."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as out:
        out.writestr("c/data.pkl", zf.read(f"{root}/constants.pkl"))
        out.writestr("c/byteorder", "little")
        out.writestr("c/version", "3\n")
        for name in zf.namelist():
            if name.startswith(f"{root}/constants/"):
                out.writestr("c/data/" + name.split("/")[-1], zf.read(name))
    return buf.getvalue()


# --- hostile archives: refused as such, nothing written -----------------------------------------


def _rewrite(src: Path, dst: Path, entry: str, data: bytes) -> None:
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, data if info.filename.endswith(entry) else zin.read(info))


class _Payload:
    def __reduce__(self) -> Any:
        import os

        return (os.system, ("touch PWNED",))


def _hostile_data_pkl(real: bytes) -> bytes:
    """The real data.pkl with one module attribute replaced by an os.system call."""
    pos = [at for op, _, at in pickletools.genops(real) if op.name == "SETITEMS"][-1]  # the root module's
    gadget = pickle.dumps(_Payload(), protocol=2)[2:-1]
    return real[:pos] + b"X\x05\x00\x00\x00pwned" + gadget + real[pos:]


def test_archive_whose_pickle_calls_os_system_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "real.pt"
    build("script", src)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(src) as zf:
        data = zf.read(next(n for n in zf.namelist() if n.endswith("/data.pkl")))
    _rewrite(src, bad, "/data.pkl", _hostile_data_pkl(data))
    out = tmp_path / "out"
    assert_cli_error(run_cli("auto", bad, out, cwd=tmp_path), 5, "posix.system")
    assert_no_output(out)
    assert not (tmp_path / "PWNED").exists()


def test_archive_whose_code_would_do_harm_is_read_as_text_only(tmp_path: Path) -> None:
    """The code names a parameter that is not a tensor: refused as corrupt; the code's harmful text
    (an import of os at module level) is never executed, so no marker file appears."""
    src = tmp_path / "real.pt"
    build("script", src)
    bad = tmp_path / "bad.pt"
    with zipfile.ZipFile(src) as zf:
        top = next(n for n in zf.namelist() if n.endswith(".py") and b'"gain"' in zf.read(n))
        text = zf.read(top).decode()
    forged = text.replace('__parameters__ = ["gain", ]', '__parameters__ = ["gain", "training", ]')
    harm = "import os\nos.system('touch PWNED')\n" + forged
    _rewrite(src, bad, top, harm.encode())
    out = tmp_path / "out"
    assert_cli_error(run_cli("auto", bad, out, cwd=tmp_path), 6, "not a tensor")
    assert_no_output(out)
    assert not (tmp_path / "PWNED").exists()


class Stateful(torch.nn.Module):
    """A module with its own __getstate__/__setstate__: its pickled state is whatever that code makes of it."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.randn(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x @ self.weight.t()

    @torch.jit.export
    def __getstate__(self) -> tuple[torch.Tensor, bool]:
        return (self.weight, self.training)

    @torch.jit.export
    def __setstate__(self, state: tuple[torch.Tensor, bool]) -> None:
        self.weight = state[0] * 2
        self.training = state[1]


def test_module_rebuilt_by_its_own_setstate_is_unsupported(tmp_path: Path) -> None:
    """torch.jit.load runs the archive's __setstate__ (here it doubles the weight); a reader that runs no code
    cannot know what the state means, so it refuses (4) rather than guess or call the archive corrupt."""
    src = tmp_path / "stateful.pt"
    model = Stateful()
    torch.jit.save(torch.jit.script(model), src)
    loaded = torch.jit.load(src)
    assert set(loaded.state_dict()) == {"weight"}
    assert torch.equal(loaded.state_dict()["weight"], model.weight.detach() * 2)
    out = tmp_path / "out"
    assert_cli_error(run_cli("auto", src, out), 4, "__setstate__")
    assert_no_output(out)
