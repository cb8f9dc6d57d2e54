"""The mesh hierarchy: decimated levels, barycentric up/down maps, spirals, and its cache."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import scipy.sparse
import torch
import trimesh

import meshrec.geometry.mesh_hierarchy as mesh_hierarchy
from manolayer.io import load_mano
from manolayer.testing import random_mano_arrays
from meshrec.errors import MeshrecError
from meshrec.geometry.mesh_hierarchy import (
    MeshHierarchy,
    MeshHierarchyCacheWarning,
    SparseMap,
    build_mesh_hierarchy,
    hierarchy_cache_dir,
    load_or_build_hierarchy,
)

TETRAHEDRON_VERTICES = np.array([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
TETRAHEDRON_FACES = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


@pytest.fixture(scope="module")
def open_hand():
    model = load_mano(None)
    return model.v_template, model.faces


@pytest.fixture(scope="module")
def open_hand_hierarchy(open_hand) -> MeshHierarchy:
    return build_mesh_hierarchy(*open_hand)


@pytest.fixture(scope="module")
def random_hierarchy() -> MeshHierarchy:
    """Random triangles over random points: non-manifold everywhere, a few unreferenced vertices."""
    arrays = random_mano_arrays(num_vertices=300, seed=3)
    return build_mesh_hierarchy(arrays["v_template"], arrays["f"], factors=(3, 3))


@pytest.fixture(scope="module")
def sphere():
    mesh = trimesh.creation.icosphere(subdivisions=3)  # 642 vertices, closed, counter-clockwise
    return np.asarray(mesh.vertices), np.asarray(mesh.faces)


def _one_rings(num_vertices: int, faces: np.ndarray) -> list[set[int]]:
    rings = [set() for _ in range(num_vertices)]
    for face in faces.tolist():
        for corner in face:
            rings[corner].update(face)
    for vertex, ring in enumerate(rings):
        ring.discard(vertex)
    return rings


def _ring_distances(rings: list[set[int]], vertex: int, enough: int) -> dict[int, int]:
    """Graph distance from ``vertex`` of every vertex in its first rings, enough rings to hold
    at least ``enough`` vertices (or the whole component)."""
    distances, frontier, distance = {vertex: 0}, [vertex], 0
    while frontier and len(distances) < enough:
        distance += 1
        frontier = list(dict.fromkeys(n for v in frontier for n in rings[v] if n not in distances))
        distances.update((n, distance) for n in frontier)
    return distances


def _assert_valid(hierarchy: MeshHierarchy, spiral_length: int = 9) -> None:
    counts = hierarchy.num_vertices
    assert len(counts) == hierarchy.num_levels == len(hierarchy.faces) == len(hierarchy.spirals)
    assert len(hierarchy.down) == len(hierarchy.up) == hierarchy.num_levels - 1
    for level in range(hierarchy.num_levels):
        vertices, faces, spirals = hierarchy.vertices[level], hierarchy.faces[level], hierarchy.spirals[level]
        assert vertices.dtype == np.float64 and vertices.shape == (counts[level], 3)
        assert np.isfinite(vertices).all()
        assert faces.dtype == np.int64 and faces.ndim == 2 and faces.shape[1] == 3
        assert faces.min() >= 0 and faces.max() < counts[level]
        assert spirals.dtype == np.int64 and spirals.shape == (counts[level], spiral_length)
        assert spirals.min() >= 0 and spirals.max() < counts[level]
        if level > 0:  # decimated levels: every vertex on a face, no repeated-index faces
            assert np.array_equal(np.unique(faces), np.arange(counts[level]))
            assert (np.sort(faces, 1)[:, :-1] != np.sort(faces, 1)[:, 1:]).all()
    for level in range(hierarchy.num_levels - 1):
        for sparse_map, (n_in, n_out) in (
            (hierarchy.down[level], (counts[level], counts[level + 1])),
            (hierarchy.up[level], (counts[level + 1], counts[level])),
        ):
            assert sparse_map.num_inputs == n_in
            assert sparse_map.indices.shape == sparse_map.weights.shape == (n_out, 3)
            assert sparse_map.indices.dtype == np.int64 and sparse_map.weights.dtype == np.float64
            assert sparse_map.indices.min() >= 0 and sparse_map.indices.max() < n_in
            assert np.isfinite(sparse_map.weights).all() and (sparse_map.weights >= 0).all()
            np.testing.assert_allclose(sparse_map.weights.sum(1), 1.0, atol=1e-12)


# ---------------------------------------------------------------------------------------
# levels and maps


def test_open_hand_levels_shrink_by_the_factor(open_hand_hierarchy, open_hand):
    _assert_valid(open_hand_hierarchy)
    assert open_hand_hierarchy.num_vertices == (1595, 399, 100, 25)
    np.testing.assert_array_equal(open_hand_hierarchy.vertices[0], open_hand[0])
    np.testing.assert_array_equal(open_hand_hierarchy.faces[0], open_hand[1])


def test_non_manifold_random_mesh_gives_valid_maps_and_spirals(random_hierarchy):
    _assert_valid(random_hierarchy)
    counts = random_hierarchy.num_vertices
    assert counts[0] == 300 and counts[1] < counts[0] and counts[2] < counts[1]


def test_build_is_deterministic(open_hand):
    first, second = build_mesh_hierarchy(*open_hand), build_mesh_hierarchy(*open_hand)
    assert first.content_hash == second.content_hash
    for level in range(first.num_levels):
        np.testing.assert_array_equal(first.vertices[level], second.vertices[level])
        np.testing.assert_array_equal(first.faces[level], second.faces[level])
        np.testing.assert_array_equal(first.spirals[level], second.spirals[level])
    for a, b in zip(first.down + first.up, second.down + second.up):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.weights, b.weights)


def test_down_then_up_reproduces_the_open_hand(open_hand_hierarchy):
    fine = torch.tensor(open_hand_hierarchy.vertices[0])[None]  # (1, V0, 3)
    round_trip = open_hand_hierarchy.up[0].apply(open_hand_hierarchy.down[0].apply(fine))
    error = (round_trip - fine).norm(dim=-1)
    assert error.mean() < 1e-3  # metres; measured 0.66 mm
    # a down-sampled mesh lies on the fine surface, close to the decimated vertices
    coarse = open_hand_hierarchy.down[0].apply(fine)[0].numpy()
    assert np.linalg.norm(coarse - open_hand_hierarchy.vertices[1], axis=-1).mean() < 1e-3


def test_maps_preserve_constants(open_hand_hierarchy):
    for sparse_map in open_hand_hierarchy.down + open_hand_hierarchy.up:
        ones = torch.ones(2, sparse_map.num_inputs, 1, dtype=torch.float64)
        expected = torch.ones(2, sparse_map.num_outputs, 1, dtype=torch.float64)
        torch.testing.assert_close(sparse_map.apply(ones), expected)


def test_closest_points_match_a_brute_force_reference(sphere):
    vertices, faces = sphere
    points = np.random.default_rng(0).normal(scale=0.8, size=(60, 3))
    face_index, barycentric = mesh_hierarchy._closest_points_on_mesh(points, vertices, faces)
    found = np.einsum("pi,pij->pj", barycentric, vertices[faces[face_index]])
    triangles = vertices[faces]
    reference = np.array(  # trimesh: closest point of each (triangle, point) pair; minimum over all faces
        [np.linalg.norm(trimesh.triangles.closest_point(triangles, np.tile(p, (len(faces), 1))) - p, axis=1).min()
         for p in points]
    )
    np.testing.assert_allclose(np.linalg.norm(found - points, axis=1), reference, atol=1e-12)
    assert (barycentric >= 0).all()
    np.testing.assert_allclose(barycentric.sum(1), 1.0)


def test_closest_points_on_degenerate_triangles_are_finite():
    vertices = np.array([[0.0, 0, 0], [1, 0, 0], [2, 0, 0], [5, 5, 5]])  # collinear, then a point triangle
    faces = np.array([[0, 1, 2], [3, 3, 3]])
    points = np.array([[0.5, 1.0, 0.0], [5.0, 5.0, 6.0], [3.0, 0.0, 0.0]])
    face_index, barycentric = mesh_hierarchy._closest_points_on_mesh(points, vertices, faces)
    found = np.einsum("pi,pij->pj", barycentric, vertices[faces[face_index]])
    np.testing.assert_allclose(found, [[0.5, 0, 0], [5, 5, 5], [2, 0, 0]], atol=1e-12)


# ---------------------------------------------------------------------------------------
# SparseMap


def test_sparse_map_apply_passes_gradcheck(open_hand_hierarchy):
    up = open_hand_hierarchy.up[-1]  # 25 -> 100 vertices
    x = torch.randn(2, up.num_inputs, 1, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(up.apply, (x,))


def test_as_scipy_equals_apply(open_hand_hierarchy):
    x = np.random.default_rng(1).normal(size=(2, open_hand_hierarchy.num_vertices[0], 3))
    for sparse_map in (open_hand_hierarchy.down[0], open_hand_hierarchy.up[0]):
        matrix = sparse_map.as_scipy()
        inputs = x[:, : sparse_map.num_inputs]
        assert isinstance(matrix, scipy.sparse.csr_matrix)
        assert matrix.shape == (sparse_map.num_outputs, sparse_map.num_inputs)
        expected = np.stack([matrix @ sample for sample in inputs])
        np.testing.assert_allclose(sparse_map.apply(torch.tensor(inputs)).numpy(), expected, atol=1e-14)


def test_apply_follows_input_dtype_and_accepts_any_leading_dims():
    sparse_map = SparseMap(np.array([[0, 1, 2], [2, 2, 2]]), np.array([[0.2, 0.3, 0.5], [1.0, 0.0, 0.0]]), 3)
    x = torch.arange(6, dtype=torch.float32).reshape(3, 2)
    out = sparse_map.apply(x)
    assert out.dtype == torch.float32 and out.shape == (2, 2)
    expected = torch.tensor([[0.2 * 0 + 0.3 * 2 + 0.5 * 4, 0.2 * 1 + 0.3 * 3 + 0.5 * 5], [4.0, 5.0]])
    torch.testing.assert_close(out, expected)
    assert sparse_map.apply(x.expand(4, 5, 3, 2)).shape == (4, 5, 2, 2)


def test_sparse_map_rejects_bad_arrays_and_inputs():
    with pytest.raises(MeshrecError, match=r"\[0, 2\)"):
        SparseMap(np.array([[0, 1, 2]]), np.array([[0.2, 0.3, 0.5]]), 2)
    with pytest.raises(MeshrecError, match="sum to 1"):
        SparseMap(np.array([[0, 1, 1]]), np.array([[0.2, 0.3, 0.6]]), 2)
    with pytest.raises(MeshrecError, match="same shape"):
        SparseMap(np.array([[0, 1, 1]]), np.array([[0.5, 0.5]]), 2)
    sparse_map = SparseMap(np.array([[0, 1, 1]]), np.array([[0.2, 0.3, 0.5]]), 2)
    with pytest.raises(MeshrecError, match=r"\(\.\.\., 2, C\), got \(1, 3, 4\)"):
        sparse_map.apply(torch.zeros(1, 3, 4))


def test_outputs_are_read_only_and_inputs_untouched(open_hand):
    vertices, faces = np.array(open_hand[0]), np.array(open_hand[1])
    hierarchy = build_mesh_hierarchy(vertices, faces, factors=(4,))
    assert vertices.flags.writeable and faces.flags.writeable
    assert not hierarchy.vertices[0].flags.writeable and not hierarchy.up[0].weights.flags.writeable


# ---------------------------------------------------------------------------------------
# spirals


def test_spirals_start_at_the_vertex_then_walk_rings_in_order(open_hand_hierarchy, sphere):
    cases = [(open_hand_hierarchy.num_vertices[0], open_hand_hierarchy.faces[0], open_hand_hierarchy.spirals[0])]
    coarse_sphere = build_mesh_hierarchy(*sphere, factors=(4,), spiral_length=12)
    cases.append((642, coarse_sphere.faces[0], coarse_sphere.spirals[0]))
    for num_vertices, faces, spirals in cases:
        rings = _one_rings(num_vertices, faces)
        np.testing.assert_array_equal(spirals[:, 0], np.arange(num_vertices))
        for vertex in range(num_vertices):
            spiral = spirals[vertex].tolist()
            assert len(set(spiral)) == len(spiral)  # no repeats: every vertex here has enough neighbours
            distances = _ring_distances(rings, vertex, len(spiral))
            along = [distances[n] for n in spiral]
            assert along[0] == 0 and along == sorted(along)  # ring 1, then ring 2, ...
            for ring in range(1, along[-1]):  # every ring before the last one reached is complete
                assert {n for n in spiral if distances[n] == ring} == {n for n, d in distances.items() if d == ring}


def test_one_rings_turn_with_the_face_winding(sphere):
    vertices, faces = sphere
    spirals = build_mesh_hierarchy(vertices, faces, factors=(4,), spiral_length=7).spirals[0]
    oriented = {tuple(np.roll(face, shift)) for face in faces.tolist() for shift in range(3)}
    for vertex, spiral in enumerate(spirals.tolist()):
        valence = len({n for face in faces.tolist() if vertex in face for n in face}) - 1
        ring = spiral[1 : 1 + valence]
        assert len(ring) == valence in (5, 6)
        for step in range(valence):  # (v, ring[i], ring[i+1]) is a counter-clockwise face, cyclically
            assert (vertex, ring[step], ring[(step + 1) % valence]) in oriented


def test_short_neighbourhoods_repeat_from_the_start():
    hierarchy = build_mesh_hierarchy(TETRAHEDRON_VERTICES, TETRAHEDRON_FACES, factors=(), spiral_length=9)
    assert hierarchy.num_levels == 1 and hierarchy.down == () and hierarchy.up == ()
    for vertex, spiral in enumerate(hierarchy.spirals[0].tolist()):
        assert spiral[0] == vertex and sorted(spiral[:4]) == [0, 1, 2, 3]
        assert spiral[4:] == spiral[:5]
    # a vertex no face uses is its own whole neighbourhood
    with_isolated = np.vstack([TETRAHEDRON_VERTICES, [[3.0, 3.0, 3.0]]])
    spirals = build_mesh_hierarchy(with_isolated, TETRAHEDRON_FACES, factors=(), spiral_length=5).spirals[0]
    assert spirals[4].tolist() == [4] * 5


# ---------------------------------------------------------------------------------------
# cache


def _forbid_building(monkeypatch):
    def fail(*args, **kwargs):
        raise AssertionError("the hierarchy should have come from the cache file")

    monkeypatch.setattr(mesh_hierarchy, "build_mesh_hierarchy", fail)


def _assert_same(first: MeshHierarchy, second: MeshHierarchy) -> None:
    assert first.content_hash == second.content_hash
    for a, b in zip(first.vertices + first.faces + first.spirals, second.vertices + second.faces + second.spirals):
        np.testing.assert_array_equal(a, b)
    for a, b in zip(first.down + first.up, second.down + second.up):
        np.testing.assert_array_equal(a.indices, b.indices)
        np.testing.assert_array_equal(a.weights, b.weights)
        assert a.num_inputs == b.num_inputs


def test_second_call_loads_the_cache_file(sphere, tmp_path, monkeypatch):
    built = load_or_build_hierarchy(*sphere, factors=(4, 4), cache_dir=tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [f"{built.content_hash}.npz"]  # no temporary left
    _forbid_building(monkeypatch)
    loaded = load_or_build_hierarchy(*sphere, factors=(4, 4), cache_dir=tmp_path)
    _assert_same(built, loaded)
    _assert_valid(loaded)


def test_corrupt_or_stale_cache_file_is_rebuilt(sphere, tmp_path, monkeypatch, caplog):
    built = load_or_build_hierarchy(*sphere, factors=(4, 4), cache_dir=tmp_path)
    path = tmp_path / f"{built.content_hash}.npz"
    good_bytes = path.read_bytes()

    path.write_bytes(good_bytes[: len(good_bytes) // 2])  # a torn file
    with caplog.at_level(logging.WARNING, logger=mesh_hierarchy.__name__):
        _assert_same(built, load_or_build_hierarchy(*sphere, factors=(4, 4), cache_dir=tmp_path))
    assert "rebuilding" in caplog.text
    with np.load(path) as data:  # rewritten whole
        assert str(data["content_hash"]) == built.content_hash

    with np.load(path) as data:
        stale = dict(data)
    stale["format_version"] = np.array(0)
    np.savez(path, **stale)
    _assert_same(built, load_or_build_hierarchy(*sphere, factors=(4, 4), cache_dir=tmp_path))
    _forbid_building(monkeypatch)
    _assert_same(built, load_or_build_hierarchy(*sphere, factors=(4, 4), cache_dir=tmp_path))


def test_every_build_input_changes_the_hash(sphere, tmp_path, monkeypatch):
    vertices, faces = sphere
    base = load_or_build_hierarchy(vertices, faces, factors=(4, 4), cache_dir=tmp_path).content_hash
    moved = vertices.copy()
    moved[0, 0] += 1e-9
    variants = {
        "vertices": build_mesh_hierarchy(moved, faces, factors=(4, 4)).content_hash,
        "faces": build_mesh_hierarchy(vertices, faces[:, [1, 2, 0]], factors=(4, 4)).content_hash,
        "factors": load_or_build_hierarchy(vertices, faces, factors=(4, 3), cache_dir=tmp_path).content_hash,
        "spiral_length": load_or_build_hierarchy(
            vertices, faces, (4, 4), spiral_length=8, cache_dir=tmp_path
        ).content_hash,
    }
    monkeypatch.setattr(mesh_hierarchy, "FORMAT_VERSION", mesh_hierarchy.FORMAT_VERSION + 1)
    variants["format"] = build_mesh_hierarchy(vertices, faces, factors=(4, 4)).content_hash
    assert len({base, *variants.values()}) == 1 + len(variants), variants
    assert len(list(tmp_path.glob("*.npz"))) == 3


def test_unwritable_cache_dir_warns_and_builds_in_memory(sphere, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.warns(MeshHierarchyCacheWarning, match="could not write"):
        hierarchy = load_or_build_hierarchy(*sphere, factors=(4,), cache_dir=blocker / "cache")
    _assert_valid(hierarchy)


def test_failed_write_leaves_no_temporary_file(sphere, tmp_path, monkeypatch):
    def disk_full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(mesh_hierarchy.np, "savez", disk_full)
    with pytest.warns(MeshHierarchyCacheWarning, match="No space left"):
        load_or_build_hierarchy(*sphere, factors=(4,), cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_cache_dir_comes_from_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("MESHREC_CACHE_DIR", str(tmp_path / "cache"))
    assert hierarchy_cache_dir() == tmp_path / "cache" / "mesh_hierarchy"
    monkeypatch.delenv("MESHREC_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert hierarchy_cache_dir() == tmp_path / ".cache" / "meshrec" / "mesh_hierarchy"


# ---------------------------------------------------------------------------------------
# bad inputs


@pytest.mark.parametrize(
    ("vertices", "faces", "factors", "spiral_length", "message"),
    [
        (np.zeros((4, 2)), TETRAHEDRON_FACES, (), 9, r"vertices must have shape \(V, 3\).*got \(4, 2\)"),
        (np.full((4, 3), np.nan), TETRAHEDRON_FACES, (), 9, "finite"),
        (TETRAHEDRON_VERTICES, TETRAHEDRON_FACES[:, :2], (), 9, r"faces must have shape \(F, 3\).*got \(4, 2\)"),
        (TETRAHEDRON_VERTICES, TETRAHEDRON_FACES + 1, (), 9, r"\[0, 4\), got values in \[1, 4\]"),
        (TETRAHEDRON_VERTICES, TETRAHEDRON_FACES - 1, (), 9, r"\[0, 4\), got values in \[-1, 2\]"),
        (TETRAHEDRON_VERTICES, TETRAHEDRON_FACES.astype(float), (), 9, "integer"),
        (TETRAHEDRON_VERTICES, TETRAHEDRON_FACES, (4, 1), 9, r"int >= 2, got 1"),
        (TETRAHEDRON_VERTICES, TETRAHEDRON_FACES, (2.5,), 9, r"int >= 2, got 2.5"),
        (TETRAHEDRON_VERTICES, TETRAHEDRON_FACES, 4, 9, "sequence"),
        (TETRAHEDRON_VERTICES, TETRAHEDRON_FACES, (), 0, r"spiral_length must be an int >= 1, got 0"),
        (TETRAHEDRON_VERTICES, TETRAHEDRON_FACES, (2,), 9, r"would leave 2, expected at least 4"),
    ],
)
def test_bad_inputs_raise_meshrec_error(vertices, faces, factors, spiral_length, message, tmp_path):
    with pytest.raises(MeshrecError, match=message):
        build_mesh_hierarchy(vertices, faces, factors, spiral_length)
    with pytest.raises(MeshrecError, match=message):
        load_or_build_hierarchy(vertices, faces, factors, spiral_length, cache_dir=tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_too_many_levels_for_the_open_hand(open_hand):
    with pytest.raises(MeshrecError, match=r"level 3 has 25 referenced vertices; decimating by 8 would leave 3"):
        build_mesh_hierarchy(*open_hand, factors=(4, 4, 4, 8))


def test_mismatched_hierarchy_parts_are_rejected(open_hand_hierarchy):
    h = open_hand_hierarchy
    with pytest.raises(MeshrecError, match="down and up maps"):
        MeshHierarchy(h.vertices, h.faces, h.down[:1], h.up, h.spirals, h.content_hash)
    with pytest.raises(MeshrecError, match=r"expected down 1595 -> 399"):
        MeshHierarchy(h.vertices, h.faces, h.up, h.down, h.spirals, h.content_hash)
