"""``ManoLayer``: a stateless, differentiable MANO-format hand model.

The layer holds only the model's arrays (as non-persistent buffers, so checkpoints of
networks that contain it never carry licence-restricted MANO data); every pose, shape
and translation is an explicit argument of :meth:`ManoLayer.forward`, and nothing is
sized by the batch.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch
from torch import nn

from manolayer.errors import ManoError, PoseInputError
from manolayer.io import ManoModel, load_mano
from manolayer.joints import MANO21_TO_OPENPOSE
from manolayer.lbs import KinematicPlan, QuaternionConstants, compose_levels, skin_homogeneous, turns_to_rotation_offset
from manolayer.rotations import rot6d_to_matrix

_TRANSLATION_COLUMN = torch.tensor([0.0, 0.0, 0.0, 1.0])  # selects column 3 of a 4x4 matrix
PoseFormat = Literal["axis_angle", "rot6d", "rotmat"]
_FORMAT_WIDTH = {"axis_angle": (3,), "rot6d": (6,), "rotmat": (3, 3)}


@dataclass
class ManoOutput:
    """What :class:`ManoLayer` returns, for B hands of a model with V vertices and J joints.

    Attributes:
        vertices: (B, V, 3) posed mesh in metres (``transl`` added).
        joints: (B, 21, 3) keypoints in OpenPose / FreiHAND order (16 joints + 5 fingertip vertices).
        betas: (B, S) the shape coefficients used (zero-padded to the model's S).
        transl: (B, 3) the translation given, or None.
        global_transforms_level_order: (B, J, 4, 4) posed transform of each joint before
            ``transl``, in the layer's internal level order; use the properties below instead.
        level_to_joint_order: (J,) LongTensor that reorders level order to MANO order.

    ``mano_joints`` and ``global_rotations`` are computed on access: most callers need only
    vertices and the 21 keypoints.
    """

    vertices: torch.Tensor
    joints: torch.Tensor
    betas: torch.Tensor
    transl: torch.Tensor | None
    global_transforms_level_order: torch.Tensor = field(repr=False)
    level_to_joint_order: torch.Tensor = field(repr=False)

    @property
    def global_transforms(self) -> torch.Tensor:
        """(B, J, 4, 4) rigid transform of each MANO joint: ``[global_rotations | mano_joints]``.

        It maps a point given in joint j's frame (origin at the joint, axes as the world's
        at rest) to its posed world position (``transl`` included).
        """
        transforms = self.global_transforms_level_order.index_select(1, self.level_to_joint_order)
        if self.transl is None:
            return transforms
        return transforms + torch.nn.functional.pad(self.transl, (0, 1)).view(-1, 1, 4, 1) * _TRANSLATION_COLUMN.to(transforms)

    @property
    def mano_joints(self) -> torch.Tensor:
        """(B, J, 3) joints in MANO order (``joints`` without fingertips, reordered)."""
        return self.global_transforms[..., :3, 3]

    @property
    def global_rotations(self) -> torch.Tensor:
        """(B, J, 3, 3) orientation of each MANO joint's frame in the world."""
        return self.global_transforms[..., :3, :3]


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
        self._shape_cache: dict[tuple[str, int], dict[str, frozenset[tuple[int, ...]]]] = {}
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

        self.plan = KinematicPlan.from_parents(model.parents.tolist())
        self.has_pose_correctives = bool(model.posedirs.any())
        # plain ints for the per-call code (the model's properties cost more to read)
        self._num_joints, self._num_coords, self._num_betas = model.num_joints, 3 * model.num_vertices, model.num_betas
        arrays = _level_order_arrays(model, self.plan, tips, use_pca, num_pca_comps, flat_hand_mean)
        for name, array in arrays.items():
            buffer(name, array, torch.long if np.issubdtype(array.dtype, np.integer) else dtype)
        quaternion = QuaternionConstants.create(torch.float64)
        buffer("quaternion_half_e0", quaternion.half_e0.numpy())
        buffer("quaternion_e0", quaternion.e0.numpy())
        buffer("quaternion_signs", quaternion.signs.numpy())
        buffer("quaternion_outer_to_offset", quaternion.outer_to_offset.numpy())
        buffer("faces", model.faces, torch.long)

    @property
    def num_betas(self) -> int:
        return self.model.num_betas

    @property
    def num_vertices(self) -> int:
        return self.model.num_vertices

    def _apply(self, fn, recurse=True):  # keep the index plan on the buffers' device
        super()._apply(fn, recurse)
        self.plan = self.plan.to(self.blend_offset.device)
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
                (B, 15, 6) 6D, or (B, 15, 3, 3) matrices; None means the mean pose
                (flat when ``flat_hand_mean``), in every format. Given poses get PCA and
                the mean pose added in axis-angle only; 6D and matrices are absolute.
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
        like = given[0] if given else self.blend_offset
        if given and like.ndim == 0:
            raise PoseInputError("inputs need a batch dimension, e.g. global_orient of shape (B, 3); got a scalar")
        batch = like.shape[0] if given else 1
        dtype, device = like.dtype, like.device
        if not dtype.is_floating_point:
            raise PoseInputError(f"inputs must be floating point tensors, got {dtype}")
        if self.validate:
            self._check_inputs(global_orient, hand_pose, betas, transl, batch, pose_format, dtype, device)

        b = self._buffers_as(dtype, device)
        plan = self.plan if device == b["blend_offset"].device else self.plan.to(device)
        betas = self._padded_betas(betas, batch, dtype, device)

        # one matmul gives the shaped vertices, each joint's local transform less its rotation
        # ([I | offset from the parent]) and each joint's inverse rest transform (all linear
        # in betas); the rotations are added to the local transforms, and pose correctives
        # to the vertices, by the matmuls that make them
        blended = torch.addmm(b["blend_offset"], betas, b["blend_matrix"])
        num_coords, num_joints = self._num_coords, self._num_joints
        v_shaped = blended[:, :num_coords]  # coordinate-major: x of all vertices, then y, then z
        no_rotation = blended[:, num_coords : num_coords + 16 * num_joints].view(batch, num_joints, 16)
        local = self._local_transforms(global_orient, hand_pose, no_rotation, pose_format, b)  # (B, J, 16)
        if self.has_pose_correctives:
            feature = local.view(batch, -1).index_select(1, b["pose_feature_index"])  # rotation entries
            v_shaped = torch.addmm(v_shaped, feature, b["pose_matrix"])
        rest_inverse = blended[:, num_coords + 16 * num_joints :].view(batch, num_joints, 4, 4)

        global_lv = compose_levels(local.view(batch, num_joints, 4, 4), plan)
        vertices = skin_homogeneous(v_shaped.view(batch, 3, -1), b["weights_by_joint"], global_lv, rest_inverse, transl)
        posed_joints = global_lv[..., :3, 3]
        if transl is not None:
            posed_joints = posed_joints + transl.unsqueeze(1)
        if self.validate and not math.isfinite(vertices.sum().item()):
            self._raise_non_finite(global_orient, hand_pose, betas, transl)
        tips = vertices.index_select(1, b["fingertip_ids"])
        joints21 = torch.cat([posed_joints, tips], 1).index_select(1, b["openpose_from_level_order"])
        return ManoOutput(
            vertices=vertices,
            joints=joints21,
            betas=betas,
            transl=transl,
            global_transforms_level_order=global_lv,
            level_to_joint_order=plan.to_joint_order,
        )

    # ------------------------------------------------------------------ helpers

    def _buffers_as(self, dtype: torch.dtype, device: torch.device) -> dict[str, torch.Tensor]:
        reference = self._buffers["blend_offset"]
        if reference.dtype == dtype and reference.device == device:
            return self._buffers  # type: ignore[return-value]
        return {
            name: b.to(device=device, dtype=dtype if b.is_floating_point() else b.dtype)
            for name, b in self._buffers.items()
        }

    def _local_transforms(self, global_orient, hand_pose, no_rotation, pose_format, b) -> torch.Tensor:
        """(B, J, 16) local transforms ``[R | J_j - J_parent]`` as flattened 4x4, joints in level
        order, from ``no_rotation`` (the same with R = I)."""
        quaternion = QuaternionConstants(
            b["quaternion_half_e0"], b["quaternion_e0"], b["quaternion_signs"], b["quaternion_outer_to_offset"]
        )
        batch, num_joints = no_rotation.shape[:2]
        if pose_format == "axis_angle":
            # one matmul puts the joints in level order, applies PCA, adds the mean pose (its
            # bias) and scales to turns; reshapes only when needed: at batch 1 every operation
            # counts, views too
            turns, from_pose = b["turns_bias"], b["turns_from_pose"]  # (1, 4J); rows: root, then hand
            if hand_pose is not None and hand_pose.dim() != 2:
                hand_pose = hand_pose.reshape(batch, -1)
            if global_orient is not None and global_orient.dim() != 2:
                global_orient = global_orient.reshape(batch, 3)
            if global_orient is not None and hand_pose is not None:
                turns = torch.addmm(turns, torch.cat([global_orient, hand_pose], 1), from_pose)
            elif hand_pose is not None:
                turns = torch.addmm(turns, hand_pose, from_pose[3:])
            elif global_orient is not None:
                turns = torch.addmm(turns, global_orient, from_pose[:3])
            else:
                turns = turns.expand(batch, -1)
            return turns_to_rotation_offset(turns.reshape(batch, num_joints, 4), quaternion, add_to=no_rotation)
        width = _FORMAT_WIDTH[pose_format]
        to_matrix = rot6d_to_matrix if pose_format == "rot6d" else (lambda m: m)
        eye = torch.eye(3, dtype=no_rotation.dtype, device=no_rotation.device)

        def homogeneous_offset(matrices: torch.Tensor) -> torch.Tensor:  # (B, n, 3, 3) -> (B, n, 16)
            return torch.nn.functional.pad(matrices - eye, (0, 1, 0, 1)).flatten(2)

        if global_orient is None:
            root = eye.new_zeros(batch, 1, 16)
        else:
            root = homogeneous_offset(to_matrix(global_orient.reshape(batch, 1, *width)))
        if hand_pose is None:
            mean_turns = b["turns_bias"].view(1, num_joints, 4)[:, 1:]
            hand = turns_to_rotation_offset(mean_turns, quaternion).expand(batch, -1, -1)
        else:
            hand = to_matrix(hand_pose.reshape(batch, num_joints - 1, *width)).index_select(1, b["hand_to_level_order"])
            hand = homogeneous_offset(hand)
        return torch.cat([root, hand], 1) + no_rotation

    def _padded_betas(self, betas, batch, dtype, device) -> torch.Tensor:
        num_betas = self._num_betas
        if betas is None:
            return torch.zeros(batch, num_betas, dtype=dtype, device=device)
        if betas.shape[1] < num_betas:
            return torch.nn.functional.pad(betas, (0, num_betas - betas.shape[1]))
        return betas

    def _expected_shapes(self, pose_format: str, batch: int) -> dict[str, frozenset[tuple[int, ...]]]:
        """Accepted shapes of each input, batch included (cached: this runs on every call)."""
        cached = self._shape_cache.get((pose_format, batch))
        if cached is None:
            if len(self._shape_cache) > 64:  # many batch sizes seen: start again rather than grow
                self._shape_cache.clear()
            cached = {
                name: frozenset((batch, *tail) for tail in tails)
                for name, tails in self._shape_tails(pose_format).items()
            }
            cached["betas"] = frozenset((batch, size) for size in range(self._num_betas + 1))
            self._shape_cache[(pose_format, batch)] = cached
        return cached

    def _shape_tails(self, pose_format: str) -> dict[str, tuple[tuple[int, ...], ...]]:
        """Accepted shapes of each pose input and transl without the batch dimension."""
        width = _FORMAT_WIDTH[pose_format]
        num_hand = self._num_joints - 1
        size = int(np.prod(width))
        hand = ((self.num_pca_comps,),) if self.use_pca else ((num_hand * size,), (num_hand, *width))
        root = ((3, 3), (1, 3, 3)) if pose_format == "rotmat" else ((size,), (1, *width))
        return {"global_orient": root, "hand_pose": hand, "transl": ((3,),)}

    def _check_inputs(self, global_orient, hand_pose, betas, transl, batch, pose_format, dtype, device) -> None:
        expected = self._expected_shapes(pose_format, batch)
        for name, tensor in (("global_orient", global_orient), ("hand_pose", hand_pose), ("transl", transl), ("betas", betas)):
            if tensor is None:
                continue
            if tensor.shape not in expected[name]:  # torch.Size hashes and compares as a tuple
                shape = tuple(tensor.shape)
                if name == "betas":
                    raise PoseInputError(f"betas has shape {shape}; expected ({batch}, S) with S <= {self._num_betas}")
                wanted = " or ".join(str((batch, *tail)) for tail in self._shape_tails(pose_format)[name])
                raise PoseInputError(f"{name} has shape {shape}; expected {wanted} ({pose_format})")
            if tensor.dtype != dtype or tensor.device != device:
                given = [t for t in (global_orient, hand_pose, betas, transl) if t is not None]
                found = ", ".join(f"{t.dtype} on {t.device}" for t in given)
                raise PoseInputError(f"inputs must share one dtype and device, got {found}")

    @staticmethod
    def _raise_non_finite(global_orient, hand_pose, betas, transl) -> None:
        """Name the input that made the output non-finite (checked on the output: one test, not four)."""
        for name, tensor in zip(("global_orient", "hand_pose", "betas", "transl"), (global_orient, hand_pose, betas, transl)):
            if tensor is not None and not torch.isfinite(tensor).all():
                raise PoseInputError(f"{name} contains NaN or Inf; check the network or data that produced it")
        raise PoseInputError("the posed mesh is not finite: an input is too large (overflow); check its scale")


