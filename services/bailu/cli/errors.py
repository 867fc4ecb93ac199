"""What the CLI reports as one line on stderr, with the exit code scripts can rely on."""

from __future__ import annotations

# Exit codes: 0 done, 1 the operation failed (not found, not allowed, unreachable), 2 the command line is wrong.
FAILED = 1
USAGE = 2


class CliError(Exception):
    """An error the CLI prints as `bailu: error: <message>` and exits with `code` (never a traceback)."""

    def __init__(self, message: str, code: int = FAILED) -> None:
        super().__init__(message)
        self.message = message
        self.code = code


class UsageError(CliError):
    """The command line itself is wrong (exit 2, as argparse does)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, USAGE)
