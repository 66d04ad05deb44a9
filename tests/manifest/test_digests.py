"""Manifest digests: BLAKE3 by default, SHA-256 by `--digest sha256`, the algorithm recorded in a 2.0
manifest, and `verify` checking with whatever is recorded (1.0 manifests, SHA-256 named `sha256`, too)."""

from __future__ import annotations

import hashlib
import json
import shutil
import struct
from collections.abc import Callable
from pathlib import Path
from typing import Any

import blake3
import pytest

torch = pytest.importorskip("torch", reason="needs torch to write real checkpoints")

from convert import manifest as manifest_mod  # noqa: E402
from convert.api import verify_path  # noqa: E402
from tests.support import assert_cli_error, assert_no_output, flip_tensor_byte, read_manifest, run_cli  # noqa: E402

HASHES: dict[str, Callable[[bytes], Any]] = {"blake3": blake3.blake3, "sha256": hashlib.sha256}


def tensor_bytes(out: Path, entry: dict[str, Any]) -> bytes:
    data = (out / entry["file"]).read_bytes()
    start = 8 + struct.unpack("<Q", data[:8])[0]
    begin, end = entry["data_offsets"]
    return data[start + begin : start + end]


@pytest.mark.parametrize("algorithm", ["blake3", "sha256", None])
def test_every_digest_is_the_chosen_algorithm_of_the_bytes(small_checkpoint: Path, tmp_path: Path, algorithm: str | None) -> None:
    out = tmp_path / "out"
    rc, _, err = run_cli("pth-to-safetensors", small_checkpoint, out, *(["--digest", algorithm] if algorithm else []))
    assert rc == 0, err
    doc = read_manifest(out)
    recorded = algorithm or "blake3"
    digest = HASHES[recorded]
    assert doc["manifest_version"] == "2.0" and doc["digest_algorithm"] == recorded
    assert '"sha256":' not in json.dumps(doc)  # no field keeps the 1.0 name
    for f in doc["files"]:
        assert f["digest"] == digest((out / f["path"]).read_bytes()).hexdigest()
        assert "sha256" not in f
    for f in doc["source"]["files"]:
        assert f["digest"] == digest(Path(f["path"]).read_bytes()).hexdigest()
    for t in doc["tensors"]:
        assert t["digest"] == digest(tensor_bytes(out, t)).hexdigest()
    assert verify_path(out, small_checkpoint).ok


def test_unknown_digest_is_refused_before_any_output(small_checkpoint: Path, tmp_path: Path) -> None:
    rc, _, err = run_cli("pth-to-safetensors", small_checkpoint, tmp_path / "out", "--digest", "md5")
    assert rc == 2 and "md5" in err and "Traceback" not in err
    assert_no_output(tmp_path / "out")
    from convert.api import pth_to_safetensors
    from convert.errors import UsageError

    with pytest.raises(UsageError, match="md5"):
        pth_to_safetensors(small_checkpoint, tmp_path / "api", digest="md5")
    assert_no_output(tmp_path / "api")


