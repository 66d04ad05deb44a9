"""Inputs for export and validation: shapes, dtypes and value ranges from the command line, the
model's code and the user's .npz; generated values; the user's arrays checked.

Validation runs every input set at two sizes: as given, and grown by two along the dynamic axes
(generated values and a source's example inputs) or along the batch axis (the user's own arrays),
so a graph that baked in one batch size or sequence length fails.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from convert.errors import CorruptInputError, SourceNotFoundError, UnsafeInputError, UsageError
from exporters.onnx_export.spec import ExportOptions, InputHint, InputSpec

DTYPES = ("float32", "float16", "float64", "int64", "int32", "int16", "int8", "uint8", "bool")
GROWTH = 2  # the second validation run is this much larger along each dynamic axis
BATCH = "batch"


@dataclass
class InputSet:
    label: str  # "generated", "example" (a .pt2's) or the .npz file's name: "<label> inputs" in messages
    batch_size: int
    arrays: dict[str, np.ndarray]


def parse_shape(text: str) -> tuple[int, ...]:
    """'1x3x32x32' -> (1, 3, 32, 32)."""
    try:
        dims = tuple(int(d) for d in text.lower().split("x"))
    except ValueError:
        raise UsageError(f"cannot read shape {text!r} (example: 1x3x32x32)") from None
    if not dims or any(d < 1 for d in dims):
        raise UsageError(f"shape {text!r}: every dimension must be at least 1")
    return dims


def parse_input_shapes(items: Sequence[str]) -> tuple[dict[str, tuple[int, ...]], dict[str, str]]:
    """['tokens=4x7:int64', 'x=1x4'] or ['1x4'] (the only input) -> ({name: shape}, {name: dtype})."""
    shapes: dict[str, tuple[int, ...]] = {}
    dtypes: dict[str, str] = {}
    for item in items:
        key, spec = _named(item)
        shape, colon, dtype = spec.partition(":")
        shapes[key] = parse_shape(shape)
        if colon:
            dtypes[key] = check_dtype(dtype, f"--input-shape {item}")
    return shapes, dtypes


def check_dtype(name: str, where: str) -> str:
    """A dtype name an input may have, or a UsageError saying which exist."""
    if name not in DTYPES:
        raise UsageError(f"{where}: unknown dtype {name!r}; choose one of {', '.join(DTYPES)}")
    return name


def parse_input_ranges(items: Sequence[str]) -> dict[str, tuple[int, int]]:
    """['tokens=0:21'] or ['0:21'] (the only input) -> {name: (low, high)}, HIGH excluded."""
    ranges: dict[str, tuple[int, int]] = {}
    for item in items:
        key, spec = _named(item)
        low, colon, high = spec.partition(":")
        try:
            bounds = (int(low), int(high))
        except ValueError:
            bounds = None
        if not colon or bounds is None or bounds[0] >= bounds[1]:
            raise UsageError(
                f"--input-range {item!r}: expected NAME=LOW:HIGH, integers with LOW < HIGH (HIGH excluded), e.g. tokens=0:21"
            )
        ranges[key] = bounds
    return ranges


def _named(item: str) -> tuple[str, str]:
    """'NAME=VALUE' -> (NAME, VALUE); a bare 'VALUE' is for the only input, named ""."""
    name, sep, value = item.rpartition("=")
    return (name if sep else ""), value


def parse_dynamic_axes(items: Sequence[str]) -> dict[str, dict[int, str]]:
    """['input:1=seq'] -> {'input': {1: 'seq'}}: axis 1 of input `input` varies, named `seq`."""
    axes: dict[str, dict[int, str]] = {}
    for item in items:
        where, sep, dim = item.partition("=")
        name, colon, axis = where.rpartition(":")
        if not (sep and colon and name and axis.isdigit() and dim.isidentifier()):
            raise UsageError(f"--dynamic-axis {item!r}: expected INPUT:AXIS=NAME, e.g. input:1=seq")
        if int(axis) == 0:
            raise UsageError(f"--dynamic-axis {item!r}: axis 0 is always the dynamic batch axis")
        axes.setdefault(name, {})[int(axis)] = dim
    return axes


def build_specs(
    names: Sequence[str],
    dtypes: Sequence[np.dtype | None],
    declared: Sequence[tuple[int | None, ...] | None],
    options: ExportOptions,
    hints: dict[str, InputHint] | None = None,
) -> list[InputSpec]:
    """Specs from the model's input names, declared dtypes and shapes (None: not declared, or an
    unknown axis), what its code says about their values (`hints`), and the user's --input-shape,
    --input-range, --dynamic-axis and --inputs; declared unknown axes beyond the batch are dynamic."""
    given = _by_input(names, options.input_shapes, "--input-shape", "=1x3")
    given_dtypes = _by_input(names, options.input_dtypes, "--input-shape", "=1x3:int64")
    given_ranges = _by_input(names, options.input_ranges, "--input-range", "=0:100")
    dynamic = options.dynamic_axes
    unknown = sorted(set(dynamic) - set(names))
    if unknown:
        raise UsageError(f"--dynamic-axis names {unknown}, but the model's inputs are {list(names)}")
    arrays = _named_arrays(Path(options.inputs_file), names) if options.inputs_file else {}
    label = Path(options.inputs_file).name if options.inputs_file else ""
    hints = hints or {}
    specs = []
    for name, dt, decl in zip(names, dtypes, declared, strict=True):
        shape = _shape(name, decl, given.get(name))
        axes = {0: BATCH, **{a: f"{name}_{a}" for a, d in enumerate(decl or ()) if d is None and a}}
        for axis, dim in dynamic.get(name, {}).items():
            if axis >= len(shape):
                raise UsageError(f"--dynamic-axis {name}:{axis}: input {name!r} has {len(shape)} axes")
            if decl is not None and decl[axis] is not None:
                raise UsageError(f"--dynamic-axis {name}:{axis}: the model fixes that axis at {decl[axis]}")
            axes[axis] = dim
        array, hint = arrays.get(name), hints.get(name)
        dtype = _dtype(name, dt, hint, given_dtypes.get(name), array, label)
        bounds, why = _range(name, dtype, hint, given_ranges.get(name), array, label)
        specs.append(InputSpec(name, shape, dtype, dict(sorted(axes.items())), bounds, why))
    if arrays:
        check_arrays(arrays, specs, label)  # before the export, so a wrong file costs nothing
    if options.calibration:
        calibration = Path(options.calibration)
        check_arrays(_named_arrays(calibration, names), specs, calibration.name)
    return specs


def _by_input(names: Sequence[str], values: dict[str, Any], option: str, example: str) -> dict[str, Any]:
    """An option's values by input name ("" is the only input), every name one of the model's."""
    if "" in values:
        if len(names) != 1:
            raise UsageError(f"the model has inputs {list(names)}: name each one, e.g. {option} {names[0]}{example}")
        values = {names[0]: values[""]}
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UsageError(f"{option} names {unknown}, but the model's inputs are {list(names)}")
    return values


def _dtype(
    name: str, declared: np.dtype | None, hint: InputHint | None, given: str | None, array: np.ndarray | None, label: str
) -> np.dtype:
    """--input-shape's dtype, else the model's declared one, else an integer or bool array's from
    --inputs, else what the model's code takes, else float32; each checked against the others."""
    if given is not None:
        check_dtype(given, f"input {name!r}")
        if declared is not None and np.dtype(given) != np.dtype(declared):
            raise UsageError(f"--input-shape {name}=...:{given}: the model declares {name!r} as {np.dtype(declared)}")
        _takes(hint, given, f"--input-shape {name}=...:{given}:")
        return np.dtype(given)
    if declared is not None:
        return np.dtype(declared)
    if array is not None and array.dtype.kind in "iub":
        _takes(hint, array.dtype.name, f"{label}: {name!r} is {array.dtype}, but")
        return array.dtype
    return np.dtype(hint.dtypes[0] if hint else "float32")


