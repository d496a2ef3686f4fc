"""Prove that two models compute the same function, bit for bit, and say where they part.

`verify(reference, candidate)` runs both models on the same inputs with the same onnxruntime
session options and compares every output that has the same name in both:

- **exact mode** (the default): the models are equivalent only when every output element has
  the same bits in both (a NaN matches any NaN in the same position);
- **tolerance mode** (`atol` and/or `rtol` given, or a Keras model on either side): an element
  fails when it is beyond both tolerances, ``|a - b| > atol`` and ``|a - b| / |a| > rtol``, as
  Polygraphy does; a missing tolerance counts as 0.

Execution is part of the claim. onnxruntime's graph optimizations pick CPU kernels by tensor
shape (its NCHWc transformer blocks Conv channels by 8 or 16), so two functionally identical
graphs with different channel counts can differ by a few ULP once optimized. Exact mode
therefore runs with graph optimizations disabled unless told otherwise; ``deployed=True``
additionally runs both at the default level (``all``) and reports the ULP distance there.

The package, one module per job:

- `report`: `Report`, `OutputComparison`, `Located` and their rendering;
- `comparison`: bitwise/ULP/tolerance arithmetic and the Keras-vs-ONNX rule (`keras_difference`);
- `runtime`: the one onnxruntime session factory (`runtime.session`) and its options;
- `feeds`: random and user-given inputs, symbolic-dimension defaults;
- `sides`: an ONNX or Keras model as one side of a comparison;
- `locate`: the first differing node;
- `core`: `verify` itself.

Example:
    >>> report = verify("models/mlp.onnx", "runs/mlp-wide.onnx", samples=1000, batch=100)
    >>> report.equivalent
    True
"""

from __future__ import annotations

from surgery.verification.comparison import KERAS_TOLERANCE, compare_arrays, keras_difference
from surgery.verification.core import ModelSource, verify
from surgery.verification.feeds import InputSpec
from surgery.verification.report import Located, OutputComparison, Report, describe_mode
from surgery.verification.runtime import (
    OPTIMIZATION_LEVELS,
    PROVIDERS,
    describe_session_options,
    session,
    session_options,
)

__all__ = [
    "KERAS_TOLERANCE",
    "OPTIMIZATION_LEVELS",
    "PROVIDERS",
    "InputSpec",
    "Located",
    "ModelSource",
    "OutputComparison",
    "Report",
    "compare_arrays",
    "describe_mode",
    "describe_session_options",
    "keras_difference",
    "session",
    "session_options",
    "verify",
]
