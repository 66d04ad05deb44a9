"""`convert to-onnx` for PyTorch: export, simplify, check and validate against torch itself.

Every export runs the CLI as a user does; the output is then checked independently: the manifest
against its schema, and ONNX Runtime against torch at a batch size validation did not use.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="exports torch models")
pytest.importorskip("onnxruntime", reason="needs the onnx extra")
pytest.importorskip("onnxsim", reason="needs the onnx extra")

from tests.support import REPO as ROOT, assert_cli_error, assert_no_output, read_manifest, run_cli  # noqa: E402
from tests.support.onnx_models import perturbed, run_onnx, write_models  # noqa: E402


@pytest.fixture
def models(tmp_path: Path) -> Any:
    return write_models(tmp_path)


def save_weights(module: Any, path: Path) -> Path:
    torch.save(module.state_dict(), path)
    return path


def export(tmp_path: Path, src: Path, *args: str) -> dict[str, Any]:
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli("to-onnx", src, out, *args, cwd=tmp_path, timeout=600)
    assert rc == 0, stderr
    assert "Traceback" not in stderr
    names = sorted(p.name for p in out.iterdir())
    assert names in (["manifest.json", "model.onnx"], ["manifest.json", "model.onnx", "model.onnx.data"])
    return read_manifest(out)


def assert_matches_torch(onnx_path: Path, module: Any, inputs: dict[str, np.ndarray], atol: float) -> None:
    with torch.no_grad():
        expected = module(*[torch.from_numpy(a) for a in inputs.values()])
    got = run_onnx(onnx_path, inputs)[0]
    np.testing.assert_allclose(got, expected.numpy(), rtol=0, atol=atol)


def test_mlp_exports_with_named_dynamic_batch_and_validates(tmp_path: Path, models: Any) -> None:
    model = models.mlp().eval()
    doc = export(tmp_path, save_weights(model, tmp_path / "mlp.pt"), "--module", "onnx_models:mlp", "--input-shape", "x=2x6")
    graph = doc["graph"]
    assert doc["target"]["format"] == "onnx" and doc["tensors"] == []
    assert [f["path"] for f in doc["files"]] == ["model.onnx"]
    assert "dynamo=True" in graph["exporter"] and graph["simplified"] is True
    assert graph["inputs"] == [{"name": "x", "dtype": "float", "shape": ["batch", 6], "dynamic_axes": {"0": "batch"}}]
    assert graph["outputs"][0]["name"] == "output" and graph["outputs"][0]["shape"] == ["batch", 3]
    validation = graph["validation"]
    assert validation["batch_sizes"] == [2, 4] and validation["atol"] == 1e-5
    assert validation["max_abs_diff"]["output"] <= 1e-5
    assert [m["path"] for m in doc["architecture"]["modules"]] == ["fc1", "fc2", "head"]
    x = np.random.default_rng(1).standard_normal((7, 6)).astype(np.float32)
    assert_matches_torch(tmp_path / "out" / "model.onnx", model, {"x": x}, 1e-5)


def test_cnn_with_batchnorm_from_safetensors_weights(tmp_path: Path, models: Any) -> None:
    from safetensors.torch import save_file

    model = models.cnn()
    with torch.no_grad():  # statistics a trained network would have, so BatchNorm does something
        for bn in (model.bn1, model.bn2):
            bn.running_mean.uniform_(-1, 1)
            bn.running_var.uniform_(0.5, 2)
            bn.weight.uniform_(0.5, 1.5)
    model.eval()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(tmp_path / "cnn.safetensors"))
    doc = export(tmp_path, tmp_path / "cnn.safetensors", "--module", "onnx_models:cnn", "--input-shape", "images=1x3x16x16")
    assert doc["graph"]["validation"]["batch_sizes"] == [1, 3]
    assert doc["graph"]["inputs"][0]["shape"] == ["batch", 3, 16, 16]
    images = np.random.default_rng(2).standard_normal((5, 3, 16, 16)).astype(np.float32)
    assert_matches_torch(tmp_path / "out" / "model.onnx", model, {"images": images}, 1e-5)


def test_lstm_with_dynamic_sequence_axis(tmp_path: Path, models: Any) -> None:
    model = models.tagger().eval()
    doc = export(
        tmp_path,
        save_weights(model, tmp_path / "tagger.pt"),
        "--module",
        "onnx_models:tagger",
        "--input-shape",
        "tokens=2x7x5",
        "--dynamic-axis",
        "tokens:1=seq",
    )
    graph = doc["graph"]
    assert graph["inputs"][0]["dynamic_axes"] == {"0": "batch", "1": "seq"}
    assert graph["validation"]["atol"] == 1e-4  # recurrent: the default tolerance is looser
    assert "LSTM" in graph["operators"]
    tokens = np.random.default_rng(3).standard_normal((3, 11, 5)).astype(np.float32)  # a length never tried
    assert_matches_torch(tmp_path / "out" / "model.onnx", model, {"tokens": tokens}, 1e-4)


def test_torchscript_exporter_is_named_in_the_output(tmp_path: Path, models: Any) -> None:
    src = save_weights(models.mlp(), tmp_path / "mlp.pt")
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli(
        "to-onnx",
        src,
        out,
        "--module",
        "onnx_models:mlp",
        "--input-shape",
        "x=2x6",
        "--exporter",
        "torchscript",
        "--no-simplify",
        cwd=tmp_path,
        timeout=600,
    )
    assert rc == 0, stderr
    assert "TorchScript" in stdout and "simplified" not in stdout
    graph = read_manifest(out)["graph"]
    assert "TorchScript" in graph["exporter"] and graph["simplified"] is False


def test_pt2_program_uses_its_example_inputs(tmp_path: Path, models: Any) -> None:
    model = models.mlp().eval()
    program = torch.export.export(model, (torch.randn(3, 6),), dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
    torch.export.save(program, tmp_path / "mlp.pt2")
    doc = export(tmp_path, tmp_path / "mlp.pt2", "--json")
    validation = doc["graph"]["validation"]
    assert validation["inputs"] == ["example"] and validation["batch_sizes"] == [3, 5]
    assert doc["source"]["format"] == "pytorch-export-program"
    assert doc["graph"]["inputs"][0]["dynamic_axes"] == {"0": "batch"}
    x = np.random.default_rng(4).standard_normal((2, 6)).astype(np.float32)
    assert_matches_torch(tmp_path / "out" / "model.onnx", model, {"x": x}, 1e-5)


def test_pt2_with_static_batch_is_refused(tmp_path: Path, models: Any) -> None:
    program = torch.export.export(models.mlp().eval(), (torch.randn(3, 6),))
    torch.export.save(program, tmp_path / "static.pt2")
    assert_cli_error(run_cli("to-onnx", tmp_path / "static.pt2", tmp_path / "out", timeout=600), 4, "static batch size")
    assert_no_output(tmp_path / "out")


def test_user_inputs_from_npz_are_validated_too(tmp_path: Path, models: Any) -> None:
    src = save_weights(models.mlp(), tmp_path / "mlp.pt")
    np.savez(tmp_path / "inputs.npz", x=np.random.default_rng(5).standard_normal((6, 6)).astype(np.float32))
    doc = export(tmp_path, src, "--module", "onnx_models:mlp", "--input-shape", "x=2x6", "--inputs", "inputs.npz")
    validation = doc["graph"]["validation"]
    assert validation["inputs"] == ["generated", "inputs.npz"]
    assert validation["batch_sizes"] == [2, 4, 6, 8]


def test_npz_with_pickled_objects_is_refused(tmp_path: Path, models: Any) -> None:
    src = save_weights(models.mlp(), tmp_path / "mlp.pt")
    np.savez(tmp_path / "inputs.npz", x=np.array([{"a": 1}], dtype=object))
    result = run_cli(
        "to-onnx",
        src,
        tmp_path / "out",
        "--module",
        "onnx_models:mlp",
        "--input-shape",
        "x=2x6",
        "--inputs",
        "inputs.npz",
        cwd=tmp_path,
        timeout=600,
    )
    assert_cli_error(result, 5, "object arrays")
    assert_no_output(tmp_path / "out")


def test_large_graph_weights_go_to_external_data(tmp_path: Path, models: Any) -> None:
    model = models.wide().eval()
    doc = export(
        tmp_path,
        save_weights(model, tmp_path / "wide.pt"),
        "--module",
        "onnx_models:wide",
        "--input-shape",
        "x=1x600",
        "--external-data-threshold",
        "1MB",
    )
    out = tmp_path / "out"
    assert [f["path"] for f in doc["files"]] == ["model.onnx", "model.onnx.data"]
    assert doc["graph"]["external_data"] == "model.onnx.data"
    assert (out / "model.onnx").stat().st_size < 100_000 < (out / "model.onnx.data").stat().st_size
    for entry in doc["files"]:
        assert (out / entry["path"]).stat().st_size == entry["bytes"]
    x = np.random.default_rng(6).standard_normal((2, 600)).astype(np.float32)
    assert_matches_torch(out / "model.onnx", model, {"x": x}, 1e-4)


def test_weights_that_do_not_fit_the_module_are_a_mapping_error(tmp_path: Path, models: Any) -> None:
    state = models.mlp().state_dict()
    state.pop("head.bias")
    torch.save(state, tmp_path / "partial.pt")
    result = run_cli(
        "to-onnx",
        tmp_path / "partial.pt",
        tmp_path / "out",
        "--module",
        "onnx_models:mlp",
        "--input-shape",
        "x=2x6",
        cwd=tmp_path,
        timeout=600,
    )
    assert_cli_error(result, 7, "head.bias")
    assert_no_output(tmp_path / "out")


def test_a_folder_of_several_models_is_not_weights_for_a_module(tmp_path: Path, models: Any) -> None:
    folder = ROOT / "fixtures" / "neuralforecast" / "3.3.0" / "folder"  # a NeuralForecast save: nine models
    result = run_cli(
        "to-onnx", folder, tmp_path / "out", "--module", "onnx_models:mlp", "--input-shape", "x=2x6", cwd=tmp_path, timeout=600
    )
    assert_cli_error(result, 2, "--module takes one model's weights")
    assert_no_output(tmp_path / "out")


@pytest.mark.parametrize(
    "args, code, needle",
    [
        (("--module", "no_such_module:build"), 2, "cannot find"),
        (("--module", "onnx_models:mlp"), 2, "--input-shape x="),
        (("--module", "onnx_models:mlp", "--input-shape", "y=2x6"), 2, "inputs are ['x']"),
        (("--module", "onnx_models:mlp", "--input-shape", "x=2x6", "--output-names", "a,b"), 2, "2 names"),
        (("--module", "onnx_models:mlp", "--input-shape", "x=2x6", "--model", "NHITS"), 2, "NeuralForecast"),
    ],
)
def test_usage_errors_are_one_line(tmp_path: Path, models: Any, args: tuple[str, ...], code: int, needle: str) -> None:
    src = save_weights(models.mlp(), tmp_path / "mlp.pt")
    assert_cli_error(run_cli("to-onnx", src, tmp_path / "out", *args, cwd=tmp_path, timeout=600), code, needle)
    assert_no_output(tmp_path / "out")


def test_corrupted_export_is_rejected_and_nothing_is_left(tmp_path: Path, models: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Weights changed between export and validation (as a broken exporter or simplifier would):
    validation fails with exit 8 naming the output and the difference, and no ONNX file remains."""
    from click.testing import CliRunner

    from convert.cli import cli
    from exporters.onnx_export import pipeline

    original = pipeline.optimize
    monkeypatch.setattr(
        pipeline, "optimize", lambda model, simplify: (perturbed(original(model, simplify)[0]), original(model, simplify)[1])
    )
    monkeypatch.chdir(tmp_path)
    src = save_weights(models.mlp(), tmp_path / "mlp.pt")
    result = CliRunner().invoke(
        cli, ["to-onnx", str(src), str(tmp_path / "out"), "--module", "onnx_models:mlp", "--input-shape", "x=2x6"]
    )
    assert result.exit_code == 8, result.output
    assert "output 'output' differs from the source by" in result.stderr
    assert "no ONNX file was written" in result.stderr
    assert_no_output(tmp_path / "out")
    assert not list(tmp_path.rglob("*.onnx"))


