"""Generation parameters in image files, both ways.

Writing uses the AUTOMATIC1111 ``parameters`` convention (read by A1111, Civitai and most tools): a PNG text
chunk, or for JPEG/WebP the EXIF UserComment. Reading also understands Fooocus (A1111-style text or its JSON
scheme), ComfyUI (the ``prompt`` workflow JSON) and InvokeAI (``invokeai_metadata``). Reading never raises:
malformed or missing metadata gives ``None`` or whatever fields could be recognised.
"""

from __future__ import annotations

import io
import json
import logging
import re
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

from PIL import Image, PngImagePlugin

from engine.names import DISPLAY_NAMES as ENGINE_DISPLAY_NAMES

from .fileio import atomic_write_bytes

log = logging.getLogger(__name__)

# engine sampler name -> A1111 display name (what we write); engine.names is torch-free. The legacy combined
# name stays readable and writable until the app writes "Schedule type".
DISPLAY_NAMES: dict[str, str] = {"dpmpp_2m_karras": "DPM++ 2M Karras", **ENGINE_DISPLAY_NAMES}
# lower-cased A1111 display names and k-diffusion aliases -> engine name
_FROM_DISPLAY = {v.lower(): k for k, v in DISPLAY_NAMES.items()}
_FROM_DISPLAY.update({k: k for k in DISPLAY_NAMES})
_FROM_DISPLAY.update({"k_dpmpp_2m": "dpmpp_2m", "k_dpmpp_2m_ka": "dpmpp_2m_karras", "k_euler_a": "euler_a",
                      "k_euler": "euler", "euler ancestral": "euler_a"})
# ComfyUI / Fooocus sampler_name (+ scheduler) and InvokeAI scheduler names -> engine name
_COMFY_SAMPLERS = {"euler": "euler", "euler_ancestral": "euler_a", "dpmpp_2m": "dpmpp_2m", "ddim": "ddim",
                   "ddpm": "ddpm"}
_INVOKE_SCHEDULERS = {"euler": "euler", "euler_a": "euler_a", "dpmpp_2m": "dpmpp_2m",
                      "dpmpp_2m_k": "dpmpp_2m_karras", "ddim": "ddim", "ddpm": "ddpm"}

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MAX_TEXT = 1 << 20  # metadata text larger than 1 MiB is not metadata we want
_EXIF_IFD = 0x8769
_USER_COMMENT = 0x9286

# A1111's own pattern (modules/infotext_utils.py): "Key: value" or 'Key: "json, quoted"' separated by commas
_RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_SIZE = re.compile(r"^(\d+)x(\d+)$")


@dataclass
class ImageParams:
    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 25
    sampler: str = "dpmpp_2m_karras"  # engine sampler name
    cfg_scale: float = 7.5
    seed: int | None = None
    width: int = 512
    height: int = 512
    strength: float | None = None  # img2img only ("Denoising strength")
    model_name: str = ""
    model_hash: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # keys we don't use, kept as written

    def to_parameters_text(self) -> str:
        """The A1111 ``parameters`` text: prompt, optional negative line, then the comma-separated settings."""
        items: list[tuple[str, str]] = [("Steps", str(int(self.steps))),
                                        ("Sampler", DISPLAY_NAMES.get(self.sampler, self.sampler)),
                                        ("CFG scale", _fmt_float(self.cfg_scale))]
        if self.seed is not None:
            items.append(("Seed", str(int(self.seed))))
        items.append(("Size", f"{int(self.width)}x{int(self.height)}"))
        if self.model_hash:
            items.append(("Model hash", self.model_hash))
        if self.model_name:
            items.append(("Model", self.model_name))
        if self.strength is not None:
            items.append(("Denoising strength", _fmt_float(self.strength)))
        known = {k for k, _ in items} | _KNOWN_KEYS
        items += [(str(k), str(v)) for k, v in self.extra.items() if k not in known and _is_key(str(k))]
        settings = ", ".join(f"{k}: {_quote(v)}" for k, v in items)
        negative = f"\nNegative prompt: {self.negative_prompt}" if self.negative_prompt else ""
        return f"{self.prompt}{negative}\n{settings}"

    @classmethod
    def from_parameters_text(cls, text: str) -> ImageParams | None:
        """Parse A1111/Fooocus ``parameters`` text (or Fooocus' JSON scheme). ``None`` if there is nothing."""
        try:
            return _parse_parameters(text)
        except Exception:  # metadata from the wild must never raise into the GUI
            log.debug("unparseable parameters text", exc_info=True)
            return None


