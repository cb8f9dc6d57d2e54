"""The refiner's oracle test: can the refinement fix a nearly right mesh?

The network's other parts are frozen; the refiner alone is trained to take a *start mesh*, the
true hand (pose, shape, wrist) plus noise, drawn afresh every step, back to the true mesh. What
it may read is chosen by ``guidance``:

- ``'head'``: the network's own keypoint head on the image (what it has at inference);
- ``'truth'``: the true 2D keypoints and root-relative depths (an upper bound);
- ``'none'``: image features only.

Errors are reported in the camera frame and root-aligned (wrist subtracted), in millimetres, for
the start mesh, after the coarse-to-fine stage and after every loop pass. A refiner that reads
its evidence must cut them; one that learned to leave meshes alone (zero offsets) does not.
``benchmarks/bench_refiner_oracle.py`` runs it on rendered hands with a trained network; a small
version with the true keypoints runs in the test suite.

Only right hands are used (the refiner works on right hands; left ones are mirrored before it).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from manolayer import ManoLayer
from meshrec.errors import MeshrecError
from meshrec.models.refinement import RefinementOutput

GUIDANCE_SOURCES = ("head", "truth", "none")


@dataclass
class OracleNoise:
    """How far start meshes are from the truth.

    Attributes:
        finger_rad: std of the noise added to each finger joint's axis-angle (radians).
        orient_rad: std of the noise added to the global orientation (radians).
        shift_m: std of the wrist's shift per axis (metres).
    """

    finger_rad: float = 0.16
    orient_rad: float = 0.04
    shift_m: float = 0.004


def start_meshes(
    layer: ManoLayer, joint_regressor: torch.Tensor, mano_pose: torch.Tensor, betas: torch.Tensor,
    true_root: torch.Tensor, noise: OracleNoise, generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Perturbed meshes ``(B, V, 3)`` and their wrists ``(B, 3)``, camera frame.

    Args:
        layer: the right hand's layer with ``use_pca=False, flat_hand_mean=True`` (the labels'
            convention).
        joint_regressor: ``(21, V)`` OpenPose keypoints from vertices.
        mano_pose: ``(B, 48)`` true axis-angles, global orientation first; betas ``(B, 10)``.
        true_root: ``(B, 3)`` the true wrist (keypoint 0).
        noise: :class:`OracleNoise`; all zero gives back the true mesh (placed by the
            regressed wrist: within 1 mm of the label's in the camera frame).
    """
    batch = mano_pose.shape[0]

    def normal(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=generator).to(mano_pose)

    orient = mano_pose[:, :3] + noise.orient_rad * normal(batch, 3)
    fingers = mano_pose[:, 3:] + noise.finger_rad * normal(batch, 45)
    vertices = layer(global_orient=orient, hand_pose=fingers, betas=betas).vertices
    wrist = (joint_regressor.to(vertices) @ vertices)[:, 0]
    root = true_root + noise.shift_m * normal(batch, 3)
    return vertices - (wrist - root).unsqueeze(1), root


def keypoint_evidence(joints2d: torch.Tensor, joints3d: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The refiner's ``keypoints`` input from labels: pixels ``(B, 21, 2)``, root-relative depth ``(B, 21)``."""
    return joints2d, joints3d[..., 2] - joints3d[..., :1, 2]


def refine_start(
    model, images: torch.Tensor, K: torch.Tensor, start: torch.Tensor, root: torch.Tensor, guidance: str,
    true_keypoints: tuple[torch.Tensor, torch.Tensor] | None = None, max_passes: int | None = None,
    exit_threshold: float | None = None,
) -> RefinementOutput:
    """Run ``model``'s refiner from ``start`` (right hands); the backbone and head run without gradients.
    ``exit_threshold=1.0`` runs every loop pass in eval mode too."""
    if guidance not in GUIDANCE_SOURCES:
        raise MeshrecError(f"guidance must be one of {GUIDANCE_SOURCES}, got {guidance!r}")
    if model.refiner is None:
        raise MeshrecError("the model has no refiner (model.refinement.enabled is false)")
    with torch.no_grad():
        if model.config.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        pyramid = model.backbone(images)
        keypoints = None
        if guidance == "head":
            head = model.keypoint_head(model.keypoint_decoder(pyramid))
            keypoints = (head.joints2d, head.depth)
        elif guidance == "truth":
            if true_keypoints is None:
                raise MeshrecError("guidance='truth' needs true_keypoints")
            keypoints = true_keypoints
    pooled = pyramid[-1].mean(dim=(2, 3))
    image_size = tuple(images.shape[-2:])
    return model.refiner(pyramid, start, root, K, image_size, pooled, keypoints=keypoints,
                         max_passes=max_passes, exit_threshold=exit_threshold)


def stage_meshes(output: RefinementOutput) -> dict[str, torch.Tensor]:
    """``coarse_to_fine``, ``pass_1`` ... of a refinement output, each ``(B, V, 3)``."""
    stages = {"coarse_to_fine": output.coarse_to_fine_vertices}
    stages.update({f"pass_{i}": v for i, v in enumerate(output.pass_vertices, start=1)})
    return stages


def mesh_errors_mm(vertices: torch.Tensor, truth: torch.Tensor, joint_regressor: torch.Tensor) -> tuple[float, float]:
    """Mean vertex error (mm) in the camera frame and root-aligned (each mesh's wrist subtracted)."""
    vertices, truth = vertices.detach(), truth.detach()
    regressor = joint_regressor.to(vertices)
    camera = (vertices - truth).norm(dim=-1).mean()
    aligned = (vertices - (regressor @ vertices)[:, :1]) - (truth - (regressor @ truth)[:, :1])
    return float(camera) * 1000.0, float(aligned.norm(dim=-1).mean()) * 1000.0


def oracle_loss(output: RefinementOutput, truth: torch.Tensor, mesh_levels) -> torch.Tensor:
    """L1 of every level of the coarse-to-fine stage and of every loop pass against the truth."""
    targets = mesh_levels(truth)
    terms = [(level - target).abs().mean() for level, target in zip(output.level_vertices, targets)]
    terms += [(vertices - truth).abs().mean() for vertices in output.pass_vertices]
    return torch.stack(terms).sum()
