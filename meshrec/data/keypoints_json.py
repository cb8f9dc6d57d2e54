"""Generic keypoint-label format for your own images (JSON list or JSON Lines).

A file is either a ``.json`` file holding a list of records, or a ``.jsonl`` file with one
record per line (blank lines are ignored). Each record is one hand in one image::

    {
      "image": "photos/0001.jpg",             # required; relative to the label file's folder
      "joints2d": [[u, v], ...],              # 21 x 2 pixels, or 21 x 3 with visibility in column 3
      "visible": [true, ...],                 # optional, 21 booleans (default: all visible)
      "K": [[fx, 0, cx], [0, fy, cy], [0, 0, 1]],  # optional intrinsics, pixels of the image
      "joints3d": [[x, y, z], ...],           # optional, 21 x 3 metres, camera frame; needs K
      "mano": {"pose": [48 values], "betas": [10 values]},   # optional
      "vertices": [[x, y, z], ...],           # optional, V x 3 metres, camera frame; needs K
      "side": "right",                        # optional, "right" (default) or "left"
      "box": [x0, y0, x1, y1],                # optional hand box, pixels of the image
      "meta": {...}                           # optional, anything (ids, notes); not read
    }

Conventions: pixel coordinates ``(u, v)`` = (column, row) with pixel centres at integers
(the top-left pixel's centre is (0, 0)); camera frame x right, y down, z forward (OpenCV);
metres; the 21 keypoints in OpenPose / FreiHAND order (0 wrist, 1-4 thumb, 5-8 index,
9-12 middle, 13-16 ring, 17-20 little, each finger from the palm to the tip).
A third ``joints2d`` column counts as visible when > 0 (so confidence scores work).
Unknown keys are an error (a misspelt key must not silently drop a label).

``joints2d`` may be left out (an image with 3D labels only, or none, for prediction).

The hand is cropped and resized to ``crop_size`` (default 128): around ``box`` if given,
else around the visible keypoints; the box is made square and grown by ``box_padding``
(1.5), and may reach outside the image (filled with zeros). Without both (or with no
visible keypoint), the whole image (:func:`meshrec.data.crop.hand_crop_box`).

Without ``K`` the intrinsics default to :func:`meshrec.geometry.camera.default_intrinsics`
of the *crop*: the crop the network sees is assumed to span ``DEFAULT_FOV_DEG`` (25 degrees)
across, with its principal point at its centre (with ``crop_size=None``, the same for the
whole image). Since the real camera is unknown, 3D labels (``joints3d``, ``vertices``)
require ``K``.

Checks (``on_error='raise'`` stops at the first, ``'skip'`` records and skips the record):
the image exists and decodes; shapes; finite numbers; visible keypoints not far outside the
image; ``joints3d`` in front of the camera and hand-sized (catches millimetres); and, when
``joints2d``, ``joints3d`` and ``K`` are all given, that the 3D joints project onto the 2D
ones (median error within ``max(4 px, 3 %`` of the image's longer side)).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from meshrec.data.base import DEFAULT_MAX_OUTSIDE, HandDataset, check_keypoints_in_image, label_problems
from meshrec.data.crop import (
    DEFAULT_BOX_PADDING,
    DEFAULT_CROP_SIZE,
    check_box,
    check_box_padding,
    crop_sample,
    hand_crop_box,
    image_intrinsics_for_crop,
)
from meshrec.data.images import image_size_of, load_image
from meshrec.data.sample import MANO_BETAS_DIM, MANO_POSE_DIM, NUM_JOINTS, HandSample, make_hand_sample
from meshrec.sides import side_to_flag
from meshrec.errors import DatasetError, MeshrecError
from meshrec.geometry.camera import DEFAULT_FOV_DEG, default_intrinsics, project_points

__all__ = [
    "KeypointsJsonDataset",
    "KeypointRecord",
    "parse_keypoint_record",
    "read_keypoint_records",
    "split_by_image",
    "RECORD_KEYS",
]

RECORD_KEYS = ("image", "joints2d", "visible", "K", "joints3d", "mano", "vertices", "side", "box", "meta")
_MANO_KEYS = ("pose", "betas")
_REPROJECTION_TOLERANCE_PX = 4.0
_REPROJECTION_TOLERANCE_FRACTION = 0.03


@dataclass(frozen=True)
class KeypointRecord:
    """One parsed and checked record (numpy arrays, float32; None where absent).

    Attributes:
        image: absolute image path. joints2d: ``(21, 2)``; visible: ``(21,)`` bool;
        K: ``(3, 3)``; joints3d: ``(21, 3)``; mano_pose: ``(48,)``; mano_betas: ``(10,)``;
        vertices: ``(V, 3)``; side: 'right' | 'left'; box: ``(4,)``; where: file and line.
    """

    image: Path
    joints2d: np.ndarray | None
    visible: np.ndarray | None
    K: np.ndarray | None
    joints3d: np.ndarray | None
    mano_pose: np.ndarray | None
    mano_betas: np.ndarray | None
    vertices: np.ndarray | None
    side: str
    box: np.ndarray | None
    where: str


def _array(record: dict, key: str, shape: tuple, where: str) -> np.ndarray | None:
    if key not in record or record[key] is None:
        return None
    try:
        value = np.asarray(record[key], dtype=np.float32)
    except (ValueError, TypeError):
        raise DatasetError(f"{where}: {key} must be an array of numbers {shape}, got {str(record[key])[:80]}") from None
    if len(value.shape) != len(shape) or any(s is not None and s != v for s, v in zip(shape, value.shape, strict=True)):
        readable = tuple("V" if s is None else s for s in shape)
        raise DatasetError(f"{where}: {key} must have shape {readable}, got {value.shape}")
    if not np.isfinite(value).all():
        position = np.argwhere(~np.isfinite(value))[0].tolist()
        raise DatasetError(f"{where}: {key} has a non-finite value (NaN or inf) at {position}")
    return value


def parse_keypoint_record(record: object, base: Path, where: str) -> KeypointRecord:
    """One record of a keypoint label file, checked (:class:`DatasetError` saying what is wrong
    at ``where``); image paths are relative to ``base``, the label file's folder."""
    if not isinstance(record, dict):
        raise DatasetError(f"{where}: a record must be a JSON object, got {type(record).__name__}")
    unknown = sorted(set(record) - set(RECORD_KEYS))
    if unknown:
        raise DatasetError(f"{where}: unknown keys {unknown}; allowed: {list(RECORD_KEYS)}")
    if not isinstance(record.get("image"), str) or not record["image"]:
        raise DatasetError(f"{where}: 'image' (a path relative to the label file) is required")
    image = (base / record["image"]).resolve()
    if not image.is_file():
        raise DatasetError(f"{where}: image file not found: {image}")

    joints2d, visible = None, None
    if record.get("joints2d") is not None:
        raw = np.asarray(record["joints2d"], dtype=object)
        columns = raw.shape[1] if raw.ndim == 2 else None
        if columns == 3:
            table = _array(record, "joints2d", (NUM_JOINTS, 3), where)
            joints2d, visible = table[:, :2], table[:, 2] > 0
        else:
            joints2d = _array(record, "joints2d", (NUM_JOINTS, 2), where)
    if record.get("visible") is not None:
        if joints2d is None:
            raise DatasetError(f"{where}: 'visible' given without 'joints2d'")
        flags = record["visible"]
        if (
            not isinstance(flags, list)
            or len(flags) != NUM_JOINTS
            or not all(isinstance(f, (bool, int)) for f in flags)
        ):
            raise DatasetError(f"{where}: visible must be a list of {NUM_JOINTS} booleans, got {str(flags)[:80]}")
        visible = np.asarray(flags, dtype=bool) & (visible if visible is not None else True)
    if joints2d is not None and visible is None:
        visible = np.ones(NUM_JOINTS, dtype=bool)

    K = _array(record, "K", (3, 3), where)
    joints3d = _array(record, "joints3d", (NUM_JOINTS, 3), where)
    vertices = _array(record, "vertices", (None, 3), where)
    if vertices is not None and len(vertices) == 0:
        raise DatasetError(f"{where}: vertices must not be empty")
    if (joints3d is not None or vertices is not None) and K is None:
        raise DatasetError(
            f"{where}: joints3d / vertices need K: without the real intrinsics "
            "their frame relative to the image is unknown"
        )

    mano_pose = mano_betas = None
    if record.get("mano") is not None:
        mano = record["mano"]
        if not isinstance(mano, dict) or set(mano) != set(_MANO_KEYS):
            raise DatasetError(
                f"{where}: mano must be an object with exactly the keys {list(_MANO_KEYS)}, got {str(mano)[:80]}"
            )
        mano_pose = _array(mano, "pose", (MANO_POSE_DIM,), where + " mano")
        mano_betas = _array(mano, "betas", (MANO_BETAS_DIM,), where + " mano")

    side = record.get("side", "right")
    try:
        side_to_flag(side)
    except ValueError:
        raise DatasetError(f"{where}: side must be 'right' or 'left', got {side!r}") from None

    box = _array(record, "box", (4,), where)
    if box is not None:
        try:
            check_box(torch.from_numpy(box))
        except MeshrecError as error:
            raise DatasetError(f"{where}: {error}") from None

    found = label_problems(
        K=K[None] if K is not None else None,
        joints3d=joints3d[None] if joints3d is not None else None,
    )
    if found:
        raise DatasetError(f"{where}: {found[0]}")
    return KeypointRecord(
        image, joints2d, visible, K, joints3d, mano_pose, mano_betas, vertices, str(side).lower(), box, where
    )


