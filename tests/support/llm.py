"""Tiny language-model folders for the GGUF tests and the README's commands: a SentencePiece
tokenizer trained here (as Llama 2's: BPE, byte fallback, no normalization) beside a random llama
written by transformers."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import run_cli

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


TEXT = "The lazy fox's 42 tests don't split.\n"  # the prompt every family's tokenizers must agree on


def source_ids(tok: Any, folder: Path) -> list[int]:
    """The ids the source tokenizer gives TEXT: SentencePiece's own encoding after BOS, or the BPE's."""
    if (folder / "tokenizer.model").is_file():
        import sentencepiece as spm

        sp = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
        return [sp.bos_id(), *sp.encode(TEXT)]
    return list(tok(TEXT).input_ids)


@dataclass
class Built:
    """A tiny causal LM saved as a Hugging Face folder, and its conversions by `--type` (made once)."""

    family: str
    folder: Path
    model: Any
    ids: list[int]  # the source tokenizer's ids for TEXT
    outputs: dict[str, tuple[Path, str]]  # --type: (OUT, stderr)

    def converted(self, type_name: str) -> Path:
        if type_name not in self.outputs:
            out = self.folder.parent / f"out-{type_name}"
            rc, _stdout, stderr = run_cli("to-gguf", self.folder, out, "--type", type_name)
            assert rc == 0, stderr
            self.outputs[type_name] = (out, stderr)
        return self.outputs[type_name][0]


def logits(model: Any, ids: list[int]) -> Any:
    import torch

    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def load_back(out: Path) -> tuple[Any, Any]:
    """transformers' own GGUF reader: the model and the tokenizer from OUT/model.gguf."""
    import torch
    import transformers

    model = transformers.AutoModelForCausalLM.from_pretrained(out, gguf_file="model.gguf", torch_dtype=torch.float32).eval()
    return model, transformers.AutoTokenizer.from_pretrained(out, gguf_file="model.gguf")


def llama_cpp_logits(path: Path, ids: list[int], tokenize: bool = True) -> tuple[Any, list[int]]:
    """llama.cpp's logits for `ids` (F32 KV cache) and, when asked, its own tokenization of TEXT
    (ggml aborts on tokenizing with no vocabulary)."""
    llama_cpp = pytest.importorskip("llama_cpp", reason="the llama.cpp tier: llama-cpp-python not built in this venv")
    llm = llama_cpp.Llama(str(path), n_ctx=64, logits_all=True, verbose=False, n_threads=1, type_k=0, type_v=0)
    try:
        llm.eval(ids)
        # add_bos=True: BOS as the file's tokenizer.ggml.add_bos_token (or llama.cpp's default) says
        tokens = llm.tokenize(TEXT.encode(), add_bos=True, special=False) if tokenize else []
        return np.array(llm.scores[: len(ids)]), tokens
    finally:
        llm.close()


def scaled_error(got: Any, want: Any) -> float:
    """The largest difference as a share of the reference's largest magnitude."""
    return float(np.abs(got - want).max() / np.abs(want).max())
