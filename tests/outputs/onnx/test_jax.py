"""`convert to-onnx --framework jax`: a Flax NNX module from the user's factory, weights restored from
a msgpack, exported by jax2onnx. jax2onnx's package pins an orbax-checkpoint the jax extra excludes,
so the tests install the release the `onnx-jax` extra pins beside it with `pip --no-deps`, as the
command's message tells users to; without it the command says so plainly with exit 4."""

from __future__ import annotations

import importlib.util
import os
from importlib.metadata import requires
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("jax", reason="needs JAX (the jax extra)")
nnx = pytest.importorskip("flax.nnx", reason="needs Flax (the jax extra)")
pytest.importorskip("onnxruntime", reason="needs the onnx extra")

from flax import serialization  # noqa: E402

from tests.support import assert_cli_error, assert_no_output, installed_without_dependencies, read_manifest, run_cli  # noqa: E402
from tests.support.onnx_models import run_onnx  # noqa: E402

MODEL_SOURCE = """
from flax import nnx


class Net(nnx.Module):
    def __init__(self, rngs):
        self.dense = nnx.Linear(4, 8, rngs=rngs)
        self.norm = nnx.BatchNorm(8, use_running_average=True, rngs=rngs)
        self.head = nnx.Linear(8, 3, rngs=rngs)

    def __call__(self, x):
        return self.head(nnx.relu(self.norm(self.dense(x))))


def build():
    return Net(nnx.Rngs(123))  # other weights than the file's: the export must restore them
"""


def write_model(tmp_path: Path) -> tuple[object, Path]:
    (tmp_path / "jax_models.py").write_text(MODEL_SOURCE)
    spec = importlib.util.spec_from_file_location("jax_models_test", tmp_path / "jax_models.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    trained = module.Net(nnx.Rngs(0))
    state = nnx.state(trained, (nnx.Param, nnx.BatchStat)).to_pure_dict()
    (tmp_path / "net.msgpack").write_bytes(serialization.to_bytes(state))
    return trained, tmp_path / "net.msgpack"


@pytest.fixture(scope="module")
def jax2onnx_path() -> Path | None:
    """None when jax2onnx is importable here; else a folder holding the pinned release (no deps)."""
    if importlib.util.find_spec("jax2onnx") is not None:
        return None
    pinned = next(r.split(";")[0].strip() for r in requires("rust-model-convert") or () if r.startswith("jax2onnx"))
    target = installed_without_dependencies(pinned, "jax2onnx", pinned.replace("==", "-"))
    if target is None:
        pytest.skip(f"pip cannot install {pinned}")
    return target


def test_flax_module_exports_through_jax2onnx(
    tmp_path: Path, jax2onnx_path: Path | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    if jax2onnx_path is not None:
        paths = [str(jax2onnx_path), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
        monkeypatch.setenv("PYTHONPATH", os.pathsep.join(paths))
    trained, weights = write_model(tmp_path)
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli(
        "to-onnx",
        weights,
        out,
        "--framework",
        "jax",
        "--module",
        "jax_models:build",
        "--input-shape",
        "x=2x4",
        cwd=tmp_path,
        timeout=600,
    )
    assert rc == 0, stderr
    graph = read_manifest(out)["graph"]
    assert graph["exporter"].startswith("jax2onnx") and graph["inputs"][0]["shape"] == ["batch", 4]
    assert graph["validation"]["passed"] is True and graph["validation"]["batch_sizes"] == [2, 4]
    x = np.random.default_rng(0).standard_normal((5, 4)).astype(np.float32)
    np.testing.assert_allclose(run_onnx(out / "model.onnx", {"x": x})[0], np.asarray(trained(x)), rtol=0, atol=1e-5)


def test_without_jax2onnx_the_command_says_how_to_install_it(tmp_path: Path) -> None:
    if importlib.util.find_spec("jax2onnx") is not None:
        pytest.skip("jax2onnx is installed in this environment")
    _, weights = write_model(tmp_path)
    out = tmp_path / "out"
    result = run_cli(
        "to-onnx",
        weights,
        out,
        "--framework",
        "jax",
        "--module",
        "jax_models:build",
        "--input-shape",
        "x=2x4",
        cwd=tmp_path,
        timeout=600,
    )
    assert_cli_error(result, 4, "jax2onnx", "orbax-checkpoint", "pip install --no-deps jax2onnx==")
    assert_no_output(out)


def test_jax_needs_a_module(tmp_path: Path) -> None:
    _, weights = write_model(tmp_path)
    assert_cli_error(run_cli("to-onnx", weights, tmp_path / "out", "--framework", "jax"), 2, "--module")
    assert_no_output(tmp_path / "out")
