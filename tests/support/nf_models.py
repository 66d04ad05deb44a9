"""Helpers for tests/readers/neuralforecast/: tiny NeuralForecast models, rebuilding a model from a
converted folder with NeuralForecast's own class, and numpy forwards written from the manifest.

A rebuild reads nothing but the output folder: the manifest's constructor config (losses rebuilt
from their class and arguments), its trainer settings, and the SafeTensors with their ties.
"""

from __future__ import annotations

import json
import logging
import shutil
import struct
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from tests.support import REPO, read_manifest

H = 12
TRAINER = dict(
    max_steps=2,
    enable_progress_bar=False,
    enable_model_summary=False,
    logger=False,
    accelerator="cpu",
    random_seed=1,
    windows_batch_size=64,
)


def quiet() -> None:
    """Lightning prints a banner per trainer; the tests need none of it."""
    warnings.filterwarnings("ignore")
    for name in ("pytorch_lightning", "lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.ERROR)


def model_zoo() -> list[Any]:
    """One tiny instance of every model that trains on CPU in seconds, plus the variants the
    converter treats specially (multi-quantile loss, RevIN scaler, shared NBEATS weights, a
    recurrent LSTM, a repeated alias)."""
    from neuralforecast import models as m
    from neuralforecast.losses.pytorch import DistributionLoss, MQLoss

    t = TRAINER
    small_tf = dict(hidden_size=8, n_head=2, conv_hidden_size=8, encoder_layers=1, decoder_layers=1)
    return [
        m.MLP(h=H, input_size=24, hidden_size=8, num_layers=2, **t),
        m.MLP(h=H, input_size=24, hidden_size=8, num_layers=2, loss=MQLoss(level=[80]), alias="MLPQ", **t),
        m.MLP(h=H, input_size=24, hidden_size=8, num_layers=1, scaler_type="revin", alias="MLPRevIN", **t),
        m.MLP(h=H, input_size=12, hidden_size=4, num_layers=1, alias="Twin", **t),
        m.MLP(h=H, input_size=24, hidden_size=4, num_layers=1, alias="Twin", **t),
        m.NHITS(h=H, input_size=24, mlp_units=[[8, 8]], n_blocks=[1, 1, 1], **t),
        m.NBEATS(h=H, input_size=24, mlp_units=[[8, 8]], n_blocks=[1, 1, 1], **t),
        m.NBEATS(h=H, input_size=24, mlp_units=[[8, 8]], n_blocks=[2, 1, 1], shared_weights=True, alias="NBEATSShared", **t),
        m.NBEATSx(h=H, input_size=24, mlp_units=[[8, 8]], n_blocks=[1, 1, 1], **t),
        m.LSTM(h=H, input_size=-1, encoder_hidden_size=8, decoder_hidden_size=8, loss=MQLoss(level=[80]), **t),
        m.LSTM(h=H, input_size=-1, encoder_hidden_size=8, recurrent=True, alias="LSTMRecurrent", **t),
        m.GRU(h=H, input_size=-1, encoder_hidden_size=8, decoder_hidden_size=8, **t),
        m.RNN(h=H, input_size=-1, encoder_hidden_size=8, decoder_hidden_size=8, **t),
        m.DLinear(h=H, input_size=24, **t),
        m.NLinear(h=H, input_size=24, **t),
        m.TCN(h=H, input_size=-1, encoder_hidden_size=8, decoder_hidden_size=8, **t),
        m.TFT(h=H, input_size=24, hidden_size=8, n_head=2, **t),
        m.DeepAR(h=H, input_size=24, lstm_n_layers=1, lstm_hidden_size=8, trajectory_samples=5, **t),
        m.DeepAR(
            h=H,
            input_size=24,
            lstm_n_layers=1,
            lstm_hidden_size=8,
            trajectory_samples=5,
            loss=DistributionLoss("Normal", level=[80]),
            alias="DeepARNormal",
            **t,
        ),
        m.PatchTST(
            h=H, input_size=24, hidden_size=8, n_heads=2, encoder_layers=1, linear_hidden_size=8, patch_len=8, stride=4, **t
        ),
        m.TimesNet(h=H, input_size=24, hidden_size=8, conv_hidden_size=8, encoder_layers=1, top_k=2, num_kernels=2, **t),
        m.Informer(h=H, input_size=24, **small_tf, **t),
        m.Autoformer(h=H, input_size=24, **small_tf, **t),
        m.FEDformer(
            h=H, input_size=24, hidden_size=16, n_head=8, conv_hidden_size=8, encoder_layers=1, decoder_layers=1, modes=4, **t
        ),
        m.VanillaTransformer(h=H, input_size=24, **small_tf, **t),
        m.TiDE(h=H, input_size=24, hidden_size=8, decoder_output_dim=4, temporal_decoder_dim=8, **t),
        m.BiTCN(h=H, input_size=24, hidden_size=4, **t),
        m.DilatedRNN(h=H, input_size=-1, encoder_hidden_size=8, decoder_hidden_size=8, **t),
        m.DeepNPTS(h=H, input_size=24, hidden_size=8, n_layers=1, **t),
        m.KAN(h=H, input_size=24, hidden_size=8, **t),
        m.iTransformer(h=H, input_size=24, n_series=1, hidden_size=8, n_heads=2, e_layers=1, d_ff=8, **t),
        m.TSMixer(h=H, input_size=24, n_series=1, n_block=1, ff_dim=8, **t),
        m.TSMixerx(h=H, input_size=24, n_series=1, n_block=1, ff_dim=8, **t),
        m.MLPMultivariate(h=H, input_size=24, n_series=1, hidden_size=8, num_layers=1, **t),
        m.SOFTS(h=H, input_size=24, n_series=1, hidden_size=8, d_core=8, e_layers=1, d_ff=8, **t),
        m.TimeMixer(h=H, input_size=24, n_series=1, d_model=8, d_ff=8, e_layers=1, down_sampling_layers=1, **t),
        m.TimeXer(h=H, input_size=24, n_series=1, hidden_size=8, n_heads=2, e_layers=1, d_ff=8, patch_len=8, **t),
        m.StemGNN(h=H, input_size=24, n_series=1, n_stacks=2, multi_layer=1, **t),
        m.RMoK(h=H, input_size=24, n_series=1, **t),
        m.XLinear(h=H, input_size=24, n_series=1, **t),
        m.SOFTSSharp(h=H, input_size=24, n_series=1, hidden_size=8, d_core=8, e_layers=1, d_ff=8, **t),
    ]


def dense_zoo() -> list[Any]:
    """Models whose every tensor is a dense layer or a recurrent gate (the neuro-divergent layout)."""
    from neuralforecast import models as m

    t = TRAINER
    return [
        m.MLP(h=H, input_size=24, hidden_size=8, num_layers=2, scaler_type="standard", **t),
        m.DLinear(h=H, input_size=24, **t),
        m.NLinear(h=H, input_size=24, **t),
        m.NHITS(h=H, input_size=24, mlp_units=[[8, 8]], n_blocks=[1, 1, 1], **t),
        m.NBEATS(h=H, input_size=24, mlp_units=[[8, 8]], n_blocks=[1, 1], stack_types=["identity", "identity"], **t),
        m.LSTM(h=H, input_size=-1, encoder_hidden_size=8, decoder_hidden_size=8, **t),
        m.GRU(h=H, input_size=-1, encoder_hidden_size=8, decoder_hidden_size=8, **t),
    ]


def rebuild(out: Path, drop_unknown: bool = False, **overrides: Any) -> tuple[Any, list[str]]:
    """NeuralForecast's class called with the manifest's config, loaded from the converted tensors
    (exporters.neuralforecast.rebuild, the code `to-onnx` rebuilds models with). `drop_unknown` leaves out
    arguments the current class no longer takes (older releases'); the dropped names are returned.
    `overrides` replace training settings (max_steps=0 lets NeuralForecast.fit prepare a forecaster
    without training)."""
    from exporters.neuralforecast.rebuild import converted_state, rebuild_model

    doc = read_manifest(out)
    source = doc["architecture"]["source_model"]
    return rebuild_model(source, converted_state(out, doc), {**source["trainer"], **overrides}, drop_unknown)


def forecast_columns(frame: Any, alias: str) -> list[str]:
    """The prediction columns of one model (its alias, then alias-<output name>)."""
    return [c for c in frame.columns if c == alias or c.startswith(f"{alias}-")]


# ---------------------------------------------------------------------------------------------
# numpy forwards from neuro-divergent tensors: [out, in+1] per dense layer, bias last
# ---------------------------------------------------------------------------------------------


def dense(x: np.ndarray, layer: np.ndarray) -> np.ndarray:
    return layer[:, :-1] @ x + layer[:, -1]


def temporal_scale(window: np.ndarray, scaler_type: str) -> tuple[np.ndarray, float, float]:
    """NeuralForecast's TemporalNorm on one input window: (scaled, shift, scale)."""
    if scaler_type == "identity":
        return window, 0.0, 1.0
    if scaler_type == "standard":
        mean = window.mean()
        std = np.sqrt(((window - mean) ** 2).mean())
        std = (1.0 if std == 0 else std) + 1e-6
        return (window - mean) / std, mean, std
    raise NotImplementedError(scaler_type)


def mlp_forward(tensors: dict[str, np.ndarray], window: np.ndarray, num_layers: int) -> np.ndarray:
    x = window
    for i in range(num_layers):
        x = np.maximum(dense(x, tensors[f"mlp.{i}"]), 0.0)
    return dense(x, tensors["out"])


def dlinear_forward(tensors: dict[str, np.ndarray], window: np.ndarray, kernel: int) -> np.ndarray:
    pad = (kernel - 1) // 2
    padded = np.concatenate([np.repeat(window[:1], pad), window, np.repeat(window[-1:], pad)])
    trend = np.convolve(padded, np.ones(kernel) / kernel, mode="valid")
    return dense(trend, tensors["linear_trend"]) + dense(window - trend, tensors["linear_season"])


FIXTURES = REPO / "fixtures" / "neuralforecast"


def copy_fixture(version: str, tmp_path: Path) -> Path:
    folder = tmp_path / f"nf-{version}"
    shutil.copytree(FIXTURES / version / "folder", folder)
    return folder


def rewrite_metadata(path: Path, edit: dict[str, str]) -> None:
    """Rewrite a SafeTensors file's __metadata__ in place, tensors untouched."""
    data = path.read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    header["__metadata__"].update(edit)
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    path.write_bytes(struct.pack("<Q", len(text)) + text + data[8 + length :])


def hyper_parameters(path: Path) -> dict[str, object]:
    with open(path, "rb") as fh:
        (length,) = struct.unpack("<Q", fh.read(8))
        return json.loads(json.loads(fh.read(length))["__metadata__"]["hyper_parameters"])
