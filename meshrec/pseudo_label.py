"""Pseudo-labels: the hand detector's 2D keypoints on your own photos, as a label file for training.

``meshrec pseudo-label PHOTOS --out labels.jsonl`` runs :func:`meshrec.detect.detect_hands` over a
folder of images (or video frames) and writes one record per hand in the format of
:mod:`meshrec.data.keypoints_json`, which ``configs/keypoints_json.yaml`` trains on (2D keypoints
only; the mesh stays hand-shaped through the priors)::

    {"image": "photos/0001.jpg", "joints2d": [[u, v, confidence], ... 21 rows], "side": "left",
     "box": [x0, y0, x1, y1], "meta": {"source": "meshrec pseudo-label", "hand": 0, "score": 0.97,
     "keypoint_confidence_from": "flip consistency", "mirrored_match": true,
     "min_keypoint_confidence": 0.5, "keypoint_confidence": [21 values]}}

MediaPipe scores each hand (``meta.score``, its confidence in the side), not its keypoints, so
the per-keypoint confidence is made here from test-time flip consistency: the detector also runs
on the horizontally mirrored image, each hand is paired with the mirrored detection that lands on
it once mapped back (:func:`match_mirrored_hands`), and a keypoint whose two estimates agree gets
a confidence near 1, one whose estimates differ by a good part of the hand's size a confidence
near 0 (:func:`flip_consistency_confidence`). A hand with no partner in the mirrored image gets
confidence 0 for every keypoint (``meta.mirrored_match: false``). Agreement is evidence, not
proof: a keypoint the detector gets wrong the same way in both images keeps a high confidence.

The third ``joints2d`` column is that confidence where the keypoint lies inside the image and
its confidence is at least ``min_keypoint_confidence``, else 0; :mod:`meshrec.data.keypoints_json`
counts a value > 0 as visible, so it is the confidence and the visibility at once, and the 2D
loss skips the rest. ``meta.keypoint_confidence`` keeps all 21 confidences, before the threshold
and the image-border check, to choose another threshold without running the detector again.
Hands below the detector's ``min_confidence`` are not written.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from meshrec.errors import MeshrecError

__all__ = [
    "DEFAULT_MIN_KEYPOINT_CONFIDENCE",
    "FLIP_CONFIDENCE_SCALE",
    "MAX_MIRRORED_MATCH_DISTANCE",
    "PseudoLabelSummary",
    "detect_hands_with_flip_confidence",
    "flip_consistency_confidence",
    "hand_record",
    "hand_size",
    "match_mirrored_hands",
    "mirror_keypoints",
    "pseudo_label",
]

PSEUDO_LABEL_SOURCE = "meshrec pseudo-label"
KEYPOINT_CONFIDENCE_FROM = "flip consistency"
NUM_KEYPOINTS = 21

# A keypoint whose original and mirrored estimates are FLIP_CONFIDENCE_SCALE * hand_size apart
# gets confidence exp(-1) = 0.37 (0.5 at 0.083 * size). On the photos we tried, a clear hand's
# median keypoint had its two MediaPipe estimates 0.5-6 % of the size apart (confidence 0.7-1), a
# hidden fingertip 10-20 % and a doubtful hand's keypoints 20-40 %.
FLIP_CONFIDENCE_SCALE = 0.1

# Mean keypoint distance, as a fraction of the hand's size, beyond which a mirrored detection is
# another hand. At 0.3 * size the confidence is already exp(-9) ~ 1e-4, so the cut changes no
# confidence of its own: it only stops a hand from borrowing a neighbour's keypoints.
MAX_MIRRORED_MATCH_DISTANCE = 0.3

# Keeps the keypoints whose two estimates are within ~8 % of the hand's size: nearly all keypoints
# of clear hands, few of a hand the detector is unsure of.
DEFAULT_MIN_KEYPOINT_CONFIDENCE = 0.5

# The smallest value written for a visible keypoint: a confidence that rounds to 0.000 would
# otherwise read as not visible, so min_keypoint_confidence=0 keeps every keypoint in the image.
_MIN_VISIBLE_VALUE = 0.001


@dataclass
class PseudoLabelSummary:
    """What :func:`pseudo_label` wrote: the file, hands per image, the images without one, and
    how many keypoints the confidence threshold hid."""

    out_path: Path
    hands_per_image: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (image, why)
    min_keypoint_confidence: float = DEFAULT_MIN_KEYPOINT_CONFIDENCE
    low_confidence_keypoints: int = 0  # keypoints written with confidence < min_keypoint_confidence
    unmatched_hands: int = 0  # hands not found again in the mirrored image

    @property
    def num_hands(self) -> int:
        return sum(self.hands_per_image.values())

    def describe(self) -> str:
        """A few lines for people: counts, keypoints below the confidence threshold, then every
        image without a hand and why."""
        labelled = sum(1 for count in self.hands_per_image.values() if count)
        lines = [f"{self.num_hands} hands in {labelled} of {len(self.hands_per_image) + len(self.failures)} "
                 f"images written to {self.out_path}"]  # fmt: skip
        if self.num_hands:
            line = (f"  {self.low_confidence_keypoints} of {self.num_hands * NUM_KEYPOINTS} keypoints below "
                    f"min_keypoint_confidence {self.min_keypoint_confidence:g} (flip consistency), marked not visible")  # fmt: skip
            if self.unmatched_hands:
                hands = "hand" if self.unmatched_hands == 1 else "hands"
                line += f"; {self.unmatched_hands} {hands} not found in the mirrored image (confidence 0)"
            lines.append(line)
        unlabelled = [(image, "no hand found") for image, count in self.hands_per_image.items() if not count]
        for image, reason in unlabelled + self.failures:
            lines.append(f"  {image}: {reason}")
        return "\n".join(lines)


def _keypoints(value, name: str) -> np.ndarray:
    """``value`` as a finite ``(21, 2)`` float64 array, or a :class:`MeshrecError` saying what it is."""
    array = np.asarray(value, dtype=np.float64)
    if array.shape != (NUM_KEYPOINTS, 2):
        raise MeshrecError(f"{name} must have shape ({NUM_KEYPOINTS}, 2), got {array.shape}")
    if not np.isfinite(array).all():
        raise MeshrecError(f"{name} must be finite, got {int((~np.isfinite(array)).sum())} NaN or infinite values")
    return array


def hand_size(keypoints: np.ndarray) -> float:
    """The size of a hand, pixels: the diagonal of its ``(21, 2)`` keypoints' bounding box (not of
    the padded crop box), so it scales with the hand and not with the image.

    >>> hand_size(np.array([[0.0, 0.0]] * 20 + [[30.0, 40.0]]))
    50.0
    """
    points = _keypoints(keypoints, "keypoints")
    return float(np.linalg.norm(points.max(axis=0) - points.min(axis=0)))


def mirror_keypoints(keypoints: np.ndarray, width: int) -> np.ndarray:
    """``(..., 2)`` ``(u, v)`` pixels of an image of width ``W`` <-> the same points in its
    horizontal mirror: ``u -> W - 1 - u`` (pixel centres at integers, so pixel column ``c`` is
    column ``W - 1 - c`` of the mirror); its own inverse.

    >>> mirror_keypoints(np.array([[0.0, 5.0], [-0.5, 1.0]]), 10).tolist()
    [[9.0, 5.0], [9.5, 1.0]]
    """
    mirrored = np.array(keypoints, dtype=np.float64)
    mirrored[..., 0] = width - 1 - mirrored[..., 0]
    return mirrored


def flip_consistency_confidence(
    keypoints: np.ndarray, mirrored_back: np.ndarray, size: float, *, scale: float = FLIP_CONFIDENCE_SCALE
) -> np.ndarray:
    """Per-keypoint confidence from the agreement of two estimates of one hand.

    ``confidence_j = exp(-(d_j / (scale * size)) ** 2)`` with ``d_j`` the distance between the
    two estimates of keypoint ``j``: 1 where they agree, ``exp(-1)`` at ``scale * size`` apart,
    falling towards 0 beyond; only the ratio ``d_j / size`` counts, so a hand and the same hand
    photographed twice as large get the same confidences.

    Args:
        keypoints: ``(21, 2)`` ``(u, v)`` pixels, the detection on the image.
        mirrored_back: ``(21, 2)`` the detection on the mirrored image, mapped back to the
            image (:func:`mirror_keypoints`), same keypoint order.
        size: the hand's size, pixels (> 0; :func:`hand_size` of ``keypoints``).
        scale: the distance, as a fraction of ``size``, at which the confidence is ``exp(-1)``.

    Returns:
        ``(21,)`` float64 confidences in ``[0, 1]``.

    Raises:
        MeshrecError: a shape other than ``(21, 2)``, non-finite keypoints, or ``size`` /
            ``scale`` not a finite number > 0.

    >>> k = np.zeros((21, 2)); k[:, 0] = np.arange(21)
    >>> flip_consistency_confidence(k, k + [0.0, 2.0], 20.0)[:2].round(3).tolist()
    [0.368, 0.368]
    """
    points = _keypoints(keypoints, "keypoints")
    other = _keypoints(mirrored_back, "mirrored_back")
    for name, value in (("size", size), ("scale", scale)):
        if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not (math.isfinite(value) and value > 0):
            raise MeshrecError(f"{name} must be a finite number > 0, got {value!r}")
    distance = np.linalg.norm(points - other, axis=1)
    return np.exp(-((distance / (float(scale) * float(size))) ** 2))


def match_mirrored_hands(
    keypoints: list[np.ndarray], mirrored_back: list[np.ndarray], *, max_distance: float = MAX_MIRRORED_MATCH_DISTANCE
) -> list[int | None]:
    """Pair each hand with the mirrored detection of the same hand.

    The cost of a pair is the mean keypoint distance divided by the hand's :func:`hand_size`;
    pairs are taken cheapest first, each detection used once, and only below ``max_distance``.
    Sides are not compared: mirroring turns a right hand into a left one.

    Args:
        keypoints: the hands' ``(21, 2)`` keypoints on the image.
        mirrored_back: the ``(21, 2)`` keypoints of the detections on the mirrored image,
            mapped back to the image (:func:`mirror_keypoints`).
        max_distance: the largest mean distance, as a fraction of the hand's size, of a pair.

    Returns:
        For each hand, the index into ``mirrored_back`` of its partner, or ``None``.

    >>> k = np.zeros((21, 2)); k[:, 0] = np.arange(21)
    >>> match_mirrored_hands([k, k + 100], [k + 101, k + 0.5, k + 50])
    [1, 0]
    """
    hands = [_keypoints(points, f"keypoints[{index}]") for index, points in enumerate(keypoints)]
    others = [_keypoints(points, f"mirrored_back[{index}]") for index, points in enumerate(mirrored_back)]
    pairs = []
    for i, points in enumerate(hands):
        size = _matching_size(points)
        for j, other in enumerate(others):
            cost = float(np.linalg.norm(points - other, axis=1).mean()) / size
            if cost < max_distance:
                pairs.append((cost, i, j))
    partners: list[int | None] = [None] * len(hands)
    taken = set()
    for _, i, j in sorted(pairs):
        if partners[i] is None and j not in taken:
            partners[i] = j
            taken.add(j)
    return partners


def _matching_size(keypoints: np.ndarray) -> float:
    """:func:`hand_size`, at least 1 px: a collapsed detection must not divide by zero."""
    return max(hand_size(keypoints), 1.0)


def detect_hands_with_flip_confidence(image, *, max_hands: int = 4, min_confidence: float = 0.5) -> list[tuple[object, np.ndarray | None]]:
    """:func:`meshrec.detect.detect_hands` on ``image`` and on its horizontal mirror: each hand
    with its ``(21,)`` :func:`flip_consistency_confidence`, or ``None`` where the mirrored image
    holds no detection of it (:func:`match_mirrored_hands`).

    Args:
        image: ``(H, W, 3)`` uint8 RGB array or a PIL image (as :func:`~meshrec.detect.detect_hands`).
        max_hands, min_confidence: passed to :func:`~meshrec.detect.detect_hands` for both images.

    Returns:
        ``[(hand, confidence), ...]``, the hands in :func:`~meshrec.detect.detect_hands`'s order.
    """
    from meshrec import detect  # looked up per call, so a stand-in detector can be patched in

    hands = detect.detect_hands(image, max_hands=max_hands, min_confidence=min_confidence)  # checks the image
    if not hands:
        return []
    if isinstance(image, np.ndarray):
        width, mirror_image = image.shape[1], np.ascontiguousarray(image[:, ::-1])
    else:
        from PIL import ImageOps

        width, mirror_image = image.width, ImageOps.mirror(image)
    mirrored = detect.detect_hands(mirror_image, max_hands=max_hands, min_confidence=min_confidence)
    mirrored_back = [mirror_keypoints(hand.keypoints2d, width) for hand in mirrored]
    partners = match_mirrored_hands([hand.keypoints2d for hand in hands], mirrored_back)
    results = []
    for hand, partner in zip(hands, partners):
        confidence = None
        if partner is not None:
            confidence = flip_consistency_confidence(hand.keypoints2d, mirrored_back[partner], _matching_size(hand.keypoints2d))
        results.append((hand, confidence))
    return results


def _check_unit_interval(value, name: str) -> float:
    """``value`` as a float in ``[0, 1]``, or a :class:`MeshrecError` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or not 0.0 <= float(value) <= 1.0:
        raise MeshrecError(f"{name} must be a number in [0, 1], got {value!r}")
    return float(value)


