"""Training losses: perfect predictions, label masks, visibility, uncertainty, gate, warmup, config."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

from manolayer.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from manolayer.sampler import sample_poses
from meshrec.data.sample import HandBatch, collate_hand_samples, make_hand_sample
from meshrec.errors import MeshrecError
from meshrec.geometry.camera import default_intrinsics, project_points
from meshrec import losses as losses_module
from meshrec.losses import (
    TERM_NAMES,
    HandPrior,
    LossConfig,
    closeness_loss,
    default_hand_prior,
    edges_loss,
    face_normals,
    gate_loss,
    gate_targets,
    hand_losses,
    joints2d_loss,
    joints3d_loss,
    keypoint_consistency_loss,
    keypoint_depth_loss,
    keypoints2d_loss,
    laplacian_loss,
    mano_pose_loss,
    mano_shape_loss,
    masked_mean,
    mesh_edges,
    normals_loss,
    pose_prior_loss,
    root_loss,
    uncertainty_loss,
    uncertainty_nll,
    uniform_laplacian,
    unmirror_rotations,
    vertices_loss,
)
from meshrec.models.backbone import BackboneConfig
from meshrec.models.reconstructor import HandMeshReconstructor, ModelConfig, Prediction
from meshrec.models.refinement import GateConfig

SIZE = 64
SUPERVISED = (
    "vertices", "joints3d", "root", "joints2d", "normals", "edges", "mano_pose", "mano_shape",
    "laplacian", "closeness", "keypoints2d", "keypoint_depth", "keypoint_consistency",
)  # fmt: skip
ALL_LABELS = ("mesh", "joints3d", "joints2d", "mano")
MIRROR = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))


def small_config(**changes) -> ModelConfig:
    config = ModelConfig(image_size=SIZE, backbone=BackboneConfig(widths=(8, 16, 24, 32)), gate=GateConfig(max_passes=2))
    return dataclasses.replace(config, **changes)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """The tiny models here run fastest on one thread: on a shared 2-core CPU, two OpenMP
    threads made the 12-step training test 5-15x slower (3 s vs 16-60 s)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hierarchy"))


@pytest.fixture(scope="module")
def model(cache_dir) -> HandMeshReconstructor:
    torch.manual_seed(0)
    return HandMeshReconstructor(small_config(), hierarchy_cache_dir=cache_dir)


def losses(model, prediction, batch, config: LossConfig | None = None, step: int = 10**6, **kwargs):
    return hand_losses(
        prediction, batch, config or LossConfig(), step=step, joint_regressor=model.joint_regressor,
        mesh_levels=model.mesh_levels, faces=model.faces, **kwargs,
    )


def inputs(batch: int, seed: int = 1):
    generator = torch.Generator().manual_seed(seed)
    return torch.rand(batch, 3, SIZE, SIZE, generator=generator), default_intrinsics(SIZE, batch=batch)


def make_batch(images, K, labels, sides, *, vertices, joints3d, mano_pose=None, betas=None, visible=None, masks=None) -> HandBatch:
    """A HandBatch whose sample i has the label kinds ``labels[i]`` (subset of ALL_LABELS + 'mask')."""
    joints2d = project_points(joints3d, K)
    samples = []
    for i, kinds in enumerate(labels):
        samples.append(make_hand_sample(
            images[i], K[i], side=int(sides[i]), index=i,
            vertices=vertices[i] if "mesh" in kinds else None,
            joints3d=joints3d[i] if "joints3d" in kinds else None,
            joints2d=joints2d[i] if "joints2d" in kinds else None,
            joints2d_visible=None if visible is None or "joints2d" not in kinds else visible[i],
            mano_pose=mano_pose[i] if "mano" in kinds else None,
            mano_betas=betas[i] if "mano" in kinds else None,
            mask=masks[i] if masks is not None and "mask" in kinds else None,
        ))  # fmt: skip
    return collate_hand_samples(samples)


_RAW_PREDICTIONS: dict[tuple, Prediction] = {}


