"""A cosine-to-zero learning-rate schedule whose length can change without retracing.

Imported only after TensorFlow is (it subclasses a Keras class).
"""

from __future__ import annotations

import math

import keras


@keras.saving.register_keras_serializable(package="training")
class CosineToZero(keras.optimizers.schedules.LearningRateSchedule):
    """``peak · ½ (1 + cos(π · min(step + offset, total) / total))``: from `peak` to zero at `total`.

    `peak`, `total` and `offset` are variables, so one compiled model serves every budget
    (`ModelPool`): set them with `set` before training. Registered as serializable: an exported
    model's metadata records its compile configuration, schedule included. `offset` counts steps an earlier
    optimizer took (a reset optimizer's counter restarts at 0; a carried one's does not).
    """

    def __init__(self, peak: float = 1e-3, total: int = 1) -> None:
        self.peak = keras.Variable(float(peak), trainable=False, name="cosine_peak")
        self.total = keras.Variable(float(total), trainable=False, name="cosine_total")
        self.offset = keras.Variable(0.0, trainable=False, name="cosine_offset")

    def set(self, *, peak: float, total: int, offset: int = 0) -> None:
        self.peak.assign(float(peak))
        self.total.assign(float(max(total, 1)))
        self.offset.assign(float(offset))

    def __call__(self, step):
        progress = keras.ops.minimum(keras.ops.cast(step, "float32") + self.offset, self.total) / self.total
        return self.peak * 0.5 * (1.0 + keras.ops.cos(math.pi * progress))

    def get_config(self) -> dict:
        return {"peak": float(self.peak.numpy()), "total": int(self.total.numpy())}
