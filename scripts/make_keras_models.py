"""Write small real Keras models, random weights, in every format the Keras/TF exporters read, with
each model's own forward pass on a fixed input as the numerical reference. Used by the tests
(tests/readers/keras/, tests/readers/tensorflow/), which run it in a subprocess so TensorFlow never
loads into the test process.

    python scripts/make_keras_models.py OUT --flavor keras3   # Keras 3 (TF backend)
    python scripts/make_keras_models.py OUT --flavor keras2   # tf.keras 2 (needs tf_keras importable)
    python scripts/make_keras_models.py OUT --flavor keras2-graph   # tf.keras 2 in graph mode, built twice
    python scripts/make_keras_models.py OUT --flavor hf       # Hugging Face TF models (tf_keras too)

OUT/<flavor>/<model>/ then holds the saved formats plus input.npy and output.npy.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np

SEED = 1234


def keras_module(flavor: str) -> Any:
    if flavor == "keras3":
        import keras

        return keras
    os.environ["TF_USE_LEGACY_KERAS"] = "1"
    import tf_keras

    return tf_keras


def random_weights(model: Any, seed: int) -> list[np.ndarray]:
    """Random weights everywhere (variances positive), so no layer's conversion can hide behind zeros."""
    rng = np.random.default_rng(seed)
    values = []
    for w in model.weights:
        value = rng.normal(0.0, 0.5, tuple(w.shape)).astype("float32")
        if "moving_variance" in w.name or "moving_variance" in getattr(w, "path", ""):
            value = np.abs(value) + 0.5
        values.append(value)
    return values


def randomize(model: Any, seed: int) -> None:
    for w, value in zip(model.weights, random_weights(model, seed), strict=True):
        w.assign(value)


def build(keras: Any, name: str, custom: Any) -> tuple[Any, np.ndarray]:
    """(model, input) for each named test model; layer names are fixed so PyTorch twins can mirror them."""
    L = keras.layers
    rng = np.random.default_rng(7)
    if name == "vision":  # functional: Conv2D, BatchNorm, DepthwiseConv2D, Dense
        inp = keras.Input((8, 8, 3))
        x = L.Conv2D(4, 3, activation="relu", name="conv")(inp)
        x = L.BatchNormalization(name="bn")(x)
        x = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(x)
        x = L.Flatten(name="flat")(x)
        out = L.Dense(5, name="head")(x)
        return keras.Model(inp, out, name="vision"), rng.normal(size=(2, 8, 8, 3)).astype("float32")
    if name == "sequence":  # Sequential: Embedding, Conv1D, LayerNorm, LSTM, GRU, Bidirectional LSTM, Dense
        model = keras.Sequential(
            [
                keras.Input((7,), dtype="int32"),
                L.Embedding(20, 6, name="emb"),
                L.Conv1D(5, 3, padding="same", name="conv"),
                L.LayerNormalization(name="ln"),
                L.LSTM(7, return_sequences=True, name="lstm"),
                L.GRU(4, return_sequences=True, name="gru"),
                L.Bidirectional(L.LSTM(3), name="bidir"),
                L.Dense(2, name="head"),
            ],
            name="sequence",
        )
        return model, rng.integers(0, 20, size=(2, 7)).astype("int32")
    if name == "nested":  # a Sequential inside a functional model, and a SimpleRNN
        block = keras.Sequential(
            [
                keras.Input((5, 3)),
                L.SimpleRNN(4, return_sequences=True, name="rnn"),
                L.Dense(6, activation="relu", name="d1"),
                L.LayerNormalization(name="ln"),
            ],
            name="block",
        )
        inp = keras.Input((5, 3))
        out = L.Dense(3, name="out")(block(inp))
        return keras.Model(inp, out, name="nested"), rng.normal(size=(2, 5, 3)).astype("float32")
    if name == "gru_reset_before":  # not expressible as a PyTorch GRU
        model = keras.Sequential([keras.Input((4, 3)), L.GRU(2, reset_after=False, name="gru")], name="grub")
        return model, rng.normal(size=(2, 4, 3)).astype("float32")
    if name == "lambda":  # code in the config: must be neither run nor carried
        # Run with RMC_SENTINEL set, this lambda would create that file: the tests prove it never runs.
        code = L.Lambda(
            lambda t: (
                t * 2.0
                if not __import__("os").environ.get("RMC_SENTINEL")
                else open(__import__("os").environ["RMC_SENTINEL"], "w").close() or t * 2.0
            ),
            name="double",
        )
        model = keras.Sequential([keras.Input((3,)), L.Dense(2, name="d"), code], name="lam")
        return model, rng.normal(size=(2, 3)).astype("float32")
    if name == "custom":  # a layer type the converter does not know, holding a weight
        model = keras.Sequential([keras.Input((3,)), L.Dense(2, name="d"), custom(name="scale")], name="cust")
        return model, rng.normal(size=(2, 3)).astype("float32")
    if name == "subclassed":  # no config: names from attributes, variables and object paths
        return subclassed(keras)(), rng.integers(0, 10, size=(2, 5)).astype("int32")
    raise SystemExit(f"unknown model {name}")


