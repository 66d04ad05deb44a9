"""ONNX models as a source: their initializers become tensors, their graph the architecture summary.

Initializers stored inline are decoded from the parsed protobuf; initializers in external data files
stay in those files and are read lazily through memory maps, after checking that each location is a
file inside the model's folder and that each offset and length lies inside it.  Names the PyTorch
exporters invented are traced back to parameter names by `exporters.onnx.names`.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np

from convert.dtypes import DType, dtype as lookup_dtype
from convert.errors import CorruptInputError, SourceNotFoundError, UnsafeInputError, UnsupportedFormatError
from convert.source import SourceModel
from convert.tensors import MappedFile, TensorRef, check_shape, mapped_tensor
from exporters.onnx.names import Resolved, count_tensor_protos, graph_tensors, resolve_names
from exporters.onnx.quantized import apply, quantized_weights

# onnx.TensorProto.DataType names -> SafeTensors codes (strings, INT4, FNUZ floats etc. have none).
ONNX_DTYPES: dict[str, str] = {
    "FLOAT": "F32",
    "DOUBLE": "F64",
    "FLOAT16": "F16",
    "BFLOAT16": "BF16",
    "FLOAT8E4M3FN": "F8_E4M3",
    "FLOAT8E5M2": "F8_E5M2",
    "FLOAT8E8M0": "F8_E8M0",
    "INT64": "I64",
    "INT32": "I32",
    "INT16": "I16",
    "INT8": "I8",
    "UINT64": "U64",
    "UINT32": "U32",
    "UINT16": "U16",
    "UINT8": "U8",
    "BOOL": "BOOL",
    "COMPLEX64": "C64",
}


def open_onnx(path: str | Path, quantized: str = "dequantize") -> SourceModel:
    """Read an ONNX model file (and its external data files) without running it; int8 weights
    dequantized to float32 or kept with their scales and zero points (`quantized`, see
    exporters.onnx.quantized)."""
    import onnx
    from google.protobuf.message import DecodeError

    model_path = Path(path)
    if not model_path.is_file():
        raise SourceNotFoundError(f"no such file: {model_path}")
    try:
        model = onnx.load(str(model_path), load_external_data=False)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise CorruptInputError(f"{model_path.name}: not a readable ONNX model ({exc})") from None
    if model.graph.sparse_initializer:
        raise UnsupportedFormatError(f"{model_path.name}: sparse initializers are not supported")
    _check_names(model, model_path.name)
    try:
        held = graph_tensors(model.graph)
        expected = count_tensor_protos(model)
    except (ValueError, RecursionError) as exc:
        raise CorruptInputError(f"{model_path.name}: {exc}") from None
    if expected != len(model.graph.initializer) + len(held):
        raise UnsupportedFormatError(
            f"{model_path.name}: the model holds {expected} tensors but only "
            f"{len(model.graph.initializer) + len(held)} are in places this reader knows "
            "(initializers, node attributes, subgraphs)"
        )
    _refuse_duplicates(model_path.name, [i.name for i in model.graph.initializer] + [n for n, _ in held])
    with ExitStack() as opened:  # the external data files are closed here if a tensor is refused
        reader = _Initializers(model_path)
        opened.callback(reader.close)
        renamed = resolve_names(model)
        tensors = [reader.ref(init, renamed.get(init.name)) for init in model.graph.initializer]
        quantization: dict[str, Any] = {}
        found = quantized_weights(model.graph, *_integer_initializers(model.graph))
        if found:
            refs = {init.name: ref for init, ref in zip(model.graph.initializer, tensors, strict=True)}
            tensors, quantization = apply(refs, found, quantized, model.graph)
        tensors += [reader.ref(proto, None, name) for name, proto in held]
        opened.pop_all()
    extras: dict[str, Any] = {
        "producer": _producer(model),
        "opset": _opsets(model),
        "tensors_in_graph": {"initializers": len(model.graph.initializer), "in_nodes_and_subgraphs": len(held)},
    }
    if quantization:
        extras["quantization"] = quantization
    if renamed:
        extras["renamed"] = {
            old: {"name": r.name, "transform": "transpose" if r.transpose else None, "evidence": r.evidence}
            for old, r in renamed.items()
        }
    return SourceModel(
        format="onnx",
        files=[model_path, *reader.external_files()],
        tensors=tensors,
        extras=extras,
        architecture=summarize(model),
        closers=[reader.close],
    )


def _integer_initializers(graph: Any) -> tuple[set[str], set[str]]:
    """(the integer initializers a DequantizeLinear or integer op may scale, every initializer)."""
    import onnx

    kinds = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8, onnx.TensorProto.INT32}
    return {t.name for t in graph.initializer if t.data_type in kinds}, {t.name for t in graph.initializer}


MAX_LOCATION = 1024  # characters of an external data location: a relative path, well under PATH_MAX


def _check_names(model: Any, model_name: str) -> None:
    """Every name the reader uses is text: protobuf hands back bytes for a name that is not UTF-8."""
    graph = model.graph
    names = [
        *(i.name for i in graph.initializer),
        *(v.name for v in (*graph.input, *graph.output)),
        *(n for node in graph.node for n in (*node.input, *node.output, node.name, node.op_type)),
        *(e.key for i in graph.initializer for e in i.external_data),
        *(e.value for i in graph.initializer for e in i.external_data),
        *(p.key for p in model.metadata_props),
        *(p.value for p in model.metadata_props),
    ]
    bad = next((n for n in names if not isinstance(n, str)), None)
    if bad is not None:
        raise CorruptInputError(f"{model_name}: the name {bad[:60]!r} is not UTF-8 text")


class _Initializers:
    """Turns initializers into TensorRefs; holds the external data files it maps."""

    def __init__(self, model_path: Path) -> None:
        self.model_path = model_path
        self.folder = model_path.parent.resolve()
        self.mapped: dict[Path, MappedFile] = {}

    def ref(self, init: Any, resolved: Resolved | None, name: str | None = None) -> TensorRef:
        """`init` as a TensorRef named `name` (default: its own name), or as `resolved` says."""
        import onnx

        if name is not None and name != init.name:
            init = _renamed(init, name)
        dt = _dtype(init, self.model_path.name)
        shape = tuple(int(d) for d in init.dims)
        if any(d < 0 for d in shape):
            raise CorruptInputError(f"{self.model_path.name}: initializer {init.name!r} has a negative dimension {shape}")
        check_shape(shape, dt.itemsize, f"{self.model_path.name}: initializer {init.name!r}")
        if init.data_location == onnx.TensorProto.EXTERNAL:
            ref = self._external(init, dt, shape)
        else:
            ref = _inline(init, dt, shape, self.model_path.name)
        if resolved is None:
            return ref
        if resolved.transpose:
            stored = ref
            return TensorRef(resolved.name, dt, shape[::-1], lambda: stored.array().T)
        return ref.renamed(resolved.name)

    def _external(self, init: Any, dt: DType, shape: tuple[int, ...]) -> TensorRef:
        what = f"{self.model_path.name}: initializer {init.name!r}"
        entries = {e.key: e.value for e in init.external_data}
        path = self._location(entries.get("location", ""), what)
        mapped = self.mapped.get(path)
        if mapped is None:
            mapped = self.mapped[path] = MappedFile(str(path))
        nbytes = math.prod(shape) * dt.itemsize
        try:
            offset = int(entries.get("offset", "0"))
            length = int(entries.get("length", str(nbytes)))
        except ValueError:
            raise CorruptInputError(f"{what}: external offset or length is not a number") from None
        if offset < 0 or length != nbytes:
            raise CorruptInputError(
                f"{what}: external data holds {length} bytes at {offset}; {list(shape)} {dt.code} needs {nbytes}"
            )
        if offset + length > mapped.size:
            raise CorruptInputError(
                f"{what}: external data runs past the end of {path.name} ({offset + length} > {mapped.size} bytes; truncated?)"
            )
        return mapped_tensor(mapped, init.name, dt, shape, offset, shareable=True)

    def _location(self, location: str, what: str) -> Path:
        """The external data file, which must be a file inside the model's folder."""
        if "\0" in location or len(location) > MAX_LOCATION:
            raise CorruptInputError(f"{what}: external data location is not a file name ({len(location)} characters)")
        if not location or os.path.isabs(location) or "\\" in location or ".." in Path(location).parts:
            raise UnsafeInputError(f"{what}: external data location {location!r} points outside the model's folder")
        path = (self.folder / location).resolve()
        if not path.is_relative_to(self.folder):
            raise UnsafeInputError(f"{what}: external data {location!r} resolves outside the model's folder")
        if not path.is_file():
            raise SourceNotFoundError(f"{what}: external data file {location!r} is missing")
        return path

    def external_files(self) -> list[Path]:
        return list(self.mapped)

    def close(self) -> None:
        for mapped in self.mapped.values():
            mapped.close()


