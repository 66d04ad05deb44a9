"""Every input format cut short: each cut is refused with a ConvertError, never a traceback, a hang,
a large allocation, or a crash (a memory map reaching past the end of a file would be a SIGBUS).

Small files are cut at every byte; larger ones at about 200 evenly spaced points plus each side of
every structural boundary (zip entries and the central directory, the pickles and storage records of
a legacy file, a SafeTensors header and each tensor's bytes, HDF5 datasets). A cut that still opens
must give exactly the tensors of the whole file (as when only a JSON index's final newline goes).

The sweep runs in a child process (this module run as a script) under an address-space limit of
1.5 GiB, each cut under a watchdog; an error that comes from a MemoryError counts as a failure, and
the child's peak RSS must stay small. The number of cuts per format is printed in the summary.
"""

from __future__ import annotations

import faulthandler
import hashlib
import importlib.util
import io
import json
import os
import pickletools
import resource
import signal
import struct
import subprocess
import sys
import zipfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO, count_inputs

CHILD_MEMORY = 3 << 29  # 1.5 GiB of address space
PEAK_RSS_LIMIT = 600 << 20
EVERY_BYTE_UP_TO = 4096
SPACED_POINTS = 200
WATCHDOG_SECONDS = 10


# ---------------------------------------------------------------------------------------------
# Cut points
# ---------------------------------------------------------------------------------------------


def cut_points(size: int, boundaries: Iterable[int] = ()) -> list[int]:
    """Every length below `size` for a small file; else ~200 spaced lengths plus each boundary +-1."""
    if size <= EVERY_BYTE_UP_TO:
        return list(range(size))
    points = {size * i // SPACED_POINTS for i in range(SPACED_POINTS)}
    points |= {b + d for b in boundaries for d in (-1, 0, 1)}
    return sorted(p for p in points if 0 <= p < size)


def zip_boundaries(data: bytes) -> list[int]:
    """Local headers, data starts and ends of every entry, the central directory and its end record."""
    out = []
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        for info in zf.infolist():
            name_len, extra_len = struct.unpack("<HH", data[info.header_offset + 26 : info.header_offset + 30])
            start = info.header_offset + 30 + name_len + extra_len
            out += [info.header_offset, start, start + info.compress_size]
        out.append(zf.start_dir)
    out.append(data.rfind(b"PK\x05\x06"))
    return out


def legacy_boundaries(data: bytes) -> list[int]:
    """Ends of the five pickles, then each storage record's element count and bytes, in key order."""
    from types import SimpleNamespace

    from convert.dtypes import dtype
    from convert.pickle_reader import restricted_load, storage_dtype

    stream = io.BytesIO(data)
    out = []
    for _ in range(5):
        for _op in pickletools.genops(stream):
            pass
        out.append(stream.tell())
    itemsizes: dict[str, int] = {}

    def storage(pid: Any) -> Any:  # the legacy persistent id: ('storage', type, key, location, numel, view)
        code = storage_dtype(pid[1])
        itemsizes[pid[2]] = dtype(code).itemsize if code else 1
        return SimpleNamespace(dtype_code=code)

    restricted_load(data[out[2] : out[3]], storage)
    pos = out[-1]
    for key in restricted_load(data[out[3] : out[4]]):
        (count,) = struct.unpack("<q", data[pos : pos + 8])
        out += [pos, pos + 8]
        pos += 8 + count * itemsizes[key]
    return out


def safetensors_boundaries(data: bytes) -> list[int]:
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + n])
    return [8, 8 + n] + [
        8 + n + o for v in header.values() if isinstance(v, dict) and "data_offsets" in v for o in v["data_offsets"]
    ]


def h5_boundaries(path: Path) -> list[int]:
    import h5py

    out: list[int] = []
    with h5py.File(path, "r") as f:

        def visit(_name: str, obj: Any) -> None:
            if isinstance(obj, h5py.Dataset) and obj.id.get_offset() is not None:
                out.extend([obj.id.get_offset(), obj.id.get_offset() + obj.id.get_storage_size()])

        f.visititems(visit)
    return out


