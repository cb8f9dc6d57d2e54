"""Training losses of the hand reconstruction model, masked per sample by the label masks.

One batch may mix fully labelled samples (mesh, 3D joints, MANO) with sparsely labelled ones
(2D keypoints only). Every supervised term is a *masked mean*: computed for every sample,
multiplied by the sample's label mask and divided by the number of labelled samples (or visible
joints). A batch without a kind of label gives exactly 0 for its terms, still connected to the
graph (zero gradients reach every parameter, which DDP wants), never NaN.

Terms (``LossOutput.terms`` keys = :data:`TERM_NAMES`; each value is already weighted). Units are
those of the tensors: metres, radians, pixels divided by the image size.

================== ============================================================ ==============
term               per sample                                                   samples
================== ============================================================ ==============
vertices           mean over vertices of the L1 norm ``|dx|+|dy|+|dz|`` (m)     has_mesh
                   once each mesh's centroid is removed, summed over
                   full-resolution stages (global, coarse_to_fine, pass_1..T)
                   and coarser levels (label down-sampled)
joints3d           same L1 on root-relative joints (m), summed over stages      has_joints3d
root               L1 of the absolute wrist (m), summed over stages             has_joints3d
joints2d           ``|du|/W + |dv|/H`` of the projected joints, mean over       has_joints2d,
                   visible joints of the batch, summed over stages              visible joints
normals            mean over faces of ``1 - cos`` between face normals,         has_mesh
                   summed over stages
edges              mean over unique edges of ``|len - len_label|`` (m), stages  has_mesh
mano_pose          mean over the 16 joints of ``||R - R_label||_F^2``           has_mano
mano_shape         mean over components of ``(beta - beta_label)^2``            has_mano
pose_prior         mean over the 15 hand joints of ``||R - R_mean||_F^2``       all
                   (right-hand convention, mean = the model's mean hand pose)
shape_prior        mean over components of ``beta^2``                           all
joint_limits       sum of squared :func:`manolayer.sampler.limit_violation`     all
                   (radians^2) over the 15 hand joints x (flex, spread, twist)
laplacian          mean over vertices of ``||L(refined) - L(global)||`` (m),    not has_mesh
                   uniform graph Laplacian, summed over refined stages
closeness          mean over vertices of ``||refined - global||`` (m), stages   not has_mesh
silhouette         mean over pixels of ``|soft mask - mask|``, final mesh       has_mask
uncertainty        mean over joints 1..20 of the NLL of the joint error under   has_joints3d
                   the predicted variance, summed over passes
gate               BCE of the exit logit vs a detached target, summed over      has_mesh or
                   passes                                                       has_joints3d
keypoints2d        head's 2D error (as joints2d) + its groups' errors weighted  has_joints2d,
                   by the (detached) joint-to-group assignment                  visible joints
keypoint_depth     L1 of the head's root-relative depth (m), + groups as above  has_joints3d
keypoint_consistency  ``|du|/W + |dv|/H`` between the mesh joints' projection   all
                   and the head's 2D (head detached), mean over joints, stages
================== ============================================================ ==============

Choices worth knowing:

- The vertex term ignores translation (centroids removed); placement is the ``root`` and
  ``joints2d`` terms' job. In the camera frame an early model's depth is off by ~70 mm, and
  the L1 gradient of such a mesh is the same sign at every vertex: it says "move back" and
  nothing about the pose. Measured (docs/benchmarks.md): the global stage's PA-MPVPE after
  167 steps went 26.4 -> 17.1 mm with centring.
- Default weights put 3D first: ``joints2d`` is 0.1 and ``mano_pose`` 1.0. A normalised 2D
  error of 10 px at 128 px is 0.16 against ~0.03 for a 10 mm vertex L1, so at equal weights
  the projection term dominated and, while the orientation is still unknown, bent the fingers
  to fit the 2D joints: the global stage ended *worse* than the mean hand after PA (15.7 mm
  vs 12.9); with these weights it stays at the mean hand (13.0) while it learns.
- Stages are summed, not averaged: every stage gets the full weight (deep supervision), so a
  model with more passes has a larger total. The last stage is the final output, so "final"
  is never counted twice.
- The laplacian and closeness terms compare the refined meshes with the *detached* parametric
  mesh: they keep the refinement a hand where no mesh label says otherwise; they do not pull
  the parametric stage toward the refined mesh.
  Their default weight is 1.0: at 0.1 the 2D term bent the refined meshes of 2D-only samples,
  and the mixed config's final mesh ended 1.3 mm PA-MPVPE worse than its parametric one after
  9 minutes (12.74 vs 11.44 mm, demo set, step 671); at 1.0 the gap was 0.5 mm (12.12 vs 11.58).
- Uncertainty: the joint error is *detached*, so the NLL trains the variance head only (the
  joints are trained by their own terms). The error of joint 0 (the wrist) is identically 0 in
  the root-relative frame, so joint 0 is left out of the NLL (its variance is not trained).
  Gaussian: ``e^2 / (2 sigma^2) + log(sigma^2) / 2``; Laplace with scale ``b = sigma / sqrt(2)``
  (so that its variance is sigma^2): ``sqrt(2) e / sigma + log(sigma^2) / 2``. Additive
  constants are dropped (values may be negative), ``e`` is the Euclidean norm of the error.
- Gate targets (:func:`gate_targets`): pass t's target is 1 ("exit") when pass t + 1 lowers the
  sample's error by less than ``gate_epsilon_mm``, and 1 for the last pass. The error is the mean
  per-vertex distance for samples with a mesh, else the mean per-joint distance (absolute, both);
  samples with neither get no gate loss.
- Sides: predictions and labels are in each sample's own camera frame, so comparisons are
  direct (a left hand's normals point inward with the right hand's faces, in the label mesh and
  in the prediction alike, so ``1 - cos`` is unaffected). The pose prior and joint limits use
  right-hand conventions: a left sample's rotations are un-mirrored first, ``R -> M R M`` with
  ``M = diag(-1, 1, 1)``.
- The pose prior and joint limits need the hand model's mean pose and joint axes: pass
  ``prior=HandPrior.from_model(model.hand_model)``; without it the open hand's are used.
- No ``.item()`` or data-dependent branching in the loss path, except for the silhouette term
  when its weight is > 0 (it renders only the samples that have a mask). The edge list and
  Laplacian neighbour table are built on the host once per faces tensor, then cached.
"""

