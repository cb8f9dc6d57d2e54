"""One batch of synthetic samples by ``(split, index)``: hand, camera, lighting, render, composite.

:class:`HandSynthesizer` samples each hand (side, pose, shape, view, lighting, skin tone),
poses the MANO-format model, places the camera, bakes the shading into vertex colours,
renders with the GL renderer and composites the render over a random background plus
sensor noise. Every random number of sample ``i`` comes from ``(seed, split, i)`` alone.

Two styles (``STYLES``): ``'flat'``, the hand alone over noise, gradient or sinusoid
backgrounds; ``'photo'`` (see :mod:`meshrec.data.synthetic.photo`), the same hands and
labels (the mask aside: it leaves out the forearm and occluders) with a forearm or sleeve,
blotchy skin, cluttered scene backgrounds, occluders and camera blur; the writer also encodes its
images at a random JPEG quality (the on-the-fly dataset does not).
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

import meshrec.data.synthetic.photo as photo
from meshrec.data.synthetic.backgrounds import list_background_images, make_background, make_scene_background
from meshrec.data.synthetic.timing import PhaseClock
from meshrec.errors import MeshrecError
from meshrec.geometry.camera import default_intrinsics, project_points
from meshrec.geometry.normals import vertex_normals

_PLACEMENT_ITERATIONS = 4

# "2": brighter, gamma-correct skin shading; vectorised backgrounds and sensor noise (labels as in "1")
GENERATOR_VERSION = "2"
STYLES = ("flat", "photo")
# the version each style's records carry: the photo style started at "3" (the flat style's stay "2")
GENERATOR_VERSIONS = {"flat": GENERATOR_VERSION, "photo": "3"}
# The split is part of every sample's seed; the on-the-fly dataset draws from its own stream.
SPLIT_CODES = {"training": 0, "evaluation": 1, "online": 2}
GEOMETRY_QUANTUM = 1e-7  # metres / radians: posed geometry is rounded to this
POSE_BLOCK = 64  # samples whose pose angles and global rotations are drawn together
POSE_BLOCK_CACHE = 2048  # blocks kept (~12 kB each): a shuffled on-the-fly set draws each once

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
        jpeg_quality: B JPEG qualities for the writer's images (photo style), or None (the
            writer's default).
    """

    rgb: np.ndarray
    mask: np.ndarray
    K: np.ndarray
    joints: np.ndarray
    vertices: np.ndarray
    mano: np.ndarray
    sides: list[str]
    jpeg_quality: list[int] | None = None


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
        style: ``'flat'`` or ``'photo'`` (``STYLES``; see the module docstring). A sample's
            labels other than the mask do not depend on it.
    """

    def __init__(
        self,
        size: int = 128,
        seed: int = 0,
        model=None,
        backgrounds: str | os.PathLike | None = None,
        style: str = "flat",
    ) -> None:
        from manolayer import ManoLayer, load_mano, mirror_model
        from manolayer.sampler import hand_axes

        if isinstance(size, bool) or not isinstance(size, int) or size < 16:
            raise MeshrecError(f"size must be an int >= 16 pixels, got {size!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise MeshrecError(f"seed must be a non-negative int, got {seed!r}")
        if style not in STYLES:
            raise MeshrecError(f"style must be one of {STYLES}, got {style!r}")
        self.style = style
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
        if style == "photo":
            # the mirror image keeps the vertex numbering: one wrist opening serves both sides
            self.wrist_ring = photo.wrist_ring(self.faces.numpy(), np.asarray(right.v_template), np.asarray(right.rest_joints[0]))
            arm_faces = photo.forearm_faces(photo.FOREARM_RINGS, photo.FOREARM_AROUND)
            self.arm_faces = torch.from_numpy(arm_faces)
            self.photo_faces = torch.cat([self.faces, self.arm_faces + right.num_vertices])
        self.background_images = list_background_images(backgrounds)
        self._renderer = None
        self._block_cache: dict = {}

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
            if len(self._block_cache) >= POSE_BLOCK_CACHE:  # drop the oldest: writers run in order,
                del self._block_cache[next(iter(self._block_cache))]  # shuffled training loaders do not
            self._block_cache[key] = (angles, orients)
        return self._block_cache[key]

    def render(self, split: str, indices: Sequence[int]) -> SynthBatch:
        """Render samples ``indices`` of ``split`` (``'training'``, ``'evaluation'`` or ``'online'``)."""
        return self._render(split, indices, PhaseClock())

    def _render(self, split: str, indices: Sequence[int], clock: PhaseClock) -> SynthBatch:
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
            if self.style == "photo":
                params[-1]["photo"] = photo.draw_photo_parameters(rng)
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
        K = torch.stack([default_intrinsics(size, p["fov_deg"]) for p in params])  # (B, 3, 3)
        focal = K[:, 0, 0]
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
        mano = torch.cat([global_orient, hand_pose, betas_t, transl], dim=1).float()
        clock.lap("pose")

        if self.style == "photo":
            return self._render_photo(vertices, joints, K, mano, sides, params, rngs, clock)
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

    def _render_photo(self, vertices, joints, K, mano, sides, params, rngs, clock: PhaseClock) -> SynthBatch:
        """The photo style's shading, render and composite of posed, placed hands (see ``photo``)."""
        size = self.size
        vertices_np, joints_np = vertices.numpy(), joints.numpy()
        arm = photo.forearm_vertices(vertices_np, joints_np, self.wrist_ring, params)
        scene = np.concatenate([vertices_np, arm], axis=1)
        skin = np.stack([p["skin"] for p in params]).astype(np.float32)
        albedo = photo.skin_albedo(scene, joints_np, skin, params)
        sleeve = photo.forearm_albedo(skin, params)
        worn = np.array([p["photo"]["sleeve"] for p in params])
        albedo[worn, vertices_np.shape[1] :] = sleeve[worn] * (albedo[worn, vertices_np.shape[1] :] / skin[worn, None])
        colours = self._vertex_colours(scene, params, faces=self.photo_faces, albedo=albedo)
        clock.lap("shade")
        # hand and forearm in one pass; the forearm alone tells which of its pixels are the arm's
        rendered = self.renderer.render(scene, self.photo_faces, K, size, colors=colours, ambient=1.0, specular=0.0)
        arm_only = self.renderer.render(arm, self.arm_faces, K, size, colors=np.full(3, 0.5, np.float32), ambient=1.0, specular=0.0)
        arm_in_front = arm_only.mask & (arm_only.depth <= rendered.depth)
        hand_mask = rendered.mask & ~arm_in_front
        clock.lap("render")
        backgrounds = np.stack([make_scene_background(rng, size, self.background_images) for rng in rngs])
        clock.lap("background")
        backgrounds *= 255.0
        composite = np.where(np.repeat(rendered.mask[..., None], 3, axis=-1), rendered.rgb, backgrounds)
        K_np = K.numpy()
        keypoints = project_points(joints, K).numpy()  # where occluders go
        bank = _noise_bank()
        pixels = composite[0].size
        for b, p in enumerate(params):
            occluder = p["photo"]["occluder"]
            if occluder is not None:
                covered = photo.occluder_coverage(occluder, keypoints[b], p["radius_px"], hand_mask[b])
                composite[b] = np.where(covered[..., None], photo.occluder_fill(occluder, size), composite[b])
                hand_mask[b] &= ~covered
            composite[b] = photo.camera_blur(composite[b], p["photo"])
            offset = p["noise_seed"] % (bank.size - pixels)
            composite[b] += bank[offset : offset + pixels].reshape(composite[b].shape) * np.float32(255.0 * p["noise"])
        composite += 0.5
        np.clip(composite, 0.0, 255.0, out=composite)
        clock.lap("composite")
        return SynthBatch(
            rgb=composite.astype(np.uint8),
            mask=hand_mask,
            K=K_np,
            joints=joints_np,
            vertices=vertices_np,
            mano=mano.numpy(),
            sides=sides,
            jpeg_quality=[p["photo"]["jpeg_quality"] for p in params],
        )

    def _vertex_colours(
        self, vertices: np.ndarray, params: Sequence[dict], faces=None, albedo: np.ndarray | None = None
    ) -> np.ndarray:
        """``(B, V, 3)`` float32 shaded, gamma-encoded colours in [0, 1] of ``(B, V, 3)`` vertices.

        Lighting is baked into per-vertex colours (the renderer takes one light per call, the
        samples each have their own); the renderer then only interpolates them. Shading is
        linear light (ambient, a key light's Lambert term, a fill light from the camera),
        encoded with ``DISPLAY_GAMMA`` as a camera would (a half-lit surface shows at 73 %
        of its lit colour, not 50 %), plus a soft sheen. Computed on x, y, z planes
        ``(3, B, V)``: numpy is slow at broadcasting over a last axis of 3. ``faces``: the
        mesh's (default: the hand's); ``albedo``: ``(B, V, 3)`` per vertex (default: each
        sample's skin colour).
        """
        planes = np.ascontiguousarray(vertices.transpose(2, 0, 1))  # (3, B, V)
        normals = np.ascontiguousarray(vertex_normals(vertices, self.faces if faces is None else faces).transpose(2, 0, 1))
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
        if albedo is None:
            albedo_planes = np.stack([p["skin"] for p in params]).astype(np.float32).T[:, :, None]  # (3, B, 1)
        else:
            albedo_planes = albedo.transpose(2, 0, 1)  # (3, B, V)
        colours = albedo_planes * shade + highlight  # (3, B, V)
        return np.clip(colours, 0.0, 1.0).transpose(1, 2, 0)

    def _scene_parameters(self, rng: np.random.Generator) -> dict:
        size = self.size
        fov_deg = rng.uniform(*FOV_DEG_RANGE)
        # towards the key light: from the camera's side of the hand, up to 68 degrees off its axis
        light = np.array([rng.uniform(-1, 1), rng.uniform(-1, 1), -rng.uniform(*KEY_LIGHT_DEPTH_RANGE)])
        tone = rng.uniform(0, len(SKIN_TONES) - 1)
        low = int(tone)
        high = min(low + 1, len(SKIN_TONES) - 1)
        skin = SKIN_TONES[low] + (tone - low) * (SKIN_TONES[high] - SKIN_TONES[low])
        skin = np.clip(skin * rng.uniform(*SKIN_CHANNEL_JITTER, 3), 0, 1)  # a little hue variation
        return {
            "fov_deg": fov_deg,
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
