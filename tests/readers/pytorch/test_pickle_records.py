"""The weights out of every pickle, without running a line of it.

Checkpoints that hold classes no reader knows -- omegaconf configs, dataclasses, a user's `__main__`
class, whole pickled modules of any class, YOLO-style training checkpoints, Flax `FrozenDict`s --
convert: each class becomes an inert record (never imported, called or asked for an attribute), its
tensors found and named, and its plain data carried into the manifest. Each is compared name by name
and value by value with what `torch.load(weights_only=False)` gives here, on the test's own files.
A global that only an attack needs is refused (exit 5) naming it, even after a harmless record.
"""

from __future__ import annotations

import dataclasses
import importlib
import pickle
import sys
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="the fixtures are written by torch.save")

from tests.support import (  # noqa: E402
    assert_cli_error,
    assert_no_output,
    assert_same_state,
    convert_cli as convert,
    load_output,
    read_manifest,
    retie,
    run_cli,
)


def converted_state(out: Path) -> dict[str, Any]:
    """The output's full state dict: stored tensors plus the aliases of tied ones."""
    return retie(load_output(out), read_manifest(out)["aliases"])


def reference(src: Path) -> Any:
    """The test's own fixture, loaded the unsafe way torch offers (never done by the converter)."""
    return torch.load(src, map_location="cpu", weights_only=False)


# ---------------------------------------------------------------------------------------------
# The deny list: globals only an attack needs, as pickles spell them
# ---------------------------------------------------------------------------------------------


class Payload:
    """Pickles as a call `fn(*args)`: what torch.load(weights_only=False) would run. Never run here."""

    def __init__(self, fn: Any, *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.fn, self.args


@dataclasses.dataclass
class Harmless:
    """A class of the user's own: a record beside the weights."""

    lr: float = 0.1


@contextmanager
def fake_global(module: str, name: str) -> Iterator[Any]:
    """A function pickle writes as GLOBAL `module name` (for names this Python has no module for:
    Python 2's `commands`, Windows' `nt`, packages not installed)."""
    saved = sys.modules.get(module)
    fake = types.ModuleType(module)

    def fn(*_: Any) -> None:
        raise AssertionError("never called")

    fn.__module__, fn.__qualname__, fn.__name__ = module, name, name
    setattr(fake, name, fn)
    sys.modules[module] = fake
    try:
        yield fn
    finally:
        if saved is None:
            del sys.modules[module]
        else:
            sys.modules[module] = saved


def real(module: str, name: str) -> Callable[[], Any]:
    return lambda: getattr(importlib.import_module(module), name)


# (how the pickle spells it, the object torch.save pickles so)
DENIED: dict[str, Callable[[], Any] | None] = {
    "posix.system": real("os", "system"),  # os.system under its C module name
    "__builtin__.eval": real("builtins", "eval"),  # protocol 2 writes Python 2's name
    "__builtin__.getattr": None,  # served by a stand-in; refused when it reaches a dunder
    "commands.Popen": None,
    "nt.system": None,
    "commands.check_output": real("subprocess", "check_output"),  # protocol 2 writes Python 2's module name
    "marshal.loads": real("marshal", "loads"),
    "torch.serialization.load": real("torch", "load"),
    "runpy.run_path": real("runpy", "run_path"),
    "socket.create_connection": real("socket", "create_connection"),
    "pickle.loads": real("pickle", "loads"),  # _pickle.loads, written under its Python 2 name
    "dill.loads": None,
    "joblib.load": None,
    "operator.attrgetter": real("operator", "attrgetter"),
    "shutil.rmtree": real("shutil", "rmtree"),
    "importlib.import_module": real("importlib", "import_module"),
    "webbrowser.open": real("webbrowser", "open"),
    "ctypes.CDLL": real("ctypes", "CDLL"),
    "pdb.run": real("pdb", "run"),
}


@pytest.mark.parametrize("spelled", sorted(DENIED))
def test_denied_global_is_refused_after_a_harmless_record(spelled: str, tmp_path: Path) -> None:
    """A record of a harmless class comes first; the denied global after it still refuses the file,
    named as the pickle spells it; nothing is written."""
    from convert.api import pth_to_safetensors
    from convert.errors import UnsafeInputError

    module, name = spelled.rsplit(".", 1)
    src = tmp_path / "evil.pt"
    weights = {"w": torch.randn(2, 2)}
    if spelled == "__builtin__.getattr":
        gadget: Any = Payload(getattr, torch.nn.Linear, "__init__")
    elif DENIED[spelled] is None:
        with fake_global(module, name) as fn:
            torch.save({**weights, "cfg": Harmless(), "x": Payload(fn, "touch canary")}, src)
        gadget = None
    else:
        gadget = Payload(DENIED[spelled](), "touch canary")  # type: ignore[misc]
    if gadget is not None:
        torch.save({**weights, "cfg": Harmless(), "x": gadget}, src)
    out = tmp_path / "out"
    with pytest.raises(UnsafeInputError) as refused:
        pth_to_safetensors(src, out)
    assert (spelled if spelled != "__builtin__.getattr" else "__init__") in str(refused.value)
    assert refused.value.exit_code == 5
    assert_no_output(out)


def test_denied_global_exit_code_on_the_command_line(tmp_path: Path) -> None:
    src = tmp_path / "evil.pt"
    torch.save({"w": torch.randn(2), "cfg": Harmless(), "x": Payload(real("os", "system")(), "touch canary")}, src)
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out, cwd=tmp_path), 5, "posix.system")
    assert_no_output(out)
    assert not (tmp_path / "canary").exists()


