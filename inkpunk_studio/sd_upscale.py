"""SD upscale: an upscaled image refined by img2img, tile by tile, then blended back (issue 15).

After A1111's scripts/sd_upscale.py: the (Lanczos-)upscaled image is split into overlapping tiles of the
request size (modules/images.py ``split_grid``: ``cols = ceil((w - overlap) / (tile_w - overlap))``, tiles
spread evenly with the last one flush with the edge), each tile goes through img2img with the image's own
prompt, seed and sampler at the chosen strength, and the tiles are pasted back with linear feathers across
the overlaps (``combine_grid``'s gradient masks). Here the feather is a weighted average, so constant tiles
blend to exactly that constant. Qt-free: the worker runs :func:`refine` on its thread.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, PngImagePlugin

from . import editing
from .fileio import atomic_write_bytes

TILE = 512
OVERLAP = 64

Box = tuple[int, int, int, int]  # left, top, right, bottom


@dataclass(frozen=True)
class SdUpscale:
    """What a worker job refines: the saved image ``source``, enlarged ``factor`` times (Lanczos), then
    img2img'd per tile at ``strength`` (A1111's SD upscale denoising strength), tiles of ``tile`` pixels
    sharing ``overlap``."""

    source: str
    factor: int = 2
    strength: float = 0.3
    tile: int = TILE
    overlap: int = OVERLAP

    def __post_init__(self) -> None:
        if self.factor not in (2, 4):
            raise ValueError(f"upscale factor must be 2 or 4, got {self.factor!r}")
        if not 0.0 < float(self.strength) <= 1.0:
            raise ValueError(f"SD upscale strength must be above 0 and at most 1, got {self.strength!r}")
        split_tiles(512, 512, self.tile, self.overlap)  # the tile and overlap checks, early

    def check_request(self, request: Any) -> None:
        """ValueError now for what the engine would refuse per tile (a strength too low for the steps...)."""
        if request.seed is None:
            raise ValueError("SD upscale needs the image's seed")
        dataclasses.replace(request, width=self.tile, height=self.tile, strength=float(self.strength),
                            init_image=Image.new("RGB", (self.tile, self.tile)), batch_size=1, mask=None,
                            hires=None)


def _starts(length: int, tile: int, overlap: int) -> list[int]:
    """Tile offsets along one side, as A1111's images.split_grid places them."""
    if tile >= length:
        return [0]
    count = math.ceil((length - overlap) / (tile - overlap))
    step = (length - tile) / (count - 1) if count > 1 else 0
    return [min(int(i * step), length - tile) for i in range(count)]


