"""Run directories: checked before any work, and left as they were found when a command fails.

    with RunDirGuard(out, resumable=lambda: (out / "search/state.json").exists()):
        ...  # writes into out; on an exception, what this block created is removed again

A guard never removes anything that existed before it was entered, so a user's own files (and an
earlier run's results) survive any failure. What it created stays when `resumable()` says the
partial result can be continued with `--resume`.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from tracenas.runtime.config import current_umask
from tracenas.runtime.errors import RunDirError

log = logging.getLogger(__name__)


def check_writable_dir(path: str | os.PathLike, flag: str = "--out") -> Path:
    """Refuse (one line) a `path` that is an existing file, or an existing directory we cannot write."""
    path = Path(path).expanduser()
    if path.exists() and not path.is_dir():
        raise RunDirError(f"{flag} {path} is an existing file, not a directory; choose another {flag}")
    probe = path
    while not probe.exists():  # the nearest existing ancestor decides whether the directory can be made
        probe = probe.parent
    if not probe.is_dir():
        raise RunDirError(f"{flag} {path}: {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RunDirError(f"{flag} {path}: no write permission in {probe}")
    return path


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def staging_dir(target: Path) -> Path:
    """A new, empty directory next to `target` to build it in (`.NAME.tmp-PID-XXXX`, umask permissions).

    Staging directories of processes that no longer run (a killed export) are removed first.
    """
    clean_stale_staging(target)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.tmp-{os.getpid()}-"))
    os.chmod(tmp, 0o777 & ~current_umask())  # mkdtemp makes it private (0700); the result is an ordinary dir
    return tmp


def clean_stale_staging(target: Path) -> list[Path]:
    """Remove `.NAME.tmp-PID-*` / `.NAME.old-PID-*` next to `target` left by dead processes; returns them."""
    pattern = re.compile(rf"^\.{re.escape(target.name)}\.(?:tmp|old)-(\d+)-")
    removed = []
    if not target.parent.is_dir():
        return removed
    for entry in target.parent.iterdir():
        m = pattern.match(entry.name)
        if m and int(m.group(1)) != os.getpid() and not _pid_alive(int(m.group(1))):
            shutil.rmtree(entry, ignore_errors=True)
            removed.append(entry)
            log.info("removed %s, left by an interrupted run", entry)
    return removed


def follow_umask(path: str | os.PathLike) -> None:
    """Give a file tracenas wrote the permissions the umask asks for: safetensors and `tempfile` create files
    private (0600), but a result is an ordinary file a teammate can read when the umask allows it."""
    os.chmod(path, 0o666 & ~current_umask())


def save_tensors(tensors: dict, path: str | os.PathLike, metadata: dict[str, str] | None = None) -> None:
    """`safetensors.torch.save_file`, with the umask's permissions (see `follow_umask`)."""
    from safetensors.torch import save_file

    save_file(tensors, str(path), metadata=metadata)
    follow_umask(path)


def install_dir(tmp: Path, target: Path) -> None:
    """Move the finished `tmp` to `target`; an existing `target` is swapped out only now, and put back if
    the move fails, so readers see the old or the new directory, never neither. Every file inside gets the
    umask's permissions first (whatever wrote it: safetensors, transformers' `save_pretrained`, accelerate)."""
    for f in tmp.rglob("*"):
        if f.is_file() and not f.is_symlink():
            follow_umask(f)
    old = None
    if target.exists():
        old = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-{os.getpid()}-"))
        os.replace(target, old / "x")
    try:
        os.replace(tmp, target)
    except BaseException:
        if old is not None:
            os.replace(old / "x", target)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


class RunDirGuard:
    """Create `out` on entry; on an exception remove exactly what was created inside it since entry."""

    def __init__(self, out: str | os.PathLike, *, resumable: Callable[[], bool] = lambda: False) -> None:
        self.out = Path(out).expanduser()
        self.resumable = resumable
        self._existed = False
        self._before: set[str] = set()
        self._created = self.out

    def __enter__(self) -> Path:
        check_writable_dir(self.out)
        self._existed = self.out.is_dir()
        self._before = set(os.listdir(self.out)) if self._existed else set()
        self._created = self.out  # the outermost directory this guard creates (`runs/` for a new `runs/x`)
        while not self._created.parent.exists():
            self._created = self._created.parent
        self.out.mkdir(parents=True, exist_ok=True)
        return self.out

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        if exc_type is None or self.resumable():
            return
        if not self._existed:
            shutil.rmtree(self._created, ignore_errors=True)
            return
        for name in set(os.listdir(self.out)) - self._before:
            path = self.out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


__all__ = ["RunDirGuard", "check_writable_dir", "clean_stale_staging", "install_dir", "staging_dir"]