from __future__ import annotations

import functools
import math
import numbers
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from manolayer.io import ManoModel, load_mano, mirror_model
from manolayer.rotations import axis_angle_to_matrix, matrix_to_axis_angle
from manolayer.sampler import HandAxes, hand_axes, limit_violation
from meshrec.errors import MeshrecError
from meshrec.geometry.camera import project_points

if TYPE_CHECKING:  # pragma: no cover - typing only
    from meshrec.data.sample import HandBatch
    from meshrec.models.reconstructor import Prediction

__all__ = [
    "DISTRIBUTIONS",
    "TERM_NAMES",
    "HandPrior",
    "LossConfig",
    "LossOutput",
    "default_hand_prior",
    "face_normals",
    "gate_targets",
    "hand_losses",
    "masked_mean",
    "mesh_edges",
    "normalized_pixel_error",
    "uncertainty_nll",
    "uniform_laplacian",
    "unmirror_rotations",
    "warmup_factor",
]

TERM_NAMES: tuple[str, ...] = (
    "vertices", "joints3d", "root", "joints2d", "normals", "edges", "mano_pose", "mano_shape",
    "pose_prior", "shape_prior", "joint_limits", "laplacian", "closeness", "silhouette",
    "uncertainty", "gate", "keypoints2d", "keypoint_depth", "keypoint_consistency",
)  # fmt: skip
"""Names of the loss terms: the weight fields of :class:`LossConfig` and the keys of ``LossOutput.terms``."""

DISTRIBUTIONS: tuple[str, ...] = ("gaussian", "laplace")

SIDE_LEFT = 1
_SQRT2 = math.sqrt(2.0)
# Added under square roots of squared lengths: a zero-length edge keeps a finite gradient.
_LENGTH_EPS_SQ = 1e-18
# Face normals are n / max(|n|, eps) with |n| = twice the face area (m^2). Hand faces have
# |n| ~ 1e-5 (the open hand's smallest 5e-7), so they get exact unit normals, while a degenerate
# face's gradient stays bounded (by 1 / eps) instead of exploding.
_NORMAL_EPS = 1e-8


