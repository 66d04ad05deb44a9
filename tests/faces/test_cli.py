"""The command line as a user meets it: help, version, dry runs, refusing to clobber, JSON output,
inspect, quiet mode, every user error as one line and a documented exit code, and verify."""

from __future__ import annotations

import json
import os
import pickle
import random
import re
import subprocess
import sys
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="needs torch to write real checkpoints")

import convert  # noqa: E402
from convert.cli import cli as cli_group  # noqa: E402
from convert.errors import EXIT_CODES  # noqa: E402
from tests.support import (  # noqa: E402
    assert_cli_error,
    assert_no_output,
    assert_one_line_error,
    assert_same_state,
    convert_cli,
    header_length,
    listing,
    load_output,
    read_manifest,
    run_cli,
    st_code,
)

# ---------------------------------------------------------------------------------------------
# help and version
# ---------------------------------------------------------------------------------------------


def test_help_lists_every_subcommand_and_exit_code() -> None:
    rc, stdout, stderr = run_cli("--help")
    assert rc == 0 and stderr == ""
    for name in ("pth-to-safetensors", "inspect", "verify"):
        assert re.search(rf"^\s+{re.escape(name)}\s", stdout, re.M), name
    for name in cli_group.commands:  # whatever else is registered is listed too
        assert re.search(rf"^\s+{re.escape(name)}\s", stdout, re.M), name
    for code, meaning in EXIT_CODES.items():
        assert re.search(rf"^\s+{code}\s+\S", stdout, re.M), f"exit code {code} ({meaning}) not in --help"


@pytest.mark.parametrize("command", sorted(cli_group.commands))
def test_subcommand_help_lists_options_and_an_example_not_the_exit_codes(command: str) -> None:
    """The exit-code table is in `convert --help` once; each command's page shows how to call it."""
    rc, stdout, _ = run_cli(command, "--help")
    assert rc == 0
    for option in ("--json", "-q", "-v"):
        assert option in stdout, option
    if command.endswith("-to-safetensors"):
        for option in ("--layout", "--dtype", "--max-shard-size", "--overwrite", "--dry-run"):
            assert option in stdout, option
    assert re.search(rf"^\s+Examples:\n\s+convert {re.escape(command)}\b", stdout, re.M), stdout
    assert "Exit codes" not in stdout


def test_version() -> None:
    rc, stdout, stderr = run_cli("--version")
    assert rc == 0 and stderr == ""
    assert stdout.strip() == f"convert, version {convert.__version__}"


@pytest.mark.skipif(
    (os.cpu_count() or 1) < 2 or not Path("/proc/self/task").is_dir(), reason="OpenBLAS starts no threads on one CPU"
)
@pytest.mark.parametrize("user_setting, threads", [(None, 1), ("2", 2)])
def test_the_command_starts_no_blas_threads(user_setting: str | None, threads: int, tmp_path: Path) -> None:
    """numpy's OpenBLAS threads spin at import (a third of a small conversion's CPU): the command asks
    for one thread unless the user chose otherwise. The process's threads are counted as it exits."""
    from safetensors.numpy import save_file

    save_file({"w": np.ones((4, 4), np.float32)}, tmp_path / "m.safetensors")
    script = (
        "import atexit, os, sys\n"
        "count = lambda: len(os.listdir('/proc/self/task'))\n"
        "atexit.register(lambda: print(count(), os.environ['OPENBLAS_NUM_THREADS'], file=sys.stderr))\n"
        "from convert.cli import main\n"
        f"sys.argv = ['convert', 'auto', {str(tmp_path / 'm.safetensors')!r}, {str(tmp_path / 'out')!r}]\n"
        "main()\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_NUM_THREADS"}
    if user_setting:
        env["OPENBLAS_NUM_THREADS"] = user_setting
    done = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr.split()[-2:] == [str(threads), user_setting or "1"]
    assert (tmp_path / "out" / "manifest.json").is_file()


