"""Where a zip member's bytes lie in its archive, checked: torch.save zips, `.keras` files and `.npz`
archives all map stored members in place instead of reading them through zipfile, so the checks
zipfile makes on a read (the local header against the central directory, the CRC-32) are made here."""

from __future__ import annotations

import functools
import os
import struct
import threading
import zipfile
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .errors import CorruptInputError
from .hashing import hash_range

ZIP_MAGIC = b"PK\x03\x04"
LOCAL_HEADER = 30


# The archive a sniffer listed, kept for the reader that opens the same file next (`open_zip`): the
# central directory of a torch.save zip of 20,000 storages takes 0.08 s to read, twice otherwise.
# One slot, keyed by the file's identity, so a file changed or replaced in between is read afresh.
_LISTED: list[tuple[tuple[int, ...], zipfile.ZipFile]] = []
_LISTED_LOCK = threading.Lock()


def _identity(path: Path) -> tuple[int, ...]:
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def zip_names(path: Path) -> list[str] | None:
    """A zip file's member names; None when its central directory cannot be read. The archive stays
    open for `open_zip` of the same file, in place of the one kept before."""
    try:
        zf = zipfile.ZipFile(path)
        key = _identity(path)
    # ValueError: a name flagged UTF-8 that is not; NotImplementedError: a zip version past 6.3
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError):
        return None
    with _LISTED_LOCK:
        for _, old in _LISTED:
            old.close()
        _LISTED[:] = [(key, zf)]
    return zf.namelist()


def open_zip(path: Path) -> zipfile.ZipFile:
    """The archive (the one `zip_names` listed, when it is the same file), or CorruptInputError when
    its central directory cannot be read. The caller closes it."""
    with _LISTED_LOCK:
        if _LISTED:
            try:
                same = _LISTED[0][0] == _identity(path)
            except OSError:
                same = False
            if same:
                return _LISTED.pop()[1]
    try:
        return zipfile.ZipFile(path)
    # ValueError: a name flagged UTF-8 that is not; NotImplementedError: a zip version past 6.3
    except (zipfile.BadZipFile, OSError, ValueError, NotImplementedError) as exc:
        raise CorruptInputError(f"{path.name}: damaged zip archive ({exc})") from None


def member_offset(path: Path, info: zipfile.ZipInfo, fd: int | None = None) -> int:
    """The offset of a member's first byte: after its local header (whose extra field can differ in
    length from the central directory's; its name, and its CRC and sizes unless a data descriptor
    follows, cannot). The bytes the member declares must fit in the file, or a later ratio or size
    check on those declared sizes means nothing. `fd`: the archive already open (a checkpoint of
    20,000 storages would otherwise open it 40,000 times), read with pread so its position stays."""
    central_name = info.orig_filename.encode("utf-8" if info.flag_bits & 0x800 else "cp437")
    header = _read(path, fd, info.header_offset, LOCAL_HEADER + len(central_name))
    if len(header) != LOCAL_HEADER + len(central_name) or header[:4] != ZIP_MAGIC:
        raise CorruptInputError(f"{path.name}: member {info.filename!r} has a damaged local header")
    flags, crc, compressed, size, name_len, extra_len = struct.unpack("<6xH6xIIIHH", header[:LOCAL_HEADER])
    described = (crc, compressed, size) == (info.CRC, info.compress_size, info.file_size) or 0xFFFFFFFF in (compressed, size)
    if header[LOCAL_HEADER:] != central_name or name_len != len(central_name) or not (flags & 0x08 or described):
        raise CorruptInputError(f"{path.name}: member {info.filename!r}: local header disagrees with the central directory")
    start: int = info.header_offset + LOCAL_HEADER + name_len + extra_len
    if start + info.compress_size > (os.path.getsize(path) if fd is None else os.fstat(fd).st_size) or (
        info.compress_type == zipfile.ZIP_STORED and info.file_size != info.compress_size
    ):
        raise CorruptInputError(f"{path.name}: member {info.filename!r} runs past the end of the file (truncated?)")
    return start


def _read(path: Path, fd: int | None, offset: int, length: int) -> bytes:
    if fd is not None:
        return os.pread(fd, length, offset)
    with open(path, "rb") as fh:
        fh.seek(offset)
        return fh.read(length)


# Members up to this size are read in one pread for their CRC; larger ones through mapped windows
SMALL_MEMBER = 1 << 20


@functools.cache
def _crc32_function() -> Callable[[Any, int], int]:
    """zlib-ng's CRC-32 (4x zlib's speed with carry-less multiplication; scripts/bench_zip_crc.py),
    zlib's where it is not installed; looked up once, not per member."""
    try:
        from zlib_ng.zlib_ng import crc32
    except ImportError:
        return zlib.crc32
    return crc32


class _Crc32:
    """The zip CRC-32 with a hasher's face, for `hash_range`."""

    def __init__(self) -> None:
        self._crc32 = _crc32_function()
        self.value = 0

    def update(self, data: memoryview | bytes) -> None:
        self.value = self._crc32(data, self.value)


def check_stored_crc(path: Path, info: zipfile.ZipInfo, start: int, fd: int | None = None) -> None:
    """A stored member mapped in place (never read through zipfile) matches its CRC-32: one read of
    its bytes, which also leaves them in the page cache for the copy that follows. `fd`: the archive
    already open, as for `member_offset`."""
    crc = _Crc32()
    if 0 < info.file_size <= SMALL_MEMBER and fd is not None:
        crc.update(os.pread(fd, info.file_size, start))
    elif info.file_size:
        own = os.open(path, os.O_RDONLY) if fd is None else fd
        try:
            hash_range(own, start, info.file_size, [crc])
        finally:
            if fd is None:
                os.close(own)
    if crc.value != info.CRC:
        raise CorruptInputError(f"{path.name}: member {info.filename!r} fails its CRC-32 (damaged)")
