"""``ImageParams`` and the AUTOMATIC1111 infotext ("parameters" text), written and read as A1111 does.

Writing follows ``modules/processing.py: create_infotext`` (field order, research doc §5.2); reading follows
``modules/infotext_utils.py: parse_generation_parameters`` (its regex and quoting, §5.1) and A1111's defaults
for a missing field (§5.3), with the legacy schedule rule of §4.2: an infotext without ``Schedule type`` comes
from A1111 <= 1.8, where a sampler name without a " Karras"-style suffix meant the uniform schedule.
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from .names import (
    DISPLAY_NAMES,
    SAMPLER_LABELS,
    SCHEDULE_LABELS,
    TIMESTEP_SAMPLERS,
    a1111_version,
    sampler_from_a1111,
    schedule_from_label,
    split_legacy,
)

log = logging.getLogger(__name__)

MAX_TEXT = 16 << 20  # metadata text larger than this is not generation metadata

# A1111's own pattern (modules/infotext_utils.py: re_param): "Key: value" or 'Key: "json, quoted"', comma separated
RE_PARAM = re.compile(r'\s*(\w[\w \-/]+):\s*("(?:\\.|[^\\"])+"|[^,]*)(?:,|$)')
_RE_SIZE = re.compile(r"^(\d+)x(\d+)$")

RNG_LABELS = {"cpu": "CPU", "nv": "NV"}
_RNG_FROM_LABEL = {"cpu": "cpu", "nv": "nv", "gpu": "nv"}  # A1111 "GPU" noise is what our Philox "nv" reproduces
EMPHASIS_LABELS = {"original": "Original", "no_norm": "No norm", "ignore": "Ignore", "none": "None",
                   "comfy": "Comfy"}
_EMPHASIS_FROM_LABEL = {v.lower(): k for k, v in EMPHASIS_LABELS.items()}

# Keys the fields below own: an ``extra`` entry under one of them is never written (the field decides).
_FIELD_KEYS = {"Steps", "CFG scale", "Seed", "Size", "Model hash", "Model", "VAE hash", "VAE", "Variation seed",
               "Variation seed strength", "Clip skip", "ENSD", "RNG", "Emphasis", "Lora hashes", "TI hashes",
               "Version", "Negative prompt", "Prompt"}
_CFG_SKIP_KEYS = {"Skip Early CFG", "NGMS", "NGMS all steps"}  # the ImageParams uncond-skip fields below
_FIELD_KEYS |= _CFG_SKIP_KEYS
_FIELD_KEYS |= {"Token merging ratio", "Token merging ratio hr"}  # token merging (engine.tome)
# A1111's hires fix keys the window restores (the side panel's hires section; "Hires resize" is "Resize to")
HIRES_RESTORED = {"Hires upscale", "Hires resize", "Hires steps", "Hires upscaler"}


@dataclass
class ImageParams:
    """Generation parameters as stored in an image. ``None`` in ``sampler``/``schedule`` means "not restored".

    ``notes`` says, in words for the status bar, what the file recorded that could not be restored (an unknown
    sampler, a schedule we lack, ...); it is not part of equality.
    """

    prompt: str = ""
    negative_prompt: str = ""
    steps: int = 25
    sampler: str | None = "dpmpp_2m"  # engine sampler name
    cfg_scale: float = 7.5
    seed: int | None = None
    width: int = 512
    height: int = 512
    strength: float | None = None  # img2img only ("Denoising strength")
    model_name: str = ""
    model_hash: str = ""
    extra: dict[str, str] = field(default_factory=dict)  # keys we don't use, kept as written
    schedule: str | None = "automatic"  # engine schedule name; "automatic" = the sampler's A1111 default
    clip_skip: int = 1
    rng: str = "cpu"  # "cpu" (torch CPU generator) or "nv" (A1111's Philox emulation of CUDA: "GPU"/"NV")
    ensd: int = 0  # A1111 eta_noise_seed_delta
    emphasis: str = "original"
    variation_seed: int | None = None
    variation_strength: float = 0.0
    lora_hashes: dict[str, str] = field(default_factory=dict)
    ti_hashes: dict[str, str] = field(default_factory=dict)
    vae_name: str = ""
    vae_hash: str = ""
    version: str = ""
    # --- A1111's uncond skips (opts.skip_early_cond, s_min_uncond, s_min_uncond_all; engine.denoiser): what
    # an image records is what its generation used (set_cfg_skips), as A1111 v1.10 writes the keys only then
    skip_early_cond: float = 0.0  # "Skip Early CFG"
    s_min_uncond: float = 0.0  # "NGMS"
    s_min_uncond_all: bool = False  # "NGMS all steps"
    # A1111's token merging (engine.tome): the first pass's ratio and, when a hires pass ran, its own
    # (A1111 writes the hires pass's effective ratio, its own or else the first pass's); 0: off/not written
    token_merging_ratio: float = 0.0
    token_merging_ratio_hr: float = 0.0
    notes: list[str] = field(default_factory=list, compare=False)

    @property
    def legacy_sampler(self) -> str | None:
        """The old combined engine name (``dpmpp_2m`` + ``karras`` -> ``dpmpp_2m_karras``) for code that has no
        schedule yet; any other pair gives ``sampler``."""
        if self.sampler == "dpmpp_2m" and self.schedule in ("karras", "automatic"):
            return "dpmpp_2m_karras"
        return self.sampler

    def to_parameters_text(self) -> str:
        """The A1111 ``parameters`` text: prompt, optional negative line, then the comma-separated settings."""
        sampler, schedule = split_legacy(self.sampler) if self.sampler else (None, None)
        schedule = self.schedule if schedule is None or self.schedule not in (None, "automatic") else schedule
        items: list[tuple[str, str]] = [("Steps", str(int(self.steps)))]
        if sampler:
            items.append(("Sampler", SAMPLER_LABELS.get(sampler, sampler)))
        if schedule:
            items.append(("Schedule type", SCHEDULE_LABELS.get(schedule, schedule)))
        items.append(("CFG scale", _fmt_float(self.cfg_scale)))
        if self.seed is not None:
            items.append(("Seed", str(int(self.seed))))
        items.append(("Size", f"{int(self.width)}x{int(self.height)}"))
        for key, value in (("Model hash", self.model_hash), ("Model", self.model_name),
                           ("VAE hash", self.vae_hash), ("VAE", self.vae_name)):
            if value:
                items.append((key, value))
        if self.variation_strength and self.variation_seed is not None:
            items += [("Variation seed", str(int(self.variation_seed))),
                      ("Variation seed strength", _fmt_float(self.variation_strength))]
        if self.strength is not None:
            items.append(("Denoising strength", _fmt_float(self.strength)))
        if int(self.clip_skip) > 1:
            items.append(("Clip skip", str(int(self.clip_skip))))
        if int(self.ensd) != 0:
            items.append(("ENSD", str(int(self.ensd))))
        # A1111 create_infotext: after ENSD, each only when not 0
        for key, ratio in (("Token merging ratio", self.token_merging_ratio),
                           ("Token merging ratio hr", self.token_merging_ratio_hr)):
            if ratio:
                items.append((key, _fmt_float(ratio)))
        items.append(("RNG", RNG_LABELS.get(self.rng, self.rng)))
        if self.lora_hashes:
            items.append(("Lora hashes", _hash_list(self.lora_hashes)))
        if self.ti_hashes:
            items.append(("TI hashes", _hash_list(self.ti_hashes)))
        uses_emphasis = any(c in text for text in (self.prompt, self.negative_prompt) for c in "([")
        if self.emphasis != "original" and uses_emphasis:
            items.append(("Emphasis", EMPHASIS_LABELS.get(self.emphasis, self.emphasis)))
        written = {k for k, _ in items}
        items += [(str(k), str(v)) for k, v in self.extra.items()
                  if k not in written and k not in _FIELD_KEYS and _is_key(str(k))]
        items += self._cfg_skip_items()
        if self.version:
            items.append(("Version", self.version))
        settings = ", ".join(f"{k}: {_quote(v)}" for k, v in items)
        negative = f"\nNegative prompt: {self.negative_prompt}" if self.negative_prompt else ""
        return f"{self.prompt}{negative}\n{settings}"

    def _cfg_skip_items(self) -> list[tuple[str, str]]:
        """A1111 CFGDenoiser.forward puts these into extra_generation_params during sampling (after the keys set
        before it), Skip Early CFG at the first call, NGMS at the first skip it makes."""
        items = []
        if self.skip_early_cond:
            items.append(("Skip Early CFG", _fmt_float(self.skip_early_cond)))
        if self.s_min_uncond:
            items.append(("NGMS", _fmt_float(self.s_min_uncond)))
            if self.s_min_uncond_all:
                items.append(("NGMS all steps", "True"))
        return items

    def set_cfg_skips(self, skips: dict[str, Any]) -> None:
        """Record the uncond skips a generation made (engine GenerationResult.cfg_skips: "Skip Early CFG",
        "NGMS", "NGMS all steps" -> value); a setting that skipped nothing is not recorded, as in A1111."""
        self.skip_early_cond = float(skips.get("Skip Early CFG", 0.0))
        self.s_min_uncond = float(skips.get("NGMS", 0.0))
        self.s_min_uncond_all = bool(skips.get("NGMS all steps", False))

    def stored_extra(self) -> dict[str, str]:
        """``extra`` plus the A1111 keys of the fields a row with the original columns (prompt, negative, seed,
        steps, cfg, sampler, size, model, strength) has no column for: schedule, clip skip, RNG, ENSD, emphasis,
        variation, hashes, VAE, version. ``from_stored`` turns such a row back into the same ImageParams."""
        settings = self.to_parameters_text().rsplit("\n", 1)[1]
        raw = {k.strip(): _unquote(v.strip()) for k, v in RE_PARAM.findall(settings)}
        for key in ("Steps", "Sampler", "CFG scale", "Seed", "Size", "Model hash", "Model", "Denoising strength"):
            raw.pop(key, None)
        return {**self.extra, **raw}

    @classmethod
    def from_stored(cls, sampler: str | None, extra: dict[str, str], **columns: Any) -> ImageParams:
        """The inverse of ``stored_extra``: ``columns`` are ImageParams fields, ``sampler`` the stored engine name
        (old rows hold combined names such as ``dpmpp_2m_karras``; "" means unknown)."""
        p = cls(**columns)
        raw = dict(extra)
        if sampler:
            raw.setdefault("Sampler", DISPLAY_NAMES.get(sampler, sampler))
        raw.setdefault("RNG", "CPU")  # rows from before the RNG field were made here, with the CPU generator
        apply_a1111(p, raw)
        return p

    @classmethod
    def from_parameters_text(cls, text: str) -> ImageParams | None:
        """Parse an A1111 ``parameters`` text (or a JSON dialect, see ``formats``). ``None`` if there is nothing."""
        from .formats import from_parameters_value

        try:
            return from_parameters_value(text)
        except Exception:  # metadata from the wild must never raise into the GUI
            log.debug("unparseable parameters text", exc_info=True)
            return None


def _is_key(k: str) -> bool:
    return bool(re.fullmatch(r"\w[\w \-/]*", k)) and "\n" not in k


def _fmt_float(x: float) -> str:
    x = float(x)
    return str(int(x)) if x.is_integer() else repr(round(x, 6))


def _hash_list(hashes: dict[str, str]) -> str:
    # A1111's Lora script strips ":" and "," from names so the list parses back (extra_networks_lora.py)
    return ", ".join(f"{k.replace(':', '').replace(',', '')}: {v}" for k, v in hashes.items())


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


def parse_a1111(text: str) -> ImageParams | None:
    """A1111 infotext -> ImageParams, or None when ``text`` has no settings line (a bare comment or prompt)."""
    if not isinstance(text, str) or not text.strip() or len(text) > MAX_TEXT:
        return None
    *lines, last = text.strip().replace("\r\n", "\n").split("\n")
    if len(RE_PARAM.findall(last)) < 3:  # A1111's test for a settings line; without one there are no settings
        return None
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
    for key, value in RE_PARAM.findall(last):
        raw[key.strip()] = _unquote(value.strip())
    apply_a1111(p, raw)
    return p


def apply_a1111(p: ImageParams, raw: dict[str, str]) -> None:
    """Set ``p``'s fields from A1111 key/value pairs with A1111's defaults; the rest goes to ``p.extra``."""
    rest = dict(raw)
    hires = any(k.startswith("Hires") for k in raw)

    def take(key: str, conv: Callable[[str], Any], check: Callable[[Any], bool] = lambda v: True) -> Any:
        if key not in rest:
            return None
        try:
            value = conv(rest[key])
        except (ValueError, TypeError, OverflowError):
            value = None
        if value is None or not check(value):
            p.notes.append(f"{key} {rest[key]!r} is not a usable value")
            return None  # stays in extra
        del rest[key]
        return value

    if (v := take("Steps", int, lambda v: v > 0)) is not None:
        p.steps = v
    if (v := take("CFG scale", float, math.isfinite)) is not None:
        p.cfg_scale = v
    if (v := take("Seed", int)) is not None:
        p.seed = v
    if (v := take("Size", _parse_size)) is not None:
        p.width, p.height = v
    if not hires and (v := take("Denoising strength", float, lambda v: 0 <= v <= 1)) is not None:
        p.strength = v
    for key, attr in (("Model hash", "model_hash"), ("Model", "model_name"), ("VAE hash", "vae_hash"),
                      ("VAE", "vae_name"), ("Version", "version")):
        if key in rest:
            setattr(p, attr, rest.pop(key))
    p.clip_skip = take("Clip skip", int, lambda v: 1 <= v <= 12) or 1
    p.ensd = take("ENSD", int) or 0
    for key, attr in (("Token merging ratio", "token_merging_ratio"),
                      ("Token merging ratio hr", "token_merging_ratio_hr")):
        setattr(p, attr, take(key, float, lambda v: 0 <= v < 1) or 0.0)  # engine.tome's range
    p.rng = "nv"  # A1111: no RNG field means "GPU"
    for key, attr, labels in (("RNG", "rng", _RNG_FROM_LABEL), ("Emphasis", "emphasis", _EMPHASIS_FROM_LABEL)):
        if key in rest:
            if (v := labels.get(rest[key].strip().lower())) is not None:
                setattr(p, attr, v)
                del rest[key]
            else:
                p.notes.append(f"{key} {rest[key]!r} is not available")
    _apply_cfg_skips(p, take, rest)
    # the hires fix stays in extra (the window restores it: editing.hires_from_infotext); what it cannot take
    # (A1111's hires sampler, prompts, CFG scale, checkpoint, schedule type) is said
    p.notes += [f"{key} is not restored" for key in rest
                if key.startswith("Hires") and key not in HIRES_RESTORED]
    if "Variation seed" in rest or "Variation seed strength" in rest:
        seed = take("Variation seed", int)
        strength = take("Variation seed strength", float, lambda v: 0 <= v <= 1)
        if seed is not None and strength is not None:
            p.variation_seed, p.variation_strength = seed, strength
    for key, attr in (("Lora hashes", "lora_hashes"), ("TI hashes", "ti_hashes")):
        if key in rest:
            setattr(p, attr, _parse_hashes(rest.pop(key)))
    _apply_sampler(p, rest)
    p.notes += _backcompat_notes(p, rest)
    p.extra = rest


def _apply_cfg_skips(p: ImageParams, take: Callable[..., Any], rest: dict[str, str]) -> None:
    """NGMS, NGMS all steps, Skip Early CFG (A1111 options with these infotext names; missing: off)."""
    p.s_min_uncond = take("NGMS", float, lambda v: math.isfinite(v) and v >= 0) or 0.0
    p.skip_early_cond = take("Skip Early CFG", float, lambda v: 0 <= v <= 1) or 0.0
    if "NGMS all steps" in rest:
        p.s_min_uncond_all = rest.pop("NGMS all steps").strip().lower() == "true"


def _backcompat_notes(p: ImageParams, rest: dict[str, str]) -> list[str]:
    """What an older A1111 did differently (``infotext_versions.backcompat``, research doc §5.3), said, since
    we reproduce A1111 >= 1.8. The flags may also be written out ("Downcast alphas_cumprod: True")."""
    version = a1111_version(p.version)
    old = version is not None and version < (1, 6)
    flags = {
        "Old prompt editing timelines": old and any("[" in t for t in (p.prompt, p.negative_prompt)),
        "Pad conds v0": old and p.sampler == "ddim",
        "Downcast alphas_cumprod": version is not None and version < (1, 8),
    }
    for key in flags:
        if key in rest:
            flags[key] = rest[key].strip().lower() == "true"
    return [f"{key} (older A1111 behaviour) is not reproduced" for key, on in flags.items() if on]


def _apply_sampler(p: ImageParams, rest: dict[str, str]) -> None:
    """Sampler and schedule, with the legacy rule; anything we lack is left unset, kept in extra, and noted."""
    label = rest.get("Sampler")
    sampler, suffix_schedule, suffix = sampler_from_a1111(label) if label is not None else (None, None, None)
    p.sampler = sampler
    if sampler is not None:
        del rest["Sampler"]
    elif label is not None:
        p.notes.append(f"sampler {label!r} is not available")
    schedule_label = rest.get("Schedule type")
    if schedule_label is not None:
        p.schedule = schedule_from_label(schedule_label)
        if p.schedule is not None:
            del rest["Schedule type"]
        else:
            p.notes.append(f"schedule {schedule_label!r} is not available")
    elif suffix is not None:
        p.schedule = suffix_schedule
        if suffix_schedule is None:
            p.notes.append(f"schedule {suffix!r} (from the sampler {label!r}) is not available")
            rest["Schedule type"] = suffix  # kept, so a re-save still says which schedule it was
    elif sampler in TIMESTEP_SAMPLERS:
        p.schedule = "automatic"  # these take their own timesteps; A1111 ignores the schedule
    elif suffix_schedule is not None:  # an alias that names its schedule (k_dpmpp_2m_ka)
        p.schedule = suffix_schedule
    elif sampler is None:
        p.schedule = None
    else:
        version = a1111_version(p.version)
        # no "Schedule type" before A1111 1.9: an unsuffixed name meant the uniform schedule (research doc §4.2)
        p.schedule = "automatic" if version is not None and version >= (1, 9) else "uniform"


def _parse_hashes(value: str) -> dict[str, str]:
    """'name: hash, name2: hash2' -> {name: hash} (A1111's Lora/TI hash lists)."""
    out: dict[str, str] = {}
    for item in value.split(","):
        name, sep, digest = item.rpartition(":")
        if sep and name.strip() and digest.strip():
            out[name.strip()] = digest.strip()
    return out


def _parse_size(v: str) -> tuple[int, int]:
    m = _RE_SIZE.match(v.strip())
    if not m or int(m.group(1)) <= 0 or int(m.group(2)) <= 0:
        raise ValueError(v)
    return int(m.group(1)), int(m.group(2))