@dataclass
class LossConfig:
    """Weights and schedules of every loss term (see the module docstring for each term).

    Attributes:
        vertices ... keypoint_consistency: the weight of each term in :data:`TERM_NAMES`
            (>= 0; 0 switches a term off: it is not computed and absent from ``terms``).
        uncertainty_distribution: ``'gaussian'`` or ``'laplace'``, the error model of the NLL.
        gate_epsilon_mm: a pass's gate target is "exit" when the next pass improves the error
            by less than this (millimetres).
        warmup: term name -> steps over which its weight ramps linearly from 0 to its value.
    """

    vertices: float = 1.0
    joints3d: float = 1.0
    root: float = 1.0
    joints2d: float = 0.1
    normals: float = 0.1
    edges: float = 1.0
    mano_pose: float = 1.0
    mano_shape: float = 0.01
    pose_prior: float = 0.001
    shape_prior: float = 0.001
    joint_limits: float = 0.01
    laplacian: float = 1.0
    closeness: float = 1.0
    silhouette: float = 0.0
    uncertainty: float = 0.01
    uncertainty_distribution: str = "gaussian"
    gate: float = 0.1
    gate_epsilon_mm: float = 1.0
    keypoints2d: float = 1.0
    keypoint_depth: float = 1.0
    keypoint_consistency: float = 0.1
    warmup: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for name in TERM_NAMES:
            value = getattr(self, name)
            if not _is_real(value) or not math.isfinite(value) or value < 0:
                raise MeshrecError(f"loss.{name} must be a finite number >= 0, got {value!r}")
        if self.uncertainty_distribution not in DISTRIBUTIONS:
            raise MeshrecError(
                f"loss.uncertainty_distribution must be one of {DISTRIBUTIONS}, got {self.uncertainty_distribution!r}"
            )
        if not _is_real(self.gate_epsilon_mm) or not math.isfinite(self.gate_epsilon_mm) or self.gate_epsilon_mm < 0:
            raise MeshrecError(f"loss.gate_epsilon_mm must be a finite number >= 0, got {self.gate_epsilon_mm!r}")
        if not isinstance(self.warmup, dict):
            raise MeshrecError(f"loss.warmup must be a mapping term -> steps, got {type(self.warmup).__name__}")
        unknown = sorted(str(name) for name in self.warmup if name not in TERM_NAMES)
        if unknown:
            raise MeshrecError(f"loss.warmup names unknown terms {unknown}; valid terms: {', '.join(TERM_NAMES)}")
        for name, steps in self.warmup.items():
            if not isinstance(steps, numbers.Integral) or isinstance(steps, bool) or steps < 0:
                raise MeshrecError(f"loss.warmup.{name} must be an int number of steps >= 0, got {steps!r}")


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


@dataclass
class LossOutput:
    """What :func:`hand_losses` returns.

    Attributes:
        total: scalar, the sum of ``terms``.
        terms: term name -> weighted scalar (warmup applied); only terms with a weight > 0 that
            apply to the prediction (e.g. no ``gate`` without loop passes).
        parts: unweighted, detached scalars per term and stage (``'vertices/pass_2'``,
            ``'joints2d/global'``, ...), for logging and for finding where a term comes from.
    """

    total: Tensor
    terms: dict[str, Tensor]
    parts: dict[str, Tensor] = field(default_factory=dict)


# ---------------------------------------------------------------------------- hand prior


@dataclass(frozen=True)
class HandPrior:
    """What the pose prior and the joint limits need to know about the (right) hand model.

    Attributes:
        mean_rotations: ``(15, 3, 3)`` float64, the mean hand pose's rotation of each hand joint
            (MANO order, joint 1..15), right hand, absolute (flat-mean) local rotations.
        axes: the hand joints' anatomical frames (:func:`manolayer.sampler.hand_axes`), right hand.
    """

    mean_rotations: np.ndarray
    axes: HandAxes
    _cache: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_model(cls, model: ManoModel) -> HandPrior:
        """The prior of a hand model (a left model is mirrored to the right first)."""
        if model.side == "left":
            model = mirror_model(model)
        if model.num_joints != 16:
            raise MeshrecError(f"the hand prior needs a 16-joint MANO-format model, got {model.num_joints} joints")
        mean = np.zeros((15, 3)) if model.hands_mean is None else np.asarray(model.hands_mean, dtype=np.float64).reshape(15, 3)
        rotations = axis_angle_to_matrix(torch.from_numpy(mean)).numpy()
        return cls(mean_rotations=rotations, axes=hand_axes(model.rest_joints, model.parents, side="right"))

    def mean_rotations_like(self, like: Tensor) -> Tensor:
        """``(15, 3, 3)`` :attr:`mean_rotations` on ``like``'s device and dtype (cached)."""
        key = (like.device, like.dtype)
        if key not in self._cache:
            self._cache[key] = torch.as_tensor(self.mean_rotations, dtype=like.dtype, device=like.device)
        return self._cache[key]


@functools.lru_cache(maxsize=1)
def default_hand_prior() -> HandPrior:
    """The prior of the project's open hand (used when :func:`hand_losses` gets no ``prior``)."""
    return HandPrior.from_model(load_mano(None, side="right"))


# ---------------------------------------------------------------------------- pure kernels

