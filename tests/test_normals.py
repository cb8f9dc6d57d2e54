"""Face and vertex normals: the one implementation (meshrec.geometry.normals), against a slow reference."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from meshrec.errors import MeshrecError
from meshrec.geometry.normals import face_normals, vertex_normals

# a unit tetrahedron, wound counter-clockwise from outside
TETRA_VERTICES = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
TETRA_FACES = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


def slow_vertex_normals(vertices: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """One vertex at a time: the sum of its faces' cross products, normalised."""
    normals = np.zeros_like(vertices)
    for index in range(len(vertices)):
        total = np.zeros(3)
        for face in faces:
            if index in face:
                a, b, c = vertices[face]
                total += np.cross(b - a, c - a)
        length = np.linalg.norm(total)
        normals[index] = total / length if length > 0 else total
    return normals


def icosphere(subdivisions: int = 2):
    import trimesh

    sphere = trimesh.creation.icosphere(subdivisions=subdivisions, radius=0.05)  # hand-sized, metres
    return np.asarray(sphere.vertices), np.asarray(sphere.faces)


def test_tetrahedron_face_normals_point_out_with_twice_the_area():
    raw = face_normals(TETRA_VERTICES, TETRA_FACES, unit=False)
    np.testing.assert_allclose(raw[:3], [[0, 0, -1], [0, -1, 0], [-1, 0, 0]], atol=1e-12)
    np.testing.assert_allclose(np.linalg.norm(raw[3]) / 2, np.sqrt(3) / 2)  # the slanted face's area
    unit = face_normals(TETRA_VERTICES, TETRA_FACES)
    np.testing.assert_allclose(unit[3], np.ones(3) / np.sqrt(3))
    centre = TETRA_VERTICES.mean(0)
    assert (np.einsum("fi,fi->f", unit, TETRA_VERTICES[TETRA_FACES].mean(1) - centre) > 0).all()


def test_vertex_normals_match_the_slow_reference_and_the_sphere():
    vertices, faces = icosphere()
    ours = vertex_normals(vertices, faces)
    np.testing.assert_allclose(ours, slow_vertex_normals(vertices, faces), atol=1e-12)
    radial = vertices / np.linalg.norm(vertices, axis=1, keepdims=True)
    assert np.einsum("vi,vi->v", ours, radial).min() > 0.99


def test_batches_numpy_and_tensors_keep_their_kind_and_dtype():
    vertices, faces = icosphere(1)
    batch = np.stack([vertices, 2 * vertices + 1, -vertices[:, [1, 0, 2]]]).astype(np.float32)  # (3, V, 3)
    together = vertex_normals(batch[None], faces)  # (1, 3, V, 3)
    assert together.shape == (1, *batch.shape) and together.dtype == np.float32
    for index in range(3):
        np.testing.assert_allclose(together[0, index], vertex_normals(batch[index], faces), atol=1e-6)
    tensor = vertex_normals(torch.from_numpy(batch), torch.from_numpy(faces))
    assert isinstance(tensor, torch.Tensor) and tensor.dtype == torch.float32
    np.testing.assert_allclose(tensor.numpy(), together[0], atol=1e-6)
    assert face_normals(torch.from_numpy(batch).double(), faces).shape == (3, len(faces), 3)


def test_unused_vertices_and_degenerate_faces_give_zero_never_nan():
    vertices = np.vstack([TETRA_VERTICES, [[5.0, 5.0, 5.0]]])  # vertex 4: in no face
    faces = np.vstack([TETRA_FACES, [[0, 1, 1]]])  # a degenerate face
    normals = vertex_normals(vertices, faces)
    assert np.isfinite(normals).all() and (normals[4] == 0).all()
    np.testing.assert_allclose(np.linalg.norm(normals[:4], axis=1), 1.0)
    assert (face_normals(vertices, faces)[4] == 0).all()


def test_gradients_are_exact_in_float64():
    vertices, faces = icosphere(0)
    points = torch.from_numpy(vertices).requires_grad_(True)
    faces_t = torch.from_numpy(faces)
    assert torch.autograd.gradcheck(lambda v: vertex_normals(v, faces_t), (points,))
    assert torch.autograd.gradcheck(lambda v: face_normals(v, faces_t), (points,))


@pytest.mark.parametrize(
    "vertices, faces, message",
    [
        (np.zeros((4, 2)), TETRA_FACES, r"vertices must have shape \(\.\.\., V, 3\)"),
        (TETRA_VERTICES, TETRA_FACES[:, :2], r"faces must be integer indices of shape \(F, 3\)"),
        (TETRA_VERTICES, TETRA_FACES.astype(float), "faces must be integer"),
    ],
)
def test_bad_shapes_say_what_was_expected(vertices, faces, message):
    with pytest.raises(MeshrecError, match=message):
        vertex_normals(vertices, faces)
