"""GoogLeNet (Inception v1): Szegedy et al. 2014, "Going Deeper with Convolutions", Table 1 and
Fig. 2(b).

An Inception module runs 1x1, 3x3 and 5x5 convolutions and a 3x3 max-pool side by side and
concatenates them; 1x1 "reductions" before the larger convolutions keep the cost down (section
4). Nine modules, global average pooling instead of big fully-connected layers, and two auxiliary
classifiers on intermediate layers that add gradient signal during training (section 5).

Layout and parameter names follow torchvision, whose GoogLeNet was ported from TensorFlow's:
batch normalisation after every convolution (eps 1e-3, as in its weights; `norm: none` gives
the paper's original, with biases instead), a 3x3 where Table 1 has the 5x5 convolution
(pytorch/vision#906), a 2x2 max-pool before 5a where Table 1 has 3x3, and auxiliary heads that
pool adaptively to 4x4 where the paper uses a 5x5/3 average pool (also 4x4 at 224 px). With
these: 6,624,904 parameters, 13,004,888 with the auxiliary heads.
"""

from functools import partial
from typing import List, Optional, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.models.layers import GlobalAvgPool, NormLayer, get_norm_layer
from cnnbench.models.registry import register_model


class BasicConv2d(nn.Module):
    """Convolution -> norm -> ReLU under torchvision's Inception names (conv, bn)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int, norm_layer: NormLayer,
                 stride: int = 1, padding: int = 0):
        super().__init__()
        bn = norm_layer(out_ch)
        # without a norm the paper's convolutions have biases
        self.conv = nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, bias=isinstance(bn, nn.Identity))
        self.bn = bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)), inplace=True)


class Inception(nn.Module):
    """Fig. 2(b): 1x1 | 1x1 -> 3x3 | 1x1 -> "5x5" (3x3, see the module docstring) | pool -> 1x1,
    concatenated along channels."""

    def __init__(self, in_ch: int, ch1x1: int, ch3x3red: int, ch3x3: int, ch5x5red: int, ch5x5: int,
                 pool_proj: int, norm_layer: NormLayer):
        super().__init__()
        conv = partial(BasicConv2d, norm_layer=norm_layer)
        self.branch1 = conv(in_ch, ch1x1, 1)
        self.branch2 = nn.Sequential(conv(in_ch, ch3x3red, 1), conv(ch3x3red, ch3x3, 3, padding=1))
        self.branch3 = nn.Sequential(conv(in_ch, ch5x5red, 1), conv(ch5x5red, ch5x5, 3, padding=1))
        self.branch4 = nn.Sequential(nn.MaxPool2d(3, stride=1, padding=1, ceil_mode=True),
                                     conv(in_ch, pool_proj, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branches = [self.branch1(x), self.branch2(x), self.branch3(x), self.branch4(x)]
        return torch.cat(branches, 1)  # (B, ch1x1 + ch3x3 + ch5x5 + pool_proj, H, W)


class InceptionAux(nn.Module):
    """Section 5: average pool to 4x4, 1x1 conv with 128 filters, FC 1024, 70% dropout, classes.
    Only used in training, where the paper adds its loss with weight 0.3."""

    def __init__(self, in_ch: int, num_classes: int, norm_layer: NormLayer, dropout: float = 0.7):
        super().__init__()
        self.conv = BasicConv2d(in_ch, 128, 1, norm_layer)
        self.fc1 = nn.Linear(128 * 4 * 4, 1024)
        self.fc2 = nn.Linear(1024, num_classes)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv(F.adaptive_avg_pool2d(x, (4, 4)))  # (B, 128, 4, 4)
        x = F.relu(self.fc1(torch.flatten(x, 1)), inplace=True)  # (B, 1024)
        return self.fc2(self.dropout(x))  # (B, num_classes)


class GoogLeNet(nn.Module):
    """Table 1: stem, inception (3a, 3b), pool, (4a-4e), pool, (5a, 5b), average pool, dropout, FC.

    In training mode with `aux_logits`, forward returns `(logits, [aux1, aux2])`; otherwise logits.
    """

    # Submodules used only in training: left out of the parameters cnnbench reports for inference.
    training_only = ("aux1", "aux2")

    def __init__(self, num_classes: int = 1000, in_channels: int = 3, norm: str = "batch",
                 dropout: float = 0.4, aux_logits: bool = True):
        super().__init__()
        norm_layer = get_norm_layer(norm)
        if norm_layer is nn.BatchNorm2d:
            norm_layer = partial(nn.BatchNorm2d, eps=1e-3)  # torchvision's (and TensorFlow's) eps
        conv = partial(BasicConv2d, norm_layer=norm_layer)
        block = partial(Inception, norm_layer=norm_layer)
        self.conv1 = conv(in_channels, 64, 7, stride=2, padding=3)
        self.maxpool1 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.conv2 = conv(64, 64, 1)
        self.conv3 = conv(64, 192, 3, padding=1)
        self.maxpool2 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        # in, 1x1, 3x3 reduce, 3x3, 5x5 reduce, 5x5, pool proj: the columns of Table 1
        self.inception3a = block(192, 64, 96, 128, 16, 32, 32)
        self.inception3b = block(256, 128, 128, 192, 32, 96, 64)
        self.maxpool3 = nn.MaxPool2d(3, stride=2, ceil_mode=True)
        self.inception4a = block(480, 192, 96, 208, 16, 48, 64)
        self.inception4b = block(512, 160, 112, 224, 24, 64, 64)
        self.inception4c = block(512, 128, 128, 256, 24, 64, 64)
        self.inception4d = block(512, 112, 144, 288, 32, 64, 64)
        self.inception4e = block(528, 256, 160, 320, 32, 128, 128)
        self.maxpool4 = nn.MaxPool2d(2, stride=2, ceil_mode=True)  # Table 1: 3x3/2 (TF's is 2x2)
        self.inception5a = block(832, 256, 160, 320, 32, 128, 128)
        self.inception5b = block(832, 384, 192, 384, 48, 128, 128)
        # section 5: auxiliary classifiers on the outputs of 4a and 4d
        self.aux1 = InceptionAux(512, num_classes, norm_layer) if aux_logits else None
        self.aux2 = InceptionAux(528, num_classes, norm_layer) if aux_logits else None
        self.avgpool = GlobalAvgPool()
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(1024, num_classes)

        for m in self.modules():  # torchvision's initialisation
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.trunc_normal_(m.weight, mean=0.0, std=0.01, a=-2, b=2)
            elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.affine:
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward_features(self, x: torch.Tensor, aux: Optional[List[torch.Tensor]] = None) -> torch.Tensor:
        """Features before the classifier; appends the auxiliary logits to `aux` when given."""
        x = self.maxpool1(self.conv1(x))  # (B, 64, H/4, W/4)
        x = self.maxpool2(self.conv3(self.conv2(x)))  # (B, 192, H/8, W/8)
        x = self.inception3b(self.inception3a(x))  # (B, 480, H/8, W/8)
        x = self.inception4a(self.maxpool3(x))  # (B, 512, H/16, W/16)
        if aux is not None:
            aux.append(self.aux1(x))
        x = self.inception4d(self.inception4c(self.inception4b(x)))  # (B, 528, H/16, W/16)
        if aux is not None:
            aux.append(self.aux2(x))
        x = self.maxpool4(self.inception4e(x))  # (B, 832, H/32, W/32)
        return self.inception5b(self.inception5a(x))  # (B, 1024, H/32, W/32)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(self.avgpool(x)))  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> Union[torch.Tensor, Tuple[torch.Tensor, List[torch.Tensor]]]:
        aux = [] if self.training and self.aux1 is not None else None
        logits = self.forward_head(self.forward_features(x, aux))
        return logits if aux is None else (logits, aux)


# Smallest input: maxpool4 (2x2/2, ceil) needs 2x2 maps at H/16, so 15 px (torchvision's figure).
@register_model("googlenet", family="googlenet", year=2014, min_size=15,
                paper="Szegedy et al., Going Deeper with Convolutions")
def googlenet(num_classes: int = 1000, in_channels: int = 3, norm: str = "batch", dropout: float = 0.4,
              aux_logits: bool = True) -> GoogLeNet:
    """GoogLeNet: 6,624,904 parameters at 1000 classes, 13,004,888 with the auxiliary heads."""
    return GoogLeNet(num_classes, in_channels, norm, dropout, aux_logits)
