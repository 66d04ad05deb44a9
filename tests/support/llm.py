"""Tiny language-model folders for the GGUF tests and the README's commands: a SentencePiece
tokenizer trained here (as Llama 2's: BPE, byte fallback, no normalization) beside a random llama
written by transformers."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's 2026 and we've got 123 tests!",
    "Tokenizers split text; models read ids.\nNew lines, tabs\tand  spaces, don't they?",
] * 20


def sentencepiece_tokenizer(folder: Path, tokenizer_class: str = "LlamaTokenizer", **options: Any) -> Any:
    """A SentencePiece BPE with byte fallback and no normalization (as Llama 2's), trained on
    CORPUS with the trainer's `options` (Gemma's special ids, no dummy prefix); saved as
    `tokenizer_class`, a slow tokenizer (tokenizer.model and tokenizer_config.json)."""
    import sentencepiece
    import transformers

    buf = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=buf,
        vocab_size=320,
        model_type="bpe",
        byte_fallback=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        minloglevel=2,
        **options,
    )
    (folder / "tokenizer.model").write_bytes(buf.getvalue())
    tok = getattr(transformers, tokenizer_class)(vocab_file=str(folder / "tokenizer.model"))
    tok.save_pretrained(folder)
    return tok


def tiny_llama(folder: Path, **config: Any) -> Any:
    """A random 2-layer llama and its tokenizer saved in `folder` (made if missing); the model."""
    import torch
    import transformers

    folder.mkdir(parents=True, exist_ok=True)
    tok = sentencepiece_tokenizer(folder)
    torch.manual_seed(0)
    shape = {"num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4}
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=len(tok), **{**shape, **config})).eval()
    model.save_pretrained(folder)
    return model
