"""TF1 name-based checkpoints for the tests, written by real TensorFlow in graph mode."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def save_with_slots(
    prefix: Path, shapes: dict[str, tuple[int, ...]], slots: tuple[str, ...] = ("adam_m", "adam_v")
) -> tuple[str, dict[str, np.ndarray]]:
    """Variables of these names and shapes (seeded random values), each with optimizer slots
    `<name>/<slot>` made as BERT's AdamWeightDecayOptimizer makes them (get_variable of the same shape),
    and a global_step, saved with tf.compat.v1's Saver: (the checkpoint prefix, the variables' values)."""
    import tensorflow as tf

    v1 = tf.compat.v1
    with tf.Graph().as_default(), v1.Session() as session:
        v1.set_random_seed(19)
        normal = v1.random_normal_initializer()
        params = {name: v1.get_variable(name, shape, initializer=normal) for name, shape in shapes.items()}
        for name, shape in shapes.items():
            for slot in slots:
                v1.get_variable(f"{name}/{slot}", shape, trainable=False, initializer=normal)
        v1.train.get_or_create_global_step()
        session.run(v1.global_variables_initializer())
        values = dict(zip(params, session.run(list(params.values())), strict=True))
        return str(v1.train.Saver().save(session, str(prefix))), values
