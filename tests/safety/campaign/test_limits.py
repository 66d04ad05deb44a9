"""The readers' limits under hostile inputs (nesting, hash work, entry counts, inflation, shapes numpy
cannot build, integer digits, pattern budgets, damaged zips, error-line escapes, stale staging): each
file is built here, run through the CLI in a child process in an empty folder, and must end with its
documented exit code, exactly one stderr line, no output or staging folder, and a peak RSS under
1 GiB. No signal, no internal error (exit 1)."""

from __future__ import annotations

import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import pytest

from tests.support import REPO
from tests.support.keras_models import keras2_weights_file
from tests.support.measured_run import refused, run_measured

UNSAFE, CORRUPT = 5, 6


def torch_zip(path: Path, data_pkl: bytes) -> Path:
    """A torch zip checkpoint holding only `data_pkl` (and the entries torch writes beside it)."""
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("archive/data.pkl", data_pkl)
        zf.writestr("archive/byteorder", "little")
        zf.writestr("archive/version", "3\n")
    return path


def torch_saved_with_edit(path: Path, state: dict[str, Any], edit: Any) -> Path:
    """A real torch.save of `state` whose data.pkl is passed through `edit` (bytes -> bytes)."""
    torch = pytest.importorskip("torch")
    torch.save(state, path)
    with zipfile.ZipFile(path) as zf:
        entries = {i.filename: zf.read(i) for i in zf.infolist()}
    name = next(n for n in entries if n.endswith("/data.pkl"))
    entries[name] = edit(entries[name])
    with zipfile.ZipFile(path, "w") as zf:
        for entry, data in entries.items():
            zf.writestr(entry, data)
    return path


# ---------------------------------------------------------------------------------------------
# Pickles: nesting, hashing, memo, BUILD, BYTEARRAY8
# ---------------------------------------------------------------------------------------------


def nested_tuple(depth: int) -> bytes:
    """Opcodes of a tuple nested `depth` deep: ((((),),),) -- 1 byte per level."""
    return pickle.EMPTY_TUPLE + pickle.TUPLE1 * depth


def deep_key_pickle(depth: int, container: str) -> bytes:
    key = nested_tuple(depth)
    body = {
        "dict": pickle.EMPTY_DICT + key + pickle.NONE + pickle.SETITEM,
        "set": pickle.EMPTY_SET + pickle.MARK + key + pickle.ADDITEMS,
        "frozenset": pickle.MARK + key + pickle.FROZENSET,
    }[container]
    return pickle.PROTO + b"\x04" + body + pickle.STOP


@pytest.mark.parametrize("depth", [1_000, 300_000])
@pytest.mark.parametrize("container", ["dict", "set", "frozenset"])
def test_deeply_nested_key_is_refused_before_hashing(container: str, depth: int, tmp_path: Path) -> None:
    """A tuple nested 300,000 deep used as a key crashed the process (C stack overflow in hash);
    1,000 deep hit RecursionError while naming tensors. Both are refused as corrupt."""
    src = torch_zip(tmp_path / "deep.pt", deep_key_pickle(depth, container))
    work = tmp_path / "work"
    work.mkdir()
    for command in ("pth-to-safetensors", "auto", "inspect"):
        args = [command, src] + ([work / "out"] if command != "inspect" else [])
        refused(CORRUPT, *args, cwd=work, out=work / "out", needles=("nests containers more than",))


def test_shared_container_is_not_counted_as_nesting(tmp_path: Path) -> None:
    """The depth check follows objects, not paths: one list shared under many keys stays shallow."""
    from convert.pickle_reader import MAX_NESTING, restricted_load

    shared: list[Any] = [1]
    obj = {f"k{i}": shared for i in range(500)}
    assert restricted_load(pickle.dumps(obj, protocol=2))["k499"] == [1]
    chain: Any = ()
    for _ in range(MAX_NESTING - 1):
        chain = (chain,)
    assert restricted_load(pickle.dumps({chain: 1}, protocol=2))


def test_huge_bytearray8_is_one_line(tmp_path: Path) -> None:
    """BYTEARRAY8 with a length of 2**40: CPython printed a SystemError line before the error."""
    data = pickle.PROTO + b"\x05" + b"\x96" + (1 << 40).to_bytes(8, "little") + b"abc"
    src = torch_zip(tmp_path / "ba.pt", data)
    work = tmp_path / "work"
    work.mkdir()
    for _ in range(3):  # the SystemError line came and went from run to run
        refused(CORRUPT, "pth-to-safetensors", src, work / "out", cwd=work, out=work / "out")


