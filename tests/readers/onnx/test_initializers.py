"""`convert onnx-to-safetensors`: initializers (external data too) into SafeTensors, exporter-made
names traced back to parameter names, and a round trip torch -> ONNX -> SafeTensors -> torch."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="exports torch models")
onnx = pytest.importorskip("onnx", reason="needs the onnx extra")
pytest.importorskip("onnxruntime", reason="needs the onnx extra")

from tests.support import assert_cli_error, assert_no_output, converted_manifest, load_output, read_manifest, run_cli  # noqa: E402
from tests.support.onnx_models import write_models  # noqa: E402


class Encoder(torch.nn.Module):
    """Nested Linear layers over [batch, seq, features], one without a bias."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Linear(6, 6, bias=False), torch.nn.Linear(6, 6)])
        self.head = torch.nn.Sequential(torch.nn.Linear(6, 4), torch.nn.ReLU())

    def forward(self, x: Any) -> Any:
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.head(x)


def torchscript_export(model: Any, path: Path) -> Path:
    torch.onnx.export(model, (torch.randn(2, 3, 6),), str(path), input_names=["x"], dynamo=False)
    return path


convert = functools.partial(converted_manifest, "onnx-to-safetensors")


@pytest.mark.parametrize("exporter", ["dynamo", "torchscript"])
def test_round_trip_through_to_onnx(tmp_path: Path, exporter: str) -> None:
    """torch -> to-onnx -> onnx-to-safetensors -> load_state_dict(strict=True): the same outputs."""
    models = write_models(tmp_path)
    model = models.encoder().eval()
    with torch.no_grad():
        model.head[0].weight.uniform_(0.5, 1.5)  # not the ones and zeros a fresh LayerNorm has
        model.head[0].bias.uniform_(-1, 1)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    rc, _, stderr = run_cli(
        "to-onnx",
        tmp_path / "weights.pt",
        tmp_path / "graph",
        "--module",
        "onnx_models:encoder",
        "--input-shape",
        "tokens=2x7x5",
        "--dynamic-axis",
        "tokens:1=seq",
        "--exporter",
        exporter,
        cwd=tmp_path,
        timeout=600,
    )
    assert rc == 0, stderr
    doc = convert(tmp_path / "graph" / "model.onnx", tmp_path / "weights")
    names = set(model.state_dict())
    stored = load_output(tmp_path / "weights")
    assert names <= set(stored), sorted(names - set(stored))
    restored = models.encoder()
    restored.load_state_dict({k: v for k, v in stored.items() if k in names}, strict=True)
    tokens = torch.randn(4, 9, 5)
    with torch.no_grad():
        assert torch.equal(restored.eval()(tokens), model(tokens))
    assert doc["source"]["format"] == "onnx"
    assert doc["architecture"]["source_model"]["inputs"][0]["name"] == "tokens"


def test_torchscript_names_are_traced_back_and_transposed(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = Encoder().eval()
    doc = convert(torchscript_export(model, tmp_path / "enc.onnx"), tmp_path / "out")
    stored = load_output(tmp_path / "out")
    expected = model.state_dict()
    for name, tensor in expected.items():
        assert torch.equal(stored[name], tensor), name
    renamed = doc["source"]["details"]["renamed"]
    assert {r["name"] for r in renamed.values()} == {"blocks.0.weight", "blocks.1.weight", "head.0.weight"}
    assert all(old.startswith("onnx::MatMul_") and r["transform"] == "transpose" for old, r in renamed.items())
    source_model = doc["architecture"]["source_model"]
    assert source_model["operators"] == {"Add": 2, "MatMul": 3, "Relu": 1, "Tanh": 2}
    assert source_model["producer"]["name"] == "pytorch"
    linears = {m["path"]: m["params"] for m in doc["architecture"]["modules"]}
    assert linears["blocks.0"] == {"in_features": 6, "out_features": 6, "bias": False}


def test_dynamo_names_after_simplification_use_the_bias(tmp_path: Path) -> None:
    import onnxsim

    torch.manual_seed(1)
    model = Encoder().eval()
    program = torch.onnx.export(model, (torch.randn(2, 3, 6),), dynamo=True, verbose=False)
    simplified, ok = onnxsim.simplify(program.model_proto)
    assert ok
    onnx.save(simplified, tmp_path / "enc.onnx")
    doc = convert(tmp_path / "enc.onnx", tmp_path / "out")
    stored = load_output(tmp_path / "out")
    for name in ("blocks.1.weight", "head.0.weight"):  # blocks.0 has no bias: after onnxsim nothing names it
        assert torch.equal(stored[name], model.state_dict()[name]), name
    evidence = {r["name"]: r["evidence"] for r in doc["source"]["details"]["renamed"].values()}
    assert evidence == {"blocks.1.weight": "bias name", "head.0.weight": "bias name"}


def test_auto_detects_onnx(tmp_path: Path) -> None:
    torch.manual_seed(2)
    src = torchscript_export(Encoder().eval(), tmp_path / "enc.onnx")
    rc, _, stderr = run_cli("auto", src, tmp_path / "out")
    assert rc == 0, stderr
    assert read_manifest(tmp_path / "out")["source"]["format"] == "onnx"


def external_model(tmp_path: Path, location: str, offset: int = 0, length: int | None = None) -> Path:
    """A one-initializer model whose weights point at `location` (written if inside the folder)."""
    from onnx import TensorProto, helper

    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3], data_location=TensorProto.EXTERNAL)
    entries = {"location": location, "offset": str(offset), "length": str(48 if length is None else length)}
    for key, value in entries.items():
        weight.external_data.add(key=key, value=value)
    node = helper.make_node("MatMul", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [weight],
    )
    path = tmp_path / "model" / "model.onnx"
    path.parent.mkdir(exist_ok=True)
    path.write_bytes(helper.make_model(graph).SerializeToString())
    return path


