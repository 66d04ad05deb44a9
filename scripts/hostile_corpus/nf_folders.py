"""NeuralForecast save folders: the 1.7.1 to 3.2 layout ({alias}_{i}.ckpt plus pickles) with classes
no reader knows, and 3.3+ folders (nf_format 2) with one hyper-parameter replaced."""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping

from hostile_corpus.common import CANARY, REPO, Hostile
from hostile_corpus.pickles import NO_CANARY, OS_SYSTEM, ZIP, call, dump, glob, tensor
from hostile_corpus.torch_files import TorchBase, zip_checkpoint


def nf_folder(
    base: TorchBase, alias_to_model: bytes | None = None, configuration: bytes | None = None, ckpt: bytes | None = None
) -> dict[str, bytes]:
    """``NeuralForecast.save``'s files for one MLP; any of them replaced."""
    benign_ckpt = zip_checkpoint(
        base, dump({"hyper_parameters": {"h": 12, "input_size": 24}, "state_dict": {"mlp.0.weight": tensor(ZIP.storage())}})
    )
    return {
        "MLP_0.ckpt": ckpt or benign_ckpt,
        "alias_to_model.pkl": alias_to_model or dump({"MLP": "mlp"}, 4),
        "configuration.pkl": configuration or dump({"h": 12, "freq": "ME", "_fitted": True}, 4),
    }


def neuralforecast_files(base: TorchBase) -> list[Hostile]:
    writer = call(glob("neuralforecast_plugins.hooks", "WriteCanary"), CANARY)
    return [
        Hostile(
            "nf_unknown_class",
            "neuralforecast",
            "configuration.pkl holds neuralforecast_plugins.hooks.WriteCanary"
            "('canary'): a global of a module that does not exist" + NO_CANARY,
            False,
            nf_folder(base, configuration=dump({"h": 12, "freq": "ME", "scalers_": {"y": writer}}, 4)),
        ),
        Hostile(
            "nf_os_system",
            "neuralforecast",
            "alias_to_model.pkl is os.system('touch canary')",
            True,
            nf_folder(base, alias_to_model=dump({"MLP": OS_SYSTEM}, 4)),
        ),
        Hostile(
            "nf_ckpt_os_system",
            "neuralforecast",
            "MLP_0.ckpt hides os.system(...) in its hyper_parameters",
            True,
            nf_folder(
                base,
                ckpt=zip_checkpoint(
                    base, dump({"hyper_parameters": {"loss": OS_SYSTEM}, "state_dict": {"mlp.0.weight": tensor(ZIP.storage())}})
                ),
            ),
        ),
    ]


# NeuralForecast 3.3+ folders (nf_format 2): the bundled fixture's MLP with one hyper-parameter replaced
NF3_FIXTURE = REPO / "fixtures" / "neuralforecast" / "3.3.0" / "folder"


def nf3_folder(edit: Mapping[str, object]) -> dict[str, bytes]:
    """The fixture's configuration and MLP_0.safetensors, whose hyper_parameters metadata gets `edit`."""
    data = (NF3_FIXTURE / "MLP_0.safetensors").read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    hparams = {**json.loads(header["__metadata__"]["hyper_parameters"]), **edit}
    header["__metadata__"]["hyper_parameters"] = json.dumps(hparams)
    text = json.dumps(header).encode()
    text += b" " * (-(8 + len(text)) % 8)
    files = {name: (NF3_FIXTURE / name).read_bytes() for name in ("configuration.json", "configuration.safetensors")}
    return {**files, "MLP_0.safetensors": struct.pack("<Q", len(text)) + text + data[8 + length :]}


def nf_config_value_files() -> list[Hostile]:
    """Well-formed configs whose values are hostile: each is corrupt (6), never exit 1 or an allocation."""
    cases = [
        ("nf_infinite_horizon", "h = Infinity: int() raised OverflowError", {"h": float("inf")}),
        ("nf_nan_series_count", "n_series = NaN where a count belongs", {"n_series": float("nan")}),
        (
            "nf_gib_per_element_dtype",
            "an inline array of dtype <U500000000 (2 GB per element, from 1 KB)",
            {"optimizer_kwargs": {"__nf__": "array", "dtype": "<U500000000", "shape": [1], "values": ["a"]}},
        ),
        (
            "nf_void_dtype",
            "an inline array of dtype |V1000000000",
            {"optimizer_kwargs": {"__nf__": "array", "dtype": "|V1000000000", "shape": [1], "values": [0]}},
        ),
        (
            "nf_datetime_past_int64",
            "a datetime64 value of 2**63 ticks",
            {"h": {"__nf__": "datetime64", "unit": "ns", "values": [2**63]}},
        ),
        ("nf_list_as_tag", "a value tag that is a list, not a name", {"h": {"__nf__": ["loss"]}}),
        (
            "nf_level_overflow",
            "an MQLoss level of 1e300 percent (a float32 overflow warning line)",
            {"loss": {"__nf__": "loss", "cls": "MQLoss", "args": {"level": [1e300]}}},
        ),
        ("nf_layer_count_1e9", "num_layers = 1e9: the shape check looped a billion times", {"num_layers": 1e9}),
    ]
    return [Hostile(name, "neuralforecast", attack + NO_CANARY, False, nf3_folder(edit)) for name, attack, edit in cases]
