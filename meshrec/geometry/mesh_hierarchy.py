"""A coarse-to-fine hierarchy of meshes built from the hand model's own triangles.

Why: the reconstruction model refines the hand mesh coarse to fine. At each level it
projects that level's vertices into the image, samples the feature-pyramid level whose
resolution matches the level's vertex density (pixel-aligned retrieval), runs graph
convolutions over the level's vertex neighbourhoods, and up-samples the result to the next
finer level. This module builds, once per hand model, everything that needs the mesh:

- ``vertices[l]``, ``faces[l]``: level 0 is the model's full mesh; level ``l + 1`` is a
  quadric decimation of level ``l`` to about ``V_l / factors[l]`` vertices.
- ``down[l]`` / ``up[l]``: sparse barycentric maps between levels ``l`` and ``l + 1``
  (3 weights per output point: the triangle containing the closest surface point).
- ``spirals[l]``: SpiralNet++ style fixed-size ordered neighbourhoods for graph convolution.

It works for any triangle topology (the project's open hand, official MANO, or random test
meshes whose coarse levels are non-manifold). Everything is numpy; the model converts to
torch itself, except :meth:`SparseMap.apply`, a convenience for tests and small callers.
Building takes milliseconds to a second, and :func:`load_or_build_hierarchy` caches the
result in an ``.npz`` file keyed by a hash of the inputs, the parameters and the format.
"""

from __future__ import annotations

import hashlib
import logging
import math
import os
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse
import torch
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

from meshrec.errors import MeshrecError

__all__ = [
    "FORMAT_VERSION",
    "MIN_LEVEL_VERTICES",
    "MeshHierarchy",
    "MeshHierarchyCacheWarning",
    "SparseMap",
    "build_mesh_hierarchy",
    "hierarchy_cache_dir",
    "load_or_build_hierarchy",
]

_log = logging.getLogger(__name__)

# Bump when the build algorithm or the file layout changes: it is part of the content hash,
# so files written by older code are never read as current ones.
FORMAT_VERSION = 1

# The coarsest level must still be a surface (a tetrahedron has 4 vertices).
MIN_LEVEL_VERTICES = 4

# fast-simplification's aggressiveness (its default): higher is faster but less faithful.
_DECIMATION_AGGRESSIVENESS = 7.0

# Gram determinants below this fraction of |e0|^2 |e1|^2 mark a triangle as degenerate
# (collinear or coincident corners): its closest point is then searched on its edges only.
_DEGENERATE_TRIANGLE_RTOL = 1e-12

# Closest-point search works on blocks of (queries x faces) pairs of about this size.
_PAIR_BLOCK = 1 << 21


class MeshHierarchyCacheWarning(UserWarning):
    """The hierarchy cache could not be written; the hierarchy built in memory is used."""


