"""Training on synthetic hands: throughput, peak memory, and held-out scores per supervision.

Usage: python benchmarks/bench_training.py --data data/synth [--minutes 30] [--runs full,weak2d,...]

Each run trains a shipped config (or a variant of it) for the same wall-clock budget on the same
pre-rendered set (``meshrec synth --out data/synth --num 20000``), then scores the best
checkpoint on the held-out split with the FreiHAND protocol. Prints one table: training
images/s, peak resident memory, PA-MPVPE of the global stage and of the final mesh, passes the
gate used, and the always-T_max comparison for the gate. Each run is its own process, so its
peak memory is its own. The configs start from the bundled ``synthetic-hands`` weights;
``*_scratch`` runs start from random weights.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

CONFIGS = Path(__file__).resolve().parents[1] / "configs"

# name -> (config file, overrides)
RUNS = {
    "full": ("synthetic_full.yaml", []),
    "weak2d": ("synthetic_weak2d.yaml", []),
    "weak3d": ("synthetic_weak3d.yaml", []),
    "mixed": ("synthetic_mixed.yaml", []),
    "global_only": ("synthetic_full.yaml", ["model.refinement.enabled=false"]),
    "groups1": ("synthetic_full.yaml", ["model.keypoints.groups=1"]),
    "progressive": ("synthetic_full.yaml", ["trainer.protocol=progressive", "trainer.progressive_epochs=1"]),
    "full_scratch": ("synthetic_full.yaml", ["model.weights=null"]),
    # learning speed of the keypoint head (refinement off, random weights): the shipped G = 3 at
    # stride 4, the holistic G = 1 of the same width, and G = 3 at stride 8
    "keypoints_g3_scratch": ("synthetic_full.yaml", ["model.weights=null", "model.refinement.enabled=false"]),
    "keypoints_g1_scratch": ("synthetic_full.yaml", ["model.weights=null", "model.refinement.enabled=false",
                                                     "model.keypoints.groups=1", "model.keypoints.channels=48"]),
    "keypoints_stride8_scratch": ("synthetic_full.yaml", ["model.weights=null", "model.refinement.enabled=false",
                                                          "model.keypoints.feature_stride=8", "model.keypoints.decoder_widths=[64,48]"]),
    "mixed_scratch": ("synthetic_mixed.yaml", ["model.weights=null"]),
}


def run_one(name: str, data: str, minutes: float, out: str) -> dict:
    """Train and score one run in this process; returns its row."""
    from meshrec.config import load_config
    from meshrec.evaluate import evaluate
    from meshrec.models.reconstructor import HandMeshReconstructor
    from meshrec.training.config import TrainConfig
    from meshrec.training.run import train

    config_file, overrides = RUNS[name]
    run_dir = Path(out) / f"{name}_{time.strftime('%Y%m%d_%H%M%S')}"
    config = load_config(
        TrainConfig, CONFIGS / config_file,
        [f"run_dir={run_dir}", f"data.root={data}", f"trainer.max_minutes={minutes}",
         "trainer.max_epochs=100000", "trainer.progress_bar=false", *overrides],
    )  # fmt: skip
    start = time.perf_counter()
    result = train(config)
    seconds = time.perf_counter() - start
    model = HandMeshReconstructor.from_checkpoint(result.best_checkpoint or result.last_checkpoint)
    scores = evaluate(model, data, progress=False)
    always = evaluate(model, data, progress=False, exit_threshold=1.0) if model.refiner is not None else scores
    return {
        "run": name,
        "images_per_s": result.global_step * config.data.batch_size / seconds,
        "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
        "global": scores.stages["global"]["pa_mpvpe_mm"],
        "final": scores.stages["final"]["pa_mpvpe_mm"],
        "passes": float(scores.passes_used.mean()),
        "final_at_t_max": always.stages["final"]["pa_mpvpe_mm"],
        "mean_hand": scores.baseline["mean_hand"]["pa_mpvpe_mm"],
        "head_px": scores.keypoint_head_px if scores.keypoint_head_px is not None else float("nan"),
        "final_px": scores.stages["final"]["joints2d_px"],
        "steps": result.global_step,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder written by meshrec synth")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from {list(RUNS)}")
    parser.add_argument("--out", default="runs/bench_training")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child process: one run, JSON out
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args.data, args.minutes, args.out)))
        return
    unknown = sorted(set(args.runs.split(",")) - set(RUNS))
    if unknown:
        parser.error(f"unknown runs {unknown}; choose from {list(RUNS)}")

    rows = []
    for name in args.runs.split(","):
        command = [sys.executable, __file__, "--one", name, "--data", args.data, "--minutes", str(args.minutes), "--out", args.out]
        child = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
        rows.append(json.loads(child.stdout.strip().splitlines()[-1]))
        print(rows[-1], flush=True)
    print(f"\n{args.minutes:g} minutes per run, data {args.data}\n")
    print("| run | steps | train images/s | peak RSS (GiB) | global PA-MPVPE | final PA-MPVPE | mean passes | "
          "final at T_max | mean hand | head 2D px | final 2D px |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| {run} | {steps} | {images_per_s:.1f} | {peak_rss_gib:.2f} | {global:.2f} | {final:.2f} | {passes:.2f} | "
              "{final_at_t_max:.2f} | {mean_hand:.2f} | {head_px:.2f} | {final_px:.2f} |".format(**row))


if __name__ == "__main__":
    main()
