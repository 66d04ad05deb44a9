"""PyTorch to ONNX, from a torch.export program (.pt2) or from the user's module factory plus weights.

Weights for a factory's module are read by this project's own readers (never torch.load) and loaded
with `load_state_dict(strict=True)`.  The graph comes from `torch.onnx.export` with the dynamo
exporter (torch.export + onnxscript); if that fails, the TorchScript exporter is the stated fallback.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from convert.errors import UnsupportedFormatError, UsageError, first_line
from convert.tensors import TensorRef
from exporters.onnx_export.graph_edit import default_output_names, output_names
from exporters.onnx_export.inputs import build_specs, input_sets
from exporters.onnx_export.pt2_guard import check_pt2
from exporters.onnx_export.spec import ExportedGraph, ExportOptions, InputSpec
from exporters.onnx_export.torch_hints import input_hints
from exporters.onnx_export.user_code import call_factory, required_arguments
from exporters.shared.torch_state import load_strict

# SafeTensors codes numpy cannot hand torch directly: torch dtype name, same-width unsigned integer.
_VIEWED = {
    "BF16": ("bfloat16", np.uint16),
    "F8_E4M3": ("float8_e4m3fn", np.uint8),
    "F8_E5M2": ("float8_e5m2", np.uint8),
    "F8_E8M0": ("float8_e8m0fnu", np.uint8),
}
TORCHSCRIPT_OPSET = 17


def export(src: Path, options: ExportOptions, scratch: Path) -> Iterator[ExportedGraph]:
    yield _from_module(src, options, scratch) if options.module else _from_program(src, options, scratch)


def _from_module(src: Path, options: ExportOptions, scratch: Path) -> ExportedGraph:
    import torch

    module = call_factory(options.module or "")
    if not isinstance(module, torch.nn.Module):
        raise UsageError(f"--module {options.module}: returned {type(module).__name__}, not a torch.nn.Module")
    files = _load_weights(module, src)
    module.eval()
    names = required_arguments(module.forward, type(module).__name__)
    specs = build_specs(names, [None] * len(names), [None] * len(names), options, input_hints(module, names))
    example = input_sets(specs, None, None)[-1].arrays  # the larger set: no axis of size 1 to specialise on
    dims: dict[str, Any] = {}
    dynamic_shapes = {
        s.name: {axis: dims.setdefault(dim, torch.export.Dim(dim)) for axis, dim in s.dynamic.items()} for s in specs
    }
    reference = torch_reference(module, names)
    outputs = output_names(options.output_names, default_output_names(len(reference(example))))
    model, exporter, notes = export_torch(module, module, example, specs, outputs, dynamic_shapes, options, scratch)
    return ExportedGraph(
        model,
        specs,
        outputs,
        reference,
        exporter,
        "pytorch-module",
        files,
        parameters=[(k, tuple(v.shape)) for k, v in module.state_dict().items()],
        notes=notes,
    )


def _from_program(src: Path, options: ExportOptions, scratch: Path) -> ExportedGraph:
    import torch

    if options.input_shapes or options.input_dtypes or options.input_ranges or options.dynamic_axes:
        raise UsageError(
            "a .pt2 program fixes its own input shapes, dtypes and dynamic axes: "
            "drop --input-shape, --input-range and --dynamic-axis"
        )
    check_pt2(src)
    program = torch.export.load(str(src))
    args, kwargs = program.example_inputs or ((), {})
    names = list(program.graph_signature.user_inputs)
    if kwargs or not args or len(args) != len(names) or not all(isinstance(a, torch.Tensor) for a in args):
        raise UnsupportedFormatError(
            f"{src.name}: needs example inputs as positional tensors (torch.export.export(model, (x,), ...))"
        )
    placeholders = {n.name: n for n in program.graph.nodes if n.op == "placeholder"}
    specs = [_program_spec(src, name, placeholders[name].meta["val"], arg) for name, arg in zip(names, args, strict=True)]
    samples = {s.name: a.detach().numpy() for s, a in zip(specs, args, strict=True)}
    module = program.module()
    reference = torch_reference(module, names)
    outputs = output_names(options.output_names, default_output_names(len(reference(samples))))
    model, exporter, notes = export_torch(program, module, samples, specs, outputs, None, options, scratch)
    training = train_mode_ops(program)
    hint = (
        (
            f"the program was exported in train mode ({', '.join(training)} with training=True): call "
            "model.eval() before torch.export.export and save it again"
        )
        if training
        else ""
    )
    return ExportedGraph(
        model,
        specs,
        outputs,
        reference,
        exporter,
        "pytorch-export-program",
        [src],
        parameters=[(k, tuple(v.shape)) for k, v in program.state_dict.items()],
        samples=samples,
        notes=notes,
        mismatch_hint=hint,
    )


def train_mode_ops(program: Any) -> list[str]:
    """The operators of an exported program that run in training mode (dropout, batch norm with its
    batch statistics): such a program's outputs are random or batch-dependent, so no graph matches them."""
    found: dict[str, None] = {}
    for node in program.graph.nodes:
        schema = getattr(node.target, "_schema", None)
        if node.op != "call_function" or schema is None:
            continue
        for i, arg in enumerate(schema.arguments):
            if arg.name in ("train", "training"):
                value = node.args[i] if i < len(node.args) else node.kwargs.get(arg.name, arg.default_value)
                if value is True:
                    found[schema.name.split("::")[-1]] = None
    return list(found)


