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


def blend_shapes(coefficients: torch.Tensor, directions: torch.Tensor) -> torch.Tensor:
    """Linear blend shapes.

    Args:
        coefficients: (B, K) blend coefficients (betas, or a pose feature).
        directions: (V, 3, K) per-vertex displacement per coefficient.

    Returns:
        (B, V, 3) displacements: ``out[b, v, c] = sum_k directions[v, c, k] * coefficients[b, k]``.
    """
    num_v = directions.shape[0]
    flat = directions.reshape(num_v * 3, -1)
    return (coefficients @ flat.T).reshape(coefficients.shape[0], num_v, 3)


def pose_feature(rotations: torch.Tensor) -> torch.Tensor:
    """(B, J, 3, 3) local rotations -> (B, 9 * (J - 1)) feature ``(R_j - I)`` of joints 1..J-1."""
    eye = torch.eye(3, dtype=rotations.dtype, device=rotations.device)
    return (rotations[:, 1:] - eye).flatten(1)


def forward_kinematics(
    rotations: torch.Tensor, joints: torch.Tensor, plan: KinematicPlan
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pose the skeleton, one tree level at a time.

    Each joint's local transform is the 4x4 matrix ``[R_j | J_j - J_parent(j)]`` (the root:
    ``[R_0 | J_0]``); a level's global transforms are its parents' global transforms times
    its local ones, in one batched matmul.

    Args:
        rotations: (B, J, 3, 3) local rotation of each joint relative to its parent
            (joint 0: the global orientation).
        joints: (B, J, 3) rest joint positions.
        plan: the tree's :class:`KinematicPlan`.

    Returns:
        global_rotations: (B, J, 3, 3), ``global_rotations[b, j]`` orients joint j's frame in the world.
        posed_joints: (B, J, 3), the position of each joint after posing.
    """
    batch, num_joints = joints.shape[:2]
    joints_lv = joints[:, plan.to_level_order]
    with_origin = torch.nn.functional.pad(joints_lv, (0, 0, 0, 1))  # row -1 is the origin, the root's "parent"
    offsets = joints_lv - with_origin[:, plan.parents_level_order]
    local = torch.cat([rotations[:, plan.to_level_order], offsets.unsqueeze(-1)], -1)  # (B, J, 3, 4)
    bottom = joints.new_tensor([0.0, 0.0, 0.0, 1.0]).expand(batch, num_joints, 1, 4)
    local = torch.cat([local, bottom], -2)  # (B, J, 4, 4)

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
    global_lv = torch.cat(levels, 1)[:, plan.to_joint_order]
    return global_lv[..., :3, :3], global_lv[..., :3, 3]


def skin_vertices(
    vertices: torch.Tensor,
    weights: torch.Tensor,
    global_rotations: torch.Tensor,
    posed_joints: torch.Tensor,
    rest_joints: torch.Tensor,
) -> torch.Tensor:
    """Linear blend skinning.

    Args:
        vertices: (B, V, 3) rest-pose vertices (with shape and pose blend shapes applied).
        weights: (V, J) skinning weights.
        global_rotations: (B, J, 3, 3) and posed_joints: (B, J, 3), from :func:`forward_kinematics`.
        rest_joints: (B, J, 3) joint positions before posing.

    Returns:
        (B, V, 3) posed vertices: ``sum_j w_vj (R_j (v - J_j^rest) + J_j^posed)``.
    """
    translation = posed_joints - (global_rotations @ rest_joints.unsqueeze(-1)).squeeze(-1)
    transforms = torch.cat([global_rotations.flatten(2), translation], dim=2)  # (B, J, 12)
    blended = (weights @ transforms).unflatten(-1, (4, 3))  # (B, V, 4, 3): 3 rows of R, then t
    rows = blended[:, :, :3]
    return (rows * vertices.unsqueeze(-2)).sum(-1) + blended[:, :, 3]


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
