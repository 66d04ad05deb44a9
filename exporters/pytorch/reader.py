"""PyTorch checkpoints read without torch: `torch.save` zip and legacy files, Lightning `.ckpt`,
and Hugging Face folders with `pytorch_model.bin` or its shards.

The pickle is read by the restricted unpickler; storage bytes stay in the file and are reached
through lazy `TensorRef`s, checked against the file's real size before anything is mapped.
"""

from __future__ import annotations

import math
import re
import struct
import zipfile
import zlib
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convert.dtypes import dtype as lookup_dtype
from convert.errors import CorruptInputError, SourceNotFoundError, UnsafeInputError, UnsupportedFormatError, UsageError
from convert.hf_folder import cross_check, hf_sidecars, index_shards, read_config
from convert.pickle_reader import (
    DEFAULT_INERT,
    InertObject,
    TensorRecord,
    classes_fact,
    jsonable,
    record_parts,
    restricted_load,
    storage_dtype,
    text_of,
)
from convert.source import SourceModel
from convert.tensors import FileSpan, MappedFile, TensorRef, check_shape, is_c_contiguous, strided_extent
from convert.zip_members import ZIP_MAGIC, check_stored_crc, member_offset, open_zip
from exporters.pytorch.modules import ModuleTree, child_modules, is_module, walk_module
from exporters.pytorch.torchscript import (
    INERT as TORCHSCRIPT_INERT,
    Members,
    constant_tensors,
    is_torchscript,
    module_tensors,
    read_members,
)
from exporters.pytorch.training import candidate_keys, holds_tensors, training_state_kind, wrapper_prefix

LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
LEGACY_PROTOCOL = 1001
_KEY_RE = re.compile(r"^[A-Za-z0-9_.-]{1,128}$")
# Entries of a checkpoint worth carrying into the manifest when the tensors come from a sub-dict.
_CHECKPOINT_FACTS = (
    "hyper_parameters",
    "hparams",
    "epoch",
    "global_step",
    "pytorch-lightning_version",
    "hparams_name",
    "config",
    "args",
    "train_args",
    "opt",
)

HF_WEIGHTS = "pytorch_model.bin"
HF_INDEX = "pytorch_model.bin.index.json"


@dataclass
class _Storage:
    """A storage's bytes in the file, as a persistent id promised them."""

    key: str
    dtype_code: str | None  # None: untyped bytes (the tensor carries its dtype)
    numel: int
    offset: int = -1  # byte offset of the storage in the file, once known
    nbytes: int = -1


def open_pytorch(path: str | Path, key: str | None = None, strip_prefix: str = "auto") -> SourceModel:
    """Open a torch checkpoint file or a Hugging Face model folder as a SourceModel; `strip_prefix` as
    `select_tensors` takes it."""
    p = Path(path)
    if not p.exists():
        raise SourceNotFoundError(f"no such file or folder: {p}")
    if p.is_dir():
        return _open_hf_folder(p, key, strip_prefix)
    return open_torch_file(p, key, strip_prefix)


def open_torch_file(path: Path, key: str | None, strip_prefix: str = "auto") -> SourceModel:
    with ExitStack() as opened:  # closed here if reading fails; by the source's close otherwise
        mapped = MappedFile(str(path))
        opened.callback(mapped.close)
        with open(path, "rb") as fh:
            head = fh.read(4)
        architecture = None
        classes: set[str] = set()  # the globals kept as inert records
        if head == ZIP_MAGIC:
            fmt, (obj, big_endian, script) = "pytorch-zip", _read_zip(path, mapped.size, classes)
        elif head[:1] == b"\x80":
            fmt, (obj, big_endian), script = "pytorch-legacy", _read_legacy(path, mapped.size, classes), None
        else:
            raise UnsupportedFormatError(f"{path.name}: not a torch.save file (neither zip nor pickle)")
        if script is None:
            named, extras, dropped, architecture = select_tensors(obj, key, strip_prefix)
        else:
            fmt = "torchscript"
            named, extras, dropped, architecture = _script_tensors(path, obj, script, key)
        if classes:
            extras["pickled_classes"] = classes_fact(classes)
        tensors = [_tensor_ref(name, rec, mapped, big_endian, path) for name, rec in named]
        return SourceModel(
            format=fmt,
            files=[path],
            tensors=tensors,
            extras=extras,
            dropped=dropped,
            architecture=architecture,
            closers=[opened.pop_all().close],
        )


