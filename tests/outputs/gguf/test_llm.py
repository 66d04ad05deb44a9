"""`convert to-gguf` on Hugging Face causal LMs: tiny random models of each family built with
transformers in the test, with tokenizers trained in the test (byte-level BPE with `tokenizers`,
SentencePiece with `sentencepiece`), converted, then loaded back by transformers' own GGUF reader
(its logits against the source model's, its tokenizer's ids against the source tokenizer's); every
tensor against the source after the transforms the manifest records (f32) or the `gguf` package's
quantize-dequantize of it (q8_0); names against the `gguf` package's TensorNameMap; refusals."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import assert_cli_error, assert_no_output, read_manifest, run_cli
from tests.support.llm import (
    CORPUS,
    TEXT,
    Built,
    llama_cpp_logits,
    load_back,
    logits,
    scaled_error,
    sentencepiece_tokenizer,
    source_ids,
    tiny_llama,
)

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")
pytest.importorskip("accelerate")  # transformers needs it to load a GGUF file
tokenizers = pytest.importorskip("tokenizers")
spm = pytest.importorskip("sentencepiece")

QWEN2_SPLIT = (  # Qwen2's tokenizer.json split pattern
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
LLAMA3_SPLIT = (  # Llama 3's: digits in runs of up to three
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"""
    r"""| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
SPLITS = {"qwen2": QWEN2_SPLIT, "llama-bpe": LLAMA3_SPLIT}
EOT = "<|endoftext|>"
BOT = "<|begin_of_text|>"


def bpe_tokenizer(folder: Path, pre: str) -> Any:
    """A byte-level BPE trained on CORPUS, with GPT-2's pre-tokenizer, or Qwen2's or Llama 3's split
    (Llama 3's also putting BOS first, as its post-processor does), saved to `folder`."""
    from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, processors, trainers

    tok = tokenizers.Tokenizer(models.BPE())
    if pre == "gpt-2":
        tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    else:
        tok.normalizer = normalizers.NFC()
        split = pre_tokenizers.Split(Regex(SPLITS[pre]), behavior="isolated")
        tok.pre_tokenizer = pre_tokenizers.Sequence([split, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=[EOT, BOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(CORPUS, trainer)
    bos = EOT
    if pre == "llama-bpe":
        bos = BOT
        tok.post_processor = processors.TemplateProcessing(single=f"{BOT} $A", special_tokens=[(BOT, tok.token_to_id(BOT))])
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token=bos, eos_token=EOT)
    fast.save_pretrained(folder)
    return fast


LLAMA_LIKE = {
    "num_hidden_layers": 2,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "max_position_embeddings": 128,
}
FAMILIES: dict[str, tuple[str, dict[str, Any], str]] = {
    # name: (transformers config class, its arguments, tokenizer)
    "gpt2": ("GPT2Config", {"n_layer": 2, "n_embd": 32, "n_head": 2, "n_positions": 1024}, "gpt-2"),
    "llama": ("LlamaConfig", {**LLAMA_LIKE, "num_key_value_heads": 2, "tie_word_embeddings": False}, "spm"),
    "llama3": ("LlamaConfig", {**LLAMA_LIKE, "num_key_value_heads": 2}, "llama-bpe"),  # a byte-level BPE
    "mistral": ("MistralConfig", {**LLAMA_LIKE, "num_key_value_heads": 2}, "spm"),
    "qwen2": ("Qwen2Config", {**LLAMA_LIKE, "num_key_value_heads": 2, "tie_word_embeddings": True}, "qwen2"),
    # transformers' GGUF reader takes no head size from the file and assumes Qwen3's 128
    "qwen3": ("Qwen3Config", {**LLAMA_LIKE, "num_attention_heads": 2, "num_key_value_heads": 1, "head_dim": 128}, "qwen2"),
    "phi3": ("Phi3Config", {**LLAMA_LIKE, "num_key_value_heads": 4, "pad_token_id": 0}, "spm"),
}


@pytest.fixture(scope="module", params=list(FAMILIES))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    name = request.param
    config_class, kwargs, tokenizer = FAMILIES[name]
    folder = tmp_path_factory.mktemp(name) / "model"
    folder.mkdir()
    tok = sentencepiece_tokenizer(folder) if tokenizer == "spm" else bpe_tokenizer(folder, tokenizer)
    torch.manual_seed(0)
    config = getattr(transformers, config_class)(vocab_size=len(tok), **kwargs)
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    model.save_pretrained(folder)
    return Built(name, folder, model, source_ids(tok, folder), {})


def test_f32_loads_back_in_transformers(built: Built) -> None:
    """transformers' GGUF reader undoes llama.cpp's surgery; at f32 the logits are the source's."""
    model, tok = load_back(built.converted("f32"))
    # transformers rebuilds Phi-3's vocabulary as a BPE without byte fallback, and Llama 3's with GPT-2's
    # split instead of the file's: those two are proven by their tokens and merges
    # (test_names_and_keys_are_llama_cpps, test_sentencepiece_vocabulary_is_the_models) and by llama.cpp's tier
    if built.family not in ("phi3", "llama3"):
        assert list(tok(TEXT).input_ids) == built.ids
    want = logits(built.model, built.ids)
    np.testing.assert_allclose(logits(model, built.ids), want, rtol=0, atol=1e-5 * np.abs(want).max())


def test_q8_0_loads_back_in_transformers(built: Built) -> None:
    model, _tok = load_back(built.converted("q8_0"))
    want = logits(built.model, built.ids)
    scale = np.abs(want).max()
    assert np.abs(logits(model, built.ids) - want).max() < 0.05 * scale


def gguf_tensors(out: Path) -> dict[str, Any]:
    return {t.name: t for t in gguf.GGUFReader(out / "model.gguf").tensors}


@pytest.mark.parametrize("type_name", ["f32", "f16", "q8_0"])
def test_every_tensor_is_the_source_after_its_transforms(built: Built, type_name: str) -> None:
    """Each GGUF tensor is the manifest's transforms replayed on the source tensors (numpy here,
    not the tool's code), then the type's quantize-dequantize by the `gguf` package."""
    from safetensors.numpy import load_file

    out = built.converted(type_name)
    source = load_file(built.folder / "model.safetensors")
    written = gguf_tensors(out)
    entries = read_manifest(out)["tensors"]
    assert {e["name"] for e in entries} == set(written)
    for entry in entries:
        (src,) = entry["sources"]
        expected = replay(entry["transforms"], source[src["name"]])
        t = written[entry["name"]]
        qtype = gguf.GGMLQuantizationType[entry["dtype"]]
        assert t.tensor_type == qtype, entry["name"]
        got = gguf.quants.dequantize(t.data, qtype).reshape(expected.shape)
        if qtype != gguf.GGMLQuantizationType.F32:
            expected = gguf.quants.dequantize(gguf.quants.quantize(expected, qtype), qtype)
        np.testing.assert_array_equal(got, expected, err_msg=entry["name"])


def replay(transforms: list[dict[str, Any]], arr: Any) -> Any:
    """The few steps a family's surgery records (reshape, permute, transpose), in numpy."""
    for t in transforms:
        if t["op"] == "reshape":
            arr = arr.reshape(t["shape"])
        elif t["op"] == "permute":
            arr = arr.transpose(t["axes"])
        else:
            assert t["op"] == "transpose", t
            arr = arr.T
    return np.ascontiguousarray(arr)


def test_names_and_keys_are_llama_cpps(built: Built) -> None:
    """Every name is the one the `gguf` package's TensorNameMap gives the source tensor, and the
    hyper-parameters are under the architecture's keys, as llama.cpp reads them."""
    out = built.converted("f32")
    reader = gguf.GGUFReader(out / "model.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items()}
    arch = fields["general.architecture"]
    arch_id = next(a for a, n in gguf.MODEL_ARCH_NAMES.items() if n == arch)
    config = built.model.config
    names = gguf.get_tensor_name_map(arch_id, config.num_hidden_layers)
    for entry in read_manifest(out)["tensors"]:
        (src,) = entry["sources"]
        assert names.get_name(src["name"], try_suffixes=(".weight", ".bias")) == entry["name"]
    assert fields["general.alignment"] == 32
    assert fields[gguf.Keys.LLM.BLOCK_COUNT.format(arch=arch)] == config.num_hidden_layers
    assert fields[gguf.Keys.LLM.EMBEDDING_LENGTH.format(arch=arch)] == config.hidden_size
    assert fields[gguf.Keys.Attention.HEAD_COUNT.format(arch=arch)] == config.num_attention_heads
    assert len(fields[gguf.Keys.Tokenizer.LIST]) == config.vocab_size
    tokenizer = FAMILIES[built.family][2]
    assert fields[gguf.Keys.Tokenizer.MODEL] == ("llama" if tokenizer == "spm" else "gpt2")
    if tokenizer != "spm":  # the BPE's own tokens, merges, and its pre-tokenizer's name in llama.cpp
        doc = json.loads((built.folder / "tokenizer.json").read_text())
        vocab = {**doc["model"]["vocab"], **{a["content"]: a["id"] for a in doc["added_tokens"]}}
        assert fields[gguf.Keys.Tokenizer.LIST][: len(vocab)] == sorted(vocab, key=vocab.__getitem__)
        assert fields[gguf.Keys.Tokenizer.MERGES] == [m if isinstance(m, str) else " ".join(m) for m in doc["model"]["merges"]]
        assert fields[gguf.Keys.Tokenizer.PRE] == tokenizer


@pytest.mark.parametrize("built", [f for f, (_c, _k, tok) in FAMILIES.items() if tok == "spm"], indirect=True)
def test_sentencepiece_vocabulary_is_the_models(built: Built) -> None:
    """A SentencePiece model's pieces, scores and types as llama.cpp's SPM vocabulary reads them
    (transformers' Phi-3 GGUF tokenizer drops byte fallback, so its ids are not this proof)."""
    sp = spm.SentencePieceProcessor(model_file=str(built.folder / "tokenizer.model"))
    reader = gguf.GGUFReader(built.converted("f32") / "model.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items()}
    n = sp.vocab_size()
    assert fields["tokenizer.ggml.tokens"][:n] == [sp.id_to_piece(i) for i in range(n)]
    assert fields["tokenizer.ggml.scores"][:n] == pytest.approx([sp.get_score(i) for i in range(n)], rel=0, abs=0)
    types = fields["tokenizer.ggml.token_type"]
    assert types[sp.unk_id()] == gguf.TokenType.UNKNOWN and types[sp.bos_id()] == gguf.TokenType.CONTROL
    assert types[sp.piece_to_id("<0x0A>")] == gguf.TokenType.BYTE
    assert fields["tokenizer.ggml.bos_token_id"] == sp.bos_id() and fields["tokenizer.ggml.eos_token_id"] == sp.eos_id()


def test_verify_with_the_source_replays_the_surgery(built: Built) -> None:
    out = built.converted("f32")
    rc, _stdout, stderr = run_cli("verify", out, "--source", built.folder)
    assert rc == 0, stderr


# --- refusals ------------------------------------------------------------------------------------


@pytest.fixture
def llama_copy(tmp_path: Path) -> Path:
    """A tiny llama folder of its own, to damage."""
    tiny_llama(tmp_path / "llama")
    return tmp_path / "llama"


def edit_json(path: Path, **changes: Any) -> None:
    doc = json.loads(path.read_text())
    for k, v in changes.items():
        if v is None:
            doc.pop(k, None)
        else:
            doc[k] = v
    path.write_text(json.dumps(doc))


def test_a_config_without_a_key_llama_cpp_needs_is_refused(llama_copy: Path, tmp_path: Path) -> None:
    edit_json(llama_copy / "config.json", rms_norm_eps=None)
    out = tmp_path / "out"
    assert_cli_error(run_cli("to-gguf", llama_copy, out), 7, "rms_norm_eps")
    assert_no_output(out)


def test_a_missing_tokenizer_is_refused_and_no_vocab_writes_none(llama_copy: Path, tmp_path: Path) -> None:
    (llama_copy / "tokenizer.model").unlink()
    out = tmp_path / "out"
    assert_cli_error(run_cli("to-gguf", llama_copy, out), 4, "tokenizer")
    assert_no_output(out)
    rc, _stdout, stderr = run_cli("to-gguf", llama_copy, out, "--no-vocab")
    assert rc == 0, stderr
    fields = {k: f.contents() for k, f in gguf.GGUFReader(out / "model.gguf").fields.items()}
    assert fields["tokenizer.ggml.model"] == "none" and "tokenizer.ggml.tokens" not in fields


def test_an_unknown_pre_tokenizer_is_refused(tmp_path: Path) -> None:
    """A BPE whose pre-tokenizer llama.cpp implements under no name (whitespace splitting) is
    refused, not written under a name whose splitting differs."""
    from tokenizers import models, pre_tokenizers, trainers

    folder = tmp_path / "gpt2"
    folder.mkdir()
    tok = tokenizers.Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=[EOT]))
    transformers.PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOT).save_pretrained(folder)
    config = transformers.GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=tok.get_vocab_size(), n_positions=64)
    transformers.GPT2LMHeadModel(config).save_pretrained(folder)
    out = tmp_path / "out"
    assert_cli_error(run_cli("to-gguf", folder, out), 4, "pre-tokenizer")
    assert_no_output(out)


@pytest.mark.parametrize("built", ["gpt2"], indirect=True)
def test_another_layout_keeps_canonical_names(built: Built, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc, _stdout, stderr = run_cli("to-gguf", built.folder, out, "--type", "f32", "--layout", "candle")
    assert rc == 0, stderr
    assert "canonical" in stderr
    assert "transformer.h.0.attn.c_attn.weight" in gguf_tensors(out)


# --- llama.cpp's presets -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def wide_llama(tmp_path_factory: pytest.TempPathFactory) -> Built:
    """A llama whose rows are whole K-quant blocks (256), so the preset's types are not fallbacks."""
    folder = tmp_path_factory.mktemp("wide") / "model"
    model = tiny_llama(folder, hidden_size=256, intermediate_size=256, num_key_value_heads=2)
    return Built("llama", folder, model, source_ids(None, folder), {})


def test_q4_k_m_takes_llama_quantizes_types(wide_llama: Built) -> None:
    """Q4_K_M: the output in Q6_K, attn_v and ffn_down of the layers use_more_bits picks (layer 1
    of 2) in Q6_K, the rest Q4_K, norms F32; each choice's reason recorded; transformers runs it."""
    out = wide_llama.converted("q4_k_m")
    reader = gguf.GGUFReader(out / "model.gguf")
    assert reader.fields["general.file_type"].contents() == int(gguf.LlamaFileType.MOSTLY_Q4_K_M)
    types = {t.name: t.tensor_type.name for t in reader.tensors}
    raised = {"output.weight", "blk.1.attn_v.weight", "blk.1.ffn_down.weight"}
    for name, kind in types.items():
        want = "F32" if name.endswith("norm.weight") else "Q6_K" if name in raised else "Q4_K"
        assert kind == want, name
    reasons = {e["name"]: e["quantization"].get("reason", "") for e in read_manifest(out)["tensors"]}
    assert all(reasons[n].startswith("q4_k_m:") for n in raised)
    model, _tok = load_back(out)
    want = logits(wide_llama.model, wide_llama.ids)
    assert np.abs(logits(model, wide_llama.ids) - want).max() < 0.2 * np.abs(want).max()


def test_a_preset_needs_a_language_model(tmp_path: Path) -> None:
    path = tmp_path / "model.pt"
    torch.save({"w": torch.zeros(4, 256)}, path)
    out = tmp_path / "out"
    assert_cli_error(run_cli("to-gguf", path, out, "--type", "q4_k_m"), 2, "q4_k_m")
    assert_no_output(out)


# --- llama.cpp itself (the tier: llama-cpp-python built from the registry's source package) -------

# Of the logits' scale, measured with an F32 KV cache on these models: f32 files 1e-7 to 1e-4 (ggml's
# GELU goes through an F16 table), q8_0 about 1e-2 (ggml quantizes the activations too).
LLAMA_CPP_BOUND = {"f32": 1e-3, "q8_0": 4e-2}
PROBE_IDS = [5, 17, 42, 99, 100, 7, 3, 250]


@pytest.mark.parametrize("type_name", ["f32", "q8_0"])
def test_llama_cpp_runs_it_as_transformers_does(built: Built, type_name: str) -> None:
    got, tokens = llama_cpp_logits(built.converted(type_name) / "model.gguf", PROBE_IDS)
    assert scaled_error(got, logits(built.model, PROBE_IDS)) < LLAMA_CPP_BOUND[type_name]
    assert tokens == built.ids


@pytest.mark.parametrize("built", ["gpt2"], indirect=True)
def test_llama_cpp_catches_a_wrong_tensor(built: Built, tmp_path: Path) -> None:
    """The same comparison fails on a file whose attention output is left untransposed."""
    bad = tmp_path / "model.gguf"
    shutil.copyfile(built.converted("f32") / "model.gguf", bad)
    t = next(t for t in gguf.GGUFReader(bad).tensors if t.name == "blk.0.attn_output.weight")
    with open(bad, "r+b") as fh:
        fh.seek(t.data_offset)
        fh.write(np.ascontiguousarray(np.asarray(t.data).reshape(t.shape[::-1]).T).tobytes())
    got, _tokens = llama_cpp_logits(bad, PROBE_IDS, tokenize=False)
    assert scaled_error(got, logits(built.model, PROBE_IDS)) > 10 * LLAMA_CPP_BOUND["f32"]


def test_llama_cpp_loads_a_file_without_vocabulary(tmp_path: Path) -> None:
    """--no-vocab: llama.cpp's vocabulary type NONE; it runs token ids to logits."""
    folder = tmp_path / "llama"
    folder.mkdir()
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(transformers.LlamaConfig(vocab_size=300, **LLAMA_LIKE)).eval()
    model.save_pretrained(folder)
    out = tmp_path / "out"
    rc, _stdout, stderr = run_cli("to-gguf", folder, out, "--type", "f32", "--no-vocab")
    assert rc == 0, stderr
    got, _tokens = llama_cpp_logits(out / "model.gguf", PROBE_IDS[:3], tokenize=False)
    assert scaled_error(got, logits(model, PROBE_IDS[:3])) < LLAMA_CPP_BOUND["f32"]


def test_the_python_api_takes_a_preset_and_no_vocab(llama_copy: Path, tmp_path: Path) -> None:
    from convert.api import to_gguf

    to_gguf(llama_copy, tmp_path / "out", type="q5_k_m", no_vocab=True)
    fields = {k: f.contents() for k, f in gguf.GGUFReader(tmp_path / "out" / "model.gguf").fields.items()}
    assert fields["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q5_K_M)
    assert fields["tokenizer.ggml.model"] == "none"
