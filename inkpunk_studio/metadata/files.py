"""Finding the metadata in PNG, JPEG and WebP files, and writing ours.

PNG text chunks are read straight from the file (no pixels decoded), UTF-8 first even in ``tEXt`` (tools write
UTF-8 there although the PNG spec says Latin-1), with generous limits, and only for the keys a reader wants:
a 10 MB workflow chunk is skipped, not a reason to stop. EXIF is read from JPEG/WebP and from PNG ``eXIf``
chunks: the UserComment (A1111, Civitai, SwarmUI, ComfyUI savers) and ComfyUI's ``prompt:{...}`` /
``workflow:{...}`` strings in the Make/Model tags.
"""

from __future__ import annotations

import io
import logging
import re
import zlib
from pathlib import Path
from typing import BinaryIO

from PIL import Image, PngImagePlugin

from ..fileio import atomic_write_bytes
from .formats import READERS, from_comfy_text
from .params import MAX_TEXT, ImageParams

log = logging.getLogger(__name__)

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286
_COMFY_EXIF_TAGS = (0x010F, 0x0110, 0x010E)  # Make, Model, ImageDescription: ComfyUI's "prompt:{...}" strings
_WANTED = {key for key, _ in READERS}
_MAX_TOTAL = 64 << 20  # all wanted text together


def png_text_chunks(f: BinaryIO) -> dict[str, str]:
    """The wanted tEXt/zTXt/iTXt chunks of a PNG (and the texts in an ``eXIf`` chunk), read without pixels."""
    out: dict[str, str] = {}
    exif: dict[str, str] = {}
    if f.read(8) != _PNG_SIGNATURE:
        return out
    total = 0
    while True:
        header = f.read(8)
        if len(header) < 8:
            break
        length, ctype = int.from_bytes(header[:4], "big"), header[4:]
        if ctype == b"IEND":
            break
        if ctype == b"eXIf" and length <= MAX_TEXT:
            exif = exif_texts(_load_exif(f.read(length)))
            f.seek(4, io.SEEK_CUR)
            continue
        if ctype not in (b"tEXt", b"zTXt", b"iTXt") or length > MAX_TEXT or total + length > _MAX_TOTAL:
            f.seek(length + 4, io.SEEK_CUR)  # pixels, or a chunk too large to be settings: skip, keep reading
            continue
        key = f.read(min(length, 80))
        name = key.partition(b"\0")[0].decode("latin-1")
        if name not in _WANTED or name in out:
            f.seek(length - len(key) + 4, io.SEEK_CUR)
            continue
        body = key + f.read(length - len(key))
        f.seek(4, io.SEEK_CUR)  # CRC
        if len(body) < length:
            break
        total += length
        try:
            out[name] = _chunk_text(ctype, body.partition(b"\0")[2])
        except (ValueError, IndexError, zlib.error):
            log.debug("unreadable %s chunk %r", ctype, name, exc_info=True)
    for k, v in exif.items():
        out.setdefault(k, v)
    return out


def _chunk_text(ctype: bytes, rest: bytes) -> str:
    if ctype == b"tEXt":
        return _decode(rest)
    if ctype == b"zTXt":
        return _decode(_inflate(rest[1:]))
    compressed, rest = rest[0], rest[2:]
    _lang, _, rest = rest.partition(b"\0")
    _tkey, _, value = rest.partition(b"\0")
    return (_inflate(value) if compressed else value).decode("utf-8")


def _decode(raw: bytes) -> str:
    """UTF-8 if it is valid UTF-8 (what tools write, even in tEXt), else the Latin-1 the PNG spec says."""
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError:
        return raw.decode("latin-1")


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, MAX_TEXT)
    if d.unconsumed_tail:
        raise ValueError("text chunk too large")
    return out


def _load_exif(data: bytes) -> Image.Exif:
    exif = Image.Exif()
    exif.load(data[6:] if data.startswith(b"Exif\0\0") else data)
    return exif


def exif_texts(exif: Image.Exif) -> dict[str, str]:
    """Metadata texts held in EXIF, under the keys ``READERS`` uses."""
    out: dict[str, str] = {}
    for tag in _COMFY_EXIF_TAGS:
        value = exif.get(tag)
        if isinstance(value, bytes):
            value = _decode(value)
        m = re.match(r"^(\w[\w-]*):\s*(\{.*)$", value, re.DOTALL) if isinstance(value, str) else None
        if m and m.group(1) in _WANTED:
            out.setdefault(m.group(1), m.group(2))
    # UserComment belongs in the Exif IFD; some savers (ComfyUI's SaveImagePlus) put it in IFD0
    comment = exif.get_ifd(_EXIF_IFD).get(_USER_COMMENT, exif.get(_USER_COMMENT))
    text = decode_user_comment(comment) if comment is not None else None
    if text and text.strip():
        out.setdefault("parameters", text)
    return out


def decode_user_comment(raw: bytes | str) -> str | None:
    """EXIF UserComment -> text. Handles the 8-byte charset prefix; UTF-16 of either byte order."""
    if isinstance(raw, str):
        return raw
    if not isinstance(raw, bytes) or not raw:
        return None
    prefix, body = raw[:8], raw[8:]
    if prefix == b"UNICODE\0":
        if len(body) >= 2 and body[:2] in (b"\xfe\xff", b"\xff\xfe"):
            return body.decode("utf-16", errors="replace")
        # A1111 (piexif) writes big-endian; some tools write little-endian. ASCII-heavy text tells which.
        even_zeros = body[0::2].count(0)
        odd_zeros = body[1::2].count(0)
        return body.decode("utf-16-le" if odd_zeros > even_zeros else "utf-16-be", errors="replace")
    if prefix in (b"ASCII\0\0\0", b"\0" * 8, b"JIS\0\0\0\0\0"):
        raw = body
    return raw.decode("utf-8", errors="replace").rstrip("\0")


