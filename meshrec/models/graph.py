"""Pixel-aligned feature retrieval and the graph convolution used to refine meshes.

Retrieval samples an image feature map where each vertex projects, so a vertex reads the
features of the pixel it is drawn on (the consecutive pixel-aligned retrieval of P_GLFnet).
The graph block is a spiral convolution (SpiralNet++): each vertex concatenates the features of
a fixed, ordered neighbourhood (itself, its 1-ring, its 2-ring, ... from
:mod:`meshrec.geometry.mesh_hierarchy`) and applies one linear map. We use it instead of a
Chebyshev convolution because a gather followed by a dense matmul is the cheapest graph
operator on a CPU (no sparse matmul), its cost is exactly ``V * S * C_in * C_out`` multiply-adds,
and it is anisotropic (neighbours keep their order), which mesh-regression papers found helps.
"""

from __future__ import annotations

import torch
from torch import nn

from meshrec.errors import MeshrecError
from meshrec.geometry.camera import project_points

GATHER_BLOCK_BYTES = 2 << 20
"""Largest gathered neighbourhood block a spiral convolution builds at once (2 MiB: measured best
of 1, 2, 4 and 8 MiB on 2 CPU cores, docs/benchmarks.md)."""


def pixels_to_grid(uv: torch.Tensor, image_size: tuple[int, int]) -> torch.Tensor:
    """Image pixels to ``grid_sample`` coordinates (``align_corners=False``).

    A feature map at stride ``s`` covering an ``H x W`` image has cells whose centres sit at
    image pixels ``(i + 0.5) * s - 0.5``; with ``align_corners=False`` the normalised coordinate
    of image pixel ``u`` is then ``2 (u + 0.5) / W - 1`` whatever the stride, so one conversion
    serves every pyramid level.

    Args:
        uv: ``(B, N, 2)`` pixel coordinates ``(u, v)``, pixel centres at integers.
        image_size: ``(H, W)`` of the image the pixels refer to.

    Returns:
        ``(B, N, 2)`` in [-1, 1] inside the image.
    """
    height, width = image_size
    scale = uv.new_tensor([2.0 / width, 2.0 / height])
    return (uv + 0.5) * scale - 1.0


