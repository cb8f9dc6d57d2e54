"""``meshrec predict``: reconstruct every hand in your own photos and write meshes and JSON.

    meshrec predict PHOTO|FOLDER|LIST.jsonl ... --out DIR [--overlay] [--contact-sheet]
                    [--format obj,ply,glb] [--checkpoint C] [--box x0,y0,x1,y1 --side left] [--no-detect]
                    [--no-fit]

Without ``--checkpoint`` the bundled model (``synthetic-hands``) is used. Images without a box or
keypoints go through the hand detector (``meshrec.detect``): every hand it finds is reconstructed
with the side it sees, as ``<stem>_hand<i>.*`` (left to right). With a box (``--box``, a record's
box or keypoints) or ``--no-detect`` an image is one hand of ``--side``: ``<stem>.*``. Files:
``.obj`` (and ``.ply`` / ``.glb`` with uncertainty colours), ``.json`` (3D joints in metres, 2D
joints in the image's pixels, variances, passes, K of the image and of the crop) and, with
``--overlay``, ``<stem>_overlay.png``: the photo with every hand's mesh drawn in place. Images
that fail or hold no hand are listed; the exit code is 0 when at least one image worked.

A hand whose keypoints are known (the detector's, or a record's ``joints2d``) is fitted to them
(``meshrec.fitting``: the hand model moved onto the keypoints, held near the network's mesh);
``--no-fit`` writes the network's meshes as they are.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def _box(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected four numbers x0,y0,x1,y1, got {text!r}") from None
    if len(values) != 4:
        raise argparse.ArgumentTypeError(f"expected four numbers x0,y0,x1,y1, got {len(values)}")
    return values


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    from meshrec.data.crop import DEFAULT_BOX_PADDING
    from meshrec.geometry.camera import DEFAULT_FOV_DEG

    parser = subparsers.add_parser(
        name,
        help="reconstruct hand meshes in your own images (OBJ/PLY/GLB + JSON, optional overlay)",
        description="Crop each image (around --box, a record's box or keypoints, or the whole image), run "
        "the model and write <stem>.obj (+ .ply/.glb with per-vertex uncertainty colours), <stem>.json "
        "(joints in the original image's pixels and in metres, variances, passes used, both K) and with "
        f"--overlay <stem>_overlay.png. Without a known camera, the crop is assumed to span {DEFAULT_FOV_DEG:g} "
        "degrees.",
    )
    parser.add_argument(
        "--checkpoint", type=Path, default=None,
        help="a training checkpoint (last.ckpt, best.ckpt) or a whole-model weights file; default: meshrec's bundled model",
    )  # fmt: skip
    parser.add_argument("inputs", type=Path, nargs="*", metavar="INPUT",
                        help="images, folders of images, or .jsonl/.json lists of records "
                             "(image, optional box / joints2d / K / side; see meshrec.data.keypoints_json)")
    parser.add_argument("--input", type=Path, action="append", default=[], help="an input, as INPUT (repeatable)")
    parser.add_argument("--out", type=Path, required=True, help="output folder (created)")
    parser.add_argument(
        "--side", choices=("right", "left"), default=None,
        help="hand side of the images not given to the detector (a record's own side wins; default: right)",
    )  # fmt: skip
    parser.add_argument("--format", default="obj", help="mesh formats, comma-separated: obj, ply, glb (default: obj)")
    parser.add_argument("--overlay", action="store_true",
                        help="also write <stem>_overlay.png: the photo with every hand's mesh drawn in place")
    parser.add_argument("--contact-sheet", action="store_true", help="with --overlay: all overlays on contact_sheet.png")
    parser.add_argument("--no-detect", action="store_true",
                        help="no hand detector: an image without a box is one hand of --side, cropped whole")
    parser.add_argument("--no-fit", action="store_true",
                        help="do not fit the hands to their known keypoints (the detector's or a record's)")
    parser.add_argument("--max-hands", type=int, default=4, help="most hands per image the detector reports (default: 4)")
    parser.add_argument(
        "--box", type=_box, default=None, metavar="x0,y0,x1,y1",
        help="hand box in image pixels for every image (a record's box or keypoints win)",
    )  # fmt: skip
    parser.add_argument("--box-padding", type=float, default=DEFAULT_BOX_PADDING,
                        help=f"crop side / box (or keypoint) extent (default: {DEFAULT_BOX_PADDING})")
    parser.add_argument("--batch-size", type=int, default=16, help="images per forward pass (default: 16)")
    parser.add_argument("--ignore-exif", action="store_true", help="do not apply the EXIF orientation of photos")
    parser.add_argument("--device", default="auto", help="'cpu', 'cuda', ... or 'auto': CUDA when available")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from meshrec.errors import MeshrecError
    from meshrec.inference import check_mesh_formats, collect_requests, predict_images
    from meshrec.models.reconstructor import HandMeshReconstructor
    from pipelines.eval import resolve_device

    sources = [*args.inputs, *args.input]
    if not sources:
        raise MeshrecError("nothing to predict: name an image, a folder or a .jsonl list, e.g. meshrec predict photo.jpg --out out/")
    formats = check_mesh_formats(args.format.split(","))
    requests, failures = [], []
    for source in sources:
        found, bad = collect_requests(source, side=args.side, box=args.box)
        requests += found
        failures += bad
    model = HandMeshReconstructor.load(args.checkpoint, device=resolve_device(args.device))
    summary = predict_images(
        model, requests, args.out, formats=formats, overlay=args.overlay, detect=not args.no_detect,
        max_hands=args.max_hands, contact_sheet=args.contact_sheet, batch_size=args.batch_size,
        box_padding=args.box_padding, exif_transpose=not args.ignore_exif, progress=not args.no_progress,
        fit_keypoints=not args.no_fit,
    )  # fmt: skip
    summary.failures[:0] = failures  # records that did not parse come first, as in the input
    print(summary.describe())
    return 0 if summary.results else 1
