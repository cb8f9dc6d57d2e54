"""Hands in a photo that has no boxes: where each one is, its 21 keypoints and which hand it is.

:func:`detect_hands` runs MediaPipe Hands (``mediapipe==0.10.14``, its palm detector and
"full" hand landmark model, both shipped inside the wheel) on one RGB image and returns a
:class:`DetectedHand` per hand, ready for :func:`meshrec.data.crop.crop_image`. MediaPipe is
an optional dependency (``pip install 'meshrec[detect]'``), imported on the first call only:
``import meshrec.detect`` imports neither mediapipe nor OpenCV nor jax.

Conventions, as the rest of meshrec:

* keypoints are ``(u, v)`` image pixels with pixel centres at integer coordinates (an image
  of width W spans ``[-0.5, W - 0.5]``, :mod:`meshrec.data.crop`). MediaPipe's normalised
  landmarks put 0 and 1 on the image's outer *edges* (its whole-image region is centred at
  ``0.5 * W`` with width ``W``; its drawing code takes pixel ``floor(x * W)``), so
  ``u = x * W - 0.5`` and ``v = y * H - 0.5`` (:func:`normalized_to_pixels`);
* the 21 keypoints are in meshrec's OpenPose / FreiHAND order (0 wrist, 1-4 thumb CMC, MCP,
  IP, tip, 5-8 index MCP, PIP, DIP, tip, 9-12 middle, 13-16 ring, 17-20 little), which is
  MediaPipe's own landmark order (``mediapipe.solutions.hands.HandLandmark``);
* ``side`` is ``'right'`` or ``'left'`` (:mod:`meshrec.sides`), the hand's own side. MediaPipe
  labels handedness as if the image were a mirrored selfie, so its ``'Left'`` is a right hand
  in an ordinary photo (:func:`side_from_mediapipe_label`).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass

import numpy as np

from meshrec.errors import MeshrecError

__all__ = [
    "DetectedHand",
    "DetectorUnavailableError",
    "MEDIAPIPE_REQUIREMENT",
    "NUM_KEYPOINTS",
    "detect_hands",
    "normalized_to_pixels",
    "side_from_mediapipe_label",
]

# The tested release: its wheel ships palm_detection_full.tflite and hand_landmark_full.tflite with
# the `mediapipe.solutions.hands` API (the 1.x wheels have neither).
MEDIAPIPE_REQUIREMENT = "mediapipe==0.10.14"
NUM_KEYPOINTS = 21
_INSTALL_HINT = f"pip install 'meshrec[detect]' (or pip install '{MEDIAPIPE_REQUIREMENT}')"

# MediaPipe assumes a mirrored (selfie) image: its label is the other hand in an ordinary photo.
_SIDE_OF_MEDIAPIPE_LABEL = {"Left": "right", "Right": "left"}

# PIL modes that convert('RGB') would clip rather than scale (16-bit and float images).
_HIGH_DEPTH_PIL_MODES = ("I", "F", "I;16", "I;16B", "I;16L", "I;16N")


class DetectorUnavailableError(MeshrecError):
    """The hand detector cannot run here: mediapipe is missing, broken or a release without
    the hand models. The message says how to install it (``pip install 'meshrec[detect]'``)."""


@dataclass(frozen=True, eq=False)
class DetectedHand:
    """One hand found by :func:`detect_hands` (arrays are read-only).

    Attributes:
        keypoints2d: ``(21, 2)`` float32 ``(u, v)`` image pixels, pixel centres at integer
            coordinates, in OpenPose / FreiHAND order (``keypoints2d[0]`` is the wrist,
            ``keypoints2d[4]`` the thumb tip, ``keypoints2d[20]`` the little finger tip).
            Keypoints of a hand cut by the image border may lie outside the image.
        side: ``'right'`` or ``'left'``: which hand it is (already corrected for MediaPipe's
            mirrored-image labels).
        score: MediaPipe's confidence in ``side``, in ``[0.5, 1]``.
        box: ``(4,)`` float32 ``[x0, y0, x1, y1]`` square crop box (edges, image pixels; it may
            reach outside the image) from the keypoints with
            :func:`meshrec.data.crop.hand_crop_box` and its default padding.
    """

    keypoints2d: np.ndarray
    side: str
    score: float
    box: np.ndarray


def normalized_to_pixels(normalized: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """MediaPipe's normalised landmark ``(x, y)`` -> meshrec pixels ``(u, v)``.

    MediaPipe's ``x = 0`` and ``x = 1`` are the left and right *edges* of the image, so
    ``u = x * W - 0.5``, ``v = y * H - 0.5`` (pixel centres at integers).

    Args:
        normalized: ``(..., 2)`` ``(x, y)`` normalised by the image width and height.
        image_size: ``(H, W)`` of the image, pixels.

    Returns:
        ``(..., 2)`` float32 ``(u, v)`` pixels.

    >>> normalized_to_pixels(np.array([[0.0, 0.0], [0.5, 0.5], [1.0, 1.0]]), (20, 40)).tolist()
    [[-0.5, -0.5], [19.5, 9.5], [39.5, 19.5]]
    """
    height, width = image_size
    scale = np.array([width, height], dtype=np.float64)
    return (np.asarray(normalized, dtype=np.float64) * scale - 0.5).astype(np.float32)


def side_from_mediapipe_label(label: str) -> str:
    """MediaPipe's handedness label (mirrored-selfie convention) -> the hand's side in an
    ordinary, unmirrored photo: ``'Left'`` -> ``'right'``, ``'Right'`` -> ``'left'``.

    Raises:
        MeshrecError: a label other than ``'Left'`` / ``'Right'``.

    >>> side_from_mediapipe_label("Left")
    'right'
    """
    try:
        return _SIDE_OF_MEDIAPIPE_LABEL[label]
    except KeyError:
        raise MeshrecError(f"MediaPipe handedness label must be 'Left' or 'Right', got {label!r}") from None


def detect_hands(image, *, max_hands: int = 4, min_confidence: float = 0.5) -> list[DetectedHand]:
    """Find the hands in one RGB image: keypoints, side and crop box of each.

    Runs MediaPipe Hands on the still image (palm detector, then the full landmark model on
    each palm). One detector per ``(max_hands, min_confidence)`` is created on first use and
    kept for the process; calls from several threads are safe (they take turns on it).

    Args:
        image: ``(H, W, 3)`` uint8 RGB array, or a PIL image (any 8-bit mode). Grey ``(H, W)``
            or ``(H, W, 1)`` arrays are repeated to three channels; ``(H, W, 4)`` RGBA arrays
            lose their alpha channel (as PIL's ``convert('RGB')`` and MediaPipe do).
            Keypoints refer to this pixel grid: for a phone photo stored sideways, pass
            ``PIL.ImageOps.exif_transpose(image)``.
        max_hands: most hands to return (>= 1).
        min_confidence: in ``[0, 1]``: the lowest palm-detection score and the lowest
            hand-presence score of the landmark model for a hand to count (MediaPipe's
            ``min_detection_confidence`` and ``min_tracking_confidence``; 0.5 is its default).
            Lowering it does not always find more hands: it also changes how overlapping
            palm detections are merged.

    Returns:
        The hands found, sorted left to right by box centre (empty if none).

    Raises:
        MeshrecError: a bad image (type, shape, dtype, empty), ``max_hands`` or ``min_confidence``.
        DetectorUnavailableError: mediapipe is not installed (or lacks the hand models).
    """
    if isinstance(max_hands, bool) or not isinstance(max_hands, (int, np.integer)) or max_hands < 1:
        raise MeshrecError(f"max_hands must be an int >= 1, got {max_hands!r}")
    if (
        isinstance(min_confidence, bool)
        or not isinstance(min_confidence, (int, float, np.integer, np.floating))
        or not 0.0 <= float(min_confidence) <= 1.0
    ):
        raise MeshrecError(f"min_confidence must be a number in [0, 1], got {min_confidence!r}")
    rgb = _rgb_array(image)
    detector = _detector(int(max_hands), float(min_confidence))
    with detector.lock:
        result = detector.hands.process(rgb)
    landmarks = result.multi_hand_landmarks or []
    handedness = result.multi_handedness or []
    if not landmarks:
        return []
    height, width = rgb.shape[:2]
    normalized = np.array([[(mark.x, mark.y) for mark in hand.landmark] for hand in landmarks], dtype=np.float64)
    keypoints = normalized_to_pixels(normalized, (height, width))  # (N, 21, 2)
    boxes = _boxes(keypoints, (height, width))  # (N, 4)
    hands = []
    for points, box, classes in zip(keypoints, boxes, handedness):
        best = classes.classification[0]
        points, box = points.copy(), box.copy()
        points.setflags(write=False)
        box.setflags(write=False)
        hands.append(DetectedHand(points, side_from_mediapipe_label(best.label), float(best.score), box))
    hands.sort(key=lambda hand: float(hand.box[0] + hand.box[2]))
    return hands


def _boxes(keypoints: np.ndarray, image_size: tuple[int, int]) -> np.ndarray:
    """``(N, 21, 2)`` keypoints -> ``(N, 4)`` float32 crop boxes (the one box choice in meshrec)."""
    import torch

    from meshrec.data.crop import hand_crop_box

    boxes = hand_crop_box(image_size, joints2d=torch.from_numpy(np.ascontiguousarray(keypoints)))
    return boxes.numpy().astype(np.float32, copy=True)


def _rgb_array(image) -> np.ndarray:
    """``image`` as a C-contiguous ``(H, W, 3)`` uint8 RGB array (see :func:`detect_hands`)."""
    if not isinstance(image, np.ndarray):
        image = _array_from_pil(image)
    if image.dtype != np.uint8:
        hint = (
            "for floats in [0, 1] pass (image * 255).round().astype(np.uint8)"
            if np.issubdtype(image.dtype, np.floating)
            else "scale it to 0..255 and cast with .astype(np.uint8)"
        )
        raise MeshrecError(f"image must be a uint8 RGB array (0..255), got dtype {image.dtype}: {hint}")
    shape = tuple(image.shape)
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        hint = ""
        if image.ndim == 3 and image.shape[0] in (1, 3, 4):
            hint = "; a channels-first (C, H, W) array becomes (H, W, C) with image.transpose(1, 2, 0)"
        raise MeshrecError(
            f"image must have shape (H, W, 3) (RGB; also (H, W), (H, W, 1) grey or (H, W, 4) RGBA), "
            f"got shape {shape}{hint}"
        )
    if image.shape[0] == 0 or image.shape[1] == 0:
        raise MeshrecError(f"image is empty: shape {shape}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


def _array_from_pil(image) -> np.ndarray:
    """A PIL image as an ``(H, W, 3)`` uint8 RGB array; anything else is a :class:`MeshrecError`."""
    from PIL import Image

    if not isinstance(image, Image.Image):
        kind = f"{type(image).__module__}.{type(image).__qualname__}"
        hint = ""
        if kind.startswith("torch."):
            hint = (
                "; a (3, H, W) float tensor in [0, 1] becomes one with "
                "(image.permute(1, 2, 0) * 255).round().byte().cpu().numpy()"
            )
        raise MeshrecError(f"image must be an (H, W, 3) uint8 RGB numpy array or a PIL image, got {kind}{hint}")
    if image.mode in _HIGH_DEPTH_PIL_MODES:
        raise MeshrecError(
            f"image has PIL mode {image.mode!r} (16-bit or float); scale it to 8 bits first, "
            "e.g. Image.fromarray((np.asarray(image) / scale * 255).astype(np.uint8))"
        )
    if image.width == 0 or image.height == 0:
        raise MeshrecError(f"image is empty: size {image.size}")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)


@dataclass(frozen=True)
class _Detector:
    """A MediaPipe Hands graph and the lock that serialises calls to it."""

    hands: object
    lock: threading.Lock


_DETECTORS: dict[tuple[int, float], _Detector] = {}
_DETECTORS_LOCK = threading.Lock()


def _hands_module():
    """``mediapipe.solutions.hands`` (looked up on every call, a dictionary lookup once imported, so a
    process whose mediapipe is made unimportable, e.g. ``sys.modules['mediapipe'] = None``, gets the
    install message even with a detector cached)."""
    try:
        import mediapipe
    except ImportError as error:
        if isinstance(error, ModuleNotFoundError) and error.name == "mediapipe":
            raise DetectorUnavailableError(
                f"detect_hands needs {MEDIAPIPE_REQUIREMENT}, which is not installed: {_INSTALL_HINT}"
            ) from None
        raise DetectorUnavailableError(
            f"detect_hands needs {MEDIAPIPE_REQUIREMENT}, and importing mediapipe failed "
            f"({type(error).__name__}: {error}); reinstall it: {_INSTALL_HINT}"
        ) from error
    try:
        from mediapipe.python.solutions import hands
    except ImportError as error:
        version = getattr(mediapipe, "__version__", "unknown")
        raise DetectorUnavailableError(
            f"detect_hands needs {MEDIAPIPE_REQUIREMENT} (mediapipe.solutions.hands and its hand models); "
            f"the installed mediapipe {version} has none ({error}): {_INSTALL_HINT}"
        ) from None
    return hands


def _detector(max_hands: int, min_confidence: float) -> _Detector:
    """The process's detector for these settings, created on first use (it takes a while)."""
    hands_module = _hands_module()
    key = (max_hands, min_confidence)
    with _DETECTORS_LOCK:
        detector = _DETECTORS.get(key)
        if detector is None:
            hands = hands_module.Hands(
                static_image_mode=True,
                max_num_hands=max_hands,
                model_complexity=1,  # the "full" landmark model
                min_detection_confidence=min_confidence,
                min_tracking_confidence=min_confidence,
            )
            detector = _DETECTORS[key] = _Detector(hands, threading.Lock())
    return detector
