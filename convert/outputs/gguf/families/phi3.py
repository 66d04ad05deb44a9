"""Phi-3: fused `qkv_proj` and `gate_up_proj`, kept fused as llama.cpp's `attn_qkv` and `ffn_up`
(its loader splits them); NeoX-style RoPE over a `partial_rotary_factor` of each head."""

from __future__ import annotations

from ..file_format import Value, u32
from .table import Config, Entry, Family, common_keys

LAYER = "model.layers.{n:int}"
BLOCK = "blk.{n}"


def _keys(cfg: Config) -> dict[str, Value]:
    keys = common_keys(cfg)
    rotary = int(float(cfg.get("partial_rotary_factor", 1.0)) * int(cfg.need("hidden_size"))) // int(
        cfg.need("num_attention_heads")
    )
    keys[cfg.key("rope.dimension_count")] = u32(rotary)
    keys[cfg.key("rope.scaling.original_context_length")] = u32(
        int(cfg.get("original_max_position_embeddings") or cfg.need("max_position_embeddings"))
    )
    if cfg.get("sliding_window") is not None:
        keys[cfg.key("attention.sliding_window")] = u32(int(cfg.need("sliding_window")))
    return keys


PHI3 = Family(
    "phi3",
    ("phi3",),
    (
        Entry("model.embed_tokens.weight", "token_embd.weight"),
        Entry("model.norm.weight", "output_norm.weight"),
        Entry("lm_head.weight", "output.weight"),
        Entry(f"{LAYER}.input_layernorm.weight", f"{BLOCK}.attn_norm.weight"),
        Entry(f"{LAYER}.self_attn.qkv_proj.weight", f"{BLOCK}.attn_qkv.weight"),
        Entry(f"{LAYER}.self_attn.o_proj.weight", f"{BLOCK}.attn_output.weight"),
        Entry(f"{LAYER}.post_attention_layernorm.weight", f"{BLOCK}.ffn_norm.weight"),
        Entry(f"{LAYER}.mlp.gate_up_proj.weight", f"{BLOCK}.ffn_up.weight"),
        Entry(f"{LAYER}.mlp.down_proj.weight", f"{BLOCK}.ffn_down.weight"),
    ),
    _keys,
)
