"""The reconstruction network: shapes, gradients, pixel alignment, the gate, sides, bad input."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from manolayer.io import load_mano
from meshrec.errors import MeshrecError
from meshrec.geometry.camera import default_intrinsics, project_points
from meshrec.models.backbone import BackboneConfig
from meshrec.models.graph import SpiralBlock, pixels_to_grid, retrieve_vertex_features, sample_vertex_features
from meshrec.models.joint_groups import JointGroupsConfig
from meshrec.models.reconstructor import HandMeshReconstructor, ModelConfig, flip_intrinsics
from meshrec.models.refinement import GateConfig
from meshrec.render import gl_available

SIZE = 64  # small crops keep these tests fast; the default is 128


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory):
    return str(tmp_path_factory.mktemp("hierarchy"))


def small_config(**changes) -> ModelConfig:
    config = ModelConfig(image_size=SIZE, backbone=BackboneConfig(widths=(8, 16, 24, 32)), gate=GateConfig(max_passes=3))
    return dataclasses.replace(config, **changes)


@pytest.fixture(scope="module")
def model(cache_dir) -> HandMeshReconstructor:
    torch.manual_seed(0)
    return HandMeshReconstructor(small_config(), hierarchy_cache_dir=cache_dir).eval()


def hand_batch(batch: int = 2, dtype=torch.float32):
    generator = torch.Generator().manual_seed(1)
    images = torch.rand(batch, 3, SIZE, SIZE, generator=generator, dtype=dtype)
    return images, default_intrinsics(SIZE, batch=batch, dtype=dtype)


def test_prediction_shapes_follow_the_inputs(model):
    images, K = hand_batch(3)
    with torch.no_grad():
        prediction = model(images, K)
    V = model.num_vertices
    assert prediction.vertices.shape == (3, V, 3) and prediction.vertices.dtype == torch.float32
    assert prediction.joints.shape == (3, 21, 3) and prediction.joints2d.shape == (3, 21, 2)
    assert prediction.keypoints2d.shape == (3, 21, 2) and prediction.joint_variance.shape == (3, 21)
    assert prediction.global_rotations.shape == (3, 16, 3, 3) and prediction.root.shape == (3, 3)
    assert [v.shape[1] for v in prediction.level_vertices][0] == V
    assert len(prediction.pass_vertices) == prediction.passes_used.max().item() <= 3
    assert list(prediction.stage_vertices())[:2] == ["global", "coarse_to_fine"]
    # the hand is in front of the camera and roughly in the crop
    assert (prediction.vertices[..., 2] > 0.05).all()
    uv = project_points(prediction.vertices, K)
    assert ((uv > -SIZE) & (uv < 2 * SIZE)).float().mean() > 0.9


def test_float64_model_gives_float64_outputs(cache_dir):
    model = HandMeshReconstructor(small_config(), hierarchy_cache_dir=cache_dir).double().eval()
    images, K = hand_batch(1, torch.float64)
    with torch.no_grad():
        prediction = model(images, K)
    assert prediction.vertices.dtype == torch.float64 and prediction.joint_variance.dtype == torch.float64


def test_runs_on_the_device(cache_dir, device):
    model = HandMeshReconstructor(small_config(), hierarchy_cache_dir=cache_dir).to(device).eval()
    images, K = hand_batch(2)
    with torch.no_grad():
        prediction = model(images.to(device), K.to(device), side=["right", "left"])
    assert prediction.vertices.device.type == device.type and prediction.passes_used.device.type == device.type


def test_training_runs_every_pass_and_backpropagates(cache_dir):
    model = HandMeshReconstructor(small_config(), hierarchy_cache_dir=cache_dir).train()
    images, K = hand_batch(2)
    prediction = model(images, K, temperature=0.5)
    assert len(prediction.pass_vertices) == 3 and prediction.passes_used.tolist() == [3, 3]
    loss = prediction.vertices.square().mean() + prediction.keypoints2d.square().mean() + prediction.pass_exit_logit[0].sum()
    loss.backward()
    assert model.backbone.stem[0].weight.grad.abs().sum() > 0
    assert model.refiner.loop_block.spiral1.linear.weight.grad.abs().sum() > 0
    assert model.refiner.loop_heads.exit.weight.grad.abs().sum() > 0


def test_stage_vertices_repeat_the_last_pass_when_every_sample_left_early(model):
    """Validation and evaluation concatenate stages over batches: a batch whose samples all left
    after pass 1 must still give pass_2 ... pass_T (their meshes stay those of pass 1)."""
    images, K = hand_batch(2)
    with torch.no_grad():
        early = model(images, K, exit_threshold=-1.0)  # everyone leaves after pass 1
    assert list(early.stage_vertices()) == ["global", "coarse_to_fine", "pass_1"]
    stages = early.stage_vertices(max_passes=3)
    assert list(stages) == ["global", "coarse_to_fine", "pass_1", "pass_2", "pass_3"]
    assert torch.equal(stages["pass_3"], stages["pass_1"])


def test_gate_threshold_changes_passes_and_counted_compute(model):
    images, K = hand_batch(4)

    def run(threshold):
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            prediction = model(images, K, exit_threshold=threshold)
        return prediction.passes_used, counter.get_total_flops()

    never_passes, never_flops = run(1.0)  # p_exit > 1 never holds
    always_passes, always_flops = run(-1.0)  # p_exit > -1 always holds
    assert never_passes.tolist() == [3] * 4 and always_passes.tolist() == [1] * 4
    one_pass, _ = run(-1.0)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images, K, max_passes=1, exit_threshold=1.0)
    single = counter.get_total_flops()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(images, K, max_passes=2, exit_threshold=1.0)
    per_pass = counter.get_total_flops() - single
    assert per_pass > 0
    assert always_flops == single
    assert never_flops == pytest.approx(single + 2 * per_pass, rel=1e-6)


def test_exited_samples_are_not_computed(model):
    """A sample that left keeps its mesh; the others go on (sub-batch, not masking)."""
    images, K = hand_batch(4)
    with torch.no_grad():
        full = model(images, K, exit_threshold=1.0)
        logits = full.pass_exit_logit[0]
    threshold = float(torch.sigmoid(logits).median())
    with torch.no_grad():
        mixed = model(images, K, exit_threshold=threshold)
    left_early = torch.sigmoid(logits) > threshold
    assert 0 < left_early.sum() < 4
    assert mixed.passes_used[left_early].eq(1).all() and mixed.passes_used[~left_early].ge(2).all()
    torch.testing.assert_close(mixed.vertices[left_early], full.pass_vertices[0][left_early])
    # the others leave where their own gate says, with the mesh the full-depth run had there
    for i in torch.nonzero(~left_early).flatten().tolist():
        passes = int(mixed.passes_used[i])
        later = torch.sigmoid(torch.stack(full.pass_exit_logit)[: passes - 1, i])
        assert bool((later <= threshold).all()) and (passes == 3 or float(torch.sigmoid(full.pass_exit_logit[passes - 1][i])) > threshold)
        torch.testing.assert_close(mixed.vertices[i], full.pass_vertices[passes - 1][i], atol=1e-5, rtol=1e-5)


def test_a_loop_stopped_and_resumed_runs_the_passes_of_one_run(model):
    """``run_loop(stop_after=k)`` then ``run_loop`` from where it stopped (what the stem and the
    gate's passes do) gives one run's passes, exits and pass counts."""
    images, K = hand_batch(4)
    refiner = model.refiner
    with torch.no_grad():
        logits = model(images, K, exit_threshold=1.0).pass_exit_logit[0]
        threshold = float(torch.sigmoid(logits).median())
        stem = model.stem(images, K, torch.zeros(4, dtype=torch.bool), any_left=False)
        whole = dataclasses.replace(stem.refined, pass_vertices=[], pass_log_variance=[], pass_exit_logit=[])
        refiner.run_loop(whole, stem.loop, (SIZE, SIZE), exit_threshold=threshold)
        parts = dataclasses.replace(stem.refined, pass_vertices=[], pass_log_variance=[], pass_exit_logit=[])
        after_first = refiner.run_loop(parts, stem.loop, (SIZE, SIZE), exit_threshold=threshold, stop_after=1)
        assert parts.passes_used.tolist() == [1] * 4  # nobody left: no decision was made yet
        refiner.run_loop(parts, after_first, (SIZE, SIZE), exit_threshold=threshold)
    assert refiner.passes_before_a_decision(exit_threshold=threshold) == 1
    assert refiner.passes_before_a_decision(exit_threshold=1.0) == refiner.passes_before_a_decision(max_passes=3, exit_threshold=2.0) == 3
    assert torch.equal(parts.passes_used, whole.passes_used) and 1 in whole.passes_used.tolist()
    for ours, theirs in zip(
        parts.pass_vertices + parts.pass_log_variance + parts.pass_exit_logit,
        whole.pass_vertices + whole.pass_log_variance + whole.pass_exit_logit,
        strict=True,
    ):
        assert torch.equal(ours, theirs)


def test_a_loop_deeper_than_the_gate_allows_is_refused_before_anything_runs(model):
    """The error, not a tracing warning, at every call of the traced copy (which checks the depth
    before its stem graph, the one place a too-deep loop would otherwise first fail)."""
    images, K = hand_batch(1)
    inference = model.for_inference()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for _ in range(4):
            with pytest.raises(MeshrecError, match="max_passes=4 exceeds the model's gate.max_passes=3"):
                inference(images, K, max_passes=4)


def test_left_hand_is_the_mirrored_right_hand(model):
    images, K = hand_batch(2)
    with torch.no_grad():
        right = model(images, K, side="right")
        left = model(images.flip(-1), flip_intrinsics(K, SIZE), side="left")
    mirror = torch.tensor([-1.0, 1.0, 1.0])
    torch.testing.assert_close(left.vertices, right.vertices * mirror, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(left.joints2d[..., 0], (SIZE - 1) - right.joints2d[..., 0], atol=1e-3, rtol=1e-4)
    torch.testing.assert_close(left.keypoints2d[..., 0], (SIZE - 1) - right.keypoints2d[..., 0], atol=1e-3, rtol=1e-4)
    # left faces are re-wound so normals still point outwards
    assert left.faces_of(0)[0].tolist() == right.faces[0, [0, 2, 1]].tolist()


def test_retrieval_projection_gradcheck():
    generator = torch.Generator().manual_seed(0)
    feature_map = torch.rand(2, 3, 4, 5, dtype=torch.float64, generator=generator, requires_grad=True)
    uv = (torch.rand(2, 6, 2, dtype=torch.float64, generator=generator) * 14 + 0.7).requires_grad_()
    assert torch.autograd.gradcheck(lambda f, p: sample_vertex_features(f, p, (16, 20))[0], (feature_map, uv))
    vertices = torch.tensor([[[0.01, 0.02, 0.5], [-0.03, 0.0, 0.45]]], dtype=torch.float64, requires_grad=True)
    K = default_intrinsics((16, 20), batch=1, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda f, v: retrieve_vertex_features(f, v, K, (16, 20))[0], (feature_map[:1], vertices))


def test_graph_block_gradcheck(model):
    spirals = model.refiner.blocks[-1].spiral1.spirals
    block = SpiralBlock(4, 3, 2, spirals).double()
    inputs = torch.rand(2, spirals.shape[0], 4, dtype=torch.float64, requires_grad=True)
    condition = torch.rand(2, 2, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(block, (inputs, condition))


def test_sampling_reads_the_cell_under_the_pixel():
    """Every stride: a map whose cells hold their own centre pixel returns the sampled pixel."""
    for stride in (1, 4, 8, 32):
        size = 64
        cells = torch.arange(size // stride, dtype=torch.float64) * stride + (stride - 1) / 2.0
        feature_map = torch.stack(torch.meshgrid(cells, cells, indexing="xy"))[None]  # (1, 2, h, w): (u, v)
        uv = torch.tensor([[[20.3, 31.7], [(stride - 1) / 2.0, 40.0]]], dtype=torch.float64)
        sampled, inside = sample_vertex_features(feature_map, uv, (size, size))
        torch.testing.assert_close(sampled, uv) if stride == 1 else None
        assert inside.flatten().tolist() == [1.0, 1.0]
    assert pixels_to_grid(torch.tensor([[[-0.5, 63.5]]]), (64, 64)).tolist() == [[[-1.0, 1.0]]]


@pytest.mark.skipif(not gl_available(), reason="OpenGL (EGL) renderer unavailable")
def test_retrieval_reads_the_pixel_the_renderer_draws_the_vertex_on():
    """Sample the rendered depth map where retrieval projects each vertex: visible vertices
    read their own depth back."""
    from meshrec.render import get_renderer

    hand = load_mano(None)
    vertices = torch.as_tensor(hand.v_template, dtype=torch.float32)
    rotation = torch.tensor([[0.0, -1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])  # fingers up
    vertices = (vertices - vertices.mean(0)) @ rotation.T + torch.tensor([0.0, 0.0, 0.6])
    size = 128
    K = default_intrinsics(size, batch=1)
    rendered = get_renderer("gl").render(vertices[None], hand.faces, K, size)
    depth = torch.as_tensor(rendered.depth)[:, None]  # (1, 1, H, W)
    sampled, inside, uv = retrieve_vertex_features(depth, vertices[None], K, (size, size))
    sampled, z = sampled[0, :, 0], vertices[:, 2]
    # visible: the depth buffer at the vertex's pixel is its own depth (occluded ones read a nearer surface)
    pixel = uv[0].round().long()
    assert ((pixel >= 0) & (pixel < size)).all(), "the whole hand is in the crop"
    nearest = depth[0, 0, pixel[:, 1], pixel[:, 0]]
    visible = (nearest - z).abs() < 1e-3
    assert visible.sum() > 300
    # bilinear reading at sub-pixel positions; the depth gradient over half a pixel is ~1 mm here
    error = (sampled[visible] - z[visible]).abs()
    assert error.median() < 1e-3 and inside[0, visible].all()


@pytest.mark.parametrize(
    "images, K, match",
    [
        (torch.rand(2, 3, 60, 64), None, r"multiples of 32 .*got 60 x 64"),
        (torch.rand(2, 4, 64, 64), None, r"3 RGB channels, got \(2, 4, 64, 64\)"),
        (torch.rand(3, 64, 64), None, r"add a batch dimension"),
        ((torch.rand(2, 3, 64, 64) * 255).to(torch.uint8), None, r"torch.float32 .* got torch.uint8 .*255"),
        (torch.rand(2, 3, 64, 64, dtype=torch.float64), None, r"torch.float32 .* got torch.float64"),
        (torch.full((2, 3, 64, 64), float("nan")), None, r"NaN or Inf"),
        (torch.rand(2, 3, 64, 64), default_intrinsics(64, batch=3), r"K must have shape \(2, 3, 3\) .* got \(3, 3, 3\)"),
        (torch.rand(2, 3, 64, 64), torch.zeros(2, 3, 3), r"positive focal"),
    ],
)
def test_bad_input_is_named(model, images, K, match):
    with pytest.raises(MeshrecError, match=match):
        model(images, K)


def test_bad_side_is_named(model):
    images, K = hand_batch(2)
    with pytest.raises(MeshrecError, match="side has 3 entries for 2 images"):
        model(images, K, side=[0, 1, 0])
    with pytest.raises(MeshrecError, match="'right' or 'left'"):
        model(images, K, side="up")


@pytest.mark.parametrize(
    "changes",
    [
        {"keypoints": JointGroupsConfig(enabled=False)},
        {"keypoints": JointGroupsConfig(groups=1)},
        {"gate": GateConfig(max_passes=0)},
        {"refinement": dataclasses.replace(ModelConfig().refinement, enabled=False)},
        {"global_stage": dataclasses.replace(ModelConfig().global_stage, pose_param="pca")},
        {"refinement": dataclasses.replace(ModelConfig().refinement, finest_level=0)},
        {"refinement": dataclasses.replace(ModelConfig().refinement, finest_level=3)},
        {"gate": GateConfig(max_passes=2, uncertainty_from_evidence=False)},
    ],
    ids=["no-keypoints", "holistic-G1", "no-loop", "global-only", "pca-pose", "full-mesh-blocks", "coarsest-only",
         "sigma-from-features"],
)
def test_every_part_can_be_switched(cache_dir, changes):
    model = HandMeshReconstructor(small_config(**changes), hierarchy_cache_dir=cache_dir).eval()
    images, K = hand_batch(2)
    with torch.no_grad():
        prediction = model(images, K)
    assert prediction.vertices.shape == (2, model.num_vertices, 3) and torch.isfinite(prediction.vertices).all()


def test_starting_weights_load_part_by_part_and_mismatches_are_named(cache_dir, tmp_path, model):
    def same(part, a, b):
        return all(torch.equal(t, getattr(b, part).state_dict()[k]) for k, t in getattr(a, part).state_dict().items())

    whole = tmp_path / "whole.pt"
    torch.save(model.state_dict(), whole)
    loaded = HandMeshReconstructor(small_config(weights=str(whole)), hierarchy_cache_dir=cache_dir)
    assert all(same(part, loaded, model) for part in ("backbone", "global_stage", "keypoint_head", "refiner"))

    bare = tmp_path / "backbone.pt"  # a backbone's own state dict: no part prefix
    torch.save(model.backbone.state_dict(), bare)
    torch.manual_seed(5)
    loaded = HandMeshReconstructor(small_config(weights=str(bare)), hierarchy_cache_dir=cache_dir)
    assert same("backbone", loaded, model) and not same("global_stage", loaded, model)

    other_groups = dataclasses.replace(small_config().keypoints, groups=1)
    with pytest.warns(UserWarning, match="keypoint_head does not fit .*starts from random weights"):
        loaded = HandMeshReconstructor(small_config(weights=str(whole), keypoints=other_groups), hierarchy_cache_dir=cache_dir)
    assert same("backbone", loaded, model) and same("refiner", loaded, model)
    # a design that adds weights to a part (another variance head) loads the rest of that part
    linear_sigma = small_config(gate=dataclasses.replace(small_config().gate, uncertainty_head="linear"))
    torch.save(HandMeshReconstructor(linear_sigma, hierarchy_cache_dir=cache_dir).state_dict(), tmp_path / "linear.pt")
    with pytest.warns(UserWarning, match=r"refiner loaded except 4 weights the file lacks.*loop_heads.variance.0.bias"):
        loaded = HandMeshReconstructor(small_config(weights=str(tmp_path / "linear.pt")), hierarchy_cache_dir=cache_dir)
    reference = torch.load(tmp_path / "linear.pt")
    assert torch.equal(loaded.refiner.loop_block.project.weight, reference["refiner.loop_block.project.weight"])
    with pytest.raises(MeshrecError, match=r"do not fit the configured backbone: wrong shapes"):
        HandMeshReconstructor(small_config(backbone=BackboneConfig(widths=(8, 16, 24, 48)), weights=str(whole)), hierarchy_cache_dir=cache_dir)
    with pytest.raises(MeshrecError, match="not found"):
        HandMeshReconstructor(small_config(weights=str(tmp_path / "missing.pt")), hierarchy_cache_dir=cache_dir)
    torch.save([1, 2], tmp_path / "list.pt")
    with pytest.raises(MeshrecError, match="holds no state_dict"):
        HandMeshReconstructor(small_config(weights=str(tmp_path / "list.pt")), hierarchy_cache_dir=cache_dir)


def test_bundled_model_is_the_whole_default_network(monkeypatch, tmp_path):
    from meshrec.models import pretrained

    shipped = torch.load(pretrained.resolve_weights("synthetic-hands"), weights_only=True)
    assert shipped["meta"]["parts"] == ["backbone", "global_stage", "keypoint_decoder", "keypoint_head", "refiner"]
    assert shipped["meta"]["benchmark"]["runs"]["gate"]["stages"]["final"]["pa_mpvpe_mm"] > 0  # make model records it
    model = HandMeshReconstructor.load()
    assert not model.training and model.config == dataclasses.replace(ModelConfig(), weights=None)
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(tensor, shipped["state_dict"][name].to(tensor.dtype), msg=name)  # stored as float16
    started = HandMeshReconstructor(ModelConfig(weights="synthetic-hands"))  # a training run's start: every part
    for name, tensor in started.state_dict().items():
        torch.testing.assert_close(tensor, model.state_dict()[name], msg=name)
    monkeypatch.setattr(pretrained, "WEIGHTS_DIR", tmp_path)
    with pytest.raises(MeshrecError, match="bundled weights 'synthetic-hands' are missing.*reinstall"):
        HandMeshReconstructor(ModelConfig(weights="synthetic-hands"))


def test_load_reads_checkpoints_and_weights_files_and_refuses_partial_ones(cache_dir, tmp_path, model):
    from meshrec.models.pretrained import save_weights
    from meshrec.config import config_to_dict

    meta = {"model": config_to_dict(model.config)}
    save_weights(tmp_path / "whole.pt", model.state_dict(), meta)
    loaded = HandMeshReconstructor.load(tmp_path / "whole.pt")
    for name, tensor in model.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[name], tensor, msg=name)
    backbone_only = {k: v for k, v in model.state_dict().items() if k.startswith("backbone.")}
    save_weights(tmp_path / "part.pt", backbone_only, meta)
    with pytest.raises(MeshrecError, match="not a whole model.*model.weights"):
        HandMeshReconstructor.load(tmp_path / "part.pt")
    save_weights(tmp_path / "bare.pt", model.state_dict(), {})
    with pytest.raises(MeshrecError, match="records no model settings"):
        HandMeshReconstructor.load(tmp_path / "bare.pt")
    with pytest.raises(MeshrecError, match="not found"):
        HandMeshReconstructor.load(tmp_path / "missing.ckpt")


def test_checkpoints_carry_no_hand_model_data(model):
    """MANO's licence: the model's arrays are non-persistent buffers, never saved."""
    state = model.state_dict()
    sizes = {tuple(t.shape) for t in state.values()}
    V = model.num_vertices
    assert not any(V in shape for shape in sizes)


FIXTURES = Path(__file__).parent / "fixtures" / "models"


def test_refinement_below_its_finest_level_is_the_upsampled_offset(cache_dir):
    """finest_level = 1: the full mesh of every stage is the parametric mesh plus the level-1 offsets
    up-sampled, and the loop moves the level-1 mesh."""
    torch.manual_seed(0)
    model = HandMeshReconstructor(small_config(), hierarchy_cache_dir=cache_dir).eval()
    assert model.config.refinement.finest_level == 1 and isinstance(model.refiner.blocks[0], torch.nn.Identity)
    images, K = hand_batch(2)
    with torch.no_grad():
        prediction = model(images, K, exit_threshold=1.0)
        bases = model.refiner.mesh_levels(prediction.global_vertices)
        upsampled = bases[0] + model.refiner._up(prediction.level_vertices[1] - bases[1], 0)
    torch.testing.assert_close(prediction.level_vertices[0], upsampled)
    assert [v.shape[1] for v in prediction.level_vertices] == [len(v) for v in refiner_levels(model)]
    assert len(prediction.pass_vertices) == 3 and all(v.shape == prediction.vertices.shape for v in prediction.pass_vertices)
    assert not torch.equal(prediction.pass_vertices[0], prediction.level_vertices[0])


def refiner_levels(model):
    from meshrec.geometry.mesh_hierarchy import load_or_build_hierarchy

    config = model.config.refinement
    return load_or_build_hierarchy(
        model.hand_model.v_template, model.hand_model.faces, factors=config.level_factors,
        spiral_length=config.spiral_length, cache_dir=None,
    ).vertices


def test_finest_level_must_name_a_mesh_level():
    from meshrec.models.refinement import RefinementConfig

    with pytest.raises(MeshrecError, match="finest_level must name a mesh level, 0 .* to 3; got 4"):
        RefinementConfig(finest_level=4)


def test_files_written_before_finest_level_load_as_the_network_they_were(tmp_path):
    """A weights file written by meshrec before refinement.finest_level and
    gate.uncertainty_from_evidence existed (tests/fixtures/models, made by the code of 1afbccc)
    records neither: it loads as the design it was trained as (blocks and loop on the full mesh,
    sigma from features) and predicts what it predicted then."""
    model = HandMeshReconstructor.load(FIXTURES / "whole_model_before_finest_level.pt")
    assert model.config.refinement.finest_level == 0 and not model.config.gate.uncertainty_from_evidence
    expected = torch.load(FIXTURES / "whole_model_before_finest_level_outputs.pt")
    images = torch.rand(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        prediction = model(images, side=["right", "left"], exit_threshold=1.0)
    torch.testing.assert_close(prediction.vertices, expected["vertices"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(prediction.level_vertices[0], expected["coarse_to_fine"], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(torch.stack(prediction.pass_log_variance), expected["pass_log_variance"], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(torch.stack(prediction.pass_exit_logit), expected["pass_exit_logit"], atol=1e-5, rtol=1e-5)
    # files that record the settings keep them
    from meshrec.config import config_to_dict
    from meshrec.models.pretrained import save_weights

    current = HandMeshReconstructor(dataclasses.replace(model.config, refinement=dataclasses.replace(model.config.refinement, finest_level=2)))
    save_weights(tmp_path / "now.pt", current.state_dict(), {"model": config_to_dict(current.config)})
    assert HandMeshReconstructor.load(tmp_path / "now.pt").config.refinement.finest_level == 2


def test_the_variance_head_reads_the_keypoint_evidence(cache_dir):
    """sigma depends on how far the mesh's joints are from the keypoint head's, at fixed features."""
    torch.manual_seed(0)
    model = HandMeshReconstructor(small_config(), hierarchy_cache_dir=cache_dir).eval()
    refiner = model.refiner
    images, K = hand_batch(1)
    with torch.no_grad():
        prediction = model(images, K, exit_threshold=1.0)
        pyramid = model.backbone(images)
        pooled = pyramid[-1].mean(dim=(2, 3))
        run = lambda shift: refiner(  # noqa: E731
            pyramid, prediction.global_vertices, prediction.root, K, (SIZE, SIZE), pooled,
            keypoints=(prediction.keypoints2d + shift, prediction.keypoint_depth, torch.ones(1, 21)), exit_threshold=1.0,
        ).pass_log_variance[-1]
        for parameter in refiner.loop_heads.variance.parameters():
            torch.nn.init.normal_(parameter, std=1.0)
        assert not torch.allclose(run(0.0), run(8.0))


def test_keypoint_guidance_is_bounded_for_a_mesh_at_the_camera_plane():
    """A mesh keypoint at the camera plane (a hand predicted too close) projects arbitrarily far;
    its residual to the keypoint head is capped at one crop width (16 guidance units), or the
    refinement's offsets follow it to kilometres (seen on a photo-style hand)."""
    from meshrec.models.refinement import GUIDANCE_PIXEL_FRACTION, MeshRefiner

    K = torch.tensor([[[145.0, 0.0, 63.5], [0.0, 145.0, 63.5], [0.0, 0.0, 1.0]]])
    head = (torch.full((1, 21, 2), 64.0), torch.zeros(1, 21), torch.ones(1, 21))
    evidence = MeshRefiner._prepare_evidence(head, K, (SIZE, SIZE))
    mesh = torch.zeros(1, 21, 3)
    mesh[..., 2] = 0.3
    mesh[0, 5] = torch.tensor([0.05, -0.02, 1e-6])
    residual = MeshRefiner._keypoint_residual(mesh, evidence)
    crop = 1.0 / GUIDANCE_PIXEL_FRACTION
    assert torch.isfinite(residual).all() and residual[..., :2].abs().max() == crop
    assert residual[0, 0, :2].abs().max() < 1.0  # a keypoint in front of the camera is left as it is


def _randomize_batch_norms(network: torch.nn.Module, seed: int = 3) -> None:
    """Running statistics and affine parameters far from the identity, so folding is tested."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for norm in network.modules():
            if isinstance(norm, torch.nn.BatchNorm2d):
                shape = norm.running_mean.shape
                norm.running_mean.copy_(torch.randn(shape, generator=generator) * 0.3)
                norm.running_var.copy_(torch.rand(shape, generator=generator) + 0.5)
                norm.weight.copy_(torch.rand(shape, generator=generator) + 0.5)
                norm.bias.copy_(torch.randn(shape, generator=generator) * 0.1)


def test_traced_inference_copy_predicts_what_the_eager_copy_predicts(cache_dir):
    """The stem (with the passes before the gate's first decision) and the loop pass replayed
    from traced graphs, on other inputs than those they were traced with: left and right crops,
    every pass, and the gate's sub-batches."""
    from meshrec.models.traced import TracedMethod, _Graph

    torch.manual_seed(0)
    model = HandMeshReconstructor(small_config(), hierarchy_cache_dir=cache_dir).eval()
    _randomize_batch_norms(model)
    eager, traced = model.for_inference(traced=False), model.for_inference()
    assert eager._traced is None and set(traced._traced) == {"stem", "loop_pass"}
    generator = torch.Generator().manual_seed(5)
    # the gate's passes after the first run on sub-batches padded to 1, 2 or 4 rows: six batches
    # (seeded) repeat one of those sizes often enough for it to be traced
    images = [torch.rand(5, 3, SIZE, SIZE, generator=generator) for _ in range(2 * (TracedMethod(model, "stem").trace_after + 1))]
    K = default_intrinsics(SIZE, batch=5)
    sides = ["left", "right", "left", "right", "right"]
    with torch.inference_mode():
        first_exit = torch.sigmoid(eager(images[0], K, sides, exit_threshold=1.0).pass_exit_logit[0])
        threshold = float(first_exit.median())  # some samples leave after the first pass, some stay
        for settings in (dict(exit_threshold=1.0), dict(exit_threshold=threshold), dict(max_passes=1)):
            for batch in images:  # the last calls replay graphs traced on earlier images
                actual = traced(batch, K, sides, **settings)
                expected = eager(batch, K, sides, **settings)
            assert torch.equal(actual.passes_used, expected.passes_used)
            for name in ("vertices", "joints2d", "keypoints2d", "joint_variance", "global_rotations", "root"):
                torch.testing.assert_close(getattr(actual, name), getattr(expected, name), atol=1e-5, rtol=1e-4, msg=name)
            for ours, theirs in zip(actual.pass_vertices + actual.pass_exit_logit, expected.pass_vertices + expected.pass_exit_logit):
                torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-4)
            torch.testing.assert_close(actual.keypoint_head.heatmaps, expected.keypoint_head.heatmaps, atol=1e-6, rtol=1e-4)
    assert 0 < int((first_exit > threshold).sum()) < 5
    for method in traced._traced.values():  # graphs ran, not the eager fallback
        assert any(isinstance(entry, _Graph) for entry in method.graphs.values())
    with torch.enable_grad():  # gradients wanted: the eager methods, whose outputs carry them
        assert traced(images[0], K, sides).vertices.requires_grad
    with torch.no_grad():  # graphs replay in inference mode: inference tensors, for autograd once cloned
        replayed = traced(images[0], K, sides).vertices
    weight = torch.ones(1, requires_grad=True)
    (replayed.clone() * weight).sum().backward()
    assert replayed.is_inference() and weight.grad is not None
    copied = copy.deepcopy(traced)
    assert all(not method.graphs and method.owner in (copied, copied.refiner) for method in copied._traced.values())
    traced.double()  # graphs hold the weights as traced: a new dtype traces anew
    assert all(not method.graphs for method in traced._traced.values())


def test_inference_copy_is_kept_until_the_model_or_the_copy_changes(cache_dir):
    """predict_images / evaluate call for_inference() each time: the copy (and its traced graphs)
    is made once and made anew when weights, buffers, dtype or config change, or the copy was changed."""
    import gc

    from meshrec.models.reconstructor import _INFERENCE_COPIES

    torch.manual_seed(0)
    model = HandMeshReconstructor(small_config(), hierarchy_cache_dir=cache_dir)
    first = model.for_inference()
    assert model.for_inference() is first and model.for_inference(traced=False) is not first

    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    model.train()
    model(*hand_batch(2)).vertices.square().mean().backward()
    optimizer.step()  # in place: the parameters' versions move
    after_step = model.for_inference()
    assert after_step is not first and model.for_inference() is after_step

    model.load_state_dict(model.state_dict())
    assert model.for_inference() is not after_step
    model.config.gate.exit_threshold = 0.25
    reconfigured = model.for_inference()
    assert reconfigured.config.gate.exit_threshold == 0.25 and model.for_inference() is reconfigured

    reconfigured.double()  # a user changed the copy: the next call makes a float32 copy again
    assert model.for_inference().joint_regressor.dtype == torch.float32
    model.double()
    assert model.for_inference().joint_regressor.dtype == torch.float64

    kept = len(_INFERENCE_COPIES)
    del model, first, after_step, reconfigured, optimizer
    gc.collect()
    assert len(_INFERENCE_COPIES) == kept - 1  # the copies live as long as their model


def test_an_inference_copy_asked_for_in_inference_mode_is_kept_and_predicts(cache_dir):
    torch.manual_seed(0)
    model = HandMeshReconstructor(small_config(), hierarchy_cache_dir=cache_dir).eval()
    images, K = hand_batch(1)
    with torch.inference_mode():
        inference = model.for_inference()
        assert model.for_inference() is inference and not inference.joint_regressor.is_inference()
        predicted = inference(images, K)
    assert torch.isfinite(predicted.vertices).all() and model.for_inference() is inference


def test_inference_copy_predicts_what_the_model_predicts(cache_dir):
    torch.manual_seed(0)
    model = HandMeshReconstructor(small_config(), hierarchy_cache_dir=cache_dir).eval()
    _randomize_batch_norms(model)
    inference = model.for_inference()
    assert inference.for_inference() is inference and not model.inference_only
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in inference.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) > 10  # the original keeps its own
    images, K = hand_batch(3)
    with torch.no_grad():
        expected = model(images, K, side=["left", "right", "left"], exit_threshold=1.0)
        actual = inference(images, K, side=["left", "right", "left"], exit_threshold=1.0)
    for name in ("vertices", "joints2d", "keypoints2d", "keypoint_depth", "joint_variance", "global_vertices"):
        torch.testing.assert_close(getattr(actual, name), getattr(expected, name), atol=1e-4, rtol=1e-4, msg=name)
    torch.testing.assert_close(actual.keypoint_head.heatmaps, expected.keypoint_head.heatmaps, atol=1e-5, rtol=1e-4)
    for ours, theirs in zip(actual.pass_exit_logit + actual.pass_log_variance, expected.pass_exit_logit + expected.pass_log_variance):
        torch.testing.assert_close(ours, theirs, atol=1e-4, rtol=1e-4)
    # only each joint's selected group ran
    assert actual.keypoint_head.group_joints2d is None and expected.keypoint_head.group_joints2d is not None
    with pytest.raises(MeshrecError, match="inference copy.*train the model it was made from"):
        inference.train()
    with pytest.raises(MeshrecError, match="eval mode"):
        from meshrec.models.fusion import fold_batch_norms

        fold_batch_norms(model.train())
