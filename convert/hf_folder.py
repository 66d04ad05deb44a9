"""Hugging Face model folders, for every reader: the shard index and its checks, `config.json`, and
the small files carried across. One home, so the same hostile index gets the same answer whichever
framework's folder it sits in."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .documents import parse_json
from .errors import CorruptInputError, SourceNotFoundError, UnsafeInputError

SIDECAR_SUFFIXES = (".json", ".txt", ".model")
SIDECAR_MAX_BYTES = 32 << 20
CONFIG = "config.json"
SAFETENSORS_SINGLE = "model.safetensors"  # Hugging Face's names for one file, and for the shards' index
SAFETENSORS_INDEX = "model.safetensors.index.json"


def is_file(path: Path) -> bool:
    """Whether a file that a document names (an index's shard, a state file's checkpoint) is there. A
    name longer than the system holds is not there (`Path.is_file` lets that OSError escape)."""
    try:
        return path.is_file()
    except OSError:
        return False


def read_json(path: Path) -> Any:
    """A small JSON document of a model folder: size-capped, every decoding error a CorruptInputError."""
    if path.stat().st_size > SIDECAR_MAX_BYTES:
        raise CorruptInputError(f"{path.name}: larger than {SIDECAR_MAX_BYTES >> 20} MiB")
    return parse_json(path.read_bytes(), path.name, CorruptInputError)


def read_config(folder: Path) -> dict[str, Any] | None:
    """The folder's `config.json`, when it has one."""
    return read_json(folder / CONFIG) if (folder / CONFIG).is_file() else None


def read_index(index_path: Path) -> dict[str, set[str]]:
    """Shard file name -> the tensor names the index places in it. A shard name is one plain name
    inside the folder: anything else points outside it and is refused as unsafe."""
    index = read_json(index_path)
    weight_map = index.get("weight_map") if isinstance(index, dict) else None
    if not isinstance(weight_map, dict) or not all(isinstance(v, str) for v in weight_map.values()):
        raise CorruptInputError(f"{index_path.name}: no weight_map of tensor names to shard files")
    shards: dict[str, set[str]] = {}
    for tensor_name, fname in weight_map.items():
        if "/" in fname or "\\" in fname or fname.startswith(".") or not fname:
            raise UnsafeInputError(f"{index_path.name}: shard name {fname!r} points outside the folder")
        shards.setdefault(fname, set()).add(tensor_name)
    return shards


def index_shards(index_path: Path) -> dict[Path, set[str]]:
    """Each shard's path (every one present) -> the tensor names the index places in it, in name order."""
    shards = read_index(index_path)
    missing = [name for name in sorted(shards) if not is_file(index_path.parent / name)]
    if missing:
        raise SourceNotFoundError(f"{index_path.parent.name}: shard {missing[0]} named in {index_path.name} is missing")
    return {index_path.parent / name: shards[name] for name in sorted(shards)}


def cross_check(fname: str, expected: set[str], found: set[str]) -> None:
    """A shard holds exactly what the index says it holds."""
    missing, extra = sorted(expected - found), sorted(found - expected)
    if missing:
        raise CorruptInputError(f"{fname}: the index places {missing[:5]} here but the shard lacks them")
    if extra:
        raise CorruptInputError(f"{fname}: holds {extra[:5]}, which the index does not list")


def hf_sidecars(folder: Path, exclude: set[str]) -> list[Path]:
    """Small config and tokenizer files of a model folder, carried across to the output."""
    return sorted(
        p
        for p in folder.iterdir()
        if p.is_file()
        and p.suffix in SIDECAR_SUFFIXES
        and p.name not in exclude
        and not p.name.endswith(".index.json")
        and p.stat().st_size <= SIDECAR_MAX_BYTES
    )
