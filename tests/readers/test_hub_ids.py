"""Hugging Face repository ids as sources (the names a user gives): `org/name`,
`org/name@revision` and `hf://org/name` resolve through huggingface_hub to the cache snapshot a
`from_pretrained` user has. The cache is built here in huggingface_hub's own layout (blobs, snapshots
of links into them, refs), checked with huggingface_hub's own scan_cache_dir; nothing touches the
network (HF_HUB_OFFLINE=1). The snapshot's files are links into the cache's blobs: until the cache's
own links are accepted without it, these runs pass --follow-links."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
huggingface_hub = pytest.importorskip("huggingface_hub", reason="the hf extra")

from tests.support import assert_cli_error, assert_no_output, assert_same_state, load_output, read_manifest, run_cli  # noqa: E402

COMMIT = "0123456789abcdef0123456789abcdef01234567"


def cached_repo(cache: Path, repo: str, files: dict[str, bytes], commit: str = COMMIT) -> Path:
    """A model repository in the cache as huggingface_hub lays it out: each file's bytes once under
    blobs/<sha256>, the snapshot's names as relative links to them, refs/main naming the commit."""
    root = cache / f"models--{repo.replace('/', '--')}"
    snapshot = root / "snapshots" / commit
    (root / "blobs").mkdir(parents=True)
    snapshot.mkdir(parents=True)
    for name, data in files.items():
        blob = hashlib.sha256(data).hexdigest()
        (root / "blobs" / blob).write_bytes(data)
        os.symlink(f"../../blobs/{blob}", snapshot / name)
    (root / "refs").mkdir()
    (root / "refs" / "main").write_text(commit)
    return snapshot


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    torch.manual_seed(0)
    state = torch.nn.Linear(3, 2).state_dict()
    src = tmp_path / "pytorch_model.bin"
    torch.save(state, src)
    cache = tmp_path / "hub"
    cached_repo(cache, "org/tiny", {"pytorch_model.bin": src.read_bytes(), "config.json": b'{"model_type": "toy"}'})
    scanned = huggingface_hub.scan_cache_dir(cache)
    assert [(r.repo_id, [v.commit_hash for v in r.revisions]) for r in scanned.repos] == [("org/tiny", [COMMIT])]
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    work = tmp_path / "work"
    work.mkdir()
    return SimpleNamespace(state=state, work=work)


@pytest.mark.parametrize("name", ["org/tiny", "hf://org/tiny@main", f"org/tiny@{COMMIT}"])
def test_repo_id_converts_from_the_cache(hub: SimpleNamespace, name: str) -> None:
    out = hub.work / "out"
    code, _, err = run_cli("auto", name, out, "--follow-links", cwd=hub.work)
    assert code == 0, err
    assert_same_state(load_output(out), hub.state)
    assert read_manifest(out)["architecture"]["config"] == {"model_type": "toy"}
    assert run_cli("verify", out, "--source", name, cwd=hub.work)[0] == 0
    code, stdout, err = run_cli("inspect", name, cwd=hub.work)
    assert code == 0 and "weight" in stdout, err


def test_a_local_folder_wins_over_a_repo_id(hub: SimpleNamespace) -> None:
    """`org/tiny` that exists here is that folder, not the cached repository."""
    local = hub.work / "org" / "tiny"
    local.mkdir(parents=True)
    torch.save({"w": torch.ones(2)}, local / "pytorch_model.bin")
    code, _, err = run_cli("auto", "org/tiny", hub.work / "out", cwd=hub.work)
    assert code == 0, err
    assert set(load_output(hub.work / "out")) == {"w"}


@pytest.mark.parametrize("name", ["org/absent", "hf://org/tiny@v9", "hf://not a repo"])
def test_a_repo_id_the_cache_lacks_offline_is_not_found(hub: SimpleNamespace, name: str) -> None:
    out = hub.work / "out"
    code = 2 if " " in name else 3
    assert_cli_error(run_cli("auto", name, out, "--follow-links", cwd=hub.work), code, name.removeprefix("hf://").split("@")[0])
    assert_no_output(out)
