"""TorchScript archives (`torch.jit.save`) read as data: the module tree in `data.pkl` becomes inert
records of `__torch__.*` classes whose attributes hold the tensors; which attributes are parameters and
buffers is read from the `__parameters__`/`__buffers__` lines of the archive's code, as text (it is
never compiled, imported or run). Names follow `torch.jit.load(f).state_dict()`; tensor constants
(`constants.pkl`, what `torch.jit.freeze` turns weights into) are kept as `CONSTANTS.c{i}`, the name
the code uses for them.
"""

from __future__ import annotations

import re
import zipfile
from dataclasses import dataclass, field
from typing import Any

from convert.errors import CorruptInputError, UnsupportedFormatError
from convert.pickle_reader import InertObject, TensorRecord

INERT = ("__torch__.",)
_CLASS_RE = re.compile(r"^class ([A-Za-z_][A-Za-z0-9_]*)\(", re.M)
_LIST_RE = re.compile(r"^  (__parameters__|__buffers__) = \[([^\]\n]*)\]", re.M)
_NAME_RE = re.compile(r'"([^"\n]*)"')
_SETSTATE_RE = re.compile(r"^  def __setstate__\(", re.M)
_MAX_CODE_BYTES = 64 << 20  # all code files together; real archives hold a few MB
_MAX_DEPTH = 64
# Module visits in one archive: a module shared under two names is walked twice (state_dict() names its
# tensors under both), so a few hundred bytes sharing each level twice, 40 deep, are 2**40 visits.
_MAX_MODULES = 100_000


def is_torchscript(names: list[str], root: str) -> bool:
    return any(n.startswith(root + "code/") for n in names) or root + "constants.pkl" in names


@dataclass
class Members:
    """Per TorchScript class (qualified name): its parameters and buffers, in declaration order."""

    params: dict[str, list[str]] = field(default_factory=dict)
    buffers: dict[str, list[str]] = field(default_factory=dict)
    setstate: set[str] = field(default_factory=set)  # classes whose own code rebuilds them from their state
    code_files: int = 0


def read_members(zf: zipfile.ZipFile, infos: dict[str, zipfile.ZipInfo], root: str, file_size: int) -> Members:
    """Scan `<root>/code/**.py` as text for each class's `__parameters__` and `__buffers__` lists."""
    members = Members()
    budget = _MAX_CODE_BYTES
    prefix = root + "code/"
    for name, info in infos.items():
        if not name.startswith(prefix) or not name.endswith(".py"):
            continue
        budget -= info.file_size
        if budget < 0 or info.file_size > max(file_size, 1) * 64:
            raise CorruptInputError(f"{name}: the archive's code is larger than its file could hold")
        text = zf.read(info).decode("utf-8", "replace")
        members.code_files += 1
        module = name[len(prefix) : -len(".py")].replace("/", ".")
        classes = list(_CLASS_RE.finditer(text))
        for i, cls in enumerate(classes):
            body = text[cls.end() : classes[i + 1].start() if i + 1 < len(classes) else len(text)]
            qualname = f"{module}.{cls.group(1)}"
            if _SETSTATE_RE.search(body):
                members.setstate.add(qualname)
            for kind, listed in _LIST_RE.findall(body):
                target = members.params if kind == "__parameters__" else members.buffers
                target[qualname] = _NAME_RE.findall(listed)
    return members


def module_tensors(root: Any, members: Members) -> tuple[list[tuple[str, TensorRecord]], list[str], list[dict[str, str]]]:
    """(state_dict name, tensor) in `state_dict()` order; tensor attributes that are neither parameters nor
    buffers (named, for the dropped list); and the module tree's types, as the archive records them."""
    named: list[tuple[str, TensorRecord]] = []
    others: list[str] = []
    modules: list[dict[str, str]] = []
    _walk(root, "", members, named, others, modules, 0)
    return named, others, modules


def _walk(
    obj: Any,
    prefix: str,
    members: Members,
    named: list[tuple[str, TensorRecord]],
    others: list[str],
    modules: list[dict[str, str]],
    depth: int,
) -> None:
    if depth > _MAX_DEPTH:
        raise CorruptInputError("TorchScript modules are nested too deeply")
    if not isinstance(obj, InertObject) or not obj.qualname.startswith("__torch__."):
        raise CorruptInputError("TorchScript data.pkl does not hold a module record")
    if not isinstance(obj.state, dict) and obj.qualname in members.setstate:
        raise UnsupportedFormatError(
            f"TorchScript module {_demangle(obj.qualname)!r} is rebuilt from its state by its own __setstate__ code, "
            "which this reader never runs: which tensor is which parameter is not known"
        )
    if not isinstance(obj.state, dict):
        raise CorruptInputError("TorchScript data.pkl does not hold a module record")
    if len(modules) >= _MAX_MODULES:
        raise CorruptInputError(
            f"TorchScript data.pkl holds more than {_MAX_MODULES:,} module records to walk (one module shared under many names?)"
        )
    modules.append({"name": prefix.rstrip("."), "type": _demangle(obj.qualname)})
    attrs: dict[str, Any] = obj.state
    declared = obj.qualname in members.params or obj.qualname in members.buffers
    listed = [*members.params.get(obj.qualname, []), *members.buffers.get(obj.qualname, [])]
    for attr in listed:
        value = attrs.get(attr)
        if isinstance(value, TensorRecord):
            named.append((prefix + attr, value))
        elif value is not None:
            raise CorruptInputError(f"TorchScript parameter {prefix + attr} is not a tensor")
    for attr, value in attrs.items():
        if type(attr) is not str or attr in listed:
            continue
        if isinstance(value, InertObject) and value.qualname.startswith("__torch__."):
            _walk(value, f"{prefix}{attr}.", members, named, others, modules, depth + 1)
        elif isinstance(value, TensorRecord) and declared:
            others.append(prefix + attr)  # a plain tensor attribute: not in state_dict()
        elif isinstance(value, TensorRecord):
            named.append((prefix + attr, value))  # no code declares the class: every tensor is kept


def _demangle(qualname: str) -> str:
    """`__torch__.torch.nn.modules.conv.___torch_mangle_3.Conv1d` -> `torch.nn.modules.conv.Conv1d`."""
    parts = [p for p in qualname.split(".")[1:] if not p.startswith("___torch_mangle_")]
    return ".".join(parts)


def constant_tensors(constants: Any) -> list[tuple[str, TensorRecord]]:
    """`constants.pkl` is a tuple of the code's constants; tensors among them, by the code's name."""
    if type(constants) is not tuple:
        raise CorruptInputError("TorchScript constants.pkl is not a tuple")
    return [(f"CONSTANTS.c{i}", c) for i, c in enumerate(constants) if isinstance(c, TensorRecord)]
