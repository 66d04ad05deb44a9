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

import importlib
import importlib.util
import io
import json
import math
import pickle
import pickletools
import struct
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, strategies as st

from convert.dtypes import DTYPES
from convert.errors import ConvertError
from tests.support import REPO
from tests.support.fuzz import (
    INTERESTING_INTS,
    JSON_VALUES,
    fuzz,
    h5_seeds,
    json_mutations,
    msgpack_seeds,
    mutated,
    probe,
    read_all,
    rezip,
    torch_bytes,
    torch_seed_objects,
    zip_entries,
)

HOSTILE = REPO / "fixtures" / "hostile"
EXAMPLE = REPO / "fixtures" / "example" / "tiny_model.pt"


# ---------------------------------------------------------------------------------------------
# Pickle programs from a grammar (opcode by opcode, with the corpus generator's helpers)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def mh() -> Any:
    """The hostile corpus's pickle assembler (scripts/hostile_corpus/pickles.py)."""
    scripts = str(REPO / "scripts")
    if scripts not in sys.path:  # scripts/ import their package as the scripts themselves do
        sys.path.insert(0, scripts)
    return importlib.import_module("hostile_corpus.pickles")


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


@pytest.fixture(scope="module")
def torch_seeds() -> dict[str, list[bytes]]:
    objs = torch_seed_objects()
    return {"zip": [torch_bytes(o, legacy=False) for o in objs], "legacy": [torch_bytes(o, legacy=True) for o in objs]}


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
    from convert.pickle_reader import _prescan, jsonable, restricted_load
    from convert.pickle_scan import clean
    from exporters.pytorch.reader import select_tensors

    if clean(data):  # the fast pre-scan walk passes only what the full one passes
        try:
            _prescan(io.BytesIO(data), "pickle")
        except ConvertError as exc:
            raise AssertionError(f"the fast pre-scan walk passed a pickle the full one refuses: {exc}") from None

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
# 7. HDF5 / .keras (exporters/keras/) and msgpack (exporters/flax/) readers
# ---------------------------------------------------------------------------------------------


def optional_reader(kind: str) -> Callable[[Path], Any]:
    """The reader for `kind`, or a skip naming the missing library it needs."""
    from exporters.registry import open_source

    library = {"keras": "h5py", "flax": "msgpack"}[kind]
    if importlib.util.find_spec(library) is None:
        pytest.skip(f"the {kind} reader needs {library}, which is not installed")
    return lambda path: open_source(path, kind=kind)


FLAX_SEEDS = msgpack_seeds() if importlib.util.find_spec("msgpack") else [b"\x80"]


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
