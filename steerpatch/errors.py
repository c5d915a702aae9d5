"""The error tree. Every error a user can cause is a `SteerpatchError` with an exit code.

The CLI prints `str(error)` as one line (or one line per problem for documents) and exits with
`error.exit_code`; no traceback reaches the user for these.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

# a document with 10^5 bad entries must not print megabytes: show this many, then a count
MAX_SHOWN = 20


def shorten(items: Sequence[Any], limit: int = MAX_SHOWN, sep: str = ", ") -> str:
    """Join the first `limit` items and say how many more there are.

    Example:
        >>> shorten(list(range(100_000)), 3)
        '0, 1, 2 and 99,997 more'
    """
    shown = sep.join(str(item) for item in items[:limit])
    rest = len(items) - limit
    return f"{shown} and {rest:,} more" if rest > 0 else shown


def shown_value(value: Any, limit: int = 80) -> str:
    """`repr(value)`, cut to `limit` characters with the full length said: a hostile value must not fill a message.

    Example:
        >>> shown_value("x" * 5000, 10)
        "'xxxxxxxx… (5,000 characters)"
    """
    text = repr(value)
    if len(text) <= limit:
        return text
    length = len(value) if isinstance(value, str | bytes) else len(text)
    return f"{text[: limit - 1]}… ({length:,} characters)"


def shown_problems(problems: Sequence[str], limit: int = MAX_SHOWN) -> list[str]:
    """The first `limit` problems, plus one line counting the rest."""
    if len(problems) <= limit:
        return list(problems)
    return [*problems[:limit], f"and {len(problems) - limit:,} more problems"]


class SteerpatchError(Exception):
    """Base class: bad input or a refused operation. Exit code 2 unless a subclass says otherwise."""

    exit_code = 2

    def __init__(self, message: str, problems: Iterable[str] = ()) -> None:
        self.problems = list(problems)
        if self.problems:
            message = message + "\n" + "\n".join(f"  - {p}" for p in shown_problems(self.problems))
        super().__init__(message)


class PatchError(SteerpatchError):
    """A patch document is invalid, tampered with, or does not fit its model or SAE."""


class SAEError(SteerpatchError):
    """An SAE folder or file is malformed or does not fit the model."""


class ModelError(SteerpatchError):
    """A model cannot be found, loaded or fingerprinted."""


class DatasetError(SteerpatchError):
    """An image folder or manifest is missing, empty or unreadable."""


class OutputError(SteerpatchError):
    """An output location cannot be written (exists and is not empty, say)."""


class RegistryError(SteerpatchError):
    """The MLflow registry refused an operation or holds something unexpected."""


class CompileError(SteerpatchError):
    """An ONNX graph could not be built, or failed its parity check."""


class MissingDependencyError(SteerpatchError):
    """An optional dependency (an extra) is needed for this command."""


class GateFailed(SteerpatchError):
    """A validation verdict or promotion gate failed. Exit code 1: the input was fine, the result was not."""

    exit_code = 1


class IntegrityError(SteerpatchError):
    """A stored artifact no longer matches its recorded hash. Exit code 1."""

    exit_code = 1
