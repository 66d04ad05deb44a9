"""A model folder's tokenizer as llama.cpp's `tokenizer.ggml.*` keys.

Two kinds, as llama.cpp's converter reads them: a byte-level BPE `tokenizer.json` (GPT-2, Qwen,
Llama 3: `tokenizer.ggml.model` "gpt2", with merges) and a SentencePiece `tokenizer.model` (Llama 2,
Mistral: "llama", with scores and token types). Special tokens come from `tokenizer_config.json`,
then `generation_config.json`, then `config.json`; the chat template from `tokenizer_config.json`.

llama.cpp's converter names the BPE pre-tokenizer (`tokenizer.ggml.pre`) by hashing the encoding
of a test text, so it refuses every vocabulary it has not seen, a tokenizer trained for the model
included. Here the name comes from the tokenizer's own pre-tokenizer definition: its split pattern
and byte-level settings, compared with the ones llama.cpp implements under each name
(`llama-vocab.cpp`); a pre-tokenizer that is none of them is refused, not approximated.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from convert.errors import UnsupportedFormatError
from convert.hf_folder import read_json

from .file_format import Value, string, u32
from .values import boolean, f32s, i32s, strings

# llama.cpp's llama_token_type (gguf-py TokenType)
NORMAL, UNKNOWN, CONTROL, USER_DEFINED, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# The split patterns llama.cpp implements, by the `tokenizer.ggml.pre` name it runs them under; each
# is the pattern the model family's own tokenizer.json carries (GPT-2's is the ByteLevel
# pre-tokenizer's built-in one, written out by `use_regex: true`).
GPT2_PRE = "gpt-2"
_CONTRACTIONS = r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|"""
_REST = r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
SPLIT_PATTERNS = {
    _CONTRACTIONS + r"\p{N}" + _REST: "qwen2",  # digits one by one
    _CONTRACTIONS + r"\p{N}{1,3}" + _REST: "llama-bpe",  # Llama 3: up to three digits
}
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "tokenizer_config.json", "generation_config.json")
SPECIALS = ("bos", "eos", "unk", "pad")
GGUF_SPECIAL_KEY = {"bos": "bos", "eos": "eos", "unk": "unknown", "pad": "padding"}


def tokenizer_metadata(files: Sequence[Path], config: dict[str, Any], vocab_rows: int) -> dict[str, Value]:
    """The `tokenizer.ggml.*` keys from the folder's files (by name), padded to the embedding's
    `vocab_rows` as llama.cpp pads a vocabulary smaller than the model's."""
    by_name = {p.name: p for p in files}
    if "tokenizer.model" in by_name:
        keys = _sentencepiece(by_name["tokenizer.model"], vocab_rows)
        vocab = {t: i for i, t in enumerate(keys["tokenizer.ggml.tokens"].value)}
    elif "tokenizer.json" in by_name:
        doc = read_json(by_name["tokenizer.json"])
        keys, vocab = _bpe(doc, vocab_rows)
        keys["tokenizer.ggml.add_bos_token"] = boolean(_adds_bos(doc))  # what the tokenizer does, unless the config says
    else:
        raise UnsupportedFormatError(
            "no tokenizer.json or tokenizer.model beside the model: llama.cpp needs the tokenizer "
            "(--no-vocab writes the file without one)"
        )
    tok_config = _json(by_name.get("tokenizer_config.json"))
    keys.update(_specials(vocab, tok_config, _json(by_name.get("generation_config.json")), config))
    for flag in ("add_bos_token", "add_eos_token"):
        if isinstance(tok_config.get(flag), bool):
            keys[f"tokenizer.ggml.{flag}"] = boolean(tok_config[flag])
    template = tok_config.get("chat_template")
    if isinstance(template, str):
        keys["tokenizer.chat_template"] = string(template)
    return keys


def no_vocab() -> dict[str, Value]:
    """What llama.cpp's loader takes as "no vocabulary" (`LLAMA_VOCAB_TYPE_NONE`)."""
    return {"tokenizer.ggml.model": string("none")}


def _json(path: Path | None) -> dict[str, Any]:
    doc = read_json(path) if path is not None else {}
    return doc if isinstance(doc, dict) else {}


def _padded(tokens: list[str], types: list[int], rows: int, pad_type: int) -> None:
    for i in range(len(tokens), rows):
        tokens.append(f"[PAD{i}]")
        types.append(pad_type)


