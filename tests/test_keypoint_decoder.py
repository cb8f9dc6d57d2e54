"""The keypoint decoder: aligned up-sampling, shapes, and the model's config checks."""

import pytest
import torch

from meshrec.errors import MeshrecError
from meshrec.models.backbone import Backbone, BackboneConfig
from meshrec.models.joint_groups import JointGroupsConfig
from meshrec.models.keypoint_decoder import KeypointDecoder, decoder_levels, upsample2x_aligned
from meshrec.models.reconstructor import ModelConfig


def test_upsampling_keeps_cell_centres_where_the_backbone_puts_them():
    # a coarse map whose value is its cell centre's crop pixel (stride 16: cell i at 16 i)
    size = 8
    coarse_u = (torch.arange(size, dtype=torch.float64) * 16).expand(size, size)[None, None]
    fine = upsample2x_aligned(coarse_u)
    expected = (torch.arange(2 * size, dtype=torch.float64) * 8).expand(2 * size, 2 * size)
    # every cell but the last column (half a coarse cell past the last centre) is exact
    torch.testing.assert_close(fine[0, 0, :, :-1], expected[:, :-1])
    torch.testing.assert_close(fine[0, 0, :, -1], coarse_u[0, 0, 0, -1].expand(2 * size))


def test_upsampling_is_linear_and_differentiable():
    x = torch.randn(1, 2, 3, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(upsample2x_aligned, (x,))


@pytest.mark.parametrize(("stride", "widths"), [(4, (16, 12, 8)), (8, (16, 12)), (32, ())])
def test_decoder_output_stride_and_width(stride, widths):
    backbone = Backbone(BackboneConfig(stem_channels=4, widths=(4, 6, 8, 10)))
    decoder = KeypointDecoder(backbone.out_channels, widths)
    features = decoder(backbone(torch.rand(2, 3, 64, 64)))
    assert tuple(features.shape) == (2, widths[-1] if widths else 10, 64 // stride, 64 // stride)
    assert decoder_levels(stride) == len(widths)


def test_model_config_checks_decoder_widths_against_the_stride():
    with pytest.raises(MeshrecError, match="decoder_widths needs 2 entries"):
        ModelConfig(keypoints=JointGroupsConfig(feature_stride=8, decoder_widths=(16, 12, 8)))
    with pytest.raises(MeshrecError, match="feature_stride must be one of"):
        ModelConfig(keypoints=JointGroupsConfig(feature_stride=2))
