"""Helpers for users' own test suites.

Example (in a pytest file):
    >>> from surgery.testing import assert_equivalent
    >>> def test_widening_preserves_function():
    ...     assert_equivalent("models/mlp.onnx", surgery.widen(onnx.load("models/mlp.onnx"), {"dense": 8}))
"""

from __future__ import annotations

from typing import Any

from surgery.verification import ModelSource, Report, verify


def assert_equivalent(reference: ModelSource, candidate: ModelSource, **verify_kwargs: Any) -> Report:
    """Verify `candidate` against `reference` (see `surgery.verify`); fail with the report's summary.

    Raises AssertionError, whose message is the report's table, when the models are not
    equivalent; returns the report otherwise. Bad input still raises SurgeryError.
    """
    __tracebackhide__ = True  # pytest shows the caller's line, not this helper's
    report = verify(reference, candidate, **verify_kwargs)
    if not report.equivalent:
        raise AssertionError("models are not equivalent\n" + report.summary())
    return report
