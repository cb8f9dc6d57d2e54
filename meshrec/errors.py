"""Typed errors raised at meshrec's public boundaries (messages say expected vs actual)."""


class MeshrecError(ValueError):
    """Base class of meshrec's input and configuration errors."""


class DatasetError(MeshrecError):
    """A dataset file or sample is missing, corrupt or inconsistent.

    The message names the file and the sample index; both are also kept as attributes
    (``path`` may be ``None`` for in-memory data, ``index`` is ``None`` for a whole-file fault).
    """

    def __init__(self, message: str, *, path: object = None, index: int | None = None) -> None:
        super().__init__(message)
        self.path = path
        self.index = index
