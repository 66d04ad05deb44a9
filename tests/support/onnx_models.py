"""Shared by the ONNX tests: small torch models written as a user's own module file, and reading an
exported graph back with ONNX Runtime."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

# A user's model file: `convert to-onnx --module onnx_models:NAME` imports it from the working folder.
MODELS_SOURCE = '''
import torch
from torch import nn


class MLP(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.fc2 = nn.Linear(16, 16, bias=False)
        self.head = nn.Linear(16, 3)

    def forward(self, x):
        return self.head(torch.relu(self.fc2(torch.tanh(self.fc1(x)))))


class CNN(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(8, 8, 3, stride=2)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8, 4)

    def forward(self, images):
        h = torch.relu(self.bn1(self.conv1(images)))
        h = torch.relu(self.bn2(self.conv2(h)))
        return self.fc(h.mean(dim=(2, 3)))


class Tagger(nn.Module):
    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(5, 8)
        self.lstm = nn.LSTM(8, 12, num_layers=2, batch_first=True)
        self.head = nn.Linear(12, 3)

    def forward(self, tokens):
        out, _ = self.lstm(self.proj(tokens))
        return self.head(out)


class Encoder(nn.Module):
    """Linear layers over [batch, seq, features]: exporters store W^T under names they invent."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(5, 8, bias=False)
        self.blocks = nn.ModuleList([nn.Linear(8, 8), nn.Linear(8, 8)])
        self.head = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 3))

    def forward(self, tokens):
        h = self.proj(tokens)
        for block in self.blocks:
            h = h + torch.tanh(block(h))
        return self.head(h)


class Wide(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = nn.Linear(600, 600)

    def forward(self, x):
        return self.fc(x)


def mlp():
    torch.manual_seed(0)
    return MLP()


def cnn():
    torch.manual_seed(0)
    return CNN()


def tagger():
    torch.manual_seed(0)
    return Tagger()


def encoder():
    torch.manual_seed(0)
    return Encoder()


def wide():
    torch.manual_seed(0)
    return Wide()
'''


def write_models(folder: Path, source: str = MODELS_SOURCE, name: str = "onnx_models") -> Any:
    """Write a user's models file `name`.py into `folder` and import it (for the test's own reference
    forward pass)."""
    import importlib.util

    path = folder / f"{name}.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location(f"{name}_{abs(hash(str(folder)))}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def run_onnx(path: Path, inputs: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def perturbed(model: Any) -> Any:
    """The model with its largest floating initializer changed: what a broken export would write."""
    from onnx import numpy_helper

    floats = [t for t in model.graph.initializer if t.data_type == 1]
    target = max(floats, key=lambda t: int(np.prod(t.dims)))
    changed = numpy_helper.to_array(target) + np.float32(0.5)
    target.CopyFrom(numpy_helper.from_array(changed, target.name))
    return model
