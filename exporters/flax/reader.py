"""Flax and JAX checkpoints: `flax.serialization` msgpack files (a params tree, a whole train state,
Hugging Face's `flax_model.msgpack` and its shards), read without JAX, and orbax checkpoint folders
(linen variables or NNX state), read with orbax-checkpoint.

The variables of the chosen collections (`params` by default; `batch_stats` merged in for BatchNorm)
reach canonical form through exporters/shared/param_tree.py. The rest of a train state (optimizer state,
step, RNG streams) is listed in the manifest, not converted.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convert.errors import CorruptInputError, SourceNotFoundError, UnsupportedFormatError
from convert.hf_folder import cross_check, hf_sidecars, index_shards, read_config
from convert.source import SourceModel
from convert.tensors import MappedFile, TensorRef
from exporters.flax.msgpack_reader import read_msgpack
from exporters.shared.param_tree import Tree, canonicalize, tensor_leaves, unstack as unstack_layers

HF_WEIGHTS = "flax_model.msgpack"
HF_INDEX = "flax_model.msgpack.index.json"
DEFAULT_COLLECTIONS = ("params",)
STATS = "batch_stats"  # BatchNorm's running statistics, a collection of their own in linen
NNX_VALUE = "value"  # NNX state saved as it is wraps every array as {"value": array}
RNG_LEAVES = frozenset({"count", "key"})  # an NNX RngStream's state, under an attribute named `rngs`
MAX_LISTED = 200


@dataclass
class _Read:
    """What a reader found, before collections are chosen."""

    format: str
    label: str  # the source as the user named it, for messages
    files: list[Path]
    tree: Tree
    closers: list[Callable[[], None]] = field(default_factory=list)
    sidecars: list[Path] = field(default_factory=list)
    config: dict[str, Any] | None = None
    facts: dict[str, Any] = field(default_factory=dict)
    keep: Callable[[Iterable[str]], None] | None = None  # tells a reader which arrays will be read

    def close(self) -> None:
        for close in self.closers:
            close()


def open_flax(path: str | Path, collections: Sequence[str] = DEFAULT_COLLECTIONS, unstack: Sequence[str] = ()) -> SourceModel:
    """Open a Flax msgpack file, a Hugging Face Flax folder or an orbax checkpoint folder."""
    p = Path(path)
    if not p.exists():
        raise SourceNotFoundError(f"no such file or folder: {p}")
    read = _read(p)
    try:
        return _source(read, tuple(collections) or DEFAULT_COLLECTIONS, unstack)
    except BaseException:
        read.close()
        raise


def _read(p: Path) -> _Read:
    if not p.is_dir():
        return _read_msgpack("flax-msgpack", p.name, [p])
    if not (p / HF_INDEX).is_file() and not (p / HF_WEIGHTS).is_file():
        from exporters.flax.orbax_reader import is_orbax

        if not is_orbax(p):
            raise UnsupportedFormatError(f"{p}: neither {HF_WEIGHTS} nor an orbax checkpoint in this folder")
        return _read_orbax(p)
    sidecars = hf_sidecars(p, exclude={HF_INDEX})
    config = read_config(p)
    if (p / HF_INDEX).is_file():
        read = _read_msgpack("hf-flax-sharded", p.name, *_hf_shards(p))
    else:
        read = _read_msgpack("hf-flax", p.name, [p / HF_WEIGHTS])
    read.sidecars, read.config = sidecars, config
    return read


def _hf_shards(folder: Path) -> tuple[list[Path], dict[str, set[str]]]:
    shards = index_shards(folder / HF_INDEX)
    return list(shards), {path.name: names for path, names in shards.items()}


def _read_msgpack(fmt: str, label: str, files: list[Path], expected: dict[str, set[str]] | None = None) -> _Read:
    read = _Read(fmt, label, files, {})
    try:
        for path in files:
            mapped = MappedFile(str(path))
            read.closers.append(mapped.close)
            tree = read_msgpack(path, mapped)
            if expected is not None:
                cross_check(path.name, expected[path.name], {r.name for r in tensor_leaves(tree)})
            _merge(read.tree, tree, path.name, ())
    except BaseException:
        read.close()
        raise
    return read


def _read_orbax(folder: Path) -> _Read:
    from exporters.flax.orbax_reader import OrbaxTree, find_item

    item, facts = find_item(folder)
    store = OrbaxTree(item)
    files = sorted(f for f in item.rglob("*") if f.is_file())
    return _Read("orbax", folder.name, files, store.tree, facts=facts, keep=store.keep)


def _source(read: _Read, collections: tuple[str, ...], unstack: Sequence[str]) -> SourceModel:
    tree, facts = _unwrap_nnx(read.tree)
    variables, chosen = _select(tree, collections)
    if read.keep is not None:
        read.keep(r.name for r in tensor_leaves(variables))
    stacked = {path: unstack_layers(variables, path) for path in unstack}
    try:
        canon = canonicalize(variables)
    except UnsupportedFormatError as exc:
        raise UnsupportedFormatError(f"{read.label}: {exc}") from None
    if not canon.tensors:
        where = " and ".join(chosen["collections"] or ["tree"])
        raise UnsupportedFormatError(f"{read.label}: no arrays in the {where} of this checkpoint")
    others = _non_tensors(variables, ())
    dropped = dict.fromkeys(facts.get("dropped_rng_state", []), "RNG stream state (NNX rngs)")
    for name in chosen.get("skipped_collections", []):  # arrays of the collections --collection leaves out
        if isinstance(tree.get(name), dict):
            dropped.update(
                dict.fromkeys((r.name for r in tensor_leaves(tree[name])), f"collection {name} (not chosen by --collection)")
            )
    extras = {
        **read.facts,
        **facts,
        **chosen,
        **({"unstacked": stacked} if stacked else {}),
        **({"skipped_non_tensors": others[:MAX_LISTED]} if others else {}),
        "origins": canon.origins,
    }
    architecture = {"framework": "flax", "collections": chosen["collections"], "unstacked": stacked, "modules": canon.modules}
    return SourceModel(
        format=read.format,
        files=read.files,
        tensors=canon.tensors,
        sidecars=read.sidecars,
        config=read.config,
        extras=extras,
        architecture=architecture,
        closers=read.closers,
        dropped=dropped,
    )


def _unwrap_nnx(tree: Tree) -> tuple[Tree, dict[str, Any]]:
    """NNX state as saved: arrays wrapped as {"value": array}, RNG streams beside the weights."""
    facts: dict[str, Any] = {}
    if _all_wrapped(tree):
        tree, facts["nnx_value_leaves"] = _unwrap(tree), True
    dropped: list[str] = []
    tree = _drop_rng_state(tree, (), dropped)
    if dropped:
        facts["dropped_rng_state"] = dropped[:MAX_LISTED]
    return tree, facts


def _all_wrapped(node: Tree) -> bool:
    """Every array sits alone under a "value" key, and there is at least one."""
    if any(not isinstance(v, dict) for v in node.values()):
        return set(node) == {NNX_VALUE}
    children = [v for v in node.values() if v]
    return bool(children) and all(_all_wrapped(v) for v in children)


def _unwrap(node: Tree) -> Any:
    if set(node) == {NNX_VALUE} and not isinstance(node[NNX_VALUE], dict):
        return node[NNX_VALUE]
    return {k: _unwrap(v) for k, v in node.items()}


def _drop_rng_state(node: Tree, where: tuple[str, ...], dropped: list[str]) -> Tree:
    kept: Tree = {}
    for key, value in node.items():
        path = (*where, key)
        if isinstance(value, dict):
            kept[key] = _drop_rng_state(value, path, dropped)
        elif key in RNG_LEAVES and "rngs" in where:
            dropped.append("/".join(path))
        else:
            kept[key] = value
    return kept


def _select(tree: Tree, collections: tuple[str, ...]) -> tuple[Tree, dict[str, Any]]:
    """The chosen collections merged into one tree; a tree without them (Hugging Face's params, NNX
    state) is itself the variables."""
    wanted = list(dict.fromkeys(collections))
    present = [c for c in wanted if isinstance(tree.get(c), dict)]
    if not present and tuple(wanted) == DEFAULT_COLLECTIONS:
        return tree, {"collections": None}
    missing = [c for c in wanted if c not in present]
    if missing:
        raise SourceNotFoundError(f"no collection {missing[0]!r} at the top of the tree (there: {sorted(tree)[:20]})")
    if isinstance(tree.get(STATS), dict) and STATS not in present:
        present.append(STATS)
    merged: Tree = {}
    for name in present:
        _merge(merged, tree[name], name, ())
    return merged, {"collections": present, "skipped_collections": sorted(set(tree) - set(present))}


def _merge(dst: Tree, src: Tree, what: str, where: tuple[str, ...]) -> None:
    for key, value in src.items():
        if isinstance(value, dict) and isinstance(dst.get(key), dict):
            _merge(dst[key], value, what, (*where, key))
        elif key in dst:
            raise CorruptInputError(f"{what}: {'/'.join((*where, key))} is given twice")
        else:
            dst[key] = value


def _non_tensors(node: Tree, where: tuple[str, ...]) -> list[str]:
    found = []
    for key, value in node.items():
        if isinstance(value, dict):
            found += _non_tensors(value, (*where, key))
        elif not isinstance(value, TensorRef):
            found.append("/".join((*where, key)))
    return found
