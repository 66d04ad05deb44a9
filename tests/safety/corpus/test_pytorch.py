"""Hostile checkpoints: nothing in them runs, nothing is written, and each is refused with the exit
code of its class (5 unsafe, 6 corrupt, 4 unsupported) and one line on stderr.

The committed corpus (fixtures/hostile, catalogued in catalog.json by scripts/make_hostile.py) is
run through `convert pth-to-safetensors` and `convert inspect`, each in an empty working folder so
a payload that ran would leave a file named `canary` there. More cases are made here with real
torch.save and then edited: truncations and forged storage sizes.
"""

from __future__ import annotations

import io
import json
import os
import pickletools
import resource
import struct
import subprocess
import zipfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="needs torch to write the checkpoints it then damages")

from tests.support import REPO, assert_cli_error, assert_no_output, assert_one_line_error, read_manifest, run_cli  # noqa: E402

CORPUS = REPO / "fixtures" / "hostile"
CATALOG: list[dict[str, str]] = json.loads((CORPUS / "catalog.json").read_text()) if (CORPUS / "catalog.json").is_file() else []
CATALOG = [e for e in CATALOG if e["kind"] in ("zip", "legacy", "raw-pickle")]  # other formats: test_readers.py beside it
REFUSED = [e for e in CATALOG if e["expect"] == "refused"]
# Classes no reader knows beside real weights: converted, each class an inert record (never imported)
RECORDED = [e for e in CATALOG if e["expect"] == "inert"]

# Expected exit codes by attack (the file name without its zip_/legacy_/raw_ prefix and suffix).
# Anything that names a global on the deny list -- every code-execution gadget -- is unsafe (5); see
# expected_codes for the default.
ATTACK_CODES: dict[str, set[int]] = {
    # a storage key that reaches outside the archive
    "persid_dotdot": {5},
    "persid_absolute": {5},
    # sizes, offsets and strides the file does not hold: corrupt
    "persid_missing": {6},
    "forged_numel": {6},
    "negative_numel": {6},
    "negative_offset": {6},
    "negative_size": {6},
    "negative_stride": {6},
    "offset_past_end": {6},
    "stride_past_end": {6},
    "size_overflow": {6},
    "pickle_in_storage": {6},
    "truncated": {6},
    # not a layout this reader takes at all (a pre-1.0 tar checkpoint, legacy storage views)
    "tar_os_system": {4, 5},
    "view_past_end": {4, 6},
    # two data.pkl entries: refusing either as ambiguous (corrupt) or for the gadget (unsafe) is fine
    "duplicate_data_pkl": {5, 6},
}


def attack_of(file: str) -> str:
    stem = file.rsplit(".", 1)[0]
    for prefix in ("zip_", "legacy_", "raw_"):
        if stem.startswith(prefix):
            return stem[len(prefix) :]
    return stem


def expected_codes(entry: dict[str, str]) -> set[int]:
    attack = attack_of(entry["file"])
    if attack in ATTACK_CODES:
        return ATTACK_CODES[attack]
    if "no canary by design" in entry["attack"] and "evil.Payload" not in entry["attack"]:
        return {4, 5, 6}  # a new structural attack: refused is all that is known
    return {5}  # a global on the deny list


@dataclass
class Run:
    returncode: int
    stdout: str
    stderr: str
    left_in_cwd: list[str]
    folder: Path


def run_in_empty_folder(folder: Path, *args: Any, preexec_fn: Callable[[], None] | None = None) -> Run:
    """Run the CLI with an empty cwd; report what it left there (a canary, an output, a staging folder)."""
    folder.mkdir(parents=True)
    rc, out, err = run_cli(*args, cwd=folder, timeout=60, preexec_fn=preexec_fn)
    return Run(rc, out, err, sorted(os.listdir(folder)), folder)


