"""Plain JSON values from what NeuralForecast stores beside the weights, without NeuralForecast.

Two encodings reach this module: the tagged JSON of the 3.3+ format (`{"__nf__": tag, ...}`, with
arrays pointing into a SafeTensors payload) and the inert records the restricted unpickler makes of
the older pickles.  Both become the same plain values, so the rest of the exporter never knows
which generation it reads: a loss is `{"class", "args", "state"}` (3.3+) or `{"class", "attributes"}`
(pickled; nf_losses recovers its arguments), datetimes are ISO strings, a pandas index or series is
its list of values.  Anything that cannot be read safely becomes a
`{"__skipped__": why}` marker the caller reports.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np

from convert.errors import ConvertError, CorruptInputError, UnsupportedFormatError
from convert.pickle_reader import DEFAULT_INERT, InertObject, NumpyArrayRecord, TensorRecord, jsonable

TAG = "__nf__"
MAX_INLINE = 100_000  # elements: larger arrays (the training `ds`) are described, not copied
MAX_ITEMSIZE = 1024  # bytes of one element of an inline array (a string of 256 characters)
ArrayLookup = Callable[[str], np.ndarray]


def skipped(why: str) -> dict[str, str]:
    return {"__skipped__": why}


def is_skipped(value: Any) -> bool:
    return isinstance(value, dict) and "__skipped__" in value


def array_value(arr: np.ndarray) -> Any:
    """A small array as nested lists; a large one as its dtype and shape."""
    if arr.size > MAX_INLINE:
        return {"__array__": {"dtype": str(arr.dtype), "shape": list(arr.shape)}}
    if arr.dtype.kind == "M":
        return [str(v) for v in arr.reshape(-1)] if arr.ndim else str(arr)
    return arr.tolist()


def datetimes(raw: np.ndarray, unit: str, tz: str | None = None) -> Any:
    """int64 ticks since the epoch (UTC when `tz` is set) as ISO strings."""
    if unit not in ("s", "ms", "us", "ns", "D"):
        return skipped(f"datetime unit {unit!r}")
    values = array_value(np.asarray(raw, dtype="<i8").astype(f"datetime64[{unit}]"))
    return {"values": values, "tz": tz} if tz else values


# --- 3.3+ tagged JSON ---------------------------------------------------------------------------


def decode_tagged(value: Any, arrays: ArrayLookup) -> Any:
    """The plain value of one tagged-JSON value; `arrays` reads a payload tensor by key."""
    if isinstance(value, list):
        return [decode_tagged(v, arrays) for v in value]
    if not isinstance(value, dict):
        return value
    if TAG not in value:
        return {k: decode_tagged(v, arrays) for k, v in value.items()}
    tag = value[TAG]
    if not isinstance(tag, str):
        raise CorruptInputError(f"NeuralForecast value tag {str(tag)[:100]} is not a name")
    decoder = _TAGS.get(tag)
    if decoder is None:
        raise UnsupportedFormatError(f"unknown NeuralForecast value tag {tag[:100]!r}")
    try:
        return decoder(value, arrays)
    except ConvertError:
        raise
    except (KeyError, TypeError, ValueError, OverflowError) as exc:
        why = f"{type(exc).__name__}: {exc}"[:1000]
        raise CorruptInputError(f"NeuralForecast value tagged {tag!r} is malformed ({why})") from None


def _loss(v: dict[str, Any], arrays: ArrayLookup) -> dict[str, Any]:
    return {
        "class": str(v["cls"]),
        "args": decode_tagged(v.get("args", {}), arrays),
        "state": decode_tagged(v.get("state", {}), arrays),
    }


def _tensor(v: dict[str, Any], arrays: ArrayLookup) -> Any:
    return array_value(arrays(str(v["key"])))


def _array(v: dict[str, Any], arrays: ArrayLookup) -> Any:
    values, dt, shape = v["values"], inline_dtype(v["dtype"]), v["shape"]
    if not isinstance(shape, list) or not all(type(n) is int and 0 <= n <= MAX_INLINE for n in shape):
        raise CorruptInputError(f"NeuralForecast array shape {str(shape)[:100]} is not a list of sizes")
    if len(values) > MAX_INLINE or math.prod(shape) > MAX_INLINE:
        return {"__array__": {"dtype": str(dt), "shape": shape}}
    return np.asarray(values, dtype=dt).reshape(shape).tolist()


def inline_dtype(name: Any) -> np.dtype:
    """The dtype of an array stored as JSON values: numbers, booleans and short strings, what JSON holds
    back. A 1 KB config naming `|V1000000000` or `<U500000000` had numpy allocate a GiB per element."""
    dt = np.dtype(str(name))
    if dt.kind not in "biufU" or dt.fields is not None or dt.subdtype is not None or dt.itemsize > MAX_ITEMSIZE:
        raise CorruptInputError(
            f"NeuralForecast array dtype {str(name)[:100]!r} is not a number, boolean or "
            f"string type of at most {MAX_ITEMSIZE} bytes"
        )
    return dt


def _datetime64(v: dict[str, Any], arrays: ArrayLookup) -> Any:
    if "values" in v:
        raw = np.asarray(v["values"], dtype="<i8")
    else:
        raw = arrays(str(v["data"]["key"]))
    return datetimes(raw, str(v["unit"]), v.get("tz"))


def _series(v: dict[str, Any], arrays: ArrayLookup) -> Any:
    return decode_tagged(v["data"], arrays)


def _frame(v: dict[str, Any], arrays: ArrayLookup) -> dict[str, Any]:
    return {str(name): decode_tagged(data, arrays) for name, data in v["columns"]}


def _mapping(v: dict[str, Any], arrays: ArrayLookup) -> list[list[Any]]:
    return [[decode_tagged(k, arrays), decode_tagged(x, arrays)] for k, x in v["items"]]


def _scaler(v: dict[str, Any], arrays: ArrayLookup) -> dict[str, Any]:
    stats = v.get("stats_")
    return {"type": v["type"], "stats": None if stats is None else decode_tagged(stats, arrays)}


_TAGS: dict[str, Callable[[dict[str, Any], ArrayLookup], Any]] = {
    "loss": _loss,
    "tensor": _tensor,
    "array": _array,
    "datetime64": _datetime64,
    "index": lambda v, _: v["values"],
    "series": _series,
    "dataframe": _frame,
    "mapping": _mapping,
    "scaler": _scaler,
    "torch_cls": lambda v, _: {"class": f"torch.{'optim' if v['kind'] == 'optimizer' else 'optim.lr_scheduler'}.{v['name']}"},
    "prediction_intervals": lambda v, _: {k: v[k] for k in ("n_windows", "method", "step_size")},
}


# --- pickles (1.7.1 to 3.2) -----------------------------------------------------------------------


def plain_pickled(obj: Any, depth: int = 0) -> Any:
    """The plain value of something the restricted unpickler made from a NeuralForecast pickle."""
    if depth > 32:
        return skipped("nested too deeply")
    if isinstance(obj, dict):
        return {str(k): plain_pickled(v, depth + 1) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [plain_pickled(v, depth + 1) for v in obj]
    if isinstance(obj, NumpyArrayRecord):
        return numpy_value(obj)
    if isinstance(obj, InertObject):
        reader = _INERT_READERS.get(obj.qualname)
        if reader is not None:
            return reader(obj, depth)
        return skipped(f"{obj.qualname} object")
    if isinstance(obj, TensorRecord):
        return skipped("tensor outside the state dict")
    return jsonable(obj)


def numpy_value(rec: NumpyArrayRecord) -> Any:
    """A pickled ndarray: plain data, datetimes as ISO strings, strings and numbers of object arrays."""
    state = rec.state
    if type(state) is tuple and len(state) == 5 and isinstance(state[4], list):
        items = state[4]  # an object array pickles its elements, not bytes
        if all(v is None or isinstance(v, (str, int, float, bool)) for v in items):
            return items if len(items) <= MAX_INLINE else {"__array__": {"dtype": "object", "shape": [len(items)]}}
        return skipped("numpy object array of non-plain values")
    unit = _datetime_unit(state)
    if unit is not None:
        raw = bytes(state[4])
        return datetimes(np.frombuffer(raw, dtype="<i8"), unit) if len(raw) % 8 == 0 else skipped("truncated datetimes")
    try:
        return array_value(rec.to_array())
    except ConvertError as exc:
        return skipped(f"numpy array ({exc})")


def _datetime_unit(state: Any) -> str | None:
    """The unit of a pickled datetime64 array (its dtype's BUILD state carries it)."""
    if type(state) is not tuple or len(state) != 5 or type(state[4]) not in (bytes, bytearray):
        return None
    dt = state[2]
    return getattr(dt, "unit", None) if str(getattr(dt, "name", "")).startswith("M8") else None


def plain_checkpoint(value: Any) -> Any:
    """Plain hyper-parameters from a checkpoint's pickle as exporters.pytorch.reader renders it (`jsonable`):
    Lightning's AttributeDict becomes its items, a loss module its class and kept attributes."""
    if isinstance(value, list):
        return [plain_checkpoint(v) for v in value]
    if not isinstance(value, dict):
        return value
    if "__tensor__" in value:
        return skipped(f"tensor {value['__tensor__']} outside the state dict")
    qualname = value.get("__class__")
    if qualname is None:
        return {k: plain_checkpoint(v) for k, v in value.items()}
    if qualname.endswith(".AttributeDict"):
        return plain_checkpoint(value.get("items", {}))
    if qualname.startswith("neuralforecast.losses.pytorch."):
        return pickled_loss(qualname, value.get("state"))
    return skipped(f"{qualname} object")


def pickled_loss(qualname: str, state: Any) -> dict[str, Any]:
    """A pickled loss module: its class and the attributes its __init__ kept (the module __dict__)."""
    attrs: dict[str, Any] = {}
    for key, value in (state if isinstance(state, dict) else {}).items():
        if key in ("_parameters", "_buffers"):
            attrs.update({str(k): plain_checkpoint(v) for k, v in (value or {}).items()})
        elif not key.startswith("_") and key != "training":
            attrs[key] = plain_checkpoint(value)
    return {"class": qualname.rsplit(".", 1)[-1], "attributes": attrs}


def _new_index(obj: InertObject, depth: int) -> Any:
    """pandas `_new_Index(cls, {"data": ..., "name": ...})` and `_new_DatetimeIndex` alike."""
    if len(obj.args) != 2 or not isinstance(obj.args[1], dict):
        return skipped(f"{obj.qualname} with unexpected arguments")
    return plain_pickled(obj.args[1].get("data"), depth + 1)


def _ndarray_backed(obj: InertObject, depth: int) -> Any:
    """pandas extension arrays (DatetimeArray) pickle as (class, checksum, None) + BUILD (dtype, ndarray, attrs)."""
    state = obj.state if isinstance(obj.state, tuple) else (obj.args[2] if len(obj.args) == 3 else None)
    arrays = [item for item in state if isinstance(item, NumpyArrayRecord)] if isinstance(state, tuple) else []
    if len(arrays) == 1:
        return numpy_value(arrays[0])
    return skipped(f"{obj.qualname} with unexpected arguments")


def _pickled_series(obj: InertObject, depth: int) -> Any:
    """A pandas Series: the values of its manager's one block (BUILD state `_mgr`)."""
    manager = obj.state.get("_mgr") if isinstance(obj.state, dict) else None
    state = manager.state if isinstance(manager, InertObject) else None
    if isinstance(state, tuple) and len(state) >= 2 and isinstance(state[1], list) and len(state[1]) == 1:
        return plain_pickled(state[1][0], depth + 1)
    return skipped("pandas Series whose block layout is not one plain array")


def _pickled_scaler(obj: InertObject, depth: int) -> dict[str, Any]:
    state = obj.state if isinstance(obj.state, dict) else {}
    stats = state.get("stats_")
    return {
        "type": obj.qualname.rsplit(".", 1)[-1],
        "settings": {str(k): plain_pickled(v, depth + 1) for k, v in state.items() if k != "stats_"},
        "stats": None if stats is None else plain_pickled(stats, depth + 1),
    }


_INERT_READERS: dict[str, Callable[[InertObject, int], Any]] = {
    "pandas.Series": _pickled_series,
    "pandas.core.series.Series": _pickled_series,
    "pandas.core.indexes.base._new_Index": _new_index,
    "pandas.core.indexes.datetimes._new_DatetimeIndex": _new_index,
    "pandas._libs.arrays.__pyx_unpickle_NDArrayBacked": _ndarray_backed,
    "coreforecast.scalers.LocalStandardScaler": _pickled_scaler,
    "coreforecast.scalers.LocalMinMaxScaler": _pickled_scaler,
    "coreforecast.scalers.LocalRobustScaler": _pickled_scaler,
    "coreforecast.scalers.LocalBoxCoxScaler": _pickled_scaler,
    "neuralforecast.utils.PredictionIntervals": lambda obj, depth: plain_pickled(obj.state, depth + 1),
}

# Globals a configuration.pkl may name, beyond the defaults: each becomes an inert record that the
# readers above turn into plain values; nothing of pandas, coreforecast or NeuralForecast is imported.
NF_SIDECAR_INERT: tuple[str, ...] = (
    DEFAULT_INERT
    + tuple(_INERT_READERS)
    + (
        "pandas.core.internals.managers.SingleBlockManager",
        "pandas.RangeIndex",
        "pandas.core.indexes.range.RangeIndex",
        "pandas.Index",
        "pandas.core.indexes.base.Index",
        "pandas.DatetimeIndex",
        "pandas.core.indexes.datetimes.DatetimeIndex",
        "pandas.arrays.DatetimeArray",
        "pandas.core.arrays.datetimes.DatetimeArray",
        "builtins.slice",
    )
)
