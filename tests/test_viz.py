"""Hand drawing (meshrec.viz) and the ``render-hand`` command, as smoke tests."""

from __future__ import annotations

import argparse
import os
import stat

import numpy as np
import pytest

from meshrec import viz
from meshrec.errors import MeshrecError

TETRAHEDRON_VERTICES = np.array([[0.0, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 0.1, 0.0], [0.0, 0.0, 0.1]])
# counter-clockwise seen from outside
TETRAHEDRON_FACES = np.array([[0, 2, 1], [0, 1, 3], [0, 3, 2], [1, 2, 3]])


def test_face_shading_is_lambert_from_outward_normals():
    brightness = viz.face_shading(TETRAHEDRON_VERTICES, TETRAHEDRON_FACES, light=np.array([0.0, 0.0, -1.0]))
    # face 0 lies in z = 0 and faces -z: fully lit; faces 1 and 2 are edge-on; face 3 faces away
    np.testing.assert_allclose(brightness, [1.0, viz.AMBIENT, viz.AMBIENT, viz.AMBIENT], atol=1e-12)


def test_hand_gallery_writes_one_image_atomically(tmp_path):
    joints = np.random.default_rng(0).normal(scale=0.05, size=(21, 3))
    path = viz.hand_gallery(
        [(TETRAHEDRON_VERTICES, TETRAHEDRON_FACES), (TETRAHEDRON_VERTICES * 2, TETRAHEDRON_FACES, joints)],
        ["small", "large"],
        tmp_path / "out" / "gallery.png",
        views=[viz.PALM_VIEW],
        panel_inches=1.0,
        dpi=40,
    )
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert os.listdir(path.parent) == ["gallery.png"]  # no temporary file left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask


def test_hand_gallery_rejects_bad_inputs(tmp_path):
    with pytest.raises(MeshrecError, match="titles"):
        viz.hand_gallery([(TETRAHEDRON_VERTICES, TETRAHEDRON_FACES)], ["a", "b"], tmp_path / "x.png")
    with pytest.raises(MeshrecError, match=r"\(N, 3\)"):
        viz.hand_gallery([(TETRAHEDRON_VERTICES[:, :2], TETRAHEDRON_FACES)], None, tmp_path / "x.png")
    with pytest.raises(MeshrecError, match="faces index"):
        viz.hand_gallery([(TETRAHEDRON_VERTICES, TETRAHEDRON_FACES + 4)], None, tmp_path / "x.png")
    assert not any(tmp_path.iterdir())


def test_render_hand_command_draws_a_left_hand_from_a_right_file(tmp_path, right_pickle, capsys):
    from pipelines import render_hand

    parser = argparse.ArgumentParser()
    render_hand.register(parser.add_subparsers(dest="command"), "render-hand")
    out = tmp_path / "fist.png"
    args = parser.parse_args(
        ["render-hand", "--pose", "fist", "--num", "1", "--side", "left", "--model", str(right_pickle), "--out", str(out)]
    )
    assert args.func(args) == 0
    assert out.read_bytes()[:4] == b"\x89PNG"
    assert "2 hands, left" in capsys.readouterr().out


# --------------------------------------------------------------------------- keypoints, overlays, plotly


@pytest.fixture(scope="module")
def hand_in_view():
    """The open hand, palm towards a camera 0.45 m away, with K of a 48 x 64 image."""
    from manolayer.io import load_mano
    from meshrec.geometry.camera import default_intrinsics

    model = load_mano(None)
    palm_to_camera = np.array([[1.0, 0, 0], [0, 0, -1], [0, 1, 0]])  # a rotation: windings kept
    vertices = model.v_template @ palm_to_camera.T
    vertices = vertices - vertices.mean(0) + [0.0, 0.0, 0.45]
    K = default_intrinsics((48, 64), batch=1)[0].double().numpy()
    return vertices, model.faces, K


def _axes():
    from matplotlib.figure import Figure

    return Figure().add_subplot()