# (M R M)[i, j] = m_i m_j R[i, j] for M = diag(m) = diag(-1, 1, 1)
_MIRROR_SIGNS = ((1.0, -1.0, -1.0), (-1.0, 1.0, 1.0), (-1.0, 1.0, 1.0))
_CONSTANTS: dict[tuple, Tensor] = {}


def _constant(values: tuple, like: Tensor) -> Tensor:
    """``values`` as a tensor on ``like``'s device and dtype, copied there once (a host-to-device
    copy per call would synchronise the GPU stream)."""
    key = (values, like.device, like.dtype)
    if key not in _CONSTANTS:
        _CONSTANTS[key] = torch.tensor(values, dtype=like.dtype, device=like.device)
    return _CONSTANTS[key]



def masked_mean(values: Tensor, weights: Tensor) -> Tensor:
    """Weighted mean ``sum(values * weights) / max(sum(weights), 1)``: 0 when every weight is 0.

    Args:
        values: any shape, finite wherever the weight is 0 too (0 * inf is NaN).
        weights: bool or float, broadcastable to ``values`` and of the same number of elements
            after broadcasting (e.g. ``(B,)`` masks for ``(B,)`` values, ``(B, J)`` for ``(B, J)``).
    """
    weights = weights.to(values.dtype)
    weights = weights.expand_as(values)
    return (values * weights).sum() / weights.sum().clamp(min=1.0)


def normalized_pixel_error(pixels: Tensor, target: Tensor, image_size: tuple[int, int]) -> Tensor:
    """``|du| / W + |dv| / H`` per point: ``(..., N, 2)`` pixels -> ``(..., N)``, independent of resolution."""
    height, width = image_size
    difference = (pixels - target).abs()
    return difference[..., 0] / width + difference[..., 1] / height


def face_normals(vertices: Tensor, faces: Tensor) -> Tensor:
    """Unit normals ``(B, F, 3)`` of the faces ``(F, 3)`` of meshes ``(B, V, 3)`` (metres).

    ``n = (v1 - v0) x (v2 - v0)`` divided by ``max(|n|, 1e-8)``: unit length for any face wider
    than about 0.1 mm, shorter for smaller ones (the zero vector for a degenerate face), with
    bounded gradients.
    """
    corners = vertices[:, faces]  # (B, F, 3 corners, 3 xyz)
    normal = torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0], dim=-1)
    return F.normalize(normal, dim=-1, eps=_NORMAL_EPS)


@dataclass(frozen=True)
class _FaceStructure:
    """Per faces tensor: unique edges and the padded neighbour table of the uniform Laplacian."""

    faces: Tensor  # kept so its memory (and hence its data_ptr key) is never reused while cached
    edges: Tensor  # (E, 2) int64, i < j
    neighbours: Tensor  # (V, D) int64, padded with the vertex itself
    neighbour_weights: Tensor  # (V, D) float64, 1 / degree for real neighbours, 0 for padding


_FACE_STRUCTURES: dict[tuple, _FaceStructure] = {}
_FACE_STRUCTURE_CACHE_SIZE = 8


def _face_structure(faces: Tensor, num_vertices: int) -> _FaceStructure:
    """Edges and Laplacian neighbours of ``faces``, built once per faces tensor and cached.

    The key is the tensor's memory address, shape, device, vertex count and in-place version
    counter; the cache holds a reference to the tensor, so the address cannot be reused by
    another tensor while its entry lives.
    """
    key = (
        faces.data_ptr(), tuple(faces.shape), tuple(faces.stride()), str(faces.device), faces.dtype, faces._version, num_vertices,
    )  # fmt: skip
    cached = _FACE_STRUCTURES.get(key)
    if cached is not None:
        return cached
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.dtype.is_floating_point:
        raise MeshrecError(f"faces must be an integer tensor of shape (F, 3), got {faces.dtype} {tuple(faces.shape)}")
    table = faces.detach().cpu().numpy().astype(np.int64)
    if table.size and (table.min() < 0 or table.max() >= num_vertices):
        raise MeshrecError(f"faces index vertices {table.min()}..{table.max()}, but the meshes have {num_vertices} vertices")
    pairs = np.concatenate([table[:, [0, 1]], table[:, [1, 2]], table[:, [2, 0]]])
    pairs = np.sort(pairs, axis=1)
    edges = np.unique(pairs[pairs[:, 0] != pairs[:, 1]], axis=0)
    directed = np.concatenate([edges, edges[:, ::-1]])
    directed = directed[np.lexsort((directed[:, 1], directed[:, 0]))]
    degree = np.bincount(directed[:, 0], minlength=num_vertices)
    width = max(int(degree.max()) if degree.size else 0, 1)
    neighbours = np.repeat(np.arange(num_vertices)[:, None], width, axis=1)
    weights = np.zeros((num_vertices, width))
    starts = np.concatenate([[0], np.cumsum(degree)[:-1]])
    slot = np.arange(len(directed)) - starts[directed[:, 0]]
    neighbours[directed[:, 0], slot] = directed[:, 1]
    weights[directed[:, 0], slot] = 1.0 / degree[directed[:, 0]]
    device = faces.device
    structure = _FaceStructure(
        faces=faces,
        edges=torch.as_tensor(edges, device=device),
        neighbours=torch.as_tensor(neighbours, device=device),
        neighbour_weights=torch.as_tensor(weights, device=device),
    )
    if len(_FACE_STRUCTURES) >= _FACE_STRUCTURE_CACHE_SIZE:
        _FACE_STRUCTURES.pop(next(iter(_FACE_STRUCTURES)))
    _FACE_STRUCTURES[key] = structure
    return structure


