"""Colours the prompt's `<lora:name:...>` tags whose file no model folder holds (issue 13: "the prompt box
colours tags of files it can't find"), so a missing LoRA shows before Generate refuses the run."""

from __future__ import annotations

import re
from collections.abc import Iterable

from PySide6.QtGui import QColor, QSyntaxHighlighter, QTextCharFormat, QTextDocument

_TAG = re.compile(r"<(lora|lyco):([^:>]*)[^>]*>")  # as engine.prompt's extra-network tags


class MissingTagHighlighter(QSyntaxHighlighter):
    """Known LoRA names come from the Networks panel's scan (`set_known`); matching ignores case, as the
    resolver's fallback does."""

    def __init__(self, document: QTextDocument) -> None:
        super().__init__(document)
        self._known: set[str] = set()
        self.missing_format = QTextCharFormat()
        self.missing_format.setForeground(QColor("#e5484d"))
        self.missing_format.setFontUnderline(True)
        self.missing_format.setToolTip("No LoRA of this name in the model folders")

    def set_known(self, names: Iterable[str]) -> None:
        self._known = {n.lower() for n in names}
        self.rehighlight()

    def missing(self, text: str) -> list[str]:
        """The tag names in `text` that no folder holds (what highlightBlock colours)."""
        return [m.group(2) for m in _TAG.finditer(text) if m.group(2).lower() not in self._known]

    def highlightBlock(self, text: str) -> None:
        for m in _TAG.finditer(text):
            if m.group(2).lower() not in self._known:
                self.setFormat(m.start(), m.end() - m.start(), self.missing_format)
