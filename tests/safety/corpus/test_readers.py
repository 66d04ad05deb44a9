"""The hostile corpus beyond PyTorch pickles -- SafeTensors headers, Flax msgpack, HDF5 and .keras
files, NeuralForecast save folders, TorchScript archives, NumPy files and pickles, TFLite
flatbuffers -- and `convert auto` on every corpus entry.

Each file goes through `convert auto`, `convert inspect` and its format's own command, each in an
empty working folder: refused with one line on stderr and the exit code of its class, nothing run
(a payload would leave a file named `canary` there), nothing written (no output, no staging
folder). Entries catalogued as "inert" (Keras Lambda layers, TorchScript code in forward) convert,
with their code neither run nor carried into the output. A format whose reader is not installed is skipped naming the reader,
after checking that `convert auto` still refuses the file cleanly (exit 4).

All invocations run in a child process (the CLI in-process through click's runner, each under a
watchdog, the child under an address-space limit), so a payload that did run could not touch the
test process. A hang inside C code (libhdf5 has had such bugs) ends the child; that file is reported
as failed and a new child carries on with the next. A few go through the real `convert` executable.
"""

from __future__ import annotations

import faulthandler
import importlib.util
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, assert_one_line_error, count_inputs, run_cli

CORPUS = REPO / "fixtures" / "hostile"
CATALOG: list[dict[str, str]] = json.loads((CORPUS / "catalog.json").read_text())
PICKLE_KINDS = ("zip", "legacy", "raw-pickle")  # exact codes: test_pytorch.py beside it
READER_OF = {
    "zip": "pytorch",
    "legacy": "pytorch",
    "raw-pickle": "pytorch",
    "safetensors": "safetensors",
    "msgpack": "flax",
    "hdf5": "keras",
    "keras": "keras",
    "neuralforecast": "neuralforecast",
    "torchscript": "pytorch",
    "npy": "numpy",
    "npz": "numpy",
    "numpy-pickle": "numpy",
    "tflite": "tflite",
}
UNSUPPORTED, UNSAFE, CORRUPT = 4, 5, 6
# Expected exit codes of the files that are not pickles; anything not listed is corrupt (6).
EXIT_CODES: dict[str, int] = {
    "msgpack_dtype_object.msgpack": UNSUPPORTED,  # a dtype SafeTensors has no equivalent for, as for pickles
    "h5_external_storage.h5": UNSAFE,
    "h5_external_link.h5": UNSAFE,
    "keras_external_storage.keras": UNSAFE,
    "nf_unknown_class": UNSAFE,
    "nf_os_system": UNSAFE,
    "nf_ckpt_os_system": UNSAFE,
    # TorchScript: a gadget in a pickle, or a storage outside the archive, is unsafe; a module whose
    # state only its own __setstate__ code can interpret is not something a reader that runs no code reads
    "ts_setstate_from_file.pt": UNSUPPORTED,
    "ts_data_os_system.pt": UNSAFE,
    "ts_constants_exec.pt": UNSAFE,
    "ts_typed_list_gadget.pt": UNSAFE,
    "ts_torch_class_getattr.pt": UNSAFE,
    "ts_storage_dotdot.pt": UNSAFE,
    "ts_constants_storage_absolute.pt": UNSAFE,
    # NumPy: gadgets beside or inside arrays; _reconstruct of a class that is not ndarray
    "npy_object_os_system.npy": UNSAFE,
    "npy_object_dict_gadget.npy": UNSAFE,
    "npz_object_member.npz": UNSAFE,
    "np_dict_gadget.pkl": UNSAFE,
    "np_object_items_gadget.pkl": UNSAFE,
    "np_reconstruct_not_ndarray.pkl": UNSAFE,
}
# What an output carrying the hostile code would hold: a Keras Lambda's marker and the start of its base64
# marshalled code, TorchScript's payload call, the canary's name.
CODE_MARKERS = ("__lambda__", "4wEAAAAAAAAAAAAAAAQAAAADAAAA", "torch.from_file", "canary")
LAMBDA_KINDS = ("hdf5", "keras")  # their converters warn that the Lambda code was dropped
CHILD_MEMORY = 3 << 30
WATCHDOG_SECONDS = 60


def reader_installed(kind: str) -> bool:
    from exporters.registry import READERS

    return any(face.kind == kind for face in READERS)


