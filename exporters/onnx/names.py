"""Trace ONNX initializers with exporter-made names back to the PyTorch parameters they hold.

torch.onnx.export keeps a parameter's state-dict name (`fc1.weight`) where it stores the parameter
as it is, and invents a name where it stores a transformed copy: a Linear applied to inputs of rank
3 or more becomes MatMul(x, W^T), and W^T is stored as `onnx::MatMul_123` (TorchScript exporter) or
`val_4` (dynamo exporter).  The graph still says where that tensor came from:

- the consuming node's scope: the dynamo exporter's `pkg.torch.onnx.name_scopes` metadata, or the
  TorchScript exporter's node name `/encoder/layers.0/linear1/MatMul`;
- failing that (onnx-simplifier drops node metadata and rewrites MatMul+Add into Gemm), the bias the
  same Linear adds, which keeps its name (`fc1.bias`).

`to-onnx` resolves the names before it simplifies and records them in the model's metadata_props
(which onnx-simplifier keeps), so its own graphs resolve completely, bias or no bias.

Only weights of MatMul and Gemm are renamed: everything else an exporter renames is a value it
computed (a Conv weight with a BatchNorm folded in), which no parameter holds, so it keeps its name.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

# Names the exporters invent; any other name is taken to be the producer's own and kept.
GENERATED = re.compile(r"onnx::.*|val_[0-9]+|_v_[0-9]+")
SCOPES_KEY = "pkg.torch.onnx.name_scopes"
CLASSES_KEY = "pkg.torch.onnx.class_hierarchy"
RECORD_KEY = "rust_model_convert.parameter_names"  # {initializer: [parameter name, transposed?]}


@dataclass(frozen=True)
class Resolved:
    name: str
    transpose: bool  # the stored tensor is W^T; transposing gives the parameter [out, in]
    evidence: str  # "node scope" or "bias name", for the manifest


def record_names(model: Any) -> None:
    """Keep what the graph says now in the model's metadata, where simplification cannot lose it."""
    found = resolve_names(model)
    if found:
        entry = model.metadata_props.add()
        entry.key = RECORD_KEY
        entry.value = json.dumps({old: [r.name, r.transpose] for old, r in found.items()})


def resolve_names(model: Any) -> dict[str, Resolved]:
    """{initializer name: what it is} for the generated names that can be traced to a Linear."""
    graph = model.graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    taken = set(shapes)
    resolved = _recorded(model, shapes, taken)
    consumers: dict[str, list[tuple[Any, int]]] = {}
    by_input: dict[str, list[Any]] = {}
    for node in graph.node:
        for position, value in enumerate(node.input):
            by_input.setdefault(value, []).append(node)
            if value in shapes:
                consumers.setdefault(value, []).append((node, position))
    for name, shape in shapes.items():
        uses = consumers.get(name, [])
        if name in resolved or not GENERATED.fullmatch(name) or len(shape) != 2 or len(uses) != 1:
            continue
        node, position = uses[0]
        found = _linear_weight(node, position, shapes, by_input)
        if found is None:
            continue
        path, transpose, evidence = found
        target = f"{path}.weight"
        if target not in taken:
            taken.add(target)
            resolved[name] = Resolved(target, transpose, evidence)
    return resolved


def _recorded(model: Any, shapes: dict[str, tuple[int, ...]], taken: set[str]) -> dict[str, Resolved]:
    """What `record_names` wrote, for initializers still there; anything malformed is ignored."""
    text = next((p.value for p in model.metadata_props if p.key == RECORD_KEY), None)
    try:
        recorded = json.loads(text) if text else {}
    except json.JSONDecodeError:
        return {}
    resolved: dict[str, Resolved] = {}
    for old, entry in recorded.items() if isinstance(recorded, dict) else ():
        if not (isinstance(entry, list) and len(entry) == 2 and isinstance(entry[0], str) and isinstance(entry[1], bool)):
            continue
        name, transpose = entry
        if GENERATED.fullmatch(old) and len(shapes.get(old, ())) == 2 and name not in taken:
            taken.add(name)
            resolved[old] = Resolved(name, transpose, "recorded at export")
    return resolved


def _linear_weight(
    node: Any, position: int, shapes: dict[str, tuple[int, ...]], by_input: dict[str, list[Any]]
) -> tuple[str, bool, str] | None:
    """(module path, transposed?, evidence) when `node` multiplies by this initializer as a Linear does."""
    if position != 1 or node.op_type not in ("MatMul", "Gemm") or not node.output or len(shapes[node.input[1]]) != 2:
        return None  # a product without an output, or not by a matrix: nothing to name it by
    attrs = {a.name: a.i for a in node.attribute}
    if attrs.get("transA", 0):
        return None
    transpose = node.op_type == "MatMul" or not attrs.get("transB", 0)
    out_features = shapes[node.input[1]][1 if transpose else 0]
    bias = _bias_name(node, by_input, shapes, out_features)
    scope = _scope(node)
    if scope and (bias is None or bias == f"{scope}.bias"):
        return scope, transpose, "node scope"
    if bias is not None:
        return bias.removesuffix(".bias"), transpose, "bias name"
    return None


