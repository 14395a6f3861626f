"""The Networks panel: the LoRAs (`loraList`) and embeddings (`embeddingList`) in the model folders, searchable,
with the preview image that lies beside a file. A click asks for `<lora:name:1>` (or the embedding's word) to be
inserted at the prompt's cursor: the panel emits `insertRequested(text)`; the window does the insert.

The scan runs in the I/O pool (a models folder on a network drive must not freeze the window); previews are
scaled there too and become icons on the GUI thread.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

from PySide6.QtCore import QSize, Qt, Signal
from PySide6.QtGui import QImage, QPixmap
from PySide6.QtWidgets import (
    QHBoxLayout,
    QLabel,
    QLineEdit,
    QListWidget,
    QListWidgetItem,
    QPushButton,
    QTabWidget,
    QVBoxLayout,
    QWidget,
)

from ..networks import ModelFolders, NetworkFile
from .theme import picture_icon

log = logging.getLogger(__name__)

ICON = 64


def tag_for(file: NetworkFile) -> str:
    """What a click inserts: `<lora:name:1>` for a LoRA, the word for an embedding."""
    return f"<lora:{file.name}:1>" if file.kind == "lora" else file.name


def _scaled_preview(path: Path | None) -> QImage | None:
    """The preview image scaled to an icon (I/O pool; QImage is safe off the GUI thread)."""
    if path is None:
        return None
    image = QImage(str(path))
    if image.isNull():
        return None
    return image.scaled(ICON, ICON, Qt.AspectRatioMode.KeepAspectRatio, Qt.TransformationMode.SmoothTransformation)


def scan_with_previews(folders: ModelFolders) -> dict[str, list[tuple[NetworkFile, QImage | None]]]:
    """Both lists with their preview icons (blocking: run it in the I/O pool)."""
    return {kind: [(f, _scaled_preview(f.preview)) for f in folders.scan(kind)] for kind in ("lora", "embedding")}


class NetworksPanel(QWidget):
    insertRequested = Signal(str)
    refreshed = Signal()  # the lists were filled from a scan

    def __init__(self, tasks, folders: Callable[[], ModelFolders], parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("networksPanel")
        self._tasks = tasks
        self._folders = folders
        self._serial = 0
        self.search_edit = QLineEdit(self)
        self.search_edit.setObjectName("networkSearch")
        self.search_edit.setPlaceholderText("Search LoRAs and embeddings")
        self.search_edit.setClearButtonEnabled(True)
        self.search_edit.textChanged.connect(self._filter)
        refresh = QPushButton("Refresh", self)
        refresh.setObjectName("networksRefresh")
        refresh.clicked.connect(self.refresh)
        self.lora_list = self._list("loraList")
        self.embedding_list = self._list("embeddingList")
        self.tabs = QTabWidget(self)
        self.tabs.addTab(self.lora_list, "LoRA")
        self.tabs.addTab(self.embedding_list, "Embeddings")
        self.empty_label = QLabel("", self)
        self.empty_label.setProperty("role", "hint")
        self.empty_label.setWordWrap(True)
        top = QHBoxLayout()
        top.addWidget(self.search_edit, 1)
        top.addWidget(refresh)
        layout = QVBoxLayout(self)
        layout.addLayout(top)
        layout.addWidget(self.tabs, 1)
        layout.addWidget(self.empty_label)

    def _list(self, name: str) -> QListWidget:
        widget = QListWidget(self)
        widget.setObjectName(name)
        widget.setIconSize(QSize(ICON, ICON))
        widget.setUniformItemSizes(True)
        widget.itemClicked.connect(self._clicked)
        return widget

    def refresh(self) -> None:
        """Rescan the folders in the background; the latest scan wins."""
        self._serial += 1
        self._tasks.spawn(self._refresh(self._serial))

    async def _refresh(self, serial: int) -> None:
        folders = self._folders()
        try:
            found = await self._tasks.run(scan_with_previews, folders)
        except OSError as exc:
            log.warning("scanning the model folders failed: %s", exc)
            found = {"lora": [], "embedding": []}
        if serial != self._serial:
            return
        self.set_files(found)
        self.refreshed.emit()

    def set_files(self, found: dict[str, list[tuple[NetworkFile, QImage | None]]]) -> None:
        for widget, kind in ((self.lora_list, "lora"), (self.embedding_list, "embedding")):
            widget.clear()
            for file, preview in found.get(kind, []):
                item = QListWidgetItem(file.name)
                item.setData(Qt.ItemDataRole.UserRole, tag_for(file))
                item.setToolTip(str(file.path))
                if preview is not None:
                    item.setIcon(picture_icon(QPixmap.fromImage(preview)))
                widget.addItem(item)
        if not found.get("lora") and not found.get("embedding"):
            self.empty_label.setText("No LoRAs or embeddings yet: put them in models/Lora and models/embeddings "
                                     "of the data folder, or add a models folder in Settings.")
        else:
            self.empty_label.setText("")
        self._filter(self.search_edit.text())

    def lora_names(self) -> list[str]:
        return [self.lora_list.item(row).text() for row in range(self.lora_list.count())]

    def _filter(self, text: str) -> None:
        needle = text.strip().lower()
        for widget in (self.lora_list, self.embedding_list):
            for row in range(widget.count()):
                item = widget.item(row)
                item.setHidden(bool(needle) and needle not in item.text().lower())

    def _clicked(self, item: QListWidgetItem) -> None:
        self.insertRequested.emit(item.data(Qt.ItemDataRole.UserRole))
