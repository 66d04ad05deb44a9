"""Keras layers to canonical form: PyTorch names and layouts, one layer type at a time.

Every output is a lazy `TensorRef` whose `load` runs a chain of the core's transforms
(convert/transforms.py) on the stored tensor, so the chain recorded as its provenance is exactly
what was done, and nothing is read before the writer asks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from convert.dtypes import dtype as lookup_dtype
from convert.errors import CorruptInputError, MappingError, UnsupportedFormatError
from convert.tensors import TensorRef
from convert.transforms import derived
from exporters.shared.keras_naming.config import mapping

Chain = list[dict[str, Any]]

TRANSPOSE: Chain = [{"op": "transpose"}]
# Keras GRU gates are z, r, h; PyTorch's are r, z, n.
GRU_TO_TORCH = {"op": "gate_reorder", "axis": 0, "parts": 3, "order": [1, 0, 2]}
GATES = {"LSTM": 4, "GRU": 3, "SimpleRNN": 1}
CONVS = ("Conv1D", "Conv2D", "Conv3D", "Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose")
# The stored variables of each type, in the order Keras creates (and a Keras 3 file numbers) them;
# recurrent layers keep theirs in a `cell`.
ROLES: dict[str, tuple[str, ...]] = {
    "Dense": ("kernel", "bias"),
    "Embedding": ("embeddings",),
    "LayerNormalization": ("gamma", "beta"),
    "BatchNormalization": ("gamma", "beta", "moving_mean", "moving_variance"),
    "DepthwiseConv1D": ("kernel", "bias"),
    "DepthwiseConv2D": ("kernel", "bias"),
    **{kind: ("kernel", "bias") for kind in CONVS},
}
CELL_ROLES = ("kernel", "recurrent_kernel", "bias")
RECURRENT = tuple(GATES)
KNOWN = (*ROLES, *RECURRENT, "Bidirectional")
# The naming convention for variables of layers of no known type (Hugging Face's TF models, custom layers).
LEAF_NAMES = {
    "kernel": "weight",
    "gamma": "weight",
    "beta": "bias",
    "embeddings": "weight",
    "moving_mean": "running_mean",
    "moving_variance": "running_var",
}


@dataclass
class KerasLayer:
    """One layer's stored weights by role (`kernel`, `forward/recurrent_kernel`, ...) and what it is."""

    path: tuple[str, ...]  # module path: Keras layer names from the outermost model down
    kind: str | None  # Keras class name; None when neither a config nor the weights tell
    weights: dict[str, TensorRef]
    config: dict[str, Any] = field(default_factory=dict)
    inferred: bool = False  # kind told by names and shapes, not by a config


@dataclass
class Canonical:
    tensors: list[TensorRef] = field(default_factory=list)
    provenance: dict[str, dict[str, Any]] = field(default_factory=dict)  # canonical name -> where from, what done
    by_layer: dict[tuple[str, ...], list[str]] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    not_expressible: list[dict[str, Any]] = field(default_factory=list)


def conv_permutation(rank: int) -> list[int]:
    """Keras (k..., in, out) to PyTorch (out, in, k...); also (k..., out, in) to (in, out, k...) for transposed convs."""
    return [rank - 1, rank - 2, *range(rank - 2)]


def kernel_chain(rank: int) -> Chain:
    if rank == 2:
        return list(TRANSPOSE)
    if rank >= 3:
        return [{"op": "permute", "axes": conv_permutation(rank)}]
    return []


