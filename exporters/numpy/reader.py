"""NumPy files read without `np.load` and without pickle: `.npy` and `.npz` (the NPY header parsed as a
literal, the data left in the file: an uncompressed npz member has a file offset and is copied like a
storage, a compressed one is streamed when written), and, where the data is pickled (object arrays,
a saved dict, a plain pickle of dicts/lists of ndarrays, protocol 5's in-band buffers), the restricted
unpickler: array reconstruction, dtypes and containers are built, any other class (a Flax `FrozenDict`)
is an inert record whose arrays are found and named, and nothing is imported.

A tree that looks like Flax params as a whole (`kernel`, `embedding`, `scale` leaves inside modules,
no dotted keys) reaches canonical form as
`flax-to-safetensors` gives it; any other tree keeps its names, joined with "." (or "/" when a key
holds a dot). npz member names with "/" (JAX and Google vision checkpoints) are tree paths.
"""

from __future__ import annotations

import ast
import math
import struct
import zipfile
import zlib
from pathlib import Path
from typing import Any, Literal

import numpy as np

from convert.dtypes import from_numpy
from convert.errors import CorruptInputError, UnsupportedFormatError
from convert.pickle_reader import InertObject, NumpyArrayRecord, classes_fact, record_parts, restricted_load
from convert.source import SourceModel, open_mapped
from convert.tensors import FileSpan, MappedFile, TensorRef, check_shape, in_memory
from convert.zip_members import member_offset, open_zip
from exporters.shared.param_tree import canonicalize

NPY_MAGIC = b"\x93NUMPY"
FLAX_LEAVES = frozenset({"kernel", "embedding", "scale"})
_MAX_HEADER = 1 << 20
_MAX_ENTRIES = 1_000_000  # containers and values a pickled tree may hold; real parameter trees hold thousands


def open_numpy(path: str | Path) -> SourceModel:
    """Open a `.npy`, `.npz` or pickle of NumPy arrays as a SourceModel."""
    return open_mapped(path, _read)


def _read(p: Path, mapped: MappedFile) -> SourceModel:
    with open(p, "rb") as fh:
        head = fh.read(6)
    if head == NPY_MAGIC:
        fmt, tree = "npy", _npy_file(p, mapped)
    elif head[:4] == b"PK\x03\x04":
        fmt, tree = "npz", _npz(p, mapped)
    elif head[:1] == b"\x80":
        classes: set[str] = set()
        with open(p, "rb") as fh:
            obj = restricted_load(fh, inert=(), what=f"{p.name}: pickle", records=True, named=classes)
        source = _source("numpy-pickle", p, _Tree(p.name).of(obj), mapped)
        if classes:
            source.extras["pickled_classes"] = classes_fact(classes)
        return source
    else:
        raise UnsupportedFormatError(f"{p.name}: not a .npy, .npz or pickle file")
    return _source(fmt, p, tree, mapped)


# --- NPY -----------------------------------------------------------------------------------------


_NPY_KEYS = {"descr", "fortran_order", "shape"}


def _npy_header(read: Any, name: str) -> tuple[np.dtype, tuple[int, ...], bool, int]:
    """(dtype, shape, fortran order, header length) from the bytes of an NPY header (`read(n)`)."""
    fixed = read(8)
    if len(fixed) != 8 or fixed[:6] != NPY_MAGIC:
        raise CorruptInputError(f"{name}: not an NPY array")
    major = fixed[6]
    if major == 1:
        raw = read(2)
        size, start = (struct.unpack("<H", raw)[0] if len(raw) == 2 else -1), 10
    elif major in (2, 3):
        raw = read(4)
        size, start = (struct.unpack("<I", raw)[0] if len(raw) == 4 else -1), 12
    else:
        raise UnsupportedFormatError(f"{name}: NPY format version {major} is not supported")
    if not 0 <= size <= _MAX_HEADER:
        raise CorruptInputError(f"{name}: NPY header length {size} is not plausible")
    text = read(size)
    if len(text) != size:
        raise CorruptInputError(f"{name}: truncated in the NPY header")
    try:
        header = ast.literal_eval(text.decode("utf-8" if major == 3 else "latin1"))
        descr, fortran, shape = header["descr"], header["fortran_order"], header["shape"]
        dt = np.lib.format.descr_to_dtype(descr)
    except (ValueError, SyntaxError, KeyError, TypeError, MemoryError, RecursionError):
        raise CorruptInputError(f"{name}: NPY header is malformed") from None
    if header.keys() != _NPY_KEYS:  # numpy refuses any other key too: what it says is not read here
        raise CorruptInputError(f"{name}: NPY header keys {sorted(map(str, header))} are not {sorted(_NPY_KEYS)}")
    if type(shape) is not tuple or any(type(n) is not int or n < 0 for n in shape) or type(fortran) is not bool:
        raise CorruptInputError(f"{name}: NPY header has a bad shape or order")
    check_shape(shape, dt.itemsize, f"{name}: NPY array")
    return dt, shape, fortran, start + size


