"""The Library view, offscreen: rows, thumbnails, search, sort, and each action's effect."""

from __future__ import annotations

import random
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lib_lock import write_lock
from PIL import Image
from PySide6.QtCore import Qt, QUrl
from PySide6.QtGui import QDesktopServices
from PySide6.QtWidgets import QApplication, QFileDialog, QLineEdit, QListWidget, QPushButton

from inkpunk_studio.library import Library
from inkpunk_studio.metadata import ImageParams, read_params
from inkpunk_studio.widgets.library_view import ID_ROLE, LibraryView
from inkpunk_studio.worker import AsyncTasks


@pytest.fixture
def library(tmp_path: Path) -> Iterator[Library]:
    lib = Library(tmp_path / "lib")
    colours = [(230, 20, 20), (20, 230, 20), (20, 20, 230)]
    prompts = ["nvinkpunk, a neon fox", "a quiet harbour at dawn", "nvinkpunk, neon city, rain"]
    for k, (colour, prompt) in enumerate(zip(colours, prompts, strict=True)):
        lib.add(Image.new("RGB", (64, 64), colour),
                ImageParams(prompt=prompt, negative_prompt="blurry", seed=100 + k, steps=20 + k, width=64,
                            height=64, sampler="euler_a"))
    yield lib
    lib.close()


@pytest.fixture
def tasks(qtbot) -> Iterator[AsyncTasks]:
    runner = AsyncTasks()
    yield runner
    runner.shutdown()


@pytest.fixture
def view(qtbot, library: Library, tasks: AsyncTasks) -> Iterator[LibraryView]:
    v = LibraryView(library, tasks)
    v.confirm_remove = False
    qtbot.addWidget(v)
    v.resize(700, 500)
    v.show()
    yield v
    v.wait_for_thumbnails()


def _prompts(view: LibraryView) -> list[str]:
    return [f.params.prompt for f in view.favorites()]


def test_rows_and_thumbnails(view: LibraryView, qtbot) -> None:
    assert view.objectName() == "libraryView"
    grid = view.findChild(QListWidget, "libraryList")
    assert grid.count() == 3
    assert _prompts(view) == ["nvinkpunk, neon city, rain", "a quiet harbour at dawn", "nvinkpunk, a neon fox"]

    def thumbnails_arrived() -> None:
        for i in range(grid.count()):
            image = grid.item(i).icon().pixmap(32, 32).toImage()
            r, g, b = image.pixelColor(16, 16).getRgb()[:3]
            assert max(r, g, b) > 200  # the favorite's colour, not the dark placeholder

    qtbot.waitUntil(thumbnails_arrived, timeout=5000)
    red = view._items[grid.item(2).data(ID_ROLE)].icon().pixmap(32, 32).toImage().pixelColor(16, 16)
    assert red.red() > 200 and red.green() < 60


def test_search_filters_and_sort(view: LibraryView, qtbot) -> None:
    search = view.findChild(QLineEdit, "librarySearch")
    qtbot.keyClicks(search, "NEON")
    qtbot.waitUntil(lambda: len(view.favorites()) == 2, timeout=2000)
    assert _prompts(view) == ["nvinkpunk, neon city, rain", "nvinkpunk, a neon fox"]
    assert view.countLabel.text() == "2 of 3"
    view.sortCombo.setCurrentIndex(view.sortCombo.findData("oldest"))
    assert _prompts(view) == ["nvinkpunk, a neon fox", "nvinkpunk, neon city, rain"]
    search.setText("harbour dawn")
    view.refresh()
    assert _prompts(view) == ["a quiet harbour at dawn"]
    search.setText("blurry")  # negative prompts aren't searched
    view.refresh()
    assert view.favorites() == []
    search.clear()
    view.refresh()
    assert len(view.favorites()) == 3 and view.countLabel.text() == "3 favorites"


def test_restore_show_and_init_image_emit_plain_data(view: LibraryView, qtbot) -> None:
    assert not view.restoreAction.isEnabled()  # nothing selected yet
    fav = view.favorites()[1]
    view.select(fav.id)
    button = view.findChild(QPushButton, "restoreButton")
    assert view.restoreAction.isEnabled() and button.isEnabled()
    with qtbot.waitSignal(view.restoreRequested, timeout=1000) as sig:
        button.click()
    params = sig.args[0]
    assert isinstance(params, ImageParams)
    assert (params.prompt, params.seed, params.steps, params.sampler) == ("a quiet harbour at dawn", 101, 21,
                                                                          "euler_a")
    with qtbot.waitSignal(view.showRequested, timeout=1000) as sig:
        centre = view.listWidget.visualItemRect(view._items[fav.id]).center()
        qtbot.mouseClick(view.listWidget.viewport(), Qt.MouseButton.LeftButton, pos=centre)
        qtbot.mouseDClick(view.listWidget.viewport(), Qt.MouseButton.LeftButton, pos=centre)
    assert sig.args == [str(fav.path)]
    with qtbot.waitSignal(view.initImageRequested, timeout=1000) as sig:
        view.initImageAction.trigger()
    assert sig.args == [str(fav.path)] and Path(sig.args[0]).is_file()