def test_draw_keypoints_one_line_per_finger_hidden_points_break_lines():
    joints2d = np.random.default_rng(0).uniform(0, 60, size=(21, 2))
    ax = _axes()
    viz.draw_keypoints(ax, joints2d)
    assert len(ax.lines) == 5
    np.testing.assert_allclose(ax.lines[0].get_xydata(), joints2d[[0, 1, 2, 3, 4]])  # thumb from the wrist
    assert ax.lines[0].get_color() == viz.FINGER_COLOURS["thumb"]

    visible = np.ones(21, dtype=bool)
    visible[3] = False
    ax = _axes()
    viz.draw_keypoints(ax, joints2d, visible=visible, color="white")
    thumb = ax.lines[0].get_xydata()
    assert np.isnan(thumb[3]).all() and np.isfinite(np.delete(thumb, 3, axis=0)).all()
    assert {line.get_color() for line in ax.lines} == {"white"}


def test_draw_keypoints_rejects_bad_shapes():
    with pytest.raises(MeshrecError, match="21"):
        viz.draw_keypoints(_axes(), np.zeros((16, 2)))
    with pytest.raises(MeshrecError, match=r"visible must have shape \(21,\)"):
        viz.draw_keypoints(_axes(), np.zeros((21, 2)), visible=np.ones(20, dtype=bool))


def _gl_available() -> bool:
    from meshrec.render import gl_available

    return gl_available()


@pytest.mark.parametrize(
    "renderer",
    ["matplotlib", pytest.param("gl", marks=pytest.mark.skipif(not _gl_available(), reason="no OpenGL (EGL) here"))],
)
def test_overlay_changes_mesh_pixels_only(hand_in_view, renderer):
    vertices, faces, K = hand_in_view
    image = np.random.default_rng(0).integers(0, 256, size=(48, 64, 3), dtype=np.uint8)
    out = viz.overlay_mesh(image, vertices, faces, K, alpha=0.5, renderer=renderer)
    assert out.shape == (48, 64, 3) and out.dtype == np.uint8
    changed = (out != image).any(-1)
    projected = vertices @ K.T
    pixels = projected[:, :2] / projected[:, 2:]
    # the hand's silhouette: a good part of the image, and nothing outside its projected box
    assert 0.2 < changed.mean() < 0.9
    rows, columns = np.nonzero(changed)
    assert columns.min() >= np.floor(pixels[:, 0].min()) and columns.max() <= np.ceil(pixels[:, 0].max())
    assert rows.min() >= max(np.floor(pixels[:, 1].min()), 0) and rows.max() <= np.ceil(pixels[:, 1].max())
    # alpha = 0 leaves the image, alpha = 1 shows the render only
    np.testing.assert_array_equal(viz.overlay_mesh(image, vertices, faces, K, alpha=0.0, renderer=renderer), image)
    opaque = viz.overlay_mesh(image, vertices, faces, K, alpha=1.0, renderer=renderer)
    assert ((opaque != image).any(-1) == changed).mean() > 0.99


@pytest.mark.skipif(not _gl_available(), reason="no OpenGL (EGL) here")
def test_overlay_matplotlib_fallback_matches_gl_silhouette(hand_in_view):
    vertices, faces, K = hand_in_view
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    gl = (viz.overlay_mesh(image, vertices, faces, K, alpha=1.0, renderer="gl") != 0).any(-1)
    fallback = (viz.overlay_mesh(image, vertices, faces, K, alpha=1.0, renderer="matplotlib") != 0).any(-1)
    assert (gl & fallback).sum() / (gl | fallback).sum() > 0.93


