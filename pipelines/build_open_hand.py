"""``meshrec build-open-hand``: rebuild the CC0 open hand model from MakeHuman assets.

    meshrec build-open-hand --assets ../shared/makehuman --out manolayer/assets/
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def register(subparsers: argparse._SubParsersAction, name: str) -> None:
    parser = subparsers.add_parser(
        name,
        help="build the CC0 open hand (MANO-format) from MakeHuman assets",
        description="Build manolayer's CC0 MANO-format right hand from MakeHuman hm08 assets and write "
        "open_hand_right.npz and OPEN_HAND_LICENSE.md.",
    )
    parser.add_argument(
        "--assets",
        type=Path,
        required=True,
        help="folder with MakeHuman's base.obj, default.mhskel, default_weights.mhw and r-hand-*.target",
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the model and its licence notice into")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from manolayer.build_open_hand import write_open_hand
    from manolayer.io import load_mano

    started = time.perf_counter()
    try:
        model_path = write_open_hand(args.assets, args.out)
    except FileNotFoundError as error:
        print(f"meshrec build-open-hand: {error}", file=sys.stderr)
        return 2
    seconds = time.perf_counter() - started
    print(load_mano(model_path).describe())
    print(f"wrote {model_path} ({model_path.stat().st_size / 1024:.0f} KiB) in {seconds:.1f} s")
    return 0
