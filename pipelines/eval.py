"""``meshrec eval``: FreiHAND-protocol scores of a checkpoint on a FreiHAND-layout folder.

    meshrec eval [--checkpoint runs/x/checkpoints/best.ckpt] --data data/freihand [--split evaluation]
                 [--batch-size 32] [--limit N] [--out scores.json] [--write-pred pred.json]

Prints a table of every stage (global, coarse_to_fine, pass_1 .. pass_T, final) and of the
mean-hand baseline, and the passes the gate chose; ``--out`` writes the same as JSON and
``--write-pred`` the official FreiHAND submission file ``[xyz_list, verts_list]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="score a checkpoint on a FreiHAND-layout folder (every stage, plus a mean-hand baseline)",
        description="Run a trained model at inference over a FreiHAND-layout split (the real data set or "
        "one written by 'meshrec synth'), cropped to the model's input size, and report FreiHAND-protocol "
        "scores (PA-MPJPE, PA-MPVPE, F@5, F@15, AUC, ...) for every stage of the network and for the mean "
        "hand, plus how many refinement passes the gate used. Samples without labels still get predictions.",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None,
        help="a training checkpoint (last.ckpt, best.ckpt) or a whole-model weights file; default: meshrec's bundled model",
    )  # fmt: skip
    parser.add_argument("--data", type=Path, required=True, help="folder in the FreiHAND layout")
    parser.add_argument(
        "--split", choices=("evaluation", "training"), default="evaluation", help="which split (default: evaluation)"
    )
    parser.add_argument("--batch-size", type=int, default=32, help="images per forward pass (default: 32)")
    parser.add_argument("--limit", type=int, default=None, help="only the first N samples")
    parser.add_argument("--out", type=Path, default=None, help="write the scores as JSON here")
    parser.add_argument(
        "--write-pred", type=Path, default=None, help="write predictions in the FreiHAND submission format here"
    )
    parser.add_argument("--device", default="auto", help="'cpu', 'cuda', 'cuda:1', ... or 'auto': CUDA when available")
    parser.add_argument("--workers", type=int, default=0, help="image reading worker processes (default: 0)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def resolve_device(name: str) -> str:
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return name


def run(args: argparse.Namespace) -> int:
    from meshrec.evaluate import evaluate, format_table, save_freihand_submission, save_scores_json
    from meshrec.models.reconstructor import HandMeshReconstructor

    model = HandMeshReconstructor.load(args.checkpoint, device=resolve_device(args.device))
    result = evaluate(
        model, args.data, args.split, batch_size=args.batch_size, limit=args.limit, workers=args.workers,
        progress=not args.no_progress, checkpoint=str(args.checkpoint or "bundled synthetic-hands"),
    )  # fmt: skip
    print(format_table(result))
    if args.out is not None:
        print(f"wrote {save_scores_json(args.out, result)}")
    if args.write_pred is not None:
        path = save_freihand_submission(args.write_pred, result.joints, result.vertices)
        print(f"wrote {path} ({result.num_samples} samples)")
    return 0
