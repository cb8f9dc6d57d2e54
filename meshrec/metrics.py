"""FreiHAND-protocol metrics: PA-MPJPE, PA-MPVPE, PCK AUC and F-scores.

Implements the protocol of the official FreiHAND evaluation (lmb-freiburg/freihand,
``eval.py`` and ``utils/eval_util.py``), so numbers are comparable with published ones:

- predictions are aligned to the ground truth per sample with ``align_w_scale``
  (``meshrec.geometry.procrustes.align_similarity``); joints and vertices are aligned
  separately, each on itself; reflections are allowed;
- a mean point error is the mean over samples for each point, then the mean over points;
- PCK / AUC: thresholds ``np.linspace(0, 0.05, 100)`` metres, a point is correct when its
  error is ``<=`` the threshold; each point's PCK curve (over samples) is integrated with
  the trapezoid rule and divided by the trapezoid integral of ones over the same
  thresholds; the AUC is the mean over points;
- F-score at 5 mm and 15 mm on vertices: nearest-neighbour distances both ways, a point
  counts when its distance is strictly ``<`` the threshold, F = 2PR / (P + R) (0 when
  both are 0), averaged over samples.

A consequence worth knowing: the protocol adds 1e-8 to the norms in the alignment, so
even a perfect prediction comes back a few nanometres off; its aligned errors then miss
the first threshold (0, with ``<=``) and its aligned AUC is 1 - 0.5/99 = 0.99495, not 1.

Inputs are in metres, as numpy arrays, torch tensors or nested lists. Everything is
computed on the CPU in float64, like the official evaluation; tensors on another
device are copied. Scores are returned in mm where the name says ``_mm``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from meshrec.errors import MeshrecError
from meshrec.geometry.procrustes import align_similarity

FREIHAND_PCK_THRESHOLDS_M = np.linspace(0.0, 0.05, 100)
FREIHAND_PCK_THRESHOLDS_M.setflags(write=False)
"""(T,) PCK thresholds of the official evaluation, metres (0 to 5 cm, 100 steps)."""

FREIHAND_FSCORE_THRESHOLDS_M = (0.005, 0.015)
"""F-score thresholds of the official evaluation, metres (F@5 mm and F@15 mm)."""

ROOT_JOINT = 0
"""Index of the wrist in the 21-joint OpenPose / FreiHAND order; root of root-relative errors."""

# Samples per block of the nearest-neighbour search: bounds memory (about 80 kB per
# sample of 778 vertices) while keeping each KD-tree large enough to amortise its setup.
DEFAULT_NN_CHUNK_SAMPLES = 512

# Candidates of the nearest-neighbour search are split into this many groups by how far
# their counterpart is, each searched no further than its group's bound.
_SEARCH_BOUND_GROUPS = 4

_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy >= 2 renamed trapz


class MetricInputError(MeshrecError):
    """Points or thresholds passed to a metric have the wrong shape, type or values."""


# ----------------------------------------------------------------------------- inputs


def _as_points(points, name: str) -> torch.Tensor:
    """Convert (N, P, 3) metres to a float64 CPU tensor, checking shape and finiteness."""
    if isinstance(points, torch.Tensor):
        tensor = points.detach().to(device="cpu", dtype=torch.float64)
    else:
        try:
            array = np.asarray(points, dtype=np.float64)
        except (TypeError, ValueError) as error:
            raise MetricInputError(
                f"{name} must be a numeric array of shape (N, P, 3), got {type(points).__name__}: {error}"
            ) from error
        tensor = torch.from_numpy(np.ascontiguousarray(array))
    if tensor.ndim != 3 or tensor.shape[-1] != 3:
        raise MetricInputError(f"{name} must have shape (N, P, 3), got {tuple(tensor.shape)}")
    if tensor.shape[0] < 1 or tensor.shape[1] < 1:
        raise MetricInputError(
            f"{name} must hold at least one sample of at least one point, got shape {tuple(tensor.shape)}"
        )
    finite = torch.isfinite(tensor)
    if not bool(finite.all()):
        bad_samples = torch.nonzero(~finite.all(dim=2).all(dim=1)).flatten()
        raise MetricInputError(
            f"{name} must be finite, got NaN or inf in {bad_samples.numel()} sample(s), "
            f"first at sample index {int(bad_samples[0])}"
        )
    return tensor


def _as_pair(pred, target, pred_name: str = "pred", target_name: str = "target"):
    pred_t = _as_points(pred, pred_name)
    target_t = _as_points(target, target_name)
    if pred_t.shape != target_t.shape:
        raise MetricInputError(
            f"{pred_name} and {target_name} must have the same shape (N, P, 3) with corresponding "
            f"points, got {tuple(pred_t.shape)} and {tuple(target_t.shape)}"
        )
    return pred_t, target_t


def _as_thresholds(thresholds) -> np.ndarray:
    values = np.array(thresholds, dtype=np.float64)  # a copy: callers keep their array
    if values.ndim != 1 or values.size < 2:
        raise MetricInputError(f"thresholds must be a 1-D sequence of at least 2 values, got shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(np.diff(values) <= 0) or values[0] < 0:
        raise MetricInputError("thresholds must be finite, non-negative and strictly increasing")
    return values


# ------------------------------------------------------------------ point errors, AUC


def point_distances(pred, target) -> torch.Tensor:
    """Euclidean distance between corresponding points.

    Args:
        pred: (N, P, 3) predicted points, metres.
        target: (N, P, 3) ground-truth points, metres; ``target[n, p]`` matches ``pred[n, p]``.

    Returns:
        (N, P) float64 CPU tensor; ``out[n, p]`` is the error of point p in sample n, metres.
    """
    pred_t, target_t = _as_pair(pred, target)
    return torch.linalg.vector_norm(pred_t - target_t, dim=-1)


def mean_point_error(pred, target) -> float:
    """Mean point error as the official evaluation computes it, in metres.

    Mean over samples for each point, then the mean over points. With every point
    present in every sample this equals the plain mean, up to rounding.

    Args:
        pred, target: (N, P, 3) corresponding points, metres. Align first
            (``align_similarity``) for the Procrustes-aligned variant.
    """
    return float(point_distances(pred, target).mean(dim=0).mean())


def _per_point_pck(distances: torch.Tensor, thresholds: np.ndarray) -> np.ndarray:
    """(P, T) fraction of samples whose error for point p is <= threshold t."""
    num_samples = distances.shape[0]
    sorted_per_point = torch.sort(distances.T.contiguous(), dim=1).values  # (P, N)
    queries = torch.tensor(thresholds, dtype=torch.float64).expand(sorted_per_point.shape[0], -1).contiguous()
    # right=True counts errors <= threshold, the official `data <= threshold`.
    counts = torch.searchsorted(sorted_per_point, queries, right=True)
    return counts.numpy().astype(np.float64) / num_samples


def pck_curve(pred, target, thresholds=FREIHAND_PCK_THRESHOLDS_M) -> np.ndarray:
    """PCK curve: per point over samples, then averaged over points.

    Args:
        pred, target: (N, P, 3) corresponding points, metres.
        thresholds: (T,) increasing distances in metres (default: the official 0–5 cm, 100 steps).

    Returns:
        (T,) float64; ``out[t]`` is the mean over points of the fraction of samples whose
        error is ``<= thresholds[t]``.
    """
    values = _as_thresholds(thresholds)
    return _per_point_pck(point_distances(pred, target), values).mean(axis=0)


def _auc_from_distances(distances: torch.Tensor, thresholds: np.ndarray) -> float:
    per_point = _per_point_pck(distances, thresholds)
    # Normalised by the integral of ones, as eval_util does (0.05 up to rounding), so
    # a perfect prediction scores exactly 1.0.
    norm = _trapezoid(np.ones_like(thresholds), thresholds)
    per_point_auc = _trapezoid(per_point, thresholds, axis=1) / norm
    return float(np.mean(per_point_auc))


def pck_auc(pred, target, thresholds=FREIHAND_PCK_THRESHOLDS_M) -> float:
    """Normalised area under the PCK curve, the official ``get_measures`` AUC.

    Args:
        pred, target: (N, P, 3) corresponding points, metres.
        thresholds: (T,) increasing distances in metres (default: the official 0–5 cm, 100 steps).

    Returns:
        Mean over points of trapz(pck_p, thresholds) / trapz(1, thresholds), in [0, 1].
    """
    values = _as_thresholds(thresholds)
    return _auc_from_distances(point_distances(pred, target), values)


# --------------------------------------------------------------------------- F-score


@dataclass(frozen=True)
class FScore:
    """Per-sample F-score at one distance threshold.

    Attributes:
        threshold: distance in metres; a point counts when its nearest neighbour in the
            other set is strictly closer than this.
        fscore: (N,) 2PR / (P + R), 0 where P + R = 0.
        precision: (N,) fraction of predicted points with a ground-truth point within
            the threshold. (The official script names this one "recall" and the other
            "precision"; F is symmetric, so the scores agree.)
        recall: (N,) fraction of ground-truth points with a predicted point within it.
    """

    threshold: float
    fscore: np.ndarray
    precision: np.ndarray
    recall: np.ndarray

    @property
    def mean(self) -> float:
        """Mean F-score over samples, the number the protocol reports."""
        return float(np.mean(self.fscore))


def _grid_offsets(num_samples: int, spacing: float) -> np.ndarray:
    """(S, 3) offsets placing S samples on a cubic grid, ``spacing`` apart."""
    side = max(1, int(np.ceil(num_samples ** (1.0 / 3.0) - 1e-9)))
    while side**3 < num_samples:
        side += 1
    index = np.arange(num_samples)
    cells = np.stack([index % side, (index // side) % side, index // (side * side)], axis=1)
    return cells.astype(np.float64) * spacing


def _hits_within(
    source: np.ndarray,
    target: np.ndarray,
    thresholds: Sequence[float],
    corresponding: np.ndarray | None,
    shifted_source: np.ndarray,
    shifted_target_tree,
) -> np.ndarray:
    """(K, S, P) True where source point p of sample s has a target point closer than threshold k.

    Args:
        source: (S, P, 3) points whose neighbours are searched, metres.
        target: (S, Q, 3) points searched among, metres.
        thresholds: K distances in metres, ascending.
        corresponding: (S, P) distance from each source point to the target point of the
            same index when the two sets correspond (P = Q), else None. That point is a
            neighbour, so a source point closer than a threshold to its counterpart is a
            hit without searching: for good predictions most points are settled so.
        shifted_source: (S * P, 3) the source points moved into the KD-tree's frame.
        shifted_target_tree: KD-tree over all target points of the block, moved so that
            points of different samples are further apart than the largest threshold.
    """
    num_samples, num_points = source.shape[:2]
    flat_source = source.reshape(-1, 3)
    flat_target = target.reshape(-1, 3)
    nearest_distance = np.full(num_samples * num_points, np.inf)
    if corresponding is None:
        candidates = np.arange(num_samples * num_points)
    else:
        flat_corresponding = corresponding.reshape(-1)
        nearest_distance = flat_corresponding.copy()
        candidates = np.flatnonzero(flat_corresponding >= thresholds[0])
    # Search no further than the largest threshold (beyond it the exact distance does not
    # matter) nor than the counterpart, which bounds the nearest distance. cKDTree takes
    # one bound per call, so candidates are grouped by their counterpart's distance.
    largest = thresholds[-1]
    bounds = np.minimum(nearest_distance[candidates], largest)
    edges = np.geomspace(max(thresholds[0], largest / 8), largest, _SEARCH_BOUND_GROUPS + 1)
    group_of = np.searchsorted(edges, bounds, side="left")
    for group in np.unique(group_of):
        members = candidates[group_of == group]
        upper = edges[min(group, _SEARCH_BOUND_GROUPS)]
        # A hair above the bound, so a neighbour exactly at it is found despite the
        # shifted coordinates' rounding; the exact distance, from the unshifted points,
        # then decides.
        _, nearest = shifted_target_tree.query(
            shifted_source[members], k=1, distance_upper_bound=upper * (1.0 + 1e-9) + 1e-12, workers=-1
        )
        found = nearest < flat_target.shape[0]
        found_members = members[found]
        exact = np.linalg.norm(flat_source[found_members] - flat_target[nearest[found]], axis=1)
        nearest_distance[found_members] = np.minimum(nearest_distance[found_members], exact)
    hits = nearest_distance[None, :] < np.asarray(thresholds)[:, None]
    return hits.reshape(len(thresholds), num_samples, num_points)


def f_scores(
    pred,
    target,
    thresholds: Sequence[float] = FREIHAND_FSCORE_THRESHOLDS_M,
    *,
    chunk_samples: int = DEFAULT_NN_CHUNK_SAMPLES,
) -> tuple[FScore, ...]:
    """F-scores at several thresholds, sharing the nearest-neighbour search.

    Args:
        pred: (N, P, 3) predicted points, metres.
        target: (N, Q, 3) ground-truth points, metres (Q may differ from P).
        thresholds: distances in metres (default 5 mm and 15 mm).
        chunk_samples: samples per KD-tree block; bounds memory.

    Returns:
        One FScore per threshold, in the order given.
    """
    from scipy.spatial import cKDTree  # scipy's spatial module is slow to import

    pred_t = _as_points(pred, "pred")
    target_t = _as_points(target, "target")
    if pred_t.shape[0] != target_t.shape[0]:
        raise MetricInputError(
            f"pred and target must hold the same number of samples, got {pred_t.shape[0]} and {target_t.shape[0]}"
        )
    threshold_values = [float(t) for t in thresholds]
    if not threshold_values or any(not np.isfinite(t) or t <= 0 for t in threshold_values):
        raise MetricInputError(f"F-score thresholds must be positive and finite, got {threshold_values}")
    if chunk_samples < 1:
        raise MetricInputError(f"chunk_samples must be >= 1, got {chunk_samples}")
    order = np.argsort(threshold_values, kind="stable")  # hits only grow with the threshold
    ascending = [threshold_values[i] for i in order]

    pred_np = pred_t.numpy()
    target_np = target_t.numpy()
    num_samples = pred_np.shape[0]
    same_points = pred_np.shape == target_np.shape
    pred_hits = np.empty((len(ascending), num_samples), dtype=np.float64)
    target_hits = np.empty((len(ascending), num_samples), dtype=np.float64)

    for start in range(0, num_samples, chunk_samples):
        stop = min(start + chunk_samples, num_samples)
        block_pred = pred_np[start:stop]
        block_target = target_np[start:stop]
        # One KD-tree per block: move each sample into its own cell of a grid whose
        # cells are more than the largest threshold apart, so no search crosses samples.
        centre = block_target.mean(axis=1, keepdims=True)
        extent = max(np.abs(block_pred - centre).max(), np.abs(block_target - centre).max())
        spacing = 2.0 * extent + 2.0 * ascending[-1] + 1e-6
        shift = _grid_offsets(stop - start, spacing)[:, None, :] - centre
        shifted_pred = (block_pred + shift).reshape(-1, 3)
        shifted_target = (block_target + shift).reshape(-1, 3)
        corresponding = (
            np.linalg.norm(block_pred - block_target, axis=-1) if same_points else None
        )
        # Splitting at the midpoint instead of the median builds faster and, measured on
        # hand meshes, queries as fast; compact nodes keep the bounded queries quick.
        target_tree = cKDTree(shifted_target, balanced_tree=False)
        pred_tree = cKDTree(shifted_pred, balanced_tree=False)
        pred_hits[:, start:stop] = _hits_within(
            block_pred, block_target, ascending, corresponding, shifted_pred, target_tree
        ).mean(axis=2)
        target_hits[:, start:stop] = _hits_within(
            block_target, block_pred, ascending, corresponding, shifted_target, pred_tree
        ).mean(axis=2)

    results: list[FScore | None] = [None] * len(ascending)
    for rank, original_index in enumerate(order):
        precision = pred_hits[rank]
        recall = target_hits[rank]
        total = precision + recall
        fscore = np.where(total > 0, 2.0 * precision * recall / np.where(total > 0, total, 1.0), 0.0)
        results[original_index] = FScore(
            threshold=ascending[rank], fscore=fscore, precision=precision, recall=recall
        )
    return tuple(results)


def f_score(pred, target, threshold: float, *, chunk_samples: int = DEFAULT_NN_CHUNK_SAMPLES) -> FScore:
    """F-score at one threshold (metres); see ``f_scores``.

    Args:
        pred: (N, P, 3) predicted points, metres.
        target: (N, Q, 3) ground-truth points, metres.
        threshold: distance in metres, e.g. 0.005 for F@5 mm.
    """
    return f_scores(pred, target, (threshold,), chunk_samples=chunk_samples)[0]


# ------------------------------------------------------------------ the whole protocol


def freihand_scores(
    pred_joints,
    pred_verts,
    gt_joints,
    gt_verts,
    *,
    include_unaligned_fscore: bool = False,
    chunk_samples: int = DEFAULT_NN_CHUNK_SAMPLES,
) -> dict[str, float]:
    """All FreiHAND-protocol scores for a set of predictions.

    Args:
        pred_joints: (N, J, 3) predicted joints, metres, camera frame; J = 21 in the
            OpenPose / FreiHAND order (joint 0, the wrist, is the root).
        pred_verts: (N, V, 3) predicted mesh vertices, metres; V = 778 for MANO.
        gt_joints: (N, J, 3) ground-truth joints, metres.
        gt_verts: (N, V, 3) ground-truth vertices, metres, same topology as pred_verts.
        include_unaligned_fscore: also report F-scores before alignment
            (``f5_unaligned``, ``f15_unaligned``), which the official script prints too.
        chunk_samples: samples per nearest-neighbour block (memory bound).

    Returns:
        dict with keys (errors in mm, F and AUC in [0, 1]):
        ``pa_mpjpe_mm``, ``pa_mpvpe_mm``: errors after per-sample similarity alignment;
        ``f5``, ``f15``: F-scores of the aligned vertices at 5 mm and 15 mm;
        ``auc_pa_joints``, ``auc_pa_verts``: PCK AUC (0–50 mm) after alignment;
        ``mpjpe_mm``, ``mpvpe_mm``, ``auc_joints``, ``auc_verts``: the same, unaligned;
        ``rr_mpjpe_mm``, ``rr_mpvpe_mm``: errors after subtracting each side's root joint
        (joint 0) from its joints and vertices;
        ``num_samples``: N, as a float.
    """
    pred_j, gt_j = _as_pair(pred_joints, gt_joints, "pred_joints", "gt_joints")
    pred_v, gt_v = _as_pair(pred_verts, gt_verts, "pred_verts", "gt_verts")
    if pred_j.shape[0] != pred_v.shape[0]:
        raise MetricInputError(
            f"joints and vertices must hold the same number of samples, got {pred_j.shape[0]} and {pred_v.shape[0]}"
        )
    thresholds = FREIHAND_PCK_THRESHOLDS_M
    millimetres = 1000.0

    joint_errors = torch.linalg.vector_norm(pred_j - gt_j, dim=-1)
    vert_errors = torch.linalg.vector_norm(pred_v - gt_v, dim=-1)
    pred_root = pred_j[:, ROOT_JOINT : ROOT_JOINT + 1]
    gt_root = gt_j[:, ROOT_JOINT : ROOT_JOINT + 1]
    rr_joint_errors = torch.linalg.vector_norm((pred_j - pred_root) - (gt_j - gt_root), dim=-1)
    rr_vert_errors = torch.linalg.vector_norm((pred_v - pred_root) - (gt_v - gt_root), dim=-1)

    aligned_j = align_similarity(pred_j, gt_j)
    aligned_v = align_similarity(pred_v, gt_v)
    pa_joint_errors = torch.linalg.vector_norm(aligned_j - gt_j, dim=-1)
    pa_vert_errors = torch.linalg.vector_norm(aligned_v - gt_v, dim=-1)

    def mean_error_mm(errors: torch.Tensor) -> float:
        return float(errors.mean(dim=0).mean()) * millimetres

    f_aligned = f_scores(aligned_v, gt_v, FREIHAND_FSCORE_THRESHOLDS_M, chunk_samples=chunk_samples)
    scores = {
        "pa_mpjpe_mm": mean_error_mm(pa_joint_errors),
        "pa_mpvpe_mm": mean_error_mm(pa_vert_errors),
        "f5": f_aligned[0].mean,
        "f15": f_aligned[1].mean,
        "auc_pa_joints": _auc_from_distances(pa_joint_errors, thresholds),
        "auc_pa_verts": _auc_from_distances(pa_vert_errors, thresholds),
        "mpjpe_mm": mean_error_mm(joint_errors),
        "mpvpe_mm": mean_error_mm(vert_errors),
        "auc_joints": _auc_from_distances(joint_errors, thresholds),
        "auc_verts": _auc_from_distances(vert_errors, thresholds),
        "rr_mpjpe_mm": mean_error_mm(rr_joint_errors),
        "rr_mpvpe_mm": mean_error_mm(rr_vert_errors),
    }
    if include_unaligned_fscore:
        f_raw = f_scores(pred_v, gt_v, FREIHAND_FSCORE_THRESHOLDS_M, chunk_samples=chunk_samples)
        scores["f5_unaligned"] = f_raw[0].mean
        scores["f15_unaligned"] = f_raw[1].mean
    scores["num_samples"] = float(pred_j.shape[0])
    return scores


def joint_scores(pred_joints, gt_joints) -> dict[str, float]:
    """The joint part of :func:`freihand_scores` (same keys, same protocol), for labels
    without a mesh of the model's topology.

    Args:
        pred_joints, gt_joints: ``(N, 21, 3)`` metres, OpenPose order.
    """
    pred, gt = _as_pair(pred_joints, gt_joints, "pred_joints", "gt_joints")
    aligned = align_similarity(pred, gt)
    root = slice(ROOT_JOINT, ROOT_JOINT + 1)
    return {
        "pa_mpjpe_mm": 1000.0 * mean_point_error(aligned, gt),
        "auc_pa_joints": pck_auc(aligned, gt),
        "mpjpe_mm": 1000.0 * mean_point_error(pred, gt),
        "auc_joints": pck_auc(pred, gt),
        "rr_mpjpe_mm": 1000.0 * mean_point_error(pred - pred[:, root], gt - gt[:, root]),
        "num_samples": float(len(pred)),
    }


def stage_scores(
    stages: Mapping[str, tuple[object, object]], gt_joints, gt_vertices=None, *, joints_only: bool = False
) -> dict[str, dict[str, float]]:
    """FreiHAND scores of every stage of a network, in the stages' own order.

    The one scorer of training-time validation and :func:`meshrec.evaluate.evaluate`. The
    order of ``stages`` is the order the network ran them (``global``, ``coarse_to_fine``,
    ``pass_1`` ... ``pass_T``), never an alphabetical one, so :func:`final_stage` is the last.

    Args:
        stages: stage name -> ``(joints (N, J, 3), vertices (N, V, 3))``, metres.
        gt_joints: ``(N, J, 3)`` metres.
        gt_vertices: ``(N, V, 3)`` metres (same topology); unused with ``joints_only``.
        joints_only: score joints only (:func:`joint_scores`), for labels without a mesh.

    Returns:
        stage name -> scores (:func:`freihand_scores` or :func:`joint_scores` keys), same order.
    """
    if not joints_only and gt_vertices is None:
        raise MetricInputError("gt_vertices is None: pass the label meshes, or joints_only=True to score joints only")
    if joints_only:
        return {name: joint_scores(joints, gt_joints) for name, (joints, _) in stages.items()}
    return {name: freihand_scores(joints, vertices, gt_joints, gt_vertices) for name, (joints, vertices) in stages.items()}


def final_stage(scores: Mapping[str, dict[str, float]]) -> str:
    """The name of the network's final stage: the last of :func:`stage_scores`'s (ordered) keys."""
    if not scores:
        raise MetricInputError("no stage was scored: there is no final stage")
    return next(reversed(scores))