@dataclass(frozen=True, eq=False)
class SparseMap:
    """A sparse linear map from ``N_in`` to ``N_out`` points, ``k`` non-zeros per output row.

    ``y[n] = sum_i weights[n, i] * x[indices[n, i]]``. Stored as gather indices + weights
    because a gather is faster than ``torch.sparse`` on CPU and works with autograd and
    gradcheck. Rows sum to 1 (barycentric weights), so constants and positions are preserved.

    Attributes:
        indices: ``(N_out, k)`` int64, values in ``[0, num_inputs)``; ``indices[n, i]`` is the
            ``i``-th input point output point ``n`` reads.
        weights: ``(N_out, k)`` float64, non-negative, each row sums to 1.
        num_inputs: ``N_in``.

    Arrays are made read-only; equality is identity (``eq=False``: arrays have no ``==``).
    """

    indices: np.ndarray
    weights: np.ndarray
    num_inputs: int

    def __post_init__(self) -> None:
        indices = np.asarray(self.indices)
        weights = np.asarray(self.weights)
        if indices.ndim != 2 or weights.shape != indices.shape:
            raise MeshrecError(
                f"SparseMap expects indices and weights of the same shape (N_out, k), "
                f"got indices {indices.shape} and weights {weights.shape}"
            )
        if not np.issubdtype(indices.dtype, np.integer):
            raise MeshrecError(f"SparseMap indices must be integers, got dtype {indices.dtype}")
        num_inputs = int(self.num_inputs)
        if indices.size and (indices.min() < 0 or indices.max() >= num_inputs):
            raise MeshrecError(
                f"SparseMap indices must lie in [0, {num_inputs}), got [{indices.min()}, {indices.max()}]"
            )
        weights = weights.astype(np.float64, copy=False)
        if not np.all(np.isfinite(weights)) or (weights < 0).any():
            raise MeshrecError("SparseMap weights must be finite and non-negative")
        if indices.size and not np.allclose(weights.sum(1), 1.0, rtol=0, atol=1e-9):
            worst = np.abs(weights.sum(1) - 1.0).max()
            raise MeshrecError(f"SparseMap weight rows must sum to 1, worst row is off by {worst:.3g}")
        object.__setattr__(self, "indices", _read_only(indices.astype(np.int64, copy=False)))
        object.__setattr__(self, "weights", _read_only(weights))
        object.__setattr__(self, "num_inputs", num_inputs)

    @property
    def num_outputs(self) -> int:
        """``N_out``, the number of output points."""
        return self.indices.shape[0]

    def as_scipy(self) -> scipy.sparse.csr_matrix:
        """The map as a ``(N_out, N_in)`` CSR matrix (repeated indices in a row are summed)."""
        num_outputs, k = self.indices.shape
        rows = np.repeat(np.arange(num_outputs), k)
        return scipy.sparse.csr_matrix(
            (self.weights.ravel(), (rows, self.indices.ravel())), shape=(num_outputs, self.num_inputs)
        )

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        """Map point features ``x`` ``(..., N_in, C)`` to ``(..., N_out, C)``.

        Typically ``(B, N_in, C)`` -> ``(B, N_out, C)``. Indices and weights are moved to
        ``x``'s device and weights to its dtype; differentiable with respect to ``x``.

        >>> m = SparseMap(np.array([[0, 1, 1]]), np.array([[0.5, 0.25, 0.25]]), num_inputs=2)
        >>> m.apply(torch.tensor([[[2.0], [4.0]]])).tolist()
        [[[3.0]]]
        """
        if x.ndim < 2 or x.shape[-2] != self.num_inputs:
            raise MeshrecError(
                f"SparseMap.apply expects x of shape (..., {self.num_inputs}, C), got {tuple(x.shape)}"
            )
        # torch.tensor copies: the stored arrays are read-only and torch warns on sharing those.
        indices = torch.tensor(self.indices, device=x.device)
        weights = torch.tensor(self.weights, dtype=x.dtype, device=x.device)
        return apply_sparse_map(x, indices, weights)


