"""Fuzzing every reader of user files: whatever comes in, a reader returns or raises a ConvertError,
never another exception and never a hang.

One hypothesis harness per reader: the restricted unpickler (and what the torch reader does with its
result), the torch zip and legacy readers on mutated real checkpoints, the SafeTensors header reader,
manifest loading and validation (and verify on top), layout rule files, batch job files and reports,
and the h5 / msgpack readers once they exist. Inputs are real files mutated byte by byte, the same
files mutated structure by structure (a pickle inside a valid zip, one field of a header), and
programs generated from a grammar (pickle opcodes, headers, TOML documents).

CI budget: the profile is derandomized with no example database, so every run tries the same inputs;
`max_examples` per harness keeps the module near a minute on 2 cores; every input runs under a hard
watchdog (`Hang`), and the hypothesis deadline flags inputs that are merely slow. The number of
inputs each reader saw is printed in the pytest summary ("hostile-input sweeps").
"""

from __future__ import annotations

import faulthandler
import importlib.util
import io
import json
import math
import os
import pickle
import pickletools
import signal
import struct
import sys
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from convert.dtypes import DTYPES
from convert.errors import ConvertError
from tests.support import REPO, count_inputs

HOSTILE = REPO / "fixtures" / "hostile"
EXAMPLE = REPO / "fixtures" / "example" / "tiny_model.pt"

PROFILE = settings(
    derandomize=True, database=None, deadline=timedelta(seconds=5), print_blob=False, suppress_health_check=list(HealthCheck)
)
HANG_SECONDS = 10.0
# CI runs the budgets below; CONVERT_FUZZ_SCALE=20 (say) runs a deeper, still reproducible, local campaign.
SCALE = float(os.environ.get("CONVERT_FUZZ_SCALE", "1"))


def fuzz(max_examples: int) -> settings:
    return settings(PROFILE, max_examples=max(1, int(max_examples * SCALE)))


class Hang(BaseException):
    """Raised by the watchdog; a BaseException so no reader's `except Exception` can swallow it."""


@contextmanager
def watchdog(seconds: float = HANG_SECONDS) -> Iterator[None]:
    """Interrupt the body if it runs longer than `seconds` (a hang is a bug like any other)."""

    def fire(signum: int, frame: Any) -> None:
        raise Hang(f"no answer within {seconds} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    # A hang inside C code (libhdf5 has had such bugs) never returns to Python to see the alarm: then
    # the process ends, printing every thread's stack, rather than leaving CI hanging.
    faulthandler.dump_traceback_later(3 * seconds, exit=True)
    try:
        yield
    finally:
        faulthandler.cancel_dump_traceback_later()
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def probe(reader: str, run: Callable[[], Any]) -> bool:
    """Feed one input to a reader. True if accepted, False if refused with a one-line ConvertError;
    any other exception (or a hang) propagates and fails the harness with the input."""
    count_inputs("fuzz", reader)
    try:
        with watchdog():
            run()
    except Hang as exc:  # report it as a failure hypothesis can shrink
        raise AssertionError(f"{reader}: {exc}") from None
    except ConvertError as exc:
        message = str(exc)
        assert message.strip(), f"{type(exc).__name__} without a message"
        assert "\n" not in message, f"error message is not one line: {message!r}"
        return False
    count_inputs("fuzz (accepted)", reader)  # shows the harness reaches past the first checks
    return True


def read_all(source: Any) -> None:
    """Touch every byte of every tensor of an opened source (memory maps and views included)."""
    with source:
        for ref in source.tensors:
            arr = ref.array()
            assert tuple(arr.shape) == ref.shape
            if arr.size:
                np.ascontiguousarray(arr).view(np.uint8).sum()


# ---------------------------------------------------------------------------------------------
# Byte-level mutation of real files
# ---------------------------------------------------------------------------------------------

INTERESTING_INTS = [
    0,
    1,
    2,
    3,
    7,
    8,
    64,
    127,
    128,
    255,
    256,
    2**15,
    2**16 - 1,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**53,
    2**62,
    2**63 - 1,
    2**63,
    2**64 - 1,
    2**64,
    2**100,
    -1,
    -2,
    -(2**31),
    -(2**63),
]


@st.composite
def mutated(draw: st.DrawFn, seeds: list[bytes], max_ops: int = 6) -> bytes:
    """A seed with a few flips, overwrites with boundary values, insertions, deletions, copies or a cut."""
    data = bytearray(draw(st.sampled_from(seeds)))
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "byte", "int", "insert", "delete", "copy", "truncate"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] ^= 1 << draw(st.integers(0, 7))
        elif op == "byte" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "int":
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(INTERESTING_INTS)) % (1 << (8 * width))
            data[pos : pos + width] = value.to_bytes(width, draw(st.sampled_from(["little", "big"])))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=16))
        elif op == "delete":
            del data[pos : pos + draw(st.integers(1, 16))]
        elif op == "copy" and data:
            start = draw(st.integers(0, len(data) - 1))
            data[pos:pos] = data[start : start + draw(st.integers(1, 64))]
        elif op == "truncate":
            del data[pos:]
    return bytes(data)


