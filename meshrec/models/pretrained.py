"""Starting weights: the ones shipped with meshrec, a user's file, and how to make one from a run.

The field starts its backbones from ImageNet weights; those cannot be fetched from everywhere and
carry their own licences, so meshrec ships its own: ``synthetic-hands``, this project's whole
default network (backbone, global stage, keypoint decoder and head, refinement and loop) trained
on hands rendered by ``meshrec synth`` from the CC0 open hand (nothing of MANO's), released with
the code. It is the model ``meshrec predict`` / ``eval`` use without a checkpoint
(:meth:`HandMeshReconstructor.load`) and the training configs' starting point. ``make model``
reproduces the file; the JSON beside it records the recipe and the accuracy benchmark's scores.

A weights file is ``{"state_dict": {name: tensor}, "meta": {...}}`` with the names of
:class:`~meshrec.models.reconstructor.HandMeshReconstructor`'s state dict (``backbone.…``,
``global_stage.…``, ``keypoint_head.…``, ``refiner.…``); ``meta`` says what it fits and how it
was made. A training checkpoint, a whole model's state dict, or a bare backbone state dict (no
part prefix) load as well.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path

import torch
from torch import nn

from manolayer.io import write_bytes_atomic
from meshrec.errors import MeshrecError

WEIGHTS_DIR = Path(__file__).resolve().parent / "weights"

# name usable as ``model.weights`` -> file under WEIGHTS_DIR
BUNDLED_WEIGHTS: dict[str, str] = {"synthetic-hands": "synthetic_hands.pt"}

# the part a weights file must fit; the others (heads whose shape follows their own settings,
# e.g. keypoints.groups) are skipped with a warning when they do not
REQUIRED_PART = "backbone"

# HandMeshReconstructor's learned parts, in its state dict's prefixes
_PARTS = ("backbone", "global_stage", "keypoint_decoder", "keypoint_head", "refiner")


def resolve_weights(name_or_path: str | os.PathLike) -> Path:
    """The file behind ``model.weights``: a bundled name or a path of the user's."""
    name = str(name_or_path)
    if name in BUNDLED_WEIGHTS:
        path = WEIGHTS_DIR / BUNDLED_WEIGHTS[name]
        if not path.exists():
            raise MeshrecError(
                f"the bundled weights {name!r} are missing from this installation ({path}); "
                "reinstall meshrec, or set model.weights=null to start from random weights"
            )
        return path
    return Path(name_or_path)


def load_tensors_file(path: str | os.PathLike, what: str):
    """``torch.load`` of a checkpoint or weights file on the CPU, tensors and plain containers only
    (nothing in the file is executed); a missing or unreadable file is a :class:`MeshrecError`
    naming ``what`` it should have been."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise MeshrecError(f"{what} not found: {path}") from None
    except Exception as error:  # a corrupt file can raise many types; name it and the cause
        raise MeshrecError(f"cannot read {what} {path}: {error}") from None


def read_state_dict(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """The model-level state dict in a weights file, a checkpoint or a state dict file
    (``model.`` prefixes removed; a bare backbone state dict gets ``backbone.``)."""
    return _state_of(load_tensors_file(path, "weights file"), path)


def _state_of(content, path) -> dict[str, torch.Tensor]:
    """:func:`read_state_dict` of a file's already loaded ``content``."""
    if isinstance(content, dict) and isinstance(content.get("state_dict"), dict):
        content = content["state_dict"]
    if not isinstance(content, dict) or not all(isinstance(v, torch.Tensor) for v in content.values()):
        raise MeshrecError(f"{path} holds no state_dict (a dict of tensors); expected a weights file or checkpoint")
    state = {key.removeprefix("model."): value for key, value in content.items()}
    if not any(key.split(".", 1)[0] in _PARTS for key in state):
        state = {f"{REQUIRED_PART}.{key}": value for key, value in state.items()}
    return state


def read_weights_file(name_or_path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict, Path]:
    """``(state, meta, path)`` of a weights file written by :func:`save_weights` (a bundled name
    or a path); ``meta`` is ``{}`` when the file has none."""
    path = resolve_weights(name_or_path)
    content = load_tensors_file(path, "weights file")
    meta = content.get("meta") if isinstance(content, dict) else None
    return _state_of(content, path), meta if isinstance(meta, dict) else {}, path


