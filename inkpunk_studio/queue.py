"""The job queue: Generate clicks waiting their turn, kept in SQLite so a crash or a restart loses none.

Two layers. :class:`JobStore` is the database (``queue.sqlite3`` in the data folder; WAL,
``synchronous=FULL``, a short busy timeout, one connection per thread, as ``library.Library``): a job row
holds a snapshot of the parameters at the click (``GenerationParams`` as JSON, the init image as PNG bytes),
the output folder and its place in the line. :class:`JobQueue` is the GUI-thread model the window and the
``queueList`` view bind to: the jobs in order, the paused flag, which job runs and how far it got. Its
changes apply in memory at once and are written by one writer thread in the order they were made, so the GUI
never waits on the disk; ``flush`` waits for them (tests, the kill-test child, closing).

A job leaves the queue when it has run (finished, cancelled or failed: the window says why it failed and goes
on with the next, as A1111's and ComfyUI's queues do). Nothing marks the running job in the database: it is
the first one, so after a crash or a quit it simply starts again.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import random
import sqlite3
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from PIL import Image
from PySide6.QtCore import QObject, Signal

from .worker import GenerationParams

log = logging.getLogger(__name__)

DB_NAME = "queue.sqlite3"
BUSY_TIMEOUT = 1.0  # seconds a write waits for another program's lock
DAMAGED_SUFFIX = ".damaged"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,                  -- uuid4 hex, chosen in memory so no write is awaited for it
    position INTEGER NOT NULL,            -- place in the line, smallest first
    created REAL NOT NULL,
    params TEXT NOT NULL,                 -- encode_params() JSON
    init_png BLOB,                        -- the img2img init image, PNG, or NULL
    output_dir TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_position ON jobs (position);
CREATE TABLE IF NOT EXISTS state (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class QueueError(OSError):
    """The queue's database can't be used; ``str(error)`` is a sentence for the user. ``damaged``: the file
    is not a sound SQLite database (rather than busy, read-only, ...)."""

    damaged = False


_CORRUPT, _NOTADB = 11, 26  # SQLite primary result codes (https://www.sqlite.org/rescode.html)


def _is_damage(exc: BaseException) -> bool:
    code = getattr(exc, "sqlite_errorcode", None)
    text = str(exc).lower()
    return (isinstance(code, int) and code & 0xFF in (_CORRUPT, _NOTADB)) or "malformed" in text \
        or "not a database" in text


@dataclass
class QueuedJob:
    """One waiting (or running) Generate click."""

    id: str
    params: GenerationParams
    output_dir: Path
    created: float


# ---------------------------------------------------------------- parameters <-> row

def encode_params(params: GenerationParams) -> tuple[str, bytes | None]:
    """(JSON text, init image PNG or None) for a row: the plain fields plus the resolved networks and, for
    an inpainting job, its mask (a PNG in the JSON: a job restored without it would repaint everything)."""
    data: dict[str, Any] = params.to_dict()
    data["loras"] = [[str(path), float(te), float(unet)] for path, te, unet in params.loras]
    data["embeddings"] = [str(p) for p in params.embeddings]
    data["vae"] = params.vae
    data["decoder"], data["taesd"] = params.decoder, params.taesd  # fast mode's tiny decoder
    if params.mask is not None:
        data["mask_png"] = base64.b64encode(_png(params.mask)).decode("ascii")
        data["mask_blur"], data["masked_content"] = int(params.mask_blur), str(params.masked_content)
    init = None if params.init_image is None else _png(params.init_image)
    return json.dumps(data, ensure_ascii=False), init


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def _open_png(data: bytes) -> Image.Image:
    with Image.open(io.BytesIO(data)) as img:
        img.load()
        return img.copy()


def decode_params(text: str, init_png: bytes | None) -> GenerationParams:
    """Inverse of :func:`encode_params`; raises ValueError for a row that can't be read."""
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise TypeError("not a JSON object")
        params = GenerationParams.from_dict(data)
        params.loras = tuple((Path(p), float(te), float(unet)) for p, te, unet in data.get("loras", ()))
        params.embeddings = tuple(str(p) for p in data.get("embeddings", ()))
        params.vae = str(data.get("vae", ""))
        params.decoder, params.taesd = str(data.get("decoder", "vae")), str(data.get("taesd", ""))
        if init_png is not None:
            params.init_image = _open_png(init_png)
        if "mask_png" in data:
            params.mask = _open_png(base64.b64decode(data["mask_png"], validate=True))
            params.mask_blur, params.masked_content = int(data["mask_blur"]), str(data["masked_content"])
    except (ValueError, TypeError, KeyError, OSError) as exc:
        raise ValueError(f"a queued job could not be read: {exc}") from exc
    return params


