"""The prompt box (issue 12 §5): A1111's token counter in 75-token chunks, syntax highlighting, and Ctrl+Up/Down
weight editing with real key events."""
# ruff: noqa: F811  (pytest fixtures imported from fixtures_app are redefined as test arguments)

from __future__ import annotations

import pytest
from fixtures_app import open_window  # noqa: F401  (a pytest fixture, used as an argument)
from PySide6.QtCore import Qt
from PySide6.QtGui import QTextCharFormat, QTextCursor

from engine.prompt import token_count
from inkpunk_studio.widgets.prompt_panel import PromptEdit, token_label
from inkpunk_studio.widgets.prompt_syntax import edit_attention

CTRL = Qt.KeyboardModifier.ControlModifier


@pytest.mark.parametrize(
    "text, start, end, up, expected",
    [
        # the word at the cursor gets a weight; the next press raises it; at 1.0 the brackets go
        ("a cat, dog", 3, 3, True, ("a (cat:1.1), dog", 3, 6)),
        ("a (cat:1.1), dog", 4, 4, True, ("a (cat:1.2), dog", 3, 6)),
        ("a (cat:1.1), dog", 4, 4, False, ("a cat, dog", 2, 5)),
        ("a cat, dog", 3, 3, False, ("a (cat:0.9), dog", 3, 6)),
        # a selection, its trailing space left out
        ("a big cat , dog", 2, 10, True, ("a (big cat:1.1) , dog", 3, 10)),
        # old-style emphasis is converted: ((cat)) is 1.21 -> 1.2, then raised
        ("a ((cat)), dog", 5, 5, True, ("a (cat:1.3), dog", 3, 6)),
        ("[cat]", 1, 4, True, ("cat", 0, 3)),
        # inside a bracket the whole bracket's text is the target
        ("(red fox:1.5)", 2, 2, False, ("(red fox:1.4)", 1, 8)),
        # an extra-network tag moves by 0.05
        ("x <lora:foo:0.8> y", 5, 5, True, ("x <lora:foo:0.85> y", 3, 11)),
        ("x <lora:foo:1> y", 5, 5, False, ("x <lora:foo:0.95> y", 3, 11)),
        ("", 0, 0, True, None),
        ("a, , b", 3, 3, True, None),
    ],
)
def test_edit_attention_as_a1111(text, start, end, up, expected):
    assert edit_attention(text, start, end, up) == expected


def _select(edit: PromptEdit, start: int, end: int) -> None:
    cursor = edit.textCursor()
    cursor.setPosition(start)
    cursor.setPosition(end, QTextCursor.MoveMode.KeepAnchor)
    edit.setTextCursor(cursor)


def test_ctrl_up_and_down_change_the_weight_with_real_keys(qtbot):
    edit = PromptEdit("promptEdit", "")
    qtbot.addWidget(edit)
    edit.show()
    edit.setPlainText("nvinkpunk, a cat, ink")
    _select(edit, 14, 14)  # in "cat"
    qtbot.keyClick(edit, Qt.Key.Key_Up, CTRL)
    assert edit.toPlainText() == "nvinkpunk, a (cat:1.1), ink"
    assert edit.textCursor().selectedText() == "cat"
    qtbot.keyClick(edit, Qt.Key.Key_Up, CTRL)
    assert edit.toPlainText() == "nvinkpunk, a (cat:1.2), ink"
    for _ in range(3):
        qtbot.keyClick(edit, Qt.Key.Key_Down, CTRL)
    assert edit.toPlainText() == "nvinkpunk, a (cat:0.9), ink"
    qtbot.keyClick(edit, Qt.Key.Key_Z, CTRL)  # each press is one undo step
    assert edit.toPlainText() == "nvinkpunk, a cat, ink"
    # a selection across words, and text after an emoji (Qt counts UTF-16 units)
    edit.setPlainText("🦊 red fox")
    _select(edit, 3, 10)
    qtbot.keyClick(edit, Qt.Key.Key_Down, CTRL)
    assert edit.toPlainText() == "🦊 (red fox:0.9)"
    assert edit.textCursor().selectedText() == "red fox"
    # plain Up still moves the cursor and changes nothing
    qtbot.keyClick(edit, Qt.Key.Key_Up)
    assert edit.toPlainText() == "🦊 (red fox:0.9)"


def test_highlighting_marks_weights_edits_tags_and_break(qtbot):
    edit = PromptEdit("promptEdit", "")
    qtbot.addWidget(edit)
    edit.setPlainText(r"a (cat:1.2) [dog:fox:5] <lora:ink:0.8> BREAK \(x\)")
    formats = edit.highlighter.formats
    ranges = {(r.start, r.length): QTextCharFormat(r.format)
              for r in edit.document().firstBlock().layout().formats()}
    text = edit.toPlainText()

    def fmt_at(substring: str):
        return ranges.get((text.index(substring), len(substring)))

    assert fmt_at("(") == formats["emphasis"]
    assert fmt_at("1.2") == formats["weight"]
    assert fmt_at("[") == formats["edit"] and fmt_at("]") == formats["edit"]
    assert fmt_at("<lora:ink:0.8>") == formats["network"]
    assert fmt_at("BREAK") == formats["keyword"]
    escaped = text.index(r"\(") + 1
    assert not any(start <= escaped < start + length for start, length in ranges)  # escaped: plain text


def test_token_counter_counts_a1111_chunks(qtbot, open_window):
    window = open_window()
    panel = window.prompt_panel
    long_prompt = ", ".join(["ink splatter"] * 30)  # longer than one chunk
    count, limit = token_count(long_prompt)
    assert 75 < count <= 150 and limit == 150
    panel.set_prompts(long_prompt, "cat BREAK dog")
    qtbot.waitUntil(lambda: panel.prompt_tokens.text() == f"{count}/150", timeout=20_000)
    # BREAK closes the first chunk: 75 + the one token of "dog"
    qtbot.waitUntil(lambda: panel.negative_tokens.text() == "76/150", timeout=20_000)
    assert panel.negative_tokens.property("state") == "over"
    # extra-network tags are not counted
    panel.set_prompts("a cat <lora:ink:0.8>", "")
    qtbot.waitUntil(lambda: panel.prompt_tokens.text() == "2/75", timeout=20_000)
    assert token_label(80, 150) == "80/150" and token_label(None) == "–/75"
