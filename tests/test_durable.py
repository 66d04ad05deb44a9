"""An output is flushed to disk while it is written, not only at the end, and a failed flush fails the
conversion with one error and nothing left behind.

The flushes are observed with a wrapper around the real `os.fdatasync` (it still flushes), recording
how large the output file was at each call; the failure case makes that wrapper return EIO, as a
failing disk does.
"""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the checkpoint is written by torch.save")

import convert.durable  # noqa: E402
from convert import api  # noqa: E402
from convert.errors import OutputWriteError  # noqa: E402

STEP = 4 << 20


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """48 MB over twelve tensors, one of them a transposed view (written by the chunked path)."""
    g = torch.Generator().manual_seed(7)
    state = {f"layer{i}.weight": torch.randn(1024, 1024, generator=g) for i in range(11)}
    state["proj.weight"] = torch.randn(1024, 1024, generator=g).t()
    path = tmp_path_factory.mktemp("durable") / "model.pt"
    torch.save(state, path)
    return path


def _output_flushes(monkeypatch: pytest.MonkeyPatch, fail: bool = False) -> list[int]:
    """Wrap os.fdatasync: the sizes of the .safetensors file at each flush of it land in the list."""
    sizes: list[int] = []
    real = os.fdatasync

    def flush(fd: int) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".safetensors"):
            sizes.append(os.fstat(fd).st_size)
            if fail:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd)

    monkeypatch.setattr(convert.durable, "FLUSH_STEP", STEP)
    monkeypatch.setattr(os, "fdatasync", flush)
    return sizes


def test_the_output_is_flushed_as_it_grows(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = _output_flushes(monkeypatch)
    out = tmp_path / "out"
    result: Any = api.pth_to_safetensors(checkpoint, out)
    total = (out / "model.safetensors").stat().st_size
    assert len(sizes) >= 3, f"flushed {len(sizes)} times while writing {total:,} bytes in steps of {STEP:,}"
    assert sizes == sorted(sizes)
    assert sizes[0] < total, "the first flush came only once the file was complete"
    assert result is not None
    assert api.verify_path(out, source=checkpoint).ok


def test_a_failed_flush_fails_the_conversion_and_leaves_nothing(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    sizes = _output_flushes(monkeypatch, fail=True)
    out = tmp_path / "out"
    with pytest.raises(OutputWriteError, match=r"cannot write model\.safetensors: Input/output error"):
        api.pth_to_safetensors(checkpoint, out)
    assert sizes, "the failing flush was never reached"
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
