"""What the Keras and TensorFlow readers share: the layers a reader found, brought to canonical
tensors, provenance, warnings and the architecture as one SourceModel. TF checkpoints written by
Keras name their variables as Keras's `.h5` files do, so both readers end here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from convert.errors import UnsupportedFormatError
from convert.source import SourceModel

from .config import lambda_layers, layers_of, summary
from .layers import KerasLayer, to_canonical


@dataclass
class LayersFound:
    """What one reader found, before the layers become canonical tensors."""

    format: str
    files: list[Path]
    layers: list[KerasLayer]
    model_config: dict[str, Any] | None = None
    extras: dict[str, Any] = field(default_factory=dict)
    closers: list[Any] = field(default_factory=list)
    dropped: dict[str, str] = field(default_factory=dict)  # source array -> why it is not converted


def assemble(opened: LayersFound, sidecars: list[Path] | None = None, config: dict[str, Any] | None = None) -> SourceModel:
    """Canonical tensors, provenance, warnings and the layer list, as one SourceModel."""
    canonical = to_canonical(opened.layers)
    seen: dict[str, str] = {}
    for ref in canonical.tensors:
        origin = canonical.provenance[ref.name].get("from") or "created"
        if ref.name in seen:
            raise UnsupportedFormatError(f"two Keras weights both become {ref.name!r} ({seen[ref.name]} and {origin})")
        seen[ref.name] = origin
    if not canonical.tensors:
        raise UnsupportedFormatError(f"{opened.files[0].name}: no weights found (was the model built before saving?)")
    model = opened.model_config
    config_layers = layers_of(model) if model else []
    warnings = [
        f"layer {path} is a Lambda layer: its Python code was neither run nor carried across; a loader must reimplement it"
        for path in lambda_layers(config_layers)
    ]
    warnings += canonical.warnings
    architecture = {
        "framework": "keras",
        **(summary(model, canonical.by_layer) if model else {"model": None, "layers_from": "weights", "layers": []}),
    }
    architecture["layers"] += [
        {
            "path": ".".join(layer.path),
            "type": layer.kind,
            "inferred": True,
            "params": {},
            "tensors": canonical.by_layer.get(layer.path, []),
        }
        for layer in opened.layers
        if layer.inferred
    ]
    extras = {**opened.extras, "layers_from": architecture["layers_from"], "warnings": warnings, "tensors": canonical.provenance}
    if canonical.not_expressible:
        extras["not_expressible"] = canonical.not_expressible
    return SourceModel(
        format=opened.format,
        files=opened.files,
        tensors=canonical.tensors,
        sidecars=sidecars or [],
        config=config,
        extras=extras,
        architecture=architecture,
        closers=opened.closers,
        dropped=opened.dropped,
    )