def mesh_edges(faces: Tensor, num_vertices: int | None = None) -> Tensor:
    """``(E, 2)`` int64 unique undirected edges ``(i, j)``, ``i < j``, of triangles ``(F, 3)`` (cached)."""
    if num_vertices is None:
        num_vertices = int(faces.max()) + 1 if faces.numel() else 0
    return _face_structure(faces, num_vertices).edges


def uniform_laplacian(vertices: Tensor, faces: Tensor) -> Tensor:
    """Uniform graph Laplacian ``L(x)_i = x_i - mean_{j ~ i} x_j`` of meshes ``(B, V, 3)``.

    Neighbours are the vertices sharing an edge of ``faces`` ``(F, 3)``; a vertex in no face
    has ``L(x)_i = x_i``. The neighbour table is built once per faces tensor and cached.
    """
    structure = _face_structure(faces, vertices.shape[-2])
    weights = structure.neighbour_weights.to(vertices.dtype)
    gathered = vertices[:, structure.neighbours]  # (B, V, D, 3)
    return vertices - (gathered * weights[..., None]).sum(-2)


def _edge_lengths(vertices: Tensor, edges: Tensor) -> Tensor:
    """``(B, E)`` lengths of ``edges`` ``(E, 2)`` in meshes ``(B, V, 3)``."""
    delta = vertices[:, edges[:, 0]] - vertices[:, edges[:, 1]]
    return (delta.square().sum(-1) + _LENGTH_EPS_SQ).sqrt()


def uncertainty_nll(error: Tensor, log_variance: Tensor, distribution: str = "gaussian") -> Tensor:
    """Negative log-likelihood of an error magnitude under a predicted variance, constants dropped.

    Args:
        error: ``(...)`` error norms ``e`` >= 0 (metres); detach them to train only the variance.
        log_variance: ``(...)`` ``log sigma^2`` (metres^2).
        distribution: ``'gaussian'``: ``e^2 / (2 sigma^2) + log(sigma^2) / 2`` (minimum at
            ``sigma = e``); ``'laplace'`` with scale ``b = sigma / sqrt(2)`` (variance sigma^2):
            ``sqrt(2) e / sigma + log(sigma^2) / 2`` (minimum at ``sigma = sqrt(2) e``).
    """
    if distribution == "gaussian":
        return 0.5 * error.square() * torch.exp(-log_variance) + 0.5 * log_variance
    if distribution == "laplace":
        return _SQRT2 * error * torch.exp(-0.5 * log_variance) + 0.5 * log_variance
    raise MeshrecError(f"distribution must be one of {DISTRIBUTIONS}, got {distribution!r}")


def gate_targets(errors: Sequence[Tensor], epsilon: float) -> list[Tensor]:
    """Detached exit targets of the loop passes.

    Args:
        errors: per pass t = 1..T, ``(B,)`` each sample's error after that pass (metres).
        epsilon: the improvement (metres) below which another pass is not worth it.

    Returns:
        per pass, ``(B,)`` float: 1 ("exit") where ``errors[t] - errors[t + 1] < epsilon``,
        else 0; the last pass's target is 1.
    """
    targets = []
    for index, error in enumerate(errors):
        if index + 1 < len(errors):
            target = (error.detach() - errors[index + 1].detach()) < epsilon
            targets.append(target.to(error.dtype))
        else:
            targets.append(torch.ones_like(error).detach())
    return targets


def unmirror_rotations(rotations: Tensor, side: Tensor) -> Tensor:
    """Rotations ``(B, ..., 3, 3)`` in right-hand conventions: ``M R M`` (``M = diag(-1, 1, 1)``)
    for the samples with ``side == 1`` (left), unchanged for the others."""
    signs = _constant(_MIRROR_SIGNS, rotations)
    left = (side == SIDE_LEFT).view(-1, *([1] * (rotations.ndim - 1)))
    return torch.where(left, rotations * signs, rotations)


