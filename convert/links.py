"""Refusing input files that are links: a symlink or a second hard link in a model folder makes the
converter read, and copy into the output, a file from somewhere else on the machine.

The check runs on every file a command may open before the first byte of any of them is read
(`refuse_input_links`: a folder's whole tree, a file and the siblings its reader opens), so neither
the output nor an error message can carry a byte of the outside file. One structure is accepted
without --follow-links: a Hugging Face cache snapshot (`models--org--name/snapshots/REV/`), whose
files are symbolic links into the same repository's `blobs/` folder."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from pathlib import Path

from .errors import SourceNotFoundError, UnsafeInputError

HINT = "pass --follow-links if you trust it"
HF_CACHE_KINDS = ("models--", "datasets--", "spaces--")  # huggingface_hub's repository folder prefixes
MAX_TREE_ENTRIES = 1_000_000  # a folder walked for links: past this many entries it is no model folder


def refuse_links(paths: Iterable[str | Path], allowed: bool) -> None:
    """Refuse (exit 5) a source file or sidecar that is a symbolic link or a regular file with more
    than one hard link, unless the user allowed links. ONNX's own loader refuses the same."""
    if allowed:
        return
    for path in paths:
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            raise SourceNotFoundError(f"{path} disappeared while converting") from None
        _refuse(Path(path), st)


def refuse_input_links(path: str | Path, allowed: bool) -> None:
    """Before anything of `path` is opened: refuse every link among the files a reader may open from
    it. A folder is walked whole (never through a linked folder); a file is checked with the
    siblings a TF checkpoint reader opens beside it (`PREFIX.index`, `PREFIX.data-*`)."""
    if allowed:
        return
    p = Path(path)
    try:
        st = os.lstat(p)
    except FileNotFoundError:  # a TF checkpoint named by its prefix
        refuse_links(_prefix_siblings(p), allowed)
        return
    except OSError as exc:  # a name longer than the system holds
        raise SourceNotFoundError(f"no such file or folder: {p} ({exc.strerror})") from None
    if stat.S_ISDIR(st.st_mode):
        for entry, entry_st in _tree(p):
            _refuse(entry, entry_st)
        return
    _refuse(p, st)
    refuse_links(_prefix_siblings(p), allowed)


def _prefix_siblings(p: Path) -> list[Path]:
    """The files of the TF checkpoint whose prefix `p` is or names (`PREFIX.index`, `PREFIX.data-*`)
    other than `p` itself; none for a file of another format."""
    prefix = p.name.removesuffix(".index").split(".data-")[0]
    try:
        with os.scandir(p.parent) as entries:
            return [
                Path(e.path)
                for e in entries
                if e.name != p.name and (e.name == f"{prefix}.index" or e.name.startswith(f"{prefix}.data-"))
            ]
    except OSError:
        return []


def _tree(folder: Path) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry under `folder` with its lstat, without entering linked folders."""
    stack, seen = [folder], 0
    while stack:
        current = stack.pop()
        try:
            listing = os.scandir(current)
        except OSError as exc:  # a folder the user cannot list: its files cannot be checked
            raise SourceNotFoundError(f"{current}: cannot be listed ({exc.strerror})") from None
        with listing as entries:
            for entry in entries:
                seen += 1
                if seen > MAX_TREE_ENTRIES:
                    raise UnsafeInputError(f"{folder.name}: more than {MAX_TREE_ENTRIES:,} entries; not a model folder")
                st = entry.stat(follow_symlinks=False)
                yield Path(entry.path), st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(Path(entry.path))


def _refuse(path: Path, st: os.stat_result) -> None:
    if stat.S_ISLNK(st.st_mode):
        if _inside_hf_cache(path):
            return
        raise UnsafeInputError(
            f"{path.name} is a symbolic link (to {os.readlink(path)!r}); refused, as it may read a file outside the input: {HINT}"
        )
    if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
        raise UnsafeInputError(
            f"{path.name} has {st.st_nlink} hard links; refused, as it may be a file from outside the input: {HINT}"
        )


def _inside_hf_cache(link: Path) -> bool:
    """A link of a Hugging Face cache snapshot that resolves to a blob of the same repository: a
    regular file with one link under `<cache>/models--org--name/blobs/`."""
    absolute = Path(os.path.abspath(link))
    repo = next(
        (a for a in absolute.parents if a.name.startswith(HF_CACHE_KINDS) and (a / "snapshots") in absolute.parents),
        None,
    )
    if repo is None or os.path.islink(repo / "blobs"):
        return False
    target = Path(os.path.realpath(link))
    blobs = Path(os.path.realpath(repo / "blobs"))
    if target.parent != blobs:
        return False
    try:
        st = os.lstat(target)
    except OSError:
        return False
    return stat.S_ISREG(st.st_mode) and st.st_nlink == 1
