"""Built-in Rust target layouts on real torch models: exact names and shapes, numerics from each
target's conventions, verify (and its failures), fail-closed mapping, refusals, user rule files,
layout options, `convert layouts` and the schema of every built-in rule file.

Checkpoints are written by torch.save; conversions and verification run through the CLI as a user
runs them; every manifest is validated against its schema (tests.support.read_manifest).
"""

from __future__ import annotations

import json
import shutil
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, NamedTuple

import blake3
import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from tests.support import REPO, assert_cli_error, assert_no_output, flip_tensor_byte, read_manifest, run_cli  # noqa: E402
from tests.support.layouts import (  # noqa: E402
    BUILTIN_LAYOUTS,
    GRU_GATES,
    LSTM_GATES,
    DenseRecurrent,
    Net,
    RecurrentZoo,
    TorshNet,
    build,
    burn_recurrent_forward,
    expected_tensors,
    load_numpy,
    mha_forward,
    nd_recurrent_bases,
    nd_recurrent_forward,
    norm_forward,
    to_np,
)

MODEL_FOR = {layout: "net" for layout in BUILTIN_LAYOUTS} | {"neuro-divergent": "dense", "torsh": "torsh"}
# Names and shapes leave these module types open; under layouts whose bytes depend on them the user
# decides (tests/mapping/test_loaders.py proves the refusal without it).
DECIDED = {
    ("torsh", "torsh"): "emb=Embedding",
    ("net", "burn-native"): "emb=Embedding",
    ("dense", "neuro-divergent"): "mlp.2=Linear",
}
ACCEPTED = {"neuro-divergent": {"accept_gru_reset_before_weights": True}}
CANONICAL: dict[str, str] = {}
ATOL = 1e-5


class Converted(NamedTuple):
    model: nn.Module
    src: Path
    out: Path
    manifest: dict[str, Any]
    warnings: list[str]


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[nn.Module, Path]]:
    """The test models (fixed seeds, eval mode), each saved once with torch.save."""
    root = tmp_path_factory.mktemp("layout-models")
    found = {}
    for key, cls, seed in (("net", Net, 0), ("zoo", RecurrentZoo, 1), ("dense", DenseRecurrent, 2), ("torsh", TorshNet, 3)):
        model = build(cls, seed)
        path = root / f"{key}.pt"
        torch.save(model.state_dict(), path)
        found[key] = (model, path)
    return found


@pytest.fixture(scope="module")
def converted(
    models: dict[str, tuple[nn.Module, Path]], tmp_path_factory: pytest.TempPathFactory
) -> Callable[[str, str], Converted]:
    """converted(model_key, layout): the model converted once with the Python API behind the CLI
    (the CLI's own paths are exercised by the tests that need its options, stderr or exit codes)."""
    from convert.api import pth_to_safetensors

    root = tmp_path_factory.mktemp("layout-out")
    cache: dict[tuple[str, str], Converted] = {}

    def get(key: str, layout: str) -> Converted:
        if (key, layout) not in cache:
            model, src = models[key]
            out = root / f"{key}-{layout}"
            options = {"module_types": DECIDED[(key, layout)]} if (key, layout) in DECIDED else {}
            options |= ACCEPTED.get(layout, {})
            result = pth_to_safetensors(src, out, layout=layout, layout_options=options)
            cache[(key, layout)] = Converted(model, src, out, read_manifest(out), result.warnings)
        return cache[(key, layout)]

    return get


def verified(out: Path, src: Path) -> bool:
    """The API behind `convert verify OUT --source SRC` (the CLI runs it per layout below)."""
    from convert.api import verify_path

    report = verify_path(out, src)
    assert report.ok, report.problems
    return report.compared_with_source == len(read_manifest(out)["tensors"])


def saved(tmp_path: Path, model: nn.Module, name: str = "model.pt") -> Path:
    path = tmp_path / name
    torch.save(model.state_dict(), path)
    return path


def actual_tensors(out: Path, manifest: dict[str, Any]) -> dict[str, tuple[tuple[int, ...], str]]:
    """Names, shapes and dtypes as the manifest lists them, after checking the files agree."""
    from safetensors import safe_open

    listed = {t["name"]: (tuple(t["shape"]), t["dtype"]) for t in manifest["tensors"]}
    on_disk = {}
    for f in manifest["files"]:
        with safe_open(str(out / f["path"]), framework="numpy") as fh:
            for k in fh.keys():
                on_disk[k] = tuple(fh.get_slice(k).get_shape())
    assert on_disk == {k: v[0] for k, v in listed.items()}
    return listed


