"""The Rust crate (rust/rmc-load) over outputs the Python tool writes in this run.

`rmc verify` must agree with `convert verify` on good and tampered outputs (same exit code, same
tensors named); typed access must give torch's values; the reference forward passes over the
`pytorch`, `burn` and `burn-native` layouts must reproduce torch's outputs within 1e-5.
"""

from __future__ import annotations

import json
import re
import shutil
import struct
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, convert_ok, flip_tensor_byte, run_cli, seeded
from tests.support.rust import SCHEMA, project, run, rust_tools, schema_skeleton

torch = pytest.importorskip("torch")
nn = torch.nn

ATOL = 1e-5


def convert(src: Path, out: Path, *options: str) -> Path:
    convert_ok("pth-to-safetensors", src, out, *options)
    return out


class Tied(nn.Module):
    """Every kind of module the crate looks up, with a tied head (an alias in the manifest)."""

    def __init__(self) -> None:
        super().__init__()
        self.emb = nn.Embedding(11, 6)
        self.lstm = nn.LSTM(6, 5, num_layers=2, batch_first=True)
        self.gru = nn.GRU(5, 4, batch_first=True)
        self.conv = nn.Conv1d(4, 3, 3)
        self.bn = nn.BatchNorm1d(3)
        self.fc = nn.Linear(3, 2)
        self.head = nn.Linear(6, 11, bias=False)
        self.head.weight = self.emb.weight


@pytest.fixture(scope="module")
def outputs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One checkpoint converted every way the crate must read: single file, shards, layouts, casts."""
    root = tmp_path_factory.mktemp("rust-outputs")
    torch.manual_seed(0)
    src = root / "model.pt"
    torch.save(Tied().state_dict(), src)
    ways = {
        "pytorch": (),
        "sharded": ("--max-shard-size", "1KB"),
        "burn": ("--layout", "burn"),
        # a bare state dict: burn-native transposes Linears, so the embedding and the tied head are decided
        "burn-native": (
            "--layout",
            "burn-native",
            "--max-shard-size",
            "2KB",
            "--layout-option",
            "module_types=emb=Embedding,head=Linear",
        ),
        "f16": ("--dtype", "f16"),
        "bf16": ("--dtype", "bf16", "--max-shard-size", "1KB"),
    }
    return {name: convert(src, root / name, *opts) for name, opts in ways.items()}


def python_verify(out: Path) -> tuple[int, dict[str, Any]]:
    rc, stdout, _stderr = run_cli("verify", out, "--json")
    return rc, (json.loads(stdout) if stdout.strip() else {})


def rust_verify(out: Path) -> tuple[int, dict[str, Any], str]:
    rc, stdout, stderr = run(rust_tools().rmc, "verify", out, "--json")
    return rc, (json.loads(stdout) if stdout.strip() else {}), stderr


def named_tensors(problems: list[str]) -> set[str]:
    """The tensors a report's problems name (Python quotes with ', Rust with ")."""
    return {m.group(1) for p in problems for m in [re.match(r"tensor ['\"]([^'\"]+)['\"]", p)] if m}


@pytest.mark.parametrize("way", ["pytorch", "sharded", "burn", "burn-native", "f16", "bf16"])
def test_verify_agrees_on_good_outputs(outputs: dict[str, Path], way: str) -> None:
    py_rc, py = python_verify(outputs[way])
    rs_rc, rs, stderr = rust_verify(outputs[way])
    assert (py_rc, rs_rc) == (0, 0), (py, rs, stderr)
    assert (rs["files"], rs["tensors"]) == (py["files"], py["tensors"])
    rc, stdout, _ = run(rust_tools().rmc, "verify", outputs[way])
    assert rc == 0 and stdout.startswith("ok: "), stdout


def _edit_manifest(out: Path, edit: Any) -> None:
    doc = json.loads((out / "manifest.json").read_text())
    edit(doc)
    (out / "manifest.json").write_text(json.dumps(doc))


def _tensor(doc: dict[str, Any], name: str) -> dict[str, Any]:
    return next(t for t in doc["tensors"] if t["name"] == name)


def _zero_digest(entry: dict[str, Any]) -> None:
    """Replace the recorded digest, whichever name the manifest version gives it."""
    entry["digest" if "digest" in entry else "sha256"] = "0" * 64


