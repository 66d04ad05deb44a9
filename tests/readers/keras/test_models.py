"""Real Keras models (Keras 3 and tf.keras 2, random weights) in every Keras file format, converted
to canonical form without TensorFlow, loaded strictly into PyTorch twins that compute what Keras did."""

from __future__ import annotations

import json
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from convert.api import keras_to_safetensors, verify_path
from convert.errors import MappingError
from convert.mapping import builtin_layouts
from tests.support import load_output, read_manifest, run_cli
from tests.support.keras_models import KERAS_FORMATS, NUMERIC_MODELS, twin_forward

FORMAT_NAMES = {
    "model.keras": "keras-v3",
    "model.weights.h5": "keras-v3-weights",
    "model.h5": "keras-h5",
    "weights.h5": "keras-h5-weights",
}

pytest_plugins = ["tests.support.keras_models"]  # the session fixtures keras_models, keras2_graph_models, hf_models


def convert(src: Path, out: Path, **options: Any) -> dict[str, Any]:
    keras_to_safetensors(src, out, **options)
    return read_manifest(out)


@pytest.mark.parametrize("model", NUMERIC_MODELS)
@pytest.mark.parametrize("flavor,fmt", KERAS_FORMATS)
def test_forward_matches_keras(keras_models: Path, tmp_path: Path, flavor: str, fmt: str, model: str) -> None:
    """Every layer type in every Keras format: strict load into the twin, same outputs as Keras."""
    model_dir = keras_models / flavor / model
    doc = convert(model_dir / fmt, tmp_path / "out")
    assert doc["source"]["format"] == FORMAT_NAMES[fmt]
    twin_forward(model, load_output(tmp_path / "out"), model_dir)
    report = verify_path(tmp_path / "out", model_dir / fmt)
    assert report.ok and report.compared_with_source == len(doc["tensors"]), report.problems


def test_provenance_in_manifest(keras_models: Path, tmp_path: Path) -> None:
    """Per tensor: where in the file it came from, its Keras name and shape, the transforms done."""
    doc = convert(keras_models / "keras3" / "sequence" / "model.keras", tmp_path / "out")
    details = doc["source"]["details"]["tensors"]
    assert set(details) == {t["name"] for t in doc["tensors"]}
    assert details["head.weight"] == {
        "from": "layers/dense/vars/0",
        "keras_name": "head/kernel",
        "keras_shape": [6, 2],
        "dtype": "F32",
        "transforms": [{"op": "transpose"}],
    }
    assert details["conv.weight"]["transforms"] == [{"op": "permute", "axes": [2, 1, 0]}]
    assert [t["op"] for t in details["gru.bias_hh_l0"]["transforms"]] == ["split", "reshape", "gate_reorder"]
    assert details["bidir.weight_ih_l0_reverse"]["from"] == "layers/bidirectional/backward_layer/cell/vars/0"
    assert details["lstm.bias_hh_l0"]["from"] is None and details["lstm.bias_hh_l0"]["created"] == "zeros"
    assert details["emb.weight"]["transforms"] == []


def test_architecture_lists_keras_layers(keras_models: Path, tmp_path: Path) -> None:
    """The Keras layer list: types, sizes, activations, epsilons, input shape, and the tensors of each."""
    doc = convert(keras_models / "keras3" / "vision" / "model.keras", tmp_path / "out")
    source_model = doc["architecture"]["source_model"]
    assert source_model["framework"] == "keras" and source_model["layers_from"] == "config"
    assert source_model["model"] == {"type": "Functional", "name": "vision", "input_shapes": [[None, 8, 8, 3]]}
    layers = {layer["path"]: layer for layer in source_model["layers"]}
    assert layers["conv"]["type"] == "Conv2D" and layers["conv"]["params"]["activation"] == "relu"
    assert layers["conv"]["params"]["filters"] == 4 and layers["conv"]["tensors"] == ["conv.weight", "conv.bias"]
    assert layers["bn"]["params"]["epsilon"] == 0.001 and layers["bn"]["params"]["momentum"] == 0.99
    assert layers["dw"]["type"] == "DepthwiseConv2D" and layers["dw"]["params"]["depth_multiplier"] == 2
    assert layers["flat"]["type"] == "Flatten" and layers["flat"]["tensors"] == []
    assert not any(key.endswith("_initializer") for layer in layers.values() for key in layer["params"])
    assert doc["architecture"]["config"]["class_name"] == "Functional"


