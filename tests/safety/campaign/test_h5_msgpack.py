"""Hostile HDF5 and msgpack files: exotic float types, zero-size huge shapes, inflation bounds; each
run through the CLI in a child process: the documented exit code, one stderr line, nothing written."""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.support.keras_models import keras2_weights_file
from tests.support.measured_run import refused, run_measured

UNSUPPORTED, CORRUPT = 4, 6
h5py = pytest.importorskip("h5py")


def keras3_weights_with_exotic_float(path: Path) -> Path:
    """A Keras 3 weights file whose kernel is an HDF5 float with float32's fields (31, 23, 8, 0, 23)
    and an exponent bias no numpy type covers: h5py cannot even name its dtype."""
    with h5py.File(path, "w") as f:
        group = f.create_group("layers/dense/vars")
        group.attrs["name"] = "dense"
        t = h5py.h5t.IEEE_F32LE.copy()
        t.set_ebias(100_000)
        h5py.h5d.create(group.id, b"0", t, h5py.h5s.create_simple((2, 2)))
        group.create_dataset("1", data=np.zeros(2, "float32"))
    return path


@pytest.mark.parametrize("command", ["auto", "inspect"])
@pytest.mark.parametrize("container", ["weights.h5", "keras"])
def test_hdf5_float_numpy_cannot_name_is_unsupported(command: str, container: str, tmp_path: Path) -> None:
    """Exit 1 ('Insufficient precision in available types') before; now 4, naming the dataset."""
    weights = keras3_weights_with_exotic_float(tmp_path / "model.weights.h5")
    src = weights
    if container == "keras":
        src = tmp_path / "model.keras"
        with zipfile.ZipFile(src, "w") as zf:
            zf.writestr("metadata.json", '{"keras_version": "3.10.0"}')
            zf.writestr("config.json", '{"class_name": "Sequential", "config": {"name": "s", "layers": []}}')
            zf.write(weights, "model.weights.h5")
    work = tmp_path / "work"
    work.mkdir()
    args = [command, src] + ([work / "out"] if command == "auto" else [])
    refused(UNSUPPORTED, *args, cwd=work, out=work / "out", needles=("vars/0", "HDF5 float type"))


@pytest.mark.parametrize("command", ["auto", "inspect"])
def test_msgpack_array_with_a_zero_dimension_and_a_huge_one_is_corrupt(command: str, tmp_path: Path) -> None:
    """Shape (0, 2**62): zero bytes, as declared, but no array numpy can build (exit 1 before)."""
    msgpack = pytest.importorskip("msgpack")
    payload = msgpack.packb(([0, 2**62], "float32", b""), use_bin_type=True)
    src = tmp_path / "params.msgpack"
    src.write_bytes(msgpack.packb({"params": {"w": msgpack.ExtType(1, payload)}}, use_bin_type=True))
    work = tmp_path / "work"
    work.mkdir()
    args = [command, src] + ([work / "out"] if command == "auto" else [])
    refused(CORRUPT, *args, cwd=work, out=work / "out", needles=("params/w", "too large"))


def test_what_compressed_datasets_inflate_to_is_bounded(tmp_path: Path) -> None:
    """256 MiB of gzip'd zeros from under 1 MB: inside the default bound (64 times the file, 1 GiB at
    least, tests/safety/campaign/test_limits.py converts it); past a bound the user sets, refused before a
    byte is inflated; a bound that fits converts, and verify --source (which re-reads with the
    recorded bound) passes."""
    src = keras2_weights_file(tmp_path / "bomb.h5", (8192, 8192), chunks=(256, 8192), compression="gzip")
    work = tmp_path / "work"
    work.mkdir()
    refused(
        UNSUPPORTED,
        "keras-to-safetensors",
        src,
        work / "out",
        "--max-inflated-size",
        "100MB",
        cwd=work,
        out=work / "out",
        needles=("kernel", "--max-inflated-size"),
    )
    run = run_measured("keras-to-safetensors", src, work / "out", "--max-inflated-size", "300MB", cwd=work)
    assert run.code == 0, run.stderr
    assert run_measured("verify", work / "out", "--source", src, cwd=work).code == 0
