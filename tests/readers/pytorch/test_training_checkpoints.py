"""Training checkpoints as real training loops write them: optimizer, scheduler, grad scaler and RNG
states left out (and listed in the manifest's dropped), the model state dict chosen among several and
the choice printed, and a wrapper's prefix (Lightning's `model.`, DataParallel's `module.`) stripped so
the output loads into the inner module with `load_state_dict(strict=True)`."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="needs torch to write real checkpoints")

from tests.support import assert_cli_error, assert_no_output, assert_same_state, convert_ok, load_output, read_manifest, run_cli  # noqa: E402


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv1d(2, 4, 3)
        self.bn = torch.nn.BatchNorm1d(4)
        self.head = torch.nn.Linear(4 * 6, 3)

    def forward(self, x: Any) -> Any:
        return self.head(torch.relu(self.bn(self.conv(x))).flatten(1))


def trained() -> tuple[Net, Any, Any, Any]:
    """A Net after two Adam steps with a step LR scheduler and a grad scaler, as a training loop leaves them."""
    torch.manual_seed(0)
    net = Net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, 1)
    scaler = torch.amp.GradScaler("cpu")
    for _ in range(2):
        loss = net(torch.randn(5, 2, 8)).square().mean()
        scaler.scale(loss).backward()
        scaler.step(opt)
        scaler.update()
        opt.zero_grad()
        sched.step()
    return net.eval(), opt, sched, scaler


def outputs_match(net: Net, out: Path) -> None:
    """The output loads strictly into a fresh Net and computes what the trained one does."""
    fresh = Net().eval()
    fresh.load_state_dict(load_output(out), strict=True)
    x = torch.randn(3, 2, 8)
    with torch.no_grad():
        assert torch.equal(fresh(x), net(x))


convert = functools.partial(convert_ok, "pth-to-safetensors", verify=True)


def test_training_states_are_left_out_with_a_note(tmp_path: Path) -> None:
    net, opt, sched, scaler = trained()
    src = tmp_path / "train.pt"
    torch.save(
        {
            "model_state": net.state_dict(),
            "optimizer_state": opt.state_dict(),
            "scheduler": sched.state_dict(),
            "scaler": scaler.state_dict(),
            "rng": {"torch": torch.get_rng_state()},
            "torch_rng": torch.get_rng_state(),
            "epoch": 2,
        },
        src,
    )
    out = tmp_path / "out"
    err = convert(src, out)
    outputs_match(net, out)
    notes = [line for line in err.splitlines() if "training state" in line]
    assert len(notes) == 1 and "optimizer_state (optimizer state)" in notes[0] and "rng (RNG state)" in notes[0], err
    doc = read_manifest(out)
    n_moments = sum(len(s) for s in opt.state_dict()["state"].values())  # exp_avg, exp_avg_sq, step per param
    optimizer_dropped = [n for n in doc["dropped"] if n.startswith("optimizer_state.")]
    assert len(optimizer_dropped) == n_moments
    assert {"rng.torch", "torch_rng"} <= set(doc["dropped"])
    assert doc["source"]["details"]["key"] == "model_state"
    assert doc["source"]["details"]["training_state"] == {
        "optimizer_state": "optimizer state",
        "rng": "RNG state",
        "torch_rng": "RNG state",
    }  # scheduler, scaler: no tensors
    # --key still converts the optimizer state when asked for it
    code, _, err = run_cli("pth-to-safetensors", src, tmp_path / "opt", "--key", "optimizer_state", "-q")
    assert code == 0, err
    assert len(load_output(tmp_path / "opt")) == n_moments


def test_optimizer_in_a_flat_root_is_left_out(tmp_path: Path) -> None:
    """No model key at all: the root is the state dict, the optimizer beside it is recognized by structure."""
    net, opt, _, _ = trained()
    src = tmp_path / "flat.pt"
    torch.save({**net.state_dict(), "opt": opt.state_dict()}, src)
    out = tmp_path / "out"
    convert(src, out)
    outputs_match(net, out)
    assert all(n.startswith("opt.state.") for n in read_manifest(out)["dropped"])


def test_several_state_dicts_are_listed_and_key_picks_one(tmp_path: Path) -> None:
    net, _, _, _ = trained()
    ema = Net().eval()
    src = tmp_path / "ema.pt"
    torch.save({"model": net.state_dict(), "ema": ema.state_dict(), "teacher": ema.state_dict()}, src)
    out = tmp_path / "out"
    err = convert(src, out)
    assert "3 model state dicts (model, ema, teacher); converted 'model'" in err
    outputs_match(net, out)
    doc = read_manifest(out)
    assert doc["source"]["details"]["candidate_state_dicts"] == ["model", "ema", "teacher"]
    assert {n.split(".")[0] for n in doc["dropped"]} == {"ema", "teacher"}
    convert(src, tmp_path / "ema_out", "--key", "ema")
    outputs_match(ema, tmp_path / "ema_out")


def test_lightning_module_prefix_is_stripped_for_the_inner_model(tmp_path: Path) -> None:
    pl = pytest.importorskip("pytorch_lightning", reason="needs Lightning to write a real .ckpt")

    class Wrapper(pl.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = Net()

        def training_step(self, batch: Any, _: int) -> Any:
            return self.model(batch[0]).square().mean()

        def configure_optimizers(self) -> Any:
            opt = torch.optim.Adam(self.parameters(), lr=1e-2)
            return [opt], [torch.optim.lr_scheduler.StepLR(opt, 1)]

    torch.manual_seed(1)
    module = Wrapper()
    data = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(torch.randn(8, 2, 8)), batch_size=4)
    trainer = pl.Trainer(
        max_steps=2,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
        accelerator="cpu",
    )
    trainer.fit(module, data)
    src = tmp_path / "run.ckpt"
    trainer.save_checkpoint(src)
    out = tmp_path / "out"
    err = convert(src, out)
    assert "stripped the wrapper prefix 'model.'" in err
    outputs_match(module.model.eval(), out)
    assert read_manifest(out)["source"]["details"]["stripped_prefix"] == "model."
    # kept on request: then the names are the LightningModule's own
    convert(src, tmp_path / "kept", "--strip-prefix", "none")
    assert_same_state(load_output(tmp_path / "kept"), module.state_dict())


def test_dataparallel_prefix_is_stripped(tmp_path: Path) -> None:
    net, _, _, _ = trained()
    wrapped = torch.nn.DataParallel(net)
    assert all(k.startswith("module.") for k in wrapped.state_dict())
    src = tmp_path / "dp.pt"
    torch.save({"state_dict": wrapped.state_dict()}, src)
    out = tmp_path / "out"
    convert(src, out)
    outputs_match(net, out)


def test_plain_model_prefix_is_kept_outside_lightning(tmp_path: Path) -> None:
    """A model whose only child is called `model` (not a Lightning checkpoint) keeps its names."""
    outer = torch.nn.Sequential()
    outer.add_module("model", Net())
    src = tmp_path / "outer.pt"
    torch.save(outer.state_dict(), src)
    convert(src, tmp_path / "out")
    assert_same_state(load_output(tmp_path / "out"), outer.state_dict())


def test_strip_prefix_not_on_every_name_is_a_usage_error(tmp_path: Path) -> None:
    net, _, _, _ = trained()
    src = tmp_path / "m.pt"
    torch.save(net.state_dict(), src)
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out, "--strip-prefix", "conv."), 2, "does not start with it")
    assert_no_output(out)


@pytest.mark.parametrize("wrap", ["compile", "dp(compile)", "compile(dp)"])
def test_compiled_model_prefix_is_stripped(tmp_path: Path, wrap: str) -> None:
    """torch.compile's `_orig_mod.`, alone or nested with a data-parallel wrapper's `module.` in either
    order (DistributedDataParallel names like DataParallel), is stripped whole."""
    net, _, _, _ = trained()
    wrapped = {
        "compile": lambda: torch.compile(net),
        "dp(compile)": lambda: torch.nn.DataParallel(torch.compile(net)),
        "compile(dp)": lambda: torch.compile(torch.nn.DataParallel(net)),
    }[wrap]()
    expected = {"compile": "_orig_mod.", "dp(compile)": "module._orig_mod.", "compile(dp)": "_orig_mod.module."}[wrap]
    assert all(k.startswith(expected) for k in wrapped.state_dict())
    src = tmp_path / "compiled.pt"
    torch.save(wrapped.state_dict(), src)
    out = tmp_path / "out"
    err = convert(src, out)
    assert f"stripped the wrapper prefix {expected!r}" in err
    outputs_match(net, out)
    assert read_manifest(out)["source"]["details"]["stripped_prefix"] == expected
