"""Inkpunk Studio's from-scratch Stable Diffusion 1.x engine (pure PyTorch, no Qt).

The app and the CLI use only the names exported here.
"""

from __future__ import annotations

from functools import lru_cache

from engine.errors import Cancelled, CheckpointError
from engine.pipeline import Pipeline, load_pipeline
from engine.request import GenerationRequest, GenerationResult, StepEvent
from engine.samplers import DISPLAY_NAMES, make_sampler

# Sampler names in the order a person should see them: best quality per second first.
SAMPLERS: tuple[str, ...] = ("dpmpp_2m_karras", "dpmpp_2m", "euler_a", "euler", "ddim", "ddpm")


@lru_cache(maxsize=1)
def _tokenizer():
    from engine.tokenizer import Tokenizer

    return Tokenizer()


def count_tokens(text: str) -> int:
    """Number of CLIP tokens in `text` (without start/end tokens), for '12/75'-style counters."""
    return _tokenizer().count_tokens(text)


__all__ = [
    "DISPLAY_NAMES",
    "SAMPLERS",
    "Cancelled",
    "CheckpointError",
    "GenerationRequest",
    "GenerationResult",
    "Pipeline",
    "StepEvent",
    "count_tokens",
    "load_pipeline",
    "make_sampler",
]
