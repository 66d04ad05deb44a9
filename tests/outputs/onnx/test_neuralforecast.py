"""`convert to-onnx` for NeuralForecast save folders: NHITS, LSTM, an MLP that never sees the target
(exclude_insample_y), an MLP predicting a Normal distribution and a multivariate TSMixerx, trained
with future, historic and static exogenous columns, saved by NeuralForecast, exported by the CLI,
and then checked independently of the exporter: ONNX Runtime against the models NeuralForecast's
own load() gives, and the graphs fed the windows NeuralForecast would build must forecast what
predict() does."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest

pytest.importorskip("neuralforecast")
pytest.importorskip("onnxruntime", reason="needs the onnx extra")
pytest.importorskip("onnxsim", reason="needs the onnx extra")

from tests.support import assert_cli_error, assert_no_output, read_manifest, run_cli  # noqa: E402
from tests.support.nf_models import TRAINER, H, quiet  # noqa: E402
from tests.support.onnx_models import run_onnx  # noqa: E402

STEPS = 24
EXPORTED = ["LSTM", "MLPNoY", "MLPNormal", "NHITS", "TSMixerx"]
EXOG = dict(futr_exog_list=["promo"], hist_exog_list=["temp"], stat_exog_list=["size"])


def _series() -> tuple[Any, Any, Any]:
    """Two monthly series with a future, a historic and a static exogenous column; the future
    column's values over the forecast horizon."""
    import pandas as pd

    rng = np.random.default_rng(0)
    frames, future = [], []
    for uid, level in (("a", 0.0), ("b", 1.0)):
        ds = pd.date_range("2015-01-01", periods=96 + H, freq="MS")
        promo = rng.integers(0, 2, 96 + H).astype(float)
        y = np.sin(np.arange(96) / 5) + level + 0.3 * promo[:96] + rng.normal(0, 0.1, 96)
        frames.append(pd.DataFrame({"unique_id": uid, "ds": ds[:96], "y": y, "promo": promo[:96], "temp": rng.normal(size=96)}))
        future.append(pd.DataFrame({"unique_id": uid, "ds": ds[96:], "promo": promo[96:]}))
    static = pd.DataFrame({"unique_id": ["a", "b"], "size": [1.0, 2.5]})
    return pd.concat(frames, ignore_index=True), pd.concat(future, ignore_index=True), static


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    quiet()
    from neuralforecast import NeuralForecast, models as m
    from neuralforecast.losses.pytorch import DistributionLoss, MQLoss

    df, future, static = _series()
    models = [
        m.NHITS(h=H, input_size=STEPS, mlp_units=[[8, 8]], n_blocks=[1, 1, 1], **EXOG, **TRAINER),
        m.LSTM(h=H, input_size=STEPS, encoder_hidden_size=8, decoder_hidden_size=8, loss=MQLoss(level=[80]), **EXOG, **TRAINER),
        m.LSTM(h=H, input_size=STEPS, encoder_hidden_size=8, recurrent=True, alias="LSTMRecurrent", **TRAINER),
        m.MLP(h=H, input_size=STEPS, hidden_size=8, num_layers=1, exclude_insample_y=True, alias="MLPNoY", **EXOG, **TRAINER),
        m.MLP(
            h=H,
            input_size=STEPS,
            hidden_size=8,
            num_layers=1,
            loss=DistributionLoss("Normal", level=[80]),
            alias="MLPNormal",
            **TRAINER,
        ),
        m.TSMixerx(h=H, input_size=STEPS, n_series=2, n_block=1, ff_dim=8, **EXOG, **TRAINER),
    ]
    nf = NeuralForecast(models=models, freq="MS")
    nf.fit(df, static_df=static)
    predicted = nf.predict(futr_df=future)  # a distribution loss saves only after a predict
    tmp = tmp_path_factory.mktemp("nf_onnx")
    nf.save(str(tmp / "nf"))
    out = tmp / "onnx"
    rc, stdout, stderr = run_cli(
        "to-onnx", tmp / "nf", out, *(a for n in EXPORTED for a in ("--model", n)), "--json", timeout=900
    )
    assert rc == 0, stderr
    return SimpleNamespace(
        folder=tmp / "nf",
        out=out,
        result=json.loads(stdout),
        df=df,
        future=future,
        static=static,
        predicted=predicted,
        loaded=NeuralForecast.load(str(tmp / "nf")),
    )


def _shapes(values: list[dict[str, Any]]) -> dict[str, list[Any]]:
    return {v["name"]: v["shape"] for v in values}


