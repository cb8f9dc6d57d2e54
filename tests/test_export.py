"""Mesh and prediction export (meshrec.export): round trips, winding, atomicity, bad inputs."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest
import torch
import trimesh

from manolayer.io import load_mano
from meshrec import export
from meshrec.errors import MeshrecError


@pytest.fixture(scope="module")
def open_hand():
    model = load_mano(None)
    return model.v_template, model.faces


def _load(path) -> trimesh.Trimesh:
    loaded = trimesh.load(path, process=False)
    if isinstance(loaded, trimesh.Scene):  # GLB loads as a scene of one geometry
        (loaded,) = loaded.geometry.values()
    return loaded


def _random_colors(num_vertices: int) -> np.ndarray:
    colors = np.random.default_rng(0).integers(0, 256, size=(num_vertices, 4), dtype=np.uint8)
    colors[:, 3] = 255
    return colors


@pytest.mark.parametrize("suffix", [".obj", ".ply", ".glb"])
def test_round_trip_keeps_vertex_order_faces_and_colours(tmp_path, open_hand, suffix):
    vertices, faces = open_hand
    colors = _random_colors(len(vertices))
    path = export.save_mesh(tmp_path / f"hand{suffix}", vertices, faces, vertex_colors=colors)
    loaded = _load(path)
    # OBJ keeps 8 decimals (1e-8 m); PLY and GLB store float32 (~1e-8 m at hand scale)
    np.testing.assert_allclose(loaded.vertices, vertices, rtol=0, atol=1e-6)
    np.testing.assert_array_equal(loaded.faces, faces)
    if suffix == ".obj":
        assert loaded.visual.kind is None  # OBJ has no standard vertex colours: none written
    else:
        np.testing.assert_array_equal(loaded.visual.vertex_colors, colors)
    assert os.listdir(tmp_path) == [path.name]


def test_float_colours_and_rgb_become_rgba_uint8(tmp_path, open_hand):
    vertices, faces = open_hand
    colors = np.tile([[1.0, 0.5, 0.0]], (len(vertices), 1))
    loaded = _load(export.save_mesh(tmp_path / "hand.ply", vertices, faces, vertex_colors=colors))
    np.testing.assert_array_equal(loaded.visual.vertex_colors[0], [255, 128, 0, 255])


def test_no_suffix_means_obj(tmp_path, open_hand):
    path = export.save_mesh(tmp_path / "hand", *open_hand)
    assert path.name == "hand.obj" and path.read_bytes().lstrip().startswith((b"#", b"v "))


def test_mesh_to_trimesh_keeps_unused_and_duplicate_vertices():
    vertices = np.array([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 0], [5, 5, 5]])  # 3 == 2, 4 unused
    mesh = export.mesh_to_trimesh(vertices, np.array([[0, 1, 2]]))
    assert mesh.vertices.shape == (5, 3)


def test_left_hand_needs_rewound_faces_for_outward_normals(open_hand):
    vertices, faces = open_hand
    right = export.mesh_to_trimesh(vertices, faces)
    mirrored = vertices * np.array([-1.0, 1.0, 1.0])
    left = export.mesh_to_trimesh(mirrored, faces[:, [0, 2, 1]])
    forgot_to_rewind = export.mesh_to_trimesh(mirrored, faces)
    # the open hand is open at the wrist: the signed volume is still that of the closed shape up to the cut
    assert right.volume > 1e-4
    np.testing.assert_allclose(left.volume, right.volume, rtol=1e-9)
    assert forgot_to_rewind.volume < -1e-4


def test_prediction_mesh_is_wound_outward_for_both_sides(prediction):
    assert prediction.side.tolist() == [0, 1]
    for index in range(2):
        mesh = export.prediction_mesh(prediction, index)
        assert mesh.volume > 0, f"sample {index} is inside out"
        np.testing.assert_allclose(mesh.vertices, prediction.vertices[index].double().numpy())
        np.testing.assert_array_equal(mesh.faces, prediction.faces_of(index).numpy())


def test_prediction_mesh_colours_from_uncertainty(prediction):
    assert prediction.joint_variance is not None
    mesh = export.prediction_mesh(prediction, 1)
    sigma = mesh.metadata["vertex_sigma_m"]
    assert sigma.shape == (len(mesh.vertices),)
    assert set(np.round(sigma, 12)) <= set(np.round(prediction.joint_variance[1].double().sqrt().numpy(), 12))
    np.testing.assert_array_equal(mesh.visual.vertex_colors, export.uncertainty_colors(sigma))
    assert export.prediction_mesh(prediction, 1, with_uncertainty=False).visual.kind is None


def test_prediction_mesh_rejects_bad_index(prediction):
    with pytest.raises(MeshrecError, match=r"\[0, 1\]"):
        export.prediction_mesh(prediction, 2)
    assert export.prediction_mesh(prediction, -1).volume > 0  # python-style negative index


def test_vertex_uncertainty_is_the_nearest_keypoints_sigma():
    joints = torch.full((21, 3), 100.0)  # far away: never nearest
    joints[0], joints[1] = torch.tensor([0.0, 0, 0]), torch.tensor([1.0, 0, 0])
    variance = torch.zeros(21)
    variance[0], variance[1] = 4.0, 9.0
    vertices = torch.tensor([[0.1, 0, 0], [0.9, 0, 0], [0.4, 0, 0]])
    sigma = export.vertex_uncertainty(variance, vertices, joints)
    torch.testing.assert_close(sigma, torch.tensor([2.0, 3.0, 2.0]))
    # leading batch dims, float64 kept
    batched = export.vertex_uncertainty(
        variance.double().expand(4, 21), vertices.double().expand(4, 3, 3), joints.double().expand(4, 21, 3)
    )
    assert batched.shape == (4, 3) and batched.dtype == torch.float64


def test_vertex_uncertainty_rejects_mismatched_shapes():
    with pytest.raises(MeshrecError, match="joint_variance must have shape"):
        export.vertex_uncertainty(torch.ones(2, 21), torch.zeros(5, 3), torch.zeros(21, 3))
    with pytest.raises(MeshrecError, match=r"joints must have shape \(21, 3\)"):
        export.vertex_uncertainty(torch.ones(21), torch.zeros(5, 3), torch.zeros(16, 3))
    with pytest.raises(MeshrecError, match="non-negative"):
        export.vertex_uncertainty(-torch.ones(21), torch.zeros(5, 3), torch.zeros(21, 3))


def test_uncertainty_colors_low_is_cool_high_is_warm():
    colors = export.uncertainty_colors(np.array([0.0, 0.005, 0.01, 0.02]), vmax=0.01)
    assert colors.shape == (4, 4) and colors.dtype == np.uint8
    assert colors[0, 2] > colors[0, 0]  # viridis 0: blue-purple
    assert colors[2, 0] > colors[2, 2]  # viridis 1: yellow
    np.testing.assert_array_equal(colors[2], colors[3])  # above vmax: clipped
    assert (colors[:, 3] == 255).all()
    np.testing.assert_array_equal(export.uncertainty_colors(np.zeros(3)), export.uncertainty_colors(np.zeros(3), vmax=1.0))
    with pytest.raises(MeshrecError, match="finite"):
        export.uncertainty_colors(np.array([np.nan]))
    with pytest.raises(MeshrecError, match="vmax"):
        export.uncertainty_colors(np.ones(3), vmax=0.0)


def test_save_mesh_is_atomic(tmp_path, open_hand, monkeypatch):
    vertices, faces = open_hand
    path = tmp_path / "hand.ply"
    export.save_mesh(path, vertices, faces)
    before = path.read_bytes()

    def failing_replace(source, destination):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(OSError, match="disk full"):
        export.save_mesh(path, vertices * 2, faces)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["hand.ply"]  # no temporary file left


def test_overwrite_false_refuses_existing_file(tmp_path, open_hand):
    path = export.save_mesh(tmp_path / "hand.obj", *open_hand)
    before = path.read_bytes()
    with pytest.raises(FileExistsError):
        export.save_mesh(path, open_hand[0] * 2, open_hand[1], overwrite=False)
    assert path.read_bytes() == before
    export.save_mesh(tmp_path / "new.obj", *open_hand, overwrite=False)


def test_save_mesh_from_a_trimesh_keeps_its_colours(tmp_path, prediction):
    mesh = export.prediction_mesh(prediction, 0)
    loaded = _load(export.save_mesh(tmp_path / "hand.glb", mesh=mesh))
    np.testing.assert_array_equal(loaded.visual.vertex_colors, mesh.visual.vertex_colors)
    np.testing.assert_allclose(loaded.vertices, mesh.vertices, atol=1e-6)


@pytest.mark.parametrize(
    "vertices, faces, colors, message",
    [
        (np.zeros((4, 2)), np.array([[0, 1, 2]]), None, r"vertices must have shape \(V, 3\).*\(4, 2\)"),
        (np.array([[np.nan, 0, 0], [1, 0, 0], [0, 1, 0]]), np.array([[0, 1, 2]]), None, "NaN or Inf.*first: \\[0\\]"),
        (np.array([[np.inf, 0, 0], [1, 0, 0], [0, 1, 0]]), np.array([[0, 1, 2]]), None, "NaN or Inf"),
        (np.eye(3), np.array([[0, 1, 3]]), None, r"\[0, 2\], got ids in \[0, 3\]"),
        (np.eye(3), np.array([[-1, 1, 2]]), None, r"got ids in \[-1, 2\]"),
        (np.eye(3), np.array([[0, 1]]), None, r"faces must have shape \(F, 3\).*\(1, 2\)"),
        (np.eye(3), np.array([[0.0, 1, 2]]), None, "faces must be integer"),
        (np.eye(3, dtype=np.int64), np.array([[0, 1, 2]]), None, "floating point"),
        (np.eye(3), np.array([[0, 1, 2]]), np.zeros((2, 3)), r"vertex_colors must have shape \(3, 3\) or \(3, 4\), got \(2, 3\)"),
        (np.eye(3), np.array([[0, 1, 2]]), np.full((3, 3), 2.0), r"in \[0, 1\]"),
    ],
)
def test_save_mesh_rejects_bad_inputs(tmp_path, vertices, faces, colors, message):
    with pytest.raises(MeshrecError, match=message):
        export.save_mesh(tmp_path / "bad.ply", vertices, faces, vertex_colors=colors)
    assert not any(tmp_path.iterdir())


def test_save_mesh_rejects_unknown_suffix_and_missing_arguments(tmp_path, open_hand):
    with pytest.raises(MeshrecError, match=r"\.obj, \.ply, \.glb"):
        export.save_mesh(tmp_path / "hand.stl", *open_hand)
    with pytest.raises(MeshrecError, match="either"):
        export.save_mesh(tmp_path / "hand.obj")
    with pytest.raises(MeshrecError, match="both vertices and faces"):
        export.save_mesh(tmp_path / "hand.obj", open_hand[0])
    with pytest.raises(MeshrecError, match="not both"):
        export.save_mesh(tmp_path / "hand.obj", *open_hand, mesh=export.mesh_to_trimesh(*open_hand))
    assert not any(tmp_path.iterdir())


def test_save_prediction_json(tmp_path, prediction):
    path = export.save_prediction_json(tmp_path / "left.json", prediction, 1)
    record = json.loads(path.read_text())
    assert record["format"] == export.PREDICTION_JSON_FORMAT
    assert record["side"] == "left" and record["image_size"] == [64, 64]
    np.testing.assert_allclose(record["joints3d"], prediction.joints[1].numpy(), rtol=0, atol=1e-7)
    np.testing.assert_allclose(record["joints2d"], prediction.joints2d[1].numpy(), rtol=0, atol=1e-4)
    np.testing.assert_allclose(record["joint_variance"], prediction.joint_variance[1].numpy(), rtol=1e-6)
    np.testing.assert_allclose(np.square(record["joint_sigma"]), record["joint_variance"], rtol=1e-6)
    np.testing.assert_allclose(record["K"], prediction.K[1].numpy())
    np.testing.assert_allclose(record["root"], prediction.root[1].numpy())
    assert record["passes_used"] == int(prediction.passes_used[1])
    assert len(record["joint_names"]) == 21 and len(record["keypoints2d"]) == 21
    assert all(type(value) is float for row in record["joints3d"] for value in row)
    with pytest.raises(FileExistsError):
        export.save_prediction_json(path, prediction, 0, overwrite=False)
    with pytest.raises(MeshrecError, match=r"\.json"):
        export.save_prediction_json(tmp_path / "x.txt", prediction, 0)
    assert os.listdir(tmp_path) == ["left.json"]


def test_save_prediction_json_without_loop_writes_nulls(tmp_path, prediction):
    import dataclasses

    plain = dataclasses.replace(prediction, joint_variance=None, keypoints2d=None)
    record = json.loads(export.save_prediction_json(tmp_path / "p.json", plain, 0).read_text())
    assert record["joint_variance"] is None and record["joint_sigma"] is None and record["keypoints2d"] is None
    assert record["side"] == "right"
    assert export.prediction_mesh(plain, 0).visual.kind is None


def test_import_meshrec_export_does_not_import_trimesh_or_matplotlib():
    import subprocess
    import sys

    code = "import sys, meshrec.export; print('trimesh' in sys.modules, 'matplotlib' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.split() == ["False", "False"]
