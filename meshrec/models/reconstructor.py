"""``HandMeshReconstructor``: image crop -> hand mesh, with every stage's output kept.

Data flow (docs/architecture.md): backbone pyramid -> global stage (MANO pose, shape, camera ->
mesh V0) and keypoint head (learnable joint groups -> 2D keypoints) -> coarse-to-fine
refinement with pixel-aligned features -> gated loop -> :class:`Prediction`.

Sides: the network reconstructs right hands. A left hand's crop is flipped horizontally (and its
K with it: ``cx -> W - 1 - cx``, skew negated), reconstructed as a right hand, and every output
is mirrored back (``x -> -x`` in 3D, ``u -> W - 1 - u`` in pixels, rotations conjugated by the
reflection). Since the left hand model is the mirror of the right one, the mirrored mesh is
exactly the left hand's; callers and losses only ever see their own camera frame.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import itertools
import os
import weakref
from dataclasses import dataclass, field
from typing import Sequence

import torch
from torch import nn

from manolayer.io import ManoModel, load_mano, mirror_model
from meshrec.errors import MeshrecError
from meshrec.geometry.camera import default_intrinsics, project_points
from meshrec.geometry.mesh_hierarchy import load_or_build_hierarchy
from meshrec.models.backbone import Backbone, BackboneConfig
from meshrec.models.fusion import fold_batch_norms
from meshrec.models.global_stage import GlobalStage, GlobalStageConfig, GlobalStageOutput, joint_regressor_openpose
from meshrec.models.joint_groups import JointGroupsConfig, JointGroupsHead, JointGroupsOutput, heatmap_spread
from meshrec.models.keypoint_decoder import KeypointDecoder, decoder_levels
from meshrec.models.pretrained import load_starting_weights, load_tensors_file
from meshrec.models.prediction import Prediction
from meshrec.models.refinement import GateConfig, LoopState, MeshRefiner, RefinementConfig, RefinementOutput
from meshrec.models.traced import TracedMethod
from meshrec.sides import SIDE_LEFT, side_tensor


@dataclass
class ModelConfig:
    """Everything that defines the network (the part of a training config under ``model:``).

    Attributes:
        hand_model: a MANO-format file (official pickle or the project's ``.npz``) whose
            topology the network outputs; None is the project's CC0 open hand. A left-hand
            file is mirrored to the right (the network works on right hands).
        image_size: the crop size the network is trained for (any multiple of 32 runs).
        channels_last: run convolutions in channels-last memory format (faster on CPUs).
        backbone, global_stage, keypoints, refinement, gate: the parts; each can be switched
            off for ablations (``keypoints.enabled``, ``refinement.enabled``, ``gate.max_passes``).
        weights: starting weights loaded at construction: ``'synthetic-hands'`` (shipped with
            meshrec), a weights file, a checkpoint or a backbone ``state_dict``; every part it
            holds that fits is loaded (:func:`meshrec.models.pretrained.load_starting_weights`).
            None: random weights.
    """

    hand_model: str | None = None
    image_size: int = 128
    channels_last: bool = True
    backbone: BackboneConfig = field(default_factory=BackboneConfig)
    global_stage: GlobalStageConfig = field(default_factory=GlobalStageConfig)
    keypoints: JointGroupsConfig = field(default_factory=JointGroupsConfig)
    refinement: RefinementConfig = field(default_factory=RefinementConfig)
    gate: GateConfig = field(default_factory=GateConfig)
    weights: str | None = None

    def __post_init__(self) -> None:
        if self.image_size < 32 or self.image_size % 32:
            raise MeshrecError(f"model.image_size must be a positive multiple of 32, got {self.image_size}")
        levels = decoder_levels(self.keypoints.feature_stride)
        if len(self.keypoints.decoder_widths) != levels:
            raise MeshrecError(
                f"keypoints.decoder_widths needs {levels} entries to go from stride 32 to keypoints.feature_stride="
                f"{self.keypoints.feature_stride}, got {self.keypoints.decoder_widths}"
            )


@dataclass
class Stem:
    """What the network computes before the gate's first decision (:meth:`HandMeshReconstructor.stem`):
    the crops' ``K`` ``(B, 3, 3)`` (left crops' flipped), the global stage's hand, the keypoint
    head's output (or None), the coarse-to-fine refinement with the passes every sample ran, and
    the loop's state after them (None without refinement or loop)."""

    K: torch.Tensor
    parametric: GlobalStageOutput
    keypoints: JointGroupsOutput | None
    refined: RefinementOutput | None
    loop: LoopState | None


