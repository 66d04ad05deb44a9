"""Look inside a `.pt2` archive before torch opens it.

`torch.export.load` is torch's own deserializer.  The graph itself is JSON, but in torch 2.13 the
loader also unpickles without torch's weights-only restriction, or with plain pickle (tensor subclasses,
custom and opaque objects, legacy archives, example inputs that `weights_only=True` refuses),
imports modules named in the file (enum and defaultdict specs), and loads AOTInductor shared
libraries.  Each of those would run code the file chose, so an archive that asks for any of them is
refused here, before torch sees it.  What is left is what `torch.export.save` writes for an
ordinary model: JSON, raw tensor bytes, and example inputs that are only tensors.
"""

from __future__ import annotations

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from convert.errors import CorruptInputError, UnsafeInputError, UnsupportedFormatError
from convert.pickle_reader import restricted_load, storage_dtype

TEXT_MAX_BYTES = 512 << 20
# Text in the graph JSON that makes torch's pytree decoder import a module by name.
IMPORTING_SPECS = ("__enum__", "default_factory_module")


def check_pt2(path: Path) -> None:
    """Raise unless the archive is a plain torch.export program (no pickles, imports or native code)."""
    try:
        with zipfile.ZipFile(path) as zf:
            _check_members(path.name, zf)
    except zipfile.BadZipFile as exc:
        raise CorruptInputError(f"{path.name}: not a torch.export archive ({exc})") from None


def _check_members(name: str, zf: zipfile.ZipFile) -> None:
    names = zf.namelist()
    if not any(n.endswith("/archive_format") or n == "archive_format" for n in names):
        raise UnsupportedFormatError(
            f"{name}: not a torch.export archive of the current format "
            f"(save the program again with torch.export.save, torch >= 2.7)"
        )
    for member in names:
        parts = member.split("/")
        if "aotinductor" in parts or member.endswith((".so", ".dll", ".dylib")):
            raise UnsafeInputError(f"{name}: holds compiled native code ({member}); refused")
        if len(parts) >= 3 and parts[-3] == "data" and parts[-2] in ("weights", "constants"):
            _check_payload(name, zf, member, parts[-2], parts[-1])
        elif len(parts) >= 3 and parts[-3] == "data" and parts[-2] == "sample_inputs":
            _check_sample_inputs(name, zf.read(member), member)
        elif len(parts) >= 2 and parts[-2] == "models" and member.endswith(".json"):
            text = _read_text(name, zf, member)
            for marker in IMPORTING_SPECS:
                if marker in text:
                    raise UnsafeInputError(
                        f"{name}: the program's input or output spec asks torch to import a module ({marker}); refused"
                    )


def _check_payload(name: str, zf: zipfile.ZipFile, member: str, kind: str, leaf: str) -> None:
    """Weights and constants must be raw tensor bytes, never pickles or custom objects."""
    if leaf.endswith(".pt"):
        raise UnsafeInputError(f"{name}: {kind} stored as a pickle ({member}, legacy layout); refused")
    if not leaf.endswith("_config.json"):
        return
    try:
        config = json.loads(_read_text(name, zf, member)).get("config", {})
    except (json.JSONDecodeError, AttributeError) as exc:
        raise CorruptInputError(f"{name}: {member} is not a payload config ({exc})") from None
    for fqn, entry in config.items():
        if not isinstance(entry, dict):
            raise CorruptInputError(f"{name}: {member}: entry {fqn!r} is not an object")
        if entry.get("use_pickle"):
            raise UnsafeInputError(f"{name}: {kind[:-1]} {fqn!r} is stored as a pickle (a tensor subclass); refused")
        if kind == "constants" and not str(entry.get("path_name", "")).startswith("tensor_"):
            raise UnsafeInputError(f"{name}: constant {fqn!r} is a pickled Python object; refused")


def _check_sample_inputs(name: str, data: bytes, member: str) -> None:
    """Example inputs are a torch.save zip; only tensors and containers may be in its pickle."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as inner:
            pickles = [n for n in inner.namelist() if n.endswith("data.pkl")]
            if len(pickles) != 1:
                raise CorruptInputError(f"{name}: {member} is not a torch.save archive")
            restricted_load(inner.read(pickles[0]), _storage_marker, inert=(), what=f"{name}: {member}")
    except zipfile.BadZipFile:
        raise UnsafeInputError(f"{name}: {member} is not a torch.save archive (a bare pickle); refused") from None


@dataclass(frozen=True)
class _Storage:
    dtype_code: str | None


def _storage_marker(pid: Any) -> _Storage:
    """Stands in for a storage: only its type matters to the check, its bytes are never read."""
    if type(pid) is not tuple or len(pid) != 5 or pid[0] != "storage":
        raise UnsafeInputError("example inputs refer to something that is not a storage")
    return _Storage(storage_dtype(pid[1]))


def _read_text(name: str, zf: zipfile.ZipFile, member: str) -> str:
    if zf.getinfo(member).file_size > TEXT_MAX_BYTES:
        raise CorruptInputError(f"{name}: {member} is larger than {TEXT_MAX_BYTES >> 20} MiB")
    try:
        return zf.read(member).decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptInputError(f"{name}: {member} is not UTF-8 text") from None
