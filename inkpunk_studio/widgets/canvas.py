"""The canvas: shows the live per-step preview (scaled up smoothly) and then the finished image.

:class:`Canvas` paints and takes drops: an image file, a URL to a local file, or image data dropped on it is
handed on as ``dropped(source, name)`` (the window makes it the init image; loading and checking happen
there, off the GUI thread). :class:`CanvasPanel` puts a toolbar row above it; other features add their
buttons there with :meth:`CanvasPanel.add_tool_widget` (e.g. the favorites star).
"""

from __future__ import annotations

from collections.abc import Callable

from PySide6.QtCore import QMimeData, QRect, QSize, Qt, QUrl, Signal
from PySide6.QtGui import (
    QColor,
    QDragEnterEvent,
    QDragLeaveEvent,
    QDropEvent,
    QImage,
    QPainter,
    QPaintEvent,
    QPen,
    QPixmap,
)
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget

# Raw encoded formats first: their bytes keep the file's metadata (a PNG's parameters chunk).
_RAW_IMAGE_TYPES = ("image/png", "image/webp", "image/jpeg", "image/bmp", "image/gif", "image/tiff")


def drop_source(mime: QMimeData) -> tuple[str | bytes | QImage, str] | None:
    """What a drop offers as an image: ``(local file path | encoded bytes | QImage, display name)``.

    Local files (also given as ``file://`` URLs) come first, then encoded image data, then Qt's decoded
    image. Raises ``ValueError`` (message for the person) for URLs that aren't local files; ``None`` when
    the drop holds nothing image-like at all. Whether the file *is* a usable image is decided when loading.
    """
    if mime.hasUrls():
        urls = [url for url in mime.urls() if url.isValid()]
        local = [url for url in urls if url.isLocalFile()]
        if local:
            return local[0].toLocalFile(), local[0].fileName() or local[0].toLocalFile()
        if urls and not _has_image_data(mime):
            raise ValueError(f"Only files on this computer can be dropped, not {_short_url(urls[0])}.")
    for kind in _RAW_IMAGE_TYPES:
        if mime.hasFormat(kind):
            data = bytes(mime.data(kind).data())
            if data:
                return data, "dropped image"
    if mime.hasImage():
        image = mime.imageData()
        if isinstance(image, QImage) and not image.isNull():
            return image, "dropped image"
        if isinstance(image, QPixmap) and not image.isNull():
            return image.toImage(), "dropped image"
    return None


def _has_image_data(mime: QMimeData) -> bool:
    return mime.hasImage() or any(mime.hasFormat(kind) for kind in _RAW_IMAGE_TYPES)


def _short_url(url: QUrl) -> str:
    text = url.toDisplayString()
    return text if len(text) <= 60 else text[:59] + "…"


