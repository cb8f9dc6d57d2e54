"""Synthetic hand images with full labels: a writer of the FreiHAND layout and an on-the-fly dataset.

Each sample is a MANO-format hand (both sides) in a pose from ``manolayer``'s anatomical
sampler (``mode='mixture'``), with random shape (the model's non-zero shape components in
``[-2, 2]``), a uniformly random global rotation, a random focal length and a camera
distance that makes the hand fill roughly 60-100 % of the crop (shifted so some hands are
cut by the border), random lighting and skin tone, over a random background (blurred
noise, gradients, sums of sinusoids, or crops of user images). The composite is
``mask * render + (1 - mask) * background`` plus mild sensor noise.

Every random number of sample ``i`` of a split comes from ``(seed, split, i)`` alone, so a
sample does not depend on batching, on how many samples are made, on the number of worker
processes, or on resuming: labels are identical to the bit, an image or mask may differ in
an edge pixel (float32 rounding depends on where in a render batch the hand is drawn).

:func:`write_synthetic_dataset` writes what :class:`~meshrec.data.freihand.FreiHandDataset`
reads (one colour version), plus ``S_side.json`` (``'right'``/``'left'`` per sample,
FreiHAND has no side field) and ``manifest.json``. The ``mano`` labels are
``[global_orient (3), hand_pose (45), betas (10), transl (3)]`` for the sample's own side
model with a *flat* mean pose (``flat_hand_mean=True``, axis-angle, no PCA), such that
``ManoLayer(side=side, flat_hand_mean=True, use_pca=False)`` gives back ``verts``/``xyz``.

How the writer stays fast and safe: forked worker processes render, encode and write
whole chunks of samples and format their labels (numpy, a chunk at a time); this process
appends the label texts to the JSON lists in place, syncs, and then commits them in
``manifest.json`` (sample counts and the byte length of every label file), the record of
what is done. Ctrl-C and SIGTERM stop a run cleanly (the set holds exactly the committed
samples). A run killed outright (SIGKILL, power loss) may leave label files longer than
the manifest says and images of uncommitted samples; the next run cuts the files back to
their committed length and removes those images before it goes on.
"""

from __future__ import annotations

import functools
import json
import math
import multiprocessing
import os
import signal
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from io import BytesIO
from pathlib import Path

import numpy as np
import scipy.sparse
import torch

from meshrec.errors import MeshrecError

_PLACEMENT_ITERATIONS = 4

__all__ = [
    "GENERATOR_VERSION",
    "SPLIT_CODES",
    "SynthBatch",
    "HandSynthesizer",
    "SynthSummary",
    "split_counts",
    "write_synthetic_dataset",
    "SyntheticHandDataset",
]

# "2": brighter, gamma-correct skin shading; vectorised backgrounds and sensor noise (labels as in "1")
GENERATOR_VERSION = "2"
# The split is part of every sample's seed; the on-the-fly dataset draws from its own stream.
SPLIT_CODES = {"training": 0, "evaluation": 1, "online": 2}
JPEG_QUALITY = 95
LABEL_DECIMALS = 6  # micrometres / 1e-6 rad: below any label's accuracy, keeps the JSON short
DEFAULT_BATCH_SIZE = 64
DEFAULT_FLUSH_EVERY = 1024  # samples between commits of the label files
GEOMETRY_QUANTUM = 1e-7  # metres / radians: posed geometry is rounded to this
POSE_BLOCK = 64  # samples whose pose angles and global rotations are drawn together
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Sampling ranges (what makes the data set look as it does).
BETA_RANGE = 2.0
FOV_DEG_RANGE = (20.0, 50.0)
HAND_RADIUS_FRACTION = (0.3, 0.5)  # hand's projected radius / image side
CENTRE_SHIFT_FRACTION = 0.12  # hand centre moves this fraction of the side from the image centre
AMBIENT_RANGE = (0.15, 0.45)  # share of the light that reaches every surface, linear
KEY_LIGHT_DEPTH_RANGE = (0.4, 1.0)  # -z of the (unnormalised) direction to the key light, x and y in [-1, 1]
FILL_LIGHT = 0.3  # share of the directional light that comes from the camera
DISPLAY_GAMMA = 2.2  # shading is linear light; images store it gamma-encoded like a camera
SHEEN_RANGE = (0.0, 0.25)  # strength of the skin's specular highlight
SKIN_SHININESS = 12.0
SKIN_CHANNEL_JITTER = (0.95, 1.05)  # per-channel factor on the skin colour (wider turns skin olive)
SENSOR_NOISE_MAX = 0.03
# Skin colours from light to dark as a camera shows them lit head-on (gamma-encoded RGB in
# [0, 1]); a sample interpolates two neighbours.
SKIN_TONES = np.array(
    [
        [0.96, 0.82, 0.72],
        [0.90, 0.71, 0.59],
        [0.82, 0.61, 0.48],
        [0.69, 0.49, 0.36],
        [0.53, 0.36, 0.26],
        [0.38, 0.26, 0.19],
    ]
)
_NOISE_BANK_SIZE = 1 << 22  # standard normal values that sensor noise is cut from (16 MB)
_NOISE_BANK_SEED = 20240611


@dataclass(frozen=True)
class SynthBatch:
    """A batch of B rendered samples (numpy).

    Attributes:
        rgb: ``(B, H, W, 3)`` uint8 composite images.
        mask: ``(B, H, W)`` bool, True where the hand covers the pixel centre.
        K: ``(B, 3, 3)`` float32 intrinsics, pixels.
        joints: ``(B, 21, 3)`` float32, camera frame, metres, OpenPose order.
        vertices: ``(B, V, 3)`` float32, camera frame, metres.
        mano: ``(B, 61)`` float32 ``[global_orient, hand_pose (45), betas (10), transl]``.
        sides: B strings, ``'right'`` or ``'left'``.
    """

    rgb: np.ndarray
    mask: np.ndarray
    K: np.ndarray
    joints: np.ndarray
    vertices: np.ndarray
    mano: np.ndarray
    sides: list[str]


