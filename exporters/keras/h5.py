"""Safe access to the HDF5 files Keras writes, with h5py alone (no TensorFlow, no Keras).

An HDF5 file can point outside itself (external links, external raw storage, virtual datasets) and
can declare datasets far larger than it holds; every path is therefore resolved one link at a time,
and every dataset is checked against the file's real size before a byte is read. Contiguous,
uncompressed little-endian datasets become lazy `FileSpan`s read through a memory map; the rest are
read by h5py only when the writer asks for them.
"""

from __future__ import annotations

import io
import math
import mmap
import os
import struct
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from convert.dtypes import from_numpy
from convert.errors import ConvertError, CorruptInputError, OutputWriteError, UnsafeInputError, UnsupportedFormatError
from convert.tensors import FileSpan, MappedFile, TensorRef, contiguous_strides

H5_MAGIC = b"\x89HDF\r\n\x1a\n"
# Deflate, HDF5's usual filter, cannot expand data by more than about 1032:1.
MAX_FILTER_RATIO = 1100
# libhdf5 inflates a whole chunk in memory before handing any of it over; Keras and h5py's own
# chunking stay far below this.
MAX_CHUNK_BYTES = 64 << 20
# What a file's compressed datasets may inflate to, all together, unless the user allows more
# (--max-inflated-size): weights compress by a few percent, so a real file stays far below; a few MB
# of gzip'd zeros can declare gigabytes, which would fill the temporary folder and the output.
DEFAULT_INFLATION = 64
DEFAULT_INFLATED_FLOOR = 1 << 30
MAX_DEPTH = 64
MAX_ATTR_CHARS = 64 << 20
# What h5py raises for a damaged file: HDF5's errors surface as any of these, depending on the call.
H5_ERRORS = (OSError, ValueError, KeyError, RuntimeError)


class H5Window(io.RawIOBase):
    """A read-only view of `length` bytes at `start` of a file: an HDF5 file stored inside a zip."""

    def __init__(self, path: Path, start: int, length: int) -> None:
        super().__init__()
        self._fh = open(path, "rb")
        self._start, self._length, self._pos = start, length, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._length}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer: Any) -> int:
        view = memoryview(buffer).cast("B")
        count = max(0, min(len(view), self._length - self._pos))
        self._fh.seek(self._start + self._pos)
        got = self._fh.readinto(view[:count]) or 0
        self._pos += got
        return got

    def close(self) -> None:
        self._fh.close()
        super().close()


GCOL = b"GCOL\x01\x00\x00\x00"  # a global heap collection: signature, version 1, reserved
SCAN_STEP = 4 << 20  # the step's compare and candidates stay in the cache


