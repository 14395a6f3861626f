"""The favorites library: persistence, search, removal, self-repair and surviving SIGKILL."""

from __future__ import annotations

import io
import os
import random
import sqlite3
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kill_child import run_and_kill
from PIL import Image

from inkpunk_studio import library as library_mod
from inkpunk_studio.library import Favorite, Library
from inkpunk_studio.metadata import ImageParams, read_params, save_png


def _img(colour: tuple[int, int, int] = (200, 30, 90), size: tuple[int, int] = (64, 48)) -> Image.Image:
    return Image.new("RGB", size, colour)


def _params(prompt: str, seed: int = 1, **kw: object) -> ImageParams:
    return ImageParams(prompt=prompt, seed=seed, width=64, height=48, model_name="Inkpunk-Diffusion-v2",
                       model_hash="abcdef1234", **kw)


@pytest.fixture
def lib(tmp_path: Path) -> Iterator[Library]:
    library = Library(tmp_path / "lib")
    yield library
    library.close()


def test_add_get_search_remove_and_restart(tmp_path: Path) -> None:
    folder = tmp_path / "lib"
    library = Library(folder)
    a = library.add(_img(), _params("nvinkpunk, a neon Fox, ink", seed=11, negative_prompt="blurry"))
    b = library.add(_img((0, 0, 255)), _params("a quiet lake, ÉTÉ", seed=12, strength=0.6, sampler="euler_a"))
    c = library.add(_img((0, 255, 0)), _params("neon city at night", seed=13))
    assert isinstance(a, Favorite) and a.path.is_file() and a.path.parent == folder / "images"
    assert read_params(a.path) == a.params  # the file itself carries the parameters
    assert library.count() == 3
    got = library.get(b.id)
    assert got is not None and got.params == b.params and got.thumbnail
    with Image.open(io.BytesIO(got.thumbnail)) as t:
        assert t.format == "PNG" and max(t.size) <= 256
    assert library.get(999) is None

    assert [f.id for f in library.search()] == [c.id, b.id, a.id]
    assert [f.id for f in library.search(sort="oldest")] == [a.id, b.id, c.id]
    assert [f.id for f in library.search("NEON")] == [c.id, a.id]
    assert [f.id for f in library.search("neon fox")] == [a.id]
    assert [f.id for f in library.search("été")] == [b.id]
    assert library.search("blurry") == []  # the negative prompt isn't searched
    assert library.search("100%_") == []
    with pytest.raises(ValueError, match="sort"):
        library.search(sort="sideways")

    assert library.remove(c.id) is True
    assert library.remove(c.id) is False
    assert not c.path.exists() and library.count() == 2
    library.close()

    reopened = Library(folder)
    try:
        assert reopened.last_repair == library_mod.RepairReport()
        favs = {f.id: f for f in reopened.search()}
        assert set(favs) == {a.id, b.id}
        assert favs[b.id].params == b.params and favs[b.id].params.strength == 0.6
        assert favs[a.id].params.negative_prompt == "blurry" and not favs[a.id].missing
    finally:
        reopened.close()


def test_add_from_file_keeps_its_metadata(lib: Library, tmp_path: Path) -> None:
    params = _params("from a file, with: colons", seed=5)
    src = save_png(_img(), tmp_path / "outside.png", params)
    fav = lib.add(src)
    assert fav.params == params and fav.path.read_bytes() == src.read_bytes()
    plain = tmp_path / "plain.jpg"
    _img().save(plain)
    fav2 = lib.add(plain, _params("given params", seed=6))
    assert fav2.path.suffix == ".png" and read_params(fav2.path) == fav2.params


def test_huge_seed_and_same_second_names(lib: Library) -> None:
    a = lib.add(_img(), _params("x", seed=2**64 - 1))
    b = lib.add(_img(), _params("x", seed=2**64 - 1))
    assert a.path != b.path
    got = lib.get(a.id)
    assert got is not None and got.params.seed == 2**64 - 1  # kept in the extra JSON, read back as the seed


def test_remove_keeping_the_file_is_not_readopted(tmp_path: Path) -> None:
    library = Library(tmp_path / "lib")
    fav = library.add(_img(), _params("keep the file"))
    library.remove(fav.id, delete_file=False)
    assert fav.path.exists()
    library.close()
    again = Library(tmp_path / "lib")
    assert again.count() == 0 and again.last_repair.adopted == 0
    again.close()


