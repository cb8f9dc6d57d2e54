"""How well the model agrees with the hand detector on real photos (2D, per hand).

Usage: python benchmarks/bench_real_photos.py [FOLDER ...] [--checkpoint C] [--out runs/bench_real_photos]

The detector (MediaPipe's landmark model, trained on real photos) gives each hand's 21 keypoints;
they are the reference. For every hand it finds, the model reconstructs the crop around them, and
its 2D keypoints are compared with the detector's in the photo's pixels, relative to the hand's
size (the longer side of the detector keypoints' bounding box):

- ``mesh``: the final mesh's 21 joints projected with the crop's camera (what an overlay shows);
- ``head``: the model's keypoint head (its own 2D estimate, before any mesh).

Columns: mean error / hand size, PCK@0.1 and PCK@0.2 (share of keypoints within 0.1 / 0.2 hand
sizes). Default folder: ``tests/fixtures/photos``. The per-hand rows and the overlays go to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def agreement(predicted: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-keypoint error / hand size ``(21,)`` and the hand size (px) of ``(21, 2)`` keypoints."""
    size = float((reference.max(0) - reference.min(0)).max())
    return np.linalg.norm(predicted - reference, axis=-1) / max(size, 1.0), size


def main() -> None:
    from meshrec import HandMeshReconstructor
    from meshrec.inference import collect_requests, predict_images

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, default=[ROOT / "tests" / "fixtures" / "photos"])
    parser.add_argument("--checkpoint", default=None, help="default: the bundled model")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_real_photos")
    parser.add_argument("--box-padding", type=float, default=None, help="crop side / keypoint extent (default: predict's)")
    args = parser.parse_args()

    model = HandMeshReconstructor.load(args.checkpoint)
    requests = [request for folder in args.folders for request in collect_requests(folder)[0]]
    padding = {} if args.box_padding is None else {"box_padding": args.box_padding}
    summary = predict_images(model, requests, args.out, detect=True, overlay=True, contact_sheet=True, progress=False, **padding)
    rows, errors = [], {"mesh": [], "head": []}
    for result in summary.results:
        record = json.loads((args.out / f"{result.stem}.json").read_text())
        reference = np.asarray(record["detection"]["keypoints2d"])
        row = {"hand": result.stem, "side": result.side}
        for name, key in (("mesh", "joints2d"), ("head", "keypoints2d")):
            error, size = agreement(np.asarray(record[key]), reference)
            errors[name].append(error)
            row.update({f"{name}_error": float(error.mean()), "hand_px": size})
        rows.append(row)
    if not rows:
        raise SystemExit(f"no hand found in {[str(f) for f in args.folders]}")

    print(f"{len(rows)} hands in {len({r.source for r in summary.results})} photos "
          f"({len(summary.failures)} without a hand); model: {args.checkpoint or 'bundled synthetic-hands'}\n")
    print("| 2D keypoints | mean error / hand size | PCK@0.1 | PCK@0.2 |\n|---|---:|---:|---:|")
    for name in ("mesh", "head"):
        stacked = np.stack(errors[name])
        print(f"| {name} | {stacked.mean():.3f} | {(stacked <= 0.1).mean():.0%} | {(stacked <= 0.2).mean():.0%} |")
    print("\n| hand | side | hand size (px) | mesh error / size | head error / size |\n|---|---|---:|---:|---:|")
    for row in rows:
        print(f"| {row['hand']} | {row['side']} | {row['hand_px']:.0f} | {row['mesh_error']:.3f} | {row['head_error']:.3f} |")
    (args.out / "bench_real_photos.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