def commands_for(entry: dict[str, str]) -> list[str]:
    """`auto` for every entry; for other formats also `inspect` and the format's own command."""
    if entry["kind"] in PICKLE_KINDS:
        return ["auto", "pth-to-safetensors"]
    from convert.cli import cli
    from exporters.registry import READERS

    own = next((face.command for face in READERS if face.kind == READER_OF[entry["kind"]]), None)
    return ["auto", "inspect"] + ([own] if own in cli.commands else [])


# ---------------------------------------------------------------------------------------------
# The child: every invocation through the CLI in-process, each in an empty folder
# ---------------------------------------------------------------------------------------------


def _fire(signum: int, frame: Any) -> None:
    raise TimeoutError(f"no answer within {WATCHDOG_SECONDS} s")


def drive(plan: list[dict[str, Any]], work: Path, results_path: Path) -> None:
    """Run each {file, command} of the plan; append to `results_path` one JSON line per invocation:
    exit code, output, and what the cwd holds after."""
    from click.testing import CliRunner

    from convert.cli import cli

    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    signal.signal(signal.SIGALRM, _fire)
    runner = CliRunner()
    results = open(results_path, "a", encoding="utf-8")
    for i, item in enumerate(plan):
        cwd = work / str(i)
        cwd.mkdir()
        os.chdir(cwd)
        args = [item["command"], str(CORPUS / item["file"])] + ([] if item["command"] == "inspect" else ["out"])
        signal.alarm(WATCHDOG_SECONDS)  # a hang in Python code: an exception
        faulthandler.dump_traceback_later(2 * WATCHDOG_SECONDS, exit=True)  # a hang in C code: the child ends
        try:
            result = runner.invoke(cli, args, catch_exceptions=True)
        finally:
            signal.alarm(0)
            faulthandler.cancel_dump_traceback_later()
        os.chdir(work)
        left = sorted(os.listdir(cwd))
        written = (
            "".join(p.read_text("utf-8", "replace") for p in (cwd / "out").rglob("*") if p.is_file())
            if (cwd / "out").is_dir()
            else ""
        )
        exception = result.exception if result.exception and not isinstance(result.exception, SystemExit) else None
        results.write(
            json.dumps(
                {
                    **item,
                    "exit": result.exit_code,
                    "stdout": result.stdout,
                    "stderr": result.stderr,
                    "exception": repr(exception) if exception else None,
                    "left": left,
                    "carries_code": [m for m in CODE_MARKERS if m in written],
                }
            )
            + "\n"
        )
        results.flush()
        shutil.rmtree(cwd, ignore_errors=True)


def run_children(plan: list[dict[str, Any]], work: Path) -> list[dict[str, Any]]:
    """The plan through child processes; where one dies, its invocation is a failure and the next
    child starts after it."""
    results: list[dict[str, Any]] = []
    while len(results) < len(plan):
        rest = plan[len(results) :]
        (work / "plan.json").write_text(json.dumps(rest))
        out = work / "results.jsonl"
        out.unlink(missing_ok=True)
        proc = subprocess.run(
            [sys.executable, __file__, str(work / "plan.json"), str(out)],
            capture_output=True,
            text=True,
            timeout=900,
            cwd=work,
            env={**os.environ, "PYTHONPATH": str(REPO)},  # the child imports tests.support
        )
        done = [json.loads(line) for line in out.read_text().splitlines()] if out.exists() else []
        results += done
        if len(done) < len(rest):
            died = f"the child process died (exit {proc.returncode}), a hang or crash below Python: {proc.stderr[-1500:]}"
            results.append(
                {**rest[len(done)], "exit": None, "stdout": "", "stderr": "", "exception": died, "left": [], "carries_code": []}
            )
    return results


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, str], dict[str, Any]]:
    """Every planned invocation, run by child processes (this module run as a script)."""
    plan = [{"file": e["file"], "command": c} for e in CATALOG for c in commands_for(e)]
    results = run_children(plan, tmp_path_factory.mktemp("hostile-readers"))
    count_inputs("hostile corpus", "invocations", len(results))
    return {(r["file"], r["command"]): r for r in results}


# ---------------------------------------------------------------------------------------------
# Tests
# ---------------------------------------------------------------------------------------------


def assert_refused(run: dict[str, Any], code: int) -> None:
    where = f"{run['command']} {run['file']}"
    assert run["exception"] is None, f"{where}: {run['exception']}"
    assert run["exit"] == code, f"{where}: exit {run['exit']}, expected {code}: {run['stderr']}"
    assert "canary" not in run["left"], f"{where}: the payload ran"
    assert run["left"] == [], f"{where}: left behind {run['left']}"
    assert_one_line_error(run["stderr"])
    assert run["stdout"] == ""