def sample_vertex_features(
    feature_map: torch.Tensor, uv: torch.Tensor, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinearly sample a feature map at pixel positions.

    Border-aware: positions outside the image read the nearest border feature (never zeros,
    which would look like a real feature), and a second output says which positions were
    inside, so the network can tell the two apart.

    Args:
        feature_map: ``(B, C, h, w)`` features of an ``H x W`` image at stride ``H / h``.
        uv: ``(B, N, 2)`` image pixels ``(u, v)``, pixel centres at integers.
        image_size: ``(H, W)``.

    Returns:
        features: ``(B, N, C)``; ``features[b, n]`` is the map of sample b at point n.
        inside: ``(B, N, 1)`` 1.0 where the point lies inside the image, else 0.0.
    """
    grid = pixels_to_grid(uv, image_size)
    sampled = nn.functional.grid_sample(
        feature_map, grid.unsqueeze(2), mode="bilinear", padding_mode="border", align_corners=False
    )  # (B, C, N, 1)
    inside = (grid.abs() <= 1.0).all(dim=-1, keepdim=True).to(uv.dtype)
    return sampled.squeeze(-1).transpose(1, 2), inside


def retrieve_vertex_features(
    feature_map: torch.Tensor, vertices: torch.Tensor, K: torch.Tensor, image_size: tuple[int, int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Project camera-frame vertices with ``K`` and sample the feature map there.

    Args:
        feature_map: ``(B, C, h, w)``.
        vertices: ``(B, N, 3)`` camera frame, metres.
        K: ``(B, 3, 3)`` intrinsics of the ``H x W`` crop.
        image_size: ``(H, W)``.

    Returns:
        features ``(B, N, C)``, inside ``(B, N, 1)``, uv ``(B, N, 2)`` (the pixels sampled).
    """
    uv = project_points(vertices, K)
    features, inside = sample_vertex_features(feature_map, uv, image_size)
    return features, inside, uv


def spiral_gather(features: torch.Tensor, spirals: torch.Tensor) -> torch.Tensor:
    """Concatenate each vertex's neighbourhood features.

    Args:
        features: ``(B, V, C)``.
        spirals: ``(N, S)`` int64; ``spirals[n]`` lists a vertex's neighbourhood, the vertex
            first (N = V for the whole mesh, fewer for a block of its vertices).

    Returns:
        ``(B, N, S * C)``; row n holds ``features[:, spirals[n, 0]], features[:, spirals[n, 1]], ...``.
    """
    batch, channels = features.shape[0], features.shape[2]
    gathered = features.index_select(1, spirals.reshape(-1))
    return gathered.view(batch, spirals.shape[0], spirals.shape[1] * channels)


class SpiralConv(nn.Module):
    """One spiral convolution: gather the ordered neighbourhood, then a linear map.

    Args:
        in_channels, out_channels: per-vertex feature widths.
        spirals: ``(V, S)`` neighbourhood indices (a non-persistent buffer: it is rebuilt from
            the mesh, never stored in checkpoints).
    """

    def __init__(self, in_channels: int, out_channels: int, spirals: torch.Tensor) -> None:
        super().__init__()
        self.register_buffer("spirals", spirals.long(), persistent=False)
        self.linear = nn.Linear(in_channels * spirals.shape[1], out_channels)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(B, V, C_in)`` -> ``(B, V, C_out)``."""
        batch, num_vertices, channels = features.shape
        if num_vertices != self.spirals.shape[0] or channels * self.spirals.shape[1] != self.linear.in_features:
            raise MeshrecError(
                f"SpiralConv expects features (B, {self.spirals.shape[0]}, "
                f"{self.linear.in_features // self.spirals.shape[1]}), got {tuple(features.shape)}"
            )
        # The gathered neighbourhoods are S times the features: built whole for a batch they are
        # tens of MB, which the allocator hands back to the OS and page-faults in again on every
        # call (a fifth of a batch-32 forward). Vertex blocks keep each under GATHER_BLOCK_BYTES.
        per_vertex = batch * self.spirals.shape[1] * channels * features.element_size()
        block = max(1, GATHER_BLOCK_BYTES // per_vertex)
        if num_vertices <= block:
            return self.linear(spiral_gather(features, self.spirals))
        return torch.cat(
            [self.linear(spiral_gather(features, self.spirals[start : start + block]))
             for start in range(0, num_vertices, block)],
            dim=1,
        )  # fmt: skip


class SpiralBlock(nn.Module):
    """Per-vertex input projection, then two spiral convolutions with a residual connection.

    ``h = relu(W_in x + g)``; ``h = h + relu(spiral2(relu(spiral1(h))))`` where ``g`` is a
    per-sample conditioning vector (global image feature) broadcast to every vertex — added
    once per vertex rather than concatenated into every neighbourhood, which would multiply its
    cost by the spiral length.

    Args:
        in_channels: width of the per-vertex input.
        channels: width of the block.
        condition_channels: width of the per-sample conditioning vector (0 for none).
        spirals: ``(V, S)`` neighbourhoods of the mesh level the block works on.
    """

    def __init__(self, in_channels: int, channels: int, condition_channels: int, spirals: torch.Tensor) -> None:
        super().__init__()
        self.project = nn.Linear(in_channels, channels)
        self.condition = nn.Linear(condition_channels, channels, bias=False) if condition_channels else None
        self.spiral1 = SpiralConv(channels, channels, spirals)
        self.spiral2 = SpiralConv(channels, channels, spirals)

    def forward(self, inputs: torch.Tensor, condition: torch.Tensor | None = None) -> torch.Tensor:
        """inputs ``(B, V, C_in)``, condition ``(B, C_cond)`` -> ``(B, V, channels)``."""
        hidden = self.project(inputs)
        if self.condition is not None and condition is not None:
            hidden = hidden + self.condition(condition).unsqueeze(1)
        hidden = torch.relu(hidden)
        return hidden + torch.relu(self.spiral2(torch.relu(self.spiral1(hidden))))
