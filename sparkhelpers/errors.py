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


def close_names(word: str, choices, n: int = 3) -> list[str]:  # noqa: ANN001 (any iterable of str)
    """Names close to ``word``: a case-insensitive exact match alone, else difflib's close matches."""
    import difflib

    lower = {str(c).lower(): str(c) for c in choices}
    if word.lower() in lower:
        return [lower[word.lower()]]
    return [lower[m] for m in difflib.get_close_matches(word.lower(), list(lower), n=n, cutoff=0.6)]


def did_you_mean(word: str, choices) -> str:  # noqa: ANN001
    """"did you mean 'x' or 'y'?" (empty when nothing is close), for an error's fix."""
    names = close_names(word, choices)
    return f"did you mean {' or '.join(repr(n) for n in names)}?" if names else ""
