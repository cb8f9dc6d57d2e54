"""Reader of the FreiHAND layout (the real data set and meshrec's synthetic generator).

Layout under ``root`` for a split ``S`` (``training`` or ``evaluation``)::

    S/rgb/%08d.jpg        images (``.png`` also accepted), N per colour version
    S/mask/%08d.jpg       optional foreground masks, one per sample (all versions share it)
    S_K.json              N x 3 x 3 intrinsics, pixels of the image       (required)
    S_xyz.json            N x 21 x 3 joints, metres, camera frame          (optional)
    S_verts.json          N x 778 x 3 MANO vertices, metres, camera frame  (optional)
    S_mano.json           N x (1 x) 61: 48 pose (axis-angle, global first), 10 shape, 3 trans
    S_scale.json          N floats (FreiHAND's reference bone length)     (optional)

The training images come in 4 colour versions (``gs`` green screen, ``hom`` homogenised,
``sample``, ``auto``): image ``i`` of version ``v`` is ``rgb/%08d.jpg % (v * N + i)`` and
shares the labels of sample ``i``. Which versions exist is read from the rgb folder (the
synthetic generator writes only one). A missing label file means the label is absent
(``has_*`` False), e.g. the evaluation split before its labels were released.

2D keypoints are the 3D joints projected with K (FreiHAND has no visibility labels: all
21 are marked visible). The MANO translation is not kept: it is tied to the MANO model's
root joint and cannot follow augmentation; ``joints3d`` and ``vertices`` carry the
absolute position.

Samples are cropped/resized to ``crop_size`` (default 128): by default the whole image
(FreiHAND images are already centred on the hand), or the keypoints' box
(``crop_from='keypoints'``). ``crop_size=None`` keeps the native images.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from meshrec.data.base import DEFAULT_MAX_OUTSIDE, HandDataset, check_keypoints_in_image, label_problems
from meshrec.data.crop import DEFAULT_BOX_PADDING, DEFAULT_CROP_SIZE, check_box_padding, crop_sample, hand_crop_box
from meshrec.data.images import load_image, load_mask
from meshrec.data.sample import MANO_BETAS_DIM, MANO_POSE_DIM, HandSample, make_hand_sample
from meshrec.errors import DatasetError
from meshrec.geometry.camera import project_points

__all__ = ["FreiHandDataset", "FREIHAND_VERSIONS", "FREIHAND_SPLITS", "read_json_array"]

FREIHAND_VERSIONS = ("gs", "hom", "sample", "auto")
FREIHAND_SPLITS = ("training", "evaluation")
_MANO_VALUES = MANO_POSE_DIM + MANO_BETAS_DIM + 3
_IMAGE_EXTENSIONS = (".jpg", ".png")
# label name -> (file suffix, shape of one entry; None = any (V, 3))
_LABEL_FILES = {
    "K": ("K", (3, 3)),
    "xyz": ("xyz", (21, 3)),
    "verts": ("verts", None),
    "mano": ("mano", (_MANO_VALUES,)),
    "scale": ("scale", ()),
}


def _cache_file(path: Path, cache_dir: Path) -> Path:
    stat = path.stat()
    key = hashlib.sha1(f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_dir / f"{path.stem}-{key}.npy"


def read_json_array(
    path: str | Path, entry_shape: tuple[int, ...] | None, cache_dir: str | Path | None = None
) -> np.ndarray:
    """Read a JSON list of N equally shaped entries as a float32 array ``(N, *entry_shape)``.

    ``entry_shape=None`` accepts any ``(V, 3)`` entries (vertices). An entry of shape
    ``(1, *entry_shape)`` is accepted (FreiHAND stores MANO parameters as ``[[61 values]]``).
    With ``cache_dir`` the parsed array is stored there as ``.npy`` (keyed by the file's
    path, size and modification time) and memory-mapped on later reads: the real
    ``training_verts.json`` takes a while to parse.

    Raises:
        DatasetError: unreadable JSON, not a list, or an entry of the wrong shape (names the index).
    """
    path = Path(path)
    cached = None
    if cache_dir is not None:
        cached = _cache_file(path, Path(cache_dir))
        if cached.is_file():
            return np.load(cached, mmap_mode="r")
    try:
        text = path.read_text(encoding="utf-8")
        array = _parse_rectangular(text)
        if array is not None:
            array = _as_entry_array(array, entry_shape)
        if array is not None:
            _store_cache(cached, array)
            return array
        entries = json.loads(text)
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise DatasetError(f"{path}: cannot read JSON ({type(error).__name__}: {error})", path=path) from None
    if not isinstance(entries, list):
        raise DatasetError(
            f"{path}: expected a JSON list of per-sample entries, got {type(entries).__name__}", path=path
        )
    array = _as_entry_array(entries, entry_shape)
    if array is None:  # find the first offending entry, for the message
        expected = entry_shape if entry_shape is not None else "(V, 3)"
        shapes = set()
        for index, entry in enumerate(entries):
            single = _as_entry_array([entry], entry_shape)
            if single is None:
                try:
                    shape = np.asarray(entry, dtype=np.float32).shape
                except (ValueError, TypeError):
                    shape = "ragged or not numbers"
                raise DatasetError(
                    f"{path} index {index}: entry must have shape {expected}, got {shape}", path=path, index=index
                )
            shapes.add(single.shape[1:])
        raise DatasetError(f"{path}: entries must all have one shape, got {sorted(shapes)}", path=path)
    _store_cache(cached, array)
    return array


def _store_cache(cached: Path | None, array: np.ndarray) -> None:
    if cached is not None:
        cached.parent.mkdir(parents=True, exist_ok=True)
        partial = cached.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(partial, array)
        os.replace(partial, cached)


_NUMERIC_JSON = frozenset("0123456789+-.eE[], \n\r\t")
_BRACKETS_TO_SPACES = str.maketrans("[]", "  ")


def _parse_rectangular(text: str) -> np.ndarray | None:
    """Fast path for a JSON list of equally shaped numeric arrays: ``(N, *entry)`` float32.

    Label files hold millions of numbers (``training_verts.json``) and ``json.load`` builds a
    Python float for each; numpy's text parser is ~20x faster. Only plain numbers and brackets
    are accepted, the first entry's shape is taken from ``json`` and the bracket count must match
    N such entries; anything else returns None and the caller parses with ``json`` (and reports
    the precise problem).
    """
    body = text.strip()
    if not body.startswith("[[") or not set(body) <= _NUMERIC_JSON:
        return None
    depth, end = 0, None
    for index in range(1, len(body)):  # the first entry: from its '[' to the matching ']'
        depth += {"[": 1, "]": -1}.get(body[index], 0)
        if depth == 0 and body[index] == "]":
            end = index + 1
            break
    if end is None:
        return None
    first = np.asarray(json.loads(body[1:end]), dtype=np.float32)
    if first.size == 0 or first.dtype == object:
        return None
    values = np.fromstring(body.translate(_BRACKETS_TO_SPACES), dtype=np.float32, sep=",")
    count, remainder = divmod(values.size, first.size)
    if remainder or body.count("[") != 1 + count * body[1:end].count("[") or body.count(",") != values.size - 1:
        return None
    return values.reshape(count, *first.shape)


def _as_entry_array(entries, entry_shape: tuple[int, ...] | None) -> np.ndarray | None:
    """``(N, *entry_shape)`` float32 array of the entries (a list or an array), or None if they do not fit."""
    try:
        array = np.asarray(entries, dtype=np.float32)
    except (ValueError, TypeError):
        return None
    if len(entries) == 0:
        return array.reshape(0, *(entry_shape if entry_shape is not None else (0, 3)))
    if entry_shape is None:
        return array if array.ndim == 3 and array.shape[2] == 3 and array.shape[1] > 0 else None
    if array.shape[1:] == (1, *entry_shape):
        array = array[:, 0]
    return array if array.shape[1:] == entry_shape else None


def _parse_versions(version: str | int | Sequence[str | int]) -> list[int] | None:
    """``'all'`` -> None; names / ints (or a list of them) -> sorted version numbers."""
    if isinstance(version, str) and version == "all":
        return None
    requested = [version] if isinstance(version, (str, int)) else list(version)
    numbers = []
    for item in requested:
        if isinstance(item, str) and item in FREIHAND_VERSIONS:
            numbers.append(FREIHAND_VERSIONS.index(item))
        elif isinstance(item, int) and not isinstance(item, bool) and 0 <= item < len(FREIHAND_VERSIONS):
            numbers.append(item)
        else:
            raise ValueError(
                f"version must be 'all' or among {FREIHAND_VERSIONS} / 0-3 (or a list of them), got {item!r}"
            )
    if not numbers:
        raise ValueError("version selects no colour version")
    return sorted(set(numbers))


class FreiHandDataset(HandDataset):
    """FreiHAND-layout dataset of :class:`HandSample`.

    Args:
        root: folder holding ``training/``, ``training_K.json``, ...
        split: ``'training'`` or ``'evaluation'``.
        version: ``'all'`` (every colour version present), or a name among ``('gs', 'hom',
            'sample', 'auto')`` / number 0-3, or a list of them. The evaluation split has
            only version 0.
        crop_size: side of the square output images; None keeps the native size.
        crop_from: ``'image'`` (resize the whole image, made square) or ``'keypoints'`` (box
            around the projected joints, times ``box_padding``; see
            :func:`~meshrec.data.crop.hand_crop_box`).
        box_padding: keypoint box side / keypoint extent.
        load_vertices: read ``S_verts.json`` (the largest file); False gives has_mesh False.
        load_masks: read ``S/mask`` images when present.
        on_error: ``'raise'`` or ``'skip'`` (see :mod:`meshrec.data.base`).
        max_outside: keypoints may lie this fraction of the image size outside it.
        cache_dir: where parsed label arrays are cached as ``.npy`` (None: no cache).

    Sample ids (``HandSample.index``, ``skipped``) are image numbers ``v * N + i``.
    Labels load on first use (``len``, indexing), once.
    """

    def __init__(
        self,
        root: str | Path,
        split: str = "training",
        version: str | int | Sequence[str | int] = "all",
        *,
        crop_size: int | None = DEFAULT_CROP_SIZE,
        crop_from: str = "image",
        box_padding: float = DEFAULT_BOX_PADDING,
        load_vertices: bool = True,
        load_masks: bool = True,
        on_error: str = "raise",
        max_outside: float = DEFAULT_MAX_OUTSIDE,
        cache_dir: str | Path | None = None,
    ) -> None:
        super().__init__(on_error)
        if split not in FREIHAND_SPLITS:
            raise ValueError(f"split must be one of {FREIHAND_SPLITS}, got {split!r}")
        if crop_from not in ("image", "keypoints"):
            raise ValueError(f"crop_from must be 'image' or 'keypoints', got {crop_from!r}")
        if crop_size is not None and (isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size <= 0):
            raise ValueError(f"crop_size must be a positive int or None, got {crop_size!r}")
        self.root = Path(root)
        self.split = split
        self.requested_versions = _parse_versions(version)
        if split == "evaluation" and self.requested_versions not in (None, [0]):
            raise ValueError(f"the evaluation split has only version 0 ('gs'), got version={version!r}")
        self.crop_size = crop_size
        self.crop_from = crop_from
        self.box_padding = check_box_padding(box_padding)
        self.load_vertices = load_vertices
        self.load_masks = load_masks
        self.max_outside = max_outside
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None

        self.image_dir = self.root / split / "rgb"
        self.mask_dir = self.root / split / "mask"
        if not self.image_dir.is_dir():
            raise DatasetError(
                f"{self.image_dir}: image folder not found (expected the FreiHAND layout)", path=self.image_dir
            )
        self.label_paths = {name: self.root / f"{split}_{suffix}.json" for name, (suffix, _) in _LABEL_FILES.items()}
        if not self.label_paths["K"].is_file():
            raise DatasetError(
                f"{self.label_paths['K']}: intrinsics file not found (required)", path=self.label_paths["K"]
            )
        self._labels: dict[str, np.ndarray] | None = None
        self.versions: list[int] = []
        self.num_unique = 0

    # ---- loading -------------------------------------------------------------------------

    def _read_labels(self) -> dict[str, np.ndarray]:
        labels = {}
        for name, (_, entry_shape) in _LABEL_FILES.items():
            path = self.label_paths[name]
            if name == "verts" and not self.load_vertices:
                continue
            if path.is_file():
                labels[name] = read_json_array(path, entry_shape, self.cache_dir)
        count = len(labels["K"])
        labels["side"] = self._read_sides(count)
        for name, array in labels.items():
            if len(array) != count:
                raise DatasetError(
                    f"{self.label_paths[name]} has {len(array)} entries but {self.label_paths['K']} has {count}: "
                    "label files of one split must have one entry per sample",
                    path=self.label_paths[name],
                )
        return labels

    def _read_sides(self, count: int) -> np.ndarray:
        """``(N,)`` side flags from ``S_side.json`` (written by ``meshrec synth``, which renders
        both hands); FreiHAND itself has right hands only and no such file."""
        path = self.root / f"{self.split}_side.json"
        if not path.is_file():
            return np.zeros(count, dtype=np.int64)
        try:
            sides = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise DatasetError(f"{path}: cannot read the hand sides ({error})", path=path) from None
        if not isinstance(sides, list) or len(sides) != count or any(side not in ("right", "left") for side in sides):
            raise DatasetError(
                f"{path} must be a list of {count} entries 'right' / 'left' (one per sample, like {self.label_paths['K'].name})",
                path=path,
            )
        return np.array([side == "left" for side in sides], dtype=np.int64)

    def _image_files(self) -> dict[int, str]:
        """Image number -> file name, from one listing of the rgb folder."""
        files = {}
        with os.scandir(self.image_dir) as entries:
            for entry in entries:
                stem, ext = os.path.splitext(entry.name)
                if ext.lower() in _IMAGE_EXTENSIONS and stem.isdigit():
                    files.setdefault(int(stem), entry.name)
        return files

    def _prepare(self) -> None:
        if self._labels is not None:
            return
        labels = self._read_labels()
        count = len(labels["K"])
        if count == 0:
            raise DatasetError(f"{self.label_paths['K']}: no samples", path=self.label_paths["K"])
        files = self._image_files()
        present = sorted({number // count for number in files if number // count < len(FREIHAND_VERSIONS)})
        if self.split == "evaluation":
            present = [v for v in present if v == 0]
        if self.requested_versions is None:
            versions = present
            if not versions:
                raise DatasetError(f"{self.image_dir}: no images %08d.jpg numbered 0..{count - 1}", path=self.image_dir)
        else:
            versions = self.requested_versions
            for v in versions:
                if v not in present:
                    raise DatasetError(
                        f"{self.image_dir}: colour version '{FREIHAND_VERSIONS[v]}' (images {v * count:08d}..."
                        f"{(v + 1) * count - 1:08d}) not found; present: {[FREIHAND_VERSIONS[p] for p in present]}",
                        path=self.image_dir,
                    )

        # Per-sample label problems, found without reading any image.
        bad_labels: dict[int, list[str]] = {}
        for name, key in (("K", "K"), ("xyz", "joints3d"), ("verts", "vertices"), ("mano", "mano")):
            if name in labels:
                for i, reason in label_problems(**{key: labels[name]}).items():
                    bad_labels.setdefault(i, []).append(f"{self.label_paths[name].name}: {reason}")

        items = []
        for v in versions:
            for i in range(count):
                number = v * count + i
                reason = None
                if i in bad_labels:
                    reason = f"{self.root}, labels of sample {i}: {'; '.join(bad_labels[i])}"
                elif number not in files:
                    reason = f"{self.image_dir / f'{number:08d}.jpg'}: image file not found"
                if reason is None:
                    items.append(number)
                elif self.on_error == "raise":
                    raise DatasetError(f"{reason} (index {number})", path=self.image_dir, index=number)
                else:
                    self._record_skip(number, reason)
        self._mask_files = self._list_masks(count) if self.load_masks else {}
        self._image_names = files
        self.num_unique = count
        self.versions = versions
        self._item_ids = np.asarray(items, dtype=np.int64)
        self._labels = labels

    def _list_masks(self, count: int) -> dict[int, str]:
        if not self.mask_dir.is_dir():
            return {}
        masks = {}
        with os.scandir(self.mask_dir) as entries:
            for entry in entries:
                stem, ext = os.path.splitext(entry.name)
                if ext.lower() in _IMAGE_EXTENSIONS and stem.isdigit() and int(stem) < count:
                    masks[int(stem)] = entry.name
        return masks

    @property
    def labels(self) -> dict[str, np.ndarray]:
        """The label arrays by name (``K``, ``xyz``, ``verts``, ``mano``, ``scale`` where present)."""
        self._prepare()
        return self._labels

    def _load(self, position: int) -> HandSample:
        number = int(self._item_ids[position])
        i = number % self.num_unique
        labels = self._labels
        image_path = self.image_dir / self._image_names[number]
        image = load_image(image_path, number)
        K = torch.from_numpy(np.array(labels["K"][i]))
        joints3d = torch.from_numpy(np.array(labels["xyz"][i])) if "xyz" in labels else None
        joints2d = project_points(joints3d[None], K[None])[0] if joints3d is not None else None
        mano = labels["mano"][i] if "mano" in labels else None
        mask = None
        if i in self._mask_files:
            mask = load_mask(self.mask_dir / self._mask_files[i], number)
            if tuple(mask.shape[-2:]) != tuple(image.shape[-2:]):
                raise DatasetError(
                    f"{self.mask_dir / self._mask_files[i]} (index {number}): mask is {tuple(mask.shape[-2:])}, "
                    f"image is {tuple(image.shape[-2:])}",
                    path=self.mask_dir / self._mask_files[i],
                    index=number,
                )
        sample = make_hand_sample(
            image,
            K,
            joints2d=joints2d,
            joints3d=joints3d,
            vertices=torch.from_numpy(np.array(labels["verts"][i])) if "verts" in labels else None,
            mano_pose=torch.from_numpy(np.array(mano[:MANO_POSE_DIM])) if mano is not None else None,
            mano_betas=torch.from_numpy(np.array(mano[MANO_POSE_DIM : MANO_POSE_DIM + MANO_BETAS_DIM]))
            if mano is not None
            else None,
            mask=mask,
            side=int(labels["side"][i]),
            index=number,
            source=str(image_path),
        )
        if sample.has_joints2d:
            reason = check_keypoints_in_image(
                sample.joints2d, sample.joints2d_visible, sample.image_size, self.max_outside
            )
            if reason is not None:
                raise DatasetError(f"{image_path} (index {number}): {reason}", path=image_path, index=number)
        if self.crop_size is None:
            return sample
        if self.crop_from == "image" and sample.image_size == (self.crop_size, self.crop_size):
            return sample  # already the size asked for (e.g. a synthetic set): resampling would only blur
        if self.crop_from == "keypoints":  # the visible keypoints' box, else the whole image
            return crop_sample(sample, self.crop_size, padding=self.box_padding)
        return crop_sample(sample, self.crop_size, box=hand_crop_box(sample.image_size), padding=1.0)
