"""Which entries of a TF1 name-based checkpoint are training state, not the model's weights.

tf.compat.v1's optimizers keep a slot for each trained variable `<v>` as the variable `<v>/<slot>`
(slot_creator: the primary's name, `/`, the optimizer's name, made unique with `_1`, `_2`: Adam's
`m` and `v` are `Adam` and `Adam_1`), of the variable's shape and dtype, partitioned like it; BERT's
AdamWeightDecayOptimizer names them `adam_m` and `adam_v`. A slot is recognised by that structure
(the name and a sibling entry it shadows), never by its suffix alone, so a weight that merely ends
in `Adam` is kept. Scalars such as `global_step` and Adam's `beta1_power` are counters.
ExponentialMovingAverage shadows (`<v>/ExponentialMovingAverage`) are weights too, averaged ones:
left out by default, taken in place of their variables on request, as TF's `variables_to_restore`
restores them (a shadow where one exists, else the variable itself).
"""

from __future__ import annotations

import re
from collections.abc import Mapping

from exporters.tensorflow.bundle import Entry

# The names tf.compat.v1.train's optimizers give their slots (their default `name`), and BERT's.
SLOT_NAMES = ("Adam", "Momentum", "RMSProp", "Adagrad", "ProximalAdagrad", "AdagradDA", "Ftrl", "Adadelta", "adam_m", "adam_v")
_SLOT = re.compile(rf"^({'|'.join(SLOT_NAMES)})(_[0-9]+)?$")
# tf.compat.v1.train.ExponentialMovingAverage's default name for its shadow variables.
SHADOW = "ExponentialMovingAverage"
_SCALARS = (
    (re.compile(r"^beta[12]_power(_[0-9]+)?$"), "optimizer state"),
    (re.compile(r"^(global_step|step)(_[0-9]+)?$"), "training counter"),
    (re.compile(r"^(learning_rate|lr)(_[0-9]+)?$"), "learning rate"),
)


def training_state(entries: Mapping[str, Entry]) -> dict[str, str]:
    """Checkpoint key -> why it is not converted, for every entry that is training state."""
    out: dict[str, str] = {}
    for key, entry in entries.items():
        owner, _, leaf = key.rpartition("/")
        if companion(owner, key, entries):
            if _SLOT.match(leaf):
                out[key] = f"optimizer state (slot {leaf} of {owner})"
                continue
            if leaf == SHADOW:
                out[key] = f"an {SHADOW} shadow of {owner} (an alternative set of weights; --key {SHADOW} takes them)"
                continue
        if entry.shape == ():
            why = next((why for pattern, why in _SCALARS if pattern.match(leaf)), None)
            if why is not None:
                out[key] = why
    return out


def averages(entries: Mapping[str, Entry]) -> dict[str, str]:
    """Variable -> the key of its ExponentialMovingAverage shadow, for each variable that has one."""
    return {
        owner: key for key in entries if companion(owner := key.rpartition("/")[0], key, entries) and key.endswith("/" + SHADOW)
    }


def companion(owner: str, key: str, entries: Mapping[str, Entry]) -> bool:
    """`key` (`<owner>/<leaf>`) can be a slot or shadow of the entry `owner`: it has its shape and dtype."""
    primary, entry = entries.get(owner) if owner else None, entries[key]
    return primary is not None and (primary.shape, primary.dtype) == (entry.shape, entry.dtype)
