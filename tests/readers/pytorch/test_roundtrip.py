"""Byte-exact round trips: torch.save checkpoint -> SafeTensors, compared with the safetensors library's
own reader and with torch.load of the source."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="needs torch to write real checkpoints")

from convert.api import verify_path  # noqa: E402
from tests.support import (  # noqa: E402
    assert_same_state,
    assert_same_tensor,
    convert_api,
    convert_cli,
    every_dtype_tensors,
    file_metadata,
    flatten,
    float_values,
    load_output,
    output_files,
    retie,
    seeded,
    st_code,
    torch_load,
)


def check_roundtrip(src: Path, out: Path, expected: dict[str, Any], doc: dict[str, Any]) -> dict[str, Any]:
    """Output (aliases re-tied) equals `expected` and torch.load(src) byte for byte; names match the manifest."""
    stored = load_output(out)
    full = retie(stored, doc["aliases"])
    assert_same_state(full, expected)
    assert sorted(t["name"] for t in doc["tensors"]) == sorted(stored)
    for t in doc["tensors"]:
        assert t["dtype"] == st_code(stored[t["name"]].dtype)
        assert t["shape"] == list(stored[t["name"]].shape)
        assert t["data_offsets"][1] - t["data_offsets"][0] == stored[t["name"]].numel() * stored[t["name"]].element_size()
    report = verify_path(out, src)
    assert report.ok, report.problems
    assert report.compared_with_source == len(stored)
    return stored


LEGACY_UNTYPED = {"float8_e4m3fn", "float8_e5m2", "float8_e8m0fnu", "uint16", "uint32", "uint64"}


def test_every_dtype_round_trips_byte_exact(torch_format: str, save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """Every dtype torch saves and SafeTensors holds, in both torch.save formats."""
    state = every_dtype_tensors()
    src = save_checkpoint(state, legacy=torch_format == "legacy")
    result, doc = convert_api(src, tmp_path / "out")
    assert doc["source"]["format"] == f"pytorch-{torch_format}"
    assert result.tensors == len(state) and result.aliases == {}
    check_roundtrip(src, tmp_path / "out", state, doc)
    # and the same bytes as torch's own reading of the file. torch.load cannot read back its own
    # legacy files for dtypes without a typed storage class (fp8, uint16/32/64), so those are left out.
    stored = load_output(tmp_path / "out")
    if torch_format == "legacy":
        readable = {k: v for k, v in state.items() if k.split(".")[-1] not in LEGACY_UNTYPED}
        reference = torch_load(save_checkpoint(readable, name="readable.pt", legacy=True))
        stored = {k: stored[k] for k in readable}
    else:
        reference = torch_load(src)
    assert_same_state(stored, reference)
    by_name = {t["name"]: t for t in doc["tensors"]}
    for name, tensor in state.items():
        assert by_name[name]["sources"] == [{"name": name, "dtype": st_code(tensor.dtype), "shape": list(tensor.shape)}]
        assert by_name[name]["transforms"] == [] and by_name[name]["lossy"] is False


def test_every_dtype_via_cli(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """The same round trip through the command line."""
    state = every_dtype_tensors(seed=5)
    src = save_checkpoint(state)
    doc = convert_cli(src, tmp_path / "out")
    check_roundtrip(src, tmp_path / "out", state, doc)


def test_fp8_compared_as_raw_bytes(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """fp8 tensors (NaN encodings included) come back with their exact bit patterns."""
    g = seeded(3)
    raw = torch.randint(0, 256, (16, 16), generator=g, dtype=torch.uint8)
    state = {"e4m3": raw.view(torch.float8_e4m3fn), "e5m2": raw.flip(0).contiguous().view(torch.float8_e5m2)}
    src = save_checkpoint(state)
    convert_api(src, tmp_path / "out")
    out = load_output(tmp_path / "out")
    for name, t in state.items():
        assert out[name].dtype == t.dtype
        assert torch.equal(out[name].view(torch.uint8), t.view(torch.uint8)), name


def test_zero_dim_and_empty_tensors(torch_format: str, save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    state = {
        "scalar.f32": torch.tensor(3.25),
        "scalar.f64": torch.tensor(-1e-300, dtype=torch.float64),
        "scalar.i64": torch.tensor(-(2**62), dtype=torch.int64),
        "scalar.bool": torch.tensor(True),
        "scalar.bf16": torch.tensor(0.1, dtype=torch.bfloat16),
        "empty.rows": torch.zeros(0, 3),
        "empty.cols": torch.ones(3, 0, dtype=torch.int32),
        "empty.flat": torch.empty(0, dtype=torch.float16),
        "empty.deep": torch.empty(2, 0, 4, dtype=torch.uint8),
    }
    src = save_checkpoint(state, legacy=torch_format == "legacy")
    _, doc = convert_api(src, tmp_path / "out")
    stored = check_roundtrip(src, tmp_path / "out", state, doc)
    assert stored["scalar.f32"].dim() == 0 and stored["scalar.f32"].item() == 3.25
    by_name = {t["name"]: t for t in doc["tensors"]}
    assert by_name["scalar.i64"]["shape"] == [] and by_name["empty.deep"]["shape"] == [2, 0, 4]
    assert by_name["empty.rows"]["data_offsets"][0] == by_name["empty.rows"]["data_offsets"][1]


def test_non_contiguous_views(torch_format: str, save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """Transposes, strided slices and narrow slices of a larger storage are written as their own
    C-ordered values, never as the whole storage."""
    g = seeded(4)
    base = torch.randn(6, 8, generator=g)
    big = torch.randn(10, 4, generator=g)
    ints = torch.arange(60, dtype=torch.int16).reshape(3, 4, 5)
    state = {
        "transposed": base.t(),
        "strided": base[:, ::2],
        "narrow": big[3:7],
        "row": big[9],
        "permuted": ints.permute(2, 0, 1),
        "column": ints[:, 1, :],
    }
    for name, t in state.items():
        if name not in ("narrow", "row"):
            assert not t.is_contiguous(), name
    src = save_checkpoint(state, legacy=torch_format == "legacy")
    _, doc = convert_api(src, tmp_path / "out")
    stored = check_roundtrip(src, tmp_path / "out", {k: v.contiguous() for k, v in state.items()}, doc)
    assert stored["narrow"].shape == (4, 4)
    # the file holds only the views' elements, not the 10x4 and 6x8 storages behind them
    data = sum(t.numel() * t.element_size() for t in state.values())
    (path,) = output_files(tmp_path / "out")
    assert sum(t["data_offsets"][1] - t["data_offsets"][0] for t in doc["tensors"]) == data
    assert path.stat().st_size < data + 4096


def test_views_of_one_storage_are_not_aliases(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """Different views of one storage hold different values: each is stored, none is an alias."""
    base = torch.arange(24, dtype=torch.float32).reshape(4, 6)
    state = {
        "whole": base,
        "top": base[:2],
        "bottom": base[2:],
        "t": base.t(),
        "same_shape_other_offset": base.view(-1)[1:13].view(2, 6),
    }
    src = save_checkpoint(state)
    result, doc = convert_api(src, tmp_path / "out")
    assert doc["aliases"] == {} and result.aliases == {}
    check_roundtrip(src, tmp_path / "out", {k: v.contiguous() for k, v in state.items()}, doc)


def test_tied_tensors_stored_once(torch_format: str, save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """An embedding tied to the output head: one copy in the file, the alias in file metadata and manifest."""
    torch.manual_seed(0)
    embed = torch.nn.Embedding(11, 6)
    head = torch.nn.Linear(6, 11, bias=False)
    head.weight = embed.weight
    state = {"embed.weight": embed.weight, "proj.weight": torch.randn(6, 6), "lm_head.weight": head.weight}
    src = save_checkpoint(state, legacy=torch_format == "legacy")
    result, doc = convert_api(src, tmp_path / "out")
    assert result.aliases == {"lm_head.weight": "embed.weight"}
    assert doc["aliases"] == {"lm_head.weight": "embed.weight"}
    (path,) = output_files(tmp_path / "out")
    assert file_metadata(path) == {"format": "pt", "lm_head.weight": "embed.weight"}
    stored = check_roundtrip(src, tmp_path / "out", {k: v.detach() for k, v in state.items()}, doc)
    assert set(stored) == {"embed.weight", "proj.weight"}
    assert sum(t["data_offsets"][1] - t["data_offsets"][0] for t in doc["tensors"]) == (11 * 6 + 6 * 6) * 4


def test_tied_module_state_dict(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """A module whose state_dict has a tie loads back strictly once the alias is re-tied."""
    torch.manual_seed(2)
    model = torch.nn.Sequential(torch.nn.Embedding(9, 4), torch.nn.Linear(4, 9, bias=False))
    model[1].weight = model[0].weight
    src = save_checkpoint(model.state_dict())
    _, doc = convert_api(src, tmp_path / "out")
    assert doc["aliases"] == {"1.weight": "0.weight"}
    fresh = torch.nn.Sequential(torch.nn.Embedding(9, 4), torch.nn.Linear(4, 9, bias=False))
    fresh.load_state_dict(retie(load_output(tmp_path / "out"), doc["aliases"]), strict=True)
    assert torch.equal(fresh[0].weight, model[0].weight) and torch.equal(fresh[1].weight, model[1].weight)


def test_lightning_checkpoint(
    torch_format: str, save_checkpoint: Callable[..., Path], tmp_path: Path, small_state_dict: dict[str, Any]
) -> None:
    """A Lightning .ckpt: state_dict is found by itself, optimizer tensors are left out, and the
    hyper-parameters land in the manifest's source details."""
    ckpt = {
        "epoch": 3,
        "global_step": 120,
        "pytorch-lightning_version": "2.4.0",
        "state_dict": small_state_dict,
        "hyper_parameters": {"lr": 0.001, "hidden": 8, "name": "tiny", "betas": (0.9, 0.999), "layers": [8, 3]},
        "optimizer_states": [
            {
                "state": {0: {"step": torch.tensor(120.0), "exp_avg": torch.randn(8, 5)}},
                "param_groups": [{"lr": 0.001, "params": [0, 1]}],
            }
        ],
        "lr_schedulers": [],
        "loops": {"fit_loop": {"epoch_progress": {"current": {"completed": 3}}}},
    }
    src = save_checkpoint(ckpt, name="last.ckpt", legacy=torch_format == "legacy")
    _, doc = convert_api(src, tmp_path / "out")
    check_roundtrip(src, tmp_path / "out", small_state_dict, doc)
    details = doc["source"]["details"]
    assert details["key"] == "state_dict"
    facts = details["checkpoint"]
    assert facts["hyper_parameters"] == {"lr": 0.001, "hidden": 8, "name": "tiny", "betas": [0.9, 0.999], "layers": [8, 3]}
    assert facts["epoch"] == 3 and facts["global_step"] == 120


