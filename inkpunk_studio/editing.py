"""Canvas editing without widgets: masks beside their images, outpainting's extended canvas, Lanczos upscaling.

Everything here works on PIL images (a mask is mode "L", white = repaint, black = keep, as
``engine.GenerationRequest.mask`` takes it), so it is tested without Qt and the widgets stay thin.
"""

from __future__ import annotations

import re
from io import BytesIO
from pathlib import Path

from PIL import Image, ImageChops, ImageOps

from .fileio import atomic_write_bytes

SIDES = ("left", "right", "top", "bottom")
# A1111's "Masked content" choices (modules/processing.py, StableDiffusionProcessingImg2Img.init: 0 fill,
# 1 original, 2 latent noise, 3 latent nothing): all usable when the engine takes
# GenerationRequest.masked_content, else only "original" (the init image's latents under the mask).
MASKED_CONTENT = ("original", "fill", "latent noise", "latent nothing")
OUTPAINT_SEAM = 32  # px of the old image, next to the new area, that are repainted with a soft ramp


def mask_path(image_path: str | Path) -> Path:
    """Where the mask of ``image_path`` is kept: ``name.png`` -> ``name.mask.png`` in the same folder."""
    path = Path(image_path)
    return path.with_name(path.stem + ".mask.png")


def save_mask(mask: Image.Image, image_path: str | Path) -> Path:
    """Write ``mask`` (mode "L") beside its image, atomically; returns the mask's path. OSError on failure."""
    if mask.mode != "L":
        raise ValueError(f"a mask is a mode 'L' image, got mode {mask.mode!r}")
    buffer = BytesIO()
    mask.save(buffer, format="PNG")
    target = mask_path(image_path)
    atomic_write_bytes(target, buffer.getvalue())
    return target


def load_mask(image_path: str | Path, size: tuple[int, int] | None = None) -> Image.Image | None:
    """The mask kept beside ``image_path`` (mode "L"), or None when there is none, it cannot be read, or it
    does not have ``size`` (a mask for another version of the image is no mask for this one)."""
    path = mask_path(image_path)
    if not path.is_file():
        return None
    try:
        with Image.open(path) as opened:
            mask = opened.convert("L")
    except (OSError, ValueError):
        return None
    if size is not None and mask.size != tuple(size):
        return None
    return mask


def is_empty(mask: Image.Image | None) -> bool:
    """True when ``mask`` repaints nothing (None or all black)."""
    return mask is None or mask.getbbox() is None


def extend_canvas(image: Image.Image, side: str, pixels: int, mask: Image.Image | None = None,
                  seam: int = OUTPAINT_SEAM) -> tuple[Image.Image, Image.Image]:
    """Outpainting's starting point: ``image`` grown by ``pixels`` on ``side``, and its mask.

    The new strip is filled by stretching the image's edge row/column outwards (A1111's "fill" idea: colours
    that continue the picture, which the sampler reshapes), and masked white; the mask fades from white to
    black over ``seam`` pixels of the old image next to it, so the join is repainted softly. An existing
    ``mask`` is carried over (shifted with the image) and combined with the new one by maximum.
    """
    if side not in SIDES:
        raise ValueError(f"side must be one of {', '.join(SIDES)}, got {side!r}")
    if not isinstance(pixels, int) or isinstance(pixels, bool) or pixels <= 0 or pixels % 8:
        raise ValueError(f"pixels must be a positive multiple of 8, got {pixels!r}")
    image = image.convert("RGB")
    w, h = image.size
    horizontal = side in ("left", "right")
    new_w, new_h = (w + pixels, h) if horizontal else (w, h + pixels)
    offset = {"left": (pixels, 0), "right": (0, 0), "top": (0, pixels), "bottom": (0, 0)}[side]
    edge_box = {"left": (0, 0, 1, h), "right": (w - 1, 0, w, h), "top": (0, 0, w, 1), "bottom": (0, h - 1, w, h)}
    strip_box = {"left": (0, 0, pixels, h), "right": (w, 0, new_w, h), "top": (0, 0, w, pixels),
                 "bottom": (0, h, w, new_h)}[side]
    out = Image.new("RGB", (new_w, new_h))
    out.paste(image, offset)
    strip_size = (strip_box[2] - strip_box[0], strip_box[3] - strip_box[1])
    out.paste(image.crop(edge_box[side]).resize(strip_size, Image.Resampling.NEAREST), strip_box[:2])

    new_mask = Image.new("L", (new_w, new_h), 0)
    if mask is not None:
        if mask.size != (w, h):
            raise ValueError(f"the mask is {mask.size[0]}x{mask.size[1]} but the image is {w}x{h}")
        new_mask.paste(mask.convert("L"), offset)
    new_mask.paste(255, strip_box)
    _paint_seam(new_mask, side, strip_box, min(seam, w if horizontal else h))
    return out, new_mask