def test_build_on_ordered_dict_cannot_shadow_its_methods(tmp_path: Path) -> None:
    """BUILD on an allowed OrderedDict set an instance attribute `items` that the reader then called."""
    data = (
        pickle.PROTO
        + b"\x02"
        + pickle.GLOBAL
        + b"collections\nOrderedDict\n"
        + pickle.EMPTY_TUPLE
        + pickle.REDUCE
        + pickle.EMPTY_DICT
        + pickle.BINUNICODE
        + (5).to_bytes(4, "little")
        + b"items"
        + pickle.BINUNICODE
        + (4).to_bytes(4, "little")
        + b"evil"
        + pickle.SETITEM
        + pickle.BUILD
        + pickle.STOP
    )
    src = torch_zip(tmp_path / "od.pt", data)
    work = tmp_path / "work"
    work.mkdir()
    refused(UNSAFE, "pth-to-safetensors", src, work / "out", cwd=work, out=work / "out", needles=("OrderedDict",))


def test_real_ordered_dict_state_still_reads() -> None:
    """torch's state dicts carry `_metadata` through BUILD: that state is kept, as data."""
    from collections import OrderedDict

    from convert.pickle_reader import restricted_load

    od: OrderedDict[str, int] = OrderedDict(a=1)
    od._metadata = {"": {"version": 1}}  # type: ignore[attr-defined]
    back = restricted_load(pickle.dumps(od, protocol=2))
    assert dict.items(back) == od.items() and isinstance(back, dict)


# ---------------------------------------------------------------------------------------------
# Links: nothing outside the input is read or copied
# ---------------------------------------------------------------------------------------------


def hf_folder(tmp_path: Path) -> Path:
    torch = pytest.importorskip("torch")
    folder = tmp_path / "model"
    folder.mkdir()
    torch.save({"w": torch.arange(6.0).reshape(2, 3)}, folder / "pytorch_model.bin")
    (folder / "config.json").write_text('{"model_type": "x"}')
    return folder


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_linked_sidecar_is_refused_unless_allowed(link: str, tmp_path: Path) -> None:
    """A vocab.txt that is a link to a file elsewhere was copied into OUT (exit 0)."""
    folder = hf_folder(tmp_path)
    secret = tmp_path / "secret.txt"
    secret.write_text("not part of the model\n")
    (folder / "vocab.txt").symlink_to(secret) if link == "symlink" else (folder / "vocab.txt").hardlink_to(secret)
    work = tmp_path / "work"
    work.mkdir()
    for command in ("pth-to-safetensors", "auto"):
        refused(UNSAFE, command, folder, work / "out", cwd=work, out=work / "out", needles=("vocab.txt", "--follow-links"))
    run = run_measured("auto", folder, work / "out", "--follow-links", cwd=work)
    assert run.code == 0, run.stderr
    assert (work / "out" / "vocab.txt").read_text() == secret.read_text()