def test_each_model_is_a_graph_of_its_window(saved: SimpleNamespace) -> None:
    assert sorted(p.name for p in saved.out.iterdir()) == EXPORTED
    assert sorted(g["folder"] for g in saved.result["graphs"]) == EXPORTED
    nhits, lstm = read_manifest(saved.out / "NHITS"), read_manifest(saved.out / "LSTM")
    assert _shapes(nhits["graph"]["inputs"]) == {
        "insample_y": ["batch", STEPS, 1],
        "insample_mask": ["batch", STEPS, 1],
        "futr_exog": ["batch", STEPS + H, 1],
        "hist_exog": ["batch", STEPS, 1],
        "stat_exog": ["batch", 1],
    }
    lstm_inputs = _shapes(lstm["graph"]["inputs"])  # the exporter may drop the mask, which the LSTM never reads
    assert {k: v for k, v in lstm_inputs.items() if k != "insample_mask"} == {
        k: v for k, v in _shapes(nhits["graph"]["inputs"]).items() if k != "insample_mask"
    }
    assert _shapes(nhits["graph"]["outputs"])["forecast"][1:] == [H, 1]
    assert _shapes(lstm["graph"]["outputs"])["forecast"][1:] == [H, 1, 3]  # median, lo-80, hi-80
    assert lstm["graph"]["semantics"]["forecast_columns"] == ["LSTM-median", "LSTM-lo-80", "LSTM-hi-80"]
    normal, mixer = read_manifest(saved.out / "MLPNormal"), read_manifest(saved.out / "TSMixerx")
    assert [o["name"] for o in normal["graph"]["outputs"]] == ["loc", "scale"]  # the distribution's parameters
    assert "forecast_columns" not in normal["graph"]["semantics"]  # those are sampled outside the graph
    mixer_inputs = _shapes(mixer["graph"]["inputs"])
    assert {k: v for k, v in mixer_inputs.items() if k != "insample_mask"} == {
        "insample_y": ["batch", STEPS, 2],
        "futr_exog": ["batch", 1, STEPS + H, 2],
        "hist_exog": ["batch", 1, STEPS, 2],
        "stat_exog": [2, 1],
    }  # multivariate: one row of static columns per series, no batch axis
    for doc, atol in ((nhits, 1e-5), (lstm, 1e-4), (normal, 1e-5), (mixer, 1e-5)):
        validation = doc["graph"]["validation"]
        assert validation["passed"] is True and validation["batch_sizes"] == [1, 3] and validation["atol"] == atol
        assert doc["architecture"]["source_model"]["resolved"]["futr_exog_list"] == ([] if doc is normal else ["promo"])
        assert doc["source"]["format"] == "neuralforecast"


def test_graphs_match_the_models_neuralforecast_loads(saved: SimpleNamespace) -> None:
    """ONNX Runtime against NeuralForecast.load()'s own models, not the exporter's rebuild."""
    import torch

    rng = np.random.default_rng(7)
    by_alias = {str(model): model for model in saved.loaded.models}
    for name in EXPORTED:
        network = by_alias[name].eval()
        inputs = read_manifest(saved.out / name)["graph"]["inputs"]
        arrays = {
            v["name"]: rng.standard_normal([5 if v["shape"][0] == "batch" else v["shape"][0], *v["shape"][1:]]).astype(np.float32)
            for v in inputs
        }
        windows = dict.fromkeys(("insample_y", "insample_mask", "futr_exog", "hist_exog", "stat_exog"))
        windows.update({k: torch.from_numpy(v) for k, v in arrays.items()})
        if network.exclude_insample_y:  # as NeuralForecast's window parsing does
            windows["insample_y"] = windows["insample_y"] * 0
        with torch.no_grad():
            expected = network.loss.domain_map(network(windows))
        expected = [t.numpy() for t in (expected if isinstance(expected, tuple) else (expected,))]
        got = run_onnx(saved.out / name / "model.onnx", arrays)
        assert len(got) == len(expected), name
        for g, e in zip(got, expected, strict=True):
            np.testing.assert_allclose(g, e, atol=1e-4, rtol=0, err_msg=name)


@pytest.mark.parametrize("name", ["NHITS", "MLPNoY"])
def test_graph_forecasts_what_neuralforecast_predicts(saved: SimpleNamespace, name: str) -> None:
    """The windows NeuralForecast builds for its forecast, built by hand from the data, through the
    graph: models with the identity scaler must give predict()'s numbers (MLPNoY's graph must
    ignore the target's values, as NeuralForecast does)."""
    rows = {}
    for uid, series in saved.df.groupby("unique_id"):
        last = series.tail(STEPS)
        future = saved.future[saved.future.unique_id == uid]
        rows[uid] = {
            "insample_y": last["y"].to_numpy()[:, None],
            "insample_mask": np.ones((STEPS, 1)),
            "futr_exog": np.concatenate([last["promo"].to_numpy(), future["promo"].to_numpy()])[:, None],
            "hist_exog": last["temp"].to_numpy()[:, None],
            "stat_exog": saved.static.set_index("unique_id").loc[[uid], "size"].to_numpy(),
        }
    ids = sorted(rows)
    wanted = {v["name"] for v in read_manifest(saved.out / name)["graph"]["inputs"]}
    arrays = {k: np.stack([rows[u][k] for u in ids]).astype(np.float32) for k in rows[ids[0]] if k in wanted}
    (forecast,) = run_onnx(saved.out / name / "model.onnx", arrays)
    expected = np.stack([saved.predicted[saved.predicted.unique_id == u][name].to_numpy() for u in ids])
    np.testing.assert_allclose(forecast[:, :, 0], expected, rtol=1e-4, atol=1e-4)


