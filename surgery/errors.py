"""The two ways a surgery command can fail on purpose.

Everything the user can get wrong (a path, a layer name, a flag) raises `SurgeryError`;
the CLI prints its message as one line and exits with code 2. A verification that ran and
found the models different raises `NotEquivalentError` (exit code 1). `first_line` is how
a library's exception is quoted inside such a one-line message.
"""

from __future__ import annotations


class SurgeryError(Exception):
    """Bad input or an impossible request. The message is one line that names the problem."""

    exit_code = 2


class NotEquivalentError(SurgeryError):
    """Two models were compared and do not compute the same outputs."""

    exit_code = 1


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message (or its type name when it has none), for one-line errors."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
