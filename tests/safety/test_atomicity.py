"""Nothing half-written, whatever happens to a conversion, and `verify` catches every corruption.

- SIGKILL at random moments (fixed-seed delays spread over the whole run, half of them while the
  output file is being written) of `convert pth-to-safetensors` on a 64 MB checkpoint: the
  destination is either absent or a complete output that verifies -- and with `--overwrite`, either
  the previous output byte for byte or the complete new one. A SIGKILL may leave a hidden staging
  folder (`.NAME.convert-*`) beside it, never anything at the destination.
- Ctrl-C (SIGINT) and SIGTERM: exit 130 with one line, and nothing at all is left (no staging
  folder either); a previous output is untouched.
- A full disk (a 20 MB tmpfs when this machine lets root mount one, else RLIMIT_FSIZE, which makes
  writes fail with EFBIG): exit 10 with one line, and nothing partial at or beside the destination.
- Flipping any sampled byte of any tensor of a real multi-tensor output makes `verify` exit 8 naming
  that tensor.
"""

from __future__ import annotations

import os
import random
import resource
import shutil
import signal
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="the checkpoints are written by torch.save")

from tests.support import assert_one_line_error, cli_prefix, count_inputs, every_dtype_tensors, listing, run_cli  # noqa: E402

SEED = 20251122
KILLS_PER_SCENARIO = 12  # fresh destination, and --overwrite over a previous output
SIGNALS_PER_KIND = 4
STAGING = ".convert-"  # convert.output.STAGING_MARK: the staging folder is .NAME.convert-*


# ---------------------------------------------------------------------------------------------
# Checkpoints and timed runs
# ---------------------------------------------------------------------------------------------


def big_state(seed: int) -> dict[str, Any]:
    """64 MB: twelve 4 MB matrices, a transposed 16 MB view (written through the chunked path), a buffer."""
    g = torch.Generator().manual_seed(seed)
    state = {f"layer{i}.weight": torch.randn(1024, 1024, generator=g) for i in range(12)}
    state["proj.weight"] = torch.randn(2048, 2048, generator=g).t()
    state["steps"] = torch.arange(10)
    return state


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Two different 64 MB checkpoints, A and B, and A's complete output (the "previous output")."""
    root = tmp_path_factory.mktemp("atomicity")
    paths = {"A": root / "a.pt", "B": root / "b.pt"}
    for name, seed in (("A", 1), ("B", 2)):
        torch.save(big_state(seed), paths[name])
    rc, _, err = run_cli("pth-to-safetensors", paths["A"], root / "previous", "-q")
    assert rc == 0, err
    return {**paths, "previous": root / "previous", "root": root}


