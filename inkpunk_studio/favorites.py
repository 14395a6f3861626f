"""Favorites in the window: the star button, the Library tab and the history strip's context menu.

:class:`FavoritesController` owns the :class:`~inkpunk_studio.library.Library` (``<data dir>/library``), the
:class:`~inkpunk_studio.widgets.library_view.LibraryView` (a tab beside the canvas, toggled with Ctrl+L), and
the star button (objectName ``favoriteButton``) in the canvas toolbar. Adding runs on one library thread of its own (PNG
encoding and an fsync'd commit stay off the GUI thread, and writes are serialised); the view loads its
thumbnails on its own pool. ``close()`` waits for both and closes the database.

The library opens on that thread too, so the window appears at once even while another program holds the
database's write lock: the Library page says the library is busy and opening is retried until the lock goes.
A damaged or read-only database is reported on the page and in the status bar, with a button that sets the
database file aside (renamed, never deleted) and rebuilds the index from the image files.

The window's Ctrl+R (restore) and Ctrl+I (use as init image) act on the selected favorite while the Library
has the keyboard focus, so the view's own copies of those shortcuts are removed (two actions with one
shortcut would make Qt ignore both).

This module doesn't import the main window: the window creates the controller and hands itself over as a
:class:`FavoritesHost` (the few members used here), so the dependency runs one way.
"""

from __future__ import annotations

import asyncio
import logging
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Protocol

