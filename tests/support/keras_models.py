"""Shared by the Keras and TensorFlow tests: real Keras models written in every format by
scripts/make_keras_models.py (run in subprocesses, so TensorFlow never loads into the test process
for them), the PyTorch twins those models must load into, and helpers to convert and compare.

tf.keras 2 (`tf_keras`, needed for Keras 2 files and Hugging Face's TF classes) is not a project
dependency: it requires the `tensorflow` distribution, which would install a second 570 MB copy of
TensorFlow beside `tensorflow-cpu`. The tests install it once, without dependencies, into a cache
folder keyed by the TensorFlow version, and put it on the generator's PYTHONPATH.
"""

from __future__ import annotations

import functools
import importlib.metadata
import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import REPO, installed_without_dependencies

GENERATOR = REPO / "scripts" / "make_keras_models.py"
# Where each flavour keeps each format, and which converter reads it.
KERAS_FORMATS = [
    ("keras3", "model.keras"),
    ("keras3", "model.weights.h5"),
    ("keras3", "model.h5"),
    ("keras2", "model.h5"),
    ("keras2", "weights.h5"),
]
TF_FORMATS = [("keras3", "savedmodel"), ("keras3", "ckpt/ckpt"), ("keras2", "savedmodel"), ("keras2", "ckpt")]
NUMERIC_MODELS = ["vision", "sequence", "nested"]
TOLERANCE = {"vision": 1e-5, "sequence": 1e-4, "nested": 1e-4, "subclassed": 1e-5}  # recurrent layers: 1e-4


def tensorflow_version() -> str | None:
    if importlib.util.find_spec("tensorflow") is None or importlib.util.find_spec("keras") is None:
        return None
    for dist in ("tensorflow-cpu", "tensorflow"):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    return None


def _tf_keras_dir(tf_version: str) -> Path:
    """tf_keras matching TensorFlow's minor version, installed once (no dependencies) into /tmp."""
    minor = ".".join(tf_version.split(".")[:2])
    target = installed_without_dependencies(f"tf-keras~={minor}.0", "tf_keras", f"tf-keras-{tf_version}")
    if target is None:
        pytest.skip(f"cannot install tf-keras~={minor}.0 for the Keras 2 fixtures")
    return target


def _generate(out: Path, flavors: list[str]) -> None:
    """Run the generator for each flavour (in parallel: each is mostly TensorFlow start-up)."""
    tf_version = tensorflow_version()
    if tf_version is None:
        pytest.skip("needs TensorFlow and Keras (the tensorflow extra) to write the fixtures")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", "CUDA_VISIBLE_DEVICES": ""}
    if any(f != "keras3" for f in flavors):
        env["PYTHONPATH"] = os.pathsep.join([str(_tf_keras_dir(tf_version)), env.get("PYTHONPATH", "")])
    procs = [
        (
            f,
            subprocess.Popen(
                [sys.executable, str(GENERATOR), str(out), "--flavor", f],
                env=env,
                stdout=subprocess.PIPE,
                stderr=subprocess.PIPE,
                text=True,
            ),
        )
        for f in flavors
    ]
    for flavor, proc in procs:
        _, err = proc.communicate(timeout=900)
        if proc.returncode != 0:
            pytest.fail(f"make_keras_models.py --flavor {flavor} failed:\n{err[-3000:]}")


@pytest.fixture(scope="session")
def keras_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT/<keras3|keras2>/<model>/: every format, input.npy and the model's own output.npy."""
    root = tmp_path_factory.mktemp("keras-models")
    _generate(root, ["keras3", "keras2"])
    return root


