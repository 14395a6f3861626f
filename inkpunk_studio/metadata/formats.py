"""One small reader per tool's metadata format, registered in ``READERS``.

Each reader takes the text stored under one key (a PNG text chunk, or the same key found in EXIF) and returns
an ``ImageParams`` or None. Values a tool records but we cannot use are left unset and named in ``notes``.
"""

from __future__ import annotations

import itertools
import json
import math
import re
import shlex
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .names import COMFY_SAMPLERS, COMFY_SCHEDULES, INVOKE_SCHEDULERS, sampler_from_a1111
from .params import MAX_TEXT, ImageParams, parse_a1111


def _int(value: object, positive: bool = False) -> int | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = int(value) if not isinstance(value, float) or value.is_integer() else None
    except (ValueError, TypeError, OverflowError):
        return None
    return None if v is None or (positive and v <= 0) else v


def _float(value: object) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        v = float(value)
    except (ValueError, TypeError, OverflowError):
        return None
    return v if math.isfinite(v) else None


def _str(value: object) -> str:
    return value if isinstance(value, str) else ""


def _set(p: ImageParams, **values: object) -> None:
    """Set the fields whose value is not None."""
    for k, v in values.items():
        if v is not None:
            setattr(p, k, v)


def _comfy_sampler(p: ImageParams, name: object, scheduler: object) -> None:
    """ComfyUI sampler_name/scheduler (also Fooocus, SwarmUI, Tensor.Art) -> p.sampler/p.schedule, or notes."""
    key = _str(name).removeprefix("sample_")  # very old ComfyUI graphs wrote k-diffusion's function names
    p.sampler = COMFY_SAMPLERS.get(key)
    if p.sampler is None:
        p.notes.append(f"sampler {name!r} is not available")
    p.schedule = COMFY_SCHEDULES.get(_str(scheduler))
    if p.schedule is None and scheduler is not None:
        p.notes.append(f"schedule {scheduler!r} is not available")
    if p.sampler == "unipc":
        p.schedule = p.schedule or "automatic"


def _extra(d: dict, used: set[str]) -> dict[str, str]:
    return {str(k): v if isinstance(v, str) else json.dumps(v, ensure_ascii=False)
            for k, v in d.items() if k not in used}


# ---------------------------------------------------------------- A1111 text and its JSON cousins


def from_parameters_value(text: str) -> ImageParams | None:
    """The ``parameters`` value: A1111 text (A1111, Forge, SD.Next, Civitai, ...) or a JSON dialect."""
    if not isinstance(text, str) or len(text) > MAX_TEXT:
        return None
    if text.strip().startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            data = None
        if isinstance(data, dict):
            return from_json(data)
    return parse_a1111(text)


def from_json(d: dict) -> ImageParams | None:
    """A JSON object found where settings live: SwarmUI, Fooocus, RuinedFooocus, a ComfyUI graph, ..."""
    if isinstance(d.get("sui_image_params"), dict):
        return from_swarmui(d)
    if isinstance(d.get("prompt"), dict):  # ComfyUI savers that wrap {"prompt": graph, "workflow": ...}
        return from_comfy_graph(d["prompt"])
    if any(isinstance(v, dict) and "class_type" in v for v in d.values()):
        return from_comfy_graph(d)
    if "Prompt" in d and ("sampler_name" in d or "software" in d):
        return from_ruined_fooocus(d)
    if "prompt" in d or "negative_prompt" in d:
        return from_fooocus(d)
    return None


def from_fooocus(d: dict) -> ImageParams | None:
    """Fooocus' own scheme (metadata_scheme "fooocus"). Its backend is ComfyUI's: CPU noise, comfy weights."""
    p = ImageParams(prompt=_str(d.get("prompt")), negative_prompt=_str(d.get("negative_prompt")), rng="cpu",
                    emphasis="comfy")
    _set(p, steps=_int(d.get("steps"), True), cfg_scale=_float(d.get("guidance_scale")), seed=_int(d.get("seed")),
         clip_skip=_int(d.get("clip_skip"), True))
    m = re.match(r"^\(?\s*(\d+)\s*[,x]\s*(\d+)\s*\)?$", _str(d.get("resolution")))
    if m:
        p.width, p.height = int(m.group(1)), int(m.group(2))
    if "sampler" in d:
        _comfy_sampler(p, d.get("sampler"), d.get("scheduler"))
    p.model_name, p.model_hash = _str(d.get("base_model")), _str(d.get("base_model_hash"))
    p.version = _str(d.get("version"))
    p.extra = _extra(d, {"prompt", "negative_prompt", "steps", "guidance_scale", "seed", "resolution", "sampler",
                         "scheduler", "base_model", "base_model_hash", "clip_skip", "version"})
    return p


