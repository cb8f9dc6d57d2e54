"""The photo style: a forearm or sleeve, blotchy skin, occluders and camera blur.

Everything here is numpy on batches already posed and placed by
:class:`~meshrec.data.synthetic.scene.HandSynthesizer`; every random number comes from the
sample's own generator (:func:`draw_photo_parameters`, drawn right after the scene's
parameters, so the labels are those of the flat style), so samples still depend on
``(seed, split, index)`` alone. None of this changes a label but the mask, which keeps its
meaning: the hand's visible pixels (not the forearm's, not under an occluder).
"""

from __future__ import annotations

import functools
from collections.abc import Sequence

import numpy as np

from meshrec.data.synthetic.backgrounds import gaussian_blur

# Joints in OpenPose order: the forearm continues the line from the middle finger's base
# through the wrist; the middle finger's bones give the hand's length.
WRIST, MIDDLE_BASE = 0, 9
MIDDLE_CHAIN = (0, 9, 10, 11, 12)
FINGERTIPS = (4, 8, 12, 16, 20)

# Forearm (or sleeve): a closed tube of rings, elliptical like the wrist at its start.
FOREARM_LENGTH = (1.5, 3.0)  # hand lengths
FOREARM_RADIUS = (0.82, 0.95)  # of the wrist's half-width (and half-thickness)
FOREARM_TAPER = (1.1, 1.35)  # radius at the far end / at the wrist (arms thicken towards the elbow)
FOREARM_INSET = 0.6  # the tube starts this many wrist half-thicknesses inside the hand (covers its opening)
FOREARM_MIN_DEPTH = 0.4  # its far end stays at least this share of the wrist's depth from the camera
FOREARM_AROUND = 20  # vertices per ring
FOREARM_SLEEVE_RINGS = 6  # rings from the cuff to the far end
SLEEVE_PROBABILITY = 0.5
SLEEVE_CUFF = (0.1, 1.2)  # hand lengths from the wrist
SLEEVE_WIDTH = (1.08, 1.3)  # sleeve radius / arm radius
# Skin: low-frequency albedo blotches (a sum of 3D waves on the surface), redder fingertips.
SKIN_BLOTCH_AMPLITUDE = (0.02, 0.06)
SKIN_BLOTCH_WAVELENGTH = (0.02, 0.07)  # metres
SKIN_BLOTCH_WAVES = 4
SKIN_BLOTCH_CHANNELS = np.array([0.6, 1.0, 1.0], np.float32)  # darker blotches are redder
FINGERTIP_REDNESS = (0.0, 0.08)  # green and blue lowered by up to this at a fingertip
FINGERTIP_RADIUS = 0.012  # metres
# Occluders: an object in front of the hand, drawn in the image.
OCCLUDER_PROBABILITY = 0.3
OCCLUDER_MAX_COVER = 0.3  # largest share of the hand's visible pixels it may cover
OCCLUDER_SIZE = (0.25, 0.7)  # half-size / the hand's projected radius
# Camera: defocus or motion blur on the whole composite, then (the writer) JPEG quality.
DEFOCUS_PROBABILITY = 0.6
DEFOCUS_SIGMA = (0.0, 1.5)  # pixels at 128 px
MOTION_PROBABILITY = 0.25  # otherwise (1 - both) sharp
MOTION_LENGTH = (1.5, 4.0)  # pixels at 128 px
JPEG_QUALITY_RANGE = (40, 95)  # inclusive


def draw_photo_parameters(rng: np.random.Generator) -> dict:
    """Every random number of one sample's photo style (drawn before its background)."""
    sleeve = rng.random() < SLEEVE_PROBABILITY
    sleeve_colour = _cloth_colour(rng)
    blur_draw = rng.random()
    occluded = rng.random() < OCCLUDER_PROBABILITY
    return {
        "forearm_length": rng.uniform(*FOREARM_LENGTH),
        "forearm_radius": rng.uniform(*FOREARM_RADIUS),
        "forearm_taper": rng.uniform(*FOREARM_TAPER),
        "sleeve": sleeve,
        "sleeve_colour": sleeve_colour,
        "sleeve_cuff": rng.uniform(*SLEEVE_CUFF),
        "sleeve_width": rng.uniform(*SLEEVE_WIDTH) if sleeve else 1.0,
        "blotch_amplitude": rng.uniform(*SKIN_BLOTCH_AMPLITUDE),
        "blotch_waves": rng.normal(size=(SKIN_BLOTCH_WAVES, 3)),
        "blotch_wavelengths": rng.uniform(*SKIN_BLOTCH_WAVELENGTH, SKIN_BLOTCH_WAVES),
        "blotch_phases": rng.uniform(0, 2 * np.pi, SKIN_BLOTCH_WAVES),
        "fingertip_redness": rng.uniform(*FINGERTIP_REDNESS),
        "occluder": _occluder_parameters(rng) if occluded else None,
        "defocus_sigma": rng.uniform(*DEFOCUS_SIGMA) if blur_draw < DEFOCUS_PROBABILITY else 0.0,
        "motion": (
            (rng.uniform(*MOTION_LENGTH), rng.uniform(0, np.pi))
            if DEFOCUS_PROBABILITY <= blur_draw < DEFOCUS_PROBABILITY + MOTION_PROBABILITY
            else None
        ),
        "jpeg_quality": int(rng.integers(JPEG_QUALITY_RANGE[0], JPEG_QUALITY_RANGE[1] + 1)),
    }


