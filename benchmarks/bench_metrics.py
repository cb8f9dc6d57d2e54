"""Time the FreiHAND-protocol metrics on synthetic predictions of FreiHAND's size.

Run: ``.venv/bin/python benchmarks/bench_metrics.py [--samples 4000] [--vertices 778]``.
Prints a table of wall-clock seconds per part and for the whole ``freihand_scores``.
The ground truth is a hand-sized point cloud (778 points on an ellipsoid shell of
18 x 9 x 3 cm, 1–2 cm apart like MANO's vertices); predictions are the ground truth
with per-vertex noise of a few mm, then a random rotation, scale and translation, so
the unaligned errors are large and the aligned ones realistic (PA-MPVPE of a few mm).
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch


def synthetic_predictions(num_samples: int, num_vertices: int, noise_m: float, seed: int):
    rng = np.random.default_rng(seed)
    directions = rng.normal(size=(num_samples, num_vertices + 21, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    semi_axes = np.array([0.09, 0.045, 0.015])
    gt = directions * semi_axes + np.array([0.0, 0.0, 0.6])  # half a metre from the camera
    noisy = gt + rng.normal(scale=noise_m, size=gt.shape)
    rotations = torch.linalg.qr(torch.from_numpy(rng.normal(size=(num_samples, 3, 3)))).Q.numpy()
    scales = rng.uniform(0.9, 1.1, size=(num_samples, 1, 1))
    shifts = rng.normal(scale=0.02, size=(num_samples, 1, 3))
    centre = noisy.mean(axis=1, keepdims=True)  # rotate about the hand, not the camera
    pred = scales * (noisy - centre) @ rotations.transpose(0, 2, 1) + centre + shifts
    return pred[:, :21], pred[:, 21:], gt[:, :21], gt[:, 21:]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=4000)
    parser.add_argument("--vertices", type=int, default=778)
    parser.add_argument("--noise-mm", type=float, default=5.0)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    from meshrec.geometry.procrustes import align_similarity
    from meshrec.metrics import f_scores, freihand_scores, pck_auc

    pred_j, pred_v, gt_j, gt_v = synthetic_predictions(args.samples, args.vertices, args.noise_mm / 1000, 0)
    pred_v_t, gt_v_t = torch.from_numpy(pred_v), torch.from_numpy(gt_v)
    aligned_v = align_similarity(pred_v_t, gt_v_t)

    parts = {
        "align_similarity (vertices)": lambda: align_similarity(pred_v_t, gt_v_t),
        "pck_auc (aligned vertices)": lambda: pck_auc(aligned_v, gt_v_t),
        "f_scores 5/15 mm (aligned)": lambda: f_scores(aligned_v, gt_v_t),
        "f_scores 5/15 mm (unaligned)": lambda: f_scores(pred_v_t, gt_v_t),
        "freihand_scores": lambda: freihand_scores(pred_j, pred_v, gt_j, gt_v),
        "freihand_scores + unaligned F": lambda: freihand_scores(
            pred_j, pred_v, gt_j, gt_v, include_unaligned_fscore=True
        ),
    }
    print(f"{args.samples} samples x {args.vertices} vertices, {torch.get_num_threads()} torch threads, "
          f"best of {args.repeats}")
    print("wall = elapsed seconds; cpu = process CPU seconds (all threads), steadier on a busy machine")
    print(f"| {'part':32s} |  wall s |   cpu s |")
    print(f"|{'-' * 34}|---------|---------|")
    for name, call in parts.items():
        best_wall = best_cpu = float("inf")
        for _ in range(args.repeats):
            start_wall, start_cpu = time.perf_counter(), time.process_time()
            call()
            best_wall = min(best_wall, time.perf_counter() - start_wall)
            best_cpu = min(best_cpu, time.process_time() - start_cpu)
        print(f"| {name:32s} | {best_wall:7.3f} | {best_cpu:7.3f} |")
    scores = freihand_scores(pred_j, pred_v, gt_j, gt_v, include_unaligned_fscore=True)
    print()
    for key, value in scores.items():
        print(f"{key:16s} {value:10.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
