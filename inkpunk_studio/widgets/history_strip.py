"""The history strip: one row of thumbnails of saved images, newest first (objectName historyList)."""

from __future__ import annotations

from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QColor, QIcon, QImage, QPixmap
from PySide6.QtWidgets import QAbstractItemView, QListView, QListWidget, QListWidgetItem, QWidget

from .theme import picture_icon

PATH_ROLE = Qt.ItemDataRole.UserRole


class HistoryStrip(QListWidget):
    """Thumbnails in icon mode. ``imageSelected(path)`` when one is clicked or chosen with the keyboard
    (possibly twice for one click: receivers ignore a path they already show)."""

    imageSelected = Signal(str)

    def __init__(self, thumb_size: int = 112, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("historyList")
        self.setViewMode(QListView.ViewMode.IconMode)
        self.setFlow(QListView.Flow.LeftToRight)
        self.setWrapping(False)
        self.setMovement(QListView.Movement.Static)
        self.setResizeMode(QListView.ResizeMode.Adjust)
        self.setSelectionMode(QAbstractItemView.SelectionMode.SingleSelection)
        self.setHorizontalScrollMode(QAbstractItemView.ScrollMode.ScrollPerPixel)
        self.setVerticalScrollBarPolicy(Qt.ScrollBarPolicy.ScrollBarAlwaysOff)
        self.setIconSize(QSize(thumb_size, thumb_size))
        self.setSpacing(4)
        self.setUniformItemSizes(True)
        self.setFixedHeight(thumb_size + 34)
        self._items: dict[str, QListWidgetItem] = {}
        placeholder = QPixmap(thumb_size, thumb_size)
        placeholder.fill(QColor("#242033"))
        self._placeholder = QIcon(placeholder)
        self.currentItemChanged.connect(self._current_changed)
        self.itemClicked.connect(self._item_clicked)

    def add_path(self, path: str, at_top: bool = True) -> QListWidgetItem:
        """Add an entry (placeholder icon until :meth:`set_thumbnail`); an existing path is moved, not doubled."""
        path = str(path)
        if path in self._items:
            item = self.takeItem(self.row(self._items[path]))
        else:
            item = QListWidgetItem(self._placeholder, "")
            item.setData(PATH_ROLE, path)
            item.setToolTip(Path(path).name)
            item.setSizeHint(QSize(self.iconSize().width() + 8, self.iconSize().height() + 8))
            self._items[path] = item
        if at_top:
            self.insertItem(0, item)
        else:
            self.addItem(item)
        return item

    def set_thumbnail(self, path: str, image: QImage) -> None:
        item = self._items.get(str(path))
        if item is not None and not image.isNull():
            pixmap = QPixmap.fromImage(image).scaled(self.iconSize(), Qt.AspectRatioMode.KeepAspectRatio,
                                                     Qt.TransformationMode.SmoothTransformation)
            item.setIcon(picture_icon(pixmap))

    def clear_all(self) -> None:
        self.clear()
        self._items.clear()

    def remove_path(self, path: str) -> None:
        item = self._items.pop(str(path), None)
        if item is not None:
            self.takeItem(self.row(item))

    def paths(self) -> list[str]:
        return [self.item(i).data(PATH_ROLE) for i in range(self.count())]

    def select_path(self, path: str) -> None:
        item = self._items.get(str(path))
        if item is not None:
            self.setCurrentItem(item)

    def current_path(self) -> str | None:
        item = self.currentItem()
        return item.data(PATH_ROLE) if item is not None else None

    def _current_changed(self, current: QListWidgetItem | None, _previous: QListWidgetItem | None) -> None:
        if current is not None:
            self.imageSelected.emit(current.data(PATH_ROLE))

    def _item_clicked(self, item: QListWidgetItem) -> None:
        # also after currentItemChanged: the receiver ignores a path it already shows, and clicking the
        # current item again brings it back after a generation replaced it on the canvas
        self.imageSelected.emit(item.data(PATH_ROLE))
