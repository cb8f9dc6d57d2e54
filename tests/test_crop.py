"""The three crop decisions, each tested here once: which box a hand is cropped with
(``meshrec.data.crop.hand_crop_box`` and its parts), whether a box is valid
(``meshrec.data.crop.check_box``), and the camera assumed when the real one is unknown
(``meshrec.geometry.camera.default_intrinsics`` and, in image pixels,
``meshrec.data.crop.image_intrinsics_for_crop``).

The datasets and ``meshrec predict`` call these; their own tests check the wiring only.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from PIL import Image

from meshrec.data.crop import (
    MIN_KEYPOINT_BOX_SIDE,
    box_from_keypoints,
    check_box,
    check_box_padding,
    crop_image,
    full_image_box,
    hand_crop_box,
    image_intrinsics_for_crop,
    square_box,
)
from meshrec.errors import MeshrecError
from meshrec.geometry.camera import default_intrinsics, project_points

# ---------------------------------------------------------------------------------------
# Box validation: check_box (and the padding every box choice takes)
# ---------------------------------------------------------------------------------------


def test_check_box_accepts_tensors_arrays_and_lists():
    assert check_box([0, 0, 10, 5]).dtype == torch.get_default_dtype()  # integers become floats
    assert check_box(np.array([0.0, 0.0, 10.0, 5.0])).dtype == torch.float64  # a floating dtype is kept
    assert check_box([1.0, 2.0, 3.0, 4.0], dtype=torch.float64).dtype == torch.float64
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [-5.0, -5.0, 500.0, 2.0]])  # outside the image is fine
    assert check_box(boxes) is boxes


@pytest.mark.parametrize(
    "box, match",
    [
        ([1.0, 2.0, 3.0], r"box must have shape \(4,\) or \(B, 4\) .* got shape \(3,\)"),
        (torch.tensor(3.0), r"got shape \(\)"),
        (["a", "b", "c", "d"], r"box must be 4 numbers \[x0, y0, x1, y1\]"),
        ([[1.0, 2.0], [3.0]], r"box must be 4 numbers"),
        ([True, False, True, True], r"real numbers"),
        ([0.0, float("nan"), 3.0, 4.0], r"box must be finite \(no NaN or inf\), got \[0.0, nan, 3.0, 4.0\]"),
        ([0.0, 0.0, float("inf"), 4.0], r"finite"),
        ([10.0, 10.0, 5.0, 20.0], r"x1 > x0 and y1 > y0, got \[10.0, 10.0, 5.0, 20.0\].*\[x, y, x \+ width"),
        ([0.0, 4.0, 5.0, 4.0], r"x1 > x0 and y1 > y0"),  # empty is invalid too
        (
            torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, -1.0]]),
            r"box\[1\] = \[0.0, 0.0, 1.0, -1.0\]",  # a batch names the first bad box
        ),
    ],
)
def test_check_box_rejects_bad_boxes_saying_what_and_how_to_fix(box, match):
    with pytest.raises(MeshrecError, match=match):
        check_box(box)


def test_every_box_consumer_uses_the_one_check():
    bad = torch.tensor([4.0, 0.0, 2.0, 5.0])
    for call in (
        lambda: square_box(bad),
        lambda: crop_image(torch.zeros(3, 8, 8), bad),
        lambda: hand_crop_box(8, box=bad),
        lambda: image_intrinsics_for_crop(bad, 16),
    ):
        with pytest.raises(MeshrecError, match="x1 > x0"):
            call()
    with pytest.raises(MeshrecError, match=r"^labels.jsonl record 3: box must be finite"):
        check_box([0.0, 0.0, math.nan, 1.0], name="labels.jsonl record 3: box")


@pytest.mark.parametrize("padding", [0.0, -1.5, math.nan, math.inf, "wide", True, None])
def test_box_padding_must_be_a_positive_number(padding):
    with pytest.raises(MeshrecError, match="box padding .* must be a finite number > 0"):
        check_box_padding(padding)


def test_bad_padding_is_refused_by_every_box_choice():
    joints = torch.tensor([[10.0, 20.0], [30.0, 60.0]])
    for call in (
        lambda: square_box(torch.tensor([0.0, 0.0, 1.0, 1.0]), 0.0),
        lambda: box_from_keypoints(joints, padding=0.0),  # used to give a silent 8 px box
        lambda: hand_crop_box(64, padding=-1.0),
    ):
        with pytest.raises(MeshrecError, match="box padding"):
            call()
    assert check_box_padding(2) == 2.0


# ---------------------------------------------------------------------------------------
# Crop-box choice: hand_crop_box, from a box, from keypoints, from the whole image
# ---------------------------------------------------------------------------------------


def test_full_image_box_and_square_box():
    assert full_image_box(40, 60).tolist() == [-0.5, -0.5, 59.5, 39.5]
    assert square_box(torch.tensor([0.0, 0.0, 10.0, 4.0]), 2.0).tolist() == [-5.0, -8.0, 15.0, 12.0]
    with pytest.raises(MeshrecError, match="positive"):
        full_image_box(0, 60)


def test_box_from_keypoints_uses_visible_ones_only():
    joints = torch.tensor([[10.0, 20.0], [30.0, 60.0], [math.nan, 500.0]])
    visible = torch.tensor([True, True, False])
    assert box_from_keypoints(joints, visible, padding=1.5).tolist() == [-10.0, 10.0, 50.0, 70.0]
    # one keypoint (or a collapsed set) still gets a box of MIN_KEYPOINT_BOX_SIDE
    single = box_from_keypoints(joints, torch.tensor([True, False, False]))
    assert single.tolist() == [10.0 - MIN_KEYPOINT_BOX_SIDE / 2, 16.0, 14.0, 24.0]
    batched = box_from_keypoints(joints[None].expand(3, -1, -1), visible[None].expand(3, -1))
    assert batched.shape == (3, 4)


@pytest.mark.parametrize(
    "joints, visible, match",
    [
        (torch.zeros(3, 3), None, r"joints2d must have shape \(\.\.\., N, 2\)"),
        (torch.zeros(3, 2), torch.ones(4, dtype=torch.bool), r"visible must have shape \(3,\)"),
        (torch.zeros(3, 2), torch.zeros(3, dtype=torch.bool), "no visible keypoint .* hand_crop_box"),
        (torch.tensor([[0.0, 0.0], [math.inf, 1.0]]), None, "non-finite .* visible keypoint"),
    ],
)
def test_box_from_keypoints_rejects_bad_input(joints, visible, match):
    with pytest.raises(MeshrecError, match=match):
        box_from_keypoints(joints, visible)


def test_hand_crop_box_prefers_box_then_keypoints_then_the_whole_image():
    joints = torch.tensor([[10.0, 20.0], [30.0, 60.0]])
    box = torch.tensor([0.0, 0.0, 20.0, 10.0])
    # 1. a given box wins over keypoints, grown to a padded square
    assert hand_crop_box((80, 100), box=box, joints2d=joints, padding=2.0).tolist() == [-10.0, -15.0, 30.0, 25.0]
    # 2. else the visible keypoints
    expected = box_from_keypoints(joints, padding=1.5)
    assert torch.equal(hand_crop_box((80, 100), joints2d=joints, padding=1.5), expected)
    # 3. else the whole image made square about its centre, padding unused
    whole = [-0.5, -10.5, 99.5, 89.5]
    assert hand_crop_box((80, 100), padding=3.0).tolist() == whole
    none_visible = torch.zeros(2, dtype=torch.bool)
    assert hand_crop_box((80, 100), joints2d=joints, visible=none_visible).tolist() == whole
    # per sample in a batch; invisible keypoints may hold anything
    joints_b = torch.stack([joints, torch.full((2, 2), math.nan)])
    visible_b = torch.tensor([[True, True], [False, False]])
    chosen = hand_crop_box((80, 100), joints2d=joints_b, visible=visible_b, padding=1.5)
    assert torch.equal(chosen[0], expected) and chosen[1].tolist() == whole


def test_hand_crop_box_takes_numpy_and_follows_dtype_and_device(device):
    joints = np.array([[10.0, 20.0], [30.0, 60.0]], dtype=np.float32)
    assert hand_crop_box(64, joints2d=joints).dtype == torch.float32
    assert hand_crop_box(64, joints2d=joints, dtype=torch.float64).dtype == torch.float64
    assert hand_crop_box(64, box=np.array([1.0, 1.0, 5.0, 5.0])).dtype == torch.float64
    assert hand_crop_box(64).dtype == torch.float32
    on_device = hand_crop_box(64, joints2d=torch.from_numpy(joints).to(device))
    assert on_device.device.type == device.type
    assert hand_crop_box(64, device=device).device.type == device.type


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(image_size=(0, 10)), "positive"),
        (dict(image_size=64, joints2d=torch.zeros(21, 3)), r"joints2d must have shape"),
        (dict(image_size=64, joints2d=torch.zeros(21, 2), visible=torch.ones(20)), r"visible must have shape"),
        (dict(image_size=64, box=[1.0, 2.0]), r"box must have shape"),
    ],
)
def test_hand_crop_box_rejects_bad_input(kwargs, match):
    with pytest.raises(MeshrecError, match=match):
        hand_crop_box(**kwargs)


def test_prediction_requests_use_the_one_box_check(tmp_path):
    from meshrec.inference import collect_requests

    Image.new("RGB", (40, 40)).save(tmp_path / "hand.png")
    requests, _ = collect_requests(tmp_path / "hand.png", box=[1, 2, 30, 40])
    assert requests[0].box.dtype == np.float64 and requests[0].box.tolist() == [1.0, 2.0, 30.0, 40.0]
    with pytest.raises(MeshrecError, match=r"box must be \[x0, y0, x1, y1\] with x1 > x0"):
        collect_requests(tmp_path / "hand.png", box=[1, 2, 30, -40])
    with pytest.raises(MeshrecError, match="one box"):
        collect_requests(tmp_path / "hand.png", box=[[1, 2, 30, 40]])


# ---------------------------------------------------------------------------------------
# Default intrinsics: default_intrinsics (a crop) and image_intrinsics_for_crop (its image)
# ---------------------------------------------------------------------------------------


def test_default_intrinsics_centre_and_fov():
    K = default_intrinsics((120, 160), fov_deg=60.0, batch=2, dtype=torch.float64)
    assert K.shape == (2, 3, 3) and K.dtype == torch.float64
    assert K[0, 0, 2] == 79.5 and K[0, 1, 2] == 59.5 and K[0, 0, 0] == K[0, 1, 1]
    # The longer side's edges (-0.5 and W - 0.5) are at +-30 degrees.
    edge = project_points(torch.tensor([[[np.tan(np.radians(30.0)), 0.0, 1.0]]], dtype=torch.float64), K[:1])
    assert abs(edge[0, 0, 0].item() - 159.5) < 1e-9


@pytest.mark.parametrize(
    "args, kwargs, match",
    [
        ((64,), dict(fov_deg=180.0), "fov_deg must be in"),
        ((64,), dict(fov_deg=0.0), "fov_deg must be in"),
        (((0, 64),), {}, "positive"),
        ((64,), dict(batch=0), "batch must be a positive int"),
    ],
)
def test_default_intrinsics_rejects_bad_input(args, kwargs, match):
    with pytest.raises(MeshrecError, match=match):
        default_intrinsics(*args, **kwargs)


def test_image_intrinsics_for_crop_become_the_crops_default():
    box = torch.tensor([[10.0, 20.0, 110.0, 120.0], [-40.0, 5.0, 160.0, 205.0]], dtype=torch.float64)
    K_image = image_intrinsics_for_crop(box, 64, fov_deg=40.0)
    assert K_image.shape == (2, 3, 3) and K_image.dtype == torch.float64
    # closed form for a square box: the box's side spans the field of view, centred on it
    side = box[:, 2] - box[:, 0]
    torch.testing.assert_close(K_image[:, 0, 0], side / (2 * math.tan(math.radians(20.0))))
    torch.testing.assert_close(K_image[:, :2, 2], (box[:, :2] + box[:, 2:]) / 2)
    # ... and the crop of that box gets exactly the default camera of the crop
    cropped = crop_image(torch.zeros(2, 3, 240, 320, dtype=torch.float64), box, 64, K_image).K
    torch.testing.assert_close(cropped, default_intrinsics(64, 40.0, batch=2, dtype=torch.float64))
    assert image_intrinsics_for_crop(box[0].float(), 64).dtype == torch.float32
