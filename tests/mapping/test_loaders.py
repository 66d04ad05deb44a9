"""What each Rust loader's own code expects, on models built with real torch and
transformers: exact names, shapes and dtypes, and the refusals where a loader would compute
something else. Each test cites the loader source it follows."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from tests.support import assert_cli_error, assert_no_output, convert_ok, read_manifest, run_cli  # noqa: E402
from tests.support.layouts import load_numpy  # noqa: E402


def save_state(tmp_path: Path, model: nn.Module, name: str = "model.pt") -> Path:
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return path


def convert(src: Path, out: Path, layout: str, *extra: str) -> tuple[dict[str, Any], str]:
    err = convert_ok("pth-to-safetensors", src, out, "--layout", layout, *extra)
    return read_manifest(out), err


def listed(doc: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    return {t["name"]: (tuple(t["shape"]), t["dtype"]) for t in doc["tensors"]}


def tiny_bert_with_saved_buffers() -> nn.Module:
    """A BERT whose position_ids / token_type_ids buffers are persistent, as transformers < 4.31
    (and the sentence-transformers checkpoints made with it) saved them."""
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16, max_position_embeddings=12
    )
    torch.manual_seed(0)
    model = transformers.BertModel(config).eval()
    emb = model.embeddings
    emb.register_buffer("position_ids", emb.position_ids.clone(), persistent=True)
    emb.register_buffer("token_type_ids", emb.token_type_ids.clone(), persistent=True)
    return model


@pytest.mark.parametrize("layout", ["trustformers", "pytorch", "burn", "torsh"])
def test_derived_buffers_dropped_with_a_note(tmp_path: Path, layout: str) -> None:
    """The I64 buffers loaders rebuild themselves no longer refuse the model; they are
    dropped, listed in the manifest and named in a note on stderr."""
    model = tiny_bert_with_saved_buffers()
    sd = model.state_dict()
    assert sd["embeddings.position_ids"].dtype == torch.int64
    src = save_state(tmp_path, model)
    # a bare state dict: under torsh, which transposes Linears, the embeddings' type must be decided
    decided = ",".join(f"embeddings.{e}_embeddings=Embedding" for e in ("word", "position", "token_type"))
    extra = ("--layout-option", f"module_types={decided}") if layout == "torsh" else ()
    doc, err = convert(src, tmp_path / "out", layout, *extra)
    derived = ["embeddings.position_ids", "embeddings.token_type_ids"]
    assert sorted(doc["dropped"]) == derived
    assert all(name in err for name in derived) and "derives" in err
    assert not set(derived) & set(listed(doc))
    assert any("derives" in w for w in doc["target"]["warnings"])


def test_derived_buffers_kept_by_option(tmp_path: Path) -> None:
    model = tiny_bert_with_saved_buffers()
    src = save_state(tmp_path, model)
    doc, _ = convert(src, tmp_path / "out", "pytorch", "--layout-option", "drop_derived_buffers=false")
    assert doc["dropped"] == []
    assert listed(doc)["embeddings.position_ids"] == ((1, 12), "I64")
    # TrustformeRS reads F32, F16 and I8 only: kept I64 buffers are refused, nothing written
    out = tmp_path / "tf"
    assert_cli_error(
        run_cli("pth-to-safetensors", src, out, "--layout", "trustformers", "--layout-option", "drop_derived_buffers=false"),
        7,
        "position_ids",
        "I64",
    )
    assert_no_output(out)


# ---------------------------------------------------------------------------------------------
# ToRSh (torsh-nn 0.1.3)
# ---------------------------------------------------------------------------------------------


class EncoderAndHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.enc = nn.TransformerEncoderLayer(d_model=8, nhead=2, dim_feedforward=16)
        self.head = nn.Linear(8, 3)


def test_torsh_transformer_encoder_layer_keeps_linear1_linear2_out_in(tmp_path: Path) -> None:
    """layers/transformer.rs registers linear1/linear2.weight as [out, in] (transposed at use) and
    self_attn in_proj_weight [3E, E], out_proj.weight [E, E]; a plain Linear is [in, out]."""
    torch.manual_seed(0)
    model = EncoderAndHead().eval()
    src = save_state(tmp_path, model)
    doc, _ = convert(src, tmp_path / "out", "torsh")
    arrays = load_numpy(tmp_path / "out")
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    expected = {k: (v.shape, "F32") for k, v in sd.items()}
    expected["head.weight"] = ((8, 3), "F32")
    assert listed(doc) == expected
    for name in ("enc.linear1.weight", "enc.linear2.weight", "enc.self_attn.in_proj_weight", "enc.self_attn.out_proj.weight"):
        np.testing.assert_array_equal(arrays[name], sd[name])
    np.testing.assert_array_equal(arrays["head.weight"], sd["head.weight"].T)
    assert listed(doc)["enc.linear1.weight"][0] == (16, 8)


@pytest.mark.parametrize(
    "module, words",
    [
        (nn.BatchNorm1d(4), ["running_mean", "Unexpected keys"]),
        (nn.LSTM(3, 4, num_layers=2), ["weight_ih_l0", "multi-layer LSTM"]),
        (nn.LSTM(3, 4, bidirectional=True), ["weight_ih_l0", "bidirectional LSTM"]),
        (nn.GRU(3, 4, num_layers=2), ["weight_ih_l0", "multi-layer GRU"]),
        (nn.GRU(3, 4, bidirectional=True), ["weight_ih_l0", "bidirectional GRU"]),
        (nn.RNN(3, 4), ["weight_ih_l0", "returns zeros"]),
    ],
    ids=["batchnorm", "lstm2", "bilstm", "gru2", "bigru", "rnn"],
)
def test_torsh_refuses_what_it_cannot_load_or_compute(tmp_path: Path, module: nn.Module, words: list[str]) -> None:
    model = nn.Module()
    model.m = module
    src, out = save_state(tmp_path, model), tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out, "--layout", "torsh"), 7, *words)
    assert_no_output(out)


def test_torsh_single_layer_lstm_gru_keep_pytorch_names(tmp_path: Path) -> None:
    """recurrent_gated.rs: weight_ih_l0 [G*H, in], weight_hh_l0, bias_ih_l0, bias_hh_l0 for layer 0."""
    model = nn.Module()
    model.lstm, model.gru = nn.LSTM(3, 4), nn.GRU(3, 2)
    src = save_state(tmp_path, model)
    doc, _ = convert(src, tmp_path / "out", "torsh")
    assert listed(doc) == {k: (tuple(v.shape), "F32") for k, v in model.state_dict().items()}


# ---------------------------------------------------------------------------------------------
# burn (burn-store SafetensorsStore, burn-nn 0.21 to 0.22-pre)
# ---------------------------------------------------------------------------------------------


def _burn_rnn_expected(rnn: nn.RNN, native: bool) -> dict[str, tuple[tuple[int, ...], str]]:
    """burn-nn rnn/basic.rs: Rnn { gate: { input_transform, hidden_transform } }, BiRnn { forward,
    reverse }; a Vec of layers is named by index. Linear weights [out, in] (adapter) or [in, out]."""
    out = {}
    h = rnn.hidden_size
    for k in range(rnn.num_layers):
        for _, d in (("", "forward"), ("_reverse", "reverse"))[: 2 if rnn.bidirectional else 1]:
            base = ".".join(["rnn", *([str(k)] if rnn.num_layers > 1 else []), *([d] if rnn.bidirectional else [])])
            n_in = rnn.input_size if k == 0 else h * (2 if rnn.bidirectional else 1)
            for t, width in (("input_transform", n_in), ("hidden_transform", h)):
                out[f"{base}.gate.{t}.weight"] = ((width, h) if native else (h, width), "F32")
                out[f"{base}.gate.{t}.bias"] = ((h,), "F32")
    return out


@pytest.mark.parametrize("layers, bidirectional", [(1, False), (2, False), (1, True), (2, True)])
@pytest.mark.parametrize("layout", ["burn", "burn-native"])
def test_burn_elman_rnn_names_and_forward(tmp_path: Path, layout: str, layers: int, bidirectional: bool) -> None:
    torch.manual_seed(layers + bidirectional)
    model = nn.Module()
    model.rnn = nn.RNN(3, 4, num_layers=layers, bidirectional=bidirectional)
    src = save_state(tmp_path, model)
    native = layout == "burn-native"
    doc, _ = convert(src, tmp_path / "out", layout)
    assert listed(doc) == _burn_rnn_expected(model.rnn, native)
    t = load_numpy(tmp_path / "out")
    # burn's Rnn step: h = tanh(input_transform(x) + hidden_transform(h)), layer by layer
    x = torch.randn(5, 2, 3)
    with torch.no_grad():
        want = model.rnn(x)[0].numpy()

    def lin(name: str, v: np.ndarray) -> np.ndarray:
        w = t[f"{name}.weight"]
        return (v @ w if native else v @ w.T) + t[f"{name}.bias"]

    seq = x.numpy()
    for k in range(layers):
        outs = []
        for d in ["forward", "reverse"] if bidirectional else ["forward"]:
            base = ".".join(["rnn", *([str(k)] if layers > 1 else []), *([d] if bidirectional else [])])
            h, hs = np.zeros((2, 4), np.float32), []
            steps = range(seq.shape[0]) if d == "forward" else reversed(range(seq.shape[0]))
            for i in steps:
                h = np.tanh(lin(f"{base}.gate.input_transform", seq[i]) + lin(f"{base}.gate.hidden_transform", h))
                hs.append(h)
            outs.append(np.stack(hs if d == "forward" else hs[::-1]))
        seq = np.concatenate(outs, axis=-1)
    np.testing.assert_allclose(seq, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("layout", ["burn", "burn-native"])
def test_burn_prelu_alpha_and_instance_norm_gamma_beta(tmp_path: Path, layout: str) -> None:
    """activation/prelu.rs: PRelu { alpha }; norm/instance.rs: InstanceNorm { gamma, beta }, which
    the adapter does not rename (is_normalization_layer lists BatchNorm, LayerNorm, GroupNorm,
    RmsNorm), so the layout writes gamma/beta itself."""
    model = nn.Module()
    model.act = nn.PReLU()
    model.inorm = nn.InstanceNorm1d(4, affine=True)
    with torch.no_grad():
        model.inorm.weight.uniform_(0.5, 1.5)
        model.act.weight.fill_(0.1)
    src = save_state(tmp_path, model)
    doc, _ = convert(src, tmp_path / "out", layout)
    assert listed(doc) == {"act.alpha": ((1,), "F32"), "inorm.gamma": ((4,), "F32"), "inorm.beta": ((4,), "F32")}
    t = load_numpy(tmp_path / "out")
    np.testing.assert_array_equal(t["act.alpha"], model.act.weight.detach().numpy())
    np.testing.assert_array_equal(t["inorm.gamma"], model.inorm.weight.detach().numpy())


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"kdim": 3, "vdim": 5}, ["q_proj_weight", "kdim/vdim"]),
        ({"add_bias_kv": True}, ["bias_k", "add_bias_kv"]),
    ],
    ids=["kdim", "bias_kv"],
)
@pytest.mark.parametrize("layout", ["burn", "burn-native"])
def test_burn_refuses_attention_it_has_no_field_for(
    tmp_path: Path, layout: str, kwargs: dict[str, Any], words: list[str]
) -> None:
    model = nn.Module()
    model.attn = nn.MultiheadAttention(6, 2, **kwargs)
    src, out = save_state(tmp_path, model), tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out, "--layout", layout), 7, *words)
    assert_no_output(out)


class Typed(nn.Module):
    def __init__(self, dtype: torch.dtype) -> None:
        super().__init__()
        self.register_buffer("x", torch.tensor([1, 2, 3]).to(dtype))


@pytest.mark.parametrize(
    "layout, source, written",
    [
        ("burn", torch.uint16, "U32"),
        ("burn", torch.float8_e4m3fn, "F32"),
        ("burn", torch.uint64, "U64"),
        ("tch", torch.uint16, "I32"),
        ("tch", torch.uint32, "I64"),
        ("tch", torch.float8_e5m2, "F32"),
        ("tch", torch.int8, "I8"),
        ("candle", torch.uint16, "U16"),
        ("candle", torch.int8, "I32"),
        ("candle", torch.bool, "U8"),
    ],
)
def test_layout_dtypes_follow_the_loader(tmp_path: Path, layout: str, source: torch.dtype, written: str) -> None:
    """burn-store store.rs, tch-rs tensor/safetensors.rs and candle-core safetensors.rs read a fixed
    dtype set (burn and tch fail the whole file on any other): others are widened, values kept."""
    model = Typed(source)
    src = save_state(tmp_path, model)
    doc, _ = convert(src, tmp_path / "out", layout)
    assert listed(doc) == {"x": ((3,), written)}
    got = load_numpy(tmp_path / "out")["x"]
    np.testing.assert_array_equal(got.astype(np.float64), model.x.to(torch.float64).numpy())


def test_tch_refuses_u64(tmp_path: Path) -> None:
    """tch has no unsigned 64-bit kind and I64 cannot hold every U64: refused, nothing written."""
    src, out = save_state(tmp_path, Typed(torch.uint64)), tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out, "--layout", "tch"), 7, "'x'", "U64")
    assert_no_output(out)


# ---------------------------------------------------------------------------------------------
# Module types from what the source knows
# ---------------------------------------------------------------------------------------------


def tiny_gpt2_folder(tmp_path: Path) -> tuple[nn.Module, Path]:
    """A GPT-2 built locally from a tiny config, saved as transformers saves it (pytorch_model.bin
    and config.json, model_type gpt2)."""
    transformers = pytest.importorskip("transformers")
    config = transformers.GPT2Config(vocab_size=40, n_positions=16, n_embd=8, n_layer=1, n_head=2)
    torch.manual_seed(0)
    model = transformers.GPT2Model(config).eval()
    folder = tmp_path / "gpt2"
    model.save_pretrained(folder, safe_serialization=False)
    assert (folder / "pytorch_model.bin").is_file() and (folder / "config.json").is_file()
    return model, folder


CONV1D = ("h.0.attn.c_attn.weight", "h.0.attn.c_proj.weight", "h.0.mlp.c_fc.weight", "h.0.mlp.c_proj.weight")


@pytest.mark.parametrize("layout", ["burn-native", "torsh", "burn"])
def test_gpt2_conv1d_projections_from_config(tmp_path: Path, layout: str) -> None:
    """Every Conv1D ([in, out]) is treated alike, the square attn.c_proj too: kept [in, out] where
    the loader's Linear is [in, out] (burn-native, torsh), written [out, in] for burn's adapter."""
    model, folder = tiny_gpt2_folder(tmp_path)
    out = tmp_path / "out"
    doc, _ = convert(folder, out, layout)
    t = load_numpy(out)
    sd = {k: v.numpy() for k, v in model.state_dict().items()}
    for name in CONV1D:
        want = sd[name].T if layout == "burn" else sd[name]
        np.testing.assert_array_equal(t[name], want)
    modules = {m["path"]: m for m in doc["architecture"]["modules"]}
    assert {modules[n.rpartition(".")[0]]["type"] for n in CONV1D} == {"Conv1D"}
    assert modules["h.0.attn.c_proj"]["decided_by"] == "config.json model_type 'gpt2'"
    # the attention input projection computes what torch's does: x @ W + b (burn's adapter: W.T)
    x = torch.randn(3, 8)
    with torch.no_grad():
        want = model.h[0].attn.c_attn(x).numpy()
    w = t["h.0.attn.c_attn.weight"]
    got = x.numpy() @ (w.T if layout == "burn" else w) + t["h.0.attn.c_attn.bias"]
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=0)


def test_gpt2_bare_state_dict_square_conv1d_is_refused_not_guessed(tmp_path: Path) -> None:
    """Without config.json the square c_proj fits a Linear and a Conv1D: under a transposing layout
    it is refused with the names and the way to decide; decided, it converts."""
    model, _ = tiny_gpt2_folder(tmp_path)
    src, out = save_state(tmp_path, model), tmp_path / "out"
    assert_cli_error(
        run_cli("pth-to-safetensors", src, out, "--layout", "burn-native"),
        7,
        "h.0.attn.c_proj.weight (Linear or Conv1D)",
        "wte.weight (Embedding or Linear)",
        "module_types",
    )
    assert_no_output(out)
    doc, _ = convert(
        src, out, "burn-native", "--layout-option", "module_types=h.0.attn.c_proj=Conv1D,wte=Embedding,wpe=Embedding"
    )
    np.testing.assert_array_equal(load_numpy(out)["h.0.attn.c_proj.weight"], model.state_dict()["h.0.attn.c_proj.weight"].numpy())


class Items(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.items = nn.Embedding(10, 8)
        self.position_proj = nn.Linear(8, 5, bias=False)


@pytest.mark.parametrize("layout", ["burn-native", "torsh"])
def test_embedding_or_linear_guess_is_refused_under_transposing_layouts(tmp_path: Path, layout: str) -> None:
    """An nn.Embedding without a name hint and a bias-free Linear named position...: the same
    shapes fit both types, and these layouts transpose one and not the other."""
    torch.manual_seed(1)
    model = Items()
    src, out = save_state(tmp_path, model), tmp_path / "out"
    assert_cli_error(
        run_cli("pth-to-safetensors", src, out, "--layout", layout),
        7,
        "items.weight",
        "position_proj.weight",
        "Embedding or Linear",
        "module_types",
    )
    assert_no_output(out)
    doc, _ = convert(src, out, layout, "--layout-option", "module_types=items=Embedding,position_proj=Linear")
    t = load_numpy(out)
    np.testing.assert_array_equal(t["items.weight"], model.items.weight.detach().numpy())
    np.testing.assert_array_equal(t["position_proj.weight"], model.position_proj.weight.detach().numpy().T)
    decided = {m["path"]: m.get("decided_by") for m in doc["architecture"]["modules"]}
    assert decided == {"items": "module_types option", "position_proj": "module_types option"}


@pytest.mark.parametrize(
    "choice, words", [("nowhere=Linear", ["nowhere", "names no module"]), ("items=Conv2d", ["items", "Conv2d", "Embedding"])]
)
def test_module_types_option_mistakes_are_usage_errors(tmp_path: Path, choice: str, words: list[str]) -> None:
    src, out = save_state(tmp_path, Items()), tmp_path / "out"
    assert_cli_error(
        run_cli("pth-to-safetensors", src, out, "--layout", "torsh", "--layout-option", f"module_types={choice}"), 2, *words
    )
    assert_no_output(out)


def test_guess_that_changes_no_bytes_converts(tmp_path: Path) -> None:
    """Under pytorch and burn (the adapter transposes Linears at load) both types are written alike."""
    src = save_state(tmp_path, Items())
    for layout in ("pytorch", "burn"):
        doc, _ = convert(src, tmp_path / layout, layout)
        assert set(listed(doc)) == {"items.weight", "position_proj.weight"}


@pytest.mark.parametrize("layout", ["burn", "burn-native"])
def test_guess_that_changes_a_name_is_refused(tmp_path: Path, layout: str) -> None:
    """A bare PReLU(4) fits a LayerNorm by shape; burn names LayerNorm's weight
    `gamma` and PReLU's `alpha`, so a guess would decide the name the loader looks up: refused (7) with
    the tensor and the option; decided, it converts under burn's PReLU name."""
    torch.manual_seed(3)
    model = nn.Sequential(nn.Linear(3, 4), nn.PReLU(4))
    src, out = save_state(tmp_path, model), tmp_path / "out"
    assert_cli_error(
        run_cli("pth-to-safetensors", src, out, "--layout", layout), 7, "1.weight", "LayerNorm or PReLU", "module_types"
    )
    assert_no_output(out)
    doc, _ = convert(src, out, layout, "--layout-option", "module_types=1=PReLU")
    np.testing.assert_array_equal(load_numpy(out)["1.alpha"], model[1].weight.detach().numpy())
    assert run_cli("verify", out, "--source", src)[0] == 0


