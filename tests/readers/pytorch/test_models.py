"""Real models through the converter: a mixed nn.Module and tiny Hugging Face models load back from
the SafeTensors output and compute exactly what the originals compute."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="needs torch to build and run the models")

from convert.api import verify_path  # noqa: E402
from tests.support import (  # noqa: E402
    assert_cli_error,
    assert_no_output,
    assert_same_state,
    convert_api,
    convert_cli,
    file_metadata,
    load_output,
    output_files,
    read_manifest,
    retie,
    run_cli,
    seeded,
)


class MixedNet(torch.nn.Module):
    """Embedding, a head tied to it, Conv2d + BatchNorm2d, a 2-layer LSTM, a GRU, multi-head
    attention and LayerNorm: one of each layer whose parameters have their own layout rules."""

    def __init__(self, vocab: int = 23, dim: int = 12) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.conv = torch.nn.Conv2d(3, dim, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(dim)
        self.lstm = torch.nn.LSTM(dim, dim, num_layers=2, batch_first=True)
        self.gru = torch.nn.GRU(dim, dim, batch_first=True)
        self.attn = torch.nn.MultiheadAttention(dim, num_heads=3, batch_first=True)
        self.norm = torch.nn.LayerNorm(dim)
        self.head = torch.nn.Linear(dim, vocab)
        self.head.weight = self.embed.weight  # tied

    def forward(self, tokens: Any, image: Any) -> Any:
        h = self.embed(tokens)
        pooled = torch.relu(self.bn(self.conv(image))).mean(dim=(2, 3))
        h = h + pooled[:, None, :]
        h, _ = self.lstm(h)
        h, _ = self.gru(h)
        a, _ = self.attn(h, h, h, need_weights=False)
        return self.head(self.norm(h + a))


def trained_mixed_net() -> MixedNet:
    """A MixedNet with moved BatchNorm statistics, in eval mode."""
    torch.manual_seed(0)
    model = MixedNet()
    model.train()
    with torch.no_grad():
        for _ in range(2):
            model(torch.randint(0, 23, (2, 5)), torch.randn(2, 3, 8, 8))
    return model.eval()


def model_inputs() -> tuple[Any, Any]:
    g = seeded(42)
    return torch.randint(0, 23, (3, 7), generator=g), torch.randn(3, 3, 8, 8, generator=g)


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_mixed_module_loads_back_and_computes_the_same(
    legacy: bool, save_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    model = trained_mixed_net()
    state = model.state_dict()
    src = save_checkpoint(state, legacy=legacy)
    _, doc = convert_api(src, tmp_path / "out")
    assert doc["aliases"] == {"head.weight": "embed.weight"}
    stored = load_output(tmp_path / "out")
    assert "head.weight" not in stored
    full = retie(stored, doc["aliases"])
    assert_same_state(full, dict(state))

    fresh = MixedNet().eval()
    missing, unexpected = fresh.load_state_dict(full, strict=True)
    assert not missing and not unexpected
    assert fresh.head.weight is fresh.embed.weight  # still tied after loading
    tokens, image = model_inputs()
    with torch.no_grad():
        assert torch.equal(fresh(tokens, image), model(tokens, image))
    report = verify_path(tmp_path / "out", src)
    assert report.ok, report.problems


def test_mixed_module_sharded_output(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """The same model through the CLI with small shards: every shard carries the alias metadata."""
    model = trained_mixed_net()
    src = save_checkpoint(model.state_dict())
    doc = convert_cli(src, tmp_path / "out", "--max-shard-size", "2KB")
    files = output_files(tmp_path / "out")
    assert len(files) > 2
    for path in files:
        assert file_metadata(path) == {"format": "pt", "head.weight": "embed.weight"}
    fresh = MixedNet().eval()
    fresh.load_state_dict(retie(load_output(tmp_path / "out"), doc["aliases"]), strict=True)
    tokens, image = model_inputs()
    with torch.no_grad():
        assert torch.equal(fresh(tokens, image), model(tokens, image))


# ---------------------------------------------------------------------------------------------
# Hugging Face folders
# ---------------------------------------------------------------------------------------------


def fixed_input(vocab: int = 100) -> Any:
    return torch.arange(12).remainder(vocab).view(2, 6)


def hf_output(model: Any, ids: Any) -> Any:
    with torch.no_grad():
        out = model(input_ids=ids)
    return out.logits if hasattr(out, "logits") else out.last_hidden_state


def load_hf(cls: Any, out: Path, aliases: dict[str, str]) -> Any:
    """from_pretrained on our output; every weight found, nothing missing but re-tied aliases."""
    model, info = cls.from_pretrained(out, output_loading_info=True)
    assert set(info["missing_keys"]) <= set(aliases), info
    assert not info["unexpected_keys"] and not info["mismatched_keys"] and not info["error_msgs"], info
    return model.eval()


@pytest.mark.parametrize("which", ["gpt2", "bert"])
@pytest.mark.parametrize("variant", ["single", "sharded"])
def test_hf_folder_converts_and_loads(which: str, variant: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """pytorch_model.bin (or its shards + index) -> model.safetensors that from_pretrained loads."""
    hf = request.getfixturevalue(f"{which}_folders")
    src: Path = hf[variant]
    if variant == "sharded":
        assert (src / "pytorch_model.bin.index.json").is_file() and len(list(src.glob("pytorch_model-*.bin"))) > 1
    _, doc = convert_api(src, tmp_path / "out")
    assert doc["source"]["format"] == ("hf-pytorch-sharded" if variant == "sharded" else "hf-pytorch")
    assert [f["path"] for f in doc["files"]] == ["model.safetensors"] and doc["index"] is None
    assert "config.json" in doc["sidecars"]
    assert json.loads((tmp_path / "out" / "config.json").read_text()) == json.loads((src / "config.json").read_text())
    assert doc["architecture"]["config"] == json.loads((src / "config.json").read_text())
    assert file_metadata(tmp_path / "out" / "model.safetensors")["format"] == "pt"
    if which == "gpt2":
        assert doc["aliases"] == {"lm_head.weight": "transformer.wte.weight"}
    # every weight of the original, byte for byte
    original = hf["model"].state_dict()
    assert_same_state(retie(load_output(tmp_path / "out"), doc["aliases"]), dict(original))
    loaded = load_hf(hf["auto"], tmp_path / "out", doc["aliases"])
    assert type(loaded) is hf["cls"]
    ids = fixed_input()
    assert torch.equal(hf_output(loaded, ids), hf_output(hf["model"], ids))
    report = verify_path(tmp_path / "out", src)
    assert report.ok, report.problems


@pytest.mark.parametrize("which", ["gpt2", "bert"])
def test_hf_output_sharded_by_us(which: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    """--max-shard-size: an index with metadata.total_size and a weight_map covering every stored
    tensor; from_pretrained still loads it."""
    hf = request.getfixturevalue(f"{which}_folders")
    limit = 30_000
    doc = convert_cli(hf["sharded"], tmp_path / "out", "--max-shard-size", "30KB")
    out = tmp_path / "out"
    files = output_files(out)
    assert len(files) > 1
    assert [p.name for p in files] == [f"model-{i:05d}-of-{len(files):05d}.safetensors" for i in range(1, len(files) + 1)]
    assert doc["index"] == "model.safetensors.index.json"
    index = json.loads((out / "model.safetensors.index.json").read_text())
    stored = load_output(out)
    assert index["metadata"]["total_size"] == sum(t.numel() * t.element_size() for t in stored.values())
    assert set(index["weight_map"]) == set(stored)
    for path in files:
        in_file = {name for name, fname in index["weight_map"].items() if fname == path.name}
        part = load_output_file(path)
        assert set(part) == in_file
        data = sum(t.numel() * t.element_size() for t in part.values())
        assert data <= limit or len(part) == 1, f"{path.name} holds {data} bytes"
    loaded = load_hf(hf["auto"], out, doc["aliases"])
    ids = fixed_input()
    assert torch.equal(hf_output(loaded, ids), hf_output(hf["model"], ids))
    rc, stdout, stderr = run_cli("verify", out, "--source", hf["sharded"])
    assert rc == 0, stderr


def load_output_file(path: Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(path))


def test_missing_shard_is_named(gpt2_folders: dict[str, Any], tmp_path: Path) -> None:
    src = tmp_path / "model"
    shutil.copytree(gpt2_folders["sharded"], src)
    index = json.loads((src / "pytorch_model.bin.index.json").read_text())
    victim = sorted(set(index["weight_map"].values()))[1]
    (src / victim).unlink()
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out), 3, victim)
    assert_no_output(out)
    assert_cli_error(run_cli("pth-to-safetensors", src, out, "--dry-run"), 3, victim)
    assert_no_output(out)


def test_index_and_shard_disagree(gpt2_folders: dict[str, Any], tmp_path: Path) -> None:
    """The index places a tensor in a shard that does not hold it: refused, naming the tensor."""
    src = tmp_path / "model"
    shutil.copytree(gpt2_folders["sharded"], src)
    index_path = src / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    shards = sorted(set(index["weight_map"].values()))
    moved = next(name for name, fname in sorted(index["weight_map"].items()) if fname == shards[0])
    index["weight_map"][moved] = shards[-1]
    index_path.write_text(json.dumps(index))
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out), 6, moved)
    assert_no_output(out)


def test_index_lists_a_tensor_no_shard_holds(gpt2_folders: dict[str, Any], tmp_path: Path) -> None:
    src = tmp_path / "model"
    shutil.copytree(gpt2_folders["sharded"], src)
    index_path = src / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    shard = sorted(set(index["weight_map"].values()))[0]
    index["weight_map"]["transformer.h.9.ghost.weight"] = shard
    index_path.write_text(json.dumps(index))
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out), 6, "transformer.h.9.ghost.weight")
    assert_no_output(out)


def test_hf_folder_with_dtype(gpt2_folders: dict[str, Any], tmp_path: Path) -> None:
    """--dtype bf16 on a model folder: weights equal torch's own .to(bfloat16), and the model loads."""
    _, doc = convert_api(gpt2_folders["single"], tmp_path / "out", dtype="bf16")
    stored = retie(load_output(tmp_path / "out"), doc["aliases"])
    for name, t in gpt2_folders["model"].state_dict().items():
        expected = t.to(torch.bfloat16) if t.dtype.is_floating_point else t
        assert torch.equal(stored[name], expected), name
        assert stored[name].dtype == expected.dtype
    assert all(t["lossy"] for t in doc["tensors"] if t["dtype"] == "BF16")
    loaded = load_hf(gpt2_folders["auto"], tmp_path / "out", doc["aliases"])
    ref = gpt2_folders["cls"].from_pretrained(gpt2_folders["single"]).eval().to(torch.bfloat16)
    ids = fixed_input()
    assert torch.equal(hf_output(loaded.to(torch.bfloat16), ids), hf_output(ref, ids))
    assert read_manifest(tmp_path / "out")["target"]["dtype"] == "bf16"


