"""Prompt and negative prompt, each with a live "N/75" token count (A1111's: in 75-token chunks, "80/150" once a
second chunk starts, BREAK included), syntax highlighting and Ctrl+Up/Down weight editing, plus the presets menu."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from PySide6.QtCore import Qt, QTimer, Signal
from PySide6.QtGui import QAction, QKeyEvent, QTextCursor
from PySide6.QtWidgets import QHBoxLayout, QLabel, QMenu, QPlainTextEdit, QToolButton, QVBoxLayout, QWidget

from ..tokens import count_prompt
from .prompt_syntax import PromptHighlighter, edit_attention, index_to_utf16, utf16_to_index

log = logging.getLogger(__name__)

CHUNK = 75  # CLIP's 77 positions minus BOS/EOS; longer prompts are encoded in 75-token windows


def token_label(count: int | None, limit: int | None = None) -> str:
    """"12/75", "80/150" (two chunks), or "–/75" when the count is unknown. ``limit`` defaults to the 75-token
    chunks ``count`` needs."""
    if count is None:
        return f"–/{CHUNK}"
    return f"{count}/{limit if limit is not None else max(1, math.ceil(count / CHUNK)) * CHUNK}"


def load_presets(path: str | Path) -> list[dict[str, str]]:
    """Presets from the JSON list in resources/ ({"name", "prompt", "negative_prompt"}); [] if unreadable."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        log.warning("no presets: %s", exc)
        return []
    presets = []
    for item in data if isinstance(data, list) else []:
        if isinstance(item, dict) and isinstance(item.get("name"), str) and isinstance(item.get("prompt"), str):
            presets.append({"name": item["name"], "prompt": item["prompt"],
                            "negative_prompt": str(item.get("negative_prompt", ""))})
    return presets


