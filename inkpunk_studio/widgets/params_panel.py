"""Sampler and schedule, steps, CFG, seed (dice / recycle), size (multiples of 64 with aspect presets), batch
count, and a collapsible "Advanced" section: clip skip and the variation seed and strength (A1111's subseed).

Every control only accepts valid values (ranges, a validator on the size boxes), so a Generate click always
describes a request the engine accepts.
"""

from __future__ import annotations

import math

from PySide6.QtCore import Qt, Signal
from PySide6.QtGui import QAction, QValidator
from PySide6.QtWidgets import (
    QComboBox,
    QDoubleSpinBox,
    QFormLayout,
    QHBoxLayout,
    QMenu,
    QSpinBox,
    QToolButton,
    QVBoxLayout,
    QWidget,
)

import engine

from .hires_section import HiresSection
from .seed_spin import MAX_SEED, RANDOM, SeedSpinBox, parse_int

SIZE_STEP = 64
MIN_SIZE, MAX_SIZE = 64, 2048  # the engine's limits; the list offers 256..2048, smaller ones can be typed
LISTED_SIZES = tuple(range(256, MAX_SIZE + 1, SIZE_STEP))
ASPECT_PRESETS = (("Square", 512, 512), ("Portrait 2:3", 512, 768), ("Landscape 3:2", 768, 512),
                  ("Portrait 3:4", 576, 768), ("Landscape 4:3", 768, 576), ("Wide 16:9", 896, 512))
MAX_BATCH = 16
MAX_CLIP_SKIP = 12  # engine.request.MAX_CLIP_SKIP
VARIATION_DECIMALS = 2  # A1111's slider step is 0.01


def nearest_size(value: int) -> int:
    """The closest allowed side length (multiple of 64 within 64..2048)."""
    return max(MIN_SIZE, min(MAX_SIZE, round(value / SIZE_STEP) * SIZE_STEP))


def size_note(label: str, typed: int, used: int) -> str:
    """Why a typed side length became another one, for the status line."""
    if typed > MAX_SIZE:
        why = f"the largest size is {MAX_SIZE}"
    elif typed < MIN_SIZE:
        why = f"the smallest size is {MIN_SIZE}"
    else:
        why = f"sizes are multiples of {SIZE_STEP}"
    return f"{label} {typed} -> {used} ({why})"


class SizeValidator(QValidator):
    """Up to four decimal digits; multiples of 64 in range are acceptable, anything else is intermediate and
    ``fixup`` (on Enter or leaving the box) turns it into the nearest allowed size, clamped to 64..2048, and
    reports the change with ``adjusted(typed, used)``. (Refusing the key that makes 409 into 4096 left the box
    at 409, which then became 384: a surprising number.)"""

    adjusted = Signal(int, int)

    def validate(self, text: str, pos: int) -> object:
        # Never let an exception escape here: Qt calls this from C++ and a Python error there crashes.
        if text == "":
            return QValidator.State.Intermediate, text, pos
        value = parse_int(text)
        if value is None or len(text) > 4:
            return QValidator.State.Invalid, text, pos
        if MIN_SIZE <= value <= MAX_SIZE and value % SIZE_STEP == 0:
            return QValidator.State.Acceptable, text, pos
        return QValidator.State.Intermediate, text, pos

    def fixup(self, text: str) -> str:
        value = parse_int(text)
        if value is None:
            return text
        used = nearest_size(value)
        if used != value:
            self.adjusted.emit(value, used)
        return str(used)


