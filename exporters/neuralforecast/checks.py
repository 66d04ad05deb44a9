"""Check a NeuralForecast model's config against its tensors before anything is written.

The manifest promises that the class, called with the recorded config, has exactly these tensors.
For the classes a Rust port rebuilds layer by layer, the shapes the config implies are computed
here as NeuralForecast's constructors compute them; a folder whose config and weights disagree
(edited, mixed from two trainings, truncated) is refused with the first disagreements named.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

from convert.errors import CorruptInputError

Shapes = dict[str, tuple[int, ...]]
# Layer counts a config may ask for: the shapes are computed per layer, so `num_layers=1e9` would
# loop a billion times (and hold the result) before finding that the weights have three.
MAX_LAYERS = 10_000
_GATES = {"LSTM": 4, "GRU": 3, "RNN": 1}


def check_shapes(label: str, class_name: str, resolved: dict[str, Any], arch: dict[str, Any], found: Shapes) -> None:
    """Raise CorruptInputError naming where the config and the tensors disagree."""
    try:
        expected = _expected(class_name, resolved, arch)
    except (KeyError, TypeError, ValueError, IndexError, ZeroDivisionError, OverflowError, AttributeError) as exc:
        raise CorruptInputError(f"{label}: {class_name} config is incomplete or malformed ({exc!r})"[:2000]) from None
    problems = []
    for name, shape in expected.items():
        if name not in found:
            problems.append(f"the config implies {name} {list(shape)} but the weights lack it")
        elif found[name] != shape:
            problems.append(f"{name} is {list(found[name])} but the config implies {list(shape)}")
    if problems:
        shown = "; ".join(problems[:3]) + (f"; and {len(problems) - 3} more" if len(problems) > 3 else "")
        raise CorruptInputError(f"{label}: config and tensors disagree: {shown}")


def _expected(class_name: str, r: dict[str, Any], arch: dict[str, Any]) -> Shapes:
    shapes: Shapes = {}
    for prefix in ("loss", "valid_loss"):
        loss = r.get(prefix)
        if loss and loss.get("quantiles") is not None and loss["class"] not in ("IQLoss", "HuberIQLoss"):
            shapes[f"{prefix}.quantiles"] = (len(loss["quantiles"]),)
    rule = _RULES.get(class_name)
    if rule is not None and r["loss"] and r["loss"]["outputsize_multiplier"]:
        shapes.update(rule(r, arch, int(r["loss"]["outputsize_multiplier"])))
    return shapes


def _count(value: Any, what: str) -> int:
    """A layer count from the config, bounded before anything loops over it."""
    n = int(value)
    if not 0 <= n <= MAX_LAYERS:
        raise ValueError(f"{what}={n} is not a layer count between 0 and {MAX_LAYERS}")
    return n


def _exog(r: dict[str, Any]) -> tuple[int, int, int]:
    return len(r["hist_exog_list"]), len(r["futr_exog_list"]), len(r["stat_exog_list"])


def _linear(name: str, out_f: int, in_f: int) -> Shapes:
    return {f"{name}.weight": (out_f, in_f), f"{name}.bias": (out_f,)}


def _mlp(r: dict[str, Any], a: dict[str, Any], m: int) -> Shapes:
    L, h = r["input_size"], r["h"]
    hist, futr, stat = _exog(r)
    hidden = int(a["hidden_size"])
    shapes = _linear("mlp.0", hidden, L + hist * L + futr * (L + h) + stat)
    for i in range(1, _count(a["num_layers"], "num_layers")):
        shapes.update(_linear(f"mlp.{i}", hidden, hidden))
    shapes.update(_linear("out", h * m, hidden))
    return shapes


def _dlinear(r: dict[str, Any], a: dict[str, Any], m: int) -> Shapes:
    return {**_linear("linear_trend", m * r["h"], r["input_size"]), **_linear("linear_season", m * r["h"], r["input_size"])}


def _nlinear(r: dict[str, Any], a: dict[str, Any], m: int) -> Shapes:
    return _linear("linear", m * r["h"], r["input_size"])


def _nhits(r: dict[str, Any], a: dict[str, Any], m: int) -> Shapes:
    L, h = r["input_size"], r["h"]
    hist, futr, stat = _exog(r)
    units = [list(map(int, u)) for u in a["mlp_units"]]
    per_layer = 3 if float(a.get("dropout_prob_theta") or 0) > 0 else 2  # Linear, activation[, Dropout]
    shapes: Shapes = {}
    block = 0
    counts = [_count(c, "n_blocks") for c in a["n_blocks"]]
    if sum(counts) > MAX_LAYERS:
        raise ValueError(f"n_blocks asks for {sum(counts)} blocks, more than {MAX_LAYERS}")
    for stack, count in enumerate(counts):
        kernel = int(a["n_pool_kernel_size"][stack])
        pooled = math.ceil(L / kernel)
        n_in = pooled + hist * pooled + futr * math.ceil((L + h) / kernel) + stat
        n_theta = L + m * max(h // int(a["n_freq_downsample"][stack]), 1)
        for _ in range(count):
            prefix = f"blocks.{block}.layers"
            shapes.update(_linear(f"{prefix}.0", units[0][0], n_in))
            for j, (u_in, u_out) in enumerate(units):
                shapes.update(_linear(f"{prefix}.{1 + j * per_layer}", u_out, u_in))
            shapes.update(_linear(f"{prefix}.{1 + len(units) * per_layer}", n_theta, units[-1][1]))
            block += 1
    return shapes


def _recurrent(gates: int) -> Callable[[dict[str, Any], dict[str, Any], int], Shapes]:
    def rule(r: dict[str, Any], a: dict[str, Any], m: int) -> Shapes:
        hist, futr, stat = _exog(r)
        hidden = int(a["encoder_hidden_size"])
        proj = m if r["recurrent"] and gates == 4 else 0
        shapes: Shapes = {}
        for k in range(_count(a["encoder_n_layers"], "encoder_n_layers")):
            n_in = 1 + hist + futr + stat if k == 0 else (proj or hidden)
            shapes[f"hist_encoder.weight_ih_l{k}"] = (gates * hidden, n_in)
            shapes[f"hist_encoder.weight_hh_l{k}"] = (gates * hidden, proj or hidden)
            if proj:
                shapes[f"hist_encoder.weight_hr_l{k}"] = (proj, hidden)
        return shapes

    return rule


def _tcn(r: dict[str, Any], a: dict[str, Any], m: int) -> Shapes:
    hist, futr, stat = _exog(r)
    hidden, kernel = int(a["encoder_hidden_size"]), int(a["kernel_size"])
    shapes: Shapes = {}
    for k, _ in enumerate(a["dilations"]):
        n_in = 1 + hist + futr + stat if k == 0 else hidden
        shapes.update(
            {
                f"hist_encoder.tcn.{k}.causalconv.0.weight": (hidden, n_in, kernel),
                f"hist_encoder.tcn.{k}.causalconv.0.bias": (hidden,),
            }
        )
    return shapes


_RULES: dict[str, Callable[[dict[str, Any], dict[str, Any], int], Shapes]] = {
    "MLP": _mlp,
    "DLinear": _dlinear,
    "NLinear": _nlinear,
    "NHITS": _nhits,
    "TCN": _tcn,
    **{name: _recurrent(gates) for name, gates in _GATES.items()},
}
