"""The Flax msgpack reader: every dtype and shape Flax writes, byte for byte; Flax's chunked arrays;
trees with integer keys and lists; no JAX on this path; and damaged or hostile files refused with
one line and exit code 6 (4 for what Flax never writes), leaving nothing behind."""

from __future__ import annotations

import functools
import json
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest

from convert.api import flax_to_safetensors
from convert.errors import CorruptInputError, UnsupportedFormatError
from tests.support import REPO, api_verified, assert_cli_error, assert_no_output, run_cli, write_bytes as write

FLAX_DTYPES = [
    "float64",
    "float32",
    "float16",
    "bfloat16",
    "float8_e4m3fn",
    "float8_e5m2",
    "int64",
    "int32",
    "int16",
    "int8",
    "uint64",
    "uint32",
    "uint16",
    "uint8",
    "bool",
    "complex64",
]
FRAMEWORKS = ("jax", "jaxlib", "flax", "orbax", "torch", "tensorflow")


def sample(dtype: str, shape: tuple[int, ...], seed: int = 0) -> np.ndarray:
    import ml_dtypes

    values = np.random.default_rng(seed).normal(size=shape) * 50
    return values.astype(getattr(ml_dtypes, dtype, None) or np.dtype(dtype))


def ndarray_ext(shape: Any, dtype: Any, data: bytes, code: int = 1) -> msgpack.ExtType:
    """An array leaf exactly as flax.serialization encodes one."""
    return msgpack.ExtType(code, msgpack.packb((shape, dtype, data), use_bin_type=True))


convert = functools.partial(api_verified, flax_to_safetensors)


def stored(out: Path) -> dict[str, np.ndarray]:
    """The written tensors (read with the project's reader: safetensors.numpy has no float8)."""
    from convert.safetensors_source import open_safetensors

    with open_safetensors(out / "model.safetensors") as written:
        return {t.name: np.array(t.array()) for t in written.tensors}


@pytest.fixture(scope="module")
def flax_serialization() -> Any:
    pytest.importorskip("flax", reason="needs flax to write real msgpack files")
    from flax import serialization

    return serialization


def test_every_dtype_and_shape_round_trips_byte_exact(flax_serialization: Any, tmp_path: Path) -> None:
    shapes = [(3, 4), (), (0,), (2, 0, 3), (5,), (2, 1, 3, 2)]
    arrays = {f"x_{dt}_{i}": sample(dt, shape, i) for dt in FLAX_DTYPES for i, shape in enumerate(shapes)}
    src = write(tmp_path / "all.msgpack", flax_serialization.to_bytes({"params": {"m": arrays}}))
    doc = convert(src, tmp_path / "out")
    reference = flax_serialization.msgpack_restore(src.read_bytes())["params"]["m"]
    out = stored(tmp_path / "out")
    for name, arr in reference.items():
        got = out[f"m.{name}"]
        assert got.shape == arr.shape and got.tobytes() == np.ascontiguousarray(arr).tobytes(), name
    by_name = {t["name"]: t for t in doc["tensors"]}
    assert by_name["m.x_bfloat16_0"]["dtype"] == "BF16" and by_name["m.x_bool_0"]["dtype"] == "BOOL"
    assert all(not t["transforms"] for t in doc["tensors"])  # leaves that are no Flax layer keep their names


