"""The fixed accuracy benchmark: every stage of a model on held-out synthetic hands.

Usage:
    python benchmarks/bench_accuracy.py                       # the bundled model
    python benchmarks/bench_accuracy.py --checkpoint runs/model/checkpoints/last.ckpt
    make bench-accuracy

Renders (once) a held-out set with its own seed (``--seed 2027``, never used for training: the
bundled model trains on seed 11, the demo on 0): 2,000 hands of both sides in the evaluation
split, FreiHAND layout, in ``data/bench``. Then runs the model twice over it, with the gate
deciding each sample's passes and with every sample at T_max, and prints one table per run:
PA-MPJPE / PA-MPVPE / F@5 / 2D keypoint error (px) for every stage (global, coarse-to-fine,
each loop pass, final), the mean-hand baseline, the keypoint head's own 2D error, the mean
passes, and the Spearman rank correlation between the predicted per-joint sigma and the actual
joint errors. ``--out`` also writes the figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BENCH_SEED = 2027
BENCH_HANDS = 2000


def ensure_benchmark_set(root: Path, seed: int = BENCH_SEED, hands: int = BENCH_HANDS, **writer_options) -> Path:
    """The held-out set at ``root``: rendered when missing (its evaluation split holds ``hands``;
    ``writer_options``, e.g. ``size`` and ``style``, go to ``write_synthetic_dataset``)."""
    from meshrec.data.synthetic import write_synthetic_dataset

    manifest = root / "manifest.json"
    if manifest.exists():
        recorded = json.loads(manifest.read_text())
        if recorded.get("seed") not in (None, seed):
            sys.exit(f"{root} was rendered with seed {recorded.get('seed')}, not {seed}; pass another --data folder")
        return root
    # the writer splits one sequence; half of 2 * hands lands in 'evaluation'
    write_synthetic_dataset(root, 2 * hands, seed=seed, eval_fraction=0.5, progress=False, **writer_options)
    return root


def scores_table(result) -> list[str]:
    """Markdown rows: mean hand, every stage."""
    rows = ["| stage | PA-MPJPE (mm) | PA-MPVPE (mm) | F@5 | F@15 | 2D px |", "|---|---:|---:|---:|---:|---:|"]

    def cell(scores, key, fmt):
        value = scores.get(key)
        return fmt.format(value) if value is not None and math.isfinite(value) else "-"

    for name, scores in [*result.baseline.items(), *result.stages.items()]:
        rows.append(
            f"| {name} | {cell(scores, 'pa_mpjpe_mm', '{:.2f}')} | {cell(scores, 'pa_mpvpe_mm', '{:.2f}')} | "
            f"{cell(scores, 'f5', '{:.3f}')} | {cell(scores, 'f15', '{:.3f}')} | {cell(scores, 'joints2d_px', '{:.2f}')} |"
        )
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None, help="a training checkpoint; default: the bundled model")
    parser.add_argument("--weights", default="synthetic-hands", help="a whole-model weights file (default: bundled)")
    parser.add_argument("--data", type=Path, default=ROOT / "data" / "bench", help="the held-out set (rendered if missing)")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--out", type=Path, default=None, help="write the figures as JSON here")
    args = parser.parse_args()

    from meshrec.evaluate import evaluate, result_to_dict
    from meshrec.models.reconstructor import HandMeshReconstructor

    data = ensure_benchmark_set(args.data)
    if args.checkpoint:
        model, what = HandMeshReconstructor.from_checkpoint(args.checkpoint), args.checkpoint
    else:
        model, what = HandMeshReconstructor.from_weights(args.weights), f"weights {args.weights}"
    # the repository's own set is recorded relative to it: the JSON ships beside the bundled weights
    resolved = data.resolve()
    recorded_data = str(resolved.relative_to(ROOT) if resolved.is_relative_to(ROOT) else data)
    report = {"model": what, "data": recorded_data, "runs": {}}
    print(f"# accuracy on {data} (seed {BENCH_SEED}, evaluation split): {what}\n")
    for label, threshold in (("gate", None), ("t_max", 1.0)):
        if label == "t_max" and model.refiner is None:
            break
        start = time.perf_counter()
        result = evaluate(model, data, "evaluation", batch_size=args.batch_size, progress=False, exit_threshold=threshold)
        seconds = time.perf_counter() - start
        title = "gate on (each sample's passes chosen by the gate)" if label == "gate" else "every sample at T_max"
        print(f"## {title}: {result.num_scored} hands scored in {seconds:.0f} s\n")
        print("\n".join(scores_table(result)))
        head = "-" if result.keypoint_head_px is None else f"{result.keypoint_head_px:.2f}"
        spearman = "-" if result.uncertainty_spearman is None else f"{result.uncertainty_spearman:.3f}"
        print(f"\nkeypoint head 2D error: {head} px; mean passes {result.passes_mean:.2f} of {result.max_passes}; "
              f"sigma vs error Spearman: {spearman}\n")
        report["runs"][label] = {**result_to_dict(result), "data": recorded_data}
    if args.out is not None:
        from manolayer.io import write_bytes_atomic

        write_bytes_atomic(args.out, (json.dumps(report, indent=2) + "\n").encode())
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
