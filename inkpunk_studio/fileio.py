"""Crash-safe file writes: a temp file in the same folder, fsync, then an atomic rename.

A reader (or a restart after a crash) sees either the old file or the complete new one, never a torn write.
Temp files start with ``TEMP_PREFIX`` so a later start can find the ones a killed process left behind.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

TEMP_PREFIX = ".tmp-"


def _fsync_dir(folder: Path) -> None:
    """Make a rename durable. Not possible on Windows (directories can't be opened), where NTFS journals it."""
    if os.name == "nt":
        return
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` atomically and durably; returns ``path``.

    On any failure the temp file is removed and the exception propagates; an existing file at ``path`` is
    left untouched.
    """
    path = Path(path)
    folder = path.parent
    tmp = folder / f"{TEMP_PREFIX}{path.name}.{secrets.token_hex(4)}"
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0)
    fd = os.open(tmp, flags, 0o666)  # 0o666 & ~umask, like a plain open()
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(folder)
    return path


def remove_stale_temp_files(folder: str | Path, older_than: float = 60.0) -> int:
    """Delete ``TEMP_PREFIX`` files in ``folder`` last modified more than ``older_than`` seconds ago.

    The age limit keeps a second process that is writing into the same folder right now safe.
    Returns how many were removed.
    """
    folder = Path(folder)
    removed = 0
    now = time.time()
    try:
        entries = list(folder.iterdir())
    except OSError:
        return 0
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        try:
            if entry.is_file() and now - entry.stat().st_mtime >= older_than:
                entry.unlink()
                removed += 1
        except OSError:
            continue
    return removed
