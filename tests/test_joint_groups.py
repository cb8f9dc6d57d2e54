"""Tests of the learnable-joint-groups keypoint head (meshrec.models.joint_groups).

Properties checked: output shapes and dtypes for G = 1 and G = 3 (float32 and float64),
the fusion initialisation block by block, the soft-argmax and pixel conventions against
hand-computed values, a float64 gradcheck, deterministic eval mode, Gumbel sampling in
training mode, the temperature schedule, a tiny overfit, and typed errors for bad input.
"""

from __future__ import annotations

import math

import pytest
import torch

from meshrec.errors import MeshrecError
from meshrec.models.joint_groups import (
    JointGroupsConfig,
    JointGroupsHead,
    JointGroupsOutput,
    gumbel_temperature,
    heatmap_to_image_pixels,
    image_pixels_to_heatmap,
    soft_argmax_2d,
)

IN_CHANNELS = 12
SIZE = 8  # feature map side: a 64 x 64 crop at stride 8


@pytest.fixture(autouse=True)
def _single_thread():
    """These tensors are tiny: on a shared 2-core machine, intra-op threads only add
    contention (the overfit test took 0.6 s on 1 thread and 4-10 s on 2 under load)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _head(groups: int, channels: int = 6, dtype: torch.dtype = torch.float32, **overrides) -> JointGroupsHead:
    torch.manual_seed(0)
    config = JointGroupsConfig(groups=groups, channels=channels, **overrides)
    return JointGroupsHead(IN_CHANNELS, config).to(dtype)


def _features(batch: int = 2, dtype: torch.dtype = torch.float32, seed: int = 1) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(batch, IN_CHANNELS, SIZE, SIZE, generator=generator).to(dtype)


@pytest.mark.parametrize("groups", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("training", [True, False])
def test_output_shapes_and_dtypes(groups, dtype, training):
    head = _head(groups, channels=6, dtype=dtype).train(training)
    out = head(_features(batch=2, dtype=dtype), temperature=0.5)
    assert isinstance(out, JointGroupsOutput)
    expected_shapes = {
        "joints2d": (2, 21, 2),
        "depth": (2, 21),
        "group_joints2d": (2, groups, 21, 2),
        "group_depth": (2, groups, 21),
        "assignment": (21, groups),
        "heatmaps": (2, 21, SIZE, SIZE),
        "features": (2, groups * 6, SIZE, SIZE),
    }
    for name, shape in expected_shapes.items():
        value = getattr(out, name)
        assert tuple(value.shape) == shape, name
        assert value.dtype == dtype, name
        assert torch.isfinite(value).all(), name
    torch.testing.assert_close(out.assignment.sum(dim=1), torch.ones(21, dtype=dtype))
    torch.testing.assert_close(out.heatmaps.sum(dim=(-2, -1)), torch.ones(2, 21, dtype=dtype))
    # joints lie inside the crop: soft-argmax is a convex combination of cell centres
    crop = SIZE * head.config.feature_stride
    assert (out.joints2d >= 0).all() and (out.joints2d <= crop - 1).all()
    # a joint's output is the selector-weighted sum of the groups' outputs
    combined = (out.assignment.T[None, :, :, None] * out.group_joints2d).sum(dim=1)
    torch.testing.assert_close(out.joints2d, combined)
    torch.testing.assert_close(out.depth, (out.assignment.T[None] * out.group_depth).sum(dim=1))


def test_holistic_baseline_has_no_fusion_and_constant_selector():
    head = _head(1)
    assert head.fusion is None and head.group_logits is None
    out = head(_features())
    torch.testing.assert_close(out.assignment, torch.ones(21, 1))
    torch.testing.assert_close(out.joints2d, out.group_joints2d[:, 0])
    assert head.group_of_joint().tolist() == [0] * 21


@pytest.mark.parametrize("groups", [2, 3, 4])
def test_fusion_initialisation(groups):
    channels = 5
    head = _head(groups, channels=channels)
    weight = head.fusion[0].weight
    assert tuple(weight.shape) == (groups * channels, groups * channels, 1, 1)
    matrix = weight[:, :, 0, 0].detach()
    eye = torch.eye(channels)
    for row_group in range(groups):
        for column_group in range(groups):
            share = 0.9 if row_group == column_group else 0.1 / (groups - 1)
            rows = slice(row_group * channels, (row_group + 1) * channels)
            columns = slice(column_group * channels, (column_group + 1) * channels)
            block = matrix[rows, columns]
            torch.testing.assert_close(block, share * eye, rtol=0, atol=1e-7)
    # each output channel reads its own channel index in every group, weights summing to 1
    torch.testing.assert_close(matrix.sum(dim=1), torch.ones(groups * channels))


def test_soft_argmax_peak_and_cell_centre_convention():
    height, width = 5, 7
    logits = torch.full((2, 3, height, width), -1e4, dtype=torch.float64)
    peaks = [[(0, 0), (4, 6), (2, 3)], [(1, 5), (3, 0), (4, 2)]]  # (row, column)
    for b, row in enumerate(peaks):
        for j, (y, x) in enumerate(row):
            logits[b, j, y, x] = 0.0
    uv, probabilities = soft_argmax_2d(logits)
    expected = torch.tensor([[[x, y] for (y, x) in row] for row in peaks], dtype=torch.float64)
    torch.testing.assert_close(uv, expected)
    assert probabilities.shape == logits.shape
    torch.testing.assert_close(probabilities.sum(dim=(-2, -1)), torch.ones(2, 3, dtype=torch.float64))
    # uniform logits give the map's centre, (w - 1) / 2, (h - 1) / 2
    uv_uniform, _ = soft_argmax_2d(torch.zeros(1, 1, height, width))
    torch.testing.assert_close(uv_uniform, torch.tensor([[[3.0, 2.0]]]))
    # two equal peaks give their midpoint
    two = torch.full((1, 1, height, width), -1e4)
    two[0, 0, 1, 1] = two[0, 0, 3, 4] = 0.0
    torch.testing.assert_close(soft_argmax_2d(two)[0], torch.tensor([[[2.5, 2.0]]]))


def test_soft_argmax_gradcheck():
    logits = torch.randn(2, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(soft_argmax_2d, (logits,))


def test_heatmap_to_image_pixels_convention():
    stride = 4
    cells = torch.tensor([[0.0, 0.0], [31.0, 7.0], [-0.5, 31.5]], dtype=torch.float64)
    pixels = heatmap_to_image_pixels(cells, stride)
    # cell i is centred where a stack of 3x3 stride-2 padding-1 convs centres it: pixel 4 i
    expected = torch.tensor([[0.0, 0.0], [124.0, 28.0], [-2.0, 126.0]], dtype=torch.float64)
    torch.testing.assert_close(pixels, expected)
    torch.testing.assert_close(image_pixels_to_heatmap(pixels, stride), cells)
    # stride 1 is the identity
    torch.testing.assert_close(heatmap_to_image_pixels(cells, 1), cells)


@pytest.mark.parametrize("selector", ["argmax", "expected"])
def test_eval_mode_is_deterministic(selector):
    head = _head(3, inference_selector=selector).eval()
    features = _features()
    first = head(features)
    torch.manual_seed(123)  # the global RNG must not matter in eval mode
    second = head(features, temperature=0.3)
    for name in ("joints2d", "depth", "assignment", "heatmaps"):
        torch.testing.assert_close(getattr(first, name), getattr(second, name), rtol=0, atol=0)
    if selector == "argmax":
        assert set(first.assignment.unique().tolist()) <= {0.0, 1.0}
        assert first.assignment.argmax(dim=1).tolist() == head.group_of_joint().tolist()
    else:
        torch.testing.assert_close(first.assignment, torch.softmax(head.group_logits.detach(), dim=1))
    torch.testing.assert_close(first.assignment.sum(dim=1), torch.ones(21))


def test_training_selector_is_a_gumbel_sample():
    head = _head(3).train()
    features = _features()
    torch.manual_seed(5)
    first = head(features, temperature=1.0).assignment
    second = head(features, temperature=1.0).assignment
    torch.manual_seed(5)
    replay = head(features, temperature=1.0).assignment
    for assignment in (first, second):
        assert (assignment >= 0).all()
        torch.testing.assert_close(assignment.sum(dim=1), torch.ones(21))
    assert not torch.allclose(first, second), "the sample must change with the RNG"
    torch.testing.assert_close(first, replay, rtol=0, atol=0)
    # a low temperature gives nearly one-hot rows
    cold = head(features, temperature=0.01).assignment
    assert (cold.max(dim=1).values > 0.9).float().mean() > 0.8
    # gradients reach the selector logits
    head(features).joints2d.sum().backward()
    assert head.group_logits.grad is not None and head.group_logits.grad.abs().sum() > 0


def test_gumbel_temperature_schedule():
    config = JointGroupsConfig(temperature_start=2.0, temperature_end=0.05, temperature_anneal_steps=1000)
    assert gumbel_temperature(0, config) == pytest.approx(2.0)
    assert gumbel_temperature(1000, config) == pytest.approx(0.05)
    assert gumbel_temperature(10**6, config) == pytest.approx(0.05)
    assert gumbel_temperature(500, config) == pytest.approx(math.sqrt(2.0 * 0.05))  # geometric midpoint
    values = [gumbel_temperature(step, config) for step in range(0, 1200, 7)]
    assert all(later <= earlier for earlier, later in zip(values, values[1:]))
    assert gumbel_temperature(0, JointGroupsConfig(temperature_anneal_steps=0)) == pytest.approx(0.1)
    with pytest.raises(MeshrecError, match="step"):
        gumbel_temperature(-1, config)


def test_overfits_fixed_targets():
    torch.manual_seed(0)
    head = JointGroupsHead(IN_CHANNELS, JointGroupsConfig(groups=3, channels=8)).train()
    features = _features(batch=4)
    crop = SIZE * head.config.feature_stride
    target_uv = torch.rand(4, 21, 2, generator=torch.Generator().manual_seed(2)) * (crop - 16) + 8
    target_depth = torch.randn(4, 21, generator=torch.Generator().manual_seed(3)) * 0.03
    optimiser = torch.optim.Adam(head.parameters(), lr=2e-2)

    def losses(out: JointGroupsOutput) -> tuple[torch.Tensor, torch.Tensor]:
        # squared pixels and squared centimetres, so both terms start at a similar scale
        return ((out.joints2d - target_uv) ** 2).mean(), ((100 * (out.depth - target_depth)) ** 2).mean()

    for step in range(100):
        # the trainer's schedule, compressed: from temperature 1 to about 0.3 in 100 steps
        pixel_loss, depth_loss = losses(head(features, temperature=gumbel_temperature(step * 50, head.config)))
        if step == 0:
            initial_pixel_loss, initial_depth_loss = pixel_loss.item(), depth_loss.item()
        optimiser.zero_grad()
        (pixel_loss + depth_loss).backward()
        optimiser.step()
    with torch.no_grad():
        pixel_loss, depth_loss = losses(head(features))
    # measured over 5 seeds: pixel loss drops 38-71x, depth loss 3.3-9x
    assert pixel_loss.item() < initial_pixel_loss / 10, (initial_pixel_loss, pixel_loss.item())
    assert depth_loss.item() < initial_depth_loss / 2, (initial_depth_loss, depth_loss.item())


def test_channels_last_matches_contiguous():
    head = _head(3).eval()
    features = _features()
    plain = head(features)
    channels_last = head.to(memory_format=torch.channels_last)(features.to(memory_format=torch.channels_last))
    torch.testing.assert_close(plain.joints2d, channels_last.joints2d)
    torch.testing.assert_close(plain.depth, channels_last.depth)


def test_autocast_keeps_coordinates_in_float32():
    head = _head(3).train()
    features = _features()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = head(features, temperature=0.5)
    assert out.features.dtype == torch.bfloat16
    for name in ("joints2d", "depth", "heatmaps", "assignment"):
        assert getattr(out, name).dtype == torch.float32, name
    out.joints2d.sum().backward()
    assert head.group_logits.grad.abs().sum() > 0


def test_runs_on_device(device):
    head = _head(3, dtype=torch.float64).eval()
    features = _features(dtype=torch.float64)
    reference = head(features)
    moved = head.to(device)(features.to(device))
    for name in ("joints2d", "depth", "assignment", "heatmaps"):
        value = getattr(moved, name)
        assert value.device.type == device.type and value.dtype == torch.float64, name
        torch.testing.assert_close(value.cpu(), getattr(reference, name))
    head.train()(features.to(device), temperature=0.5).joints2d.sum().backward()
    assert head.group_logits.grad.device.type == device.type


def test_bad_inputs_raise():
    head = _head(3)
    with pytest.raises(MeshrecError, match=r"4 dims|\(B, 12, h, w\)"):
        head(torch.randn(IN_CHANNELS, SIZE, SIZE))
    with pytest.raises(MeshrecError, match="12 channels.*got 11"):
        head(torch.randn(2, 11, SIZE, SIZE))
    bad = _features()
    bad[0, 0, 0, 0] = float("nan")
    with pytest.raises(MeshrecError, match="finite"):
        head(bad)
    with pytest.raises(MeshrecError, match="floating point"):
        head(torch.ones(2, IN_CHANNELS, SIZE, SIZE, dtype=torch.long))
    with pytest.raises(MeshrecError, match="torch.Tensor"):
        head([[1.0]])
    with pytest.raises(MeshrecError, match="temperature"):
        head.train()(_features(), temperature=0.0)
    with pytest.raises(MeshrecError, match=r"\(\.\.\., h, w\)"):
        soft_argmax_2d(torch.zeros(3))
    with pytest.raises(MeshrecError, match="stride"):
        heatmap_to_image_pixels(torch.zeros(2), 0)
    with pytest.raises(MeshrecError, match="in_channels"):
        JointGroupsHead(0, JointGroupsConfig())


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"groups": 0}, "groups"),
        ({"groups": True}, "groups"),
        ({"channels": 0}, "channels"),
        ({"feature_stride": 2.5}, "feature_stride"),
        ({"temperature_start": 0.0}, "temperature_start"),
        ({"temperature_end": -1.0}, "temperature_end"),
        ({"temperature_end": float("nan")}, "temperature_end"),
        ({"temperature_anneal_steps": -1}, "temperature_anneal_steps"),
        ({"inference_selector": "max"}, "inference_selector"),
        ({"depth_scale": 0.0}, "depth_scale"),
    ],
)
def test_config_validation(overrides, field):
    with pytest.raises(MeshrecError, match=field):
        JointGroupsConfig(**overrides)


def test_heatmap_spread_is_the_rms_distance_from_the_mean_against_a_direct_sum():
    from meshrec.models.joint_groups import heatmap_spread

    generator = torch.Generator().manual_seed(0)
    heatmaps = torch.softmax(torch.randn(2, 3, 5 * 7, generator=generator, dtype=torch.float64), -1).unflatten(-1, (5, 7))
    rows, columns = torch.meshgrid(torch.arange(5.0, dtype=torch.float64), torch.arange(7.0, dtype=torch.float64), indexing="ij")
    mean_u = (heatmaps * columns).sum((-2, -1), keepdim=True)
    mean_v = (heatmaps * rows).sum((-2, -1), keepdim=True)
    direct = (heatmaps * ((columns - mean_u) ** 2 + (rows - mean_v) ** 2)).sum((-2, -1)).sqrt() * 4
    torch.testing.assert_close(heatmap_spread(heatmaps, 4), direct)


@pytest.mark.parametrize("groups", [1, 3])
def test_selected_groups_only_give_the_same_keypoints(groups):
    head = _head(groups).eval()
    with torch.no_grad():
        torch.nn.init.normal_(head.predictor.weight, std=0.3)  # peaked maps, distinct per group
        torch.nn.init.normal_(head.predictor.bias, std=0.3)
        full = head(_features())
        selected = head(_features(), selected_only=True)
    for name in ("joints2d", "depth", "heatmaps", "assignment"):
        torch.testing.assert_close(getattr(selected, name), getattr(full, name), atol=1e-5, rtol=1e-5, msg=name)
    assert selected.group_joints2d is None and selected.group_depth is None


def test_selected_only_is_ignored_where_the_selector_mixes_groups():
    for head in (_head(3).train(), _head(3, inference_selector="expected").eval()):
        out = head(_features(), temperature=0.5, selected_only=True)
        assert out.group_joints2d.shape == (2, 3, 21, 2)