def _level_order_arrays(
    model: ManoModel,
    plan: KinematicPlan,
    fingertip_ids: np.ndarray,
    use_pca: bool,
    num_pca_comps: int,
    flat_hand_mean: bool,
) -> dict[str, np.ndarray]:
    """Everything ``ManoLayer.forward`` needs, precomputed in float64 with joints in level order.

    The blend matrix has one row per shape coefficient and the columns ``[3V vertex coordinates
    (coordinate-major: all x, all y, all z) | 16J local transforms without their rotation |
    16J inverse rest transforms]``: a joint's local transform less its rotation,
    ``[I | J_j - J_parent]``, and its inverse rest transform ``[I | -J_j]`` are linear in the
    betas, because the joints are. Pose correctives get their own (9(J-1), 3V) matrix.
    """
    level = plan.to_level_order.numpy()
    position = plan.to_joint_order.numpy()  # position[j] = where joint j sits in level order
    num_j, num_v, num_betas = model.num_joints, model.num_vertices, model.num_betas
    num_hand = num_j - 1

    joints = model.rest_joints  # (J, 3)
    joint_dirs = np.einsum("jv,vcs->jcs", model.J_regressor, model.shapedirs)  # (J, 3, S)
    parents = model.parents
    offsets = joints - np.where(parents[:, None] >= 0, joints[np.maximum(parents, 0)], 0.0)
    offset_dirs = joint_dirs - np.where(parents[:, None, None] >= 0, joint_dirs[np.maximum(parents, 0)], 0.0)

    def as_4x4_column(values: np.ndarray) -> np.ndarray:  # (J, 3, ...) -> (J, 16, ...) in column 3
        out = np.zeros((num_j, 16) + values.shape[2:])
        out[:, [3, 7, 11]] = values
        return out

    identity = np.tile(np.eye(4).ravel(), (num_j, 1))
    offset_rows = np.concatenate([model.shapedirs.transpose(1, 0, 2).reshape(3 * num_v, num_betas),
                                  as_4x4_column(offset_dirs[level]).reshape(16 * num_j, num_betas),
                                  -as_4x4_column(joint_dirs[level]).reshape(16 * num_j, num_betas)]).T  # fmt: skip
    bias = np.concatenate([model.v_template.T.ravel(), (identity + as_4x4_column(offsets[level])).ravel(),
                           (identity - as_4x4_column(joints[level])).ravel()])  # fmt: skip
    arrays: dict[str, np.ndarray] = {}
    if model.posedirs.any():
        # feature 9 (j - 1) + 3 r + c is entry (r, c) of joint j's rotation, taken from the
        # (B, J, 16) homogeneous rotations; "- I" of MANO's (R - I) feature moves into the bias
        posedirs = model.posedirs.transpose(1, 0, 2).reshape(3 * num_v, 9 * num_hand)
        feature_index = [position[j] * 16 + 4 * r + c for j in range(1, num_j) for r in range(3) for c in range(3)]
        bias[: 3 * num_v] -= posedirs @ np.tile(np.eye(3).ravel(), num_hand)
        arrays["pose_matrix"] = posedirs.T
        arrays["pose_feature_index"] = np.asarray(feature_index, dtype=np.int64)
    arrays["blend_matrix"] = offset_rows
    arrays["blend_offset"] = bias
    arrays["weights_by_joint"] = model.weights[:, level].T  # (J, V), rows in level order
    arrays["fingertip_ids"] = fingertip_ids
    mano21 = np.asarray(MANO21_TO_OPENPOSE)
    arrays["openpose_from_level_order"] = np.where(mano21 < num_j, position[np.minimum(mano21, num_j - 1)], mano21)

    hand_level = level[1:] - 1  # the hand joints (not the root) in level order, as 0..J-2
    arrays["hand_to_level_order"] = hand_level.astype(np.int64)
    # axis-angle (MANO joint order) -> (0, w / 2pi) per joint in level order, the layout that
    # turns_to_rotation_offset takes; PCA and the mean pose fold into these matrices
    to_turns = np.zeros((3 * num_j, num_j, 4))
    for k, joint in enumerate(level):
        to_turns[3 * joint : 3 * joint + 3, k, 1:] = np.eye(3) / (2 * np.pi)
    to_turns = to_turns.reshape(3 * num_j, 4 * num_j)
    mean = np.zeros(3 * num_hand) if flat_hand_mean else model.hands_mean
    hand_to_turns = to_turns[3:]
    arrays["turns_bias"] = (mean @ hand_to_turns)[None]  # (1, 4J): a row, as addmm adds it
    from_hand = model.hands_components[:num_pca_comps] @ hand_to_turns if use_pca else hand_to_turns
    arrays["turns_from_pose"] = np.concatenate([to_turns[:3], from_hand])  # rows: root (3), then hand
    return arrays
