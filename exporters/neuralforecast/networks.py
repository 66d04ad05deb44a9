"""The dense chains of a NeuralForecast model: which Linears run one after the other, and the
activation after each, as the model classes' code builds them (neuralforecast/models/mlp.py,
nhits.py, nbeats.py, nbeatsx.py). A state dict holds no activations; the class and its config do.

- MLP: `mlp.{i}` each followed by torch.relu in `forward`, then `out`, no activation.
- NHITS, NBEATS, NBEATSx: each block's `layers` is nn.Sequential(Linear, Linear, act, [Dropout],
  Linear, act, ..., Linear) with act = getattr(nn, activation)(): a Linear whose next index holds
  no Linear is followed by the activation, one directly followed by a Linear by none, the last by none.
- The recurrent and TCN models' decoder (common/_modules.py MLP: Linear, act, Dropout, ..., Linear)
  as `mlp_decoder.layers` (`decoder.layers` in DeepAR), act from `decoder_activation` (None means
  ReLU, resolve_decoder_activation); releases that store no `decoder_activation` get no network.

The other classes' Linears sit among convolutions, attention, decompositions or recurrences: they
are no plain chain, so no network is declared for them. An activation missing from the config is
never guessed: the chain is then not declared.
"""

from __future__ import annotations

import re
from typing import Any

# NeuralForecast's activation names (nn class names) as convert.outputs.fann names; the rest are kept as
# written, and convert.outputs.fann refuses them by name.
_ACTIVATIONS = {"ReLU": "relu", "Tanh": "tanh", "Sigmoid": "sigmoid", "LeakyReLU": "leaky_relu", "Identity": "identity"}
_BLOCK_CLASSES = frozenset({"NHITS", "NBEATS", "NBEATSx"})
_DECODERS = {
    "LSTM": "mlp_decoder.layers",
    "GRU": "mlp_decoder.layers",
    "RNN": "mlp_decoder.layers",
    "TCN": "mlp_decoder.layers",
    "DilatedRNN": "mlp_decoder.layers",
    "xLSTM": "mlp_decoder.layers",
    "DeepAR": "decoder.layers",
}
_INDEXED = re.compile(r"(?P<p>.+)\.(?P<k>0|[1-9][0-9]*)\.weight")


def dense_networks(class_name: str, arch: dict[str, Any], shapes: dict[str, tuple[int, ...]]) -> list[dict[str, Any]]:
    """[{"name", "layers": [{"module", "activation"}]}] for convert.outputs.fann, or [] for a class without one."""
    linears = _linear_indices(shapes)
    if class_name == "MLP":
        hidden = linears.get("mlp", [])
        if not hidden or "out.weight" not in shapes:
            return []
        return [
            {
                "name": "mlp",
                "layers": [
                    *({"module": f"mlp.{k}", "activation": "relu"} for k in hidden),
                    {"module": "out", "activation": "identity"},
                ],
            }
        ]
    if class_name in _DECODERS and "decoder_activation" in arch:
        prefixes, activation = [_DECODERS[class_name]], arch["decoder_activation"] or "ReLU"
    elif class_name in _BLOCK_CLASSES and "activation" in arch:
        prefixes = sorted((p for p in linears if re.fullmatch(r"blocks\.[0-9]+\.layers", p)), key=lambda p: int(p.split(".")[1]))
        activation = arch["activation"]
    else:
        return []
    act = _ACTIVATIONS.get(str(activation), str(activation).lower())
    return [_sequential(prefix, linears[prefix], act) for prefix in prefixes if prefix in linears]


def _sequential(prefix: str, ks: list[int], act: str) -> dict[str, Any]:
    """An nn.Sequential of Linears at indices `ks`: the activation sits in each gap after a Linear."""
    layers = [
        {"module": f"{prefix}.{k}", "activation": "identity" if nxt in (None, k + 1) else act}
        for k, nxt in zip(ks, [*ks[1:], None], strict=True)
    ]
    return {"name": prefix, "layers": layers}


def _linear_indices(shapes: dict[str, tuple[int, ...]]) -> dict[str, list[int]]:
    """{container path: sorted indices of its 2-D `.weight` children} (PReLU's weight is 1-D)."""
    found: dict[str, list[int]] = {}
    for name, shape in shapes.items():
        m = _INDEXED.fullmatch(name)
        if m and len(shape) == 2:
            found.setdefault(m["p"], []).append(int(m["k"]))
    return {p: sorted(ks) for p, ks in found.items()}