def read_keypoint_records(path: str | Path) -> list[tuple[str, object]]:
    """Raw records of a ``.json`` (list) or ``.jsonl`` file as ``(where, record)`` pairs.

    ``where`` names the file and the record (and the line, for JSON Lines). An unparsable
    JSON Lines line becomes a ``(where, DatasetError)`` pair, so one bad line can be skipped.

    Raises:
        DatasetError: the file is missing, not JSON, or (``.json``) not a list.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise DatasetError(f"{path}: cannot read the label file ({type(error).__name__}: {error})", path=path) from None
    records: list[tuple[str, object]] = []
    if path.suffix.lower() == ".jsonl":
        for line_number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{path} record {len(records)} (line {line_number})"
            try:
                records.append((where, json.loads(line)))
            except json.JSONDecodeError as error:
                records.append(
                    (where, DatasetError(f"{where}: not valid JSON ({error})", path=path, index=len(records)))
                )
        return records
    try:
        data = json.loads(text)
    except json.JSONDecodeError as error:
        raise DatasetError(f"{path}: not valid JSON ({error})", path=path) from None
    if not isinstance(data, list):
        raise DatasetError(
            f"{path}: expected a JSON list of records (or use .jsonl), got {type(data).__name__}", path=path
        )
    return [(f"{path} record {index}", record) for index, record in enumerate(data)]


class KeypointsJsonDataset(HandDataset):
    """Dataset of :class:`HandSample` from a generic keypoint file (see the module docstring).

    Args:
        path: the ``.json`` or ``.jsonl`` label file.
        crop_size: side of the square output crops; None keeps the whole image (then the
            images must share one size to be batched).
        box_padding: crop box side / box or keypoint extent.
        on_error: ``'raise'`` or ``'skip'`` (see :mod:`meshrec.data.base`).
        max_outside: visible keypoints may lie this fraction of the image size outside it.
        exif_transpose: apply EXIF orientation when reading images (phone photos labelled
            as displayed).
        default_fov_deg: field of view assumed when a record has no K.

    Sample ids (``HandSample.index``, ``skipped``) are record numbers (0-based). Records are
    parsed and checked (image headers read, no pixels decoded) when the dataset is built.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        crop_size: int | None = DEFAULT_CROP_SIZE,
        box_padding: float = DEFAULT_BOX_PADDING,
        on_error: str = "raise",
        max_outside: float = DEFAULT_MAX_OUTSIDE,
        exif_transpose: bool = False,
        default_fov_deg: float = DEFAULT_FOV_DEG,
    ) -> None:
        super().__init__(on_error)
        if crop_size is not None and (isinstance(crop_size, bool) or not isinstance(crop_size, int) or crop_size <= 0):
            raise ValueError(f"crop_size must be a positive int or None, got {crop_size!r}")
        self.path = Path(path)
        self.crop_size = crop_size
        self.box_padding = check_box_padding(box_padding)
        self.max_outside = max_outside
        self.exif_transpose = exif_transpose
        self.default_fov_deg = default_fov_deg
        self.records: dict[int, KeypointRecord] = {}
        items = []
        for index, (where, raw) in enumerate(read_keypoint_records(self.path)):
            try:
                if isinstance(raw, DatasetError):
                    raise raw
                record = parse_keypoint_record(raw, self.path.parent, where)
                self._check_against_image(record)
            except DatasetError as error:
                if self.on_error == "raise":
                    raise DatasetError(str(error), path=self.path, index=index) from None
                self._record_skip(index, str(error))
                continue
            self.records[index] = record
            items.append(index)
        self._item_ids = np.asarray(items, dtype=np.int64)

    def _prepare(self) -> None:
        pass  # everything is parsed in __init__: label files of this kind are small

    def _check_against_image(self, record: KeypointRecord) -> None:
        """Checks that need the image size (header only) or several labels together."""
        try:
            height, width = image_size_of(record.image, exif_transpose=self.exif_transpose)
        except DatasetError as error:
            raise DatasetError(f"{record.where}: {error}") from None
        if record.joints2d is not None:
            reason = check_keypoints_in_image(
                torch.from_numpy(record.joints2d), torch.from_numpy(record.visible), (height, width), self.max_outside
            )
            if reason is not None:
                raise DatasetError(f"{record.where}: {reason}")
            if record.joints3d is not None and record.K is not None and record.visible.any():
                projected = project_points(torch.from_numpy(record.joints3d)[None], torch.from_numpy(record.K)[None])[0]
                errors = (projected - torch.from_numpy(record.joints2d)).norm(dim=-1)[torch.from_numpy(record.visible)]
                tolerance = max(_REPROJECTION_TOLERANCE_PX, _REPROJECTION_TOLERANCE_FRACTION * max(height, width))
                median = float(errors.median())
                if median > tolerance:
                    raise DatasetError(
                        f"{record.where}: joints3d projected with K miss joints2d by {median:.1f} px (median, "
                        f"tolerance {tolerance:.1f} px): are joints3d in metres in this image's camera frame, "
                        "and K in pixels of this image?"
                    )

    def image_of(self, position: int) -> Path:
        """The image of the sample at ``position`` (absolute path)."""
        return self.records[int(self._item_ids[position])].image

    def _load(self, position: int) -> HandSample:
        index = int(self._item_ids[position])
        record = self.records[index]
        image = load_image(record.image, index, exif_transpose=self.exif_transpose)
        height, width = image.shape[-2:]
        box = None
        if self.crop_size is not None:
            box = hand_crop_box(
                (height, width),
                box=record.box,
                joints2d=record.joints2d,
                visible=record.visible,
                padding=self.box_padding,
            )
        if record.K is not None:
            K = torch.from_numpy(record.K)
        elif box is not None:
            # The default describes the crop; in full-image pixels, so that the crop below
            # turns it back into default_intrinsics(crop_size).
            K = image_intrinsics_for_crop(box, self.crop_size, self.default_fov_deg)
        else:
            K = default_intrinsics((height, width), self.default_fov_deg)
        sample = make_hand_sample(
            image,
            K,
            joints2d=record.joints2d,
            joints2d_visible=record.visible,
            joints3d=record.joints3d,
            vertices=record.vertices,
            mano_pose=record.mano_pose,
            mano_betas=record.mano_betas,
            side=record.side,
            index=index,
            source=str(record.image),
        )
        if self.crop_size is None:
            return sample
        return crop_sample(sample, self.crop_size, box=box, padding=1.0)


