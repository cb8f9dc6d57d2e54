"""What the per-joint sigma and the keypoint heatmaps could tell, measured on held-out hands.

Usage: python benchmarks/analyze_evidence.py [--checkpoint C] [--data data/bench] [--count 1000]

Two offline questions behind design choices of the loop (docs/benchmarks.md, "Why sigma ranked
errors poorly"):

1. How well does the predicted sigma rank the joints' root-relative errors (Spearman), and how
   much would per-joint calibration or hand-level summaries add? Fits use the first half of the
   hands, Spearman is measured on the second half.
2. Would re-reading each keypoint from the head's heatmap around where the current mesh puts it
   (DIR-like re-estimation for a loop pass) be better evidence than the head's keypoints?

The data is a FreiHAND-layout folder with labels (``make bench-accuracy`` renders data/bench).
"""

from __future__ import annotations

import argparse

import numpy as np
import torch
from scipy.stats import spearmanr
from torch.utils.data import DataLoader, Subset

RADII = (1, 2, 3, 5)


def windowed_soft_argmax(heatmaps: torch.Tensor, centres: torch.Tensor, radius: float, stride: int) -> torch.Tensor:
    """Soft-argmax of ``heatmaps`` ``(B, J, h, w)`` (probabilities) under a Gaussian window of
    ``radius`` cells around ``centres`` ``(B, J, 2)`` crop pixels; returns ``(B, J, 2)`` pixels."""
    height, width = heatmaps.shape[-2:]
    rows = torch.arange(height, dtype=heatmaps.dtype).view(1, 1, height, 1)
    columns = torch.arange(width, dtype=heatmaps.dtype).view(1, 1, 1, width)
    cells = centres / stride
    distance2 = (columns - cells[..., 0, None, None]) ** 2 + (rows - cells[..., 1, None, None]) ** 2
    weights = heatmaps * torch.exp(-distance2 / (2 * radius**2))
    weights = weights / weights.sum((-2, -1), keepdim=True).clamp_min(1e-12)
    return torch.stack([(weights * columns).sum((-2, -1)), (weights * rows).sum((-2, -1))], dim=-1) * stride


def per_joint_fit_spearman(features: list[np.ndarray], log_error: np.ndarray, error: np.ndarray) -> float:
    """Least squares per joint of the log error on ``features`` (each ``(N, J)``) over the first
    half of the hands; Spearman of its predictions with the errors of the second half."""
    half = len(error) // 2
    prediction = np.empty_like(error[half:])
    for joint in range(error.shape[1]):
        design = np.stack([f[:, joint] for f in features] + [np.ones(len(error))], axis=1)
        weights = np.linalg.lstsq(design[:half], log_error[:half, joint], rcond=None)[0]
        prediction[:, joint] = design[half:] @ weights
    return float(spearmanr(prediction.ravel(), error[half:].ravel()).statistic)


