"""The anatomical pose sampler: axes, limits, modes, reproducibility, PCA."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from manolayer import sampler
from manolayer.errors import ManoError
from manolayer.io import OPEN_HAND_PATH
from manolayer.rotations import axis_angle_to_matrix

MANO_LIKE_RIGHT = sampler.MANO_LIKE_REST_JOINTS
MIRROR_X = np.array([-1.0, 1.0, 1.0])
# MANO's rule for mirroring a right-hand pose to the left: (x, y, z) -> (x, -y, -z) per joint
POSE_MIRROR = torch.tensor([1.0, -1.0, -1.0], dtype=torch.float64).repeat(15)
BASE_MODES = ("open", "grasp", "pointing", "fist")
LONG_FINGER_JOINTS = list(range(12))


@pytest.fixture(scope="module")
def axes() -> sampler.HandAxes:
    return sampler.hand_axes(MANO_LIKE_RIGHT)


@pytest.fixture(scope="module")
def samples(axes) -> dict[str, torch.Tensor]:
    return {mode: sampler.sample_poses(2000, seed=3, mode=mode, axes=axes, dtype=torch.float64) for mode in sampler.POSE_MODES}


def degrees(poses: torch.Tensor, axes: sampler.HandAxes) -> torch.Tensor:
    return sampler.anatomical_angles(poses, axes).degrees()


# --------------------------------------------------------------------------- axes


def test_axes_follow_manos_right_hand_frame(axes):
    assert axes.side == "right"
    assert np.allclose(np.linalg.det(axes.frames), 1.0)
    assert np.allclose(axes.frames.transpose(0, 2, 1) @ axes.frames, np.eye(3), atol=1e-12)
    # "a positive rotation about +z flexes the four fingers; y is spread"
    assert (axes.flexion_axes[LONG_FINGER_JOINTS] @ [0, 0, 1]).min() > 0.75
    assert (axes.spread_axes[LONG_FINGER_JOINTS] @ [0, 1, 0]).min() > 0.95
    assert (axes.flexion_axes[[0, 3, 9]] @ [0, 0, 1]).min() > 0.95  # index, middle, ring knuckles


def test_positive_flexion_moves_every_bone_toward_the_palm(axes):
    palm, ulnar = np.array([0.0, -1.0, 0.0]), np.array([0.0, 0.0, -1.0])
    for joint in range(15):
        bone = axes.twist_axes[joint]  # along the bone for a right hand
        rotation = axis_angle_to_matrix(torch.as_tensor(axes.flexion_axes[joint] * 0.3)).numpy()
        moved = rotation @ bone - bone
        if joint < 12:
            assert moved @ palm > 0.9 * np.linalg.norm(moved), joint
        else:  # the thumb flexes across the palm toward the little finger ...
            assert moved @ ulnar > 0.2 * np.linalg.norm(moved), joint
            if joint > 12:  # ... and its MCP and IP also toward the palm
                assert moved @ palm > 0.1 * np.linalg.norm(moved), joint


def test_positive_spread_moves_long_fingers_toward_the_thumb(axes):
    for joint in (0, 3, 6, 9):  # knuckles
        bone = axes.twist_axes[joint]
        rotation = axis_angle_to_matrix(torch.as_tensor(axes.spread_axes[joint] * 0.2)).numpy()
        assert (rotation @ bone - bone) @ [0, 0, 1] > 0


def test_left_hand_axes_are_the_mirror_image(axes):
    left = sampler.hand_axes(MANO_LIKE_RIGHT * MIRROR_X)
    assert left.side == "left"
    # axes are pseudo-vectors: under x -> -x they map (x, y, z) -> (x, -y, -z)
    np.testing.assert_allclose(left.frames, axes.frames * np.array([1.0, -1.0, -1.0])[:, None], atol=1e-12)
    assert sampler.hand_axes(MANO_LIKE_RIGHT * MIRROR_X, side="left").frames == pytest.approx(left.frames)


def test_same_seed_gives_mirrored_poses_on_the_two_sides(axes):
    left = sampler.hand_axes(MANO_LIKE_RIGHT * MIRROR_X)
    right_poses = sampler.sample_poses(50, seed=5, axes=axes, dtype=torch.float64)
    left_poses = sampler.sample_poses(50, seed=5, axes=left, dtype=torch.float64)
    torch.testing.assert_close(left_poses, right_poses * POSE_MIRROR, rtol=0, atol=1e-12)


def test_explicit_side_makes_axes_follow_a_rotated_hand(axes):
    rotation = axis_angle_to_matrix(torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)).numpy()
    rotated = sampler.hand_axes(MANO_LIKE_RIGHT @ rotation.T, side="right")
    np.testing.assert_allclose(rotated.frames, rotation @ axes.frames, atol=1e-12)


def test_axes_reject_bad_inputs():
    with pytest.raises(ManoError, match=r"\(16, 3\)"):
        sampler.hand_axes(np.zeros((21, 3)))
    with pytest.raises(ManoError, match="kinematic tree"):
        sampler.hand_axes(MANO_LIKE_RIGHT, parents=[-1] + [0] * 15)
    with pytest.raises(ManoError, match="side"):
        sampler.hand_axes(MANO_LIKE_RIGHT, side="up")
    palm_along_x = MANO_LIKE_RIGHT[:, [1, 0, 2]]  # the palm plane no longer faces y
    with pytest.raises(ManoError, match="pass side="):
        sampler.hand_axes(palm_along_x)


# --------------------------------------------------------------------------- composition


def test_angles_round_trip_through_axis_angle(axes):
    generator = torch.Generator().manual_seed(0)
    angles = torch.rand(300, 15, 3, generator=generator, dtype=torch.float64)
    angles = angles * torch.tensor([2.6, 1.2, 1.2], dtype=torch.float64) - torch.tensor([0.6, 0.6, 0.6], dtype=torch.float64)
    poses = sampler.angles_to_hand_pose(angles, axes)
    torch.testing.assert_close(sampler.anatomical_angles(poses, axes).stacked(), angles, rtol=0, atol=1e-9)


def test_composition_multiplies_rotations_instead_of_adding_vectors(axes):
    angles = torch.tensor([[1.2, 0.25, -0.1]] * 15, dtype=torch.float64)
    pose = sampler.angles_to_hand_pose(angles, axes).view(15, 3)
    frames = torch.tensor(axes.frames)
    expected = (
        axis_angle_to_matrix(frames[:, :, 2] * 0.25)
        @ axis_angle_to_matrix(frames[:, :, 0] * -0.1)
        @ axis_angle_to_matrix(frames[:, :, 1] * 1.2)
    )
    torch.testing.assert_close(axis_angle_to_matrix(pose), expected, rtol=0, atol=1e-12)
    summed = (frames * angles[:, None, [1, 2, 0]].transpose(1, 2)).sum(-1)  # not the same thing
    assert (axis_angle_to_matrix(summed) - expected).abs().max() > 1e-2


# --------------------------------------------------------------------------- sampling


def test_same_seed_same_poses_and_different_seeds_differ(axes):
    first = sampler.sample_poses(64, seed=11, axes=axes)
    torch.testing.assert_close(first, sampler.sample_poses(64, seed=11, axes=axes), rtol=0, atol=0)
    assert not torch.equal(first, sampler.sample_poses(64, seed=12, axes=axes))
    generator = torch.Generator().manual_seed(11)
    torch.testing.assert_close(first, sampler.sample_poses(64, generator=generator, axes=axes), rtol=0, atol=0)
    # a batch is its own draw, but the first rows do not depend on the dtype asked for
    as_double = sampler.sample_poses(64, seed=11, axes=axes, dtype=torch.float64)
    torch.testing.assert_close(first.double(), as_double, rtol=0, atol=1e-6)


def test_shape_dtype_device(axes):
    for dtype in (torch.float32, torch.float64):
        poses = sampler.sample_poses(5, seed=0, mode="grasp", axes=axes, dtype=dtype, device="cpu")
        assert poses.shape == (5, 45) and poses.dtype == dtype and poses.device.type == "cpu"
    assert sampler.sample_poses(0, seed=0, axes=axes).shape == (0, 45)
    orient = sampler.sample_global_orient(7, seed=0, dtype=torch.float64)
    assert orient.shape == (7, 3) and orient.dtype == torch.float64


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_output_matches_cpu(axes):
    on_gpu = sampler.sample_poses(16, seed=2, axes=axes, device="cuda")
    assert on_gpu.device.type == "cuda"
    torch.testing.assert_close(on_gpu.cpu(), sampler.sample_poses(16, seed=2, axes=axes))


@pytest.mark.parametrize("mode", sampler.POSE_MODES)
def test_recovered_angles_stay_within_limits(samples, axes, mode):
    poses = samples[mode]
    assert torch.isfinite(poses).all()
    angles = degrees(poses, axes)
    limits = torch.as_tensor(np.rad2deg(sampler.limits_array()))
    assert (angles >= limits[..., 0] - 1e-6).all()
    assert (angles <= limits[..., 1] + 1e-6).all()
    assert sampler.limit_violation(poses, axes).max() < 1e-8


def test_dip_follows_two_thirds_of_pip(samples, axes):
    for mode in sampler.POSE_MODES:
        angles = degrees(samples[mode], axes)
        pip, dip = angles[:, [1, 4, 7, 10], 0], angles[:, [2, 5, 8, 11], 0]
        residual = (dip - sampler.DIP_PIP_RATIO * pip).abs()
        assert residual.mean() < 4.0, mode
        assert (residual < 10.0).float().mean() > 0.99, mode


def test_modes_differ_as_expected(samples, axes):
    flex = {mode: degrees(samples[mode], axes)[..., 0] for mode in sampler.POSE_MODES}
    knuckles_and_middles = [0, 1, 3, 4, 6, 7, 9, 10]
    total = {mode: flex[mode][:, knuckles_and_middles].mean().item() for mode in flex}
    assert total["fist"] > total["grasp"] + 10 > total["open"] + 40
    assert total["open"] < total["mixture"] < total["fist"]
    pointing = flex["pointing"]
    assert pointing[:, [0, 1]].mean() < 15 and pointing[:, [3, 4, 6, 7, 9, 10]].mean() > 60
    # the open hand fans out; the fist does not
    spread = {mode: degrees(samples[mode], axes)[..., 1] for mode in ("open", "fist")}
    index_minus_little = {mode: (s[:, 0] - s[:, 6]).mean().item() for mode, s in spread.items()}
    assert index_minus_little["open"] > 8 > index_minus_little["fist"]


def test_mixture_covers_more_than_one_mode(samples, axes):
    flex = degrees(samples["mixture"], axes)[..., 0]
    index_and_middle = flex[:, [0, 3]].mean(1)
    assert (index_and_middle < 20).float().mean() > 0.1
    assert (index_and_middle > 60).float().mean() > 0.1
    # fingers of one hand are not forced to agree
    assert (flex[:, 0] - flex[:, 6]).abs().max() > 60


def test_global_orient_is_uniform():
    orient = sampler.sample_global_orient(20000, seed=1, dtype=torch.float64)
    angle = orient.norm(dim=-1)
    assert torch.isfinite(orient).all() and angle.max() <= math.pi + 1e-9
    # the Haar measure has E[R] = 0 and angle density (1 - cos t) / pi, so E[t] = pi/2 + 2/pi
    assert axis_angle_to_matrix(orient).mean(0).abs().max() < 0.03
    assert abs(angle.mean().item() - (math.pi / 2 + 2 / math.pi)) < 0.03


def test_sampler_rejects_bad_arguments(axes):
    with pytest.raises(ManoError, match="mode must be one of"):
        sampler.sample_poses(2, seed=0, mode="wave", axes=axes)
    with pytest.raises(ManoError, match="seed or generator"):
        sampler.sample_poses(2, seed=0, generator=torch.Generator(), axes=axes)
    with pytest.raises(ManoError, match="non-negative"):
        sampler.sample_poses(-1, axes=axes)


def test_limit_violation_is_a_hinge_with_gradients(axes):
    angles = torch.zeros(1, 15, 3, dtype=torch.float64)
    angles[0, 1, 0] = math.radians(-20)  # index PIP bent backwards
    angles[0, 4, 0] = math.radians(80)  # middle PIP, inside its range
    pose = sampler.angles_to_hand_pose(angles, axes).requires_grad_(True)
    violation = sampler.limit_violation(pose, axes)
    assert violation[0, 1, 0].item() == pytest.approx(math.radians(20), abs=1e-9)
    violation[0, 1, 0] = 0
    assert violation.abs().max() < 1e-9
    sampler.limit_violation(pose, axes).square().sum().backward()
    assert torch.isfinite(pose.grad).all() and pose.grad.abs().sum() > 0


# --------------------------------------------------------------------------- PCA


def test_pose_pca_is_orthonormal_sorted_and_reconstructs(samples):
    poses = samples["mixture"]
    components, mean = sampler.fit_pose_pca(poses)
    assert components.shape == (45, 45) and mean.shape == (45,) and components.dtype == np.float64
    np.testing.assert_allclose(components @ components.T, np.eye(45), atol=1e-10)
    data = poses.numpy()
    coefficients = (data - mean) @ components.T
    np.testing.assert_allclose(mean + coefficients @ components, data, atol=1e-10)
    variances = coefficients.var(axis=0)
    assert np.all(np.diff(variances) <= 1e-12)
    largest = np.abs(components).argmax(axis=1)
    assert np.all(components[np.arange(45), largest] > 0)
    # a few components carry most of the variance, as in MANO's own PCA
    assert variances[:10].sum() / variances.sum() > 0.8
    again = sampler.fit_pose_pca(poses.numpy().copy())
    np.testing.assert_array_equal(again.components, components)


def test_pose_pca_rejects_wrong_shapes():
    with pytest.raises(ManoError, match=r"\(N, 45\)"):
        sampler.fit_pose_pca(np.zeros((10, 48)))


# --------------------------------------------------------------------------- default model


@pytest.mark.skipif(not OPEN_HAND_PATH.exists(), reason="open hand asset not built")
def test_default_axes_come_from_the_open_hand_and_flex_toward_the_palm():
    from manolayer import ManoLayer

    axes = sampler.hand_axes()
    assert axes.side == "right"
    assert (axes.flexion_axes[LONG_FINGER_JOINTS] @ [0, 0, 1]).min() > 0.7
    layer = ManoLayer(use_pca=False, flat_hand_mean=True, dtype=torch.float64)
    rest = layer().joints[0]
    fist = layer(hand_pose=sampler.sample_poses(8, seed=0, mode="fist", dtype=torch.float64)).joints
    # the fingertips (OpenPose 8, 12, 16, 20) move toward the palm (-y) and back toward the wrist (+x)
    moved = fist[:, [8, 12, 16, 20]] - rest[[8, 12, 16, 20]]
    assert (moved[..., 1] < 0).all() and (moved[..., 0] > 0).all()
