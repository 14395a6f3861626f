"""Where Inkpunk Studio keeps things: per-user folders and the bundled resources.

Per-user folders come from ``platformdirs`` (app name ``InkpunkStudio``); ``--data-dir DIR`` replaces the data
folder (and with it the outputs, models and settings) so a test or a portable install never touches the
person's real folders. Resources (style sheet, presets, icon) are found in the source tree, in an installed
copy (the ``inkpunk_resources`` package that pyproject maps ``resources/`` to) and in a PyInstaller bundle
(``sys._MEIPASS/resources``). Nothing is ever written next to the resources.
"""

from __future__ import annotations

import sys
from pathlib import Path

import platformdirs

APP_NAME = "InkpunkStudio"
ORG_NAME = "InkpunkStudio"

_SOURCE_RESOURCES = Path(__file__).resolve().parent.parent / "resources"


def data_dir(override: str | Path | None = None) -> Path:
    """The per-user data folder (created), or ``override`` when given (``--data-dir``)."""
    folder = Path(override).expanduser() if override else Path(platformdirs.user_data_dir(APP_NAME, appauthor=False))
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def log_dir() -> Path:
    """The per-user log folder (not created here; the logging setup creates it)."""
    return Path(platformdirs.user_log_dir(APP_NAME, appauthor=False))


def outputs_dir(data: Path) -> Path:
    """Default folder for generated images (the history) inside a data folder."""
    return data / "outputs"


def models_dir(data: Path) -> Path:
    """Where the first-run dialog downloads checkpoints to."""
    return data / "models"


def _resource_roots() -> list[Path]:
    roots: list[Path] = []
    frozen_root = getattr(sys, "_MEIPASS", None)
    if frozen_root:
        roots.append(Path(frozen_root) / "resources")
    roots.append(_SOURCE_RESOURCES)
    try:  # an installed copy: resources/ is the `inkpunk_resources` package
        import inkpunk_resources

        roots.append(Path(inkpunk_resources.__file__).resolve().parent)
    except ImportError:
        pass
    return roots


def resource_path(name: str) -> Path:
    """Path of a bundled resource file, e.g. ``resource_path("style.qss")``.

    Returns the first existing candidate; if none exists, the path in the first root (so the caller's
    ``exists()`` check or open() gives a clear error naming a sensible place).
    """
    roots = _resource_roots()
    for root in roots:
        candidate = root / name
        if candidate.exists():
            return candidate
    return roots[0] / name
