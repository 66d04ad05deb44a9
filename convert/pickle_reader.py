"""The restricted unpickler: the only way this toolchain reads a pickle.

`find_class` never imports anything.  Every global a pickle may name maps to a stand-in defined
here: tensor rebuild functions become `TensorRecord` builders, storage classes and dtypes become
markers, containers become plain Python containers, and every other class or function becomes an
`InertObject` record of its qualified name, its call arguments and its BUILD state (readers that
take only known classes pass `records=False`, and anything else is refused with its name).  A
global that only an attack needs (convert.pickle_denylist) refuses the whole pickle, wherever it
sits.  What a pickle can make is therefore only data; nothing in it is ever imported, called,
asked for an attribute or executed.
"""

from __future__ import annotations

import io
import math
import pickle
import pickletools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, BinaryIO, NoReturn

import numpy as np

from .dtypes import TORCH_DTYPES, TORCH_STORAGE_TYPES, dtype as lookup_dtype
from .errors import ConvertError, CorruptInputError, UnsafeInputError, UnsupportedFormatError
from .pickle_denylist import denied
from .pickle_scan import EFFECTS, MAX_NESTING, STRING_OPS, NestedTooDeeply, clean, simulate
from .tensors import check_shape


class _Sealed:
    """A stand-in a pickle may name but not alter: BUILD would write into the instance dict, past
    `frozen`, so it is refused."""

    def __setstate__(self, state: object) -> None:
        raise UnsafeInputError(f"pickle tries to set state on {type(self).__name__}")


@dataclass(frozen=True)
class StorageType(_Sealed):
    """Stand-in for `torch.FloatStorage` & co; `code` is None for `torch.UntypedStorage` (bytes)."""

    code: str | None


@dataclass(frozen=True)
class TorchDType(_Sealed):
    """Stand-in for a pickled `torch.float32` & co."""

    code: str


@dataclass(frozen=True)
class TensorRecord:
    """What `_rebuild_tensor_v2/v3` would have built: a strided view of a storage."""

    storage: Any  # whatever the format's persistent_load returned
    storage_offset: int
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype_code: str

    def __setstate__(self, state: object) -> None:
        raise UnsafeInputError("pickle tries to set state on a tensor")


class InertObject:
    """An object of a class the reader has no stand-in for, kept as a record of its qualified name, its
    call arguments, its BUILD state and the items a pickle set on it; its class is never imported."""

    qualname = "?"
    # set per instance by __new__ (before any BUILD can reach them), not class attributes
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    state: Any
    items: dict[Any, Any]
    list_items: list[Any]

    def __new__(cls, *args: Any, **kwargs: Any) -> InertObject:
        obj = super().__new__(cls)
        obj.args = args
        obj.kwargs = kwargs
        obj.state = None
        obj.items = {}
        obj.list_items = []
        return obj

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        pass

    def __setstate__(self, state: Any) -> None:
        self.state = state

    def __setitem__(self, key: Any, value: Any) -> None:
        self.items[key] = value

    def append(self, value: Any) -> None:
        self.list_items.append(value)

    def extend(self, values: Any) -> None:
        self.list_items.extend(values)

    def __repr__(self) -> str:
        return f"<inert {self.qualname}>"


class _SafeCallable:
    """Wraps a stand-in function so a pickle cannot BUILD (set attributes) on it."""

    __slots__ = ("_fn", "_name")

    def __init__(self, name: str, fn: Callable[..., Any]) -> None:
        self._fn = fn
        self._name = name

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        try:
            return self._fn(*args, **kwargs)
        except ConvertError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, OverflowError) as exc:
            raise CorruptInputError(f"bad arguments to {self._name}: {exc}") from None

    def __setstate__(self, state: object) -> None:
        raise UnsafeInputError(f"pickle tries to set state on {self._name}")

    def __reduce__(self) -> NoReturn:  # never re-pickled
        raise TypeError("not picklable")


def _int(value: Any, what: str) -> int:
    if type(value) is not int:
        raise CorruptInputError(f"tensor {what} is {type(value).__name__}, not an integer")
    return value


def _int_tuple(value: Any, what: str) -> tuple[int, ...]:
    if type(value) not in (tuple, list):
        raise CorruptInputError(f"tensor {what} is {type(value).__name__}, not a tuple")
    return tuple(_int(v, what) for v in value)


def _check_hooks(hooks: Any) -> None:
    if hooks not in (None, {}) and not (isinstance(hooks, dict) and not hooks):
        raise UnsafeInputError("checkpoint stores backward hooks on a tensor; refused")


