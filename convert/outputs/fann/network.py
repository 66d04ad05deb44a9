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
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from convert.errors import MappingError

# The activations a torch model applies after a Linear, by the names the readers and the
# `dense_networks` option use, as the ruv-FANN variant and steepness that compute the same function.
ACTIVATIONS: dict[str, tuple[str, float]] = {
    "identity": ("Linear", 1.0),
    "relu": ("ReLU", 1.0),
    "tanh": ("Tanh", 1.0),
    "sigmoid": ("Sigmoid", 1.0),
    "leaky_relu": ("ReLULeaky", 1.0),  # torch's default negative_slope, 0.01, is ruv-FANN's fixed slope
}


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
    y: np.ndarray = x
    if kind == "Linear":
        y = x * s
    elif kind == "Sigmoid":
        y = 1 / (1 + np.exp(-s * x))
    elif kind == "ReLU":
        y = np.where(x > 0, x, 0).astype(x.dtype)
    elif kind == "ReLULeaky":
        y = np.where(x > 0, x, x.dtype.type(0.01) * x).astype(x.dtype)
    elif kind in ("Tanh", "SigmoidSymmetric"):
        y = np.tanh(s * x)
    elif kind == "Gaussian":
        scaled = x * s
        y = np.exp(-scaled * scaled)
    return y


def load(path: str | Path) -> dict[str, Any]:
    """A network.json as written (no NaN or infinity: serde_json would refuse them too)."""

    def refuse(word: str) -> float:
        raise ValueError(f"{word} is not JSON")

    doc: dict[str, Any] = json.loads(Path(path).read_text(), parse_constant=refuse)
    return doc
