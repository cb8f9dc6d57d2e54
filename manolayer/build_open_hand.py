"""Build the project's CC0 MANO-format right hand, the "open hand", from MakeHuman assets.

The source is MakeHuman's hm08 base mesh, its default skeleton, skinning weights and
right-hand shape targets (CC0 1.0, upstream commit a8bc2d54, ``makehuman/data/``).
:func:`build_open_hand` turns them into a :class:`~manolayer.io.ManoModel`;
:func:`write_open_hand` saves it with its licence notice.

Frame (MANO's right-hand frame), in metres:

- origin: the wrist joint (centroid of MakeHuman's ``joint-r-hand`` helper cube);
- -x: the fingers; the wrist -> middle-finger knuckle direction is exactly -x;
- +z: the thumb side; the little -> index knuckle direction lies in the x-z plane, +z;
- -y: the palm (y = z cross x, a right-handed frame), so a positive rotation about +z
  flexes the four fingers.

What is derived, and how:

- mesh: the quads of group ``body`` whose four vertices carry more than half their skin
  weight on ``wrist.R`` and the bones below it, split into two triangles each along
  the same diagonal, keeping the file's counter-clockwise winding. Open at the wrist cut.
- joints, MANO order and tree: the wrist is ``wrist.R``'s head; each finger joint is the
  head of a finger bone (``finger1`` = thumb ... ``finger5`` = little); the metacarpal
  bones are folded into the wrist. Positions are the helper cube centroids.
- skinning weights: a MANO joint takes the weights of the bone whose head it is; every
  other bone (``wrist.R``, metacarpals, forearm, ...) goes to the wrist; rows sum to 1.
- joint regressor: per joint, an affine combination of the nearest surface vertices that
  reproduces the helper position exactly, so joints follow shape changes.
- shape blend shapes: one per incr/decr target pair, made wrist-fixed and orthogonal,
  scaled so that beta = +-3 is about the full target. The hand-translation pair
  (``trans-in/out``) is a rigid translation, not a shape, and is left out.
- pose corrections: none (``posedirs`` is zero). Pose PCA: fitted to poses drawn from
  :func:`manolayer.sampler.sample_poses`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from manolayer.io import ManoModel, save_mano_npz, write_bytes_atomic
from manolayer.joints import MANO_PARENTS
from manolayer.sampler import fit_pose_pca, sample_poses

UPSTREAM = "github.com/makehumancommunity/makehuman, commit a8bc2d54, folder makehuman/data/"
OPEN_HAND_FILE_NAME = "open_hand_right.npz"
LICENSE_FILE_NAME = "OPEN_HAND_LICENSE.md"

DECIMETRES_TO_METRES = 0.1
HAND_ROOT_BONE = "wrist.R"
# A body vertex is part of the hand when more than this much of its skin weight is on the hand bones.
HAND_WEIGHT_THRESHOLD = 0.5

# MANO joint j sits at the head of MakeHuman bone MANO_JOINT_BONES[j].
MANO_JOINT_BONES: tuple[str, ...] = (
    "wrist.R",
    "finger2-1.R", "finger2-2.R", "finger2-3.R",  # index
    "finger3-1.R", "finger3-2.R", "finger3-3.R",  # middle
    "finger5-1.R", "finger5-2.R", "finger5-3.R",  # little
    "finger4-1.R", "finger4-2.R", "finger4-3.R",  # ring
    "finger1-1.R", "finger1-2.R", "finger1-3.R",  # thumb
)  # fmt: skip
WRIST, INDEX_KNUCKLE, MIDDLE_KNUCKLE, LITTLE_KNUCKLE = 0, 1, 4, 7
# Distal MANO joint of each finger, in fingertip order: thumb, index, middle, ring, little.
DISTAL_JOINTS: tuple[int, ...] = (15, 3, 6, 12, 9)

# Joint regressor: the RING_SIZE vertices nearest to the joint, with offsets along the bone
# counted ALONG_BONE_STRETCH times, form a ring around the limb rather than a patch on one side.
RING_SIZE = 24
ALONG_BONE_STRETCH = 2.0

# Shape targets in beta order, each an (increase, decrease) pair of r-hand-*.target files.
SHAPE_TARGET_PAIRS: tuple[tuple[str, str], ...] = (
    ("scale-incr", "scale-decr"),
    ("fingers-length-incr", "fingers-length-decr"),
    ("fingers-distance-incr", "fingers-distance-decr"),
    ("fingers-diameter-incr", "fingers-diameter-decr"),
)
NUM_BETAS = 10
BETA_AT_FULL_TARGET = 3.0

POSE_PCA_SAMPLES = 20_000
POSE_PCA_SEED = 0

# Floats are rounded to multiples of 2**-32 (about 2e-10): far below any physical meaning,
# it makes rebuilds byte-identical even where BLAS builds differ in the last bits.
SNAP_QUANTUM = 2.0**-32


@dataclass(frozen=True)
class MakeHumanAssets:
    """The parts of the MakeHuman files the open hand is made from (all in decimetres).

    Attributes:
        vertices: (N, 3) base mesh vertices, N = 19,158 for hm08.
        body_quads: (Q, 4) vertex ids of the quads of group ``body``.
        bone_heads: bone name -> (3,) head position (centroid of its helper cube).
        bone_tails: bone name -> (3,) tail position.
        bone_parents: bone name -> parent bone name, or None for the root.
        skin_weights: bone name -> (ids (K,) int64, weights (K,) float64).
        targets: target name (e.g. ``'scale-incr'``) -> (N, 3) vertex offsets.
    """

    vertices: np.ndarray
    body_quads: np.ndarray
    bone_heads: dict[str, np.ndarray]
    bone_tails: dict[str, np.ndarray]
    bone_parents: dict[str, str | None]
    skin_weights: dict[str, tuple[np.ndarray, np.ndarray]]
    targets: dict[str, np.ndarray]


# --------------------------------------------------------------------------- reading


def read_makehuman_assets(assets_dir: str | Path) -> MakeHumanAssets:
    """Read ``base.obj``, ``default.mhskel``, ``default_weights.mhw`` and ``r-hand-*.target``."""
    assets_dir = Path(assets_dir)
    if not assets_dir.is_dir():
        raise FileNotFoundError(f"the MakeHuman assets folder {assets_dir} does not exist")
    needed = ["base.obj", "default.mhskel", "default_weights.mhw"]
    needed += [f"r-hand-{name}.target" for pair in SHAPE_TARGET_PAIRS for name in pair]
    missing = [name for name in needed if not (assets_dir / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{assets_dir} lacks the MakeHuman files {missing}; expected the hm08 assets")

    vertices, body_quads = _read_obj(assets_dir / "base.obj")
    skeleton = json.loads((assets_dir / "default.mhskel").read_text())
    helper_ids = skeleton["joints"]
    bones = skeleton["bones"]
    weights = json.loads((assets_dir / "default_weights.mhw").read_text())["weights"]
    return MakeHumanAssets(
        vertices=vertices,
        body_quads=body_quads,
        bone_heads={name: vertices[helper_ids[bone["head"]]].mean(0) for name, bone in bones.items()},
        bone_tails={name: vertices[helper_ids[bone["tail"]]].mean(0) for name, bone in bones.items()},
        bone_parents={name: bone["parent"] for name, bone in bones.items()},
        skin_weights={
            bone: (np.array([i for i, _ in pairs], dtype=np.int64), np.array([w for _, w in pairs], dtype=np.float64))
            for bone, pairs in weights.items()
        },
        targets={
            name: _read_target(assets_dir / f"r-hand-{name}.target", len(vertices))
            for pair in SHAPE_TARGET_PAIRS
            for name in pair
        },
    )


def _read_obj(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """(N, 3) vertices and (Q, 4) zero-based vertex ids of the quads in group ``body``."""
    vertices, quads = [], []
    group = None
    with path.open() as lines:
        for line in lines:
            if line.startswith("v "):
                vertices.append([float(token) for token in line.split()[1:4]])
            elif line.startswith("g "):
                group = line.split()[1]
            elif line.startswith("f ") and group == "body":
                corners = [int(token.split("/")[0]) - 1 for token in line.split()[1:]]
                if len(corners) != 4:
                    raise ValueError(f"{path}: a face of group 'body' has {len(corners)} corners; expected quads")
                quads.append(corners)
    return np.array(vertices, dtype=np.float64), np.array(quads, dtype=np.int64)


def _read_target(path: Path, num_vertices: int) -> np.ndarray:
    """(N, 3) offsets of a MakeHuman target (lines ``vertex dx dy dz``; unlisted vertices do not move)."""
    offsets = np.zeros((num_vertices, 3))
    rows = [line.split() for line in path.read_text().splitlines() if line.strip() and not line.startswith("#")]
    ids = np.array([int(row[0]) for row in rows], dtype=np.int64)
    offsets[ids] = np.array([[float(value) for value in row[1:4]] for row in rows])
    return offsets


# --------------------------------------------------------------------------- building


def build_open_hand(assets_dir: str | Path) -> ManoModel:
    """Build the open hand (right side, metres, MANO's frame and joint order) from MakeHuman assets.

    Args:
        assets_dir: folder holding MakeHuman's ``base.obj``, ``default.mhskel``,
            ``default_weights.mhw`` and the ``r-hand-*.target`` files.

    Returns:
        The model; building twice gives identical arrays.

    Raises:
        FileNotFoundError: a MakeHuman file is missing.
    """
    assets = read_makehuman_assets(assets_dir)
    hand_bones = _descendants(assets.bone_parents, HAND_ROOT_BONE)

    hand_weight = np.zeros(len(assets.vertices))
    for bone in sorted(hand_bones):
        ids, weights = assets.skin_weights[bone]
        np.add.at(hand_weight, ids, weights)
    quads = assets.body_quads[(hand_weight[assets.body_quads] > HAND_WEIGHT_THRESHOLD).all(axis=1)]
    kept_ids, quads = np.unique(quads, return_inverse=True)
    quads = quads.reshape(-1, 4)
    faces = np.concatenate([quads[:, [0, 1, 2]], quads[:, [0, 2, 3]]])

    joints_dm = np.stack([assets.bone_heads[bone] for bone in MANO_JOINT_BONES])
    bone_tails_dm = np.stack([assets.bone_tails[bone] for bone in MANO_JOINT_BONES])
    rotation = _mano_frame(joints_dm)

    def to_mano(points_dm: np.ndarray) -> np.ndarray:
        return (points_dm - joints_dm[WRIST]) @ rotation.T * DECIMETRES_TO_METRES

    v_template = _snap(to_mano(assets.vertices[kept_ids]))
    joints = to_mano(joints_dm)
    bone_directions = to_mano(bone_tails_dm) - joints
    bone_directions /= np.linalg.norm(bone_directions, axis=1, keepdims=True)

    skin = _mano_skin_weights(assets.skin_weights, kept_ids, len(assets.vertices))
    J_regressor = _snap_rows_to_sum_one(
        np.stack([_ring_regressor_row(v_template, joints[j], bone_directions[j]) for j in range(len(joints))])
    )
    offsets = {name: target[kept_ids] @ rotation.T * DECIMETRES_TO_METRES for name, target in assets.targets.items()}
    shapedirs = _snap(_shape_basis(offsets, J_regressor[WRIST]))
    rest_joints = J_regressor @ v_template
    hands_components, hands_mean = _pose_pca(rest_joints)

    return ManoModel(
        v_template=v_template,
        faces=faces.astype(np.int64),
        shapedirs=shapedirs,
        posedirs=np.zeros((len(v_template), 3, 9 * (len(MANO_PARENTS) - 1))),
        J_regressor=J_regressor,
        weights=skin,
        parents=np.array(MANO_PARENTS, dtype=np.int64),
        hands_components=_snap(hands_components),
        hands_mean=_snap(hands_mean),
        fingertip_ids=_fingertip_ids(v_template, skin, rest_joints, bone_directions),
        side="right",
        source=f"open hand built from MakeHuman hm08 assets ({UPSTREAM})",
    )


def _descendants(parents: dict[str, str | None], root: str) -> set[str]:
    """``root`` and every bone below it."""
    found = {root}
    for bone in sorted(parents):
        chain = []
        while bone is not None and bone not in found:
            chain.append(bone)
            bone = parents[bone]
        if bone is not None:
            found.update(chain)
    return found


def _mano_frame(joints_dm: np.ndarray) -> np.ndarray:
    """(3, 3) rotation whose rows are MANO's x, y, z axes in MakeHuman coordinates.

    x points from the middle knuckle to the wrist, z from the little knuckle towards
    the index knuckle (made orthogonal to x), y = z cross x; for a right hand the palm
    then faces -y.
    """
    x_axis = joints_dm[WRIST] - joints_dm[MIDDLE_KNUCKLE]
    x_axis /= np.linalg.norm(x_axis)
    z_axis = joints_dm[INDEX_KNUCKLE] - joints_dm[LITTLE_KNUCKLE]
    z_axis -= x_axis * (z_axis @ x_axis)
    z_axis /= np.linalg.norm(z_axis)
    return np.stack([x_axis, np.cross(z_axis, x_axis), z_axis])


def _mano_skin_weights(
    skin_weights: dict[str, tuple[np.ndarray, np.ndarray]], kept_ids: np.ndarray, num_vertices: int
) -> np.ndarray:
    """(V, 16) weights: each bone's weights go to the MANO joint at its head, all others to the wrist."""
    column_of_bone = {bone: j for j, bone in enumerate(MANO_JOINT_BONES)}
    row_of_vertex = np.full(num_vertices, -1)
    row_of_vertex[kept_ids] = np.arange(len(kept_ids))
    weights = np.zeros((len(kept_ids), len(MANO_JOINT_BONES)))
    for bone in sorted(skin_weights):
        ids, values = skin_weights[bone]
        rows = row_of_vertex[ids]
        np.add.at(weights[:, column_of_bone.get(bone, WRIST)], rows[rows >= 0], values[rows >= 0])
    return _snap_rows_to_sum_one(weights / weights.sum(axis=1, keepdims=True))


def _ring_regressor_row(vertices: np.ndarray, joint: np.ndarray, bone_direction: np.ndarray) -> np.ndarray:
    """(V,) affine weights over a ring of vertices around ``joint`` with ``row @ vertices == joint``.

    Starts from the ring's centroid (equal weights) and applies the smallest change to
    the weights that moves their combination onto the joint while keeping their sum 1.
    The wrist joint lies just outside the mesh, past the wrist cut, so its row needs a
    few negative weights; the other joints sit inside their rings.
    """
    offsets = vertices - joint
    along = offsets @ bone_direction
    across = offsets - along[:, None] * bone_direction
    distance = np.sqrt((across**2).sum(1) + (ALONG_BONE_STRETCH * along) ** 2)
    ring = np.argsort(distance, kind="stable")[:RING_SIZE]
    # constraints: rows 0-2 reproduce the joint, row 3 keeps the sum at 1
    constraints = np.vstack([vertices[ring].T, np.ones(RING_SIZE)])
    start = np.full(RING_SIZE, 1.0 / RING_SIZE)
    residual = np.append(joint, 1.0) - constraints @ start
    row = np.zeros(len(vertices))
    row[ring] = start + constraints.T @ np.linalg.solve(constraints @ constraints.T, residual)
    return row


def _shape_basis(offsets: dict[str, np.ndarray], wrist_row: np.ndarray) -> np.ndarray:
    """(V, 3, NUM_BETAS) orthogonal shape blend shapes from the target pairs, zero-padded.

    Each pair gives one direction, half the increase minus the decrease (the two are
    near-parallel but of unequal size). The wrist's displacement is subtracted so the
    wrist joint stays at the origin for every shape: a shift of the whole hand is a
    translation, which the layer's own translation already models. Directions are
    orthogonalised in SHAPE_TARGET_PAIRS order (Gram-Schmidt), so beta 0 is hand size,
    beta 1 finger length beyond size, and so on; each is scaled so that
    beta = BETA_AT_FULL_TARGET reproduces its part of the pair's mean target.
    """
    num_vertices = len(wrist_row)
    basis = np.zeros((num_vertices * 3, NUM_BETAS))
    units: list[np.ndarray] = []
    for k, (increase, decrease) in enumerate(SHAPE_TARGET_PAIRS):
        direction = 0.5 * (offsets[increase] - offsets[decrease])
        direction = (direction - wrist_row @ direction).ravel()
        new_part = direction.copy()
        for unit in units:
            new_part -= (unit @ new_part) * unit
        unit = new_part / np.linalg.norm(new_part)
        units.append(unit)
        basis[:, k] = unit * (unit @ direction) / BETA_AT_FULL_TARGET
    return basis.reshape(num_vertices, 3, NUM_BETAS)


def _fingertip_ids(
    vertices: np.ndarray, skin: np.ndarray, joints: np.ndarray, bone_directions: np.ndarray
) -> np.ndarray:
    """(5,) ids of the vertex furthest along each distal bone, among the vertices it moves most."""
    segment = skin.argmax(axis=1)
    tips = []
    for joint in DISTAL_JOINTS:
        candidates = np.flatnonzero(segment == joint)
        reach = (vertices[candidates] - joints[joint]) @ bone_directions[joint]
        tips.append(candidates[np.argmax(reach)])
    return np.array(tips, dtype=np.int64)


def _pose_pca(rest_joints: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(45, 45) pose PCA components (rows, by variance) and (45,) mean of sampled anatomical poses."""
    poses = sample_poses(
        POSE_PCA_SAMPLES,
        seed=POSE_PCA_SEED,
        mode="mixture",
        rest_joints=rest_joints,
        parents=MANO_PARENTS,
        side="right",
        dtype=torch.float64,
    )
    components, mean = fit_pose_pca(poses)
    return components, mean


def _snap(values: np.ndarray) -> np.ndarray:
    """``values`` rounded to multiples of SNAP_QUANTUM (``-0.0`` becomes ``0.0``)."""
    return np.round(values / SNAP_QUANTUM) * SNAP_QUANTUM + 0.0


def _snap_rows_to_sum_one(matrix: np.ndarray) -> np.ndarray:
    """Snap ``matrix`` and move each row's rounding residual onto its largest entry.

    Sums of multiples of SNAP_QUANTUM this small are exact in float64, so every row then
    sums to exactly 1.
    """
    snapped = _snap(matrix)
    largest = np.abs(snapped).argmax(axis=1)
    snapped[np.arange(len(snapped)), largest] += 1.0 - snapped.sum(axis=1)
    return snapped


# --------------------------------------------------------------------------- writing


def write_open_hand(assets_dir: str | Path, out_dir: str | Path) -> Path:
    """Build the open hand and write ``out_dir/open_hand_right.npz`` and its licence notice.

    Returns:
        The path of the ``.npz`` file.
    """
    out_dir = Path(out_dir)
    model = build_open_hand(assets_dir)
    model_path = save_mano_npz(out_dir / OPEN_HAND_FILE_NAME, model)
    write_bytes_atomic(out_dir / LICENSE_FILE_NAME, license_notice(model).encode())
    return model_path


def license_notice(model: ManoModel) -> str:
    """The Markdown licence notice shipped next to the open hand."""
    extent = " x ".join(f"{size:.1f}" for size in (model.v_template.max(0) - model.v_template.min(0)) * 100)
    return f"""# Open hand: licence and provenance

`{OPEN_HAND_FILE_NAME}` is a MANO-format right-hand model derived from MakeHuman assets.
It is released under **CC0 1.0 Universal** (public domain dedication), like its sources:
to the extent possible under law, the authors have waived all copyright and related or
neighbouring rights to it. Full text: https://creativecommons.org/publicdomain/zero/1.0/legalcode

No file of the official MANO model (or of any other licence-restricted source) was used.

## Sources

MakeHuman hm08 assets, CC0 1.0, from {UPSTREAM}.
Copyright holders at the release to CC0 (September 2020): Data Collection AB, Joel Palmius,
Jonas Hauquier; shape targets originally (C) 2014 Manuel Bastioni.

- `base.obj` (the hm08 base mesh): hand surface and joint helper cubes;
- `default.mhskel` (the default skeleton): bones (head, tail, parent) and their helper cubes;
- `default_weights.mhw`: skinning weights;
- `r-hand-{{scale,fingers-length,fingers-distance,fingers-diameter}}-{{incr,decr}}.target`:
  shape blend shapes.

## Frame and units

Metres. Right hand. Origin at the wrist joint. Fingers point along -x (the wrist to
middle-knuckle direction is exactly -x), the palm faces -y, the thumb is on the +z side;
a positive rotation about +z flexes the four fingers (MANO's right-hand frame).

## What was derived, and how

- **Mesh**: {model.num_vertices} vertices, {len(model.faces)} triangles, about {extent} cm (x, y, z).
  The quads of group `body` whose four vertices carry more than {HAND_WEIGHT_THRESHOLD} of their skin
  weight on `wrist.R` and the bones below it, each split into two triangles, winding kept
  (counter-clockwise seen from outside); one connected piece, open at the wrist cut.
  Decimetres scaled to metres.
- **Joints** (16, MANO order and tree): wrist = head of `wrist.R`; index, middle, little, ring
  = heads of `finger2-*`, `finger3-*`, `finger5-*`, `finger4-*`; thumb = heads of
  `finger1-1..3` (first thumb joint = carpometacarpal). Positions are the centroids of the
  `joint-r-hand` and `joint-r-finger-F-K` helper cubes. The metacarpal bones are folded into
  the wrist.
- **Skinning weights**: a joint takes the weights of the bone whose head it is; the weights of
  every other bone (`wrist.R`, `metacarpal1-4.R`, forearm, ...) go to the wrist; rows
  renormalised to sum to 1.
- **Joint regressor**: for each joint, the {RING_SIZE} nearest surface vertices (offsets along
  the bone counted {ALONG_BONE_STRETCH:g}x) with equal weights, then the least change to those weights
  that makes the combination hit the helper position exactly (rows sum to 1).
- **Shape blend shapes**: {len(SHAPE_TARGET_PAIRS)} of {NUM_BETAS} used, the rest zero. One per target pair, in the
  order scale, finger length, finger distance, finger diameter, from half of (incr - decr);
  the wrist displacement removed (the wrist stays at the origin); Gram-Schmidt
  orthogonalised in that order; scaled so beta = +-{BETA_AT_FULL_TARGET:g} gives about the full target.
  The `trans-in/out` pair moves the hand rigidly (a translation, not a shape) and is not used.
- **Pose correctives**: none (`posedirs` is zero; plain linear blend skinning).
- **Pose PCA** (`hands_components`, `hands_mean`): principal components of {POSE_PCA_SAMPLES:,}
  anatomically plausible poses drawn by the project's own sampler (`manolayer.sampler`,
  seed {POSE_PCA_SEED}) for this model's rest joints.
- **Fingertip vertices** (thumb, index, middle, ring, little): {", ".join(str(i) for i in model.fingertip_ids)};
  each the vertex furthest along its finger's distal bone.
- **Rounding**: every float is a multiple of 2^-32 (about 2e-10), so rebuilds give the same
  bytes.

Rebuild with `meshrec build-open-hand --assets ../shared/makehuman --out manolayer/assets/`
(`manolayer/build_open_hand.py`); the same assets always give the same bytes.
"""