def state(model: nn.Module) -> dict[str, np.ndarray]:
    return {k: v.detach().numpy() for k, v in model.state_dict().items()}


def sequence(gen: torch.Generator, steps: int, batch: int, features: int) -> torch.Tensor:
    return torch.randn(steps, batch, features, generator=gen)


# ---------------------------------------------------------------------------------------------
# Exact names and shapes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("layout", BUILTIN_LAYOUTS)
def test_exact_names_shapes_and_dtypes(converted: Callable[[str, str], Converted], layout: str) -> None:
    """The output holds exactly the tensors the target's conventions predict, nothing else."""
    c = converted(MODEL_FOR[layout], layout)
    expected = expected_tensors(c.model, layout)
    actual = actual_tensors(c.out, c.manifest)
    extra, missing = sorted(set(actual) - set(expected)), sorted(set(expected) - set(actual))
    assert actual == expected, f"extra: {extra}, missing: {missing}"
    assert c.manifest["target"]["layout"] == CANONICAL.get(layout, layout)
    assert c.manifest["aliases"] == {}
    bn_counters = [k for k in c.model.state_dict() if k.endswith("num_batches_tracked")]
    if layout in ("pytorch", "tch", "candle", "torsh"):  # TorshNet has no BatchNorm
        assert c.manifest["dropped"] == []
    elif layout != "neuro-divergent":
        assert c.manifest["dropped"] == bn_counters == ["bn.num_batches_tracked"]


@pytest.mark.parametrize("layout", ["pytorch", "tch", "candle", "trustformers"])
def test_pytorch_named_layouts_keep_bytes(converted: Callable[[str, str], Converted], layout: str) -> None:
    """PyTorch-named targets carry every tensor across unchanged, byte for byte."""
    c = converted("net", layout)
    arrays = load_numpy(c.out)
    for name, value in state(c.model).items():
        if name in arrays:
            assert arrays[name].dtype == value.dtype and arrays[name].tobytes() == value.tobytes(), name
    assert all(not t["transforms"] for t in c.manifest["tensors"])


def test_burn_literal_names(converted: Callable[[str, str], Converted]) -> None:
    """A few names spelled out, so the derived expectations cannot drift with the converter."""
    net = set(load_numpy(converted("net", "burn").out))
    zoo = set(load_numpy(converted("zoo", "burn").out))
    for name in (
        "mlp.0.weight",
        "mlp.1.bias",
        "lstm.0.input_gate.input_transform.weight",
        "lstm.1.output_gate.hidden_transform.bias",
        "gru.reset_gate.input_transform.weight",
        "gru.new_gate.hidden_transform.bias",
        "attn.query.weight",
        "attn.output.bias",
    ):
        assert name in net, name
    assert "mlp.2.weight" not in net and "bn.num_batches_tracked" not in net
    for name in (
        "lstm1.input_gate.input_transform.weight",
        "lstm1.cell_gate.hidden_transform.bias",
        "bilstm.forward.forget_gate.input_transform.weight",
        "bilstm.reverse.output_gate.hidden_transform.weight",
        "bilstm2.1.reverse.cell_gate.input_transform.weight",
        "gru2.1.update_gate.hidden_transform.weight",
        "bigru.reverse.new_gate.input_transform.bias",
        "bigru2.0.forward.reset_gate.input_transform.weight",
    ):
        assert name in zoo, name
    assert not any(".0." in n for n in zoo if n.startswith(("lstm1.", "bilstm.", "bigru.")))


@pytest.mark.parametrize("layout", ["burn", "burn-native"])
def test_burn_recurrent_zoo_names(converted: Callable[[str, str], Converted], layout: str) -> None:
    """Every num_layers x bidirectional case of LSTM and GRU gets burn's structure."""
    c = converted("zoo", layout)
    assert actual_tensors(c.out, c.manifest) == expected_tensors(c.model, layout)


