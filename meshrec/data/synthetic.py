"""Synthetic hand images with full labels: a writer of the FreiHAND layout and an on-the-fly dataset.

Each sample is a MANO-format hand (both sides) in a pose from ``manolayer``'s anatomical
sampler (``mode='mixture'``), with random shape (the model's non-zero shape components in
``[-2, 2]``), a uniformly random global rotation, a random focal length and a camera
distance that makes the hand fill roughly 60-100 % of the crop (shifted so some hands are
cut by the border), random lighting and skin tone, over a random background (blurred
noise, gradients, sums of sinusoids, or crops of user images). The composite is
``mask * render + (1 - mask) * background`` plus mild sensor noise.

Every random number of sample ``i`` of a split comes from ``(seed, split, i)`` alone, so a
sample does not depend on batching, on how many samples are made, or on resuming: labels
and masks are identical, an image may differ in an edge pixel (float32 rounding inside a
render batch).

:func:`write_synthetic_dataset` writes what :class:`~meshrec.data.freihand.FreiHandDataset`
reads (one colour version), plus ``S_side.json`` (``'right'``/``'left'`` per sample,
FreiHAND has no side field) and ``manifest.json``. The ``mano`` labels are
``[global_orient (3), hand_pose (45), betas (10), transl (3)]`` for the sample's own side
model with a *flat* mean pose (``flat_hand_mean=True``, axis-angle, no PCA), such that
``ManoLayer(side=side, flat_hand_mean=True, use_pca=False)`` gives back ``verts``/``xyz``.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
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

GENERATOR_VERSION = "1"
# The split is part of every sample's seed; the on-the-fly dataset draws from its own stream.
SPLIT_CODES = {"training": 0, "evaluation": 1, "online": 2}
JPEG_QUALITY = 95
LABEL_DECIMALS = 6  # micrometres / 1e-6 rad: below any label's accuracy, keeps the JSON short
DEFAULT_BATCH_SIZE = 64
DEFAULT_FLUSH_EVERY = 1024
GEOMETRY_QUANTUM = 1e-7  # metres / radians: posed geometry is rounded to this
POSE_BLOCK = 64  # samples whose pose angles and global rotations are drawn together  # samples between label rewrites (each rewrite writes every label so far)
_IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp")

# Sampling ranges (what makes the data set look as it does).
BETA_RANGE = 2.0
FOV_DEG_RANGE = (20.0, 50.0)
HAND_RADIUS_FRACTION = (0.3, 0.5)  # hand's projected radius / image side
CENTRE_SHIFT_FRACTION = 0.12  # hand centre moves this fraction of the side from the image centre
AMBIENT_RANGE = (0.25, 0.6)
SENSOR_NOISE_MAX = 0.03
# Albedo of skin from light to dark (linear RGB in [0, 1]); a sample interpolates two neighbours.
SKIN_TONES = np.array(
    [
        [0.95, 0.80, 0.70],
        [0.87, 0.67, 0.55],
        [0.78, 0.57, 0.44],
        [0.62, 0.43, 0.31],
        [0.45, 0.30, 0.21],
        [0.30, 0.20, 0.14],
    ]
)


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


def _smooth_noise(rng: np.random.Generator, size: int, channels: int) -> np.ndarray:
    """``(size, size, channels)`` in [0, 1]: random noise at a random scale, bicubically enlarged."""
    from PIL import Image

    cells = int(rng.integers(3, 33))
    coarse = rng.random((cells, cells, channels)) * 255.0
    layers = [
        np.asarray(Image.fromarray(coarse[..., c].astype(np.float32), mode="F").resize((size, size), Image.BICUBIC))
        for c in range(channels)
    ]
    return np.clip(np.stack(layers, axis=-1) / 255.0, 0.0, 1.0)


def _random_colour(rng: np.random.Generator) -> np.ndarray:
    return rng.random(3)


def make_background(rng: np.random.Generator, size: int, images: Sequence[Path] = ()) -> np.ndarray:
    """One ``(size, size, 3)`` float32 background in [0, 1] drawn from ``rng``.

    Kinds (equally likely; the last only when ``images`` are given): coloured smooth noise,
    a linear gradient between two colours, a sum of sinusoids between two colours, a random
    crop of one of ``images``.
    """
    kinds = 4 if images else 3
    kind = int(rng.integers(kinds))
    if kind == 0:
        background = _smooth_noise(rng, size, 3)
        # pull the colours toward a random tint so not every noise image is grey on average
        background = 0.5 * background + 0.5 * _random_colour(rng) * background.mean()
        background = background * rng.uniform(0.6, 1.6)
    elif kind in (1, 2):
        low, high = _random_colour(rng), _random_colour(rng)
        rows, cols = np.mgrid[0:size, 0:size].astype(np.float64) / size
        angle = rng.uniform(0, 2 * np.pi)
        along = np.cos(angle) * cols + np.sin(angle) * rows
        if kind == 1:
            t = (along - along.min()) / max(along.max() - along.min(), 1e-9)
        else:
            t = np.zeros_like(along)
            for _ in range(int(rng.integers(2, 6))):
                direction = rng.uniform(0, 2 * np.pi)
                frequency = rng.uniform(1.0, 12.0) * 2 * np.pi
                t += np.sin(frequency * (np.cos(direction) * cols + np.sin(direction) * rows) + rng.uniform(0, 2 * np.pi))
            t = (t - t.min()) / max(t.max() - t.min(), 1e-9)
        background = low + t[..., None] * (high - low)
        background = background + 0.15 * (_smooth_noise(rng, size, 1) - 0.5)
    else:
        background = _image_crop(rng, size, images)
    return np.clip(background, 0.0, 1.0).astype(np.float32)


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
        self._vertex_faces = scipy.sparse.csr_matrix(
            (np.ones(faces.size, dtype=np.float32), (faces.ravel(), np.repeat(np.arange(len(faces)), 3))),
            shape=(right.num_vertices, len(faces)),
        )
        self._renderer = None
        self._block_cache: dict = {}

    def _vertex_normals(self, vertices: torch.Tensor) -> torch.Tensor:
        """``(B, V, 3)`` unit area-weighted vertex normals (outward for the models' winding)."""
        corners = vertices[:, self.faces]  # (B, F, 3 corners, 3)
        face_normals = torch.linalg.cross(corners[:, :, 1] - corners[:, :, 0], corners[:, :, 2] - corners[:, :, 0])
        batch, num_faces = face_normals.shape[:2]
        stacked = face_normals.permute(1, 0, 2).reshape(num_faces, batch * 3).numpy()
        summed = torch.from_numpy(np.asarray(self._vertex_faces @ stacked)).reshape(-1, batch, 3).permute(1, 0, 2)
        return summed / summed.norm(dim=-1, keepdim=True).clamp_min(1e-12)

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
        from manolayer.sampler import angles_to_hand_pose

        if split not in SPLIT_CODES:
            raise MeshrecError(f"split must be one of {tuple(SPLIT_CODES)}, got {split!r}")
        indices = [int(i) for i in indices]
        if not indices or min(indices) < 0:
            raise MeshrecError(f"indices must be a non-empty list of non-negative ints, got {indices!r}")
        size, batch = self.size, len(indices)
        sides, angles, orients, betas, params, backgrounds = [], [], [], [], [], []
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
            backgrounds.append(make_background(rng, size, self.background_images))
        global_orient = torch.stack(orients).double()
        betas_t = torch.as_tensor(np.stack(betas), dtype=torch.float64)
        angles = torch.stack(angles).double()

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

        # Lighting is baked into per-vertex colours (the renderer takes one light per call,
        # the samples each have their own); the renderer then only interpolates them.
        normals = self._vertex_normals(vertices)
        # a visible surface faces the camera: turn normals that point away (the far side,
        # or a winding that points them inward) toward it, as the renderer does per pixel
        facing = (normals * vertices).sum(-1, keepdim=True) > 0
        normals = torch.where(facing, -normals, normals)
        light = torch.tensor(np.stack([p["light"] for p in params]), dtype=torch.float32)
        ambient = torch.tensor([p["ambient"] for p in params])[:, None]
        lambert = (normals @ light[:, :, None])[..., 0].clamp_min(0.0)
        albedo = torch.tensor(np.stack([p["skin"] for p in params]), dtype=torch.float32)
        colours = albedo[:, None] * (ambient + (1 - ambient) * lambert)[..., None]
        rendered = self.renderer.render(
            vertices, self.faces, K, size, colors=colours.clamp(0, 1), ambient=1.0, specular=0.0
        )

        mask = rendered.mask
        composite = np.where(mask[..., None], rendered.rgb.astype(np.float32) / 255.0, np.stack(backgrounds))
        for b, p in enumerate(params):
            noise_rng = np.random.default_rng(p["noise_seed"])
            composite[b] += noise_rng.normal(0.0, p["noise"], composite[b].shape).astype(np.float32)
        rgb = np.clip(composite * 255.0 + 0.5, 0, 255).astype(np.uint8)
        mano = torch.cat([global_orient, hand_pose, betas_t, transl], dim=1).float()
        return SynthBatch(
            rgb=rgb,
            mask=mask,
            K=K.numpy(),
            joints=joints.numpy(),
            vertices=vertices.numpy(),
            mano=mano.numpy(),
            sides=sides,
        )

    def _scene_parameters(self, rng: np.random.Generator) -> dict:
        size = self.size
        fov = math.radians(rng.uniform(*FOV_DEG_RANGE))
        light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), -rng.uniform(0.2, 1.0)])  # towards the light
        tone = rng.uniform(0, len(SKIN_TONES) - 1)
        low = int(tone)
        high = min(low + 1, len(SKIN_TONES) - 1)
        skin = SKIN_TONES[low] + (tone - low) * (SKIN_TONES[high] - SKIN_TONES[low])
        skin = np.clip(skin * rng.uniform(0.9, 1.1, 3), 0, 1)
        return {
            "focal": size / (2 * math.tan(fov / 2)),
            "radius_px": rng.uniform(*HAND_RADIUS_FRACTION) * size,
            "shift_px": rng.uniform(-CENTRE_SHIFT_FRACTION, CENTRE_SHIFT_FRACTION, 2) * size,
            "light": light / np.linalg.norm(light),
            "ambient": rng.uniform(*AMBIENT_RANGE),
            "skin": skin,
            "noise": rng.uniform(0, SENSOR_NOISE_MAX),
            "noise_seed": int(rng.integers(2**32)),
        }


