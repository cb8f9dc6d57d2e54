"""``meshrec pseudo-label``: the hand detector's 2D keypoints on your photos, as training labels.

    meshrec pseudo-label PHOTOS --out labels.jsonl [--max-hands 4] [--min-confidence 0.5]
    meshrec train --config configs/keypoints_json.yaml data.root=labels.jsonl
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="label your photos' hands with the detector's 2D keypoints (a .jsonl that training reads)",
        description="Run the hand detector over a folder of images (or one image) and write one record per hand "
        "(image, box, side, 21 keypoints with visibility) in the format of meshrec.data.keypoints_json.",
    )
    parser.add_argument("images", type=Path, help="a folder of images (not recursive) or one image")
    parser.add_argument("--out", type=Path, required=True, help="the label file to write (.jsonl)")
    parser.add_argument("--max-hands", type=int, default=4, help="most hands per image (default: 4)")
    parser.add_argument("--min-confidence", type=float, default=0.5, help="the detector's threshold (default: 0.5)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshrec.pseudo_label import pseudo_label

    summary = pseudo_label(args.images, args.out, max_hands=args.max_hands, min_confidence=args.min_confidence)
    print(summary.describe())
    return 0 if summary.num_hands else 1
