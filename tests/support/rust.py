"""Build the Rust crate (rust/) once per test run and run its binaries.

The build is offline against Debian's packaged crates (/usr/share/cargo/registry, installed by
scripts/test.sh) through `--config` source replacement given to this build only, so the same
Cargo.toml builds against crates.io elsewhere. Without cargo the Rust tests fail when CI=true
(nothing skips in CI) and skip otherwise.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO

WORKSPACE = REPO / "rust"
TARGET_DIR = WORKSPACE / "target"  # ignored by git; reused by later runs, so rebuilds are incremental
DEBIAN_REGISTRY = Path("/usr/share/cargo/registry")
OFFLINE = [
    "--offline",
    "--config",
    'source.crates-io.replace-with="debian-packages"',
    "--config",
    f'source.debian-packages.directory="{DEBIAN_REGISTRY}"',
]


@dataclass(frozen=True)
class RustTools:
    rmc: Path  # the crate's CLI: verify, inspect
    forward: Path  # examples/forward.rs: reference forward passes
    schema: Path  # examples/schema.rs: field skeleton and manifest round trip
    tensor: Path  # examples/tensor.rs: one tensor's values, as the crate reads them
    quickstart: Path  # examples/quickstart.rs: the README's example
    dequantize: Path  # examples/dequantize.rs: every tensor of a GGUF file as the crate dequantizes it


def _cargo() -> str | None:
    found = shutil.which("cargo")
    home = Path(os.environ.get("CARGO_HOME", Path.home() / ".cargo")) / "bin" / "cargo"
    return found or (str(home) if home.is_file() else None)


def _unavailable(why: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"Rust tests cannot run in CI: {why}", pytrace=False)
    pytest.skip(why)


def _cargo_offline() -> tuple[str, list[str]] | str:
    """cargo and the arguments that build offline against Debian's crates (none where that registry is
    empty, outside CI), or why the crate cannot be built here."""
    cargo = _cargo()
    if cargo is None:
        return "cargo not found (install a Rust toolchain, e.g. with rustup)"
    offline = OFFLINE if any(DEBIAN_REGISTRY.glob("serde-1.*")) else []
    if not offline and os.environ.get("CI") == "true":
        return f"{DEBIAN_REGISTRY} holds no packaged crates (scripts/test.sh installs them with apt-get)"
    return cargo, offline


def _lock_hint(offline: list[str]) -> str:
    return " (rust/Cargo.lock may pin crates.io versions from another build: remove it)" if offline else ""


@functools.lru_cache(maxsize=1)
def _build() -> RustTools | str:
    found = _cargo_offline()
    if isinstance(found, str):
        return found
    cargo, offline = found
    cmd = [cargo, "build", "--quiet", *offline, "--bin", "rmc", "--examples", "--target-dir", str(TARGET_DIR)]
    proc = subprocess.run(cmd, cwd=WORKSPACE, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        return f"cargo build failed{_lock_hint(offline)} ({' '.join(cmd)}):\n{proc.stderr[-4000:]}"
    out = TARGET_DIR / "debug"
    return RustTools(
        out / "rmc",
        out / "examples" / "forward",
        out / "examples" / "schema",
        out / "examples" / "tensor",
        out / "examples" / "quickstart",
        out / "examples" / "dequantize",
    )


def rust_tools() -> RustTools:
    """The built binaries; fails (CI) or skips (elsewhere) when the crate cannot be built here."""
    built = _build()
    if isinstance(built, str):
        if built.startswith("cargo build failed"):
            pytest.fail(built, pytrace=False)
        _unavailable(built)
    assert isinstance(built, RustTools)
    return built


def cargo_test() -> None:
    """`cargo test` of the crate (rust/rmc-load/tests/*.rs, its doc examples), built as the binaries
    above are; fails with cargo's report of every failing test, fails (CI) or skips (elsewhere) when
    the crate cannot be built here."""
    found = _cargo_offline()
    if isinstance(found, str):
        _unavailable(found)
    assert not isinstance(found, str)
    cargo, offline = found
    cmd = [cargo, "test", "--quiet", *offline, "--no-fail-fast", "--target-dir", str(TARGET_DIR)]
    env = {**os.environ, "RUST_BACKTRACE": "0"}  # the panic messages say what failed
    proc = subprocess.run(cmd, cwd=WORKSPACE, capture_output=True, text=True, timeout=900, env=env)
    if proc.returncode != 0:
        hint = "" if "test result:" in proc.stdout else _lock_hint(offline)  # built, then a test failed
        report = f"{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
        pytest.fail(f"cargo test failed{hint} ({' '.join(cmd)}):\n{report}", pytrace=False)


def run(binary: Path, *args: object, timeout: float = 120) -> tuple[int, str, str]:
    proc = subprocess.run([str(binary), *map(str, args)], capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stdout, proc.stderr


# ---------------------------------------------------------------------------------------------
# The manifest schema, seen as the crate sees its own types
# ---------------------------------------------------------------------------------------------

SCHEMA = json.loads((REPO / "schemas" / "manifest.schema.json").read_text(encoding="utf-8"))


def resolve(node: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in node:
        node = SCHEMA["$defs"][node["$ref"].rsplit("/", 1)[-1]]
    return node


def types(node: dict[str, Any]) -> list[str]:
    t = node.get("type", [])
    return [t] if isinstance(t, str) else list(t)


def schema_skeleton(node: dict[str, Any]) -> Any:
    """The schema's fields in the shape the crate prints its own: objects with properties as dicts,
    arrays as [item], everything else (scalars, free-form objects) as null."""
    node = resolve(node)
    if "properties" in node:
        return {k: schema_skeleton(v) for k, v in node["properties"].items()}
    if "array" in types(node) and "items" in node:
        return [schema_skeleton(node["items"])]
    return None


def project(value: Any, skeleton: Any) -> Any:
    """Only the parts of a JSON value the schema declares (free-form parts whole)."""
    if isinstance(skeleton, dict) and isinstance(value, dict):
        return {k: project(v, skeleton[k]) for k, v in value.items() if k in skeleton}
    if isinstance(skeleton, list) and isinstance(value, list):
        return [project(v, skeleton[0]) for v in value]
    return value
