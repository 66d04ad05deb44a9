"""Fuzzing the readers test_core.py does not cover: TFLite flatbuffers, NumPy .npy/.npz/pickles,
TorchScript archives, training checkpoints (optimizer, scheduler and RNG states beside the model),
ONNX models whose weights sit in Constant nodes and If/Loop/Scan subgraphs, NeuralForecast configs,
and layout rule patterns that backtrack. Whatever comes in, opening and reading every tensor returns
or raises a one-line ConvertError, never another exception and never a hang.

Each file goes through `exporters.registry.open_source` (detection included), as `convert auto` does.
Seeds are written by the real frameworks in module fixtures; inputs are those files mutated byte by
byte, and mutated inside their structure (one zip member, one TensorProto field, one config value).
Same CI profile as test_core.py (tests/support/fuzz.py: derandomized, no database, CONVERT_FUZZ_SCALE for deeper runs);
the budgets below keep this module near a minute on 2 cores, most of it writing the seeds.
"""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, strategies as st

from tests.support import REPO
from tests.support.fuzz import (
    INTERESTING_INTS,
    JSON_VALUES,
    fuzz,
    json_mutations,
    mutated,
    numpy_seed_bytes,
    probe,
    read_all,
    rezip,
    tflite_seed_bytes,
    torchscript_seed_bytes,
    training_seed_bytes,
    zip_entries,
)


def _open_all(path: Path, blob: bytes) -> Any:
    def run() -> None:
        from exporters.registry import open_source

        path.write_bytes(blob)
        read_all(open_source(path))

    return run


@st.composite
def member_mutated(draw: st.DrawFn, seeds: list[bytes]) -> bytes:
    """A zip seed with one member mutated (or dropped), rezipped so the archive itself stays valid."""
    entries = zip_entries(draw(st.sampled_from(seeds)))
    at = draw(st.integers(0, len(entries) - 1))
    name, data = entries[at]
    if draw(st.integers(0, 7)) == 0:
        del entries[at]
    else:
        entries[at] = (name, draw(mutated([data])))
    return rezip(entries)


def zip_or_bytes(seeds: list[bytes]) -> st.SearchStrategy[bytes]:
    return st.one_of(mutated(seeds), member_mutated(seeds))


def past_the_magic(seeds: list[bytes], keep: int) -> st.SearchStrategy[bytes]:
    """Seeds mutated past their first `keep` bytes, or anywhere: detection still sends most of them to
    the reader (mutants that lose the magic only test detection)."""
    tails = st.sampled_from(seeds).flatmap(lambda seed: mutated([seed[keep:]]).map(lambda tail: seed[:keep] + tail))
    return st.one_of(tails, mutated(seeds))


# ---------------------------------------------------------------------------------------------
# TFLite (exporters/tflite/): float and int8 models written by TensorFlow's converter
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tflite_seeds() -> list[bytes]:
    return tflite_seed_bytes()


@fuzz(max_examples=300)
@given(data=st.data())
def test_tflite_reader(tflite_seeds: list[bytes], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    blob = data.draw(past_the_magic(tflite_seeds, 8))
    probe("tflite", _open_all(tmp_path_factory.getbasetemp() / "fuzz.tflite", blob))


# ---------------------------------------------------------------------------------------------
# NumPy (exporters/numpy/): .npy, .npz (stored and deflated), object arrays, plain pickles
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def numpy_seeds() -> dict[str, list[bytes]]:
    return numpy_seed_bytes()


DESCRS = [
    "<f4",
    ">f8",
    "|b1",
    "<i8",
    "|u1",
    "<f2",
    "<c16",
    "|O",
    "|V8",
    "<U1000000000",
    "|S0",
    "<M8[ns]",
    "<m8[s]",
    "[('a', '<f4'), ('b', '<i2')]",
    "('<f4', (2, 2))",
    "'x'",
    "5",
    "None",
]


@st.composite
def npy_files(draw: st.DrawFn) -> bytes:
    """An NPY file from its grammar: magic, version, a header dict with forged descr, shape and order
    (as np.save writes it, or not), then some data bytes."""
    descr = draw(st.sampled_from(DESCRS))
    literal = descr if descr[0] in "[('5N" else repr(descr)  # structured and forged descrs as written
    shape = draw(st.lists(st.one_of(st.integers(0, 5), st.sampled_from(INTERESTING_INTS)), max_size=4).map(tuple))
    as_saved = f"{{'descr': {literal}, 'fortran_order': {draw(st.booleans())}, 'shape': {shape!r}, }}"
    header = draw(
        st.sampled_from(
            [
                as_saved,
                as_saved,
                as_saved,
                f"{{'descr': {descr!r}, 'shape': {shape!r}}}",
                f"{{'descr': {descr!r}, 'fortran_order': 1, 'shape': {shape!r}}}",
                f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {shape!r}, 'extra': (1,) * 100}}",
                "[" * 500 + "]" * 500,
                f"{{'descr': {descr!r}, 'fortran_order': False, 'shape': {'(' * 200 + ')' * 200}}}",
            ]
        )
    )
    version = draw(st.sampled_from([(1, 0), (1, 0), (2, 0), (3, 0), (9, 9)]))
    text = header.encode("utf-8" if version[0] == 3 else "latin1", "replace") + b"\n"
    size = struct.pack("<H" if version[0] == 1 else "<I", len(text) % (1 << (16 if version[0] == 1 else 32)))
    try:
        needed = math.prod(shape) * np.dtype(descr).itemsize
    except (TypeError, ValueError):
        needed = 16
    fill = draw(st.integers(0, 255))
    data = bytes([fill]) * (needed if 0 <= needed <= 4096 and draw(st.integers(0, 3)) else draw(st.integers(0, 48)))
    return b"\x93NUMPY" + bytes(version) + size + text + data


