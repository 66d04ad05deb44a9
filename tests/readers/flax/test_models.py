"""Real Flax models, linen and NNX, saved as Flax users save them (msgpack, orbax), converted, loaded
strictly into a PyTorch twin built here, and run: the twin's output equals Flax's own apply."""

from __future__ import annotations

import functools
from pathlib import Path
from typing import Any

import numpy as np
import pytest

jax = pytest.importorskip("jax", reason="needs jax to build Flax models")
pytest.importorskip("flax", reason="needs flax to build Flax models")
pytest.importorskip("orbax.checkpoint", reason="needs orbax-checkpoint to save Flax checkpoints")
torch = pytest.importorskip("torch", reason="needs torch for the PyTorch twins")

import jax.numpy as jnp  # noqa: E402

from convert.api import flax_to_safetensors  # noqa: E402
from convert.mapping import builtin_layouts  # noqa: E402
from tests.support import (  # noqa: E402
    api_verified,
    assert_cli_error,
    assert_no_output,
    flax_nets as fh,  # noqa: E402
    load_output,
    run_cli,
    write_bytes as write,
)

CELLS = ["LSTMCell", "OptimizedLSTMCell", "GRUCell", "SimpleCell"]


convert = functools.partial(api_verified, flax_to_safetensors)


@pytest.fixture(scope="module")
def convnet() -> tuple[dict[str, Any], np.ndarray]:
    return fh.trained_convnet()


def test_linen_conv_batchnorm_dense_layernorm(convnet: tuple[dict[str, Any], np.ndarray], tmp_path: Path) -> None:
    variables, expected = convnet
    src = write(tmp_path / "convnet.msgpack", fh.to_bytes(variables))
    doc = convert(src, tmp_path / "out")
    twin = fh.load_twin(fh.TorchConvNet(), tmp_path / "out")
    fh.assert_close(twin(torch.from_numpy(fh.images())), expected)
    assert doc["source"]["format"] == "flax-msgpack"
    assert doc["source"]["details"]["collections"] == ["params", "batch_stats"]
    modules = {m["path"]: m for m in doc["architecture"]["source_model"]["modules"]}
    assert modules["Conv_0"]["type"] == "Conv" and modules["Conv_0"]["params"]["kernel_size"] == [3, 3]
    assert modules["BatchNorm_0"]["type"] == "BatchNorm" and modules["Dense_1"]["params"]["features"] == fh.CLASSES
    origin = doc["source"]["details"]["origins"]["BatchNorm_0.running_var"]
    assert origin == {"from": ["batch_stats/BatchNorm_0/var"]}


def test_train_state_converts_params_and_batch_stats_only(convnet: tuple[dict[str, Any], np.ndarray], tmp_path: Path) -> None:
    """A whole train state (step, optimizer state, params, batch_stats), as Flax examples checkpoint it."""
    import optax
    from flax.training import train_state

    class TrainState(train_state.TrainState):
        batch_stats: Any

    variables, expected = convnet
    state = TrainState.create(
        apply_fn=fh.ConvNet().apply, params=variables["params"], tx=optax.adam(1e-3), batch_stats=variables["batch_stats"]
    )
    src = write(tmp_path / "state.msgpack", fh.to_bytes(state))
    doc = convert(src, tmp_path / "out")
    fh.assert_close(fh.load_twin(fh.TorchConvNet(), tmp_path / "out")(torch.from_numpy(fh.images())), expected)
    assert doc["source"]["details"]["skipped_collections"] == ["opt_state", "step"]
    # every optimizer array is accounted for: listed in source.dropped with its reason
    import jax

    opt_leaves = jax.tree_util.tree_leaves(state.opt_state)
    dropped = doc["source"]["dropped"]
    assert len(dropped) == sum(1 for leaf in opt_leaves if hasattr(leaf, "shape"))
    assert set(dropped.values()) == {"collection opt_state (not chosen by --collection)"}


@pytest.mark.parametrize("cell", CELLS)
def test_linen_recurrent_cell_over_time(cell: str, tmp_path: Path) -> None:
    variables, expected = fh.seqnet(cell)
    src = write(tmp_path / "seq.msgpack", fh.to_bytes(variables))
    doc = convert(src, tmp_path / "out")
    twin = fh.load_twin(fh.TorchSeqNet(cell, f"{cell}_0"), tmp_path / "out")
    fh.assert_close(twin(torch.from_numpy(fh.tokens()).long()), expected)
    kind = {"SimpleCell": "RNN", "GRUCell": "GRU"}.get(cell, "LSTM")
    inferred = {m["path"]: m for m in doc["architecture"]["modules"]}[f"{cell}_0"]
    assert inferred["type"] == kind and inferred["params"]["hidden_size"] == fh.HIDDEN


