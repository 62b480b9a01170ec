"""DenseNet-BC: Huang, Liu, van der Maaten & Weinberger 2017, "Densely Connected Convolutional
Networks", Table 1.

Inside a dense block every layer receives the concatenated feature maps of all layers before it
and adds k (the growth rate) new ones: features are reused rather than re-learnt, so the layers
can be narrow (section 3). "BC": each layer first reduces its input to 4k maps with a 1x1
convolution (bottleneck, B) and each transition halves the number of maps (compression 0.5, C).
Layers are BN-ReLU-Conv (pre-activation). Layout and parameter names follow torchvision, so its
weights load as they are.
"""

from collections import OrderedDict
from typing import List, Tuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.models.layers import GlobalAvgPool, NormLayer, get_norm_layer, is_small_stem
from cnnbench.models.registry import register_model


class DenseLayer(nn.Module):
    """H_l of section 3: BN-ReLU-Conv(1x1, 4k) -> BN-ReLU-Conv(3x3, k) on all earlier maps."""

    def __init__(self, in_ch: int, growth_rate: int, bn_size: int, dropout: float, norm_layer: NormLayer):
        super().__init__()
        self.norm1 = norm_layer(in_ch)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(in_ch, bn_size * growth_rate, 1, bias=False)
        self.norm2 = norm_layer(bn_size * growth_rate)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth_rate, growth_rate, 3, padding=1, bias=False)
        self.dropout = dropout

    def forward(self, features: List[torch.Tensor]) -> torch.Tensor:
        x = torch.cat(features, 1)  # (B, in_ch, H, W): [x_0, x_1, ..., x_{l-1}], equation 2
        x = self.conv1(self.relu1(self.norm1(x)))  # (B, 4k, H, W)
        x = self.conv2(self.relu2(self.norm2(x)))  # (B, k, H, W)
        return F.dropout(x, self.dropout, self.training) if self.dropout > 0 else x


class DenseBlock(nn.ModuleDict):
    """`num_layers` dense layers; the output concatenates the input and every layer's k maps."""

    def __init__(self, num_layers: int, in_ch: int, growth_rate: int, bn_size: int, dropout: float,
                 norm_layer: NormLayer):
        super().__init__({f"denselayer{i + 1}": DenseLayer(in_ch + i * growth_rate, growth_rate, bn_size,
                                                           dropout, norm_layer)
                          for i in range(num_layers)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        features = [x]
        for layer in self.values():
            features.append(layer(features))
        return torch.cat(features, 1)  # (B, in_ch + num_layers * k, H, W)


class Transition(nn.Sequential):
    """Between blocks: BN-ReLU-Conv 1x1 (compressing the maps) and a 2x2/2 average pool."""

    def __init__(self, in_ch: int, out_ch: int, norm_layer: NormLayer):
        super().__init__(OrderedDict(
            norm=norm_layer(in_ch), relu=nn.ReLU(inplace=True),
            conv=nn.Conv2d(in_ch, out_ch, 1, bias=False), pool=nn.AvgPool2d(2, stride=2)))


class DenseNet(nn.Module):
    """Stem, four dense blocks joined by transitions, BN-ReLU, global average pool, classifier."""

    def __init__(self, block_config: Tuple[int, ...], growth_rate: int = 32, bn_size: int = 4,
                 compression: float = 0.5, num_classes: int = 1000, in_channels: int = 3,
                 norm: str = "batch", dropout: float = 0.0, stem: str = "imagenet"):
        super().__init__()
        norm_layer = get_norm_layer(norm)
        ch = 2 * growth_rate  # the stem's output: 2k maps (section 3, implementation details)
        if is_small_stem(stem):  # the paper's CIFAR stem: one 3x3 convolution, no down-sampling
            conv0, pool0 = nn.Conv2d(in_channels, ch, 3, padding=1, bias=False), nn.Identity()
        else:
            conv0 = nn.Conv2d(in_channels, ch, 7, stride=2, padding=3, bias=False)
            pool0 = nn.MaxPool2d(3, stride=2, padding=1)
        layers = OrderedDict(conv0=conv0, norm0=norm_layer(ch), relu0=nn.ReLU(inplace=True), pool0=pool0)
        for i, num_layers in enumerate(block_config):
            block = DenseBlock(num_layers, ch, growth_rate, bn_size, dropout, norm_layer)
            layers[f"denseblock{i + 1}"] = block
            ch += num_layers * growth_rate
            if i != len(block_config) - 1:
                layers[f"transition{i + 1}"] = Transition(ch, int(ch * compression), norm_layer)
                ch = int(ch * compression)
        layers["norm5"] = norm_layer(ch)
        self.features = nn.Sequential(layers)
        self.avgpool = GlobalAvgPool()
        self.classifier = nn.Linear(ch, num_classes)

        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, C, H/32, W/32), or (B, C, H/8, W/8) with the small stem
        return F.relu(x)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.avgpool(x))  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _min_size(stem: str = "imagenet", **_) -> int:
    # three 2x2/2 transition pools need 8x8 maps after the stem, which divides by 4 (rounding up)
    return 8 if is_small_stem(stem) else 29


_PAPER = "Huang et al., Densely Connected Convolutional Networks"


def _densenet(name: str, block_config: Tuple[int, ...]):
    depth = 2 * sum(block_config) + 5  # two convolutions per layer, stem, 3 transitions, classifier

    @register_model(name, family="densenet", year=2017, paper=_PAPER, min_size=_min_size)
    def build(num_classes: int = 1000, in_channels: int = 3, norm: str = "batch", dropout: float = 0.0,
              stem: str = "imagenet") -> DenseNet:
        return DenseNet(block_config, 32, 4, 0.5, num_classes, in_channels, norm, dropout, stem)

    build.__name__ = name
    build.__doc__ = (f"DenseNet-BC-{depth} (k = 32, blocks {list(block_config)}). `dropout`: on each dense "
                     f"layer's output, torchvision's placement (the paper uses 0.2 on CIFAR without "
                     f"augmentation, none on ImageNet).")
    return build


densenet121 = _densenet("densenet121", (6, 12, 24, 16))
densenet169 = _densenet("densenet169", (6, 12, 32, 32))
densenet201 = _densenet("densenet201", (6, 12, 48, 32))