def test_hard_linked_onnx_external_data_is_refused(tmp_path: Path) -> None:
    """ONNX external data that is a hard link to a file elsewhere was read into model.safetensors;
    ONNX's own loader refuses files with more than one link."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4, 3], data_location=TensorProto.EXTERNAL)
    for key, value in {"location": "weights.bin", "offset": "0", "length": "48"}.items():
        weight.external_data.add(key=key, value=value)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        [weight],
    )
    folder = tmp_path / "model"
    folder.mkdir()
    onnx.save(helper.make_model(graph), folder / "model.onnx")
    outside = tmp_path / "outside.bin"
    outside.write_bytes(bytes(range(48)))
    (folder / "weights.bin").hardlink_to(outside)
    work = tmp_path / "work"
    work.mkdir()
    refused(
        UNSAFE,
        "onnx-to-safetensors",
        folder / "model.onnx",
        work / "out",
        cwd=work,
        out=work / "out",
        needles=("weights.bin", "hard links"),
    )


# ---------------------------------------------------------------------------------------------
# Decompression: streamed, with a ratio and a budget on what actually comes out
# ---------------------------------------------------------------------------------------------


def test_gzip_dataset_is_inflated_in_bounded_memory(tmp_path: Path) -> None:
    """A gzip-compressed HDF5 dataset was read whole (a 3 MB file: 3.2 GB RSS). It converts, with
    memory bounded by a chunk: here 256 MiB of zeros from under 1 MB, peak RSS under 192 MiB."""
    src = keras2_weights_file(tmp_path / "bomb.h5", (8192, 8192), chunks=(256, 8192), compression="gzip")
    assert src.stat().st_size < 1 << 20
    work = tmp_path / "work"
    work.mkdir()
    run = run_measured("keras-to-safetensors", src, work / "out", cwd=work)
    assert run.code == 0, run.stderr
    assert run.peak_rss < 192 << 20, f"peak RSS {run.peak_rss >> 20} MiB"
    from safetensors.numpy import safe_open

    with safe_open(str(work / "out" / "model.safetensors"), "numpy") as f:
        weight = f.get_slice("dense.weight")
        assert weight.get_shape() == [8192, 8192]
        assert weight[:4, 0].tolist() == [1.0] * 4 and weight[4:8, 0].tolist() == [0.0] * 4


def test_gzip_dataset_with_a_huge_chunk_is_refused(tmp_path: Path) -> None:
    """libhdf5 inflates a whole chunk in memory: chunks past the budget are refused before reading."""
    src = keras2_weights_file(tmp_path / "chunk.h5", (16384, 8192), chunks=(16384, 8192), compression="gzip")
    work = tmp_path / "work"
    work.mkdir()
    refused(4, "keras-to-safetensors", src, work / "out", cwd=work, out=work / "out", needles=("chunk",))


def keras_zip_with_lying_member(path: Path, real_bytes: int, declared_compressed: int) -> Path:
    """A .keras whose model.weights.h5 is bzip2'd zeros, its central directory declaring
    `declared_compressed` compressed bytes (far more than the file holds) so the ratio looks sane."""
    import struct

    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("config.json", '{"class_name": "Sequential", "config": {"name": "s", "layers": []}}')
        zf.writestr("metadata.json", '{"keras_version": "3.10.0"}')
        zf.writestr("model.weights.h5", bytes(real_bytes), compress_type=zipfile.ZIP_BZIP2)
    data = bytearray(path.read_bytes())
    at = data.rfind(b"PK\x01\x02", 0, data.rfind(b"model.weights.h5"))
    struct.pack_into("<I", data, at + 20, declared_compressed)
    path.write_bytes(bytes(data))
    return path


def test_zip_member_lying_about_its_compressed_size_is_refused(tmp_path: Path) -> None:
    """A 3 KB .keras inflated 1 GiB: its member declared a compressed size the file does not hold,
    so the ratio check on declared sizes passed. Sizes are now checked against the file first."""
    src = keras_zip_with_lying_member(tmp_path / "bomb.keras", 256 << 20, 1 << 20)
    assert src.stat().st_size < 4096
    work = tmp_path / "work"
    work.mkdir()
    for command in ("keras-to-safetensors", "auto", "inspect"):
        args = [command, src] + ([work / "out"] if command != "inspect" else [])
        run = refused(CORRUPT, *args, cwd=work, out=work / "out", needles=("model.weights.h5",))
        assert run.peak_rss < 200 << 20, f"peak RSS {run.peak_rss >> 20} MiB"


# ---------------------------------------------------------------------------------------------
# SafeTensors headers: entry counts, shapes numpy cannot build, long integers
# ---------------------------------------------------------------------------------------------


def safetensors_file(path: Path, header: bytes, data: bytes = b"") -> Path:
    import struct

    header += b" " * (-len(header) % 8)
    path.write_bytes(struct.pack("<Q", len(header)) + header + data)
    return path


def test_header_with_millions_of_entries_is_refused_in_bounded_work(tmp_path: Path) -> None:
    """1.2 M zero-byte entries under the 100 MB cap took 30-50 s and 2.3 GB before any check."""
    entries = b",".join(b'"t%d":{"dtype":"F32","shape":[0],"data_offsets":[0,0]}' % i for i in range(1_200_000))
    src = safetensors_file(tmp_path / "many.safetensors", b"{" + entries + b"}")
    work = tmp_path / "work"
    work.mkdir()
    for command in ("auto", "inspect"):
        args = [command, src] + ([work / "out"] if command != "inspect" else [])
        run = refused(CORRUPT, *args, cwd=work, out=work / "out", needles=("entries",))
        assert run.peak_rss < 512 << 20, f"peak RSS {run.peak_rss >> 20} MiB"


@pytest.mark.parametrize(
    "shape, needle",
    [
        ([0, 2**62], "too large"),
        ([0, 2**40, 2**40], "too large"),
        ([1] * 65 + [0], "dimensions"),
        ("[0,1" + "0" * 5000 + "]", "JSON"),  # past Python's 4300-digit limit for int()
    ],
)
def test_header_shape_numpy_cannot_build_is_refused(shape: list[int] | str, needle: str, tmp_path: Path) -> None:
    text = shape if isinstance(shape, str) else str(shape).replace(" ", "")
    header = b'{"t":{"dtype":"F32","shape":%s,"data_offsets":[0,0]}}' % text.encode()
    src = safetensors_file(tmp_path / "shape.safetensors", header)
    work = tmp_path / "work"
    work.mkdir()
    refused(CORRUPT, "auto", src, work / "out", cwd=work, out=work / "out", needles=(needle,))


@pytest.mark.parametrize("size, stride", [((1, 2), (2**62, 1)), ((0, 2**62), (1, 1)), ((1,) * 65, (1,) * 65)])
def test_pickled_tensor_numpy_cannot_build_is_refused(size: tuple[int, ...], stride: tuple[int, ...], tmp_path: Path) -> None:
    """Strides >= 2**62, zero-size tensors with huge dims, more than 64 dims: OverflowError or
    numpy's 'array is too big' (exit 1). Refused as corrupt before any array is built."""
    torch = pytest.importorskip("torch")

    def ops(value: tuple[int, ...]) -> bytes:  # a tuple's opcodes without protocol, memo put and STOP
        return pickle.dumps(value, protocol=2)[2:-3]

    def edit(pkl: bytes) -> bytes:
        found = re.search(rb"K\x04\x85q(.)K\x01\x85q(.)", pkl, re.S)  # size (4,), stride (1,)
        assert found
        return pkl.replace(found[0], ops(size) + b"q" + found[1] + ops(stride) + b"q" + found[2])

    src = torch_saved_with_edit(tmp_path / "t.pt", {"w": torch.zeros(4)}, edit)
    work = tmp_path / "work"
    work.mkdir()
    refused(CORRUPT, "pth-to-safetensors", src, work / "out", cwd=work, out=work / "out")