def hand_record(
    hand,
    image_path: Path,
    image_size: tuple[int, int],
    label_folder: Path,
    index: int,
    *,
    confidence: np.ndarray | None = None,
    min_keypoint_confidence: float = DEFAULT_MIN_KEYPOINT_CONFIDENCE,
) -> dict:
    """The label record of one detected hand (``hand``: a :class:`~meshrec.detect.DetectedHand`)
    of an ``(H, W)`` image, its path relative to ``label_folder``.

    ``confidence`` is the hand's ``(21,)`` per-keypoint confidence (``None``: not found in the
    mirrored image, confidence 0). The third ``joints2d`` column is the confidence, rounded to
    3 decimals and at least 0.001, of each keypoint inside the image with confidence
    ``>= min_keypoint_confidence``, and 0 (not visible) for the others.

    Raises:
        MeshrecError: ``confidence`` not of shape ``(21,)`` or outside ``[0, 1]``, or
            ``min_keypoint_confidence`` outside ``[0, 1]``.
    """
    threshold = _check_unit_interval(min_keypoint_confidence, "min_keypoint_confidence")
    height, width = image_size
    keypoints = np.asarray(hand.keypoints2d, dtype=np.float64)
    matched = confidence is not None
    confidence = np.zeros(NUM_KEYPOINTS) if confidence is None else np.asarray(confidence, dtype=np.float64)
    if confidence.shape != (NUM_KEYPOINTS,) or not ((confidence >= 0) & (confidence <= 1)).all():
        raise MeshrecError(f"confidence must be ({NUM_KEYPOINTS},) values in [0, 1], got shape {confidence.shape}")
    inside = (keypoints[:, 0] >= -0.5) & (keypoints[:, 0] <= width - 0.5) & (keypoints[:, 1] >= -0.5) & (keypoints[:, 1] <= height - 0.5)
    visible = inside & (confidence >= threshold)
    values = np.where(visible, np.maximum(confidence.round(3), _MIN_VISIBLE_VALUE), 0.0)
    return {
        "image": Path(os.path.relpath(image_path, label_folder)).as_posix(),
        "joints2d": [[round(u, 2), round(v, 2), float(value)] for (u, v), value in zip(keypoints.tolist(), values.tolist())],
        "side": hand.side,
        "box": [round(float(value), 2) for value in np.asarray(hand.box)],
        "meta": {
            "source": PSEUDO_LABEL_SOURCE,
            "hand": index,
            "score": round(float(hand.score), 4),
            "keypoint_confidence_from": KEYPOINT_CONFIDENCE_FROM,
            "mirrored_match": matched,
            "min_keypoint_confidence": threshold,
            "keypoint_confidence": confidence.round(3).tolist(),
        },
    }


