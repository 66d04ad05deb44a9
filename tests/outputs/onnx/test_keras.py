"""`convert to-onnx` for Keras: .keras files through Keras's own ONNX export, SavedModel folders
through tf2onnx, each validated against Keras/TensorFlow; Lambda code is never run."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
pytest.importorskip("tensorflow", reason="Keras export needs TensorFlow (the tensorflow extra)")
keras = pytest.importorskip("keras", reason="Keras export needs Keras 3")
pytest.importorskip("tf2onnx", reason="Keras's ONNX export needs tf2onnx (the onnx extra)")
pytest.importorskip("onnxruntime", reason="needs the onnx extra")

from tests.support import assert_cli_error, assert_no_output, read_manifest, run_cli  # noqa: E402
from tests.support.onnx_models import run_onnx  # noqa: E402


@pytest.fixture(scope="module")
def sequential(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, Path, Path]:
    """A Keras Sequential with Conv1D, LSTM and Dense over a variable-length sequence; as .keras and SavedModel."""
    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [
            keras.Input((None, 3), name="signal"),
            keras.layers.Conv1D(6, 3, padding="same", activation="relu"),
            keras.layers.LSTM(5, return_sequences=True),
            keras.layers.Dense(2),
        ]
    )
    model(np.zeros((1, 4, 3), np.float32))
    root = tmp_path_factory.mktemp("keras")
    model.save(root / "seq.keras")
    model.export(str(root / "saved"), format="tf_saved_model", verbose=False)
    return model, root / "seq.keras", root / "saved"


def test_keras_file_exports_and_validates(tmp_path: Path, sequential: tuple[Any, Path, Path]) -> None:
    model, keras_file, _ = sequential
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli(
        "to-onnx", keras_file, out, "--input-shape", "signal=2x8x3", "--dynamic-axis", "signal:1=time", timeout=600
    )
    assert rc == 0, stderr
    assert "keras.Model.export(format='onnx')" in stdout
    graph = read_manifest(out)["graph"]
    assert graph["inputs"][0]["name"] == "signal" and graph["inputs"][0]["shape"] == ["batch", "time", 3]
    assert graph["validation"]["atol"] == 1e-4 and graph["validation"]["batch_sizes"] == [2, 4]
    assert {"Conv", "LSTM"} <= set(graph["operators"])
    signal = np.random.default_rng(0).standard_normal((3, 13, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(out / "model.onnx", {"signal": signal})[0], model(signal).numpy(), rtol=0, atol=1e-4)


def test_saved_model_exports_through_tf2onnx(tmp_path: Path, sequential: tuple[Any, Path, Path]) -> None:
    model, _, saved = sequential
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli("to-onnx", saved, out, "--input-shape", "signal=1x6x3", timeout=600)
    assert rc == 0, stderr
    doc = read_manifest(out)
    assert "tf2onnx on the SavedModel" in doc["graph"]["exporter"] and doc["source"]["format"] == "tf-saved-model"
    assert [o["name"] for o in doc["graph"]["outputs"]] == ["output_0"]
    signal = np.random.default_rng(1).standard_normal((2, 9, 3)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(out / "model.onnx", {"signal": signal})[0], model(signal).numpy(), rtol=0, atol=1e-4)


def test_lambda_layers_are_never_run(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((3,)), keras.layers.Lambda(lambda x: x * 2), keras.layers.Dense(2)])
    model.save(tmp_path / "lambda.keras")
    assert_cli_error(run_cli("to-onnx", tmp_path / "lambda.keras", tmp_path / "out", timeout=600), 5, "safe_mode")
    assert_no_output(tmp_path / "out")


def test_static_axis_cannot_be_made_dynamic(tmp_path: Path) -> None:
    model = keras.Sequential([keras.Input((4, 3), name="x"), keras.layers.Dense(2)])
    model.save(tmp_path / "static.keras")
    result = run_cli("to-onnx", tmp_path / "static.keras", tmp_path / "out", "--dynamic-axis", "x:1=seq", timeout=600)
    assert_cli_error(result, 2, "fixes that axis at 4")
    assert_no_output(tmp_path / "out")
