"""Batch conversion: mixed formats with injected failures, idempotent reruns, job files, retries,
content detection, and the same statuses from the Ray executor."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from convert import batch as batch_mod
from tests.support import REPO as ROOT

HOSTILE = ROOT / "fixtures" / "hostile" / "zip_os_system.pt"


def _cli(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "convert.cli", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )


def _state_dict(seed: int) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4)).state_dict()


@pytest.fixture()
def mixed(tmp_path: Path) -> Path:
    """Good sources of every PyTorch-side format, plus a hostile pickle and a truncated file."""
    src = tmp_path / "src"
    src.mkdir()
    torch.save(_state_dict(0), src / "zip.pt")
    torch.save(_state_dict(1), src / "legacy.pth", _use_new_zipfile_serialization=False)
    torch.save({"state_dict": _state_dict(2), "epoch": 1}, src / "lightning.ckpt")
    save_file({k: v.contiguous() for k, v in _state_dict(3).items()}, str(src / "plain.safetensors"), metadata={"format": "pt"})
    hf = src / "hf_model"
    hf.mkdir()
    torch.save(_state_dict(4), hf / "pytorch_model.bin")
    (hf / "config.json").write_text(json.dumps({"model_type": "toy"}))
    torch.save(_state_dict(5), src / "misnamed.safetensors.bak.bin")  # a torch zip whatever its name
    shutil.copy(HOSTILE, src / "hostile.pt")
    (src / "truncated.pt").write_bytes((src / "zip.pt").read_bytes()[:700])
    return src


def _statuses(lines: list[dict]) -> dict[str, tuple[str, int]]:
    return {Path(r["source"]).name: (r["status"], r["exit_code"]) for r in lines if "status" in r}


EXPECTED = {
    "zip.pt": ("ok", 0),
    "legacy.pth": ("ok", 0),
    "lightning.ckpt": ("ok", 0),
    "plain.safetensors": ("ok", 0),
    "hf_model": ("ok", 0),
    "misnamed.safetensors.bak.bin": ("ok", 0),
    "hostile.pt": ("failed", 5),
    "truncated.pt": ("failed", 6),
}


def test_mixed_batch_finishes_good_files_reports_failures_then_skips(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = tmp_path / "report.jsonl"
    first = _cli(
        "batch",
        str(mixed),
        str(mixed / "hf_model"),
        "--out-dir",
        str(out),
        "--json",
        "--jobs",
        "2",
        "--report",
        str(report),
        cwd=tmp_path,
    )
    assert first.returncode == 11, first.stderr
    lines = [json.loads(line) for line in first.stdout.splitlines()]
    assert _statuses(lines) == EXPECTED
    assert lines[-1]["summary"] == {**lines[-1]["summary"], "jobs": 8, "ok": 6, "failed": 2, "skipped": 0}
    for row in lines[:-1]:
        assert set(row) >= {"source", "output", "status", "error", "seconds", "bytes"}
        assert (row["error"] is None) == (row["status"] == "ok")
    assert report.read_text().splitlines() == first.stdout.splitlines()
    assert not (tmp_path / "canary").exists() and not (out / "hostile").exists() and not (out / "truncated").exists()
    for name in ("zip", "legacy", "lightning", "plain", "hf_model"):
        verified = _cli("verify", str(out / name), cwd=tmp_path)
        assert verified.returncode == 0, verified.stderr
    assert (out / "hf_model" / "config.json").is_file()

    second = _cli("batch", str(mixed), "--out-dir", str(out), "--json", cwd=tmp_path)
    assert second.returncode == 11
    again = _statuses([json.loads(line) for line in second.stdout.splitlines()])
    assert again == {k: ("skipped", 0) if v[0] == "ok" else v for k, v in EXPECTED.items()}


def test_changed_source_or_options_are_not_skipped(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    jobs = batch_mod.jobs_from_sources([str(mixed / "zip.pt"), str(mixed / "legacy.pth")], out)
    assert [r.status for r in batch_mod.run_local(jobs, 1, lambda r: None).results] == ["ok", "ok"]
    torch.save(_state_dict(9), mixed / "zip.pt")
    results = {Path(r.source).name: r.status for r in batch_mod.run_local(jobs, 1, lambda r: None).results}
    assert results == {"zip.pt": "ok", "legacy.pth": "skipped"}
    f16 = batch_mod.jobs_from_sources([str(mixed / "legacy.pth")], out, dtype="f16")
    assert [r.status for r in batch_mod.run_local(f16, 1, lambda r: None).results] == ["ok"]


def test_retry_failed_reruns_only_failures(mixed: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    report = tmp_path / "r.jsonl"
    _cli("batch", str(mixed), "--out-dir", str(out), "--report", str(report), "-q", cwd=tmp_path)
    (mixed / "truncated.pt").write_bytes((mixed / "zip.pt").read_bytes())  # repaired
    rerun = _cli("batch", str(mixed), "--out-dir", str(out), "--retry-failed", str(report), "--json", cwd=tmp_path)
    statuses = _statuses([json.loads(line) for line in rerun.stdout.splitlines()])
    assert statuses == {"truncated.pt": ("ok", 0), "hostile.pt": ("failed", 5)}
    assert rerun.returncode == 11


def test_job_file_with_defaults_and_a_missing_source(mixed: Path, tmp_path: Path) -> None:
    jobs_toml = tmp_path / "jobs.toml"
    jobs_toml.write_text(f"""