def test_hf_sidecars_are_carried_across(gpt2_folders: dict[str, Any], tmp_path: Path) -> None:
    """config.json, tokenizer files and other small sidecars land beside the weights; the .bin
    index does not."""
    src = tmp_path / "model"
    shutil.copytree(gpt2_folders["sharded"], src)
    (src / "tokenizer_config.json").write_text(json.dumps({"model_max_length": 64}))
    (src / "vocab.txt").write_text("a\nb\n")
    (src / "merges.txt").write_text("#version: 0.2\n")
    _, doc = convert_api(src, tmp_path / "out")
    expected = {"config.json", "generation_config.json", "tokenizer_config.json", "vocab.txt", "merges.txt"}
    assert set(doc["sidecars"]) == expected
    for name in expected:
        assert (tmp_path / "out" / name).read_bytes() == (src / name).read_bytes()
    assert not (tmp_path / "out" / "pytorch_model.bin.index.json").exists()


def test_index_naming_a_shard_outside_the_folder(gpt2_folders: dict[str, Any], tmp_path: Path) -> None:
    src = tmp_path / "model"
    shutil.copytree(gpt2_folders["sharded"], src)
    index_path = src / "pytorch_model.bin.index.json"
    index = json.loads(index_path.read_text())
    name = sorted(index["weight_map"])[0]
    index["weight_map"][name] = "../elsewhere/pytorch_model.bin"
    index_path.write_text(json.dumps(index))
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out), 5, "../elsewhere")
    assert_no_output(out)