# ---------------------------------------------------------------------------------------------
# The error line: control characters and lone surrogates escaped
# ---------------------------------------------------------------------------------------------


def test_error_line_escapes_control_characters_and_surrogates(tmp_path: Path) -> None:
    """A global named with ESC sequences and a lone surrogate (BINUNICODE decodes with
    surrogatepass): the line was printed raw (a terminal obeys ESC) or not at all (UnicodeEncodeError)."""

    def text(s: bytes) -> bytes:
        return pickle.BINUNICODE + len(s).to_bytes(4, "little") + s

    data = pickle.PROTO + b"\x04" + text(b"os\x1b[2J\x07") + text(b"sys\xed\xa0\x80tem") + pickle.STACK_GLOBAL + pickle.STOP
    src = torch_zip(tmp_path / "esc.pt", data)
    work = tmp_path / "work"
    work.mkdir()
    run = refused(
        UNSAFE, "pth-to-safetensors", src, work / "out", cwd=work, out=work / "out", needles=("os\\x1b[2J\\x07.sys\\ud800tem",)
    )
    assert all(c == "\n" or c.isprintable() for c in run.stderr), repr(run.stderr)


# ---------------------------------------------------------------------------------------------
# A run killed with SIGKILL: the next run into the same destination removes its staging folder
# ---------------------------------------------------------------------------------------------

KILLED_RUN = """
import os, signal, sys
from convert.output import StagedOutput
with StagedOutput(sys.argv[1]) as staging:
    (staging / "model.safetensors").write_bytes(b"partial")
    os.kill(os.getpid(), signal.SIGKILL)
"""


def test_stale_staging_folder_of_a_killed_run_is_removed(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    from convert.output import StagedOutput

    src = safetensors_file(tmp_path / "m.safetensors", b'{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', bytes(8))
    work = tmp_path / "work"
    work.mkdir()
    out = work / "out"
    live = StagedOutput(work / "out")
    live_staging = live.__enter__()  # this process is alive: its staging folder must stay
    killed = subprocess.run(
        [sys.executable, "-c", KILLED_RUN, str(out)],
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
    )
    assert killed.returncode == -9, killed.stderr
    [stale] = [p.name for p in work.iterdir() if p.name.startswith(".out.convert-") and p != live_staging]
    try:
        run = run_measured("auto", src, out, cwd=work)
        assert run.code == 0, run.stderr
        assert run.stderr.splitlines() == [f"convert: warning: removed {stale}, the staging folder of a run that was killed"], (
            run.stderr
        )
        assert (out / "model.safetensors").is_file() and live_staging.is_dir()
        assert sorted(p.name for p in work.iterdir()) == sorted(["out", live_staging.name])
    finally:
        live.__exit__(RuntimeError, RuntimeError(), None)


# ---------------------------------------------------------------------------------------------
# NeuralForecast: config values bounded, hostile configuration pickles unsafe
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "model, edit, needle",
    [
        ("MLP_0.safetensors", {"num_layers": 1e9}, "num_layers=1000000000"),
        ("NHITS_0.safetensors", {"n_blocks": [10**9, 1, 1]}, "n_blocks=1000000000"),
        ("NHITS_0.safetensors", {"n_pool_kernel_size": [0, 0, 0]}, "ZeroDivisionError"),
        # hostile but well-formed values: exit 1 (or a 2 GiB allocation, or a warning line) before
        ("MLP_0.safetensors", {"h": float("inf")}, "OverflowError"),
        ("MLP_0.safetensors", {"n_series": float("nan")}, "ValueError"),
        (
            "MLP_0.safetensors",
            {"optimizer_kwargs": {"__nf__": "array", "dtype": "<U500000000", "shape": [1], "values": ["a"]}},
            "<U500000000",
        ),
        (
            "MLP_0.safetensors",
            {"optimizer_kwargs": {"__nf__": "array", "dtype": "|V1000000000", "shape": [1], "values": [0]}},
            "|V1000000000",
        ),
        ("MLP_0.safetensors", {"optimizer_kwargs": {"__nf__": "array", "dtype": "S8", "shape": [1], "values": ["a"]}}, "'S8'"),
        (
            "MLP_0.safetensors",
            {"optimizer_kwargs": {"__nf__": "array", "dtype": "f4", "shape": [2**62, 2**62], "values": []}},
            "shape",
        ),
        ("MLP_0.safetensors", {"h": {"__nf__": "datetime64", "unit": "ns", "values": [2**63]}}, "OverflowError"),
        ("MLP_0.safetensors", {"h": {"__nf__": ["loss"]}}, "is not a name"),
        ("MLP_0.safetensors", {"loss": {"__nf__": "loss", "cls": "MQLoss", "args": {"level": [10**300]}}}, "percentages"),
    ],
)
def test_nf_config_values_are_bounded(model: str, edit: dict[str, Any], needle: str, tmp_path: Path) -> None:
    """num_layers=1e9 looped in the shape check (3.7 GB, MemoryError); a zero kernel divided by zero;
    infinite or NaN sizes, dtypes of a GiB per element, datetimes past int64, a list where a tag or a
    number belongs."""
    import json

    from tests.support.nf_models import copy_fixture, hyper_parameters, rewrite_metadata

    folder = copy_fixture("3.3.0", tmp_path)
    hparams = {**hyper_parameters(folder / model), **edit}
    rewrite_metadata(folder / model, {"hyper_parameters": json.dumps(hparams)})
    work = tmp_path / "work"
    work.mkdir()
    refused(CORRUPT, "nf-to-safetensors", folder, work / "out", cwd=work, out=work / "out", needles=(needle,))


