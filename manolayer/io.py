"""Loading, validating, mirroring and saving MANO-format hand models.

Two file formats carry the same arrays:

- the official MANO pickle (``MANO_RIGHT.pkl`` / ``MANO_LEFT.pkl``, a Python-2 pickle
  holding chumpy and scipy.sparse objects). It is read by a whitelisting unpickler that
  builds plain numpy arrays and refuses every other global, so nothing from the file is
  ever executed and neither chumpy nor scipy is needed;
- the project's plain ``.npz`` (loaded with ``allow_pickle=False``), written by
  :func:`save_mano_npz` with deterministic bytes. The project's own CC0 "open hand" ships
  in this format and is what ``load_mano(None)`` returns.

Left hands. A left model is the mirror image of a right one under the reflection
``x -> -x`` (:func:`mirror_model`). The official left pickle has the wrong sign on
``shapedirs[:, 0, :]``; :func:`load_mano` negates it once, for left-hand pickles only,
unless ``fix_left_shapedirs=False``. Files in the ``.npz`` format store corrected arrays.
"""

from __future__ import annotations

import codecs
import hashlib
import io
import os
import pickle
import re
import tempfile
import zipfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from manolayer.errors import ForbiddenPickleError, ManoFormatError, SideMismatchError
from manolayer.joints import FINGERTIP_IDS_MANO778

OPEN_HAND_PATH = Path(__file__).resolve().parent / "assets" / "open_hand_right.npz"
OFFICIAL_RIGHT_V1_2_MD5 = "fd5a9d35f914987cf1cc04ffe338caa1"
SIDES = ("right", "left")

_REQUIRED_KEYS = ("v_template", "f", "shapedirs", "J_regressor", "weights", "kintree_table")
_OPTIONAL_KEYS = ("posedirs", "hands_components", "hands_mean", "fingertip_ids", "side")
_UINT32_MINUS_ONE = 4294967295


@dataclass(frozen=True, eq=False)
class ManoModel:
    """The arrays of a MANO-format hand model, validated against each other.

    Attributes:
        v_template: (V, 3) float64, rest mesh in metres.
        faces: (F, 3) int64, triangles; ``faces[f] = (a, b, c)`` is counter-clockwise seen
            from outside the hand.
        shapedirs: (V, 3, S) float64, shape blend shapes; ``v_shaped = v_template + shapedirs @ betas``.
        posedirs: (V, 3, 9 * (J - 1)) float64, pose-corrective blend shapes (all zero for the open hand).
        J_regressor: (J, V) float64, ``joints = J_regressor @ v_shaped``.
        weights: (V, J) float64, skinning weights, rows sum to 1.
        parents: (J,) int64, ``parents[j]`` is the parent joint of joint j; ``parents[0] = -1``.
        hands_components: (C, 3 * (J - 1)) float64 pose PCA basis, rows are components, or None.
        hands_mean: (3 * (J - 1),) float64 mean hand pose (axis-angle), or None.
        fingertip_ids: (5,) int64 vertex ids of the tips of thumb, index, middle, ring, little,
            or None when the file has none and the topology is not MANO's 778 vertices.
        side: 'right' or 'left'.
        source: where the arrays came from (a path, or a description).
        md5: MD5 of the file read, or None.
    """

    v_template: np.ndarray
    faces: np.ndarray
    shapedirs: np.ndarray
    posedirs: np.ndarray
    J_regressor: np.ndarray
    weights: np.ndarray
    parents: np.ndarray
    hands_components: np.ndarray | None
    hands_mean: np.ndarray | None
    fingertip_ids: np.ndarray | None
    side: str
    source: str = "<memory>"
    md5: str | None = field(default=None, compare=False)

    def __post_init__(self) -> None:
        _validate(self)

    def __eq__(self, other: object) -> bool:
        """Same side and identical arrays (file names and MD5 are ignored)."""
        return isinstance(other, ManoModel) and self.content_hash() == other.content_hash()

    __hash__ = None  # type: ignore[assignment]  # arrays are mutable

    @property
    def num_vertices(self) -> int:
        return int(self.v_template.shape[0])

    @property
    def num_joints(self) -> int:
        return int(self.parents.shape[0])

    @property
    def num_betas(self) -> int:
        return int(self.shapedirs.shape[2])

    @property
    def is_official_right_v1_2(self) -> bool:
        """True when the file read is byte-identical to the official MANO_RIGHT.pkl v1.2."""
        return self.md5 == OFFICIAL_RIGHT_V1_2_MD5

    @property
    def rest_joints(self) -> np.ndarray:
        """(J, 3) joint positions of the rest mesh."""
        return self.J_regressor @ self.v_template

    def content_hash(self) -> str:
        """SHA-256 over every array and the side: a cache key that ignores file names."""
        digest = hashlib.sha256(self.side.encode())
        for array in _arrays_for_saving(self).values():
            digest.update(str(array.dtype).encode() + str(array.shape).encode())
            digest.update(np.ascontiguousarray(array).tobytes())
        return digest.hexdigest()

    def describe(self) -> str:
        """A human-readable summary of what the model contains."""
        extent_cm = (self.v_template.max(0) - self.v_template.min(0)) * 100
        nonzero_betas = int(np.count_nonzero(np.abs(self.shapedirs).reshape(-1, self.num_betas).max(0)))
        pca = "none" if self.hands_components is None else f"{self.hands_components.shape[0]} components"
        tips = "none" if self.fingertip_ids is None else ", ".join(str(i) for i in self.fingertip_ids)
        lines = [
            f"source:          {self.source}",
            f"side:            {self.side}",
            f"vertices:        {self.num_vertices}",
            f"faces:           {self.faces.shape[0]}",
            f"joints:          {self.num_joints} (parents {self.parents.tolist()})",
            f"shape betas:     {self.num_betas} ({nonzero_betas} non-zero)",
            f"pose correctives:{' none (all zero)' if not self.posedirs.any() else f' {self.posedirs.shape[2]}'}",
            f"pose PCA:        {pca}",
            f"fingertip ids:   {tips}",
            "extent (cm):     " + " x ".join(f"{e:.1f}" for e in extent_cm),
            f"content hash:    {self.content_hash()[:16]}",
        ]
        if self.md5 is not None:
            official = "yes" if self.is_official_right_v1_2 else "no"
            lines.append(f"md5:             {self.md5} (official MANO_RIGHT v1.2: {official})")
        return "\n".join(lines)


