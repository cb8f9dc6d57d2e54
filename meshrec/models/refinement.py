"""Coarse-to-fine refinement with pixel-aligned features, and the gated weight-sharing loop.

The parametric mesh is down-sampled through a hierarchy built from the hand model's own faces
(:mod:`meshrec.geometry.mesh_hierarchy`: V -> ~V/4 -> ~V/16 -> ~V/64). Starting at the coarsest
level, each level

1. places its vertices: the parametric mesh at that resolution plus the offsets found so far
   (up-sampled barycentrically from the coarser level);
2. projects them with the crop's K and samples the pyramid level whose resolution matches the
   mesh's (coarsest mesh <-> stride 32, full mesh <-> stride 4);
3. fuses the sampled features with the features carried up from the coarser level, the vertex
   positions, a keypoint-guidance term and the global image feature in a spiral graph block;
4. predicts vertex offsets.

The blocks stop at ``finest_level`` (by default level 1, ~V/4 vertices): finer levels take its
offsets up-sampled barycentrically. There a single block, shared across passes, refines again up
to ``max_passes`` times, and each pass's mesh is up-sampled to the full resolution the same way.
After every pass a head predicts each joint's error variance (from the features pooled at the
joint, which joint it is, how far the refinement moved it from the global stage's, and the
evidence: how far the mesh's joint is from the keypoint head's and how spread the head's heatmap
is) and the probability that another pass is not worth it. In training every pass
runs (all are supervised); at inference a sample leaves as soon as ``p_exit > exit_threshold``,
and later passes run only on the samples still inside (index-selected sub-batches, so the saving
is real).

Keypoint guidance: each vertex is attached to one of the 21 keypoints (the nearest one on the
rest mesh among those of the bone that moves it most). Its guidance input is the 3D vector from
where the current mesh puts that keypoint to where the keypoint head sees it: the 2D part in
units of 1/16 of the crop (8 px at 128 px), the root-relative depth part in centimetres. A
direct hint of which way the vertex should move, recomputed for the moved mesh at every level
and every loop pass, so each pass reads how far it still is from the evidence, not the same
inputs again. (Image features alone move the hand as a whole but not its fingers: an oracle
experiment with them cut the root-aligned error by 8 %; docs/benchmarks.md.)
"""


from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from manolayer.io import ManoModel
from manolayer.joints import OPENPOSE_PARENTS, OPENPOSE_TO_MANO21
from meshrec.errors import MeshrecError
from meshrec.geometry.camera import project_points
from meshrec.geometry.mesh_hierarchy import MeshHierarchy, apply_sparse_map
from meshrec.models.graph import SpiralBlock, retrieve_vertex_features

# log-variance limits (metres^2): sigma from 0.3 mm to 1 m keeps the NLL finite.
LOG_VARIANCE_RANGE = (-16.0, 0.0)
# initial log-variance: sigma = 1 cm
LOG_VARIANCE_INIT = -9.2

# keypoint guidance per vertex: (u, v, depth) residuals, in crop size / 16 and centimetres
GUIDANCE_CHANNELS = 3
GUIDANCE_PIXEL_FRACTION = 1.0 / 16.0
GUIDANCE_DEPTH_SCALE = 100.0

UNCERTAINTY_HEADS = ("linear", "joint_mlp")

NUM_JOINTS = len(OPENPOSE_PARENTS)  # the keypoints guided and scored: OpenPose order


@dataclass
class RefinementConfig:
    """Coarse-to-fine refinement.

    Attributes:
        enabled: False skips the whole refinement (the global stage alone).
        level_factors: decimation factor between consecutive hierarchy levels.
        spiral_length: neighbourhood size of the spiral convolutions.
        widths: block width per mesh level, finest first (one entry per level).
        offset_scale: metres per unit of the offset heads' output (keeps initial steps small).
        keypoint_guidance: feed the keypoint head's 2D joints to the blocks.
        finest_level: the finest hierarchy level with a block; the loop runs there too, and the
            finer levels take its offsets up-sampled barycentrically (0: a block on the full mesh).
            Level 1 (~V/4 vertices) does the same corrections at a quarter of the gathered rows:
            the full mesh's block and loop were ~80 % of the refiner's time (docs/benchmarks.md).
            ``widths[l]`` of a level without a block is unused.
    """

    enabled: bool = True
    level_factors: tuple[int, ...] = (4, 4, 4)
    spiral_length: int = 9
    widths: tuple[int, ...] = (16, 16, 32, 64)
    offset_scale: float = 0.01
    keypoint_guidance: bool = True
    finest_level: int = 1

    def __post_init__(self) -> None:
        self.level_factors = tuple(int(f) for f in self.level_factors)
        self.widths = tuple(int(w) for w in self.widths)
        if len(self.widths) != len(self.level_factors) + 1:
            raise MeshrecError(
                f"refinement.widths needs one entry per mesh level ({len(self.level_factors) + 1} for "
                f"level_factors {self.level_factors}), got {self.widths}"
            )
        if not 0 <= self.finest_level < len(self.widths):
            raise MeshrecError(
                f"refinement.finest_level must name a mesh level, 0 (the full mesh) to {len(self.widths) - 1}; "
                f"got {self.finest_level}"
            )
        if min(self.widths) < 1 or self.spiral_length < 2 or not self.offset_scale > 0:
            raise MeshrecError(
                f"refinement needs widths >= 1, spiral_length >= 2, offset_scale > 0; got {self.widths}, "
                f"{self.spiral_length}, {self.offset_scale}"
            )


