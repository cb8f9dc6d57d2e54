"""Mixing datasets with chosen ratios (e.g. 30 % fully labelled, 70 % 2D keypoints only).

:class:`MixedDataset` is a map-style dataset whose item ``k`` comes from one of its
datasets by a plan fixed per epoch:

- quotas: ``num_samples`` split by the ratios (largest remainder, so they sum exactly);
- order of sources: each source's items are spread evenly over the epoch (source d's
  m-th item sits at "time" ``(m + 0.5) / quota_d``; all items sorted by time), so every
  run of B consecutive items, hence every batch of a ``DataLoader(shuffle=False)``, holds
  each source's share to within one sample;
- which sample of a source: a random permutation of it per epoch (seeded by ``seed`` and
  the epoch), repeated if its quota exceeds its length.

Call :meth:`MixedDataset.set_epoch` before each epoch for fresh sample choices.
Use ``shuffle=False`` in the DataLoader: the plan is already random within each source;
shuffling keeps the overall ratios but loses the per-batch ones.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch

__all__ = ["MixedDataset", "split_quotas"]


def split_quotas(total: int, ratios: Sequence[float]) -> np.ndarray:
    """Split ``total`` into integer quotas proportional to ``ratios`` (largest remainder).

    >>> split_quotas(10, [0.3, 0.7]).tolist()
    [3, 7]
    """
    weights = np.asarray(ratios, dtype=np.float64)
    ideal = total * weights / weights.sum()
    quotas = np.floor(ideal).astype(np.int64)
    remainder_order = np.argsort(-(ideal - quotas), kind="stable")
    quotas[remainder_order[: total - int(quotas.sum())]] += 1
    return quotas


class MixedDataset(torch.utils.data.Dataset):
    """Samples drawn from ``datasets`` in proportion to ``ratios``.

    Args:
        datasets: map-style datasets (e.g. :class:`~meshrec.data.freihand.FreiHandDataset`,
            :class:`~meshrec.data.keypoints_json.KeypointsJsonDataset`); all must be non-empty.
        ratios: one positive weight per dataset (normalised to sum to 1).
        num_samples: items per epoch (default: the datasets' total length).
        seed: seeds the per-epoch choice of samples.

    ``source_of(k)`` tells which dataset item ``k`` comes from.
    """

    def __init__(
        self,
        datasets: Sequence[torch.utils.data.Dataset],
        ratios: Sequence[float],
        num_samples: int | None = None,
        seed: int = 0,
    ) -> None:
        self.datasets = list(datasets)
        if not self.datasets:
            raise ValueError("MixedDataset needs at least one dataset")
        if len(ratios) != len(self.datasets):
            raise ValueError(f"got {len(self.datasets)} datasets but {len(ratios)} ratios")
        if not all(np.isfinite(r) and r > 0 for r in ratios):
            raise ValueError(f"ratios must be positive numbers, got {list(ratios)}")
        self.lengths = [len(d) for d in self.datasets]
        empty = [i for i, n in enumerate(self.lengths) if n == 0]
        if empty:
            raise ValueError(f"datasets {empty} are empty")
        self.ratios = np.asarray(ratios, dtype=np.float64) / float(np.sum(ratios))
        self.num_samples = sum(self.lengths) if num_samples is None else int(num_samples)
        if self.num_samples <= 0:
            raise ValueError(f"num_samples must be positive, got {num_samples}")
        self.seed = int(seed)
        self.epoch = 0
        self.quotas = split_quotas(self.num_samples, self.ratios)
        self._source_order = self._interleave(self.quotas)
        self._build_plan()

    @staticmethod
    def _interleave(quotas: np.ndarray) -> np.ndarray:
        times = np.concatenate([(np.arange(q) + 0.5) / q for q in quotas if q > 0])
        sources = np.concatenate([np.full(q, d) for d, q in enumerate(quotas) if q > 0])
        return sources[np.lexsort((sources, times))]

    def _build_plan(self) -> None:
        sample_index = np.empty(self.num_samples, dtype=np.int64)
        for d, (quota, length) in enumerate(zip(self.quotas, self.lengths, strict=True)):
            if quota == 0:
                continue
            rng = np.random.default_rng([self.seed, self.epoch, d])
            repeats = -(-int(quota) // length)
            choices = np.concatenate([rng.permutation(length) for _ in range(repeats)])[:quota]
            sample_index[self._source_order == d] = choices
        self._sample_index = sample_index

    def set_epoch(self, epoch: int) -> None:
        """Draw the samples of ``epoch`` (source order and ratios stay the same), in the datasets
        that draw per epoch too (a :class:`MixedDataset` inside another)."""
        self.epoch = int(epoch)
        self._build_plan()
        for dataset in self.datasets:
            if hasattr(dataset, "set_epoch"):
                dataset.set_epoch(epoch)

    def __len__(self) -> int:
        return self.num_samples

    def source_of(self, position: int) -> int:
        """Which dataset item ``position`` comes from."""
        return int(self._source_order[position])

    def __getitem__(self, position: int):
        if not -self.num_samples <= position < self.num_samples:
            raise IndexError(f"index {position} out of range for a dataset of {self.num_samples} samples")
        position %= self.num_samples
        return self.datasets[self._source_order[position]][int(self._sample_index[position])]

    @property
    def skipped(self) -> list[tuple[int, int, str]]:
        """``(dataset number, sample id, reason)`` for every sample its datasets skipped."""
        return [
            (d, index, reason) for d, ds in enumerate(self.datasets) for index, reason in getattr(ds, "skipped", [])
        ]