def load_starting_weights(model: nn.Module, name_or_path: str | os.PathLike) -> list[str]:
    """Load every part of ``model`` that the file holds and that fits; returns the parts loaded.

    A part whose weights have other shapes than the file's is not loaded at all: the backbone
    must fit (otherwise the error names what does not); a head that does not fit (e.g. another
    ``keypoints.groups``) keeps its initial weights, with a warning naming it. A part that has
    weights the file lacks (a design that added a head, e.g. ``gate.uncertainty_head``) loads
    the others and keeps its initial values for those, with a warning naming them. Parts the
    file lacks (a refiner the file's run did not train) keep their initial weights.
    """
    path = resolve_weights(name_or_path)
    state = read_state_dict(path)
    loaded = []
    for part in _PARTS:
        module = getattr(model, part, None)
        held = {key[len(part) + 1 :]: value for key, value in state.items() if key.startswith(part + ".")}
        if module is None or not held:
            continue
        expected = module.state_dict()
        missing = sorted(set(expected) - set(held))
        wrong = [f"{k} {tuple(held[k].shape)} (expected {tuple(v.shape)})" for k, v in expected.items() if k in held and held[k].shape != v.shape]
        if wrong or (missing and part == REQUIRED_PART):
            problems = "; ".join(
                ([f"missing {len(missing)} keys, e.g. {missing[:3]}"] if missing else [])
                + ([f"wrong shapes: {wrong[:3]}"] if wrong else [])
            )
            if part == REQUIRED_PART:
                raise MeshrecError(f"weights {path} do not fit the configured {part}: {problems}; "
                                   "use the model settings the file was made with (its JSON says which) or model.weights=null")
            warnings.warn(f"weights {path}: {part} does not fit this model's settings and starts from random weights ({problems})", stacklevel=2)
            continue
        if missing:
            warnings.warn(f"weights {path}: {part} loaded except {len(missing)} weights the file lacks, which start "
                          f"from their initial values: {missing[:4]}{' ...' if len(missing) > 4 else ''}", stacklevel=2)
        module.load_state_dict({k: held[k] for k in expected if k in held}, strict=not missing)
        loaded.append(part)
    if not loaded:
        raise MeshrecError(f"{path} holds no part of this model (expected keys starting with one of {list(_PARTS)})")
    return loaded


def weights_from_checkpoint(checkpoint: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The learned weights of a ``meshrec train`` checkpoint, and what they fit and came from:
    the model configuration, step, training seed / data / optimiser settings and the best
    validation PA-MPVPE the run recorded."""
    content = load_tensors_file(checkpoint, "checkpoint")
    state = content.get("state_dict") if isinstance(content, dict) else None
    config = (content.get("hyper_parameters") or {}).get("config") if isinstance(content, dict) else None
    if not isinstance(state, dict) or not isinstance(config, dict):
        raise MeshrecError(f"{checkpoint} is not a meshrec training checkpoint (no state_dict / hyper_parameters.config)")
    weights = {key.removeprefix("model."): value for key, value in state.items() if key.startswith("model.")}
    scores = [
        float(entry["best_model_score"])
        for entry in (content.get("callbacks") or {}).values()
        if isinstance(entry, dict) and entry.get("best_model_score") is not None
    ]
    meta = {
        "parts": sorted({key.split(".", 1)[0] for key in weights}),
        "model": {k: v for k, v in config["model"].items() if k != "weights"},
        "global_step": int(content.get("global_step", 0)),
        "training": {"seed": config.get("seed"), "data": config.get("data"), "optim": config.get("optim")},
        "best_val_pa_mpvpe_mm": min(scores) if scores else None,
    }
    return weights, meta


def save_weights(path: str | os.PathLike, state: dict[str, torch.Tensor], meta: dict, half: bool = False) -> Path:
    """Write a weights file atomically: an existing file is replaced whole or not at all.

    ``half`` stores floating-point tensors as float16 (half the size; loading casts them back to
    the model's dtype, a relative change of at most 2^-11 per value)."""
    def stored(tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.detach().cpu().contiguous()
        return tensor.half() if half and tensor.is_floating_point() else tensor

    buffer = io.BytesIO()
    torch.save({"state_dict": {k: stored(v) for k, v in state.items()}, "meta": meta}, buffer)
    path = Path(path)
    write_bytes_atomic(path, buffer.getvalue())
    return path