def _record(storage: Any, storage_offset: Any, size: Any, stride: Any, code: str) -> TensorRecord:
    shape = _int_tuple(size, "size")
    strides = _int_tuple(stride, "stride")
    offset = _int(storage_offset, "storage offset")
    if len(shape) != len(strides):
        raise CorruptInputError("tensor size and stride have different lengths")
    if offset < 0 or any(n < 0 for n in shape) or any(s < 0 for s in strides):
        raise CorruptInputError("tensor has a negative offset, size or stride")
    return TensorRecord(storage, offset, shape, strides, code)


def _rebuild_tensor(storage: Any, storage_offset: Any, size: Any, stride: Any) -> TensorRecord:
    """torch <= 0.3 (the Python 2 era): no requires_grad, no hooks."""
    return _rebuild_tensor_v2(storage, storage_offset, size, stride)


def _rebuild_tensor_v2(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any = False,
    backward_hooks: Any = None,
    metadata: Any = None,
) -> TensorRecord:
    _check_hooks(backward_hooks)
    code = getattr(storage, "dtype_code", None)
    if code is None:
        raise CorruptInputError("tensor rebuilt from something that is not a typed storage")
    return _record(storage, storage_offset, size, stride, code)


def _rebuild_tensor_v3(
    storage: Any,
    storage_offset: Any,
    size: Any,
    stride: Any,
    requires_grad: Any,
    backward_hooks: Any,
    dtype: Any,
    metadata: Any = None,
) -> TensorRecord:
    _check_hooks(backward_hooks)
    if not isinstance(dtype, TorchDType):
        raise CorruptInputError("_rebuild_tensor_v3 without a torch dtype")
    return _record(storage, storage_offset, size, stride, dtype.code)


def _rebuild_parameter(data: Any, requires_grad: Any, backward_hooks: Any, state: Any = None) -> TensorRecord:
    _check_hooks(backward_hooks)
    if not isinstance(data, TensorRecord):
        raise CorruptInputError("parameter rebuilt from something that is not a tensor")
    return data


_TENSOR_TYPES = ("torch.Tensor", "torch.nn.parameter.Parameter", "torch.nn.parameter.Buffer")


@dataclass(frozen=True)
class _TypeMarker(_Sealed):
    qualname: str


def _rebuild_from_type_v2(func: Any, new_type: Any, args: Any, state: Any) -> TensorRecord:
    if not isinstance(func, _SafeCallable) or func._name not in _TENSOR_REBUILDERS:
        raise UnsafeInputError("_rebuild_from_type_v2 with a function that is not a tensor rebuild")
    if not isinstance(new_type, _TypeMarker) or new_type.qualname not in _TENSOR_TYPES:
        raise UnsupportedFormatError(
            f"tensor subclass {getattr(new_type, 'qualname', new_type)!r} is not supported "
            "(nothing was imported); save its data as plain tensors (t.as_subclass(torch.Tensor)) to convert it"
        )
    if type(args) is not tuple:
        raise CorruptInputError("_rebuild_from_type_v2 arguments are not a tuple")
    record = func(*args)
    assert isinstance(record, TensorRecord)  # what every tensor rebuild returns
    return record


def _unsupported(what: str) -> Callable[..., Any]:
    def refuse(*_: Any) -> None:
        raise UnsupportedFormatError(f"{what} are not supported (no SafeTensors equivalent)")

    return refuse


def _codecs_encode(text: Any, encoding: Any = "utf-8") -> bytes:
    """Protocol-2 pickles store bytes as `_codecs.encode(str, 'latin1')`."""
    if type(text) is not str or encoding not in ("latin1", "latin-1"):
        raise CorruptInputError("_codecs.encode used for something other than bytes")
    return text.encode("latin1")


@dataclass(frozen=True)
class NumpyDType:
    """Stand-in for `numpy.dtype(...)`; BUILD sets the byte order."""

    name: str
    unit: str | None = None  # a datetime64/timedelta64 unit, e.g. "us", read from the BUILD state

    def __setstate__(self, state: object) -> None:
        # state carries byte order and flags; only little-endian plain dtypes are accepted. A
        # datetime64's ends with (metadata, (unit, num, den, events)): keep the unit as data.
        info = state[-1] if type(state) is tuple and state else None
        if type(info) is tuple and len(info) == 2 and type(info[1]) is tuple and info[1] and type(info[1][0]) is bytes:
            object.__setattr__(self, "unit", info[1][0].decode("ascii", "replace")[:8])

    def resolve(self) -> np.dtype:
        try:
            dt = np.dtype(self.name)
        except (TypeError, ValueError, OverflowError):
            raise CorruptInputError(f"numpy dtype {self.name[:40]!r} is not one numpy knows") from None
        if dt.hasobject or dt.fields:
            raise UnsupportedFormatError(f"numpy dtype {self.name!r} is not plain data")
        return dt


