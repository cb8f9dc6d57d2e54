"""``meshrec predict`` on photos: every hand the detector finds, each with its side, overlays in
place, a contact sheet; a photo without a hand is listed, not fatal. The detector itself is
tested in tests/test_detect.py; here a scripted one stands in for it."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import meshrec.detect
from meshrec.detect import DetectorUnavailableError
from meshrec.inference import ImageRequest, photo_overlay, predict_images
from meshrec.render import gl_available

# where the scripted detector puts hands, per image name: (x0, y0, x1, y1) of the keypoints, side
HANDS = {
    "two_hands": [((60, 80, 180, 220), "left"), ((300, 90, 420, 230), "right")],
    "no_hand": [],
}


def _keypoints(box) -> np.ndarray:
    """21 points spread over ``box``: a stand-in for a hand's keypoints."""
    x0, y0, x1, y1 = box
    u = np.linspace(x0, x1, 21)
    v = y0 + (y1 - y0) * (0.5 + 0.5 * np.sin(np.arange(21)))
    return np.stack([u, v], axis=1).astype(np.float32)


@pytest.fixture
def scripted_detector(monkeypatch):
    """``detect_hands`` answering from :data:`HANDS` by the photo's size (each test photo has its own)."""
    sizes = {(360, 480): "two_hands", (300, 400): "no_hand"}
    calls = []

    def detect_hands(image, *, max_hands=4, **_):
        calls.append(image.shape)
        hands = HANDS[sizes[image.shape[:2]]][:max_hands]
        return [SimpleNamespace(keypoints2d=_keypoints(box), side=side, score=0.9, box=None) for box, side in hands]

    monkeypatch.setattr(meshrec.detect, "detect_hands", detect_hands)
    return calls


@pytest.fixture(scope="module")
def model():
    from meshrec import HandMeshReconstructor

    return HandMeshReconstructor.load()


@pytest.fixture
def photos(tmp_path):
    generator = np.random.default_rng(0)
    folder = tmp_path / "photos"
    folder.mkdir()
    Image.fromarray(generator.integers(0, 255, (360, 480, 3), dtype=np.uint8)).save(folder / "two_hands.png")
    Image.fromarray(np.full((300, 400, 3), 128, dtype=np.uint8)).save(folder / "no_hand.png")
    return folder


def test_every_hand_is_reconstructed_with_its_side_and_drawn_in_the_photo(model, photos, scripted_detector, tmp_path):
    out = tmp_path / "out"
    requests = [ImageRequest(photos / "two_hands.png"), ImageRequest(photos / "no_hand.png")]
    summary = predict_images(model, requests, out, detect=True, overlay=True, contact_sheet=True, progress=False,
                             overlay_renderer="matplotlib")  # fmt: skip
    assert [(r.stem, r.side, r.hand) for r in summary.results] == [("two_hands_hand0", "left", 0), ("two_hands_hand1", "right", 1)]
    assert [(f.source, f.reason.split(" (")[0]) for f in summary.failures] == [(str(photos / "no_hand.png"), "no hand found")]
    assert "1 of 2 images reconstructed (2 hands)" in summary.describe()
    names = sorted(p.name for p in out.iterdir())
    assert names == ["contact_sheet.png", "two_hands_hand0.json", "two_hands_hand0.obj", "two_hands_hand1.json",
                     "two_hands_hand1.obj", "two_hands_overlay.png"]  # fmt: skip
    # the overlay is the whole photo; it changed only around the two hands
    photo = np.asarray(Image.open(photos / "two_hands.png"))
    drawn = np.asarray(Image.open(out / "two_hands_overlay.png"))
    assert drawn.shape == photo.shape
    changed = np.argwhere((drawn != photo).any(-1))
    assert len(changed) > 500
    columns = changed[:, 1]
    assert ((columns > 20) & (columns < 220)).any() and ((columns > 260) & (columns < 460)).any()
    import json

    record = json.loads((out / "two_hands_hand0.json").read_text())
    assert record["side"] == "left" and record["image_size"] == [360, 480]
    assert record["detection"]["side"] == "left" and len(record["detection"]["keypoints2d"]) == 21


def test_a_box_or_no_detect_skips_the_detector(model, photos, scripted_detector, tmp_path):
    requests = [ImageRequest(photos / "two_hands.png", side="left", box=np.array([50.0, 60.0, 200.0, 230.0]))]
    summary = predict_images(model, requests, tmp_path / "boxed", detect=True, progress=False)
    assert [(r.stem, r.side, r.hand) for r in summary.results] == [("two_hands", "left", None)]
    summary = predict_images(model, [ImageRequest(photos / "no_hand.png")], tmp_path / "whole", detect=False, progress=False)
    assert [r.stem for r in summary.results] == ["no_hand"] and not scripted_detector


