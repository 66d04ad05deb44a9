"""Older NeuralForecast folders (committed fixtures, made by scripts/make_nf_fixtures.py with each
release): converted without torch or NeuralForecast, rebuilt from the manifest with the current
NeuralForecast class, and predicting what that release predicted when it saved them (for the current
release, what NeuralForecast predicts from the same folder in the same run)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.support import convert_ok, read_manifest, run_cli
from tests.support.nf_models import FIXTURES, quiet, rebuild

VERSIONS = ("3.3.0", "3.2.2", "3.1.5", "1.7.0")
GENERATIONS = {"3.3.0": "nf_format 2", "3.2.2": "ckpt", "3.1.5": "ckpt", "1.7.0": "lightning"}
# NeuralForecast 3.x rebuilt LSTM, TCN (recurrent encoders) and DeepAR: 1.7 weights do not fit them.
CHANGED_SINCE_1_7 = {"lstm", "tcn", "deepar"}
# Sampling models: the release's own predict() right after fit() and after load() differ by float32
# rounding, so the recorded values are matched to that precision.
SAMPLING = {"DeepAR", "deepar"}
# Predictions recorded by an older release on the machine that made the fixture are float32 sums
# (moving averages, matmuls) whose order depends on the CPU's vector kernels: another machine, or
# ATEN_CPU_CAPABILITY=default here, lands 1 ulp away. A few ulps is far below any conversion error
# (a wrong weight moves a forecast by whole units), so those are matched to RECORDED_MAX_ULP.
RECORDED_MAX_ULP = 4
# The current release's folder is loaded and predicted by NeuralForecast itself in the same run.
LIVE = "3.3.0"


@pytest.fixture(scope="module", params=VERSIONS)
def converted(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> tuple[str, Path]:
    version = request.param
    out = tmp_path_factory.mktemp(f"nf-{version}") / "out"
    convert_ok("nf-to-safetensors", FIXTURES / version / "folder", out, "-q")
    return version, out


def test_every_model_converted_with_its_generation(converted: tuple[str, Path]) -> None:
    version, out = converted
    index = json.loads((out / "models.json").read_text())
    assert GENERATIONS[version] in index["generation"]
    recorded = json.loads((FIXTURES / version / "predictions.json").read_text())
    assert {m["class"] for m in index["models"]} == {"MLP", "NHITS", "NBEATS", "DLinear", "NLinear", "TCN", "LSTM", "DeepAR"}
    assert len(index["models"]) == 9
    forecaster = index["forecaster"]
    assert forecaster["freq"] == recorded["freq"] and forecaster["local_scaler_type"] == "standard"
    assert forecaster["series"]["ids"] == [1.0] and forecaster["series"]["last_dates"][0].startswith("1960-12-31")
    stats = forecaster["scalers"]["y"]["stats_by_series"]["1.0"]
    y = _air_passengers()
    np.testing.assert_allclose(stats, [y.mean(), y.std()], rtol=1e-6)
    if version != "3.3.0":
        assert any(s.startswith("dataset.pkl") for s in index["skipped"])
    for entry in index["models"]:
        source = read_manifest(out / entry["folder"])["architecture"]["source_model"]
        assert source["class"] == entry["class"] and source["forecaster"] == forecaster


def test_pickled_losses_become_constructor_arguments(converted: tuple[str, Path]) -> None:
    version, out = converted
    folder = "mlpq" if version == "1.7.0" else "MLPQ"
    source = read_manifest(out / folder)["architecture"]["source_model"]
    assert source["constructor"]["loss"] == {
        "class": "MQLoss",
        "args": {"level": [80], "quantiles": None, "horizon_weight": None},
    }
    loss = source["resolved"]["loss"]
    assert loss["outputsize_multiplier"] == 3 and loss["output_names"] == ["-median", "-lo-80", "-hi-80"]
    np.testing.assert_allclose(loss["quantiles"], [0.5, 0.1, 0.9], rtol=1e-6)
    deepar = read_manifest(out / ("deepar" if version == "1.7.0" else "DeepAR"))["architecture"]["source_model"]
    assert deepar["resolved"]["loss"]["distribution"] == "StudentT"
    assert deepar["resolved"]["loss"]["outputsize_multiplier"] == 3


def test_rebuilt_models_predict_what_the_release_predicted(converted: tuple[str, Path]) -> None:
    pytest.importorskip("neuralforecast")
    quiet()
    from neuralforecast import NeuralForecast
    from neuralforecast.utils import AirPassengersDF

    version, out = converted
    index = json.loads((out / "models.json").read_text())
    if version == LIVE:
        live = NeuralForecast.load(str(FIXTURES / version / "folder")).predict()
        reference = {c: live[c].to_numpy() for c in live.columns if c not in ("unique_id", "ds")}
    else:
        reference = json.loads((FIXTURES / version / "predictions.json").read_text())["models"]
    checked = 0
    for entry in index["models"]:
        if version == "1.7.0" and entry["folder"] in CHANGED_SINCE_1_7:
            continue
        model, dropped = rebuild(out / entry["folder"], drop_unknown=True, max_steps=0)
        assert set(dropped) <= {"num_workers_loader"}  # a 1.7 argument the current classes dropped
        forecaster = index["forecaster"]
        nf = NeuralForecast(models=[model], freq=forecaster["freq"], local_scaler_type=forecaster["local_scaler_type"])
        nf.fit(AirPassengersDF)  # max_steps=0: fits the local scaler and the dataset, trains nothing
        predicted = nf.predict()
        columns = [c for c in predicted.columns if c not in ("unique_id", "ds")]
        for column in columns:
            expected = np.asarray(reference[column], dtype=np.float32)
            got = predicted[column].to_numpy()
            if entry["folder"] in SAMPLING:
                np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-4, err_msg=column)
            elif version == LIVE:  # predicted by NeuralForecast in this run, on this machine
                np.testing.assert_array_equal(got, expected, err_msg=column)
            else:
                assert_within_recorded_ulps(got, expected, column)
        checked += 1
    assert checked == (6 if version == "1.7.0" else 9)


def test_models_whose_class_changed_still_convert_with_their_config(tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert run_cli("nf-to-safetensors", FIXTURES / "1.7.0" / "folder", out, "-q")[0] == 0
    lstm = read_manifest(out / "lstm")["architecture"]["source_model"]
    assert lstm["details"]["lightning"] and "pytorch-lightning_version" in lstm["details"]
    assert lstm["architecture"]["encoder_hidden_size"] == 8
    assert {t["name"] for t in read_manifest(out / "lstm")["tensors"]} >= {"hist_encoder.weight_ih_l0"}


def assert_within_recorded_ulps(got: np.ndarray, expected: np.ndarray, column: str) -> None:
    assert got.dtype == expected.dtype == np.float32, column
    try:
        np.testing.assert_array_max_ulp(got, expected, maxulp=RECORDED_MAX_ULP)
    except AssertionError as error:
        raise AssertionError(f"{column}: {error}") from None


def _air_passengers() -> np.ndarray:
    pytest.importorskip("neuralforecast")
    from neuralforecast.utils import AirPassengersDF

    return AirPassengersDF["y"].to_numpy(dtype=np.float64)