def test_burn_renumbers_nested_sequentials(tmp_path: Path) -> None:
    """Sequential indices become contiguous at every depth (parameter-free layers leave no gap)."""
    torch.manual_seed(3)
    model = nn.Module()
    model.net = nn.Sequential(
        nn.Linear(3, 4), nn.ReLU(), nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), nn.Dropout(0.1), nn.BatchNorm1d(2)
    )
    model.eval()
    out = tmp_path / "out"
    rc, _, err = run_cli("pth-to-safetensors", saved(tmp_path, model), out, "--layout", "burn")
    assert rc == 0, err
    doc = read_manifest(out)
    assert actual_tensors(out, doc) == expected_tensors(model, "burn")
    arrays, sd = load_numpy(out), state(model)
    for new, old in (
        ("net.0.weight", "net.0.weight"),
        ("net.1.0.weight", "net.2.0.weight"),
        ("net.1.1.weight", "net.2.2.weight"),
        ("net.2.running_var", "net.4.running_var"),
    ):
        np.testing.assert_array_equal(arrays[new], sd[old])
    assert doc["dropped"] == ["net.4.num_batches_tracked"]
    assert verified(out, tmp_path / "model.pt")


# ---------------------------------------------------------------------------------------------
# Numerics from the target's conventions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("key", ["net", "zoo"])
@pytest.mark.parametrize("layout", ["burn", "burn-native"])
def test_burn_recurrent_forward(converted: Callable[[str, str], Converted], layout: str, key: str) -> None:
    """burn's per-gate LSTM/GRU step over a sequence reproduces torch's nn.LSTM / nn.GRU."""
    c = converted(key, layout)
    arrays = load_numpy(c.out)
    gen = torch.Generator().manual_seed(11)
    checked = 0
    for path, mod in c.model.named_modules():
        if isinstance(mod, (nn.LSTM, nn.GRU)):
            x = sequence(gen, 5, 2, mod.input_size)
            with torch.no_grad():
                want = to_np(mod(x)[0])
            got = burn_recurrent_forward(arrays, mod, path, x.numpy(), native=layout == "burn-native")
            np.testing.assert_allclose(got, want, atol=ATOL, rtol=0, err_msg=path)
            checked += 1
    assert checked == (2 if key == "net" else 6)


@pytest.mark.parametrize("layout", ["burn", "burn-native"])
def test_burn_attention_forward(converted: Callable[[str, str], Converted], layout: str) -> None:
    """query/key/value/output reproduce nn.MultiheadAttention (heads from the test's module)."""
    c = converted("net", layout)
    attn = c.model.attn
    gen = torch.Generator().manual_seed(12)
    q, k, v = (torch.randn(2, n, attn.embed_dim, generator=gen) for n in (4, 5, 5))
    with torch.no_grad():
        want = to_np(attn(q, k, v, need_weights=False)[0])
    got = mha_forward(
        load_numpy(c.out),
        "attn",
        q.numpy().astype(np.float64),
        k.numpy().astype(np.float64),
        v.numpy().astype(np.float64),
        attn.num_heads,
        native=layout == "burn-native",
    )
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)


@pytest.mark.parametrize("layout", ["burn", "burn-native"])
def test_burn_dense_norm_embedding_forward(converted: Callable[[str, str], Converted], layout: str) -> None:
    """Renumbered MLP, BatchNorm (eval, running stats), LayerNorm and Embedding from burn's names;
    burn-native weights are [in, out] (x @ W); norms are gamma/beta under both."""
    c = converted("net", layout)
    t, model, native = load_numpy(c.out), c.model, layout == "burn-native"
    gen = torch.Generator().manual_seed(13)

    def lin(name: str, x: np.ndarray) -> np.ndarray:
        w = t[f"{name}.weight"].astype(np.float64)
        return (x @ w if native else x @ w.T) + t[f"{name}.bias"]

    x = torch.randn(3, 6, generator=gen)
    with torch.no_grad():
        want = to_np(model.mlp(x))
    got = lin("mlp.1", np.maximum(lin("mlp.0", to_np(x)), 0.0))
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)

    g, b = "gamma", "beta"
    xb = torch.randn(2, 4, 3, 3, generator=gen)
    with torch.no_grad():
        want = to_np(model.bn(xb))
    col = (slice(None), None, None)
    got = norm_forward(
        to_np(xb), t[f"bn.{g}"][col], t[f"bn.{b}"][col], t["bn.running_mean"][col], t["bn.running_var"][col], model.bn.eps
    )
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)

    xl = to_np(x)
    with torch.no_grad():
        want = to_np(model.ln(x))
    got = norm_forward(xl, t[f"ln.{g}"], t[f"ln.{b}"], xl.mean(-1, keepdims=True), xl.var(-1, keepdims=True), model.ln.eps)
    np.testing.assert_allclose(got, want, atol=ATOL, rtol=0)

    idx = torch.tensor([[0, 3, 10], [7, 7, 1]])
    with torch.no_grad():
        np.testing.assert_array_equal(t["emb.weight"][idx.numpy()], model.emb(idx).numpy())
    np.testing.assert_array_equal(t["conv.weight"], model.conv.weight.detach().numpy())