def _takes(hint: InputHint | None, dtype: str, what: str) -> None:
    if hint is not None and dtype not in hint.dtypes:
        raise UsageError(f"{what} {hint.reason} takes {' or '.join(hint.dtypes)}")


def _range(
    name: str, dtype: np.dtype, hint: InputHint | None, given: tuple[int, int] | None, array: np.ndarray | None, label: str
) -> tuple[tuple[int, int] | None, str | None]:
    """([low, high), what said so) for an integer or bool input: --input-range (inside what the
    model takes), else the model's own bound, else the values of --inputs, else 0 and 1."""
    if dtype.kind not in "iub":
        if given is not None:
            raise UsageError(f"--input-range {name}=...: {name!r} is {dtype}; ranges are for integer and bool inputs")
        return None, None
    limits = (0, 2) if dtype.kind == "b" else (int(np.iinfo(dtype).min), int(np.iinfo(dtype).max) + 1)
    bound = hint.range if hint is not None else None
    if given is not None:
        low, high = (max(bound[0], limits[0]), min(bound[1], limits[1])) if bound else limits
        if not (low <= given[0] and given[1] <= high):
            what = hint.reason if bound and hint else str(dtype)
            raise UsageError(f"--input-range {name}={given[0]}:{given[1]}: {what} takes values in [{low}, {high})")
        return given, "--input-range"
    if bound is not None and hint is not None:
        return bound, hint.reason
    if array is not None and array.size:
        seen = (int(array.min()), int(array.max()) + 1)
        if not (limits[0] <= seen[0] and seen[1] <= limits[1]):
            raise UsageError(f"{label}: {name!r} holds values in [{seen[0]}, {seen[1]}), beyond {dtype}")
        return seen, f"the values of {label}"
    return (0, 2), "default: 0 and 1 (nothing says more; give --input-range)"


