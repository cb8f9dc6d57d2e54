"""The network: :class:`HandMeshReconstructor` (image crop -> hand mesh) and its parts.

The names below are imported on first use; the parts live in their own modules
(``backbone``, ``global_stage``, ``keypoint_decoder``, ``joint_groups``, ``refinement``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from meshrec.lazy import lazy_attributes

_EXPORTS = {
    "HandMeshReconstructor": "meshrec.models.reconstructor",
    "ModelConfig": "meshrec.models.reconstructor",
    "Prediction": "meshrec.models.prediction",
}

__all__ = list(_EXPORTS)

__getattr__, __dir__ = lazy_attributes(__name__, _EXPORTS)

if TYPE_CHECKING:
    from meshrec.models.prediction import Prediction
    from meshrec.models.reconstructor import HandMeshReconstructor, ModelConfig
