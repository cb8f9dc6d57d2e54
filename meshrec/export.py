"""Exporting reconstructed hands: mesh files (OBJ, PLY, GLB) and a JSON of one prediction.

Conventions kept in every file: metres, the OpenCV camera frame of the crop (x right, y down,
z forward), vertex order exactly as the model outputs it (no merging, no reordering, so vertex
``v`` of a file is vertex ``v`` of the topology and of any label), and triangles wound
counter-clockwise seen from outside (a left hand's faces come from
:meth:`~meshrec.models.reconstructor.Prediction.faces_of`, which re-winds the mirrored mesh).

Formats, chosen by the file suffix (:data:`MESH_FORMATS`):

- ``.obj``: plain geometry (``v`` and ``f`` lines, 8 decimals = 10 nm); OBJ has no standard
  vertex colours, so none are written. The default when a path has no suffix.
- ``.ply``: binary little-endian, float32 positions, RGBA vertex colours.
- ``.glb``: binary glTF 2.0, float32 positions, vertex colours as ``COLOR_0``. glTF viewers
  assume y up; the file keeps the camera frame (y down), so viewers show the hand upside down
  unless told otherwise.

trimesh is imported inside the functions, so ``import meshrec`` stays light.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from manolayer.io import write_bytes_atomic
from manolayer.joints import OPENPOSE_JOINT_NAMES
from meshrec.errors import MeshrecError
from meshrec.sides import flag_to_side

if TYPE_CHECKING:  # pragma: no cover - typing only
    import trimesh

    from meshrec.models.prediction import Prediction

__all__ = [
    "MESH_FORMATS",
    "PREDICTION_JSON_FORMAT",
    "UNCERTAINTY_COLORMAP",
    "mesh_to_trimesh",
    "prediction_mesh",
    "save_mesh",
    "save_prediction_json",
    "uncertainty_colors",
    "vertex_uncertainty",
]

MESH_FORMATS: tuple[str, ...] = (".obj", ".ply", ".glb")
PREDICTION_JSON_FORMAT = "meshrec.prediction/1"
# Perceptually uniform, readable in grey scale: low sigma dark blue-purple, high sigma yellow.
UNCERTAINTY_COLORMAP = "viridis"


def _to_numpy(array, name: str) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        array = array.detach().cpu().numpy()
    try:
        return np.asarray(array)
    except Exception as error:  # ragged lists and the like
        raise MeshrecError(f"{name} must be array-like, got {type(array).__name__}: {error}") from None


def _check_vertices(vertices) -> np.ndarray:
    vertices = _to_numpy(vertices, "vertices")
    if vertices.ndim != 2 or vertices.shape[1] != 3 or vertices.shape[0] == 0:
        raise MeshrecError(f"vertices must have shape (V, 3) with V >= 1, got {vertices.shape}")
    if not np.issubdtype(vertices.dtype, np.floating):
        raise MeshrecError(f"vertices must be floating point (metres), got {vertices.dtype}")
    if not np.isfinite(vertices).all():
        bad = np.flatnonzero(~np.isfinite(vertices).all(axis=1))
        raise MeshrecError(f"vertices must be finite; {len(bad)} vertices hold NaN or Inf (first: {bad[:5].tolist()})")
    return vertices.astype(np.float64)


def _check_faces(faces, num_vertices: int) -> np.ndarray:
    faces = _to_numpy(faces, "faces")
    if faces.ndim != 2 or faces.shape[1] != 3 or faces.shape[0] == 0:
        raise MeshrecError(f"faces must have shape (F, 3) with F >= 1, got {faces.shape}")
    if not np.issubdtype(faces.dtype, np.integer):
        raise MeshrecError(f"faces must be integer vertex ids, got {faces.dtype}")
    if faces.min() < 0 or faces.max() >= num_vertices:
        raise MeshrecError(
            f"faces must index vertices in [0, {num_vertices - 1}], got ids in [{faces.min()}, {faces.max()}]"
        )
    return faces.astype(np.int64)


def _check_colors(colors, num_vertices: int) -> np.ndarray:
    """``(V, 3|4)`` uint8, or float in [0, 1] -> ``(V, 4)`` uint8 RGBA."""
    colors = _to_numpy(colors, "vertex_colors")
    if colors.ndim != 2 or colors.shape[0] != num_vertices or colors.shape[1] not in (3, 4):
        raise MeshrecError(f"vertex_colors must have shape ({num_vertices}, 3) or ({num_vertices}, 4), got {colors.shape}")
    if colors.dtype == np.uint8:
        rgba = colors
    elif np.issubdtype(colors.dtype, np.floating):
        if not np.isfinite(colors).all() or colors.min() < 0 or colors.max() > 1:
            raise MeshrecError(
                f"float vertex_colors must be finite and in [0, 1], got values in [{np.nanmin(colors)}, {np.nanmax(colors)}]"
            )
        rgba = np.round(colors * 255).astype(np.uint8)
    else:
        raise MeshrecError(f"vertex_colors must be uint8 (0-255) or float in [0, 1], got {colors.dtype}")
    if rgba.shape[1] == 3:
        rgba = np.concatenate([rgba, np.full((num_vertices, 1), 255, dtype=np.uint8)], axis=1)
    return np.ascontiguousarray(rgba)


def mesh_to_trimesh(vertices, faces, vertex_colors=None) -> "trimesh.Trimesh":
    """A ``trimesh.Trimesh`` of one mesh, vertex order and faces exactly as given.

    Args:
        vertices: ``(V, 3)`` metres, numpy or torch.
        faces: ``(F, 3)`` vertex ids, counter-clockwise seen from outside.
        vertex_colors: None, or ``(V, 3)`` / ``(V, 4)`` uint8 (0-255) or float in [0, 1].

    Returns:
        A Trimesh built with ``process=False`` (trimesh would otherwise merge duplicate
        vertices and drop unused ones, breaking the correspondence with the topology).

    Raises:
        MeshrecError: wrong shapes or dtypes, NaN / Inf vertices, face ids out of range.
    """
    import trimesh

    vertices = _check_vertices(vertices)
    faces = _check_faces(faces, len(vertices))
    colors = None if vertex_colors is None else _check_colors(vertex_colors, len(vertices))
    return trimesh.Trimesh(vertices=vertices, faces=faces, vertex_colors=colors, process=False)


def uncertainty_colors(vertex_values, vmax: float | None = None) -> np.ndarray:
    """Per-vertex colours for a non-negative quantity such as sigma: ``(V,) -> (V, 4)`` uint8.

    ``colour = viridis(clip(value / vmax, 0, 1))``: 0 is dark blue-purple (cool), ``vmax``
    and above yellow. Use one ``vmax`` for several meshes to compare them.

    Args:
        vertex_values: ``(V,)`` finite values (e.g. :func:`vertex_uncertainty`, metres).
        vmax: the value shown as the top of the scale; None: the largest value (1 when all
            values are 0).

    Returns:
        ``(V, 4)`` uint8 RGBA, alpha 255.
    """
    from matplotlib import colormaps

    values = _to_numpy(vertex_values, "vertex_values").astype(np.float64)
    if values.ndim != 1:
        raise MeshrecError(f"vertex_values must have shape (V,), got {values.shape}")
    if not np.isfinite(values).all():
        raise MeshrecError("vertex_values must be finite (got NaN or Inf)")
    if vmax is None:
        vmax = float(values.max()) if values.size and values.max() > 0 else 1.0
    if not np.isfinite(vmax) or vmax <= 0:
        raise MeshrecError(f"vmax must be a positive finite number, got {vmax}")
    return colormaps[UNCERTAINTY_COLORMAP](np.clip(values / vmax, 0.0, 1.0), bytes=True)


def vertex_uncertainty(joint_variance: torch.Tensor, vertices: torch.Tensor, joints: torch.Tensor) -> torch.Tensor:
    """Per-vertex sigma (metres): each vertex gets the sigma of its nearest keypoint.

    Why nearest keypoint and not the joint regressor's columns: the regressor is sparse (on
    the open hand only 383 of 1,595 vertices have a non-zero column), so weighting by it
    leaves most of the mesh without a value, while every vertex has a nearest keypoint. The
    result is piecewise constant: one patch per keypoint, which reads as "this part of the
    finger is uncertain". Pass the joints regressed from these vertices
    (``Prediction.joints``), so the patches follow the mesh.

    Args:
        joint_variance: ``(..., 21)`` sigma^2 of each keypoint (metres^2), e.g.
            ``Prediction.joint_variance``.
        vertices: ``(..., V, 3)`` the mesh.
        joints: ``(..., 21, 3)`` its keypoints, same frame as ``vertices``.

    Returns:
        ``(..., V)`` sigma in metres, same dtype and device as ``joint_variance``.
    """
    joint_variance, vertices, joints = (torch.as_tensor(t) for t in (joint_variance, vertices, joints))
    if vertices.ndim < 2 or vertices.shape[-1] != 3:
        raise MeshrecError(f"vertices must have shape (..., V, 3), got {tuple(vertices.shape)}")
    batch = vertices.shape[:-2]
    num_joints = joint_variance.shape[-1] if joint_variance.ndim else 0
    if joint_variance.shape != (*batch, num_joints) or num_joints == 0:
        raise MeshrecError(
            f"joint_variance must have shape ({', '.join(map(str, (*batch, 'J')))}) to match vertices "
            f"{tuple(vertices.shape)}, got {tuple(joint_variance.shape)}"
        )
    if joints.shape != (*batch, num_joints, 3):
        raise MeshrecError(f"joints must have shape {(*batch, num_joints, 3)}, got {tuple(joints.shape)}")
    if bool((joint_variance < 0).any()):
        raise MeshrecError("joint_variance must be non-negative (it is sigma^2)")
    nearest = torch.cdist(vertices.to(joints.dtype), joints).argmin(dim=-1)  # (..., V)
    return torch.gather(joint_variance.sqrt(), -1, nearest)


def prediction_mesh(prediction: "Prediction", index: int, with_uncertainty: bool = True) -> "trimesh.Trimesh":
    """Sample ``index`` of a prediction as a Trimesh, correctly wound for either side.

    Args:
        prediction: a :class:`~meshrec.models.reconstructor.Prediction`.
        index: which sample of the batch.
        with_uncertainty: colour the vertices by :func:`vertex_uncertainty` through
            :func:`uncertainty_colors` (scale 0 .. this mesh's largest sigma) when the
            prediction has ``joint_variance``; otherwise no colours.

    Returns:
        Vertices in metres in the crop's camera frame, faces from ``prediction.faces_of(index)``.
        ``mesh.metadata['vertex_sigma_m']`` holds the ``(V,)`` sigmas when colours were made.
    """
    index = prediction.sample_index(index)
    vertices = prediction.vertices[index].detach().cpu().double()
    colors = sigma = None
    if with_uncertainty and prediction.joint_variance is not None:
        sigma = vertex_uncertainty(
            prediction.joint_variance[index].detach().cpu().double(), vertices, prediction.joints[index].detach().cpu().double()
        ).numpy()
        colors = uncertainty_colors(sigma)
    mesh = mesh_to_trimesh(vertices, prediction.faces_of(index), colors)
    if sigma is not None:
        mesh.metadata["vertex_sigma_m"] = sigma
    return mesh


def _mesh_bytes(mesh: "trimesh.Trimesh", suffix: str) -> bytes:
    if suffix == ".obj":
        data = mesh.export(file_type="obj", include_normals=False, include_color=False, include_texture=False, digits=8)
    elif suffix == ".ply":
        data = mesh.export(file_type="ply", encoding="binary", include_attributes=False)
    else:
        data = mesh.export(file_type="glb")
    return data.encode() if isinstance(data, str) else bytes(data)


def _prepare_path(path: str | os.PathLike, overwrite: bool, default_suffix: str | None, formats: tuple[str, ...]) -> Path:
    path = Path(path)
    if not path.suffix and default_suffix is not None:
        path = path.with_name(path.name + default_suffix)
    if path.suffix.lower() not in formats:
        raise MeshrecError(f"cannot tell the format of {path.name!r}: the suffix must be one of {', '.join(formats)}")
    if not overwrite and path.exists():
        raise FileExistsError(f"{path} exists and overwrite=False")
    return path


def save_mesh(
    path: str | os.PathLike,
    vertices=None,
    faces=None,
    *,
    mesh: "trimesh.Trimesh | None" = None,
    vertex_colors=None,
    overwrite: bool = True,
) -> Path:
    """Write one mesh to ``path``; the format follows the suffix (see the module docstring).

    Args:
        path: ``.obj`` (also used, and appended, when there is no suffix), ``.ply`` or ``.glb``.
        vertices, faces: ``(V, 3)`` metres and ``(F, 3)`` vertex ids; or give ``mesh`` instead.
        mesh: a Trimesh (e.g. from :func:`prediction_mesh`); its vertex colours are written
            unless ``vertex_colors`` replaces them.
        vertex_colors: ``(V, 3|4)`` uint8 or float in [0, 1]; ignored by ``.obj`` (no standard).
        overwrite: False refuses to replace an existing file (checked before writing).

    Returns:
        The path written. The file is written to a temporary name in the same folder and
        renamed, so a reader never sees half a file and a failed write leaves the old one.

    Raises:
        MeshrecError: unknown suffix, bad shapes, NaN / Inf vertices, face ids out of range.
        FileExistsError: ``overwrite=False`` and ``path`` exists.
    """
    if (mesh is None) == (vertices is None and faces is None):
        raise MeshrecError("give either vertices and faces, or mesh=, not both and not neither")
    if mesh is None and (vertices is None or faces is None):
        raise MeshrecError("save_mesh needs both vertices and faces")
    path = _prepare_path(path, overwrite, ".obj", MESH_FORMATS)
    if mesh is not None:
        if vertex_colors is None and mesh.visual.kind == "vertex":
            vertex_colors = mesh.visual.vertex_colors
        vertices, faces = mesh.vertices, mesh.faces
    suffix = path.suffix.lower()
    colors = None if suffix == ".obj" else vertex_colors
    write_bytes_atomic(path, _mesh_bytes(mesh_to_trimesh(vertices, faces, colors), suffix))
    return path


def _plain(array: torch.Tensor, name: str) -> list:
    values = array.detach().cpu().double()
    if not bool(torch.isfinite(values).all()):
        raise MeshrecError(f"prediction {name} holds NaN or Inf; refusing to write non-standard JSON")
    return values.tolist()


def save_prediction_json(path: str | os.PathLike, prediction: "Prediction", index: int, *, overwrite: bool = True) -> Path:
    """Write the keypoint-level result of sample ``index`` as JSON (plain floats), atomically.

    Keys: ``format`` (:data:`PREDICTION_JSON_FORMAT`), ``units``, ``side`` ('right' / 'left'),
    ``image_size`` ``[H, W]``, ``K`` ``(3, 3)`` pixels, ``root`` ``(3,)`` m (wrist of the
    parametric stage), ``joint_names`` (21, OpenPose order), ``joints3d`` ``(21, 3)`` m in the
    crop's camera frame, ``joints2d`` ``(21, 2)`` pixels (centres at integers),
    ``joint_variance`` ``(21,)`` m^2 and ``joint_sigma`` ``(21,)`` m (both null when the loop
    is off), ``passes_used`` (int), ``keypoints2d`` ``(21, 2)`` pixels from the keypoint head
    (null when it is off). The mesh goes to its own file (:func:`save_mesh`).
    """

    index = prediction.sample_index(index)
    path = _prepare_path(path, overwrite, None, (".json",))
    variance = prediction.joint_variance
    record = {
        "format": PREDICTION_JSON_FORMAT,
        "units": {"3d": "metres", "2d": "pixels", "joint_variance": "metres^2", "joint_sigma": "metres"},
        "side": flag_to_side(prediction.side[index]),
        "image_size": [int(size) for size in prediction.image_size],
        "K": _plain(prediction.K[index], "K"),
        "root": _plain(prediction.root[index], "root"),
        "joint_names": list(OPENPOSE_JOINT_NAMES),
        "joints3d": _plain(prediction.joints[index], "joints"),
        "joints2d": _plain(prediction.joints2d[index], "joints2d"),
        "joint_variance": None if variance is None else _plain(variance[index], "joint_variance"),
        "joint_sigma": None if variance is None else _plain(variance[index].sqrt(), "joint_variance"),
        "passes_used": int(prediction.passes_used[index]),
        "keypoints2d": None if prediction.keypoints2d is None else _plain(prediction.keypoints2d[index], "keypoints2d"),
    }
    # one key per line, arrays kept on their line: readable and diff-friendly
    lines = [f" {json.dumps(key)}: {json.dumps(value, allow_nan=False)}" for key, value in record.items()]
    write_bytes_atomic(path, ("{\n" + ",\n".join(lines) + "\n}\n").encode())
    return path
