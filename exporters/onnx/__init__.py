"""ONNX models' initializers (external data too), read with the onnx package, never run."""

from __future__ import annotations

from pathlib import Path

from convert.contract import Probe, ReaderFace, ReaderOptions
from convert.source import SourceModel
from exporters.shared.options import QUANTIZED


def sniff(probe: Probe) -> bool:
    return probe.path.suffix == ".onnx" and probe.head[:1] == b"\x08"  # ModelProto, field 1 (ir_version) first


def open_source(path: Path, options: ReaderOptions) -> SourceModel:
    from .reader import open_onnx

    return open_onnx(path, options.value(QUANTIZED))


READER = ReaderFace(
    kind="onnx",
    command="onnx-to-safetensors",
    extra="onnx",
    sniff=sniff,
    open=open_source,
    summary="Extract an ONNX model's weights (initializers, external data files included) into the folder OUT. "
    "Names the PyTorch exporters invented (onnx::MatMul_12, val_3) are traced back to parameter names "
    "through the graph; the manifest summarizes the graph's operators. Int8 weights (to-onnx --quantize, "
    "ONNX Runtime's quantizer) are dequantized or kept (--quantized). The model is never run.",
    options=(QUANTIZED,),
    option_help={
        "quantized": "int8/uint8 weights (and int32 biases) with a scale in the graph: dequantize to f32, or keep "
        "them as stored beside their scale and zero-point tensors; recorded either way."
    },
    suffixes=(".onnx",),
    short="Extract an ONNX model's initializers (weights).",
    example="convert onnx-to-safetensors model.onnx weights/",
)