def _swap_header_dtype(out: Path) -> None:
    """Rewrite model.safetensors' header claiming I32 for an F32 tensor (same size, same offsets)."""
    path = out / "model.safetensors"
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    header = raw[8 : 8 + n].replace(b'"fc.bias":{"dtype":"F32"', b'"fc.bias":{"dtype":"I32"', 1)
    assert header != raw[8 : 8 + n]
    path.write_bytes(raw[:8] + header + raw[8 + n :])


TAMPERS: dict[str, tuple[str, Any, int, set[str]]] = {
    # name: (output, tamper, exit code both give, tensors both must name)
    "tensor byte": ("pytorch", lambda o: flip_tensor_byte(o, "lstm.weight_hh_l1"), 8, {"lstm.weight_hh_l1"}),
    "shard tensor byte": ("sharded", lambda o: flip_tensor_byte(o, "gru.bias_hh_l0"), 8, {"gru.bias_hh_l0"}),
    "burn gate byte": (
        "burn-native",
        lambda o: flip_tensor_byte(o, "lstm.1.cell_gate.hidden_transform.weight"),
        8,
        {"lstm.1.cell_gate.hidden_transform.weight"},
    ),
    "tensor digest": ("pytorch", lambda o: _edit_manifest(o, lambda d: _zero_digest(_tensor(d, "fc.bias"))), 8, {"fc.bias"}),
    "tensor shape": (
        "pytorch",
        lambda o: _edit_manifest(o, lambda d: _tensor(d, "conv.bias").update(shape=[1, 3])),
        8,
        {"conv.bias"},
    ),
    "header dtype": ("pytorch", _swap_header_dtype, 8, {"fc.bias"}),
    "truncated file": (
        "pytorch",
        lambda o: (o / "model.safetensors").write_bytes((o / "model.safetensors").read_bytes()[:-4]),
        8,
        set(),
    ),
    "missing shard": (
        "sharded",
        lambda o: (o / json.loads((o / "manifest.json").read_text())["files"][1]["path"]).unlink(),
        8,
        set(),
    ),
    "index weight_map": (
        "sharded",
        lambda o: (o / "model.safetensors.index.json").write_text(json.dumps({"metadata": {"total_size": 1}, "weight_map": {}})),
        8,
        set(),
    ),
    "alias removed": ("pytorch", lambda o: _edit_manifest(o, lambda d: d.update(aliases={})), 8, set()),
    "version": ("pytorch", lambda o: _edit_manifest(o, lambda d: d.update(manifest_version="9.9")), 8, set()),
    "manifest not json": ("pytorch", lambda o: (o / "manifest.json").write_text("{not json"), 6, set()),
    "no manifest": ("pytorch", lambda o: (o / "manifest.json").unlink(), 3, set()),
}


@pytest.mark.parametrize("case", sorted(TAMPERS))
def test_verify_agrees_on_tampered_outputs(outputs: dict[str, Path], tmp_path: Path, case: str) -> None:
    way, tamper, code, tensors = TAMPERS[case]
    out = tmp_path / way
    shutil.copytree(outputs[way], out)
    tamper(out)
    py_rc, py = python_verify(out)
    rs_rc, rs, stderr = rust_verify(out)
    assert (py_rc, rs_rc) == (code, code), (py, rs, stderr)
    assert stderr.startswith("rmc: error: ") and len(stderr.splitlines()) == 1, stderr
    if code == 8 and py and "problems" in py:  # a report (not the --json error object of a refused manifest)
        assert rs["ok"] is False and rs["problems"], rs
        assert named_tensors(rs["problems"]) == named_tensors(py["problems"]) == tensors, (py, rs)


def tensor_json(out: Path, name: str) -> dict[str, Any]:
    rc, stdout, stderr = run(rust_tools().tensor, out, name)
    assert rc == 0, stderr
    return json.loads(stdout)


def f32_bits(t: Any) -> list[int]:
    return t.to(torch.float32).reshape(-1).view(torch.int32).numpy().astype("uint32").tolist()