# --------------------------------------------------------------------------- loading


def load_mano(
    path: str | os.PathLike | None = None,
    side: str | None = None,
    *,
    fix_left_shapedirs: bool = True,
) -> ManoModel:
    """Load a MANO-format model from an official pickle or the project's ``.npz``.

    Args:
        path: ``MANO_RIGHT.pkl``, ``MANO_LEFT.pkl``, or an ``.npz`` written by
            :func:`save_mano_npz`. None loads the project's CC0 open hand; with
            ``side='left'`` it is mirrored from the right one by :func:`mirror_model`.
        side: 'right' or 'left'. For a file, it must agree with the side the file declares
            (its ``side`` entry, or LEFT/RIGHT in its name); a file that declares nothing
            needs it.
        fix_left_shapedirs: negate ``shapedirs[:, 0, :]`` of a left-hand *pickle*, the known
            sign error of the official MANO_LEFT.pkl. Turn off only for a left pickle that
            was already corrected.

    Raises:
        FileNotFoundError: the file does not exist.
        ForbiddenPickleError: the pickle asks for a global outside the whitelist.
        SideMismatchError: ``side`` disagrees with the file.
        ManoFormatError: anything else wrong with the file, named precisely.
    """
    if side is not None and side not in SIDES:
        raise ManoFormatError(f"side must be 'right' or 'left', got {side!r}")
    if path is None:
        if not OPEN_HAND_PATH.exists():
            raise FileNotFoundError(
                f"the open hand asset {OPEN_HAND_PATH} is missing; rebuild it with "
                "`meshrec build-open-hand --assets ../shared/makehuman --out manolayer/assets/`"
            )
        model = load_mano(OPEN_HAND_PATH, side="right")
        model = replace(model, source=f"open hand ({OPEN_HAND_PATH.name})")
        return mirror_model(model) if side == "left" else model

    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"MANO file {path} does not exist")
    if path.is_dir():
        raise ManoFormatError(f"{path} is a folder; pass the file itself, e.g. {path / 'MANO_RIGHT.pkl'}")
    raw = path.read_bytes()
    md5 = hashlib.md5(raw).hexdigest()
    if raw[:4] == b"PK\x03\x04":
        arrays = _read_npz(raw, path)
        from_pickle = False
    else:
        arrays = _read_pickle(raw, path)
        from_pickle = True

    file_side = _declared_side(arrays, path)
    if side is not None and file_side is not None and side != file_side:
        raise SideMismatchError(
            f"{path} holds a {file_side} hand but side={side!r} was asked for; pass side={file_side!r}, "
            f"or load the {side}-hand file (a left model can be made from a right one with mirror_model)"
        )
    resolved_side = side or file_side
    if resolved_side is None:
        raise ManoFormatError(
            f"cannot tell which hand {path} holds: it has no 'side' entry and its name says neither "
            "LEFT nor RIGHT; pass side='right' or side='left'"
        )
    model = model_from_arrays(arrays, resolved_side, source=path, md5=md5)
    if from_pickle and resolved_side == "left" and fix_left_shapedirs:
        shapedirs = model.shapedirs.copy()
        shapedirs[:, 0, :] *= -1
        model = replace(model, shapedirs=shapedirs)
    return model


