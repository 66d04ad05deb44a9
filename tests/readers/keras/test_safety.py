"""Keras files that must not be trusted: code in configs is neither run nor carried, HDF5 files are
checked before anything is read, and what cannot be converted is said in one line with its exit code.
Also: the h5/.keras path never imports TensorFlow."""

from __future__ import annotations

import json
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import assert_cli_error, assert_no_output, load_output, read_manifest, run_cli

h5py = pytest.importorskip("h5py", reason="the keras extra reads HDF5 with h5py")

from exporters.shared.keras_naming.config import CODE_MARKER  # noqa: E402

pytest_plugins = ["tests.support.keras_models"]  # the session fixtures keras_models, hf_models


def test_no_tensorflow_on_the_h5_path(keras_models: Path, hf_models: Path, tmp_path: Path) -> None:
    """.keras, .weights.h5, .h5 (Keras 2 and 3) and Hugging Face tf_model.h5 convert with no ML
    framework imported."""
    sources = [
        keras_models / "keras3" / "sequence" / "model.keras",
        keras_models / "keras3" / "vision" / "model.weights.h5",
        keras_models / "keras3" / "nested" / "model.h5",
        keras_models / "keras2" / "sequence" / "weights.h5",
        hf_models / "hf" / "bert" / "single",
    ]
    code = (
        "import json, sys\n"
        "from convert.api import keras_to_safetensors\n"
        "for i, src in enumerate(sys.argv[2:]):\n"
        "    keras_to_safetensors(src, f'{sys.argv[1]}/out{i}')\n"
        "loaded = {name.split('.')[0] for name in sys.modules}\n"
        "print(json.dumps(sorted(loaded & {'tensorflow', 'keras', 'tf_keras', 'jax', 'flax', 'torch', 'transformers'})))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path), *map(str, sources)], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout) == []


# --- code in configs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("flavor,fmt", [("keras3", "model.keras"), ("keras3", "model.h5"), ("keras2", "model.h5")])
def test_lambda_layer_warned_never_run(
    keras_models: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flavor: str, fmt: str
) -> None:
    """The Lambda's code would create the sentinel file if run; it is not, and not carried either."""
    sentinel = tmp_path / "lambda-ran"
    monkeypatch.setenv("RMC_SENTINEL", str(sentinel))
    src = keras_models / flavor / "lambda" / fmt
    rc, _, err = run_cli("keras-to-safetensors", src, tmp_path / "out")
    assert rc == 0, err
    assert "warning: layer double is a Lambda layer: its Python code was neither run nor carried" in err
    assert not sentinel.exists()
    doc = read_manifest(tmp_path / "out")
    layers = {layer["path"]: layer for layer in doc["architecture"]["source_model"]["layers"]}
    assert layers["double"]["type"] == "Lambda" and layers["double"]["params"]["function"] == CODE_MARKER
    assert CODE_MARKER in json.dumps(doc["architecture"]["config"])
    for code in _lambda_code(src):
        assert code not in (tmp_path / "out" / "manifest.json").read_text()
    assert sorted(load_output(tmp_path / "out")) == ["d.bias", "d.weight"]


def _lambda_code(src: Path) -> list[str]:
    """The marshalled bytecode strings the file's config holds (to prove none reaches the manifest)."""
    if src.suffix == ".keras":
        with zipfile.ZipFile(src) as zf:
            config = json.loads(zf.read("config.json"))
    else:
        with h5py.File(src, "r") as f:
            config = json.loads(f.attrs["model_config"])
    found: list[str] = []

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                if key in ("code", "function") and isinstance(item, (str, list)):
                    found.extend(s for s in ([item] if isinstance(item, str) else item) if isinstance(s, str) and len(s) > 40)
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(config)
    assert found, "the fixture's config holds no marshalled code"
    return found


# --- layers this converter does not know -------------------------------------------------------------


def test_unknown_layer_type(keras_models: Path, tmp_path: Path) -> None:
    """Numbered weights of an unknown type cannot be named (exit 4); named ones follow the convention
    with a warning."""
    folder = keras_models / "keras3" / "custom"
    assert_cli_error(
        run_cli("keras-to-safetensors", folder / "model.keras", tmp_path / "a"), 4, "layer scale (Scale)", "does not know"
    )
    assert_no_output(tmp_path / "a")
    assert_cli_error(
        run_cli("keras-to-safetensors", folder / "model.weights.h5", tmp_path / "b"), 4, "layer scale (type unknown)", "--config"
    )
    assert_no_output(tmp_path / "b")
    rc, _, err = run_cli("keras-to-safetensors", folder / "model.h5", tmp_path / "c")
    assert rc == 0, err
    assert "warning: layer scale: type rmc_test>Scale is not one this converter knows" in err
    assert sorted(load_output(tmp_path / "c")) == ["d.bias", "d.weight", "scale.alpha"]


@pytest.mark.parametrize("flavor,fmt", [("keras3", "model.keras"), ("keras2", "weights.h5")])
def test_gru_reset_before_kept_in_keras_form(keras_models: Path, tmp_path: Path, flavor: str, fmt: str) -> None:
    """reset_after=False has no PyTorch GRU: kept in Keras form, said so, and still exactly Keras's GRU."""
    folder = keras_models / flavor / "gru_reset_before"
    rc, _, err = run_cli("keras-to-safetensors", folder / fmt, tmp_path / "out")
    assert rc == 0, err
    assert "reset_after=False" in err and "kept in Keras form" in err
    doc = read_manifest(tmp_path / "out")
    [entry] = doc["source"]["details"]["not_expressible"]
    assert entry["layer"] == "gru" and entry["kept_as"] == ["gru.keras_kernel", "gru.keras_recurrent_kernel", "gru.keras_bias"]
    w = {k: v.numpy().astype(np.float64) for k, v in load_output(tmp_path / "out").items()}
    x = np.load(folder / "input.npy").astype(np.float64)
    np.testing.assert_allclose(_keras_gru_reset_before(x, w), np.load(folder / "output.npy"), atol=1e-5)


def _keras_gru_reset_before(x: np.ndarray, w: dict[str, np.ndarray]) -> np.ndarray:
    """Keras's GRU with reset_after=False (gates z, r, h), last output."""
    kernel, recurrent, bias = w["gru.keras_kernel"], w["gru.keras_recurrent_kernel"], w["gru.keras_bias"]
    units = recurrent.shape[0]
    h = np.zeros((x.shape[0], units))
    sigmoid = lambda v: 1 / (1 + np.exp(-v))  # noqa: E731
    for t in range(x.shape[1]):
        xs = x[:, t] @ kernel + bias
        z = sigmoid(xs[:, :units] + h @ recurrent[:, :units])
        r = sigmoid(xs[:, units : 2 * units] + h @ recurrent[:, units : 2 * units])
        candidate = np.tanh(xs[:, 2 * units :] + (r * h) @ recurrent[:, 2 * units :])
        h = z * h + (1 - z) * candidate
    return h


# --- hostile and broken files ------------------------------------------------------------------------


def _keras3_weights(path: Path, make: Any) -> Path:
    """A Keras 3 weights file whose layers/dense/vars group `make(group)` fills."""
    with h5py.File(path, "w") as f:
        group = f.create_group("layers/dense/vars")
        group.attrs["name"] = "dense"
        make(group)
    return path


def _huge_unwritten(group: Any) -> None:
    group.create_dataset("0", shape=(2**40,), dtype="float32")  # declared, never written: no storage
    group.create_dataset("1", data=np.zeros(2, "float32"))


def _huge_compressed(group: Any) -> None:
    dataset = group.create_dataset("0", shape=(2**31,), dtype="float32", chunks=(4096,), compression="gzip")
    dataset[:4096] = 1.0  # one chunk stored: 8 GiB declared from a few bytes
    group.create_dataset("1", data=np.zeros(2, "float32"))


def _external_link(group: Any) -> None:
    group["0"] = h5py.ExternalLink("/etc/hostname.h5", "/data")


def _external_storage(group: Any) -> None:
    group.create_dataset("0", shape=(4,), dtype="float32", external=[("/etc/hostname", 0, 16)])


@pytest.mark.parametrize(
    "make,code,needle",
    [
        (_huge_unwritten, 6, "declares 4398046511104 bytes but stores none"),
        (_huge_compressed, 6, "declares 8589934592 bytes but the file stores"),
        (_external_link, 5, "links to another file"),
        (_external_storage, 5, "keeps its data in other files"),
    ],
)
def test_hostile_h5(tmp_path: Path, make: Any, code: int, needle: str) -> None:
    src = _keras3_weights(tmp_path / "hostile.weights.h5", make)
    assert_cli_error(run_cli("keras-to-safetensors", src, tmp_path / "out"), code, needle)
    assert_no_output(tmp_path / "out")


def test_broken_files(keras_models: Path, tmp_path: Path) -> None:
    good = (keras_models / "keras3" / "vision" / "model.weights.h5").read_bytes()
    cases = {
        "junk.h5": (b"\x89HDF\r\n\x1a\n" + bytes(range(256)) * 8, 6, "damaged HDF5 file"),
        "truncated.weights.h5": (good[: len(good) // 2], 6, "truncated.weights.h5"),
        "text.h5": (b"not a model at all\n", 4, "not a Keras file"),
    }
    for name, (data, code, needle) in cases.items():
        (tmp_path / name).write_bytes(data)
        assert_cli_error(run_cli("keras-to-safetensors", tmp_path / name, tmp_path / f"out-{name}"), code, needle)
        assert_no_output(tmp_path / f"out-{name}")
    assert_cli_error(run_cli("keras-to-safetensors", tmp_path / "missing.keras", tmp_path / "out"), 3, "no such file")


def test_zip_that_is_not_keras(keras_models: Path, tmp_path: Path) -> None:
    """A torch checkpoint is a zip too: refused with a pointer to the right command; a .keras whose
    config is not JSON is corrupt."""
    torch = pytest.importorskip("torch")
    torch.save({"w": torch.zeros(2)}, tmp_path / "model.pt")
    assert_cli_error(
        run_cli("keras-to-safetensors", tmp_path / "model.pt", tmp_path / "a"), 4, "not a .keras model", "pth-to-safetensors"
    )
    bad = tmp_path / "bad.keras"
    with zipfile.ZipFile(keras_models / "keras3" / "vision" / "model.keras") as zin, zipfile.ZipFile(bad, "w") as zout:
        for info in zin.infolist():
            zout.writestr(info, b"{not json" if info.filename == "config.json" else zin.read(info))
    assert_cli_error(run_cli("keras-to-safetensors", bad, tmp_path / "b"), 6, "config.json")
    assert_no_output(tmp_path / "b")


# --- kernels that do not fit their layer --------------------------------------------------------------


def _dataset_path(f: Any, suffix: str) -> str:
    found: list[str] = []
    f.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) and name.endswith(suffix) else None)
    assert len(found) == 1, found
    return found[0]


@pytest.mark.parametrize("damage", ["transposed", "extra dimension", "hard link to another kernel"])
def test_kernel_that_does_not_fit_its_layer_is_corrupt(keras_models: Path, tmp_path: Path, damage: str) -> None:
    """A Dense kernel stored transposed, a Conv2D kernel with an extra dimension, a kernel that is a
    hard link to another layer's: each converted with exit 0 into weights the layer cannot use."""
    src = tmp_path / "model.h5"
    src.write_bytes((keras_models / "keras2" / "vision" / "model.h5").read_bytes())
    with h5py.File(src, "r+") as f:
        head, conv = _dataset_path(f, "head/kernel:0"), _dataset_path(f, "conv/kernel:0")
        if damage == "transposed":
            value = f[head][()]
            del f[head]
            f[head] = value.T
        elif damage == "extra dimension":
            value = f[conv][()]
            del f[conv]
            f[conv] = value[None]
        else:
            del f[head]
            f[head] = f[conv]  # an HDF5 hard link: one dataset under two names
    out = tmp_path / "out"
    assert_cli_error(run_cli("keras-to-safetensors", src, out), 6, "does not fit its config")
    assert_no_output(out)
