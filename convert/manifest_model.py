"""The manifest as a typed model: one TypedDict per object of schemas/manifest.schema.json.

TypedDicts, not classes: a manifest is built, written and read as plain JSON objects (the bytes a Rust
loader deserializes stay what `json.dumps` makes of them, with no conversion step and no dependency),
and mypy checks every builder and reader against these shapes. `NotRequired` marks what the schema
does not require. tests/manifest/test_model.py holds the model and the schema to each other both ways:
every key here is in the schema with a compatible type and the same required-ness, and every schema
property is here. Objects the schema leaves open (a reader's details, a module's params, a config)
are `JsonObject`. Values the code takes from options and rule files as plain strings are `str` where
the schema lists the strings it allows (a transform's op, --cast-loss, a tie mode); the schema judges
them when the manifest is validated.
"""

# No `from __future__ import annotations`: TypedDict reads NotRequired from evaluated annotations only.
from typing import Any, Literal, NotRequired, TypedDict

JsonObject = dict[str, Any]  # a JSON object whose keys the schema leaves open


class Generator(TypedDict):
    name: str
    version: str


class FileEntry(TypedDict):
    """A file in `files` or `source.files`: the path recorded, its size and its digest."""

    path: str
    bytes: int
    digest: str


class Source(TypedDict):
    format: str
    files: list[FileEntry]
    details: JsonObject
    dropped: NotRequired[dict[str, str]]  # source arrays not converted, with why
    reader_options: NotRequired[JsonObject]


class Ties(TypedDict):
    loader: str
    written: str
    tied: dict[str, str]


class Target(TypedDict):
    format: str  # safetensors, gguf, onnx
    layout: str
    rules: str
    dtype: str | None
    options: JsonObject
    warnings: list[str]
    request: NotRequired[JsonObject | None]
    ties: NotRequired[Ties]
    output_options: NotRequired[JsonObject]


class SourceTensor(TypedDict):
    name: str
    dtype: str
    shape: list[int]


class Transform(TypedDict):
    """One step of a tensor's chain (convert.transforms). The schema names `op` only; the rest are the
    op's parameters, written as the transform vocabulary describes them."""

    op: str
    # cast
    to: NotRequired[str]
    on_loss: NotRequired[str]
    lossless: NotRequired[bool]
    overflowed: NotRequired[int]
    flushed: NotRequired[int]
    # permute, reshape
    axes: NotRequired[list[int]]
    shape: NotRequired[list[int]]
    # split, gate_reorder, pad, concat, spectral_norm
    axis: NotRequired[int]
    parts: NotRequired[int]
    index: NotRequired[int]
    order: NotRequired[list[int]]
    after: NotRequired[int]
    value: NotRequired[float]
    dim: NotRequired[int]
    eps: NotRequired[float]
    # which arrays of the chain an op acts on
    input: NotRequired[int]
    inputs: NotRequired[list[int]]


class QuantizationError(TypedDict):
    max_abs: float
    rms: float
    relative_rms: float


class Quantization(TypedDict):
    """A GGUF tensor's ggml type, why it was taken, and what it cost against the source."""

    type: str
    type_id: int
    block_size: int
    requested: str
    reason: NotRequired[str]
    source_dtype: str
    error: QuantizationError
    on_loss: str
    overflowed: int
    flushed: int


class QuantizationReason(TypedDict, total=False):
    """Quantization's optional `reason`, apart: its place among the keys is fixed (it is unpacked there)."""

    reason: str


class TensorRecord(TypedDict, total=False):
    """What an output format adds to a tensor's entry (GGUF: its quantization, and lossy when it is)."""

    quantization: Quantization
    lossy: bool
    invertible: bool
    not_invertible_because: str


class TensorEntry(TypedDict):
    name: str
    file: str
    dtype: str
    shape: list[int]
    data_offsets: list[int]
    digest: str
    sources: list[SourceTensor]
    transforms: list[Transform]
    lossy: bool
    invertible: bool
    not_invertible_because: NotRequired[str]
    annotations: NotRequired[JsonObject]
    quantization: NotRequired[Quantization]