def test_manifest_without_digest_algorithm_fails_the_schema(small_checkpoint: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("pth-to-safetensors", small_checkpoint, out)[0] == 0
    doc = read_manifest(out)
    del doc["digest_algorithm"]
    (out / "manifest.json").write_text(json.dumps(doc))
    assert_cli_error(run_cli("verify", out), 8, "digest_algorithm")


def as_version_1(out: Path) -> None:
    """Rewrite a SHA-256 output's manifest as release 1.0 wrote it: no algorithm, fields named sha256."""
    doc = json.loads((out / "manifest.json").read_text())
    assert doc.pop("digest_algorithm") == "sha256"
    doc["manifest_version"] = "1.0"
    for entry in [*doc["files"], *doc["source"]["files"], *doc["tensors"]]:
        entry["sha256"] = entry.pop("digest")
    (out / "manifest.json").write_text(json.dumps(doc))


@pytest.mark.parametrize("version", ["1.0", "2.0 blake3", "2.0 sha256"])
def test_verify_names_the_tensor_behind_a_flipped_byte(small_checkpoint: Path, tmp_path: Path, version: str) -> None:
    out = tmp_path / "out"
    algorithm = "blake3" if version == "2.0 blake3" else "sha256"
    assert run_cli("pth-to-safetensors", small_checkpoint, out, "--digest", algorithm)[0] == 0
    read_manifest(out)  # the 2.0 manifest is valid before any rewrite
    if version == "1.0":
        as_version_1(out)
        assert manifest_mod.load(out)["digest_algorithm"] == "sha256"
    rc, stdout, err = run_cli("verify", out, "--source", small_checkpoint)
    assert rc == 0, err

    for victim in ("encoder.weight", "decoder.bias"):
        bad = tmp_path / f"bad-{victim}"
        shutil.copytree(out, bad)
        flip_tensor_byte(bad, victim)
        rc, _, err = run_cli("verify", bad)
        assert rc == 8, err
        assert repr(victim) in err and "Traceback" not in err
        report = verify_path(bad)
        assert f"tensor {victim!r}: bytes do not match the manifest's digest" in report.problems
        assert any(p.startswith("model.safetensors: size or digest differs") for p in report.problems)
        assert not any(other in p for p in report.problems for other in ("encoder.weight", "decoder.bias") if other != victim)


def test_verify_catches_a_change_outside_every_tensor(small_checkpoint: Path, tmp_path: Path) -> None:
    """Header padding is no tensor's bytes: only the file's digest sees a change there."""
    out = tmp_path / "out"
    assert run_cli("pth-to-safetensors", small_checkpoint, out)[0] == 0
    path = out / "model.safetensors"
    raw = bytearray(path.read_bytes())
    n = struct.unpack("<Q", bytes(raw[:8]))[0]
    assert raw[8 + n - 1 : 8 + n] == b" ", "this model's header has no padding (choose another)"
    raw[8 + n - 1 : 8 + n] = b"\t"  # still valid JSON whitespace: the header reads the same
    path.write_bytes(bytes(raw))
    report = verify_path(out)
    assert report.problems == ["model.safetensors: size or digest differs from the manifest"], report.problems


def test_batch_records_the_digest_and_reruns_when_it_changes(small_checkpoint: Path, tmp_path: Path) -> None:
    rc, _, err = run_cli("batch", small_checkpoint, "--out-dir", tmp_path / "outs", "--digest", "sha256", "--json")
    assert rc == 0, err
    out = tmp_path / "outs" / small_checkpoint.stem
    assert read_manifest(out)["digest_algorithm"] == "sha256"
    rc, stdout, _ = run_cli("batch", small_checkpoint, "--out-dir", tmp_path / "outs", "--digest", "sha256", "--json")
    assert rc == 0 and json.loads(stdout.splitlines()[0])["status"] == "skipped"
    rc, stdout, _ = run_cli("batch", small_checkpoint, "--out-dir", tmp_path / "outs", "--json")
    assert rc == 0 and json.loads(stdout.splitlines()[0])["status"] == "ok"
    assert read_manifest(out)["digest_algorithm"] == "blake3"


@pytest.mark.parametrize("flip", [None, 0, 7, 8, 4096 + 3, -1])
def test_same_ranges_sees_every_byte(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, flip: int | None) -> None:
    """verify's byte comparison (in place of hashing the source): windows, 8-byte lanes and the tail."""
    from convert import hashing
    from convert.tensors import FileSpan

    monkeypatch.setattr(hashing, "WINDOW", 4096)  # several windows over a small range
    data = bytes(range(256)) * 40 + b"tail!"  # 10,245 bytes: not a multiple of 8
    a, b = tmp_path / "a.bin", tmp_path / "b.bin"
    a.write_bytes(b"x" * 13 + data)  # the two ranges start at different, unaligned offsets
    changed = bytearray(data)
    if flip is not None:
        changed[flip] ^= 1
    b.write_bytes(b"y" * 5 + bytes(changed) + b"zz")
    same = hashing.same_ranges([FileSpan(str(a), 13, len(data))], [FileSpan(str(b), 5, len(data))])
    assert same is (flip is None)
    pieces = [FileSpan(str(a), 13, 5000), FileSpan(str(a), 13 + 5000, 0), FileSpan(str(a), 13 + 5000, len(data) - 5000)]
    assert hashing.same_ranges(pieces, [FileSpan(str(b), 5, len(data))]) is (flip is None)  # one run, in parts
    assert not hashing.same_ranges([FileSpan(str(a), 13, len(data))], [FileSpan(str(b), 5, len(data) - 1)])


@pytest.mark.parametrize(
    "ranges",
    [
        [(0, 9000), (9000, 9000), (9000, 20000), (20100, 20100), (20100, 70000), (70000, 80003)],  # gaps, empties, the end
        [(7, 7), (4095, 4097), (4097, 69632), (80003, 80003)],  # a range over one window edge; one empty at the file's end
        [],
        [(5000, 9000), (0, 6000), (6000, 80003)],  # overlapping, out of order: a manifest may claim these
    ],
    ids=["in-order", "window-edges", "none", "overlapping"],
)
@pytest.mark.parametrize("algorithm", ["blake3", "sha256"])
def test_file_and_range_digests_are_those_of_the_bytes(
    ranges: list[tuple[int, int]], algorithm: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ranges in file order are hashed in the file digest's own pass (each window read once); any
    other ranges on a thread of their own: the digests are the same either way."""
    from convert import hashing

    monkeypatch.setattr(hashing, "WINDOW", 4096)  # many windows: ranges start, end and span across them
    monkeypatch.setattr(hashing, "SMALL_RANGE", 1024)
    data = bytes((i * 131 + i // 251) % 256 for i in range(80003))
    path = tmp_path / "f.bin"
    path.write_bytes(data)
    file_digest, digests = hashing.file_and_range_digests(path, ranges, algorithm)
    assert file_digest == HASHES[algorithm](data).hexdigest()
    assert digests == [HASHES[algorithm](data[b:e]).hexdigest() for b, e in ranges]


def test_verify_source_refuses_a_tie_whose_two_sources_differ(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    emb = torch.randn(6, 4)
    src = save_checkpoint({"wte.weight": emb, "lm_head.weight": emb, "ln.weight": torch.ones(4)})
    out = tmp_path / "out"
    assert run_cli("pth-to-safetensors", src, out)[0] == 0
    assert read_manifest(out)["aliases"] == {"lm_head.weight": "wte.weight"}
    assert run_cli("verify", out, "--source", src)[0] == 0
    untied = emb.clone()
    untied[2, 1] += 1.0
    other = save_checkpoint({"wte.weight": emb, "lm_head.weight": untied, "ln.weight": torch.ones(4)}, name="other.pt")
    assert_cli_error(run_cli("verify", out, "--source", other), 8, "lm_head.weight")


@pytest.mark.parametrize("tensors", [8, 1], ids=["four-shards", "one-tensor"])
@pytest.mark.parametrize(
    "bad_source", ["missing.pt", "garbage.pt", "model.pt --key nowhere"], ids=["missing", "malformed", "wrong-key"]
)
def test_a_bad_source_stops_verify_without_hashing_the_output(
    save_checkpoint: Callable[..., Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, bad_source: str, tensors: int
) -> None:
    """The source is opened on a second thread while the output is hashed; when it cannot be opened,
    its error is the answer at once, not after every byte of the output has been read (at 444df50
    it was opened before any hashing). The output's reads are slowed, as on a slow disk, and counted."""
    import mmap
    import os
    import time

    from convert.api import pth_to_safetensors
    from convert.errors import ConvertError

    g = torch.Generator().manual_seed(5)
    rows = 8192 // tensors  # 32 MB in all: eight 4 MB tensors in four shards, or one 32 MB tensor
    src = save_checkpoint({f"layer{i}.weight": torch.randn(rows, 1024, generator=g) for i in range(tensors)})
    (tmp_path / "garbage.pt").write_bytes(b"\x80\x04garbage" * 10)
    out = tmp_path / "out"
    pth_to_safetensors(src, out, max_shard_size=8 << 20)
    windows: list[int] = []
    real = mmap.mmap

    def slow_window(fd: int, length: int, *args: Any, **kwargs: Any) -> mmap.mmap:
        if os.readlink(f"/proc/self/fd/{fd}").endswith(".safetensors"):
            windows.append(length)
            time.sleep(0.05)
        return real(fd, length, *args, **kwargs)

    monkeypatch.setattr(mmap, "mmap", slow_window)
    name, *key = bad_source.split(" --key ")
    with pytest.raises(ConvertError) as raised:
        verify_path(out, tmp_path / name, key[0] if key else None)
    all_windows = 2 * 8  # the file pass and the tensor pass, 4 MiB windows
    assert len(windows) < all_windows // 2, f"{len(windows)} windows hashed before {raised.value!r} was raised"
