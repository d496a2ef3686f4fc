"""Shared fixtures: quiet TensorFlow, the tests folder on sys.path for `forms`, CLI runner."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]


def run_cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run `python -m surgery ARGS...` and capture its output (the way users run it)."""
    return subprocess.run(
        [sys.executable, "-m", "surgery", *map(str, args)],
        capture_output=True, text=True, cwd=cwd, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"},
    )


@pytest.fixture
def cli():
    return run_cli