_KNOWN_KEYS = {"Steps", "Sampler", "Schedule type", "CFG scale", "Seed", "Size", "Model hash", "Model",
               "Denoising strength", "Negative prompt"}


def _is_key(k: str) -> bool:
    return bool(re.fullmatch(r"\w[\w \-/]*", k)) and "\n" not in k


def _fmt_float(x: float) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(round(x, 6))


def _quote(value: str) -> str:
    """A1111's quote(): JSON-quote values that would break the comma-separated line."""
    if "," not in value and "\n" not in value and ":" not in value and not value.startswith('"'):
        return value
    return json.dumps(value, ensure_ascii=False)


def _unquote(value: str) -> str:
    if len(value) >= 2 and value[0] == '"' and value[-1] == '"':
        try:
            out = json.loads(value)
            return out if isinstance(out, str) else value
        except ValueError:
            return value
    return value


def sampler_from_name(name: str, schedule: str = "") -> str | None:
    """Map an A1111 display name (plus optional "Schedule type") or alias to an engine sampler name."""
    key = name.strip().lower()
    base = _FROM_DISPLAY.get(key)
    if base == "dpmpp_2m" and schedule.strip().lower() == "karras":
        return "dpmpp_2m_karras"
    return base


def _parse_parameters(text: str) -> ImageParams | None:
    if not isinstance(text, str) or not text.strip() or len(text) > _MAX_TEXT:
        return None
    stripped = text.strip()
    if stripped.startswith("{"):
        try:
            data = json.loads(stripped)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return _from_fooocus_json(data)
    *lines, last = stripped.replace("\r\n", "\n").split("\n")
    if len(_RE_PARAM.findall(last)) < 3:  # same test as A1111: no settings line
        lines.append(last)
        last = ""
    prompt_lines: list[str] = []
    negative_lines: list[str] = []
    in_negative = False
    for line in lines:
        line = line.strip()
        if line.startswith("Negative prompt:"):
            in_negative = True
            line = line[len("Negative prompt:"):].strip()
        (negative_lines if in_negative else prompt_lines).append(line)
    p = ImageParams(prompt="\n".join(prompt_lines), negative_prompt="\n".join(negative_lines))
    raw: dict[str, str] = {}
    for key, value in _RE_PARAM.findall(last):
        raw[key.strip()] = _unquote(value.strip())
    _apply_a1111(p, raw)
    return p


def _apply_a1111(p: ImageParams, raw: dict[str, str]) -> None:
    rest = dict(raw)
    hires = any(k.startswith("Hires") for k in raw)

    def take(key: str, conv):
        if key not in rest:
            return None
        try:
            value = conv(rest[key])
        except (ValueError, TypeError, OverflowError):
            return None  # unusable: stays in extra
        del rest[key]
        return value

    if (v := take("Steps", int)) is not None and v > 0:
        p.steps = v
    if (v := take("CFG scale", float)) is not None:
        p.cfg_scale = v
    if (v := take("Seed", int)) is not None:
        p.seed = v
    if (v := take("Size", _parse_size)) is not None:
        p.width, p.height = v
    if not hires and (v := take("Denoising strength", float)) is not None:
        p.strength = v
    if "Model hash" in rest:
        p.model_hash = rest.pop("Model hash")
    if "Model" in rest:
        p.model_name = rest.pop("Model")
    if "Sampler" in rest:
        schedule = rest.get("Schedule type", "")
        mapped = sampler_from_name(rest["Sampler"], schedule)
        if mapped is not None:
            p.sampler = mapped
            del rest["Sampler"]
            if mapped == "dpmpp_2m_karras" and schedule.strip().lower() == "karras":
                rest.pop("Schedule type", None)
    p.extra = rest


def _parse_size(v: str) -> tuple[int, int]:
    m = _RE_SIZE.match(v.strip())
    if not m or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
        raise ValueError(v)
    return int(m.group(1)), int(m.group(2))


def _comfy_sampler(name: object, scheduler: object) -> str | None:
    base = _COMFY_SAMPLERS.get(str(name))
    if base == "dpmpp_2m" and str(scheduler) == "karras":
        return "dpmpp_2m_karras"
    return base


