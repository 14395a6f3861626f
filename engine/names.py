"""Sampler names, importable without PyTorch: the app builds its widgets from them while the engine loads."""

from __future__ import annotations

# Sampler names in the order a person should see them: best quality per second first.
SAMPLERS: tuple[str, ...] = ("dpmpp_2m_karras", "dpmpp_2m", "euler_a", "euler", "ddim", "ddpm")

# The names AUTOMATIC1111's web UI writes into its "Sampler:" metadata.
DISPLAY_NAMES: dict[str, str] = {
    "ddpm": "DDPM",
    "ddim": "DDIM",
    "euler": "Euler",
    "euler_a": "Euler a",
    "dpmpp_2m": "DPM++ 2M",
    "dpmpp_2m_karras": "DPM++ 2M Karras",
}
