"""CLIP's BPE tokenizer (transformers' `CLIPTokenizer` on the bundled vocabulary) shaped for SD1.x.

`__call__` gives the usual (B, 77) ids: BOS, tokens, EOS, padded with EOS (SD1.x's pad token).
`chunks` splits prompts over 75 tokens into plain 75-token windows, each wrapped in BOS/EOS and padded to 77;
`tokenize` gives the bare ids that engine.prompt pours into A1111's chunks (weights, BREAK, comma backtrack).
torch is imported on first use only, so the UI's token counter can tokenize without it.
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import TYPE_CHECKING

# Imported here, once, from its own module: a lazy `from transformers import CLIPTokenizer` inside __init__
# raced when two threads built their first tokenizer at once ("cannot import name 'CLIPTokenizer'"), and
# the concrete module path is also what PyInstaller's analysis can follow.
from transformers.models.clip.tokenization_clip import CLIPTokenizer

from engine.assets import tokenizer_files

if TYPE_CHECKING:
    import torch

MAX_LENGTH = 77
WINDOW = MAX_LENGTH - 2  # tokens per chunk between BOS and EOS


class Tokenizer:
    def __init__(self, vocab_file: str | Path | None = None, merges_file: str | Path | None = None):
        if vocab_file is None or merges_file is None:
            vocab_file, merges_file = tokenizer_files()
        self._tok = CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=MAX_LENGTH)
        self.bos_id: int = self._tok.bos_token_id
        self.eos_id: int = self._tok.eos_token_id
        self.pad_id: int = self._tok.pad_token_id  # = eos for CLIP ViT-L/14, as SD1.x was trained
        # ",</w>": where A1111's comma backtrack may end a chunk (sd_hijack_clip: vocab.get(',</w>'))
        self.comma_id: int = self._tok.get_vocab()[",</w>"]

    def _ids(self, text: str) -> list[int]:
        """Token ids without BOS/EOS; no length limit (so no overflow warning either)."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a string, got {type(text).__name__}")
        return self._tok(text, add_special_tokens=False, verbose=False).input_ids

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Bare token ids (no BOS/EOS, no length limit) of each text, as A1111's `tokenize`."""
        return [self._ids(t) for t in texts]

    def _window(self, ids: list[int]) -> list[int]:
        row = [self.bos_id, *ids[:WINDOW], self.eos_id]
        return row + [self.pad_id] * (MAX_LENGTH - len(row))

    def __call__(self, texts: list[str]) -> torch.Tensor:
        """(B, 77) ids: prompts longer than 75 tokens are truncated (use `chunks` to keep everything)."""
        import torch

        texts = _as_list(texts)
        return torch.tensor([self._window(self._ids(t)) for t in texts], dtype=torch.long)

    def chunks(self, texts: list[str]) -> torch.Tensor:
        """(B, n, 77) ids: every prompt split into n 75-token windows (n the same for the whole batch)."""
        import torch

        texts = _as_list(texts)
        token_lists = [self._ids(t) for t in texts]
        n = max(1, *(math.ceil(len(ids) / WINDOW) for ids in token_lists))
        rows = []
        for ids in token_lists:
            windows = [ids[i : i + WINDOW] for i in range(0, len(ids), WINDOW)] or [[]]
            windows += [[]] * (n - len(windows))  # shorter prompts get empty-prompt chunks
            rows.append([self._window(w) for w in windows])
        return torch.tensor(rows, dtype=torch.long)

    def count_tokens(self, text: str) -> int:
        """Number of tokens the prompt uses, BOS/EOS excluded (the GUI's "N/75" counter)."""
        return len(self._ids(text))


_default: Tokenizer | None = None
_default_lock = threading.Lock()


def default_tokenizer() -> Tokenizer:
    """One shared Tokenizer on the bundled vocabulary, built on first use (thread-safe)."""
    global _default
    with _default_lock:
        if _default is None:
            _default = Tokenizer()
        return _default


def _as_list(texts: list[str]) -> list[str]:
    if isinstance(texts, str):
        raise TypeError("expected a list of prompts, got a single string")
    texts = list(texts)
    if not texts:
        raise ValueError("expected at least one prompt")
    return texts