@fuzz(max_examples=250)
@given(kind=st.sampled_from(["npy", "npy", "npz", "pkl"]), data=st.data())
def test_numpy_reader(
    numpy_seeds: dict[str, list[bytes]], kind: str, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    seeds = numpy_seeds[kind]
    if kind == "npy":
        blob = data.draw(st.one_of(npy_files(), past_the_magic(seeds, 8)))
    else:
        blob = data.draw(zip_or_bytes(seeds) if kind == "npz" else past_the_magic(seeds, 2))
    probe(f"numpy .{kind}", _open_all(tmp_path_factory.getbasetemp() / f"fuzz.{kind}", blob))


# ---------------------------------------------------------------------------------------------
# TorchScript (exporters/pytorch/torchscript.py) and training checkpoints (exporters/pytorch/training.py)
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def torchscript_seeds() -> list[bytes]:
    return torchscript_seed_bytes()


@fuzz(max_examples=250)
@given(data=st.data())
def test_torchscript_reader(
    torchscript_seeds: list[bytes], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    blob = data.draw(zip_or_bytes(torchscript_seeds))
    probe("torchscript", _open_all(tmp_path_factory.getbasetemp() / "fuzz_script.pt", blob))


@pytest.fixture(scope="module")
def training_seeds() -> list[bytes]:
    return training_seed_bytes()


@fuzz(max_examples=250)
@given(data=st.data())
def test_training_checkpoints(training_seeds: list[bytes], tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    blob = data.draw(zip_or_bytes(training_seeds))
    probe("training checkpoint", _open_all(tmp_path_factory.getbasetemp() / "fuzz_train.pt", blob))


# ---------------------------------------------------------------------------------------------
# ONNX (exporters/onnx/): weights in initializers, Constant nodes, attributes and subgraphs
# ---------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def onnx_seed() -> Any:
    pytest.importorskip("onnx")
    from tests.support.onnx_graphs import model_with_subgraphs

    return model_with_subgraphs()


def _tensor_protos(graph: Any) -> list[Any]:
    """Every TensorProto of a graph: initializers, node attributes, and those of its subgraphs."""
    found = list(graph.initializer)
    for node in graph.node:
        for attr in node.attribute:
            found += [attr.t] if attr.HasField("t") else []
            found += list(attr.tensors)
            for sub in [*([attr.g] if attr.HasField("g") else []), *attr.graphs]:
                found += _tensor_protos(sub)
    return found


INT64S = [v for v in INTERESTING_INTS if -(2**63) <= v < 2**63]


@st.composite
def onnx_models(draw: st.DrawFn, seed: Any) -> bytes:
    """The seed with one TensorProto's dims, type, bytes, name or storage forged, or one node's attribute."""
    from onnx import TensorProto

    model = type(seed)()
    model.CopyFrom(seed)
    protos = _tensor_protos(model.graph)
    t = draw(st.sampled_from(protos))
    edit = draw(st.sampled_from(["dims", "type", "raw", "name", "external", "typed", "node"]))
    if edit == "dims":
        del t.dims[:]
        t.dims.extend(draw(st.lists(st.sampled_from(INT64S), max_size=70)))
    elif edit == "type":
        t.data_type = draw(st.sampled_from([*range(0, 27), 255]))
    elif edit == "raw":
        t.raw_data = draw(mutated([t.raw_data or b"\x00"]))
    elif edit == "name":
        # (a lone surrogate cannot be set here: protobuf's C implementation refuses it on assignment)
        t.name = draw(st.sampled_from(["", "x", "w_top", "a" * 5000, "../x", "a\x00b"]))
    elif edit == "external":
        t.data_location = TensorProto.EXTERNAL
        del t.external_data[:]
        for key, value in draw(
            st.lists(
                st.tuples(
                    st.sampled_from(["location", "offset", "length", "checksum"]),
                    st.sampled_from(["w.bin", "../w.bin", "/etc/passwd", "-1", "0", str(2**63), "x\x00y"]),
                ),
                max_size=3,
            )
        ):
            entry = t.external_data.add()
            entry.key, entry.value = key, value
    elif edit == "typed":
        t.ClearField("raw_data")
        t.float_data.extend(draw(st.lists(st.floats(), max_size=5)))
        t.int64_data.extend(draw(st.lists(st.sampled_from(INT64S), max_size=5)))
    else:
        node = draw(st.sampled_from(list(model.graph.node)))
        if node.attribute:
            attr = node.attribute[draw(st.integers(0, len(node.attribute) - 1))]
            attr.type = draw(st.integers(0, 14))
    try:
        return model.SerializeToString()
    except ValueError:  # protobuf refuses a string field that is not UTF-8: send the seed, cut
        return seed.SerializeToString()[:-7]


@fuzz(max_examples=300)
@given(data=st.data())
def test_onnx_constants_and_subgraphs(onnx_seed: Any, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject) -> None:
    blob = data.draw(st.one_of(onnx_models(onnx_seed), mutated([onnx_seed.SerializeToString()])))
    probe("onnx", _open_all(tmp_path_factory.getbasetemp() / "fuzz.onnx", blob))


# ---------------------------------------------------------------------------------------------
# NeuralForecast configs: hostile but well-formed values in a model's hyper_parameters
# ---------------------------------------------------------------------------------------------

HOSTILE_NF_VALUES = st.one_of(
    JSON_VALUES,
    st.sampled_from([float("nan"), float("inf"), -float("inf"), 1e308, 10**300, -(10**300), 2**63]),
    st.fixed_dictionaries(
        {
            "__nf__": st.just("array"),
            "dtype": st.sampled_from(["|V1000000000", "<U500000000", "O", "x", "f4,f4", "(1099511627776,)f4", "M8[ns]"]),
            "shape": st.sampled_from([[1], [2**62, 2**62], [-1], 5, [1] * 80]),
            "values": st.sampled_from([[0], [10**300], [float("nan")], 5, []]),
        }
    ),
    st.fixed_dictionaries(
        {
            "__nf__": st.just("datetime64"),
            "unit": st.sampled_from(["ns", "D", "Y", 5]),
            "values": st.sampled_from([[2**63], [10**30], [float("inf")], {"a": 1}, 7]),
        }
    ),
    st.fixed_dictionaries(
        {
            "__nf__": st.just("loss"),
            "cls": st.sampled_from(["MQLoss", "DistributionLoss", "MAE", 5]),
            "args": st.one_of(
                JSON_VALUES, st.fixed_dictionaries({"level": st.sampled_from([[float("nan")], [10**300], "abc", [200]])})
            ),
        }
    ),
)
NF_KEYS = [
    "h",
    "input_size",
    "inference_input_size",
    "n_series",
    "hidden_size",
    "num_layers",
    "loss",
    "valid_loss",
    "futr_exog_list",
    "hist_exog_list",
    "stat_exog_list",
    "n_blocks",
    "mlp_units",
    "n_pool_kernel_size",
    "n_freq_downsample",
    "dropout_prob_theta",
    "encoder_hidden_size",
    "encoder_n_layers",
    "kernel_size",
    "dilations",
    "recurrent",
    "scaler_type",
]


NF_MODELS = ["MLP_0", "NHITS_0", "LSTM_0", "TCN_0", "MLPQ_0"]


@pytest.fixture(scope="module")
def nf_folders(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A 3.3.0 save folder per model, holding that model alone (a conversion then reads one model)."""
    source = REPO / "fixtures" / "neuralforecast" / "3.3.0" / "folder"
    folders = {}
    for model in NF_MODELS:
        folder = tmp_path_factory.mktemp("fuzz-nf") / model
        folder.mkdir()
        for name in ("configuration.json", "configuration.safetensors", f"{model}.safetensors"):
            shutil.copy(source / name, folder / name)
        folders[model] = folder
    return folders


def _with_hparams(path: Path, edit: Any) -> bytes:
    """The SafeTensors model file with its hyper_parameters metadata replaced by `edit(hparams)`."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"]["hyper_parameters"] = json.dumps(edit(json.loads(header["__metadata__"]["hyper_parameters"])))
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    return struct.pack("<Q", len(text)) + text + data[8 + length :]


@fuzz(max_examples=200)
@given(model=st.sampled_from(NF_MODELS), how=st.sampled_from(["set", "mutate"]), data=st.data())
def test_neuralforecast_config_values(
    nf_folders: dict[str, Path], model: str, how: str, tmp_path_factory: pytest.TempPathFactory, data: st.DataObject
) -> None:
    from convert.api import nf_to_safetensors

    path = nf_folders[model] / f"{model}.safetensors"
    original = path.read_bytes()

    def edit(hp: dict[str, Any]) -> Any:
        if how == "set":
            return {**hp, **data.draw(st.dictionaries(st.sampled_from(NF_KEYS), HOSTILE_NF_VALUES, min_size=1, max_size=3))}
        return data.draw(json_mutations(hp))

    out = tmp_path_factory.getbasetemp() / "fuzz-nf-out"
    try:
        path.write_bytes(_with_hparams(path, edit))
        probe("neuralforecast config", lambda: nf_to_safetensors(path.parent, out, overwrite=True))
    finally:
        path.write_bytes(original)
        shutil.rmtree(out, ignore_errors=True)


# ---------------------------------------------------------------------------------------------
# Layout rule patterns: regexes and placeholder patterns from a grammar that backtracks
# ---------------------------------------------------------------------------------------------

ATOMS = ["a", "aa", ".", r"\.", "[^.]+", r"\d", ".*", ".+", "(a|aa)", "(a|a?)", "(?P<p>.+)", "x"]
QUANTS = ["", "+", "*", "?", "{2,}", "{0,30}"]


@st.composite
def hostile_patterns(draw: st.DrawFn) -> tuple[str, str]:
    """(rule line, tensor name): nested quantified groups, or many `{x...}` placeholders."""
    if draw(st.booleans()):
        body = "".join(f"({draw(st.sampled_from(ATOMS))}){draw(st.sampled_from(QUANTS))}" for _ in range(draw(st.integers(1, 5))))
        rule = f"regex = {json.dumps('^(' + body + ')' + draw(st.sampled_from(QUANTS)) + '$')}"
    else:
        parts = [draw(st.sampled_from(["{p...}", "{q}", "{n:int}", "w", "{r...}"])) for _ in range(draw(st.integers(1, 7)))]
        names = iter(f"v{i}" for i in range(10))
        rule = "match = " + json.dumps(
            ".".join(p.replace(p[1:2], next(names), 1) if p.startswith("{") else p for p in parts) + ".weight"
        )
    name = draw(st.sampled_from(["a", "a.", "1"])) * draw(st.integers(1, 3000)) + draw(st.sampled_from(["b", ".x", ""]))
    return rule, name


@fuzz(max_examples=100)
@given(case=hostile_patterns())
def test_layout_patterns_that_backtrack(case: tuple[str, str], tmp_path_factory: pytest.TempPathFactory) -> None:
    from convert import mapping
    from convert.architecture import infer_architecture
    from convert.mapping import apply_layout, load_layout
    from convert.tensors import in_memory

    rule, name = case
    path = tmp_path_factory.getbasetemp() / "fuzz_patterns.toml"

    def run() -> None:
        path.write_text(f'name = "fuzz"\nextends = "pytorch"\n[[rules]]\n{rule}\nto = "out.{{v0}}"\n')
        layout = load_layout(layout_file=path)
        tensors = [in_memory(name, np.zeros(2, np.float32)), in_memory("fc.weight", np.zeros((2, 2), np.float32))]
        apply_layout(layout, tensors, infer_architecture([(t.name, t.shape) for t in tensors]))

    budget = mapping.PATTERN_BUDGET_S
    mapping.PATTERN_BUDGET_S = 0.05  # a match that backtracks stops early: the harness stays short
    try:
        probe("layout patterns", run)
    finally:
        mapping.PATTERN_BUDGET_S = budget