def _from_fooocus_json(d: dict) -> ImageParams | None:
    if "prompt" not in d and "negative_prompt" not in d:
        return None
    p = ImageParams(prompt=str(d.get("prompt", "")), negative_prompt=str(d.get("negative_prompt", "")))
    _set_int(p, "steps", d.get("steps"))
    _set_float(p, "cfg_scale", d.get("guidance_scale"))
    _set_int(p, "seed", d.get("seed"))
    m = re.match(r"^\(?\s*(\d+)\s*[,x]\s*(\d+)\s*\)?$", str(d.get("resolution", "")))
    if m:
        p.width, p.height = int(m.group(1)), int(m.group(2))
    sampler = _comfy_sampler(d.get("sampler"), d.get("scheduler"))
    if sampler:
        p.sampler = sampler
    p.model_name = str(d.get("base_model", "") or "")
    p.model_hash = str(d.get("base_model_hash", "") or "")
    used = {"prompt", "negative_prompt", "steps", "guidance_scale", "seed", "resolution", "base_model",
            "base_model_hash"} | ({"sampler", "scheduler"} if sampler else set())
    p.extra = {str(k): v if isinstance(v, str) else json.dumps(v) for k, v in d.items() if k not in used}
    return p


def _set_int(p: ImageParams, attr: str, value: object) -> None:
    try:
        if value is None or isinstance(value, bool):
            return
        v = int(value)
        if attr != "seed" and v <= 0:
            return
        setattr(p, attr, v)
    except (ValueError, TypeError, OverflowError):
        pass


def _set_float(p: ImageParams, attr: str, value: object) -> None:
    try:
        if value is None or isinstance(value, bool):
            return
        setattr(p, attr, float(value))
    except (ValueError, TypeError, OverflowError):
        pass


# ---------------------------------------------------------------- ComfyUI / InvokeAI


def _from_comfy(text: str) -> ImageParams | None:
    graph = json.loads(text)
    if not isinstance(graph, dict):
        return None
    nodes = {str(k): v for k, v in graph.items() if isinstance(v, dict) and isinstance(v.get("inputs"), dict)}
    ksampler = None
    for node in nodes.values():
        ctype = str(node.get("class_type", ""))
        if ctype.startswith("KSampler") or ctype == "SamplerCustom":
            ksampler = node
            break
    if ksampler is None:
        return None

    def resolve(value: object, keys: tuple[str, ...], depth: int = 0) -> object:
        """Follow [node_id, output] links to a node holding a literal under one of ``keys``."""
        if isinstance(value, list) and len(value) == 2 and depth < 8:
            node = nodes.get(str(value[0]))
            if node is None:
                return None
            for k in keys:
                if k in node["inputs"]:
                    return resolve(node["inputs"][k], keys, depth + 1)
            return None
        return value

    text_keys = ("text", "text_g", "string", "value", "text_l", "conditioning", "conditioning_1")
    inputs = ksampler["inputs"]
    p = ImageParams()
    prompt = resolve(inputs.get("positive"), text_keys)
    negative = resolve(inputs.get("negative"), text_keys)
    p.prompt = prompt if isinstance(prompt, str) else ""
    p.negative_prompt = negative if isinstance(negative, str) else ""
    _set_int(p, "seed", resolve(inputs.get("seed", inputs.get("noise_seed")), ("seed", "value", "noise_seed")))
    _set_int(p, "steps", resolve(inputs.get("steps"), ("steps", "value")))
    _set_float(p, "cfg_scale", resolve(inputs.get("cfg"), ("cfg", "value")))
    name, sched = inputs.get("sampler_name"), inputs.get("scheduler")
    sampler = _comfy_sampler(name, sched)
    if sampler:
        p.sampler = sampler
    elif name is not None:
        p.extra["Sampler"] = f"{name} {sched}" if sched else str(name)
    latent = inputs.get("latent_image")
    if isinstance(latent, list) and len(latent) == 2:
        node = nodes.get(str(latent[0]))
        if node is not None and "width" in node["inputs"] and "height" in node["inputs"]:
            _set_int(p, "width", resolve(node["inputs"]["width"], ("width", "value")))
            _set_int(p, "height", resolve(node["inputs"]["height"], ("height", "value")))
    denoise = inputs.get("denoise")
    if isinstance(denoise, (int, float)) and not isinstance(denoise, bool) and 0 < denoise < 1:
        p.strength = float(denoise)
    for node in nodes.values():
        if str(node.get("class_type", "")).startswith("CheckpointLoader"):
            ckpt = node["inputs"].get("ckpt_name")
            if isinstance(ckpt, str):
                p.model_name = Path(ckpt.replace("\\", "/")).stem
            break
    return p


