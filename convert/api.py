"""The Python API: every CLI command is a thin shell over these functions.

    from convert.api import pth_to_safetensors, verify_path
    result = pth_to_safetensors("model.pt", "out/", dtype="f16")
    report = verify_path("out/", source="model.pt")

Each `*_to_safetensors` function is `convert_path` with its reader's options; `convert_path` with
`conversion="auto"` detects the format by content. Readers are reached only through
exporters.registry.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from . import manifest as manifest_mod
from .bundle_index import read_bundle_index
from .contract import Opened, ReaderOptions, SourceBundle, parse_size
from .errors import UsageError
from .links import refuse_input_links
from .options import ConvertOptions
from .pipeline import (
    BundleResult,
    ConversionResult,
    Progress,
    checked_destination,
    convert_bundle,
    convert_source,
    refuse_unencodable_names,
)
from .source import SourceModel
from .verify import VerifyReport, verify_output
from .vocabulary import canonical_dtype

Result = ConversionResult | BundleResult


def conversion_options(options: dict[str, Any], target: str = "safetensors") -> ConvertOptions:
    """ConvertOptions from keywords, sizes given as text ('5GB') read; the output options checked
    against what the `target` output declares."""
    opts = ConvertOptions(**options)
    check_output_options(target, opts.output_options)
    opts.max_shard_size = parse_size(opts.max_shard_size)
    if opts.dtype is not None:  # the manifest records the canonical name of an alias (fp16 -> f16)
        opts.dtype = canonical_dtype(opts.dtype)
    return opts


def check_output_options(target: str, values: dict[str, Any]) -> None:
    """Names the `target` output does not declare, and values outside its choices, are usage errors
    (before any source is opened)."""
    from .outputs.registry import outputs_for

    declared = {o.name: o for o in outputs_for(target).tensors.options}
    for name, value in values.items():
        option = declared.get(name)
        if option is None:
            raise UsageError(f"output {target!r} has no option {name!r} (it has: {', '.join(declared) or 'none'})")
        if option.choices and str(value).lower() not in option.choices:
            raise UsageError(f"--{name.replace('_', '-')} {value!r}: choose one of {', '.join(option.choices)}")


def open_path(
    src: str | Path, conversion: str = "auto", reader: ReaderOptions | None = None, follow_links: bool = False
) -> Opened:
    """A source opened by the reader `conversion` names (a kind or command), or the one its content
    calls for; links among its files refused before any is read, unless `follow_links`."""
    from exporters.registry import open_source

    return open_source(src, reader, conversion, follow_links)


def convert_opened(
    opened: Opened, out: str | Path, options: ConvertOptions, progress: Progress | None = None, target: str = "safetensors"
) -> Result:
    """Convert an opened source: one model into OUT, or a bundle into OUT/<model>/ and OUT/models.json;
    `target` the output format of its tensors (convert.outputs.registry)."""
    from .outputs.registry import outputs_for

    outputs = outputs_for(target)
    if isinstance(opened, SourceBundle):
        return convert_bundle(opened, out, options, outputs, progress)
    return convert_source(opened, out, options, outputs, progress)


def tensor_bytes(opened: Opened) -> int:
    """How many bytes a conversion of `opened` reads: the progress bar's total."""
    models = [m.source for m in opened.models] if isinstance(opened, SourceBundle) else [opened]
    return sum(t.nbytes for m in models for t in m.tensors)


def convert_path(
    src: str | Path,
    out: str | Path,
    *,
    conversion: str = "auto",
    reader: ReaderOptions | None = None,
    progress: Progress | None = None,
    target: str = "safetensors",
    **options: Any,
) -> Result:
    """Convert any supported source into the folder `out`, in the output format `target`; options as
    ConvertOptions. A bundle (a NeuralForecast folder) gives a BundleResult, anything else a
    ConversionResult."""
    opts = conversion_options(options, target)
    checked_destination([src], out, opts.overwrite)  # before reading a source that may be large
    with open_path(src, conversion, reader, opts.follow_links) as opened:
        return convert_opened(opened, out, opts, progress, target)


def pth_to_safetensors(
    src: str | Path,
    out: str | Path,
    *,
    key: str | None = None,
    strip_prefix: str = "auto",
    progress: Progress | None = None,
    **options: Any,
) -> Result:
    """A torch checkpoint file or Hugging Face PyTorch folder; `key` the dict holding the tensors,
    `strip_prefix` "auto", "none" or a prefix (see exporters.pytorch.reader.select_tensors)."""
    return convert_path(
        src, out, conversion="pytorch", reader=ReaderOptions(key=key, strip_prefix=strip_prefix), progress=progress, **options
    )


