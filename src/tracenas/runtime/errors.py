"""Exceptions that the CLI turns into one-line messages instead of tracebacks."""

from __future__ import annotations


class TracenasError(Exception):
    """Base class for user-facing errors (bad input, unsupported model, unreachable budget...)."""


class UnsupportedModelError(TracenasError):
    """The model family has no adapter."""


class DataError(TracenasError):
    """The data source is missing, unreadable, or too small for the request."""


class BudgetError(TracenasError):
    """The parameter budget cannot be met by the search space."""


class RunDirError(TracenasError):
    """A run directory is missing, incomplete, or corrupt."""


def is_io_failure(err: BaseException) -> bool:
    """Disk full, a file-size limit, permissions...: an OSError, or safetensors' own error type for the same."""
    return isinstance(err, OSError) or type(err).__module__.split(".")[0] in ("safetensors", "safetensors_rust")


def io_failure_reason(err: BaseException) -> str:
    """What the system said (`File too large`), in one line."""
    return getattr(err, "strerror", None) or (str(err).splitlines()[0] if str(err) else type(err).__name__)