def test_nf_configuration_pickle_with_a_gadget_behind_an_error_is_unsafe(tmp_path: Path) -> None:
    """A malicious configuration.pkl that fails as malformed before its gadget was skipped as corrupt
    and the conversion exited 0; SECURITY.md promises exit 5."""
    from tests.support.nf_models import copy_fixture

    folder = copy_fixture("3.2.2", tmp_path)
    gadget = (
        pickle.GLOBAL + b"os\nsystem\n" + pickle.BINUNICODE + (5).to_bytes(4, "little") + b"touch" + pickle.TUPLE1 + pickle.REDUCE
    )
    # a memo entry far past those made: refused before the unpickler reaches the gadget
    (folder / "configuration.pkl").write_bytes(
        pickle.PROTO + b"\x02" + pickle.NONE + pickle.LONG_BINPUT + (2**30).to_bytes(4, "little") + gadget + pickle.STOP
    )
    work = tmp_path / "work"
    work.mkdir()
    refused(UNSAFE, "nf-to-safetensors", folder, work / "out", cwd=work, out=work / "out", needles=("os.system",))


# ---------------------------------------------------------------------------------------------
# JSON and TOML: one loader, with integer digit limits and nesting caps
# ---------------------------------------------------------------------------------------------

LONG_INT = "1" + "0" * 5000  # past Python's 4300-digit limit: int() raises ValueError
DEEP_JSON = "[" * 5000 + "]" * 5000
DEEP_BUT_PARSEABLE = "[" * 900 + "]" * 900  # json parses it; code walking it recursively would not


@pytest.mark.parametrize("config", [f'{{"hidden": {LONG_INT}}}', DEEP_JSON, DEEP_BUT_PARSEABLE])
def test_hf_config_json_limits(config: str, tmp_path: Path) -> None:
    folder = hf_folder(tmp_path)
    (folder / "config.json").write_text(config)
    work = tmp_path / "work"
    work.mkdir()
    refused(CORRUPT, "auto", folder, work / "out", cwd=work, out=work / "out", needles=("config.json",))


@pytest.mark.parametrize("document", ["manifest", "report", "layout", "job"])
def test_user_documents_with_long_integers_are_one_line(document: str, tmp_path: Path) -> None:
    """Manifests given to verify, batch reports, layout and job files: a 5,000-digit integer was a
    ValueError (exit 1)."""
    work = tmp_path / "work"
    work.mkdir()
    src = safetensors_file(tmp_path / "m.safetensors", b'{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', bytes(8))
    if document == "manifest":
        (tmp_path / "o").mkdir()
        (tmp_path / "o" / "manifest.json").write_text(f'{{"format_version": {LONG_INT}}}')
        refused(CORRUPT, "verify", tmp_path / "o", cwd=work)
    elif document == "report":
        (tmp_path / "r.jsonl").write_text(f'{{"status": "failed", "source": "x", "n": {LONG_INT}}}\n')
        refused(2, "batch", src, "--out-dir", work / "o", "--retry-failed", tmp_path / "r.jsonl", cwd=work)
    elif document == "layout":
        (tmp_path / "l.toml").write_text(f'extends = "pytorch"\nn = {LONG_INT}\n')
        refused(2, "auto", src, work / "out", "--layout-file", tmp_path / "l.toml", cwd=work, out=work / "out")
    else:
        (tmp_path / "j.toml").write_text(f'[[job]]\nsource = "{src}"\nn = {LONG_INT}\n')
        refused(2, "batch", "--job-file", tmp_path / "j.toml", "--out-dir", work / "o", cwd=work)


def test_zip_name_flagged_utf8_but_undecodable_is_corrupt(tmp_path: Path) -> None:
    """zipfile raises UnicodeDecodeError on such a name: detection broke (exit 1 in auto/inspect)."""
    src = tmp_path / "bad.pt"
    with zipfile.ZipFile(src, "w") as zf:
        zf.writestr("archive/data.pkl", pickle.dumps({}))
        zf.writestr("archive/\u00e9", b"")  # non-ASCII: written with the UTF-8 flag
    src.write_bytes(src.read_bytes().replace("\u00e9".encode(), b"\xff\xfe"))
    work = tmp_path / "work"
    work.mkdir()
    for command in ("auto", "inspect"):
        args = [command, src] + ([work / "out"] if command != "inspect" else [])
        refused(CORRUPT, *args, cwd=work, out=work / "out", needles=("damaged zip",))


