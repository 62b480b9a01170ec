"""Building blocks shared by the model families, and factories that turn config strings into
layer classes (`norm: group` -> a callable building nn.GroupNorm). No family re-writes a block
that lives here."""

import math
from collections import OrderedDict
from typing import Callable, Optional

import torch
import torch.nn as nn

from cnnbench.models.im2col import Im2colConv2d

NormLayer = Callable[[int], nn.Module]  # channels -> normalisation module


def _group_norm(channels: int) -> nn.Module:
    # Wu & He 2018 use 32 groups; narrower layers take the largest group count dividing them.
    return nn.GroupNorm(math.gcd(32, channels), channels)


_NORMS = {
    "batch": nn.BatchNorm2d,  # Ioffe & Szegedy 2015: statistics over (N, H, W)
    "layer": lambda c: nn.GroupNorm(1, c),  # Ba et al. 2016: over (C, H, W) of each image
    "instance": lambda c: nn.InstanceNorm2d(c, affine=True),  # Ulyanov et al. 2016: over (H, W)
    "group": _group_norm,  # Wu & He 2018: over (C/G, H, W) of each image
    "none": lambda c: nn.Identity(),
}


def get_norm_layer(name: Optional[str]) -> NormLayer:
    """'batch' | 'layer' | 'instance' | 'group' | 'none' -> channels -> module."""
    name = getattr(name, "value", name) or "batch"  # accept the config's Norm enum
    if name not in _NORMS:
        raise ValueError(f"unknown norm {name!r}; choose one of {', '.join(_NORMS)}")
    return _NORMS[name]


_CONVS = {
    "torch": nn.Conv2d,  # PyTorch's own: oneDNN on the CPU, cuDNN on the GPU
    "im2col": Im2colConv2d,  # the textbook reference: im2col + one matrix product (im2col.py)
}


def get_conv_layer(name: Optional[str]) -> Callable[..., nn.Conv2d]:
    """'torch' | 'im2col' -> a class with nn.Conv2d's constructor and parameters."""
    name = name or "torch"
    if name not in _CONVS:
        raise ValueError(f"unknown conv_impl {name!r}; choose one of {', '.join(_CONVS)}")
    return _CONVS[name]


