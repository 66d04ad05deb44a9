"""Exit 0 is a promise (issue 15): a cast never turns values into inf or zero silently, every source
array is accounted for, --overwrite replaces only this tool's own output, outputs get the umask's
permissions, option values are parsed strictly, paths work relative or absolute, and detection
cannot take one format's magic for another's. Each test reproduces a report of the issue."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="needs torch to write real checkpoints")

from conftest import assert_cli_error, assert_no_output, load_output, read_manifest, run_cli  # noqa: E402


# ---------------------------------------------------------------------------------------------
# option values are parsed strictly
# ---------------------------------------------------------------------------------------------

@pytest.fixture
def batchnorm_checkpoint(tmp_path: Path) -> Path:
    path = tmp_path / "bn.pt"
    torch.save(torch.nn.BatchNorm1d(4).state_dict(), path)
    return path


@pytest.mark.parametrize("value, dropped", [("no", False), ("0", False), ("false", False), ("False", False),
                                            ("yes", True), ("1", True), ("true", True)])
def test_boolean_layout_option_words(batchnorm_checkpoint: Path, tmp_path: Path, value: str, dropped: bool) -> None:
    out = tmp_path / "out"
    rc, _, err = run_cli("pth-to-safetensors", batchnorm_checkpoint, out,
                         "--layout-option", f"drop_num_batches_tracked={value}")
    assert rc == 0, err
    assert ("num_batches_tracked" not in load_output(out)) == dropped


@pytest.mark.parametrize("value", ["maybe", "", "2", "nope"])
def test_boolean_layout_option_refuses_other_words(batchnorm_checkpoint: Path, tmp_path: Path, value: str) -> None:
    out = tmp_path / "out"
    result = run_cli("pth-to-safetensors", batchnorm_checkpoint, out, "--layout-option", f"drop_num_batches_tracked={value}")
    assert_cli_error(result, 2, "drop_num_batches_tracked", "true/false/yes/no/1/0")
    assert_no_output(out)


# ---------------------------------------------------------------------------------------------
# outputs get the usual permissions
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("umask", [0o022, 0o002, 0o077])
def test_output_permissions_follow_the_umask(batchnorm_checkpoint: Path, tmp_path: Path, umask: int) -> None:
    import os

    out = tmp_path / "out"
    rc, _, err = run_cli("pth-to-safetensors", batchnorm_checkpoint, out, preexec_fn=lambda: os.umask(umask))
    assert rc == 0, err
    assert out.stat().st_mode & 0o777 == 0o777 & ~umask
    for f in out.iterdir():
        assert f.stat().st_mode & 0o777 == 0o666 & ~umask, f.name


# ---------------------------------------------------------------------------------------------
# detection cannot take one format's magic for another's
# ---------------------------------------------------------------------------------------------

def _safetensors_with_header_length(path: Path, wanted: int) -> dict[str, Any]:
    """A SafeTensors file written by the safetensors library whose header length is `wanted`."""
    import struct

    import numpy as np
    from safetensors.numpy import save_file

    tensors = {"w": np.arange(6, dtype=np.float32).reshape(2, 3)}
    for pad in range(wanted):
        save_file(tensors, str(path), metadata={"format": "pt", "note": "x" * pad})
        if struct.unpack("<Q", path.read_bytes()[:8])[0] == wanted:
            return tensors
    raise AssertionError(f"no padding gives a {wanted}-byte header")


@pytest.mark.parametrize("length", [0x280, 0x380, 0x480, 0x580])  # first bytes 80 02 .. 80 05: a pickle's opening
def test_safetensors_whose_header_length_looks_like_a_pickle(tmp_path: Path, length: int) -> None:
    src = tmp_path / "weights.bin"  # no suffix to lean on
    tensors = _safetensors_with_header_length(src, length)
    assert src.read_bytes()[:2] == bytes([0x80, length >> 8])
    rc, out, err = run_cli("inspect", src)
    assert rc == 0, err
    assert out.splitlines()[-1].startswith("safetensors: 1 tensors")
    rc, _, err = run_cli("auto", src, tmp_path / "out")
    assert rc == 0, err
    assert load_output(tmp_path / "out")["w"].tolist() == tensors["w"].tolist()


# ---------------------------------------------------------------------------------------------
# paths work relative or absolute
# ---------------------------------------------------------------------------------------------

def test_orbax_folder_given_a_relative_path(tmp_path: Path) -> None:
    pytest.importorskip("orbax.checkpoint", reason="needs orbax-checkpoint to save a Flax checkpoint")
    import numpy as np
    import orbax.checkpoint as ocp

    kernel = np.random.default_rng(0).standard_normal((3, 4)).astype(np.float32)
    bias = np.arange(4, dtype=np.float32)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(tmp_path / "ckpt", {"params": {"Dense_0": {"kernel": kernel, "bias": bias}}})
    checkpointer.wait_until_finished()
    for src, out in (("ckpt", "out"), ("./ckpt/", "sub/../out2")):
        rc, _, err = run_cli("flax-to-safetensors", src, out, cwd=tmp_path)
        assert rc == 0, err
        tensors = load_output(tmp_path / out)
        assert tensors["Dense_0.weight"].numpy().tobytes() == kernel.T.tobytes()
        assert tensors["Dense_0.bias"].numpy().tobytes() == bias.tobytes()
        rc, _, err = run_cli("verify", out, "--source", src, cwd=tmp_path)
        assert rc == 0, err


def test_relative_paths_for_every_command(batchnorm_checkpoint: Path) -> None:
    cwd = batchnorm_checkpoint.parent
    name = batchnorm_checkpoint.name
    assert run_cli("inspect", name, cwd=cwd)[0] == 0
    assert run_cli("pth-to-safetensors", name, "a", cwd=cwd)[0] == 0
    assert run_cli("auto", f"./{name}", "b/", cwd=cwd)[0] == 0
    assert run_cli("verify", "a", "--source", name, cwd=cwd)[0] == 0
    rc, _, err = run_cli("batch", name, "--out-dir", "c", cwd=cwd)
    assert rc == 0, err
    assert (cwd / "c" / batchnorm_checkpoint.stem / "model.safetensors").is_file()
