"""ruv-FANN networks: dense chains written as `Network<T>` in ruv-FANN's own serde JSON, and run.

ruv-FANN 0.1.6 loads one model format of its own: `ruv_fann::io::read_json` deserializes the
`Network` struct (src/network.rs, layer.rs, neuron.rs, connection.rs). What this module writes
follows how that code builds and runs a network:
- every layer but the last ends with a bias neuron (`is_bias`, value 1, never computed);
- a neuron's `connections` index the previous layer's neurons by position in that layer
  (`from_neuron`, the bias neuron last), `to_neuron` is the connection's own position (what
  `Neuron::add_connection` stores; `run` never reads it);
- `Network::run` sets the input layer's regular neurons, then for each later layer sums
  value[from_neuron] * weight over connections with from_neuron < len(previous layer) and applies
  the activation (neuron.rs `apply_activation_function`: Linear x*s, Sigmoid 1/(1+exp(-s*x)) --
  not FANN's 2*s*x, whatever activation.rs's comment says --, Tanh and SigmoidSymmetric tanh(s*x),
  ReLU max(x, 0), ReLULeaky with slope 0.01, Gaussian exp(-(x*s)^2), every other variant x).

The dense layers come from the neuro-divergent layout's tensors ([out, in+1]: each neuron's
incoming weights, then its bias), which are exactly a layer's connection weights in that order.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .errors import MappingError, UsageError
from .hashing import file_digest
from .mapping import Layout, MappedTensor
from .output import write_file

# The activations a torch model applies after a Linear, by the names the readers and the
# `dense_networks` option use, as the ruv-FANN variant and steepness that compute the same function.
ACTIVATIONS: dict[str, tuple[str, float]] = {
    "identity": ("Linear", 1.0),
    "relu": ("ReLU", 1.0),
    "tanh": ("Tanh", 1.0),
    "sigmoid": ("Sigmoid", 1.0),
    "leaky_relu": ("ReLULeaky", 1.0),  # torch's default negative_slope, 0.01, is ruv-FANN's fixed slope
}
FILE_SUFFIX = ".network.json"
WRITE_OPTION = "ruv_fann_networks"  # a layout that declares it writes networks
SPEC_OPTION = "dense_networks"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class NetworkLayer:
    module: str  # the source module path, e.g. "mlp.0"
    tensor: MappedTensor  # its [out, in+1] neuro-divergent tensor
    activation: str  # a key of ACTIVATIONS


@dataclass(frozen=True)
class NetworkPlan:
    name: str
    layers: list[NetworkLayer]

    @property
    def file(self) -> str:
        return self.name + FILE_SUFFIX


def parse_spec(text: str) -> list[dict[str, Any]]:
    """The `dense_networks` option, "NAME=PATH:ACT,PATH:ACT[;NAME=...]", as network specs."""
    specs = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, layers = part.partition("=")
        pairs = [item.strip().rpartition(":") for item in layers.split(",")]
        if not sep or not name.strip() or any(not path or not colon for path, colon, _ in pairs):
            raise UsageError(
                f"{SPEC_OPTION}: {part!r} is not NAME=PATH:ACTIVATION,PATH:ACTIVATION,... (activations: {', '.join(ACTIVATIONS)})"
            )
        specs.append({"name": name.strip(), "layers": [{"module": p, "activation": a.strip().lower()} for p, _, a in pairs]})
    return specs


def decide_dense_modules(architecture: dict[str, Any], layout: Layout) -> None:
    """A module the user lists in `dense_networks` is a Linear by their word: that settles a bias-free
    2-D weight, whose shape alone also fits an Embedding."""
    if not layout.options.get(WRITE_OPTION):
        return
    named = {layer["module"] for spec in parse_spec(str(layout.options.get(SPEC_OPTION) or "")) for layer in spec["layers"]}
    for module in architecture["modules"]:
        fits = [{"type": module["type"], "params": module["params"]}, *module.get("alternatives", [])]
        linear = next((f for f in fits if f["type"] == "Linear"), None)
        if module["path"] in named and linear is not None and module.get("alternatives"):
            module.update(type="Linear", params=linear["params"], decided_by=f"{SPEC_OPTION} option")
            module.pop("alternatives")


def plan_networks(
    layout: Layout, declared: Sequence[dict[str, Any]], mapped: Sequence[MappedTensor]
) -> tuple[list[NetworkPlan], list[str]]:
    """(networks to write, warnings). `declared`: what the source says its dense chains are; the
    user's `dense_networks` option adds to them. Every check is on names and shapes, before any
    output exists: a module that is no dense tensor, widths that do not chain, or an activation
    ruv-FANN cannot compute is a MappingError."""
    if not layout.options.get(WRITE_OPTION):
        return [], []
    specs = [*declared, *parse_spec(str(layout.options.get(SPEC_OPTION) or ""))]
    dense = {m.sources[0].name.removesuffix(".weight"): m for m in mapped if m.annotations.get("kind") == "dense" and m.sources}
    plans = [_plan(spec, dense) for spec in specs]
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise MappingError(f"{SPEC_OPTION}: two networks are named {next(n for n in names if names.count(n) > 1)!r}")
    warnings = []
    if not plans and dense:
        warnings.append(
            f"no ruv-FANN network.json written: the source does not say which activations follow its "
            f"dense layers (name them with --layout-option {SPEC_OPTION}=NAME=PATH:ACT,...; "
            f"{WRITE_OPTION}=false silences this)"
        )
    return plans, warnings


def _plan(spec: dict[str, Any], dense: dict[str, MappedTensor]) -> NetworkPlan:
    name = str(spec["name"])
    if not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise UsageError(f"{SPEC_OPTION}: network name {name!r} is not a safe file name (letters, digits, . _ -)")
    layers, width = [], None
    for item in spec["layers"]:
        module, activation = str(item["module"]), str(item["activation"])
        tensor = dense.get(module)
        if tensor is None:
            raise MappingError(
                f"network {name!r}: {module!r} is not a dense layer of this output "
                f"(dense layers: {', '.join(sorted(dense)[:8]) or 'none'})"
            )
        if activation not in ACTIVATIONS:
            raise MappingError(
                f"network {name!r}: {module!r} is followed by {activation!r}, which no ruv-FANN "
                f"activation computes (it has {', '.join(ACTIVATIONS)}); set --layout-option "
                f"{WRITE_OPTION}=false to write the tensors without network.json"
            )
        rows, cols = tensor.ref.shape
        if width is not None and cols != width + 1:
            raise MappingError(f"network {name!r}: {module!r} takes {cols - 1} inputs but the layer before it gives {width}")
        width = rows
        layers.append(NetworkLayer(module, tensor, activation))
    if not layers:
        raise MappingError(f"network {name!r} has no layers")
    return NetworkPlan(name, layers)


def network_document(layers: Sequence[tuple[np.ndarray, str]]) -> dict[str, Any]:
    """ruv-FANN's serde form of a dense chain: `layers` are ([out, in+1] weights then bias, activation)."""
    if not layers:
        raise MappingError("a ruv-FANN network needs at least one dense layer")
    inputs = layers[0][0].shape[1] - 1
    doc_layers = [{"neurons": [_neuron("Linear", 1.0, []) for _ in range(inputs)] + [_bias()]}]
    for k, (matrix, activation) in enumerate(layers):
        function, steepness = ACTIVATIONS[activation]
        values = np.asarray(matrix, dtype=np.float32)
        if not np.isfinite(values).all():
            raise MappingError("a dense layer holds inf or NaN, which JSON cannot carry")
        neurons = [
            _neuron(function, steepness, [{"from_neuron": j, "to_neuron": j, "weight": float(w)} for j, w in enumerate(row)])
            for row in values
        ]
        last = k == len(layers) - 1
        doc_layers.append({"neurons": neurons if last else [*neurons, _bias()]})
    return {"layers": doc_layers, "connection_rate": 1.0}


