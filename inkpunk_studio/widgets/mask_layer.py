"""The inpainting mask as a layer over the canvas image: the mask state with undo/redo, and the brush tool.

:class:`MaskLayer` holds the mask (a ``Format_Grayscale8`` QImage at the image's resolution, white = repaint)
and a ``QUndoStack`` with one command per stroke, clear, invert or load. :class:`MaskBrush` is an event filter
on the :class:`~inkpunk_studio.widgets.canvas.Canvas`: while on, the left button paints (or erases) in image
coordinates, ``[``/``]`` and Ctrl+wheel change the brush size, and it paints the translucent overlay and the
size circle through the canvas's overlay hook. Widgets for the options live in ``mask_editor.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

from PIL import Image
from PySide6.QtCore import QEvent, QObject, QPointF, QRect, QSize, Qt, Signal
from PySide6.QtGui import (
    QColor,
    QImage,
    QKeyEvent,
    QMouseEvent,
    QPainter,
    QPen,
    QUndoCommand,
    QUndoStack,
    QWheelEvent,
)

if TYPE_CHECKING:
    from .canvas import Canvas

MIN_BRUSH, MAX_BRUSH, DEFAULT_BRUSH = 2, 512, 48
OVERLAY_COLOR = QColor(255, 46, 136)  # the theme's magenta, shown at OVERLAY_OPACITY
OVERLAY_OPACITY = 0.55
UNDO_LIMIT = 60  # snapshots of the whole mask: 60 x 4 MB at 2048x2048 at most


class _Snapshot(QUndoCommand):
    """One edit of the mask, undone by restoring the mask from before it (masks are bytes per pixel: cheap)."""

    def __init__(self, layer: MaskLayer, before: QImage, after: QImage, text: str) -> None:
        super().__init__(text)
        self._layer, self._before, self._after = layer, before, after
        self._first = True

    def redo(self) -> None:
        if self._first:  # the edit is already on the mask when the command is pushed
            self._first = False
            return
        self._layer._replace(self._after.copy())

    def undo(self) -> None:
        self._layer._replace(self._before.copy())


class MaskLayer(QObject):
    """The mask of the image on the canvas: white (255) repaints, black (0) keeps; grey is partial.

    ``changed`` fires after every edit, undo, redo and resize. Strokes are ``begin_stroke`` / ``stroke_to``
    / ``end_stroke`` in image pixels; a stroke is one undo step.
    """

    changed = Signal()

    def __init__(self, parent: QObject | None = None) -> None:
        super().__init__(parent)
        self._mask = QImage()
        self.undo_stack = QUndoStack(self)
        self.undo_stack.setUndoLimit(UNDO_LIMIT)
        self.brush_size = DEFAULT_BRUSH
        self.erasing = False
        self._stroke_before: QImage | None = None
        self._last: QPointF | None = None
        self._empty: bool | None = None  # is_empty's answer for the mask as it is
        self.changed.connect(self._forget_empty)

    # --- state
    def size(self) -> QSize:
        return self._mask.size()

    def mask(self) -> QImage:
        """The mask itself (read it, don't paint on it: edits go through the methods, for undo)."""
        return self._mask

    def is_empty(self) -> bool:
        """True when nothing is masked (no mask, or all black); remembered until the next change (the overlay
        asks on every repaint)."""
        if self._empty is None:
            self._empty = self._mask.isNull() or self.to_pil().getbbox() is None
        return self._empty

    def reset(self, size: QSize) -> None:
        """A blank mask of ``size`` (the image's); forgets the undo history."""
        mask = QImage(size, QImage.Format.Format_Grayscale8)
        mask.fill(0)
        self.undo_stack.clear()
        self._replace(mask)

    def _forget_empty(self) -> None:
        self._empty = None

    def set_brush_size(self, size: int) -> None:
        self.brush_size = max(MIN_BRUSH, min(MAX_BRUSH, int(size)))
        self.changed.emit()

    # --- strokes
    def begin_stroke(self, point: QPointF) -> None:
        if self._mask.isNull():
            return
        self._stroke_before = self._mask.copy()
        self._last = QPointF(point)
        self._paint_segment(point, point)

    def stroke_to(self, point: QPointF) -> None:
        if self._stroke_before is None or self._last is None:
            return
        self._paint_segment(self._last, point)
        self._last = QPointF(point)

    def end_stroke(self) -> None:
        if self._stroke_before is None:
            return
        before, self._stroke_before, self._last = self._stroke_before, None, None
        self.undo_stack.push(_Snapshot(self, before, self._mask.copy(), "erase" if self.erasing else "paint"))

    def _paint_segment(self, a: QPointF, b: QPointF) -> None:
        painter = QPainter(self._mask)
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        value = 0 if self.erasing else 255
        pen = QPen(QColor(value, value, value), self.brush_size, Qt.PenStyle.SolidLine,
                   Qt.PenCapStyle.RoundCap, Qt.PenJoinStyle.RoundJoin)
        painter.setPen(pen)
        painter.drawLine(a, b)
        painter.end()
        self.changed.emit()

    # --- whole-mask edits
    def clear(self) -> None:
        self._edit("clear", lambda mask: mask.fill(0))

    def invert(self) -> None:
        self._edit("invert", lambda mask: mask.invertPixels())

    def fill(self) -> None:
        """Mask everything (then erase what to keep)."""
        self._edit("fill", lambda mask: mask.fill(255))

    def set_pil(self, mask: Image.Image, undoable: bool = True) -> None:
        """Replace the mask with a PIL image (converted to "L"); its size becomes the mask's size."""
        image = _pil_to_qimage(mask.convert("L"))
        if not undoable or self._mask.isNull():
            self.undo_stack.clear()
            self._replace(image)
            return
        before = self._mask.copy()
        self._replace(image)
        self.undo_stack.push(_Snapshot(self, before, image.copy(), "load mask"))

    def _edit(self, text: str, change: Callable[[QImage], object]) -> None:
        if self._mask.isNull():
            return
        before = self._mask.copy()
        change(self._mask)
        self.changed.emit()
        self.undo_stack.push(_Snapshot(self, before, self._mask.copy(), text))

    def _replace(self, mask: QImage) -> None:
        self._mask = mask
        self.changed.emit()

    # --- export
    def to_pil(self) -> Image.Image:
        """The mask as a PIL "L" image (white = repaint), what ``GenerationRequest.mask`` takes."""
        if self._mask.isNull():
            raise ValueError("there is no mask: show an image on the canvas first")
        mask = self._mask
        stride = mask.bytesPerLine()
        data = bytes(mask.constBits())[: stride * mask.height()]
        return Image.frombuffer("L", (mask.width(), mask.height()), data, "raw", "L", stride, 1).copy()


def _pil_to_qimage(mask: Image.Image) -> QImage:
    data = mask.tobytes()
    return QImage(data, mask.width, mask.height, mask.width, QImage.Format.Format_Grayscale8).copy()


class MaskBrush(QObject):
    """Paints ``layer`` with the mouse on ``canvas`` while :attr:`active`; draws the overlay and the brush.

    Mouse positions map to image pixels through ``canvas.image_rect()`` (the image is fitted, so one screen
    pixel may be several image pixels). The canvas gets the keyboard focus on a press so ``[``/``]`` work.
    """

    def __init__(self, canvas: Canvas, layer: MaskLayer) -> None:
        super().__init__(canvas)
        self.canvas, self.layer = canvas, layer
        self.active = False
        self._hover: QPointF | None = None
        self._overlay_cache: tuple[int, QImage] | None = None
        canvas.installEventFilter(self)
        canvas.overlay = self.paint
        layer.changed.connect(self._on_changed)

    def set_active(self, on: bool) -> None:
        self.active = on
        self.canvas.setMouseTracking(on)
        self.canvas.setFocusPolicy(Qt.FocusPolicy.StrongFocus if on else Qt.FocusPolicy.NoFocus)
        self.canvas.setCursor(Qt.CursorShape.CrossCursor if on else Qt.CursorShape.ArrowCursor)
        if not on:
            self._hover = None
        self.canvas.update()

    def to_image(self, pos: QPointF) -> QPointF | None:
        """Widget position -> image pixel position (None without an image on show)."""
        rect = self.canvas.image_rect()
        size = self.layer.size()
        if rect.isEmpty() or size.isEmpty():
            return None
        return QPointF((pos.x() - rect.x()) * size.width() / rect.width(),
                       (pos.y() - rect.y()) * size.height() / rect.height())

    def _can_paint(self) -> bool:
        image = self.canvas.image()
        return self.active and image is not None and image.size() == self.layer.size()

    def eventFilter(self, watched: QObject, event: QEvent) -> bool:
        if watched is not self.canvas or not self.active:
            return False
        kind = event.type()
        if kind == QEvent.Type.MouseButtonPress and isinstance(event, QMouseEvent):
            if event.button() != Qt.MouseButton.LeftButton or not self._can_paint():
                return False
            self.canvas.setFocus(Qt.FocusReason.MouseFocusReason)
            point = self.to_image(event.position())
            if point is not None:
                self.layer.begin_stroke(point)
            return True
        if kind == QEvent.Type.MouseMove and isinstance(event, QMouseEvent):
            self._hover = event.position()
            if event.buttons() & Qt.MouseButton.LeftButton:
                point = self.to_image(event.position())
                if point is not None:
                    self.layer.stroke_to(point)
            self.canvas.update()
            return bool(event.buttons() & Qt.MouseButton.LeftButton)
        if kind == QEvent.Type.MouseButtonRelease and isinstance(event, QMouseEvent):
            if event.button() != Qt.MouseButton.LeftButton:
                return False
            self.layer.end_stroke()
            return True
        if kind == QEvent.Type.Leave:
            self._hover = None
            self.canvas.update()
        if (kind == QEvent.Type.Wheel and isinstance(event, QWheelEvent)
                and event.modifiers() & Qt.KeyboardModifier.ControlModifier):
            steps = event.angleDelta().y() / 120
            self.layer.set_brush_size(round(self.layer.brush_size * (1.15 ** steps)))
            return True
        if kind == QEvent.Type.KeyPress and isinstance(event, QKeyEvent):
            if event.key() == Qt.Key.Key_BracketLeft:
                self.layer.set_brush_size(round(self.layer.brush_size / 1.25))
                return True
            if event.key() == Qt.Key.Key_BracketRight:
                self.layer.set_brush_size(round(self.layer.brush_size * 1.25) + 1)
                return True
        return False

    # --- painting (called from Canvas.paintEvent with the image's rectangle)
    def paint(self, painter: QPainter, target: QRect) -> None:
        if self.layer.size().isEmpty() or self.canvas.image() is None:
            return
        if self.canvas.image().size() != self.layer.size():
            return
        if self.active or not self.layer.is_empty():
            painter.save()
            painter.setOpacity(OVERLAY_OPACITY if self.active else OVERLAY_OPACITY / 2)
            painter.setRenderHint(QPainter.RenderHint.SmoothPixmapTransform)
            painter.drawImage(target, self._overlay())
            painter.restore()
        if self.active and self._hover is not None and target.contains(self._hover.toPoint()):
            radius = self.layer.brush_size / 2 * target.width() / max(1, self.layer.size().width())
            painter.save()
            painter.setRenderHint(QPainter.RenderHint.Antialiasing)
            painter.setBrush(Qt.BrushStyle.NoBrush)
            painter.setPen(QPen(QColor(0, 0, 0, 160), 3))
            painter.drawEllipse(self._hover, radius, radius)
            painter.setPen(QPen(QColor(255, 255, 255, 230), 1.2))
            painter.drawEllipse(self._hover, radius, radius)
            painter.restore()

    def _overlay(self) -> QImage:
        """The mask as the overlay colour with the mask as alpha (cached until the mask changes)."""
        key = self.layer.mask().cacheKey()
        if self._overlay_cache is None or self._overlay_cache[0] != key:
            overlay = QImage(self.layer.size(), QImage.Format.Format_ARGB32)
            overlay.fill(OVERLAY_COLOR)
            overlay.setAlphaChannel(self.layer.mask())
            self._overlay_cache = (key, overlay)
        return self._overlay_cache[1]

    def _on_changed(self) -> None:
        self._overlay_cache = None
        self.canvas.update()