def from_ruined_fooocus(d: dict) -> ImageParams | None:
    """RuinedFooocus: {"Prompt", "Negative", "steps", "cfg", "sampler_name", "scheduler", ...}."""
    p = ImageParams(prompt=_str(d.get("Prompt")), negative_prompt=_str(d.get("Negative")), rng="cpu",
                    emphasis="comfy")
    _set(p, steps=_int(d.get("steps"), True), cfg_scale=_float(d.get("cfg")), seed=_int(d.get("seed")),
         width=_int(d.get("width"), True), height=_int(d.get("height"), True),
         clip_skip=_int(d.get("clip_skip"), True))
    _comfy_sampler(p, d.get("sampler_name"), d.get("scheduler"))
    denoise = _float(d.get("denoise"))
    if denoise is not None and 0 < denoise < 1:
        p.strength = denoise
    p.model_name = Path(_str(d.get("base_model_name")).replace("\\", "/")).stem
    p.model_hash = _str(d.get("base_model_hash"))
    p.version = _str(d.get("software"))
    p.extra = _extra(d, {"Prompt", "Negative", "steps", "cfg", "seed", "width", "height", "clip_skip",
                         "sampler_name", "scheduler", "denoise", "base_model_name", "base_model_hash", "software"})
    return p


def from_swarmui(d: dict) -> ImageParams | None:
    """SwarmUI's ``sui_image_params`` (PNG ``parameters`` or EXIF UserComment). Backend: ComfyUI."""
    s = d["sui_image_params"]
    p = ImageParams(prompt=_str(s.get("prompt")), negative_prompt=_str(s.get("negativeprompt")), rng="cpu",
                    emphasis="comfy")
    _set(p, steps=_int(s.get("steps"), True), cfg_scale=_float(s.get("cfgscale")), seed=_int(s.get("seed")),
         width=_int(s.get("width"), True), height=_int(s.get("height"), True))
    clip = _int(s.get("clipstopatlayer"))
    if clip is not None and clip < 0:
        p.clip_skip = -clip
    _comfy_sampler(p, s.get("sampler", "euler"), s.get("scheduler", "normal"))
    strength = _float(s.get("initimagecreativity"))
    if strength is not None and 0 < strength < 1:
        p.strength = strength
    p.model_name = _str(s.get("model"))
    p.version = "SwarmUI " + _str(s.get("swarm_version")) if s.get("swarm_version") else ""
    for model in d.get("sui_models") or []:
        if isinstance(model, dict) and model.get("param") == "model":
            p.model_hash = _str(model.get("hash")).removeprefix("0x")
    p.extra = _extra(s, {"prompt", "negativeprompt", "steps", "cfgscale", "seed", "width", "height", "sampler",
                         "scheduler", "model", "swarm_version", "clipstopatlayer", "initimagecreativity"})
    return p


# ---------------------------------------------------------------- ComfyUI