def _numpy_dtype(name: Any, align: Any = False, copy: Any = False) -> NumpyDType:
    if type(name) is not str or not name.isalnum():
        raise CorruptInputError("numpy dtype name is not a plain string")
    return NumpyDType(name)


def _py2_bytes(value: Any) -> Any:
    """A Python 2 pickle's byte string (array or scalar data) arrives as latin-1 text: its bytes again."""
    return value.encode("latin1") if type(value) is str else value


def _numpy_scalar(dt: Any, data: Any = None) -> Any:
    data = _py2_bytes(data)
    if not isinstance(dt, NumpyDType) or type(data) is not bytes:
        raise CorruptInputError("numpy scalar without a plain dtype and bytes")
    npdt = dt.resolve()
    if len(data) != npdt.itemsize:
        raise CorruptInputError("numpy scalar size does not match its dtype")
    return np.frombuffer(data, dtype=npdt)[0].item()


class NumpyArrayRecord(InertObject):
    """`numpy.core.multiarray._reconstruct` + BUILD: rebuilt as a plain-data array when possible."""

    qualname = "numpy.ndarray"

    def holds_objects(self) -> bool:
        """An object array (dtype 'O'): its data is a list of pickled items, not bytes."""
        state = self.state
        return (
            type(state) is tuple
            and len(state) == 5
            and isinstance(state[2], NumpyDType)
            and state[2].name.startswith("O")
            and type(state[4]) is list
        )

    def object_shape(self) -> tuple[int, ...]:
        return _int_tuple(self.state[1], "numpy shape") if self.holds_objects() else ()

    def objects(self) -> list[Any]:
        """An object array's items, in C order; each is whatever the restricted unpickler built."""
        if not self.holds_objects():
            raise CorruptInputError("numpy array is not an array of objects")
        items = self.state[4]
        count = 1
        for n in self.object_shape():
            count *= n
        if count != len(items) or not items:
            raise CorruptInputError("numpy object array's items do not match its shape")
        return list(items)

    def to_array(self) -> np.ndarray:
        state = self.state
        if type(state) is not tuple or len(state) != 5:
            raise CorruptInputError("numpy array state is malformed")
        _, shape, dt, fortran, raw = state
        shape = _int_tuple(shape, "numpy shape")
        if any(n < 0 for n in shape):
            raise CorruptInputError("numpy array has a negative dimension")
        raw = _py2_bytes(raw)
        if not isinstance(dt, NumpyDType):
            raise CorruptInputError(f"numpy array state holds a {type(dt).__name__} where its dtype belongs")
        if type(raw) not in (bytes, bytearray):
            if dt.name.startswith("O"):
                raise UnsupportedFormatError("numpy array of objects is not supported")
            raise CorruptInputError(f"numpy array of dtype {dt.name!r} holds a {type(raw).__name__}, not its bytes")
        npdt = dt.resolve()
        check_shape(shape, npdt.itemsize, "numpy array")
        if math.prod(shape) * npdt.itemsize != len(raw):
            raise CorruptInputError("numpy array data does not match its shape")
        arr = np.frombuffer(bytes(raw), dtype=npdt)
        return arr.reshape(shape, order="F" if fortran else "C")


def _numpy_reconstruct(cls: Any, shape: Any, dtype_code: Any) -> NumpyArrayRecord:
    if not isinstance(cls, _TypeMarker) or cls.qualname != "numpy.ndarray":
        raise UnsafeInputError("numpy _reconstruct of something that is not an ndarray")
    return NumpyArrayRecord()


def _copyreg_reconstructor(cls: Any, base: Any, state: Any) -> Any:
    if isinstance(cls, type) and issubclass(cls, InertObject):
        return cls() if state is None else cls(state)
    raise UnsafeInputError("copyreg._reconstructor of a class that is not allow-listed")


def _bytearray(data: Any = b"", encoding: Any = None) -> bytearray:
    """`bytearray` as pickles build it: from bytes (protocol 3+) or latin-1 text (protocol 2).
    Never from a length: `bytearray(2**33)` would zero-fill 8 GiB for a 40-byte pickle."""
    if type(data) is bytes and encoding is None:
        return bytearray(data)
    if type(data) is str and encoding in ("latin1", "latin-1"):
        return bytearray(data.encode("latin1"))
    raise CorruptInputError("bytearray built from something other than its bytes")


