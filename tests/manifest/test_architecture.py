"""Architecture inference checked against real torch modules.

Expected types and params are read from each module's own attributes, never hard-coded, so the
tests pin the inference to what PyTorch actually builds and saves.
"""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from collections.abc import Callable
from typing import Any

import pytest
import torch
from torch import nn

from tests.support import REPO

MODULE_FILE = REPO / "convert" / "architecture.py"


def _load_infer() -> Callable[..., dict]:
    """Use the package once it exists; until then load the file alone, whoever writes the package."""
    if (REPO / "convert" / "__init__.py").exists():
        if str(REPO) not in sys.path:
            sys.path.insert(0, str(REPO))
        from convert.architecture import infer_architecture

        return infer_architecture
    spec = importlib.util.spec_from_file_location("convert_architecture", MODULE_FILE)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module.infer_architecture


infer_architecture = _load_infer()


def shapes(model: nn.Module) -> list[tuple[str, tuple[int, ...]]]:
    return [(name, tuple(tensor.shape)) for name, tensor in model.state_dict().items()]


def expected_spec(m: nn.Module) -> tuple[str, dict[str, Any]]:
    """What the inference should report for `m`, from `m`'s own attributes."""
    if isinstance(m, nn.Embedding):
        return "Embedding", {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim}
    if isinstance(m, nn.Linear):
        return "Linear", {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None}
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        return f"Conv{len(m.kernel_size)}d", {
            "out_channels": m.out_channels,
            "in_channels_per_group": m.in_channels // m.groups,
            "kernel_size": list(m.kernel_size),
            "bias": m.bias is not None,
        }
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)):
        params = {"num_features": m.num_features, "affine": m.affine, "track_running_stats": m.track_running_stats}
        return "BatchNorm", params
    if isinstance(m, nn.LayerNorm):
        return "LayerNorm", {
            "normalized_shape": list(m.normalized_shape),
            "elementwise_affine": m.elementwise_affine,
            "bias": m.bias is not None,
        }
    if isinstance(m, (nn.LSTM, nn.GRU, nn.RNN)):
        params = {
            "input_size": m.input_size,
            "hidden_size": m.hidden_size,
            "num_layers": m.num_layers,
            "bias": m.bias,
            "bidirectional": m.bidirectional,
        }
        if isinstance(m, nn.LSTM):
            params["proj_size"] = m.proj_size
        if isinstance(m, nn.RNN):
            params["nonlinearity"] = None
        return type(m).__name__, params
    if isinstance(m, nn.MultiheadAttention):
        return "MultiheadAttention", {
            "embed_dim": m.embed_dim,
            "kdim": m.kdim,
            "vdim": m.vdim,
            "bias": m.in_proj_bias is not None,
            "add_bias_kv": m.bias_k is not None,
            "num_heads": None,
        }
    raise AssertionError(f"no expectation for {type(m).__name__}")


def expected_modules(model: nn.Module) -> list[dict]:
    """One entry per submodule that owns tensors; attention absorbs its out_proj."""
    state = list(model.state_dict())
    absorbed = {f"{path}.out_proj" for path, m in model.named_modules() if isinstance(m, nn.MultiheadAttention)}
    entries = []
    for path, m in model.named_modules(remove_duplicate=False):
        owned = [name for name in state if name.rpartition(".")[0] == path]
        if path in absorbed or not owned or not path:
            continue
        if isinstance(m, nn.MultiheadAttention):
            owned += [name for name in state if name.rpartition(".")[0] == f"{path}.out_proj"]
        kind, params = expected_spec(m)
        entry = {"path": path, "type": kind, "params": params, "tensors": owned}
        others = expected_alternatives(m, path.rpartition(".")[2])
        if others:
            entry["alternatives"] = others
        entries.append(entry)
    return entries


def expected_alternatives(m: nn.Module, name: str) -> list[dict]:
    """The other types the same names and shapes fit: a bias-free Linear or an Embedding, a square
    Linear with bias or transformers' Conv1D ([in, out]), a bias-free LayerNorm or a PReLU."""
    if isinstance(m, nn.Linear) and m.bias is None:
        return [{"type": "Embedding", "params": {"num_embeddings": m.out_features, "embedding_dim": m.in_features}}]
    if isinstance(m, nn.Linear) and m.in_features == m.out_features and name in ("c_attn", "q_attn", "c_proj", "c_fc"):
        return [{"type": "Conv1D", "params": {"in_features": m.out_features, "out_features": m.in_features, "bias": True}}]
    if isinstance(m, nn.Embedding):
        return [{"type": "Linear", "params": {"in_features": m.embedding_dim, "out_features": m.num_embeddings, "bias": False}}]
    if isinstance(m, nn.LayerNorm) and m.elementwise_affine and m.bias is None:
        return [{"type": "PReLU", "params": {"num_parameters": m.normalized_shape[0]}}]
    return []