from PySide6.QtCore import QObject, QPoint, Qt, QTimer, QUrl, Signal
from PySide6.QtGui import QAction, QDesktopServices, QKeySequence
from PySide6.QtWidgets import (
    QApplication,
    QLabel,
    QMenu,
    QPushButton,
    QStackedWidget,
    QStatusBar,
    QTabWidget,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

from .imageload import ImageLoadError
from .library import (
    Favorite,
    Library,
    LibraryBusyError,
    LibraryDamagedError,
    LibraryError,
    LibraryReadOnlyError,
    set_aside_database,
)
from .widgets.library_view import BackgroundTasks, LibraryView

log = logging.getLogger(__name__)

STAR_OFF, STAR_ON = "☆  Favorite", "★  Favorite"


def library_dir(data_dir: Path) -> Path:
    """Where the favorites library lives inside a data folder."""
    return Path(data_dir) / "library"


OPEN_RETRY_FIRST_S, OPEN_RETRY_MAX_S = 0.5, 5.0  # retrying a busy library: doubling waits up to the max


def add_unless_present(library: Library, path: str) -> tuple[Favorite, bool]:
    """Add the image file ``path`` to the library unless a favorite showing the same image is there.

    Duplicates are found by image content (two different images with equal parameters are two favorites).
    Returns ``(favorite, added)``. Blocking: runs on the library thread.
    """
    return library.add_unique(path)


def find_favorite(library: Library, path: str) -> Favorite | None:
    """The favorite showing the same image as the file ``path``, or None."""
    return library.find_image(path)


class FavoritesHost(Protocol):
    """What the controller uses of the main window (which creates it and passes itself)."""

    canvas: Any  # the Canvas: path, is_preview(), imageChanged
    canvas_panel: QWidget
    prompt_panel: Any  # has prompt_edit
    tasks: BackgroundTasks

    def statusBar(self) -> QStatusBar: ...

    def apply_image_params(self, params: Any) -> Any: ...

    def use_as_init_image(self, path: str) -> Any: ...

    def show_history_image(self, path: str) -> Any: ...

    def restore_from_file(self, path: str) -> Any: ...


class FavoritesController(QObject):
    """Wires the library, its view and the window together.

    ``library``/``view`` are None until the library has opened (in the background) and while it can't be;
    ``state`` says why: "opening", "busy" (retrying), "ready", "damaged", "failed" or "closed".
    """

    favoriteAdded = Signal(int, bool)  # favorite id, newly added (False: it was already there)
    libraryReady = Signal()  # the library opened (or was rebuilt) and the view shows it
    libraryUnavailable = Signal(str)  # the library can't be used: what is wrong, for the user

    def __init__(self, window: FavoritesHost, folder: Path) -> None:
        super().__init__(window)  # type: ignore[arg-type]  (the window is a QObject)
        self.window = window
        self.folder = Path(folder)
        self.library: Library | None = None
        self.view: LibraryView | None = None
        self.state = "opening"
        self.error = ""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="inkpunk-library")
        self._known: dict[str, int] = {}  # image path -> favorite id, for the star's state
        self._checked: set[str] = set()  # image paths already looked up in the library
        self._closed = False
        self._opened_in_thread: Library | None = None  # opened, not yet handed to the GUI thread

        self.page = QStackedWidget()
        self.page.setObjectName("libraryPage")
        self._message_page = QWidget()
        self.status_label = QLabel("Opening the library…")
        self.status_label.setObjectName("libraryStatusLabel")
        self.status_label.setAlignment(Qt.AlignmentFlag.AlignCenter)
        self.status_label.setWordWrap(True)
        self.rebuild_button = QPushButton("Set the database aside and rebuild from the image files")
        self.rebuild_button.setObjectName("libraryRebuildButton")
        self.rebuild_button.setToolTip("The damaged database is renamed, not deleted; every image in the "
                                       "library folder becomes a favorite again")
        self.rebuild_button.clicked.connect(self.rebuild)
        self.rebuild_button.hide()
        box = QVBoxLayout(self._message_page)
        box.addStretch(1)
        box.addWidget(self.status_label)
        box.addWidget(self.rebuild_button, 0, Qt.AlignmentFlag.AlignHCenter)
        box.addStretch(1)
        self.page.addWidget(self._message_page)

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
        self._open_task = window.tasks.spawn(self._open())

    # ------------------------------------------------------------ opening, in the background
    def _open_library(self, rebuild: bool = False) -> tuple[Library, Path | None]:
        """On the library thread: (set a damaged database aside and) open the library."""
        if self._closed:
            raise LibraryError("The library is closed")
        aside = set_aside_database(self.folder) if rebuild else None
        library = Library(self.folder)
        self._opened_in_thread = library
        if self._closed:  # close() ran meanwhile and may not have seen it
            self._opened_in_thread = None
            library.close()
            raise LibraryError("The library is closed")
        return library, aside

    async def _open(self, rebuild: bool = False) -> None:
        delay = OPEN_RETRY_FIRST_S
        set_aside = rebuild  # only once: a retry must not set a freshly built database aside again
        while not self._closed:
            try:
                future = self._executor.submit(self._open_library, set_aside)
                set_aside = False
                library, aside = await asyncio.wrap_future(future, loop=self.window.tasks.loop)
            except LibraryBusyError as exc:  # another program holds the write lock: try again soon
                log.info("library busy, retrying in %.1f s", delay)
                self._set_unavailable("busy", f"{exc}\nThe library opens by itself once it is free.")
                await self._sleep(delay)
                delay = min(delay * 2, OPEN_RETRY_MAX_S)
                continue
            except RuntimeError:  # the executor was shut down: the window is closing
                return
            except Exception as exc:  # damaged, read-only, an unusable folder: say so, offer the rebuild
                if self._closed:
                    return
                log.warning("could not open the library in %s", self.folder, exc_info=True)
                damaged = isinstance(exc, (LibraryDamagedError, LibraryReadOnlyError))
                self._set_unavailable("damaged" if damaged else "failed",
                                      f"The library is off: {exc}", offer_rebuild=damaged)
                return
            if self._closed:
                return
            self._attach(library)
            if rebuild:
                kept = f"; the old database was kept as {aside.name}" if aside is not None else ""
                self._status(f"Library rebuilt from its images: {library.count()} favorites{kept}")
            return

    async def _sleep(self, seconds: float) -> None:
        """Wait on a Qt timer: the app's loop may be qasync's fallback, which isn't "running" for asyncio.sleep
        (see worker.app_loop)."""
        done = self.window.tasks.loop.create_future()
        QTimer.singleShot(int(seconds * 1000), self, lambda: done.done() or done.set_result(None))
        await done

    def _set_unavailable(self, state: str, message: str, offer_rebuild: bool = False) -> None:
        first = self.state != state or self.error != message
        self.state, self.error = state, message
        self.status_label.setText(message)
        self.rebuild_button.setVisible(offer_rebuild)
        self.rebuild_button.setEnabled(offer_rebuild)
        self.page.setCurrentWidget(self._message_page)
        self._update_tab_title()
        self._update_star()
        if first:
            self._status(message.splitlines()[0])
            self.libraryUnavailable.emit(message)

    def _attach(self, library: Library) -> None:
        self._opened_in_thread = None
        self.library, self.state, self.error = library, "ready", ""
        self.view = LibraryView(library, self.window.tasks)
        self.view.statusMessage.connect(self._status)
        self.view.showRequested.connect(self._show)
        self.view.restoreRequested.connect(self.window.apply_image_params)
        self.view.initImageRequested.connect(self.window.use_as_init_image)
        self.view.favoritesChanged.connect(self._favorites_changed)
        for action in (self.view.restoreAction, self.view.initImageAction):
            action.setShortcut(QKeySequence())  # the window's Ctrl+R / Ctrl+I route here (see above)
        self.page.addWidget(self.view)
        self.page.setCurrentWidget(self.view)
        self._checked.clear()  # look the image on show up again
        self._update_tab_title()
        self._update_star()
        self.libraryReady.emit()

    def rebuild(self) -> asyncio.Task | None:
        """Set the damaged (or read-only) database aside and build a new index from the image files."""
        if self._closed or self.state not in ("damaged", "failed"):
            return None
        self.rebuild_button.setEnabled(False)
        self.state = "opening"
        self.status_label.setText("Rebuilding the library from its image files…")
        return self.window.tasks.spawn(self._open(rebuild=True))

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
        index = self.tabs.indexOf(self.page)
        if self.state in ("damaged", "failed"):
            self.tabs.setTabText(index, "Library (off)")
            return
        try:
            count = self.library.count() if self.library is not None and not self._closed else 0
        except (LibraryError, ValueError):
            count = 0
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
            self._status("The library is closed" if self._closed else
                         (self.error.splitlines()[0] if self.error else "The library is still opening"))
            return None
        self.star_button.setEnabled(False)
        return self.window.tasks.spawn(self._add(path))

    async def _add(self, path: str) -> None:
        try:
            future = self._executor.submit(add_unless_present, self.library, path)
            favorite, added = await asyncio.wrap_future(future, loop=self.window.tasks.loop)
        except (ImageLoadError, OSError, ValueError, RuntimeError) as exc:  # LibraryError is an OSError
            log.warning("adding %s to the library failed", path, exc_info=True)
            if not self._closed:
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
        try:
            self._known = {p: i for p, i in self._known.items() if self.library.get(i) is not None}
        except (LibraryError, ValueError):
            self._known.clear()
        self._update_star()
        self._update_tab_title()

    def _update_star(self) -> None:
        if self._closed:  # a task finishing during close: the widgets may be going away
            return
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
        # enabled while the library is busy or off too: a click then says why nothing was added
        self.star_button.setEnabled(path is not None and not self._closed)

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
        if not self._closed:
            self.window.statusBar().showMessage(message, 6000)

    def close(self) -> None:
        """Finish pending adds and thumbnail loads, then close the database. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._open_task.cancel()
        # an add in flight waits at most the library's short busy timeout (then deletes its file)
        self._executor.shutdown(wait=True, cancel_futures=True)
        if self.view is not None:
            self.view.wait_for_thumbnails(5000)
        for library in (self.library, self._opened_in_thread):
            if library is not None:
                library.close()
        self.state = "closed"
