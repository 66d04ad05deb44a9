"""Helpers for tests/mapping/: real torch models, the names and shapes each Rust target's
conventions predict for them, and numpy forward passes written from those conventions.

The expected names are derived from each module's own attributes (hidden_size, num_layers,
bidirectional, embed_dim, ...), never read back from the converter's output.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn

Shape = tuple[int, ...]
Expected = dict[str, tuple[Shape, str]]  # target name -> (shape, SafeTensors dtype code)

LSTM_GATES = ("input_gate", "forget_gate", "cell_gate", "output_gate")  # PyTorch order i, f, g, o
GRU_GATES = ("reset_gate", "update_gate", "new_gate")  # PyTorch order r, z, n
BUILTIN_LAYOUTS = ("pytorch", "candle", "tch", "burn", "burn-native", "torsh", "trustformers", "neuro-divergent")
PYTORCH_NAMED = ("pytorch", "candle", "tch")


# ---------------------------------------------------------------------------------------------
# Models
# ---------------------------------------------------------------------------------------------


class Net(nn.Module):
    """Every layer kind the PyTorch-family, burn and ToRSh layouts handle."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 6))
        self.ln = nn.LayerNorm(6)
        self.lstm = nn.LSTM(6, 5, num_layers=2)
        self.gru = nn.GRU(6, 4)  # one layer: candle's GRU takes no more
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)


class TorshNet(nn.Module):
    """What ToRSh loads and computes: no BatchNorm (its state dict takes no buffers), single-layer
    unidirectional LSTM/GRU (it computes layer 0 only)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.conv = nn.Conv2d(3, 4, 3)
        self.mlp = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 6))
        self.ln = nn.LayerNorm(6)
        self.lstm = nn.LSTM(6, 5)
        self.gru = nn.GRU(6, 4)
        self.attn = nn.MultiheadAttention(6, 2, batch_first=True)


class RecurrentZoo(nn.Module):
    """Every num_layers x bidirectional case of burn's recurrent naming."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm1 = nn.LSTM(3, 4)
        self.bilstm = nn.LSTM(3, 4, bidirectional=True)
        self.bilstm2 = nn.LSTM(3, 2, num_layers=2, bidirectional=True)
        self.gru2 = nn.GRU(3, 4, num_layers=2)
        self.bigru = nn.GRU(3, 2, bidirectional=True)
        self.bigru2 = nn.GRU(3, 2, num_layers=2, bidirectional=True)


class DenseRecurrent(nn.Module):
    """What neuro-divergent takes: dense layers (with and without bias) and LSTM/GRU."""

    def __init__(self) -> None:
        super().__init__()
        self.mlp = nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 4, bias=False), nn.Tanh(), nn.Linear(4, 3))
        self.lstm = nn.LSTM(3, 4, num_layers=2, bidirectional=True)
        self.gru = nn.GRU(8, 3)


def build(cls: type[nn.Module], seed: int) -> nn.Module:
    """A model with fixed seeds, non-trivial BatchNorm state and LayerNorm affine, in eval mode."""
    torch.manual_seed(seed)
    model = cls().float()
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d, nn.LayerNorm)):
                mod.weight.uniform_(0.5, 1.5)
                mod.bias.uniform_(-0.5, 0.5)
            if isinstance(mod, (nn.BatchNorm2d, nn.BatchNorm1d)):
                mod.running_mean.uniform_(-1.0, 1.0)
                mod.running_var.uniform_(0.5, 2.0)
                mod.num_batches_tracked.fill_(7)
            if isinstance(mod, nn.MultiheadAttention):
                mod.in_proj_bias.uniform_(-0.3, 0.3)
                mod.out_proj.bias.uniform_(-0.3, 0.3)
    return model.eval()


# ---------------------------------------------------------------------------------------------
# Expected names and shapes, from each target's conventions
# ---------------------------------------------------------------------------------------------

LEAF_TYPES = (
    nn.Linear,
    nn.Conv2d,
    nn.BatchNorm2d,
    nn.BatchNorm1d,
    nn.LayerNorm,
    nn.Embedding,
    nn.LSTM,
    nn.GRU,
    nn.MultiheadAttention,
)


def expected_tensors(model: nn.Module, layout: str) -> Expected:
    """Every output tensor (name, shape, dtype) a built-in layout should write for this float32 model."""
    out: Expected = {}
    _walk(model, "", layout, out)
    return out