@pytest.mark.parametrize("cell", CELLS)
def test_nnx_state_through_orbax(cell: str, tmp_path: Path) -> None:
    """nnx.state as it is (`.value` leaves, BatchStat, Dropout's RNG stream), saved with orbax."""
    from flax import nnx

    model, expected = fh.trained_nnx(cell)
    src = fh.save_orbax(nnx.state(model), tmp_path / "ckpt")
    doc = convert(src, tmp_path / "out")
    twin = fh.load_twin(fh.TorchNNXNet(cell), tmp_path / "out")
    fh.assert_close(twin(torch.from_numpy(fh.tokens()).long()), expected)
    details = doc["source"]["details"]
    assert doc["source"]["format"] == "orbax" and details["nnx_value_leaves"] is True
    assert sorted(details["dropped_rng_state"]) == ["drop/rngs/count", "drop/rngs/key", "rnn/rngs/count", "rnn/rngs/key"]


@pytest.mark.parametrize("value_leaves", [False, True], ids=["pure-dict", "value-leaves"])
def test_nnx_state_through_msgpack(value_leaves: bool, tmp_path: Path) -> None:
    model, expected = fh.trained_nnx("LSTMCell")
    weights = fh.nnx_weights(model)
    if value_leaves:
        weights = jax.tree_util.tree_map(lambda a: {"value": a}, weights)
    src = write(tmp_path / "nnx.msgpack", fh.to_bytes(weights))
    convert(src, tmp_path / "out")
    fh.assert_close(fh.load_twin(fh.TorchNNXNet("LSTMCell"), tmp_path / "out")(torch.from_numpy(fh.tokens()).long()), expected)


def test_orbax_checkpoint_manager_takes_the_latest_step(convnet: tuple[dict[str, Any], np.ndarray], tmp_path: Path) -> None:
    import orbax.checkpoint as ocp

    variables, expected = convnet
    zeros = jax.tree_util.tree_map(jnp.zeros_like, variables)
    with ocp.CheckpointManager(tmp_path / "run") as manager:
        manager.save(1, args=ocp.args.StandardSave(zeros))
        manager.save(2, args=ocp.args.StandardSave(variables))
        manager.wait_until_finished()
    doc = convert(tmp_path / "run", tmp_path / "out")
    assert doc["source"]["details"]["step"] == 2
    fh.assert_close(fh.load_twin(fh.TorchConvNet(), tmp_path / "out")(torch.from_numpy(fh.images())), expected)


def test_bf16_stays_bf16_unless_asked(tmp_path: Path) -> None:
    variables, expected = fh.seqnet("LSTMCell", jnp.bfloat16)
    src = write(tmp_path / "bf16.msgpack", fh.to_bytes(variables))
    doc = convert(src, tmp_path / "out")
    stored = load_output(tmp_path / "out")
    assert {t["dtype"] for t in doc["tensors"]} == {"BF16"} and all(v.dtype == torch.bfloat16 for v in stored.values())
    kernel = np.asarray(variables["params"]["Dense_0"]["kernel"])
    assert stored["Dense_0.weight"].view(torch.int16).numpy().tobytes() == np.ascontiguousarray(kernel.T).view(np.int16).tobytes()
    # Flax computes in float32 here (float32 inputs promote the bf16 parameters): so does the twin
    twin = fh.load_twin(fh.TorchSeqNet("LSTMCell", "LSTMCell_0"), tmp_path / "out")
    fh.assert_close(twin(torch.from_numpy(fh.tokens()).long()), expected)
    upcast = convert(src, tmp_path / "f32", dtype="f32")
    assert {t["dtype"] for t in upcast["tensors"]} == {"F32"}
    assert all(t["invertible"] for t in upcast["tensors"])


def test_unstack_splits_scanned_layers(tmp_path: Path) -> None:
    model, x = fh.Stacked(), np.random.default_rng(3).normal(size=(2, fh.EMBED)).astype(np.float32)
    variables = model.init(jax.random.PRNGKey(4), x)
    src = write(tmp_path / "scan.msgpack", fh.to_bytes(variables))
    doc = convert(src, tmp_path / "out", unstack=("layers",))
    fh.assert_close(fh.load_twin(fh.TorchStacked(), tmp_path / "out")(torch.from_numpy(x)), model.apply(variables, x))
    assert doc["source"]["details"]["unstacked"] == {"layers": 3}
    assert doc["source"]["details"]["origins"]["layers.2.Dense_0.weight"] == {
        "from": ["params/layers/Dense_0/kernel[2]"],
        "transforms": [{"op": "transpose"}],
    }
    rc = run_cli("flax-to-safetensors", src, tmp_path / "cli", "--unstack", "layers", "--json")
    assert rc[0] == 0, rc[2]
    assert load_output(tmp_path / "cli").keys() == load_output(tmp_path / "out").keys()
    assert_cli_error(run_cli("flax-to-safetensors", src, tmp_path / "bad", "--unstack", "nowhere"), 2, "nowhere")
    assert_cli_error(run_cli("flax-to-safetensors", src, tmp_path / "bad", "--unstack", "Dense_0"), 2, "leading")
    assert_no_output(tmp_path / "bad")


