"""``meshrec synth``: render a synthetic hand data set in the FreiHAND layout."""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="render a synthetic hand data set in the FreiHAND layout",
        description="Render hands in sampled poses and shapes (both sides) over random backgrounds and "
        "write them in the FreiHAND layout with full labels (K, 3D joints, vertices, MANO parameters, "
        "masks) and a manifest.json. Re-running with a larger --num extends the set; an interrupted "
        "run resumes where it stopped.",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write (created if missing)")
    parser.add_argument("--num", type=int, required=True, help="total number of samples, both splits")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    parser.add_argument("--eval-fraction", type=float, default=0.1, help="share of samples in the evaluation split")
    parser.add_argument("--backgrounds", type=Path, default=None, help="optional folder of images used as backgrounds")
    parser.add_argument("--model", type=Path, default=None, help="MANO-format right-hand model (default: the open hand)")
    parser.add_argument(
        "--contact-sheet", type=Path, default=None, help="also draw the first 24 training samples with their keypoints to this PNG"
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from manolayer import load_mano
    from meshrec.data.synthetic import write_synthetic_dataset

    model = None if args.model is None else load_mano(args.model, side="right")
    summary = write_synthetic_dataset(
        args.out,
        args.num,
        size=args.size,
        seed=args.seed,
        eval_fraction=args.eval_fraction,
        backgrounds=args.backgrounds,
        model=model,
    )
    counts = ", ".join(f"{split} {count}" for split, count in summary.counts.items())
    print(f"wrote {summary.root}: {counts} ({summary.rendered} rendered now)")
    if args.contact_sheet is not None:
        print(f"wrote {draw_contact_sheet(args.out, args.contact_sheet)}")
    return 0


def draw_contact_sheet(root: Path, path: Path, count: int = 24) -> Path:
    """Draw the first ``count`` training samples of a FreiHAND-layout folder with their keypoints."""
    import torch

    from meshrec.data.freihand import FreiHandDataset
    from meshrec.geometry.camera import project_points
    from meshrec.viz import keypoint_sheet

    dataset = FreiHandDataset(root, "training", crop_size=None)
    samples = [dataset[i] for i in range(min(count, len(dataset)))]
    images = torch.stack([s.image for s in samples]).permute(0, 2, 3, 1)
    keypoints = project_points(torch.stack([s.joints3d for s in samples]), torch.stack([s.K for s in samples]))
    return keypoint_sheet(images, keypoints, path, dpi=80)
