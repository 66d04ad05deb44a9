"""What each Rust loader's own code expects (issue 17), on models built with real torch and
transformers: exact names, shapes and dtypes, and the refusals where a loader would compute
something else. Each test cites the loader source it follows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from conftest import assert_cli_error, assert_no_output, read_manifest, run_cli  # noqa: E402
from layout_helpers import load_numpy  # noqa: E402


def save_state(tmp_path: Path, model: nn.Module, name: str = "model.pt") -> Path:
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return path


def convert(src: Path, out: Path, layout: str, *extra: str) -> tuple[dict[str, Any], str]:
    rc, _, err = run_cli("pth-to-safetensors", src, out, "--layout", layout, *extra)
    assert rc == 0, err
    return read_manifest(out), err


def listed(doc: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {t["name"]: (tuple(t["shape"]), t["dtype"]) for t in doc["tensors"]}


def tiny_bert_with_saved_buffers() -> nn.Module:
    """A BERT whose position_ids / token_type_ids buffers are persistent, as transformers < 4.31
    (and the sentence-transformers checkpoints made with it) saved them."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=16, max_position_embeddings=12)
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    emb = model.embeddings
    emb.register_buffer("position_ids", emb.position_ids.clone(), persistent=True)
    emb.register_buffer("token_type_ids", emb.token_type_ids.clone(), persistent=True)
    return model


@pytest.mark.parametrize("layout", ["trustformers", "pytorch", "burn", "torsh"])
def test_derived_buffers_dropped_with_a_note(tmp_path: Path, layout: str) -> None:
    """issue 16: the I64 buffers loaders rebuild themselves no longer refuse the model; they are
    dropped, listed in the manifest and named in a note on stderr."""
    model = tiny_bert_with_saved_buffers()
    sd = model.state_dict()
    assert sd["embeddings.position_ids"].dtype == torch.int64
    src = save_state(tmp_path, model)
    doc, err = convert(src, tmp_path / "out", layout)
    derived = ["embeddings.position_ids", "embeddings.token_type_ids"]
    assert sorted(doc["dropped"]) == derived
    assert all(name in err for name in derived) and "derives" in err
    assert not set(derived) & set(listed(doc))
    assert any("derives" in w for w in doc["target"]["warnings"])


def test_derived_buffers_kept_by_option(tmp_path: Path) -> None:
    model = tiny_bert_with_saved_buffers()
    src = save_state(tmp_path, model)
    doc, _ = convert(src, tmp_path / "out", "pytorch", "--layout-option", "drop_derived_buffers=false")
    assert doc["dropped"] == []
    assert listed(doc)["embeddings.position_ids"] == ((1, 12), "I64")
    # TrustformeRS reads F32, F16 and I8 only: kept I64 buffers are refused, nothing written
    out = tmp_path / "tf"
    assert_cli_error(run_cli("pth-to-safetensors", src, out, "--layout", "trustformers",
                             "--layout-option", "drop_derived_buffers=false"), 7, "position_ids", "I64")
    assert_no_output(out)