def test_a_recurrent_model_is_refused_and_nothing_is_written(saved: SimpleNamespace, tmp_path: Path) -> None:
    out = tmp_path / "all"
    assert_cli_error(run_cli("to-onnx", saved.folder, out, timeout=600), 4, "LSTMRecurrent", "recurrently", "--model")
    assert_no_output(out)


@pytest.mark.parametrize(
    "args, needles",
    [
        (("--model", "Prophet"), ("--model Prophet", "NHITS")),
        (("--module", "pkg:factory"), ("drop --module",)),
        (("--input-shape", "1x24x1"), ("input_size and h",)),
        (("--input-range", "insample_mask=0:2"), ("drop --input-shape, --input-range",)),
    ],
)
def test_bad_options_are_refused_and_nothing_is_written(
    saved: SimpleNamespace, tmp_path: Path, args: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    out = tmp_path / "out"
    assert_cli_error(run_cli("to-onnx", saved.folder, out, "--framework", "neuralforecast", *args), 2, *needles)
    assert_no_output(out)


def test_inputs_file_needs_one_model(saved: SimpleNamespace, tmp_path: Path) -> None:
    npz = tmp_path / "inputs.npz"
    np.savez(npz, insample_y=np.zeros((1, STEPS, 1), np.float32))
    out = tmp_path / "out"
    assert_cli_error(
        run_cli("to-onnx", saved.folder, out, "--model", "NHITS", "--model", "LSTM", "--inputs", npz, timeout=600),
        2,
        "--inputs",
        "--model",
    )
    assert_no_output(out)


def test_an_nf_to_safetensors_output_exports_the_same_graphs(saved: SimpleNamespace, tmp_path: Path) -> None:
    """The converted folder alone (manifests and SafeTensors) is enough to rebuild and export."""
    converted = tmp_path / "converted"
    rc, _, stderr = run_cli("nf-to-safetensors", saved.folder, converted)
    assert rc == 0, stderr
    rng = np.random.default_rng(3)
    for src, names in ((converted, ["LSTM", "NHITS"]), (converted / "NHITS", ["NHITS"])):
        out = tmp_path / f"onnx-{src.name}"
        rc, _, stderr = run_cli("to-onnx", src, out, *(a for n in names for a in ("--model", n)), timeout=600)
        assert rc == 0, stderr
        for name in names:
            doc = read_manifest(out / name)
            assert doc["graph"]["validation"]["passed"] is True
            assert [Path(f["path"]).parent.name for f in doc["source"]["files"]] == [name]
            arrays = {v["name"]: rng.standard_normal([2, *v["shape"][1:]]).astype(np.float32) for v in doc["graph"]["inputs"]}
            (got,) = run_onnx(out / name / "model.onnx", arrays)
            (expected,) = run_onnx(saved.out / name / "model.onnx", arrays)
            np.testing.assert_array_equal(got, expected, err_msg=name)


def test_a_renamed_layout_cannot_be_rebuilt(saved: SimpleNamespace, tmp_path: Path) -> None:
    converted = tmp_path / "candle"
    rc, _, stderr = run_cli("nf-to-safetensors", saved.folder, converted, "--layout", "candle")
    assert rc == 0, stderr
    out = tmp_path / "out"
    assert_cli_error(run_cli("to-onnx", converted, out, timeout=600), 4, "--layout candle", "--layout pytorch")
    assert_no_output(out)


def test_a_multivariate_model_validates_on_the_users_inputs(saved: SimpleNamespace, tmp_path: Path) -> None:
    """stat_exog of a multivariate model has no batch axis: the user's file gives it once per series."""
    rng = np.random.default_rng(5)
    shapes = {
        "insample_y": (3, STEPS, 2),
        "insample_mask": (3, STEPS, 2),
        "futr_exog": (3, 1, STEPS + H, 2),
        "hist_exog": (3, 1, STEPS, 2),
        "stat_exog": (2, 1),
    }
    wanted = {v["name"] for v in read_manifest(saved.out / "TSMixerx")["graph"]["inputs"]}
    npz = tmp_path / "inputs.npz"
    np.savez(npz, **{k: rng.standard_normal(v).astype(np.float32) for k, v in shapes.items() if k in wanted})
    out = tmp_path / "out"
    rc, _, stderr = run_cli("to-onnx", saved.folder, out, "--model", "TSMixerx", "--inputs", npz, timeout=600)
    assert rc == 0, stderr
    runs = read_manifest(out / "TSMixerx")["graph"]["validation"]["runs"]
    assert [(r["inputs"], r["batch_size"]) for r in runs][-2:] == [("inputs.npz", 3), ("inputs.npz", 5)]