def start(src: Path, out: Path, *args: str, preexec_fn: Callable[[], None] | None = None) -> subprocess.Popen[str]:
    env = {**os.environ, "NO_COLOR": "1"}
    return subprocess.Popen(
        [*cli_prefix(), "pth-to-safetensors", str(src), str(out), "-q", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        preexec_fn=preexec_fn,
    )


def staging_of(out: Path) -> list[Path]:
    return sorted(p for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def wait_for_staging(proc: subprocess.Popen[str], out: Path, limit: float = 60) -> float:
    """Seconds until the staging folder appears (or the process ends)."""
    began = time.monotonic()
    while not staging_of(out) and proc.poll() is None and time.monotonic() - began < limit:
        time.sleep(0.001)
    return time.monotonic() - began


@pytest.fixture(scope="module")
def timing(sources: dict[str, Path]) -> dict[str, float]:
    """How long a run takes here, and how long its writing phase (staging folder to exit) lasts."""
    out = sources["root"] / "timing" / "out"
    out.parent.mkdir()
    began = time.monotonic()
    proc = start(sources["B"], out)
    to_staging = wait_for_staging(proc, out)
    assert proc.wait(timeout=120) == 0, proc.stderr.read() if proc.stderr else ""
    total = time.monotonic() - began
    return {"total": total, "write": max(total - to_staging, 0.05)}


def is_complete_output_of(out: Path, src: Path) -> bool:
    """`verify` passes on `out`, and its manifest names `src` as the source."""
    from convert import manifest
    from convert.verify import verify_output

    report = verify_output(out)
    return report.ok and [f["path"] for f in manifest.load(out)["source"]["files"]] == [str(src.absolute())]


def kill_at(proc: subprocess.Popen[str], out: Path, delay: float, during_write: bool) -> bool:
    """SIGKILL after `delay` s (counted from the staging folder's appearance when `during_write`);
    True if the output file was being written at that moment."""
    if during_write:
        wait_for_staging(proc, out)
    time.sleep(delay)
    writing = any(STAGING in s.name and (s / "model.safetensors").exists() for s in staging_of(out))
    proc.kill()
    proc.wait(timeout=60)
    return writing


def delays(rng: random.Random, timing: dict[str, float], count: int) -> list[tuple[float, bool]]:
    """Half spread over the whole run, half over its writing phase."""
    return [
        (rng.uniform(0, timing["total"] * 1.1), False) if i % 2 else (rng.uniform(0, timing["write"]), True) for i in range(count)
    ]


# ---------------------------------------------------------------------------------------------
# SIGKILL
# ---------------------------------------------------------------------------------------------


def test_sigkill_never_leaves_a_partial_destination(sources: dict[str, Path], timing: dict[str, float]) -> None:
    rng = random.Random(SEED)
    outcomes = {"absent": 0, "complete": 0, "killed while writing": 0}
    for i, (delay, during_write) in enumerate(delays(rng, timing, KILLS_PER_SCENARIO)):
        parent = sources["root"] / f"fresh-{i}"
        parent.mkdir()
        out = parent / "out"
        proc = start(sources["B"], out)
        outcomes["killed while writing"] += kill_at(proc, out, delay, during_write)
        visible = [p.name for p in parent.iterdir() if not p.name.startswith(".")]
        assert visible in ([], ["out"]), visible
        if out.exists():
            assert is_complete_output_of(out, sources["B"]), f"kill {i} after {delay:.3f} s left a partial {out}"
            outcomes["complete"] += 1
        else:
            outcomes["absent"] += 1
        shutil.rmtree(parent)
    count_inputs("kill points", "SIGKILL, new destination", KILLS_PER_SCENARIO)
    assert outcomes["killed while writing"] >= KILLS_PER_SCENARIO // 4, outcomes


def test_sigkill_during_overwrite_keeps_the_previous_output(sources: dict[str, Path], timing: dict[str, float]) -> None:
    previous = listing(sources["previous"])
    rng = random.Random(SEED + 1)
    outcomes = {"previous": 0, "replaced": 0, "killed while writing": 0}
    out = sources["root"] / "overwrite" / "out"
    out.parent.mkdir()
    for i, (delay, during_write) in enumerate(delays(rng, timing, KILLS_PER_SCENARIO)):
        if not out.exists() or listing(out) != previous:
            shutil.rmtree(out, ignore_errors=True)
            shutil.copytree(sources["previous"], out)
        proc = start(sources["B"], out, "--overwrite")
        outcomes["killed while writing"] += kill_at(proc, out, delay, during_write)
        assert out.is_dir(), f"kill {i} after {delay:.3f} s left no output at all (the previous one is gone)"
        if listing(out) == previous:
            outcomes["previous"] += 1
        else:
            assert is_complete_output_of(out, sources["B"]), f"kill {i} after {delay:.3f} s: neither the old nor the new output"
            outcomes["replaced"] += 1
        for leftover in staging_of(out):  # what a SIGKILL may leave; never the destination itself
            shutil.rmtree(leftover)
    count_inputs("kill points", "SIGKILL, --overwrite", KILLS_PER_SCENARIO)
    assert outcomes["killed while writing"] >= KILLS_PER_SCENARIO // 4, outcomes
    assert outcomes["previous"] >= 1, outcomes


# ---------------------------------------------------------------------------------------------
# Ctrl-C and SIGTERM
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
def test_interrupt_leaves_nothing(
    sig: signal.Signals, overwrite: bool, sources: dict[str, Path], timing: dict[str, float]
) -> None:
    rng = random.Random(SEED + sig + 10 * overwrite)
    interrupted = 0
    for i in range(SIGNALS_PER_KIND // 2 if overwrite else SIGNALS_PER_KIND):
        parent = sources["root"] / f"{sig.name}-{overwrite}-{i}"
        parent.mkdir()
        out = parent / "out"
        if overwrite:
            shutil.copytree(sources["previous"], out)
        proc = start(sources["B"], out, *(["--overwrite"] if overwrite else []))
        wait_for_staging(proc, out)
        # The first signal lands as soon as the staging folder appears (mid-write on any machine),
        # the others at random points of the writing phase.
        time.sleep(rng.uniform(0, timing["write"] * 0.8) if i else 0)
        proc.send_signal(sig)
        _, stderr = proc.communicate(timeout=120)
        # 0 or -sig: the conversion had finished (-sig: the signal met the interpreter's own shutdown,
        # which restores the default handlers); either way the output must then be complete.
        assert proc.returncode in (0, 130, -sig), f"exit {proc.returncode}: {stderr}"
        if proc.returncode == 130:
            interrupted += 1
            assert_one_line_error(stderr, "interrupted")
            if overwrite:  # the previous output, or -- a signal just after the atomic swap -- the complete new one
                assert listing(out) == listing(sources["previous"]) or is_complete_output_of(out, sources["B"]), (
                    f"signal {i} after the staging folder appeared: the output is neither the old nor the new one"
                )
            else:  # nothing, or -- a signal just after the final rename -- the complete new output
                assert not out.exists() or is_complete_output_of(out, sources["B"]), (
                    f"signal {i} after the staging folder appeared left an incomplete output"
                )
            assert [p.name for p in parent.iterdir()] == (["out"] if overwrite or out.exists() else []), list(parent.iterdir())
        else:  # finished before the signal arrived
            assert is_complete_output_of(out, sources["B"]), f"exit {proc.returncode} with an incomplete output"
            assert staging_of(out) == []
        shutil.rmtree(parent)
    count_inputs("kill points", f"{sig.name}{', --overwrite' if overwrite else ''}", i + 1)
    assert interrupted >= 1


# ---------------------------------------------------------------------------------------------
# A full disk
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Any:
    """A 20 MB tmpfs (needs root and a mountable tmpfs), unmounted afterwards."""
    where = tmp_path / "small"
    where.mkdir()
    if os.geteuid() != 0:
        pytest.skip("mounting a size-limited tmpfs needs root; the RLIMIT_FSIZE variant covers the write error")
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=20m", "tmpfs", str(where)], capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.strip()}); the RLIMIT_FSIZE variant covers the write error")
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def test_disk_full_is_one_line_and_leaves_nothing(sources: dict[str, Path], small_filesystem: Path) -> None:
    out = small_filesystem / "out"
    rc, _, stderr = run_cli("pth-to-safetensors", sources["B"], out, timeout=120)
    assert rc == 10, stderr
    assert_one_line_error(stderr, "disk full", "model.safetensors")
    assert os.listdir(small_filesystem) == [], os.listdir(small_filesystem)
    count_inputs("kill points", "ENOSPC (20 MB tmpfs)", 1)


def _limit_file_size() -> None:
    """In the child: files may not grow past 8 MB (write then fails with EFBIG instead of a signal)."""
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (8 << 20, 8 << 20))


@pytest.mark.parametrize("overwrite", [False, True], ids=["new", "overwrite"])
def test_file_size_limit_is_one_line_and_leaves_nothing(overwrite: bool, sources: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    if overwrite:
        shutil.copytree(sources["previous"], out)
    rc, _, stderr = run_cli(
        "pth-to-safetensors", sources["B"], out, *(["--overwrite"] if overwrite else []), preexec_fn=_limit_file_size, timeout=120
    )
    assert rc == 10, stderr
    assert_one_line_error(stderr, "model.safetensors", "File too large")
    assert sorted(os.listdir(tmp_path)) == (["out"] if overwrite else []), os.listdir(tmp_path)
    if overwrite:
        assert listing(out) == listing(sources["previous"])
    count_inputs("kill points", f"EFBIG (RLIMIT_FSIZE){', --overwrite' if overwrite else ''}", 1)


# ---------------------------------------------------------------------------------------------
# verify catches every flipped byte, naming the tensor
# ---------------------------------------------------------------------------------------------

FLIPS_PER_TENSOR = 6


def test_verify_names_the_tensor_of_every_flipped_byte(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from convert.api import pth_to_safetensors
    from convert.cli import cli
    from convert.safetensors_format import read_header

    state = {
        **every_dtype_tensors(3),
        "encoder.weight": torch.randn(64, 48),
        "encoder.bias": torch.randn(64),
        "scalar": torch.tensor(2.5),
        "tiny": torch.tensor([7], dtype=torch.int8),
    }
    torch.save(state, tmp_path / "model.pt")
    out = tmp_path / "out"
    pth_to_safetensors(tmp_path / "model.pt", out)
    path = out / "model.safetensors"
    header = read_header(path)
    original = bytearray(path.read_bytes())
    rng = random.Random(SEED)
    runner = CliRunner()
    flips = 0
    for entry in header.entries:
        if entry.end == entry.begin:
            continue
        start, end = header.data_start + entry.begin, header.data_start + entry.end
        positions = {start, end - 1} | {rng.randrange(start, end) for _ in range(FLIPS_PER_TENSOR - 2)}
        for pos in sorted(positions):
            damaged = bytearray(original)
            damaged[pos] ^= 1 << rng.randrange(8)
            path.write_bytes(damaged)
            result = runner.invoke(cli, ["verify", str(out)])
            assert result.exit_code == 8, f"byte {pos} of {entry.name}: exit {result.exit_code}: {result.output}"
            assert f"'{entry.name}'" in result.stdout and f"'{entry.name}'" in result.stderr, (entry.name, result.stdout)
            flips += 1
    path.write_bytes(original)
    assert runner.invoke(cli, ["verify", str(out)]).exit_code == 0
    count_inputs("verify", "bytes flipped", flips)
    assert flips >= 100
    # the executable itself, once
    damaged = bytearray(original)
    damaged[header.data_start + header.entries[0].begin] ^= 0x80
    path.write_bytes(damaged)
    rc, stdout, stderr = run_cli("verify", out)
    assert rc == 8 and f"'{header.entries[0].name}'" in stdout, stdout
    assert_one_line_error(stderr, header.entries[0].name)