def test_torsh_linear_forward(converted: Callable[[str, str], Converted]) -> None:
    """ToRSh's Linear weights are [in, out]: x @ W + b reproduces torch (BatchNorm statistics are
    refused: tests/mapping/test_loaders.py)."""
    c = converted("torsh", "torsh")
    t = load_numpy(c.out)
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(14))
    with torch.no_grad():
        want = to_np(c.model.mlp(x))
    h = np.maximum(to_np(x) @ t["mlp.0.weight"] + t["mlp.0.bias"], 0.0)
    np.testing.assert_allclose(h @ t["mlp.2.weight"] + t["mlp.2.bias"], want, atol=ATOL, rtol=0)
    assert c.manifest["target"]["warnings"] == []


def test_torsh_casts_everything_to_f32(tmp_path: Path) -> None:
    """ToRSh loads F32 only: F64, BF16 and integer tensors all arrive as F32, casts recorded."""
    torch.manual_seed(4)
    model = nn.Module()
    model.fc = nn.Linear(3, 2).double()
    model.norm = nn.LayerNorm(2).to(torch.bfloat16)
    model.register_buffer("steps", torch.tensor([1, 2, 3], dtype=torch.int32))
    src, out = saved(tmp_path, model), tmp_path / "out"
    rc, _, err = run_cli("pth-to-safetensors", src, out, "--layout", "torsh")
    assert rc == 0, err
    doc = read_manifest(out)
    assert {t["name"]: t["dtype"] for t in doc["tensors"]} == dict.fromkeys(
        ["fc.weight", "fc.bias", "norm.weight", "norm.bias", "steps"], "F32"
    )
    t = load_numpy(out)
    np.testing.assert_array_equal(t["fc.weight"], model.fc.weight.detach().numpy().T.astype(np.float32))
    np.testing.assert_array_equal(t["norm.weight"], model.norm.weight.detach().float().numpy())
    np.testing.assert_array_equal(t["steps"], np.array([1, 2, 3], np.float32))
    casts = {t["name"]: [x for x in t["transforms"] if x["op"] == "cast"] for t in doc["tensors"]}
    assert casts["fc.weight"] == [
        {"op": "cast", "to": "F32", "lossless": False, "on_loss": "refuse", "overflowed": 0, "flushed": 0}
    ]  # narrowing, and nothing lost
    assert casts["norm.bias"] == [{"op": "cast", "to": "F32", "lossless": True}]
    assert verified(out, src)


def test_neuro_divergent_forward(converted: Callable[[str, str], Converted]) -> None:
    """Dense y = [x, 1] @ W^T and recurrent gates [x, h, 1] @ G^T reproduce torch's MLP, the
    2-layer bidirectional LSTM and the GRU (whose b_hn stays apart, inside r * (...))."""
    c = converted("dense", "neuro-divergent")
    t, model = load_numpy(c.out), c.model
    gen = torch.Generator().manual_seed(15)

    x = torch.randn(4, 5, generator=gen)
    with torch.no_grad():
        want = to_np(model.mlp(x))
    h = to_np(x)
    for name in ("mlp.0", "mlp.2", "mlp.4"):
        h = np.concatenate([h, np.ones((h.shape[0], 1))], axis=1) @ t[name].astype(np.float64).T
        h = np.tanh(h) if name != "mlp.4" else h
    np.testing.assert_allclose(h, want, atol=ATOL, rtol=0)
    assert not t["mlp.2"][:, -1].any(), "a bias-less layer's bias column is zero"

    for path in ("lstm", "gru"):
        mod = getattr(model, path)
        xs = sequence(gen, 6, 2, mod.input_size)
        with torch.no_grad():
            want = to_np(mod(xs)[0])
        np.testing.assert_allclose(nd_recurrent_forward(t, mod, path, xs.numpy()), want, atol=ATOL, rtol=0, err_msg=path)

    sd, hidden = state(model), model.gru.hidden_size
    for base, _, k, _ in nd_recurrent_bases(model.gru, "gru"):
        np.testing.assert_array_equal(t[f"{base}.new_gate_hidden_bias"], sd[f"gru.bias_hh_l{k}"][2 * hidden :])
        np.testing.assert_array_equal(t[f"{base}.new_gate"][:, -1], sd[f"gru.bias_ih_l{k}"][2 * hidden :])
    gates = {t["name"]: t.get("annotations", {}).get("gate") for t in c.manifest["tensors"]}
    assert gates["lstm.l1_reverse.cell_gate"] == "cell_gate" and gates["gru.l0.update_gate"] == "update_gate"
    assert set(LSTM_GATES) | set(GRU_GATES) <= set(gates.values())


