"""Prompt-box helpers: syntax highlighting of A1111's prompt language and Ctrl+Up/Down weight editing.

``edit_attention`` is a port of AUTOMATIC1111 v1.10's ``javascript/edit-attention.js`` (``keyupEditAttention``
with its ``selectCurrentParenthesisBlock`` and ``selectCurrentWord``) on plain strings, so the same keys give
the same text as in the web UI: "cat" -> "(cat:1.1)", "(cat:1.1)" -> "(cat:1.2)", back to "cat" at 1.0,
"((cat))" -> "(cat:1.2)", and "<lora:x:0.8>" -> "<lora:x:0.85>".
"""

from __future__ import annotations

import re

from PySide6.QtGui import QColor, QFont, QSyntaxHighlighter, QTextCharFormat, QTextDocument

from .theme import ACCENT, HIGHLIGHT

ATTENTION_STEP = 0.1  # opts.keyedit_precision_attention
EXTRA_STEP = 0.05  # opts.keyedit_precision_extra (the weight of a <lora:...> tag)
# opts.keyedit_delimiters plus keyedit_delimiters_whitespace's defaults (Tab, Carriage Return, Line Feed)
DELIMITERS = ".,\\/!?%^*;:{}=`~() " + "\t\r\n"
_WEIGHT_INSIDE = re.compile(r".*:-?[\d.]+", re.DOTALL)


def _select_block(text: str, pos: int, open_: str, close: str) -> tuple[int, int] | None:
    """The text between the brackets around ``pos`` (without a trailing ":weight"), or None."""
    before, after = text[:pos], text[pos:]
    open_at = before.rfind(open_)
    if open_at == -1 or before.rfind(close) > open_at:
        return None
    close_at = after.find(close)
    if close_at == -1 or -1 < after.find(open_) < close_at:
        return None
    content = text[open_at + 1: pos + close_at]
    start = open_at + 1
    if _WEIGHT_INSIDE.match(content):
        return start, start + content.rfind(":")
    return start, start + len(content)


def _select_word(text: str, pos: int) -> tuple[int, int]:
    start = end = pos
    while start > 0 and text[start - 1] not in DELIMITERS:
        start -= 1
    while end < len(text) and text[end] not in DELIMITERS:
        end += 1
    while start < end and text[start] == " ":
        start += 1
    while end > start and text[end - 1] == " ":
        end -= 1
    return start, end


def _format_weight(weight: float) -> str:
    """JavaScript's ``parseFloat(w.toPrecision(12))`` printed, with ".0" on whole numbers as A1111 adds."""
    value = float(f"{weight:.12g}")
    return f"{value:.1f}" if value.is_integer() else repr(value)


def edit_attention(text: str, start: int, end: int, up: bool) -> tuple[str, int, int] | None:
    """Raise (``up``) or lower the weight of ``text[start:end]`` (or, with no selection, of the bracket or
    word at ``start``). Returns (new text, selection start, selection end), or None when nothing changes."""
    if start == end:
        block = (_select_block(text, start, "<", ">") or _select_block(text, start, "(", ")")
                 or _select_block(text, start, "[", "]"))
        start, end = block if block is not None else _select_word(text, start)
    close, delta = ")", ATTENTION_STEP
    before = text[start - 1] if start > 0 else ""
    after = text[end] if end < len(text) else ""
    if before == "<":
        close, delta = ">", EXTRA_STEP
    elif (before, after) in (("(", ")"), ("[", "]")):  # old-style ((emphasis)) becomes (word:1.2)
        n = 0
        while start - n - 1 >= 0 and end + n < len(text) and text[start - n - 1] == before and text[end + n] == after:
            n += 1
        weight = (1 / 1.1) ** n if before == "[" else 1.1 ** n
        weight = round(weight / ATTENTION_STEP) * ATTENTION_STEP
        text = f"{text[:start - n]}({text[start:end]}:{_format_weight(weight)}){text[end + n:]}"
        start, end = start - n + 1, end - n + 1
    elif before != "(":
        while end > start and text[end - 1] == " ":
            end -= 1
        if start == end:
            return None
        text = f"{text[:start]}({text[start:end]}:1.0){text[end:]}"
        start, end = start + 1, end + 1
    if end >= len(text) or text[end] != ":":
        return None
    length = text[end + 1:].find(close) + 1
    try:
        weight = float(text[end + 1: end + length])
    except ValueError:
        return None
    weight = float(f"{weight + (delta if up else -delta):.12g}")
    if close == ")" and weight == 1:
        close_at = text[end:].find(")")
        text = text[:start - 1] + text[start:end] + text[end + close_at + 1:]
        return text, start - 1, end - 1
    return text[:end + 1] + _format_weight(weight) + text[end + length:], start, end


def utf16_to_index(text: str, pos: int) -> int:
    """A QTextCursor position (UTF-16 code units) -> a Python string index."""
    return len(text.encode("utf-16-le")[: 2 * pos].decode("utf-16-le", errors="ignore"))


def index_to_utf16(text: str, index: int) -> int:
    return len(text[:index].encode("utf-16-le")) // 2


def _format(color: str, bold: bool = False, italic: bool = False) -> QTextCharFormat:
    fmt = QTextCharFormat()
    fmt.setForeground(QColor(color))
    if bold:
        fmt.setFontWeight(QFont.Weight.Bold)
    fmt.setFontItalic(italic)
    return fmt


class PromptHighlighter(QSyntaxHighlighter):
    """Colours the prompt language line by line: ``(emphasis)`` and ``:1.2`` weights, ``[prompt:edits:N]``
    and ``[a|b]`` alternation, ``<lora:name:w>`` tags and ``BREAK``. Escaped brackets (``\\(``) stay text."""

    RULES = (
        ("emphasis", re.compile(r"(?<!\\)[()]")),
        ("weight", re.compile(r"(?<=:)\s*[+-]?\d*\.?\d+\s*(?=[)\]>])")),
        ("edit", re.compile(r"(?<!\\)[\[\]|]")),
        ("network", re.compile(r"<\w+:[^>]+>")),
        ("keyword", re.compile(r"\bBREAK\b")),
    )

    def __init__(self, document: QTextDocument) -> None:
        super().__init__(document)
        self.formats = {
            "emphasis": _format(ACCENT, bold=True),
            "weight": _format("#ffb86b"),
            "edit": _format(HIGHLIGHT, bold=True),
            "network": _format("#b38cff", italic=True),
            "keyword": _format(HIGHLIGHT, bold=True),
        }

    def highlightBlock(self, text: str) -> None:
        for name, pattern in self.RULES:
            fmt = self.formats[name]
            for match in pattern.finditer(text):
                start, end = index_to_utf16(text, match.start()), index_to_utf16(text, match.end())
                self.setFormat(start, end - start, fmt)
