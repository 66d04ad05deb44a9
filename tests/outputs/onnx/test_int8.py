"""`convert to-onnx --quantize`: int8 graphs for ort (dynamic-int8) and tract (qdq-int8), validated
against the source framework like every float export, and read back by `onnx-to-safetensors`.

The fixtures are trained briefly, so their outputs move with the input (a corrupted int8 weight then
moves them too); each model is exported once per mode (module-scoped), then checked independently:
onnx.checker, ONNX Runtime against the source at a batch size validation did not use, the Q/DQ
nodes of qdq graphs one scale and zero point each (tract reads only the first).
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="exports torch models")
onnx = pytest.importorskip("onnx", reason="needs the onnx extra")
pytest.importorskip("onnxruntime", reason="needs the onnx extra")
pytest.importorskip("onnxsim", reason="needs the onnx extra")

from tests.support import REPO as ROOT, assert_cli_error, assert_no_output, read_manifest, run_cli  # noqa: E402
from tests.support.onnx_models import run_onnx, write_models  # noqa: E402

SENTIMENT = ROOT / "fixtures" / "sentiment"
MODES = ("dynamic-int8", "qdq-int8")
SHARE = 0.05  # the default bound: this share of each output's range (README, "Int8 ONNX")


@dataclass
class Case:
    """A trained model saved as a user would, the CLI arguments that export it, and its forward pass."""

    src: Path
    args: tuple[str, ...]
    forward: Callable[[np.ndarray], np.ndarray]
    sample: Callable[[np.random.Generator, int], np.ndarray]  # inputs of a batch size
    input_name: str


def fit(module: Any, inputs: Any, loss: Callable[[Any], Any], steps: int = 150) -> Any:
    """A few Adam steps, so the weights are a trained network's rather than an initializer's."""
    torch.manual_seed(0)
    optimizer = torch.optim.Adam(module.parameters(), lr=1e-2)
    module.train()
    for _ in range(steps):
        optimizer.zero_grad()
        loss(module(inputs)).backward()
        optimizer.step()
    return module.eval()


def torch_forward(module: Any) -> Callable[[np.ndarray], np.ndarray]:
    def forward(x: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            return module(torch.from_numpy(x)).numpy()

    return forward


def floats(*shape: int) -> Callable[[np.random.Generator, int], np.ndarray]:
    return lambda rng, n: rng.standard_normal((n, *shape)).astype(np.float32)


def token_ids(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(1, 200, (n, 12)).astype(np.int64)


def sentiment_labels(ids: Any) -> Any:
    """A learnable rule: how many ids fall below 100 decides the class."""
    low = (ids < 100).sum(1)
    return torch.where(low > 7, 0, torch.where(low < 5, 2, 1))


@pytest.fixture(scope="module")
def cases(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Case]:
    """The MLP, the small CNN and the sentiment LSTM (torch); the Keras model is added by its own fixture."""
    root = tmp_path_factory.mktemp("int8")
    models = write_models(root)
    sentiment = write_models(root, (SENTIMENT / "sentiment.py").read_text(), "sentiment")
    rng = np.random.default_rng(0)
    teacher = torch.from_numpy(rng.standard_normal((6, 3)).astype(np.float32))
    x = torch.from_numpy(floats(6)(rng, 256))
    mlp = fit(models.mlp(), x, lambda y: torch.nn.functional.mse_loss(y, 2 * torch.sin(x @ teacher)))
    images = torch.from_numpy(floats(3, 12, 12)(rng, 64))
    mixing = torch.from_numpy(rng.standard_normal((3, 4)).astype(np.float32))
    target = 3 * torch.tanh(8 * images.mean((2, 3)) @ mixing)
    cnn = fit(models.cnn(), images, lambda y: torch.nn.functional.mse_loss(y, target))
    ids = torch.from_numpy(token_ids(rng, 128))
    labels = sentiment_labels(ids)
    classifier = fit(sentiment.build(), ids, lambda p: torch.nn.functional.nll_loss(torch.log(p + 1e-9), labels), steps=60)
    for name, module in (("mlp", mlp), ("cnn", cnn), ("sentiment", classifier)):
        torch.save(module.state_dict(), root / f"{name}.pt")
    return {
        "mlp": Case(
            root / "mlp.pt", ("--module", "onnx_models:mlp", "--input-shape", "x=4x6"), torch_forward(mlp), floats(6), "x"
        ),
        "cnn": Case(
            root / "cnn.pt",
            ("--module", "onnx_models:cnn", "--input-shape", "images=2x3x12x12"),
            torch_forward(cnn),
            floats(3, 12, 12),
            "images",
        ),
        "sentiment": Case(
            root / "sentiment.pt",
            ("--module", "sentiment:build", "--input-shape", "tokens=4x12", "--dynamic-axis", "tokens:1=seq"),
            torch_forward(classifier),
            token_ids,
            "tokens",
        ),
    }


@pytest.fixture(scope="module")
def keras_case(cases: dict[str, Case]) -> Case:
    """A Keras Conv1D + Dense model fitted on a rule of its input, saved as .keras."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    pytest.importorskip("tensorflow", reason="Keras export needs TensorFlow (the tensorflow extra)")
    keras = pytest.importorskip("keras", reason="Keras export needs Keras 3")
    pytest.importorskip("tf2onnx", reason="Keras's ONNX export needs tf2onnx (the onnx extra)")
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((10, 4), name="signal"),
            keras.layers.Conv1D(8, 3, activation="relu"),
            keras.layers.GlobalAveragePooling1D(),
            keras.layers.Dense(3),
        ]
    )
    rng = np.random.default_rng(1)
    signal = floats(10, 4)(rng, 256)
    target = 3 * np.tanh(signal.mean(1) @ rng.standard_normal((4, 3)).astype(np.float32)) + signal.max(1)[:, :3]
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="mse")
    model.fit(signal, target, epochs=30, batch_size=64, verbose=0)
    src = cases["mlp"].src.parent / "signal.keras"
    model.save(src)
    return Case(src, ("--input-shape", "signal=4x10x4"), lambda x: np.asarray(model(x)), floats(10, 4), "signal")