def test_architecture_of_sequential_and_nested(keras_models: Path, tmp_path: Path) -> None:
    doc = convert(keras_models / "keras2" / "nested" / "model.h5", tmp_path / "nested")
    layers = {layer["path"]: layer for layer in doc["architecture"]["source_model"]["layers"]}
    assert layers["block"]["type"] == "Sequential"
    assert layers["block.rnn"]["type"] == "SimpleRNN" and layers["block.rnn"]["params"]["units"] == 4
    doc = convert(keras_models / "keras3" / "sequence" / "model.h5", tmp_path / "sequence")
    layers = {layer["path"]: layer for layer in doc["architecture"]["source_model"]["layers"]}
    assert layers["bidir"]["params"]["layer"]["type"] == "LSTM"
    assert layers["bidir"]["params"]["layer"]["params"]["units"] == 3
    assert doc["architecture"]["source_model"]["model"]["input_shapes"] == [[None, 7]]


def test_weights_only_file_infers_layers(keras_models: Path, tmp_path: Path) -> None:
    """No config in a weights-only file: types come from keys and shapes, marked inferred."""
    doc = convert(keras_models / "keras3" / "sequence" / "model.weights.h5", tmp_path / "out")
    source_model = doc["architecture"]["source_model"]
    assert source_model["layers_from"] == "weights"
    kinds = {layer["path"]: layer["type"] for layer in source_model["layers"]}
    assert kinds == {
        "emb": "Embedding",
        "conv": "Conv1D",
        "ln": "LayerNormalization",
        "lstm": "LSTM",
        "gru": "GRU",
        "bidir": "Bidirectional",
        "head": "Dense",
    }
    assert all(layer["inferred"] for layer in source_model["layers"])


def scoped_weight_names(path: Path) -> dict[str, list[str]]:
    """{layer group: its weight_names} of a Keras 2 `.h5`, as Keras's own loader reads them."""
    import h5py

    def text(value: Any) -> str:
        return value.decode() if isinstance(value, bytes) else str(value)

    with h5py.File(path, "r") as f:
        group = f["model_weights"] if "model_weights" in f else f
        layers = [text(name) for name in group.attrs["layer_names"]]
        return {name: [text(w) for w in group[name].attrs["weight_names"]] for name in layers}


@pytest.mark.parametrize("model", NUMERIC_MODELS)
@pytest.mark.parametrize(
    "fmt,config",
    [("model.h5", None), ("weights.h5", "model.json"), ("weights.h5", None)],
    ids=["model", "weights+config", "weights"],
)
def test_model_built_twice_has_its_layers_names(
    keras2_graph_models: Path, tmp_path: Path, model: str, fmt: str, config: str | None
) -> None:
    """tf.keras 2 in graph mode (TF1-era Keras; here the model built twice in one session) stores layer `conv`'s
    weights as `conv_1/kernel:0` and nested model `block`'s layer `d1` as `d1_1/kernel:0`. Keras's own loader
    (`load_weights_from_hdf5_group`) gives a group's weights to the layer it names, in `weight_names` order,
    never reading that scope: the canonical names are the layers' (`conv.weight`), loaded strictly by the
    twin, computing what Keras computed. A weights-only file of a nested model says its inner layers' names
    only through those scopes; its config (--config) gives them."""
    model_dir = keras2_graph_models / "keras2-graph" / model
    scoped = scoped_weight_names(model_dir / fmt)
    assert all(w.split("/")[0] != group for group, names in scoped.items() for w in names), scoped  # every scope unique
    options = {"config": model_dir / config} if config else {}
    doc = convert(model_dir / fmt, tmp_path / "out", **options)
    if model == "nested" and fmt == "weights.h5" and config is None:
        # nothing in the file names the inner layers but their scopes: those names stay, the values are the same
        inner = {t["name"].split(".")[1] for t in doc["tensors"] if t["name"].startswith("block.")}
        assert inner and all(re.fullmatch(r"[a-z0-9]+_[0-9]+", name) for name in inner), inner  # d1_1, ln_3, ...
    else:
        twin_forward(model, load_output(tmp_path / "out"), model_dir)
    report = verify_path(tmp_path / "out", model_dir / fmt)
    assert report.ok and report.compared_with_source == len(doc["tensors"]), report.problems