def warmup_factor(config: LossConfig, term: str, step: int) -> float:
    """``min(1, step / warmup[term])`` for a term with a warmup, else 1."""
    steps = config.warmup.get(term, 0)
    if steps <= 0:
        return 1.0
    return min(1.0, max(step, 0) / steps)


# ---------------------------------------------------------------------------- the loss


def _centred(vertices: Tensor) -> Tensor:
    return vertices - vertices.mean(-2, keepdim=True)


def _centred_l1(vertices: Tensor, centred_label: Tensor) -> Tensor:
    """``(B,)`` mean over vertices of ``|dx|+|dy|+|dz|`` once each mesh's centroid is removed."""
    return (_centred(vertices) - centred_label).abs().sum(-1).mean(-1)


def _connected_zero(*tensors: Tensor) -> Tensor:
    """A scalar 0 that depends on ``tensors`` (zero gradients reach their parameters)."""
    return sum((t * 0).sum() for t in tensors)


def _check_inputs(prediction: Prediction, batch: HandBatch, joint_regressor: Tensor, faces: Tensor) -> None:
    batch_size, num_vertices = prediction.vertices.shape[:2]
    if len(batch) != batch_size:
        raise MeshrecError(f"the prediction has {batch_size} samples but the batch has {len(batch)}")
    if tuple(joint_regressor.shape) != (21, num_vertices):
        raise MeshrecError(f"joint_regressor must have shape (21, {num_vertices}), got {tuple(joint_regressor.shape)}")
    if faces.ndim != 2 or faces.shape[1] != 3:
        raise MeshrecError(f"faces must have shape (F, 3), got {tuple(faces.shape)}")
    label_vertices = batch.vertices.shape[1]
    if label_vertices not in (0, num_vertices):
        raise MeshrecError(
            f"label meshes have {label_vertices} vertices but the model outputs {num_vertices}; mesh labels must "
            "use the model's topology (train with the hand model the labels were made with)"
        )


