"""Backbone weights shipped with meshrec, and how to make them from a training checkpoint.

The field starts its backbones from ImageNet weights; those cannot be fetched from everywhere and
carry their own licences, so meshrec ships its own: ``synthetic-hands``, this project's default
backbone trained on hands rendered by ``meshrec synth`` from the CC0 open hand (nothing of MANO's),
released with the code. ``make pretrained-backbone`` reproduces the file; the JSON beside it
records the recipe, the commit and the scores of the run that made it.

A weights file is ``{"state_dict": {name: tensor}, "meta": {...}}`` holding the backbone alone
(``backbone.`` prefixes removed); ``meta`` says which configuration it fits.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import torch

from manolayer.io import write_bytes_atomic
from meshrec.errors import MeshrecError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# name usable as ``model.backbone.weights`` -> file under WEIGHTS_DIR
BUNDLED_BACKBONES: dict[str, str] = {"synthetic-hands": "backbone_synthetic_hands.pt"}


def resolve_backbone_weights(name_or_path: str | os.PathLike) -> Path:
    """The file behind ``model.backbone.weights``: a bundled name or a path of the user's."""
    name = str(name_or_path)
    if name in BUNDLED_BACKBONES:
        path = WEIGHTS_DIR / BUNDLED_BACKBONES[name]
        if not path.exists():
            raise MeshrecError(
                f"the bundled backbone weights {name!r} are missing from this installation ({path}); "
                "reinstall meshrec, or set model.backbone.weights=null to start from random weights"
            )
        return path
    return Path(name_or_path)


def backbone_from_checkpoint(checkpoint: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The backbone's tensors (``backbone.`` prefix removed) from a ``meshrec train`` checkpoint,
    and what they fit and came from: the backbone configuration, image size, step, training data
    settings and the best validation PA-MPVPE the run recorded."""
    try:
        content = torch.load(checkpoint, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MeshrecError(f"checkpoint not found: {checkpoint}") from None
    except Exception as error:  # a corrupt file can raise many types; name it and the cause
        raise MeshrecError(f"cannot read checkpoint {checkpoint}: {error}") from None
    state = content.get("state_dict") if isinstance(content, dict) else None
    config = (content.get("hyper_parameters") or {}).get("config") if isinstance(content, dict) else None
    if not isinstance(state, dict) or not isinstance(config, dict):
        raise MeshrecError(f"{checkpoint} is not a meshrec training checkpoint (no state_dict / hyper_parameters.config)")
    prefix = "model.backbone."
    backbone = {key[len(prefix) :]: value for key, value in state.items() if key.startswith(prefix)}
    if not backbone:
        raise MeshrecError(f"{checkpoint} holds no backbone weights (no '{prefix}*' keys)")
    scores = [
        float(entry["best_model_score"])
        for entry in (content.get("callbacks") or {}).values()
        if isinstance(entry, dict) and entry.get("best_model_score") is not None
    ]
    meta = {
        "backbone": {k: v for k, v in config["model"]["backbone"].items() if k != "weights"},
        "image_size": config["model"]["image_size"],
        "global_step": int(content.get("global_step", 0)),
        "training": {"seed": config.get("seed"), "data": config.get("data"), "optim": config.get("optim")},
        "best_val_pa_mpvpe_mm": min(scores) if scores else None,
    }
    return backbone, meta


def save_backbone_weights(path: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write a weights file atomically: an existing file is replaced whole or not at all."""
    buffer = io.BytesIO()
    torch.save({"state_dict": {k: v.detach().cpu().contiguous() for k, v in state.items()}, "meta": meta}, buffer)
    path = Path(path)
    write_bytes_atomic(path, buffer.getvalue())
    return path
