"""What a language-model family is here: llama.cpp's architecture name, the `config.json`
`model_type`s it takes, a table from Hugging Face tensor names to llama.cpp's (with the surgery
llama.cpp's converter does on some of them), and a function from the config to the `{arch}.*`
hyper-parameter keys. The facts come from llama.cpp's gguf-py (`constants.py`, `tensor_mapping.py`)
and `convert_hf_to_gguf.py`; the tests hold every table against the `gguf` package's own."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from convert.errors import MappingError
from convert.manifest_model import Transform

from ..file_format import Value, string, u32
from ..values import f32

Transforms = list[Transform]

# How a tensor is changed on its way in, by the config: llama.cpp's row order for its RoPE (the
# halves of each head interleaved: `LlamaModel.permute`), GPT-2's Conv1D weights ([in, out])
# turned into the [out, in] of every other family, and Gemma's RMSNorm weights stored as 1 + w
# (widened to F32 first, as Gemma's own forward computes 1 + w.float(); llama.cpp keeps norms F32).
ROPE_Q = "rope_q"  # permuted with the attention heads
ROPE_K = "rope_k"  # permuted with the key/value heads
CONV1D = "conv1d"
GEMMA_NORM = "gemma_norm"


@dataclass(frozen=True)
class Entry:
    source: str  # a Hugging Face name in the layout rules' pattern syntax ({n:int}, {p...})
    target: str  # llama.cpp's name, with the same placeholders
    surgery: str | None = None


class Config:
    """A model's `config.json`, read for one family: a key llama.cpp needs and the config lacks is
    refused naming it (exit 7), never guessed."""

    def __init__(self, arch: str, raw: dict[str, Any]):
        self.arch = arch
        self.raw = raw

    def need(self, *keys: str) -> Any:
        """The first of `keys` (alternative names of one hyper-parameter) the config has."""
        for key in keys:
            if self.raw.get(key) is not None:
                return self.raw[key]
        raise MappingError(f"config.json has no {' or '.join(keys)}, which llama.cpp's {self.arch} needs")

    def get(self, key: str, default: Any = None) -> Any:
        value = self.raw.get(key)
        return default if value is None else value

    def key(self, suffix: str) -> str:
        return f"{self.arch}.{suffix}"

    def u32(self, suffix: str, *keys: str) -> tuple[str, Value]:
        return self.key(suffix), u32(int(self.need(*keys)))

    def f32(self, suffix: str, *keys: str) -> tuple[str, Value]:
        return self.key(suffix), f32(float(self.need(*keys)))

    def head_dim(self) -> int:
        explicit = self.get("head_dim")
        if explicit is not None:
            return int(explicit)
        return int(self.need("hidden_size", "n_embd")) // int(self.need("num_attention_heads", "n_head"))

    def surgery(self, kind: str | None, shape: tuple[int, ...], dtype: str) -> Transforms:
        """The transforms one table entry's surgery asks for, on a tensor of `shape` and `dtype` (a code)."""
        if kind is None:
            return []
        if kind == CONV1D:
            return [{"op": "transpose"}]
        if kind == GEMMA_NORM:
            widen: Transforms = [{"op": "cast", "to": "F32", "lossless": True}] if dtype in ("F16", "BF16") else []
            return [*widen, {"op": "add_constant", "value": 1.0}]
        heads = (
            int(self.need("num_attention_heads"))
            if kind == ROPE_Q
            else int(self.get("num_key_value_heads") or self.need("num_attention_heads"))
        )
        rows, rest = shape[0], list(shape[1:])
        if rows % (2 * heads):
            raise MappingError(f"{rows} rows do not split into {heads} heads of two rotary halves")
        tail = list(range(3, 3 + len(rest)))
        return [
            {"op": "reshape", "shape": [heads, 2, rows // heads // 2, *rest]},
            {"op": "permute", "axes": [0, 2, 1, *tail]},
            {"op": "reshape", "shape": [rows, *rest]},
        ]


def common_keys(cfg: Config) -> dict[str, Value]:
    """The keys every llama-style family writes (`TextModel.set_gguf_parameters`)."""
    keys = dict(
        [
            cfg.u32("context_length", "max_position_embeddings"),
            cfg.u32("embedding_length", "hidden_size"),
            cfg.u32("block_count", "num_hidden_layers"),
            cfg.u32("feed_forward_length", "intermediate_size"),
            cfg.u32("attention.head_count", "num_attention_heads"),
            cfg.u32("attention.head_count_kv", "num_key_value_heads", "num_attention_heads"),
            cfg.f32("attention.layer_norm_rms_epsilon", "rms_norm_eps"),
            cfg.f32("rope.freq_base", "rope_theta"),
        ]
    )
    if cfg.get("head_dim") is not None:
        keys[cfg.key("attention.key_length")] = u32(cfg.head_dim())
        keys[cfg.key("attention.value_length")] = u32(cfg.head_dim())
    keys.update(rope_scaling(cfg))
    return keys


def rope_scaling(cfg: Config) -> dict[str, Value]:
    """Linear and YaRN scaling as keys; kinds llama.cpp takes as extra tensors (llama3's frequency
    factors, Phi-3's long/short factors) are refused rather than dropped."""
    scaling = cfg.get("rope_scaling")
    if not scaling:
        return {}
    kind = scaling.get("rope_type") or scaling.get("type")
    if kind == "default":
        return {}
    if kind not in ("linear", "yarn"):
        raise MappingError(f"rope_scaling {kind!r}: llama.cpp takes it as extra tensors, which this tool does not write yet")
    keys = {cfg.key("rope.scaling.type"): string(kind), cfg.key("rope.scaling.factor"): f32(float(scaling["factor"]))}
    if kind == "yarn" and scaling.get("original_max_position_embeddings"):
        keys[cfg.key("rope.scaling.original_context_length")] = u32(int(scaling["original_max_position_embeddings"]))
    return keys


@dataclass(frozen=True)
class Family:
    arch: str  # llama.cpp's architecture name (gguf-py's MODEL_ARCH_NAMES)
    model_types: tuple[str, ...]  # config.json model_type values it takes
    entries: tuple[Entry, ...]
    metadata: Callable[[Config], dict[str, Value]]
