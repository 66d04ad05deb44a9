"""NumPy sources written by NumPy itself (np.save, np.savez, np.savez_compressed, pickle of dicts of
ndarrays): read without np.load(allow_pickle) and compared with NumPy's own reading; a Flax-like tree
reaches the canonical names flax-to-safetensors gives and computes what flax computes; gadgets refused."""

from __future__ import annotations

import functools
import io
import pickle
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import assert_cli_error, assert_no_output, converted_arrays, random_array, read_manifest, run_cli

RNG = np.random.default_rng(7)


arr = functools.partial(random_array, RNG)


def converted(src: Path, out: Path, command: str = "auto") -> dict[str, np.ndarray]:
    return converted_arrays(command, src, out, verify=True)


def same(stored: dict[str, np.ndarray], expected: dict[str, np.ndarray]) -> None:
    assert set(stored) == set(expected)
    for name, value in expected.items():
        assert stored[name].dtype == value.dtype and stored[name].shape == value.shape, name
        assert np.array_equal(stored[name], value), name


@pytest.mark.parametrize("compressed", [False, True])
def test_npz_members_equal_numpys_own_reading(compressed: bool, tmp_path: Path) -> None:
    src = tmp_path / "w.npz"
    arrays = {
        "emb": arr(10, 4),
        "idx": np.arange(6, dtype=np.int64).reshape(2, 3),
        "half": arr(3, dtype=np.float16),
        "fortran": np.asfortranarray(arr(3, 5, dtype=np.float64)),
        "big_endian": arr(4).astype(">f4"),
        "flag": np.array([True, False]),
    }
    (np.savez_compressed if compressed else np.savez)(src, **arrays)
    stored = converted(src, tmp_path / "out", "npz-to-safetensors")
    with np.load(src) as reference:  # NumPy's own reader; allow_pickle stays False
        same(stored, {k: reference[k].astype(reference[k].dtype.newbyteorder("=")) for k in reference.files})
    assert read_manifest(tmp_path / "out")["source"]["format"] == "npz"


def test_npy_plain_and_saved_dict(tmp_path: Path) -> None:
    plain = tmp_path / "table.npy"
    np.save(plain, arr(3, 7))
    same(converted(plain, tmp_path / "a"), {"table": np.load(plain)})
    saved = tmp_path / "params.npy"
    tree = {"encoder": {"w": arr(2, 3), "b": arr(3)}, "steps": 10, "names": ["a", "b"]}
    np.save(saved, tree, allow_pickle=True)
    stored = converted(saved, tmp_path / "b")
    same(stored, {"encoder.w": tree["encoder"]["w"], "encoder.b": tree["encoder"]["b"]})
    assert set(read_manifest(tmp_path / "b")["source"]["details"]["skipped_non_tensors"]) == {"steps", "names/0", "names/1"}


def test_pickled_flax_params_reach_canonical_form(tmp_path: Path) -> None:
    """A pickle of a Flax params tree (how many JAX projects save) converts as flax-to-safetensors does:
    the same tensors as the msgpack of the same tree, and the Dense computes what flax computes."""
    jax = pytest.importorskip("jax", reason="needs the jax extra for the reference")
    flax_nn = pytest.importorskip("flax.linen", reason="needs the jax extra for the reference")
    from flax import serialization

    torch = pytest.importorskip("torch", reason="runs the converted Linear")

    class Model(flax_nn.Module):
        @flax_nn.compact
        def __call__(self, x: Any) -> Any:
            x = flax_nn.Dense(5, name="fc")(x)
            return flax_nn.LayerNorm(name="norm")(x)

    x = np.ones((2, 3), np.float32)
    params = Model().init(jax.random.PRNGKey(0), x)["params"]
    as_numpy = jax.tree_util.tree_map(np.asarray, params)
    src = tmp_path / "params.pkl"
    src.write_bytes(pickle.dumps(jax.tree_util.tree_map(lambda a: a, dict(as_numpy)), protocol=4))
    stored = converted(src, tmp_path / "out")
    msgpack = tmp_path / "params.msgpack"
    msgpack.write_bytes(serialization.to_bytes(as_numpy))
    same(stored, converted(msgpack, tmp_path / "flax"))
    assert stored["fc.weight"].shape == (5, 3)
    y = torch.nn.functional.linear(
        torch.from_numpy(x), torch.from_numpy(stored["fc.weight"]), torch.from_numpy(stored["fc.bias"])
    )
    dense = flax_nn.Dense(5).apply({"params": params["fc"]}, x)
    np.testing.assert_allclose(y.numpy(), np.asarray(dense), rtol=1e-6, atol=1e-6)