def _declared_side(arrays: dict[str, Any], path: Path) -> str | None:
    if "side" in arrays:
        side = str(np.asarray(arrays["side"]).item()) if not isinstance(arrays["side"], str) else arrays["side"]
        if side not in SIDES:
            raise ManoFormatError(f"{path}: entry 'side' is {side!r}; expected 'right' or 'left'")
        return side
    match = re.search(r"(?i)(?:^|[^a-z])(left|right)(?:[^a-z]|$)", path.stem)
    return match.group(1).lower() if match else None


def _read_npz(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except ValueError as error:
        raise ManoFormatError(f"{path} holds object arrays, which are refused: {error}") from None
    except (zipfile.BadZipFile, EOFError, OSError) as error:
        raise ManoFormatError(f"{path} is a truncated or corrupt .npz file ({error}); convert the pickle again") from None


def _read_pickle(raw: bytes, path: Path) -> dict[str, Any]:
    try:
        loaded = _RestrictedUnpickler(io.BytesIO(raw), path).load()
    except ForbiddenPickleError:
        raise
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, IndexError, KeyError, AttributeError) as error:
        raise ManoFormatError(
            f"{path} is not a readable MANO pickle (truncated or corrupt?): {type(error).__name__}: {error}"
        ) from None
    if not isinstance(loaded, dict):
        raise ManoFormatError(f"{path} holds a {type(loaded).__name__}; a MANO file holds a dict of arrays")
    return {key: _to_plain(value, path, key) for key, value in loaded.items()}


def model_from_arrays(arrays: dict[str, Any], side: str, *, source: str | os.PathLike = "<arrays>", md5: str | None = None) -> ManoModel:
    """A checked :class:`ManoModel` from MANO-format arrays already in memory (the entries of
    a MANO file: ``v_template`` ``(V, 3)``, ``shapedirs`` ``(V, 3, S)``, ``posedirs``, ``J_regressor``,
    ``weights``, ``kintree_table``, ``f``, ...); ``source`` names them in error messages.
    :func:`load_mano` reads a file and calls this."""
    missing = [key for key in _REQUIRED_KEYS if key not in arrays]
    if missing:
        raise ManoFormatError(
            f"{source} lacks the entries {missing}; a MANO file needs {list(_REQUIRED_KEYS)} "
            f"(found {sorted(arrays)})"
        )
    numeric = {}
    for key in _REQUIRED_KEYS + _OPTIONAL_KEYS:
        if key in arrays and key != "side":
            value = np.asarray(arrays[key])
            if not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
                raise ManoFormatError(f"{source}: entry {key!r} has dtype {value.dtype}; expected numbers")
            numeric[key] = value

    kintree = numeric["kintree_table"].astype(np.int64)
    kintree[kintree == _UINT32_MINUS_ONE] = -1
    if kintree.ndim != 2 or kintree.shape[0] != 2:
        raise ManoFormatError(f"{source}: 'kintree_table' has shape {kintree.shape}; expected (2, J)")
    if not np.array_equal(kintree[1], np.arange(kintree.shape[1])):
        raise ManoFormatError(f"{source}: 'kintree_table' row 1 must list joints 0..J-1 in order, got {kintree[1]}")

    v_template = numeric["v_template"].astype(np.float64)
    num_joints = kintree.shape[1]
    posedirs = numeric.get("posedirs")
    if posedirs is None:
        posedirs = np.zeros((v_template.shape[0], 3, 9 * (num_joints - 1)))
    fingertips = numeric.get("fingertip_ids")
    if fingertips is None and v_template.shape[0] == 778:
        fingertips = np.asarray(FINGERTIP_IDS_MANO778)
    return ManoModel(
        v_template=v_template,
        faces=numeric["f"].astype(np.int64),
        shapedirs=numeric["shapedirs"].astype(np.float64),
        posedirs=posedirs.astype(np.float64),
        J_regressor=numeric["J_regressor"].astype(np.float64),
        weights=numeric["weights"].astype(np.float64),
        parents=kintree[0].copy(),
        hands_components=_optional_float(numeric.get("hands_components")),
        hands_mean=_optional_float(numeric.get("hands_mean")),
        fingertip_ids=None if fingertips is None else fingertips.astype(np.int64),
        side=side,
        source=str(source),
        md5=md5,
    )


