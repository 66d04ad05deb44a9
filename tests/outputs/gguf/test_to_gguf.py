"""`convert to-gguf`: a torch checkpoint written by torch.save, converted to GGUF, read back with the
`gguf` package (its GGUFReader, its quantizer and dequantizer) and with torch's own values; the types
each tensor gets (1-D F32, fallbacks, overrides), the manifest's record of each, llama.cpp's split
files, bad input refused with one line and nothing written, `verify` naming any flipped byte, and
`inspect` on the file."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import assert_cli_error, assert_no_output, read_manifest, run_cli

torch = pytest.importorskip("torch")
Source = tuple[Path, dict[str, Any]]  # the checkpoint and its arrays
gguf = pytest.importorskip("gguf")
nn = torch.nn


class Net(nn.Module):
    """Rows of 64 (whole q8_0 blocks, not whole K-quant blocks), of 256, of 100 (no block fits), a
    conv (rows of 3), 1-D norms and biases."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(50, 64)
        self.norm = nn.LayerNorm(64)
        self.up = nn.Linear(64, 256)
        self.down = nn.Linear(256, 64)
        self.odd = nn.Linear(100, 32)
        self.conv = nn.Conv1d(4, 8, 3)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Source:
    torch.manual_seed(0)
    state = Net().state_dict()
    path = tmp_path_factory.mktemp("src") / "model.pt"
    torch.save(state, path)
    return path, {k: v.numpy() for k, v in state.items()}


def to_gguf_cli(src: Path, out: Path, *args: str) -> tuple[int, str, str]:
    return run_cli("to-gguf", src, out, *args)


