"""ResNet: He, Zhang, Ren & Sun 2015, "Deep Residual Learning for Image Recognition".

Each block learns a residual F(x) and outputs relu(F(x) + x), so a deep stack can fall back to
the identity: depth stops hurting optimisation (the degradation problem, section 3.1). Layout and
parameter names follow torchvision (stride on the 3x3 conv of the bottleneck, "ResNet v1.5"), so
its released weights load as they are.
"""

from typing import List, Optional, Type, Union

import torch
import torch.nn as nn

from cnnbench.models.layers import NormLayer, get_norm_layer
from cnnbench.models.registry import register_model


def conv3x3(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 3, stride, padding=1, bias=False)


def conv1x1(in_ch: int, out_ch: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(in_ch, out_ch, 1, stride, bias=False)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions (Fig. 5 left): ResNet-18 and -34."""

    expansion = 1

    def __init__(self, in_ch: int, width: int, stride: int, downsample: Optional[nn.Module],
                 norm_layer: NormLayer):
        super().__init__()
        self.conv1 = conv3x3(in_ch, width, stride)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width)
        self.bn2 = norm_layer(width)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample  # 1x1 projection when the shape changes (option B)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 reduce -> 3x3 -> 1x1 expand by 4 (Fig. 5 right): ResNet-50, -101, -152."""

    expansion = 4

    def __init__(self, in_ch: int, width: int, stride: int, downsample: Optional[nn.Module],
                 norm_layer: NormLayer):
        super().__init__()
        self.conv1 = conv1x1(in_ch, width)
        self.bn1 = norm_layer(width)
        self.conv2 = conv3x3(width, width, stride)
        self.bn2 = norm_layer(width)
        self.conv3 = conv1x1(width, width * self.expansion)
        self.bn3 = norm_layer(width * self.expansion)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


Block = Type[Union[BasicBlock, Bottleneck]]


class ResNet(nn.Module):
    """Stem, four stages of blocks at widths 64-128-256-512 (each stage after the first halves the
    resolution), global average pooling, one linear classifier (Table 1)."""

    def __init__(self, block: Block, layers: List[int], num_classes: int = 1000, in_channels: int = 3,
                 norm: str = "batch", stem: str = "imagenet", zero_init_residual: bool = False):
        super().__init__()
        norm_layer = get_norm_layer(norm)
        self.in_ch = 64
        if getattr(stem, "value", stem) == "small":
            # 28-32 px images: a 7x7/2 conv and a pool would leave 8x8 maps before stage 1.
            self.conv1 = conv3x3(in_channels, 64)
            self.maxpool = nn.Identity()
        else:
            self.conv1 = nn.Conv2d(in_channels, 64, 7, stride=2, padding=3, bias=False)
            self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.bn1 = norm_layer(64)
        self.relu = nn.ReLU(inplace=True)
        self.layer1 = self._make_stage(block, 64, layers[0], 1, norm_layer)
        self.layer2 = self._make_stage(block, 128, layers[1], 2, norm_layer)
        self.layer3 = self._make_stage(block, 256, layers[2], 2, norm_layer)
        self.layer4 = self._make_stage(block, 512, layers[3], 2, norm_layer)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512 * block.expansion, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He et al. 2015b initialisation, as the paper uses
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init_residual:  # each block starts as the identity (Goyal et al. 2017, 5.1)
            for m in self.modules():
                last = m.bn3 if isinstance(m, Bottleneck) else m.bn2 if isinstance(m, BasicBlock) else None
                if last is not None and getattr(last, "weight", None) is not None:
                    nn.init.zeros_(last.weight)

    def _make_stage(self, block: Block, width: int, blocks: int, stride: int,
                    norm_layer: NormLayer) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.in_ch != width * block.expansion:
            downsample = nn.Sequential(conv1x1(self.in_ch, width * block.expansion, stride),
                                       norm_layer(width * block.expansion))
        stage = [block(self.in_ch, width, stride, downsample, norm_layer)]
        self.in_ch = width * block.expansion
        stage += [block(self.in_ch, width, 1, None, norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*stage)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))  # (B, 64, H/4, W/4) or (B, 64, H, W)
        x = self.layer1(x)
        x = self.layer2(x)  # (B, 128 * e, H/8, W/8) with the imagenet stem
        x = self.layer3(x)
        return self.layer4(x)  # (B, 512 * e, H/32, W/32) with the imagenet stem

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(x), 1))  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _min_size(stem: str = "imagenet", norm: str = "batch", **_) -> int:
    # imagenet stem: 32x down-sampling leaves 1x1 maps at 32 px; small stem: 8x leaves 1x1 at 8 px.
    # Instance norm needs at least 2x2 maps to have a variance.
    size = 8 if getattr(stem, "value", stem) == "small" else 32
    return 2 * size if getattr(norm, "value", norm) == "instance" else size


def _resnet(name: str, block: Block, layers: List[int]):
    depth = 2 + sum(layers) * (3 if block is Bottleneck else 2)

    @register_model(name, family="resnet", year=2015, min_size=_min_size,
                    paper="He et al., Deep Residual Learning for Image Recognition")
    def build(num_classes: int = 1000, in_channels: int = 3, norm: str = "batch",
              stem: str = "imagenet", zero_init_residual: bool = False) -> ResNet:
        return ResNet(block, layers, num_classes, in_channels, norm, stem, zero_init_residual)

    build.__name__ = name
    build.__doc__ = f"ResNet-{depth} ({block.__name__} blocks {layers})."
    return build


resnet18 = _resnet("resnet18", BasicBlock, [2, 2, 2, 2])
resnet34 = _resnet("resnet34", BasicBlock, [3, 4, 6, 3])
resnet50 = _resnet("resnet50", Bottleneck, [3, 4, 6, 3])
resnet101 = _resnet("resnet101", Bottleneck, [3, 4, 23, 3])
resnet152 = _resnet("resnet152", Bottleneck, [3, 8, 36, 3])