def flax_to_safetensors(
    src: str | Path,
    out: str | Path,
    *,
    collections: tuple[str, ...] = ("params",),
    unstack: tuple[str, ...] = (),
    progress: Progress | None = None,
    **options: Any,
) -> Result:
    """A Flax msgpack file, Hugging Face Flax folder or orbax checkpoint."""
    return convert_path(
        src, out, conversion="flax", reader=ReaderOptions(collections=collections, unstack=unstack), progress=progress, **options
    )


def keras_to_safetensors(
    src: str | Path,
    out: str | Path,
    *,
    config: str | Path | None = None,
    max_inflated_size: str | int | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> Result:
    """A Keras .keras, .weights.h5 or .h5 file, or a Hugging Face TF folder, without TensorFlow;
    `config`: the model config for a bare .weights.h5 (a .keras file or a JSON config);
    `max_inflated_size`: how far compressed HDF5 datasets may inflate ("5GB", or bytes)."""
    return convert_path(
        src,
        out,
        conversion="keras",
        reader=ReaderOptions(config=None if config is None else str(config), max_inflated_size=max_inflated_size),
        progress=progress,
        **options,
    )


def tf_to_safetensors(
    src: str | Path, out: str | Path, *, key: str | None = None, progress: Progress | None = None, **options: Any
) -> Result:
    """A TF SavedModel folder or TF2 checkpoint (needs TensorFlow); `key`: the checkpoint object
    holding the model (default `model` if present)."""
    return convert_path(src, out, conversion="tensorflow", reader=ReaderOptions(key=key), progress=progress, **options)


def nf_to_safetensors(src: str | Path, out: str | Path, *, progress: Progress | None = None, **options: Any) -> Result:
    """A NeuralForecast save folder (any generation): OUT/<alias>/ per model (SafeTensors + manifest
    with the constructor config) and OUT/models.json; returns a BundleResult."""
    return convert_path(src, out, conversion="neuralforecast", progress=progress, **options)


def onnx_to_safetensors(
    src: str | Path, out: str | Path, *, quantized: str = "dequantize", progress: Progress | None = None, **options: Any
) -> Result:
    """An ONNX model's initializers (external data too); `quantized` "dequantize" or "keep" int8 weights."""
    return convert_path(src, out, conversion="onnx", reader=ReaderOptions(quantized=quantized), progress=progress, **options)


def npz_to_safetensors(src: str | Path, out: str | Path, *, progress: Progress | None = None, **options: Any) -> Result:
    """A .npz, .npy or pickle of NumPy arrays."""
    return convert_path(src, out, conversion="numpy", progress=progress, **options)


def tflite_to_safetensors(
    src: str | Path, out: str | Path, *, quantized: str = "dequantize", progress: Progress | None = None, **options: Any
) -> Result:
    """A .tflite model's weights; `quantized` "dequantize" or "keep"."""
    return convert_path(src, out, conversion="tflite", reader=ReaderOptions(quantized=quantized), progress=progress, **options)


def to_gguf(
    src: str | Path,
    out: str | Path,
    *,
    type: str = "f16",
    type_overrides: tuple[str, ...] | list[str] = (),
    no_vocab: bool = False,
    conversion: str = "auto",
    reader: ReaderOptions | None = None,
    progress: Progress | None = None,
    **options: Any,
) -> Result:
    """Any source the readers read, as GGUF (`model.gguf`, or llama.cpp's split files under
    `max_shard_size`): `type` the ggml type of 2-D and larger tensors (f32, f16, bf16, q8_0, q4_0,
    q4_1, q5_0, q5_1, q2_k ... q6_k, or llama.cpp's q4_k_m / q5_k_m preset for a language model),
    `type_overrides` PATTERN=TYPE items for some tensors; `no_vocab` writes a language model without
    its tokenizer."""
    return convert_path(
        src,
        out,
        conversion=conversion,
        reader=reader,
        progress=progress,
        target="gguf",
        output_options={"type": type, "type_override": tuple(type_overrides), "no_vocab": no_vocab},
        **options,
    )


def to_onnx(src: str | Path, out: str | Path, *, stage: Callable[[str], None] | None = None, **options: Any) -> Any:
    """Export a model's graph into the folder `out` as validated ONNX; options as
    exporters.onnx_export.spec.ExportOptions; `stage` hears each step as it starts. Returns an ExportResult."""
    from exporters.onnx_export.pipeline import to_onnx as export
    from exporters.onnx_export.spec import ExportOptions

    opts = ExportOptions(**options)
    opts.external_data_threshold = parse_size(opts.external_data_threshold)  # type: ignore[assignment]
    return export(src, out, opts, stage)


def inspect_path(
    path: str | Path, key: str | None = None, reader: ReaderOptions | None = None, follow_links: bool = False
) -> dict[str, Any]:
    """Name, dtype, shape and size of every tensor in any supported input."""
    from .outputs.gguf.describe import describe, is_gguf

    refuse_input_links(path, follow_links)  # before the GGUF sniff reads a byte (and a name too long is exit 3)
    if os.path.isfile(path) and is_gguf(Path(path)):  # an output of to-gguf (or any GGUF file)
        return describe(path)
    reader = reader or ReaderOptions(key=key)
    with open_path(path, "auto", reader, follow_links) as opened:
        source = opened.flat() if isinstance(opened, SourceBundle) else opened
        refuse_unencodable_names(source)
        tensors = [{"name": t.name, "dtype": t.dtype.code, "shape": list(t.shape), "bytes": t.nbytes} for t in source.tensors]
        return {
            "path": str(path),
            "format": source.format,
            "files": [str(p) for p in source.files],
            "tensors": tensors,
            "bytes": sum(t["bytes"] for t in tensors),
            "parameters": sum(math.prod(t.shape) for t in source.tensors),
            "details": source.extras,
        }


def recorded_reader_options(out: str | Path) -> ReaderOptions:
    """The reader options an output's manifest records (defaults when it cannot say: verify then
    reports what is wrong with the manifest)."""
    from exporters.registry import READER_OPTIONS

    try:
        recorded = json.loads((Path(out) / manifest_mod.MANIFEST_FILE).read_text())["source"]["reader_options"]
        return ReaderOptions.from_mapping(recorded, READER_OPTIONS)
    except (OSError, ValueError, KeyError, TypeError, UsageError):
        return ReaderOptions()


def verify_path(
    out: str | Path, source: str | Path | None = None, key: str | None = None, follow_links: bool = False
) -> VerifyReport:
    """Verify an output folder; with `source`, compare every tensor with it too, the source opened as
    the conversion opened it (the options its manifest records; `key` overrides the recorded key).
    A NeuralForecast output (models.json and a folder per model) is verified model by model, and a
    model folder against the save folder it came from."""
    out = Path(out)
    folders = None if (out / manifest_mod.MANIFEST_FILE).is_file() else _bundle_output(out)
    if folders is not None:
        return _verify_bundle_output(out, folders, source, key, follow_links)
    from .outputs.registry import all_outputs

    if source is None:
        return verify_output(out, outputs=all_outputs())
    options = recorded_reader_options(out)
    if key:
        options = ReaderOptions(**{**options.given(), "key": key})
    with open_path(source, "auto", options, follow_links) as opened:
        return verify_output(out, _model_of(opened, out, source) if isinstance(opened, SourceBundle) else opened, all_outputs())


def _bundle_output(out: Path) -> list[Path] | None:
    """The model folders of a bundle's output root (its models.json lists them), or None."""
    index = read_bundle_index(out)
    return None if index is None else [out / name for name in index.folders]


def _verify_bundle_output(
    out: Path, folders: list[Path], source: str | Path | None, key: str | None, follow_links: bool
) -> VerifyReport:
    """Every model folder of a bundle's output, as one report (each problem names its folder)."""
    report = VerifyReport(out)
    for folder in folders:
        part = verify_path(folder, source, key, follow_links)
        report.files += part.files
        report.tensors += part.tensors
        report.compared_with_source += part.compared_with_source
        report.problems += [f"{problem} (model folder {folder.name})" for problem in part.problems]
    return report


def _model_of(bundle: SourceBundle, out: Path, source: str | Path) -> SourceModel:
    """The model of a bundle that an output folder was converted from: the one the conversion named
    after it, else the one whose files its manifest records."""
    by_folder = {m.folder: m.source for m in bundle.models}
    if out.name in by_folder:
        return by_folder[out.name]
    try:
        recorded = {str(Path(f["path"])) for f in manifest_mod.load(out)["source"]["files"]}
    except (KeyError, TypeError):
        recorded = set()
    for model in by_folder.values():
        if recorded and {str(Path(f).absolute()) for f in model.files} == recorded:
            return model
    raise UsageError(f"{source} holds the models {', '.join(by_folder)}; none of them was converted into {out}")