def perfect_case(model, sides=(0, 1, 0), labels=None):
    """A hand-made Prediction whose every stage is one plausible mesh, and labels equal to it."""
    images, K = inputs(len(sides))
    key = (id(model), tuple(sides))
    if key not in _RAW_PREDICTIONS:  # one forward per sides pattern keeps the tests fast
        model.eval()
        with torch.no_grad():
            _RAW_PREDICTIONS[key] = model(images, K, side=list(sides), exit_threshold=1.0)  # 1.0: every pass runs
    raw = _RAW_PREDICTIONS[key]
    mesh = raw.global_vertices
    joints = model.joint_regressor @ mesh
    pixels = project_points(joints, K)
    head = raw.keypoint_head
    groups = head.group_joints2d.shape[1]
    head = dataclasses.replace(
        head, joints2d=pixels, depth=joints[..., 2] + 0.3, group_joints2d=pixels[:, None].expand(-1, groups, -1, -1),
        group_depth=joints[:, None, :, 2].expand(-1, groups, -1) - 0.1,
    )
    prediction = dataclasses.replace(
        raw, vertices=mesh, joints=joints, joints2d=pixels, level_vertices=model.mesh_levels(mesh),
        pass_vertices=[mesh] * len(raw.pass_vertices), keypoints2d=head.joints2d, keypoint_depth=head.depth, keypoint_head=head,
    )
    mano_pose = matrix_to_axis_angle(raw.global_rotations).reshape(len(sides), 48)
    batch = make_batch(
        images, K, labels or [ALL_LABELS] * len(sides), sides, vertices=mesh, joints3d=joints, mano_pose=mano_pose, betas=raw.betas,
    )
    return prediction, batch


LABEL_FIELDS = {"mesh": ("vertices",), "joints3d": ("joints3d",), "joints2d": ("joints2d",), "mano": ("mano_pose", "mano_betas")}


def replace_rows(batch: HandBatch, row: int, generator: torch.Generator, kinds=(*LABEL_FIELDS, "mask")) -> HandBatch:
    """The batch with sample ``row``'s label values of ``kinds`` (not their masks) replaced by noise."""
    changed = {}
    for name in [n for kind in kinds for n in LABEL_FIELDS.get(kind, (kind,))]:
        value = getattr(batch, name).clone()
        value[row] = torch.rand(value[row].shape, generator=generator) * 0.5
        changed[name] = value
    return dataclasses.replace(batch, **changed)


# ---------------------------------------------------------------------------- supervised terms


def test_perfect_prediction_has_zero_supervised_terms(model):
    prediction, batch = perfect_case(model)
    out = losses(model, prediction, batch)
    assert set(out.terms) == set(TERM_NAMES) - {"silhouette"}
    for name in SUPERVISED:
        assert abs(float(out.terms[name])) < 1e-5, (name, float(out.terms[name]))
    assert float(out.parts["vertices/level_3"]) < 1e-6  # coarse levels compare with the down-sampled label
    assert torch.isfinite(out.total) and out.total.ndim == 0
    assert torch.allclose(out.total, sum(out.terms.values()))


def test_an_unlabelled_sample_s_labels_change_nothing(model):
    labels = [ALL_LABELS, (), ALL_LABELS]
    prediction, batch = perfect_case(model, labels=labels)
    prediction = dataclasses.replace(prediction, pass_vertices=[v + 0.003 * k for k, v in enumerate(prediction.pass_vertices, 1)])
    config = LossConfig()
    before = losses(model, prediction, batch, config)
    after = losses(model, prediction, replace_rows(batch, 1, torch.Generator().manual_seed(0)), config)
    for name in before.terms:
        assert torch.equal(before.terms[name], after.terms[name]), name
    # and each mask on its own: sample 0 has everything, sample 2 loses one kind at a time
    for kind in ALL_LABELS:
        partial = [ALL_LABELS, ALL_LABELS, tuple(k for k in ALL_LABELS if k != kind)]
        prediction, batch = perfect_case(model, labels=partial)
        reference = losses(model, prediction, batch, config)
        noisy = losses(model, prediction, replace_rows(batch, 2, torch.Generator().manual_seed(1), [kind]), config)
        for name in reference.terms:
            assert torch.equal(reference.terms[name], noisy.terms[name]), (kind, name)


def test_a_wrong_label_is_seen_by_its_terms(model):
    prediction, batch = perfect_case(model)
    moved = dataclasses.replace(batch, vertices=batch.vertices + 0.01, joints3d=batch.joints3d + 0.01)
    out = losses(model, prediction, moved)
    stages = len(prediction.stage_vertices())
    # a 1 cm shift: the root sees 3 cm of L1 per stage; the shapes are unchanged
    assert float(out.terms["root"]) == pytest.approx(LossConfig().root * 0.03 * stages, rel=1e-4)
    assert float(out.parts["vertices/global"]) < 1e-6  # centred: translation is the root's job
    assert float(out.terms["joints3d"]) < 1e-6  # root-relative: a shift is no error
    assert float(out.terms["normals"]) < 1e-6 and float(out.terms["edges"]) < 1e-6  # shape unchanged
    # a 10 % larger hand: every centred vertex is off by a tenth of its distance to the centroid
    centroid = batch.vertices.mean(1, keepdim=True)
    larger = dataclasses.replace(batch, vertices=centroid + 1.1 * (batch.vertices - centroid))
    expected = 0.1 * (prediction.global_vertices - prediction.global_vertices.mean(1, keepdim=True)).abs().sum(-1).mean()
    assert float(losses(model, prediction, larger).parts["vertices/global"]) == pytest.approx(float(expected), rel=1e-3)


