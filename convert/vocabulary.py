"""The closed vocabularies that users, rule files and manifests name, each defined once.

The JSON schemas' enums and the CLI's choices are bound to these by tests/test_vocabulary.py.
Light to import: the CLI builds its options from them at start-up. (SafeTensors dtype codes live
in convert.dtypes.DTYPES, beside their numpy types.)
"""

from __future__ import annotations

CAST_TARGETS: dict[str, str] = {"f32": "F32", "f16": "F16", "bf16": "BF16", "f64": "F64"}  # --dtype -> code
CAST_LOSS = ("refuse", "saturate", "accept")  # --cast-loss: what a narrowing cast may do with lost values
TIE_MODES = ("alias", "duplicate")  # how a layout writes tied tensors
QUANTIZED_MODES = ("dequantize", "keep")  # --quantized: TFLite int8/uint8 weights
TRANSFORM_OPS = ("cast", "transpose", "permute", "reshape", "split", "gate_reorder", "pad", "concat", "add", "select")