def test_global_named_as_a_module_attribute_is_refused() -> None:
    """`GLOBAL 'torch.serialization os'`: the os module reached through a torch module."""
    from convert.errors import UnsafeInputError
    from convert.pickle_reader import restricted_load

    data = b"\x80\x02ctorch.serialization\nos\nq\x00."
    with pytest.raises(UnsafeInputError, match="torch.serialization.os"):
        restricted_load(data, records=True)


# ---------------------------------------------------------------------------------------------
# Hyper-parameters: omegaconf, dataclasses, __main__ classes
# ---------------------------------------------------------------------------------------------


@dataclasses.dataclass
class TrainCfg:
    lr: float = 3e-4
    layers: tuple[int, ...] = (4, 8)
    name: str = "run"


class MainCfg:
    """A class of the user's script: pickled as `__main__.MainCfg`."""

    def __init__(self) -> None:
        self.batch = 32
        self.mixup = False


def test_lightning_style_checkpoint_with_config_records(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    omegaconf = pytest.importorskip("omegaconf", reason="the hparams are an omegaconf DictConfig")
    monkeypatch.setattr(MainCfg, "__module__", "__main__")
    monkeypatch.setattr(sys.modules["__main__"], "MainCfg", MainCfg, raising=False)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 2))
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(3, 4)).sum().backward()
    opt.step()
    cfg = omegaconf.OmegaConf.create({"model": {"hidden": 8, "act": "gelu"}, "data": {"sizes": [1, 2, 3]}, "seed": None})
    ckpt = {
        "epoch": 3,
        "global_step": 30,
        "pytorch-lightning_version": "2.5.0",
        "state_dict": model.state_dict(),
        "hyper_parameters": {"cfg": cfg, "train": TrainCfg(), "script": MainCfg(), "lists": omegaconf.ListConfig([1, 2])},
        "optimizer_states": [opt.state_dict()],
        "lr_schedulers": [],
    }
    src = tmp_path / "run.ckpt"
    torch.save(ckpt, src)
    out = tmp_path / "out"
    doc = convert(src, out)
    assert_same_state(converted_state(out), reference(src)["state_dict"])
    details = doc["source"]["details"]
    hparams = details["checkpoint"]["hyper_parameters"]
    assert hparams["cfg"] == omegaconf.OmegaConf.to_container(cfg)
    assert hparams["lists"] == [1, 2]
    assert hparams["train"] == {"__class__": f"{__name__}.TrainCfg", "state": {"lr": 3e-4, "layers": [4, 8], "name": "run"}}
    assert hparams["script"] == {"__class__": "__main__.MainCfg", "state": {"batch": 32, "mixup": False}}
    assert {"omegaconf.dictconfig.DictConfig", "__main__.MainCfg", f"{__name__}.TrainCfg"} <= set(
        details["pickled_classes"]["names"]
    )
    assert any(why.startswith("training state optimizer_states") for why in doc["source"]["dropped"].values())


# ---------------------------------------------------------------------------------------------
# Whole pickled modules
# ---------------------------------------------------------------------------------------------

