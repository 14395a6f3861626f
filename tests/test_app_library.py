"""Favorites through the real window: star, Ctrl+D, a history thumbnail's menu, restart, search, restore."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

from fixtures_app import RUN_TIMEOUT_MS, open_window, set_small_params, tiny_checkpoint  # noqa: F401  (pytest fixtures, used as arguments)
from PySide6.QtCore import Qt
from PySide6.QtGui import QAction
from PySide6.QtWidgets import QLineEdit, QListWidget, QTabWidget, QToolButton

from inkpunk_studio.favorites import STAR_OFF, STAR_ON
from inkpunk_studio.metadata import read_params
from inkpunk_studio.widgets.library_view import ID_ROLE, LibraryView

CTRL = Qt.KeyboardModifier.ControlModifier


def _generate(qtbot, window, **params) -> str:
    set_small_params(window, steps=1, **params)
    with qtbot.waitSignal(window.generationFinished, timeout=RUN_TIMEOUT_MS) as finished:
        assert window.generate()
    return finished.args[0][0]


def test_star_keeps_a_favorite_across_a_restart_with_search_and_restore(qtbot, open_window, tiny_checkpoint,
                                                                        tmp_path):
    data = tmp_path / "data"
    window = open_window(checkpoint=tiny_checkpoint, data_dir=data)
    first = _generate(qtbot, window, prompt="nvinkpunk a starred fox", seed=77)
    star = window.findChild(QToolButton, "favoriteButton")
    assert star.isEnabled() and star.text() == STAR_OFF

    # the star adds the image on show: a row and its own file in <data>/library
    with qtbot.waitSignal(window.favorites.favoriteAdded, timeout=10_000) as added:
        qtbot.mouseClick(star, Qt.MouseButton.LeftButton)
    fav_id, is_new = added.args
    library = window.favorites.library
    favorite = library.get(fav_id)
    assert is_new and library.count() == 1
    assert favorite.path.is_file() and favorite.path.parent == data / "library" / "images"
    assert read_params(favorite.path) == read_params(first)
    assert star.text() == STAR_ON
    assert "Added to the library" in window.statusBar().currentMessage()

    # Ctrl+D on the same image doesn't store it twice
    with qtbot.waitSignal(window.favorites.favoriteAdded, timeout=10_000) as again:
        qtbot.keyClick(window.prompt_panel.prompt_edit, Qt.Key.Key_D, CTRL)
    assert again.args == [fav_id, False] and library.count() == 1

    # a history thumbnail's context menu adds that image (not the one on the canvas)
    second = _generate(qtbot, window, prompt="nvinkpunk a harbour at night", seed=78)
    _generate(qtbot, window, prompt="nvinkpunk never starred", seed=79)
    menu = window.favorites.history_menu(second, window)
    with qtbot.waitSignal(window.favorites.favoriteAdded, timeout=10_000):
        menu.findChild(QAction, "historyFavoriteAction").trigger()
    assert library.count() == 2
    view = window.findChild(LibraryView, "libraryView")
    assert [f.params.seed for f in view.favorites()] == [78, 77]
    tabs = window.findChild(QTabWidget, "stageTabs")
    assert not view.isVisible() and tabs.tabText(1) == "Library (2)"
    qtbot.keyClick(window.prompt_panel.prompt_edit, Qt.Key.Key_L, CTRL)  # Ctrl+L shows the Library tab
    assert view.isVisible() and window.favorites.toggle_action.isChecked()
    window.close()
    assert window.favorites.library._closed  # the database was closed with the window

    # restart on the same data folder: both favorites are in the Library view, with thumbnails
    window = open_window(checkpoint=tiny_checkpoint, data_dir=data, wait_ready=False)
    qtbot.waitUntil(lambda: window.favorites.state == "ready", timeout=10_000)  # it opens in the background
    view = window.findChild(LibraryView, "libraryView")
    window.findChild(QAction, "libraryToggleAction").trigger()  # View ▸ Library
    assert view.isVisible()
    grid = view.findChild(QListWidget, "libraryList")
    assert [f.params.prompt for f in view.favorites()] == ["nvinkpunk a harbour at night", "nvinkpunk a starred fox"]
    qtbot.waitUntil(lambda: all(grid.item(i).icon().cacheKey() != view._placeholder.cacheKey()
                                for i in range(grid.count())), timeout=10_000)

    # search finds it
    qtbot.keyClicks(view.findChild(QLineEdit, "librarySearch"), "STARRED fox")
    qtbot.waitUntil(lambda: len(view.favorites()) == 1, timeout=5_000)
    assert view.favorites()[0].id == fav_id and view.countLabel.text() == "1 of 2"

    # restore from the library (Ctrl+R with the Library focused) puts every setting back
    window.prompt_panel.set_prompts("something else", "")
    window.params_panel.set_values(sampler="euler", steps=30, cfg_scale=3.0, seed=5, width=256, height=320)
    grid.setCurrentRow(0)
    grid.setFocus()
    qtbot.keyClick(grid, Qt.Key.Key_R, CTRL)
    assert window.prompt_panel.prompt() == "nvinkpunk a starred fox"
    assert window.prompt_panel.negative_prompt() == "blurry"
    values = window.params_panel.values()
    assert (values["sampler"], values["schedule"], values["steps"], values["cfg_scale"], values["seed"]) == (
        "dpmpp_2m", "karras", 1, 7.5, 77)
    assert (values["width"], values["height"]) == (64, 64)

    # show it on the canvas (the star knows it is a favorite), then use it as the init image
    view.showAction.trigger()
    qtbot.waitUntil(lambda: window.canvas.path == str(favorite.path), timeout=10_000)
    assert window.canvas.isVisible() and not view.isVisible()  # "Show" goes to the canvas tab
    qtbot.waitUntil(lambda: window.favorites.star_button.text() == STAR_ON, timeout=10_000)
    view.initImageAction.trigger()
    qtbot.waitUntil(window.init_panel.has_image, timeout=10_000)
    assert window.init_panel.image().size == (64, 64)

    # an image from the first session that was never starred shows an empty star
    window.show_history_image(window.history_strip.paths()[0])
    qtbot.waitUntil(lambda: window.canvas.path == window.history_strip.paths()[0], timeout=10_000)
    qtbot.wait(200)  # the library lookup for the star runs in the background
    assert window.favorites.star_button.text() == STAR_OFF
    assert grid.item(0).data(ID_ROLE) == fav_id