def _optional_float(array: np.ndarray | None) -> np.ndarray | None:
    return None if array is None else array.astype(np.float64)


# --------------------------------------------------------------------------- validation


def _validate(model: ManoModel) -> None:
    where = model.source

    def fail(message: str) -> None:
        raise ManoFormatError(f"{where}: {message}")

    if model.side not in SIDES:
        fail(f"side is {model.side!r}; expected 'right' or 'left'")
    v = model.v_template
    if v.ndim != 2 or v.shape[1] != 3 or v.shape[0] < 4:
        fail(f"'v_template' has shape {v.shape}; expected (V, 3) with V >= 4")
    num_v = v.shape[0]
    parents = model.parents
    num_j = parents.shape[0] if parents.ndim == 1 else -1
    if num_j < 2:
        fail(f"the kinematic tree has shape {parents.shape}; expected (J,) with J >= 2")
    if parents[0] != -1 or any(not 0 <= parents[j] < j for j in range(1, num_j)):
        fail(f"parents {parents.tolist()} are not a tree rooted at joint 0 with parents listed before children")
    pose_dim = 3 * (num_j - 1)
    expected = {
        "faces": (None, 3),
        "shapedirs": (num_v, 3, None),
        "posedirs": (num_v, 3, 3 * pose_dim),
        "J_regressor": (num_j, num_v),
        "weights": (num_v, num_j),
    }
    for name, shape in expected.items():
        array = getattr(model, name)
        if array.ndim != len(shape) or any(e is not None and e != a for e, a in zip(shape, array.shape)):
            wanted = "(" + ", ".join("*" if e is None else str(e) for e in shape) + ")"
            fail(
                f"'{name}' has shape {array.shape}; expected {wanted} for a model with "
                f"{num_v} vertices and {num_j} joints"
            )
    if model.shapedirs.shape[2] < 1:
        fail("'shapedirs' has no shape components")
    faces = model.faces
    if faces.size and (faces.min() < 0 or faces.max() >= num_v):
        fail(f"'f' indexes vertices {faces.min()}..{faces.max()} but there are only {num_v}")
    if model.hands_components is not None:
        comps = model.hands_components
        if comps.ndim != 2 or comps.shape[1] != pose_dim:
            fail(f"'hands_components' has shape {comps.shape}; expected (C, {pose_dim})")
    if model.hands_mean is not None and model.hands_mean.shape != (pose_dim,):
        fail(f"'hands_mean' has shape {model.hands_mean.shape}; expected ({pose_dim},)")
    if model.fingertip_ids is not None:
        tips = model.fingertip_ids
        if tips.shape != (5,) or tips.min() < 0 or tips.max() >= num_v:
            fail(f"'fingertip_ids' is {tips.tolist()}; expected 5 vertex ids in 0..{num_v - 1}")
    for name in ("v_template", "shapedirs", "posedirs", "J_regressor", "weights", "hands_components", "hands_mean"):
        array = getattr(model, name)
        if array is not None and not np.isfinite(array).all():
            fail(f"'{name}' contains NaN or Inf")
    row_sums = model.weights.sum(1)
    if np.abs(row_sums - 1).max() > 1e-4:
        worst = int(np.abs(row_sums - 1).argmax())
        fail(f"skinning weights of vertex {worst} sum to {row_sums[worst]:.6f}; expected 1")


# --------------------------------------------------------------------------- mirroring


