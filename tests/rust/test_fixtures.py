"""The Rust crate's own tests, and the committed outputs they read.

`cargo test` runs rust/rmc-load/tests/*.rs over rust/rmc-load/tests/data (written by
scripts/make_rust_fixtures.py with this checkout's `convert`): digests against the manifests, every
GGUF type dequantized to the `gguf` package's values, corruption named. Here pytest runs it, offline
as the other Rust tests build the crate, so the test command gives one failure report; and the
fixtures must still be what the current code writes, byte for byte.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO
from tests.support.rust import cargo_test

SCRIPT = REPO / "scripts" / "make_rust_fixtures.py"
DATA = REPO / "rust" / "rmc-load" / "tests" / "data"


def files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_the_crates_own_tests_pass() -> None:
    cargo_test()


def test_the_fixtures_are_what_convert_writes_now(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    pytest.importorskip("gguf")
    out = tmp_path / "data"
    proc = subprocess.run([sys.executable, str(SCRIPT), "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    fresh, committed = files(out), files(DATA)
    assert sorted(fresh) == sorted(committed)
    changed = [name for name in fresh if fresh[name] != committed[name]]
    assert not changed, f"{changed} differ from what convert writes now; if that change is meant, run {SCRIPT.name}"