# ---------------------------------------------------------------------------------------------
# ONNX: products in int64, locations, nodes without outputs, names that are not UTF-8
# ---------------------------------------------------------------------------------------------


def onnx_model(
    path: Path, dims: list[int], location: str | None = None, outputs: tuple[str, ...] = ("y",), name: str = "wname"
) -> Path:
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper

    weight = TensorProto(name=name, data_type=TensorProto.FLOAT, dims=dims)
    if location is not None:
        weight.data_location = TensorProto.EXTERNAL
        for key, value in {"location": location, "offset": "0", "length": "0"}.items():
            weight.external_data.add(key=key, value=value)
    else:
        weight.raw_data = b""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", name], list(outputs))],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 2])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        [weight],
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(helper.make_model(graph), path)
    return path


@pytest.mark.parametrize(
    "case", ["wrapping-dims", "wrapping-dims-external", "nul-location", "long-location", "no-output", "not-utf8"]
)
def test_hostile_onnx_is_one_line(case: str, tmp_path: Path) -> None:
    """int64 dims products wrapping to 0 bytes passed the checks; a NUL or 5,000-character location,
    a MatMul without outputs and a name that is not UTF-8 were exit 1."""
    folder = tmp_path / "model"
    wrap = [2**32, 2**32]  # 2**64 elements: numpy's int64 product is 0
    src = {
        "wrapping-dims": lambda: onnx_model(folder / "m.onnx", wrap),
        "wrapping-dims-external": lambda: onnx_model(folder / "m.onnx", wrap, location="w.bin"),
        "nul-location": lambda: onnx_model(folder / "m.onnx", [0, 2], location="w\0.bin"),
        "long-location": lambda: onnx_model(folder / "m.onnx", [0, 2], location="w" * 5000),
        "no-output": lambda: onnx_model(folder / "m.onnx", [2, 2], outputs=()),
        "not-utf8": lambda: onnx_model(folder / "m.onnx", [0, 2], name="w\u00e9"),
    }[case]()
    if case == "wrapping-dims-external":
        (folder / "w.bin").write_bytes(b"")
    if case == "no-output":  # a well-formed 2x2 weight, so only the node is wrong
        import onnx

        model = onnx.load(str(src))
        model.graph.initializer[0].raw_data = bytes(16)
        onnx.save(model, src)
    if case == "not-utf8":
        src.write_bytes(src.read_bytes().replace("w\u00e9".encode(), b"w\xff"))
    work = tmp_path / "work"
    work.mkdir()
    if case == "no-output":  # nothing wrong with the weights: converted, named as stored
        run = run_measured("onnx-to-safetensors", src, work / "out", cwd=work)
        assert run.code == 0, run.stderr
        return
    refused(CORRUPT, "onnx-to-safetensors", src, work / "out", cwd=work, out=work / "out")


@pytest.mark.parametrize(
    "case", ["report-no-source", "report-number-source", "report-not-utf8", "layout-bad-regex", "job-output-nul"]
)
def test_hostile_user_documents_are_one_line(case: str, tmp_path: Path) -> None:
    """Reports without a string `source` or not UTF-8, a layout regex that does not compile, a job
    output with a NUL byte: exit 1 before."""
    work = tmp_path / "work"
    work.mkdir()
    src = safetensors_file(tmp_path / "m.safetensors", b'{"t":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}', bytes(8))
    report = tmp_path / "r.jsonl"
    if case.startswith("report"):
        report.write_bytes(
            {
                "report-no-source": b'{"status": "failed"}\n',
                "report-number-source": b'{"status": "failed", "source": 3}\n',
                "report-not-utf8": b'{"status": "failed", "source": "\xff"}\n',
            }[case]
        )
        refused(2, "batch", src, "--out-dir", work / "o", "--retry-failed", report, cwd=work, out=work / "o")
    elif case == "layout-bad-regex":
        (tmp_path / "l.toml").write_text("name = \"mine\"\nextends = \"pytorch\"\n[[rules]]\nregex = '(unclosed'\nto = 'x'\n")
        refused(
            2,
            "auto",
            src,
            work / "out",
            "--layout-file",
            tmp_path / "l.toml",
            cwd=work,
            out=work / "out",
            needles=("does not compile",),
        )
    else:
        (tmp_path / "j.toml").write_text(f'[[job]]\nsource = "{src}"\noutput = "o\\u0000x"\n')
        refused(2, "batch", "--job-file", tmp_path / "j.toml", cwd=work, needles=("NUL",))


