"""``meshrec demo``: synthetic data, a few minutes of mixed-supervision training, evaluation, meshes.

    meshrec demo [--out runs/demo] [--minutes 9] [--num 6000]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="render synthetic hands, train briefly with mixed labels, evaluate, export meshes",
        description="The whole pipeline on this machine with no downloads: renders a synthetic set, "
        "trains configs/synthetic_mixed.yaml for --minutes, scores it against a mean-hand baseline "
        "(FreiHAND protocol) and writes OBJ meshes and overlays.",
    )
    parser.add_argument("--out", type=Path, default=Path("runs/demo"), help="demo folder (default: runs/demo)")
    parser.add_argument("--minutes", type=float, default=9.0, help="training budget in minutes (default: 9)")
    parser.add_argument("--num", type=int, default=6000, help="synthetic samples, 10%% held out (default: 6000)")
    parser.add_argument("--predictions", type=int, default=8, help="held-out images to export (default: 8)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshrec.demo import DemoSettings, run_demo

    summary = run_demo(
        DemoSettings(out=args.out, num_samples=args.num, train_minutes=args.minutes,
                     predictions=args.predictions, seed=args.seed, progress=not args.no_progress)
    )
    gain = 100.0 * (1.0 - summary.model_pa_mpvpe_mm / summary.baseline_pa_mpvpe_mm)
    verdict = f"{gain:.0f}% lower" if gain >= 0 else f"{-gain:.0f}% higher: train longer with --minutes"
    print("\n" + summary.metrics_table)
    print(
        f"\nmeshrec demo: PA-MPVPE {summary.model_pa_mpvpe_mm:.1f} mm vs mean-hand baseline "
        f"{summary.baseline_pa_mpvpe_mm:.1f} mm ({verdict})\n"
        f"  time: data {summary.minutes['data']:.1f} min, training {summary.minutes['train']:.1f} min, "
        f"evaluation {summary.minutes['evaluate']:.1f} min\n"
        f"  checkpoint:  {summary.checkpoint}\n"
        f"  metrics:     {summary.out / 'metrics.md'} and metrics.json\n"
        f"  meshes:      {summary.out / 'predictions'}/*.obj, overlays *_overlay.png, joints *.json\n"
        f"  logs:        {summary.checkpoint.parent.parent / 'logs'} (tensorboard --logdir there)"
    )
    return 0
