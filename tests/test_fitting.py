"""Fitting the hand to 2D keypoints (meshrec.fitting): it reaches keypoints a hand can make,
left hands are the mirror image of right ones, it runs under inference mode, and bad input is
refused with what was expected."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from meshrec.errors import MeshrecError
from meshrec.fitting import KeypointFitConfig, fit_to_keypoints, keypoint_hand_size
from meshrec.geometry.camera import project_points
from meshrec.models.reconstructor import flip_intrinsics


@pytest.fixture(scope="module")
def model():
    from meshrec import HandMeshReconstructor

    return HandMeshReconstructor.load()


@pytest.fixture(scope="module")
def images():
    generator = torch.Generator().manual_seed(0)
    return torch.rand(2, 3, 128, 128, generator=generator)


def _another_hand(model, prediction) -> torch.Tensor:
    """``(B, 21, 2)`` the projected joints of a hand other than the predicted one (its fingers
    bent, the wrist where the prediction puts it): keypoints a hand can make."""
    layer = model.global_stage.mano
    pose = torch.zeros(prediction.vertices.shape[0], 16, 3)
    pose[:, 0] = torch.tensor([2.6, 0.3, 0.2])  # palm towards the camera, roughly
    pose[:, 1:, 2] = 0.5  # every finger joint bent about its z axis
    out = layer(global_orient=pose[:, 0], hand_pose=pose[:, 1:].flatten(1))
    joints = model.joint_regressor @ out.vertices
    placed = joints - joints[:, :1] + prediction.joints[:, :1]
    return project_points(placed, prediction.K)


def test_a_fit_puts_the_joints_on_keypoints_a_hand_can_make(model, images):
    with torch.no_grad():
        prediction = model.predict(images, side="right")
    keypoints = _another_hand(model, prediction)
    fit = fit_to_keypoints(model, prediction, keypoints, config=KeypointFitConfig(steps=300, mesh_weight=0.0))
    size = keypoint_hand_size(keypoints, torch.ones(2, 21, dtype=torch.bool))
    reached = (fit.joints2d - keypoints).norm(dim=-1).mean(1) / size
    assert (fit.error_before > 0.1).all(), fit.error_before
    assert (reached < 0.02).all() and torch.allclose(reached, fit.error_after, atol=1e-5), (reached, fit.error_after)
    assert torch.allclose(project_points(fit.joints, prediction.K), fit.joints2d, atol=1e-4)
    assert torch.allclose(model.joint_regressor @ fit.vertices, fit.joints, atol=1e-6)


def test_keypoints_left_out_do_not_pull(model, images):
    with torch.no_grad():
        prediction = model.predict(images[:1], side="right")
    keypoints = _another_hand(model, prediction)
    visible = torch.ones(1, 21, dtype=torch.bool)
    visible[:, 17:] = False  # the little finger
    moved = keypoints.clone()
    moved[:, 17:] += 40.0
    config = KeypointFitConfig(steps=50)
    one, other = (fit_to_keypoints(model, prediction, k, visible, config) for k in (keypoints, moved))
    assert torch.equal(one.vertices, other.vertices)


def test_a_left_hand_is_fitted_as_the_mirror_image_of_its_right_twin(model, images):
    with torch.no_grad():
        right = model.predict(images[:1], side="right")
        left = model.predict(images[:1].flip(-1), side="left")
    keypoints = _another_hand(model, right)
    mirrored = torch.stack([127 - keypoints[..., 0], keypoints[..., 1]], dim=-1)
    config = KeypointFitConfig(steps=40)
    fit_right = fit_to_keypoints(model, right, keypoints, config=config)
    fit_left = fit_to_keypoints(model, left, mirrored, config=config)
    flip = torch.tensor([-1.0, 1.0, 1.0])
    assert torch.allclose(fit_left.vertices, fit_right.vertices * flip, atol=1e-5)
    assert torch.allclose(fit_left.joints2d[..., 0], 127 - fit_right.joints2d[..., 0], atol=1e-3)
    assert torch.allclose(left.K, flip_intrinsics(right.K, 128))
    reflection = torch.diag(flip)
    assert torch.allclose(fit_left.rotations, reflection @ fit_right.rotations @ reflection, atol=1e-5)


def test_a_fit_runs_on_a_prediction_made_in_inference_mode(model, images):
    with torch.inference_mode():
        prediction = model.for_inference().predict(images[:1], side="right")
        fit = fit_to_keypoints(model, prediction, _another_hand(model, prediction), config=KeypointFitConfig(steps=5))
    assert fit.error_after < fit.error_before


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (lambda k, v: (k[:, :20], v), r"keypoints2d must be \(1, 21, 2\)"),
        (lambda k, v: (k, v[:, :20]), r"visible must be \(1, 21\)"),
        (lambda k, v: (k.index_fill(1, torch.tensor([3]), float("nan")), v), "NaN or infinite"),
    ],
)
def test_bad_keypoints_are_refused_with_what_was_expected(model, images, change, message):
    with torch.no_grad():
        prediction = model.predict(images[:1], side="right")
    keypoints, visible = change(_another_hand(model, prediction), torch.ones(1, 21, dtype=torch.bool))
    with pytest.raises(MeshrecError, match=message):
        fit_to_keypoints(model, prediction, keypoints, visible)


def test_a_nan_keypoint_that_is_not_visible_is_ignored(model, images):
    with torch.no_grad():
        prediction = model.predict(images[:1], side="right")
    keypoints = _another_hand(model, prediction)
    visible = torch.ones(1, 21, dtype=torch.bool)
    visible[0, 3] = False
    with_nan = keypoints.index_fill(1, torch.tensor([3]), float("nan"))
    config = KeypointFitConfig(steps=5)
    assert torch.equal(fit_to_keypoints(model, prediction, with_nan, visible, config).vertices,
                       fit_to_keypoints(model, prediction, keypoints, visible, config).vertices)  # fmt: skip


@pytest.mark.parametrize("settings", [{"steps": -1}, {"steps": 2.5}, {"lr": 0.0}, {"huber": -1.0}, {"mesh_weight": -0.1}])
def test_bad_fit_settings_are_refused(settings):
    with pytest.raises(MeshrecError, match="fit"):
        KeypointFitConfig(**settings)


def test_the_hand_size_is_the_visible_keypoints_box_diagonal():
    keypoints = torch.zeros(1, 21, 2)
    keypoints[0, 1] = torch.tensor([30.0, 40.0])
    keypoints[0, 2] = torch.tensor([300.0, 400.0])
    visible = torch.ones(1, 21, dtype=torch.bool)
    visible[0, 2] = False
    assert keypoint_hand_size(keypoints, visible).tolist() == [50.0]
    assert dataclasses.is_dataclass(KeypointFitConfig())