def test_lone_surrogate_in_a_tensor_name_is_corrupt(tmp_path: Path) -> None:
    """A name with a lone surrogate (BINUNICODE decodes with surrogatepass) reached the SafeTensors
    writer or stdout: UnicodeEncodeError, exit 1."""
    torch = pytest.importorskip("torch")
    src = torch_saved_with_edit(
        tmp_path / "s.pt",
        {"wXY": torch.zeros(2)},
        lambda pkl: pkl.replace(b"X\x03\x00\x00\x00wXY", b"X\x04\x00\x00\x00w\xed\xa0\x80"),
    )
    work = tmp_path / "work"
    work.mkdir()
    for command in ("pth-to-safetensors", "inspect"):
        args = [command, src] + ([work / "out"] if command != "inspect" else [])
        refused(CORRUPT, *args, cwd=work, out=work / "out", needles=("lone surrogate", "\\ud800"))


# ---------------------------------------------------------------------------------------------
# HDF5: null dataspaces and float types numpy has no exact equivalent for
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("case, code", [("null-dataspace", CORRUPT), ("24-bit-float", 4)])
def test_hdf5_dataset_numpy_cannot_hold_exactly(case: str, code: int, tmp_path: Path) -> None:
    """A null dataspace (h5py.Empty) or an exotic float type was exit 1."""
    h5py = pytest.importorskip("h5py")
    import numpy as np

    src = tmp_path / "w.h5"
    with h5py.File(src, "w") as f:
        f.attrs["layer_names"] = [b"dense"]
        f.attrs["backend"] = "tensorflow"
        f.attrs["keras_version"] = "2.15.0"
        g = f.create_group("dense")
        g.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        g.create_dataset("dense/bias:0", data=np.zeros(2, dtype="<f4"))
        if case == "null-dataspace":
            g.create_dataset("dense/kernel:0", data=h5py.Empty("<f4"))
        else:
            t = h5py.h5t.IEEE_F32LE.copy()
            t.set_fields(23, 16, 7, 0, 16)
            t.set_ebias(63)
            t.set_size(3)
            h5py.h5d.create(g.id, b"dense/kernel:0", t, h5py.h5s.create_simple((2, 2)))
            g["dense/kernel:0"][...] = np.ones((2, 2), "<f4")
    work = tmp_path / "work"
    work.mkdir()
    refused(code, "keras-to-safetensors", src, work / "out", cwd=work, out=work / "out", needles=("kernel",))


# ---------------------------------------------------------------------------------------------
# Layout files: user patterns run under a time budget
# ---------------------------------------------------------------------------------------------

SIX_PLACEHOLDERS = "{a...}.{b...}.{c...}.{d...}.{e...}.{f...}.x"
# Quadratic for regex 2026.12: 4,000 repeats took 3.6 s here, so 6,000 take about eight budgets (a
# name that takes about one budget makes the test a race between the match and its clock).
OVER_BUDGET_NAME = "a.x." * 6000


@pytest.mark.parametrize(
    "rule, name",
    [("regex = '^(a|aa)+$'", "a" * 48 + "b"), (f"match = '{SIX_PLACEHOLDERS}'", OVER_BUDGET_NAME)],
    ids=["alternation", "six-placeholders"],
)
def test_catastrophic_layout_pattern_is_stopped_by_its_budget(rule: str, name: str, tmp_path: Path) -> None:
    """`^(a|aa)+$` on a 49-character name backtracks for hours, six `{x...}` placeholders on a
    24,000-character name for seconds; the budget stops the match and names the rule."""
    header = f'{{"{name}":{{"dtype":"F32","shape":[2],"data_offsets":[0,8]}}}}'.encode()
    src = safetensors_file(tmp_path / "m.safetensors", header, bytes(8))
    (tmp_path / "l.toml").write_text(f'name = "mine"\nextends = "pytorch"\n[[rules]]\n{rule}\nto = "x"\n')
    work = tmp_path / "work"
    work.mkdir()
    refused(
        2, "auto", src, work / "out", "--layout-file", tmp_path / "l.toml", cwd=work, out=work / "out", needles=("time budget",)
    )


def test_layout_patterns_keep_their_budget_off_the_main_thread() -> None:
    """Batch conversions map tensors in worker threads, where SIGALRM cannot reach: the budget is
    the regex engine's own."""
    from concurrent.futures import ThreadPoolExecutor

    from convert.errors import UsageError
    from convert.mapping import Rule, compile_pattern, compile_regex

    rules = [
        Rule(compile_regex("^(a|aa)+$"), None, {}, [], [], False, None, None, {}),
        Rule(compile_pattern(SIX_PLACEHOLDERS), None, {}, [], [], False, None, None, {}),
    ]
    names = ["a" * 48 + "b", OVER_BUDGET_NAME]

    def attempt(pair: tuple[Rule, str]) -> str:
        with pytest.raises(UsageError, match="time budget of one match") as caught:
            pair[0].match(pair[1])
        return str(caught.value)

    with ThreadPoolExecutor(2) as pool:
        assert len(list(pool.map(attempt, zip(rules, names, strict=True)))) == 2


