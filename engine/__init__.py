"""Inkpunk Studio's from-scratch Stable Diffusion 1.x engine (pure PyTorch, no Qt).

The app and the CLI use only the names exported here. Importing the package is cheap: the sampler names,
the exceptions and the request types need no PyTorch, and everything else (torch, the models, the tokenizer)
is imported on first use, so the app's window is up before the seconds of `import torch` (which the model
load then pays on the worker thread).
"""

from __future__ import annotations

import importlib
from functools import lru_cache
from typing import TYPE_CHECKING, Any

from engine.errors import Cancelled, CheckpointError
from engine.hires import HiresFix
from engine.names import (
    DEFAULT_SCHEDULE,
    DISPLAY_NAMES,
    LEGACY_NAMES,
    MAX_STEPS,
    SAMPLERS,
    SCHEDULE_LABELS,
    SCHEDULE_NAMES,
    resolve_sampler,
)
from engine.request import GenerationRequest, GenerationResult, StepEvent

if TYPE_CHECKING:
    from engine.embeddings import Embedding, load_embedding
    from engine.hashes import addnet_hash, embedding_hash, lora_hash, model_hash, vae_hash
    from engine.lora import LoraSet, apply_loras
    from engine.pipeline import Pipeline, load_pipeline
    from engine.samplers import get_sampler
    from engine.taesd import TinyAutoencoder, load_taesd
    from engine.vae_file import load_vae

# name -> the module that defines it, imported on first access (PEP 562).
_LAZY = {
    "Pipeline": "engine.pipeline",
    "load_pipeline": "engine.pipeline",
    "get_sampler": "engine.samplers",
    "LoraSet": "engine.lora",
    "apply_loras": "engine.lora",
    "Embedding": "engine.embeddings",
    "load_embedding": "engine.embeddings",
    "load_vae": "engine.vae_file",
    "addnet_hash": "engine.hashes",
    "embedding_hash": "engine.hashes",
    "lora_hash": "engine.hashes",
    "model_hash": "engine.hashes",
    "vae_hash": "engine.hashes",
    "TinyAutoencoder": "engine.taesd",
    "load_taesd": "engine.taesd",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'engine' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


@lru_cache(maxsize=1)
def _tokenizer():
    from engine.tokenizer import Tokenizer

    return Tokenizer()


def count_tokens(text: str) -> int:
    """Number of CLIP tokens in `text` (without start/end tokens), for '12/75'-style counters."""
    return _tokenizer().count_tokens(text)


__all__ = [
    "DEFAULT_SCHEDULE",
    "DISPLAY_NAMES",
    "LEGACY_NAMES",
    "MAX_STEPS",
    "SAMPLERS",
    "SCHEDULE_LABELS",
    "SCHEDULE_NAMES",
    "Cancelled",
    "CheckpointError",
    "Embedding",
    "GenerationRequest",
    "GenerationResult",
    "HiresFix",
    "LoraSet",
    "Pipeline",
    "StepEvent",
    "TinyAutoencoder",
    "addnet_hash",
    "apply_loras",
    "count_tokens",
    "embedding_hash",
    "get_sampler",
    "load_embedding",
    "load_pipeline",
    "load_taesd",
    "load_vae",
    "lora_hash",
    "model_hash",
    "resolve_sampler",
    "vae_hash",
]
