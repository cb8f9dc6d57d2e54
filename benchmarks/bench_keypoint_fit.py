"""What fitting the hand to the detector's keypoints does in 3D, where the truth is known.

Usage: python benchmarks/bench_keypoint_fit.py [--data data/bench_photo] [--count 500] [--checkpoint C]

``meshrec predict`` fits each detected hand to the detector's 2D keypoints (``meshrec.fitting``).
On real photos only 2D agreement can be measured (bench_real_photos.py); here photo-style
synthetic hands (rendered once: seed 2029, 256 px so the detector sees them about as well as a
photo's hands, never used for training) have true meshes. For the hands the detector finds, the
model reconstructs the image (its true camera and side), and each mesh is scored against the
truth (mean and median over the hands): PA-MPVPE (mm) and the 2D error of its joints (px of the 128 px crop the network sees) —
the network's mesh, the mesh fitted to the detector's keypoints (what predict writes), and,
as the upper bound of the fit, the mesh fitted to the true keypoints.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PHOTO_BENCH_SEED = 2029
PHOTO_BENCH_SIZE = 256
PHOTO_BENCH_HANDS = 500


def main() -> None:
    import torch
    from PIL import Image

    from bench_accuracy import ensure_benchmark_set  # the held-out set, rendered once with its own seed

    from meshrec import HandMeshReconstructor
    from meshrec.data.crop import crop_transform, full_image_box, transform_points
    from meshrec.data.freihand import FreiHandDataset
    from meshrec.detect import detect_hands
    from meshrec.fitting import fit_to_keypoints
    from meshrec.geometry.procrustes import align_similarity

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "bench_photo")
    parser.add_argument("--count", type=int, default=PHOTO_BENCH_HANDS, help="use the first COUNT hands")
    parser.add_argument("--checkpoint", default=None, help="default: the bundled model")
    args = parser.parse_args()

    root = ensure_benchmark_set(args.data, PHOTO_BENCH_SEED, PHOTO_BENCH_HANDS, size=PHOTO_BENCH_SIZE, style="photo")
    model = HandMeshReconstructor.load(args.checkpoint)
    crop_size = model.config.image_size
    dataset = FreiHandDataset(str(root), "evaluation", crop_size=crop_size)
    found, keypoints = [], []
    for index in range(min(args.count, len(dataset))):
        image = np.asarray(Image.open(root / "evaluation" / "rgb" / f"{index:08d}.jpg").convert("RGB"))
        hands = detect_hands(image, max_hands=1)
        if hands:
            found.append(index)
            # into the network's crop: the whole image, resized (as the dataset reads it)
            into_crop = crop_transform(full_image_box(*image.shape[:2], dtype=torch.float64), crop_size)
            keypoints.append(transform_points(torch.tensor(np.array(hands[0].keypoints2d), dtype=torch.float64), into_crop).numpy())
    if not found:
        sys.exit(f"the detector found no hand in {args.data}")
    samples = [dataset[i] for i in found]
    images = torch.stack([s.image for s in samples])
    K = torch.stack([s.K for s in samples]).float()
    side = torch.tensor([s.side for s in samples])
    truth = torch.stack([s.vertices for s in samples]).double()
    true2d = torch.stack([s.joints2d for s in samples])
    detected = torch.as_tensor(np.stack(keypoints)).float()
    with torch.no_grad():
        prediction = model.predict(images, K, side)
    meshes = {"the network": (prediction.vertices, prediction.joints2d)}
    for name, target in (("fitted to the detector's keypoints", detected), ("fitted to the true keypoints (bound)", true2d)):
        fit = fit_to_keypoints(model, prediction, target)
        meshes[name] = (fit.vertices, fit.joints2d)

    def pa_mpvpe(vertices):
        per_hand = (align_similarity(vertices.double(), truth) - truth).norm(dim=-1).mean(-1) * 1000
        return f"{per_hand.mean():.2f} | {per_hand.median():.2f}"

    def pixel_error(pixels):
        per_hand = (pixels - true2d).norm(dim=-1).mean(-1)
        return f"{per_hand.mean():.2f} | {per_hand.median():.2f}"

    print(f"{root}: the detector found {len(found)} of {min(args.count, len(dataset))} hands; "
          f"model: {args.checkpoint or 'bundled synthetic-hands'}\n")  # fmt: skip
    print("| mesh | PA-MPVPE (mm), mean | median | 2D error of its joints (px), mean | median |\n|---|---:|---:|---:|---:|")
    print(f"| the global stage | {pa_mpvpe(prediction.global_vertices)} | - | - |")
    for name, (vertices, pixels) in meshes.items():
        print(f"| {name} | {pa_mpvpe(vertices)} | {pixel_error(pixels)} |")
    print(f"| (the detector's keypoints themselves) | - | - | {pixel_error(detected)} |")


if __name__ == "__main__":
    main()