def _find(mm: mmap.mmap, needle: bytes, start: int, end: int) -> int:
    """mm.find(needle, start, end) for an 8-byte needle, in steps, handing back each step's pages as the
    scan passes them, so scanning a large file (the weights are most of it) leaves RSS flat; the pages
    stay in the page cache.

    Wherever the needle starts, one 4-byte-aligned word lies wholly inside it: one of its four 4-byte
    pieces. numpy compares each aligned word of a step with the four pieces (vector compares of whole
    words) and checks the rare words that match. A 1 GiB Keras weights file in the page cache: 0.13 to
    0.14 user CPU-s, where filtering on the needle's first byte, then narrowing, took 0.21 to 0.26 s
    (most of it in finding the first byte's hits, 1 in 600 bytes of float32 weights) and bytes.find
    0.38 s."""
    if len(needle) != 8:
        raise ValueError("_find looks for 8-byte needles")
    whole = np.frombuffer(mm, np.uint8)  # every view of it dies on return, before the caller closes mm
    pieces = np.frombuffer(b"".join(needle[d : d + 4] for d in range(4)), np.uint32)  # the file's byte order
    pos = start
    while pos < end:
        stop = min(end, pos + SCAN_STEP)
        first = pos - pos % 4  # aligned words from here to past the last needle starting before `stop`
        words = whole[first : first + (min(end, stop + 7) - first) // 4 * 4].view(np.uint32)
        matches = words == pieces[0]
        for d in range(1, 4):
            matches |= words == pieces[d]
        starts = (first + 4 * word - d for word in np.flatnonzero(matches).tolist() for d in range(4))  # d bytes before it
        found = min((at for at in starts if pos <= at < stop and at + 8 <= end and mm[at : at + 8] == needle), default=-1)
        if hasattr(mmap, "MADV_DONTNEED"):
            base = pos - pos % mmap.PAGESIZE
            mm.madvise(mmap.MADV_DONTNEED, base, stop - base)
        if found >= 0:
            return found
        pos = stop
    return -1


def check_global_heaps(path: Path, start: int, length: int, label: str) -> None:
    """Refuse a global heap collection whose objects do not fit in it, before libhdf5 walks it.

    Variable-length strings (Keras' attributes) live in these collections. libhdf5 steps from object
    to object by header + size (by size alone for free space); a size near 2**64, or a free-space
    object of size 0, makes that step zero and it loops forever, in C, past any Python timeout (one
    byte inserted into a 10 KB file hangs the process).
    """
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        end_of_file = start + length
        if end_of_file <= start + 15:
            return  # too short for a superblock: libhdf5 itself will reject it
        version = mm[start + 8]
        width = mm[start + 14] if version < 2 else mm[start + 10]  # "size of lengths" in the superblock
        if width not in (2, 4, 8):
            return  # a superblock libhdf5 itself will reject
        fmt = {2: "<H", 4: "<I", 8: "<Q"}[width]
        obj_header = 8 + width  # heap object index, reference count, reserved, size
        pos = _find(mm, GCOL, start, end_of_file)
        while pos >= 0:
            if pos + 8 + width > end_of_file:
                raise CorruptInputError(f"{label}: global heap collection at {pos - start} is cut short")
            (size,) = struct.unpack_from(fmt, mm, pos + 8)
            end = pos + size
            if size < 8 + width or end > end_of_file:
                raise CorruptInputError(f"{label}: global heap collection at {pos - start} claims {size} bytes")
            p = pos + 8 + width
            while p + obj_header <= end:
                (index,) = struct.unpack_from("<H", mm, p)
                (obj_size,) = struct.unpack_from(fmt, mm, p + 8)
                # libhdf5's step: header + padded size; for free space (index 0) the size alone
                step = obj_size if index == 0 else obj_header + obj_size + (-obj_size % 8)
                if not obj_header <= step <= end - p:
                    raise CorruptInputError(f"{label}: global heap object at {p - start} claims {obj_size} bytes")
                p += step
            pos = _find(mm, GCOL, end, end_of_file)


class H5Source:
    """An open Keras HDF5 file: groups reached link by link, datasets as checked lazy TensorRefs.

    `path`/`start` locate the HDF5 bytes on disk (start > 0 inside a `.keras` zip); `label` names
    the file in messages.
    """

    def __init__(
        self, path: Path, start: int = 0, length: int | None = None, label: str | None = None, max_inflated: int | None = None
    ) -> None:
        import h5py

        self.path, self.start, self.label = path, start, label or path.name
        self.file_size = os.path.getsize(path)
        self.length = self.file_size - start if length is None else length
        self.inflated_left = (
            max_inflated if max_inflated is not None else max(DEFAULT_INFLATION * self.length, DEFAULT_INFLATED_FLOOR)
        )
        self.inflated_given = max_inflated is not None
        with open(path, "rb") as fh:
            fh.seek(start)
            if fh.read(len(H5_MAGIC)) != H5_MAGIC:
                raise UnsupportedFormatError(f"{self.label}: not an HDF5 file")
        check_global_heaps(path, start, self.length, self.label)
        self._window = H5Window(path, start, self.length) if start or self.length != self.file_size else None
        try:
            self.root = h5py.File(self._window or path, "r", locking=False)
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            self.close()
            raise CorruptInputError(f"{self.label}: damaged HDF5 file ({exc})") from None
        self._mapped = MappedFile(str(path))

    def close(self) -> None:
        root = getattr(self, "root", None)
        if root is not None:
            root.close()
        if self._window is not None:
            self._window.close()
        mapped = getattr(self, "_mapped", None)
        if mapped is not None:
            mapped.close()

    # --- structure -------------------------------------------------------------------------------

    def child(self, group: Any, name: str) -> Any:
        """group[name] for one link, refused unless it is a hard link inside this file."""
        import h5py

        try:
            link = group.get(name, getlink=True)
        except H5_ERRORS as exc:
            raise CorruptInputError(f"{self.label}: cannot read the link {group.name}/{name} ({exc})") from None
        if link is None:
            raise CorruptInputError(f"{self.label}: {group.name}/{name} does not exist")
        if isinstance(link, h5py.ExternalLink):
            raise UnsafeInputError(f"{self.label}: {group.name}/{name} links to another file ({link.filename})")
        if not isinstance(link, h5py.HardLink):
            raise UnsupportedFormatError(f"{self.label}: {group.name}/{name} is a soft link; Keras never writes one")
        try:
            return group[name]
        except (KeyError, OSError, ValueError) as exc:
            raise CorruptInputError(f"{self.label}: cannot read {group.name}/{name} ({exc})") from None

    def resolve(self, group: Any, path: str) -> Any:
        """An object below `group` reached by a '/'-separated relative path, one checked link at a time."""
        parts = [p for p in path.split("/") if p not in ("", ".")]
        if not parts or len(parts) > MAX_DEPTH:
            raise CorruptInputError(f"{self.label}: bad object path {path!r}")
        obj = group
        for part in parts:
            if not self.is_group(obj):
                raise CorruptInputError(f"{self.label}: {obj.name} is not a group (path {path!r})")
            obj = self.child(obj, part)
        return obj

    def keys(self, group: Any) -> list[str]:
        try:
            return list(group.keys())
        except (OSError, ValueError, KeyError, RuntimeError) as exc:
            raise CorruptInputError(f"{self.label}: cannot list {group.name} ({exc})") from None

    @staticmethod
    def is_group(obj: Any) -> bool:
        import h5py

        return isinstance(obj, h5py.Group)

    def groups(self, group: Any) -> Iterator[tuple[str, Any]]:
        """(name, subgroup) for every subgroup of `group`."""
        for key in self.keys(group):
            obj = self.child(group, key)
            if self.is_group(obj):
                yield key, obj

    def text_list(self, obj: Any, name: str) -> list[str] | None:
        """A list-of-strings attribute as Keras writes it, also when split into name0, name1, ..."""
        if self._has_attr(obj, name):
            values = [self._attr(obj, name)]
        elif self._has_attr(obj, f"{name}0"):
            values = []
            while self._has_attr(obj, f"{name}{len(values)}"):
                values.append(self._attr(obj, f"{name}{len(values)}"))
        else:
            return None
        out: list[str] = []
        for value in values:
            items = value.reshape(-1).tolist() if isinstance(value, np.ndarray) else [value]
            out.extend(self._decode(v, name) for v in items)
        return out

    def text(self, obj: Any, name: str) -> str | None:
        """A string attribute (model_config, keras_version), or None."""
        if not self._has_attr(obj, name):
            return None
        value = self._attr(obj, name)
        if isinstance(value, np.ndarray) and value.size == 1:
            value = value.reshape(-1)[0]
        return self._decode(value, name)

    def _has_attr(self, obj: Any, name: str) -> bool:
        try:
            return name in obj.attrs
        except H5_ERRORS as exc:
            raise CorruptInputError(f"{self.label}: attributes of {obj.name} are unreadable ({exc})") from None

    def _attr(self, obj: Any, name: str) -> Any:
        try:
            return obj.attrs[name]
        except (OSError, ValueError, KeyError, RuntimeError, TypeError) as exc:
            raise CorruptInputError(f"{self.label}: attribute {name!r} of {obj.name} is unreadable ({exc})") from None

    def _decode(self, value: Any, name: str) -> str:
        if isinstance(value, (bytes, np.bytes_)):
            try:
                value = bytes(value).decode("utf-8")
            except UnicodeDecodeError:
                raise CorruptInputError(f"{self.label}: attribute {name!r} is not UTF-8 text") from None
        if not isinstance(value, str) or len(value) > MAX_ATTR_CHARS:
            raise CorruptInputError(f"{self.label}: attribute {name!r} is not a string of sane length")
        return value

    # --- tensors ---------------------------------------------------------------------------------

    def tensor(self, dataset: Any, name: str) -> TensorRef:
        """A lazy reference to a dataset, after checking what it declares against what the file holds."""
        import h5py

        where = f"{self.label}: dataset {dataset.name}"
        if not isinstance(dataset, h5py.Dataset):
            raise CorruptInputError(f"{where} is a group, not a weight")
        if dataset.is_virtual or dataset.id.get_create_plist().get_external_count():
            raise UnsafeInputError(f"{where} keeps its data in other files")
        if dataset.shape is None:
            raise CorruptInputError(f"{where} has a null dataspace: no shape, no data")
        try:
            np_dtype = dataset.dtype
        except (ValueError, TypeError, RuntimeError):  # an HDF5 type numpy has no type for (h5py says why)
            raise UnsupportedFormatError(f"{where} is stored as an HDF5 float type no numpy dtype can hold") from None
        if np_dtype.kind not in "fiub" or np_dtype.fields is not None or np_dtype.subdtype is not None:
            raise UnsupportedFormatError(f"{where} has dtype {np_dtype}, not a numeric tensor")
        if not _exact_type(dataset.id.get_type(), np_dtype):
            raise UnsupportedFormatError(f"{where} is stored as an HDF5 type that {np_dtype} only approximates")
        try:
            dt = from_numpy(np_dtype.newbyteorder("="))
        except ConvertError:
            raise UnsupportedFormatError(f"{where} has dtype {np_dtype}, which SafeTensors cannot hold") from None
        shape = tuple(int(d) for d in dataset.shape)
        nbytes = math.prod(shape) * dt.itemsize
        offset = dataset.id.get_offset()
        if offset is not None:
            if offset < 0 or offset + nbytes > self.length:
                raise CorruptInputError(f"{where} declares {nbytes} bytes at offset {offset}, past the end of the file")
            absolute = self.start + offset
            little = np_dtype.byteorder in ("<", "=", "|")
            file_dtype = np_dtype if little else np_dtype.newbyteorder(">")
            mapped = self._mapped

            def load_mapped() -> np.ndarray:
                arr = mapped.view(absolute, file_dtype, shape, contiguous_strides(shape))
                return arr if little else arr.astype(dt.numpy)

            span = FileSpan(str(self.path), absolute, nbytes) if little else None
            return TensorRef(name, dt, shape, load_mapped, span=span, identity=(str(self.path), absolute, shape, dt.code))
        self._check_stored(dataset, nbytes, where)
        self._check_inflation(dataset, nbytes, where)
        chunks = dataset.chunks
        if chunks is not None and math.prod(chunks) * np_dtype.itemsize > MAX_CHUNK_BYTES:
            raise UnsupportedFormatError(
                f"{where} is stored in chunks of {math.prod(chunks) * np_dtype.itemsize} "
                f"bytes, more than the {MAX_CHUNK_BYTES} read at once"
            )

        def load_h5() -> np.ndarray:
            try:
                if chunks is None or not nbytes:  # compact data: small by construction
                    return np.asarray(dataset[()], dtype=dt.numpy).reshape(shape)
                return _inflated(dataset, shape, dt.numpy, nbytes)
            except (OSError, ValueError, KeyError, RuntimeError) as exc:
                raise CorruptInputError(f"{where} is unreadable ({exc})") from None

        return TensorRef(name, dt, shape, load_h5)

    def _check_stored(self, dataset: Any, nbytes: int, where: str) -> None:
        """Chunked or compact data: what is stored must account for what the shape declares."""
        stored = dataset.id.get_storage_size()
        filtered = dataset.id.get_create_plist().get_nfilters() > 0
        if nbytes and stored == 0:
            raise CorruptInputError(f"{where} declares {nbytes} bytes but stores none")
        if stored > self.length or nbytes > stored * (MAX_FILTER_RATIO if filtered else 1):
            raise CorruptInputError(f"{where} declares {nbytes} bytes but the file stores {stored} for it")

    def _check_inflation(self, dataset: Any, nbytes: int, where: str) -> None:
        """Compressed datasets count against what the file may inflate to, checked before any is read."""
        if dataset.id.get_create_plist().get_nfilters() == 0:
            return
        self.inflated_left -= nbytes
        if self.inflated_left < 0:
            bound = "the bound you gave" if self.inflated_given else f"{DEFAULT_INFLATION} times the file's size (1 GiB at least)"
            raise UnsupportedFormatError(
                f"{where}: the file's compressed datasets inflate past {bound} ({nbytes} bytes for this one); "
                "--max-inflated-size SIZE allows more"
            )


def _inflated(dataset: Any, shape: tuple[int, ...], np_dtype: np.dtype, nbytes: int) -> np.ndarray:
    """A chunked (typically compressed) dataset read one chunk at a time into an unlinked temporary
    file, returned mapped: memory stays bounded by a chunk however far the data inflates (a 3 MB
    file can hold 3 GB of gzip'd zeros), and the writer then streams the map like any other."""
    with tempfile.TemporaryFile(prefix="convert-h5-") as fh:
        try:
            os.posix_fallocate(fh.fileno(), 0, nbytes)  # a full disk is an error here, not a SIGBUS later
        except OSError as exc:
            raise OutputWriteError(
                f"no room to inflate {dataset.name} ({nbytes} bytes) in {tempfile.gettempdir()}: {exc.strerror}"
            ) from None
        window = mmap.mmap(fh.fileno(), nbytes)
    arr = np.ndarray(shape, dtype=np_dtype, buffer=window)
    for selection in dataset.iter_chunks():
        arr[selection] = dataset[selection]
        if hasattr(mmap, "MADV_DONTNEED"):
            window.madvise(mmap.MADV_DONTNEED)  # written back through the page cache, not kept in RSS
    return arr


def _exact_type(stored: Any, np_dtype: np.dtype) -> bool:
    """Whether the file's type is exactly numpy's (h5py converts an exotic float, such as a 24-bit
    one, to float32 on read: mapped in place its bytes would be taken for float32 ones)."""
    import h5py

    if stored.get_size() != np_dtype.itemsize:
        return False
    if isinstance(stored, h5py.h5t.TypeFloatID):
        native = h5py.h5t.py_create(np_dtype)
        return stored.get_fields() == native.get_fields() and stored.get_ebias() == native.get_ebias()
    return True
