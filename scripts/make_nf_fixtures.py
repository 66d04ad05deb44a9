"""Write the committed NeuralForecast save folders of older releases, with those releases.

    python scripts/make_nf_fixtures.py --version 3.2.2     # .ckpt + pickles, no AttributeDict
    python scripts/make_nf_fixtures.py --version 1.7.0     # full Lightning checkpoints
    python scripts/make_nf_fixtures.py --version 3.3.0 --python .venv/bin/python   # nf_format 2

Each release runs in a throw-away venv (/tmp/nf-<version>, made on first use with torch pinned so
pip never pulls a CUDA build). Inside it this same script trains tiny models a few steps on
AirPassengersDF, saves them with `NeuralForecast.save`, and records what that release predicts,
so the tests (which have only the current NeuralForecast) can check the conversion against it:

fixtures/neuralforecast/<version>/folder/           what nf.save wrote
fixtures/neuralforecast/<version>/predictions.json  {"ds", "unique_id", "models": {column: values}}
fixtures/neuralforecast/<version>/versions.json     neuralforecast, torch, pandas, numpy versions
The 3.3.0 folder serves the error-path tests; tests/readers/neuralforecast/test_models.py trains the full model
zoo in the current format at test time.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
TORCH_PIN = "torch==2.13.0"
H = 12


def ensure_venv(version: str) -> Path:
    """A venv with neuralforecast==version and torch pinned, made once."""
    venv = Path(f"/tmp/nf-{version}")
    python = venv / "bin" / "python"
    if not python.exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(python), "-m", "pip", "install", "-q", TORCH_PIN], check=True)
        # scipy: 3.1.x imports it without declaring it.
        subprocess.run([str(python), "-m", "pip", "install", "-q", f"neuralforecast=={version}", TORCH_PIN, "scipy"], check=True)
    return python


def tiny_models() -> list:
    """Small models whose constructor arguments every release from 1.7.0 on accepts."""
    from neuralforecast import models as m
    from neuralforecast.losses.pytorch import MQLoss

    trainer = dict(
        max_steps=3, enable_progress_bar=False, enable_model_summary=False, logger=False, accelerator="cpu", random_seed=1
    )
    made = [
        m.MLP(h=H, input_size=24, hidden_size=8, num_layers=2, **trainer),
        m.MLP(h=H, input_size=24, hidden_size=8, num_layers=2, loss=MQLoss(level=[80]), alias="MLPQ", **trainer),
        m.NHITS(h=H, input_size=24, mlp_units=[[8, 8]], n_blocks=[1, 1, 1], **trainer),
        m.NBEATS(h=H, input_size=24, mlp_units=[[8, 8]], n_blocks=[1, 1, 1], **trainer),
        m.DLinear(h=H, input_size=24, **trainer),
        m.TCN(
            h=H, input_size=24, encoder_hidden_size=8, context_size=4, decoder_hidden_size=8, scaler_type="standard", **trainer
        ),
        m.LSTM(h=H, input_size=24, encoder_hidden_size=8, decoder_hidden_size=8, **trainer),
        m.DeepAR(h=H, input_size=24, lstm_n_layers=1, lstm_hidden_size=8, trajectory_samples=5, **trainer),
    ]
    if hasattr(m, "NLinear"):
        made.append(m.NLinear(h=H, input_size=24, **trainer))
    return made


def inner(out: Path) -> None:
    """Runs inside the release's venv: train, save, record predictions and versions."""
    import logging
    import warnings

    import neuralforecast
    import numpy as np
    import pandas as pd
    import torch
    from neuralforecast import NeuralForecast
    from neuralforecast.utils import AirPassengersDF

    warnings.filterwarnings("ignore")
    logging.getLogger("pytorch_lightning").setLevel(logging.ERROR)
    logging.getLogger("lightning").setLevel(logging.ERROR)
    freq = "ME" if tuple(int(p) for p in pd.__version__.split(".")[:2]) >= (2, 2) else "M"
    nf = NeuralForecast(models=tiny_models(), freq=freq, local_scaler_type="standard")
    nf.fit(AirPassengersDF)
    preds = nf.predict()
    folder = out / "folder"
    if folder.exists():
        shutil.rmtree(folder)
    nf.save(str(folder), save_dataset=True, overwrite=True)
    preds = preds.reset_index() if "unique_id" not in preds.columns else preds
    record = {
        "freq": freq,
        "ds": [str(v) for v in preds["ds"]],
        "unique_id": [str(v) for v in preds["unique_id"]],
        "models": {c: np.asarray(preds[c], dtype=np.float64).tolist() for c in preds.columns if c not in ("unique_id", "ds")},
    }
    (out / "predictions.json").write_text(json.dumps(record, indent=1) + "\n")
    versions = {
        "neuralforecast": neuralforecast.__version__,
        "torch": torch.__version__,
        "pandas": pd.__version__,
        "numpy": np.__version__,
    }
    (out / "versions.json").write_text(json.dumps(versions, indent=1) + "\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--version", help="NeuralForecast release to make the fixture with, e.g. 3.2.2")
    parser.add_argument("--python", type=Path, help="an interpreter that already has that release (no venv made)")
    parser.add_argument("--inner", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.inner:
        inner(args.inner)
        return
    if not args.version:
        parser.error("give --version")
    out = ROOT / "fixtures" / "neuralforecast" / args.version
    out.mkdir(parents=True, exist_ok=True)
    python = args.python or ensure_venv(args.version)
    env = {**os.environ, "PYTHONHASHSEED": "0", "CUDA_VISIBLE_DEVICES": ""}
    subprocess.run([str(python), str(Path(__file__).resolve()), "--inner", str(out)], check=True, env=env)
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"wrote {out} ({size / 1024:.0f} KiB)")


if __name__ == "__main__":
    main()
