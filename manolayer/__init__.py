"""manolayer: a fast, stateless MANO-format hand model (torch + numpy only).

>>> from manolayer import ManoLayer
>>> layer = ManoLayer()          # the project's CC0 open hand, right side
>>> out = layer()                # mean pose, mean shape, batch of 1
>>> out.vertices.shape[-1], out.joints.shape[1:]
(3, torch.Size([21, 3]))
"""

from manolayer.errors import ForbiddenPickleError, ManoError, ManoFormatError, PoseInputError, SideMismatchError
from manolayer.io import OPEN_HAND_PATH, ManoModel, load_mano, mirror_model, model_from_arrays, save_mano_npz
from manolayer.layer import ManoLayer, ManoOutput

__all__ = [
    "ForbiddenPickleError",
    "ManoError",
    "ManoFormatError",
    "ManoLayer",
    "ManoModel",
    "ManoOutput",
    "OPEN_HAND_PATH",
    "PoseInputError",
    "SideMismatchError",
    "load_mano",
    "mirror_model",
    "model_from_arrays",
    "save_mano_npz",
]
