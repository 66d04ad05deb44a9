"""ruv-FANN networks (`--layout neuro-divergent`): each dense chain as `<name>.network.json` in
ruv-FANN's serde form, run by convert.outputs.fann.network (Network::run as ruv-FANN 0.1.6's source computes it)
and by the Rust crate's rmc_load::fann, both against torch's own forward."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
nn = torch.nn

from convert.outputs.fann import network as fann  # noqa: E402
from tests.support import assert_cli_error, assert_no_output, read_manifest, run_cli  # noqa: E402

ATOL = 1e-5
SPEC = "dense_networks=mlp=0:tanh,2:sigmoid,4:relu,6:leaky_relu,8:identity"


def _mlp() -> Any:
    torch.manual_seed(3)
    return nn.Sequential(
        nn.Linear(5, 7),
        nn.Tanh(),
        nn.Linear(7, 4, bias=False),
        nn.Sigmoid(),
        nn.Linear(4, 6),
        nn.ReLU(),
        nn.Linear(6, 3),
        nn.LeakyReLU(),
        nn.Linear(3, 2),
    ).eval()


def _convert(src: Path, out: Path, *options: str, dry_run: bool = False) -> tuple[int, str, str]:
    args = [a for o in options for a in ("--layout-option", o)]
    return run_cli("pth-to-safetensors", src, out, "--layout", "neuro-divergent", *args, *(["--dry-run"] * dry_run))


@pytest.fixture(scope="module")
def mlp(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    tmp = tmp_path_factory.mktemp("fann")
    model, src, out = _mlp(), tmp / "mlp.pt", tmp / "out"
    torch.save(model.state_dict(), src)
    code, _, stderr = _convert(src, out, SPEC)  # naming the bias-free "2" decides it is a Linear
    assert code == 0, stderr
    x = torch.randn(16, 5, generator=torch.Generator().manual_seed(4)) * 3
    with torch.no_grad():
        want = model(x).numpy()
    return SimpleNamespace(model=model, src=src, out=out, tmp=tmp, x=x.numpy(), want=want)


def test_network_json_is_ruv_fanns_network_serde_form(mlp: SimpleNamespace) -> None:
    """Input and hidden layers end with a bias neuron of value 1, the output layer has none;
    connections index the previous layer's neurons, the bias last; weights are the layer's."""
    doc = fann.load(mlp.out / "mlp.network.json")
    assert set(doc) == {"layers", "connection_rate"} and doc["connection_rate"] == 1.0
    widths = [len(layer["neurons"]) for layer in doc["layers"]]
    assert widths == [5 + 1, 7 + 1, 4 + 1, 6 + 1, 3 + 1, 2]
    for layer in doc["layers"][:-1]:
        bias = layer["neurons"][-1]
        assert bias["is_bias"] and bias["value"] == 1.0 and bias["connections"] == []
    assert not any(n["is_bias"] for n in doc["layers"][-1]["neurons"])
    neuron = doc["layers"][1]["neurons"][2]
    assert set(neuron) == {"sum", "value", "activation_steepness", "activation_function", "connections", "is_bias"}
    assert neuron["activation_function"] == "Tanh" and neuron["activation_steepness"] == 1.0
    assert [c["from_neuron"] for c in neuron["connections"]] == list(range(6))
    weights = [c["weight"] for c in neuron["connections"]]
    layer = mlp.model[0]
    np.testing.assert_array_equal(np.float32(weights), np.float32([*layer.weight[2].tolist(), layer.bias[2].item()]))
    assert [c["weight"] for c in doc["layers"][2]["neurons"][0]["connections"]][-1] == 0.0  # bias=False
    assert [layer["neurons"][0]["activation_function"] for layer in doc["layers"][1:]] == [
        "Tanh",
        "Sigmoid",
        "ReLU",
        "ReLULeaky",
        "Linear",
    ]


def test_python_evaluator_matches_torch(mlp: SimpleNamespace) -> None:
    got = fann.run(fann.load(mlp.out / "mlp.network.json"), mlp.x)
    np.testing.assert_allclose(got, mlp.want, atol=ATOL, rtol=0)


def test_rust_forward_matches_torch(mlp: SimpleNamespace) -> None:
    from tests.support.rust import run, rust_tools

    inp, outp = mlp.tmp / "x.json", mlp.tmp / "y.json"
    inp.write_text(json.dumps({"shape": list(mlp.x.shape), "data": mlp.x.ravel().tolist()}))
    code, _, stderr = run(rust_tools().forward, mlp.out, inp, outp, "fann", "mlp")
    assert code == 0, stderr
    y = json.loads(outp.read_text())
    np.testing.assert_allclose(np.reshape(y["data"], y["shape"]), mlp.want, atol=ATOL, rtol=0)


def test_manifest_lists_the_network_and_verify_checks_it(mlp: SimpleNamespace, tmp_path: Path) -> None:
    (entry,) = read_manifest(mlp.out)["networks"]
    assert entry["file"] == "mlp.network.json" and (entry["inputs"], entry["outputs"]) == (5, 2)
    assert [(x["tensor"], x["function"]) for x in entry["layers"]] == [
        ("0", "Tanh"),
        ("2", "Sigmoid"),
        ("4", "ReLU"),
        ("6", "ReLULeaky"),
        ("8", "Linear"),
    ]
    assert run_cli("verify", mlp.out)[0] == 0
    copy = tmp_path / "copy"
    shutil.copytree(mlp.out, copy)
    doc = fann.load(copy / "mlp.network.json")
    doc["layers"][2]["neurons"][1]["activation_function"] = "Tanh"
    (copy / "mlp.network.json").write_text(json.dumps(doc))
    assert_cli_error(run_cli("verify", copy), 8, "mlp.network.json")


def test_evaluator_follows_run_where_it_is_unusual() -> None:
    """Network::run as neuron.rs computes it: Sigmoid is 1/(1+exp(-s*x)) (not FANN's 2*s*x), a
    variant apply_activation_function does not list returns x, a connection past the previous layer
    is skipped, a bias neuron keeps its stored value, and a wrong input width gives no output."""
    doc = fann.network_document([(np.array([[2.0, -1.0, 0.5]], np.float32), "sigmoid")])
    x = np.array([[0.3, 0.7]])
    s = 2.0 * 0.3 - 0.7 + 0.5
    np.testing.assert_allclose(fann.run(doc, x), [[1 / (1 + np.exp(-s))]], atol=1e-7)
    doc["layers"][1]["neurons"][0]["activation_steepness"] = 3.0
    np.testing.assert_allclose(fann.run(doc, x), [[1 / (1 + np.exp(-3 * s))]], atol=1e-7)
    doc["layers"][1]["neurons"][0]["activation_function"] = "Elliot"
    np.testing.assert_allclose(fann.run(doc, x), [[s]], atol=1e-6)
    doc["layers"][1]["neurons"][0]["connections"].append({"from_neuron": 9, "to_neuron": 3, "weight": 5.0})
    doc["layers"][0]["neurons"][-1]["value"] = 2.0
    np.testing.assert_allclose(fann.run(doc, x), [[s + 0.5]], atol=1e-6)
    assert fann.run(doc, np.ones((1, 3))).shape == (1, 0)


@pytest.mark.parametrize(
    ("option", "code", "needles"),
    [
        (SPEC.replace("relu,6", "softplus,6"), 7, ("'4'", "softplus", "ruv_fann_networks=false")),
        (SPEC.replace("4:relu", "9:relu"), 7, ("'9' is not a dense layer",)),
        ("dense_networks=mlp=0:tanh,2:relu,6:relu", 7, ("'6' takes 6 inputs", "gives 4")),
        ("dense_networks=mlp", 2, ("NAME=PATH:ACTIVATION",)),
        ("dense_networks=../x=0:tanh,2:relu", 2, ("not a safe file name",)),
        ("dense_networks=a=0:tanh;a=2:relu", 7, ("two networks are named 'a'",)),
    ],
)
def test_bad_networks_are_refused_and_nothing_is_written(
    mlp: SimpleNamespace, tmp_path: Path, option: str, code: int, needles: tuple[str, ...]
) -> None:
    out = tmp_path / "out"
    assert_cli_error(_convert(mlp.src, out, option), code, *needles)
    assert_no_output(out)
    assert_cli_error(_convert(mlp.src, out, option, dry_run=True), code, *needles)  # refused before any work


def test_without_activations_no_network_is_written_and_the_run_says_why(mlp: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "out"
    code, _, stderr = _convert(mlp.src, out, "module_types=2=Linear")
    assert code == 0, stderr
    assert "no ruv-FANN network.json written" in stderr and not list(out.glob("*.network.json"))
    assert "networks" not in read_manifest(out)
    quiet = tmp_path / "quiet"
    code, _, stderr = _convert(mlp.src, quiet, "module_types=2=Linear", "ruv_fann_networks=false")
    assert code == 0 and "network.json" not in stderr


# --- NeuralForecast: each MLP stack, from the class and its config -------------------------------


@pytest.fixture(scope="module")
def forecasters(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    pytest.importorskip("neuralforecast")
    from tests.support.nf_models import TRAINER, H, quiet

    quiet()
    from neuralforecast import NeuralForecast, models as m
    from neuralforecast.utils import AirPassengersDF

    tmp = tmp_path_factory.mktemp("nf_fann")
    models = [
        m.MLP(h=H, input_size=24, hidden_size=8, num_layers=2, **TRAINER),
        m.NHITS(h=H, input_size=24, mlp_units=[[8, 8], [8, 8]], n_blocks=[1, 1, 1], activation="Tanh", **TRAINER),
        m.NBEATS(
            h=H,
            input_size=24,
            mlp_units=[[8, 8]],
            n_blocks=[1, 1],
            stack_types=["identity", "identity"],
            activation="LeakyReLU",
            **TRAINER,
        ),
        m.LSTM(
            h=H,
            input_size=-1,
            encoder_hidden_size=8,
            decoder_hidden_size=8,
            decoder_layers=3,
            decoder_activation="Sigmoid",
            **TRAINER,
        ),
    ]
    nf = NeuralForecast(models=models, freq="ME")
    nf.fit(AirPassengersDF)
    folder, out = tmp / "nf", tmp / "out"
    nf.save(str(folder))
    code, _, stderr = run_cli("nf-to-safetensors", folder, out, "--layout", "neuro-divergent", timeout=300)
    assert code == 0, stderr
    loaded = NeuralForecast.load(str(folder))
    return SimpleNamespace(out=out, models={type(mod).__name__: mod.eval() for mod in loaded.models}, tmp=tmp)


def test_neuralforecast_mlp_model_is_one_network(forecasters: SimpleNamespace) -> None:
    """The MLP's whole forward (its mlp layers, torch.relu after each, then out) is the network."""
    model = forecasters.models["MLP"]
    (entry,) = read_manifest(forecasters.out / "MLP")["networks"]
    assert [x["module"] for x in entry["layers"]] == ["mlp.0", "mlp.1", "out"]
    x = torch.randn(6, 24, generator=torch.Generator().manual_seed(8))
    batch = {"insample_y": x.unsqueeze(-1), "futr_exog": None, "hist_exog": None, "stat_exog": None}
    with torch.no_grad():
        want = model(batch).reshape(6, -1).numpy()
    got = fann.run(fann.load(forecasters.out / "MLP" / entry["file"]), x.numpy())
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize(("folder", "function"), [("NHITS", "Tanh"), ("NBEATS", "ReLULeaky")])
def test_neuralforecast_block_stacks_match_their_sequential(forecasters: SimpleNamespace, folder: str, function: str) -> None:
    """Each block's `layers` (Linear, Linear, act, ..., Linear) is one network: torch's Sequential."""
    model = forecasters.models[folder]
    networks = read_manifest(forecasters.out / folder)["networks"]
    assert [n["name"] for n in networks] == [f"blocks.{b}.layers" for b in range(len(model.blocks))]
    for entry, block in zip(networks, model.blocks, strict=True):
        functions = [x["function"] for x in entry["layers"]]
        assert functions[0] == functions[-1] == "Linear" and function in functions
        x = torch.randn(5, block.layers[0].in_features, generator=torch.Generator().manual_seed(9))
        with torch.no_grad():
            want = block.layers(x).numpy()
        got = fann.run(fann.load(forecasters.out / folder / entry["file"]), x.numpy())
        np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=entry["name"])
    assert run_cli("verify", forecasters.out / folder)[0] == 0


