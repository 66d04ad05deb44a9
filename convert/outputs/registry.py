"""Every output format, one line each. The faces pick from here and hand the pipeline and `verify`
what they chose; adding a format is its package, one line below and its tests."""

from __future__ import annotations

from convert.errors import UsageError
from convert.output_contract import Output, Outputs

from .fann import OUTPUT as RUV_FANN
from .gguf import OUTPUT as GGUF
from .safetensors import OUTPUT as SAFETENSORS

OUTPUTS: tuple[Output, ...] = (
    SAFETENSORS,
    GGUF,
    RUV_FANN,
)


def outputs_for(target: str = "safetensors") -> Outputs:
    """The tensor output named `target`, with every companion that may write beside it."""
    chosen = next((o for o in OUTPUTS if o.role == "tensors" and o.name == target), None)
    if chosen is None:
        raise UsageError(f"no output format {target!r} (formats: {', '.join(o.name for o in OUTPUTS if o.role == 'tensors')})")
    return Outputs(chosen, tuple(o for o in OUTPUTS if o.role == "companion"))
