"""The command line's friction as a new user met it, each point held by a test: global
options on either side of the subcommand, --json errors, help pages, dtype and size spellings,
inspect's table, batch taking every conversion option, verify on a NeuralForecast output, and
messages that name the command a wrong-format source needs."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch", reason="needs torch to write real checkpoints")

from convert.cli import cli as cli_group  # noqa: E402
from convert.errors import EXIT_CODES  # noqa: E402
from tests.support import REPO, assert_cli_error, assert_no_output, assert_one_line_error, load_output, read_manifest, run_cli  # noqa: E402

NF_FOLDER = REPO / "fixtures" / "neuralforecast" / "3.3.0" / "folder"


@pytest.fixture
def model_pt(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    path = tmp_path / "model.pt"
    torch.save(torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Linear(8, 3)).state_dict(), path)
    return path


# --- global options --------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["before", "after"])
def test_quiet_and_json_before_or_after_the_subcommand(where: str, model_pt: Path, tmp_path: Path) -> None:
    flags = ["-q", "--json"]
    args = (
        [*flags, "pth-to-safetensors", model_pt, tmp_path / "out"]
        if where == "before"
        else ["pth-to-safetensors", model_pt, tmp_path / "out", *flags]
    )
    rc, stdout, stderr = run_cli(*args)
    assert rc == 0 and stderr == "", stderr
    assert json.loads(stdout)["tensors"] == 4


def test_verbose_before_the_subcommand_prints_the_traceback(tmp_path: Path) -> None:
    rc, _, stderr = run_cli("-v", "inspect", tmp_path / "missing.pt")
    assert (
        rc == 3 and "Traceback" in stderr and stderr.rstrip().endswith("no such file or folder: " + str(tmp_path / "missing.pt"))
    )


@pytest.mark.parametrize(
    "args, code, kind",
    [
        (["--json", "inspect", "{tmp}/missing.pt"], 3, "not-found"),
        (["inspect", "{tmp}/missing.pt", "--json"], 3, "not-found"),
        (["--json", "pth-to-safetensors", "{src}", "{tmp}/o", "--layout", "nope"], 2, "usage"),
        (["pth-to-safetensors", "{src}", "{tmp}/o", "--json", "--bogus"], 2, "usage"),
        (["--json", "batch"], 2, "usage"),
    ],
)
def test_json_errors_are_one_object_on_stdout_and_one_line_on_stderr(
    args: list[str], code: int, kind: str, model_pt: Path, tmp_path: Path
) -> None:
    rc, stdout, stderr = run_cli(*(a.format(tmp=tmp_path, src=model_pt) for a in args))
    line = assert_one_line_error(stderr)
    assert rc == code
    doc = json.loads(stdout)  # exactly one JSON document
    assert doc == {"error": line.removeprefix("convert: error: "), "exit_code": code, "kind": kind}
    assert_no_output(tmp_path / "o")


def test_a_failed_verify_with_json_is_one_object_with_the_report(model_pt: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("pth-to-safetensors", model_pt, out)[0] == 0
    data = bytearray((out / "model.safetensors").read_bytes())
    data[-1] ^= 0xFF
    (out / "model.safetensors").write_bytes(bytes(data))
    rc, stdout, stderr = run_cli("--json", "verify", out)
    assert rc == 8
    doc = json.loads(stdout)
    assert doc["ok"] is False and doc["problems"] and doc["exit_code"] == 8 and doc["kind"] == "verify"
    assert_one_line_error(stderr, doc["error"])


# --- help ------------------------------------------------------------------------------------


def test_top_level_help_gives_each_command_its_whole_summary_on_one_line() -> None:
    rc, stdout, _ = run_cli("--help")
    assert rc == 0
    for name, command in cli_group.commands.items():
        line = next(ln for ln in stdout.splitlines() if re.match(rf"^\s+{re.escape(name)}\s", ln))
        summary = command.get_short_help_str(limit=1000)
        assert line.split(None, 1)[1] == summary, (name, line)
        assert not summary.endswith("...") and len(line) <= 80
    assert "Examples:" in stdout
    table = re.findall(r"^\s+(\d+)  (\S.*)$", stdout, re.M)
    assert {int(c): t for c, t in table} == EXIT_CODES
    assert all(t[0].islower() and not t.endswith(".") for _, t in table), table


def test_batch_options_have_help_text() -> None:
    for param in cli_group.commands["batch"].params:
        if param.param_type_name == "option" and param.name not in ("help",):
            assert getattr(param, "help", None), param.name


# --- spellings -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "spelling, canonical, code",
    [
        ("fp16", "f16", "F16"),
        ("half", "f16", "F16"),
        ("bfloat16", "bf16", "BF16"),
        ("float32", "f32", "F32"),
        ("FP16", "f16", "F16"),
    ],
)
def test_dtype_aliases_record_the_canonical_name(
    spelling: str, canonical: str, code: str, model_pt: Path, tmp_path: Path
) -> None:
    rc, _, stderr = run_cli("pth-to-safetensors", model_pt, tmp_path / "out", "--dtype", spelling)
    assert rc == 0, stderr
    doc = read_manifest(tmp_path / "out")
    assert doc["target"]["dtype"] == canonical
    assert {t["dtype"] for t in doc["tensors"]} == {code}


def test_an_unknown_dtype_is_refused(model_pt: Path, tmp_path: Path) -> None:
    assert_cli_error(run_cli("pth-to-safetensors", model_pt, tmp_path / "out", "--dtype", "fp8"), 2, "fp8")
    assert_no_output(tmp_path / "out")


def test_dtype_alias_through_the_python_api(model_pt: Path, tmp_path: Path) -> None:
    from convert.api import pth_to_safetensors

    pth_to_safetensors(model_pt, tmp_path / "out", dtype="half")
    assert read_manifest(tmp_path / "out")["target"]["dtype"] == "f16"


@pytest.mark.parametrize(
    "text, size",
    [
        ("5G", 5 * 10**9),
        ("500M", 500 * 10**6),
        ("5GB", 5 * 10**9),
        ("2GiB", 2 * 2**30),
        ("2Gi", 2 * 2**30),
        ("300k", 300_000),
        ("1000", 1000),
    ],
)
def test_size_spellings(text: str, size: int) -> None:
    from convert.api import parse_size

    assert parse_size(text) == size


def test_a_tensor_larger_than_a_shard_is_reported(model_pt: Path, tmp_path: Path) -> None:
    rc, stdout, stderr = run_cli("pth-to-safetensors", model_pt, tmp_path / "out", "--max-shard-size", "100")
    assert rc == 0
    warned = [ln for ln in stderr.splitlines() if ln.startswith("convert: warning: ")]
    assert {ln.split()[2] for ln in warned} == {"0.weight"}, stderr  # 192 bytes; 1.weight has 96
    assert all("larger than --max-shard-size (100 bytes)" in ln for ln in warned)
    assert len(load_output(tmp_path / "out")) == 4


# --- what commands print ---------------------------------------------------------------------


def test_inspect_aligns_columns_and_gives_totals(model_pt: Path) -> None:
    rc, stdout, _ = run_cli("inspect", model_pt)
    assert rc == 0
    *rows, total = stdout.splitlines()
    assert len({len(r) for r in rows}) == 1, rows  # aligned: every row as wide
    assert len({r.index(" F32 ") for r in rows}) == 1
    assert total == "pytorch-zip: 4 tensors, 83 parameters, 332 B (F32 332 B)"


def test_conversion_summary_and_progress_use_binary_units(
    model_pt: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from convert.cli import progress_bar

    rc, stdout, _ = run_cli("pth-to-safetensors", model_pt, tmp_path / "out")
    assert rc == 0 and re.search(r"4 tensors, 332 B in ", stdout), stdout

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    screen = Terminal()
    monkeypatch.setattr("sys.stderr", screen)  # the bar is drawn only on a terminal
    with progress_bar(True, 3 * 2**20, "converting") as advance:
        assert advance is not None
        advance(3 * 2**19)
    assert "1.5/3.0 MiB" in screen.getvalue() and " MB" not in screen.getvalue()


def test_nf_summary_names_folder_and_class_once_in_binary_units(tmp_path: Path) -> None:
    rc, stdout, stderr = run_cli("nf-to-safetensors", NF_FOLDER, tmp_path / "out", timeout=300)
    assert rc == 0, stderr
    index = json.loads((tmp_path / "out" / "models.json").read_text())["models"]
    lines = stdout.splitlines()
    for model in index:  # `LSTM: ...`, or `MLPQ (MLP): ...` when the alias is not the class
        what = model["folder"] if model["class"] == model["folder"] else f"{model['folder']} ({model['class']})"
        line = next((ln for ln in lines if ln.startswith(what + ": ")), None)
        assert line is not None, (what, stdout)
        assert re.search(r", \d+(\.\d)? (B|KiB|MiB)$", line), line


# --- verify on NeuralForecast outputs --------------------------------------------------------


@pytest.fixture(scope="module")
def nf_output(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("nf") / "out"
    rc, _, stderr = run_cli("nf-to-safetensors", NF_FOLDER, out, "-q", timeout=300)
    assert rc == 0, stderr
    return out


def test_verify_an_nf_output_root_with_and_without_the_source(nf_output: Path) -> None:
    models = json.loads((nf_output / "models.json").read_text())["models"]
    for args in ([], ["--source", NF_FOLDER]):
        rc, stdout, stderr = run_cli("--json", "verify", nf_output, *args, timeout=300)
        assert rc == 0, stderr
        doc = json.loads(stdout)
        assert doc["files"] == len(models) and doc["tensors"] == sum(m["tensors"] for m in models)
        assert doc["compared_with_source"] == (doc["tensors"] if args else 0)


def test_verify_one_nf_model_folder_against_the_save_folder(nf_output: Path, tmp_path: Path) -> None:
    rc, stdout, stderr = run_cli("verify", nf_output / "NHITS", "--source", NF_FOLDER)
    assert rc == 0 and "FAIL" not in stdout, stdout + stderr
    assert re.search(r"(\d+) tensors match the manifest, \1 compared with the source", stdout), stdout
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    (nf_output / "NHITS").rename(moved / "renamed")  # found by the files its manifest records
    try:
        rc, stdout, stderr = run_cli("verify", moved / "renamed", "--source", NF_FOLDER)
        assert rc == 0, stdout + stderr
    finally:
        (moved / "renamed").rename(nf_output / "NHITS")


def test_verify_an_nf_root_names_the_model_folder_of_a_problem(nf_output: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(nf_output, copy)
    target = copy / "MLP" / "model.safetensors"
    data = bytearray(target.read_bytes())
    data[-1] ^= 0xFF
    target.write_bytes(bytes(data))
    line = assert_cli_error(run_cli("verify", copy), 8, "(model folder MLP)")
    assert "NHITS" not in line


# --- batch takes every conversion option -----------------------------------------------------


def test_batch_takes_layout_options_layout_file_and_dry_run(model_pt: Path, tmp_path: Path) -> None:
    rules = tmp_path / "rules.toml"
    rules.write_text('name = "mine"\nextends = "pytorch"\n\n[[rules]]\nmatch = "0.weight"\nto = "first.weight"\n')
    out = tmp_path / "outs"
    rc, stdout, stderr = run_cli("batch", model_pt, "--out-dir", out, "--dry-run", "--json", "--layout-file", rules)
    assert rc == 0, stderr
    assert json.loads(stdout.splitlines()[0])["status"] == "ok"
    assert not out.exists() or not any(out.iterdir())
    rc, _, stderr = run_cli(
        "batch", model_pt, "--out-dir", out, "--layout-file", rules, "--layout", "burn", "--layout-option", "ties=alias", "-q"
    )
    assert rc == 0, stderr
    doc = read_manifest(out / "model")
    assert "first.weight" in {t["name"] for t in doc["tensors"]}
    assert doc["target"]["ties"]["written"] == "alias"


def test_batch_overwrite_reconverts_an_up_to_date_output(model_pt: Path, tmp_path: Path) -> None:
    out = tmp_path / "outs"
    for expected, extra in (("ok", []), ("skipped", []), ("ok", ["--overwrite"])):
        rc, stdout, _ = run_cli("batch", model_pt, "--out-dir", out, "--json", *extra)
        assert rc == 0 and json.loads(stdout.splitlines()[0])["status"] == expected, extra


def test_job_file_takes_the_new_options_and_the_command_line_gives_defaults(model_pt: Path, tmp_path: Path) -> None:
    jobs = tmp_path / "jobs.toml"
    jobs.write_text(
        f'[[job]]\nsource = "{model_pt.name}"\noutput = "a"\nlayout_options = {{ ties = "alias" }}\n\n'
        f'[[job]]\nsource = "{model_pt.name}"\noutput = "b"\ndtype = "f32"\ndry_run = true\n'
    )
    rc, stdout, stderr = run_cli("batch", "--job-file", jobs, "--dtype", "f16", "--json", "--jobs", "1")
    assert rc == 0, stderr
    assert read_manifest(tmp_path / "a")["target"]["dtype"] == "f16"  # the command line's default
    assert read_manifest(tmp_path / "a")["target"]["ties"]["written"] == "alias"
    assert not (tmp_path / "b").exists()  # the job's own dry_run
    bad = tmp_path / "bad.toml"
    bad.write_text(f'[[job]]\nsource = "{model_pt.name}"\noverwrite = "yes"\n')
    assert_cli_error(run_cli("batch", "--job-file", bad, "--out-dir", tmp_path / "o"), 2, "overwrite")


def test_retry_failed_alone_reruns_the_failures_with_their_options(model_pt: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(model_pt.read_bytes()[:300])
    report, out = tmp_path / "report.jsonl", tmp_path / "outs"
    rc, _, _ = run_cli("batch", model_pt, broken, "--out-dir", out, "--dtype", "bf16", "--report", report, "-q")
    assert rc == 11
    broken.write_bytes(model_pt.read_bytes())  # repaired
    rc, stdout, stderr = run_cli("batch", "--retry-failed", report, "--json")
    assert rc == 0, stderr
    rows = [json.loads(ln) for ln in stdout.splitlines()]
    assert [Path(r["source"]).name for r in rows if "status" in r] == ["broken.pt"]
    assert read_manifest(out / "broken")["target"]["dtype"] == "bf16"


def test_a_failed_batch_with_json_ends_with_the_summary_as_its_error_object(model_pt: Path, tmp_path: Path) -> None:
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    rc, stdout, stderr = run_cli("batch", model_pt, broken, "--out-dir", tmp_path / "outs", "--json")
    assert rc == 11
    last = json.loads(stdout.splitlines()[-1])
    assert last["summary"]["failed"] == 1 and last["exit_code"] == 11 and last["kind"] == "batch"
    assert_one_line_error(stderr.splitlines()[-1] + "\n", last["error"])


# --- wrong formats name the command that reads them ------------------------------------------


def test_wrong_format_messages_name_the_right_command(model_pt: Path, tmp_path: Path) -> None:
    import h5py
    import numpy as np
    from safetensors.numpy import save_file

    h5 = tmp_path / "model.h5"
    with h5py.File(h5, "w") as f:
        f["dense/kernel"] = np.zeros((3, 2), "f4")
    folder = tmp_path / "st"
    folder.mkdir()
    save_file({"a": np.zeros(2, "f4")}, str(folder / "model.safetensors"))
    m = torch.nn.Linear(3, 2)
    program = torch.export.export(m, (torch.randn(2, 3),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    pt2 = tmp_path / "m.pt2"
    torch.export.save(program, pt2)
    cases = [
        ("pth-to-safetensors", h5, 4, "`convert keras-to-safetensors` reads it"),
        ("pth-to-safetensors", folder, 3, "`convert auto` reads it"),
        ("pth-to-safetensors", folder / "model.safetensors", 4, "`convert auto` reads it"),
        ("pth-to-safetensors", pt2, 4, "`convert to-onnx` exports it"),
        ("keras-to-safetensors", model_pt, 4, "`convert pth-to-safetensors` reads it"),
    ]
    for command, src, code, hint in cases:
        assert_cli_error(run_cli(command, src, tmp_path / "out"), code, hint)
        assert_no_output(tmp_path / "out")


def test_api_overwrite_error_names_the_python_spelling(model_pt: Path, tmp_path: Path) -> None:
    from convert.api import pth_to_safetensors
    from convert.errors import OutputExistsError

    pth_to_safetensors(model_pt, tmp_path / "out")
    with pytest.raises(OutputExistsError, match=r"overwrite=True"):
        pth_to_safetensors(model_pt, tmp_path / "out")
    pth_to_safetensors(model_pt, tmp_path / "out", overwrite=True)


def test_a_librarys_message_is_cut_to_its_first_non_blank_line() -> None:
    """One first_line for every reader and exporter: the core's kept a line's trailing blanks, the
    exporters' copy had no length cap; both now the same function."""
    import exporters.shared.quiet
    from convert.errors import first_line

    assert first_line(ValueError("\n\n  ORT failed: bad node   \n  at line 3")) == "ORT failed: bad node"
    assert first_line(ValueError("x" * 1000)) == "x" * 300
    assert first_line(ValueError(" \n ")) == "ValueError"
    assert not hasattr(exporters.shared.quiet, "first_line")
