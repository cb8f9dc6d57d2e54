"""What every meshrec hand dataset shares: bad-sample policy, skip bookkeeping, checks.

Bad-input policy (``on_error``):

- ``'raise'`` (default): a bad sample raises :class:`~meshrec.errors.DatasetError` naming
  the file and the index.
- ``'skip'``: the bad sample is recorded in ``dataset.skipped`` as ``(index, reason)`` and
  left out. Faults visible without reading images (label NaNs, missing image files,
  implausible labels) are found when the labels load, and those samples are never in the
  dataset (``len`` excludes them). Faults found only when an image is decoded (corrupt file,
  keypoints far outside the image) make ``__getitem__`` return the *next* good sample
  instead; :meth:`HandDataset.validate` decodes everything once up front and drops them
  for good. With ``DataLoader(num_workers > 0)`` skips found inside workers are recorded
  in the workers' copies only: call ``validate()`` first for a complete summary.

Faults of a whole file (unreadable JSON, label files whose lengths disagree) always raise.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

from meshrec.data.sample import HandSample
from meshrec.errors import DatasetError

__all__ = ["HandDataset", "ON_ERROR_CHOICES", "check_on_error", "check_keypoints_in_image", "label_problems"]

ON_ERROR_CHOICES = ("raise", "skip")

# A labelled keypoint may lie outside the image (a finger leaving the frame), but not by
# more than this fraction of the image size: further out means wrong labels or wrong K.
DEFAULT_MAX_OUTSIDE = 0.5
# 3D joints closer than this (metres) to the camera plane cannot be in a hand photo.
MIN_JOINT_DEPTH = 0.01
# Extent (metres, longest side of the joints' bounding box) a real hand's 21 joints span:
# outside it the labels are most likely in other units (millimetres) or not a hand.
HAND_EXTENT_RANGE = (0.02, 0.5)


def check_on_error(on_error: str) -> str:
    if on_error not in ON_ERROR_CHOICES:
        raise ValueError(f"on_error must be one of {ON_ERROR_CHOICES}, got {on_error!r}")
    return on_error


def label_problems(
    K: np.ndarray | None = None,
    joints3d: np.ndarray | None = None,
    vertices: np.ndarray | None = None,
    mano: np.ndarray | None = None,
) -> dict[int, str]:
    """Samples whose labels cannot be right, as ``{sample: reason}`` (empty if none).

    Vectorised over N samples (the real FreiHAND has 32k).

    Args: K ``(N, 3, 3)``; joints3d ``(N, 21, 3)`` metres; vertices ``(N, V, 3)``;
    mano ``(N, M)``. Each may be None.
    """
    problems: dict[int, list[str]] = {}

    def flag(mask: np.ndarray, describe) -> None:
        for i in np.flatnonzero(mask):
            problems.setdefault(int(i), []).append(describe(int(i)))

    finite = {}
    for name, value in (("K", K), ("joints3d", joints3d), ("vertices", vertices), ("mano", mano)):
        if value is None:
            continue
        value = np.asarray(value)
        finite[name] = np.isfinite(value.reshape(len(value), -1)).all(1)

        def non_finite(i: int, name=name, value=value) -> str:
            position = np.argwhere(~np.isfinite(np.asarray(value[i])))[0].tolist()
            return f"{name} has a non-finite value (NaN or inf) at {position}"

        flag(~finite[name], non_finite)
    if K is not None:
        K = np.asarray(K)
        ok = finite["K"]
        last_row = np.abs(K[:, 2] - np.array([0.0, 0.0, 1.0])).max(1) < 1e-6
        flag(ok & ~last_row, lambda i: f"K's last row must be [0, 0, 1], got {K[i, 2].tolist()}")
        positive = (K[:, 0, 0] > 0) & (K[:, 1, 1] > 0)
        flag(ok & ~positive, lambda i: f"K's focal lengths must be > 0, got fx={K[i, 0, 0]}, fy={K[i, 1, 1]}")
    if joints3d is not None:
        joints3d = np.asarray(joints3d)
        ok = finite["joints3d"]
        safe = np.where(ok[:, None, None], joints3d, 1.0)
        min_depth = safe[:, :, 2].min(1)
        flag(
            ok & (min_depth < MIN_JOINT_DEPTH),
            lambda i: (
                f"joints3d must lie in front of the camera (z >= {MIN_JOINT_DEPTH} m), got min z = {min_depth[i]:.4g} m"
            ),
        )
        extent = (safe.max(1) - safe.min(1)).max(1)
        low, high = HAND_EXTENT_RANGE
        flag(
            ok & ((extent < low) | (extent > high)),
            lambda i: (
                f"joints3d span {extent[i]:.4g} m, a hand spans {low}-{high} m: are they in metres, camera frame?"
            ),
        )
    return {i: "; ".join(reasons) for i, reasons in sorted(problems.items())}


def check_keypoints_in_image(
    joints2d: torch.Tensor, visible: torch.Tensor, image_size: tuple[int, int], max_outside: float = DEFAULT_MAX_OUTSIDE
) -> str | None:
    """A reason if a visible keypoint lies more than ``max_outside`` x image size outside the image.

    Args: joints2d ``(21, 2)`` pixels; visible ``(21,)`` bool; image_size ``(H, W)``.
    """
    height, width = image_size
    u, v = joints2d[:, 0], joints2d[:, 1]
    outside = ((u < -max_outside * width) | (u > (1 + max_outside) * width) | (v < -max_outside * height)
               | (v > (1 + max_outside) * height)) & visible.bool()  # fmt: skip
    if not bool(outside.any()):
        return None
    joint = int(outside.nonzero()[0])
    return (
        f"keypoint {joint} at ({float(u[joint]):.1f}, {float(v[joint]):.1f}) px lies far outside the "
        f"{width}x{height} image (more than {max_outside:g} x its size): wrong labels or wrong K?"
    )


class HandDataset(torch.utils.data.Dataset):
    """Base of the hand datasets: items are positions ``0 .. len-1`` mapped to sample ids.

    Subclasses set ``self._item_ids`` (one sample id per position, what errors and
    ``skipped`` name) and implement ``_load(position) -> HandSample`` which raises
    :class:`DatasetError` for a bad sample.
    """

    def __init__(self, on_error: str = "raise") -> None:
        self.on_error = check_on_error(on_error)
        self._skipped: list[tuple[int, str]] = []
        self._failed_positions: set[int] = set()

    # Subclasses: make sure labels are loaded and self._item_ids is set.
    def _prepare(self) -> None:
        raise NotImplementedError

    def _load(self, position: int) -> HandSample:
        raise NotImplementedError

    def _items(self) -> Sequence[int]:
        self._prepare()
        return self._item_ids

    def __len__(self) -> int:
        return len(self._items())

    def _record_skip(self, sample_id: int, reason: str) -> None:
        self._skipped.append((int(sample_id), reason))

    @property
    def skipped(self) -> list[tuple[int, str]]:
        """``(sample id, reason)`` of every sample skipped so far (labels are loaded first)."""
        self._prepare()
        return self._skipped

    def __getitem__(self, position: int) -> HandSample:
        items = self._items()
        count = len(items)
        if not -count <= position < count:
            raise IndexError(f"index {position} out of range for a dataset of {count} samples")
        position %= count
        if self.on_error == "raise":
            return self._load(position)
        for step in range(count):
            candidate = (position + step) % count
            if candidate in self._failed_positions:
                continue
            try:
                return self._load(candidate)
            except DatasetError as error:
                self._failed_positions.add(candidate)
                self._record_skip(items[candidate], str(error))
        raise DatasetError(f"every sample of this dataset is bad ({len(self.skipped)} skipped): {self.skip_summary()}")

    def validate(self) -> list[tuple[int, str]]:
        """Load every sample once (images decoded). With ``on_error='raise'`` the first bad
        one raises; with ``'skip'`` bad ones are recorded and removed from the dataset.
        Returns ``self.skipped``."""
        items = self._items()
        bad = set()
        for position in range(len(items)):
            if position in self._failed_positions:
                bad.add(position)
                continue
            try:
                self._load(position)
            except DatasetError as error:
                if self.on_error == "raise":
                    raise
                bad.add(position)
                self._record_skip(items[position], str(error))
        if bad:
            self._item_ids = np.asarray([item for p, item in enumerate(items) if p not in bad], dtype=np.int64)
            self._failed_positions = set()
        return self.skipped

    def skip_summary(self) -> str:
        """One line per skipped sample (``index: reason``), or ``'no samples skipped'``."""
        if not self.skipped:
            return "no samples skipped"
        lines = [f"{len(self.skipped)} samples skipped:"] + [f"  {index}: {reason}" for index, reason in self.skipped]
        return "\n".join(lines)