def test_labels_absent_from_the_batch_give_exact_zeros_and_finite_gradients(model):
    model.train()
    images, K = inputs(2, seed=3)
    prediction = model(images, K, side=[0, 1])
    with torch.no_grad():
        joints = prediction.joints + 0.005
    batch = make_batch(images, K, [("joints2d",), ("joints2d",)], [0, 1], vertices=None, joints3d=joints)
    assert batch.vertices.shape == (2, 0, 3)
    out = losses(model, prediction, batch)
    absent = ("vertices", "normals", "edges", "joints3d", "root", "mano_pose", "mano_shape", "uncertainty", "gate", "keypoint_depth")
    for name in absent:
        assert float(out.terms[name].detach()) == 0.0 and out.terms[name].requires_grad, name
    assert float(out.terms["joints2d"].detach()) > 0
    model.zero_grad()
    out.total.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)


def test_mixed_batch_trains_the_backbone(model):
    model.train()
    images, K = inputs(4, seed=4)
    prediction = model(images, K, side=[0, 1, 0, 1])
    with torch.no_grad():
        mesh = prediction.vertices + 0.004
        joints = model.joint_regressor @ mesh
        pose = matrix_to_axis_angle(prediction.global_rotations).reshape(4, 48)
    labels = [ALL_LABELS, ("joints2d",), ("joints2d",), ALL_LABELS]
    batch = make_batch(
        images, K, labels, [0, 1, 0, 1], vertices=mesh, joints3d=joints, mano_pose=pose, betas=torch.zeros(4, 10)
    )
    out = losses(model, prediction, batch)
    assert torch.isfinite(out.total) and all(torch.isfinite(v) for v in out.terms.values())
    model.zero_grad()
    out.total.backward()
    backbone = [p.grad for p in model.backbone.parameters() if p.grad is not None]
    assert backbone and all(torch.isfinite(g).all() for g in backbone)
    assert sum(float(g.abs().sum()) for g in backbone) > 0


def test_joints2d_is_visibility_weighted_and_resolution_free(model):
    visible = torch.ones(3, 21, dtype=torch.bool)
    visible[0, 5] = False
    images, K = inputs(3)
    prediction, _ = perfect_case(model)
    joints = model.joint_regressor @ prediction.global_vertices
    batch = make_batch(images, K, [("joints2d",)] * 3, [0, 1, 0], vertices=None, joints3d=joints, visible=visible)
    pixels = batch.joints2d.clone()
    pixels[0, 5] += 40.0  # invisible: ignored
    pixels[1, 2, 0] += 6.0  # visible: 6 px in u
    out = losses(model, prediction, dataclasses.replace(batch, joints2d=pixels))
    expected = 6.0 / SIZE / int(visible.sum())  # mean over the batch's visible joints
    assert float(out.parts["joints2d/global"]) == pytest.approx(expected, rel=1e-4)
    weight = LossConfig().joints2d
    assert float(out.terms["joints2d"]) == pytest.approx(weight * expected * len(prediction.stage_vertices()), rel=1e-4)
    # the head's 2D keypoints are weighted the same way
    assert float(out.parts["keypoints2d/final"]) == pytest.approx(expected, rel=1e-4)


# ---------------------------------------------------------------------------- priors and sides


def test_left_rotations_are_unmirrored_for_the_priors(model):
    prediction, batch = perfect_case(model, sides=(0, 1))
    generator = torch.Generator().manual_seed(5)
    right = axis_angle_to_matrix(torch.randn(16, 3, generator=generator) * 0.8)
    rotations = torch.stack([right, MIRROR @ right @ MIRROR])
    assert torch.allclose(unmirror_rotations(rotations, torch.tensor([0, 1]))[1], right, atol=1e-6)
    config = LossConfig(**{name: 0.0 for name in TERM_NAMES if name not in ("pose_prior", "joint_limits")})
    values = []
    for row in (0, 1):
        one = dataclasses.replace(
            prediction,
            **{name: getattr(prediction, name)[row : row + 1] for name in ("vertices", "joints", "K", "global_vertices", "betas")},
            global_rotations=rotations[row : row + 1], side=torch.tensor([row]), level_vertices=[], pass_vertices=[],
            pass_log_variance=[], pass_exit_logit=[], keypoint_head=None,
        )
        sample = batch.sample(row)
        values.append(losses(model, one, collate_hand_samples([sample]), config).terms)
    assert float(values[0]["joint_limits"]) > 0
    for name in ("pose_prior", "joint_limits"):
        assert float(values[0][name]) == pytest.approx(float(values[1][name]), rel=1e-5)


