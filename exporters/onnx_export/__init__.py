"""`convert to-onnx`: a model's graph as ONNX, validated against the framework it came from.

Each source framework is one module with one generator, `export(src, options, scratch)`, yielding an
ExportedGraph per model the source holds (a NeuralForecast folder holds several), each one only
after the pipeline has finished the last;
the pipeline (simplify, check, save, validate, manifest) is shared.  Adding a framework is adding a
module and a line to FRAMEWORKS.
"""

from __future__ import annotations

import importlib
import importlib.util
import zipfile
from collections.abc import Callable, Generator
from pathlib import Path

from convert.errors import SourceNotFoundError, UnsupportedFormatError, UsageError, missing_extra
from exporters.neuralforecast import is_save_folder
from exporters.onnx_export.spec import ExportedGraph, ExportOptions

# framework -> (the module that exports it, the extras it needs besides `onnx`)
FRAMEWORKS: dict[str, tuple[str, str]] = {
    "pytorch": ("exporters.onnx_export.from_pytorch", "the `torch` extra"),
    "keras": ("exporters.onnx_export.from_keras", "the `tensorflow` extra"),
    "jax": ("exporters.onnx_export.from_jax", "the `jax` extra"),
    "neuralforecast": ("exporters.onnx_export.from_neuralforecast", "the `torch` and `neuralforecast` extras"),
}

# a generator: the pipeline closes it when a graph fails, so the framework lets go of the rest
Exporter = Callable[[Path, ExportOptions, Path], Generator[ExportedGraph, None, None]]


def exporter_for(src: Path, options: ExportOptions) -> Exporter:
    """The framework module's export function for this source (by content, or --framework)."""
    name = options.framework if options.framework != "auto" else detect_framework(src, options)
    if name not in FRAMEWORKS:
        raise UsageError(f"--framework {name!r}: choose one of {', '.join(['auto', *FRAMEWORKS])}")
    if options.models and name != "neuralforecast":
        raise UsageError("--model chooses among a NeuralForecast folder's models; this source holds one model")
    module, extras = FRAMEWORKS[name]
    for needed in ("onnx", "onnxruntime", "onnxscript"):  # torch would fall back to TorchScript and fail obscurely
        if importlib.util.find_spec(needed) is None:
            raise missing_extra(needed, f"exporting a {name} model to ONNX")  # type: ignore[misc]
    try:
        return importlib.import_module(module).export
    except ImportError as exc:
        raise UnsupportedFormatError(f"exporting a {name} model to ONNX needs the `onnx` extra and {extras}: {exc}") from None


def _is_converted_neuralforecast(src: Path) -> bool:
    from exporters.neuralforecast.reader import converted_folders

    return converted_folders(src) is not None


def detect_framework(src: Path, options: ExportOptions) -> str:
    if not src.exists():
        raise SourceNotFoundError(f"no such file or folder: {src}")
    if options.module:
        return "pytorch"  # weights for a factory's module; JAX factories say --framework jax
    if src.is_dir() and (src / "saved_model.pb").is_file():
        return "keras"
    if src.is_dir() and (is_save_folder(src) or _is_converted_neuralforecast(src)):
        return "neuralforecast"
    if src.is_file() and zipfile.is_zipfile(src):
        with zipfile.ZipFile(src) as zf:
            names = zf.namelist()
        if any(n == "archive_format" or n.endswith("/archive_format") for n in names):
            return "pytorch"
        if "config.json" in names and "model.weights.h5" in names:
            return "keras"
    raise UnsupportedFormatError(
        f"{src.name}: to-onnx exports torch.export programs (.pt2), a module from --module pkg.mod:factory "
        f"with its weights, Keras .keras files, TensorFlow SavedModel folders, and NeuralForecast save folders "
        f"and their nf-to-safetensors outputs"
    )
