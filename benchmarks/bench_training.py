"""Training on synthetic hands: throughput, peak memory, and held-out scores per supervision.

Usage: python benchmarks/bench_training.py --data data/synth [--minutes 30] [--runs full,weak2d,...]

Each run trains a shipped config (or a variant of it) for the same wall-clock budget on the same
pre-rendered set (``meshrec synth --out data/synth --num 20000``), then scores the best
checkpoint on the held-out split with the FreiHAND protocol. Prints one table: training
images/s, peak resident memory, PA-MPVPE of the global stage and of the final mesh, passes the
gate used, and the always-T_max comparison for the gate.
"""

from __future__ import annotations

import argparse
import resource
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
}


def main() -> None:
    from meshrec.config import load_config
    from meshrec.evaluate import evaluate
    from meshrec.models.reconstructor import HandMeshReconstructor
    from meshrec.training.config import TrainConfig
    from meshrec.training.run import train

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="a folder written by meshrec synth")
    parser.add_argument("--minutes", type=float, default=30.0)
    parser.add_argument("--runs", default=",".join(RUNS), help=f"comma-separated, from {list(RUNS)}")
    parser.add_argument("--out", default="runs/bench_training")
    args = parser.parse_args()

    rows = []
    for name in args.runs.split(","):
        config_file, overrides = RUNS[name]
        run_dir = Path(args.out) / f"{name}_{time.strftime('%Y%m%d_%H%M%S')}"
        config = load_config(
            TrainConfig, CONFIGS / config_file,
            [f"run_dir={run_dir}", f"data.root={args.data}", f"trainer.max_minutes={args.minutes}",
             "trainer.max_epochs=100000", "trainer.progress_bar=false", *overrides],
        )
        start = time.perf_counter()
        result = train(config)
        seconds = time.perf_counter() - start
        images = result.global_step * config.data.batch_size
        model = HandMeshReconstructor.from_checkpoint(result.best_checkpoint or result.last_checkpoint)
        scores = evaluate(model, args.data, progress=False)
        always = evaluate(model, args.data, progress=False, exit_threshold=1.0) if model.refiner is not None else scores
        peak_gib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        rows.append((name, images / seconds, peak_gib, scores.stages["global"]["pa_mpvpe_mm"],
                     scores.stages["final"]["pa_mpvpe_mm"], float(scores.passes_used.mean()),
                     always.stages["final"]["pa_mpvpe_mm"], scores.baseline["mean_hand"]["pa_mpvpe_mm"]))
    print(f"\n{args.minutes:g} minutes per run, data {args.data}\n")
    print("| run | train images/s | peak RSS (GiB) | global PA-MPVPE | final PA-MPVPE | mean passes | final at T_max | mean hand |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for row in rows:
        print("| {} | {:.1f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} | {:.2f} |".format(*row))


if __name__ == "__main__":
    main()
