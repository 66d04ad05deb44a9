"""The GGUF quantizers against the `gguf` package (llama.cpp's own Python library) and against ggml.

gguf tier (every run): f32, f16, bf16, q8_0, q4_0, q4_1, q5_0, q5_1 blocks equal
`gguf.quants.quantize`'s, and every type's blocks decode with `gguf.quants.dequantize` to the very
float32 values our dequantizer gives. ggml tier (when llama-cpp-python, the `ggml` extra, is
installed): every quantized type, the K-quants above all, equals ggml's own C quantizer,
`ggml_quantize_chunk`, called through ctypes on the library llama-cpp-python builds. Inputs are
random rows at several scales and adversarial ones: zeros, -0.0, constants, ties, a single spike,
values near f32's smallest and f16's largest scales.

Where the two references disagree, ggml is followed: for a block of zeros (q4_0, q5_0) or a block
whose min or max is a zero (q4_1, q5_1), ggml's scan keeps the first zero's sign and numpy's min and
max do not, so gguf's f16 scale or min can be +0 where ggml's is -0. Nothing else differs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from convert.errors import MappingError
from convert.outputs.gguf import quants
from convert.outputs.gguf.ggml_types import BY_ID, TYPES, ggml_type
from tests.support.ggml import MISSING, ggml_quantizer, many_distributions, quantizer_cases

gguf = pytest.importorskip("gguf")

LEGACY = ["f32", "f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"]
K_QUANTS = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
QUANTIZED = [n for n, t in TYPES.items() if t.quantized]


CASES = quantizer_cases()
# For the float types only (the quantized ones refuse them): NaN, infinities, values past f16's range.
SPECIALS = {"specials": np.array([[np.nan, -np.nan, np.inf, -np.inf, 7e4, -1e5, 3e38, 1e-45] * 32], dtype=np.float32)}
FLOATS = [n for n, t in TYPES.items() if not t.quantized]


def gguf_type(name: str):  # noqa: ANN201 - gguf's enum
    return gguf.GGMLQuantizationType[name.upper()]


def reference_bytes(rows: np.ndarray, name: str) -> np.ndarray:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # gguf's own casts of 0 * inf in subnormal blocks
        out = gguf.quants.quantize(rows, gguf_type(name))
    return np.ascontiguousarray(out).view(np.uint8).reshape(rows.shape[0], -1)


def test_type_table_is_ggmls() -> None:
    """Ids, block sizes and bytes per block as the gguf package (which mirrors ggml.h) has them."""
    for name, t in TYPES.items():
        assert gguf_type(name).value == t.id, name
        assert gguf.GGML_QUANT_SIZES[gguf_type(name)] == (t.block_size, t.type_size), name
        assert BY_ID[t.id] is t and ggml_type(name.upper()) is t
    assert TYPES["q4_k"].row_bytes(4096) == 4096 // 256 * 144 and not TYPES["q4_k"].fits(4000)


# The f16 fields (byte offsets) whose zero's sign gguf and ggml may give differently (see above).
SIGNED_ZERO_FIELDS = {"q4_0": [0], "q5_0": [0], "q4_1": [0, 2], "q5_1": [0, 2]}


def unsign_zero_fields(data: np.ndarray, name: str) -> np.ndarray:
    t = ggml_type(name)
    blocks = data.reshape(-1, t.type_size).copy()
    for at in SIGNED_ZERO_FIELDS.get(name, []):
        field = blocks[:, at : at + 2].view("<u2")
        field[(field & 0x7FFF) == 0] = 0
    return blocks


@pytest.mark.parametrize("name", LEGACY)
def test_legacy_bytes_equal_gguf(name: str) -> None:
    for case, rows in {**CASES, **(SPECIALS if name in FLOATS else {})}.items():
        if name in ("q4_1", "q5_1") and case == "large":
            continue  # their f16 min cannot hold -4e4 * 3: refused, see test_scale_overflow_refused
        ours, theirs = quants.quantize(rows, name), reference_bytes(rows, name)
        if (rows == 0).any():  # only there may a zero's sign differ
            ours, theirs = unsign_zero_fields(ours, name), unsign_zero_fields(theirs, name)
        assert np.array_equal(ours, theirs), case


@pytest.mark.parametrize("name", LEGACY + K_QUANTS)
def test_dequantize_equals_gguf(name: str) -> None:
    """Our decoder gives gguf's values bit for bit, on the blocks our encoder makes."""
    t = ggml_type(name)
    for case, rows in CASES.items():
        if name in ("q4_1", "q5_1") and case == "large":
            continue
        data = quants.quantize(rows, t)
        ours = quants.dequantize(data, t, rows.shape)
        theirs = np.asarray(gguf.quants.dequantize(data, gguf_type(name)), dtype=np.float32).reshape(rows.shape)
        assert ours.dtype == np.float32 and ours.shape == rows.shape
        assert np.array_equal(ours.view(np.uint32), theirs.view(np.uint32)), case


