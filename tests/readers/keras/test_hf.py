"""Hugging Face TF models (TFBertModel, TFGPT2LMHeadModel, random weights, built offline from configs and
saved with save_pretrained as tf_model.h5 or its shards) convert without TensorFlow so that the
PyTorch class's from_pretrained(OUT) loads every weight and computes the same outputs."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from convert.api import keras_to_safetensors, verify_path
from tests.support import read_manifest

pytest_plugins = ["tests.support.keras_models"]  # the session fixtures hf_models, keras_models

transformers = pytest.importorskip("transformers")
torch = pytest.importorskip("torch")

MODELS = {"bert": ("BertModel", "last_hidden_state"), "gpt2": ("GPT2LMHeadModel", "logits")}


@pytest.mark.parametrize("saved", ["single", "sharded"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_from_pretrained_matches_tf(hf_models: Path, tmp_path: Path, name: str, saved: str) -> None:
    folder = hf_models / "hf" / name
    out = tmp_path / "out"
    keras_to_safetensors(folder / saved, out)
    doc = read_manifest(out)
    assert doc["source"]["format"] == ("hf-tf-sharded" if saved == "sharded" else "hf-tf")
    assert "config.json" in doc["sidecars"] and doc["architecture"]["config"]["model_type"] == name
    cls_name, field = MODELS[name]
    model, info = getattr(transformers, cls_name).from_pretrained(out, output_loading_info=True)
    assert info["missing_keys"] == [] and info["unexpected_keys"] == [] and info["mismatched_keys"] == []
    ids = torch.from_numpy(np.load(folder / "input.npy")).long()
    with torch.no_grad():
        got = getattr(model.eval()(ids), field).numpy()
    np.testing.assert_allclose(got, np.load(folder / "output.npy"), atol=1e-4, rtol=1e-4)
    report = verify_path(out, folder / saved)
    assert report.ok, report.problems


def test_naming_convention(hf_models: Path, tmp_path: Path) -> None:
    """Outer model scope and ':0' dropped, `layer_._N` -> `layer.N`, only `kernel` transposed (GPT-2's
    Conv1D `weight` and BERT's word_embeddings `weight` stay as stored)."""
    keras_to_safetensors(hf_models / "hf" / "bert" / "single", tmp_path / "bert")
    details = read_manifest(tmp_path / "bert")["source"]["details"]["tensors"]
    query = details["bert.encoder.layer.0.attention.self.query.weight"]
    assert query["from"] == "bert/tf_bert_model/bert/encoder/layer_._0/attention/self/query/kernel:0"
    assert query["transforms"] == [{"op": "transpose"}]
    assert details["bert.embeddings.word_embeddings.weight"]["transforms"] == []
    assert details["bert.embeddings.LayerNorm.weight"]["keras_name"] == "bert/embeddings/LayerNorm/gamma"
    keras_to_safetensors(hf_models / "hf" / "gpt2" / "single", tmp_path / "gpt2")
    details = read_manifest(tmp_path / "gpt2")["source"]["details"]["tensors"]
    assert details["transformer.h.1.attn.c_attn.weight"]["transforms"] == []
    assert details["transformer.h.1.attn.c_attn.weight"]["keras_shape"] == [32, 96]
