"""TFLite flatbuffers, read without TensorFlow."""

from __future__ import annotations

from pathlib import Path

from convert.contract import Probe, ReaderFace, ReaderOptions
from convert.source import SourceModel
from exporters.shared.options import QUANTIZED

IDENTIFIER = b"TFL3"


def sniff(probe: Probe) -> bool:
    return probe.head[4:8] == IDENTIFIER  # a flatbuffer with the TFLite file identifier


def open_source(path: Path, options: ReaderOptions) -> SourceModel:
    from .reader import open_tflite

    return open_tflite(path, options.value(QUANTIZED))


READER = ReaderFace(
    kind="tflite",
    command="tflite-to-safetensors",
    extra=None,
    sniff=sniff,
    open=open_source,
    summary="Convert a TFLite model's weights into the folder OUT without TensorFlow: conv filters from OHWI "
    "to OIHW, depthwise filters to [C, 1, kh, kw], fully connected weights [out, in] as they are; the "
    "quantization parameters are recorded in the manifest.",
    options=(QUANTIZED,),
    suffixes=(".tflite",),
    short="Convert a TFLite model's weights (no TensorFlow).",
    example="convert tflite-to-safetensors model.tflite out/ --quantized keep",
)