# each model's inference copies (for_inference), by ``traced``: (the model's state it was made
# from, the copy, the copy's device and dtype then: a storage of its own)
_INFERENCE_COPIES: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _storage(tensor: torch.Tensor) -> tuple[int, int]:
    return tensor.data_ptr(), tensor._version


class HandMeshReconstructor(nn.Module):
    """The full network (see the module docstring).

    Args:
        config: :class:`ModelConfig` (defaults: the open hand, 128 x 128, everything on).
        hierarchy_cache_dir: where the mesh hierarchy is cached (default: the user cache).
    """

    def __init__(self, config: ModelConfig | None = None, hierarchy_cache_dir: str | None = None) -> None:
        super().__init__()
        self.config = config = config or ModelConfig()
        model = load_mano(config.hand_model)
        if model.side == "left":
            model = mirror_model(model)
        self.hand_model: ManoModel = model
        regressor = joint_regressor_openpose(model)
        self.register_buffer("joint_regressor", torch.as_tensor(regressor, dtype=torch.float32), persistent=False)
        self.register_buffer("faces", torch.as_tensor(model.faces, dtype=torch.long), persistent=False)
        self.backbone = Backbone(config.backbone)
        channels = self.backbone.out_channels
        self.global_stage = GlobalStage(channels[-1], model, config.global_stage, self.joint_regressor)
        self.keypoint_head = self.keypoint_decoder = None
        if config.keypoints.enabled:
            self.keypoint_decoder = KeypointDecoder(channels, config.keypoints.decoder_widths)
            decoded = config.keypoints.decoder_widths[-1] if config.keypoints.decoder_widths else channels[-1]
            self.keypoint_head = JointGroupsHead(decoded, config.keypoints)
        self.refiner = None
        if config.refinement.enabled:
            hierarchy = load_or_build_hierarchy(
                model.v_template, model.faces, factors=config.refinement.level_factors,
                spiral_length=config.refinement.spiral_length, cache_dir=hierarchy_cache_dir,
            )
            self.refiner = MeshRefiner(model, hierarchy, regressor, channels, channels[-1], config.refinement, config.gate)
        if config.weights:
            load_starting_weights(self, config.weights)
        self._set_memory_format()
        self.inference_only = False
        self._traced: dict[str, TracedMethod] | None = None

    def _set_memory_format(self) -> None:
        if self.config.channels_last:
            self.backbone.to(memory_format=torch.channels_last)
            if self.keypoint_head is not None:
                self.keypoint_decoder.to(memory_format=torch.channels_last)
                self.keypoint_head.to(memory_format=torch.channels_last)

    def for_inference(self, traced: bool = True) -> "HandMeshReconstructor":
        """An eval-mode copy for prediction: each batch norm folded into the convolution before it
        (:mod:`meshrec.models.fusion`), a keypoint head that computes each joint's selected group
        only (``JointGroupsHead.forward``'s ``selected_only``: its per-group outputs are None),
        and, with ``traced``, the stem (:meth:`stem`, with the passes before the gate's first
        decision) and the loop pass replayed from TorchScript graphs, each traced at the third call
        with the same input shapes, loop depth and gate setting (whether a sample may leave early
        sets how many passes the stem runs; :mod:`meshrec.models.traced`; calls that need gradients
        run eagerly). The same outputs to float rounding, faster
        (docs/benchmarks.md); where it replays graphs it runs in ``torch.inference_mode``, so its
        outputs are inference tensors (``.clone()`` one to use it in autograd). The copy cannot
        train; train the model it was made from. A copy is returned as is.

        The copy is kept (as long as this model lives) and returned again, traced graphs and all,
        until this model's weights, buffers, device, dtype or config change: each
        ``predict_images`` / ``evaluate`` call asks for one, and making it costs ~15-50 ms,
        several batch-1 forwards, and its graphs are traced anew."""
        if self.inference_only:
            return self
        key = self._inference_key()
        kept = _INFERENCE_COPIES.setdefault(self, {}).get(traced)
        if kept is not None and kept[0] == key and _storage(kept[1].joint_regressor) == kept[2]:
            return kept[1]  # neither this model nor the copy's device and dtype changed since
        with torch.inference_mode(False):  # asked for inside inference mode, its tensors would be inference tensors
            inference = self._make_inference_copy(traced)
        _INFERENCE_COPIES[self][traced] = (key, inference, _storage(inference.joint_regressor))
        return inference

    def _inference_key(self) -> tuple:
        """What an inference copy depends on: the config, and every parameter's and buffer's
        storage and version (in-place updates such as optimiser steps and ``load_state_dict``
        bump the version; ``.to()`` / ``.double()`` replace the storage)."""
        return repr(self.config), tuple(_storage(t) for t in itertools.chain(self.parameters(), self.buffers()))

    def _make_inference_copy(self, traced: bool) -> "HandMeshReconstructor":
        inference = copy.deepcopy(self).eval()
        fold_batch_norms(inference)
        inference._set_memory_format()
        inference.inference_only = True
        if traced:
            inference._traced = {"stem": TracedMethod(inference, "stem")}
            if inference.refiner is not None:
                inference._traced["loop_pass"] = TracedMethod(inference.refiner, "loop_pass", pad_batch=True)
        return inference

    def _apply(self, fn, recurse=True):
        # traced graphs hold the weights as they were: new devices, dtypes or values trace anew
        for method in (self.__dict__.get("_traced") or {}).values():
            method.clear()
        return super()._apply(fn, recurse)

    def train(self, mode: bool = True) -> "HandMeshReconstructor":
        if mode and getattr(self, "inference_only", False):
            raise MeshrecError(
                "this model is an inference copy (for_inference() folded its batch norms into the convolutions) "
                "and cannot train; train the model it was made from"
            )
        return super().train(mode)

    @property
    def num_vertices(self) -> int:
        return self.hand_model.num_vertices

    @classmethod
    def from_checkpoint(
        cls, path: str | os.PathLike, device: torch.device | str = "cpu", hierarchy_cache_dir: str | None = None
    ) -> "HandMeshReconstructor":
        """The network of a training checkpoint (``meshrec train``'s ``last.ckpt`` / ``best.ckpt``),
        in eval mode on ``device``. The configuration is read from the checkpoint itself."""
        checkpoint = load_tensors_file(path, "checkpoint")
        try:
            model_config = checkpoint["hyper_parameters"]["config"]["model"]
            state = checkpoint["state_dict"]
        except (KeyError, TypeError):
            raise MeshrecError(f"{path} is not a meshrec training checkpoint (no hyper_parameters.config.model / state_dict)") from None
        config = model_config_of_file(model_config)
        model = cls(config, hierarchy_cache_dir=hierarchy_cache_dir)
        weights = {key[len("model."):]: value for key, value in state.items() if key.startswith("model.")}
        model.load_state_dict(weights)
        return model.to(device).eval()

    @classmethod
    def load(cls, source: str | os.PathLike | None = None, device: torch.device | str = "cpu") -> "HandMeshReconstructor":
        """A ready model in eval mode: ``None`` is meshrec's bundled ``'synthetic-hands'`` model; a
        training checkpoint (``last.ckpt`` / ``best.ckpt``) or a whole-model weights file
        (``meshrec export-weights``) is read with the settings it records."""
        from meshrec.models.pretrained import BUNDLED_WEIGHTS

        if source is None or str(source) in BUNDLED_WEIGHTS:
            return cls.from_weights(source or "synthetic-hands", device=device)
        content = load_tensors_file(source, "checkpoint or weights file")
        if isinstance(content, dict) and "hyper_parameters" in content:
            return cls.from_checkpoint(source, device=device)
        return cls.from_weights(source, device=device)

    @classmethod
    def from_weights(
        cls, name_or_path: str | os.PathLike = "synthetic-hands", device: torch.device | str = "cpu",
        hierarchy_cache_dir: str | None = None,
    ) -> "HandMeshReconstructor":
        """The whole network of a weights file (``meshrec export-weights``; by default the bundled
        ``'synthetic-hands'`` model), built with the settings its ``meta`` records, every part
        loaded, in eval mode on ``device``. Files that hold only some parts (a backbone) are
        starting weights for training (``model.weights``), not models: they are refused."""
        from meshrec.models.pretrained import read_weights_file

        state, meta, path = read_weights_file(name_or_path)
        if not isinstance(meta.get("model"), dict):
            raise MeshrecError(f"{path} records no model settings (meta.model); load it with model.weights in a training config")
        config = model_config_of_file(meta["model"])
        model = cls(config, hierarchy_cache_dir=hierarchy_cache_dir)
        expected = set(model.state_dict())
        missing = sorted(expected - set(state))
        if missing:
            raise MeshrecError(
                f"{path} is not a whole model: it lacks {len(missing)} weights (e.g. {missing[:3]}); "
                "it can start a training run (model.weights) but not predict"
            )
        # float16 files load into the float32 model; integer buffers (BN counters) stay as they are
        model.load_state_dict({key: value.float() if value.is_floating_point() else value
                               for key, value in state.items() if key in expected})
        return model.to(device).eval()

    @torch.no_grad()
    def predict(self, images: torch.Tensor, K: torch.Tensor | None = None, side=None, **kwargs) -> Prediction:
        """Inference: :meth:`forward` in eval mode without gradients (the gate decides the depth)."""
        was_training = self.training
        self.eval()
        try:
            return self(images, K, side, **kwargs)
        finally:
            self.train(was_training)

    def mesh_levels(self, vertices: torch.Tensor) -> list[torch.Tensor]:
        """A full-resolution mesh ``(B, V, 3)`` down-sampled to every refinement level, finest
        first (to compare label meshes with ``Prediction.level_vertices``)."""
        return self.refiner.mesh_levels(vertices) if self.refiner is not None else [vertices]

    def forward(
        self,
        images: torch.Tensor,
        K: torch.Tensor | None = None,
        side: str | Sequence | torch.Tensor | None = None,
        *,
        max_passes: int | None = None,
        exit_threshold: float | None = None,
        temperature: float | None = None,
    ) -> Prediction:
        """Reconstruct a batch of crops.

        Args:
            images: ``(B, 3, H, W)`` RGB in [0, 1], floating point in the model's dtype, H and W
                multiples of 32.
            K: ``(B, 3, 3)`` or ``(3, 3)`` intrinsics of the crops in pixels; None uses
                :func:`~meshrec.geometry.camera.default_intrinsics` (25 degree field of view).
            side: 'right' / 'left' for all, or ``(B,)`` of 0/1 or names; None is right.
            max_passes: run at most this many loop passes (progressive training, fixed depth).
            exit_threshold: override the gate's tau at inference.
            temperature: Gumbel-softmax temperature of the keypoint head (training).
        """
        images, K, side = self.check_inputs(images, K, side)
        # the inference copy replays traced graphs where nothing needs gradients (meshrec.models.traced),
        # in inference mode: no autograd bookkeeping per operation (~10 % at batch 1)
        traced = self._traced if temperature is None and not torch.is_grad_enabled() else None
        with torch.inference_mode() if traced else contextlib.nullcontext():
            return self._reconstruct(images, K, side, max_passes, exit_threshold, temperature, traced)

    def _reconstruct(self, images, K, side, max_passes, exit_threshold, temperature, traced) -> Prediction:
        """:meth:`forward` on checked inputs; ``traced``: the inference copy's graphs, or None."""
        image_size = tuple(images.shape[-2:])
        left = side == SIDE_LEFT
        any_left = bool(left.any())
        passes = fixed_passes = 0
        if self.refiner is not None:
            passes = self.refiner.loop_passes(max_passes)
            fixed_passes = self.refiner.passes_before_a_decision(passes, exit_threshold)
        stem = (traced["stem"] if traced else self.stem)(
            images, K, left, any_left=any_left, temperature=temperature, fixed_passes=fixed_passes, max_passes=passes
        )
        K, parametric, keypoints = stem.K, stem.parametric, stem.keypoints
        vertices = parametric.vertices
        level_vertices, pass_vertices, pass_log_variance, pass_exit_logit = [], [], [], []
        passes_used = torch.zeros(images.shape[0], dtype=torch.long, device=images.device)
        joint_variance = None
        if stem.refined is not None:
            refined = stem.refined
            # the passes the gate decides on (none at a fixed depth: the stem ran them all)
            self.refiner.run_loop(refined, stem.loop, image_size, passes, exit_threshold,
                                  loop_pass=traced["loop_pass"] if traced else None)
            level_vertices = refined.level_vertices
            pass_vertices, pass_log_variance, pass_exit_logit = refined.pass_vertices, refined.pass_log_variance, refined.pass_exit_logit
            passes_used = refined.passes_used
            vertices = pass_vertices[-1] if pass_vertices else refined.coarse_to_fine_vertices
            if pass_log_variance:
                joint_variance = pass_log_variance[-1].exp()
        joints = self.joint_regressor.to(vertices) @ vertices
        prediction = Prediction(
            vertices=vertices,
            joints=joints,
            joints2d=project_points(joints, K),
            root=parametric.root,
            joint_variance=joint_variance,
            passes_used=passes_used,
            side=side,
            K=K,
            image_size=image_size,
            global_vertices=parametric.vertices,
            global_joints=parametric.joints,
            global_rotations=parametric.rotations,
            betas=parametric.betas,
            camera=parametric.camera,
            faces=self.faces,
            level_vertices=level_vertices,
            pass_vertices=pass_vertices,
            pass_log_variance=pass_log_variance,
            pass_exit_logit=pass_exit_logit,
            keypoints2d=keypoints.joints2d if keypoints is not None else None,
            keypoint_depth=keypoints.depth if keypoints is not None else None,
            keypoint_head=keypoints,
        )
        return mirror_left(prediction, left) if any_left else prediction

    def stem(
        self, images: torch.Tensor, K: torch.Tensor, left: torch.Tensor, any_left: bool, temperature: float | None = None,
        fixed_passes: int = 0, max_passes: int | None = None,
    ) -> Stem:
        """Everything before the gate's first decision, on checked inputs (:meth:`check_inputs`):
        left crops flipped (``left`` ``(B,)`` bool, ``any_left`` whether any is set), the backbone,
        the global stage, the keypoint head, the coarse-to-fine refinement and the first
        ``fixed_passes`` loop passes of ``max_passes`` (every sample runs them; the inference copy
        replays all of it as one graph)."""
        height, width = images.shape[-2:]
        image_size = (height, width)
        if any_left:
            images = torch.where(left.view(-1, 1, 1, 1), images.flip(-1), images)
            K = torch.where(left.view(-1, 1, 1), flip_intrinsics(K, width), K)
        if self.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        pyramid = self.backbone(images)
        pooled = pyramid[-1].mean(dim=(2, 3))
        parametric = self.global_stage(pyramid[-1], K, image_size)
        keypoints = None
        if self.keypoint_head is not None:
            keypoints = self.keypoint_head(self.keypoint_decoder(pyramid), temperature=temperature, selected_only=self.inference_only)
        refined = loop = None
        if self.refiner is not None:
            refined, loop = self.refiner.coarse_to_fine(
                pyramid, parametric.vertices, parametric.root, K, image_size, pooled,
                keypoints=None if keypoints is None else (
                    keypoints.joints2d.detach(), keypoints.depth.detach(),
                    heatmap_spread(keypoints.heatmaps.detach(), self.config.keypoints.feature_stride),
                ),
            )
            if fixed_passes:
                loop = self.refiner.run_loop(refined, loop, image_size, max_passes, stop_after=fixed_passes)
        return Stem(K=K, parametric=parametric, keypoints=keypoints, refined=refined, loop=loop)

    def check_inputs(self, images, K, side) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Validate and normalise the inputs of :meth:`forward` (errors say expected vs actual)."""
        if not isinstance(images, torch.Tensor):
            raise MeshrecError(f"images must be a torch.Tensor (B, 3, H, W), got {type(images).__name__}")
        if images.ndim != 4 or images.shape[1] != 3:
            raise MeshrecError(
                f"images must have shape (B, 3, H, W) with 3 RGB channels, got {tuple(images.shape)}"
                + ("; add a batch dimension with images[None]" if images.ndim == 3 else "")
            )
        dtype = self.joint_regressor.dtype
        if images.dtype != dtype:
            hint = " (convert 8-bit images with images.float() / 255)" if not images.is_floating_point() else ""
            raise MeshrecError(f"images must be {dtype} in [0, 1] like the model's weights, got {images.dtype}{hint}")
        height, width = images.shape[-2:]
        if height < 32 or width < 32 or height % 32 or width % 32:
            raise MeshrecError(
                f"image height and width must be positive multiples of 32 (the pyramid's coarsest stride), "
                f"got {height} x {width}; resize or crop to e.g. {self.config.image_size} x {self.config.image_size}"
            )
        if images.shape[0] == 0:
            raise MeshrecError("images is an empty batch (B = 0)")
        if not bool(torch.isfinite(images).all()):
            raise MeshrecError("images contain NaN or Inf; check the image loading / augmentation that produced them")
        batch = images.shape[0]
        if K is None:
            K = default_intrinsics((height, width), batch=batch, dtype=images.dtype, device=images.device)
        else:
            if not isinstance(K, torch.Tensor):
                K = torch.as_tensor(K)
            if K.shape == (3, 3):
                K = K.expand(batch, 3, 3)
            if K.shape != (batch, 3, 3):
                raise MeshrecError(f"K must have shape ({batch}, 3, 3) or (3, 3) for {batch} images, got {tuple(K.shape)}")
            K = K.to(dtype=images.dtype, device=images.device)
            if not bool(torch.isfinite(K).all()) or bool((K[:, 0, 0] <= 0).any() or (K[:, 1, 1] <= 0).any()):
                raise MeshrecError("K must be finite with positive focal lengths K[:, 0, 0] and K[:, 1, 1]")
        return images, K, side_tensor(side, batch, images.device)


def model_config_of_file(settings: dict) -> ModelConfig:
    """The :class:`ModelConfig` recorded in a checkpoint or weights file, read as the design it was
    written with: files hold every setting of their time, so a setting they lack is one added
    later, and it takes the value that reproduces the earlier network. ``weights`` is cleared (the
    file holds every weight; the file its run started from may not exist here)."""
    from meshrec.config import config_from_dict

    settings = dict(settings)
    if isinstance(settings.get("backbone"), dict) and "weights" in settings["backbone"]:
        # from before model.weights, the starting weights were kept under backbone
        settings["backbone"] = {k: v for k, v in settings["backbone"].items() if k != "weights"}
    earlier_design = {
        "refinement": {"finest_level": 0},  # blocks and loop on the full mesh
        "gate": {"uncertainty_from_evidence": False,  # sigma from features and positions only
                 "uncertainty_head": "linear"},  # one linear map shared by the joints
    }
    for part, defaults in earlier_design.items():
        settings[part] = {**defaults, **(settings.get(part) or {})}
    config = config_from_dict(ModelConfig, settings, where="model")
    config.weights = None
    return config


def flip_intrinsics(K: torch.Tensor, width: int) -> torch.Tensor:
    """Intrinsics of the horizontally flipped image seeing the x-mirrored scene.

    ``u' = W - 1 - u`` for a point ``(x, y, z)`` equals the projection of ``(-x, y, z)`` with
    ``cx' = W - 1 - cx`` and the skew negated. ``(B, 3, 3) -> (B, 3, 3)``.
    """
    flipped = K.clone()
    flipped[:, 0, 2] = (width - 1) - K[:, 0, 2]
    flipped[:, 0, 1] = -K[:, 0, 1]
    return flipped


def mirror_points(points: torch.Tensor, left: torch.Tensor) -> torch.Tensor:
    """``(B, ..., 3)`` camera-frame points with x negated for the samples flagged ``left`` ``(B,)``:
    between a left hand's frame and the mirrored (right-hand) frame the network works in."""
    mask = left.view(-1, *([1] * (points.ndim - 1)))
    return torch.where(mask, points * points.new_tensor([-1.0, 1.0, 1.0]), points)


