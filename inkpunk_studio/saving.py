"""Images that could not be saved: kept in memory until written somewhere else (issue 11).

When the output folder stops taking files mid-run (read-only, full, replaced by a file), the worker hands the
finished image over as PNG bytes, metadata included (``imageUnsaved``), instead of losing it.
:class:`UnsavedImages` keeps them, numbered, asks where to write one ("Save As…") or all of them, and writes
them off the GUI thread; the window shows the image and the messages.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QObject, Qt, Signal
from PySide6.QtWidgets import QFileDialog, QMessageBox, QWidget

from .fileio import atomic_write_bytes, describe_write_error

log = logging.getLogger(__name__)


class UnsavedImages(QObject):
    """The unsaved images of this session, by key (``add`` returns it).

    ``changed(count)`` after every add or save; ``saved(key, path, info)`` when one is written (``info``: the
    dict it was kept as);
    ``saveFailed(key, message)`` when writing it elsewhere failed too (it stays kept).
    """

    changed = Signal(int)
    saved = Signal(int, str, dict)
    saveFailed = Signal(int, str)

    def __init__(self, tasks, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._tasks = tasks
        self._window = parent  # the parent of the file dialogs
        self.close_box: QMessageBox | None = None
        self._items: dict[int, dict] = {}
        self._next = 1

    def __len__(self) -> int:
        return len(self._items)

    def keys(self) -> list[int]:
        return list(self._items)

    def get(self, key: int) -> dict | None:
        return self._items.get(key)

    def add(self, info: dict) -> int:
        """Keep an ``imageUnsaved`` dict (it must carry "png" and "name"); returns its key."""
        if not isinstance(info.get("png"), bytes) or not info.get("name"):
            raise ValueError("an unsaved image needs its PNG bytes and a file name")
        key = self._next
        self._next += 1
        self._items[key] = info
        self.changed.emit(len(self._items))
        return key

    def confirm_close(self, close: Callable[[], object]) -> bool:
        """True when nothing is kept. Otherwise ask (a window-modal box, ``close_box``) and return False:
        "Close Anyway" forgets the images and calls ``close``; "Save All…" saves them first (then ``close``
        if all were written); Cancel keeps the window open."""
        if not self._items:
            return True
        if self.close_box is not None:
            return False
        count = len(self._items)
        box = QMessageBox(QMessageBox.Icon.Warning, "Unsaved images",
                          f"{count} image{'s' * (count != 1)} could not be saved to the output folder and "
                          f"{'are' if count != 1 else 'is'} only in memory. Save before closing?",
                          QMessageBox.StandardButton.Cancel, self._window)
        box.setObjectName("unsavedCloseBox")
        save = box.addButton("Save All…", QMessageBox.ButtonRole.AcceptRole)
        discard = box.addButton("Close Anyway", QMessageBox.ButtonRole.DestructiveRole)
        discard.setObjectName("closeAnywayButton")
        save.clicked.connect(lambda: self._save_then(close))
        discard.clicked.connect(lambda: self._forget_all_then(close))
        box.setAttribute(Qt.WidgetAttribute.WA_DeleteOnClose)
        box.finished.connect(self._close_box_closed)
        self.close_box = box
        box.open()
        return False

    def _close_box_closed(self) -> None:
        self.close_box = None

    def _forget_all_then(self, close: Callable[[], object]) -> None:
        log.warning("closing with %d unsaved image(s) discarded", len(self._items))
        self._items.clear()
        self.changed.emit(0)
        close()

    def _save_then(self, close: Callable[[], object]) -> None:
        folder = QFileDialog.getExistingDirectory(self._window, "Save the unsaved images into", str(Path.home()))
        if folder:
            self._tasks.spawn(self._save_all_then(folder, close))

    async def _save_all_then(self, folder: str, close: Callable[[], object]) -> None:
        await self.save_all(folder)
        if not self._items:
            close()

    # --- asking where (file dialogs), then writing in the background
    def save_as(self, key: int) -> None:
        """Ask where to write image ``key`` (a PNG with its parameters), then write it."""
        info = self._items.get(key)
        if info is None:
            return
        dest, _ = QFileDialog.getSaveFileName(self._window, "Save the image", str(Path.home() / info["name"]),
                                              "PNG image (*.png)")
        if dest:
            self.save_to(key, dest)

    def save_all_as(self) -> None:
        """Ask for a folder and write every kept image into it."""
        if self._items:
            folder = QFileDialog.getExistingDirectory(self._window, "Save the unsaved images into", str(Path.home()))
            if folder:
                self._tasks.spawn(self.save_all(folder))

    def save_to(self, key: int, dest: str | Path) -> None:
        """Write image ``key`` to ``dest`` in the background (".png" added when missing); see ``saved``."""
        dest = Path(dest)
        if dest.suffix.lower() != ".png":
            dest = dest.with_name(dest.name + ".png")
        self._tasks.spawn(self.save(key, dest))

    async def save(self, key: int, dest: str | Path) -> Path | None:
        """Write image ``key`` to ``dest`` (atomically); forget it on success. None if it failed (said so)."""
        info = self._items.get(key)
        if info is None:
            return None
        dest = Path(dest)
        try:
            await self._tasks.run(atomic_write_bytes, dest, info["png"])
        except OSError as exc:
            log.warning("could not save %s: %s", dest, exc)
            self.saveFailed.emit(key, describe_write_error(exc, dest.parent))
            return None
        self._items.pop(key, None)
        self.saved.emit(key, str(dest), info)
        self.changed.emit(len(self._items))
        return dest

    async def save_all(self, folder: str | Path) -> list[Path]:
        """Write every kept image into ``folder`` under its own name (a free variant if taken)."""
        folder = Path(folder)
        written = []
        for key in self.keys():
            info = self._items[key]
            dest = _free_name(folder, info["name"])
            path = await self.save(key, dest)
            if path is None:
                break  # the folder fails: the rest would too (one message is enough)
            written.append(path)
        return written


def _free_name(folder: Path, name: str) -> Path:
    path = folder / name
    stem, suffix = path.stem, path.suffix
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}{suffix}"
        n += 1
    return path
