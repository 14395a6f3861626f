"""The history of generated images: file naming, folder scans, thumbnails. No widgets here.

Every finished image is saved at once (by the worker) as ``YYYYMMDD-HHMMSS-<seed>.png`` in the output folder;
the history is simply that folder, newest first, so it survives restarts and needs no database. Thumbnails
are decoded off the GUI thread (QImage is fine there; QPixmap is made by the widget).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Protocol

import numpy as np
from PIL import Image
from PySide6.QtGui import QImage

log = logging.getLogger(__name__)

THUMB_SIZE = 160
MAX_HISTORY = 500  # thumbnails shown at start; older files stay on disk
_MAX_PIXELS = 2048 * 2048 * 4  # a history image is ours, but never decode something absurd by mistake


def output_name(seed: int) -> str:
    """The file name an image made now with ``seed`` gets: ``YYYYMMDD-HHMMSS-<seed>.png``."""
    return f"{time.strftime('%Y%m%d-%H%M%S')}-{seed}.png"


def new_output_path(folder: str | Path, seed: int) -> Path:
    """A fresh file name in ``folder`` (created) for an image made with ``seed``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    stem = Path(output_name(seed)).stem
    path = folder / f"{stem}.png"
    n = 2
    while path.exists():
        path = folder / f"{stem}-{n}.png"
        n += 1
    return path


def to_qimage(source: Image.Image | np.ndarray) -> QImage:
    """A PIL image or a uint8 (H, W, 3) array as a QImage that owns its pixels (safe on any thread)."""
    if isinstance(source, Image.Image):
        array = np.asarray(source.convert("RGB"))
    else:
        array = np.asarray(source)
    if array.dtype != np.uint8 or array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"expected a uint8 (H, W, 3) image, got {array.dtype} {array.shape}")
    array = np.ascontiguousarray(array)
    height, width, _ = array.shape
    return QImage(array.data, width, height, 3 * width, QImage.Format.Format_RGB888).copy()


def scan_images(folder: str | Path, limit: int = MAX_HISTORY) -> list[Path]:
    """PNG files in ``folder``, newest first (by modification time, then name)."""
    entries: list[tuple[int, str, Path]] = []
    try:
        with os.scandir(folder) as it:
            for entry in it:
                name = entry.name
                if not name.lower().endswith(".png") or name.startswith(".") or name.lower().endswith(".mask.png"):
                    continue  # atomic writes leave dot-prefixed temp files only while writing
                try:
                    if entry.is_file():
                        entries.append((entry.stat().st_mtime_ns, name, Path(entry.path)))
                except OSError:
                    continue
    except FileNotFoundError:
        return []
    entries.sort(reverse=True)
    return [path for _, _, path in entries[:limit]]


def load_qimage(path: str | Path, max_side: int | None = None) -> QImage | None:
    """Decode an image file (optionally shrunk to ``max_side``) as a QImage; None if unreadable."""
    try:
        with Image.open(path) as img:
            if img.width * img.height > _MAX_PIXELS:
                log.warning("not showing %s: %dx%d is too large", path, img.width, img.height)
                return None
            if max_side:
                img.draft("RGB", (max_side, max_side))
                img.thumbnail((max_side, max_side), Image.Resampling.LANCZOS)
            return to_qimage(img.convert("RGB"))
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        log.warning("could not read %s: %s", path, exc)
        return None


class HistorySink(Protocol):
    """What :func:`load_history` fills: the history strip widget."""

    def add_path(self, path: str, at_top: bool = ...) -> None: ...

    def set_thumbnail(self, path: str, image: QImage) -> None: ...


async def load_history(folder: str | Path, tasks, sink: HistorySink) -> int:
    """Fill ``sink`` with the folder's images (placeholders first, then thumbnails as they decode).

    ``tasks`` is the window's :class:`~inkpunk_studio.worker.AsyncTasks`: blocking reads run in its pool, the
    sink is only touched here, on the loop's (GUI) thread. Returns the number of images found.
    """
    paths = await tasks.run(scan_images, folder)
    for path in paths:
        sink.add_path(str(path), at_top=False)
    for path in paths:
        image = await tasks.run(load_qimage, path, THUMB_SIZE)
        if image is not None:
            sink.set_thumbnail(str(path), image)
    return len(paths)