def mirror_pixels(pixels: torch.Tensor, left: torch.Tensor, width: int) -> torch.Tensor:
    """``(B, ..., 2)`` pixels with ``u -> width - 1 - u`` for the samples flagged ``left``: the
    same points in the horizontally flipped image (:func:`mirror_points` seen through
    :func:`flip_intrinsics`)."""
    mask = left.view(-1, *([1] * (pixels.ndim - 1)))
    flipped = torch.stack([(width - 1) - pixels[..., 0], pixels[..., 1]], dim=-1)
    return torch.where(mask, flipped, pixels)


def mirror_left(prediction: Prediction, left: torch.Tensor) -> Prediction:
    """Mirror the outputs of the samples flagged ``left`` back into their own camera frame."""
    width = prediction.image_size[1]
    points = lambda t: mirror_points(t, left)  # noqa: E731
    pixels = lambda t: mirror_pixels(t, left, width)  # noqa: E731
    reflection = torch.diag(prediction.vertices.new_tensor([-1.0, 1.0, 1.0]))
    rotations = torch.where(
        left.view(-1, 1, 1, 1), reflection @ prediction.global_rotations @ reflection, prediction.global_rotations
    )
    keypoint_head = prediction.keypoint_head
    if keypoint_head is not None:
        keypoint_head = dataclasses.replace(
            keypoint_head,
            joints2d=pixels(keypoint_head.joints2d),
            group_joints2d=None if keypoint_head.group_joints2d is None else pixels(keypoint_head.group_joints2d),
            heatmaps=torch.where(left.view(-1, 1, 1, 1), keypoint_head.heatmaps.flip(-1), keypoint_head.heatmaps),
        )
    return dataclasses.replace(
        prediction,
        vertices=points(prediction.vertices),
        joints=points(prediction.joints),
        joints2d=pixels(prediction.joints2d),
        root=points(prediction.root.unsqueeze(1)).squeeze(1),
        K=torch.where(left.view(-1, 1, 1), flip_intrinsics(prediction.K, width), prediction.K),
        global_vertices=points(prediction.global_vertices),
        global_joints=points(prediction.global_joints),
        global_rotations=rotations,
        level_vertices=[points(v) for v in prediction.level_vertices],
        pass_vertices=[points(v) for v in prediction.pass_vertices],
        keypoints2d=keypoint_head.joints2d if keypoint_head is not None else None,
        keypoint_head=keypoint_head,
    )