class PickledOrderedDict(OrderedDict[Any, Any]):
    """`collections.OrderedDict` as a pickle builds it. torch's state dicts BUILD it with
    `{"_metadata": ...}`; that state is kept as data in a slot, never in the instance dict, where an
    attribute such as `items` would shadow the method the reader calls next."""

    __slots__ = ("pickle_state",)

    def __setstate__(self, state: Any) -> None:
        if type(state) is not dict or not set(state) <= {"_metadata"}:
            keys = sorted(map(text_of, state))[:5] if isinstance(state, dict) else type(state).__name__
            raise UnsafeInputError(f"pickle tries to set state {keys} on an OrderedDict")
        self.pickle_state = state


@dataclass(frozen=True)
class AttributeReference:
    """What a pickled `getattr(obj, name)` names (a bound method such as a loss's `domain_map`).
    The attribute is never looked up: the record keeps only the owner's class name and the name."""

    owner: str
    name: str

    def __call__(self, *args: Any, **kwargs: Any) -> None:
        # Calling what getattr named is how gadget chains reach code (getattr(f, '__globals__')...):
        # a hostile pickle, refused as such, not a malformed one.
        raise UnsafeInputError(f"pickle calls {self.owner}.{self.name}, found with getattr; refused")


def _attribute_reference(obj: Any, name: Any, *default: Any) -> AttributeReference:
    if type(name) is not str:
        raise CorruptInputError("getattr in a pickle with a name that is not a string")
    if name.startswith("__") and name.endswith("__"):  # __globals__, __builtins__, __init__: the ways out of data
        raise UnsafeInputError(f"refused: the pickle asks for attribute {name[:40]!r} with getattr, which only an attack needs")
    return AttributeReference(obj.qualname if isinstance(obj, InertObject) else type(obj).__name__, name)


def _typed_list(data: Any) -> list[Any]:
    if type(data) is not list:
        raise CorruptInputError("TorchScript typed list built from something that is not a list")
    return data


def _restore_type_tag(value: Any, type_str: Any) -> Any:
    return value  # the tag names a TorchScript type; the value is plain data already


def _torch_size(dims: Any = ()) -> tuple[int, ...]:
    return _int_tuple(dims, "torch.Size")


def _numpy_frombuffer(buf: Any, dt: Any, shape: Any, order: Any = "C") -> NumpyArrayRecord:
    """numpy >= 1.23 pickles a contiguous array with protocol 5 as `_frombuffer(buffer, dtype, shape,
    order)`; with the buffer in the stream it is the array's bytes, rebuilt like `_reconstruct`'s."""
    if type(buf) not in (bytes, bytearray) or not isinstance(dt, NumpyDType) or order not in ("C", "F"):
        raise CorruptInputError("numpy _frombuffer without the array's bytes, a plain dtype and an order")
    record = NumpyArrayRecord()
    record.state = (1, _int_tuple(shape, "numpy shape"), dt, order == "F", bytes(buf))
    return record


_TENSOR_REBUILDERS = (
    "torch._utils._rebuild_tensor",
    "torch._utils._rebuild_tensor_v2",
    "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter",
    "torch._utils._rebuild_parameter_with_state",
)

_CALLABLES: dict[str, Callable[..., Any]] = {
    "torch._utils._rebuild_tensor": _rebuild_tensor,
    "torch._utils._rebuild_tensor_v2": _rebuild_tensor_v2,
    "torch._utils._rebuild_tensor_v3": _rebuild_tensor_v3,
    "torch._utils._rebuild_parameter": _rebuild_parameter,
    "torch._utils._rebuild_parameter_with_state": _rebuild_parameter,
    "torch._tensor._rebuild_from_type_v2": _rebuild_from_type_v2,
    "torch._utils._rebuild_qtensor": _unsupported("quantized tensors"),
    "torch._utils._rebuild_sparse_tensor": _unsupported("sparse tensors"),
    "torch.serialization._get_layout": _unsupported("sparse tensors"),  # only non-strided layouts are pickled
    "torch._utils._rebuild_wrapper_subclass": _unsupported("tensor subclasses"),
    "torch._utils._rebuild_meta_tensor_no_storage": _unsupported("meta tensors (no data)"),
    "torch.Size": _torch_size,
    "collections.OrderedDict": PickledOrderedDict,
    "builtins.set": set,
    "builtins.frozenset": frozenset,
    "builtins.bytearray": _bytearray,
    "builtins.complex": complex,
    "__builtin__.set": set,
    "_codecs.encode": _codecs_encode,
    "builtins.getattr": _attribute_reference,
    "__builtin__.getattr": _attribute_reference,
    "copyreg._reconstructor": _copyreg_reconstructor,
    # TorchScript's typed containers (torch/jit/_pickle.py): each returns the list or value it is given
    "torch.jit._pickle.build_intlist": _typed_list,
    "torch.jit._pickle.build_doublelist": _typed_list,
    "torch.jit._pickle.build_boollist": _typed_list,
    "torch.jit._pickle.build_tensorlist": _typed_list,
    "torch.jit._pickle.build_complexlist": _typed_list,
    "torch.jit._pickle.restore_type_tag": _restore_type_tag,
    "numpy.dtype": _numpy_dtype,
    "numpy.core.multiarray.scalar": _numpy_scalar,
    "numpy._core.multiarray.scalar": _numpy_scalar,
    "numpy.core.multiarray._reconstruct": _numpy_reconstruct,
    "numpy._core.multiarray._reconstruct": _numpy_reconstruct,
    "numpy.core.numeric._frombuffer": _numpy_frombuffer,
    "numpy._core.numeric._frombuffer": _numpy_frombuffer,
}