def test_json_result_and_verify(tmp_path: Path, models: Any) -> None:
    src = save_weights(models.mlp(), tmp_path / "mlp.pt")
    rc, stdout, stderr = run_cli(
        "to-onnx",
        src,
        tmp_path / "out",
        "--module",
        "onnx_models:mlp",
        "--input-shape",
        "x=2x6",
        "--json",
        cwd=tmp_path,
        timeout=600,
    )
    assert rc == 0, stderr
    (graph,) = json.loads(stdout)["graphs"]
    assert graph["folder"] == "" and graph["files"] == ["model.onnx"] and graph["validation"]["passed"] is True
    assert stderr == ""
    rc, stdout, stderr = run_cli("verify", tmp_path / "out")
    assert rc == 0 and "ok: 1 file(s)" in stdout, stderr
    with open(tmp_path / "out" / "model.onnx", "ab") as fh:
        fh.write(b"\0")
    assert_cli_error(run_cli("verify", tmp_path / "out"), 8, "model.onnx: size or digest")


def test_sha256_digest_is_recorded_and_verified(tmp_path: Path, models: Any) -> None:
    import hashlib

    src = save_weights(models.mlp(), tmp_path / "mlp.pt")
    doc = export(tmp_path, src, "--module", "onnx_models:mlp", "--input-shape", "x=2x6", "--digest", "sha256")
    assert doc["digest_algorithm"] == "sha256"
    for f in doc["files"]:
        assert f["digest"] == hashlib.sha256((tmp_path / "out" / f["path"]).read_bytes()).hexdigest()
    for f in doc["source"]["files"]:
        assert f["digest"] == hashlib.sha256(Path(f["path"]).read_bytes()).hexdigest()
    rc, stdout, stderr = run_cli("verify", tmp_path / "out")
    assert rc == 0 and "ok: 1 file(s)" in stdout, stderr


