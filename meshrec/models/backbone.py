"""A small ResNet-style backbone producing a feature pyramid at strides 4, 8, 16 and 32.

Plain 3x3 convolutions with batch norm, not depthwise ones: on this project's reference CPU a
ResNet-style network of ~130M multiply-adds ran 2x faster than a MobileNetV2 of 95M, because
depthwise convolutions are memory-bound there. The default widths cost about 40M multiply-adds
at 128 x 128.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from meshrec.errors import MeshrecError

STRIDES: tuple[int, ...] = (4, 8, 16, 32)

# ImageNet statistics: images come in as RGB in [0, 1]; users' pretrained weights expect these.
IMAGE_MEAN = (0.485, 0.456, 0.406)
IMAGE_STD = (0.229, 0.224, 0.225)


@dataclass
class BackboneConfig:
    """Widths and depths of the four pyramid stages (strides 4, 8, 16, 32).

    Attributes:
        stem_channels: width of the stride-2 stem convolution.
        widths: channels of the stride 4, 8, 16 and 32 outputs.
        blocks: residual blocks per stage (after each stage's stride-2 convolution).
    """

    stem_channels: int = 16
    widths: tuple[int, int, int, int] = (20, 40, 80, 160)
    blocks: tuple[int, int, int, int] = (1, 1, 1, 1)

    def __post_init__(self) -> None:
        self.widths = tuple(int(w) for w in self.widths)  # YAML gives lists
        self.blocks = tuple(int(b) for b in self.blocks)
        if len(self.widths) != 4 or len(self.blocks) != 4:
            raise MeshrecError(
                f"backbone widths and blocks need 4 entries (strides 4, 8, 16, 32), got {self.widths} and {self.blocks}"
            )
        if self.stem_channels < 1 or min(self.widths) < 1 or min(self.blocks) < 0:
            raise MeshrecError(
                f"backbone widths must be >= 1 and blocks >= 0, got stem {self.stem_channels}, "
                f"widths {self.widths}, blocks {self.blocks}"
            )


def conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with an identity shortcut (ResNet's basic block)."""

    conv_batch_norm_pairs = (("conv2", "bn2"),)  # for meshrec.models.fusion.fold_batch_norms

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = conv_bn_relu(channels, channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        nn.init.zeros_(self.bn2.weight)  # each block starts as the identity: stable early training

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(x + self.bn2(self.conv2(self.conv1(x))))


class Backbone(nn.Module):
    """Image ``(B, 3, H, W)`` in [0, 1] -> four feature maps at strides 4, 8, 16, 32.

    ``H`` and ``W`` must be multiples of 32 (checked by the model's input validation).
    """

    def __init__(self, config: BackboneConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("mean", torch.tensor(IMAGE_MEAN).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(IMAGE_STD).view(1, 3, 1, 1), persistent=False)
        self.stem = conv_bn_relu(3, config.stem_channels, stride=2)
        stages = []
        previous = config.stem_channels
        for width, depth in zip(config.widths, config.blocks):
            stages.append(nn.Sequential(conv_bn_relu(previous, width, stride=2), *(BasicBlock(width) for _ in range(depth))))
            previous = width
        self.stages = nn.ModuleList(stages)

    @property
    def out_channels(self) -> tuple[int, ...]:
        return self.config.widths

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Returns ``[f4, f8, f16, f32]``; ``f_s`` is ``(B, C_s, H / s, W / s)``."""
        x = self.stem((images - self.mean) / self.std)
        pyramid = []
        for stage in self.stages:
            x = stage(x)
            pyramid.append(x)
        return pyramid
