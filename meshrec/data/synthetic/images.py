"""A chunk's images and masks as JPEG files, and removal of images no commit names."""

from __future__ import annotations

import os
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path

import numpy as np

from meshrec.data.synthetic.scene import SynthBatch

JPEG_QUALITY = 95


def write_images(root: Path, split: str, indices: Sequence[int], batch: SynthBatch) -> None:
    """JPEG files of the chunk's images and masks, written in place.

    Not atomic on purpose: a file counts only once the manifest commits its sample, after a
    sync; files of uncommitted samples are removed or rewritten by the next run.
    """
    from PIL import Image

    masks = batch.mask.astype(np.uint8) * 255
    for b, index in enumerate(indices):
        name = f"{index:08d}.jpg"
        # masks are labels: always the default quality; images at the sample's own (photo style)
        rgb_quality = JPEG_QUALITY if batch.jpeg_quality is None else batch.jpeg_quality[b]
        for folder, pixels, quality in (("mask", masks[b], JPEG_QUALITY), ("rgb", batch.rgb[b], rgb_quality)):
            encoded = BytesIO()
            Image.fromarray(pixels).save(encoded, format="JPEG", quality=quality)
            with open(root / split / folder / name, "wb") as handle:
                handle.write(encoded.getbuffer())


def remove_uncommitted_images(root: Path, split: str, count: int) -> None:
    """Delete ``%08d.jpg`` images and masks numbered ``count`` or more (left by an interrupted run):
    :class:`~meshrec.data.freihand.FreiHandDataset` would take them for a second colour version."""
    for folder in (root / split / "rgb", root / split / "mask"):
        if not folder.is_dir():
            continue
        with os.scandir(folder) as entries:
            for entry in entries:
                stem, suffix = os.path.splitext(entry.name)
                if suffix == ".jpg" and len(stem) == 8 and stem.isdigit() and int(stem) >= count:
                    os.unlink(entry.path)
