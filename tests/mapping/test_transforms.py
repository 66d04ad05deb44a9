"""convert/transforms.py: output_spec predicts exactly the shape and dtype apply produces, for every
op and for the chains the built-in layouts use; invalid chains raise MappingError; the pattern
language of rule files matches what it says."""

from __future__ import annotations

import functools
from typing import Any

import ml_dtypes
import numpy as np
import pytest

from convert import transforms as tf
from convert.dtypes import dtype as lookup_dtype
from convert.errors import MappingError
from convert.mapping import _param_fits, compile_pattern
from tests.support import random_array

RNG = np.random.default_rng(0)


arr = functools.partial(random_array, RNG)


def spec_of(arrays: list[np.ndarray]) -> list[tuple[tuple[int, ...], Any]]:
    codes = {np.dtype(np.float32): "F32", np.dtype(np.float64): "F64", np.dtype(np.int64): "I64", np.dtype(np.float16): "F16"}
    return [(a.shape, lookup_dtype(codes[a.dtype])) for a in arrays]


CASES: list[tuple[str, list[dict[str, Any]], list[np.ndarray]]] = [
    ("cast-f16", [{"op": "cast", "to": "F16"}], [arr(3, 4)]),
    ("cast-bf16", [{"op": "cast", "to": "BF16"}], [arr(3, 4)]),
    ("cast-int-to-float", [{"op": "cast", "to": "F32"}], [np.arange(6, dtype=np.int64).reshape(2, 3)]),
    ("transpose-2d", [{"op": "transpose"}], [arr(3, 5)]),
    ("transpose-3d", [{"op": "transpose"}], [arr(2, 3, 4)]),
    ("permute", [{"op": "permute", "axes": [0, 2, 1]}], [arr(2, 3, 4)]),
    ("permute-negative", [{"op": "permute", "axes": [-1, 0, 1]}], [arr(2, 3, 4)]),
    ("reshape-column", [{"op": "reshape", "shape": [-1, 1]}], [arr(6)]),
    ("reshape-infer-middle", [{"op": "reshape", "shape": [2, -1, 3]}], [arr(4, 9)]),
    ("split", [{"op": "split", "axis": 0, "parts": 4, "index": 2}], [arr(8, 3)]),
    ("split-last-axis", [{"op": "split", "axis": -1, "parts": 3, "index": 0}], [arr(2, 9)]),
    ("gate-reorder", [{"op": "gate_reorder", "axis": 0, "parts": 3, "order": [1, 0, 2]}], [arr(6, 2)]),
    ("pad", [{"op": "pad", "axis": 1, "after": 1, "value": 0}], [arr(3, 4)]),
    ("pad-value", [{"op": "pad", "axis": 0, "after": 2, "value": 2.5}], [arr(3)]),
    ("concat", [{"op": "concat", "axis": 1}], [arr(3, 4), arr(3, 2)]),
    (
        "concat-some",
        [{"op": "concat", "axis": 0, "inputs": [0, 2]}, {"op": "select", "inputs": [0]}],
        [arr(2, 3), arr(5), arr(1, 3)],
    ),
    ("add", [{"op": "add"}], [arr(4), arr(4)]),
    ("add-constant", [{"op": "add_constant", "value": 1.0}], [arr(4)]),
    ("add-constant-f16", [{"op": "add_constant", "value": -2}], [arr(3, dtype=np.float16)]),
    ("select", [{"op": "select", "inputs": [1]}], [arr(2), arr(3, 3)]),
    ("unary-on-one-input", [{"op": "reshape", "input": 1, "shape": [-1, 1]}, {"op": "concat", "axis": 1}], [arr(4, 3), arr(4)]),
    ("burn-native-gate", [{"op": "split", "axis": 0, "parts": 4, "index": 1}, {"op": "transpose"}], [arr(20, 6)]),
    (
        "nd-lstm-gate",
        [
            {"op": "split", "axis": 0, "parts": 4, "index": 2},
            {"op": "add", "inputs": [2, 3]},
            {"op": "reshape", "input": 2, "shape": [-1, 1]},
            {"op": "concat", "axis": 1},
        ],
        [arr(20, 6), arr(20, 5), arr(20), arr(20)],
    ),
    (
        "nd-gru-new-gate",
        [
            {"op": "split", "axis": 0, "parts": 3, "index": 2},
            {"op": "select", "inputs": [0, 1, 2]},
            {"op": "reshape", "input": 2, "shape": [-1, 1]},
            {"op": "concat", "axis": 1},
        ],
        [arr(12, 6), arr(12, 4), arr(12), arr(12)],
    ),
    (
        "nd-gru-hidden-bias",
        [{"op": "split", "axis": 0, "parts": 3, "index": 2}, {"op": "select", "inputs": [3]}],
        [arr(12, 6), arr(12, 4), arr(12), arr(12)],
    ),
    ("cast-after-transpose", [{"op": "transpose"}, {"op": "cast", "to": "F32"}], [arr(2, 3, dtype=np.float64)]),
    ("weight-norm-dim0", [{"op": "weight_norm"}], [arr(4, 1, 1), arr(4, 3, 2)]),
    ("weight-norm-whole", [{"op": "weight_norm"}], [np.float32(2.0).reshape(()), arr(4, 3)]),
    ("weight-norm-f16", [{"op": "weight_norm"}, {"op": "transpose"}], [arr(5, 1, dtype=np.float16), arr(5, 2, dtype=np.float16)]),
    ("spectral-norm-dim1", [{"op": "spectral_norm", "dim": 1}], [arr(4, 3, 2), arr(3), arr(8)]),
    ("spectral-norm-1d", [{"op": "spectral_norm", "dim": 0}], [arr(5)]),
]


