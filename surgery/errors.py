"""The two ways a surgery command can fail on purpose.

Everything the user can get wrong (a path, a layer name, an argument) raises `SurgeryError`;
the CLI prints its message as one line and exits with code 2. A verification that ran and
found the models different raises `NotEquivalentError` (exit code 1). `first_line` is how
a library's exception is quoted inside such a one-line message.

The library does not know the CLI's flags. An error about one argument names it with
`param` (the Python parameter, e.g. ``param="dims"``), and its message says ``{param}`` where
the argument's name belongs: ``str(error)`` writes the parameter's name, and the CLI writes its
own flag for it with `error.render(flag)`.

Example:
    >>> error = SurgeryError("{param} must be at least 1, got 0", param="align")
    >>> str(error), error.render("--align")
    ('align must be at least 1, got 0', '--align must be at least 1, got 0')
"""

from __future__ import annotations

#: The marker a message writes where the argument's name belongs.
PARAM = "{param}"


class SurgeryError(Exception):
    """Bad input or an impossible request. The message is one line that names the problem."""

    exit_code = 2

    def __init__(self, message: str, *, param: str | None = None) -> None:
        self.message = message
        self.param = param
        super().__init__(self.render(param))

    def render(self, name: str | None) -> str:
        """The message with the argument called `name` (a flag, or the parameter's own name)."""
        if self.param is None or name is None:
            return self.message.replace(PARAM, self.param or "")
        return self.message.replace(PARAM, name)


class NotEquivalentError(SurgeryError):
    """Two models were compared and do not compute the same outputs."""

    exit_code = 1


def first_line(error: BaseException) -> str:
    """The first line of `error`'s message (or its type name when it has none), for one-line errors."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__
