"""A spin box for seeds: 64-bit values (QSpinBox stops at 2**31 - 1) and -1 shown as "Random"."""

from __future__ import annotations

from PySide6.QtCore import Signal
from PySide6.QtGui import QValidator
from PySide6.QtWidgets import QAbstractSpinBox, QWidget

RANDOM = -1
MAX_SEED = 2**63 - 1  # the engine's limit (torch generators take 64-bit seeds)
_RANDOM_TEXT = "Random"


def parse_int(text: str) -> int | None:
    """A non-negative integer typed as decimal digits, else None; never raises.

    ``str.isdigit()`` also accepts superscripts and circled numbers (``²``, ``①``, on a French keyboard's
    ``²`` key) that ``int()`` refuses, and an exception inside a Qt ``validate()`` takes the app down.
    ``isdecimal()`` is exactly what ``int()`` reads, so full-width digits (``５１２``) still work.
    """
    text = text.strip()
    if not text or not text.isdecimal():
        return None
    try:
        return int(text)
    except ValueError:
        return None


class SeedSpinBox(QAbstractSpinBox):
    """Integer seed from -1 (random) to MAX_SEED. ``value()`` is an int; ``valueChanged`` carries it."""

    valueChanged = Signal(object)  # Python int: Signal(int) would be 32-bit

    def __init__(self, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self._value = RANDOM
        self.setAccelerated(True)
        self.setCorrectionMode(QAbstractSpinBox.CorrectionMode.CorrectToPreviousValue)
        self.lineEdit().setText(self.textFromValue(self._value))
        self.lineEdit().textEdited.connect(self._text_edited)
        self.editingFinished.connect(self._sync_text)

    def value(self) -> int:
        return self._value

    def setValue(self, value: int) -> None:
        value = max(RANDOM, min(MAX_SEED, int(value)))
        changed = value != self._value
        self._value = value
        self._sync_text()
        if changed:
            self.valueChanged.emit(value)

    def seed(self) -> int | None:
        """The seed for a request: None when random."""
        return None if self._value == RANDOM else self._value

    @staticmethod
    def textFromValue(value: int) -> str:
        return _RANDOM_TEXT if value == RANDOM else str(value)

    @staticmethod
    def valueFromText(text: str) -> int | None:
        text = text.strip()
        if text.lower() == _RANDOM_TEXT.lower() or text == "-1":
            return RANDOM
        value = parse_int(text)
        return value if value is not None and value <= MAX_SEED else None

    def validate(self, text: str, pos: int) -> object:
        # Never let an exception escape here: Qt calls this from C++ and a Python error there crashes.
        stripped = text.strip()
        if self.valueFromText(stripped) is not None:
            return QValidator.State.Acceptable, text, pos
        if stripped == "" or stripped == "-" or _RANDOM_TEXT.lower().startswith(stripped.lower()):
            return QValidator.State.Intermediate, text, pos
        return QValidator.State.Invalid, text, pos

    def fixup(self, text: str) -> str:
        return self.textFromValue(self._value)

    def stepBy(self, steps: int) -> None:
        self.setValue(self._value + steps)
        self.selectAll()

    def stepEnabled(self) -> QAbstractSpinBox.StepEnabledFlag:
        flags = QAbstractSpinBox.StepEnabledFlag.StepNone
        if self._value > RANDOM:
            flags |= QAbstractSpinBox.StepEnabledFlag.StepDownEnabled
        if self._value < MAX_SEED:
            flags |= QAbstractSpinBox.StepEnabledFlag.StepUpEnabled
        return flags

    def _text_edited(self, text: str) -> None:
        value = self.valueFromText(text)
        if value is not None and value != self._value:
            self._value = value
            self.valueChanged.emit(value)

    def _sync_text(self) -> None:
        text = self.textFromValue(self._value)
        if self.lineEdit().text() != text:
            self.lineEdit().setText(text)