def test_overlay_accepts_chw_float_images_and_vertex_colours(hand_in_view):
    import torch

    vertices, faces, K = hand_in_view
    chw = torch.full((3, 48, 64), 0.5)
    colours = np.zeros((len(vertices), 4), dtype=np.uint8)
    colours[:, 2] = colours[:, 3] = 255  # pure blue albedo
    out = viz.overlay_mesh(chw, torch.from_numpy(vertices), torch.from_numpy(faces), torch.from_numpy(K),
                           alpha=1.0, colors=colours, renderer="matplotlib")  # fmt: skip
    assert out.shape == (48, 64, 3)
    covered = (out != 128).any(-1)
    assert covered.any() and (out[covered][:, :2] == 0).all() and (out[covered][:, 2] > 0).all()


def test_overlay_rejects_bad_inputs(hand_in_view):
    vertices, faces, K = hand_in_view
    image = np.zeros((48, 64, 3), dtype=np.uint8)
    with pytest.raises(MeshrecError, match=r"\(H, W, 3\) or \(3, H, W\)"):
        viz.overlay_mesh(np.zeros((48, 64)), vertices, faces, K)
    with pytest.raises(MeshrecError, match=r"\[0, 1\]"):
        viz.overlay_mesh(np.full((48, 64, 3), 2.0), vertices, faces, K)
    with pytest.raises(MeshrecError, match="alpha"):
        viz.overlay_mesh(image, vertices, faces, K, alpha=1.5)
    with pytest.raises(MeshrecError, match="renderer"):
        viz.overlay_mesh(image, vertices, faces, K, renderer="vulkan")
    with pytest.raises(MeshrecError, match=r"K must have shape \(3, 3\)"):
        viz.overlay_mesh(image, vertices, faces, K[None])
    with pytest.raises(MeshrecError, match="colors must have shape"):
        viz.overlay_mesh(image, vertices, faces, K, colors=np.zeros((5, 3)))


def test_plot_prediction_draws_image_and_skeleton(prediction):
    import torch

    ax = viz.plot_prediction(prediction, 1, image=torch.rand(3, 64, 64), renderer="matplotlib")
    assert len(ax.images) == 1 and ax.images[0].get_array().shape == (64, 64, 3)
    assert len(ax.lines) == 5
    assert ax.get_title().startswith(f"left, {int(prediction.passes_used[1])} passes, mean σ")
    ax = viz.plot_prediction(prediction, 0, ax=_axes(), keypoints=False, renderer="matplotlib")
    assert len(ax.lines) == 0 and ax.get_title().startswith("right")
    with pytest.raises(MeshrecError, match="64 x 64"):
        viz.plot_prediction(prediction, 0, image=np.zeros((32, 32, 3), dtype=np.uint8))
    with pytest.raises(MeshrecError, match="index"):
        viz.plot_prediction(prediction, 5)


def test_mesh_figure_3d_traces(hand_in_view):
    import plotly.graph_objects as go

    vertices, faces, _ = hand_in_view
    figure = viz.mesh_figure_3d(vertices, faces, title="hand")
    assert isinstance(figure, go.Figure) and len(figure.data) == 1
    mesh = figure.data[0]
    assert isinstance(mesh, go.Mesh3d) and len(mesh.x) == len(vertices) and len(mesh.i) == len(faces)
    np.testing.assert_array_equal(np.stack([mesh.i, mesh.j, mesh.k], axis=1), faces)
    assert mesh.intensity is None and figure.layout.title.text == "hand"

    joints = np.random.default_rng(0).normal(size=(21, 3))
    values = np.linspace(0, 5, len(vertices))
    figure = viz.mesh_figure_3d(vertices, faces, joints=joints, vertex_values=values, values_label="σ (mm)")
    assert len(figure.data) == 6 and all(isinstance(t, go.Scatter3d) for t in figure.data[1:])
    assert [t.name for t in figure.data[1:]] == ["thumb", "index", "middle", "ring", "little"]
    np.testing.assert_allclose(np.stack([figure.data[1].x, figure.data[1].y, figure.data[1].z], 1), joints[[0, 1, 2, 3, 4]])
    np.testing.assert_allclose(figure.data[0].intensity, values)
    assert figure.data[0].colorbar.title.text == "σ (mm)" and figure.data[0].cmin == 0 and figure.data[0].cmax == 5


