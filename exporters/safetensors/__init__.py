"""SafeTensors files and folders as a source: for auto, inspect and re-layouts (the core reads
them itself, to verify its outputs)."""

from __future__ import annotations

from pathlib import Path

from convert.contract import Probe, ReaderFace, ReaderOptions
from convert.hf_folder import SAFETENSORS_INDEX, SAFETENSORS_SINGLE
from convert.source import SourceModel


def sniff(probe: Probe) -> bool:
    if probe.is_dir:
        return bool(probe.names & {SAFETENSORS_SINGLE, SAFETENSORS_INDEX})
    return probe.is_safetensors or probe.path.suffix == ".safetensors"  # damaged: the reader says how


def open_source(path: Path, options: ReaderOptions) -> SourceModel:
    from convert.safetensors_source import open_safetensors

    return open_safetensors(path)


READER = ReaderFace(
    kind="safetensors",
    command=None,
    extra=None,
    sniff=sniff,
    open=open_source,
    summary="SafeTensors files and folders (model.safetensors or its shards).",
    suffixes=(".safetensors",),
)
