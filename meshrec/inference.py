"""Reconstructing hands in a user's own images: crop, run the model, write meshes and JSON.

The steps for one image (:func:`prepare_crop`, :func:`predict_crops`, :func:`write_outputs`;
:func:`predict_images` runs them over many images, batched, with bad images skipped):

1. **Read** it with Pillow (EXIF orientation applied by default, as photo viewers show it).
   Grayscale, palette and CMYK images are converted to RGB, an alpha channel is dropped.
   Images smaller than :data:`MIN_IMAGE_SIDE` pixels on a side are refused.
2. **Box**: :func:`meshrec.data.crop.hand_crop_box`, as in
   :class:`~meshrec.data.keypoints_json.KeypointsJsonDataset`: the request's ``box`` or its
   visible 2D keypoints' box (both grown to a square by ``box_padding``), else the whole
   image made square (the short side padded with black).
3. **Crop** the box and resize it to the model's input size with
   :func:`meshrec.data.crop.crop_image`. Big photos are first reduced by an integer factor
   with a box filter on the cut window only (``PIL.Image.reduce``), so a 50-megapixel photo
   costs about as much as a small one; the pixel map stays exact (see :func:`prepare_crop`).
4. **Camera**: the request's ``K`` (pixels of the image), else the unknown camera is
   assumed to make the crop span :data:`~meshrec.geometry.camera.DEFAULT_FOV_DEG` across
   (:func:`meshrec.data.crop.image_intrinsics_for_crop`). Either way ``K_crop = transform @ K_image``.
5. **Run** the model (inference: the gate decides each sample's number of passes), left
   hands flagged as such (the model mirrors them internally; outputs are left hands).

Frames in the outputs: 3D is metres in the camera frame, which a crop does not change (it
moves and scales the image, not the camera), so the mesh of the crop is the mesh in the
original photo's camera. 2D keypoints are mapped back to the original image's pixels
(pixel centres at integers, :mod:`meshrec.geometry.camera`).
"""

from __future__ import annotations

import dataclasses
import io
import json
import math
import os
import sys
import tempfile
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from manolayer.io import write_bytes_atomic
from meshrec.data.crop import (
    DEFAULT_BOX_PADDING,
    check_box,
    check_box_padding,
    crop_image,
    crop_transform,
    full_image_box,
    hand_crop_box,
    image_intrinsics_for_crop,
    transform_intrinsics,
    transform_points,
)
from meshrec.detect import DetectorUnavailableError
from meshrec.errors import DatasetError, MeshrecError
from meshrec.geometry.camera import DEFAULT_FOV_DEG

