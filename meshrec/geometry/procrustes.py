"""Similarity (Procrustes) alignment of point sets, batched, in torch.

The default behaviour reproduces the FreiHAND evaluation's ``align_w_scale(gt, pred)``
(lmb-freiburg/freihand ``eval.py``), which the published PA-MPJPE / PA-MPVPE / F-scores
of the field are measured with:

1. centre both point sets on their means;
2. divide each centred set by its Frobenius norm plus ``1e-8``;
3. ``R, s = scipy.linalg.orthogonal_procrustes(target_n, pred_n)``, i.e. ``R`` is the
   orthogonal matrix minimising ``||target_n @ R - pred_n||_F`` and ``s`` the sum of the
   singular values of ``target_n.T @ pred_n``;
4. ``aligned = (pred_n @ R.T) * s * ||target_c|| + mean(target)``.

``R`` is only required to be orthogonal, so a mirror image of the target aligns
perfectly (the official protocol allows reflections). ``allow_reflection=False`` gives
the proper-rotation (Kabsch / Umeyama) variant instead.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from meshrec.errors import MeshrecError

# The official align_w_scale adds this to each Frobenius norm; it keeps a set whose
# points all coincide from dividing by zero and changes nothing measurable otherwise.
FREIHAND_NORM_EPS = 1e-8


class AlignmentInputError(MeshrecError):
    """The point sets given to a Procrustes alignment have the wrong shape or values."""


@dataclass(frozen=True)
class SimilarityTransform:
    """A batch of similarity transforms ``x -> scale * x @ rotation.T + translation``.

    Attributes:
        rotation: (..., 3, 3) orthogonal matrices; ``det = -1`` (a reflection) is
            possible when fitted with ``allow_reflection=True``.
        scale: (...,) positive scale factors.
        translation: (..., 3) translations, applied after rotation and scale.
    """

    rotation: torch.Tensor
    scale: torch.Tensor
    translation: torch.Tensor

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        """Transform points (..., P, 3) with the matching batch of transforms."""
        _check_points(points, "points")
        rotated = points @ self.rotation.transpose(-1, -2)
        return rotated * self.scale[..., None, None] + self.translation[..., None, :]


def _check_points(points: torch.Tensor, name: str) -> None:
    if not isinstance(points, torch.Tensor):
        raise AlignmentInputError(f"{name} must be a torch.Tensor, got {type(points).__name__}")
    if points.ndim < 2 or points.shape[-1] != 3:
        raise AlignmentInputError(
            f"{name} must have shape (..., P, 3), got {tuple(points.shape)}"
        )
    if not points.is_floating_point():
        raise AlignmentInputError(f"{name} must be a floating-point tensor, got {points.dtype}")


def _check_pair(pred: torch.Tensor, target: torch.Tensor) -> None:
    _check_points(pred, "pred")
    _check_points(target, "target")
    if pred.shape != target.shape:
        raise AlignmentInputError(
            "pred and target must have the same shape (..., P, 3) with corresponding points, "
            f"got pred {tuple(pred.shape)} and target {tuple(target.shape)}"
        )
    if pred.shape[-2] < 1:
        raise AlignmentInputError(f"need at least one point per set, got shape {tuple(pred.shape)}")
    if pred.device != target.device or pred.dtype != target.dtype:
        raise AlignmentInputError(
            "pred and target must share device and dtype, got "
            f"pred {pred.device}/{pred.dtype} and target {target.device}/{target.dtype}"
        )


@dataclass(frozen=True)
class _NormalisedFit:
    pred_mean: torch.Tensor  # (..., 1, 3)
    target_mean: torch.Tensor  # (..., 1, 3)
    pred_norm: torch.Tensor  # (..., 1, 1) Frobenius norm of centred pred, + eps
    target_norm: torch.Tensor  # (..., 1, 1) Frobenius norm of centred target, + eps
    pred_normalised: torch.Tensor  # (..., P, 3)
    rotation: torch.Tensor  # (..., 3, 3)
    scale: torch.Tensor  # (...,) Procrustes scale between the normalised sets


def _fit_normalised(
    pred: torch.Tensor, target: torch.Tensor, allow_reflection: bool, eps: float
) -> _NormalisedFit:
    pred_mean = pred.mean(dim=-2, keepdim=True)
    target_mean = target.mean(dim=-2, keepdim=True)
    pred_centred = pred - pred_mean
    target_centred = target - target_mean
    pred_norm = torch.linalg.vector_norm(pred_centred, dim=(-2, -1), keepdim=True) + eps
    target_norm = torch.linalg.vector_norm(target_centred, dim=(-2, -1), keepdim=True) + eps
    pred_n = pred_centred / pred_norm
    target_n = target_centred / target_norm

    # orthogonal_procrustes(A=target_n, B=pred_n) takes the SVD of A^T B.
    cross = target_n.transpose(-1, -2) @ pred_n  # (..., 3, 3)
    u, singular, vh = torch.linalg.svd(cross)
    if allow_reflection:
        rotation = u @ vh
        scale = singular.sum(dim=-1)
    else:
        # Flip the axis of the smallest singular value when U V^T is a reflection.
        sign = torch.sign(torch.linalg.det(u @ vh))
        sign = torch.where(sign == 0, torch.ones_like(sign), sign)
        flips = torch.ones_like(singular)
        flips[..., -1] = sign
        rotation = (u * flips[..., None, :]) @ vh
        scale = (singular * flips).sum(dim=-1)
    return _NormalisedFit(
        pred_mean=pred_mean,
        target_mean=target_mean,
        pred_norm=pred_norm,
        target_norm=target_norm,
        pred_normalised=pred_n,
        rotation=rotation,
        scale=scale,
    )


def align_similarity(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    allow_reflection: bool = True,
    eps: float = FREIHAND_NORM_EPS,
) -> torch.Tensor:
    """Align ``pred`` onto ``target`` with the best similarity transform, per sample.

    Reproduces FreiHAND's ``align_w_scale(target, pred)`` (see the module docstring),
    including its order of operations and the ``1e-8`` added to the norms.

    Args:
        pred: (..., P, 3) predicted points; ``pred[n, p]`` corresponds to ``target[n, p]``.
        target: (..., P, 3) ground-truth points, same shape, device and dtype.
        allow_reflection: True (the official protocol) lets the orthogonal factor be a
            reflection; False restricts it to proper rotations (det = +1).
        eps: added to each Frobenius norm, as the official code does.

    Returns:
        (..., P, 3) ``pred`` after its fitted similarity transform, in ``target``'s frame.
        Same dtype and device as the inputs. The SVD's gradient is undefined when
        singular values repeat (e.g. fewer than 3 non-collinear points).

    Example:
        >>> import torch
        >>> target = torch.randn(2, 21, 3, dtype=torch.float64)
        >>> pred = 2.0 * target + 1.0
        >>> torch.allclose(align_similarity(pred, target), target, atol=1e-9)
        True
    """
    _check_pair(pred, target)
    fit = _fit_normalised(pred, target, allow_reflection, eps)
    aligned = (fit.pred_normalised @ fit.rotation.transpose(-1, -2)) * fit.scale[..., None, None]
    return aligned * fit.target_norm + fit.target_mean


def fit_similarity(
    pred: torch.Tensor,
    target: torch.Tensor,
    *,
    allow_reflection: bool = True,
    eps: float = FREIHAND_NORM_EPS,
) -> SimilarityTransform:
    """Fit the similarity transform that ``align_similarity`` applies, as explicit factors.

    Useful to move other points with the transform fitted on one set (e.g. align a mesh
    with the transform fitted on its joints). ``fit_similarity(p, t).apply(p)`` equals
    ``align_similarity(p, t)`` up to rounding.

    Args:
        pred: (..., P, 3) predicted points.
        target: (..., P, 3) ground-truth points, corresponding to ``pred``.

    Returns:
        SimilarityTransform with rotation (..., 3, 3), scale (...,), translation (..., 3).
    """
    _check_pair(pred, target)
    fit = _fit_normalised(pred, target, allow_reflection, eps)
    total_scale = fit.scale * (fit.target_norm / fit.pred_norm)[..., 0, 0]
    rotated_pred_mean = (fit.pred_mean @ fit.rotation.transpose(-1, -2))[..., 0, :]
    translation = fit.target_mean[..., 0, :] - total_scale[..., None] * rotated_pred_mean
    return SimilarityTransform(rotation=fit.rotation, scale=total_scale, translation=translation)