class ConvNormAct(nn.Sequential):
    """Convolution -> normalisation -> activation, the unit most modern CNNs are built from.
    The convolution has no bias when a normalisation follows (the norm's shift replaces it)."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1,
                 groups: int = 1, norm_layer: Optional[NormLayer] = nn.BatchNorm2d,
                 act_layer: Optional[Callable[..., nn.Module]] = nn.ReLU):
        padding = (kernel_size - 1) // 2  # "same" padding for odd kernels at stride 1
        layers = [nn.Conv2d(in_ch, out_ch, kernel_size, stride, padding, groups=groups,
                            bias=norm_layer is None)]
        if norm_layer is not None:
            layers.append(norm_layer(out_ch))
        if act_layer is not None:
            layers.append(act_layer(inplace=True) if act_layer in (nn.ReLU, nn.ReLU6) else act_layer())
        super().__init__(*layers)


def is_small_stem(stem) -> bool:
    """stem: 'imagenet' | 'small' (or the config's Stem enum) -> True for 'small'."""
    name = getattr(stem, "value", stem)
    if name not in ("imagenet", "small"):
        raise ValueError(f"unknown stem {name!r}; choose imagenet or small")
    return name == "small"


class LocalResponseNorm(nn.LocalResponseNorm):
    """Krizhevsky et al. 2012, section 3.3: b_i = a_i / (k + alpha * sum_j a_j^2)^beta, the sum over
    the n maps around map i, with the paper's k=2, n=5, alpha=1e-4, beta=0.75. torch divides alpha
    by n (as Caffe does); the paper does not, so alpha is scaled by n to compute the paper's formula."""

    def __init__(self, n: int = 5, alpha: float = 1e-4, beta: float = 0.75, k: float = 2.0):
        super().__init__(size=n, alpha=alpha * n, beta=beta, k=k)


class GlobalAvgPool(nn.Module):
    """Mean of each feature map, (B, C, H, W) -> (B, C): the classifier sees no spatial layout
    (Lin, Chen & Yan 2014, "Network In Network", section 3.2)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.mean((2, 3))


class DepthwiseConv(ConvNormAct):
    """One k x k filter per channel (groups = channels): spatial filtering only, k^2 * C weights
    (Howard et al. 2017, "MobileNets", section 3.1)."""

    def __init__(self, channels: int, kernel_size: int = 3, stride: int = 1,
                 norm_layer: Optional[NormLayer] = nn.BatchNorm2d,
                 act_layer: Optional[Callable[..., nn.Module]] = nn.ReLU):
        super().__init__(channels, channels, kernel_size, stride, channels, norm_layer, act_layer)


class PointwiseConv(ConvNormAct):
    """1x1 convolution: mixes channels at each pixel (Lin et al. 2014; MobileNets section 3.1)."""

    def __init__(self, in_ch: int, out_ch: int, norm_layer: Optional[NormLayer] = nn.BatchNorm2d,
                 act_layer: Optional[Callable[..., nn.Module]] = nn.ReLU):
        super().__init__(in_ch, out_ch, 1, 1, 1, norm_layer, act_layer)


class DepthwiseSeparable(nn.Sequential):
    """Depthwise k x k then pointwise 1x1, each with norm and activation (MobileNets Fig. 3 right):
    about 1/out_ch + 1/k^2 of a full convolution's multiply-adds (equation 5)."""

    def __init__(self, in_ch: int, out_ch: int, stride: int = 1, kernel_size: int = 3,
                 norm_layer: Optional[NormLayer] = nn.BatchNorm2d,
                 act_layer: Optional[Callable[..., nn.Module]] = nn.ReLU):
        super().__init__(OrderedDict(
            dw=DepthwiseConv(in_ch, kernel_size, stride, norm_layer, act_layer),
            pw=PointwiseConv(in_ch, out_ch, norm_layer, act_layer)))


class GroupedConv(ConvNormAct):
    """A convolution split into `groups` independent slices of the channels: 1/groups of the
    weights and multiply-adds. AlexNet's two-GPU towers (Krizhevsky et al. 2012, Fig. 2) and
    ResNeXt's cardinality (Xie et al. 2017) are this layer; groups = channels is depthwise."""

    def __init__(self, in_ch: int, out_ch: int, kernel_size: int = 3, stride: int = 1, groups: int = 2,
                 norm_layer: Optional[NormLayer] = nn.BatchNorm2d,
                 act_layer: Optional[Callable[..., nn.Module]] = nn.ReLU):
        if in_ch % groups or out_ch % groups:
            raise ValueError(f"groups={groups} must divide both {in_ch} and {out_ch} channels")
        super().__init__(in_ch, out_ch, kernel_size, stride, groups, norm_layer, act_layer)


class TransposedConvUp(nn.Sequential):
    """Learned up-sampling by `scale` with a transposed convolution (the gradient of a strided
    convolution; Zeiler et al. 2010, Long et al. 2015 "Fully Convolutional Networks"), then norm
    and activation. Kernel 2 x scale with padding scale / 2 gives exactly H x scale."""

    def __init__(self, in_ch: int, out_ch: int, scale: int = 2,
                 norm_layer: Optional[NormLayer] = nn.BatchNorm2d,
                 act_layer: Optional[Callable[..., nn.Module]] = nn.ReLU):
        layers = [nn.ConvTranspose2d(in_ch, out_ch, 2 * scale, stride=scale, padding=scale // 2,
                                     bias=norm_layer is None)]
        layers += [norm_layer(out_ch)] if norm_layer is not None else []
        layers += [act_layer()] if act_layer is not None else []
        super().__init__(*layers)


class PixelShuffleUp(nn.Sequential):
    """Sub-pixel up-sampling by `scale` (Shi et al. 2016, "Real-Time Single Image and Video
    Super-Resolution Using an Efficient Sub-Pixel CNN"): a convolution at low resolution makes
    out_ch x scale^2 channels, and PixelShuffle rearranges them into a scale-times larger map.
    (B, C, H, W) -> (B, out_ch, H * scale, W * scale)."""

    def __init__(self, in_ch: int, out_ch: int, scale: int = 2, kernel_size: int = 3):
        super().__init__(nn.Conv2d(in_ch, out_ch * scale * scale, kernel_size, padding=kernel_size // 2),
                         nn.PixelShuffle(scale))


def init_weights(model: nn.Module, linear_std: float = 0.01) -> None:
    """torchvision's initialisation for VGG and MobileNet: He-normal convolutions (fan-out, He et
    al. 2015b), norms at scale 1 and shift 0, linear layers N(0, linear_std), biases 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, (nn.BatchNorm2d, nn.GroupNorm, nn.InstanceNorm2d)) and m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0, linear_std)
            nn.init.zeros_(m.bias)