class _PhaseClock:
    """Wall and CPU seconds per named phase, summed over calls (the benchmark's breakdown)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.cpu_seconds: dict[str, float] = {}
        self.restart()

    def restart(self) -> None:
        self._last = time.perf_counter()
        self._last_cpu = time.process_time()

    def lap(self, phase: str) -> None:
        now, now_cpu = time.perf_counter(), time.process_time()
        self.seconds[phase] = self.seconds.get(phase, 0.0) + now - self._last
        self.cpu_seconds[phase] = self.cpu_seconds.get(phase, 0.0) + now_cpu - self._last_cpu
        self._last, self._last_cpu = now, now_cpu

    def add(self, seconds: dict[str, float], cpu_seconds: dict[str, float]) -> None:
        for phase, spent in seconds.items():
            self.seconds[phase] = self.seconds.get(phase, 0.0) + spent
        for phase, spent in cpu_seconds.items():
            self.cpu_seconds[phase] = self.cpu_seconds.get(phase, 0.0) + spent


def _sample_rng(seed: int, split: str, index: int) -> np.random.Generator:
    """The numpy generator of sample ``index`` of ``split`` (scene, shape, background)."""
    return np.random.default_rng(np.random.SeedSequence([seed, SPLIT_CODES[split], index]))


def _block_seed(seed: int, split: str, block: int) -> int:
    """torch seed of block ``block`` (samples ``POSE_BLOCK * block ...``): poses are drawn a block
    at a time (the sampler is fast per batch, slow per sample), still independent of chunking."""
    sequence = np.random.SeedSequence([seed, SPLIT_CODES[split], block, POSE_BLOCK])
    return int(sequence.generate_state(1, dtype=np.uint32)[0])


def _quantize(values: torch.Tensor) -> torch.Tensor:
    return torch.round(values / GEOMETRY_QUANTUM) * GEOMETRY_QUANTUM


def _list_background_images(folder: str | os.PathLike | None) -> list[Path]:
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


@functools.lru_cache(maxsize=1)
def _noise_bank() -> np.ndarray:
    """``(_NOISE_BANK_SIZE,)`` float32 standard normal values, the same in every process.

    A sample's sensor noise is a window of this bank at an offset from its own seed: drawing
    fresh normals per pixel cost more than rendering the hand.
    """
    return np.random.default_rng(_NOISE_BANK_SEED).standard_normal(_NOISE_BANK_SIZE, dtype=np.float32)


def _composite(
    rendered_rgb: np.ndarray, mask: np.ndarray, backgrounds: np.ndarray, params: Sequence[dict]
) -> np.ndarray:
    """``(B, H, W, 3)`` uint8: the render over its background plus per-sample sensor noise.

    Args:
        rendered_rgb: ``(B, H, W, 3)`` uint8 hand renders.
        mask: ``(B, H, W)`` bool, True where the hand is.
        backgrounds: ``(B, H, W, 3)`` float32 in [0, 1]; scaled to [0, 255] in place.
        params: per sample, ``'noise'`` (standard deviation, [0, 1] units) and ``'noise_seed'``.
    """
    backgrounds *= 255.0
    # a mask repeated over the channels: numpy is slow at broadcasting over a last axis of 3
    composite = np.where(np.repeat(mask[..., None], 3, axis=-1), rendered_rgb, backgrounds)
    bank = _noise_bank()
    pixels = composite[0].size
    for b, p in enumerate(params):
        offset = p["noise_seed"] % (bank.size - pixels)
        composite[b] += bank[offset : offset + pixels].reshape(composite[b].shape) * np.float32(255.0 * p["noise"])
    composite += 0.5
    np.clip(composite, 0.0, 255.0, out=composite)
    return composite.astype(np.uint8)


class HandSynthesizer:
    """Renders synthetic samples by ``(split, index)``; one instance per process (holds a GL renderer).

    Args:
        size: side of the square images, pixels.
        seed: the data set's seed.
        model: MANO-format model (path or ``ManoModel``) of the right hand; None: the open hand.
            The left hand is its mirror image.
        backgrounds: folder of images to crop backgrounds from, or None.
    """

    def __init__(
        self,
        size: int = 128,
        seed: int = 0,
        model=None,
        backgrounds: str | os.PathLike | None = None,
    ) -> None:
        from manolayer import ManoLayer, load_mano, mirror_model
        from manolayer.sampler import hand_axes

        if isinstance(size, bool) or not isinstance(size, int) or size < 16:
            raise MeshrecError(f"size must be an int >= 16 pixels, got {size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise MeshrecError(f"seed must be a non-negative int, got {seed!r}")
        self.size = size
        self.seed = seed
        right = model if model is not None and not isinstance(model, (str, os.PathLike)) else load_mano(model, side="right")
        if right.side != "right":
            right = mirror_model(right)
        left = mirror_model(right)
        self.model_hash = right.content_hash()
        self.layers = {
            # float64, so results differ between batch sizes (BLAS blocking) by ~1e-16 only,
            # which the rounding to GEOMETRY_QUANTUM below removes: samples do not depend on chunking
            side: ManoLayer(model=m, use_pca=False, flat_hand_mean=True, dtype=torch.float64)
            for side, m in (("right", right), ("left", left))
        }
        self.axes = {side: hand_axes(m.rest_joints, m.parents, side=side) for side, m in (("right", right), ("left", left))}
        # the shape components the model really has (the open hand: 4 of 10)
        self.num_real_betas = int(np.count_nonzero(np.abs(right.shapedirs).reshape(-1, right.num_betas).max(0)))
        self.faces = self.layers["right"].faces.long()
        self.background_images = _list_background_images(backgrounds)
        # vertex normal = sum of its faces' area-weighted normals: one sparse (V, F) product
        faces = self.faces.numpy()
        self._faces_np = faces
        self._vertex_faces = scipy.sparse.csr_matrix(
            (np.ones(faces.size, dtype=np.float32), (faces.ravel(), np.repeat(np.arange(len(faces)), 3))),
            shape=(right.num_vertices, len(faces)),
        )
        self._renderer = None
        self._block_cache: dict = {}

    def _vertex_normals(self, planes: np.ndarray) -> np.ndarray:
        """``(3, B, V)`` unit area-weighted vertex normals of ``(3, B, V)`` vertex coordinates
        (x, y, z planes of B meshes; outward for the models' winding)."""
        faces = self._faces_np
        first, second, third = planes[:, :, faces[:, 0]], planes[:, :, faces[:, 1]], planes[:, :, faces[:, 2]]
        along, across = second - first, third - first  # (3, B, F) edges
        face_normals = np.stack(
            [
                along[1] * across[2] - along[2] * across[1],
                along[2] * across[0] - along[0] * across[2],
                along[0] * across[1] - along[1] * across[0],
            ]
        )  # length = twice the area: the sum below weights faces by area
        num_faces = faces.shape[0]
        summed = (face_normals.reshape(-1, num_faces) @ self._vertex_faces.T).reshape(planes.shape)
        length = np.sqrt((summed * summed).sum(0))
        return summed / np.maximum(length, 1e-12)

    @property
    def renderer(self):
        if self._renderer is None:
            from meshrec.render import get_renderer

            self._renderer = get_renderer("gl")
        return self._renderer

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["_renderer"] = None  # each worker process makes its own GL context
        return state

    def _block_draws(self, split: str, block: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Anatomical angles ``(POSE_BLOCK, 15, 3)`` and global rotations ``(POSE_BLOCK, 3)`` of a block."""
        from manolayer.sampler import sample_anatomical_angles, sample_global_orient

        key = (split, block)
        if key not in self._block_cache:
            generator = torch.Generator().manual_seed(_block_seed(self.seed, split, block))
            angles = sample_anatomical_angles(POSE_BLOCK, mode="mixture", generator=generator)
            orients = sample_global_orient(POSE_BLOCK, generator=generator)
            self._block_cache = {key: (angles, orients)}  # chunks run in order: one block is enough
        return self._block_cache[key]

    def render(self, split: str, indices: Sequence[int]) -> SynthBatch:
        """Render samples ``indices`` of ``split`` (``'training'``, ``'evaluation'`` or ``'online'``)."""
        return self._render(split, indices, _PhaseClock())

    def _render(self, split: str, indices: Sequence[int], clock: _PhaseClock) -> SynthBatch:
        from manolayer.sampler import angles_to_hand_pose

        if split not in SPLIT_CODES:
            raise MeshrecError(f"split must be one of {tuple(SPLIT_CODES)}, got {split!r}")
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0:
            raise MeshrecError(f"indices must be a non-empty list of non-negative ints, got {indices!r}")
        size, batch = self.size, len(indices)
        clock.restart()
        sides, angles, orients, betas, params, rngs = [], [], [], [], [], []
        for index in indices:
            rng = _sample_rng(self.seed, split, index)
            sides.append("left" if rng.random() < 0.5 else "right")
            block_angles, block_orients = self._block_draws(split, index // POSE_BLOCK)
            angles.append(block_angles[index % POSE_BLOCK])
            orients.append(block_orients[index % POSE_BLOCK])
            shape = np.zeros(10)
            shape[: self.num_real_betas] = rng.uniform(-BETA_RANGE, BETA_RANGE, self.num_real_betas)
            betas.append(shape)
            params.append(self._scene_parameters(rng))
            rngs.append(rng)  # what is left of its stream draws the background
        global_orient = torch.stack(orients).double()
        betas_t = torch.as_tensor(np.stack(betas), dtype=torch.float64)
        angles = torch.stack(angles).double()
        clock.lap("sample")

        num_vertices = self.layers["right"].model.num_vertices
        hand_pose = torch.empty(batch, 45, dtype=torch.float64)
        vertices = torch.empty(batch, num_vertices, 3, dtype=torch.float64)
        joints = torch.empty(batch, 21, 3, dtype=torch.float64)
        with torch.no_grad():
            for side, layer in self.layers.items():
                chosen = torch.tensor([s == side for s in sides])
                if chosen.any():
                    hand_pose[chosen] = angles_to_hand_pose(angles[chosen], self.axes[side])
                    out = layer(global_orient[chosen], hand_pose[chosen], betas_t[chosen])
                    vertices[chosen], joints[chosen] = out.vertices, out.joints
        vertices = _quantize(vertices)
        joints = _quantize(joints)
        hand_pose = _quantize(hand_pose)

        # camera: focal length from the field of view, hand centre placed at a depth that
        # gives it the sampled projected radius, shifted from the image centre
        focal = torch.tensor([p["focal"] for p in params])
        centre = (vertices.amax(1) + vertices.amin(1)) / 2  # (B, 3) box centre of the posed hand
        radius = (vertices[..., :2] - centre[:, None, :2]).norm(dim=-1).amax(1)  # metres, in the image plane
        radius_px = torch.tensor([p["radius_px"] for p in params])
        depth = focal * radius / radius_px
        shift = torch.tensor(np.stack([p["shift_px"] for p in params]), dtype=torch.float32)  # (B, 2)
        for _ in range(_PLACEMENT_ITERATIONS):
            # perspective makes the near side of a hand project larger than the radius in the
            # plane of its centre suggests: move the camera back until the projected radius fits
            target = torch.cat([shift * (depth / focal)[:, None], depth[:, None]], dim=1)
            placed = vertices - centre[:, None] + target[:, None]
            projected = placed[..., :2] / placed[..., 2:].clamp_min(1e-3) * focal[:, None, None]
            projected_radius = (projected - shift[:, None]).norm(dim=-1).amax(1)
            depth = depth * (projected_radius / radius_px).clamp_min(1.0)
        target = torch.cat([shift * (depth / focal)[:, None], depth[:, None]], dim=1)
        transl = target.double() - centre
        vertices = (vertices + transl[:, None]).float()
        joints = (joints + transl[:, None]).float()
        principal = (size - 1) / 2.0
        K = torch.zeros(batch, 3, 3)
        K[:, 0, 0] = K[:, 1, 1] = focal
        K[:, 0, 2] = K[:, 1, 2] = principal
        K[:, 2, 2] = 1.0
        mano = torch.cat([global_orient, hand_pose, betas_t, transl], dim=1).float()
        clock.lap("pose")

        colours = self._vertex_colours(vertices.numpy(), params)
        clock.lap("shade")
        rendered = self.renderer.render(vertices, self.faces, K, size, colors=colours, ambient=1.0, specular=0.0)
        clock.lap("render")
        backgrounds = np.stack([make_background(rng, size, self.background_images) for rng in rngs])
        clock.lap("background")
        rgb = _composite(rendered.rgb, rendered.mask, backgrounds, params)
        clock.lap("composite")
        return SynthBatch(
            rgb=rgb,
            mask=rendered.mask,
            K=K.numpy(),
            joints=joints.numpy(),
            vertices=vertices.numpy(),
            mano=mano.numpy(),
            sides=sides,
        )

    def _vertex_colours(self, vertices: np.ndarray, params: Sequence[dict]) -> np.ndarray:
        """``(B, V, 3)`` float32 shaded, gamma-encoded colours in [0, 1] of ``(B, V, 3)`` vertices.

        Lighting is baked into per-vertex colours (the renderer takes one light per call, the
        samples each have their own); the renderer then only interpolates them. Shading is
        linear light (ambient, a key light's Lambert term, a fill light from the camera),
        encoded with ``DISPLAY_GAMMA`` as a camera would (a half-lit surface shows at 73 %
        of its lit colour, not 50 %), plus a soft sheen. Computed on x, y, z planes
        ``(3, B, V)``: numpy is slow at broadcasting over a last axis of 3.
        """
        planes = np.ascontiguousarray(vertices.transpose(2, 0, 1))  # (3, B, V)
        normals = self._vertex_normals(planes)
        distance = np.maximum(np.sqrt((planes * planes).sum(0)), 1e-9)  # (B, V)
        view = -planes / distance  # towards the camera
        # a visible surface faces the camera: turn normals that point away (the far side,
        # or a winding that points them inward) toward it, as the renderer does per pixel
        towards_camera = (normals * view).sum(0)
        normals *= np.where(towards_camera < 0, -1.0, 1.0).astype(np.float32)
        towards_camera = np.abs(towards_camera)
        light = np.stack([p["light"] for p in params]).T.astype(np.float32)[:, :, None]  # (3, B, 1)
        lambert = np.maximum((normals * light).sum(0), 0.0)
        # a weaker fill light at the camera (as a flash or a bright room would give) keeps
        # surfaces the key light misses from going flat
        received = (1 - FILL_LIGHT) * lambert + FILL_LIGHT * towards_camera
        ambient = np.array([p["ambient"] for p in params], dtype=np.float32)[:, None]
        shade = (ambient + (1 - ambient) * received) ** np.float32(1.0 / DISPLAY_GAMMA)
        # a soft Blinn-Phong sheen where the key light falls: skin is a little glossy
        halfway = light + view
        halfway /= np.maximum(np.sqrt((halfway * halfway).sum(0)), 1e-9)
        sheen = np.array([p["sheen"] for p in params], dtype=np.float32)[:, None]
        highlight = np.maximum((normals * halfway).sum(0), 0.0) ** np.float32(SKIN_SHININESS) * (lambert > 0) * sheen
        albedo = np.stack([p["skin"] for p in params]).astype(np.float32)  # (B, 3)
        colours = albedo.T[:, :, None] * shade + highlight  # (3, B, V)
        return np.clip(colours, 0.0, 1.0).transpose(1, 2, 0)

    def _scene_parameters(self, rng: np.random.Generator) -> dict:
        size = self.size
        fov = math.radians(rng.uniform(*FOV_DEG_RANGE))
        # towards the key light: from the camera's side of the hand, up to 68 degrees off its axis
        light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), -rng.uniform(*KEY_LIGHT_DEPTH_RANGE)])
        tone = rng.uniform(0, len(SKIN_TONES) - 1)
        low = int(tone)
        high = min(low + 1, len(SKIN_TONES) - 1)
        skin = SKIN_TONES[low] + (tone - low) * (SKIN_TONES[high] - SKIN_TONES[low])
        skin = np.clip(skin * rng.uniform(*SKIN_CHANNEL_JITTER, 3), 0, 1)  # a little hue variation
        return {
            "focal": size / (2 * math.tan(fov / 2)),
            "radius_px": rng.uniform(*HAND_RADIUS_FRACTION) * size,
            "shift_px": rng.uniform(-CENTRE_SHIFT_FRACTION, CENTRE_SHIFT_FRACTION, 2) * size,
            "light": light / np.linalg.norm(light),
            "ambient": rng.uniform(*AMBIENT_RANGE),
            "skin": skin,
            "noise": rng.uniform(0, SENSOR_NOISE_MAX),
            "noise_seed": int(rng.integers(2**32)),
            # drawn after everything the labels depend on, so adding it changed no label
            "sheen": rng.uniform(*SHEEN_RANGE),
        }


# --------------------------------------------------------------------------- writing the FreiHAND layout


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synthetic_dataset` did.

    Attributes:
        root: the data set folder.
        counts: samples per split now present.
        rendered: samples rendered by this call.
        seconds: wall seconds per phase, summed over the worker processes (``sample``,
            ``pose``, ``shade``, ``render``, ``background``, ``composite``, ``images``
            (encode and write), ``labels`` (format)) and in this process (``commit``:
            append the labels, sync, write the manifest).
        cpu_seconds: the same phases' CPU seconds (what they cost the machine; wall
            seconds also count waiting for the disk and for cores other jobs hold).
    """

    root: Path
    counts: dict[str, int]
    rendered: int
    seconds: dict[str, float] = field(default_factory=dict)
    cpu_seconds: dict[str, float] = field(default_factory=dict)


def split_counts(num: int, eval_fraction: float) -> dict[str, int]:
    """``{'training': n_train, 'evaluation': n_eval}`` with ``n_eval = round(num * eval_fraction)``."""
    evaluation = int(math.floor(num * eval_fraction + 0.5))
    return {"training": num - evaluation, "evaluation": evaluation}


# --- label text: numpy formats whole chunks at once (json.dumps per sample was a third of the time)

def _word_table(texts: Sequence[str]) -> np.ndarray:
    """``(len(texts),)`` uint32 whose bytes are the 4-character ``texts``."""
    return np.frombuffer("".join(texts).encode("ascii"), dtype=np.uint32)


# A label value below 1000 in magnitude is written as 12 characters, three 4-byte words:
# sign and whole part ("-  5"), "." and three decimals (".123"), three decimals and a blank
# ("456 "). Blanks are removed from the finished text (JSON needs no padding).
_SIGN_AND_WHOLE = _word_table([f"{sign}{whole:3d}" for sign in " -" for whole in range(1000)])
_POINT_AND_DIGITS = _word_table([f".{digits:03d}" for digits in range(1000)])
_DIGITS_AND_BLANK = _word_table([f"{digits:03d} " for digits in range(1000)])
_FIELD_WIDTH = 12
_FAST_LABEL_LIMIT = 999.0  # larger magnitudes (intrinsics of images above ~400 px) go through json.dumps


@functools.lru_cache(maxsize=32)
def _entry_layout(entry_shape: tuple[int, ...]) -> tuple[np.ndarray, tuple[int, ...]]:
    """The JSON text of one entry of ``entry_shape`` with blank numbers, then a ``,``, as
    uint8, and the byte strides between its numbers along each axis (the first number
    starts after the ``len(entry_shape)`` opening brackets)."""

    def nested(shape: tuple[int, ...]) -> str:
        if not shape:
            return " " * _FIELD_WIDTH
        return "[" + ",".join([nested(shape[1:])] * shape[0]) + "]"

    strides = tuple(len(nested(entry_shape[axis + 1 :])) + 1 for axis in range(len(entry_shape)))
    return np.frombuffer((nested(entry_shape) + ",").encode("ascii"), np.uint8), strides


def _json_entries(values: np.ndarray) -> bytes:
    """``(B, *entry_shape)`` numbers as B JSON entries (nested lists) joined by commas.

    Each number is rounded to ``LABEL_DECIMALS`` decimals exactly as ``np.round`` does and
    written with that many decimals, so ``json.loads`` gives back the same doubles as
    ``json.dumps(np.round(entry, LABEL_DECIMALS).tolist())`` (``-0.0`` included); the
    digits come from lookup tables for a whole chunk at once.

    Raises:
        MeshrecError: a value is not finite.
    """
    values = np.asarray(values, dtype=np.float64)
    scale = 10.0**LABEL_DECIMALS
    scaled = np.rint(values * scale)  # np.round's own steps: multiply, rint, divide
    if not np.isfinite(scaled).all():
        raise MeshrecError(f"labels must be finite, got {values[~np.isfinite(scaled)][:3].tolist()}")
    if LABEL_DECIMALS != 6 or values.size == 0 or np.abs(values).max() >= _FAST_LABEL_LIMIT:
        return ",".join(json.dumps(entry.tolist(), separators=(",", ":")) for entry in scaled / scale).encode()
    batch, entry_shape = values.shape[0], values.shape[1:]
    negative = np.signbit(scaled / scale).ravel()  # a value that rounds to -0.0 keeps its sign
    whole, fraction = np.divmod(np.abs(scaled).astype(np.int64).ravel(), 1_000_000)
    high, low = np.divmod(fraction, 1000)
    words = np.empty((whole.size, 3), np.uint32)
    np.take(_SIGN_AND_WHOLE, whole + 1000 * negative, out=words[:, 0])
    np.take(_POINT_AND_DIGITS, high, out=words[:, 1])
    np.take(_DIGITS_AND_BLANK, low, out=words[:, 2])
    template, strides = _entry_layout(entry_shape)
    text = np.empty((batch, template.size), np.uint8)
    text[:] = template
    # the numbers' places in the text form a regular grid: write them through a strided view
    places = np.lib.stride_tricks.as_strided(
        text[:, len(entry_shape) :],
        shape=(batch, *entry_shape, _FIELD_WIDTH),
        strides=(template.size, *strides, 1),
        writeable=True,
    )
    places[...] = words.view(np.uint8).reshape(batch, *entry_shape, _FIELD_WIDTH)
    return text.tobytes()[:-1].translate(None, b" ")


_LABEL_NAMES = ("K", "xyz", "verts", "mano", "side")


def _label_texts(batch: SynthBatch) -> dict[str, bytes]:
    """The chunk's entries of each label file, comma-joined JSON (FreiHAND keeps mano as [[61]])."""
    return {
        "K": _json_entries(batch.K),
        "xyz": _json_entries(batch.joints),
        "verts": _json_entries(batch.vertices),
        "mano": _json_entries(batch.mano[:, None]),
        "side": ",".join(json.dumps(side) for side in batch.sides).encode(),
    }


# --- images


def _write_images(root: Path, split: str, indices: Sequence[int], batch: SynthBatch) -> None:
    """JPEG files of the chunk's images and masks, written in place.

    Not atomic on purpose: a file counts only once the manifest commits its sample, after a
    sync; files of uncommitted samples are removed or rewritten by the next run.
    """
    from PIL import Image

    masks = batch.mask.astype(np.uint8) * 255
    for b, index in enumerate(indices):
        name = f"{index:08d}.jpg"
        for folder, pixels in (("mask", masks[b]), ("rgb", batch.rgb[b])):
            encoded = BytesIO()
            Image.fromarray(pixels).save(encoded, format="JPEG", quality=JPEG_QUALITY)
            with open(root / split / folder / name, "wb") as handle:
                handle.write(encoded.getbuffer())


def _remove_uncommitted_images(root: Path, split: str, count: int) -> None:
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


# --- chunks, in this process or in worker processes

_worker_state: dict = {}


def _start_worker(synthesizer: HandSynthesizer, root: Path, parent: int) -> None:
    """Worker initializer: single-threaded torch (the processes already fill the cores; torch's
    own threads then only contend), Ctrl-C left to the parent, which stops the workers, and
    an exit when the parent is gone (killed; a worker would otherwise wait for work forever)."""
    torch.set_num_threads(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _worker_state.update(synthesizer=synthesizer, root=root)

    def exit_with_parent() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=exit_with_parent, daemon=True).start()


@dataclass(frozen=True)
class _ChunkResult:
    split: str
    count: int
    texts: dict[str, bytes]
    seconds: dict[str, float]
    cpu_seconds: dict[str, float]


def _make_chunk(task: tuple[str, list[int]]) -> _ChunkResult:
    """Render one chunk, write its images, format its labels (runs in a worker)."""
    split, indices = task
    synthesizer, root = _worker_state["synthesizer"], _worker_state["root"]
    clock = _PhaseClock()
    batch = synthesizer._render(split, indices, clock)
    _write_images(root, split, indices, batch)
    clock.lap("images")
    texts = _label_texts(batch)
    clock.lap("labels")
    return _ChunkResult(split, len(indices), texts, clock.seconds, clock.cpu_seconds)


@contextmanager
def _torch_threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


@contextmanager
def _chunk_results(
    synthesizer: HandSynthesizer, root: Path, tasks: list[tuple[str, list[int]]], workers: int
) -> Iterator[Iterator[_ChunkResult]]:
    """The chunks' results in task order, made by ``workers`` forked processes (or here)."""
    fork = "fork" in multiprocessing.get_all_start_methods()
    if workers == 1 or len(tasks) <= 1 or not fork or multiprocessing.current_process().daemon:
        # one chunk is not worth starting processes; daemonic processes may not have children
        _worker_state.update(synthesizer=synthesizer, root=root)
        try:
            with _torch_threads(1):
                yield (_make_chunk(task) for task in tasks)
        finally:
            _worker_state.clear()
        return
    from concurrent.futures import ProcessPoolExecutor

    _noise_bank()  # made once here, shared with the forked workers
    executor = ProcessPoolExecutor(
        max_workers=min(workers, len(tasks)),
        mp_context=multiprocessing.get_context("fork"),
        initializer=_start_worker,
        initargs=(synthesizer, root, os.getpid()),
    )
    try:
        # a worker that dies (killed, crashed) fails the run with BrokenProcessPool, not a hang
        yield executor.map(_make_chunk, tasks)
    finally:
        # after an error or Ctrl-C: chunks in progress finish (their images are then removed as
        # uncommitted), queued ones are dropped
        executor.shutdown(wait=True, cancel_futures=True)


# --- label files and the manifest that commits them


@contextmanager
def _signals_deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM while the label files and the manifest are updated, then deliver them.

    Only the main thread can set handlers; elsewhere this does nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    names = [signal.SIGINT] + ([signal.SIGTERM] if hasattr(signal, "SIGTERM") else [])
    previous = {number: signal.signal(number, lambda number, frame: received.append(number)) for number in names}
    try:
        yield
    finally:
        for number, handler in previous.items():
            signal.signal(number, handler)
        for number in received:
            signal.raise_signal(number)


@contextmanager
def _sigterm_stops_the_run() -> Iterator[None]:
    """While the writer runs, SIGTERM raises SystemExit (in the main thread, where the default
    action would kill the process between two files): the run then stops as on Ctrl-C,
    removing the images of uncommitted samples. A handler the caller set is left alone."""
    if (
        threading.current_thread() is not threading.main_thread()
        or not hasattr(signal, "SIGTERM")
        or signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL
    ):
        yield
        return

    def stop(number, frame) -> None:
        raise SystemExit(128 + number)

    signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


class _SplitLabels:
    """One split's label files (JSON lists), appended to in place at each commit.

    ``sizes`` are the committed byte lengths (what the manifest records); entries staged
    since the last commit are held in memory.
    """

    def __init__(self, root: Path, split: str, count: int, sizes: dict[str, int] | None) -> None:
        from manolayer.io import write_bytes_atomic

        self.paths = {name: root / f"{split}_{name}.json" for name in _LABEL_NAMES}
        self.count = count
        self.staged: dict[str, list[bytes]] = {name: [] for name in _LABEL_NAMES}
        self.staged_count = 0
        if count == 0:
            for path in self.paths.values():
                write_bytes_atomic(path, b"[]")
            self.sizes = {name: 2 for name in _LABEL_NAMES}
            return
        self.sizes = dict(sizes)
        for name, path in self.paths.items():
            _restore_committed(path, self.sizes[name])

    def stage(self, texts: dict[str, bytes], count: int) -> None:
        for name in _LABEL_NAMES:
            self.staged[name].append(texts[name])
        self.staged_count += count

    def append_staged(self) -> None:
        if not self.staged_count:
            return
        for name, path in self.paths.items():
            # overwrite the closing ']' with the new entries and a new ']'
            text = (b"," if self.count else b"") + b",".join(self.staged[name]) + b"]"
            with open(path, "r+b") as handle:
                handle.seek(self.sizes[name] - 1)
                handle.write(text)
            self.sizes[name] += len(text) - 1
            self.staged[name] = []
        self.count += self.staged_count
        self.staged_count = 0


def _restore_committed(path: Path, size: int) -> None:
    """Cut a label file back to its committed ``size`` bytes ending in ``]`` (undoes an append
    that a killed run left unfinished or uncommitted)."""
    try:
        actual = path.stat().st_size
        with open(path, "rb") as handle:
            first = handle.read(1)
            handle.seek(size - 1)
            last = handle.read(1)
    except OSError as error:
        raise MeshrecError(f"{path}: cannot read labels to resume ({error}); use a new folder") from None
    if actual < size or first != b"[":
        raise MeshrecError(
            f"{path}: {actual} bytes, but manifest.json committed {size} bytes of a JSON list; "
            "the labels were changed by something else, use a new folder"
        )
    if actual == size and last == b"]":
        return
    with open(path, "r+b") as handle:
        handle.truncate(size)
        handle.seek(size - 1)
        handle.write(b"]")
        handle.flush()
        os.fsync(handle.fileno())


def _manifest(
    synthesizer: HandSynthesizer,
    eval_fraction: float,
    counts: dict[str, int],
    backgrounds,
    label_bytes: dict[str, dict[str, int]] | None = None,
) -> dict:
    return {
        "generator": "meshrec.data.synthetic",
        "generator_version": GENERATOR_VERSION,
        "seed": synthesizer.seed,
        "image_size": synthesizer.size,
        "eval_fraction": eval_fraction,
        "model_content_hash": synthesizer.model_hash,
        "backgrounds": None if backgrounds is None else str(Path(backgrounds).resolve()),
        "num_background_images": len(synthesizer.background_images),
        "counts": counts,
        "side_files": {split: f"{split}_side.json" for split in counts},
        # what a resumed run trusts: every label file's committed length
        "label_bytes": label_bytes or {},
    }


# settings a resumed run must share with the first run (the same samples need the same settings)
_FIXED_SETTINGS = ("generator_version", "seed", "image_size", "eval_fraction", "model_content_hash", "num_background_images")


def _committed_state(manifest: dict, split: str, manifest_path: Path) -> tuple[int, dict[str, int] | None]:
    """``(count, label file sizes)`` of ``split`` that ``manifest`` commits."""
    count = manifest.get("counts", {}).get(split, 0)
    sizes = manifest.get("label_bytes", {}).get(split)
    if not isinstance(count, int) or count < 0:
        raise MeshrecError(
            f"{manifest_path}: counts.{split} must be a non-negative int, got {count!r}; use a new folder"
        )
    sizes_ok = isinstance(sizes, dict) and all(
        isinstance(sizes.get(name), int) and sizes[name] >= 2 for name in _LABEL_NAMES
    )
    if count and not sizes_ok:
        raise MeshrecError(f"{manifest_path}: no label_bytes for the {count} {split} samples; use a new folder")
    return count, sizes


def write_synthetic_dataset(
    root: str | os.PathLike,
    num: int,
    *,
    size: int = 128,
    seed: int = 0,
    eval_fraction: float = 0.1,
    backgrounds: str | os.PathLike | None = None,
    model=None,
    batch_size: int = DEFAULT_BATCH_SIZE,
    flush_every: int = DEFAULT_FLUSH_EVERY,
    progress: bool = True,
    workers: int = 2,
) -> SynthSummary:
    """Write (or extend) a synthetic data set of ``num`` samples in the FreiHAND layout under ``root``.

    The first ``num - round(num * eval_fraction)`` samples go to ``training``, the rest to
    ``evaluation``. Samples already present (committed by ``manifest.json``) are kept; only
    missing ones are rendered, so re-running with a larger ``num`` extends the set and an
    interrupted run resumes. Chunks of ``batch_size`` samples are rendered by ``workers``
    forked processes (1: in this process, with torch single-threaded meanwhile); this
    process appends their labels to the label files every ``flush_every`` samples and at
    the end, syncs the disks, then commits the new counts and file lengths in the
    manifest. Ctrl-C or SIGTERM wait for a commit in progress; after an interruption the
    data set holds exactly the committed samples (a killed run's leftovers are removed by
    the next run).

    Raises:
        MeshrecError: bad arguments, or ``root`` holds a data set made with other settings
            (seed, size, eval_fraction, model, generator version) or with more samples, or
            label files without a manifest.
    """
    from tqdm import tqdm

    from manolayer.io import write_bytes_atomic

    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise MeshrecError(f"num must be a positive int, got {num!r}")
    if not isinstance(eval_fraction, (int, float)) or not 0.0 <= eval_fraction < 1.0:
        raise MeshrecError(f"eval_fraction must be in [0, 1), got {eval_fraction!r}")
    for name, value in (("batch_size", batch_size), ("flush_every", flush_every), ("workers", workers)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise MeshrecError(f"{name} must be a positive int, got {value!r}")
    root = Path(root)
    if root.exists() and not root.is_dir():
        raise MeshrecError(f"out must be a folder, got {str(root)!r} (a file)")
    synthesizer = HandSynthesizer(size=size, seed=seed, model=model, backgrounds=backgrounds)
    targets = split_counts(num, float(eval_fraction))
    manifest_path = root / "manifest.json"
    previous: dict = {}
    if manifest_path.is_file():
        try:
            previous = json.loads(manifest_path.read_text(encoding="utf-8"))
        except (OSError, json.JSONDecodeError) as error:
            raise MeshrecError(f"{manifest_path}: cannot read ({error}); use a new folder") from None
        wanted = _manifest(synthesizer, float(eval_fraction), targets, backgrounds)
        for key in _FIXED_SETTINGS:
            if previous.get(key) != wanted[key]:
                raise MeshrecError(
                    f"{root} was made with {key}={previous.get(key)!r} but this run has {key}={wanted[key]!r}; "
                    "use the same settings to extend it, or a new folder"
                )
    else:
        foreign = [f"{split}_K.json" for split in targets if (root / f"{split}_K.json").exists()]
        if foreign:
            raise MeshrecError(
                f"{root} holds {foreign[0]} but no manifest.json: not a data set this writer made; use a new folder"
            )
    committed = {split: _committed_state(previous, split, manifest_path) for split in targets}
    for split, target in targets.items():
        if committed[split][0] > target:
            raise MeshrecError(
                f"{root} already has {committed[split][0]} {split} samples, more than the {target} that "
                f"num={num} gives; use a larger num or a new folder"
            )

    root.mkdir(parents=True, exist_ok=True)
    for split in targets:
        (root / split / "rgb").mkdir(parents=True, exist_ok=True)
        (root / split / "mask").mkdir(parents=True, exist_ok=True)
    if not previous:
        # the manifest first: label files without one would read as someone else's folder
        empty = {split: {name: 2 for name in _LABEL_NAMES} for split in targets}
        start = _manifest(synthesizer, float(eval_fraction), {split: 0 for split in targets}, backgrounds, empty)
        write_bytes_atomic(manifest_path, (json.dumps(start, indent=2) + "\n").encode())
    labels = {split: _SplitLabels(root, split, *committed[split]) for split in targets}
    clock = _PhaseClock()

    def commit() -> None:
        clock.restart()
        with _signals_deferred():
            for split_labels in labels.values():
                split_labels.append_staged()
            if hasattr(os, "sync"):
                # the workers' images and the appended labels reach the disk before the manifest
                # names them (one sync: an fsync per image cost more than rendering it)
                os.sync()
            counts = {split: labels[split].count for split in targets}
            sizes = {split: dict(labels[split].sizes) for split in targets}
            manifest = _manifest(synthesizer, float(eval_fraction), counts, backgrounds, sizes)
            write_bytes_atomic(manifest_path, (json.dumps(manifest, indent=2) + "\n").encode())
        clock.lap("commit")

    tasks = [
        (split, list(range(start, min(start + batch_size, target))))
        for split, target in targets.items()
        for start in range(labels[split].count, target, batch_size)
    ]
    total = sum(len(indices) for _, indices in tasks)
    since_commit = 0
    try:
        for split in targets:
            _remove_uncommitted_images(root, split, labels[split].count)
        with _sigterm_stops_the_run(), _chunk_results(synthesizer, root, tasks, workers) as results, tqdm(
            total=total, unit="img", desc="synth", disable=not progress
        ) as bar:
            for result in results:
                labels[result.split].stage(result.texts, result.count)
                clock.add(result.seconds, result.cpu_seconds)
                since_commit += result.count
                bar.update(result.count)
                if since_commit >= flush_every:
                    commit()
                    since_commit = 0
        commit()
    finally:
        # images of samples no commit names (an error or Ctrl-C stopped the run) are removed
        for split in targets:
            _remove_uncommitted_images(root, split, labels[split].count)
    return SynthSummary(
        root=root,
        counts={split: labels[split].count for split in targets},
        rendered=total,
        seconds=clock.seconds,
        cpu_seconds=clock.cpu_seconds,
    )


# --------------------------------------------------------------------------- on the fly


class SyntheticHandDataset(torch.utils.data.Dataset):
    """``num_samples`` synthetic :class:`~meshrec.data.sample.HandSample` rendered when asked.

    Sample ``i`` is the same every time (its randomness comes from ``(seed, i)``). Works in a
    ``DataLoader`` with workers (each worker opens its own GL context); ``__getitems__``
    renders a whole batch in one call, which ``DataLoader`` uses when it is defined.

    Args:
        num_samples: length of the data set.
        size: image side, pixels.
        seed: seed of the data set.
        model, backgrounds: as for :class:`HandSynthesizer`.
    """

    def __init__(
        self,
        num_samples: int,
        size: int = 128,
        seed: int = 0,
        *,
        model=None,
        backgrounds: str | os.PathLike | None = None,
    ) -> None:
        if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
            raise MeshrecError(f"num_samples must be a positive int, got {num_samples!r}")
        self.num_samples = num_samples
        self.synthesizer = HandSynthesizer(size=size, seed=seed, model=model, backgrounds=backgrounds)

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
