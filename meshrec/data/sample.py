"""One labelled hand image (:class:`HandSample`), a batch of them (:class:`HandBatch`), and
the collate that turns one into the other.

Every sample carries label masks (``has_mesh``, ``has_joints3d``, ``has_joints2d``,
``has_mano``, ``has_mask``) so datasets with different labels can be mixed in one loader:
a missing label is zero-filled and its mask is False, so every sample has the same
fields and shapes (vertices excepted: ``(0, 3)`` when absent, padded by the collate).

Units and frames (see ARCHITECTURE.md): metres, camera frame x right / y down /
z forward, ``K`` in pixels of *this* image, pixel centres at integer coordinates,
joints in OpenPose / FreiHAND order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import torch

from meshrec.errors import DatasetError
from meshrec.sides import side_to_flag

__all__ = [
    "HandSample",
    "HandBatch",
    "make_hand_sample",
    "collate_hand_samples",
    "NUM_JOINTS",
    "MANO_POSE_DIM",
    "MANO_BETAS_DIM",
]

NUM_JOINTS = 21
MANO_POSE_DIM = 48  # global orientation (3) + 15 joints x 3, axis-angle, not PCA
MANO_BETAS_DIM = 10


@dataclass
class HandSample:
    """One hand image and its labels. All tensors float32 unless said otherwise.

    Attributes:
        image: ``(3, H, W)`` RGB in [0, 1].
        K: ``(3, 3)`` intrinsics in pixels of ``image``.
        joints2d: ``(21, 2)`` pixel coordinates ``(u, v)`` of the 21 OpenPose keypoints;
            zeros when ``has_joints2d`` is False.
        joints2d_visible: ``(21,)`` bool; ``joints2d_visible[j]`` says keypoint j is
            labelled and usable (all False when ``has_joints2d`` is False).
        joints3d: ``(21, 3)`` camera frame, metres, OpenPose order; zeros if absent.
        vertices: ``(V, 3)`` camera frame, metres (V = 778 for MANO), or ``(0, 3)``.
        mano_pose: ``(48,)`` axis-angle, global orientation first (camera frame), then 15
            joints in MANO order; zeros if absent.
        mano_betas: ``(10,)`` MANO shape; zeros if absent.
        mask: ``(1, H, W)`` hand foreground in [0, 1]; zeros if absent.
        side: 0 right hand, 1 left hand (:data:`meshrec.sides.SIDE_RIGHT`, :data:`meshrec.sides.SIDE_LEFT`).
        has_mesh, has_joints3d, has_joints2d, has_mano, has_mask: which labels are real.
        index: the sample's number in its source (image number, record number).
        source: where it came from (image path), for error messages.
    """

    image: torch.Tensor
    K: torch.Tensor
    joints2d: torch.Tensor
    joints2d_visible: torch.Tensor
    joints3d: torch.Tensor
    vertices: torch.Tensor
    mano_pose: torch.Tensor
    mano_betas: torch.Tensor
    mask: torch.Tensor
    side: int
    has_mesh: bool
    has_joints3d: bool
    has_joints2d: bool
    has_mano: bool
    has_mask: bool
    index: int
    source: str

    @property
    def image_size(self) -> tuple[int, int]:
        """``(H, W)`` of the image."""
        return int(self.image.shape[-2]), int(self.image.shape[-1])


@dataclass
class HandBatch:
    """A batch of :class:`HandSample` (same fields with a leading batch dim B).

    Attributes:
        image: ``(B, 3, H, W)``; K: ``(B, 3, 3)``; joints2d: ``(B, 21, 2)``;
        joints2d_visible: ``(B, 21)`` bool; joints3d: ``(B, 21, 3)``;
        vertices: ``(B, V, 3)`` (V = 0 when no sample has a mesh; rows of samples without a
        mesh are zeros); mano_pose: ``(B, 48)``; mano_betas: ``(B, 10)``;
        mask: ``(B, 1, H, W)``; side: ``(B,)`` int64;
        has_*: ``(B,)`` bool; index: ``(B,)`` int64; source: list of B strings.
    """

    image: torch.Tensor
    K: torch.Tensor
    joints2d: torch.Tensor
    joints2d_visible: torch.Tensor
    joints3d: torch.Tensor
    vertices: torch.Tensor
    mano_pose: torch.Tensor
    mano_betas: torch.Tensor
    mask: torch.Tensor
    side: torch.Tensor
    has_mesh: torch.Tensor
    has_joints3d: torch.Tensor
    has_joints2d: torch.Tensor
    has_mano: torch.Tensor
    has_mask: torch.Tensor
    index: torch.Tensor
    source: list[str]

    def __len__(self) -> int:
        return int(self.image.shape[0])

    def to(self, device: torch.device | str, non_blocking: bool = False) -> HandBatch:
        """A copy with every tensor on ``device``."""
        moved = {
            f.name: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return HandBatch(**moved)

    def pin_memory(self) -> HandBatch:
        """Pinned copy (called by ``DataLoader(pin_memory=True)``)."""
        pinned = {
            f.name: (v.pin_memory() if isinstance(v, torch.Tensor) else v)
            for f in fields(self)
            for v in [getattr(self, f.name)]
        }
        return HandBatch(**pinned)

    def sample(self, i: int) -> HandSample:
        """Sample ``i`` of the batch as a :class:`HandSample` (vertices stay padded)."""
        values = {}
        for f in fields(HandSample):
            value = getattr(self, f.name)
            if f.name == "source":
                values[f.name] = value[i]
            elif f.name in ("side", "index"):
                values[f.name] = int(value[i])
            elif f.name.startswith("has_"):
                values[f.name] = bool(value[i])
            else:
                values[f.name] = value[i]
        if not values["has_mesh"]:
            values["vertices"] = values["vertices"][:0]
        return HandSample(**values)


def _label(value, shape: tuple[int, ...], name: str, where: str) -> torch.Tensor:
    tensor = torch.as_tensor(value, dtype=torch.float32)
    if tuple(tensor.shape) != shape:
        raise DatasetError(f"{where}: {name} must have shape {shape}, got {tuple(tensor.shape)}")
    if not torch.isfinite(tensor).all():
        bad = (~torch.isfinite(tensor)).nonzero()[0].tolist()
        raise DatasetError(f"{where}: {name} has a non-finite value (NaN or inf) at position {bad}")
    return tensor


def make_hand_sample(
    image: torch.Tensor,
    K: torch.Tensor,
    *,
    joints2d=None,
    joints2d_visible=None,
    joints3d=None,
    vertices=None,
    mano_pose=None,
    mano_betas=None,
    mask=None,
    side: str | int = "right",
    index: int = -1,
    source: str = "",
) -> HandSample:
    """Build a :class:`HandSample`, zero-filling absent labels (``None``) and setting masks.

    Validates shapes and finiteness of every given label and raises :class:`DatasetError`
    naming ``source`` and ``index``. ``joints2d_visible`` defaults to all True when
    ``joints2d`` is given; ``mano_pose`` and ``mano_betas`` must come together.

    Args:
        image: ``(3, H, W)`` float in [0, 1].
        K: ``(3, 3)`` pixels of ``image``.
        joints2d: ``(21, 2)`` pixels; joints2d_visible: ``(21,)`` bool.
        joints3d: ``(21, 3)`` metres, camera frame; vertices: ``(V, 3)``.
        mano_pose: ``(48,)``; mano_betas: ``(10,)``; mask: ``(1, H, W)`` or ``(H, W)``.
    """
    where = f"{source or '<sample>'} (index {index})"
    if not isinstance(image, torch.Tensor) or image.ndim != 3 or image.shape[0] != 3:
        shape = tuple(image.shape) if isinstance(image, torch.Tensor) else type(image).__name__
        raise DatasetError(f"{where}: image must be a (3, H, W) tensor, got {shape}", path=source, index=index)
    height, width = image.shape[-2:]
    try:
        K = _label(K, (3, 3), "K", where)
        if abs(float(K[2, 2]) - 1.0) > 1e-6 or float(K[2, 0]) != 0.0 or float(K[2, 1]) != 0.0:
            raise DatasetError(f"{where}: K's last row must be [0, 0, 1], got {K[2].tolist()}")
        if float(K[0, 0]) <= 0.0 or float(K[1, 1]) <= 0.0:
            raise DatasetError(f"{where}: K's focal lengths must be > 0, got fx={float(K[0, 0])}, fy={float(K[1, 1])}")
        has_joints2d = joints2d is not None
        joints2d = _label(joints2d, (NUM_JOINTS, 2), "joints2d", where) if has_joints2d else torch.zeros(NUM_JOINTS, 2)
        if joints2d_visible is None:
            visible = torch.full((NUM_JOINTS,), has_joints2d)
        else:
            visible = torch.as_tensor(joints2d_visible).bool()
            if tuple(visible.shape) != (NUM_JOINTS,):
                raise DatasetError(f"{where}: joints2d_visible must have shape (21,), got {tuple(visible.shape)}")
            visible = visible & has_joints2d
        has_joints3d = joints3d is not None
        joints3d = _label(joints3d, (NUM_JOINTS, 3), "joints3d", where) if has_joints3d else torch.zeros(NUM_JOINTS, 3)
        has_mesh = vertices is not None
        if has_mesh:
            vertices = torch.as_tensor(vertices, dtype=torch.float32)
            if vertices.ndim != 2 or vertices.shape[1] != 3 or vertices.shape[0] == 0:
                raise DatasetError(f"{where}: vertices must have shape (V, 3) with V > 0, got {tuple(vertices.shape)}")
            vertices = _label(vertices, tuple(vertices.shape), "vertices", where)
        else:
            vertices = torch.zeros(0, 3)
        if (mano_pose is None) != (mano_betas is None):
            raise DatasetError(f"{where}: mano_pose and mano_betas must be given together")
        has_mano = mano_pose is not None
        mano_pose = _label(mano_pose, (MANO_POSE_DIM,), "mano_pose", where) if has_mano else torch.zeros(MANO_POSE_DIM)
        mano_betas = (
            _label(mano_betas, (MANO_BETAS_DIM,), "mano_betas", where) if has_mano else torch.zeros(MANO_BETAS_DIM)
        )
        has_mask = mask is not None
        if has_mask:
            mask = torch.as_tensor(mask, dtype=torch.float32)
            mask = _label(
                mask.reshape(1, *mask.shape[-2:]) if mask.ndim == 2 else mask, (1, height, width), "mask", where
            )
        else:
            mask = torch.zeros(1, height, width)
    except DatasetError as error:
        raise DatasetError(str(error), path=source, index=index) from None
    return HandSample(
        image=image.float(),
        K=K,
        joints2d=joints2d,
        joints2d_visible=visible,
        joints3d=joints3d,
        vertices=vertices,
        mano_pose=mano_pose,
        mano_betas=mano_betas,
        mask=mask,
        side=side_to_flag(side),
        has_mesh=has_mesh,
        has_joints3d=has_joints3d,
        has_joints2d=has_joints2d,
        has_mano=has_mano,
        has_mask=has_mask,
        index=int(index),
        source=str(source),
    )


def collate_hand_samples(samples: Sequence[HandSample | None]) -> HandBatch:
    """Stack samples into a :class:`HandBatch`; use as ``DataLoader(collate_fn=...)``.

    ``None`` entries are dropped (a dataset may return ``None`` for a sample it skipped).
    Images must share one size (crop them first, see :mod:`meshrec.data.crop`). Vertices
    are zero-padded to the largest V in the batch; samples with a mesh must agree on V.
    """
    samples = [s for s in samples if s is not None]
    if not samples:
        raise DatasetError("collate_hand_samples: no samples to collate (all were None or the list is empty)")
    sizes = {s.image_size for s in samples}
    if len(sizes) > 1:
        listing = ", ".join(f"{s.source or s.index}: {s.image_size}" for s in samples[:8])
        raise DatasetError(
            f"collate_hand_samples: images must share one (H, W) size, got {sorted(sizes)} ({listing}); "
            "crop them to the network size first (meshrec.data.crop)"
        )
    mesh_counts = {int(s.vertices.shape[0]) for s in samples if s.has_mesh}
    if len(mesh_counts) > 1:
        raise DatasetError(
            f"collate_hand_samples: samples with a mesh must have the same vertex count, got {sorted(mesh_counts)}"
        )
    num_vertices = mesh_counts.pop() if mesh_counts else 0
    vertices = torch.zeros(len(samples), num_vertices, 3)
    for row, s in enumerate(samples):
        if s.has_mesh:
            vertices[row] = s.vertices
    return HandBatch(
        image=torch.stack([s.image for s in samples]),
        K=torch.stack([s.K for s in samples]),
        joints2d=torch.stack([s.joints2d for s in samples]),
        joints2d_visible=torch.stack([s.joints2d_visible for s in samples]),
        joints3d=torch.stack([s.joints3d for s in samples]),
        vertices=vertices,
        mano_pose=torch.stack([s.mano_pose for s in samples]),
        mano_betas=torch.stack([s.mano_betas for s in samples]),
        mask=torch.stack([s.mask for s in samples]),
        side=torch.tensor([s.side for s in samples], dtype=torch.int64),
        has_mesh=torch.tensor([s.has_mesh for s in samples]),
        has_joints3d=torch.tensor([s.has_joints3d for s in samples]),
        has_joints2d=torch.tensor([s.has_joints2d for s in samples]),
        has_mano=torch.tensor([s.has_mano for s in samples]),
        has_mask=torch.tensor([s.has_mask for s in samples]),
        index=torch.tensor([s.index for s in samples], dtype=torch.int64),
        source=[s.source for s in samples],
    )
