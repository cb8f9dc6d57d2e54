"""Batch augmentation that keeps image, intrinsics and every label consistent.

Geometry. Per sample, an optional horizontal mirror, then an in-plane rotation by ``angle``
about the image centre ``c = ((W - 1) / 2, (H - 1) / 2)``, a zoom by ``scale`` about ``c`` and a
shift by ``translation`` pixels make one pixel affine ``A = T S R F`` (image -> augmented
image). The 3D labels get the matching camera-frame map ``M = R_z F_3`` (a rotation by
the same angle about the camera z axis, after the mirror ``x -> -x``) and the camera
becomes ``K' = A K M^-1``. Then, exactly (no approximation, any principal point)::

    project(M X, K') = A project(X, K)

so projecting the augmented 3D joints with the augmented K lands on the augmented 2D
joints, and the warped image shows the hand there. Zoom changes the focal length, shift
the principal point, rotation moves the principal point around ``c``; with square pixels
(``fx == fy``, no skew) ``K'`` stays upper-triangular. MANO labels follow: the global
orientation becomes ``R_z`` composed with it; a mirror negates the y and z components of
every joint's axis-angle and flips ``side`` (right <-> left), so a mirrored right hand is
labelled as the left hand it looks like.

Colour. Brightness (additive), contrast, saturation (multiplicative), hue (a fraction of
the colour circle) with ``kornia.enhance``, and an optional Gaussian blur
(:func:`meshrec.data.blur.gaussian_blur`), per sample, on the image only.

Randomness comes from an explicit ``torch.Generator`` (drawn on the CPU, so results do
not depend on the device); :func:`sample_augment_params` draws, :func:`augment_batch`
applies (pure), :class:`HandAugmentation` does both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from manolayer.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from meshrec.data.blur import gaussian_blur
from meshrec.data.crop import transform_points
from meshrec.errors import MeshrecError
from meshrec.data.sample import HandBatch
from meshrec.sides import SIDE_LEFT, SIDE_RIGHT

__all__ = [
    "AugmentSettings",
    "AugmentParams",
    "HandAugmentation",
    "sample_augment_params",
    "identity_augment_params",
    "augment_transforms",
    "augment_batch",
    "mirror_batch",
]


@dataclass(frozen=True)
class AugmentSettings:
    """Ranges the augmentation draws from (uniformly, per sample).

    Attributes:
        rotation_deg: in-plane rotation in ``[-rotation_deg, rotation_deg]`` degrees.
        scale_range: zoom factor range; > 1 magnifies (focal length times the factor).
        translate: shift in ``[-t, t]`` times the image width / height.
        brightness: added value in ``[-b, b]``.
        contrast: factor in ``[1 - c, 1 + c]``.
        saturation: factor in ``[1 - s, 1 + s]``.
        hue: shift in ``[-h, h]`` of the full colour circle (0.5 = half a turn).
        blur_prob: probability of a Gaussian blur.
        blur_sigma: blur sigma range in pixels.
        flip_prob: probability of a horizontal mirror (which turns a right hand into a left
            one: only useful when the model handles ``side``; off by default).
    """

    rotation_deg: float = 30.0
    scale_range: tuple[float, float] = (0.9, 1.1)
    translate: float = 0.05
    brightness: float = 0.2
    contrast: float = 0.2
    saturation: float = 0.2
    hue: float = 0.02
    blur_prob: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    flip_prob: float = 0.0

    def __post_init__(self) -> None:
        low, high = self.scale_range
        if not 0 < low <= high:
            raise MeshrecError(f"scale_range must satisfy 0 < low <= high, got {self.scale_range}")
        low, high = self.blur_sigma
        if not 0 < low <= high:
            raise MeshrecError(f"blur_sigma must satisfy 0 < low <= high, got {self.blur_sigma}")
        for name in ("rotation_deg", "translate", "brightness", "contrast", "saturation", "hue"):
            if getattr(self, name) < 0:
                raise MeshrecError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("blur_prob", "flip_prob"):
            if not 0 <= getattr(self, name) <= 1:
                raise MeshrecError(f"{name} must be in [0, 1], got {getattr(self, name)}")
        if self.contrast > 1 or self.saturation > 1:
            raise MeshrecError(f"contrast and saturation must be <= 1, got {self.contrast}, {self.saturation}")


@dataclass(frozen=True)
class AugmentParams:
    """The values drawn for one batch, each ``(B,)`` unless said.

    Attributes:
        angle: rotation in radians (positive turns image content from +u towards +v,
            i.e. clockwise on screen, and 3D points from +x towards +y about +z).
        scale: zoom factor. translation: ``(B, 2)`` pixel shift ``(du, dv)``.
        flip: bool, mirror horizontally first.
        brightness, contrast, saturation, hue: colour changes (hue in radians).
        blur_sigma: Gaussian sigma in pixels, 0 for no blur.
    """

    angle: torch.Tensor
    scale: torch.Tensor
    translation: torch.Tensor
    flip: torch.Tensor
    brightness: torch.Tensor
    contrast: torch.Tensor
    saturation: torch.Tensor
    hue: torch.Tensor
    blur_sigma: torch.Tensor


def identity_augment_params(batch_size: int) -> AugmentParams:
    """Parameters that change nothing (a starting point for hand-made ones)."""
    zeros = torch.zeros(batch_size)
    return AugmentParams(
        angle=zeros,
        scale=torch.ones(batch_size),
        translation=torch.zeros(batch_size, 2),
        flip=torch.zeros(batch_size, dtype=torch.bool),
        brightness=zeros,
        contrast=torch.ones(batch_size),
        saturation=torch.ones(batch_size),
        hue=zeros,
        blur_sigma=zeros,
    )


def sample_augment_params(
    batch_size: int,
    image_size: tuple[int, int],
    settings: AugmentSettings = AugmentSettings(),
    generator: torch.Generator | None = None,
) -> AugmentParams:
    """Draw per-sample parameters from ``settings`` with ``generator`` (CPU tensors).

    ``image_size`` is ``(H, W)``; the translation range scales with it.
    """
    height, width = image_size

    def uniform(low: float, high: float, *shape: int) -> torch.Tensor:
        return low + (high - low) * torch.rand(batch_size, *shape, generator=generator)

    s = settings
    blurred = torch.rand(batch_size, generator=generator) < s.blur_prob
    sigma = uniform(*s.blur_sigma)
    return AugmentParams(
        angle=uniform(-math.radians(s.rotation_deg), math.radians(s.rotation_deg)),
        scale=torch.exp(uniform(math.log(s.scale_range[0]), math.log(s.scale_range[1]))),
        translation=uniform(-s.translate, s.translate, 2) * torch.tensor([width, height], dtype=torch.float32),
        flip=torch.rand(batch_size, generator=generator) < s.flip_prob,
        brightness=uniform(-s.brightness, s.brightness),
        contrast=uniform(1 - s.contrast, 1 + s.contrast),
        saturation=uniform(1 - s.saturation, 1 + s.saturation),
        hue=uniform(-s.hue, s.hue) * (2 * math.pi),
        blur_sigma=torch.where(blurred, sigma, torch.zeros_like(sigma)),
    )


def augment_transforms(
    params: AugmentParams, image_size: tuple[int, int], *, dtype=torch.float32, device=None
) -> tuple[torch.Tensor, torch.Tensor]:
    """The pixel affine ``A`` ``(B, 3, 3)`` and the camera-frame map ``M`` ``(B, 3, 3)`` of ``params``.

    ``A = T S R F`` (mirror, rotate and zoom about the image centre, shift); ``M = R_z F_3``.
    """
    height, width = image_size
    batch = params.angle.shape[0]
    angle = params.angle.to(device=device, dtype=dtype)
    cos, sin = torch.cos(angle), torch.sin(angle)
    centre = torch.tensor([(width - 1) / 2.0, (height - 1) / 2.0], dtype=dtype, device=device)
    flip_sign = torch.where(params.flip.to(device), -1.0, 1.0).to(dtype)

    mirror_pixels = torch.eye(3, dtype=dtype, device=device).repeat(batch, 1, 1)
    mirror_pixels[:, 0, 0] = flip_sign
    mirror_pixels[:, 0, 2] = torch.where(params.flip.to(device), float(width - 1), 0.0).to(dtype)

    rotation2d = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)  # (B, 2, 2)
    linear = params.scale.to(device=device, dtype=dtype)[:, None, None] * rotation2d
    about_centre = torch.eye(3, dtype=dtype, device=device).repeat(batch, 1, 1)
    about_centre[:, :2, :2] = linear
    about_centre[:, :2, 2] = centre - (linear @ centre) + params.translation.to(device=device, dtype=dtype)
    pixel_affine = about_centre @ mirror_pixels

    camera_map = torch.zeros(batch, 3, 3, dtype=dtype, device=device)
    camera_map[:, :2, :2] = rotation2d
    camera_map[:, 2, 2] = 1.0
    mirror_3d = torch.diag_embed(torch.stack([flip_sign, torch.ones_like(flip_sign), torch.ones_like(flip_sign)], -1))
    return pixel_affine, camera_map @ mirror_3d


def _mirror_axis_angles(pose: torch.Tensor, flip: torch.Tensor) -> torch.Tensor:
    """Negate the y and z components of each of the 16 axis-angles of ``(B, 48)`` where ``flip``."""
    sign = torch.tensor([1.0, -1.0, -1.0], dtype=pose.dtype, device=pose.device).repeat(pose.shape[-1] // 3)
    return torch.where(flip[:, None], pose * sign, pose)


def _photometric(image: torch.Tensor, params: AugmentParams) -> torch.Tensor:
    from kornia.enhance import adjust_brightness, adjust_contrast, adjust_hue, adjust_saturation

    def per_sample(values: torch.Tensor) -> torch.Tensor:
        return values.to(device=image.device, dtype=image.dtype)

    image = adjust_brightness(image, per_sample(params.brightness))
    image = adjust_contrast(image, per_sample(params.contrast))
    image = adjust_saturation(image, per_sample(params.saturation)).clamp(0, 1)
    image = adjust_hue(image, per_sample(params.hue)).clamp(0, 1)
    return gaussian_blur(image, per_sample(params.blur_sigma))


def augment_batch(batch: HandBatch, params: AugmentParams, colour: bool = True) -> HandBatch:
    """Apply ``params`` to a batch: image, mask, K, 2D/3D joints, vertices, MANO pose, side.

    Labels a sample does not have (mask False) stay zero. Keypoints may leave the image;
    their positions stay correct and ``joints2d_visible`` is unchanged.

    Args:
        batch: :class:`HandBatch` with images ``(B, 3, H, W)``.
        params: from :func:`sample_augment_params` (batch size B).
        colour: also apply the colour changes and blur.
    """
    from kornia.geometry.transform import warp_affine

    batch_size = len(batch)
    if params.angle.shape != (batch_size,):
        raise MeshrecError(f"params are for a batch of {tuple(params.angle.shape)}, the batch has {batch_size} samples")
    height, width = batch.image.shape[-2:]
    dtype, device = batch.image.dtype, batch.image.device
    pixel_affine, camera_map = augment_transforms(params, (height, width), dtype=torch.float64, device=device)

    image = warp_affine(batch.image, pixel_affine[:, :2].to(dtype), (height, width), align_corners=True)
    mask = warp_affine(batch.mask, pixel_affine[:, :2].to(batch.mask.dtype), (height, width), align_corners=True)
    mask = torch.where(batch.has_mask[:, None, None, None], mask, torch.zeros_like(mask))
    if colour:
        image = _photometric(image, params)

    K = (pixel_affine @ batch.K.double() @ torch.linalg.inv(camera_map)).to(batch.K.dtype)
    joints2d = transform_points(batch.joints2d.double(), pixel_affine).to(batch.joints2d.dtype)
    joints2d = torch.where(batch.has_joints2d[:, None, None], joints2d, torch.zeros_like(joints2d))
    joints3d = (batch.joints3d.double() @ camera_map.transpose(1, 2)).to(batch.joints3d.dtype)
    vertices = (batch.vertices.double() @ camera_map.transpose(1, 2)).to(batch.vertices.dtype)

    flip = params.flip.to(device)
    pose = _mirror_axis_angles(batch.mano_pose, flip)
    # M = R_z F_3 and F_3 only flips x, so R_z is M with its first column's sign restored.
    rotation_z = camera_map.clone()
    rotation_z[:, :, 0] = rotation_z[:, :, 0] * torch.where(flip, -1.0, 1.0).to(rotation_z)[:, None]
    global_orient = matrix_to_axis_angle(rotation_z @ axis_angle_to_matrix(pose[:, :3].double())).to(pose.dtype)
    pose = torch.cat([global_orient, pose[:, 3:]], -1)
    pose = torch.where(batch.has_mano[:, None], pose, torch.zeros_like(pose))

    side = torch.where(flip, SIDE_LEFT + SIDE_RIGHT - batch.side, batch.side)
    return replace(
        batch,
        image=image,
        mask=mask,
        K=K,
        joints2d=joints2d,
        joints3d=joints3d,
        vertices=vertices,
        mano_pose=pose,
        side=side,
    )


def mirror_batch(batch: HandBatch, which: torch.Tensor | None = None) -> HandBatch:
    """Mirror samples horizontally (``which``: ``(B,)`` bool, default all): image, K, labels,
    MANO pose and ``side`` (see the module docstring). Mirroring twice gives the batch back.

    Note: a mirrored mesh keeps its vertex order, so its triangles' winding flips; render or
    export it with the faces reversed.
    """
    batch_size = len(batch)
    params = identity_augment_params(batch_size)
    flip = torch.ones(batch_size, dtype=torch.bool) if which is None else torch.as_tensor(which, dtype=torch.bool).cpu()
    return augment_batch(batch, replace(params, flip=flip), colour=False)


class HandAugmentation:
    """Draws parameters from ``settings`` and applies them: ``augment(batch, generator)``.

    >>> augment = HandAugmentation(AugmentSettings(rotation_deg=10.0))
    """

    def __init__(self, settings: AugmentSettings = AugmentSettings()) -> None:
        self.settings = settings

    def __call__(self, batch: HandBatch, generator: torch.Generator | None = None) -> HandBatch:
        params = sample_augment_params(len(batch), tuple(batch.image.shape[-2:]), self.settings, generator)
        return augment_batch(batch, params)
