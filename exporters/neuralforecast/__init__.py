"""NeuralForecast save folders of every generation, read without NeuralForecast or torch: one
bundle of models, each converted into a folder of its own."""

from __future__ import annotations

from pathlib import Path

from convert.contract import Probe, ReaderFace, ReaderOptions, SourceBundle

CONFIGURATION_FILES = frozenset({"alias_to_model.pkl", "configuration.json", "configuration.pkl"})


def is_save_folder(path: Path) -> bool:
    """A folder `NeuralForecast.save` wrote, of any release: it keeps the forecaster's configuration."""
    return any((path / name).is_file() for name in CONFIGURATION_FILES)


def sniff(probe: Probe) -> bool:
    return probe.is_dir and is_save_folder(probe.path)


def open_source(path: Path, options: ReaderOptions) -> SourceBundle:
    from .reader import open_bundle

    return open_bundle(path)


READER = ReaderFace(
    kind="neuralforecast",
    command="nf-to-safetensors",
    extra=None,
    sniff=sniff,
    open=open_source,
    bundle=True,
    summary="Convert a NeuralForecast save folder (3.3+ SafeTensors, or the .ckpt and pickles of older "
    "releases, read without running them) into OUT/<alias>/ per model, each SafeTensors + a manifest "
    "with the model's constructor config, and OUT/models.json listing the models.",
    short="Convert a NeuralForecast save, a folder per model.",
    example="convert nf-to-safetensors nf_folder/ out/ --layout neuro-divergent",
)