@pytest.mark.parametrize("chain, sources", [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_output_spec_matches_apply(chain: list[dict[str, Any]], sources: list[np.ndarray]) -> None:
    """output_spec's shape and dtype are exactly what apply produces from real arrays."""
    shape, dt = tf.output_spec(chain, spec_of(sources))
    result = tf.apply(chain, sources)
    assert tuple(result.shape) == shape
    assert result.dtype == dt.numpy


def test_op_semantics() -> None:
    """Each op does what the vocabulary says, checked against plain numpy."""
    a = np.arange(24, dtype=np.float32).reshape(6, 4)
    np.testing.assert_array_equal(tf.apply([{"op": "split", "axis": 0, "parts": 3, "index": 1}], [a]), a[2:4])
    reordered = tf.apply([{"op": "gate_reorder", "axis": 0, "parts": 3, "order": [2, 0, 1]}], [a])
    np.testing.assert_array_equal(reordered, np.concatenate([a[4:6], a[0:2], a[2:4]]))  # new i = old order[i]
    np.testing.assert_array_equal(
        tf.apply([{"op": "pad", "axis": 1, "after": 2, "value": 7}], [a])[:, 4:], np.full((6, 2), 7, np.float32)
    )
    np.testing.assert_array_equal(tf.apply([{"op": "permute", "axes": [1, 0]}], [a]), a.T)
    b = a + 100
    np.testing.assert_array_equal(tf.apply([{"op": "add"}], [a, b]), a + b)
    assert a[0, 0] == 0, "add must not write into its sources"
    np.testing.assert_array_equal(tf.apply([{"op": "select", "inputs": [1]}], [a, b]), b)
    x = np.float32([1.0 + 2**-10])
    assert tf.apply([{"op": "cast", "to": "BF16"}], [x]).dtype == ml_dtypes.bfloat16
    w_ih, w_hh, b_ih, b_hh = arr(8, 3), arr(8, 2), arr(8), arr(8)
    gate = tf.apply(
        [
            {"op": "split", "axis": 0, "parts": 4, "index": 3},
            {"op": "add", "inputs": [2, 3]},
            {"op": "reshape", "input": 2, "shape": [-1, 1]},
            {"op": "concat", "axis": 1},
        ],
        [w_ih, w_hh, b_ih, b_hh],
    )
    np.testing.assert_array_equal(gate, np.concatenate([w_ih[6:], w_hh[6:], (b_ih[6:] + b_hh[6:])[:, None]], axis=1))


INVALID: list[tuple[str, list[dict[str, Any]], list[np.ndarray]]] = [
    ("unknown-op", [{"op": "flip"}], [arr(2, 2)]),
    ("permute-repeats-axis", [{"op": "permute", "axes": [0, 0]}], [arr(2, 3)]),
    ("permute-too-many-axes", [{"op": "permute", "axes": [0, 1, 2]}], [arr(2, 3)]),
    ("permute-axis-out-of-range", [{"op": "permute", "axes": [2, 1]}], [arr(2, 3)]),
    ("reshape-wrong-size", [{"op": "reshape", "shape": [4, 4]}], [arr(3, 5)]),
    ("reshape-two-unknowns", [{"op": "reshape", "shape": [-1, -1]}], [arr(3, 5)]),
    ("reshape-negative-dims", [{"op": "reshape", "shape": [-2, -3]}], [arr(2, 3)]),
    ("split-uneven", [{"op": "split", "axis": 0, "parts": 3, "index": 0}], [arr(4, 2)]),
    ("split-index-past-parts", [{"op": "split", "axis": 0, "parts": 4, "index": 4}], [arr(8, 2)]),
    ("split-missing-axis", [{"op": "split", "axis": 2, "parts": 2, "index": 0}], [arr(4, 2)]),
    ("gate-reorder-not-permutation", [{"op": "gate_reorder", "axis": 0, "parts": 3, "order": [0, 0, 1]}], [arr(6, 2)]),
    ("gate-reorder-short-order", [{"op": "gate_reorder", "axis": 0, "parts": 3, "order": [0, 1]}], [arr(6, 2)]),
    ("pad-missing-axis", [{"op": "pad", "axis": 5, "after": 1}], [arr(2, 2)]),
    ("pad-negative", [{"op": "pad", "axis": 0, "after": -1}], [arr(2, 2)]),
    ("cast-unknown-dtype", [{"op": "cast", "to": "F17"}], [arr(2)]),
    ("concat-misaligned", [{"op": "concat", "axis": 1}], [arr(3, 4), arr(2, 4)]),
    ("concat-rank-differs", [{"op": "concat", "axis": 0}], [arr(3, 4), arr(4)]),
    ("concat-dtypes-differ", [{"op": "concat", "axis": 0}], [arr(3), arr(3, dtype=np.float64)]),
    ("add-shapes-differ", [{"op": "add"}], [arr(3), arr(4)]),
    ("add-dtypes-differ", [{"op": "add"}], [arr(3), arr(3, dtype=np.float16)]),
    ("add-constant-integers", [{"op": "add_constant", "value": 1}], [np.ones(3, np.int64)]),
    ("add-constant-not-a-number", [{"op": "add_constant", "value": "1"}], [arr(3)]),
    ("add-constant-infinite", [{"op": "add_constant", "value": float("inf")}], [arr(3)]),
    ("add-constant-missing-value", [{"op": "add_constant"}], [arr(3)]),
    ("select-nothing", [{"op": "select", "inputs": []}], [arr(3)]),
    ("select-missing-input", [{"op": "select", "inputs": [3]}], [arr(3), arr(3)]),
    ("unary-missing-input", [{"op": "transpose", "input": 2}, {"op": "add"}], [arr(3), arr(3)]),
    ("ends-with-two", [{"op": "transpose"}], [arr(3, 2), arr(2, 3)]),
    ("ends-with-none", [{"op": "select", "inputs": [0]}, {"op": "select", "inputs": [1]}], [arr(3), arr(3)]),
    ("weight-norm-g-two-axes", [{"op": "weight_norm"}], [arr(4, 3), arr(4, 3)]),
    ("weight-norm-g-rank", [{"op": "weight_norm"}], [arr(4, 1), arr(4, 3, 2)]),
    ("weight-norm-one-input", [{"op": "weight_norm"}], [arr(4, 3)]),
    ("weight-norm-integers", [{"op": "weight_norm"}], [np.ones((2, 1), np.int64), np.ones((2, 3), np.int64)]),
    ("spectral-norm-u-wrong", [{"op": "spectral_norm", "dim": 0}], [arr(4, 3), arr(3), arr(3)]),
    ("spectral-norm-2d-alone", [{"op": "spectral_norm", "dim": 0}], [arr(4, 3)]),
]


@pytest.mark.parametrize("chain, sources", [c[1:] for c in INVALID], ids=[c[0] for c in INVALID])
def test_invalid_chain_raises_mapping_error(chain: list[dict[str, Any]], sources: list[np.ndarray]) -> None:
    """output_spec, which every mapping runs before any data is read, rejects the chain."""
    with pytest.raises(MappingError):
        tf.output_spec(chain, spec_of(sources))


def test_apply_rejects_what_it_cannot_do() -> None:
    with pytest.raises(MappingError):
        tf.apply([{"op": "flip"}], [arr(2)])
    with pytest.raises(MappingError):
        tf.apply([{"op": "transpose"}], [arr(2), arr(2)])
    with pytest.raises(MappingError):
        tf.apply([{"op": "split", "axis": 0, "parts": 3, "index": 0}], [arr(4)])


def test_norm_folds_compute_torchs_forms() -> None:
    """weight_norm: g * v / ||v|| over all axes but g's; spectral_norm: w / (u . W v), W = w with
    axis `dim` first and the rest flattened (what torch's eval-mode forward computes)."""
    g, v = arr(4, 1, 1), arr(4, 3, 2)
    want = g * v / np.sqrt(np.square(v).sum(axis=(1, 2), keepdims=True))
    np.testing.assert_allclose(tf.apply([{"op": "weight_norm"}], [g, v]), want, rtol=1e-6)
    w, u, vv = arr(4, 3, 2), arr(3), arr(8)
    sigma = u @ (w.transpose(1, 0, 2).reshape(3, 8) @ vv)
    np.testing.assert_allclose(tf.apply([{"op": "spectral_norm", "dim": 1}], [w, u, vv]), w / sigma, rtol=1e-5)
    assert tf.invertible([{"op": "weight_norm"}])[0] is False


def test_invertible() -> None:
    assert tf.invertible([{"op": "transpose"}, {"op": "reshape", "shape": [-1]}]) == (True, None)
    assert tf.invertible([{"op": "cast", "to": "F64", "lossless": True}]) == (True, None)
    for chain in (
        [{"op": "split", "axis": 0, "parts": 2, "index": 0}],
        [{"op": "add"}],
        [{"op": "select", "inputs": [0]}],
        [{"op": "cast", "to": "F16", "lossless": False}],
    ):
        ok, why = tf.invertible(chain)
        assert not ok and why


def test_patterns() -> None:
    """`{x}` one component, `{x:int}` digits, `{x...}` one or more components, whole name only."""
    p = compile_pattern("{p...}.mlp.{i:int}.weight")
    m = p.match("body.enc.mlp.12.weight")
    assert m is not None and m["p"] == "body.enc" and m["i"] == "12"
    bare = p.match("mlp.0.weight")  # a leading {p...}. may be empty: a module saved at the root
    assert bare is not None and bare["p"] is None and bare["i"] == "0"
    assert compile_pattern("x.{p...}.w").match("x.w") is None  # elsewhere it needs a component
    assert p.match("a.mlp.x.weight") is None
    assert p.match("a.mlp.0.weight.extra") is None
    one = compile_pattern("{a}.bias")
    assert one.match("x.bias") and not one.match("x.y.bias")
    assert compile_pattern("a+b.{x}").match("a+b.c") and not compile_pattern("a+b.{x}").match("aab.c")
    assert _param_fits(2, ">1") and not _param_fits(1, ">1") and _param_fits(3, "!=1")
    assert _param_fits(True, True) and not _param_fits(False, True)
