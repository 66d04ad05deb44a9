"""`convert to-gguf` on Gemma 2: a tiny random Gemma2ForCausalLM built with transformers here (its
norm weights randomized, which a fresh model leaves at zero), with a SentencePiece tokenizer trained
here as Gemma's is (Gemma's special ids, no dummy prefix), converted at f32, f16, q8_0 and q4_k_m.

llama.cpp stores Gemma's RMSNorm weights as 1 + w; the manifest records that as an `add_constant`
transform, which the tests replay with torch's own `1 + w.float()` (what Gemma2RMSNorm computes),
and which `verify --source` replays. transformers loads the files back (its GGUF reader subtracts
the 1), llama.cpp runs them, and both are held against the source model's logits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import assert_cli_error, assert_no_output, read_manifest, run_cli
from tests.support.ggml import ggml_quantizer
from tests.support.llm import TEXT, Built, llama_cpp_logits, load_back, logits, scaled_error, sentencepiece_tokenizer, source_ids

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")
gguf = pytest.importorskip("gguf")

# Gemma 2's shape in miniature: its head size and query scale (256: transformers' GGUF reader takes
# the scale from no key and assumes 256), grouped KV heads, a sliding window shorter than the probe
# so the windowed layers differ from the full ones. Rows of 256 make q4_k_m's types K-quants.
CONFIG = {
    "num_hidden_layers": 2,
    "hidden_size": 256,
    "intermediate_size": 256,
    "num_attention_heads": 2,
    "num_key_value_heads": 1,
    "head_dim": 256,
    "query_pre_attn_scalar": 256,
    "max_position_embeddings": 128,
    "sliding_window": 4,
}
GEMMA_IDS = {"pad_id": 0, "eos_id": 1, "bos_id": 2, "unk_id": 3}
GEMMA_PIECES = {"pad_piece": "<pad>", "eos_piece": "<eos>", "bos_piece": "<bos>", "unk_piece": "<unk>"}
PROBE_IDS = [2, 17, 42, 99, 100, 7, 3, 250, 31, 64]  # longer than the window
NORM = "add_constant"
# Of the logits' scale, measured on this model with an F32 KV cache: f32 3.6e-4 (ggml's GELU goes
# through an F16 table, as for GPT-2), f16 1.2e-3, q8_0 2.8e-2 (ggml quantizes the activations too),
# q4_k_m 0.24 (transformers on the same file: 0.18); norms written without the 1: 1.1.
LLAMA_CPP_BOUND = {"f32": 1e-3, "f16": 4e-3, "q8_0": 6e-2, "q4_k_m": 0.4}
TYPES = ("f32", "f16", "q8_0", "q4_k_m")
SMALL = {"hidden_size": 64, "intermediate_size": 64, "head_dim": 32, "query_pre_attn_scalar": 32}  # for refusals


def gemma_folder(folder: Path, **config: Any) -> tuple[Any, Any]:
    """A random Gemma 2 with random norm weights and its tokenizer saved in `folder`; (model, tokenizer)."""
    folder.mkdir(parents=True, exist_ok=True)
    tok = sentencepiece_tokenizer(folder, "GemmaTokenizer", add_dummy_prefix=False, **GEMMA_IDS, **GEMMA_PIECES)
    torch.manual_seed(0)
    kwargs = {**CONFIG, **config}
    model = transformers.Gemma2ForCausalLM(transformers.Gemma2Config(vocab_size=len(tok), **kwargs)).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0.0, 0.5)
            # no weight so small that F16 turns it into zero (refused unless --cast-loss says otherwise)
            p.copy_(torch.where(p.abs() < 1e-4, torch.full_like(p, 1e-4), p))
    model.save_pretrained(folder)
    return model, tok


@pytest.fixture(scope="module")
def gemma(tmp_path_factory: pytest.TempPathFactory) -> Built:
    folder = tmp_path_factory.mktemp("gemma2") / "model"
    model, tok = gemma_folder(folder)
    return Built("gemma2", folder, model, source_ids(tok, folder), {})


def test_add_constant_is_what_gemmas_norm_computes() -> None:
    """add_constant, rounded once to the tensor's dtype, equals torch's 1 + w for F32 weights; a
    16-bit weight is widened first, as Gemma2RMSNorm's `1 + w.float()` is."""
    from convert.transforms import apply

    w = torch.randn(1000) * 10.0 ** torch.randint(-12, 2, (1000,))
    step = {"op": NORM, "value": 1.0}
    np.testing.assert_array_equal(apply([step], [w.numpy()]), (1.0 + w).numpy())
    half = w.to(torch.bfloat16)
    widened = apply([{"op": "cast", "to": "F32", "lossless": True}, step], [half.float().numpy().astype("bfloat16")])
    np.testing.assert_array_equal(widened, (1.0 + half.float()).numpy())


def test_add_constant_refuses_to_overflow() -> None:
    from convert.errors import MappingError
    from convert.transforms import apply

    with pytest.raises(MappingError, match="range"):
        apply([{"op": NORM, "value": 100.0}], [np.float16([65500.0])])


