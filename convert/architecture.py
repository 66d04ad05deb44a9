"""Infer a model's modules from its state dict's tensor names and shapes alone.

A plain PyTorch checkpoint holds no class names, so the Rust loader would otherwise have to guess
what `encoder.layers.0.linear1.weight` belongs to.  PyTorch's own modules name and shape their
tensors in fixed ways; this module matches those conventions and reports, per module path, the
layer type and the hyper-parameters the shapes determine.  Names come from untrusted files: every
rule must match exactly, and anything that does not is listed as unknown instead of guessed at.
Only the standard library is used, so inference works without torch or numpy installed.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

if TYPE_CHECKING:  # annotations only: this module stands alone (tests load it from its file, without numpy)
    from .manifest_model import Alternative, InferredArchitecture, JsonObject, Module, Parametrization

Shape = tuple[int, ...]
Leaves = dict[str, Shape]  # a module's own tensors, by the last component of their names
Spec = tuple[str, dict[str, Any]]  # (module type, params)

# A 2-D weight without bias is an Embedding only when its module's name says so.
EMBEDDING_HINTS = ("embed", "wte", "wpe", "tok", "emb", "position", "lookup", "shared")

# Hugging Face models whose projections are transformers' Conv1D (weight [in, out], bias [out]), by
# config.json `model_type`, and the module names that are Conv1D in them (modeling_gpt2.py,
# modeling_openai.py, modeling_imagegpt.py, modeling_decision_transformer.py).
HF_CONV1D_MODEL_TYPES = frozenset({"gpt2", "openai-gpt", "imagegpt", "decision_transformer"})
HF_CONV1D_LEAVES = frozenset({"c_attn", "q_attn", "c_proj", "c_fc"})
# Hugging Face module names that are nn.Embedding, and bias-free projections that are nn.Linear, across
# the transformers model files; a name in neither stays a guess.
HF_EMBEDDING_HINTS = ("embed", "wte", "wpe", "shared", "relative_attention_bias")
HF_LINEAR_LEAVES = frozenset(
    {
        "lm_head",
        "q",
        "k",
        "v",
        "o",
        "query",
        "key",
        "value",
        "dense",
        "q_proj",
        "k_proj",
        "v_proj",
        "o_proj",
        "out_proj",
        "gate_proj",
        "up_proj",
        "down_proj",
        "wi",
        "wo",
        "wi_0",
        "wi_1",
        "fc1",
        "fc2",
        "score",
        "classifier",
        "w1",
        "w2",
        "w3",
    }
)

# [0-9], not \d: \d also matches non-ASCII digits, and "l01" must not alias "l1".
_RNN_LEAF = re.compile(r"(weight_ih|weight_hh|weight_hr|bias_ih|bias_hh)_l(0|[1-9][0-9]*)(_reverse)?")
_RNN_BY_GATES = {4: "LSTM", 3: "GRU", 1: "RNN"}
_ATTENTION_LEAVES = frozenset(
    {"in_proj_weight", "in_proj_bias", "q_proj_weight", "k_proj_weight", "v_proj_weight", "bias_k", "bias_v"}
)
_BATCH_NORM_LEAVES = frozenset({"running_mean", "running_var", "num_batches_tracked", "weight", "bias"})
# torch.nn.utils.parametrize keeps a parametrized tensor N of module P as P.parametrizations.N.original
# (original0, original1, ... when the parametrization splits it) and its state as P.parametrizations.N.0.*;
# these records belong to module P, under the leaf "N.original0", "N.0._u", ...
_PARAMETRIZED = re.compile(r"(?:(.+)\.)?parametrizations\.([^.]+)\.(original[0-9]*|0\._[uv])")


class _Record(NamedTuple):
    order: int  # position among the tensors read (a field named `index` would shadow tuple.index)
    name: str
    path: str | None  # None: the tensor cannot belong to a module (root, malformed name or shape)
    leaf: str
    shape: Shape


def infer_architecture(tensors: Sequence[tuple[str, tuple[int, ...]]], config: JsonObject | None = None) -> InferredArchitecture:
    """tensors: (dotted name, shape) in state-dict order; config: a Hugging Face config.json, which
    decides what names and shapes alone leave open. Returns a JSON-ready dict.

    Items that are not a (str, shape) pair carry no name to report and are skipped; every other
    name ends up in exactly one module's `tensors` or in `unknown`. A module whose type is a guess
    lists the other types its tensors fit as `alternatives` (each a type and its params).
    """
    records = _read(tensors)
    groups: dict[str, list[_Record]] = {}
    for record in records:
        if record.path is not None:
            groups.setdefault(record.path, []).append(record)

    found: list[tuple[str, Spec, list[_Record]]] = []
    claimed: set[str] = set()
    # Attention first: it claims its `out_proj` child, which alone would look like a Linear.
    for path in groups:
        out_path = f"{path}.out_proj" if path else "out_proj"
        spec = _attention(_leaves(groups, path), _leaves(groups, out_path))
        if spec is not None:
            found.append((path, spec, groups[path] + groups[out_path]))
            claimed.update((path, out_path))
    folds: dict[str, dict[str, Any]] = {}
    for path, members in groups.items():
        leaves, folds[path] = unparametrized(_leaves(groups, path))
        spec = None if path in claimed else _spectral_convtranspose(_classify(path, leaves), leaves, folds[path])
        if spec is not None:
            found.append((path, spec, members))
            claimed.add(path)

    found.sort(key=lambda item: min(record.order for record in item[2]))
    modules = [_module_entry(path, spec, members, folds[path]) for path, spec, members in found]
    for module in modules:
        _alternatives(module, unparametrized(_leaves(groups, module["path"]))[0] or {}, folds[module["path"]])
        if config:
            _decide_from_config(module, config)
    return {
        "inferred": True,
        "modules": modules,
        # A record with path None is never claimed, so it lands here too.
        "unknown": [record.name for record in records if record.path not in claimed],
    }


def _module_entry(path: str, spec: Spec, members: list[_Record], folds: dict[str, dict[str, Any]]) -> Module:
    kind, params = spec
    tensors = [record.name for record in sorted(members, key=lambda record: record.order)]
    entry: Module = {"path": path, "type": kind, "params": params, "tensors": tensors}
    if folds:
        names = {record.leaf: record.name for record in members}
        entry["parametrizations"] = {tensor: _parametrization(fold, names) for tensor, fold in folds.items()}
    return entry


def _parametrization(fold: dict[str, Any], names: dict[str, str]) -> Parametrization:
    """A fold as the manifest records it: its pieces by their full names; weight norm's dim."""
    tensors = [names[leaf] for leaf in fold["leaves"]]
    if "dim" in fold:
        return {"type": fold["type"], "by": fold["by"], "dim": fold["dim"], "tensors": tensors}
    return {"type": fold["type"], "by": fold["by"], "tensors": tensors}