_TYPE_MARKERS = {
    "torch.Tensor",
    "torch.nn.parameter.Parameter",
    "torch.nn.parameter.Buffer",
    "numpy.ndarray",
    "builtins.object",
    "__builtin__.object",
}

# Known non-tensor classes met in real checkpoints. They become InertObject records even for readers
# that take no unknown class (records=False).
DEFAULT_INERT: tuple[str, ...] = (
    "pytorch_lightning.utilities.parsing.AttributeDict",
    "lightning.pytorch.utilities.parsing.AttributeDict",
    "lightning.fabric.utilities.data.AttributeDict",
    "lightning_fabric.utilities.data.AttributeDict",
    "argparse.Namespace",
    "torch.nn.modules.loss.",
    "neuralforecast.losses.pytorch.",
    "pathlib.PosixPath",
    "pathlib.WindowsPath",
    "torch.device",
    "torch.distributions.",  # a loss's distribution class, kept by reference (NeuralForecast DistributionLoss)
    "functools.partial",  # a loss's domain map with fixed arguments
    "torch.optim.",  # an optimizer class named in hyper-parameters (kept by reference, never built)
)


class RestrictedUnpickler(pickle.Unpickler):
    """Unpickler whose globals come only from the stand-ins above."""

    def __init__(
        self,
        file: BinaryIO,
        persistent_load: Callable[[Any], Any] | None = None,
        inert: tuple[str, ...] = DEFAULT_INERT,
        records: bool = False,
    ) -> None:
        # latin-1 as torch.load(encoding="latin1"): Python 2 pickles store str keys as byte strings
        super().__init__(file, encoding="latin1")
        self._persistent = persistent_load
        self._inert = inert
        self._records = records
        self._inert_classes: dict[str, type[InertObject]] = {}
        self.named: set[str] = set()  # every class or function kept as a record

    def find_class(self, module: str, name: str) -> Any:
        qualname = f"{module}.{name}"
        if denied(module, name):
            raise UnsafeInputError(denied_message(qualname))
        if qualname in _CALLABLES:
            return _SafeCallable(qualname, _CALLABLES[qualname])
        if module in ("torch", "torch.cuda") and name in TORCH_STORAGE_TYPES:
            return StorageType(TORCH_STORAGE_TYPES[name])  # a CUDA storage's bytes are read as CPU data
        if qualname in ("torch.UntypedStorage", "torch.storage.UntypedStorage"):
            return StorageType(None)
        if module == "torch" and name in TORCH_DTYPES:
            return TorchDType(TORCH_DTYPES[name])
        if qualname in _TYPE_MARKERS:
            return _TypeMarker(qualname)
        if not all(part.isidentifier() for part in qualname.split(".")):
            raise UnsafeInputError(f"refused: the pickle names global '{qualname[:200]}', which no Python module or class can be")
        if self._records or any(qualname == p or (p.endswith(".") and qualname.startswith(p)) for p in self._inert):
            return self._inert_class(qualname)
        raise UnsafeInputError(
            f"refused: the pickle names class '{qualname}', which this file type never holds (nothing was imported); "
            "if the file is yours, save its tensors as a state dict or as plain arrays"
        )

    def _inert_class(self, qualname: str) -> type[InertObject]:
        self.named.add(qualname)
        cls = self._inert_classes.get(qualname)
        if cls is None:
            cls = type("Inert", (InertObject,), {"qualname": qualname})
            self._inert_classes[qualname] = cls
        return cls

    def persistent_load(self, pid: Any) -> Any:
        if self._persistent is None:
            raise UnsafeInputError("pickle refers to external data, which this file type cannot hold")
        return self._persistent(pid)