@dataclass
class GateConfig:
    """The gated loop at the finest mesh level.

    Attributes:
        max_passes: T_max, the most passes of the shared block (0 disables the loop).
        exit_threshold: tau; at inference a sample leaves when ``p_exit > tau``. 1.0 never
            exits early (always T_max), any negative value always exits after one pass.
        adaptive: False runs every pass at inference too (fixed depth).
        uncertainty_from_evidence: the per-joint variance head also reads how far the mesh's
            joint is from the keypoint head's (2D, depth, distance) and how spread the head's
            heatmap is; False: the pass's pooled features and joint positions only (the design
            whose sigma ranked the joints' root-relative errors with Spearman 0.30,
            docs/benchmarks.md).
        uncertainty_head: ``'linear'``: one linear map of those inputs, shared by the joints (the
            design whose sigma ranked the errors with Spearman 0.37); ``'joint_mlp'``: a two-layer
            MLP that also reads the joint's identity and how far the refinement moved the joint
            from the global stage's (root-relative). The errors differ most between joints (a
            fingertip's is 3-4x the thumb base's) and a shared linear map could not say which
            joint it scores: per-joint calibration of the linear sigma alone raised Spearman
            0.37 -> 0.48 offline (docs/benchmarks.md).
    """

    max_passes: int = 3
    exit_threshold: float = 0.5
    adaptive: bool = True
    uncertainty_from_evidence: bool = True
    uncertainty_head: str = "joint_mlp"

    def __post_init__(self) -> None:
        if self.max_passes < 0:
            raise MeshrecError(f"gate.max_passes must be >= 0, got {self.max_passes}")
        if self.uncertainty_head not in UNCERTAINTY_HEADS:
            raise MeshrecError(f"gate.uncertainty_head must be one of {UNCERTAINTY_HEADS}, got {self.uncertainty_head!r}")


@dataclass
class RefinementOutput:
    """What the refinement produced.

    Attributes:
        level_vertices: per hierarchy level, finest (level 0, the full mesh) first,
            ``(B, V_l, 3)`` after that level's block (camera frame, metres).
        coarse_to_fine_vertices: ``(B, V, 3)`` the full mesh after the coarse-to-fine stage.
        pass_vertices: per loop pass, ``(B, V, 3)``. At inference a sample that already left
            keeps its last mesh in later entries.
        pass_log_variance: per pass, ``(B, 21)`` log sigma^2 of each joint's error (metres^2).
        pass_exit_logit: per pass, ``(B,)`` logit of p_exit.
        passes_used: ``(B,)`` int64, passes each sample ran (0 when the loop is off).
    """

    level_vertices: list[torch.Tensor]
    coarse_to_fine_vertices: torch.Tensor
    pass_vertices: list[torch.Tensor] = field(default_factory=list)
    pass_log_variance: list[torch.Tensor] = field(default_factory=list)
    pass_exit_logit: list[torch.Tensor] = field(default_factory=list)
    passes_used: torch.Tensor | None = None