[defaults]
layout = "burn"
dtype = "f16"

[[job]]
source = "{mixed / "zip.pt"}"
output = "converted/zip-burn"

[[job]]
source = "{mixed / "lightning.ckpt"}"
conversion = "pth-to-safetensors"
layout = "pytorch"
dtype = "f32"

[[job]]
source = "{tmp_path / "nowhere.pt"}"
""")
    run = _cli("batch", "--job-file", str(jobs_toml), "--out-dir", str(tmp_path / "o"), "--json", cwd=tmp_path)
    rows = [json.loads(line) for line in run.stdout.splitlines()]
    assert _statuses(rows) == {"zip.pt": ("ok", 0), "lightning.ckpt": ("ok", 0), "nowhere.pt": ("failed", 3)}
    burn = json.loads((tmp_path / "converted" / "zip-burn" / "manifest.json").read_text())
    assert burn["target"]["layout"] == "burn" and burn["target"]["dtype"] == "f16"
    assert {t["dtype"] for t in burn["tensors"] if t["sources"][0]["dtype"] == "F32"} == {"F16"}
    plain = json.loads((tmp_path / "o" / "lightning" / "manifest.json").read_text())
    assert plain["target"]["layout"] == "pytorch" and plain["source"]["details"]["key"] == "state_dict"


def test_invalid_job_file_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "jobs.toml"
    bad.write_text('[[job]]\nsource = "a.pt"\ncolour = "red"\n')
    run = _cli("batch", "--job-file", str(bad), "--out-dir", str(tmp_path / "o"), cwd=tmp_path)
    assert run.returncode == 2 and "colour" in run.stderr and "Traceback" not in run.stderr


def test_auto_detects_by_content(mixed: Path, tmp_path: Path) -> None:
    run = _cli("auto", str(mixed / "misnamed.safetensors.bak.bin"), str(tmp_path / "o"), "--json", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert manifest["source"]["format"] == "pytorch-zip"
    st = _cli("auto", str(mixed / "plain.safetensors"), str(tmp_path / "s"), cwd=tmp_path)
    assert st.returncode == 0 and json.loads((tmp_path / "s" / "manifest.json").read_text())["source"]["format"] == "safetensors"
    (tmp_path / "notes.txt").write_text("hello")
    unknown = _cli("auto", str(tmp_path / "notes.txt"), str(tmp_path / "n"), cwd=tmp_path)
    assert unknown.returncode == 4 and not (tmp_path / "n").exists()


def test_output_names_do_not_clash() -> None:
    names = batch_mod.output_names([Path("a/m.pt"), Path("b/m.pt"), Path("m.ckpt"), Path("x.bin")])
    assert names == ["m", "m-pt", "m-ckpt", "x"]
    assert len(set(batch_mod.output_names([Path("m.pt")] * 4))) == 4


def test_worker_pool_with_and_without_another_thread(mixed: Path, tmp_path: Path) -> None:
    """Workers fork while the process has one thread, and come from a forkserver while another
    thread (a progress display) runs: the same statuses either way, and a wall time in the summary."""
    import threading

    alone = batch_mod.run_local(batch_mod.jobs_from_sources([str(mixed)], tmp_path / "fork"), 2, lambda r: None)
    # fork only while this process has one thread (an earlier test, to-onnx's export, can leave one alive)
    assert batch_mod._pool_context().get_start_method() == ("fork" if threading.active_count() == 1 else "forkserver")
    stop = threading.Event()
    display = threading.Thread(target=stop.wait, daemon=True)
    display.start()
    try:
        assert batch_mod._pool_context().get_start_method() == "forkserver"
        beside = batch_mod.run_local(batch_mod.jobs_from_sources([str(mixed)], tmp_path / "server"), 2, lambda r: None)
    finally:
        stop.set()
        display.join()
    as_map = lambda s: {Path(r.source).name: (r.status, r.exit_code) for r in s.results}  # noqa: E731
    assert as_map(alone) == as_map(beside) == EXPECTED
    summary = beside.to_json()["summary"]
    assert 0 < summary["wall_seconds"] and summary["jobs"] == len(EXPECTED)


def test_ray_executor_gives_the_same_statuses(mixed: Path, tmp_path: Path) -> None:
    ray = pytest.importorskip("ray", reason="the ray extra is not installed")
    jobs = batch_mod.jobs_from_sources([str(mixed)], tmp_path / "ray-out")
    local = batch_mod.run_local(batch_mod.jobs_from_sources([str(mixed)], tmp_path / "local-out"), 2, lambda r: None)
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        seen: list[batch_mod.JobResult] = []
        remote = batch_mod.run_ray(jobs, None, seen.append)
    finally:
        ray.shutdown()
    as_map = lambda s: {Path(r.source).name: (r.status, r.exit_code) for r in s.results}  # noqa: E731
    assert as_map(remote) == as_map(local) == EXPECTED
    assert len(seen) == len(jobs)
    second = batch_mod.run_local(jobs, 2, lambda r: None)
    assert {Path(r.source).name: r.status for r in second.results if r.status != "failed"} == {
        k: "skipped" for k, v in EXPECTED.items() if v[0] == "ok"
    }


def test_neuralforecast_folder_in_a_batch_gives_one_folder_per_model(tmp_path: Path) -> None:
    """A NeuralForecast save folder is one source; its output holds a folder per model and is
    skipped on a rerun like any other (read without neuralforecast or torch)."""
    fixture = ROOT / "fixtures" / "neuralforecast" / "3.3.0" / "folder"
    src = tmp_path / "src"
    shutil.copytree(fixture, src / "forecasts")
    out = tmp_path / "out"
    first = _cli("batch", str(src), "--out-dir", str(out), "--json", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    assert _statuses([json.loads(line) for line in first.stdout.splitlines()]) == {"forecasts": ("ok", 0)}
    models = json.loads((out / "forecasts" / "models.json").read_text())["models"]
    assert models and all((out / "forecasts" / m["folder"] / "model.safetensors").is_file() for m in models)
    second = _cli("batch", str(src), "--out-dir", str(out), "--json", cwd=tmp_path)
    assert _statuses([json.loads(line) for line in second.stdout.splitlines()]) == {"forecasts": ("skipped", 0)}


def test_a_models_json_naming_a_folder_outside_the_output_does_not_make_a_job_done(tmp_path: Path) -> None:
    """A rerun's check read OUT/models.json and joined each folder it names into a path unchecked, so
    `../../done/zip` made a job "skipped" on the strength of another folder's output. models.json is
    read in one place, its folder names checked: the job is not done, and the folder is refused."""
    src = tmp_path / "zip.pt"
    torch.save(_state_dict(0), src)
    done = batch_mod.jobs_from_sources([str(src)], tmp_path / "done")
    assert [r.status for r in batch_mod.run_local(done, 1, lambda r: None).results] == ["ok"]
    jobs = batch_mod.jobs_from_sources([str(src)], tmp_path / "out")
    out = Path(jobs[0].output)
    out.mkdir(parents=True)
    folder = os.path.relpath(done[0].output, out)
    (out / "models.json").write_text(json.dumps({"format": "neuralforecast", "models": [{"folder": folder}]}))
    assert [r.status for r in batch_mod.run_local(jobs, 1, lambda r: None).results] == ["failed"]
    assert sorted(p.name for p in out.iterdir()) == ["models.json"]
