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