def test_repair(tmp_path: Path) -> None:
    folder = tmp_path / "lib"
    library = Library(folder)
    keep = library.add(_img(), _params("keeps its file"))
    gone = library.add(_img(), _params("file deleted behind our back"))
    library.close()
    images = folder / "images"
    gone_bytes = gone.path.read_bytes()
    gone.path.unlink()
    # a file without a row (as after a kill between file and commit), one without metadata, a non-image
    orphan_params = _params("orphan, adopted from its PNG chunk", seed=77, strength=0.3)
    save_png(_img((1, 2, 3)), images / "20240101-000000-000-77.png", orphan_params)
    _img((9, 9, 9), (40, 30)).save(images / "no-metadata.png")
    (images / "junk.png").write_text("not an image")
    stale = images / ".tmp-20240101.png.dead"
    fresh = images / ".tmp-20240102.png.busy"
    stale.write_bytes(b"half")
    fresh.write_bytes(b"half")
    os.utime(stale, (time.time() - 3600, time.time() - 3600))

    library = Library(folder)
    report = library.last_repair
    assert (report.temp_files_removed, report.marked_missing, report.adopted) == (1, 1, 2)
    assert not stale.exists() and fresh.exists()
    favs = {f.params.prompt: f for f in library.search()}
    assert favs[gone.params.prompt].missing and not favs[keep.params.prompt].missing
    adopted = favs[orphan_params.prompt]
    assert adopted.params == orphan_params and library.thumbnail(adopted.id)
    assert favs[""].params.width == 40 and favs[""].params.height == 30
    library.close()

    gone.path.write_bytes(gone_bytes)  # the file comes back (restored from a backup, say)
    library = Library(folder)
    assert library.last_repair.found_again == 1 and library.last_repair.adopted == 0
    assert not any(f.missing for f in library.search())
    library.close()


def test_interrupted_removal_is_finished_at_start(tmp_path: Path) -> None:
    library = Library(tmp_path / "lib")
    fav = library.add(_img(), _params("half removed"))
    with library._write() as db:  # what remove() commits before it deletes the file
        db.execute("DELETE FROM favorites WHERE id = ?", (fav.id,))
        db.execute("INSERT INTO removed (file, delete_file) VALUES (?, 1)", (fav.path.name,))
    library.close()
    library = Library(tmp_path / "lib")
    assert library.last_repair.removals_finished == 1 and library.count() == 0 and not fav.path.exists()
    library.close()


def test_threads_each_get_a_connection(lib: Library) -> None:
    errors: list[BaseException] = []

    def worker(n: int) -> None:
        try:
            for k in range(3):
                lib.add(_img(), _params(f"thread {n} {k}", seed=7))  # same seed: same file name stems
                lib.search("thread")
        except BaseException as e:  # noqa: BLE001 - collected and asserted below
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and lib.count() == 9
    favorites = lib.search()
    assert len({f.path for f in favorites}) == 9
    for fav in favorites:  # no add overwrote another's file
        assert read_params(fav.path) == fav.params


def _run_child_and_kill(folder: Path, start_seed: int, rng: random.Random) -> list[int]:
    lines = run_and_kill("library_writer_child.py", [str(folder), str(start_seed)], rng, first_line_timeout=30)
    return [int(line.split()[0]) for line in lines]


def test_kill_at_random_moments_loses_nothing_confirmed(tmp_path: Path) -> None:
    folder = tmp_path / "lib"
    rng = random.Random(1234)
    confirmed: list[int] = []
    for round_ in range(4):
        confirmed += _run_child_and_kill(folder, 1000 * (round_ + 1), rng)
        db = sqlite3.connect(folder / library_mod.DB_NAME)
        try:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        finally:
            db.close()
        library = Library(folder)
        try:
            assert library.last_repair.marked_missing == 0
            for fav_id in confirmed:
                fav = library.get(fav_id)
                assert fav is not None, f"confirmed favorite {fav_id} lost"
                assert fav.path.is_file() and not fav.missing
                assert read_params(fav.path) == fav.params
            names = {f.path.name for f in library.search()}
            assert {p.name for p in library._image_files()} <= names  # every image file has its row
        finally:
            library.close()
    assert len(confirmed) >= 4
