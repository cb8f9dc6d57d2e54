"""Fast headless OpenGL renderer: moderngl on an EGL context (Mesa llvmpipe on a CPU).

Needs the ``moderngl`` pip package and, on Debian/Ubuntu, the system packages
``libegl1 libegl-mesa0 libgl1-mesa-dri`` (EGL loader, Mesa's EGL driver, and the
software rasterizer llvmpipe). A GPU with its vendor EGL driver works too.

Process model: one EGL context per process, created on first use and re-created in a
child after ``fork`` (DataLoader workers), detected by comparing ``os.getpid()``. Before
the first context, ``LP_NUM_THREADS=0`` is set unless already set, so that Mesa llvmpipe
rasterizes on the calling thread: its worker threads would not survive a fork. Each
render call makes the context current on the calling thread under a lock, so a renderer
may be used from any thread (one call at a time).

Batches are drawn as tiles of one large framebuffer, one draw call and one read-back per
tile sheet (the CPU places each mesh's clip coordinates in its tile, clip distances keep
it there); buffers and framebuffers are kept and reused between calls. With
``ambient=1, specular=0`` (lighting baked into the colours by the caller) a program
without normals is used and no normals are computed.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence

import numpy as np
import torch

from meshrec.errors import MeshrecError
from meshrec.geometry.normals import vertex_normals
from meshrec.render.base import (
    DEFAULT_AMBIENT,
    DEFAULT_LIGHT_DIR,
    DEFAULT_SHININESS,
    DEFAULT_SPECULAR,
    RendererUnavailableError,
    RenderOutput,
    Shading,
    prepare_render_inputs,
)
from meshrec.render.cameras import opencv_to_gl_projection

__all__ = ["GLRenderer", "INSTALL_HINT"]

INSTALL_HINT = (
    "the OpenGL renderer needs the pip package 'moderngl' and a working EGL: on Debian/Ubuntu "
    "run `apt-get install -y libegl1 libegl-mesa0 libgl1-mesa-dri` (software rendering with "
    "Mesa llvmpipe, no GPU needed); or use get_renderer('pytorch3d') (slow on CPU)"
)

# Largest tile sheet side in pixels (llvmpipe allows 16384; smaller keeps memory modest).
_MAX_SHEET_SIDE = 4096
# At most this many meshes per tile sheet: more gains nothing once draw overhead is amortised.
_MAX_TILES = 64

# Every mesh of a sheet is drawn in one call: the CPU puts each mesh's clip coordinates into
# its tile (see ``_sheet_projections``), and four clip distances keep its triangles inside
# that tile (a hand cut by the image border must not spill into its neighbour). The tile
# of a vertex follows from its number: mesh b of a sheet owns vertices [b V, (b + 1) V).
_TILE_CLIPPING = """
uniform int vertices_per_mesh;
uniform int columns;
uniform vec2 tile_extent;  // one tile's width and height in sheet NDC units
void clip_to_tile(vec4 clip) {
    int tile = gl_VertexID / vertices_per_mesh;
    vec2 low = vec2(float(tile % columns), float(tile / columns)) * tile_extent - 1.0;
    vec2 high = low + tile_extent;
    gl_ClipDistance[0] = clip.x - low.x * clip.w;
    gl_ClipDistance[1] = high.x * clip.w - clip.x;
    gl_ClipDistance[2] = clip.y - low.y * clip.w;
    gl_ClipDistance[3] = high.y * clip.w - clip.y;
}
"""

_VERTEX_SHADER = (
    """
#version 330
"""
    + _TILE_CLIPPING
    + """