@pytest.fixture(scope="module")
def exports(cases: dict[str, Case]) -> dict[tuple[str, str], Path]:
    """(model, mode) -> its output folder, filled as the tests ask: each export runs once."""
    return {}


def case_of(name: str, cases: dict[str, Case], request: pytest.FixtureRequest) -> Case:
    return request.getfixturevalue("keras_case") if name == "keras" else cases[name]


def exported(name: str, mode: str, case: Case, exports: dict[tuple[str, str], Path], *extra: str) -> Path:
    if (name, mode) not in exports:
        out = case.src.parent / f"{name}-{mode}"
        rc, stdout, stderr = run_cli(
            "to-onnx", case.src, out, *case.args, "--quantize", mode, *extra, cwd=case.src.parent, timeout=900
        )
        assert rc == 0, stderr
        assert "Traceback" not in stderr and mode in stdout
        exports[name, mode] = out
    return exports[name, mode]


def calibration_args(name: str, mode: str, case: Case) -> tuple[str, ...]:
    """The sentiment classifier's qdq graph is calibrated on the user's own ids (the issue's command);
    the others on generated inputs."""
    if name != "sentiment" or mode != "qdq-int8":
        return ()
    np.savez(case.src.parent / "calib.npz", tokens=token_ids(np.random.default_rng(7), 32))
    return ("--calibration", "calib.npz")


def per_tensor_problems(model: Any) -> list[str]:
    """Q/DQ nodes whose scale or zero point is not one constant initializer value (tract's rule)."""
    sizes = {t.name: int(np.prod(t.dims)) for t in model.graph.initializer}
    return [
        f"{node.op_type} {node.name}: {name}"
        for node in model.graph.node
        if node.op_type in ("QuantizeLinear", "DequantizeLinear")
        for name in node.input[1:3]
        if sizes.get(name) != 1
    ]