def recurrent_kind(recurrent_shape: tuple[int, ...]) -> str | None:
    """LSTM, GRU or SimpleRNN from a recurrent_kernel's shape [H, gates*H]."""
    if len(recurrent_shape) != 2 or recurrent_shape[0] == 0 or recurrent_shape[1] % recurrent_shape[0]:
        return None
    return {gates: kind for kind, gates in GATES.items()}.get(recurrent_shape[1] // recurrent_shape[0])


def to_canonical(layers: list[KerasLayer]) -> Canonical:
    out = Canonical()
    for layer in layers:
        _Converter(layer, out).run()
    return out


class _Converter:
    """Emits one layer's canonical tensors into `out`."""

    def __init__(self, layer: KerasLayer, out: Canonical) -> None:
        self.layer, self.out = layer, out
        self.where = ".".join(layer.path) or "(model)"

    def run(self) -> None:
        kind = self.layer.kind
        if kind is None or kind not in KNOWN:
            if kind is not None:
                self.out.warnings.append(
                    f"layer {self.where}: type {kind} is not one this converter knows; "
                    "its weights were named by the Keras naming convention only"
                )
            self._by_convention(self.layer.weights)
        elif kind in RECURRENT:
            self._check_roles(CELL_ROLES)
            self._recurrent(kind, "", "", self.layer.config)
        elif kind == "Bidirectional":
            self._bidirectional()
        else:
            self._check_roles(ROLES[kind] + (("depthwise_kernel",) if kind.startswith("Depthwise") else ()))
            self._check_config_shapes(kind)
            if kind.startswith("Depthwise"):
                self._depthwise()
            else:
                self._by_convention(self.layer.weights)
            if kind == "BatchNormalization":
                self._batch_norm()

    # --- emitting --------------------------------------------------------------------------------

    def emit(self, leaf: str, role: str, chain: Chain) -> None:
        """The canonical tensor `<path>.<leaf>`: the stored `role` after `chain`."""
        name = ".".join((*self.layer.path, leaf))
        source = self.layer.weights.get(role)
        if source is None:
            raise CorruptInputError(f"layer {self.where}: no stored {role}")
        try:
            ref = derived(name, [source], chain)
        except MappingError as exc:
            raise CorruptInputError(f"layer {self.where}: {role} of shape {list(source.shape)} does not fit: {exc}") from None
        self._add(
            ref,
            {
                "from": source.name,
                "keras_name": "/".join((*self.layer.path, role)),
                "keras_shape": list(source.shape),
                "dtype": source.dtype.code,
                "transforms": chain,
            },
        )

    def create(self, leaf: str, shape: tuple[int, ...], dtype_code: str, why: str) -> None:
        """A tensor PyTorch's module has and Keras's does not (zeros)."""
        name = ".".join((*self.layer.path, leaf))
        dt = lookup_dtype(dtype_code)
        self._add(TensorRef(name, dt, shape, lambda: np.zeros(shape, dt.numpy)), {"from": None, "created": "zeros", "why": why})

    def _add(self, ref: TensorRef, provenance: dict[str, Any]) -> None:
        self.out.tensors.append(ref)
        self.out.provenance[ref.name] = provenance
        self.out.by_layer.setdefault(self.layer.path, []).append(ref.name)

    def _check_roles(self, allowed: tuple[str, ...], prefix: str = "") -> None:
        extra = sorted(r for r in self.layer.weights if r.startswith(prefix) and r[len(prefix) :] not in allowed)
        if extra:
            raise UnsupportedFormatError(
                f"layer {self.where} ({self.layer.kind}) holds weights this converter does not know: {extra}"
            )

    def _check_config_shapes(self, kind: str) -> None:
        """The stored kernel and bias fit the layer its config describes: a kernel stored transposed,
        with an extra dimension or borrowed from another layer would convert into weights that
        compute something else. Sizes the config does not give (a Dense layer's input) are not checked."""
        config = self.layer.config
        sizes = {k: config.get(k) for k in ("units", "filters", "input_dim", "output_dim")}
        ints = {k: v for k, v in sizes.items() if type(v) is int}
        kernel_size = config.get("kernel_size")
        expected: dict[str, tuple[int | None, ...]] = {}
        if kind == "Dense" and "units" in ints:
            expected = {"kernel": (None, ints["units"]), "bias": (ints["units"],)}
        elif kind == "Embedding" and {"input_dim", "output_dim"} <= ints.keys():
            expected = {"embeddings": (ints["input_dim"], ints["output_dim"])}
        elif kind in CONVS and "filters" in ints and isinstance(kernel_size, list) and all(type(k) is int for k in kernel_size):
            filters = ints["filters"]
            kernel = (*kernel_size, filters, None) if kind.endswith("Transpose") else (*kernel_size, None, filters)
            expected = {"kernel": kernel, "bias": (filters,)}
        for role, shape in expected.items():
            ref = self.layer.weights.get(role)
            if ref is None:
                continue
            if len(ref.shape) != len(shape) or not all(want in (None, n) for want, n in zip(shape, ref.shape, strict=True)):
                wanted = ", ".join("?" if n is None else str(n) for n in shape)
                raise CorruptInputError(
                    f"layer {self.where} ({kind}): {role} of shape {list(ref.shape)} does not fit its config ([{wanted}])"
                )

    # --- layer types -----------------------------------------------------------------------------

    def _by_convention(self, weights: dict[str, TensorRef]) -> None:
        """kernel -> weight (transposed by rank), gamma/beta -> weight/bias, embeddings -> weight, ..."""
        for role, ref in weights.items():
            *parents, leaf = role.split("/")
            chain = kernel_chain(len(ref.shape)) if leaf == "kernel" else []
            if leaf == "bias" and len(ref.shape) == 2 and ref.shape[0] == 1:  # Hugging Face's TFConv1D: [1, nf]
                chain = [{"op": "reshape", "shape": [ref.shape[1]]}]
            self.emit(".".join((*parents, LEAF_NAMES.get(leaf, leaf))), role, chain)

    def _batch_norm(self) -> None:
        features = self.layer.weights.get("moving_mean")
        if features is None:
            raise CorruptInputError(f"layer {self.where}: BatchNormalization without moving_mean")
        self.create("num_batches_tracked", (), "I64", "PyTorch's BatchNorm counts training steps; Keras does not")

    def _depthwise(self) -> None:
        """(k..., in, mult) -> [in*mult, 1, k...]: output channel c*mult+m, as both frameworks order them."""
        role = "depthwise_kernel" if "depthwise_kernel" in self.layer.weights else "kernel"
        kernel = self.layer.weights.get(role)
        if kernel is None or len(kernel.shape) < 3:
            raise CorruptInputError(f"layer {self.where}: depthwise kernel missing or not (k..., in, multiplier)")
        rank = len(kernel.shape)
        spatial = list(kernel.shape[:-2])
        chain = [
            {"op": "reshape", "shape": [*spatial, kernel.shape[-2] * kernel.shape[-1], 1]},
            {"op": "permute", "axes": [rank - 2, rank - 1, *range(rank - 2)]},
        ]
        self.emit("weight", role, chain)
        if "bias" in self.layer.weights:
            self.emit("bias", "bias", [])

    def _bidirectional(self) -> None:
        inner = mapping(self.layer.config.get("layer"))
        for prefix, suffix in (("forward/", ""), ("backward/", "_reverse")):
            self._check_roles(CELL_ROLES, prefix)
            recurrent = self.layer.weights.get(prefix + "recurrent_kernel")
            kind = inner.get("class_name") or (recurrent_kind(recurrent.shape) if recurrent else None)
            if kind not in RECURRENT:
                raise UnsupportedFormatError(f"layer {self.where}: Bidirectional around {kind}, not LSTM, GRU or SimpleRNN")
            self._recurrent(kind, prefix, suffix, mapping(inner.get("config")))
        merge = self.layer.config.get("merge_mode", "concat")
        if merge != "concat":
            self.out.warnings.append(
                f"layer {self.where}: Bidirectional merge_mode={merge!r}; PyTorch's "
                "bidirectional RNNs concatenate, so the loader must merge the two halves itself"
            )

    def _recurrent(self, kind: str, prefix: str, suffix: str, config: dict[str, Any]) -> None:
        """One direction of an LSTM/GRU/SimpleRNN cell as PyTorch's layer 0 (`_reverse` for backward)."""
        weights = self.layer.weights
        kernel, recurrent, bias = (weights.get(prefix + r) for r in CELL_ROLES)
        gates = GATES[kind]
        if kernel is None or recurrent is None:
            raise CorruptInputError(f"layer {self.where}: {kind} without {prefix}kernel and {prefix}recurrent_kernel")
        hidden = recurrent.shape[0] if len(recurrent.shape) == 2 else -1
        if recurrent.shape != (hidden, gates * hidden) or len(kernel.shape) != 2 or kernel.shape[1] != gates * hidden:
            raise CorruptInputError(
                f"layer {self.where}: {kind} kernels {list(kernel.shape)} and {list(recurrent.shape)} do not fit {gates} gates"
            )
        self._check_activations(kind, config)
        if kind == "GRU":
            reset_after = config.get("reset_after", bias is None or len(bias.shape) == 2)
            if not reset_after:
                self._keep_keras_form(prefix, suffix)
                return
            self.emit(f"weight_ih_l0{suffix}", prefix + "kernel", [*TRANSPOSE, GRU_TO_TORCH])
            self.emit(f"weight_hh_l0{suffix}", prefix + "recurrent_kernel", [*TRANSPOSE, GRU_TO_TORCH])
            if bias is not None:
                if bias.shape != (2, 3 * hidden):
                    raise CorruptInputError(f"layer {self.where}: GRU bias {list(bias.shape)} is not [2, {3 * hidden}]")
                for index, which in enumerate(("ih", "hh")):
                    self.emit(
                        f"bias_{which}_l0{suffix}",
                        prefix + "bias",
                        [
                            {"op": "split", "axis": 0, "parts": 2, "index": index},
                            {"op": "reshape", "shape": [3 * hidden]},
                            GRU_TO_TORCH,
                        ],
                    )
            return
        # LSTM gates i, f, c, o are PyTorch's i, f, g, o; SimpleRNN has one.
        self.emit(f"weight_ih_l0{suffix}", prefix + "kernel", list(TRANSPOSE))
        self.emit(f"weight_hh_l0{suffix}", prefix + "recurrent_kernel", list(TRANSPOSE))
        if bias is not None:
            if bias.shape != (gates * hidden,):
                raise CorruptInputError(f"layer {self.where}: {kind} bias {list(bias.shape)} is not [{gates * hidden}]")
            self.emit(f"bias_ih_l0{suffix}", prefix + "bias", [])
            self.create(
                f"bias_hh_l0{suffix}",
                bias.shape,
                bias.dtype.code,
                f"Keras's {kind} has one bias; PyTorch adds bias_ih and bias_hh",
            )

    def _keep_keras_form(self, prefix: str, suffix: str) -> None:
        names = []
        for role in CELL_ROLES:
            if prefix + role in self.layer.weights:
                self.emit(f"keras_{role}{suffix}", prefix + role, [])
                names.append(".".join((*self.layer.path, f"keras_{role}{suffix}")))
        reason = (
            "GRU with reset_after=False applies the reset gate before the recurrent matmul; "
            "PyTorch's GRU applies it after, so no PyTorch GRU computes the same function"
        )
        self.out.not_expressible.append(
            {
                "layer": self.where,
                "type": "GRU",
                "reason": reason,
                "kept_as": names,
                "layout": "Keras: kernel [in, 3H], recurrent_kernel [H, 3H], bias [3H]; gates z, r, h",
            }
        )
        self.out.warnings.append(f"layer {self.where}: {reason}; its weights are kept in Keras form as {names}")

    def _check_activations(self, kind: str, config: dict[str, Any]) -> None:
        expected = {"activation": ("tanh",) if kind != "SimpleRNN" else ("tanh", "relu")}
        if kind != "SimpleRNN":
            expected["recurrent_activation"] = ("sigmoid",)
        for key, allowed in expected.items():
            value = config.get(key)
            if value is not None and value not in allowed:
                self.out.warnings.append(
                    f"layer {self.where}: {kind} {key}={value!r}; PyTorch's {kind.replace('Simple', '')} "
                    f"uses {' or '.join(allowed)}, so it will not compute the same function"
                )