def denied_message(qualname: str) -> str:
    return (
        f"refused: the pickle names '{qualname[:200]}', a global only an attack needs "
        "(nothing was imported or run; a weight file has no reason to hold it)"
    )


def classes_fact(named: set[str]) -> dict[str, Any]:
    """The manifest's record of the classes a pickle named (`source.details.pickled_classes`)."""
    return {
        "names": sorted(named)[:500],
        "imported": "none imported, called or asked for an attribute: each kept as a record of its name, arguments and state",
    }


def restricted_load(
    data: bytes | BinaryIO,
    persistent_load: Callable[[Any], Any] | None = None,
    inert: tuple[str, ...] = DEFAULT_INERT,
    what: str = "pickle",
    records: bool = False,
    named: set[str] | None = None,
) -> Any:
    """Unpickle `data` with the restricted unpickler; any failure becomes a ConvertError. `records`:
    every global without a stand-in becomes an inert record (else only those in `inert` do); the
    qualified names kept as records are added to `named`. A pickle that fails as malformed but
    names a refused global anywhere is refused as unsafe: a gadget behind a deliberate error is
    still an attack (exit 5), not a damaged file (6)."""
    stream = io.BytesIO(data) if isinstance(data, (bytes, bytearray, memoryview)) else data
    start = stream.tell()
    try:
        _prescan(stream, what, data if type(data) is bytes else None)
        unpickler = RestrictedUnpickler(stream, persistent_load, inert, records)
        obj = unpickler.load()
    except Exception as exc:  # pickle raises many types for malformed input
        if isinstance(exc, ConvertError) and not isinstance(exc, CorruptInputError):
            raise  # a refusal that already says why (unsafe, unsupported)
        error = exc if isinstance(exc, ConvertError) else _load_error(exc, what)
        stream.seek(start)
        raise _refused_global(stream, inert, records) or error from None
    if named is not None:
        named |= unpickler.named
    return obj


def _load_error(exc: Exception, what: str) -> ConvertError:
    if isinstance(exc, RecursionError):
        return CorruptInputError(f"{what} is nested too deeply")
    if isinstance(exc, MemoryError):
        return CorruptInputError(f"{what} asks for more memory than it can hold")
    if isinstance(exc, EOFError):
        return CorruptInputError(f"{what} is truncated")
    return CorruptInputError(f"{what} is malformed: {type(exc).__name__}: {exc}")


def _refused_global(stream: BinaryIO, inert: tuple[str, ...], records: bool) -> UnsafeInputError | None:
    """The refusal of the first refused global the pickle names, read from its opcodes alone (up to
    where they stop making sense); None when it names none."""
    probe = RestrictedUnpickler(io.BytesIO(b""), None, inert, records)
    strings: list[str] = []
    try:
        for op, arg, _pos in pickletools.genops(stream):
            if op.name in ("GLOBAL", "INST") and isinstance(arg, str) and " " in arg:
                module, name = arg.split(" ", 1)
            elif op.name == "STACK_GLOBAL" and len(strings) == 2:
                module, name = strings
            else:
                if isinstance(arg, str):
                    strings = [*strings[-1:], arg]
                continue
            try:
                probe.find_class(module, name)
            except UnsafeInputError as exc:
                return exc
    except Exception:  # the opcodes stop making sense here: nothing past this point could run
        pass
    return None