def test_poses_within_the_limits_cost_nothing_and_the_mean_pose_has_no_prior_cost(model):
    prior = HandPrior.from_model(model.hand_model)
    hand = axis_angle_to_matrix(sample_poses(4, seed=0, axes=prior.axes).view(4, 15, 3))
    rotations = torch.cat([torch.eye(3).expand(4, 1, 3, 3), hand], dim=1)
    prediction, batch = perfect_case(model, sides=(0, 0, 0, 0))
    config = LossConfig(**{name: 0.0 for name in TERM_NAMES if name not in ("pose_prior", "joint_limits")})
    out = losses(model, dataclasses.replace(prediction, global_rotations=rotations), batch, config, prior=prior)
    assert float(out.terms["joint_limits"]) < 1e-8 and float(out.terms["pose_prior"]) > 0
    mean = torch.as_tensor(prior.mean_rotations, dtype=torch.float32)
    at_mean = torch.cat([torch.eye(3).expand(4, 1, 3, 3), mean.expand(4, 15, 3, 3)], dim=1)
    out = losses(model, dataclasses.replace(prediction, global_rotations=at_mean), batch, config, prior=prior)
    assert float(out.terms["pose_prior"]) < 1e-10
    assert default_hand_prior() is default_hand_prior()


# ---------------------------------------------------------------------------- uncertainty and gate


@pytest.mark.parametrize(("distribution", "best_variance_factor"), [("gaussian", 1.0), ("laplace", 2.0)])
def test_uncertainty_nll_is_minimal_at_the_right_variance(distribution, best_variance_factor):
    error = torch.tensor([0.002, 0.01, 0.03], dtype=torch.float64)
    best = torch.log(best_variance_factor * error.square()).requires_grad_()
    (gradient,) = torch.autograd.grad(uncertainty_nll(error, best, distribution).sum(), best)
    assert torch.allclose(gradient, torch.zeros_like(gradient), atol=1e-12)
    for shift in (-0.5, 0.5):
        assert (uncertainty_nll(error, best + shift, distribution) > uncertainty_nll(error, best, distribution)).all()
    with pytest.raises(MeshrecError, match="gaussian"):
        uncertainty_nll(error, best, "cauchy")


def test_uncertainty_trains_the_variance_only(model):
    prediction, batch = perfect_case(model)
    passes = [(v + 0.002 * k).requires_grad_() for k, v in enumerate(prediction.pass_vertices, 1)]
    log_variance = [torch.full((3, 21), -10.0, requires_grad=True) for _ in passes]
    prediction = dataclasses.replace(prediction, pass_vertices=passes, pass_log_variance=log_variance)
    only = {name: 0.0 for name in TERM_NAMES if name != "uncertainty"}
    gaussian = losses(model, prediction, batch, LossConfig(**only, uncertainty_distribution="gaussian"))
    laplace = losses(model, prediction, batch, LossConfig(**only))
    assert float(gaussian.terms["uncertainty"].detach()) != pytest.approx(float(laplace.terms["uncertainty"].detach()))
    gaussian.total.backward()
    assert all(v.grad is None for v in passes)
    assert all(g.grad is not None and g.grad[:, 1:].abs().sum() > 0 and (g.grad[:, 0] == 0).all() for g in log_variance)


