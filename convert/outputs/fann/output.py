"""The ruv-FANN output's face: a companion of the tensor output, writing one `<name>.network.json`
per planned dense chain and proving, in `verify`, that each computes what its tensors do."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from convert.errors import ConvertError, UnsupportedFormatError
from convert.hashing import file_digest
from convert.manifest_model import InferredArchitecture, Manifest, Network
from convert.mapping import Layout
from convert.output import write_file
from convert.output_contract import Checked, Conversion, OutputOption, Plan, Role, WriteContext, Written
from convert.source import SourceModel

from .network import ACTIVATIONS, load, network_document
from .plan import SPEC_OPTION, WRITE_OPTION, NetworkPlan, decide_dense_modules, plan_networks


class FannOutput:
    name = "ruv-fann-network-json"
    role: Role = "companion"
    empty_error: type[ConvertError] = UnsupportedFormatError  # never asked: a companion writes beside tensors
    options: Sequence[OutputOption] = (
        OutputOption(WRITE_OPTION, bool, False, "write ruv-FANN network.json files beside the tensors (layout neuro-divergent)"),
        OutputOption(SPEC_OPTION, str, "", "dense chains to write as networks: NAME=PATH:ACT,PATH:ACT[;NAME=...]"),
    )

    def decide(self, architecture: InferredArchitecture, layout: Layout) -> None:
        decide_dense_modules(architecture, layout)

    def plan(self, conversion: Conversion) -> Plan:
        declared = (conversion.source.architecture or {}).get("dense_networks", [])
        networks, warnings = plan_networks(conversion.layout, declared, conversion.mapping.tensors)
        return Plan([n.file for n in networks], warnings=warnings, work=networks)

    def write(self, plan: Plan, staging: Path, context: WriteContext) -> Written:
        return Written(records={"networks": write_networks(staging, plan.work, context.digest)})

    def verify(self, out_dir: Path, manifest: Manifest, source: SourceModel | None) -> Checked:
        checked = Checked()
        for entry in manifest.get("networks", []):
            checked.problems += network_problems(out_dir, entry, manifest)
        return checked


def write_networks(folder: Path, plans: Sequence[NetworkPlan], digest: str) -> list[Network]:
    """Write each planned network into `folder` (a staging folder); their manifest entries."""
    entries: list[Network] = []
    for plan in plans:
        doc = network_document([(layer.tensor.ref.array(), layer.activation) for layer in plan.layers])
        data = (json.dumps(doc, allow_nan=False, separators=(",", ":")) + "\n").encode("utf-8")
        write_file(folder / plan.file, data)
        entries.append(
            {
                "name": plan.name,
                "file": plan.file,
                "format": "ruv-fann-network-json",
                "bytes": len(data),
                "digest": file_digest(folder / plan.file, digest),
                "inputs": plan.layers[0].tensor.ref.shape[1] - 1,
                "outputs": plan.layers[-1].tensor.ref.shape[0],
                "layers": [
                    {
                        "module": layer.module,
                        "tensor": layer.tensor.name,
                        "activation": layer.activation,
                        "function": ACTIVATIONS[layer.activation][0],
                        "steepness": ACTIVATIONS[layer.activation][1],
                    }
                    for layer in plan.layers
                ],
            }
        )
    return entries


def network_problems(out_dir: Path, entry: Network, manifest: Manifest) -> list[str]:
    """What is wrong with one listed network: its digest, or weights and activations that are not
    its tensors' and the manifest's (so `verify` proves the JSON computes what the tensors do)."""
    path = out_dir / entry["file"]
    try:
        if file_digest(path, manifest["digest_algorithm"]) != entry["digest"]:
            return [f"network {entry['file']}: {manifest['digest_algorithm']} differs from the manifest"]
        doc = load(path)
        files = {t["name"]: t["file"] for t in manifest["tensors"]}
        want = [(_read(out_dir / files[layer["tensor"]], layer["tensor"]), layer["activation"]) for layer in entry["layers"]]
    except (OSError, ValueError, KeyError) as exc:
        return [f"network {entry['file']}: cannot be read ({type(exc).__name__}: {exc})"]
    if doc != network_document(want):
        return [f"network {entry['file']}: its neurons are not its tensors' weights and activations"]
    return []


def _read(path: Path, name: str) -> np.ndarray:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        tensor: np.ndarray = f.get_tensor(name)
    return tensor
