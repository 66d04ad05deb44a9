"""Partitioned TensorFlow variables (stored as slices under binary keys, the variable's own entry
listing them), written by real TensorFlow: TF2's ShardedVariable and a checkpoint's
MaxShardSizePolicy through tf.train.Checkpoint, TF1's partitioners through tf.compat.v1's Saver.
Each is assembled into the tensor TensorFlow's own reader returns; damaged slices are refused."""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.support import assert_cli_error, assert_no_output, converted_arrays, read_manifest, run_cli
from tests.support.keras_models import tensorflow_version
from tests.support.tf_index import Pairs, index_pairs, rewrite_index

pytestmark = pytest.mark.skipif(tensorflow_version() is None, reason="needs the tensorflow extra")

EMB = "model/emb/.ATTRIBUTES/VARIABLE_VALUE"


def _sharded(rows: list[int], cols: int, seed: int = 0) -> Any:
    """A ShardedVariable `emb` of shards with `rows` rows each (TF2's partitioned variable)."""
    import tensorflow as tf
    from tensorflow.python.distribute.sharded_variable import ShardedVariable

    rng = np.random.default_rng(seed)
    shards = [tf.Variable(rng.standard_normal((n, cols)).astype(np.float32), name=f"emb/part_{i}") for i, n in enumerate(rows)]
    return ShardedVariable(shards, name="emb")


_converted = functools.partial(converted_arrays, "tf-to-safetensors", verify=True)


def test_sharded_variable_is_its_slices_in_order(tmp_path: Path) -> None:
    """A TF2 ShardedVariable (3 uneven shards along the first axis) saved by tf.train.Checkpoint:
    one variable in the checkpoint, converted as TensorFlow reads it, handed on as its slices' spans
    (no copy), and an embedding lookup on it gives TensorFlow's result."""
    import tensorflow as tf

    from exporters.tensorflow.reader import open_tensorflow

    module = tf.Module()
    module.emb = _sharded([4, 3, 3], 8)
    prefix = tf.train.Checkpoint(model=module).write(str(tmp_path / "ckpt" / "ckpt"))
    expected = tf.train.load_checkpoint(prefix).get_tensor(EMB)
    state = _converted(prefix, tmp_path / "out")
    assert sorted(state) == ["emb"] and np.array_equal(state["emb"], expected)
    ids = np.array([0, 3, 4, 6, 7, 9, 9])
    np.testing.assert_allclose(state["emb"][ids], tf.nn.embedding_lookup(module.emb, ids).numpy())
    with open_tensorflow(prefix) as source:
        [ref] = source.tensors
        assert ref.span is None and [p.length for p in ref.pieces] == [4 * 32, 3 * 32, 3 * 32]
        assert all(Path(p.path).name == "ckpt.data-00000-of-00001" for p in ref.pieces)


def test_sharding_policy_slices_of_any_shape(tmp_path: Path) -> None:
    """MaxShardSizePolicy cuts variables along any axes, into slices spread over data shards: each
    is assembled as TensorFlow reads it, and a matmul on the kernel gives TensorFlow's result."""
    import tensorflow as tf

    rng = np.random.default_rng(1)
    module = tf.Module()
    module.w = tf.Variable(rng.standard_normal((3, 1000)).astype(np.float32))
    module.b = tf.Variable(rng.standard_normal(1000).astype(np.float32))
    module.s = tf.Variable(rng.standard_normal((2, 3, 700)).astype(np.float32))
    module.rows = tf.Variable(rng.standard_normal((100, 30)).astype(np.float32))
    options = tf.train.CheckpointOptions(experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(3000))
    prefix = tf.train.Checkpoint(model=module).write(str(tmp_path / "ckpt" / "ckpt"), options=options)
    reader = tf.train.load_checkpoint(prefix)
    state = _converted(prefix, tmp_path / "out")
    assert sorted(state) == ["b", "rows", "s", "w"]
    for name, value in state.items():
        assert np.array_equal(value, reader.get_tensor(f"model/{name}/.ATTRIBUTES/VARIABLE_VALUE")), name
    x = rng.standard_normal((5, 3)).astype(np.float32)
    np.testing.assert_allclose(x @ state["w"] + state["b"], (tf.matmul(x, module.w) + module.b).numpy(), rtol=1e-5, atol=1e-5)


