"""Anatomically plausible MANO hand poses: joint limits, joint axes, a sampler, a pose PCA.

A hand pose here is what :class:`manolayer.ManoLayer` takes as ``hand_pose``: (B, 45), the
15 hand joints in MANO order (index1-3, middle1-3, little1-3, ring1-3, thumb1-3), each an
axis-angle in the rest pose's world axes. The global orientation is separate
(:func:`sample_global_orient`).

Anatomical angles. Every joint gets a right-handed frame of three axes, derived from the
model's rest joints (:func:`hand_axes`):

- ``twist``  (t): along the bone, from the joint to its child (for a left hand: against it,
  which keeps the frame right-handed; see below);
- ``flex``   (f): positive flexion curls the bone toward the palm;
- ``spread`` (s): positive spread swings the bone toward the thumb side (radial); for the
  thumb it is *palmar abduction*: out of the palm plane, on the palm side.

A joint's rotation is composed from its three angles as ``R = Rot(s, spread) @ Rot(t, twist)
@ Rot(f, flex)``: read right to left in world axes, or left to right as moves of the bone
(spread in the palm plane first, then a twist about the spread bone, then flexion about the
carried hinge axis). Flexion is the outer angle of this Euler sequence, so it is recovered
without gimbal trouble over its whole range (PIP flexes to 110 degrees); only twist, which
stays small, sits in the middle.

Sides. The *directions* a joint moves in (toward the palm, toward the thumb) are ordinary
vectors and are computed from the joints; the rotation *axes* are cross products of them.
For a mirrored (left) model the directions mirror and the axes come out as the mirror image
of the right hand's axes as pseudo-vectors: ``(x, y, z) -> (x, -y, -z)`` under ``x -> -x``,
which is exactly MANO's rule for mirroring a pose. The same angles therefore give mirrored
poses on the two sides. The only thing the joints cannot tell is which side of the palm
plane is the palm; :func:`hand_axes` takes it from ``side`` when given, otherwise from
MANO's frame convention (the palm faces -y for both sides).
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from manolayer.errors import ManoError
from manolayer.joints import MANO_JOINT_NAMES, MANO_PARENTS
from manolayer.rotations import axis_angle_to_matrix, quaternion_to_axis_angle

NUM_HAND_JOINTS = 15
POSE_MODES: tuple[str, ...] = ("open", "grasp", "pointing", "fist", "mixture")
ANGLE_NAMES: tuple[str, ...] = ("flex", "spread", "twist")

# MANO joint ids (16-joint order, wrist = 0) of each chain, palm to tip.
FINGER_CHAINS: dict[str, tuple[int, int, int]] = {
    "index": (1, 2, 3),
    "middle": (4, 5, 6),
    "little": (7, 8, 9),
    "ring": (10, 11, 12),
    "thumb": (13, 14, 15),
}
_FINGERS = ("index", "middle", "little", "ring")  # long fingers, MANO order
_PALM_JOINTS = (0, 1, 4, 7, 10)  # wrist and the four knuckles

# The thumb's flexion plane is turned against the palm's: the thumb nail faces sideways,
# so its joints flex partly toward the palm (-y) and partly across it toward the little
# finger. The tilt is the angle of the flexion direction from the palm normal toward the
# ulnar side. At 90 degrees the carpometacarpal (CMC) joint has the textbook axes: flexion
# in the palm plane, abduction straight out of it. For the MCP and IP, 75 degrees was chosen
# by rendering fists and grasps of the open hand: at 45 the flexing thumb hooks away from
# the palm instead of wrapping over the curled fingers.
THUMB_CMC_TILT_DEG = 90.0
THUMB_DISTAL_TILT_DEG = 75.0  # thumb MCP and IP


@dataclass(frozen=True)
class JointLimit:
    """Range of motion of one joint, in degrees (flexion positive, spread positive = radial)."""

    joint: str
    flex: tuple[float, float]
    spread: tuple[float, float]
    twist: tuple[float, float]


def _finger_limits(finger: str) -> tuple[JointLimit, ...]:
    return (
        # a few degrees of axial rotation at the knuckle are normal; none at the hinges
        JointLimit(f"{finger}1", flex=(0.0, 90.0), spread=(-15.0, 15.0), twist=(-5.0, 5.0)),
        JointLimit(f"{finger}2", flex=(0.0, 110.0), spread=(0.0, 0.0), twist=(0.0, 0.0)),
        JointLimit(f"{finger}3", flex=(0.0, 90.0), spread=(0.0, 0.0), twist=(0.0, 0.0)),
    )


# One row per hand joint in MANO order (index, middle, little, ring, thumb; palm to tip).
HAND_JOINT_LIMITS: tuple[JointLimit, ...] = (
    *_finger_limits("index"),
    *_finger_limits("middle"),
    *_finger_limits("little"),
    *_finger_limits("ring"),
    JointLimit("thumb1", flex=(-45.0, 45.0), spread=(-30.0, 45.0), twist=(-20.0, 20.0)),
    JointLimit("thumb2", flex=(0.0, 90.0), spread=(-10.0, 10.0), twist=(0.0, 0.0)),
    JointLimit("thumb3", flex=(0.0, 90.0), spread=(0.0, 0.0), twist=(0.0, 0.0)),
)

# DIP flexion follows PIP flexion (the two share a tendon): DIP = ratio * PIP + noise.
DIP_PIP_RATIO = 2.0 / 3.0
DIP_COUPLING_NOISE_DEG = 3.0


def limits_array(limits: tuple[JointLimit, ...] = HAND_JOINT_LIMITS) -> np.ndarray:
    """(15, 3, 2) float64 limits in radians: ``[joint, angle (flex, spread, twist), (low, high)]``."""
    if len(limits) != NUM_HAND_JOINTS:
        raise ManoError(f"expected {NUM_HAND_JOINTS} joint limits, got {len(limits)}")
    table = np.array([[lim.flex, lim.spread, lim.twist] for lim in limits], dtype=np.float64)
    if np.any(table[..., 0] > table[..., 1]):
        raise ManoError("every joint limit must have low <= high")
    return np.deg2rad(table)


# --------------------------------------------------------------------------- axes


@dataclass(frozen=True)
class HandAxes:
    """Each hand joint's anatomical frame in the rest pose's world axes.

    Attributes:
        frames: (15, 3, 3) float64; ``frames[j][:, k]`` is axis k of hand joint j (MANO
            order, joint j is MANO joint j + 1): k = 0 twist, 1 flex, 2 spread. Each frame
            is a rotation matrix (orthonormal, right-handed).
        side: 'right' or 'left', the hand the axes were derived for.
    """

    frames: np.ndarray
    side: str

    @property
    def twist_axes(self) -> np.ndarray:
        """(15, 3) unit twist axes (along the bone for a right hand, against it for a left one)."""
        return self.frames[:, :, 0]

    @property
    def flexion_axes(self) -> np.ndarray:
        """(15, 3) unit flexion axes: a positive rotation about them curls toward the palm."""
        return self.frames[:, :, 1]

    @property
    def spread_axes(self) -> np.ndarray:
        """(15, 3) unit spread axes: positive swings toward the thumb side (thumb: out of the palm plane)."""
        return self.frames[:, :, 2]


def _unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=-1, keepdims=True)


def _orthogonal_part(vector: np.ndarray, *against: np.ndarray) -> np.ndarray:
    """Gram-Schmidt: ``vector`` without its components along the unit vectors ``against``."""
    for unit in against:
        vector = vector - (vector @ unit) * unit
    return _unit(vector)


def hand_axes(
    rest_joints: np.ndarray | torch.Tensor | None = None,
    parents: np.ndarray | list[int] | tuple[int, ...] | None = None,
    side: str | None = None,
) -> HandAxes:
    """Derive every hand joint's twist / flexion / spread axes from a model's rest joints.

    Args:
        rest_joints: (16, 3) rest joint positions in MANO order. None: the default model's
            (the project's open hand, mirrored when ``side='left'``).
        parents: (16,) kinematic tree; must be MANO's (the sampler knows MANO's fingers).
        side: 'right' or 'left'. It fixes which side of the palm plane is the palm. None:
            take the palm as the side the -y axis points to (MANO's frame, both sides).

    Directions used (ordinary vectors, so they mirror with the joints):
        bone ``d``: child joint minus joint (the last joint of a chain reuses its parent bone);
        palm ``n``: normal of the plane through the wrist and the four knuckles, toward the palm;
        radial ``r``: little knuckle to index knuckle, i.e. toward the thumb.
    Long fingers: flex axis ``d x n``, spread axis ``d x r`` (after Gram-Schmidt against d
    and n). Thumb: the flexion direction is turned from ``n`` toward the ulnar side by
    :data:`THUMB_CMC_TILT_DEG` / :data:`THUMB_DISTAL_TILT_DEG`, the abduction direction is
    perpendicular to it, out of the palm plane. The twist axis completes a right-handed frame.
    """
    if side is not None and side not in ("right", "left"):
        raise ManoError(f"side must be 'right', 'left' or None, got {side!r}")
    if rest_joints is None:
        return _default_axes(side or "right")
    if isinstance(rest_joints, torch.Tensor):
        rest_joints = rest_joints.detach().cpu().double().numpy()
    joints = np.asarray(rest_joints, dtype=np.float64)
    if joints.shape != (16, 3):
        raise ManoError(f"rest_joints must have shape (16, 3) (MANO order), got {joints.shape}")
    if not np.isfinite(joints).all():
        raise ManoError("rest_joints contains NaN or Inf")
    parent_list = list(MANO_PARENTS) if parents is None else [int(p) for p in np.asarray(parents).ravel()]
    if parent_list != list(MANO_PARENTS):
        raise ManoError(f"the sampler needs MANO's kinematic tree {list(MANO_PARENTS)}, got {parent_list}")

    palm_points = joints[list(_PALM_JOINTS)]
    _, _, vt = np.linalg.svd(palm_points - palm_points.mean(0))
    normal = vt[2]
    radial = _unit(joints[1] - joints[7])
    forward = _unit(joints[4] - joints[0])
    # (radial x forward) points to the palm of a right hand and to the back of a left one
    chirality_normal = np.cross(radial, forward)
    if side is None:
        if abs(normal[1]) < 0.5:
            raise ManoError(
                f"the palm plane's normal {np.round(normal, 2).tolist()} is far from MANO's y axis, so the "
                "palm side cannot be read from the frame; pass side='right' or side='left'"
            )
        normal = normal if normal[1] < 0 else -normal
        side = "right" if normal @ chirality_normal > 0 else "left"
    else:
        toward_palm_of_right = normal if normal @ chirality_normal > 0 else -normal
        normal = toward_palm_of_right if side == "right" else -toward_palm_of_right

    frames = np.empty((NUM_HAND_JOINTS, 3, 3))
    for joint in range(1, 16):
        children = [c for c, p in enumerate(parent_list) if p == joint]
        if children:
            bone = joints[children[0]] - joints[joint]
        else:
            bone = joints[joint] - joints[parent_list[joint]]
        if np.linalg.norm(bone) < 1e-9:
            raise ManoError(f"joint {MANO_JOINT_NAMES[joint]} coincides with its neighbour; cannot derive its axes")
        bone = _unit(bone)
        palmar = _orthogonal_part(normal, bone)
        if joint >= 13:
            tilt = math.radians(THUMB_CMC_TILT_DEG if joint == 13 else THUMB_DISTAL_TILT_DEG)
            ulnar = _orthogonal_part(-radial, bone, palmar)
            flex_direction = math.cos(tilt) * palmar + math.sin(tilt) * ulnar
            spread_direction = math.sin(tilt) * palmar - math.cos(tilt) * ulnar
        else:
            flex_direction = palmar
            spread_direction = _orthogonal_part(radial, bone, palmar)
        # rotating the bone about (d x m) moves its tip along m
        flex_axis = _unit(np.cross(bone, flex_direction))
        spread_axis = _unit(np.cross(bone, spread_direction))
        twist_axis = np.cross(flex_axis, spread_axis)  # +bone (right hand) or -bone (left hand)
        frames[joint - 1] = np.stack([twist_axis, flex_axis, spread_axis], axis=1)
    frames.setflags(write=False)  # axes are cached and shared
    return HandAxes(frames=frames, side=side)


@functools.lru_cache(maxsize=2)
def _default_axes(side: str) -> HandAxes:
    from manolayer.io import load_mano  # the open hand asset is read only when first needed

    model = load_mano(None, side=side)
    return hand_axes(model.rest_joints, model.parents, side=model.side)


def _resolve_axes(axes: HandAxes | None, rest_joints, parents, side: str | None = None) -> HandAxes:
    if axes is not None:
        return axes
    return hand_axes(rest_joints, parents, side=side)


# --------------------------------------------------------------------------- angles <-> poses


@dataclass
class AnatomicalAngles:
    """Anatomical angles of hand poses, in radians, each (..., 15): one per hand joint (MANO order)."""

    flex: torch.Tensor
    spread: torch.Tensor
    twist: torch.Tensor

    def stacked(self) -> torch.Tensor:
        """(..., 15, 3) angles, last index (flex, spread, twist)."""
        return torch.stack([self.flex, self.spread, self.twist], dim=-1)

    def degrees(self) -> torch.Tensor:
        """(..., 15, 3) angles in degrees, last index (flex, spread, twist)."""
        return torch.rad2deg(self.stacked())


def _frames_like(axes: HandAxes, like: torch.Tensor) -> torch.Tensor:
    return torch.tensor(axes.frames, dtype=like.dtype, device=like.device)  # a copy: frames are read-only


def angles_to_hand_pose(angles: torch.Tensor, axes: HandAxes | None = None) -> torch.Tensor:
    """Compose anatomical angles into MANO hand poses.

    Args:
        angles: (..., 15, 3) radians, last index (flex, spread, twist).
        axes: the joints' frames; None: the default model's (right hand).

    Returns:
        (..., 45) axis-angle hand pose: ``Rot(s, spread) @ Rot(t, twist) @ Rot(f, flex)``
        per joint, converted to axis-angle (composed as quaternions, not by adding vectors).
    """
    if angles.shape[-2:] != (NUM_HAND_JOINTS, 3):
        raise ManoError(f"angles must have shape (..., 15, 3), got {tuple(angles.shape)}")
    axes = _resolve_axes(axes, None, None)
    frames = _frames_like(axes, angles)  # (15, 3, 3)
    half = 0.5 * angles
    cos, sin = torch.cos(half), torch.sin(half)
    c_flex, c_spread, c_twist = cos.unbind(-1)
    s_flex, s_spread, s_twist = sin.unbind(-1)
    # the quaternion of Rz(spread) Rx(twist) Ry(flex) in the joint's frame, written out
    a, b = c_spread * c_twist, c_spread * s_twist
    c, d = s_spread * s_twist, s_spread * c_twist
    w = a * c_flex - c * s_flex
    xyz = (b * c_flex - d * s_flex, a * s_flex + c * c_flex, d * c_flex + b * s_flex)
    # q and -q are the same rotation; w >= 0 keeps the angle in [0, pi]
    sign = torch.where(w < 0, -1.0, 1.0).to(w.dtype)
    w = w * sign
    sin_half = torch.sqrt(xyz[0].square() + xyz[1].square() + xyz[2].square())
    small = sin_half < 1e-6
    # angle / sin(angle / 2), with its limit 2 / w near zero
    scale = sign * torch.where(
        small, 2.0 / w.clamp_min(1e-12), 2.0 * torch.atan2(sin_half, w) / torch.where(small, 1.0, sin_half)
    )
    local = tuple(component * scale for component in xyz)
    # conjugating by the frame rotates the axis: axis-angle in world = frame @ local axis-angle
    world = [sum(frames[:, row, col] * local[col] for col in range(3)) for row in range(3)]
    return torch.stack(world, dim=-1).flatten(-2)


def anatomical_angles(hand_pose: torch.Tensor, axes: HandAxes | None = None) -> AnatomicalAngles:
    """Recover each joint's flexion, spread and twist from hand poses (differentiable).

    Args:
        hand_pose: (..., 45) or (..., 15, 3) axis-angle, MANO order.
        axes: the joints' frames (:func:`hand_axes`); None: the default model's (right hand).

    Returns:
        :class:`AnatomicalAngles`, radians: flex and spread in (-pi, pi], twist in [-pi/2, pi/2],
        the inverse of :func:`angles_to_hand_pose` wherever |twist| < 90 degrees.
    """
    if hand_pose.shape[-1] == 45:
        hand_pose = hand_pose.unflatten(-1, (NUM_HAND_JOINTS, 3))
    if hand_pose.shape[-2:] != (NUM_HAND_JOINTS, 3):
        raise ManoError(f"hand_pose must have shape (..., 45) or (..., 15, 3), got {tuple(hand_pose.shape)}")
    axes = _resolve_axes(axes, None, None)
    frames = _frames_like(axes, hand_pose)
    # the rotation seen in each joint's frame: Rz(spread) Rx(twist) Ry(flex)
    local = frames.transpose(-1, -2) @ axis_angle_to_matrix(hand_pose) @ frames
    twist = torch.asin(local[..., 2, 1].clamp(-1 + 1e-7, 1 - 1e-7))
    flex = torch.atan2(-local[..., 2, 0], local[..., 2, 2])
    spread = torch.atan2(-local[..., 0, 1], local[..., 1, 1])
    return AnatomicalAngles(flex=flex, spread=spread, twist=twist)


def limit_violation(
    hand_pose: torch.Tensor,
    axes: HandAxes | None = None,
    limits: tuple[JointLimit, ...] = HAND_JOINT_LIMITS,
) -> torch.Tensor:
    """How far each anatomical angle lies outside its limits: a hinge for a pose prior.

    Args:
        hand_pose: (..., 45) or (..., 15, 3) axis-angle, MANO order.
        axes: the joints' frames; None: the default model's (right hand).
        limits: one :class:`JointLimit` per hand joint.

    Returns:
        (..., 15, 3) radians >= 0, last index (flex, spread, twist); 0 inside the limits,
        so e.g. ``limit_violation(pose).square().sum((-1, -2)).mean()`` is a training loss.
    """
    angles = anatomical_angles(hand_pose, axes).stacked()
    table = torch.as_tensor(limits_array(limits), dtype=angles.dtype, device=angles.device)
    return torch.relu(table[..., 0] - angles) + torch.relu(angles - table[..., 1])


# --------------------------------------------------------------------------- sampling


@dataclass(frozen=True)
class ModeRanges:
    """What a pose mode samples, in degrees; each range is (low, high).

    A sample draws one *closure* in [0, 1] per hand, perturbs it per finger and per joint,
    and maps it linearly into each range, so fingers of one hand move together.

    Attributes:
        mcp_flex: per long finger (index, middle, little, ring): knuckle flexion.
        pip_flex: per long finger: middle joint flexion (the DIP follows it).
        spread: how far the fingers fan out (index radial, ring and little ulnar).
        thumb_cmc_flex, thumb_cmc_abduction, thumb_cmc_twist, thumb_mcp_flex, thumb_ip_flex:
            the thumb's joints; a negative CMC twist turns the thumb pad toward the fingers
            (pronation, as in opposition).

    The ranges were tuned by rendering the open hand (``meshrec render-hand``) and checking
    that fingers curl into the palm without sinking into it and that the thumb wraps over,
    not through, the curled fingers.
    """

    mcp_flex: tuple[tuple[float, float], ...]
    pip_flex: tuple[tuple[float, float], ...]
    spread: tuple[float, float]
    thumb_cmc_flex: tuple[float, float]
    thumb_cmc_abduction: tuple[float, float]
    thumb_cmc_twist: tuple[float, float]
    thumb_mcp_flex: tuple[float, float]
    thumb_ip_flex: tuple[float, float]


def _same(range_: tuple[float, float]) -> tuple[tuple[float, float], ...]:
    return (range_,) * 4


MODE_RANGES: dict[str, ModeRanges] = {
    "open": ModeRanges(
        mcp_flex=_same((0.0, 20.0)),
        pip_flex=_same((0.0, 20.0)),
        spread=(0.0, 15.0),
        thumb_cmc_flex=(-20.0, 5.0),
        thumb_cmc_abduction=(-10.0, 20.0),
        thumb_cmc_twist=(-5.0, 5.0),
        thumb_mcp_flex=(0.0, 15.0),
        thumb_ip_flex=(0.0, 15.0),
    ),
    "grasp": ModeRanges(
        mcp_flex=_same((25.0, 60.0)),
        pip_flex=_same((30.0, 75.0)),
        spread=(0.0, 8.0),
        thumb_cmc_flex=(-10.0, 15.0),
        thumb_cmc_abduction=(25.0, 45.0),
        thumb_cmc_twist=(-15.0, 0.0),
        thumb_mcp_flex=(10.0, 35.0),
        thumb_ip_flex=(10.0, 35.0),
    ),
    "pointing": ModeRanges(
        mcp_flex=((0.0, 15.0), (65.0, 85.0), (55.0, 72.0), (65.0, 80.0)),
        pip_flex=((0.0, 10.0), (65.0, 88.0), (50.0, 72.0), (60.0, 80.0)),
        spread=(0.0, 5.0),
        thumb_cmc_flex=(-10.0, 0.0),
        thumb_cmc_abduction=(25.0, 40.0),
        thumb_cmc_twist=(-15.0, -5.0),
        thumb_mcp_flex=(35.0, 55.0),
        thumb_ip_flex=(20.0, 45.0),
    ),
    # A firm fist, not a crushing one: rigidly skinned fingertips flexed to the anatomical
    # maximum sink a centimetre into the palm (most for the index and little fingers, which
    # curl onto the thenar and hypothenar pads), so these stop where the tips meet the palm.
    "fist": ModeRanges(
        mcp_flex=((60.0, 75.0), (65.0, 85.0), (55.0, 72.0), (65.0, 80.0)),
        pip_flex=((55.0, 75.0), (65.0, 88.0), (50.0, 72.0), (60.0, 80.0)),
        spread=(0.0, 3.0),
        thumb_cmc_flex=(-10.0, 0.0),
        thumb_cmc_abduction=(25.0, 40.0),
        thumb_cmc_twist=(-15.0, -5.0),
        thumb_mcp_flex=(35.0, 55.0),
        thumb_ip_flex=(20.0, 45.0),
    ),
}

# How each long finger fans out with the hand's spread (index, middle, little, ring).
SPREAD_PATTERN: tuple[float, ...] = (1.0, 0.15, -1.0, -0.55)
# Flexed knuckles cannot spread far (collateral ligaments tighten): spread scales by
# 1 - SPREAD_FLEX_DAMPING * mcp_flex / 90 deg.
SPREAD_FLEX_DAMPING = 0.7
# Per-finger and per-joint jitter of the hand's closure, in units of the ranges.
FINGER_CLOSURE_JITTER = 0.15
JOINT_CLOSURE_JITTER = 0.1
# 'mixture': noise added after interpolating between modes (flex, spread, twist), degrees.
MIXTURE_NOISE_DEG = (5.0, 2.0, 2.0)
# 'mixture': how often a finger blends its own pair of modes instead of the hand's.
FINGER_OWN_BLEND_PROBABILITY = 0.25


def _generator(seed: int | None, generator: torch.Generator | None) -> torch.Generator:
    if generator is not None:
        if seed is not None:
            raise ManoError("pass either seed or generator, not both")
        if generator.device.type != "cpu":
            raise ManoError(f"the generator must be a CPU generator (samples are drawn on the CPU), got {generator.device}")
        return generator
    made = torch.Generator()
    if seed is None:
        made.seed()
    else:
        made.manual_seed(int(seed))
    return made


# Random numbers are drawn in float32 (three times faster than float64 on CPU, and ample for
# angles) and computed on in float64, so a seed gives the same poses in every output dtype.
def _uniform(shape, gen: torch.Generator) -> torch.Tensor:
    return torch.rand(shape, generator=gen, dtype=torch.float32).double()


def _normal(shape, gen: torch.Generator) -> torch.Tensor:
    return torch.randn(shape, generator=gen, dtype=torch.float32).double()


def _in_range(range_: tuple[float, float], unit: torch.Tensor) -> torch.Tensor:
    return range_[0] + (range_[1] - range_[0]) * unit


# The angles a mode samples freely, as (hand joint, angle) pairs (angle 0 flex, 1 spread,
# 2 twist); every other angle is 0 except the DIPs, which follow their PIPs.
_FREE_ANGLES: tuple[tuple[int, int], ...] = (
    *((j - 1, k) for f in _FINGERS for j, k in ((FINGER_CHAINS[f][0], 0), (FINGER_CHAINS[f][0], 1),
                                                 (FINGER_CHAINS[f][0], 2), (FINGER_CHAINS[f][1], 0))),
    (12, 0), (12, 1), (12, 2), (13, 0), (13, 1), (14, 0),
)  # fmt: skip
# which finger (index, middle, little, ring, thumb) each free angle belongs to
_FREE_ANGLE_FINGER = tuple(joint // 3 for joint, _ in _FREE_ANGLES)


def _sample_mode_free_degrees(n: int, mode: str, gen: torch.Generator) -> torch.Tensor:
    """(22, n) free angles in degrees (rows in the order of :data:`_FREE_ANGLES`) for one base mode.

    Samples run along the last dimension, so every row is written contiguously.
    """
    spec = MODE_RANGES[mode]
    closure = _uniform((1, n), gen)
    finger_closure = (closure + FINGER_CLOSURE_JITTER * _normal((5, n), gen)).clamp(0, 1)
    joint_closure = (finger_closure.repeat_interleave(3, dim=0) + JOINT_CLOSURE_JITTER * _normal((15, n), gen)).clamp(0, 1)
    spread_amount = _in_range(spec.spread, _uniform((n,), gen))
    jitter = _normal((9, n), gen)
    rows = []
    for finger, name in enumerate(_FINGERS):
        mcp, pip, _ = (j - 1 for j in FINGER_CHAINS[name])
        mcp_flex = _in_range(spec.mcp_flex[finger], joint_closure[mcp])
        damping = 1 - SPREAD_FLEX_DAMPING / 90.0 * mcp_flex
        spread = (SPREAD_PATTERN[finger] * spread_amount + 1.5 * jitter[finger]) * damping
        twist = 1.5 * jitter[4 + finger]
        pip_flex = _in_range(spec.pip_flex[finger], joint_closure[pip])
        rows += [mcp_flex, spread, twist, pip_flex]
    cmc, mcp, ip = (j - 1 for j in FINGER_CHAINS["thumb"])
    thumb_units = _uniform((2, n), gen)
    rows += [
        _in_range(spec.thumb_cmc_flex, joint_closure[cmc]),
        _in_range(spec.thumb_cmc_abduction, thumb_units[0]),
        _in_range(spec.thumb_cmc_twist, thumb_units[1]),
        _in_range(spec.thumb_mcp_flex, joint_closure[mcp]),
        3.0 * jitter[8],
        _in_range(spec.thumb_ip_flex, joint_closure[ip]),
    ]
    return torch.stack(rows)


def _blend_weights(n: int, num_modes: int, gen: torch.Generator) -> torch.Tensor:
    """(M, 5, n) per-finger weights over the M base modes; ``weights[:, f, i]`` sums to 1.

    A hand blends two random modes, ``(1 - t) * first + t * second`` with t = u^2 (mostly near
    the first); each finger instead draws its own pair with probability
    :data:`FINGER_OWN_BLEND_PROBABILITY`, so a hand can, e.g., point with two fingers.
    """
    modes = torch.arange(num_modes).view(num_modes, 1, 1)

    def pair_blend(shape) -> torch.Tensor:
        first = torch.randint(num_modes, shape, generator=gen)
        second = torch.randint(num_modes, shape, generator=gen)
        t = _uniform(shape, gen).square()
        return (1 - t) * (modes == first) + t * (modes == second)

    hand = pair_blend((1, n))
    own = pair_blend((5, n))
    use_own = _uniform((5, n), gen) < FINGER_OWN_BLEND_PROBABILITY
    return torch.where(use_own, own, hand)


def _mixture_free_degrees(n: int, gen: torch.Generator) -> torch.Tensor:
    """(22, n) free angles: per-finger blends of all base modes, plus noise."""
    base = [m for m in POSE_MODES if m != "mixture"]
    weights = _blend_weights(n, len(base), gen)[:, list(_FREE_ANGLE_FINGER)]  # (M, 22, n)
    blended = torch.zeros(len(_FREE_ANGLES), n, dtype=torch.float64)
    for index, mode in enumerate(base):
        blended += weights[index] * _sample_mode_free_degrees(n, mode, gen)
    noise = torch.tensor([MIXTURE_NOISE_DEG[k] for _, k in _FREE_ANGLES], dtype=torch.float64)
    return blended + noise[:, None] * _normal((len(_FREE_ANGLES), n), gen)


def sample_anatomical_angles(
    n: int,
    seed: int | None = None,
    mode: str = "mixture",
    generator: torch.Generator | None = None,
    limits: tuple[JointLimit, ...] = HAND_JOINT_LIMITS,
) -> torch.Tensor:
    """(n, 15, 3) float64 anatomical angles in radians (flex, spread, twist), within ``limits``.

    The draw itself; :func:`sample_poses` composes these into axis-angle poses.
    """
    if mode not in POSE_MODES:
        raise ManoError(f"mode must be one of {list(POSE_MODES)}, got {mode!r}")
    if not isinstance(n, int) or n < 0:
        raise ManoError(f"n must be a non-negative int, got {n!r}")
    gen = _generator(seed, generator)
    free = _mixture_free_degrees(n, gen) if mode == "mixture" else _sample_mode_free_degrees(n, mode, gen)
    table = torch.as_tensor(limits_array(limits)).view(3 * NUM_HAND_JOINTS, 2)  # row 3 * joint + angle
    free_rows = torch.tensor([3 * j + k for j, k in _FREE_ANGLES])
    angles = torch.zeros(3 * NUM_HAND_JOINTS, n, dtype=torch.float64)
    angles[free_rows] = torch.deg2rad(free).clamp(table[free_rows, :1], table[free_rows, 1:])
    # each DIP follows its PIP (after blending and clamping), with a little noise
    coupling_noise = math.radians(DIP_COUPLING_NOISE_DEG) * _normal((4, n), gen)
    for finger, name in enumerate(_FINGERS):
        _, pip, dip = (j - 1 for j in FINGER_CHAINS[name])
        dip_flex = DIP_PIP_RATIO * angles[3 * pip] + coupling_noise[finger]
        angles[3 * dip] = dip_flex.clamp(table[3 * dip, 0].item(), table[3 * dip, 1].item())
    if (table[:, 0] > 0).any() or (table[:, 1] < 0).any():
        # custom limits may exclude 0, where the angles that are not sampled sit
        angles = angles.clamp(table[:, :1], table[:, 1:])
    return angles.T.reshape(n, NUM_HAND_JOINTS, 3)


def sample_poses(
    n: int,
    seed: int | None = None,
    mode: str = "mixture",
    rest_joints: np.ndarray | torch.Tensor | None = None,
    parents: np.ndarray | list[int] | tuple[int, ...] | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    side: str | None = None,
    axes: HandAxes | None = None,
) -> torch.Tensor:
    """Sample anatomically plausible MANO hand poses (global orientation not included).

    Args:
        n: number of poses.
        seed: makes the draw reproducible (same numbers on every device and dtype).
        mode: 'open', 'grasp', 'pointing', 'fist', or 'mixture' (per-finger random blends
            of the other four, plus noise).
        rest_joints: (16, 3) rest joints of the model the poses are for (MANO order); their
            bones define the joint axes. None: the default model (the open hand).
        parents: the model's kinematic tree (must be MANO's); None: MANO's.
        generator: a CPU ``torch.Generator`` to draw from instead of ``seed``.
        dtype, device: of the returned tensor.
        side: 'right' / 'left' for the axes (see :func:`hand_axes`); None: from MANO's frame.
        axes: precomputed :class:`HandAxes`, instead of ``rest_joints``/``parents``/``side``.

    Returns:
        (n, 45) axis-angle per hand joint, MANO order, in the rest pose's world axes; every
        joint's anatomical angles lie within :data:`HAND_JOINT_LIMITS`.

    >>> axes = hand_axes(MANO_LIKE_REST_JOINTS)
    >>> sample_poses(4, seed=0, mode="fist", axes=axes).shape
    torch.Size([4, 45])
    """
    axes = _resolve_axes(axes, rest_joints, parents, side)
    angles = sample_anatomical_angles(n, seed=seed, mode=mode, generator=generator)
    # composing in float32 halves the memory traffic; float64 output is composed in float64
    compose_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    return angles_to_hand_pose(angles.to(compose_dtype), axes).to(dtype=dtype, device=device)


def sample_global_orient(
    n: int,
    seed: int | None = None,
    generator: torch.Generator | None = None,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """(n, 3) uniformly random rotations (Haar measure) as axis-angle, angles in [0, pi].

    A normalised 4D Gaussian is a uniform unit quaternion.
    """
    if not isinstance(n, int) or n < 0:
        raise ManoError(f"n must be a non-negative int, got {n!r}")
    gen = _generator(seed, generator)
    quaternion = _normal((n, 4), gen)
    quaternion = quaternion / quaternion.norm(dim=-1, keepdim=True).clamp_min(1e-12)
    quaternion = torch.where(quaternion[:, :1] < 0, -quaternion, quaternion)
    return quaternion_to_axis_angle(quaternion).to(dtype=dtype, device=device)


# --------------------------------------------------------------------------- PCA


class PosePCA(NamedTuple):
    """A pose PCA in MANO's layout (unpacks as ``components, mean``).

    Attributes:
        components: (45, 45) float64, rows are orthonormal components sorted by decreasing
            variance; each row's largest-magnitude entry is positive.
        mean: (45,) float64 mean pose.
    """

    components: np.ndarray
    mean: np.ndarray


def fit_pose_pca(poses: np.ndarray | torch.Tensor) -> PosePCA:
    """Principal components of hand poses, deterministic (for hands_components / hands_mean).

    Args:
        poses: (N, 45) axis-angle hand poses, N >= 2.

    Returns:
        :class:`PosePCA`; a pose is ``mean + coefficients @ components`` with
        ``coefficients = (pose - mean) @ components.T``.
    """
    data = poses.detach().cpu().double().numpy() if isinstance(poses, torch.Tensor) else np.asarray(poses, dtype=np.float64)
    if data.ndim != 2 or data.shape[1] != 3 * NUM_HAND_JOINTS or data.shape[0] < 2:
        raise ManoError(f"poses must have shape (N, 45) with N >= 2, got {data.shape}")
    if not np.isfinite(data).all():
        raise ManoError("poses contain NaN or Inf")
    mean = data.mean(axis=0)
    centred = data - mean
    variances, vectors = np.linalg.eigh(centred.T @ centred)  # ascending; 45 x 45, cheap for any N
    order = np.argsort(-variances, kind="stable")
    variances, components = variances[order], vectors[:, order].T
    significant = variances > 1e-12 * max(variances[0], 1e-300)
    components = np.concatenate([components[significant], _complement_basis(components[significant])])
    largest = np.abs(components).argmax(axis=1)
    signs = np.sign(components[np.arange(components.shape[0]), largest])
    components = components * signs[:, None]
    return PosePCA(components=np.ascontiguousarray(components), mean=mean)


def _complement_basis(basis: np.ndarray) -> np.ndarray:
    """Orthonormal rows spanning what ``basis`` (orthonormal rows) leaves out, chosen canonically.

    Directions without variance are arbitrary in an eigendecomposition (they may differ between
    LAPACK builds); here they are the unit axes, in order, projected off everything chosen so far.
    """
    chosen = list(basis)
    extra = []
    for axis in np.eye(basis.shape[1]):
        residual = axis - sum((row @ axis) * row for row in chosen) if chosen else axis
        norm = np.linalg.norm(residual)
        if norm > 1e-6:
            chosen.append(residual / norm)
            extra.append(residual / norm)
        if len(chosen) == basis.shape[1]:
            break
    return np.array(extra).reshape(-1, basis.shape[1])


# Approximate rest joints of a MANO-frame right hand (millimetre precision: fingers along -x,
# palm facing -y, thumb on the +z side), for examples and tests without a model file.
MANO_LIKE_REST_JOINTS = np.array(
    [
        [0.096, 0.006, 0.006],
        [0.008, 0.001, 0.027], [-0.025, 0.005, 0.029], [-0.047, 0.004, 0.029],
        [0.001, 0.005, 0.003], [-0.030, 0.007, -0.003], [-0.053, 0.006, -0.007],
        [0.027, -0.004, -0.037], [0.010, -0.003, -0.050], [-0.006, -0.004, -0.060],
        [0.014, 0.002, -0.020], [-0.014, 0.004, -0.026], [-0.038, 0.003, -0.033],
        [0.072, -0.009, 0.032], [0.052, -0.008, 0.056], [0.030, -0.014, 0.070],
    ]
)  # fmt: skip
