"""Training losses of the hand reconstruction model, masked per sample by the label masks.

One batch may mix fully labelled samples (mesh, 3D joints, MANO) with sparsely labelled ones
(2D keypoints only). Every supervised term is a *masked mean*: computed for every sample,
multiplied by the sample's label mask and divided by the number of labelled samples (or visible
joints). A batch without a kind of label gives exactly 0 for its terms, still connected to the
graph (zero gradients reach every parameter, which DDP wants), never NaN.

Terms (``LossOutput.terms`` keys = :data:`TERM_NAMES`; each value is already weighted). Units are
those of the tensors: metres, radians, pixels divided by the image size. Each term is computed by
its own pure function ``<term>_loss`` (:func:`vertices_loss` ... :func:`keypoint_consistency_loss`),
unweighted, from the tensors and the per-sample mask it needs; :func:`hand_losses` computes the
masks once, calls the functions of the terms with a weight > 0, and weights their values.

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
- The laplacian and closeness terms penalise the refinement's displacement from the parametric
  mesh: they keep the refinement a hand where no mesh label says otherwise. The parametric mesh
  is *not* detached there: it is part of every refined mesh, so in ``refined - parametric`` it
  cancels (detached, it pushed the parametric stage against the refinement's corrections; see
  :func:`closeness_loss`).
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
from collections.abc import Callable, Mapping, Sequence
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
from meshrec.geometry.gather import gather_vertex_rows
from meshrec.geometry.mesh_hierarchy import apply_sparse_map
from meshrec.geometry.normals import face_normals
from meshrec.sides import SIDE_LEFT

if TYPE_CHECKING:  # pragma: no cover - typing only
    from meshrec.data.sample import HandBatch
    from meshrec.models.prediction import Prediction

__all__ = [
    "DISTRIBUTIONS",
    "TERM_NAMES",
    "HandPrior",
    "LossConfig",
    "LossOutput",
    "Stages",
    "closeness_loss",
    "default_hand_prior",
    "edges_loss",
    "face_normals",
    "gate_loss",
    "gate_targets",
    "hand_losses",
    "joint_limits_loss",
    "joints2d_loss",
    "joints3d_loss",
    "keypoint_consistency_loss",
    "keypoint_depth_loss",
    "keypoints2d_loss",
    "laplacian_loss",
    "mano_pose_loss",
    "mano_shape_loss",
    "masked_mean",
    "mesh_edges",
    "normalized_pixel_error",
    "normals_loss",
    "pose_prior_loss",
    "root_loss",
    "shape_prior_loss",
    "silhouette_loss",
    "uncertainty_loss",
    "uncertainty_nll",
    "uniform_laplacian",
    "unmirror_rotations",
    "vertices_loss",
    "warmup_factor",
]

TERM_NAMES: tuple[str, ...] = (
    "vertices", "joints3d", "root", "joints2d", "normals", "edges", "mano_pose", "mano_shape",
    "pose_prior", "shape_prior", "joint_limits", "laplacian", "closeness", "silhouette",
    "uncertainty", "gate", "keypoints2d", "keypoint_depth", "keypoint_consistency",
)  # fmt: skip
"""Names of the loss terms: the weight fields of :class:`LossConfig` and the keys of ``LossOutput.terms``."""

DISTRIBUTIONS: tuple[str, ...] = ("gaussian", "laplace")

_SQRT2 = math.sqrt(2.0)
# Added under square roots of squared lengths: a zero-length edge keeps a finite gradient.
_LENGTH_EPS_SQ = 1e-18
# Face normals are n / max(|n|, eps) with |n| = twice the face area (m^2). Hand faces have
# |n| ~ 1e-5 (the open hand's smallest 5e-7), so they get exact unit normals, while a degenerate
# face's gradient stays bounded (by 1 / eps) instead of exploding.


@dataclass
class LossConfig:
    """Weights and schedules of every loss term (see the module docstring for each term).

    Attributes:
        vertices ... keypoint_consistency: the weight of each term in :data:`TERM_NAMES`
            (>= 0; 0 switches a term off: it is not computed and absent from ``terms``).
        uncertainty_distribution: ``'laplace'`` (default) or ``'gaussian'``, the error model of
            the NLL. Laplace: sigma follows the typical error rather than its square, which a few
            outliers dominate, so it ranks the joints' errors better (the bundled model's head,
            docs/benchmarks.md); stages 2-7 of the bundled model (configs/) were trained with Gaussian.
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
    uncertainty_distribution: str = "laplace"
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
    # the neighbour mean is a sparse map of the mesh onto itself
    return vertices - apply_sparse_map(vertices, structure.neighbours, structure.neighbour_weights)