def apply_sparse_map(x: torch.Tensor, indices: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """``y[..., n, :] = sum_i weights[n, i] * x[..., indices[n, i], :]`` (see :class:`SparseMap`).

    The torch core of :meth:`SparseMap.apply`, for modules that keep ``indices`` ``(N_out, k)``
    and ``weights`` ``(N_out, k)`` as buffers on their device. ``x``: ``(..., N_in, C)`` ->
    ``(..., N_out, C)``.

    One ``embedding_bag`` (a weighted sum of rows) over the vertex-major rows of ``x``: on a CPU
    2-6x faster than gathering, multiplying and summing, and in backward at batch 32 as fast or
    up to 3x faster (docs/benchmarks.md).
    """
    num_inputs = x.shape[-2]
    rows = x.movedim(-2, 0).reshape(num_inputs, math.prod(x.shape[:-2]) * x.shape[-1])  # (N_in, ... * C)
    mapped = torch.nn.functional.embedding_bag(indices, rows, per_sample_weights=weights.to(x.dtype), mode="sum")
    return mapped.view(indices.shape[0], *x.shape[:-2], x.shape[-1]).movedim(0, -2)


@dataclass(frozen=True, eq=False)
class MeshHierarchy:
    """Meshes from fine (level 0, the hand model's mesh) to coarse, with maps between levels.

    Attributes:
        vertices: ``vertices[l]`` is ``(V_l, 3)`` float64; level 0 is the full input mesh
            (unchanged, even its unreferenced vertices); ``V_{l+1} ≈ V_l / factors[l]``.
        faces: ``faces[l]`` is ``(F_l, 3)`` int64 into ``vertices[l]``. Level 0 is the input's
            faces; coarser levels have no repeated-index or duplicate faces and no
            unreferenced vertices, but may be non-manifold or split into components.
        down: ``down[l]`` maps level ``l`` to level ``l + 1`` (``N_in = V_l``, ``N_out = V_{l+1}``):
            each coarse vertex reads level ``l`` at its closest point on level ``l``'s surface.
        up: ``up[l]`` maps level ``l + 1`` to level ``l``: each fine vertex reads level ``l + 1``
            at its closest point on level ``l + 1``'s surface.
        spirals: ``spirals[l]`` is ``(V_l, S)`` int64; ``spirals[l][v]`` is ``v``, then its 1-ring
            in cyclic order (counter-clockwise seen from outside where ``v`` is manifold), then
            the 2-ring, ...; short neighbourhoods repeat from the start.
        content_hash: hex digest of (vertices, faces, build parameters, format version);
            names the cache file.
    """

    vertices: tuple[np.ndarray, ...]
    faces: tuple[np.ndarray, ...]
    down: tuple[SparseMap, ...]
    up: tuple[SparseMap, ...]
    spirals: tuple[np.ndarray, ...]
    content_hash: str

    def __post_init__(self) -> None:
        levels = len(self.vertices)
        counts = {"faces": len(self.faces), "spirals": len(self.spirals)}
        if levels < 1 or any(n != levels for n in counts.values()):
            raise MeshrecError(f"MeshHierarchy expects as many faces and spirals as levels ({levels}), got {counts}")
        if len(self.down) != levels - 1 or len(self.up) != levels - 1:
            raise MeshrecError(
                f"MeshHierarchy expects {levels - 1} down and up maps, got {len(self.down)} and {len(self.up)}"
            )
        for level in range(levels):
            vertices, faces, spirals = self.vertices[level], self.faces[level], self.spirals[level]
            num_vertices = vertices.shape[0]
            if vertices.ndim != 2 or vertices.shape[1] != 3:
                raise MeshrecError(f"level {level}: vertices must be (V, 3), got {vertices.shape}")
            faces_in_range = faces.size == 0 or (faces.min() >= 0 and faces.max() < num_vertices)
            if faces.ndim != 2 or faces.shape[1] != 3 or not faces_in_range:
                raise MeshrecError(f"level {level}: faces must be (F, 3) with indices in [0, {num_vertices})")
            spirals_in_range = spirals.size > 0 and spirals.min() >= 0 and spirals.max() < num_vertices
            if spirals.ndim != 2 or spirals.shape[0] != num_vertices or not spirals_in_range:
                raise MeshrecError(
                    f"level {level}: spirals must be ({num_vertices}, S) with indices in [0, {num_vertices}), "
                    f"got shape {spirals.shape}"
                )
        for level in range(levels - 1):
            fine, coarse = self.vertices[level].shape[0], self.vertices[level + 1].shape[0]
            down, up = self.down[level], self.up[level]
            down_shape, up_shape = (down.num_inputs, down.num_outputs), (up.num_inputs, up.num_outputs)
            if down_shape != (fine, coarse) or up_shape != (coarse, fine):
                raise MeshrecError(
                    f"level {level}: expected down {fine} -> {coarse} and up {coarse} -> {fine}, got down "
                    f"{down.num_inputs} -> {down.num_outputs} and up {up.num_inputs} -> {up.num_outputs}"
                )
        object.__setattr__(self, "vertices", tuple(_read_only(np.asarray(v, np.float64)) for v in self.vertices))
        object.__setattr__(self, "faces", tuple(_read_only(np.asarray(f, np.int64)) for f in self.faces))
        object.__setattr__(self, "spirals", tuple(_read_only(np.asarray(s, np.int64)) for s in self.spirals))
        object.__setattr__(self, "down", tuple(self.down))
        object.__setattr__(self, "up", tuple(self.up))

    @property
    def num_levels(self) -> int:
        """Number of levels, the full mesh included."""
        return len(self.vertices)

    @property
    def num_vertices(self) -> tuple[int, ...]:
        """``(V_0, V_1, ...)``, fine to coarse."""
        return tuple(v.shape[0] for v in self.vertices)


def build_mesh_hierarchy(
    vertices: np.ndarray,
    faces: np.ndarray,
    factors: Sequence[int] = (4, 4, 4),
    spiral_length: int = 9,
) -> MeshHierarchy:
    """Build the hierarchy: ``len(factors) + 1`` levels, level 0 being the given mesh.

    Args:
        vertices: ``(V, 3)`` rest-pose vertices (metres; any float dtype, used as float64).
        faces: ``(F, 3)`` triangles, integer indices into ``vertices``.
        factors: ``factors[l]`` (int >= 2) is the vertex-count ratio ``V_l / V_{l+1}``. The
            target ``round(V_l / factor)`` counts only vertices that faces reference; the
            decimator hits it exactly on ordinary meshes and gets as close as it can otherwise.
        spiral_length: ``S``, the length of every spiral (the vertex itself included).

    Returns:
        The :class:`MeshHierarchy`. Deterministic: the same inputs give identical arrays.

    Raises:
        MeshrecError: wrong shapes, non-finite vertices, faces out of range, a factor < 2,
            ``spiral_length`` < 1, or a mesh too small to decimate that far.
    """
    vertices, faces, factors, spiral_length = _validated_inputs(vertices, faces, factors, spiral_length)
    level_vertices, level_faces = [vertices], [faces]
    for level, factor in enumerate(factors):
        coarse_vertices, coarse_faces = _decimate(level_vertices[-1], level_faces[-1], factor, level)
        level_vertices.append(coarse_vertices)
        level_faces.append(coarse_faces)
    down, up = [], []
    for level in range(len(factors)):
        fine_vertices, fine_faces = level_vertices[level], level_faces[level]
        coarse_vertices, coarse_faces = level_vertices[level + 1], level_faces[level + 1]
        down.append(_barycentric_map(coarse_vertices, fine_vertices, fine_faces))
        up.append(_barycentric_map(fine_vertices, coarse_vertices, coarse_faces))
    spirals = [_spirals(len(v), f, spiral_length) for v, f in zip(level_vertices, level_faces)]
    return MeshHierarchy(
        vertices=tuple(level_vertices),
        faces=tuple(level_faces),
        down=tuple(down),
        up=tuple(up),
        spirals=tuple(spirals),
        content_hash=_content_hash(vertices, faces, factors, spiral_length),
    )


def hierarchy_cache_dir() -> Path:
    """Where hierarchies are cached: ``$MESHREC_CACHE_DIR/mesh_hierarchy``, else
    ``~/.cache/meshrec/mesh_hierarchy``. Nothing is created here."""
    from meshrec.cache import cache_root

    return cache_root() / "mesh_hierarchy"


def load_or_build_hierarchy(
    vertices: np.ndarray,
    faces: np.ndarray,
    factors: Sequence[int] = (4, 4, 4),
    spiral_length: int = 9,
    cache_dir: str | os.PathLike | None = None,
) -> MeshHierarchy:
    """:func:`build_mesh_hierarchy`, cached in ``<cache_dir>/<content_hash>.npz``.

    ``cache_dir`` defaults to :func:`hierarchy_cache_dir`. A missing, unreadable, corrupt or
    stale file is rebuilt and replaced atomically (never an error: it is logged); a cache
    folder that cannot be written gives a :class:`MeshHierarchyCacheWarning` and the
    hierarchy built in memory. Bad inputs raise :class:`MeshrecError` as in the builder.
    """
    vertices, faces, factors, spiral_length = _validated_inputs(vertices, faces, factors, spiral_length)
    content_hash = _content_hash(vertices, faces, factors, spiral_length)
    path = Path(cache_dir if cache_dir is not None else hierarchy_cache_dir()) / f"{content_hash}.npz"
    try:
        return _read_hierarchy(path, content_hash)
    except FileNotFoundError:
        pass  # the first use of these inputs and parameters
    except Exception as error:  # noqa: BLE001 - np.load raises many types on a damaged zip
        _log.warning("mesh hierarchy cache %s is unreadable (%s: %s); rebuilding it", path, type(error).__name__, error)
    hierarchy = build_mesh_hierarchy(vertices, faces, factors, spiral_length)
    try:
        _write_hierarchy_atomically(path, hierarchy)
    except OSError as error:
        warnings.warn(
            f"could not write the mesh hierarchy cache {path} ({type(error).__name__}: {error}); "
            f"using the hierarchy built in memory",
            MeshHierarchyCacheWarning,
            stacklevel=2,
        )
    return hierarchy


# ---------------------------------------------------------------------------------------
# input checks and hashing


def _validated_inputs(vertices, faces, factors, spiral_length) -> tuple[np.ndarray, np.ndarray, tuple[int, ...], int]:
    vertices = np.asarray(vertices)
    faces = np.asarray(faces)
    if vertices.ndim != 2 or vertices.shape[1] != 3 or vertices.shape[0] < 3:
        raise MeshrecError(f"vertices must have shape (V, 3) with V >= 3, got {vertices.shape}")
    if not np.issubdtype(vertices.dtype, np.number) or not np.all(np.isfinite(vertices)):
        raise MeshrecError(f"vertices must be finite numbers, got dtype {vertices.dtype}")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] < 1:
        raise MeshrecError(f"faces must have shape (F, 3) with F >= 1, got {faces.shape}")
    if not np.issubdtype(faces.dtype, np.integer):
        raise MeshrecError(f"faces must hold integer vertex indices, got dtype {faces.dtype}")
    if faces.min() < 0 or faces.max() >= vertices.shape[0]:
        raise MeshrecError(
            f"faces must index vertices in [0, {vertices.shape[0]}), got values in [{faces.min()}, {faces.max()}]"
        )
    if isinstance(factors, np.ndarray) and factors.ndim == 1:
        factors = factors.tolist()
    if isinstance(factors, (str, bytes)) or not isinstance(factors, Sequence):
        raise MeshrecError(f"factors must be a sequence of ints >= 2, got {factors!r}")
    for factor in factors:
        if isinstance(factor, bool) or not isinstance(factor, (int, np.integer)) or factor < 2:
            raise MeshrecError(f"every factor must be an int >= 2, got {factor!r} in factors={tuple(factors)!r}")
    if isinstance(spiral_length, bool) or not isinstance(spiral_length, (int, np.integer)) or spiral_length < 1:
        raise MeshrecError(f"spiral_length must be an int >= 1, got {spiral_length!r}")
    return (
        np.ascontiguousarray(vertices, dtype=np.float64),
        np.ascontiguousarray(faces, dtype=np.int64),
        tuple(int(f) for f in factors),
        int(spiral_length),
    )