def test_gate_targets_on_a_constructed_case():
    errors = [torch.tensor([0.010, 0.010]), torch.tensor([0.0095, 0.004]), torch.tensor([0.0045, 0.0039])]
    targets = gate_targets(errors, epsilon=0.001)
    # sample 0: 0.5 mm (exit), then 5 mm (stay), last pass exits; sample 1: 6 mm, 0.1 mm
    assert [t.tolist() for t in targets] == [[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]
    assert gate_targets([torch.tensor([0.02])], 0.001)[0].tolist() == [1.0]


def test_gate_loss_follows_the_targets(model):
    # sample 0 has a mesh, sample 1 3D joints only, sample 2 neither (no gate loss)
    labels = [ALL_LABELS, ("joints3d",), ("joints2d",)]
    prediction, batch = perfect_case(model, labels=labels)
    mesh = prediction.global_vertices
    shifts = [0.010, 0.0095, 0.003]  # improvements 0.5 mm (exit), 6.5 mm (stay), last (exit)
    passes = [mesh + torch.tensor([0.0, 0.0, s]) for s in shifts]
    right = [20.0, -20.0, 20.0]  # logits that agree with the targets
    logits = [torch.tensor([sign, sign, -sign]) for sign in right]  # sample 2 disagrees: must not count
    prediction = dataclasses.replace(
        prediction, pass_vertices=passes, pass_exit_logit=logits, pass_log_variance=[torch.zeros(3, 21)] * 3,
    )
    only = {name: 0.0 for name in TERM_NAMES if name != "gate"}
    out = losses(model, prediction, batch, LossConfig(**only, gate=1.0))
    assert float(out.terms["gate"]) < 1e-6
    wrong = dataclasses.replace(prediction, pass_exit_logit=[-t for t in logits])
    assert float(losses(model, wrong, batch, LossConfig(**only, gate=1.0)).terms["gate"]) == pytest.approx(60.0, rel=1e-3)


# ---------------------------------------------------------------------------- structure and geometry


def test_terms_of_switched_off_parts_are_absent(model):
    prediction, batch = perfect_case(model)
    bare = dataclasses.replace(
        prediction, level_vertices=[], pass_vertices=[], pass_log_variance=[], pass_exit_logit=[], keypoint_head=None,
        keypoints2d=None, keypoint_depth=None,
    )
    out = losses(model, bare, batch, LossConfig(normals=0.0))
    absent = {
        "uncertainty", "gate", "keypoints2d", "keypoint_depth", "keypoint_consistency", "laplacian", "closeness", "normals", "silhouette",
    }  # fmt: skip
    assert set(out.terms) == set(TERM_NAMES) - absent


def test_laplacian_edges_and_normals_of_a_tetrahedron():
    faces = torch.tensor([[0, 2, 1], [0, 1, 3], [1, 2, 3], [0, 3, 2]])
    vertices = torch.tensor([[[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1]]], dtype=torch.float64)
    laplacian = uniform_laplacian(vertices, faces)
    assert torch.allclose(laplacian[0, 0], vertices[0, 0] - vertices[0, 1:].mean(0))
    assert mesh_edges(faces).tolist() == [[0, 1], [0, 2], [0, 3], [1, 2], [1, 3], [2, 3]]
    assert mesh_edges(faces) is mesh_edges(faces)  # built once per faces tensor
    normals = face_normals(vertices, faces)
    assert torch.allclose(normals[0, 0], torch.tensor([0.0, 0, -1], dtype=torch.float64))  # outward
    assert torch.allclose(normals.norm(dim=-1), torch.ones(1, 4, dtype=torch.float64))


def test_masked_mean_of_nothing_is_zero_with_a_gradient():
    values = torch.rand(3, requires_grad=True)
    mean = masked_mean(values, torch.zeros(3, dtype=torch.bool))
    mean.backward()
    assert float(mean.detach()) == 0.0 and torch.equal(values.grad, torch.zeros(3))
    assert float(masked_mean(torch.tensor([1.0, 2.0, 9.0]), torch.tensor([True, True, False]))) == 1.5


def convert(prediction: Prediction, **to) -> Prediction:
    """A copy of ``prediction`` with every tensor moved / floating tensor cast by ``Tensor.to(**to)``."""

    def move(value):
        if isinstance(value, torch.Tensor):
            return value.to(**to) if value.is_floating_point() else value.to(device=to.get("device"))
        if isinstance(value, list):
            return [move(v) for v in value]
        return value

    head = prediction.keypoint_head
    head = dataclasses.replace(head, **{f.name: move(getattr(head, f.name)) for f in dataclasses.fields(head)})
    fields = {f.name: move(getattr(prediction, f.name)) for f in dataclasses.fields(Prediction) if f.name != "keypoint_head"}
    return Prediction(**fields, keypoint_head=head)


def test_float64_predictions_give_float64_losses(model):
    prediction, batch = perfect_case(model)
    out = losses(model, convert(prediction, dtype=torch.float64), batch)
    assert out.total.dtype == torch.float64 and all(v.dtype == torch.float64 for v in out.terms.values())


def test_runs_on_the_device(model, device):
    prediction, batch = perfect_case(model)
    prediction = convert(prediction, device=device)
    moved = dataclasses.replace(batch.to(device), vertices=batch.vertices.to(device) + 0.01)
    out = hand_losses(
        prediction, moved, LossConfig(), step=5, joint_regressor=model.joint_regressor.to(device),
        mesh_levels=lambda v: [level.to(device) for level in model.mesh_levels(v.cpu())], faces=model.faces.to(device),
    )
    assert out.total.device.type == device.type and all(v.device.type == device.type for v in out.terms.values())
    assert torch.isfinite(out.total) and float(out.terms["vertices"]) > 0


def test_silhouette_is_zero_without_masks_and_trains_with_one(model):
    prediction, batch = perfect_case(model)
    only = {name: 0.0 for name in TERM_NAMES if name != "silhouette"}
    config = LossConfig(**only, silhouette=1.0)
    assert float(losses(model, prediction, batch, config).terms["silhouette"]) == 0.0
    pytest.importorskip("pytorch3d")
    masks = torch.zeros(3, 1, SIZE, SIZE)
    masks[:, :, 16:48, 16:48] = 1.0
    images, K = inputs(3)
    joints = model.joint_regressor @ prediction.global_vertices
    labelled = make_batch(images, K, [("mask",), (), ()], [0, 1, 0], vertices=None, joints3d=joints, masks=masks)
    vertices = prediction.vertices.clone().requires_grad_()
    out = losses(model, dataclasses.replace(prediction, vertices=vertices), labelled, config)
    out.total.backward()
    assert 0 < float(out.terms["silhouette"].detach()) < 1
    assert vertices.grad[0].abs().sum() > 0 and vertices.grad[1:].abs().sum() == 0


# ---------------------------------------------------------------------------- term functions

MASKED_TERMS = (
    "vertices", "normals", "edges", "joints3d", "root", "joints2d", "mano_pose", "mano_shape", "laplacian", "closeness",
    "uncertainty", "gate", "keypoints2d", "keypoint_depth",
)  # fmt: skip


def test_every_term_has_its_function():
    for name in TERM_NAMES:
        assert callable(getattr(losses_module, f"{name}_loss")), name
        assert f"{name}_loss" in losses_module.__all__


def masked_term(model, term: str):
    """``(leaf, loss)``: the prediction tensor ``(B, ...)`` (B = 3, sample first) that ``term``
    trains, and ``loss(leaf, mask) -> scalar``, the term summed over its stages against wrong
    labels, ``mask`` ``(B,)`` bool the samples that have the label."""
    prediction, _ = perfect_case(model)
    generator = torch.Generator().manual_seed(11)

    def noisy(tensor, scale):
        return tensor + scale * torch.randn(tensor.shape, generator=generator)

    mesh, faces, size = prediction.global_vertices, model.faces, prediction.image_size
    label_mesh = noisy(mesh, 0.004)
    label_joints = noisy(model.joint_regressor @ mesh, 0.004)
    label_pixels = project_points(label_joints, prediction.K)
    groups = prediction.keypoint_head.group_joints2d.shape[1]
    assignment = torch.softmax(torch.randn(21, groups, generator=generator), dim=-1)
    if term in ("vertices", "normals", "edges", "laplacian", "closeness"):
        leaf = noisy(mesh, 0.003)
    elif term in ("joints3d", "root"):
        leaf = noisy(label_joints, 0.01)
    elif term in ("joints2d", "keypoints2d"):
        leaf = noisy(label_pixels, 2.0)
    elif term == "mano_pose":
        leaf = axis_angle_to_matrix(torch.randn(3, 16, 3, generator=generator) * 0.5)
    elif term == "mano_shape":
        leaf = torch.randn(3, 10, generator=generator)
    elif term == "uncertainty":
        leaf = torch.randn(3, 21, generator=generator) - 9.0
    elif term == "gate":
        leaf = torch.randn(3, generator=generator) * 3.0
    else:  # keypoint_depth
        leaf = noisy(label_joints[..., 2], 0.01)
    leaf = leaf.detach().requires_grad_()

    def total(per_stage):
        return sum(per_stage.values())

    def loss(values, mask):
        if term == "vertices":
            return total(vertices_loss({"a": values, "b": values * 1.01}, label_mesh, mask))
        if term == "normals":
            return total(normals_loss({"a": values}, label_mesh, faces, mask))
        if term == "edges":
            return total(edges_loss({"a": values}, label_mesh, mesh_edges(faces, mesh.shape[1]), mask))
        if term == "joints3d":
            return total(joints3d_loss({"a": values}, label_joints, mask))
        if term == "root":
            return total(root_loss({"a": values}, label_joints, mask))
        if term == "joints2d":
            return total(joints2d_loss({"a": values}, label_pixels, mask[:, None].expand(-1, 21), size))
        if term == "mano_pose":
            return mano_pose_loss(values, torch.randn(3, 48, generator=torch.Generator().manual_seed(2)), mask)
        if term == "mano_shape":
            return mano_shape_loss(values, torch.zeros(3, 10), mask)
        if term == "laplacian":
            return total(laplacian_loss({"a": values}, label_mesh, faces, mask))
        if term == "closeness":
            return total(closeness_loss({"a": values}, label_mesh, mask))
        if term == "uncertainty":
            joints = {"pass_1": model.joint_regressor @ mesh}
            return total(uncertainty_loss(joints, {"pass_1": values}, label_joints, mask, "laplace"))
        if term == "gate":
            passes = {"pass_1": label_mesh + 0.01, "pass_2": label_mesh + 0.0102}
            joints = {name: model.joint_regressor @ vertices for name, vertices in passes.items()}
            logits = {"pass_1": values, "pass_2": -values}
            return total(gate_loss(passes, joints, logits, label_mesh, label_joints, mask, mask, 0.001))
        if term == "keypoints2d":
            group_pixels = values[:, None].expand(-1, groups, -1, -1) + 1.0
            return total(keypoints2d_loss(values, group_pixels, assignment, label_pixels, mask[:, None].expand(-1, 21), size))
        group_depth = values[:, None].expand(-1, groups, -1) * 1.1
        return total(keypoint_depth_loss(values, group_depth, assignment, label_joints, mask))

    return leaf, loss


@pytest.mark.parametrize("term", MASKED_TERMS)
def test_a_term_without_labelled_samples_is_zero_with_zero_gradients(model, term):
    leaf, loss = masked_term(model, term)
    value = loss(leaf, torch.zeros(3, dtype=torch.bool))
    assert float(value.detach()) == 0.0 and value.requires_grad
    (gradient,) = torch.autograd.grad(value, leaf)
    assert torch.equal(gradient, torch.zeros_like(gradient))


@pytest.mark.parametrize("term", MASKED_TERMS)
def test_a_term_trains_only_its_labelled_samples(model, term):
    leaf, loss = masked_term(model, term)
    value = loss(leaf, torch.tensor([True, False, True]))
    assert torch.isfinite(value) and float(value.detach()) != 0.0
    (gradient,) = torch.autograd.grad(value, leaf)
    assert torch.isfinite(gradient).all()
    assert (gradient[1] == 0).all()
    assert gradient[0].abs().sum() > 0 and gradient[2].abs().sum() > 0


def test_the_refinement_regularisers_shrink_the_displacement_and_leave_the_parametric_mesh_alone(model):
    """A refined mesh is the parametric mesh plus the refinement's displacement: the terms'
    gradient reaches the displacement, and through the refined mesh's base it cancels (a detached
    base pushed the parametric stage against the refinement's corrections)."""
    prediction, _ = perfect_case(model)
    base = prediction.global_vertices.clone().requires_grad_()
    displacement = (0.002 * torch.randn(base.shape)).requires_grad_()
    mask = torch.ones(3, dtype=torch.bool)
    stages = {"pass_1": base + displacement}
    for loss in (lambda: laplacian_loss(stages, base, model.faces, mask), lambda: closeness_loss(stages, base, mask)):
        base_gradient, displacement_gradient = torch.autograd.grad(loss()["pass_1"], (base, displacement))
        assert (base_gradient == 0).all() and displacement_gradient.abs().sum() > 0


def test_keypoint_consistency_moves_the_mesh_joints_not_the_head(model):
    prediction, _ = perfect_case(model)
    pixels = (prediction.joints2d + 3.0).requires_grad_()
    guide = prediction.joints2d.clone().requires_grad_()
    value = keypoint_consistency_loss({"global": pixels}, guide, prediction.image_size)["global"]
    assert float(value.detach()) == pytest.approx(3.0 / SIZE * 2, rel=1e-5)  # 3 px in u and in v at 64 x 64
    value.backward()
    assert guide.grad is None and pixels.grad.abs().sum() > 0


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda m: vertices_loss({"global": torch.zeros(3, 5, 3)}, torch.zeros(3, 5, 3), torch.ones(2, dtype=torch.bool)),
         r"vertices_loss: mask must have shape \(3,\), got \(2,\)"),
        (lambda m: normals_loss({"global": torch.zeros(3, 5, 3)}, torch.zeros(3, 4, 3), m.faces, torch.ones(3, dtype=torch.bool)),
         r"normals_loss: stages\['global'\] must have shape \(3, 4, 3\), got \(3, 5, 3\)"),
        (lambda m: joints2d_loss({"global": torch.zeros(3, 21, 2)}, torch.zeros(3, 21, 2), torch.ones(3) > 0, (8, 8)),
         r"joints2d_loss: visible must have shape \(3, 21\), got \(3,\)"),
        (lambda m: mano_pose_loss(torch.eye(3).expand(3, 16, 3, 3), torch.zeros(3, 45), torch.ones(3, dtype=torch.bool)),
         r"mano_pose_loss: label_pose must have shape \(3, 48\), got \(3, 45\)"),
        (lambda m: pose_prior_loss(torch.zeros(3, 16, 9), torch.zeros(3, dtype=torch.long)),
         r"pose_prior_loss: rotations must have shape \(B, 16, 3, 3\), got \(3, 16, 9\)"),
        (lambda m: uncertainty_loss({"pass_1": torch.zeros(3, 21, 3)}, {"pass_1": torch.zeros(3, 20)}, torch.zeros(3, 21, 3),
                                    torch.ones(3, dtype=torch.bool), "laplace"),
         r"uncertainty_loss: log_variance\['pass_1'\] must have shape \(3, 21\), got \(3, 20\)"),
    ],
)  # fmt: skip
def test_term_functions_name_wrong_shapes(model, call, message):
    with pytest.raises(MeshrecError, match=message):
        call(model)