def _program_spec(src: Path, name: str, fake: Any, example: Any) -> InputSpec:
    dynamic = {
        axis: "batch" if axis == 0 else f"{name}_{axis}" for axis, dim in enumerate(fake.shape) if not isinstance(dim, int)
    }
    if 0 not in dynamic:
        raise UnsupportedFormatError(
            f"{src.name}: input {name!r} has a static batch size ({example.shape[0]}); export the program with "
            f"dynamic_shapes={{'{name}': {{0: torch.export.Dim('batch')}}}}"
        )
    values = example.detach().numpy()
    if values.dtype.kind not in "iub" or not values.size:
        return InputSpec(name, tuple(example.shape), values.dtype, dynamic)
    seen = (int(values.min()), int(values.max()) + 1)  # what the validation runs on, as the manifest says
    return InputSpec(name, tuple(example.shape), values.dtype, dynamic, seen, "the program's example inputs")


def export_torch(
    target: Any,
    module: Any,
    example: dict[str, np.ndarray],
    specs: list[InputSpec],
    outputs: list[str],
    dynamic_shapes: Any,
    options: ExportOptions,
    scratch: Path,
) -> tuple[Any, str, list[str]]:
    """(model, which exporter, notes): the dynamo exporter, then (with --exporter auto) TorchScript if it fails.
    `target` is what torch.export traces (a module or a program), `module` what TorchScript traces;
    `dynamic_shapes` is keyed as torch.export wants it for `target`'s forward."""
    import torch

    names = [s.name for s in specs]
    args = tuple(torch.from_numpy(example[n]) for n in names)
    notes: list[str] = []
    if options.exporter in ("auto", "dynamo"):
        model, failure = _dynamo(target, args, specs, outputs, dynamic_shapes, options)
        if failure is None:
            return model, _dynamo_name("torch.export"), notes
        if dynamic_shapes is not None:  # a module, not a program: try torch.export's strict mode
            model = _strict(target, args, specs, outputs, dynamic_shapes, options)
            if model is not None:
                return model, _dynamo_name("torch.export strict=True"), notes
        if options.exporter == "dynamo":
            raise UnsupportedFormatError(f"the dynamo exporter failed: {failure}")
        notes.append(f"the dynamo exporter failed ({failure}); used the TorchScript exporter")
    path = scratch / "torchscript.onnx"
    try:
        torch.onnx.export(
            module,
            args,
            str(path),
            input_names=names,
            output_names=outputs,
            dynamic_axes={s.name: s.dynamic for s in specs},
            opset_version=options.opset or TORCHSCRIPT_OPSET,
            dynamo=False,
        )
    except Exception as exc:
        raise UnsupportedFormatError(f"torch.onnx.export failed: {first_line(exc)}") from None
    import onnx

    return onnx.load(str(path)), "torch.onnx.export dynamo=False (TorchScript exporter)", notes


