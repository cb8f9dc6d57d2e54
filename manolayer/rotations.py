"""Rotation conversions (pure functions, any leading batch dims, device and dtype of the input).

Conventions:
- axis-angle: (..., 3), the rotation axis scaled by the angle in radians (right-handed);
- rotation matrix: (..., 3, 3), acting on column vectors, ``x' = R @ x``;
- 6D: (..., 6), the first two *rows* of the rotation matrix, concatenated
  (Zhou et al. 2019, the layout pytorch3d uses); :func:`rot6d_to_matrix` orthonormalises
  any 6 numbers by Gram-Schmidt, so a network can regress them freely.
"""

from __future__ import annotations

import torch

# Angles below sqrt(_TINY_ANGLE_SQ) are clamped to it: the formula's coefficients are then
# at their limits (1, 1/2, 1), and sqrt never sees 0, whose gradient is infinite.
_TINY_ANGLE_SQ = 1e-12
# axis_angle_to_matrix writes [w]x by picking from (0, x, y, z, -x, -y, -z)
_SKEW_PICK = [0, 6, 2, 3, 0, 4, 5, 1, 0]


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues' formula: (..., 3) axis-angle -> (..., 3, 3) rotation matrices.

    ``R = cos(t) I + sin(t)/t [w]x + (1 - cos(t))/t^2 w w^T`` with ``t = |w|``. The last
    coefficient is computed as ``2 sin^2(t/2) / t^2``, which has no cancellation at small
    angles. Written with few tensor operations: at small batches their count is the cost.
    """
    angle_sq = (axis_angle * axis_angle).sum(-1, keepdim=True)
    angle = angle_sq.clamp(min=_TINY_ANGLE_SQ).sqrt()
    half = 0.5 * angle
    sinc_half = torch.sin(half) / half
    a = torch.sin(angle) / angle
    b = 0.5 * sinc_half * sinc_half
    c = 1 - b * angle_sq  # = cos(angle), and exactly 1 at angle 0
    signed = torch.cat([torch.zeros_like(axis_angle[..., :1]), axis_angle, -axis_angle], -1)
    skew = signed[..., _SKEW_PICK]
    outer = (axis_angle.unsqueeze(-1) * axis_angle.unsqueeze(-2)).flatten(-2)
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).flatten()
    return (c * eye + a * skew + b * outer).unflatten(-1, (3, 3))


def matrix_to_axis_angle(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 3) axis-angle with angle in [0, pi].

    Goes through a unit quaternion, which is stable at every angle including 0 and pi.
    """
    return quaternion_to_axis_angle(matrix_to_quaternion(matrix))


def matrix_to_quaternion(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 4) unit quaternions, WXYZ, with w >= 0."""
    m = matrix
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    # four candidate solutions; the one with the largest denominator is well conditioned
    candidates_sq = torch.stack([1 + m00 + m11 + m22, 1 + m00 - m11 - m22, 1 - m00 + m11 - m22, 1 - m00 - m11 + m22], -1)
    candidates = torch.stack(
        [
            torch.stack([candidates_sq[..., 0], m[..., 2, 1] - m[..., 1, 2], m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] - m[..., 0, 1]], -1),
            torch.stack([m[..., 2, 1] - m[..., 1, 2], candidates_sq[..., 1], m[..., 1, 0] + m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0]], -1),
            torch.stack([m[..., 0, 2] - m[..., 2, 0], m[..., 1, 0] + m[..., 0, 1], candidates_sq[..., 2], m[..., 2, 1] + m[..., 1, 2]], -1),
            torch.stack([m[..., 1, 0] - m[..., 0, 1], m[..., 0, 2] + m[..., 2, 0], m[..., 2, 1] + m[..., 1, 2], candidates_sq[..., 3]], -1),
        ],
        dim=-2,
    )  # fmt: skip
    best = candidates_sq.argmax(-1, keepdim=True)
    chosen = torch.take_along_dim(candidates, best[..., None].expand(*best.shape, 4), dim=-2).squeeze(-2)
    quaternion = chosen / chosen.norm(dim=-1, keepdim=True)
    return torch.where(quaternion[..., :1] < 0, -quaternion, quaternion)


def quaternion_to_axis_angle(quaternion: torch.Tensor) -> torch.Tensor:
    """(..., 4) unit quaternions, WXYZ -> (..., 3) axis-angle."""
    w, xyz = quaternion[..., :1], quaternion[..., 1:]
    sin_half = xyz.norm(dim=-1, keepdim=True)
    half_angle = torch.atan2(sin_half, w)
    small = sin_half < 1e-6
    # angle / sin(half angle), with its series 2 + angle^2/12 ... near zero
    scale = torch.where(small, 2 / w.clamp(min=1e-12), 2 * half_angle / torch.where(small, torch.ones_like(sin_half), sin_half))
    return xyz * scale


def rot6d_to_matrix(rot6d: torch.Tensor) -> torch.Tensor:
    """(..., 6) 6D rotations (first two rows) -> (..., 3, 3) rotation matrices by Gram-Schmidt."""
    a1, a2 = rot6d[..., :3], rot6d[..., 3:]
    b1 = torch.nn.functional.normalize(a1, dim=-1)
    b2 = torch.nn.functional.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-2)


def matrix_to_rot6d(matrix: torch.Tensor) -> torch.Tensor:
    """(..., 3, 3) rotation matrices -> (..., 6): the first two rows, concatenated."""
    return matrix[..., :2, :].flatten(-2)