def main() -> None:
    from meshrec.data.freihand import FreiHandDataset
    from meshrec.data.sample import collate_hand_samples
    from meshrec.models.joint_groups import heatmap_spread
    from meshrec.models.reconstructor import HandMeshReconstructor

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", default=None, help="a checkpoint or weights file (default: the bundled model)")
    parser.add_argument("--data", default="data/bench")
    parser.add_argument("--count", type=int, default=1000)
    args = parser.parse_args()

    model = HandMeshReconstructor.load(args.checkpoint).for_inference()
    stride = model.config.keypoints.feature_stride
    dataset = FreiHandDataset(args.data, "evaluation", crop_size=model.config.image_size)
    loader = DataLoader(Subset(dataset, range(min(args.count, len(dataset)))), batch_size=50, collate_fn=collate_hand_samples)
    columns = {name: [] for name in ("sigma", "error", "residual", "spread", "displacement")}
    pixel_errors: dict[str, list[torch.Tensor]] = {"keypoint head": [], "final mesh": []}
    with torch.inference_mode():
        for batch in loader:
            prediction = model(batch.image, batch.K, batch.side)
            joints, label = prediction.joints, batch.joints3d
            relative = joints - joints[:, :1]
            columns["sigma"].append(prediction.joint_variance.sqrt()[:, 1:])
            columns["error"].append((relative - (label - label[:, :1])).norm(dim=-1)[:, 1:])
            columns["residual"].append((prediction.keypoints2d - prediction.joints2d).norm(dim=-1)[:, 1:])
            columns["spread"].append(heatmap_spread(prediction.keypoint_head.heatmaps, stride)[:, 1:])
            global_joints = prediction.global_joints
            columns["displacement"].append((relative - (global_joints - global_joints[:, :1])).norm(dim=-1)[:, 1:])
            visible = batch.joints2d_visible
            error_of = lambda pixels: (pixels - batch.joints2d).norm(dim=-1)[visible]  # noqa: E731
            pixel_errors["keypoint head"].append(error_of(prediction.keypoints2d))
            pixel_errors["final mesh"].append(error_of(prediction.joints2d))
            heatmaps = prediction.keypoint_head.heatmaps
            for radius in RADII:
                for around, centres in (("mesh's joint", prediction.joints2d), ("head's keypoint", prediction.keypoints2d)):
                    name = f"heatmap around the {around}, r = {radius}"
                    pixel_errors.setdefault(name, []).append(error_of(windowed_soft_argmax(heatmaps, centres, radius, stride)))
    data = {name: torch.cat(values).numpy().astype(np.float64) for name, values in columns.items()}
    error, log_error = data["error"], np.log(data["error"] + 1e-6)
    log_of = {name: np.log(data[name] + 1e-3) for name in ("residual", "spread", "displacement")}
    log_sigma = np.log(data["sigma"])
    hand_mean = {name: np.broadcast_to(values.mean(1, keepdims=True), values.shape) for name, values in log_of.items()}
    half = len(error) // 2

    print(f"{len(error)} hands of {args.data}, {error.shape[1]} joints each (the wrist left out)\n")
    print("| sigma, or a predictor of the root-relative joint error | Spearman |\n|---|---:|")
    print(f"| the model's sigma | {spearmanr(data['sigma'].ravel(), error.ravel()).statistic:.3f} |")
    joint_mean = np.broadcast_to(log_error[:half].mean(0), error[half:].shape)
    print(f"| the joint's identity alone (second half) | {spearmanr(joint_mean.ravel(), error[half:].ravel()).statistic:.3f} |")
    print(f"| a per-joint affine map of log sigma (second half) | {per_joint_fit_spearman([log_sigma], log_error, error):.3f} |")
    summaries = [log_sigma, hand_mean["residual"], hand_mean["spread"], hand_mean["displacement"]]
    print(f"| + the hand's mean residual, spread and displacement (second half) | {per_joint_fit_spearman(summaries, log_error, error):.3f} |")
    within = np.mean([spearmanr(data["sigma"][:, j], error[:, j]).statistic for j in range(error.shape[1])])
    print(f"| sigma within one joint (mean over joints) | {within:.3f} |")
    oracle = log_error[half:].mean(1, keepdims=True) + log_error[:half].mean(0)
    print(f"| oracle: the hand's own mean log error + the joint's mean | {spearmanr(oracle.ravel(), error[half:].ravel()).statistic:.3f} |")
    print("\nmean root-relative error per joint (mm):", np.round(error.mean(0) * 1000, 1).tolist())
    print("mean sigma per joint (mm):", np.round(data["sigma"].mean(0) * 1000, 1).tolist())

    print("\n| 2D estimate against the labels | mean px | median | p90 |\n|---|---:|---:|---:|")
    for name, values in pixel_errors.items():
        values = torch.cat(values)
        print(f"| {name} | {values.mean():.2f} | {values.median():.2f} | {values.quantile(0.9):.2f} |")


if __name__ == "__main__":
    main()
