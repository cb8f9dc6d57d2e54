"""Typed errors raised at meshrec's public boundaries (messages say expected vs actual)."""


class MeshrecError(ValueError):
    """Base class of meshrec's input and configuration errors."""