def _prescan(stream: BinaryIO, what: str, data: bytes | None = None) -> None:
    """Check a pickle's opcodes before the C unpickler builds anything from them. `data`: the pickle's
    bytes, when they are in memory: walked first by `pickle_scan.clean`, a faster walk of the same
    checks that hands everything it cannot pass (every refusal among them) to the walk below.

    Every global the opcodes name is checked against the deny list first (GLOBAL and INST by their
    argument, STACK_GLOBAL by the strings the simulated stack holds), so an attack is refused naming
    its global even when harmless records or a deliberate error come before it. A protocol-5 pickle
    whose buffers were written out of band is refused here too: the buffers are not in the file.

    Two things the C unpickler cannot be trusted with are refused here: a memo index beyond the
    entries made so far (it sizes its memo array by the largest index: one forged LONG_BINPUT of
    ~2**31 zero-fills gigabytes), and containers nested past MAX_NESTING (hashing such a tuple as a
    dict key or set member recurses in C until the process dies). The stack is simulated with the
    nesting depth of each object; nothing is built, and the stream is left where it was. A pickle
    whose opcodes cannot even be read (a length past its end, an unknown opcode) is refused too:
    the C unpickler would allocate what a BYTEARRAY8 length says before finding out.
    """
    if data is not None and clean(data):
        return
    start = stream.tell()
    depths: list[int] = []  # nesting depth of every object made, by creation order
    stack: list[int] = []  # the objects on the unpickler's stack, as indices into depths
    marks: list[int] = []  # stack lengths at each MARK
    memo: dict[object, int] = {}  # keyed by a PUT's int index, looked up by whatever a GET carries
    strings: dict[int, str] = {}  # the text of the objects made by string opcodes
    made = 0
    try:
        ops = pickletools.genops(stream)
        while True:
            try:
                op, arg, _pos = next(ops)
            except StopIteration:
                break
            except ValueError as exc:
                raise CorruptInputError(f"{what} is malformed: {exc}") from None
            name = op.name
            if name in ("PUT", "BINPUT", "LONG_BINPUT", "MEMOIZE"):
                index = made if name == "MEMOIZE" else arg
                # Python 2's cPickle numbers its entries from 1: one ahead is allowed
                if type(index) is not int or not 0 <= index <= made + (name != "MEMOIZE"):
                    raise CorruptInputError(f"{what} stores memo entry {index} after making only {made}")
                made += 1
                memo[index] = stack[-1]
            elif name in ("GET", "BINGET", "LONG_BINGET"):
                stack.append(memo[arg])
            elif name == "MARK":
                marks.append(len(stack))
            elif name == "DUP":
                stack.append(stack[-1])
            elif name == "POP" and marks and marks[-1] == len(stack):
                marks.pop()
            else:
                _check_global(name, arg, stack, strings)
                try:
                    simulate(EFFECTS[name], stack, marks, depths)
                except NestedTooDeeply:
                    raise CorruptInputError(f"{what} nests containers more than {MAX_NESTING} deep") from None
                if type(arg) is str and name in STRING_OPS:
                    strings[stack[-1]] = arg
    except ConvertError:
        raise
    except (IndexError, KeyError):  # a malformed stack: the unpickler below reports it
        pass
    finally:
        stream.seek(start)


def _check_global(name: str, arg: Any, stack: list[int], strings: dict[int, str]) -> None:
    """Refuse a global on the deny list, and out-of-band buffers, before anything is built."""
    if name in ("GLOBAL", "INST") and type(arg) is str:
        module, _, attr = arg.partition(" ")
    elif name == "STACK_GLOBAL" and len(stack) >= 2:
        module, attr = strings.get(stack[-2], ""), strings.get(stack[-1], "")
    elif name == "NEXT_BUFFER":
        raise UnsupportedFormatError(
            "the pickle's buffers were written out of band (protocol 5 with a buffer_callback) and are not in the "
            "file; pickle the arrays with the buffers in band (no buffer_callback) or save them with numpy.savez"
        )
    else:
        return
    if module and attr and denied(module, attr):
        raise UnsafeInputError(denied_message(f"{module}.{attr}"))


def storage_dtype(storage_type: Any) -> str | None:
    if not isinstance(storage_type, StorageType):
        raise UnsafeInputError("storage reference names something that is not a storage type")
    if storage_type.code is not None:
        lookup_dtype(storage_type.code)
    return storage_type.code


_MAX_DEPTH = 32
_MAX_ITEMS = 1000
_MAX_NODES = 100_000  # a pickle can share one container under many keys: [L, L] nested 64 deep


def text_of(value: Any) -> str:
    """`str(value)`, or a placeholder where Python refuses (ints past its 4300-digit limit)."""
    try:
        return str(value)
    except ValueError:  # an int past Python's 4300-digit conversion limit, alone or inside a tuple
        return "<unprintable>"


def _omegaconf_container(obj: InertObject) -> Any:
    """A DictConfig's or ListConfig's content: its keys or items, each node by its value."""
    content = obj.state.get("_content") if isinstance(obj.state, dict) else None
    if isinstance(content, dict):
        return {k: _omegaconf_value(v) for k, v in content.items()}
    if isinstance(content, list):
        return [_omegaconf_value(v) for v in content]
    return content  # None, a missing value ("???") or an interpolation string


def _omegaconf_value(node: Any) -> Any:
    if isinstance(node, InertObject) and node.qualname.startswith("omegaconf.nodes.") and isinstance(node.state, dict):
        return node.state.get("_val")
    return node


def _frozen_dict(obj: InertObject) -> Any:
    return obj.args[0] if len(obj.args) == 1 else obj.state.get("_dict") if isinstance(obj.state, dict) else obj.state


