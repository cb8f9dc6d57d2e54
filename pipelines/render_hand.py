"""``meshrec render-hand``: draw the hand model at rest and in sampled anatomical poses.

    meshrec render-hand --pose fist --num 4 --seed 0 --out fist.png

A quick look at a model and the pose sampler together: fingers should curl toward the
palm, knuckles should not twist, the thumb should oppose the fingers plausibly.
"""

from __future__ import annotations

import argparse
from pathlib import Path

POSES = ("rest", "open", "grasp", "pointing", "fist", "mixture", "all")
SAMPLED_MODES = ("open", "grasp", "pointing", "fist", "mixture")


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="render the hand model at rest and in sampled poses to an image",
        description="Render the rest hand and a few poses drawn by manolayer's anatomical sampler "
        "(palm view on top, a three-quarter view from the thumb side below) into one image.",
    )
    parser.add_argument(
        "--pose",
        choices=POSES,
        default="mixture",
        help="which kind of pose to sample; 'all': --num of each mode (default: mixture)",
    )
    parser.add_argument("--num", type=int, default=4, help="sampled poses shown next to the rest hand (default: 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the pose sampler (default: 0)")
    parser.add_argument(
        "--side", choices=("right", "left"), default=None, help="hand side; the model is mirrored if needed (default: the model's)"
    )
    parser.add_argument(
        "--model", type=Path, default=None, help="MANO-format model (.pkl or .npz); default: the open hand"
    )
    parser.add_argument("--skeleton", action="store_true", help="draw the 21-keypoint skeleton over the mesh")
    parser.add_argument("--out", type=Path, required=True, help="image to write, e.g. fist.png")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import torch

    from manolayer import ManoLayer, load_mano, mirror_model
    from manolayer.sampler import hand_axes, sample_poses
    from meshrec.errors import MeshrecError
    from meshrec.viz import PALM_VIEW, THREE_QUARTER_VIEW, hand_gallery

    if args.num < 0 or (args.pose != "rest" and args.num == 0):
        raise MeshrecError(f"--num must be at least 1 for --pose {args.pose}, got {args.num}")
    model = load_mano(args.model, side=args.side) if args.model is None else load_mano(args.model)
    if args.side is not None and model.side != args.side:
        model = mirror_model(model)  # e.g. a left hand from MANO_RIGHT.pkl
    layer = ManoLayer(model=model, use_pca=False, flat_hand_mean=True, dtype=torch.float64)
    axes = hand_axes(model.rest_joints, model.parents, side=model.side)
    poses = [torch.zeros(1, 45, dtype=torch.float64)]
    titles = ["rest"]
    modes = SAMPLED_MODES if args.pose == "all" else () if args.pose == "rest" else (args.pose,)
    for mode in modes:
        poses.append(sample_poses(args.num, seed=args.seed, mode=mode, axes=axes, dtype=torch.float64))
        titles += [mode if args.num == 1 else f"{mode} {i}" for i in range(args.num)]
    poses = torch.cat(poses)
    with torch.no_grad():
        out = layer(hand_pose=poses)
    faces = layer.faces.cpu().numpy()
    meshes = [
        (out.vertices[i].numpy(), faces, out.joints[i].numpy()) if args.skeleton else (out.vertices[i].numpy(), faces)
        for i in range(len(poses))
    ]
    # a left hand is the mirror image, so the same views are mirrored for it
    views = [PALM_VIEW, THREE_QUARTER_VIEW]
    if model.side == "left":
        views = [(elevation, 180.0 - azimuth) for elevation, azimuth in views]
    path = hand_gallery(meshes, titles, args.out, views=views)
    print(f"wrote {path} ({len(meshes)} hands, {model.side}, {model.source})")
    return 0