def _script_tensors(
    path: Path, obj: Any, script: _Script, key: str | None
) -> tuple[list[tuple[str, TensorRecord]], dict[str, Any], dict[str, str], dict[str, Any]]:
    """A TorchScript module's parameters and buffers as `state_dict()` names them, then its tensor
    constants; plain tensor attributes are dropped (state_dict() leaves them out too)."""
    if key:
        raise UsageError(f"{path.name}: --key does not apply to a TorchScript archive")
    named, others, modules = module_tensors(obj, script.members)
    named += script.constants
    if not named:
        raise UnsupportedFormatError(f"{path.name}: the TorchScript archive holds no tensors")
    extras: dict[str, Any] = {
        "torchscript": {
            "code": "present, not run" if script.members.code_files else "absent",
            "code_files": script.members.code_files,
            "constants": len(script.constants),
        }
    }
    if others:
        extras["warnings"] = [
            f"left out {len(others)} tensor attribute(s) that are neither parameters nor buffers "
            f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}), as state_dict() does"
        ]
    dropped = {
        name: "a TorchScript tensor attribute that is neither parameter nor buffer (state_dict() leaves it out)"
        for name in others
    }
    return named, extras, dropped, {"torchscript_modules": modules}


@dataclass
class _Script:
    """What a TorchScript archive holds beside its module tree."""

    members: Members
    constants: list[tuple[str, TensorRecord]]


def _read_zip(path: Path, file_size: int, classes: set[str]) -> tuple[Any, bool, _Script | None]:
    zf = open_zip(path)
    with zf:
        infos = {i.filename: i for i in zf.infolist()}
        pkl_names = [n for n in infos if n.endswith("/data.pkl") and n.count("/") == 1]
        if len(pkl_names) != 1:
            raise UnsupportedFormatError(f"{path.name}: zip file is not a torch checkpoint (no single <root>/data.pkl)")
        root = pkl_names[0][: -len("data.pkl")]
        script = is_torchscript(list(infos), root)
        try:
            has_byteorder = root + "byteorder" in infos
            byteorder = zf.read(infos[root + "byteorder"]).decode("ascii", "replace").strip() if has_byteorder else "little"
            if byteorder not in ("little", "big"):
                raise CorruptInputError(f"{path.name}: byteorder entry says {byteorder!r}")
            inert = (*DEFAULT_INERT, *TORCHSCRIPT_INERT) if script else DEFAULT_INERT
            obj = _zip_pickle(path, zf, infos, root, "data", file_size, inert, None if script else classes)
            if not script:
                return obj, byteorder == "big", None
            constants = (
                _zip_pickle(path, zf, infos, root, "constants", file_size, inert) if root + "constants.pkl" in infos else ()
            )
            members = read_members(zf, infos, root, file_size)
        except (zipfile.BadZipFile, OSError, EOFError, ValueError, NotImplementedError, RuntimeError, zlib.error) as exc:
            # RuntimeError: an entry flagged encrypted; NotImplementedError: an unknown compression method;
            # zlib.error: a deflated entry whose stream does not inflate
            raise CorruptInputError(f"{path.name}: damaged zip archive ({exc})") from None
    return obj, byteorder == "big", _Script(members, constant_tensors(constants))


