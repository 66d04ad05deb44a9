"""The manifest of a `to-onnx` output: the ONNX files with their hashes, and a `graph` section with
the graph's interface and the validation that proved it (schemas/manifest.schema.json)."""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from convert import manifest as manifest_mod
from convert.architecture import infer_architecture
from convert.hashing import file_digest
from convert.manifest_model import FileEntry, Graph, GraphQuantization, GraphValue, Manifest, Validation
from exporters.onnx.reader import summarize, value_summary
from exporters.onnx_export.spec import ExportedGraph, ExportOptions, InputSpec


def export_manifest(
    graph: ExportedGraph,
    model: Any,
    files: list[Path],
    options: ExportOptions,
    simplification: dict[str, Any],
    validation: Validation,
    quantization: GraphQuantization | None = None,
) -> Manifest:
    summary = summarize(model)
    specs = {s.name: s for s in graph.inputs}
    graph_entry: Graph = {
        "file": files[0].name,
        "external_data": files[1].name if len(files) > 1 else None,
        "ir_version": summary["ir_version"],
        "opset": summary["opset"],
        "producer": summary["producer"],
        "exporter": graph.exporter,
        "simplified": simplification["simplified"],
        "simplifier": simplification["simplifier"],
        "operators": summary["operators"],
        "inputs": [_input_entry(v, specs[v.name]) for v in model.graph.input if v.name in specs],
        "outputs": [_io_entry(v) for v in model.graph.output],
        "validation": validation,
    }
    if quantization:
        graph_entry["quantization"] = quantization
    if graph.semantics:
        graph_entry["semantics"] = graph.semantics
    return manifest_mod.build(
        options.digest,
        manifest_mod.SourceRecord(
            graph.source_format,
            [_file_entry(p, str(p.absolute()), options.digest) for p in graph.source_files],
            {"exporter": graph.exporter},
        ),
        manifest_mod.TargetRecord("onnx", "onnx", "none", None, dataclasses.asdict(options), graph.notes, None),
        # the weights live in the graph; `onnx-to-safetensors` extracts them
        manifest_mod.Contents([_file_entry(p, p.name, options.digest) for p in files], []),
        {**infer_architecture(graph.parameters), "config": None, "source_model": graph.source_model},
        {"graph": graph_entry},
    )


def _file_entry(path: Path, shown: str, algorithm: str) -> FileEntry:
    return manifest_mod.file_entry(path, shown, file_digest(path, algorithm))


def _input_entry(value: Any, spec: InputSpec) -> GraphValue:
    """An input's entry; an integer or bool input's also says which values it takes and who said so."""
    entry = _io_entry(value)
    if spec.range is not None:
        entry["range"] = {"low": spec.range[0], "high": spec.range[1], "from": spec.range_from}
    return entry


def _io_entry(value: Any) -> GraphValue:
    summary = value_summary(value)
    shape = summary["shape"] or []
    return {
        "name": summary["name"],
        "dtype": summary["dtype"],
        "shape": summary["shape"],
        "dynamic_axes": {str(axis): dim for axis, dim in enumerate(shape) if not isinstance(dim, int)},
    }