@pytest.fixture(scope="module")
def corpus_runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Run]:
    """Every catalogued file through `convert pth-to-safetensors`, several processes at a time."""
    root = tmp_path_factory.mktemp("hostile-runs")
    with ThreadPoolExecutor(max_workers=max(2, (os.cpu_count() or 2) * 2)) as pool:
        futures = {
            entry["file"]: pool.submit(run_in_empty_folder, root / str(i), "pth-to-safetensors", CORPUS / entry["file"], "out")
            for i, entry in enumerate(CATALOG)
        }
    return {key: fut.result() for key, fut in futures.items()}


def inspect_in_empty_folder(folder: Path, src: Path) -> tuple[int, list[str]]:
    """`inspect` through the API inside this process (cheaper than a process per file; the CLI
    shell around it is the one every other command uses): its exit code, and what the cwd holds."""
    from convert.api import inspect_path
    from convert.errors import ConvertError

    folder.mkdir()
    previous = os.getcwd()
    os.chdir(folder)
    try:
        inspect_path(src)
        code = 0
    except ConvertError as exc:
        code = exc.exit_code
    finally:
        os.chdir(previous)
    return code, sorted(os.listdir(folder))


@pytest.mark.skipif(not CATALOG, reason="fixtures/hostile/catalog.json not generated (scripts/make_hostile.py)")
@pytest.mark.parametrize("entry", REFUSED, ids=[e["file"] for e in REFUSED])
def test_corpus_file_is_refused(entry: dict[str, str], corpus_runs: dict[str, Run], tmp_path: Path) -> None:
    assert entry["expect"] == "refused"
    codes = expected_codes(entry)
    run = corpus_runs[entry["file"]]
    assert run.returncode in codes, f"{entry['attack']}: exit {run.returncode}, expected {codes}: {run.stderr}"
    assert "canary" not in run.left_in_cwd, f"payload ran: {entry['attack']}"
    assert run.left_in_cwd == [], f"left behind: {run.left_in_cwd}"
    assert run.stdout == ""
    assert_one_line_error(run.stderr)
    code, left = inspect_in_empty_folder(tmp_path / "cwd", CORPUS / entry["file"])
    assert code == run.returncode, f"inspect exits {code}, pth-to-safetensors {run.returncode}"
    assert left == [], left


@pytest.mark.parametrize("entry", RECORDED, ids=[e["file"] for e in RECORDED])
def test_corpus_record_converts_inert(entry: dict[str, str], corpus_runs: dict[str, Run]) -> None:
    """An unknown class beside the weights (evil.Payload, a whole __main__ module): the weights convert,
    the class is named in the manifest as a record never imported, its arguments not carried across."""
    run = corpus_runs[entry["file"]]
    assert run.returncode == 0, run.stderr
    assert run.left_in_cwd == ["out"], f"payload ran or left behind: {run.left_in_cwd}"
    details = read_manifest(run.folder / "out")["source"]["details"]
    assert any(c in ("evil.Payload", "__main__.TinyNet") for c in details["pickled_classes"]["names"]), details
    assert "none imported" in details["pickled_classes"]["imported"]
    written = b"".join(p.read_bytes() for p in (run.folder / "out").iterdir())
    assert b"touch canary" not in written


def test_corpus_is_there() -> None:
    """The corpus is committed; without it the test above would silently check nothing."""
    assert len(CATALOG) >= 30, "fixtures/hostile/catalog.json is missing or small: run scripts/make_hostile.py"


# ---------------------------------------------------------------------------------------------
# Made here: real torch.save output carrying objects that would run code if unpickled
# ---------------------------------------------------------------------------------------------


class Payload:
    """Pickles as a call to `fn(*args)`: what `torch.load(weights_only=False)` would run."""

    def __init__(self, fn: Callable[..., Any], *args: Any) -> None:
        self.fn, self.args = fn, args

    def __reduce__(self) -> tuple[Any, ...]:
        return self.fn, self.args