@pytest.mark.parametrize(
    ("name", "mode"), [(name, mode) for name in ("mlp", "cnn", "sentiment") for mode in MODES] + [("keras", "qdq-int8")]
)
def test_int8_graph_is_checked_and_matches_the_source(
    name: str, mode: str, cases: dict[str, Case], exports: dict[tuple[str, str], Path], request: pytest.FixtureRequest
) -> None:
    case = case_of(name, cases, request)
    out = exported(name, mode, case, exports, *calibration_args(name, mode, case))
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "model.onnx"]
    graph = read_manifest(out)["graph"]
    onnx.checker.check_model(str(out / "model.onnx"))
    model = onnx.load(str(out / "model.onnx"))
    int8 = [t for t in model.graph.initializer if t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8)]
    assert int8, "the graph holds no int8 weight"
    record = graph["quantization"]
    assert record["mode"] == mode and record["int8_weight_ops"]
    (output,) = [o["name"] for o in graph["outputs"]]
    float_validation = record["float_graph"]["validation"]
    assert float_validation["atol"] <= 1e-4  # the float graph was proved first
    low, high = float_validation["output_range"][output]
    bound = record["atol"][output]
    assert bound == pytest.approx(SHARE * (high - low)) and record["atol_from"].startswith("default")
    validation = graph["validation"]
    assert validation["atol"] == record["atol"] and len(validation["batch_sizes"]) == 2  # both sizes ran
    assert validation["max_abs_diff"][output] <= bound
    if mode == "qdq-int8":
        assert per_tensor_problems(model) == []
        assert record["per_channel"] is False and "tract" in record["runtimes"]
        assert record["calibration"]["from"] == (
            "--calibration calib.npz" if name == "sentiment" else record["calibration"]["from"]
        )
    else:
        assert record["per_channel"] is True and "calibration" not in record
    if name == "sentiment":
        assert graph["inputs"][0]["dtype"] == "int64"  # the ids stay integers
        assert ("DynamicQuantizeLSTM" in graph["operators"]) == (mode == "dynamic-int8")
    rng = np.random.default_rng(11)
    x = case.sample(rng, 7)  # a batch size validation never ran
    expected = case.forward(x)
    assert np.ptp(expected) > 0.5, "the fixture's outputs hardly move: a broken weight could pass"
    got = run_onnx(out / "model.onnx", {case.input_name: x})[0]
    error = float(np.abs(got - expected).max())
    assert error <= bound, (error, bound)
    print(
        f"\n{name} {mode}: max |diff| {error:.4f} here, {validation['max_abs_diff'][output]:.4f} in validation "
        f"({validation['max_rel_diff'][output]:.4f} of range {high - low:.3f}); "
        f"int8 {(out / 'model.onnx').stat().st_size} B, float {record['float_graph']['bytes']} B"
    )


def corrupted(quantize: Callable[..., Any]) -> Callable[..., Any]:
    """ONNX Runtime's quantizer, with the largest int8 weight of its graph negated: what a broken
    quantization would write."""
    from onnx import numpy_helper

    def run(*args: Any) -> Any:
        model, record = quantize(*args)
        int8 = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
        target = max(int8, key=lambda t: int(np.prod(t.dims)))
        flipped = np.clip(-numpy_helper.to_array(target).astype(np.int16), -128, 127).astype(np.int8)
        target.CopyFrom(numpy_helper.from_array(flipped, target.name))
        return model, record

    return run


def test_corrupted_int8_weight_fails_and_leaves_nothing(cases: dict[str, Case], monkeypatch: pytest.MonkeyPatch) -> None:
    """The sentiment classifier, trained: its largest int8 weight negated moves the probabilities
    well past the default bound."""
    from click.testing import CliRunner

    from convert.cli import cli
    from exporters.onnx_export import pipeline

    case = cases["sentiment"]
    monkeypatch.setattr(pipeline, "quantize", corrupted(pipeline.quantize))
    monkeypatch.chdir(case.src.parent)
    out = case.src.parent / "corrupted"
    result = CliRunner().invoke(cli, ["to-onnx", str(case.src), str(out), *case.args, "--quantize", "dynamic-int8"])
    assert result.exit_code == 8, result.output
    assert "Traceback" not in result.stderr and len(result.stderr.splitlines()) == 1, result.stderr
    assert "output 'output' differs from the source by" in result.stderr
    assert "default bound, 0.05 of its range:" in result.stderr and "no ONNX file was written" in result.stderr
    assert_no_output(out)
    print(f"\n{result.stderr}")


