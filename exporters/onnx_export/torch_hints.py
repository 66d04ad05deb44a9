"""What a PyTorch module's own code says about its inputs' values, read from its traced graph.

An argument that reaches an `nn.Embedding` (or `F.embedding`) unchanged holds indices in
[0, num_embeddings); one that reaches a mask argument (a module's `*mask*` parameter such as
`nn.TransformerEncoder`'s `src_key_padding_mask`, `masked_fill`, `torch.where`) holds 0/1: as a
bool when it arrives unchanged, as int64 when the code compares or casts it on the way.

torch.fx traces the forward symbolically (no data flows), so this works before anyone knows the
inputs' dtypes; a forward that fx cannot trace (Python control flow on values) gives no hints, and
the user's --input-shape NAME=SHAPE:DTYPE and --input-range say it instead.
"""

from __future__ import annotations

import inspect
import operator
from collections import deque
from collections.abc import Iterator
from typing import Any

from exporters.onnx_export.spec import InputHint

INDEX_DTYPES = ("int64", "int32")  # what torch's embedding kernels take
DIRECT_MASK_DTYPES = ("bool", "float32", "float16", "float64")  # torch attention: a bool mask, or an additive float one
DERIVED_MASK_DTYPES = ("int64", "int32", "int16", "int8", "uint8", "bool", "float32", "float16", "float64")
MAX_STEPS = 64  # nodes followed from one input; a consumer further away is not looked for

# values pass unchanged through these (shape and indexing)
_VIEW_METHODS = frozenset(
    {
        "view",
        "reshape",
        "unsqueeze",
        "squeeze",
        "flatten",
        "transpose",
        "permute",
        "contiguous",
        "expand",
        "expand_as",
        "narrow",
        "select",
        "t",
        "clone",
        "detach",
        "repeat",
        "__getitem__",
    }
)
# the values stay, the dtype changes
_CAST_METHODS = frozenset({"to", "long", "int", "type", "bool", "float", "double", "half", "short", "byte"})
# elementwise: a mask stays a mask, an index is no longer the embedding's row number
_ELEMENTWISE_METHODS = frozenset(
    {
        "eq",
        "ne",
        "lt",
        "le",
        "gt",
        "ge",
        "logical_not",
        "logical_and",
        "logical_or",
        "__invert__",
        "__eq__",
        "__ne__",
        "__and__",
        "__or__",
        "mul",
        "add",
        "sub",
        "__mul__",
        "__add__",
        "__sub__",
        "__rsub__",
        "neg",
        "float_power",
    }
)
_ELEMENTWISE_OPERATORS = (
    operator.eq,
    operator.ne,
    operator.lt,
    operator.le,
    operator.gt,
    operator.ge,
    operator.invert,
    operator.not_,
    operator.and_,
    operator.or_,
    operator.mul,
    operator.add,
    operator.sub,
    operator.neg,
    operator.truediv,
)


def input_hints(module: Any, names: list[str]) -> dict[str, InputHint]:
    """{input name: hint} for the forward arguments whose consumers say what they hold."""
    graph = _trace(module)
    if graph is None:
        return {}
    placeholders = {n.target: n for n in graph.graph.nodes if n.op == "placeholder"}
    hints = {}
    for name in names:
        if name in placeholders:
            hint = _hint(graph, placeholders[name])
            if hint is not None:
                hints[name] = hint
    return hints


def _trace(module: Any) -> Any:
    import torch.fx

    try:
        return torch.fx.symbolic_trace(module)
    except Exception:  # fx raises many types on code it cannot trace; then the model says nothing here
        return None


