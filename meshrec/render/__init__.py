"""Rendering: the only meshrec package that imports a renderer (moderngl, pytorch3d).

Backends, both with ``render(vertices, faces, K, image_size, ...) -> RenderOutput``:

- ``'gl'``: OpenGL through moderngl on a headless EGL context (``meshrec.render.gl``);
  about a thousand 128x128 images per second on a 2-core CPU with Mesa llvmpipe.
- ``'pytorch3d'``: pytorch3d's rasterizer (``meshrec.render.p3d``); a few images per
  second on CPU, fast on CUDA. Also provides the differentiable ``soft_silhouette``.

Importing this package imports neither backend; ``get_renderer`` imports the chosen one.
Conventions (OpenCV camera frame, K in pixels with pixel centres at integers) are those of
``meshrec.geometry.camera``; ``meshrec.render.cameras`` converts them for each backend.

>>> renderer = get_renderer("gl")  # doctest: +SKIP
>>> out = renderer.render(vertices, faces, K, (128, 128))  # doctest: +SKIP
>>> out.rgb.shape  # (B, 128, 128, 3) uint8  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Literal

from meshrec.errors import MeshrecError
from meshrec.render.base import RendererUnavailableError, RenderOutput

if TYPE_CHECKING:  # pragma: no cover - typing only
    import torch

    from meshrec.render.gl import GLRenderer
    from meshrec.render.p3d import Pytorch3DRenderer

__all__ = [
    "BACKENDS",
    "RenderOutput",
    "RendererUnavailableError",
    "get_renderer",
    "gl_available",
    "soft_silhouette",
]

BACKENDS = ("gl", "pytorch3d")


def get_renderer(
    backend: Literal["gl", "pytorch3d"] = "gl", **kwargs
) -> "GLRenderer | Pytorch3DRenderer":
    """A renderer of the named backend.

    Args:
        backend: ``'gl'`` (fast, needs moderngl + EGL) or ``'pytorch3d'``.
        **kwargs: passed to the backend's constructor (``'gl'``: ``near``, ``far``);
            unknown names raise ``TypeError``.

    Raises:
        ValueError: unknown backend name.
        RendererUnavailableError: the backend's package is missing (message says what to
            install). For ``'gl'`` a missing EGL is only detected on the first ``render``;
            call ``gl_available()`` to check up front.
    """
    if backend == "gl":
        from meshrec.render.gl import GLRenderer, require_moderngl

        require_moderngl()
        return GLRenderer(**kwargs)
    if backend == "pytorch3d":
        from meshrec.render.p3d import Pytorch3DRenderer, require_pytorch3d

        require_pytorch3d()
        return Pytorch3DRenderer(**kwargs)
    raise MeshrecError(f"unknown render backend {backend!r}; expected one of {BACKENDS}")


def gl_available() -> bool:
    """True if the OpenGL backend can create its EGL context in this process."""
    try:
        from meshrec.render.gl import process_context

        process_context()
    except RendererUnavailableError:
        return False
    return True


def soft_silhouette(vertices: "torch.Tensor", faces: "torch.Tensor", K: "torch.Tensor", image_size,
                    sigma_px: float = 1.0, faces_per_pixel: int = 8) -> "torch.Tensor":
    """Differentiable soft mask ``(B, H, W)``; see ``meshrec.render.p3d.soft_silhouette``."""
    from meshrec.render.p3d import soft_silhouette as _soft_silhouette

    return _soft_silhouette(
        vertices, faces, K, image_size, sigma_px=sigma_px, faces_per_pixel=faces_per_pixel
    )
