"""``ManoLayer``: a stateless, differentiable MANO-format hand model.

The layer holds only the model's arrays (as non-persistent buffers, so checkpoints of
networks that contain it never carry licence-restricted MANO data); every pose, shape
and translation is an explicit argument of :meth:`ManoLayer.forward`, and nothing is
sized by the batch.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from torch import nn

from manolayer.errors import ManoError, PoseInputError
from manolayer.io import ManoModel, load_mano
from manolayer.joints import MANO21_TO_OPENPOSE
from manolayer.lbs import KinematicPlan, forward_kinematics, skin_vertices
from manolayer.rotations import axis_angle_to_matrix, rot6d_to_matrix

PoseFormat = Literal["axis_angle", "rot6d", "rotmat"]
_FORMAT_WIDTH = {"axis_angle": (3,), "rot6d": (6,), "rotmat": (3, 3)}


@dataclass
class ManoOutput:
    """What :class:`ManoLayer` returns, for B hands of a model with V vertices.

    Attributes:
        vertices: (B, V, 3) posed mesh in metres (``transl`` added).
        joints: (B, 21, 3) keypoints in OpenPose / FreiHAND order (16 joints + 5 fingertip vertices).
        mano_joints: (B, 16, 3) joints in MANO order (``joints`` without fingertips, reordered).
        global_rotations: (B, 16, 3, 3) orientation of each MANO joint's frame in the world.
        local_rotations: (B, 16, 3, 3) the pose that was applied, as rotation matrices
            (joint 0 the global orientation, then the 15 hand joints relative to their parents).
        betas: (B, S) the shape coefficients used (zero-padded to the model's S).
    """

    vertices: torch.Tensor
    joints: torch.Tensor
    mano_joints: torch.Tensor
    global_rotations: torch.Tensor
    local_rotations: torch.Tensor
    betas: torch.Tensor

    @property
    def global_transforms(self) -> torch.Tensor:
        """(B, 16, 4, 4) rigid transform of each joint: ``[global_rotations | mano_joints]``.

        It maps a point given in joint j's frame (origin at the joint, axes as the world's
        at rest) to its posed world position.
        """
        batch, joints = self.global_rotations.shape[:2]
        transform = self.global_rotations.new_zeros(batch, joints, 4, 4)
        transform[..., :3, :3] = self.global_rotations
        transform[..., :3, 3] = self.mano_joints
        transform[..., 3, 3] = 1
        return transform


class ManoLayer(nn.Module):
    """Differentiable MANO-format hand model (any topology, either side).

    Args:
        model: a :class:`ManoModel`, a path to an official pickle or a project ``.npz``,
            or None for the project's CC0 open hand.
        side: 'right' or 'left'; None takes the model's own side (the open hand: right).
            With ``model=None`` and ``side='left'`` the open hand is mirrored.
        use_pca: hand poses in axis-angle are PCA coefficients (as smplx).
        num_pca_comps: number of PCA coefficients when ``use_pca``.
        flat_hand_mean: if False, the model's mean hand pose is added to axis-angle hand
            poses (as smplx), so zero input gives the relaxed mean hand.
        fingertip_ids: override the 5 fingertip vertex ids (thumb, index, middle, ring,
            little); needed for a model whose file has none and whose topology is not 778.
        validate: check input shapes and finiteness (a NaN pose raises a clear error).
            Turn off only in tight loops whose inputs are known good.
        dtype: dtype of the buffers; inputs of another dtype or device also work.
    """

    def __init__(
        self,
        model: ManoModel | str | os.PathLike | None = None,
        side: str | None = None,
        use_pca: bool = True,
        num_pca_comps: int = 6,
        flat_hand_mean: bool = False,
        fingertip_ids: tuple[int, ...] | None = None,
        validate: bool = True,
        dtype: torch.dtype = torch.float32,
    ) -> None:
        super().__init__()
        if not isinstance(model, ManoModel):
            model = load_mano(model, side=side)
        elif side is not None and side != model.side:
            raise ManoError(f"the model given is a {model.side} hand but side={side!r}; use mirror_model() to flip it")
        self.model = model
        self.side = model.side
        self.use_pca = use_pca
        self.flat_hand_mean = flat_hand_mean
        self.validate = validate
        num_pose = 3 * (model.num_joints - 1)

        tips = fingertip_ids if fingertip_ids is not None else model.fingertip_ids
        if tips is None:
            raise ManoError(
                f"{model.source} has {model.num_vertices} vertices and no fingertip ids; "
                "pass fingertip_ids=(thumb, index, middle, ring, little) vertex ids"
            )
        tips = np.asarray(tips, dtype=np.int64)
        if tips.shape != (5,) or tips.min() < 0 or tips.max() >= model.num_vertices:
            raise ManoError(f"fingertip_ids must be 5 vertex ids in 0..{model.num_vertices - 1}, got {tips.tolist()}")

        if use_pca:
            if model.hands_components is None:
                raise ManoError(f"{model.source} has no pose PCA (hands_components); use use_pca=False")
            available = model.hands_components.shape[0]
            if not 1 <= num_pca_comps <= available:
                raise ManoError(f"num_pca_comps must be in 1..{available}, got {num_pca_comps}")
        self.num_pca_comps = num_pca_comps if use_pca else num_pose
        if not flat_hand_mean and model.hands_mean is None:
            raise ManoError(f"{model.source} has no mean hand pose (hands_mean); use flat_hand_mean=True")

        def buffer(name: str, array: np.ndarray, as_dtype: torch.dtype = dtype) -> None:
            self.register_buffer(name, torch.as_tensor(np.ascontiguousarray(array), dtype=as_dtype), persistent=False)

        # Vertices and joints are linear in (betas, pose feature): one matrix gives both, so
        # the blend shapes and the joint regression cost a single matmul per call.
        joint_shapedirs = np.einsum("jv,vcs->jcs", model.J_regressor, model.shapedirs)
        has_correctives = bool(model.posedirs.any())
        shape_rows = np.concatenate([model.shapedirs.reshape(-1, model.num_betas), joint_shapedirs.reshape(-1, model.num_betas)]).T
        rows = [shape_rows]
        if has_correctives:
            joint_pose_zeros = np.zeros((model.num_joints * 3, model.posedirs.shape[2]))
            rows.append(np.concatenate([model.posedirs.reshape(-1, model.posedirs.shape[2]), joint_pose_zeros]).T)
        buffer("blend_matrix", np.concatenate(rows))  # (S [+ P], 3V + 3J)
        buffer("blend_offset", np.concatenate([model.v_template.ravel(), model.rest_joints.ravel()]))
        buffer("v_template", model.v_template)
        buffer("weights", model.weights)
        buffer("faces", model.faces, torch.long)
        buffer("fingertip_ids", tips, torch.long)
        buffer("openpose_order", np.asarray(MANO21_TO_OPENPOSE), torch.long)
        mean = np.zeros(num_pose) if flat_hand_mean else model.hands_mean
        buffer("hand_mean", mean)
        if use_pca:
            buffer("pca_components", model.hands_components[:num_pca_comps])
        self.has_pose_correctives = has_correctives
        self.plan = KinematicPlan.from_parents(model.parents.tolist())

    @property
    def num_betas(self) -> int:
        return self.model.num_betas

    @property
    def num_vertices(self) -> int:
        return self.model.num_vertices

    def _apply(self, fn, recurse=True):  # keep the index plan on the buffers' device
        super()._apply(fn, recurse)
        self.plan = self.plan.to(self.v_template.device)
        return self

    def extra_repr(self) -> str:
        return (
            f"side={self.side}, vertices={self.num_vertices}, betas={self.num_betas}, use_pca={self.use_pca}, "
            f"num_pca_comps={self.num_pca_comps}, flat_hand_mean={self.flat_hand_mean}, source={self.model.source}"
        )

    def forward(
        self,
        global_orient: torch.Tensor | None = None,
        hand_pose: torch.Tensor | None = None,
        betas: torch.Tensor | None = None,
        transl: torch.Tensor | None = None,
        pose_format: PoseFormat = "axis_angle",
    ) -> ManoOutput:
        """Pose and shape the hand.

        Args:
            global_orient: rotation of the wrist: (B, 3) axis-angle, (B, 6) 6D or
                (B, 3, 3) matrix, by ``pose_format``; None means identity.
            hand_pose: the 15 hand joints: axis-angle (B, 45) or (B, 15, 3) — or
                (B, num_pca_comps) PCA coefficients when ``use_pca`` — or (B, 90) /
                (B, 15, 6) 6D, or (B, 15, 3, 3) matrices; None means the mean pose.
                The mean pose and PCA apply to axis-angle input only.
            betas: (B, S') shape coefficients with S' <= the model's S; missing ones are 0.
            transl: (B, 3) translation added to vertices and joints, or None.
            pose_format: 'axis_angle', 'rot6d' or 'rotmat' for both rotation inputs.

        Returns:
            :class:`ManoOutput`, on the device and in the dtype of the inputs.
        """
        if pose_format not in _FORMAT_WIDTH:
            raise PoseInputError(f"pose_format must be one of {list(_FORMAT_WIDTH)}, got {pose_format!r}")
        if pose_format != "axis_angle" and self.use_pca:
            raise PoseInputError(
                f"pose_format={pose_format!r} gives every joint's rotation, so PCA does not apply; "
                "build the layer with use_pca=False"
            )
        given = [t for t in (global_orient, hand_pose, betas, transl) if t is not None]
        like = given[0] if given else self.v_template
        batch = like.shape[0] if given else 1
        dtype, device = like.dtype, like.device
        if not dtype.is_floating_point:
            raise PoseInputError(f"inputs must be floating point tensors, got {dtype}")
        if self.validate:
            self._check_inputs(global_orient, hand_pose, betas, transl, batch, pose_format)

        buffers = self._buffers_as(dtype, device)
        rotations = self._local_rotations(global_orient, hand_pose, batch, pose_format, buffers, dtype, device)
        betas = self._padded_betas(betas, batch, dtype, device)

        coefficients = betas
        if self.has_pose_correctives:
            eye = torch.eye(3, dtype=dtype, device=device)
            coefficients = torch.cat([betas, (rotations[:, 1:] - eye).flatten(1)], 1)
        blended = torch.addmm(buffers["blend_offset"], coefficients, buffers["blend_matrix"])
        num_coords = 3 * self.num_vertices
        v_shaped = blended[:, :num_coords].view(batch, -1, 3)
        rest_joints = blended[:, num_coords:].view(batch, -1, 3)

        plan = self.plan if device == self.v_template.device else self.plan.to(device)
        global_rot, posed_joints = forward_kinematics(rotations, rest_joints, plan)
        vertices = skin_vertices(v_shaped, buffers["weights"], global_rot, posed_joints, rest_joints)
        if transl is not None:
            vertices = vertices + transl.unsqueeze(1)
            posed_joints = posed_joints + transl.unsqueeze(1)
        if self.validate and not torch.isfinite(vertices.sum()):
            self._raise_non_finite(global_orient, hand_pose, betas, transl)
        tips = vertices[:, buffers["fingertip_ids"]]
        joints21 = torch.cat([posed_joints, tips], 1)[:, buffers["openpose_order"]]
        return ManoOutput(
            vertices=vertices,
            joints=joints21,
            mano_joints=posed_joints,
            global_rotations=global_rot,
            local_rotations=rotations,
            betas=betas,
        )

    # ------------------------------------------------------------------ helpers

    def _buffers_as(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        if self.v_template.dtype == dtype and self.v_template.device == device:
            return self._buffers  # type: ignore[return-value]
        return {
            name: b.to(device=device, dtype=dtype if b.is_floating_point() else b.dtype)
            for name, b in self._buffers.items()
        }

    def _local_rotations(self, global_orient, hand_pose, batch, pose_format, buffers, dtype, device) -> torch.Tensor:
        num_hand = self.model.num_joints - 1
        if pose_format == "axis_angle":
            root = global_orient if global_orient is not None else torch.zeros(batch, 3, dtype=dtype, device=device)
            if hand_pose is None:
                hand = buffers["hand_mean"].expand(batch, -1)
            elif self.use_pca:
                hand = torch.addmm(buffers["hand_mean"], hand_pose, buffers["pca_components"])
            elif self.flat_hand_mean:
                hand = hand_pose.reshape(batch, -1)
            else:
                hand = hand_pose.reshape(batch, -1) + buffers["hand_mean"]
            axis_angle = torch.cat([root.reshape(batch, 3), hand.reshape(batch, -1)], 1).view(batch, -1, 3)
            return axis_angle_to_matrix(axis_angle)
        eye = torch.eye(3, dtype=dtype, device=device)
        to_matrix = rot6d_to_matrix if pose_format == "rot6d" else (lambda m: m)
        width = _FORMAT_WIDTH[pose_format]
        root = eye.expand(batch, 1, 3, 3) if global_orient is None else to_matrix(global_orient.reshape(batch, 1, *width))
        if hand_pose is None:
            hand = axis_angle_to_matrix(buffers["hand_mean"].view(1, num_hand, 3)).expand(batch, -1, -1, -1)
        else:
            hand = to_matrix(hand_pose.reshape(batch, num_hand, *width))
        return torch.cat([root, hand], 1)

    def _padded_betas(self, betas, batch, dtype, device) -> torch.Tensor:
        if betas is None:
            return torch.zeros(batch, self.num_betas, dtype=dtype, device=device)
        if betas.shape[1] < self.num_betas:
            return torch.nn.functional.pad(betas, (0, self.num_betas - betas.shape[1]))
        return betas

    def _check_inputs(self, global_orient, hand_pose, betas, transl, batch, pose_format) -> None:
        width = _FORMAT_WIDTH[pose_format]
        num_hand = self.model.num_joints - 1
        size = int(np.prod(width))
        if self.use_pca:
            hand_shapes = [(batch, self.num_pca_comps)]
        else:
            hand_shapes = [(batch, num_hand * size), (batch, num_hand, *width)]
        root_shapes = [(batch, size), (batch, 1, *width)] if pose_format != "rotmat" else [(batch, 3, 3), (batch, 1, 3, 3)]
        expectations = {
            "global_orient": (global_orient, root_shapes),
            "hand_pose": (hand_pose, hand_shapes),
            "transl": (transl, [(batch, 3)]),
        }
        for name, (tensor, shapes) in expectations.items():
            if tensor is not None and tuple(tensor.shape) not in shapes:
                wanted = " or ".join(str(s) for s in shapes)
                raise PoseInputError(f"{name} has shape {tuple(tensor.shape)}; expected {wanted} ({pose_format})")
        if betas is not None and (betas.ndim != 2 or betas.shape[0] != batch or betas.shape[1] > self.num_betas):
            raise PoseInputError(f"betas has shape {tuple(betas.shape)}; expected ({batch}, S) with S <= {self.num_betas}")
        tensors = [t for t in (global_orient, hand_pose, betas, transl) if t is not None]
        if len({(t.dtype, t.device) for t in tensors}) > 1:
            found = ", ".join(f"{t.dtype} on {t.device}" for t in tensors)
            raise PoseInputError(f"inputs must share one dtype and device, got {found}")

    @staticmethod
    def _raise_non_finite(global_orient, hand_pose, betas, transl) -> None:
        """Name the input that made the output non-finite (checked on the output: one test, not four)."""
        for name, tensor in zip(("global_orient", "hand_pose", "betas", "transl"), (global_orient, hand_pose, betas, transl)):
            if tensor is not None and not torch.isfinite(tensor).all():
                raise PoseInputError(f"{name} contains NaN or Inf; check the network or data that produced it")
        raise PoseInputError("the posed mesh is not finite: an input is too large (overflow); check its scale")