def test_typed_access_matches_torch(tmp_path: Path) -> None:
    """Bytes straight from the file; Vec<f32> from every float and integer dtype as torch's .float()."""
    g = seeded(3)
    base = torch.randn(5, 7, generator=g, dtype=torch.float64) * 300
    base.view(-1)[:4] = torch.tensor([float("inf"), float("-inf"), float("nan"), 1e-30], dtype=torch.float64)
    state = {f"f.{dt}".replace("torch.", ""): base.to(dt) for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16)}
    for dt in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        info = torch.iinfo(dt)
        vals = torch.randint(info.min, info.max, (3, 4), generator=g, dtype=dt)
        vals.view(-1)[0], vals.view(-1)[1] = info.min, info.max
        state[f"i.{dt}".replace("torch.", "")] = vals
    state["flags"] = torch.rand(6, generator=g) > 0.5
    state["scalar"] = torch.tensor(2.5)
    state["empty"] = torch.zeros(0, 3)
    torch.save(state, tmp_path / "dtypes.pt")
    out = convert(tmp_path / "dtypes.pt", tmp_path / "out")
    for name, t in state.items():
        got = tensor_json(out, name)
        assert got["shape"] == list(t.shape), name
        assert bytes.fromhex(got["hex"]) == t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), name
        want = f32_bits(t)
        nan = [v != v for v in t.to(torch.float32).reshape(-1).tolist()]
        assert len(got["f32_bits"]) == len(want), name
        for i, (a, b) in enumerate(zip(got["f32_bits"], want, strict=True)):
            assert a == b or (nan[i] and (a & 0x7F800000) == 0x7F800000 and a & 0x7FFFFF), (name, i, hex(a), hex(b))


def test_aliases_and_modules(outputs: dict[str, Path]) -> None:
    """An alias gives its stored tensor; a module lists the target tensors made from its tensors."""
    head = tensor_json(outputs["pytorch"], "head.weight")
    assert head["stored"] == "emb.weight" and head["name"] == "head.weight"
    assert head["hex"] == tensor_json(outputs["pytorch"], "emb.weight")["hex"]
    rc, stdout, stderr = run(rust_tools().rmc, "inspect", outputs["burn-native"], "--json")
    assert rc == 0, stderr
    modules = {m["path"]: m for m in json.loads(stdout)["modules"]}
    lstm = modules["lstm"]
    assert lstm["type"] == "LSTM" and lstm["params"]["num_layers"] == 2 and lstm["params"]["hidden_size"] == 5
    assert len(lstm["tensors"]) == 2 * 4 * 4  # layers x gates x (input/hidden weight and bias)
    assert "lstm.1.output_gate.hidden_transform.bias" in lstm["tensors"]
    assert modules["bn"]["tensors"] == ["bn.gamma", "bn.beta", "bn.running_mean", "bn.running_var"]
    rc, stdout, _ = run(rust_tools().rmc, "inspect", outputs["pytorch"], "--json")
    assert {m["path"]: m for m in json.loads(stdout)["modules"]}["head"]["tensors"] == ["head.weight"]


# ---------------------------------------------------------------------------------------------
# Reference forward passes
# ---------------------------------------------------------------------------------------------


class ConvBN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(4, 6, 3)
        self.bn = nn.BatchNorm1d(6)

    def forward(self, x: Any) -> Any:
        return self.bn(self.conv(x))


def _model(kind: str) -> tuple[nn.Module, Any, list[str], Any]:
    """(module, input, forward arguments, torch's output) with trained-looking statistics."""
    g = seeded(11)
    torch.manual_seed(11)
    if kind == "mlp":
        m = nn.Sequential(nn.Linear(7, 16), nn.ReLU(), nn.Linear(16, 9), nn.Tanh(), nn.Linear(9, 3))
        x = torch.randn(5, 7, generator=g)
        return m, x, ["mlp", "relu,tanh"], m(x)
    if kind == "embedding":
        m = nn.ModuleDict({"emb": nn.Embedding(13, 5)})
        x = torch.randint(0, 13, (3, 4), generator=g)
        return m, x, ["embedding", "emb"], m["emb"](x)
    if kind == "lstm":
        m = nn.ModuleDict({"rnn": nn.LSTM(5, 6, num_layers=3, batch_first=True)})
        x = torch.randn(2, 7, 5, generator=g)
        return m, x, ["lstm", "rnn"], m["rnn"](x)[0]
    if kind == "gru":
        m = nn.ModuleDict({"rnn": nn.GRU(4, 5, batch_first=True)})
        x = torch.randn(3, 6, 4, generator=g)
        return m, x, ["gru", "rnn"], m["rnn"](x)[0]
    m = ConvBN()
    m.train()
    for _ in range(3):  # running statistics away from 0 and 1
        m(torch.randn(8, 4, 10, generator=g) * 2 + 1)
    with torch.no_grad():
        m.bn.weight.uniform_(0.5, 1.5, generator=g)
        m.bn.bias.uniform_(-0.5, 0.5, generator=g)
    m.eval()
    x = torch.randn(2, 4, 9, generator=g)
    return m, x, ["conv-bn", "conv", "bn"], m(x)


