"""Linear blend skinning of MANO-format models, as pure tensor functions.

The steps, for a batch of B hands, a model with V vertices, J joints and S shape components:

1. shape blend shapes:  ``v_shaped = v_template + shapedirs @ betas``            (B, V, 3)
2. joint regression:    ``joints = J_regressor @ v_shaped``                       (B, J, 3)
3. pose blend shapes:   ``v_posed = v_shaped + posedirs @ (R[1:] - I)``           (B, V, 3)
4. forward kinematics over the tree, one *level* at a time: every joint of a level
   (all joints at the same depth) is composed with its parent in one batched matmul,
   so MANO's tree costs 4 steps instead of 15                                     (B, J, 3, 4)
5. skinning:            ``v = sum_j w_vj G_j [v_posed, 1]``                        (B, V, 3)

Rotations here are (..., 3, 3) matrices; conversions live in :mod:`manolayer.rotations`.
Device and dtype always come from the inputs.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


def kinematic_levels(parents: list[int] | tuple[int, ...]) -> list[list[int]]:
    """Group joints by depth in the tree: ``levels[d]`` lists the joints at depth d.

    Requires ``parents[0] == -1`` and ``parents[j] < j`` (parents listed before children).
    """
    depth = [0] * len(parents)
    for joint in range(1, len(parents)):
        depth[joint] = depth[parents[joint]] + 1
    return [[j for j in range(len(parents)) if depth[j] == d] for d in range(max(depth) + 1)]


@dataclass(frozen=True)
class KinematicPlan:
    """Index tensors that let :func:`forward_kinematics` run one tree level at a time.

    Joints are processed in *level order* (all joints at depth 0, then depth 1, ...), so
    every level is a contiguous slice.

    Attributes:
        to_level_order: (J,) LongTensor; ``x[:, to_level_order]`` puts joints in level order.
        to_joint_order: (J,) LongTensor, the inverse permutation.
        parents_level_order: (J,) LongTensor; for the k-th joint in level order, the
            level-order position of its parent (-1 for the root).
        level_bounds: per level, (start, stop) of its slice in level order.
        parent_slices: per level >= 1, how to gather its parents from the previous level:
            None when the parents are the previous level in order, the int 0 when every
            joint hangs off the previous level's first joint, else a LongTensor of positions.
        parents: (J,) LongTensor of parents in joint order, ``parents[0] = -1``.
    """

    to_level_order: torch.Tensor
    to_joint_order: torch.Tensor
    parents_level_order: torch.Tensor
    level_bounds: tuple[tuple[int, int], ...]
    parent_slices: tuple[torch.Tensor | int | None, ...]
    parents: torch.Tensor

    @staticmethod
    def from_parents(parents: list[int] | tuple[int, ...]) -> "KinematicPlan":
        levels = kinematic_levels(parents)
        flat = [j for level in levels for j in level]
        position = {joint: k for k, joint in enumerate(flat)}
        bounds, start = [], 0
        for level in levels:
            bounds.append((start, start + len(level)))
            start += len(level)
        gathers: list[torch.Tensor | int | None] = [None]
        for depth in range(1, len(levels)):
            previous_start = bounds[depth - 1][0]
            slots = [position[parents[j]] - previous_start for j in levels[depth]]
            if slots == list(range(len(levels[depth - 1]))):
                gathers.append(None)
            elif all(slot == 0 for slot in slots):
                gathers.append(0)
            else:
                gathers.append(torch.tensor(slots, dtype=torch.long))
        return KinematicPlan(
            to_level_order=torch.tensor(flat, dtype=torch.long),
            to_joint_order=torch.tensor([position[j] for j in range(len(parents))], dtype=torch.long),
            parents_level_order=torch.tensor([position[parents[j]] if parents[j] >= 0 else -1 for j in flat]),
            level_bounds=tuple(bounds),
            parent_slices=tuple(gathers),
            parents=torch.tensor(parents, dtype=torch.long),
        )

    def to(self, device: torch.device) -> "KinematicPlan":
        def move(value):
            return value.to(device) if isinstance(value, torch.Tensor) else value

        return KinematicPlan(
            to_level_order=move(self.to_level_order),
            to_joint_order=move(self.to_joint_order),
            parents_level_order=move(self.parents_level_order),
            level_bounds=self.level_bounds,
            parent_slices=tuple(move(g) for g in self.parent_slices),
            parents=move(self.parents),
        )


@dataclass(frozen=True)
class RodriguesConstants:
    """Constant tensors that let :func:`axis_angle_to_homogeneous` run in a few operations.

    Attributes:
        linear: (3, 20); ``w @ linear`` is the cross-product matrix ``[w]x`` in a 4x4 layout
            (16 entries) followed by ``(x, y, z, 0)`` (one matmul for both).
        diagonal: (16,), ones on the 3x3 rotation block's diagonal.
        corner: (16,), a one at entry (3, 3).
    """

    linear: torch.Tensor
    diagonal: torch.Tensor
    corner: torch.Tensor

    @staticmethod
    def create(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> "RodriguesConstants":
        skew = torch.zeros(3, 4, 4, dtype=dtype, device=device)
        # [w]x = [[0, -z, y], [z, 0, -x], [-y, x, 0]]
        skew[0, 2, 1], skew[0, 1, 2] = 1, -1
        skew[1, 0, 2], skew[1, 2, 0] = 1, -1
        skew[2, 1, 0], skew[2, 0, 1] = 1, -1
        diagonal = torch.zeros(4, 4, dtype=dtype, device=device)
        diagonal[[0, 1, 2], [0, 1, 2]] = 1
        corner = torch.zeros(4, 4, dtype=dtype, device=device)
        corner[3, 3] = 1
        pad = torch.eye(3, 4, dtype=dtype, device=device)
        return RodriguesConstants(torch.cat([skew.flatten(1), pad], 1), diagonal.flatten(), corner.flatten())


# Smaller angles are clamped to this: the coefficients are then at their limits (1, 1/2) and
# nothing divides by zero; the norm's gradient at exactly 0 is taken as 0.
_TINY_ANGLE = 1e-8
# samples skinned together: their blended transforms (~37 kB each for 778 vertices) fit in cache
_SKIN_CHUNK = 32


def axis_angle_to_homogeneous(axis_angle: torch.Tensor, constants: RodriguesConstants) -> torch.Tensor:
    """Rodrigues' formula straight into homogeneous 4x4 rotations, flattened.

    Args:
        axis_angle: (..., 3) axis-angle.
        constants: :class:`RodriguesConstants` in the input's dtype and device.

    Returns:
        (..., 16): the 4x4 matrix ``[[R, 0], [0, 1]]`` in row-major order, with
        ``R = cos(t) I + sin(t)/t [w]x + (1 - cos(t))/t^2 w w^T``. The last coefficient loses
        relative precision at tiny angles, but it multiplies ``w w^T`` (of size t^2), so the
        absolute error stays at the dtype's epsilon. :func:`manolayer.rotations.axis_angle_to_matrix`
        is the reference (tested to agree).
    """
    angle = torch.linalg.vector_norm(axis_angle, dim=-1, keepdim=True).clamp(min=_TINY_ANGLE)
    cos = torch.cos(angle)
    projected = axis_angle @ constants.linear
    skew, padded = projected[..., :16], projected[..., 16:]  # [w]x as 4x4, and (x, y, z, 0)
    outer = (padded.unsqueeze(-1) * padded.unsqueeze(-2)).flatten(-2)
    rotation = torch.addcmul(constants.corner, cos, constants.diagonal)
    rotation = torch.addcmul(rotation, torch.sin(angle) / angle, skew)
    return torch.addcmul(rotation, (1 - cos) / (angle * angle), outer)


def compose_levels(local: torch.Tensor, plan: KinematicPlan) -> torch.Tensor:
    """Global transforms from local ones, one tree level per batched matmul.

    Args:
        local: (B, J, 4, 4) local transform of each joint *in level order*:
            ``[R_j | J_j - J_parent(j)]`` over ``[0 0 0 1]`` (the root: ``[R_0 | J_0]``).
        plan: the tree's :class:`KinematicPlan`.

    Returns:
        (B, J, 4, 4) global transforms in level order: ``out[b, k]`` maps joint k's frame
        (origin at the joint, axes as the world's at rest) to the posed world.
    """
    start, stop = plan.level_bounds[0]
    levels = [local[:, start:stop]]
    for (start, stop), gather in zip(plan.level_bounds[1:], plan.parent_slices[1:]):
        previous = levels[-1]
        if gather is None:
            parent = previous
        elif isinstance(gather, int):
            parent = previous[:, gather : gather + 1]
        else:
            parent = previous[:, gather]
        levels.append(parent @ local[:, start:stop])
    return torch.cat(levels, 1) if len(levels) > 1 else levels[0]


def forward_kinematics(
    rotations: torch.Tensor, joints: torch.Tensor, plan: KinematicPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose the skeleton (joint order in and out); see :func:`compose_levels`.

    Args:
        rotations: (B, J, 3, 3) local rotation of each joint relative to its parent
            (joint 0: the global orientation).
        joints: (B, J, 3) rest joint positions.
        plan: the tree's :class:`KinematicPlan`.

    Returns:
        global_rotations: (B, J, 3, 3), ``global_rotations[b, j]`` orients joint j's frame in the world.
        posed_joints: (B, J, 3), the position of each joint after posing.
    """
    joints_lv = joints[:, plan.to_level_order]
    with_origin = torch.nn.functional.pad(joints_lv, (0, 0, 0, 1))  # row -1 is the origin, the root's "parent"
    offsets = joints_lv - with_origin[:, plan.parents_level_order]
    local = torch.nn.functional.pad(torch.cat([rotations[:, plan.to_level_order], offsets.unsqueeze(-1)], -1), (0, 0, 0, 1))
    local[..., 3, 3] = 1
    global_lv = compose_levels(local, plan)[:, plan.to_joint_order]
    return global_lv[..., :3, :3], global_lv[..., :3, 3]


def skin_homogeneous(
    vertices_by_coordinate: torch.Tensor,
    weights_by_joint: torch.Tensor,
    global_transforms: torch.Tensor,
    rest_inverse: torch.Tensor,
) -> torch.Tensor:
    """Linear blend skinning with 4x4 transforms.

    Args:
        vertices_by_coordinate: (B, 3, V) rest-pose vertices (blend shapes applied),
            coordinate-major: ``[b, c, v]`` is coordinate c of vertex v.
        weights_by_joint: (J, V) skinning weights (the transpose of MANO's ``weights``), rows in
            the same joint order as the transforms.
        global_transforms: (B, J, 4, 4) posed transform of each joint's frame.
        rest_inverse: (B, J, 4, 4) the inverse rest transform of each joint, ``[I | -J_j^rest]``.

    Returns:
        (B, V, 3): ``v' = sum_j w_vj (G_j @ rest_inverse_j) [v, 1]``.
    """
    batch, _, num_v = vertices_by_coordinate.shape
    num_j = weights_by_joint.shape[0]
    relative = global_transforms[..., :3, :] @ rest_inverse  # (B, J, 3, 4)
    by_entry = relative.flatten(2).transpose(1, 2).reshape(batch * 12, num_j)
    # the blended transforms (12 numbers per vertex and sample) are made and used a chunk of
    # samples at a time, so they stay in cache instead of streaming through memory twice
    out = None
    for start in range(0, batch, _SKIN_CHUNK):
        stop = min(start + _SKIN_CHUNK, batch)
        # one (b*12, J) x (J, V) product, never a per-sample copy of the weights
        blended = torch.mm(by_entry[start * 12 : stop * 12], weights_by_joint).view(stop - start, 3, 4, num_v)
        x, y, z = vertices_by_coordinate[start:stop].unsqueeze(1).unbind(2)  # each (b, 1, V)
        posed = torch.addcmul(blended[:, :, 3], blended[:, :, 0], x)
        posed = torch.addcmul(posed, blended[:, :, 1], y)
        posed = torch.addcmul(posed, blended[:, :, 2], z).transpose(1, 2)  # (b, V, 3)
        if stop == batch and start == 0:
            return posed.contiguous()
        if out is None:
            out = posed.new_empty(batch, num_v, 3)
        out[start:stop] = posed
    return out


def skin_vertices(
    vertices: torch.Tensor,
    weights: torch.Tensor,
    global_rotations: torch.Tensor,
    posed_joints: torch.Tensor,
    rest_joints: torch.Tensor,
) -> torch.Tensor:
    """Linear blend skinning from rotations and joint positions; see :func:`skin_homogeneous`.

    Args:
        vertices: (B, V, 3) rest-pose vertices (with shape and pose blend shapes applied).
        weights: (V, J) skinning weights.
        global_rotations: (B, J, 3, 3) and posed_joints: (B, J, 3), from :func:`forward_kinematics`.
        rest_joints: (B, J, 3) joint positions before posing.

    Returns:
        (B, V, 3) posed vertices: ``sum_j w_vj (R_j (v - J_j^rest) + J_j^posed)``.
    """
    eye = torch.eye(4, dtype=vertices.dtype, device=vertices.device)
    transforms = torch.cat([global_rotations, posed_joints.unsqueeze(-1)], -1)
    transforms = torch.cat([transforms, eye[3:].expand(*transforms.shape[:2], 1, 4)], -2)
    rest_inverse = eye.repeat(*rest_joints.shape[:2], 1, 1)
    rest_inverse[..., :3, 3] = -rest_joints
    return skin_homogeneous(vertices.transpose(1, 2), weights.T, transforms, rest_inverse)


def skin_vertices_reference(
    vertices: torch.Tensor,
    weights: torch.Tensor,
    global_rotations: torch.Tensor,
    posed_joints: torch.Tensor,
    rest_joints: torch.Tensor,
) -> torch.Tensor:
    """Slow, obvious version of :func:`skin_vertices` (a loop over joints), for tests."""
    out = torch.zeros_like(vertices)
    for j in range(weights.shape[1]):
        moved = (global_rotations[:, j] @ (vertices - rest_joints[:, j : j + 1]).transpose(1, 2)).transpose(1, 2)
        out = out + weights[:, j, None] * (moved + posed_joints[:, j : j + 1])
    return out


def forward_kinematics_reference(
    rotations: torch.Tensor, joints: torch.Tensor, parents: list[int] | tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Slow, obvious version of :func:`forward_kinematics` (one joint at a time), for tests."""
    global_rot = [rotations[:, 0]]
    global_pos = [joints[:, 0]]
    for j in range(1, len(parents)):
        p = parents[j]
        global_rot.append(global_rot[p] @ rotations[:, j])
        offset = (joints[:, j] - joints[:, p]).unsqueeze(-1)
        global_pos.append((global_rot[p] @ offset).squeeze(-1) + global_pos[p])
    return torch.stack(global_rot, 1), torch.stack(global_pos, 1)