def _npy_file(p: Path, mapped: MappedFile) -> Any:
    with open(p, "rb") as fh:
        dt, shape, fortran, data_at = _npy_header(fh.read, p.name)
        if dt.hasobject:
            return _Tree(p.name).objects(restricted_load(fh, inert=(), what=f"{p.name}: object array"))
    return _stored_array(p.stem, p, mapped, data_at, dt, shape, fortran)


def _stored_array(
    name: str, p: Path, mapped: MappedFile, offset: int, dt: np.dtype, shape: tuple[int, ...], fortran: bool
) -> TensorRef:
    """An array whose bytes lie in the file at `offset`: mapped lazily, checked against the file's size."""
    code = _code(dt, name)
    nbytes = math.prod(shape) * dt.itemsize
    if offset + nbytes > mapped.size:
        raise CorruptInputError(
            f"{p.name}: array {name!r} needs {nbytes} bytes at {offset}; the file ends at {mapped.size} (truncated?)"
        )
    strides = _strides(shape, fortran)
    plain = not fortran and dt.byteorder != ">"
    return TensorRef(
        name,
        code,
        shape,
        lambda: mapped.view(offset, dt, shape, strides),
        span=FileSpan(str(p), offset, nbytes) if plain else None,
    )


def _strides(shape: tuple[int, ...], fortran: bool) -> tuple[int, ...]:
    """Element strides of a C-ordered (or Fortran-ordered) array of `shape`."""
    out, acc = [0] * len(shape), 1
    for i in range(len(shape)) if fortran else reversed(range(len(shape))):
        out[i] = acc
        acc *= shape[i]
    return tuple(out)


def _code(dt: np.dtype, name: str) -> Any:
    if dt.fields or dt.subdtype is not None:
        raise UnsupportedFormatError(f"array {name!r} has a structured dtype {dt}, which SafeTensors cannot hold")
    try:
        return from_numpy(dt.newbyteorder("=") if dt.byteorder == ">" else dt)
    except UnsupportedFormatError:
        raise UnsupportedFormatError(f"array {name!r} has dtype {dt}, which SafeTensors cannot hold") from None


# --- NPZ -----------------------------------------------------------------------------------------


def _npz(p: Path, mapped: MappedFile) -> dict[str, Any]:
    zf = open_zip(p)
    members: dict[str, Any] = {}
    tree = _Tree(p.name)  # one budget for every object-array member
    with zf:
        for info in zf.infolist():
            if not info.filename.endswith(".npy"):
                raise UnsupportedFormatError(f"{p.name}: member {info.filename!r} is not an .npy array")
            if info.file_size > max(mapped.size, 1) * (1 if info.compress_type == zipfile.ZIP_STORED else 1024):
                raise CorruptInputError(f"{p.name}: member {info.filename!r} declares more bytes than the file holds")
            try:
                members[info.filename[:-4]] = _npz_member(p, zf, info, mapped, tree)
            except _MEMBER_ERRORS as exc:
                raise CorruptInputError(f"{p.name}: damaged member {info.filename!r} ({exc})") from None
    return members


# What reading a damaged member raises: an encrypted flag (RuntimeError), an unknown method
# (NotImplementedError), a stream that does not inflate (zlib.error), a CRC mismatch (BadZipFile).
_MEMBER_ERRORS = (zipfile.BadZipFile, OSError, EOFError, NotImplementedError, RuntimeError, zlib.error)


def _npz_member(p: Path, zf: zipfile.ZipFile, info: zipfile.ZipInfo, mapped: MappedFile, tree: _Tree) -> Any:
    name = info.filename[:-4]
    with zf.open(info) as member:
        dt, shape, fortran, data_at = _npy_header(member.read, f"{p.name}:{info.filename}")
        if dt.hasobject:
            return tree.objects(restricted_load(member.read(), inert=(), what=f"{p.name}:{info.filename}"))
    if info.compress_type == zipfile.ZIP_STORED:
        start = member_offset(p, info)
        ref = _stored_array(name, p, mapped, start + data_at, dt, shape, fortran)
        if data_at + ref.nbytes > info.file_size:
            raise CorruptInputError(f"{p.name}: member {info.filename!r} holds fewer bytes than its header says")
        return ref
    code = _code(dt, name)
    nbytes = math.prod(shape) * dt.itemsize
    if data_at + nbytes != info.file_size:
        raise CorruptInputError(
            f"{p.name}: member {info.filename!r} holds {info.file_size - data_at} data bytes; {list(shape)} {dt} needs {nbytes}"
        )

    def load() -> np.ndarray:
        """Decompressed when the writer asks for it: one member in memory at a time."""
        try:
            with zipfile.ZipFile(p) as again, again.open(info.filename) as member:
                member.read(data_at)
                raw = member.read(nbytes)
        except _MEMBER_ERRORS as exc:
            raise CorruptInputError(f"{p.name}: damaged member {info.filename!r} ({exc})") from None
        if len(raw) != nbytes:
            raise CorruptInputError(f"{p.name}: member {info.filename!r} is truncated")
        order: Literal["C", "F"] = "F" if fortran else "C"
        return np.frombuffer(raw, dtype=dt).reshape(shape, order=order)

    return TensorRef(name, code, shape, load)