def _zip_pickle(
    path: Path,
    zf: zipfile.ZipFile,
    infos: dict[str, zipfile.ZipInfo],
    root: str,
    stem: str,
    file_size: int,
    inert: tuple[str, ...],
    classes: set[str] | None = None,
) -> Any:
    """`<root>/<stem>.pkl` read by the restricted unpickler, its storages located in `<root>/<stem>/`;
    with `classes`, every global without a stand-in becomes a record and is added there (TorchScript
    archives, whose records the module walker reads, take only their own classes)."""
    pkl_info = infos[f"{root}{stem}.pkl"]
    if pkl_info.file_size > max(file_size, 1) * (1 if pkl_info.compress_type == zipfile.ZIP_STORED else 64):
        raise CorruptInputError(f"{path.name}: {stem}.pkl declares {pkl_info.file_size} bytes, more than the file holds")
    pickle_bytes = zf.read(pkl_info)
    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> _Storage:
        if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage":
            raise UnsafeInputError(f"{path.name}: unexpected persistent id {jsonable(pid)!r}")
        _, storage_type, skey, _location, numel = pid
        if type(skey) is not str or not _KEY_RE.match(skey) or ".." in skey:
            raise UnsafeInputError(f"{path.name}: storage key {skey!r} points outside the archive")
        if type(numel) is not int or numel < 0:
            raise CorruptInputError(f"{path.name}: storage {skey} has a bad size {numel!r}")
        code = storage_dtype(storage_type)
        if skey not in storages:
            storages[skey] = _locate_zip_storage(path, zf, infos, f"{root}{stem}/", skey, code, numel, file_size)
        return storages[skey]

    return restricted_load(
        pickle_bytes, persistent_load, inert, what=f"{path.name}: {stem}.pkl", records=classes is not None, named=classes
    )


def _locate_zip_storage(
    path: Path,
    zf: zipfile.ZipFile,
    infos: dict[str, zipfile.ZipInfo],
    folder: str,
    key: str,
    code: str | None,
    numel: int,
    file_size: int,
) -> _Storage:
    info = infos.get(f"{folder}{key}")
    if info is None:
        raise CorruptInputError(f"{path.name}: storage {key} is referenced but not in the archive")
    if info.compress_type != zipfile.ZIP_STORED:
        raise UnsupportedFormatError(f"{path.name}: storage {key} is compressed; torch.save never does that")
    itemsize = lookup_dtype(code).itemsize if code else 1
    if numel * itemsize > info.file_size:
        raise CorruptInputError(f"{path.name}: storage {key} claims {numel * itemsize} bytes but holds {info.file_size}")
    fd = zf.fp.fileno() if zf.fp is not None else None  # the archive zipfile holds open
    offset = member_offset(path, info, fd)
    check_stored_crc(path, info, offset, fd)
    return _Storage(key, code, numel, offset, info.file_size)


def _read_legacy(path: Path, file_size: int, classes: set[str]) -> tuple[Any, bool]:
    name = path.name
    storages: dict[str, _Storage] = {}

    def persistent_load(pid: Any) -> Any:
        if type(pid) is tuple and len(pid) == 4 and pid[0] == "module":
            # a module class, with its source file and text for torch's source-change warning: the
            # class is a record already; the source is never read or run
            if isinstance(pid[1], type) and issubclass(pid[1], InertObject):
                return pid[1]
            raise UnsafeInputError(f"{name}: a module persistent id that names no class")
        if type(pid) is not tuple or len(pid) != 6 or pid[0] != "storage":
            raise UnsafeInputError(f"{name}: unexpected persistent id {jsonable(pid)!r}")
        _, storage_type, skey, _location, numel, view_metadata = pid
        if view_metadata is not None:
            raise UnsupportedFormatError(f"{name}: legacy storage views are not supported")
        if type(skey) is not str or not _KEY_RE.match(skey):
            raise UnsafeInputError(f"{name}: storage key {skey!r} is not a plain key")
        if type(numel) is not int or numel < 0:
            raise CorruptInputError(f"{name}: storage {skey} has a bad size {numel!r}")
        return storages.setdefault(skey, _Storage(skey, storage_dtype(storage_type), numel))

    with open(path, "rb") as fh:
        magic = restricted_load(fh, what=f"{name}: header")
        if magic != LEGACY_MAGIC:
            raise UnsupportedFormatError(
                f"{name}: a pickle, but not a torch.save file (npz-to-safetensors or auto reads pickled NumPy arrays)"
            )
        protocol = restricted_load(fh, what=f"{name}: header")
        if protocol != LEGACY_PROTOCOL:
            raise UnsupportedFormatError(f"{name}: legacy torch format version {protocol!r} is not supported")
        sys_info = restricted_load(fh, what=f"{name}: header")
        little = sys_info.get("little_endian", True) if isinstance(sys_info, dict) else True
        obj = restricted_load(fh, persistent_load, what=f"{name}: pickle", records=True, named=classes)
        keys = restricted_load(fh, what=f"{name}: storage list")
        if type(keys) is not list or any(type(k) is not str for k in keys):
            raise CorruptInputError(f"{name}: storage list is malformed")
        pos = fh.tell()
        for skey in keys:
            storage = storages.get(skey)
            if storage is None:
                raise CorruptInputError(f"{name}: storage {skey} is stored but never referenced")
            fh.seek(pos)
            count_bytes = fh.read(8)
            if len(count_bytes) != 8:
                raise CorruptInputError(f"{name}: truncated in storage {skey}")
            (count,) = struct.unpack("<q" if little else ">q", count_bytes)
            itemsize = lookup_dtype(storage.dtype_code).itemsize if storage.dtype_code else 1
            if count < storage.numel:
                raise CorruptInputError(f"{name}: storage {skey} stores {count} elements but the pickle claims {storage.numel}")
            if pos + 8 + count * itemsize > file_size:
                raise CorruptInputError(f"{name}: storage {skey} declares {count} elements; the file holds fewer (truncated?)")
            storage.offset, storage.nbytes = pos + 8, count * itemsize
            pos += 8 + count * itemsize
    missing = [k for k, s in storages.items() if s.offset < 0]
    if missing:
        raise CorruptInputError(f"{name}: storages {missing[:5]} are referenced but not stored (truncated?)")
    return obj, not little