def test_mesh_figure_3d_rejects_bad_values(hand_in_view):
    vertices, faces, _ = hand_in_view
    with pytest.raises(MeshrecError, match=rf"\({len(vertices)},\)"):
        viz.mesh_figure_3d(vertices, faces, vertex_values=np.zeros(3))
    with pytest.raises(MeshrecError, match="21"):
        viz.mesh_figure_3d(vertices, faces, joints=np.zeros((16, 3)))


def test_prediction_figure_3d_colours_by_uncertainty_in_mm(prediction):
    from meshrec.export import vertex_uncertainty

    figure = viz.prediction_figure_3d(prediction, 1)
    expected = 1000 * vertex_uncertainty(prediction.joint_variance[1], prediction.vertices[1], prediction.joints[1])
    np.testing.assert_allclose(figure.data[0].intensity, expected.numpy(), rtol=1e-6)
    mesh = figure.data[0]
    np.testing.assert_array_equal(np.stack([mesh.i, mesh.j, mesh.k], 1), prediction.faces_of(1).numpy())
    assert len(figure.data) == 6
    assert viz.prediction_figure_3d(prediction, 0, uncertainty=False, joints=False).data[0].intensity is None


def test_refinement_steps_figure_has_one_frame_per_stage(prediction):
    stages = prediction.stage_vertices()
    assert list(stages)[:2] == ["global", "coarse_to_fine"] and len(stages) >= 3
    figure = viz.refinement_steps_figure(prediction, 1)
    assert [frame.name for frame in figure.frames] == list(stages)
    assert [step.label for step in figure.layout.sliders[0].steps] == list(stages)
    assert len(figure.data) == 1
    for frame, vertices in zip(figure.frames, stages.values()):
        mesh = frame.data[0]
        np.testing.assert_allclose(np.stack([mesh.x, mesh.y, mesh.z], 1), vertices[1].double().numpy())
        assert len(mesh.intensity) == vertices.shape[1]
    np.testing.assert_array_equal(figure.frames[0].data[0].intensity, 0.0)
    moved = 1000 * (stages["coarse_to_fine"][1] - stages["global"][1]).double().norm(dim=-1)
    np.testing.assert_allclose(figure.frames[1].data[0].intensity, moved.numpy(), rtol=1e-6)
    # one colour scale and fixed axes for all frames
    assert len({frame.data[0].cmax for frame in figure.frames}) == 1
    assert figure.layout.scene.xaxis.autorange is False and figure.layout.scene.aspectmode == "cube"


def test_refinement_steps_figure_matplotlib_grid(prediction):
    figure = viz.refinement_steps_figure(prediction, 0, interactive=False)
    names = list(prediction.stage_vertices())
    assert len(figure.axes) == len(names)
    assert [ax.get_title().split("\n")[0] for ax in figure.axes] == names


def test_import_meshrec_viz_stays_light():
    import subprocess
    import sys

    code = "import sys, meshrec.viz; print(any(m in sys.modules for m in ('matplotlib', 'plotly', 'trimesh', 'moderngl')))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


def test_contact_sheet_tiles_pictures_with_their_labels():
    from meshrec.viz import contact_sheet

    wide, tall = np.full((50, 100, 3), 200, np.uint8), np.full((100, 50, 3), 90, np.uint8)
    sheet = contact_sheet([wide, tall, wide], ["a", "b", "c"], cell=64, gap=4)
    assert sheet.shape == (2 * (64 + 16 + 4) + 4, 2 * (64 + 4) + 4, 3) and sheet.dtype == np.uint8
    assert (sheet[4 + 16: 4 + 48, 4: 68] == 200).all()  # the wide picture, fitted and centred in its cell
    with pytest.raises(MeshrecError, match="2 images but 1 labels"):
        contact_sheet([wide, tall], ["a"])
    with pytest.raises(MeshrecError, match="at least one image"):
        contact_sheet([])
