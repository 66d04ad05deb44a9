"""Shared by the ONNX tests: small torch models written as a user's own module file, reading an
exported graph back with ONNX Runtime, and a graph whose weights sit in Constant nodes and
If/Loop/Scan subgraphs."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np

from tests.support import random_array

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


def constant(out: str, value: np.ndarray, name: str = "") -> Any:
    """A Constant node holding `value` (how Paddle2ONNX and others store weights)."""
    from onnx import helper, numpy_helper

    return helper.make_node("Constant", [], [out], name=name, value=numpy_helper.from_array(value))


def model_with_subgraphs() -> Any:
    """y = (cond ? x @ W_then + b_then : x @ W_else) scanned and looped, weights in Constants and
    subgraph initializers, one ConstantOfShape attribute tensor."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    arr = functools.partial(random_array, np.random.default_rng(0))
    then_g = helper.make_graph(
        [
            constant("w_then", arr(3, 3)),
            helper.make_node("MatMul", ["x", "w_then"], ["t0"]),
            helper.make_node("Add", ["t0", "b_then"], ["then_out"]),
        ],
        "then",
        [],
        [helper.make_tensor_value_info("then_out", TensorProto.FLOAT, [2, 3])],
        initializer=[numpy_helper.from_array(arr(3), "b_then")],
    )
    else_g = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w_else"], ["else_out"])],
        "else",
        [],
        [helper.make_tensor_value_info("else_out", TensorProto.FLOAT, [2, 3])],
        initializer=[numpy_helper.from_array(arr(3, 3), "w_else")],
    )
    loop_body = helper.make_graph(
        [
            constant("step", arr(3), name="loop_step"),
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Add", ["acc_in", "step"], ["acc_out"]),
        ],
        "body",
        [
            helper.make_tensor_value_info("iter", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_in", TensorProto.FLOAT, [2, 3]),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("acc_out", TensorProto.FLOAT, [2, 3]),
        ],
    )
    scan_body = helper.make_graph(
        [helper.make_node("Mul", ["row", "scale"], ["row_out"])],
        "scan",
        [helper.make_tensor_value_info("row", TensorProto.FLOAT, [3])],
        [helper.make_tensor_value_info("row_out", TensorProto.FLOAT, [3])],
        initializer=[numpy_helper.from_array(arr(3), "scale")],
    )
    nodes = [
        constant("w_top", arr(3, 3), name="top_const"),
        helper.make_node("MatMul", ["x0", "w_top"], ["x"]),
        helper.make_node("If", ["cond"], ["branch"], name="gate", then_branch=then_g, else_branch=else_g),
        constant("trips", np.array(2, dtype=np.int64)),
        helper.make_node("Loop", ["trips", "cond", "branch"], ["looped"], name="repeat", body=loop_body),
        helper.make_node("Scan", ["looped"], ["scanned"], name="rows", body=scan_body, num_scan_inputs=1),
        helper.make_node("ConstantOfShape", ["shape"], ["zeros"], value=numpy_helper.from_array(np.array([0.5], np.float32))),
        helper.make_node("Add", ["scanned", "zeros"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [
            helper.make_tensor_value_info("x0", TensorProto.FLOAT, [2, 3]),
            helper.make_tensor_value_info("cond", TensorProto.BOOL, []),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        initializer=[numpy_helper.from_array(np.array([2, 3], np.int64), "shape")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    onnx.checker.check_model(model)
    return model
