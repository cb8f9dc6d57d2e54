"""Hand crops: cut a (square) box out of an image of any size and resize it to the network
input size, returning the new intrinsics and the pixel map from the image to the crop.

Conventions (as :mod:`meshrec.geometry.camera`): pixel centres at integer coordinates, so an
image of width W spans ``[-0.5, W - 0.5]``. A box ``[x0, y0, x1, y1]`` gives the *edges*
of a region in these continuous coordinates: the whole image is
``[-0.5, -0.5, W - 0.5, H - 0.5]`` (:func:`full_image_box`). The crop maps the box edges
onto the output's edges::

    u' = (u - x0) * S_w / (x1 - x0) - 0.5        v' = (v - y0) * S_h / (y1 - y0) - 0.5

which is the 3 x 3 pixel affine ``transform`` (image pixels -> crop pixels). The camera of
the crop is ``K' = transform @ K``: a 3D point projected with ``K'`` lands where the crop
moved its projection. Boxes partly (or wholly) outside the image are fine: the outside is
filled with zeros.

Downscaling by more than a little blurs the source first (Gaussian, sigma ``(1/s - 1) / 2``
source pixels for scale s), on the cut window only, so big photos stay cheap and crops
do not alias.

This is what both the datasets (training crops) and prediction on a user's photo use, with
one choice of box (:func:`hand_crop_box`: a known box, else the visible keypoints, else the
whole image, made square and padded), one box check (:func:`check_box`) and one camera for
photos whose intrinsics are unknown (:func:`image_intrinsics_for_crop`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from meshrec.data.blur import gaussian_blur, gaussian_radius
from meshrec.data.sample import HandSample
from meshrec.errors import DatasetError, MeshrecError
from meshrec.geometry.camera import DEFAULT_FOV_DEG, default_intrinsics, image_height_width

__all__ = [
    "CropResult",
    "DEFAULT_CROP_SIZE",
    "DEFAULT_BOX_PADDING",
    "MIN_KEYPOINT_BOX_SIDE",
    "check_box",
    "check_box_padding",
    "full_image_box",
    "square_box",
    "box_from_keypoints",
    "hand_crop_box",
    "image_intrinsics_for_crop",
    "crop_transform",
    "transform_points",
    "transform_intrinsics",
    "crop_image",
    "crop_sample",
]

DEFAULT_CROP_SIZE = 128
# A box this many times the keypoint extent keeps the whole hand (tips, palm edge) in view.
DEFAULT_BOX_PADDING = 1.5
# Smallest side (pixels) of a keypoint box: keeps a box for a single or collapsed keypoint set.
MIN_KEYPOINT_BOX_SIDE = 8.0
# Below this scale (output pixels per source pixel) the source is blurred before sampling.
_ANTIALIAS_BELOW_SCALE = 0.9


@dataclass(frozen=True)
class CropResult:
    """Output of :func:`crop_image`.

    Attributes:
        image: ``(B, C, S_h, S_w)`` the crops (``(C, S_h, S_w)`` for an unbatched input).
        transform: ``(B, 3, 3)`` pixel affine, image -> crop: ``[u', v', 1] = T [u, v, 1]``.
        box: ``(B, 4)`` the box actually cut, ``[x0, y0, x1, y1]`` edges in image pixels.
        K: ``(B, 3, 3)`` intrinsics of the crops (``transform @ K``), or None if no K was given.
    """

    image: torch.Tensor
    transform: torch.Tensor
    box: torch.Tensor
    K: torch.Tensor | None


def check_box(box, *, name: str = "box", dtype: torch.dtype | None = None) -> torch.Tensor:
    """Check crop boxes and return them as a floating tensor (the one box check in meshrec).

    A box ``[x0, y0, x1, y1]`` gives the *edges* of a region in image pixels, pixel centres
    at integer coordinates (the whole ``W x H`` image is ``[-0.5, -0.5, W - 0.5, H - 0.5]``).
    It may reach outside the image; it must be finite with ``x1 > x0`` and ``y1 > y0``.

    Args:
        box: ``(4,)`` or ``(B, 4)`` (any leading dims): a tensor, array or sequence of numbers.
        name: what messages call it (``"box"``, ``"labels.jsonl record 3: box"``, ...).
        dtype: floating dtype of the result; None keeps a floating input's dtype (integers
            become torch's default dtype).

    Returns:
        ``(..., 4)`` the boxes, on the input's device (a CPU tensor for arrays and lists).

    Raises:
        MeshrecError: not numbers, a last dim other than 4, NaN / inf, or ``x1 <= x0`` /
            ``y1 <= y0``; the message shows the first bad box and how to fix it.

    >>> check_box([0, 0, 10, 5]).tolist()
    [0.0, 0.0, 10.0, 5.0]
    """
    if not isinstance(box, torch.Tensor):
        try:
            box = torch.as_tensor(box)
        except (TypeError, ValueError, RuntimeError):
            raise MeshrecError(
                f"{name} must be 4 numbers [x0, y0, x1, y1] (edges in image pixels), got {str(box)[:80]}"
            ) from None
    if box.dtype == torch.bool or box.is_complex():
        raise MeshrecError(f"{name} must hold real numbers [x0, y0, x1, y1], got dtype {box.dtype}")
    if dtype is not None:
        if not dtype.is_floating_point:
            raise TypeError(f"dtype must be a floating point dtype, got {dtype}")
        box = box.to(dtype)
    elif not box.is_floating_point():
        box = box.to(torch.get_default_dtype())
    if box.ndim == 0 or box.shape[-1] != 4:
        raise MeshrecError(
            f"{name} must have shape (4,) or (B, 4) as [x0, y0, x1, y1], got shape {tuple(box.shape)}"
        )
    finite = torch.isfinite(box).all(-1)
    if not bool(finite.all()):
        raise MeshrecError(f"{name} must be finite (no NaN or inf), got {_first_bad(box, finite, name)}")
    ordered = (box[..., 2] > box[..., 0]) & (box[..., 3] > box[..., 1])
    if not bool(ordered.all()):
        raise MeshrecError(
            f"{name} must be [x0, y0, x1, y1] with x1 > x0 and y1 > y0, got {_first_bad(box, ordered, name)}; "
            "a box given as [x, y, width, height] is [x, y, x + width, y + height]"
        )
    return box


def _first_bad(box: torch.Tensor, ok: torch.Tensor, name: str) -> str:
    """The first box where ``ok`` is False, as ``[...]`` (or ``name[i] = [...]`` when batched)."""
    if box.ndim == 1:
        return str(box.tolist())
    index = tuple(int(i) for i in torch.nonzero(~ok)[0])
    return f"{name}[{', '.join(map(str, index))}] = {box[index].tolist()}"


def check_box_padding(padding: float) -> float:
    """``padding`` (crop side / box or keypoint extent) as a float.

    Raises:
        MeshrecError: it is not a finite number > 0.
    """
    try:
        value = float(padding)
    except (TypeError, ValueError):
        value = math.nan
    if isinstance(padding, bool) or not math.isfinite(value) or value <= 0:
        raise MeshrecError(
            "box padding (crop side / box or keypoint extent) must be a finite number > 0, e.g. 1.0 for no "
            f"margin or {DEFAULT_BOX_PADDING} (the default), got {padding!r}"
        )
    return value


def full_image_box(height: int, width: int, *, dtype=torch.float32, device=None) -> torch.Tensor:
    """``(4,)`` box of a whole ``H x W`` image: ``[-0.5, -0.5, W - 0.5, H - 0.5]``.

    >>> full_image_box(480, 640).tolist()
    [-0.5, -0.5, 639.5, 479.5]
    """
    height, width = image_height_width((height, width))
    return torch.tensor([-0.5, -0.5, width - 0.5, height - 0.5], dtype=dtype, device=device)


def square_box(box: torch.Tensor, padding: float = 1.0) -> torch.Tensor:
    """Grow ``(..., 4)`` boxes (:func:`check_box`) to squares about their centres, side =
    ``padding`` times the longer side. ``padding`` must be > 0 (:func:`check_box_padding`).

    >>> square_box(torch.tensor([0.0, 0.0, 10.0, 4.0]), padding=2.0).tolist()
    [-5.0, -8.0, 15.0, 12.0]
    """
    box = check_box(box)
    padding = check_box_padding(padding)
    centre = (box[..., :2] + box[..., 2:]) / 2
    half = (box[..., 2:] - box[..., :2]).amax(-1, keepdim=True) * (padding / 2)
    return torch.cat([centre - half, centre + half], -1)


def _keypoints_and_visible(joints2d, visible, dtype: torch.dtype | None) -> tuple[torch.Tensor, torch.Tensor]:
    """``joints2d`` as a floating ``(..., N, 2)`` tensor and ``visible`` as a matching bool ``(..., N)``."""
    joints2d = torch.as_tensor(joints2d)
    if dtype is not None:
        joints2d = joints2d.to(dtype)
    elif not joints2d.is_floating_point():
        joints2d = joints2d.to(torch.get_default_dtype())
    if joints2d.ndim < 2 or joints2d.shape[-1] != 2:
        raise MeshrecError(f"joints2d must have shape (..., N, 2) as (u, v) pixels, got {tuple(joints2d.shape)}")
    if visible is None:
        visible = torch.ones(joints2d.shape[:-1], dtype=torch.bool, device=joints2d.device)
    visible = torch.as_tensor(visible, device=joints2d.device).bool()
    if visible.shape != joints2d.shape[:-1]:
        raise MeshrecError(
            f"visible must have shape {tuple(joints2d.shape[:-1])} (one flag per keypoint of joints2d "
            f"{tuple(joints2d.shape)}), got {tuple(visible.shape)}"
        )
    return joints2d, visible


def box_from_keypoints(
    joints2d: torch.Tensor,
    visible: torch.Tensor | None = None,
    padding: float = DEFAULT_BOX_PADDING,
    min_size: float = MIN_KEYPOINT_BOX_SIDE,
) -> torch.Tensor:
    """Square box around the (visible) keypoints: centred on their extent, side =
    ``padding`` times the extent's longer side (at least ``min_size`` pixels).

    Args:
        joints2d: ``(..., N, 2)`` pixels ``(u, v)``, pixel centres at integers.
        visible: ``(..., N)`` bool, keypoints to use (default all); invisible ones may hold
            anything, NaN included.
        padding: side / keypoint extent (> 0).
        min_size: smallest side in pixels (keeps a box for a single or collapsed keypoint set).

    Returns:
        ``(..., 4)`` boxes ``[x0, y0, x1, y1]``, dtype of ``joints2d`` (floating).

    Raises:
        MeshrecError: bad shapes or padding, a non-finite visible keypoint, or a sample with
            no visible keypoint (:func:`hand_crop_box` falls back to the whole image instead).

    >>> box_from_keypoints(torch.tensor([[10.0, 20.0], [30.0, 60.0]]), padding=1.5).tolist()
    [-10.0, 10.0, 50.0, 70.0]
    """
    joints2d, visible = _keypoints_and_visible(joints2d, visible, None)
    padding = check_box_padding(padding)
    if not visible.any(-1).all():
        raise MeshrecError(
            "box_from_keypoints: a sample has no visible keypoint to put a box around; "
            "use hand_crop_box, which falls back to the whole image"
        )
    if not torch.isfinite(joints2d[visible]).all():
        raise MeshrecError("joints2d has a non-finite (NaN or inf) visible keypoint: fix it or mark it invisible")
    inf = torch.finfo(joints2d.dtype).max
    low = torch.where(visible[..., None], joints2d, torch.full_like(joints2d, inf)).amin(-2)
    high = torch.where(visible[..., None], joints2d, torch.full_like(joints2d, -inf)).amax(-2)
    centre = (low + high) / 2
    half = ((high - low).amax(-1, keepdim=True) * padding).clamp(min=min_size) / 2
    return torch.cat([centre - half, centre + half], -1)


def hand_crop_box(
    image_size: int | tuple[int, int],
    *,
    box=None,
    joints2d=None,
    visible=None,
    padding: float = DEFAULT_BOX_PADDING,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """The square box a hand is cropped with (datasets and prediction alike), in order of preference:

    1. ``box``, a known hand box, grown to a square about its centre with side ``padding``
       times its longer side (:func:`square_box`);
    2. the visible ``joints2d``: a square about the centre of their extent, side ``padding``
       times the extent's longer side, at least :data:`MIN_KEYPOINT_BOX_SIDE` pixels
       (:func:`box_from_keypoints`);
    3. the whole image made square about its centre (the short side padded; ``padding``
       unused), also for each sample whose keypoints are all invisible.

    Args:
        image_size: ``H`` (square) or ``(H, W)`` of the image, pixels.
        box: ``(4,)`` or ``(B, 4)`` ``[x0, y0, x1, y1]`` edges in image pixels (:func:`check_box`).
        joints2d: ``(N, 2)`` or ``(B, N, 2)`` keypoints ``(u, v)`` in image pixels, pixel centres
            at integers (any leading dims).
        visible: ``(N,)`` / ``(B, N)`` bool, which keypoints to use (default all).
        padding: crop side / box or keypoint extent (> 0).
        dtype, device: of the result; None takes them from ``box``, else ``joints2d``, else
            float32 on the CPU.

    Returns:
        ``(..., 4)`` square boxes ``[x0, y0, x1, y1]`` (edges, image pixels; they may reach
        outside the image): shaped like ``box``, else one per keypoint set, else ``(4,)``.

    Raises:
        MeshrecError: a bad box, keypoint or visibility shape, padding or image size.

    >>> hand_crop_box((40, 60)).tolist()
    [-0.5, -10.5, 59.5, 49.5]
    >>> hand_crop_box((40, 60), box=[10, 10, 30, 20], padding=1.0).tolist()
    [10.0, 5.0, 30.0, 25.0]
    """
    height, width = image_height_width(image_size)
    padding = check_box_padding(padding)
    if box is not None:
        box = check_box(box, dtype=dtype)
        return square_box(box.to(device) if device is not None else box, padding)
    if joints2d is None:
        return square_box(full_image_box(height, width, dtype=dtype or torch.float32, device=device))
    joints2d, visible = _keypoints_and_visible(joints2d, visible, dtype)
    if device is not None:
        joints2d, visible = joints2d.to(device), visible.to(device)
    whole = square_box(full_image_box(height, width, dtype=joints2d.dtype, device=joints2d.device))
    has_keypoints = visible.any(-1, keepdim=True)  # (..., 1)
    if not bool(has_keypoints.any()):
        return whole.expand(*joints2d.shape[:-2], 4).clone()
    # samples without a visible keypoint get a (discarded) box around all of theirs, then the whole image
    usable = torch.where(has_keypoints[..., None], joints2d, torch.zeros_like(joints2d))
    keypoint_box = box_from_keypoints(usable, visible | ~has_keypoints, padding)
    return torch.where(has_keypoints, keypoint_box, whole)


def image_intrinsics_for_crop(
    box: torch.Tensor,
    output_size: int | tuple[int, int] = DEFAULT_CROP_SIZE,
    fov_deg: float = DEFAULT_FOV_DEG,
) -> torch.Tensor:
    """Intrinsics, in pixels of the *image*, of the camera assumed when the real one is unknown.

    It is the camera whose crop of ``box`` (resized to ``output_size``, :func:`crop_image`)
    has exactly :func:`~meshrec.geometry.camera.default_intrinsics` ``(output_size, fov_deg)``:
    the crop spans ``fov_deg`` across its longer side, principal point at its centre. For a
    square box of side ``s`` that is ``f = s / (2 tan(fov_deg / 2))`` with the principal point
    at the box centre ``((x0 + x1) / 2, (y0 + y1) / 2)``.

    Args:
        box: ``(4,)`` or ``(B, 4)`` ``[x0, y0, x1, y1]`` edges in image pixels (:func:`check_box`).
        output_size: ``S`` or ``(S_h, S_w)`` of the crop.
        fov_deg: field of view of the crop's longer side, degrees.

    Returns:
        ``(3, 3)`` or ``(B, 3, 3)``, dtype and device of ``box`` (computed in float64).

    >>> K = image_intrinsics_for_crop(torch.tensor([10.0, 20.0, 110.0, 120.0]), 64)
    >>> [round(v, 2) for v in K[0].tolist()], K[1, 2].item()
    ([225.54, 0.0, 60.0], 70.0)
    """
    box = check_box(box)
    K_crop = default_intrinsics(output_size, fov_deg, dtype=torch.float64, device=box.device)
    return (torch.linalg.inv(crop_transform(box.double(), output_size)) @ K_crop).to(box.dtype)


def crop_transform(box: torch.Tensor, output_size: int | tuple[int, int] = DEFAULT_CROP_SIZE) -> torch.Tensor:
    """Pixel affine that maps box ``(..., 4)`` onto an output of ``output_size`` (``S`` or ``(S_h, S_w)``).

    Returns ``(..., 3, 3)``: ``[[s_x, 0, -x0 s_x - 0.5], [0, s_y, -y0 s_y - 0.5], [0, 0, 1]]``
    with ``s_x = S_w / (x1 - x0)``, ``s_y = S_h / (y1 - y0)``.

    >>> crop_transform(torch.tensor([-0.5, -0.5, 9.5, 9.5]), 5)[0].tolist()
    [0.5, 0.0, -0.25]
    """
    box = check_box(box)
    out_h, out_w = _output_hw(output_size)
    scale_x = out_w / (box[..., 2] - box[..., 0])
    scale_y = out_h / (box[..., 3] - box[..., 1])
    transform = torch.zeros(*box.shape[:-1], 3, 3, dtype=box.dtype, device=box.device)
    transform[..., 0, 0] = scale_x
    transform[..., 0, 2] = -box[..., 0] * scale_x - 0.5
    transform[..., 1, 1] = scale_y
    transform[..., 1, 2] = -box[..., 1] * scale_y - 0.5
    transform[..., 2, 2] = 1.0
    return transform


def transform_points(points: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """Apply a ``(..., 3, 3)`` pixel affine to ``(..., N, 2)`` points -> ``(..., N, 2)``."""
    if points.shape[-1] != 2:
        raise MeshrecError(f"points must have shape (..., N, 2), got {tuple(points.shape)}")
    transform = transform.to(points)
    return torch.einsum("...ij,...nj->...ni", transform[..., :2, :2], points) + transform[..., None, :2, 2]


def transform_intrinsics(K: torch.Tensor, transform: torch.Tensor) -> torch.Tensor:
    """Intrinsics ``(..., 3, 3)`` of the image after a pixel affine ``transform``: ``transform @ K``."""
    if K.shape[-2:] != (3, 3):
        raise MeshrecError(f"K must have shape (..., 3, 3), got {tuple(K.shape)}")
    return transform.to(K) @ K


def _output_hw(output_size: int | tuple[int, int]) -> tuple[int, int]:
    if isinstance(output_size, int) and not isinstance(output_size, bool):
        out_h = out_w = output_size
    else:
        out_h, out_w = (int(s) for s in output_size)
    if out_h <= 0 or out_w <= 0:
        raise MeshrecError(f"output_size must be positive, got {output_size}")
    return out_h, out_w


def _crop_one(
    image: torch.Tensor, transform: torch.Tensor, out_hw: tuple[int, int], antialias: bool, mode: str
) -> torch.Tensor:
    """Warp one ``(C, H, W)`` image with a ``(3, 3)`` image->crop affine into ``(C, S_h, S_w)``."""
    from kornia.geometry.transform import warp_affine

    channels, height, width = image.shape
    out_h, out_w = out_hw
    inverse = torch.linalg.inv(transform.double())
    # Source region the output covers (its four corners mapped back), plus a blur margin.
    corners = torch.tensor(
        [[-0.5, -0.5, 1.0], [out_w - 0.5, -0.5, 1.0], [-0.5, out_h - 0.5, 1.0], [out_w - 0.5, out_h - 0.5, 1.0]],
        dtype=torch.float64,
        device=transform.device,
    )
    source = corners @ inverse.T
    scale = float(torch.sqrt(torch.abs(torch.linalg.det(transform.double()[:2, :2]))))
    sigma = (1.0 / scale - 1.0) / 2.0 if (antialias and scale < _ANTIALIAS_BELOW_SCALE) else 0.0
    margin = gaussian_radius(sigma) + 2 if sigma > 0 else 2
    col0 = max(0, math.floor(float(source[:, 0].min())) - margin)
    col1 = min(width, math.ceil(float(source[:, 0].max())) + margin + 1)
    row0 = max(0, math.floor(float(source[:, 1].min())) - margin)
    row1 = min(height, math.ceil(float(source[:, 1].max())) + margin + 1)
    if col1 <= col0 or row1 <= row0:  # the box lies wholly outside the image
        return image.new_zeros(channels, out_h, out_w)
    window = image[None, :, row0:row1, col0:col1]
    if sigma > 0:
        window = gaussian_blur(window, sigma)
    offset = torch.eye(3, dtype=transform.dtype, device=transform.device)
    offset[0, 2], offset[1, 2] = col0, row0
    window_to_crop = (transform @ offset).to(image.dtype)
    return warp_affine(
        window, window_to_crop[None, :2], (out_h, out_w), mode=mode, padding_mode="zeros", align_corners=True
    )[0]


def crop_image(
    image: torch.Tensor,
    box: torch.Tensor,
    output_size: int | tuple[int, int] = DEFAULT_CROP_SIZE,
    K: torch.Tensor | None = None,
    *,
    square: bool = True,
    antialias: bool = True,
    mode: str = "bilinear",
) -> CropResult:
    """Cut ``box`` out of ``image`` and resize it to ``output_size``.

    Args:
        image: ``(B, C, H, W)`` or ``(C, H, W)``, any size, any channels (RGB, masks).
        box: ``(B, 4)`` or ``(4,)`` ``[x0, y0, x1, y1]`` edges in image pixels (may reach
            outside the image: the outside reads as zeros).
        output_size: ``S`` or ``(S_h, S_w)``.
        K: ``(B, 3, 3)`` or ``(3, 3)`` intrinsics of ``image`` (optional). For a photo whose
            camera is unknown, leave it out and use
            :func:`meshrec.geometry.camera.default_intrinsics` ``(output_size)`` as the crop's K.
        square: first grow the box to a square about its centre (with a square output this
            keeps pixels square, so ``fx == fy`` stays true).
        antialias: blur before downscaling (see the module docstring).
        mode: ``'bilinear'`` or ``'nearest'``.

    Returns:
        :class:`CropResult` (image batched like the input; transform, box, K batched).
        Map crop pixels back to the image with
        ``transform_points(points, torch.linalg.inv(result.transform))``.
    """
    if not isinstance(image, torch.Tensor) or image.ndim not in (3, 4):
        raise MeshrecError(f"image must be (B, C, H, W) or (C, H, W), got {getattr(image, 'shape', type(image))}")
    if not image.is_floating_point():
        raise TypeError(f"image must be a floating point tensor (e.g. RGB in [0, 1]), got {image.dtype}")
    unbatched = image.ndim == 3
    images = image[None] if unbatched else image
    batch = images.shape[0]
    box = check_box(box, dtype=torch.float64 if images.dtype == torch.float64 else torch.float32).to(images.device)
    boxes = box.expand(batch, 4) if box.ndim == 1 else box
    if boxes.shape != (batch, 4):
        raise MeshrecError(f"box must have shape ({batch}, 4) or (4,), got {tuple(box.shape)}")
    if square:
        boxes = square_box(boxes)
    out_hw = _output_hw(output_size)
    transforms = crop_transform(boxes, out_hw)
    crops = torch.stack([_crop_one(images[b], transforms[b], out_hw, antialias, mode) for b in range(batch)])
    K_crop = None
    if K is not None:
        K = torch.as_tensor(K)
        K_batched = K.expand(batch, 3, 3) if K.ndim == 2 else K
        if K_batched.shape != (batch, 3, 3):
            raise MeshrecError(f"K must have shape ({batch}, 3, 3) or (3, 3), got {tuple(K.shape)}")
        K_crop = transform_intrinsics(K_batched, transforms)
    return CropResult(image=crops[0] if unbatched else crops, transform=transforms, box=boxes, K=K_crop)


def crop_sample(
    sample: HandSample,
    output_size: int = DEFAULT_CROP_SIZE,
    box: torch.Tensor | None = None,
    padding: float = DEFAULT_BOX_PADDING,
) -> HandSample:
    """Crop a :class:`HandSample` around its hand and resize it to ``output_size``.

    The box is :func:`hand_crop_box`'s: ``box`` (grown to a square, times ``padding``), else
    the visible 2D keypoints' extent (times ``padding``), else the whole image (``padding``
    unused). Image and mask are warped, ``joints2d`` mapped, ``K`` updated; 3D labels are
    unchanged (cropping moves the image, not the camera's centre).

    Raises:
        DatasetError: the box or padding is invalid (message names the sample's source and index).
    """
    try:
        crop_box = hand_crop_box(
            sample.image_size,
            box=box,
            joints2d=sample.joints2d if sample.has_joints2d else None,
            visible=sample.joints2d_visible if sample.has_joints2d else None,
            padding=padding,
        )
        result = crop_image(sample.image, crop_box, output_size, sample.K)
    except ValueError as error:
        raise DatasetError(
            f"{sample.source} (index {sample.index}): cannot crop: {error}", path=sample.source, index=sample.index
        ) from None
    transform = result.transform[0]
    mask = crop_image(sample.mask, result.box[0], output_size, square=False).image if sample.has_mask else None
    joints2d = transform_points(sample.joints2d, transform) if sample.has_joints2d else sample.joints2d
    # only the image-plane fields change; 3D labels, masks of which labels exist, side and source stay
    return replace(
        sample,
        image=result.image,
        K=result.K[0],
        joints2d=joints2d,
        mask=mask if mask is not None else sample.mask.new_zeros(1, *result.image.shape[-2:]),
    )
