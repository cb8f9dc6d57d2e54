"""Fit the hand model to a detector's 2D keypoints, starting from the network's prediction.

On real photos the network places each hand well but its fingers follow its synthetic training
more than the photo (docs/benchmarks.md, "Real photos"), while a detector trained on real photos
(:mod:`meshrec.detect`) puts the 21 keypoints where the fingers are. This fit moves the hand
model's joints onto those keypoints and keeps everything else the network said: the optimisation
starts from the global stage's pose and shape, and a term holds the hand near the network's final
(refined) mesh, root-relative, which fixes what 2D keypoints leave open (depth along each finger,
the palm's shape).

Per hand, in the right hand's frame (a left hand is mirrored in and out, as the network does):

    E = mean_j rho(||pi(J_j) - k_j|| / s)                              keypoints, visible j only
      + mesh_weight * mean_v ||(V_v - J_0) - (N_v - N_0)||^2 / (1 cm)^2   the network's mesh
      + limits_weight * joint limits + shape_weight * mean(beta^2)

``pi`` projects with the crop's K, ``s`` is the keypoints' hand size (diagonal of their box),
``rho`` the pseudo-Huber function (quadratic below ``huber``, linear above: a wrong keypoint pulls,
but no harder than a right one), ``J`` / ``V`` the fitted joints / vertices and ``N`` the network's
final mesh. Free: the 16 joints' 6D rotations, the shape, and the translation (Adam, a fixed
number of steps, so the cost is known: docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from manolayer.rotations import matrix_to_rot6d, rot6d_to_matrix
from meshrec.errors import MeshrecError
from meshrec.geometry.camera import project_points
from meshrec.losses import HandPrior, joint_limits_loss, shape_prior_loss, unmirror_rotations
from meshrec.models.reconstructor import flip_intrinsics, mirror_pixels, mirror_points
from meshrec.sides import SIDE_LEFT

# the translation is optimised in centimetres: one learning rate suits it and the rotations
_TRANSLATION_UNIT_M = 0.01
_MESH_UNIT_M = 0.01


@dataclass
class KeypointFitConfig:
    """Attributes:
        steps: Adam steps.
        lr: Adam's learning rate (6D rotations, betas, translation in cm).
        huber: where the keypoint term turns from quadratic to linear, in hand sizes.
        mesh_weight: weight of the closeness to the network's mesh (per cm^2 of mean squared
            vertex offset).
        limits_weight: weight of the joint-limit penalty (radians^2, :func:`meshrec.losses.joint_limits_loss`).
        shape_weight: weight of the shape prior (mean beta^2).
    """

    steps: int = 200
    lr: float = 0.05
    huber: float = 0.05
    mesh_weight: float = 0.001
    limits_weight: float = 1.0
    shape_weight: float = 0.01

    def __post_init__(self) -> None:
        if not (isinstance(self.steps, int) and self.steps >= 0):
            raise MeshrecError(f"fit steps must be an int >= 0, got {self.steps!r}")
        numbers = {"lr": self.lr, "huber": self.huber}
        weights = {"mesh_weight": self.mesh_weight, "limits_weight": self.limits_weight, "shape_weight": self.shape_weight}
        if not all(value > 0 for value in numbers.values()) or not all(value >= 0 for value in weights.values()):
            raise MeshrecError(f"fit needs lr > 0, huber > 0 and weights >= 0, got {numbers | weights}")


@dataclass
class KeypointFit:
    """The fitted hands, camera frame of each crop (metres), like the prediction they came from.

    Attributes:
        vertices: ``(B, V, 3)``; joints ``(B, 21, 3)`` OpenPose order; joints2d ``(B, 21, 2)``
            their projections (crop pixels).
        rotations: ``(B, 16, 3, 3)`` local joint rotations (for a left hand, of the left model,
            as :attr:`~meshrec.models.prediction.Prediction.global_rotations`); betas ``(B, S)``.
        error_before / error_after: ``(B,)`` mean distance of the visible keypoints to the
            network's / the fitted joints' projections, in hand sizes.
    """

    vertices: torch.Tensor
    joints: torch.Tensor
    joints2d: torch.Tensor
    rotations: torch.Tensor
    betas: torch.Tensor
    error_before: torch.Tensor
    error_after: torch.Tensor


def keypoint_hand_size(keypoints2d: torch.Tensor, visible: torch.Tensor) -> torch.Tensor:
    """``(B,)`` the diagonal of the visible keypoints' bounding box (pixels; at least 1)."""
    far = torch.finfo(keypoints2d.dtype).max
    low = torch.where(visible.unsqueeze(-1), keypoints2d, keypoints2d.new_tensor(far)).amin(1)
    high = torch.where(visible.unsqueeze(-1), keypoints2d, keypoints2d.new_tensor(-far)).amax(1)
    return (high - low).norm(dim=-1).clamp(min=1.0)


