"""A NeuralForecast model's stored hyper-parameters as the config a Rust port rebuilds it from.

NeuralForecast stores every constructor argument, mixed with Lightning trainer settings, some of
them in a form that only its own code resolves (`input_size=-1` meaning 3*h, a recurrent model's
window one step longer, a loss whose output count follows from its class).  This module splits the
stored values into the constructor arguments (enough to call the class), the trainer settings, and
the architecture arguments proper, and states the resolved values next to them.
"""

from __future__ import annotations

from typing import Any

from exporters.neuralforecast.losses import describe_loss

# BaseModel.__init__ arguments (3.3, plus names older releases used), shared by every model class.
BASE_ARGS = frozenset(
    {
        "h",
        "input_size",
        "inference_input_size",
        "h_train",
        "loss",
        "valid_loss",
        "learning_rate",
        "max_steps",
        "val_check_steps",
        "batch_size",
        "valid_batch_size",
        "windows_batch_size",
        "inference_windows_batch_size",
        "start_padding_enabled",
        "training_data_availability_threshold",
        "n_series",
        "n_samples",
        "step_size",
        "num_lr_decays",
        "early_stop_patience_steps",
        "val_monitor",
        "scaler_type",
        "futr_exog_list",
        "hist_exog_list",
        "stat_exog_list",
        "cat_exog_list",
        "categorical_cardinalities",
        "cat_emb_dim",
        "exclude_insample_y",
        "drop_last_loader",
        "random_seed",
        "alias",
        "optimizer",
        "optimizer_kwargs",
        "lr_scheduler",
        "lr_scheduler_kwargs",
        "dataloader_kwargs",
        "num_workers_loader",
    }
)
# Lightning Trainer.__init__ arguments: stored because NeuralForecast passes **trainer_kwargs through.
TRAINER_ARGS = frozenset(
    {
        "accelerator",
        "accumulate_grad_batches",
        "barebones",
        "benchmark",
        "callbacks",
        "check_val_every_n_epoch",
        "default_root_dir",
        "detect_anomaly",
        "deterministic",
        "devices",
        "enable_autolog_hparams",
        "enable_checkpointing",
        "enable_model_summary",
        "enable_progress_bar",
        "fast_dev_run",
        "gradient_clip_algorithm",
        "gradient_clip_val",
        "inference_mode",
        "limit_predict_batches",
        "limit_test_batches",
        "limit_train_batches",
        "limit_val_batches",
        "log_every_n_steps",
        "logger",
        "max_epochs",
        "max_time",
        "min_epochs",
        "min_steps",
        "model_registry",
        "num_nodes",
        "num_sanity_val_steps",
        "overfit_batches",
        "plugins",
        "precision",
        "profiler",
        "reload_dataloaders_every_n_epochs",
        "strategy",
        "sync_batchnorm",
        "use_distributed_sampler",
        "val_check_interval",
        "auto_select_gpus",
        "gpus",
        "tpu_cores",
        "ipus",
        "track_grad_norm",
    }
)
# Classes whose forecasts are produced step by step; LSTM/GRU/RNN choose with their `recurrent`.
RECURRENT_CLASSES = frozenset({"DeepAR"})
SWITCHABLE_RECURRENT = frozenset({"LSTM", "GRU", "RNN"})
MULTIVARIATE_CLASSES = frozenset(
    {
        "iTransformer",
        "MLPMultivariate",
        "RMoK",
        "SOFTS",
        "SOFTSSharp",
        "StemGNN",
        "TimeMixer",
        "TimeXer",
        "TSMixer",
        "TSMixerx",
        "XLinear",
        "HINT",
    }
)


def split_hparams(hparams: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    """(constructor arguments, trainer settings, architecture arguments) of stored hyper-parameters."""
    constructor = {k: v for k, v in hparams.items() if k in BASE_ARGS or k not in TRAINER_ARGS}
    trainer = {k: v for k, v in hparams.items() if k not in constructor}
    architecture = {k: v for k, v in constructor.items() if k not in BASE_ARGS}
    return constructor, trainer, architecture


def is_recurrent(class_name: str, hparams: dict[str, Any]) -> bool:
    if class_name in SWITCHABLE_RECURRENT:
        return bool(hparams.get("recurrent", False))
    return class_name in RECURRENT_CLASSES


def resolve(class_name: str, hparams: dict[str, Any], quantiles: dict[str, list[float] | None]) -> dict[str, Any]:
    """The values NeuralForecast derives at construction time, stated plainly. `quantiles` are the
    stored values of `loss.quantiles` / `valid_loss.quantiles`, when the weights hold them."""
    h = int(hparams["h"])
    stored = int(hparams.get("input_size", -1))
    input_size = stored if stored >= 1 else 3 * h
    inference = hparams.get("inference_input_size")
    inference = input_size if inference is None or int(inference) < 1 else int(inference)
    recurrent = is_recurrent(class_name, hparams)
    loss = describe_loss(hparams.get("loss"), quantiles.get("loss"))
    valid = hparams.get("valid_loss")
    return {
        "h": h,
        "input_size": input_size,
        "input_size_stored": stored,
        "input_size_rule": "input_size < 1 means 3 * h" if stored < 1 else None,
        # A recurrent model reads one more step: its target history is shifted by one as input.
        "window_input_size": input_size + 1 if recurrent else input_size,
        "inference_input_size": inference + 1 if recurrent else inference,
        "recurrent": recurrent,
        "multivariate": class_name in MULTIVARIATE_CLASSES,
        "n_series": int(hparams.get("n_series") or 1),
        "futr_exog_list": list(hparams.get("futr_exog_list") or []),
        "hist_exog_list": list(hparams.get("hist_exog_list") or []),
        "stat_exog_list": list(hparams.get("stat_exog_list") or []),
        "cat_exog_list": list(hparams.get("cat_exog_list") or []),
        "scaler_type": hparams.get("scaler_type"),
        "loss": loss,
        # NeuralForecast validates with the training loss when no valid_loss is given.
        "valid_loss": describe_loss(valid, quantiles.get("valid_loss")) if valid is not None else loss,
    }


# NeuralForecast's model classes; older folders name them only in lower case (alias_to_model.pkl,
# file names), the Auto* tuners by their model's name with an "auto" prefix.
KNOWN_CLASSES = (
    "Autoformer",
    "BiTCN",
    "DeepAR",
    "DeepNPTS",
    "DilatedRNN",
    "DLinear",
    "FEDformer",
    "GRU",
    "HINT",
    "Informer",
    "iTransformer",
    "KAN",
    "LSTM",
    "MLP",
    "MLPMultivariate",
    "NBEATS",
    "NBEATSx",
    "NHITS",
    "NLinear",
    "PatchTST",
    "RMoK",
    "RNN",
    "SOFTS",
    "SOFTSSharp",
    "StemGNN",
    "TCN",
    "TFT",
    "TiDE",
    "TimeLLM",
    "TimeMixer",
    "TimesNet",
    "TimeXer",
    "TSMixer",
    "TSMixerx",
    "VanillaTransformer",
    "XLinear",
    "xLSTM",
)


def class_named(key: str) -> str | None:
    """The class a lower-case key (`nhits`, `autonhits`) names, or None."""
    by_lower = {name.lower(): name for name in KNOWN_CLASSES}
    key = key.lower()
    return by_lower.get(key) or by_lower.get(key.removeprefix("auto"))