def test_neuralforecast_recurrent_decoder_mlp_is_a_network(forecasters: SimpleNamespace) -> None:
    """The LSTM's decoder (common/_modules.py MLP: Linear, act, Dropout, ..., Linear) is one network;
    its gates stay tensors."""
    model = forecasters.models["LSTM"]
    (entry,) = read_manifest(forecasters.out / "LSTM")["networks"]
    assert entry["name"] == "mlp_decoder.layers"
    assert [x["function"] for x in entry["layers"]] == ["Sigmoid", "Sigmoid", "Linear"]
    x = torch.randn(7, model.mlp_decoder.layers[0].in_features, generator=torch.Generator().manual_seed(10))
    with torch.no_grad():
        want = model.mlp_decoder.layers(x).numpy()
    got = fann.run(fann.load(forecasters.out / "LSTM" / entry["file"]), x.numpy())
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


def test_neuralforecast_activation_ruv_fann_lacks_is_refused(forecasters: SimpleNamespace) -> None:
    """NHITS with SELU: ruv-FANN has no SELU neuron, so the run fails naming it and writes nothing;
    ruv_fann_networks=false writes the tensors alone."""
    from neuralforecast import NeuralForecast, models as m
    from neuralforecast.utils import AirPassengersDF

    from tests.support.nf_models import TRAINER, H

    nf = NeuralForecast(
        models=[m.NHITS(h=H, input_size=24, mlp_units=[[8, 8]], n_blocks=[1, 1, 1], activation="SELU", **TRAINER)], freq="ME"
    )
    nf.fit(AirPassengersDF)
    folder, out = forecasters.tmp / "selu", forecasters.tmp / "selu_out"
    nf.save(str(folder))
    assert_cli_error(
        run_cli("nf-to-safetensors", folder, out, "--layout", "neuro-divergent", timeout=300), 7, "blocks.0.layers", "'selu'"
    )
    assert_no_output(out)
    code, _, stderr = run_cli(
        "nf-to-safetensors", folder, out, "--layout", "neuro-divergent", "--layout-option", "ruv_fann_networks=false", timeout=300
    )
    assert code == 0, stderr
    assert not list((out / "NHITS").glob("*.network.json"))