# --------------------------------------------------------------------------- writing the FreiHAND layout


@dataclass(frozen=True)
class SynthSummary:
    """What :func:`write_synthetic_dataset` did: samples per split now present, and how many it rendered."""

    root: Path
    counts: dict[str, int]
    rendered: int


def split_counts(num: int, eval_fraction: float) -> dict[str, int]:
    """``{'training': n_train, 'evaluation': n_eval}`` with ``n_eval = round(num * eval_fraction)``."""
    evaluation = int(math.floor(num * eval_fraction + 0.5))
    return {"training": num - evaluation, "evaluation": evaluation}


def _label_text(array: np.ndarray) -> str:
    return json.dumps(np.round(np.asarray(array, dtype=np.float64), LABEL_DECIMALS).tolist(), separators=(",", ":"))


_LABEL_NAMES = ("K", "xyz", "verts", "mano", "side")


class _SplitLabels:
    """Per-sample JSON texts of one split's label files, rewritten whole (atomically) on flush."""

    def __init__(self, root: Path, split: str) -> None:
        self.paths = {name: root / f"{split}_{name}.json" for name in _LABEL_NAMES}
        self.entries: dict[str, list[str]] = {name: [] for name in _LABEL_NAMES}
        loaded = {}
        for name, path in self.paths.items():
            if path.is_file():
                try:
                    loaded[name] = json.loads(path.read_text(encoding="utf-8"))
                except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
                    raise MeshrecError(f"{path}: cannot read labels to resume ({error}); use a new folder") from None
            else:
                loaded[name] = []
        # a sample counts as done only if every label file has it (files are rewritten one by one)
        done = min(len(entries) for entries in loaded.values())
        for name, entries in loaded.items():
            self.entries[name] = [json.dumps(e, separators=(",", ":")) for e in entries[:done]]

    def __len__(self) -> int:
        return len(self.entries["K"])

    def add(self, batch: SynthBatch, position: int) -> None:
        self.entries["K"].append(_label_text(batch.K[position]))
        self.entries["xyz"].append(_label_text(batch.joints[position]))
        self.entries["verts"].append(_label_text(batch.vertices[position]))
        self.entries["mano"].append(_label_text(batch.mano[position][None]))  # FreiHAND keeps [[61 values]]
        self.entries["side"].append(json.dumps(batch.sides[position]))

    def flush(self) -> None:
        from manolayer.io import write_bytes_atomic

        for name, path in self.paths.items():
            write_bytes_atomic(path, ("[" + ",".join(self.entries[name]) + "]").encode())