def test_quantized_atol_is_the_bound(cases: dict[str, Case]) -> None:
    """A bound the int8 graph cannot meet: exit 8 naming the output, its error and the option."""
    case = cases["mlp"]
    out = case.src.parent / "too-tight"
    result = run_cli(
        "to-onnx",
        case.src,
        out,
        *case.args,
        "--quantize",
        "dynamic-int8",
        "--quantized-atol",
        "1e-6",
        cwd=case.src.parent,
        timeout=900,
    )
    assert_cli_error(result, 8, "output 'output' differs from the source by", "--quantized-atol 1e-06")
    assert_no_output(out)


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (("--quantize", "dynamic-int8", "--calibration", "calib.npz"), "--calibration calibrates --quantize qdq-int8"),
        (("--quantized-atol", "0.1"), "give --quantize too"),
        (("--quantize", "int4"), "'int4' is not one of"),
    ],
)
def test_quantization_options_that_disagree_are_usage_errors(tmp_path: Path, args: tuple[str, ...], needle: str) -> None:
    rc, _, stderr = result = run_cli("to-onnx", tmp_path / "model.pt", tmp_path / "out", *args, timeout=300)
    assert rc == 2, stderr
    if not needle.startswith("'int4'"):  # click words its own choice errors over several lines
        assert_cli_error(result, 2, needle)
    assert needle in stderr
    assert_no_output(tmp_path / "out")


def test_calibration_file_must_fit_the_inputs(cases: dict[str, Case]) -> None:
    case = cases["mlp"]
    np.savez(case.src.parent / "wrong.npz", y=np.zeros((8, 6), np.float32), z=np.zeros((8, 6), np.float32))
    out = case.src.parent / "wrong-calibration"
    result = run_cli(
        "to-onnx",
        case.src,
        out,
        *case.args,
        "--quantize",
        "qdq-int8",
        "--calibration",
        "wrong.npz",
        cwd=case.src.parent,
        timeout=900,
    )
    assert_cli_error(result, 2, "wrong.npz holds arrays ['y', 'z']; the model's inputs are ['x']")
    assert_no_output(out)


