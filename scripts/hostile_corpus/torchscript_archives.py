"""TorchScript archives (torch.jit.save): data.pkl of __torch__ module records, code/ as text."""

from __future__ import annotations

import pickle
from collections.abc import Sequence

from hostile_corpus.common import CANARY, CANARY_SOURCE, NUMEL, SERIALIZATION_ID, WEIGHT_BYTES, Hostile
from hostile_corpus.numpy_files import pylist
from hostile_corpus.pickles import (
    NO_CANARY,
    OS_SYSTEM,
    ZIP,
    Pickle,
    Value,
    attr,
    build,
    call,
    dump,
    glob,
    newobj,
    persid,
    recall,
    tensor,
)
from hostile_corpus.torch_files import zip_archive

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