def test_chunked_arrays_are_joined(flax_serialization: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Flax splits arrays above MAX_CHUNK_SIZE; a small limit makes it do so for a small model."""
    monkeypatch.setattr(flax_serialization, "MAX_CHUNK_SIZE", 64)
    kernel, bias = sample("float32", (7, 5)), sample("bfloat16", (40,))
    src = write(
        tmp_path / "chunked.msgpack", flax_serialization.to_bytes({"params": {"Dense_0": {"kernel": kernel, "bias": bias}}})
    )
    assert b"__msgpack_chunked_array__" in src.read_bytes()
    convert(src, tmp_path / "out")
    out = stored(tmp_path / "out")
    assert out["Dense_0.weight"].tobytes() == np.ascontiguousarray(kernel.T).tobytes()
    assert out["Dense_0.bias"].tobytes() == bias.tobytes()


def test_integer_keys_lists_and_scalars(tmp_path: Path) -> None:
    """msgpack_serialize of NNX pure dicts (integer keys), tuples (msgpack arrays) and plain scalars."""
    w = sample("float32", (2, 3))
    tree = {
        "layers": {0: {"kernel": ndarray_ext([2, 3], "float32", w.tobytes())}},
        "pair": [ndarray_ext([3], "float32", w[0].tobytes()), ndarray_ext([], "int32", b"\x07\0\0\0", code=3)],
        "step": 12,
        "name": "run",
        "z": msgpack.ExtType(2, msgpack.packb((1.0, 2.0))),
    }
    doc = convert(write(tmp_path / "t.msgpack", msgpack.packb(tree, use_bin_type=True)), tmp_path / "out")
    out = stored(tmp_path / "out")
    assert sorted(out) == ["layers.0.weight", "pair.0", "pair.1"] and out["pair.1"].shape == ()
    assert doc["source"]["details"]["skipped_non_tensors"] == ["step", "name", "z"]


def test_hugging_face_sharded_index_is_cross_checked(flax_serialization: Any, tmp_path: Path) -> None:
    folder = tmp_path / "hf"
    folder.mkdir()
    a, b = sample("float32", (4, 2)), sample("float32", (2,))
    write(folder / "flax_model-00001-of-00002.msgpack", flax_serialization.to_bytes({"proj": {"kernel": a}}))
    write(folder / "flax_model-00002-of-00002.msgpack", flax_serialization.to_bytes({"proj": {"bias": b}}))
    index = {
        "metadata": {"total_size": a.nbytes + b.nbytes},
        "weight_map": {"proj/kernel": "flax_model-00001-of-00002.msgpack", "proj/bias": "flax_model-00002-of-00002.msgpack"},
    }
    write(folder / "flax_model.msgpack.index.json", json.dumps(index).encode())
    write(folder / "config.json", b'{"model_type": "toy"}')
    doc = convert(folder, tmp_path / "out")
    assert doc["source"]["format"] == "hf-flax-sharded" and doc["sidecars"] == ["config.json"]
    assert doc["architecture"]["config"] == {"model_type": "toy"}
    index["weight_map"]["proj/bias"] = "flax_model-00001-of-00002.msgpack"
    write(folder / "flax_model.msgpack.index.json", json.dumps(index).encode())
    assert_cli_error(run_cli("flax-to-safetensors", folder, tmp_path / "bad"), 6, "proj/bias")
    assert_no_output(tmp_path / "bad")


def test_msgpack_path_imports_no_framework(flax_serialization: Any, tmp_path: Path) -> None:
    """Conversion of a Flax msgpack file, `auto` and `verify` included, in a fresh interpreter: no JAX,
    Flax, orbax or torch is imported."""
    src = write(
        tmp_path / "m.msgpack", flax_serialization.to_bytes({"params": {"Dense_0": {"kernel": sample("float32", (3, 2))}}})
    )
    script = textwrap.dedent(f"""
        import json, sys
        from convert.api import flax_to_safetensors, verify_path
        from convert.cli import cli
        flax_to_safetensors({str(src)!r}, {str(tmp_path / "api")!r})
        assert verify_path({str(tmp_path / "api")!r}, {str(src)!r}).ok
        try:
            cli(["auto", {str(src)!r}, {str(tmp_path / "cli")!r}, "-q"], prog_name="convert")
        except SystemExit as exit:
            assert not exit.code, exit.code
        print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in {FRAMEWORKS!r})))
        print("msgpack" in sys.modules)
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert proc.returncode == 0, proc.stderr
    frameworks, msgpack_used = proc.stdout.splitlines()[-2:]
    assert json.loads(frameworks) == [] and msgpack_used == "True"
    assert (tmp_path / "cli" / "model.safetensors").is_file()


# --- damaged and hostile files --------------------------------------------------------------------


def real_file(tmp_path: Path) -> Path:
    """A small real-looking Flax file (the layout of flax.serialization.to_bytes), with no flax needed."""
    kernel, bias = sample("float32", (6, 5)), sample("float32", (5,))
    tree = {
        "params": {
            "Dense_0": {
                "bias": ndarray_ext([5], "float32", bias.tobytes()),
                "kernel": ndarray_ext([6, 5], "float32", kernel.tobytes()),
            }
        }
    }
    return write(tmp_path / "real.msgpack", msgpack.packb(tree, use_bin_type=True))


# The CLI under 1 GiB of address space, set by the interpreter itself (a preexec_fn would fork a
# process that may hold JAX's threads): a reader that believed a declared size would fail to allocate.
LIMITED_CLI = (
    "import resource, sys; resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30)); from convert.cli import main; main()"
)


