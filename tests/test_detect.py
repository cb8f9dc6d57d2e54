"""meshrec.detect: hands found in photos without boxes (MediaPipe Hands, an optional dependency).

The tests without mediapipe check the import, the install hint, input checks and how a
MediaPipe result becomes :class:`DetectedHand` (with a stand-in for the detector); the
tests on the photos in tests/fixtures/photos run where mediapipe is installed.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import types
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from meshrec import detect
from meshrec.data.crop import hand_crop_box
from meshrec.detect import DetectedHand, DetectorUnavailableError, detect_hands, normalized_to_pixels
from meshrec.errors import MeshrecError

PHOTOS = Path(__file__).parent / "fixtures" / "photos"
WRIST, THUMB_TIP = 0, 4
FINGERTIPS = [8, 12, 16, 20]


def test_importing_the_module_imports_no_detector_library():
    code = (
        "import sys, meshrec.detect; "
        "print(sorted(m for m in ('mediapipe', 'cv2', 'jax', 'jaxlib', 'torch') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_without_mediapipe_the_error_says_how_to_install_it(monkeypatch):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # import mediapipe -> ModuleNotFoundError
    with pytest.raises(DetectorUnavailableError, match=r"pip install 'meshrec\[detect\]'") as error:
        detect_hands(np.zeros((32, 32, 3), np.uint8))
    assert isinstance(error.value, MeshrecError)
    assert "mediapipe==0.10.14" in str(error.value)


def test_a_mediapipe_without_the_hands_solution_is_named_with_its_version(monkeypatch):
    fake = types.ModuleType("mediapipe")
    fake.__version__ = "1.2.3"
    fake.__path__ = []  # a package with no submodules
    monkeypatch.setitem(sys.modules, "mediapipe", fake)
    monkeypatch.setitem(sys.modules, "mediapipe.python", None)
    with pytest.raises(DetectorUnavailableError, match=r"mediapipe 1\.2\.3 .*pip install 'meshrec\[detect\]'"):
        detect_hands(np.zeros((32, 32, 3), np.uint8))


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (np.zeros((8, 8, 3), np.float32), r"uint8 .* got dtype float32: for floats in \[0, 1\] pass \(image \* 255\)"),
        (np.zeros((8, 8, 3), np.uint16), r"got dtype uint16: scale it to 0\.\.255"),
        (np.zeros((8, 8, 2), np.uint8), r"shape \(H, W, 3\) .* got shape \(8, 8, 2\)$"),
        (np.zeros((3, 8, 9), np.uint8), r"got shape \(3, 8, 9\); a channels-first .*transpose\(1, 2, 0\)"),
        (np.zeros((1, 8, 8, 3), np.uint8), r"got shape \(1, 8, 8, 3\)"),
        (np.zeros((0, 8, 3), np.uint8), r"image is empty: shape \(0, 8, 3\)"),
        ([[0, 0, 0]], r"numpy array or a PIL image, got builtins\.list"),
        (Image.new("I;16", (8, 8)), r"PIL mode 'I;16' \(16-bit or float\); scale it to 8 bits"),
    ],
    ids=["float", "uint16", "two-channels", "channels-first", "batched", "empty", "list", "pil-16-bit"],
)
def test_a_bad_image_is_refused_with_expected_and_actual(monkeypatch, image, message):
    monkeypatch.setitem(sys.modules, "mediapipe", None)  # checked before mediapipe is needed
    with pytest.raises(MeshrecError, match=message):
        detect_hands(image)


def test_a_torch_image_is_refused_with_the_conversion():
    torch = pytest.importorskip("torch")
    with pytest.raises(MeshrecError, match=r"got torch\.Tensor; a \(3, H, W\) float tensor .*permute\(1, 2, 0\)"):
        detect_hands(torch.zeros(3, 8, 8))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"max_hands": 0}, r"max_hands must be an int >= 1, got 0"),
        ({"max_hands": 2.0}, r"max_hands must be an int >= 1, got 2\.0"),
        ({"max_hands": True}, r"max_hands must be an int >= 1, got True"),
        ({"min_confidence": 1.5}, r"min_confidence must be a number in \[0, 1\], got 1\.5"),
        ({"min_confidence": float("nan")}, r"min_confidence must be a number in \[0, 1\], got nan"),
        ({"min_confidence": "0.5"}, r"min_confidence must be a number in \[0, 1\], got '0\.5'"),
    ],
)
def test_bad_options_are_refused(monkeypatch, options, message):
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(MeshrecError, match=message):
        detect_hands(np.zeros((8, 8, 3), np.uint8), **options)


def test_normalized_landmarks_put_0_and_1_on_the_image_edges():
    pixels = normalized_to_pixels(np.array([[0.0, 0.0], [1.0, 1.0], [0.5 / 40, 0.5 / 20]]), (20, 40))
    assert pixels.dtype == np.float32
    # the edges are at -0.5 and W - 0.5; the first pixel's centre is at 0
    np.testing.assert_allclose(pixels, [[-0.5, -0.5], [39.5, 19.5], [0.0, 0.0]], atol=1e-6)


def test_mediapipe_labels_are_for_mirrored_images_so_they_are_swapped():
    assert detect.side_from_mediapipe_label("Left") == "right"
    assert detect.side_from_mediapipe_label("Right") == "left"
    with pytest.raises(MeshrecError, match=r"'Left' or 'Right', got 'left'"):
        detect.side_from_mediapipe_label("left")


# --- the conversion of a MediaPipe result, with a stand-in detector (no mediapipe needed) ---


class _StandInHands:
    """Answers ``process`` with a fixed MediaPipe-like result and keeps the images it got."""

    def __init__(self, hands: list[tuple[np.ndarray, str, float]]) -> None:
        self.images: list[np.ndarray] = []
        landmarks = [
            types.SimpleNamespace(landmark=[types.SimpleNamespace(x=float(x), y=float(y), z=0.0) for x, y in points])
            for points, _, _ in hands
        ]
        handedness = [
            types.SimpleNamespace(classification=[types.SimpleNamespace(label=label, score=score)])
            for _, label, score in hands
        ]
        self.result = types.SimpleNamespace(
            multi_hand_landmarks=landmarks or None, multi_handedness=handedness or None
        )

    def process(self, image: np.ndarray):
        self.images.append(image)
        return self.result


def _stand_in(monkeypatch, hands: list[tuple[np.ndarray, str, float]]) -> _StandInHands:
    stand_in = _StandInHands(hands)
    detector = detect._Detector(stand_in, threading.Lock())
    monkeypatch.setattr(detect, "_detector", lambda max_hands, min_confidence: detector)
    return stand_in


def _hand_at(x: float, y: float, seed: int) -> np.ndarray:
    """21 normalised landmarks scattered about (x, y)."""
    return np.array([x, y]) + np.random.default_rng(seed).uniform(-0.05, 0.05, (21, 2))


def test_a_result_becomes_pixels_sides_and_boxes_sorted_left_to_right(monkeypatch):
    height, width = 60, 100
    right_of_image, left_of_image = _hand_at(0.7, 0.5, 0), _hand_at(0.25, 0.4, 1)
    _stand_in(monkeypatch, [(right_of_image, "Left", 0.9), (left_of_image, "Right", 0.8)])

    hands = detect_hands(np.zeros((height, width, 3), np.uint8))

    assert [hand.side for hand in hands] == ["left", "right"]  # sorted by box centre; labels swapped
    assert [hand.score for hand in hands] == pytest.approx([0.8, 0.9])
    for hand, normalized in zip(hands, [left_of_image, right_of_image]):
        assert isinstance(hand, DetectedHand)
        assert hand.keypoints2d.shape == (21, 2) and hand.keypoints2d.dtype == np.float32
        expected = normalized * [width, height] - 0.5
        np.testing.assert_allclose(hand.keypoints2d, expected, atol=1e-4)
        assert hand.box.shape == (4,) and hand.box.dtype == np.float32
        np.testing.assert_allclose(
            hand.box, hand_crop_box((height, width), joints2d=expected.astype(np.float32)).numpy(), atol=1e-4
        )
        assert not hand.keypoints2d.flags.writeable and not hand.box.flags.writeable


def test_no_hand_is_an_empty_list(monkeypatch):
    _stand_in(monkeypatch, [])
    assert detect_hands(np.zeros((10, 10, 3), np.uint8)) == []


def test_grey_rgba_and_pil_images_reach_the_detector_as_rgb(monkeypatch):
    stand_in = _stand_in(monkeypatch, [])
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (6, 7, 3), dtype=np.uint8)
    grey = rng.integers(0, 256, (6, 7), dtype=np.uint8)
    rgba = np.concatenate([rgb, np.zeros((6, 7, 1), np.uint8)], axis=2)

    pil_images = [Image.fromarray(rgb), Image.fromarray(rgba), Image.fromarray(grey)]
    for image in [grey, grey[:, :, None], rgba, rgb[:, ::-1], *pil_images]:
        detect_hands(image)
    got = stand_in.images
    assert all(image.shape == (6, 7, 3) and image.dtype == np.uint8 and image.flags.c_contiguous for image in got)
    np.testing.assert_array_equal(got[0], np.repeat(grey[:, :, None], 3, axis=2))
    np.testing.assert_array_equal(got[1], got[0])
    np.testing.assert_array_equal(got[2], rgb)  # the alpha channel is dropped
    np.testing.assert_array_equal(got[3], rgb[:, ::-1])
    np.testing.assert_array_equal(got[4], rgb)
    np.testing.assert_array_equal(got[5], rgb)
    np.testing.assert_array_equal(got[6], got[0])


# --- real detections (mediapipe installed) ---


@pytest.fixture(scope="module")
def mediapipe_installed():
    pytest.importorskip("mediapipe", reason="the detector needs mediapipe: pip install 'meshrec[detect]'")


def _photo(name: str) -> np.ndarray:
    with Image.open(PHOTOS / name) as image:
        return np.asarray(image.convert("RGB"))


def _check_on_the_hand(hand: DetectedHand, region: tuple[float, float, float, float]) -> None:
    """Keypoints finite, inside the hand's box and inside ``region`` (the hand, read off the photo)."""
    points = hand.keypoints2d
    assert np.isfinite(points).all()
    x0, y0, x1, y1 = hand.box
    assert ((points > [x0, y0]) & (points < [x1, y1])).all()
    rx0, ry0, rx1, ry1 = region
    assert ((points > [rx0, ry0]) & (points < [rx1, ry1])).all(), points


