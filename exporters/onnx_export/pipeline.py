"""The shared half of `to-onnx`: after a framework exports, simplify, check, save, validate, record;
with --quantize, the validated float graph is then quantized to int8, checked and validated again.

Everything is written into a staging folder that becomes the output only when validation has
passed; a mismatch, a checker error or Ctrl-C leaves no ONNX file behind.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convert import manifest as manifest_mod
from convert.errors import ConvertError, UnsafeInputError, VerificationError, first_line
from convert.hashing import new_digest
from convert.manifest_model import GraphQuantization, Validation
from convert.output import fsync_path, write_file
from convert.pipeline import checked_destination
from exporters.onnx.names import record_names
from exporters.onnx_export import exporter_for
from exporters.onnx_export.graph_edit import name_axes, reinfer_shapes
from exporters.onnx_export.inputs import InputSet, input_sets
from exporters.onnx_export.quantize import calibration_inputs, check_options, quantize
from exporters.onnx_export.record import export_manifest
from exporters.onnx_export.spec import ExportedGraph, ExportOptions
from exporters.onnx_export.validate import QUANTIZED_SHARE, default_atol, quantized_atol, validate
from exporters.shared.quiet import framework_output_captured

MODEL_FILE = "model.onnx"
DATA_FILE = "model.onnx.data"
PROTOBUF_LIMIT = 2**31  # onnx-simplifier serializes the whole graph into one protobuf message
EXTERNAL_MIN_BYTES = 1024  # tensors smaller than this stay inside model.onnx


@dataclass
class GraphResult:
    folder: str  # inside the output folder; "" when the source holds one model
    files: list[str]
    exporter: str
    simplified: bool
    validation: Validation
    notes: list[str] = field(default_factory=list)
    quantization: GraphQuantization | None = None  # how an int8 graph was made (the manifest's graph.quantization)

    def to_json(self) -> dict[str, Any]:
        return {
            "folder": self.folder,
            "files": self.files,
            "exporter": self.exporter,
            "simplified": self.simplified,
            "validation": self.validation,
            "notes": self.notes,
            "quantization": self.quantization,
        }


@dataclass
class ExportResult:
    output: Path
    graphs: list[GraphResult]
    seconds: float

    def to_json(self) -> dict[str, Any]:
        return {"output": str(self.output), "graphs": [g.to_json() for g in self.graphs], "seconds": round(self.seconds, 3)}


def to_onnx(src: str | Path, out: str | Path, options: ExportOptions, stage: Callable[[str], None] | None = None) -> ExportResult:
    """Export `src` into the folder `out` as model.onnx (+ external data) and manifest.json, or, for a
    source of several models, one such folder per model inside `out`; `stage` hears each step's name
    as it starts (a progress display)."""
    stage = stage or (lambda name: None)
    started = time.perf_counter()
    source = Path(src)
    new_digest(options.digest)  # an unknown algorithm is refused before any work
    check_options(options.quantize, options.calibration, options.quantized_atol)
    staged = checked_destination([source], out, options.overwrite)
    export = exporter_for(source, options)
    with staged as staging:
        scratch = staging / ".export"
        scratch.mkdir()
        results: list[GraphResult] = []
        with closing(iter(export(source, options, scratch))) as graphs:  # exported one at a time
            while True:
                stage("exporting" if not results else f"exporting graph {len(results) + 1}")
                with framework_output_captured():
                    graph = next(graphs, None)
                if graph is None:
                    break
                results.append(_finish(graph, staging, options, stage))
        shutil.rmtree(scratch)
    return ExportResult(staged.dest, results, time.perf_counter() - started)


def _finish(graph: ExportedGraph, staging: Path, options: ExportOptions, stage: Callable[[str], None]) -> GraphResult:
    """One exported graph named, simplified, saved, checked, validated and described in its manifest;
    a failure names the graph's folder when the source holds several."""
    if graph.folder and Path(graph.folder).name != graph.folder:
        raise UnsafeInputError(f"{graph.folder!r} cannot name an output folder")
    try:
        return _finish_graph(
            graph, staging / graph.folder, options, lambda name: stage(f"{graph.folder}: {name}" if graph.folder else name)
        )
    except ConvertError as exc:
        raise type(exc)(f"{graph.folder}: {exc}" if graph.folder else str(exc)) from None


