"""Draw Inkpunk Studio's app icon with Pillow, and turn it into Windows/macOS icon files.

    python resources/make_icons.py              # rewrite resources/icon.png (1024x1024)
    python resources/make_icons.py --ico X.ico  # also write a Windows .ico   (the bundle spec does this)
    python resources/make_icons.py --icns X.icns

The icon is drawn, not downloaded: a neon ink stroke (magenta to cyan, the Inkpunk palette) swept across a
dark rounded square, with a splash and a few flying drops. Everything is drawn at 2x and scaled down for
smooth edges; the random splatter uses a fixed seed, so the output is reproducible.
"""

from __future__ import annotations

import argparse
import math
import random
from pathlib import Path

import numpy as np
from PIL import Image, ImageChops, ImageDraw, ImageFilter

HERE = Path(__file__).resolve().parent
ICON_PNG = HERE / "icon.png"

MAGENTA = (255, 46, 151)
VIOLET = (157, 78, 255)
CYAN = (0, 229, 255)
BG_TOP = (34, 18, 58)
BG_BOTTOM = (9, 9, 20)

ICO_SIZES = [(16, 16), (24, 24), (32, 32), (48, 48), (64, 64), (128, 128), (256, 256)]


def _diagonal_gradient(size: int, stops: list[tuple[float, tuple[int, int, int]]]) -> Image.Image:
    """An RGB image whose colour runs from the lower-left corner (first stop) to the upper-right (last)."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / (size - 1)
    t = np.clip(((xx + (1 - yy)) / 2 - 0.2) / 0.6, 0, 1)  # most of the change across the middle
    positions = [p for p, _ in stops]
    channels = [np.interp(t, positions, [c[i] for _, c in stops]) for i in range(3)]
    return Image.fromarray(np.stack(channels, axis=-1).round().astype(np.uint8), "RGB")


def _bezier(p: list[tuple[float, float]], t: float) -> tuple[float, float]:
    (x0, y0), (x1, y1), (x2, y2), (x3, y3) = p
    u = 1 - t
    x = u**3 * x0 + 3 * u * u * t * x1 + 3 * u * t * t * x2 + t**3 * x3
    y = u**3 * y0 + 3 * u * u * t * y1 + 3 * u * t * t * y2 + t**3 * y3
    return x, y


def _half_width(t: float, s: float) -> float:
    """Brush pressure along the stroke: a quick press, a long even pull, a dry tapering tail."""
    press = min(1.0, t / 0.12)
    lift = min(1.0, (1.0 - t) / 0.45)
    return s * (8 + 66 * press**0.6 * lift**1.3)


def _stroke_mask(size: int, rng: random.Random) -> Image.Image:
    """The ink: a tapered brush swoosh, a splash where the brush lands, and drops flung off it."""
    s = size / 1024
    lo, hi = 150 * s, size - 150 * s  # keep all ink well inside the rounded tile
    mask = Image.new("L", (size, size), 0)
    draw = ImageDraw.Draw(mask)

    # The swoosh: an S-shaped cubic Bezier from the lower left to the upper right.
    curve = [(262 * s, 752 * s), (330 * s, 380 * s), (650 * s, 760 * s), (790 * s, 262 * s)]
    steps = 1200
    for i in range(steps + 1):
        t = i / steps
        x, y = _bezier(curve, t)
        w = _half_width(t, s)
        draw.ellipse((x - w, y - w, x + w, y + w), fill=255)

    # Dry-brush streaks: thin gaps along the tail where the bristles ran out of ink, each starting a bit later.
    for offset in (-0.6, -0.25, 0.15, 0.55):
        start = rng.uniform(0.5, 0.66)
        points = []
        for i in range(160):
            t = start + (1.0 - start) * i / 159
            x, y = _bezier(curve, t)
            x2, y2 = _bezier(curve, min(1.0, t + 0.005))
            norm = math.hypot(x2 - x, y2 - y) or 1.0
            nx, ny = -(y2 - y) / norm, (x2 - x) / norm
            w = _half_width(t, s)
            points.append((x + nx * w * offset, y + ny * w * offset))
        for i in range(len(points) - 1):  # widen from a hairline to the full gap
            width = max(1, round(s * (1 + 5 * min(1.0, i / 40))))
            draw.line(points[i : i + 2], fill=0, width=width)

    # The splash where the brush first hits: an irregular blob, rays of ink thrown outward (away from the
    # stroke), some ending in a droplet, some broken into drops.
    cx, cy = 262 * s, 752 * s
    for _ in range(7):
        ox, oy = rng.uniform(-28, 28) * s, rng.uniform(-28, 28) * s
        r = rng.uniform(52, 78) * s
        draw.ellipse((cx + ox - r, cy + oy - r, cx + ox + r, cy + oy + r), fill=255)
    for _ in range(11):
        angle = rng.uniform(math.radians(-20), math.radians(250))  # not up-right, where the stroke goes
        length = rng.uniform(95, 150) * s
        base = rng.uniform(9, 18) * s
        tip = (cx + math.cos(angle) * length, cy + math.sin(angle) * length)
        left = (cx + math.cos(angle + 1.45) * base, cy + math.sin(angle + 1.45) * base)
        right = (cx + math.cos(angle - 1.45) * base, cy + math.sin(angle - 1.45) * base)
        if not (lo < tip[0] < hi and lo < tip[1] < hi):
            continue
        draw.polygon([left, tip, right], fill=255)
        r = rng.uniform(4, 10) * s
        draw.ellipse((tip[0] - r, tip[1] - r, tip[0] + r, tip[1] + r), fill=255)
        # a loose drop further out along the same ray
        d = length + rng.uniform(18, 45) * s
        px, py = cx + math.cos(angle) * d, cy + math.sin(angle) * d
        r = rng.uniform(3, 8) * s
        if rng.random() < 0.6 and lo < px < hi and lo < py < hi:
            draw.ellipse((px - r, py - r, px + r, py + r), fill=255)

    # Drops flung off the outside of the curve, fewer and smaller further along.
    placed = 0
    while placed < 16:
        t = rng.uniform(0.2, 0.95)
        x, y = _bezier(curve, t)
        angle = rng.uniform(-2.6, -0.6)  # up and to the left/right: away from the stroke's body
        d = _half_width(t, s) + rng.uniform(30, 120) * s
        r = rng.uniform(4, 15) * s * (1.2 - t)
        px, py = x + math.cos(angle) * d, y + math.sin(angle) * d
        if lo < px < hi and lo < py < hi:
            draw.ellipse((px - r, py - r, px + r, py + r), fill=255)
            placed += 1
    return mask


def _rounded_square(size: int) -> Image.Image:
    mask = Image.new("L", (size, size), 0)
    margin = round(size * 0.06)
    ImageDraw.Draw(mask).rounded_rectangle(
        (margin, margin, size - margin, size - margin), radius=round(size * 0.2), fill=255
    )
    return mask


def draw_icon(size: int = 1024) -> Image.Image:
    """The app icon as an RGBA image of ``size`` x ``size`` pixels."""
    big = size * 2
    rng = random.Random(1997)

    shape = _rounded_square(big)
    top_to_bottom = Image.linear_gradient("L").resize((big, big))
    background = Image.composite(
        Image.new("RGB", (big, big), BG_BOTTOM), Image.new("RGB", (big, big), BG_TOP), top_to_bottom
    )

    ink = _stroke_mask(big, rng)
    colours = _diagonal_gradient(big, [(0.0, MAGENTA), (0.45, VIOLET), (1.0, CYAN)])

    # Neon glow: the ink mask blurred wide, in the same colours, under the ink.
    glow = ink.filter(ImageFilter.GaussianBlur(big * 0.03)).point(lambda v: round(v * 0.75))
    canvas = Image.composite(colours, background, glow)
    canvas = Image.composite(colours, canvas, ink)

    # A soft highlight along the top of the ink, as if the stroke were still wet.
    highlight = ImageChops.subtract(
        ink, ink.transform(ink.size, Image.Transform.AFFINE, (1, 0, 0, 0, 1, -big * 0.012))
    )
    highlight = highlight.filter(ImageFilter.GaussianBlur(big * 0.004)).point(lambda v: round(v * 0.55))
    canvas = Image.composite(Image.new("RGB", (big, big), (255, 255, 255)), canvas, highlight)

    # A thin bright rim keeps the tile readable on dark docks and taskbars.
    rim = ImageChops.subtract(shape, shape.filter(ImageFilter.MinFilter(7)))
    canvas = Image.composite(Image.new("RGB", (big, big), (90, 70, 140)), canvas, rim)

    icon = canvas.convert("RGBA")
    icon.putalpha(ImageChops.multiply(shape, Image.new("L", (big, big), 255)))
    return icon.resize((size, size), Image.Resampling.LANCZOS)


def write_ico(png: Path, out: Path) -> Path:
    """A multi-size Windows .ico made from the PNG."""
    Image.open(png).convert("RGBA").save(out, format="ICO", sizes=ICO_SIZES)
    return out


def write_icns(png: Path, out: Path) -> Path:
    """A macOS .icns made from the PNG (Pillow writes all the sizes it needs from the 1024 px image)."""
    img = Image.open(png).convert("RGBA")
    if img.size != (1024, 1024):
        img = img.resize((1024, 1024), Image.Resampling.LANCZOS)
    img.save(out, format="ICNS")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--png", type=Path, default=ICON_PNG, help="where to write the PNG (default: %(default)s)"
    )
    parser.add_argument("--size", type=int, default=1024)
    parser.add_argument("--ico", type=Path, help="also write a Windows .ico here")
    parser.add_argument("--icns", type=Path, help="also write a macOS .icns here")
    args = parser.parse_args(argv)
    draw_icon(args.size).save(args.png, optimize=True)
    if args.ico:
        write_ico(args.png, args.ico)
    if args.icns:
        write_icns(args.png, args.icns)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
