"""The ``meshrec`` command.

Each subcommand lives in its own module under ``pipelines/`` and exposes
``register(subparsers)``, which adds its parser and sets ``func`` to a callable
taking the parsed namespace and returning an exit code. Modules are imported
lazily, only when their subcommand runs, so ``meshrec --help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> (module under pipelines/, one-line help)
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "mano-info": ("pipelines.mano_tools", "describe a MANO-format file and check that it is valid"),
    "mano-convert": ("pipelines.mano_tools", "convert a MANO pickle to the project's plain .npz format"),
    "build-open-hand": ("pipelines.build_open_hand", "build the CC0 open hand model from MakeHuman assets"),
    "render-hand": ("pipelines.render_hand", "draw the hand model in sampled poses to a PNG"),
    "synth": ("pipelines.synth", "render a synthetic hand data set in the FreiHAND layout"),
    "train": ("pipelines.train", "train a model (full, sparse 2D/3D or mixed labels)"),
    "export-weights": ("pipelines.export_weights", "write a training checkpoint's weights as starting weights for later runs"),
    "eval": ("pipelines.eval", "score a checkpoint on a FreiHAND-layout split, every stage, with a baseline"),
    "predict": ("pipelines.predict", "reconstruct hands in images: meshes (OBJ/PLY/GLB), joints JSON, overlays"),
    "pseudo-label": ("pipelines.pseudo_label", "label your photos' hands with the detector's 2D keypoints, for training"),
    "demo": ("pipelines.demo", "weak labels on a shifted domain: fine-tune with 2D keypoints, 3D keypoints, meshes; compare"),
}


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("meshrec")
    except PackageNotFoundError:  # running from a source tree that was not installed
        import meshrec

        return meshrec.__version__


def build_parser(selected: str | None = None) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="meshrec",
        description="Reconstruct a 3D hand mesh from a single RGB image; train with weak labels.",
    )
    parser.add_argument("--version", action="version", version=f"meshrec {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        if name == selected:
            importlib.import_module(module_name).register(subparsers, name)
        else:
            subparsers.add_parser(name, help=help_text, add_help=False)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    selected = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(selected if selected in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    from manolayer.errors import ManoError
    from meshrec.errors import MeshrecError

    try:
        return int(args.func(args) or 0)
    except (ManoError, MeshrecError, FileNotFoundError, FileExistsError) as error:
        print(f"meshrec {args.command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"meshrec {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
