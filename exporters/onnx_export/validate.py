"""Prove an exported graph: ONNX Runtime's outputs must equal the source framework's, or nothing is kept.

Every input set runs at two sizes; each output's largest absolute difference is recorded, with the
range of the source's output values and the difference as a share of it (what says more for an
int8 graph); one beyond the tolerance is a VerificationError naming the output, the difference and
the inputs.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from convert.errors import VerificationError, first_line
from convert.manifest_model import Validation
from exporters.onnx_export.inputs import InputSet
from exporters.onnx_export.spec import ExportedGraph

DEFAULT_ATOL = 1e-5
RECURRENT_ATOL = 1e-4  # LSTM/GRU kernels accumulate rounding differently over the steps
RECURRENT_OPS = frozenset({"LSTM", "GRU", "RNN", "Loop", "Scan"})
QUANTIZED_SHARE = 0.05  # int8 graphs: default bound, a share of each output's range (README, "Int8 ONNX")


def quantized_atol(validation: Validation) -> dict[str, float]:
    """The default bound of each output of an int8 graph: QUANTIZED_SHARE of the range of the
    source's values on the validation inputs (of their largest magnitude when the output is
    constant, and of 1 when it is all zeros), since int8's error scales with what it represents."""
    bounds = {}
    for name, (low, high) in validation["output_range"].items():
        bounds[name] = QUANTIZED_SHARE * ((high - low) or max(abs(low), abs(high)) or 1.0)
    return bounds


def default_atol(model: Any) -> float:
    recurrent = any(node.op_type in RECURRENT_OPS for node in model.graph.node)
    return RECURRENT_ATOL if recurrent else DEFAULT_ATOL


def validate(
    model_path: Path, graph: ExportedGraph, sets: list[InputSet], atol: float | dict[str, float], option: str = "--atol"
) -> Validation:
    """Run every set through ONNX Runtime and the source; the manifest's validation record.
    `atol` bounds every output, or each output by name; `option` says where the bound came from."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(model_path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own exception types
        raise VerificationError(f"ONNX Runtime cannot load the exported graph: {first_line(exc)}") from None
    worst = {name: 0.0 for name in graph.outputs}
    spans: dict[str, tuple[float, float]] = {}
    runs: list[dict[str, Any]] = []
    for input_set in sets:
        where = f"batch size {input_set.batch_size}, {input_set.label} inputs"
        expected = graph.reference(input_set.arrays)  # first: inputs the source refuses are the user's to fix
        try:
            got = session.run(graph.outputs, input_set.arrays)
        except Exception as exc:
            raise VerificationError(f"ONNX Runtime cannot run the exported graph at {where}: {first_line(exc)}") from None
        if len(expected) != len(got):
            raise VerificationError(f"the source gives {len(expected)} outputs, the graph {len(got)} ({where})")
        diffs = {name: _max_abs_diff(name, g, e, where) for name, g, e in zip(graph.outputs, got, expected, strict=True)}
        for name, diff in diffs.items():
            bound = atol[name] if isinstance(atol, dict) else atol
            if not diff <= bound:
                hint = f"; {graph.mismatch_hint}" if graph.mismatch_hint else ""
                raise VerificationError(
                    f"output {name!r} differs from the source by {diff:.3g} at {where} "
                    f"({option} {bound:.3g}){hint}; no ONNX file was written"
                )
            worst[name] = max(worst[name], diff)
        for name, e in zip(graph.outputs, expected, strict=True):
            spans[name] = _span(e, spans.get(name))
        runs.append({"inputs": input_set.label, "batch_size": input_set.batch_size, "max_abs_diff": diffs})
    ranges = {name: list(spans.get(name, (0.0, 0.0))) for name in graph.outputs}
    return {
        "runtime": f"onnxruntime {ort.__version__}",
        "atol": atol,
        "batch_sizes": sorted({r["batch_size"] for r in runs}),
        "inputs": list(dict.fromkeys(r["inputs"] for r in runs)),
        "max_abs_diff": worst,
        "output_range": ranges,
        "max_rel_diff": {name: _share(worst[name], *ranges[name]) for name in graph.outputs},
        "runs": runs,
        "passed": True,
    }


def _share(diff: float, low: float, high: float) -> float | None:
    """`diff` as a share of the range [low, high]; None when the range is empty."""
    return diff / (high - low) if high > low else None


def _span(expected: np.ndarray, seen: tuple[float, float] | None) -> tuple[float, float]:
    """(min, max) of the source's finite output values so far."""
    values = np.asarray(expected, dtype=np.float64)
    values = values[np.isfinite(values)]
    if not values.size:
        return seen or (0.0, 0.0)
    low, high = float(values.min()), float(values.max())
    return (min(low, seen[0]), max(high, seen[1])) if seen else (low, high)


def _max_abs_diff(name: str, got: np.ndarray, expected: np.ndarray, where: str) -> float:
    got, expected = np.asarray(got), np.asarray(expected)
    if got.shape != expected.shape:
        raise VerificationError(
            f"output {name!r} has shape {list(got.shape)} in the graph but {list(expected.shape)} in the source ({where})"
        )
    if got.size == 0:
        return 0.0
    a, b = got.astype(np.float64), expected.astype(np.float64)
    same = (a == b) | (np.isnan(a) & np.isnan(b))  # equal infinities and NaN in both places agree
    return float(np.max(np.where(same, 0.0, np.abs(a - b))))