# Records whose plain data is not their state as pickled: the value they stand for, rendered instead
# (read as data; nothing of these packages is imported).
PLAIN_RECORDS: dict[str, Callable[[InertObject], Any]] = {
    "omegaconf.dictconfig.DictConfig": _omegaconf_container,
    "omegaconf.listconfig.ListConfig": _omegaconf_container,
    "flax.core.frozen_dict.FrozenDict": _frozen_dict,
}


def plain_value(obj: Any) -> Any:
    """What a record stands for as data (a DictConfig's dict, a FrozenDict's dict); anything else as is."""
    if isinstance(obj, InertObject) and obj.qualname in PLAIN_RECORDS:
        return PLAIN_RECORDS[obj.qualname](obj)
    return obj


def record_parts(obj: InertObject) -> list[tuple[str, Any]]:
    """A record's parts by the names its tensors take below it: the entries of the value it stands for
    (PLAIN_RECORDS), else its state's attributes (a non-dict state as `state`), the items and list
    items a pickle set on it, then its call arguments as `args.N` and `kwargs.NAME`."""
    plain = plain_value(obj)
    if plain is not obj:
        if isinstance(plain, dict):
            return [(text_of(k), v) for k, v in plain.items()]
        return [(str(i), v) for i, v in enumerate(plain)] if isinstance(plain, (list, tuple)) else [("value", plain)]
    parts: list[tuple[str, Any]] = []
    if isinstance(obj.state, dict):
        parts += [(text_of(k), v) for k, v in obj.state.items()]
    elif obj.state is not None:
        parts.append(("state", obj.state))
    parts += [(text_of(k), v) for k, v in obj.items.items()]
    parts += [(str(i), v) for i, v in enumerate(obj.list_items)]
    parts += [(f"args.{i}", v) for i, v in enumerate(obj.args)]
    parts += [(f"kwargs.{text_of(k)}", v) for k, v in obj.kwargs.items()]
    return parts


def jsonable(obj: Any, depth: int = 0, budget: list[int] | None = None) -> Any:
    """A JSON-ready rendering of unpickled data for the manifest, bounded in depth, in length and in
    total size (containers shared through the pickle memo would otherwise grow it exponentially).
    Records render as their class and parts, or as the plain data they stand for (PLAIN_RECORDS);
    a class or function the pickle names without calling it renders as {"__global__": name}."""
    budget = [_MAX_NODES] if budget is None else budget
    budget[0] -= 1
    if depth > _MAX_DEPTH:
        return "<nested too deeply>"
    if budget[0] < 0:
        return "<truncated>"
    if isinstance(obj, type) and issubclass(obj, InertObject):
        return {"__global__": obj.qualname}
    if isinstance(obj, InertObject) and obj.qualname in PLAIN_RECORDS:
        return jsonable(plain_value(obj), depth + 1, budget)
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, int):
        return obj if abs(obj) < 2**63 else text_of(obj) if obj.bit_length() < 1024 else f"<{obj.bit_length()}-bit integer>"
    if isinstance(obj, float):
        return obj if obj == obj and obj not in (float("inf"), float("-inf")) else str(obj)
    if isinstance(obj, (bytes, bytearray)):
        return {"__bytes__": len(obj)}
    if isinstance(obj, TensorRecord):
        return {"__tensor__": {"dtype": obj.dtype_code, "shape": list(obj.shape)}}
    if isinstance(obj, TorchDType):
        return {"__dtype__": obj.code}
    if isinstance(obj, NumpyArrayRecord):
        try:
            arr = obj.to_array()
        except ConvertError:
            return {"__class__": "numpy.ndarray", "readable": False}
        if arr.size > _MAX_ITEMS:
            return {"__ndarray__": {"dtype": str(arr.dtype), "shape": list(arr.shape)}}
        return jsonable(arr.tolist(), depth + 1, budget)  # NaN and inf become text, as for floats
    if isinstance(obj, InertObject):
        rec: dict[str, Any] = {"__class__": obj.qualname}
        for attr in ("args", "kwargs", "state", "items", "list_items"):
            value = getattr(obj, attr)
            if value:
                rec[attr] = jsonable(value, depth + 1, budget)
        return rec
    if isinstance(obj, dict):
        return {text_of(k): jsonable(v, depth + 1, budget) for k, v in list(obj.items())[:_MAX_ITEMS]}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [jsonable(v, depth + 1, budget) for v in list(obj)[:_MAX_ITEMS]]
    if isinstance(obj, complex):
        return [jsonable(obj.real, depth + 1, budget), jsonable(obj.imag, depth + 1, budget)]
    return f"<{type(obj).__name__}>"