def test_one_left_hand_thumb_up(mediapipe_installed):
    hands = detect_hands(_photo("thumb_up_left_hand.jpg"))

    assert len(hands) == 1
    hand = hands[0]
    assert hand.side == "left" and hand.score > 0.8
    _check_on_the_hand(hand, (140, 55, 400, 445))
    points = hand.keypoints2d
    assert points[THUMB_TIP, 1] == points[:, 1].min()  # the thumb points up
    assert points[WRIST, 1] > points[THUMB_TIP, 1] + 200
    assert (points[WRIST, 0] < points[FINGERTIPS, 0]).all()  # forearm from the lower left


def test_the_sharp_right_hand_of_two_thumbs_up(mediapipe_installed):
    # Both hands are right hands; mediapipe 0.10.14 finds the sharp front one only (the blurred,
    # half-hidden one behind it is missed even at min_confidence=0.1).
    hands = detect_hands(_photo("two_thumbs_up_right_hands.jpg"))

    assert len(hands) == 1
    hand = hands[0]
    assert hand.side == "right" and hand.score > 0.8
    _check_on_the_hand(hand, (110, 60, 350, 395))
    points = hand.keypoints2d
    assert points[THUMB_TIP, 1] == points[:, 1].min()
    assert (points[WRIST, 0] > points[FINGERTIPS, 0]).all()  # forearm from the right


