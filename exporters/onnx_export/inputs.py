"""Inputs for export and validation: shapes from the command line, generated values, the user's .npz.

Validation runs every input set at two sizes: as given, and grown by two along the dynamic axes
(generated values and a source's example inputs) or along the batch axis (the user's own arrays),
so a graph that baked in one batch size or sequence length fails.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from convert.errors import CorruptInputError, SourceNotFoundError, UnsafeInputError, UsageError

from .spec import InputSpec

GROWTH = 2  # the second validation run is this much larger along each dynamic axis
BATCH = "batch"


@dataclass
class InputSet:
    label: str  # "generated", "example inputs" or the .npz file's name
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


def parse_input_shapes(items: Sequence[str]) -> dict[str, tuple[int, ...]]:
    """['x=1x4', 'mask=1x4'] or ['1x4'] (the only input) -> {name: shape}."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        name, sep, shape = item.rpartition("=")
        shapes[name if sep else ""] = parse_shape(shape)
    return shapes


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


def build_specs(names: Sequence[str], dtypes: Sequence[np.dtype], declared: Sequence[tuple[int | None, ...] | None],
                given: dict[str, tuple[int, ...]], dynamic: dict[str, dict[int, str]]) -> list[InputSpec]:
    """Specs from the model's input names, dtypes and declared shapes (None: unknown axis) and the
    user's --input-shape and --dynamic-axis; declared unknown axes beyond the batch are dynamic."""
    if "" in given:
        if len(names) != 1:
            raise UsageError(f"the model has inputs {list(names)}: name each one, e.g. --input-shape {names[0]}=1x3")
        given = {names[0]: given[""]}
    for option, keys in (("--input-shape", given), ("--dynamic-axis", dynamic)):
        unknown = sorted(set(keys) - set(names))
        if unknown:
            raise UsageError(f"{option} names {unknown}, but the model's inputs are {list(names)}")
    specs = []
    for name, dt, decl in zip(names, dtypes, declared):
        shape = _shape(name, decl, given.get(name))
        axes = {0: BATCH, **{a: f"{name}_{a}" for a, d in enumerate(decl or ()) if d is None and a}}
        for axis, dim in dynamic.get(name, {}).items():
            if axis >= len(shape):
                raise UsageError(f"--dynamic-axis {name}:{axis}: input {name!r} has {len(shape)} axes")
            if decl is not None and decl[axis] is not None:
                raise UsageError(f"--dynamic-axis {name}:{axis}: the model fixes that axis at {decl[axis]}")
            axes[axis] = dim
        specs.append(InputSpec(name, shape, np.dtype(dt), dict(sorted(axes.items()))))
    return specs


def _shape(name: str, declared: tuple[int | None, ...] | None, given: tuple[int, ...] | None) -> tuple[int, ...]:
    if given is None:
        if declared is None or any(d is None for d in declared[1:]):
            raise UsageError(f"input {name!r}: give its shape, e.g. --input-shape {name}=1x3x32x32")
        return (1, *(d for d in declared[1:] if d is not None))
    if declared is not None:
        if len(declared) != len(given) or any(d is not None and d != g for d, g in zip(declared[1:], given[1:])):
            raise UsageError(f"--input-shape {name}={'x'.join(map(str, given))} does not fit the model's "
                             f"input shape {['?' if d is None else d for d in declared]}")
    return given


def input_sets(specs: list[InputSpec], samples: dict[str, np.ndarray] | None, npz: str | None) -> list[InputSet]:
    """The inputs validation runs: generated (or the source's examples), and the user's file."""
    if samples is not None:
        first = {s.name: samples[s.name] for s in specs}
        sets = _pair("example inputs", first, {s.name: tuple(s.dynamic) for s in specs})
    else:
        rng = np.random.default_rng(0)
        big = {s.name: _random(rng, _grown(s.shape, s.dynamic), s.dtype) for s in specs}
        small = {s.name: big[s.name][tuple(slice(0, n) for n in s.shape)] for s in specs}
        sets = [_set("generated", small), _set("generated", big)]
    if npz is not None:
        sets += _pair(Path(npz).name, load_npz(npz, specs), {s.name: tuple(a for a in (0,) if a in s.dynamic)
                                                            for s in specs})
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


def _random(rng: np.random.Generator, shape: tuple[int, ...], dt: np.dtype) -> np.ndarray:
    if dt.kind == "f":
        return rng.standard_normal(shape).astype(dt)
    if dt.kind in "iub":  # indices and masks: 0 and 1 are valid for any embedding or mask
        return rng.integers(0, 2, shape).astype(dt)
    raise UsageError(f"cannot generate inputs of type {dt}; pass your own with --inputs file.npz")


def load_npz(path: str, specs: list[InputSpec]) -> dict[str, np.ndarray]:
    """The user's inputs, one array per input name, read without pickle."""
    arrays = _read_npz(Path(path))
    names = [s.name for s in specs]
    if len(specs) == 1 and len(arrays) == 1:
        arrays = {names[0]: next(iter(arrays.values()))}
    if set(arrays) != set(names):
        raise UsageError(f"{Path(path).name} holds arrays {sorted(arrays)}; the model's inputs are {names}")
    out, batches = {}, set()
    for spec in specs:
        arr = arrays[spec.name]
        static_ok = arr.ndim == len(spec.shape) and all(
            a in spec.dynamic or n == m for a, (n, m) in enumerate(zip(arr.shape, spec.shape)))
        if not static_ok or arr.dtype.kind != spec.dtype.kind or arr.shape[0] == 0:
            raise UsageError(f"{Path(path).name}: {spec.name!r} is {arr.dtype}{list(arr.shape)}; the model takes "
                             f"{spec.dtype}{list(spec.shape)} (dynamic axes {sorted(spec.dynamic)})")
        out[spec.name] = np.ascontiguousarray(arr, dtype=spec.dtype)
        if 0 in spec.dynamic:  # an input without a batch axis (a multivariate model's static columns)
            batches.add(arr.shape[0])
    if len(batches) != 1:
        raise UsageError(f"{Path(path).name}: the arrays have different batch sizes {sorted(batches)}")
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
