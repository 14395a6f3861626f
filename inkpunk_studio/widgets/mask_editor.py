"""Inpainting and outpainting on the canvas: the mask mode's controls and what they hand to a generation.

:class:`MaskEditor` attaches to a :class:`~inkpunk_studio.widgets.canvas.CanvasPanel`: a checkable
``maskButton`` and an ``upscaleButton`` in its toolbar, and an options row (``maskRow``, shown in mask mode):
brush / eraser, size, clear, invert, undo / redo, A1111's inpaint options (mask blur, denoising strength,
masked content, only masked) and the outpainting buttons. With the mask mode on and something masked,
:meth:`MaskEditor.apply_to` turns a :class:`~inkpunk_studio.worker.GenerationParams` into an inpainting job:
the canvas image as the init image, the mask beside it, the request at the image's size.
"""

from __future__ import annotations

from io import BytesIO
from pathlib import Path
from typing import TYPE_CHECKING

from PIL import Image, PngImagePlugin
from PySide6.QtCore import QObject, QSize, Signal
from PySide6.QtGui import QImage, QKeySequence
from PySide6.QtWidgets import (
    QButtonGroup,
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QHBoxLayout,
    QLabel,
    QMenu,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
    QWidgetAction,
)

from .. import editing
from ..fileio import atomic_write_bytes
from ..history import to_qimage
from .mask_layer import MAX_BRUSH, MIN_BRUSH, MaskBrush, MaskLayer

if TYPE_CHECKING:
    from ..worker import GenerationParams
    from .canvas import CanvasPanel

NOT_IN_ENGINE = "Not available yet: the engine does not implement this option"


def qimage_to_pil(image: QImage) -> Image.Image:
    """A QImage as a PIL RGB image (copied)."""
    rgb = image.convertToFormat(QImage.Format.Format_RGB888)
    stride = rgb.bytesPerLine()
    data = bytes(rgb.constBits())[: stride * rgb.height()]
    return Image.frombuffer("RGB", (rgb.width(), rgb.height()), data, "raw", "RGB", stride, 1).copy()