def pseudo_label(
    images: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    max_hands: int = 4,
    min_confidence: float = 0.5,
    min_keypoint_confidence: float = DEFAULT_MIN_KEYPOINT_CONFIDENCE,
    exif_transpose: bool = True,
) -> PseudoLabelSummary:
    """Detect the hands in ``images`` (a folder, not recursive, or one image) and write their
    records to ``out_path`` (``.jsonl``, atomically; its folder is created).

    Each image is run through the detector twice (as is and mirrored) for the per-keypoint
    confidence (:func:`detect_hands_with_flip_confidence`). ``min_keypoint_confidence`` in
    ``[0, 1]``: keypoints below it are marked not visible; the default 0.5 keeps the keypoints
    whose two estimates are within about 8 % of the hand's size, nearly all of a clear hand's;
    0 keeps every keypoint inside the image.

    Raises:
        MeshrecError: ``images`` holds no image, ``out_path`` is not ``.jsonl``, or
            ``min_keypoint_confidence`` is outside ``[0, 1]``.
        meshrec.detect.DetectorUnavailableError: the detector is not installed.
    """
    from manolayer.io import write_bytes_atomic  # imports torch: not at module top, which the CLI reads for its defaults
    from meshrec.inference import ImageSkipped, collect_requests, read_request_image

    out_path = Path(out_path)
    if out_path.suffix.lower() != ".jsonl":
        raise MeshrecError(f"pseudo-labels are written as JSON Lines: give a .jsonl path, got {out_path}")
    threshold = _check_unit_interval(min_keypoint_confidence, "min_keypoint_confidence")
    requests, _ = collect_requests(images)
    folder = out_path.parent.resolve()
    summary = PseudoLabelSummary(out_path=out_path, min_keypoint_confidence=threshold)
    lines = []
    for request in requests:
        name = str(request.image)
        try:
            image = read_request_image(request, exif_transpose)
        except ImageSkipped as error:
            summary.failures.append((name, error.reason))
            continue
        hands = detect_hands_with_flip_confidence(image, max_hands=max_hands, min_confidence=min_confidence)
        summary.hands_per_image[name] = len(hands)
        size = (image.height, image.width)
        for index, (hand, confidence) in enumerate(hands):
            record = hand_record(hand, Path(request.image).resolve(), size, folder, index, confidence=confidence, min_keypoint_confidence=threshold)
            written = np.zeros(NUM_KEYPOINTS) if confidence is None else confidence
            summary.low_confidence_keypoints += int((written < threshold).sum())
            summary.unmatched_hands += confidence is None
            lines.append(json.dumps(record))
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out_path, "".join(line + "\n" for line in lines).encode())
    return summary
