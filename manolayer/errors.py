"""Typed errors raised at manolayer's public boundaries.

Every message names the problem and what was expected, so a user can fix the input
without reading the source.
"""


class ManoError(ValueError):
    """Base class of manolayer's input errors."""


class ManoFormatError(ManoError):
    """A MANO-format file is unreadable, incomplete or inconsistent."""


class ForbiddenPickleError(ManoFormatError):
    """A pickle asked for a global that the restricted unpickler refuses to build."""


class SideMismatchError(ManoFormatError):
    """The hand side asked for disagrees with the side the file declares."""


class PoseInputError(ManoError):
    """A pose, shape or translation tensor passed to ManoLayer has the wrong shape or values."""
