"""Sampler and schedule names: ours, AUTOMATIC1111's labels and aliases, ComfyUI's, InvokeAI's and NovelAI's.

The tables are kept here rather than imported from ``engine`` so reading metadata never imports torch (and
so metadata can name samplers the running engine may not have yet). Sources: A1111 v1.10.1
``modules/sd_samplers_kdiffusion.py: samplers_k_diffusion`` (labels and aliases), ``sd_samplers_timesteps.py``
(DDIM, UniPC), ``sd_schedulers.py`` (schedule labels) and ``sd_samplers.py: get_sampler_and_scheduler`` (the
legacy " Karras"-style suffixes); ComfyUI ``comfy/samplers.py: KSAMPLER_NAMES, SCHEDULER_NAMES``.
"""

from __future__ import annotations

import re

# engine sampler name -> A1111 label (what we write)
SAMPLER_LABELS: dict[str, str] = {
    "euler": "Euler", "euler_a": "Euler a", "heun": "Heun", "dpm2": "DPM2", "dpm2_a": "DPM2 a", "lms": "LMS",
    "dpmpp_2s_a": "DPM++ 2S a", "dpmpp_2m": "DPM++ 2M", "dpmpp_sde": "DPM++ SDE", "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_3m_sde": "DPM++ 3M SDE", "ddim": "DDIM", "unipc": "UniPC", "ddpm": "DDPM",
    "lcm": "LCM", "tcd": "TCD",
}
# Old combined names (sampler + schedule), still accepted from saved settings, history and the library.
LEGACY_SAMPLERS: dict[str, tuple[str, str]] = {"dpmpp_2m_karras": ("dpmpp_2m", "karras")}
# every name a caller may hold -> its A1111 label (the app's captions use this)
DISPLAY_NAMES: dict[str, str] = {**SAMPLER_LABELS, "dpmpp_2m_karras": "DPM++ 2M Karras"}

# engine schedule name -> A1111 "Schedule type" label
SCHEDULE_LABELS: dict[str, str] = {
    "automatic": "Automatic", "uniform": "Uniform", "karras": "Karras", "exponential": "Exponential",
    "polyexponential": "Polyexponential", "sgm_uniform": "SGM Uniform", "normal": "Normal", "simple": "Simple",
}
# Schedules A1111 knows that we do not: recognised (for the suffix rule and a clear note), never restored.
_OTHER_SCHEDULES = ("KL Optimal", "Align Your Steps GITS", "Align Your Steps 11", "Align Your Steps 32",
                    "Align Your Steps", "DDIM", "Beta", "Turbo", "Linear Quadratic")

# Samplers that take their own timesteps: A1111 ignores "Schedule type" for them (sd_samplers_timesteps.py).
TIMESTEP_SAMPLERS = frozenset({"ddim", "unipc", "ddpm", "lcm", "tcd"})

# lower-cased A1111 label or alias -> (engine sampler, schedule or None)
_A1111: dict[str, tuple[str, str | None]] = {label.lower(): (name, None) for name, label in SAMPLER_LABELS.items()}
_A1111.update({
    "k_euler_a": ("euler_a", None), "k_euler_ancestral": ("euler_a", None), "k_euler": ("euler", None),
    "k_lms": ("lms", None), "k_heun": ("heun", None), "k_dpm_2": ("dpm2", None), "k_dpm_2_a": ("dpm2_a", None),
    "k_dpmpp_2s_a": ("dpmpp_2s_a", None), "k_dpmpp_2m": ("dpmpp_2m", None), "k_dpmpp_sde": ("dpmpp_sde", None),
    "k_dpmpp_2m_sde": ("dpmpp_2m_sde", None), "k_dpmpp_3m_sde": ("dpmpp_3m_sde", None),
    # A1111 1.0-1.5 aliases of the Karras variants
    "k_lms_ka": ("lms", "karras"), "k_dpm_2_ka": ("dpm2", "karras"), "k_dpm_2_a_ka": ("dpm2_a", "karras"),
    "k_dpmpp_2s_a_ka": ("dpmpp_2s_a", "karras"), "k_dpmpp_2m_ka": ("dpmpp_2m", "karras"),
    "k_dpmpp_sde_ka": ("dpmpp_sde", "karras"),
    # spelled out by Stability Matrix and others ("Euler Ancestral Karras"); the same k-diffusion function
    "euler ancestral": ("euler_a", None),
    # our own older combined name
    "dpmpp_2m_karras": ("dpmpp_2m", "karras"),
})
_A1111.update({name: (name, None) for name in SAMPLER_LABELS})