class SizeCombo(QComboBox):
    """Editable combo of side lengths; ``value()`` is always a valid int."""

    valueChanged = Signal(int)
    noteShown = Signal(str)  # a typed size had to change ("width 4096 -> 2048 (...)")

    def __init__(self, object_name: str, parent: QWidget | None = None, label: str = "size") -> None:
        super().__init__(parent)
        self.setObjectName(object_name)
        self._label = label
        self.setEditable(True)
        self.setInsertPolicy(QComboBox.InsertPolicy.NoInsert)
        for size in LISTED_SIZES:
            self.addItem(str(size))
        validator = SizeValidator(self)
        validator.adjusted.connect(self._adjusted)
        self.setValidator(validator)
        self._value = 512
        self.setCurrentText("512")
        self.currentTextChanged.connect(self._text_changed)
        self.lineEdit().editingFinished.connect(self._finish_edit)

    def value(self) -> int:
        return self._value

    def _adjusted(self, typed: int, used: int) -> None:
        self.noteShown.emit(size_note(self._label, typed, used))

    def set_value(self, value: int) -> int:
        """Show ``value`` rounded to the nearest allowed size; returns what was set."""
        value = nearest_size(value)
        self.setCurrentText(str(value))
        self._text_changed(str(value))
        return value

    def _text_changed(self, text: str) -> None:
        value = parse_int(text)
        valid = value is not None and MIN_SIZE <= value <= MAX_SIZE and value % SIZE_STEP == 0
        if valid and value != self._value:
            self._value = value
            self.valueChanged.emit(self._value)

    def commit(self) -> None:
        """Apply a half-typed size now (as leaving the box would), e.g. when Generate is pressed meanwhile."""
        self._finish_edit()

    def _finish_edit(self) -> None:  # leaving the box shows the value in effect (also "５１２" as "512")
        text = self.currentText()
        if text != str(self._value):
            value = parse_int(text)
            if value is not None and text.strip():
                self.set_value(value)  # fixup did not run (e.g. the text was acceptable): same rules
                used = self._value
                if used != value:
                    self._adjusted(value, used)
            else:
                self.setCurrentText(str(self._value))