@pytest.mark.parametrize("entry", [e for e in CATALOG if e["kind"] not in PICKLE_KINDS], ids=lambda e: e["file"])
def test_other_formats(entry: dict[str, str], runs: dict[tuple[str, str], dict[str, Any]]) -> None:
    reader = READER_OF[entry["kind"]]
    auto = runs[(entry["file"], "auto")]
    if not reader_installed(reader):
        assert_refused(auto, UNSUPPORTED)
        assert "cannot read" in auto["stderr"], auto["stderr"]
        pytest.skip(
            f"no {reader} reader installed: `convert auto` refuses the file (exit 4); the reader's own checks run once it exists"
        )
    for command in commands_for(entry):
        run = runs[(entry["file"], command)]
        if entry["expect"] == "inert":
            assert run["exception"] is None and run["exit"] == 0, f"{command}: exit {run['exit']}: {run['stderr']}"
            assert "canary" not in run["left"], "the payload ran"
            assert run["left"] == ([] if command == "inspect" else ["out"]), run["left"]
            assert not run["carries_code"], f"{command}: the output carries {run['carries_code']}"
            if command != "inspect" and entry["kind"] in LAMBDA_KINDS:
                assert "Lambda" in run["stderr"], f"no warning about the dropped Lambda code: {run['stderr']!r}"
        else:
            assert_refused(run, EXIT_CODES.get(entry["file"], CORRUPT))


@pytest.mark.parametrize("entry", [e for e in CATALOG if e["kind"] in PICKLE_KINDS], ids=lambda e: e["file"])
def test_auto_refuses_pickles_as_the_torch_command_does(
    entry: dict[str, str], runs: dict[tuple[str, str], dict[str, Any]]
) -> None:
    auto, direct = runs[(entry["file"], "auto")], runs[(entry["file"], "pth-to-safetensors")]
    if entry["expect"] == "inert":  # an unknown class beside the weights: both convert, nothing run or carried
        for run in (auto, direct):
            assert run["exception"] is None and run["exit"] == 0, f"{run['command']}: exit {run['exit']}: {run['stderr']}"
            assert run["left"] == ["out"], run["left"]
            assert not run["carries_code"], run["carries_code"]
        return
    assert auto["exit"] in (UNSUPPORTED, UNSAFE, CORRUPT)
    assert_refused(auto, direct["exit"])
    assert_refused(direct, auto["exit"])


def test_corpus_covers_every_format() -> None:
    """At least 25 hostile files besides the pickles, and every kind of container represented."""
    kinds = {e["kind"] for e in CATALOG}
    assert {"safetensors", "msgpack", "neuralforecast", "torchscript", "npy", "npz", "numpy-pickle", "tflite"} <= kinds
    if importlib.util.find_spec("h5py"):
        assert {"hdf5", "keras"} <= kinds
    assert sum(e["kind"] not in PICKLE_KINDS for e in CATALOG) >= 25


@pytest.mark.parametrize(
    "file",
    [
        "st_header_over_limit.safetensors",
        "msgpack_map_2pow32.msgpack",
        "h5_external_link.h5",
        "nf_os_system",
        "ts_data_os_system.pt",
        "npz_object_member.npz",
        "tflite_shape_wraps_int64.tflite",
    ],
)
def test_real_executable_prints_one_line(file: str, tmp_path: Path) -> None:
    """The console script itself (not the in-process runner) on one file of each reader."""
    entry = next(e for e in CATALOG if e["file"] == file)
    if not reader_installed(READER_OF[entry["kind"]]):
        pytest.skip(f"no {READER_OF[entry['kind']]} reader installed")
    rc, stdout, stderr = run_cli("auto", CORPUS / file, "out", cwd=tmp_path, timeout=120)
    assert rc == EXIT_CODES.get(file, CORRUPT), stderr
    assert_one_line_error(stderr)
    assert os.listdir(tmp_path) == [], os.listdir(tmp_path)


if __name__ == "__main__":  # the child process of the `runs` fixture
    plan_path, results_path = map(Path, sys.argv[1:3])
    with tempfile.TemporaryDirectory(dir=plan_path.parent) as scratch:
        drive(json.loads(plan_path.read_text()), Path(scratch), results_path)