def split_by_image(dataset: KeypointsJsonDataset, fraction: float, seed: int = 0) -> tuple[list[int], list[int]]:
    """Positions of ``dataset`` for training and for a held-out split of about ``fraction`` of its images.

    An image goes to the held-out split by a hash of ``seed`` and its path relative to the label
    file's folder, so every hand of one photo lands on the same side, the split does not depend
    on record order, and records added to the file later keep the earlier images where they were.

    Raises:
        MeshrecError: ``fraction`` not in [0, 1), or no image left on one side (with the counts).
    """
    if not 0.0 <= fraction < 1.0:
        raise MeshrecError(f"the held-out fraction must be in [0, 1), got {fraction}")
    train, held_out = [], []
    for position in range(len(dataset)):
        image = dataset.image_of(position)
        try:
            name = image.relative_to(dataset.path.parent.resolve()).as_posix()
        except ValueError:
            name = image.as_posix()
        digest = hashlib.sha256(f"{seed}:{name}".encode()).digest()
        (held_out if int.from_bytes(digest[:8], "big") / 2**64 < fraction else train).append(position)
    if fraction > 0 and (not train or not held_out):
        raise MeshrecError(
            f"{dataset.path}: holding out {fraction:.0%} of the images leaves {len(train)} training and "
            f"{len(held_out)} held-out samples; label more images, change data.val_fraction, or give data.val_root"
        )
    return train, held_out
