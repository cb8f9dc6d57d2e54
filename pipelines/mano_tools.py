"""``meshrec mano-info`` and ``meshrec mano-convert``: inspect and convert MANO-format files."""

from __future__ import annotations

import argparse
from pathlib import Path

from manolayer.errors import ManoError
from manolayer.io import load_mano, save_mano_npz
from meshrec.errors import MeshrecError


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    if name == "mano-info":
        parser = subparsers.add_parser(
            name,
            help="describe a MANO-format file and check that it is valid",
            description="Print what a MANO-format file (official .pkl or project .npz) contains and "
            "whether it is valid. Without PATH, describes the project's open hand.",
        )
        parser.add_argument("path", nargs="?", type=Path, help="MANO_RIGHT.pkl, MANO_LEFT.pkl or a .npz")
        parser.add_argument("--side", choices=["right", "left"], help="needed when the file's name does not say")
        parser.set_defaults(func=run_info)
    else:
        parser = subparsers.add_parser(
            name,
            help="convert a MANO pickle to the project's plain .npz format",
            description="Read an official MANO pickle safely (no chumpy, nothing executed) and write the "
            "same arrays as a .npz that loads without pickle. A left-hand pickle gets its shapedirs "
            "sign fix applied once, here; the .npz stores the corrected arrays. The .npz is derived "
            "from MANO: its licence forbids redistributing it.",
        )
        parser.add_argument("input", type=Path, help="MANO_RIGHT.pkl or MANO_LEFT.pkl")
        parser.add_argument("output", type=Path, help="where to write the .npz")
        parser.add_argument("--side", choices=["right", "left"], help="needed when the file's name does not say")
        parser.add_argument(
            "--no-left-shapedirs-fix",
            action="store_true",
            help="do not negate shapedirs[:, 0, :] of a left pickle (only for an already corrected file)",
        )
        parser.add_argument("--force", action="store_true", help="overwrite OUTPUT if it exists")
        parser.set_defaults(func=run_convert)


def run_info(args: argparse.Namespace) -> int:
    try:
        model = load_mano(args.path, side=args.side)
    except ManoError as error:
        print(f"file:            {args.path}")
        print(f"valid:           no: {error}")
        return 1
    print(model.describe())
    print("valid:           yes")
    return 0


def run_convert(args: argparse.Namespace) -> int:
    if args.output.suffix != ".npz":
        raise MeshrecError(f"output {args.output} must end in .npz")
    if args.output.exists() and not args.force:
        raise FileExistsError(f"{args.output} exists; pass --force to overwrite it")
    model = load_mano(args.input, side=args.side, fix_left_shapedirs=not args.no_left_shapedirs_fix)
    save_mano_npz(args.output, model)
    print(f"wrote {args.output} ({model.side} hand, {model.num_vertices} vertices) from {args.input}")
    return 0
