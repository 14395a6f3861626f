"""The side panel's "Hires fix" section (A1111's txt2img hires fix: a first pass at the chosen size, an
upscale, then an img2img pass with its own steps and denoising strength; engine.hires.HiresFix).

The values are plain GenerationParams fields (``hires``, ``hires_scale``, ``hires_width``, ``hires_height``,
``hires_steps``, ``hires_denoise``, ``hires_upscaler``). "Resize to" is A1111's "Resize width to"/"Resize height
to" (``Hires resize``): 0 x 0 uses the scale; one side 0 follows the aspect ratio; both set upscale to cover and
crop centrally (engine.hires.HiresFix.sizes). A line under the controls says what the result will be. When the
engine has no hires fix the section stays visible but disabled, saying so.
"""

from __future__ import annotations

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QLabel,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import editing

NO_ENGINE_HIRES = "Hires fix needs an engine with GenerationRequest.hires (not in this build)"
MAX_RESIZE = 2048  # the app's largest side (params_panel.MAX_SIZE, engine.request.MAX_SIDE)
RESIZE_STEP = 8  # A1111's "Resize width to"/"Resize height to" sliders step by 8 (the latents are size // 8)


def snap_resize(value: int) -> int:
    """The nearest allowed "Resize to" side: 0 or a multiple of 8 up to MAX_RESIZE."""
    return max(0, min(MAX_RESIZE, round(int(value) / RESIZE_STEP) * RESIZE_STEP))


def hires_summary(width: int, height: int, scale: float, resize_w: int, resize_h: int) -> str:
    """What a hires fix of a width x height first pass makes, in words (engine.hires.HiresFix.sizes)."""
    try:
        from engine.hires import HiresFix

        (up_w, up_h), (final_w, final_h) = HiresFix(scale=scale, width=resize_w, height=resize_h).sizes(width,
                                                                                                       height)
    except (ImportError, ValueError):
        return ""
    if resize_w or resize_h:
        how = f"resized from {width}x{height}"
        if (up_w, up_h) != (final_w, final_h):
            how += f", upscaled to {up_w}x{up_h} and cropped"
    else:
        how = f"{width}x{height} × {scale:g}"
    text = f"Result: {final_w}x{final_h} ({how})"
    if max(up_w, up_h) > MAX_RESIZE or min(final_w, final_h) < 64:
        text += f": too large or small, sides must stay from 64 to {MAX_RESIZE}"
    return text


