"""Orbax checkpoint folders, read with orbax-checkpoint (imported only here: it brings JAX along).

The tree, its shapes and dtypes come from the checkpoint's metadata, without reading an array. The
arrays the conversion keeps are restored together, as numpy arrays, the first time one is read; the
others (optimizer state, RNG streams) stay on disk, skipped through orbax's placeholders.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from convert.dtypes import from_numpy
from convert.errors import CorruptInputError, UnsupportedFormatError, UsageError
from convert.tensors import TensorRef
from exporters.shared.param_tree import NonTensor, Tree

METADATA = "_METADATA"
CHECKPOINT_METADATA = "_CHECKPOINT_METADATA"


def is_orbax(folder: Path) -> bool:
    names = {p.name for p in folder.iterdir()}
    return METADATA in names or CHECKPOINT_METADATA in names or bool(_steps(folder))


def find_item(folder: Path) -> tuple[Path, dict[str, Any]]:
    """The folder holding one saved tree: `folder` itself, its only item (a CheckpointManager step
    saves each item in a subfolder), or that of the latest step of a CheckpointManager folder."""
    facts: dict[str, Any] = {}
    steps = _steps(folder)
    if not (folder / METADATA).is_file() and not (folder / CHECKPOINT_METADATA).is_file() and steps:
        step = max(steps)
        folder, facts["step"] = folder / steps[step], step
    if (folder / METADATA).is_file():
        return folder, facts
    items = sorted(p.name for p in folder.iterdir() if (p / METADATA).is_file())
    if len(items) != 1:
        raise UsageError(
            f"{folder}: holds {'no saved tree' if not items else 'the items ' + ', '.join(items)}; "
            "pass the folder of the one to convert"
        )
    facts["item"] = items[0]
    return folder / items[0], facts


def _steps(folder: Path) -> dict[int, str]:
    return {int(p.name): p.name for p in folder.iterdir() if p.name.isdigit() and (p / CHECKPOINT_METADATA).is_file()}


class OrbaxTree:
    """Lazy tensors over an orbax item; `keep` names the ones worth restoring when one is first read."""

    def __init__(self, item: Path) -> None:
        self.item = item.absolute()  # orbax reads a relative path as an empty tree, not from the working folder
        self.kept: set[str] = set()
        self.arrays: dict[str, np.ndarray] = {}
        ocp = _orbax()
        try:
            with _quiet():
                meta = ocp.PyTreeCheckpointer().metadata(self.item)
        except Exception as exc:  # orbax raises many types for a damaged folder
            raise CorruptInputError(
                f"{item}: orbax cannot read the checkpoint's metadata ({type(exc).__name__}: {exc})"
            ) from None
        self.meta = getattr(getattr(meta, "item_metadata", None), "tree", meta)
        self.tree: Tree = {}
        for name, leaf in _leaves(self.meta):
            self._place(name, leaf)

    def keep(self, names: Iterable[str]) -> None:
        self.kept.update(names)

    def array(self, name: str) -> np.ndarray:
        if name not in self.arrays:
            self._restore((self.kept - self.arrays.keys()) | {name})
        return self.arrays[name]

    def _place(self, name: str, meta: Any) -> None:
        *parents, last = name.split("/")
        node = self.tree
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = self._ref(name, meta)

    def _ref(self, name: str, meta: Any) -> TensorRef | NonTensor:
        shape, dtype = getattr(meta, "shape", None), getattr(meta, "dtype", None)
        if shape is None or dtype is None:
            return NonTensor(type(meta).__name__)
        try:
            dt = from_numpy(np.dtype(dtype))
        except (TypeError, UnsupportedFormatError):
            return NonTensor(f"array of {dtype}")
        return TensorRef(name, dt, tuple(int(d) for d in shape), lambda: self.array(name))

    def _restore(self, names: set[str]) -> None:
        import jax

        ocp = _orbax()

        def only_kept(leaf: Any) -> Any:
            return jax.tree_util.tree_map_with_path(
                lambda path, meta: leaf(meta) if _path_name(path) in names else ocp.PLACEHOLDER, self.meta
            )

        try:
            with _quiet():
                restored = ocp.PyTreeCheckpointer().restore(
                    self.item,
                    item=only_kept(lambda meta: meta),
                    restore_args=only_kept(lambda meta: ocp.RestoreArgs(restore_type=np.ndarray)),
                )
        except Exception as exc:  # as above
            raise CorruptInputError(f"{self.item}: orbax cannot restore the arrays ({type(exc).__name__}: {exc})") from None
        for name, value in _leaves(restored):
            if name in names:
                self.arrays[name] = np.asarray(value)


def _leaves(tree: Any) -> list[tuple[str, Any]]:
    import jax

    flat, _ = jax.tree_util.tree_flatten_with_path(tree)
    return [(_path_name(path), leaf) for path, leaf in flat]


def _path_name(path: tuple[Any, ...]) -> str:
    """A JAX key path as the '/'-joined tree path the tensors are named by."""
    return "/".join(_key(k) for k in path)


def _key(entry: Any) -> str:
    """One step of a JAX key path (dict key, sequence index, attribute) as a tree key."""
    for attr in ("key", "idx", "name"):
        if hasattr(entry, attr):
            return str(getattr(entry, attr))
    return str(entry)


@contextmanager
def _quiet() -> Iterator[None]:
    """Orbax warns and logs (through absl) about missing optional metadata: noise on a user's terminal."""
    absl = logging.getLogger("absl")
    level = absl.level
    absl.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        absl.setLevel(level)


def _orbax() -> Any:
    os.environ.setdefault("JAX_PLATFORMS", "cpu")  # restoring to numpy needs no accelerator
    try:
        import orbax.checkpoint as ocp
    except ImportError as exc:
        raise UnsupportedFormatError(f"reading an orbax checkpoint needs the jax extra (orbax-checkpoint): {exc}") from None
    return ocp