def test_key_picks_a_nested_dict(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    g = seeded(6)
    ema = {"w": torch.randn(3, 3, generator=g), "b": torch.randn(3, generator=g)}
    raw = {"w": torch.randn(3, 3, generator=g), "b": torch.randn(3, generator=g)}
    src = save_checkpoint({"model": {"ema": ema, "raw": raw}, "step": 5, "optimizer": {"lr": torch.tensor(0.1)}})
    _, doc = convert_api(src, tmp_path / "out", key="model.ema")
    assert_same_state(load_output(tmp_path / "out"), ema)
    assert doc["source"]["details"]["key"] == "model.ema"
    # verify --source needs the same key to find the tensors
    report = verify_path(tmp_path / "out", src, key="model.ema")
    assert report.ok, report.problems
    doc = convert_cli(src, tmp_path / "out_cli", "--key", "model.raw")
    assert_same_state(load_output(tmp_path / "out_cli"), raw)
    assert doc["source"]["details"]["key"] == "model.raw"


def test_nested_dict_without_key_is_flattened(torch_format: str, save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    g = seeded(7)
    obj = {
        "encoder": {"layer": {"0": {"weight": torch.randn(2, 2, generator=g)}, "1": {"weight": torch.randn(2, 2, generator=g)}}},
        "decoder": {"weight": torch.randn(4, generator=g).to(torch.float16)},
        "meta": {"epoch": 4, "note": "not a tensor"},
    }
    src = save_checkpoint(obj, legacy=torch_format == "legacy")
    _, doc = convert_api(src, tmp_path / "out")
    expected = flatten(obj)
    assert sorted(expected) == ["decoder.weight", "encoder.layer.0.weight", "encoder.layer.1.weight"]
    check_roundtrip(src, tmp_path / "out", expected, doc)
    assert set(doc["source"]["details"].get("skipped_non_tensors", [])) == {"meta.epoch", "meta.note"}


class ConvBN(torch.nn.Module):
    """Conv2d + BatchNorm2d, then a BatchNorm1d without affine parameters on the pooled features."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)
        self.head_bn = torch.nn.BatchNorm1d(4, affine=False)

    def forward(self, x: Any) -> Any:
        return self.head_bn(torch.relu(self.bn(self.conv(x))).mean(dim=(2, 3)))


def test_module_state_dict_with_buffers(torch_format: str, save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """BatchNorm running statistics and the int64 num_batches_tracked buffer survive exactly."""
    torch.manual_seed(8)
    model = ConvBN().train()
    for _ in range(3):
        model(torch.randn(2, 3, 6, 6))
    state = model.state_dict()
    assert int(state["bn.num_batches_tracked"]) == 3
    assert not torch.equal(state["bn.running_mean"], torch.zeros(4))
    src = save_checkpoint(state, legacy=torch_format == "legacy")
    _, doc = convert_api(src, tmp_path / "out")
    stored = check_roundtrip(src, tmp_path / "out", dict(state), doc)
    assert stored["bn.num_batches_tracked"].dtype == torch.int64
    dtypes = {t["name"]: t["dtype"] for t in doc["tensors"]}
    assert dtypes["head_bn.num_batches_tracked"] == "I64" and dtypes["head_bn.running_var"] == "F32"
    assert "head_bn.weight" not in stored
    fresh = ConvBN()
    fresh.load_state_dict(stored, strict=True)
    model.eval(), fresh.eval()
    x = torch.randn(2, 3, 6, 6, generator=seeded(9))
    assert torch.equal(fresh(x), model(x))


# ---------------------------------------------------------------------------------------------
# --dtype
# ---------------------------------------------------------------------------------------------


def cast_source_state() -> dict[str, Any]:
    """Floating tensors of several precisions (with infinities, overflow and NaN), ints and bools."""
    g = seeded(10)
    x = float_values(400, g).reshape(41, 10)
    return {
        "w.f32": x.to(torch.float32),
        "w.f32_view": x.to(torch.float32).t()[:, 1:],
        "w.f16": x.to(torch.float16),
        "w.bf16": x.to(torch.bfloat16),
        # random values, plus values just under a bfloat16 rounding midpoint (where rounding twice,
        # through float32, and rounding once could disagree)
        "w.f64": torch.cat(
            [
                torch.randn(64, generator=g, dtype=torch.float64) * 100,
                (torch.arange(128, 256, dtype=torch.float64) + 0.5 - 2.0**-30) * 2.0**-7,
            ]
        ).reshape(8, 24),
        "w.f8": torch.randn(4, 4, generator=g).mul(10).to(torch.float8_e4m3fn),
        "ids.i64": torch.randint(-(2**62), 2**62, (5,), generator=g, dtype=torch.int64),
        "ids.i32": torch.randint(-1000, 1000, (3, 3), generator=g, dtype=torch.int32),
        "ids.u8": torch.randint(0, 255, (6,), generator=g, dtype=torch.uint8),
        "mask": torch.rand(5, generator=g) > 0.5,
        "scalar": torch.tensor(1.0 / 3.0),
    }


def assert_cast_equal(actual: Any, expected: Any, name: str) -> None:
    """Bit-for-bit equal, except that a NaN only has to stay a NaN (its payload is not specified)."""
    assert actual.dtype == expected.dtype and actual.shape == expected.shape, name
    if actual.dtype.is_floating_point:
        nan = torch.isnan(expected.float())
        assert torch.equal(torch.isnan(actual.float()), nan), f"{name}: NaN positions differ"
        a = actual.contiguous().reshape(-1)[~nan.reshape(-1)]
        e = expected.contiguous().reshape(-1)[~nan.reshape(-1)]
        assert_same_tensor(a, e, name)
    else:
        assert_same_tensor(actual, expected, name)


WIDER = {"F64": 3, "F32": 2, "F16": 1, "BF16": 1, "F8_E4M3": 0}


@pytest.mark.parametrize("flag,target", [("f16", torch.float16), ("bf16", torch.bfloat16), ("f32", torch.float32)])
def test_dtype_cast_matches_torch(
    flag: str, target: Any, torch_format: str, save_checkpoint: Callable[..., Path], tmp_path: Path
) -> None:
    """--dtype casts floating tensors only, bit for bit as torch's own .to() does (with --cast-loss
    accept: the values include ones the target cannot hold); the manifest records each cast, whether it
    lost precision, and how many values it turned into inf or zero."""
    state = cast_source_state()
    src = save_checkpoint(state, legacy=torch_format == "legacy")
    _, doc = convert_api(src, tmp_path / "out", dtype=flag, cast_loss="accept")
    assert doc["target"]["dtype"] == flag
    stored = load_output(tmp_path / "out")
    code = st_code(target)
    by_name = {t["name"]: t for t in doc["tensors"]}
    for name, t in state.items():
        entry = by_name[name]
        src_code = st_code(t.dtype)
        assert entry["sources"][0]["dtype"] == src_code
        if t.dtype.is_floating_point and t.dtype != target:
            assert_cast_equal(stored[name], t.to(target), name)
            narrowing = WIDER[code] <= WIDER[src_code]
            lost = (
                {
                    "on_loss": "accept",
                    "overflowed": entry["transforms"][0].get("overflowed"),
                    "flushed": entry["transforms"][0].get("flushed"),
                }
                if narrowing
                else {}
            )
            assert entry["transforms"] == [{"op": "cast", "to": code, "lossless": not narrowing, **lost}], name
            if narrowing:
                finite = torch.isfinite(t.double())
                assert lost["overflowed"] == int((finite & ~torch.isfinite(t.to(target).double())).sum()), name
                normal = t.double().abs() >= torch.finfo(t.dtype).smallest_normal
                assert lost["flushed"] == int(((t.to(target) == 0) & normal).sum()), name
            assert entry["lossy"] is narrowing, name
            assert entry["dtype"] == code
        else:  # integers, bools, and tensors already in the target dtype are untouched
            assert_same_tensor(stored[name], t.contiguous(), name)
            assert entry["transforms"] == [] and entry["lossy"] is False, name
    report = verify_path(tmp_path / "out", src)
    assert report.ok, report.problems


def test_cast_via_cli_and_lossless_widening(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    """--dtype f64 on a mixed checkpoint widens exactly; nothing is marked lossy."""
    state = {"a": torch.randn(3, 4).to(torch.bfloat16), "b": torch.randn(5).half(), "c": torch.randn(2, 2), "n": torch.arange(4)}
    src = save_checkpoint(state)
    doc = convert_cli(src, tmp_path / "out", "--dtype", "f64")
    stored = load_output(tmp_path / "out")
    for name, t in state.items():
        expected = t.to(torch.float64) if t.dtype.is_floating_point else t
        assert_same_tensor(stored[name], expected, name)
    assert not any(t["lossy"] for t in doc["tensors"])
    assert all(t["transforms"][0]["lossless"] for t in doc["tensors"] if t["transforms"])


def test_f64_to_f16_matches_torch(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    # k + 0.5 - 2**-30 rounds to k in one step, but to k + 0.5 in float32 and then to the even
    # neighbour: torch rounds through float32, and so does the converter (convert.dtypes.cast_array)
    hard = torch.arange(1024, 1088, dtype=torch.float64) + 0.5 - 2.0**-30
    values = torch.cat([torch.randn(1000, generator=seeded(11), dtype=torch.float64) * 1000, hard])
    src = save_checkpoint({"x": values})
    convert_api(src, tmp_path / "out", dtype="f16")
    assert_cast_equal(load_output(tmp_path / "out")["x"], values.to(torch.float16), "x")


def test_tied_tensors_stay_tied_after_cast(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    w = torch.randn(5, 3)
    src = save_checkpoint({"embed.weight": w, "head.weight": w, "ids": torch.arange(3)})
    _, doc = convert_api(src, tmp_path / "out", dtype="bf16")
    assert doc["aliases"] == {"head.weight": "embed.weight"}
    full = retie(load_output(tmp_path / "out"), doc["aliases"])
    assert_same_tensor(full["head.weight"], w.to(torch.bfloat16), "head.weight")


def test_scalar_and_empty_survive_cast(save_checkpoint: Callable[..., Path], tmp_path: Path) -> None:
    state = {"s": torch.tensor(math.pi), "e": torch.empty(0, 5), "i": torch.tensor(3)}
    src = save_checkpoint(state)
    convert_api(src, tmp_path / "out", dtype="f16")
    stored = load_output(tmp_path / "out")
    assert_same_tensor(stored["s"], state["s"].half(), "s")
    assert_same_tensor(stored["e"], state["e"].half(), "e")
    assert_same_tensor(stored["i"], state["i"], "i")