def mirror_model(model: ManoModel) -> ManoModel:
    """The same hand reflected by ``x -> -x``: right becomes left and back.

    Faces are re-wound so normals still point outward, ``shapedirs`` and ``posedirs``
    follow the reflection, and pose-space arrays (``hands_mean``, ``hands_components``)
    map each joint's axis-angle ``(x, y, z)`` to ``(x, -y, -z)`` — the rule that turns a
    right-hand pose into the matching left-hand pose.
    """
    reflect = np.array([-1.0, 1.0, 1.0])
    # pose feature k*9 + 3i + j holds (R_k - I)[i, j]; under S R S it picks up s_i * s_j.
    feature_sign = np.tile(np.outer(reflect, reflect).ravel(), model.num_joints - 1)
    axis_angle_sign = np.tile(-reflect, model.num_joints - 1)
    return replace(
        model,
        v_template=model.v_template * reflect,
        faces=model.faces[:, [0, 2, 1]].copy(),
        shapedirs=model.shapedirs * reflect[None, :, None],
        posedirs=model.posedirs * reflect[None, :, None] * feature_sign[None, None, :],
        hands_components=None if model.hands_components is None else model.hands_components * axis_angle_sign,
        hands_mean=None if model.hands_mean is None else model.hands_mean * axis_angle_sign,
        side="left" if model.side == "right" else "right",
        source=f"mirror of {model.source}",
        md5=None,
    )


# --------------------------------------------------------------------------- saving


def _arrays_for_saving(model: ManoModel) -> dict[str, np.ndarray]:
    arrays = {
        "v_template": model.v_template,
        "f": model.faces.astype(np.uint32),
        "shapedirs": model.shapedirs,
        "posedirs": model.posedirs,
        "J_regressor": model.J_regressor,
        "weights": model.weights,
        "kintree_table": np.stack([model.parents, np.arange(model.num_joints)]).astype(np.int64),
    }
    for name in ("hands_components", "hands_mean", "fingertip_ids"):
        if getattr(model, name) is not None:
            arrays[name] = getattr(model, name)
    return arrays


def save_mano_npz(path: str | os.PathLike, model: ManoModel, extra: dict[str, np.ndarray] | None = None) -> Path:
    """Write ``model`` as a compressed ``.npz`` with deterministic bytes, atomically.

    The same model always gives the same file (fixed zip timestamps and entry order), and
    the target is replaced only once the new file is complete, so an interrupted write
    never leaves a half-written model behind. ``extra`` adds further numeric arrays.
    """
    path = Path(path)
    arrays = _arrays_for_saving(model)
    arrays["side"] = np.array(model.side)
    for name, array in (extra or {}).items():
        if name in arrays:
            raise ManoFormatError(f"extra array {name!r} would overwrite a model entry")
        arrays[name] = np.asarray(array)
    write_bytes_atomic(path, _npz_bytes(arrays))
    return path


