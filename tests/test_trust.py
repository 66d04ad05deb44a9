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
