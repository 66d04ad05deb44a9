"""Flax checkpoints: flax.serialization msgpack (read without JAX), Hugging Face Flax folders, and
orbax checkpoint folders."""

from __future__ import annotations

from pathlib import Path

from convert.contract import Probe, ReaderFace, ReaderOptions
from convert.options import Option
from convert.source import SourceModel

FOLDER_MARKERS = frozenset({"flax_model.msgpack", "flax_model.msgpack.index.json", "_METADATA", "_CHECKPOINT_METADATA"})

COLLECTIONS = Option(
    "collections",
    tuple,
    ("params",),
    "Variable collection holding the weights (repeatable); batch_stats is merged in when present.",
    cli_flag="--collection",
)
UNSTACK = Option(
    "unstack",
    tuple,
    (),
    "Split the module at PATH, stacked by nn.scan or vmap, into PATH.0, PATH.1, ... (repeatable).",
    metavar="PATH",
)


def sniff(probe: Probe) -> bool:
    if probe.is_dir:
        if probe.names & FOLDER_MARKERS:
            return True
        # an orbax CheckpointManager folder: one subfolder per step
        return any(n.isdigit() and (probe.path / n / "_CHECKPOINT_METADATA").is_file() for n in probe.names)
    head = probe.head
    return bool(head) and (0x81 <= head[0] <= 0x8F or head[0] in (0xDE, 0xDF))  # a msgpack map


def open_source(path: Path, options: ReaderOptions) -> SourceModel:
    from .reader import open_flax

    return open_flax(path, options.value(COLLECTIONS), options.value(UNSTACK))


READER = ReaderFace(
    kind="flax",
    command="flax-to-safetensors",
    extra="flax",
    sniff=sniff,
    open=open_source,
    summary="Convert a Flax checkpoint (flax.serialization msgpack of params or a train state, a Hugging Face "
    "folder with flax_model.msgpack or its shards, or an orbax checkpoint folder, linen or NNX) into the "
    "folder OUT, in PyTorch names and layouts. Msgpack is read without JAX.",
    options=(COLLECTIONS, UNSTACK),
    suffixes=(".msgpack",),
    short="Convert Flax msgpack, HF Flax or orbax checkpoints.",
    example="convert flax-to-safetensors params.msgpack out/ --dtype bf16",
)
