"""Gemma 2: llama-style names plus a norm after attention and after the feed-forward, RMSNorm
weights stored as 1 + weight (Gemma's norm multiplies by 1 + w; llama.cpp's by w), logits
soft-capped, every other layer a sliding window, the output tied to the embedding (llama.cpp has no
`output.weight` for it). llama.cpp scales the embedding by sqrt(hidden size) itself.

llama.cpp reads no key for the query scale: it takes 1/sqrt(head size) (1/sqrt(hidden / heads) for
the 46-layer 27B), nor for which layers slide (every even one); a config that differs is refused
rather than run with another attention."""

from __future__ import annotations

from convert.errors import MappingError

from ..file_format import Value, u32
from ..values import f32
from .table import GEMMA_NORM, Config, Entry, Family, common_keys

LAYER = "model.layers.{n:int}"
BLOCK = "blk.{n}"
LAYERS_27B = 46  # llama.cpp's LLM_TYPE_27B, whose query scale is by hidden / heads
GELU_TANH = ("gelu_pytorch_tanh",)  # llama.cpp's GELU is the tanh approximation


def _keys(cfg: Config) -> dict[str, Value]:
    head_dim = int(cfg.need("head_dim"))  # common_keys writes it as the key and value lengths
    keys = common_keys(cfg)
    for name in ("attn_logit_softcapping", "final_logit_softcapping"):  # llama.cpp always caps: none is refused
        keys[cfg.key(name)] = f32(float(cfg.need(name)))
    keys[cfg.key("attention.sliding_window")] = u32(int(cfg.need("sliding_window")))
    _check_attention(cfg, head_dim)
    return keys


def _check_attention(cfg: Config, head_dim: int) -> None:
    layers = int(cfg.need("num_hidden_layers"))
    by_heads = int(cfg.need("hidden_size")) // int(cfg.need("num_attention_heads"))
    scale_by = by_heads if layers == LAYERS_27B else head_dim
    scalar = cfg.need("query_pre_attn_scalar")
    if scalar != scale_by:
        raise MappingError(f"query_pre_attn_scalar {scalar}: llama.cpp's gemma2 scales queries by 1/sqrt({scale_by})")
    sliding = ["sliding_attention" if i % 2 == 0 else "full_attention" for i in range(layers)]
    if cfg.get("layer_types", sliding) != sliding:
        raise MappingError("layer_types: llama.cpp's gemma2 slides on every even layer and attends fully on the others")
    activation = cfg.need("hidden_activation", "hidden_act")
    if activation not in GELU_TANH:
        raise MappingError(f"hidden_activation {activation!r}: llama.cpp's gemma2 runs {GELU_TANH[0]}")


def _entries() -> tuple[Entry, ...]:
    attention = (("q_proj", "attn_q"), ("k_proj", "attn_k"), ("v_proj", "attn_v"), ("o_proj", "attn_output"))
    norms = (
        ("input_layernorm", "attn_norm"),
        ("post_attention_layernorm", "post_attention_norm"),
        ("pre_feedforward_layernorm", "ffn_norm"),
        ("post_feedforward_layernorm", "post_ffw_norm"),
    )
    return (
        Entry("model.embed_tokens.weight", "token_embd.weight"),
        Entry("model.norm.weight", "output_norm.weight", GEMMA_NORM),
        *(Entry(f"{LAYER}.self_attn.{hf}.weight", f"{BLOCK}.{gg}.weight") for hf, gg in attention),
        *(Entry(f"{LAYER}.mlp.{p}_proj.weight", f"{BLOCK}.ffn_{p}.weight") for p in ("gate", "up", "down")),
        *(Entry(f"{LAYER}.{hf}.weight", f"{BLOCK}.{gg}.weight", GEMMA_NORM) for hf, gg in norms),
    )


GEMMA2 = Family("gemma2", ("gemma2",), _entries(), _keys)
