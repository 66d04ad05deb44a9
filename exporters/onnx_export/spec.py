"""What a framework module hands the export pipeline, and the options the pipeline runs with."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from convert.hashing import DEFAULT_ALGORITHM

DEFAULT_EXTERNAL_DATA_THRESHOLD = 2 * 10**9  # protobuf cannot serialize a message of 2 GiB or more


@dataclass
class ExportOptions:
    framework: str = "auto"  # auto, pytorch, keras, jax, neuralforecast
    module: str | None = None  # "pkg.mod:factory": user code named explicitly on the command line
    input_shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)  # "" = the only input
    input_dtypes: dict[str, str] = field(default_factory=dict)  # input -> numpy dtype name ("" = the only input)
    input_ranges: dict[str, tuple[int, int]] = field(default_factory=dict)  # integer inputs: [low, high)
    dynamic_axes: dict[str, dict[int, str]] = field(default_factory=dict)  # input -> axis -> name
    inputs_file: str | None = None  # .npz of the user's own inputs, validated too
    output_names: list[str] | None = None
    opset: int | None = None
    atol: float | None = None  # None: 1e-5, or 1e-4 when the graph is recurrent
    simplify: bool = True
    quantize: str | None = None  # None (float), "dynamic-int8" or "qdq-int8" (exporters/onnx_export/quantize.py)
    calibration: str | None = None  # qdq-int8: .npz of calibration inputs; None: the source's examples, or generated
    quantized_atol: float | None = None  # None: DEFAULT_QUANTIZED_ATOL
    external_data_threshold: int = DEFAULT_EXTERNAL_DATA_THRESHOLD
    exporter: str = "auto"  # PyTorch only: auto (dynamo, then TorchScript), dynamo, torchscript
    models: list[str] = field(default_factory=list)  # NeuralForecast: the models (output folders) to export; [] = all
    digest: str = DEFAULT_ALGORITHM  # --digest: blake3 or sha256, for every file in the manifest
    overwrite: bool = False


@dataclass
class InputSpec:
    name: str
    shape: tuple[int, ...]  # the first validation batch's shape
    dtype: np.dtype
    dynamic: dict[int, str]  # axis -> dimension name in the graph; axis 0 is "batch"
    range: tuple[int, int] | None = None  # integer and bool inputs: values in [low, high)
    range_from: str | None = None  # what said so, in words (the manifest records it)


@dataclass(frozen=True)
class InputHint:
    """What a model's own code says about one input's values: an embedding's indices, a mask."""

    dtypes: tuple[str, ...]  # the dtypes it takes, the usual one first
    range: tuple[int, int] | None  # [low, high)
    reason: str  # e.g. "nn.Embedding 'embedding' (21 rows)"


@dataclass
class ExportedGraph:
    """A framework's export: the ONNX model and the means to check it against the framework itself."""

    model: Any  # onnx.ModelProto
    inputs: list[InputSpec]
    outputs: list[str]
    reference: Callable[[dict[str, np.ndarray]], list[np.ndarray]]  # the source framework's forward pass
    exporter: str  # which path produced the graph, in words
    source_format: str
    source_files: list[Path]
    parameters: list[tuple[str, tuple[int, ...]]] = field(default_factory=list)  # state-dict names, for the manifest
    samples: dict[str, np.ndarray] | None = None  # example inputs the source carries (a .pt2's)
    notes: list[str] = field(default_factory=list)
    folder: str = ""  # where in the output folder this graph goes: "" for a source of one model
    source_model: dict[str, Any] | None = None  # the config the model was rebuilt from, for the manifest
    semantics: dict[str, Any] | None = None  # what the inputs and outputs mean, where the graph alone cannot say
    mismatch_hint: str = ""  # a likely cause, told when validation finds the graph differs from the source