def subclassed(keras: Any) -> Any:
    class Subclassed(keras.Model):
        def __init__(self) -> None:
            super().__init__(name="sub")
            self.emb = keras.layers.Embedding(10, 4, name="embedding")
            self.proj = keras.layers.Dense(4, name="proj")
            self.norm = keras.layers.LayerNormalization(name="norm")

        def call(self, ids: Any) -> Any:
            return self.norm(self.proj(self.emb(ids)))

    return Subclassed


def save_all(keras: Any, flavor: str, model: Any, folder: Path) -> None:
    import tensorflow as tf

    folder.mkdir(parents=True, exist_ok=True)
    tf.train.Checkpoint(model=model).write(str(folder / "ckpt" / "ckpt"))
    if folder.name == "subclassed":  # Keras writes neither a config nor an HDF5 full model for these
        model.save_weights(str(folder / ("model.weights.h5" if flavor == "keras3" else "weights.h5")))
        return
    if flavor == "keras3":
        model.save(folder / "model.keras")
        model.save_weights(folder / "model.weights.h5")
        model.save(folder / "model.h5")  # the legacy full-model HDF5 format, still written by Keras 3
        (folder / "model.json").write_text(model.to_json())
        model.export(str(folder / "savedmodel"), verbose=False)
    else:
        model.save(folder / "model.h5")
        model.save_weights(str(folder / "weights.h5"))
        tf.saved_model.save(model, str(folder / "savedmodel"))
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)  # slots exist, weights unchanged
    tf.train.Checkpoint(net=model, optimizer=optimizer).write(str(folder / "ckpt_optimizer" / "ckpt"))


def make_keras(out: Path, flavor: str, names: list[str]) -> None:
    keras = keras_module(flavor)
    custom = scale_layer(keras)
    for i, name in enumerate(names):
        model, x = build(keras, name, custom)
        model(x)  # build a subclassed model's variables
        randomize(model, SEED + i)
        folder = out / flavor / name
        save_all(keras, flavor, model, folder)
        np.save(folder / "input.npy", x)
        np.save(folder / "output.npy", np.asarray(model(x, training=False)))


def make_keras2_graph(out: Path, names: list[str]) -> None:
    """tf.keras 2 in graph mode, as TF1-era Keras always ran, each model built twice in one session and the
    second one saved: TF makes every variable scope unique in its graph, so layer `conv` keeps its weights
    as `conv_1/kernel:0` and a nested model's layer `d1` as `d1_1/kernel:0` (what Keras 2.0 files such as
    fer's emotion_model.hdf5 hold: group `conv2d_1`, weight `conv2d_1_1/kernel:0`)."""
    import tensorflow as tf

    tf.compat.v1.disable_eager_execution()
    keras = keras_module("keras2")
    custom = scale_layer(keras)
    for i, name in enumerate(names):
        build(keras, name, custom)  # the first build takes the plain scopes
        model, x = build(keras, name, custom)
        model.set_weights(random_weights(model, SEED + i))
        folder = out / "keras2-graph" / name
        folder.mkdir(parents=True, exist_ok=True)
        model.save(folder / "model.h5")
        model.save_weights(str(folder / "weights.h5"))
        (folder / "model.json").write_text(model.to_json())
        np.save(folder / "input.npy", x)
        np.save(folder / "output.npy", np.asarray(model.predict(x, verbose=0)))


def scale_layer(keras: Any) -> Any:
    register = keras.saving.register_keras_serializable if hasattr(keras, "saving") else keras.utils.register_keras_serializable

    @register(package="rmc_test")
    class Scale(keras.layers.Layer):
        def build(self, shape: Any) -> None:
            self.alpha = self.add_weight(shape=(shape[-1],), name="alpha")

        def call(self, x: Any) -> Any:
            return x * self.alpha

    return Scale


def make_hf(out: Path) -> None:
    """TFBertModel and TFGPT2LMHeadModel, built offline from configs, saved with save_pretrained."""
    keras_module("keras2")
    import transformers

    ids = np.random.default_rng(3).integers(0, 100, size=(2, 9)).astype("int32")
    bert = transformers.TFBertModel(
        transformers.BertConfig(
            vocab_size=100,
            hidden_size=32,
            num_hidden_layers=2,
            num_attention_heads=2,
            intermediate_size=37,
            max_position_embeddings=64,
        )
    )
    gpt2 = transformers.TFGPT2LMHeadModel(transformers.GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=100, n_positions=64))
    for name, model in (("bert", bert), ("gpt2", gpt2)):
        result = model(ids, training=False)
        reference = result.last_hidden_state if name == "bert" else result.logits
        folder = out / "hf" / name
        model.save_pretrained(folder / "single")
        model.save_pretrained(folder / "sharded", max_shard_size="20KB")
        np.save(folder / "input.npy", ids)
        np.save(folder / "output.npy", np.asarray(reference))


MODELS = ["vision", "sequence", "nested", "gru_reset_before", "lambda", "custom", "subclassed"]
GRAPH_MODELS = ["vision", "sequence", "nested"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--flavor", choices=["keras3", "keras2", "keras2-graph", "hf"], required=True)
    parser.add_argument("--models", nargs="*")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    if args.flavor == "hf":
        make_hf(args.out)
    elif args.flavor == "keras2-graph":
        make_keras2_graph(args.out, args.models or GRAPH_MODELS)
    else:
        make_keras(args.out, args.flavor, args.models or MODELS)
    print(f"wrote {args.out / args.flavor}", file=sys.stderr)


if __name__ == "__main__":
    main()