def _join(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def _walk(mod: nn.Module, prefix: str, layout: str, out: Expected) -> None:
    if isinstance(mod, LEAF_TYPES):
        _leaf(mod, prefix, layout, out)
        return
    children = list(mod.named_children())
    names = {n: n for n, _ in children}
    if layout in ("burn", "burn-native") and isinstance(mod, (nn.Sequential, nn.ModuleList)):
        # burn's Vec of modules has no gaps where nn.Sequential keeps parameter-free layers
        with_state = [n for n, c in children if len(c.state_dict()) > 0]
        names = {n: str(i) for i, n in enumerate(with_state)}
    for name, child in children:
        if name in names:
            _walk(child, _join(prefix, names[name]), layout, out)


def _leaf(mod: nn.Module, p: str, layout: str, out: Expected) -> None:
    if layout in PYTORCH_NAMED or layout == "trustformers":
        for name, t in mod.state_dict().items():
            if layout == "trustformers" and name.endswith("num_batches_tracked"):
                continue
            out[_join(p, name)] = (tuple(t.shape), "I64" if t.dtype == torch.int64 else "F32")
        return
    if layout == "torsh":
        for name, t in mod.state_dict().items():
            if name.endswith("num_batches_tracked"):
                continue
            shape = tuple(t.shape)
            if isinstance(mod, nn.Linear) and name == "weight":
                shape = (mod.in_features, mod.out_features)
            out[_join(p, name)] = (shape, "F32")
        return
    if layout in ("burn", "burn-native"):
        _burn_leaf(mod, p, layout == "burn-native", out)
        return
    if layout == "neuro-divergent":
        _nd_leaf(mod, p, out)
        return
    raise AssertionError(f"no expectations for layout {layout}")


def _burn_leaf(mod: nn.Module, p: str, native: bool, out: Expected) -> None:
    def put(name: str, shape: Shape) -> None:
        out[_join(p, name)] = (shape, "F32")

    if isinstance(mod, nn.Linear):
        put("weight", (mod.in_features, mod.out_features) if native else (mod.out_features, mod.in_features))
        if mod.bias is not None:
            put("bias", (mod.out_features,))
    elif isinstance(mod, (nn.LayerNorm, nn.BatchNorm2d, nn.BatchNorm1d)):
        for name, t in mod.state_dict().items():
            if name == "num_batches_tracked":
                continue
            put({"weight": "gamma", "bias": "beta"}.get(name, name), tuple(t.shape))
    elif isinstance(mod, (nn.Conv2d, nn.Embedding)):
        for name, t in mod.state_dict().items():
            put(name, tuple(t.shape))
    elif isinstance(mod, (nn.LSTM, nn.GRU)):
        gates = LSTM_GATES if isinstance(mod, nn.LSTM) else GRU_GATES
        for base, in_k in burn_recurrent_bases(mod, p):
            for gate in gates:
                for transform, n_in in (("input_transform", in_k), ("hidden_transform", mod.hidden_size)):
                    h = mod.hidden_size
                    out[f"{base}.{gate}.{transform}.weight"] = ((n_in, h) if native else (h, n_in), "F32")
                    if mod.bias:
                        out[f"{base}.{gate}.{transform}.bias"] = ((h,), "F32")
    elif isinstance(mod, nn.MultiheadAttention):
        e = mod.embed_dim
        for part in ("query", "key", "value", "output"):
            put(f"{part}.weight", (e, e))
            put(f"{part}.bias", (e,))
    else:
        raise AssertionError(type(mod))


def burn_recurrent_bases(mod: nn.LSTM | nn.GRU, p: str) -> list[tuple[str, int]]:
    """(module path of one layer and direction in burn, its input size), in PyTorch's order.

    burn's LSTM/GRU is one layer of one direction: layers are indexed only when there are several,
    directions are `forward`/`reverse` only when bidirectional."""
    dirs = ["forward", "reverse"] if mod.bidirectional else [""]
    found = []
    for k in range(mod.num_layers):
        in_k = mod.input_size if k == 0 else mod.hidden_size * len(dirs)
        for d in dirs:
            parts = [p] + ([str(k)] if mod.num_layers > 1 else []) + ([d] if d else [])
            found.append((".".join(parts), in_k))
    return found


def nd_recurrent_bases(mod: nn.LSTM | nn.GRU, p: str) -> list[tuple[str, int, int, int]]:
    """(neuro-divergent path prefix `{p}.l{k}[_reverse]`, input size, layer, direction)."""
    dirs = [""] + (["_reverse"] if mod.bidirectional else [])
    found = []
    for k in range(mod.num_layers):
        in_k = mod.input_size if k == 0 else mod.hidden_size * len(dirs)
        for d_i, d in enumerate(dirs):
            found.append((f"{p}.l{k}{d}", in_k, k, d_i))
    return found


def _nd_leaf(mod: nn.Module, p: str, out: Expected) -> None:
    if isinstance(mod, nn.Linear):
        out[p] = ((mod.out_features, mod.in_features + 1), "F32")
    elif isinstance(mod, (nn.LSTM, nn.GRU)):
        gates = LSTM_GATES if isinstance(mod, nn.LSTM) else GRU_GATES
        h = mod.hidden_size
        for base, in_k, _, _ in nd_recurrent_bases(mod, p):
            for gate in gates:
                out[f"{base}.{gate}"] = ((h, in_k + h + 1), "F32")
            if isinstance(mod, nn.GRU):
                out[f"{base}.new_gate_hidden_bias"] = ((h,), "F32")
    else:
        raise AssertionError(f"neuro-divergent takes no {type(mod).__name__}")


# ---------------------------------------------------------------------------------------------
# Reading outputs
# ---------------------------------------------------------------------------------------------


def load_numpy(out: Path) -> dict[str, np.ndarray]:
    """Every tensor of an output folder as numpy arrays (read with the safetensors library)."""
    from safetensors.numpy import load_file

    doc = json.loads((out / "manifest.json").read_text())
    arrays: dict[str, np.ndarray] = {}
    for f in doc["files"]:
        arrays.update(load_file(str(out / f["path"])))
    return arrays


# ---------------------------------------------------------------------------------------------
# numpy forward passes, from the target's conventions
# ---------------------------------------------------------------------------------------------


def sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


Step = Callable[[np.ndarray, tuple[np.ndarray, ...]], tuple[np.ndarray, tuple[np.ndarray, ...]]]


def run_recurrent(
    x: np.ndarray, num_layers: int, bidirectional: bool, hidden: int, states: int, make_step: Callable[[int, int], Step]
) -> np.ndarray:
    """A stacked (bi)directional recurrence over x [T, B, in]; make_step(layer, direction) gives the
    cell. Output [T, B, hidden * directions], as PyTorch's LSTM/GRU return it."""
    seq = x.astype(np.float64)
    steps, batch = seq.shape[0], seq.shape[1]
    for k in range(num_layers):
        outs = []
        for d in range(2 if bidirectional else 1):
            step = make_step(k, d)
            state = tuple(np.zeros((batch, hidden)) for _ in range(states))
            hs: list[np.ndarray] = [np.empty(0)] * steps
            for t in range(steps) if d == 0 else reversed(range(steps)):
                h, state = step(seq[t], state)
                hs[t] = h
            outs.append(np.stack(hs))
        seq = np.concatenate(outs, axis=-1)
    return seq


def lstm_step(pre: Callable[[str, np.ndarray, np.ndarray], np.ndarray]) -> Step:
    """pre(gate, x, h): the gate's pre-activation, as the target's tensors compute it."""

    def step(x: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        h, c = state
        i = sigmoid(pre("input_gate", x, h))
        f = sigmoid(pre("forget_gate", x, h))
        g = np.tanh(pre("cell_gate", x, h))
        o = sigmoid(pre("output_gate", x, h))
        c = f * c + i * g
        h = o * np.tanh(c)
        return h, (h, c)

    return step


def gru_step(
    pre: Callable[[str, np.ndarray, np.ndarray], np.ndarray], new_gate: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray]
) -> Step:
    """pre(gate, x, h) for the reset and update gates; new_gate(x, h, r) the candidate's pre-activation."""

    def step(x: np.ndarray, state: tuple[np.ndarray, ...]) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        (h,) = state
        r = sigmoid(pre("reset_gate", x, h))
        z = sigmoid(pre("update_gate", x, h))
        n = np.tanh(new_gate(x, h, r))
        h = (1.0 - z) * n + z * h
        return h, (h,)

    return step


def burn_recurrent_forward(t: dict[str, np.ndarray], mod: nn.LSTM | nn.GRU, p: str, x: np.ndarray, native: bool) -> np.ndarray:
    """burn's per-gate Linears: gate = x W_i(+b_i) + h W_h(+b_h), W as [out, in] for the adapter
    layout (x @ W^T) or [in, out] for burn's own records (x @ W)."""
    bases = burn_recurrent_bases(mod, p)
    dirs = 2 if mod.bidirectional else 1

    def lin(name: str, v: np.ndarray) -> np.ndarray:
        w = t[f"{name}.weight"].astype(np.float64)
        y = v @ w if native else v @ w.T
        return y + t[f"{name}.bias"] if f"{name}.bias" in t else y

    def make(k: int, d: int) -> Step:
        base = bases[k * dirs + d][0]

        def pre(gate: str, x: np.ndarray, h: np.ndarray) -> np.ndarray:
            return lin(f"{base}.{gate}.input_transform", x) + lin(f"{base}.{gate}.hidden_transform", h)

        if isinstance(mod, nn.LSTM):
            return lstm_step(pre)
        return gru_step(
            pre, lambda x, h, r: lin(f"{base}.new_gate.input_transform", x) + r * lin(f"{base}.new_gate.hidden_transform", h)
        )

    states = 2 if isinstance(mod, nn.LSTM) else 1
    return run_recurrent(x, mod.num_layers, mod.bidirectional, mod.hidden_size, states, make)


def nd_recurrent_forward(t: dict[str, np.ndarray], mod: nn.LSTM | nn.GRU, p: str, x: np.ndarray) -> np.ndarray:
    """neuro-divergent's gate tensors: gate = [x, h, 1] @ G^T; the GRU candidate is
    tanh(W_in x + b_in + r * (W_hn h + b_hn)) with G_new = [W_in | W_hn | b_in], b_hn stored apart."""
    bases = nd_recurrent_bases(mod, p)
    dirs = 2 if mod.bidirectional else 1
    hidden = mod.hidden_size

    def make(k: int, d: int) -> Step:
        base, in_k, _, _ = bases[k * dirs + d]

        def pre(gate: str, x: np.ndarray, h: np.ndarray) -> np.ndarray:
            xh1 = np.concatenate([x, h, np.ones((x.shape[0], 1))], axis=1)
            return xh1 @ t[f"{base}.{gate}"].astype(np.float64).T

        if isinstance(mod, nn.LSTM):
            return lstm_step(pre)
        g = t[f"{base}.new_gate"].astype(np.float64)
        w_in, w_hn, b_in = g[:, :in_k], g[:, in_k : in_k + hidden], g[:, -1]
        b_hn = t[f"{base}.new_gate_hidden_bias"].astype(np.float64)
        return gru_step(pre, lambda x, h, r: x @ w_in.T + b_in + r * (h @ w_hn.T + b_hn))

    states = 2 if isinstance(mod, nn.LSTM) else 1
    return run_recurrent(x, mod.num_layers, mod.bidirectional, hidden, states, make)


def mha_forward(
    t: dict[str, np.ndarray], p: str, query: np.ndarray, key: np.ndarray, value: np.ndarray, num_heads: int, native: bool
) -> np.ndarray:
    """Multi-head attention from `{p}.{query,key,value,output}`; inputs [B, T, E]."""

    def lin(part: str, v: np.ndarray) -> np.ndarray:
        w = t[f"{p}.{part}.weight"].astype(np.float64)
        return (v @ w if native else v @ w.T) + t[f"{p}.{part}.bias"]

    def heads(v: np.ndarray) -> np.ndarray:
        b, n, e = v.shape
        return v.reshape(b, n, num_heads, e // num_heads).transpose(0, 2, 1, 3)

    q, k, v = heads(lin("query", query)), heads(lin("key", key)), heads(lin("value", value))
    scores = q @ k.transpose(0, 1, 3, 2) / np.sqrt(q.shape[-1])
    scores = np.exp(scores - scores.max(axis=-1, keepdims=True))
    attn = scores / scores.sum(axis=-1, keepdims=True)
    ctx = (attn @ v).transpose(0, 2, 1, 3)
    b, n = ctx.shape[:2]
    return lin("output", ctx.reshape(b, n, -1))


def norm_forward(x: np.ndarray, gamma: np.ndarray, beta: np.ndarray, mean: np.ndarray, var: np.ndarray, eps: float) -> np.ndarray:
    """(x - mean) / sqrt(var + eps) * gamma + beta, broadcast over the trailing axes given."""
    return (x - mean) / np.sqrt(var + eps) * gamma + beta


def to_np(x: torch.Tensor) -> np.ndarray:
    return x.detach().numpy().astype(np.float64)
