"""ONNX tensors outside graph.initializer: Constant nodes (how Paddle2ONNX and others store weights),
other nodes' tensor attributes, and the initializers and Constants of If/Loop/Scan subgraphs, named by
their scope; every value equals what onnx's own reader returns, and ONNX Runtime runs the model."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

onnx = pytest.importorskip("onnx", reason="needs the onnx extra")
ort = pytest.importorskip("onnxruntime", reason="needs the onnx extra")

from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from tests.support import assert_cli_error, assert_no_output, load_output, random_array, read_manifest, run_cli  # noqa: E402
from tests.support.onnx_graphs import constant, model_with_subgraphs  # noqa: E402

RNG = np.random.default_rng(0)


arr = functools.partial(random_array, RNG)


def reference_tensors(model: Any) -> dict[str, np.ndarray]:
    """Every tensor of the model as onnx's numpy_helper reads it, found by an explicit walk of this model."""
    g = model.graph
    nodes = {n.name or n.op_type: n for n in g.node}
    attr = {a.name: a for n in g.node for a in n.attribute}
    then_g, else_g = attr["then_branch"].g, attr["else_branch"].g
    return {
        "shape": numpy_helper.to_array(g.initializer[0]),
        "w_top": numpy_helper.to_array(nodes["top_const"].attribute[0].t),
        "gate/then_branch/w_then": numpy_helper.to_array(then_g.node[0].attribute[0].t),
        "gate/then_branch/b_then": numpy_helper.to_array(then_g.initializer[0]),
        "gate/else_branch/w_else": numpy_helper.to_array(else_g.initializer[0]),
        "trips": numpy_helper.to_array(g.node[3].attribute[0].t),
        "repeat/body/step": numpy_helper.to_array(nodes["repeat"].attribute[0].g.node[0].attribute[0].t),
        "rows/body/scale": numpy_helper.to_array(nodes["rows"].attribute[0].g.initializer[0]),
        "ConstantOfShape_6/value": numpy_helper.to_array(g.node[6].attribute[0].t),
    }


def test_constants_and_subgraph_tensors_are_converted(tmp_path: Path) -> None:
    model = model_with_subgraphs()
    src = tmp_path / "m.onnx"
    onnx.save(model, src)
    session = ort.InferenceSession(str(src), providers=["CPUExecutionProvider"])  # a model ONNX Runtime runs
    assert session.run(None, {"x0": arr(2, 3), "cond": np.array(True)})[0].shape == (2, 3)
    out = tmp_path / "out"
    code, _, err = run_cli("onnx-to-safetensors", src, out)
    assert code == 0, err
    stored = {k: v.numpy() for k, v in load_output(out).items()}
    expected = reference_tensors(model)
    assert set(stored) == set(expected)
    for name, value in expected.items():
        assert stored[name].dtype == value.dtype and np.array_equal(stored[name], value), name
    doc = read_manifest(out)
    assert doc["source"]["details"]["tensors_in_graph"] == {"initializers": 1, "in_nodes_and_subgraphs": 8}
    assert run_cli("verify", out, "--source", src)[0] == 0


def test_weights_only_in_constants_are_not_lost(tmp_path: Path) -> None:
    """The issue's case: no initializers at all, weights in Constant nodes (0 tensors written before)."""
    w, b = arr(4, 3), arr(4)
    graph = helper.make_graph(
        [
            constant("fc.weight", w),
            constant("fc.bias", b),
            helper.make_node("Gemm", ["x", "fc.weight", "fc.bias"], ["y"], transB=1),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    src = tmp_path / "c.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), src)
    out = tmp_path / "out"
    assert run_cli("auto", src, out)[0] == 0
    stored = load_output(out)
    assert np.array_equal(stored["fc.weight"].numpy(), w) and np.array_equal(stored["fc.bias"].numpy(), b)


def test_a_tensor_in_an_unknown_place_fails_closed(tmp_path: Path) -> None:
    """A tensor the walk does not reach (a sparse Constant) makes the count check fail: exit 4, no output."""
    sparse = helper.make_sparse_tensor(numpy_helper.from_array(arr(2)), numpy_helper.from_array(np.array([0, 3], np.int64)), [5])
    node = helper.make_node("Constant", [], ["s"], sparse_value=sparse)
    graph = helper.make_graph([node], "g", [], [helper.make_tensor_value_info("s", TensorProto.FLOAT, [5])])
    src = tmp_path / "s.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), src)
    out = tmp_path / "out"
    assert_cli_error(run_cli("onnx-to-safetensors", src, out), 4, "holds 1 tensors but only 0")
    assert_no_output(out)