def _tensor_ref(name: str, rec: TensorRecord, mapped: MappedFile, big_endian: bool, path: Path) -> TensorRef:
    storage = rec.storage
    if not isinstance(storage, _Storage):
        raise CorruptInputError(f"{path.name}: tensor {name!r} is not backed by a stored storage")
    dt = lookup_dtype(rec.dtype_code)
    check_shape(rec.shape, dt.itemsize, f"{path.name}: tensor {name!r}", rec.stride)
    available = storage.nbytes // dt.itemsize
    if strided_extent(rec.storage_offset, rec.shape, rec.stride) > available:
        raise CorruptInputError(f"{path.name}: tensor {name!r} reaches past the end of its storage")
    base = storage.offset + rec.storage_offset * dt.itemsize
    np_dtype = dt.numpy.newbyteorder(">") if big_endian and dt.itemsize > 1 else dt.numpy
    shape, stride = rec.shape, rec.stride
    contiguous = is_c_contiguous(shape, stride) and np_dtype.byteorder != ">"
    nbytes = math.prod(shape) * dt.itemsize

    def load() -> np.ndarray:
        return mapped.view(base, np_dtype, shape, stride)

    return TensorRef(
        name=name,
        dtype=dt,
        shape=shape,
        load=load,
        span=FileSpan(str(path), base, nbytes) if contiguous else None,
        identity=(str(path), storage.key, rec.storage_offset, shape, stride, dt.code),
    )


