"""The library when SQLite fails: a locked, damaged or overfull database, and duplicates by image content."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path

import pytest
from lib_lock import write_lock
from PIL import Image

from inkpunk_studio import library as library_mod
from inkpunk_studio.library import (
    Library,
    LibraryBusyError,
    LibraryDamagedError,
    LibraryError,
    content_hash,
    set_aside_database,
)
from inkpunk_studio.metadata import ImageParams, read_params, save_png


def _img(colour: tuple[int, int, int]) -> Image.Image:
    return Image.new("RGB", (64, 48), colour)


def _params(prompt: str = "nvinkpunk a fox", seed: int = 5) -> ImageParams:
    return ImageParams(prompt=prompt, seed=seed, width=64, height=48)


def _files(lib: Library) -> set[str]:
    return {p.name for p in lib.images_dir.iterdir()}


def test_duplicates_are_found_by_image_content_not_parameters(tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib")
    try:
        red = save_png(_img((200, 0, 0)), tmp_path / "red.png", _params())
        blue = save_png(_img((0, 0, 200)), tmp_path / "blue.png", _params())  # equal parameters
        first, added = lib.add_unique(red)
        assert added
        for _ in range(3):  # three stars on the same image: one favorite
            again, added = lib.add_unique(red)
            assert again.id == first.id and not added
        other, added = lib.add_unique(blue)
        assert added and other.id != first.id and lib.count() == 2
        # the same pixels under other parameters, and as a PIL image, are the same favorite
        same, added = lib.add_unique(_img((200, 0, 0)), _params("something else", 9))
        assert same.id == first.id and not added and lib.count() == 2
        assert lib.find_image(blue).id == other.id and lib.find_image(_img((0, 200, 0))) is None
        assert content_hash(Image.open(first.path)) == content_hash(_img((200, 0, 0)))
    finally:
        lib.close()


def test_rows_from_before_content_hashes_are_matched(tmp_path: Path) -> None:
    folder = tmp_path / "lib"
    lib = Library(folder)
    old = lib.add(_img((10, 20, 30)), _params())
    lib.close()
    db = sqlite3.connect(folder / library_mod.DB_NAME)  # as an older version left it: no hash column
    db.executescript("DROP INDEX favorites_hash; ALTER TABLE favorites DROP COLUMN content_hash;")
    db.close()
    lib = Library(folder)
    try:
        assert lib.add_unique(_img((10, 20, 30)))[0].id == old.id and lib.count() == 1
    finally:
        lib.close()


def test_locked_database_fails_fast_and_leaves_no_file(tmp_path: Path) -> None:
    folder = tmp_path / "lib"
    lib = Library(folder)
    try:
        kept = lib.add(_img((1, 1, 1)), _params("kept"))
        before = _files(lib)
        with write_lock(lib.db_path):
            start = time.monotonic()
            for _ in range(3):
                with pytest.raises(LibraryBusyError, match="another program"):
                    lib.add_unique(_img((9, 9, 9)), _params("blocked"))
            with pytest.raises(LibraryBusyError):
                lib.remove(kept.id)
            assert time.monotonic() - start < 3 * 3 + 3  # a ~1 s busy timeout each, not 10 s
            assert _files(lib) == before  # no file left behind for the next start to adopt
            with pytest.raises(LibraryBusyError):
                Library(folder)  # opening waits briefly too, then says why
        _, added = lib.add_unique(_img((9, 9, 9)), _params("blocked"))
        assert added and lib.count() == 2
    finally:
        lib.close()
    again = Library(folder)
    assert again.last_repair.adopted == 0 and again.count() == 2
    again.close()


def test_too_long_for_sqlite_reports_and_removes_the_file(tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib")
    try:
        lib._db().setlimit(sqlite3.SQLITE_LIMIT_LENGTH, 20_000)  # this thread's connection, SQLite's own limit
        with pytest.raises(LibraryError, match="too large") as caught:
            lib.add(_img((3, 4, 5)), _params("a very long prompt " * 2000))
        assert isinstance(caught.value, OSError)  # callers that report OSError report it
        assert _files(lib) == set() and lib.count() == 0
    finally:
        lib.close()


def test_damaged_database_is_set_aside_and_rebuilt_from_the_images(tmp_path: Path) -> None:
    folder = tmp_path / "lib"
    lib = Library(folder)
    favs = [lib.add(_img((k, 2 * k, 3 * k)), _params(f"favorite {k}", k)) for k in (10, 20)]
    lib.close()
    db_path = folder / library_mod.DB_NAME
    for extra in ("-wal", "-shm"):
        Path(f"{db_path}{extra}").unlink(missing_ok=True)
    damaged = b"this is not an SQLite database at all" * 200
    db_path.write_bytes(damaged)
    with pytest.raises(LibraryDamagedError, match="damaged"):
        Library(folder)
    aside = set_aside_database(folder)
    assert aside is not None and aside.read_bytes() == damaged and not db_path.exists()
    rebuilt = Library(folder)
    try:
        assert rebuilt.last_repair.adopted == 2
        assert sorted(f.params.prompt for f in rebuilt.search()) == ["favorite 10", "favorite 20"]
        assert all(read_params(f.path) == f.params for f in favs)
        assert rebuilt.find_image(favs[0].path) is not None  # adopted rows have their content hash
    finally:
        rebuilt.close()
    assert set_aside_database(tmp_path / "nothing-here") is None


def test_a_damaged_page_inside_the_database_is_found_at_open(tmp_path: Path) -> None:
    folder = tmp_path / "lib"
    lib = Library(folder)
    for k in range(12):  # thumbnails of noise: a database of many pages
        noise = Image.frombytes("RGB", (64, 48), bytes((k * 7 + i) % 251 for i in range(64 * 48 * 3)))
        lib.add(noise, _params(f"favorite {k}", k))
    lib.close()
    db_path = folder / library_mod.DB_NAME
    assert not Path(f"{db_path}-wal").exists() or Path(f"{db_path}-wal").stat().st_size == 0
    data = bytearray(db_path.read_bytes())
    page = 4096
    assert len(data) > 8 * page
    data[3 * page:3 * page + 64] = b"\xff" * 64  # a b-tree page header overwritten, the file header intact
    db_path.write_bytes(bytes(data))
    with pytest.raises(LibraryDamagedError, match="damaged"):
        Library(folder)


def test_sqlite_errors_are_told_apart_in_words(tmp_path: Path) -> None:
    lib = Library(tmp_path / "lib")
    lib.close()
    readonly = sqlite3.connect(f"file:{lib.db_path}?mode=ro", uri=True)  # SQLite's own read-only refusal
    try:
        with pytest.raises(sqlite3.Error) as caught:
            readonly.execute("DELETE FROM favorites")
    finally:
        readonly.close()
    error = library_mod.library_error(caught.value, lib.db_path)
    assert isinstance(error, library_mod.LibraryReadOnlyError) and "read-only" in str(error)
    garbage = tmp_path / "garbage.sqlite3"
    garbage.write_bytes(b"not a database" * 100)
    db = sqlite3.connect(garbage)
    try:
        with pytest.raises(sqlite3.Error) as caught:
            db.execute("SELECT * FROM sqlite_master").fetchall()
    finally:
        db.close()
    assert isinstance(library_mod.library_error(caught.value, garbage), LibraryDamagedError)
