"""The canvas: shows the live per-step preview (scaled up smoothly) and then the finished image.

:class:`Canvas` only paints. :class:`CanvasPanel` puts a toolbar row above it; other features add their
buttons there with :meth:`CanvasPanel.add_tool_widget` (e.g. the favorites star) and drag-and-drop goes on
the Canvas itself (override ``dragEnterEvent``/``dropEvent`` in a subclass or install an event filter and
call ``setAcceptDrops(True)``).
"""

from __future__ import annotations

from PySide6.QtCore import QRect, QSize, Qt, Signal
from PySide6.QtGui import QColor, QImage, QPainter, QPaintEvent, QPixmap
from PySide6.QtWidgets import QHBoxLayout, QLabel, QPushButton, QSizePolicy, QVBoxLayout, QWidget


class Canvas(QWidget):
    """Paints one image, fitted into the widget with its aspect ratio, smoothly scaled (objectName canvas)."""

    imageChanged = Signal()

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
        self._placeholder = "Type a prompt and press Generate (Ctrl+Enter)"

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
            painter.drawText(self.rect(), Qt.AlignmentFlag.AlignCenter | Qt.TextFlag.TextWordWrap,
                             self._placeholder)
            return
        target = self.image_rect()
        painter.drawPixmap(target.topLeft(), self._scaled_pixmap(target.size()))
        if self._is_preview:
            painter.setPen(QColor(255, 255, 255, 170))
            painter.drawText(self.image_rect().adjusted(10, 8, -10, -8),
                             Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignTop, "preview")


class CanvasPanel(QWidget):
    """A toolbar row (image actions) above the canvas.

    The toolbar holds ``restoreButton`` ("Restore parameters") and a caption; later features insert their own
    widgets with :meth:`add_tool_widget` (they appear at the right end, before nothing else).
    """

    restoreRequested = Signal(str)  # path of the image on show

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

        self.toolbar = QHBoxLayout()
        self.toolbar.setContentsMargins(0, 0, 0, 0)
        self.toolbar.setSpacing(6)
        self.toolbar.addWidget(self.caption, 1)
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
        self.canvas.set_image(image, path)
        self.caption.setText(caption)

    def _update_actions(self) -> None:
        self.restore_button.setEnabled(self.canvas.path is not None)
        if self.canvas.is_preview():
            self.caption.setText("")

    def _restore_clicked(self) -> None:
        if self.canvas.path:
            self.restoreRequested.emit(self.canvas.path)
