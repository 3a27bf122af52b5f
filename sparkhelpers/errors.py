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


def read_user_file(path, what: str, fix: str) -> str:  # noqa: ANN001 (str or Path)
    """The text of a file the user named; an unreadable one is a SparkError naming it (not a traceback)."""
    from pathlib import Path

    try:
        return Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise SparkError(f"cannot read {what} {path}: {exc.strerror}", fix=fix) from None
