"""MobileNets: networks built for phones from cheap depthwise convolutions.

- v1: Howard et al. 2017, "MobileNets: Efficient Convolutional Neural Networks for Mobile Vision
  Applications", Table 1. A full 3x3 convolution is factored into a depthwise 3x3 (one filter per
  channel) and a pointwise 1x1 that mixes channels: 8-9 times fewer multiply-adds (section 3.1).
  The width multiplier `alpha` thins every layer, cutting cost by about alpha^2 (section 3.3).
  `separable=False` puts the full 3x3 convolution back in every layer: Table 4's "Conv MobileNet"
  (29.3 M parameters, 4866 M mult-adds against 4.2 M and 569 M), the baseline the factoring beats.
- v2: Sandler et al. 2018, "MobileNetV2: Inverted Residuals and Linear Bottlenecks", Table 2.
  Each block expands a narrow input 6x with a 1x1, filters it depthwise, and projects it back
  with a linear 1x1 (no ReLU, which would destroy information in few channels, section 3.2); the
  shortcut joins the narrow ends (inverted residual). Layout and parameter names follow
  torchvision, so its weights load as they are.

`stem: small` (28-32 px images) removes the first 4x of down-sampling: the stem convolution and
the first stride-2 block run at stride 1, as ResNet's small stem does.
"""

from typing import List

import torch
import torch.nn as nn

from cnnbench.models.layers import (ConvNormAct, DepthwiseConv, DepthwiseSeparable, GlobalAvgPool, NormLayer,
                                    PointwiseConv, get_norm_layer, init_weights, is_small_stem)
from cnnbench.models.registry import register_model

# ---------------------------------------------------------------------------------------------
# MobileNet v1

# Table 1 after the stem: (output channels, stride) of each depthwise separable layer. The table's
# stride 2 for the second 1024 layer is a slip (7x7 in, 7x7 out); the reference code uses 1.
_V1_LAYERS = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
              (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]


class MobileNetV1(nn.Module):
    """Conv 3x3/2 32 -> 13 depthwise separable layers -> average pool -> FC (Table 1); with
    separable=False each layer is one full 3x3 convolution instead (Fig. 3 left, Table 4)."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, norm: str = "batch",
                 dropout: float = 0.001, stem: str = "imagenet", alpha: float = 1.0, separable: bool = True):
        super().__init__()
        if alpha <= 0:
            raise ValueError(f"alpha (width multiplier) must be positive, got {alpha}")
        norm_layer = get_norm_layer(norm)
        small = is_small_stem(stem)

        def width(channels: int) -> int:  # section 3.3: alpha * M channels in every layer
            return max(1, int(channels * alpha))

        def block(in_ch: int, out_ch: int, stride: int) -> nn.Module:
            if separable:  # Fig. 3 right: depthwise 3x3, pointwise 1x1, each with norm and ReLU
                return DepthwiseSeparable(in_ch, out_ch, stride, norm_layer=norm_layer)
            return ConvNormAct(in_ch, out_ch, 3, stride, norm_layer=norm_layer)  # Fig. 3 left

        ch = width(32)
        layers: List[nn.Module] = [ConvNormAct(in_channels, ch, 3, 1 if small else 2, norm_layer=norm_layer)]
        for i, (out, stride) in enumerate(_V1_LAYERS):
            stride = 1 if small and i == 1 else stride  # the first stride-2 layer
            layers.append(block(ch, width(out), stride))
            ch = width(out)
        self.features = nn.Sequential(*layers)
        self.avgpool = GlobalAvgPool()
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(ch, num_classes)

        init_weights(self)  # torchvision's initialisation

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 1024 alpha, H/32, W/32), or H/8 with the small stem

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.avgpool(x)))  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# ---------------------------------------------------------------------------------------------
# MobileNet v2

# Table 2 after the stem: expansion t, output channels c, repeats n, stride s of the first.
_V2_STAGES = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
              (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]


class InvertedResidual(nn.Module):
    """Table 1 of the v2 paper: 1x1 expand (ReLU6) -> 3x3 depthwise (ReLU6) -> 1x1 linear project;
    the input is added when the shape is unchanged."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int, norm_layer: NormLayer):
        super().__init__()
        hidden = in_ch * expand_ratio
        self.use_res_connect = stride == 1 and in_ch == out_ch
        expand = [PointwiseConv(in_ch, hidden, norm_layer, nn.ReLU6)] if expand_ratio != 1 else []
        self.conv = nn.Sequential(
            *expand,
            DepthwiseConv(hidden, 3, stride, norm_layer, nn.ReLU6),
            nn.Conv2d(hidden, out_ch, 1, bias=False),  # linear bottleneck: no activation
            norm_layer(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.conv(x) if self.use_res_connect else self.conv(x)


class MobileNetV2(nn.Module):
    """Conv 3x3/2 32 -> 17 inverted residual blocks -> conv 1x1 1280 -> average pool -> FC."""

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, norm: str = "batch",
                 dropout: float = 0.2, stem: str = "imagenet"):
        super().__init__()
        norm_layer = get_norm_layer(norm)
        small = is_small_stem(stem)
        ch = 32
        layers: List[nn.Module] = [ConvNormAct(in_channels, ch, 3, 1 if small else 2, norm_layer=norm_layer,
                                               act_layer=nn.ReLU6)]
        for i, (t, c, n, s) in enumerate(_V2_STAGES):
            s = 1 if small and i == 1 else s  # the first stride-2 stage
            for j in range(n):
                layers.append(InvertedResidual(ch, c, s if j == 0 else 1, t, norm_layer))
                ch = c
        layers.append(PointwiseConv(ch, 1280, norm_layer, nn.ReLU6))
        self.features = nn.Sequential(*layers)
        self.avgpool = GlobalAvgPool()
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(1280, num_classes))

        init_weights(self)  # torchvision's initialisation

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)  # (B, 1280, H/32, W/32), or H/8 with the small stem

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(x))  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


# Every convolution is padded, so stride-2 layers map 1x1 to 1x1: any size runs.
@register_model("mobilenet_v1", family="mobilenet", year=2017, min_size=1,
                paper="Howard et al., MobileNets: Efficient Convolutional Neural Networks for Mobile "
                      "Vision Applications")
def mobilenet_v1(num_classes: int = 1000, in_channels: int = 3, norm: str = "batch", dropout: float = 0.001,
                 stem: str = "imagenet", alpha: float = 1.0, separable: bool = True) -> MobileNetV1:
    """MobileNet v1: 4,231,976 parameters and 569 M multiply-adds at alpha 1.0, 224 px, 1000 classes.
    `dropout` 0.001 is the reference implementation's (the paper uses little regularisation).
    `separable=False` builds Table 4's "Conv MobileNet" (full 3x3 convolutions): 29,294,088
    parameters and 4,867 M multiply-adds at the same size."""
    return MobileNetV1(num_classes, in_channels, norm, dropout, stem, alpha, separable)


@register_model("mobilenet_v2", family="mobilenet", year=2018, min_size=1,
                paper="Sandler et al., MobileNetV2: Inverted Residuals and Linear Bottlenecks")
def mobilenet_v2(num_classes: int = 1000, in_channels: int = 3, norm: str = "batch", dropout: float = 0.2,
                 stem: str = "imagenet") -> MobileNetV2:
    """MobileNet v2 (width 1.0): 3,504,872 parameters and 301 M multiply-adds at 224 px, 1000 classes.
    `dropout` 0.2 is torchvision's."""
    return MobileNetV2(num_classes, in_channels, norm, dropout, stem)