@pytest.mark.parametrize(("name", "mode"), [("mlp", "dynamic-int8"), ("mlp", "qdq-int8"), ("sentiment", "dynamic-int8")])
def test_int8_graph_to_safetensors_dequantized_or_kept(
    name: str, mode: str, cases: dict[str, Case], exports: dict[tuple[str, str], Path], tmp_path: Path
) -> None:
    """onnx-to-safetensors of our int8 graphs: the weights come back in the module's own names and
    layouts within half a quantization step of the trained weights, or as stored with their scales."""
    from safetensors.numpy import load_file

    case = cases[name]
    graph = exported(name, mode, case, exports)
    state = {k: v.numpy() for k, v in torch.load(case.src, weights_only=True).items()}
    rc, _, stderr = run_cli("onnx-to-safetensors", graph / "model.onnx", tmp_path / "deq", timeout=300)
    assert rc == 0, stderr
    dequantized = load_file(str(tmp_path / "deq" / "model.safetensors"))
    record = read_manifest(tmp_path / "deq")["source"]["details"]["quantization"]
    rc, _, stderr = run_cli("onnx-to-safetensors", graph / "model.onnx", tmp_path / "kept", "--quantized", "keep", timeout=300)
    assert rc == 0, stderr
    kept = load_file(str(tmp_path / "kept" / "model.safetensors"))
    assert read_manifest(tmp_path / "kept")["source"]["details"]["quantization"].keys() == record.keys()
    compared = 0
    for stored, entry in record.items():
        scale, zero = kept[entry["scale"]], kept[entry["zero_point"]]
        assert kept[stored].dtype in (np.int8, np.uint8, np.int32) and entry["tensor"] in dequantized
        shape = [kept[stored].shape[a] if a in entry["axes"] else 1 for a in range(kept[stored].ndim)]
        order = entry.get("permute", list(range(kept[stored].ndim)))
        by_hand = (kept[stored].astype(np.float64) - zero.reshape(shape)) * scale.reshape(shape)
        np.testing.assert_array_equal(dequantized[entry["tensor"]], by_hand.astype(np.float32).transpose(order))
        if entry["tensor"] in state:
            trained = state[entry["tensor"]]
            assert dequantized[entry["tensor"]].shape == trained.shape
            step = np.broadcast_to(scale.reshape(shape), kept[stored].shape).transpose(order)
            assert np.all(np.abs(dequantized[entry["tensor"]] - trained) <= step * 0.5 + 1e-6)
            compared += 1
    assert compared >= (1 if name == "sentiment" else 3), record  # the LSTM's W and R have ONNX's gate order
    assert all(entry["scale"] not in dequantized for entry in record.values() if entry["op"] != "DequantizeLinear")
    rc, stdout, stderr = run_cli("verify", tmp_path / "deq", "--source", graph / "model.onnx", timeout=300)
    assert rc == 0, stderr


def test_per_channel_qdq_graph_is_not_for_tract_but_reads_back(cases: dict[str, Case], tmp_path: Path) -> None:
    """Their graph: the CNN exported by torch and quantized by ONNX Runtime with per-channel weights.
    The per-tensor check that guards qdq-int8 names its Q/DQ nodes; onnx-to-safetensors still
    dequantizes each output channel with its own scale."""
    from onnxruntime.quantization import QuantFormat, quantize_static
    from safetensors.numpy import load_file

    from exporters.onnx_export.quantize import tract_violations

    case = cases["cnn"]
    module = write_models(tmp_path).cnn()
    module.load_state_dict(torch.load(case.src, weights_only=True))
    images = floats(3, 12, 12)(np.random.default_rng(3), 8)
    torch.onnx.export(module.eval(), (torch.from_numpy(images),), tmp_path / "cnn.onnx", input_names=["images"], dynamo=False)

    class Reader:
        feeds = iter([{"images": images}])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    quantize_static(
        str(tmp_path / "cnn.onnx"), str(tmp_path / "int8.onnx"), Reader(), quant_format=QuantFormat.QDQ, per_channel=True
    )
    quantized = onnx.load(str(tmp_path / "int8.onnx"))
    assert per_tensor_problems(quantized) and tract_violations(quantized)
    assert any("holds 8 values (per axis)" in problem for problem in tract_violations(quantized))
    rc, _, stderr = run_cli("onnx-to-safetensors", tmp_path / "int8.onnx", tmp_path / "deq", timeout=300)
    assert rc == 0, stderr
    record = read_manifest(tmp_path / "deq")["source"]["details"]["quantization"]
    weights = load_file(str(tmp_path / "deq" / "model.safetensors"))
    scales = {t.name: onnx.numpy_helper.to_array(t) for t in quantized.graph.initializer}
    per_channel = [e for e in record.values() if e["axes"] == [0] and e["tensor"] in weights and weights[e["tensor"]].ndim == 4]
    assert per_channel, record
    for entry in per_channel:  # the BatchNorm is folded into the conv, so compare with the graph's own float weight
        float_weight = next(
            onnx.numpy_helper.to_array(t)
            for t in onnx.load(str(tmp_path / "cnn.onnx")).graph.initializer
            if t.name == entry["tensor"]
        )
        step = scales[entry["scale"]].reshape(-1, 1, 1, 1)
        assert np.all(np.abs(weights[entry["tensor"]] - float_weight) <= step * 0.5 + 1e-6)
