"""``meshrec pseudo-label``: detector keypoints become a label file that training reads; each
keypoint's confidence comes from flip consistency (the detector on the image and on its mirror)
and keypoints outside the image or below ``min_keypoint_confidence`` are not visible; images
without a hand are listed, not fatal."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import meshrec.detect
from meshrec.data.keypoints_json import KeypointsJsonDataset
from meshrec.detect import DetectedHand
from meshrec.errors import MeshrecError
from meshrec.pseudo_label import (
    FLIP_CONFIDENCE_SCALE,
    detect_hands_with_flip_confidence,
    flip_consistency_confidence,
    hand_size,
    match_mirrored_hands,
    mirror_keypoints,
    pseudo_label,
)

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
WIDTH, HEIGHT = 320, 240
MARKER = 250  # a bright strip along the left edge of hands.png, so the stand-in detector sees the mirror


def _line(u0, u1, v0, v1):
    """``(21, 2)`` keypoints evenly spaced from ``(u0, v0)`` to ``(u1, v1)``."""
    return np.stack([np.linspace(u0, u1, 21), np.linspace(v0, v1, 21)], 1)


# hands.png's three hands, in the image's pixels:
STEADY = _line(20, 80, 40, 150)  # found again exactly in the mirror: confidence 1
SHAKY = _line(250, 340, 50, 150)  # u = 322 > 319.5 from keypoint 16 on; its mirror estimate moves three keypoints
GHOST = _line(120, 180, 100, 200)  # not found in the mirror
SHAKY_SIZE = math.hypot(90, 100)
SHAKY_MIRRORED = SHAKY.copy()
SHAKY_MIRRORED[[4, 8], 0] += 0.2 * SHAKY_SIZE  # confidence exp(-4) = 0.018
SHAKY_MIRRORED[12, 1] += 0.05 * SHAKY_SIZE  # confidence exp(-0.25) = 0.779
ELSEWHERE = _line(150, 170, 10, 30)  # found only in the mirror, far from every hand


def _hand(keypoints, side):
    box = np.array([*keypoints.min(0), *keypoints.max(0)], np.float32)
    return DetectedHand(keypoints.astype(np.float32), side, 0.9, box)


def _detect_hands(image, **_):
    """A stand-in for MediaPipe answering from the script above (mirrored when the marker is on
    the right): sides swapped in the mirror and hands sorted left to right, as detect_hands does."""
    image = np.asarray(image)
    if image.shape[:2] != (HEIGHT, WIDTH):
        return []
    if image[0, 0, 0] == MARKER:
        hands = [_hand(STEADY, "left"), _hand(SHAKY, "right"), _hand(GHOST, "left")]
    else:
        assert image[0, -1, 0] == MARKER
        flip = {"left": "right", "right": "left"}
        hands = [_hand(mirror_keypoints(k, WIDTH), flip[s]) for k, s in ((STEADY, "left"), (SHAKY_MIRRORED, "right"), (ELSEWHERE, "left"))]
    return sorted(hands, key=lambda hand: float(hand.box[0] + hand.box[2]))


@pytest.fixture
def photos(tmp_path, monkeypatch):
    """Two photos: 'hands.png' (240 x 320) with the three scripted hands and 'empty.png'
    (200 x 200) without one; the stand-in detector in place of MediaPipe."""
    folder = tmp_path / "photos"
    folder.mkdir()
    pixels = np.full((HEIGHT, WIDTH, 3), 90, np.uint8)
    pixels[:, :10] = MARKER
    Image.fromarray(pixels).save(folder / "hands.png")
    Image.fromarray(np.full((200, 200, 3), 30, np.uint8)).save(folder / "empty.png")
    monkeypatch.setattr(meshrec.detect, "detect_hands", _detect_hands)
    return folder


def _records(path):
    return [json.loads(line) for line in Path(path).read_text().splitlines()]


# --- the confidence of two estimates (no detector) ---


def test_identical_estimates_are_fully_confident():
    np.testing.assert_array_equal(flip_consistency_confidence(SHAKY, SHAKY, SHAKY_SIZE), np.ones(21))


def test_far_apart_estimates_get_almost_no_confidence():
    confidence = flip_consistency_confidence(SHAKY, SHAKY + [SHAKY_SIZE, 0.0], SHAKY_SIZE)
    assert confidence.shape == (21,) and (confidence < 1e-6).all() and (confidence >= 0).all()


def test_the_confidence_falls_with_the_distance_and_is_exp_minus_one_at_the_scale():
    distances = np.linspace(0, 0.5, 26) * SHAKY_SIZE
    confidences = [flip_consistency_confidence(SHAKY, SHAKY + [0.0, d], SHAKY_SIZE)[0] for d in distances]
    assert confidences[0] == 1.0 and np.all(np.diff(confidences) < 0)
    at_scale = flip_consistency_confidence(SHAKY, SHAKY + [FLIP_CONFIDENCE_SCALE * SHAKY_SIZE, 0.0], SHAKY_SIZE)
    np.testing.assert_allclose(at_scale, math.exp(-1))


def test_only_the_distance_relative_to_the_hand_size_counts():
    other = SHAKY_MIRRORED
    small = flip_consistency_confidence(SHAKY, other, SHAKY_SIZE)
    big = flip_consistency_confidence(7 * SHAKY + 3, 7 * other + 3, 7 * SHAKY_SIZE)
    np.testing.assert_allclose(big, small)
    assert hand_size(7 * SHAKY) == pytest.approx(7 * SHAKY_SIZE)
    # the same pixel error on a hand half the size is a worse error
    assert (flip_consistency_confidence(SHAKY, other, SHAKY_SIZE / 2) <= small).all()


@pytest.mark.parametrize(
    "keypoints, other, size, message",
    [
        (SHAKY[:20], SHAKY, 1.0, r"keypoints must have shape \(21, 2\), got \(20, 2\)"),
        (SHAKY, np.full((21, 2), np.nan), 1.0, "mirrored_back must be finite"),
        (SHAKY, SHAKY, 0.0, "size must be a finite number > 0, got 0.0"),
        (SHAKY, SHAKY, -3, "size must be a finite number > 0, got -3"),
        (SHAKY, SHAKY, float("nan"), "size must be a finite number > 0"),
        (SHAKY, SHAKY, True, "size must be a finite number > 0, got True"),
    ],
)
def test_bad_inputs_are_refused(keypoints, other, size, message):
    with pytest.raises(MeshrecError, match=message):
        flip_consistency_confidence(keypoints, other, size)


def test_mirroring_keeps_pixel_centres_and_edges_and_undoes_itself():
    points = np.array([[0.0, 3.0], [-0.5, 4.0], [WIDTH - 0.5, 5.0], [100.25, 6.0]])
    np.testing.assert_array_equal(mirror_keypoints(points, WIDTH)[:, 0], [WIDTH - 1, WIDTH - 0.5, -0.5, WIDTH - 101.25])
    np.testing.assert_array_equal(mirror_keypoints(mirror_keypoints(points, WIDTH), WIDTH), points)


def test_matching_pairs_each_hand_with_the_nearest_mirrored_one_once_and_not_too_far():
    mirrored_back = [ELSEWHERE, SHAKY_MIRRORED, STEADY + 1.0]  # another order than the hands'
    assert match_mirrored_hands([STEADY, SHAKY, GHOST], mirrored_back) == [2, 1, None]
    assert match_mirrored_hands([STEADY, STEADY + 0.5], [STEADY + 0.4]) == [None, 0]  # one partner each
    assert match_mirrored_hands([STEADY], [STEADY + 0.2 * hand_size(STEADY)], max_distance=0.1) == [None]
    assert match_mirrored_hands([], [STEADY]) == [] and match_mirrored_hands([STEADY], []) == [None]


# --- the detector run twice (a stand-in for MediaPipe) ---


def test_each_hand_gets_the_confidence_of_its_mirrored_detection(photos):
    with Image.open(photos / "hands.png") as image:
        results = detect_hands_with_flip_confidence(image.convert("RGB"))
    assert [hand.side for hand, _ in results] == ["left", "left", "right"]  # sides as in the image, not the mirror
    (steady, steady_confidence), (ghost, ghost_confidence), (shaky, shaky_confidence) = results
    np.testing.assert_allclose(steady.keypoints2d, STEADY, rtol=1e-6)
    np.testing.assert_allclose(shaky.keypoints2d, SHAKY, rtol=1e-6)
    np.testing.assert_allclose(steady_confidence, 1.0, atol=1e-6)
    assert ghost_confidence is None
    expected = np.ones(21)
    expected[[4, 8]], expected[12] = math.exp(-4), math.exp(-0.25)
    np.testing.assert_allclose(shaky_confidence, expected, atol=1e-5)


def test_an_array_image_is_mirrored_too(photos):
    pixels = np.asarray(Image.open(photos / "hands.png").convert("RGB"))
    results = detect_hands_with_flip_confidence(pixels)
    assert [confidence is None for _, confidence in results] == [False, True, False]


# --- the label file ---


def test_records_carry_confidences_and_train_with_the_right_visible_keypoints(photos, tmp_path):
    out = tmp_path / "labels" / "hands.jsonl"
    summary = pseudo_label(photos, out)
    assert summary.num_hands == 3 and "3 hands in 1 of 2 images" in summary.describe()
    assert "23 of 63 keypoints below min_keypoint_confidence 0.5" in summary.describe()
    assert "1 hand not found in the mirrored image" in summary.describe()
    assert "empty.png: no hand found" in summary.describe()
    steady, ghost, shaky = records = _records(out)
    assert [(r["image"], r["side"], r["meta"]["hand"]) for r in records] == [("../photos/hands.png", s, i) for i, s in enumerate(["left", "left", "right"])]
    assert [row[2] for row in steady["joints2d"]] == [1.0] * 21
    assert [row[2] for row in ghost["joints2d"]] == [0.0] * 21
    shaky_values = [1.0] * 16 + [0.0] * 5  # keypoints 16-20 lie outside the image
    shaky_values[4] = shaky_values[8] = 0.0
    shaky_values[12] = 0.779
    assert [row[2] for row in shaky["joints2d"]] == shaky_values
    assert shaky["meta"]["score"] == 0.9 and shaky["meta"]["keypoint_confidence_from"] == "flip consistency"
    assert [r["meta"]["mirrored_match"] for r in records] == [True, False, True]
    assert shaky["meta"]["min_keypoint_confidence"] == 0.5
    assert shaky["meta"]["keypoint_confidence"][16:] == [1.0] * 5 and shaky["meta"]["keypoint_confidence"][4] == 0.018
    assert ghost["meta"]["keypoint_confidence"] == [0.0] * 21

    dataset = KeypointsJsonDataset(out)  # what configs/keypoints_json.yaml trains on
    assert len(dataset) == 3
    visible = [np.asarray(dataset[i].joints2d_visible, dtype=bool) for i in range(3)]
    assert visible[0].all() and not visible[1].any()
    np.testing.assert_array_equal(visible[2], np.array(shaky_values) > 0)


@pytest.mark.parametrize(
    "threshold, shaky_visible, ghost_visible",
    [
        (0.0, 16, 21),  # every keypoint inside the image, even those of the hand missing from the mirror
        (0.5, 14, 0),
        (0.8, 13, 0),  # keypoint 12 (0.779) too
        (1.0, 13, 0),
    ],
)
def test_the_threshold_decides_which_keypoints_are_visible(photos, tmp_path, threshold, shaky_visible, ghost_visible):
    out = tmp_path / "labels.jsonl"
    pseudo_label(photos, out, min_keypoint_confidence=threshold)
    steady, ghost, shaky = _records(out)
    assert sum(row[2] > 0 for row in shaky["joints2d"]) == shaky_visible
    assert sum(row[2] > 0 for row in ghost["joints2d"]) == ghost_visible
    if threshold < 1.0:  # at 1.0 only exact agreement counts, which float32 keypoints need not reach
        assert all(row[2] > 0 for row in steady["joints2d"])
    if threshold == 0.0:  # a confidence of 0 cannot say 'visible': the smallest written value
        assert {row[2] for row in ghost["joints2d"]} == {0.001}
    visible_counts = [int(np.asarray(sample.joints2d_visible).sum()) for sample in KeypointsJsonDataset(out)]
    assert visible_counts[1:] == [ghost_visible, shaky_visible]


@pytest.mark.parametrize("threshold", [-0.1, 1.5, float("nan"), True, "0.5"])
def test_a_threshold_outside_zero_to_one_is_refused(photos, tmp_path, threshold):
    with pytest.raises(MeshrecError, match=r"min_keypoint_confidence must be a number in \[0, 1\], got"):
        pseudo_label(photos, tmp_path / "labels.jsonl", min_keypoint_confidence=threshold)
    assert not (tmp_path / "labels.jsonl").exists()


def test_the_label_file_must_be_jsonl(photos, tmp_path):
    with pytest.raises(MeshrecError, match="give a .jsonl path"):
        pseudo_label(photos, tmp_path / "labels.json")
    assert not (tmp_path / "labels.json").exists()


def test_cli(photos, tmp_path, capsys):
    from pipelines import cli

    assert cli.main(["pseudo-label", str(photos), "--out", str(tmp_path / "l.jsonl")]) == 0
    assert "3 hands in 1 of 2 images" in capsys.readouterr().out
    assert cli.main(["pseudo-label", str(photos / "empty.png"), "--out", str(tmp_path / "none.jsonl")]) == 1
    assert cli.main(["pseudo-label", str(photos), "--out", str(tmp_path / "all.jsonl"), "--min-keypoint-confidence", "0"]) == 0
    assert sum(row[2] > 0 for row in _records(tmp_path / "all.jsonl")[1]["joints2d"]) == 21


@pytest.mark.parametrize("value", ["1.5", "-0.2", "nan", "high"])
def test_the_cli_refuses_a_threshold_outside_zero_to_one(photos, tmp_path, capsys, value):
    from pipelines import cli

    with pytest.raises(SystemExit) as exit_:
        cli.main(["pseudo-label", str(photos), "--out", str(tmp_path / "l.jsonl"), "--min-keypoint-confidence", value])
    assert exit_.value.code == 2
    assert "--min-keypoint-confidence: expected a number in [0, 1]" in capsys.readouterr().err
    assert not (tmp_path / "l.jsonl").exists()


# --- the real detector (mediapipe installed) ---


def test_a_clear_hand_keeps_all_its_keypoints_with_the_real_detector(tmp_path):
    pytest.importorskip("mediapipe", reason="the detector needs mediapipe: pip install 'meshrec[detect]'")
    out = tmp_path / "labels.jsonl"
    pseudo_label(PHOTOS / "thumb_up_left_hand.jpg", out)
    (record,) = _records(out)
    assert record["side"] == "left" and record["meta"]["mirrored_match"]
    # measured with mediapipe 0.10.14: the two estimates are at most 3 % of the hand's size apart
    assert all(row[2] >= 0.8 for row in record["joints2d"]), [row[2] for row in record["joints2d"]]
