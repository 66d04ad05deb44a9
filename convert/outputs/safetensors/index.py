"""Hugging Face's shard index (`model.safetensors.index.json`): written beside the shards, and checked
against the manifest by `verify`."""

from __future__ import annotations

import json
from pathlib import Path

from convert.manifest_model import Manifest
from convert.writer import WrittenTensor


def index_json(tensors: list[WrittenTensor], total: int, extra: dict[str, str]) -> bytes:
    """Hugging Face's shard index; `extra` adds metadata keys a loader requires (TrustformeRS: format)."""
    weight_map = {t.name: t.file for t in tensors}
    doc = {"metadata": {"total_size": total, **extra}, "weight_map": dict(sorted(weight_map.items()))}
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


def index_problems(out_dir: Path, manifest: Manifest) -> list[str]:
    """What the written index says differently from the manifest."""
    name = manifest["index"]
    if name is None:
        return []
    try:
        index = json.loads((out_dir / name).read_text())
        weight_map, total = index["weight_map"], index["metadata"]["total_size"]
    except (OSError, ValueError, KeyError, TypeError, RecursionError):
        return [f"{name}: missing or malformed"]
    problems = []
    if weight_map != {t["name"]: t["file"] for t in manifest["tensors"]}:
        problems.append(f"{name}: weight_map differs from the manifest")
    if total != sum(t["data_offsets"][1] - t["data_offsets"][0] for t in manifest["tensors"]):
        problems.append(f"{name}: total_size differs from the tensors' bytes")
    return problems