MODULE_SOURCE = """
import torch
from torch import nn


class Block(nn.Module):
    def __init__(self, width):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv1d(width, width, 3, padding=1), nn.BatchNorm1d(width))
        self.norm = torch.nn.utils.weight_norm(nn.Linear(width, width))  # legacy: weight_g, weight_v
        self.register_buffer("scale", torch.full((width,), 2.0))
        self.register_buffer("cache", torch.zeros(width), persistent=False)

    def forward(self, x):
        return self.norm(self.conv(x).transpose(1, 2)).transpose(1, 2) * self.scale[:, None]


class MyNet(nn.Module):
    def __init__(self, vocab=11, width=6):
        super().__init__()
        self.embed = nn.Embedding(vocab, width)
        self.blocks = nn.ModuleList([Block(width), Block(width)])
        self.rnn = nn.LSTM(width, width, num_layers=2, batch_first=True)
        self.heads = nn.ModuleDict({"cls": nn.Linear(width, 3), "lm": nn.Linear(width, vocab, bias=False)})
        self.heads["lm"].weight = self.embed.weight  # tied
        self.stride = torch.tensor([8.0, 16.0])  # a plain tensor attribute: not in state_dict()
        self.unused = None

    def forward(self, tokens):
        x = self.embed(tokens).transpose(1, 2)
        for block in self.blocks:
            x = block(x)
        y, _ = self.rnn(x.transpose(1, 2))
        return self.heads["cls"](y), self.heads["lm"](y)
"""


