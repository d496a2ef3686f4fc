"""Importing TensorFlow quietly, for the commands that need it (export, to-keras, Keras verify).

TensorFlow's C++ runtime writes several log lines to stderr at import (absl start-up, CUDA
probing) before `TF_CPP_MIN_LOG_LEVEL` is honoured. A command's stderr carries the toolkit's
one-line errors, so the import runs with file descriptor 2 pointed at /dev/null; Python-level
errors still raise normally.
"""

from __future__ import annotations

import os
import sys
from types import ModuleType


def import_tensorflow() -> ModuleType:
    """Import and return `tensorflow`, without its start-up logging."""
    if "tensorflow" in sys.modules:
        return sys.modules["tensorflow"]
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    sys.stderr.flush()
    saved = os.dup(2)
    devnull = os.open(os.devnull, os.O_WRONLY)
    try:
        os.dup2(devnull, 2)
        import keras  # noqa: F401  (its backend start-up logs too)
        import tensorflow
    finally:
        os.dup2(saved, 2)
        os.close(saved)
        os.close(devnull)
    # Python-side warnings (tf.function retracing advice) would interleave with our output.
    tensorflow.get_logger().setLevel("ERROR")
    return tensorflow
