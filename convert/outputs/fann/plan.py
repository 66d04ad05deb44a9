"""Which dense chains become ruv-FANN networks: the ones the source declares and the ones the
`dense_networks` layout option names, each checked on names and shapes before any output exists."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from convert.errors import MappingError, UsageError
from convert.manifest_model import Alternative, InferredArchitecture
from convert.mapping import Layout, MappedTensor

from .network import ACTIVATIONS

FILE_SUFFIX = ".network.json"
WRITE_OPTION = "ruv_fann_networks"  # a layout that declares it writes networks
SPEC_OPTION = "dense_networks"
_SAFE_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")


@dataclass(frozen=True)
class NetworkLayer:
    module: str  # the source module path, e.g. "mlp.0"
    tensor: MappedTensor  # its [out, in+1] neuro-divergent tensor
    activation: str  # a key of ACTIVATIONS


@dataclass(frozen=True)
class NetworkPlan:
    name: str
    layers: list[NetworkLayer]

    @property
    def file(self) -> str:
        return self.name + FILE_SUFFIX


def parse_spec(text: str) -> list[dict[str, Any]]:
    """The `dense_networks` option, "NAME=PATH:ACT,PATH:ACT[;NAME=...]", as network specs."""
    specs = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        name, sep, layers = part.partition("=")
        pairs = [item.strip().rpartition(":") for item in layers.split(",")]
        if not sep or not name.strip() or any(not path or not colon for path, colon, _ in pairs):
            raise UsageError(
                f"{SPEC_OPTION}: {part!r} is not NAME=PATH:ACTIVATION,PATH:ACTIVATION,... (activations: {', '.join(ACTIVATIONS)})"
            )
        specs.append({"name": name.strip(), "layers": [{"module": p, "activation": a.strip().lower()} for p, _, a in pairs]})
    return specs


def decide_dense_modules(architecture: InferredArchitecture, layout: Layout) -> None:
    """A module the user lists in `dense_networks` is a Linear by their word: that settles a bias-free
    2-D weight, whose shape alone also fits an Embedding."""
    if not layout.options.get(WRITE_OPTION):
        return
    named = {layer["module"] for spec in parse_spec(str(layout.options.get(SPEC_OPTION) or "")) for layer in spec["layers"]}
    for module in architecture["modules"]:
        fits: list[Alternative] = [{"type": module["type"], "params": module["params"]}, *module.get("alternatives", [])]
        linear = next((f for f in fits if f["type"] == "Linear"), None)
        if module["path"] in named and linear is not None and module.get("alternatives"):
            module.update({"type": "Linear", "params": linear["params"], "decided_by": f"{SPEC_OPTION} option"})
            module.pop("alternatives")


def plan_networks(
    layout: Layout, declared: Sequence[dict[str, Any]], mapped: Sequence[MappedTensor]
) -> tuple[list[NetworkPlan], list[str]]:
    """(networks to write, warnings). `declared`: what the source says its dense chains are; the
    user's `dense_networks` option adds to them. Every check is on names and shapes, before any
    output exists: a module that is no dense tensor, widths that do not chain, or an activation
    ruv-FANN cannot compute is a MappingError."""
    if not layout.options.get(WRITE_OPTION):
        return [], []
    specs = [*declared, *parse_spec(str(layout.options.get(SPEC_OPTION) or ""))]
    dense = {m.sources[0].name.removesuffix(".weight"): m for m in mapped if m.annotations.get("kind") == "dense" and m.sources}
    plans = [_plan(spec, dense) for spec in specs]
    names = [p.name for p in plans]
    if len(set(names)) != len(names):
        raise MappingError(f"{SPEC_OPTION}: two networks are named {next(n for n in names if names.count(n) > 1)!r}")
    warnings = []
    if not plans and dense:
        warnings.append(
            f"no ruv-FANN network.json written: the source does not say which activations follow its "
            f"dense layers (name them with --layout-option {SPEC_OPTION}=NAME=PATH:ACT,...; "
            f"{WRITE_OPTION}=false silences this)"
        )
    return plans, warnings


def _plan(spec: dict[str, Any], dense: dict[str, MappedTensor]) -> NetworkPlan:
    name = str(spec["name"])
    if not _SAFE_NAME.fullmatch(name) or ".." in name:
        raise UsageError(f"{SPEC_OPTION}: network name {name!r} is not a safe file name (letters, digits, . _ -)")
    layers, width = [], None
    for item in spec["layers"]:
        module, activation = str(item["module"]), str(item["activation"])
        tensor = dense.get(module)
        if tensor is None:
            raise MappingError(
                f"network {name!r}: {module!r} is not a dense layer of this output "
                f"(dense layers: {', '.join(sorted(dense)[:8]) or 'none'})"
            )
        if activation not in ACTIVATIONS:
            raise MappingError(
                f"network {name!r}: {module!r} is followed by {activation!r}, which no ruv-FANN "
                f"activation computes (it has {', '.join(ACTIVATIONS)}); set --layout-option "
                f"{WRITE_OPTION}=false to write the tensors without network.json"
            )
        rows, cols = tensor.ref.shape
        if width is not None and cols != width + 1:
            raise MappingError(f"network {name!r}: {module!r} takes {cols - 1} inputs but the layer before it gives {width}")
        width = rows
        layers.append(NetworkLayer(module, tensor, activation))
    if not layers:
        raise MappingError(f"network {name!r} has no layers")
    return NetworkPlan(name, layers)
