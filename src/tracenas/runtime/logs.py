"""Logging: every verb's run directory gets `<verb>.log`, and console lines never land on a progress bar.

    with run_log(out, "recover"):        # OUT/recover.log receives the `tracenas` logger while the block runs
        ...

The library only adds handlers to the `tracenas` logger (never to the root logger), so a caller sees the
same lines as the CLI through `logging.getLogger("tracenas")`; `console_logging()` is what the CLI installs.
"""

from __future__ import annotations

import io
import logging
import os
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"
DATEFMT = "%H:%M:%S"
LOGGER = "tracenas"


class TqdmHandler(logging.Handler):
    """Writes records through `tqdm.write`, which clears and redraws any active progress bar around them."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            from tqdm import tqdm

            tqdm.write(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


def console_logging(verbose: bool = False) -> None:
    """The CLI's console: INFO (DEBUG with -v) on stderr, in step with progress bars; noisy libraries at WARNING."""
    handler = TqdmHandler()
    handler.setFormatter(logging.Formatter(FORMAT, DATEFMT))
    root = logging.getLogger()
    root.handlers[:] = [h for h in root.handlers if not isinstance(h, TqdmHandler)] + [handler]
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("transformers", "huggingface_hub", "urllib3", "matplotlib", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


@contextmanager
def _attached(handler: logging.Handler) -> Iterator[None]:
    """`handler` receives the `tracenas` logger's INFO records (and up) while the block runs."""
    handler.setFormatter(logging.Formatter(FORMAT))
    handler.setLevel(logging.INFO)
    logger = logging.getLogger(LOGGER)
    if logger.getEffectiveLevel() > logging.INFO:  # a library caller that configured nothing
        logger.setLevel(logging.INFO)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        handler.close()


@contextmanager
def run_log(directory: str | os.PathLike, name: str) -> Iterator[Path]:
    """Append the `tracenas` logger's records to `directory/name.log` while the block runs (INFO and up,
    whatever the console shows). `directory` must exist."""
    path = Path(directory) / f"{name}.log"
    with _attached(logging.FileHandler(path)):
        yield path


@contextmanager
def captured_log() -> Iterator[io.StringIO]:
    """Collect the `tracenas` logger's INFO records in memory (for a log that is written with its results)."""
    buffer = io.StringIO()
    with _attached(logging.StreamHandler(buffer)):
        yield buffer


__all__ = ["TqdmHandler", "captured_log", "console_logging", "run_log"]