class ParamsPanel(QWidget):
    """The generation settings besides the prompts. ``noteShown`` says when a typed value had to change."""

    noteShown = Signal(str)

    def __init__(self, samplers: tuple[str, ...] = engine.SAMPLERS,
                 display_names: dict[str, str] = engine.DISPLAY_NAMES, parent: QWidget | None = None, *,
                 schedules: tuple[str, ...] = engine.SCHEDULE_NAMES,
                 schedule_labels: dict[str, str] = engine.SCHEDULE_LABELS,
                 default_schedules: dict[str, str | None] = engine.DEFAULT_SCHEDULE) -> None:
        """``default_schedules``: what "Automatic" means per sampler; None marks a sampler that walks its own
        timesteps (DDIM, DDPM), for which the schedule combo is disabled."""
        super().__init__(parent)
        self.setObjectName("paramsPanel")
        self._last_seed: int | None = None
        self._schedule_labels = dict(schedule_labels)
        self._default_schedules = dict(default_schedules)
        self._chosen_schedule = "automatic"  # kept while a timestep sampler disables the combo
        self._switching = False

        self.sampler_combo = QComboBox(self)
        self.sampler_combo.setObjectName("samplerCombo")
        for name in samplers:
            self.sampler_combo.addItem(display_names.get(name, name), name)
        self.schedule_combo = QComboBox(self)
        self.schedule_combo.setObjectName("scheduleCombo")
        for name in schedules:
            self.schedule_combo.addItem(schedule_labels.get(name, name), name)
        self.sampler_combo.currentIndexChanged.connect(self._sampler_changed)
        self.schedule_combo.currentIndexChanged.connect(self._schedule_chosen)

        self.steps_spin = QSpinBox(self)
        self.steps_spin.setObjectName("stepsSpin")
        self.steps_spin.setRange(1, 150)
        self.steps_spin.setValue(25)

        self.cfg_spin = QDoubleSpinBox(self)
        self.cfg_spin.setObjectName("cfgSpin")
        self.cfg_spin.setRange(1.0, 30.0)
        self.cfg_spin.setSingleStep(0.5)
        self.cfg_spin.setDecimals(1)
        self.cfg_spin.setValue(7.5)
        self.cfg_spin.setToolTip("Classifier-free guidance: how closely to follow the prompt (1 = off)")

        self.seed_spin = SeedSpinBox(self)
        self.seed_spin.setObjectName("seedSpin")
        self.seed_spin.setToolTip("Random, or a fixed seed to repeat an image")
        self.random_seed_button = self._tool_button("randomSeedButton", "⚄", "Random seed every time")
        self.random_seed_button.clicked.connect(self.randomize_seed)
        self.reuse_seed_button = self._tool_button("reuseSeedButton", "♻", "Reuse the last image's seed")
        self.reuse_seed_button.clicked.connect(self.reuse_last_seed)
        self.reuse_seed_button.setEnabled(False)

        self.width_combo = SizeCombo("widthCombo", self, "width")
        self.height_combo = SizeCombo("heightCombo", self, "height")
        self.width_combo.noteShown.connect(self.noteShown)
        self.height_combo.noteShown.connect(self.noteShown)
        self.swap_button = self._tool_button("swapSizeButton", "⇄", "Swap width and height")
        self.swap_button.clicked.connect(self.swap_size)
        self.aspect_button = self._tool_button("aspectButton", "Aspect", "Size presets")
        self.aspect_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        menu = QMenu(self.aspect_button)
        for label, w, h in ASPECT_PRESETS:
            action = QAction(f"{label}  ({w}×{h})", menu)
            action.setData((w, h))
            action.triggered.connect(self._aspect_chosen)
            menu.addAction(action)
        self.aspect_button.setMenu(menu)

        self.batch_spin = QSpinBox(self)
        self.batch_spin.setObjectName("batchSpin")
        self.batch_spin.setRange(1, MAX_BATCH)
        self.batch_spin.setToolTip("Images to make one after another (seed, seed + 1, …)")

        self._build_advanced()
        self.hires_section = HiresSection(self)
        for combo in (self.width_combo, self.height_combo):  # the hires result line follows the size
            combo.valueChanged.connect(lambda _v: self.hires_section.set_base_size(
                self.width_combo.value(), self.height_combo.value()))

        form = QFormLayout(self)
        form.setContentsMargins(0, 0, 0, 0)
        form.setHorizontalSpacing(10)
        form.setVerticalSpacing(6)
        form.addRow("Sampler", self.sampler_combo)
        form.addRow("Schedule", self.schedule_combo)
        form.addRow("Steps", self.steps_spin)
        form.addRow("CFG scale", self.cfg_spin)
        form.addRow("Seed", self._row(self.seed_spin, self.random_seed_button, self.reuse_seed_button))
        form.addRow("Size", self._row(self.width_combo, self.swap_button, self.height_combo, self.aspect_button))
        form.addRow("Images", self.batch_spin)
        form.addRow(self.hires_section)
        form.addRow(self.advanced_button)
        form.addRow(self.advanced_section)
        self._sampler_changed()

    def _build_advanced(self) -> None:
        self.advanced_button = QToolButton(self)
        self.advanced_button.setObjectName("advancedButton")
        self.advanced_button.setText("Advanced")
        self.advanced_button.setCheckable(True)
        self.advanced_button.setToolButtonStyle(Qt.ToolButtonStyle.ToolButtonTextBesideIcon)
        self.advanced_button.setArrowType(Qt.ArrowType.RightArrow)
        self.advanced_button.setAutoRaise(True)
        self.advanced_button.toggled.connect(self.set_advanced_visible)

        self.advanced_section = QWidget(self)
        self.advanced_section.setObjectName("advancedSection")
        self.clip_skip_spin = QSpinBox(self.advanced_section)
        self.clip_skip_spin.setObjectName("clipSkipSpin")
        self.clip_skip_spin.setRange(1, MAX_CLIP_SKIP)
        self.clip_skip_spin.setToolTip("Use the output of an earlier CLIP layer (1 = the last; many anime "
                                       "models want 2)")
        self.variation_seed_spin = SeedSpinBox(self.advanced_section)
        self.variation_seed_spin.setObjectName("variationSeedSpin")
        self.variation_seed_spin.setToolTip("The seed of the noise mixed in (Random: a new one every time)")
        self.variation_strength_spin = QDoubleSpinBox(self.advanced_section)
        self.variation_strength_spin.setObjectName("variationStrengthSpin")
        self.variation_strength_spin.setRange(0.0, 1.0)
        self.variation_strength_spin.setSingleStep(0.05)
        self.variation_strength_spin.setDecimals(VARIATION_DECIMALS)
        self.variation_strength_spin.setToolTip("How much of the variation seed's noise to blend in (0 = off): "
                                                "small values give variations of the same image")
        inner = QFormLayout()
        inner.setContentsMargins(12, 0, 0, 0)
        inner.setVerticalSpacing(6)
        inner.addRow("Clip skip", self.clip_skip_spin)
        inner.addRow("Variation seed", self.variation_seed_spin)
        inner.addRow("Variation strength", self.variation_strength_spin)
        box = QVBoxLayout(self.advanced_section)
        box.setContentsMargins(0, 0, 0, 0)
        box.addLayout(inner)
        self.advanced_section.setVisible(False)

    def set_advanced_visible(self, visible: bool) -> None:
        """Expand or collapse the Advanced section."""
        self.advanced_button.blockSignals(True)
        self.advanced_button.setChecked(visible)
        self.advanced_button.blockSignals(False)
        self.advanced_button.setArrowType(Qt.ArrowType.DownArrow if visible else Qt.ArrowType.RightArrow)
        self.advanced_section.setVisible(visible)

    # --- sampler and schedule
    def _sampler_changed(self, *_: object) -> None:
        sampler = self.sampler_combo.currentData()
        default = self._default_schedules.get(sampler)
        own_steps = sampler in self._default_schedules and default is None
        auto = self.schedule_combo.findData("automatic")
        if auto >= 0:
            label = self._schedule_labels.get("automatic", "Automatic")
            self.schedule_combo.setItemText(
                auto, label if default is None else f"{label} ({self._schedule_labels.get(default, default)})")
        self._switching = True
        if own_steps:
            self._show_schedule("automatic")
            self.schedule_combo.setToolTip(f"{self.sampler_combo.currentText()} walks its own timesteps: "
                                           "the schedule does not apply")
        else:
            self._show_schedule(self._chosen_schedule)
            self.schedule_combo.setToolTip("How the noise levels are spaced over the steps "
                                           "(Automatic: the sampler's usual one)")
        self.schedule_combo.setEnabled(not own_steps)
        self._switching = False

    def _schedule_chosen(self, *_: object) -> None:
        if not self._switching and self.schedule_combo.isEnabled():
            self._chosen_schedule = self.schedule_combo.currentData()

    def _show_schedule(self, name: str) -> None:
        index = self.schedule_combo.findData(name)
        self.schedule_combo.setCurrentIndex(max(index, 0))

    def schedule(self) -> str:
        """The schedule in effect: "automatic" for samplers that walk their own timesteps."""
        return self.schedule_combo.currentData() if self.schedule_combo.isEnabled() else "automatic"

    def _tool_button(self, name: str, text: str, tip: str) -> QToolButton:
        button = QToolButton(self)
        button.setObjectName(name)
        button.setText(text)
        button.setToolTip(tip)
        return button

    def _row(self, *widgets: QWidget) -> QWidget:
        box = QWidget(self)
        row = QHBoxLayout(box)
        row.setContentsMargins(0, 0, 0, 0)
        row.setSpacing(4)
        for i, widget in enumerate(widgets):
            row.addWidget(widget, 1 if i == 0 or isinstance(widget, SizeCombo) else 0)
        return box

    # --- seed buttons
    def randomize_seed(self) -> None:
        self.seed_spin.setValue(RANDOM)

    def reuse_last_seed(self) -> None:
        if self._last_seed is not None:
            self.seed_spin.setValue(self._last_seed)

    def set_last_seed(self, seed: int) -> None:
        self._last_seed = int(seed)
        self.reuse_seed_button.setEnabled(True)
        self.reuse_seed_button.setToolTip(f"Reuse the last image's seed ({seed})")

    # --- size
    def set_size(self, width: int, height: int) -> tuple[int, int]:
        return self.width_combo.set_value(width), self.height_combo.set_value(height)

    def swap_size(self) -> None:
        self.set_size(self.height_combo.value(), self.width_combo.value())

    def _aspect_chosen(self) -> None:
        action = self.sender()
        if isinstance(action, QAction):
            self.set_size(*action.data())

    # --- values
    def commit_edits(self) -> None:
        """Apply whatever is typed but not yet confirmed (a size box showing 4096 while its value is still
        512), so a Generate pressed from the keyboard uses what the boxes show."""
        for spin in (self.steps_spin, self.cfg_spin, self.batch_spin, self.clip_skip_spin,
                     self.variation_seed_spin, self.variation_strength_spin):
            spin.interpretText()
        self.width_combo.commit()
        self.height_combo.commit()

    def values(self) -> dict:
        """GenerationParams fields: sampler, schedule, steps, cfg_scale, seed, width, height, batch_count,
        clip_skip, variation_seed (None: random), variation_strength, and the hires fix's (hires_*)."""
        return {**self.hires_section.values(), "sampler": self.sampler_combo.currentData(), "schedule": self.schedule(),
                "steps": self.steps_spin.value(), "cfg_scale": round(self.cfg_spin.value(), 2),
                "seed": self.seed_spin.seed(), "width": self.width_combo.value(),
                "height": self.height_combo.value(), "batch_count": self.batch_spin.value(),
                "clip_skip": self.clip_skip_spin.value(), "variation_seed": self.variation_seed_spin.seed(),
                "variation_strength": round(self.variation_strength_spin.value(), VARIATION_DECIMALS)}

    def set_values(self, *, sampler: str | None = None, steps: int | None = None, cfg_scale: float | None = None,
                   seed: int | None = None, width: int | None = None, height: int | None = None,
                   batch_count: int | None = None, random_seed: bool = False, schedule: str | None = None,
                   clip_skip: int | None = None, variation_seed: int | None = None,
                   variation_strength: float | None = None, random_variation_seed: bool = False,
                   **hires: object) -> list[str]:
        """Set what is given; returns notes about values that had to be adjusted to fit the controls or could
        not be set. An old combined sampler name ("dpmpp_2m_karras") sets its sampler and schedule. ``hires``:
        HiresSection.set_values arguments (hires, hires_scale, hires_width, hires_height, hires_steps,
        hires_denoise, hires_upscaler)."""
        notes: list[str] = self.hires_section.set_values(**hires)
        if sampler is not None and sampler in engine.LEGACY_NAMES:
            sampler, implied = engine.LEGACY_NAMES[sampler]
            schedule = implied if schedule in (None, "automatic") else schedule
        if sampler is not None:
            index = self.sampler_combo.findData(sampler)
            if index >= 0:
                self.sampler_combo.setCurrentIndex(index)
            else:
                notes.append(f"sampler {sampler!r} is not available")
        if schedule is not None:
            notes += self._set_schedule(schedule)
        notes += self._set_advanced(clip_skip, variation_seed, variation_strength, random_variation_seed)
        for spin, value, label in ((self.steps_spin, steps, "steps"), (self.batch_spin, batch_count, "images")):
            if value is not None:
                spin.setValue(int(value))
                if spin.value() != int(value):
                    notes.append(f"{label} {value} -> {spin.value()}")
        if cfg_scale is not None:
            if not math.isfinite(float(cfg_scale)):  # QDoubleSpinBox would show nan as its maximum, 30
                notes.append(f"CFG scale {cfg_scale} is not a number, kept {self.cfg_spin.value():g}")
            else:
                self.cfg_spin.setValue(float(cfg_scale))
                if abs(self.cfg_spin.value() - float(cfg_scale)) > 1e-6:
                    notes.append(f"CFG scale {cfg_scale} -> {self.cfg_spin.value():g}")
        if random_seed:
            self.seed_spin.setValue(RANDOM)
        elif seed is not None:
            self.seed_spin.setValue(seed)
            if self.seed_spin.value() != int(seed):
                why = f"seeds go up to {MAX_SEED}" if int(seed) > MAX_SEED else "not a seed"
                notes.append(f"seed {seed} -> {self.seed_spin.textFromValue(self.seed_spin.value())} ({why})")
        for combo, value, label in ((self.width_combo, width, "width"), (self.height_combo, height, "height")):
            if value is not None and combo.set_value(int(value)) != int(value):
                notes.append(f"{label} {value} -> {combo.value()}")
        return notes

    def _set_schedule(self, schedule: str) -> list[str]:
        if self.schedule_combo.findData(schedule) < 0:
            return [f"schedule {schedule!r} is not available"]
        if not self.schedule_combo.isEnabled():
            # a timestep sampler ignores the schedule: keep the choice for the next sampler, say nothing
            if schedule != "automatic":
                self._chosen_schedule = schedule
            return []
        self._chosen_schedule = schedule
        self._show_schedule(schedule)
        return []

    def _set_advanced(self, clip_skip: int | None, variation_seed: int | None, variation_strength: float | None,
                      random_variation_seed: bool) -> list[str]:
        notes: list[str] = []
        if clip_skip is not None:
            self.clip_skip_spin.setValue(int(clip_skip))
            if self.clip_skip_spin.value() != int(clip_skip):
                notes.append(f"clip skip {clip_skip} -> {self.clip_skip_spin.value()}")
        if random_variation_seed:
            self.variation_seed_spin.setValue(RANDOM)
        elif variation_seed is not None:
            self.variation_seed_spin.setValue(variation_seed)
            if self.variation_seed_spin.value() != int(variation_seed):
                notes.append(f"variation seed {variation_seed} -> "
                             f"{self.variation_seed_spin.textFromValue(self.variation_seed_spin.value())}")
        if variation_strength is not None:
            if not math.isfinite(float(variation_strength)):
                notes.append(f"variation strength {variation_strength} is not a number")
            else:
                self.variation_strength_spin.setValue(float(variation_strength))
                if abs(self.variation_strength_spin.value() - float(variation_strength)) > 1e-9:
                    notes.append(f"variation strength {variation_strength} -> "
                                 f"{self.variation_strength_spin.value():g}")
        if self.clip_skip_spin.value() != 1 or self.variation_strength_spin.value() > 0:
            self.set_advanced_visible(True)  # a restored setting that changes the image is in view
        return notes
