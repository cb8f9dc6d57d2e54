"""Linear blend skinning of MANO-format models, as pure tensor functions.

The steps, for a batch of B hands, a model with V vertices, J joints and S shape components:

1. shape blend shapes:  ``v_shaped = v_template + shapedirs @ betas``            (B, V, 3)
2. joint regression:    ``joints = J_regressor @ v_shaped``                       (B, J, 3)
3. pose blend shapes:   ``v_posed = v_shaped + posedirs @ (R[1:] - I)``           (B, V, 3)
4. forward kinematics over the tree, one *level* at a time: every joint of a level
   (all joints at the same depth) is composed with its parent in one batched matmul,
   so MANO's tree costs 4 steps instead of 15                                     (B, J, 3, 4)
5. skinning:            ``v = sum_j w_vj G_j [v_posed, 1]``                        (B, V, 3)

Rotations here are (..., 3, 3) matrices; conversions live in :mod:`manolayer.rotations`,
except :func:`turns_to_rotation_offset`, the layer's few-operation Rodrigues (tested against
:func:`manolayer.rotations.axis_angle_to_matrix`). Device and dtype always come from the inputs.
"""

from __future__ import annotations

import math
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
class QuaternionConstants:
    """Constant tensors for :func:`turns_to_rotation_offset` (built once, kept as buffers).

    Attributes:
        half_e0: (4,) ``(1/2, 0, 0, 0)``.
        e0: (4,) ``(1, 0, 0, 0)``.
        signs: (4,) ``(-1, 1, 1, 1)``.
        outer_to_offset: (16, 16); row ``4a + b`` is the outer product entry ``q_a q_b`` of
            ``q = (w, x, y, z) / pi``, column ``4r + c`` the entry (r, c) of the homogeneous
            ``[[R - I, 0], [0, 0]]``. Each entry of a rotation is a quadratic form in its unit
            quaternion; ``R - I`` uses ``|q| = 1`` to drop the squares of w, so a zero rotation
            gives exactly zero. The ``pi**2`` undoes the ``1 / pi``.
    """

    half_e0: torch.Tensor
    e0: torch.Tensor
    signs: torch.Tensor
    outer_to_offset: torch.Tensor

    @staticmethod
    def create(dtype: torch.dtype = torch.float32, device: torch.device | str | None = None) -> "QuaternionConstants":
        w, x, y, z = range(4)
        terms = {  # (r, c): [(coefficient, a, b)]; q_a q_b and q_b q_a are both in the outer product
            (0, 0): [(-2, y, y), (-2, z, z)],
            (1, 1): [(-2, x, x), (-2, z, z)],
            (2, 2): [(-2, x, x), (-2, y, y)],
            (0, 1): [(1, x, y), (1, y, x), (-1, w, z), (-1, z, w)],
            (1, 0): [(1, x, y), (1, y, x), (1, w, z), (1, z, w)],
            (0, 2): [(1, x, z), (1, z, x), (1, w, y), (1, y, w)],
            (2, 0): [(1, x, z), (1, z, x), (-1, w, y), (-1, y, w)],
            (1, 2): [(1, y, z), (1, z, y), (-1, w, x), (-1, x, w)],
            (2, 1): [(1, y, z), (1, z, y), (1, w, x), (1, x, w)],
        }
        matrix = torch.zeros(16, 16, dtype=torch.float64)
        for (r, c), products in terms.items():
            for coefficient, a, b in products:
                matrix[4 * a + b, 4 * r + c] = coefficient * math.pi**2

        def constant(values) -> torch.Tensor:
            return torch.as_tensor(values, dtype=torch.float64).to(dtype=dtype, device=device)

        return QuaternionConstants(
            half_e0=constant([0.5, 0, 0, 0]),
            e0=constant([1.0, 0, 0, 0]),
            signs=constant([-1.0, 1, 1, 1]),
            outer_to_offset=matrix.to(dtype=dtype, device=device),
        )


_LAST_COLUMN = torch.tensor([0.0, 0.0, 0.0, 1.0])  # puts a 3-vector in column 3 of a 3x4 matrix
# Samples skinned together. Their blended transforms (37 kB each for 778 vertices, 4.8 MB for
# 128) stay in cache; 32 or 64 were up to 10 % faster on an idle 2-core machine, but every chunk
# adds parallel regions, and on a busy one each region can wait a whole time slice for its
# second thread: at batch 1024 under load, 64 took 1.0 s where 128 took 0.65 s (smplx: 0.55 s).
_SKIN_CHUNK = 128