def _from_invokeai(text: str) -> ImageParams | None:
    d = json.loads(text)
    if not isinstance(d, dict):
        return None
    p = ImageParams()
    pos, neg = d.get("positive_prompt", d.get("prompt")), d.get("negative_prompt")
    p.prompt = pos if isinstance(pos, str) else ""
    p.negative_prompt = neg if isinstance(neg, str) else ""
    _set_int(p, "seed", d.get("seed"))
    _set_int(p, "steps", d.get("steps"))
    _set_float(p, "cfg_scale", d.get("cfg_scale"))
    _set_int(p, "width", d.get("width"))
    _set_int(p, "height", d.get("height"))
    sched = d.get("scheduler")
    if isinstance(sched, str):
        if sched in _INVOKE_SCHEDULERS:
            p.sampler = _INVOKE_SCHEDULERS[sched]
        else:
            p.extra["Sampler"] = sched
    strength = d.get("strength")
    img2img = "img2img" in str(d.get("generation_mode", "img2img"))
    if isinstance(strength, (int, float)) and not isinstance(strength, bool) and 0 <= strength <= 1 and img2img:
        p.strength = float(strength)
    model = d.get("model")
    if isinstance(model, dict):
        name = model.get("model_name", model.get("name"))
        p.model_name = name if isinstance(name, str) else ""
        h = model.get("hash")
        p.model_hash = h if isinstance(h, str) else ""
    elif isinstance(model, str):
        p.model_name = model
    return p


# ---------------------------------------------------------------- reading files


def _png_text_chunks(f: BinaryIO) -> dict[str, str]:
    """tEXt/zTXt/iTXt chunks of a PNG file, read without decoding (or even reading) any pixels."""
    out: dict[str, str] = {}
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
        if ctype not in (b"tEXt", b"zTXt", b"iTXt"):
            f.seek(length + 4, io.SEEK_CUR)
            continue
        total += length
        if length > _MAX_TEXT or total > 4 * _MAX_TEXT:
            break
        body = f.read(length)
        f.seek(4, io.SEEK_CUR)  # CRC
        if len(body) < length:
            break
        try:
            key, _, rest = body.partition(b"\0")
            name = key.decode("latin-1")
            if ctype == b"tEXt":
                out[name] = rest.decode("latin-1")
            elif ctype == b"zTXt":
                out[name] = _inflate(rest[1:]).decode("latin-1")
            else:
                compressed, rest = rest[0], rest[2:]
                _lang, _, rest = rest.partition(b"\0")
                _tkey, _, value = rest.partition(b"\0")
                out[name] = (_inflate(value) if compressed else value).decode("utf-8")
        except (ValueError, IndexError, zlib.error):
            continue
    return out


def _inflate(data: bytes) -> bytes:
    d = zlib.decompressobj()
    out = d.decompress(data, _MAX_TEXT)
    if d.unconsumed_tail:
        raise ValueError("text chunk too large")
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


def _params_from_texts(texts: dict) -> ImageParams | None:
    for key, parse in (("parameters", ImageParams.from_parameters_text), ("invokeai_metadata", _from_invokeai),
                       ("prompt", _from_comfy)):
        value = texts.get(key)
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not isinstance(value, str) or len(value) > _MAX_TEXT:
            continue
        try:
            p = parse(value)
        except Exception:  # malformed metadata must never raise
            log.debug("unparseable %s metadata", key, exc_info=True)
            continue
        if p is not None:
            return p
    return None


def _params_from_image(img: Image.Image) -> ImageParams | None:
    texts = dict(img.info)
    texts.update(getattr(img, "text", None) or {})
    p = _params_from_texts(texts)
    if p is not None:
        return p
    comment = img.getexif().get_ifd(_EXIF_IFD).get(_USER_COMMENT)
    text = decode_user_comment(comment) if comment is not None else None
    if not text and isinstance(img.info.get("comment"), (bytes, str)):
        c = img.info["comment"]
        text = c.decode("utf-8", errors="replace") if isinstance(c, bytes) else c
    return ImageParams.from_parameters_text(text) if text else None


def read_params(source: str | Path | bytes | Image.Image) -> ImageParams | None:
    """Generation parameters stored in an image (file path, file bytes or an open image). Never raises."""
    try:
        if isinstance(source, Image.Image):
            return _params_from_image(source)
        with open(source, "rb") if isinstance(source, (str, Path)) else io.BytesIO(bytes(source)) as f:
            if f.read(8) == _PNG_SIGNATURE:
                f.seek(0)
                return _params_from_texts(_png_text_chunks(f))
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
