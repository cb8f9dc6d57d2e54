"""Up-sampling decoder: the backbone's pyramid -> stride-4 features for the keypoint head.

A feature-pyramid top-down path: starting from the stride-32 level, each step doubles the
resolution (:func:`upsample2x_aligned`), adds a 1x1 projection of the backbone's level at that
stride (the lateral connection: fine detail the coarse level lost) and mixes with a 3x3
conv + BN + ReLU. The last step's conv is the keypoint head's own (its group branches), so the
decoder returns the sum ``up + lateral`` at the output stride, without a conv of its own.

Why: a heatmap head at stride 8 (16 x 16 cells at 128 px) with a ~79 px receptive field learned
~3x slower than a plain up-sampling head at stride 4 on the same backbone (docs/benchmarks.md).

Alignment: backbone cell ``i`` at stride ``s`` is centred on crop pixel ``s * i`` (3x3,
stride-2, padding-1 convolutions), so doubling the resolution must put output cell ``k`` at input
cell ``k / 2``: even cells copy, odd cells average their two neighbours. PyTorch's
``interpolate(scale_factor=2)`` puts it at ``k / 2 - 1/4`` (``align_corners=False``) instead,
which would shift every level a quarter cell.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from meshrec.errors import MeshrecError
from meshrec.models.backbone import STRIDES, conv_bn_relu


def upsample2x_aligned(features: torch.Tensor) -> torch.Tensor:
    """``(B, C, h, w) -> (B, C, 2h, 2w)`` with output cell ``k`` at input cell ``k / 2``.

    Bilinear; the last odd row / column (``k = 2h - 1``, half a cell past the input's last
    centre) repeats the edge.

    >>> x = torch.tensor([[[[0.0, 2.0]]]])
    >>> upsample2x_aligned(x)[0, 0, 0]
    tensor([0., 1., 2., 2.])
    """
    height, width = features.shape[-2:]
    padded = F.pad(features, (0, 1, 0, 1), mode="replicate")
    # align_corners=True maps (h + 1) input cells onto (2h + 1) output cells: output k at input k / 2
    up = F.interpolate(padded, size=(2 * height + 1, 2 * width + 1), mode="bilinear", align_corners=True)
    return up[..., : 2 * height, : 2 * width]


def decoder_levels(feature_stride: int) -> int:
    """Doublings from stride 32 down to ``feature_stride`` (3 for stride 4)."""
    if feature_stride not in STRIDES:
        raise MeshrecError(f"keypoints.feature_stride must be one of {STRIDES}, got {feature_stride}")
    return int(round(math.log2(STRIDES[-1] // feature_stride)))


class KeypointDecoder(nn.Module):
    """Pyramid ``[f4, f8, f16, f32]`` -> ``(B, widths[-1], H / stride, W / stride)``.

    Args:
        pyramid_channels: channels of the backbone's levels at strides 4, 8, 16, 32.
        widths: channels after each doubling, coarsest first; ``len(widths)`` doublings.
            The last entry is the width of the returned features.
    """

    def __init__(self, pyramid_channels: tuple[int, ...], widths: tuple[int, ...]) -> None:
        super().__init__()
        if len(widths) >= len(pyramid_channels):
            raise MeshrecError(
                f"the decoder can double the stride-32 level at most {len(pyramid_channels) - 1} times, "
                f"got {len(widths)} widths {tuple(widths)}"
            )
        self.widths = tuple(widths)
        self.top = nn.Conv2d(pyramid_channels[-1], widths[0], 1, bias=False) if widths else None
        self.laterals = nn.ModuleList()
        self.mixers = nn.ModuleList()
        for step, width in enumerate(widths):
            level = len(pyramid_channels) - 2 - step  # the pyramid level this step reaches
            self.laterals.append(nn.Conv2d(pyramid_channels[level], width, 1, bias=False))
            if step + 1 < len(widths):
                self.mixers.append(conv_bn_relu(width, widths[step + 1]))

    @property
    def out_stride_index(self) -> int:
        """Index into the pyramid (strides 4, 8, 16, 32) of the returned resolution."""
        return len(STRIDES) - 1 - len(self.widths)

    def forward(self, pyramid: list[torch.Tensor]) -> torch.Tensor:
        """``pyramid``: ``[(B, C_s, H / s, W / s)]`` for s = 4, 8, 16, 32 (finest first)."""
        if self.top is None:
            return pyramid[-1]
        x = self.top(pyramid[-1])
        for step, lateral in enumerate(self.laterals):
            x = upsample2x_aligned(x) + lateral(pyramid[len(pyramid) - 2 - step])
            if step < len(self.mixers):
                x = self.mixers[step](x)
        return x