# --- pickled trees -------------------------------------------------------------------------------


class _Tree:
    """Unpickled data as a tree whose array leaves are in-memory TensorRefs (named later), walked within a
    budget of entries for the whole file: a pickle can share one container under many keys through its
    memo ([L, L] nested 40 deep is 2**40 entries to a walk from a few hundred bytes), and an object array
    can hold itself."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.left = _MAX_ENTRIES

    def objects(self, obj: Any, depth: int = 0) -> Any:
        """An object array as its items: a saved dict (0-d) is that dict, other shapes a flat list."""
        if not isinstance(obj, NumpyArrayRecord):
            raise CorruptInputError(f"{self.name}: the object array's pickle does not hold an array")
        items = obj.objects()
        return self.of(items[0] if obj.object_shape() == () else items, depth + 1)

    def of(self, obj: Any, depth: int = 0) -> Any:
        self.left -= 1
        if self.left < 0:
            raise CorruptInputError(
                f"{self.name}: the pickled data has more than {_MAX_ENTRIES:,} entries (one container shared under many keys?)"
            )
        if depth > 64:
            raise CorruptInputError(f"{self.name}: nested too deeply")
        if isinstance(obj, NumpyArrayRecord):
            if obj.holds_objects():
                return self.objects(obj, depth)
            arr = obj.to_array()
            return in_memory("", arr, _code(arr.dtype, self.name).code)
        if isinstance(obj, dict):
            return {k: self.of(v, depth + 1) for k, v in obj.items()}
        if isinstance(obj, (list, tuple)):
            return {str(i): self.of(v, depth + 1) for i, v in enumerate(obj)}
        if isinstance(obj, InertObject):  # a record (a FrozenDict, a user's class): its parts by name
            return {k: self.of(v, depth + 1) for k, v in record_parts(obj)}
        return obj  # a scalar, a string: reported, not converted


# --- naming --------------------------------------------------------------------------------------


def _as_tree(members: dict[str, Any]) -> dict[str, Any]:
    """npz member names as tree paths (`a/b/kernel`), when they nest without clashes."""
    tree: dict[str, Any] = {}
    for path, value in members.items():
        node = tree
        parts = path.split("/")
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                return members
            node = child
        if parts[-1] in node:
            return members
        node[parts[-1]] = value
    return tree


def _leaves(node: Any, where: tuple[str, ...], out: list[tuple[tuple[str, ...], TensorRef]], skipped: list[str]) -> None:
    if isinstance(node, TensorRef):
        out.append((where, node))
    elif isinstance(node, dict):
        for k, v in node.items():
            _leaves(v, (*where, str(k)), out, skipped)
    elif where:
        skipped.append("/".join(where))


def _source(fmt: str, p: Path, tree: Any, mapped: MappedFile) -> SourceModel:
    if isinstance(tree, TensorRef):
        tree = {tree.name: tree}
    if not isinstance(tree, dict):
        raise UnsupportedFormatError(f"{p.name}: holds a {type(tree).__name__}, not arrays")
    if fmt == "npz":
        tree = _as_tree(tree)
    leaves: list[tuple[tuple[str, ...], TensorRef]] = []
    skipped: list[str] = []
    _leaves(tree, (), leaves, skipped)
    if not leaves:
        raise UnsupportedFormatError(f"{p.name}: no numeric arrays found")
    extras: dict[str, Any] = {"skipped_non_tensors": skipped[:200]} if skipped else {}
    architecture = None
    if _flax_like(leaves):
        canon = canonicalize(_named_tree(tree, ()))
        tensors, extras["origins"] = canon.tensors, canon.origins
        architecture = {"framework": "flax-like tree", "modules": canon.modules}
    else:
        sep = "/" if any("." in part for where, _ in leaves for part in where) else "."
        tensors = [ref.renamed(sep.join(where)) for where, ref in leaves]
    return SourceModel(format=fmt, files=[p], tensors=tensors, extras=extras, architecture=architecture, closers=[mapped.close])


def _flax_like(leaves: list[tuple[tuple[str, ...], TensorRef]]) -> bool:
    """Whether the tree as a whole is a Flax params tree: a `kernel`, `embedding` or `scale` leaf inside
    a module (never at the top, where a flat file's member merely has that name), and no key that
    could not be a Flax module or leaf name (Flax names hold no dots). One leaf's name alone never
    decides: what the plain path converts must not be refused or renamed by a guess."""
    if any(not part or "." in part for where, _ in leaves for part in where):
        return False
    return any(len(where) > 1 and where[-1] in FLAX_LEAVES for where, _ in leaves)


def _named_tree(node: dict[str, Any], where: tuple[str, ...]) -> dict[str, Any]:
    """The tree as flax_canonical takes it: leaves named by their '/'-joined path, non-arrays left out."""
    out: dict[str, Any] = {}
    for k, v in node.items():
        path = (*where, str(k))
        if isinstance(v, TensorRef):
            out[str(k)] = v.renamed("/".join(path))
        elif isinstance(v, dict):
            out[str(k)] = _named_tree(v, path)
    return out