def test_external_data_is_read_lazily(tmp_path: Path) -> None:
    values = np.arange(12, dtype=np.float32).reshape(4, 3)
    src = external_model(tmp_path, "weights.bin", offset=16)
    (src.parent / "weights.bin").write_bytes(b"\0" * 16 + values.tobytes())
    doc = convert(src, tmp_path / "out")
    assert np.array_equal(load_output(tmp_path / "out")["w"].numpy(), values)
    assert [Path(f["path"]).name for f in doc["source"]["files"]] == ["model.onnx", "weights.bin"]


@pytest.mark.parametrize(
    "location, offset, length, code, needle",
    [
        ("../outside.bin", 0, None, 5, "outside the model's folder"),
        ("/etc/passwd", 0, None, 5, "outside the model's folder"),
        ("missing.bin", 0, None, 3, "missing"),
        ("weights.bin", 40, None, 6, "past the end"),
        ("weights.bin", 0, 44, 6, "needs 48"),
    ],
)
def test_hostile_external_data(tmp_path: Path, location: str, offset: int, length: int | None, code: int, needle: str) -> None:
    src = external_model(tmp_path, location, offset, length)
    (src.parent / "weights.bin").write_bytes(b"\0" * 48)
    (tmp_path / "outside.bin").write_bytes(b"\0" * 48)
    assert_cli_error(run_cli("onnx-to-safetensors", src, tmp_path / "out"), code, needle)
    assert_no_output(tmp_path / "out")


def test_symlink_out_of_the_folder_is_refused(tmp_path: Path) -> None:
    src = external_model(tmp_path, "weights.bin")
    (tmp_path / "outside.bin").write_bytes(b"\0" * 48)
    (src.parent / "weights.bin").symlink_to(tmp_path / "outside.bin")
    assert_cli_error(run_cli("onnx-to-safetensors", src, tmp_path / "out"), 5, "outside the model's folder")
    assert_no_output(tmp_path / "out")


def test_string_initializers_are_unsupported(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    labels = helper.make_tensor("labels", TensorProto.STRING, [2], vals=[b"a", b"b"])
    graph = helper.make_graph(
        [helper.make_node("Identity", ["labels"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.STRING, [2])],
        [labels],
    )
    (tmp_path / "m.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    assert_cli_error(run_cli("onnx-to-safetensors", tmp_path / "m.onnx", tmp_path / "out"), 4, "STRING")
    assert_no_output(tmp_path / "out")


def test_garbage_is_corrupt(tmp_path: Path) -> None:
    (tmp_path / "bad.onnx").write_bytes(b"\x08\x07" + bytes(range(256)) * 4)
    assert_cli_error(run_cli("onnx-to-safetensors", tmp_path / "bad.onnx", tmp_path / "out"), 6, "bad.onnx")
    assert_no_output(tmp_path / "out")


def test_inline_raw_data_of_the_wrong_size_is_corrupt(tmp_path: Path) -> None:
    from onnx import TensorProto, helper

    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3], raw_data=b"\0" * 40)
    graph = helper.make_graph(
        [helper.make_node("Identity", ["w"], ["y"])],
        "g",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 3])],
        [weight],
    )
    (tmp_path / "m.onnx").write_bytes(helper.make_model(graph).SerializeToString())
    assert_cli_error(run_cli("onnx-to-safetensors", tmp_path / "m.onnx", tmp_path / "out"), 6, "needs 48")
    assert_no_output(tmp_path / "out")


def test_a_subgraph_name_that_is_not_utf8_is_corrupt(tmp_path: Path) -> None:
    """A name inside an If branch that is not UTF-8 (protobuf hands it back as bytes) is exit 6, not a
    TypeError: the names checked up front are only the top graph's."""
    from onnx import TensorProto, helper, numpy_helper

    branch = helper.make_graph(
        [helper.make_node("Identity", ["ZZZZ"], ["y"])],
        "then",
        [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        initializer=[numpy_helper.from_array(np.ones(2, np.float32), "ZZZZ")],
    )
    node = helper.make_node("If", ["c"], ["out"], then_branch=branch, else_branch=branch)
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("c", TensorProto.BOOL, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, [2])],
    )
    data = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    src = tmp_path / "bad.onnx"
    src.write_bytes(data.replace(b"ZZZZ", b"\xff\xfeZZ"))
    assert_cli_error(run_cli("auto", src, tmp_path / "out"), 6, "not UTF-8")
    assert_no_output(tmp_path / "out")
