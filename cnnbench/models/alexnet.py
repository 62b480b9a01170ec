"""AlexNet: Krizhevsky, Sutskever & Hinton 2012, "ImageNet Classification with Deep Convolutional
Neural Networks", section 3 and Fig. 2.

Five convolutions and three fully-connected layers, trained with ReLUs, dropout and data
augmentation on two GPUs: the network that started the deep-learning era of ImageNet.

- `alexnet`: the paper's layer sizes (96-256-384-384-256, local response normalisation after
  conv1 and conv2), as one tower: the paper's two-GPU split restricted conv2, conv4 and conv5
  to the maps on their own GPU; here every layer sees all maps. 62,378,344 parameters at 227 px.
- `alexnet_tv`: the single-GPU variant of Krizhevsky 2014 ("One weird trick for parallelizing
  convolutional neural networks") that torchvision ships (64-192-384-256-256, no LRN), with
  torchvision's parameter names so its weights load as they are. 61,100,840 parameters.
"""

from typing import Sequence

import torch
import torch.nn as nn

from cnnbench.models.layers import LocalResponseNorm
from cnnbench.models.registry import register_model


def _features(in_channels: int, widths: Sequence[int], conv1_padding: int, lrn: bool) -> nn.Sequential:
    c1, c2, c3, c4, c5 = widths
    norm = [LocalResponseNorm()] if lrn else []  # section 3.3: after the ReLUs of conv1 and conv2
    return nn.Sequential(
        nn.Conv2d(in_channels, c1, 11, stride=4, padding=conv1_padding), nn.ReLU(inplace=True), *norm,
        nn.MaxPool2d(3, stride=2),  # section 3.4: overlapping pooling, 3x3 windows at stride 2
        nn.Conv2d(c1, c2, 5, padding=2), nn.ReLU(inplace=True), *norm,
        nn.MaxPool2d(3, stride=2),
        nn.Conv2d(c2, c3, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c3, c4, 3, padding=1), nn.ReLU(inplace=True),
        nn.Conv2d(c4, c5, 3, padding=1), nn.ReLU(inplace=True),
        nn.MaxPool2d(3, stride=2),
    )


class AlexNet(nn.Module):
    """conv1 11x11/4 -> pool -> conv2 5x5 -> pool -> conv3, conv4, conv5 3x3 -> pool -> FC 4096 ->
    FC 4096 -> classes. `paper=True` gives the 2012 layout (LRN, dropout on the outputs of the two
    hidden FC layers, the paper's initialisation); `paper=False` torchvision's (dropout on the
    inputs of the two hidden FC layers, PyTorch's default initialisation)."""

    def __init__(self, widths: Sequence[int], paper: bool, num_classes: int = 1000,
                 in_channels: int = 3, dropout: float = 0.5):
        super().__init__()
        # The paper's 224 px is a known slip: 11x11/4 without padding needs 227 px to give 55x55.
        self.features = _features(in_channels, widths, conv1_padding=0 if paper else 2, lrn=paper)
        self.avgpool = nn.AdaptiveAvgPool2d((6, 6))  # the identity at 227 (224) px; admits others
        hidden = [nn.Linear(widths[-1] * 6 * 6, 4096), nn.Linear(4096, 4096)]
        if paper:  # "dropout in the first two fully-connected layers" (section 4.2), on their outputs
            self.classifier = nn.Sequential(hidden[0], nn.ReLU(inplace=True), nn.Dropout(dropout),
                                            hidden[1], nn.ReLU(inplace=True), nn.Dropout(dropout),
                                            nn.Linear(4096, num_classes))
            self._init_as_paper()
        else:
            self.classifier = nn.Sequential(nn.Dropout(dropout), hidden[0], nn.ReLU(inplace=True),
                                            nn.Dropout(dropout), hidden[1], nn.ReLU(inplace=True),
                                            nn.Linear(4096, num_classes))

    def _init_as_paper(self) -> None:
        # Section 5: weights from N(0, 0.01^2); biases 1 in conv2, conv4, conv5 and the hidden FC
        # layers (positive inputs to their ReLUs speed early learning), 0 elsewhere.
        layers = [m for m in self.modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
        for i, m in enumerate(layers):
            nn.init.normal_(m.weight, 0.0, 0.01)
            nn.init.constant_(m.bias, 1.0 if i in (1, 3, 4, 5, 6) else 0.0)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x)  # (B, 256, 6, 6) at 227 px (alexnet) or 224 px (alexnet_tv)
        return self.avgpool(x)  # (B, 256, 6, 6)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(x, 1))  # (B, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))


_PAPER = "Krizhevsky, Sutskever & Hinton, ImageNet Classification with Deep Convolutional Neural Networks"


# Smallest input: the three 3x3/2 pools need 15x15 maps after conv1 (15 -> 7 -> 3 -> 1),
# i.e. 67 px without padding (alexnet) and 63 px with padding 2 (alexnet_tv).
@register_model("alexnet", family="alexnet", year=2012, paper=_PAPER, min_size=67,
                default_input=(3, 227, 227))
def alexnet(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> AlexNet:
    """AlexNet as in the 2012 paper, one tower: 62,378,344 parameters at 227 px and 1000 classes."""
    return AlexNet((96, 256, 384, 384, 256), True, num_classes, in_channels, dropout)


@register_model("alexnet_tv", family="alexnet", year=2014, min_size=63,
                paper="Krizhevsky, One weird trick for parallelizing convolutional neural networks")
def alexnet_tv(num_classes: int = 1000, in_channels: int = 3, dropout: float = 0.5) -> AlexNet:
    """torchvision's single-GPU AlexNet (Krizhevsky 2014): 61,100,840 parameters at 1000 classes."""
    return AlexNet((64, 192, 384, 256, 256), False, num_classes, in_channels, dropout)
