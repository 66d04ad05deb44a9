"""Int8 weights in ONNX graphs (ONNX Runtime's quantizer, `to-onnx --quantize`, others'): which
integer initializer is scaled by which scale and zero point, as the graph's own nodes say.

- DequantizeLinear(W, scale, zero_point), `axis` when the scale has one value per slice (QDQ graphs;
  int32 biases too), also after a Gather on W (a quantized embedding table);
- MatMulInteger(A, W, a_zero, w_zero) and ConvInteger(X, W, x_zero, w_zero): the zero point is the
  node's; the scale is the initializer multiplied into A's scale by the Mul that rescales the
  product (ONNX Runtime's dynamic quantization);
- DynamicQuantizeLSTM (an ONNX Runtime contrib operator): W and R with their scales and zero points
  at inputs 8 to 11, one per direction or per direction and gate row.

`dequantize` turns each such weight into float32, (q - zero_point) * scale, named without ONNX
Runtime's `_quantized` suffix, in the float operator's layout (ONNX Runtime transposes a Linear's
weight into MatMulInteger's B, and an LSTM's into DynamicQuantizeLSTM's order: both are undone, and
recorded); its scale and zero point, when nothing else uses them, are folded in and not written.
`keep` writes the initializers as stored. Either way the manifest records which tensor is scaled by
which.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from convert.dtypes import dtype as lookup_dtype
from convert.errors import CorruptInputError
from convert.tensors import TensorRef

SUFFIX = "_quantized"  # ONNX Runtime's quantizer names W's integer copy W_quantized
INTEGER_PRODUCTS = {"MatMulInteger": -1, "ConvInteger": 0}  # op -> the axis of W a vector of scales runs along
LSTM_WEIGHTS = ((1, 8, 9), (2, 10, 11))  # DynamicQuantizeLSTM: (weight, scale, zero point) input positions


@dataclass(frozen=True)
class Quantized:
    weight: str
    scale: str
    zero_point: str | None
    op: str  # the node that says how W is scaled
    nodes: tuple[int, ...]  # the nodes that use the scale and zero point for W


def quantized_weights(graph: Any, integer: set[str], stored: set[str]) -> dict[str, Quantized]:
    """{integer initializer: how it is scaled} for the patterns in the module docstring; `integer`
    names the graph's integer initializers, `stored` all of them."""
    nodes = list(graph.node)
    producer = {out: i for i, node in enumerate(nodes) for out in node.output}
    consumers: dict[str, list[int]] = {}
    for i, node in enumerate(nodes):
        for name in node.input:
            consumers.setdefault(name, []).append(i)
    found: dict[str, Quantized] = {}
    for i, node in enumerate(nodes):
        inputs = list(node.input)
        if node.op_type == "DequantizeLinear" and len(inputs) >= 2:
            source = _gathered(nodes, producer.get(inputs[0]), integer) or inputs[0]
            if source in integer:
                found.setdefault(source, Quantized(source, inputs[1], _optional(inputs, 2), "DequantizeLinear", (i,)))
        elif node.op_type in INTEGER_PRODUCTS and len(inputs) >= 2 and inputs[1] in integer:
            rescale = _product_scale(nodes, producer, consumers, node, stored)
            if rescale is not None:
                found[inputs[1]] = Quantized(inputs[1], rescale[0], _optional(inputs, 3), node.op_type, (i, rescale[1]))
        elif node.op_type == "DynamicQuantizeLSTM":
            for weight, scale, zero in LSTM_WEIGHTS:
                if len(inputs) > zero and inputs[weight] in integer:
                    found[inputs[weight]] = Quantized(inputs[weight], inputs[scale], inputs[zero] or None, node.op_type, (i,))
    return found


def _optional(inputs: list[str], position: int) -> str | None:
    return inputs[position] or None if len(inputs) > position else None


def _gathered(nodes: list[Any], index: int | None, integer: set[str]) -> str | None:
    """The table a Gather reads, when DequantizeLinear scales the rows it gathered."""
    if index is None or nodes[index].op_type != "Gather" or nodes[index].input[0] not in integer:
        return None
    return str(nodes[index].input[0])


def _product_scale(
    nodes: list[Any], producer: dict[str, int], consumers: dict[str, list[int]], node: Any, stored: set[str]
) -> tuple[str, int] | None:
    """W's scale of an integer product, Cast(product) * Mul(A's scale, W's scale): the stored input
    of that inner Mul, and the Mul's index."""
    for cast in consumers.get(node.output[0], []):
        if nodes[cast].op_type != "Cast":
            continue
        for mul in consumers.get(nodes[cast].output[0], []):
            if nodes[mul].op_type != "Mul":
                continue
            for name in nodes[mul].input:
                inner = producer.get(name)
                if inner is not None and nodes[inner].op_type == "Mul":
                    scales = [n for n in nodes[inner].input if n in stored]
                    if len(scales) == 1:
                        return scales[0], inner
    return None


