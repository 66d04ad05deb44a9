"""The reader options that more than one reader takes, declared once (light: no numpy), so that the
CLI builds its flags at start-up; each reader lists them among its face's `options`."""

from __future__ import annotations

from convert.options import Option

QUANTIZED_MODES = ("dequantize", "keep")  # int8/uint8 weights of TFLite and ONNX models

KEY = Option("key", str, None, "For checkpoints: dotted path of the dict holding the tensors.")
QUANTIZED = Option(
    "quantized",
    str,
    "dequantize",
    "int8/uint8 weights: dequantize to f32, or keep them with NAME.scale and NAME.zero_point tensors.",
    QUANTIZED_MODES,
)