def _content_hash(vertices: np.ndarray, faces: np.ndarray, factors: tuple[int, ...], spiral_length: int) -> str:
    """sha256 of everything the built arrays depend on, the decimator's version included."""
    digest = hashlib.sha256()
    header = (
        f"meshrec.mesh_hierarchy format={FORMAT_VERSION} decimator=fast-simplification "
        f"{_decimator_version()} agg={_DECIMATION_AGGRESSIVENESS} factors={factors} "
        f"spiral_length={spiral_length} vertices={vertices.shape} faces={faces.shape}"
    )
    digest.update(header.encode())
    digest.update(vertices.astype("<f8").tobytes())
    digest.update(faces.astype("<i8").tobytes())
    return digest.hexdigest()


def _decimator_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fast-simplification")
    except PackageNotFoundError:
        return "unknown"


# ---------------------------------------------------------------------------------------
# decimation


def _decimate(vertices: np.ndarray, faces: np.ndarray, factor: int, level: int) -> tuple[np.ndarray, np.ndarray]:
    """Quadric decimation of one level to ``round(V_referenced / factor)`` vertices.

    fast-simplification stops on a *face* count, which says little about the vertex count
    on odd meshes, so we decimate as far as it goes once, keep its collapse history, and
    replay only as many collapses as remove the wanted number of vertices (each collapse
    merges two vertices). Its replay recomputes the same quadric-optimal positions. On
    meshes where it cannot collapse that far, the level keeps more vertices than the target.
    """
    import fast_simplification

    vertices, faces = _clean_mesh(vertices, faces)
    target = round(vertices.shape[0] / factor)
    if target < MIN_LEVEL_VERTICES:
        raise MeshrecError(
            f"level {level} has {vertices.shape[0]} referenced vertices; decimating by {factor} would leave "
            f"{target}, expected at least {MIN_LEVEL_VERTICES}: use fewer levels or smaller factors"
        )
    # The decimator's collapse order does not depend on its target (it only stops earlier),
    # so one run to zero faces gives a history whose every prefix is a proper decimation.
    _, _, collapses = fast_simplification.simplify(
        vertices, faces, target_count=0, agg=_DECIMATION_AGGRESSIVENESS, return_collapses=True
    )
    wanted_collapses = vertices.shape[0] - target
    coarse_vertices, coarse_faces, _ = fast_simplification.replay_simplification(
        vertices, faces, np.ascontiguousarray(collapses[:wanted_collapses])
    )
    coarse_vertices, coarse_faces = _clean_mesh(
        np.asarray(coarse_vertices, np.float64), np.asarray(coarse_faces, np.int64)
    )
    if coarse_vertices.shape[0] < 3 or coarse_faces.shape[0] < 1 or coarse_vertices.shape[0] >= vertices.shape[0]:
        raise MeshrecError(
            f"decimating level {level} ({vertices.shape[0]} vertices) by {factor} gave {coarse_vertices.shape[0]} "
            f"vertices and {coarse_faces.shape[0]} faces, expected about {target} vertices and at least one face"
        )
    return coarse_vertices, coarse_faces


