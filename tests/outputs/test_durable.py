"""An output is flushed to disk while it is written, not only at the end, and a failed flush fails the
conversion with one error and nothing left behind.

The flushes are observed with a wrapper around the real `os.fdatasync` (it still flushes), recording
how large the output file was at each call; the failure case makes that wrapper return EIO, as a
failing disk does.
"""

from __future__ import annotations

import errno
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the checkpoint is written by torch.save")

import convert.durable  # noqa: E402
import convert.hashing  # noqa: E402
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


def _output_flushes(monkeypatch: pytest.MonkeyPatch, fail: bool = False, disk_seconds: float = 0.0) -> list[int]:
    """Wrap os.fdatasync: the sizes of the .safetensors file at each flush of it land in the list.
    Each flush of it takes at least `disk_seconds` (a slower disk). The writer's os.pwrite and
    os.copy_file_range to it wait while more than two steps are written but not flushed, so how
    many flushes happen follows the file's size, not how fast this machine's disk is: a flush
    covers all that landed before it, and a slow one would otherwise cover the whole file."""
    sizes: list[int] = []
    flushed = [0.0]
    cond = threading.Condition()
    real_flush, real_pwrite, real_copy = os.fdatasync, os.pwrite, os.copy_file_range

    def is_output(fd: int) -> bool:
        return os.readlink(f"/proc/self/fd/{fd}").endswith(".safetensors")

    def flush(fd: int) -> None:
        if not is_output(fd):
            return real_flush(fd)
        size = os.fstat(fd).st_size
        sizes.append(size)
        try:
            if fail:
                raise OSError(errno.EIO, os.strerror(errno.EIO))
            time.sleep(disk_seconds)
            real_flush(fd)
        finally:
            with cond:
                flushed[0] = math.inf if fail else size
                cond.notify_all()

    def held_back(fd: int, offset: int | None) -> None:
        if offset is not None and is_output(fd):
            with cond:
                if not cond.wait_for(lambda: offset - flushed[0] <= 2 * STEP, timeout=30):
                    flushed[0] = math.inf  # no flush came: stop holding back, the assertions will say so

    def pwrite(fd: int, data: Any, offset: int) -> int:
        held_back(fd, offset)
        return real_pwrite(fd, data, offset)

    def copy_file_range(src: int, dst: int, count: int, offset_src: int | None = None, offset_dst: int | None = None) -> int:
        held_back(dst, offset_dst)
        return real_copy(src, dst, count, offset_src, offset_dst)

    monkeypatch.setattr(convert.durable, "FLUSH_STEP", STEP)
    monkeypatch.setattr(os, "fdatasync", flush)
    monkeypatch.setattr(os, "pwrite", pwrite)
    monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    return sizes


@pytest.mark.parametrize("disk_seconds", [0.0, 0.3], ids=["this-disk", "slow-disk"])
def test_the_output_is_flushed_as_it_grows(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, disk_seconds: float
) -> None:
    sizes = _output_flushes(monkeypatch, disk_seconds=disk_seconds)
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


def _furthest_write(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The end of the furthest write to the .safetensors file, kept in a one-item list (wrapping
    whatever os.pwrite and os.copy_file_range are now)."""
    furthest = [0]
    pwrite, copy = os.pwrite, os.copy_file_range

    def note(fd: int, offset: int | None, n: int) -> int:
        if offset is not None and os.readlink(f"/proc/self/fd/{fd}").endswith(".safetensors"):
            furthest[0] = max(furthest[0], offset + n)
        return n

    def copy_file_range(src: int, dst: int, count: int, o_src: int | None = None, o_dst: int | None = None) -> int:
        return note(dst, o_dst, copy(src, dst, count, o_src, o_dst))

    monkeypatch.setattr(os, "pwrite", lambda fd, data, offset: note(fd, offset, pwrite(fd, data, offset)))
    monkeypatch.setattr(os, "copy_file_range", copy_file_range)
    return furthest


def test_a_failed_flush_stops_the_writer_at_once(checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sizes = _output_flushes(monkeypatch, fail=True)
    furthest = _furthest_write(monkeypatch)
    with pytest.raises(OutputWriteError, match=r"Input/output error"):
        api.pth_to_safetensors(checkpoint, tmp_path / "out")
    total = sum(t.numel() * 4 for t in torch.load(checkpoint, weights_only=True).values())
    assert sizes, "the failing flush was never reached"
    assert furthest[0] < total // 2, f"wrote up to {furthest[0]:,} of {total:,} bytes after the flush at {sizes[0]:,} failed"


def test_an_output_that_cannot_be_read_back_is_a_write_error(
    checkpoint: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The hashing threads read the written bytes back; an I/O error there fails the conversion as a
    write error (exit 10), not as an internal one."""
    real = convert.hashing.hash_range

    def hash_range(fd: int, offset: int, length: int, hashers: Any) -> None:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".safetensors") and offset > STEP:
            raise OSError(errno.EIO, os.strerror(errno.EIO))
        real(fd, offset, length, hashers)

    monkeypatch.setattr(convert.hashing, "hash_range", hash_range)
    with pytest.raises(OutputWriteError, match=r"model\.safetensors: Input/output error"):
        api.pth_to_safetensors(checkpoint, tmp_path / "out")
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)
