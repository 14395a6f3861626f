"""The checkpoint's "Model hash" (A1111's: the first 10 hex digits of the file's sha256), taken in the
background from a file handle opened at load time.

Why at load time and from an open handle: the hash goes into every saved image's metadata. Read lazily from
the path at the first save, it failed once the checkpoint was moved, renamed or deleted after loading, and
took the image with it. An open handle keeps reading the file that was loaded (on POSIX a deleted file
stays readable while open), and the thread keeps "model ready" from waiting for a read of a 2-4 GB file.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from typing import BinaryIO

log = logging.getLogger(__name__)

HASH_LENGTH = 10
_BLOCK = 1 << 24


def model_hash_of(f: BinaryIO) -> str:
    """sha256 of everything readable from ``f`` (from its current position), first 10 hex digits."""
    digest = hashlib.sha256()
    for block in iter(lambda: f.read(_BLOCK), b""):
        digest.update(block)
    return digest.hexdigest()[:HASH_LENGTH]


class BackgroundHash:
    """Hashes an already open binary file on a daemon thread, then closes it.

    ``result(timeout)`` gives the hash, or "" when it is not known: the read failed, or it has not finished
    within ``timeout`` seconds. Callers put "" in no metadata field (an image never waits on, or fails for,
    its metadata).
    """

    def __init__(self, f: BinaryIO, name: str = "") -> None:
        self._file = f
        self._name = name
        self._value = ""
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name="inkpunk-model-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            self._value = model_hash_of(self._file)
        except (OSError, ValueError) as exc:  # ValueError: read from a closed file
            log.warning("could not hash %s: %s (images will carry no model hash)", self._name, exc)
        finally:
            try:
                self._file.close()
            except OSError:
                pass
            self._done.set()

    def done(self) -> bool:
        return self._done.is_set()

    def result(self, timeout: float | None = None) -> str:
        """The hash ("" if unknown), waiting up to ``timeout`` seconds (None: until the read ends)."""
        self._done.wait(timeout)
        return self._value if self._done.is_set() else ""