def from_comfy_graph(graph: Any) -> ImageParams | None:
    """A ComfyUI API graph (PNG ``prompt`` chunk, or EXIF): the first-pass sampler and what feeds it."""
    if isinstance(graph, str):
        graph = json.loads(graph)
    if not isinstance(graph, dict):
        return None
    nodes = {str(k): v for k, v in graph.items() if isinstance(v, dict) and isinstance(v.get("inputs"), dict)}

    def resolve(value: object, keys: tuple[str, ...], depth: int = 0) -> object:
        """Follow [node_id, output] links to a node holding a literal under one of ``keys``."""
        if isinstance(value, list) and len(value) == 2 and depth < 16:
            node = nodes.get(str(value[0]))
            if node is None:
                return None
            for k in keys:
                if k in node["inputs"]:
                    return resolve(node["inputs"][k], keys, depth + 1)
            return None
        return value

    def upstream(value: object, depth: int = 0) -> list[dict]:
        """The nodes a link leads through (latent_image -> VAEEncode -> ImageScale -> ...)."""
        if not (isinstance(value, list) and len(value) == 2) or depth > 16:
            return []
        node = nodes.get(str(value[0]))
        if node is None:
            return []
        links = [v for v in node["inputs"].values() if isinstance(v, list) and len(v) == 2]
        return [node] + [n for link in links for n in upstream(link, depth + 1)]

    samplers = [n for n in nodes.values() if str(n.get("class_type", "")).startswith(("KSampler", "SamplerCustom"))]
    if not samplers:
        return None
    # first pass: the sampler whose latent does not come out of another sampler (hires fix is a second pass)
    first = next((s for s in samplers if not any(n in samplers for n in upstream(s["inputs"].get("latent_image")))),
                 samplers[0])
    inputs = first["inputs"]
    text_keys = ("text", "text_g", "string", "value", "text_l", "conditioning", "conditioning_1")
    p = ImageParams(rng="cpu", emphasis="comfy")
    p.prompt = _str(resolve(inputs.get("positive"), text_keys))
    p.negative_prompt = _str(resolve(inputs.get("negative"), text_keys))
    _set(p, seed=_int(resolve(inputs.get("seed", inputs.get("noise_seed")), ("seed", "value", "noise_seed"))),
         steps=_int(resolve(inputs.get("steps"), ("steps", "value")), True),
         cfg_scale=_float(resolve(inputs.get("cfg"), ("cfg", "value"))),
         ensd=_int(inputs.get("ensd")))
    if inputs.get("seed_mode") == "A1111":  # Tensor.Art's A1111 seed mode: A1111's GPU noise
        p.rng = "nv"
    if "sampler_name" in inputs:
        _comfy_sampler(p, resolve(inputs["sampler_name"], ("sampler_name", "value")),
                       resolve(inputs.get("scheduler"), ("scheduler", "value")))
    else:
        p.sampler = p.schedule = None
        p.notes.append(f"the {first.get('class_type')} node's sampler is not restored")
    chain = upstream(inputs.get("latent_image"))
    sized = next((n for n in chain if "width" in n["inputs"] and "height" in n["inputs"]), None)
    if sized is not None:
        _set(p, width=_int(resolve(sized["inputs"]["width"], ("width", "value")), True),
             height=_int(resolve(sized["inputs"]["height"], ("height", "value")), True))
    denoise = _float(inputs.get("denoise"))
    if denoise is not None and 0 < denoise < 1:
        p.strength = denoise
    positive = upstream(inputs.get("positive"))
    encoder = next((n for n in positive if "weight_interpretation" in n["inputs"] or "parser" in n["inputs"]), None)
    if encoder is not None:  # smZ / ADV_CLIP text encoders that weigh as A1111 does
        mode = _str(encoder["inputs"].get("weight_interpretation", encoder["inputs"].get("parser")))
        p.emphasis = "original" if mode.lower() == "a1111" else "comfy" if mode.lower() in ("comfy", "") else p.emphasis
    for node in positive:
        if node.get("class_type") == "CLIPSetLastLayer":
            layer = _int(node["inputs"].get("stop_at_clip_layer"))
            if layer is not None and -12 <= layer <= -1:
                p.clip_skip = -layer
            break
    for node in nodes.values():
        if "CheckpointLoader" in str(node.get("class_type", "")):
            ckpt = _str(node["inputs"].get("ckpt_name"))
            p.model_name = Path(ckpt.replace("\\", "/")).stem
            break
    second = [s for s in samplers if s is not first]
    if second:
        p.extra["Hires steps"] = str(second[0]["inputs"].get("steps"))
        p.extra["Hires denoising strength"] = str(second[0]["inputs"].get("denoise"))
        p.notes.append("the second sampler pass (hires fix) is not restored")
    return p


