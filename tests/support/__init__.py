"""The helpers every test shares: running the CLI as a user runs it, reading and validating outputs,
comparing tensors byte for byte, building checkpoints with real torch. Subject-specific helpers sit
beside this module (tests/support/*.py); pytest fixtures stay in tests/conftest.py.

Checkpoints are written by real torch (`torch.save`, `save_pretrained`) into `tmp_path`; the CLI runs
in a subprocess exactly as a user runs it; every conversion goes through `read_manifest`, which
validates the manifest against schemas/manifest.schema.json.
"""

from __future__ import annotations

import functools
import json
import os
import struct
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

from convert import manifest as manifest_mod

try:  # torch is an extra: modules that need it call pytest.importorskip("torch") themselves
    import torch
except ImportError:  # pragma: no cover - CI installs every extra
    torch = None  # type: ignore[assignment]

REPO = Path(__file__).resolve().parents[2]

# torch dtype name -> SafeTensors dtype code, for every dtype torch saves that SafeTensors holds.
TORCH_TO_ST: dict[str, str] = {
    "float64": "F64",
    "float32": "F32",
    "float16": "F16",
    "bfloat16": "BF16",
    "float8_e4m3fn": "F8_E4M3",
    "float8_e5m2": "F8_E5M2",
    "float8_e8m0fnu": "F8_E8M0",
    "int64": "I64",
    "int32": "I32",
    "int16": "I16",
    "int8": "I8",
    "uint64": "U64",
    "uint32": "U32",
    "uint16": "U16",
    "uint8": "U8",
    "bool": "BOOL",
    "complex64": "C64",
}


def st_code(dtype: Any) -> str:
    """SafeTensors code of a torch dtype."""
    return TORCH_TO_ST[str(dtype).removeprefix("torch.")]


# ---------------------------------------------------------------------------------------------
# Running the CLI
# ---------------------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def cli_prefix() -> tuple[str, ...]:
    """`python -m convert.cli` when that works from a neutral folder, else the installed script."""
    probe = subprocess.run(
        [sys.executable, "-m", "convert.cli", "--version"], capture_output=True, text=True, cwd=tempfile.gettempdir(), timeout=60
    )
    if probe.returncode == 0 and "convert" in probe.stdout:
        return (sys.executable, "-m", "convert.cli")
    script = Path(sys.executable).parent / "convert"
    assert script.is_file(), f"neither `python -m convert.cli` nor {script} works: {probe.stderr}"
    return (str(script),)


def run_cli(
    *args: Any, cwd: str | Path | None = None, timeout: float = 120, preexec_fn: Callable[[], None] | None = None
) -> tuple[int, str, str]:
    """Run `convert ARGS...` in a subprocess; return (returncode, stdout, stderr)."""
    env = dict(os.environ)
    env.pop("COLUMNS", None)
    env["NO_COLOR"] = "1"
    proc = subprocess.run(
        [*cli_prefix(), *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=timeout, preexec_fn=preexec_fn, env=env
    )
    return proc.returncode, proc.stdout, proc.stderr


def installed_without_dependencies(requirement: str, module: str, cache_key: str) -> Path | None:
    """A folder holding `requirement` installed once with `pip --no-deps --target` (kept in /tmp under
    `cache_key` for later runs), for a package whose declared dependencies conflict with this
    project's pins but whose code runs beside them; None when pip cannot install it."""
    target = Path(tempfile.gettempdir()) / f"rmc-{cache_key}"
    if (target / module).is_dir():
        return target
    staging = Path(tempfile.mkdtemp(prefix=f"rmc-{cache_key}-"))
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--disable-pip-version-check",
            "--no-deps",
            "--target",
            str(staging),
            requirement,
        ],
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        return None
    try:
        staging.rename(target)
    except OSError:  # another process got there first
        pass
    return target


def assert_one_line_error(stderr: str, *needles: str) -> str:
    """stderr is exactly one `convert: error: ...` line, without a traceback, naming every needle."""
    assert "Traceback" not in stderr, stderr
    lines = stderr.splitlines()
    assert len(lines) == 1, f"expected one line on stderr, got {len(lines)}:\n{stderr}"
    line = lines[0]
    assert line.startswith("convert: error: "), line
    for needle in needles:
        assert needle in line, f"{needle!r} not in {line!r}"
    return line


def assert_cli_error(result: tuple[int, str, str], code: int, *needles: str) -> str:
    rc, _out, err = result
    assert rc == code, f"exit {rc}, expected {code}; stderr: {err}"
    return assert_one_line_error(err, *needles)


def assert_no_output(out: Path) -> None:
    """Nothing at `out`, and no staging folder left beside it."""
    out = Path(out)
    assert not out.exists(), f"{out} exists: {sorted(p.name for p in out.iterdir()) if out.is_dir() else 'file'}"
    if out.parent.is_dir():
        leftovers = [p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}.")]
        assert not leftovers, f"staging left behind: {leftovers}"


# ---------------------------------------------------------------------------------------------
# Reading outputs
# ---------------------------------------------------------------------------------------------