def _cloth_colour(rng: np.random.Generator) -> np.ndarray:
    """Gamma-encoded RGB of a fabric: any hue, mostly muted, dark to light."""
    hue, saturation, value = rng.uniform(0, 1), rng.uniform(0, 0.7), rng.uniform(0.1, 0.9)
    channel = (hue * 6 + np.array([0.0, 4.0, 2.0])) % 6
    pure = np.clip(np.abs(channel - 3) - 1, 0, 1)  # the hue at full saturation
    return value * (1 - saturation + saturation * pure)


def _occluder_parameters(rng: np.random.Generator) -> dict:
    return {
        "kind": int(rng.integers(3)),  # ellipse, rounded rectangle, bar (a pen, a cup's edge)
        "joint": int(rng.integers(21)),  # the occluder is placed over this keypoint...
        "outward": rng.uniform(0.2, 1.0),  # ...pushed this many of its half-sizes away from the hand
        "size": rng.uniform(*OCCLUDER_SIZE),
        "aspect": rng.uniform(0.4, 1.0),
        "angle": rng.uniform(0, np.pi),
        "colour": rng.random(3),
        "shading": rng.uniform(0.2, 0.7),  # brightness change across it (lit from one side)
        "stripes": rng.uniform(3.0, 12.0) if rng.random() < 0.3 else 0.0,
        "texture_angle": rng.uniform(0, 2 * np.pi),
    }


@functools.lru_cache(maxsize=None)
def forearm_faces(rings: int, around: int) -> np.ndarray:
    """``(F, 3)`` int64 faces of a closed tube of ``rings`` rings of ``around`` vertices plus two
    cap centres (vertex ``rings * around`` at the first ring, the next at the last)."""
    ring = np.arange(around)
    following = (ring + 1) % around
    faces = []
    for r in range(rings - 1):
        a, b = r * around + ring, r * around + following
        faces += [np.stack([a, b, b + around], 1), np.stack([a, b + around, a + around], 1)]
    first_cap, last_cap = rings * around, rings * around + 1
    faces.append(np.stack([np.full(around, first_cap), following, ring], 1))
    last = (rings - 1) * around
    faces.append(np.stack([np.full(around, last_cap), last + ring, last + following], 1))
    return np.concatenate(faces).astype(np.int64)


FOREARM_RINGS = 4 + FOREARM_SLEEVE_RINGS  # inside the hand, at the wrist, cuff (arm), cuff (sleeve), ...


def wrist_ring(faces: np.ndarray, rest_vertices: np.ndarray, rest_wrist: np.ndarray) -> np.ndarray:
    """Indices of the vertices around the hand's wrist opening: the boundary loop (edges of one
    face) nearest ``rest_wrist``; a closed mesh gives its 16 vertices nearest the wrist joint."""
    edges = np.sort(np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]]), 1)
    unique, counts = np.unique(edges, axis=0, return_counts=True)
    boundary = unique[counts == 1]
    if not len(boundary):
        return np.argsort(np.linalg.norm(rest_vertices - rest_wrist, axis=1))[:16]
    # loops: connected components of the boundary edges (a few dozen vertices)
    label = {int(v): int(v) for v in np.unique(boundary)}

    def root(v: int) -> int:
        while label[v] != v:
            v = label[v]
        return v

    for a, b in boundary:
        label[root(int(a))] = root(int(b))
    loops: dict[int, list[int]] = {}
    for v in label:
        loops.setdefault(root(v), []).append(v)
    nearest = min(loops.values(), key=lambda loop: np.linalg.norm(rest_vertices[loop].mean(0) - rest_wrist))
    return np.array(sorted(nearest), dtype=np.int64)


