"""What each tensor of a NeuralForecast model does, in words a Rust port can act on.

State-dict names say where a tensor sits, not what it is for; these rules, per model class, say
which layer of which block it is, and mark the tensors that are not weights at all (a loss's
quantile levels).  The first matching rule wins; a name no rule knows gets its module's path.
"""

from __future__ import annotations

import re

Rules = list[tuple[str, str]]

_COMMON: Rules = [
    (r"(valid_)?loss\.quantiles", "loss quantile levels: which quantile each output column is (not a weight)"),
    (r"(valid_)?loss\.(?P<rest>.+)", "loss network parameter ({rest}), used by implicit-quantile losses"),
    (r"scaler\.(?P<rest>.+)", "temporal normalization (RevIN affine {rest})"),
]
_RNN_DECODER: Rules = [
    (r"hist_encoder\.(?P<leaf>(weight|bias)_(ih|hh|hr)_l(?P<k>\d+))", "recurrent encoder layer {k} ({leaf})"),
    (r"context_adapter\.(?P<leaf>\w+)", "context adapter Linear ({leaf})"),
    (r"mlp_decoder\.layers\.(?P<k>\d+)\.(?P<leaf>\w+)", "decoder MLP Linear at index {k} ({leaf})"),
    (r"upsample_sequence\.(?P<leaf>\w+)", "Linear stretching the encoded sequence from input_size to h ({leaf})"),
]
_BLOCK_MLP: Rules = [
    (
        r"blocks\.(?P<b>\d+)\.layers\.(?P<k>\d+)\.(?P<leaf>\w+)",
        "block {b} MLP Linear at index {k} ({leaf}); the last one emits the basis coefficients theta",
    ),
    (r"blocks\.(?P<b>\d+)\.basis\.(?P<rest>.+)", "block {b} basis ({rest})"),
]
BY_CLASS: dict[str, Rules] = {
    "MLP": [
        (r"mlp\.(?P<k>\d+)\.(?P<leaf>\w+)", "hidden Linear {k} followed by ReLU ({leaf})"),
        (r"out\.(?P<leaf>\w+)", "output Linear: h * outputsize_multiplier values ({leaf})"),
    ],
    "NHITS": _BLOCK_MLP,
    "NBEATS": _BLOCK_MLP,
    "NBEATSx": _BLOCK_MLP,
    "DLinear": [
        (r"linear_trend\.(?P<leaf>\w+)", "Linear on the moving-average trend, input_size -> h * m ({leaf})"),
        (r"linear_season\.(?P<leaf>\w+)", "Linear on the seasonal remainder, input_size -> h * m ({leaf})"),
    ],
    "NLinear": [(r"linear\.(?P<leaf>\w+)", "Linear on the last-value-normalised window, input_size -> h * m ({leaf})")],
    "LSTM": _RNN_DECODER,
    "GRU": _RNN_DECODER,
    "RNN": _RNN_DECODER,
    "TCN": [
        (
            r"hist_encoder\.tcn\.(?P<k>\d+)\.(causalconv\.0|conv)\.(?P<leaf>\w+)",
            "dilated causal Conv1d {k} (dilation = dilations[{k}]) ({leaf})",
        ),
        *_RNN_DECODER,
    ],
    "DeepAR": [
        (r"hist_encoder\.(?P<leaf>(weight|bias)_(ih|hh)_l(?P<k>\d+))", "LSTM encoder layer {k} ({leaf})"),
        (r"decoder\.layers\.(?P<k>\d+)\.(?P<leaf>\w+)", "decoder MLP Linear at index {k}: distribution parameters ({leaf})"),
    ],
}


def tensor_roles(class_name: str, names: list[str]) -> dict[str, str]:
    rules = [(re.compile(p + r"\Z"), text) for p, text in _COMMON + BY_CLASS.get(class_name, [])]
    roles = {}
    for name in names:
        for pattern, text in rules:
            m = pattern.match(name)
            if m:
                roles[name] = text.format(**{k: v or "" for k, v in m.groupdict().items()})
                break
        else:
            module, _, leaf = name.rpartition(".")
            roles[name] = f"{leaf} of {module or 'the model'}"
    return roles