SINGLE_MODULES: dict[str, Callable[[], nn.Module]] = {
    "linear": lambda: nn.Linear(6, 10),
    "linear_no_bias": lambda: nn.Linear(6, 10, bias=False),
    "conv1d": lambda: nn.Conv1d(3, 8, kernel_size=5),
    "conv2d_groups": lambda: nn.Conv2d(8, 12, kernel_size=(3, 5), groups=4, bias=False),
    "conv3d": lambda: nn.Conv3d(2, 4, kernel_size=(1, 2, 3)),
    "batchnorm1d": lambda: nn.BatchNorm1d(7),
    "batchnorm2d_no_affine": lambda: nn.BatchNorm2d(5, affine=False),
    "layernorm": lambda: nn.LayerNorm(9),
    "layernorm_no_bias": lambda: nn.LayerNorm(9, bias=False),
    "lstm_deep_bidirectional": lambda: nn.LSTM(5, 8, num_layers=2, bidirectional=True),
    "lstm_proj": lambda: nn.LSTM(5, 8, num_layers=2, bidirectional=True, proj_size=3),
    "gru": lambda: nn.GRU(4, 6, num_layers=3, bias=False),
    "rnn": lambda: nn.RNN(4, 6, nonlinearity="relu", bidirectional=True),
    "mha_packed": lambda: nn.MultiheadAttention(16, 4),
    "mha_packed_no_bias": lambda: nn.MultiheadAttention(16, 4, bias=False),
    "mha_kdim_vdim": lambda: nn.MultiheadAttention(16, 2, kdim=5, vdim=7, add_bias_kv=True),
}


@pytest.mark.parametrize("make", SINGLE_MODULES.values(), ids=SINGLE_MODULES.keys())
def test_single_module(make: Callable[[], nn.Module]) -> None:
    # Wrapped so its tensors sit below a path (a bare module at the root is tested on its own).
    model = nn.ModuleDict({"layer": make()})
    result = infer_architecture(shapes(model))
    assert result == {"inferred": True, "modules": expected_modules(model), "unknown": []}
    assert len(result["modules"]) == 1


def test_embedding_needs_a_hint_in_its_path() -> None:
    model = nn.ModuleDict({"tok_embeddings": nn.Embedding(50, 8), "proj": nn.Linear(50, 8, bias=False)})
    (embedding, linear) = infer_architecture(shapes(model))["modules"]
    assert (embedding["type"], linear["type"]) == ("Embedding", "Linear")
    assert embedding == expected_modules(model)[0]


def test_hf_conv1d_from_shapes_and_from_config() -> None:
    """transformers' Conv1D stores weight [in, out] and bias [out]: a bias matching the columns of a
    non-square weight is one; a square one is a guess (Linear, or Conv1D) until config.json's
    model_type names the GPT-2 family."""
    transformers = pytest.importorskip("transformers")
    from transformers.pytorch_utils import Conv1D

    model = nn.ModuleDict({"c_attn": Conv1D(24, 8), "c_proj": Conv1D(8, 8)})
    found = {m["path"]: m for m in infer_architecture(shapes(model))["modules"]}
    assert found["c_attn"]["type"] == "Conv1D" and "alternatives" not in found["c_attn"]
    assert found["c_attn"]["params"] == {"in_features": 8, "out_features": 24, "bias": True}
    assert found["c_proj"]["type"] == "Linear" and [a["type"] for a in found["c_proj"]["alternatives"]] == ["Conv1D"]
    decided = {m["path"]: m for m in infer_architecture(shapes(model), {"model_type": "gpt2"})["modules"]}
    assert decided["c_proj"]["type"] == "Conv1D" and "alternatives" not in decided["c_proj"]
    assert decided["c_proj"]["decided_by"] == "config.json model_type 'gpt2'"
    assert transformers.GPT2Config().model_type == "gpt2"


def test_transformer_encoder_layer() -> None:
    model = nn.ModuleDict({"encoder": nn.TransformerEncoderLayer(d_model=16, nhead=4, dim_feedforward=32)})
    result = infer_architecture(shapes(model))
    assert result["unknown"] == []
    assert result["modules"] == expected_modules(model)
    types = [m["type"] for m in result["modules"]]
    assert types == ["MultiheadAttention", "Linear", "Linear", "LayerNorm", "LayerNorm"]


class Composite(nn.Module):
    """Tied input/output embedding (as in GPT-2) plus a root-level parameter (as ViT's cls_token)."""

    def __init__(self) -> None:
        super().__init__()
        self.cls_token = nn.Parameter(torch.zeros(1, 1, 8))
        self.wte = nn.Embedding(20, 8)
        self.blocks = nn.Sequential(nn.Conv1d(8, 8, 3, padding=1), nn.BatchNorm1d(8), nn.LayerNorm(8))
        self.lm_head = nn.Linear(8, 20, bias=False)
        self.lm_head.weight = self.wte.weight


