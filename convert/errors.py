"""One error hierarchy for everything a user can cause.

Each class carries the process exit code the CLI returns for it, so the CLI never needs its own
mapping and scripts can rely on the codes documented in the README.
"""

from __future__ import annotations

import re

# Control characters (a terminal obeys ESC sequences, a NUL cuts logs) and lone surrogates (which
# no terminal or log encoding can write) are shown as escapes.
_UNPRINTABLE = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")


def first_line(exc: BaseException) -> str:
    """The first non-blank line of what a library's (often many-line) exception says, stripped and
    capped; its type when it says nothing."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def install_hint(extra: str) -> str:
    """The command that installs an extra, worded alike in every message that needs one."""
    return f"pip install 'rust-model-convert[{extra}]'"


def one_line(text: str) -> str:
    """`text` as one printable line, whatever it quotes from a file."""
    return _UNPRINTABLE.sub(lambda m: m.group().encode("unicode_escape", "backslashreplace").decode("ascii"), text)


class ConvertError(Exception):
    """Base of every error the toolchain raises on purpose. Printed as one line, never a traceback."""

    exit_code = 1
    kind = "error"
    details: dict[str, object] | None = None  # more for --json's error object (verify: its report)

    def __init__(self, message: object = "") -> None:
        # One line, whatever the message quotes from a file (a pickle's text, a name with a newline).
        super().__init__(one_line(str(message)))


class UsageError(ConvertError):
    """Bad options or arguments."""

    exit_code = 2
    kind = "usage"


class SourceNotFoundError(ConvertError):
    """The source path, a shard, or a key inside the checkpoint does not exist."""

    exit_code = 3
    kind = "not-found"


class UnsupportedFormatError(ConvertError):
    """The file is readable but not a format (or a feature of a format) this tool converts."""

    exit_code = 4
    kind = "unsupported"


class UnsafeInputError(ConvertError):
    """The file asks for something that would run code or reach outside itself; refused."""

    exit_code = 5
    kind = "unsafe"


class CorruptInputError(ConvertError):
    """The file is truncated, inconsistent, or declares sizes it does not hold."""

    exit_code = 6
    kind = "corrupt"


class MappingError(ConvertError):
    """Tensor names or shapes do not fit the chosen layout."""

    exit_code = 7
    kind = "mapping"


class VerificationError(ConvertError):
    """An output does not match its manifest or its source."""

    exit_code = 8
    kind = "verify"


class OutputExistsError(ConvertError):
    """The destination holds an earlier output (--overwrite replaces it) or files this tool did not write."""

    exit_code = 9
    kind = "exists"


class OutputWriteError(ConvertError):
    """The destination could not be written (permissions, disk full)."""

    exit_code = 10
    kind = "write"


class BatchFailedError(ConvertError):
    """Some jobs of a batch failed (the others finished; see the report)."""

    exit_code = 11
    kind = "batch"


# Top-level modules of the optional dependencies -> the extra (pyproject.toml) that installs them.
EXTRA_OF_MODULE: dict[str, str] = {
    "h5py": "keras",
    "msgpack": "flax",
    "torch": "torch",
    "tensorflow": "tensorflow",
    "jax": "jax",
    "jaxlib": "jax",
    "flax": "jax",
    "orbax": "jax",
    "neuralforecast": "neuralforecast",
    "ray": "ray",
    "onnx": "onnx",
    "onnxruntime": "onnx",
    "onnxscript": "onnx",
    "onnxsim": "onnx",
    "tf2onnx": "onnx",
}


def missing_extra(module: str, what: str = "this") -> UnsupportedFormatError | None:
    """The error for an optional dependency that is not installed (exit 4, with the command that
    installs it), or None when `module` belongs to no extra (then its absence is a bug)."""
    extra = EXTRA_OF_MODULE.get(module.split(".")[0])
    if extra is None:
        return None
    return UnsupportedFormatError(f"{what} needs the {extra} extra ({module} is not installed): {install_hint(extra)}")


EXIT_INTERRUPTED = 130


def _meaning(cls: type[ConvertError]) -> str:
    """An exit code's meaning, worded as the table's other lines: the class's first docstring line."""
    text = (cls.__doc__ or "").strip().splitlines()[0].rstrip(".")
    return text[:1].lower() + text[1:]


EXIT_CODES: dict[int, str] = {
    0: "success",
    1: "internal error (a bug: please report it with the traceback printed by -v)",
    **{
        cls.exit_code: _meaning(cls)
        for cls in (
            UsageError,
            SourceNotFoundError,
            UnsupportedFormatError,
            UnsafeInputError,
            CorruptInputError,
            MappingError,
            VerificationError,
            OutputExistsError,
            OutputWriteError,
            BatchFailedError,
        )
    },
    EXIT_INTERRUPTED: "interrupted (Ctrl-C); nothing was left half-written",
}