def _keypoint_errors(pixels: torch.Tensor, keypoints2d: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """``(B, 21)`` distances of ``pixels`` to ``keypoints2d`` (both ``(B, 21, 2)``) in hand sizes ``(B,)``."""
    return (pixels - keypoints2d).norm(dim=-1) / size.unsqueeze(1)


def _visible_mean(values: torch.Tensor, seen: torch.Tensor) -> torch.Tensor:
    """``(B,)`` the mean of ``values`` ``(B, 21)`` over each hand's visible keypoints (0 without any)."""
    return (values * seen).sum(1) / seen.sum(1).clamp(min=1)


def fit_to_keypoints(model, prediction, keypoints2d: torch.Tensor, visible: torch.Tensor | None = None,
                     config: KeypointFitConfig | None = None) -> KeypointFit:
    """Fit ``model``'s hand to ``keypoints2d`` from ``prediction`` (module docstring).

    Args:
        model: the :class:`~meshrec.models.reconstructor.HandMeshReconstructor` that made
            ``prediction`` (its hand model, joint regressor and hand prior are used).
        prediction: its :class:`~meshrec.models.prediction.Prediction` of ``B`` crops (in the
            crops' frame, as ``model.predict`` returns it); read: ``vertices``, ``joints2d``,
            ``K``, ``side``, ``global_rotations``, ``betas`` and ``image_size``.
        keypoints2d: ``(B, 21, 2)`` crop pixels, OpenPose order, e.g. the detector's keypoints
            mapped into the crop.
        visible: ``(B, 21)`` bool, the keypoints to fit (default: all). A hand without a visible
            keypoint is held by the other terms only.
        config: :class:`KeypointFitConfig`.

    Returns:
        :class:`KeypointFit`. Runs with gradients even under ``torch.no_grad`` / inference mode
        callers (it enables them locally); nothing of ``model`` is changed.
    """
    config = config or KeypointFitConfig()
    batch = prediction.vertices.shape[0]
    if keypoints2d.shape != (batch, 21, 2):
        raise MeshrecError(f"keypoints2d must be ({batch}, 21, 2) for {batch} predicted hands, got {tuple(keypoints2d.shape)}")
    if visible is None:
        visible = torch.ones(batch, 21, dtype=torch.bool, device=keypoints2d.device)
    if visible.shape != (batch, 21):
        raise MeshrecError(f"visible must be ({batch}, 21), got {tuple(visible.shape)}")
    if not torch.isfinite(keypoints2d[visible]).all():
        raise MeshrecError("keypoints2d has NaN or infinite values among the visible keypoints")

    layer = model.global_stage.mano
    regressor = model.joint_regressor
    side = prediction.side
    left = side == SIDE_LEFT
    width = prediction.image_size[1]
    with torch.inference_mode(False), torch.enable_grad():
        # everything in the right hand's frame, as the network works
        clone = lambda t: t.detach().clone()  # noqa: E731  (inference tensors cannot enter autograd)
        dtype = prediction.vertices.dtype
        target = mirror_pixels(clone(keypoints2d).to(dtype), left, width)
        target = torch.where(visible.unsqueeze(-1), target, torch.zeros_like(target))  # a hidden keypoint may be NaN
        seen = clone(visible).float().to(dtype)
        K = torch.where(left.view(-1, 1, 1), flip_intrinsics(clone(prediction.K), width), clone(prediction.K))
        network = mirror_points(clone(prediction.vertices), left)
        network_joints = regressor.to(network) @ network
        network_relative = network - network_joints[:, :1]
        rotations = unmirror_rotations(clone(prediction.global_rotations), side)
        size = keypoint_hand_size(target, visible)

        rot6d = matrix_to_rot6d(rotations).requires_grad_(True)
        betas = clone(prediction.betas).requires_grad_(True)
        start = layer(global_orient=rot6d[:, 0].detach(), hand_pose=rot6d[:, 1:].detach().flatten(1), betas=betas.detach(), pose_format="rot6d")
        start_joints = regressor.to(network) @ start.vertices
        base = (network_joints[:, 0] - start_joints[:, 0]).detach()
        shift = torch.zeros_like(base, requires_grad=True)
        optimizer = torch.optim.Adam([rot6d, betas, shift], lr=config.lr)
        prior = HandPrior.from_model(layer.model)
        right = torch.zeros_like(side)

        def hand(parameters_6d, shape, offset):
            out = layer(global_orient=parameters_6d[:, 0], hand_pose=parameters_6d[:, 1:].flatten(1), betas=shape, pose_format="rot6d")
            translation = (base + offset * _TRANSLATION_UNIT_M).unsqueeze(1)
            vertices = out.vertices + translation
            return vertices, regressor.to(vertices) @ vertices

        for _ in range(config.steps):
            vertices, joints = hand(rot6d, betas, shift)
            error = _keypoint_errors(project_points(joints, K), target, size)
            robust = (error.square() + config.huber**2).sqrt() - config.huber
            keypoint_term = _visible_mean(robust, seen).mean()
            offsets = (vertices - joints[:, :1]) - network_relative
            mesh_term = (offsets / _MESH_UNIT_M).square().sum(-1).mean()
            loss = keypoint_term + config.mesh_weight * mesh_term
            if config.limits_weight:
                loss = loss + config.limits_weight * joint_limits_loss(rot6d_to_matrix(rot6d), right, prior)
            if config.shape_weight:
                loss = loss + config.shape_weight * shape_prior_loss(betas)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        with torch.no_grad():
            vertices, joints = hand(rot6d, betas, shift)
            joints2d = project_points(joints, K)
            before = _visible_mean(_keypoint_errors(mirror_pixels(clone(prediction.joints2d), left, width), target, size), seen)
            after = _visible_mean(_keypoint_errors(joints2d, target, size), seen)
            fitted_rotations = unmirror_rotations(rot6d_to_matrix(rot6d), side)  # M R M is its own inverse
            return KeypointFit(
                vertices=mirror_points(vertices, left),
                joints=mirror_points(joints, left),
                joints2d=mirror_pixels(joints2d, left, width),
                rotations=fitted_rotations,
                betas=betas.detach().clone(),
                error_before=before,
                error_after=after,
            )