PAYLOADS: dict[str, Callable[[], Any]] = {
    "os.system": lambda: Payload(os.system, "touch canary"),
    "subprocess.call": lambda: Payload(subprocess.call, ["touch", "canary"]),
    "builtins.exec": lambda: Payload(exec, "open('canary', 'w').close()"),
    "builtins.open": lambda: Payload(open, "canary", "w"),
}


PLACES = [(payload, "beside-weights") for payload in sorted(PAYLOADS)] + [
    ("os.system", "in-hyper-parameters"),
    ("builtins.exec", "as-a-tensor"),
]


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("payload,where", PLACES, ids=[f"{p}-{w}" for p, w in PLACES])
def test_torch_saved_payload_never_runs(payload: str, where: str, legacy: bool, tmp_path: Path) -> None:
    """The payload sits next to real tensors, deep in Lightning hyper-parameters (outside the
    state_dict the converter wants), or in place of a tensor; it is refused as unsafe everywhere."""
    evil = PAYLOADS[payload]()
    weights = {"w": torch.randn(2, 2)}
    obj: dict[str, Any]
    if where == "beside-weights":
        obj = {**weights, "extra": evil}
    elif where == "in-hyper-parameters":
        obj = {"state_dict": weights, "hyper_parameters": {"loss": {"fn": evil}}, "epoch": 1}
    else:
        obj = {"state_dict": {"w": evil}}
    src = tmp_path / "evil.pt"
    torch.save(obj, src, _use_new_zipfile_serialization=not legacy)
    short = payload.split(".")[-1]
    commands = [("pth-to-safetensors", src, "out")]
    if where == "beside-weights":
        commands.append(("inspect", src))
    for cmd in commands:
        run = run_in_empty_folder(tmp_path / f"cwd-{cmd[0]}", *cmd)
        assert run.returncode == 5, run.stderr
        assert run.left_in_cwd == [], run.left_in_cwd
        assert_one_line_error(run.stderr, short)


# ---------------------------------------------------------------------------------------------
# Made here: truncations and forged sizes of real checkpoints
# ---------------------------------------------------------------------------------------------


def real_checkpoint(path: Path, legacy: bool) -> Path:
    g = torch.Generator().manual_seed(0)
    state = {
        "embed.weight": torch.randn(40, 16, generator=g),
        "proj.weight": torch.randn(16, 16, generator=g),
        "proj.bias": torch.randn(16, generator=g),
        "steps": torch.arange(10),
    }
    torch.save(state, path, _use_new_zipfile_serialization=not legacy)
    return path


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
@pytest.mark.parametrize("keep", [0.1, 0.5, 0.9, -1], ids=["10%", "half", "90%", "last-byte-gone"])
def test_truncated_checkpoint_is_corrupt(keep: float, legacy: bool, tmp_path: Path) -> None:
    full = real_checkpoint(tmp_path / "full.pt", legacy).read_bytes()
    cut = len(full) - 1 if keep == -1 else int(len(full) * keep)
    src = tmp_path / "cut.pt"
    src.write_bytes(full[:cut])
    out = tmp_path / "out"
    assert_cli_error(run_cli("pth-to-safetensors", src, out), 6, "cut.pt")
    assert_no_output(out)
    if keep == 0.5:
        assert_cli_error(run_cli("inspect", src), 6)


def _numel_ops(pkl: bytes) -> list[tuple[int, int, int]]:
    """(start, end, value) of each storage element count inside the persistent ids of a torch pickle."""
    ops = list(pickletools.genops(pkl))
    found = []
    for i, (op, _arg, _pos) in enumerate(ops):
        if op.name != "BINPERSID":
            continue
        j = i - 1
        while ops[j][0].name in ("BINPUT", "LONG_BINPUT", "MEMOIZE"):
            j -= 1
        assert ops[j][0].name == "TUPLE", ops[j][0].name
        k = j - 1
        while ops[k][0].name == "NONE":  # the legacy format's view_metadata follows numel
            k -= 1
        assert ops[k][0].name in ("BININT1", "BININT2", "BININT", "LONG1"), ops[k][0].name
        found.append((ops[k][2], ops[k + 1][2], ops[k][1]))
    assert found, "no persistent ids found"
    return found


