"""A Flax variable tree in canonical form: PyTorch state-dict names and layouts.

Flax stores no module types, only names and shapes, so each module is recognised by its leaves as
Flax's own layers (linen and NNX alike) name them: Dense/Linear `kernel` [in, out], Conv `kernel`
(k..., in, out), Embed `embedding`, norms `scale`/`bias`, BatchNorm statistics `mean`/`var`, and the
recurrent cells' gate Dense layers. Every canonical tensor is built from Flax leaves by a chain from
the closed transform vocabulary (convert/transforms.py), and that chain is recorded as its origin.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convert import transforms as tf
from convert.errors import UnsupportedFormatError, UsageError
from convert.tensors import FileSpan, TensorRef, in_memory

# A variable tree as a reader found it: nested dicts down to TensorRefs (named by their '/'-joined
# path) and leaves that hold no array (NonTensor, small scalars), which are reported, not converted.
Tree = dict[str, Any]
Transforms = list[dict[str, Any]]

TRANSPOSE: Transforms = [{"op": "transpose"}]
# (input-side gates, hidden-side gates) in PyTorch's gate order; Flax names each gate's Dense layer.
CELL_GATES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "LSTM": (("ii", "if", "ig", "io"), ("hi", "hf", "hg", "ho")),  # linen LSTMCell, OptimizedLSTMCell; nnx LSTMCell
    "GRU": (("ir", "iz", "in"), ("hr", "hz", "hn")),  # linen GRUCell
    "RNN": (("i",), ("h",)),  # linen SimpleCell
}
GATE_ALIASES = {"if_": "if"}  # NNX's LSTMCell cannot call an attribute `if`
FUSED_CELL = ("dense_i", "dense_h")  # nnx OptimizedLSTMCell, GRUCell, SimpleCell: gates along the out axis
CELL_BY_GATES = {4: "LSTM", 3: "GRU", 1: "RNN"}
CELL_NAMES = {"LSTM": "LSTMCell", "GRU": "GRUCell", "RNN": "SimpleCell"}


@dataclass(frozen=True)
class NonTensor:
    """A leaf that holds no array (a complex number, a PRNG key), kept only to be reported."""

    kind: str


@dataclass
class Canonical:
    """Canonical tensors, and for the manifest where each came from and which modules they form."""

    tensors: list[TensorRef] = field(default_factory=list)
    origins: dict[str, dict[str, Any]] = field(default_factory=dict)  # canonical name -> Flax leaves + transforms
    modules: list[dict[str, Any]] = field(default_factory=list)  # the module tree, with inferred types and sizes

    def add(self, name: str, sources: list[TensorRef], transforms: Transforms) -> None:
        self.tensors.append(tf.derived(name, sources, transforms))
        self.origins[name] = {"from": [s.name for s in sources], **({"transforms": transforms} if transforms else {})}

    def zeros(self, name: str, like: TensorRef, length: int, why: str) -> None:
        self.tensors.append(in_memory(name, np.zeros(length, like.dtype.numpy), like.dtype.code))
        self.origins[name] = {"from": [], "zeros": why}


def canonicalize(tree: Tree) -> Canonical:
    stacked = stacked_modules(tree)
    if stacked:  # read as they are, their kernels would pass for convolutions: a guess exit 0 must not make
        raise UnsupportedFormatError(
            f"{', '.join(stacked)}: layers stacked by nn.scan or vmap (a Dense kernel [layers, in, out] with its "
            f"bias [layers, out]); split them with {' '.join(f'--unstack {p}' for p in stacked)}"
        )
    out = Canonical()
    _walk(tree, (), out)
    return out


def _walk(node: Tree, where: tuple[str, ...], out: Canonical) -> None:
    if where and _cell(node, where, out):
        return
    leaves = {k: v for k, v in node.items() if isinstance(v, TensorRef)}
    if leaves:
        _module(where, leaves, out)
    for key, child in node.items():
        if isinstance(child, dict):
            _walk(child, (*where, key), out)


def dotted(where: tuple[str, ...], leaf: str | None = None) -> str:
    parts = (*where, leaf) if leaf is not None else where
    for part in parts:
        if not part or "." in part:
            raise UnsupportedFormatError(
                f"tree key {part!r} (under {'/'.join(where) or 'the top'}) cannot be one component of a dotted tensor name"
            )
    return ".".join(parts)


# --- plain modules --------------------------------------------------------------------------------


def _module(where: tuple[str, ...], leaves: dict[str, TensorRef], out: Canonical) -> None:
    kind, params, renames = _recognise(leaves)
    if kind == "Conv" and where and re.fullmatch(r"ConvTranspose_[0-9]+", where[-1]):
        raise UnsupportedFormatError(
            f"{'/'.join(where)}: a ConvTranspose kernel becomes PyTorch's only with its "
            "spatial axes flipped, which no recorded transform does"
        )
    targets = [renames.get(leaf, (leaf, []))[0] for leaf in leaves]
    if len(set(targets)) != len(targets):  # e.g. both `kernel` and `scale`: not a Flax layer; keep its names
        kind, params, renames = "unknown", {}, {}
    names = []
    for leaf, ref in leaves.items():
        target, transforms = renames.get(leaf, (leaf, []))
        names.append(dotted(where, target))
        out.add(names[-1], [ref], transforms)
    out.modules.append({"path": dotted(where), "type": kind, "params": params, "tensors": names})


def _recognise(leaves: dict[str, TensorRef]) -> tuple[str, dict[str, Any], dict[str, tuple[str, Transforms]]]:
    """(Flax layer type, its sizes, {leaf: (canonical leaf name, transforms)}) from a module's leaves."""
    kernel, embedding, scale, bias = (leaves.get(k) for k in ("kernel", "embedding", "scale", "bias"))
    mean, var = leaves.get("mean"), leaves.get("var")
    use_bias = {"use_bias": bias is not None}
    if kernel is not None and len(kernel.shape) == 2:
        return (
            "Dense",
            {"in_features": kernel.shape[0], "features": kernel.shape[1], **use_bias},
            {"kernel": ("weight", TRANSPOSE)},
        )
    if kernel is not None and len(kernel.shape) > 2:
        rank = len(kernel.shape)
        params = {
            "kernel_size": list(kernel.shape[:-2]),
            "in_features_per_group": kernel.shape[-2],
            "features": kernel.shape[-1],
            **use_bias,
        }
        return "Conv", params, {"kernel": ("weight", [{"op": "permute", "axes": [rank - 1, rank - 2, *range(rank - 2)]}])}
    if embedding is not None and len(embedding.shape) == 2:
        return "Embed", {"num_embeddings": embedding.shape[0], "features": embedding.shape[1]}, {"embedding": ("weight", [])}
    norm = {"use_scale": scale is not None, **use_bias}
    if mean is not None and var is not None and len(mean.shape) == 1 and mean.shape == var.shape:
        renames: dict[str, tuple[str, Transforms]] = {
            "mean": ("running_mean", []),
            "var": ("running_var", []),
            "scale": ("weight", []),
        }
        return "BatchNorm", {"features": mean.shape[0], **norm}, renames
    if scale is not None:  # LayerNorm, RMSNorm and GroupNorm leave the same leaves
        return "Norm", {"features": list(scale.shape), **norm}, {"scale": ("weight", [])}
    return "unknown", {}, {}


