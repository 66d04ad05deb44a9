"""The tiled copy of transposed views (convert.tensors.c_contiguous, iter_chunks) and the writer's use
of it: exactly numpy's own `a.T` (and permutes) byte for byte, on shapes that are not multiples of a
tile, on one-row and one-column views, and for every kind of element the writer meets."""

from __future__ import annotations

import errno
import os
import resource
import signal
from pathlib import Path
from typing import Any

import blake3
import ml_dtypes
import numpy as np
import pytest
from safetensors.numpy import load_file

from convert import transforms
from convert.dtypes import from_numpy
from convert.tensors import CHUNK_BYTES, TRANSPOSE_BAND, TRANSPOSE_STRIP, c_contiguous, in_memory, iter_chunks
from convert.writer import WriteItem, write_tensor_file
from tests.support import assert_one_line_error, run_cli

DTYPES = [np.float32, np.float16, ml_dtypes.bfloat16, np.float64, np.int8, np.uint8, np.int32, np.int64, np.bool_]
# Larger than the strip copy's lower bound (2**16 elements) unless noted, none a multiple of a strip or band.
SHAPES = [(1, 70001), (70001, 1), (257, 263), (TRANSPOSE_BAND + 3, TRANSPOSE_STRIP * 9 + 5), (3, 40000), (40000, 3)]


def source(shape: tuple[int, ...], dtype: Any) -> np.ndarray:
    """Distinct values where the dtype allows, so a misplaced element shows."""
    values = np.arange(int(np.prod(shape)), dtype=np.int64).reshape(shape)
    if np.dtype(dtype) == np.bool_:
        return (values % 3 == 0).astype(np.bool_)
    if np.dtype(dtype).kind in "iu":
        return (values % (2 ** (8 * np.dtype(dtype).itemsize - 1) - 1)).astype(dtype)
    return (values % 2039).astype(np.float32).astype(dtype) / 8


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_transposed_copy_is_numpys(shape: tuple[int, int], dtype: Any) -> None:
    view = source(shape, dtype).T
    expected = np.ascontiguousarray(view)
    copied = c_contiguous(view)
    assert copied.flags.c_contiguous and copied.dtype == view.dtype
    assert copied.tobytes() == expected.tobytes()
    into = np.full(view.shape, 1, view.dtype)
    assert c_contiguous(view, into) is into and into.tobytes() == expected.tobytes()
    # chunks of a few rows, copied into one reused buffer, in order, also give a.T's bytes
    pieces = b"".join(chunk.tobytes() for chunk in iter_chunks(view, 3 * view[0].nbytes + 1, reuse=True))
    assert pieces == expected.tobytes()