def forearm_vertices(vertices: np.ndarray, joints: np.ndarray, ring: np.ndarray, params: Sequence[dict]) -> np.ndarray:
    """``(B, FOREARM_RINGS * FOREARM_AROUND + 2, 3)`` float32 forearm tubes, camera frame, metres.

    The tube starts inside the hand at the centre of its wrist opening ``vertices[:, ring]``
    and runs from the middle finger's base through the wrist for ``forearm_length`` hand
    lengths (shortened so it ends in front of the camera), elliptical like the opening (a
    ``forearm_radius`` share of its half-width and half-thickness) and widening by
    ``forearm_taper``; a sleeve is ``sleeve_width`` wider from its cuff on.
    """
    batch = vertices.shape[0]
    out = np.empty((batch, FOREARM_RINGS * FOREARM_AROUND + 2, 3), np.float64)
    theta = np.arange(FOREARM_AROUND) * (2 * np.pi / FOREARM_AROUND)
    circle = np.stack([np.cos(theta), np.sin(theta)], 1)  # (around, 2)
    for b in range(batch):
        p = params[b]["photo"]
        hand = joints[b].astype(np.float64)
        direction = hand[WRIST] - hand[MIDDLE_BASE]
        direction /= max(np.linalg.norm(direction), 1e-9)
        hand_length = np.linalg.norm(np.diff(hand[list(MIDDLE_CHAIN)], axis=0), axis=1).sum()
        opening = vertices[b, ring].astype(np.float64)
        centre = opening.mean(0)
        flat = opening - centre
        flat -= (flat @ direction)[:, None] * direction  # in the plane across the arm
        _, _, axes = np.linalg.svd(flat, full_matrices=False)
        width_axis = axes[0] - (axes[0] @ direction) * direction
        width_axis /= max(np.linalg.norm(width_axis), 1e-9)
        depth_axis = np.cross(direction, width_axis)
        half_width = np.abs(flat @ width_axis).max() * p["forearm_radius"]
        half_depth = max(np.abs(flat @ depth_axis).max(), 0.3 * half_width) * p["forearm_radius"]
        length = p["forearm_length"] * hand_length
        if direction[2] < 0:  # towards the camera: end in front of it
            length = min(length, (1 - FOREARM_MIN_DEPTH) * centre[2] / -direction[2])
        cuff = min(p["sleeve_cuff"] * hand_length, 0.7 * length)
        inset = FOREARM_INSET * half_depth
        positions = np.concatenate([[-inset, 0.0, cuff, cuff], np.linspace(cuff, length, FOREARM_SLEEVE_RINGS + 1)[1:]])
        scale = 1 + (p["forearm_taper"] - 1) * np.clip(positions / length, 0, 1)
        scale[3:] *= p["sleeve_width"]
        # the cross-section rounds off away from the wrist (the forearm is rounder than the wrist)
        roundness = np.clip(positions / length, 0, 1)
        depth_radius = half_depth + (half_width - half_depth) * 0.5 * roundness
        offsets = (
            (scale * half_width)[:, None, None] * circle[None, :, :1] * width_axis
            + (scale * depth_radius)[:, None, None] * circle[None, :, 1:] * depth_axis
        )  # (rings, around, 3)
        tube = centre + positions[:, None, None] * direction + offsets
        out[b, :-2] = tube.reshape(-1, 3)
        out[b, -2] = centre + positions[0] * direction
        out[b, -1] = centre + positions[-1] * direction
    return out.astype(np.float32)


def forearm_albedo(skin: np.ndarray, params: Sequence[dict]) -> np.ndarray:
    """``(B, forearm vertices, 3)`` float32 albedo: the skin's, the sleeve's colour from the cuff on."""
    batch = skin.shape[0]
    albedo = np.repeat(skin[:, None, :], FOREARM_RINGS * FOREARM_AROUND + 2, axis=1).astype(np.float32)
    for b in range(batch):
        p = params[b]["photo"]
        if p["sleeve"]:
            albedo[b, 3 * FOREARM_AROUND : FOREARM_RINGS * FOREARM_AROUND] = p["sleeve_colour"]
            albedo[b, -1] = p["sleeve_colour"]
    return albedo