def _shape(name: str, declared: tuple[int | None, ...] | None, given: tuple[int, ...] | None) -> tuple[int, ...]:
    if given is None:
        if declared is None or any(d is None for d in declared[1:]):
            raise UsageError(f"input {name!r}: give its shape, e.g. --input-shape {name}=1x3x32x32")
        return (1, *(d for d in declared[1:] if d is not None))
    if declared is not None:
        if len(declared) != len(given) or any(d is not None and d != g for d, g in zip(declared[1:], given[1:], strict=True)):
            raise UsageError(
                f"--input-shape {name}={'x'.join(map(str, given))} does not fit the model's "
                f"input shape {['?' if d is None else d for d in declared]}"
            )
    return given


def input_sets(specs: list[InputSpec], samples: dict[str, np.ndarray] | None, npz: str | None) -> list[InputSet]:
    """The inputs validation runs: generated (or the source's examples), and the user's file."""
    if samples is not None:
        first = {s.name: samples[s.name] for s in specs}
        sets = _pair("example", first, {s.name: tuple(s.dynamic) for s in specs})
    else:
        rng = np.random.default_rng(0)
        big = {s.name: random_values(rng, _grown(s.shape, s.dynamic), s) for s in specs}
        small = {s.name: big[s.name][tuple(slice(0, n) for n in s.shape)] for s in specs}
        sets = [_set("generated", small), _set("generated", big)]
    if npz is not None:
        sets += _pair(Path(npz).name, load_npz(npz, specs), {s.name: tuple(a for a in (0,) if a in s.dynamic) for s in specs})
    return sets


def _pair(label: str, first: dict[str, np.ndarray], axes: dict[str, tuple[int, ...]]) -> list[InputSet]:
    """The set as given, and grown by repeating its own values along `axes` (so it stays valid data)."""
    grown = {}
    for name, arr in first.items():
        for axis in axes[name]:
            arr = np.take(arr, np.arange(arr.shape[axis] + GROWTH), axis=axis, mode="wrap")
        grown[name] = arr
    return [_set(label, first), _set(label, grown)]