# --- weight norm and spectral norm ------------------------------------------------------------------

WEIGHT_NORM_HOOK = "torch.nn.utils.weight_norm"
SPECTRAL_NORM_HOOK = "torch.nn.utils.spectral_norm"
WEIGHT_NORM_PARAMETRIZATION = "torch.nn.utils.parametrizations.weight_norm"
SPECTRAL_NORM_PARAMETRIZATION = "torch.nn.utils.parametrizations.spectral_norm"


def unparametrized(leaves: Leaves | None) -> tuple[Leaves | None, dict[str, dict[str, Any]]]:
    """A module's leaves with each weight-normed or spectral-normed tensor N in place of its pieces
    (N of the weight's shape), and what each N is: {N: {type, by, leaves (the pieces, in the order
    the fold takes them), dim (weight norm: the axis g keeps, None for one norm over all)}}.
    Pieces are recognized by name and by the shapes torch gives them, so a stray `x_g` stays itself."""
    if leaves is None:
        return None, {}
    plain, folds = dict(leaves), {}
    for leaf in leaves:
        found = _piece_set(leaf, leaves)
        if found is None:
            continue
        tensor, fold, shape = found
        if tensor in plain or not all(p in plain for p in fold["leaves"]):
            continue
        for piece in fold["leaves"]:
            del plain[piece]
        plain[tensor] = shape
        folds[tensor] = fold
    return plain, folds


