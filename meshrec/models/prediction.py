"""What the network says about a batch of crops: :class:`Prediction`.

Its own module (not the network's) so that mesh export, losses and visualisation can read it
without importing the network, and the network can hand out meshes without a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch

from meshrec.errors import MeshrecError
from meshrec.export import prediction_mesh
from meshrec.models.joint_groups import JointGroupsOutput
from meshrec.sides import SIDE_LEFT

__all__ = ["Prediction"]


@dataclass
class Prediction:
    """What the model says about a batch of B crops (camera frame of each crop, metres).

    Attributes:
        vertices: ``(B, V, 3)`` the final mesh.
        joints: ``(B, 21, 3)`` OpenPose order, regressed from ``vertices``.
        joints2d: ``(B, 21, 2)`` ``joints`` projected with ``K`` (pixels of the crop).
        root: ``(B, 3)`` the wrist of the parametric hand.
        joint_variance: ``(B, 21)`` sigma^2 (metres^2) of each joint's root-relative error after
            the last pass a sample ran (the wrist's is meaningless: its root-relative error is 0),
            or None when the loop is off.
        passes_used: ``(B,)`` int64 refinement-loop passes each sample ran.
        side: ``(B,)`` int64, 0 right, 1 left.
        K: ``(B, 3, 3)`` intrinsics used; image_size ``(H, W)``.
        global_vertices, global_joints: ``(B, V, 3)``, ``(B, 21, 3)`` the parametric stage.
        global_rotations: ``(B, 16, 3, 3)`` its local joint rotations (MANO joint order; for a
            left hand, those of the left model). betas ``(B, S)``; camera ``(B, 3)`` raw.
        level_vertices: coarse-to-fine outputs, finest first, ``(B, V_l, 3)`` each.
        pass_vertices, pass_log_variance, pass_exit_logit: per loop pass, ``(B, V, 3)``,
            ``(B, 21)`` and ``(B,)`` (at inference, samples that left keep their last values).
        keypoints2d, keypoint_depth: ``(B, 21, 2)`` pixels and ``(B, 21)`` root-relative depth
            from the keypoint head (None when it is off); keypoint_head: its full output.
        faces: ``(F, 3)`` the right hand's faces (see :meth:`faces_of`).
    """

    vertices: torch.Tensor
    joints: torch.Tensor
    joints2d: torch.Tensor
    root: torch.Tensor
    joint_variance: torch.Tensor | None
    passes_used: torch.Tensor
    side: torch.Tensor
    K: torch.Tensor
    image_size: tuple[int, int]
    global_vertices: torch.Tensor
    global_joints: torch.Tensor
    global_rotations: torch.Tensor
    betas: torch.Tensor
    camera: torch.Tensor
    faces: torch.Tensor
    level_vertices: list[torch.Tensor] = field(default_factory=list)
    pass_vertices: list[torch.Tensor] = field(default_factory=list)
    pass_log_variance: list[torch.Tensor] = field(default_factory=list)
    pass_exit_logit: list[torch.Tensor] = field(default_factory=list)
    keypoints2d: torch.Tensor | None = None
    keypoint_depth: torch.Tensor | None = None
    keypoint_head: JointGroupsOutput | None = None

    def __len__(self) -> int:
        return self.vertices.shape[0]

    def sample_index(self, index: int) -> int:
        """``index`` checked against the batch and made non-negative (``-1`` is the last sample)."""
        size = len(self)
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not -size <= index < size:
            raise MeshrecError(f"index must be an int in [0, {size - 1}] for a prediction of {size} samples, got {index!r}")
        return int(index) % size

    def faces_of(self, index: int) -> torch.Tensor:
        """``(F, 3)`` faces of sample ``index``, wound counter-clockwise seen from outside (a
        left hand's are the right hand's with two corners swapped, since its mesh is mirrored)."""
        return self.faces[:, [0, 2, 1]] if int(self.side[index]) == SIDE_LEFT else self.faces

    def to_trimesh(self, index: int, with_uncertainty: bool = True):
        """Sample ``index`` as a ``trimesh.Trimesh`` (vertex order kept; per-vertex uncertainty as
        vertex colours when the loop ran). See :func:`meshrec.export.prediction_mesh`."""
        return prediction_mesh(self, index, with_uncertainty=with_uncertainty)

    def stage_vertices(self, max_passes: int | None = None) -> dict[str, torch.Tensor]:
        """Full-resolution meshes of every stage, in order: ``global``, ``coarse_to_fine`` (when
        the refinement ran), ``pass_1`` ... ``pass_T``; each ``(B, V, 3)``.

        The gated loop stops once every sample of the batch has left, so a batch may have fewer
        passes than another; with ``max_passes`` the missing ones repeat the last pass (a sample
        that left keeps its last mesh, as at inference), so every batch has the same stages."""
        stages = {"global": self.global_vertices}
        if self.level_vertices:
            stages["coarse_to_fine"] = self.level_vertices[0]
        for index, vertices in enumerate(self.pass_vertices, start=1):
            stages[f"pass_{index}"] = vertices
        ran = len(self.pass_vertices)
        if ran and max_passes is not None:
            for index in range(ran + 1, max_passes + 1):
                stages[f"pass_{index}"] = self.pass_vertices[-1]
        return stages
