"""Tests of the FreiHAND-protocol metrics and the Procrustes alignment behind them.

Fast code is checked against slow per-sample references written from the protocol
(scipy's orthogonal_procrustes in float64, a per-keypoint PCK/AUC loop with numpy's
trapezoid rule, brute-force nearest neighbours), and against hand-computed values.
"""

from __future__ import annotations

import doctest

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.spatial.distance import cdist

import meshrec.geometry.procrustes as procrustes_module
from meshrec.geometry.procrustes import AlignmentInputError, align_similarity, fit_similarity
from meshrec.metrics import (
    FREIHAND_PCK_THRESHOLDS_M,
    FScore,
    MetricInputError,
    f_score,
    f_scores,
    freihand_scores,
    mean_point_error,
    pck_auc,
    pck_curve,
    point_distances,
)

_trapezoid = getattr(np, "trapezoid", None) or np.trapz

# The protocol adds 1e-8 to each Frobenius norm, so even a perfect prediction comes back
# scaled by about 1 - 1e-8 / ||centred points||: a few nanometres on a hand. Exact
# alignment is therefore checked to 10 nm (1e-5 mm), far below anything reported.
EPS_BIAS_M = 1e-8
EPS_BIAS_MM = 1e-5


# ------------------------------------------------------------------ slow references


def reference_align(gt: np.ndarray, pred: np.ndarray) -> np.ndarray:
    """One sample, float64, the protocol's align_w_scale written out step by step."""
    gt_mean, pred_mean = gt.mean(axis=0), pred.mean(axis=0)
    gt_c, pred_c = gt - gt_mean, pred - pred_mean
    gt_norm = np.linalg.norm(gt_c) + 1e-8
    pred_norm = np.linalg.norm(pred_c) + 1e-8
    rotation, scale = orthogonal_procrustes(gt_c / gt_norm, pred_c / pred_norm)
    return (pred_c / pred_norm) @ rotation.T * scale * gt_norm + gt_mean


def reference_mean_error_and_auc(gt: np.ndarray, pred: np.ndarray, thresholds: np.ndarray):
    """Per keypoint: errors over samples, mean, PCK curve with <=, trapezoid / trapezoid of ones."""
    distances = np.linalg.norm(gt - pred, axis=-1)  # (N, P)
    norm = _trapezoid(np.ones_like(thresholds), thresholds)
    means, aucs = [], []
    for point in range(distances.shape[1]):
        errors = distances[:, point]
        means.append(np.mean(errors))
        curve = np.array([np.mean((errors <= t).astype(float)) for t in thresholds])
        aucs.append(_trapezoid(curve, thresholds) / norm)
    return float(np.mean(means)), float(np.mean(aucs))


def reference_fscore(gt: np.ndarray, pred: np.ndarray, threshold: float):
    """One sample, brute-force nearest neighbours both ways, strict <."""
    pairwise = cdist(pred, gt)
    precision = float(np.mean(pairwise.min(axis=1) < threshold))
    recall = float(np.mean(pairwise.min(axis=0) < threshold))
    total = precision + recall
    return (2 * precision * recall / total if total > 0 else 0.0), precision, recall


# ---------------------------------------------------------------------- fixtures


def random_rotations(rng: np.random.Generator, count: int) -> np.ndarray:
    """(count, 3, 3) proper rotations."""
    q, r = np.linalg.qr(rng.normal(size=(count, 3, 3)))
    q = q * np.sign(np.diagonal(r, axis1=1, axis2=2))[:, None, :]
    q[np.linalg.det(q) < 0, :, 0] *= -1
    return q


def hand_like(rng: np.random.Generator, samples: int, points: int) -> np.ndarray:
    """(samples, points, 3) points on a hand-sized ellipsoid shell, 0.6 m from the camera."""
    directions = rng.normal(size=(samples, points, 3))
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    return directions * np.array([0.09, 0.045, 0.015]) + np.array([0.0, 0.0, 0.6])