def test_remove(view: LibraryView, library: Library, qtbot) -> None:
    fav = view.favorites()[0]
    view.select(fav.id)
    with qtbot.waitSignal(view.favoritesChanged, timeout=1000):
        view.removeAction.trigger()
    assert fav.id not in [f.id for f in view.favorites()] and len(view.favorites()) == 2
    assert library.get(fav.id) is None and not fav.path.exists()
    assert not view.removeAction.isEnabled()


def test_add_favorite_refreshes_and_selects(view: LibraryView, library: Library, tmp_path: Path,
                                            qtbot) -> None:
    with qtbot.waitSignal(view.favoritesChanged, timeout=1000):
        fav = view.add_favorite(Image.new("RGB", (64, 64), "white"), ImageParams(prompt="starred", seed=9))
    assert fav is not None and view.selected_id() == fav.id and library.count() == 4
    bad = tmp_path / "bad.png"
    bad.write_text("nope")
    with qtbot.waitSignal(view.statusMessage, timeout=1000) as sig:
        assert view.add_favorite(bad) is None
    assert "Couldn't add" in sig.args[0] and library.count() == 4


def test_missing_file_disables_file_actions(view: LibraryView, library: Library, qtbot) -> None:
    fav = view.favorites()[0]
    fav.path.unlink()
    library.repair()
    view.refresh()
    view.select(fav.id)
    assert view.selected_favorite().missing
    assert not view.showAction.isEnabled() and not view.exportAction.isEnabled()
    assert view.restoreAction.isEnabled() and view.removeAction.isEnabled()


def test_copy_export_and_open_folder(view: LibraryView, tmp_path: Path, monkeypatch, qtbot) -> None:
    fav = view.favorites()[2]  # the red one
    view.select(fav.id)
    view.copyAction.trigger()
    clip = QApplication.clipboard().image()
    assert clip.width() == 64 and clip.pixelColor(5, 5).red() > 200
    for name in ("out.png", "out.jpg", "out.webp"):
        out = view.export_to(fav.id, tmp_path / name)
        assert out is not None and read_params(out) == fav.params
    with qtbot.waitSignal(view.statusMessage, timeout=1000) as sig:
        assert view.export_to(fav.id, tmp_path / "out.tiff") is None
    assert "Export failed" in sig.args[0]
    opened: list[QUrl] = []  # don't launch a file manager from the test run
    monkeypatch.setattr(QDesktopServices, "openUrl", staticmethod(lambda url: opened.append(url) or True))
    view.openFolderAction.trigger()
    assert [u.toLocalFile() for u in opened] == [str(fav.path.parent)]


def test_closed_library_does_not_crash_the_view(view: LibraryView, library: Library, qtbot) -> None:
    view.wait_for_thumbnails()
    library.close()
    with qtbot.waitSignal(view.statusMessage, timeout=1000) as sig:
        view.refresh()
    assert "Library unavailable" in sig.args[0] and view.favorites() == []


def test_remove_with_the_database_locked_keeps_the_gui_responsive(view: LibraryView, library: Library,
                                                                   qtbot) -> None:
    fav = view.favorites()[0]
    view.select(fav.id)
    with write_lock(library.db_path):
        start = time.monotonic()
        with qtbot.waitSignal(view.statusMessage, timeout=5_000,
                              check_params_cb=lambda m: m.startswith("Couldn't remove")) as sig:
            view.removeAction.trigger()
            assert time.monotonic() - start < 0.5  # returned at once; the wait is on a pool thread
        assert "busy" in sig.args[0]
    assert fav.path.exists() and library.get(fav.id) is not None and view.removeAction.isEnabled()
    with qtbot.waitSignal(view.favoritesChanged, timeout=5_000):  # the lock is gone: it works
        view.removeAction.trigger()
    assert library.get(fav.id) is None and not fav.path.exists()


def test_export_of_a_large_favorite_runs_off_the_gui_thread(view: LibraryView, library: Library,
                                                            tmp_path: Path, monkeypatch, qtbot) -> None:
    noise = Image.frombytes("RGB", (2048, 2048), random.Random(7).randbytes(2048 * 2048 * 3))
    big = library.add(noise, ImageParams(prompt="a big one", seed=3, width=2048, height=2048))
    view.refresh()
    view.select(big.id)
    dest = tmp_path / "big.png"
    monkeypatch.setattr(QFileDialog, "getSaveFileName", staticmethod(lambda *a, **k: (str(dest), "")))
    with qtbot.waitSignal(view.statusMessage, timeout=30_000,
                          check_params_cb=lambda m: m.startswith("Exported to")):
        task = view.export_selected()  # what the Export action (Ctrl+E) runs
        assert task is not None and not task.done() and not dest.exists()  # still encoding elsewhere
    assert read_params(dest) == big.params
    with Image.open(dest) as out:
        assert out.size == (2048, 2048)
