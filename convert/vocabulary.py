"""The closed vocabularies that users, rule files and manifests name, each defined once.

The JSON schemas' enums and the CLI's choices are bound to these by tests/manifest/test_vocabulary.py.
Light to import: the CLI builds its options from them at start-up. (SafeTensors dtype codes live
in convert.dtypes.DTYPES, beside their numpy types.)
"""

from __future__ import annotations

CAST_TARGETS: dict[str, str] = {"f32": "F32", "f16": "F16", "bf16": "BF16", "f64": "F64"}  # --dtype -> code
# Other spellings --dtype takes (numpy's, torch's, other tools'); outputs and manifests use the names above.
DTYPE_ALIASES: dict[str, str] = {
    "fp32": "f32",
    "float32": "f32",
    "float": "f32",
    "fp16": "f16",
    "float16": "f16",
    "half": "f16",
    "bfloat16": "bf16",
    "fp64": "f64",
    "float64": "f64",
    "double": "f64",
}


def canonical_dtype(name: str) -> str:
    """A --dtype spelling as its name in CAST_TARGETS (unknown spellings come back lowercased, to be refused)."""
    lowered = name.strip().lower()
    return DTYPE_ALIASES.get(lowered, lowered)


CAST_LOSS = ("refuse", "saturate", "accept")  # --cast-loss: what a narrowing cast may do with lost values
TIE_MODES = ("alias", "duplicate")  # how a layout writes tied tensors
QUANTIZE_MODES = ("dynamic-int8", "qdq-int8")  # to-onnx --quantize: the int8 graphs it writes
TRANSFORM_OPS = (
    "cast",
    "transpose",
    "permute",
    "reshape",
    "split",
    "gate_reorder",
    "pad",
    "add_constant",
    "concat",
    "add",
    "select",
    "weight_norm",
    "spectral_norm",
)