__all__ = [
    "IMAGE_SUFFIXES",
    "MESH_OUTPUT_FORMATS",
    "MIN_IMAGE_SIDE",
    "ImageRequest",
    "ImageSkipped",
    "PreparedCrop",
    "ImageResult",
    "Failure",
    "PredictSummary",
    "check_mesh_formats",
    "collect_requests",
    "read_request_image",
    "prepare_crop",
    "prepare_crops",
    "crop_from_image",
    "photo_overlay",
    "predict_crops",
    "prediction_in_images",
    "write_outputs",
    "predict_images",
    "progress_bar",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff", ".gif")
MESH_OUTPUT_FORMATS = ("obj", "ply", "glb")
MIN_IMAGE_SIDE = 32
"""Smallest image side (pixels) accepted: below it there is no hand to see."""
DEFAULT_BATCH_SIZE = 16
DEFAULT_MAX_HANDS = 4
"""Most hands the detector reports per image."""
OVERLAY_MAX_SIDE = 2048
"""In-photo overlays of bigger photos are drawn at this longest side (pixels)."""
# a pale blue that stands out on every skin tone, mostly opaque: where the mesh sits is the point
PHOTO_OVERLAY_COLOUR = (0.55, 0.78, 1.0)
PHOTO_OVERLAY_ALPHA = 0.7
# After the integer pre-reduction the crop still downsamples by up to 2x: crop_image's own
# anti-aliasing blur then stays small, and the reduction (a box filter) did the rest.
_REDUCE_TO_SCALE = 0.5
# Reduced pixels kept around the box: covers crop_image's bilinear footprint and its blur.
_WINDOW_MARGIN = 6
PREDICTION_JSON_SUFFIX = ".json"


class ImageSkipped(MeshrecError):
    """One image cannot be used (unreadable, too small, box outside it); ``reason`` says why."""

    def __init__(self, source: str, reason: str) -> None:
        super().__init__(f"{source}: {reason}")
        self.source = source
        self.reason = reason


@dataclass(frozen=True)
class ImageRequest:
    """One image to reconstruct a hand in, and what is known about it.

    Attributes:
        image: the image file.
        side: ``'right'`` or ``'left'``.
        box: ``(4,)`` hand box ``[x0, y0, x1, y1]`` (edges, pixels of the image) or None.
        keypoints2d: ``(21, 2)`` pixels, used for the box when there is no ``box``; visible:
            ``(21,)`` bool, which of them to use.
        K: ``(3, 3)`` intrinsics in pixels of the image, or None (unknown camera).
        where: how to name it in messages (file, or label file and record).
    """

    image: Path
    side: str = "right"
    box: np.ndarray | None = None
    keypoints2d: np.ndarray | None = None
    visible: np.ndarray | None = None
    K: np.ndarray | None = None
    where: str = ""

    @property
    def name(self) -> str:
        return self.where or str(self.image)


@dataclass
class PreparedCrop:
    """An image cut and resized for the network, with the maps back to the original.

    Attributes:
        request: what was asked.
        image: ``(3, S, S)`` float32 RGB in [0, 1], the crop the network sees.
        K_crop: ``(3, 3)`` float64 intrinsics of the crop.
        K_image: ``(3, 3)`` float64 intrinsics of the original image.
        transform: ``(3, 3)`` float64 pixel affine, original image -> crop
            (``[u', v', 1] = transform [u, v, 1]``).
        box: ``(4,)`` float64 the square box cut, edges in original pixels.
        image_size: ``(H, W)`` of the original image (after the EXIF orientation).
        hand: which hand of the image this is when the detector found it (0, 1, ... left to
            right), else None.
        photo: the whole image (RGB ``PIL.Image``) when an in-photo overlay will be drawn, else None.
        detection: the detector's :class:`~meshrec.detect.DetectedHand` it was cut for, or None.
    """

    request: ImageRequest
    image: torch.Tensor
    K_crop: torch.Tensor
    K_image: torch.Tensor
    transform: torch.Tensor
    box: torch.Tensor
    image_size: tuple[int, int]
    hand: int | None = None
    photo: object = None
    detection: object = None


@dataclass(frozen=True)
class Failure:
    """An input that produced no output, and why."""

    source: str
    reason: str


@dataclass(frozen=True)
class ImageResult:
    """The files written for one hand: the image's, or one of the hands the detector found in it
    (``hand``: 0, 1, ... left to right; None without the detector)."""

    source: str
    stem: str
    side: str
    passes_used: int
    files: tuple[Path, ...]
    hand: int | None = None


@dataclass
class PredictSummary:
    """What :func:`predict_images` did: one result per image written, one failure per image not."""

    out_dir: Path
    results: list[ImageResult] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    contact_sheet: Path | None = None

    def describe(self) -> str:
        """A few lines for people: counts, then every failure with its reason."""
        images = len({result.source for result in self.results})
        hands = f" ({len(self.results)} hands)" if len(self.results) != images else ""
        lines = [f"{images} of {images + len(self.failures)} images reconstructed{hands} into {self.out_dir}"]
        if self.failures:
            lines.append(f"{len(self.failures)} skipped:")
            lines.extend(f"  {failure.source}: {failure.reason}" for failure in self.failures)
        return "\n".join(lines)


# --------------------------------------------------------------------------- progress


class _TextProgress:
    """Fallback when tqdm is missing: a line on stderr every tenth of the way."""

    def __init__(self, total: int, desc: str) -> None:
        self.total, self.desc, self.done, self._next = total, desc, 0, 0

    def update(self, count: int = 1) -> None:
        self.done += count
        if self.done >= self._next or self.done == self.total:
            print(f"{self.desc}: {self.done}/{self.total}", file=sys.stderr, flush=True)
            self._next = self.done + max(1, self.total // 10)

    def close(self) -> None:
        pass

    def __enter__(self) -> "_TextProgress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class _NoProgress(_TextProgress):
    def update(self, count: int = 1) -> None:
        pass


def progress_bar(total: int, desc: str, enabled: bool = True, unit: str = "img"):
    """A context manager with ``update(n)``: tqdm when installed, else plain lines on stderr."""
    if not enabled:
        return _NoProgress(total, desc)
    try:
        from tqdm import tqdm
    except ImportError:
        return _TextProgress(total, desc)
    return tqdm(total=total, desc=desc, unit=unit, file=sys.stderr)


# --------------------------------------------------------------------------- inputs


def _images_in(folder: Path) -> list[Path]:
    return sorted(
        path for path in folder.iterdir()
        if path.is_file() and path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )  # fmt: skip


def collect_requests(
    source: str | os.PathLike, side: str | None = None, box: Sequence[float] | None = None
) -> tuple[list[ImageRequest], list[Failure]]:
    """The images named by ``source``, and the records of a label file that cannot be used.

    Args:
        source: an image file; a folder (its image files, by name, not recursive; see
            :data:`IMAGE_SUFFIXES`); or a ``.jsonl`` / ``.json`` file of records in the format
            of :mod:`meshrec.data.keypoints_json` (``image`` required; ``box``, ``joints2d`` /
            ``visible``, ``K`` and ``side`` used when present; other labels are checked and
            ignored).
        side: ``'right'`` / ``'left'`` for every image; a record's own ``side`` wins. None: right.
        box: ``(4,)`` hand box for every image; a record's own ``box`` or keypoints win.

    Returns:
        ``(requests, failures)``: one request per usable image or record, in order; a record
        that does not parse (bad JSON line, missing image, wrong shapes) is a failure.

    Raises:
        MeshrecError: ``source`` does not exist, is not one of the above, or holds no image;
            ``side`` or ``box`` are malformed.
    """
    from meshrec.data.keypoints_json import parse_keypoint_record, read_keypoint_records

    path = Path(source)
    if side is not None and side not in ("right", "left"):
        raise MeshrecError(f"side must be 'right' or 'left', got {side!r}")
    default_side = side or "right"
    default_box = None
    if box is not None:
        default_box = check_box(box, dtype=torch.float64).cpu().numpy()
        if default_box.shape != (4,):
            raise MeshrecError(f"box must be one box [x0, y0, x1, y1] for every image, got shape {default_box.shape}")
    if path.is_dir():
        images = _images_in(path)
        if not images:
            raise MeshrecError(f"{path}: no image files ({', '.join(IMAGE_SUFFIXES)}) in this folder")
        return [ImageRequest(image, default_side, default_box, where=str(image)) for image in images], []
    if not path.exists():
        raise MeshrecError(f"{path}: no such file or folder")
    suffix = path.suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return [ImageRequest(path, default_side, default_box, where=str(path))], []
    if suffix not in (".jsonl", ".json"):
        raise MeshrecError(
            f"{path}: expected an image ({', '.join(IMAGE_SUFFIXES)}), a folder of images, or a .jsonl / .json "
            "list of records (see meshrec.data.keypoints_json)"
        )
    requests, failures = [], []
    for where, raw in read_keypoint_records(path):
        try:
            if isinstance(raw, DatasetError):
                raise raw
            record = parse_keypoint_record(raw, path.parent, where)
        except DatasetError as error:
            failures.append(Failure(where, str(error).removeprefix(f"{where}: ")))
            continue
        # precedence of the box: the record's box, its keypoints, --box, the whole image
        if record.box is not None:
            request_box = record.box.astype(np.float64)
        else:
            request_box = None if record.joints2d is not None else default_box
        requests.append(
            ImageRequest(
                image=record.image,
                side=record.side if "side" in raw else default_side,
                box=request_box,
                keypoints2d=record.joints2d,
                visible=record.visible,
                K=record.K,
                where=where,
            )
        )
    if not requests and not failures:
        raise MeshrecError(f"{path}: holds no records")
    return requests, failures


# --------------------------------------------------------------------------- crops


def read_request_image(request: ImageRequest, exif_transpose: bool = True):
    """The image of ``request`` as a Pillow image in RGB mode (EXIF orientation applied; grey,
    palette and CMYK converted, alpha dropped), or :class:`ImageSkipped` saying why not."""
    from PIL import Image

    from meshrec.data.images import open_image

    try:
        image = open_image(Path(request.image), exif_transpose=exif_transpose)
    except DatasetError as error:
        raise ImageSkipped(request.name, str(error).removeprefix(f"{request.image}: ")) from None
    except Image.DecompressionBombError as error:
        raise ImageSkipped(request.name, f"too large to decode safely ({error})") from None
    if image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info):
        image = image.convert("RGBA")  # then drop alpha: the colours stay, no compositing
    return image.convert("RGB") if image.mode != "RGB" else image


def prepare_crop(
    request: ImageRequest,
    crop_size: int,
    *,
    box_padding: float = DEFAULT_BOX_PADDING,
    exif_transpose: bool = True,
    default_fov_deg: float = DEFAULT_FOV_DEG,
) -> PreparedCrop:
    """Read the image of ``request`` and cut the network's input from it.

    How big images stay cheap: with a crop scale ``s = crop_size / box side`` below 1/2, the
    window of the image under the box is reduced by the integer factor
    ``f = floor(0.5 / s)`` (box filter) before it becomes a tensor. Reduced pixel ``j``
    averages original pixels ``o + f j ... o + f j + f - 1``, so its centre is original
    ``o + f j + (f - 1) / 2``: an exact axis-aligned affine, folded into the box given to
    :func:`~meshrec.data.crop.crop_image`. ``transform`` (original -> crop) is therefore
    ``crop_transform(box)`` exactly, as without the reduction.

    Raises:
        ImageSkipped: the image is missing, cannot be decoded, is smaller than
            :data:`MIN_IMAGE_SIDE`, or the box does not overlap it.
        MeshrecError: ``box_padding`` is not a number > 0.
    """
    box_padding = check_box_padding(box_padding)
    return crop_from_image(read_request_image(request, exif_transpose), request, crop_size, box_padding=box_padding,
                           default_fov_deg=default_fov_deg)  # fmt: skip


def prepare_crops(
    request: ImageRequest,
    crop_size: int,
    *,
    detect: bool = False,
    max_hands: int = DEFAULT_MAX_HANDS,
    box_padding: float = DEFAULT_BOX_PADDING,
    exif_transpose: bool = True,
    keep_photo: bool = False,
) -> list[PreparedCrop]:
    """The crops of one request: one (:func:`prepare_crop`), or, with ``detect`` and neither a
    box nor keypoints in the request, one per hand :func:`meshrec.detect.detect_hands` finds,
    left to right, each with the side the detector gives it.

    Args:
        keep_photo: keep the whole image in each crop's ``photo`` (for an in-photo overlay).

    Raises:
        ImageSkipped: as :func:`prepare_crop`, or no hand was found.
        meshrec.detect.DetectorUnavailableError: ``detect`` and the detector is not installed.
    """
    box_padding = check_box_padding(box_padding)
    image = read_request_image(request, exif_transpose)
    _check_image_size(image, request)
    photo = image if keep_photo else None
    if not detect or request.box is not None or request.keypoints2d is not None:
        return [dataclasses.replace(crop_from_image(image, request, crop_size, box_padding=box_padding), photo=photo)]
    from meshrec.detect import detect_hands

    hands = detect_hands(np.asarray(image), max_hands=max_hands)
    if not hands:
        raise ImageSkipped(request.name, "no hand found (give --box, or records with a box or keypoints, to crop by hand)")
    crops = []
    for index, hand in enumerate(hands):
        found = dataclasses.replace(request, side=hand.side, keypoints2d=np.array(hand.keypoints2d), visible=None)
        crop = crop_from_image(image, found, crop_size, box_padding=box_padding, hand=index)
        crops.append(dataclasses.replace(crop, photo=photo, detection=hand))
    return crops


def _check_image_size(image, request: ImageRequest) -> None:
    width, height = image.size
    if min(width, height) < MIN_IMAGE_SIDE:
        raise ImageSkipped(
            request.name, f"image is {width} x {height} pixels; at least {MIN_IMAGE_SIDE} on each side needed"
        )


def crop_from_image(
    image,
    request: ImageRequest,
    crop_size: int,
    *,
    box_padding: float = DEFAULT_BOX_PADDING,
    default_fov_deg: float = DEFAULT_FOV_DEG,
    hand: int | None = None,
) -> PreparedCrop:
    """:func:`prepare_crop` for an image already read (an RGB ``PIL.Image``): the box, the
    crop and the cameras of ``request`` (``hand``: which detected hand of the image it is)."""
    _check_image_size(image, request)
    width, height = image.size
    try:
        box = hand_crop_box(
            (height, width),
            box=request.box,
            joints2d=request.keypoints2d,
            visible=request.visible,
            padding=box_padding,
            dtype=torch.float64,
        )
        if box.shape != (4,):
            raise MeshrecError(f"expected one box [x0, y0, x1, y1] per image, got shape {tuple(box.shape)}")
    except MeshrecError as error:
        raise ImageSkipped(request.name, f"no usable box: {error}") from None
    x0, y0, x1, y1 = box.tolist()
    if x1 <= -0.5 or y1 <= -0.5 or x0 >= width - 0.5 or y0 >= height - 0.5:
        rounded = [round(v, 1) for v in box.tolist()]
        raise ImageSkipped(request.name, f"the box {rounded} lies outside the {width} x {height} image")
    transform = crop_transform(box, crop_size)  # (3, 3) float64, original -> crop

    factor = max(1, math.floor(_REDUCE_TO_SCALE * (x1 - x0) / crop_size))
    margin = _WINDOW_MARGIN * factor
    left, top = max(0, math.floor(x0) - margin), max(0, math.floor(y0) - margin)
    right, bottom = min(width, math.ceil(x1) + margin + 1), min(height, math.ceil(y1) + margin + 1)
    window = image.crop((left, top, right, bottom))
    if factor > 1:
        window = window.reduce(factor)
    pixels = torch.from_numpy(np.asarray(window, dtype=np.uint8).copy()).permute(2, 0, 1).float().div_(255.0)
    # the box in the reduced window's pixels: u_window = (u - left - (f - 1) / 2) / f
    offset = box.new_tensor([left, top, left, top]) + (factor - 1) / 2
    window_box = (box - offset) / factor
    crop = crop_image(pixels, window_box.float(), crop_size, square=False).image

    if request.K is not None:
        K_image = torch.from_numpy(np.asarray(request.K, dtype=np.float64))
    else:
        # the unknown camera makes the crop span the default field of view
        K_image = image_intrinsics_for_crop(box, crop_size, default_fov_deg)
    return PreparedCrop(
        request=request,
        image=crop.clamp_(0.0, 1.0),
        K_crop=transform @ K_image,
        K_image=K_image,
        transform=transform,
        box=box,
        image_size=(height, width),
        hand=hand,
    )


# --------------------------------------------------------------------------- model


def _model_device_dtype(model) -> tuple[torch.device, torch.dtype]:
    regressor = model.joint_regressor
    return regressor.device, regressor.dtype


def predict_crops(model, crops: Sequence[PreparedCrop]):
    """Run ``model`` (a :class:`~meshrec.models.reconstructor.HandMeshReconstructor`) on
    prepared crops in one batch, at inference (the gate decides the passes).

    Returns:
        The :class:`~meshrec.models.reconstructor.Prediction` of the ``B = len(crops)`` crops,
        in each crop's frame (use :func:`prediction_in_images` for the original images).
    """
    if not crops:
        raise MeshrecError("predict_crops needs at least one crop")
    device, dtype = _model_device_dtype(model)
    images = torch.stack([crop.image for crop in crops]).to(device=device, dtype=dtype)
    K = torch.stack([crop.K_crop for crop in crops]).to(device=device, dtype=dtype)
    return model.predict(images, K, [crop.request.side for crop in crops])


def fit_to_crop_keypoints(model, prediction, crops: Sequence[PreparedCrop], config=None):
    """The prediction with every hand whose request has keypoints (the detector's, or a
    record's) fitted to them (:func:`meshrec.fitting.fit_to_keypoints`): vertices, joints, their
    projections, rotations and shape replaced; the other hands and the network's other outputs
    (keypoint head, uncertainty, per-stage meshes) unchanged.

    Returns:
        ``(prediction, fits)``: ``fits[i]`` is hand i's ``{"error_before", "error_after"}`` (mean
        keypoint distance to the network's / the fitted joints, in hand sizes), or None.
    """
    from meshrec.fitting import fit_to_keypoints

    chosen = [i for i, crop in enumerate(crops) if crop.request.keypoints2d is not None]
    fits: list[dict | None] = [None] * len(crops)
    if not chosen:
        return prediction, fits
    rows = torch.tensor(chosen, device=prediction.vertices.device)
    keypoints, visible = [], []
    for i in chosen:
        request = crops[i].request
        pixels = torch.as_tensor(np.asarray(request.keypoints2d, dtype=np.float64))
        keypoints.append(transform_points(pixels, crops[i].transform))
        shown = np.ones(len(pixels), dtype=bool) if request.visible is None else np.asarray(request.visible, dtype=bool)
        visible.append(torch.as_tensor(shown))
    subset = dataclasses.replace(
        prediction,
        **{name: getattr(prediction, name).index_select(0, rows)
           for name in ("vertices", "joints2d", "K", "side", "global_rotations", "betas")},
    )  # fmt: skip
    fit = fit_to_keypoints(model, subset, torch.stack(keypoints).to(prediction.vertices), torch.stack(visible).to(rows.device), config)
    replaced = {
        name: getattr(prediction, name).index_copy(0, rows, getattr(fit, source).to(getattr(prediction, name)))
        for name, source in (("vertices", "vertices"), ("joints", "joints"), ("joints2d", "joints2d"),
                             ("global_rotations", "rotations"), ("betas", "betas"))
    }  # fmt: skip
    for row, i in enumerate(chosen):
        fits[i] = {"error_before": float(fit.error_before[row]), "error_after": float(fit.error_after[row])}
    return dataclasses.replace(prediction, **replaced), fits


def prediction_in_images(prediction, crops: Sequence[PreparedCrop], index: int):
    """Sample ``index`` of a crop prediction expressed in its original image: ``K`` of the
    image, ``joints2d`` / ``keypoints2d`` in its pixels and ``image_size`` its ``(H, W)``;
    3D outputs unchanged (a crop does not move the camera). A Prediction whose other
    samples keep their crop values: read only sample ``index``."""
    crop = crops[index]
    back = torch.linalg.inv(crop.transform)

    def to_image(pixels: torch.Tensor | None) -> torch.Tensor | None:
        if pixels is None:
            return None
        mapped = pixels.detach().clone()
        mapped[index] = transform_points(pixels[index].detach().double(), back).to(pixels.dtype)
        return mapped

    K = prediction.K.detach().clone()
    K[index] = crop.K_image.to(K)
    return dataclasses.replace(
        prediction,
        K=K,
        joints2d=to_image(prediction.joints2d),
        keypoints2d=to_image(prediction.keypoints2d),
        image_size=crop.image_size,
    )


# --------------------------------------------------------------------------- outputs


def _crop_record(crop: PreparedCrop, prediction, index: int) -> dict:
    """The extra JSON keys: the request, and everything about the crop the network saw."""
    plain = lambda t: t.detach().cpu().double().tolist()  # noqa: E731
    record = {
        "image": str(crop.request.image),
        "crop": {
            "box": plain(crop.box),
            "image_size": [int(s) for s in crop.image.shape[-2:]],
            "K": plain(prediction.K[index]),
            "transform": plain(crop.transform),
            "joints2d": plain(prediction.joints2d[index]),
        },
    }
    if crop.detection is not None:  # what the hand detector saw: its keypoints are the reference on photos
        record["detection"] = {
            "hand": crop.hand,
            "side": crop.detection.side,
            "score": float(crop.detection.score),
            "keypoints2d": np.asarray(crop.detection.keypoints2d, dtype=np.float64).tolist(),
        }
    return record


def _prediction_json_bytes(prediction, crops: Sequence[PreparedCrop], index: int, keypoint_fit: dict | None = None) -> bytes:
    """save_prediction_json's record in the original image's frame, plus the crop's keys (and
    ``keypoint_fit`` when given)."""
    from meshrec.export import save_prediction_json

    in_image = prediction_in_images(prediction, crops, index)
    with tempfile.TemporaryDirectory(prefix="meshrec-predict-") as folder:
        path = save_prediction_json(Path(folder) / "prediction.json", in_image, index)
        text = path.read_text()
    record = json.loads(text)
    record.update(_crop_record(crops[index], prediction, index))
    if keypoint_fit is not None:
        record["keypoint_fit"] = keypoint_fit
    lines = [f" {json.dumps(key)}: {json.dumps(value, allow_nan=False)}" for key, value in record.items()]
    return ("{\n" + ",\n".join(lines) + "\n}\n").encode()


def png_bytes(image: np.ndarray) -> bytes:
    """``(H, W, 3)`` uint8 as PNG file bytes (for atomic writes)."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


def write_outputs(
    out_dir: Path,
    stem: str,
    prediction,
    crops: Sequence[PreparedCrop],
    index: int,
    formats: Sequence[str] = ("obj",),
    overlay: bool = False,
    overlay_renderer: str = "auto",
    keypoint_fit: dict | None = None,
) -> tuple[Path, ...]:
    """Write sample ``index``'s files into ``out_dir``, each atomically (temporary name, rename):

    - ``<stem>.<fmt>`` for each of ``formats`` (:data:`MESH_OUTPUT_FORMATS`) through
      :func:`meshrec.export.save_mesh`; PLY and GLB carry per-vertex uncertainty colours
      (:func:`meshrec.export.prediction_mesh`);
    - ``<stem>.json``: :func:`meshrec.export.save_prediction_json`'s keys in the original
      image's frame (``K``, ``image_size``, ``joints2d``, ``keypoints2d`` of the image;
      ``joints3d``, ``root`` in its camera frame, metres), plus ``image`` (the source) and
      ``crop`` (``box``, ``image_size``, ``K``, ``transform`` image -> crop, ``joints2d`` in
      crop pixels), and ``keypoint_fit`` when given (:func:`fit_to_crop_keypoints`'s record of
      this hand: its mesh was fitted to the request's keypoints);
    - with ``overlay``, ``<stem>_overlay.png``: the mesh drawn over the crop
      (:func:`meshrec.viz.overlay_mesh`, OpenGL when available, else matplotlib).
    """
    from meshrec.export import save_mesh

    written = []
    mesh = prediction.to_trimesh(index, with_uncertainty=True)
    for fmt in formats:
        written.append(save_mesh(out_dir / f"{stem}.{fmt}", mesh=mesh))
    json_path = out_dir / f"{stem}{PREDICTION_JSON_SUFFIX}"
    write_bytes_atomic(json_path, _prediction_json_bytes(prediction, crops, index, keypoint_fit))
    written.append(json_path)
    if overlay:
        crop_pixels = (crops[index].image.permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
        drawn = _overlay(crop_pixels, prediction.vertices[index], prediction.faces_of(index), prediction.K[index],
                         overlay_renderer)  # fmt: skip
        overlay_path = out_dir / f"{stem}_overlay.png"
        write_bytes_atomic(overlay_path, png_bytes(drawn))
        written.append(overlay_path)
    return tuple(written)


def _thumbnail(image: np.ndarray) -> np.ndarray:
    """``image`` shrunk to a contact sheet's cell (aspect kept): kept instead of whole overlays."""
    from PIL import Image

    from meshrec.viz import CONTACT_SHEET_CELL

    picture = Image.fromarray(image)
    picture.thumbnail((CONTACT_SHEET_CELL, CONTACT_SHEET_CELL))
    return np.asarray(picture)


def _overlay(image: np.ndarray, vertices, faces, K, renderer: str, **style) -> np.ndarray:
    """:func:`meshrec.viz.overlay_mesh`, falling back to matplotlib when ``'auto'`` found EGL but
    could not use it."""
    from meshrec.render import RendererUnavailableError
    from meshrec.viz import overlay_mesh

    scene = (image, vertices.detach().cpu(), faces.cpu(), K.detach().cpu())
    try:
        return overlay_mesh(*scene, renderer=renderer, **style)
    except RendererUnavailableError:
        if renderer != "auto":
            raise
        return overlay_mesh(*scene, renderer="matplotlib", **style)


def photo_overlay(photo, hands: Sequence[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], *, renderer: str = "auto",
                  max_side: int = OVERLAY_MAX_SIDE) -> np.ndarray:  # fmt: skip
    """Every hand's mesh drawn in place over the whole photo.

    Args:
        photo: the image (RGB ``PIL.Image``).
        hands: per hand ``(vertices (V, 3) metres, faces (F, 3), K (3, 3) of the photo)``.
        renderer: as :func:`meshrec.viz.overlay_mesh`.
        max_side: photos with a longer side are drawn at this size (K scaled to match).

    Returns:
        ``(H', W', 3)`` uint8.
    """
    width, height = photo.size
    scale = min(1.0, max_side / max(width, height))
    if scale < 1.0:
        photo = photo.resize((max(1, round(width * scale)), max(1, round(height * scale))))
    resize = crop_transform(full_image_box(height, width, dtype=torch.float64), (photo.size[1], photo.size[0]))
    drawn = np.asarray(photo.convert("RGB"), dtype=np.uint8)
    for vertices, faces, K in hands:
        drawn = _overlay(drawn, vertices, faces, transform_intrinsics(K.detach().cpu().double(), resize), renderer,
                         colors=PHOTO_OVERLAY_COLOUR, alpha=PHOTO_OVERLAY_ALPHA)  # fmt: skip
    return drawn


def _unique_stems(requests: Sequence[ImageRequest]) -> list[str]:
    """Output names: the image's stem, with ``_2``, ``_3``, ... where stems repeat."""
    stems, used = [], set()
    for request in requests:
        base = Path(request.image).stem or "image"
        stem, count = base, 1
        while stem.lower() in used:  # case-insensitive: some file systems are
            count += 1
            stem = f"{base}_{count}"
        used.add(stem.lower())
        stems.append(stem)
    return stems


def check_mesh_formats(formats: Iterable[str]) -> tuple[str, ...]:
    """Normalise mesh format names (``'OBJ'``, ``'.ply'`` -> ``'obj'``, ``'ply'``), refusing unknown ones."""
    chosen = tuple(dict.fromkeys(f.strip().lower().lstrip(".") for f in formats if f.strip()))
    unknown = [f for f in chosen if f not in MESH_OUTPUT_FORMATS]
    if unknown:
        raise MeshrecError(f"mesh formats must be among {', '.join(MESH_OUTPUT_FORMATS)}, got {', '.join(unknown)}")
    return chosen


def _prepared_in_order(
    requests: Sequence[ImageRequest], prepare: Callable[[ImageRequest], PreparedCrop], threads: int
) -> Iterator[tuple[int, PreparedCrop | ImageSkipped]]:
    """``(position, its crops or the reason it failed)`` in order; reading runs ahead on threads
    (Pillow decodes and torch crops without holding the GIL), at most a few images ahead."""

    def attempt(request: ImageRequest) -> list[PreparedCrop] | ImageSkipped:
        try:
            return prepare(request)
        except ImageSkipped as error:
            return error
        except DetectorUnavailableError:
            raise  # not this image's fault: stop, saying how to install it
        except (MeshrecError, OSError, MemoryError) as error:
            return ImageSkipped(request.name, f"{type(error).__name__}: {error}")

    if threads <= 0:
        for position, request in enumerate(requests):
            yield position, attempt(request)
        return
    ahead = 4 * threads
    with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="meshrec-read") as pool:
        pending = {}
        for position, request in enumerate(requests[:ahead]):
            pending[position] = pool.submit(attempt, request)
        for position in range(len(requests)):
            result = pending.pop(position).result()
            following = position + ahead
            if following < len(requests):
                pending[following] = pool.submit(attempt, requests[following])
            yield position, result


