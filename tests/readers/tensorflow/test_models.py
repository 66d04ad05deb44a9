"""TF SavedModel folders and TF2 checkpoints of real Keras models (Keras 3 and tf.keras 2), read
without TensorFlow, in canonical form: strict loads into the PyTorch twins, same outputs, the values
TensorFlow's own reader reads."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from convert.api import inspect_path, keras_to_safetensors, tf_to_safetensors, verify_path
from convert.errors import SourceNotFoundError
from exporters.registry import detect
from tests.support import REPO as ROOT, assert_cli_error, assert_no_output, load_output, read_manifest, run_cli
from tests.support.keras_models import NUMERIC_MODELS, TF_FORMATS, tensorflow_version, twin_forward
from tests.support.tf_index import Pairs, rewrite_index

pytestmark = pytest.mark.skipif(tensorflow_version() is None, reason="needs the tensorflow extra")


pytest_plugins = ["tests.support.keras_models"]  # the session fixtures keras_models, hf_models


@pytest.mark.parametrize("model", NUMERIC_MODELS)
@pytest.mark.parametrize("flavor,fmt", TF_FORMATS)
def test_forward_matches_keras(keras_models: Path, tmp_path: Path, flavor: str, fmt: str, model: str) -> None:
    model_dir = keras_models / flavor / model
    tf_to_safetensors(model_dir / fmt, tmp_path / "out")
    doc = read_manifest(tmp_path / "out")
    assert doc["source"]["format"] == ("tf-savedmodel" if fmt == "savedmodel" else "tf-checkpoint")
    assert doc["source"]["details"]["names_from"] == "tf-names"
    state = load_output(tmp_path / "out")
    if flavor == "keras2" and model == "nested":
        # tf.keras 2 names a nested functional model's variables without the model's name, and a
        # checkpoint records no other name: its layers come out at the top level.
        assert sorted(state) == sorted(n.removeprefix("block.") for n in state)
        state = {(n if n.startswith("out.") else f"block.{n}"): t for n, t in state.items()}
    twin_forward(model, state, model_dir)
    report = verify_path(tmp_path / "out", model_dir / fmt)
    assert report.ok and report.compared_with_source == len(doc["tensors"]), report.problems


@pytest.mark.parametrize("flavor", ["keras3", "keras2"])
def test_same_bytes_as_the_h5(keras_models: Path, tmp_path: Path, flavor: str) -> None:
    """The checkpoint and the .h5 of one model give the same tensors, byte for byte."""
    folder = keras_models / flavor / "sequence"
    tf_to_safetensors(folder / "ckpt", tmp_path / "tf")
    keras_to_safetensors(folder / "model.h5", tmp_path / "h5")
    tf_doc, h5_doc = read_manifest(tmp_path / "tf"), read_manifest(tmp_path / "h5")
    assert {t["name"]: t["digest"] for t in tf_doc["tensors"]} == {t["name"]: t["digest"] for t in h5_doc["tensors"]}


def test_optimizer_left_out(keras_models: Path, tmp_path: Path) -> None:
    """A checkpoint with the optimizer's slots: only the model's weights, the rest listed as skipped."""
    src = keras_models / "keras3" / "vision" / "ckpt_optimizer"
    tf_to_safetensors(src, tmp_path / "all")
    doc = read_manifest(tmp_path / "all")
    assert doc["source"]["details"]["skipped"] == ["optimizer"]
    import tensorflow as tf

    everything = set(tf.train.load_checkpoint(str(src / "ckpt") if src.is_dir() else str(src)).get_variable_to_shape_map())
    converted = {p["from"] for p in doc["source"]["details"]["tensors"].values() if p.get("from")}
    dropped = doc["source"]["dropped"]
    assert converted | set(dropped) == everything - {"_CHECKPOINTABLE_OBJECT_GRAPH"} and not converted & set(dropped)
    assert "optimizer state" in dropped.values()
    tf_to_safetensors(src, tmp_path / "net", key="net")
    assert read_manifest(tmp_path / "net")["source"]["details"]["key"] == "net"
    assert load_output(tmp_path / "all").keys() == load_output(tmp_path / "net").keys()
    twin_forward("vision", load_output(tmp_path / "net"), keras_models / "keras3" / "vision")
    with pytest.raises(SourceNotFoundError, match="no object 'model'"):
        tf_to_safetensors(src, tmp_path / "none", key="model")
    assert_no_output(tmp_path / "none")


def test_cli_paths_and_detection(keras_models: Path, tmp_path: Path) -> None:
    """A checkpoint by prefix, .index file or folder, and a SavedModel folder: detected by content
    (`convert auto`), converted alike; `inspect` and `verify --source` read them too."""
    folder = keras_models / "keras2" / "vision"
    sources = [folder / "ckpt" / "ckpt", folder / "ckpt" / "ckpt.index", folder / "ckpt", folder / "savedmodel"]
    for i, src in enumerate(sources):
        assert detect(src).kind == "tensorflow"
        assert tf_to_safetensors(src, tmp_path / f"out{i}").tensors == 11
    rc, out, err = run_cli("tf-to-safetensors", sources[1], tmp_path / "cli", "--json")
    assert rc == 0 and err == "", err
    assert json.loads(out)["tensors"] == 11
    assert "bn.running_var" in [t["name"] for t in inspect_path(sources[3])["tensors"]]
    assert verify_path(tmp_path / "cli", sources[0]).ok


@pytest.mark.parametrize(
    "flavor,fmt,names_from",
    [
        ("keras3", "ckpt", "object-paths"),
        ("keras2", "ckpt", "tf-names"),
        ("keras3", "model.weights.h5", None),
        ("keras2", "weights.h5", None),
    ],
)
def test_subclassed_model(keras_models: Path, tmp_path: Path, flavor: str, fmt: str, names_from: str | None) -> None:
    """No config anywhere. Keras 3 names a subclassed model's variables by the model alone, so its
    checkpoint is named by object paths (attributes: emb, proj, norm); tf.keras 2 names them by layer
    (embedding, proj, norm), and its weights file keeps them per layer."""
    model_dir = keras_models / flavor / "subclassed"
    convert = tf_to_safetensors if fmt == "ckpt" else keras_to_safetensors
    convert(model_dir / fmt, tmp_path / "out")
    details = read_manifest(tmp_path / "out")["source"]["details"]
    assert details.get("names_from") == names_from
    state = load_output(tmp_path / "out")
    if flavor == "keras2":
        state = {name.replace("embedding.", "emb."): t for name, t in state.items()}
    twin_forward("subclassed", state, model_dir)


def test_wrong_command(keras_models: Path, tmp_path: Path) -> None:
    """A Keras file given to tf-to-safetensors, a SavedModel to keras-to-safetensors: said so, exit 4."""
    folder = keras_models / "keras3" / "vision"
    assert_cli_error(run_cli("tf-to-safetensors", folder / "model.keras", tmp_path / "a"), 4, "keras-to-safetensors")
    assert_cli_error(run_cli("keras-to-safetensors", folder / "savedmodel", tmp_path / "b"), 4, "tf-to-safetensors")


def test_checkpoint_folders(keras_models: Path, tmp_path: Path) -> None:
    """A folder's `checkpoint` state file names the latest checkpoint; two checkpoints and no state
    file are ambiguous."""
    folder = tmp_path / "ckpts"
    folder.mkdir()
    for step in ("ckpt-1", "ckpt-2"):
        for f in (keras_models / "keras2" / "vision" / "ckpt").iterdir():
            shutil.copy(f, folder / f.name.replace("ckpt", step))
    assert_cli_error(run_cli("tf-to-safetensors", folder, tmp_path / "a"), 3, "not one checkpoint")
    (folder / "checkpoint").write_text('model_checkpoint_path: "ckpt-2"\nall_model_checkpoint_paths: "ckpt-1"\n')
    tf_to_safetensors(folder, tmp_path / "b")
    assert read_manifest(tmp_path / "b")["source"]["files"][0]["path"].endswith("ckpt-2.index")


def test_broken_checkpoints(keras_models: Path, tmp_path: Path) -> None:
    """Truncated or damaged files and a missing checkpoint: one line, the documented code, nothing written."""
    big = _two_shards(tmp_path / "big")
    (big / "ckpt.data-00000-of-00002").write_bytes(b"\0" * 100)  # v's 4 MB shard, cut; the object graph's intact
    assert_cli_error(
        run_cli("tf-to-safetensors", big / "ckpt", tmp_path / "a"),
        6,
        "declares shape [1000, 1000], more than the data files hold",
    )
    assert_no_output(tmp_path / "a")
    broken = tmp_path / "broken"
    shutil.copytree(keras_models / "keras3" / "sequence" / "ckpt", broken)
    [data] = broken.glob("*.data-*")
    data.write_bytes(data.read_bytes()[:64])
    assert_cli_error(run_cli("tf-to-safetensors", broken / "ckpt", tmp_path / "b"), 6, "unreadable TensorFlow checkpoint")
    assert_no_output(tmp_path / "b")
    assert_cli_error(run_cli("tf-to-safetensors", tmp_path / "nowhere" / "ckpt", tmp_path / "c"), 3, "no such")


def _two_shards(folder: Path) -> Path:
    """A TF2 checkpoint of one 1000x1000 variable `v`, its data in one shard and the object graph in another."""
    tf = pytest.importorskip("tensorflow")
    graph_src = tf.train.Checkpoint(v=tf.Variable(tf.zeros((1000, 1000)))).write(str(folder / "g" / "ckpt"))
    graph = tf.train.load_checkpoint(graph_src).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
    tf.raw_ops.SaveV2(
        prefix=str(folder / "a" / "ckpt"),
        tensor_names=["v/.ATTRIBUTES/VARIABLE_VALUE"],
        shape_and_slices=[""],
        tensors=[tf.zeros((1000, 1000))],
    )
    tf.raw_ops.SaveV2(
        prefix=str(folder / "b" / "ckpt"),
        tensor_names=["_CHECKPOINTABLE_OBJECT_GRAPH"],
        shape_and_slices=[""],
        tensors=[tf.constant(graph)],
    )
    tf.raw_ops.MergeV2Checkpoints(
        checkpoint_prefixes=[str(folder / "a" / "ckpt"), str(folder / "b" / "ckpt")], destination_prefix=str(folder / "ckpt")
    )
    return folder


def test_variables_sharing_a_name_are_all_converted(tmp_path: Path) -> None:
    """Three variables all named `w` with the same shape, two of them with the same bytes, are three
    weights: each is converted (named by object path), none dropped as a "duplicate"."""
    import numpy as np
    import tensorflow as tf

    module = tf.Module()
    module.first = tf.Variable(np.ones((2, 3), np.float32), name="w")
    module.second = tf.Variable(np.full((2, 3), 7, np.float32), name="w")
    module.copy = tf.Variable(np.ones((2, 3), np.float32), name="w")  # equal to `first`, yet its own weight
    prefix = tf.train.Checkpoint(model=module).write(str(tmp_path / "ckpt" / "ckpt"))
    tf_to_safetensors(prefix, tmp_path / "out")
    stored = load_output(tmp_path / "out")
    values = {k: float(np.asarray(v).ravel()[0]) for k, v in stored.items()}
    assert values == {"first": 1.0, "second": 7.0, "copy": 1.0}, stored.keys()
    assert read_manifest(tmp_path / "out")["source"].get("dropped", {}) == {}


def test_equal_variables_sharing_a_name_are_both_converted(tmp_path: Path) -> None:
    """Two distinct variables with the same name and the same bytes (Keras 3 names a subclassed
    model's biases all `bias`, and zeros initialises both; tf.Module's unnamed ones are all
    `Variable`) are two weights: only a Keras export's `_all_variables` list holds second copies."""
    import keras
    import numpy as np
    import tensorflow as tf

    class Pair(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.first, self.second = keras.layers.Dense(4), keras.layers.Dense(4)

        def call(self, x: Any) -> Any:
            return self.second(self.first(x))

    model = Pair()
    x = np.random.default_rng(2).standard_normal((3, 4)).astype(np.float32)
    expected = np.asarray(model(x))
    tf_to_safetensors(tf.train.Checkpoint(model=model).write(str(tmp_path / "pair" / "ckpt")), tmp_path / "out")
    state = {k: np.asarray(v) for k, v in load_output(tmp_path / "out").items()}
    assert sorted(state) == ["first.bias", "first.weight", "second.bias", "second.weight"], sorted(state)
    hidden = x @ state["first.weight"].T + state["first.bias"]
    np.testing.assert_allclose(hidden @ state["second.weight"].T + state["second.bias"], expected, rtol=1e-5, atol=1e-6)
    assert read_manifest(tmp_path / "out")["source"].get("dropped", {}) == {}
    module = tf.Module()
    module.b1, module.b2 = tf.Variable(tf.zeros(3)), tf.Variable(tf.zeros(3))
    tf_to_safetensors(tf.train.Checkpoint(model=module).write(str(tmp_path / "module" / "ckpt")), tmp_path / "mod")
    assert sorted(load_output(tmp_path / "mod")) == ["b1", "b2"]


def test_damaged_data_bytes_fail_their_checksum(tmp_path: Path) -> None:
    """Every entry of the index records a CRC32C of its bytes, which TensorFlow checks on every read
    (a DataLoss error): one bit flipped in a weight or in the object graph is refused, exit 6,
    nothing written, never converted as a silently different value."""
    import numpy as np
    import tensorflow as tf

    weight = np.random.default_rng(4).standard_normal((8, 8))
    prefix = _module_checkpoint(tmp_path / "ckpt", {"a": weight})
    data = Path(prefix + ".data-00000-of-00001")
    original = data.read_bytes()
    graph = tf.train.load_checkpoint(prefix).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
    for i, (at, needle) in enumerate(
        [(weight.tobytes(), "model/a/.ATTRIBUTES/VARIABLE_VALUE"), (graph, "_CHECKPOINTABLE_OBJECT_GRAPH")]
    ):
        pos = original.index(at) + len(at) // 2
        data.write_bytes(original[:pos] + bytes([original[pos] ^ 0x04]) + original[pos + 1 :])
        with pytest.raises((tf.errors.OpError, RuntimeError), match="Checksum does not match"):
            tf.train.load_checkpoint(prefix).get_tensor(needle)
        assert_cli_error(run_cli("tf-to-safetensors", prefix, tmp_path / f"out{i}"), 6, needle, "checksum")
        assert_no_output(tmp_path / f"out{i}")
    data.write_bytes(original)
    tf_to_safetensors(prefix, tmp_path / "good")
    assert np.array_equal(next(iter(load_output(tmp_path / "good").values())), weight)


def test_dtypes_safetensors_lacks_are_refused_by_name(tmp_path: Path) -> None:
    """complex128 and string variables: exit 4 naming the dtype, nothing written."""
    import numpy as np

    for name, value, dtype in [
        ("c128", np.array([1 + 2j], np.complex128), "complex128"),
        ("text", np.array([b"a", b"bc"]), "string"),
    ]:
        prefix = _module_checkpoint(tmp_path / name, {name: value})
        assert_cli_error(run_cli("tf-to-safetensors", prefix, tmp_path / f"out_{name}"), 4, f"model/{name}/", f"dtype {dtype}")
        assert_no_output(tmp_path / f"out_{name}")


def test_saved_state_that_is_no_variable_is_listed_as_such(tmp_path: Path) -> None:
    """A lookup table saves its keys and values as attributes of the model's own objects: listed in
    source.dropped as state that is no variable (not as lying outside the model), every key TF
    lists accounted for."""
    import numpy as np
    import tensorflow as tf

    module = tf.Module()
    module.w = tf.Variable(np.random.default_rng(8).standard_normal(3).astype(np.float32))
    module.table = tf.lookup.experimental.MutableHashTable(tf.string, tf.int64, default_value=-1)
    module.table.insert(tf.constant(["a", "b"]), tf.constant([1, 2], tf.int64))
    prefix = tf.train.Checkpoint(model=module).write(str(tmp_path / "ckpt" / "ckpt"))
    tf_to_safetensors(prefix, tmp_path / "out")
    dropped = read_manifest(tmp_path / "out")["source"]["dropped"]
    assert dropped == {
        f"model/table/.ATTRIBUTES/{name}": "saved state that is no variable (table)" for name in ("table-keys", "table-values")
    }
    everything = set(tf.train.load_checkpoint(prefix).get_variable_to_shape_map()) - {"_CHECKPOINTABLE_OBJECT_GRAPH"}
    assert everything == set(dropped) | {"model/w/.ATTRIBUTES/VARIABLE_VALUE"}
    [weight] = load_output(tmp_path / "out").values()
    assert np.array_equal(weight, module.w.numpy())


def _rewrite_header(index: Path, **fields: int) -> None:
    """Rewrite a checkpoint's `.index` with header fields changed (the forged headers TensorFlow
    itself never writes on this machine): the same entries, laid out in one block, checksummed."""
    from exporters.tensorflow.protos import message

    def edit(pairs: Pairs) -> Pairs:
        header = message("BundleHeaderProto")()
        header.ParseFromString(pairs[0][1])
        for name, value in fields.items():
            if name == "min_consumer":
                header.version.min_consumer = value
            else:
                setattr(header, name, value)
        return [(b"", header.SerializeToString()), *pairs[1:]]

    rewrite_index(index, edit)


def test_forged_headers_are_refused_as_unsupported(tmp_path: Path) -> None:
    """A big-endian checkpoint, and one whose header says it needs a newer bundle format than
    version 1 (TensorFlow refuses it too): exit 4, nothing written; the same table rewritten with the
    header untouched still converts, so it is the field that is refused."""
    import numpy as np
    import tensorflow as tf

    prefix = _module_checkpoint(tmp_path / "ckpt", {"w": np.random.default_rng(10).standard_normal((3, 2)).astype(np.float32)})
    index = Path(prefix + ".index")
    original = index.read_bytes()
    _rewrite_header(index)
    tf_to_safetensors(prefix, tmp_path / "same")
    assert np.array_equal(
        load_output(tmp_path / "same")["w"], tf.train.load_checkpoint(prefix).get_tensor("model/w/.ATTRIBUTES/VARIABLE_VALUE")
    )
    for i, (fields, needle) in enumerate(
        [({"endianness": 1}, "big-endian"), ({"min_consumer": 2}, "readable from version 2 on")]
    ):
        index.write_bytes(original)
        _rewrite_header(index, **fields)
        if "min_consumer" in fields:
            with pytest.raises(Exception, match="consumer"):
                tf.train.load_checkpoint(prefix).get_tensor("model/w/.ATTRIBUTES/VARIABLE_VALUE")
        assert_cli_error(run_cli("tf-to-safetensors", prefix, tmp_path / f"out{i}"), 4, needle)
        assert_no_output(tmp_path / f"out{i}")


def _module_checkpoint(folder: Path, variables: dict[str, Any], max_shard_size: int | None = None) -> str:
    """A tf.train.Checkpoint(model=module).write of a tf.Module holding `variables` (name -> array);
    with `max_shard_size`, TensorFlow's MaxShardSizePolicy cuts them into slices of at most that many bytes."""
    import tensorflow as tf

    module = tf.Module()
    for name, value in variables.items():
        setattr(module, name, tf.Variable(value, name=name))
    policy = max_shard_size and tf.train.experimental.MaxShardSizePolicy(max_shard_size)
    options = tf.train.CheckpointOptions(experimental_sharding_callback=policy) if policy else None
    return tf.train.Checkpoint(model=module).write(str(folder / "ckpt"), options=options)


def test_variables_are_spans_of_the_data_file_read_without_tensorflow(tmp_path: Path) -> None:
    """Every variable is handed on as a span of its `.data-*` shard (never a copy TensorFlow made),
    and opening and converting a checkpoint imports no TensorFlow; the values are TensorFlow's."""
    import subprocess
    import sys

    import ml_dtypes
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    values = {
        "f32": rng.standard_normal((3, 5)).astype(np.float32),
        "f16": rng.standard_normal((7,)).astype(np.float16),
        "bf16": rng.standard_normal((2, 2)).astype(ml_dtypes.bfloat16),
        "i64": np.arange(6, dtype=np.int64).reshape(2, 3),
        "i8": np.arange(-4, 4, dtype=np.int8),
        "flags": np.array([True, False, True]),
        "c64": (rng.standard_normal((2, 3)) + 1j * rng.standard_normal((2, 3))).astype(np.complex64),
        "u32": np.array([0, 7, 2**32 - 1], np.uint32),
        "u64": np.array([2**63 + 5, 1], np.uint64),
        "empty": np.zeros((0, 3), np.float32),
        "scalar": np.float32(rng.standard_normal()),
    }
    prefix = _module_checkpoint(tmp_path / "ckpt", values)
    code = (
        "import json, sys\n"
        "from exporters.tensorflow.reader import open_tensorflow\n"
        "from convert.api import tf_to_safetensors\n"
        f"source = open_tensorflow({prefix!r})\n"
        "spans = [[t.name, t.span and t.span.path, t.span and t.span.length, t.nbytes] for t in source.tensors]\n"
        "source.close()\n"
        f"tf_to_safetensors({prefix!r}, {str(tmp_path / 'out')!r})\n"
        "print(json.dumps({'spans': spans, 'tensorflow': 'tensorflow' in sys.modules}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout)
    assert report["tensorflow"] is False
    assert len(report["spans"]) == len(values)
    for name, path, length, nbytes in report["spans"]:
        assert path is not None and Path(path).name == "ckpt.data-00000-of-00001" and length == nbytes, name
    from safetensors.numpy import load_file

    stored = load_file(tmp_path / "out" / "model.safetensors")
    reader = tf.train.load_checkpoint(prefix)
    for name in values:
        expected = reader.get_tensor(f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE")
        (got,) = [v for k, v in stored.items() if k.split(".")[-1] == name]
        assert got.dtype == expected.dtype and np.array_equal(got, expected), name


def test_peak_memory_stays_under_the_largest_tensors_not_the_model(tmp_path: Path) -> None:
    """A 384 MiB checkpoint of six 64 MiB variables converts in a child whose peak RSS stays under
    the 200 MiB bound on peak memory: the variables stream from the mapped shard one at a time (TensorFlow's
    own reader, imported, cost over 600 MiB before reading a byte)."""
    import numpy as np

    from tests.support.measured_run import run_measured

    rng = np.random.default_rng(1)
    prefix = _module_checkpoint(tmp_path / "ckpt", {f"w{i}": rng.random((4096, 4096), dtype=np.float32) for i in range(6)})
    run = run_measured("tf-to-safetensors", prefix, tmp_path / "out", "--json", cwd=tmp_path)
    assert run.code == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["bytes"] == 6 * 64 << 20
    assert 0 < run.peak_rss < 200 << 20, f"peak RSS {run.peak_rss >> 20} MiB"


@pytest.mark.parametrize("max_shard_size", [None, 8])
def test_every_damaged_index_byte_is_a_clean_refusal(tmp_path: Path, max_shard_size: int | None) -> None:
    """The `.index` table is parsed here, not by TensorFlow: any one byte of it changed either still
    reads (a byte TensorFlow ignores too) or is refused with one of this tool's errors, never another
    exception, and always when TensorFlow refuses it (its blocks' checksums); a missing data shard is
    named. Also with every variable cut into slices (their keys and extents parsed here too)."""
    import numpy as np
    import tensorflow as tf

    from convert.errors import ConvertError
    from exporters.tensorflow.reader import open_tensorflow

    variables = {"a": np.ones((2, 3), np.float32), "b": np.arange(4, dtype=np.int64)}
    prefix = _module_checkpoint(tmp_path / "ckpt", variables, max_shard_size)
    index = Path(prefix + ".index")
    original = index.read_bytes()
    assert (b"\0model/a/" in original) is bool(max_shard_size)
    refused_by_tf = []
    for pos in range(len(original)):
        index.write_bytes(original[:pos] + bytes([original[pos] ^ 0xFF]) + original[pos + 1 :])
        try:
            reader = tf.train.load_checkpoint(prefix)
            [reader.get_tensor(k) for k in reader.get_variable_to_shape_map()]
        except Exception:  # TensorFlow's errors vary by the byte (DataLoss, a RuntimeError, ...)
            refused_by_tf.append(pos)
        try:
            open_tensorflow(prefix).close()
        except ConvertError:
            continue
        assert pos not in refused_by_tf, f"byte {pos} of the .index changed: TensorFlow refuses it, this reader read it"
    assert refused_by_tf
    for cut in (0, 10, len(original) // 2, len(original) - 1):
        index.write_bytes(original[:cut])
        with pytest.raises(ConvertError, match="unreadable TensorFlow checkpoint"):
            open_tensorflow(prefix)
    index.write_bytes(original)
    first = sorted(Path(prefix).parent.glob("ckpt.data-*"))[0]
    first.unlink()
    assert_cli_error(run_cli("tf-to-safetensors", prefix, tmp_path / "out"), 6, f"missing data file {first.name}")
    assert_no_output(tmp_path / "out")


def test_keras_export_twins_are_compared_without_copies(tmp_path: Path) -> None:
    """Keras's `model.export` stores every variable twice; telling the second copy from a distinct
    variable compares their bytes window by window, so two 64 MiB kernels never cost more than the
    200 MiB bound on peak RSS (numpy's array_equal with equal_nan copied both, over 300 MiB)."""
    import tensorflow as tf

    from tests.support.measured_run import run_measured

    model = tf.keras.Sequential([tf.keras.Input((4096,)), tf.keras.layers.Dense(4096, bias_initializer="ones", name="dense")])
    model.export(str(tmp_path / "saved"), verbose=False)
    run = run_measured("tf-to-safetensors", tmp_path / "saved", tmp_path / "out", cwd=tmp_path)
    assert run.code == 0, run.stderr[-3000:]
    assert 0 < run.peak_rss < 200 << 20, f"peak RSS {run.peak_rss >> 20} MiB"
    import numpy as np
    from safetensors.numpy import load_file

    dropped = read_manifest(tmp_path / "out")["source"]["dropped"]
    assert len(dropped) == 2 and all(why.endswith("(the same name and bytes)") for why in dropped.values()), dropped
    stored = load_file(tmp_path / "out" / "model.safetensors")
    kernel, bias = (np.asarray(w) for w in model.layers[-1].weights)
    assert sorted(stored) == ["dense.bias", "dense.weight"], sorted(stored)
    assert np.array_equal(stored["dense.weight"], kernel.T) and np.array_equal(stored["dense.bias"], bias)