def skin_albedo(positions: np.ndarray, joints: np.ndarray, skin: np.ndarray, params: Sequence[dict]) -> np.ndarray:
    """``(B, N, 3)`` float32: the skin colour ``skin`` (B, 3) varied in blotches at ``positions``
    (B, N, 3) (hand and forearm: the pattern runs on across the wrist), redder near fingertips."""
    photos = [p["photo"] for p in params]
    local = positions - joints[:, WRIST : WRIST + 1]  # (B, N, 3)
    waves = np.stack([p["blotch_waves"] / np.linalg.norm(p["blotch_waves"], axis=1, keepdims=True) for p in photos])
    waves *= (2 * np.pi / np.stack([p["blotch_wavelengths"] for p in photos]))[..., None]  # (B, W, 3)
    phases = np.stack([p["blotch_phases"] for p in photos]).astype(np.float32)[:, None, :]
    amplitude = np.array([2 * p["blotch_amplitude"] for p in photos], np.float32)[:, None]
    variation = np.cos(np.matmul(local, waves.transpose(0, 2, 1).astype(np.float32)) + phases).mean(-1) * amplitude
    # squared distance to the nearest fingertip, on x, y, z planes (numpy is slow over a last axis of 3)
    tips = joints[:, list(FINGERTIPS)]  # (B, 5, 3)
    nearest = np.full(positions.shape[:2], np.inf, np.float32)
    for t in range(len(FINGERTIPS)):
        offset = positions - tips[:, t : t + 1]
        nearest = np.minimum(nearest, np.einsum("bnk,bnk->bn", offset, offset))
    redness = np.array([p["fingertip_redness"] for p in photos], np.float32)[:, None]
    redness = redness * np.exp(-nearest / np.float32(FINGERTIP_RADIUS**2))
    factor = 1 + variation[..., None] * SKIN_BLOTCH_CHANNELS  # (B, N, 3)
    factor[..., 1:] -= redness[..., None]
    return np.clip(skin[:, None, :] * factor, 0, 1).astype(np.float32)


def occluder_coverage(
    params: dict, keypoints: np.ndarray, radius_px: float, hand_mask: np.ndarray
) -> np.ndarray:
    """``(H, W)`` bool pixels an occluder covers: placed over keypoint ``params['joint']`` (``keypoints``
    (21, 2) pixels), pushed away from the hand's centre, shrunk until it covers at most
    ``OCCLUDER_MAX_COVER`` of ``hand_mask``'s pixels."""
    size = hand_mask.shape[0]
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    centre_hand = keypoints.mean(0)
    away = keypoints[params["joint"]] - centre_hand
    away /= max(float(np.linalg.norm(away)), 1e-6)
    hand_pixels = max(int(hand_mask.sum()), 1)
    half = params["size"] * radius_px
    cos, sin = np.cos(params["angle"]), np.sin(params["angle"])
    for _ in range(6):
        centre = keypoints[params["joint"]] + away * params["outward"] * half
        dx, dy = cols - centre[0], rows - centre[1]
        along, across = cos * dx + sin * dy, -sin * dx + cos * dy
        if params["kind"] == 0:
            covered = (along / half) ** 2 + (across / (half * params["aspect"])) ** 2 < 1
        elif params["kind"] == 1:
            covered = (np.abs(along) < half) & (np.abs(across) < half * params["aspect"])
        else:  # a bar through the image
            covered = np.abs(across) < 0.4 * half * params["aspect"]
        share = (covered & hand_mask).sum() / hand_pixels
        if share <= OCCLUDER_MAX_COVER:
            break
        half *= 0.8 * np.sqrt(OCCLUDER_MAX_COVER / share)
    return covered


def occluder_fill(params: dict, size: int) -> np.ndarray:
    """``(size, size, 3)`` float32 colours of an occluder in [0, 255]: its colour, shaded across, maybe striped."""
    position = np.arange(size, dtype=np.float32) / size
    angle = params["texture_angle"]
    along = np.float32(np.cos(angle)) * position[None, :] + np.float32(np.sin(angle)) * position[:, None]
    factor = 1 + np.float32(params["shading"]) * (along - np.float32(0.5))
    if params["stripes"]:
        factor = factor * (1 + np.float32(0.25) * np.sign(np.sin(np.float32(params["stripes"] * 2 * np.pi) * along)))
    return np.clip(factor[..., None] * (params["colour"].astype(np.float32) * 255.0), 0, 255)


def camera_blur(image: np.ndarray, params: dict) -> np.ndarray:
    """``(H, H, 3)`` float32: ``image`` defocused (Gaussian) or motion-blurred (a short line), or as it is."""
    scale = image.shape[0] / 128.0
    if params["motion"] is not None:
        length, angle = params["motion"]
        steps = max(int(np.ceil(length * scale)), 1) + 1
        offsets = np.linspace(-0.5, 0.5, steps)[:, None] * length * scale * np.array([np.cos(angle), np.sin(angle)])
        shifts = np.round(offsets).astype(int)
        pad = int(np.abs(shifts).max())
        padded = np.pad(image, ((pad, pad), (pad, pad), (0, 0)), mode="edge")
        size = image.shape[0]
        total = np.zeros_like(image)
        for dx, dy in shifts:
            total += padded[pad + dy : pad + dy + size, pad + dx : pad + dx + size]
        return total / np.float32(len(shifts))
    return gaussian_blur(image, params["defocus_sigma"] * scale)
