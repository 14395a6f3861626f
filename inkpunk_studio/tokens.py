"""CLIP token counting for the prompt counters: ``engine.count_tokens``, safe to call from any thread.

A small service so the widgets reach the engine through its public face, not through the worker module. The
worker shares the same lock when it loads a model (see :func:`warm_up_tokenizer`).
"""

from __future__ import annotations

import threading

import engine

_tokenizer_lock = threading.Lock()


def warm_up_tokenizer() -> None:
    """Load the engine's tokenizer once, under a lock, before any thread uses it.

    transformers resolves its classes lazily and that is not thread-safe: the model load (worker thread) and
    the token counter (I/O pool) importing it at the same moment fail with "cannot import name". Whoever
    comes first does the import; the other waits for it (it needs it anyway).
    """
    with _tokenizer_lock:
        engine.count_tokens("")


def count_tokens(text: str) -> int:
    """CLIP tokens in ``text`` (thread-safe; the first call loads the tokenizer)."""
    warm_up_tokenizer()
    return engine.count_tokens(text)


def count_prompt(text: str, emphasis: str = "original") -> tuple[int, int]:
    """(tokens, limit) as A1111's token counter shows them ("80/150"): counted in 75-token chunks, BREAK and the
    prompt's schedule included, <lora:...> tags left out (``engine.prompt.token_count``). Thread-safe."""
    from engine.prompt import token_count  # torch-free; its tokenizer loads transformers, hence the warm-up

    warm_up_tokenizer()
    return token_count(text, emphasis)
