"""GPT-2: learned positions, LayerNorms with biases, and Conv1D projections stored [in, out], which
llama.cpp's converter transposes to the [out, in] every other family has (the fused `c_attn` stays
one `attn_qkv` tensor)."""

from __future__ import annotations

from ..file_format import Value, u32
from .table import CONV1D, Config, Entry, Family

P = "{p...}."  # GPT2LMHeadModel's `transformer.`, or none in a bare GPT2Model
LAYER = P + "h.{n:int}"
BLOCK = "blk.{n}"


def _keys(cfg: Config) -> dict[str, Value]:
    embd = int(cfg.need("n_embd", "hidden_size"))
    return dict(
        [
            cfg.u32("context_length", "n_ctx", "n_positions"),
            cfg.u32("embedding_length", "n_embd", "hidden_size"),
            (cfg.key("feed_forward_length"), u32(int(cfg.get("n_inner") or 4 * embd))),
            cfg.u32("block_count", "n_layer", "num_hidden_layers"),
            cfg.u32("attention.head_count", "n_head", "num_attention_heads"),
            cfg.f32("attention.layer_norm_epsilon", "layer_norm_epsilon"),
        ]
    )


GPT2 = Family(
    "gpt2",
    ("gpt2",),
    (
        Entry(P + "wte.weight", "token_embd.weight"),
        Entry(P + "wpe.weight", "position_embd.weight"),
        Entry(P + "ln_f.weight", "output_norm.weight"),
        Entry(P + "ln_f.bias", "output_norm.bias"),
        Entry("lm_head.weight", "output.weight"),
        Entry(f"{LAYER}.ln_1.weight", f"{BLOCK}.attn_norm.weight"),
        Entry(f"{LAYER}.ln_1.bias", f"{BLOCK}.attn_norm.bias"),
        Entry(f"{LAYER}.attn.c_attn.weight", f"{BLOCK}.attn_qkv.weight", CONV1D),
        Entry(f"{LAYER}.attn.c_attn.bias", f"{BLOCK}.attn_qkv.bias"),
        Entry(f"{LAYER}.attn.c_proj.weight", f"{BLOCK}.attn_output.weight", CONV1D),
        Entry(f"{LAYER}.attn.c_proj.bias", f"{BLOCK}.attn_output.bias"),
        Entry(f"{LAYER}.ln_2.weight", f"{BLOCK}.ffn_norm.weight"),
        Entry(f"{LAYER}.ln_2.bias", f"{BLOCK}.ffn_norm.bias"),
        Entry(f"{LAYER}.mlp.c_fc.weight", f"{BLOCK}.ffn_up.weight", CONV1D),
        Entry(f"{LAYER}.mlp.c_fc.bias", f"{BLOCK}.ffn_up.bias"),
        Entry(f"{LAYER}.mlp.c_proj.weight", f"{BLOCK}.ffn_down.weight", CONV1D),
        Entry(f"{LAYER}.mlp.c_proj.bias", f"{BLOCK}.ffn_down.bias"),
    ),
    _keys,
)
