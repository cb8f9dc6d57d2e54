"""Joint names, orders, fingertips and skeleton edges, with converters.

Two orders are used:

- MANO's own 16 joints (internal to the hand model): 0 wrist, 1-3 index, 4-6 middle,
  7-9 little, 10-12 ring, 13-15 thumb (each finger from the palm outwards);
- the 21 OpenPose / FreiHAND keypoints used everywhere else: 0 wrist, 1-4 thumb,
  5-8 index, 9-12 middle, 13-16 ring, 17-20 little (each finger ending at its tip).

The 21 keypoints are the 16 MANO joints plus 5 fingertip vertices (thumb, index,
middle, ring, little), reordered by :data:`MANO21_TO_OPENPOSE`.
"""

from __future__ import annotations

import torch

MANO_JOINT_NAMES: tuple[str, ...] = (
    "wrist",
    "index1", "index2", "index3",
    "middle1", "middle2", "middle3",
    "little1", "little2", "little3",
    "ring1", "ring2", "ring3",
    "thumb1", "thumb2", "thumb3",
)  # fmt: skip

MANO_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 0, 4, 5, 0, 7, 8, 0, 10, 11, 0, 13, 14)

FINGERTIP_NAMES: tuple[str, ...] = ("thumb4", "index4", "middle4", "ring4", "little4")

# Fingertip vertex ids of MANO's 778-vertex topology, thumb..little (the ids smplx and HaMeR use).
FINGERTIP_IDS_MANO778: tuple[int, ...] = (744, 320, 443, 554, 671)
# The alternative ids of manopth, for comparing with results made with it.
FINGERTIP_IDS_MANO778_MANOPTH: tuple[int, ...] = (745, 317, 444, 556, 673)

OPENPOSE_JOINT_NAMES: tuple[str, ...] = (
    "wrist",
    "thumb1", "thumb2", "thumb3", "thumb4",
    "index1", "index2", "index3", "index4",
    "middle1", "middle2", "middle3", "middle4",
    "ring1", "ring2", "ring3", "ring4",
    "little1", "little2", "little3", "little4",
)  # fmt: skip

# openpose[k] = mano21[MANO21_TO_OPENPOSE[k]], where mano21 = 16 MANO joints + 5 tips.
MANO21_TO_OPENPOSE: tuple[int, ...] = (0, 13, 14, 15, 16, 1, 2, 3, 17, 4, 5, 6, 18, 10, 11, 12, 19, 7, 8, 9, 20)
# mano21[k] = openpose[OPENPOSE_TO_MANO21[k]]
OPENPOSE_TO_MANO21: tuple[int, ...] = tuple(MANO21_TO_OPENPOSE.index(k) for k in range(21))

# Parent of each OpenPose keypoint (wrist has none); the skeleton's edges are (parent, child).
OPENPOSE_PARENTS: tuple[int, ...] = (-1, 0, 1, 2, 3, 0, 5, 6, 7, 0, 9, 10, 11, 0, 13, 14, 15, 0, 17, 18, 19)
OPENPOSE_SKELETON_EDGES: tuple[tuple[int, int], ...] = tuple((p, c) for c, p in enumerate(OPENPOSE_PARENTS) if p >= 0)
# Keypoint ids of each finger in OpenPose order, palm to tip.
OPENPOSE_FINGERS: dict[str, tuple[int, ...]] = {
    "thumb": (1, 2, 3, 4),
    "index": (5, 6, 7, 8),
    "middle": (9, 10, 11, 12),
    "ring": (13, 14, 15, 16),
    "little": (17, 18, 19, 20),
}


def mano_to_openpose(mano_joints: torch.Tensor, fingertips: torch.Tensor) -> torch.Tensor:
    """Assemble the 21 OpenPose keypoints from MANO joints and fingertip positions.

    Args:
        mano_joints: (..., 16, 3) joints in MANO order.
        fingertips: (..., 5, 3) tip positions, thumb, index, middle, ring, little.

    Returns:
        (..., 21, 3) keypoints in OpenPose order.
    """
    mano21 = torch.cat([mano_joints, fingertips], dim=-2)
    index = torch.as_tensor(MANO21_TO_OPENPOSE, device=mano21.device)
    return mano21.index_select(-2, index)


def openpose_to_mano(openpose_joints: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Split 21 OpenPose keypoints into (..., 16, 3) MANO joints and (..., 5, 3) fingertips."""
    index = torch.as_tensor(OPENPOSE_TO_MANO21, device=openpose_joints.device)
    mano21 = openpose_joints.index_select(-2, index)
    return mano21[..., :16, :], mano21[..., 16:, :]