def _bpe(doc: Any, rows: int) -> tuple[dict[str, Value], dict[str, int]]:
    model = doc.get("model") if isinstance(doc, dict) else None
    if not isinstance(model, dict) or model.get("type") != "BPE":
        kind = model.get("type") if isinstance(model, dict) else None
        raise UnsupportedFormatError(
            f"tokenizer.json: a {kind or 'unknown'} model; llama.cpp's BPE vocabularies are byte-level BPE"
        )
    pre = _pre_name(doc.get("pre_tokenizer"))
    vocab: dict[str, int] = dict(model.get("vocab") or {})
    added = {a["content"]: a for a in doc.get("added_tokens") or [] if isinstance(a, dict) and "content" in a}
    for content, a in added.items():
        vocab.setdefault(content, int(a["id"]))
    size = max(max(vocab.values(), default=-1) + 1, rows)
    by_id = {i: t for t, i in vocab.items()}
    tokens, types = [], []
    for i in range(size):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(USER_DEFINED)
            continue
        token = by_id[i]
        tokens.append(token)
        entry = added.get(token)
        types.append(NORMAL if entry is None else CONTROL if entry.get("special") else USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges") or []]
    keys = {
        "tokenizer.ggml.model": string("gpt2"),
        "tokenizer.ggml.pre": string(pre),
        "tokenizer.ggml.tokens": strings(tokens),
        "tokenizer.ggml.token_type": i32s(types),
        "tokenizer.ggml.merges": strings(merges),
    }
    return keys, vocab


def _adds_bos(doc: dict[str, Any]) -> bool:
    """Whether a tokenizer.json puts a special token before a single text (its TemplateProcessing,
    as Llama 3's does); llama.cpp would otherwise take its own default for BPE vocabularies."""
    post = doc.get("post_processor")
    steps = post.get("processors", []) if isinstance(post, dict) and post.get("type") == "Sequence" else [post]
    for step in steps:
        if isinstance(step, dict) and step.get("type") == "TemplateProcessing":
            single = step.get("single") or []
            return bool(single) and isinstance(single[0], dict) and "SpecialToken" in single[0]
    return False


def _pre_name(pre: Any) -> str:
    """llama.cpp's name for a byte-level pre-tokenizer, from its definition in tokenizer.json."""
    steps = pre.get("pretokenizers") if isinstance(pre, dict) and pre.get("type") == "Sequence" else [pre]
    steps = [s for s in steps or [] if isinstance(s, dict)]
    kinds = [s.get("type") for s in steps]
    if kinds == ["ByteLevel"] and steps[0].get("use_regex", True) and not steps[0].get("add_prefix_space"):
        return GPT2_PRE
    if kinds == ["Split", "ByteLevel"] and not steps[1].get("use_regex", True) and not steps[1].get("add_prefix_space"):
        split = steps[0]
        pattern = (split.get("pattern") or {}).get("Regex")
        if split.get("behavior") == "Isolated" and not split.get("invert") and pattern in SPLIT_PATTERNS:
            return SPLIT_PATTERNS[pattern]
    raise UnsupportedFormatError(
        f"tokenizer.json: pre-tokenizer {kinds or None} is none of llama.cpp's byte-level ones this tool "
        f"knows ({', '.join([GPT2_PRE, *SPLIT_PATTERNS.values()])})"
    )


def _sentencepiece(path: Path, rows: int) -> dict[str, Value]:
    """A SentencePiece model's pieces, scores and types, read with sentencepiece (a protobuf parse:
    nothing in the file runs)."""
    try:
        from sentencepiece import SentencePieceProcessor
    except ImportError:
        raise UnsupportedFormatError(
            "tokenizer.model: reading SentencePiece models needs the sentencepiece package (the gguf extra)"
        ) from None
    sp = SentencePieceProcessor()
    try:
        sp.LoadFromSerializedProto(path.read_bytes())
    except (RuntimeError, OSError) as exc:
        raise UnsupportedFormatError(f"tokenizer.model: not a SentencePiece model ({exc})") from None
    tokens, scores, types = [], [], []
    for i in range(sp.vocab_size()):
        tokens.append(sp.IdToPiece(i))
        scores.append(sp.GetScore(i))
        kind = (
            UNKNOWN
            if sp.IsUnknown(i)
            else CONTROL
            if sp.IsControl(i)
            else UNUSED
            if sp.IsUnused(i)
            else BYTE
            if sp.IsByte(i)
            else NORMAL
        )
        types.append(kind)
    first_pad = len(tokens)
    _padded(tokens, types, rows, UNUSED)
    scores += [-1000.0] * (len(tokens) - first_pad)
    return {
        "tokenizer.ggml.model": string("llama"),
        "tokenizer.ggml.pre": string("default"),
        # whether the normalizer puts "▁" before the text (Llama 2's does, Gemma's not); llama.cpp
        # assumes it does unless told, and reads no normalizer from the file
        "tokenizer.ggml.add_space_prefix": boolean(sp.Normalize("a").startswith("\u2581")),
        "tokenizer.ggml.tokens": strings(tokens),
        "tokenizer.ggml.scores": f32s(scores),
        "tokenizer.ggml.token_type": i32s(types),
    }


def _specials(
    vocab: dict[str, int], tok_config: dict[str, Any], generation: dict[str, Any], config: dict[str, Any]
) -> dict[str, Value]:
    """Each special token's id: named in tokenizer_config.json (its text looked up in the
    vocabulary), else the id generation_config.json or config.json gives."""
    keys = {}
    for kind in SPECIALS:
        named = tok_config.get(f"{kind}_token")
        text = named.get("content") if isinstance(named, dict) else named
        found: Any = vocab.get(text) if isinstance(text, str) else None
        for doc in (generation, config):
            if found is None:
                found = doc.get(f"{kind}_token_id")
        if isinstance(found, list):
            found = found[0] if found else None
        if isinstance(found, int) and 0 <= found:
            keys[f"tokenizer.ggml.{GGUF_SPECIAL_KEY[kind]}_token_id"] = u32(found)
    return keys