# ---------------------------------------------------------------- InvokeAI


def from_invokeai(text: str) -> ImageParams | None:
    """InvokeAI 3 to 6 ``invokeai_metadata``."""
    d = json.loads(text)
    if not isinstance(d, dict):
        return None
    p = ImageParams(prompt=_str(d.get("positive_prompt", d.get("prompt"))),
                    negative_prompt=_str(d.get("negative_prompt")))
    _set(p, seed=_int(d.get("seed")), steps=_int(d.get("steps"), True), cfg_scale=_float(d.get("cfg_scale")),
         width=_int(d.get("width"), True), height=_int(d.get("height"), True))
    clip = _int(d.get("clip_skip"))
    if clip is not None and 0 <= clip <= 11:
        p.clip_skip = clip + 1  # InvokeAI counts skipped layers: 0 = the last layer
    device = d.get("rand_device", "cpu")
    p.rng = "nv" if device == "cuda" else "cpu"  # InvokeAI's "cuda" noise is CUDA's randn: what "nv" emulates
    if device not in ("cpu", "cuda"):
        p.notes.append(f"InvokeAI's {device!r} noise is not available: CPU noise instead")
    sched = d.get("scheduler")
    if isinstance(sched, str):
        p.sampler, p.schedule = INVOKE_SCHEDULERS.get(sched, (None, None))
        if p.sampler is None:
            p.notes.append(f"sampler {sched!r} is not available")
            p.extra["Sampler"] = sched
    strength = _float(d.get("strength"))
    img2img = "img2img" in _str(d.get("generation_mode")) or "generation_mode" not in d
    if strength is not None and 0 <= strength <= 1 and img2img:
        p.strength = strength
    model = d.get("model")
    if isinstance(model, dict):
        p.model_name = _str(model.get("model_name", model.get("name")))
        p.model_hash = _str(model.get("hash"))
    elif isinstance(model, str):
        p.model_name = model
    p.version = "InvokeAI " + _str(d.get("app_version")) if d.get("app_version") else ""
    return p


def from_invokeai2(text: str) -> ImageParams | None:
    """InvokeAI 2.x ``sd-metadata`` JSON."""
    d = json.loads(text)
    image = d.get("image") if isinstance(d, dict) else None
    if not isinstance(image, dict):
        return None
    prompt = image.get("prompt")
    if isinstance(prompt, list):
        prompt = " ".join(_str(x.get("prompt")) for x in prompt if isinstance(x, dict))
    p = _invoke2_prompt(_str(prompt))
    _set(p, seed=_int(image.get("seed")), steps=_int(image.get("steps"), True),
         cfg_scale=_float(image.get("cfg_scale")), width=_int(image.get("width"), True),
         height=_int(image.get("height"), True))
    _a1111_sampler(p, _str(image.get("sampler")))
    strength = _float(image.get("strength"))
    if image.get("type") == "img2img" and strength is not None and 0 <= strength <= 1:
        p.strength = strength
    p.model_name = _str(d.get("model_weights"))
    p.model_hash = _str(d.get("model_hash"))
    p.version = "InvokeAI " + _str(d.get("app_version")) if d.get("app_version") else ""
    return p


def from_invokeai_dream(text: str) -> ImageParams | None:
    """InvokeAI 2.x "Dream" command line: '"prompt [negative]" -s 50 -S 42 -W 512 -H 768 -C 7.5 -A k_lms ...'."""
    try:
        words = shlex.split(text)
    except ValueError:
        return None
    if not words or words[0].startswith("-"):
        return None
    p = _invoke2_prompt(words[0])
    opts: dict[str, str] = {}
    for flag, value in itertools.pairwise(words[1:]):
        if flag.startswith("-") and not value.startswith("-"):
            opts[flag] = value
    _set(p, steps=_int(opts.get("-s"), True), seed=_int(opts.get("-S")), width=_int(opts.get("-W"), True),
         height=_int(opts.get("-H"), True), cfg_scale=_float(opts.get("-C")))
    if "-A" in opts:
        _a1111_sampler(p, opts["-A"])
    strength = _float(opts.get("-f"))
    if strength is not None and 0 <= strength <= 1:
        p.strength = strength
    return p


