"""Evaluating a trained model on a FreiHAND-layout folder (the real data set or a synthetic one).

:func:`evaluate` runs the model at inference (the gate decides each sample's passes) over a
split cropped to the model's input size and scores every stage of the network with the
FreiHAND protocol (:func:`meshrec.metrics.freihand_scores`):

- ``global``: the parametric (MANO-style) stage;
- ``coarse_to_fine``: after the coarse-to-fine refinement (when the model has one);
- ``pass_1`` ... ``pass_T``: after each pass of the gated loop (a sample that left the loop
  early keeps its last mesh in the later passes, as at inference);
- ``final``: what the model outputs.

Joints of every stage are regressed from that stage's vertices with the model's joint
regressor (how mesh-regressing methods report joints). Each stage also gets its 2D keypoint
error (``joints2d_px``: its joints projected with the crop's K against the visible 2D labels),
and the keypoint head its own (:attr:`EvaluationResult.keypoint_head_px`). Whether the loop's
per-joint sigma means something is measured by its Spearman rank correlation with the final
joints' actual root-relative errors (:attr:`EvaluationResult.uncertainty_spearman`).

A **mean-hand baseline** is scored beside them: the hand model's template in its mean pose
with zero shape (``ManoLayer(use_pca=False, flat_hand_mean=False)`` with zero pose), mirrored
for left hands, its wrist placed at the predicted root. Procrustes alignment removes its
placement, so its PA-MPJPE / PA-MPVPE say how far a hand that ignores the image is from
the labels; the model's must be well below. (Its unaligned errors only measure the
placement and orientation, and mean little.)

Samples without labels (the real evaluation split before its labels were released) still
get predictions (for :func:`save_freihand_submission`); scores use the samples that have
3D joints and vertices of the model's topology. With joints but no usable vertices (e.g.
the open-hand model against MANO labels) only joint scores are reported.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from manolayer.io import write_bytes_atomic
from meshrec.errors import MeshrecError
from meshrec.geometry.camera import project_points
from meshrec.metrics import stage_scores

__all__ = [
    "EVAL_JSON_FORMAT",
    "BASELINE_NAME",
    "EvaluationResult",
    "evaluate",
    "mean_hand",
    "format_table",
    "result_to_dict",
    "save_scores_json",
    "save_freihand_submission",
]

EVAL_JSON_FORMAT = "meshrec.eval/1"
BASELINE_NAME = "mean_hand"
FINAL_STAGE = "final"
KEYPOINT_HEAD_NAME = "keypoint_head"  # its 2D error is reported beside the stages' own
# Submission files round to 1e-7 m (0.1 micrometre): far below any error the protocol
# reports, and it keeps the file about half the size of full float repr.
SUBMISSION_DECIMALS = 7


@dataclass
class EvaluationResult:
    """Everything :func:`evaluate` found.

    Attributes:
        stages: stage name (``global``, ``coarse_to_fine``, ``pass_1`` ... ``pass_T``,
            ``final``) -> scores (keys of :func:`meshrec.metrics.freihand_scores`, errors in
            mm; joint keys only when ``joints_only``). Empty when no sample has labels.
        baseline: :data:`BASELINE_NAME` -> scores of the mean hand, same keys.
        joints: ``(N, 21, 3)`` float32 final joints of every sample, metres, dataset order.
        vertices: ``(N, V, 3)`` float32 final vertices, metres.
        passes_used: ``(N,)`` int64 loop passes each sample ran.
        max_passes: the loop's largest number of passes (0 when the model has no loop).
        sample_ids: ``(N,)`` the dataset's sample ids (image numbers).
        num_scored: samples with labels used for the scores.
        joints_only: scores are joint scores only (no vertices of the model's topology).
        notes: why samples were not scored, and the like, for people.
        checkpoint, data, split: what was evaluated.
        keypoint_head_px: the keypoint head's mean 2D error over visible labelled keypoints
            (crop pixels), None without a head or 2D labels.
        uncertainty_spearman: Spearman rank correlation between the predicted per-joint sigma
            and the final joints' root-relative errors (the error sigma is trained for) over every
            scored (sample, joint other than the wrist); None without the loop.
    """

    stages: dict[str, dict[str, float]]
    baseline: dict[str, dict[str, float]]
    joints: np.ndarray
    vertices: np.ndarray
    passes_used: np.ndarray
    max_passes: int
    sample_ids: np.ndarray
    num_scored: int
    joints_only: bool = False
    notes: list[str] = field(default_factory=list)
    checkpoint: str | None = None
    data: str | None = None
    split: str | None = None
    keypoint_head_px: float | None = None
    uncertainty_spearman: float | None = None

    @property
    def num_samples(self) -> int:
        return int(len(self.joints))

    @property
    def passes_histogram(self) -> list[int]:
        """``[count with 0 passes, with 1, ..., with max_passes]``."""
        return np.bincount(self.passes_used, minlength=self.max_passes + 1).tolist()

    @property
    def passes_mean(self) -> float:
        return float(self.passes_used.mean()) if len(self.passes_used) else float("nan")


# --------------------------------------------------------------------------- baseline


def mean_hand(model) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean hand of a (right) MANO-format model: template, mean pose, zero shape.

    Args:
        model: a :class:`manolayer.io.ManoModel` (e.g. ``HandMeshReconstructor.hand_model``).

    Returns:
        ``(vertices (V, 3), joints (21, 3))`` float64, metres, the wrist (joint 0) at the origin,
        joints in OpenPose order.
    """
    from manolayer.layer import ManoLayer

    layer = ManoLayer(model, use_pca=False, flat_hand_mean=False, dtype=torch.float64)
    zeros = torch.zeros(1, 3, dtype=torch.float64)
    output = layer(global_orient=zeros, hand_pose=torch.zeros(1, 45, dtype=torch.float64))
    wrist = output.joints[0, :1]
    return output.vertices[0] - wrist, output.joints[0] - wrist


def _placed_mean_hand(
    template: tuple[torch.Tensor, torch.Tensor], root: torch.Tensor, left: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """The mean hand (``(V, 3)``, ``(21, 3)``) mirrored for ``left`` ``(B,)`` samples and
    moved to ``root`` ``(B, 3)`` -> ``(B, V, 3)``, ``(B, 21, 3)``."""
    mirror = torch.where(left.view(-1, 1, 1), root.new_tensor([-1.0, 1.0, 1.0]), root.new_tensor([1.0, 1.0, 1.0]))
    vertices, joints = (t.to(root)[None] * mirror + root[:, None] for t in template)
    return vertices, joints


# --------------------------------------------------------------------------- the run


def evaluate(
    model,
    data: str | os.PathLike,
    split: str = "evaluation",
    *,
    batch_size: int = 32,
    limit: int | None = None,
    workers: int = 0,
    progress: bool = True,
    checkpoint: str | None = None,
    exit_threshold: float | None = None,
) -> EvaluationResult:
    """Run ``model`` over a FreiHAND-layout split and score every stage (module docstring).

    Args:
        model: a :class:`~meshrec.models.reconstructor.HandMeshReconstructor`; its inference
            copy runs (``for_inference()``), on its device and dtype, at its ``config.image_size``
            (images are resized to it).
        data: the folder holding ``<split>/rgb``, ``<split>_K.json``, ...
        split: ``'evaluation'`` or ``'training'``.
        batch_size: images per forward pass.
        limit: evaluate only the first ``limit`` samples.
        workers: DataLoader worker processes reading images (0: in this process).
        progress: progress bar on stderr.
        checkpoint: recorded in the result (for the report).
        exit_threshold: override the gate's tau (1.0: always every pass, to measure what the
            gate saves).

    Raises:
        MeshrecError / DatasetError: the folder is not in the FreiHAND layout, an image is
            corrupt (evaluation never skips: the submission must have every sample).
    """
    from torch.utils.data import DataLoader, Subset

    from meshrec.data.freihand import FreiHandDataset
    from meshrec.data.sample import collate_hand_samples
    from meshrec.inference import progress_bar

    if batch_size < 1:
        raise MeshrecError(f"batch_size must be >= 1, got {batch_size}")
    if limit is not None and limit < 1:
        raise MeshrecError(f"limit must be >= 1, got {limit}")
    root = Path(data)
    try:
        dataset = FreiHandDataset(root, split, crop_size=int(model.config.image_size))
    except ValueError as error:  # split names and the like
        raise MeshrecError(str(error)) from None
    count = len(dataset)
    if limit is not None and limit < count:
        dataset = Subset(dataset, range(limit))
        count = limit
    loader = DataLoader(
        dataset, batch_size=batch_size, shuffle=False, num_workers=workers, collate_fn=collate_hand_samples
    )

    model = model.for_inference()
    device, dtype = model.joint_regressor.device, model.joint_regressor.dtype
    regressor = model.joint_regressor.detach().float().cpu()
    num_vertices = model.num_vertices
    max_passes = int(model.config.gate.max_passes) if model.refiner is not None else 0
    template = mean_hand(model.hand_model)

    stage_joints: dict[str, list[torch.Tensor]] = {}
    stage_vertices: dict[str, list[torch.Tensor]] = {}
    joints_all, vertices_all, passes, ids = [], [], [], []
    # labels of the samples with 3D joints only (the rows every stage list keeps)
    label_joints, label_vertices, label_has_mesh = [], [], []
    other_vertex_counts = set()
    pixel_errors: dict[str, list[torch.Tensor]] = {}  # stage -> per visible keypoint errors (px)
    sigmas, sigma_errors = [], []
    with progress_bar(count, f"eval {split}", progress) as bar:
        for batch in loader:
            prediction = model.predict(
                batch.image.to(device, dtype), batch.K.to(device, dtype), batch.side.to(device), exit_threshold=exit_threshold
            )
            final_vertices = prediction.vertices.detach().float().cpu()
            joints_all.append(prediction.joints.detach().float().cpu())
            vertices_all.append(final_vertices)
            passes.append(prediction.passes_used.detach().cpu())
            ids.append(batch.index)

            labelled = batch.has_joints3d
            same_topology = batch.vertices.shape[1] == num_vertices
            if bool(batch.has_mesh.any()) and not same_topology:
                other_vertex_counts.add(int(batch.vertices.shape[1]))
            label_joints.append(batch.joints3d[labelled])
            label_has_mesh.append(batch.has_mesh[labelled] & same_topology)
            label_vertices.append(
                batch.vertices[labelled] if same_topology else torch.zeros(int(labelled.sum()), num_vertices, 3)
            )
            stages = {name: v.detach().float().cpu() for name, v in prediction.stage_vertices(max_passes).items()}
            stages[FINAL_STAGE] = final_vertices
            root_position = prediction.root.detach().double().cpu()
            mean_vertices, mean_joints = _placed_mean_hand(template, root_position, batch.side.bool())
            stages[BASELINE_NAME] = mean_vertices.float()
            visible = batch.joints2d_visible & batch.has_joints2d.unsqueeze(1)
            K = batch.K.double()
            for name, vertices in stages.items():
                joints = mean_joints.float() if name == BASELINE_NAME else regressor @ vertices
                stage_joints.setdefault(name, []).append(joints[labelled])
                stage_vertices.setdefault(name, []).append(vertices[labelled])
                if name != BASELINE_NAME:
                    pixels = project_points(joints.double(), K).float()
                    pixel_errors.setdefault(name, []).append((pixels - batch.joints2d).norm(dim=-1)[visible])
            if prediction.keypoints2d is not None:
                head = prediction.keypoints2d.detach().float().cpu()
                pixel_errors.setdefault(KEYPOINT_HEAD_NAME, []).append((head - batch.joints2d).norm(dim=-1)[visible])
            if prediction.joint_variance is not None and bool(labelled.any()):
                # sigma is the root-relative error's (what the loop's uncertainty term trains); the
                # wrist's is 0 by definition, so it is left out
                final, label = joints_all[-1][labelled], batch.joints3d[labelled]
                sigmas.append(prediction.joint_variance.detach().float().cpu().sqrt()[labelled][:, 1:])
                sigma_errors.append(((final - final[:, :1]) - (label - label[:, :1])).norm(dim=-1)[:, 1:])
            bar.update(len(batch))

    has_mesh = torch.cat(label_has_mesh)
    num_labelled = len(has_mesh)
    joints_only = num_labelled > 0 and not bool(has_mesh.any())
    use = torch.ones(num_labelled, dtype=torch.bool) if joints_only else has_mesh
    num_scored = int(use.sum())
    notes = []
    if other_vertex_counts:
        notes.append(
            f"label meshes have {sorted(other_vertex_counts)} vertices, the model's hand has {num_vertices}: "
            "vertex scores need the same topology (a model trained with that hand model)"
        )
    if num_labelled == 0:
        notes.append(f"no sample has 3D labels: {count} predictions made, no scores")
    elif num_scored < count:
        missing = "3D joints" if joints_only else "3D joints and a mesh"
        notes.append(f"scored {num_scored} of {count} samples (the others lack {missing})")
    if joints_only:
        notes.append("joint scores only (no label meshes of the model's topology)")

    stages_scores: dict[str, dict[str, float]] = {}
    baseline: dict[str, dict[str, float]] = {}
    if num_scored:
        labels_j = torch.cat(label_joints)[use]
        labels_v = torch.cat(label_vertices)[use]
        ordered = {name: (torch.cat(stage_joints[name])[use], torch.cat(stage_vertices[name])[use]) for name in stage_vertices}
        for name, scores in stage_scores(ordered, labels_j, labels_v, joints_only=joints_only).items():
            (baseline if name == BASELINE_NAME else stages_scores)[name] = scores
    pixel_means = {name: float(torch.cat(errors).mean()) if sum(len(e) for e in errors) else float("nan")
                   for name, errors in pixel_errors.items()}
    for name, scores in stages_scores.items():
        scores["joints2d_px"] = pixel_means.get(name, float("nan"))
    spearman = None
    if sigmas:
        from scipy.stats import spearmanr

        spearman = float(spearmanr(torch.cat(sigmas).flatten().numpy(), torch.cat(sigma_errors).flatten().numpy()).statistic)

    return EvaluationResult(
        stages=stages_scores,
        baseline=baseline,
        joints=torch.cat(joints_all).numpy(),
        vertices=torch.cat(vertices_all).numpy(),
        passes_used=torch.cat(passes).numpy().astype(np.int64),
        max_passes=max_passes,
        sample_ids=torch.cat(ids).numpy(),
        num_scored=num_scored,
        joints_only=joints_only,
        notes=notes,
        checkpoint=checkpoint,
        data=str(root),
        split=split,
        keypoint_head_px=_finite_or_none(pixel_means.get(KEYPOINT_HEAD_NAME, float("nan"))),
        uncertainty_spearman=spearman,
    )


# --------------------------------------------------------------------------- reporting

_TABLE_COLUMNS = (
    ("PA-MPJPE", "pa_mpjpe_mm", "{:.2f}"),
    ("PA-MPVPE", "pa_mpvpe_mm", "{:.2f}"),
    ("F@5", "f5", "{:.3f}"),
    ("F@15", "f15", "{:.3f}"),
    ("AUC-J", "auc_pa_joints", "{:.3f}"),
    ("MPJPE", "mpjpe_mm", "{:.2f}"),
    ("MPVPE", "mpvpe_mm", "{:.2f}"),
    ("RR-MPJPE", "rr_mpjpe_mm", "{:.2f}"),
    ("2D px", "joints2d_px", "{:.2f}"),
)


def format_table(result: EvaluationResult) -> str:
    """The scores as a text table (one row per stage, the mean hand first), then passes used."""
    header = f"{'stage':<16}" + "".join(f"{title:>10}" for title, _, _ in _TABLE_COLUMNS)
    lines = []
    where = f"{result.data} ({result.split})" if result.data else "evaluation"
    lines.append(f"{where}: {result.num_samples} samples, {result.num_scored} scored"
                 + (f"; checkpoint {result.checkpoint}" if result.checkpoint else ""))
    if result.stages:
        lines.append("errors in mm after Procrustes alignment (PA-) or in the camera frame; F and AUC in [0, 1]")
        lines.append(header)
        lines.append("-" * len(header))
        rows = [*result.baseline.items(), *result.stages.items()]
        for name, scores in rows:
            cells = "".join(
                f"{fmt.format(scores[key]) if key in scores and math.isfinite(scores[key]) else '-':>10}"
                for _, key, fmt in _TABLE_COLUMNS
            )
            lines.append(f"{name:<16}{cells}")
        lines.append(
            f"({BASELINE_NAME}: the template hand in its mean pose at the predicted root; "
            "only its PA- columns are meaningful)"
        )
    if result.keypoint_head_px is not None:
        lines.append(f"keypoint head 2D error: {result.keypoint_head_px:.2f} px")
    if result.uncertainty_spearman is not None:
        lines.append(f"per-joint sigma vs actual joint error: Spearman {result.uncertainty_spearman:.3f}")
    histogram = ", ".join(f"{passes}: {n}" for passes, n in enumerate(result.passes_histogram))
    lines.append(
        f"passes used: mean {result.passes_mean:.2f} of at most {result.max_passes}; histogram {{{histogram}}}"
    )
    lines.extend(result.notes)
    return "\n".join(lines)


def _finite_or_none(value: float) -> float | None:
    return float(value) if math.isfinite(value) else None


def result_to_dict(result: EvaluationResult) -> dict:
    """The JSON-ready summary written by :func:`save_scores_json` (no per-sample arrays)."""

    def clean(scores: dict[str, dict[str, float]]) -> dict:
        return {name: {k: _finite_or_none(v) for k, v in values.items()} for name, values in scores.items()}

    return {
        "format": EVAL_JSON_FORMAT,
        "checkpoint": result.checkpoint,
        "data": result.data,
        "split": result.split,
        "num_samples": result.num_samples,
        "num_scored": result.num_scored,
        "joints_only": result.joints_only,
        "units": {"*_mm": "millimetres", "f5, f15, auc_*": "fraction in [0, 1]"},
        "stages": clean(result.stages),
        "baseline": clean(result.baseline),
        "passes_used": {
            "mean": _finite_or_none(result.passes_mean),
            "max_passes": result.max_passes,
            "histogram": {str(passes): n for passes, n in enumerate(result.passes_histogram)},
        },
        "keypoint_head_px": result.keypoint_head_px,
        "uncertainty_spearman": result.uncertainty_spearman,
        "notes": list(result.notes),
    }


def save_scores_json(path: str | os.PathLike, result: EvaluationResult) -> Path:
    """Write :func:`result_to_dict` as JSON, atomically (temporary file and rename)."""
    path = Path(path)
    text = json.dumps(result_to_dict(result), indent=1, allow_nan=False) + "\n"
    write_bytes_atomic(path, text.encode())
    return path


def _rounded_lists(array: np.ndarray) -> str:
    return json.dumps(np.round(array.astype(np.float64), SUBMISSION_DECIMALS).tolist(), allow_nan=False)


def save_freihand_submission(path: str | os.PathLike, joints, vertices) -> Path:
    """Write predictions in the official FreiHAND submission format, atomically.

    The file is one JSON list ``[xyz_list, verts_list]``: ``xyz_list[n]`` the 21 x 3 joints
    and ``verts_list[n]`` the V x 3 vertices of sample ``n`` (metres, camera frame), samples
    in the data set's order (the official server expects all 3,960 evaluation samples and
    MANO's 778 vertices). Values are rounded to 1e-7 m.

    Args:
        joints: ``(N, 21, 3)``; vertices: ``(N, V, 3)``.
    """
    joints = np.asarray(joints)
    vertices = np.asarray(vertices)
    if joints.ndim != 3 or joints.shape[1:] != (21, 3):
        raise MeshrecError(f"joints must have shape (N, 21, 3), got {joints.shape}")
    if vertices.ndim != 3 or vertices.shape[2] != 3 or len(vertices) != len(joints):
        raise MeshrecError(f"vertices must have shape ({len(joints)}, V, 3), got {vertices.shape}")
    if not (np.isfinite(joints).all() and np.isfinite(vertices).all()):
        raise MeshrecError("predictions hold NaN or Inf; refusing to write them")
    text = "[" + _rounded_lists(joints) + ", " + _rounded_lists(vertices) + "]\n"
    path = Path(path)
    write_bytes_atomic(path, text.encode())
    return path