@pytest.mark.skipif(not Path("/proc/self/maps").is_file() or sys.platform != "linux", reason="glibc's heap, seen in /proc")
@pytest.mark.parametrize("face", ["command", "library"])
def test_the_command_keeps_freed_chunks_for_the_next(face: str, tmp_path: Path) -> None:
    """glibc maps each large allocation afresh (pages the kernel zeroes and faults in, chunk after
    chunk) and gives each thread an arena that keeps what it freed; the command has it keep freed
    chunks in the heap, in two arenas at most. The library leaves its host's malloc."""
    from safetensors.numpy import save_file

    save_file({"w": np.ones((4, 4), np.float32)}, tmp_path / "m.safetensors")
    src, out = str(tmp_path / "m.safetensors"), str(tmp_path / "out")
    command = f"from convert.cli import main\nsys.argv = ['convert', 'auto', {src!r}, {out!r}]\n"
    run = command + "try:\n    main()\nexcept SystemExit:\n    pass\n"
    if face == "library":
        run = f"from convert.api import convert_path\nconvert_path({src!r}, {out!r})\n"
    probe = (
        "import numpy as np\n"
        "chunk = np.empty(8 << 20, np.uint8).ctypes.data\n"
        "heaps = [line.split()[0].split('-') for line in open('/proc/self/maps') if line.rstrip().endswith('[heap]')]\n"
        "print(any(int(lo, 16) <= chunk < int(hi, 16) for lo, hi in heaps))\n"
        "import ctypes, threading\n"
        "together = threading.Barrier(4)\n"
        "def allocate():\n"
        "    held = np.ones(1 << 20)\n"
        "    together.wait()\n"
        "threads = [threading.Thread(target=allocate) for _ in range(4)]\n"
        "[t.start() for t in threads]; [t.join() for t in threads]\n"
        "libc = ctypes.CDLL(None)\n"
        "libc.fopen.restype = ctypes.c_void_p\n"
        "libc.malloc_info.argtypes, libc.fclose.argtypes = [ctypes.c_int, ctypes.c_void_p], [ctypes.c_void_p]\n"
        f"report = libc.fopen({str(tmp_path / 'arenas.xml').encode()!r}, b'w')\n"
        "libc.malloc_info(0, report); libc.fclose(report)\n"
    )
    done = subprocess.run([sys.executable, "-c", "import sys\n" + run + probe], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split()[-1] == str(face == "command")
    arenas = (tmp_path / "arenas.xml").read_text().count("<heap nr=")
    assert arenas <= 2 if face == "command" else arenas > 2, arenas
    assert (tmp_path / "out" / "manifest.json").is_file()


# ---------------------------------------------------------------------------------------------
# conversion behaviour
# ---------------------------------------------------------------------------------------------


def test_default_output_line(small_checkpoint: Path, small_state_dict: dict[str, Any], tmp_path: Path) -> None:
    rc, stdout, stderr = run_cli("pth-to-safetensors", small_checkpoint, tmp_path / "out")
    assert rc == 0 and stderr == "", stderr
    assert stdout.startswith(f"wrote {tmp_path / 'out'}") and f"{len(small_state_dict)} tensors" in stdout
    assert len(stdout.splitlines()) == 1
    read_manifest(tmp_path / "out")


def test_dry_run_writes_nothing_and_prints_the_plan(
    small_checkpoint: Path, small_state_dict: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli("pth-to-safetensors", small_checkpoint, out, "--dry-run")
    assert rc == 0, stderr
    assert_no_output(out)
    lines = stdout.splitlines()
    for name, t in small_state_dict.items():
        row = next((ln for ln in lines if f"  {name}  " in ln), None)
        assert row is not None, f"{name} missing from the plan:\n{stdout}"
        assert st_code(t.dtype) in row and str(t.numel() * t.element_size()) in row.split()[-1]
    assert lines[-1].startswith("dry run: would write 1 file(s)") and f"{len(small_state_dict)} tensors" in lines[-1]
    # machine-readable plan
    rc, stdout, _ = run_cli("pth-to-safetensors", small_checkpoint, out, "--dry-run", "--json")
    assert rc == 0
    assert_no_output(out)
    doc = json.loads(stdout)
    assert doc["dry_run"] is True and doc["files"] == ["model.safetensors"]
    plan = {row["name"]: row for row in doc["plan"]}
    for name, t in small_state_dict.items():
        assert plan[name] == {
            "name": name,
            "file": "model.safetensors",
            "dtype": st_code(t.dtype),
            "shape": list(t.shape),
            "bytes": t.numel() * t.element_size(),
        }


def test_dry_run_with_shards_plans_shard_names(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    src = save_checkpoint({f"w{i}": torch.randn(100) for i in range(5)})
    rc, stdout, _ = run_cli("pth-to-safetensors", src, tmp_path / "out", "--dry-run", "--json", "--max-shard-size", "900B")
    assert rc == 0
    doc = json.loads(stdout)
    assert doc["files"] == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert_no_output(tmp_path / "out")


def test_existing_output_is_not_clobbered(small_checkpoint: Path, save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    out = tmp_path / "out"
    convert_cli(small_checkpoint, out)
    before = listing(out)
    other_state = {"other.weight": torch.ones(2, 2)}
    other = save_checkpoint(other_state, name="other.pt")
    assert_cli_error(run_cli("pth-to-safetensors", other, out), 9, str(out), "--overwrite")
    assert listing(out) == before
    # also with --dry-run and --json: refused before any work
    assert_cli_error(run_cli("pth-to-safetensors", other, out, "--dry-run"), 9)
    assert_cli_error(run_cli("pth-to-safetensors", other, out, "--json"), 9)
    assert listing(out) == before
    # --overwrite replaces it completely, and leaves no staging folder behind
    rc, _, stderr = run_cli("pth-to-safetensors", other, out, "--overwrite")
    assert rc == 0, stderr
    assert_same_state(load_output(out), other_state)
    assert read_manifest(out)["source"]["files"][0]["path"].endswith("other.pt")
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_folder_with_foreign_files_is_not_clobbered(small_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    assert_cli_error(run_cli("pth-to-safetensors", small_checkpoint, out), 9)
    assert listing(out) == {"notes.txt": b"mine"}


def test_existing_file_as_output_is_refused(small_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.write_bytes(b"precious")
    assert_cli_error(run_cli("pth-to-safetensors", small_checkpoint, out, "--overwrite"), 9)
    assert out.read_bytes() == b"precious"


def test_empty_existing_folder_is_used(small_checkpoint: Path, small_state_dict: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    convert_cli(small_checkpoint, out)
    assert_same_state(load_output(out), small_state_dict)


def test_json_result(small_checkpoint: Path, small_state_dict: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli("pth-to-safetensors", small_checkpoint, out, "--json")
    assert rc == 0 and stderr == ""
    doc = json.loads(stdout)
    assert doc["output"] == str(out.absolute())
    assert doc["files"] == ["model.safetensors"]
    assert doc["tensors"] == len(small_state_dict)
    assert doc["bytes"] == sum(t.numel() * t.element_size() for t in small_state_dict.values())
    assert doc["aliases"] == {} and doc["dry_run"] is False
    assert isinstance(doc["seconds"], (int, float)) and doc["seconds"] >= 0
    read_manifest(out)


def test_json_result_reports_aliases(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    w = torch.randn(4, 3)
    src = save_checkpoint({"a": w, "b": w})
    rc, stdout, _ = run_cli("pth-to-safetensors", src, tmp_path / "out", "--json")
    assert rc == 0
    doc = json.loads(stdout)
    assert doc["aliases"] == {"b": "a"} and doc["tensors"] == 1 and doc["bytes"] == 48
    read_manifest(tmp_path / "out")


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_prints_nothing(where: str, small_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    args = ["pth-to-safetensors", small_checkpoint, out]
    rc, stdout, stderr = run_cli(*(["-q", *args] if where == "before" else [*args, "-q"]))
    assert (rc, stdout, stderr) == (0, "", "")
    read_manifest(out)
    rc, stdout, stderr = run_cli("verify", out, "-q")
    assert (rc, stdout, stderr) == (0, "", "")


def test_quiet_cast_with_overflow_prints_nothing(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """Values beyond float16's range are refused unless --cast-loss accept, which makes them inf as
    torch's .half() does, without noise under -q."""
    src = save_checkpoint({"x": torch.tensor([1.0, 70000.0, -1e39, 3.0e38], dtype=torch.float64)})
    assert_cli_error(run_cli("-q", "pth-to-safetensors", src, tmp_path / "out", "--dtype", "f16"), 7, "'x'")
    rc, stdout, stderr = run_cli("-q", "pth-to-safetensors", src, tmp_path / "out", "--dtype", "f16", "--cast-loss", "accept")
    assert (rc, stdout, stderr) == (0, "", "")
    expected = torch.tensor([1.0, 70000.0, -1e39, 3.0e38], dtype=torch.float64).half()
    assert torch.equal(load_output(tmp_path / "out")["x"], expected)
    rc, stdout, stderr = run_cli("-q", "verify", tmp_path / "out", "--source", src)
    assert (rc, stdout, stderr) == (0, "", "")


def test_verbose_error_has_traceback_and_the_same_exit_code(tmp_path: Path) -> None:
    out = tmp_path / "out"
    rc, _, stderr = run_cli("-v", "pth-to-safetensors", tmp_path / "nope.pt", out)
    assert rc == 3
    assert "Traceback" in stderr and stderr.splitlines()[-1].startswith("convert: error: ")
    assert_no_output(out)


# ---------------------------------------------------------------------------------------------
# inspect
# ---------------------------------------------------------------------------------------------


def test_inspect_json_lists_the_tensors(save_checkpoint: Callable[..., Path]) -> None:
    state = {
        "emb": torch.randn(5, 3),
        "ids": torch.arange(7, dtype=torch.int32),
        "mask": torch.ones(2, 2, dtype=torch.bool),
        "half": torch.randn(3).half(),
        "scalar": torch.tensor(2.0, dtype=torch.float64),
        "view": torch.randn(4, 6).t(),
    }
    src = save_checkpoint(state)
    rc, stdout, stderr = run_cli("inspect", src, "--json")
    assert rc == 0 and stderr == ""
    doc = json.loads(stdout)
    assert doc["format"] == "pytorch-zip"
    got = {t["name"]: t for t in doc["tensors"]}
    assert list(got) == list(state)
    for name, t in state.items():
        assert got[name] == {
            "name": name,
            "dtype": st_code(t.dtype),
            "shape": list(t.shape),
            "bytes": t.numel() * t.element_size(),
        }
    assert doc["bytes"] == sum(t.numel() * t.element_size() for t in state.values())


def test_inspect_text_and_output_folder(small_checkpoint: Path, small_state_dict: dict[str, Any], tmp_path: Path) -> None:
    rc, stdout, _ = run_cli("inspect", small_checkpoint)
    assert rc == 0
    lines = stdout.splitlines()
    assert len(lines) == len(small_state_dict) + 1
    for name in small_state_dict:
        assert any(line.startswith(f"{name}  ") for line in lines), name
    convert_cli(small_checkpoint, tmp_path / "out")
    rc, stdout, _ = run_cli("inspect", tmp_path / "out", "--json")
    assert rc == 0
    doc = json.loads(stdout)
    assert doc["format"] == "safetensors"
    assert {t["name"]: t["shape"] for t in doc["tensors"]} == {k: list(v.shape) for k, v in small_state_dict.items()}


def test_inspect_with_key(save_checkpoint: Callable[..., Path]) -> None:
    src = save_checkpoint({"model": {"ema": {"w": torch.zeros(2, 5)}}, "epoch": 1})
    rc, stdout, _ = run_cli("inspect", src, "--key", "model.ema", "--json")
    assert rc == 0
    assert [(t["name"], t["shape"]) for t in json.loads(stdout)["tensors"]] == [("w", [2, 5])]


# ---------------------------------------------------------------------------------------------
# user errors: one line, documented code, nothing written
# ---------------------------------------------------------------------------------------------


def random_bytes(n: int, seed: int) -> bytes:
    data = bytearray(random.Random(seed).randbytes(n))
    data[0] = 0x42  # not a pickle (0x80) or zip (PK) lead byte
    return bytes(data)


NOT_TORCH: dict[str, Callable[[Path], None]] = {
    "random-bytes": lambda p: p.write_bytes(random_bytes(4096, 1)),
    "text": lambda p: p.write_text("this is a README, not a checkpoint\n" * 20),
    "empty": lambda p: p.write_bytes(b""),
    "json": lambda p: p.write_text(json.dumps({"weight": [1.0, 2.0]})),
    "plain-zip": lambda p: _write_zip(p),
    "plain-pickle": lambda p: p.write_bytes(pickle.dumps({"weight": [1.0, 2.0]}, protocol=2)),
}


def _write_zip(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("readme.txt", "hello")


@pytest.mark.parametrize("kind", sorted(NOT_TORCH))
def test_not_a_torch_file(kind: str, tmp_path: Path) -> None:
    src = tmp_path / f"{kind}.pt"
    NOT_TORCH[kind](src)
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out), 4, src.name)
    assert_no_output(out)
    assert_cli_error(run_cli("inspect", src), 4)


def test_missing_source(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", tmp_path / "absent.pt", out), 3, "absent.pt")
    assert_no_output(out)
    assert_cli_error(run_cli("inspect", tmp_path / "absent.pt"), 3, "absent.pt")


def test_folder_without_weights(tmp_path: Path) -> None:
    src = tmp_path / "empty_model"
    src.mkdir()
    (src / "config.json").write_text("{}")
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out), 3, "pytorch_model.bin")
    assert_no_output(out)


def test_unknown_layout(small_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", small_checkpoint, out, "--layout", "no-such-layout"), 2, "no-such-layout")
    assert_no_output(out)


@pytest.mark.parametrize(
    "args",
    [["--max-shard-size", "lots"], ["--max-shard-size", "0"], ["--max-shard-size", "-5MB"], ["--dtype", "f8"], ["--bogus-flag"]],
    ids=["size-word", "size-zero", "size-negative", "dtype", "unknown-flag"],
)
def test_bad_options(args: list[str], small_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", small_checkpoint, out, *args), 2)
    assert_no_output(out)


def test_missing_argument(small_checkpoint: Path) -> None:
    assert_cli_error(run_cli("pth-to-safetensors", small_checkpoint), 2)


def test_missing_key(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    src = save_checkpoint({"model": {"w": torch.zeros(1)}})
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out, "--key", "model.ema"), 3, "model.ema")
    assert_no_output(out)


@pytest.mark.parametrize(
    "obj",
    [
        {"a.b": torch.ones(2), "a": {"b": torch.zeros(3)}},
        {0: torch.ones(2), "0": torch.zeros(3)},
    ],
    ids=["dotted-vs-nested", "int-vs-str-key"],
)
def test_two_tensors_with_one_name(obj: dict[Any, Any], save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """Flattening must not let one tensor silently replace another."""
    src = save_checkpoint(obj)
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out), 7, "two tensors")
    assert_no_output(out)


def test_overwrite_never_deletes_the_source(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """--overwrite replaces only an earlier output; a folder holding the source is refused as such
    (exit 2, as for every reader and a NeuralForecast bundle), before anything is read or written."""
    src = save_checkpoint({"w": torch.ones(3)}, name="work/model.pt")
    (src.parent / "notes.txt").write_text("keep me")
    before = listing(src.parent)
    assert_cli_error(run_cli("pth-to-safetensors", src, src.parent, "--overwrite"), 2, "holds the source model.pt")
    assert listing(src.parent) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["work"]


def test_overwrite_never_deletes_a_source_folder(gpt2_folders: dict[str, Any], tmp_path: Path) -> None:
    import shutil

    src = tmp_path / "model"
    shutil.copytree(gpt2_folders["single"], src)
    before = listing(src)
    assert_cli_error(run_cli("pth-to-safetensors", src, src, "--overwrite"), 2, "holds the source")
    assert listing(src) == before


def test_checkpoint_without_tensors(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    src = save_checkpoint({"epoch": 3, "note": "no weights here"})
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out), 4, "no tensors")
    assert_no_output(out)


def test_bare_tensor_checkpoint(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    src = save_checkpoint(torch.zeros(3))
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out), 4)
    assert_no_output(out)


@pytest.mark.parametrize("kind", ["complex128", "quantized", "sparse"])
def test_tensors_safetensors_cannot_hold(kind: str, save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """Real tensors with no SafeTensors equivalent are unsupported (4), not treated as hostile (5)."""
    if kind == "complex128":
        t = torch.randn(3, dtype=torch.complex128)
    elif kind == "quantized":
        with warnings.catch_warnings():  # quantized tensors are deprecated, and still saved by users
            warnings.simplefilter("ignore")
            t = torch.quantize_per_tensor(torch.randn(4), 0.1, 0, torch.qint8)
    else:
        t = torch.randn(3, 3).to_sparse()
    for legacy in (False, True):
        src = save_checkpoint({"w": torch.zeros(2), "x": t}, name=f"{kind}-{legacy}.pt", legacy=legacy)
        out = tmp_path / "out"
        assert_cli_error(run_cli("pth-to-safetensors", src, out), 4)
        assert_no_output(out)


# ---------------------------------------------------------------------------------------------
# verify
# ---------------------------------------------------------------------------------------------


def test_verify_passes_on_a_good_output(small_checkpoint: Path, small_state_dict: dict[str, Any], tmp_path: Path) -> None:
    out = tmp_path / "out"
    convert_cli(small_checkpoint, out)
    rc, stdout, stderr = run_cli("verify", out)
    assert rc == 0 and stderr == ""
    assert stdout.startswith("ok: 1 file(s), 5 tensors")
    rc, stdout, stderr = run_cli("verify", out, "--source", small_checkpoint)
    assert rc == 0 and stderr == "" and f"{len(small_state_dict)} compared with the source" in stdout
    rc, stdout, _ = run_cli("verify", out, "--source", small_checkpoint, "--json")
    doc = json.loads(stdout)
    assert rc == 0 and doc["ok"] is True and doc["problems"] == [] and doc["compared_with_source"] == len(small_state_dict)


def test_verify_sharded_output(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    src = save_checkpoint({f"layer{i}.weight": torch.randn(30, 10) for i in range(4)})
    out = tmp_path / "out"
    convert_cli(src, out, "--max-shard-size", "1500B")
    assert read_manifest(out)["index"] == "model.safetensors.index.json"
    rc, stdout, stderr = run_cli("verify", out, "--source", src)
    assert rc == 0, stderr
    assert stdout.startswith("ok: 4 file(s)")


def flip_byte_in(out: Path, name: str) -> None:
    """Invert one byte in the middle of a tensor's data, located from the manifest."""
    doc = read_manifest(out)
    entry = next(t for t in doc["tensors"] if t["name"] == name)
    path = out / entry["file"]
    begin, end = entry["data_offsets"]
    pos = header_length(path) + (begin + end) // 2
    data = bytearray(path.read_bytes())
    data[pos] ^= 0xFF
    path.write_bytes(bytes(data))


def test_verify_detects_a_flipped_byte(small_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    convert_cli(small_checkpoint, out)
    flip_byte_in(out, "encoder.weight")
    line = assert_cli_error(run_cli("verify", out), 8, "encoder.weight")
    assert "decoder.weight" not in line
    rc, stdout, stderr = run_cli("verify", out, "--json")
    assert rc == 8
    doc = json.loads(stdout)
    assert doc["ok"] is False and any("encoder.weight" in p for p in doc["problems"])
    assert not any("decoder" in p for p in doc["problems"])
    assert_one_line_error(stderr, "encoder.weight")


def test_verify_detects_a_flipped_byte_in_a_shard(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    src = save_checkpoint({f"layer{i}.weight": torch.randn(30, 10) for i in range(4)})
    out = tmp_path / "out"
    convert_cli(src, out, "--max-shard-size", "2500B")
    flip_byte_in(out, "layer2.weight")
    assert_cli_error(run_cli("verify", out), 8, "layer2.weight")


def test_verify_detects_a_changed_source(
    save_checkpoint: Callable[..., Path], small_state_dict: dict[str, Any], tmp_path: Path
) -> None:
    src = save_checkpoint(small_state_dict)
    out = tmp_path / "out"
    convert_cli(src, out)
    changed = dict(small_state_dict)
    changed["decoder.weight"] = changed["decoder.weight"].clone()
    changed["decoder.weight"][1, 2] += 1e-3
    other = save_checkpoint(changed, name="other.pt")
    line = assert_cli_error(run_cli("verify", out, "--source", other), 8, "decoder.weight")
    assert "encoder" not in line
    assert_cli_error(run_cli("verify", out, "--source", tmp_path / "absent.pt"), 3)


def test_verify_a_folder_that_is_not_an_output(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    assert_cli_error(run_cli("verify", tmp_path / "x"), 3, "manifest.json")


def test_verify_detects_a_missing_output_file(small_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    convert_cli(small_checkpoint, out)
    (out / "model.safetensors").unlink()
    assert_cli_error(run_cli("verify", out), 8, "model.safetensors")
