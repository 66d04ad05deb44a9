"""TFLite models made by TensorFlow's TFLite converter, read without TensorFlow: every constant tensor
equals what the TFLite interpreter holds (after the recorded layout change), conv/depthwise/dense
weights in PyTorch layout compute what the interpreter computes, int8 weights dequantized or kept with
their scales; hostile offsets refused."""

from __future__ import annotations

import functools
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
tf = pytest.importorskip("tensorflow", reason="needs TensorFlow's TFLite converter and interpreter")
torch = pytest.importorskip("torch", reason="runs the converted weights")

from tests.support import assert_cli_error, assert_no_output, converted_arrays, read_manifest, run_cli  # noqa: E402


def tflite_of(layer: Any, shape: tuple[int, ...], path: Path, int8: bool = False) -> Path:
    tf.keras.utils.set_random_seed(0)
    model = tf.keras.Sequential([tf.keras.Input(shape), layer])
    for w in model.weights:  # non-zero biases, so a wrong bias layout shows
        w.assign(np.random.default_rng(1).standard_normal(w.shape).astype(np.float32))
    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    if int8:
        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = lambda: (
            [np.random.default_rng(i).standard_normal((1, *shape)).astype(np.float32)] for i in range(8)
        )
    path.write_bytes(converter.convert())
    return path


def interpreter_constants(path: Path) -> tuple[Any, dict[str, tuple[np.ndarray, dict[str, Any]]]]:
    interp = tf.lite.Interpreter(model_path=str(path))
    interp.allocate_tensors()
    consts = {}
    for d in interp.get_tensor_details():
        try:
            value = interp.get_tensor(d["index"])
        except ValueError:
            continue
        if d["index"] not in {i["index"] for i in interp.get_input_details() + interp.get_output_details()} and value.size:
            consts[d["name"]] = (value, d["quantization_parameters"])
    return interp, consts


def run_interpreter(interp: Any, x: np.ndarray) -> np.ndarray:
    interp.set_tensor(interp.get_input_details()[0]["index"], x)
    interp.invoke()
    return interp.get_tensor(interp.get_output_details()[0]["index"])


convert = functools.partial(converted_arrays, "tflite-to-safetensors", verify=True)


LAYOUT = {"conv": (0, 3, 1, 2), "depthwise": (3, 0, 1, 2)}


@pytest.mark.parametrize("kind", ["conv", "depthwise", "dense"])
def test_float_weights_in_pytorch_layout_compute_what_tflite_computes(kind: str, tmp_path: Path) -> None:
    layer, shape = {
        "conv": (tf.keras.layers.Conv2D(4, 3), (6, 6, 3)),
        "depthwise": (tf.keras.layers.DepthwiseConv2D(3, depth_multiplier=2), (6, 6, 3)),
        "dense": (tf.keras.layers.Dense(5), (7,)),
    }[kind]
    src = tflite_of(layer, shape, tmp_path / "m.tflite")
    stored = convert(src, tmp_path / "out")
    interp, consts = interpreter_constants(src)
    doc = read_manifest(tmp_path / "out")
    for name, (value, _) in consts.items():  # every constant, equal up to the recorded permute
        transforms = doc["source"]["details"]["origins"][name].get("transforms", [])
        expected = np.transpose(value, transforms[0]["axes"]) if transforms else value
        assert np.array_equal(stored[name], expected), name
    assert len(stored) == len(consts)
    weight = torch.from_numpy(next(v for v in stored.values() if v.ndim >= 2))
    bias = torch.from_numpy(next(v for v in stored.values() if v.ndim == 1 and v.dtype == np.float32))
    x = np.random.default_rng(2).standard_normal((1, *shape)).astype(np.float32)
    expected = run_interpreter(interp, x)
    with torch.no_grad():
        if kind == "dense":
            got = torch.nn.functional.linear(torch.from_numpy(x), weight, bias).numpy()
        else:
            nchw = torch.from_numpy(x).permute(0, 3, 1, 2)
            groups = 3 if kind == "depthwise" else 1
            got = torch.nn.functional.conv2d(nchw, weight, bias, groups=groups).permute(0, 2, 3, 1).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_int8_weights_dequantized_or_kept(tmp_path: Path) -> None:
    src = tflite_of(tf.keras.layers.Conv2D(4, 3), (6, 6, 3), tmp_path / "q.tflite", int8=True)
    _, consts = interpreter_constants(src)
    quantized = {n: (v, q) for n, (v, q) in consts.items() if v.dtype == np.int8}
    assert quantized, "the converter should have stored int8 weights"
    deq = convert(src, tmp_path / "deq")
    kept = convert(src, tmp_path / "kept", "--quantized", "keep")
    for name, (value, q) in quantized.items():
        scale, zero, axis = q["scales"], q["zero_points"], q["quantized_dimension"]
        shape = [1] * value.ndim
        shape[axis] = scale.size
        reference = ((value.astype(np.float64) - zero.reshape(shape)) * scale.reshape(shape)).astype(np.float32)
        reference = np.transpose(reference, LAYOUT["conv"]) if value.ndim == 4 else reference
        assert deq[name].dtype == np.float32 and np.array_equal(deq[name], reference), name
        kept_value = np.transpose(value, LAYOUT["conv"]) if value.ndim == 4 else value
        assert np.array_equal(kept[name], kept_value)
        assert np.array_equal(kept[f"{name}.scale"], scale) and np.array_equal(kept[f"{name}.zero_point"], zero)
    record = read_manifest(tmp_path / "deq")["source"]["details"]["quantization"]
    assert set(quantized) <= set(record)


