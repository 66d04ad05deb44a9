"""Tensors of several chunks, which `to-gguf` quantizes on worker threads: the bytes are still the
`gguf` package's, in order, the manifest's error is the error of the whole tensor (checked against
the gguf package's dequantizer), and `verify --source` re-quantizes them to the same bytes. One
tensor of rows smaller than a chunk, one whose rows are larger than a chunk (cut in whole blocks); a
NaN in a later chunk stops the run (exit 7, nothing written)."""

from __future__ import annotations

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
