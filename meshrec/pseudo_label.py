"""Pseudo-labels: the hand detector's 2D keypoints on your own photos, as a label file for training.

``meshrec pseudo-label PHOTOS --out labels.jsonl`` runs :func:`meshrec.detect.detect_hands` over a
folder of images (or video frames) and writes one record per hand in the format of
:mod:`meshrec.data.keypoints_json`, which ``configs/keypoints_json.yaml`` trains on (2D keypoints
only; the mesh stays hand-shaped through the priors)::

    {"image": "photos/0001.jpg", "joints2d": [[u, v, visible], ... 21 rows], "side": "left",
     "box": [x0, y0, x1, y1], "meta": {"source": "meshrec pseudo-label", "hand": 0, "score": 0.97, ...}}

The detector gives no per-keypoint confidence, only one per hand (``meta.score``, its confidence
in the side): keypoints it places outside the image are marked not visible (the 2D loss skips
them), and hands below ``min_confidence`` are not written.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from manolayer.io import write_bytes_atomic
from meshrec.errors import MeshrecError

__all__ = ["PseudoLabelSummary", "pseudo_label", "hand_record"]

PSEUDO_LABEL_SOURCE = "meshrec pseudo-label"


@dataclass
class PseudoLabelSummary:
    """What :func:`pseudo_label` wrote: the file, hands per image, and the images without one."""

    out_path: Path
    hands_per_image: dict[str, int] = field(default_factory=dict)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (image, why)

    @property
    def num_hands(self) -> int:
        return sum(self.hands_per_image.values())

    def describe(self) -> str:
        """A few lines for people: counts, then every image without a hand and why."""
        labelled = sum(1 for count in self.hands_per_image.values() if count)
        lines = [f"{self.num_hands} hands in {labelled} of {len(self.hands_per_image) + len(self.failures)} "
                 f"images written to {self.out_path}"]  # fmt: skip
        unlabelled = [(image, "no hand found") for image, count in self.hands_per_image.items() if not count]
        for image, reason in unlabelled + self.failures:
            lines.append(f"  {image}: {reason}")
        return "\n".join(lines)


def hand_record(hand, image_path: Path, image_size: tuple[int, int], label_folder: Path, index: int) -> dict:
    """The label record of one detected hand (``hand``: a :class:`~meshrec.detect.DetectedHand`)
    of an ``(H, W)`` image, its path relative to ``label_folder``; keypoints outside the image
    are marked not visible."""
    height, width = image_size
    keypoints = np.asarray(hand.keypoints2d, dtype=np.float64)
    inside = (keypoints[:, 0] >= -0.5) & (keypoints[:, 0] <= width - 0.5) & (keypoints[:, 1] >= -0.5) & (keypoints[:, 1] <= height - 0.5)
    return {
        "image": Path(os.path.relpath(image_path, label_folder)).as_posix(),
        "joints2d": [[round(u, 2), round(v, 2), int(visible)] for (u, v), visible in zip(keypoints.tolist(), inside)],
        "side": hand.side,
        "box": [round(float(value), 2) for value in np.asarray(hand.box)],
        "meta": {"source": PSEUDO_LABEL_SOURCE, "hand": index, "score": round(float(hand.score), 4)},
    }


def pseudo_label(
    images: str | os.PathLike,
    out_path: str | os.PathLike,
    *,
    max_hands: int = 4,
    min_confidence: float = 0.5,
    exif_transpose: bool = True,
) -> PseudoLabelSummary:
    """Detect the hands in ``images`` (a folder, not recursive, or one image) and write their
    records to ``out_path`` (``.jsonl``, atomically; its folder is created).

    Raises:
        MeshrecError: ``images`` holds no image, or ``out_path`` is not ``.jsonl``.
        meshrec.detect.DetectorUnavailableError: the detector is not installed.
    """
    from meshrec.detect import detect_hands
    from meshrec.inference import ImageSkipped, collect_requests, read_request_image

    out_path = Path(out_path)
    if out_path.suffix.lower() != ".jsonl":
        raise MeshrecError(f"pseudo-labels are written as JSON Lines: give a .jsonl path, got {out_path}")
    requests, _ = collect_requests(images)
    folder = out_path.parent.resolve()
    summary = PseudoLabelSummary(out_path=out_path)
    lines = []
    for request in requests:
        name = str(request.image)
        try:
            image = read_request_image(request, exif_transpose)
        except ImageSkipped as error:
            summary.failures.append((name, error.reason))
            continue
        hands = detect_hands(image, max_hands=max_hands, min_confidence=min_confidence)
        summary.hands_per_image[name] = len(hands)
        size = (image.height, image.width)
        lines += [json.dumps(hand_record(hand, Path(request.image).resolve(), size, folder, index)) for index, hand in enumerate(hands)]
    folder.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(out_path, "".join(line + "\n" for line in lines).encode())
    return summary