def test_unknown_digest_is_refused_before_export(tmp_path: Path, models: Any) -> None:
    from convert.api import to_onnx
    from convert.errors import UsageError

    src = save_weights(models.mlp(), tmp_path / "mlp.pt")
    args = ("--module", "onnx_models:mlp", "--input-shape", "x=2x6")
    rc, _, err = run_cli("to-onnx", src, tmp_path / "out", *args, "--digest", "md5", cwd=tmp_path)
    assert rc == 2 and "md5" in err and "Traceback" not in err
    assert_no_output(tmp_path / "out")
    with pytest.raises(UsageError, match="md5"):
        to_onnx(src, tmp_path / "out", module="onnx_models:mlp", input_shapes={"x": (2, 6)}, digest="md5")
    assert_no_output(tmp_path / "out")


def test_output_folder_holding_the_source_is_refused(tmp_path: Path, models: Any) -> None:
    """--overwrite replaces the whole output folder: never one holding the source (exit 2, as for
    every conversion), and the source is left as it was."""
    src = save_weights(models.mlp(), tmp_path / "mlp.pt")
    before = src.read_bytes()
    args = ("--module", "onnx_models:mlp", "--input-shape", "x=2x6", "--overwrite")
    assert_cli_error(run_cli("to-onnx", src, tmp_path, *args, cwd=tmp_path), 2, "holds the source mlp.pt")
    assert src.read_bytes() == before and not (tmp_path / "model.onnx").exists()