@pytest.fixture(scope="module")
def module_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Whole-module pickles of a class from a module file written here and then deleted (so no process
    could import it again), each with what torch.load(weights_only=False) gave while it existed."""
    folder = tmp_path_factory.mktemp("mynet")
    name = "mynet_pickle_records"
    source = folder / f"{name}.py"
    source.write_text(MODULE_SOURCE)
    sys.path.insert(0, str(folder))
    try:
        mynet = importlib.import_module(name)
        torch.manual_seed(0)
        model, ema = mynet.MyNet(), mynet.MyNet()
        model(torch.randint(0, 11, (2, 5)))  # weight_norm leaves a plain `weight` behind
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        model(torch.randint(0, 11, (2, 5)))[0].sum().backward()
        opt.step()
        files = {"whole": folder / "whole.pt", "yolo": folder / "yolo.pt", "legacy": folder / "legacy.pt"}
        torch.save(model, files["whole"])
        torch.save(model, files["legacy"], _use_new_zipfile_serialization=False)
        yolo = {"epoch": 4, "model": model, "ema": ema, "optimizer": opt.state_dict(), "train_args": {"imgsz": 64}}
        torch.save(yolo, files["yolo"])
        expected = {key: reference(path) for key, path in files.items()}
    finally:
        sys.path.remove(str(folder))
        sys.modules.pop(name, None)
        source.unlink()
    return {"files": files, "expected": expected, "module": name}


@pytest.mark.parametrize("kind", ["whole", "legacy"])
def test_whole_module_converts_as_its_state_dict(kind: str, module_files: dict[str, Any], tmp_path: Path) -> None:
    src, loaded = module_files["files"][kind], module_files["expected"][kind]
    out = tmp_path / "out"
    doc = convert(src, out)
    expected = loaded.state_dict()
    assert_same_state(converted_state(out), expected)
    assert [t["name"] for t in doc["tensors"]] + list(doc["aliases"]) != []
    assert doc["aliases"] == {"heads.lm.weight": "embed.weight"}
    dropped = doc["source"]["dropped"]
    assert {"stride", "blocks.0.cache", "blocks.0.norm.weight"} <= set(dropped), dropped
    assert not any(name.startswith("rnn._flat_weights") for name in dropped), "the LSTM's flat weights repeat its parameters"
    classes = doc["source"]["details"]["pickled_classes"]
    assert f"{module_files['module']}.MyNet" in classes["names"]
    modules = {m["path"]: m for m in doc["architecture"]["source_model"]["modules"]}
    assert modules[""]["class"] == f"{module_files['module']}.MyNet"
    assert modules["rnn"]["type"] == "LSTM"
    assert modules["rnn"]["attrs"]["num_layers"] == 2 and modules["rnn"]["attrs"]["batch_first"] is True
    assert modules["heads.cls"]["attrs"] == {"in_features": 6, "out_features": 3}
    assert modules["embed"]["type"] == "Embedding" and modules["embed"]["tensors"] == ["embed.weight"]


def test_yolo_style_checkpoint_picks_a_module_and_drops_the_optimizer(module_files: dict[str, Any], tmp_path: Path) -> None:
    src, loaded = module_files["files"]["yolo"], module_files["expected"]["yolo"]
    doc = convert(src, tmp_path / "model")
    assert_same_state(converted_state(tmp_path / "model"), loaded["model"].state_dict())
    details, dropped = doc["source"]["details"], doc["source"]["dropped"]
    assert details["key"] == "model" and details["candidate_state_dicts"] == ["model", "ema"]
    assert details["checkpoint"]["train_args"] == {"imgsz": 64}
    reasons = set(dropped.values())
    assert "training state optimizer (optimizer state)" in reasons
    assert "another model state dict (ema; --key picks it)" in reasons
    convert(src, tmp_path / "ema", "--key", "ema")
    assert_same_state(converted_state(tmp_path / "ema"), loaded["ema"].state_dict())


def test_inspect_names_the_classes(module_files: dict[str, Any]) -> None:
    rc, stdout, stderr = run_cli("inspect", module_files["files"]["whole"], "--json")
    assert rc == 0, stderr
    assert f"{module_files['module']}.MyNet" in stdout and "none imported" in stdout
    rc, stdout, stderr = run_cli("inspect", module_files["files"]["whole"])
    assert rc == 0, stderr
    assert stdout.splitlines()[-1].startswith("classes named (none imported or run): ")
    assert f"{module_files['module']}.MyNet" in stdout.splitlines()[-1]


# ---------------------------------------------------------------------------------------------
# NumPy pickles: protocol 5 and Flax FrozenDict
# ---------------------------------------------------------------------------------------------


def npz_convert(src: Path, out: Path) -> dict[str, Any]:
    rc, _, stderr = run_cli("auto", src, out)
    assert rc == 0, stderr
    return load_output(out)


def test_protocol_5_pickle_of_arrays_converts(tmp_path: Path) -> None:
    arrays = {"a": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.asfortranarray(np.ones((2, 3))), "c": np.int64(7)}
    src = tmp_path / "arrays.pkl"
    src.write_bytes(pickle.dumps(arrays, protocol=5))
    got = npz_convert(src, tmp_path / "out")
    assert set(got) == {"a", "b"}
    for name in got:
        assert np.array_equal(got[name].numpy(), arrays[name]) and got[name].numpy().dtype == arrays[name].dtype


def test_protocol_5_out_of_band_buffers_are_refused_clearly(tmp_path: Path) -> None:
    src = tmp_path / "oob.pkl"
    src.write_bytes(pickle.dumps({"a": np.arange(4.0)}, protocol=5, buffer_callback=lambda _: False))
    out = tmp_path / "out"
    assert_cli_error(run_cli("auto", src, out), 4, "out of band")
    assert_no_output(out)


def test_flax_frozen_dict_pickle_converts(tmp_path: Path) -> None:
    frozen_dict = pytest.importorskip("flax.core.frozen_dict", reason="the fixture is a Flax FrozenDict")
    params = frozen_dict.FrozenDict(
        {
            "params": {
                "Dense_0": {
                    "kernel": np.random.default_rng(0).normal(size=(3, 2)).astype(np.float32),
                    "bias": np.zeros(2, np.float32),
                }
            }
        }
    )
    src = tmp_path / "params.pkl"
    src.write_bytes(pickle.dumps(params, protocol=4))
    got = npz_convert(src, tmp_path / "out")
    assert read_manifest(tmp_path / "out")["source"]["details"]["pickled_classes"]["names"] == [
        "flax.core.frozen_dict.FrozenDict"
    ]
    back = pickle.loads(src.read_bytes())  # the test's own fixture
    dense = back["params"]["Dense_0"]
    assert set(got) == {"params.Dense_0.weight", "params.Dense_0.bias"}
    assert np.array_equal(got["params.Dense_0.weight"].numpy(), dense["kernel"].T)
    assert np.array_equal(got["params.Dense_0.bias"].numpy(), dense["bias"])


def test_module_shared_under_many_names_is_refused_quickly(tmp_path: Path) -> None:
    """One module under two names at every level, 20 deep: 2**20 state_dict() names from a small file
    (torch's own state_dict() would walk them all). Refused as corrupt from the module count."""
    module: Any = torch.nn.Linear(2, 2)
    for _ in range(20):
        module = torch.nn.Sequential(module, module)
    src = tmp_path / "bomb.pt"
    torch.save(module, src)
    assert src.stat().st_size < 200_000
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out, timeout=60), 6, "modules")
    assert_no_output(out)