class Alternative(TypedDict):
    type: str
    params: JsonObject


class Parametrization(TypedDict):
    type: str
    by: str
    dim: NotRequired[int | None]
    tensors: list[str]


class Module(TypedDict):
    path: str
    type: str
    params: JsonObject
    tensors: list[str]
    alternatives: NotRequired[list[Alternative]]
    decided_by: NotRequired[str]
    parametrizations: NotRequired[dict[str, Parametrization]]


class InferredArchitecture(TypedDict):
    """What convert.architecture infers from names and shapes alone."""

    inferred: bool
    modules: list[Module]
    unknown: list[str]


class Architecture(InferredArchitecture):
    """The manifest's `architecture`: the inferred modules, and what the source says of its model."""

    config: JsonObject | None
    source_model: NotRequired[JsonObject | None]


# `from` is a keyword: these two take TypedDict's functional form
GraphValueRange = TypedDict("GraphValueRange", {"low": int, "high": int, "from": str | None})


class GraphValue(TypedDict):
    name: str
    dtype: str | None
    shape: list[int | str | None] | None
    dynamic_axes: dict[str, str | None]
    range: NotRequired[GraphValueRange]


class Validation(TypedDict):
    """How the graph was proved against the source. `runtime`, `inputs`, `runs` and `passed` are written
    beside the schema's keys (it leaves this object open)."""

    runtime: str
    atol: float | dict[str, float]
    batch_sizes: list[int]
    inputs: list[str]
    max_abs_diff: dict[str, float]
    output_range: NotRequired[dict[str, list[float]]]
    max_rel_diff: NotRequired[dict[str, float | None]]
    runs: list[JsonObject]
    passed: bool


GraphCalibration = TypedDict("GraphCalibration", {"from": str, "rows": int, "method": NotRequired[str]})


class FloatGraph(TypedDict):
    bytes: int
    validation: JsonObject


class QuantizationMethod(TypedDict):
    """How an int8 graph was made (the quantizer's part of GraphQuantization)."""

    mode: str
    tool: str
    weights: NotRequired[str]
    activations: NotRequired[str]
    per_channel: bool
    int8_weight_ops: dict[str, int]
    runtimes: list[str]
    calibration: NotRequired[GraphCalibration]


class GraphQuantization(QuantizationMethod):
    """How an int8 graph was made, and the bound its validation held it to."""

    atol: float | dict[str, float]
    atol_from: str
    float_graph: FloatGraph


class Graph(TypedDict):
    """A `to-onnx` output's graph. `ir_version`, `operators` and `simplifier` are written beside the
    schema's keys (it leaves this object open); the Rust crate does not read them."""

    file: str
    external_data: str | None
    ir_version: int
    opset: dict[str, int]
    producer: JsonObject
    exporter: str
    simplified: bool
    simplifier: str  # the simplifier and its version, or why the graph was kept as exported
    operators: dict[str, int]
    inputs: list[GraphValue]
    outputs: list[GraphValue]
    validation: Validation
    quantization: NotRequired[GraphQuantization]
    semantics: NotRequired[JsonObject]


class NetworkLayer(TypedDict):
    module: str
    tensor: str
    activation: str
    function: str
    steepness: float


class Network(TypedDict):
    name: str
    file: str
    format: Literal["ruv-fann-network-json"]
    bytes: int
    digest: str
    inputs: int
    outputs: int
    layers: list[NetworkLayer]


class Sections(TypedDict, total=False):
    """Top-level parts an output adds of its own: a `to-onnx` graph, ruv-FANN networks."""

    graph: Graph
    networks: list[Network]


class Manifest(TypedDict):
    manifest_version: Literal["2.0"]
    digest_algorithm: str  # blake3 or sha256
    generator: Generator
    source: Source
    target: Target
    files: list[FileEntry]
    index: str | None
    sidecars: list[str]
    tensors: list[TensorEntry]
    aliases: dict[str, str]
    dropped: list[str]
    architecture: Architecture
    graph: NotRequired[Graph]
    networks: NotRequired[list[Network]]
