"""Face and vertex normals of triangle meshes: the one implementation every part of meshrec uses
(losses, both renderers, the synthetic data, the notebook drawings).

Faces are wound counter-clockwise seen from outside, so normals point out of the hand. Leading
batch dimensions are free: ``(..., V, 3)`` vertices give ``(..., F, 3)`` face normals and
``(..., V, 3)`` vertex normals. numpy arrays go in and come out as numpy arrays (of the same
dtype); tensors keep their device and dtype and are differentiable.
"""

from __future__ import annotations

import numpy as np
import torch

from meshrec.errors import MeshrecError
from meshrec.geometry.gather import gather_vertex_rows

__all__ = ["NORMAL_EPS", "face_normals", "vertex_normals"]

NORMAL_EPS = 1e-8
"""Normals are divided by ``max(length, NORMAL_EPS)``: unit length whenever the raw length (twice
a face's area, in squared metres; about 0.1 mm edges) exceeds it, shorter below, and the zero
vector for a degenerate face or a vertex no face uses; gradients stay bounded, never NaN."""


def _as_tensors(vertices, faces) -> tuple[torch.Tensor, torch.Tensor, bool]:
    as_numpy = isinstance(vertices, np.ndarray)
    vertices_t = torch.from_numpy(np.ascontiguousarray(vertices)) if as_numpy else vertices
    faces_t = torch.as_tensor(np.asarray(faces) if isinstance(faces, np.ndarray) else faces, device=vertices_t.device)
    if vertices_t.ndim < 2 or vertices_t.shape[-1] != 3:
        raise MeshrecError(f"vertices must have shape (..., V, 3), got {tuple(vertices_t.shape)}")
    if faces_t.ndim != 2 or faces_t.shape[-1] != 3 or faces_t.dtype.is_floating_point:
        raise MeshrecError(f"faces must be integer indices of shape (F, 3), got {tuple(faces_t.shape)} {faces_t.dtype}")
    return vertices_t, faces_t.long(), as_numpy


def _area_weighted_face_normals(vertices: torch.Tensor, faces: torch.Tensor) -> torch.Tensor:
    """``(..., F, 3)`` ``(v1 - v0) x (v2 - v0)``: outward, of length twice the face's area."""
    first, second, third = gather_vertex_rows(vertices, faces).unbind(1)  # (F, ..., 3) each
    normals = torch.linalg.cross(second - first, third - first, dim=-1)
    return normals.movedim(0, -2)  # (..., F, 3)


def _unit(vectors: torch.Tensor) -> torch.Tensor:
    return vectors / torch.linalg.vector_norm(vectors, dim=-1, keepdim=True).clamp(min=NORMAL_EPS)


def face_normals(vertices, faces, *, unit: bool = True):
    """Normals of every face.

    Args:
        vertices: ``(..., V, 3)`` positions (tensor or numpy array).
        faces: ``(F, 3)`` vertex indices, counter-clockwise seen from outside.
        unit: True: unit length (see :data:`NORMAL_EPS`). False: the raw cross
            product, whose length is twice the face's area.

    Returns:
        ``(..., F, 3)``, same kind, device and dtype as ``vertices``.
    """
    vertices_t, faces_t, as_numpy = _as_tensors(vertices, faces)
    normals = _area_weighted_face_normals(vertices_t, faces_t)
    normals = _unit(normals) if unit else normals
    return normals.numpy() if as_numpy else normals


def vertex_normals(vertices, faces):
    """Unit vertex normals: the area-weighted mean of the normals of the faces around each vertex.

    Args:
        vertices: ``(..., V, 3)`` positions (tensor or numpy array).
        faces: ``(F, 3)`` vertex indices, counter-clockwise seen from outside.

    Returns:
        ``(..., V, 3)`` unit normals (see :data:`NORMAL_EPS`), same kind, device and dtype as
        ``vertices``; a vertex that no face uses (nothing is ever drawn with it) gets the zero vector.
    """
    vertices_t, faces_t, as_numpy = _as_tensors(vertices, faces)
    weighted = _area_weighted_face_normals(vertices_t, faces_t)  # (..., F, 3)
    batch_shape, num_faces, num_vertices = weighted.shape[:-2], weighted.shape[-2], vertices_t.shape[-2]
    # vertex-major: each face's row (every mesh's normal) is added to its three corners' rows
    # in one scatter of contiguous rows, several times faster than scattering along dim -2
    rows = weighted.reshape(-1, num_faces, 3).transpose(0, 1).reshape(num_faces, -1)  # (F, N*3)
    summed = rows.new_zeros(num_vertices, rows.shape[1]).index_add(0, faces_t.T.reshape(-1), rows.repeat(3, 1))
    summed = summed.reshape(num_vertices, -1, 3).transpose(0, 1).reshape(*batch_shape, num_vertices, 3)
    normals = _unit(summed)
    return normals.numpy() if as_numpy else normals
