"""The Library view (objectName ``libraryView``): favorites as a searchable thumbnail grid with actions.

It talks to a :class:`~inkpunk_studio.library.Library` and emits plain data; the main window decides what
"show", "restore" and "use as init image" mean. The star button (objectName ``favoriteButton``, Ctrl+D) belongs
to :class:`~inkpunk_studio.favorites.FavoritesController`, which adds on its own thread and then refreshes this
grid; :meth:`LibraryView.add_favorite` is a blocking helper for scripts and tests.

Thumbnails are stored in the database as small PNGs; they are fetched and decoded on a one-thread pool of
the view's own (one thread, so one extra SQLite connection) and arrive in the grid as they are ready.
Removing and exporting run on the app's :class:`~inkpunk_studio.worker.AsyncTasks` (given to the view): a
locked database or a 2048x2048 PNG encode never blocks the GUI thread.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

from PIL import Image
from PySide6.QtCore import QObject, QPoint, QRunnable, QSize, Qt, QThreadPool, QTimer, QUrl, Signal, Slot
from PySide6.QtGui import QAction, QColor, QDesktopServices, QIcon, QImage, QKeySequence, QPixmap
from PySide6.QtWidgets import (
    QAbstractItemView,
    QApplication,
    QComboBox,
    QFileDialog,
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListView,
    QListWidget,
    QListWidgetItem,
    QMenu,
    QMessageBox,
    QPushButton,
    QVBoxLayout,
    QWidget,
)

from ..imageload import ImageLoadError
from ..library import Favorite, Library
from ..metadata import ImageParams, export_image
from .theme import picture_icon

log = logging.getLogger(__name__)

T = TypeVar("T")


class BackgroundTasks(Protocol):
    """What the view needs from :class:`~inkpunk_studio.worker.AsyncTasks` (kept structural so the widgets
    don't import the worker module)."""

    def spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]: ...

    def run(self, fn: Callable[..., T], *args: Any) -> Awaitable[T]: ...


ID_ROLE = Qt.ItemDataRole.UserRole
THUMB_SIZE = 144
_EXPORT_FILTERS = {"PNG image (*.png)": "png", "JPEG image (*.jpg *.jpeg)": "jpeg", "WebP image (*.webp)": "webp"}


class _ThumbnailSignals(QObject):
    # (refresh generation, favorite id, decoded image); a QObject without parent living in the GUI thread
    loaded = Signal(int, int, QImage)


class _ThumbnailJob(QRunnable):
    """Fetch and decode the thumbnails of ``ids`` in order, giving up when a newer refresh started."""

    def __init__(self, library: Library, ids: list[int], generation: int, view: LibraryView) -> None:
        super().__init__()
        self._library, self._ids, self._generation = library, ids, generation
        self._signals = view._thumb_signals
        self._current = view._current_generation

    def run(self) -> None:
        for fav_id in self._ids:
            if self._current() != self._generation:
                return
            try:
                data = self._library.thumbnail(fav_id)
            except Exception:  # a closed library or a locked database: no thumbnails, no crash
                log.warning("could not load library thumbnails", exc_info=True)
                return
            image = QImage.fromData(data) if data else QImage()
            if not image.isNull():
                self._signals.loaded.emit(self._generation, fav_id, image)


