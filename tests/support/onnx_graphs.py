"""ONNX graphs built node by node: weights in Constant nodes (how Paddle2ONNX and others store them)
and in the initializers and Constants of If/Loop/Scan subgraphs."""

from __future__ import annotations

import functools
from typing import Any

import numpy as np

from tests.support import random_array


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
