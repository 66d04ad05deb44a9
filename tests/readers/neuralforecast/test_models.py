"""NeuralForecast 3.3+ folders: every model that trains on CPU in seconds is trained a few steps on
AirPassengersDF, saved by NeuralForecast, converted by the CLI, rebuilt from the manifest alone
with NeuralForecast's class, and must predict exactly what NeuralForecast's own load() + predict()
does. The neuro-divergent layout is checked by numpy forwards written from the manifest."""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("neuralforecast")

from exporters.neuralforecast.config import BASE_ARGS  # noqa: E402
from tests.support import assert_no_output, read_manifest, run_cli  # noqa: E402
from tests.support.nf_models import dense_zoo, dlinear_forward, mlp_forward, model_zoo, quiet, rebuild, temporal_scale  # noqa: E402

FOLDERS = [
    "MLP",
    "MLPQ",
    "MLPRevIN",
    "Twin_0",
    "Twin_1",
    "NHITS",
    "NBEATS",
    "NBEATSShared",
    "NBEATSx",
    "LSTM",
    "LSTMRecurrent",
    "GRU",
    "RNN",
    "DLinear",
    "NLinear",
    "TCN",
    "TFT",
    "DeepAR",
    "DeepARNormal",
    "PatchTST",
    "TimesNet",
    "Informer",
    "Autoformer",
    "FEDformer",
    "VanillaTransformer",
    "TiDE",
    "BiTCN",
    "DilatedRNN",
    "DeepNPTS",
    "KAN",
    "iTransformer",
    "TSMixer",
    "TSMixerx",
    "MLPMultivariate",
    "SOFTS",
    "TimeMixer",
    "TimeXer",
    "StemGNN",
    "RMoK",
    "XLinear",
    "SOFTSSharp",
]


def _train_save_convert(tmp: Path, models: list[Any], *cli_options: str, **nf_options: Any) -> SimpleNamespace:
    quiet()
    from neuralforecast import NeuralForecast
    from neuralforecast.utils import AirPassengersDF

    nf = NeuralForecast(models=models, freq="ME", **nf_options)
    nf.fit(AirPassengersDF)
    fitted = nf.predict()  # DistributionLoss models cannot save() before a predict()
    folder, out = tmp / "nf", tmp / "out"
    nf.save(str(folder))
    code, stdout, stderr = run_cli("nf-to-safetensors", folder, out, "--json", *cli_options, timeout=300)
    assert code == 0, stderr
    loaded = NeuralForecast.load(str(folder))
    return SimpleNamespace(
        folder=folder,
        out=out,
        result=json.loads(stdout),
        loaded=loaded,
        fitted=fitted,
        reference=loaded.predict(),
        index=json.loads((out / "models.json").read_text()),
        y=AirPassengersDF["y"].to_numpy(dtype=np.float64),
    )


