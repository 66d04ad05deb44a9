"""Small in-place edits of an exported ONNX graph: the names its inputs, outputs and axes go by.

Exporters name things after their own internals (tf2onnx's `Identity:0`, `unk__85` for a batch
axis); a Rust loader binds inputs and outputs by name, so the graph gets the model's names.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from convert.errors import UsageError
from exporters.onnx_export.spec import InputSpec


def default_output_names(count: int) -> list[str]:
    return ["output"] if count == 1 else [f"output_{i}" for i in range(count)]


def output_names(given: list[str] | None, defaults: list[str]) -> list[str]:
    """--output-names if given (one per output), else the framework's own names."""
    if given is not None and len(given) != len(defaults):
        raise UsageError(f"--output-names gives {len(given)} names; the model has {len(defaults)} outputs")
    return given if given is not None else defaults


def rename_values(model: Any, mapping: dict[str, str]) -> None:
    """Rename values (graph inputs and outputs) everywhere they appear, subgraphs included."""
    mapping = {old: new for old, new in mapping.items() if old != new}
    if not mapping:
        return
    existing = {name for graph in _graphs(model.graph) for name in _value_names(graph)}
    clashes = sorted(set(mapping.values()) & (existing - set(mapping)))
    if clashes:
        raise UsageError(f"cannot name graph values {clashes}: the graph already uses those names")
    for graph in _graphs(model.graph):
        for node in graph.node:
            node.input[:] = [mapping.get(v, v) for v in node.input]
            node.output[:] = [mapping.get(v, v) for v in node.output]
        for value in (*graph.input, *graph.output, *graph.value_info):
            value.name = mapping.get(value.name, value.name)


def name_axes(model: Any, specs: list[InputSpec]) -> None:
    """Give the graph's symbolic input axes the names the specs use ("batch", "seq", ...) throughout."""
    by_name = {value.name: value for value in model.graph.input}
    renames: dict[str, str] = {}
    for spec in specs:
        value = by_name.get(spec.name)
        if value is None:
            continue
        dims = value.type.tensor_type.shape.dim
        for axis, wanted in spec.dynamic.items():
            if axis < len(dims) and dims[axis].dim_param and dims[axis].dim_param not in renames:
                renames[dims[axis].dim_param] = wanted
    for graph in _graphs(model.graph):
        for value in (*graph.input, *graph.output, *graph.value_info):
            for dim in value.type.tensor_type.shape.dim:
                if dim.dim_param in renames:
                    dim.dim_param = renames[dim.dim_param]


def _graphs(graph: Any) -> Iterator[Any]:
    """A graph and every subgraph (If, Loop, Scan bodies) inside it."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield from _graphs(attr.g)
            for sub in attr.graphs:
                yield from _graphs(sub)


def _value_names(graph: Any) -> Iterator[str]:
    for node in graph.node:
        yield from node.input
        yield from node.output
    for value in (*graph.input, *graph.output, *graph.value_info, *graph.initializer):
        yield value.name


def reinfer_shapes(model: Any) -> Any:
    """The graph with its output and intermediate shapes inferred afresh from its inputs.

    Exporters record the sizes they traced with where the graph does not fix them (torch's LSTM
    output keeps the example's sequence length), and onnx-simplifier would bake such a size into a
    Reshape; ONNX's own inference from the symbolic inputs gives the honest shapes.
    """
    import onnx

    relaxed = onnx.ModelProto()
    relaxed.CopyFrom(model)
    del relaxed.graph.value_info[:]
    for value in relaxed.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            dim.Clear()
    try:
        return onnx.shape_inference.infer_shapes(relaxed, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError):
        return model