def _bias_name(node: Any, by_input: dict[str, list[Any]], shapes: dict[str, tuple[int, ...]], out_features: int) -> str | None:
    """The `X.bias` initializer this product is added to (Gemm's C, or the Add after a MatMul)."""
    candidates = list(node.input[2:3])
    if node.op_type == "MatMul":
        adds = [n for n in by_input.get(node.output[0], []) if n.op_type == "Add"]
        candidates = [value for n in adds[:1] for value in n.input if value != node.output[0]]
    for value in candidates:
        if value.endswith(".bias") and not GENERATED.fullmatch(value) and shapes.get(value) == (out_features,):
            return value
    return None


def _scope(node: Any) -> str | None:
    """The path of the Linear a node was exported from, if the exporter recorded it."""
    props = {prop.key: prop.value for prop in node.metadata_props}
    if SCOPES_KEY in props:
        # Per level: ['', 'fc1', 'linear'] and
        # ['__main__.Net', 'torch.nn.modules.linear.Linear', 'aten.linear.default'].
        # A node a rewrite rule made (a BatchNorm folded into a Gemm) carries the scope of another module.
        scopes, classes = _scope_list(props[SCOPES_KEY]), _scope_list(props.get(CLASSES_KEY, ""))
        if len(scopes) >= 3 and len(classes) == len(scopes) and classes[-2].endswith("Linear"):
            return scopes[-2] or None
        return None
    if node.name.startswith("/") and node.name.count("/") >= 2:
        return _torchscript_path(node.name.strip("/").split("/")[:-1])
    return None


def _scope_list(text: str) -> list[str]:
    """The dynamo exporter writes name scopes as a Python list literal of strings: "['', 'fc1', 'linear']"."""
    return re.findall(r"'([^'\\]*)'", text) if text.startswith("[") else []


def _torchscript_path(parts: list[str]) -> str:
    """TorchScript scope parts are relative (`blocks.0`, `proj`) or already full (`seq`, `seq.0`)."""
    path = ""
    for part in parts:
        path = part if not path or part.startswith(path + ".") else f"{path}.{part}"
    return path


# --- tensors held outside graph.initializer ------------------------------------------------------

_MAX_GRAPH_DEPTH = 64


def graph_tensors(graph: Any, scope: str = "", depth: int = 0) -> list[tuple[str, Any]]:
    """Every TensorProto a graph holds, with the name it is converted under: initializers by their own
    name, a Constant node's tensor by the value it outputs, any other node's tensor attribute as
    `node/attribute`; a subgraph's (If branches, Loop and Scan bodies) under `node/attribute/`, so names
    stay unique and say where each tensor is used. The top graph's initializers are not listed."""
    if depth > _MAX_GRAPH_DEPTH:
        raise ValueError("subgraphs are nested too deeply")
    import onnx

    found: list[tuple[str, Any]] = []
    if depth:
        found += [(scope + _text(t.name), t) for t in graph.initializer]
    for i, node in enumerate(graph.node):
        where = f"{scope}{_text(node.name) or f'{_text(node.op_type)}_{i}'}/"
        for attr in node.attribute:
            name = _text(attr.name)
            if attr.type == onnx.AttributeProto.TENSOR:
                constant = node.op_type == "Constant" and not _text(node.domain) and node.output and node.output[0]
                found.append((scope + _text(node.output[0]) if constant else f"{where}{name}", attr.t))
            elif attr.type == onnx.AttributeProto.TENSORS:
                found += [(f"{where}{name}/{k}", t) for k, t in enumerate(attr.tensors)]
            elif attr.type == onnx.AttributeProto.GRAPH:
                found += graph_tensors(attr.g, f"{where}{name}/", depth + 1)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for k, g in enumerate(attr.graphs):
                    found += graph_tensors(g, f"{where}{name}/{k}/", depth + 1)
    return found


def _text(value: Any) -> str:
    """A name from the graph: protobuf hands back bytes for one that is not UTF-8 (a subgraph's names
    are not among those the reader checks up front)."""
    if not isinstance(value, str):
        raise ValueError(f"the name {bytes(value)[:60]!r} is not UTF-8 text")
    return value


def count_tensor_protos(message: Any, depth: int = 0) -> int:
    """How many TensorProto (and SparseTensorProto) messages a model holds anywhere, found by walking
    every protobuf field, independently of what `graph_tensors` knows about ONNX: the cross-check that
    no tensor was overlooked."""
    if depth > 4 * _MAX_GRAPH_DEPTH:
        raise ValueError("the model's messages are nested too deeply")
    count = 1 if message.DESCRIPTOR.name in ("TensorProto", "SparseTensorProto") else 0
    if count:
        return count
    from google.protobuf.message import Message

    for field, value in message.ListFields():
        if field.type != field.TYPE_MESSAGE:
            continue
        for item in [value] if isinstance(value, Message) else value:
            count += count_tensor_protos(item, depth + 1)
    return count