def _paint_seam(mask: Image.Image, side: str, strip_box: tuple[int, int, int, int], seam: int) -> None:
    """A linear ramp from 255 (at the new strip) to 0 over ``seam`` px into the old image, kept with max()."""
    if seam <= 0:
        return
    ramp = Image.linear_gradient("L").resize((1, seam))  # (1, seam): 0 at the top, 255 at the bottom
    if side in ("left", "top"):
        ramp = ImageOps.flip(ramp)  # 255 next to the strip, which lies before the seam
    if side in ("left", "right"):
        ramp = ramp.transpose(Image.Transpose.TRANSPOSE)  # (seam, 1)
        ramp = ramp.resize((seam, mask.height), Image.Resampling.NEAREST)
        x = strip_box[2] if side == "left" else strip_box[0] - seam
        box = (x, 0, x + seam, mask.height)
    else:
        ramp = ramp.resize((mask.width, seam), Image.Resampling.NEAREST)
        y = strip_box[3] if side == "top" else strip_box[1] - seam
        box = (0, y, mask.width, y + seam)
    mask.paste(ImageChops.lighter(mask.crop(box), ramp), box[:2])


def upscale(image: Image.Image, factor: int) -> Image.Image:
    """``image`` enlarged ``factor`` times (2 or 4) with Lanczos, the "Lanczos" upscaler of A1111's Extras."""
    if factor not in (2, 4):
        raise ValueError(f"upscale factor must be 2 or 4, got {factor!r}")
    return image.resize((image.width * factor, image.height * factor), Image.Resampling.LANCZOS)


def upscaled_path(image_path: str | Path, factor: int) -> Path:
    """A free file name beside ``image_path`` for its ``factor``x upscale: ``name-x2.png``, ``name-x2-1.png``..."""
    path = Path(image_path)
    candidate = path.with_name(f"{path.stem}-x{factor}.png")
    n = 1
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-x{factor}-{n}.png")
        n += 1
    return candidate


# --- hires fix (engine.hires.HiresFix, A1111's txt2img hires fix) --------------------------------------------
# Infotext keys as A1111 writes them (processing.py, StableDiffusionProcessingTxt2Img.init: extra_generation_params)
HIRES_KEYS = ("Hires upscale", "Hires resize", "Hires steps", "Hires upscaler")


def engine_takes(name: str) -> bool:
    """Whether this build's ``engine.GenerationRequest`` has the field ``name``."""
    import dataclasses

    import engine

    return any(f.name == name for f in dataclasses.fields(engine.GenerationRequest))


def engine_has_hires() -> bool:
    """Whether this build's engine takes ``GenerationRequest.hires``."""
    return engine_takes("hires")


def supported_masked_content() -> tuple[str, ...]:
    """The MASKED_CONTENT choices this build's engine can do."""
    return MASKED_CONTENT if engine_takes("masked_content") else ("original",)


def masked_content_request(masked_content: str) -> dict:
    """GenerationRequest keyword for A1111's masked content ({} for "original" on an engine without it)."""
    if masked_content not in MASKED_CONTENT:
        raise ValueError(f"masked content must be one of {', '.join(MASKED_CONTENT)}, got {masked_content!r}")
    if engine_takes("masked_content"):
        return {"masked_content": masked_content}
    if masked_content != "original":
        raise ValueError(f"masked content {masked_content!r} is not available in this build: use 'original'")
    return {}


