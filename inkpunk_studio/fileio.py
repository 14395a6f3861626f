"""Crash-safe file writes: a temp file in the same folder, fsync, then an atomic rename.

A reader (or a restart after a crash) sees either the old file or the complete new one, never a torn write.
Temp files start with ``TEMP_PREFIX`` so a later start can find the ones a killed process left behind.
:func:`check_output_folder` tries a folder before a run; :func:`describe_write_error` puts a failed write in
words that name the folder, not the temp file.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
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


def _is_file_not_folder(folder: Path) -> Path | None:
    """The first of ``folder`` and its parents that exists as something other than a folder, if any."""
    for candidate in (folder, *folder.parents):
        try:
            if candidate.exists():
                return None if candidate.is_dir() else candidate
        except OSError:
            return None
    return None


def describe_write_error(exc: OSError, folder: str | Path) -> str:
    """A sentence for the person about a failed write into ``folder``.

    Built from the errno and the folder, never from ``str(exc)``: that names the hidden temp file of
    :func:`atomic_write_bytes`, which means nothing to anyone and no longer exists.
    """
    folder = Path(folder)
    blocker = _is_file_not_folder(folder)
    if blocker is not None:
        return f"{blocker} is a file, not a folder."
    code = exc.errno
    if code in (errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)):
        return f"The disk holding {folder} is full."
    if code == errno.EROFS:
        return f"{folder} is on a read-only disk."
    if code in (errno.EACCES, errno.EPERM):
        return f"{folder} is not writable (permission denied)."
    reason = os.strerror(code) if code else (exc.strerror or type(exc).__name__)
    return f"Could not write to {folder}: {reason}."


def check_output_folder(folder: str | Path, need_bytes: int = 0) -> str | None:
    """None if images can be written into ``folder`` (created if missing), else what is wrong, in words.

    Tries what a save does, on a small scale: create the folder, create and remove a temp file in it (root
    and ACLs make permission bits an unreliable answer), and compare the free space with ``need_bytes``.
    """
    folder = Path(folder)
    blocker = _is_file_not_folder(folder)
    if blocker is not None:
        return f"{blocker} is a file, not a folder."
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f"{TEMP_PREFIX}probe.{secrets.token_hex(4)}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        os.unlink(probe)
    except OSError as exc:
        return describe_write_error(exc, folder)
    if need_bytes > 0:
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            return None  # can't tell: let the save itself say
        if free < need_bytes:
            return (f"The disk holding {folder} is nearly full: {_megabytes(free)} free, about "
                    f"{_megabytes(need_bytes)} needed.")
    return None


def _megabytes(n: int) -> str:
    return f"{n / (1 << 20):.1f} MB" if n < (10 << 20) else f"{n / (1 << 20):.0f} MB"
