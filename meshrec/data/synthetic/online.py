"""The on-the-fly data set: synthetic samples rendered when a ``DataLoader`` asks for them."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch

from meshrec.data.synthetic.scene import HandSynthesizer
from meshrec.errors import MeshrecError


class SyntheticHandDataset(torch.utils.data.Dataset):
    """``num_samples`` synthetic :class:`~meshrec.data.sample.HandSample` rendered when asked.

    Sample ``i`` is the same every time (its randomness comes from ``(seed, i)``). Works in a
    ``DataLoader`` with workers (each worker opens its own GL context); ``__getitems__``
    renders a whole batch in one call, which ``DataLoader`` uses when it is defined.

    Args:
        num_samples: length of the data set.
        size: image side, pixels.
        seed: seed of the data set.
        model, backgrounds, style: as for :class:`HandSynthesizer` (``'flat'`` or ``'photo'``; the
            photo style's random JPEG quality is the writer's, not applied here).
    """

    def __init__(
        self,
        num_samples: int,
        size: int = 128,
        seed: int = 0,
        *,
        model=None,
        backgrounds: str | os.PathLike | None = None,
        style: str = "flat",
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise MeshrecError(f"num_samples must be a positive int, got {num_samples!r}")
        self.num_samples = num_samples
        self.synthesizer = HandSynthesizer(size=size, seed=seed, model=model, backgrounds=backgrounds, style=style)

    def __len__(self) -> int:
        return self.num_samples

    def __getitem__(self, index: int):
        return self.__getitems__([index])[0]

    def __getitems__(self, indices: Sequence[int]) -> list:
        from meshrec.data.sample import MANO_POSE_DIM, make_hand_sample
        from meshrec.geometry.camera import project_points

        indices = [int(i) for i in indices]
        for index in indices:
            if not 0 <= index < self.num_samples:
                raise IndexError(f"index {index} out of range for {self.num_samples} samples")
        batch = self.synthesizer.render("online", indices)
        K = torch.from_numpy(batch.K)
        joints3d = torch.from_numpy(batch.joints)
        joints2d = project_points(joints3d, K)
        samples = []
        for b, index in enumerate(indices):
            mano = torch.from_numpy(batch.mano[b])
            samples.append(
                make_hand_sample(
                    torch.from_numpy(batch.rgb[b]).permute(2, 0, 1).float() / 255.0,
                    K[b],
                    joints2d=joints2d[b],
                    joints3d=joints3d[b],
                    vertices=torch.from_numpy(batch.vertices[b]),
                    mano_pose=mano[:MANO_POSE_DIM],
                    mano_betas=mano[MANO_POSE_DIM : MANO_POSE_DIM + 10],
                    mask=torch.from_numpy(batch.mask[b]).float()[None],
                    side=batch.sides[b],
                    index=index,
                    source=f"synthetic(seed={self.synthesizer.seed}, index={index})",
                )
            )
        return samples
