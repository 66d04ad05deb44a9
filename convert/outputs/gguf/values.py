"""Typed GGUF metadata values beyond the container's own few (file_format has u32, u16, i32, string):
the floats, flags and arrays a language model's hyper-parameters and tokenizer are written in, typed
as llama.cpp's loader reads them (it refuses a key of another type)."""

from __future__ import annotations

from collections.abc import Sequence

from .file_format import Value, ValueType


def f32(v: float) -> Value:
    return Value(ValueType.FLOAT32, float(v))


def boolean(v: bool) -> Value:
    return Value(ValueType.BOOL, bool(v))


def strings(items: Sequence[str]) -> Value:
    return Value(ValueType.ARRAY, list(items), ValueType.STRING)


def f32s(items: Sequence[float]) -> Value:
    return Value(ValueType.ARRAY, [float(x) for x in items], ValueType.FLOAT32)


def i32s(items: Sequence[int]) -> Value:
    return Value(ValueType.ARRAY, [int(x) for x in items], ValueType.INT32)
