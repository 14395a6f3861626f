"""Exceptions the engine raises on purpose: callers catch these, not bare tracebacks."""


class CheckpointError(Exception):
    """A checkpoint file could not be read as an SD1.x model: corrupt, unsafe, or another architecture."""


class Cancelled(Exception):
    """Generation stopped because the caller set the cancel event; nothing half-made is returned."""
