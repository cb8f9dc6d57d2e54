"""Drawing hands with matplotlib: a shaded mesh, an optional skeleton, a gallery figure.

matplotlib is imported inside the functions, so ``import meshrec.viz`` stays light, and the
gallery draws on a bare ``Figure`` (no pyplot), so it works without a display.

Views are (elevation, azimuth) in degrees as matplotlib's ``view_init`` takes them, in the
hand's own frame. For MANO's right-hand frame (fingers -x, palm -y, thumb +z):
:data:`PALM_VIEW` looks at the palm, :data:`THUMB_SIDE_VIEW` looks from the thumb side, where
flexion shows as fingers curling toward the palm, :data:`THREE_QUARTER_VIEW` looks at the
palm and the thumb side together.
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from manolayer.joints import OPENPOSE_FINGERS
from meshrec.errors import MeshrecError

PALM_VIEW: tuple[float, float] = (0.0, -90.0)
BACK_VIEW: tuple[float, float] = (0.0, 90.0)
THUMB_SIDE_VIEW: tuple[float, float] = (80.0, -90.0)
THREE_QUARTER_VIEW: tuple[float, float] = (30.0, -130.0)

SKIN_COLOUR = (0.87, 0.72, 0.62)
FINGER_COLOURS: dict[str, str] = {
    "thumb": "#d62728",
    "index": "#ff7f0e",
    "middle": "#2ca02c",
    "ring": "#1f77b4",
    "little": "#9467bd",
}
# Lambert shading: brightness = AMBIENT + (1 - AMBIENT) * max(0, normal . light)
AMBIENT = 0.3


def _as_numpy(array, name: str, shape_tail: tuple[int, ...]) -> np.ndarray:
    if hasattr(array, "detach"):
        array = array.detach().cpu().numpy()
    array = np.asarray(array)
    if array.ndim != len(shape_tail) + 1 or array.shape[1:] != shape_tail:
        raise MeshrecError(f"{name} must have shape (N, {', '.join(map(str, shape_tail))}), got {array.shape}")
    return array


def view_direction(view: tuple[float, float]) -> np.ndarray:
    """(3,) unit vector from the scene toward matplotlib's camera for (elevation, azimuth) in degrees."""
    elevation, azimuth = np.deg2rad(view)
    return np.array([np.cos(elevation) * np.cos(azimuth), np.cos(elevation) * np.sin(azimuth), np.sin(elevation)])


def face_shading(vertices: np.ndarray, faces: np.ndarray, light: np.ndarray) -> np.ndarray:
    """(F,) Lambert brightness in [AMBIENT, 1] of each face, lit from direction ``light`` (3,)."""
    corners = vertices[faces]  # (F, 3 corners, 3)
    normals = np.cross(corners[:, 1] - corners[:, 0], corners[:, 2] - corners[:, 0])
    normals /= np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)
    return AMBIENT + (1 - AMBIENT) * np.clip(normals @ (light / np.linalg.norm(light)), 0.0, 1.0)


