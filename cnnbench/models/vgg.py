"""VGG: Simonyan & Zisserman 2014 (ICLR 2015), "Very Deep Convolutional Networks for Large-Scale Image
Recognition", Table 1 (configurations A, B, D, E).

Only 3x3 convolutions: two stacked have a 5x5 receptive field, three a 7x7, with fewer weights
and more non-linearities (section 2.3). Five max-pools halve the resolution; the width doubles
after each up to 512; three fully-connected layers classify. The `_bn` variants add batch
normalisation after every convolution (Ioffe & Szegedy 2015; not in the paper). Layout and
parameter names follow torchvision, so its weights load as they are.
"""

from typing import List, Optional, Union

import torch
import torch.nn as nn

from cnnbench.models.layers import NormLayer, get_norm_layer, init_weights, is_small_stem
from cnnbench.models.registry import register_model

# Table 1: numbers are 3x3 convolution widths, "M" a 2x2/2 max-pool.
_CONFIGS = {
    "A": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # 11 weight layers
    "B": [64, 64, "M", 128, 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],  # 13
    "D": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"],  # 16
    "E": [64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
          512, 512, 512, 512, "M", 512, 512, 512, 512, "M"],  # 19
}
_SMALL_STEM_SKIPPED_POOLS = 2  # stem=small: no 4x early down-sampling, like ResNet's small stem


def _features(config: List[Union[int, str]], in_channels: int, norm_layer: Optional[NormLayer],
              small_stem: bool) -> nn.Sequential:
    layers: List[nn.Module] = []
    pools = 0
    for v in config:
        if v == "M":
            skip = small_stem and pools < _SMALL_STEM_SKIPPED_POOLS
            layers.append(nn.Identity() if skip else nn.MaxPool2d(2, stride=2))  # keeps indices
            pools += 1
        else:  # the convolutions keep their bias under a norm, as torchvision's do
            layers.append(nn.Conv2d(in_channels, v, 3, padding=1))
            layers += [norm_layer(v)] if norm_layer is not None else []
            layers.append(nn.ReLU(inplace=True))
            in_channels = v
    return nn.Sequential(*layers)


class VGG(nn.Module):
    """3x3 convolution stacks and five pools, then FC 4096 -> FC 4096 -> classes."""

    def __init__(self, config: List[Union[int, str]], num_classes: int = 1000, in_channels: int = 3,
                 norm: Optional[str] = None, dropout: float = 0.5, stem: str = "imagenet"):
        super().__init__()
        norm_layer = get_norm_layer(norm) if norm is not None else None
        self.features = _features(config, in_channels, norm_layer, is_small_stem(stem))
        self.avgpool = nn.AdaptiveAvgPool2d((7, 7))  # the identity at 224 px; admits other sizes
        self.classifier = nn.Sequential(  # section 2.1; dropout on the first two (section 3.1)
            nn.Linear(512 * 7 * 7, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
            nn.Linear(4096, num_classes),
        )
        init_weights(self)  # torchvision's initialisation

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 512, H/32, W/32) or (B, 512, H/8, W/8) with the small stem
        return self.avgpool(x)  # (B, 512, 7, 7)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(x, 1))  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


def _min_size(stem: str = "imagenet", **_) -> int:
    # every 2x2/2 pool needs at least 2x2 maps: 5 pools -> 32 px, 3 pools (small stem) -> 8 px
    return 2 ** (5 - _SMALL_STEM_SKIPPED_POOLS) if is_small_stem(stem) else 32


_PAPER = "Simonyan & Zisserman, Very Deep Convolutional Networks for Large-Scale Image Recognition"


def _vgg(name: str, config: str, batch_norm: bool):
    layers = sum(isinstance(v, int) for v in _CONFIGS[config]) + 3
    if batch_norm:
        def build(num_classes: int = 1000, in_channels: int = 3, norm: str = "batch",
                  dropout: float = 0.5, stem: str = "imagenet") -> VGG:
            return VGG(_CONFIGS[config], num_classes, in_channels, norm, dropout, stem)
    else:
        def build(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5,
                  stem: str = "imagenet") -> VGG:
            return VGG(_CONFIGS[config], num_classes, in_channels, None, dropout, stem)

    build.__name__ = name
    build.__doc__ = (f"VGG-{layers} (configuration {config})"
                     f"{' with a norm after every convolution' if batch_norm else ''}.")
    return register_model(name, family="vgg", year=2014, paper=_PAPER, min_size=_min_size)(build)


vgg11 = _vgg("vgg11", "A", False)
vgg13 = _vgg("vgg13", "B", False)
vgg16 = _vgg("vgg16", "D", False)
vgg19 = _vgg("vgg19", "E", False)
vgg11_bn = _vgg("vgg11_bn", "A", True)
vgg13_bn = _vgg("vgg13_bn", "B", True)
vgg16_bn = _vgg("vgg16_bn", "D", True)
vgg19_bn = _vgg("vgg19_bn", "E", True)
