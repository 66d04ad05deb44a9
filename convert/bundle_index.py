"""`models.json`, the index a bundle's conversion writes beside its model folders: its one reader.
Its folder names come from a file (and first from a source, a NeuralForecast alias), and each becomes
a path, so every reader of the index gets them checked here."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from .errors import UnsafeInputError

BUNDLE_INDEX = "models.json"  # beside a bundle's model folders: what each holds


@dataclass(frozen=True)
class BundleIndex:
    format: str  # the bundle's source format (a reader's kind)
    folders: list[str]  # each model's output folder, one plain name inside the output


def check_folder_name(name: str) -> None:
    """A bundle model's output folder name must be one plain, visible path component: it comes from
    the source (a NeuralForecast alias), and becomes a folder."""
    if not name or name != Path(name).name or name.startswith(".") or name == BUNDLE_INDEX or "\\" in name:
        raise UnsafeInputError(f"model name {name!r} cannot name its own output folder")


def read_bundle_index(folder: Path) -> BundleIndex | None:
    """`folder`'s models.json, or None when it holds none or one this tool did not write (no format,
    no list of model folders). A folder name that is not one plain name is refused (UnsafeInputError)."""
    path = folder / BUNDLE_INDEX
    if not path.is_file():
        return None
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        fmt, folders = doc["format"], [m["folder"] for m in doc["models"]]
    except (OSError, ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(fmt, str) or not all(isinstance(name, str) for name in folders):
        return None
    for name in folders:
        check_folder_name(name)
    return BundleIndex(fmt, folders)


def bundle_folders(path: Path, fmt: str) -> list[Path] | None:
    """The model folders a conversion of a `fmt` bundle wrote into `path` (its models.json lists
    them), or None when `path` holds no such index."""
    index = read_bundle_index(path)
    if index is None or index.format != fmt:
        return None
    return [path / name for name in index.folders]
