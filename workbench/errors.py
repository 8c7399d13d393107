"""Errors the user can fix: reported as one line and exit status 2, never a traceback."""


class UsageError(Exception):
    """A bad value from the user; the message names the value and what is allowed."""

    exit_code = 2


class StageSkipped(Exception):
    """A stage that does not apply here (e.g. TF32 on a CPU); recorded with this reason."""