def _piece_set(leaf: str, leaves: Leaves) -> tuple[str, dict[str, Any], Shape] | None:
    """(tensor, its fold, its shape) when `leaf` starts a complete weight-norm or spectral-norm set."""
    if leaf.endswith("_g"):  # weight_norm's hook: N_g, N_v
        tensor = leaf[:-2]
        return _weight_norm(tensor, WEIGHT_NORM_HOOK, leaf, f"{tensor}_v", leaves)
    if leaf.endswith(".original0") and f"{leaf[:-1]}1" in leaves:
        tensor = leaf[: -len(".original0")]
        return _weight_norm(tensor, WEIGHT_NORM_PARAMETRIZATION, leaf, f"{leaf[:-1]}1", leaves)
    if leaf.endswith("_orig"):  # spectral_norm's hook: N_orig, N_u, N_v
        tensor = leaf[: -len("_orig")]
        return _spectral_norm(tensor, SPECTRAL_NORM_HOOK, [leaf, f"{tensor}_u", f"{tensor}_v"], leaves)
    if leaf.endswith(".original") and f"{leaf[:-9]}.0._u" in leaves:
        tensor = leaf[: -len(".original")]
        return _spectral_norm(tensor, SPECTRAL_NORM_PARAMETRIZATION, [leaf, f"{tensor}.0._u", f"{tensor}.0._v"], leaves)
    return None


def _weight_norm(tensor: str, by: str, g_leaf: str, v_leaf: str, leaves: Leaves) -> tuple[str, dict[str, Any], Shape] | None:
    g, v = leaves[g_leaf], leaves.get(v_leaf)
    if not tensor or v is None or not v:
        return None
    if g == ():
        dim = None
    else:
        kept = [i for i in range(len(v)) if g == tuple(v[i] if j == i else 1 for j in range(len(v)))]
        if not kept:
            return None
        dim = kept[0]
    return tensor, {"type": "weight_norm", "by": by, "dim": dim, "leaves": [g_leaf, v_leaf]}, v


