"""A Keras model config (`.keras` config.json, `model_config` of a full `.h5`) read as data.

The config tells each layer's class and hyper-parameters, which names weights a Keras 3 file only
numbers, and which a Rust loader needs to rebuild the model. It can also hold Python code (Lambda
layers, lambda activations, as marshalled bytecode): that is never run, and never carried into the
manifest either.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

CODE_MARKER = "<python code: not carried, never run>"
# Hyper-parameters that only matter for training or for Keras's own bookkeeping.
_TRAINING_ONLY = re.compile(r"^(name|trainable|activity_regularizer|.*_(initializer|regularizer|constraint))$")
_WRAPPED = ("layer", "backward_layer")  # Bidirectional/TimeDistributed hold their layer's config here


@dataclass
class ConfigLayer:
    path: tuple[str, ...]  # Keras layer names from the outermost model down
    keys: tuple[str, ...]  # where a Keras 3 weights file keeps it, e.g. ("layers", "sequential", "layers", "dense")
    kind: str  # Keras class name
    config: dict[str, Any]
    is_model: bool  # a Functional/Sequential holding layers of its own


def mapping(value: Any) -> dict[str, Any]:
    """A config entry that should be an object, as one (configs come from untrusted files)."""
    return value if isinstance(value, dict) else {}


def to_snake(name: str) -> str:
    """Keras's own class-name-to-key rule (keras.src.utils.naming.to_snake_case)."""
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def layers_of(model: dict[str, Any]) -> list[ConfigLayer]:
    """Every layer of a model config, nested models' layers included, in the model's order."""
    found: list[ConfigLayer] = []
    _walk(model, (), (), found, 0)
    return found


def _walk(model: dict[str, Any], path: tuple[str, ...], keys: tuple[str, ...], found: list[ConfigLayer], depth: int) -> None:
    if depth > 32:
        return
    used: dict[str, int] = {}
    for layer in _sublayers(model):
        kind = str(layer.get("class_name", ""))
        config = mapping(layer.get("config"))
        name = str(config.get("name") or layer.get("name") or "")
        key = to_snake(kind)
        used[key] = used.get(key, -1) + 1
        if used[key]:
            key = f"{key}_{used[key]}"
        entry = ConfigLayer(path + (name,), keys + ("layers", key), kind, config, bool(_sublayers(layer)))
        found.append(entry)
        if entry.is_model:
            _walk(layer, entry.path, entry.keys, found, depth + 1)


def _sublayers(model: dict[str, Any]) -> list[dict[str, Any]]:
    config = model.get("config")
    layers = config.get("layers") if isinstance(config, dict) else None
    return [layer for layer in layers if isinstance(layer, dict)] if isinstance(layers, list) else []


def lambda_layers(layers: list[ConfigLayer]) -> list[str]:
    return [".".join(layer.path) for layer in layers if layer.kind == "Lambda"]


def scrub(value: Any) -> Any:
    """The config without code: marshalled functions become a marker (Keras 2 and Keras 3 forms)."""
    if isinstance(value, dict):
        if value.get("class_name") == "__lambda__":
            return CODE_MARKER
        out = {}
        for key, item in value.items():
            if value.get(f"{key}_type") == "lambda":  # Keras 2: function/output_shape as bytecode
                out[key] = CODE_MARKER
            else:
                out[key] = scrub(item)
        return out
    if isinstance(value, list):
        return [scrub(item) for item in value]
    return value


def params(config: dict[str, Any]) -> dict[str, Any]:
    """The hyper-parameters a loader needs: sizes, activations, epsilons; no initializers or code."""
    config = scrub(config)  # whole, not value by value: Keras 2 marks code by a sibling key (function_type)
    out: dict[str, Any] = {}
    for key, value in config.items():
        if _TRAINING_ONLY.match(key) or key in _WRAPPED or key == "layers":
            continue
        if key == "dtype" and isinstance(value, dict):
            value = (value.get("config") or {}).get("name")
        out[key] = value
    for key in _WRAPPED:
        inner = config.get(key)
        if isinstance(inner, dict):
            out[key] = {"type": inner.get("class_name"), "params": params(inner.get("config") or {})}
    return out


def input_shapes(model: dict[str, Any]) -> list[Any]:
    """The model's input shapes (batch dimension included, null where free), where the config says."""
    shapes: list[Any] = []
    for layer in _sublayers(model):
        config = mapping(layer.get("config"))
        shape = config.get("batch_shape", config.get("batch_input_shape"))
        if shape is not None and (layer.get("class_name") == "InputLayer" or not shapes):
            shapes.append(shape)
        if layer.get("class_name") != "InputLayer":
            break
    if not shapes:
        build = mapping(model.get("build_config"))
        if build.get("input_shape") is not None:
            shapes.append(build["input_shape"])
    return shapes


def summary(model: dict[str, Any], tensors: dict[tuple[str, ...], list[str]]) -> dict[str, Any]:
    """The Keras layer list for the manifest: path, type, hyper-parameters, the tensors it became."""
    config = mapping(model.get("config"))
    return {
        "model": {"type": model.get("class_name"), "name": config.get("name"), "input_shapes": input_shapes(model)},
        "layers_from": "config",
        "layers": [
            {
                "path": ".".join(layer.path),
                "type": layer.kind,
                "params": params(layer.config),
                "tensors": tensors.get(layer.path, []),
            }
            for layer in layers_of(model)
        ],
    }
