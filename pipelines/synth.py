"""``meshrec synth``: write (or extend) a synthetic hand data set in the FreiHAND layout.

    meshrec synth --out data/synth --num 20000 --size 128 --seed 0 [--eval-fraction 0.1] [--backgrounds FOLDER]
                  [--workers 2] [--style {flat,photo}]

Re-running with a larger ``--num`` (same other settings) renders only the missing samples.
"""

from __future__ import annotations

import argparse
from pathlib import Path

SHEET_SAMPLES = 24
DEFAULT_WORKERS = 2  # write_synthetic_dataset's default (not imported: --help stays free of torch)


def positive_int(text: str) -> int:
    """argparse type: an int >= 1 (the message names what was given and what is expected)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected an int >= 1, got {value}; use 1 to write in this process")
    return value


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="render a synthetic hand data set in the FreiHAND layout",
        description="Render MANO-format hands in sampled poses, shapes, views, lighting, skin tones and "
        "backgrounds, with 3D joints, vertices, MANO parameters, intrinsics and masks, in the FreiHAND "
        "layout (plus S_side.json and manifest.json). Deterministic given --seed; resumable.",
    )
    parser.add_argument("--out", type=Path, required=True, help="data set folder (created or extended)")
    parser.add_argument("--num", type=int, required=True, help="total number of samples, both splits")
    parser.add_argument("--size", type=int, default=128, help="image side in pixels (default: 128)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the data set (default: 0)")
    parser.add_argument("--eval-fraction", type=float, default=0.1, help="share of samples in 'evaluation' (default: 0.1)")
    parser.add_argument("--backgrounds", type=Path, default=None, help="folder of images to crop backgrounds from")
    parser.add_argument("--model", type=Path, default=None, help="MANO-format right hand (.pkl/.npz); default: the open hand")
    parser.add_argument("--contact-sheet", type=Path, default=None, help="also draw the first training samples with keypoints to this PNG")
    parser.add_argument(
        "--workers",
        type=positive_int,
        default=DEFAULT_WORKERS,
        help=f"worker processes that render (default: {DEFAULT_WORKERS}; 1: render in this process); "
        "the files do not depend on it",
    )
    parser.add_argument(
        "--style",
        choices=("flat", "photo"),
        default="flat",
        help="'flat': the hand alone over noise/gradient backgrounds (default); 'photo': with a forearm or "
        "sleeve, blotchy skin, cluttered scenes, occluders, camera blur and JPEG quality 40-95",
    )
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshrec.data.synthetic import write_synthetic_dataset

    summary = write_synthetic_dataset(
        args.out,
        args.num,
        size=args.size,
        seed=args.seed,
        eval_fraction=args.eval_fraction,
        backgrounds=args.backgrounds,
        model=args.model,
        progress=not args.no_progress,
        workers=args.workers,
        style=args.style,
    )
    print(f"{summary.root}: {summary.counts} samples ({summary.rendered} rendered now)")
    if args.contact_sheet is not None:
        import json

        import numpy as np

        from meshrec.data.freihand import FreiHandDataset
        from meshrec.viz import keypoint_sheet

        dataset = FreiHandDataset(args.out, "training", crop_size=None, load_vertices=False)
        count = min(SHEET_SAMPLES, len(dataset))
        samples = [dataset[i] for i in range(count)]
        images = np.stack([(s.image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8) for s in samples])
        sides = json.loads((args.out / "training_side.json").read_text())[:count]
        path = keypoint_sheet(images, np.stack([s.joints2d.numpy() for s in samples]), args.contact_sheet, titles=sides)
        print(f"wrote {path}")
    return 0
