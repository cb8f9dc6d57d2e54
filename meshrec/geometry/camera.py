"""Pinhole camera projection in the project's one camera convention (OpenCV).

Conventions (used everywhere in meshrec):

- Camera frame: x right, y down, z forward (into the scene), metres.
- Intrinsics ``K`` (3, 3) in pixels of the image the network sees::

      [[fx,  0, cx],
       [ 0, fy, cy],
       [ 0,  0,  1]]

- Pixel coordinates ``(u, v)``: u grows to the right (column), v grows down (row).
  **Pixel centres sit at integer coordinates**: the centre of the top-left pixel is
  ``(0, 0)``, pixel ``(row, col)`` covers ``[col - 0.5, col + 0.5] x [row - 0.5, row + 0.5]``
  and the image spans ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``. So ``image[v, u]`` is the
  pixel a point projected to integer ``(u, v)`` lands on, and the image centre is
  ``((W - 1) / 2, (H - 1) / 2)``. (This is OpenCV's convention; pytorch3d and OpenGL put
  centres at ``i + 0.5``; ``meshrec.render.cameras`` converts.)

Pure torch; device and dtype follow the inputs.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence

import torch

from meshrec.errors import MeshrecError

__all__ = ["default_intrinsics", "image_height_width", "project_points", "DEFAULT_FOV_DEG", "MIN_DEPTH"]

# A hand that fills a crop of this field of view sits about 0.45 m from the camera
# (0.2 m across), which is typical for FreiHAND-like crops and webcam selfies. Used only
# when the real intrinsics are unknown.
DEFAULT_FOV_DEG = 25.0

# Depth (metres) below which z is clamped before the division, so that points at or
# behind the camera plane give finite (meaningless) pixels and finite gradients.
MIN_DEPTH = 1e-4


def image_height_width(image_size: int | Sequence[int]) -> tuple[int, int]:
    """``image_size`` as ``(H, W)`` ints: an int means a square image, else ``(H, W)``."""
    if isinstance(image_size, bool):
        raise TypeError(f"image_size must be an int or (H, W), got {image_size!r}")
    if isinstance(image_size, numbers.Integral):
        height = width = int(image_size)
    else:
        try:
            height, width = (int(s) for s in image_size)
        except (TypeError, ValueError):
            raise TypeError(f"image_size must be an int or (H, W), got {image_size!r}") from None
    if height <= 0 or width <= 0:
        raise MeshrecError(f"image_size must be positive, got (H, W) = ({height}, {width})")
    return height, width


def default_intrinsics(
    image_size: int | Sequence[int],
    fov_deg: float = DEFAULT_FOV_DEG,
    batch: int | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Intrinsics for a crop whose real camera is unknown.

    Square pixels, principal point at the image centre ``((W - 1) / 2, (H - 1) / 2)``
    (pixel centres at integers, see the module docstring), and a focal length chosen so
    that the **longer** image side spans ``fov_deg`` degrees::

        f = max(H, W) / (2 * tan(fov_deg / 2))

    The default (25 degrees) makes a 20 cm hand fill the crop at about 0.45 m; for a
    224 x 224 crop it gives f ≈ 505 px, close to FreiHAND's typical focal lengths. This is
    the one place meshrec turns a field of view into intrinsics; the same camera in pixels
    of the photo a crop was cut from is :func:`meshrec.data.crop.image_intrinsics_for_crop`.

    Args:
        image_size: ``H`` for a square image, or ``(H, W)`` in pixels.
        fov_deg: field of view across the longer side, degrees, in (0, 180).
        batch: if given, return ``(batch, 3, 3)``; else ``(3, 3)``.
        dtype, device: of the returned tensor.

    Returns:
        K: ``(3, 3)`` or ``(batch, 3, 3)``.

    >>> default_intrinsics(224)[0, 2].item()
    111.5
    >>> tuple(default_intrinsics((120, 160), batch=4).shape)
    (4, 3, 3)
    """
    height, width = image_height_width(image_size)
    if not 0.0 < float(fov_deg) < 180.0:
        raise MeshrecError(f"fov_deg must be in (0, 180) degrees, got {fov_deg}")
    if batch is not None and (isinstance(batch, bool) or not isinstance(batch, int) or batch < 1):
        raise MeshrecError(f"batch must be a positive int or None, got {batch!r}")
    focal = max(height, width) / (2.0 * math.tan(math.radians(fov_deg) / 2.0))
    K = torch.tensor(
        [[focal, 0.0, (width - 1) / 2.0], [0.0, focal, (height - 1) / 2.0], [0.0, 0.0, 1.0]],
        dtype=dtype,
        device=device,
    )
    if batch is not None:
        K = K.expand(batch, 3, 3).clone()
    return K


