"""Sampler and schedule names, importable without PyTorch: the app builds its widgets from them while the
engine loads, and a request is validated with them before `import torch` has finished.

The table follows AUTOMATIC1111 v1.10 (modules/sd_samplers_kdiffusion.py `samplers_k_diffusion`,
modules/sd_samplers_timesteps.py, modules/sd_schedulers.py); see ../shared/research/a1111-reproduction.md
§4.2. Engine names are k-diffusion's function names without `sample_`, shortened as A1111's aliases are.
"""

from __future__ import annotations

# In A1111's menu order (its default, DPM++ 2M with the Karras schedule, first).
SAMPLERS: tuple[str, ...] = (
    "dpmpp_2m",
    "dpmpp_sde",
    "dpmpp_2m_sde",
    "dpmpp_2s_a",
    "dpmpp_3m_sde",
    "euler_a",
    "euler",
    "lms",
    "heun",
    "dpm2",
    "dpm2_a",
    "ddim",
    "unipc",
    "ddpm",
    "lcm",
    "tcd",
)

# The labels A1111 writes into its "Sampler:" metadata (DDPM is ours: A1111 has no such sampler).
DISPLAY_NAMES: dict[str, str] = {
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_sde": "DPM++ SDE",
    "dpmpp_2m_sde": "DPM++ 2M SDE",
    "dpmpp_2s_a": "DPM++ 2S a",
    "dpmpp_3m_sde": "DPM++ 3M SDE",
    "euler_a": "Euler a",
    "euler": "Euler",
    "lms": "LMS",
    "heun": "Heun",
    "dpm2": "DPM2",
    "dpm2_a": "DPM2 a",
    "ddim": "DDIM",
    "unipc": "UniPC",
    "ddpm": "DDPM",
    "lcm": "LCM",
    "tcd": "TCD",
}

# Schedule names in A1111's menu order (modules/sd_schedulers.py `schedulers`), "automatic" first: the
# sampler's own default. Only the schedules engine.schedules implements are listed.
SCHEDULE_NAMES: tuple[str, ...] = (
    "automatic",
    "uniform",
    "karras",
    "exponential",
    "polyexponential",
    "sgm_uniform",
    "normal",
    "simple",
)

SCHEDULE_LABELS: dict[str, str] = {
    "automatic": "Automatic",
    "uniform": "Uniform",
    "karras": "Karras",
    "exponential": "Exponential",
    "polyexponential": "Polyexponential",
    "sgm_uniform": "SGM Uniform",
    "normal": "Normal",
    "simple": "Simple",
}

# Samplers that walk their own timestep grid (A1111 >= 1.6 sd_samplers_timesteps.py; DDPM is diffusers'
# 'leading' grid; LCM and TCD pick theirs from the 50-step distillation grid as diffusers' LCMScheduler and
# TCDScheduler do): the Schedule type does not apply to them and A1111 writes none for DDIM/UniPC.
TIMESTEP_SAMPLERS: frozenset[str] = frozenset({"ddim", "unipc", "ddpm", "lcm", "tcd"})

# What "Automatic" means for each sampler in A1111 v1.9-v1.10 (None: the sampler's own timesteps).
DEFAULT_SCHEDULE: dict[str, str | None] = {
    "dpmpp_2m": "karras",
    "dpmpp_sde": "karras",
    "dpmpp_2m_sde": "exponential",
    "dpmpp_2s_a": "karras",
    "dpmpp_3m_sde": "exponential",
    "euler_a": "uniform",
    "euler": "uniform",
    "lms": "uniform",
    "heun": "uniform",
    "dpm2": "karras",
    "dpm2_a": "karras",
    "ddim": None,
    "unipc": None,
    "ddpm": None,
    "lcm": None,
    "tcd": None,
}

# The most steps a sampler takes (the few-step samplers pick their steps from a 50-step distillation grid).
MAX_STEPS: dict[str, int] = {"lcm": 50, "tcd": 50}

# Flags of A1111's sampler table (research notes §4.2, §4.6):
# two UNet calls per step, so the prompt schedule counts 2 * steps calls;
SECOND_ORDER: frozenset[str] = frozenset({"heun", "dpm2", "dpm2_a", "dpmpp_2s_a", "dpmpp_sde"})
# the next-to-last sigma is dropped (one more sigma is computed, then cut);
DISCARD_PENULTIMATE: frozenset[str] = frozenset({"dpm2", "dpm2_a", "dpmpp_3m_sde"})
# A1111 writes ENSD into the metadata for these (ancestral samplers with eta > 0);
USES_ENSD: frozenset[str] = frozenset({"euler_a", "dpm2_a", "dpmpp_2s_a"})
# noise comes from a Brownian tree seeded per image, not from the image's generator.
BROWNIAN: frozenset[str] = frozenset({"dpmpp_sde", "dpmpp_2m_sde", "dpmpp_3m_sde"})

# Old combined names (this project's first sampler list, A1111's pre-1.9 labels): name -> (sampler, schedule).
LEGACY_NAMES: dict[str, tuple[str, str]] = {
    "dpmpp_2m_karras": ("dpmpp_2m", "karras"),
    "dpmpp_sde_karras": ("dpmpp_sde", "karras"),
    "dpmpp_2m_sde_karras": ("dpmpp_2m_sde", "karras"),
    "dpmpp_2s_a_karras": ("dpmpp_2s_a", "karras"),
    "dpmpp_3m_sde_karras": ("dpmpp_3m_sde", "karras"),
    "lms_karras": ("lms", "karras"),
    "dpm2_karras": ("dpm2", "karras"),
    "dpm2_a_karras": ("dpm2_a", "karras"),
    "dpmpp_2m_sde_exponential": ("dpmpp_2m_sde", "exponential"),
    "dpmpp_3m_sde_exponential": ("dpmpp_3m_sde", "exponential"),
}


def resolve_sampler(sampler: str, schedule: str = "automatic") -> tuple[str, str]:
    """(sampler, schedule) as the request gives them -> (engine sampler, concrete schedule name).

    A legacy combined name brings its schedule:
    `("dpmpp_2m_karras", "automatic")` -> `("dpmpp_2m", "karras")`;
    a legacy name with a different explicit schedule is a contradiction and raises ValueError. "automatic"
    becomes the sampler's A1111 default; for the timestep samplers (DDIM, UniPC, DDPM) the result is
    "automatic" whatever was asked, as their grid ignores it.
    """
    if schedule not in SCHEDULE_NAMES:
        raise ValueError(f"unknown schedule {schedule!r}; choose one of: {', '.join(SCHEDULE_NAMES)}")
    if sampler in LEGACY_NAMES:
        base, implied = LEGACY_NAMES[sampler]
        if schedule not in ("automatic", implied):
            raise ValueError(
                f"sampler {sampler!r} already means the {implied} schedule, not {schedule!r}: "
                f"use sampler {base!r} with schedule {schedule!r}"
            )
        sampler, schedule = base, implied
    if sampler not in SAMPLERS:
        raise ValueError(f"unknown sampler {sampler!r}; choose one of: {', '.join(SAMPLERS)}")
    if sampler in TIMESTEP_SAMPLERS:
        return sampler, "automatic"
    if schedule == "automatic":
        schedule = DEFAULT_SCHEDULE[sampler]
    return sampler, schedule
