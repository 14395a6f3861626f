"""The favorites library: image files in ``<folder>/images`` plus an SQLite index with a thumbnail per image.

Crash safety comes from ordering. ``add`` writes the PNG atomically (temp, fsync, rename) *then* commits the
row (WAL, ``synchronous=FULL``), so once ``add`` returns the favorite survives a kill at any later moment;
a kill in between leaves a file without a row, which the next start re-adopts from the PNG's own
``parameters`` chunk. ``remove`` commits a tombstone with the row's deletion, so a half-done removal is
finished at the next start instead of the favorite coming back. If the row can't be committed (a locked
database, a full disk) ``add`` deletes the file again and raises :class:`LibraryError`, so a failed add
leaves nothing for the next start to adopt.

Every SQLite failure reaches callers as a :class:`LibraryError` whose text is meant for the user:
:class:`LibraryBusyError` (another program holds the write lock; waits at most ``busy_timeout``, so callers
retry instead of blocking), :class:`LibraryDamagedError` (offer :func:`set_aside_database` and a rebuild from
the image files) and :class:`LibraryReadOnlyError`.

Favorites are told apart by image content (:func:`content_hash`, the pixels), not by their parameters:
``add_unique`` of an image already in the library returns the existing favorite.

Each thread gets its own SQLite connection; methods may be called from any thread.
"""

from __future__ import annotations

import functools
import hashlib
import io
import json
import logging
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from PIL import Image

from .fileio import TEMP_PREFIX, atomic_write_bytes, remove_stale_temp_files
from .imageload import ImageLoadError, load_image, normalise
from .library_errors import (  # noqa: F401  (re-exported: callers import the errors from here)
    LibraryBusyError,
    LibraryDamagedError,
    LibraryError,
    LibraryReadOnlyError,
    library_error,
    translated,
)
from .metadata import ImageParams, png_bytes, read_params

log = logging.getLogger(__name__)

DB_NAME = "library.sqlite3"
IMAGES_DIR = "images"
THUMBNAIL_SIZE = 256
STALE_TEMP_SECONDS = 60.0  # temp files younger than this may belong to another running instance
_IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp"}
_SORTS = {"newest": "created DESC, id DESC", "oldest": "created ASC, id ASC"}
_INT64 = 2**63
BUSY_TIMEOUT = 1.0  # seconds a write waits for another program's lock before LibraryBusyError
DAMAGED_SUFFIX = ".damaged"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS favorites (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    created REAL NOT NULL,
    file TEXT NOT NULL UNIQUE,            -- file name inside the images folder
    prompt TEXT NOT NULL DEFAULT '',
    negative_prompt TEXT NOT NULL DEFAULT '',
    seed INTEGER,
    steps INTEGER NOT NULL,
    cfg_scale REAL NOT NULL,
    sampler TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    model_name TEXT NOT NULL DEFAULT '',
    model_hash TEXT NOT NULL DEFAULT '',
    strength REAL,
    extra TEXT NOT NULL DEFAULT '{}',     -- JSON object of the unknown metadata keys
    thumbnail BLOB,                       -- PNG, at most THUMBNAIL_SIZE px a side
    missing INTEGER NOT NULL DEFAULT 0,   -- 1 while the image file is gone
    content_hash TEXT                     -- content_hash() of the pixels; NULL in rows from older versions
);
CREATE INDEX IF NOT EXISTS favorites_created ON favorites (created);
-- files whose favorite was removed: delete_file=1 -> delete at the next start; 0 -> keep, never re-adopt
CREATE TABLE IF NOT EXISTS removed (file TEXT PRIMARY KEY, delete_file INTEGER NOT NULL);
"""
_HASH_INDEX = "CREATE INDEX IF NOT EXISTS favorites_hash ON favorites (content_hash)"

def content_hash(image: Image.Image) -> str:
    """SHA-256 of an image's normalised RGB pixels and size: equal for the same picture in any file."""
    picture = load_image(image)
    digest = hashlib.sha256(f"RGB {picture.width}x{picture.height}\n".encode())
    digest.update(picture.tobytes())
    return digest.hexdigest()