def _hint(graph: Any, start: Any) -> InputHint | None:
    embeddings: list[tuple[str, int]] = []
    masks: list[tuple[str, bool]] = []  # (consumer, reached unchanged)
    seen = {start}
    queue = deque([(start, True, True)])  # node, values unchanged, dtype unchanged
    while queue and len(seen) <= MAX_STEPS:
        node, exact, direct = queue.popleft()
        for user in node.users:
            for embedding in _embedding_uses(graph, user, node):
                if exact:
                    embeddings.append(embedding)
            for consumer in _mask_uses(graph, user, node):
                masks.append((consumer, direct))
            step = _step(user)
            if step is not None and user not in seen:
                seen.add(user)
                queue.append((user, exact and step != "elementwise", direct and step == "view"))
    if embeddings:
        where, rows = min(embeddings, key=lambda e: e[1])
        return InputHint(INDEX_DTYPES, (0, rows), f"{where} ({rows} rows)")
    if masks:
        where, direct = masks[0]
        if all(d for _, d in masks):
            return InputHint(DIRECT_MASK_DTYPES, (0, 2), f"the mask of {where}")
        return InputHint(DERIVED_MASK_DTYPES, (0, 2), f"the mask of {where}")
    return None


def _step(node: Any) -> str | None:
    """How values pass through `node`: 'view', 'cast', 'elementwise', or None (they stop here)."""
    import torch

    if node.op == "call_method":
        name = node.target
    elif node.op == "call_function":
        if node.target is operator.getitem:
            return "view"
        if node.target in _ELEMENTWISE_OPERATORS:
            return "elementwise"
        name = getattr(node.target, "__name__", "")
        if getattr(torch, name, None) is not node.target:
            return None
    else:
        return None
    if name in _VIEW_METHODS:
        return "view"
    if name in _CAST_METHODS:
        return "cast"
    if name in _ELEMENTWISE_METHODS:
        return "elementwise"
    return None


def _embedding_uses(graph: Any, user: Any, value: Any) -> Iterator[tuple[str, int]]:
    """(what, rows) when `user` looks `value` up as an embedding's indices."""
    import torch
    import torch.nn.functional as F

    if user.op == "call_module":
        sub = graph.get_submodule(user.target)
        if isinstance(sub, (torch.nn.Embedding, torch.nn.EmbeddingBag)) and _argument(user, 0, "input") is value:
            yield f"{_class_name(sub)} {user.target!r}", int(sub.num_embeddings)
    elif user.op == "call_function" and user.target in (F.embedding, torch.embedding):
        indices, weight = (0, 1) if user.target is F.embedding else (1, 0)
        table = _argument(user, weight, "weight")
        if (
            _argument(user, indices, "input" if user.target is F.embedding else "indices") is value
            and getattr(table, "op", None) == "get_attr"
        ):
            yield f"F.embedding of {table.target!r}", int(graph.get_parameter(table.target).shape[0])


def _mask_uses(graph: Any, user: Any, value: Any) -> Iterator[str]:
    """The consumer's description when `user` takes `value` as a mask."""
    if user.op == "call_module":
        sub = graph.get_submodule(user.target)
        for param in _bound_names(sub.forward, user, value):
            if "mask" in param:
                yield f"{_class_name(sub)} {user.target!r} ({param})"
    elif user.op in ("call_function", "call_method"):
        name = user.target if user.op == "call_method" else getattr(user.target, "__name__", "")
        positional = {"masked_fill": 1, "masked_fill_": 1, "where": 0, "scaled_dot_product_attention": 3}.get(name)
        if positional is not None and len(user.args) > positional and user.args[positional] is value:
            yield f"{name}()"
        for key, arg in user.kwargs.items():
            if arg is value and "mask" in key:
                yield f"{name}() ({key})"


def _bound_names(fn: Any, node: Any, value: Any) -> list[str]:
    """The parameter names of `fn` that `node`'s call passes `value` to."""
    try:
        bound = inspect.signature(fn).bind(*node.args, **node.kwargs)
    except (TypeError, ValueError):
        return [key for key, arg in node.kwargs.items() if arg is value]
    return [key for key, arg in bound.arguments.items() if arg is value]


def _argument(node: Any, index: int, key: str) -> Any:
    return node.args[index] if len(node.args) > index else node.kwargs.get(key)


def _class_name(module: Any) -> str:
    """nn.Embedding for torch's own classes, the bare class name for the user's."""
    cls = type(module)
    return f"nn.{cls.__name__}" if cls.__module__.startswith("torch.nn") else cls.__name__