# ---------------------------------------------------------------------------------------------
# Pickle programs from a grammar (opcode by opcode, with the corpus generator's helpers)
# ---------------------------------------------------------------------------------------------


def _load_generator() -> Any:
    pytest.importorskip("torch", reason="the hostile-corpus generator starts from real torch.save output")
    spec = importlib.util.spec_from_file_location("make_hostile", REPO / "scripts" / "make_hostile.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_hostile", module)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def mh() -> Any:
    """scripts/make_hostile.py: its Pickle assembler and container writers."""
    return _load_generator()


STORAGE_TYPES = [
    "FloatStorage",
    "HalfStorage",
    "BFloat16Storage",
    "LongStorage",
    "ByteStorage",
    "BoolStorage",
    "DoubleStorage",
    "UntypedStorage",
    "QInt8Storage",
    "ComplexDoubleStorage",
    "NoSuchStorage",
]
TORCH_DTYPE_NAMES = ["float32", "float16", "bfloat16", "int64", "uint8", "bool", "complex128", "float8_e4m3fn", "qint8"]
SMALL = st.integers(0, 24)
ANY_INT = st.one_of(SMALL, st.sampled_from(INTERESTING_INTS))


def pickle_values(mh: Any, legacy: bool = False) -> st.SearchStrategy[Any]:
    """Values for mh.dump(): plain data, tensors rebuilt from storages with forged sizes, calls of
    allow-listed (and some refused) globals, BUILD and shared references. Storage persistent ids
    are in the zip form, or the legacy one (with its trailing view_metadata)."""
    from convert.pickle_reader import _CALLABLES, _TYPE_MARKERS, DEFAULT_INERT

    globals_ = sorted(
        {
            *_CALLABLES,
            *_TYPE_MARKERS,
            *(p.rstrip(".") + ("MSELoss" if p.endswith(".") else "") for p in DEFAULT_INERT),
            "os.system",
            "builtins.getattr",
            "__main__.Net",
            "torch.nn.modules.linear.Linear",
        }
    )

    def glob(qualname: str) -> Any:
        module, _, name = qualname.rpartition(".")
        return mh.glob(module, name)

    def floating(x: float) -> Any:
        return lambda p: p.op(pickle.BINFLOAT, struct.pack(">d", x))

    def as_list(items: list[Any]) -> Any:
        def emit(p: Any) -> None:
            p.op(pickle.EMPTY_LIST).op(pickle.MARK)
            for item in items:
                p.push(item)
            p.op(pickle.APPENDS)

        return emit

    def shared(value: Any) -> Any:  # the same object twice, through the memo
        return lambda p: (
            p.push(value)
            .op(pickle.MEMOIZE)
            .op(pickle.POP)
            .op(pickle.MARK)
            .op(pickle.BINGET, b"\x00")
            .op(pickle.BINGET, b"\x00")
            .op(pickle.TUPLE)
        )

    storage = st.builds(
        lambda kind, key, numel: mh.persid(("storage", mh.glob("torch", kind), key, "cpu", numel) + ((None,) if legacy else ())),
        st.sampled_from(STORAGE_TYPES),
        st.sampled_from(["0", "1", "0", "../0", 7]),
        ANY_INT,
    )
    dims = st.one_of(st.lists(SMALL, max_size=3).map(tuple), st.lists(ANY_INT, max_size=3).map(tuple), ANY_INT, st.none())
    tensor_v2 = st.builds(lambda s, o, size, stride: mh.tensor(s, o, size, stride), storage, ANY_INT, dims, dims)
    tensor_v3 = st.builds(
        lambda s, o, size, stride, dt: mh.call(
            mh.glob("torch._utils", "_rebuild_tensor_v3"), s, o, size, stride, False, mh.ordered_dict(), mh.glob("torch", dt)
        ),
        storage,
        ANY_INT,
        dims,
        dims,
        st.sampled_from(TORCH_DTYPE_NAMES),
    )
    leaves = st.one_of(
        st.none(),
        st.booleans(),
        ANY_INT,
        st.integers(),
        st.text(max_size=6),
        st.binary(max_size=12),
        st.floats(allow_nan=True).map(floating),
        tensor_v2,
        tensor_v3,
        st.sampled_from(globals_).map(glob),
    )

    def extend(children: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        args = st.lists(children, max_size=4).map(tuple)
        return st.one_of(
            st.lists(children, max_size=4).map(tuple),
            st.lists(children, max_size=4).map(as_list),
            st.dictionaries(st.one_of(st.text(max_size=4), SMALL), children, max_size=4),
            st.builds(lambda g, a: mh.call(glob(g), *a), st.sampled_from(globals_), args),
            st.builds(lambda t, s: mh.build(t, s), children, children),
            st.builds(lambda g, a: mh.newobj(glob(g), a), st.sampled_from(globals_), args),
            st.builds(lambda t: mh.call(mh.glob("torch._utils", "_rebuild_parameter"), t, False, mh.ordered_dict()), children),
            children.map(shared),
        )

    return st.recursive(leaves, extend, max_leaves=12)


def pickle_programs(mh: Any, legacy: bool = False) -> st.SearchStrategy[bytes]:
    """Whole pickles: a dict of values, as a state dict or a Lightning-style checkpoint."""
    values = pickle_values(mh, legacy)
    state = st.dictionaries(st.text(min_size=1, max_size=5), values, min_size=1, max_size=4)
    root = st.one_of(state, state.map(lambda sd: {"state_dict": sd, "hyper_parameters": {"lr": 1}}), values)
    return st.builds(lambda obj, proto: mh.dump(obj, proto), root, st.sampled_from([2, 4]))


# ---------------------------------------------------------------------------------------------
# Seeds: small real checkpoints written by torch
# ---------------------------------------------------------------------------------------------


def torch_seed_objects() -> list[Any]:
    """State dicts that reach every branch of the torch reader: dtypes, views, ties, nesting, numpy."""
    import argparse

    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    w = torch.randn(4, 3, generator=g)
    plain = {"lin.weight": w, "lin.bias": torch.zeros(4), "steps": torch.tensor(3), "mask": torch.ones(2, 2, dtype=torch.bool)}
    views = {
        "t": w.t(),
        "row": w[1],
        "exp": torch.ones(1).expand(3, 2),
        "half": w.half(),
        "bf": w[:2].bfloat16(),
        "tied": w,
        "empty": torch.zeros(0, 3),
        "u8": torch.arange(5, dtype=torch.uint8),
    }
    lightning = {
        "epoch": 2,
        "global_step": 10,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": {"net.0.weight": w, "net.0.bias": torch.ones(4)},
        "hyper_parameters": {"lr": 1e-3, "loss": torch.nn.MSELoss(), "args": argparse.Namespace(depth=2)},
        "optimizer_states": [
            {
                "state": {0: {"step": torch.tensor(1.0), "exp_avg": torch.zeros(4, 3)}},
                "param_groups": [{"lr": 1e-3, "params": [0]}],
            }
        ],
        "hparams": {"table": np.arange(3, dtype=np.int32), "scale": np.float32(0.5)},
    }
    return [plain, views, lightning, {"model": {"encoder": plain}, "ema": None}]


def torch_bytes(obj: Any, legacy: bool) -> bytes:
    torch = pytest.importorskip("torch")
    buf = io.BytesIO()
    torch.save(obj, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


@pytest.fixture(scope="module")
def torch_seeds() -> dict[str, list[bytes]]:
    objs = torch_seed_objects()
    return {"zip": [torch_bytes(o, legacy=False) for o in objs], "legacy": [torch_bytes(o, legacy=True) for o in objs]}


def zip_entries(data: bytes) -> list[tuple[str, bytes]]:
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        return [(i.filename, zf.read(i)) for i in zf.infolist()]


def rezip(entries: list[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        for name, data in entries:
            zf.writestr(zipfile.ZipInfo(name, date_time=(1980, 1, 1, 0, 0, 0)), data)
    return buf.getvalue()


def legacy_parts(data: bytes) -> tuple[list[bytes], bytes]:
    """The five pickles of a legacy torch file, and the storage records after them."""
    stream = io.BytesIO(data)
    parts = []
    for _ in range(5):
        start = stream.tell()
        for _ in pickletools.genops(stream):
            pass
        parts.append(data[start : stream.tell()])
    return parts, data[stream.tell() :]


# ---------------------------------------------------------------------------------------------
# 1. restricted unpickler (and what the torch reader does with what it returns)
# ---------------------------------------------------------------------------------------------


def _unpickle_and_walk(data: bytes) -> None:
    from convert.pickle_reader import jsonable, restricted_load
    from exporters.pytorch.reader import select_tensors

    def storages(pid: Any) -> Any:
        from convert.pickle_reader import storage_dtype
        from exporters.pytorch.reader import _Storage

        if type(pid) is not tuple or len(pid) != 5:
            raise ConvertError("unexpected persistent id")
        return _Storage(str(pid[2]), storage_dtype(pid[1]), pid[4] if type(pid[4]) is int else 0, 0, 64)

    for persistent in (None, storages):
        try:
            obj = restricted_load(data, persistent, records=persistent is not None)  # as torch files: unknown classes as records
        except ConvertError:
            continue
        json.dumps(jsonable(obj))
        select_tensors(obj, None)


@pytest.fixture(scope="module")
def pickle_seeds(torch_seeds: dict[str, list[bytes]]) -> list[bytes]:
    seeds = [dict(zip_entries(z))[next(n for n, _ in zip_entries(z) if n.endswith("/data.pkl"))] for z in torch_seeds["zip"]]
    seeds += [legacy_parts(z)[0][3] for z in torch_seeds["legacy"]]
    seeds += [p.read_bytes() for p in sorted(HOSTILE.glob("raw_*.pkl"))]
    return seeds


@fuzz(max_examples=1200)
@given(data=st.data())
def test_restricted_unpickler_mutated_pickles(pickle_seeds: list[bytes], data: st.DataObject) -> None:
    blob = data.draw(mutated(pickle_seeds))
    probe("restricted_load", lambda: _unpickle_and_walk(blob))


@pytest.fixture(scope="module")
def programs(mh: Any) -> dict[str, st.SearchStrategy[bytes]]:
    """Generated pickles with zip-style and legacy-style storage references."""
    return {"zip": pickle_programs(mh), "legacy": pickle_programs(mh, legacy=True)}


@fuzz(max_examples=1200)
@given(data=st.data())
def test_restricted_unpickler_generated_programs(programs: dict[str, st.SearchStrategy[bytes]], data: st.DataObject) -> None:
    blob = data.draw(programs["zip"])
    probe("restricted_load", lambda: _unpickle_and_walk(blob))


@fuzz(max_examples=300)
@given(blob=st.binary(max_size=256).map(lambda b: b"\x80\x02" + b))
def test_restricted_unpickler_random_bytes(blob: bytes) -> None:
    probe("restricted_load", lambda: _unpickle_and_walk(blob))


# ---------------------------------------------------------------------------------------------
# 2. torch zip and legacy readers (open_pytorch) on mutated real checkpoints
# ---------------------------------------------------------------------------------------------


def _open_torch(path: Path, blob: bytes) -> Callable[[], None]:
    def run() -> None:
        from exporters.pytorch.reader import open_pytorch

        path.write_bytes(blob)
        read_all(open_pytorch(path))

    return run


@st.composite
def zip_structure_mutations(draw: st.DrawFn, seeds: list[bytes], programs: st.SearchStrategy[bytes]) -> bytes:
    """A valid zip around a mutated or generated data.pkl, a resized storage, or a changed byteorder."""
    entries = zip_entries(draw(st.sampled_from(seeds)))
    index = draw(st.integers(0, len(entries) - 1))
    name, payload = entries[index]
    how = draw(st.sampled_from(["pickle", "program", "entry", "drop"]))
    pkl = next(i for i, (n, _) in enumerate(entries) if n.endswith("/data.pkl"))
    if how == "pickle":
        entries[pkl] = (entries[pkl][0], draw(mutated([entries[pkl][1]])))
    elif how == "program":
        entries[pkl] = (entries[pkl][0], draw(programs))
    elif how == "entry":
        entries[index] = (name, draw(mutated([payload or b"\0"])))
    else:
        del entries[index]
    return rezip(entries)


@st.composite
def legacy_structure_mutations(draw: st.DrawFn, seeds: list[bytes], programs: st.SearchStrategy[bytes]) -> bytes:
    """One of the five pickles or the storage records mutated, or a generated object pickle whose
    storage "0" is the file's only record (64 bytes)."""
    parts, records = legacy_parts(draw(st.sampled_from(seeds)))
    index = draw(st.integers(0, 5))
    if index == 5:
        records = draw(mutated([records]))
    elif index == 3 and draw(st.booleans()):
        parts[3], parts[4] = draw(programs), pickle.dumps(["0"], protocol=2)
        records = struct.pack("<q", 16) + bytes(range(64))
    else:
        parts[index] = draw(mutated([parts[index]]))
    return b"".join(parts) + records


@fuzz(max_examples=700)
@given(data=st.data())
def test_torch_zip_reader(
    torch_seeds: dict[str, list[bytes]],
    programs: dict[str, st.SearchStrategy[bytes]],
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
) -> None:
    seeds = torch_seeds["zip"]
    blob = data.draw(st.one_of(mutated(seeds), zip_structure_mutations(seeds, programs["zip"])))
    probe("open_pytorch zip", _open_torch(tmp_path_factory.getbasetemp() / "fuzz.pt", blob))


@fuzz(max_examples=700)
@given(data=st.data())
def test_torch_legacy_reader(
    torch_seeds: dict[str, list[bytes]],
    programs: dict[str, st.SearchStrategy[bytes]],
    tmp_path_factory: pytest.TempPathFactory,
    data: st.DataObject,
) -> None:
    seeds = torch_seeds["legacy"]
    blob = data.draw(st.one_of(mutated(seeds), legacy_structure_mutations(seeds, programs["legacy"])))
    probe("open_pytorch legacy", _open_torch(tmp_path_factory.getbasetemp() / "fuzz_legacy.pt", blob))


# ---------------------------------------------------------------------------------------------
# 3. SafeTensors header reader (and the SafeTensors source on top of it)
# ---------------------------------------------------------------------------------------------

JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.sampled_from(INTERESTING_INTS),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=8),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS, lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=6), c, max_size=4), max_leaves=10
)