def hires_upscalers() -> tuple[str, ...]:
    """The engine's hires upscaler names (``engine.hires.UPSCALERS``); A1111's two commonest without it."""
    try:
        from engine.hires import UPSCALERS
    except ImportError:
        return ("Latent", "Lanczos")
    return tuple(UPSCALERS)


def hires_fix(scale: float, steps: int, denoise: float, upscaler: str, width: int = 0, height: int = 0):
    """An ``engine.HiresFix`` (ValueError for bad values, or when the engine has no hires fix). width/height:
    "Resize to" (0 x 0: the scale)."""
    if not engine_has_hires():
        raise ValueError("hires fix is not available in this build: turn it off")
    from engine.hires import HiresFix

    return HiresFix(scale=float(scale), width=int(width), height=int(height), steps=int(steps),
                    denoise=float(denoise), upscaler=upscaler)


def hires_infotext(scale: float, steps: int, upscaler: str, width: int = 0, height: int = 0) -> dict[str, str]:
    """A1111's infotext entries of a hires fix ("Denoising strength" is ImageParams.strength): ``Hires upscale``,
    or ``Hires resize: WxH`` instead when a resize side is set (A1111 processing.py,
    StableDiffusionProcessingTxt2Img.calculate_target_resolution); ``Hires steps`` only when it differs from the
    first pass's (0); then ``Hires upscaler``: the order and rules of StableDiffusionProcessingTxt2Img.init."""
    if width or height:
        items = {"Hires resize": f"{int(width)}x{int(height)}"}
    else:
        items = {"Hires upscale": f"{scale:g}"}
    if steps:
        items["Hires steps"] = str(int(steps))
    items["Hires upscaler"] = upscaler
    return items


_RE_HIRES_RESIZE = re.compile(r"^\s*(\d+)\s*x\s*(\d+)\s*$")


def hires_from_infotext(extra: dict[str, str], strength: float | None) -> dict:
    """HiresSection.set_values arguments from an image's infotext: hires on with its values when it has
    ``Hires upscale`` or ``Hires resize``, else hires off. Without ``Hires resize`` the resize is 0 x 0 (A1111
    infotext_utils.parse_generation_parameters: "Hires resize-1/-2" default 0). Unreadable numbers are left
    out (the controls keep theirs)."""
    if "Hires upscale" not in extra and "Hires resize" not in extra:
        return {"hires": False}
    values: dict = {"hires": True, "hires_width": 0, "hires_height": 0}
    if "Hires resize" in extra:
        if m := _RE_HIRES_RESIZE.match(extra["Hires resize"]):
            values["hires_width"], values["hires_height"] = int(m.group(1)), int(m.group(2))
        else:
            del values["hires_width"], values["hires_height"]
    for key, name, kind in (("Hires upscale", "hires_scale", float), ("Hires steps", "hires_steps", int)):
        try:
            values[name] = kind(extra[key]) if key in extra else (0 if kind is int else None)
        except ValueError:
            continue
    if extra.get("Hires upscaler"):
        values["hires_upscaler"] = extra["Hires upscaler"]
    try:  # with Hires keys the metadata parser leaves "Denoising strength" in extra (it is the hires pass's)
        denoise = float(extra["Denoising strength"]) if "Denoising strength" in extra else strength
    except ValueError:
        denoise = strength
    if denoise is not None:
        values["hires_denoise"] = float(denoise)
    return {k: v for k, v in values.items() if v is not None}


# --- "Inpaint area: Only masked" (A1111 processing.py, StableDiffusionProcessingImg2Img.init, inpaint_full_res) -
ONLY_MASKED_KEYS = ("Inpaint area", "Masked area padding")
MAX_MASK_PADDING = 256


def only_masked_crop(image: Image.Image, mask: Image.Image, width: int, height: int, blur: int, padding: int
                     ) -> tuple[Image.Image, Image.Image, tuple[int, int, int, int]]:
    """(image, mask, box) for an "Only masked" request: as A1111, the mask is blurred first, the crop box is the
    blurred mask's bounding box grown by ``padding`` and to width:height (``engine.inpaint.crop_to_mask``),
    and both crops are resized to width x height. The returned mask is blurred already (request mask_blur 0)."""
    if not 0 <= int(padding) <= MAX_MASK_PADDING:
        raise ValueError(f"masked area padding must be 0-{MAX_MASK_PADDING} px, got {padding}")
    from engine.inpaint import blur_mask, crop_to_mask

    return crop_to_mask(image.convert("RGB"), blur_mask(mask.convert("L"), int(blur)), int(width), int(height),
                        padding=int(padding))