# ---------------------------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------------------------


def _victim(manifest: dict[str, Any]) -> str:
    """The tensor with the longest transform chain (the first such name), to corrupt."""
    return max(
        manifest["tensors"],
        key=lambda t: (len(t["transforms"]), t["data_offsets"][1] > t["data_offsets"][0], [-ord(ch) for ch in t["name"]]),
    )["name"]


@pytest.mark.parametrize("layout", BUILTIN_LAYOUTS)
def test_verify_source_passes_then_catches_one_byte(
    converted: Callable[[str, str], Converted], layout: str, tmp_path: Path
) -> None:
    """`convert verify OUT --source SRC` passes; one changed byte inside a tensor's data fails it
    with exit 8 naming the tensor, also when the manifest's digests are rewritten to match."""
    c = converted(MODEL_FOR[layout], layout)
    rc, out_text, err = run_cli("verify", c.out, "--source", c.src)
    assert rc == 0, err
    assert f"{len(c.manifest['tensors'])} compared with the source" in out_text

    bad = tmp_path / "bad"
    shutil.copytree(c.out, bad)
    victim = _victim(c.manifest)
    flip_tensor_byte(bad, victim)
    rc, _, err = run_cli("verify", bad, "--source", c.src)
    assert rc == 8, err
    assert repr(victim) in err and "Traceback" not in err

    # The same corruption with the manifest's digests rewritten: only the source comparison sees it.
    doc = json.loads((bad / "manifest.json").read_text())
    entry = next(t for t in doc["tensors"] if t["name"] == victim)
    data = (bad / entry["file"]).read_bytes()
    start = 8 + int.from_bytes(data[:8], "little")
    begin, end = (start + offset for offset in entry["data_offsets"])
    entry["digest"] = blake3.blake3(data[begin:end]).hexdigest()
    for f in doc["files"]:
        f["digest"] = blake3.blake3((bad / f["path"]).read_bytes()).hexdigest()
    (bad / "manifest.json").write_text(json.dumps(doc))
    from convert.api import verify_path

    assert verify_path(bad).ok
    report = verify_path(bad, c.src)
    assert report.problems and all(repr(victim) in p for p in report.problems), report.problems


# ---------------------------------------------------------------------------------------------
# Fail closed, refusals
# ---------------------------------------------------------------------------------------------


def test_neuro_divergent_fails_closed_listing_every_unmapped_name(
    models: dict[str, tuple[nn.Module, Path]], tmp_path: Path
) -> None:
    """Conv2d, BatchNorm, Embedding, LayerNorm and attention have no neuro-divergent form: exit 7,
    every one of their tensors named, nothing written."""
    model, src = models["net"]
    out = tmp_path / "out"
    unmapped = [k for k in model.state_dict() if k.split(".")[0] in ("emb", "conv", "bn", "ln", "attn")]
    assert len(unmapped) == 14
    line = assert_cli_error(
        run_cli(
            "pth-to-safetensors",
            src,
            out,
            "--layout",
            "neuro-divergent",
            "--layout-option",
            "accept_gru_reset_before_weights=true",
        ),
        7,
        *unmapped,
    )
    assert f"{len(unmapped)} tensor" in line
    assert not any(k in line for k in model.state_dict() if k.startswith(("mlp.", "lstm.", "gru.")))
    assert_no_output(out)


@pytest.mark.parametrize("gru, words", [(dict(num_layers=2), "layer"), (dict(bidirectional=True), "bidirectional")])
def test_candle_refuses_gru_it_cannot_build(tmp_path: Path, gru: dict[str, Any], words: str) -> None:
    """candle's GRU is one unidirectional layer: anything else is refused (exit 7), naming the module."""
    torch.manual_seed(5)
    model = nn.Module()
    model.head = nn.Linear(4, 2)
    model.encoder_gru = nn.GRU(3, 4, **gru)
    out = tmp_path / "out"
    line = assert_cli_error(
        run_cli("pth-to-safetensors", saved(tmp_path, model), out, "--layout", "candle"), 7, "encoder_gru", "candle"
    )
    assert words in line
    assert_no_output(out)