def tile_size(width: int, height: int, tile: int = TILE) -> tuple[int, int]:
    """The tile's (width, height): ``tile`` but no larger than the image, rounded down to a multiple of 8
    (the engine's sizes are multiples of 8)."""
    if width < 64 or height < 64:
        raise ValueError(f"SD upscale needs an image of at least 64 x 64 pixels, got {width} x {height}")
    return min(tile, width // 8 * 8), min(tile, height // 8 * 8)


def split_tiles(width: int, height: int, tile: int = TILE, overlap: int = OVERLAP) -> list[Box]:
    """Boxes of (at most) ``tile`` x ``tile`` covering a ``width`` x ``height`` image, neighbours sharing at
    least ``overlap`` pixels; row by row, left to right."""
    if not isinstance(tile, int) or tile < 64 or tile % 8:
        raise ValueError(f"tile size must be a multiple of 8 of at least 64, got {tile!r}")
    if not isinstance(overlap, int) or not 0 <= overlap < tile // 2:
        raise ValueError(f"overlap must be from 0 to less than half the tile ({tile // 2}), got {overlap!r}")
    tw, th = tile_size(width, height, tile)
    return [(x, y, x + tw, y + th) for y in _starts(height, th, overlap) for x in _starts(width, tw, overlap)]


def _feather(box: Box, width: int, height: int, overlap: int) -> np.ndarray:
    """(h, w) weights of one tile: rising linearly over ``overlap`` pixels from each edge that lies inside
    the image, 1 elsewhere (edges on the image border are not feathered). Never 0, so every pixel counts."""
    left, top, right, bottom = box

    def ramp(n: int, lo_inside: bool, hi_inside: bool) -> np.ndarray:
        w = np.ones(n, dtype=np.float64)
        if overlap > 0:
            r = (np.arange(overlap, dtype=np.float64) + 0.5) / overlap
            if lo_inside:
                w[:overlap] = np.minimum(w[:overlap], r)
            if hi_inside:
                w[n - overlap:] = np.minimum(w[n - overlap:], r[::-1])
        return w

    wx = ramp(right - left, left > 0, right < width)
    wy = ramp(bottom - top, top > 0, bottom < height)
    return wy[:, None] * wx[None, :]


def blend_tiles(tiles: list[Image.Image], boxes: list[Box], size: tuple[int, int],
                overlap: int = OVERLAP) -> Image.Image:
    """The RGB image of ``size`` made of ``tiles`` at ``boxes``, overlaps feathered (a weighted average)."""
    if len(tiles) != len(boxes):
        raise ValueError(f"{len(tiles)} tiles for {len(boxes)} boxes")
    width, height = size
    total = np.zeros((height, width, 3), dtype=np.float64)
    weight = np.zeros((height, width, 1), dtype=np.float64)
    for image, box in zip(tiles, boxes, strict=True):
        left, top, right, bottom = box
        if image.size != (right - left, bottom - top):
            raise ValueError(f"tile of {image.size} does not fit box {box}")
        w = _feather(box, width, height, overlap)[:, :, None]
        total[top:bottom, left:right] += np.asarray(image.convert("RGB"), dtype=np.float64) * w
        weight[top:bottom, left:right] += w
    if (weight == 0).any():
        raise ValueError("the tiles do not cover the image")
    return Image.fromarray(np.clip(np.rint(total / weight), 0, 255).astype(np.uint8), "RGB")


def refine(pipe: Any, image: Image.Image, request: Any, strength: float, *, tile: int = TILE,
           overlap: int = OVERLAP, on_tile: Callable[[int, int], None] | None = None,
           on_step: Callable[[int, Any], None] | None = None, cancel: threading.Event | None = None) -> Image.Image:
    """``image`` (already upscaled) refined by img2img per tile with ``request``'s prompt, seed, sampler...

    ``request`` is an engine.GenerationRequest (a seed is required so the tiles agree, as in A1111 where every
    tile of an image uses its seed); its size, init image, strength, batch, mask and hires are replaced per
    tile. ``on_tile(done, total)`` is called after each tile, ``on_step(tile_index, event)`` for the engine's
    step events; ``cancel`` is passed to the engine, which
    raises engine.Cancelled. Returns the RGB image at ``image``'s size."""
    if not 0.0 < float(strength) <= 1.0:
        raise ValueError(f"SD upscale strength must be above 0 and at most 1, got {strength!r}")
    if request.seed is None:
        raise ValueError("SD upscale needs the image's seed")
    source = image.convert("RGB")
    boxes = split_tiles(source.width, source.height, tile, overlap)
    tiles = []
    for index, box in enumerate(boxes):
        req = dataclasses.replace(request, width=box[2] - box[0], height=box[3] - box[1],
                                  init_image=source.crop(box), strength=float(strength), batch_size=1,
                                  mask=None, hires=None)
        step = None if on_step is None else (lambda event, i=index: on_step(i, event))
        tiles.append(pipe.generate(req, on_step=step, cancel=cancel).images[0])
        if on_tile is not None:
            on_tile(index + 1, len(boxes))
    return blend_tiles(tiles, boxes, source.size, overlap)


def save_beside(image: Image.Image, source: str | Path, factor: int) -> Path:
    """Write ``image`` beside ``source`` as its ``factor``x upscale (editing.upscaled_path), with the source's
    PNG text chunks (its parameters), as the plain Lanczos upscale does; returns the new path."""
    with Image.open(source) as opened:
        texts = {k: v for k, v in opened.info.items() if isinstance(k, str) and isinstance(v, str)}
    info = PngImagePlugin.PngInfo()
    for key, value in texts.items():
        info.add_text(key, value)
    buffer = BytesIO()
    image.save(buffer, format="PNG", pnginfo=info)
    return atomic_write_bytes(editing.upscaled_path(source, factor), buffer.getvalue())
