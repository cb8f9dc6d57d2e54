"""The refiner's oracle test on rendered hands (meshrec.training.oracle).

Usage:
    python benchmarks/bench_refiner_oracle.py [--checkpoint C | --weights synthetic-hands]
        --train-data data/model --test-data data/bench [--minutes 10] [--guidance head,truth,none]

For each guidance source: a fresh refiner (the model's settings, random weights; or the model's
own with ``--keep-refiner``) is trained alone for ``--minutes`` on right hands of the training
split, starting every step from the true mesh plus fresh noise, while the backbone and the
keypoint head stay frozen; then scored on right hands of the held-out split. Prints the vertex
error (mm) in the camera frame and root-aligned: at the start, after the coarse-to-fine stage,
after each loop pass, and the cut from start to T_max and from pass 1 to T_max.
"""

from __future__ import annotations

import argparse
import copy
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def right_hand_batches(root: Path, split: str, size: int, batch_size: int, limit: int | None = None):
    """Endless (cycling) batches of right hands with meshes, MANO labels and 3D joints."""
    from torch.utils.data import DataLoader, Subset

    from meshrec.cache import cache_root
    from meshrec.data.freihand import FreiHandDataset
    from meshrec.data.sample import collate_hand_samples

    dataset = FreiHandDataset(root, split, crop_size=size, cache_dir=cache_root() / "labels")
    if limit is not None:
        dataset = Subset(dataset, range(min(limit, len(dataset))))
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=collate_hand_samples, num_workers=1)
    for batch in loader:
        keep = (batch.side == 0) & batch.has_mesh & batch.has_mano
        if bool(keep.any()):
            yield batch, keep


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--weights", default="synthetic-hands")
    parser.add_argument("--train-data", type=Path, default=ROOT / "data" / "model")
    parser.add_argument("--test-data", type=Path, default=ROOT / "data" / "bench")
    parser.add_argument("--minutes", type=float, default=10.0, help="training time per guidance source")
    parser.add_argument("--guidance", default="head,truth,none")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--test-hands", type=int, default=1000, help="held-out samples read (right hands are kept)")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--keep-refiner", action="store_true", help="start from the model's refiner, not a fresh one")
    args = parser.parse_args()

    from manolayer import ManoLayer
    from meshrec.models.reconstructor import HandMeshReconstructor
    from meshrec.training.oracle import (
        OracleNoise, keypoint_evidence, mesh_errors_mm, oracle_loss, refine_start, stage_meshes, start_meshes,
    )  # fmt: skip

    torch.manual_seed(0)
    model = HandMeshReconstructor.load(args.checkpoint or args.weights)
    size = model.config.image_size
    regressor = model.joint_regressor
    layer = ManoLayer(model.hand_model, use_pca=False, flat_hand_mean=True)
    noise = OracleNoise()
    test = list(right_hand_batches(args.test_data, "evaluation", size, args.batch_size, args.test_hands))
    print(f"# refiner oracle: {args.checkpoint or args.weights}; noise {noise}; "
          f"{sum(int(k.sum()) for _, k in test)} held-out right hands; {args.minutes:g} min per run\n")
    rows = []
    for guidance in args.guidance.split(","):
        trained = copy.deepcopy(model)
        if not args.keep_refiner:
            fresh = HandMeshReconstructor(model.config)
            trained.refiner.load_state_dict(fresh.refiner.state_dict())
        trained.eval()
        trained.refiner.train()
        optimiser = torch.optim.AdamW(trained.refiner.parameters(), lr=args.lr, weight_decay=1e-4)
        generator = torch.Generator().manual_seed(1)
        steps, start_time = 0, time.perf_counter()
        batches = right_hand_batches(args.train_data, "training", size, args.batch_size)
        while time.perf_counter() - start_time < args.minutes * 60:
            try:
                batch, keep = next(batches)
            except StopIteration:  # another pass over the training split
                batches = right_hand_batches(args.train_data, "training", size, args.batch_size)
                continue
            pose, betas, truth, joints = batch.mano_pose[keep], batch.mano_betas[keep], batch.vertices[keep], batch.joints3d[keep]
            with torch.no_grad():
                start, root = start_meshes(layer, regressor, pose, betas, joints[:, 0], noise, generator)
            evidence = keypoint_evidence(batch.joints2d[keep], joints)
            output = refine_start(trained, batch.image[keep], batch.K[keep], start, root, guidance, evidence)
            loss = oracle_loss(output, truth, trained.mesh_levels)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
            steps += 1
        trained.eval()
        totals: dict[str, list[float]] = {}
        count = 0
        test_generator = torch.Generator().manual_seed(99)
        with torch.no_grad():
            for batch, keep in test:
                pose, betas, truth, joints = batch.mano_pose[keep], batch.mano_betas[keep], batch.vertices[keep], batch.joints3d[keep]
                start, root = start_meshes(layer, regressor, pose, betas, joints[:, 0], noise, test_generator)
                evidence = keypoint_evidence(batch.joints2d[keep], joints)
                output = refine_start(trained, batch.image[keep], batch.K[keep], start, root, guidance, evidence,
                                      exit_threshold=1.0)
                n = int(keep.sum())
                for name, vertices in {"start": start, **stage_meshes(output)}.items():
                    camera, aligned = mesh_errors_mm(vertices, truth, regressor)
                    sums = totals.setdefault(name, [0.0, 0.0])
                    sums[0] += camera * n
                    sums[1] += aligned * n
                count += n
        means = {name: (c / count, a / count) for name, (c, a) in totals.items()}
        rows.append((guidance, steps, means))
    names = list(rows[0][2])
    print("| guidance | steps | " + " | ".join(names) + " | cut start -> T_max | T_max vs pass 1 |")
    print("|---|---:|" + "---:|" * (len(names) + 2))
    for guidance, steps, means in rows:
        cells = " | ".join(f"{c:.2f} / {a:.2f}" for c, a in means.values())
        last, first, start = means[names[-1]], means.get("pass_1", means[names[-1]]), means["start"]
        cut = f"{100 * (1 - last[0] / start[0]):.0f} % / {100 * (1 - last[1] / start[1]):.0f} %"
        loop = f"{100 * (1 - last[1] / first[1]):.1f} %"
        print(f"| {guidance} | {steps} | {cells} | {cut} | {loop} |")
    print("\n(errors: mean vertex error in mm, camera frame / root-aligned)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