@pytest.mark.parametrize("layout", ["burn", "burn-native"])
def test_burn_refuses_projected_lstm(tmp_path: Path, layout: str) -> None:
    """burn's LSTM has no output projection: an LSTM with proj_size is refused (exit 7) instead of
    being half-split with weight_hr passed through."""
    torch.manual_seed(8)
    model = nn.Module()
    model.proj_lstm = nn.LSTM(3, 4, proj_size=2)
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", saved(tmp_path, model), out, "--layout", layout), 7, "proj_lstm", "proj_size")
    assert_no_output(out)


# ---------------------------------------------------------------------------------------------
# User rule files, layout options
# ---------------------------------------------------------------------------------------------

USER_RULES = """\
name = "my-rules"
description = "test rules"
extends = "{base}"

[[rules]]
match = "{{p...}}.emb.weight"
to = "{{p}}.token_embedding.weight"

[[rules]]
match = "{{p...}}.mlp.{{i:int}}.weight"
module = "Linear"
transforms = [{{ op = "transpose" }}]
"""


@pytest.mark.parametrize("base", ["burn", "pytorch"])
def test_user_rule_file_extends_builtin(tmp_path: Path, base: str) -> None:
    """A rule file extending a built-in layout renames one tensor and transposes others; every
    other tensor is exactly what the base layout writes; verify --source passes."""
    model = nn.Module()
    model.body = build(Net, 6)
    src = saved(tmp_path, model)
    rules = tmp_path / "my_rules.toml"
    rules.write_text(USER_RULES.format(base=base))
    mine, ref = tmp_path / "mine", tmp_path / "ref"
    rc, _, err = run_cli("pth-to-safetensors", src, mine, "--layout-file", rules)
    assert rc == 0, err
    from convert.api import pth_to_safetensors

    pth_to_safetensors(src, ref, layout=base)
    doc, base_doc = read_manifest(mine), read_manifest(ref)
    assert doc["target"]["layout"] == "my-rules"
    ours = {t["name"]: t for t in doc["tensors"]}
    theirs = {t["name"]: t for t in base_doc["tensors"]}

    assert "body.emb.weight" not in ours
    assert ours["body.token_embedding.weight"]["digest"] == theirs["body.emb.weight"]["digest"]
    assert ours["body.token_embedding.weight"]["sources"][0]["name"] == "body.emb.weight"
    second = "body.mlp.1.weight" if base == "burn" else "body.mlp.2.weight"
    arrays, sd = load_numpy(mine), state(model)
    for name, src_name in (("body.mlp.0.weight", "body.mlp.0.weight"), (second, "body.mlp.2.weight")):
        assert ours[name]["transforms"] == [{"op": "transpose"}]
        assert ours[name]["shape"] == list(theirs[name]["shape"][::-1])
        np.testing.assert_array_equal(arrays[name], sd[src_name].T)
    changed = {"body.emb.weight", "body.token_embedding.weight", "body.mlp.0.weight", second}
    strip = ("file", "data_offsets")
    assert {n: {k: v for k, v in t.items() if k not in strip} for n, t in ours.items() if n not in changed} == {
        n: {k: v for k, v in t.items() if k not in strip} for n, t in theirs.items() if n not in changed
    }
    assert doc["dropped"] == base_doc["dropped"]
    assert verified(mine, src)