# ---------------------------------------------------------------------------------------------
# Ties
# ---------------------------------------------------------------------------------------------


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(10, 4)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.emb.weight


@pytest.mark.parametrize(
    "layout, written",
    [("pytorch", "alias"), ("candle", "duplicate"), ("tch", "duplicate"), ("burn", "duplicate"), ("trustformers", "duplicate")],
)
def test_ties_follow_the_loader(tmp_path: Path, layout: str, written: str) -> None:
    """transformers re-ties (store once + metadata alias); burn-store, ToRSh, tch-rs and candle look
    every name up, so the tied tensor is written under each name. The manifest records both."""
    from safetensors import safe_open

    torch.manual_seed(2)
    model = Tied()
    src, out = save_state(tmp_path, model), tmp_path / "out"
    extra = ("--layout-option", "module_types=head=Linear") if layout == "burn" else ()
    doc, _ = convert(src, out, layout, *extra)
    assert doc["target"]["ties"] == {"loader": written, "written": written, "tied": {"head.weight": "emb.weight"}}
    with safe_open(str(out / "model.safetensors"), framework="numpy") as fh:
        names, meta = set(fh.keys()), fh.metadata()
    if written == "alias":
        assert names == {"emb.weight"} and meta["head.weight"] == "emb.weight"
        assert doc["aliases"] == {"head.weight": "emb.weight"}
    else:
        assert names == {"emb.weight", "head.weight"} and "head.weight" not in meta and doc["aliases"] == {}
        t = load_numpy(out)
        np.testing.assert_array_equal(t["head.weight"], model.emb.weight.detach().numpy())
    rc, _, err = run_cli("verify", out, "--source", src)
    assert rc == 0, err


