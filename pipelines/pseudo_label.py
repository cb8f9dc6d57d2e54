"""``meshrec pseudo-label``: the hand detector's 2D keypoints on your photos, as training labels.

    meshrec pseudo-label PHOTOS --out labels.jsonl [--max-hands 4] [--min-confidence 0.5] [--min-keypoint-confidence 0.5]
    meshrec train --config configs/keypoints_json.yaml data.root=labels.jsonl

Each keypoint's confidence comes from flip consistency (the detector on the photo and on its
mirror image; :mod:`meshrec.pseudo_label`); keypoints below ``--min-keypoint-confidence`` are
marked not visible.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _unit_interval(text: str) -> float:
    """An argparse type: a number in ``[0, 1]``."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text!r}") from None
    if not 0.0 <= value <= 1.0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1], got {text}")
    return value


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    from meshrec.pseudo_label import DEFAULT_MIN_KEYPOINT_CONFIDENCE

    parser = subparsers.add_parser(
        name,
        help="label your photos' hands with the detector's 2D keypoints (a .jsonl that training reads)",
        description="Run the hand detector over a folder of images (or one image) and write one record per hand "
        "(image, box, side, 21 keypoints with a confidence that doubles as visibility) in the format of "
        "meshrec.data.keypoints_json. Each image is detected twice, as is and mirrored: a keypoint's confidence is "
        "how well its two estimates agree, relative to the hand's size (flip consistency).",
    )
    parser.add_argument("images", type=Path, help="a folder of images (not recursive) or one image")
    parser.add_argument("--out", type=Path, required=True, help="the label file to write (.jsonl)")
    parser.add_argument("--max-hands", type=int, default=4, help="most hands per image (default: 4)")
    parser.add_argument("--min-confidence", type=float, default=0.5, help="the detector's threshold per hand (default: 0.5)")
    parser.add_argument(
        "--min-keypoint-confidence",
        type=_unit_interval,
        default=DEFAULT_MIN_KEYPOINT_CONFIDENCE,
        help="keypoints whose flip-consistency confidence is below this, in [0, 1], are marked not visible "
        f"(default: {DEFAULT_MIN_KEYPOINT_CONFIDENCE:g}, reached when the photo's and the mirror's estimates are "
        "about 8%% of the hand's size apart: clear hands keep nearly all keypoints; 0 keeps every keypoint "
        "inside the image)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshrec.pseudo_label import pseudo_label

    summary = pseudo_label(
        args.images,
        args.out,
        max_hands=args.max_hands,
        min_confidence=args.min_confidence,
        min_keypoint_confidence=args.min_keypoint_confidence,
    )
    print(summary.describe())
    return 0 if summary.num_hands else 1