def set_aside_database(folder: str | Path) -> Path | None:
    """Rename a damaged library database (with its -wal/-shm files) aside so a new one can be built.

    Nothing is deleted: the files become ``library.sqlite3.damaged-<time>`` (and ``...-wal``/``-shm``).
    Returns the new name of the database file, or None if there was none. Opening a :class:`Library` on
    the folder afterwards rebuilds the index from the image files (see ``Library.repair``); favorites
    removed with ``delete_file=False`` are adopted again, their tombstones were in the old database.
    """
    folder = Path(folder)
    db_path = folder / DB_NAME
    stamp = time.strftime("%Y%m%d-%H%M%S")
    target = folder / f"{DB_NAME}{DAMAGED_SUFFIX}-{stamp}"
    n = 1
    while target.exists():
        target, n = folder / f"{DB_NAME}{DAMAGED_SUFFIX}-{stamp}-{n}", n + 1
    moved = None
    for suffix in ("", "-wal", "-shm"):
        source = folder / f"{DB_NAME}{suffix}"
        if source.exists():
            os.replace(source, f"{target}{suffix}")
            if not suffix:
                moved = target
    if moved is not None:
        log.warning("library database %s set aside as %s", db_path, moved)
    return moved

_COLUMNS = ("id, created, file, prompt, negative_prompt, seed, steps, cfg_scale, sampler, width, height, "
            "model_name, model_hash, strength, extra, missing")


class _Duplicate(Exception):
    def __init__(self, favorite: Favorite) -> None:
        super().__init__(favorite.id)
        self.favorite = favorite


@dataclass(frozen=True)
class Favorite:
    id: int
    params: ImageParams
    path: Path  # absolute path of the image file
    created: float  # Unix time
    missing: bool = False  # the file was gone when the library last looked
    thumbnail: bytes | None = None  # PNG bytes; filled by get(), not by search() (see Library.thumbnail)


@dataclass(frozen=True)
class RepairReport:
    temp_files_removed: int = 0
    marked_missing: int = 0
    found_again: int = 0
    adopted: int = 0
    removals_finished: int = 0


def _casefold(text: str | None) -> str:
    return text.casefold() if isinstance(text, str) else ""


def make_thumbnail(image: Image.Image, size: int = THUMBNAIL_SIZE) -> bytes:
    """PNG bytes of ``image`` shrunk to fit ``size`` x ``size``."""
    thumb = image if image.mode == "RGB" else normalise(image)  # transparency on white, 16-bit scaled
    thumb = thumb.copy()
    thumb.thumbnail((size, size), Image.Resampling.LANCZOS)
    buf = io.BytesIO()
    thumb.save(buf, format="PNG", optimize=False)
    return buf.getvalue()


