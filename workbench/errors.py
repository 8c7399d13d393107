"""Errors the user can fix: reported as one line and exit status 2, never a traceback."""


class UsageError(Exception):
    """A bad value from the user; the message names the value and what is allowed."""

    exit_code = 2


class ResultFileError(UsageError):
    """A result file (run.json, a stage JSON) that cannot be read back: truncated, null, wrong shape."""

    def __init__(self, path, reason: str) -> None:
        self.path, self.reason = path, reason
        super().__init__(f"{path} is not a readable result file ({reason}); "
                         "allowed: a JSON object written by the workbench (move the file aside to go on)")


class SaveError(UsageError):
    """A result that was measured but could not be written (disk full, read-only): kept in memory."""

    exit_code = 74  # EX_IOERR: not the user's input, the place it was to be written

    def __init__(self, path, error: OSError, result: dict | None = None) -> None:
        self.path, self.result = path, result
        reason = error.strerror or type(error).__name__
        super().__init__(f"could not write {path} ({reason}); the measured result is kept in memory "
                         "and printed above; free space or fix permissions, then resume")


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (exit 130) or SIGTERM (exit 143): finished stages are kept, the worker group is stopped."""

    def __init__(self, signal_number: int = 2) -> None:
        super().__init__(signal_number)
        self.exit_code = 128 + signal_number


class StageSkipped(Exception):
    """A stage that does not apply here (e.g. TF32 on a CPU); recorded with this reason."""