class LibraryView(QWidget):
    """Favorites grid with search, sort and actions. Emits requests; never touches other widgets."""

    showRequested = Signal(str)  # image file path
    restoreRequested = Signal(object)  # ImageParams
    initImageRequested = Signal(str)  # image file path
    statusMessage = Signal(str)  # something for the status bar
    favoritesChanged = Signal()  # after an add or a remove

    def __init__(self, library: Library, tasks: BackgroundTasks, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("libraryView")
        self.library = library
        self.tasks = tasks
        self.confirm_remove = True  # ask before deleting a favorite's file
        self._generation = 0
        self._favorites: dict[int, Favorite] = {}
        self._items: dict[int, QListWidgetItem] = {}
        self._thumb_signals = _ThumbnailSignals()
        self._thumb_signals.loaded.connect(self._thumbnail_loaded)
        self._pool = QThreadPool(self)
        self._pool.setMaxThreadCount(1)
        self._pool.setExpiryTimeout(-1)  # keep the thread (and its SQLite connection) for the view's life
        self._build_ui()
        self.refresh()

    # ------------------------------------------------------------ layout

    def _build_ui(self) -> None:
        self.searchEdit = QLineEdit(objectName="librarySearch", placeholderText="Search prompts…")
        self.searchEdit.setClearButtonEnabled(True)
        self.sortCombo = QComboBox(objectName="librarySort")
        self.sortCombo.addItem("Newest first", "newest")
        self.sortCombo.addItem("Oldest first", "oldest")
        self.countLabel = QLabel(objectName="libraryCount")
        self._search_timer = QTimer(self, singleShot=True, interval=200)
        self._search_timer.timeout.connect(self.refresh)
        self.searchEdit.textChanged.connect(self._search_timer.start)
        self.sortCombo.currentIndexChanged.connect(self.refresh)

        self.listWidget = QListWidget(objectName="libraryList")
        self.listWidget.setViewMode(QListView.ViewMode.IconMode)
        self.listWidget.setMovement(QListView.Movement.Static)
        self.listWidget.setResizeMode(QListView.ResizeMode.Adjust)
        self.listWidget.setWrapping(True)
        self.listWidget.setUniformItemSizes(True)
        self.listWidget.setIconSize(QSize(THUMB_SIZE, THUMB_SIZE))
        self.listWidget.setGridSize(QSize(THUMB_SIZE + 16, THUMB_SIZE + 36))
        self.listWidget.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.listWidget.setVerticalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.listWidget.setContextMenuPolicy(Qt.ContextMenuPolicy.CustomContextMenu)
        self.listWidget.customContextMenuRequested.connect(self._context_menu)
        self.listWidget.itemDoubleClicked.connect(lambda _item: self.show_selected())
        self.listWidget.currentItemChanged.connect(lambda *_: self._update_actions())
        placeholder = QPixmap(THUMB_SIZE, THUMB_SIZE)
        placeholder.fill(QColor("#242033"))
        self._placeholder = QIcon(placeholder)
        missing = QPixmap(THUMB_SIZE, THUMB_SIZE)
        missing.fill(QColor("#3a1f2a"))
        self._missing_icon = QIcon(missing)

        specs = [  # (attribute/objectName, text, slot, shortcut, needs the file)
            ("showAction", "Show", self.show_selected, "Return", True),
            ("restoreAction", "Restore parameters", self.restore_selected, "Ctrl+R", False),
            ("initImageAction", "Use as init image", self.init_image_selected, "Ctrl+I", True),
            ("copyAction", "Copy image", self.copy_selected, QKeySequence.StandardKey.Copy, True),
            ("openFolderAction", "Open containing folder", self.open_folder_selected, None, False),
            ("exportAction", "Export…", self.export_selected, "Ctrl+E", True),
            ("removeAction", "Remove from library", self.remove_selected, QKeySequence.StandardKey.Delete, False),
        ]
        self._needs_file: list[QAction] = []
        buttons = QHBoxLayout()
        for name, text, slot, shortcut, needs_file in specs:
            action = QAction(text, self, objectName=name)
            if shortcut is not None:
                action.setShortcut(QKeySequence(shortcut))
                action.setShortcutContext(Qt.ShortcutContext.WidgetWithChildrenShortcut)
            action.triggered.connect(slot)
            self.addAction(action)
            setattr(self, name, action)
            if needs_file:
                self._needs_file.append(action)
            button = QPushButton(text, objectName=name.replace("Action", "Button"))
            button.clicked.connect(action.trigger)
            action.changed.connect(lambda b=button, a=action: b.setEnabled(a.isEnabled()))
            buttons.addWidget(button)
        buttons.addStretch(1)

        top = QHBoxLayout()
        top.addWidget(self.searchEdit, 1)
        top.addWidget(self.sortCombo)
        top.addWidget(self.countLabel)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(4, 4, 4, 4)
        layout.addLayout(top)
        layout.addWidget(self.listWidget, 1)
        layout.addLayout(buttons)
        self._update_actions()

    # ------------------------------------------------------------ data

    def refresh(self) -> None:
        """Reload the favorites matching the search box, in the chosen order; thumbnails follow lazily."""
        self._search_timer.stop()
        self._generation += 1
        selected = self.selected_id()
        try:
            favorites = self.library.search(self.searchEdit.text(), self.sortCombo.currentData() or "newest")
        except Exception as e:  # a broken or locked database must not take the window down
            log.exception("library search failed")
            self.statusMessage.emit(f"Library unavailable: {e}")
            favorites = []
        self.listWidget.clear()
        self._favorites = {f.id: f for f in favorites}
        self._items = {}
        for fav in favorites:
            item = QListWidgetItem(self._missing_icon if fav.missing else self._placeholder, _label(fav))
            item.setData(ID_ROLE, fav.id)
            item.setToolTip(_tooltip(fav))
            self.listWidget.addItem(item)
            self._items[fav.id] = item
        shown = len(favorites)
        total = self.library.count() if self.searchEdit.text().strip() else shown
        self.countLabel.setText(f"{shown} of {total}" if shown != total else f"{shown} favorites")
        if selected in self._items:
            self.listWidget.setCurrentItem(self._items[selected])
        self._update_actions()
        ids = [f.id for f in favorites]
        if ids:
            self._pool.start(_ThumbnailJob(self.library, ids, self._generation, self))

    def _current_generation(self) -> int:
        return self._generation

    @Slot(int, int, QImage)
    def _thumbnail_loaded(self, generation: int, fav_id: int, image: QImage) -> None:
        item = self._items.get(fav_id)
        if generation != self._generation or item is None:
            return
        fav = self._favorites[fav_id]
        pixmap = QPixmap.fromImage(image).scaled(self.listWidget.iconSize(), Qt.AspectRatioMode.KeepAspectRatio,
                                                 Qt.TransformationMode.SmoothTransformation)
        if fav.missing:  # keep the thumbnail but show that the file is gone
            pixmap = QIcon(pixmap).pixmap(pixmap.size(), QIcon.Mode.Disabled)
        item.setIcon(picture_icon(pixmap))

    def wait_for_thumbnails(self, msecs: int = 5000) -> bool:
        """Block until pending thumbnail loads are done (for tests and shutdown)."""
        return self._pool.waitForDone(msecs)

    def favorites(self) -> list[Favorite]:
        """The favorites shown, in display order."""
        return [self._favorites[self.listWidget.item(i).data(ID_ROLE)] for i in range(self.listWidget.count())]

    def selected_id(self) -> int | None:
        item = self.listWidget.currentItem()
        return item.data(ID_ROLE) if item is not None else None

    def selected_favorite(self) -> Favorite | None:
        fav_id = self.selected_id()
        return self._favorites.get(fav_id) if fav_id is not None else None

    def select(self, fav_id: int) -> bool:
        item = self._items.get(fav_id)
        if item is not None:
            self.listWidget.setCurrentItem(item)
        return item is not None

    def add_favorite(self, image: Image.Image | str | Path, params: ImageParams | None = None) -> Favorite | None:
        """Store ``image`` (a PIL image or a file) as a favorite and show it; ``None`` (and a status message)
        if it couldn't be stored."""
        try:
            fav = self.library.add(image, params)
        except (ImageLoadError, OSError, ValueError) as e:
            log.warning("adding a favorite failed", exc_info=True)
            self.statusMessage.emit(f"Couldn't add to the library: {e}")
            return None
        self.refresh()
        self.select(fav.id)
        self.statusMessage.emit("Added to the library")
        self.favoritesChanged.emit()
        return fav

    # ------------------------------------------------------------ actions

    def _update_actions(self) -> None:
        fav = self.selected_favorite()
        for action in (self.restoreAction, self.openFolderAction, self.removeAction):
            action.setEnabled(fav is not None)
        for action in self._needs_file:
            action.setEnabled(fav is not None and not fav.missing)

    def _context_menu(self, pos: QPoint) -> None:
        item = self.listWidget.itemAt(pos)
        if item is None:
            return
        self.listWidget.setCurrentItem(item)
        menu = QMenu(self)
        for action in (self.showAction, self.restoreAction, self.initImageAction, self.copyAction):
            menu.addAction(action)
        menu.addSeparator()
        menu.addAction(self.openFolderAction)
        menu.addAction(self.exportAction)
        menu.addSeparator()
        menu.addAction(self.removeAction)
        menu.exec(self.listWidget.viewport().mapToGlobal(pos))

    def _selected_with_file(self) -> Favorite | None:
        fav = self.selected_favorite()
        if fav is None:
            return None
        if not fav.path.is_file():
            self.statusMessage.emit(f"The image file is missing: {fav.path}")
            return None
        return fav

    def show_selected(self) -> None:
        fav = self._selected_with_file()
        if fav is not None:
            self.showRequested.emit(str(fav.path))

    def restore_selected(self) -> None:
        fav = self.selected_favorite()
        if fav is not None:
            self.restoreRequested.emit(replace(fav.params, extra=dict(fav.params.extra)))

    def init_image_selected(self) -> None:
        fav = self._selected_with_file()
        if fav is not None:
            self.initImageRequested.emit(str(fav.path))

    def copy_selected(self) -> None:
        fav = self._selected_with_file()
        if fav is None:
            return
        image = QImage(str(fav.path))
        if image.isNull():
            self.statusMessage.emit(f"Couldn't read {fav.path.name}")
            return
        QApplication.clipboard().setImage(image)
        self.statusMessage.emit("Image copied to the clipboard")

    def open_folder_selected(self) -> None:
        fav = self.selected_favorite()
        if fav is not None:
            QDesktopServices.openUrl(QUrl.fromLocalFile(str(fav.path.parent)))

    def remove_selected(self) -> asyncio.Task | None:
        """Remove the selected favorite (after asking) in the background: a locked database costs a status
        message, never a frozen window."""
        fav = self.selected_favorite()
        if fav is None:
            return None
        if self.confirm_remove:
            answer = QMessageBox.question(self, "Remove from library",
                                          "Remove this favorite and delete its image from the library folder?")
            if answer != QMessageBox.StandardButton.Yes:
                return None
        self.removeAction.setEnabled(False)
        self.statusMessage.emit("Removing from the library…")
        return self.tasks.spawn(self._remove(fav))

    async def _remove(self, fav: Favorite) -> None:
        try:
            await self.tasks.run(self.library.remove, fav.id, True)
        except Exception as e:  # database trouble (busy, damaged, closed): say so, keep the view
            log.warning("removing favorite %s failed", fav.id, exc_info=True)
            self.statusMessage.emit(f"Couldn't remove the favorite: {e}")
            self._update_actions()
            return
        self.refresh()
        self.statusMessage.emit("Removed from the library")
        self.favoritesChanged.emit()

    def export_selected(self) -> asyncio.Task | None:
        """Ask for a destination, then export in the background (see :meth:`export_in_background`)."""
        fav = self._selected_with_file()
        if fav is None:
            return None
        start = str(Path.home() / f"{fav.path.stem}.png")
        dest, chosen = QFileDialog.getSaveFileName(self, "Export image", start, ";;".join(_EXPORT_FILTERS))
        if not dest:
            return None
        fmt = None if Path(dest).suffix else _EXPORT_FILTERS.get(chosen, "png")
        if fmt is not None:
            dest = f"{dest}.{'jpg' if fmt == 'jpeg' else fmt}"
        return self.export_in_background(fav.id, dest)

    def export_in_background(self, fav_id: int, dest: str | Path, fmt: str | None = None) -> asyncio.Task | None:
        """Export off the GUI thread (decoding and encoding a 2048x2048 image takes about a second); the
        result arrives as a status message. None if there is no such favorite."""
        fav = self._favorites.get(fav_id) or self.library.get(fav_id)
        if fav is None:
            return None
        self.statusMessage.emit(f"Exporting {fav.path.name}…")
        return self.tasks.spawn(self._export(fav, dest, fmt))

    async def _export(self, fav: Favorite, dest: str | Path, fmt: str | None) -> Path | None:
        try:
            out = await self.tasks.run(export_image, fav.path, dest, fmt)
        except (OSError, ValueError, ImageLoadError) as e:
            self.statusMessage.emit(f"Export failed: {e}")
            return None
        self.statusMessage.emit(f"Exported to {out}")
        return out

    def export_to(self, fav_id: int, dest: str | Path, fmt: str | None = None) -> Path | None:
        """Export a favorite to ``dest`` (format from ``fmt`` or the suffix), keeping its parameters.

        Blocking (for scripts and tests); the Export action uses :meth:`export_in_background`.
        """
        fav = self._favorites.get(fav_id) or self.library.get(fav_id)
        if fav is None:
            return None
        try:
            out = export_image(fav.path, dest, fmt)
        except (OSError, ValueError) as e:
            self.statusMessage.emit(f"Export failed: {e}")
            return None
        self.statusMessage.emit(f"Exported to {out}")
        return out


def _label(fav: Favorite) -> str:
    text = " ".join(fav.params.prompt.split()) or "(no prompt)"
    return text if len(text) <= 22 else text[:21] + "…"


def _tooltip(fav: Favorite) -> str:
    p = fav.params
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(fav.created))
    seed = p.seed if p.seed is not None else "—"
    settings = f"Seed {seed} · {p.steps} steps · CFG {p.cfg_scale:g} · {p.width}×{p.height}"
    lines = [p.prompt or "(no prompt)", "", settings, when]
    if fav.missing:
        lines.append("The image file is missing")
    return "\n".join(lines)