def _finish_graph(graph: ExportedGraph, dest: Path, options: ExportOptions, stage: Callable[[str], None]) -> GraphResult:
    dest.mkdir(exist_ok=True)
    stage("simplifying")
    with framework_output_captured():
        name_axes(graph.model, graph.inputs)
        record_names(graph.model)
        model, simplification = optimize(graph.model, options.simplify)
        name_axes(model, graph.inputs)  # onnx-simplifier can rename an input's symbolic axis
    sets = input_sets(graph.inputs, graph.samples, options.inputs_file)
    atol = options.atol if options.atol is not None else default_atol(model)
    float_dest = dest / ".float" if options.quantize else dest
    float_dest.mkdir(exist_ok=True)
    files, validation = _saved_and_validated(model, float_dest, graph, sets, options, stage, atol, "--atol")
    quantization = None
    if options.quantize:
        model, quantization = _quantized(model, graph, files, validation, dest, options, stage)
        bound = quantization["atol"]
        option = "--quantized-atol" if options.quantized_atol is not None else f"default bound, {QUANTIZED_SHARE:g} of its range:"
        files, validation = _saved_and_validated(model, dest, graph, sets, options, stage, bound, option, "the int8 graph")
        shutil.rmtree(float_dest)
    doc = export_manifest(graph, model, files, options, simplification, validation, quantization)
    write_file(dest / manifest_mod.MANIFEST_FILE, manifest_mod.dumps(doc))
    return GraphResult(
        graph.folder, [p.name for p in files], graph.exporter, simplification["simplified"], validation, graph.notes, quantization
    )


def _saved_and_validated(
    model: Any,
    dest: Path,
    graph: ExportedGraph,
    sets: list[InputSet],
    options: ExportOptions,
    stage: Callable[[str], None],
    atol: float | dict[str, float],
    option: str,
    what: str = "the graph",
) -> tuple[list[Path], Validation]:
    """The graph saved into `dest`, passed by onnx.checker, and its validation record."""
    files = save(model, dest, options.external_data_threshold)
    check(dest / MODEL_FILE)
    stage(f"validating {what} with ONNX Runtime")
    with framework_output_captured():
        return files, validate(dest / MODEL_FILE, graph, sets, atol, option)


def _quantized(
    model: Any,
    graph: ExportedGraph,
    float_files: list[Path],
    float_validation: Validation,
    dest: Path,
    options: ExportOptions,
    stage: Callable[[str], None],
) -> tuple[Any, GraphQuantization]:
    """The int8 graph of the validated float one, and the manifest's record of how it was made,
    with the float graph's size and validation beside it."""
    mode = options.quantize
    assert mode is not None
    calibration = calibration_inputs(graph.inputs, graph.samples, options.calibration) if mode == "qdq-int8" else None
    stage(f"quantizing ({mode})")
    scratch = dest / ".quantize"
    scratch.mkdir(exist_ok=True)
    with framework_output_captured():
        quantized, method = quantize(model, mode, calibration, scratch)
    shutil.rmtree(scratch)
    given = options.quantized_atol
    return quantized, {
        **method,
        "atol": given if given is not None else quantized_atol(float_validation),
        "atol_from": "--quantized-atol" if given is not None else f"default: {QUANTIZED_SHARE:g} of each output's range",
        "float_graph": {
            "bytes": sum(p.stat().st_size for p in float_files),
            "validation": {k: float_validation[k] for k in ("atol", "max_abs_diff", "output_range")},
        },
    }


def optimize(model: Any, simplify: bool) -> tuple[Any, dict[str, Any]]:
    """Shapes re-inferred, then onnx-simplifier (constant folding, dead code) unless asked not to or
    it cannot; says which."""
    if model.ByteSize() >= PROTOBUF_LIMIT:
        return model, _unsimplified("skipped: graphs of 2 GiB or more do not fit one protobuf")
    model = reinfer_shapes(model)
    if not simplify:
        return model, _unsimplified("skipped (--no-simplify)")
    import onnxsim

    try:
        simplified, ok = onnxsim.simplify(model)
    except Exception as exc:  # onnxsim raises RuntimeError, ValueError and its own C++ errors
        return model, _unsimplified(f"onnx-simplifier failed ({first_line(exc)}); kept the graph as exported")
    if not ok:
        return model, _unsimplified("onnx-simplifier's own check failed; kept the graph as exported")
    return reinfer_shapes(simplified), {"simplified": True, "simplifier": f"onnxsim {onnxsim.__version__.lstrip('v')}"}


def _unsimplified(why: str) -> dict[str, Any]:
    return {"simplified": False, "simplifier": why}


def save(model: Any, staging: Path, threshold: int) -> list[Path]:
    """model.onnx, with the weights in model.onnx.data when the graph is larger than `threshold`."""
    import onnx

    path = staging / MODEL_FILE
    if model.ByteSize() <= threshold:
        write_file(path, model.SerializeToString())
        return [path]
    onnx.save_model(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location=DATA_FILE,
        size_threshold=EXTERNAL_MIN_BYTES,
    )
    files = [p for p in (path, staging / DATA_FILE) if p.exists()]
    for written in files:
        fsync_path(written)
    return files


def check(path: Path) -> None:
    import onnx

    try:
        onnx.checker.check_model(str(path))
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise VerificationError(f"onnx.checker rejects the exported graph: {first_line(exc)}") from None