@pytest.fixture(scope="module")
def q8_out(checkpoint: Source, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("q8") / "out"
    rc, _stdout, stderr = to_gguf_cli(checkpoint[0], out, "--type", "q8_0")
    assert rc == 0, stderr
    return out, stderr


def _tensors(path: Path) -> dict[str, Any]:
    return {t.name: t for t in gguf.GGUFReader(path).tensors}


def test_q8_0_matches_the_gguf_package(checkpoint: Source, q8_out: tuple[Path, str]) -> None:
    _src, state = checkpoint
    out, stderr = q8_out
    doc = read_manifest(out)
    assert doc["target"]["format"] == "gguf" and [f["path"] for f in doc["files"]] == ["model.gguf"]
    reader = gguf.GGUFReader(out / "model.gguf")
    fields = {k: f.contents() for k, f in reader.fields.items()}
    assert fields["GGUF.version"] == 3
    assert fields["general.alignment"] == 32 and fields["general.quantization_version"] == 2
    assert fields["general.file_type"] == int(gguf.LlamaFileType.MOSTLY_Q8_0)
    assert isinstance(fields["general.architecture"], str)
    expected_types = {
        "embed.weight": "Q8_0",
        "up.weight": "Q8_0",
        "down.weight": "Q8_0",
        "odd.weight": "F16",  # rows of 100: no block fits, llama-quantize's last resort
        "conv.weight": "F16",  # rows of 3
    }
    entries = {t["name"]: t for t in doc["tensors"]}
    data_start = min(t.data_offset for t in reader.tensors)
    for t in reader.tensors:
        src = state[t.name].astype(np.float32)
        want_type = expected_types.get(t.name, "F32")  # 1-D tensors stay F32
        assert t.tensor_type.name == want_type, t.name
        assert list(t.shape) == list(reversed(src.shape)), t.name  # ggml order
        raw = np.asarray(t.data)
        if want_type == "Q8_0":
            theirs = gguf.quants.quantize(src, gguf.GGMLQuantizationType.Q8_0)
            assert np.array_equal(theirs.reshape(-1), raw.reshape(-1).view(np.uint8))
        else:
            assert np.array_equal(raw.reshape(src.shape), src.astype(np.float16 if want_type == "F16" else np.float32))
        e = entries[t.name]
        assert e["dtype"] == want_type and e["shape"] == list(src.shape)
        assert e["data_offsets"][0] == t.data_offset - data_start
        decoded = gguf.quants.dequantize(raw, t.tensor_type).reshape(src.shape)
        err = decoded.astype(np.float64) - src
        q = e["quantization"]
        assert q["type"] == want_type and q["block_size"] == (32 if want_type == "Q8_0" else 1)
        assert q["error"]["max_abs"] == pytest.approx(float(np.abs(err).max()), rel=1e-6, abs=1e-12)
        assert q["error"]["rms"] == pytest.approx(float(np.sqrt(np.mean(err**2))), rel=1e-4, abs=1e-12)
    for name in ("odd.weight", "conv.weight"):
        assert "F16" not in entries[name]["quantization"]["requested"]
        assert name in stderr and "f16" in entries[name]["quantization"]["reason"]


@pytest.mark.parametrize("qtype", ["f16", "bf16", "q4_0", "q5_1", "q4_k", "q6_k"])
def test_types_decode_as_the_gguf_package_decodes(checkpoint: Source, tmp_path: Path, qtype: str) -> None:
    from convert.outputs.gguf.quants import dequantize

    src, state = checkpoint
    rc, _stdout, stderr = to_gguf_cli(src, tmp_path / "out", "--type", qtype)
    assert rc == 0, stderr
    doc = read_manifest(tmp_path / "out")
    for t in gguf.GGUFReader(tmp_path / "out" / "model.gguf").tensors:
        raw = np.asarray(t.data)
        theirs = gguf.quants.dequantize(raw, t.tensor_type).reshape(state[t.name].shape)
        ours = dequantize(raw.view(np.uint8), t.tensor_type.name.lower(), state[t.name].shape)
        assert np.array_equal(theirs, ours), t.name
    if qtype == "q4_k":  # rows of 64: q4_k's fallback, q5_0, as llama-quantize chooses
        assert {t["name"]: t["dtype"] for t in doc["tensors"]}["embed.weight"] == "Q5_0"


def test_type_override(checkpoint: Source, tmp_path: Path) -> None:
    rc, _stdout, stderr = to_gguf_cli(checkpoint[0], tmp_path / "out", "--type", "q8_0", "--type-override", "{m}.weight=q4_0")
    assert rc == 0, stderr
    types = {t["name"]: t for t in read_manifest(tmp_path / "out")["tensors"]}
    assert types["up.weight"]["dtype"] == "Q4_0" and "--type-override" in types["up.weight"]["quantization"]["reason"]
    assert types["norm.weight"]["dtype"] == "Q4_0"  # an override names 1-D tensors too
    assert types["up.bias"]["dtype"] == "F32"


@pytest.mark.parametrize(
    ("args", "code", "needle"),
    [
        (["--type", "q9_9"], 2, "q9_9"),
        (["--type", "q8_0", "--type-override", "nothing.here=q4_0"], 2, "nothing.here=q4_0"),
        (["--type", "q8_0", "--type-override", "up.weight"], 2, "PATTERN=TYPE"),
    ],
)
def test_bad_options_write_nothing(checkpoint: Source, tmp_path: Path, args: list[str], code: int, needle: str) -> None:
    assert_cli_error(to_gguf_cli(checkpoint[0], tmp_path / "out", *args), code, needle)
    assert_no_output(tmp_path / "out")


def test_long_names_and_integers_refused(tmp_path: Path) -> None:
    long_name = "encoder." + "layer_with_a_rather_long_descriptive_name." * 2 + "weight"
    torch.save({long_name: torch.zeros(4, 32), "ok.weight": torch.zeros(4, 32)}, tmp_path / "long.pt")
    assert_cli_error(to_gguf_cli(tmp_path / "long.pt", tmp_path / "out1"), 7, long_name, "63-byte")
    assert_no_output(tmp_path / "out1")
    bn = nn.BatchNorm1d(32)
    torch.save(bn.state_dict(), tmp_path / "bn.pt")
    assert_cli_error(to_gguf_cli(tmp_path / "bn.pt", tmp_path / "out2"), 7, "num_batches_tracked", "I64")
    assert_no_output(tmp_path / "out2")
    rc, _stdout, stderr = to_gguf_cli(tmp_path / "bn.pt", tmp_path / "out3", "--layout-option", "drop_num_batches_tracked=true")
    assert rc == 0, stderr


def test_split_files(checkpoint: Source, tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc, _stdout, stderr = to_gguf_cli(checkpoint[0], out, "--type", "f32", "--max-shard-size", "40KB")
    assert rc == 0, stderr
    doc = read_manifest(out)
    names = [f["path"] for f in doc["files"]]
    count = len(names)
    assert count > 1 and names == [f"model-{i:05d}-of-{count:05d}.gguf" for i in range(1, count + 1)]
    seen = []
    for i, name in enumerate(names):
        reader = gguf.GGUFReader(out / name)
        fields = {k: f.contents() for k, f in reader.fields.items()}
        assert (fields["split.no"], fields["split.count"], fields["split.tensors.count"]) == (i, count, len(doc["tensors"]))
        assert reader.fields["split.no"].types[0] == gguf.GGUFValueType.UINT16
        seen += [t.name for t in reader.tensors]
    assert seen == [t["name"] for t in doc["tensors"]]
    rc, _stdout, stderr = run_cli("verify", out, "--source", checkpoint[0])
    assert rc == 0, stderr


def test_verify_names_every_flipped_byte(checkpoint: Source, q8_out: tuple[Path, str], tmp_path: Path) -> None:
    src = checkpoint[0]
    good, _ = q8_out
    rc, stdout, stderr = run_cli("verify", good, "--source", src, "--json")
    assert rc == 0, stderr
    report = json.loads(stdout)
    assert report["ok"] and report["compared_with_source"] == len(read_manifest(good)["tensors"])
    doc = read_manifest(good)
    up = next(t for t in doc["tensors"] if t["name"] == "up.weight")
    reader = gguf.GGUFReader(good / "model.gguf")
    start = min(t.data_offset for t in reader.tensors)
    size = (good / "model.gguf").stat().st_size
    padded = next(t for t in doc["tensors"] if t["data_offsets"][1] % 32)  # a tensor followed by padding
    cases = {
        "tensor": (start + up["data_offsets"][0] + 7, "tensor 'up.weight'"),
        "header": (30, "model.gguf"),
        "padding": (start + padded["data_offsets"][1], f"padding after tensor {padded['name']!r}"),
        "last byte": (size - 1, "model.gguf"),
    }
    for case, (offset, needle) in cases.items():
        out = tmp_path / case
        shutil.copytree(good, out)
        data = bytearray((out / "model.gguf").read_bytes())
        data[offset] ^= 0x40
        (out / "model.gguf").write_bytes(bytes(data))
        rc, stdout, _stderr = run_cli("verify", out, "--json")
        assert rc == 8, case
        assert any(needle in p for p in json.loads(stdout)["problems"]), (case, stdout)


def test_verify_source_requantizes(checkpoint: Source, q8_out: tuple[Path, str], tmp_path: Path) -> None:
    """A tensor whose bytes and digest were both changed passes the digest check; re-quantizing the
    source names it."""
    import blake3

    good, _ = q8_out
    out = tmp_path / "out"
    shutil.copytree(good, out)
    doc = json.loads((out / "manifest.json").read_text())
    entry = next(t for t in doc["tensors"] if t["name"] == "down.weight")
    start = min(t.data_offset for t in gguf.GGUFReader(out / "model.gguf").tensors)
    data = bytearray((out / "model.gguf").read_bytes())
    begin, end = start + entry["data_offsets"][0], start + entry["data_offsets"][1]
    data[begin + 2] ^= 0x01  # the first quant of the first block
    (out / "model.gguf").write_bytes(bytes(data))
    entry["digest"] = blake3.blake3(bytes(data[begin:end])).hexdigest()
    doc["files"][0]["digest"] = blake3.blake3(bytes(data)).hexdigest()
    (out / "manifest.json").write_text(json.dumps(doc))
    assert run_cli("verify", out)[0] == 0
    rc, stdout, _stderr = run_cli("verify", out, "--source", checkpoint[0], "--json")
    assert rc == 8
    assert [p for p in json.loads(stdout)["problems"] if "down.weight" in p]


def test_inspect_a_gguf_file(q8_out: tuple[Path, str]) -> None:
    out, _ = q8_out
    rc, stdout, stderr = run_cli("inspect", out / "model.gguf", "--json")
    assert rc == 0, stderr
    info = json.loads(stdout)
    assert info["format"] == "gguf" and info["details"]["metadata"]["general.quantization_version"] == 2
    by_name = {t["name"]: t for t in info["tensors"]}
    assert by_name["up.weight"]["dtype"] == "Q8_0" and by_name["up.weight"]["shape"] == [256, 64]
    assert by_name["up.weight"]["bytes"] == 256 * 64 // 32 * 34
    rc, stdout, _stderr = run_cli("inspect", out / "model.gguf")
    assert rc == 0 and "Q8_0" in stdout and "general.architecture" in stdout
    bad = out.parent / "bad.gguf"
    bad.write_bytes((out / "model.gguf").read_bytes()[:100])
    assert_cli_error(run_cli("inspect", bad), 6, "bad.gguf")


def test_python_api_and_batch(checkpoint: Source, tmp_path: Path) -> None:
    """The API writes what the CLI writes; batch takes the output format as an option like the others
    (flags or a job file), and skips a done GGUF job on a rerun."""
    from convert.api import to_gguf

    src = checkpoint[0]
    result = to_gguf(src, tmp_path / "api", type="q8_0", type_overrides=["up.weight=q4_0"])
    assert result.files == ["model.gguf"]
    rc, _stdout, stderr = to_gguf_cli(src, tmp_path / "cli", "--type", "q8_0", "--type-override", "up.weight=q4_0")
    assert rc == 0, stderr
    assert (tmp_path / "api" / "model.gguf").read_bytes() == (tmp_path / "cli" / "model.gguf").read_bytes()
    rc, stdout, stderr = run_cli("batch", src, "--out-dir", tmp_path / "batch", "--to", "gguf", "--type", "q4_0", "--json")
    assert rc == 0, stderr
    (line,) = [json.loads(x) for x in stdout.splitlines() if '"status"' in x]
    assert line["status"] == "ok"
    out = Path(line["output"])
    doc = read_manifest(out)
    assert doc["target"]["format"] == "gguf" and doc["target"]["output_options"]["type"] == "q4_0"
    assert {t["name"]: t["dtype"] for t in doc["tensors"]}["down.weight"] == "Q4_0"
    rc, stdout, _stderr = run_cli("batch", src, "--out-dir", tmp_path / "batch", "--to", "gguf", "--type", "q4_0", "--json")
    assert rc == 0 and json.loads(stdout.splitlines()[0])["status"] == "skipped"
    jobs = tmp_path / "jobs.toml"
    job = f'source = "{src}"\noutput = "from_file"\nto = "gguf"\ntype = "q5_0"\ntype_override = ["embed.weight=f32"]'
    jobs.write_text(f"[[job]]\n{job}\n")
    rc, _stdout, stderr = run_cli("batch", "--job-file", jobs)
    assert rc == 0, stderr
    types = {t["name"]: t["dtype"] for t in read_manifest(tmp_path / "from_file")["tensors"]}
    assert types["down.weight"] == "Q5_0" and types["embed.weight"] == "F32"