class HiresSection(QWidget):
    """A checkable "Hires fix" row and, while it is on, scale, steps, denoise and upscaler."""

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("hiresSection")
        self.check = QCheckBox("Hires fix", self)
        self.check.setObjectName("hiresCheck")
        self.check.setToolTip("Generate at the size above, upscale, then refine at the larger size (A1111's "
                              "hires fix): more detail than generating large at once")
        self.details = QWidget(self)
        self.scale_spin = QDoubleSpinBox(self.details)
        self.scale_spin.setObjectName("hiresScaleSpin")
        self.scale_spin.setRange(1.0, 4.0)
        self.scale_spin.setSingleStep(0.25)
        self.scale_spin.setDecimals(2)
        self.scale_spin.setValue(2.0)
        self.scale_spin.setToolTip("Hires upscale: the final size is the size above times this (unused while "
                                   "Resize to is set)")
        self.resize_width_spin = self._resize_spin("hiresResizeWidthSpin", "width")
        self.resize_height_spin = self._resize_spin("hiresResizeHeightSpin", "height")
        resize_row = QWidget(self.details)
        row = QHBoxLayout(resize_row)
        row.setContentsMargins(0, 0, 0, 0)
        row.addWidget(self.resize_width_spin, 1)
        row.addWidget(QLabel("x", resize_row))
        row.addWidget(self.resize_height_spin, 1)
        self.summary_label = QLabel(self.details)
        self.summary_label.setObjectName("hiresSummaryLabel")
        self.summary_label.setWordWrap(True)
        self._base = (512, 512)
        self.steps_spin = QSpinBox(self.details)
        self.steps_spin.setObjectName("hiresStepsSpin")
        self.steps_spin.setRange(0, 150)
        self.steps_spin.setSpecialValueText("same")
        self.steps_spin.setToolTip("Hires steps: sampler steps of the second pass (same: the first pass's)")
        self.denoise_spin = QDoubleSpinBox(self.details)
        self.denoise_spin.setObjectName("hiresDenoiseSpin")
        self.denoise_spin.setRange(0.01, 1.0)
        self.denoise_spin.setSingleStep(0.05)
        self.denoise_spin.setValue(0.7)
        self.denoise_spin.setToolTip("Denoising strength of the second pass")
        self.upscaler_combo = QComboBox(self.details)
        self.upscaler_combo.setObjectName("hiresUpscalerCombo")
        for name in editing.hires_upscalers():
            self.upscaler_combo.addItem(name, name)
        self.upscaler_combo.setToolTip("Latent modes resize the latents; Lanczos decodes, resizes the image "
                                       "and encodes it again")
        form = QFormLayout(self.details)
        form.setContentsMargins(12, 0, 0, 0)
        form.setVerticalSpacing(6)
        form.addRow("Upscale by", self.scale_spin)
        form.addRow("Resize to", resize_row)
        form.addRow("Hires steps", self.steps_spin)
        form.addRow("Denoise", self.denoise_spin)
        form.addRow("Upscaler", self.upscaler_combo)
        form.addRow(self.summary_label)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addWidget(self.check)
        layout.addWidget(self.details)
        self.details.setVisible(False)
        self.check.toggled.connect(self.details.setVisible)
        for spin in (self.scale_spin, self.resize_width_spin, self.resize_height_spin):
            spin.valueChanged.connect(self._update_summary)
        self._update_summary()
        if not editing.engine_has_hires():
            self.check.setEnabled(False)
            self.check.setToolTip(NO_ENGINE_HIRES)

    def _resize_spin(self, name: str, side: str) -> QSpinBox:
        spin = QSpinBox(self.details)
        spin.setObjectName(name)
        spin.setRange(0, MAX_RESIZE)
        spin.setSingleStep(RESIZE_STEP)
        spin.setToolTip(f"Resize {side} to (A1111's Hires resize): 0 = use the scale; with the other side 0 "
                        "the aspect ratio is kept, with both set the image is upscaled to cover and cropped")
        spin.editingFinished.connect(lambda: spin.setValue(snap_resize(spin.value())))  # typed: multiple of 8
        return spin

    def resize(self) -> tuple[int, int]:
        """The "Resize to" width and height as the engine takes them (multiples of 8; 0 x 0: use the scale)."""
        return snap_resize(self.resize_width_spin.value()), snap_resize(self.resize_height_spin.value())

    def set_base_size(self, width: int, height: int) -> None:
        """The first pass's size (the panel's width x height), for the result line."""
        self._base = (int(width), int(height))
        self._update_summary()

    def _update_summary(self) -> None:
        resize_w, resize_h = self.resize()
        self.scale_spin.setEnabled(not (resize_w or resize_h))  # Resize to takes over, as in A1111
        self.summary_label.setText(hires_summary(*self._base, round(self.scale_spin.value(), 2), resize_w,
                                                 resize_h))

    def values(self) -> dict:
        resize_w, resize_h = self.resize()
        return {"hires": self.check.isChecked(), "hires_scale": round(self.scale_spin.value(), 2),
                "hires_width": resize_w, "hires_height": resize_h,
                "hires_steps": self.steps_spin.value(), "hires_denoise": round(self.denoise_spin.value(), 2),
                "hires_upscaler": self.upscaler_combo.currentData()}

    def set_values(self, hires: bool | None = None, hires_scale: float | None = None,
                   hires_steps: int | None = None, hires_denoise: float | None = None,
                   hires_upscaler: str | None = None, hires_width: int | None = None,
                   hires_height: int | None = None) -> list[str]:
        """Set what is given; returns notes for values that could not be set as given (a "Resize to" side
        becomes the nearest multiple of 8 up to MAX_RESIZE, said)."""
        notes: list[str] = []
        if hires is not None:
            if hires and not self.check.isEnabled():
                notes.append("hires fix is not available in this build")
            else:
                self.check.setChecked(bool(hires))
        for spin, value, label in ((self.scale_spin, hires_scale, "hires upscale"),
                                   (self.steps_spin, hires_steps, "hires steps"),
                                   (self.denoise_spin, hires_denoise, "hires denoise")):
            if value is not None:
                spin.setValue(value)
                if abs(spin.value() - value) > 1e-6:
                    notes.append(f"{label} {value} -> {spin.value():g}")
        for spin, value, label in ((self.resize_width_spin, hires_width, "hires resize width"),
                                   (self.resize_height_spin, hires_height, "hires resize height")):
            if value is not None:
                used = snap_resize(value)
                spin.setValue(used)
                if used != value:
                    notes.append(f"{label} {value} -> {used} (0 or multiples of {RESIZE_STEP} up to {MAX_RESIZE})")
        if hires_upscaler is not None:
            index = self.upscaler_combo.findData(hires_upscaler)
            if index >= 0:
                self.upscaler_combo.setCurrentIndex(index)
            else:
                notes.append(f"hires upscaler {hires_upscaler!r} is not available")
        return notes
