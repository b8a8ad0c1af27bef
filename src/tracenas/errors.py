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