def test_f32_loads_back_in_transformers(gemma: Built) -> None:
    """transformers' GGUF reader subtracts the 1 again: the logits are the source's; its tokenizer
    (rebuilt from the file's pieces) encodes the text to the source's ids."""
    model, tok = load_back(gemma.converted("f32"))
    want = logits(gemma.model, gemma.ids)
    np.testing.assert_allclose(logits(model, gemma.ids), want, rtol=0, atol=1e-5 * np.abs(want).max())
    assert list(tok(TEXT).input_ids) == gemma.ids


@pytest.mark.parametrize("type_name, bound", [("q8_0", 0.05), ("q4_k_m", 0.3)])
def test_quantized_loads_back_in_transformers(gemma: Built, type_name: str, bound: float) -> None:
    model, _tok = load_back(gemma.converted(type_name))
    want = logits(gemma.model, gemma.ids)
    assert scaled_error(logits(model, gemma.ids), want) < bound


def expected_tensor(entry: dict[str, Any], source: dict[str, Any]) -> Any:
    """The source tensor after the entry's recorded steps, computed by torch: Gemma's 1 + w for
    the norms (widened to F32 first when a cast is recorded), nothing else for Gemma 2."""
    (src,) = entry["sources"]
    w = source[src["name"]]
    for step in entry["transforms"]:
        if step["op"] == "cast":
            assert step == {"op": "cast", "to": "F32", "lossless": True}, step
            w = w.float()
        else:
            assert step["op"] == NORM, step
            w = step["value"] + w
    return w.numpy()


@pytest.mark.parametrize("type_name", TYPES)
def test_every_tensor_is_the_source_after_its_transforms(gemma: Built, type_name: str) -> None:
    """Each tensor is its source after the recorded steps, then the type's quantize-dequantize (the
    `gguf` package's, or ggml's own for K-quants); every norm records 1 + w, nothing else does."""
    from safetensors.torch import load_file

    out = gemma.converted(type_name)
    source = load_file(gemma.folder / "model.safetensors")
    written = {t.name: t for t in gguf.GGUFReader(out / "model.gguf").tensors}
    entries = read_manifest(out)["tensors"]
    assert {e["name"] for e in entries} == set(written)
    assert "output.weight" not in written  # tied: llama.cpp reads token_embd as the output
    for entry in entries:
        is_norm = entry["name"].endswith("norm.weight")
        assert [t["op"] for t in entry["transforms"]] == ([NORM] if is_norm else []), entry["name"]
        if is_norm:
            assert not entry["invertible"] and "constant" in entry["not_invertible_because"]
        expected = expected_tensor(entry, source)
        t = written[entry["name"]]
        qtype = gguf.GGMLQuantizationType[entry["dtype"]]
        got = gguf.quants.dequantize(t.data, qtype).reshape(expected.shape)
        if qtype.name in ("Q4_K", "Q5_K", "Q6_K"):
            quantize = ggml_quantizer()
            if quantize is None:
                pytest.skip("K-quants are held against ggml's own quantizer: llama-cpp-python not built")
            rows = expected.reshape(-1, expected.shape[-1])
            expected = gguf.quants.dequantize(quantize(rows, qtype.name), qtype).reshape(expected.shape)
        elif qtype != gguf.GGMLQuantizationType.F32:
            expected = gguf.quants.dequantize(gguf.quants.quantize(expected, qtype), qtype)
        np.testing.assert_array_equal(got, expected, err_msg=entry["name"])


def test_names_and_keys_are_llama_cpps(gemma: Built) -> None:
    """Names as the `gguf` package's TensorNameMap gives them, and the keys llama.cpp's gemma2 reads."""
    out = gemma.converted("f32")
    fields = {k: f.contents() for k, f in gguf.GGUFReader(out / "model.gguf").fields.items()}
    assert fields["general.architecture"] == "gemma2"
    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH.GEMMA2, CONFIG["num_hidden_layers"])
    for entry in read_manifest(out)["tensors"]:
        (src,) = entry["sources"]
        assert names.get_name(src["name"], try_suffixes=(".weight", ".bias")) == entry["name"]
    config = gemma.model.config
    for key, want in {
        "gemma2.attention.key_length": config.head_dim,
        "gemma2.attention.value_length": config.head_dim,
        "gemma2.attention.head_count_kv": config.num_key_value_heads,
        "gemma2.attention.sliding_window": config.sliding_window,
        "gemma2.attn_logit_softcapping": config.attn_logit_softcapping,
        "gemma2.final_logit_softcapping": config.final_logit_softcapping,
        "gemma2.context_length": config.max_position_embeddings,
        "general.alignment": 32,  # what realizar assumes and candle honours
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.add_space_prefix": False,  # Gemma's SentencePiece adds no dummy prefix
        "tokenizer.ggml.bos_token_id": GEMMA_IDS["bos_id"],
        "tokenizer.ggml.eos_token_id": GEMMA_IDS["eos_id"],
        "tokenizer.ggml.padding_token_id": GEMMA_IDS["pad_id"],
    }.items():
        assert fields[key] == pytest.approx(want), key