def plot_hand(
    ax,
    vertices,
    faces,
    joints=None,
    view: tuple[float, float] = PALM_VIEW,
    colour: tuple[float, float, float] = SKIN_COLOUR,
    title: str | None = None,
    extent: float | None = None,
    centre=None,
    zoom: float = 1.6,
) -> None:
    """Draw one hand into a matplotlib 3D axes.

    Args:
        ax: a ``mpl_toolkits.mplot3d`` axes (``fig.add_subplot(projection='3d')``).
        vertices: (V, 3) mesh vertices, numpy or torch.
        faces: (F, 3) vertex ids per triangle, counter-clockwise seen from outside.
        joints: (21, 3) OpenPose-order keypoints to draw as a skeleton, or None.
        view: (elevation, azimuth) in degrees; the light comes from the camera.
        colour: RGB of the skin in [0, 1].
        title: text above the panel.
        extent: half the side of the cube shown, in the vertices' units; None fits the mesh.
        centre: (3,) centre of that cube; None: the middle of the mesh's bounding box.
        zoom: magnification of the cube in its panel (matplotlib leaves wide margins).
    """
    from mpl_toolkits.mplot3d.art3d import Poly3DCollection

    vertices = _as_numpy(vertices, "vertices", (3,)).astype(np.float64)
    faces = _as_numpy(faces, "faces", (3,)).astype(np.int64)
    if faces.size and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise MeshrecError(f"faces index vertices 0..{len(vertices) - 1}, got ids {faces.min()}..{faces.max()}")
    brightness = face_shading(vertices, faces, view_direction(view))
    face_colours = np.clip(brightness[:, None] * np.asarray(colour)[None, :], 0, 1)
    # edges in the face colour hide the hairline seams antialiasing leaves between triangles
    mesh = Poly3DCollection(vertices[faces], facecolors=face_colours, edgecolors=face_colours, linewidths=0.3)
    ax.add_collection3d(mesh)

    if joints is not None:
        joints = _as_numpy(joints, "joints", (3,))
        if len(joints) != 21:
            raise MeshrecError(f"joints must be the 21 OpenPose keypoints, got {len(joints)}")
        for finger, chain in OPENPOSE_FINGERS.items():
            points = joints[[0, *chain]]
            ax.plot(*points.T, color=FINGER_COLOURS[finger], linewidth=1.5, marker="o", markersize=2, zorder=10)

    lower, upper = vertices.min(0), vertices.max(0)
    middle = (lower + upper) / 2 if centre is None else np.asarray(centre, dtype=np.float64)
    half = (upper - lower).max() / 2 * 1.05 if extent is None else extent
    ax.set_xlim(middle[0] - half, middle[0] + half)
    ax.set_ylim(middle[1] - half, middle[1] + half)
    ax.set_zlim(middle[2] - half, middle[2] + half)
    ax.set_box_aspect((1, 1, 1), zoom=zoom)
    ax.view_init(elev=view[0], azim=view[1])
    ax.set_axis_off()
    if title:
        ax.set_title(title, fontsize=9)


def hand_gallery(
    meshes: Sequence[tuple],
    titles: Sequence[str] | None,
    path: str | os.PathLike,
    views: Sequence[tuple[float, float]] = (PALM_VIEW, THREE_QUARTER_VIEW),
    panel_inches: float = 2.4,
    dpi: int = 90,
) -> Path:
    """Save a grid of hands, one column per hand and one row per view, atomically.

    Args:
        meshes: per hand, ``(vertices (V, 3), faces (F, 3))`` or ``(vertices, faces, joints (21, 3))``.
        titles: one title per hand, or None.
        path: where to write the image (format from the suffix, e.g. ``.png``); written to a
            temporary file in the same folder first and then renamed, so readers never see
            half a file.
        views: (elevation, azimuth) per row.
        panel_inches, dpi: size of one panel.

    Returns:
        The path written. All panels share one scale, so hands can be compared.
    """
    # a bare Figure (no pyplot) renders off-screen and leaves the user's backend alone
    from matplotlib.figure import Figure

    if not meshes:
        raise MeshrecError("hand_gallery needs at least one mesh")
    if titles is not None and len(titles) != len(meshes):
        raise MeshrecError(f"got {len(titles)} titles for {len(meshes)} meshes")
    if not views:
        raise MeshrecError("hand_gallery needs at least one view")
    for index, item in enumerate(meshes):
        if len(item) not in (2, 3):
            raise MeshrecError(f"meshes[{index}] must be (vertices, faces) or (vertices, faces, joints), got {len(item)} items")

    all_vertices = [_as_numpy(item[0], f"meshes[{i}] vertices", (3,)) for i, item in enumerate(meshes)]
    extent = max((v.max(0) - v.min(0)).max() for v in all_vertices) / 2 * 1.05
    path = Path(path)
    figure = Figure(figsize=(panel_inches * len(meshes), panel_inches * len(views)), dpi=dpi)
    for row, view in enumerate(views):
        for column, item in enumerate(meshes):
            ax = figure.add_subplot(len(views), len(meshes), row * len(meshes) + column + 1, projection="3d")
            joints = item[2] if len(item) == 3 else None
            title = titles[column] if titles is not None and row == 0 else None
            plot_hand(ax, item[0], item[1], joints=joints, view=view, title=title, extent=extent)
    figure.subplots_adjust(left=0, right=1, bottom=0, top=0.93 if titles else 1, wspace=0, hspace=0)
    return _save_figure_atomically(figure, path, dpi)


