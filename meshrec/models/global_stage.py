"""The parametric (global) stage: pooled image features -> MANO pose, shape and camera -> mesh.

It gives the refinement a plausible hand to start from. The hand is posed by
:class:`manolayer.ManoLayer` in its own frame, then placed in the camera frame at a root
(wrist) position recovered from the crop's intrinsics:

- the network predicts the wrist's pixel position ``(u, v)`` as an offset from the crop centre
  in units of half the crop size, and the hand's apparent size ``a`` as a fraction of the
  crop's longer side (``a = 0.5 exp(s)``, so ``s = 0`` is a hand spanning half the crop);
- the depth follows from the pinhole model, ``z = f * hand_size_m / (a * max(H, W))`` with
  ``f`` the mean focal length of K and ``hand_size_m`` a typical hand extent (0.2 m);
- the root is ``z K^-1 (u, v, 1)``.

Predicting image quantities rather than metric depth keeps the network independent of the
camera: the same crop seen through another K gives another depth, as it should. When a crop's
real K is unknown, :func:`meshrec.geometry.camera.default_intrinsics` (25 degree field of view)
is used, and the depth is then only as right as that guess; root-relative shape is unaffected.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from manolayer import ManoLayer
from manolayer.io import ManoModel
from manolayer.joints import mano_to_openpose
from manolayer.rotations import axis_angle_to_matrix, matrix_to_rot6d, rot6d_to_matrix
from meshrec.errors import MeshrecError


@dataclass
class GlobalStageConfig:
    """Attributes:
        hidden: width of the MLP on the pooled features.
        pose_param: ``'rot6d'`` (a 6D rotation per joint, the default) or ``'pca'`` (axis-angle
            global orientation + ``pca_components`` pose PCA coefficients).
        pca_components: number of PCA coefficients when ``pose_param='pca'``.
        hand_size_m: the hand extent (metres) used to turn apparent size into depth.
    """

    hidden: int = 256
    pool_grid: int = 4
    pose_param: str = "rot6d"
    pca_components: int = 12
    hand_size_m: float = 0.2

    def __post_init__(self) -> None:
        if self.pose_param not in ("rot6d", "pca"):
            raise MeshrecError(f"global_stage.pose_param must be 'rot6d' or 'pca', got {self.pose_param!r}")
        if self.hidden < 1 or self.pool_grid < 1 or self.pca_components < 1 or not self.hand_size_m > 0:
            raise MeshrecError(
                f"global_stage needs hidden >= 1, pool_grid >= 1, pca_components >= 1, hand_size_m > 0; got "
                f"{self.hidden}, {self.pool_grid}, {self.pca_components}, {self.hand_size_m}"
            )


def joint_regressor_openpose(model: ManoModel) -> np.ndarray:
    """``(21, V)`` matrix giving the 21 OpenPose keypoints as linear functions of the vertices.

    MANO's 16 joints come from ``J_regressor``, the 5 fingertips are single vertices. Applying
    it to any mesh of the model's topology (refined meshes included) gives keypoints consistent
    with the mesh, which is how mesh-regressing methods report joints.
    """
    tips = np.zeros((5, model.num_vertices))
    tips[np.arange(5), np.asarray(model.fingertip_ids)] = 1.0
    return mano_to_openpose(torch.from_numpy(model.J_regressor), torch.from_numpy(tips)).numpy()


def root_from_camera(camera: torch.Tensor, K: torch.Tensor, image_size: tuple[int, int], hand_size_m: float) -> torch.Tensor:
    """The wrist position in the camera frame from the predicted image-space camera.

    Args:
        camera: ``(B, 3)``: ``(du, dv, s)``; the wrist projects to the crop centre plus
            ``(du, dv)`` half-crop sizes, and the hand spans ``0.5 exp(s)`` of the longer side.
        K: ``(B, 3, 3)`` crop intrinsics.
        image_size: ``(H, W)``.
        hand_size_m: typical hand extent, metres.

    Returns:
        ``(B, 3)`` camera frame, metres.
    """
    height, width = image_size
    half = camera.new_tensor([width / 2.0, height / 2.0])
    centre = camera.new_tensor([(width - 1) / 2.0, (height - 1) / 2.0])
    uv = centre + camera[:, :2] * half
    apparent = 0.5 * torch.exp(camera[:, 2].clamp(-6.0, 6.0)) * max(height, width)
    focal = 0.5 * (K[:, 0, 0] + K[:, 1, 1])
    depth = focal * hand_size_m / apparent
    homogeneous = torch.cat([uv, torch.ones_like(uv[:, :1])], dim=1)
    rays = torch.linalg.solve(K, homogeneous.unsqueeze(-1)).squeeze(-1)  # K^-1 (u, v, 1): z component is 1
    return rays * depth.unsqueeze(1)


@dataclass
class GlobalStageOutput:
    """The parametric hand.

    Attributes:
        vertices: ``(B, V, 3)`` camera frame, metres.
        joints: ``(B, 21, 3)`` OpenPose order, regressed from ``vertices``.
        root: ``(B, 3)`` wrist position, camera frame.
        camera: ``(B, 3)`` raw camera prediction ``(du, dv, s)`` (see :func:`root_from_camera`).
        rotations: ``(B, 16, 3, 3)`` local joint rotations in MANO joint order (index 0 is the
            global orientation in the camera frame).
        betas: ``(B, S)`` shape coefficients.
    """

    vertices: torch.Tensor
    joints: torch.Tensor
    root: torch.Tensor
    camera: torch.Tensor
    rotations: torch.Tensor
    betas: torch.Tensor


class GlobalStage(nn.Module):
    """MLP on grid-pooled features -> MANO parameters and camera -> posed mesh in the camera frame.

    Args:
        in_channels: channels of the feature map it reads (the pyramid's coarsest level).
        model: the (right) hand model.
        config: :class:`GlobalStageConfig`.
        joint_regressor: ``(21, V)`` from :func:`joint_regressor_openpose`.
    """

    def __init__(self, in_channels: int, model: ManoModel, config: GlobalStageConfig, joint_regressor: torch.Tensor) -> None:
        super().__init__()
        self.config = config
        use_pca = config.pose_param == "pca"
        if use_pca and model.hands_components is None:
            raise MeshrecError(f"global_stage.pose_param='pca' needs a model with pose PCA; {model.source} has none")
        # rot6d: absolute rotations (flat mean); pca: coefficients around the model's mean pose
        pca = {"num_pca_comps": config.pca_components} if use_pca else {}
        self.mano = ManoLayer(model, use_pca=use_pca, flat_hand_mean=not use_pca, validate=False, **pca)
        self.num_betas = model.num_betas
        num_joints = model.num_joints
        pose_width = 3 + config.pca_components if use_pca else 6 * num_joints
        self.mlp = nn.Sequential(nn.Linear(in_channels * config.pool_grid**2, config.hidden), nn.ReLU(inplace=True))
        self.pose_head = nn.Linear(config.hidden, pose_width)
        self.shape_head = nn.Linear(config.hidden, self.num_betas)
        self.camera_head = nn.Linear(config.hidden, 3)
        self.register_buffer("joint_regressor", joint_regressor, persistent=False)
        # Start from the mean hand, upright, centred, half the crop: small weights, informed biases.
        for head in (self.pose_head, self.shape_head, self.camera_head):
            nn.init.normal_(head.weight, std=1e-3)
            nn.init.zeros_(head.bias)
        with torch.no_grad():
            if not use_pca:
                mean = np.zeros((num_joints, 3))
                if model.hands_mean is not None:
                    mean[1:] = model.hands_mean.reshape(-1, 3)
                self.pose_head.bias.copy_(matrix_to_rot6d(axis_angle_to_matrix(torch.from_numpy(mean))).reshape(-1).float())
        if use_pca:
            components = torch.from_numpy(model.hands_components[: config.pca_components]).float()
            self.register_buffer("pca_components", components, persistent=False)
            self.register_buffer("hands_mean", torch.from_numpy(model.hands_mean).float(), persistent=False)

    def forward(self, features: torch.Tensor, K: torch.Tensor, image_size: tuple[int, int]) -> GlobalStageOutput:
        """features ``(B, C, h, w)``, K ``(B, 3, 3)`` -> :class:`GlobalStageOutput`."""
        grid = self.config.pool_grid
        hidden = self.mlp(nn.functional.adaptive_avg_pool2d(features, grid).flatten(1))
        pose = self.pose_head(hidden)
        betas = self.shape_head(hidden)
        camera = self.camera_head(hidden)
        batch = features.shape[0]
        if self.config.pose_param == "rot6d":
            rot6d = pose.view(batch, -1, 6)
            out = self.mano(global_orient=rot6d[:, 0], hand_pose=rot6d[:, 1:].reshape(batch, -1), betas=betas, pose_format="rot6d")
            rotations = rot6d_to_matrix(rot6d)
        else:
            out = self.mano(global_orient=pose[:, :3], hand_pose=pose[:, 3:], betas=betas)
            hand = pose[:, 3:] @ self.pca_components.to(pose) + self.hands_mean.to(pose)
            rotations = axis_angle_to_matrix(torch.cat([pose[:, :3], hand], 1).view(batch, -1, 3))
        joints = self.joint_regressor.to(pose) @ out.vertices
        root = root_from_camera(camera, K, image_size, self.config.hand_size_m)
        offset = (root - joints[:, 0]).unsqueeze(1)
        return GlobalStageOutput(
            vertices=out.vertices + offset, joints=joints + offset, root=root, camera=camera, rotations=rotations, betas=betas
        )
