"""The one error type users see: what went wrong and how to fix it."""

from __future__ import annotations


class SparkError(Exception):
    """A failure the user can act on. The CLI prints ``sparkhelpers: message`` (and the fix), exit 1."""

    exit_code = 1

    def __init__(self, message: str, fix: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.fix = fix

    def __str__(self) -> str:
        return f"{self.message} (fix: {self.fix})" if self.fix else self.message


class UsageError(SparkError):
    """Bad arguments: exit 2, like every entry script."""

    exit_code = 2