def project_points(
    points: torch.Tensor, K: torch.Tensor, min_depth: float = MIN_DEPTH
) -> torch.Tensor:
    """Project camera-frame points to pixels: ``u = fx x / z + cx``, ``v = fy y / z + cy``.

    Uses the full 3x3 ``K`` (a skew term ``K[0, 1]`` is honoured).

    Args:
        points: ``(B, N, 3)`` camera frame (x right, y down, z forward), metres;
            ``points[b, n]`` is point n of sample b. Any number of leading batch dims
            ``(*, N, 3)`` works.
        K: ``(B, 3, 3)`` intrinsics in pixels, one per sample (leading dims equal to
            those of ``points``), or ``(3, 3)`` shared by all samples.
        min_depth: z is clamped to at least this (metres) before dividing. Points with
            ``z <= min_depth`` (at or behind the camera) therefore get finite but
            meaningless pixels far from the image and finite gradients; callers that
            care must mask them with ``points[..., 2] > min_depth``.

    Returns:
        uv: ``(B, N, 2)`` pixel coordinates ``(u, v)`` = (column, row), pixel centres at
        integers (top-left pixel centre = (0, 0)). Same dtype/device as ``points``.

    >>> K = torch.tensor([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]])
    >>> project_points(torch.tensor([[[0.1, -0.2, 2.0]]]), K[None]).tolist()
    [[[37.0, 14.0]]]
    """
    if not isinstance(points, torch.Tensor) or not isinstance(K, torch.Tensor):
        raise TypeError(
            f"points and K must be torch.Tensor, got {type(points).__name__} and {type(K).__name__}"
        )
    if points.ndim < 2 or points.shape[-1] != 3:
        raise MeshrecError(f"points must have shape (B, N, 3), got {tuple(points.shape)}")
    if K.shape[-2:] != (3, 3):
        raise MeshrecError(f"K must have shape (B, 3, 3) or (3, 3), got {tuple(K.shape)}")
    if K.ndim != 2 and K.shape[:-2] != points.shape[:-2]:
        raise MeshrecError(
            f"K batch dims {tuple(K.shape[:-2])} do not match points batch dims "
            f"{tuple(points.shape[:-2])} (points {tuple(points.shape)}, K {tuple(K.shape)})"
        )
    if not points.is_floating_point():
        raise TypeError(f"points must be a floating point tensor, got {points.dtype}")
    if not min_depth > 0.0:
        raise MeshrecError(f"min_depth must be > 0, got {min_depth}")
    K = K.to(dtype=points.dtype, device=points.device)
    if K.ndim == 2:
        K = K.expand(*points.shape[:-2], 3, 3)

    depth = points[..., 2:3].clamp(min=min_depth)
    xy_normalised = points[..., :2] / depth  # (*, N, 2)
    # uv = K[:2, :2] @ xy + K[:2, 2], for rows of points: xy @ K[:2, :2]^T (matmul keeps leading dims)
    return torch.matmul(xy_normalised, K[..., :2, :2].transpose(-1, -2)) + K[..., None, :2, 2]
