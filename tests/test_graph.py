"""Spiral convolutions in vertex blocks give what the whole-mesh gather gives (a slow reference),
forward and backward, so weights and checkpoints are unaffected by the block size."""

from __future__ import annotations

import pytest
import torch

from meshrec.errors import MeshrecError
from meshrec.models import graph
from meshrec.models.graph import SpiralConv


def reference_spiral_conv(conv: SpiralConv, features: torch.Tensor) -> torch.Tensor:
    """One vertex at a time: its neighbourhood's features concatenated, then the linear map."""
    rows = [conv.linear(features[:, spiral].flatten(1)) for spiral in conv.spirals]
    return torch.stack(rows, dim=1)


@pytest.mark.parametrize("block_bytes", [1, 700, 1 << 40])  # one vertex a block, a few, the whole mesh
def test_blocks_match_the_reference_forward_and_backward(block_bytes, monkeypatch):
    monkeypatch.setattr(graph, "GATHER_BLOCK_BYTES", block_bytes)
    generator = torch.Generator().manual_seed(0)
    spirals = torch.randint(0, 23, (23, 5), generator=generator)
    spirals[:, 0] = torch.arange(23)
    conv = SpiralConv(4, 6, spirals).double()
    features = torch.randn(3, 23, 4, generator=generator, dtype=torch.float64, requires_grad=True)
    ours = conv(features)
    torch.testing.assert_close(ours, reference_spiral_conv(conv, features))
    (grad_ours,) = torch.autograd.grad(ours.square().sum(), features)
    (grad_reference,) = torch.autograd.grad(reference_spiral_conv(conv, features).square().sum(), features)
    torch.testing.assert_close(grad_ours, grad_reference)
    assert torch.autograd.gradcheck(conv, (features,))


def test_the_model_gives_the_same_meshes_whatever_the_block(monkeypatch):
    from meshrec import HandMeshReconstructor

    model = HandMeshReconstructor.load().eval()
    images = torch.rand(4, 3, 128, 128, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        blocked = model(images, exit_threshold=1.0).vertices
        monkeypatch.setattr(graph, "GATHER_BLOCK_BYTES", 1 << 40)
        whole = model(images, exit_threshold=1.0).vertices
    torch.testing.assert_close(blocked, whole, rtol=0, atol=1e-6)


def test_wrong_feature_shape_names_the_expected_one():
    conv = SpiralConv(4, 6, torch.zeros(5, 3, dtype=torch.long))
    with pytest.raises(MeshrecError, match=r"expects features \(B, 5, 4\), got \(2, 5, 3\)"):
        conv(torch.zeros(2, 5, 3))