class MaskEditor(QObject):
    """The mask mode of ``panel``'s canvas (see the module docstring). ``imageWritten(path)`` after an
    upscale was saved; ``message(text)`` for the status line."""

    imageWritten = Signal(str)
    message = Signal(str)
    # SD upscale asked for: (image path, factor, strength); the window runs it as a worker job
    # (worker.GenerationJob with sd_upscale.SdUpscale and the image's own parameters)
    sdUpscaleRequested = Signal(str, int, float)

    def __init__(self, panel: CanvasPanel, parent: QObject | None = None) -> None:
        super().__init__(parent or panel)
        self.panel = panel
        self.canvas = panel.canvas
        self.layer = MaskLayer(self)
        self.brush = MaskBrush(self.canvas, self.layer)
        self._shown_path: str | None = None
        self._build_toolbar()
        self.row = self._build_row()
        panel.layout().insertWidget(1, self.row)
        self.row.setVisible(False)
        self.canvas.imageChanged.connect(self._sync_to_image)
        self.layer.changed.connect(self._update_buttons)
        self.layer.undo_stack.canUndoChanged.connect(self.undo_button.setEnabled)
        self.layer.undo_stack.canRedoChanged.connect(self.redo_button.setEnabled)
        self._sync_to_image()

    # ------------------------------------------------------------------ widgets
    def _tool(self, name: str, text: str, tip: str, parent: QWidget, checkable: bool = False) -> QToolButton:
        button = QToolButton(parent)
        button.setObjectName(name)
        button.setText(text)
        button.setToolTip(tip)
        button.setCheckable(checkable)
        return button

    def _build_toolbar(self) -> None:
        self.mask_button = self._tool("maskButton", "Mask", "Paint a mask to repaint part of the image "
                                      "(inpainting) or extend it (outpainting)", self.panel, checkable=True)
        self.mask_button.toggled.connect(self.set_mask_mode)
        self.upscale_button = self._tool("upscaleButton", "Upscale", "Enlarge this image with Lanczos and save "
                                         "the copy beside it", self.panel)
        menu = QMenu(self.upscale_button)
        for factor in (2, 4):
            action = menu.addAction(f"Lanczos ×{factor}")
            action.setObjectName(f"upscaleX{factor}Action")
            action.triggered.connect(lambda _=False, f=factor: self.upscale_shown(f))
        menu.addSeparator()
        for factor in (2, 4):
            action = menu.addAction(f"SD upscale ×{factor} (Lanczos, then tiled img2img)")
            action.setObjectName(f"sdUpscaleX{factor}Action")
            action.triggered.connect(lambda _=False, f=factor: self.sd_upscale_shown(f))
        self.sd_strength_spin = QDoubleSpinBox(menu)
        self.sd_strength_spin.setObjectName("sdUpscaleStrengthSpin")
        self.sd_strength_spin.setRange(0.01, 1.0)
        self.sd_strength_spin.setSingleStep(0.05)
        self.sd_strength_spin.setValue(0.3)
        self.sd_strength_spin.setPrefix("Refine strength ")
        self.sd_strength_spin.setToolTip("SD upscale's denoising strength: how much each tile may change")
        holder = QWidgetAction(menu)
        holder.setDefaultWidget(self.sd_strength_spin)
        menu.addAction(holder)
        self.upscale_button.setMenu(menu)
        self.upscale_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.panel.add_tool_widget(self.upscale_button)
        self.panel.add_tool_widget(self.mask_button)

    def _build_row(self) -> QWidget:
        row = QWidget(self.panel)
        row.setObjectName("maskRow")
        lines = QVBoxLayout(row)  # two lines: the brush and its edits; the inpaint options and outpainting
        lines.setContentsMargins(0, 0, 0, 0)
        lines.setSpacing(4)
        tools, options = QHBoxLayout(), QHBoxLayout()
        for line in (tools, options):
            line.setSpacing(4)
            lines.addLayout(line)
        self.brush_button = self._tool("maskBrushButton", "Brush", "Paint what to repaint", row, True)
        self.eraser_button = self._tool("maskEraserButton", "Eraser", "Erase from the mask", row, True)
        group = QButtonGroup(row)
        group.setExclusive(True)
        for button in (self.brush_button, self.eraser_button):
            group.addButton(button)
        self.brush_button.setChecked(True)
        self.eraser_button.toggled.connect(lambda on: setattr(self.layer, "erasing", on))
        self.size_spin = QSpinBox(row)
        self.size_spin.setObjectName("maskSizeSpin")
        self.size_spin.setRange(MIN_BRUSH, MAX_BRUSH)
        self.size_spin.setSuffix(" px")
        self.size_spin.setToolTip("Brush size in image pixels ([ and ] or Ctrl+wheel on the canvas)")
        self.size_spin.setValue(self.layer.brush_size)
        self.size_spin.valueChanged.connect(self.layer.set_brush_size)
        self.clear_button = self._tool("maskClearButton", "Clear", "Remove the whole mask", row)
        self.clear_button.clicked.connect(self.layer.clear)
        self.invert_button = self._tool("maskInvertButton", "Invert", "Repaint what is unmasked instead", row)
        self.invert_button.clicked.connect(self.layer.invert)
        self.undo_button = self._tool("maskUndoButton", "Undo", "Undo the last mask edit (Ctrl+Z)", row)
        self.undo_button.clicked.connect(self.layer.undo_stack.undo)
        self.undo_button.setShortcut(QKeySequence.StandardKey.Undo)
        self.redo_button = self._tool("maskRedoButton", "Redo", "Redo (Ctrl+Shift+Z)", row)
        self.redo_button.clicked.connect(self.layer.undo_stack.redo)
        self.redo_button.setShortcut(QKeySequence.StandardKey.Redo)
        self.undo_button.setEnabled(False)
        self.redo_button.setEnabled(False)

        self.blur_spin = QSpinBox(row)
        self.blur_spin.setObjectName("maskBlurSpin")
        self.blur_spin.setRange(0, 64)
        self.blur_spin.setValue(4)
        self.blur_spin.setPrefix("blur ")
        self.blur_spin.setToolTip("Mask blur (A1111): how softly the repainted part is blended in, in pixels")
        self.strength_spin = QDoubleSpinBox(row)
        self.strength_spin.setObjectName("maskStrengthSpin")
        self.strength_spin.setRange(0.05, 1.0)
        self.strength_spin.setSingleStep(0.05)
        self.strength_spin.setValue(0.75)
        self.strength_spin.setPrefix("denoise ")
        self.strength_spin.setToolTip("Denoising strength of the masked part (1 = ignore what is there)")
        self.content_combo = QComboBox(row)
        self.content_combo.setObjectName("maskedContentCombo")
        supported = editing.supported_masked_content()
        for name in editing.MASKED_CONTENT:
            self.content_combo.addItem(f"masked: {name}", name)
            if name not in supported:
                item = self.content_combo.model().item(self.content_combo.count() - 1)
                item.setEnabled(False)
                item.setToolTip(NOT_IN_ENGINE)
        self.content_combo.setToolTip("Masked content (A1111): what the masked part starts from: the original "
                                      "image, its surroundings' colours (fill), or noise")
        self.only_masked_check = QCheckBox("Only masked", row)
        self.only_masked_check.setObjectName("onlyMaskedCheck")
        self.only_masked_check.setToolTip("Inpaint area: Only masked (A1111): repaint the masked area cropped "
                                          "with padding at the panel's width x height, then paste it back "
                                          "into the whole image")
        self.padding_spin = QSpinBox(row)
        self.padding_spin.setObjectName("maskPaddingSpin")
        self.padding_spin.setRange(0, editing.MAX_MASK_PADDING)
        self.padding_spin.setValue(32)
        self.padding_spin.setPrefix("padding ")
        self.padding_spin.setSuffix(" px")
        self.padding_spin.setToolTip("Masked area padding (A1111): context around the mask that Only masked "
                                     "crops with it")
        self.padding_spin.setEnabled(False)
        self.only_masked_check.toggled.connect(self.padding_spin.setEnabled)

        self.outpaint_spin = QSpinBox(row)
        self.outpaint_spin.setObjectName("outpaintPixelsSpin")
        self.outpaint_spin.setRange(8, 512)
        self.outpaint_spin.setSingleStep(8)
        self.outpaint_spin.setValue(128)
        self.outpaint_spin.setSuffix(" px")
        self.outpaint_spin.setToolTip("How far the outpainting buttons extend the image (multiples of 8)")
        self.outpaint_buttons = {}
        for side, arrow in zip(editing.SIDES, ("◀", "▶", "▲", "▼"), strict=True):
            button = self._tool(f"outpaint{side.title()}Button", arrow,
                                f"Extend the image on the {side} (outpainting): the new part is masked", row)
            button.clicked.connect(lambda _=False, s=side: self.extend(s))
            self.outpaint_buttons[side] = button

        for widget in (self.brush_button, self.eraser_button, self.size_spin, self.clear_button,
                       self.invert_button, self.undo_button, self.redo_button):
            tools.addWidget(widget)
        tools.addStretch(1)
        tools.addWidget(QLabel("Outpaint", row))
        tools.addWidget(self.outpaint_spin)
        for button in self.outpaint_buttons.values():
            tools.addWidget(button)
        for widget in (self.blur_spin, self.strength_spin, self.content_combo, self.only_masked_check,
                       self.padding_spin):
            options.addWidget(widget)
        options.addStretch(1)
        self.layer.changed.connect(lambda: self.size_spin.setValue(self.layer.brush_size))
        return row

    # ------------------------------------------------------------------ state
    def set_mask_mode(self, on: bool) -> None:
        if self.mask_button.isChecked() != on:
            self.mask_button.setChecked(on)  # comes back here through toggled
            return
        self.row.setVisible(on)
        self.brush.set_active(on)
        self._update_buttons()

    def mask_mode(self) -> bool:
        return self.mask_button.isChecked()

    def _sync_to_image(self) -> None:
        """A new finished image on the canvas: its saved mask if it has one, a blank mask if the size changed."""
        if self.canvas.is_preview():
            return
        image = self.canvas.image()
        if image is None:
            self._shown_path = None
            self._update_buttons()
            return
        size = QSize(image.width(), image.height())
        path = self.canvas.path
        saved = None
        if path and path != self._shown_path:
            saved = editing.load_mask(path, (image.width(), image.height()))
        self._shown_path = path
        if saved is not None:
            self.layer.set_pil(saved, undoable=False)
        elif self.layer.size() != size:
            self.layer.reset(size)
        self._update_buttons()

    def _update_buttons(self) -> None:
        finished = self.canvas.image() is not None
        for widget in (self.clear_button, self.invert_button):
            widget.setEnabled(finished)
        for button in self.outpaint_buttons.values():
            button.setEnabled(finished)
        self.upscale_button.setEnabled(finished and self.canvas.path is not None)

    def inpaint_inputs(self) -> tuple[Image.Image, Image.Image] | None:
        """(canvas image as RGB, mask "L") when the next generation should inpaint: mask mode on, a finished
        image on the canvas and something masked; else None."""
        image = self.canvas.image()
        if not self.mask_mode() or image is None or image.size() != self.layer.size() or self.layer.is_empty():
            return None
        return qimage_to_pil(image), self.layer.to_pil()

    def apply_to(self, params: GenerationParams) -> bool:
        """Make ``params`` (a GenerationParams) inpaint the canvas image under the mask; True when it did.
        The size becomes the image's own (the mask is at image resolution), except with "Only masked": then
        the panel's width x height is the size the masked crop is generated at (GenerationParams.request)."""
        inputs = self.inpaint_inputs()
        if inputs is None:
            return False
        image, mask = inputs
        params.init_image, params.mask = image, mask
        params.only_masked = self.only_masked_check.isChecked()
        params.mask_padding = self.padding_spin.value()
        if not params.only_masked:
            params.width, params.height = image.size
        params.strength = round(self.strength_spin.value(), 2)
        params.mask_blur = self.blur_spin.value()
        params.masked_content = self.content_combo.currentData()
        return True

    def set_inpaint_values(self, only_masked: bool | None = None, mask_padding: int | None = None,
                           mask_blur: int | None = None, masked_content: str | None = None) -> list[str]:
        """Restore the inpainting options (editing.inpaint_from_infotext gives the arguments); returns notes for
        values the controls could not take as given."""
        notes: list[str] = []
        if only_masked is not None:
            self.only_masked_check.setChecked(bool(only_masked))
        for spin, value, label in ((self.padding_spin, mask_padding, "masked area padding"),
                                   (self.blur_spin, mask_blur, "mask blur")):
            if value is not None:
                spin.setValue(int(value))
                if spin.value() != int(value):
                    notes.append(f"{label} {value} -> {spin.value()}")
        if masked_content is not None:
            index = self.content_combo.findData(masked_content)
            if index >= 0 and masked_content in editing.supported_masked_content():
                self.content_combo.setCurrentIndex(index)
            else:
                notes.append(f"masked content {masked_content!r} is not available")
        return notes

    # ------------------------------------------------------------------ outpainting and upscaling
    def extend(self, side: str) -> None:
        """Grow the canvas image on ``side`` (edge stretch), mask the new part with a soft seam, mask mode on.
        The grown image is shown unsaved; Generate then fills it through the inpainting path."""
        image = self.canvas.image()
        if image is None:
            return
        mask = None if self.layer.size() != image.size() else self.layer.to_pil()
        grown, grown_mask = editing.extend_canvas(qimage_to_pil(image), side, self.outpaint_spin.value(), mask)
        self.panel.show_unsaved_edit(to_qimage(grown), f"Extended {side} to {grown.width}x{grown.height}: "
                                     "Generate fills the masked part")
        self.layer.set_pil(grown_mask, undoable=False)
        self.set_mask_mode(True)
        self.message.emit(f"Image extended on the {side} by {self.outpaint_spin.value()} px: press Generate")

    def upscale_shown(self, factor: int) -> Path | None:
        """Save the canvas image enlarged ``factor``x (Lanczos) beside its file, with its text chunks, and show
        it. Returns the new path (None when there is no saved image on show or writing failed)."""
        path = self.canvas.path
        if not path:
            return None
        try:
            with Image.open(path) as opened:
                source = opened.convert("RGB")
                texts = {k: v for k, v in opened.info.items() if isinstance(k, str) and isinstance(v, str)}
            big = editing.upscale(source, factor)
            info = PngImagePlugin.PngInfo()
            for key, value in texts.items():
                info.add_text(key, value)
            buffer = BytesIO()
            big.save(buffer, format="PNG", pnginfo=info)
            target = atomic_write_bytes(editing.upscaled_path(path, factor), buffer.getvalue())
        except (OSError, ValueError) as exc:
            self.message.emit(f"Could not upscale {Path(path).name}: {exc}")
            return None
        self.panel.show_file(to_qimage(big), str(target), f"{Path(target).name}  ·  Lanczos ×{factor}")
        self.imageWritten.emit(str(target))
        self.message.emit(f"Saved {Path(target).name} ({big.width}x{big.height})")
        return Path(target)

    def sd_upscale_shown(self, factor: int) -> bool:
        """Ask for an SD upscale of the saved image on show (``sdUpscaleRequested``) at the menu's strength.
        False when there is no saved image on show."""
        path = self.canvas.path
        if not path:
            return False
        self.sdUpscaleRequested.emit(str(path), factor, round(self.sd_strength_spin.value(), 2))
        self.message.emit(f"SD upscale ×{factor} of {Path(path).name} queued")
        return True
