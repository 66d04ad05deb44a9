"""The llama-style decoders: llama and mistral (llama.cpp permutes their Q and K rows for its RoPE),
qwen2 and qwen3 (NeoX-style RoPE: rows kept; qwen2's attention biases, qwen3's Q/K norms)."""

from __future__ import annotations

from ..file_format import Value, u32
from .table import ROPE_K, ROPE_Q, Config, Entry, Family, common_keys

LAYER = "model.layers.{n:int}"
BLOCK = "blk.{n}"


def _decoder(rope: bool) -> tuple[Entry, ...]:
    q, k = (ROPE_Q, ROPE_K) if rope else (None, None)
    return (
        Entry("model.embed_tokens.weight", "token_embd.weight"),
        Entry("model.norm.weight", "output_norm.weight"),
        Entry("lm_head.weight", "output.weight"),
        Entry(f"{LAYER}.input_layernorm.weight", f"{BLOCK}.attn_norm.weight"),
        Entry(f"{LAYER}.self_attn.q_proj.weight", f"{BLOCK}.attn_q.weight", q),
        Entry(f"{LAYER}.self_attn.q_proj.bias", f"{BLOCK}.attn_q.bias", q),
        Entry(f"{LAYER}.self_attn.k_proj.weight", f"{BLOCK}.attn_k.weight", k),
        Entry(f"{LAYER}.self_attn.k_proj.bias", f"{BLOCK}.attn_k.bias", k),
        Entry(f"{LAYER}.self_attn.v_proj.weight", f"{BLOCK}.attn_v.weight"),
        Entry(f"{LAYER}.self_attn.v_proj.bias", f"{BLOCK}.attn_v.bias"),
        Entry(f"{LAYER}.self_attn.o_proj.weight", f"{BLOCK}.attn_output.weight"),
        Entry(f"{LAYER}.self_attn.o_proj.bias", f"{BLOCK}.attn_output.bias"),
        Entry(f"{LAYER}.post_attention_layernorm.weight", f"{BLOCK}.ffn_norm.weight"),
        Entry(f"{LAYER}.mlp.gate_proj.weight", f"{BLOCK}.ffn_gate.weight"),
        Entry(f"{LAYER}.mlp.up_proj.weight", f"{BLOCK}.ffn_up.weight"),
        Entry(f"{LAYER}.mlp.down_proj.weight", f"{BLOCK}.ffn_down.weight"),
    )


def _llama_keys(cfg: Config) -> dict[str, Value]:
    """llama.cpp's LlamaModel adds the vocabulary size and the rotary dimension (the head size)."""
    return {
        **common_keys(cfg),
        cfg.key("vocab_size"): u32(int(cfg.need("vocab_size"))),
        cfg.key("rope.dimension_count"): u32(cfg.head_dim()),
    }


LLAMA = Family("llama", ("llama",), _decoder(rope=True), _llama_keys)
MISTRAL = Family("llama", ("mistral",), _decoder(rope=True), _llama_keys)  # llama.cpp runs Mistral 7B as llama
QWEN2 = Family("qwen2", ("qwen2",), _decoder(rope=False), common_keys)
QWEN3 = Family(
    "qwen3",
    ("qwen3",),
    (
        *_decoder(rope=False),
        Entry(f"{LAYER}.self_attn.q_norm.weight", f"{BLOCK}.attn_q_norm.weight"),
        Entry(f"{LAYER}.self_attn.k_norm.weight", f"{BLOCK}.attn_k_norm.weight"),
    ),
    common_keys,
)
