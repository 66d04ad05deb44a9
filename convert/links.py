"""Refusing input files that are links: a symlink or a second hard link in a model folder makes the
converter read, and copy into the output, a file from somewhere else on the machine."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

from .errors import SourceNotFoundError, UnsafeInputError

HINT = "pass --follow-links if you trust it"


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
        if stat.S_ISLNK(st.st_mode):
            raise UnsafeInputError(
                f"{Path(path).name} is a symbolic link (to {os.readlink(path)!r}); "
                f"refused, as it may read a file outside the input: {HINT}"
            )
        if stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
            raise UnsafeInputError(
                f"{Path(path).name} has {st.st_nlink} hard links; refused, as it may be a file from outside the input: {HINT}"
            )
