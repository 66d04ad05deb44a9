"""NeuralForecast to ONNX: every model of a save folder rebuilt from its manifest and exported with
the inputs NeuralForecast really feeds it.

The source is a save folder, each model read by this project's own reader (no pickle from the folder
is loaded) and described by the same architecture record `nf-to-safetensors` writes into its
manifest; or such an `nf-to-safetensors` output itself, its manifests and SafeTensors.  Each model
is rebuilt from that record with NeuralForecast's class (exporters.neuralforecast.rebuild) and exported through
the PyTorch path.  The graph is the network as NeuralForecast calls it at prediction time,
`loss.domain_map(model(windows))`, with the window's parts as named inputs: `insample_y` and
`insample_mask` (the last `input_size` steps), `futr_exog` (input_size + h steps), `hist_exog` and
`stat_exog` when the model has such columns (shapes in `_window_specs`), less any part the network
never reads and the exporter drops.  What NeuralForecast does around the network (the temporal
scaler and its inverse, sampling from a distribution) stays outside the graph, and the manifest's
graph.semantics says so.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from convert import manifest as manifest_mod
from convert.errors import ConvertError, UnsupportedFormatError, UsageError
from exporters.neuralforecast.reader import converted_folders, open_bundle
from exporters.neuralforecast.rebuild import converted_state, rebuild_model
from exporters.onnx_export.from_pytorch import export_torch, to_torch, torch_reference
from exporters.onnx_export.graph_edit import default_output_names, output_names
from exporters.onnx_export.inputs import BATCH, input_sets
from exporters.onnx_export.spec import ExportedGraph, ExportOptions, InputSpec

WINDOW_PARTS = ("insample_y", "insample_mask", "futr_exog", "hist_exog", "stat_exog")


@dataclass
class _Model:
    name: str  # its output folder: the alias, `_<i>` added when an alias repeats
    record: dict[str, Any]  # the manifest's architecture.source_model
    files: list[Path]
    state: Callable[[], dict[str, torch.Tensor]]  # read only for the models exported


def export(src: Path, options: ExportOptions, scratch: Path) -> Iterator[ExportedGraph]:
    """One graph per chosen model, each exported only when the pipeline has finished the last."""
    if options.module:
        raise UsageError("a NeuralForecast folder names its own model classes: drop --module")
    if options.input_shapes or options.input_dtypes or options.input_ranges or options.dynamic_axes:
        raise UsageError(
            "a NeuralForecast model's window is fixed by its input_size and h: "
            "drop --input-shape, --input-range and --dynamic-axis"
        )
    with _models(src) as models:
        names = [m.name for m in models]
        unknown = sorted(set(options.models) - set(names))
        if unknown:
            raise UsageError(f"--model {', '.join(unknown)}: {src.name} holds the models {', '.join(names)}")
        chosen = options.models or names
        if options.inputs_file and len(chosen) > 1:
            raise UsageError(f"--inputs holds one model's inputs; {len(chosen)} models are exported: choose one with --model")
        for model in models:
            if model.name in chosen:
                yield _export_model(model, options, scratch)


@contextmanager
def _models(src: Path) -> Iterator[list[_Model]]:
    """The models of an nf-to-safetensors output (its manifests and SafeTensors), or of a save
    folder (read by this project's reader)."""
    folders = converted_folders(src)
    if folders is not None:
        yield [_converted(folder) for folder in folders]
        return
    with open_bundle(src) as bundle:
        # the NeuralForecast reader gives every model of a bundle its architecture record
        yield [
            _Model(m.folder, cast(dict[str, Any], m.source.architecture), m.source.files, partial(_state_of, m.source.tensors))
            for m in bundle.models
        ]


def _state_of(tensors: list[Any]) -> dict[str, torch.Tensor]:
    return {t.name: to_torch(t) for t in tensors}


def _converted(folder: Path) -> _Model:
    """One model of an nf-to-safetensors output: what its manifest records, tensors re-tied."""
    doc = manifest_mod.load(folder)
    if doc["target"]["layout"] != "pytorch":
        raise UnsupportedFormatError(
            f"{folder.name}: converted with --layout {doc['target']['layout']}; rebuilding "
            f"the model needs NeuralForecast's own names (--layout pytorch, the default)"
        )
    return _Model(
        folder.name,
        doc["architecture"]["source_model"],
        [folder / f["path"] for f in doc["files"]],
        partial(converted_state, folder, doc),
    )


def _export_model(source: _Model, options: ExportOptions, scratch: Path) -> ExportedGraph:
    """The model's graph; any failure names the model."""
    try:
        return _export_network(source, options, scratch)
    except ConvertError as exc:
        raise type(exc)(f"{source.name}: {exc}") from None


def _export_network(source: _Model, options: ExportOptions, scratch: Path) -> ExportedGraph:
    record = source.record
    resolved = record["resolved"]
    _check_exportable(record["class"], resolved)
    network, dropped = rebuild_model(record, source.state(), drop_unknown=True)
    network.eval()
    specs = _window_specs(resolved)
    wrapper = _Windows(network, [s.name for s in specs])
    reference = torch_reference(wrapper, [s.name for s in specs])
    example = input_sets(specs, None, None)[-1].arrays  # the larger set: no axis of size 1 to specialise on
    outputs = output_names(options.output_names, _output_names(network.loss, len(reference(example))))
    batch = torch.export.Dim(BATCH)
    dynamic_shapes = (tuple({0: batch} if 0 in s.dynamic else {} for s in specs),)  # forward(*parts)
    model, exporter, notes = export_torch(wrapper, wrapper, example, specs, outputs, dynamic_shapes, options, scratch)
    read = {value.name for value in model.graph.input}
    unread = [s for s in specs if s.name not in read]  # parts an exporter dropped because the network ignores them
    specs = [s for s in specs if s.name in read]
    if dropped:
        notes.append(
            f"{source.name}: arguments left at the installed {record['class']}'s defaults (not taken by "
            f"this release, or not readable from the folder): {', '.join(dropped)}"
        )
    return ExportedGraph(
        model,
        specs,
        outputs,
        _filling(reference, specs, unread),
        exporter,
        "neuralforecast",
        source.files,
        parameters=[(k, tuple(v.shape)) for k, v in network.state_dict().items()],
        notes=notes,
        folder=source.name,
        source_model=record,
        semantics=_semantics(network, record, specs, outputs),
    )


def _output_names(loss: Any, count: int) -> list[str]:
    """`forecast`, or a distribution's parameter names (`loc`, `scale`) when the loss predicts one."""
    if getattr(loss, "is_distribution_output", False):
        params = [p.lstrip("-") for p in getattr(loss, "param_names", [])]
        if len(params) == count and len(set(params)) == count:
            return params
    return ["forecast"] if count == 1 else default_output_names(count)


def _filling(reference: Any, specs: list[InputSpec], unread: list[InputSpec]) -> Any:
    """The reference forward, given zeros for the window parts the graph dropped as unread."""
    if not unread:
        return reference

    def run(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = arrays[specs[0].name].shape[0]
        zeros = {s.name: np.zeros((batch, *s.shape[1:]) if s.dynamic else s.shape, np.float32) for s in unread}
        return reference({**arrays, **zeros})

    return run


def _check_exportable(class_name: str, resolved: dict[str, Any]) -> None:
    if resolved["recurrent"]:
        raise UnsupportedFormatError(
            f"{class_name} forecasts recurrently, one step at a time with its state carried between calls in "
            f"Python, which one graph does not hold; export a model trained with recurrent=False, or leave this "
            f"one out with --model"
        )
    if resolved["cat_exog_list"]:
        raise UnsupportedFormatError(
            f"categorical exogenous columns {resolved['cat_exog_list']} are embedded by NeuralForecast before the "
            f"network runs; models with them are not exported (leave it out with --model)"
        )


def _window_specs(resolved: dict[str, Any]) -> list[InputSpec]:
    """The parts of a prediction window NeuralForecast hands this model, with their shapes.
    Univariate: [batch, steps, features]; multivariate: [batch, features, steps, n_series] for the
    exogenous parts and [n_series, features] for stat_exog, which has no batch axis."""
    steps, h, n = resolved["input_size"], resolved["h"], resolved["n_series"]
    futr, hist, stat = (len(resolved[f"{part}_exog_list"]) for part in ("futr", "hist", "stat"))
    multivariate = resolved["multivariate"]
    shapes: dict[str, tuple[int, ...]] = {"insample_y": (1, steps, n), "insample_mask": (1, steps, n)}
    if futr:
        shapes["futr_exog"] = (1, futr, steps + h, n) if multivariate else (1, steps + h, futr)
    if hist:
        shapes["hist_exog"] = (1, hist, steps, n) if multivariate else (1, steps, hist)
    if stat:
        shapes["stat_exog"] = (n, stat) if multivariate else (1, stat)
    batched = {name for name in shapes if not (multivariate and name == "stat_exog")}
    return [InputSpec(name, shape, np.dtype(np.float32), {0: BATCH} if name in batched else {}) for name, shape in shapes.items()]


def _semantics(network: Any, record: dict[str, Any], specs: list[InputSpec], outputs: list[str]) -> dict[str, Any]:
    resolved = record["resolved"]
    loss = network.loss
    distribution = getattr(loss, "is_distribution_output", False)
    name = record["alias"] or record["class"]
    columns = (
        {}
        if distribution
        else {  # a distribution's columns are sampled outside the graph
            "forecast_columns": [f"{name}{suffix}" for suffix in (getattr(loss, "output_names", None) or [""])]
        }
    )
    return {
        "computes": "loss.domain_map(model(windows)), as NeuralForecast's predict step calls it",
        "inputs": {s.name: _part_meaning(s.name, resolved) for s in specs},
        "outputs": outputs,
        **columns,
        "scaler_type": resolved["scaler_type"],
        "outside_the_graph": [
            f"the temporal scaler (scaler_type={resolved['scaler_type']!r}): inputs are the window after it, "
            f"outputs before its inverse",
            "the forecaster's local scaler (local_scaler_type), if one was fitted",
            *(["drawing samples and quantiles from the predicted distribution's parameters"] if distribution else []),
        ],
    }


def _part_meaning(part: str, resolved: dict[str, Any]) -> str:
    steps, h = resolved["input_size"], resolved["h"]
    return {
        "insample_y": f"the target's last {steps} values, oldest first",
        "insample_mask": f"1 where those {steps} values were observed, 0 where missing",
        "futr_exog": f"future exogenous columns {resolved['futr_exog_list']} over the {steps} steps and the {h} to forecast",
        "hist_exog": f"historic exogenous columns {resolved['hist_exog_list']} over the {steps} steps",
        "stat_exog": f"static exogenous columns {resolved['stat_exog_list']}",
    }[part]


class _Windows(torch.nn.Module):
    """Calls a NeuralForecast model the way its predict step does, with the window's parts as
    separate tensors (one graph input each) instead of one dict."""

    def __init__(self, network: Any, parts: list[str]) -> None:  # a NeuralForecast model: untyped
        super().__init__()
        self.network = network
        self.parts = parts

    def forward(self, *tensors: torch.Tensor) -> Any:
        windows: dict[str, Any] = dict.fromkeys(WINDOW_PARTS)  # the parts not given stay None
        windows.update(zip(self.parts, tensors, strict=True))
        if getattr(self.network, "exclude_insample_y", False):  # NeuralForecast zeroes it before the network
            windows["insample_y"] = windows["insample_y"] * 0
        return self.network.loss.domain_map(self.network(windows))