def forge_numel(pkl: bytes, new: Callable[[int], int]) -> bytes:
    """The same pickle with each storage's element count n replaced by new(n), as a LONG1 opcode."""
    out = pkl
    for start, end, value in reversed(_numel_ops(pkl)):
        numel = new(value)
        size = (numel.bit_length() + 8) // 8
        out = out[:start] + b"\x8a" + bytes([size]) + numel.to_bytes(size, "little", signed=True) + out[end:]
    return out


def rewrite_zip_pickle(src: Path, dst: Path, edit: Callable[[bytes], bytes]) -> None:
    """Copy a torch zip checkpoint with its data.pkl passed through `edit`."""
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info)
            if info.filename.endswith("/data.pkl"):
                data = edit(data)
            zout.writestr(info.filename, data)


def legacy_sections(data: bytes) -> list[int]:
    """End offsets of the five pickles of a legacy torch.save file (magic, protocol, sys_info,
    object, storage keys); the storages' 8-byte counts and bytes follow the last one."""
    stream = io.BytesIO(data)
    ends = []
    for _ in range(5):
        for _op in pickletools.genops(stream):
            pass
        ends.append(stream.tell())
    return ends


def rewrite_legacy_pickle(src: Path, dst: Path, edit: Callable[[bytes], bytes]) -> None:
    """Copy a legacy torch checkpoint with its object pickle passed through `edit`."""
    data = src.read_bytes()
    ends = legacy_sections(data)
    dst.write_bytes(data[: ends[2]] + edit(data[ends[2] : ends[3]]) + data[ends[3] :])


def forge_zip(src: Path, dst: Path, new: Callable[[int], int]) -> None:
    rewrite_zip_pickle(src, dst, lambda pkl: forge_numel(pkl, new))


def forge_legacy_pickled_numel(src: Path, dst: Path, new: Callable[[int], int]) -> None:
    rewrite_legacy_pickle(src, dst, lambda pkl: forge_numel(pkl, new))


def forge_legacy_count(src: Path, dst: Path, new: Callable[[int], int]) -> None:
    """Replace the first storage's 8-byte element count (right after the key list) with new(count)."""
    data = bytearray(src.read_bytes())
    pos = legacy_sections(bytes(data))[4]
    (count,) = struct.unpack("<q", data[pos : pos + 8])
    data[pos : pos + 8] = struct.pack("<q", new(count))
    dst.write_bytes(bytes(data))


def limit_address_space() -> None:
    """Run in the child: at most 2 GiB of address space, so a 4 TiB allocation cannot happen."""
    resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))


FORGERS: dict[str, Callable[[Path, Path, Callable[[int], int]], None]] = {
    "zip-persistent-id-numel": forge_zip,
    "legacy-persistent-id-numel": forge_legacy_pickled_numel,
    "legacy-element-count": forge_legacy_count,
}


@pytest.mark.parametrize("forger", sorted(FORGERS))
def test_honest_rewrite_still_converts(forger: str, tmp_path: Path) -> None:
    """The forging machinery with every size kept as it was: torch and the converter both read the
    rewritten file, so what the forged cases change is the size alone."""
    src = real_checkpoint(tmp_path / "real.pt", legacy=forger.startswith("legacy"))
    rewritten = tmp_path / "rewritten.pt"
    FORGERS[forger](src, rewritten, lambda n: n)
    if forger != "legacy-element-count":
        assert rewritten.read_bytes() != src.read_bytes()  # sizes re-encoded as LONG1
    expected = torch.load(src, weights_only=True)
    assert all(torch.equal(v, expected[k]) for k, v in torch.load(rewritten, weights_only=True).items())
    rc, _, err = run_cli("pth-to-safetensors", rewritten, tmp_path / "out")
    assert rc == 0, err
    assert {t["name"] for t in read_manifest(tmp_path / "out")["tensors"]} == set(expected)