@st.composite
def safetensors_files(draw: st.DrawFn) -> bytes:
    """A header of well-formed tensors with one field forged (or none), over a data buffer."""
    count = draw(st.integers(0, 4))
    entries: dict[str, Any] = {}
    pos = 0
    for i in range(count):
        code = draw(st.sampled_from(sorted(DTYPES)))
        shape = draw(st.lists(st.integers(0, 4), max_size=3))
        nbytes = math.prod(shape) * DTYPES[code].itemsize
        entries[f"t{i}"] = {"dtype": code, "shape": shape, "data_offsets": [pos, pos + nbytes]}
        pos += nbytes
    header: dict[str, Any] = dict(entries)
    if draw(st.booleans()):
        header["__metadata__"] = draw(st.one_of(st.just({"format": "pt"}), JSON_VALUES))
    if entries and draw(st.booleans()):
        name = draw(st.sampled_from(sorted(entries)))
        field = draw(st.sampled_from(["dtype", "shape", "data_offsets", None]))
        forged = draw(
            st.one_of(
                JSON_VALUES, st.lists(st.sampled_from(INTERESTING_INTS), max_size=3), st.sampled_from(["F4", "X", "f32", "F32"])
            )
        )
        if field is None:
            header[name] = forged
        else:
            header[name][field] = forged
    if draw(st.booleans()):
        header[draw(st.text(max_size=4))] = draw(JSON_VALUES)
    text = json.dumps(header, allow_nan=False).encode()
    text += b" " * draw(st.integers(0, 9))
    length = len(text) if draw(st.integers(0, 4)) else draw(st.sampled_from(INTERESTING_INTS)) % 2**64
    data = bytes(draw(st.integers(0, 255)) for _ in range(min(pos, 64))) + bytes(max(pos - 64, 0))
    data = data[: max(0, len(data) + draw(st.integers(-3, 3)))] if draw(st.integers(0, 3)) == 0 else data
    return struct.pack("<Q", length) + text + data