def test_detected_hands_are_fitted_to_the_detectors_keypoints_unless_told_not_to(model, photos, scripted_detector, tmp_path):
    import json

    requests = [ImageRequest(photos / "two_hands.png")]
    predict_images(model, requests, tmp_path / "fitted", detect=True, progress=False)
    predict_images(model, requests, tmp_path / "network", detect=True, progress=False, fit_keypoints=False)
    for hand in ("two_hands_hand0", "two_hands_hand1"):
        fitted = json.loads((tmp_path / "fitted" / f"{hand}.json").read_text())
        network = json.loads((tmp_path / "network" / f"{hand}.json").read_text())
        reference = np.asarray(fitted["detection"]["keypoints2d"])
        distance = lambda record: np.linalg.norm(np.asarray(record["joints2d"]) - reference, axis=-1).mean()  # noqa: E731
        assert "keypoint_fit" not in network and fitted["keypoint_fit"]["error_after"] < fitted["keypoint_fit"]["error_before"]
        assert distance(fitted) < 0.7 * distance(network)  # scripted keypoints no hand can match exactly
        assert fitted["keypoints2d"] == network["keypoints2d"]  # the network's own head is reported as it was


def test_a_missing_detector_stops_with_how_to_install_it(model, photos, monkeypatch, tmp_path):
    def unavailable(image, **_):
        raise DetectorUnavailableError("the hand detector needs mediapipe: pip install 'meshrec[detect]'")

    monkeypatch.setattr(meshrec.detect, "detect_hands", unavailable)
    with pytest.raises(DetectorUnavailableError, match="pip install"):
        predict_images(model, [ImageRequest(photos / "two_hands.png")], tmp_path / "out", detect=True, progress=False)


def test_cli_predicts_a_photo_by_its_path_and_exits_0_when_one_image_worked(photos, scripted_detector, tmp_path, capsys):
    from pipelines import cli

    out = tmp_path / "cli"
    code = cli.main(["predict", str(photos / "two_hands.png"), str(photos / "no_hand.png"), "--out", str(out), "--no-progress"])
    report = capsys.readouterr().out
    assert code == 0 and "1 of 2 images reconstructed (2 hands)" in report and "no_hand.png: no hand found" in report
    assert (out / "two_hands_hand1.obj").is_file() and not any(p.name.startswith("no_hand") for p in out.iterdir())


def test_cli_without_inputs_says_what_to_give(tmp_path, capsys):
    from pipelines import cli

    assert cli.main(["predict", "--out", str(tmp_path)]) == 2
    assert "meshrec predict photo.jpg" in capsys.readouterr().err


@pytest.mark.skipif(not gl_available(), reason="OpenGL (EGL) renderer unavailable")
def test_photo_overlay_of_a_big_photo_is_drawn_small_in_the_same_place():
    """A photo larger than OVERLAY_MAX_SIDE is drawn at that size; the mesh lands where it
    lands at full size (K scaled with the pixel-centre convention)."""
    from meshrec import HandMeshReconstructor

    model = HandMeshReconstructor.load()
    with torch.inference_mode():
        prediction = model.predict(torch.full((1, 3, 128, 128), 0.5))
    vertices, faces = prediction.vertices[0], prediction.faces_of(0)
    K = prediction.K[0].double().clone()
    K[:2] *= 8.0  # the 128-pixel crop's camera in a 1024-pixel photo
    K[:2, 2] += 3.5  # pixel centres at integers: u' = 8 (u + 0.5) - 0.5
    photo = Image.new("RGB", (1024, 1024), (30, 30, 30))
    full = photo_overlay(photo, [(vertices, faces, K)], max_side=1024)
    small = photo_overlay(photo, [(vertices, faces, K)], max_side=256)
    assert full.shape == (1024, 1024, 3) and small.shape == (256, 256, 3)
    covered_full = (full != 30).any(-1)
    covered_small = (small != 30).any(-1)
    shrunk = covered_full.reshape(256, 4, 256, 4).mean(axis=(1, 3)) > 0.5
    assert (shrunk == covered_small).mean() > 0.98 and covered_small.sum() > 100


def test_grey_transparent_and_rotated_photos_reach_the_detector_as_upright_rgb(model, tmp_path, monkeypatch):
    """As without the detector: grey and RGBA photos are read as RGB, EXIF-rotated ones upright."""
    seen = {}

    def detect_hands(image, **_):
        seen[image.shape] = image.dtype
        return [SimpleNamespace(keypoints2d=_keypoints((20, 20, 60, 60)), side="right", score=0.9, box=None)]

    monkeypatch.setattr(meshrec.detect, "detect_hands", detect_hands)
    folder = tmp_path / "odd"
    folder.mkdir()
    Image.fromarray(np.full((100, 120), 80, np.uint8)).save(folder / "grey.png")
    Image.fromarray(np.full((110, 120, 4), 80, np.uint8)).save(folder / "rgba.png")
    rotated = Image.fromarray(np.full((90, 140, 3), 80, np.uint8))
    exif = rotated.getexif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to view
    rotated.save(folder / "rotated.jpg", exif=exif)
    requests = [ImageRequest(folder / name) for name in ("grey.png", "rgba.png", "rotated.jpg")]
    summary = predict_images(model, requests, tmp_path / "out", detect=True, progress=False)
    assert len(summary.results) == 3 and not summary.failures
    assert seen == {(100, 120, 3): np.uint8, (110, 120, 3): np.uint8, (140, 90, 3): np.uint8}