def _set(label: str, arrays: dict[str, np.ndarray]) -> InputSet:
    return InputSet(label, int(next(iter(arrays.values())).shape[0]), arrays)


def _grown(shape: tuple[int, ...], dynamic: dict[int, str]) -> tuple[int, ...]:
    return tuple(n + GROWTH if axis in dynamic else n for axis, n in enumerate(shape))


def random_values(rng: np.random.Generator, shape: tuple[int, ...], spec: InputSpec) -> np.ndarray:
    """Values the input takes: standard normal floats, integers and bools inside the spec's range."""
    dt = spec.dtype
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind in "iub":
        low, high = spec.range or (0, 2)
        return rng.integers(low, high, shape).astype(dt)
    raise UsageError(f"cannot generate inputs of type {dt}; pass your own with --inputs file.npz")


def load_npz(path: str, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """The user's inputs, one array per input name, read without pickle, checked against the specs."""
    return check_arrays(_named_arrays(Path(path), [s.name for s in specs]), specs, Path(path).name)


def _named_arrays(path: Path, names: Sequence[str]) -> dict[str, np.ndarray]:
    """The .npz's arrays by input name (one array for a model of one input goes by any name)."""
    arrays = _read_npz(path)
    if len(names) == 1 and len(arrays) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    if set(arrays) != set(names):
        raise UsageError(f"{path.name} holds arrays {sorted(arrays)}; the model's inputs are {list(names)}")
    return arrays


def check_arrays(arrays: dict[str, np.ndarray], specs: list[InputSpec], label: str) -> dict[str, np.ndarray]:
    """The user's arrays in the specs' dtypes, or a UsageError naming the input whose shape, dtype
    or values the model does not take."""
    out, batches = {}, set()
    for spec in specs:
        arr = arrays[spec.name]
        static_ok = arr.ndim == len(spec.shape) and all(
            a in spec.dynamic or n == m for a, (n, m) in enumerate(zip(arr.shape, spec.shape, strict=True))
        )
        if not static_ok or arr.dtype.kind != spec.dtype.kind or arr.shape[0] == 0:
            raise UsageError(
                f"{label}: {spec.name!r} is {arr.dtype}{list(arr.shape)}; the model takes "
                f"{spec.dtype}{list(spec.shape)} (dynamic axes {sorted(spec.dynamic)})"
            )
        if spec.range is not None and arr.size:
            low, high = spec.range
            outside = arr[(arr < low) | (arr >= high)]
            if outside.size:
                raise UsageError(f"{label}: {spec.name!r} holds {outside.flat[0]}, outside [{low}, {high}) ({spec.range_from})")
        out[spec.name] = np.ascontiguousarray(arr, dtype=spec.dtype)
        if 0 in spec.dynamic:  # an input without a batch axis (a multivariate model's static columns)
            batches.add(arr.shape[0])
    if len(batches) != 1:
        raise UsageError(f"{label}: the arrays have different batch sizes {sorted(batches)}")
    return out


def _read_npz(path: Path) -> dict[str, np.ndarray]:
    if not path.is_file():
        raise SourceNotFoundError(f"no such file: {path}")
    try:
        loaded = np.load(path, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise UsageError(f"{path.name}: --inputs takes an .npz archive (np.savez), not a single array")
        with loaded as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as exc:
        if "allow_pickle" in str(exc):
            raise UnsafeInputError(f"{path.name}: holds object arrays, which only pickle can load; refused") from None
        raise CorruptInputError(f"{path.name}: not a readable .npz ({exc})") from None
    except (OSError, EOFError, zipfile.BadZipFile) as exc:
        raise CorruptInputError(f"{path.name}: not a readable .npz ({exc})") from None