def test_stacked_layers_without_unstack_are_refused_naming_the_path(tmp_path: Path) -> None:
    """A scanned Dense kernel [layers, in, out] would pass for a Conv kernel: refused, with the option
    that splits it; a wrong --unstack path lists the stacked modules (nn.scan names one ScanBlock_0)."""
    import flax.linen as nn

    class Unnamed(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            x, _ = nn.scan(fh.Block, variable_axes={"params": 0}, split_rngs={"params": True}, length=3)()(x, None)
            return x

    x = np.zeros((2, fh.EMBED), np.float32)
    named = write(tmp_path / "scan.msgpack", fh.to_bytes(fh.Stacked().init(jax.random.PRNGKey(4), x)))
    assert_cli_error(run_cli("flax-to-safetensors", named, tmp_path / "bad"), 4, "layers:", "--unstack layers")
    unnamed = write(tmp_path / "unnamed.msgpack", fh.to_bytes(Unnamed().init(jax.random.PRNGKey(4), x)))
    line = assert_cli_error(
        run_cli("flax-to-safetensors", unnamed, tmp_path / "bad", "--unstack", "layers"), 2, "stacked modules here: ScanBlock_0"
    )
    assert "--unstack layers" in line
    assert_no_output(tmp_path / "bad")
    assert run_cli("flax-to-safetensors", unnamed, tmp_path / "ok", "--unstack", "ScanBlock_0")[0] == 0
    assert "ScanBlock_0.2.Dense_0.weight" in load_output(tmp_path / "ok")


def test_collection_option(convnet: tuple[dict[str, Any], np.ndarray], tmp_path: Path) -> None:
    variables, _ = convnet
    src = write(tmp_path / "ema.msgpack", fh.to_bytes({"ema_params": variables["params"], **variables}))
    doc = convert(src, tmp_path / "out", collections=("ema_params",))
    assert doc["source"]["details"]["collections"] == ["ema_params", "batch_stats"]
    assert doc["source"]["details"]["skipped_collections"] == ["params"]
    assert_cli_error(run_cli("flax-to-safetensors", src, tmp_path / "bad", "--collection", "missing"), 3, "missing")
    assert_no_output(tmp_path / "bad")


def test_every_layout_accepts_the_canonical_form(convnet: tuple[dict[str, Any], np.ndarray], tmp_path: Path) -> None:
    """Dense and LSTM/GRU/RNN cells reach every layout; conv and norm layers every layout that has them.
    Refused where the loader's code cannot load or compute them: ToRSh's RNN forward returns zeros and
    its state dict takes no BatchNorm statistics; neuro-divergent has no conv layers."""
    cells = {f"{cell}_0": fh.seqnet(cell)[0]["params"][f"{cell}_0"] for cell in CELLS}
    dense = fh.seqnet("GRUCell")[0]["params"]["Dense_0"]
    rnn_src = write(tmp_path / "rnn.msgpack", fh.to_bytes({"params": {**cells, "Dense_0": dense}}))
    conv_src = write(tmp_path / "conv.msgpack", fh.to_bytes(convnet[0]))
    layouts = sorted({doc["name"] for doc in builtin_layouts().values()})
    # neuro-divergent's GRU resets h before the weights (Flax, like PyTorch, after): accepted by option
    accept = {"neuro-divergent": ["--layout-option", "accept_gru_reset_before_weights=true"]}
    refused_rnn = {"torsh": "SimpleCell_0.weight_ih_l0"}
    refused_conv = {"neuro-divergent": "Conv_0.weight", "torsh": "BatchNorm_0.running_mean"}
    for layout in layouts:
        rc, _, err = run_cli(
            "flax-to-safetensors", rnn_src, tmp_path / f"rnn-{layout}", "--layout", layout, "-q", *accept.get(layout, [])
        )
        if layout in refused_rnn:
            assert_cli_error((rc, "", err), 7, refused_rnn[layout])
        else:
            assert rc == 0, f"{layout}: {err}"
        rc, _, err = run_cli("flax-to-safetensors", conv_src, tmp_path / f"conv-{layout}", "--layout", layout, "-q")
        if layout in refused_conv:
            assert_cli_error((rc, "", err), 7, refused_conv[layout])
        else:
            assert rc == 0, f"{layout}: {err}"


def test_conv_transpose_is_refused_not_miswritten(tmp_path: Path) -> None:
    """PyTorch's ConvTranspose weight is Flax's kernel with its spatial axes flipped: no recorded
    transform does that, so the conversion stops rather than write a kernel that computes otherwise."""
    import flax.linen as nn

    class Decoder(nn.Module):
        @nn.compact
        def __call__(self, x: Any) -> Any:
            return nn.ConvTranspose(4, (3, 3))(x)

    variables = Decoder().init(jax.random.PRNGKey(0), fh.images())
    src = write(tmp_path / "deconv.msgpack", fh.to_bytes(variables))
    assert_cli_error(run_cli("flax-to-safetensors", src, tmp_path / "out"), 4, "deconv.msgpack", "ConvTranspose_0")
    assert_no_output(tmp_path / "out")
