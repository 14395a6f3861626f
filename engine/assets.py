"""Where the engine's data files (the CLIP tokenizer's vocab.json / merges.txt) live.

A source checkout and a PyInstaller bundle both have `assets/` beside the `engine/` package; an installed
copy has it as the `inkpunk_assets` package (pyproject maps the folder to that name).
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

import engine

_TOKENIZER_FILES = ("vocab.json", "merges.txt")


def assets_dir() -> Path:
    """The assets folder; raises FileNotFoundError naming the places tried if it is missing."""
    tried = []
    beside = Path(engine.__file__).resolve().parent.parent / "assets"
    if (beside / "tokenizer").is_dir():
        return beside
    tried.append(str(beside))
    try:
        installed = Path(str(resources.files("inkpunk_assets")))
    except ModuleNotFoundError:
        pass
    else:
        if (installed / "tokenizer").is_dir():
            return installed
        tried.append(str(installed))
    raise FileNotFoundError(f"engine assets not found (looked in {', '.join(tried) or 'inkpunk_assets'})")


def tokenizer_files() -> tuple[Path, Path]:
    """(vocab.json, merges.txt) of the CLIP BPE tokenizer."""
    folder = assets_dir() / "tokenizer"
    vocab, merges = (folder / name for name in _TOKENIZER_FILES)
    for f in (vocab, merges):
        if not f.is_file():
            raise FileNotFoundError(f"tokenizer file missing: {f}")
    return vocab, merges
