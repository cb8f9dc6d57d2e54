"""``meshrec export-backbone``: the backbone of a training checkpoint as a weights file.

    meshrec export-backbone --checkpoint runs/x/checkpoints/best.ckpt --out backbone.pt

The file loads with ``model.backbone.weights=backbone.pt``; a JSON beside it says what it fits
and how it was trained. ``make pretrained-backbone`` uses this to rebuild meshrec's bundled
``synthetic-hands`` weights.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="write the backbone of a training checkpoint as a weights file (+ JSON provenance)",
        description="Extract the backbone of a 'meshrec train' checkpoint into a small weights file that "
        "any later run can start from (model.backbone.weights=PATH), with a JSON beside it recording the "
        "backbone configuration, training data settings, step and best validation PA-MPVPE.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="a training checkpoint (best.ckpt, last.ckpt)")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (.pt); the JSON goes beside it")
    parser.add_argument("--note", default=None, help="free text stored in the JSON (e.g. the command that trained it)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from manolayer.io import write_bytes_atomic
    from meshrec.models.pretrained import backbone_from_checkpoint, save_backbone_weights

    state, meta = backbone_from_checkpoint(args.checkpoint)
    if args.note:
        meta["note"] = args.note
    path = save_backbone_weights(args.out, state, meta)
    sidecar = path.with_suffix(".json")
    write_bytes_atomic(sidecar, (json.dumps(meta, indent=2) + "\n").encode())
    count = sum(t.numel() for t in state.values())
    print(f"wrote {path} ({count / 1e6:.2f} M values, step {meta['global_step']}) and {sidecar}")
    return 0