# ---------------------------------------------------------------------------------------------
# Fixtures: small real files of every format, and the plan for the child
# ---------------------------------------------------------------------------------------------


def _reader_installed(kind: str) -> bool:
    from exporters.registry import READERS

    return any(face.kind == kind for face in READERS)


def build_cases(work: Path) -> list[dict[str, Any]]:
    """(format, reader kind, file to cut, path to open, cut points) for every format there is a reader for."""
    torch = pytest.importorskip("torch", reason="the torch fixtures are written by torch.save")
    from safetensors.numpy import save_file

    from tests.support import fuzz

    cases: list[dict[str, Any]] = []

    def add(
        fmt: str,
        kind: str,
        path: Path,
        data: bytes,
        boundaries: Iterable[int] = (),
        open_path: Path | None = None,
        entry: str | None = None,
        points: list[int] | None = None,
    ) -> None:
        """A case: `path` (holding `data`) is cut -- or only its zip `entry` -- and `open_path` opened."""
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
        cases.append(
            {
                "format": fmt,
                "kind": kind,
                "file": str(path),
                "open": str(open_path or path),
                "entry": entry,
                "points": cut_points(len(data), boundaries) if points is None else points,
            }
        )

    plain, views, lightning, _nested = fuzz.torch_seed_objects()
    zip_data = fuzz.torch_bytes({**plain, **views}, legacy=False)
    add("torch zip", "pytorch", work / "zip" / "model.pt", zip_data, zip_boundaries(zip_data))
    legacy_data = fuzz.torch_bytes({**plain, **views}, legacy=True)
    add("torch legacy", "pytorch", work / "legacy" / "model.pt", legacy_data, legacy_boundaries(legacy_data))
    ckpt = fuzz.torch_bytes(lightning, legacy=False)
    add("lightning ckpt", "pytorch", work / "ckpt" / "last.ckpt", ckpt, zip_boundaries(ckpt))
    example = (REPO / "fixtures" / "example" / "tiny_model.pt").read_bytes()
    add("torch zip 115 KB", "pytorch", work / "example" / "tiny_model.pt", example, zip_boundaries(example))
    pkl_name, pkl = next((n, d) for n, d in fuzz.zip_entries(zip_data) if n.endswith("/data.pkl"))
    add(
        "torch zip, data.pkl cut inside a valid zip",
        "pytorch",
        work / "inner" / "model.pt",
        zip_data,
        entry=pkl_name,
        points=list(range(len(pkl))),
    )

    import numpy as np

    g = np.random.default_rng(0)
    arrays = {
        "w": g.standard_normal((3, 4)).astype(np.float32),
        "b": np.arange(4, dtype=np.int64),
        "h": np.ones((2, 2), np.float16),
        "m": np.array([True, False]),
    }
    save_file(arrays, str(work / "st.safetensors"), metadata={"format": "pt"})
    st = (work / "st.safetensors").read_bytes()
    add("safetensors", "safetensors", work / "st" / "model.safetensors", st, safetensors_boundaries(st))
    big = {f"layer{i}.weight": g.standard_normal((64, 64)).astype(np.float32) for i in range(6)}
    save_file(big, str(work / "big.safetensors"))
    big_st = (work / "big.safetensors").read_bytes()
    add("safetensors 98 KB", "safetensors", work / "st-big" / "model.safetensors", big_st, safetensors_boundaries(big_st))

    sharded = work / "hf-bin"
    shards = {
        "pytorch_model-00001-of-00002.bin": {"a.weight": torch.ones(2, 3)},
        "pytorch_model-00002-of-00002.bin": {"b.weight": torch.zeros(3), "b.bias": torch.ones(1)},
    }
    for name, sd in shards.items():
        sharded.mkdir(exist_ok=True)
        torch.save(sd, sharded / name)
    index = {"metadata": {"total_size": 40}, "weight_map": {k: n for n, sd in shards.items() for k in sd}}
    add(
        "HF sharded folder index (pytorch_model.bin.index.json)",
        "pytorch",
        sharded / "pytorch_model.bin.index.json",
        (json.dumps(index, indent=2) + "\n").encode(),
        open_path=sharded,
    )
    st_sharded = work / "hf-st"
    st_sharded.mkdir()
    save_file({"a": arrays["w"]}, str(st_sharded / "model-00001-of-00002.safetensors"))
    save_file({"b": arrays["b"]}, str(st_sharded / "model-00002-of-00002.safetensors"))
    st_index = {
        "metadata": {"total_size": 80},
        "weight_map": {"a": "model-00001-of-00002.safetensors", "b": "model-00002-of-00002.safetensors"},
    }
    add(
        "HF sharded folder index (model.safetensors.index.json)",
        "safetensors",
        st_sharded / "model.safetensors.index.json",
        (json.dumps(st_index, indent=2) + "\n").encode(),
        open_path=st_sharded,
    )

    if _reader_installed("keras") and importlib.util.find_spec("h5py"):
        h5, keras_zip = fuzz.h5_seeds(work)
        (work / "seed.h5").write_bytes(h5)
        add("keras h5", "keras", work / "keras" / "weights.h5", h5, h5_boundaries(work / "seed.h5"))
        add(".keras", "keras", work / "keras3" / "model.keras", keras_zip, zip_boundaries(keras_zip))
    if _reader_installed("flax") and importlib.util.find_spec("msgpack"):
        add("flax msgpack", "flax", work / "flax" / "model.msgpack", fuzz.msgpack_seeds()[0])
    return cases


