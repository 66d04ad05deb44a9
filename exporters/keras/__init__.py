"""Keras models read with h5py alone: Keras 3 .keras and .weights.h5, Keras 2 / tf.keras .h5, and
Hugging Face folders with tf_model.h5 or its shards."""

from __future__ import annotations

from pathlib import Path

from convert.contract import Probe, ReaderFace, ReaderOptions, parse_size
from convert.options import Option
from convert.source import SourceModel

HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"

CONFIG = Option(
    "config",
    str,
    None,
    "The model config for a bare Keras 3 .weights.h5: a .keras file or a JSON config (model.to_json()).",
    file=True,
)
MAX_INFLATED_SIZE = Option(
    "max_inflated_size",
    str,
    None,
    "Keras: how far compressed HDF5 datasets may inflate (5GB, 2GiB); by default at most "
    "64 times the file's size, and 1 GiB for any smaller file.",
    parse=parse_size,
)


def sniff(probe: Probe) -> bool:
    if probe.is_dir:
        return bool(probe.names & {"tf_model.h5", "tf_model.h5.index.json"})
    if probe.head.startswith(HDF5_MAGIC):
        return True
    if probe.head.startswith(b"PK\x03\x04"):
        names = probe.zip_names or []
        return "model.weights.h5" in names or "config.json" in names
    return False


def open_source(path: Path, options: ReaderOptions) -> SourceModel:
    from .reader import open_keras

    return open_keras(path, options.value(CONFIG), options.value(MAX_INFLATED_SIZE))


READER = ReaderFace(
    kind="keras",
    command="keras-to-safetensors",
    extra="keras",
    sniff=sniff,
    open=open_source,
    summary="Convert a Keras model (Keras 3 .keras or .weights.h5, Keras 2 / tf.keras .h5 full model or "
    "weights, or a Hugging Face folder with tf_model.h5) into the folder OUT, in PyTorch names and "
    "layouts. Read with h5py alone: TensorFlow is not imported and no code in the file is run.",
    options=(CONFIG, MAX_INFLATED_SIZE),
    suffixes=(".h5", ".keras"),
    short="Convert Keras .keras, .weights.h5 or .h5 (no TF).",
    example="convert keras-to-safetensors model.keras out/",
)