def _invoke2_prompt(text: str) -> ImageParams:
    """InvokeAI 2 writes the negative prompt inside the prompt, in square brackets."""
    negatives = re.findall(r"\[([^\[\]]*)\]", text)
    prompt = re.sub(r"\s*\[[^\[\]]*\]", "", text).strip()
    return ImageParams(prompt=prompt, negative_prompt=", ".join(n.strip() for n in negatives), rng="cpu")


def _a1111_sampler(p: ImageParams, name: str) -> None:
    """A k-diffusion alias ("k_lms", "k_euler_a") as InvokeAI 2 and NovelAI write them."""
    sampler, schedule, _ = sampler_from_a1111(name)
    p.sampler, p.schedule = sampler, schedule or "automatic"
    if sampler is None:
        p.notes.append(f"sampler {name!r} is not available")
        p.schedule = None


# ---------------------------------------------------------------- NovelAI, Tensor.Art


def from_novelai(text: str) -> ImageParams | None:
    """NovelAI's ``Comment`` JSON ({"steps", "sampler": "k_euler_ancestral", "scale", "uc", ...})."""
    d = json.loads(text)
    if not isinstance(d, dict) or "steps" not in d or "sampler" not in d:
        return None
    p = ImageParams(prompt=_str(d.get("prompt")), negative_prompt=_str(d.get("uc")))
    _set(p, steps=_int(d.get("steps"), True), seed=_int(d.get("seed")), cfg_scale=_float(d.get("scale")),
         width=_int(d.get("width"), True), height=_int(d.get("height"), True))
    _a1111_sampler(p, _str(d.get("sampler")))
    if p.sampler is not None and d.get("noise_schedule") in ("karras", "exponential", "polyexponential"):
        p.schedule = d["noise_schedule"]
    p.notes.append("NovelAI's model and noise are its own: the image will differ")
    p.model_name = "NovelAI"
    p.extra = _extra(d, {"prompt", "uc", "steps", "seed", "scale", "width", "height", "sampler", "noise_schedule",
                         "v4_prompt", "v4_negative_prompt", "signed_hash"})
    return p


def from_tensorart(text: str) -> ImageParams | None:
    """Tensor.Art's ``generation_data`` (used only when its ComfyUI graph is missing: its seed may be "-1")."""
    d = json.loads(text)
    if not isinstance(d, dict) or "prompt" not in d:
        return None
    p = ImageParams(prompt=_str(d.get("prompt")), negative_prompt=_str(d.get("negativePrompt")), rng="cpu",
                    emphasis="comfy")
    seed = _int(d.get("seed"))
    _set(p, steps=_int(d.get("steps"), True), cfg_scale=_float(d.get("cfgScale")),
         seed=seed if seed is not None and seed >= 0 else None, width=_int(d.get("width"), True),
         height=_int(d.get("height"), True), clip_skip=_int(d.get("clipSkip"), True),
         ensd=_int(d.get("etaNoiseSeedDelta")))
    _comfy_sampler(p, d.get("ksamplerName"), d.get("schedule"))
    model = d.get("baseModel")
    if isinstance(model, dict):
        p.model_name, p.model_hash = _str(model.get("modelFileName")), _str(model.get("hash"))
    return p


def from_comfy_text(text: str) -> ImageParams | None:
    return from_comfy_graph(json.loads(text))


# PNG text key (or the same key in EXIF) -> reader, in order of preference: the first that gives params wins.
READERS: tuple[tuple[str, Callable[[str], ImageParams | None]], ...] = (
    ("parameters", from_parameters_value),  # A1111 family, SwarmUI, Fooocus, RuinedFooocus
    ("invokeai_metadata", from_invokeai),  # InvokeAI 3-6
    ("sd-metadata", from_invokeai2),  # InvokeAI 2.x
    ("Dream", from_invokeai_dream),  # InvokeAI 2.x command line
    ("Comment", from_novelai),  # NovelAI
    ("prompt", from_comfy_text),  # ComfyUI (also Stability Matrix, Tensor.Art, SwarmUI)
    ("generation_data", from_tensorart),  # Tensor.Art
)
