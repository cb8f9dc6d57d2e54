"""Camera projection and the rendering backends (OpenGL via moderngl/EGL, pytorch3d).

Backend tests skip with the reason when moderngl/EGL or pytorch3d is missing.
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

from meshrec.geometry.camera import default_intrinsics, project_points
from meshrec.render import RendererUnavailableError, get_renderer, gl_available
from meshrec.render.cameras import opencv_to_gl_projection

try:
    import pytorch3d.renderer  # noqa: F401

    HAVE_PYTORCH3D = True
except ImportError:
    HAVE_PYTORCH3D = False

needs_gl = pytest.mark.skipif(
    not gl_available(),
    reason="OpenGL backend unavailable: pip install moderngl; apt-get install libegl1 libegl-mesa0 libgl1-mesa-dri",
)
needs_pytorch3d = pytest.mark.skipif(not HAVE_PYTORCH3D, reason="pytorch3d not installed (pip install easypytorch3d)")

BACKENDS = [
    pytest.param("gl", marks=needs_gl),
    pytest.param("pytorch3d", marks=needs_pytorch3d),
]

# Off-centre, non-square intrinsics for a 48 x 64 (H x W) image.
HEIGHT, WIDTH = 48, 64
K_OFF_CENTRE = torch.tensor([[150.0, 0.0, 35.3], [0.0, 160.0, 21.6], [0.0, 0.0, 1.0]])


def hand_sized_capsule() -> tuple[torch.Tensor, torch.Tensor]:
    """A closed capsule about 10 cm long, tilted, centred near (0.01, 0, 0.4) m."""
    import trimesh

    capsule = trimesh.creation.capsule(height=0.07, radius=0.015, count=[24, 24])
    capsule.apply_transform(trimesh.transformations.rotation_matrix(np.pi / 2.5, [1.0, 0.3, 0.0]))
    capsule.apply_translation([0.01, 0.0, 0.4])
    return torch.tensor(capsule.vertices, dtype=torch.float32), torch.tensor(capsule.faces)


def square_covering_pixels(z: float, K: torch.Tensor, first: int, last: int) -> torch.Tensor:
    """A fronto-parallel square at depth z whose edges project exactly halfway between pixel
    centres, around pixels [first, last] in both u and v (so coverage is unambiguous)."""
    fx, fy, cx, cy = K[0, 0], K[1, 1], K[0, 2], K[1, 2]
    low, high = first - 0.5, last + 0.5
    corners_uv = torch.tensor([[low, low], [high, low], [high, high], [low, high]])
    x = (corners_uv[:, 0] - cx) / fx * z
    y = (corners_uv[:, 1] - cy) / fy * z
    return torch.stack([x, y, torch.full_like(x, z)], dim=-1)


SQUARE_FACES = torch.tensor([[0, 1, 2], [0, 2, 3]])


# ---------------------------------------------------------------------------- camera


def test_project_points_known_values_and_dtype():
    K = torch.tensor([[100.0, 0, 32], [0, 100.0, 24], [0, 0, 1]], dtype=torch.float64)
    points = torch.tensor([[[0.1, -0.2, 2.0], [0.0, 0.0, 1.0]]], dtype=torch.float64)
    uv = project_points(points, K[None])
    assert uv.dtype == torch.float64 and uv.shape == (1, 2, 2)
    torch.testing.assert_close(uv, torch.tensor([[[37.0, 14.0], [32.0, 24.0]]], dtype=torch.float64))
    # A shared (3, 3) K and extra leading dims broadcast.
    torch.testing.assert_close(project_points(points[None], K), uv[None])


def test_project_points_behind_camera_is_finite_with_finite_gradients():
    points = torch.tensor([[[0.1, 0.1, 0.0], [0.1, 0.1, -1.0]]], requires_grad=True)
    uv = project_points(points, default_intrinsics(64, batch=1))
    uv.sum().backward()
    assert torch.isfinite(uv).all() and torch.isfinite(points.grad).all()


@pytest.mark.parametrize(
    "points, K, match",
    [
        (torch.zeros(2, 5, 2), torch.eye(3).expand(2, 3, 3), r"points must have shape \(B, N, 3\)"),
        (torch.zeros(2, 5, 3), torch.eye(3).expand(3, 3, 3), r"K batch dims \(3,\) do not match"),
        (torch.zeros(2, 5, 3), torch.eye(4), r"K must have shape"),
        (torch.zeros(2, 5, 3, dtype=torch.int64), torch.eye(3), r"floating point"),
    ],
)
def test_project_points_rejects_bad_input(points, K, match):
    with pytest.raises((ValueError, TypeError), match=match):
        project_points(points, K)


def test_gl_projection_matrix_puts_vertices_at_pixel_centres():
    """Pure numpy: window coordinates of a projected point are meshrec pixel + 0.5."""
    points = torch.tensor([[[0.03, -0.02, 0.4], [-0.01, 0.015, 0.5]]])
    uv = project_points(points, K_OFF_CENTRE[None])[0].numpy()
    projection = opencv_to_gl_projection(K_OFF_CENTRE[None].numpy(), (HEIGHT, WIDTH), 0.01, 10.0)[0]
    clip = np.c_[points[0].numpy(), np.ones(2)] @ projection.T
    ndc = clip[:, :3] / clip[:, 3:]
    window = (ndc[:, :2] + 1.0) / 2.0 * np.array([WIDTH, HEIGHT])
    np.testing.assert_allclose(window, uv + 0.5, atol=1e-4)
    assert np.all(np.abs(ndc[:, 2]) < 1.0)


# ---------------------------------------------------------------------------- backends


def test_importing_meshrec_imports_no_renderer():
    code = (
        "import sys, meshrec, meshrec.render, meshrec.geometry.camera, meshrec.render.cameras;"
        "bad = [m for m in ('moderngl', 'pytorch3d') if m in sys.modules];"
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr + result.stdout


@pytest.mark.parametrize("backend", BACKENDS)
def test_square_covers_exactly_its_pixels_at_its_depth(backend):
    """Pixel centres at integers: edges halfway between centres cover exactly rows/cols 10..19."""
    z = 0.45
    vertices = square_covering_pixels(z, K_OFF_CENTRE, 10, 19)
    out = get_renderer(backend).render(vertices[None], SQUARE_FACES, K_OFF_CENTRE, (HEIGHT, WIDTH))
    expected = np.zeros((HEIGHT, WIDTH), dtype=bool)
    expected[10:20, 10:20] = True
    np.testing.assert_array_equal(out.mask[0], expected)
    np.testing.assert_allclose(out.depth[0][expected], z, rtol=1e-5)
    assert np.all(out.depth[0][~expected] == 0.0)
    assert out.rgb.dtype == np.uint8 and out.rgb.shape == (1, HEIGHT, WIDTH, 3)
    assert out.rgb[0][expected].min() > 0 and out.rgb[0][~expected].max() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_triangle_mask_centroid_matches_projected_centroid(backend):
    z = 0.3
    triangle = torch.tensor([[[-0.01, -0.008, z], [0.012, -0.004, z], [0.002, 0.011, z]]])
    out = get_renderer(backend).render(triangle, torch.tensor([[0, 1, 2]]), K_OFF_CENTRE, (HEIGHT, WIDTH))
    rows, cols = np.nonzero(out.mask[0])
    projected = project_points(triangle, K_OFF_CENTRE[None])[0]
    # Fronto-parallel: projection is affine, so the area centroid is the corners' mean.
    centroid = projected.mean(0).numpy()
    assert abs(cols.mean() - centroid[0]) < 0.5 and abs(rows.mean() - centroid[1]) < 0.5
    nearest = np.round(centroid).astype(int)
    assert out.mask[0][nearest[1], nearest[0]]
    assert abs(out.depth[0][nearest[1], nearest[0]] - z) < 1e-5


@needs_gl
@needs_pytorch3d
def test_backends_agree_on_a_hand_sized_mesh():
    vertices, faces = hand_sized_capsule()
    gl_out = get_renderer("gl").render(vertices, faces, K_OFF_CENTRE, (HEIGHT, WIDTH))
    p3d_out = get_renderer("pytorch3d").render(vertices, faces, K_OFF_CENTRE, (HEIGHT, WIDTH))
    both = gl_out.mask & p3d_out.mask
    iou = both.sum() / (gl_out.mask | p3d_out.mask).sum()
    assert gl_out.mask.sum() > 200, "the mesh should fill a good part of the image"
    assert iou >= 0.98, f"IoU {iou:.4f}"
    np.testing.assert_allclose(gl_out.depth[both], p3d_out.depth[both], atol=2e-4)
    colour_difference = np.abs(gl_out.rgb[both].astype(int) - p3d_out.rgb[both].astype(int))
    assert colour_difference.mean() < 2.0, colour_difference.mean()


@needs_gl
def test_gl_batch_tiles_match_single_renders_and_per_vertex_colours():
    vertices, faces = hand_sized_capsule()
    shifts = torch.tensor([[0.0, 0.0, 0.0], [0.02, 0.01, 0.05], [-0.02, -0.01, -0.05]])
    batch = vertices[None] + shifts[:, None]
    colors = torch.rand(3, vertices.shape[0], 3, generator=torch.Generator().manual_seed(0))
    K = K_OFF_CENTRE.expand(3, 3, 3)
    renderer = get_renderer("gl")
    together = renderer.render(batch, faces, K, (HEIGHT, WIDTH), colors=colors)
    for index in range(3):
        alone = renderer.render(batch[index], faces, K_OFF_CENTRE, (HEIGHT, WIDTH), colors=colors[index])
        np.testing.assert_array_equal(together.rgb[index], alone.rgb[0])
        np.testing.assert_array_equal(together.mask[index], alone.mask[0])
        np.testing.assert_allclose(together.depth[index], alone.depth[0], atol=1e-5)  # tile offset rounding
    # More meshes than one tile sheet holds (64), with a background colour.
    many = renderer.render(vertices[None].expand(70, -1, -1), faces, default_intrinsics((12, 16)), (12, 16),
                           background=(0.0, 0.0, 1.0))
    assert many.rgb.shape == (70, 12, 16, 3)
    np.testing.assert_array_equal(many.rgb[69], many.rgb[0])
    assert many.mask[0].any() and (many.rgb[0][~many.mask[0]] == [0, 0, 255]).all()


def _render_in_worker(index: int) -> np.ndarray:
    vertices = square_covering_pixels(0.45, K_OFF_CENTRE, 10, 19)
    return get_renderer("gl").render(vertices[None], SQUARE_FACES, K_OFF_CENTRE, (HEIGHT, WIDTH)).mask[0]


@needs_gl
def test_gl_renders_in_a_forked_dataloader_worker():
    _render_in_worker(0)  # the parent holds a context before the fork
    loader = torch.utils.data.DataLoader(
        _MaskDataset(), batch_size=None, num_workers=1, multiprocessing_context="fork"
    )
    masks = list(loader)
    assert len(masks) == 2 and all(mask.sum() == 100 for mask in masks)


class _MaskDataset(torch.utils.data.Dataset):
    def __len__(self) -> int:
        return 2

    def __getitem__(self, index: int) -> np.ndarray:
        return _render_in_worker(index)


def test_gl_missing_egl_names_the_packages(monkeypatch):
    moderngl = pytest.importorskip("moderngl", reason="moderngl not installed")
    from meshrec.render import gl

    def no_egl(*args, **kwargs):
        raise Exception("libEGL.so: cannot open shared object file")

    monkeypatch.setattr(gl, "_context", None)
    monkeypatch.setattr(moderngl, "create_standalone_context", no_egl)
    with pytest.raises(RendererUnavailableError, match="libegl1 libegl-mesa0 libgl1-mesa-dri"):
        gl.process_context()
    monkeypatch.undo()


@pytest.mark.parametrize("backend", BACKENDS)
def test_render_rejects_bad_input(backend):
    renderer = get_renderer(backend)
    vertices = square_covering_pixels(0.45, K_OFF_CENTRE, 10, 19)[None]
    with pytest.raises(ValueError, match=r"vertices must have shape \(B, V, 3\)"):
        renderer.render(vertices[..., :2], SQUARE_FACES, K_OFF_CENTRE, 32)
    with pytest.raises(ValueError, match=r"faces index vertices in \[0, 4\] but there are V = 4"):
        renderer.render(vertices, torch.tensor([[0, 1, 4]]), K_OFF_CENTRE, 32)
    with pytest.raises(TypeError, match="faces must be an integer array"):
        renderer.render(vertices, SQUARE_FACES.float(), K_OFF_CENTRE, 32)
    with pytest.raises(ValueError, match=r"K must have shape \(1, 3, 3\) or \(3, 3\), got \(2, 3, 3\)"):
        renderer.render(vertices, SQUARE_FACES, K_OFF_CENTRE.expand(2, 3, 3), 32)
    with pytest.raises(ValueError, match=r"colors must have shape"):
        renderer.render(vertices, SQUARE_FACES, K_OFF_CENTRE, 32, colors=torch.ones(5, 3))
    with pytest.raises(ValueError, match="ambient"):
        renderer.render(vertices, SQUARE_FACES, K_OFF_CENTRE, 32, ambient=2.0)


def test_get_renderer_rejects_unknown_backend():
    with pytest.raises(ValueError, match="unknown render backend 'vulkan'"):
        get_renderer("vulkan")


# ---------------------------------------------------------------------------- soft silhouette


@needs_pytorch3d
def test_soft_silhouette_is_differentiable_and_matches_the_hard_mask():
    from meshrec.render import soft_silhouette

    vertices = square_covering_pixels(0.45, K_OFF_CENTRE, 10, 19)[None].double().requires_grad_(True)
    K = K_OFF_CENTRE[None].double().requires_grad_(True)
    silhouette = soft_silhouette(vertices, SQUARE_FACES, K, (HEIGHT, WIDTH), sigma_px=0.5)
    assert silhouette.shape == (1, HEIGHT, WIDTH) and silhouette.dtype == torch.float64
    assert silhouette.min() >= 0.0 and silhouette.max() <= 1.0
    expected = torch.zeros(HEIGHT, WIDTH, dtype=torch.bool)
    expected[10:20, 10:20] = True
    assert torch.equal(silhouette[0] > 0.5, expected)
    # Pushing the square's right edge outwards grows the silhouette: the gradient says so.
    target = torch.zeros(HEIGHT, WIDTH, dtype=torch.float64)
    target[10:20, 10:21] = 1.0
    loss = ((silhouette[0] - target) ** 2).sum()
    loss.backward()
    assert torch.isfinite(vertices.grad).all() and vertices.grad.abs().sum() > 0
    assert K.grad is not None and torch.isfinite(K.grad).all()
    right_corners = [1, 2]
    assert (vertices.grad[0, right_corners, 0] < 0).all(), vertices.grad[0, :, 0]


@needs_pytorch3d
def test_soft_silhouette_rejects_bad_input():
    from meshrec.render import soft_silhouette

    vertices = square_covering_pixels(0.45, K_OFF_CENTRE, 10, 19)[None]
    with pytest.raises(ValueError, match="sigma_px"):
        soft_silhouette(vertices, SQUARE_FACES, K_OFF_CENTRE, 32, sigma_px=0.0)
    with pytest.raises(TypeError, match="torch.Tensor"):
        soft_silhouette(vertices.numpy(), SQUARE_FACES, K_OFF_CENTRE, 32)
