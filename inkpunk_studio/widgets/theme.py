"""The dark theme: Fusion, a matching palette, chevron arrows and resources/style.qss.

The style sheet does the look; the palette covers what it doesn't reach (dialogs, native parts); the proxy
style draws spin-box and combo arrows as thin chevrons, since QSS can only replace them with image files.
"""

from __future__ import annotations

import logging

from PySide6.QtCore import QPointF, Qt
from PySide6.QtGui import QColor, QIcon, QPainter, QPalette, QPen, QPixmap
from PySide6.QtWidgets import QApplication, QProxyStyle, QStyle, QStyleOption, QWidget

from .. import paths

log = logging.getLogger(__name__)

ACCENT = "#ff2e97"  # Inkpunk magenta
HIGHLIGHT = "#27e1ff"  # Inkpunk cyan

_PALETTE = {
    QPalette.ColorRole.Window: "#15131c", QPalette.ColorRole.WindowText: "#e8e6f0",
    QPalette.ColorRole.Base: "#1d1a27", QPalette.ColorRole.AlternateBase: "#242033",
    QPalette.ColorRole.Text: "#e8e6f0", QPalette.ColorRole.Button: "#242033",
    QPalette.ColorRole.ButtonText: "#e8e6f0", QPalette.ColorRole.Highlight: ACCENT,
    QPalette.ColorRole.HighlightedText: "#ffffff", QPalette.ColorRole.ToolTipBase: "#242033",
    QPalette.ColorRole.ToolTipText: "#e8e6f0", QPalette.ColorRole.PlaceholderText: "#7d7891",
    QPalette.ColorRole.Link: HIGHLIGHT, QPalette.ColorRole.BrightText: HIGHLIGHT,
}
_ARROWS = {
    QStyle.PrimitiveElement.PE_IndicatorArrowUp: True, QStyle.PrimitiveElement.PE_IndicatorSpinUp: True,
    QStyle.PrimitiveElement.PE_IndicatorArrowDown: False, QStyle.PrimitiveElement.PE_IndicatorSpinDown: False,
}


class InkStyle(QProxyStyle):
    """Fusion with chevron arrows (grey, cyan under the mouse, dim when disabled)."""

    def drawPrimitive(self, element: QStyle.PrimitiveElement, option: QStyleOption, painter: QPainter,
                      widget: QWidget | None = None) -> None:
        up = _ARROWS.get(element)
        if up is None:
            super().drawPrimitive(element, option, painter, widget)
            return
        state = option.state
        color = QColor("#9a94b3")
        if not state & QStyle.StateFlag.State_Enabled:
            color = QColor("#4a4560")
        elif state & QStyle.StateFlag.State_MouseOver:
            color = QColor(HIGHLIGHT)
        rect = option.rect
        half = min(4.0, rect.width() / 3, rect.height() / 2.5)
        cx, cy = rect.center().x() + 0.5, rect.center().y() + 0.5
        tip = -half / 2 if up else half / 2
        painter.save()
        painter.setRenderHint(QPainter.RenderHint.Antialiasing)
        pen = QPen(color, 1.6)
        pen.setCapStyle(Qt.PenCapStyle.RoundCap)
        pen.setJoinStyle(Qt.PenJoinStyle.RoundJoin)
        painter.setPen(pen)
        painter.drawPolyline([QPointF(cx - half, cy - tip), QPointF(cx, cy + tip), QPointF(cx + half, cy - tip)])
        painter.restore()


def dark_palette() -> QPalette:
    palette = QPalette()
    for role, color in _PALETTE.items():
        palette.setColor(role, QColor(color))
    for role in (QPalette.ColorRole.Text, QPalette.ColorRole.ButtonText, QPalette.ColorRole.WindowText):
        palette.setColor(QPalette.ColorGroup.Disabled, role, QColor("#6b6680"))
    return palette


def apply_theme(app: QApplication) -> None:
    """Install the style, palette and style sheet on the application."""
    app.setStyle(InkStyle("Fusion"))
    app.setPalette(dark_palette())
    qss = paths.resource_path("style.qss")
    try:
        app.setStyleSheet(qss.read_text(encoding="utf-8"))
    except OSError as exc:
        log.warning("no style sheet (%s); using the plain dark palette", exc)


def picture_icon(pixmap: QPixmap) -> QIcon:
    """An icon that shows a picture as it is, also when its item is selected: Qt otherwise draws a selected
    icon tinted with the highlight colour, so the chosen thumbnail looked unlike its image (the selection
    is already shown by the item's frame)."""
    icon = QIcon(pixmap)
    icon.addPixmap(pixmap, QIcon.Mode.Selected)
    return icon
