"""Crash-safe file writes: temp file in the same directory, fsync, rename, fsync the directory."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

FILE_MODE = 0o644  # what `open()` gives under the usual umask: artifacts, models and sidecars alike


def write_temp(directory: Path, data: bytes, *, prefix: str = ".tmp-") -> Path:
    """Write `data` to a fsynced temp file inside `directory` (same filesystem as the target)."""
    directory.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(dir=directory, prefix=prefix)
    try:
        os.fchmod(fd, FILE_MODE)  # mkstemp's 0600 would make published files unreadable to others
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise
    return Path(name)


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Replace `path` with `data`; readers see the old file or the new one, never a mix."""
    tmp = write_temp(path.parent, data)
    try:
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def link_exclusive(tmp: Path, path: Path) -> bool:
    """Publish `tmp` as `path` only if `path` does not exist yet (atomic, race-free across processes)."""
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    fsync_dir(path.parent)
    return True