def test_a_pil_image_and_its_array_give_the_same_hands(mediapipe_installed):
    array = _photo("thumb_up_left_hand.jpg")
    rgba = np.concatenate([array, np.full(array.shape[:2] + (1,), 255, np.uint8)], axis=2)
    expected = detect_hands(array)
    for image in (Image.fromarray(array), rgba):
        got = detect_hands(image)
        assert [hand.side for hand in got] == [hand.side for hand in expected]
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a.keypoints2d, b.keypoints2d)
            np.testing.assert_array_equal(a.box, b.box)


def test_threads_share_one_detector_and_get_the_sequential_answer(mediapipe_installed):
    photos = [_photo("thumb_up_left_hand.jpg"), _photo("two_thumbs_up_right_hands.jpg")]
    expected = [detect_hands(photo, max_hands=2) for photo in photos]
    results: dict[int, list[DetectedHand]] = {}
    errors: list[BaseException] = []

    def work(index: int) -> None:
        try:
            results[index] = detect_hands(photos[index % 2], max_hands=2)
        except BaseException as error:  # noqa: BLE001 - reported by the main thread
            errors.append(error)

    threads = [threading.Thread(target=work, args=(index,)) for index in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors and len(results) == 6
    for index, hands in results.items():
        want = expected[index % 2]
        assert [hand.side for hand in hands] == [hand.side for hand in want]
        for a, b in zip(hands, want):
            np.testing.assert_array_equal(a.keypoints2d, b.keypoints2d)
    assert detect._detector(2, 0.5) is detect._detector(2, 0.5)  # created once, kept


def test_missing_mediapipe_is_noticed_after_a_detector_was_made(mediapipe_installed, monkeypatch):
    detect_hands(np.zeros((64, 64, 3), np.uint8))
    monkeypatch.setitem(sys.modules, "mediapipe", None)
    with pytest.raises(DetectorUnavailableError, match=r"pip install 'meshrec\[detect\]'"):
        detect_hands(np.zeros((64, 64, 3), np.uint8))
