"""The inference form of a network: each batch norm folded into the convolution before it.

In eval mode a batch norm is a fixed per-channel affine map, so a convolution followed by one is
again a convolution (weights scaled per output channel, a bias added):
``torch.nn.utils.fusion.fuse_conv_bn_eval``. Folding removes 17 of the default model's
operations per forward and a pass over every feature map: ~10 % of the model's time on a CPU
(docs/benchmarks.md), the same outputs to float rounding.

A folded network has no batch norms left, so it must not train; fold a copy
(:meth:`meshrec.models.reconstructor.HandMeshReconstructor.for_inference`).
"""

from __future__ import annotations

from torch import nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

from meshrec.errors import MeshrecError

CONV_BATCH_NORM_PAIRS = "conv_batch_norm_pairs"
"""Attribute by which a module that is not an ``nn.Sequential`` names its own (conv, batch norm)
pairs: a tuple of ``(conv attribute, batch-norm attribute)``."""


def fold_batch_norms(network: nn.Module) -> int:
    """Fold, in place, every ``BatchNorm2d`` that directly follows a ``Conv2d`` into it.

    Pairs are consecutive children of an ``nn.Sequential`` and those a module lists in
    :data:`CONV_BATCH_NORM_PAIRS`. The batch norm becomes ``nn.Identity``, the convolution one
    with a bias.

    Args:
        network: a module in eval mode (a batch norm folds its running statistics).

    Returns:
        The number of batch norms folded.
    """
    if network.training:
        raise MeshrecError("fold_batch_norms needs the network in eval mode (call .eval() first): it folds the running statistics")
    folded = 0
    for parent in list(network.modules()):
        pairs = list(getattr(parent, CONV_BATCH_NORM_PAIRS, ()))
        if isinstance(parent, nn.Sequential):
            names = list(parent._modules)
            pairs += list(zip(names, names[1:]))
        for conv_name, norm_name in pairs:
            conv, norm = getattr(parent, conv_name), getattr(parent, norm_name)
            if isinstance(conv, nn.Conv2d) and isinstance(norm, nn.BatchNorm2d):
                setattr(parent, conv_name, fuse_conv_bn_eval(conv, norm))
                setattr(parent, norm_name, nn.Identity())
                folded += 1
    return folded
