"""Favorites in the real window when the library's database is locked by another program or damaged, and
duplicates told apart by image content."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

import ast
import time
from pathlib import Path

from fixtures_app import open_window  # noqa: F401  (pytest fixture, used as an argument)
from lib_lock import write_lock
from PIL import Image
from PySide6.QtCore import Qt
from PySide6.QtGui import QImage
from PySide6.QtWidgets import QLabel, QPushButton, QTabWidget, QToolButton

from inkpunk_studio import favorites as favorites_mod
from inkpunk_studio.favorites import STAR_OFF, STAR_ON
from inkpunk_studio.library import DB_NAME, Library
from inkpunk_studio.metadata import ImageParams, save_png
from inkpunk_studio.widgets.library_view import LibraryView

LIBRARY_TIMEOUT_MS = 15_000


def _picture(tmp_path: Path, name: str, colour: tuple[int, int, int], prompt: str = "nvinkpunk a fox") -> str:
    params = ImageParams(prompt=prompt, seed=42, width=64, height=64)
    (tmp_path / "outside").mkdir(exist_ok=True)
    return str(save_png(Image.new("RGB", (64, 64), colour), tmp_path / "outside" / name, params))


def _show(window, path: str) -> None:
    """Put a finished image on the canvas, as showing a history image does (without waiting for the window's
    I/O pool, which the prompt's token counter may keep busy for seconds while torch imports)."""
    window.canvas_panel.show_file(QImage(path), path, Path(path).name)
    assert window.canvas.path == path and not window.canvas.is_preview()


def _library_files(data: Path) -> set[str]:
    return {p.name for p in (data / "library" / "images").iterdir()}


def test_favorites_module_does_not_import_the_main_window() -> None:
    tree = ast.parse(Path(favorites_mod.__file__).read_text(encoding="utf-8"))
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    assert not any(name.endswith("main_window") for name in imported), imported


def test_a_locked_library_does_not_delay_the_window_and_comes_on_when_free(qtbot, open_window,
                                                                          tmp_path) -> None:
    data = tmp_path / "data"
    lib = Library(data / "library")
    lib.add(Image.new("RGB", (64, 64), (200, 10, 10)), ImageParams(prompt="from before", seed=1))
    lib.close()
    with write_lock(data / "library" / DB_NAME):
        start = time.monotonic()
        window = open_window(data_dir=data)
        assert time.monotonic() - start < 5.0  # was 10.6 s: the window waited for the lock
        qtbot.waitUntil(lambda: window.favorites.state == "busy", timeout=LIBRARY_TIMEOUT_MS)
        label = window.findChild(QLabel, "libraryStatusLabel")
        assert "busy" in label.text() and "another program" in label.text()
        assert window.findChild(LibraryView, "libraryView") is None
        qtbot.wait(600)  # a retry or two while it is still locked
        assert window.favorites.state == "busy"
    # the lock is gone: the library comes on by itself
    qtbot.waitUntil(lambda: window.favorites.state == "ready", timeout=LIBRARY_TIMEOUT_MS)
    view = window.findChild(LibraryView, "libraryView")
    assert [f.params.prompt for f in view.favorites()] == ["from before"]
    assert window.findChild(QTabWidget, "stageTabs").tabText(1) == "Library (1)"


def test_a_failed_star_is_reported_and_leaves_nothing_behind(qtbot, open_window, tmp_path) -> None:
    data = tmp_path / "data"
    window = open_window(data_dir=data)
    qtbot.waitUntil(lambda: window.favorites.state == "ready", timeout=LIBRARY_TIMEOUT_MS)
    star = window.findChild(QToolButton, "favoriteButton")
    path = _picture(tmp_path, "fox.png", (10, 120, 200))
    _show(window, path)
    library = window.favorites.library
    with write_lock(library.db_path):
        for _ in range(3):
            qtbot.waitUntil(star.isEnabled, timeout=5_000)
            qtbot.mouseClick(star, Qt.MouseButton.LeftButton)
            qtbot.waitUntil(lambda: "Couldn't add to the library" in window.statusBar().currentMessage(),
                            timeout=LIBRARY_TIMEOUT_MS)
            assert "busy" in window.statusBar().currentMessage()
            window.statusBar().clearMessage()
        qtbot.waitUntil(star.isEnabled, timeout=5_000)
        assert star.text() == STAR_OFF and _library_files(data) == set()  # no copy left to adopt
    # three clicks once the lock is gone: one favorite
    for _ in range(3):
        qtbot.waitUntil(star.isEnabled, timeout=5_000)
        with qtbot.waitSignal(window.favorites.favoriteAdded, timeout=LIBRARY_TIMEOUT_MS):
            qtbot.mouseClick(star, Qt.MouseButton.LeftButton)
    assert library.count() == 1 and len(_library_files(data)) == 1 and star.text() == STAR_ON


def test_closing_during_a_star_on_a_locked_library_is_quick(qtbot, open_window, tmp_path) -> None:
    data = tmp_path / "data"
    window = open_window(data_dir=data)
    qtbot.waitUntil(lambda: window.favorites.state == "ready", timeout=LIBRARY_TIMEOUT_MS)
    path = _picture(tmp_path, "harbour.png", (90, 90, 20), "a harbour")
    _show(window, path)
    with write_lock(window.favorites.library.db_path):
        qtbot.mouseClick(window.findChild(QToolButton, "favoriteButton"), Qt.MouseButton.LeftButton)
        start = time.monotonic()
        window.close()
        assert time.monotonic() - start < 4.0  # was 10 s: the star's write waited out the lock
    assert _library_files(data) == set()
    again = Library(data / "library")
    assert again.count() == 0 and again.last_repair.adopted == 0
    again.close()


def test_a_damaged_library_is_reported_and_rebuilt_from_its_images(qtbot, open_window, tmp_path) -> None:
    data = tmp_path / "data"
    lib = Library(data / "library")
    for k, colour in enumerate([(250, 0, 0), (0, 250, 0)]):
        lib.add(Image.new("RGB", (64, 64), colour), ImageParams(prompt=f"kept {k}", seed=k))
    lib.close()
    db_path = data / "library" / DB_NAME
    for extra in ("-wal", "-shm"):
        Path(f"{db_path}{extra}").unlink(missing_ok=True)
    db_path.write_bytes(b"\0garbage, not SQLite" * 100)

    window = open_window(data_dir=data)
    qtbot.waitUntil(lambda: window.favorites.state == "damaged", timeout=LIBRARY_TIMEOUT_MS)
    label = window.findChild(QLabel, "libraryStatusLabel")
    rebuild = window.findChild(QPushButton, "libraryRebuildButton")
    assert "damaged" in label.text() and rebuild.isVisibleTo(window.favorites.page)
    assert window.findChild(QTabWidget, "stageTabs").tabText(1) == "Library (off)"
    assert "damaged" in window.statusBar().currentMessage()

    with qtbot.waitSignal(window.favorites.libraryReady, timeout=LIBRARY_TIMEOUT_MS):
        qtbot.mouseClick(rebuild, Qt.MouseButton.LeftButton)
    view = window.findChild(LibraryView, "libraryView")
    assert sorted(f.params.prompt for f in view.favorites()) == ["kept 0", "kept 1"]
    assert "rebuilt" in window.statusBar().currentMessage()
    aside = [p for p in (data / "library").iterdir() if p.name.startswith(f"{DB_NAME}.damaged")]
    assert len(aside) == 1 and aside[0].read_bytes().startswith(b"\0garbage")  # kept, not deleted


def test_equal_parameters_different_images_are_two_favorites(qtbot, open_window, tmp_path) -> None:
    window = open_window(data_dir=tmp_path / "data")
    qtbot.waitUntil(lambda: window.favorites.state == "ready", timeout=LIBRARY_TIMEOUT_MS)
    first = _picture(tmp_path, "a.png", (200, 0, 0))
    second = _picture(tmp_path, "b.png", (0, 0, 200))  # same prompt, seed and size
    results = []
    for path in (first, second, first):
        with qtbot.waitSignal(window.favorites.favoriteAdded, timeout=LIBRARY_TIMEOUT_MS) as sig:
            window.favorites.add_path(path)
        results.append(sig.args)
    assert [added for _, added in results] == [True, True, False]
    assert results[2][0] == results[0][0] and window.favorites.library.count() == 2
