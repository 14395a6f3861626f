"""Open images from the outside world (drops, file dialogs, the clipboard) safely and normalise them to RGB.

Rejects what should not be decoded (non-images, truncated files, decompression bombs, huge files) with an
``ImageLoadError`` whose message can be shown to the person as is, and turns the odd images people have
(rotated phone photos, transparency, 16-bit scans, CMYK prints, animations) into a plain 8-bit RGB image.
"""

from __future__ import annotations

import io
import logging
import re
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

log = logging.getLogger(__name__)

DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000; SD 1.x works at 512-1024 px, so this is generous
DEFAULT_MAX_BYTES = 200 * 1024 * 1024
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


class ImageLoadError(ValueError):
    """An image that can't or shouldn't be used; ``str(error)`` is a user-facing message."""


def load_image(source: str | Path | bytes | Image.Image, *, max_pixels: int = DEFAULT_MAX_PIXELS,
               max_bytes: int = DEFAULT_MAX_BYTES) -> Image.Image:
    """Decode ``source`` (a file path, the file's bytes, or an open PIL image) into a normalised RGB image.

    Raises ``ImageLoadError`` for anything unusable. The result is fully loaded and holds no open file.
    """
    if isinstance(source, Image.Image):
        _check_pixels(source.size, max_pixels)
        return normalise(source)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        _check_bytes(len(data), max_bytes)
        stream: io.BytesIO | Path = io.BytesIO(data)
    elif isinstance(source, (str, Path)):
        stream = Path(source)
        try:
            size = stream.stat().st_size
        except OSError as e:
            raise ImageLoadError(f"Can't read {stream.name}: {e.strerror or e}") from e
        if not stream.is_file():
            raise ImageLoadError(f"{stream.name} is not a file.")
        _check_bytes(size, max_bytes)
    else:
        raise TypeError(f"load_image() takes a path, bytes or a PIL image, not {type(source).__name__}")

    try:
        try:
            return _decode(stream, max_pixels)
        except ValueError as e:
            if "MAX_TEXT" not in str(e):
                raise
            # Pillow refuses text chunks that inflate past 1 MiB (a 10 MB ComfyUI workflow): the pixels don't
            # need them, so decode a copy without its text chunks (metadata.read_params reads those itself).
            data = stream.read_bytes() if isinstance(stream, Path) else stream.getvalue()
            return _decode(io.BytesIO(_without_png_text(data)), max_pixels)
    except ImageLoadError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        # Pillow's message quotes its own limit; the person needs ours
        m = re.search(r"\((\d+) pixels\)", str(e))
        size = f": {int(m.group(1)) / 1e6:.0f} megapixels" if m else ""
        raise ImageLoadError(f"The image is too large{size} (the limit is {max_pixels / 1e6:.0f} megapixels).") from e
    except Image.UnidentifiedImageError as e:
        raise ImageLoadError("This is not an image, or not a format that can be read.") from e
    except OSError as e:
        if isinstance(stream, Path) and not isinstance(e, (SyntaxError, ValueError)) and e.errno is not None:
            raise ImageLoadError(f"Can't read {stream.name}: {e.strerror or e}") from e
        raise ImageLoadError("The image file is truncated or damaged.") from e
    except (SyntaxError, ValueError, EOFError, MemoryError, IndexError, KeyError, TypeError) as e:
        # Pillow's decoders raise these for broken files
        raise ImageLoadError("The image file is truncated or damaged.") from e


def _decode(stream: io.BytesIO | Path, max_pixels: int) -> Image.Image:
    with warnings.catch_warnings():
        # Pillow warns above its own limit and raises at twice it; both mean "bomb" here.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with Image.open(stream) as img:
            _check_pixels(img.size, max_pixels)
            img.seek(0)  # animated images: the first frame
            img.load()
            return normalise(img)


def _without_png_text(data: bytes) -> bytes:
    """The PNG ``data`` with its tEXt/zTXt/iTXt chunks left out (chunks are copied as they are, CRCs included)."""
    if not data.startswith(_PNG_SIGNATURE):
        raise ValueError("not a PNG")
    out = [data[:8]]
    pos = 8
    while pos + 8 <= len(data):
        length = int.from_bytes(data[pos:pos + 4], "big")
        end = pos + 12 + length
        if data[pos + 4:pos + 8] not in (b"tEXt", b"zTXt", b"iTXt"):
            out.append(data[pos:end])
        pos = end
    return b"".join(out)


def _check_bytes(size: int, max_bytes: int) -> None:
    if size > max_bytes:
        raise ImageLoadError(f"The file is too large: {size / 2**20:.0f} MB (the limit is {max_bytes / 2**20:.0f} MB).")
    if size == 0:
        raise ImageLoadError("The file is empty.")


def _check_pixels(size: tuple[int, int], max_pixels: int) -> None:
    w, h = size
    if w <= 0 or h <= 0:
        raise ImageLoadError("The image has no pixels.")
    if w * h > max_pixels:
        raise ImageLoadError(f"The image is too large: {w}x{h} pixels (the limit is {max_pixels / 1e6:.0f} megapixels).")


def normalise(img: Image.Image) -> Image.Image:
    """EXIF orientation applied, transparency composited on white, 16-bit/float scaled to 8 bits, RGB."""
    try:
        img = ImageOps.exif_transpose(img)
    except (ValueError, TypeError, KeyError, OSError, SyntaxError):
        log.info("ignoring unreadable EXIF orientation", exc_info=True)  # costs only the orientation
    mode = img.mode
    if mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        img = _to_8bit(img)
        mode = img.mode
    has_alpha = mode in ("PA", "LA", "La", "RGBa")
    if has_alpha or (mode in ("P", "L", "RGB") and "transparency" in img.info):
        img = img.convert("RGBA")
    if img.mode == "RGBA":
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        img = Image.alpha_composite(white, img)
    if img.mode != "RGB":
        try:
            img = img.convert("RGB")
        except (ValueError, OSError) as e:
            raise ImageLoadError(f"Images in the {img.mode} colour mode aren't supported.") from e
    else:
        img = img.copy()
    img.info.pop("transparency", None)
    return img


def _to_8bit(img: Image.Image) -> Image.Image:
    """Scale 16-bit/32-bit grayscale into 0..255 (dividing, never clipping the bright half away)."""
    a = np.asarray(img).astype(np.float64)
    if img.mode == "F":
        top = 1.0 if a.size and np.nanmax(a) <= 1.0 else max(float(np.nanmax(a)) if a.size else 1.0, 1.0)
        a = np.nan_to_num(a, nan=0.0)
    elif img.mode.startswith("I;16"):
        top = 65535.0
    else:  # "I": 32-bit ints, usually a 16-bit file opened wide
        peak = float(a.max()) if a.size else 0.0
        top = 255.0 if peak <= 255 else 65535.0 if peak <= 65535 else peak
    out = np.clip(np.rint(a * (255.0 / top)), 0, 255).astype(np.uint8)
    return Image.fromarray(out, "L")


def fit_to_size(img: Image.Image, width: int, height: int) -> Image.Image:
    """Scale ``img`` to cover ``width`` x ``height`` and crop the centre (no distortion, no borders)."""
    if int(width) <= 0 or int(height) <= 0:
        raise ValueError(f"fit_to_size: size must be positive, got {width}x{height}")
    return ImageOps.fit(img, (int(width), int(height)), Image.Resampling.LANCZOS, centering=(0.5, 0.5))
