"""What every renderer backend shares: the output type, the shading model, input checks.

No renderer is imported here (numpy and torch only).

Shading model (both backends implement exactly this; GLSL in ``gl.py``, torch in
``p3d.py``), all vectors in the OpenCV camera frame::

    n      = interpolated vertex normal, flipped if it disagrees with the visible side
             of the triangle (so inside-out / mirrored meshes shade like outward ones)
    view   = normalize(-position)                       (towards the camera)
    l      = normalize(light_dir)                       (towards the light)
    h      = normalize(l + view)
    colour = albedo * (ambient + (1 - ambient) * max(n.l, 0))
             + specular * max(n.h, 0) ** shininess      (only where n.l > 0)

clamped to [0, 1] and stored as ``round(255 * colour)``. Pixels no triangle covers get
``background``, ``mask`` False and ``depth`` 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from meshrec.errors import MeshrecError
from meshrec.geometry.camera import image_height_width

__all__ = [
    "DEFAULT_AMBIENT",
    "DEFAULT_LIGHT_DIR",
    "DEFAULT_SHININESS",
    "DEFAULT_SPECULAR",
    "SKIN_COLOR",
    "RenderInputs",
    "RenderOutput",
    "RendererUnavailableError",
    "Shading",
    "prepare_render_inputs",
]

# Uniform albedo when no per-vertex colours are given: a light skin tone, linear [0, 1].
SKIN_COLOR = (0.87, 0.67, 0.55)
# Towards the light, camera frame: from the camera, a little above (y is down) and left.
DEFAULT_LIGHT_DIR = (-0.3, -0.5, -1.0)
DEFAULT_AMBIENT = 0.35
DEFAULT_SPECULAR = 0.1
DEFAULT_SHININESS = 32.0


class RendererUnavailableError(RuntimeError):
    """A rendering backend cannot run here (missing package, system library or EGL)."""


@dataclass(frozen=True)
class RenderOutput:
    """Rendered images of a batch of meshes, numpy, one entry per mesh.

    Attributes:
        rgb: ``(B, H, W, 3)`` uint8, ``rgb[b, v, u]`` is the shaded colour of pixel row v,
            column u of mesh b (``background`` where nothing is drawn).
        mask: ``(B, H, W)`` bool, True where a triangle covers the pixel centre.
        depth: ``(B, H, W)`` float32, camera-frame z (metres) of the nearest surface at the
            pixel centre; 0 where ``mask`` is False.
    """

    rgb: np.ndarray
    mask: np.ndarray
    depth: np.ndarray


@dataclass(frozen=True)
class Shading:
    """Lighting parameters of the shading model in the module docstring (validated)."""

    light_dir: tuple[float, float, float] = DEFAULT_LIGHT_DIR
    ambient: float = DEFAULT_AMBIENT
    specular: float = DEFAULT_SPECULAR
    shininess: float = DEFAULT_SHININESS
    background: tuple[float, float, float] = (0.0, 0.0, 0.0)

    def __post_init__(self) -> None:
        light = np.asarray(self.light_dir, dtype=np.float64)
        if light.shape != (3,) or not np.isfinite(light).all() or np.linalg.norm(light) == 0:
            raise MeshrecError(f"light_dir must be a non-zero finite 3-vector, got {self.light_dir!r}")
        if not 0.0 <= self.ambient <= 1.0:
            raise MeshrecError(f"ambient must be in [0, 1], got {self.ambient}")
        if self.specular < 0.0 or self.shininess <= 0.0:
            raise MeshrecError(
                f"need specular >= 0 and shininess > 0, got {self.specular}, {self.shininess}"
            )
        background = np.asarray(self.background, dtype=np.float64)
        if background.shape != (3,) or not ((background >= 0) & (background <= 1)).all():
            raise MeshrecError(f"background must be 3 values in [0, 1], got {self.background!r}")

    @property
    def unit_light_dir(self) -> np.ndarray:
        light = np.asarray(self.light_dir, dtype=np.float64)
        return light / np.linalg.norm(light)


@dataclass(frozen=True)
class RenderInputs:
    """Validated render inputs as torch tensors on the vertices' device.

    Attributes:
        vertices: ``(B, V, 3)`` floating, OpenCV camera frame, metres.
        faces: ``(F, 3)`` int64, vertex indices in ``[0, V)``.
        K: ``(B, 3, 3)`` same dtype as ``vertices``.
        colors: ``(B, V, 3)`` albedo in [0, 1], same dtype as ``vertices``.
        height, width: image size in pixels.
    """

    vertices: torch.Tensor
    faces: torch.Tensor
    K: torch.Tensor
    colors: torch.Tensor
    height: int
    width: int


def _as_tensor(value, name: str) -> torch.Tensor:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray):
        return torch.from_numpy(value)
    raise TypeError(f"{name} must be a torch.Tensor or numpy.ndarray, got {type(value).__name__}")


def prepare_render_inputs(
    vertices,
    faces,
    K,
    image_size: int | Sequence[int],
    colors=None,
) -> RenderInputs:
    """Check shapes and types of render arguments and bring them to one layout.

    Args:
        vertices: ``(B, V, 3)`` or ``(V, 3)`` (one mesh), camera frame, metres; torch or numpy.
        faces: ``(F, 3)`` integer vertex indices, shared by the batch.
        K: ``(B, 3, 3)`` or ``(3, 3)`` (shared) intrinsics, meshrec pixels.
        image_size: ``H`` (square) or ``(H, W)``.
        colors: None (``SKIN_COLOR``), ``(3,)`` uniform, ``(V, 3)`` per vertex for the whole
            batch, or ``(B, V, 3)``; floats in [0, 1].

    Raises:
        TypeError, ValueError: naming the argument, the expected and the actual shape/type.
    """
    vertices = _as_tensor(vertices, "vertices")
    if not vertices.is_floating_point():
        raise TypeError(f"vertices must be floating point, got {vertices.dtype}")
    if vertices.ndim == 2:
        vertices = vertices[None]
    if vertices.ndim != 3 or vertices.shape[-1] != 3 or vertices.shape[1] < 3:
        raise MeshrecError(f"vertices must have shape (B, V, 3) with V >= 3, got {tuple(vertices.shape)}")
    batch, num_vertices = vertices.shape[:2]
    if batch == 0:
        raise MeshrecError("vertices must hold at least one mesh, got shape (0, V, 3)")
    device, dtype = vertices.device, vertices.dtype

    faces = _as_tensor(faces, "faces")
    if faces.is_floating_point() or faces.is_complex() or faces.dtype == torch.bool:
        raise TypeError(f"faces must be an integer array, got {faces.dtype}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
        raise MeshrecError(f"faces must have shape (F, 3) with F >= 1, got {tuple(faces.shape)}")
    faces = faces.to(device=device, dtype=torch.int64)
    if int(faces.min()) < 0 or int(faces.max()) >= num_vertices:
        raise MeshrecError(
            f"faces index vertices in [{int(faces.min())}, {int(faces.max())}] "
            f"but there are V = {num_vertices} vertices"
        )

    K = _as_tensor(K, "K").to(device=device, dtype=dtype)
    if K.ndim == 2:
        K = K[None].expand(batch, 3, 3)
    if K.shape != (batch, 3, 3):
        raise MeshrecError(f"K must have shape ({batch}, 3, 3) or (3, 3), got {tuple(K.shape)}")

    height, width = image_height_width(image_size)

    if colors is None:
        colors = torch.tensor(SKIN_COLOR, dtype=dtype, device=device)
    colors = _as_tensor(colors, "colors").to(device=device, dtype=dtype)
    if colors.shape == (3,):
        colors = colors.expand(batch, num_vertices, 3)
    elif colors.shape == (num_vertices, 3):
        colors = colors[None].expand(batch, num_vertices, 3)
    elif colors.shape != (batch, num_vertices, 3):
        raise MeshrecError(
            f"colors must have shape (3,), ({num_vertices}, 3) or ({batch}, {num_vertices}, 3), "
            f"got {tuple(colors.shape)}"
        )
    return RenderInputs(vertices, faces, K, colors, height, width)