@pytest.mark.parametrize("config_file", ["model.keras", "model.json"])
def test_weights_h5_with_config(keras_models: Path, tmp_path: Path, config_file: str) -> None:
    """--config names a bare .weights.h5 from a .keras or a model.to_json() file."""
    model_dir = keras_models / "keras3" / "vision"
    doc = convert(model_dir / "model.weights.h5", tmp_path / "out", config=model_dir / config_file)
    assert doc["architecture"]["source_model"]["layers_from"] == "config"
    assert [t["name"] for t in doc["tensors"]][:2] == ["conv.weight", "conv.bias"]  # the config's order
    twin_forward("vision", load_output(tmp_path / "out"), model_dir)


def test_deflated_keras_file(keras_models: Path, tmp_path: Path) -> None:
    """A .keras re-zipped with compression converts to the same bytes as Keras's stored one."""
    src = keras_models / "keras3" / "sequence" / "model.keras"
    deflated = tmp_path / "deflated.keras"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(deflated, "w", zipfile.ZIP_DEFLATED) as zout:
        for info in zin.infolist():
            zout.writestr(info.filename, zin.read(info))
    a, b = convert(src, tmp_path / "a"), convert(deflated, tmp_path / "b")
    assert [t["digest"] for t in a["tensors"]] == [t["digest"] for t in b["tensors"]]


def keras_names(src: Path) -> list[str]:
    """The canonical tensor names of a Keras file, as the pytorch layout writes them."""
    from exporters.keras.reader import open_keras

    with open_keras(src, None) as source:
        return [t.name for t in source.tensors]


@pytest.mark.parametrize("layout", sorted({d["name"] for d in builtin_layouts().values()}))
def test_every_layout(keras_models: Path, tmp_path: Path, layout: str) -> None:
    """Keras models reach canonical form, so every target layout applies (and verifies against the
    source); neuro-divergent takes dense networks only and names what it refuses."""
    for model in NUMERIC_MODELS:
        src = keras_models / "keras3" / model / "model.keras"
        if layout == "neuro-divergent":
            # no rule for conv/norm layers; a GRU (PyTorch's reset-after semantics) is refused before that
            with pytest.raises(MappingError, match="no rule for|belongs to a PyTorch GRU"):
                keras_to_safetensors(src, tmp_path / model, layout=layout)
            continue
        if layout == "torsh" and any(n.endswith((".running_mean", "_reverse", "weight_ih_l0")) for n in keras_names(src)):
            # ToRSh takes no BatchNorm statistics, has no reverse direction, and its RNN returns zeros
            with pytest.raises(MappingError, match="BatchNorm running statistic|bidirectional|Elman RNN"):
                keras_to_safetensors(src, tmp_path / model, layout=layout)
            continue
        keras_to_safetensors(src, tmp_path / model, layout=layout)
        report = verify_path(tmp_path / model, src)
        assert report.ok, report.problems
    keras_to_safetensors(keras_models / "keras3" / "lambda" / "model.keras", tmp_path / "dense", layout=layout)


def test_cli_and_auto(keras_models: Path, tmp_path: Path) -> None:
    """The command, `convert auto` (detection by content) and `inspect` agree."""
    src = keras_models / "keras2" / "vision" / "weights.h5"
    rc, out, err = run_cli("keras-to-safetensors", src, tmp_path / "cli", "--json")
    assert rc == 0 and "Traceback" not in err, err
    assert json.loads(out)["tensors"] == 11
    rc, _, err = run_cli("auto", src, tmp_path / "auto")
    assert rc == 0, err
    assert load_output(tmp_path / "cli").keys() == load_output(tmp_path / "auto").keys()
    rc, out, err = run_cli("inspect", keras_models / "keras3" / "vision" / "model.keras", "--json")
    assert rc == 0, err
    assert [t["name"] for t in json.loads(out)["tensors"]][:2] == ["conv.weight", "conv.bias"]
    rc, out, _ = run_cli("verify", tmp_path / "cli", "--source", src)
    assert rc == 0 and out.startswith("ok:")