@pytest.mark.parametrize(
    "text, needles",
    [
        (
            'name = "bad"\nextends = "burn"\n[[rules]]\nmatch = "{p...}.weight"\ntransforms = [{ op = "flip" }]\n',
            ["rules/0/transforms/0/op", "'flip'"],
        ),
        ('name = "bad"\nrenumber = true\n', ["renumber"]),
        ('name = "bad"\n[[rules]]\nto = "x"\n', ["rules/0"]),
        ('name = "Bad Name"\n', ["'Bad Name'"]),
        ('name = "bad"\nextends = "no-such-layout"\n', ["no-such-layout"]),
        ('name = "bad\n', ["not valid TOML"]),
    ],
    ids=["unknown-op", "unknown-key", "rule-without-pattern", "bad-name", "extends-unknown", "not-toml"],
)
def test_invalid_rule_file_is_a_usage_error(tmp_path: Path, text: str, needles: list[str]) -> None:
    """A rule file the schema rejects (or that extends nothing known) is a UsageError (exit 2)
    naming the file and the problem; nothing is written."""
    from convert.api import pth_to_safetensors
    from convert.errors import UsageError

    rules = tmp_path / "my_rules.toml"
    rules.write_text(text)
    src, out = saved(tmp_path, nn.Sequential(nn.Linear(2, 2))), tmp_path / "out"
    with pytest.raises(UsageError) as info:
        pth_to_safetensors(src, out, layout_file=str(rules))
    assert info.value.exit_code == 2
    for needle in needles if "extends" in text else [str(rules), *needles]:
        assert needle in str(info.value), str(info.value)
    assert_no_output(out)


def test_invalid_rule_file_cli_exit_code(tmp_path: Path) -> None:
    """The same through the CLI: exit 2, one line naming the rule file and the bad op."""
    rules = tmp_path / "my_rules.toml"
    rules.write_text('name = "bad"\nextends = "burn"\n[[rules]]\nmatch = "{p...}.weight"\ntransforms = [{ op = "flip" }]\n')
    src, out = saved(tmp_path, nn.Sequential(nn.Linear(2, 2))), tmp_path / "out"
    assert_cli_error(
        run_cli("pth-to-safetensors", src, out, "--layout-file", rules), 2, str(rules), "rules/0/transforms/0/op", "'flip'"
    )
    assert_no_output(out)


def test_layout_option_drops_num_batches_tracked(converted: Callable[[str, str], Converted], tmp_path: Path) -> None:
    """pytorch keeps BatchNorm's step counter unless drop_num_batches_tracked=true; then it is listed
    in the manifest's `dropped`. An option the layout does not have is a usage error."""
    c = converted("net", "pytorch")
    out = tmp_path / "out"
    rc, _, err = run_cli(
        "pth-to-safetensors", c.src, out, "--layout", "pytorch", "--layout-option", "drop_num_batches_tracked=true"
    )
    assert rc == 0, err
    doc = read_manifest(out)
    assert doc["dropped"] == ["bn.num_batches_tracked"]
    assert doc["target"]["options"]["drop_num_batches_tracked"] is True
    expected = {k: v for k, v in expected_tensors(c.model, "pytorch").items() if k != "bn.num_batches_tracked"}
    assert actual_tensors(out, doc) == expected
    assert "bn.num_batches_tracked" in actual_tensors(c.out, c.manifest)
    assert verified(out, c.src)
    other = tmp_path / "other"
    assert_cli_error(run_cli("pth-to-safetensors", c.src, other, "--layout-option", "no_such_option=1"), 2, "no_such_option")
    assert_no_output(other)


# ---------------------------------------------------------------------------------------------
# dtypes: trustformers
# ---------------------------------------------------------------------------------------------


def test_trustformers_dtype_bf16_becomes_f32_with_the_cast_chain(
    converted: Callable[[str, str], Converted], tmp_path: Path
) -> None:
    """TrustformeRS reads no BF16: `--dtype bf16` gives F32 tensors holding the bf16-rounded values,
    with both casts recorded (the first lossy), and the output still verifies against its source."""
    c = converted("net", "trustformers")
    out = tmp_path / "out"
    rc, _, err = run_cli("pth-to-safetensors", c.src, out, "--layout", "trustformers", "--dtype", "bf16")
    assert rc == 0, err
    doc = read_manifest(out)
    arrays = load_numpy(out)
    sd = c.model.state_dict()
    assert {t["dtype"] for t in doc["tensors"]} == {"F32"}
    for t in doc["tensors"]:
        assert t["transforms"] == [
            {"op": "cast", "to": "BF16", "lossless": False, "on_loss": "refuse", "overflowed": 0, "flushed": 0},
            {"op": "cast", "to": "F32", "lossless": True},
        ], t["name"]
        assert t["lossy"] is True and t["invertible"] is False
        want = sd[t["name"]].to(torch.bfloat16).to(torch.float32).numpy()
        assert arrays[t["name"]].tobytes() == want.tobytes(), t["name"]
    assert any(not np.array_equal(arrays[k], v.numpy()) for k, v in sd.items() if k in arrays)
    assert verified(out, c.src)


