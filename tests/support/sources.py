"""Small sources of each format, written by their own libraries into a folder: SafeTensors and PyTorch
shards with their Hugging Face index, a tf.train.Checkpoint, a NumPy .npz (what the link and
hostile-input tests turn into links or damage)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from safetensors.numpy import save_file


def arrays(seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"a.weight": rng.standard_normal((4, 3), dtype=np.float32), "b.bias": rng.standard_normal(5, dtype=np.float32)}


def safetensors_folder(root: Path) -> Path:
    """Two shards, their index and a config.json, as Hugging Face writes them."""
    folder = root / "st"
    folder.mkdir(parents=True)
    weight_map = {}
    for i, (name, value) in enumerate(arrays().items(), 1):
        shard = f"model-0000{i}-of-00002.safetensors"
        save_file({name: value}, str(folder / shard), metadata={"format": "pt"})
        weight_map[name] = shard
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 68}, "weight_map": weight_map}))
    (folder / "config.json").write_text('{"model_type": "x"}')
    return folder


def pytorch_folder(root: Path) -> Path:
    torch = pytest.importorskip("torch")
    folder = root / "pt"
    folder.mkdir(parents=True)
    weight_map = {}
    for i, (name, value) in enumerate(arrays().items(), 1):
        shard = f"pytorch_model-0000{i}-of-00002.bin"
        torch.save({name: torch.from_numpy(value)}, folder / shard)
        weight_map[name] = shard
    (folder / "pytorch_model.bin.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
    (folder / "config.json").write_text('{"model_type": "x"}')
    (folder / "vocab.txt").write_text("a\nb\n")
    return folder


def tf_folder(root: Path) -> Path:
    """tf.train.Checkpoint's own files: ckpt-1.index, ckpt-1.data-00000-of-00001 and `checkpoint`."""
    tf = pytest.importorskip("tensorflow")
    folder = root / "tf"
    module = tf.Module()
    for name, value in arrays().items():
        setattr(module, name.replace(".", "_"), tf.Variable(value))
    tf.train.CheckpointManager(tf.train.Checkpoint(model=module), str(folder), max_to_keep=1).save()
    return folder


def npz_file(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    np.savez(root / "weights.npz", **arrays())
    return root / "weights.npz"