# ---------------------------------------------------------------- the database

class JobStore:
    """The queue's SQLite file. Every method commits before it returns; safe to call from any thread (one
    connection, used in turn: the queue's writes are few and small)."""

    def __init__(self, path: str | Path, busy_timeout: float = BUSY_TIMEOUT) -> None:
        """Open (creating) the database at ``path``; raises :class:`QueueError` if it is damaged or unusable."""
        self.path = Path(path)
        self.busy_timeout = busy_timeout
        self._con: sqlite3.Connection | None = None
        self._lock = threading.RLock()
        self._closed = False
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            problem = self._read("PRAGMA quick_check(1)")
            if problem and problem[0][0] != "ok":
                raise sqlite3.DatabaseError(f"database disk image is malformed: {problem[0][0]}")
            self._write(lambda db: [db.execute(sql) for sql in _SCHEMA.split(";") if sql.strip()])
        except (sqlite3.Error, OSError) as exc:
            self.close()
            error = QueueError(f"The job queue's database can't be used: {self.path} ({exc})")
            error.damaged = _is_damage(exc)
            raise error from exc

    def _db(self) -> sqlite3.Connection:
        """The one connection (opened on first use); callers hold ``_lock``, so threads take turns on it."""
        if self._closed:
            raise ValueError("the job queue is closed")
        if self._con is None:
            self._con = sqlite3.connect(self.path, timeout=self.busy_timeout, isolation_level=None,
                                        check_same_thread=False)
            self._con.execute("PRAGMA journal_mode=WAL")
            self._con.execute("PRAGMA synchronous=FULL")  # a returned commit is on disk
        return self._con

    def _read(self, sql: str) -> list[tuple]:
        with self._lock:
            return self._db().execute(sql).fetchall()

    def _write(self, statements: Callable[[sqlite3.Connection], object]) -> None:
        with self._lock:
            db = self._db()
            db.execute("BEGIN IMMEDIATE")
            try:
                statements(db)
            except BaseException:
                db.execute("ROLLBACK")
                raise
            db.execute("COMMIT")

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._con is not None:
                try:
                    self._con.close()
                except sqlite3.Error:
                    log.warning("closing the queue database failed", exc_info=True)
                self._con = None

    # ------------------------------------------------------------ reading
    def load(self) -> tuple[list[QueuedJob], list[str]]:
        """The jobs in order, and a note for each row that could not be read (those rows are dropped)."""
        rows = self._read("SELECT id, params, init_png, output_dir, created FROM jobs ORDER BY position, created")
        jobs, notes, bad = [], [], []
        for job_id, text, png, folder, created in rows:
            try:
                jobs.append(QueuedJob(job_id, decode_params(text, png), Path(folder), created))
            except ValueError as exc:
                log.warning("dropping queued job %s: %s", job_id, exc)
                notes.append(str(exc))
                bad.append(job_id)
        if bad:
            self._write(lambda db: db.executemany("DELETE FROM jobs WHERE id = ?", [(b,) for b in bad]))
        return jobs, notes

    def paused(self) -> bool:
        rows = self._read("SELECT value FROM state WHERE key = 'paused'")
        return bool(rows) and rows[0][0] == "1"

    # ------------------------------------------------------------ writing
    def insert(self, job: QueuedJob, order: list[str]) -> None:
        """Add ``job`` and renumber the line to ``order`` (ids), in one transaction."""
        text, png = encode_params(job.params)

        def statements(db: sqlite3.Connection) -> None:
            db.execute("INSERT INTO jobs (id, position, created, params, init_png, output_dir) "
                       "VALUES (?, 0, ?, ?, ?, ?)", (job.id, job.created, text, png, str(job.output_dir)))
            _renumber(db, order)

        self._write(statements)

    def delete(self, job_id: str) -> None:
        self._write(lambda db: db.execute("DELETE FROM jobs WHERE id = ?", (job_id,)))

    def set_order(self, order: list[str]) -> None:
        self._write(lambda db: _renumber(db, order))

    def set_paused(self, paused: bool) -> None:
        self._write(lambda db: db.execute("INSERT OR REPLACE INTO state (key, value) VALUES ('paused', ?)",
                                          ("1" if paused else "0",)))


