"""TF1 name-based checkpoints (tf.compat.v1.train.Saver, no object graph), written by real
TensorFlow in graph mode: their TF names converted as a TF2 checkpoint's are, training state
(optimizer slots, beta powers, global_step, moving-average shadows) left out with its reason, and
the forward pass the TF1 session computes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from convert.transforms import apply
from tests.support import REPO, assert_cli_error, assert_no_output, converted_arrays, load_output, read_manifest, run_cli
from tests.support.keras_models import tensorflow_version
from tests.support.tf1 import save_with_slots

pytestmark = pytest.mark.skipif(tensorflow_version() is None, reason="needs the tensorflow extra")

EPS = 1e-3


def _save(session: Any, folder: Path) -> str:
    import tensorflow as tf

    return str(tf.compat.v1.train.Saver().save(session, str(folder / "model.ckpt")))


def _adam_step(loss: Any) -> Any:
    """An Adam step with a global step: its slots, beta powers and global_step exist once built."""
    import tensorflow as tf

    v1 = tf.compat.v1
    return v1.train.AdamOptimizer(0.01).minimize(loss, global_step=v1.train.get_or_create_global_step())


def _convert(prefix: str, out: Path, *args: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    return converted_arrays("tf-to-safetensors", prefix, out, *args, verify=True), read_manifest(out)


def _assert_as_stored(prefix: str, state: dict[str, np.ndarray], doc: dict[str, Any]) -> set[str]:
    """Every converted tensor is TensorFlow's reading of its variable after the recorded transforms;
    the checkpoint keys they come from."""
    import tensorflow as tf

    reader = tf.train.load_checkpoint(prefix)
    used = set()
    for name, how in doc["source"]["details"]["tensors"].items():
        if how.get("from") is None:
            continue
        used.add(how["from"])
        expected = apply(how["transforms"], [reader.get_tensor(how["from"])])
        assert np.array_equal(state[name], expected), name
    return used


def test_graph_mode_model_trained_with_adam(tmp_path: Path) -> None:
    """conv2d -> batch norm -> relu -> mean pool -> dense, variables by get_variable under the
    scopes tf.compat.v1.layers uses, one Adam step, a moving average of the dense kernel, saved by
    tf.compat.v1's Saver: every model variable converted (conv HWIO -> OIHW, dense transposed,
    gamma/beta -> weight/bias), every other entry dropped with its reason, verify passes, and a
    PyTorch twin on the converted tensors computes what the TF1 session does. `--key
    ExponentialMovingAverage` takes the dense kernel's moving average in its place."""
    import tensorflow as tf
    import torch
    import torch.nn.functional as F

    v1 = tf.compat.v1
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 6, 6, 3)).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default(), v1.Session() as session:
        with v1.variable_scope("conv2d"):
            kernel = v1.get_variable("kernel", (3, 3, 3, 4))
            bias = v1.get_variable("bias", (4,), initializer=v1.random_normal_initializer())
        with v1.variable_scope("batch_normalization"):
            gamma = v1.get_variable("gamma", (4,), initializer=v1.random_uniform_initializer(0.5, 1.5))
            beta = v1.get_variable("beta", (4,), initializer=v1.random_normal_initializer())
            mean = v1.get_variable("moving_mean", (4,), initializer=v1.random_normal_initializer(), trainable=False)
            var = v1.get_variable("moving_variance", (4,), initializer=v1.random_uniform_initializer(0.5, 2), trainable=False)
        with v1.variable_scope("dense"):
            dense_kernel = v1.get_variable("kernel", (4, 5))
            dense_bias = v1.get_variable("bias", (5,), initializer=v1.random_normal_initializer())
        hidden = tf.nn.conv2d(x, kernel, strides=1, padding="SAME") + bias
        hidden = tf.nn.relu(tf.nn.batch_normalization(hidden, mean, var, beta, gamma, EPS))
        output = tf.matmul(tf.reduce_mean(hidden, axis=[1, 2]), dense_kernel) + dense_bias
        train = _adam_step(tf.reduce_mean(output**2))
        average = v1.train.ExponentialMovingAverage(0.9).apply([dense_kernel])
        session.run(v1.global_variables_initializer())
        session.run(train)
        session.run(average)
        expected = session.run(output)
        prefix = _save(session, tmp_path / "v1")
    everything = set(tf.train.load_checkpoint(prefix).get_variable_to_shape_map())
    assert {
        "global_step",
        "beta1_power",
        "beta2_power",
        "dense/kernel/Adam_1",
        "dense/kernel/ExponentialMovingAverage",
    } <= everything

    state, doc = _convert(prefix, tmp_path / "out")
    assert sorted(state) == sorted(
        [
            *(f"conv2d.{n}" for n in ("weight", "bias")),
            *(f"batch_normalization.{n}" for n in ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")),
            *(f"dense.{n}" for n in ("weight", "bias")),
        ]
    )
    assert state["conv2d.weight"].shape == (4, 3, 3, 3) and state["dense.weight"].shape == (5, 4)
    assert doc["source"]["details"]["names_from"] == "tf1-names"
    used = _assert_as_stored(prefix, state, doc)
    dropped = doc["source"]["dropped"]
    assert used | set(dropped) == everything and not used & set(dropped)
    assert dropped["global_step"] == "training counter"
    assert dropped["beta1_power"] == dropped["beta2_power"] == "optimizer state"
    assert dropped["conv2d/kernel/Adam"] == "optimizer state (slot Adam of conv2d/kernel)"
    trained = used - {"batch_normalization/moving_mean", "batch_normalization/moving_variance"}
    assert all(dropped[f"{v}/{s}"].startswith("optimizer state (slot") for v in trained for s in ("Adam", "Adam_1"))
    assert "ExponentialMovingAverage shadow of dense/kernel" in dropped["dense/kernel/ExponentialMovingAverage"]

    # The moving averages in place of the variables that have them, as TF's variables_to_restore.
    averaged, doc_avg = _convert(prefix, tmp_path / "averaged", "--key", "ExponentialMovingAverage")
    shadow = tf.train.load_checkpoint(prefix).get_tensor("dense/kernel/ExponentialMovingAverage")
    assert np.array_equal(averaged["dense.weight"], shadow.T) and not np.array_equal(shadow, state["dense.weight"].T)
    assert all(np.array_equal(averaged[k], state[k]) for k in state if k != "dense.weight")
    used_avg = _assert_as_stored(prefix, averaged, doc_avg)
    dropped_avg = doc_avg["source"]["dropped"]
    assert used_avg | set(dropped_avg) == everything and not used_avg & set(dropped_avg)
    assert (
        dropped_avg["dense/kernel"]
        == "replaced by its moving average dense/kernel/ExponentialMovingAverage (--key ExponentialMovingAverage)"
    )

    t = {k: torch.from_numpy(v) for k, v in state.items()}
    h = F.conv2d(torch.from_numpy(x).permute(0, 3, 1, 2), t["conv2d.weight"], t["conv2d.bias"], padding=1)
    h = F.batch_norm(
        h,
        t["batch_normalization.running_mean"],
        t["batch_normalization.running_var"],
        t["batch_normalization.weight"],
        t["batch_normalization.bias"],
        eps=EPS,
    )
    out = F.linear(F.relu(h).mean(dim=(2, 3)), t["dense.weight"], t["dense.bias"])
    np.testing.assert_allclose(out.numpy(), expected, rtol=1e-5, atol=1e-5)


def _bert_checkpoint(folder: Path, hidden: int = 8, vocab: int = 11) -> tuple[str, dict[str, np.ndarray]]:
    """BERT's TF1 name layout (google-research/bert), its AdamWeightDecayOptimizer's adam_m/adam_v
    slots made as that optimizer makes them (get_variable `<param>/adam_m`), and a global_step."""
    shapes = {
        "bert/embeddings/word_embeddings": (vocab, hidden),
        "bert/embeddings/position_embeddings": (16, hidden),
        "bert/embeddings/LayerNorm/gamma": (hidden,),
        "bert/embeddings/LayerNorm/beta": (hidden,),
        **{
            f"bert/encoder/layer_0/attention/self/{p}/{r}": (hidden, hidden) if r == "kernel" else (hidden,)
            for p in ("query", "key", "value")
            for r in ("kernel", "bias")
        },
        "bert/encoder/layer_0/output/LayerNorm/gamma": (hidden,),
        "bert/encoder/layer_0/output/LayerNorm/beta": (hidden,),
        "bert/pooler/dense/kernel": (hidden, hidden),
        "bert/pooler/dense/bias": (hidden,),
        "cls/predictions/output_bias": (vocab,),
        "cls/seq_relationship/output_weights": (2, hidden),
    }
    return save_with_slots(folder / "model.ckpt", shapes)


def test_bert_layout_names_and_slots(tmp_path: Path) -> None:
    """BERT's names: Dense kernels transposed to [out, in] as a TF2 checkpoint's `dense/kernel` is,
    LayerNorm gamma/beta to weight/bias, embeddings and output weights kept as stored (no type
    tells their layout), every adam_m/adam_v slot and global_step dropped; `--key bert` keeps the
    encoder alone and records the rest as outside that scope; a scope the checkpoint lacks, or
    moving averages it has none of: exit 3, nothing written."""
    prefix, values = _bert_checkpoint(tmp_path / "bert")
    state, doc = _convert(prefix, tmp_path / "out")
    query = "bert.encoder.layer_0.attention.self.query"
    assert np.array_equal(state[f"{query}.weight"], values["bert/encoder/layer_0/attention/self/query/kernel"].T)
    assert np.array_equal(state[f"{query}.bias"], values["bert/encoder/layer_0/attention/self/query/bias"])
    assert np.array_equal(state["bert.embeddings.LayerNorm.weight"], values["bert/embeddings/LayerNorm/gamma"])
    assert np.array_equal(
        state["bert.encoder.layer_0.output.LayerNorm.bias"], values["bert/encoder/layer_0/output/LayerNorm/beta"]
    )
    assert np.array_equal(state["bert.embeddings.word_embeddings"], values["bert/embeddings/word_embeddings"])
    assert np.array_equal(state["cls.seq_relationship.output_weights"], values["cls/seq_relationship/output_weights"])
    assert np.array_equal(state["cls.predictions.output_bias"], values["cls/predictions/output_bias"])
    assert np.array_equal(state["bert.pooler.dense.weight"], values["bert/pooler/dense/kernel"].T)
    assert len(state) == len(values)
    modules = {module["path"]: module["type"] for module in doc["architecture"]["modules"]}
    assert modules[query] == "Linear" and modules["bert.embeddings.LayerNorm"] == "LayerNorm"
    dropped = doc["source"]["dropped"]
    assert dropped == {
        "global_step": "training counter",
        **{f"{n}/{s}": f"optimizer state (slot {s} of {n})" for n in values for s in ("adam_m", "adam_v")},
    }
    _assert_as_stored(prefix, state, doc)

    state2, _ = _convert(prefix, tmp_path / "bert_only", "--key", "bert")
    assert sorted(state2) == sorted(n.removeprefix("bert.") for n in state if n.startswith("bert."))
    doc2 = read_manifest(tmp_path / "bert_only")
    assert doc2["source"]["dropped"]["cls/predictions/output_bias"] == "outside the checkpoint scope 'bert'"
    assert_cli_error(run_cli("tf-to-safetensors", prefix, tmp_path / "none", "--key", "model"), 3, "no scope 'model'", "'bert'")
    assert_no_output(tmp_path / "none")
    assert_cli_error(
        run_cli("tf-to-safetensors", prefix, tmp_path / "none", "--key", "ExponentialMovingAverage"), 3, "no variable"
    )
    assert_no_output(tmp_path / "none")


def test_dense_kernel_as_in_a_tf2_checkpoint(tmp_path: Path) -> None:
    """`dense/kernel` and `dense/bias` give the same names, layouts and bytes from a TF1 Saver and
    a TF2 tf.train.Checkpoint of the same values."""
    import tensorflow as tf

    v1 = tf.compat.v1
    rng = np.random.default_rng(4)
    kernel, bias = rng.standard_normal((3, 7)).astype(np.float32), rng.standard_normal(7).astype(np.float32)
    graph = tf.Graph()
    with graph.as_default(), v1.Session() as session:
        v1.get_variable("dense/kernel", initializer=kernel)
        v1.get_variable("dense/bias", initializer=bias)
        session.run(v1.global_variables_initializer())
        prefix = _save(session, tmp_path / "v1")
    module = tf.Module()
    module.kernel = tf.Variable(kernel, name="dense/kernel")
    module.bias = tf.Variable(bias, name="dense/bias")
    tf2 = tf.train.Checkpoint(model=module).write(str(tmp_path / "v2" / "ckpt"))
    one, _ = _convert(prefix, tmp_path / "out1")
    two, doc2 = _convert(tf2, tmp_path / "out2")
    assert doc2["source"]["details"]["names_from"] == "tf-names"
    assert sorted(one) == sorted(two) == ["dense.bias", "dense.weight"]
    assert all(one[k].tobytes() == two[k].tobytes() for k in one)
    assert np.array_equal(one["dense.weight"], kernel.T)


def test_slot_of_another_shape_is_kept_as_a_weight(tmp_path: Path) -> None:
    """`dense/kernel/Adam` of another shape than `dense/kernel` is no slot of it (a slot has its
    variable's shape and dtype): converted as a weight of its own, not dropped."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session() as session:
        v1.get_variable("dense/kernel", (3, 4))
        v1.get_variable("dense/kernel/Adam", (4,))
        v1.get_variable("dense/kernel/Adam_1", (3, 4), dtype=tf.float64)
        session.run(v1.global_variables_initializer())
        prefix = _save(session, tmp_path / "v1")
    state, doc = _convert(prefix, tmp_path / "out")
    assert sorted(state) == ["dense.kernel.Adam", "dense.kernel.Adam_1", "dense.weight"]
    assert "dropped" not in doc["source"]
    _assert_as_stored(prefix, state, doc)


def test_training_state_only_is_refused(tmp_path: Path) -> None:
    """A checkpoint holding only a global step and Adam's beta powers: exit 4, one line, nothing written."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session() as session:
        v1.train.get_or_create_global_step()
        v1.get_variable("beta1_power", (), initializer=v1.constant_initializer(0.9), trainable=False)
        session.run(v1.global_variables_initializer())
        prefix = _save(session, tmp_path / "v1")
    assert_cli_error(
        run_cli("tf-to-safetensors", prefix, tmp_path / "out"), 4, "no model weights", "only training state", "global_step"
    )
    assert_no_output(tmp_path / "out")


def test_names_that_clash_are_refused(tmp_path: Path) -> None:
    """`block/kernel` (a Dense kernel, renamed `weight`) beside a stored `block/weight`: the TF names
    do not name the tensors apart and no object graph offers others: exit 4, nothing written."""
    import tensorflow as tf

    v1 = tf.compat.v1
    graph = tf.Graph()
    with graph.as_default(), v1.Session() as session:
        v1.get_variable("block/kernel", (3, 4))
        v1.get_variable("block/weight", (4, 3))
        session.run(v1.global_variables_initializer())
        prefix = _save(session, tmp_path / "v1")
    assert_cli_error(run_cli("tf-to-safetensors", prefix, tmp_path / "out"), 4, "do not name every tensor apart", "block.weight")
    assert_no_output(tmp_path / "out")


BERT_RULES = REPO / "examples" / "layouts" / "bert-tf1.toml"


def _full_bert_checkpoint(folder: Path, config: Any) -> str:
    """Every variable google-research/bert's BertForPreTraining graph saves, by its TF1 name, with
    the AdamWeightDecayOptimizer's adam_m/adam_v slots and a global_step."""
    h, inner, vocab = config.hidden_size, config.intermediate_size, config.vocab_size
    shapes: dict[str, tuple[int, ...]] = {
        "bert/embeddings/word_embeddings": (vocab, h),
        "bert/embeddings/position_embeddings": (config.max_position_embeddings, h),
        "bert/embeddings/token_type_embeddings": (config.type_vocab_size, h),
        "bert/pooler/dense/kernel": (h, h),
        "cls/predictions/transform/dense/kernel": (h, h),
        "cls/predictions/output_bias": (vocab,),
        "cls/seq_relationship/output_weights": (2, h),
        "cls/seq_relationship/output_bias": (2,),
    }
    for layer in range(config.num_hidden_layers):
        scope = f"bert/encoder/layer_{layer}"
        for dense in ("attention/self/query", "attention/self/key", "attention/self/value", "attention/output/dense"):
            shapes[f"{scope}/{dense}/kernel"] = (h, h)
        shapes[f"{scope}/intermediate/dense/kernel"] = (h, inner)
        shapes[f"{scope}/output/dense/kernel"] = (inner, h)
        shapes[f"{scope}/attention/output/LayerNorm/gamma"] = (h,)
        shapes[f"{scope}/output/LayerNorm/gamma"] = (h,)
    for name, shape in list(shapes.items()):
        if name.endswith("/kernel"):
            shapes[name.removesuffix("kernel") + "bias"] = (shape[1],)
        if name.endswith("/gamma"):
            shapes[name.removesuffix("gamma") + "beta"] = shape
    shapes["bert/embeddings/LayerNorm/gamma"] = shapes["bert/embeddings/LayerNorm/beta"] = (h,)
    shapes["cls/predictions/transform/LayerNorm/gamma"] = shapes["cls/predictions/transform/LayerNorm/beta"] = (h,)
    return save_with_slots(folder / "model.ckpt", shapes)[0]


def test_bert_checkpoint_loads_into_transformers_with_the_shipped_rules(tmp_path: Path) -> None:
    """Google's TF1 BERT layout converted with examples/layouts/bert-tf1.toml loads into transformers'
    BertForPreTraining with exactly the values transformers' own TF1 loader (load_tf_weights_in_bert,
    which reads the checkpoint through TensorFlow) gives it; only the decoder tied to the word
    embeddings is left for tie_weights, as in every BERT checkpoint; the masked-LM logits agree."""
    torch = pytest.importorskip("torch", reason="transformers' BERT is a torch model")
    transformers = pytest.importorskip("transformers", reason="the reference TF1 BERT loader")
    from transformers.models.bert.modeling_bert import load_tf_weights_in_bert

    config = transformers.BertConfig(
        vocab_size=30, hidden_size=8, num_hidden_layers=2, num_attention_heads=2, intermediate_size=16, max_position_embeddings=16
    )
    prefix = _full_bert_checkpoint(tmp_path / "bert", config)
    reference = load_tf_weights_in_bert(transformers.BertForPreTraining(config), config, prefix).eval()
    out = tmp_path / "out"
    rc, _, err = run_cli("tf-to-safetensors", prefix, out, "--layout-file", BERT_RULES)
    assert rc == 0, err
    assert run_cli("verify", out, "--source", prefix)[0] == 0
    converted = transformers.BertForPreTraining(config).eval()
    state = {k: torch.from_numpy(np.asarray(v)) for k, v in load_output(out).items()}
    loaded = converted.load_state_dict(state, strict=False)
    assert loaded.unexpected_keys == []
    assert sorted(loaded.missing_keys) == ["cls.predictions.decoder.bias", "cls.predictions.decoder.weight"]
    converted.tie_weights()
    expected = reference.state_dict()
    assert sorted(converted.state_dict()) == sorted(expected)
    for name, value in converted.state_dict().items():
        assert torch.equal(value, expected[name]), name
    ids = torch.tensor([[2, 7, 11, 29, 3]])
    with torch.no_grad():  # equal weights; transformers' loader leaves transposed views, so sums round apart
        np.testing.assert_allclose(
            converted(ids).prediction_logits.numpy(), reference(ids).prediction_logits.numpy(), rtol=1e-5, atol=1e-5
        )
