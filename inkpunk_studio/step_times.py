"""How long a sampling step took here, per device and size, and the warning before a very large image.

SD 1.x models are trained at 512x512. Far above that, a CPU needs minutes per step and the model repeats and
breaks up its subject, so Generate asks first, with the time to expect: the last measured seconds per step
on this device, from the measured size nearest in pixel count, scaled by the pixel count. (The UNet's
attention grows faster than the pixel count, so the real time is, if anything, longer: the text says so.)
The measurements live in a small JSON file in the data folder.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .fileio import atomic_write_bytes
from .widgets.run_bar import format_duration

log = logging.getLogger(__name__)

NATIVE = 512
LARGE_PIXELS = 1024 * 1024  # 4x the native pixel count: the warning starts here
_MAX_ENTRIES = 200


class StepTimes:
    """``{device: {"WxH": seconds per step}}``, loaded from and saved to ``path`` (plain JSON)."""

    def __init__(self, path: str | Path | None = None) -> None:
        self.path = Path(path) if path is not None else None
        self.times: dict[str, dict[str, float]] = {}
        if self.path is not None:
            self._load()

    def _load(self) -> None:
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return
        except (OSError, ValueError) as exc:
            log.warning("ignoring the step times in %s: %s", self.path, exc)
            return
        if not isinstance(data, dict):
            return
        for device, sizes in data.items():
            if isinstance(device, str) and isinstance(sizes, dict):
                good = {k: float(v) for k, v in sizes.items() if _size(k) and _positive(v)}
                if good:
                    self.times[device] = good

    def record(self, device: str, width: int, height: int, sec_per_step: float) -> None:
        """Remember the latest measured speed for this device and size (replacing an older one)."""
        if not device or not _positive(sec_per_step):
            return
        sizes = self.times.setdefault(device, {})
        sizes.pop(f"{width}x{height}", None)  # re-insert: the newest last, the oldest dropped first
        sizes[f"{width}x{height}"] = float(sec_per_step)
        while len(sizes) > _MAX_ENTRIES:
            sizes.pop(next(iter(sizes)))

    def estimate(self, device: str, width: int, height: int) -> tuple[float, str] | None:
        """(seconds per step at width x height, the measured "WxH" it comes from), or None if none yet."""
        sizes = self.times.get(device)
        if not sizes:
            return None
        pixels = width * height

        def distance(key: str) -> float:
            w, h = _size(key)
            return abs((w * h) - pixels) / max(w * h, pixels)

        nearest = min(sizes, key=distance)
        w, h = _size(nearest)
        return sizes[nearest] * pixels / (w * h), nearest

    def save(self) -> None:
        """Write the file (atomically). Raises OSError."""
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(self.path, json.dumps(self.times, indent=1, sort_keys=True).encode())


def _size(key: object) -> tuple[int, int] | None:
    if not isinstance(key, str) or key.count("x") != 1:
        return None
    w, _, h = key.partition("x")
    if not (w.isascii() and w.isdigit() and h.isascii() and h.isdigit()) or int(w) <= 0 or int(h) <= 0:
        return None
    return int(w), int(h)


def _positive(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and 0 < value < 1e7


def _seconds(value: float) -> str:
    return f"{value:.1f} s" if value < 10 else format_duration(value)


def is_large(width: int, height: int) -> bool:
    """Whether width x height is far enough above the native 512x512 to ask before generating."""
    return width * height >= LARGE_PIXELS


def size_warning(width: int, height: int, steps: int, count: int, device: str,
                 estimate: tuple[float, str] | None) -> str | None:
    """The text asking before a very large image, or None when the size is not large."""
    if not is_large(width, height):
        return None
    ratio = width * height / (NATIVE * NATIVE)
    text = (f"{width}×{height} is {ratio:.0f}× the pixels of the model's native {NATIVE}×{NATIVE}. "
            "Stable Diffusion 1.x models tend to repeat and break up their subject that large, and it is slow")
    if estimate is None:
        text += (f": no speed has been measured on this device ({device}) yet. A {NATIVE}×{NATIVE} image first "
                 "gives an estimate.")
    else:
        per_step, measured = estimate
        total = per_step * steps * count
        images = f" ({count} images)" if count > 1 else ""
        text += (f": expect about {_seconds(per_step)} per step, {format_duration(total)} for {steps} "
                 f"steps{images}, going by the speed measured at {measured.replace('x', '×')} on this device "
                 f"({device}), scaled by the pixel count; it is often longer.")
    return text + "\n\nA smaller size, then an upscaler, is usually faster and better."