def test_tf1_saver_partitioned_variables_are_assembled(tmp_path: Path) -> None:
    """tf.compat.v1 graph mode: an embedding cut into 3 uneven slices along axis 0
    (fixed_size_partitioner) and a 2-d kernel cut along axis 1, trained one Adam step (its slots
    partitioned like their variables), saved by tf.compat.v1.train.Saver. The bundle assembles both
    as TensorFlow's reader returns them, and the lookup and matmul TF computes in its session are
    numpy's on them. tf-to-safetensors converts the TF1 checkpoint: `emb` as stored, the Dense
    kernel transposed, the partitioned slots, beta powers and global step dropped."""
    import tensorflow as tf

    from exporters.tensorflow.bundle import Bundle

    ids = np.array([0, 3, 4, 6, 9, 9])
    x = np.random.default_rng(2).standard_normal((2, 6)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default():
        v1 = tf.compat.v1
        emb = v1.get_variable("emb", shape=(10, 4), partitioner=v1.fixed_size_partitioner(3))
        kernel = v1.get_variable("dense/kernel", shape=(6, 8), partitioner=v1.fixed_size_partitioner(2, axis=1))
        looked_up = tf.nn.embedding_lookup(emb, ids)
        product = tf.matmul(x, tf.concat(list(kernel), axis=1))
        loss = tf.reduce_sum(looked_up) + tf.reduce_sum(product)
        train = v1.train.AdamOptimizer(0.1).minimize(loss, global_step=v1.train.get_or_create_global_step())
        with v1.Session() as session:
            session.run(v1.global_variables_initializer())
            session.run(train)
            prefix = v1.train.Saver().save(session, str(tmp_path / "v1" / "model"))
            expected_lookup, expected_product = session.run([looked_up, product])
    reader = tf.train.load_checkpoint(prefix)
    bundle = Bundle(prefix, "model")
    try:
        assert all(bundle.entries[k].sliced for k in ("emb", "dense/kernel", "emb/Adam", "dense/kernel/Adam_1"))
        emb_ref, kernel_ref = bundle.tensor(bundle.entries["emb"]), bundle.tensor(bundle.entries["dense/kernel"])
        assert len(emb_ref.pieces) == 3 and kernel_ref.pieces == ()  # cut along axis 1: no run of bytes
        assert np.array_equal(emb_ref.array(), reader.get_tensor("emb"))
        assert np.array_equal(kernel_ref.array(), reader.get_tensor("dense/kernel"))
        np.testing.assert_allclose(emb_ref.array()[ids], expected_lookup)
        np.testing.assert_allclose(x @ kernel_ref.array(), expected_product, rtol=1e-5, atol=1e-5)
    finally:
        bundle.close()
    state = _converted(prefix, tmp_path / "out")
    assert sorted(state) == ["dense.weight", "emb"]
    assert np.array_equal(state["emb"], reader.get_tensor("emb"))
    assert np.array_equal(state["dense.weight"], reader.get_tensor("dense/kernel").T)
    dropped = read_manifest(tmp_path / "out")["source"]["dropped"]
    assert sorted(dropped) == sorted(
        ["beta1_power", "beta2_power", "global_step", *(f"{v}/Adam{s}" for v in ("emb", "dense/kernel") for s in ("", "_1"))]
    )
    assert dropped["emb/Adam_1"] == "optimizer state (slot Adam_1 of emb)"


def test_peak_memory_of_a_sharded_embedding_stays_flat(tmp_path: Path) -> None:
    """A 256 MiB ShardedVariable (4 slices of 64 MiB) converts in a child whose peak RSS stays under
    the 200 MiB bound on peak memory: its slices are copied span by span, never assembled in memory."""
    import tensorflow as tf

    from tests.support.measured_run import run_measured

    module = tf.Module()
    module.emb = _sharded([4096, 4096, 4096, 4096], 4096)
    prefix = tf.train.Checkpoint(model=module).write(str(tmp_path / "ckpt" / "ckpt"))
    del module
    run = run_measured("tf-to-safetensors", prefix, tmp_path / "out", "--json", cwd=tmp_path)
    assert run.code == 0, run.stderr[-3000:]
    assert json.loads(run.stdout)["bytes"] == 256 << 20
    assert 0 < run.peak_rss < 200 << 20, f"peak RSS {run.peak_rss >> 20} MiB"


def _graph_checkpoint(folder: Path, slices: list[tuple[int, int]]) -> str:
    """A checkpoint whose variable EMB (10 x 4) TensorFlow's SaveV2 stores as the given (start,
    rows) slices, beside the object graph of a ShardedVariable `emb` naming it."""
    import tensorflow as tf

    module = tf.Module()
    module.emb = _sharded([4, 3, 3], 4)
    graph_prefix = tf.train.Checkpoint(model=module).write(str(folder / "g" / "ckpt"))
    graph = tf.train.load_checkpoint(graph_prefix).get_tensor("_CHECKPOINTABLE_OBJECT_GRAPH")
    value = np.arange(40, dtype=np.float32).reshape(10, 4)
    prefix = str(folder / "ckpt")
    tf.raw_ops.SaveV2(
        prefix=prefix,
        tensor_names=[EMB] * len(slices) + ["_CHECKPOINTABLE_OBJECT_GRAPH"],
        shape_and_slices=[f"10 4 {a},{n}:-" for a, n in slices] + [""],
        tensors=[value[a : a + n] for a, n in slices] + [tf.constant(graph)],
    )
    return prefix


def _edit_entry(pairs: Pairs, key: bytes, **fields: Any) -> Pairs:
    """The pairs with one entry's BundleEntryProto fields changed (`shape`: a list of sizes)."""
    from exporters.tensorflow.protos import message

    out = []
    for k, v in pairs:
        if k == key:
            entry = message("BundleEntryProto")()
            entry.ParseFromString(v)
            for name, value in fields.items():
                if name == "shape":
                    del entry.shape.dim[:]
                    for size in value:
                        entry.shape.dim.add(size=size)
                else:
                    setattr(entry, name, value)
            v = entry.SerializeToString()
        out.append((k, v))
    return out


def _slice_keys(pairs: Pairs) -> list[bytes]:
    return [k for k, _ in pairs if k.startswith(b"\0")]


@pytest.mark.parametrize(
    "case,needle",
    [
        ("overlap", "slices [0:5, 0:4] and [4:10, 0:4] overlap"),
        ("gap", "its slices cover 28 of its 40 elements"),
        ("past the shape", "past its shape [9, 4]"),
        ("missing slice", "its slice [4:7, 0:4] is missing"),
        ("slice of another shape", "its slice [4:7, 0:4] holds float32 [3, 5], not [3, 4]"),
        ("slice of another dtype", "holds float64 [3, 4]"),
        ("undecodable key", "a slice key that cannot be decoded"),
        ("damaged slice bytes", "fails its checksum"),
    ],
)
def test_damaged_slices_are_refused(tmp_path: Path, case: str, needle: str) -> None:
    """Slices that overlap or leave a gap (both written by TensorFlow's own SaveV2, both refused by
    its reader), extents past the variable's shape, a slice entry missing or of another shape or
    dtype, a key that is no slice key, a slice's bytes damaged: exit 6, one line naming the
    variable (or the key), nothing written."""
    import tensorflow as tf

    layout = {"overlap": [(0, 5), (4, 6)], "gap": [(0, 4), (7, 3)]}.get(case, [(0, 4), (4, 3), (7, 3)])
    prefix = _graph_checkpoint(tmp_path / "ckpt", layout)
    index = Path(prefix + ".index")
    middle = _slice_keys(index_pairs(index))[1]
    if case in ("overlap", "gap"):
        with pytest.raises(Exception, match="Overlapping slices|sufficient slices"):
            tf.train.load_checkpoint(prefix).get_tensor(EMB)
    elif case == "past the shape":
        rewrite_index(index, lambda pairs: _edit_entry(pairs, EMB.encode(), shape=[9, 4]))
    elif case == "missing slice":
        rewrite_index(index, lambda pairs: [p for p in pairs if p[0] != middle])
    elif case == "slice of another shape":
        rewrite_index(index, lambda pairs: _edit_entry(pairs, middle, shape=[3, 5], size=60))
    elif case == "slice of another dtype":
        rewrite_index(index, lambda pairs: _edit_entry(pairs, middle, dtype=2, size=96))
    elif case == "undecodable key":
        rewrite_index(index, lambda pairs: [(k + b"\x05" if k == middle else k, v) for k, v in pairs])
    else:
        data = Path(prefix + ".data-00000-of-00001")
        raw = bytearray(data.read_bytes())
        raw[4 * 16 + 5] ^= 0x10  # inside the second slice (rows 4..6)
        data.write_bytes(bytes(raw))
    err = assert_cli_error(run_cli("tf-to-safetensors", prefix, tmp_path / "out"), 6, needle)
    assert case == "undecodable key" or EMB in err
    assert_no_output(tmp_path / "out")


def test_keras_model_checkpoint_cut_by_a_sharding_policy(tmp_path: Path) -> None:
    """A Keras model's tf.train.Checkpoint written with MaxShardSizePolicy (its embedding and Dense
    kernel cut into irregular blocks over many data shards, the kernel then transposed): converted
    to the same PyTorch names and bytes as without the policy, and the forward pass Keras computes."""
    import keras
    import tensorflow as tf

    model = keras.Sequential(
        [
            keras.Input((5,), dtype="int32"),
            keras.layers.Embedding(50, 16, name="embedding"),
            keras.layers.Dense(300, name="dense"),
        ]
    )
    ids = np.random.default_rng(3).integers(0, 50, (2, 5))
    expected = np.asarray(model(ids))
    plain = tf.train.Checkpoint(model=model).write(str(tmp_path / "plain" / "ckpt"))
    options = tf.train.CheckpointOptions(experimental_sharding_callback=tf.train.experimental.MaxShardSizePolicy(2000))
    cut = tf.train.Checkpoint(model=model).write(str(tmp_path / "cut" / "ckpt"), options=options)
    assert len(list((tmp_path / "cut").glob("ckpt.data-*"))) > 2
    state = _converted(cut, tmp_path / "out_cut")
    assert {k: v.tobytes() for k, v in state.items()} == {k: v.tobytes() for k, v in _converted(plain, tmp_path / "out").items()}
    hidden = state["embedding.weight"][ids]
    np.testing.assert_allclose(hidden @ state["dense.weight"].T + state["dense.bias"], expected, rtol=1e-5, atol=1e-5)