def test_verify_with_the_source_replays_the_norms(gemma: Built) -> None:
    for type_name in ("f32", "q4_k_m"):
        rc, _stdout, stderr = run_cli("verify", gemma.converted(type_name), "--source", gemma.folder)
        assert rc == 0, stderr


@pytest.mark.parametrize("steps", [[], [{"op": NORM, "value": 0.5}]], ids=["without-the-one", "another-constant"])
def test_verify_with_the_source_catches_a_wrong_norm(gemma: Built, tmp_path: Path, steps: list[dict[str, Any]]) -> None:
    """A manifest that says a norm was stored as w (or w + 0.5): replaying it does not give the file."""
    out = tmp_path / "out"
    shutil.copytree(gemma.converted("f32"), out)
    path = out / "manifest.json"
    doc = json.loads(path.read_text())
    next(e for e in doc["tensors"] if e["name"] == "blk.1.post_ffw_norm.weight")["transforms"] = steps
    path.write_text(json.dumps(doc))
    rc, _stdout, stderr = run_cli("verify", out, "--source", gemma.folder)
    assert rc == 8 and "'blk.1.post_ffw_norm.weight': differs from its source" in stderr, stderr


# --- llama.cpp itself -----------------------------------------------------------------------------


@pytest.mark.parametrize("type_name", TYPES)
def test_llama_cpp_runs_it_as_transformers_does(gemma: Built, type_name: str) -> None:
    got, tokens = llama_cpp_logits(gemma.converted(type_name) / "model.gguf", PROBE_IDS)
    assert scaled_error(got, logits(gemma.model, PROBE_IDS)) < LLAMA_CPP_BOUND[type_name]
    assert tokens == gemma.ids


def test_llama_cpp_catches_norms_without_the_one(gemma: Built, tmp_path: Path) -> None:
    """The same comparison fails on a file whose norms hold w, as Gemma's checkpoint does."""
    bad = tmp_path / "model.gguf"
    shutil.copyfile(gemma.converted("f32") / "model.gguf", bad)
    with open(bad, "r+b") as fh:
        for t in gguf.GGUFReader(bad).tensors:
            if t.name.endswith("norm.weight"):
                fh.seek(t.data_offset)
                fh.write((np.asarray(t.data, dtype=np.float32) - 1).tobytes())
    got, _tokens = llama_cpp_logits(bad, PROBE_IDS, tokenize=False)
    assert scaled_error(got, logits(gemma.model, PROBE_IDS)) > 10 * LLAMA_CPP_BOUND["f32"]


# --- refusals: what llama.cpp's gemma2 cannot run as the config says ------------------------------


@pytest.mark.parametrize(
    "change, named",
    [
        ({"query_pre_attn_scalar": 64}, "query_pre_attn_scalar"),
        ({"final_logit_softcapping": None}, "final_logit_softcapping"),
        ({"layer_types": ["full_attention", "sliding_attention"]}, "layer_types"),
        ({"tie_word_embeddings": False}, "lm_head.weight"),
        ({"hidden_activation": "gelu"}, "hidden_activation"),
    ],
)
def test_a_config_llama_cpp_cannot_run_is_refused(tmp_path: Path, change: dict[str, Any], named: str) -> None:
    folder = tmp_path / "model"
    gemma_folder(folder, **{**SMALL, **change})
    out = tmp_path / "out"
    assert_cli_error(run_cli("to-gguf", folder, out), 7, named)
    assert_no_output(out)


def test_a_bf16_checkpoints_norms_are_widened_before_the_one(tmp_path: Path) -> None:
    """A BF16 norm is cast to F32 (recorded) before the 1 is added, as Gemma2RMSNorm's 1 + w.float():
    adding in BF16 would keep 8 bits of w; verify --source replays both steps."""
    from safetensors.torch import load_file

    folder = tmp_path / "model"
    model, _tok = gemma_folder(folder, **SMALL)
    model.to(torch.bfloat16).save_pretrained(folder)
    out = tmp_path / "out"
    rc, _stdout, stderr = run_cli("to-gguf", folder, out, "--type", "f16")
    assert rc == 0, stderr
    written = {t.name: t for t in gguf.GGUFReader(out / "model.gguf").tensors}
    source = load_file(folder / "model.safetensors")
    norms = [e for e in read_manifest(out)["tensors"] if e["name"].endswith("norm.weight")]
    assert norms
    for entry in norms:
        assert [t["op"] for t in entry["transforms"]] == ["cast", NORM]
        np.testing.assert_array_equal(np.asarray(written[entry["name"]].data), expected_tensor(entry, source))
    rc, _stdout, stderr = run_cli("verify", out, "--source", folder)
    assert rc == 0, stderr