def test_layout_patterns_share_one_budget_per_mapping(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Names that each take a little under the per-match budget add up: one mapping's matches share
    a budget too (lowered here so the test stays short)."""
    import numpy as np

    from convert import mapping
    from convert.errors import UsageError
    from convert.tensors import in_memory

    monkeypatch.setattr(mapping, "MAPPING_PATTERN_BUDGET_S", 0.5)
    (tmp_path / "l.toml").write_text("name = \"mine\"\nextends = \"pytorch\"\n[[rules]]\nregex = '^(a|aa)+$'\nto = 'x'\n")
    layout = mapping.load_layout(layout_file=tmp_path / "l.toml")
    # each name takes a fraction of the 1 s a match may take (the 49-character one takes hours): only
    # their sum crosses a budget
    tensors = [in_memory("a" * 26 + "b" * i, np.zeros(1, np.float32)) for i in range(1, 61)]
    with pytest.raises(UsageError, match="all the layout's matches"):
        mapping.apply_layout(layout, tensors, {"modules": []})


# ---------------------------------------------------------------------------------------------
# Deflated zip members whose stream is damaged (found by tests/safety/fuzz/test_readers.py)
# ---------------------------------------------------------------------------------------------


def _damage_deflate(path: Path, member: str, late: bool = False) -> None:
    """Flip bits inside the deflate stream of one member: its first block header, or near its end
    (past the npz header, so the damage shows when the data is written)."""
    data = bytearray(path.read_bytes())
    with zipfile.ZipFile(path) as zf:
        info = zf.getinfo(member)
    name_len, extra_len = (
        int.from_bytes(data[info.header_offset + 26 : info.header_offset + 28], "little"),
        int.from_bytes(data[info.header_offset + 28 : info.header_offset + 30], "little"),
    )
    start = info.header_offset + 30 + name_len + extra_len
    if late:
        data[start + info.compress_size - 4] ^= 0xFF
    else:
        data[start] ^= 0x06  # the block type bits: a reserved block type (or a different block) follows
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("kind", ["npz", "npz-late", "torch"])
def test_damaged_deflate_stream_is_corrupt(kind: str, tmp_path: Path) -> None:
    """A compressed npz member (or a torch zip's data.pkl written deflated) whose stream does not
    inflate raised zlib.error: exit 1."""
    import numpy as np

    if kind.startswith("npz"):
        src = tmp_path / "a.npz"
        np.savez_compressed(src, w=np.random.default_rng(0).standard_normal((64, 64)).astype(np.float32))
        member = "w.npy"
    else:
        torch = pytest.importorskip("torch")
        plain = torch_saved_with_edit(tmp_path / "p.pt", {"w": torch.ones(4)}, lambda pkl: pkl)
        src = tmp_path / "a.pt"
        with zipfile.ZipFile(plain) as zin, zipfile.ZipFile(src, "w") as zout:
            for info in zin.infolist():
                zout.writestr(
                    info.filename,
                    zin.read(info),
                    zipfile.ZIP_DEFLATED if info.filename.endswith("data.pkl") else zipfile.ZIP_STORED,
                )
        member = next(n for n in zipfile.ZipFile(src).namelist() if n.endswith("data.pkl"))
    _damage_deflate(src, member, late=kind == "npz-late")
    work = tmp_path / "work"
    work.mkdir()
    refused(CORRUPT, "auto", src, work / "out", cwd=work, out=work / "out")


@pytest.mark.parametrize(
    "kind, command",
    [
        ("npz", "auto"),
        ("npz", "npz-to-safetensors"),
        ("torch", "auto"),
        ("torch", "pth-to-safetensors"),
        ("keras", "keras-to-safetensors"),
    ],
)
def test_zip_needing_a_newer_version_is_corrupt(kind: str, command: str, tmp_path: Path) -> None:
    """A central directory entry that needs a zip version past what zipfile reads (found by
    scripts/hostile_campaign.py): zipfile.ZipFile() raised NotImplementedError, exit 1."""
    import numpy as np

    src = tmp_path / f"a.{ {'npz': 'npz', 'torch': 'pt', 'keras': 'keras'}[kind] }"
    if kind == "npz":
        np.savez(src, w=np.ones(3, np.float32))
    elif kind == "torch":
        torch = pytest.importorskip("torch")
        torch.save({"w": torch.ones(3)}, src)
    else:
        with zipfile.ZipFile(src, "w") as zf:
            zf.writestr("metadata.json", '{"keras_version": "3.6.0"}')
            zf.writestr("config.json", '{"class_name": "Sequential", "config": {"layers": []}}')
            zf.writestr("model.weights.h5", b"")
    data = bytearray(src.read_bytes())
    at = data.index(b"PK\x01\x02")
    data[at + 6 : at + 8] = (234).to_bytes(2, "little")  # version needed to extract: 23.4
    src.write_bytes(bytes(data))
    work = tmp_path / "work"
    work.mkdir()
    refused(CORRUPT, command, src, work / "out", cwd=work, out=work / "out")