@pytest.fixture(scope="module")
def zoo(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    return _train_save_convert(tmp_path_factory.mktemp("zoo"), model_zoo())


@pytest.fixture(scope="module")
def rebuilt(zoo: SimpleNamespace) -> Any:
    """The loaded forecaster with every model replaced by its rebuild from the converted folder."""
    zoo.loaded.models = [rebuild(zoo.out / entry["folder"])[0] for entry in zoo.index["models"]]
    return zoo.loaded.predict()


def _source(zoo: SimpleNamespace, folder: str) -> dict[str, Any]:
    return read_manifest(zoo.out / folder)["architecture"]["source_model"]


def _columns(frame: Any, folder: str) -> list[str]:
    """A model's prediction columns: NeuralForecast numbers a repeated alias Twin, Twin1, ..."""
    alias, _, index = folder.partition("_") if folder.startswith("Twin_") else (folder, "", "")
    name = alias + (index if index not in ("", "0") else "")
    return [c for c in frame.columns if c == name or c.startswith(f"{name}-")]


def test_every_model_has_its_own_folder(zoo: SimpleNamespace) -> None:
    assert sorted(m["folder"] for m in zoo.index["models"]) == sorted(FOLDERS)
    assert "nf_format 2" in zoo.index["generation"] and zoo.result["dry_run"] is False
    twins = [m for m in zoo.index["models"] if m["alias"] == "Twin"]
    assert [(m["folder"], m["index"], m["source_file"]) for m in twins] == [
        ("Twin_0", 0, "Twin_0.safetensors"),
        ("Twin_1", 1, "Twin_1.safetensors"),
    ]
    for entry in zoo.index["models"]:
        assert (zoo.out / entry["folder"] / "model.safetensors").is_file()


@pytest.mark.parametrize("folder", FOLDERS)
def test_rebuilt_model_predicts_exactly_like_neuralforecast(zoo: SimpleNamespace, rebuilt: Any, folder: str) -> None:
    columns = _columns(zoo.reference, folder)
    assert columns, f"no prediction columns for {folder}"
    for column in columns:
        np.testing.assert_array_equal(rebuilt[column].to_numpy(), zoo.reference[column].to_numpy(), err_msg=column)


@pytest.mark.parametrize("folder", FOLDERS)
def test_architecture_holds_every_argument_of_the_class(zoo: SimpleNamespace, folder: str) -> None:
    from neuralforecast import models

    source = _source(zoo, folder)
    cls = getattr(models, source["class"])
    own = set(inspect.signature(cls.__init__).parameters) - BASE_ARGS - {"self", "trainer_kwargs", "kwargs"}
    assert set(source["architecture"]) == own
    assert set(source["constructor"]) - set(source["architecture"]) <= BASE_ARGS
    roles = source["tensor_roles"]
    assert set(roles) == {t["name"] for t in read_manifest(zoo.out / folder)["tensors"]} | set(source["ties"])


def test_resolved_input_sizes(zoo: SimpleNamespace) -> None:
    lstm, recurrent, mlp = (_source(zoo, f)["resolved"] for f in ("LSTM", "LSTMRecurrent", "MLP"))
    assert (lstm["input_size_stored"], lstm["input_size"], lstm["window_input_size"]) == (-1, 36, 36)
    assert (recurrent["input_size"], recurrent["window_input_size"], recurrent["recurrent"]) == (36, 37, True)
    assert (mlp["input_size_stored"], mlp["input_size"], mlp["input_size_rule"]) == (24, 24, None)
    assert _source(zoo, "LSTM")["constructor"]["input_size"] == 36
    assert _source(zoo, "DeepAR")["resolved"]["recurrent"] is True
    assert _source(zoo, "iTransformer")["resolved"]["multivariate"] is True


def test_losses_state_outputs_quantiles_and_distributions(zoo: SimpleNamespace) -> None:
    mq = _source(zoo, "MLPQ")["resolved"]["loss"]
    assert (mq["class"], mq["outputsize_multiplier"], mq["output_names"]) == ("MQLoss", 3, ["-median", "-lo-80", "-hi-80"])
    np.testing.assert_allclose(mq["quantiles"], [0.5, 0.1, 0.9], rtol=1e-6)
    student = _source(zoo, "DeepAR")["resolved"]["loss"]
    normal = _source(zoo, "DeepARNormal")["resolved"]["loss"]
    assert (student["distribution"], student["outputsize_multiplier"]) == ("StudentT", 3)
    assert (normal["distribution"], normal["outputsize_multiplier"], normal["is_distribution_output"]) == ("Normal", 2, True)
    assert _source(zoo, "MLP")["resolved"]["loss"]["outputsize_multiplier"] == 1
    assert _source(zoo, "MLP")["constructor"]["loss"] == {"class": "MAE", "args": {"horizon_weight": None}}


def test_architecture_arguments_of_key_models(zoo: SimpleNamespace) -> None:
    nhits = _source(zoo, "NHITS")["architecture"]
    assert nhits["mlp_units"] == [[8, 8]] and nhits["n_blocks"] == [1, 1, 1]
    assert (nhits["n_pool_kernel_size"], nhits["n_freq_downsample"]) == ([2, 2, 1], [4, 2, 1])
    assert (nhits["interpolation_mode"], nhits["pooling_mode"]) == ("linear", "MaxPool1d")
    assert _source(zoo, "TCN")["architecture"]["dilations"] == [1, 2, 4, 8, 16]
    gru = _source(zoo, "GRU")["architecture"]
    assert (gru["encoder_hidden_size"], gru["decoder_hidden_size"]) == (8, 8)
    tft = _source(zoo, "TFT")["architecture"]
    assert (tft["hidden_size"], tft["n_head"]) == (8, 2)


def test_tied_tensors_are_stored_once_with_their_aliases(zoo: SimpleNamespace) -> None:
    tcn = read_manifest(zoo.out / "TCN")
    assert tcn["aliases"]["hist_encoder.tcn.0.conv.weight"] == "hist_encoder.tcn.0.causalconv.0.weight"
    assert "hist_encoder.tcn.0.conv.weight" not in {t["name"] for t in tcn["tensors"]}
    assert read_manifest(zoo.out / "MLPQ")["aliases"] == {"valid_loss.quantiles": "loss.quantiles"}
    shared = read_manifest(zoo.out / "NBEATSShared")
    assert shared["aliases"] and all(a.startswith("blocks.") for a in shared["aliases"])
    roles = _source(zoo, "MLPQ")["tensor_roles"]
    assert "not a weight" in roles["loss.quantiles"]
    assert "RevIN" in _source(zoo, "MLPRevIN")["tensor_roles"]["scaler.revin_bias"]


def test_forecaster_settings_match_neuralforecast(zoo: SimpleNamespace) -> None:
    forecaster = zoo.index["forecaster"]
    assert forecaster == _source(zoo, "MLP")["forecaster"]
    loaded = zoo.loaded
    assert (forecaster["freq"], forecaster["h"]) == (loaded.freq, loaded.h)
    assert (forecaster["id_col"], forecaster["time_col"], forecaster["target_col"]) == ("unique_id", "ds", "y")
    assert forecaster["series"]["ids"] == list(loaded.uids)
    assert forecaster["series"]["last_dates"] == [str(np.datetime64(d, "us")) for d in loaded.last_dates]


def test_tensors_verify_against_the_neuralforecast_file(zoo: SimpleNamespace) -> None:
    code, stdout, stderr = run_cli("verify", zoo.out / "TCN", "--source", zoo.folder / "TCN_0.safetensors")
    assert code == 0, stdout + stderr


def test_auto_runs_the_neuralforecast_conversion_and_inspect_lists_every_model(zoo: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "auto"
    assert run_cli("auto", zoo.folder, out, "-q")[0] == 0
    assert json.loads((out / "models.json").read_text())["models"] == zoo.index["models"]
    code, stdout, _ = run_cli("inspect", zoo.folder, "--json")
    names = {t["name"] for t in json.loads(stdout)["tensors"]}
    assert code == 0 and "MLP/mlp.0.weight" in names and "Twin_1/out.weight" in names


def test_dry_run_writes_nothing(zoo: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "dry"
    code, stdout, _ = run_cli("nf-to-safetensors", zoo.folder, out, "--dry-run", "--json")
    assert code == 0 and json.loads(stdout)["dry_run"] is True
    assert_no_output(out)


# --- neuro-divergent ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def dense(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    # the GRU model's gates in PyTorch's semantics (neuro-divergent's own GRU resets h first): accepted
    return _train_save_convert(
        tmp_path_factory.mktemp("dense"),
        dense_zoo(),
        "--layout",
        "neuro-divergent",
        "--layout-option",
        "accept_gru_reset_before_weights=true",
        local_scaler_type="standard",
    )


def _tensors(out: Path) -> dict[str, np.ndarray]:
    from safetensors.numpy import load_file

    return {k: v.astype(np.float64) for k, v in load_file(out / "model.safetensors").items()}


def test_neuro_divergent_writes_one_tensor_per_dense_layer_and_gate(dense: SimpleNamespace) -> None:
    shapes = {
        f: {t["name"]: tuple(t["shape"]) for t in read_manifest(dense.out / f)["tensors"]}
        for f in ("MLP", "DLinear", "NLinear", "NHITS", "NBEATS", "LSTM", "GRU")
    }
    assert shapes["MLP"] == {"mlp.0": (8, 25), "mlp.1": (8, 9), "out": (12, 9)}
    assert shapes["DLinear"] == {"linear_trend": (12, 25), "linear_season": (12, 25)}
    assert shapes["NLinear"] == {"linear": (12, 25)}
    assert shapes["NHITS"]["blocks.0.layers.0"] == (8, 13) and shapes["NHITS"]["blocks.2.layers.3"] == (36, 9)
    assert shapes["NBEATS"]["blocks.1.layers.3"] == (36, 9)
    for gate in ("input_gate", "forget_gate", "cell_gate", "output_gate"):
        assert shapes["LSTM"][f"hist_encoder.l0.{gate}"] == (8, 1 + 8 + 1)
        assert shapes["LSTM"][f"hist_encoder.l1.{gate}"] == (8, 8 + 8 + 1)
    assert shapes["GRU"]["hist_encoder.l0.reset_gate"] == (8, 10)
    assert shapes["GRU"]["hist_encoder.l0.new_gate_hidden_bias"] == (8,)


@pytest.mark.parametrize("folder", ["MLP", "DLinear"])
def test_numpy_forward_from_the_manifest_matches_neuralforecast(dense: SimpleNamespace, folder: str) -> None:
    source = read_manifest(dense.out / folder)["architecture"]["source_model"]
    resolved, arch = source["resolved"], source["architecture"]
    local = dense.index["forecaster"]["scalers"]["y"]
    assert local["columns"] == ["offset (mean)", "scale (std)"]
    offset, scale = local["stats_by_series"]["1.0"]
    window = (dense.y[-resolved["input_size"] :] - offset) / scale
    scaled, shift, spread = temporal_scale(window, resolved["scaler_type"])
    tensors = _tensors(dense.out / folder)
    if folder == "MLP":
        out = mlp_forward(tensors, scaled, arch["num_layers"])
    else:
        out = dlinear_forward(tensors, scaled, arch["moving_avg_window"])
    forecast = (out * spread + shift) * scale + offset
    np.testing.assert_allclose(forecast, dense.fitted[folder].to_numpy(), rtol=1e-5, atol=1e-5)


def test_neuro_divergent_refuses_tensors_that_are_no_layer(tmp_path: Path) -> None:
    """A TCN's convolutions are no dense or recurrent layer: refused, named, nothing written. A loss's
    quantiles are constants, not neurons: they pass through, so they are not among the refused."""
    from tests.support import REPO

    out = tmp_path / "out"
    code, _, stderr = run_cli(
        "nf-to-safetensors", REPO / "fixtures" / "neuralforecast" / "3.3.0" / "folder", out, "--layout", "neuro-divergent"
    )
    assert code == 7 and "causalconv" in stderr and "quantiles" not in stderr
    assert_no_output(out)
