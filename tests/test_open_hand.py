"""The committed open hand asset, and its rebuild from the MakeHuman assets.

Tests on the committed ``manolayer/assets/open_hand_right.npz`` never skip; those that
rebuild it need ``../shared/makehuman`` next to the repository and skip without it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from manolayer.build_open_hand import (
    DECIMETRES_TO_METRES,
    LICENSE_FILE_NAME,
    MANO_JOINT_BONES,
    build_open_hand,
    read_makehuman_assets,
    write_open_hand,
)
from manolayer.io import OPEN_HAND_PATH, load_mano

MAKEHUMAN_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "makehuman"
needs_makehuman = pytest.mark.skipif(
    not MAKEHUMAN_DIR.is_dir(), reason=f"MakeHuman assets not found at {MAKEHUMAN_DIR}; they are needed to rebuild"
)

INDEX_KNUCKLE, MIDDLE_KNUCKLE, LITTLE_KNUCKLE = 1, 4, 7
DISTAL_JOINTS = (15, 3, 6, 12, 9)  # thumb, index, middle, ring, little: the fingertip order


@pytest.fixture(scope="module")
def hand():
    return load_mano(OPEN_HAND_PATH)


def _components(num_vertices: int, faces: np.ndarray) -> int:
    parent = np.arange(num_vertices)

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    for a, b, c in faces:
        for u, v in ((a, b), (b, c)):
            parent[root(u)] = root(v)
    return len({root(i) for i in range(num_vertices)})


def _hand_length(vertices: np.ndarray, joints: np.ndarray, middle_tip: int) -> float:
    return float(np.linalg.norm(vertices[middle_tip] - joints[0]))


# --------------------------------------------------------------------------- the committed asset


def test_mesh_size_and_triangles(hand):
    assert 700 <= hand.num_vertices <= 2000
    assert hand.faces.shape[1] == 3
    assert np.array_equal(np.unique(hand.faces), np.arange(hand.num_vertices)), "every vertex is used by a face"


def test_single_connected_component(hand):
    assert _components(hand.num_vertices, hand.faces) == 1


def test_winding_is_consistent_and_outward(hand):
    directed = np.concatenate([hand.faces[:, [0, 1]], hand.faces[:, [1, 2]], hand.faces[:, [2, 0]]])
    # consistent winding: a shared edge is walked once in each direction, never twice the same way
    assert len(np.unique(directed, axis=0)) == len(directed)
    reverse = {tuple(edge) for edge in directed[:, ::-1]}
    boundary = np.array([edge for edge in directed if tuple(edge) not in reverse])
    assert len(boundary) > 0, "the hand is open at the wrist cut"
    # close the opening with a fan to its centroid, then the signed volume must be positive (normals outward)
    vertices = np.vstack([hand.v_template, hand.v_template[boundary[:, 0]].mean(0)])
    cap = np.column_stack([boundary[:, 1], boundary[:, 0], np.full(len(boundary), len(vertices) - 1)])
    a, b, c = (vertices[np.concatenate([hand.faces, cap])[:, k]] for k in range(3))
    volume = np.einsum("ij,ij->i", a, np.cross(b, c)).sum() / 6
    assert volume > 1e-4, f"closed-up volume {volume * 1e6:.0f} cm^3; expected a positive hand-sized volume"


def test_skin_weights_rows_sum_to_one(hand):
    np.testing.assert_allclose(hand.weights.sum(1), 1.0, atol=1e-12)
    assert hand.weights.min() >= 0


def test_joint_tree_frame_and_regressor(hand):
    assert hand.parents.tolist() == [-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14]
    np.testing.assert_allclose(hand.J_regressor.sum(1), 1.0, atol=1e-12)
    joints = hand.rest_joints
    np.testing.assert_allclose(joints[0], 0.0, atol=1e-9)
    # fingers along -x: the middle knuckle lies on the -x axis; thumb side +z
    assert joints[MIDDLE_KNUCKLE, 0] < -0.05
    np.testing.assert_allclose(joints[MIDDLE_KNUCKLE, 1:], 0.0, atol=1e-9)
    assert joints[INDEX_KNUCKLE, 2] > joints[LITTLE_KNUCKLE, 2]
    assert hand.v_template[hand.fingertip_ids[0], 2] > joints[INDEX_KNUCKLE, 2]
    # palm faces -y: the slightly curled rest fingers bend towards the palm
    assert (hand.v_template[hand.fingertip_ids, 1] < joints[[13, 1, 4, 10, 7], 1]).all()


def test_fingertips_are_most_distal(hand):
    joints = hand.rest_joints
    segment = hand.weights.argmax(1)
    for tip, joint in zip(hand.fingertip_ids, DISTAL_JOINTS):
        direction = joints[joint] - joints[hand.parents[joint]]
        finger = np.flatnonzero(segment == joint)
        reach = (hand.v_template[finger] - joints[joint]) @ direction
        assert tip in finger
        assert finger[reach.argmax()] == tip


def test_shapedirs_are_orthogonal_and_plausible(hand):
    basis = hand.shapedirs.reshape(-1, hand.num_betas)
    used = np.abs(basis).max(0) > 0
    assert hand.num_betas == 10 and used[:4].all() and not used[4:].any()
    gram = basis.T @ basis
    off_diagonal = gram - np.diag(np.diag(gram))
    assert np.abs(off_diagonal).max() < 1e-6 * np.diag(gram).max()

    middle_tip = hand.fingertip_ids[2]
    rest_length = _hand_length(hand.v_template, hand.rest_joints, middle_tip)
    assert 0.15 < rest_length < 0.21
    for k in np.flatnonzero(used):
        for beta in (-3.0, 3.0):
            betas = np.zeros(hand.num_betas)
            betas[k] = beta
            vertices = hand.v_template + hand.shapedirs @ betas
            joints = hand.J_regressor @ vertices
            np.testing.assert_allclose(joints[0], 0.0, atol=1e-8)  # shapes keep the wrist in place
            ratio = _hand_length(vertices, joints, middle_tip) / rest_length
            assert 0.7 <= ratio <= 1.3, f"beta[{k}] = {beta} gives {ratio:.2f}x the rest hand length"


def test_posedirs_zero_and_pose_pca_orthonormal(hand):
    assert hand.posedirs.shape == (hand.num_vertices, 3, 135) and not hand.posedirs.any()
    assert hand.hands_components.shape == (45, 45) and hand.hands_mean.shape == (45,)
    np.testing.assert_allclose(hand.hands_components @ hand.hands_components.T, np.eye(45), atol=1e-6)


def test_build_names_missing_assets(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        build_open_hand(tmp_path / "absent")
    with pytest.raises(FileNotFoundError, match="base.obj"):
        build_open_hand(tmp_path)


# --------------------------------------------------------------------------- rebuilding from MakeHuman


@needs_makehuman
def test_joints_match_makehuman_helpers(hand):
    assets = read_makehuman_assets(MAKEHUMAN_DIR)
    helpers = np.stack([assets.bone_heads[bone] for bone in MANO_JOINT_BONES]) * DECIMETRES_TO_METRES
    joints = hand.rest_joints
    # the asset is the helpers moved rigidly: compare all pairwise distances, frame-free
    helper_distances = np.linalg.norm(helpers[:, None] - helpers[None], axis=-1)
    joint_distances = np.linalg.norm(joints[:, None] - joints[None], axis=-1)
    np.testing.assert_allclose(joint_distances, helper_distances, atol=1e-3)


@pytest.mark.slow
@needs_makehuman
def test_rebuild_gives_identical_bytes(tmp_path):
    rebuilt = write_open_hand(MAKEHUMAN_DIR, tmp_path)
    assert rebuilt.read_bytes() == OPEN_HAND_PATH.read_bytes(), "rebuild the committed asset with build-open-hand"
    assert (tmp_path / LICENSE_FILE_NAME).read_text() == (OPEN_HAND_PATH.parent / LICENSE_FILE_NAME).read_text()


def test_zero_pose_gives_the_template_and_sampled_poses_stay_finite():
    import torch

    from manolayer import ManoLayer
    from manolayer.sampler import sample_poses

    layer = ManoLayer(use_pca=False, flat_hand_mean=True, dtype=torch.float64)
    rest = layer(torch.zeros(1, 3, dtype=torch.float64), torch.zeros(1, 45, dtype=torch.float64))
    torch.testing.assert_close(rest.vertices[0], torch.as_tensor(layer.model.v_template), atol=1e-12, rtol=0)
    for mode in ("open", "grasp", "pointing", "fist", "mixture"):
        posed = layer(hand_pose=sample_poses(64, seed=1, mode=mode, dtype=torch.float64), betas=3 * torch.randn(64, 10, dtype=torch.float64))
        assert torch.isfinite(posed.vertices).all() and torch.isfinite(posed.joints).all()
