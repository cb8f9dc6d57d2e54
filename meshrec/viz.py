"""Drawing hands: matplotlib figures for files and papers, plotly figures for notebooks.

- files: :func:`hand_gallery` (3D panels), :func:`keypoint_sheet` (images + skeletons);
- on a matplotlib axis: :func:`plot_hand` (3D), :func:`draw_keypoints` (2D skeleton),
  :func:`plot_prediction` (crop + mesh overlay + skeleton);
- images: :func:`overlay_mesh` blends a rendered mesh into a crop;
- interactive (plotly): :func:`mesh_figure_3d` (mesh, skeleton, per-vertex values such as
  uncertainty as colour), :func:`prediction_figure_3d`, :func:`refinement_steps_figure`
  (a slider through the stages of one prediction).

matplotlib and plotly are imported inside the functions, so ``import meshrec.viz`` stays
light; figures are drawn on a bare ``Figure`` (no pyplot), so everything works without a
display (in a notebook, ``display(ax.figure)`` or just return the figure).

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
from meshrec.geometry.normals import face_normals

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
    normals = face_normals(np.asarray(vertices, dtype=np.float64), faces)
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
        draw_keypoints(ax, points)
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


# --------------------------------------------------------------------------- 2D: keypoints, overlays


def draw_keypoints(
    ax,
    joints2d,
    visible=None,
    color: str | tuple | None = None,
    linewidth: float = 1.0,
    markersize: float = 1.5,
) -> None:
    """Draw the 21-keypoint skeleton on a 2D matplotlib axes in pixel coordinates.

    One line per finger, from the wrist to the tip (:data:`OPENPOSE_FINGERS`), with a marker
    at each keypoint. Show the image with ``extent=(-0.5, W - 0.5, H - 0.5, -0.5)`` so pixel
    centres sit at integer coordinates, as keypoints use them.

    Args:
        ax: a 2D matplotlib axes.
        joints2d: ``(21, 2)`` pixel ``(u, v)`` in OpenPose order, numpy or torch.
        visible: ``(21,)`` bool, or None (all visible); a hidden keypoint gets no marker and
            the bones touching it are not drawn.
        color: one colour for the whole skeleton; None: one colour per finger (:data:`FINGER_COLOURS`).
        linewidth, markersize: in points.
    """
    points = _as_numpy(joints2d, "joints2d", (2,)).astype(np.float64)
    if len(points) != 21:
        raise MeshrecError(f"joints2d must be the 21 OpenPose keypoints (21, 2), got {points.shape}")
    if visible is not None:
        visible = np.asarray(visible.detach().cpu() if hasattr(visible, "detach") else visible).astype(bool)
        if visible.shape != (21,):
            raise MeshrecError(f"visible must have shape (21,), got {visible.shape}")
        # matplotlib breaks a line at NaN: hidden keypoints drop their marker and both bones
        points = np.where(visible[:, None], points, np.nan)
    for finger, chain in OPENPOSE_FINGERS.items():
        chain_points = points[[0, *chain]]
        ax.plot(
            *chain_points.T,
            color=FINGER_COLOURS[finger] if color is None else color,
            linewidth=linewidth,
            marker="o",
            markersize=markersize,
        )


def _image_hwc_uint8(image) -> np.ndarray:
    """``(H, W, 3)`` or ``(3, H, W)``, uint8 or float in [0, 1], numpy or torch -> ``(H, W, 3)`` uint8."""
    image = np.asarray(image.detach().cpu() if hasattr(image, "detach") else image)
    if image.ndim == 3 and image.shape[-1] != 3 and image.shape[0] == 3:
        image = image.transpose(1, 2, 0)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise MeshrecError(f"image must have shape (H, W, 3) or (3, H, W), got {image.shape}")
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if not np.issubdtype(image.dtype, np.floating):
        raise MeshrecError(f"image must be uint8 or float in [0, 1], got {image.dtype}")
    if not np.isfinite(image).all() or image.min() < 0 or image.max() > 1:
        raise MeshrecError("float images must be finite and in [0, 1] (divide 8-bit values by 255)")
    return np.round(image * 255).astype(np.uint8)


def _vertex_albedo(colors, num_vertices: int) -> np.ndarray | None:
    """None, ``(3,)``, or ``(V, 3|4)`` uint8 / float [0, 1] -> None or ``(V, 3)`` float in [0, 1]."""
    if colors is None:
        return None
    colors = np.asarray(colors.detach().cpu() if hasattr(colors, "detach") else colors)
    if colors.shape in ((3,), (4,)):
        colors = np.broadcast_to(colors, (num_vertices, colors.shape[0]))
    if colors.ndim != 2 or colors.shape[0] != num_vertices or colors.shape[1] not in (3, 4):
        raise MeshrecError(f"colors must have shape (3,), ({num_vertices}, 3) or ({num_vertices}, 4), got {colors.shape}")
    colors = colors[:, :3] / 255.0 if colors.dtype == np.uint8 else colors[:, :3].astype(np.float64)
    if not np.isfinite(colors).all() or colors.min() < 0 or colors.max() > 1:
        raise MeshrecError("float colors must be in [0, 1]")
    return colors


_gl_renderer_instance = None


def _gl_renderer():
    global _gl_renderer_instance
    if _gl_renderer_instance is None:
        from meshrec.render import get_renderer

        _gl_renderer_instance = get_renderer("gl")
    return _gl_renderer_instance


def _render_gl(vertices, faces, K, height: int, width: int, albedo) -> tuple[np.ndarray, np.ndarray]:
    out = _gl_renderer().render(vertices[None], faces, K, (height, width), colors=albedo)
    return out.rgb[0], out.mask[0]


def _render_matplotlib(vertices, faces, K, height: int, width: int, albedo) -> tuple[np.ndarray, np.ndarray]:
    """Painter's algorithm with matplotlib's Agg: faces sorted far to near by mean depth, each
    filled with one Lambert-shaded colour (the shading model of ``meshrec.render.base`` without
    the highlight, normals turned towards the camera). Faces with a corner at z <= 1 mm are
    skipped. Returns ``(H, W, 3)`` uint8 and the ``(H, W)`` coverage mask.

    Agg's aliased fill marks every pixel a triangle touches (the silhouette grows by about
    half a pixel), so the faces are drawn antialiased and the mask is coverage >= 50 %, which
    matches the GL renderer's pixel-centre rule; Agg keeps colours unpremultiplied, so edge
    pixels keep their face's colour."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    from meshrec.render.base import DEFAULT_AMBIENT, DEFAULT_LIGHT_DIR, SKIN_COLOR

    corners = vertices[faces]  # (F, 3 corners, 3) camera frame
    in_front = (corners[..., 2] > 1e-3).all(axis=1)
    corners, face_ids = corners[in_front], np.flatnonzero(in_front)
    projected = corners @ K.T
    pixels = projected[..., :2] / projected[..., 2:]  # (F, 3, 2) u, v
    normals = face_normals(np.asarray(vertices, dtype=np.float64), faces)[in_front]
    centroids = corners.mean(axis=1)
    # as the GL shader does: the visible side of a triangle is lit, whatever its winding
    normals *= np.where(np.einsum("fi,fi->f", normals, -centroids) < 0, -1.0, 1.0)[:, None]
    light = np.asarray(DEFAULT_LIGHT_DIR) / np.linalg.norm(DEFAULT_LIGHT_DIR)
    brightness = DEFAULT_AMBIENT + (1 - DEFAULT_AMBIENT) * np.clip(normals @ light, 0.0, 1.0)
    face_albedo = np.broadcast_to(SKIN_COLOR, (len(face_ids), 3)) if albedo is None else albedo[faces[face_ids]].mean(axis=1)
    face_colours = np.clip(brightness[:, None] * face_albedo, 0.0, 1.0)
    order = np.argsort(-centroids[:, 2], kind="stable")  # far first, near drawn last (on top)

    dpi = 100
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi)
    figure.patch.set_alpha(0.0)
    canvas = FigureCanvasAgg(figure)
    ax = figure.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.add_collection(
        PolyCollection(pixels[order], facecolors=face_colours[order], edgecolors="none", linewidths=0, antialiased=True)
    )
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    canvas.draw()
    rgba = np.asarray(canvas.buffer_rgba())
    if rgba.shape[:2] != (height, width):  # pragma: no cover - figure size rounding
        raise MeshrecError(f"matplotlib drew {rgba.shape[:2]} pixels for a {(height, width)} image")
    return rgba[..., :3].copy(), rgba[..., 3] >= 128


