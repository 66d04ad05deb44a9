"""Keras HDF5 read lazily, dataset by dataset: contiguous little-endian datasets become file spans
(copied in the kernel), the rest are read by h5py one dataset at a time, and the safety scan of the
file's global heaps walks it in steps whose pages it hands back. Every path is byte-exact."""

from __future__ import annotations

import mmap
from pathlib import Path

import numpy as np
import pytest

h5py = pytest.importorskip("h5py", reason="the keras extra reads HDF5 with h5py")

from convert.errors import CorruptInputError  # noqa: E402
from exporters.keras import h5 as keras_h5  # noqa: E402
from exporters.keras.h5 import GCOL, H5Source  # noqa: E402
from tests.support import REPO  # noqa: E402


def write_datasets(path: Path) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    arrays = {
        "contiguous_le": rng.standard_normal((64, 48)).astype("<f4"),
        "contiguous_be": rng.standard_normal((16, 8)).astype(">f8"),
        "chunked_gzip": rng.standard_normal((40, 30)).astype("<f4"),
        "chunked_plain": rng.integers(-9, 9, (33, 7)).astype("<i8"),
    }
    with h5py.File(path, "w") as f:
        f.attrs["note"] = "a variable-length string attribute lives in a global heap"
        f.create_dataset("contiguous_le", data=arrays["contiguous_le"])
        f.create_dataset("contiguous_be", data=arrays["contiguous_be"])
        f.create_dataset("chunked_gzip", data=arrays["chunked_gzip"], chunks=(8, 30), compression="gzip")
        f.create_dataset("chunked_plain", data=arrays["chunked_plain"], chunks=(5, 7))
    return arrays


@pytest.mark.parametrize("step", [None, 4096, 5])
def test_every_dataset_layout_reads_byte_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: int | None) -> None:
    if step:
        monkeypatch.setattr(keras_h5, "SCAN_STEP", step)
    path = tmp_path / "weights.h5"
    arrays = write_datasets(path)
    h5 = H5Source(path)
    try:
        raw = path.read_bytes()
        for name, expected in arrays.items():
            ref = h5.tensor(h5.child(h5.root, name), name)
            little = expected.astype(expected.dtype.newbyteorder("<"))
            got = ref.array()
            assert got.dtype.newbyteorder("<") == little.dtype and got.shape == expected.shape
            assert np.ascontiguousarray(got).astype(little.dtype).tobytes() == little.tobytes(), name
            if name == "contiguous_le":  # copied file to file: the span is exactly the dataset's bytes
                assert ref.span is not None
                assert raw[ref.span.offset : ref.span.offset + ref.span.length] == little.tobytes()
            else:
                assert ref.span is None
    finally:
        h5.close()


@pytest.mark.parametrize("step", [None, 64, 5])
def test_heap_scan_in_steps_still_refuses_the_looping_heap(monkeypatch: pytest.MonkeyPatch, step: int | None) -> None:
    if step:
        monkeypatch.setattr(keras_h5, "SCAN_STEP", step)
    with pytest.raises(CorruptInputError, match="global heap"):
        H5Source(REPO / "fixtures" / "hostile" / "h5_global_heap_loop.h5")


@pytest.mark.parametrize("step", [1, 3, 7, 8, 9, 64])
def test_stepped_find_matches_find_across_step_boundaries(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, step: int) -> None:
    monkeypatch.setattr(keras_h5, "SCAN_STEP", step)
    data = bytearray(200)
    for at in (0, 13, 30, 60, 61, 95, 125, 200 - len(GCOL)):  # every alignment, one overlapping
        data[at : at + len(GCOL)] = GCOL
    path = tmp_path / "blob"
    path.write_bytes(bytes(data))
    with open(path, "rb") as fh, mmap.mmap(fh.fileno(), 0, access=mmap.ACCESS_READ) as mm:
        for start in range(0, 200, 11):
            for end in (150, 199, 200):
                assert keras_h5._find(mm, GCOL, start, end) == mm.find(GCOL, start, end), (start, end)
