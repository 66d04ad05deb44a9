"""Keras and TensorFlow to ONNX.

A `.keras` file is loaded in Keras safe_mode (a Lambda layer's code is refused, never run), called
once, and exported by Keras's own ONNX export (`Model.export(format="onnx")`, tf2onnx inside).
A SavedModel folder is converted by tf2onnx from its `serving_default` signature.  tf2onnx's
`from_keras` is not used: it does not work with Keras 3.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from convert.errors import UnsafeInputError, UnsupportedFormatError, UsageError, first_line
from exporters.onnx_export.graph_edit import default_output_names, output_names, rename_values
from exporters.onnx_export.inputs import build_specs, input_sets
from exporters.onnx_export.spec import ExportedGraph, ExportOptions, InputSpec

SIGNATURE = "serving_default"


def export(src: Path, options: ExportOptions, scratch: Path) -> Iterator[ExportedGraph]:
    if options.exporter != "auto":
        raise UsageError("--exporter chooses between PyTorch's exporters; Keras models have one path")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    yield _saved_model(src, options) if src.is_dir() else _keras_file(src, options, scratch)


def _keras_file(src: Path, options: ExportOptions, scratch: Path) -> ExportedGraph:
    import keras
    import onnx

    model = _load_keras(src)
    names = [t.name for t in model.inputs]
    specs = build_specs(names, [np.dtype(t.dtype) for t in model.inputs], [tuple(t.shape) for t in model.inputs], options)

    def reference(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = model([arrays[n] for n in names] if len(names) > 1 else arrays[names[0]], training=False)
        return [np.asarray(keras.ops.convert_to_numpy(t)) for t in keras.tree.flatten(out)]

    outputs = output_names(
        options.output_names, list(getattr(model, "output_names", None) or default_output_names(len(model.outputs)))
    )
    reference(input_sets(specs, None, None)[0].arrays)  # Keras exports only a model that has been called
    path = scratch / "keras.onnx"
    try:
        model.export(str(path), format="onnx", verbose=False, input_signature=_signature(specs), opset_version=options.opset)
    except Exception as exc:  # Keras and tf2onnx raise many types
        raise UnsupportedFormatError(f"Keras's ONNX export failed: {first_line(exc)}") from None
    onnx_model = onnx.load(str(path))
    _name_interface(onnx_model, names, outputs)
    return ExportedGraph(
        onnx_model, specs, outputs, reference, _tf2onnx("keras.Model.export(format='onnx')"), "keras", [src], notes=[]
    )


def _load_keras(src: Path) -> Any:
    import keras

    try:
        return keras.saving.load_model(str(src), compile=False, safe_mode=True)
    except ValueError as exc:
        if "safe_mode" in str(exc):
            raise UnsafeInputError(
                f"{src.name}: holds Python code (a Lambda layer), which Keras safe_mode refuses to run"
            ) from None
        raise UnsupportedFormatError(f"{src.name}: Keras cannot load it: {first_line(exc)}") from None
    except (TypeError, KeyError, OSError) as exc:  # unknown custom classes, damaged archives
        raise UnsupportedFormatError(f"{src.name}: Keras cannot load it: {first_line(exc)}") from None


def _signature(specs: list[InputSpec]) -> list[Any]:
    import tensorflow as tf

    return [
        tf.TensorSpec([None if axis in s.dynamic else n for axis, n in enumerate(s.shape)], s.dtype.name, name=s.name)
        for s in specs
    ]


def _saved_model(src: Path, options: ExportOptions) -> ExportedGraph:
    import tensorflow as tf
    import tf2onnx

    signature = tf.saved_model.load(str(src)).signatures.get(SIGNATURE)
    if signature is None:
        raise UnsupportedFormatError(f"{src.name}: the SavedModel has no {SIGNATURE!r} signature to export")
    declared = signature.structured_input_signature[1]
    names = sorted(declared)
    specs = build_specs(
        names, [declared[n].dtype.as_numpy_dtype for n in names], [tuple(declared[n].shape) for n in names], options
    )
    keys = sorted(signature.structured_outputs)

    def reference(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        out = signature(**{n: tf.constant(arrays[n]) for n in names})
        return [out[k].numpy() for k in keys]

    try:
        graph_def, inputs, outputs, tables, renames = tf2onnx.tf_loader.from_saved_model(
            str(src), None, None, signatures=[SIGNATURE], return_initialized_tables=True, return_tensors_to_rename=True
        )
        onnx_model, _ = tf2onnx.convert.from_graph_def(
            graph_def, input_names=inputs, output_names=outputs, opset=options.opset, tensors_to_rename=renames
        )
    except Exception as exc:  # tf2onnx raises many types
        raise UnsupportedFormatError(f"tf2onnx could not convert the SavedModel: {first_line(exc)}") from None
    wanted = output_names(options.output_names, keys)
    _name_interface(onnx_model, names, wanted)
    return ExportedGraph(
        onnx_model,
        specs,
        wanted,
        reference,
        _tf2onnx("tf2onnx on the SavedModel"),
        "tf-saved-model",
        sorted(p for p in src.rglob("*") if p.is_file()),
        notes=[],
    )


def _name_interface(model: Any, inputs: list[str], outputs: list[str]) -> None:
    """The graph's inputs and outputs, in order, get the model's names."""
    initializers = {t.name for t in model.graph.initializer}
    graph_inputs = [v.name for v in model.graph.input if v.name not in initializers]
    graph_outputs = [v.name for v in model.graph.output]
    if len(graph_inputs) != len(inputs) or len(graph_outputs) != len(outputs):
        raise UnsupportedFormatError(
            f"the exported graph has {len(graph_inputs)} inputs and {len(graph_outputs)} "
            f"outputs; the model {len(inputs)} and {len(outputs)}"
        )
    rename_values(model, {**dict(zip(graph_inputs, inputs, strict=True)), **dict(zip(graph_outputs, outputs, strict=True))})


def _tf2onnx(path: str) -> str:
    import tf2onnx

    return f"{path} (tf2onnx {tf2onnx.__version__})"
