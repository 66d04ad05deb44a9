"""Links to files outside the input: every file a command may
open is checked before any is opened, by every command, and a Hugging Face cache snapshot, whose
files are links into its repository's `blobs/`, is accepted as it is.

The last test runs each command in this process under an audit hook that fails on any open of the
outside file: a refusal must come before the read, not after it."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from safetensors.numpy import load_file, save_file

from tests.support import assert_cli_error, assert_no_output, run_cli
from tests.support.sources import arrays, npz_file, pytorch_folder, safetensors_folder, tf_folder

UNSAFE = 5
PASSWD = b"root:x:0:0:root:/root:/bin/bash\n"  # what a shard linked to /etc/passwd would hold


def link_outside(path: Path, outside: Path, how: str, content: bytes | None = None) -> Path:
    """Move `path` out of its folder (or write `content` there instead) and leave a link to it."""
    outside.mkdir(parents=True, exist_ok=True)
    target = outside / path.name
    shutil.move(path, target)
    if content is not None:
        target.write_bytes(content)
    if how == "symlink":
        path.symlink_to(target)
    else:
        path.hardlink_to(target)
    return target


# ---------------------------------------------------------------------------------------------
# The findings, through the CLI
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["symlink", "hardlink"])
def test_outside_config_of_a_safetensors_folder_is_refused(tmp_path: Path, how: str) -> None:
    """Item 1: a config.json linked outside was read into manifest.json, exit 0."""
    folder = safetensors_folder(tmp_path)
    secret = link_outside(folder / "config.json", tmp_path / "outside", how, b'{"secret": "outside the input"}')
    assert_cli_error(run_cli("auto", folder, tmp_path / "out"), UNSAFE, "config.json", "--follow-links")
    assert_no_output(tmp_path / "out")
    assert run_cli("auto", folder, tmp_path / "out", "--follow-links")[0] == 0
    assert json.loads(secret.read_text())["secret"] in (tmp_path / "out" / "manifest.json").read_text()


@pytest.mark.parametrize("command", ["inspect", "auto"])
def test_linked_shard_is_refused_before_it_is_read(tmp_path: Path, command: str) -> None:
    """Item 2: inspect listed an outside shard's tensors, and auto's error quoted its first 8 bytes."""
    folder = safetensors_folder(tmp_path)
    link_outside(folder / "model-00001-of-00002.safetensors", tmp_path / "outside", "symlink", PASSWD)
    leak = str(int.from_bytes(PASSWD[:8], "little"))
    args = [command, folder] + ([tmp_path / "out"] if command == "auto" else [])
    line = assert_cli_error(run_cli(*args), UNSAFE, "model-00001-of-00002.safetensors", "symbolic link")
    assert leak not in line
    assert_no_output(tmp_path / "out")


def test_linked_tf_data_file_is_refused_by_inspect(tmp_path: Path) -> None:
    """Item 2: inspect read (a CRC over all of it) a TF data file linked outside."""
    folder = tf_folder(tmp_path)
    data = next(folder.glob("*.data-*"))
    link_outside(data, tmp_path / "outside", "symlink")
    prefix = str(data).split(".data-")[0]
    for path in (folder, prefix, f"{prefix}.index"):
        assert_cli_error(run_cli("inspect", path), UNSAFE, data.name)


@pytest.mark.parametrize("build", [safetensors_folder, pytorch_folder])
def test_linked_index_is_refused(tmp_path: Path, build: Callable[[Path], Path]) -> None:
    """Item 3: a *.index.json linked outside steered the conversion, exit 0."""
    folder = build(tmp_path)
    index = next(folder.glob("*.index.json"))
    link_outside(index, tmp_path / "outside", "symlink")
    assert_cli_error(run_cli("auto", folder, tmp_path / "out"), UNSAFE, index.name)
    assert_no_output(tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# Hugging Face cache snapshots
# ---------------------------------------------------------------------------------------------


def hf_cache(root: Path, repo: str = "org/name", revision: str = "0123456789abcdef0123456789abcdef01234567") -> Path:
    """A hub cache as huggingface_hub lays it out: blobs named by their hash, `refs/main`, and a
    snapshot of relative symlinks into ../../blobs/; huggingface_hub itself finds the files in it."""
    import hashlib

    hub = pytest.importorskip("huggingface_hub")
    repo_dir = root / f"models--{repo.replace('/', '--')}"
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(revision)
    snapshot = repo_dir / "snapshots" / revision
    snapshot.mkdir(parents=True)
    staging = root / "staging"
    staging.mkdir()
    save_file(arrays(), str(staging / "model.safetensors"), metadata={"format": "pt"})
    (staging / "config.json").write_text('{"model_type": "x"}')
    for f in staging.iterdir():
        blob = hashlib.sha256(f.read_bytes()).hexdigest()
        shutil.move(f, repo_dir / "blobs" / blob)
        (snapshot / f.name).symlink_to(Path("..", "..", "blobs", blob))
    staging.rmdir()
    found = hub.try_to_load_from_cache(repo, "model.safetensors", cache_dir=root)
    assert found is not None and Path(found) == snapshot / "model.safetensors"
    assert [r.repo_id for r in hub.scan_cache_dir(root).repos] == [repo]
    return snapshot


def test_hf_cache_snapshot_converts_without_follow_links(tmp_path: Path) -> None:
    snapshot = hf_cache(tmp_path / "hub")
    for command in ("auto", "inspect"):
        rc, _, err = run_cli(command, snapshot, *([tmp_path / "out"] if command == "auto" else []))
        assert rc == 0, err
    expected = load_file(str(snapshot / "model.safetensors"))
    got = load_file(str(tmp_path / "out" / "model.safetensors"))
    assert got.keys() == expected.keys() and all(np.array_equal(got[k], expected[k]) for k in got)
    assert run_cli("verify", tmp_path / "out", "--source", snapshot)[0] == 0


def _retarget(link: Path, target: Path) -> None:
    link.unlink()
    link.symlink_to(os.path.relpath(target, link.parent))


@pytest.mark.parametrize("escape", ["outside", "other-repo", "hard-linked-blob", "linked-blobs", "blob-is-link"])
def test_hf_cache_links_leaving_the_repository_are_refused(tmp_path: Path, escape: str) -> None:
    snapshot = hf_cache(tmp_path / "hub")
    repo_dir = snapshot.parent.parent
    config = snapshot / "config.json"
    secret = tmp_path / "secret.json"
    secret.write_text('{"secret": 1}')
    if escape == "outside":
        _retarget(config, secret)
    elif escape == "other-repo":
        other = hf_cache(tmp_path / "hub2", "org/other")
        shutil.move(other.parent.parent, tmp_path / "hub" / "models--org--other")
        blob = next((tmp_path / "hub" / "models--org--other" / "blobs").iterdir())
        _retarget(config, blob)
    elif escape == "hard-linked-blob":
        Path(os.path.realpath(config)).unlink()
        Path(os.path.realpath(config)).hardlink_to(secret)
    elif escape == "linked-blobs":
        shutil.move(repo_dir / "blobs", tmp_path / "elsewhere")
        (repo_dir / "blobs").symlink_to(tmp_path / "elsewhere")
    else:
        blob = Path(os.path.realpath(config))
        blob.unlink()
        blob.symlink_to(secret)
    needle = "symbolic link" if escape == "linked-blobs" else "config.json"  # then every file leaves the repository
    assert_cli_error(run_cli("auto", snapshot, tmp_path / "out"), UNSAFE, needle)
    assert_no_output(tmp_path / "out")


# ---------------------------------------------------------------------------------------------
# Every command, every file in turn a link outside, under an audit hook
# ---------------------------------------------------------------------------------------------

_FORBIDDEN: set[tuple[int, int]] = set()  # (device, inode) of the outside files of the current run
_OPENED: list[str] = []


def _audit(event: str, args: tuple[Any, ...]) -> None:
    """Record (and fail) any open of an outside file, whatever name it is opened under."""
    if event != "open" or not _FORBIDDEN or not isinstance(args[0], (str, bytes, os.PathLike)):
        return
    try:
        st = os.stat(args[0])
    except OSError:
        return
    if (st.st_dev, st.st_ino) in _FORBIDDEN:
        _OPENED.append(os.fsdecode(args[0]))
        raise RuntimeError(f"opened a file outside the input: {args[0]!r}")


sys.addaudithook(_audit)  # hooks cannot be removed: it does nothing while _FORBIDDEN is empty

SOURCES: dict[str, tuple[Callable[[Path], Path], str]] = {
    "safetensors": (safetensors_folder, "auto"),
    "pytorch": (pytorch_folder, "pth-to-safetensors"),
    "tensorflow": (tf_folder, "tf-to-safetensors"),
    "numpy": (npz_file, "npz-to-safetensors"),
}


def _cli(*args: Any) -> tuple[int, str]:
    from click.testing import CliRunner

    from convert.cli import cli

    result = CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)
    return result.exit_code, result.output


@pytest.mark.parametrize("kind", sorted(SOURCES))
def test_no_command_opens_an_outside_file(tmp_path: Path, kind: str) -> None:
    build, command = SOURCES[kind]
    clean = build(tmp_path / "clean")
    good_out = tmp_path / "good"
    code, output = _cli("auto", clean, good_out)
    assert code == 0, output
    files = sorted(p.relative_to(clean) for p in clean.rglob("*") if p.is_file()) if clean.is_dir() else [Path()]
    for how in ("symlink", "hardlink"):
        for rel in files:
            work = tmp_path / f"{how}-{len(list(tmp_path.iterdir()))}"
            source = work / clean.name
            shutil.copytree(clean, source) if clean.is_dir() else (work.mkdir(), shutil.copy(clean, source))
            outside = link_outside(source / rel, work / "outside", how)
            st = os.stat(outside)
            _FORBIDDEN.add((st.st_dev, st.st_ino))
            try:
                runs = {
                    "inspect": _cli("inspect", source),
                    "auto": _cli("auto", source, work / "out"),
                    command: _cli(command, source, work / "out"),
                    "to-gguf": _cli("to-gguf", source, work / "out"),
                    "verify --source": _cli("verify", good_out, "--source", source),
                }
            finally:
                _FORBIDDEN.clear()
            assert not _OPENED, f"{kind}, {rel} as a {how}: opened {_OPENED}"
            for name, (code, output) in runs.items():
                assert code == UNSAFE, f"{kind}, {rel} as a {how}: {name} exit {code}: {output}"
            assert_no_output(work / "out")
