"""A second process holding the write lock of an SQLite database, for the library's busy-database tests."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

_CHILD = """
import sqlite3, sys
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
sys.stdin.readline()
db.execute("COMMIT")
db.close()
"""


class WriteLock:
    """The holder process; ``release()`` commits and ends it (also done when the ``with`` block ends)."""

    def __init__(self, db_path: Path) -> None:
        self.proc = subprocess.Popen([sys.executable, "-c", _CHILD, str(db_path)], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        line = self.proc.stdout.readline()
        if line.strip() != "locked":
            self.proc.kill()
            raise RuntimeError(f"the lock holder failed: {self.proc.stderr.read()[-2000:]}")

    def release(self) -> None:
        if self.proc.poll() is None:
            self.proc.stdin.write("\n")
            self.proc.stdin.flush()
            self.proc.wait(10)
        for stream in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            stream.close()


@contextmanager
def write_lock(db_path: Path) -> Iterator[WriteLock]:
    """Hold ``db_path``'s write lock (BEGIN IMMEDIATE) in another process for the ``with`` block."""
    lock = WriteLock(db_path)
    try:
        yield lock
    finally:
        lock.release()
