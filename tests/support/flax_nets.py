"""Real Flax models (linen and NNX) for the Flax exporter's tests, the PyTorch twin of each (same
computation, module names chosen to match the converted names), and the ways Flax users save them.

Test modules call pytest.importorskip for jax, flax and torch before importing this one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import torch
from flax import nnx, serialization

from tests.support import load_output

TOLERANCE = 1e-5
LINEN_CELLS = {
    "LSTMCell": nn.LSTMCell,
    "OptimizedLSTMCell": nn.OptimizedLSTMCell,
    "GRUCell": nn.GRUCell,
    "SimpleCell": nn.SimpleCell,
}
NNX_CELLS = {
    "LSTMCell": nnx.LSTMCell,
    "OptimizedLSTMCell": nnx.OptimizedLSTMCell,
    "GRUCell": nnx.GRUCell,
    "SimpleCell": nnx.SimpleCell,
}
TORCH_RNN = {"LSTMCell": torch.nn.LSTM, "OptimizedLSTMCell": torch.nn.LSTM, "GRUCell": torch.nn.GRU, "SimpleCell": torch.nn.RNN}
VOCAB, EMBED, HIDDEN, CLASSES = 20, 8, 6, 3


def tokens(seed: int = 0, shape: tuple[int, int] = (2, 7)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, VOCAB, shape).astype(np.int32)


def images(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(size=(2, 5, 5, 3)).astype(np.float32)


def to_bytes(tree: Any) -> bytes:
    return serialization.to_bytes(tree)


def assert_close(torch_out: Any, flax_out: Any) -> None:
    expected = np.asarray(flax_out, dtype=np.float32)
    actual = torch_out.detach().numpy()
    assert actual.shape == expected.shape
    assert np.abs(actual - expected).max() <= TOLERANCE, np.abs(actual - expected).max()


def load_twin(twin: torch.nn.Module, out: Path) -> torch.nn.Module:
    """The converted tensors into the twin, every name accounted for (strict)."""
    twin.load_state_dict(load_output(out), strict=True)
    return twin.eval()


class Holder(torch.nn.Module):
    """A module path such as `rnn.cell`: NNX's RNN keeps its cell as an attribute."""

    def __init__(self, **children: torch.nn.Module) -> None:
        super().__init__()
        for name, child in children.items():
            self.add_module(name, child)


# --- linen ----------------------------------------------------------------------------------------


class ConvNet(nn.Module):
    """Conv, BatchNorm (with batch_stats), Dense, LayerNorm."""

    @nn.compact
    def __call__(self, x: Any, train: bool = False) -> Any:
        x = nn.Conv(6, (3, 3))(x)
        x = nn.relu(nn.BatchNorm(use_running_average=not train)(x))
        x = nn.Dense(16)(x.reshape((x.shape[0], -1)))
        return nn.Dense(CLASSES)(nn.LayerNorm()(x))


class TorchConvNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.Conv_0 = torch.nn.Conv2d(3, 6, 3, padding=1)
        self.BatchNorm_0 = torch.nn.BatchNorm2d(6)
        self.Dense_0 = torch.nn.Linear(6 * 5 * 5, 16)
        self.LayerNorm_0 = torch.nn.LayerNorm(16, eps=1e-6)  # Flax's default epsilon
        self.Dense_1 = torch.nn.Linear(16, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # x is NHWC, as Flax takes it
        x = torch.relu(self.BatchNorm_0(self.Conv_0(x.permute(0, 3, 1, 2))))
        x = self.Dense_0(x.permute(0, 2, 3, 1).reshape(x.shape[0], -1))  # flatten in Flax's (h, w, c) order
        return self.Dense_1(self.LayerNorm_0(x))


def trained_convnet() -> tuple[dict[str, Any], np.ndarray]:
    """ConvNet variables after one training step (so the BatchNorm statistics are not 0 and 1), and
    its eval-mode output."""
    model, x = ConvNet(), images()
    variables = model.init(jax.random.PRNGKey(0), x)
    _, updates = model.apply(variables, x * 3 + 1, train=True, mutable=["batch_stats"])
    variables = {"params": variables["params"], "batch_stats": updates["batch_stats"]}
    return variables, np.asarray(model.apply(variables, x))


class SeqNet(nn.Module):
    """Embed, a recurrent layer over time (nn.RNN of a cell), Dense; computing in float32 whatever
    the parameters' dtype."""

    cell: str = "LSTMCell"

    @nn.compact
    def __call__(self, t: Any) -> Any:
        x = nn.Embed(VOCAB, EMBED, dtype=jnp.float32)(t)
        x = nn.RNN(LINEN_CELLS[self.cell](HIDDEN))(x)
        return nn.Dense(CLASSES)(x)


class TorchSeqNet(torch.nn.Module):
    def __init__(self, cell: str, rnn_path: str) -> None:
        super().__init__()
        self.Embed_0 = torch.nn.Embedding(VOCAB, EMBED)
        self.rnn_path = rnn_path
        self.add_module(rnn_path, TORCH_RNN[cell](EMBED, HIDDEN, batch_first=True))
        self.Dense_0 = torch.nn.Linear(HIDDEN, CLASSES)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        out, _ = getattr(self, self.rnn_path)(self.Embed_0(t))
        return self.Dense_0(out)


def seqnet(cell: str, param_dtype: Any = jnp.float32) -> tuple[dict[str, Any], np.ndarray]:
    """Variables (initialised in float32: XLA's CPU QR, behind the orthogonal init, has no bf16)
    stored as `param_dtype`, and the model's output with them."""
    model, t = SeqNet(cell), tokens()
    variables = jax.tree_util.tree_map(lambda a: a.astype(param_dtype), model.init(jax.random.PRNGKey(1), t))
    return variables, np.asarray(model.apply(variables, t), dtype=np.float32)


class Block(nn.Module):
    @nn.compact
    def __call__(self, x: Any, _: Any) -> tuple[Any, None]:
        return nn.LayerNorm()(nn.relu(nn.Dense(EMBED)(x))) + x, None


class Stacked(nn.Module):
    """Three Blocks stacked by nn.scan: one `layers` module whose tensors have a leading layer axis."""

    @nn.compact
    def __call__(self, x: Any) -> Any:
        scanned = nn.scan(Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)
        x, _ = scanned(name="layers")(x, None)
        return nn.Dense(CLASSES)(x)


class TorchBlock(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.Dense_0 = torch.nn.Linear(EMBED, EMBED)
        self.LayerNorm_0 = torch.nn.LayerNorm(EMBED, eps=1e-6)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm_0(torch.relu(self.Dense_0(x))) + x


class TorchStacked(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.layers = torch.nn.ModuleList([TorchBlock() for _ in range(3)])
        self.Dense_0 = torch.nn.Linear(EMBED, CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for layer in self.layers:
            x = layer(x)
        return self.Dense_0(x)


# --- NNX ------------------------------------------------------------------------------------------


class NNXNet(nnx.Module):
    """Embed, an RNN, a 1-D Conv, BatchNorm, LayerNorm, Dropout (RNG state in the saved state), Linear."""

    def __init__(self, cell: str, rngs: nnx.Rngs) -> None:
        self.embed = nnx.Embed(VOCAB, EMBED, rngs=rngs)
        self.rnn = nnx.RNN(NNX_CELLS[cell](EMBED, HIDDEN, rngs=rngs))
        self.conv = nnx.Conv(HIDDEN, 4, kernel_size=(3,), rngs=rngs)
        self.bn = nnx.BatchNorm(4, rngs=rngs)
        self.ln = nnx.LayerNorm(4, rngs=rngs)
        self.drop = nnx.Dropout(0.1, rngs=rngs)
        self.head = nnx.Linear(4, CLASSES, rngs=rngs)

    def __call__(self, t: Any) -> Any:
        x = self.conv(self.rnn(self.embed(t)))
        return self.head(self.drop(self.ln(self.bn(x))))


class TorchNNXNet(torch.nn.Module):
    def __init__(self, cell: str) -> None:
        super().__init__()
        self.embed = torch.nn.Embedding(VOCAB, EMBED)
        self.rnn = Holder(cell=TORCH_RNN[cell](EMBED, HIDDEN, batch_first=True))
        self.conv = torch.nn.Conv1d(HIDDEN, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm1d(4)
        self.ln = torch.nn.LayerNorm(4, eps=1e-6)
        self.head = torch.nn.Linear(4, CLASSES)

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        x, _ = self.rnn.cell(self.embed(t))
        x = self.bn(self.conv(x.transpose(1, 2))).transpose(1, 2)
        return self.head(self.ln(x))


def trained_nnx(cell: str) -> tuple[NNXNet, np.ndarray]:
    """An NNXNet after one training-mode call (BatchNorm statistics updated), in eval mode, and its output."""
    model, t = NNXNet(cell, nnx.Rngs(2)), tokens()
    model.train()
    model(jnp.asarray(tokens(5)))
    model.eval()
    return model, np.asarray(model(t))


def nnx_weights(model: NNXNet) -> Any:
    """Params and BatchNorm statistics as a plain nested dict, as `nnx.to_pure_dict` gives them."""
    return nnx.to_pure_dict(nnx.state(model, (nnx.Param, nnx.BatchStat)))


def save_orbax(state: Any, folder: Path) -> Path:
    import orbax.checkpoint as ocp

    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(folder, state)
    checkpointer.wait_until_finished()
    return folder