@pytest.mark.parametrize("dtype", [np.float32, ml_dtypes.bfloat16, np.int8], ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize(
    "shape, axes",
    [((5, 7, 33, 65), (3, 2, 0, 1)), ((3, 300, 301), (0, 2, 1)), ((300, 2, 301), (2, 1, 0)), ((1, 1, 5, 70001), None)],
    ids=str,
)
def test_permuted_copies_are_numpys(shape: tuple[int, ...], axes: tuple[int, ...] | None, dtype: Any) -> None:
    """Layouts permute more than two axes (Conv kernels): the chain's view made C-ordered, whole and in
    reused chunks, is numpy's transpose."""
    arr = source(shape, dtype)
    chain = [{"op": "transpose"} if axes is None else {"op": "permute", "axes": list(axes)}]
    view = transforms.apply(chain, [arr])
    expected = np.ascontiguousarray(arr.transpose(axes)).tobytes()
    assert c_contiguous(view).tobytes() == expected
    assert b"".join(c.tobytes() for c in iter_chunks(view, 5 * view[0].nbytes // 2 + 1, reuse=True)) == expected


@pytest.mark.parametrize("dtype", [np.float32, np.float16, ml_dtypes.bfloat16, np.int64], ids=lambda d: np.dtype(d).name)
def test_the_writer_lays_a_transposed_view_out_as_numpy_does(tmp_path: Path, dtype: Any) -> None:
    """Through the file writer (chunks into a reused buffer, a pre-sized file): each tensor's bytes in
    the file are a.T's, and its neighbours are untouched."""
    arrays = {"a": source((1500, 700), dtype).T, "b": source((9, 1), dtype).T, "c": source((4100, 17), dtype).T}
    items, offsets, pos = [], [], 0
    for name, view in arrays.items():
        items.append(WriteItem(name, from_numpy(view.dtype), in_memory(name, view)))
        offsets.append((pos, pos + view.nbytes))
        pos += view.nbytes
    header = b"HEADER--"
    path = tmp_path / "out.bin"
    written = write_tensor_file(path, header, items, offsets, "blake3")
    data = path.read_bytes()
    assert written.bytes == len(data) == len(header) + pos
    for (name, view), (begin, end) in zip(arrays.items(), offsets, strict=True):
        assert data[len(header) + begin : len(header) + end] == np.ascontiguousarray(view).tobytes(), name


@pytest.mark.parametrize(
    "storage",
    [(4100, 1030), (6000, 800), (9000, 600)],
    ids=["column groups of a block", "row blocks of a wide view", "column tiles of a wider view"],
)
def test_views_larger_than_a_chunk_are_laid_out_as_numpy_does(tmp_path: Path, storage: tuple[int, int]) -> None:
    """Transposed views of more than CHUNK_BYTES, none a multiple of a block or group, through each way
    the writer copies them (into the output's map a group of source rows at a time, by row blocks,
    or in column tiles for views whose rows span many storage pages): a.T's bytes and digest."""
    view = source(storage, np.float32).T
    assert view.nbytes > CHUNK_BYTES
    path = tmp_path / "out.bin"
    item = WriteItem("a", from_numpy(view.dtype), in_memory("a", view))
    written = write_tensor_file(path, b"", [item], [(0, view.nbytes)], "blake3")
    expected = np.ascontiguousarray(view).tobytes()
    assert path.read_bytes() == expected
    assert written.tensors[0].digest == blake3.blake3(expected).hexdigest()


def test_a_transposed_safetensors_output_reads_back_as_the_transpose(tmp_path: Path) -> None:
    """The same through the format the tool writes, read back by the safetensors library itself."""
    view = source((2000, 3001), np.float32).T
    header_json = b'{"w":{"dtype":"F32","shape":[3001,2000],"data_offsets":[0,%d]}}' % view.nbytes
    header_json += b" " * (-(8 + len(header_json)) % 8)
    header = len(header_json).to_bytes(8, "little") + header_json
    path = tmp_path / "w.safetensors"
    write_tensor_file(path, header, [WriteItem("w", from_numpy(view.dtype), in_memory("w", view))], [(0, view.nbytes)], "blake3")
    assert np.array_equal(load_file(str(path))["w"], view)


def _limit_file_size() -> None:
    """In the child: files may not grow past 8 MB (allocating past it then fails with EFBIG, not a signal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))


def test_no_room_for_a_transposed_weight_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    """A transposed view is copied into the output through a map; the room for it is claimed first, so
    running out of it is the write error (exit 10) with nothing left, never a SIGBUS."""
    torch = pytest.importorskip("torch", reason="the checkpoint is written by torch.save")
    src = tmp_path / "model.pt"
    torch.save({"proj.weight": torch.arange(3 << 20, dtype=torch.float32).reshape(2048, -1).t()}, src)
    out = tmp_path / "out"
    rc, _, stderr = run_cli("pth-to-safetensors", src, out, preexec_fn=_limit_file_size)
    assert rc == 10, stderr
    assert_one_line_error(stderr, "model.safetensors", "File too large")
    assert sorted(os.listdir(tmp_path)) == ["model.pt"]


def test_a_file_system_that_cannot_allocate_ahead_gets_the_same_bytes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Where posix_fallocate is unsupported (some network and FUSE file systems), the transposed view
    is written in chunks instead, with the same bytes."""

    def unsupported(fd: int, offset: int, length: int) -> None:
        raise OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP))

    monkeypatch.setattr(os, "posix_fallocate", unsupported)
    view = source((1500, 700), np.float32).T
    path = tmp_path / "out.bin"
    write_tensor_file(path, b"", [WriteItem("a", from_numpy(view.dtype), in_memory("a", view))], [(0, view.nbytes)], "blake3")
    assert path.read_bytes() == np.ascontiguousarray(view).tobytes()
