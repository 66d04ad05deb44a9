"""Where a zip member's bytes lie in its archive, checked: torch.save zips, `.keras` files and `.npz`
archives all map stored members in place instead of reading them through zipfile."""

from __future__ import annotations

import os
import struct
import zipfile
from pathlib import Path

from .errors import CorruptInputError

ZIP_MAGIC = b"PK\x03\x04"
LOCAL_HEADER = 30


def open_zip(path: Path) -> zipfile.ZipFile:
    """The archive, or CorruptInputError when its central directory cannot be read."""
    try:
        return zipfile.ZipFile(path)
    # ValueError: a name flagged UTF-8 that is not; NotImplementedError: a zip version past 6.3
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise CorruptInputError(f"{path.name}: damaged zip archive ({exc})") from None


def member_offset(path: Path, info: zipfile.ZipInfo) -> int:
    """The offset of a member's first byte: after its local header (whose name and extra field can
    differ in length from the central directory's). The bytes the member declares must fit in the
    file, or a later ratio or size check on those declared sizes means nothing."""
    with open(path, "rb") as fh:
        fh.seek(info.header_offset)
        header = fh.read(LOCAL_HEADER)
    if len(header) != LOCAL_HEADER or header[:4] != ZIP_MAGIC:
        raise CorruptInputError(f"{path.name}: member {info.filename!r} has a damaged local header")
    name_len, extra_len = struct.unpack("<HH", header[26:30])
    start = info.header_offset + LOCAL_HEADER + name_len + extra_len
    if start + info.compress_size > os.path.getsize(path) or (
        info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size
    ):
        raise CorruptInputError(f"{path.name}: member {info.filename!r} runs past the end of the file (truncated?)")
    return start
