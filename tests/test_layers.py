"""The shared blocks of cnnbench/models/layers.py: shapes, weight counts, and what they compute."""

import pytest
import torch
import torch.nn as nn

from cnnbench.measure import count_macs
from cnnbench.models.layers import (ConvNormAct, DepthwiseSeparable, GroupedConv, PixelShuffleUp,
                                    TransposedConvUp, get_norm_layer)


def n_weights(m):
    return sum(p.numel() for n, p in m.named_parameters() if n.endswith("weight") and p.ndim > 1)


def test_grouped_conv_has_one_over_groups_of_the_weights_and_macs():
    full, grouped = ConvNormAct(32, 64, 3), GroupedConv(32, 64, 3, groups=4)
    assert n_weights(grouped) * 4 == n_weights(full) == 64 * 32 * 9
    assert count_macs(lambda: GroupedConv(32, 64, 3, groups=4), (32, 8, 8)) * 4 == \
        count_macs(lambda: ConvNormAct(32, 64, 3), (32, 8, 8))
    # Each output group sees only its input group: changing group 0's input leaves group 1 alone.
    g = GroupedConv(4, 4, 3, groups=2, norm_layer=None, act_layer=None).eval()
    x = torch.randn(1, 4, 5, 5)
    y = x.clone()
    y[:, :2] += 1
    assert torch.equal(g(x)[:, 2:], g(y)[:, 2:]) and not torch.equal(g(x)[:, :2], g(y)[:, :2])
    with pytest.raises(ValueError, match="must divide"):
        GroupedConv(6, 8, groups=4)


def test_depthwise_separable_saves_what_mobilenets_says():
    # MobileNets eq. 5: separable / full = 1/N + 1/k^2 (N output channels, k kernel)
    sep = count_macs(lambda: DepthwiseSeparable(64, 128), (64, 16, 16))
    full = count_macs(lambda: ConvNormAct(64, 128, 3), (64, 16, 16))
    assert sep / full == pytest.approx(1 / 128 + 1 / 9)


@pytest.mark.parametrize("scale", [2, 4])
def test_upsampling_blocks_multiply_the_resolution(scale):
    x = torch.randn(2, 16, 5, 7)
    assert TransposedConvUp(16, 8, scale)(x).shape == (2, 8, 5 * scale, 7 * scale)
    assert PixelShuffleUp(16, 8, scale)(x).shape == (2, 8, 5 * scale, 7 * scale)


def test_pixel_shuffle_places_each_channel_group_on_a_sub_pixel_grid():
    up = PixelShuffleUp(1, 1, scale=2, kernel_size=1)
    with torch.no_grad():  # a 1x1 conv that copies its input to channel c with gain c + 1
        up[0].weight.copy_(torch.arange(1.0, 5.0).view(4, 1, 1, 1))
        up[0].bias.zero_()
    out = up(torch.ones(1, 1, 3, 3))[0, 0]  # (6, 6)
    assert out[0:2, 0:2].tolist() == [[1.0, 2.0], [3.0, 4.0]]  # channel c -> sub-pixel (c // 2, c % 2)


@pytest.mark.parametrize("name,cls", [("batch", nn.BatchNorm2d), ("layer", nn.GroupNorm),
                                      ("instance", nn.InstanceNorm2d), ("group", nn.GroupNorm), ("none", nn.Identity)])
def test_norm_factory(name, cls):
    m = get_norm_layer(name)(48)
    assert isinstance(m, cls)
    if name == "layer":
        assert m.num_groups == 1
    if name == "group":
        assert m.num_groups == 16  # gcd(32, 48): 32 groups do not divide 48 channels