def similarity_of(points: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random rotation about the camera origin, scale in [0.8, 1.2] and translation, per sample."""
    rotations = random_rotations(rng, points.shape[0])
    scales = rng.uniform(0.8, 1.2, size=(points.shape[0], 1, 1))
    shifts = rng.normal(scale=0.05, size=(points.shape[0], 1, 3))
    return scales * points @ rotations.transpose(0, 2, 1) + shifts


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


# ------------------------------------------------------------------- alignment


@pytest.mark.parametrize("num_points", [3, 21, 778])
def test_align_matches_scipy_reference(rng, num_points):
    gt = hand_like(rng, 12, num_points)
    pred = gt + rng.normal(scale=0.01, size=gt.shape)
    pred[::3] = similarity_of(pred[::3], rng)
    pred[1] = pred[1] * np.array([-1.0, 1.0, 1.0])  # a mirror image, best fitted by a reflection
    aligned = align_similarity(torch.from_numpy(pred), torch.from_numpy(gt)).numpy()
    expected = np.stack([reference_align(g, p) for g, p in zip(gt, pred)])
    np.testing.assert_allclose(aligned, expected, rtol=0, atol=1e-9)


def test_align_leading_batch_dims_and_float32(rng):
    gt = torch.from_numpy(hand_like(rng, 6, 21))
    pred = gt + 0.01 * torch.randn(6, 21, 3, dtype=torch.float64)
    flat = align_similarity(pred, gt)
    nested = align_similarity(pred.reshape(2, 3, 21, 3), gt.reshape(2, 3, 21, 3))
    torch.testing.assert_close(nested.reshape(6, 21, 3), flat, rtol=0, atol=1e-12)
    single = align_similarity(pred[4], gt[4])
    torch.testing.assert_close(single, flat[4], rtol=0, atol=1e-12)
    as_float32 = align_similarity(pred.float(), gt.float())
    assert as_float32.dtype == torch.float32
    torch.testing.assert_close(as_float32.double(), flat, rtol=0, atol=1e-5)


def test_align_undoes_similarity_transform(rng):
    gt = hand_like(rng, 8, 21)
    pred = similarity_of(gt, rng)
    aligned = align_similarity(torch.from_numpy(pred), torch.from_numpy(gt)).numpy()
    np.testing.assert_allclose(aligned, gt, rtol=0, atol=EPS_BIAS_M)


def test_reflection_aligned_only_when_allowed(rng):
    gt = torch.from_numpy(hand_like(rng, 4, 21))
    mirror = torch.diag(torch.tensor([-1.0, 1.0, 1.0], dtype=torch.float64))
    pred = gt @ mirror
    allowed = align_similarity(pred, gt)
    torch.testing.assert_close(allowed, gt, rtol=0, atol=EPS_BIAS_M)
    excluded = align_similarity(pred, gt, allow_reflection=False)
    assert torch.linalg.vector_norm(excluded - gt, dim=-1).mean() > 1e-3  # metres
    transform = fit_similarity(pred, gt, allow_reflection=False)
    torch.testing.assert_close(torch.linalg.det(transform.rotation), torch.ones(4, dtype=torch.float64))
    assert torch.all(torch.linalg.det(fit_similarity(pred, gt).rotation) < 0)


def test_excluding_reflections_changes_nothing_for_proper_rotations(rng):
    gt = hand_like(rng, 10, 21)
    pred = similarity_of(gt + rng.normal(scale=0.005, size=gt.shape), rng)
    pred_t, gt_t = torch.from_numpy(pred), torch.from_numpy(gt)
    torch.testing.assert_close(
        align_similarity(pred_t, gt_t, allow_reflection=False), align_similarity(pred_t, gt_t), rtol=0, atol=1e-12
    )


def test_fit_similarity_apply_equals_align(rng):
    gt = torch.from_numpy(hand_like(rng, 5, 21))
    pred = torch.from_numpy(similarity_of(gt.numpy() + rng.normal(scale=0.01, size=gt.shape), rng))
    transform = fit_similarity(pred, gt)
    torch.testing.assert_close(transform.apply(pred), align_similarity(pred, gt), rtol=0, atol=1e-12)
    assert transform.scale.shape == (5,) and transform.translation.shape == (5, 3)


def test_align_rejects_bad_inputs():
    good = torch.zeros(2, 21, 3)
    with pytest.raises(AlignmentInputError, match=r"same shape.*\(2, 21, 3\).*\(2, 20, 3\)"):
        align_similarity(good, torch.zeros(2, 20, 3))
    with pytest.raises(AlignmentInputError, match=r"\(\.\.\., P, 3\), got \(2, 21, 2\)"):
        align_similarity(torch.zeros(2, 21, 2), torch.zeros(2, 21, 2))
    with pytest.raises(AlignmentInputError, match="torch.Tensor"):
        align_similarity(np.zeros((2, 21, 3)), good)
    with pytest.raises(AlignmentInputError, match="dtype"):
        align_similarity(good, good.double())


def test_procrustes_docstring_examples_run():
    failures, _ = doctest.testmod(procrustes_module, verbose=False)
    assert failures == 0


# ---------------------------------------------------------------- whole protocol


def test_identity_scores_perfectly(rng):
    joints, verts = hand_like(rng, 5, 21), hand_like(rng, 5, 778)
    scores = freihand_scores(joints, verts, joints, verts, include_unaligned_fscore=True)
    for key in ("mpjpe_mm", "mpvpe_mm", "rr_mpjpe_mm", "rr_mpvpe_mm"):
        assert scores[key] == 0.0
    assert scores["pa_mpjpe_mm"] < EPS_BIAS_MM and scores["pa_mpvpe_mm"] < EPS_BIAS_MM
    for key in ("f5", "f15", "f5_unaligned", "f15_unaligned"):
        assert scores[key] == 1.0
    # The official normalisation divides by the trapezoid integral of ones over the same
    # thresholds, so a perfect curve gives exactly 1.0 (dividing by 0.05 would not).
    assert _trapezoid(np.ones(100), FREIHAND_PCK_THRESHOLDS_M) / _trapezoid(
        np.ones(100), FREIHAND_PCK_THRESHOLDS_M
    ) == 1.0
    assert scores["auc_joints"] == 1.0 and scores["auc_verts"] == 1.0
    # After alignment every error is a few nanometres (the 1e-8 in the norms), not 0, so
    # the curve's first point (threshold 0, `<=`) is 0 and the official AUC of a perfect
    # prediction is 1 - (half a threshold step) / 0.05 = 1 - 0.5/99.
    assert scores["auc_pa_joints"] == pytest.approx(1 - 0.5 / 99, abs=1e-12)
    assert scores["auc_pa_verts"] == pytest.approx(1 - 0.5 / 99, abs=1e-12)
    assert scores["num_samples"] == 5


def test_similarity_transform_aligned_away_but_not_unaligned(rng):
    gt_joints, gt_verts = hand_like(rng, 6, 21), hand_like(rng, 6, 778)
    transform_rng = np.random.default_rng(7)
    pred_joints = similarity_of(gt_joints, transform_rng)
    pred_verts = similarity_of(gt_verts, np.random.default_rng(8))
    scores = freihand_scores(pred_joints, pred_verts, gt_joints, gt_verts)
    assert scores["pa_mpjpe_mm"] < EPS_BIAS_MM and scores["pa_mpvpe_mm"] < EPS_BIAS_MM
    assert scores["f5"] == 1.0 and scores["f15"] == 1.0
    assert scores["auc_pa_joints"] == pytest.approx(1 - 0.5 / 99, abs=1e-12)  # see the identity test
    assert scores["auc_pa_verts"] == pytest.approx(1 - 0.5 / 99, abs=1e-12)
    assert scores["mpjpe_mm"] > 10 and scores["mpvpe_mm"] > 10 and scores["rr_mpjpe_mm"] > 1
    assert scores["auc_joints"] < 0.9


def test_translation_only_is_zero_root_relative(rng):
    gt_joints, gt_verts = hand_like(rng, 4, 21), hand_like(rng, 4, 778)
    shift = np.array([0.01, -0.02, 0.03])
    scores = freihand_scores(gt_joints + shift, gt_verts + shift, gt_joints, gt_verts)
    assert scores["rr_mpjpe_mm"] < 1e-9 and scores["rr_mpvpe_mm"] < 1e-9
    assert scores["mpjpe_mm"] == pytest.approx(np.linalg.norm(shift) * 1000, abs=1e-9)


def test_mirror_image_scores_zero_after_alignment(rng):
    gt_joints, gt_verts = hand_like(rng, 3, 21), hand_like(rng, 3, 778)
    mirror = np.array([1.0, -1.0, 1.0])
    scores = freihand_scores(gt_joints * mirror, gt_verts * mirror, gt_joints, gt_verts)
    assert scores["pa_mpjpe_mm"] < EPS_BIAS_MM and scores["pa_mpvpe_mm"] < EPS_BIAS_MM
    assert scores["mpjpe_mm"] > 10


def test_constant_offsets_on_some_points_give_exact_millimetres(rng):
    gt_joints = hand_like(rng, 4, 21)
    gt_verts = hand_like(rng, 4, 778)
    pred_joints = gt_joints.copy()
    pred_joints[:, [3, 8, 15], 0] += 0.007  # 3 of 21 joints 7 mm off: mean 1 mm
    pred_verts = gt_verts.copy()
    pred_verts[:, :389, 2] -= 0.004  # half the vertices 4 mm off: mean 2 mm
    scores = freihand_scores(pred_joints, pred_verts, gt_joints, gt_verts)
    assert scores["mpjpe_mm"] == pytest.approx(1.0, abs=1e-9)
    assert scores["mpvpe_mm"] == pytest.approx(2.0, abs=1e-9)
    assert mean_point_error(pred_joints, gt_joints) == pytest.approx(0.001, abs=1e-12)


def test_mean_error_is_per_point_then_over_points():
    gt = np.zeros((2, 2, 3))
    pred = np.zeros((2, 2, 3))
    pred[0, 0, 0], pred[1, 0, 0] = 0.002, 0.004  # point 0: 2 mm then 4 mm -> 3 mm
    pred[:, 1, 1] = 0.001  # point 1: 1 mm in both samples
    assert mean_point_error(pred, gt) == pytest.approx(0.002, abs=1e-15)
    np.testing.assert_allclose(point_distances(pred, gt).numpy(), [[0.002, 0.001], [0.004, 0.001]])


def test_pck_auc_hand_computed_step():
    # One point 2 cm off. Thresholds are k * 0.05/99; the first one >= 0.02 is k = 40,
    # so the curve is a step there and the trapezoid gives 1 - 39.5/99.
    gt = np.zeros((1, 1, 3))
    pred = np.array([[[0.02, 0.0, 0.0]]])
    assert pck_auc(pred, gt) == pytest.approx(1 - 39.5 / 99, abs=1e-12)


def test_pck_counts_errors_equal_to_the_threshold():
    gt = np.zeros((1, 1, 3))
    pred = np.array([[[0.01, 0.0, 0.0]]])
    np.testing.assert_array_equal(pck_curve(pred, gt, thresholds=[0.0, 0.01, 0.02]), [0.0, 1.0, 1.0])


def test_errors_and_auc_match_per_keypoint_reference(rng):
    gt_joints, gt_verts = hand_like(rng, 40, 21), hand_like(rng, 40, 778)
    pred_joints = gt_joints + rng.normal(scale=0.012, size=gt_joints.shape)
    pred_verts = gt_verts + rng.normal(scale=0.012, size=gt_verts.shape)
    scores = freihand_scores(pred_joints, pred_verts, gt_joints, gt_verts)
    thresholds = np.linspace(0.0, 0.05, 100)
    aligned_joints = np.stack([reference_align(g, p) for g, p in zip(gt_joints, pred_joints)])
    aligned_verts = np.stack([reference_align(g, p) for g, p in zip(gt_verts, pred_verts)])
    cases = {
        ("mpjpe_mm", "auc_joints"): (gt_joints, pred_joints),
        ("mpvpe_mm", "auc_verts"): (gt_verts, pred_verts),
        ("pa_mpjpe_mm", "auc_pa_joints"): (gt_joints, aligned_joints),
        ("pa_mpvpe_mm", "auc_pa_verts"): (gt_verts, aligned_verts),
    }
    for (error_key, auc_key), (gt, pred) in cases.items():
        mean_error, auc = reference_mean_error_and_auc(gt, pred, thresholds)
        assert scores[error_key] == pytest.approx(mean_error * 1000, abs=1e-9)
        assert scores[auc_key] == pytest.approx(auc, abs=1e-12)
    assert 0 < scores["auc_pa_verts"] < 1


# ----------------------------------------------------------------------- F-score


def test_f_score_hand_built_case():
    spacing = 0.1
    gt = np.array([[[0, 0, 0], [spacing, 0, 0], [0, spacing, 0], [0, 0, spacing]]], dtype=float)
    pred = np.array(
        [
            [
                [0.001, 0, 0],  # 1 mm from gt 0
                [spacing, 0.004, 0],  # 4 mm from gt 1
                [0, spacing, 0.010],  # 10 mm from gt 2
                [0, -0.002, 0],  # 2 mm from gt 0 as well
                [0.5, 0.5, 0.5],  # far from everything
            ]
        ]
    )
    at_5, at_15 = f_scores(pred, gt, (0.005, 0.015))
    # 5 mm: predicted 0, 1, 3 hit (3/5); gt 0, 1 are covered (2/4).
    assert at_5.precision[0] == pytest.approx(3 / 5) and at_5.recall[0] == pytest.approx(2 / 4)
    assert at_5.fscore[0] == pytest.approx(2 * 0.6 * 0.5 / 1.1)
    # 15 mm: predicted 0-3 hit (4/5); gt 0-2 covered (3/4).
    assert at_15.precision[0] == pytest.approx(4 / 5) and at_15.recall[0] == pytest.approx(3 / 4)
    assert at_15.mean == pytest.approx(2 * 0.8 * 0.75 / 1.55)
    assert isinstance(f_score(pred, gt, 0.005), FScore)
    assert f_score(pred, gt, 0.005).threshold == 0.005


def test_f_score_is_strict_at_the_threshold():
    gt = np.zeros((1, 1, 3))
    at_threshold = np.array([[[0.005, 0.0, 0.0]]])
    assert f_score(at_threshold, gt, 0.005).mean == 0.0
    assert f_score(at_threshold, gt, 0.0050001).mean == 1.0


def test_f_score_zero_when_nothing_matches():
    gt = np.zeros((2, 10, 3))
    pred = np.ones((2, 10, 3))
    result = f_score(pred, gt, 0.005)
    np.testing.assert_array_equal(result.fscore, [0.0, 0.0])


@pytest.mark.parametrize("chunk_samples", [1, 4, 512])
def test_f_scores_match_brute_force(rng, chunk_samples):
    gt = hand_like(rng, 9, 300)
    pred = gt + rng.normal(scale=0.006, size=gt.shape)
    pred[2] = gt[2]  # perfect
    pred[3] += 0.3  # far away, and overlapping another sample's location
    pred[4] = gt[5]  # another sample's points, identical positions to gt 5
    pred[6] *= 50.0  # a huge outlier stretching the block's extent
    thresholds = (0.005, 0.015, 0.002)
    results = f_scores(pred, gt, thresholds, chunk_samples=chunk_samples)
    for result, threshold in zip(results, thresholds):
        assert result.threshold == threshold
        expected = np.array([reference_fscore(g, p, threshold) for g, p in zip(gt, pred)])
        np.testing.assert_array_equal(result.fscore, expected[:, 0])
        np.testing.assert_array_equal(result.precision, expected[:, 1])
        np.testing.assert_array_equal(result.recall, expected[:, 2])


def test_f_scores_without_correspondence_match_brute_force(rng):
    gt = hand_like(rng, 5, 200)
    pred = hand_like(rng, 5, 350)
    result = f_score(pred, gt, 0.01)
    expected = np.array([reference_fscore(g, p, 0.01) for g, p in zip(gt, pred)])
    np.testing.assert_array_equal(result.precision, expected[:, 1])
    np.testing.assert_array_equal(result.recall, expected[:, 2])
    assert 0 < result.mean < 1


# ------------------------------------------------------------------ inputs, scale


def test_numpy_torch_and_lists_agree(rng):
    gt_joints, gt_verts = hand_like(rng, 3, 21), hand_like(rng, 3, 778)
    pred_joints = gt_joints + rng.normal(scale=0.01, size=gt_joints.shape)
    pred_verts = gt_verts + rng.normal(scale=0.01, size=gt_verts.shape)
    from_numpy = freihand_scores(pred_joints, pred_verts, gt_joints, gt_verts)
    from_torch = freihand_scores(
        torch.from_numpy(pred_joints).requires_grad_(True),
        torch.from_numpy(pred_verts),
        torch.from_numpy(gt_joints),
        torch.from_numpy(gt_verts),
    )
    from_lists = freihand_scores(pred_joints.tolist(), pred_verts.tolist(), gt_joints.tolist(), gt_verts.tolist())
    assert from_numpy == from_torch == from_lists
    from_float32 = freihand_scores(*(torch.from_numpy(x).float() for x in (pred_joints, pred_verts, gt_joints, gt_verts)))
    assert from_float32["pa_mpvpe_mm"] == pytest.approx(from_numpy["pa_mpvpe_mm"], rel=1e-5)


def test_freihand_scores_rejects_bad_inputs():
    joints, verts = np.zeros((2, 21, 3)), np.zeros((2, 778, 3))
    with pytest.raises(MetricInputError, match=r"pred_joints must have shape \(N, P, 3\), got \(2, 21, 2\)"):
        freihand_scores(np.zeros((2, 21, 2)), verts, joints, verts)
    with pytest.raises(MetricInputError, match=r"pred_verts and gt_verts .* got \(2, 700, 3\) and \(2, 778, 3\)"):
        freihand_scores(joints, np.zeros((2, 700, 3)), joints, verts)
    with pytest.raises(MetricInputError, match=r"same number of samples, got 2 and 3"):
        freihand_scores(joints, np.zeros((3, 778, 3)), joints, np.zeros((3, 778, 3)))
    bad = verts.copy()
    bad[1, 5, 2] = np.nan
    with pytest.raises(MetricInputError, match=r"pred_verts must be finite.*1 sample\(s\).*sample index 1"):
        freihand_scores(joints, bad, joints, verts)
    with pytest.raises(MetricInputError, match="numeric array"):
        freihand_scores("joints", verts, joints, verts)
    with pytest.raises(MetricInputError, match=r"at least one sample"):
        freihand_scores(np.zeros((0, 21, 3)), np.zeros((0, 778, 3)), np.zeros((0, 21, 3)), np.zeros((0, 778, 3)))


def test_thresholds_are_validated():
    points = np.zeros((1, 4, 3))
    with pytest.raises(MetricInputError, match="strictly increasing"):
        pck_auc(points, points, thresholds=[0.0, 0.02, 0.01])
    with pytest.raises(MetricInputError, match="at least 2"):
        pck_auc(points, points, thresholds=[0.01])
    with pytest.raises(MetricInputError, match="positive"):
        f_score(points, points, 0.0)
    with pytest.raises(MetricInputError, match="chunk_samples"):
        f_score(points, points, 0.005, chunk_samples=0)


@pytest.mark.slow
def test_freihand_sized_evaluation_runs(rng):
    """4,000 samples x 778 vertices, like the FreiHAND test set; timing is in benchmarks/."""
    samples = 4000
    gt_joints, gt_verts = hand_like(rng, samples, 21), hand_like(rng, samples, 778)
    pred_joints = similarity_of(gt_joints + rng.normal(scale=0.005, size=gt_joints.shape), rng)
    pred_verts = similarity_of(gt_verts + rng.normal(scale=0.005, size=gt_verts.shape), rng)
    scores = freihand_scores(pred_joints, pred_verts, gt_joints, gt_verts)
    assert all(np.isfinite(value) for value in scores.values())
    assert 5 < scores["pa_mpvpe_mm"] < 12 and scores["mpvpe_mm"] > scores["pa_mpvpe_mm"]
    assert 0 < scores["f5"] < scores["f15"] <= 1
    # Spot-check the aligned F@5 of a few samples against brute force.
    aligned = align_similarity(torch.from_numpy(pred_verts[::800]), torch.from_numpy(gt_verts[::800])).numpy()
    spot = f_score(aligned, gt_verts[::800], 0.005)
    expected = [reference_fscore(g, p, 0.005)[0] for g, p in zip(gt_verts[::800], aligned)]
    np.testing.assert_array_equal(spot.fscore, expected)