# ComfyUI sampler_name -> engine sampler. Its "ddim" is k-diffusion Euler (comfy/samplers.py: ksampler("euler")
# for "ddim"). The "_gpu" variants draw their Brownian noise on the GPU, which we cannot reproduce: not mapped.
COMFY_SAMPLERS: dict[str, str] = {
    "euler": "euler", "euler_ancestral": "euler_a", "heun": "heun", "dpm_2": "dpm2", "dpm_2_ancestral": "dpm2_a",
    "lms": "lms", "dpmpp_2s_ancestral": "dpmpp_2s_a", "dpmpp_sde": "dpmpp_sde", "dpmpp_2m": "dpmpp_2m",
    "dpmpp_2m_sde": "dpmpp_2m_sde", "dpmpp_3m_sde": "dpmpp_3m_sde", "ddim": "euler", "uni_pc": "unipc",
    "ddpm": "ddpm", "lcm": "lcm",
}
COMFY_SCHEDULES: dict[str, str] = {"normal": "normal", "karras": "karras", "exponential": "exponential",
                                   "sgm_uniform": "sgm_uniform", "simple": "simple"}
# InvokeAI 3+ "scheduler" -> (engine sampler, schedule). InvokeAI runs diffusers' schedulers
# (invokeai/backend/stable_diffusion/schedulers/schedulers.py): "_k" is use_karras_sigmas, no suffix the plain
# timesteps. Its "dpmpp_2s" is DPMSolverSinglestep, not A1111's ancestral DPM++ 2S a, and "dpmpp_3m" is not
# the SDE sampler: neither is mapped.
INVOKE_SCHEDULERS: dict[str, tuple[str, str]] = {
    **{name: (ours, "uniform") for name, ours in (
        ("euler", "euler"), ("euler_a", "euler_a"), ("heun", "heun"), ("lms", "lms"), ("kdpm_2", "dpm2"),
        ("kdpm_2_a", "dpm2_a"), ("dpmpp_2m", "dpmpp_2m"), ("dpmpp_sde", "dpmpp_sde"),
        ("dpmpp_2m_sde", "dpmpp_2m_sde"))},
    **{name + "_k": (ours, "karras") for name, ours in (
        ("euler", "euler"), ("heun", "heun"), ("lms", "lms"), ("kdpm_2", "dpm2"), ("kdpm_2_a", "dpm2_a"),
        ("dpmpp_2m", "dpmpp_2m"), ("dpmpp_sde", "dpmpp_sde"), ("dpmpp_2m_sde", "dpmpp_2m_sde"))},
    "ddim": ("ddim", "automatic"), "ddpm": ("ddpm", "automatic"), "unipc": ("unipc", "automatic"),
}


def split_legacy(name: str) -> tuple[str, str | None]:
    """``"dpmpp_2m_karras"`` -> ``("dpmpp_2m", "karras")``; any other name -> ``(name, None)``."""
    return LEGACY_SAMPLERS.get(name, (name, None))


def schedule_from_label(label: str) -> str | None:
    """An A1111 "Schedule type" label or a schedule name (any case) -> engine schedule name, or None."""
    key = label.strip().lower().replace(" ", "_")
    if key in SCHEDULE_LABELS:
        return key
    return {"sgmuniform": "sgm_uniform"}.get(key)


_SUFFIXES = sorted([*SCHEDULE_LABELS.values(), "SGMUniform", *_OTHER_SCHEDULES], key=len, reverse=True)


def sampler_from_a1111(label: str) -> tuple[str | None, str | None, str | None]:
    """An A1111 "Sampler" value -> (engine sampler, schedule from a legacy suffix, that suffix as written).

    Follows ``get_sampler_and_scheduler``: a trailing " Karras", " Exponential", ... names the schedule
    (``DPM++ 2M Karras`` -> dpmpp_2m + karras). Unlike A1111, an unknown name is not replaced by a default: the
    sampler comes back None. The schedule is None when the suffix names one we do not have.
    """
    name = label.strip()
    suffix = None
    if name.lower() not in _A1111:
        for option in _SUFFIXES:
            if name.lower().endswith(" " + option.lower()):
                suffix, name = name[-len(option):], name[: -len(option) - 1].strip()
                break
    sampler, schedule = _A1111.get(name.lower(), (None, None))
    if sampler is None and suffix is None:  # ComfyUI names, as ComfyUI's A1111-style savers write them
        sampler, schedule, suffix = _comfy_combined(label.strip())
        return sampler, schedule, suffix
    if suffix is not None:
        schedule = schedule_from_label(suffix)
    return sampler, schedule, suffix


def a1111_version(version: str) -> tuple[int, int] | None:
    """(1, minor) of an A1111-family Version field: "v1.10.1", "1.6.0", Forge's "f2.0.1v1.10.1-...". """
    m = re.search(r"(?:^|v)1\.(\d+)", version.strip())
    return (1, int(m.group(1))) if m else None


def _comfy_combined(name: str) -> tuple[str | None, str | None, str | None]:
    """"euler_ancestral" or "euler_ancestral_karras" (ComfyUI-SaveImageWithMetaData) -> (sampler, schedule, suffix)."""
    if name in COMFY_SAMPLERS:
        return COMFY_SAMPLERS[name], None, None
    for suffix, schedule in COMFY_SCHEDULES.items():
        base = name[: -len(suffix) - 1]
        if name.endswith("_" + suffix) and base in COMFY_SAMPLERS:
            return COMFY_SAMPLERS[base], schedule, suffix
    return None, None, None
