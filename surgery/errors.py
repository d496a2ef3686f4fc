"""The two ways a surgery command can fail on purpose.

Everything the user can get wrong (a path, a layer name, a flag) raises `SurgeryError`;
the CLI prints its message as one line and exits with code 2. A verification that ran and
found the models different raises `NotEquivalentError` (exit code 1).
"""

from __future__ import annotations


class SurgeryError(Exception):
    """Bad input or an impossible request. The message is one line that names the problem."""

    exit_code = 2


class NotEquivalentError(SurgeryError):
    """Two models were compared and do not compute the same outputs."""

    exit_code = 1
