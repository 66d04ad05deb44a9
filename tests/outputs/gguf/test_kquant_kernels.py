"""The compiled K-quant searches (convert/outputs/gguf/kernels.py, numba: the `fast` extra) against
the numpy searches they replace and against ggml.

Each compiled search gives the numpy search's float32 results bit for bit (scales, mins, levels) on
the quantizer cases of test_quants.py, many distributions at scales from 1e-12 to 1e3, and values
whose squares or spans overflow; whole rows quantize to the same bytes, and raise the same errors,
on either path; with llama-cpp-python installed, both paths also equal ggml's own C quantizer. Both
paths are chosen as a user would: CONVERT_GGUF_KERNELS=numpy, or no numba at all (in a subprocess).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import pytest

from convert.outputs.gguf import quants
from tests.support.ggml import ggml_quantizer, many_distributions, quantizer_cases

K_QUANTS = ["q2_k", "q3_k", "q4_k", "q5_k", "q6_k"]
NUMBA_MISSING = "the compiled K-quant searches need numba (pip install 'rust-model-convert[fast]')"


def _rows() -> dict[str, np.ndarray]:
    extreme = np.full((1, 512), np.finfo(np.float32).max, np.float32)
    extreme[0, ::2] *= -1  # max - min overflows float32
    return {**quantizer_cases(), "distributions": many_distributions(), "huge": quantizer_cases()["normal"] * np.float32(1e9)}


ROWS = _rows()


@pytest.fixture(scope="module")
def kernels() -> dict[str, Callable[..., tuple[np.ndarray, ...]]]:
    pytest.importorskip("numba", reason=NUMBA_MISSING)
    return quants.compiled_kernels()


@pytest.fixture
def path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[bool]:
    """Runs a test with quants.COMPILED set as the parameter says."""
    monkeypatch.setattr(quants, "COMPILED", request.param)
    yield request.param


def _same_bits(a: np.ndarray, b: np.ndarray, signed_zeros: bool = True) -> bool:
    """Equal float32 arrays bit for bit, any NaN equal to any NaN (the overflow cases make them, and the
    quantizer refuses them whatever their payload); `signed_zeros` False: -0.0 equal to +0.0."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    if not signed_zeros:
        a, b = a + np.float32(0), b + np.float32(0)
    nan = np.isnan(a)
    return (
        a.shape == b.shape
        and np.array_equal(nan, np.isnan(b))
        and np.array_equal(a[~nan].view(np.uint32), b[~nan].view(np.uint32))
    )


def _columns(rows: np.ndarray, n: int) -> np.ndarray:
    return quants._columns(rows.reshape(-1, 256), n)


# The searches' calls as the quantizers make them: (search, group size, arguments after x)
def _qkx2_q45(nmax: int, rmin: float, nstep: int) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    def args(x: np.ndarray) -> tuple[np.ndarray, ...]:
        return (x, quants._q45_weights(x), nmax, rmin, 0.1, nstep, False)

    return args


def _requantize_args(offset: bool, lo: int, hi: int, base: int) -> Callable[[np.ndarray], tuple[np.ndarray, ...]]:
    """A last pass's arguments: steps of every size a stored scale gives, zeros and subnormals among them."""

    def args(x: np.ndarray) -> tuple[np.ndarray, ...]:
        rng = np.random.default_rng(x.shape[1])
        step = (rng.standard_normal(x.shape[1]) * 10.0 ** rng.integers(-44, 3, x.shape[1])).astype(np.float32)
        step[::7] = 0
        shift = (np.abs(rng.standard_normal(x.shape[1])) * 0.1).astype(np.float32) if offset else None
        levels = (rng.integers(lo, hi + 1, x.shape) + base).astype(np.float32)
        return (x, levels, step, shift, lo, hi, base)

    return args


# The compiled kernels' calls as the quantizers make them: (numpy function, group size, arguments)
TWINS = {
    "q4_k": ("_make_qkx2", 32, _qkx2_q45(15, -1.0, 20)),
    "q5_k": ("_make_qkx2", 32, _qkx2_q45(31, -0.5, 15)),
    "q2_k": ("_make_qkx2", 16, lambda x: (x, np.abs(x), 3, -0.5, 0.1, 15, True)),
    "q3_k": ("_make_q3", 16, lambda x: (x, 4)),
    "q6_k": ("_make_qx", 16, lambda x: (x, 32)),
    "weights": ("_q45_weights", 32, lambda x: (x,)),
    "requantize-offset": ("_requantize", 32, _requantize_args(True, 0, 15, 0)),
    "requantize-symmetric": ("_requantize", 16, _requantize_args(False, -32, 31, 32)),
}


