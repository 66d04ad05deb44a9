"""Whole pickled `nn.Module`s (`torch.save(model)`) read as `model.state_dict()` would name them, from the
inert records the restricted unpickler makes: no module class is imported.

A module is recognized by its state, whatever its class: the `_parameters`, `_buffers` and `_modules`
dicts every `nn.Module` pickles. `state_dict()` is each module's parameters, then its persistent
buffers (`_non_persistent_buffers_set` left out), then its children in order, with "." between names;
nothing else in a module's `__dict__` is in it (an LSTM's `_flat_weights` repeat its parameters, legacy
`weight_norm` leaves a computed `weight` behind, a detection head keeps a plain `stride` tensor). The
module tree's classes and the plain constructor attributes their state holds become facts for the
manifest's architecture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from convert.errors import CorruptInputError, UnsupportedFormatError
from convert.pickle_reader import InertObject, TensorRecord, jsonable, record_parts, text_of

_MODULE_DICTS = ("_parameters", "_buffers", "_modules")
_MAX_MODULES = 100_000
_MAX_ATTRS = 40
NOT_IN_STATE_DICT = "a tensor attribute that is neither parameter nor persistent buffer (state_dict() leaves it out)"
NON_PERSISTENT = "a non-persistent buffer (state_dict() leaves it out)"


def is_module(obj: Any) -> bool:
    """Whether `obj` is the record of a pickled nn.Module (any class), by its state."""
    return (
        isinstance(obj, InertObject)
        and isinstance(obj.state, dict)
        and all(isinstance(obj.state.get(k), dict) for k in _MODULE_DICTS)
    )


def child_modules(obj: InertObject) -> dict[str, Any]:
    """A module record's registered children by name (None entries left out)."""
    return {text_of(k): v for k, v in obj.state["_modules"].items() if v is not None}


@dataclass
class ModuleTree:
    """What walking module records gives beside the named tensors."""

    left_out: dict[str, str] = field(default_factory=dict)  # tensor name -> why state_dict() has no such entry
    modules: list[dict[str, Any]] = field(default_factory=list)  # per module: path, class, type, attrs, tensors
    kept: set[int] = field(default_factory=set)  # ids of the tensor records state_dict() gives
    _pending: list[tuple[str, Any]] = field(default_factory=list)  # other attributes, scanned after the tree


def walk_module(obj: InertObject, prefix: str, named: list[tuple[str, TensorRecord]], tree: ModuleTree) -> None:
    """Append `obj`'s state_dict() entries to `named` (names under `prefix`), its facts to `tree`."""
    _module(obj, prefix, named, tree, 0)
    pending, tree._pending = tree._pending, []
    seen: set[int] = set()
    for name, value in pending:
        _left_out(value, name, tree, seen)


def _module(obj: InertObject, prefix: str, named: list[tuple[str, TensorRecord]], tree: ModuleTree, depth: int) -> None:
    if depth > 64:
        raise CorruptInputError("pickled modules are nested too deeply")
    if len(tree.modules) >= _MAX_MODULES:
        raise CorruptInputError(
            f"the pickle holds more than {_MAX_MODULES:,} modules to walk (one module shared under many names?)"
        )
    state: dict[Any, Any] = obj.state
    skip = state.get("_non_persistent_buffers_set")
    non_persistent = {text_of(k) for k in skip} if isinstance(skip, (set, frozenset, list, tuple)) else set()
    own: list[str] = []
    for kind in ("_parameters", "_buffers"):
        for key, value in state[kind].items():
            name = prefix + text_of(key)
            if value is None:
                continue
            if not isinstance(value, TensorRecord):
                what = value.qualname if isinstance(value, InertObject) else type(value).__name__
                raise UnsupportedFormatError(
                    f"module {obj.qualname!r}: {kind[1:-1]} {name!r} is a {what}, not a tensor; "
                    "save model.state_dict() (with plain tensors) to convert it"
                )
            if kind == "_buffers" and text_of(key) in non_persistent:
                tree.left_out[name] = NON_PERSISTENT
                continue
            named.append((name, value))
            tree.kept.add(id(value))
            own.append(name)
    tree.modules.append(_facts(obj, prefix, own))
    for key, value in state.items():
        if key not in _MODULE_DICTS:
            tree._pending.append((prefix + text_of(key), value))
    for key, child in child_modules(obj).items():
        if not is_module(child):
            what = child.qualname if isinstance(child, InertObject) else type(child).__name__
            raise UnsupportedFormatError(
                f"submodule {prefix + key!r} of {obj.qualname!r} is a {what} without a module's state; "
                "save model.state_dict() to convert it"
            )
        _module(child, f"{prefix}{key}.", named, tree, depth + 1)


def _facts(obj: InertObject, prefix: str, tensors: list[str]) -> dict[str, Any]:
    """Path, class, canonical type (torch.nn classes only: a user's `Linear` is not torch's) and the
    plain attributes its constructor stored (`in_features`, `kernel_size`, `eps`, ...)."""
    module, _, short = obj.qualname.rpartition(".")
    attrs = {
        text_of(k): jsonable(v)
        for k, v in list(obj.state.items())
        if type(k) is str and not k.startswith("_") and k != "training" and _plain(v)
    }
    return {
        "path": prefix.rstrip("."),
        "class": obj.qualname,
        "type": short if module.startswith("torch.nn.") else obj.qualname,
        "attrs": dict(list(attrs.items())[:_MAX_ATTRS]),
        "tensors": tensors,
    }


def _plain(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return not isinstance(value, str) or len(value) <= 200
    return isinstance(value, (tuple, list)) and len(value) <= 16 and all(isinstance(v, (bool, int, float)) for v in value)


def _left_out(value: Any, name: str, tree: ModuleTree, seen: set[int]) -> None:
    """Tensors in a module's other attributes: recorded as left out unless state_dict() already gives
    them (an LSTM's `_flat_weights`); each container is visited once (attributes may point back up)."""
    stack = [(name, value)]
    while stack:
        where, node = stack.pop()
        if isinstance(node, TensorRecord):
            if id(node) not in tree.kept:
                tree.left_out.setdefault(where, NOT_IN_STATE_DICT)
            continue
        if id(node) in seen or len(seen) > _MAX_MODULES:
            continue
        seen.add(id(node))
        if isinstance(node, dict):
            stack += [(f"{where}.{text_of(k)}", v) for k, v in node.items()]
        elif isinstance(node, (list, tuple)):
            stack += [(f"{where}.{i}", v) for i, v in enumerate(node)]
        elif isinstance(node, InertObject):
            stack += [(f"{where}.{k}", v) for k, v in record_parts(node)]
