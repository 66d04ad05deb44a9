"""Hugging Face Flax models (tiny, random, built offline from a config) saved with `save_pretrained`:
converted, then loaded by the matching PyTorch class's `from_pretrained` with every weight found,
giving the Flax model's own outputs. (transformers' Flax-to-PyTorch loading is not the reference.)"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("flax", reason="needs flax for transformers' Flax classes")
torch = pytest.importorskip("torch", reason="needs torch for transformers' PyTorch classes")
transformers = pytest.importorskip("transformers", reason="needs transformers")

from convert.api import verify_path  # noqa: E402
from tests.support import read_manifest, run_cli  # noqa: E402

TOLERANCE = 1e-5
IDS = np.array([[5, 17, 3, 42, 8, 1, 60], [9, 2, 77, 4, 31, 6, 12]], dtype=np.int32)


def bert() -> tuple[Any, Any]:
    config = transformers.BertConfig(
        vocab_size=99,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    return transformers.FlaxBertModel(config, seed=0), transformers.BertModel


def gpt2() -> tuple[Any, Any]:
    config = transformers.GPT2Config(vocab_size=99, n_embd=32, n_layer=2, n_head=4, n_positions=64)
    return transformers.FlaxGPT2LMHeadModel(config, seed=0), transformers.GPT2LMHeadModel


def outputs(model: Any) -> dict[str, np.ndarray]:
    """The outputs both frameworks name alike, as numpy."""
    result = model(torch.from_numpy(IDS).long()) if isinstance(model, torch.nn.Module) else model(IDS)
    keys = ("last_hidden_state", "pooler_output", "logits")
    return {k: np.asarray(v.detach() if hasattr(v, "detach") else v) for k in keys if (v := getattr(result, k, None)) is not None}


@pytest.mark.parametrize("build,shard", [(bert, None), (gpt2, None), (gpt2, "20KB")], ids=["bert", "gpt2", "gpt2-sharded"])
def test_from_pretrained_loads_every_weight_and_matches_flax(build: Any, shard: str | None, tmp_path: Path) -> None:
    flax_model, torch_class = build()
    expected = outputs(flax_model)
    flax_model.save_pretrained(tmp_path / "flax", **({"max_shard_size": shard} if shard else {}))
    assert (tmp_path / "flax" / "flax_model.msgpack.index.json").is_file() == bool(shard)
    rc, _, err = run_cli("flax-to-safetensors", tmp_path / "flax", tmp_path / "pt", "-q")
    assert rc == 0, err
    doc = read_manifest(tmp_path / "pt")
    assert "config.json" in doc["sidecars"] and doc["architecture"]["config"]["model_type"] == flax_model.config.model_type
    assert verify_path(tmp_path / "pt", tmp_path / "flax").ok
    model, info = torch_class.from_pretrained(tmp_path / "pt", output_loading_info=True)
    assert info == {"missing_keys": [], "unexpected_keys": [], "mismatched_keys": [], "error_msgs": []}
    got = outputs(model.eval())
    assert got.keys() == expected.keys() and got
    for key, value in expected.items():
        assert np.abs(got[key] - value).max() <= TOLERANCE, (key, np.abs(got[key] - value).max())


def test_bf16_hugging_face_model_stays_bf16(tmp_path: Path) -> None:
    from flax.traverse_util import flatten_dict, unflatten_dict

    flax_model, torch_class = bert()
    keep_f32 = unflatten_dict({path: "LayerNorm" not in path for path in flatten_dict(flax_model.params)})
    flax_model.params = flax_model.to_bf16(flax_model.params, keep_f32)  # mixed, as mixed-precision training leaves it
    flax_model.save_pretrained(tmp_path / "flax")
    assert run_cli("flax-to-safetensors", tmp_path / "flax", tmp_path / "pt", "-q")[0] == 0
    doc = read_manifest(tmp_path / "pt")
    dtypes = {t["name"]: t["dtype"] for t in doc["tensors"]}
    assert dtypes["encoder.layer.0.attention.self.query.weight"] == "BF16"
    assert dtypes["embeddings.LayerNorm.weight"] == "F32"
    model, info = torch_class.from_pretrained(tmp_path / "pt", output_loading_info=True, torch_dtype=torch.bfloat16)
    assert not info["missing_keys"] and not info["unexpected_keys"]