in vec4 in_clip;
in vec3 in_position;
in vec3 in_normal;
in vec3 in_color;
out vec3 v_position;
out vec3 v_normal;
out vec3 v_color;
void main() {
    v_position = in_position;
    v_normal = in_normal;
    v_color = in_color;
    gl_Position = in_clip;
    clip_to_tile(in_clip);
}
"""
)

# The shading model of meshrec.render.base, line for line.
_FRAGMENT_SHADER = """
#version 330
uniform vec3 light_dir;
uniform float ambient;
uniform float specular;
uniform float shininess;
in vec3 v_position;
in vec3 v_normal;
in vec3 v_color;
layout(location = 0) out vec4 out_color;
layout(location = 1) out float out_depth;
void main() {
    vec3 view = normalize(-v_position);
    // The visible side of this triangle, whatever its winding.
    vec3 face_normal = normalize(cross(dFdx(v_position), dFdy(v_position)));
    if (dot(face_normal, view) < 0.0) face_normal = -face_normal;
    vec3 n = normalize(v_normal);
    if (dot(n, face_normal) < 0.0) n = -n;
    float lambert = max(dot(n, light_dir), 0.0);
    float highlight = 0.0;
    if (lambert > 0.0) highlight = pow(max(dot(n, normalize(light_dir + view)), 0.0), shininess);
    vec3 colour = v_color * (ambient + (1.0 - ambient) * lambert) + specular * highlight;
    out_color = vec4(clamp(colour, 0.0, 1.0), 1.0);
    out_depth = v_position.z;
}
"""

# ambient = 1 and specular = 0 reduce the shading model to the albedo: no normals needed
# (callers that bake their own lighting into per-vertex colours take this path).
_ALBEDO_VERTEX_SHADER = (
    """
#version 330
"""
    + _TILE_CLIPPING
    + """