@pytest.fixture(scope="module")
def sweep(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """Build every fixture, run the child over all cuts, return its report (per format)."""
    work = tmp_path_factory.mktemp("truncation")
    cases = build_cases(work)
    (work / "plan.json").write_text(json.dumps(cases))
    proc = subprocess.run(
        [sys.executable, __file__, str(work / "plan.json"), str(work / "report.json")],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=work,
        env={**os.environ, "PYTHONPATH": str(REPO)},  # the child imports tests.support
    )
    progress = (work / "report.json.progress").read_text() if (work / "report.json.progress").exists() else ""
    assert proc.returncode == 0, f"child died (exit {proc.returncode}) at {progress.splitlines()[-1:]}: {proc.stderr[-3000:]}"
    return json.loads((work / "report.json").read_text())


FORMATS = [
    "torch zip",
    "torch legacy",
    "lightning ckpt",
    "torch zip 115 KB",
    "torch zip, data.pkl cut inside a valid zip",
    "safetensors",
    "safetensors 98 KB",
    "HF sharded folder index (pytorch_model.bin.index.json)",
    "HF sharded folder index (model.safetensors.index.json)",
    "keras h5",
    ".keras",
    "flax msgpack",
]


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_cut_is_refused_cleanly(fmt: str, sweep: dict[str, Any]) -> None:
    if fmt not in sweep["formats"]:
        reader = {"keras h5": "keras", ".keras": "keras", "flax msgpack": "flax"}.get(fmt, fmt)
        pytest.skip(f"no {reader} reader installed (or its file library is missing): nothing to cut")
    report = sweep["formats"][fmt]
    count_inputs("truncation points", fmt, report["cuts"])
    assert report["whole_file_accepted"], f"{fmt}: the uncut fixture is not accepted: {report['whole_file_error']}"
    assert report["cuts"] >= min(report["size"], SPACED_POINTS), report
    assert not report["failures"], f"{fmt}: {len(report['failures'])} bad cuts, first: {report['failures'][:5]}"
    assert report["refused"] + report["accepted_same"] == report["cuts"]


def test_child_stayed_small(sweep: dict[str, Any]) -> None:
    """No cut made the reader touch a large amount of memory (RLIMIT_AS caps what it may reserve)."""
    assert sweep["peak_rss"] < PEAK_RSS_LIMIT, f"peak RSS {sweep['peak_rss'] >> 20} MiB"


# ---------------------------------------------------------------------------------------------
# The child
# ---------------------------------------------------------------------------------------------


class Hang(BaseException):
    """Raised by the watchdog; a BaseException so that no reader's `except Exception` hides it."""


def _fire(signum: int, frame: Any) -> None:
    raise Hang(f"no answer within {WATCHDOG_SECONDS} s")


def _fingerprint(kind: str, path: Path) -> list[tuple[str, str, tuple[int, ...], str]]:
    """Open with the kind's reader and read every tensor: (name, dtype, shape, sha256) in order."""
    import numpy as np

    from exporters.registry import open_source

    source = open_source(path, kind=kind)
    with source:
        out = []
        for ref in source.tensors:
            arr = np.ascontiguousarray(ref.array())
            out.append((ref.name, ref.dtype.code, tuple(arr.shape), hashlib.sha256(arr.view(np.uint8).tobytes()).hexdigest()))
        return out


def _from_memory(exc: BaseException) -> bool:
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, MemoryError):
            return True
        seen = seen.__context__ or seen.__cause__
    return False


