"""Keras and TensorFlow variable names to layers: module paths, variable roles, and layer types.

Names such as `bidirectional/forward_lstm_1/lstm_cell/kernel:0` (Keras 2 and 3 `.h5`, TF
checkpoints) or `tf_bert_model/bert/encoder/layer_._0/output/dense/kernel:0` (Hugging Face) carry the
module path and the variable's role; a recurrent layer's `cell` and a Bidirectional wrapper's
forward/backward halves are folded into the role, so the module is named after the layer. Where no
config says what a layer is, its variables' roles and shapes do, or it stays untyped and the
naming convention alone applies (`kernel` -> `weight`, and so on).
"""

from __future__ import annotations

import re
from collections.abc import Collection, Sequence
from typing import Any

from convert.errors import CorruptInputError, UnsupportedFormatError
from convert.tensors import TensorRef
from exporters.shared.keras_naming.config import ConfigLayer, mapping, to_snake
from exporters.shared.keras_naming.layers import CELL_ROLES, KNOWN, ROLES, KerasLayer, recurrent_kind

_CELL = re.compile(r"^(cell|[A-Za-z0-9_]*_cell)$")
_UNIQUE_SUFFIX = re.compile(r"^(.+)_[0-9]+$")
_DIRECTIONS = ("forward", "backward")
# Hyper-parameters that remove an optional variable, by the variable they remove.
_OPTIONAL = {"bias": "use_bias", "gamma": "scale", "beta": "center"}
KIND_BY_KEY = {to_snake(kind): kind for kind in KNOWN}

Named = tuple[list[str], TensorRef]  # (name components, stored tensor)


def components(name: str) -> list[str]:
    """A variable name's levels, as Hugging Face reads TF names: ':0' dropped, 'a___b' keeps b,
    '_._' separates levels (how TF names the items of a list of layers)."""
    name = re.sub(r":\d+$", "", name)
    parts: list[str] = []
    for part in name.split("/"):
        parts.extend(part.rpartition("___")[2].split("_._"))
    return [p for p in parts if p]


def under_layer(layer: str, parts: list[str]) -> list[str]:
    """A legacy `.h5` weight name read from its layer's group: from the layer's own name on (a
    subclassed or Hugging Face model scopes names by the model first), else under the layer."""
    return parts[parts.index(layer) :] if layer in parts else [layer, *parts]


def layer_weights(layer: str, weights: list[list[str]], known: Collection[tuple[str, ...]]) -> list[list[str]]:
    """The weights of one Keras 2 layer group (`layer`, as `layer_names` lists it), each named from the layer on.

    Keras's own loader (`load_weights_from_hdf5_group`, keras/src/legacy/saving/legacy_h5_format.py) gives a
    group's weights to the layer it names, in `weight_names` order: the names are only keys. Keras 2 in graph
    mode (TF1-era Keras, or a model built twice in one session) made every variable scope unique, so group
    `conv2d_1` holds `conv2d_1_1/kernel:0` and a nested model's layer `d1` holds `d1_1/kernel:0`. A scope that
    is the layer's own name with a `_N` suffix, for every weight of the group, is the layer; deeper, a scope
    that is a known layer's name (`known`: the config's layer paths) with such a suffix is that layer.
    """
    firsts = {parts[0] for parts in weights if len(parts) > 1}
    own = next(iter(firsts)) if len(firsts) == 1 else None
    renamed = own is not None and _uniquified(own) == layer and (layer, own) not in known
    out = []
    for parts in weights:
        if renamed and len(parts) > 1:
            parts = [layer, *parts[1:]]
        out.append(_known_levels(under_layer(layer, parts), known))
    return out


def _uniquified(scope: str) -> str | None:
    """The name TF made `scope` unique from (`conv2d_1_1` -> `conv2d_1`), or None."""
    match = _UNIQUE_SUFFIX.match(scope)
    return match.group(1) if match else None


def _known_levels(parts: list[str], known: Collection[tuple[str, ...]]) -> list[str]:
    path = parts[:1]
    for part in parts[1:-1]:
        base = _uniquified(part)
        if (*path, part) not in known and base is not None and (*path, base) in known:
            part = base
        path.append(part)
    return [*path, parts[-1]]


def drop_common_scope(named: list[Named]) -> list[Named]:
    """Without layer groups (TF checkpoints), the outer model scope is the level every module shares."""
    modules = [split_role(parts)[0] for parts, _ in named]
    if modules and all(len(m) >= 2 for m in modules) and len({m[0] for m in modules}) == 1:
        return [(parts[1:], ref) for parts, ref in named]
    return named


def split_role(parts: Sequence[str]) -> tuple[tuple[str, ...], str]:
    """(module path, role): a recurrent cell and a Bidirectional half fold into the role."""
    *body, leaf = parts
    if len(body) >= 1 and leaf in CELL_ROLES and _CELL.match(body[-1]):
        body.pop()
        half = body[-1].split("_")[0] if body else ""
        if half in _DIRECTIONS and (body[-1] in ("forward_layer", "backward_layer") or len(body) >= 2):
            body.pop()
            return tuple(body), f"{half}/{leaf}"
    return tuple(body), leaf