def _renamed(proto: Any, name: str) -> Any:
    """A copy of a TensorProto under another name (node attribute tensors are often unnamed)."""
    import onnx

    copy = onnx.TensorProto()
    copy.CopyFrom(proto)
    copy.name = name
    return copy


def _refuse_duplicates(model_name: str, names: list[str]) -> None:
    seen: set[str] = set()
    for name in names:
        if name in seen:
            raise CorruptInputError(f"{model_name}: two tensors are named {name!r}")
        seen.add(name)


def _dtype(init: Any, model_name: str) -> DType:
    import onnx

    try:
        type_name = onnx.TensorProto.DataType.Name(init.data_type)
    except ValueError:
        type_name = f"#{init.data_type}"
    code = ONNX_DTYPES.get(type_name)
    if code is None:
        raise UnsupportedFormatError(
            f"{model_name}: initializer {init.name!r} has type {type_name}, which SafeTensors cannot hold"
        )
    return lookup_dtype(code)


def _inline(init: Any, dt: DType, shape: tuple[int, ...], model_name: str) -> TensorRef:
    """An initializer held in the protobuf itself: raw little-endian bytes or typed fields."""
    from onnx import numpy_helper

    nbytes = math.prod(shape) * dt.itemsize  # not numpy's int64 product: it wraps to 0 and passes
    if init.HasField("raw_data"):
        if len(init.raw_data) != nbytes:
            raise CorruptInputError(
                f"{model_name}: initializer {init.name!r} holds {len(init.raw_data)} bytes; "
                f"{list(shape)} {dt.code} needs {nbytes}"
            )
        arr = np.frombuffer(init.raw_data, dtype=dt.numpy.newbyteorder("<")).reshape(shape)
    else:
        try:
            arr = numpy_helper.to_array(init)
        except (ValueError, TypeError) as exc:
            raise CorruptInputError(f"{model_name}: initializer {init.name!r} cannot be decoded ({exc})") from None
        if arr.dtype != dt.numpy:  # older onnx releases decode bfloat16 and float8 as unsigned integers
            if arr.dtype.itemsize != dt.itemsize:
                raise CorruptInputError(f"{model_name}: initializer {init.name!r} decodes as {arr.dtype}, not {dt.code}")
            arr = arr.view(dt.numpy)
    return TensorRef(init.name, dt, shape, lambda: arr)