FORGERIES: dict[str, tuple[str, Callable[[int], int]]] = {
    "zip-persistent-id-numel-2**40": ("zip-persistent-id-numel", lambda n: 2**40),
    "zip-persistent-id-numel-plus-one": ("zip-persistent-id-numel", lambda n: n + 1),
    "legacy-persistent-id-numel-2**40": ("legacy-persistent-id-numel", lambda n: 2**40),
    "legacy-element-count-2**40": ("legacy-element-count", lambda n: 2**40),
    "legacy-element-count-2**62": ("legacy-element-count", lambda n: 2**62),
    "legacy-element-count-negative": ("legacy-element-count", lambda n: -(2**40)),
}


@pytest.mark.parametrize("forgery", sorted(FORGERIES))
def test_forged_storage_size_is_corrupt_without_allocating(forgery: str, tmp_path: Path) -> None:
    forger, new = FORGERIES[forgery]
    src = real_checkpoint(tmp_path / "real.pt", legacy=forger.startswith("legacy"))
    forged = tmp_path / "forged.pt"
    FORGERS[forger](src, forged, new)
    assert forged.stat().st_size < 1 << 20
    out = tmp_path / "out"
    rc, stdout, stderr = run_cli("pth-to-safetensors", forged, out, preexec_fn=limit_address_space, timeout=60)
    assert rc == 6, f"exit {rc} (a MemoryError or a kill would not be 6): {stderr}"
    line = assert_one_line_error(stderr, "forged.pt")
    assert "memory" not in line.lower(), line  # refused from the sizes, not after trying to allocate
    if forgery.endswith("2**40"):  # and the message says what size was claimed (elements or bytes)
        assert str(2**40) in line or str(2**40 * 4) in line, line
    assert_no_output(out)
    if forgery.endswith("2**40"):
        rc, _, stderr = run_cli("inspect", forged, preexec_fn=limit_address_space, timeout=60)
        assert rc == 6, stderr


def forge_memo_index(pkl: bytes, index: int) -> bytes:
    """The same pickle with its first BINPUT replaced by a LONG_BINPUT of `index`."""
    for op, _arg, pos in pickletools.genops(pkl):
        if op.name == "BINPUT":
            return pkl[:pos] + b"r" + struct.pack("<I", index) + pkl[pos + 2 :]
    raise AssertionError("no BINPUT in the pickle")


@pytest.mark.parametrize("legacy", [False, True], ids=["zip", "legacy"])
def test_forged_memo_index_is_corrupt_without_allocating(legacy: bool, tmp_path: Path) -> None:
    """A 1 KB checkpoint whose pickle stores a memo entry at index ~2**31 would make the C
    unpickler size its memo for it (gigabytes, zeroed): a hang found by fuzzing. Refused up front."""
    src = real_checkpoint(tmp_path / "real.pt", legacy)
    forged = tmp_path / "forged.pt"
    rewrite = rewrite_legacy_pickle if legacy else rewrite_zip_pickle
    rewrite(src, forged, lambda pkl: forge_memo_index(pkl, 0x7FFF_FFF0))
    out = tmp_path / "out"
    rc, _, stderr = run_cli("pth-to-safetensors", forged, out, preexec_fn=limit_address_space, timeout=60)
    assert rc == 6, stderr
    line = assert_one_line_error(stderr, "forged.pt")
    assert "memory" not in line.lower(), line
    assert_no_output(out)
    # the edit alone is harmless with an honest index: the first memo entry is number 0
    rewrite(src, tmp_path / "honest.pt", lambda pkl: forge_memo_index(pkl, 0))
    assert torch.load(tmp_path / "honest.pt", weights_only=True).keys() == torch.load(src, weights_only=True).keys()
    rc, _, stderr = run_cli("inspect", tmp_path / "honest.pt")
    assert rc == 0, stderr