def _npz_bytes(arrays: dict[str, np.ndarray]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            payload = io.BytesIO()
            np.lib.format.write_array(payload, np.ascontiguousarray(array), allow_pickle=False)
            archive.writestr(info, payload.getvalue(), compresslevel=9)
    return buffer.getvalue()


def write_bytes_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(handle, "wb") as temp:
            temp.write(data)
            temp.flush()
            os.fsync(temp.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(temp_name, 0o666 & ~umask)  # mkstemp makes 0600; give the usual permissions
        os.replace(temp_name, path)
    except BaseException:
        Path(temp_name).unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- restricted unpickling


class _Recorded:
    """Stands in for a whitelisted class: records the pickle's arguments and state, runs nothing."""

    def __new__(cls, *args: Any, **kwargs: Any) -> "_Recorded":
        instance = super().__new__(cls)
        instance.args = args
        instance.state = {}
        return instance

    def __setstate__(self, state: Any) -> None:
        # protocol-2 objects with __slots__ pickle their state as (dict_state, slot_state)
        parts = state if isinstance(state, tuple) else (state,)
        for part in parts:
            if isinstance(part, dict):
                self.state.update(part)


class _ChumpyCh(_Recorded):
    """chumpy.ch.Ch: a plain array in ``state['x']``."""


class _ChumpySelect(_Recorded):
    """chumpy.reordering.Select: ``a.ravel()[idxs].reshape(preferred_shape)``."""


class _ScipyCsc(_Recorded):
    """scipy.sparse CSC matrix: ``data``, ``indices``, ``indptr`` and ``_shape``."""


def _reconstruct_array(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    if subtype is not np.ndarray:
        raise ForbiddenPickleError(f"refusing to build an array of type {subtype!r}; only numpy.ndarray is allowed")
    return np.ndarray.__new__(np.ndarray, shape, _numeric_dtype(dtype))


def _numeric_dtype(*args: Any) -> np.dtype:
    dtype = np.dtype(args[0]) if args else np.dtype(float)
    if dtype.hasobject:
        raise ForbiddenPickleError("refusing an object-dtype array: a MANO file holds only numbers")
    return dtype


def _scalar(dtype: np.dtype, data: Any = None) -> Any:
    if dtype.hasobject:
        raise ForbiddenPickleError("refusing an object-dtype scalar: a MANO file holds only numbers")
    if isinstance(data, str):
        data = data.encode("latin1")
    return np.frombuffer(data, dtype=dtype, count=1)[0]


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    if encoding.lower().replace("-", "") != "latin1":
        raise ForbiddenPickleError(f"refusing _codecs.encode with encoding {encoding!r}")
    return codecs.encode(text, "latin1")


def _reconstructor(cls: Any, base: Any, state: Any) -> Any:
    if not (isinstance(cls, type) and issubclass(cls, _Recorded)) or base is not object:
        raise ForbiddenPickleError(f"refusing copyreg._reconstructor for {cls!r} based on {base!r}")
    return cls.__new__(cls)


_NUMPY_CORE = ("numpy.core.multiarray", "numpy._core.multiarray")
_ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("chumpy.ch", "Ch"): _ChumpyCh,
    ("chumpy.reordering", "Select"): _ChumpySelect,
    ("scipy.sparse.csc", "csc_matrix"): _ScipyCsc,
    ("scipy.sparse._csc", "csc_matrix"): _ScipyCsc,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): _numeric_dtype,
    ("_codecs", "encode"): _latin1_encode,
    ("__builtin__", "set"): set,
    ("builtins", "set"): set,
    ("__builtin__", "frozenset"): frozenset,
    ("builtins", "frozenset"): frozenset,
    ("copy_reg", "_reconstructor"): _reconstructor,
    ("copyreg", "_reconstructor"): _reconstructor,
    **{(module, "_reconstruct"): _reconstruct_array for module in _NUMPY_CORE},
    **{(module, "scalar"): _scalar for module in _NUMPY_CORE},
}


class _RestrictedUnpickler(pickle.Unpickler):
    """Builds only numpy arrays and stand-ins for chumpy / scipy.sparse objects."""

    def __init__(self, stream: io.BytesIO, path: Path) -> None:
        super().__init__(stream, encoding="latin1")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise ForbiddenPickleError(
                f"{self._path} asks to build the forbidden global {module}.{name}; refusing to load it. "
                "A MANO file needs only numpy arrays, chumpy Ch/Select and scipy CSC matrices: "
                "is this really a MANO file?"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise ForbiddenPickleError(f"{self._path} uses persistent ids, which a MANO file never does")


def _to_plain(value: Any, path: Path, key: str) -> Any:
    """Turn stand-ins into numpy arrays, recursively."""
    if isinstance(value, _ChumpyCh):
        if "x" not in value.state:
            raise ManoFormatError(f"{path}: chumpy object in {key!r} has no array 'x'")
        return np.asarray(_to_plain(value.state["x"], path, key))
    if isinstance(value, _ChumpySelect):
        try:
            source = np.asarray(_to_plain(value.state["a"], path, key))
            return source.ravel()[np.asarray(value.state["idxs"])].reshape(value.state["preferred_shape"])
        except (KeyError, IndexError, ValueError) as error:
            raise ManoFormatError(f"{path}: chumpy Select in {key!r} is inconsistent: {error}") from None
    if isinstance(value, _ScipyCsc):
        return _csc_to_dense(value.state, path, key)
    if isinstance(value, _Recorded):
        raise ManoFormatError(f"{path}: unexpected object in {key!r}")
    if isinstance(value, dict):
        return {k: _to_plain(v, path, key) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_plain(v, path, key) for v in value)
    return value


def _csc_to_dense(state: dict[str, Any], path: Path, key: str) -> np.ndarray:
    try:
        shape = tuple(int(n) for n in state.get("_shape", state.get("shape")))
        data = np.asarray(state["data"], dtype=np.float64)
        rows = np.asarray(state["indices"], dtype=np.int64)
        indptr = np.asarray(state["indptr"], dtype=np.int64)
        columns = np.repeat(np.arange(shape[1]), np.diff(indptr))
        dense = np.zeros(shape)
        dense[rows, columns] = data
    except (KeyError, TypeError, IndexError, ValueError) as error:
        raise ManoFormatError(f"{path}: sparse matrix in {key!r} is inconsistent: {error}") from None
    return dense

