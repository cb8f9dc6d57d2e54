"""``meshrec train``: train a model from a YAML config plus ``key=value`` overrides.

    meshrec train --config configs/synthetic_mixed.yaml run_dir=runs/mixed trainer.max_epochs=5 [--resume]
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="train a model (full, sparse 2D/3D or mixed labels)",
        description="Train a hand mesh reconstructor as configured (see configs/). Checkpoints, the "
        "resolved config and logs go to run_dir. Ctrl-C saves and stops; --resume continues.",
    )
    parser.add_argument("--config", type=Path, default=None, help="YAML config (default: all defaults)")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="override config entries, e.g. optim.lr=3e-4")
    parser.add_argument("--resume", action="store_true", help="continue the run in run_dir from checkpoints/last.ckpt")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshrec.config import load_config
    from meshrec.training.config import TrainConfig
    from meshrec.training.run import train

    config = load_config(TrainConfig, args.config, args.overrides)
    result = train(config, resume=args.resume)
    state = "interrupted" if result.interrupted else "finished"
    print(f"training {state} after {result.epochs} epochs, {result.global_step} steps; run folder {result.run_dir}")
    for name in ("val/pa_mpvpe_mm", "val/pa_mpjpe_mm", "val/joints2d_px", "val/passes_mean"):
        if name in result.metrics:
            print(f"  {name}: {result.metrics[name]:.2f}")
    print(f"  last checkpoint: {result.last_checkpoint}")
    if result.best_checkpoint is not None:
        print(f"  best checkpoint: {result.best_checkpoint}")
    return 0