def select_tensors(
    obj: Any, key: str | None, strip_prefix: str = "auto"
) -> tuple[list[tuple[str, TensorRecord]], dict[str, Any], dict[str, str], dict[str, Any] | None]:
    """Find the state dict in a checkpoint: `key` (dotted) if given, else the best candidate model state
    dict or whole module (listed, the choice noted), else the root. Training states beside it are left
    out and named in the returned dropped map (name -> reason), as are tensors of pickled modules that
    `state_dict()` does not give. `strip_prefix`: "auto" (a wrapper's prefix, see `wrapper_prefix`),
    "none", or a prefix to strip from every name. Returns the named tensors, the extras, the dropped
    map and the module tree's facts (None without pickled modules)."""
    extras: dict[str, Any] = {}
    notes: list[str] = []
    dropped: dict[str, str] = {}
    chosen, chosen_key = obj, None
    if key:
        for part in key.split("."):
            entries = child_modules(chosen) if is_module(chosen) else chosen if isinstance(chosen, dict) else None
            if entries is None or part not in entries:
                where = sorted(map(text_of, entries))[:20] if entries is not None else _kind(chosen)
                raise SourceNotFoundError(f"key {key!r} not found in the checkpoint (at {part!r}; there: {where})")
            chosen = entries[part]
        extras["key"] = chosen_key = key
    elif isinstance(obj, dict):
        chosen, chosen_key = _choose_model_entry(obj, extras, notes, dropped)
    if isinstance(chosen, TensorRecord):
        raise UnsupportedFormatError("the checkpoint holds one bare tensor, not a state dict")
    if chosen is not obj and isinstance(obj, dict):
        facts = {k: jsonable(obj[k]) for k in _CHECKPOINT_FACTS if k in obj}
        if facts:
            extras["checkpoint"] = facts
    named: list[tuple[str, TensorRecord]] = []
    skipped: list[str] = []
    tree = ModuleTree()
    _flatten(chosen, "", named, skipped, 0, tree)
    if skipped:
        extras["skipped_non_tensors"] = skipped[:200]
    if not named and not (isinstance(chosen, dict) and not chosen):  # an empty state dict: the output says no
        keys = sorted(map(text_of, obj))[:20] if isinstance(obj, dict) else _kind(obj)
        raise UnsupportedFormatError(f"no tensors found in the checkpoint (top level: {keys}); pick a dict with --key")
    prefix = _strip_prefix([n for n, _ in named], obj, chosen_key, strip_prefix, extras, notes)
    named = [(_unprefixed(n, prefix), rec) for n, rec in named]
    dropped.update({_unprefixed(n, prefix): why for n, why in tree.left_out.items()})
    architecture = None
    if tree.modules:
        for module in tree.modules:
            module["path"] = _unprefixed(module["path"], prefix)
            module["tensors"] = [_unprefixed(n, prefix) for n in module["tensors"]]
        architecture = {"framework": "pytorch module pickle", "modules": tree.modules[:10_000]}
    if notes:
        extras["warnings"] = notes
    return named, extras, dropped, architecture


def _kind(obj: Any) -> str:
    return obj.qualname if isinstance(obj, InertObject) else type(obj).__name__


def _unprefixed(name: str, prefix: str | None) -> str:
    return name[len(prefix) :] if prefix and name.startswith(prefix) else name


def _choose_model_entry(
    obj: dict[Any, Any], extras: dict[str, Any], notes: list[str], dropped: dict[str, str]
) -> tuple[Any, str | None]:
    """The root's model state dict and its key (None: the root itself, training states taken out)."""
    training = {k: kind for k, v in obj.items() if (kind := training_state_kind(v)) is not None and holds_tensors(v)}
    candidates = candidate_keys(obj)
    if candidates:
        extras["key"] = chosen_key = candidates[0]
        others = candidates[1:]
        if others:
            extras["candidate_state_dicts"] = candidates
            notes.append(
                f"the checkpoint holds {len(candidates)} model state dicts ({', '.join(candidates)}); "
                f"converted {chosen_key!r}, the others are left out (--key picks one)"
            )
        for k in others:
            dropped.update(
                dict.fromkeys(_tensor_names(obj[k], text_of(k)), f"another model state dict ({text_of(k)}; --key picks it)")
            )
        for k in training:
            dropped.update(dict.fromkeys(_tensor_names(obj[k], text_of(k)), f"training state {text_of(k)} ({training[k]})"))
        chosen: Any = obj[chosen_key]
    else:
        chosen_key = None
        chosen = {k: v for k, v in obj.items() if k not in training} if training else obj
        for k in training:
            dropped.update(dict.fromkeys(_tensor_names(obj[k], text_of(k)), f"training state {text_of(k)} ({training[k]})"))
    if training:
        extras["training_state"] = {text_of(k): v for k, v in training.items()}
    return chosen, chosen_key


def _tensor_names(value: Any, prefix: str) -> list[str]:
    named: list[tuple[str, TensorRecord]] = []
    tree = ModuleTree()
    _flatten(value, prefix, named, [], 0, tree)
    return [n for n, _ in named] + list(tree.left_out)


