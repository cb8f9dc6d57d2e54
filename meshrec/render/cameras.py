"""The one place that converts meshrec's camera convention into each renderer's.

meshrec convention (see ``meshrec.geometry.camera``): vertices in the OpenCV camera frame
(x right, y down, z forward, metres), intrinsics ``K`` (B, 3, 3) in pixels, and **pixel
centres at integer coordinates** (the top-left pixel's centre is (0, 0)).

Renderers differ from it in two ways:

1. Where pixel centres are. OpenGL window coordinates and pytorch3d's rasterizer both put
   the centre of pixel ``i`` at ``i + 0.5``. A meshrec pixel coordinate ``u`` is therefore
   ``u + 0.5`` for them: we shift the principal point by ``PIXEL_CENTRE_SHIFT`` = +0.5.
2. Axis directions.
   - OpenGL: clip space x right, y up, camera looking down -z, window row 0 at the
     bottom. We build a projection matrix that takes OpenCV camera-frame points directly
     (no view matrix) and sends image row ``v`` to window row ``v``; rows read back with
     ``glReadPixels`` (bottom-up) then come out in image order (top-down) with no flip.
     The y flip mirrors the image, so triangle winding appears reversed: renderers
     using this matrix must not cull faces by winding.
   - pytorch3d: camera frame x left, y up, z forward; NDC +x left, +y up. We use
     pytorch3d's own ``cameras_from_opencv_projection`` with an identity pose (vertices
     are already in the camera frame), which flips x and y, and feed it the shifted K.

Depth: both conversions keep the camera-frame z as the depth a renderer reports.
numpy (OpenGL) or torch (pytorch3d) only; pytorch3d is imported inside its function.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

from meshrec.errors import MeshrecError
from meshrec.geometry.camera import image_height_width

if TYPE_CHECKING:  # pragma: no cover - typing only
    from pytorch3d.renderer import PerspectiveCameras

__all__ = ["PIXEL_CENTRE_SHIFT", "opencv_to_gl_projection", "opencv_to_pytorch3d_cameras"]

# meshrec pixel coordinate u (centres at integers) == renderer coordinate u + 0.5.
PIXEL_CENTRE_SHIFT = 0.5


def opencv_to_gl_projection(
    K: np.ndarray, image_size: tuple[int, int], near: float, far: float
) -> np.ndarray:
    """OpenGL projection matrices that take OpenCV camera-frame points to clip space.

    For a camera-frame point ``p = (x, y, z)`` (z > 0 in front), ``clip = P @ (x, y, z, 1)``
    with ``clip_w = z`` gives, after the perspective division and the viewport transform of
    a ``W x H`` viewport, window coordinates ``(u + 0.5, v + 0.5)`` where ``(u, v)`` is the
    meshrec pixel of ``p`` (``meshrec.geometry.camera.project_points``), and NDC depth -1 at
    ``z = near``, +1 at ``z = far``::

        P = [[2 fx / W, 2 s / W, 2 (cx + 0.5) / W - 1,  0              ],
             [0,        2 fy / H, 2 (cy + 0.5) / H - 1, 0              ],
             [0,        0,        (f + n) / (f - n),    -2 f n / (f - n)],
             [0,        0,        1,                    0              ]]

    (s = K[0, 1], the skew.) Window row v is image row v: read-back rows need no flip.

    Args:
        K: ``(B, 3, 3)`` intrinsics in meshrec pixels.
        image_size: ``(H, W)`` of the viewport, pixels.
        near, far: clipping distances along z, metres, ``0 < near < far``.

    Returns:
        ``(B, 4, 4)`` float32, row-major (apply as ``P @ p``; upload ``P.T`` to a GLSL
        ``mat4``, which is column-major).
    """
    K = np.asarray(K, dtype=np.float64)
    if K.ndim != 3 or K.shape[1:] != (3, 3):
        raise MeshrecError(f"K must have shape (B, 3, 3), got {K.shape}")
    if not 0.0 < near < far:
        raise MeshrecError(f"need 0 < near < far, got near={near}, far={far}")
    height, width = image_height_width(image_size)
    projection = np.zeros((K.shape[0], 4, 4), dtype=np.float64)
    projection[:, 0, 0] = 2.0 * K[:, 0, 0] / width
    projection[:, 0, 1] = 2.0 * K[:, 0, 1] / width
    projection[:, 0, 2] = 2.0 * (K[:, 0, 2] + PIXEL_CENTRE_SHIFT) / width - 1.0
    projection[:, 1, 1] = 2.0 * K[:, 1, 1] / height
    projection[:, 1, 2] = 2.0 * (K[:, 1, 2] + PIXEL_CENTRE_SHIFT) / height - 1.0
    projection[:, 2, 2] = (far + near) / (far - near)
    projection[:, 2, 3] = -2.0 * far * near / (far - near)
    projection[:, 3, 2] = 1.0
    return projection.astype(np.float32)


def opencv_to_pytorch3d_cameras(K: torch.Tensor, image_size: tuple[int, int]) -> "PerspectiveCameras":
    """pytorch3d cameras that render OpenCV camera-frame vertices at meshrec pixels.

    Pass the vertices (OpenCV camera frame) to pytorch3d as world coordinates: the
    returned cameras have an identity extrinsic in OpenCV terms. A vertex that
    ``project_points`` sends to pixel ``(u, v)`` is rasterized at ``image[v, u]``;
    pytorch3d's ``zbuf`` is the camera-frame z. Differentiable with respect to ``K``.
    A non-zero skew ``K[:, 0, 1]`` raises (pytorch3d's cameras have no skew term).

    Args:
        K: ``(B, 3, 3)`` intrinsics in meshrec pixels (pixel centres at integers).
        image_size: ``(H, W)`` in pixels.

    Returns:
        ``pytorch3d.renderer.PerspectiveCameras`` with batch size B, on ``K.device``.
    """
    from pytorch3d.utils import cameras_from_opencv_projection

    if K.ndim != 3 or K.shape[1:] != (3, 3):
        raise MeshrecError(f"K must have shape (B, 3, 3), got {tuple(K.shape)}")
    skew = K[:, 0, 1].detach().abs().max().item() if K.shape[0] else 0.0
    if skew > 1e-9:
        # pytorch3d's conversion keeps only fx, fy, cx, cy; refuse rather than drop it.
        raise MeshrecError(f"pytorch3d cameras cannot represent a skewed K (|K[:, 0, 1]| = {skew})")
    batch = K.shape[0]
    # pytorch3d treats pixel i's centre as i + 0.5 (see the module docstring).
    shift = torch.zeros(3, 3, dtype=K.dtype, device=K.device)
    shift[0, 2] = shift[1, 2] = PIXEL_CENTRE_SHIFT
    camera_matrix = K + shift
    rotation = torch.eye(3, dtype=K.dtype, device=K.device).expand(batch, 3, 3)
    translation = torch.zeros(batch, 3, dtype=K.dtype, device=K.device)
    image_size_hw = torch.tensor([image_height_width(image_size)], dtype=K.dtype, device=K.device).expand(batch, 2)
    return cameras_from_opencv_projection(rotation, translation, camera_matrix, image_size_hw)