def _buffer_vector(data: bytes) -> int:
    """The position of the largest buffer's length word in a real file (found by its known size)."""

    def length_word(i: int) -> int:  # -1 where the word cannot be a buffer's length
        n = struct.unpack_from("<I", data, i)[0]
        return n if n < len(data) and i + 4 + n <= len(data) else -1

    best = max(range(0, len(data) - 4, 4), key=length_word)
    return best


@pytest.mark.parametrize("damage", ["root", "vector", "truncated"])
def test_offsets_past_the_end_are_corrupt(damage: str, tmp_path: Path) -> None:
    src = tflite_of(tf.keras.layers.Dense(64), (64,), tmp_path / "m.tflite")
    data = bytearray(src.read_bytes())
    if damage == "root":
        data[0:4] = struct.pack("<I", len(data) + 1000)
    elif damage == "vector":
        at = _buffer_vector(bytes(data))
        data[at : at + 4] = struct.pack("<I", 0x7FFFFFF0)
    else:
        data = data[: len(data) // 2]
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert_cli_error(run_cli("auto", bad, out), 6)
    assert_no_output(out)


def _quantized_fields(data: bytes) -> dict[str, tuple[int, int]]:
    """Where a real file keeps (start, count) of the first int8 tensor's scales and zero points, and
    of the convolution's input indices, found with the reader's own flatbuffer walk."""
    from exporters.tflite.reader import _Flat

    fb = _Flat(np.frombuffer(data, np.uint8), "x")
    subgraph = fb.tables(fb.u32(0), 2)[0]
    tensor = next(t for t in fb.tables(subgraph, 0) if fb.scalar(t, 1, "b") == 9 and fb.ref(t, 4) is not None)  # INT8
    params = fb.ref(tensor, 4)
    assert params is not None
    conv = max(fb.tables(subgraph, 3), key=lambda op: fb.vector(op, 1)[1])  # input, filter, bias
    return {"scale": fb.vector(params, 2), "zero_point": fb.vector(params, 3), "inputs": fb.vector(conv, 1)}


@pytest.mark.parametrize(
    "damage",
    ["scale NaN", "scale zero", "scale negative", "zero point past int8", "operator input past the tensors", "input -7"],
)
def test_quantization_values_that_lose_data_are_corrupt(damage: str, tmp_path: Path) -> None:
    """A NaN or zero scale dequantized to all NaN or all zero, a zero point outside
    the integer type, an operator input index past the tensors (its filter left untransposed): exit 0."""
    src = tflite_of(tf.keras.layers.Conv2D(4, 3), (6, 6, 3), tmp_path / "q.tflite", int8=True)
    data = bytearray(src.read_bytes())
    fields = _quantized_fields(bytes(data))
    if damage.startswith("scale"):
        value = {"scale NaN": float("nan"), "scale zero": 0.0, "scale negative": -0.5}[damage]
        struct.pack_into("<f", data, fields["scale"][0], value)
    elif damage.startswith("zero point"):
        struct.pack_into("<q", data, fields["zero_point"][0], 1000)
    else:
        start, count = fields["inputs"]
        struct.pack_into("<i", data, start + 4 * (count - 1 if damage == "input -7" else 1), 10_000 if "past" in damage else -7)
    bad = tmp_path / "bad.tflite"
    bad.write_bytes(bytes(data))
    out = tmp_path / "out"
    assert_cli_error(run_cli("auto", bad, out), 6)
    assert_no_output(out)
