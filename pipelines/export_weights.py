"""``meshrec export-weights``: a training checkpoint's learned weights as a starting-weights file.

    meshrec export-weights --checkpoint runs/x/checkpoints/best.ckpt --out start.pt

A later run starts from it with ``model.weights=start.pt`` (every part that fits is loaded); a
JSON beside it says what it fits and how it was trained (and, with ``--scores``, how it scored on
the accuracy benchmark). ``make model`` uses this to rebuild meshrec's bundled ``synthetic-hands``
model.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="write a training checkpoint's weights as a starting-weights file (+ JSON provenance)",
        description="Extract the learned weights of a 'meshrec train' checkpoint into a small file that any "
        "later run can start from (model.weights=PATH), with a JSON beside it recording the model settings, "
        "training data settings, step and best validation PA-MPVPE.",
    )
    parser.add_argument("--checkpoint", type=Path, required=True, help="a training checkpoint (best.ckpt, last.ckpt)")
    parser.add_argument("--out", type=Path, required=True, help="weights file to write (.pt); the JSON goes beside it")
    parser.add_argument("--half", action="store_true", help="store float tensors as float16 (half the file size)")
    parser.add_argument("--scores", type=Path, default=None,
                        help="a JSON of benchmark scores (benchmarks/bench_accuracy.py --out) to record in the meta")
    parser.add_argument("--note", default=None, help="free text stored in the JSON (e.g. the command that trained it)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import json

    from manolayer.io import write_bytes_atomic
    from meshrec.models.pretrained import save_weights, weights_from_checkpoint

    state, meta = weights_from_checkpoint(args.checkpoint)
    if args.note:
        meta["note"] = args.note
    if args.scores is not None:
        try:
            meta["benchmark"] = json.loads(args.scores.read_text())
        except (OSError, ValueError) as error:
            raise SystemExit(f"meshrec export-weights: cannot read --scores {args.scores}: {error}") from None
    meta["stored_dtype"] = "float16" if args.half else "as trained"
    path = save_weights(args.out, state, meta, half=args.half)
    sidecar = path.with_suffix(".json")
    write_bytes_atomic(sidecar, (json.dumps(meta, indent=2) + "\n").encode())
    count = sum(t.numel() for t in state.values())
    print(f"wrote {path} ({', '.join(meta['parts'])}: {count / 1e6:.2f} M values, step {meta['global_step']}) and {sidecar}")
    return 0