@pytest.fixture(scope="session")
def keras2_graph_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT/keras2-graph/<vision|sequence|nested>/: tf.keras 2 models built twice in one graph-mode session,
    the second saved (model.h5, weights.h5, model.json): every variable scope made unique by TF."""
    root = tmp_path_factory.mktemp("keras2-graph-models")
    _generate(root, ["keras2-graph"])
    return root


@pytest.fixture(scope="session")
def hf_models(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """OUT/hf/<bert|gpt2>/{single,sharded}/: Hugging Face TF models saved with save_pretrained."""
    root = tmp_path_factory.mktemp("hf-tf-models")
    _generate(root, ["hf"])
    return root


# --- PyTorch twins of the Keras test models ---------------------------------------------------------


@functools.cache
def twins() -> dict[str, Any]:
    """The PyTorch modules each Keras test model must load into (torch imported only when needed)."""
    torch = pytest.importorskip("torch", reason="the PyTorch twins need torch")
    nn = torch.nn

    class Vision(nn.Module):
        """Conv2D(relu) -> BatchNorm -> DepthwiseConv2D(x2) -> Flatten -> Dense, Keras's NHWC kept at the edges."""

        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)
            self.bn = nn.BatchNorm2d(4, eps=1e-3)
            self.dw = nn.Conv2d(4, 8, 3, groups=4)
            self.head = nn.Linear(4 * 4 * 8, 5)

        def forward(self, x: Any) -> Any:
            x = self.dw(self.bn(torch.relu(self.conv(x.permute(0, 3, 1, 2)))))
            return self.head(x.permute(0, 2, 3, 1).flatten(1))  # Keras flattens (h, w, c)

    class Sequence(nn.Module):
        """Embedding -> Conv1D(same) -> LayerNorm -> LSTM -> GRU -> Bidirectional LSTM (last step) -> Dense."""

        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(20, 6)
            self.conv = nn.Conv1d(6, 5, 3, padding=1)
            self.ln = nn.LayerNorm(5, eps=1e-3)
            self.lstm = nn.LSTM(5, 7, batch_first=True)
            self.gru = nn.GRU(7, 4, batch_first=True)
            self.bidir = nn.LSTM(4, 3, batch_first=True, bidirectional=True)
            self.head = nn.Linear(6, 2)

        def forward(self, ids: Any) -> Any:
            h = self.conv(self.emb(ids.long()).transpose(1, 2)).transpose(1, 2)
            h, _ = self.lstm(self.ln(h))
            h, _ = self.gru(h)
            _, (last, _) = self.bidir(h)
            return self.head(torch.cat([last[0], last[1]], dim=1))

    class Block(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.rnn = nn.RNN(3, 4, batch_first=True)
            self.d1 = nn.Linear(4, 6)
            self.ln = nn.LayerNorm(6, eps=1e-3)

        def forward(self, x: Any) -> Any:
            h, _ = self.rnn(x)
            return self.ln(torch.relu(self.d1(h)))

    class Nested(nn.Module):
        """A Sequential (SimpleRNN, Dense, LayerNorm) inside a functional model, then a Dense."""

        def __init__(self) -> None:
            super().__init__()
            self.block = Block()
            self.out = nn.Linear(6, 3)

        def forward(self, x: Any) -> Any:
            return self.out(self.block(x))

    class Subclassed(nn.Module):
        """A subclassed Keras model: Embedding -> Dense -> LayerNorm, named by its attributes."""

        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.proj = nn.Linear(4, 4)
            self.norm = nn.LayerNorm(4, eps=1e-3)

        def forward(self, ids: Any) -> Any:
            return self.norm(self.proj(self.emb(ids.long())))

    return {"vision": Vision, "sequence": Sequence, "nested": Nested, "subclassed": Subclassed}


def twin_forward(model: str, state: dict[str, Any], model_dir: Path) -> None:
    """`state` loads into the model's twin (strict) and the twin computes what Keras computed."""
    import torch

    twin = twins()[model]().eval()
    twin.load_state_dict(state, strict=True)
    x = torch.from_numpy(np.load(model_dir / "input.npy"))
    expected = np.load(model_dir / "output.npy")
    with torch.no_grad():
        got = twin(x).numpy()
    tol = TOLERANCE[model]
    np.testing.assert_allclose(got, expected, atol=tol, rtol=tol, err_msg=f"{model}: PyTorch twin != Keras")


def keras2_weights_file(path: Path, kernel_shape: tuple[int, int], **dataset_options: Any) -> Path:
    """A Keras 2 weights file (`save_weights` layout) of one Dense layer, kernel all zeros."""
    h5py = pytest.importorskip("h5py")
    import numpy as np

    with h5py.File(path, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = "2.15.0"
        g = f.create_group("dense")
        g.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        kernel = g.create_dataset("dense/kernel:0", shape=kernel_shape, dtype="<f4", **dataset_options)
        rows = max(1, (64 << 20) // (4 * kernel_shape[1]))
        for start in range(0, kernel_shape[0], rows):  # every chunk stored, as a real writer does
            kernel[start : start + rows] = np.zeros((min(rows, kernel_shape[0] - start), kernel_shape[1]), "<f4")
        kernel[0, :4] = 1.0
        g.create_dataset("dense/bias:0", data=np.zeros(kernel_shape[1], dtype="<f4"))
    return path
