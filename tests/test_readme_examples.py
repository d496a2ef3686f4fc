"""Every shell example in README.md and docs/*.md runs as shown.

An example is a line in a fenced block that starts with `$ surgery ` (or `surgery `); the lines
after it, up to the next command or the end of the block, are what it prints. Each page's
examples run in order, in a fresh folder holding copies of models/ and tests/fixtures/, through
the CLI in this process. A command must exit 0, or with the code its `# exit N` comment
documents, and every printed line shown must appear in its output (lines compared without
surrounding spaces; a line `...` or `…` marks output left out). Synopses are not run: `usage:`
lines, and any line with an optional-flag bracket `[--`.
"""

from __future__ import annotations

import re
import shlex
import shutil
from pathlib import Path

import pytest
from conftest import ROOT, run_surgery

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
EXIT = re.compile(r"\s+#\s*exit\s+(\d+)\s*$")
#: tf2onnx numbers the symbolic dimensions it makes up (``unk__20``) afresh in every conversion, and
#: the count runs on within one process: a freshly exported model's dimension names are compared
#: without their number.
TF2ONNX_DIM = re.compile(r"unk__\d+")


def examples(page: Path) -> list[tuple[int, list[str], int, list[str]]]:
    """(line number, argv after `surgery`, expected exit code, expected output lines) per example."""
    found: list[tuple[int, list[str], int, list[str]]] = []
    fenced = False
    current: tuple[int, list[str], int, list[str]] | None = None
    for number, line in enumerate(page.read_text().splitlines(), start=1):
        if line.startswith("```"):
            fenced, current = not fenced, None
            continue
        if not fenced:
            continue
        command = line[2:] if line.startswith("$ ") else line
        if command.startswith("surgery ") and "[--" in command:
            current = None  # a synopsis
        elif command.startswith("surgery "):
            code = EXIT.search(command)
            command = re.sub(r"\s+#.*$", "", command)
            current = (number, shlex.split(command)[1:], int(code.group(1)) if code else 0, [])
            found.append(current)
        elif line.startswith("$ "):
            current = None  # another program's command: not run, its output not checked
        elif current is not None and line.strip() and line.strip() not in ("...", "…"):
            current[3].append(line.strip())
    return found


def _pages_with_examples() -> list[Path]:
    return [page for page in PAGES if examples(page)]


def test_docs_have_examples() -> None:
    names = {page.name for page in _pages_with_examples()}
    assert {"README.md", "widen.md", "verify.md", "to-keras.md"} <= names, names


@pytest.mark.slow
@pytest.mark.parametrize("page", _pages_with_examples(), ids=lambda page: page.name)
def test_examples_run_as_shown(page: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd) -> None:
    shutil.copytree(ROOT / "models", tmp_path / "models")
    shutil.copytree(ROOT / "tests" / "fixtures", tmp_path / "tests" / "fixtures")
    monkeypatch.chdir(tmp_path)
    for number, argv, code, shown in examples(page):
        done = run_surgery(capfd, *argv)
        where = f"{page.name}:{number}: surgery {shlex.join(argv)}"
        assert done.returncode == code, f"{where}: exit {done.returncode}\n{done.stdout}{done.stderr}"
        printed = {TF2ONNX_DIM.sub("unk__N", line.strip()) for line in (done.stdout + done.stderr).splitlines()}
        missing = [line for line in shown if TF2ONNX_DIM.sub("unk__N", line) not in printed]
        assert not missing, f"{where}: not printed: {missing}\n{done.stdout}{done.stderr}"
