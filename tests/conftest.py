"""Fixtures every test folder shares (torch checkpoints, tiny Hugging Face folders) and the summary of
the hostile-input sweeps. Plain helpers live in tests/support/ and are imported from there."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from tests.support import SWEEP_COUNTS, save_hf, seeded, torch  # torch: None where the extra is absent


@pytest.fixture
def save_checkpoint(tmp_path: Path) -> Callable[..., Path]:
    """`save(obj, name='model.pt', legacy=False)` writes obj with torch.save into tmp_path."""

    def save(obj: Any, name: str = "model.pt", legacy: bool = False) -> Path:
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, path, _use_new_zipfile_serialization=not legacy)
        return path

    return save


@pytest.fixture(params=["zip", "legacy"])
def torch_format(request: pytest.FixtureRequest) -> str:
    """Both torch.save formats: the zip default and the legacy pickle stream."""
    return request.param


@pytest.fixture
def small_state_dict() -> dict[str, Any]:
    """A small plain state dict (float32 weights, an int64 buffer), no ties."""
    g = seeded(1)
    return {
        "encoder.weight": torch.randn(8, 5, generator=g),
        "encoder.bias": torch.randn(8, generator=g),
        "decoder.weight": torch.randn(3, 8, generator=g),
        "decoder.bias": torch.zeros(3),
        "step": torch.tensor(7, dtype=torch.int64),
    }


@pytest.fixture
def small_checkpoint(save_checkpoint: Callable[..., Path], small_state_dict: dict[str, Any]) -> Path:
    return save_checkpoint(small_state_dict)


@pytest.fixture(scope="session")
def gpt2_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny random GPT-2 LM saved as pytorch_model.bin and as .bin shards + index."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    root = tmp_path_factory.mktemp("gpt2")
    single = save_hf(model, root / "single")
    sharded = save_hf(model, root / "sharded", max_shard_size="20KB")
    return {
        "model": model,
        "single": single,
        "sharded": sharded,
        "cls": transformers.GPT2LMHeadModel,
        "auto": transformers.AutoModelForCausalLM,
    }


@pytest.fixture(scope="session")
def bert_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A tiny random BERT encoder saved as pytorch_model.bin and as .bin shards + index."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(1)
    cfg = transformers.BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=37,
        max_position_embeddings=64,
    )
    model = transformers.BertModel(cfg).eval()
    root = tmp_path_factory.mktemp("bert")
    single = save_hf(model, root / "single")
    sharded = save_hf(model, root / "sharded", max_shard_size="20KB")
    return {"model": model, "single": single, "sharded": sharded, "cls": transformers.BertModel, "auto": transformers.AutoModel}


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """State in the CI log how many inputs each sweep tried, per reader or format."""
    if not SWEEP_COUNTS:
        return
    terminalreporter.section("hostile-input sweeps")
    for sweep, per_target in SWEEP_COUNTS.items():
        details = ", ".join(f"{target} {n}" for target, n in per_target.items())
        terminalreporter.write_line(f"{sweep}: {sum(per_target.values())} inputs ({details})")