def test_ties_option_overrides_and_is_checked(tmp_path: Path) -> None:
    src = save_state(tmp_path, Tied())
    doc, _ = convert(src, tmp_path / "a", "candle", "--layout-option", "ties=alias")
    assert doc["target"]["ties"]["loader"] == "duplicate" and doc["target"]["ties"]["written"] == "alias"
    assert doc["aliases"] == {"head.weight": "emb.weight"}
    doc, _ = convert(src, tmp_path / "b", "pytorch", "--layout-option", "ties=duplicate")
    assert {t["name"] for t in doc["tensors"]} == {"emb.weight", "head.weight"}
    out = tmp_path / "c"
    assert_cli_error(run_cli("pth-to-safetensors", src, out, "--layout-option", "ties=maybe"), 2, "ties", "maybe")
    assert_no_output(out)


# ---------------------------------------------------------------------------------------------
# neuro-divergent (ruv-FANN)
# ---------------------------------------------------------------------------------------------


def test_neuro_divergent_refuses_pytorch_gru_unless_accepted(tmp_path: Path) -> None:
    """neuro-divergent-models recurrent/layers.rs: the GRU cell resets h before the new gate's
    weights; PyTorch resets after. Refused by default; the option writes the gate tensors."""
    model = nn.Module()
    model.gru = nn.GRU(3, 2)
    src, out = save_state(tmp_path, model), tmp_path / "out"
    assert_cli_error(
        run_cli("pth-to-safetensors", src, out, "--layout", "neuro-divergent"),
        7,
        "gru.weight_ih_l0",
        "reset gate",
        "accept_gru_reset_before_weights",
    )
    assert_no_output(out)
    doc, _ = convert(src, out, "neuro-divergent", "--layout-option", "accept_gru_reset_before_weights=true")
    assert set(listed(doc)) == {f"gru.l0.{g}" for g in ("reset_gate", "update_gate", "new_gate", "new_gate_hidden_bias")}