def _strict(
    module: Any, args: tuple[Any, ...], specs: list[InputSpec], outputs: list[str], dynamic_shapes: Any, options: ExportOptions
) -> Any:
    """The graph from torch.export's strict mode, or None. TorchDynamo traces Python itself, so code
    like `batch_size = len(x)` keeps the size symbolic where the default non-strict tracing fixes it."""
    import torch

    try:
        program = torch.export.export(module, args, dynamic_shapes=dynamic_shapes, strict=True)
    except Exception:  # torch.export raises many types; the non-strict failure is the one reported
        return None
    model, failure = _dynamo(program, args, specs, outputs, None, options)
    return model if failure is None else None


def _dynamo(
    target: Any, args: tuple[Any, ...], specs: list[InputSpec], outputs: list[str], dynamic_shapes: Any, options: ExportOptions
) -> tuple[Any, str | None]:
    """(model, None), or (None, why): an error, or a graph that fixed an axis asked to be dynamic
    (torch.export can specialise an LSTM's sequence length to the example's and still succeed)."""
    import torch

    try:
        program = torch.onnx.export(
            target,
            args,
            input_names=[s.name for s in specs],
            output_names=outputs,
            dynamic_shapes=dynamic_shapes,
            opset_version=options.opset,
            dynamo=True,
            optimize=True,
            verbose=False,
        )
    except Exception as exc:  # torch.export raises many types; the message says what it met
        return None, first_line(exc)
    model = program.model_proto  # type: ignore[union-attr]  # None only when given a file to write
    dims = {v.name: v.type.tensor_type.shape.dim for v in model.graph.input}
    fixed = [
        f"{s.name}:{axis}"
        for s in specs
        for axis in s.dynamic
        if s.name in dims and axis < len(dims[s.name]) and dims[s.name][axis].HasField("dim_value")
    ]
    return (None, f"it fixed dynamic axes {', '.join(fixed)} to the example's size") if fixed else (model, None)


def _dynamo_name(capture: str) -> str:
    import onnxscript

    return f"torch.onnx.export dynamo=True ({capture}, onnxscript {onnxscript.__version__})"


def torch_reference(module: Any, names: list[str]) -> Any:
    """The module's own forward pass on named arrays, outputs flattened: validation's reference.
    A forward that raises on the inputs is the user's model meeting the inputs they described."""
    import torch
    from torch.utils._pytree import tree_leaves

    def run(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        try:
            with torch.no_grad():
                out = module(*[torch.from_numpy(np.ascontiguousarray(arrays[n])) for n in names])
        except Exception as exc:  # the user's code raised; say on what
            described = ", ".join(f"{n} {arrays[n].dtype}{list(arrays[n].shape)}" for n in names)
            raise UsageError(
                f"the module's forward raised {type(exc).__name__} on inputs {described}: "
                f"{first_line(exc)}; say each input's dtype and values with --input-shape "
                f"NAME=SHAPE:DTYPE and --input-range NAME=LOW:HIGH"
            ) from None
        return [leaf.detach().numpy() for leaf in tree_leaves(out) if isinstance(leaf, torch.Tensor)]

    return run


def _load_weights(module: Any, src: Path) -> list[Path]:
    """Read `src` with this project's readers and load it into `module`, every name accounted for."""
    from convert.source import SourceModel
    from exporters.registry import open_source

    opened = open_source(src)
    if not isinstance(opened, SourceModel):  # a bundle (a NeuralForecast folder) holds several models
        raise UsageError(f"{src.name} holds {len(opened.models)} models; --module takes one model's weights")
    with opened as source:
        state = {t.name: to_torch(t) for t in source.tensors}
        files = list(source.files)
    load_strict(module, state, f"{src.name} does not fit the module")
    return files


def to_torch(ref: TensorRef) -> Any:
    """A torch tensor holding a copy of the reference's data, 16-bit and 8-bit floats included."""
    import torch

    arr = np.array(ref.array())  # a copy: the source's memory maps close when it does
    if ref.dtype.code in _VIEWED:
        name, unsigned = _VIEWED[ref.dtype.code]
        return torch.from_numpy(arr.view(unsigned)).view(getattr(torch, name))
    return torch.from_numpy(arr)