@dataclass
class LoopState:
    """What a loop pass reads, per sample; every field is ``(B, ...)`` so that the samples still
    inside the loop can be taken row by row (:meth:`rows`).

    Attributes:
        vertices: ``(B, V_f, 3)`` the mesh at the loop's level (``finest_level``), camera frame.
        full: ``(B, V, 3)`` that mesh at full resolution.
        hidden: ``(B, V_f, C)`` the features the previous block or pass carried.
        residual: ``(B, 21, 3)`` the keypoint residual of ``vertices`` (guidance units), or None
            when neither the guidance nor the variance head reads it.
        feature_map: ``(B, C_s, h, w)`` the pyramid level the loop samples.
        K: ``(B, 3, 3)`` crop intrinsics; root ``(B, 3)`` the global stage's wrist;
            condition ``(B, C_g)`` the global image feature.
        evidence: the keypoint head's outputs in guidance units (:meth:`MeshRefiner._prepare_evidence`),
            or None without a keypoint head.
        global_joints: ``(B, 21, 3)`` the global stage's root-relative joints (read by the
            ``'joint_mlp'`` variance head), or None.
        base_full, base_loop: the global stage's mesh at full resolution and at the loop's level.
    """

    vertices: torch.Tensor
    full: torch.Tensor
    hidden: torch.Tensor
    residual: torch.Tensor | None
    feature_map: torch.Tensor
    K: torch.Tensor
    root: torch.Tensor
    condition: torch.Tensor
    evidence: tuple[torch.Tensor, ...] | None
    global_joints: torch.Tensor | None
    base_full: torch.Tensor
    base_loop: torch.Tensor

    def rows(self, index: torch.Tensor) -> "LoopState":
        """The samples ``index`` ``(N,)`` int64."""
        def take(value):
            if value is None:
                return None
            if isinstance(value, tuple):
                return tuple(take(v) for v in value)
            return value.index_select(0, index)

        return LoopState(**{f.name: take(getattr(self, f.name)) for f in dataclasses.fields(self)})


@dataclass
class PassOutput:
    """One loop pass (:meth:`MeshRefiner.loop_pass`): the moved mesh at the loop's level
    ``vertices`` and at full resolution ``full``, the carried features ``hidden``, the moved
    mesh's keypoint ``residual`` (or None), per-joint ``log_variance`` ``(B, 21)`` (metres^2) and
    the ``exit_logit`` ``(B,)``."""

    vertices: torch.Tensor
    full: torch.Tensor
    hidden: torch.Tensor
    residual: torch.Tensor | None
    log_variance: torch.Tensor
    exit_logit: torch.Tensor