def apply(
    refs: dict[str, TensorRef], found: dict[str, Quantized], mode: str, graph: Any
) -> tuple[list[TensorRef], dict[str, Any]]:
    """The model's tensors (initializers by name, in order) with `found` dequantized or kept, and
    the manifest's record of each quantized weight."""
    record: dict[str, Any] = {}
    replaced: dict[str, TensorRef] = {}
    for weight, q in found.items():
        if q.scale not in refs or (q.zero_point is not None and q.zero_point not in refs):
            continue  # a scale computed by the graph, not stored: the weight is kept as it is
        scale, zero = refs[q.scale].array(), refs[q.zero_point].array() if q.zero_point else None
        stored = refs[weight]
        axes = _axes(stored, scale, zero, q, graph)
        entry: dict[str, Any] = {"scale": q.scale, "zero_point": q.zero_point, "axes": list(axes), "op": q.op, "mode": mode}
        if mode == "dequantize":
            name = weight.removesuffix(SUFFIX) if weight.removesuffix(SUFFIX) not in refs else weight
            order = _float_layout(q.op, len(stored.shape))
            replaced[weight] = TensorRef(
                name, lookup_dtype("F32"), tuple(stored.shape[a] for a in order), _reader(stored, scale, zero, axes, order)
            )
            entry["tensor"] = name
            if order != tuple(range(len(order))):
                entry["permute"] = list(order)
        record[stored.name] = entry
    folded = _folded(found, record, graph) if mode == "dequantize" else set()
    tensors = [replaced.get(name, ref) for name, ref in refs.items() if name not in folded]
    return tensors, record


def _reader(
    stored: TensorRef, scale: np.ndarray, zero: np.ndarray | None, axes: tuple[int, ...], order: tuple[int, ...]
) -> Callable[[], np.ndarray]:
    """Reads `stored` and dequantizes it, in the axis `order` of the float operator."""
    return lambda: np.ascontiguousarray(dequantized(stored.array(), scale, zero, axes).transpose(order))


def _float_layout(op: str, rank: int) -> tuple[int, ...]:
    """The axis order that gives a dequantized weight the float operator's layout: a Linear's
    [out, in] for MatMulInteger's B [in, out] (x @ B = x @ W^T), ONNX LSTM's [dirs, 4*hidden, in] for
    DynamicQuantizeLSTM's [dirs, in, 4*hidden]; other weights keep theirs."""
    if op == "MatMulInteger" and rank == 2:
        return (1, 0)
    if op == "DynamicQuantizeLSTM" and rank == 3:
        return (0, 2, 1)
    return tuple(range(rank))


def _axes(stored: TensorRef, scale: np.ndarray, zero: np.ndarray | None, q: Quantized, graph: Any) -> tuple[int, ...]:
    """The axes of W that the scale's values run along: () for one scale for the whole tensor."""
    what = f"{q.op} weight {q.weight!r}"
    if zero is not None and zero.size != scale.size:
        raise CorruptInputError(f"{what}: {scale.size} scales but {zero.size} zero points")
    rank = len(stored.shape)
    if scale.size == 1 or not rank:
        axes: tuple[int, ...] = ()
    elif q.op == "DynamicQuantizeLSTM":
        axes = (0,) if scale.ndim == 1 else (0, rank - 1)
    elif q.op == "DequantizeLinear":
        node = graph.node[q.nodes[0]]
        axes = (next((a.i for a in node.attribute if a.name == "axis"), 1) % rank,)
    else:
        axes = (INTEGER_PRODUCTS[q.op] % rank,)
    if math.prod(stored.shape[a] for a in axes) != scale.size:
        raise CorruptInputError(f"{what}: {scale.size} scales do not fit its shape {list(stored.shape)} along axes {list(axes)}")
    return axes


def dequantized(q: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axes: tuple[int, ...]) -> np.ndarray:
    """(q - zero) * scale in float64, as float32, the scales laid along `axes` of q."""
    shape = [q.shape[a] if a in axes else 1 for a in range(q.ndim)]
    s = scale.astype(np.float64).reshape(shape)
    z = 0.0 if zero is None else zero.astype(np.float64).reshape(shape)
    return ((q.astype(np.float64) - z) * s).astype(np.float32)


def _folded(found: dict[str, Quantized], record: dict[str, Any], graph: Any) -> set[str]:
    """Scales and zero points of dequantized weights that no other node uses."""
    users: dict[str, set[int]] = {}
    for i, node in enumerate(graph.node):
        for name in node.input:
            users.setdefault(name, set()).add(i)
    weight_nodes = {i for q in found.values() for i in q.nodes}
    done = {e.get("scale") for e in record.values() if "tensor" in e} | {
        e.get("zero_point") for e in record.values() if "tensor" in e
    }
    return {name for name in done if name and users.get(name, set()) <= weight_nodes}
