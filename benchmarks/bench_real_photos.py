"""How well the model agrees with the hand detector on real photos (2D, per hand).

Usage: python benchmarks/bench_real_photos.py [FOLDER ...] [--checkpoint C] [--out runs/bench_real_photos]

The detector (MediaPipe's landmark model, trained on real photos) gives each hand's 21 keypoints;
they are the reference. For every hand it finds, the model reconstructs the crop around them, and
its 2D keypoints are compared with the detector's in the photo's pixels, relative to the hand's
size (the longer side of the detector keypoints' bounding box):

- ``mesh (the network)``: the network's final mesh's 21 joints projected with the crop's camera;
- ``head (the network)``: the model's keypoint head (its own 2D estimate, before any mesh);
- ``mesh fitted to the keypoints``: the mesh ``meshrec predict`` writes and overlays, fitted to
  these very keypoints (``meshrec.fitting``), so its agreement is not an independent measure;
- ``mesh fitted without the keypoints it is scored on``: the same fit run four times, each time
  without a quarter of the keypoints (one joint of every finger, :func:`keypoint_folds`), each
  keypoint scored from the fit that did not see it: how well the fitted hand follows the photo
  where it was not told.

Columns: mean error / hand size, PCK@0.1 and PCK@0.2 (share of keypoints within 0.1 / 0.2 hand
sizes). Default folder: ``tests/fixtures/photos``. The per-hand rows and the overlays go to --out.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]


def agreement(predicted: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, float]:
    """Per-keypoint error / hand size ``(21,)`` and the hand size (px) of ``(21, 2)`` keypoints."""
    size = float((reference.max(0) - reference.min(0)).max())
    return np.linalg.norm(predicted - reference, axis=-1) / max(size, 1.0), size


def keypoint_folds() -> list[list[int]]:
    """Four folds of the 21 keypoints, each holding one joint of every finger at staggered levels
    (finger f's joint at level l, 0 the base, is in fold (f + l) mod 4; the wrist in fold 0)."""
    folds: list[list[int]] = [[0], [], [], []]
    for keypoint in range(1, 21):
        finger, level = divmod(keypoint - 1, 4)
        folds[(finger + level) % 4].append(keypoint)
    return folds


def main() -> None:
    import dataclasses

    from meshrec import HandMeshReconstructor
    from meshrec.data.crop import transform_points
    from meshrec.inference import ImageSkipped, collect_requests, fit_to_crop_keypoints, predict_crops, predict_images, prepare_crops

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folders", nargs="*", type=Path, default=[ROOT / "tests" / "fixtures" / "photos"])
    parser.add_argument("--checkpoint", default=None, help="default: the bundled model")
    parser.add_argument("--out", type=Path, default=ROOT / "runs" / "bench_real_photos")
    parser.add_argument("--box-padding", type=float, default=None, help="crop side / keypoint extent (default: predict's)")
    args = parser.parse_args()

    model = HandMeshReconstructor.load(args.checkpoint)
    requests = [request for folder in args.folders for request in collect_requests(folder)[0]]
    padding = {} if args.box_padding is None else {"box_padding": args.box_padding}
    # what a user gets (fitted meshes, overlays in place, a contact sheet) ...
    summary = predict_images(model, requests, args.out, detect=True, overlay=True, contact_sheet=True, progress=False, **padding)
    # ... and, from the same crops, the network's own estimates and fits that never saw the keypoints they are scored on
    crops = []
    for request in requests:
        try:
            crops += prepare_crops(request, model.config.image_size, detect=True, **padding)
        except ImageSkipped:
            pass
    if not crops:
        raise SystemExit(f"no hand found in {[str(f) for f in args.folders]}")
    inference = model.for_inference()
    prediction = predict_crops(inference, crops)
    fitted, _ = fit_to_crop_keypoints(inference, prediction, crops)
    held_out = fitted.joints2d.clone()
    for fold in keypoint_folds():
        shown = np.ones(21, dtype=bool)
        shown[fold] = False
        without = [dataclasses.replace(crop, request=dataclasses.replace(crop.request, visible=shown)) for crop in crops]
        fit, _ = fit_to_crop_keypoints(inference, prediction, without)
        held_out[:, fold] = fit.joints2d[:, fold]
    estimates = {
        "mesh (the network)": prediction.joints2d,
        "head (the network)": prediction.keypoints2d,
        "mesh fitted to the keypoints (what predict writes; not independent)": fitted.joints2d,
        "mesh fitted without the keypoints it is scored on (4 folds)": held_out,
    }
    rows, errors = [], {name: [] for name in estimates}
    for index, crop in enumerate(crops):
        reference = np.asarray(crop.detection.keypoints2d, dtype=np.float64)
        to_image = np.linalg.inv(crop.transform.numpy())
        row = {"hand": f"{crop.request.name}#{crop.hand}", "side": crop.request.side}
        for name, pixels in estimates.items():
            in_image = transform_points(pixels[index].detach().double(), torch.as_tensor(to_image)).numpy()
            error, size = agreement(in_image, reference)
            errors[name].append(error)
            row.update({name: float(error.mean()), "hand_px": size})
        rows.append(row)

    print(f"{len(rows)} hands in {len({crop.request.name for crop in crops})} photos "
          f"({len(summary.failures)} without a hand); model: {args.checkpoint or 'bundled synthetic-hands'}\n")
    print("| 2D keypoints | mean error / hand size | PCK@0.1 | PCK@0.2 |\n|---|---:|---:|---:|")
    for name, values in errors.items():
        stacked = np.stack(values)
        print(f"| {name} | {stacked.mean():.3f} | {(stacked <= 0.1).mean():.0%} | {(stacked <= 0.2).mean():.0%} |")
    print("\n| hand | side | hand size (px) | mesh / size | head / size | fitted / size | held-out fit / size |\n|---|---|---:|---:|---:|---:|---:|")
    for row in rows:
        cells = " | ".join(f"{row[name]:.3f}" for name in estimates)
        print(f"| {row['hand']} | {row['side']} | {row['hand_px']:.0f} | {cells} |")
    (args.out / "bench_real_photos.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