def _encode_sample(rgb: np.ndarray, mask: np.ndarray) -> tuple[bytes, bytes]:
    from PIL import Image

    image_bytes, mask_bytes = BytesIO(), BytesIO()
    Image.fromarray(rgb).save(image_bytes, format="JPEG", quality=JPEG_QUALITY)
    Image.fromarray(mask.astype(np.uint8) * 255).save(mask_bytes, format="JPEG", quality=JPEG_QUALITY)
    return image_bytes.getvalue(), mask_bytes.getvalue()


def _write_sample(root: Path, split: str, index: int, rgb: np.ndarray, mask: np.ndarray) -> None:
    from manolayer.io import write_bytes_atomic

    image_bytes, mask_bytes = _encode_sample(rgb, mask)
    # the mask first: an image without its mask would read as a sample with has_mask False
    write_bytes_atomic(root / split / "mask" / f"{index:08d}.jpg", mask_bytes)
    write_bytes_atomic(root / split / "rgb" / f"{index:08d}.jpg", image_bytes)


def _manifest(synthesizer: HandSynthesizer, eval_fraction: float, counts: dict[str, int], backgrounds) -> dict:
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
    }


# settings a resumed run must share with the first run (the same samples need the same settings)
_FIXED_SETTINGS = ("generator_version", "seed", "image_size", "eval_fraction", "model_content_hash", "num_background_images")


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
    ``evaluation``. Samples already present (by the label files) are kept; only missing
    ones are rendered, so re-running with a larger ``num`` extends the set and an
    interrupted run resumes. Images and masks are written atomically before the label
    files that list them, which are rewritten atomically every ``flush_every`` samples and
    at the end: an interruption never leaves a half-written sample.

    Raises:
        MeshrecError: bad arguments, or ``root`` holds a data set made with other settings
            (seed, size, eval_fraction, model, generator version) or with more samples.
    """
    from tqdm import tqdm

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
    labels = {split: _SplitLabels(root, split) for split in targets}
    for split, target in targets.items():
        if len(labels[split]) > target:
            raise MeshrecError(
                f"{root} already has {len(labels[split])} {split} samples, more than the {target} that "
                f"num={num} gives; use a larger num or a new folder"
            )
    pending = {split: list(range(len(labels[split]), target)) for split, target in targets.items()}
    total = sum(len(p) for p in pending.values())

    def flush() -> None:
        for split_labels in labels.values():
            split_labels.flush()
        counts = {split: len(labels[split]) for split in targets}
        from manolayer.io import write_bytes_atomic

        text = json.dumps(_manifest(synthesizer, float(eval_fraction), counts, backgrounds), indent=2) + "\n"
        write_bytes_atomic(manifest_path, text.encode())

    root.mkdir(parents=True, exist_ok=True)
    for split in targets:
        (root / split / "rgb").mkdir(parents=True, exist_ok=True)
        (root / split / "mask").mkdir(parents=True, exist_ok=True)
    since_flush = 0
    with ThreadPoolExecutor(max_workers=workers) as pool, tqdm(
        total=total, unit="img", desc="synth", disable=not progress
    ) as bar:
        for split, indices in pending.items():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                batch = synthesizer.render(split, chunk)
                # JPEG encoding releases the GIL: the pool encodes and writes while labels are formatted
                writes = [
                    pool.submit(_write_sample, root, split, index, batch.rgb[b], batch.mask[b])
                    for b, index in enumerate(chunk)
                ]
                for b in range(len(chunk)):
                    labels[split].add(batch, b)
                for write in writes:
                    write.result()
                since_flush += len(chunk)
                bar.update(len(chunk))
                if since_flush >= flush_every:
                    flush()
                    since_flush = 0
    flush()
    return SynthSummary(root=root, counts={split: len(labels[split]) for split in targets}, rendered=total)


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