def read_manifest(out: str | Path) -> dict[str, Any]:
    """manifest.json of an output folder, validated against the schema (every conversion uses this)."""
    doc = json.loads((Path(out) / manifest_mod.MANIFEST_FILE).read_text(encoding="utf-8"))
    manifest_mod.validate(doc)
    return doc


def output_files(out: str | Path) -> list[Path]:
    """The SafeTensors files of an output folder, in the order its manifest lists them."""
    doc = read_manifest(out)
    return [Path(out) / f["path"] for f in doc["files"]]


def load_output(out: str | Path) -> dict[str, Any]:
    """Every stored tensor of an output folder, read with the safetensors library (no name twice)."""
    from safetensors.torch import load_file

    tensors: dict[str, Any] = {}
    for path in output_files(out):
        part = load_file(str(path))
        assert not set(part) & set(tensors), f"tensors stored twice: {set(part) & set(tensors)}"
        tensors.update(part)
    return tensors


def file_metadata(path: str | Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return dict(f.metadata() or {})


def header_length(path: str | Path) -> int:
    """Bytes before a SafeTensors file's data buffer (8-byte length prefix + JSON header)."""
    with open(path, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
    return 8 + n


def flip_tensor_byte(out: Path, name: str, mask: int = 0x01) -> None:
    """XOR `mask` into the first data byte of one tensor in its output file (located from the
    manifest's data_offsets and the SafeTensors header length)."""
    doc = json.loads((Path(out) / manifest_mod.MANIFEST_FILE).read_text(encoding="utf-8"))  # any version, unvalidated
    entry = next(t for t in doc["tensors"] if t["name"] == name)
    begin, end = entry["data_offsets"]
    assert end > begin, f"{name} has no data bytes"
    path = Path(out) / entry["file"]
    data = bytearray(path.read_bytes())
    data[header_length(path) + begin] ^= mask
    path.write_bytes(bytes(data))


def write_bytes(path: Path, data: bytes) -> Path:
    """Write `data` to `path`; the path."""
    path.write_bytes(data)
    return path


def random_array(rng: Any, *shape: int, dtype: Any = "float32") -> Any:
    """Standard-normal values of `shape` from a test module's own generator, as `dtype`."""
    return rng.standard_normal(shape).astype(dtype)


def retie(tensors: dict[str, Any], aliases: dict[str, str]) -> dict[str, Any]:
    """The full state dict: stored tensors plus every alias pointing at its kept tensor."""
    full = dict(tensors)
    for alias, kept in aliases.items():
        assert alias not in tensors, f"alias {alias} is also stored"
        full[alias] = tensors[kept]
    return full


# ---------------------------------------------------------------------------------------------
# Comparing tensors
# ---------------------------------------------------------------------------------------------


def tensor_bytes(t: Any) -> bytes:
    """A tensor's C-ordered bytes (any dtype, 0-d and empty included)."""
    return t.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def assert_same_tensor(actual: Any, expected: Any, name: str = "") -> None:
    """Same dtype, same shape, same bytes: a byte-exact match (NaN payloads included)."""
    assert actual.dtype == expected.dtype, f"{name}: dtype {actual.dtype} != {expected.dtype}"
    assert tuple(actual.shape) == tuple(expected.shape), f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert tensor_bytes(actual) == tensor_bytes(expected), f"{name}: bytes differ"


def assert_same_state(actual: dict[str, Any], expected: dict[str, Any]) -> None:
    assert set(actual) == set(expected), f"names differ: {sorted(set(actual) ^ set(expected))}"
    for name in expected:
        assert_same_tensor(actual[name], expected[name], name)


def torch_load(path: str | Path) -> Any:
    """The test's own reference load of a checkpoint the test itself wrote."""
    return torch.load(path, map_location="cpu", weights_only=True)


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Dotted names of every tensor in nested dicts (what the converter is expected to produce)."""
    out: dict[str, Any] = {}
    for k, v in obj.items():
        name = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, torch.Tensor):
            out[name] = v
        elif isinstance(v, dict):
            out.update(flatten(v, name))
    return out


# ---------------------------------------------------------------------------------------------
# Converting
# ---------------------------------------------------------------------------------------------


def convert_api(src: str | Path, out: str | Path, **options: Any) -> tuple[Any, dict[str, Any]]:
    """Convert with the Python API; return (result, validated manifest)."""
    from convert.api import pth_to_safetensors

    result = pth_to_safetensors(src, out, **options)
    return result, read_manifest(out)


def convert_ok(command: str, src: str | Path, out: str | Path, *args: str, verify: bool = False) -> str:
    """`convert COMMAND SRC OUT ARGS...`, which must exit 0 without a traceback (and with `verify`,
    `convert verify OUT --source SRC` after it must pass too); its stderr."""
    rc, _stdout, stderr = run_cli(command, src, out, *args)
    assert rc == 0, f"exit {rc}: {stderr}"
    assert "Traceback" not in stderr
    if verify:
        rc, _stdout, verify_stderr = run_cli("verify", out, "--source", src)
        assert rc == 0, f"verify exit {rc}: {verify_stderr}"
    return stderr


def converted_manifest(command: str, src: str | Path, out: str | Path, *args: str, verify: bool = False) -> dict[str, Any]:
    """`convert_ok`, then the output's validated manifest."""
    convert_ok(command, src, out, *args, verify=verify)
    return read_manifest(out)


def converted_arrays(command: str, src: str | Path, out: str | Path, *args: str, verify: bool = False) -> dict[str, Any]:
    """`convert_ok`, then every stored tensor as a NumPy array."""
    convert_ok(command, src, out, *args, verify=verify)
    return {name: t.numpy() for name, t in load_output(out).items()}


def convert_cli(src: str | Path, out: str | Path, *args: str) -> dict[str, Any]:
    """Convert with the CLI's pth-to-safetensors (must succeed); return the validated manifest."""
    return converted_manifest("pth-to-safetensors", src, out, *args)


def api_verified(convert_function: Callable[..., Any], src: str | Path, out: str | Path, **options: Any) -> dict[str, Any]:
    """Convert with a Python API function, then verify the output against its source (reopened with
    the reader options the manifest records): every tensor compared; the validated manifest."""
    from convert.api import verify_path

    convert_function(src, out, **options)
    doc = read_manifest(out)
    report = verify_path(out, src)
    assert report.ok and report.compared_with_source == len(doc["tensors"]), report.problems
    return doc


# ---------------------------------------------------------------------------------------------
# Building checkpoints with real torch
# ---------------------------------------------------------------------------------------------


def seeded(seed: int = 0) -> Any:
    return torch.Generator().manual_seed(seed)


def float_values(n: int, gen: Any, specials: bool = True) -> Any:
    """float64 values spanning many magnitudes, plus infinities, signed zero, subnormals, NaN."""
    x = torch.randn(n, generator=gen, dtype=torch.float64) * torch.logspace(-8, 6, n, dtype=torch.float64)
    if specials:
        extra = torch.tensor(
            [float("inf"), float("-inf"), float("nan"), -0.0, 0.0, 1e-40, 65504.0, 70000.0, 3.0e38, -1.5e-7], dtype=torch.float64
        )
        x = torch.cat([x, extra])
    return x


def every_dtype_tensors(seed: int = 0) -> dict[str, Any]:
    """One tensor of every dtype torch saves that SafeTensors holds, with awkward values."""
    g = seeded(seed)
    floats = float_values(60, g).reshape(7, 10)
    out: dict[str, Any] = {}
    for dt in (torch.float64, torch.float32, torch.float16, torch.bfloat16):
        out[f"float.{dt}".replace("torch.", "")] = floats.to(dt)
    out["float.float8_e4m3fn"] = torch.randn(5, 6, generator=g).mul(40).to(torch.float8_e4m3fn)
    out["float.float8_e5m2"] = torch.randn(5, 6, generator=g).mul(1000).to(torch.float8_e5m2)
    out["float.float8_e8m0fnu"] = torch.tensor([2.0**k for k in range(-20, 20, 3)]).to(torch.float8_e8m0fnu)
    for dt in (torch.int64, torch.int32, torch.int16, torch.int8, torch.uint8):
        info = torch.iinfo(dt)
        vals = torch.randint(info.min, info.max, (4, 9), generator=g, dtype=dt)
        vals.view(-1)[0], vals.view(-1)[1] = info.min, info.max
        out[f"int.{dt}".replace("torch.", "")] = vals
    for dt, top in ((torch.uint16, 2**16 - 1), (torch.uint32, 2**32 - 1), (torch.uint64, 2**64 - 1)):
        out[f"int.{dt}".replace("torch.", "")] = torch.tensor([0, 1, 12345, top], dtype=dt)
    out["bool"] = torch.rand(3, 11, generator=g) > 0.5
    out["complex64"] = torch.randn(4, 3, generator=g, dtype=torch.complex64)
    return out


# ---------------------------------------------------------------------------------------------
# Hugging Face model folders (built offline from a config, random weights)
# ---------------------------------------------------------------------------------------------


def save_hf(model: Any, folder: Path, **kwargs: Any) -> Path:
    model.save_pretrained(folder, safe_serialization=False, **kwargs)
    return folder


def listing(folder: Path) -> dict[str, bytes]:
    """Every file under a folder with its bytes (to prove a folder was left untouched)."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# ---------------------------------------------------------------------------------------------
# Hostile-input sweeps (fuzzing, truncation, kill points): how many inputs each one tried
# ---------------------------------------------------------------------------------------------

SWEEP_COUNTS: dict[str, dict[str, int]] = {}


def count_inputs(sweep: str, target: str, n: int = 1) -> None:
    """Record that `n` more inputs of `sweep` (e.g. "fuzz", "truncation") ran against `target`."""
    per_target = SWEEP_COUNTS.setdefault(sweep, {})
    per_target[target] = per_target.get(target, 0) + n
