"""Datasets and loaders of a training run, built from :class:`~meshrec.training.config.DataConfig`.

Sample order is a function of ``(seed, epoch)`` only (:class:`ResumableSampler`), so a run
resumed from a checkpoint sees the same batches as one that never stopped.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from meshrec.data.freihand import FreiHandDataset
from meshrec.data.keypoints_json import KeypointsJsonDataset
from meshrec.data.mixed import MixedDataset
from meshrec.data.sample import collate_hand_samples
from meshrec.data.supervision import WithLabels
from meshrec.training.config import TrainConfig

# validation of on-the-fly synthetic data draws from another seed than training
VALIDATION_SEED_OFFSET = 1_000_003


class ResumableSampler(Sampler[int]):
    """Sample order that depends only on ``(seed, epoch)``, and can start part-way through an epoch.

    ``shuffle``: a permutation per epoch; otherwise ``0 .. length-1`` (for datasets that plan
    their own order, like :class:`MixedDataset`). Lightning calls :meth:`set_epoch` before every
    epoch; :meth:`skip_next` makes the next pass start after the samples a resumed run already
    trained on, so an interrupted run continues with exactly the batches it would have seen.
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True) -> None:
        self.length, self.seed, self.shuffle = length, seed, shuffle
        self.epoch = 0
        self._start = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def skip_next(self, samples: int) -> None:
        self._start = samples

    def __len__(self) -> int:
        # the full epoch: Lightning counts a resumed epoch's batches from where it stopped
        return self.length

    def __iter__(self):
        start, self._start = self._start, 0
        if not self.shuffle:
            return iter(range(start, self.length))
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.length, generator=generator)[start:].tolist())


def build_datasets(config: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """The training dataset (with the configured supervision) and the validation dataset."""
    data, size = config.data, config.model.image_size
    if data.kind == "synthetic" and data.root is None:
        from meshrec.data.synthetic import SyntheticHandDataset

        hand = config.model.hand_model
        train = SyntheticHandDataset(data.train_samples, size=size, seed=data.seed, model=hand)
        val = SyntheticHandDataset(data.val_samples, size=size, seed=data.seed + VALIDATION_SEED_OFFSET, model=hand)
    elif data.kind in ("synthetic", "freihand"):
        train = FreiHandDataset(data.root, "training", crop_size=size)
        val = FreiHandDataset(data.val_root or data.root, "evaluation", crop_size=size)
    else:
        train = KeypointsJsonDataset(data.root, crop_size=size)
        val = KeypointsJsonDataset(data.val_root, crop_size=size) if data.val_root else None
    return with_supervision(train, config), val


def with_supervision(dataset: Dataset, config: TrainConfig) -> Dataset:
    """Hide the labels the configured supervision does not allow (see :mod:`meshrec.data.supervision`).

    ``'mixed'``: the first ``mesh_fraction`` of the samples keep every label, the others only
    2D keypoints, and every batch holds both in that ratio (:class:`MixedDataset`).
    """
    data = config.data
    if data.supervision != "mixed":
        return WithLabels(dataset, data.supervision)
    split = max(1, min(len(dataset) - 1, round(data.mesh_fraction * len(dataset))))
    full = WithLabels(Subset(dataset, range(split)), "full")
    weak = WithLabels(Subset(dataset, range(split, len(dataset))), "joints2d")
    return MixedDataset([full, weak], [data.mesh_fraction, 1.0 - data.mesh_fraction], num_samples=len(dataset), seed=data.seed)


def build_loaders(config: TrainConfig, train: Dataset, val: Dataset | None) -> tuple[DataLoader, DataLoader | None]:
    data = config.data
    # MixedDataset keeps its own per-epoch plan (ratios per batch): read it in order.
    sampler = ResumableSampler(len(train), data.seed, shuffle=not isinstance(train, MixedDataset))
    common = dict(collate_fn=collate_hand_samples, num_workers=data.num_workers, persistent_workers=data.num_workers > 0)
    train_loader = DataLoader(train, batch_size=data.batch_size, sampler=sampler, shuffle=False, drop_last=len(train) > data.batch_size, **common)
    val_loader = DataLoader(val, batch_size=data.batch_size, shuffle=False, **common) if val is not None else None
    return train_loader, val_loader
