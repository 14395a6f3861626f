"""The side panel's "Hires fix" section (A1111's txt2img hires fix: a first pass at the chosen size, an
upscale, then an img2img pass with its own steps and denoising strength; engine.hires.HiresFix).

The values are plain GenerationParams fields (``hires``, ``hires_scale``, ``hires_steps``, ``hires_denoise``,
``hires_upscaler``). When the engine has no hires fix the section stays visible but disabled, saying so.
"""

from __future__ import annotations

from PySide6.QtWidgets import (
    QCheckBox,
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QSpinBox,
    QVBoxLayout,
    QWidget,
)

from .. import editing

NO_ENGINE_HIRES = "Hires fix needs an engine with GenerationRequest.hires (not in this build)"


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
        self.scale_spin.setToolTip("Hires upscale: the final size is the size above times this")
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
        form.addRow("Hires steps", self.steps_spin)
        form.addRow("Denoise", self.denoise_spin)
        form.addRow("Upscaler", self.upscaler_combo)
        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(6)
        layout.addWidget(self.check)
        layout.addWidget(self.details)
        self.details.setVisible(False)
        self.check.toggled.connect(self.details.setVisible)
        if not editing.engine_has_hires():
            self.check.setEnabled(False)
            self.check.setToolTip(NO_ENGINE_HIRES)

    def values(self) -> dict:
        return {"hires": self.check.isChecked(), "hires_scale": round(self.scale_spin.value(), 2),
                "hires_steps": self.steps_spin.value(), "hires_denoise": round(self.denoise_spin.value(), 2),
                "hires_upscaler": self.upscaler_combo.currentData()}

    def set_values(self, hires: bool | None = None, hires_scale: float | None = None,
                   hires_steps: int | None = None, hires_denoise: float | None = None,
                   hires_upscaler: str | None = None) -> list[str]:
        """Set what is given; returns notes for values that could not be set as given."""
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
        if hires_upscaler is not None:
            index = self.upscaler_combo.findData(hires_upscaler)
            if index >= 0:
                self.upscaler_combo.setCurrentIndex(index)
            else:
                notes.append(f"hires upscaler {hires_upscaler!r} is not available")
        return notes
