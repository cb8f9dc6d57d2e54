"""Datasets and loaders of a training run, built from :class:`~meshrec.training.config.DataConfig`.

Sample order is a function of ``(seed, epoch)`` only (:class:`ResumableSampler`), so a run
resumed from a checkpoint sees the same batches as one that never stopped.

Augmentation runs in the loader (:class:`AugmentingCollate`): batched, inside the DataLoader's
worker processes when ``data.num_workers > 0``, so the training process only runs the model (in
the training step it took ~109 ms per batch of 32 on the 2-core reference machine, more than half
of a refinement-off step). Each sample's parameters are drawn from ``(seed, epoch, index)``
alone, so they do not depend on batch composition, worker count or where a run resumed.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from meshrec.cache import cache_root
from meshrec.data.augment import AugmentParams, AugmentSettings, augment_batch, sample_augment_params
from meshrec.data.freihand import FreiHandDataset
from meshrec.data.keypoints_json import KeypointsJsonDataset, split_by_image
from meshrec.data.mixed import MixedDataset
from meshrec.data.sample import collate_hand_samples
from meshrec.data.supervision import WithLabels
from meshrec.training.config import TrainConfig

# validation of on-the-fly synthetic data draws from another seed than training
VALIDATION_SEED_OFFSET = 1_000_003


# a ResumableSampler with epoch_keys yields epoch * EPOCH_KEY_STRIDE + index
EPOCH_KEY_STRIDE = 1 << 40


class ResumableSampler(Sampler[int]):
    """Sample order that depends only on ``(seed, epoch)``, and can start part-way through an epoch.

    ``shuffle``: a permutation per epoch; otherwise ``0 .. length-1`` (for datasets that plan
    their own order, like :class:`MixedDataset`). Lightning calls :meth:`set_epoch` before every
    epoch; :meth:`skip_next` makes the next pass start after the samples a resumed run already
    trained on, so an interrupted run continues with exactly the batches it would have seen.
    ``epoch_keys``: yield ``epoch * EPOCH_KEY_STRIDE + index`` for an :class:`EpochKeyed` dataset
    (worker processes never see :meth:`set_epoch`; the key carries the epoch to them).
    """

    def __init__(self, length: int, seed: int, shuffle: bool = True, epoch_keys: bool = False) -> None:
        self.length, self.seed, self.shuffle, self.epoch_keys = length, seed, shuffle, epoch_keys
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
            order = list(range(start, self.length))
        else:
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
            order = torch.randperm(self.length, generator=generator)[start:].tolist()
        offset = self.epoch * EPOCH_KEY_STRIDE if self.epoch_keys else 0
        return iter([offset + index for index in order])


class EpochKeyed(Dataset):
    """``dataset[key]`` for keys ``epoch * EPOCH_KEY_STRIDE + index`` -> ``(epoch, index, sample)``.

    Calls the wrapped dataset's ``set_epoch`` (e.g. :class:`MixedDataset`'s per-epoch plan) in
    whatever process reads it, so worker processes follow the epoch too.
    """

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset
        self._epoch = None

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: int):
        epoch, index = divmod(int(key), EPOCH_KEY_STRIDE)
        if epoch != self._epoch and hasattr(self.dataset, "set_epoch"):
            self.dataset.set_epoch(epoch)
        self._epoch = epoch
        return epoch, index, self.dataset[index]


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A generator seed for one sample of one epoch. Mixed with an odd multiplier because torch's
    CPU generator keeps only a seed's low 32 bits: ``epoch * 2**40 + index`` would ignore the epoch."""
    return ((seed * 1_000_003 + epoch) * 2_654_435_761 + index) % (1 << 63)


def _stack_params(params: list[AugmentParams]) -> AugmentParams:
    return AugmentParams(**{name: torch.cat([getattr(p, name) for p in params]) for name in AugmentParams.__dataclass_fields__})


class AugmentingCollate:
    """Collate ``(epoch, index, sample)`` items into a :class:`HandBatch` and augment it.

    Sample ``index`` of ``epoch`` always gets the same parameters: drawn from a generator
    seeded with ``(seed, epoch, index)``. ``settings`` None: collate only.
    """

    def __init__(self, settings: AugmentSettings | None, seed: int) -> None:
        self.settings, self.seed = settings, seed

    def __call__(self, items):
        batch = collate_hand_samples([sample for _, _, sample in items])
        if self.settings is None:
            return batch
        size = tuple(batch.image.shape[-2:])
        params = []
        for epoch, index, _ in items:
            generator = torch.Generator().manual_seed(sample_seed(self.seed, epoch, index))
            params.append(sample_augment_params(1, size, self.settings, generator))
        return augment_batch(batch, _stack_params(params))


def build_datasets(config: TrainConfig) -> tuple[Dataset, Dataset | None]:
    """The training dataset (with the configured supervision) and the validation dataset."""
    data, size = config.data, config.model.image_size
    if data.kind == "synthetic" and data.root is None:
        from meshrec.data.synthetic import SyntheticHandDataset

        hand = config.model.hand_model
        train = SyntheticHandDataset(data.train_samples, size=size, seed=data.seed, model=hand)
        val = SyntheticHandDataset(data.val_samples, size=size, seed=data.seed + VALIDATION_SEED_OFFSET, model=hand)
    elif data.kind in ("synthetic", "freihand"):
        # parsed label files are cached (.npy, memory-mapped): a 100,000-hand set's 4.7 GB of
        # vertex JSON takes minutes to parse, its cache under a second to open
        cache = cache_root() / "labels"
        train = FreiHandDataset(data.root, "training", crop_size=size, cache_dir=cache)
        val = FreiHandDataset(data.val_root or data.root, "evaluation", crop_size=size, cache_dir=cache)
    elif data.val_root:
        train, val = KeypointsJsonDataset(data.root, crop_size=size), KeypointsJsonDataset(data.val_root, crop_size=size)
    elif data.val_fraction > 0:
        labels = KeypointsJsonDataset(data.root, crop_size=size)
        train_positions, val_positions = split_by_image(labels, data.val_fraction, data.seed)
        train, val = Subset(labels, train_positions), Subset(labels, val_positions)
    else:
        train, val = KeypointsJsonDataset(data.root, crop_size=size), None
    train = with_supervision(train, config)
    if data.mix_labels:
        mixed_in = WithLabels(KeypointsJsonDataset(data.mix_labels, crop_size=size), data.mix_supervision)
        train = MixedDataset([train, mixed_in], [1.0 - data.mix_fraction, data.mix_fraction], num_samples=len(train), seed=data.seed)
    return train, val


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
    sampler = ResumableSampler(len(train), data.seed, shuffle=not isinstance(train, MixedDataset), epoch_keys=True)
    common = dict(num_workers=data.num_workers, persistent_workers=data.num_workers > 0)
    collate = AugmentingCollate(data.augmentation if data.augment else None, data.seed)
    train_loader = DataLoader(
        EpochKeyed(train), batch_size=data.batch_size, sampler=sampler, shuffle=False,
        drop_last=len(train) > data.batch_size, collate_fn=collate, **common,
    )
    val_loader = DataLoader(val, batch_size=data.batch_size, shuffle=False, collate_fn=collate_hand_samples, **common) if val is not None else None
    return train_loader, val_loader