def turns_to_rotation_offset(
    padded_turns: torch.Tensor, constants: QuaternionConstants, add_to: torch.Tensor | None = None
) -> torch.Tensor:
    """Rotations given in turns to ``R - I``, as flattened homogeneous 4x4 matrices.

    Args:
        padded_turns: (..., 4) ``(0, w / 2pi)``: a zero, then the axis-angle ``w`` in turns.
            The layer's pose matrices emit this layout directly, so the zero costs nothing.
        constants: :class:`QuaternionConstants` in the input's dtype and device.
        add_to: (..., 16) added to the result (in the last matmul, so it costs no operation), or None.

    Returns:
        (..., 16): ``[[R - I, 0], [0, 0]]`` in row-major order (plus ``add_to``).

    Why this form: at batch 1 the cost is the number of tensor operations, and this is 7.
    With ``u = w / 2pi`` and ``s = |u|`` (half the angle, over pi), the unit quaternion is
    ``(cos(pi s), sin(pi s) u / s)``. Since ``cos(pi s) = pi (1/2 - s) sinc(1/2 - s)`` and
    ``sin(pi s) / s = pi sinc(s)`` (``sinc(t) = sin(pi t) / (pi t)``, 1 at 0 in torch), one
    sinc over ``(1/2 - s, s, s, s)`` times ``(1/2 - s, u)`` gives the whole quaternion over
    pi. Both factors are smooth at every angle, and ``vector_norm`` has a zero gradient at a
    zero vector, so nothing is clamped and gradients are exact at zero too.
    """
    half_angle_turns = torch.linalg.vector_norm(padded_turns, dim=-1, keepdim=True)  # the leading 0 adds nothing
    sinc_argument = torch.addcmul(constants.half_e0, half_angle_turns, constants.signs)  # (1/2 - s, s, s, s)
    factor = torch.addcmul(padded_turns, sinc_argument, constants.e0)  # (1/2 - s, u)
    quaternion_over_pi = torch.sinc(sinc_argument) * factor
    outer = (quaternion_over_pi.unsqueeze(-1) * quaternion_over_pi.unsqueeze(-2)).view(-1, 16)
    if add_to is None:
        offset = torch.mm(outer, constants.outer_to_offset)
    else:
        offset = torch.addmm(add_to.reshape(-1, 16), outer, constants.outer_to_offset)
    return offset.view(*padded_turns.shape[:-1], 16)


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
    translation: torch.Tensor | None = None,
) -> torch.Tensor:
    """Linear blend skinning with 4x4 transforms.

    Args:
        vertices_by_coordinate: (B, 3, V) rest-pose vertices (blend shapes applied),
            coordinate-major: ``[b, c, v]`` is coordinate c of vertex v.
        weights_by_joint: (J, V) skinning weights (the transpose of MANO's ``weights``), rows in
            the same joint order as the transforms.
        global_transforms: (B, J, 4, 4) posed transform of each joint's frame.
        rest_inverse: (B, J, 4, 4) the inverse rest transform of each joint, ``[I | -J_j]``.
        translation: (B, 3) added to every vertex, or None.

    Returns:
        (B, V, 3): ``v' = sum_j w_vj (G_j @ rest_inverse_j) [v, 1] + translation``.
    """
    batch, _, num_v = vertices_by_coordinate.shape
    num_j = weights_by_joint.shape[0]
    relative = (global_transforms @ rest_inverse)[..., :3, :]  # (B, J, 3, 4); 4x4 @ 4x4 needs no copy
    by_entry = relative.flatten(2).transpose(1, 2)  # (B, 12, J): entry (c, k) of each joint's 3x4
    if translation is not None:  # (B, 12, 1): the translation in column 3
        translation = (translation.unsqueeze(-1) * _LAST_COLUMN.to(translation)).view(batch, 12, 1)
    if batch <= _SKIN_CHUNK:
        # one (B*12, J) x (J, V) product; the translation rides on column 3 as its bias, which
        # saves a pass over the output and is exact whatever the weights sum to
        entries = by_entry.reshape(batch * 12, num_j)
        if translation is None:
            blended = torch.mm(entries, weights_by_joint)
        else:
            blended = torch.addmm(translation.view(batch * 12, 1), entries, weights_by_joint)
        return _apply_blended(blended.view(batch, 3, 4, num_v), vertices_by_coordinate).contiguous()
    # Large batches: the blended transforms (12 numbers per vertex and sample) are made and
    # used a chunk of samples at a time, so they stay in cache instead of streaming through
    # memory twice. Here the translation is one more "joint" whose weight is 1 at every vertex:
    # a bias would first be copied into each chunk's whole product (a pass and a parallel
    # region per chunk), a 17th column costs almost nothing.
    if translation is not None:
        by_entry = torch.cat([by_entry, translation], 2)
        weights_by_joint = torch.cat([weights_by_joint, weights_by_joint.new_ones(1, num_v)])
    by_entry = by_entry.reshape(batch * 12, -1)
    chunks = []
    for start in range(0, batch, _SKIN_CHUNK):
        stop = min(start + _SKIN_CHUNK, batch)
        blended = torch.mm(by_entry[start * 12 : stop * 12], weights_by_joint).view(stop - start, 3, 4, num_v)
        chunks.append(_apply_blended(blended, vertices_by_coordinate[start:stop]))
    return torch.cat(chunks)  # one copy into the (B, V, 3) layout for all chunks


def _apply_blended(blended: torch.Tensor, vertices_by_coordinate: torch.Tensor) -> torch.Tensor:
    """(b, 3, 4, V) blended 3x4 transforms applied to (b, 3, V) vertices: a (b, V, 3) transposed view."""
    posed = torch.addcmul(blended[:, :, 3], blended[:, :, 0], vertices_by_coordinate[:, 0:1])  # x: (b, 1, V)
    posed = torch.addcmul(posed, blended[:, :, 1], vertices_by_coordinate[:, 1:2])
    return torch.addcmul(posed, blended[:, :, 2], vertices_by_coordinate[:, 2:3]).transpose(1, 2)


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
