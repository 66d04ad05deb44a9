"""`convert to-gguf` on a source with zero tensors (an empty state dict written by torch.save, an
empty file written by safetensors): one line, exit 7, nothing written. The SafeTensors commands keep
their own answer for the same sources (exit 4)."""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import assert_cli_error, assert_no_output, run_cli

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