def overlay_mesh(image, vertices, faces, K, alpha: float = 0.5, colors=None, renderer: str = "auto") -> np.ndarray:
    """Blend a shaded mesh into an image: ``out = (1 - alpha) image + alpha render`` where the
    mesh covers a pixel centre, the image untouched elsewhere.

    Args:
        image: ``(H, W, 3)`` or ``(3, H, W)``, uint8 or float in [0, 1], numpy or torch.
        vertices: ``(V, 3)`` OpenCV camera frame of the image, metres.
        faces: ``(F, 3)`` vertex ids (either winding: visible sides are shaded).
        K: ``(3, 3)`` intrinsics of the image in pixels (centres at integers).
        alpha: opacity of the mesh in [0, 1].
        colors: per-vertex albedo ``(V, 3|4)`` uint8 or float in [0, 1] (e.g.
            :func:`meshrec.export.uncertainty_colors`), ``(3,)`` for all, or None (skin).
        renderer: ``'gl'`` (``meshrec.render``'s OpenGL renderer: depth-buffered, smooth
            shading), ``'matplotlib'`` (painter's algorithm, flat shading; visibility errors
            where triangles interpenetrate) or ``'auto'``: GL when
            :func:`meshrec.render.gl_available`, else matplotlib.

    Returns:
        ``(H, W, 3)`` uint8.
    """
    image = _image_hwc_uint8(image)
    height, width = image.shape[:2]
    vertices = _as_numpy(vertices, "vertices", (3,)).astype(np.float64)
    faces = _as_numpy(faces, "faces", (3,)).astype(np.int64)
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise MeshrecError(f"faces index vertices 0..{len(vertices) - 1}, got ids {faces.min()}..{faces.max()}")
    if not np.isfinite(vertices).all():
        raise MeshrecError("vertices hold NaN or Inf")
    K = np.asarray(K.detach().cpu() if hasattr(K, "detach") else K, dtype=np.float64)
    if K.shape != (3, 3):
        raise MeshrecError(f"K must have shape (3, 3), got {K.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise MeshrecError(f"alpha must be in [0, 1], got {alpha}")
    albedo = _vertex_albedo(colors, len(vertices))
    if renderer == "auto":
        from meshrec.render import gl_available

        renderer = "gl" if gl_available() else "matplotlib"
    if renderer == "gl":
        rendered, mask = _render_gl(vertices, faces, K, height, width, albedo)
    elif renderer == "matplotlib":
        rendered, mask = _render_matplotlib(vertices, faces, K, height, width, albedo)
    else:
        raise MeshrecError(f"renderer must be 'auto', 'gl' or 'matplotlib', got {renderer!r}")
    blended = (1 - alpha) * image.astype(np.float64) + alpha * rendered.astype(np.float64)
    return np.where(mask[..., None], np.round(blended), image).astype(np.uint8)


def plot_prediction(
    prediction, index: int, image=None, ax=None, alpha: float = 0.5, renderer: str = "auto", keypoints: bool = True
):
    """Draw sample ``index`` of a prediction: its crop, the mesh over it, the 2D skeleton.

    Args:
        prediction: a :class:`~meshrec.models.reconstructor.Prediction`.
        index: which sample.
        image: the crop the network saw, ``(H, W, 3)`` or ``(3, H, W)`` (e.g. ``images[index]``);
            None draws on mid grey. Must match ``prediction.image_size``.
        ax: a 2D matplotlib axes; None makes a bare ``Figure`` (``ax.figure``), 4 inches wide.
        alpha, renderer: as :func:`overlay_mesh`.
        keypoints: draw ``prediction.joints2d`` (projected from the mesh) as a skeleton.

    Returns:
        The axes, titled with the side, the passes used and (when there is a loop) the mean
        predicted joint sigma in mm.
    """
    index = prediction.sample_index(index)
    height, width = prediction.image_size
    if image is None:
        image = np.full((height, width, 3), 128, dtype=np.uint8)
    image = _image_hwc_uint8(image)
    if image.shape[:2] != (height, width):
        raise MeshrecError(f"image is {image.shape[0]} x {image.shape[1]} but the prediction was made for {height} x {width}")
    overlay = overlay_mesh(
        image, prediction.vertices[index], prediction.faces_of(index), prediction.K[index], alpha=alpha, renderer=renderer
    )
    if ax is None:
        from matplotlib.figure import Figure

        ax = Figure(figsize=(4, 4 * height / width)).add_subplot()
    ax.imshow(overlay, extent=(-0.5, width - 0.5, height - 0.5, -0.5), interpolation="nearest")
    if keypoints:
        draw_keypoints(ax, prediction.joints2d[index])
    ax.set_xlim(-0.5, width - 0.5)
    ax.set_ylim(height - 0.5, -0.5)
    ax.set_axis_off()
    side = "left" if int(prediction.side[index]) == 1 else "right"
    title = f"{side}, {int(prediction.passes_used[index])} passes"
    if prediction.joint_variance is not None:
        title += f", mean σ {1000 * float(prediction.joint_variance[index].sqrt().mean()):.1f} mm"
    ax.set_title(title, fontsize=8)
    return ax


# --------------------------------------------------------------------------- 3D: plotly figures


def _plotly_colour(rgb: tuple[float, float, float]) -> str:
    return "rgb({}, {}, {})".format(*(round(255 * c) for c in rgb))


def _camera_frame_scene(title: str | None = None) -> dict:
    """A plotly scene seen from the camera: eye on -z, y down (OpenCV frame), x to the right."""
    return dict(
        title=title,
        scene=dict(
            aspectmode="data",
            xaxis=dict(title="x (m)"),
            yaxis=dict(title="y (m)"),
            zaxis=dict(title="z (m)"),
            camera=dict(up=dict(x=0, y=-1, z=0), eye=dict(x=0, y=0, z=-1.8)),
        ),
        margin=dict(l=0, r=0, t=40 if title else 10, b=0),
    )


def _mesh3d(vertices: np.ndarray, faces: np.ndarray, values: np.ndarray | None, values_label: str | None, cmax=None):
    import plotly.graph_objects as go

    style = dict(flatshading=False, lighting=dict(ambient=0.45, diffuse=0.7, specular=0.1), hoverinfo="skip")
    if values is None:
        return go.Mesh3d(
            x=vertices[:, 0], y=vertices[:, 1], z=vertices[:, 2], i=faces[:, 0], j=faces[:, 1], k=faces[:, 2],
            color=_plotly_colour(SKIN_COLOUR), name="mesh", **style,
        )
    return go.Mesh3d(
        x=vertices[:, 0], y=vertices[:, 1], z=vertices[:, 2], i=faces[:, 0], j=faces[:, 1], k=faces[:, 2],
        intensity=values, intensitymode="vertex", colorscale="Viridis", cmin=0.0,
        cmax=cmax if cmax is not None else max(float(values.max()), 1e-12),
        colorbar=dict(title=dict(text=values_label or "")), name="mesh", **style,
    )  # fmt: skip


def mesh_figure_3d(
    vertices,
    faces,
    joints=None,
    vertex_values=None,
    title: str | None = None,
    values_label: str | None = None,
):
    """An interactive plotly figure of one hand: the mesh, optionally its skeleton and a
    per-vertex quantity as colour.

    Traces: one ``Mesh3d`` (skin colour, or ``vertex_values`` through Viridis from 0 (dark
    blue) to the largest value (yellow), with a colour bar), then one ``Scatter3d`` per finger
    (wrist to tip, lines and markers) when ``joints`` are given. The view looks from the
    camera (OpenCV frame: y down).

    Args:
        vertices: ``(V, 3)`` metres, numpy or torch.
        faces: ``(F, 3)`` vertex ids.
        joints: ``(21, 3)`` OpenPose-order keypoints, or None.
        vertex_values: ``(V,)`` non-negative values, e.g. uncertainty in mm:
            ``1000 * meshrec.export.vertex_uncertainty(variance, vertices, joints)``.
        title: figure title.
        values_label: colour bar title, e.g. ``"σ (mm)"``.

    Returns:
        ``plotly.graph_objects.Figure``.
    """
    import plotly.graph_objects as go

    vertices = _as_numpy(vertices, "vertices", (3,)).astype(np.float64)
    faces = _as_numpy(faces, "faces", (3,)).astype(np.int64)
    if len(faces) and (faces.min() < 0 or faces.max() >= len(vertices)):
        raise MeshrecError(f"faces index vertices 0..{len(vertices) - 1}, got ids {faces.min()}..{faces.max()}")
    values = None
    if vertex_values is not None:
        values = np.asarray(vertex_values.detach().cpu() if hasattr(vertex_values, "detach") else vertex_values, dtype=np.float64)
        if values.shape != (len(vertices),):
            raise MeshrecError(f"vertex_values must have shape ({len(vertices)},), one per vertex, got {values.shape}")
        if not np.isfinite(values).all():
            raise MeshrecError("vertex_values must be finite")
    traces = [_mesh3d(vertices, faces, values, values_label)]
    if joints is not None:
        joints = _as_numpy(joints, "joints", (3,)).astype(np.float64)
        if len(joints) != 21:
            raise MeshrecError(f"joints must be the 21 OpenPose keypoints (21, 3), got {joints.shape}")
        for finger, chain in OPENPOSE_FINGERS.items():
            points = joints[[0, *chain]]
            traces.append(
                go.Scatter3d(
                    x=points[:, 0], y=points[:, 1], z=points[:, 2], mode="lines+markers", name=finger,
                    line=dict(color=FINGER_COLOURS[finger], width=5), marker=dict(size=3, color=FINGER_COLOURS[finger]),
                )  # fmt: skip
            )
    return go.Figure(data=traces, layout=_camera_frame_scene(title))


def prediction_figure_3d(prediction, index: int, uncertainty: bool = True, joints: bool = True):
    """:func:`mesh_figure_3d` of sample ``index`` (correct winding for its side), coloured by
    the predicted uncertainty in mm (:func:`meshrec.export.vertex_uncertainty`) when
    ``uncertainty`` and the prediction has ``joint_variance``."""
    from meshrec.export import vertex_uncertainty

    index = prediction.sample_index(index)
    vertices, sample_joints = prediction.vertices[index].detach().cpu(), prediction.joints[index].detach().cpu()
    values = None
    if uncertainty and prediction.joint_variance is not None:
        values = 1000 * vertex_uncertainty(prediction.joint_variance[index].detach().cpu(), vertices, sample_joints)
    side = "left" if int(prediction.side[index]) == 1 else "right"
    return mesh_figure_3d(
        vertices, prediction.faces_of(index), joints=sample_joints if joints else None, vertex_values=values,
        title=f"{side} hand, {int(prediction.passes_used[index])} passes", values_label="σ (mm)",
    )  # fmt: skip


def refinement_steps_figure(prediction, index: int, interactive: bool = True):
    """Step through the stages of one prediction: ``global``, ``coarse_to_fine``, ``pass_1`` ...
    (:meth:`~meshrec.models.reconstructor.Prediction.stage_vertices`).

    Each stage's mesh is coloured by how far each vertex moved since the previous stage, in
    mm (the first stage is all 0); one colour scale for all stages.

    Args:
        prediction: a :class:`~meshrec.models.reconstructor.Prediction`.
        index: which sample.
        interactive: True: a plotly figure with one frame per stage and a slider (the initial
            view shows the first stage; axis ranges are fixed over all stages, so only the
            mesh moves). False: a matplotlib ``Figure`` with one 3D panel per stage, seen from
            the camera, on one shared scale.
    """
    index = prediction.sample_index(index)
    stages = {name: v[index].detach().cpu().double().numpy() for name, v in prediction.stage_vertices().items()}
    names = list(stages)
    faces = prediction.faces_of(index).cpu().numpy()
    meshes = list(stages.values())
    moved = [np.zeros(len(meshes[0]))] + [1000 * np.linalg.norm(b - a, axis=1) for a, b in zip(meshes, meshes[1:])]
    titles = [
        f"{name} ({k + 1}/{len(names)})" + (f": vertices moved {m.mean():.2f} mm on average" if k else "")
        for k, (name, m) in enumerate(zip(names, moved))
    ]
    if not interactive:
        return _refinement_steps_matplotlib(meshes, faces, names, moved)

    import plotly.graph_objects as go

    cmax = max(max(float(m.max()) for m in moved), 1e-6)
    frames = [
        go.Frame(data=[_mesh3d(mesh, faces, m, "moved (mm)", cmax)], name=name, layout=dict(title=dict(text=title)))
        for mesh, m, name, title in zip(meshes, moved, names, titles)
    ]
    # one cube around every stage: the axes stay put while the slider moves the mesh
    every = np.concatenate(meshes)
    lower, upper = every.min(0), every.max(0)
    centre, half = (lower + upper) / 2, (upper - lower).max() / 2 * 1.05
    layout = _camera_frame_scene(titles[0])
    layout["scene"]["aspectmode"] = "cube"
    for k, axis in enumerate("xyz"):
        layout["scene"][f"{axis}axis"] = dict(range=[centre[k] - half, centre[k] + half], autorange=False, title=f"{axis} (m)")
    layout["sliders"] = [
        dict(
            active=0,
            currentvalue=dict(prefix="stage: "),
            steps=[
                dict(label=name, method="animate",
                     args=[[name], dict(mode="immediate", frame=dict(duration=0, redraw=True), transition=dict(duration=0))])
                for name in names
            ],  # fmt: skip
        )
    ]
    return go.Figure(data=frames[0].data, frames=frames, layout=layout)


def _refinement_steps_matplotlib(meshes, faces, names, moved):
    from matplotlib.figure import Figure

    # camera frame (x right, y down, z forward) -> matplotlib (x right, depth, up): a rotation,
    # so windings are kept; PALM_VIEW then looks from the camera
    to_matplotlib = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]])
    rotated = [mesh @ to_matplotlib.T for mesh in meshes]
    every = np.concatenate(rotated)
    lower, upper = every.min(0), every.max(0)
    extent, centre = (upper - lower).max() / 2 * 1.05, (lower + upper) / 2
    panel, title_inches = 2.4, 0.45  # two lines of title above each panel
    figure = Figure(figsize=(panel * len(meshes), panel + title_inches))
    for k, (mesh, name, m) in enumerate(zip(rotated, names, moved)):
        ax = figure.add_subplot(1, len(meshes), k + 1, projection="3d")
        title = f"{name}\nmoved {m.mean():.2f} mm" if k else f"{name}\n"
        plot_hand(ax, mesh, faces, view=PALM_VIEW, title=title, extent=extent, centre=centre)
    figure.subplots_adjust(left=0, right=1, bottom=0, top=panel / (panel + title_inches), wspace=0)
    return figure


