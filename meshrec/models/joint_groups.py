"""Keypoint head with learnable joint groups (Li et al., AAAI 2021, arXiv 2012.09496).

The head reads stride-4 features (the backbone's pyramid up-sampled by
:class:`meshrec.models.keypoint_decoder.KeypointDecoder`) and predicts the 21 keypoints
(OpenPose / FreiHAND order) as 2D pixels of the crop plus a root-relative depth each: an
integral (soft-argmax) heatmap regression. The groups sit on the up-sampled features, so they
cost no resolution: at stride 8 (the first design) the head learned ~3x slower than a plain
stride-4 head on the same backbone (docs/benchmarks.md).

The joints are split into ``G`` groups so that weakly related joints get their own
features (the paper's answer to negative transfer between tasks):

- **selector**: learnable logits ``(J, G)``; in training each forward draws one
  Concrete / Gumbel-softmax sample (soft, rows sum to 1) at a temperature the trainer
  anneals with :func:`gumbel_temperature`; in eval mode the selector is deterministic
  (one-hot argmax, or the noise-free softmax). One sample serves the whole batch: the
  group structure is a property of the model, not of an image.
- **branches**: group ``g`` has a 3x3 conv + BN + ReLU from the input to ``channels``.
- **fusion** (``G > 1``): group ``g`` has one 1x1 conv + BN + ReLU over the
  concatenation of all groups' branch features, initialised to ``0.9 * I`` on its own
  group's channels and ``0.1 / (G - 1) * I`` on every other group's channels, so that
  training starts from "mostly my own features, a little of the others'".
- **predictors**: group ``g`` has a 1x1 conv to ``J`` heatmap logits and ``J`` depth maps.
  A heatmap goes through a spatial softmax and a soft-argmax to ``(u, v)``; the depth is
  the heatmap-weighted sum of the depth map.
- A joint's output is the selector-weighted sum of the groups' outputs.

``G = 1`` is the holistic baseline of the paper's ablation: one branch, no fusion layer,
no selector parameters (the selector is the constant 1).

For speed the G per-group layers are stored stacked, which computes exactly the same
function: the G branch convs are one conv to ``G * channels`` (group ``g`` owns output
channels ``[g * channels, (g + 1) * channels)``), the G fusion convs are one 1x1 conv
``G * channels -> G * channels`` (rows ``[g * channels, (g + 1) * channels)`` are group
``g``'s fusion conv; BN is per channel, so stacking it changes nothing), and the G
predictors are one 1x1 conv with ``groups=G``. All are plain dense convs (no depthwise),
which suits ``channels_last``.

Pixel convention (as everywhere in meshrec, see :mod:`meshrec.geometry.camera`): pixel
centres sit at integer coordinates, in the crop and in the heatmap alike. Heatmap cell ``i``
is centred where the backbone centres it: a 3x3, stride-2, padding-1 convolution's output
cell ``i`` is centred on its input's cell ``2 i``, so after the stride-``s`` stack cell ``i``
sits at crop pixel ``s * i`` (the decoder's up-sampling keeps that alignment).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from meshrec.errors import MeshrecError

__all__ = [
    "SELECTOR_NAMES",
    "JointGroupsConfig",
    "JointGroupsError",
    "JointGroupsHead",
    "JointGroupsOutput",
    "fusion_initial_weight",
    "gumbel_temperature",
    "heatmap_spread",
    "heatmap_to_image_pixels",
    "image_pixels_to_heatmap",
    "soft_argmax_2d",
]

SELECTOR_NAMES = ("argmax", "expected")
"""Eval-mode selectors: ``argmax`` (one-hot per joint) or ``expected`` (softmax of the logits)."""

NUM_KEYPOINTS = 21
"""Keypoints predicted by default: OpenPose / FreiHAND order, 0 wrist, 1-4 thumb ... 17-20 little."""

# Share of a group's own features in its fusion conv at initialisation (the paper's 0.9);
# the remaining 0.1 is split evenly over the other groups.
FUSION_OWN_SHARE = 0.9

# Heatmap/depth predictor weights start this small so the first heatmaps are near
# uniform (soft-argmax at the crop centre, depth near 0) instead of random peaks.
PREDICTOR_INIT_STD = 1e-3

# Selector logits start almost uniform; the tiny spread only breaks argmax ties so an
# untrained head in eval mode does not put every joint in group 0.
SELECTOR_LOGIT_INIT_STD = 1e-2


class JointGroupsError(MeshrecError):
    """A joint-groups config value or an input of the keypoint head is invalid."""


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_positive_finite(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value) and value > 0


@dataclass
class JointGroupsConfig:
    """Settings of :class:`JointGroupsHead` and of its temperature schedule.

    Attributes:
        enabled: whether the model builds the keypoint head at all (read by the model,
            not by the head).
        groups: number of joint groups G (>= 1); 1 is the holistic baseline.
        channels: width of each group's branch (>= 1).
        feature_stride: stride (crop pixels per heatmap cell) of the features the head
            reads: the decoder up-samples the pyramid's stride-32 level to it.
        decoder_widths: channels of the decoder's levels, coarsest first (one per factor of
            2 between 32 and ``feature_stride``: 3 entries for stride 4).
        temperature_start: Gumbel-softmax temperature at step 0 (> 0).
        temperature_end: temperature after ``temperature_anneal_steps`` steps (> 0); also
            the default when a training-mode forward is given no temperature.
        temperature_anneal_steps: length of the exponential decay (>= 0; 0 means the end
            temperature from step 0).
        inference_selector: ``"argmax"`` or ``"expected"``, see :data:`SELECTOR_NAMES`.
        depth_scale: metres per unit of the depth map's raw output (> 0).
    """

    enabled: bool = True
    groups: int = 3
    channels: int = 16
    feature_stride: int = 4
    decoder_widths: tuple[int, ...] = (64, 48, 32)
    temperature_start: float = 1.0
    temperature_end: float = 0.1
    temperature_anneal_steps: int = 5000
    inference_selector: str = "argmax"
    depth_scale: float = 0.1

    def __post_init__(self) -> None:
        if not isinstance(self.enabled, bool):
            raise JointGroupsError(f"joint_groups.enabled must be a bool, got {self.enabled!r}")
        for name in ("groups", "channels", "feature_stride"):
            value = getattr(self, name)
            if not _is_int(value) or value < 1:
                raise JointGroupsError(f"joint_groups.{name} must be an int >= 1, got {value!r}")
        if not _is_int(self.temperature_anneal_steps) or self.temperature_anneal_steps < 0:
            raise JointGroupsError(
                f"joint_groups.temperature_anneal_steps must be an int >= 0, got {self.temperature_anneal_steps!r}"
            )
        for name in ("temperature_start", "temperature_end", "depth_scale"):
            value = getattr(self, name)
            if not _is_positive_finite(value):
                raise JointGroupsError(f"joint_groups.{name} must be a finite number > 0, got {value!r}")
        self.decoder_widths = tuple(self.decoder_widths)  # YAML gives lists
        if not all(_is_int(w) and w >= 1 for w in self.decoder_widths):
            raise JointGroupsError(f"joint_groups.decoder_widths must be ints >= 1, got {self.decoder_widths!r}")
        if self.inference_selector not in SELECTOR_NAMES:
            raise JointGroupsError(
                f"joint_groups.inference_selector must be one of {SELECTOR_NAMES}, got {self.inference_selector!r}"
            )


def gumbel_temperature(step: int, config: JointGroupsConfig) -> float:
    """Gumbel-softmax temperature at optimiser step ``step``.

    Exponential decay from ``temperature_start`` (step 0) to ``temperature_end`` (step
    ``temperature_anneal_steps``), constant afterwards::

        tau(step) = start * (end / start) ** (min(step, N) / N)

    >>> config = JointGroupsConfig(temperature_start=1.0, temperature_end=0.01, temperature_anneal_steps=100)
    >>> [round(gumbel_temperature(s, config), 6) for s in (0, 50, 100, 1000)]
    [1.0, 0.1, 0.01, 0.01]
    """
    if not _is_int(step) or step < 0:
        raise JointGroupsError(f"step must be an int >= 0, got {step!r}")
    start, end, steps = config.temperature_start, config.temperature_end, config.temperature_anneal_steps
    if steps == 0 or step >= steps:
        return float(end)
    return float(start * (end / start) ** (step / steps))


def soft_argmax_2d(heatmaps: Tensor) -> tuple[Tensor, Tensor]:
    """Spatial softmax and expected position of heatmap logits.

    Args:
        heatmaps: (..., h, w) logits, e.g. (B, J, h, w): ``heatmaps[b, j, y, x]`` scores
            joint ``j`` of sample ``b`` at heatmap cell row ``y``, column ``x``.

    Returns:
        ``(uv, probabilities)``: uv (..., 2) the expected ``(u, v) = (column, row)`` in
        heatmap cells, cell centres at integers (a peak at cell ``[y, x]`` gives
        ``(x, y)``); probabilities (..., h, w) the softmax over each ``h * w`` map.

    >>> logits = torch.full((1, 1, 4, 5), -1e4)
    >>> logits[0, 0, 1, 3] = 0.0
    >>> soft_argmax_2d(logits)[0]
    tensor([[[3., 1.]]])
    """
    if not isinstance(heatmaps, Tensor) or heatmaps.ndim < 2:
        got = tuple(heatmaps.shape) if isinstance(heatmaps, Tensor) else type(heatmaps).__name__
        raise JointGroupsError(f"heatmaps must be a tensor of shape (..., h, w), got {got}")
    if not heatmaps.is_floating_point():
        raise JointGroupsError(f"heatmaps must be floating point, got {heatmaps.dtype}")
    height, width = heatmaps.shape[-2:]
    if height == 0 or width == 0:
        raise JointGroupsError(f"heatmaps must have h, w >= 1, got (h, w) = ({height}, {width})")
    probabilities = torch.softmax(heatmaps.flatten(-2), dim=-1).unflatten(-1, (height, width))
    columns = torch.arange(width, dtype=heatmaps.dtype, device=heatmaps.device)
    rows = torch.arange(height, dtype=heatmaps.dtype, device=heatmaps.device)
    # Marginals first: two small products instead of two full (h, w) weightings.
    u = probabilities.sum(dim=-2) @ columns
    v = probabilities.sum(dim=-1) @ rows
    return torch.stack((u, v), dim=-1), probabilities


def _check_stride(stride: object) -> None:
    if not _is_positive_finite(stride):
        raise JointGroupsError(f"stride must be a finite number > 0, got {stride!r}")


def heatmap_to_image_pixels(uv_cells: Tensor, stride: float) -> Tensor:
    """Heatmap cell coordinates to crop pixel coordinates (pixel centres at integers).

    Cell ``i`` is centred on crop pixel ``i * stride`` (see the module docstring).

    Args:
        uv_cells: (..., 2) ``(u, v)`` in heatmap cells.
        stride: crop pixels per heatmap cell.

    Returns:
        (..., 2) ``(u, v)`` in crop pixels, same dtype and device.

    >>> heatmap_to_image_pixels(torch.tensor([0.0, 31.0]), 4)
    tensor([  0., 124.])
    """
    _check_stride(stride)
    return uv_cells * stride


def heatmap_spread(heatmaps: Tensor, stride: float) -> Tensor:
    """How spread each heatmap's mass is: the root-mean-square distance from its mean, in crop pixels.

    Args:
        heatmaps: (..., h, w) probabilities (each map sums to 1), e.g. :attr:`JointGroupsOutput.heatmaps`.
        stride: crop pixels per heatmap cell.

    Returns:
        (...) ``sqrt(E|x - E x|^2) * stride``; 0 for a one-hot map.

    >>> heatmap_spread(torch.tensor([[0.5, 0.0, 0.5]]), 4)
    tensor(4.)
    """
    _check_stride(stride)
    height, width = heatmaps.shape[-2:]
    columns = torch.arange(width, dtype=heatmaps.dtype, device=heatmaps.device)
    rows = torch.arange(height, dtype=heatmaps.dtype, device=heatmaps.device)
    over_columns, over_rows = heatmaps.sum(-2), heatmaps.sum(-1)  # marginals (..., w), (..., h)
    variance = (
        (over_columns * columns.square()).sum(-1) - (over_columns * columns).sum(-1).square()
        + (over_rows * rows.square()).sum(-1) - (over_rows * rows).sum(-1).square()
    )
    return variance.clamp(min=0).sqrt() * stride


def image_pixels_to_heatmap(uv_pixels: Tensor, stride: float) -> Tensor:
    """Inverse of :func:`heatmap_to_image_pixels`: crop pixels (..., 2) to heatmap cells (..., 2)."""
    _check_stride(stride)
    return uv_pixels / stride


@dataclass
class JointGroupsOutput:
    """What :class:`JointGroupsHead` predicts for a batch of B crops, J joints, G groups.

    Attributes:
        joints2d: (B, J, 2) ``(u, v)`` crop pixels, pixel centres at integers.
        depth: (B, J) depth in metres as predicted; root-relative once the model subtracts
            joint 0's.
        group_joints2d: (B, G, J, 2) each group's ``(u, v)`` crop pixels for every joint;
            None when only each joint's selected group ran (``selected_only``).
        group_depth: (B, G, J) each group's depth, metres; None with ``selected_only``.
        assignment: (J, G) selector weights used in this forward; ``assignment[j, g]`` is
            the share of group ``g`` in joint ``j``'s output; rows sum to 1.
        heatmaps: (B, J, h, w) selector-weighted heatmap probabilities (each map sums to 1).
        features: (B, G * channels, h, w) fused group features (group ``g`` owns channels
            ``[g * channels, (g + 1) * channels)``), for reuse by the model.
    """

    joints2d: Tensor
    depth: Tensor
    group_joints2d: Tensor | None
    group_depth: Tensor | None
    assignment: Tensor
    heatmaps: Tensor
    features: Tensor


def fusion_initial_weight(groups: int, channels: int) -> Tensor:
    """(G * channels, G * channels) initial fusion matrix: 0.9 * I on diagonal blocks, 0.1 / (G - 1) * I elsewhere.

    Row block ``g`` is group ``g``'s 1x1 fusion conv; column block ``h`` reads group ``h``'s
    branch features.
    """
    if groups < 2:
        raise JointGroupsError(f"the fusion layer needs groups >= 2, got {groups}")
    other_share = (1.0 - FUSION_OWN_SHARE) / (groups - 1)
    block_shares = torch.full((groups, groups), other_share, dtype=torch.float64)
    block_shares.fill_diagonal_(FUSION_OWN_SHARE)
    return torch.kron(block_shares, torch.eye(channels, dtype=torch.float64))


class JointGroupsHead(nn.Module):
    """Keypoint head with learnable joint groups; see the module docstring for the design.

    Stateless apart from its parameters (and BN statistics): the Gumbel temperature is an
    argument of :meth:`forward`, computed by the trainer with :func:`gumbel_temperature`.

    Args:
        in_channels: channels of the pyramid level the head reads.
        config: :class:`JointGroupsConfig` (groups, channels, stride, selector, depth scale).
        num_joints: keypoints predicted (21 in OpenPose order).

    >>> head = JointGroupsHead(16, JointGroupsConfig(groups=3, channels=8)).eval()
    >>> out = head(torch.randn(2, 16, 16, 16))
    >>> tuple(out.joints2d.shape), tuple(out.group_depth.shape), tuple(out.features.shape)
    ((2, 21, 2), (2, 3, 21), (2, 24, 16, 16))
    """

    def __init__(self, in_channels: int, config: JointGroupsConfig, num_joints: int = NUM_KEYPOINTS) -> None:
        super().__init__()
        if not isinstance(config, JointGroupsConfig):
            raise JointGroupsError(f"config must be a JointGroupsConfig, got {type(config).__name__}")
        if not _is_int(in_channels) or in_channels < 1:
            raise JointGroupsError(f"in_channels must be an int >= 1, got {in_channels!r}")
        if not _is_int(num_joints) or num_joints < 1:
            raise JointGroupsError(f"num_joints must be an int >= 1, got {num_joints!r}")
        self.config = config
        self.in_channels = int(in_channels)
        self.num_joints = int(num_joints)
        self.num_groups = groups = config.groups
        width = groups * config.channels

        self.branch = nn.Sequential(
            nn.Conv2d(in_channels, width, kernel_size=3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
        )
        if groups > 1:
            self.fusion = nn.Sequential(
                nn.Conv2d(width, width, kernel_size=1, bias=False),
                nn.BatchNorm2d(width),
                nn.ReLU(inplace=True),
            )
            self.group_logits = nn.Parameter(torch.empty(num_joints, groups))
        else:
            # No selector parameter at G = 1: a parameter that never gets a gradient would
            # trip DistributedDataParallel's unused-parameter check.
            self.fusion = None
            self.register_parameter("group_logits", None)
        # Per group: J heatmap logits, then J depth maps.
        self.predictor = nn.Conv2d(width, groups * 2 * num_joints, kernel_size=1, groups=groups)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise the selector, the branch (He), the fusion blocks and the predictors as documented."""
        if self.group_logits is not None:
            nn.init.normal_(self.group_logits, std=SELECTOR_LOGIT_INIT_STD)
        nn.init.kaiming_normal_(self.branch[0].weight, mode="fan_out", nonlinearity="relu")
        if self.fusion is not None:
            fusion_weight = self.fusion[0].weight
            with torch.no_grad():
                initial = fusion_initial_weight(self.num_groups, self.config.channels)
                fusion_weight.copy_(initial.to(fusion_weight.dtype).view_as(fusion_weight))
        nn.init.normal_(self.predictor.weight, std=PREDICTOR_INIT_STD)
        nn.init.zeros_(self.predictor.bias)

    def selector_weights(self, temperature: float | None = None) -> Tensor:
        """(J, G) selector weights for one forward; rows sum to 1.

        Training mode: one Gumbel-softmax sample (soft) of the logits at ``temperature``
        (``None`` means ``config.temperature_end``). Eval mode: one-hot argmax or the
        noise-free softmax, per ``config.inference_selector``; ``temperature`` is ignored.
        """
        if self.group_logits is None:
            weight = self.predictor.weight
            return torch.ones(self.num_joints, 1, dtype=weight.dtype, device=weight.device)
        if self.training:
            tau = self.config.temperature_end if temperature is None else temperature
            if not _is_positive_finite(tau):
                raise JointGroupsError(f"temperature must be a finite number > 0, got {tau!r}")
            return F.gumbel_softmax(self.group_logits, tau=float(tau), hard=False, dim=-1)
        if self.config.inference_selector == "argmax":
            return F.one_hot(self.group_logits.argmax(dim=-1), self.num_groups).to(self.group_logits.dtype)
        return torch.softmax(self.group_logits, dim=-1)

    def group_of_joint(self) -> Tensor:
        """(J,) int64 index of the most likely group of each joint (all 0 when G = 1), for reports."""
        if self.group_logits is None:
            return torch.zeros(self.num_joints, dtype=torch.long, device=self.predictor.weight.device)
        return self.group_logits.detach().argmax(dim=-1)

    def _check_features(self, features: object) -> None:
        if not isinstance(features, Tensor):
            raise JointGroupsError(f"features must be a torch.Tensor, got {type(features).__name__}")
        if features.ndim != 4:
            raise JointGroupsError(
                f"features must have shape (B, {self.in_channels}, h, w), got {tuple(features.shape)} "
                f"({features.ndim} dims instead of 4)"
            )
        if features.shape[1] != self.in_channels:
            raise JointGroupsError(
                f"features must have {self.in_channels} channels (B, {self.in_channels}, h, w), "
                f"got {features.shape[1]} in shape {tuple(features.shape)}"
            )
        if features.shape[0] == 0 or features.shape[2] == 0 or features.shape[3] == 0:
            raise JointGroupsError(f"features must be non-empty, got shape {tuple(features.shape)}")
        if not features.is_floating_point():
            raise JointGroupsError(f"features must be floating point, got {features.dtype}")
        # One reduction instead of an elementwise isfinite (which cost ~7% of the head on
        # CPU): any NaN or inf makes the sum non-finite; accumulating in float32 (float64
        # for float64 input) keeps half-precision sums from overflowing. A data-dependent
        # check graph-breaks torch.compile and would be fixed in a traced graph, so it is
        # skipped while compiling or tracing.
        if not (torch.compiler.is_compiling() or torch.jit.is_tracing()):
            accumulate = torch.float64 if features.dtype == torch.float64 else torch.float32
            if not bool(torch.isfinite(features.sum(dtype=accumulate))):
                raise JointGroupsError("features must be finite, got NaN or infinite values")

    def forward(self, features: Tensor, temperature: float | None = None, selected_only: bool = False) -> JointGroupsOutput:
        """Predict keypoints from one pyramid level.

        Args:
            features: (B, in_channels, h, w) the pyramid level at ``config.feature_stride``.
            temperature: Gumbel-softmax temperature for the training-mode selector sample
                (``None``: ``config.temperature_end``); ignored in eval mode.
            selected_only: where the selector is one-hot (eval mode with the ``argmax``
                selector), predict each joint from its selected group alone: the same keypoints,
                depths and heatmaps for a third of the heatmaps at G = 3 (the softmax and mixing of
                every group's maps were ~40 % of the head at batch 32, docs/benchmarks.md); the
                per-group outputs are then None. Ignored where the selector mixes groups.

        Returns:
            :class:`JointGroupsOutput`; device follows ``features``; dtype too, except that
            half-precision (float16 / bfloat16, e.g. under autocast) keypoints, depths,
            heatmaps and assignment come back in float32 (``features`` stays half).
        """
        self._check_features(features)
        group_features = self.branch(features)
        if self.fusion is not None:
            group_features = self.fusion(group_features)
        if selected_only and not self.training and self.config.inference_selector == "argmax":
            return self._selected_groups_forward(group_features)
        # (B, G * 2J, h, w) -> (B, G, 2, J, h, w): [:, g, 0] heatmap logits, [:, g, 1] raw depth.
        predictions = self.predictor(group_features).unflatten(1, (self.num_groups, 2, self.num_joints))
        # Coordinates are computed in at least float32, outside autocast: bfloat16 resolves
        # only 0.5 px at 64-128 px, and autocast would run the soft-argmax products in it.
        with torch.autocast(device_type=predictions.device.type, enabled=False):
            if predictions.dtype in (torch.float16, torch.bfloat16):
                predictions = predictions.float()
            uv_cells, probabilities = soft_argmax_2d(predictions[:, :, 0])
            # Scaled after the weighted sum: the same value, a (B, G, J) multiply instead of a map-sized one.
            group_depth = (probabilities * predictions[:, :, 1]).sum(dim=(-2, -1)) * self.config.depth_scale
            group_joints2d = heatmap_to_image_pixels(uv_cells, self.config.feature_stride)

            assignment = self.selector_weights(temperature).to(group_joints2d.dtype)
            joints2d = torch.einsum("jg,bgjc->bjc", assignment, group_joints2d)
            depth = torch.einsum("jg,bgj->bj", assignment, group_depth)
            heatmaps = torch.einsum("jg,bgjyx->bjyx", assignment, probabilities)
        return JointGroupsOutput(
            joints2d=joints2d,
            depth=depth,
            group_joints2d=group_joints2d,
            group_depth=group_depth,
            assignment=assignment,
            heatmaps=heatmaps,
            features=group_features,
        )

    def _selected_predictor(self) -> tuple[Tensor, Tensor]:
        """The predictor of each joint's selected group as one dense 1x1 conv over all groups'
        features: weight ``(2J, G * channels, 1, 1)``, rows ``[0, J)`` heatmap logits and ``[J, 2J)``
        raw depths of joints 0..J-1, zero outside the selected group's channels; bias ``(2J,)``."""
        joints, channels = self.num_joints, self.config.channels
        group = self.group_of_joint()  # (J,)
        joint = torch.arange(joints, device=group.device)
        # predictor rows are group-major: group g's heatmap j at g * 2J + j, its depth j at g * 2J + J + j
        rows = torch.cat([group * 2 * joints + joint, group * 2 * joints + joints + joint])
        weight = self.predictor.weight.index_select(0, rows).view(2 * joints, channels)
        dense = weight.new_zeros(2 * joints, self.num_groups, channels)
        dense[torch.arange(2 * joints, device=group.device), group.repeat(2)] = weight
        return dense.view(2 * joints, self.num_groups * channels, 1, 1), self.predictor.bias.index_select(0, rows)

    def _selected_groups_forward(self, group_features: Tensor) -> JointGroupsOutput:
        """:meth:`forward` with a one-hot selector: each joint from its selected group only."""
        weight, bias = self._selected_predictor()
        predictions = F.conv2d(group_features, weight.to(group_features.dtype), bias.to(group_features.dtype))
        with torch.autocast(device_type=predictions.device.type, enabled=False):
            predictions = predictions.float() if predictions.dtype in (torch.float16, torch.bfloat16) else predictions
            predictions = predictions.contiguous().unflatten(1, (2, self.num_joints))  # [:, 0] logits, [:, 1] raw depth
            uv_cells, heatmaps = soft_argmax_2d(predictions[:, 0])
            depth = (heatmaps * predictions[:, 1]).sum(dim=(-2, -1)) * self.config.depth_scale
            assignment = self.selector_weights().to(heatmaps.dtype)
        return JointGroupsOutput(
            joints2d=heatmap_to_image_pixels(uv_cells, self.config.feature_stride),
            depth=depth,
            group_joints2d=None,
            group_depth=None,
            assignment=assignment,
            heatmaps=heatmaps,
            features=group_features,
        )