def _save_figure_atomically(figure, path: str | os.PathLike, dpi: int) -> Path:
    """Save a matplotlib figure through a temporary file in the same folder and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # a unique name in the same folder (so the rename is atomic), created with the usual
    # permissions (tempfile.mkstemp would make it private)
    temporary = path.parent / f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(temporary, "xb") as stream:
            figure.savefig(stream, format=path.suffix.lstrip(".") or "png", dpi=dpi)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    return path


def keypoint_sheet(
    images,
    keypoints,
    path: str | os.PathLike,
    columns: int = 6,
    titles: Sequence[str] | None = None,
    panel_inches: float = 1.3,
    dpi: int = 100,
    palette_colours: int | None = 256,
) -> Path:
    """Save a grid of images with their 21 keypoints and skeleton drawn on top, atomically.

    Args:
        images: ``(N, H, W, 3)`` uint8 (or float in [0, 1]); ``images[n, v, u]`` is pixel row
            v, column u of image n.
        keypoints: ``(N, 21, 2)`` pixel ``(u, v)`` in OpenPose order, pixel centres at integers.
        path: image to write (format from the suffix).
        columns: panels per row.
        titles: one short title per image, or None.
        panel_inches, dpi: size of one panel.
        palette_colours: for a ``.png``, reduce to this many colours (photos with noisy
            backgrounds compress poorly: 4x smaller); None keeps full colour.

    Returns:
        The path written.
    """
    from matplotlib.figure import Figure

    images = np.asarray(images.detach().cpu() if hasattr(images, "detach") else images)
    if images.ndim != 4 or images.shape[-1] != 3 or len(images) == 0:
        raise MeshrecError(f"images must have shape (N, H, W, 3) with N >= 1, got {images.shape}")
    keypoints = _as_numpy(keypoints, "keypoints", (21, 2))
    if len(keypoints) != len(images):
        raise MeshrecError(f"got {len(keypoints)} keypoint sets for {len(images)} images")
    if titles is not None and len(titles) != len(images):
        raise MeshrecError(f"got {len(titles)} titles for {len(images)} images")
    if isinstance(columns, bool) or not isinstance(columns, int) or columns < 1:
        raise MeshrecError(f"columns must be a positive int, got {columns!r}")
    columns = min(columns, len(images))
    rows = -(-len(images) // columns)
    height, width = images.shape[1:3]
    figure = Figure(figsize=(panel_inches * columns, panel_inches * rows * height / width), dpi=dpi)
    for n, (image, points) in enumerate(zip(images, keypoints)):
        ax = figure.add_subplot(rows, columns, n + 1)
        # extent puts pixel centres at integer coordinates, as the keypoints use them
        ax.imshow(image, extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest")
        for finger, chain in OPENPOSE_FINGERS.items():
            chain_points = points[[0, *chain]]
            ax.plot(*chain_points.T, color=FINGER_COLOURS[finger], linewidth=1.0, marker="o", markersize=1.5)
        ax.set_xlim(-0.5, width - 0.5)
        ax.set_ylim(height - 0.5, -0.5)
        ax.set_axis_off()
        if titles is not None:
            ax.set_title(titles[n], fontsize=6, pad=1)
    figure.subplots_adjust(left=0, right=1, bottom=0, top=0.96 if titles else 1, wspace=0.02, hspace=0.08 if titles else 0.02)
    path = Path(path)
    if palette_colours is None or path.suffix.lower() != ".png":
        return _save_figure_atomically(figure, path, dpi)
    from io import BytesIO

    from PIL import Image

    from manolayer.io import write_bytes_atomic

    rendered, reduced = BytesIO(), BytesIO()
    figure.savefig(rendered, format="png", dpi=dpi)
    with Image.open(rendered) as image:
        image.convert("RGB").quantize(palette_colours).save(reduced, format="PNG", optimize=True)
    write_bytes_atomic(path, reduced.getvalue())
    return path
