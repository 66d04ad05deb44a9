"""Tensors of several chunks, which `to-gguf` quantizes on worker threads: the bytes are still the
`gguf` package's, in order, the manifest's error is the error of the whole tensor (checked against
the gguf package's dequantizer), and `verify --source` re-quantizes them to the same bytes. One
tensor of rows smaller than a chunk, one whose rows are larger than a chunk (cut in whole blocks); a
NaN in a later chunk stops the run (exit 7, nothing written)."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from tests.support import assert_cli_error, assert_no_output, read_manifest, run_cli

torch = pytest.importorskip("torch")
gguf = pytest.importorskip("gguf")


def test_many_chunks_in_order(tmp_path: Path) -> None:
    from convert.outputs.gguf.encode import CHUNK_BYTES

    g = torch.Generator().manual_seed(0)
    state = {
        "rows.weight": torch.randn(3 * CHUNK_BYTES // 4096 + 5, 1024, generator=g),  # 3+ chunks of whole rows
        "wide.weight": torch.randn(2, CHUNK_BYTES // 4 + 4096, generator=g) * 3,  # rows larger than a chunk
    }
    src, out = tmp_path / "big.pt", tmp_path / "out"
    torch.save(state, src)
    rc, _stdout, stderr = run_cli("to-gguf", src, out, "--type", "q8_0")
    assert rc == 0, stderr
    entries = {t["name"]: t for t in read_manifest(out)["tensors"]}
    for t in gguf.GGUFReader(out / "model.gguf").tensors:
        values = state[t.name].numpy()
        raw = np.asarray(t.data).reshape(-1).view(np.uint8)
        assert np.array_equal(gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0).reshape(-1), raw), t.name
        err = gguf.quants.dequantize(raw, t.tensor_type).reshape(values.shape).astype(np.float64) - values
        measured = entries[t.name]["quantization"]["error"]
        assert measured["max_abs"] == pytest.approx(float(np.abs(err).max()), rel=1e-6)
        assert measured["rms"] == pytest.approx(float(np.sqrt(np.mean(err**2))), rel=1e-4)
        assert measured["relative_rms"] == pytest.approx(
            measured["rms"] / float(np.sqrt(np.mean(values.astype(np.float64) ** 2))), rel=1e-4
        )
    rc, _stdout, stderr = run_cli("verify", out, "--source", src)
    assert rc == 0, stderr


def test_a_bad_value_in_a_later_chunk_stops_the_threads(tmp_path: Path) -> None:
    from convert.outputs.gguf.encode import CHUNK_BYTES

    big = torch.zeros(4 * CHUNK_BYTES // 4096, 1024)
    big[-1, 7] = float("nan")  # in the last chunk, after workers have taken the first ones
    torch.save({"big.weight": big}, tmp_path / "nan.pt")
    assert_cli_error(run_cli("to-gguf", tmp_path / "nan.pt", tmp_path / "out", "--type", "q4_0"), 7, "big.weight", "NaN")
    assert_no_output(tmp_path / "out")


def test_a_stored_transpose_encodes_to_the_bytes_of_its_copy(tmp_path: Path) -> None:
    """A weight saved as a transposed view (strides (1, n)) is read a group of output rows at a time:
    the same blocks (or cast values) as its contiguous copy, the error of the whole tensor, and
    verify agrees."""
    g = torch.Generator().manual_seed(1)
    state = {
        "t32.weight": torch.randn(1280, 3000, generator=g).t(),  # 3 groups of output rows, the last partial
        "t16.weight": torch.randn(512, 2500, generator=g).half().t(),
    }
    assert not state["t32.weight"].is_contiguous()
    torch.save(state, tmp_path / "t.pt")
    torch.save({k: v.contiguous() for k, v in state.items()}, tmp_path / "c.pt")
    for qtype in ("q8_0", "q4_k", "f16", "f32"):
        for name in ("t", "c"):
            rc, _stdout, stderr = run_cli("to-gguf", tmp_path / f"{name}.pt", tmp_path / f"{name}-{qtype}", "--type", qtype)
            assert rc == 0, stderr
        transposed, copied = (tmp_path / f"{name}-{qtype}" for name in ("t", "c"))
        assert (transposed / "model.gguf").read_bytes() == (copied / "model.gguf").read_bytes(), qtype
        errors = {t["name"]: t["quantization"]["error"] for t in read_manifest(copied)["tensors"]}
        for t in read_manifest(transposed)["tensors"]:
            assert t["quantization"]["error"] == pytest.approx(errors[t["name"]], rel=1e-5, abs=1e-12), (qtype, t["name"])
        rc, _stdout, stderr = run_cli("verify", transposed, "--source", tmp_path / "t.pt")
        assert rc == 0, stderr
    q8 = gguf.GGUFReader(tmp_path / "t-q8_0" / "model.gguf").tensors
    for t in q8:
        values = state[t.name].float().numpy()
        raw = np.asarray(t.data).reshape(-1).view(np.uint8)
        assert np.array_equal(gguf.quants.quantize(values, gguf.GGMLQuantizationType.Q8_0).reshape(-1), raw), t.name


@pytest.mark.skipif(not Path("/proc/self/smaps").exists(), reason="reads the mapping's resident size from /proc")
@pytest.mark.parametrize("gtype", ["q8_0", "f16"])
def test_a_stored_transpose_keeps_few_source_pages(gtype: str, tmp_path: Path) -> None:
    """Each output row of a stored transpose takes a value from every stored row: read in chunks of
    output rows, every chunk touched a page of every stored row (all 32 MiB of this source stayed resident)."""
    from convert.outputs.gguf.encode import encoded
    from convert.outputs.gguf.ggml_types import ggml_type
    from convert.tensors import MappedFile

    stored = tmp_path / "stored.bin"
    np.random.default_rng(0).standard_normal((4096, 2048), dtype=np.float32).tofile(stored)
    source = MappedFile(str(stored))
    view = source.view(0, np.dtype("<f4"), (2048, 4096), (1, 2048))
    resident = []
    for _chunk in encoded("w", view, ggml_type(gtype), "refuse", None):
        resident.append(_resident_kib(stored))
    source.close()
    assert resident and max(resident) <= 8 << 10, resident


def _resident_kib(path: Path) -> int:
    """The resident KiB of this process's mappings of `path`."""
    total, ours = 0, False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        if re.match(r"[0-9a-f]+-[0-9a-f]+ ", line):  # a mapping's first line: addresses ... path
            ours = line.rstrip().endswith(str(path))
        elif ours and line.startswith("Rss:"):
            total += int(line.split()[1])
    return total