def test_npz_with_slash_paths_is_a_tree(tmp_path: Path) -> None:
    """Google vision checkpoints: npz members named Transformer/encoderblock_0/.../kernel."""
    k, b = arr(4, 6), arr(6)
    src = tmp_path / "vit.npz"
    np.savez(src, **{"Transformer/block_0/Dense_0/kernel": k, "Transformer/block_0/Dense_0/bias": b})
    stored = converted(src, tmp_path / "out")
    same(stored, {"Transformer.block_0.Dense_0.weight": k.T, "Transformer.block_0.Dense_0.bias": b})


@pytest.mark.parametrize("dotted", [True, False])
def test_npz_with_an_embedding_member_keeps_its_names(tmp_path: Path, dotted: bool) -> None:
    """A flat npz (as a protein language model on PyPI ships) with an `embedding`
    member beside other arrays is not a Flax tree: its names are kept, dotted ones too."""
    arrays = {"embedding": arr(21, 8), "mlstm.0.b" if dotted else "proj": arr(8), "mlstm.0.w" if dotted else "out": arr(8, 4)}
    src = tmp_path / "w.npz"
    np.savez(src, **arrays)
    same(converted(src, tmp_path / "out"), arrays)


# --- hostile -------------------------------------------------------------------------------------


class _Gadget:
    def __reduce__(self) -> Any:
        import os

        return (os.system, ("touch PWNED",))


@pytest.mark.parametrize("where", ["pickle", "npy", "npz"])
def test_gadgets_are_refused(where: str, tmp_path: Path) -> None:
    payload = {"w": np.ones(2), "x": _Gadget()}
    src = tmp_path / f"bad.{ {'pickle': 'pkl', 'npy': 'npy', 'npz': 'npz'}[where] }"
    if where == "pickle":
        src.write_bytes(pickle.dumps(payload))
    elif where == "npy":
        np.save(src, np.array([payload], dtype=object), allow_pickle=True)
    else:
        np.savez(src, obj=np.array([payload], dtype=object))
    out = tmp_path / "out"
    assert_cli_error(run_cli("auto", src, out, cwd=tmp_path), 5, "posix.system")
    assert_no_output(out)
    assert not (tmp_path / "PWNED").exists()


def test_npz_member_past_the_end_is_corrupt(tmp_path: Path) -> None:
    src = tmp_path / "w.npz"
    np.savez(src, w=arr(64, 64))
    data = src.read_bytes()
    src.write_bytes(data[: len(data) // 2])  # the central directory is gone: a damaged zip
    out = tmp_path / "out"
    assert_cli_error(run_cli("npz-to-safetensors", src, out), 6)
    assert_no_output(out)
    # a header promising more data than the member holds
    forged = tmp_path / "f.npz"
    with zipfile.ZipFile(forged, "w") as zf:
        header = np.lib.format.header_data_from_array_1_0(arr(2))
        header["shape"] = (1 << 20,)
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(buf, header)
        zf.writestr("w.npy", buf.getvalue() + arr(2).tobytes())
    assert_cli_error(run_cli("npz-to-safetensors", forged, out), 6, "the file ends at")
    assert_no_output(out)
