"""Favorites in the window: the star button, the Library tab and the history strip's context menu.

:class:`FavoritesController` owns the :class:`~inkpunk_studio.library.Library` (``<data dir>/library``), the
:class:`~inkpunk_studio.widgets.library_view.LibraryView` (a tab beside the canvas, toggled with Ctrl+L), and
the star button (objectName ``favoriteButton``) in the canvas toolbar. Adding runs on one library thread of its own (PNG
encoding and an fsync'd commit stay off the GUI thread, and writes are serialised); the view loads its
thumbnails on its own pool. ``close()`` waits for both and closes the database.

The window's Ctrl+R (restore) and Ctrl+I (use as init image) act on the selected favorite while the Library
has the keyboard focus, so the view's own copies of those shortcuts are removed (two actions with one
shortcut would make Qt ignore both).
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TYPE_CHECKING

from PySide6.QtCore import QObject, QPoint, Qt, QUrl, Signal
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence
from PySide6.QtWidgets import QApplication, QLabel, QMenu, QTabWidget, QToolButton, QWidget

from .imageload import ImageLoadError
from .library import Favorite, Library
from .metadata import read_params
from .widgets.library_view import LibraryView

if TYPE_CHECKING:
    from .main_window import MainWindow

log = logging.getLogger(__name__)

STAR_OFF, STAR_ON = "☆  Favorite", "★  Favorite"


def library_dir(data_dir: Path) -> Path:
    """Where the favorites library lives inside a data folder."""
    return Path(data_dir) / "library"


def add_unless_present(library: Library, path: str) -> tuple[Favorite, bool]:
    """Add the image file ``path`` to the library unless a favorite with the same parameters is there.

    Returns ``(favorite, added)``. Blocking: runs on the library thread.
    """
    existing = find_favorite(library, path)
    if existing is not None:
        return existing, False
    return library.add(path), True


def find_favorite(library: Library, path: str) -> Favorite | None:
    """A favorite made with exactly the parameters stored in ``path`` (same prompt, seed, model, ...)."""
    params = read_params(path)
    if params is None:
        return None
    for favorite in library.search(params.prompt):
        if favorite.params == params and not favorite.missing:
            return favorite
    return None


class FavoritesController(QObject):
    """Wires the library, its view and the window together. ``library``/``view`` are None if it can't open."""

    favoriteAdded = Signal(int, bool)  # favorite id, newly added (False: it was already there)

    def __init__(self, window: MainWindow, folder: Path) -> None:
        super().__init__(window)
        self.window = window
        self.library: Library | None = None
        self.view: LibraryView | None = None
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inkpunk-library")
        self._known: dict[str, int] = {}  # image path -> favorite id, for the star's state
        self._checked: set[str] = set()  # image paths already looked up in the library
        self._closed = False
        try:
            self.library = Library(folder)
        except Exception as exc:  # a damaged or unwritable library must not keep the window from opening
            log.exception("could not open the library in %s", folder)
            self.error = f"The library could not be opened: {exc}"
        else:
            self.error = ""
            self.view = LibraryView(self.library, window.tasks)
            self.view.statusMessage.connect(self._status)
            self.view.showRequested.connect(self._show)
            self.view.restoreRequested.connect(window.apply_image_params)
            self.view.initImageRequested.connect(window.use_as_init_image)
            self.view.favoritesChanged.connect(self._favorites_changed)
            for action in (self.view.restoreAction, self.view.initImageAction):
                action.setShortcut(QKeySequence())  # the window's Ctrl+R / Ctrl+I route here (see above)

        if self.view is not None:
            self.page: QWidget = self.view
        else:
            self.page = QLabel(self.error)
            self.page.setAlignment(Qt.AlignmentFlag.AlignCenter)
            self.page.setWordWrap(True)
        self.tabs: QTabWidget | None = None
        self.toggle_action = QAction("Library", self)
        self.toggle_action.setObjectName("libraryToggleAction")
        self.toggle_action.setCheckable(True)
        self.toggle_action.setShortcut(QKeySequence("Ctrl+L"))
        self.toggle_action.setShortcutContext(Qt.ShortcutContext.WindowShortcut)
        self.toggle_action.setToolTip("Switch between the canvas and the favorites library (Ctrl+L)")
        self.toggle_action.toggled.connect(self.show_library)

        self.star_button = QToolButton()
        self.star_button.setObjectName("favoriteButton")
        self.star_button.setText(STAR_OFF)
        self.star_button.setToolTip("Add the image on show to the library (Ctrl+D)")
        self.star_button.clicked.connect(self.add_current)
        window.canvas.imageChanged.connect(self._update_star)
        self._update_star()

    # ------------------------------------------------------------ the Library tab
    def bind_tabs(self, tabs: QTabWidget) -> None:
        """Use ``tabs`` (the canvas first, then :attr:`page`) for showing and hiding the Library."""
        self.tabs = tabs
        tabs.currentChanged.connect(self._tab_changed)
        tabs.tabBarClicked.connect(self._tab_clicked)
        self._update_tab_title()

    def show_library(self, on: bool = True) -> None:
        """Bring the Library tab (or, with ``on=False``, the canvas) to the front."""
        if self.tabs is not None:
            if not on:
                self._leave_page()
            self.tabs.setCurrentWidget(self.page if on else self.window.canvas_panel)

    def _tab_clicked(self, index: int) -> None:
        if self.tabs is not None and self.tabs.widget(index) is not self.page:
            self._leave_page()

    def _leave_page(self) -> None:
        """Hand the focus to the prompt before the Library is hidden; otherwise Qt passes it to the history
        strip, which then selects (and shows) its first image."""
        if self.has_focus():
            self.window.prompt_panel.prompt_edit.setFocus()

    def library_shown(self) -> bool:
        return self.tabs is not None and self.tabs.currentWidget() is self.page

    def _tab_changed(self) -> None:
        self.toggle_action.setChecked(self.library_shown())
        if self.library_shown() and self.view is not None:
            self.view.listWidget.setFocus()

    def _update_tab_title(self) -> None:
        if self.tabs is None:
            return
        count = self.library.count() if self.library is not None and not self._closed else 0
        index = self.tabs.indexOf(self.page)
        self.tabs.setTabText(index, f"Library ({count})" if count else "Library")
        self.tabs.setTabToolTip(index, "Favorites: star an image (Ctrl+D) to keep it here · Ctrl+L")

    def _show(self, path: str) -> None:
        self.show_library(False)
        self.window.show_history_image(path)

    # ------------------------------------------------------------ adding
    def has_focus(self) -> bool:
        """Whether the keyboard focus is inside the Library view."""
        focus = QApplication.focusWidget()
        return self.view is not None and focus is not None and (focus is self.view or
                                                                  self.view.isAncestorOf(focus))

    def add_current(self) -> None:
        """The star: add the image on the canvas (a saved image, not a preview)."""
        path = self.window.canvas.path
        if path is None or self.window.canvas.is_preview():
            self._status("Nothing to add: show a finished image first")
            return
        self.add_path(path)

    def add_path(self, path: str) -> asyncio.Task | None:
        """Add an image file to the library in the background (the star, or a history thumbnail)."""
        if self.library is None or self._closed:
            self._status(self.error or "The library is closed")
            return None
        self.star_button.setEnabled(False)
        return self.window.tasks.spawn(self._add(path))

    async def _add(self, path: str) -> None:
        try:
            future = self._executor.submit(add_unless_present, self.library, path)
            favorite, added = await asyncio.wrap_future(future, loop=self.window.tasks.loop)
        except (ImageLoadError, OSError, ValueError) as exc:
            log.warning("adding %s to the library failed", path, exc_info=True)
            self._status(f"Couldn't add to the library: {exc}")
            return
        finally:
            self._update_star()
        if self._closed:
            return
        self._known[path] = favorite.id
        self.view.refresh()
        self.view.select(favorite.id)
        self._status("Added to the library (Ctrl+L shows it)" if added else "Already in the library")
        self._update_tab_title()
        self._update_star()
        self.favoriteAdded.emit(favorite.id, added)

    def _favorites_changed(self) -> None:  # a removal in the view: forget what we knew
        self._known = {p: i for p, i in self._known.items() if self.library.get(i) is not None}
        self._update_star()
        self._update_tab_title()

    def _update_star(self) -> None:
        canvas = self.window.canvas
        path = canvas.path if not canvas.is_preview() else None
        starred = path is not None and path in self._known
        if path is not None and not starred and path not in self._checked and self.library is not None:
            self._checked.add(path)  # is it a favorite from an earlier session? (asked once per image)
            self.window.tasks.spawn(self._check(path))
        self.star_button.setText(STAR_ON if starred else STAR_OFF)
        self.star_button.setProperty("starred", starred)
        self.star_button.style().unpolish(self.star_button)
        self.star_button.style().polish(self.star_button)
        self.star_button.setEnabled(self.library is not None and path is not None)

    async def _check(self, path: str) -> None:
        try:
            favorite = await asyncio.wrap_future(self._executor.submit(find_favorite, self.library, path),
                                                 loop=self.window.tasks.loop)
        except Exception:  # only the star's look depends on it
            log.debug("could not look %s up in the library", path, exc_info=True)
            return
        if favorite is not None and not self._closed:
            self._known[path] = favorite.id
            self._update_star()

    # ------------------------------------------------------------ routing the window's shortcuts
    def restore_selected(self) -> bool:
        """Ctrl+R with the Library focused: restore the selected favorite. False if the Library isn't focused."""
        if not self.has_focus():
            return False
        self.view.restore_selected()
        return True

    def init_image_selected(self) -> bool:
        if not self.has_focus():
            return False
        self.view.init_image_selected()
        return True

    # ------------------------------------------------------------ history strip
    def install_history_menu(self, strip) -> None:
        """A context menu on the history strip's thumbnails: favorite, init image, restore, folder."""
        strip.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        strip.customContextMenuRequested.connect(self._history_menu)
        self._strip = strip

    def _history_menu(self, pos: QPoint) -> None:
        item = self._strip.itemAt(pos)
        if item is None:
            return
        menu = self.history_menu(item.data(Qt.ItemDataRole.UserRole), self._strip)
        menu.exec(self._strip.viewport().mapToGlobal(pos))

    def history_menu(self, path: str, parent: QWidget) -> QMenu:
        """The actions for one history image (built per click; also used by tests)."""
        menu = QMenu(parent)
        entries = [("Show", "historyShowAction", lambda: self.window.show_history_image(path)),
                   ("Add to Favorites", "historyFavoriteAction", lambda: self.add_path(path)),
                   ("Use as Init Image", "historyInitAction", lambda: self.window.use_as_init_image(path)),
                   ("Restore Parameters", "historyRestoreAction", lambda: self.window.restore_from_file(path)),
                   ("Open Containing Folder", "historyFolderAction",
                    lambda: QDesktopServices.openUrl(QUrl.fromLocalFile(str(Path(path).parent))))]
        for text, name, slot in entries:
            action = QAction(text, menu)
            action.setObjectName(name)
            action.triggered.connect(slot)
            menu.addAction(action)
        return menu

    # ------------------------------------------------------------ status and closing
    def _status(self, message: str) -> None:
        self.window.statusBar().showMessage(message, 6000)

    def close(self) -> None:
        """Finish pending adds and thumbnail loads, then close the database. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._executor.shutdown(wait=True)
        if self.view is not None:
            self.view.wait_for_thumbnails(5000)
        if self.library is not None:
            self.library.close()
