"""The Rust crate's GGUF side: every ggml type this tool writes dequantizes in Rust to exactly the
values the `gguf` package's dequantizer gives, on blocks of random bytes (every bit pattern a block
can hold, scales kept finite), read from a file our writer wrote; and a to-gguf output verifies and
reads in Rust as in Python (`rmc verify` names the same flipped byte)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from tests.support import run_cli
from convert.outputs.gguf.file_format import string, u32
from convert.outputs.gguf.stream import GGUFItem, write_gguf
from tests.support.rust import run, rust_tools

gguf = pytest.importorskip("gguf")

# ggml type -> byte offsets of its f16 scales within a block (kept finite: random bits would make
# NaN, whose payload the two sides may carry differently)
SCALES = {
    "F32": [],
    "F16": [],
    "BF16": [],
    "Q8_0": [0],
    "Q4_0": [0],
    "Q4_1": [0, 2],
    "Q5_0": [0],
    "Q5_1": [0, 2],
    "Q2_K": [80, 82],
    "Q3_K": [108],
    "Q4_K": [0, 2],
    "Q5_K": [0, 2],
    "Q6_K": [208],
}


def _blocks(name: str, rows: int, row: int, rng: np.random.Generator) -> bytes:
    qtype = gguf.GGMLQuantizationType[name]
    block, size = gguf.GGML_QUANT_SIZES[qtype]
    n = rows * row // block
    if name in ("F32", "F16", "BF16"):
        values = rng.standard_normal(rows * row).astype(np.float32) * 3
        if name == "BF16":  # the high half of each float32
            return (values.view(np.uint32) >> 16).astype(np.uint16).tobytes()
        return values.astype(np.float32 if name == "F32" else np.float16).tobytes()
    data = rng.integers(0, 256, size=(n, size), dtype=np.uint8)
    for at in SCALES[name]:
        data[:, at : at + 2] = (rng.standard_normal(n) * 0.01).astype(np.float16).view(np.uint8).reshape(n, 2)
    return data.tobytes()


def test_rust_dequantizes_as_the_gguf_package(tmp_path: Path) -> None:
    rng = np.random.default_rng(7)
    rows, row = 3, 512
    items, raw = [], {}
    for name in SCALES:
        data = _blocks(name, rows, row, rng)
        raw[name] = data
        type_id = int(gguf.GGMLQuantizationType[name])
        items.append(GGUFItem(name.lower(), (rows, row), type_id, len(data), lambda data=data: [data]))
    path = tmp_path / "all.gguf"
    write_gguf(path, {"general.architecture": string("test"), "general.alignment": u32(32)}, items, "blake3")
    rc, stdout, stderr = run(rust_tools().dequantize, path)
    assert rc == 0, stderr
    got = json.loads(stdout)
    for t in gguf.GGUFReader(path).tensors:
        want = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).reshape(-1).astype(np.float32)
        mine = np.array(got[t.name]["f32_bits"], dtype=np.uint32).view(np.float32)
        assert got[t.name]["shape"] == [rows, row]
        assert mine.view(np.uint32).tolist() == want.view(np.uint32).tolist(), t.tensor_type.name


@pytest.fixture(scope="module")
def gguf_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A to-gguf output of a torch checkpoint: Q4_K rows, their Q5_0 and F16 fallbacks, F32 norms."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    state = {
        "proj.weight": torch.randn(8, 512),
        "small.weight": torch.randn(4, 64),
        "odd.weight": torch.randn(3, 10),
        "norm.weight": torch.randn(512),
    }
    root = tmp_path_factory.mktemp("rust-gguf")
    torch.save(state, root / "model.pt")
    rc, _stdout, stderr = run_cli("to-gguf", root / "model.pt", root / "out", "--type", "q4_k")
    assert rc == 0, stderr
    return root / "out"


def test_rust_reads_a_gguf_output(gguf_output: Path, tmp_path: Path) -> None:
    """`rmc verify` agrees with `convert verify`; each tensor's f32 values are the gguf package's."""
    rc, stdout, stderr = run(rust_tools().rmc, "verify", gguf_output, "--json")
    assert rc == 0, stderr
    report = json.loads(stdout)
    assert report["ok"] and report["tensors"] == 4
    reader = {t.name: t for t in gguf.GGUFReader(gguf_output / "model.gguf").tensors}
    assert {n: t.tensor_type.name for n, t in reader.items()} == {
        "proj.weight": "Q4_K",
        "small.weight": "Q5_0",
        "odd.weight": "F16",
        "norm.weight": "F32",
    }
    for name, t in reader.items():
        rc, stdout, stderr = run(rust_tools().tensor, gguf_output, name)
        assert rc == 0, stderr
        got = np.array(json.loads(stdout)["f32_bits"], dtype=np.uint32)
        want = gguf.quants.dequantize(np.asarray(t.data), t.tensor_type).astype(np.float32).reshape(-1)
        assert got.tolist() == want.view(np.uint32).tolist(), name
    rc, stdout, stderr = run(rust_tools().rmc, "inspect", gguf_output, "--json")
    assert rc == 0, stderr
    assert json.loads(stdout)["format"] == "gguf"
    broken = tmp_path / "broken"
    shutil.copytree(gguf_output, broken)
    doc = json.loads((broken / "manifest.json").read_text())
    entry = next(t for t in doc["tensors"] if t["name"] == "proj.weight")
    start = min(t.data_offset for t in reader.values())
    data = bytearray((broken / "model.gguf").read_bytes())
    data[start + entry["data_offsets"][0] + 20] ^= 0x10
    (broken / "model.gguf").write_bytes(bytes(data))
    rc_py, out_py, _ = run_cli("verify", broken, "--json")
    rc_rs, out_rs, _ = run(rust_tools().rmc, "verify", broken, "--json")
    assert rc_py == rc_rs == 8
    for out in (out_py, out_rs):
        assert any("proj.weight" in p for p in json.loads(out)["problems"]), out


def test_rust_verifies_split_files(gguf_output: Path, tmp_path: Path) -> None:
    """llama.cpp's split files: `rmc verify` checks each file's split keys as `convert verify` does."""
    src = gguf_output.parent / "model.pt"
    out = tmp_path / "split"
    rc, _stdout, stderr = run_cli("to-gguf", src, out, "--type", "q8_0", "--max-shard-size", "4KB")
    assert rc == 0, stderr
    files = [f["path"] for f in json.loads((out / "manifest.json").read_text())["files"]]
    assert len(files) > 1
    rc, stdout, stderr = run(rust_tools().rmc, "verify", out, "--json")
    assert rc == 0, stderr
    assert json.loads(stdout)["files"] == len(files)