@pytest.mark.parametrize("layout", ["pytorch", "burn", "burn-native"])
@pytest.mark.parametrize("kind", ["mlp", "embedding", "lstm", "gru", "conv-bn"])
def test_forward_matches_torch(tmp_path: Path, kind: str, layout: str) -> None:
    module, x, args, want = _model(kind)
    torch.save(module.state_dict(), tmp_path / "m.pt")
    decided = ("--layout-option", "module_types=emb=Embedding") if kind == "embedding" else ()
    out = convert(tmp_path / "m.pt", tmp_path / "out", "--layout", layout, *decided)
    (tmp_path / "x.json").write_text(json.dumps({"shape": list(x.shape), "data": x.reshape(-1).tolist()}))
    rc, _stdout, stderr = run(rust_tools().forward, out, tmp_path / "x.json", tmp_path / "y.json", *args)
    assert rc == 0, stderr
    got = json.loads((tmp_path / "y.json").read_text())
    assert got["shape"] == list(want.shape)
    diff = (torch.tensor(got["data"], dtype=torch.float32).reshape(want.shape) - want.detach()).abs().max().item()
    assert diff <= ATOL, f"{kind} over {layout}: max abs difference {diff}"


def test_forward_refuses_a_wrong_module(outputs: dict[str, Path], tmp_path: Path) -> None:
    (tmp_path / "x.json").write_text(json.dumps({"shape": [1, 2, 6], "data": [0.0] * 12}))
    rc, _stdout, stderr = run(rust_tools().forward, outputs["pytorch"], tmp_path / "x.json", tmp_path / "y.json", "gru", "lstm")
    assert rc == 8 and "is a LSTM, not a GRU" in stderr, stderr
    assert not (tmp_path / "y.json").exists()


@pytest.fixture(scope="module")
def graph_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A `to-onnx` output: its manifest's files are the graph, proven by size and digest."""
    pytest.importorskip("onnx")
    root = tmp_path_factory.mktemp("rust-graph")
    torch.manual_seed(5)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2)).eval()
    program = torch.export.export(model, (torch.randn(3, 6),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(program, root / "mlp.pt2")
    rc, _stdout, stderr = run_cli("to-onnx", root / "mlp.pt2", root / "out", cwd=root, timeout=600)
    assert rc == 0, stderr
    return root / "out"


def test_verify_agrees_on_a_graph_output(graph_output: Path, tmp_path: Path) -> None:
    assert (python_verify(graph_output)[0], rust_verify(graph_output)[0]) == (0, 0)
    out = tmp_path / "graph"
    shutil.copytree(graph_output, out)
    onnx_file = out / "model.onnx"
    data = bytearray(onnx_file.read_bytes())
    data[len(data) // 2] ^= 0x01
    onnx_file.write_bytes(bytes(data))
    (py_rc, py), (rs_rc, rs, _) = python_verify(out), rust_verify(out)
    assert (py_rc, rs_rc) == (8, 8), (py, rs)
    assert any(p.startswith("model.onnx: ") for p in rs["problems"]), rs


def test_a_graph_manifest_round_trips(graph_output: Path, tmp_path: Path) -> None:
    """Every field the schema declares comes back (to-onnx also writes fields the schema leaves
    open, such as graph.ir_version: the crate tolerates and drops them)."""
    rc, _stdout, stderr = run(rust_tools().schema, "roundtrip", graph_output / "manifest.json", tmp_path / "back.json")
    assert rc == 0, stderr
    skeleton = schema_skeleton(SCHEMA)
    back = json.loads((tmp_path / "back.json").read_text())
    assert project(back, skeleton) == project(json.loads((graph_output / "manifest.json").read_text()), skeleton)


def test_readme_example_is_the_quickstart_and_runs(outputs: dict[str, Path]) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```rust\n(.*?)```", readme, re.S)
    assert (REPO / "rust" / "rmc-load" / "examples" / "quickstart.rs").read_text(encoding="utf-8") in blocks, (
        "README's Rust examples do not include examples/quickstart.rs as it is"
    )
    for way in ("pytorch", "burn-native"):
        rc, stdout, stderr = run(rust_tools().quickstart, outputs[way])
        assert rc == 0, stderr
        assert "LSTM lstm (hidden 5)" in stdout and "head.weight: F32" in stdout