def predict_images(
    model,
    requests: Sequence[ImageRequest],
    out_dir: str | os.PathLike,
    *,
    formats: Sequence[str] = ("obj",),
    overlay: bool = False,
    detect: bool = False,
    max_hands: int = DEFAULT_MAX_HANDS,
    contact_sheet: bool = False,
    batch_size: int = DEFAULT_BATCH_SIZE,
    box_padding: float = DEFAULT_BOX_PADDING,
    exif_transpose: bool = True,
    read_threads: int = 2,
    progress: bool = True,
    overlay_renderer: str = "auto",
    fit_keypoints: bool = True,
) -> PredictSummary:
    """Reconstruct the hands in every requested image and write their files into ``out_dir``.

    Images are read and cropped (:func:`prepare_crops`), run ``batch_size`` crops at a time
    (:func:`predict_crops`), and written (:func:`write_outputs`, names from the image stems,
    made unique; ``<stem>_hand<i>`` for the hands the detector found). An image that cannot be
    read, is too small, holds no hand the detector sees, or whose outputs cannot be written is
    recorded in ``failures`` with the reason; the others go on.

    Args:
        model: a :class:`~meshrec.models.reconstructor.HandMeshReconstructor`; its inference
            copy runs (:meth:`~meshrec.models.reconstructor.HandMeshReconstructor.for_inference`),
            on its device and dtype.
        requests: from :func:`collect_requests`, or built by hand.
        out_dir: created if missing; existing files of the same names are replaced.
        formats: mesh formats among :data:`MESH_OUTPUT_FORMATS`.
        overlay: also write ``<stem>_overlay.png``: the photo with every hand's mesh drawn in
            place (:func:`photo_overlay`).
        detect: find the hands (box and side) of requests without a box or keypoints with
            :func:`meshrec.detect.detect_hands`; False: such an image is one hand, the whole
            image its crop, its side the request's.
        max_hands: most hands per image the detector reports.
        contact_sheet: with ``overlay``, also write ``contact_sheet.png``, every overlay small
            on one sheet (:func:`meshrec.viz.contact_sheet`).
        batch_size: crops per forward pass.
        box_padding: box side / given box or keypoint extent.
        exif_transpose: apply the EXIF orientation (boxes and keypoints then refer to the
            image as viewers show it).
        read_threads: threads reading images ahead of the model (0: read in this thread).
        progress: show a progress bar on stderr.
        overlay_renderer: ``'auto'``, ``'gl'`` or ``'matplotlib'`` (:func:`meshrec.viz.overlay_mesh`).
        fit_keypoints: fit each hand whose keypoints are known (the detector's, or a record's)
            to them (:func:`fit_to_crop_keypoints`); False writes the network's meshes as they are.

    Raises:
        meshrec.detect.DetectorUnavailableError: ``detect`` without the detector installed.
    """
    formats = check_mesh_formats(formats)
    box_padding = check_box_padding(box_padding)
    if batch_size < 1:
        raise MeshrecError(f"batch_size must be >= 1, got {batch_size}")
    if contact_sheet and not overlay:
        raise MeshrecError("contact_sheet draws the overlays: pass overlay=True too (--overlay)")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    summary = PredictSummary(out_dir=out_dir)
    stems = _unique_stems(requests)
    crop_size = int(model.config.image_size)
    model = model.for_inference()
    hands_of: dict[int, int] = {}  # position -> crops of that image
    drawn_of: dict[int, list] = {}  # position -> (vertices, faces, K) of its hands done so far
    sheet: list[tuple[np.ndarray, str]] = []

    def prepare(request: ImageRequest) -> list[PreparedCrop]:
        return prepare_crops(request, crop_size, detect=detect, max_hands=max_hands, box_padding=box_padding,
                             exif_transpose=exif_transpose, keep_photo=overlay)  # fmt: skip

    def draw_photo(position: int, crop: PreparedCrop) -> list[Path]:
        """The image's overlay once all its hands are done (those that failed are left out)."""
        hands = drawn_of.get(position, [])
        hands_of[position] -= 1
        if hands_of[position] > 0 or not hands:
            return []
        drawn = photo_overlay(crop.photo, hands, renderer=overlay_renderer)
        path = out_dir / f"{stems[position]}_overlay.png"
        write_bytes_atomic(path, png_bytes(drawn))
        if contact_sheet:
            sheet.append((_thumbnail(drawn), stems[position]))
        return [path]

    def flush(batch: list[tuple[int, PreparedCrop]]) -> None:
        if not batch:
            return
        crops = [crop for _, crop in batch]
        prediction = predict_crops(model, crops)
        fits = [None] * len(crops)
        if fit_keypoints:
            prediction, fits = fit_to_crop_keypoints(model, prediction, crops)
        for index, (position, crop) in enumerate(batch):
            stem = stems[position] if crop.hand is None else f"{stems[position]}_hand{crop.hand}"
            try:
                files = write_outputs(out_dir, stem, prediction, crops, index, formats, keypoint_fit=fits[index])
            except (MeshrecError, OSError) as error:
                summary.failures.append(Failure(crop.request.name, f"cannot write outputs: {error}"))
                files = None
            if overlay:  # once per hand, written or not, so the photo's overlay comes after its last hand
                if files is not None:
                    drawn_of.setdefault(position, []).append(
                        (prediction.vertices[index], prediction.faces_of(index), crop.K_image))
                try:
                    overlay_files = draw_photo(position, crop)
                except (MeshrecError, OSError) as error:
                    summary.failures.append(Failure(crop.request.name, f"cannot write the overlay: {error}"))
                    overlay_files = []
                files = None if files is None else files + tuple(overlay_files)
            if files is None:
                continue
            summary.results.append(
                ImageResult(
                    source=crop.request.name,
                    stem=stem,
                    side=crop.request.side,
                    passes_used=int(prediction.passes_used[index]),
                    files=files,
                    hand=crop.hand,
                )
            )
        batch.clear()

    with progress_bar(len(requests), "predict", progress) as bar:
        batch: list[tuple[int, PreparedCrop]] = []
        for position, outcome in _prepared_in_order(requests, prepare, read_threads):
            bar.update(1)
            if isinstance(outcome, ImageSkipped):
                summary.failures.append(Failure(requests[position].name, outcome.reason))
                continue
            hands_of[position] = len(outcome)
            for crop in outcome:
                batch.append((position, crop))
                if len(batch) == batch_size:
                    flush(batch)
        flush(batch)
    if contact_sheet and sheet:
        from meshrec.viz import contact_sheet as make_sheet

        thumbnails, labels = zip(*sheet)
        sheet_path = out_dir / "contact_sheet.png"
        write_bytes_atomic(sheet_path, png_bytes(make_sheet(thumbnails, labels)))
        summary.contact_sheet = sheet_path
    return summary
