"""JAX/Flax to ONNX through jax2onnx: a Flax NNX module from the user's factory, its weights restored
from SRC, a msgpack of `nnx.state(model, (nnx.Param, nnx.BatchStat)).to_pure_dict()` written by
`flax.serialization.to_bytes` (msgpack holds data only; restoring it runs nothing from the file).

jax2onnx (>= 0.15) declares orbax-checkpoint < 0.11.37, which this project's `jax` extra (pinned to
orbax-checkpoint 0.12.8 for reading orbax checkpoints) excludes.  Its export code does not need
orbax, so it runs beside the `jax` extra when installed with `pip install --no-deps` (the tests do
exactly that); the `onnx-jax` extra installs it with its own pins in an environment of its own.
Without it the command says both ways (exit 4).
"""

from __future__ import annotations

from collections.abc import Iterator
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np

from convert.errors import MappingError, UnsupportedFormatError, UsageError, first_line
from exporters.onnx_export.graph_edit import default_output_names, output_names
from exporters.onnx_export.inputs import build_specs, input_sets
from exporters.onnx_export.spec import ExportedGraph, ExportOptions
from exporters.onnx_export.user_code import call_factory, required_arguments

WEIGHTS_MAX_BYTES = 8 << 30


def export(src: Path, options: ExportOptions, scratch: Path) -> Iterator[ExportedGraph]:
    if not options.module:
        raise UsageError(
            "JAX models are code: give --module pkg.mod:factory returning a flax.nnx.Module, and SRC with its weights"
        )
    try:
        import jax2onnx
    except ImportError:
        raise UnsupportedFormatError(
            f"JAX graphs are exported with jax2onnx, which is not installed: its package pins orbax-checkpoint "
            f"< 0.11.37, which conflicts with this project's `jax` extra; install it beside that extra with "
            f"`pip install --no-deps {_jax2onnx_requirement()}`, or the `onnx-jax` extra in an environment of "
            f"its own"
        ) from None
    import jax
    from flax import nnx

    model = call_factory(options.module)
    if not isinstance(model, nnx.Module):
        raise UsageError(f"--module {options.module}: returned {type(model).__name__}, not a flax.nnx.Module")
    _restore(model, src)
    names = required_arguments(model.__call__, type(model).__name__)
    specs = build_specs(names, [None] * len(names), [None] * len(names), options)
    if any(s.dtype.kind != "f" for s in specs):
        raise UsageError("JAX graphs are exported here from float inputs only: drop the integer or bool dtype")

    def reference(arrays: dict[str, np.ndarray]) -> list[np.ndarray]:
        return [np.asarray(leaf) for leaf in jax.tree_util.tree_leaves(model(*[arrays[n] for n in names]))]

    outputs = output_names(options.output_names, default_output_names(len(reference(input_sets(specs, None, None)[0].arrays))))
    shapes = [tuple(s.dynamic.get(axis, n) for axis, n in enumerate(s.shape)) for s in specs]
    try:
        onnx_model = jax2onnx.to_onnx(
            model, shapes, opset=options.opset or 23, input_names=names, output_names=outputs, return_mode="proto"
        )
    except Exception as exc:  # jax2onnx raises many types for primitives it does not cover
        raise UnsupportedFormatError(f"jax2onnx could not export the model: {first_line(exc)}") from None
    yield ExportedGraph(onnx_model, specs, outputs, reference, f"jax2onnx {version('jax2onnx')}", "flax-nnx-module", [src])


def _jax2onnx_requirement() -> str:
    """The jax2onnx release the `onnx-jax` extra pins, as this installation's metadata states it."""
    from importlib.metadata import PackageNotFoundError, requires

    try:
        pinned = [r.split(";")[0].strip() for r in requires("rust-model-convert") or () if r.startswith("jax2onnx")]
    except PackageNotFoundError:
        pinned = []
    return pinned[0] if pinned else "jax2onnx"


def _restore(model: Any, src: Path) -> None:
    """Load SRC's weights into the module; the tree must match the module's exactly."""
    from flax import nnx, serialization

    if not src.is_file():
        raise UsageError(f"{src}: JAX weights are one msgpack file (flax.serialization.to_bytes)")
    if src.stat().st_size > WEIGHTS_MAX_BYTES:
        raise UnsupportedFormatError(f"{src.name}: larger than {WEIGHTS_MAX_BYTES >> 30} GiB")
    state = nnx.state(model, (nnx.Param, nnx.BatchStat))
    try:
        restored = serialization.from_bytes(state.to_pure_dict(), src.read_bytes())
    except (ValueError, KeyError, TypeError) as exc:
        raise MappingError(f"{src.name} does not fit the module: {first_line(exc)}") from None
    state.replace_by_pure_dict(restored)
    nnx.update(model, state)