class Library:
    """Favorites stored in ``folder`` (created if needed). Opening it repairs it; see ``repair``."""

    def __init__(self, folder: str | Path, *, repair: bool = True, busy_timeout: float = BUSY_TIMEOUT) -> None:
        """Open (creating if needed) the library in ``folder``.

        Raises :class:`LibraryError` (busy, damaged, read-only, ...) or ``OSError`` for an unusable folder;
        every connection opened so far is closed again then.
        """
        self.folder = Path(folder)
        self.images_dir = self.folder / IMAGES_DIR
        self.db_path = self.folder / DB_NAME
        self.busy_timeout = float(busy_timeout)
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.RLock()  # guards _connections and _reserved
        self._reserved: set[str] = set()
        self._closed = False
        try:
            self.images_dir.mkdir(parents=True, exist_ok=True)
            self._create_schema()
            self.last_repair = self.repair() if repair else RepairReport()
        except BaseException:
            self.close()
            raise

    @translated
    def _create_schema(self) -> None:
        db = self._db()
        # a damaged page deep in the file would otherwise only show as failing searches later; this reads
        # every page once (well under a second for thousands of favorites, and opening is off the GUI thread)
        problem = db.execute("PRAGMA quick_check(1)").fetchone()
        if problem is not None and problem[0] != "ok":
            raise LibraryDamagedError(f"The library database is damaged: {self.db_path} ({problem[0]})")
        columns = {row[1] for row in db.execute("PRAGMA table_info(favorites)")}
        # a library from before duplicates were found by image content gets the column
        migrate = ("ALTER TABLE favorites ADD COLUMN content_hash TEXT;"
                   if columns and "content_hash" not in columns else "")
        try:
            db.executescript(f"BEGIN IMMEDIATE; {_SCHEMA} {migrate} {_HASH_INDEX}; COMMIT;")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise

    # ------------------------------------------------------------ connections

    def _db(self) -> sqlite3.Connection:
        if self._closed:
            raise ValueError("the library is closed")
        db = getattr(self._local, "db", None)
        if db is None:
            # check_same_thread=False only so close() can close every thread's connection; each thread
            # uses its own.
            db = sqlite3.connect(self.db_path, timeout=self.busy_timeout, isolation_level=None,
                                 check_same_thread=False)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=FULL")  # a returned commit is on disk
            db.create_function("casefold", 1, _casefold, deterministic=True)
            self._local.db = db
            with self._lock:
                self._connections.append(db)
        return db

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        db = self._db()
        db.execute("BEGIN IMMEDIATE")
        try:
            yield db
        except BaseException:
            db.execute("ROLLBACK")
            raise
        db.execute("COMMIT")

    def close(self) -> None:
        """Close every thread's connection. The library can't be used afterwards."""
        with self._lock:
            self._closed = True
            for db in self._connections:
                try:
                    db.close()
                except sqlite3.Error:
                    log.warning("closing a library connection failed", exc_info=True)
            self._connections.clear()

    # ------------------------------------------------------------ adding

    def add(self, image: Image.Image | str | Path, params: ImageParams | None = None) -> Favorite:
        """Store a favorite: the image file first (atomically), then its row. Confirmed once this returns.

        ``image`` is a PIL image or an image file. ``params`` defaults to the metadata in the image (or
        blank parameters). The stored file is a PNG carrying ``params`` in its ``parameters`` chunk.
        Raises ``ImageLoadError`` for a file that isn't a usable image and :class:`LibraryError` when the
        row can't be committed (the file is deleted again then).
        """
        return self._add(image, params, unique=False)[0]

    def add_unique(self, image: Image.Image | str | Path,
                   params: ImageParams | None = None) -> tuple[Favorite, bool]:
        """Like :meth:`add`, unless a favorite with the same image content is already there (its file not
        missing): then that one. Returns ``(favorite, added)``. Equal parameters alone don't make a match."""
        return self._add(image, params, unique=True)

    @translated
    def _add(self, image: Image.Image | str | Path, params: ImageParams | None,
             unique: bool) -> tuple[Favorite, bool]:
        if self._closed:
            raise ValueError("the library is closed")
        if isinstance(image, (str, Path)):
            source = Path(image)
            file_params = read_params(source)
            params = params or file_params or ImageParams()
            picture = load_image(source)
            with open(source, "rb") as f:
                is_png = f.read(8) == b"\x89PNG\r\n\x1a\n"
            make_data = (source.read_bytes if is_png and file_params == params
                         else functools.partial(png_bytes, picture, params))
        else:
            params = params or read_params(image) or ImageParams()
            picture = load_image(image)
            make_data = functools.partial(png_bytes, image, params)
        digest = content_hash(picture)
        if unique:
            existing = self.find_content(digest, picture.size)
            if existing is not None:
                return existing, False
        data = make_data()
        thumbnail = make_thumbnail(picture)
        created = time.time()
        path = self._reserve_file_path(created, params.seed)
        try:
            atomic_write_bytes(path, data)
            try:
                return self._insert(path, params, created, thumbnail, digest, unique), True
            except BaseException as exc:  # no row: the file must not be adopted at the next start
                _unlink_quietly(path)
                if isinstance(exc, _Duplicate):  # added by another thread or program meanwhile
                    return exc.favorite, False
                raise
        finally:
            with self._lock:
                self._reserved.discard(path.name)

    def _reserve_file_path(self, created: float, seed: int | None) -> Path:
        """A new file name from the time and seed, unique on disk, in the index and among this process'
        adds in flight (two threads adding in the same millisecond)."""
        stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(created)) + f"-{int(created * 1000) % 1000:03d}"
        stem = f"{stamp}-{seed}" if seed is not None else stamp
        path, n = self.images_dir / f"{stem}.png", 1
        with self._lock:
            while path.name in self._reserved or path.exists() or self._file_known(path.name):
                path, n = self.images_dir / f"{stem}-{n}.png", n + 1
            self._reserved.add(path.name)
        return path

    def _file_known(self, name: str) -> bool:
        db = self._db()
        return db.execute("SELECT 1 FROM favorites WHERE file = ? UNION SELECT 1 FROM removed WHERE file = ?",
                          (name, name)).fetchone() is not None

    def _insert(self, path: Path, params: ImageParams, created: float, thumbnail: bytes, digest: str,
                unique: bool = False) -> Favorite:
        extra = params.stored_extra()  # the fields without a column of their own (schedule, RNG, ...) too
        seed = params.seed
        if seed is not None and not -_INT64 <= seed < _INT64:  # SQLite integers are 64-bit
            extra.setdefault("Seed", str(seed))
            seed = None
        with self._write() as db:
            if unique:
                row = db.execute(f"SELECT {_COLUMNS} FROM favorites WHERE content_hash = ? AND missing = 0 "
                                 "ORDER BY id LIMIT 1", (digest,)).fetchone()
                if row is not None:
                    raise _Duplicate(self._favorite(row))
            cur = db.execute(
                "INSERT INTO favorites (created, file, prompt, negative_prompt, seed, steps, cfg_scale, sampler,"
                " width, height, model_name, model_hash, strength, extra, thumbnail, content_hash) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (created, path.name, params.prompt, params.negative_prompt, seed, int(params.steps),
                 float(params.cfg_scale), params.sampler or "", int(params.width), int(params.height),
                 params.model_name, params.model_hash, params.strength, json.dumps(extra, ensure_ascii=False),
                 sqlite3.Binary(thumbnail), digest))
            fav_id = int(cur.lastrowid)
        return Favorite(fav_id, params, path, created, False, thumbnail)

    @translated
    def find_content(self, digest: str, size: tuple[int, int] | None = None) -> Favorite | None:
        """The oldest favorite whose image has this :func:`content_hash` (and whose file isn't missing).

        Rows from older versions have no hash yet; those whose parameters name ``size`` (width, height)
        get theirs computed from their file here, once.
        """
        db = self._db()
        if size is not None:
            legacy = db.execute("SELECT id, file FROM favorites WHERE content_hash IS NULL AND missing = 0 "
                                "AND width = ? AND height = ?", (int(size[0]), int(size[1]))).fetchall()
            hashes = []
            for fav_id, name in legacy:
                try:
                    hashes.append((content_hash(load_image(self.images_dir / name)), fav_id))
                except (ImageLoadError, OSError):
                    log.info("can't hash favorite %s (%s)", fav_id, name, exc_info=True)
            if hashes:
                with self._write() as w:
                    w.executemany("UPDATE favorites SET content_hash = ? WHERE id = ?", hashes)
        row = db.execute(f"SELECT {_COLUMNS} FROM favorites WHERE content_hash = ? AND missing = 0 "
                         "ORDER BY id LIMIT 1", (digest,)).fetchone()
        return self._favorite(row) if row is not None else None

    def find_image(self, image: Image.Image | str | Path) -> Favorite | None:
        """The favorite showing the same picture as ``image`` (a PIL image or a file), or None."""
        picture = load_image(image)
        return self.find_content(content_hash(picture), picture.size)

    # ------------------------------------------------------------ reading

    def _favorite(self, row: tuple, thumbnail: bytes | None = None) -> Favorite:
        (fav_id, created, file, prompt, negative, seed, steps, cfg, sampler, width, height, model_name,
         model_hash, strength, extra, missing) = row
        try:
            extra_dict = json.loads(extra)
            if not isinstance(extra_dict, dict):
                extra_dict = {}
        except ValueError:
            extra_dict = {}
        params = ImageParams.from_stored(sampler, {str(k): str(v) for k, v in extra_dict.items()}, prompt=prompt,
                                         negative_prompt=negative, steps=steps, cfg_scale=cfg, seed=seed,
                                         width=width, height=height, strength=strength, model_name=model_name,
                                         model_hash=model_hash)
        return Favorite(fav_id, params, self.images_dir / file, created, bool(missing), thumbnail)

    @translated
    def get(self, fav_id: int) -> Favorite | None:
        """The favorite with this id, thumbnail included; ``None`` if there is none."""
        row = self._db().execute(f"SELECT {_COLUMNS}, thumbnail FROM favorites WHERE id = ?",
                                 (int(fav_id),)).fetchone()
        if row is None:
            return None
        return self._favorite(row[:-1], bytes(row[-1]) if row[-1] is not None else None)

    @translated
    def thumbnail(self, fav_id: int) -> bytes | None:
        """The stored PNG thumbnail of one favorite (``None`` if unknown)."""
        row = self._db().execute("SELECT thumbnail FROM favorites WHERE id = ?", (int(fav_id),)).fetchone()
        return bytes(row[0]) if row and row[0] is not None else None

    @translated
    def search(self, text: str = "", sort: str = "newest") -> list[Favorite]:
        """Favorites whose prompt contains every word of ``text`` (case-insensitive), without thumbnails."""
        if sort not in _SORTS:
            raise ValueError(f"sort must be one of {sorted(_SORTS)}, not {sort!r}")
        words = _casefold(text).split()
        where = " AND ".join("instr(casefold(prompt), ?) > 0" for _ in words) or "1"
        rows = self._db().execute(f"SELECT {_COLUMNS} FROM favorites WHERE {where} ORDER BY {_SORTS[sort]}",
                                  words).fetchall()
        return [self._favorite(r) for r in rows]

    @translated
    def count(self) -> int:
        return int(self._db().execute("SELECT count(*) FROM favorites").fetchone()[0])

    # ------------------------------------------------------------ removing

    @translated
    def remove(self, fav_id: int, delete_file: bool = True) -> bool:
        """Remove a favorite; ``delete_file`` also deletes its image. Returns whether it existed.

        With ``delete_file=False`` the image stays in the images folder and is remembered as not-a-favorite,
        so the next start doesn't re-adopt it.
        """
        with self._write() as db:
            row = db.execute("SELECT file FROM favorites WHERE id = ?", (int(fav_id),)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM favorites WHERE id = ?", (int(fav_id),))
            db.execute("INSERT OR REPLACE INTO removed (file, delete_file) VALUES (?, ?)",
                       (row[0], int(delete_file)))
        if delete_file:
            self._finish_removal(row[0])
        return True

    def _finish_removal(self, name: str) -> None:
        try:
            (self.images_dir / name).unlink()
        except FileNotFoundError:
            pass
        except OSError:
            log.warning("could not delete %s; will retry at the next start", name, exc_info=True)
            return
        with self._write() as db:
            db.execute("DELETE FROM removed WHERE file = ? AND delete_file = 1", (name,))

    # ------------------------------------------------------------ repair

    @translated
    def repair(self) -> RepairReport:
        """Bring the index and the images folder back in line after a crash or outside changes.

        Removes stale temp files, finishes interrupted removals, flags rows whose file vanished (and unflags
        ones that came back), and adopts image files that have no row, from their embedded parameters.
        """
        temps = remove_stale_temp_files(self.images_dir, STALE_TEMP_SECONDS)
        db = self._db()
        finished = 0
        for (name,) in db.execute("SELECT file FROM removed WHERE delete_file = 1").fetchall():
            self._finish_removal(name)
            finished += 1
        kept = {name for (name,) in db.execute("SELECT file FROM removed WHERE delete_file = 0")}
        on_disk = {p.name for p in self._image_files()}
        vanished = kept - on_disk
        rows = db.execute("SELECT id, file, missing FROM favorites").fetchall()
        newly_missing = [(i,) for i, name, missing in rows if not missing and name not in on_disk]
        back = [(i,) for i, name, missing in rows if missing and name in on_disk]
        if newly_missing or back or vanished:
            with self._write() as w:
                w.executemany("UPDATE favorites SET missing = 1 WHERE id = ?", newly_missing)
                w.executemany("UPDATE favorites SET missing = 0 WHERE id = ?", back)
                w.executemany("DELETE FROM removed WHERE file = ?", [(n,) for n in vanished])
        known = {name for _, name, _ in rows} | kept
        adopted = 0
        for path in sorted(self._image_files()):
            if path.name not in known and self._adopt(path):
                adopted += 1
        report = RepairReport(temps, len(newly_missing), len(back), adopted, finished)
        if report != RepairReport():
            log.info("library repair: %s", report)
        return report

    def _image_files(self) -> list[Path]:
        try:
            return [p for p in self.images_dir.iterdir()
                    if p.suffix.lower() in _IMAGE_SUFFIXES and not p.name.startswith(TEMP_PREFIX) and p.is_file()]
        except OSError:
            return []

    def _adopt(self, path: Path) -> bool:
        try:
            picture = load_image(path)
            created = path.stat().st_mtime
        except (ImageLoadError, OSError):
            log.warning("not adopting %s: not a readable image", path.name, exc_info=True)
            return False
        params = read_params(path) or ImageParams(width=picture.width, height=picture.height)
        try:
            self._insert(path, params, created, make_thumbnail(picture), content_hash(picture))
        except sqlite3.IntegrityError:  # another instance adopted it first
            return False
        return True

    def __repr__(self) -> str:
        return f"Library({os.fspath(self.folder)!r})"


def _unlink_quietly(path: Path) -> None:
    try:
        path.unlink()
    except FileNotFoundError:
        pass
    except OSError:
        log.warning("could not delete %s after a failed add", path, exc_info=True)