def _spectral_norm(tensor: str, by: str, pieces: list[str], leaves: Leaves) -> tuple[str, dict[str, Any], Shape] | None:
    if not tensor or not all(p in leaves for p in pieces):
        return None
    w, u, v = (leaves[p] for p in pieces)
    dims = [d for d in (0, 1)[: len(w)] if w[d] and u == (w[d],) and v == (_numel(w) // w[d],)]
    if not dims:
        return None
    return tensor, {"type": "spectral_norm", "by": by, "dims": dims, "leaves": pieces}, w


def _numel(shape: Shape) -> int:
    n = 1
    for d in shape:
        n *= d
    return n


def _spectral_convtranspose(spec: Spec | None, leaves: Leaves | None, folds: dict[str, dict[str, Any]]) -> Spec | None:
    """A convolution whose spectral norm can only run over dim 1 is a ConvTranspose (the only module
    torch gives dim 1; its bias has the weight's second size); one with as many input as output
    channels could be either (`either_dim`, an alternative type)."""
    fold = folds.get("weight")
    if fold is None or fold["type"] != "spectral_norm" or leaves is None:
        return spec
    dims = fold.pop("dims")
    weight, bias = leaves["weight"], leaves.get("bias")
    conv = len(weight) in (3, 4, 5) and leaves.keys() <= {"weight", "bias"}
    if conv and dims == [1] and bias in (None, weight[1:2]):
        return _conv_transpose(f"Conv{len(weight) - 2}d", _conv_params(weight, bias))
    fold["either_dim"] = conv and spec is not None and dims == [0, 1]
    return spec


def _conv_transpose(kind: str, params: dict[str, Any]) -> Spec:
    """The ConvTranspose whose weight [in, out/groups, k...] has the shape of Conv `params`."""
    return f"ConvTranspose{kind[4:]}", {
        "in_channels": params["out_channels"],
        "out_channels_per_group": params["in_channels_per_group"],
        "kernel_size": params["kernel_size"],
        "bias": params["bias"],
    }


def _read(tensors: Iterable[object]) -> list[_Record]:
    records = []
    for index, item in enumerate(tensors):
        if isinstance(item, (tuple, list)) and len(item) == 2 and isinstance(item[0], str):
            records.append(_record(index, item[0], item[1]))
    return records


def _record(index: int, name: str, raw_shape: object) -> _Record:
    shape = _shape(raw_shape)
    path, _, leaf = name.rpartition(".")
    parametrized = _PARAMETRIZED.fullmatch(name)
    if parametrized:
        path, leaf = parametrized[1] or "", f"{parametrized[2]}.{parametrized[3]}"
    # A tensor at the root (no dot) belongs to the module at path "": a bare nn.LSTM saved alone.
    usable = shape is not None and "" not in name.split(".")
    return _Record(index, name, path if usable else None, leaf, shape or ())


def _shape(value: object) -> Shape | None:
    """A shape is a tuple or list of non-negative ints (bool is an int subclass; reject it)."""
    if not isinstance(value, (tuple, list)):
        return None
    if all(isinstance(dim, int) and not isinstance(dim, bool) and dim >= 0 for dim in value):
        return tuple(value)
    return None


def _leaves(groups: dict[str, list[_Record]], path: str) -> Leaves | None:
    """None when the path is absent or names a leaf twice: a duplicated name fits no rule."""
    members = groups.get(path)
    if members is None:
        return None
    leaves = {record.leaf: record.shape for record in members}
    return leaves if len(leaves) == len(members) else None


def _classify(path: str, leaves: Leaves | None) -> Spec | None:
    if leaves is None:
        return None
    if any(_RNN_LEAF.fullmatch(leaf) for leaf in leaves):
        return _recurrent(leaves)
    if "running_mean" in leaves or "running_var" in leaves:
        return _batch_norm(leaves)
    if "weight" in leaves and leaves.keys() <= {"weight", "bias"}:
        return _weighted(path, leaves["weight"], leaves.get("bias"))
    return None


def _embedding(weight: Shape) -> Spec:
    return "Embedding", {"num_embeddings": weight[0], "embedding_dim": weight[1]}


def _linear(weight: Shape, bias: bool) -> Spec:
    return "Linear", {"in_features": weight[1], "out_features": weight[0], "bias": bias}


def _conv1d_hf(weight: Shape) -> Spec:
    """transformers' Conv1D: weight [in, out], bias [out]."""
    return "Conv1D", {"in_features": weight[0], "out_features": weight[1], "bias": True}


def _weighted(path: str, weight: Shape, bias: Shape | None) -> Spec | None:
    """Modules whose only tensors are `weight` and an optional `bias` of shape [weight rows]
    (or, for transformers' Conv1D, [weight columns])."""
    rank = len(weight)
    if rank == 2 and bias is not None and weight[0] != weight[1] and bias == weight[1:]:
        return _conv1d_hf(weight)
    if bias is not None and (rank == 0 or bias != weight[:1]):
        return None
    if rank == 1 and bias is None and weight == (1,):
        return "PReLU", {"num_parameters": 1}  # a norm over one feature would be constant
    if rank == 1:
        # Also what GroupNorm, RMSNorm and BatchNorm(track_running_stats=False) leave behind.
        return "LayerNorm", {"normalized_shape": list(weight), "elementwise_affine": True, "bias": bias is not None}
    if rank == 2:
        leaf = path.rpartition(".")[2].lower()
        if bias is None and any(hint in leaf for hint in EMBEDDING_HINTS):
            return _embedding(weight)
        return _linear(weight, bias is not None)
    if rank in (3, 4, 5):
        # ConvTranspose stores [in, out/groups, k...] under the same names: indistinguishable.
        return f"Conv{rank - 2}d", _conv_params(weight, bias)
    return None


def _conv_params(weight: Shape, bias: Shape | None) -> dict[str, Any]:
    return {
        "out_channels": weight[0],
        "in_channels_per_group": weight[1],
        "kernel_size": list(weight[2:]),
        "bias": bias is not None,
    }


def _alternatives(module: Module, leaves: Leaves, folds: dict[str, dict[str, Any]]) -> None:
    """Record the other types a guessed module's tensors fit: the same shapes are an Embedding or a
    bias-free Linear, a Linear or a square Conv1D (named as transformers names them), a bias-free
    norm or a per-channel PReLU, a spectral-normed Conv or ConvTranspose with as many input as output
    channels (torch normalizes their weights over different axes)."""
    weight, kind = leaves.get("weight", ()), module["type"]
    others: list[Spec] = []
    if folds.get("weight", {}).get("either_dim"):
        others = [_conv_transpose(kind, module["params"])]
    elif kind in ("Linear", "Embedding") and len(weight) == 2 and "bias" not in leaves:
        others = [_linear(weight, False) if kind == "Embedding" else _embedding(weight)]
    elif (
        kind == "Linear" and len(weight) == 2 and weight[0] == weight[1] and module["path"].rpartition(".")[2] in HF_CONV1D_LEAVES
    ):
        others = [_conv1d_hf(weight)]  # only transformers' models have Conv1D, under these names
    elif kind == "LayerNorm" and len(weight) == 1 and "bias" not in leaves:
        others = [("PReLU", {"num_parameters": weight[0]})]
    if others:
        module["alternatives"] = [{"type": t, "params": p} for t, p in others]


def _decide_from_config(module: Module, config: dict[str, Any]) -> None:
    """Hugging Face conventions by config.json's model_type: Conv1D projections in the GPT-2
    family, nn.Embedding and nn.Linear by the names transformers gives them."""
    model_type = str(config.get("model_type", ""))
    leaf = module["path"].rpartition(".")[2]
    choices: list[Alternative] = [{"type": module["type"], "params": module["params"]}, *module.get("alternatives", [])]
    wanted = None
    if model_type in HF_CONV1D_MODEL_TYPES and leaf in HF_CONV1D_LEAVES:
        wanted = "Conv1D"
    elif model_type and {"Embedding", "Linear"} <= {c["type"] for c in choices}:
        if any(h in leaf.lower() for h in HF_EMBEDDING_HINTS):
            wanted = "Embedding"
        elif leaf in HF_LINEAR_LEAVES:
            wanted = "Linear"
    chosen = next((c for c in choices if c["type"] == wanted), None)
    if chosen is not None:
        decided_by = f"config.json model_type {model_type!r}"
        module.update({"type": chosen["type"], "params": chosen["params"], "decided_by": decided_by})
        module.pop("alternatives", None)


def _batch_norm(leaves: Leaves) -> Spec | None:
    """Running statistics make it BatchNorm (any dimensionality); weight and bias come as a pair."""
    if not leaves.keys() <= _BATCH_NORM_LEAVES or "running_mean" not in leaves:
        return None
    features = leaves["running_mean"]
    affine = "weight" in leaves
    if len(features) != 1 or affine != ("bias" in leaves):
        return None
    if any(leaves[key] != features for key in ("running_var", "weight", "bias") if key in leaves):
        return None
    if leaves.get("num_batches_tracked", ()) != ():  # absent in checkpoints older than PyTorch 0.4.1
        return None
    return "BatchNorm", {"num_features": features[0], "affine": affine, "track_running_stats": True}


def _recurrent(leaves: Leaves) -> Spec | None:
    """LSTM, GRU or RNN: the gate count (weight_hh rows / hidden_size) tells them apart."""
    parts: dict[tuple[str, int, int], Shape] = {}
    for leaf, shape in leaves.items():
        match = _RNN_LEAF.fullmatch(leaf)
        if match is None:
            return None
        parts[(match[1], int(match[2]), 1 if match[3] else 0)] = shape

    layers = 1 + max(layer for _, layer, _ in parts)
    directions = 2 if any(direction for _, _, direction in parts) else 1
    kinds = {"weight_ih", "weight_hh"}
    kinds |= {"bias_ih", "bias_hh"} if ("bias_ih", 0, 0) in parts else set()
    kinds |= {"weight_hr"} if ("weight_hr", 0, 0) in parts else set()
    # Every part lies in the layers x directions x kinds grid; equal counts mean the grid is full.
    # Counting, not building the grid, keeps a name like "weight_ih_l999999999" cheap.
    if any(kind not in kinds for kind, _, _ in parts) or len(parts) != layers * directions * len(kinds):
        return None

    sizes = _recurrent_sizes(parts)
    if sizes is None:
        return None
    input_size, hidden, gates, proj = sizes
    recurrent = proj or hidden
    expected = {
        "weight_hh": (gates * hidden, recurrent),
        "weight_hr": (proj, hidden),
        "bias_ih": (gates * hidden,),
        "bias_hh": (gates * hidden,),
    }
    for (kind, layer, _), shape in parts.items():
        want: tuple[int, ...]
        if kind == "weight_ih":  # deeper layers read the previous layer's (both directions') output
            want = (gates * hidden, input_size if layer == 0 else directions * recurrent)
        else:
            want = expected[kind]
        if shape != want:
            return None

    kind = _RNN_BY_GATES[gates]
    params: dict[str, Any] = {
        "input_size": input_size,
        "hidden_size": hidden,
        "num_layers": layers,
        "bias": "bias_ih" in kinds,
        "bidirectional": directions == 2,
    }
    if kind == "LSTM":
        params["proj_size"] = proj
    if kind == "RNN":
        params["nonlinearity"] = None  # tanh and relu leave identical tensors: not recoverable
    return kind, params


def _recurrent_sizes(parts: dict[tuple[str, int, int], Shape]) -> tuple[int, int, int, int] | None:
    """(input_size, hidden_size, gates, proj_size) from layer 0; the caller checks the rest."""
    weight_ih, weight_hh = parts[("weight_ih", 0, 0)], parts[("weight_hh", 0, 0)]
    if len(weight_ih) != 2 or len(weight_hh) != 2:
        return None
    # weight_hr is [proj_size, hidden_size]; without projection, hidden_size is weight_hh's columns.
    weight_hr = parts.get(("weight_hr", 0, 0), (0, weight_hh[1]))
    if len(weight_hr) != 2:
        return None
    proj, hidden = weight_hr
    if hidden == 0 or weight_hh[0] % hidden:
        return None
    gates = weight_hh[0] // hidden
    if gates not in _RNN_BY_GATES or (proj and (gates != 4 or proj >= hidden)):
        return None
    return weight_ih[1], hidden, gates, proj


def _attention(leaves: Leaves | None, out_proj: Leaves | None) -> Spec | None:
    """nn.MultiheadAttention: packed `in_proj_weight`, or q/k/v weights when kdim/vdim differ."""
    if leaves is None or out_proj is None or not leaves.keys() <= _ATTENTION_LEAVES:
        return None
    if "weight" not in out_proj or not out_proj.keys() <= {"weight", "bias"}:
        return None
    out_weight = out_proj["weight"]
    if len(out_weight) != 2 or out_weight[0] != out_weight[1] or out_weight[0] == 0:
        return None
    embed = out_weight[0]
    dims = _attention_dims(leaves, embed)
    biases = _attention_biases(leaves, out_proj, embed)
    if dims is None or biases is None:
        return None
    return "MultiheadAttention", {
        "embed_dim": embed,
        "kdim": dims[0],
        "vdim": dims[1],
        "bias": biases[0],
        "add_bias_kv": biases[1],
        "num_heads": None,  # heads split embed_dim without leaving a trace in any shape
    }


def _attention_dims(leaves: Leaves, embed: int) -> tuple[int, int] | None:
    """(kdim, vdim)."""
    separate = [leaves.get(key) for key in ("q_proj_weight", "k_proj_weight", "v_proj_weight")]
    if "in_proj_weight" in leaves:
        packed_ok = leaves["in_proj_weight"] == (3 * embed, embed) and separate == [None, None, None]
        return (embed, embed) if packed_ok else None
    query, key, value = separate
    if query != (embed, embed) or key is None or value is None:
        return None
    if len(key) != 2 or len(value) != 2 or key[0] != embed or value[0] != embed:
        return None
    return key[1], value[1]


def _attention_biases(leaves: Leaves, out_proj: Leaves, embed: int) -> tuple[bool, bool] | None:
    """(bias, add_bias_kv). `bias` adds both in_proj_bias and out_proj.bias, so both or neither."""
    bias = "in_proj_bias" in leaves
    add_bias_kv = "bias_k" in leaves
    if bias != ("bias" in out_proj) or add_bias_kv != ("bias_v" in leaves):
        return None
    if bias and (leaves["in_proj_bias"] != (3 * embed,) or out_proj["bias"] != (embed,)):
        return None
    if add_bias_kv and not leaves["bias_k"] == leaves["bias_v"] == (1, 1, embed):
        return None
    return bias, add_bias_kv


def decide_modules(architecture: InferredArchitecture, choices: str, error: type[Exception]) -> None:
    """Apply the user's `module_types` option ("PATH=TYPE,PATH=TYPE"): each path must be an inferred
    module and each type one of the types its tensors fit (its type or an alternative)."""
    by_path = {m["path"]: m for m in architecture["modules"]}
    for item in filter(None, (part.strip() for part in choices.split(","))):
        path, sep, kind = item.rpartition("=")
        module = by_path.get(path) if sep else None
        if module is None:
            raise error(
                f"module_types: {item!r} names no module (expected PATH=TYPE with PATH one of the architecture's module paths)"
            )
        fits: list[Alternative] = [{"type": module["type"], "params": module["params"]}, *module.get("alternatives", [])]
        chosen = next((f for f in fits if f["type"] == kind), None)
        if chosen is None:
            raise error(f"module_types: {path!r} cannot be a {kind}; its tensors fit {', '.join(f['type'] for f in fits)}")
        module.update({"type": chosen["type"], "params": chosen["params"], "decided_by": "module_types option"})
        module.pop("alternatives", None)


# Layer types of the source frameworks (Keras classes, Flax modules) by the canonical type they are.
SOURCE_TYPES = {
    "Dense": "Linear",
    "EinsumDense": "Linear",
    "Linear": "Linear",
    "Embedding": "Embedding",
    "Embed": "Embedding",
    "LayerNormalization": "LayerNorm",
    "LayerNorm": "LayerNorm",
    "RMSNorm": "LayerNorm",
    "PReLU": "PReLU",
}


def decide_from_source(architecture: InferredArchitecture, source_model: JsonObject | None) -> None:
    """Settle guessed types with what the source format records per layer (a Keras layer list, a
    Flax module tree: `type` and the canonical `tensors` each became)."""
    if not isinstance(source_model, dict):
        return
    entries = [e for key in ("layers", "modules") for e in source_model.get(key) or [] if isinstance(e, dict)]
    by_tensor = {name: str(e.get("type")) for e in entries for name in e.get("tensors") or [] if isinstance(name, str)}
    for module in architecture["modules"]:
        kinds = {SOURCE_TYPES.get(by_tensor.get(name, ""), "") for name in module["tensors"]} - {""}
        fits: list[Alternative] = [{"type": module["type"], "params": module["params"]}, *module.get("alternatives", [])]
        chosen = next((f for f in fits if kinds == {f["type"]}), None)
        if chosen is not None and module.get("alternatives"):
            module.update({"type": chosen["type"], "params": chosen["params"], "decided_by": "source layer type"})
            module.pop("alternatives", None)
