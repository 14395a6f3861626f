"""Inkpunk Studio's from-scratch Stable Diffusion 1.x engine (pure PyTorch, no Qt).

The app and the CLI use only the names exported here.
"""

from engine.errors import Cancelled, CheckpointError

__all__ = ["Cancelled", "CheckpointError"]