def group_named(named: list[Named], config_layers: list[ConfigLayer] | None, label: str) -> list[KerasLayer]:
    """Layers from named variables; their types from the model config when there is one, else inferred."""
    by_path: dict[tuple[str, ...], dict[str, TensorRef]] = {}
    for parts, ref in named:
        if not parts:
            raise CorruptInputError(f"{label}: a weight has an empty name ({ref.name!r})")
        path, role = split_role(parts)
        weights = by_path.setdefault(path, {})
        if role in weights:
            raise CorruptInputError(
                f"{label}: two weights are both {'/'.join(path + (role,))} ({weights[role].name!r} and {ref.name!r})"
            )
        weights[role] = ref
    configs = {layer.path: layer for layer in config_layers or []}
    layers = []
    for path, weights in by_path.items():
        known = configs.get(path)
        if known is not None:
            layers.append(KerasLayer(path, known.kind, weights, known.config))
        else:
            layers.append(KerasLayer(path, infer_kind(path, weights), weights, inferred=True))
    return layers


def infer_kind(path: tuple[str, ...], weights: dict[str, TensorRef]) -> str | None:
    """A layer's type from its variables' roles and shapes; None if they fit no known type."""
    roles = set(weights)
    if any("/" in role for role in roles):
        halves = {role.split("/")[0] for role in roles}
        return "Bidirectional" if halves == set(_DIRECTIONS) else None
    if "recurrent_kernel" in roles:
        return recurrent_kind(weights["recurrent_kernel"].shape)
    kernel = weights.get("kernel") or weights.get("depthwise_kernel")
    if "moving_mean" in roles:
        return "BatchNormalization"
    if roles == {"embeddings"}:
        return "Embedding"
    if roles and roles <= {"gamma", "beta"}:
        return "LayerNormalization"
    if kernel is None or not roles <= {"kernel", "depthwise_kernel", "bias"} or len(roles - {"bias"}) != 1:
        return None
    rank = len(kernel.shape)
    if rank == 2 and "kernel" in roles:
        return "Dense"
    if rank not in (3, 4, 5):
        return None
    if "depthwise_kernel" in roles or _looks_depthwise(path, kernel, weights.get("bias")):
        return f"DepthwiseConv{rank - 2}D" if rank < 5 else None
    return f"Conv{rank - 2}D"


def _looks_depthwise(path: tuple[str, ...], kernel: TensorRef, bias: TensorRef | None) -> bool:
    """Keras 3 names a depthwise kernel `kernel` too: its bias has in*multiplier entries, or its name says so."""
    channels, last = kernel.shape[-2], kernel.shape[-1]
    by_bias = bias is not None and bias.shape == (channels * last,) and channels > 1
    return by_bias or bool(path and path[-1].startswith("depthwise"))


def kind_from_key(*keys: str) -> str | None:
    """A Keras 3 weights file keys a layer by its class name in snake case (`dense`, `conv2d_1`)."""
    for key in keys:
        kind = KIND_BY_KEY.get(re.sub(r"_[0-9]+$", "", key))
        if kind is not None:
            return kind
    return None


def kind_by_shapes(shapes: list[tuple[int, ...]]) -> str | None:
    """A layer's type from its numbered variables' shapes alone, where only one type fits them:
    kernel and bias (Dense, Conv), two or four equal vectors (LayerNormalization, BatchNormalization)."""
    if len(shapes) == 2 and len(shapes[1]) == 1 and 2 <= len(shapes[0]) <= 5 and shapes[0][-1] == shapes[1][0]:
        return "Dense" if len(shapes[0]) == 2 else f"Conv{len(shapes[0]) - 2}D"
    if len(shapes) in (2, 4) and all(len(s) == 1 for s in shapes) and len(set(shapes)) == 1:
        return "LayerNormalization" if len(shapes) == 2 else "BatchNormalization"
    return None


def numbered_roles(kind: str | None, struct: tuple[str, ...], count: int, config: dict[str, Any] | None, where: str) -> list[str]:
    """Roles of a Keras 3 layer's numbered variables (`vars/0`, `vars/1`, ...), in Keras's creation order."""
    prefix = ""
    if struct and struct[-1] == "cell":
        roles = list(CELL_ROLES)
        half = struct[0].split("_")[0] if len(struct) == 2 else ""
        prefix = f"{half}/" if half in _DIRECTIONS else ""
        config = mapping(mapping(config.get("layer")).get("config")) if prefix and config is not None else config
    elif struct or kind not in ROLES:
        raise UnsupportedFormatError(
            f"layer {where} ({kind or 'type unknown'}): its {count} weights are only "
            "numbered in the file, and this converter does not know that layer type's "
            "variables" + ("" if config is not None else "; pass the model's config (--config)")
        )
    else:
        roles = list(ROLES[kind])
    if config is not None:
        roles = [r for r in roles if config.get(_OPTIONAL.get(r, ""), True) is not False]
    elif count == len(roles) - 1 and roles[-1] == "bias":
        roles.pop()
    if len(roles) != count:
        raise CorruptInputError(f"layer {where} ({kind}): {count} weights stored, {len(roles)} expected ({roles})")
    return [prefix + r for r in roles]