def _strip_prefix(
    names: list[str],
    obj: Any,
    chosen_key: str | None,
    strip_prefix: str,
    extras: dict[str, Any],
    notes: list[str],
) -> str | None:
    """The prefix to strip from every name (None: none), checked to leave names distinct."""
    if strip_prefix == "auto":
        prefix = wrapper_prefix(names, obj, chosen_key)
    elif strip_prefix == "none":
        prefix = None
    else:
        prefix = strip_prefix
        if not all(n.startswith(prefix) and len(n) > len(prefix) for n in names):
            bad = next(n for n in names if not n.startswith(prefix) or len(n) == len(prefix))
            raise UsageError(f"--strip-prefix {prefix!r}: tensor {bad!r} does not start with it")
    if prefix is None:
        return None
    if len({n[len(prefix) :] for n in names}) != len(names):
        raise UsageError(f"stripping {prefix!r} would give two tensors one name; use --strip-prefix none")
    extras["stripped_prefix"] = prefix
    if strip_prefix == "auto":
        notes.append(
            f"stripped the wrapper prefix {prefix!r} from every name, as the inner module's load_state_dict "
            "expects (--strip-prefix none keeps it)"
        )
    return prefix


# Characters of all names _flatten may build. A pickle can put one container under two keys at every
# level ([L, L] nested 64 deep: 2**64 names from a few hundred bytes); real checkpoints stay far below.
_MAX_NAME_CHARS = 64 << 20


def _flatten(
    obj: Any,
    prefix: str,
    named: list[tuple[str, TensorRecord]],
    skipped: list[str],
    depth: int,
    tree: ModuleTree,
    budget: list[int] | None = None,
) -> None:
    """Tensors below `obj` by dotted path: dicts by key, lists by index, a pickled module as its
    state_dict() names it, any other record by its parts (`record_parts`); non-tensor leaves into
    `skipped`."""
    budget = [_MAX_NAME_CHARS] if budget is None else budget
    budget[0] -= 64 + len(prefix)
    if budget[0] < 0:
        raise CorruptInputError("checkpoint names too many entries (one container shared under many keys?)")
    if depth > 64:
        raise CorruptInputError("checkpoint dicts are nested too deeply")
    if isinstance(obj, TensorRecord):
        named.append((prefix, obj))
    elif is_module(obj):
        walk_module(obj, f"{prefix}." if prefix else "", named, tree)
    elif isinstance(obj, (dict, InertObject)):
        parts = obj.items() if isinstance(obj, dict) else record_parts(obj)
        for k, v in parts:
            _flatten(v, f"{prefix}.{text_of(k)}" if prefix else text_of(k), named, skipped, depth + 1, tree, budget)
    elif isinstance(obj, (list, tuple)) and any(isinstance(v, (TensorRecord, dict, list, tuple, InertObject)) for v in obj):
        for i, v in enumerate(obj):
            _flatten(v, f"{prefix}.{i}" if prefix else str(i), named, skipped, depth + 1, tree, budget)
    elif prefix:
        skipped.append(prefix)


def _open_hf_folder(folder: Path, key: str | None, strip_prefix: str) -> SourceModel:
    index_path = folder / HF_INDEX
    if index_path.exists():
        shard_files: dict[Path, set[str] | None] = dict(index_shards(index_path))
    elif (folder / HF_WEIGHTS).exists():
        shard_files = {folder / HF_WEIGHTS: None}
    else:
        raise SourceNotFoundError(f"{folder}: no {HF_WEIGHTS} or {HF_INDEX} in this folder")
    with ExitStack() as opened:
        parts = []
        for shard, expected in shard_files.items():
            part = opened.enter_context(open_torch_file(shard, key, strip_prefix))
            parts.append(part)
            if expected is not None:
                cross_check(shard.name, expected, {t.name for t in part.tensors})
        source = SourceModel(
            format="hf-pytorch-sharded" if index_path.exists() else "hf-pytorch",
            files=[p for part in parts for p in part.files],
            tensors=[t for part in parts for t in part.tensors],
            sidecars=hf_sidecars(folder, exclude={HF_INDEX}),
            config=read_config(folder),
            extras=parts[0].extras if len(parts) == 1 else {},
            dropped={name: why for part in parts for name, why in part.dropped.items()},
            closers=[opened.pop_all().close],
        )
    return source