def _renumber(db: sqlite3.Connection, order: list[str]) -> None:
    db.executemany("UPDATE jobs SET position = ? WHERE id = ?", list(enumerate(order)))


def set_aside(path: Path) -> Path | None:
    """Rename a damaged queue database (and its -wal/-shm) aside; returns the new name, None if none."""
    target = path.with_name(f"{path.name}{DAMAGED_SUFFIX}-{time.strftime('%Y%m%d-%H%M%S')}")
    moved = None
    for suffix in ("", "-wal", "-shm"):
        source = path.with_name(path.name + suffix)
        if source.exists():
            source.replace(f"{target}{suffix}")
            moved = moved or target
    return moved


# ---------------------------------------------------------------- the model

class JobQueue(QObject):
    """The jobs in line, for the GUI thread: changes apply at once and are written in order by one thread.

    A queue whose database can't be opened is set aside once and started afresh; if that fails too it works
    in memory only (``persistent`` False, ``storeFailed`` says why).
    """

    changed = Signal()  # jobs added, removed or reordered; the running job changed
    progressChanged = Signal(str, float)  # job id, 0..1
    pausedChanged = Signal(bool)
    storeFailed = Signal(str)  # a sentence for the status bar

    def __init__(self, db_path: str | Path, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self.db_path = Path(db_path)
        self.jobs: list[QueuedJob] = []
        self.paused = False
        self.running_id: str | None = None
        self.progress: dict[str, float] = {}
        self.notes: list[str] = []  # what could not be read back at the start
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inkpunk-queue")
        self._store = self._open()
        if self._store is not None:
            try:
                self.jobs, unreadable = self._store.load()
                self.notes += unreadable
                self.paused = self._store.paused()
            except (sqlite3.Error, ValueError) as exc:
                self._store_failed(exc)

    @property
    def persistent(self) -> bool:
        return self._store is not None

    def _open(self) -> JobStore | None:
        try:
            return JobStore(self.db_path)
        except QueueError as exc:
            failure: OSError = exc
            if exc.damaged:
                log.warning("%s; setting it aside", exc)
                self.notes.append(str(exc))
                try:
                    set_aside(self.db_path)
                    return JobStore(self.db_path)
                except (QueueError, OSError) as again:
                    failure = again
        log.error("the job queue works in memory only: %s", failure)
        self.notes.append(f"The job queue is not saved: {failure}")
        return None

    # ------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.jobs)

    def ids(self) -> list[str]:
        return [job.id for job in self.jobs]

    def get(self, job_id: str) -> QueuedJob | None:
        return next((job for job in self.jobs if job.id == job_id), None)

    def next_job(self) -> QueuedJob | None:
        """The job to run next: the first one, unless the queue is paused or one runs already."""
        if self.paused or self.running_id is not None or not self.jobs:
            return None
        return self.jobs[0]

    def waiting(self) -> int:
        """Jobs not running."""
        return len(self.jobs) - (self.running_id is not None)

    # ------------------------------------------------------------ changes
    def add(self, params: GenerationParams, output_dir: str | Path, after: str | None = None) -> QueuedJob:
        """Queue a snapshot of ``params`` at the end (or right after job ``after``)."""
        job = QueuedJob(uuid.uuid4().hex, replace(params), Path(output_dir), time.time())  # a copy: later edits stay out
        index = len(self.jobs) if after is None or self.get(after) is None else self.ids().index(after) + 1
        self.jobs.insert(index, job)
        order = self.ids()
        self._submit(lambda store: store.insert(job, order))
        self.changed.emit()
        return job

    def duplicate(self, job_id: str) -> QueuedJob:
        """A copy of job ``job_id`` right after it, with a new random seed (the variation seed is kept)."""
        job = self.get(job_id)
        if job is None:
            raise ValueError(f"no queued job {job_id}")
        seed = job.params.seed
        new_seed = random.randrange(2**32)
        while new_seed == seed:
            new_seed = random.randrange(2**32)
        return self.add(replace(job.params, seed=new_seed), job.output_dir, after=job_id)

    def remove(self, job_id: str) -> bool:
        """Take a job out of the line (the window cancels a running one first). False if it was not there."""
        job = self.get(job_id)
        if job is None:
            return False
        self.jobs.remove(job)
        self.progress.pop(job_id, None)
        if self.running_id == job_id:
            self.running_id = None
        self._submit(lambda store: store.delete(job_id))
        self.changed.emit()
        return True

    def reorder(self, ids: Iterable[str]) -> None:
        """Put the jobs in the order of ``ids`` (unknown ids are ignored, missing ones keep their order at the
        end). The running job stays first."""
        wanted = [i for i in dict.fromkeys(ids) if self.get(i) is not None]
        rest = [i for i in self.ids() if i not in wanted]
        order = wanted + rest
        if self.running_id is not None:
            order.remove(self.running_id)
            order.insert(0, self.running_id)
        if order == self.ids():
            return
        by_id = {job.id: job for job in self.jobs}
        self.jobs = [by_id[i] for i in order]
        self._submit(lambda store: store.set_order(order))
        self.changed.emit()

    def move(self, job_id: str, delta: int) -> None:
        """Move a waiting job ``delta`` places up (negative) or down, not above the running one."""
        order = self.ids()
        if job_id not in order or job_id == self.running_id:
            return
        first = 1 if self.running_id is not None else 0
        index = order.index(job_id)
        target = min(max(index + delta, first), len(order) - 1)
        order.insert(target, order.pop(index))
        self.reorder(order)

    def set_paused(self, paused: bool) -> None:
        """Pause or resume the queue as a whole (a running job finishes; the next one waits)."""
        if paused == self.paused:
            return
        self.paused = paused
        self._submit(lambda store: store.set_paused(paused))
        self.pausedChanged.emit(paused)

    def start(self, job_id: str) -> None:
        """Mark ``job_id`` as the running one (it moves first)."""
        self.running_id = job_id
        self.progress[job_id] = 0.0
        self.reorder([job_id])
        self.changed.emit()

    def set_progress(self, fraction: float) -> None:
        if self.running_id is not None:
            self.progress[self.running_id] = fraction
            self.progressChanged.emit(self.running_id, fraction)

    # ------------------------------------------------------------ writing
    def _submit(self, write: Callable[[JobStore], None]) -> Future | None:
        store = self._store
        if store is None:
            return None
        try:
            return self._writer.submit(self._guarded, store, write)
        except RuntimeError:  # closed
            log.warning("job queue closed: a change was not saved")
            return None

    def _guarded(self, store: JobStore, write: Callable[[JobStore], None]) -> None:
        try:
            write(store)
        except (sqlite3.Error, ValueError, OSError) as exc:  # the change stays in memory for this session
            log.error("could not save the job queue: %s", exc)
            self.storeFailed.emit(f"The job queue could not be saved ({exc}); its changes last until you quit.")

    def _store_failed(self, exc: BaseException) -> None:
        log.error("could not read the job queue: %s", exc)
        self.notes.append(f"The job queue could not be read: {exc}")

    def flush(self, timeout: float | None = 10.0) -> None:
        """Wait until every change made so far is on disk (or failed)."""
        future = self._submit(lambda store: None)
        if future is not None:
            future.result(timeout)

    def close(self) -> None:
        """Write what is pending, then close the database. Idempotent."""
        self._writer.shutdown(wait=True)
        if self._store is not None:
            self._store.close()