def run_case(case: dict[str, Any], progress: Any) -> dict[str, Any]:
    from convert.errors import ConvertError
    from tests.support.fuzz import rezip, zip_entries

    target, open_path, entry = Path(case["file"]), Path(case["open"]), case["entry"]
    whole = target.read_bytes()
    entries = zip_entries(whole) if entry else []
    report = {
        "size": len(dict(entries)[entry]) if entry else len(whole),
        "cuts": 0,
        "refused": 0,
        "accepted_same": 0,
        "failures": [],
        "whole_file_accepted": True,
        "whole_file_error": None,
    }
    try:
        expected = _fingerprint(case["kind"], open_path)
    except ConvertError as exc:
        return {**report, "whole_file_accepted": False, "whole_file_error": str(exc)}
    for cut in case["points"]:
        print(case["format"], cut, file=progress, flush=True)
        if entry:  # only this entry is cut; the zip around it stays valid
            target.write_bytes(rezip([(n, d[:cut] if n == entry else d) for n, d in entries]))
        else:
            target.write_bytes(whole[:cut])
        report["cuts"] += 1
        signal.alarm(WATCHDOG_SECONDS)  # a hang in Python code: an exception
        faulthandler.dump_traceback_later(2 * WATCHDOG_SECONDS, exit=True)  # in C code: the child ends, progress names the cut
        try:
            got = _fingerprint(case["kind"], open_path)
        except Hang as exc:
            report["failures"].append({"cut": cut, "problem": f"hang: {exc}"})
        except ConvertError as exc:
            if _from_memory(exc):
                report["failures"].append({"cut": cut, "problem": f"allocation attempted: {exc}"})
            else:
                report["refused"] += 1
        except BaseException as exc:  # noqa: BLE001 - reporting, not handling
            report["failures"].append({"cut": cut, "problem": f"{type(exc).__name__}: {exc}"[:300]})
        else:
            if got == expected:
                report["accepted_same"] += 1
            else:
                report["failures"].append({"cut": cut, "problem": "accepted, with different tensors"})
        finally:
            signal.alarm(0)
            faulthandler.cancel_dump_traceback_later()
    target.write_bytes(whole)
    return report


def main(plan_path: Path, report_path: Path) -> None:
    resource.setrlimit(resource.RLIMIT_AS, (CHILD_MEMORY, CHILD_MEMORY))
    signal.signal(signal.SIGALRM, _fire)
    report: dict[str, Any] = {"formats": {}}
    with open(f"{report_path}.progress", "w") as progress:
        for case in json.loads(plan_path.read_text()):
            report["formats"][case["format"]] = run_case(case, progress)
    report["peak_rss"] = _peak_rss()
    report_path.write_text(json.dumps(report))


def _peak_rss() -> int:
    """This process's own high-water RSS. Not ru_maxrss: Linux keeps that across fork+exec, so a child
    of a large pytest process would report the parent's peak."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


if __name__ == "__main__":  # the child process of the `sweep` fixture
    main(Path(sys.argv[1]), Path(sys.argv[2]))
    os._exit(0)  # skip interpreter teardown (h5py and friends) once the report is written
