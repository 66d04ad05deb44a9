"""Int8 graphs for the Rust runtimes that read ONNX: ONNX Runtime's own quantizer, run on the
validated float graph, in the two forms the runtimes take.

- `dynamic-int8`: weights int8 per channel, activations quantized at run time
  (`quantize_dynamic`: MatMulInteger, ConvInteger, DynamicQuantizeLSTM). The `ort` crate runs it;
  tract does not (DynamicQuantizeLSTM is an ONNX Runtime contrib operator).
- `qdq-int8`: static QuantizeLinear/DequantizeLinear pairs with one scale and zero point per tensor,
  calibrated on the user's inputs or on generated ones. tract's ONNX loader reads only the first
  scale and zero point of each Q/DQ node, and only constant ones, so the graph is checked to hold
  nothing else (`tract_violations`) before it is kept.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convert.errors import UsageError, VerificationError, first_line
from convert.manifest_model import QuantizationMethod
from convert.vocabulary import QUANTIZE_MODES
from exporters.onnx_export.inputs import check_arrays, load_npz, random_values
from exporters.onnx_export.spec import InputSpec

CALIBRATION_ROWS = 256  # generated calibration inputs: rows along the batch axis (64 left tails out, README)
CALIBRATION_BATCH = 32  # rows per calibration run: ONNX Runtime keeps every intermediate output of a run
CALIBRATION_SEED = 1  # validation's generated inputs use seed 0: calibration never sees them
GENERATED = "generated: standard normal floats, integer and bool inputs uniform in their ranges"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
TOOLS = {"dynamic-int8": "quantize_dynamic", "qdq-int8": "quantize_static, QDQ"}


@dataclass
class Calibration:
    arrays: dict[str, np.ndarray]
    source: str  # what the values are, in words (the manifest records it)
    batched: tuple[str, ...]  # the inputs with a batch axis, fed CALIBRATION_BATCH rows at a time


def check_options(mode: str | None, calibration: str | None, quantized_atol: float | None) -> None:
    """The quantization options agree with each other, before any export work."""
    if mode is not None and mode not in QUANTIZE_MODES:
        raise UsageError(f"--quantize {mode!r}: choose one of {', '.join(QUANTIZE_MODES)}")
    if calibration is not None and mode is None:
        raise UsageError("--calibration calibrates an int8 graph: give --quantize qdq-int8 too")
    if calibration is not None and mode != "qdq-int8":
        raise UsageError("--calibration calibrates --quantize qdq-int8; dynamic-int8 quantizes activations at run time")
    if quantized_atol is not None and mode is None:
        raise UsageError("--quantized-atol bounds an int8 graph's error: give --quantize too")


def calibration_inputs(specs: list[InputSpec], samples: dict[str, np.ndarray] | None, npz: str | None) -> Calibration:
    """What static quantization measures activation ranges on: the user's .npz (read without
    pickle, checked like --inputs), else the source's own example inputs, else generated values."""
    batched = tuple(s.name for s in specs if 0 in s.dynamic)
    if npz is not None:
        return Calibration(load_npz(npz, specs), f"--calibration {Path(npz).name}", batched)
    if samples is not None:
        source = "the source's example inputs"
        return Calibration(check_arrays(samples, specs, source), source, batched)
    rng = np.random.default_rng(CALIBRATION_SEED)
    return Calibration({s.name: random_values(rng, _rows(s), s) for s in specs}, GENERATED, batched)


def _rows(spec: InputSpec) -> tuple[int, ...]:
    return (CALIBRATION_ROWS, *spec.shape[1:]) if 0 in spec.dynamic else spec.shape


def quantize(model: Any, mode: str, calibration: Calibration | None, scratch: Path) -> tuple[Any, QuantizationMethod]:
    """The int8 graph of the float `model`, and what was done, for the manifest's graph section."""
    import onnx
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_dynamic, quantize_static

    target = scratch / f"{mode}.onnx"
    large = model.ByteSize() >= 2**31 - 2**20
    try:
        if mode == "dynamic-int8":
            quantize_dynamic(model, target, per_channel=True, weight_type=QuantType.QInt8, use_external_data_format=large)
        else:
            assert calibration is not None
            quantize_static(
                model,
                target,
                _Reader(calibration),
                quant_format=QuantFormat.QDQ,
                per_channel=False,
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                use_external_data_format=large,
            )
    except Exception as exc:  # ONNX Runtime's quantizer raises many types, its C++ errors among them
        raise VerificationError(f"ONNX Runtime cannot quantize the graph ({mode}): {first_line(exc)}") from None
    quantized = onnx.load(str(target))
    if mode == "qdq-int8":
        problems = tract_violations(quantized)
        if problems:
            raise VerificationError(f"the qdq-int8 graph is not per-tensor as tract needs: {problems[0]}")
    record: QuantizationMethod = {
        "mode": mode,
        "tool": f"onnxruntime.quantization {_ort_version()} ({TOOLS[mode]})",
        "weights": "int8",
        "activations": "int8 at run time (dynamic)" if mode == "dynamic-int8" else "int8, calibrated",
        "per_channel": mode == "dynamic-int8",
        "int8_weight_ops": int8_weight_ops(quantized),
        "runtimes": ["ort"] if mode == "dynamic-int8" else ["ort", "tract"],
    }
    if calibration is not None:
        rows = max((int(calibration.arrays[name].shape[0]) for name in calibration.batched), default=1)
        record["calibration"] = {"from": calibration.source, "rows": rows, "method": "MinMax"}
    return quantized, record


class _Reader:
    """The calibration arrays in runs of CALIBRATION_BATCH rows: onnxruntime.quantization's
    CalibrationDataReader accepts any object with `get_next`."""

    def __init__(self, calibration: Calibration) -> None:
        arrays, batched = calibration.arrays, calibration.batched
        rows = max((arrays[name].shape[0] for name in batched), default=1)
        self.feeds: Iterator[dict[str, np.ndarray]] = iter(
            [
                {name: a[start : start + CALIBRATION_BATCH] if name in batched else a for name, a in arrays.items()}
                for start in range(0, rows, CALIBRATION_BATCH)
            ]
        )

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self.feeds, None)


def _ort_version() -> str:
    import onnxruntime

    return str(onnxruntime.__version__)


def int8_weight_ops(model: Any) -> dict[str, int]:
    """By op type, the nodes that take an int8 or uint8 weight: directly (MatMulInteger, ConvInteger,
    DynamicQuantizeLSTM, a Gather on a quantized table) or through a DequantizeLinear (QDQ)."""
    import onnx

    integer = {onnx.TensorProto.INT8, onnx.TensorProto.UINT8}
    weights = {t.name for t in model.graph.initializer if t.data_type in integer}
    dequantized = {n.output[0] for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] in weights}
    counts: dict[str, int] = {}
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS and any(i in weights or i in dequantized for i in node.input):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return dict(sorted(counts.items()))


def tract_violations(model: Any) -> list[str]:
    """Q/DQ nodes tract would misread: a scale or zero point that is not one constant value."""
    from onnx import numpy_helper

    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute:
            constants[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    problems = []
    for node in model.graph.node:
        if node.op_type not in QDQ_OPS:
            continue
        for role, name in zip(("scale", "zero point"), node.input[1:3], strict=False):
            value = constants.get(name)
            if value is None:
                problems.append(f"{node.op_type} {node.name!r}: its {role} {name!r} is not a constant")
            elif value.size != 1:
                problems.append(f"{node.op_type} {node.name!r}: its {role} {name!r} holds {value.size} values (per axis)")
    return problems