def only_masked_paste(result: Image.Image, image: Image.Image, mask: Image.Image, blur: int, padding: int,
                      width: int, height: int) -> Image.Image:
    """The generated crop ``result`` pasted back into the canvas ``image`` (its full size) over the blurred
    mask (``engine.inpaint.paste_back``, A1111 ``apply_overlay``): pixels outside the feathered mask keep
    the canvas's values exactly."""
    from engine.inpaint import blur_mask, paste_back

    _, _, box = only_masked_crop(image, mask, width, height, blur, padding)
    return paste_back(result, image.convert("RGB"), blur_mask(mask.convert("L"), int(blur)), box)


def only_masked_infotext(padding: int) -> dict[str, str]:
    """A1111's infotext entries for "Only masked" (written only when it is on)."""
    return {"Inpaint area": "Only masked", "Masked area padding": str(int(padding))}


INPAINT_KEYS = ("Mask blur", "Masked content", *ONLY_MASKED_KEYS)  # every inpainting key A1111 writes
# said when an inpainted image is restored: PNG metadata holds no mask (ours is saved beside as name.mask.png)
MASK_NOT_STORED = ("the mask (not stored in the image: paint it again; an image made here brings its "
                   "saved mask back when it is shown)")


def inpaint_infotext(mask_blur: int, masked_content: str, only_masked_padding: int | None = None
                     ) -> dict[str, str]:
    """A1111's infotext entries of an inpainting, in its order (processing.py,
    StableDiffusionProcessingImg2Img.init, v1.10): ``Mask blur`` only when above 0, with "Only masked" (a
    padding given) ``Inpaint area`` and ``Masked area padding``, then ``Masked content`` when not "original"."""
    items = {"Mask blur": str(int(mask_blur))} if int(mask_blur) > 0 else {}
    if only_masked_padding is not None:
        items.update(only_masked_infotext(only_masked_padding))
    if masked_content != "original":
        items["Masked content"] = masked_content
    return items


def is_inpainting(extra: dict[str, str]) -> bool:
    """Whether an image's infotext says it was inpainted (a mask blur of 0, "original" content and the whole
    picture leave no trace, as in A1111)."""
    return any(key in extra for key in INPAINT_KEYS)


def inpaint_from_infotext(extra: dict[str, str]) -> tuple[dict, list[str]]:
    """(MaskEditor.set_inpaint_values arguments, notes) from an image's infotext: only_masked always (off
    without ``Inpaint area``, A1111's "Whole picture"), and for an inpainted image also its mask blur (0
    without ``Mask blur``, which A1111 writes only above 0), masked content ("original" without the key) and
    padding. Unreadable values are left out and noted (the controls keep theirs)."""
    values = only_masked_from_infotext(extra)
    notes: list[str] = []
    if "Masked area padding" in extra and "mask_padding" not in values:
        notes.append(f"Masked area padding {extra['Masked area padding']!r} is not a usable value")
    if not is_inpainting(extra):
        return values, notes
    try:
        values["mask_blur"] = int(extra.get("Mask blur", "0"))
    except ValueError:
        notes.append(f"Mask blur {extra['Mask blur']!r} is not a usable value")
    values["masked_content"] = extra.get("Masked content", "original")
    return values, notes


def only_masked_from_infotext(extra: dict[str, str]) -> dict:
    """MaskEditor.set_inpaint_values arguments from an image's infotext: only_masked, and the padding when
    readable; "Only masked" off when the image has no ``Inpaint area`` entry (A1111's default, whole picture)."""
    values: dict = {"only_masked": extra.get("Inpaint area") == "Only masked"}
    try:
        if "Masked area padding" in extra:
            values["mask_padding"] = int(extra["Masked area padding"])
    except ValueError:
        pass
    return values