def _neuron(function: str, steepness: float, connections: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "sum": 0.0,
        "value": 0.0,
        "activation_steepness": steepness,
        "activation_function": function,
        "connections": connections,
        "is_bias": False,
    }


def _bias() -> dict[str, Any]:
    """Neuron::new_bias: value 1, Linear, no connections (run never computes it)."""
    return {
        "sum": 1.0,
        "value": 1.0,
        "activation_steepness": 1.0,
        "activation_function": "Linear",
        "connections": [],
        "is_bias": True,
    }


def write_networks(folder: Path, plans: Sequence[NetworkPlan], digest: str) -> list[dict[str, Any]]:
    """Write each planned network into `folder` (a staging folder); their manifest entries."""
    entries = []
    for plan in plans:
        doc = network_document([(layer.tensor.ref.array(), layer.activation) for layer in plan.layers])
        data = (json.dumps(doc, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")
        write_file(folder / plan.file, data)
        entries.append(
            {
                "name": plan.name,
                "file": plan.file,
                "format": "ruv-fann-network-json",
                "bytes": len(data),
                "digest": file_digest(folder / plan.file, digest),
                "inputs": plan.layers[0].tensor.ref.shape[1] - 1,
                "outputs": plan.layers[-1].tensor.ref.shape[0],
                "layers": [
                    {
                        "module": layer.module,
                        "tensor": layer.tensor.name,
                        "activation": layer.activation,
                        "function": ACTIVATIONS[layer.activation][0],
                        "steepness": ACTIVATIONS[layer.activation][1],
                    }
                    for layer in plan.layers
                ],
            }
        )
    return entries


def network_problems(out_dir: Path, entry: dict[str, Any], manifest: dict[str, Any]) -> list[str]:
    """What is wrong with one listed network: its digest, or weights and activations that are not
    its tensors' and the manifest's (so `verify` proves the JSON computes what the tensors do)."""
    path = out_dir / entry["file"]
    try:
        if file_digest(path, manifest["digest_algorithm"]) != entry["digest"]:
            return [f"network {entry['file']}: {manifest['digest_algorithm']} differs from the manifest"]
        doc = load(path)
        files = {t["name"]: t["file"] for t in manifest["tensors"]}
        want = [(_read(out_dir / files[layer["tensor"]], layer["tensor"]), layer["activation"]) for layer in entry["layers"]]
    except (OSError, ValueError, KeyError) as exc:
        return [f"network {entry['file']}: cannot be read ({type(exc).__name__}: {exc})"]
    if doc != network_document(want):
        return [f"network {entry['file']}: its neurons are not its tensors' weights and activations"]
    return []


def _read(path: Path, name: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return f.get_tensor(name)


# --- the evaluator: Network::run as ruv-FANN 0.1.6 computes it ------------------------------------


def run(doc: dict[str, Any], inputs: np.ndarray, dtype: Any = np.float32) -> np.ndarray:
    """Network::run on each row of `inputs` ([batch, n] or [n]). A wrong input width returns an empty
    output, as `run` does when `set_inputs` fails."""
    x = np.atleast_2d(np.asarray(inputs, dtype=dtype))
    layers = doc["layers"]
    if not layers:
        return np.zeros((x.shape[0], 0), dtype)
    first = layers[0]["neurons"]
    regular = len(first) - 1 if first and first[-1]["is_bias"] else len(first)
    if x.shape[1] != regular:
        return np.zeros((x.shape[0], 0), dtype)
    # Layer::set_inputs -> Neuron::set_value, which leaves bias neurons alone
    values = np.array([[n["value"] for n in first]] * x.shape[0], dtype=dtype).reshape(x.shape[0], len(first))
    for i, neuron in enumerate(first[:regular]):
        if not neuron["is_bias"]:
            values[:, i] = x[:, i]
    for layer in layers[1:]:
        values = _layer(layer["neurons"], values, dtype)
    last = layers[-1]["neurons"]
    return values[:, [i for i, n in enumerate(last) if not n["is_bias"]]]


def _layer(neurons: list[dict[str, Any]], prev: np.ndarray, dtype: Any) -> np.ndarray:
    """Layer::calculate: bias neurons keep their stored value, the others sum their connections."""
    weights = np.zeros((len(neurons), prev.shape[1]), dtype)
    for i, neuron in enumerate(neurons):
        for c in neuron["connections"]:
            if c["from_neuron"] < prev.shape[1]:  # Neuron::calculate skips connections past the layer
                weights[i, c["from_neuron"]] += dtype(c["weight"])
    sums = prev @ weights.T
    out = np.empty_like(sums)
    for i, neuron in enumerate(neurons):
        out[:, i] = neuron["value"] if neuron["is_bias"] else _activate(neuron, sums[:, i])
    return out


def _activate(neuron: dict[str, Any], x: np.ndarray) -> np.ndarray:
    """Neuron::apply_activation_function, variant by variant; the ones it does not list return x."""
    s, kind = x.dtype.type(neuron["activation_steepness"]), neuron["activation_function"]
    if kind == "Linear":
        return x * s
    if kind == "Sigmoid":
        return 1 / (1 + np.exp(-s * x))
    if kind == "ReLU":
        return np.where(x > 0, x, 0).astype(x.dtype)
    if kind == "ReLULeaky":
        return np.where(x > 0, x, x.dtype.type(0.01) * x).astype(x.dtype)
    if kind in ("Tanh", "SigmoidSymmetric"):
        return np.tanh(s * x)
    if kind == "Gaussian":
        scaled = x * s
        return np.exp(-scaled * scaled)
    return x


def load(path: str | Path) -> dict[str, Any]:
    """A network.json as written (no NaN or infinity: serde_json would refuse them too)."""

    def refuse(word: str) -> float:
        raise ValueError(f"{word} is not JSON")

    return json.loads(Path(path).read_text(), parse_constant=refuse)
