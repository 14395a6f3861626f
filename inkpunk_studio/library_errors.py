"""The library's errors: SQLite failures told apart and put in words for the user.

:func:`library_error` maps SQLite's result codes (https://www.sqlite.org/rescode.html) to a
:class:`LibraryError` subclass whose text can go straight into the status bar; :func:`translated` applies it to
a method of an object with a ``db_path``.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import ParamSpec, TypeVar

P = ParamSpec("P")
R = TypeVar("R")


class LibraryError(OSError):
    """The library's database can't do what was asked; ``str(error)`` is a sentence for the user."""


class LibraryBusyError(LibraryError):
    """Another program holds the database's write lock; trying again later may work."""


class LibraryDamagedError(LibraryError):
    """The database file is damaged (or isn't an SQLite database); see ``library.set_aside_database``."""


class LibraryReadOnlyError(LibraryError):
    """The database (or its folder) can't be written."""


# SQLite's primary result codes (https://www.sqlite.org/rescode.html)
_BUSY, _LOCKED, _READONLY, _IOERR, _CORRUPT, _FULL, _CANTOPEN, _TOOBIG, _NOTADB = 5, 6, 8, 10, 11, 13, 14, 18, 26


def library_error(exc: sqlite3.Error, db_path: Path) -> LibraryError:
    """A :class:`LibraryError` saying in words what ``exc`` means for the library at ``db_path``."""
    code = getattr(exc, "sqlite_errorcode", None)
    primary = code & 0xFF if isinstance(code, int) else None
    text = str(exc).lower()
    if primary in (_BUSY, _LOCKED) or "locked" in text or "busy" in text:
        return LibraryBusyError("The library is busy: another program is using its database "
                                f"({db_path}). Try again in a moment.")
    if primary == _READONLY or "readonly" in text or "read-only" in text:
        return LibraryReadOnlyError(f"The library database can't be written (read-only): {db_path}")
    if primary in (_CORRUPT, _NOTADB) or "malformed" in text or "not a database" in text:
        return LibraryDamagedError(f"The library database is damaged: {db_path} ({exc})")
    if primary == _FULL or "full" in text:
        return LibraryError(f"The disk holding the library is full ({db_path.parent}).")
    if primary == _TOOBIG or "too big" in text:
        return LibraryError("The favorite is too large for the library database (a very long prompt?).")
    if primary == _CANTOPEN:
        return LibraryReadOnlyError(f"The library database can't be opened: {db_path} ({exc})")
    return LibraryError(f"The library database failed: {exc}")


def translated(method: Callable[P, R]) -> Callable[P, R]:
    """Raise SQLite failures of a Library method as LibraryError (keeps the original as __cause__)."""

    @functools.wraps(method)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return method(*args, **kwargs)
        except sqlite3.Error as exc:
            raise library_error(exc, args[0].db_path) from exc  # type: ignore[attr-defined]

    return wrapper