def test_trustformers_bf16_source_widened_losslessly(tmp_path: Path) -> None:
    """A BF16 checkpoint is widened to F32 exactly; the lossless cast is recorded."""
    torch.manual_seed(7)
    model = nn.Module()
    model.fc = nn.Linear(4, 3)
    model.to(torch.bfloat16)
    src, out = saved(tmp_path, model), tmp_path / "out"
    rc, _, err = run_cli("pth-to-safetensors", src, out, "--layout", "trustformers")
    assert rc == 0, err
    doc = read_manifest(out)
    arrays = load_numpy(out)
    for t in doc["tensors"]:
        assert t["dtype"] == "F32" and t["transforms"] == [{"op": "cast", "to": "F32", "lossless": True}]
        assert t["lossy"] is False and t["invertible"] is True
        np.testing.assert_array_equal(arrays[t["name"]], model.state_dict()[t["name"]].float().numpy())
    assert verified(out, src)


def test_trustformers_sharded_output_writes_both_indexes(converted: Callable[[str, str], Converted], tmp_path: Path) -> None:
    """Sharded TrustformeRS output also carries pytorch_model.bin.index.json, the same weight map."""
    c = converted("net", "trustformers")
    out = tmp_path / "out"
    rc, _, err = run_cli("pth-to-safetensors", c.src, out, "--layout", "trustformers", "--max-shard-size", "1KB")
    assert rc == 0, err
    doc = read_manifest(out)
    assert len(doc["files"]) > 1
    hf = json.loads((out / "model.safetensors.index.json").read_text())
    extra = json.loads((out / "pytorch_model.bin.index.json").read_text())
    assert extra == hf
    # trustformers-core's HuggingFaceMetadata needs `format` (no serde default)
    assert hf["metadata"] == {
        "total_size": sum(t["data_offsets"][1] - t["data_offsets"][0] for t in doc["tensors"]),
        "format": "pt",
    }
    assert hf["weight_map"] == {t["name"]: t["file"] for t in doc["tensors"]}
    assert set(hf["weight_map"]) == set(expected_tensors(c.model, "trustformers"))
    assert verified(out, c.src)


# ---------------------------------------------------------------------------------------------
# `convert layouts`, rule files against the schema
# ---------------------------------------------------------------------------------------------


def test_layouts_lists_every_builtin() -> None:
    rc, out, err = run_cli("layouts")
    assert rc == 0, err
    listed = {line.split(":")[0].split(" (")[0] for line in out.splitlines() if line.strip()}
    assert listed == set(BUILTIN_LAYOUTS)
    rc, out, err = run_cli("layouts", "--json")
    assert rc == 0, err
    rows = json.loads(out)
    assert {r["name"] for r in rows} == set(BUILTIN_LAYOUTS)
    assert all(r["description"] for r in rows)


@pytest.mark.parametrize("name", ["burn", "neuro-divergent", "tch"])
def test_layouts_shows_rules(name: str) -> None:
    rc, out, err = run_cli("layouts", name)
    assert rc == 0, err
    file_name = CANONICAL.get(name, name)
    assert tomllib.loads(out) == tomllib.loads((REPO / "convert" / "layouts" / f"{file_name}.toml").read_text())


def test_layouts_unknown_name_is_a_usage_error() -> None:
    assert_cli_error(run_cli("layouts", "no-such-layout"), 2, "no-such-layout", "burn")


def test_every_builtin_layout_file_validates_against_the_schema() -> None:
    import jsonschema

    schema = json.loads((REPO / "schemas" / "layout.schema.json").read_text())
    jsonschema.Draft202012Validator.check_schema(schema)
    validator = jsonschema.Draft202012Validator(schema)
    files = sorted((REPO / "convert" / "layouts").glob("*.toml"))
    names = set()
    for path in files:
        doc = tomllib.loads(path.read_text())
        errors = [f"{'/'.join(map(str, e.path))}: {e.message}" for e in validator.iter_errors(doc)]
        assert not errors, f"{path.name}: {errors}"
        assert path.stem == doc["name"]
        names.update([doc["name"], *doc.get("aliases", [])])
    assert names == set(BUILTIN_LAYOUTS)
    bad = tomllib.loads((REPO / "convert" / "layouts" / "burn.toml").read_text())
    bad["rules"][0]["transforms"] = [{"op": "flip"}]
    assert list(validator.iter_errors(bad)), "the schema must reject an unknown transform op"