@pytest.mark.parametrize("name", list(TWINS))
def test_kernels_equal_numpy(name: str, kernels: dict[str, Callable[..., tuple[np.ndarray, ...]]]) -> None:
    search, n, args = TWINS[name]
    numpy_search = getattr(quants, search)
    rng = np.random.default_rng(3)
    scales = {
        f"scale-{s:g}": rng.standard_normal((4, 256)).astype(np.float32) * np.float32(s) for s in (1e-20, 1e-6, 0.02, 1, 3e4)
    }
    with np.errstate(all="ignore"):
        for case, rows in {**ROWS, **scales}.items():
            call = args(_columns(rows, n))
            ours, theirs = kernels[search](*call), numpy_search(*call)
            if isinstance(theirs, np.ndarray):  # one array: the weights, or the last pass's levels
                ours, theirs = (ours,), (theirs,)
            for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
                assert a.dtype == b.dtype and a.shape == b.shape, f"{case}: output {i}"
                if a.dtype == np.uint8:
                    assert np.array_equal(a, b), f"{case}: output {i} differs"
                    continue
                # make_qkx2's -min of a group whose min is a zero: the compiled search keeps the sign of
                # the first zero, as ggml's scan does, numpy's min either; only compared with 0 and
                # multiplied after, the sign never reaches the bytes (the byte test below)
                assert _same_bits(a, b, signed_zeros=not (search == "_make_qkx2" and i == 1)), f"{case}: output {i} differs"


def _quantized(rows: np.ndarray, name: str) -> np.ndarray | str:
    """The bytes, or the refusal's message."""
    try:
        return quants.quantize(rows, name, what="w")
    except quants.QuantizationError as err:
        return str(err)


@pytest.mark.parametrize("name", K_QUANTS)
def test_bytes_and_refusals_equal_on_both_paths_and_ggml(
    name: str, kernels: dict[str, Callable[..., tuple[np.ndarray, ...]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    ggml = ggml_quantizer()
    bad = ROWS["normal"][:2].copy()
    bad[1, 300] = np.nan
    inf = bad.copy()
    inf[1, 300] = -np.inf
    for case, rows in {**ROWS, "nan": bad, "inf": inf}.items():
        monkeypatch.setattr(quants, "COMPILED", True)
        compiled = _quantized(rows, name)
        monkeypatch.setattr(quants, "COMPILED", False)
        reference = _quantized(rows, name)
        if isinstance(reference, str):
            assert compiled == reference, case
            continue
        assert isinstance(compiled, np.ndarray) and np.array_equal(compiled, reference), case
        if ggml is not None:
            assert np.array_equal(compiled, ggml(rows, name)), case


def _run(code: str, **env: str) -> str:
    """`code`'s output in a fresh interpreter, CONVERT_GGUF_KERNELS as `env` says (unset by default)."""
    base = {k: v for k, v in os.environ.items() if k != quants.KERNELS_ENV}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**base, **env}, check=False, timeout=300
    )
    assert result.returncode == 0, result.stderr
    return result.stdout


# prints whether the compiled kernels were loaded, and a digest of the bytes of the K-quants TYPES names
PROBE = """
import hashlib, sys
import numpy as np
from convert.outputs.gguf import quants
rows = (np.random.default_rng(5).standard_normal((8, 512)) * 0.02).astype(np.float32)
digest = hashlib.sha256(b"".join(quants.quantize(rows, t).tobytes() for t in TYPES))
print("convert.outputs.gguf.kernels" in sys.modules, digest.hexdigest())
"""


def _probe(types: list[str]) -> str:
    return f"TYPES = {types!r}\n" + PROBE


def test_numpy_path_without_numba_or_by_choice(tmp_path: Path) -> None:
    """No numba (hidden from the import system), a numba that fails to import (as numba does beside a
    numpy newer than it knows) and CONVERT_GGUF_KERNELS=numpy all run the numpy searches, to the same
    bytes; runs whether numba is installed or not."""
    hidden = _run("import sys; sys.modules['numba'] = None\n" + _probe(K_QUANTS)).split()
    (tmp_path / "numba").mkdir()
    (tmp_path / "numba" / "__init__.py").write_text('raise ImportError("Numba needs NumPy 2.3 or less")\n')
    broken = _run(f"import sys; sys.path.insert(0, {str(tmp_path)!r})\n" + _probe(K_QUANTS)).split()
    chosen = _run(_probe(K_QUANTS), CONVERT_GGUF_KERNELS="numpy").split()
    assert hidden[0] == broken[0] == chosen[0] == "False"
    assert hidden[1] == broken[1] == chosen[1]
    if quants.compiled_kernels():
        default = _run(_probe(K_QUANTS)).split()
        assert default == ["True", hidden[1]]


def test_other_types_never_import_numba() -> None:
    """Only the K-quants load numba (half a second, about 125 MiB): q8_0, q4_0 and the floats do not."""
    code = """
import sys
import numpy as np
from convert.outputs.gguf import quants
for t in ("f16", "bf16", "q8_0", "q4_0", "q4_1", "q5_0", "q5_1"):
    quants.quantize(np.ones((2, 256), np.float32), t)
print("numba" in sys.modules)
"""
    assert _run(code).split() == ["False"]


def test_compiles_when_no_cache_folder_is_writable(kernels: dict[str, Callable[..., tuple[np.ndarray, ...]]]) -> None:
    """numba refuses `cache=True` when it finds no folder to write its cache in (read-only install, no
    writable home): the kernels are then compiled in the process, and give the same bytes (q4_k: its
    three kernels compile in about 3 s)."""
    no_cache = "import numba.core.caching as c; c.CacheImpl._locator_classes = []\n"
    default = _run(_probe(["q4_k"])).split()
    assert _run(no_cache + _probe(["q4_k"])).split() == default == ["True", default[1]]