def _edge_lengths(vertices: Tensor, edges: Tensor) -> Tensor:
    """``(B, E)`` lengths of ``edges`` ``(E, 2)`` in meshes ``(B, V, 3)``."""
    start, end = gather_vertex_rows(vertices, edges).unbind(1)  # (E, B, 3) each
    return ((start - end).square().sum(-1) + _LENGTH_EPS_SQ).sqrt().transpose(0, 1)


def uncertainty_nll(error: Tensor, log_variance: Tensor, distribution: str) -> Tensor:
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


# ---------------------------------------------------------------------------- loss terms
#
# One pure function per term of TERM_NAMES, named ``<term>_loss``. Each returns the *unweighted*
# term and takes the prediction's tensors, the labels (already in the prediction's dtype and
# device) and the per-sample mask of the samples it averages over. A term summed over stages
# takes ``stages``: stage name -> tensor (``'global'``, ``'coarse_to_fine'``, ``'pass_1'``, ...)
# and returns stage name -> scalar, the term being the sum of the values; the others return a
# scalar. :func:`hand_losses` computes the masks once and composes the terms.

Stages = Mapping[str, Tensor]
"""Stage name -> tensor, in stage order (see :meth:`~meshrec.models.prediction.Prediction.stage_vertices`)."""


def _centred(vertices: Tensor) -> Tensor:
    return vertices - vertices.mean(-2, keepdim=True)


def _centred_l1(vertices: Tensor, centred_label: Tensor) -> Tensor:
    """``(B,)`` mean over vertices of ``|dx|+|dy|+|dz|`` once each mesh's centroid is removed."""
    return (_centred(vertices) - centred_label).abs().sum(-1).mean(-1)


def _connected_zero(*tensors: Tensor) -> Tensor:
    """A scalar 0 that depends on ``tensors`` (zero gradients reach their parameters)."""
    return sum((t * 0).sum() for t in tensors)


def _check_shape(term: str, name: str, tensor: Tensor, expected: Sequence[int]) -> None:
    """Raise :class:`MeshrecError` naming the term, the argument and both shapes when they differ."""
    if tuple(tensor.shape) != tuple(expected):
        raise MeshrecError(f"{term}: {name} must have shape {tuple(expected)}, got {tuple(tensor.shape)}")


def _check_stages(term: str, stages: Stages, label: Tensor, mask: Tensor, empty_label: bool = False) -> None:
    """Every stage shaped like ``label`` (any vertex count when ``empty_label`` allows a
    ``(B, 0, 3)`` label and it is one) and ``mask`` of shape ``(B,)``."""
    _check_shape(term, "mask", mask, label.shape[:1])
    for stage, values in stages.items():
        expected = tuple(label.shape)
        if empty_label and label.shape[1] == 0:
            expected = (label.shape[0], values.shape[1], *label.shape[2:])
        _check_shape(term, f"stages[{stage!r}]", values, expected)


def _per_stage_mesh_term(term: str, stages: Stages, label: Tensor, mask: Tensor, against) -> dict[str, Tensor]:
    """The shared frame of the mesh terms: check the shapes; when no sample has a label mesh, a
    graph-connected 0 per stage; else ``per_sample = against(label)`` (label features computed
    once) and ``masked_mean(per_sample(stage mesh) (B,), mask)`` per stage."""
    _check_stages(term, stages, label, mask, empty_label=True)
    if label.shape[1] == 0:
        return {stage: _connected_zero(vertices) for stage, vertices in stages.items()}
    per_sample = against(label)
    return {stage: masked_mean(per_sample(vertices), mask) for stage, vertices in stages.items()}