# ---------------------------------------------------------------------------- config and schedule


def test_warmup_ramps_a_weight_linearly(model):
    prediction, batch = perfect_case(model)
    moved = dataclasses.replace(batch, vertices=batch.vertices + 0.01)
    config = LossConfig(warmup={"vertices": 100})
    at = {step: float(losses(model, prediction, moved, config, step=step).terms["vertices"]) for step in (0, 50, 100, 400)}
    assert at[0] == 0.0 and at[50] == pytest.approx(at[100] / 2) and at[400] == pytest.approx(at[100]) and at[100] > 0
    stretched = dataclasses.replace(batch, vertices=batch.vertices * 1.05)  # edges 5 % longer
    edges = [float(losses(model, prediction, stretched, config, step=step).terms["edges"]) for step in (0, 400)]
    assert edges[0] > 0 and edges[0] == edges[1]  # a term without a warm-up has its full weight from step 0


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"warmup": {"vertex": 10}}, "valid terms: vertices, joints3d"),
        ({"warmup": {"vertices": -1}}, "warmup.vertices"),
        ({"edges": -0.1}, "loss.edges must be a finite number >= 0"),
        ({"normals": math.nan}, "loss.normals"),
        ({"root": True}, "loss.root"),
        ({"uncertainty_distribution": "cauchy"}, "gaussian"),
        ({"gate_epsilon_mm": -1.0}, "gate_epsilon_mm"),
    ],
)
def test_config_errors(changes, message):
    with pytest.raises(MeshrecError, match=message):
        LossConfig(**changes)


