"""LeNet-5: LeCun, Bottou, Bengio & Haffner 1998, "Gradient-Based Learning Applied to Document
Recognition", Fig. 2. The network that showed convolutions + sub-sampling + a small classifier
learn to read digits from pixels."""

import torch
import torch.nn as nn

from cnnbench.models.layers import get_conv_layer
from cnnbench.models.registry import register_model


class LeNet5(nn.Module):
    """C1 6@5x5 -> S2 pool -> C3 16@5x5 -> S4 pool -> C5 120 -> F6 84 -> classes, on 32x32 input.

    `classic=True` keeps the paper's tanh and average-pool sub-sampling; the default uses ReLU and
    max-pooling, which train faster. The paper's S2/S4 have a trainable coefficient and bias per
    map and C3 a sparse connection table (Table I); like every modern re-implementation, this one
    uses plain pooling and full C3 connections, which gives the usual 61,706 parameters.

    `conv_impl="im2col"` computes C1, C3 and C5 with the textbook im2col + matrix product
    (cnnbench/models/im2col.py) instead of PyTorch's kernels; parameters and state-dict keys are
    the same, so weights move freely between the two.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, classic: bool = False,
                 conv_impl: str = "torch"):
        super().__init__()
        act = nn.Tanh if classic else nn.ReLU
        pool = nn.AvgPool2d if classic else nn.MaxPool2d
        conv = get_conv_layer(conv_impl)
        self.features = nn.Sequential(
            conv(in_channels, 6, 5), act(), pool(2),  # C1, S2: 32 -> 28 -> 14
            conv(6, 16, 5), act(), pool(2),  # C3, S4: 14 -> 10 -> 5
            conv(16, 120, 5), act(),  # C5: a 5x5 convolution over the 5x5 maps -> 1x1
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(120, 84), act(), nn.Linear(84, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 120, 1, 1)
        return self.classifier(x)  # (B, num_classes)


@register_model("lenet5", family="lenet", year=1998, min_size=32, max_size=32,
                paper="LeCun et al., Gradient-Based Learning Applied to Document Recognition",
                default_input=(1, 32, 32), default_classes=10)
def lenet5(num_classes: int = 10, in_channels: int = 1, classic: bool = False,
           conv_impl: str = "torch") -> LeNet5:
    """LeNet-5 on 32x32 images: 61,706 parameters at 10 classes. `conv_impl`: torch (PyTorch's
    convolution) | im2col (the textbook im2col + matrix product, cnnbench/models/im2col.py)."""
    return LeNet5(num_classes, in_channels, classic, conv_impl)