def test_overwrite_takes_back_its_own_networks(mlp: SimpleNamespace, forecasters: SimpleNamespace) -> None:
    """The networks a manifest lists are this tool's own files, so the same
    conversion run again with --overwrite replaces them (a torch file's output, and a NeuralForecast
    save's folder of model outputs); a file the manifest does not list still refuses it (9)."""
    out = mlp.tmp / "again"
    shutil.copytree(mlp.out, out)
    again = ("pth-to-safetensors", mlp.src, out, "--layout", "neuro-divergent", "--layout-option", SPEC, "--overwrite")
    code, _, stderr = run_cli(*again)
    assert code == 0, stderr
    assert run_cli("verify", out, "--source", mlp.src)[0] == 0
    nf_out = forecasters.tmp / "again"
    shutil.copytree(forecasters.out, nf_out)
    args = ("nf-to-safetensors", forecasters.tmp / "nf", nf_out, "--layout", "neuro-divergent", "--overwrite")
    code, _, stderr = run_cli(*args, timeout=300)
    assert code == 0, stderr
    assert run_cli("verify", nf_out / "MLP", "--source", forecasters.tmp / "nf")[0] == 0
    (out / "notes.network.json").write_text("{}")
    before = sorted(p.name for p in out.iterdir())
    assert_cli_error(run_cli(*again), 9, "notes.network.json")
    assert sorted(p.name for p in out.iterdir()) == before
