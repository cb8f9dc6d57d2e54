"""pytorch3d renderer: the slow but differentiable backend (CPU or CUDA).

``Pytorch3DRenderer.render`` gives the same ``RenderOutput`` as the OpenGL backend (same
shading model, see ``meshrec.render.base``); use it where EGL is missing. On CPU it
renders a few images per second; on a GPU it is fast.

``soft_silhouette`` is the differentiable part: a soft coverage mask whose gradients
reach the vertices (and K), for a mask loss.

pytorch3d is imported inside the functions, never at module import.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch

from meshrec.errors import MeshrecError
from meshrec.geometry.normals import face_normals, vertex_normals
from meshrec.render.base import (
    DEFAULT_AMBIENT,
    DEFAULT_LIGHT_DIR,
    DEFAULT_SHININESS,
    DEFAULT_SPECULAR,
    RendererUnavailableError,
    RenderOutput,
    Shading,
    prepare_render_inputs,
)
from meshrec.render.cameras import opencv_to_pytorch3d_cameras

__all__ = ["Pytorch3DRenderer", "soft_silhouette"]

_INSTALL_HINT = (
    "the pytorch3d renderer needs pytorch3d: `pip install easypytorch3d==0.7.9.post1` "
    "(built for torch 2.11.0), or the 'render' extra of meshrec"
)

# A face further than this (in probability) from covering a pixel is not rasterized for it.
_SOFT_PROBABILITY_FLOOR = 1e-4


def require_pytorch3d():
    """The pytorch3d package (its renderer imported), or :class:`RendererUnavailableError` saying what to install."""
    try:
        import pytorch3d.renderer  # noqa: F401
    except ImportError as error:
        message = f"cannot import pytorch3d ({error}); {_INSTALL_HINT}"
        raise RendererUnavailableError(message) from error
    return pytorch3d


def _rasterize(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    K: torch.Tensor,
    height: int,
    width: int,
    blur_radius: float,
    faces_per_pixel: int,
    perspective_correct: bool,
):
    """pytorch3d fragments of a batch sharing ``faces``; vertices are camera-frame (OpenCV)."""
    require_pytorch3d()
    from pytorch3d.renderer import MeshRasterizer, RasterizationSettings
    from pytorch3d.structures import Meshes

    batch = vertices.shape[0]
    meshes = Meshes(verts=list(vertices.float()), faces=[faces] * batch)
    cameras = opencv_to_pytorch3d_cameras(K.float(), (height, width))
    settings = RasterizationSettings(
        image_size=(height, width),
        blur_radius=blur_radius,
        faces_per_pixel=faces_per_pixel,
        perspective_correct=perspective_correct,
        cull_backfaces=False,
        # The CPU rasterizer has no coarse-to-fine path; 0 selects the naive one silently.
        bin_size=None if vertices.is_cuda else 0,
    )
    return MeshRasterizer(cameras=cameras, raster_settings=settings)(meshes)


def _shade(
    positions: torch.Tensor,
    normals: torch.Tensor,
    face_normals: torch.Tensor,
    albedo: torch.Tensor,
    shading: Shading,
) -> torch.Tensor:
    """The shading model of ``meshrec.render.base`` per pixel; all inputs (..., 3)."""
    view = torch.nn.functional.normalize(-positions, dim=-1)
    facing_away = (face_normals * view).sum(-1, keepdim=True) < 0
    face_normals = torch.where(facing_away, -face_normals, face_normals)
    normals = torch.nn.functional.normalize(normals, dim=-1)
    normals = torch.where((normals * face_normals).sum(-1, keepdim=True) < 0, -normals, normals)
    light = torch.as_tensor(shading.unit_light_dir, dtype=positions.dtype, device=positions.device)
    lambert = (normals * light).sum(-1, keepdim=True).clamp(min=0.0)
    half = torch.nn.functional.normalize(light + view, dim=-1)
    highlight = (normals * half).sum(-1, keepdim=True).clamp(min=0.0).pow(shading.shininess)
    highlight = torch.where(lambert > 0, highlight, torch.zeros_like(highlight))
    diffuse = shading.ambient + (1.0 - shading.ambient) * lambert
    colour = albedo * diffuse + shading.specular * highlight
    return colour.clamp(0.0, 1.0)


class Pytorch3DRenderer:
    """Render batches of meshes with pytorch3d's rasterizer; same interface as ``GLRenderer``.

    Runs on the device of the vertices. Not differentiable through ``render`` (it returns
    numpy); use ``soft_silhouette`` for gradients.
    """

    name = "pytorch3d"

    def render(
        self,
        vertices,
        faces,
        K,
        image_size: int | Sequence[int],
        *,
        colors=None,
        light_dir: Sequence[float] = DEFAULT_LIGHT_DIR,
        ambient: float = DEFAULT_AMBIENT,
        specular: float = DEFAULT_SPECULAR,
        shininess: float = DEFAULT_SHININESS,
        background: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> RenderOutput:
        """Same arguments and output as ``meshrec.render.gl.GLRenderer.render``."""
        from pytorch3d.ops import interpolate_face_attributes

        shading = Shading(
            tuple(light_dir), float(ambient), float(specular), float(shininess), tuple(background)
        )
        inputs = prepare_render_inputs(vertices, faces, K, image_size, colors)
        height, width = inputs.height, inputs.width
        with torch.no_grad():
            vertices_f = inputs.vertices.detach().float()
            batch, num_vertices = vertices_f.shape[:2]
            fragments = _rasterize(
                vertices_f, inputs.faces, inputs.K.detach(), height, width,
                blur_radius=0.0, faces_per_pixel=1, perspective_correct=True,
            )
            face_index = fragments.pix_to_face[..., 0]  # (B, H, W) packed face index, -1 = empty
            covered = face_index >= 0
            # Faces of the packed batch: mesh b's vertices are rows [b V, (b + 1) V).
            mesh_offsets = torch.arange(batch, device=vertices_f.device)[:, None, None] * num_vertices
            packed_faces = (inputs.faces[None] + mesh_offsets).reshape(-1, 3)
            # Per-vertex attributes stacked so one interpolation serves all of them.
            normals = vertex_normals(vertices_f, inputs.faces)
            attributes = torch.cat([vertices_f, normals, inputs.colors.float()], dim=-1).reshape(-1, 9)
            per_pixel = interpolate_face_attributes(
                fragments.pix_to_face, fragments.bary_coords, attributes[packed_faces]
            )[..., 0, :]  # (B, H, W, 9)
            packed_face_normals = face_normals(vertices_f, inputs.faces, unit=False).reshape(-1, 3)  # (B F, 3)
            colour = _shade(
                positions=per_pixel[..., 0:3],
                normals=per_pixel[..., 3:6],
                face_normals=packed_face_normals[face_index.clamp(min=0)],
                albedo=per_pixel[..., 6:9],
                shading=shading,
            )
            background_rgb = torch.tensor(shading.background, dtype=colour.dtype, device=colour.device)
            colour = torch.where(covered[..., None], colour, background_rgb)
            depth = torch.where(covered, fragments.zbuf[..., 0], torch.zeros_like(fragments.zbuf[..., 0]))
        rgb = torch.round(colour * 255.0).to(torch.uint8)
        return RenderOutput(
            rgb=rgb.cpu().numpy(),
            mask=covered.cpu().numpy(),
            depth=depth.cpu().numpy().astype(np.float32),
        )


def soft_silhouette(
    vertices: torch.Tensor,
    faces: torch.Tensor,
    K: torch.Tensor,
    image_size: int | Sequence[int],
    sigma_px: float = 1.0,
    faces_per_pixel: int = 8,
) -> torch.Tensor:
    """Differentiable soft coverage mask of each mesh (Soft Rasterizer's silhouette).

    Each of the ``faces_per_pixel`` nearest faces at a pixel covers it with probability
    ``sigmoid(-d |d| / sigma)`` where d is the signed distance from the pixel centre to
    the projected triangle (negative inside) and ``sigma = sigma_px**2`` in pixel units;
    the pixel's value is ``1 - prod(1 - probability)``. So a pixel centre ``sigma_px``
    pixels outside an edge gets about 0.27, one on the edge 0.5, deep inside ~1.

    Args:
        vertices: ``(B, V, 3)`` OpenCV camera frame, metres, torch (float32 or float64;
            rasterized in float32). Gradients flow to it.
        faces: ``(F, 3)`` int vertex indices, shared by the batch.
        K: ``(B, 3, 3)`` or ``(3, 3)``, meshrec pixels. Gradients flow to it too.
        image_size: ``H`` or ``(H, W)``.
        sigma_px: edge softness in pixels, > 0.
        faces_per_pixel: faces blended per pixel (more: smoother but slower).

    Returns:
        ``(B, H, W)`` in [0, 1], dtype of ``vertices``; ``out[b, v, u]`` is the coverage of
        pixel row v, column u by mesh b.
    """
    if not isinstance(vertices, torch.Tensor):
        raise TypeError(f"vertices must be a torch.Tensor, got {type(vertices).__name__}")
    if not sigma_px > 0.0:
        raise MeshrecError(f"sigma_px must be > 0, got {sigma_px}")
    if type(faces_per_pixel) is not int or faces_per_pixel < 1:
        raise MeshrecError(f"faces_per_pixel must be a positive int, got {faces_per_pixel!r}")
    if vertices.ndim != 3:
        raise MeshrecError(f"vertices must have shape (B, V, 3), got {tuple(vertices.shape)}")
    inputs = prepare_render_inputs(vertices, faces, K, image_size)
    height, width = inputs.height, inputs.width
    # pytorch3d measures squared distances in NDC, where the shorter image side spans 2.
    ndc_per_pixel = 2.0 / min(height, width)
    sigma = (sigma_px * ndc_per_pixel) ** 2
    blur_radius = math.log(1.0 / _SOFT_PROBABILITY_FLOOR - 1.0) * sigma
    fragments = _rasterize(
        inputs.vertices, inputs.faces, inputs.K, height, width,
        blur_radius=blur_radius, faces_per_pixel=faces_per_pixel, perspective_correct=False,
    )
    probability = torch.sigmoid(-fragments.dists / sigma) * (fragments.pix_to_face >= 0)
    coverage = 1.0 - torch.prod(1.0 - probability, dim=-1)
    return coverage.to(vertices.dtype)