def _producer(model: Any) -> dict[str, str]:
    return {"name": model.producer_name, "version": model.producer_version}


def _opsets(model: Any) -> dict[str, int]:
    return {op.domain or "ai.onnx": int(op.version) for op in model.opset_import}


def value_summary(value: Any) -> dict[str, Any]:
    """A graph input or output: name, element type, and shape with named (dynamic) axes as strings."""
    import onnx

    tensor_type = value.type.tensor_type
    shape: list[int | str | None] | None = None
    if tensor_type.HasField("shape"):
        shape = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None) for d in tensor_type.shape.dim]
    elem = onnx.TensorProto.DataType.Name(tensor_type.elem_type).lower() if tensor_type.elem_type else None
    return {"name": value.name, "dtype": elem, "shape": shape}


def summarize(model: Any) -> dict[str, Any]:
    """What the graph is made of, for the manifest: producer, opsets, operator counts, inputs, outputs."""
    initializers = {t.name for t in model.graph.initializer}
    return {
        "format": "onnx",
        "producer": _producer(model),
        "ir_version": int(model.ir_version),
        "opset": _opsets(model),
        "operators": dict(sorted(Counter(n.op_type for n in model.graph.node).items())),
        "nodes": len(model.graph.node),
        "initializers": len(initializers),
        "inputs": [value_summary(v) for v in model.graph.input if v.name not in initializers],
        "outputs": [value_summary(v) for v in model.graph.output],
    }
