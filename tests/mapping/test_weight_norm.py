"""Weight norm and spectral norm: torch's hook forms (`weight_g`/`weight_v`;
`weight_orig`/`weight_u`/`weight_v`) and parametrize forms (`parametrizations.weight.original0/1`;
`.original`, `.0._u`, `.0._v`) reach name-lookup loaders as the weight the module computes, folded as
torch's eval-mode forward does it, recorded as a transform `verify --source` replays. Checked against
torch's own forward, through a plain module that loads the output with load_state_dict."""

from __future__ import annotations

import warnings
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
from torch.nn.utils import parametrizations  # noqa: E402

from tests.support import assert_cli_error, assert_no_output, convert_ok, load_output, read_manifest, run_cli  # noqa: E402


class Plain(nn.Module):
    """The same layers without any parametrization: what a Rust loader's modules are."""

    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(5, 6)
        self.b = nn.Conv1d(6, 4, 3)
        self.c = nn.ConvTranspose1d(4, 3, 2)
        self.d = nn.Linear(3, 2)

    def forward(self, x: Any) -> Any:
        h = self.c(self.b(torch.tanh(self.a(x)).transpose(1, 2)))
        return self.d(torch.tanh(h).mean(2))


def normed() -> Plain:
    """Each layer under another form: weight_norm hook, parametrized weight_norm, parametrized
    spectral_norm (over dim 1: a ConvTranspose), spectral_norm hook; trained a few steps so the
    power iteration has moved u and v."""
    torch.manual_seed(5)
    net = Plain()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch deprecates the hook forms; checkpoints still hold them
        net.a = nn.utils.weight_norm(net.a)
    net.b = parametrizations.weight_norm(net.b)
    net.c = parametrizations.spectral_norm(net.c)
    net.d = nn.utils.spectral_norm(net.d)
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    for _ in range(3):
        net(torch.randn(4, 7, 5)).square().mean().backward()
        opt.step()
        opt.zero_grad()
    return net.eval()


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("weight_norm")
    net, src = normed(), tmp / "normed.pt"
    torch.save(net.state_dict(), src)
    x = torch.randn(3, 7, 5, generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        want = net(x)
    return SimpleNamespace(net=net, src=src, tmp=tmp, x=x, want=want)


def convert(model: SimpleNamespace, layout: str, *options: str) -> Path:
    out = model.tmp / "-".join([layout, *options])
    args = [a for o in options for a in ("--layout-option", o)]
    convert_ok("pth-to-safetensors", model.src, out, "--layout", layout, *args, verify=True)
    return out


@pytest.mark.parametrize("layout", ["tch", "candle", "burn"])
def test_folded_weights_load_into_plain_modules(model: SimpleNamespace, layout: str) -> None:
    """tch, candle and burn (whose adapter takes PyTorch's layouts) look `weight` up: the output
    loads strictly into the plain module and computes what torch's eval-mode forward computes."""
    out = convert(model, layout)
    plain = Plain().eval()
    plain.load_state_dict(load_output(out), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(plain(model.x), model.want, atol=1e-5, rtol=0)
    doc = read_manifest(out)
    steps = {t["name"]: (t["sources"], t["transforms"]) for t in doc["tensors"]}
    assert [s["op"] for s in steps["c.weight"][1]] == ["spectral_norm"] and steps["c.weight"][1][0]["dim"] == 1
    assert steps["a.weight"][1] == [{"op": "weight_norm"}]
    parametrized = {m["path"]: (m["type"], m.get("parametrizations")) for m in doc["architecture"]["modules"]}
    assert parametrized["a"][1]["weight"]["type"] == "weight_norm"
    assert parametrized["b"][1]["weight"]["by"] == "torch.nn.utils.parametrizations.weight_norm"
    assert parametrized["c"][0] == "ConvTranspose1d"
    assert parametrized["d"][1]["weight"]["tensors"] == ["d.weight_orig", "d.weight_u", "d.weight_v"]


def test_burn_native_transposes_the_folded_linear(model: SimpleNamespace) -> None:
    out = convert(model, "burn-native")
    torch.testing.assert_close(load_output(out)["a.weight"], model.net.a.weight.detach().T, atol=1e-6, rtol=0)


@pytest.mark.parametrize(("layout", "option"), [("pytorch", None), ("burn", "fold_weight_norm=false")])
def test_pieces_kept_load_into_the_normed_module(model: SimpleNamespace, layout: str, option: str | None) -> None:
    """The pytorch layout keeps the pieces (the same torch module loads them); other layouts keep
    them by option (candle-transformers' encodec reads weight_g/weight_v by name)."""
    out = convert(model, layout, *([option] if option else []))
    again = normed()
    again.load_state_dict(load_output(out), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(model.x), model.want, atol=0, rtol=0)


def test_a_parametrization_no_fold_knows_is_refused(tmp_path: Path) -> None:
    """orthogonal's pieces would reach burn as strays: refused (7), nothing written; kept by option."""
    net = nn.Sequential(parametrizations.orthogonal(nn.Linear(4, 4)))
    src, out = tmp_path / "orth.pt", tmp_path / "out"
    torch.save(net.state_dict(), src)
    assert_cli_error(
        run_cli("pth-to-safetensors", src, out, "--layout", "burn"),
        7,
        "0.parametrizations.weight.original",
        "fold_weight_norm=false",
    )
    assert_no_output(out)


def test_square_spectral_conv_is_a_guess(tmp_path: Path) -> None:
    """A spectral-normed Conv1d(4, 4) and a ConvTranspose1d(4, 4) save the same shapes and normalize
    over different axes: refused until module_types decides; decided, the fold matches torch."""
    torch.manual_seed(7)
    net = nn.Sequential(parametrizations.spectral_norm(nn.ConvTranspose1d(4, 4, 3))).eval()
    src, out = tmp_path / "sq.pt", tmp_path / "out"
    torch.save(net.state_dict(), src)
    assert_cli_error(run_cli("pth-to-safetensors", src, out, "--layout", "tch"), 7, "Conv1d or ConvTranspose1d", "module_types")
    assert_no_output(out)
    code, _, err = run_cli("pth-to-safetensors", src, out, "--layout", "tch", "--layout-option", "module_types=0=ConvTranspose1d")
    assert code == 0, err
    assert run_cli("verify", out, "--source", src)[0] == 0
    with torch.no_grad():
        torch.testing.assert_close(load_output(out)["0.weight"], net[0].weight, atol=1e-6, rtol=0)
