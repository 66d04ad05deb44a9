"""The GGUF output's own options, declared apart from the output so that the CLI builds `to-gguf`'s
flags at start-up without loading numpy or the quantizers (convert.outputs.registry.OWN_OPTIONS)."""

from __future__ import annotations

from convert.output_contract import OutputOption

from .ggml_types import TYPES
from .presets import PRESETS

DEFAULT_TYPE = "f16"  # as llama.cpp's converter writes by default
TYPE = OutputOption(
    "type",
    str,
    DEFAULT_TYPE,
    "ggml type of 2-D and larger tensors (1-D ones stay F32; rows no block fits fall back as llama-quantize does), "
    "or llama.cpp's q4_k_m / q5_k_m preset for a language model (per-tensor types as llama-quantize chooses)",
    (*TYPES, *(p for p in PRESETS if p not in TYPES)),
    brief=f"the ggml type, as to-gguf's --type (default {DEFAULT_TYPE}).",
)
TYPE_OVERRIDE = OutputOption(
    "type_override",
    tuple,
    (),
    "The type of the tensors whose name matches PATTERN (the layout rules' syntax: {n}, {n:int}, {p...}); "
    "repeatable, the last match wins.",
    metavar="PATTERN=TYPE",
)
NO_VOCAB = OutputOption(
    "no_vocab",
    bool,
    False,
    "Write a language model without its tokenizer (llama.cpp then loads it with no vocabulary: token ids in, logits out).",
)
OPTIONS: tuple[OutputOption, ...] = (TYPE, TYPE_OVERRIDE, NO_VOCAB)
