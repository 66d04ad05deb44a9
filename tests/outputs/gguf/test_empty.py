"""`convert to-gguf` on a source with zero tensors (an empty state dict written by torch.save, an
empty file written by safetensors): one line, exit 7, nothing written. The SafeTensors commands keep
their own answer for the same sources (exit 4); `batch --to gguf` reports the job's exit 7."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from tests.support import assert_cli_error, assert_no_output, run_cli

torch = pytest.importorskip("torch")


@pytest.fixture(scope="module")
def empty_sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("empty")
    torch.save({}, folder / "empty.pt")
    torch.save(torch.nn.Module().state_dict(), folder / "module.pt")  # an OrderedDict with nothing in it
    save_file({}, folder / "empty.safetensors")
    return {p.name: p for p in folder.iterdir()}


@pytest.mark.parametrize("name", ["empty.pt", "module.pt", "empty.safetensors"])
def test_to_gguf_refuses_zero_tensors(empty_sources: dict[str, Path], tmp_path: Path, name: str) -> None:
    out = tmp_path / "out"
    assert_cli_error(run_cli("to-gguf", empty_sources[name], out, "--type", "q8_0"), 7, "no tensors")
    assert_no_output(out)


def test_safetensors_output_keeps_exit_4(empty_sources: dict[str, Path], tmp_path: Path) -> None:
    for i, name in enumerate(["empty.pt", "empty.safetensors"]):
        out = tmp_path / f"out{i}"
        assert_cli_error(run_cli("auto", empty_sources[name], out), 4, "no tensors")
        assert_no_output(out)


def test_batch_to_gguf_reports_exit_7(empty_sources: dict[str, Path], tmp_path: Path) -> None:
    folder = tmp_path / "models"
    folder.mkdir()
    shutil.copy(empty_sources["empty.pt"], folder / "empty.pt")
    rc, stdout, _stderr = run_cli("batch", folder, "--out-dir", tmp_path / "out", "--to", "gguf", "--type", "q8_0", "--json")
    assert rc == 11
    job = json.loads(stdout.splitlines()[0])
    assert job["status"] == "failed" and job["exit_code"] == 7 and "no tensors" in job["error"]
    assert_no_output(tmp_path / "out")