class Canvas(QWidget):
    """Paints one image, fitted into the widget with its aspect ratio, smoothly scaled (objectName canvas).

    Accepts drops of image files, local file URLs and image data: ``dropped(source, name)`` with ``source``
    a file path, encoded bytes or a QImage; ``dropRejected(message)`` for drops it can tell are unusable.
    """

    imageChanged = Signal()
    dropped = Signal(object, str)
    dropRejected = Signal(str)

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("canvas")
        self.setSizePolicy(QSizePolicy.Policy.Expanding, QSizePolicy.Policy.Expanding)
        self.setMinimumSize(256, 256)
        self.setAttribute(Qt.WidgetAttribute.WA_OpaquePaintEvent, False)
        self._pixmap: QPixmap | None = None
        self._scaled: QPixmap | None = None  # _pixmap resampled to the painted size (cached per size)
        self._image: QImage | None = None
        self._is_preview = False
        self.path: str | None = None  # file of the image shown, when it is a saved one
        self._before_preview: tuple[QImage, str | None] | None = None  # what previews replaced
        self._placeholder = ("Type a prompt and press Generate (Ctrl+Enter)\n\n"
                             "Drop a picture here to start from it (img2img)")
        self._drag_hover = False
        self.setAcceptDrops(True)
        # drawn over a finished image (not a preview) with the image's rectangle: the mask layer's overlay
        self.overlay: Callable[[QPainter, QRect], None] | None = None

    # --- content
    def set_preview(self, image: QImage) -> None:
        """A live step preview (latent resolution, scaled up when painted)."""
        if not self._is_preview:
            self._before_preview = (self._image, self.path) if self._image is not None else None
        self._set(image, preview=True, path=None)

    def discard_preview(self) -> None:
        """Drop a preview left by a cancelled or failed run: show what was there before it."""
        if not self._is_preview:
            return
        before, self._before_preview = self._before_preview, None
        if before is None:
            self.clear()
        else:
            self._set(before[0], preview=False, path=before[1])

    def set_image(self, image: QImage, path: str | None = None) -> None:
        """A finished image, optionally the file it was saved to."""
        self._set(image, preview=False, path=path)

    def clear(self) -> None:
        self._pixmap = None
        self._scaled = None
        self._image = None
        self.path = None
        self._is_preview = False
        self.update()
        self.imageChanged.emit()

    def set_placeholder(self, text: str) -> None:
        self._placeholder = text
        self.update()

    def image(self) -> QImage | None:
        """The finished image on show (None while empty or showing a preview)."""
        return None if self._is_preview else self._image

    def is_preview(self) -> bool:
        return self._is_preview

    def has_image(self) -> bool:
        return self._pixmap is not None

    def _set(self, image: QImage, preview: bool, path: str | None) -> None:
        self._image = image
        self._pixmap = QPixmap.fromImage(image)  # GUI thread only
        self._scaled = None
        self._is_preview = preview
        self.path = path
        self.update()
        self.imageChanged.emit()

    # --- drops
    def dragEnterEvent(self, event: QDragEnterEvent) -> None:
        mime = event.mimeData()
        if mime.hasUrls() or _has_image_data(mime):
            event.acceptProposedAction()
            self._set_drag_hover(True)
        else:
            event.ignore()

    def dragLeaveEvent(self, event: QDragLeaveEvent) -> None:
        self._set_drag_hover(False)
        super().dragLeaveEvent(event)

    def dropEvent(self, event: QDropEvent) -> None:
        self._set_drag_hover(False)
        try:
            found = drop_source(event.mimeData())
        except ValueError as exc:
            event.ignore()
            self.dropRejected.emit(str(exc))
            return
        if found is None:
            event.ignore()
            self.dropRejected.emit("Nothing to use there: drop an image file or image data.")
            return
        event.acceptProposedAction()
        self.dropped.emit(*found)

    def _set_drag_hover(self, on: bool) -> None:
        if on != self._drag_hover:
            self._drag_hover = on
            self.update()

    # --- painting
    def sizeHint(self) -> QSize:
        return QSize(640, 640)

    def image_rect(self) -> QRect:
        """Where the image is painted, in widget coordinates (empty when there is none)."""
        if self._pixmap is None or self._pixmap.isNull():
            return QRect()
        size = self._pixmap.size().scaled(self.size() - QSize(16, 16), Qt.AspectRatioMode.KeepAspectRatio)
        x = (self.width() - size.width()) // 2
        y = (self.height() - size.height()) // 2
        return QRect(x, y, size.width(), size.height())

    def _scaled_pixmap(self, size: QSize) -> QPixmap:
        """The image resampled smoothly (bilinear, also when enlarging an 8x-small preview) to ``size``."""
        ratio = self.devicePixelRatioF()
        pixels = QSize(round(size.width() * ratio), round(size.height() * ratio))
        if self._scaled is None or self._scaled.size() != pixels:
            self._scaled = self._pixmap.scaled(pixels, Qt.AspectRatioMode.IgnoreAspectRatio,
                                               Qt.TransformationMode.SmoothTransformation)
            self._scaled.setDevicePixelRatio(ratio)
        return self._scaled

    def paintEvent(self, event: QPaintEvent) -> None:
        painter = QPainter(self)
        painter.fillRect(self.rect(), self.palette().window())
        if self._pixmap is None:
            painter.setPen(QColor("#6f6a80"))
            painter.drawText(self.rect().adjusted(24, 24, -24, -24),
                             Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap, self._placeholder)
        else:
            target = self.image_rect()
            painter.drawPixmap(target.topLeft(), self._scaled_pixmap(target.size()))
            if self.overlay is not None and not self._is_preview:
                self.overlay(painter, target)
            if self._is_preview:
                painter.setPen(QColor(255, 255, 255, 170))
                painter.drawText(self.image_rect().adjusted(10, 8, -10, -8),
                                 Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop, "preview")
        if self._drag_hover:
            self._paint_drop_hint(painter)

    def _paint_drop_hint(self, painter: QPainter) -> None:
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        painter.fillRect(self.rect(), QColor(16, 14, 22, 200))
        pen = QPen(QColor("#27e1ff"), 2, Qt.PenStyle.DashLine)
        painter.setPen(pen)
        painter.drawRoundedRect(self.rect().adjusted(8, 8, -8, -8), 10, 10)
        painter.setPen(QColor("#e8e6f0"))
        painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter, "Drop to use as the init image (img2img)")