def test_bad_inputs_are_named(model):
    prediction, batch = perfect_case(model)
    with pytest.raises(MeshrecError, match=r"joint_regressor must have shape \(21, "):
        hand_losses(prediction, batch, LossConfig(), step=0, joint_regressor=model.joint_regressor[:, :10],
                    mesh_levels=model.mesh_levels, faces=model.faces)  # fmt: skip
    short = dataclasses.replace(batch, vertices=batch.vertices[:, :100])
    with pytest.raises(MeshrecError, match="label meshes have 100 vertices"):
        losses(model, prediction, short)


# ---------------------------------------------------------------------------- overfit sanity


def test_a_few_adam_steps_on_one_batch_lower_the_loss(cache_dir):
    torch.manual_seed(0)
    model = HandMeshReconstructor(small_config(), hierarchy_cache_dir=cache_dir)
    images, K = inputs(2, seed=7)
    with torch.no_grad():
        start = model.eval()(images, K, side=[0, 1], exit_threshold=1.0)
        mesh = start.global_vertices + torch.tensor([0.01, -0.005, 0.02])
        joints = model.joint_regressor @ mesh
        pose = matrix_to_axis_angle(start.global_rotations).reshape(2, 48)
    batch = make_batch(
        images, K, [ALL_LABELS] * 2, [0, 1], vertices=mesh, joints3d=joints, mano_pose=pose, betas=torch.full((2, 10), 0.5)
    )
    model.train()
    optimiser = torch.optim.Adam(model.parameters(), lr=1e-3)
    totals = []
    for step in range(12):
        out = losses(model, model(images, K, side=batch.side), batch, step=step)
        optimiser.zero_grad()
        out.total.backward()
        optimiser.step()
        totals.append(float(out.total.detach()))
    assert all(math.isfinite(t) for t in totals)
    assert sum(totals[-3:]) / 3 < 0.8 * totals[0], totals