# --- recurrent cells ------------------------------------------------------------------------------


def _cell(node: Tree, where: tuple[str, ...], out: Canonical) -> bool:
    """A recurrent cell as PyTorch's one-layer LSTM/GRU/RNN tensors, if `node` is one; else False."""
    children = {GATE_ALIASES.get(k, k): v for k, v in node.items()}
    if len(children) != len(node) or not all(isinstance(v, dict) and _dense_leaves(v) for v in children.values()):
        return False
    if set(children) == set(FUSED_CELL):
        sides: tuple[list[Tree], list[Tree]] = ([children["dense_i"]], [children["dense_h"]])
        hidden, width = sides[1][0]["kernel"].shape
        kind = CELL_BY_GATES.get(width // hidden) if hidden else None
    else:
        kind = next((k for k, (i, h) in CELL_GATES.items() if set(children) == {*i, *h}), None)
        if kind is None:
            return False
        inputs, hiddens = CELL_GATES[kind]
        sides = ([children[g] for g in inputs], [children[g] for g in hiddens])
        hidden = sides[1][0]["kernel"].shape[0]
    if kind is None or not _cell_shapes_fit(sides, hidden, len(CELL_GATES[kind][1])):
        return False
    prefix = dotted(where)
    for side, tag in zip(sides, ("ih", "hh"), strict=True):
        kernels = [gate["kernel"] for gate in side]
        out.add(f"{prefix}.weight_{tag}_l0", kernels, ([{"op": "concat", "axis": 1}] if len(kernels) > 1 else []) + TRANSPOSE)
        _cell_bias(f"{prefix}.bias_{tag}_l0", side, out)
    out.modules.append(
        {
            "path": prefix,
            "type": CELL_NAMES[kind],
            "pytorch": kind,
            "params": {"in_features": sides[0][0]["kernel"].shape[0], "hidden_features": hidden},
            "tensors": [f"{prefix}.{k}_{t}_l0" for t in ("ih", "hh") for k in ("weight", "bias")],
        }
    )
    return True


def _dense_leaves(module: Tree) -> bool:
    kernel = module.get("kernel")
    return (
        isinstance(kernel, TensorRef)
        and len(kernel.shape) == 2
        and set(module) <= {"kernel", "bias"}
        and all(isinstance(v, TensorRef) for v in module.values())
    )


def _cell_shapes_fit(sides: tuple[list[Tree], list[Tree]], hidden: int, gates: int) -> bool:
    """Input kernels [in, w], hidden kernels [H, w], biases [w], one dtype, where the w's of a side
    add up to `gates` * H (one Dense per gate, or all gates fused into one)."""
    inputs, hiddens = sides
    width = hiddens[0]["kernel"].shape[1]
    modules = inputs + hiddens
    return (
        hidden > 0
        and width * len(hiddens) == gates * hidden
        and len(inputs) == len(hiddens)
        and len({ref.dtype for gate in modules for ref in gate.values()}) == 1
        and len({gate["kernel"].shape[0] for gate in inputs}) == 1
        and all(gate["kernel"].shape[1] == width for gate in modules)
        and all(gate["kernel"].shape[0] == hidden for gate in hiddens)
        and all(gate["bias"].shape == (width,) for gate in modules if "bias" in gate)
    )


def _cell_bias(name: str, side: list[Tree], out: Canonical) -> None:
    """PyTorch keeps a bias on both sides of every gate; Flax only on some: the rest are zero blocks."""
    present = [i for i, gate in enumerate(side) if "bias" in gate]
    width = side[0]["kernel"].shape[1]
    if not present:
        out.zeros(name, side[0]["kernel"], width * len(side), "Flax's cell has no bias on this side")
        return
    transforms: Transforms = [{"op": "concat", "axis": 0}] if len(present) > 1 else []
    missing = len(side) - len(present)
    if missing:
        transforms.append({"op": "pad", "axis": 0, "after": missing * width, "value": 0})
        zero_blocks = iter(range(len(present), len(side)))
        order = [present.index(i) if i in present else next(zero_blocks) for i in range(len(side))]
        transforms.append({"op": "gate_reorder", "axis": 0, "parts": len(side), "order": order})
    out.add(name, [side[i]["bias"] for i in present], transforms)


# --- stacked layers -------------------------------------------------------------------------------


def stacked_modules(tree: Tree) -> list[str]:
    """Dotted paths of the modules nn.scan or vmap stacked, as --unstack takes them: for each Dense
    whose kernel [L, in, out] and bias [L, out] carry a leading layer axis, the outermost module
    above it whose every tensor has that leading axis (a DenseGeneral's bias is kernel.shape[1:])."""
    found: dict[str, None] = {}

    def walk(node: Tree, where: tuple[str, ...]) -> None:
        kernel, bias = node.get("kernel"), node.get("bias")
        if (
            where
            and isinstance(kernel, TensorRef)
            and isinstance(bias, TensorRef)
            and len(kernel.shape) == 3
            and bias.shape == (kernel.shape[0], kernel.shape[2])
            and bias.shape != kernel.shape[1:]
        ):
            layers = kernel.shape[0]
            top = next(i for i in range(1, len(where) + 1) if _leading_axis(_at(tree, where[:i])) == layers)
            found[".".join(where[:top])] = None
        for key, child in node.items():
            if isinstance(child, dict):
                walk(child, (*where, key))

    walk(tree, ())
    return list(found)


def _at(tree: Tree, where: tuple[str, ...]) -> Tree:
    node = tree
    for part in where:
        node = node[part]
    return node


def _leading_axis(node: Tree) -> int | None:
    """The length of the first axis every tensor below `node` shares, or None."""
    lengths = {ref.shape[0] if ref.shape else None for ref in tensor_leaves(node)}
    return lengths.pop() if len(lengths) == 1 else None


def unstack(tree: Tree, path: str) -> int:
    """Split the module at dotted `path`, stacked by nn.scan or vmap along a leading layer axis, into
    `path.0`, `path.1`, ... in place; returns the number of layers."""
    *parents, last = path.split(".")
    node: Any = tree
    for part in parents:
        node = node.get(part) if isinstance(node, dict) else None
    stacked = node.get(last) if isinstance(node, dict) else None
    if not isinstance(stacked, dict):
        found = stacked_modules(tree)
        hint = f"; stacked modules here: {', '.join(found)}" if found else ""
        raise UsageError(f"--unstack {path}: no module at that path (top level holds {sorted(tree)[:20]}{hint})")
    lengths = {ref.shape[0] if ref.shape else 0 for ref in tensor_leaves(stacked)}
    if len(lengths) != 1 or 0 in lengths:
        raise UsageError(f"--unstack {path}: its tensors do not share a leading layer axis (first sizes: {sorted(lengths)})")
    layers = lengths.pop()
    node[last] = {str(i): _take(stacked, i) for i in range(layers)}
    return layers


def tensor_leaves(node: Tree) -> list[TensorRef]:
    """Every tensor in a tree, in tree order."""
    return [
        r for v in node.values() for r in ([v] if isinstance(v, TensorRef) else tensor_leaves(v) if isinstance(v, dict) else [])
    ]


def _take(node: Tree, index: int) -> Tree:
    return {
        k: _layer(v, index) if isinstance(v, TensorRef) else _take(v, index) if isinstance(v, dict) else v
        for k, v in node.items()
    }


def _layer(ref: TensorRef, index: int) -> TensorRef:
    """Layer `index` of a stacked tensor: a view, and a sub-span of the file when the whole has one."""
    shape = ref.shape[1:]
    nbytes = math.prod(shape) * ref.dtype.itemsize
    span = FileSpan(ref.span.path, ref.span.offset + index * nbytes, nbytes) if ref.span else None
    return TensorRef(f"{ref.name}[{index}]", ref.dtype, shape, lambda: ref.array()[index], span)