def vertices_loss(stages: Stages, label: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Vertex L1 of centred meshes: how far each stage's hand shape is from the label mesh (m).

    Per sample, the mean over vertices of ``|dx| + |dy| + |dz|`` once each mesh's centroid is
    removed (translation is the ``root`` and ``joints2d`` terms' job); per stage, the mean of
    that over the samples with ``mask``.

    Args:
        stages: stage name -> ``(B, V, 3)`` meshes; ``stages[s][b, v]`` is vertex v of sample
            b's mesh at stage s (metres, camera frame).
        label: ``(B, V, 3)`` label meshes, vertex for vertex, or ``(B, 0, 3)`` when no sample
            has one (every stage then gives a 0 still connected to the graph).
        mask: ``(B,)`` bool, ``mask[b]``: sample b has a mesh label.

    Returns:
        stage name -> scalar.
    """
    def against(label: Tensor):
        centred_label = _centred(label)
        return lambda vertices: _centred_l1(vertices, centred_label)

    return _per_stage_mesh_term("vertices_loss", stages, label, mask, against)


def normals_loss(stages: Stages, label: Tensor, faces: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Face orientation error: per sample, the mean over faces of ``1 - cos`` between the
    stage's and the label's face normals (:func:`face_normals`); per stage, the mean over the
    samples with ``mask``.

    Args:
        stages: stage name -> ``(B, V, 3)`` meshes (vertex v of sample b at ``[b, v]``).
        label: ``(B, V, 3)`` label meshes, or ``(B, 0, 3)`` when no sample has one (0 per stage,
            connected to the graph).
        faces: ``(F, 3)`` vertex indices of each triangle.
        mask: ``(B,)`` bool, ``mask[b]``: sample b has a mesh label.

    Returns:
        stage name -> scalar in ``[0, 2]``.
    """
    def against(label: Tensor):
        label_normals = face_normals(label, faces)
        return lambda vertices: (1.0 - (face_normals(vertices, faces) * label_normals).sum(-1)).mean(-1)

    return _per_stage_mesh_term("normals_loss", stages, label, mask, against)


def edges_loss(stages: Stages, label: Tensor, edges: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Edge length error: per sample, the mean over edges of ``|length - label length|`` (m);
    per stage, the mean over the samples with ``mask``.

    Args:
        stages: stage name -> ``(B, V, 3)`` meshes (vertex v of sample b at ``[b, v]``).
        label: ``(B, V, 3)`` label meshes, or ``(B, 0, 3)`` when no sample has one (0 per stage,
            connected to the graph).
        edges: ``(E, 2)`` int64 unique edges ``(i, j)`` (:func:`mesh_edges`).
        mask: ``(B,)`` bool, ``mask[b]``: sample b has a mesh label.

    Returns:
        stage name -> scalar.
    """
    def against(label: Tensor):
        label_lengths = _edge_lengths(label, edges)
        return lambda vertices: (_edge_lengths(vertices, edges) - label_lengths).abs().mean(-1)

    return _per_stage_mesh_term("edges_loss", stages, label, mask, against)


def joints3d_loss(joints: Stages, label: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Root-relative joint L1: per sample, the mean over joints of ``|dx| + |dy| + |dz|`` (m)
    once joint 0 (the wrist) is subtracted from each set; per stage, the mean over the samples
    with ``mask``.

    Args:
        joints: stage name -> ``(B, J, 3)``; ``joints[s][b, j]`` is joint j (OpenPose order) of
            sample b at stage s.
        label: ``(B, J, 3)`` label joints (absolute, camera frame).
        mask: ``(B,)`` bool, ``mask[b]``: sample b has 3D joint labels.

    Returns:
        stage name -> scalar.
    """
    _check_stages("joints3d_loss", joints, label, mask)
    label_relative = label - label[:, :1]
    return {
        stage: masked_mean((values - values[:, :1] - label_relative).abs().sum(-1).mean(-1), mask)
        for stage, values in joints.items()
    }


def root_loss(joints: Stages, label: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Wrist placement: per sample, the L1 ``|dx| + |dy| + |dz|`` (m) of the absolute joint 0;
    per stage, the mean over the samples with ``mask``.

    Args:
        joints: stage name -> ``(B, J, 3)`` joints (joint j of sample b at ``[b, j]``, joint 0
            the wrist).
        label: ``(B, J, 3)`` label joints (absolute, camera frame).
        mask: ``(B,)`` bool, ``mask[b]``: sample b has 3D joint labels.

    Returns:
        stage name -> scalar.
    """
    _check_stages("root_loss", joints, label, mask)
    return {stage: masked_mean((values[:, 0] - label[:, 0]).abs().sum(-1), mask) for stage, values in joints.items()}


def joints2d_loss(pixels: Stages, label: Tensor, visible: Tensor, image_size: tuple[int, int]) -> dict[str, Tensor]:
    """Projected joint error: ``|du| / W + |dv| / H`` (:func:`normalized_pixel_error`) per
    joint; per stage, the mean over the visible joints of the whole batch.

    Args:
        pixels: stage name -> ``(B, J, 2)``; ``pixels[s][b, j]`` is joint j of sample b at stage
            s projected to ``(u, v)`` pixels of the crop.
        label: ``(B, J, 2)`` label pixels.
        visible: ``(B, J)`` bool, ``visible[b, j]``: sample b has 2D labels and joint j is
            visible (the joints averaged over).
        image_size: ``(H, W)`` of the crop, pixels.

    Returns:
        stage name -> scalar.
    """
    _check_shape("joints2d_loss", "visible", visible, label.shape[:2])
    for stage, values in pixels.items():
        _check_shape("joints2d_loss", f"pixels[{stage!r}]", values, label.shape)
    return {stage: masked_mean(normalized_pixel_error(values, label, image_size), visible) for stage, values in pixels.items()}


def mano_pose_loss(rotations: Tensor, label_pose: Tensor, mask: Tensor) -> Tensor:
    """MANO pose error: per sample, the mean over the joints of ``||R - R_label||_F^2``; the
    mean of that over the samples with ``mask``.

    Args:
        rotations: ``(B, J, 3, 3)`` local joint rotations, ``rotations[b, j]`` the rotation of
            MANO joint j (0 the global orientation) of sample b.
        label_pose: ``(B, 3 J)`` the label's axis-angle pose (radians), joint j at ``[b, 3j:3j+3]``.
        mask: ``(B,)`` bool, ``mask[b]``: sample b has MANO labels.
    """
    batch_size, num_joints = rotations.shape[:2]
    _check_shape("mano_pose_loss", "label_pose", label_pose, (batch_size, 3 * num_joints))
    _check_shape("mano_pose_loss", "mask", mask, (batch_size,))
    label_rotations = axis_angle_to_matrix(label_pose.view(-1, num_joints, 3))
    error = (rotations - label_rotations).square().sum((-1, -2)).mean(-1)
    return masked_mean(error, mask)


def mano_shape_loss(betas: Tensor, label_betas: Tensor, mask: Tensor) -> Tensor:
    """MANO shape error: per sample, the mean over the components both have of
    ``(beta - beta_label)^2``; the mean of that over the samples with ``mask``.

    Args:
        betas: ``(B, S)`` predicted shape coefficients, component s of sample b at ``[b, s]``.
        label_betas: ``(B, S')`` label coefficients; the first ``min(S, S')`` are compared.
        mask: ``(B,)`` bool, ``mask[b]``: sample b has MANO labels.
    """
    _check_shape("mano_shape_loss", "label_betas", label_betas, (betas.shape[0], label_betas.shape[-1]))
    _check_shape("mano_shape_loss", "mask", mask, betas.shape[:1])
    count = min(betas.shape[1], label_betas.shape[1])
    error = (betas[:, :count] - label_betas[:, :count]).square().mean(-1)
    return masked_mean(error, mask)


def _hand_rotations(term: str, rotations: Tensor, side: Tensor) -> Tensor:
    """``(B, 15, 3, 3)`` the hand joints' rotations in right-hand conventions."""
    if rotations.ndim != 4 or rotations.shape[2:] != (3, 3):
        raise MeshrecError(f"{term}: rotations must have shape (B, 16, 3, 3), got {tuple(rotations.shape)}")
    _check_shape(term, "side", side, rotations.shape[:1])
    return unmirror_rotations(rotations[:, 1:], side)


def pose_prior_loss(rotations: Tensor, side: Tensor, prior: HandPrior | None = None) -> Tensor:
    """Pose prior: mean over samples and the 15 hand joints of ``||R - R_mean||_F^2``, in
    right-hand conventions (a left sample's rotations are un-mirrored first); every sample.

    Args:
        rotations: ``(B, 16, 3, 3)`` local rotations of the MANO joints (joint 0, the global
            orientation, is left out), ``rotations[b, j]`` joint j of sample b.
        side: ``(B,)`` int64, 0 right, 1 left.
        prior: the hand model's :class:`HandPrior` (``mean_rotations`` = ``R_mean``); None uses
            :func:`default_hand_prior`.
    """
    hand_rotations = _hand_rotations("pose_prior_loss", rotations, side)
    prior = default_hand_prior() if prior is None else prior
    deviation = (hand_rotations - prior.mean_rotations_like(hand_rotations)).square().sum((-1, -2))
    return deviation.mean(-1).mean()


def joint_limits_loss(rotations: Tensor, side: Tensor, prior: HandPrior | None = None) -> Tensor:
    """Joint limits: mean over samples of the sum over the 15 hand joints x (flex, spread,
    twist) of the squared :func:`manolayer.sampler.limit_violation` (radians^2), in right-hand
    conventions; every sample. 0 for a pose within the limits.

    Args:
        rotations: ``(B, 16, 3, 3)`` local rotations of the MANO joints (joint 0 left out).
        side: ``(B,)`` int64, 0 right, 1 left.
        prior: the hand model's :class:`HandPrior` (``axes`` = the joints' anatomical frames);
            None uses :func:`default_hand_prior`.
    """
    hand_rotations = _hand_rotations("joint_limits_loss", rotations, side)
    prior = default_hand_prior() if prior is None else prior
    violation = limit_violation(matrix_to_axis_angle(hand_rotations), prior.axes)
    return violation.square().sum((-1, -2)).mean()


def shape_prior_loss(betas: Tensor) -> Tensor:
    """Shape prior: mean over samples and components of ``beta^2`` (``betas`` ``(B, S)``); every sample."""
    return betas.square().mean(-1).mean()


def laplacian_loss(refined: Stages, base: Tensor, faces: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Smoothness of the refinement: per sample, the mean over vertices of
    ``||L(refined) - L(base)||`` (m), ``L`` the uniform graph Laplacian
    (:func:`uniform_laplacian`); per refined stage, the mean over the samples with ``mask``.

    ``base`` is not detached, on purpose: see :func:`closeness_loss`.

    Args:
        refined: refined stage name -> ``(B, V, 3)`` meshes (vertex v of sample b at ``[b, v]``).
        base: ``(B, V, 3)`` the parametric (global) stage's meshes.
        faces: ``(F, 3)`` vertex indices of each triangle.
        mask: ``(B,)`` bool, ``mask[b]``: sample b is regularised (it has no mesh label).

    Returns:
        stage name -> scalar.
    """
    _check_stages("laplacian_loss", refined, base, mask)
    if not bool(mask.any()):  # every sample has a mesh label: the same zeros without the gathers
        return {stage: _connected_zero(vertices) for stage, vertices in refined.items()}
    # L is linear: L(refined) - L(base) = L(refined - base), one gather per stage
    return {
        stage: masked_mean(uniform_laplacian(vertices - base, faces).norm(dim=-1).mean(-1), mask)
        for stage, vertices in refined.items()
    }


def closeness_loss(refined: Stages, base: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Closeness of the refinement: per sample, the mean over vertices of ``||refined - base||``
    (m); per refined stage, the mean over the samples with ``mask``.

    ``base`` is not detached, on purpose. Each refined mesh is the parametric mesh plus the
    refinement's displacement, so in ``refined - base`` the base cancels and the term shrinks the
    displacement; the parametric stage is reached only through what the refinement reads of it
    (positions, features there, the keypoint head's residual), which asks for a parametric mesh
    that needs less correction. With ``base`` detached, the base inside ``refined`` still carried
    the gradient, so the parametric stage was pushed *against* every correction the refinement
    made: on unlabelled real photos in training it drifted until its meshes sat ~40 px off
    (docs/benchmarks.md).

    Args:
        refined: refined stage name -> ``(B, V, 3)`` meshes (vertex v of sample b at ``[b, v]``).
        base: ``(B, V, 3)`` the parametric (global) stage's meshes.
        mask: ``(B,)`` bool, ``mask[b]``: sample b is regularised (it has no mesh label).

    Returns:
        stage name -> scalar.
    """
    _check_stages("closeness_loss", refined, base, mask)
    return {stage: masked_mean((vertices - base).norm(dim=-1).mean(-1), mask) for stage, vertices in refined.items()}


def silhouette_loss(
    vertices: Tensor, faces: Tensor, K: Tensor, image_size: tuple[int, int], label: Tensor, mask: Tensor
) -> Tensor:
    """Silhouette error: mean over the pixels of the samples with ``mask`` of
    ``|soft silhouette - label|`` (:func:`meshrec.render.soft_silhouette`, pytorch3d).

    Renders only the masked samples, so it reads ``mask`` on the host (one sync); with no mask
    in the batch it gives a 0 connected to ``vertices`` and needs no renderer.

    Args:
        vertices: ``(B, V, 3)`` the final meshes (vertex v of sample b at ``[b, v]``).
        faces: ``(F, 3)`` vertex indices of each triangle.
        K: ``(B, 3, 3)`` intrinsics (pixels of the crop); image_size ``(H, W)``.
        label: ``(B, 1, H, W)`` label masks in [0, 1], ``label[b, 0, y, x]`` at pixel row y, column x.
        mask: ``(B,)`` bool, ``mask[b]``: sample b has a mask label.
    """
    _check_shape("silhouette_loss", "mask", mask, vertices.shape[:1])
    if not bool(mask.any()):  # one sync, only when the silhouette term is on
        return _connected_zero(vertices)
    from meshrec.render import soft_silhouette  # pytorch3d only when the term is used

    rows = mask.nonzero().squeeze(1)
    coverage = soft_silhouette(vertices.index_select(0, rows), faces, K.index_select(0, rows), image_size)
    target = label.index_select(0, rows)[:, 0].to(coverage)
    return (coverage - target).abs().mean()


def uncertainty_loss(
    joints: Stages, log_variance: Stages, label: Tensor, mask: Tensor, distribution: str
) -> dict[str, Tensor]:
    """Uncertainty: per sample, the mean over joints 1..J-1 of the NLL (:func:`uncertainty_nll`)
    of the root-relative joint error's norm under the predicted variance; per pass, the mean
    over the samples with ``mask``.

    The joints are detached (the term trains the variance only) and joint 0 is left out (its
    root-relative error is identically 0).

    Args:
        joints: pass name -> ``(B, J, 3)`` joints (joint j of sample b at ``[b, j]``).
        log_variance: pass name -> ``(B, J)`` predicted ``log sigma^2`` (metres^2) of each joint;
            its passes are the ones computed (each must be in ``joints``).
        label: ``(B, J, 3)`` label joints (absolute, camera frame).
        mask: ``(B,)`` bool, ``mask[b]``: sample b has 3D joint labels.
        distribution: ``'gaussian'`` or ``'laplace'``.

    Returns:
        pass name -> scalar (may be negative: constants are dropped).
    """
    _check_stages("uncertainty_loss", joints, label, mask)
    for stage, values in log_variance.items():
        _check_shape("uncertainty_loss", f"log_variance[{stage!r}]", values, label.shape[:2])
    label_relative = label - label[:, :1]
    per_pass = {}
    for stage, values in log_variance.items():
        detached = joints[stage].detach()  # the NLL trains the variance only
        error = (detached - detached[:, :1] - label_relative).norm(dim=-1)
        nll = uncertainty_nll(error[:, 1:], values[:, 1:], distribution)
        per_pass[stage] = masked_mean(nll.mean(-1), mask)
    return per_pass


def gate_loss(
    vertices: Stages,
    joints: Stages,
    exit_logits: Stages,
    label_vertices: Tensor,
    label_joints: Tensor,
    mesh_mask: Tensor,
    mask: Tensor,
    epsilon: float,
) -> dict[str, Tensor]:
    """Exit gate: per pass, the binary cross-entropy of the exit logit against the detached
    :func:`gate_targets` ("exit" when the next pass lowers the sample's error by less than
    ``epsilon``, and at the last pass), averaged over the samples with ``mask``.

    A sample's error is the mean per-vertex distance (m) where ``mesh_mask`` is set, else the
    mean per-joint distance (absolute, both).

    Args:
        vertices: pass name -> ``(B, V, 3)`` meshes, every loop pass in order.
        joints: pass name -> ``(B, J, 3)`` joints, the same passes.
        exit_logits: pass name -> ``(B,)`` exit logits, the same passes.
        label_vertices: ``(B, V, 3)`` label meshes, or ``(B, 0, 3)`` when no sample has one.
        label_joints: ``(B, J, 3)`` label joints.
        mesh_mask: ``(B,)`` bool, ``mesh_mask[b]``: sample b's error is its mesh's.
        mask: ``(B,)`` bool, ``mask[b]``: sample b has a label to set its targets by (mesh or
            3D joints).
        epsilon: metres.

    Returns:
        pass name -> scalar.
    """
    _check_stages("gate_loss", vertices, label_vertices, mesh_mask, empty_label=True)
    _check_stages("gate_loss", joints, label_joints, mask)
    for stage, logit in exit_logits.items():
        _check_shape("gate_loss", f"exit_logits[{stage!r}]", logit, mask.shape)
    errors = []
    for stage in vertices:
        error = (joints[stage].detach() - label_joints).norm(dim=-1).mean(-1)
        if label_vertices.shape[1] > 0:
            vertex_error = (vertices[stage].detach() - label_vertices).norm(dim=-1).mean(-1)
            error = torch.where(mesh_mask, vertex_error, error)
        errors.append(error)
    targets = gate_targets(errors, epsilon)
    return {
        stage: masked_mean(F.binary_cross_entropy_with_logits(logit, target, reduction="none"), mask)
        for (stage, logit), target in zip(exit_logits.items(), targets)
    }


def keypoints2d_loss(
    joints2d: Tensor,
    group_joints2d: Tensor,
    assignment: Tensor,
    label: Tensor,
    visible: Tensor,
    image_size: tuple[int, int],
) -> dict[str, Tensor]:
    """The keypoint head's 2D error, as :func:`joints2d_loss`: ``'final'``, its output's mean
    over the batch's visible joints; ``'groups'``, each joint's group errors weighted by the
    (detached) share of each group in that joint, same mean.

    Args:
        joints2d: ``(B, J, 2)`` the head's ``(u, v)`` pixels, joint j of sample b at ``[b, j]``.
        group_joints2d: ``(B, G, J, 2)`` group g's pixels of joint j at ``[b, g, j]``.
        assignment: ``(J, G)`` ``assignment[j, g]`` the share of group g in joint j.
        label: ``(B, J, 2)`` label pixels.
        visible: ``(B, J)`` bool, ``visible[b, j]``: sample b has 2D labels and joint j is visible.
        image_size: ``(H, W)`` of the crop.
    """
    _check_shape("keypoints2d_loss", "joints2d", joints2d, label.shape)
    _check_shape("keypoints2d_loss", "visible", visible, label.shape[:2])
    share = assignment.detach().transpose(0, 1)  # (G, J): share of group g in joint j
    final = normalized_pixel_error(joints2d, label, image_size)
    groups = (normalized_pixel_error(group_joints2d, label[:, None], image_size) * share).sum(1)
    return {"final": masked_mean(final, visible), "groups": masked_mean(groups, visible)}


def keypoint_depth_loss(
    depth: Tensor, group_depth: Tensor, assignment: Tensor, label: Tensor, mask: Tensor
) -> dict[str, Tensor]:
    """The keypoint head's root-relative depth L1 (m): ``'final'``, per sample the mean over
    joints of ``|z - z_0 - (z_label - z_label_0)|``; ``'groups'``, the groups' errors weighted
    by the (detached) share of each group in each joint; both averaged over the samples with ``mask``.

    Args:
        depth: ``(B, J)`` the head's depth of joint j of sample b at ``[b, j]`` (metres; joint 0's
            is subtracted here).
        group_depth: ``(B, G, J)`` group g's depth of joint j at ``[b, g, j]``.
        assignment: ``(J, G)`` ``assignment[j, g]`` the share of group g in joint j.
        label: ``(B, J, 3)`` label joints (absolute, camera frame; z is the depth).
        mask: ``(B,)`` bool, ``mask[b]``: sample b has 3D joint labels.
    """
    _check_shape("keypoint_depth_loss", "depth", depth, label.shape[:2])
    _check_shape("keypoint_depth_loss", "mask", mask, label.shape[:1])
    share = assignment.detach().transpose(0, 1)  # (G, J): share of group g in joint j
    label_depth = (label - label[:, :1])[..., 2]
    final = (depth - depth[:, :1] - label_depth).abs().mean(-1)
    relative = group_depth - group_depth[..., :1]
    groups = ((relative - label_depth[:, None]).abs() * share).sum(1).mean(-1)
    return {"final": masked_mean(final, mask), "groups": masked_mean(groups, mask)}


def keypoint_consistency_loss(pixels: Stages, guide: Tensor, image_size: tuple[int, int]) -> dict[str, Tensor]:
    """Agreement of the mesh with the keypoint head: per stage, the mean over samples and joints
    of ``|du| / W + |dv| / H`` between the stage's projected joints and the head's (detached)
    2D keypoints; every sample (no label needed).

    Args:
        pixels: stage name -> ``(B, J, 2)`` projected joints (joint j of sample b at ``[b, j]``).
        guide: ``(B, J, 2)`` the head's pixels.
        image_size: ``(H, W)`` of the crop.

    Returns:
        stage name -> scalar.
    """
    for stage, values in pixels.items():
        _check_shape("keypoint_consistency_loss", f"pixels[{stage!r}]", values, guide.shape)
    guide = guide.detach()
    return {stage: normalized_pixel_error(values, guide, image_size).mean() for stage, values in pixels.items()}


# ---------------------------------------------------------------------------- the loss


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


def _label_levels(mesh_levels: Callable[[Tensor], list[Tensor]], label: Tensor, count: int) -> list[Tensor]:
    """The label meshes ``(B, V, 3)`` down-sampled to the ``count`` hierarchy levels, finest
    first; the empty label ``(B, 0, 3)`` at every level when no sample has a mesh."""
    if label.shape[1] == 0:
        return [label] * count
    levels = mesh_levels(label)
    if len(levels) != count:
        raise MeshrecError(f"mesh_levels gave {len(levels)} levels, the prediction has {count}")
    return levels


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
    """Every training loss of a :class:`~meshrec.models.prediction.Prediction` against a batch.

    Computes the label masks once and composes the term functions (``<term>_loss``) of the
    terms with a weight > 0, then weights them (warmup applied).

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

    def label(tensor: Tensor) -> Tensor:
        return tensor.to(dtype=reference.dtype, device=reference.device)

    # the per-sample masks, once: (B,) each, and (B, 21) for the visible labelled 2D joints
    has_mesh, has_joints3d, has_mano, has_mask = batch.has_mesh, batch.has_joints3d, batch.has_mano, batch.has_mask
    visible = batch.joints2d_visible & batch.has_joints2d[:, None]
    no_mesh = ~has_mesh  # the refinement regularisers keep the meshes of unlabelled samples a hand
    gated = has_mesh | has_joints3d  # the gate needs an error to set its targets by

    # labels in the prediction's dtype and device; label meshes are (B, 0, 3) when no sample has one
    label_vertices, label_joints, label_pixels = label(batch.vertices), label(batch.joints3d), label(batch.joints2d)

    # the prediction's stages
    regressor = joint_regressor.to(reference)
    stages = prediction.stage_vertices()
    stage_joints = {name: regressor @ vertices for name, vertices in stages.items()}
    refined = {name: vertices for name, vertices in stages.items() if name != "global"}
    passes = [f"pass_{index}" for index in range(1, len(prediction.pass_vertices) + 1)]
    head = prediction.keypoint_head
    image_size = prediction.image_size

    values: dict[str, Tensor] = {}
    parts: dict[str, Tensor] = {}

    def add(term: str, value: Tensor | dict[str, Tensor]) -> None:
        if isinstance(value, dict):  # per stage: logged under 'term/stage', summed
            for stage, part in value.items():
                parts[f"{term}/{stage}"] = part.detach()
            value = sum(value.values())
        values[term] = value

    # --- mesh labels
    if "vertices" in active:
        per_stage = vertices_loss(stages, label_vertices, has_mesh)
        coarser = prediction.level_vertices[1:]
        if coarser:
            targets = _label_levels(mesh_levels, label_vertices, len(prediction.level_vertices))
            for level, vertices in enumerate(coarser, start=1):
                per_stage.update(vertices_loss({f"level_{level}": vertices}, targets[level], has_mesh))
        add("vertices", per_stage)
    if "normals" in active:
        add("normals", normals_loss(stages, label_vertices, faces, has_mesh))
    if "edges" in active:
        add("edges", edges_loss(stages, label_vertices, mesh_edges(faces, reference.shape[1]), has_mesh))

    # --- joints
    if "joints3d" in active:
        add("joints3d", joints3d_loss(stage_joints, label_joints, has_joints3d))
    if "root" in active:
        add("root", root_loss(stage_joints, label_joints, has_joints3d))
    # projected after the 3D joint terms: the order in which autograd nodes are created sets the
    # order in which backward sums a tensor's gradients, so moving this changes them by rounding
    stage_pixels = {}
    if "joints2d" in active or ("keypoint_consistency" in active and head is not None):
        stage_pixels = {stage: project_points(joints, prediction.K) for stage, joints in stage_joints.items()}
    if "joints2d" in active:
        add("joints2d", joints2d_loss(stage_pixels, label_pixels, visible, image_size))

    # --- MANO parameters and priors
    if "mano_pose" in active:
        add("mano_pose", mano_pose_loss(prediction.global_rotations, label(batch.mano_pose), has_mano))
    if "mano_shape" in active:
        add("mano_shape", mano_shape_loss(prediction.betas, label(batch.mano_betas), has_mano))
    if {"pose_prior", "joint_limits"} & active and prior is None:
        prior = default_hand_prior()
    if "pose_prior" in active:
        add("pose_prior", pose_prior_loss(prediction.global_rotations, prediction.side, prior))
    if "joint_limits" in active:
        add("joint_limits", joint_limits_loss(prediction.global_rotations, prediction.side, prior))
    if "shape_prior" in active:
        add("shape_prior", shape_prior_loss(prediction.betas))

    # --- refinement regularisers (samples without a mesh label)
    if refined and "laplacian" in active:
        add("laplacian", laplacian_loss(refined, prediction.global_vertices, faces, no_mesh))
    if refined and "closeness" in active:
        add("closeness", closeness_loss(refined, prediction.global_vertices, no_mesh))
    if "silhouette" in active:
        add("silhouette", silhouette_loss(prediction.vertices, faces, prediction.K, image_size, batch.mask, has_mask))

    # --- the loop: uncertainty and gate
    if passes and "uncertainty" in active:
        add("uncertainty", uncertainty_loss(
            {stage: stage_joints[stage] for stage in passes}, dict(zip(passes, prediction.pass_log_variance)),
            label_joints, has_joints3d, config.uncertainty_distribution,
        ))  # fmt: skip
    if passes and "gate" in active:
        add("gate", gate_loss(
            {stage: stages[stage] for stage in passes}, {stage: stage_joints[stage] for stage in passes},
            dict(zip(passes, prediction.pass_exit_logit)), label_vertices, label_joints, has_mesh, gated,
            config.gate_epsilon_mm / 1000.0,
        ))  # fmt: skip

    # --- keypoint head
    if head is not None:
        if "keypoints2d" in active:
            add("keypoints2d", keypoints2d_loss(
                head.joints2d, head.group_joints2d, head.assignment, label_pixels, visible, image_size
            ))  # fmt: skip
        if "keypoint_depth" in active:
            add("keypoint_depth", keypoint_depth_loss(head.depth, head.group_depth, head.assignment, label_joints, has_joints3d))
        if "keypoint_consistency" in active:
            add("keypoint_consistency", keypoint_consistency_loss(stage_pixels, head.joints2d, image_size))

    terms = {name: values[name] * (weights[name] * warmup_factor(config, name, step)) for name in TERM_NAMES if name in values}
    total = sum(terms.values()) if terms else _connected_zero(reference)
    for name, value in values.items():
        parts.setdefault(name, value.detach())
    return LossOutput(total=total, terms=terms, parts=parts)