def _clean_mesh(vertices: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Drop faces with a repeated index and repeated faces (same corners, first kept),
    then unreferenced vertices (kept vertices stay in their original order)."""
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    _, first = np.unique(np.sort(faces, axis=1), axis=0, return_index=True)
    faces = faces[np.sort(first)]
    referenced = np.unique(faces)
    old_to_new = np.full(vertices.shape[0], -1, dtype=np.int64)
    old_to_new[referenced] = np.arange(referenced.size)
    return np.ascontiguousarray(vertices[referenced]), np.ascontiguousarray(old_to_new[faces])


# ---------------------------------------------------------------------------------------
# barycentric maps


def _barycentric_map(points: np.ndarray, vertices: np.ndarray, faces: np.ndarray) -> SparseMap:
    """Each point reads the mesh at its closest surface point: a ``(P, 3)`` map into ``V``."""
    face_index, barycentric = _closest_points_on_mesh(points, vertices, faces)
    return SparseMap(indices=faces[face_index], weights=barycentric, num_inputs=vertices.shape[0])


def _closest_points_on_mesh(
    points: np.ndarray, vertices: np.ndarray, faces: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Closest surface point of every query point.

    Args:
        points: ``(P, 3)`` queries.
        vertices: ``(V, 3)``; faces: ``(F, 3)`` (degenerate triangles allowed).

    Returns:
        ``face_index`` ``(P,)`` int64, the face holding the closest point (lowest index on
        ties), and ``barycentric`` ``(P, 3)`` float64 weights of that point on the face's
        corners (non-negative, rows sum to 1).

    A triangle can only beat the nearest referenced vertex (distance ``d``) if its bounding
    sphere (centroid, radius) comes within ``d`` of the query, so exact distances are only
    computed for those pairs.
    """
    corners = vertices[faces]  # (F, 3 corners, 3)
    centroids = corners.mean(1)
    radii = np.linalg.norm(corners - centroids[:, None], axis=-1).max(1)
    upper_bound, _ = cKDTree(vertices[np.unique(faces)]).query(points)
    slack = 1e-9 * (1.0 + upper_bound)
    face_index = np.empty(points.shape[0], np.int64)
    barycentric = np.empty((points.shape[0], 3))
    block = max(1, _PAIR_BLOCK // faces.shape[0])
    for start in range(0, points.shape[0], block):
        stop = min(start + block, points.shape[0])
        gap = cdist(points[start:stop], centroids) - radii[None]
        query, face = np.nonzero(gap <= (upper_bound[start:stop] + slack[start:stop])[:, None])
        distance2, weights = _point_triangle(points[start:stop][query], corners[face])
        # per query: smallest distance, then lowest face index (pairs are sorted by query, face)
        order = np.lexsort((face, distance2, query))
        first = order[np.r_[True, query[order][1:] != query[order][:-1]]]
        face_index[start:stop] = face[first]
        barycentric[start:stop] = weights[first]
    return face_index, barycentric


def _point_triangle(points: np.ndarray, corners: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Squared distance and barycentric weights of the closest point on each triangle.

    Args:
        points: ``(N, 3)``; corners: ``(N, 3, 3)``, ``corners[n, i]`` is corner ``i`` of pair ``n``.

    Returns:
        ``(N,)`` squared distances and ``(N, 3)`` weights (non-negative, rows sum to 1).

    The interior solution is used when it lies inside a non-degenerate triangle; otherwise
    the closest point is on an edge, and a clamped segment projection is well defined even
    for collinear or coincident corners.
    """
    a, b, c = corners[:, 0], corners[:, 1], corners[:, 2]
    e0, e1, e2 = b - a, c - a, c - b
    d, db = points - a, points - b
    g00, g01, g11 = _dot(e0, e0), _dot(e0, e1), _dot(e1, e1)
    r0, r1 = _dot(d, e0), _dot(d, e1)
    det = g00 * g11 - g01 * g01
    regular = det > _DEGENERATE_TRIANGLE_RTOL * g00 * g11
    safe_det = np.where(regular, det, 1.0)
    v = (g11 * r0 - g01 * r1) / safe_det
    w = (g00 * r1 - g01 * r0) / safe_det
    u = 1.0 - v - w
    inside = regular & (u >= 0) & (v >= 0) & (w >= 0)
    interior = np.where(inside, _dot2(d - v[:, None] * e0 - w[:, None] * e1), np.inf)

    t_ab = _segment_parameter(r0, g00)
    t_ac = _segment_parameter(r1, g11)
    t_bc = _segment_parameter(_dot(db, e2), _dot(e2, e2))
    candidates = np.stack(
        [
            interior,
            _dot2(d - t_ab[:, None] * e0),
            _dot2(d - t_ac[:, None] * e1),
            _dot2(db - t_bc[:, None] * e2),
        ],
        axis=1,
    )
    best = candidates.argmin(1)  # ties go to the interior, then the first edge
    weights = np.zeros((points.shape[0], 3))
    on = best == 0
    weights[on] = np.stack([u[on], v[on], w[on]], 1)
    for candidate, (first, second), t in ((1, (0, 1), t_ab), (2, (0, 2), t_ac), (3, (1, 2), t_bc)):
        on = best == candidate
        weights[on, first] = 1.0 - t[on]
        weights[on, second] = t[on]
    weights = np.clip(weights, 0.0, 1.0)
    return np.take_along_axis(candidates, best[:, None], 1)[:, 0], weights / weights.sum(1, keepdims=True)


def _segment_parameter(projection: np.ndarray, length2: np.ndarray) -> np.ndarray:
    """Clamped position ``t`` in [0, 1] of the closest point on a segment (0 when it is a point)."""
    return np.clip(np.divide(projection, length2, out=np.zeros_like(projection), where=length2 > 0), 0.0, 1.0)


def _dot(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, y)


def _dot2(x: np.ndarray) -> np.ndarray:
    return np.einsum("ij,ij->i", x, x)


# ---------------------------------------------------------------------------------------
# spirals


def _spirals(num_vertices: int, faces: np.ndarray, length: int) -> np.ndarray:
    """``(V, length)`` spirals: ``v``, its 1-ring in cyclic order, its 2-ring, ... (truncated).

    The cyclic order comes from the face winding, so where every mesh is counter-clockwise
    from outside, every 1-ring turns the same way (what a spiral convolution's weights rely
    on). Each further ring walks the previous ring in order and, around each of its
    vertices, continues in that vertex's own cyclic order from where the visited part ends.
    A vertex with fewer than ``length - 1`` reachable neighbours repeats its sequence from
    the start (an isolated vertex is all itself).
    """
    rings = _cyclic_one_rings(num_vertices, faces)
    spirals = np.empty((num_vertices, length), np.int64)
    for vertex in range(num_vertices):
        sequence = [vertex]
        visited = {vertex}
        frontier = [vertex]
        while len(sequence) < length and frontier:
            next_frontier = []
            for centre in frontier:
                for neighbour in _continuing_from_visited(rings[centre], visited):
                    visited.add(neighbour)
                    next_frontier.append(neighbour)
            sequence.extend(next_frontier)
            frontier = next_frontier
        spirals[vertex] = np.resize(np.asarray(sequence, np.int64), length)
    return spirals


def _continuing_from_visited(ring: list[int], visited: set[int]) -> list[int]:
    """The unvisited vertices of a cyclic ring, starting just after a visited one."""
    start = 0
    for i in range(len(ring)):
        if ring[i - 1] in visited and ring[i] not in visited:
            start = i
            break
    return [n for n in ring[start:] + ring[:start] if n not in visited]


def _cyclic_one_rings(num_vertices: int, faces: np.ndarray) -> list[list[int]]:
    """Every vertex's face neighbours in cyclic order around it.

    Face ``(v, a, b)`` (in any rotation) contributes the step ``a -> b`` around ``v``; with
    counter-clockwise faces these steps turn counter-clockwise seen from outside. A manifold
    vertex's steps form one cycle (interior: started at the smallest neighbour) or one path
    (boundary: started where the fan begins). Elsewhere the walk is greedy and
    deterministic: new walks start at fan beginnings, then at the smallest unvisited index.
    """
    faces = faces[(faces[:, 0] != faces[:, 1]) & (faces[:, 1] != faces[:, 2]) & (faces[:, 0] != faces[:, 2])]
    centre = faces.reshape(-1)
    step_from = faces[:, [1, 2, 0]].reshape(-1)
    step_to = faces[:, [2, 0, 1]].reshape(-1)
    order = np.lexsort((step_to, step_from, centre))
    centre, step_from, step_to = centre[order].tolist(), step_from[order].tolist(), step_to[order].tolist()
    rings: list[list[int]] = [[] for _ in range(num_vertices)]
    start = 0
    while start < len(centre):
        stop = start
        while stop < len(centre) and centre[stop] == centre[start]:
            stop += 1
        rings[centre[start]] = _walk_fan(step_from[start:stop], step_to[start:stop])
        start = stop
    return rings


def _walk_fan(step_from: list[int], step_to: list[int]) -> list[int]:
    successors: dict[int, list[int]] = {}
    has_predecessor = set()
    for a, b in zip(step_from, step_to):
        successors.setdefault(a, []).append(b)
        successors.setdefault(b, [])
        has_predecessor.add(b)
    nodes = sorted(successors)
    starts = [n for n in nodes if n not in has_predecessor] + [n for n in nodes if n in has_predecessor]
    ring, visited = [], set()
    for begin in starts:
        current = begin
        while current is not None and current not in visited:
            ring.append(current)
            visited.add(current)
            current = next((n for n in successors[current] if n not in visited), None)
    return ring


# ---------------------------------------------------------------------------------------
# cache file


def _read_hierarchy(path: Path, content_hash: str) -> MeshHierarchy:
    with np.load(path, allow_pickle=False) as data:
        if int(data["format_version"]) != FORMAT_VERSION or str(data["content_hash"]) != content_hash:
            raise MeshrecError(
                f"expected format {FORMAT_VERSION} and hash {content_hash}, found format "
                f"{int(data['format_version'])} and hash {str(data['content_hash'])}"
            )
        levels = int(data["num_levels"])
        vertices = tuple(data[f"vertices_{l}"] for l in range(levels))
        return MeshHierarchy(
            vertices=vertices,
            faces=tuple(data[f"faces_{l}"] for l in range(levels)),
            down=tuple(
                SparseMap(data[f"down_indices_{l}"], data[f"down_weights_{l}"], vertices[l].shape[0])
                for l in range(levels - 1)
            ),
            up=tuple(
                SparseMap(data[f"up_indices_{l}"], data[f"up_weights_{l}"], vertices[l + 1].shape[0])
                for l in range(levels - 1)
            ),
            spirals=tuple(data[f"spirals_{l}"] for l in range(levels)),
            content_hash=content_hash,
        )


def _write_hierarchy_atomically(path: Path, hierarchy: MeshHierarchy) -> None:
    """Write to a temporary file in the same folder, then rename: readers never see half a file."""
    arrays: dict[str, np.ndarray] = {
        "format_version": np.array(FORMAT_VERSION, np.int64),
        "content_hash": np.array(hierarchy.content_hash),
        "num_levels": np.array(hierarchy.num_levels, np.int64),
    }
    for level in range(hierarchy.num_levels):
        arrays[f"vertices_{level}"] = hierarchy.vertices[level]
        arrays[f"faces_{level}"] = hierarchy.faces[level]
        arrays[f"spirals_{level}"] = hierarchy.spirals[level]
    for level in range(hierarchy.num_levels - 1):
        arrays[f"down_indices_{level}"] = hierarchy.down[level].indices
        arrays[f"down_weights_{level}"] = hierarchy.down[level].weights
        arrays[f"up_indices_{level}"] = hierarchy.up[level].indices
        arrays[f"up_weights_{level}"] = hierarchy.up[level].weights
    path.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.stem}.", suffix=".tmp")
    try:
        with os.fdopen(descriptor, "wb") as file:
            np.savez(file, **arrays)
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def _read_only(array: np.ndarray) -> np.ndarray:
    """A read-only copy (a copy, so that the caller's own array keeps its flags)."""
    array = np.array(array, copy=True)
    array.setflags(write=False)
    return array