def refused(src: Path, tmp_path: Path, code: int, *needles: str) -> None:
    out = tmp_path / "out"
    proc = subprocess.run(
        [sys.executable, "-c", LIMITED_CLI, "flax-to-safetensors", str(src), str(out)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert_cli_error((proc.returncode, proc.stdout, proc.stderr), code, src.name, *needles)
    assert_no_output(out)


def test_real_file_converts(tmp_path: Path) -> None:
    doc = convert(real_file(tmp_path), tmp_path / "out")
    assert [t["name"] for t in doc["tensors"]] == ["Dense_0.bias", "Dense_0.weight"]


@pytest.mark.parametrize("keep", [1, 2, 9, 30, 60, 200, -1])
def test_truncated_file_is_corrupt(keep: int, tmp_path: Path) -> None:
    data = real_file(tmp_path).read_bytes()
    refused(write(tmp_path / "cut.msgpack", data[:keep]), tmp_path, 6)


def forged(tmp_path: Path, leaf: Any, name: str = "forged.msgpack") -> Path:
    return write(tmp_path / name, msgpack.packb({"params": {"Dense_0": {"kernel": leaf}}}, use_bin_type=True))


HOSTILE: dict[str, tuple[Any, int, str]] = {
    # an extension declaring 4 GiB in a file of a few bytes
    "extension-bomb": (b"\x81\xa6params\x81\xa1w\xc9\xff\xff\xff\xff\x01\x93", 6, "extension declares 4294967295 bytes"),
    "huge-shape": (ndarray_ext([1 << 40, 1 << 20], "float32", b"\0" * 4), 6, "needs"),
    "shape-bytes-mismatch": (ndarray_ext([3, 4], "float32", b"\0" * 44), 6, "needs 48 bytes"),
    "negative-dim": (ndarray_ext([-1, 4], "float32", b""), 6, "shape"),
    "shape-not-a-list": (ndarray_ext("big", "float32", b""), 6, "shape"),
    "bytes-not-filling-extension": (msgpack.ExtType(1, msgpack.packb(([1], "float32", b"\0" * 4)) + b"\0"), 6, "fill"),
    "not-three-fields": (msgpack.ExtType(1, msgpack.packb(([1], "float32"))), 6, "(shape, dtype, bytes)"),
    "object-dtype": (ndarray_ext([1], "object", b"\0" * 8), 4, "'object'"),
    "unknown-extension": (msgpack.ExtType(9, b"\0" * 8), 4, "extension type 9"),
    "map-count-bomb": (b"\x81\xa6params\xdf\xff\xff\xff\xff", 6, "declares 4294967295 entries"),
    "array-count-bomb": (b"\x81\xa6params\xdd\xff\xff\xff\xff", 6, "declares 4294967295 entries"),
    "string-length-bomb": (b"\x81\xa6params\xdb\xff\xff\xff\xf0", 6, ""),
    "duplicate-key": (b"\x82\xa1a\x01\xa1a\x02", 6, "appears twice"),
    "float-key": (msgpack.packb({1.5: 1}), 6, "key"),
    "dotted-key": (msgpack.packb({"params": {"a.b": ndarray_ext([1], "float32", b"\0" * 4)}}, use_bin_type=True), 4, "'a.b'"),
    "deep-nesting": (b"\x81\xa1a" * 100 + b"\xc0", 6, "nested deeper"),
    "trailing-bytes": (msgpack.packb({"a": ndarray_ext([1], "float32", b"\0" * 4)}, use_bin_type=True) + b"\0\0", 6, "follow"),
    "not-a-map": (msgpack.packb([1, 2, 3]), 4, "does not start with a map"),
    "empty": (b"", 4, "does not start with a map"),
}


@pytest.mark.parametrize("attack", sorted(HOSTILE))
def test_hostile_file_is_refused(attack: str, tmp_path: Path) -> None:
    payload, code, needle = HOSTILE[attack]
    name = f"{attack}.msgpack"
    src = write(tmp_path / name, payload) if isinstance(payload, bytes) else forged(tmp_path, payload, name)
    refused(src, tmp_path, code, needle)
    error = CorruptInputError if code == 6 else UnsupportedFormatError
    with pytest.raises(error):
        flax_to_safetensors(src, tmp_path / "api")
    assert_no_output(tmp_path / "api")


def test_without_msgpack_the_error_names_the_extra(tmp_path: Path) -> None:
    src = real_file(tmp_path)
    script = textwrap.dedent(f"""
        import sys
        sys.modules["msgpack"] = None  # as if the flax extra were not installed
        from convert.cli import cli
        cli(["flax-to-safetensors", {str(src)!r}, {str(tmp_path / "out")!r}], prog_name="convert")
    """)
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert_cli_error((proc.returncode, proc.stdout, proc.stderr), 4, "rust-model-convert[flax]")
    assert_no_output(tmp_path / "out")
