"""Hide labels a dataset has, to train as if only sparse labels existed.

Weak supervision is studied on fully labelled data by pretending labels are missing:
``WithLabels(dataset, "joints2d")`` keeps only the 2D keypoints, ``"joints3d"`` keeps 3D (and
2D) keypoints, ``"full"`` keeps everything; ``MixedDataset`` combines such views
(e.g. 30 % full, 70 % 2D only). Hidden labels are zeroed and their ``has_*`` flags cleared,
exactly as if the dataset never had them, so no loss can read them by mistake.
"""

from __future__ import annotations

import dataclasses

import torch

from meshrec.errors import MeshrecError

# what each supervision level keeps
SUPERVISION_LABELS: dict[str, frozenset[str]] = {
    "full": frozenset({"mesh", "mano", "joints3d", "joints2d", "mask"}),
    "joints3d": frozenset({"joints3d", "joints2d"}),
    "joints2d": frozenset({"joints2d"}),
}


def hide_labels(sample, keep: frozenset[str]):
    """A copy of a :class:`~meshrec.data.sample.HandSample` without the labels not in ``keep``."""
    changes = {}
    if "mesh" not in keep and sample.has_mesh:
        changes.update(vertices=sample.vertices[:0], has_mesh=False)
    if "mano" not in keep and sample.has_mano:
        changes.update(mano_pose=torch.zeros_like(sample.mano_pose), mano_betas=torch.zeros_like(sample.mano_betas), has_mano=False)
    if "joints3d" not in keep and sample.has_joints3d:
        changes.update(joints3d=torch.zeros_like(sample.joints3d), has_joints3d=False)
    if "joints2d" not in keep and sample.has_joints2d:
        changes.update(
            joints2d=torch.zeros_like(sample.joints2d),
            joints2d_visible=torch.zeros_like(sample.joints2d_visible),
            has_joints2d=False,
        )
    if "mask" not in keep and sample.has_mask:
        changes.update(mask=torch.zeros_like(sample.mask), has_mask=False)
    return dataclasses.replace(sample, **changes) if changes else sample


class WithLabels(torch.utils.data.Dataset):
    """A view of ``dataset`` that keeps only the labels of one supervision level.

    Args:
        dataset: a map-style dataset of :class:`~meshrec.data.sample.HandSample`.
        supervision: ``'full'``, ``'joints3d'`` or ``'joints2d'`` (see :data:`SUPERVISION_LABELS`).
    """

    def __init__(self, dataset: torch.utils.data.Dataset, supervision: str) -> None:
        if supervision not in SUPERVISION_LABELS:
            raise MeshrecError(f"supervision must be one of {sorted(SUPERVISION_LABELS)}, got {supervision!r}")
        self.dataset = dataset
        self.supervision = supervision
        self.keep = SUPERVISION_LABELS[supervision]

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int):
        return hide_labels(self.dataset[index], self.keep)

    def __getitems__(self, indices):
        getitems = getattr(self.dataset, "__getitems__", None)
        samples = getitems(indices) if getitems is not None else [self.dataset[i] for i in indices]
        return [hide_labels(sample, self.keep) for sample in samples]