class CanvasPanel(QWidget):
    """A toolbar row (image actions) above the canvas.

    The toolbar holds ``restoreButton`` ("Restore parameters"), ``saveAsButton`` (shown only for an image that
    could not be saved: :meth:`show_unsaved`) and a caption; later features insert their own widgets with
    :meth:`add_tool_widget` (they appear at the right end, before nothing else).
    """

    restoreRequested = Signal(str)  # path of the image on show
    saveAsRequested = Signal(int)  # key of the unsaved image on show

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("canvasPanel")
        self.canvas = Canvas(self)
        self.caption = QLabel("", self)
        self.caption.setObjectName("canvasCaption")
        self.caption.setTextInteractionFlags(Qt.TextInteractionFlag.TextSelectableByMouse)
        self.restore_button = QPushButton("Restore parameters", self)
        self.restore_button.setObjectName("restoreButton")
        self.restore_button.setToolTip("Put this image's prompt and settings back into the panels")
        self.restore_button.setEnabled(False)
        self.restore_button.clicked.connect(self._restore_clicked)
        self.save_as_button = QPushButton("Save As…", self)
        self.save_as_button.setObjectName("saveAsButton")
        self.save_as_button.setToolTip("This image could not be saved to the output folder: save it elsewhere")
        self.save_as_button.setVisible(False)
        self.save_as_button.clicked.connect(self._save_as_clicked)
        self.unsaved_key: int | None = None  # set while an image that is in no file is on show

        self.toolbar = QHBoxLayout()
        self.toolbar.setContentsMargins(0, 0, 0, 0)
        self.toolbar.setSpacing(6)
        self.toolbar.addWidget(self.caption, 1)
        self.toolbar.addWidget(self.save_as_button)
        self.toolbar.addWidget(self.restore_button)

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addLayout(self.toolbar)
        layout.addWidget(self.canvas, 1)
        self.canvas.imageChanged.connect(self._update_actions)

    def add_tool_widget(self, widget: QWidget) -> None:
        """Add a button (or any widget) to the canvas toolbar, at its right end."""
        self.toolbar.addWidget(widget)

    def show_file(self, image: QImage, path: str, caption: str = "") -> None:
        self.unsaved_key = None
        self.canvas.set_image(image, path)
        self.caption.setText(caption)

    def show_unsaved(self, image: QImage, key: int, caption: str = "") -> None:
        """A finished image that is in no file (its save failed): offers Save As… while it is on show."""
        self.canvas.set_image(image, None)
        self.unsaved_key = key
        self.caption.setText(caption)
        self._update_actions()

    def show_unsaved_edit(self, image: QImage, caption: str = "") -> None:
        """An image made on the canvas itself (an outpainting's extended canvas): in no file, nothing to save."""
        self.unsaved_key = None
        self.canvas.set_image(image, None)
        self.caption.setText(caption)

    def forget_unsaved(self, key: int) -> None:
        """Image ``key`` was saved after all: no Save As… for it any more."""
        if self.unsaved_key == key:
            self.unsaved_key = None
            self._update_actions()

    def _update_actions(self) -> None:
        self.restore_button.setEnabled(self.canvas.path is not None)
        if self.canvas.is_preview() or self.canvas.path is not None or not self.canvas.has_image():
            self.unsaved_key = None
        self.save_as_button.setVisible(self.unsaved_key is not None)
        if self.canvas.is_preview():
            self.caption.setText("")

    def _save_as_clicked(self) -> None:
        if self.unsaved_key is not None:
            self.saveAsRequested.emit(self.unsaved_key)

    def _restore_clicked(self) -> None:
        if self.canvas.path:
            self.restoreRequested.emit(self.canvas.path)