def test_composite_with_tied_weight_and_root_parameter() -> None:
    model = Composite()
    result = infer_architecture(shapes(model))
    assert result["modules"] == expected_modules(model)
    assert result["unknown"] == ["cls_token"]
    by_path = {m["path"]: m for m in result["modules"]}
    assert by_path["wte"]["tensors"] == ["wte.weight"]
    assert by_path["lm_head"]["tensors"] == ["lm_head.weight"]


@pytest.mark.parametrize(
    "tensors",
    [
        [],
        [("a..b", (3, 4)), (".weight", (2,)), ("m.", (2,)), ("", ())],
        [("m.weight", ()), ("n.weight", (2, 3, 4, 5, 6, 7)), ("o.bias", (4,))],
        [("m.weight", (3, 4)), ("m.weight", (3, 4))],
        [("m.weight", (3, -4)), ("n.weight", (True, 2)), ("o.weight", "34"), ("p.weight", None), ("q.weight", (2.0,))],
        [("m.running_mean", (4,)), ("m.running_var", (5,))],
        [("m.running_mean", (4,)), ("m.running_var", (4,)), ("m.weight", (4,))],
        [("m.weight_ih_l0", (8, 3)), ("m.weight_hh_l0", (8, 0))],
        [("m.weight_ih_l0", (8, 3)), ("m.weight_hh_l0", (8, 2)), ("m.weight_ih_l2", (8, 2)), ("m.weight_hh_l2", (8, 2))],
        [("m.weight_ih_l0", (10, 3)), ("m.weight_hh_l0", (10, 2))],
        [("m.weight_ih_l00", (4, 3)), ("m.weight_hh_l00", (4, 4))],
        [("m.weight_ih_l999999999999", (4, 3))],
    ],
)
def test_odd_input_is_unknown_without_raising(tensors: list) -> None:
    result = infer_architecture(tensors)
    assert result == {"inferred": True, "modules": [], "unknown": [name for name, _ in tensors]}


@pytest.mark.parametrize(
    "tensors",
    [
        [("m.in_proj_weight", (12, 4)), ("m.out_proj.weight", (4, 5))],
        [("m.in_proj_weight", (12, 4)), ("m.in_proj_bias", (12,)), ("m.out_proj.weight", (4, 4))],
    ],
)
def test_inconsistent_attention_leaves_out_proj_alone(tensors: list) -> None:
    result = infer_architecture(tensors)
    assert [(m["path"], m["type"]) for m in result["modules"]] == [("m.out_proj", "Linear")]
    assert result["unknown"] == [name for name, _ in tensors if name.startswith("m.in_proj")]


def test_unnamed_items_are_skipped() -> None:
    tensors = [None, 3, ("only-name",), (7, (2,)), ("a", (1,), "extra"), "ab", ("m.weight", (2,))]
    result = infer_architecture(tensors)
    assert result["unknown"] == []
    assert [m["path"] for m in result["modules"]] == ["m"]


def test_fuzz_every_name_reported_exactly_once() -> None:
    rng = random.Random(0)
    parts = [
        "m",
        "out_proj",
        "weight",
        "bias",
        "running_mean",
        "running_var",
        "weight_ih_l0",
        "weight_hh_l0",
        "in_proj_weight",
        "q_proj_weight",
        "embed",
        "",
        "0",
        "l1",
    ]
    for _ in range(2000):
        tensors = [
            (".".join(rng.choices(parts, k=rng.randint(1, 3))), tuple(rng.choices(range(7), k=rng.randint(0, 5))))
            for _ in range(rng.randint(0, 8))
        ]
        result = infer_architecture(tensors)
        reported = [name for m in result["modules"] for name in m["tensors"]] + result["unknown"]
        assert sorted(reported) == sorted(name for name, _ in tensors)


def test_module_imports_without_torch_or_numpy() -> None:
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.spec_from_file_location('convert_architecture', {str(MODULE_FILE)!r})\n"
        "module = importlib.util.module_from_spec(spec)\n"
        "sys.modules[spec.name] = module\n"
        "spec.loader.exec_module(module)\n"
        "module.infer_architecture([('m.weight', (2, 3))])\n"
        "leaked = sorted({'torch', 'numpy'} & set(sys.modules))\n"
        "assert not leaked, leaked\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=REPO)


def test_bare_module_at_the_root_has_the_empty_path() -> None:
    """A module saved on its own (torch.save(nn.GRU(...).state_dict())) has no prefix at all."""
    gru = torch.nn.GRU(3, 5, num_layers=2)
    result = infer_architecture([(k, tuple(v.shape)) for k, v in gru.state_dict().items()])
    assert [(m["path"], m["type"]) for m in result["modules"]] == [("", "GRU")]
    assert result["modules"][0]["params"]["num_layers"] == gru.num_layers and result["unknown"] == []
    linear = infer_architecture([("weight", (3, 4)), ("bias", (3,))])
    assert linear["modules"][0]["path"] == "" and linear["modules"][0]["params"]["in_features"] == 4