CONTACT_SHEET_CELL = 320
"""Side (pixels) of a contact sheet's square cells."""


def contact_sheet(
    images: Sequence[np.ndarray], labels: Sequence[str] | None = None, *, columns: int | None = None,
    cell: int = CONTACT_SHEET_CELL, gap: int = 8,
) -> np.ndarray:  # fmt: skip
    """Many pictures on one sheet: each ``(H, W, 3)`` uint8 fitted (aspect kept) into a ``cell``
    square on a dark background, in rows of ``columns`` (default: a near-square grid), with its
    label written under it.

    Returns:
        ``(rows * (cell + label + gap) + gap, columns * (cell + gap) + gap, 3)`` uint8.
    """
    from PIL import Image, ImageDraw

    if not images:
        raise MeshrecError("contact_sheet needs at least one image")
    if labels is not None and len(labels) != len(images):
        raise MeshrecError(f"contact_sheet got {len(images)} images but {len(labels)} labels")
    columns = columns or int(np.ceil(np.sqrt(len(images))))
    rows = int(np.ceil(len(images) / columns))
    label_height = 16 if labels is not None else 0
    sheet = Image.new("RGB", (columns * (cell + gap) + gap, rows * (cell + label_height + gap) + gap), (24, 24, 24))
    draw = ImageDraw.Draw(sheet)
    for index, image in enumerate(images):
        picture = Image.fromarray(_image_hwc_uint8(image))
        picture.thumbnail((cell, cell))
        row, column = divmod(index, columns)
        left, top = gap + column * (cell + gap), gap + row * (cell + label_height + gap)
        sheet.paste(picture, (left + (cell - picture.width) // 2, top + (cell - picture.height) // 2))
        if labels is not None:
            draw.text((left, top + cell + 2), str(labels[index])[: cell // 6], fill=(230, 230, 230))
    return np.asarray(sheet)