@pytest.fixture(scope="module")
def safetensors_seeds() -> list[bytes]:
    from safetensors.numpy import save

    rng = np.random.default_rng(0)
    return [
        save({"a": rng.standard_normal((3, 4)).astype(np.float32), "b": np.arange(5, dtype=np.int64)}, metadata={"format": "pt"}),
        save({"x": np.zeros((2, 0), np.float16), "y": np.ones((), np.uint8), "z": np.array([True, False])}),
    ]


def _open_safetensors(path: Path, blob: bytes) -> Callable[[], None]:
    def run() -> None:
        from convert.safetensors_format import read_header
        from convert.safetensors_source import open_safetensors

        path.write_bytes(blob)
        read_header(path)
        read_all(open_safetensors(path))

    return run


@fuzz(max_examples=800)
@given(data=st.data())
def test_safetensors_header_reader(
    safetensors_seeds: list[bytes], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    blob = data.draw(st.one_of(safetensors_files(), mutated(safetensors_seeds)))
    probe("read_header", _open_safetensors(tmp_path_factory.getbasetemp() / "fuzz.safetensors", blob))


# ---------------------------------------------------------------------------------------------
# 4. manifest loading and validation (and verify, which trusts what validation let through)
# ---------------------------------------------------------------------------------------------


def json_paths(doc: Any, prefix: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    yield prefix
    if isinstance(doc, dict):
        for k, v in doc.items():
            yield from json_paths(v, (*prefix, k))
    elif isinstance(doc, list):
        for i, v in enumerate(doc):
            yield from json_paths(v, (*prefix, i))


@st.composite
def json_mutations(draw: st.DrawFn, doc: Any, max_ops: int = 3) -> Any:
    """`doc` with a few values replaced, keys dropped or added, or lists cut."""
    doc = json.loads(json.dumps(doc))
    for _ in range(draw(st.integers(1, max_ops))):
        paths = list(json_paths(doc))
        path = draw(st.sampled_from(paths))
        if not path:
            continue
        parent = doc
        for part in path[:-1]:
            parent = parent[part]
        op = draw(st.sampled_from(["replace", "drop", "add", "retype"]))
        if op == "replace":
            parent[path[-1]] = draw(JSON_VALUES)
        elif op == "drop":
            del parent[path[-1]]
        elif op == "add" and isinstance(parent, dict):
            parent[draw(st.text(max_size=6))] = draw(JSON_VALUES)
        elif op == "retype":
            value = parent[path[-1]]
            parent[path[-1]] = [value] if not isinstance(value, list) else {"0": value}
    return doc


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A real output folder (the bundled example checkpoint, converted)."""
    from convert.api import pth_to_safetensors

    out = tmp_path_factory.mktemp("fuzz-manifest") / "out"
    pth_to_safetensors(EXAMPLE, out, max_shard_size="40KB")
    return out


def _load_manifest(out: Path, text: bytes) -> Callable[[], None]:
    def run() -> None:
        from convert import manifest
        from convert.verify import verify_output

        (out / manifest.MANIFEST_FILE).write_bytes(text)
        manifest.validate(manifest.load(out))
        verify_output(out)

    return run


@fuzz(max_examples=250)
@given(data=st.data())
def test_manifest_load_and_validate(converted: Path, data: st.DataObject) -> None:
    original = (converted / "manifest.json").read_bytes()
    doc = json.loads(original)
    how = data.draw(st.sampled_from(["json", "json", "bytes", "nest"]))
    if how == "json":
        text = json.dumps(data.draw(json_mutations(doc))).encode()
    elif how == "bytes":
        text = data.draw(mutated([original]))
    else:
        depth = data.draw(st.sampled_from([10, 500, 5000, 50000]))
        text = b"[" * depth + b"]" * depth
    try:
        probe("manifest", _load_manifest(converted, text))
    finally:
        (converted / "manifest.json").write_bytes(original)


# ---------------------------------------------------------------------------------------------
# 5. layout rule files (--layout-file), loaded and applied to a small model
# ---------------------------------------------------------------------------------------------


def toml_value(v: Any) -> str:
    """An inline TOML rendering of a JSON-like value (None has no TOML form: an empty string)."""
    if v is None:
        return '""'
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return "nan" if v != v else ("inf" if v > 0 else "-inf") if math.isinf(v) else repr(v)
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(toml_value(x) for x in v) + "]"
    return "{" + ", ".join(f"{json.dumps(str(k))} = {toml_value(x)}" for k, x in v.items()) + "}"


def toml_document(doc: dict[str, Any]) -> str:
    return "".join(f"{json.dumps(str(k))} = {toml_value(v)}\n" for k, v in doc.items())


def small_model() -> list[Any]:
    """Canonical tensors of a Linear, a Conv, an LSTM and a BatchNorm (zeros, never read for real)."""
    from convert.tensors import in_memory

    shapes = {
        "fc.weight": (4, 3),
        "fc.bias": (4,),
        "conv.weight": (2, 3, 3, 3),
        "conv.bias": (2,),
        "lstm.weight_ih_l0": (8, 3),
        "lstm.weight_hh_l0": (8, 2),
        "lstm.bias_ih_l0": (8,),
        "lstm.bias_hh_l0": (8,),
        "bn.weight": (2,),
        "bn.bias": (2,),
        "bn.running_mean": (2,),
        "bn.running_var": (2,),
        "bn.num_batches_tracked": (),
    }
    return [
        in_memory(name, np.arange(math.prod(shape), dtype=np.int64 if not shape else np.float32).reshape(shape))
        for name, shape in shapes.items()
    ]


def _apply_layout_file(path: Path, text: bytes) -> Callable[[], None]:
    def run() -> None:
        from convert.architecture import infer_architecture
        from convert.mapping import apply_dtypes, apply_layout, load_layout

        path.write_bytes(text)
        layout = load_layout("pytorch", layout_file=path)
        tensors = small_model()
        result = apply_layout(layout, tensors, infer_architecture([(t.name, t.shape) for t in tensors]))
        apply_dtypes(result.tensors, None, layout)
        for m in result.tensors:
            m.ref.array()

    return run


@pytest.fixture(scope="module")
def layout_seeds() -> dict[str, Any]:
    from convert.mapping import builtin_layouts, layout_text

    docs = builtin_layouts()
    return {
        "docs": [docs[n] for n in sorted({d["name"] for d in docs.values()})],
        "texts": [layout_text(n).encode() for n in sorted({d["name"] for d in docs.values()})],
    }


@fuzz(max_examples=300)
@given(data=st.data())
def test_layout_rule_files(layout_seeds: dict[str, Any], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    if data.draw(st.integers(0, 3)):
        text = toml_document(data.draw(json_mutations(data.draw(st.sampled_from(layout_seeds["docs"]))))).encode()
    else:
        text = data.draw(mutated(layout_seeds["texts"]))
    probe("load_layout", _apply_layout_file(tmp_path_factory.getbasetemp() / "fuzz_layout.toml", text))


# ---------------------------------------------------------------------------------------------
# 6. batch job files and reports
# ---------------------------------------------------------------------------------------------

OPTION_VALUES = st.one_of(st.sampled_from(["auto", "pth-to-safetensors", "pytorch", "f16", "burn", "5GB", "x"]), JSON_VALUES)
JOB_KEYS = ["source", "output", "conversion", "layout", "layout_file", "dtype", "max_shard_size", "key"]


@st.composite
def job_documents(draw: st.DrawFn) -> dict[str, Any]:
    paths = st.one_of(
        st.sampled_from(["a.pt", "/abs/b.pt", "../up.pt", "d/", "x y.safetensors", ".", "a\\b"]), st.text(max_size=8)
    )
    job = st.dictionaries(st.sampled_from(JOB_KEYS), st.one_of(paths, OPTION_VALUES), max_size=4).map(
        lambda d: d if "source" in d or not d else {"source": "m.pt", **d}
    )
    doc: dict[str, Any] = {"job": draw(st.lists(job, max_size=4))}
    if draw(st.booleans()):
        doc["defaults"] = draw(st.dictionaries(st.sampled_from(JOB_KEYS[2:]), OPTION_VALUES, max_size=3))
    if draw(st.integers(0, 4)) == 0:
        doc = draw(json_mutations(doc))
    return doc


def _jobs(path: Path, text: bytes, out_dir: Path | None) -> Callable[[], None]:
    def run() -> None:
        from convert.batch import jobs_from_file

        path.write_bytes(text)
        jobs_from_file(path, out_dir)

    return run


@fuzz(max_examples=300)
@given(doc=job_documents(), raw=st.one_of(st.none(), st.binary(max_size=64)), with_out_dir=st.booleans())
def test_batch_job_files(
    doc: dict[str, Any], raw: bytes | None, with_out_dir: bool, tmp_path_factory: pytest.TempPathFactory
) -> None:
    base = tmp_path_factory.getbasetemp()
    text = toml_document(doc).encode() if raw is None else toml_document(doc).encode()[: len(raw)] + raw
    probe("jobs_from_file", _jobs(base / "jobs.toml", text, base / "outs" if with_out_dir else None))


@fuzz(max_examples=150)
@given(
    lines=st.lists(
        st.one_of(
            JSON_VALUES.map(json.dumps),
            st.text(max_size=10),
            st.fixed_dictionaries({"status": JSON_VALUES, "source": JSON_VALUES}).map(json.dumps),
        ),
        max_size=5,
    )
)
def test_batch_reports(lines: list[str], tmp_path_factory: pytest.TempPathFactory) -> None:
    from convert.batch import Job, retry_jobs

    path = tmp_path_factory.getbasetemp() / "report.jsonl"

    def run() -> None:
        path.write_text("\n".join(lines), encoding="utf-8", errors="surrogatepass")
        retry_jobs([Job("m.pt", "out")], path)

    probe("read_report", run)


# ---------------------------------------------------------------------------------------------
# 7. readers other helpers are adding: HDF5 / .keras (exporters/keras/), msgpack (exporters/flax/)
# ---------------------------------------------------------------------------------------------


def optional_reader(kind: str) -> Callable[[Path], Any]:
    """The reader for `kind`, or a skip naming the missing library it needs."""
    from exporters.registry import open_source

    library = {"keras": "h5py", "flax": "msgpack"}[kind]
    if importlib.util.find_spec(library) is None:
        pytest.skip(f"the {kind} reader needs {library}, which is not installed")
    return lambda path: open_source(path, kind=kind)


def msgpack_seeds() -> list[bytes]:
    """Flax-style msgpack: nested dicts of ndarrays as extension type 1 (shape, dtype name, bytes)."""
    msgpack = pytest.importorskip("msgpack")

    def arr(a: np.ndarray) -> Any:
        return msgpack.ExtType(1, msgpack.packb((list(a.shape), a.dtype.name, a.tobytes()), use_bin_type=True))

    tree = {
        "params": {
            "Dense_0": {"kernel": arr(np.ones((3, 4), np.float32)), "bias": arr(np.zeros(4, np.float32))},
            "Embed_0": {"embedding": arr(np.arange(6, dtype=np.float16).reshape(2, 3))},
        },
        "batch_stats": {"BatchNorm_0": {"mean": arr(np.zeros(2, np.float32)), "var": arr(np.ones(2, np.float32))}},
        "step": 3,
    }
    return [msgpack.packb(tree, use_bin_type=True), msgpack.packb(tree["params"], use_bin_type=True)]


FLAX_SEEDS = msgpack_seeds() if importlib.util.find_spec("msgpack") else [b"\x80"]


def h5_seeds(tmp: Path) -> list[bytes]:
    """Keras 2 `.h5` weights and a Keras 3 `.keras` archive, written with h5py alone."""
    h5py = pytest.importorskip("h5py")

    def h5(write: Callable[[Any], None]) -> bytes:
        path = tmp / "seed.h5"
        with h5py.File(path, "w") as f:
            write(f)
        return path.read_bytes()

    def keras2(f: Any) -> None:
        f.attrs["layer_names"] = [b"dense"]
        f.attrs["keras_version"] = "2.15.0"
        f.attrs["backend"] = "tensorflow"
        g = f.create_group("dense")
        g.attrs["weight_names"] = [b"dense/kernel:0", b"dense/bias:0"]
        g.create_dataset("dense/kernel:0", data=np.ones((3, 4), np.float32))
        g.create_dataset("dense/bias:0", data=np.zeros(4, np.float32))

    def keras3(f: Any) -> None:
        f.create_dataset("layers/dense/vars/0", data=np.ones((3, 4), np.float32))
        f.create_dataset("layers/dense/vars/1", data=np.zeros(4, np.float32))

    config = {
        "module": "keras",
        "class_name": "Sequential",
        "config": {
            "name": "seq",
            "layers": [{"module": "keras.layers", "class_name": "Dense", "config": {"name": "dense", "units": 4}}],
        },
    }
    archive = io.BytesIO()
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": "3.6.0"}))
        zf.writestr("config.json", json.dumps(config))
        zf.writestr("model.weights.h5", h5(keras3))
    return [h5(keras2), archive.getvalue()]


@pytest.fixture(scope="module")
def keras_seeds(tmp_path_factory: pytest.TempPathFactory) -> list[bytes]:
    return h5_seeds(tmp_path_factory.mktemp("keras-seeds"))


@fuzz(max_examples=300)
@given(data=st.data())
def test_keras_reader(keras_seeds: list[bytes], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    open_keras = optional_reader("keras")
    blob = data.draw(mutated(keras_seeds))
    path = tmp_path_factory.getbasetemp() / ("fuzz.keras" if blob.startswith(b"PK") else "fuzz.h5")
    path.write_bytes(blob)
    probe("keras", lambda: read_all(open_keras(path)))


@fuzz(max_examples=600)
@given(data=st.data())
def test_flax_msgpack_reader(tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    open_flax = optional_reader("flax")
    path = tmp_path_factory.getbasetemp() / "fuzz.msgpack"
    blob = data.draw(mutated(FLAX_SEEDS))
    path.write_bytes(blob)
    probe("flax msgpack", lambda: read_all(open_flax(path)))