def encode_user_comment(text: str) -> bytes:
    """Text -> EXIF UserComment bytes the way A1111 (piexif.helper) writes them."""
    return b"UNICODE\0" + text.encode("utf-16-be")


def exif_bytes(params: ImageParams) -> bytes:
    """An EXIF block holding ``params`` as UserComment, for Pillow's ``save(..., exif=...)``."""
    exif = Image.Exif()
    exif.get_ifd(_EXIF_IFD)[_USER_COMMENT] = encode_user_comment(params.to_parameters_text())
    return exif.tobytes()


def params_from_texts(texts: dict) -> ImageParams | None:
    """The first reader in ``READERS`` whose key is present and gives parameters."""
    for key, parse in READERS:
        value = texts.get(key)
        if isinstance(value, bytes):
            value = _decode(value)
        if not isinstance(value, str) or len(value) > MAX_TEXT:
            continue
        try:
            p = parse(value)
        except Exception:  # malformed metadata must never raise
            log.debug("unparseable %s metadata", key, exc_info=True)
            continue
        if p is None:
            continue
        if key == "parameters" and isinstance(texts.get("prompt"), str):
            _complete_from_graph(p, value, texts["prompt"])
        return p
    return None


def _complete_from_graph(p: ImageParams, text: str, graph_text: str) -> None:
    """A1111-style text written next to a ComfyUI graph (Stability Matrix, ComfyUI's A1111-style savers): the
    settings the text leaves out (noise source, emphasis, clip skip) come from the graph, not A1111's defaults."""
    try:
        graph = from_comfy_text(graph_text)
    except Exception:  # a broken graph leaves the text's reading as it is
        log.debug("unparseable ComfyUI graph next to parameters", exc_info=True)
        return
    if graph is None:
        return
    for key, attr in (("RNG", "rng"), ("Emphasis", "emphasis"), ("Clip skip", "clip_skip")):
        if not re.search(rf"\b{key}:", text):
            setattr(p, attr, getattr(graph, attr))


def _params_from_image(img: Image.Image) -> ImageParams | None:
    texts = {k: v for k, v in img.info.items() if k in _WANTED}
    texts.update({k: v for k, v in (getattr(img, "text", None) or {}).items() if k in _WANTED})
    for k, v in exif_texts(img.getexif()).items():
        texts.setdefault(k, v)
    comment = img.info.get("comment")  # a JPEG COM segment: settings only if it holds an A1111 settings line
    if "parameters" not in texts and isinstance(comment, (bytes, str)):
        texts["parameters"] = _decode(comment) if isinstance(comment, bytes) else comment
    return params_from_texts(texts)


def read_params(source: str | Path | bytes | Image.Image) -> ImageParams | None:
    """Generation parameters stored in an image (file path, file bytes or an open image). Never raises."""
    try:
        if isinstance(source, Image.Image):
            return _params_from_image(source)
        with open(source, "rb") if isinstance(source, (str, Path)) else io.BytesIO(bytes(source)) as f:
            if f.read(8) == _PNG_SIGNATURE:
                f.seek(0)
                return params_from_texts(png_text_chunks(f))
            f.seek(0)
            with Image.open(f) as img:
                return _params_from_image(img)
    except Exception:  # anything from the wild: no metadata
        log.debug("no readable metadata in %r", type(source), exc_info=True)
        return None


# ---------------------------------------------------------------- writing files


def png_bytes(image: Image.Image, params: ImageParams | None) -> bytes:
    """PNG-encode ``image`` with a ``parameters`` text chunk (iTXt when not Latin-1, as Pillow decides)."""
    info = PngImagePlugin.PngInfo()
    if params is not None:
        info.add_text("parameters", params.to_parameters_text())
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


def save_png(image: Image.Image, path: str | Path, params: ImageParams) -> Path:
    """Write ``image`` as a PNG with the ``parameters`` chunk, atomically. Returns the path."""
    return atomic_write_bytes(path, png_bytes(image, params))


_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def export_image(src: str | Path, dest: str | Path, fmt: str | None = None, *, quality: int = 95) -> Path:
    """Copy the image at ``src`` to ``dest`` as PNG/JPEG/WebP, keeping its parameters.

    ``fmt`` defaults to ``dest``'s suffix. PNG gets the ``parameters`` chunk; JPEG/WebP the EXIF UserComment.
    """
    dest = Path(dest)
    key = (fmt or dest.suffix.lstrip(".")).lower()
    if key not in _FORMATS:
        raise ValueError(f"unsupported export format {fmt or dest.suffix!r}: use PNG, JPEG or WebP")
    pil_format = _FORMATS[key]
    params = read_params(src)
    with Image.open(src) as img:
        img.load()
        image = img.convert("RGBA" if img.mode in ("RGBA", "LA", "P") and pil_format != "JPEG" else "RGB")
    if pil_format == "PNG":
        return atomic_write_bytes(dest, png_bytes(image, params))
    buf = io.BytesIO()
    kwargs: dict = {"quality": int(quality)}
    if params is not None:
        kwargs["exif"] = exif_bytes(params)
    image.save(buf, format=pil_format, **kwargs)
    return atomic_write_bytes(dest, buf.getvalue())