class PromptEdit(QPlainTextEdit):
    """Plain-text prompt box with A1111's syntax highlighted; Tab moves focus instead of inserting a tab;
    Ctrl+Up / Ctrl+Down raise / lower the weight of the selection or the word at the cursor by 0.1."""

    def __init__(self, object_name: str, placeholder: str, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName(object_name)
        self.setPlaceholderText(placeholder)
        self.setTabChangesFocus(True)
        self.highlighter = PromptHighlighter(self.document())

    def keyPressEvent(self, event: QKeyEvent) -> None:
        mods = event.modifiers() & ~Qt.KeyboardModifier.KeypadModifier
        ctrl = mods in (Qt.KeyboardModifier.ControlModifier, Qt.KeyboardModifier.MetaModifier)
        if ctrl and event.key() in (Qt.Key.Key_Up, Qt.Key.Key_Down):
            self.change_weight(event.key() == Qt.Key.Key_Up)
            event.accept()
            return
        super().keyPressEvent(event)

    def change_weight(self, up: bool) -> bool:
        """A1111's edit-attention on this box (one undo step); False when there was nothing to change."""
        text = self.toPlainText()
        cursor = self.textCursor()
        start = utf16_to_index(text, cursor.selectionStart())
        end = utf16_to_index(text, cursor.selectionEnd())
        edited = edit_attention(text, start, end, up)
        if edited is None:
            return False
        new_text, new_start, new_end = edited
        cursor.beginEditBlock()
        cursor.select(QTextCursor.SelectionType.Document)
        cursor.insertText(new_text)
        cursor.endEditBlock()
        cursor.setPosition(index_to_utf16(new_text, new_start))
        cursor.setPosition(index_to_utf16(new_text, new_end), QTextCursor.MoveMode.KeepAnchor)
        self.setTextCursor(cursor)
        return True


class PromptPanel(QWidget):
    """Two prompt boxes with token counters. ``tasks`` (AsyncTasks) counts tokens off the GUI thread."""

    presetApplied = Signal(str)

    def __init__(self, tasks, presets: list[dict[str, str]] | None = None, parent: QWidget | None = None) -> None:
        super().__init__(parent)
        self.setObjectName("promptPanel")
        self._tasks = tasks
        self._emphasis = "original"
        self.prompt_edit = PromptEdit("promptEdit", "nvinkpunk, a portrait of …", self)
        self.negative_edit = PromptEdit("negativePromptEdit", "What to avoid: blurry, lowres, …", self)
        self.prompt_edit.setMinimumHeight(96)
        self.negative_edit.setMinimumHeight(56)
        self.prompt_tokens = QLabel(token_label(None), self)
        self.prompt_tokens.setObjectName("promptTokens")
        self.negative_tokens = QLabel(token_label(None), self)
        self.negative_tokens.setObjectName("negativePromptTokens")
        for label in (self.prompt_tokens, self.negative_tokens):
            label.setProperty("role", "hint")
            label.setToolTip("CLIP tokens / limit of the current 75-token chunk")

        self.presets_button = QToolButton(self)
        self.presets_button.setObjectName("presetsButton")
        self.presets_button.setText("Presets")
        self.presets_button.setPopupMode(QToolButton.ToolButtonPopupMode.InstantPopup)
        self.presets_menu = QMenu(self.presets_button)
        self.presets_button.setMenu(self.presets_menu)
        self.set_presets(presets or [])

        layout = QVBoxLayout(self)
        layout.setContentsMargins(0, 0, 0, 0)
        layout.setSpacing(4)
        layout.addLayout(self._header("Prompt", self.prompt_tokens, self.presets_button))
        layout.addWidget(self.prompt_edit, 3)
        layout.addLayout(self._header("Negative prompt", self.negative_tokens))
        layout.addWidget(self.negative_edit, 2)

        self._timers = {}
        for edit, label in ((self.prompt_edit, self.prompt_tokens), (self.negative_edit, self.negative_tokens)):
            timer = QTimer(self)
            timer.setSingleShot(True)
            timer.setInterval(150)
            timer.timeout.connect(lambda e=edit, lab=label: self._start_count(e, lab))
            edit.textChanged.connect(timer.start)
            self._timers[edit] = timer
            timer.start()

    def _header(self, title: str, counter: QLabel, extra: QWidget | None = None) -> QHBoxLayout:
        row = QHBoxLayout()
        label = QLabel(title, self)
        label.setProperty("role", "section")
        row.addWidget(label)
        row.addStretch(1)
        if extra is not None:
            row.addWidget(extra)
        row.addWidget(counter)
        return row

    # --- values
    def prompt(self) -> str:
        return self.prompt_edit.toPlainText()

    def negative_prompt(self) -> str:
        return self.negative_edit.toPlainText()

    def set_prompts(self, prompt: str, negative_prompt: str) -> None:
        self.prompt_edit.setPlainText(prompt)
        self.negative_edit.setPlainText(negative_prompt)

    # --- presets
    def set_presets(self, presets: list[dict[str, str]]) -> None:
        self.presets_menu.clear()
        for preset in presets:
            action = QAction(preset["name"], self.presets_menu)
            action.setToolTip(preset["prompt"])
            action.setData(preset)
            action.triggered.connect(self._apply_preset_action)
            self.presets_menu.addAction(action)
        self.presets_button.setEnabled(bool(presets))

    def _apply_preset_action(self) -> None:
        action = self.sender()
        if isinstance(action, QAction):
            self.apply_preset(action.data())

    def apply_preset(self, preset: dict[str, str]) -> None:
        self.set_prompts(preset["prompt"], preset.get("negative_prompt", ""))
        self.presetApplied.emit(preset["name"])

    # --- token counting
    def set_emphasis(self, emphasis: str) -> None:
        """The emphasis mode the counters count with ("none" counts brackets as text); recounts."""
        if emphasis != self._emphasis:
            self._emphasis = emphasis
            for timer in self._timers.values():
                timer.start()

    def _start_count(self, edit: PromptEdit, label: QLabel) -> None:
        self._tasks.spawn(self._count(edit, label, edit.toPlainText(), self._emphasis))

    async def _count(self, edit: PromptEdit, label: QLabel, text: str, emphasis: str) -> None:
        try:
            count, limit = await self._tasks.run(count_prompt, text, emphasis)
        except Exception as exc:  # tokenizer files missing in a broken install: the counter just says "–"
            log.warning("token count unavailable: %s", exc, exc_info=True)
            count, limit = None, None
        if edit.toPlainText() != text or emphasis != self._emphasis:
            return  # typed on meanwhile; a newer count is on its way
        label.setText(token_label(count, limit))
        over = limit is not None and limit > CHUNK
        label.setProperty("state", "over" if over else "")
        label.setToolTip(f"{limit // CHUNK} chunks of 75 tokens, each encoded on its own (BREAK starts a new one)"
                         if over else "CLIP tokens / limit of the current 75-token chunk")
        label.style().unpolish(label)
        label.style().polish(label)
