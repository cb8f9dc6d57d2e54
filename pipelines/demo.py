"""``meshrec demo``: fine-tune the bundled model on a shifted synthetic domain with 2D keypoints only,
sparse 3D keypoints and full meshes, and compare.

    meshrec demo [--out runs/demo] [--steps 150] [--minutes 5] [--num 4000]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    from meshrec.demo import DemoSettings

    defaults = DemoSettings()
    parser = subparsers.add_parser(
        name,
        help="weak labels on a shifted domain: fine-tune the bundled model with 2D keypoints, 3D keypoints, meshes",
        description="The whole pipeline on this machine with no downloads: renders a synthetic domain the "
        "bundled model was not trained on (photo-style hands), scores the bundled model there, fine-tunes it "
        "(configs/demo.yaml) once with 2D keypoints only, once with sparse 3D keypoints and once with full "
        "meshes, scores each against a mean-hand baseline (FreiHAND protocol) and writes meshes and overlays.",
    )
    parser.add_argument("--out", type=Path, default=defaults.out, help=f"demo folder (default: {defaults.out})")
    parser.add_argument("--steps", type=int, default=defaults.steps,
                        help=f"fine-tuning steps of each run, batch 32 (default: {defaults.steps})")
    parser.add_argument("--minutes", type=float, default=defaults.minutes,
                        help=f"wall-clock cap of each run in minutes (default: {defaults.minutes:g})")
    parser.add_argument("--num", type=int, default=defaults.num_samples,
                        help=f"synthetic samples of the shifted domain, 10%% held out (default: {defaults.num_samples})")
    parser.add_argument("--predictions", type=int, default=defaults.predictions, help="held-out images to export")
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshrec.demo import LABEL_KINDS, DemoSettings, run_demo

    summary = run_demo(
        DemoSettings(out=args.out, num_samples=args.num, steps=args.steps, minutes=args.minutes,
                     predictions=args.predictions, seed=args.seed, progress=not args.no_progress)
    )
    print("\n" + summary.metrics_table + "\n")
    before = summary.before["pa_mpvpe_mm"]
    for run in summary.runs:
        share = summary.recovered[run.kind]
        recovered = "" if math.isnan(share) else f"; {100 * share:.0f} % of what full meshes gain"
        print(f"meshrec demo: {LABEL_KINDS[run.kind]:<20} PA-MPVPE {before:.2f} -> {run.scores['pa_mpvpe_mm']:.2f} mm{recovered}")
    times = ", ".join(f"{name} {value:.1f}" for name, value in summary.minutes.items())
    print(
        f"  mean hand:   PA-MPVPE {summary.mean_hand['pa_mpvpe_mm']:.2f} mm\n"
        f"  minutes:     {times}\n"
        f"  metrics:     {summary.out / 'metrics.md'} and metrics.json\n"
        f"  runs:        {', '.join(str(run.checkpoint.parent.parent) for run in summary.runs)}\n"
        f"  meshes:      {summary.out / 'predictions'}/*.obj (2D-only model), overlays *_overlay.png (image | before | after)"
    )
    return 0