# Relative RMS error of each type on normal rows: quantization that works, not noise (llama.cpp's
# reported figures for these types on Gaussian data are about these).
RMS_BOUND = {"q2_k": 0.35, "q3_k": 0.18, "q4_0": 0.1, "q4_1": 0.09, "q4_k": 0.08, "q5_0": 0.05, "q5_1": 0.045}
RMS_BOUND |= {"q5_k": 0.04, "q6_k": 0.02, "q8_0": 0.006, "f16": 1e-3, "bf16": 4e-3, "f32": 0.0}


@pytest.mark.parametrize("name", list(RMS_BOUND))
def test_round_trip_error_is_the_types(name: str) -> None:
    rows = CASES["normal"]
    back = quants.dequantize(quants.quantize(rows, name), name, rows.shape)
    rel = np.sqrt(np.mean((back - rows) ** 2)) / np.sqrt(np.mean(rows**2))
    assert rel <= RMS_BOUND[name]
    zeros = CASES["zeros"]
    assert not quants.dequantize(quants.quantize(zeros, name), name, zeros.shape).any()


@pytest.mark.parametrize("name", QUANTIZED)
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_refused(name: str, bad: float) -> None:
    rows = CASES["normal"][:2].copy()
    rows[1, 300] = bad
    with pytest.raises(MappingError, match=r"^model\.w: 1 value\(s\) are NaN or infinite, which .* cannot hold$") as err:
        quants.quantize(rows, name, what="model.w")
    assert err.value.exit_code == 7


@pytest.mark.parametrize("name", QUANTIZED)
def test_scale_overflow_refused(name: str) -> None:
    """Values whose block scale f16 cannot hold (ggml would write inf and decode inf and NaN)."""
    rows = CASES["normal"][:1] * np.float32(1e9)
    with pytest.raises(MappingError, match=rf"^w: a {name} block's f16 scale would be .* f16 holds at most 65504"):
        quants.quantize(rows, name, what="w")
    extreme = np.full((1, 256), np.finfo(np.float32).max, np.float32)
    extreme[0, ::2] *= -1  # max - min overflows float32 itself
    with pytest.raises(MappingError, match=f"too large for {name}"):
        quants.quantize(extreme, name, what="w")


def test_shapes_checked() -> None:
    with pytest.raises(ValueError, match="whole number of q4_k blocks"):
        quants.quantize(np.zeros((2, 320), np.float32), "q4_k")
    with pytest.raises(ValueError, match="float32"):
        quants.quantize(np.zeros((2, 256)), "q8_0")
    with pytest.raises(ValueError, match="not q8_0 data"):
        quants.dequantize(np.zeros(33, np.uint8), "q8_0", (32,))
    for name in TYPES:  # no rows: nothing to do, no error
        empty = quants.quantize(np.zeros((0, 256), np.float32), name)
        assert empty.shape == (0, ggml_type(name).row_bytes(256))
        assert quants.dequantize(empty, name, (0, 256)).shape == (0, 256)


def test_sums_are_sequential() -> None:
    """The K-quants rely on numpy adding a C-ordered array's rows one after the other, as the C loops
    add; a numpy that summed pairwise along that axis would change rare last bits (caught here)."""
    rng = np.random.default_rng(0)
    a = (rng.standard_normal((32, 4096)) * np.exp(rng.standard_normal((32, 4096)) * 4)).astype(np.float32)
    acc = a[0].copy()
    for row in a[1:]:
        acc += row
    assert np.array_equal(quants._seqsum(a), acc)


# ---------------------------------------------------------------------------------------- ggml tier


@pytest.fixture(scope="module")
def ggml_quantize():  # noqa: ANN201 - a function
    run = ggml_quantizer()
    if run is None:
        pytest.skip(MISSING)
    return run


@pytest.mark.parametrize("name", list(TYPES))
def test_bytes_equal_ggml(name: str, ggml_quantize) -> None:  # noqa: ANN001 - a fixture
    cases = {**CASES, "distributions": many_distributions(), **(SPECIALS if name in FLOATS else {})}
    for case, rows in cases.items():
        theirs = ggml_quantize(rows, name)
        try:
            ours = quants.quantize(rows, name)
        except quants.QuantizationError:
            # refused exactly where ggml writes an f16 scale or min that decodes to inf or NaN
            assert not np.isfinite(quants.dequantize(theirs, name, rows.shape)).all(), case
            continue
        differ = np.flatnonzero((ours != theirs).any(axis=1))
        assert not differ.size, f"{case}: rows {differ[:10].tolist()} differ"
