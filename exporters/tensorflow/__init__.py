"""TensorFlow SavedModel folders and TF1/TF2 checkpoints (read without TensorFlow; protobuf parses them)."""

from __future__ import annotations

import re
from pathlib import Path

from convert.contract import Probe, ReaderFace, ReaderOptions
from convert.source import SourceModel
from exporters.shared.options import KEY

DATA_SHARD = re.compile(r"\.data-[0-9]{5}-of-[0-9]{5}$")


def sniff(probe: Probe) -> bool:
    if probe.is_dir:
        return "saved_model.pb" in probe.names or any(n.endswith(".index") for n in probe.names)
    # a checkpoint's index (an SSTable: no magic at its start) or data shard
    return probe.path.suffix == ".index" or bool(DATA_SHARD.search(probe.path.name))


def open_source(path: Path, options: ReaderOptions) -> SourceModel:
    from .reader import open_tensorflow

    return open_tensorflow(path, options.value(KEY))


READER = ReaderFace(
    kind="tensorflow",
    command="tf-to-safetensors",
    extra="tensorflow",
    sniff=sniff,
    open=open_source,
    summary="Convert a TensorFlow SavedModel folder or TF1/TF2 checkpoint (prefix, .index file, or its folder) "
    "into the folder OUT, in PyTorch names and layouts. Read without TensorFlow (needs protobuf, in the tensorflow extra).",
    options=(KEY,),
    option_help={
        "key": "The checkpoint object holding the model (default: `model` if present, else all but the optimizer); "
        "in a TF1 checkpoint, the top-level scope (default: all but training state), or ExponentialMovingAverage "
        "for the moving averages in place of the variables that have them."
    },
    short="Convert a TF SavedModel or checkpoint.",
    example="convert tf-to-safetensors saved_model_dir/ out/",
)
