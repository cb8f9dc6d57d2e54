"""How far the hand detector's keypoints lie from the true joints, on labelled synthetic hands.

Usage: python benchmarks/bench_detector.py [--data data/model_photo] [--split evaluation] [--count 300]

The real-photo benchmark (bench_real_photos.py) and `meshrec pseudo-label` take the detector's
keypoints as the reference; this measures that reference against the truth on a FreiHAND-layout
folder with labels (``meshrec synth``, e.g. the photo style): error / hand size (as in
bench_real_photos.py: the longer side of the reference keypoints' box), PCK@0.1 / 0.2, and each
keypoint's mean offset — a systematic offset would mean the detector's landmarks are other points
of the hand than the mesh's joints.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np


def main() -> None:
    from PIL import Image

    from bench_real_photos import agreement  # the hand size the real-photo benchmark divides by

    from meshrec.detect import detect_hands

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="data/model_photo")
    parser.add_argument("--split", default="evaluation")
    parser.add_argument("--count", type=int, default=300)
    args = parser.parse_args()

    root = Path(args.data)
    intrinsics = json.loads((root / f"{args.split}_K.json").read_text())
    joints = json.loads((root / f"{args.split}_xyz.json").read_text())
    offsets = []
    count = min(args.count, len(joints))
    for index in range(count):
        image = np.asarray(Image.open(root / args.split / "rgb" / f"{index:08d}.jpg").convert("RGB"))
        projected = np.asarray(joints[index]) @ np.asarray(intrinsics[index]).T
        truth = projected[:, :2] / projected[:, 2:]
        hands = detect_hands(image, max_hands=1)
        if hands:
            _, size = agreement(hands[0].keypoints2d, truth)
            offsets.append((hands[0].keypoints2d - truth) / max(size, 1.0))
    offsets = np.stack(offsets)  # (N, 21, 2) in hand sizes
    error = np.linalg.norm(offsets, axis=-1)
    mean_offset = offsets.mean(0)
    left = np.linalg.norm(offsets - mean_offset, axis=-1)
    print(f"{root} {args.split}: the detector found a hand in {len(offsets)} of {count} images\n")
    print("| detector keypoints vs true joints | mean error / hand size | PCK@0.1 | PCK@0.2 |\n|---|---:|---:|---:|")
    print(f"| as detected | {error.mean():.3f} | {(error < 0.1).mean():.0%} | {(error < 0.2).mean():.0%} |")
    print(f"| each keypoint's mean offset removed | {left.mean():.3f} | {(left < 0.1).mean():.0%} | {(left < 0.2).mean():.0%} |")
    print("\neach keypoint's mean offset (hand sizes):", np.round(np.linalg.norm(mean_offset, axis=1), 3).tolist())


if __name__ == "__main__":
    main()
