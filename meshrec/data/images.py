"""Reading image files into tensors, with errors that name the file and the sample.

Uses Pillow (any format it reads: JPEG, PNG, ...). Images become ``(3, H, W)`` float32
RGB in [0, 1]; masks become ``(1, H, W)`` float32 in {0, 1}.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from meshrec.errors import DatasetError

__all__ = ["open_image", "load_image", "load_mask", "image_size_of"]


def _where(path: Path, index: int | None) -> str:
    return f"{path}" + (f" (index {index})" if index is not None else "")


def open_image(path: Path, index: int | None = None, *, exif_transpose: bool = False):
    """The decoded image file as a Pillow image in its own mode (a truncated or corrupt file
    fails here: :class:`DatasetError` naming the file and the sample ``index``)."""
    from PIL import Image, ImageOps, UnidentifiedImageError

    if not path.is_file():
        raise DatasetError(f"{_where(path, index)}: image file not found", path=path, index=index)
    try:
        with Image.open(path) as handle:
            handle.load()  # decode now: a truncated or corrupt file fails here, not later
            image = ImageOps.exif_transpose(handle) if exif_transpose else handle.copy()
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        raise DatasetError(
            f"{_where(path, index)}: cannot decode image ({type(error).__name__}: {error})", path=path, index=index
        ) from None
    return image


def load_image(path: str | Path, index: int | None = None, *, exif_transpose: bool = False) -> torch.Tensor:
    """Read an image file as ``(3, H, W)`` float32 RGB in [0, 1].

    Args:
        path: image file.
        index: sample number, only used in error messages.
        exif_transpose: apply the EXIF orientation tag (as photo viewers do). Use it for
            phone photos whose keypoints were labelled on the displayed image.

    Raises:
        DatasetError: the file is missing or cannot be decoded (message names file and index).
    """
    path = Path(path)
    image = open_image(path, index, exif_transpose=exif_transpose).convert("RGB")
    array = np.asarray(image, dtype=np.uint8)
    return torch.from_numpy(array.copy()).permute(2, 0, 1).float().div_(255.0)


def load_mask(path: str | Path, index: int | None = None, threshold: float = 0.5) -> torch.Tensor:
    """Read a foreground mask as ``(1, H, W)`` float32 in {0, 1} (grey level > threshold).

    JPEG masks (FreiHAND stores them so) have compression noise near 0 and 255; the
    threshold turns them back into a binary mask.
    """
    path = Path(path)
    grey = np.asarray(open_image(path, index).convert("L"), dtype=np.float32) / 255.0
    return torch.from_numpy((grey > threshold).astype(np.float32))[None]


# EXIF orientations 5-8 turn the image by 90 degrees (width and height swap when applied).
_EXIF_ORIENTATION_TAG = 0x0112
_SWAPPING_ORIENTATIONS = (5, 6, 7, 8)


def image_size_of(path: str | Path, index: int | None = None, *, exif_transpose: bool = False) -> tuple[int, int]:
    """``(H, W)`` of an image file, reading only its header (after the EXIF orientation
    when ``exif_transpose``, matching :func:`load_image`)."""
    from PIL import Image, UnidentifiedImageError

    path = Path(path)
    if not path.is_file():
        raise DatasetError(f"{_where(path, index)}: image file not found", path=path, index=index)
    try:
        with Image.open(path) as handle:
            width, height = handle.size
            if exif_transpose and handle.getexif().get(_EXIF_ORIENTATION_TAG) in _SWAPPING_ORIENTATIONS:
                width, height = height, width
    except (UnidentifiedImageError, OSError) as error:
        raise DatasetError(
            f"{_where(path, index)}: cannot read image header ({error})", path=path, index=index
        ) from None
    return height, width
