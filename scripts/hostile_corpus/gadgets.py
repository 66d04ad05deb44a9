"""The gadgets: object pickles that would run code (or name classes no reader knows) under
`torch.load(weights_only=False)`, each written in zip and legacy form."""

from __future__ import annotations

from dataclasses import dataclass

from hostile_corpus.common import CANARY, CANARY_ARGV, CANARY_SHELL, CANARY_SOURCE, EXT_CODE, NUMEL, SIZE, STRIDE
from hostile_corpus.pickles import (
    NO_CANARY,
    OS_SYSTEM,
    UNKNOWN,
    ObjectFor,
    attr,
    beside,
    build,
    call,
    exec_via_rebuild_globals,
    ext1,
    glob,
    inst,
    marshalled_function,
    newobj,
    newobj_ex,
    obj,
    ordered_dict,
    os_module_via_torch,
    shared_list_bomb,
    stack_global,
    tensor,
    weight,
    weight_storage,
)


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
