"""CIFAR-10 ResNets and their plain counterparts: He, Zhang, Ren & Sun 2015, "Deep Residual
Learning for Image Recognition", section 4.2 and Fig. 6.

A 3x3 convolution, then three stages of n blocks of two 3x3 convolutions with 16, 32 and 64
filters on 32x32, 16x16 and 8x8 maps, global average pooling and a linear classifier: 6n + 2
weight layers. The shortcuts are identities everywhere; where a stage halves the resolution and
doubles the width, the shortcut takes every second pixel and pads the new channels with zeros
(option A), so the residual and plain networks have exactly the same parameters. Fig. 6 is the
point: the plain networks get worse with depth, the residual ones better.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.models.layers import GlobalAvgPool, get_norm_layer
from cnnbench.models.registry import register_model
from cnnbench.models.resnet import BasicBlock, conv3x3


class PadShortcut(nn.Module):
    """Option A (section 3.3): identity shortcut to a block that halves the resolution and widens
    to `out_ch`; sub-sample by 2 and zero-pad the extra channels. No parameters."""

    def __init__(self, out_ch: int):
        super().__init__()
        self.out_ch = out_ch

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x[:, :, ::2, ::2]  # (B, C, ceil(H/2), ceil(W/2)), as the stride-2 convolution gives
        return F.pad(x, (0, 0, 0, 0, 0, self.out_ch - x.shape[1]))  # (B, out_ch, ...)


class PlainBlock(BasicBlock):
    """BasicBlock without its shortcut: the "plain" baseline of section 4.2."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)))


class CifarResNet(nn.Module):
    """conv 3x3 16 -> 3 stages of n blocks (16, 32, 64 filters) -> average pool -> classes."""

    def __init__(self, n: int, residual: bool = True, num_classes: int = 10, in_channels: int = 3,
                 norm: str = "batch"):
        super().__init__()
        norm_layer = get_norm_layer(norm)
        block = BasicBlock if residual else PlainBlock
        self.conv1 = conv3x3(in_channels, 16)
        self.bn1 = norm_layer(16)
        self.relu = nn.ReLU(inplace=True)
        stages, in_ch = [], 16
        for width, stride in ((16, 1), (32, 2), (64, 2)):
            shortcut = PadShortcut(width) if residual and stride != 1 else None
            blocks = [block(in_ch, width, stride, shortcut, norm_layer)]
            blocks += [block(width, width, 1, None, norm_layer) for _ in range(1, n)]
            stages.append(nn.Sequential(*blocks))
            in_ch = width
        self.layer1, self.layer2, self.layer3 = stages
        self.avgpool = GlobalAvgPool()
        self.fc = nn.Linear(64, num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):  # He et al. 2015b initialisation, as section 4.2 says
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))  # (B, 16, H, W)
        x = self.layer1(x)  # (B, 16, H, W)
        x = self.layer2(x)  # (B, 32, H/2, W/2)
        return self.layer3(x)  # (B, 64, H/4, W/4)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.avgpool(x))  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_PAPER = "He et al., Deep Residual Learning for Image Recognition (section 4.2, CIFAR-10)"


def _cifar_resnet(name: str, depth: int, residual: bool):
    # Every convolution is padded and the shortcut rounds up as the stride-2 convolutions do,
    # so any size down to 1 px runs (though the paper's 32 px is what the widths are for).
    @register_model(name, family="cifar_resnet", year=2015, paper=_PAPER, min_size=1,
                    default_input=(3, 32, 32), default_classes=10)
    def build(num_classes: int = 10, in_channels: int = 3, norm: str = "batch") -> CifarResNet:
        return CifarResNet((depth - 2) // 6, residual, num_classes, in_channels, norm)

    build.__name__ = name
    build.__doc__ = f"{'ResNet' if residual else 'Plain'}-{depth} for 32 px images (n = {(depth - 2) // 6})."
    return build


resnet20 = _cifar_resnet("resnet20", 20, True)
resnet32 = _cifar_resnet("resnet32", 32, True)
resnet44 = _cifar_resnet("resnet44", 44, True)
resnet56 = _cifar_resnet("resnet56", 56, True)
resnet110 = _cifar_resnet("resnet110", 110, True)
plain20 = _cifar_resnet("plain20", 20, False)
plain32 = _cifar_resnet("plain32", 32, False)
plain44 = _cifar_resnet("plain44", 44, False)
plain56 = _cifar_resnet("plain56", 56, False)
plain110 = _cifar_resnet("plain110", 110, False)