def hand_losses(
    prediction: Prediction,
    batch: HandBatch,
    config: LossConfig,
    *,
    step: int,
    joint_regressor: Tensor,
    mesh_levels: Callable[[Tensor], list[Tensor]],
    faces: Tensor,
    prior: HandPrior | None = None,
) -> LossOutput:
    """Every training loss of a :class:`~meshrec.models.reconstructor.Prediction` against a batch.

    Args:
        prediction: the model's output for ``batch`` (each sample in its own camera frame).
        batch: a :class:`~meshrec.data.sample.HandBatch` with label masks; ``vertices`` is
            ``(B, V, 3)`` or ``(B, 0, 3)`` when no sample has a mesh.
        config: :class:`LossConfig`.
        step: the optimiser step (for the warmup schedules).
        joint_regressor: ``(21, V)``; the OpenPose joints of any full-resolution mesh are
            ``joint_regressor @ vertices``.
        mesh_levels: ``(B, V, 3) -> [(B, V_l, 3)]`` finest first (level 0 is the input):
            down-samples a label mesh to the refinement's hierarchy levels.
        faces: ``(F, 3)`` the right hand's faces.
        prior: the hand model's :class:`HandPrior` (mean pose, joint axes); None uses the
            open hand's (:func:`default_hand_prior`). Pass ``HandPrior.from_model(model.hand_model)``
            when training another hand model.

    Returns:
        :class:`LossOutput` (see the module docstring for the terms).
    """
    _check_inputs(prediction, batch, joint_regressor, faces)
    weights = {name: getattr(config, name) for name in TERM_NAMES}
    active = {name for name, weight in weights.items() if weight > 0}
    reference = prediction.vertices
    dtype = reference.dtype

    def label(tensor: Tensor) -> Tensor:
        return tensor.to(dtype=dtype, device=reference.device)

    has_mesh, has_joints3d, has_joints2d = batch.has_mesh, batch.has_joints3d, batch.has_joints2d
    regressor = joint_regressor.to(reference)
    stages = prediction.stage_vertices()
    stage_joints = {name: regressor @ vertices for name, vertices in stages.items()}
    refined = {name: vertices for name, vertices in stages.items() if name != "global"}
    image_size = prediction.image_size
    visible = batch.joints2d_visible & has_joints2d[:, None]
    mesh_labels = batch.vertices.shape[1] > 0
    label_vertices = label(batch.vertices) if mesh_labels else None
    label_joints = label(batch.joints3d)
    label_relative = label_joints - label_joints[:, :1]
    label_pixels = label(batch.joints2d)

    values: dict[str, Tensor] = {}
    parts: dict[str, Tensor] = {}

    def stage_sum(term: str, per_stage: dict[str, Tensor]) -> None:
        for stage, value in per_stage.items():
            parts[f"{term}/{stage}"] = value.detach()
        values[term] = sum(per_stage.values())

    # --- mesh labels
    if "vertices" in active:
        per_stage = {}
        centred_label = _centred(label_vertices) if mesh_labels else None
        for stage, vertices in stages.items():
            if mesh_labels:
                per_stage[stage] = masked_mean(_centred_l1(vertices, centred_label), has_mesh)
            else:
                per_stage[stage] = _connected_zero(vertices)
        coarser = prediction.level_vertices[1:]
        if coarser:
            targets = mesh_levels(label_vertices) if mesh_labels else None
            if targets is not None and len(targets) != len(prediction.level_vertices):
                raise MeshrecError(
                    f"mesh_levels gave {len(targets)} levels, the prediction has {len(prediction.level_vertices)}"
                )
            for level, vertices in enumerate(coarser, start=1):
                if mesh_labels:
                    per_stage[f"level_{level}"] = masked_mean(_centred_l1(vertices, _centred(targets[level])), has_mesh)
                else:
                    per_stage[f"level_{level}"] = _connected_zero(vertices)
        stage_sum("vertices", per_stage)
    if "normals" in active:
        label_normals = face_normals(label_vertices, faces) if mesh_labels else None
        per_stage = {}
        for stage, vertices in stages.items():
            if mesh_labels:
                cosine = (face_normals(vertices, faces) * label_normals).sum(-1)
                per_stage[stage] = masked_mean((1.0 - cosine).mean(-1), has_mesh)
            else:
                per_stage[stage] = _connected_zero(vertices)
        stage_sum("normals", per_stage)
    if "edges" in active:
        edges = _face_structure(faces, reference.shape[1]).edges
        label_lengths = _edge_lengths(label_vertices, edges) if mesh_labels else None
        per_stage = {}
        for stage, vertices in stages.items():
            if mesh_labels:
                difference = (_edge_lengths(vertices, edges) - label_lengths).abs().mean(-1)
                per_stage[stage] = masked_mean(difference, has_mesh)
            else:
                per_stage[stage] = _connected_zero(vertices)
        stage_sum("edges", per_stage)

    # --- joints
    if "joints3d" in active:
        per_stage = {}
        for stage, joints in stage_joints.items():
            error = (joints - joints[:, :1] - label_relative).abs().sum(-1).mean(-1)
            per_stage[stage] = masked_mean(error, has_joints3d)
        stage_sum("joints3d", per_stage)
    if "root" in active:
        stage_sum("root", {
            stage: masked_mean((joints[:, 0] - label_joints[:, 0]).abs().sum(-1), has_joints3d)
            for stage, joints in stage_joints.items()
        })  # fmt: skip
    head = prediction.keypoint_head
    stage_pixels = None
    if "joints2d" in active or ("keypoint_consistency" in active and head is not None):
        stage_pixels = {stage: project_points(joints, prediction.K) for stage, joints in stage_joints.items()}
    if "joints2d" in active:
        stage_sum("joints2d", {
            stage: masked_mean(normalized_pixel_error(pixels, label_pixels, image_size), visible)
            for stage, pixels in stage_pixels.items()
        })  # fmt: skip

    # --- MANO parameters and priors
    rotations = prediction.global_rotations
    if "mano_pose" in active:
        label_rotations = axis_angle_to_matrix(label(batch.mano_pose).view(-1, 16, 3))
        error = (rotations - label_rotations).square().sum((-1, -2)).mean(-1)
        values["mano_pose"] = masked_mean(error, batch.has_mano)
    if "mano_shape" in active:
        count = min(prediction.betas.shape[1], batch.mano_betas.shape[1])
        error = (prediction.betas[:, :count] - label(batch.mano_betas[:, :count])).square().mean(-1)
        values["mano_shape"] = masked_mean(error, batch.has_mano)
    if {"pose_prior", "joint_limits"} & active:
        if prior is None:
            prior = default_hand_prior()
        hand_rotations = unmirror_rotations(rotations[:, 1:], prediction.side)
        if "pose_prior" in active:
            deviation = (hand_rotations - prior.mean_rotations_like(hand_rotations)).square().sum((-1, -2))
            values["pose_prior"] = deviation.mean(-1).mean()
        if "joint_limits" in active:
            violation = limit_violation(matrix_to_axis_angle(hand_rotations), prior.axes)
            values["joint_limits"] = violation.square().sum((-1, -2)).mean()
    if "shape_prior" in active:
        values["shape_prior"] = prediction.betas.square().mean(-1).mean()

    # --- refinement regularisers (samples without a mesh label)
    if refined and {"laplacian", "closeness"} & active:
        base = prediction.global_vertices.detach()
        no_mesh = ~has_mesh
        if "laplacian" in active:
            base_laplacian = uniform_laplacian(base, faces)
            stage_sum("laplacian", {
                stage: masked_mean((uniform_laplacian(vertices, faces) - base_laplacian).norm(dim=-1).mean(-1), no_mesh)
                for stage, vertices in refined.items()
            })  # fmt: skip
        if "closeness" in active:
            stage_sum("closeness", {
                stage: masked_mean((vertices - base).norm(dim=-1).mean(-1), no_mesh) for stage, vertices in refined.items()
            })  # fmt: skip
    if "silhouette" in active:
        values["silhouette"] = _silhouette(prediction, batch, faces)

    # --- the loop: uncertainty and gate
    passes = [f"pass_{index}" for index in range(1, len(prediction.pass_vertices) + 1)]
    if passes and "uncertainty" in active:
        per_pass = {}
        for stage, log_variance in zip(passes, prediction.pass_log_variance):
            joints = stage_joints[stage].detach()  # the NLL trains the variance only
            error = (joints - joints[:, :1] - label_relative).norm(dim=-1)
            nll = uncertainty_nll(error[:, 1:], log_variance[:, 1:], config.uncertainty_distribution)
            per_pass[stage] = masked_mean(nll.mean(-1), has_joints3d)
        stage_sum("uncertainty", per_pass)
    if passes and "gate" in active:
        errors = []
        for stage in passes:
            error = (stage_joints[stage].detach() - label_joints).norm(dim=-1).mean(-1)
            if mesh_labels:
                vertex_error = (stages[stage].detach() - label_vertices).norm(dim=-1).mean(-1)
                error = torch.where(has_mesh, vertex_error, error)
            errors.append(error)
        targets = gate_targets(errors, config.gate_epsilon_mm / 1000.0)
        gated = has_mesh | has_joints3d
        per_pass = {}
        for stage, logit, target in zip(passes, prediction.pass_exit_logit, targets):
            bce = F.binary_cross_entropy_with_logits(logit, target, reduction="none")
            per_pass[stage] = masked_mean(bce, gated)
        stage_sum("gate", per_pass)

    # --- keypoint head
    if head is not None:
        assignment = head.assignment.detach().transpose(0, 1)  # (G, J): share of group g in joint j
        if "keypoints2d" in active:
            final = normalized_pixel_error(head.joints2d, label_pixels, image_size)
            groups = (normalized_pixel_error(head.group_joints2d, label_pixels[:, None], image_size) * assignment).sum(1)
            stage_sum("keypoints2d", {"final": masked_mean(final, visible), "groups": masked_mean(groups, visible)})
        if "keypoint_depth" in active:
            label_depth = label_relative[..., 2]
            final = (head.depth - head.depth[:, :1] - label_depth).abs().mean(-1)
            group_depth = head.group_depth - head.group_depth[..., :1]
            groups = ((group_depth - label_depth[:, None]).abs() * assignment).sum(1).mean(-1)
            stage_sum("keypoint_depth", {"final": masked_mean(final, has_joints3d), "groups": masked_mean(groups, has_joints3d)})
        if "keypoint_consistency" in active:
            guide = head.joints2d.detach()
            stage_sum("keypoint_consistency", {
                stage: normalized_pixel_error(pixels, guide, image_size).mean() for stage, pixels in stage_pixels.items()
            })  # fmt: skip

    terms = {name: values[name] * (weights[name] * warmup_factor(config, name, step)) for name in TERM_NAMES if name in values}
    total = sum(terms.values()) if terms else _connected_zero(reference)
    for name, value in values.items():
        parts.setdefault(name, value.detach())
    return LossOutput(total=total, terms=terms, parts=parts)


def _silhouette(prediction: Prediction, batch: HandBatch, faces: Tensor) -> Tensor:
    """Mean ``|soft silhouette - mask|`` over the samples with a mask (renders only those)."""
    if not bool(batch.has_mask.any()):  # one sync, only when the silhouette term is on
        return _connected_zero(prediction.vertices)
    from meshrec.render import soft_silhouette  # pytorch3d only when the term is used

    rows = batch.has_mask.nonzero().squeeze(1)
    vertices = prediction.vertices.index_select(0, rows)
    coverage = soft_silhouette(vertices, faces, prediction.K.index_select(0, rows), prediction.image_size)
    target = batch.mask.index_select(0, rows)[:, 0].to(coverage)
    return (coverage - target).abs().mean()
