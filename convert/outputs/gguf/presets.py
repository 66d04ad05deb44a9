"""llama.cpp's mixed presets (`llama-quantize` file types) as per-tensor types: what
`llama_tensor_get_type_impl` in `src/llama-quant.cpp` gives each tensor of a dense model for
Q4_K_M, Q5_K_M, Q6_K and Q8_0.

- the output projection (or, when the model has none, the token embedding it shares) takes Q6_K, or
  Q8_0 when its rows are not whole blocks of the preset's type; Q8_0 keeps Q8_0;
- `attn_v` and `ffn_down` take Q6_K in the layers `use_more_bits` picks (the first and last eighth
  of the layers, and every third between) for Q4_K_M and Q5_K_M;
- a fused `attn_qkv` takes Q5_K for Q4_K_M and Q6_K for Q5_K_M;
- everything else 2-D takes the preset's type; 1-D tensors, norms and learned positions stay F32
  (llama-quantize quantizes neither); rows no block fits fall back as for a plain --type.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

from convert.errors import UsageError

from .ggml_types import TYPES

POSITIONS = "position_embd.weight"  # llama-quantize leaves learned positions unquantized


@dataclass(frozen=True)
class Preset:
    base: str  # the ggml type most tensors take
    file_type: int  # llama.cpp's llama_ftype
    more_bits: bool  # attn_v / ffn_down of use_more_bits layers in Q6_K
    qkv: str | None  # a fused attn_qkv's type


PRESETS = {
    "q4_k_m": Preset("q4_k", 15, True, "q5_k"),
    "q5_k_m": Preset("q5_k", 17, True, "q6_k"),
    "q6_k": Preset("q6_k", 18, False, None),
    "q8_0": Preset("q8_0", 7, False, None),
}
BLOCK_ELEMENTS = {"q4_k": 256, "q5_k": 256, "q6_k": 256, "q8_0": 32}
LAYER = re.compile(r"^blk\.(\d+)\.")


def use_more_bits(layer: int, layers: int) -> bool:
    return layer < layers // 8 or layer >= 7 * layers // 8 or (layer - layers // 8) % 3 == 2


def preset_types(preset_name: str, tensors: Sequence[tuple[str, tuple[int, ...]]], layers: int) -> dict[str, tuple[str, str]]:
    """{tensor name: (type, why)} for each tensor the preset does not leave at its base type."""
    preset = PRESETS[preset_name]
    names = {name for name, _shape in tensors}
    output = "output.weight" if "output.weight" in names else "token_embd.weight"
    chosen: dict[str, tuple[str, str]] = {}
    for name, shape in tensors:
        if name == POSITIONS and len(shape) >= 2:
            chosen[name] = ("f32", f"{preset_name}: learned positions stay unquantized, as llama-quantize leaves them")
        elif name == output and len(shape) >= 2:
            whole = shape[-1] % BLOCK_ELEMENTS[preset.base] == 0
            kind = preset.base if preset.base == "q8_0" and whole else "q6_k" if whole else "q8_0"
            if kind != preset.base:
                chosen[name] = (kind, f"{preset_name}: the output projection in {kind}, as llama-quantize chooses")
        elif preset.qkv and name.endswith("attn_qkv.weight"):
            chosen[name] = (preset.qkv, f"{preset_name}: a fused attn_qkv in {preset.qkv}")
        elif preset.more_bits and (name.endswith("attn_v.weight") or name.endswith("ffn_down.weight")):
            found = LAYER.match(name)
            if found and use_more_bits(int(found.group(1)), layers):
                chosen[name] = ("q6_k", f"{preset_name}: layer {found.group(1)} of {layers} is one use_more_bits picks: q6_k")
    return chosen


@dataclass
class Mixed:
    """A preset as `build.plan` takes it: the base type, one exact-name override per tensor it
    raises or keeps (before the user's, which win), the reasons to record, and the file type."""

    base: str
    overrides: list[str]
    reasons: dict[str, str]  # override text -> why
    file_type: int | None = None


def mixed(type_name: str, tensors: Sequence[tuple[str, tuple[int, ...]]], llm: bool) -> Mixed:
    """`--type` as a plain type, or as a preset's per-tensor types (for a language model in
    llama.cpp's names: the rules read them)."""
    name = type_name.strip().lower()
    preset = PRESETS.get(name)
    if preset is None or not llm:
        if name in PRESETS and name not in TYPES:
            raise UsageError(
                f"--type {type_name}: a llama.cpp preset, for language models of a family this tool names as llama.cpp does"
            )
        return Mixed(type_name, [], {})
    layers = 1 + max((int(m.group(1)) for n, _s in tensors if (m := LAYER.match(n))), default=-1)
    overrides, reasons = [], {}
    for tensor, (kind, why) in preset_types(name, tensors, layers).items():
        text = f"{tensor}={kind}"
        overrides.append(text)
        reasons[text] = why
    return Mixed(preset.base, overrides, reasons, preset.file_type)


def relabel(planned: Sequence[Any], m: Mixed) -> None:
    """Each tensor a preset override chose is recorded with the preset's reason, not as a
    --type-override the user did not write."""
    for p in planned:
        reason = p.choice.reason or ""
        for text, why in m.reasons.items():
            said = f"--type-override {text}"
            if reason == said or reason.startswith(said + ";"):
                p.choice = replace(p.choice, reason=why + reason[len(said) :])