in vec4 in_clip;
in vec3 in_color;
out vec3 v_color;
out float v_depth;
void main() {
    v_color = in_color;
    v_depth = in_clip.w;  // the projection puts camera-frame z in w
    gl_Position = in_clip;
    clip_to_tile(in_clip);
}
"""
)

_ALBEDO_FRAGMENT_SHADER = """
#version 330
in vec3 v_color;
in float v_depth;
layout(location = 0) out vec4 out_color;
layout(location = 1) out float out_depth;
void main() {
    out_color = vec4(clamp(v_color, 0.0, 1.0), 1.0);
    out_depth = v_depth;
}
"""

# Per-vertex floats of the two programs: clip (4), position (3), normal (3), colour (3);
# clip (4), colour (3).
_LIT_LAYOUT = ("4f 3f 3f 3f", ("in_clip", "in_position", "in_normal", "in_color"), 13)
_ALBEDO_LAYOUT = ("4f 3f", ("in_clip", "in_color"), 7)
_GL_CLIP_DISTANCE0 = 0x3000


def _sheet_projections(projections: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """``(B, 4, 4)`` projections into tile ``b`` (row-major, ``b = row * cols + col``) of a sheet.

    A tile's NDC square ``[-1, 1]^2`` maps to its part of the sheet's NDC square; acting on
    clip coordinates (``x -> x / cols + offset * w``) keeps the perspective division intact.
    """
    batch = projections.shape[0]
    row, col = np.divmod(np.arange(batch), cols)
    placement = np.zeros((batch, 4, 4), dtype=np.float64)
    placement[:, 0, 0] = 1.0 / cols
    placement[:, 1, 1] = 1.0 / rows
    placement[:, 0, 3] = (2 * col + 1) / cols - 1.0
    placement[:, 1, 3] = (2 * row + 1) / rows - 1.0
    placement[:, 2, 2] = placement[:, 3, 3] = 1.0
    return (placement @ projections.astype(np.float64)).astype(np.float32)


_context_pid: int | None = None
_context = None
_context_lock = threading.Lock()


def require_moderngl():
    """The moderngl module, or :class:`RendererUnavailableError` saying what to install."""
    try:
        import moderngl
    except ImportError as error:
        raise RendererUnavailableError(f"cannot import moderngl ({error}); {INSTALL_HINT}") from error
    return moderngl


def process_context():
    """This process's moderngl EGL context (created on first call, and again after fork).

    Raises:
        RendererUnavailableError: moderngl or EGL is missing; the message names the packages.
    """
    global _context_pid, _context, _context_lock
    pid = os.getpid()
    if _context_pid != pid:
        # A context inherited through fork belongs to the parent: drop it without releasing
        # (its driver threads did not survive the fork); a held lock may have been copied too.
        _context, _context_pid, _context_lock = None, pid, threading.Lock()
    if _context is None:
        moderngl = require_moderngl()
        # llvmpipe's rasterizer threads do not survive fork, and the EGL display (with its
        # thread pool) is inherited, so a forked child (DataLoader worker) of a process that
        # rendered would hang on its first read-back. Rasterizing on the calling thread
        # avoids that and cost no measurable speed on 2 cores. Set LP_NUM_THREADS yourself
        # to override (then do not fork after rendering). Other GL drivers ignore it.
        os.environ.setdefault("LP_NUM_THREADS", "0")
        try:
            _context = moderngl.create_standalone_context(backend="egl", require=330)
        except Exception as error:  # glcontext raises plain Exception for a missing libEGL
            raise RendererUnavailableError(
                f"cannot create a headless EGL OpenGL context ({type(error).__name__}: {error}); "
                f"{INSTALL_HINT}"
            ) from error
    return _context


class GLRenderer:
    """Render batches of meshes with OpenGL (EGL, headless). Fast on CPU via llvmpipe.

    The GL context and resources are created lazily on the first ``render`` call (and
    again after fork), so constructing one is free and safe to pickle into DataLoader
    workers.

    Args:
        near, far: clipping distances along the camera z axis, metres; surfaces outside
            ``[near, far]`` are not drawn. The depth buffer has 24 bits between them.

    >>> renderer = GLRenderer()  # doctest: +SKIP
    >>> out = renderer.render(vertices, faces, K, (128, 128))  # doctest: +SKIP
    >>> out.rgb.shape, out.mask.shape, out.depth.shape  # doctest: +SKIP
    ((B, 128, 128, 3), (B, 128, 128), (B, 128, 128))
    """

    name = "gl"

    def __init__(self, near: float = 0.01, far: float = 100.0) -> None:
        if not 0.0 < near < far:
            raise MeshrecError(f"need 0 < near < far, got near={near}, far={far}")
        self.near = float(near)
        self.far = float(far)
        self._resources_context = None  # the context our GL objects belong to
        self._reset_resources()

    def __getstate__(self) -> dict:
        # GL objects cannot cross process boundaries; a copy starts without them.
        return {"near": self.near, "far": self.far}

    def __setstate__(self, state: dict) -> None:
        self.near, self.far = state["near"], state["far"]
        self._resources_context = None
        self._reset_resources()

    def _reset_resources(self) -> None:
        self._programs: dict[bool, object] = {}  # lit (full shading model) or albedo only
        self._framebuffer = None
        self._sheet_key: tuple[int, int, int, int] | None = None  # (H, W, rows, cols)
        self._vertex_buffer = None
        self._index_buffer = None
        self._vertex_arrays: dict[bool, object] = {}
        self._index_faces: np.ndarray | None = None
        self._index_meshes = 0
        self._index_num_vertices = 0

    def _ensure_program(self, ctx, lit: bool) -> None:
        if self._resources_context is not ctx:
            # A new context (e.g. in a forked child): objects made in the old one are not
            # ours to release.
            self._reset_resources()
            self._resources_context = ctx
        if lit not in self._programs:
            vertex, fragment = (
                (_VERTEX_SHADER, _FRAGMENT_SHADER) if lit else (_ALBEDO_VERTEX_SHADER, _ALBEDO_FRAGMENT_SHADER)
            )
            self._programs[lit] = ctx.program(vertex_shader=vertex, fragment_shader=fragment)

    def _ensure_sheet(self, ctx, height: int, width: int, rows: int, cols: int) -> None:
        key = (height, width, rows, cols)
        if self._sheet_key == key:
            return
        if self._framebuffer is not None:
            for attachment in self._framebuffer.color_attachments:
                attachment.release()
            self._framebuffer.depth_attachment.release()
            self._framebuffer.release()
        size = (cols * width, rows * height)
        self._framebuffer = ctx.framebuffer(
            color_attachments=[
                ctx.renderbuffer(size, components=4),  # shaded colour, uint8
                ctx.renderbuffer(size, components=1, dtype="f4"),  # camera-frame z, metres
            ],
            depth_attachment=ctx.depth_renderbuffer(size),
        )
        self._sheet_key = key

    def _ensure_buffers(
        self, ctx, faces: np.ndarray, num_vertices: int, meshes: int, vertex_bytes: int, lit: bool
    ) -> None:
        rebuild_indices = (
            self._index_buffer is None
            or self._index_meshes < meshes
            or self._index_num_vertices != num_vertices
            or self._index_faces is None
            or not np.array_equal(self._index_faces, faces)
        )
        rebuild_vertices = self._vertex_buffer is None or self._vertex_buffer.size < vertex_bytes
        if rebuild_indices or rebuild_vertices:
            for vertex_array in self._vertex_arrays.values():
                vertex_array.release()
            self._vertex_arrays = {}
        if rebuild_vertices:
            if self._vertex_buffer is not None:
                self._vertex_buffer.release()
            self._vertex_buffer = ctx.buffer(reserve=vertex_bytes, dynamic=True)
        if rebuild_indices:
            if self._index_buffer is not None:
                self._index_buffer.release()
            # Mesh b of a sheet uses vertices [b V, (b + 1) V) of the vertex buffer.
            offsets = np.arange(meshes, dtype=np.int64)[:, None, None] * num_vertices
            indices = (faces[None] + offsets).astype(np.uint32)
            self._index_buffer = ctx.buffer(indices.tobytes())
            self._index_faces = faces.copy()
            self._index_meshes = meshes
            self._index_num_vertices = num_vertices
        if lit not in self._vertex_arrays:
            layout, names, _ = _LIT_LAYOUT if lit else _ALBEDO_LAYOUT
            self._vertex_arrays[lit] = ctx.vertex_array(
                self._programs[lit],
                [(self._vertex_buffer, layout, *names)],
                index_buffer=self._index_buffer,
                index_element_size=4,
            )

    def render(
        self,
        vertices,
        faces,
        K,
        image_size: int | Sequence[int],
        *,
        colors=None,
        light_dir: Sequence[float] = DEFAULT_LIGHT_DIR,
        ambient: float = DEFAULT_AMBIENT,
        specular: float = DEFAULT_SPECULAR,
        shininess: float = DEFAULT_SHININESS,
        background: Sequence[float] = (0.0, 0.0, 0.0),
    ) -> RenderOutput:
        """Render each mesh of a batch: shaded RGB, coverage mask, depth.

        Args:
            vertices: ``(B, V, 3)`` (or ``(V, 3)``) OpenCV camera frame, metres; torch or numpy.
            faces: ``(F, 3)`` vertex indices shared by the batch (any winding; both sides
                are drawn and shaded).
            K: ``(B, 3, 3)`` or ``(3, 3)`` intrinsics, meshrec pixels (centres at integers).
            image_size: ``H`` or ``(H, W)``.
            colors: albedo in [0, 1]: None (skin tone), ``(3,)``, ``(V, 3)`` or ``(B, V, 3)``.
            light_dir: camera-frame direction towards the light (normalised here).
            ambient: share of the albedo lit regardless of orientation, [0, 1].
            specular, shininess: Blinn-Phong highlight strength and exponent.
            background: RGB in [0, 1] where nothing is drawn.

        Returns:
            RenderOutput with numpy ``rgb`` (B, H, W, 3) uint8, ``mask`` (B, H, W) bool,
            ``depth`` (B, H, W) float32 metres (0 where empty). See ``meshrec.render.base``
            for the shading model.
        """
        shading = Shading(
            tuple(light_dir), float(ambient), float(specular), float(shininess), tuple(background)
        )
        # the shading model then gives the albedo itself, whatever the normals
        lit = not (shading.ambient == 1.0 and shading.specular == 0.0)
        inputs = prepare_render_inputs(vertices, faces, K, image_size, colors)
        height, width = inputs.height, inputs.width
        faces_np = inputs.faces.cpu().numpy()
        vertices_np = inputs.vertices.detach().to("cpu", torch.float32).numpy()
        batch, num_vertices = vertices_np.shape[:2]
        colors_np = inputs.colors.detach().to("cpu", torch.float32).numpy()
        normals_np = vertex_normals(vertices_np, faces_np) if lit else None
        intrinsics = inputs.K.detach().cpu().numpy()
        projections = opencv_to_gl_projection(intrinsics, (height, width), self.near, self.far)
        num_indices = faces_np.size

        cols = max(1, min(batch, _MAX_TILES, _MAX_SHEET_SIDE // width))
        rows = max(1, min(-(-batch // cols), _MAX_TILES // cols, _MAX_SHEET_SIDE // height))
        if cols * width > 16384 or rows * height > 16384:
            raise MeshrecError(f"image_size {(height, width)} exceeds the 16384 px OpenGL limit")
        per_sheet = rows * cols
        floats_per_vertex = (_LIT_LAYOUT if lit else _ALBEDO_LAYOUT)[2]
        homogeneous = np.concatenate([vertices_np, np.ones((batch, num_vertices, 1), np.float32)], axis=-1)

        rgb = np.empty((batch, height, width, 3), dtype=np.uint8)
        depth = np.empty((batch, height, width), dtype=np.float32)
        ctx = process_context()
        moderngl = require_moderngl()
        with _context_lock, ctx:
            self._ensure_program(ctx, lit)
            self._ensure_sheet(ctx, height, width, rows, cols)
            self._ensure_buffers(
                ctx, faces_np, num_vertices, per_sheet, per_sheet * num_vertices * floats_per_vertex * 4, lit
            )
            program = self._programs[lit]
            if lit:
                program["light_dir"].value = tuple(shading.unit_light_dir)
                program["ambient"].value = shading.ambient
                program["specular"].value = shading.specular
                program["shininess"].value = shading.shininess
            program["vertices_per_mesh"].value = num_vertices
            program["columns"].value = cols
            program["tile_extent"].value = (2.0 / cols, 2.0 / rows)
            framebuffer = self._framebuffer
            framebuffer.use()
            ctx.viewport = (0, 0, cols * width, rows * height)
            ctx.scissor = None
            ctx.enable(moderngl.DEPTH_TEST)
            ctx.disable(moderngl.CULL_FACE)  # the y flip in the projection reverses windings
            for plane in range(4):
                ctx.enable_direct(_GL_CLIP_DISTANCE0 + plane)

            for start in range(0, batch, per_sheet):
                count = min(per_sheet, batch - start)
                used_rows = -(-count // cols)
                used_cols = cols if used_rows > 1 else count
                region = (0, 0, used_cols * width, used_rows * height)
                framebuffer.clear(0.0, 0.0, 0.0, 0.0, depth=1.0, viewport=region)
                sheet = _sheet_projections(projections[start : start + count], rows, cols)
                # (count, V, floats_per_vertex): the attributes interleaved as the vertex shader reads them
                vertex_data = np.empty((count, num_vertices, floats_per_vertex), dtype=np.float32)
                np.matmul(homogeneous[start : start + count], sheet.transpose(0, 2, 1), out=vertex_data[..., 0:4])
                if lit:
                    vertex_data[..., 4:7] = vertices_np[start : start + count]
                    vertex_data[..., 7:10] = normals_np[start : start + count]
                vertex_data[..., -3:] = colors_np[start : start + count]
                self._vertex_buffer.write(vertex_data)
                self._vertex_arrays[lit].render(moderngl.TRIANGLES, vertices=count * num_indices)
                rgb_bytes = framebuffer.read(viewport=region, components=3, attachment=0)
                depth_bytes = framebuffer.read(viewport=region, components=1, attachment=1, dtype="f4")
                sheet_rgb = np.frombuffer(rgb_bytes, np.uint8)
                sheet_depth = np.frombuffer(depth_bytes, np.float32)
                # Window row y is image row y (see cameras.py); tiles are laid out row-major.
                tiles_rgb = sheet_rgb.reshape(used_rows, height, used_cols, width, 3)
                tiles_rgb = tiles_rgb.transpose(0, 2, 1, 3, 4)
                tiles_depth = sheet_depth.reshape(used_rows, height, used_cols, width)
                tiles_depth = tiles_depth.transpose(0, 2, 1, 3)
                rgb[start : start + count] = tiles_rgb.reshape(-1, height, width, 3)[:count]
                depth[start : start + count] = tiles_depth.reshape(-1, height, width)[:count]
            for plane in range(4):
                ctx.disable_direct(_GL_CLIP_DISTANCE0 + plane)  # leave the shared context as we found it

        mask = depth > 0.0
        if any(shading.background):
            background_u8 = np.round(np.asarray(shading.background) * 255.0).astype(np.uint8)
            rgb[~mask] = background_u8
        return RenderOutput(rgb=rgb, mask=mask, depth=depth)