def vertex_keypoint_association(rest_keypoints: np.ndarray, vertices: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """For each vertex, the OpenPose keypoint that guides it.

    Args:
        rest_keypoints: ``(21, 3)`` keypoints of the rest mesh, OpenPose order.
        vertices: ``(N, 3)`` rest positions of the vertices to attach.
        weights: ``(N, 16)`` skinning weights of those vertices (MANO joint order).

    Returns:
        ``(N,)`` int64 keypoint ids: the nearest of the keypoints that bound the vertex's
        dominant bone (the bone's joint and its children in OpenPose order).
    """
    openpose_of_mano_joint = np.asarray(OPENPOSE_TO_MANO21)[:16]  # mano21[k] = openpose[this[k]]
    children = {k: [c for c, p in enumerate(OPENPOSE_PARENTS) if p == k] for k in range(NUM_JOINTS)}
    dominant = weights.argmax(axis=1)
    association = np.empty(len(vertices), dtype=np.int64)
    for joint in np.unique(dominant):
        keypoint = int(openpose_of_mano_joint[joint])
        candidates = np.asarray([keypoint, *children[keypoint]])
        rows = np.flatnonzero(dominant == joint)
        distances = np.linalg.norm(vertices[rows, None, :] - rest_keypoints[None, candidates, :], axis=-1)
        association[rows] = candidates[distances.argmin(axis=1)]
    return association


def _level_buffers(model: ManoModel, hierarchy: MeshHierarchy, joint_regressor: np.ndarray) -> list[dict[str, np.ndarray]]:
    """Per hierarchy level: keypoint regressor ``(21, V_l)`` and keypoint association ``(V_l,)``.

    The level-l regressor composes the full-resolution one with the up-sampling maps, so
    keypoints of a coarse mesh are those of the full mesh it up-samples to.
    """
    rest_keypoints = joint_regressor @ model.v_template
    regressor = joint_regressor
    weights = model.weights
    levels = []
    for level in range(hierarchy.num_levels):
        if level > 0:
            regressor = regressor @ hierarchy.up[level - 1].as_scipy().toarray()
            weights = hierarchy.down[level - 1].as_scipy() @ weights
        association = vertex_keypoint_association(rest_keypoints, hierarchy.vertices[level], weights)
        levels.append({"joint_regressor": regressor, "association": association})
    return levels


# per joint, what the variance head reads of the keypoint evidence: the (u, v, depth) residual
# of the guidance, its length, and the head's heatmap spread (in the guidance's pixel unit)
EVIDENCE_CHANNELS = GUIDANCE_CHANNELS + 2
# the joint's root-relative displacement from the global stage's, and its length, in centimetres
DISPLACEMENT_CHANNELS = 4
DISPLACEMENT_SCALE = 100.0
UNCERTAINTY_HIDDEN = 32


class _Heads(nn.Module):
    """Per-pass heads at the loop's level: offsets, per-joint log-variance and the exit logit."""

    def __init__(self, channels: int, offset_scale: float, evidence_channels: int, uncertainty_head: str) -> None:
        super().__init__()
        self.offset_scale = offset_scale
        self.offset = nn.Linear(channels, 3)
        inputs = channels + 3 + evidence_channels
        if uncertainty_head == "linear":
            self.variance = nn.Linear(inputs, 1)
            last = self.variance
        else:
            self.variance = nn.Sequential(
                nn.Linear(inputs + DISPLACEMENT_CHANNELS + NUM_JOINTS, UNCERTAINTY_HIDDEN),
                nn.ReLU(),
                nn.Linear(UNCERTAINTY_HIDDEN, 1),
            )
            last = self.variance[-1]
        self.exit = nn.Linear(channels + 3, 1)
        nn.init.normal_(self.offset.weight, std=1e-3)
        nn.init.zeros_(self.offset.bias)
        nn.init.normal_(last.weight, std=1e-3)
        nn.init.constant_(last.bias, LOG_VARIANCE_INIT)


class MeshRefiner(nn.Module):
    """Coarse-to-fine refinement plus the gated loop (see the module docstring).

    Args:
        model: the (right) hand model whose topology is refined.
        hierarchy: its :class:`MeshHierarchy`.
        joint_regressor: ``(21, V)`` numpy, OpenPose keypoints from full-resolution vertices.
        pyramid_channels: channels of the backbone's pyramid, finest (stride 4) first.
        condition_channels: width of the per-sample global feature.
        config, gate: :class:`RefinementConfig`, :class:`GateConfig`.
    """

    def __init__(
        self,
        model: ManoModel,
        hierarchy: MeshHierarchy,
        joint_regressor: np.ndarray,
        pyramid_channels: tuple[int, ...],
        condition_channels: int,
        config: RefinementConfig,
        gate: GateConfig,
    ) -> None:
        super().__init__()
        if hierarchy.num_levels != len(config.widths):
            raise MeshrecError(f"the mesh hierarchy has {hierarchy.num_levels} levels, refinement.widths {len(config.widths)}")
        self.config = config
        self.gate = gate
        self.num_levels = hierarchy.num_levels
        self.pyramid_index = [min(level, len(pyramid_channels) - 1) for level in range(self.num_levels)]
        guidance = GUIDANCE_CHANNELS if config.keypoint_guidance else 0
        for level, buffers in enumerate(_level_buffers(model, hierarchy, joint_regressor)):
            self.register_buffer(f"regressor_{level}", torch.as_tensor(buffers["joint_regressor"], dtype=torch.float32), persistent=False)
            self.register_buffer(f"association_{level}", torch.as_tensor(buffers["association"]), persistent=False)
        for level in range(self.num_levels - 1):
            self.register_buffer(f"down_index_{level}", torch.tensor(hierarchy.down[level].indices), persistent=False)
            self.register_buffer(f"down_weight_{level}", torch.tensor(hierarchy.down[level].weights, dtype=torch.float32), persistent=False)
            self.register_buffer(f"up_index_{level}", torch.tensor(hierarchy.up[level].indices), persistent=False)
            self.register_buffer(f"up_weight_{level}", torch.tensor(hierarchy.up[level].weights, dtype=torch.float32), persistent=False)
        spirals = [torch.tensor(s) for s in hierarchy.spirals]
        finest = self.finest_level = config.finest_level
        # levels finer than ``finest`` hold an empty module, so a level's weights keep their names
        # (blocks.1.*) whatever finest_level is
        self.blocks = nn.ModuleList()
        self.offset_heads = nn.ModuleList()
        for level in range(self.num_levels):
            if level < finest:
                self.blocks.append(nn.Identity())
                self.offset_heads.append(nn.Identity())
                continue
            carried = config.widths[level + 1] if level + 1 < self.num_levels else 0
            in_channels = pyramid_channels[self.pyramid_index[level]] + 1 + 3 + carried + guidance
            self.blocks.append(SpiralBlock(in_channels, config.widths[level], condition_channels, spirals[level]))
            head = nn.Linear(config.widths[level], 3)
            nn.init.normal_(head.weight, std=1e-3)
            nn.init.zeros_(head.bias)
            self.offset_heads.append(head)
        self.loop_block = None
        if gate.max_passes > 0:
            width = config.widths[finest]
            in_channels = pyramid_channels[self.pyramid_index[finest]] + 1 + 3 + width + guidance
            self.loop_block = SpiralBlock(in_channels, width, condition_channels, spirals[finest])
            evidence = EVIDENCE_CHANNELS if gate.uncertainty_from_evidence else 0
            self.loop_heads = _Heads(width, config.offset_scale, evidence, gate.uncertainty_head)
            if gate.uncertainty_head == "joint_mlp":
                self.register_buffer("joint_identity", torch.eye(NUM_JOINTS), persistent=False)

    # ---------------------------------------------------------------- helpers

    def _down(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Level ``level`` -> ``level + 1``."""
        return apply_sparse_map(x, getattr(self, f"down_index_{level}"), getattr(self, f"down_weight_{level}"))

    def _up(self, x: torch.Tensor, level: int) -> torch.Tensor:
        """Level ``level + 1`` -> ``level``."""
        return apply_sparse_map(x, getattr(self, f"up_index_{level}"), getattr(self, f"up_weight_{level}"))

    def _up_to(self, x: torch.Tensor, level: int, target: int) -> torch.Tensor:
        """Level ``level`` -> the finer level ``target``."""
        for finer in reversed(range(target, level)):
            x = self._up(x, finer)
        return x

    def mesh_levels(self, vertices: torch.Tensor) -> list[torch.Tensor]:
        """A full-resolution mesh ``(B, V, 3)`` at every hierarchy level, finest first."""
        levels = [vertices]
        for level in range(self.num_levels - 1):
            levels.append(self._down(levels[-1], level))
        return levels

    def _keypoints(self, vertices: torch.Tensor, level: int) -> torch.Tensor:
        return getattr(self, f"regressor_{level}").to(vertices) @ vertices

    def _inputs(self, vertices, level, feature_map, K, image_size, root, residual, carried):
        """Per-vertex block inputs at one level: ``(B, V_l, C_in)``; ``residual`` is
        :meth:`_keypoint_residual` of these vertices (None without a keypoint head)."""
        sampled, inside, _ = retrieve_vertex_features(feature_map, vertices, K, image_size)
        parts = [sampled, inside, (vertices - root.unsqueeze(1)) * 10.0]  # decimetres: O(1) inputs
        if carried is not None:
            parts.append(carried)
        if self.config.keypoint_guidance:
            parts.append(self._guidance(vertices, level, residual))
        return torch.cat(parts, dim=-1)

    def _guidance(self, vertices, level, residual) -> torch.Tensor:
        """``(B, V_l, 3)``: per vertex, its keypoint's (u, v, depth) residual, head minus mesh."""
        if residual is None:
            return vertices.new_zeros(vertices.shape[0], vertices.shape[1], GUIDANCE_CHANNELS)
        return residual.index_select(1, getattr(self, f"association_{level}"))

    @staticmethod
    def _prepare_evidence(keypoints, K, image_size) -> tuple[torch.Tensor, ...] | None:
        """The keypoint head's outputs in the guidance's units, once per forward: ``(pixels (B, 21, 2),
        root-relative depth (B, 21), heatmap spread (B, 21), K (B, 3, 3))``, pixels and spread in
        units of 1/16 of the crop (``K``'s pixel rows divided by that unit project into it), depth
        in centimetres, spread 0 where the head gave none; None without keypoints."""
        if keypoints is None:
            return None
        pixels, depth = keypoints[0], keypoints[1]
        height, width = image_size
        unit = K.new_tensor([width, height]) * GUIDANCE_PIXEL_FRACTION
        K_units = torch.cat([K[:, :2] / unit.view(1, 2, 1), K[:, 2:]], dim=1)
        spread = keypoints[2] if len(keypoints) > 2 else None
        spread = depth.new_zeros(depth.shape) if spread is None else spread / (max(image_size) * GUIDANCE_PIXEL_FRACTION)
        return pixels / unit, (depth - depth[:, :1]) * GUIDANCE_DEPTH_SCALE, spread, K_units

    @staticmethod
    def _keypoint_residual(mesh_keypoints, evidence) -> torch.Tensor | None:
        """``(B, 21, 3)``: the keypoint head's (u, v, root-relative depth) minus the mesh's
        (``mesh_keypoints`` ``(B, 21, 3)`` from :meth:`_keypoints`), in units of 1/16 of the crop
        and centimetres; ``evidence`` from :meth:`_prepare_evidence` (None without keypoints: None)."""
        if evidence is None:
            return None
        pixels, depth, _, K_units = evidence
        # A mesh keypoint near the camera plane projects arbitrarily far away; a residual past one
        # crop width says nothing more, and unbounded it sends the blocks' offsets to kilometres.
        crop = 1.0 / GUIDANCE_PIXEL_FRACTION
        residual2d = (pixels - project_points(mesh_keypoints, K_units)).clamp(-crop, crop)  # (B, 21, 2)
        mesh_depth = (mesh_keypoints[..., 2] - mesh_keypoints[..., :1, 2]) * GUIDANCE_DEPTH_SCALE
        return torch.cat([residual2d, (depth - mesh_depth).unsqueeze(-1)], dim=-1)

    @staticmethod
    def _evidence(residual, evidence, like: torch.Tensor) -> torch.Tensor:
        """``(B, 21, EVIDENCE_CHANNELS)``: the keypoint residual, its length and the head's
        heatmap spread (zeros where there is no keypoint head)."""
        if residual is None:
            return like.new_zeros(like.shape[0], NUM_JOINTS, EVIDENCE_CHANNELS)
        return torch.cat([residual, residual.norm(dim=-1, keepdim=True), evidence[2].unsqueeze(-1)], dim=-1)

    # ---------------------------------------------------------------- forward

    def forward(
        self,
        pyramid: list[torch.Tensor],
        base_vertices: torch.Tensor,
        root: torch.Tensor,
        K: torch.Tensor,
        image_size: tuple[int, int],
        condition: torch.Tensor,
        keypoints: tuple[torch.Tensor, ...] | None = None,
        max_passes: int | None = None,
        exit_threshold: float | None = None,
    ) -> RefinementOutput:
        """Refine the parametric mesh: :meth:`coarse_to_fine`, then :meth:`run_loop`.

        Args:
            pyramid: ``[(B, C_s, H/s, W/s)]`` for s = 4, 8, 16, 32.
            base_vertices: ``(B, V, 3)`` the global stage's mesh, camera frame.
            root: ``(B, 3)`` its wrist.
            K: ``(B, 3, 3)`` crop intrinsics; image_size ``(H, W)``.
            condition: ``(B, C)`` global image feature.
            keypoints: the keypoint head's ``(pixels (B, 21, 2), depth (B, 21))`` or
                ``(pixels, depth, heatmap spread (B, 21) in pixels)``, or None.
            max_passes: override of ``gate.max_passes`` (progressive training, fixed-depth runs).
            exit_threshold: override of ``gate.exit_threshold``.
        """
        output, state = self.coarse_to_fine(pyramid, base_vertices, root, K, image_size, condition, keypoints)
        self.run_loop(output, state, image_size, max_passes, exit_threshold)
        return output

    def coarse_to_fine(
        self,
        pyramid: list[torch.Tensor],
        base_vertices: torch.Tensor,
        root: torch.Tensor,
        K: torch.Tensor,
        image_size: tuple[int, int],
        condition: torch.Tensor,
        keypoints: tuple[torch.Tensor, ...] | None = None,
    ) -> tuple[RefinementOutput, LoopState | None]:
        """The blocks from the coarsest level to ``finest_level`` (arguments as :meth:`forward`).
        Returns the output without loop passes and the loop's starting :class:`LoopState`
        (None when the model has no loop)."""
        bases = self.mesh_levels(base_vertices)
        evidence = self._prepare_evidence(keypoints, K, image_size)
        finest = self.finest_level
        level_vertices: list[torch.Tensor] = [None] * self.num_levels  # type: ignore[list-item]
        offset = carried = None
        for level in reversed(range(finest, self.num_levels)):
            vertices = bases[level]
            if offset is not None:
                vertices = vertices + self._up(offset, level)
                carried = self._up(carried, level)
            feature_map = pyramid[self.pyramid_index[level]]
            residual = self._keypoint_residual(self._keypoints(vertices, level), evidence) if self.config.keypoint_guidance else None
            inputs = self._inputs(vertices, level, feature_map, K, image_size, root, residual, carried)
            carried = self.blocks[level](inputs, condition)
            vertices = vertices + self.offset_heads[level](carried) * self.config.offset_scale
            level_vertices[level] = vertices
            offset = vertices - bases[level]
        for level in reversed(range(finest)):
            offset = self._up(offset, level)
            level_vertices[level] = bases[level] + offset
        output = RefinementOutput(level_vertices=level_vertices, coarse_to_fine_vertices=level_vertices[0])
        if self.loop_block is None:
            return output, None
        vertices = level_vertices[finest]
        state = LoopState(
            vertices=vertices,
            full=level_vertices[0],
            hidden=carried,
            residual=self._keypoint_residual(self._keypoints(vertices, finest), evidence) if self._uses_residual else None,
            feature_map=pyramid[self.pyramid_index[finest]],
            K=K,
            root=root,
            condition=condition,
            evidence=evidence,
            global_joints=self._relative_keypoints(bases[finest], finest) if self.gate.uncertainty_head == "joint_mlp" else None,
            base_full=bases[0],
            base_loop=bases[finest],
        )
        return output, state

    @property
    def _uses_residual(self) -> bool:
        """The residual of a mesh feeds a pass's variance head and the next pass's guidance."""
        return self.config.keypoint_guidance or self.gate.uncertainty_from_evidence

    def run_loop(
        self,
        output: RefinementOutput,
        state: LoopState | None,
        image_size: tuple[int, int],
        max_passes: int | None = None,
        exit_threshold: float | None = None,
        loop_pass=None,
        stop_after: int | None = None,
    ) -> LoopState | None:
        """The gated passes at ``finest_level`` from ``state``, appended to ``output`` (each pass's
        mesh at full resolution; ``passes_used`` set). ``loop_pass`` runs one pass like
        :meth:`loop_pass` (the inference copy passes its traced graphs); by default that method.
        At inference a sample leaves when ``p_exit > exit_threshold`` and later passes run on
        the samples still inside only (a threshold >= 1 keeps every sample: p_exit <= 1).

        Passes already in ``output`` must have run on every sample (as :meth:`run_loop` with
        ``stop_after`` runs them), ``state`` being the state after them: the loop goes on from
        there (the inference copy replays the stem and the passes before the gate's first
        decision as one graph). ``stop_after``: run every sample up to this many passes and stop,
        deciding nothing. Returns the state after the last pass run."""
        passes = self.loop_passes(max_passes)
        batch = output.coarse_to_fine_vertices.shape[0]
        done = len(output.pass_vertices)
        if done == 0:
            output.passes_used = torch.zeros(batch, dtype=torch.long, device=output.coarse_to_fine_vertices.device)
        if state is None or passes <= done:
            return state
        threshold = self._exit_threshold(exit_threshold)
        adaptive = stop_after is None and self._can_exit(threshold)
        loop_pass = loop_pass or self.loop_pass
        if done:
            log_variance, exit_logit = output.pass_log_variance[-1], output.pass_exit_logit[-1]
        else:
            log_variance = state.vertices.new_full((batch, NUM_JOINTS), LOG_VARIANCE_INIT)
            exit_logit = state.vertices.new_zeros(batch)
        passes_used = output.passes_used
        active = None  # None: every sample (no index_select needed)
        for step in range(done, passes if stop_after is None else min(stop_after, passes)):
            if adaptive and step > 0:
                stay = torch.sigmoid(exit_logit if active is None else exit_logit.index_select(0, active)) <= threshold
                if not bool(stay.all()):
                    active = (torch.arange(batch, device=passes_used.device) if active is None else active)[stay]
                    if active.numel() == 0:
                        break
            inside = state if active is None else state.rows(active)
            progress = state.vertices.new_full((inside.vertices.shape[0], 1), (step + 1) / passes)
            moved = loop_pass(inside, progress, image_size=image_size)
            if active is None:
                state = dataclasses.replace(state, vertices=moved.vertices, full=moved.full, hidden=moved.hidden, residual=moved.residual)
                log_variance, exit_logit = moved.log_variance, moved.exit_logit
                passes_used = passes_used + 1
            else:
                state = dataclasses.replace(
                    state,
                    vertices=state.vertices.index_copy(0, active, moved.vertices),
                    full=state.full.index_copy(0, active, moved.full),
                    hidden=state.hidden.index_copy(0, active, moved.hidden),
                    residual=None if moved.residual is None else state.residual.index_copy(0, active, moved.residual),
                )
                log_variance = log_variance.index_copy(0, active, moved.log_variance)
                exit_logit = exit_logit.index_copy(0, active, moved.exit_logit)
                passes_used = passes_used.index_add(0, active, torch.ones_like(active))
            output.pass_vertices.append(state.full)
            output.pass_log_variance.append(log_variance)
            output.pass_exit_logit.append(exit_logit)
        output.passes_used = passes_used
        return state

    def _exit_threshold(self, exit_threshold: float | None) -> float:
        """tau for an ``exit_threshold`` override (None: ``gate.exit_threshold``)."""
        return self.gate.exit_threshold if exit_threshold is None else exit_threshold

    def _can_exit(self, threshold: float) -> bool:
        """Whether a sample can leave the loop early: at inference, with an adaptive gate and a
        threshold below 1 (p_exit <= 1 never passes a threshold >= 1)."""
        return self.gate.adaptive and not self.training and not threshold >= 1.0  # a NaN threshold: every sample leaves

    def passes_before_a_decision(self, max_passes: int | None = None, exit_threshold: float | None = None) -> int:
        """How many loop passes every sample runs before the gate can let one leave (arguments as
        :meth:`run_loop`): all of them when none can leave, else the first (0 without a loop)."""
        passes = self.loop_passes(max_passes)
        return min(passes, 1) if self._can_exit(self._exit_threshold(exit_threshold)) else passes

    def loop_passes(self, max_passes: int | None = None) -> int:
        """The loop's depth for a ``max_passes`` override (None: ``gate.max_passes``; 0 without a
        loop or for an override <= 0); an override above ``gate.max_passes`` is an error."""
        if self.loop_block is None:
            return 0
        if max_passes is None:
            return self.gate.max_passes
        if max_passes > self.gate.max_passes:
            raise MeshrecError(f"max_passes={max_passes} exceeds the model's gate.max_passes={self.gate.max_passes}")
        return max(int(max_passes), 0)

    def loop_pass(self, state: LoopState, progress: torch.Tensor, image_size: tuple[int, int]) -> PassOutput:
        """One pass of the shared block on the samples of ``state``; ``progress`` ``(B, 1)`` is
        ``(pass + 1) / passes`` (the exit head reads it)."""
        finest = self.finest_level
        inputs = self._inputs(state.vertices, finest, state.feature_map, state.K, image_size, state.root, state.residual, state.hidden)
        hidden = self.loop_block(inputs, state.condition)
        move = self.loop_heads.offset(hidden) * self.config.offset_scale
        vertices = state.vertices + move
        full = vertices if finest == 0 else state.base_full + self._up_to(vertices - state.base_loop, finest, 0)
        joints = self._keypoints(vertices, finest)  # read by the residual and the variance head
        residual = self._keypoint_residual(joints, state.evidence) if self._uses_residual else None
        log_variance, exit_logit = self._pass_heads(
            joints, hidden, state.root, move, progress, residual, state.evidence, state.global_joints
        )
        return PassOutput(vertices=vertices, full=full, hidden=hidden, residual=residual, log_variance=log_variance, exit_logit=exit_logit)

    def _relative_keypoints(self, vertices: torch.Tensor, level: int) -> torch.Tensor:
        """``(B, 21, 3)`` the keypoints of a level-``level`` mesh minus its wrist (metres)."""
        keypoints = self._keypoints(vertices, level)
        return keypoints - keypoints[:, :1]

    def _pass_heads(self, joints, hidden, root, move, progress, residual, evidence, global_joints):
        """Per-joint log-variance ``(B, 21)`` and exit logit ``(B,)`` after one pass, from the moved
        mesh's keypoints ``joints`` ``(B, 21, 3)`` and carried features ``hidden``; ``residual``
        is the moved mesh's keypoint residual and ``evidence`` :meth:`_prepare_evidence`'s (None
        without a keypoint head), ``global_joints`` the global stage's root-relative joints (read
        by the ``'joint_mlp'`` variance head), ``progress`` ``(B, 1)`` how far the loop is."""
        regressor = getattr(self, f"regressor_{self.finest_level}").to(hidden)
        joint_features = regressor @ hidden  # (B, 21, C): features pooled where each joint is
        joint_positions = (joints - root.unsqueeze(1)) * 10.0
        parts = [joint_features, joint_positions]
        if self.gate.uncertainty_from_evidence:
            parts.append(self._evidence(residual, evidence, like=joints))
        if global_joints is not None:
            displacement = (joints - joints[:, :1] - global_joints) * DISPLACEMENT_SCALE
            parts += [displacement, displacement.norm(dim=-1, keepdim=True), self.joint_identity.expand(joints.shape[0], -1, -1)]
        log_variance = self.loop_heads.variance(torch.cat(parts, -1)).squeeze(-1)
        log_variance = log_variance.clamp(*LOG_VARIANCE_RANGE)
        movement_mm = move.norm(dim=-1).mean(dim=1, keepdim=True) * 1000.0
        summary = torch.cat(
            [joint_features.mean(1), log_variance.mean(1, keepdim=True) - LOG_VARIANCE_INIT, movement_mm,
             progress],
            dim=-1,
        )
        return log_variance, self.loop_heads.exit(summary).squeeze(-1)
