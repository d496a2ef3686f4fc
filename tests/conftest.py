"""Shared fixtures and helpers: quiet TensorFlow, the tests folder on sys.path for `forms`, the
CLI run as a subprocess (`run_cli`, the `cli` fixture) or in-process (`run_surgery`), and the
one-line-error assertion every command's bad-input tests make."""

from __future__ import annotations

import hashlib
import logging
import os
import subprocess
import sys
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
sys.path.insert(0, str(Path(__file__).parent))

ROOT = Path(__file__).resolve().parents[1]


def cli_env(**extra: str) -> dict[str, str]:
    """The environment the commands run in: TensorFlow's C++ start-up logs off."""
    return {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3", **extra}


def run_module(
    module: str, *args, cwd: Path | None = None, timeout: float | None = None
) -> subprocess.CompletedProcess:
    """Run `python -m MODULE ARGS...` and capture its output (the way users run it)."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=cli_env(),
        timeout=timeout,
    )


def run_cli(*args, cwd: Path | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run `python -m surgery ARGS...` and capture its output (the way users run it)."""
    return run_module("surgery", *args, cwd=cwd, timeout=timeout)


@pytest.fixture
def cli():
    return run_cli


def run_surgery(capfd, *args) -> subprocess.CompletedProcess:
    """`surgery ARGS...` in this process; stdout/stderr captured at the file-descriptor level."""
    from surgery.cli import cli as surgery_cli

    capfd.readouterr()
    # As in a real run, the root logger starts without handlers (pytest's are set aside), so a
    # library's logged warning reaches stderr unless the CLI keeps it off.
    root = logging.getLogger()
    saved = root.handlers[:]
    root.handlers.clear()
    try:
        surgery_cli.main([str(a) for a in args], prog_name="surgery")
        code = 0
    except SystemExit as done:
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
    finally:
        root.handlers[:] = saved
    out, err = capfd.readouterr()
    return subprocess.CompletedProcess(["surgery", *map(str, args)], code, out, err)


def assert_one_line_error(
    result: subprocess.CompletedProcess,
    *,
    code: int = 2,
    names: str | None = None,
    says: tuple[str, ...] = (),
    prefix: str = "surgery: ",
) -> str:
    """The clean error path: exit `code`, no traceback, exactly one line on stderr that starts
    with `prefix`, is not an internal error, names `names` and says each of `says`."""
    err = result.stderr
    assert "Traceback" not in err, err
    assert result.returncode == code, (result.returncode, err, result.stdout[-2000:])
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    line = lines[0]
    assert line.startswith(prefix) and "internal error" not in line, line
    if names is not None:
        assert names in line, f"{names!r} not named in: {line}"
    for text in says:
        assert text in line, f"{text!r} not in: {line}"
    return line


def reader_of(model, initializer: str) -> str:
    """The name of the node that reads `initializer` (found through the graph, not assumed)."""
    from surgery.graph import as_ir, consumers

    (node,) = consumers(as_ir(model).graph.initializers[initializer])
    return node.name


def digest(folder: Path) -> dict[str, str]:
    """sha256 of every file under `folder` (the inputs' fingerprint)."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }
