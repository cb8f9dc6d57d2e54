"""Random backgrounds: coloured smooth noise, gradients, sums of sinusoids, crops of user images;
for the photo style, scene-like clutter over them or over a wall and floor (:func:`make_scene_background`).

Every background is drawn from the sample's own generator, so it depends on ``(seed, split,
index)`` alone. Enlargements are PIL's bicubic resize written as two small matrix products.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from meshrec.data import blur
from meshrec.errors import MeshrecError

_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")


def list_background_images(folder: str | os.PathLike | None) -> list[Path]:
    if folder is None:
        return []
    folder = Path(folder)
    if not folder.is_dir():
        raise MeshrecError(f"backgrounds must be a folder of images, got {str(folder)!r} (not a folder)")
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in _IMAGE_SUFFIXES and p.is_file())
    if not files:
        raise MeshrecError(f"backgrounds folder {str(folder)!r} holds no {'/'.join(_IMAGE_SUFFIXES)} images")
    return files


@functools.lru_cache(maxsize=None)
def _enlarging_matrix(cells: int, size: int) -> np.ndarray:
    """``(size, cells)`` float32: PIL's bicubic enlargement of ``cells`` samples to ``size``.

    Resizing is linear and separable, so ``A @ coarse @ A.T`` enlarges a ``(cells, cells)``
    grid exactly as ``Image.resize`` does, in two small matrix products; the columns are
    PIL's enlargements of unit impulses.
    """
    from PIL import Image

    impulses = np.eye(cells, dtype=np.float32)
    columns = [
        np.asarray(Image.fromarray(np.ascontiguousarray(impulses[:, [c]])).resize((1, size), Image.BICUBIC))[:, 0]
        for c in range(cells)
    ]
    return np.stack(columns, axis=1)


def _matmul(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """``left @ right`` for float32 numpy arrays, computed by torch.

    numpy's OpenBLAS starts threads of its own for products of this size; with the cores
    busy (worker processes, other jobs) they stall it several-fold. torch's follow
    ``torch.set_num_threads``, which the writer sets to 1.
    """
    return (torch.from_numpy(left) @ torch.from_numpy(right)).numpy()


def _smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size)`` float32, about [0, 1]: random noise at a random scale, bicubically enlarged."""
    cells = int(rng.integers(3, 33))
    enlarge = _enlarging_matrix(cells, size)
    return _matmul(enlarge @ rng.random((cells, cells), dtype=np.float32), np.ascontiguousarray(enlarge.T))


def _tinted_smooth_noise(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size, 3)`` float32: coloured smooth noise pulled toward a random tint, random gain.

    The tint and gain act on the coarse grid: enlarging keeps constants and is linear, so
    this equals acting on the image, on a grid of at most 32 x 32 instead of the image.
    """
    cells = int(rng.integers(3, 33))
    enlarge = _enlarging_matrix(cells, size)
    coarse = rng.random((cells, cells, 3), dtype=np.float32)
    weights = enlarge.sum(0) / size  # mean of an enlarged image = weights @ grid @ weights
    mean = float(np.einsum("i,ijc,j->", weights, coarse, weights)) / 3
    # pull the colours toward a random tint so not every noise image is grey on average
    tint = _random_colour(rng)
    gain = np.float32(rng.uniform(0.6, 1.6))
    coarse = gain * (0.5 * coarse + 0.5 * tint * np.float32(mean))
    # enlarge along the grid's first axis, then its second, with the channels kept innermost
    # (the grid is i.i.d., so which of its axes becomes the image's rows does not matter)
    along_first = (enlarge @ coarse.reshape(cells, cells * 3)).reshape(size, cells, 3)
    along_second = _matmul(enlarge, np.ascontiguousarray(along_first.transpose(1, 0, 2)).reshape(cells, size * 3))
    return along_second.reshape(size, size, 3)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.random(3, dtype=np.float32)


def _pixel_coordinates(size: int) -> np.ndarray:
    """``(size,)`` float32 pixel positions as fractions of the side."""
    return np.arange(size, dtype=np.float32) / size


def make_background(rng: np.random.Generator, size: int, images: Sequence[Path] = ()) -> np.ndarray:
    """One ``(size, size, 3)`` float32 background in [0, 1] drawn from ``rng``.

    Kinds (equally likely; the last only when ``images`` are given): coloured smooth noise,
    a linear gradient between two colours, a sum of sinusoids between two colours, a random
    crop of one of ``images``.
    """
    kinds = 4 if images else 3
    kind = int(rng.integers(kinds))
    if kind == 0:
        background = _tinted_smooth_noise(rng, size)
    elif kind in (1, 2):
        low, high = _random_colour(rng), _random_colour(rng)
        position = _pixel_coordinates(size)
        angle = rng.uniform(0, 2 * np.pi)
        if kind == 1:
            along = np.float32(np.cos(angle)) * position[None, :] + np.float32(np.sin(angle)) * position[:, None]
        else:
            # sin(a(col) + b(row)) = sin b cos a + cos b sin a: each wave is two outer products
            waves = int(rng.integers(2, 6))
            direction = rng.uniform(0, 2 * np.pi, waves)
            frequency = rng.uniform(1.0, 12.0, waves) * 2 * np.pi
            phase = rng.uniform(0, 2 * np.pi, waves)
            along_cols = ((frequency * np.cos(direction))[:, None] * position[None, :]).astype(np.float32)
            along_rows = (frequency * np.sin(direction))[:, None] * position[None, :] + phase[:, None]
            along_rows = along_rows.astype(np.float32)
            along = np.sin(along_rows).T @ np.cos(along_cols) + np.cos(along_rows).T @ np.sin(along_cols)
        t = (along - along.min()) / max(float(along.max() - along.min()), 1e-9)
        grain = _smooth_noise(rng, size)
        # low + t (high - low) + 0.15 (grain - 1/2) as one product of (pixels, 3) weights and
        # (3, 3) colours: numpy is slow at broadcasting over a last axis of 3
        colours = np.stack([low - 0.075, high - 0.075, np.full(3, 0.15, np.float32)])
        weights = np.stack([1.0 - t, t, grain]).reshape(3, -1)
        background = (weights.T @ colours).reshape(size, size, 3)
    else:
        background = _image_crop(rng, size, images)
    return np.clip(background, 0.0, 1.0, dtype=np.float32)


def _image_crop(rng: np.random.Generator, size: int, images: Sequence[Path]) -> np.ndarray:
    from PIL import Image

    path = images[int(rng.integers(len(images)))]
    try:
        with Image.open(path) as handle:
            image = handle.convert("RGB")
    except OSError as error:
        raise MeshrecError(f"background image {path}: cannot read ({error})") from None
    width, height = image.size
    side = int(min(width, height) * rng.uniform(0.3, 1.0))
    side = max(side, 1)
    left = int(rng.integers(0, width - side + 1))
    top = int(rng.integers(0, height - side + 1))
    crop = image.crop((left, top, left + side, top + side)).resize((size, size), Image.BILINEAR)
    if rng.random() < 0.5:
        crop = crop.transpose(Image.FLIP_LEFT_RIGHT)
    return np.asarray(crop, dtype=np.float32) / 255.0


# Scene-like backgrounds of the photo style (``make_scene_background``).
CLUTTER_SHAPES = (2, 7)  # shapes per background, [low, high)
CLUTTER_BLURRED_SHARE = 0.5  # share of shapes drawn out of focus (before the sharp ones)
CLUTTER_BLUR_SIGMA = (1.0, 4.0)  # pixels at 128 px, scaled with the image side
FLOOR_SHARE = 0.5  # share of scene backgrounds that start from a wall over a floor/table


def gaussian_blur(image: np.ndarray, sigma: float) -> np.ndarray:
    """``(H, W, C)`` float32 image blurred by a Gaussian of ``sigma`` pixels
    (:func:`meshrec.data.blur.gaussian_blur`, borders mirrored); sigma below 0.05 px returns the
    image unchanged."""
    if sigma < 0.05:
        return image
    planes = torch.from_numpy(np.ascontiguousarray(image.transpose(2, 0, 1)))[None]  # (1, C, H, W)
    return blur.gaussian_blur(planes, float(sigma))[0].numpy().transpose(1, 2, 0)


def _muted_colour(rng: np.random.Generator) -> np.ndarray:
    """A random colour pulled toward a random grey: rooms are mostly muted, few colours are pure."""
    grey = np.float32(rng.uniform(0.15, 0.85))
    return np.clip(grey + np.float32(rng.uniform(0.2, 0.8)) * (_random_colour(rng) - grey), 0, 1)


def _shape_texture(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size)`` float32 brightness of a clutter shape's colour: flat, shaded, striped or mottled."""
    kind = int(rng.integers(4))
    position = _pixel_coordinates(size)
    angle = rng.uniform(0, 2 * np.pi)
    along = np.float32(np.cos(angle)) * position[None, :] + np.float32(np.sin(angle)) * position[:, None]
    if kind == 0:
        factor = np.ones((size, size), np.float32)
    elif kind == 1:  # lit from one side
        factor = np.float32(1.0) + np.float32(rng.uniform(0.2, 0.6)) * (along - np.float32(0.5))
    elif kind == 2:  # stripes or a pattern printed on it
        frequency = np.float32(rng.uniform(4.0, 20.0) * 2 * np.pi)
        factor = np.float32(1.0) + np.float32(rng.uniform(0.15, 0.4)) * np.sign(np.sin(frequency * along))
    else:  # wood, fabric, paper: smooth noise
        factor = np.float32(0.8) + np.float32(0.4) * _smooth_noise(rng, size)
    return factor


def _shape_coverage(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size)`` bool: a random rotated rectangle, ellipse or stripe (a long bar across the image)."""
    kind = int(rng.integers(3))
    position = _pixel_coordinates(size)
    centre = rng.uniform(-0.1, 1.1, 2).astype(np.float32)
    angle = rng.uniform(0, np.pi)
    cos, sin = np.float32(np.cos(angle)), np.float32(np.sin(angle))
    dx = position[None, :] - centre[0]
    dy = position[:, None] - centre[1]
    along, across = cos * dx + sin * dy, -sin * dx + cos * dy
    if kind == 2:
        half = np.float32(rng.uniform(0.03, 0.15))
        return np.abs(across) < half
    half_a, half_b = rng.uniform(0.08, 0.45, 2).astype(np.float32)
    if kind == 0:
        return (np.abs(along) < half_a) & (np.abs(across) < half_b)
    return (along / half_a) ** 2 + (across / half_b) ** 2 < 1.0


def _floor_and_wall(rng: np.random.Generator, size: int) -> np.ndarray:
    """``(size, size, 3)``: a wall over a floor or table top at a random, slightly tilted horizon,
    the floor brightening towards the camera, the wall shaded softly."""
    position = _pixel_coordinates(size)
    wall, floor = _muted_colour(rng), _muted_colour(rng)
    horizon = rng.uniform(0.1, 0.7)
    tilt = np.float32(rng.uniform(-0.2, 0.2))
    height = position[:, None] - (np.float32(horizon) + tilt * (position[None, :] - np.float32(0.5)))
    below = height > 0
    depth = np.clip(height / np.float32(max(1.0 - horizon, 0.1)), 0.0, 1.0)  # 0 at the horizon, 1 at the bottom
    floor_shade = np.float32(rng.uniform(0.5, 0.8)) + np.float32(0.4) * depth
    wall_shade = np.float32(rng.uniform(0.7, 1.0)) + np.float32(0.15) * np.float32(rng.uniform(-1, 1)) * (
        position[None, :] - np.float32(0.5)
    )
    grain = np.float32(0.9) + np.float32(0.2) * _smooth_noise(rng, size)
    shade = np.where(below, floor_shade * grain, np.broadcast_to(wall_shade, (size, size)))
    return np.where(below[..., None], floor[None, None, :], wall[None, None, :]) * shade[..., None]


def make_scene_background(rng: np.random.Generator, size: int, images: Sequence[Path] = ()) -> np.ndarray:
    """One ``(size, size, 3)`` float32 background in [0, 1] that looks like a scene (photo style).

    A base (half the time a wall over a floor or table top, else one of
    :func:`make_background`'s kinds, user images included) under ``CLUTTER_SHAPES`` random
    overlapping rectangles, ellipses and bars, each with its own colour and texture; the
    first ``CLUTTER_BLURRED_SHARE`` of them are out of focus (blurred with what lies behind
    them, as depth of field would).
    """
    if rng.random() < FLOOR_SHARE:
        background = _floor_and_wall(rng, size).astype(np.float32)
    else:
        background = make_background(rng, size, images)
    count = int(rng.integers(*CLUTTER_SHAPES))
    blurred = int(round(count * CLUTTER_BLURRED_SHARE * rng.uniform(0.5, 1.5)))
    scale = size / 128.0
    # shapes are drawn as a map of which shape is on top and a brightness map, and painted in
    # one pass per layer: three-channel work per shape cost more than the rest together
    on_top = np.full((size, size), -1, np.int16)
    brightness = np.ones((size, size), np.float32)
    colours: list[np.ndarray] = []

    def paint(under: np.ndarray) -> np.ndarray:
        if not colours:
            return under
        painted = np.stack(colours).astype(np.float32)[np.maximum(on_top, 0)] * brightness[..., None]
        return np.where((on_top >= 0)[..., None], painted, under)

    for shape in range(count):
        coverage = _shape_coverage(rng, size)
        texture = _shape_texture(rng, size)
        on_top[coverage] = len(colours)
        brightness[coverage] = texture[coverage]
        colours.append(_muted_colour(rng))
        if shape + 1 == blurred:
            background = gaussian_blur(paint(background), rng.uniform(*CLUTTER_BLUR_SIGMA) * scale)
            on_top[:] = -1
            colours = []
    background = paint(background)
    return np.clip(background, 0.0, 1.0, dtype=np.float32)
