"""U-Net: Ronneberger, Fischer & Brox 2015, "U-Net: Convolutional Networks for Biomedical Image
Segmentation" (MICCAI 2015, arXiv:1505.04597), Fig. 1 and section 2.

A contracting path of four levels, each two 3x3 convolutions + ReLU then a 2x2/2 max-pool,
doubling the channels from 64 to 1024 at the bottom; an expanding path of four levels, each a
2x2 up-convolution that doubles the resolution and halves the channels, concatenation with the
contracting path's map of the same level (centre-cropped: "cropping is necessary due to the loss
of border pixels in every convolution"), and two 3x3 convolutions + ReLU; a 1x1 convolution to
the classes. 23 convolutional layers; 31,030,658 parameters at 1 channel and 2 classes.

`padding`:
- valid (the paper): unpadded convolutions, so every 3x3 trims a 1 px border and the output is
  SMALLER than the input, 572 x 572 -> 388 x 388 (Fig. 1): (B, C, H, W) -> (B, classes, H - 184,
  W - 184) for the sizes that tile seamlessly, 188 + 16k px, where every max-pool sees an even size
  (section 2); at other sizes the pools drop rows and the output is no longer centred on the
  input, so cnnbench refuses them (_size_problem). The output covers the input's centre, and the
  segmentation task scores it against the mask cropped to that centre. The paper also predicts
  the border, by mirror-extrapolating the input (overlap-tile, Fig. 2): cnnbench does not, so the
  border's pixels are not scored, and sizes whose output would cover less than a quarter of the
  input (under 380 px: 188 px gives 4 px) are refused with the fix.
- same (not in the paper): padding 1, so (B, C, H, W) -> (B, classes, H, W) for any H, W >= 16
  (four pools); where a pool rounds an odd size down, the up-convolution's map is zero-padded to
  its skip's size.

`norm: batch` adds batch normalisation after every 3x3 convolution (not in the paper; the
convolutions then lose their biases). Initialisation as section 3: Gaussian with standard
deviation sqrt(2 / N), N the inputs of one neuron (9 x 64 = 576 for a 3x3 convolution on 64 maps).
"""

import math
from typing import List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.models.fcn import norm_layer_for
from cnnbench.models.layers import NormLayer
from cnnbench.models.registry import register_model

_WIDTHS = (64, 128, 256, 512, 1024)  # Fig. 1: channels at each level, top to bottom
_PADDING = {"valid": 0, "same": 1}  # px of zero padding of each 3x3 convolution


def center_crop(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """The h x w centre of x (B, C, H, W); rounds the offset down where H - h is odd."""
    top, left = (x.shape[-2] - h) // 2, (x.shape[-1] - w) // 2
    return x[:, :, top:top + h, left:left + w]


class DoubleConv(nn.Sequential):
    """Two 3x3 convolutions, each + [norm] + ReLU (Fig. 1's blue arrows): (B, in_ch, H, W) ->
    (B, out_ch, H - 4, W - 4) unpadded, (B, out_ch, H, W) with padding 1."""

    def __init__(self, in_ch: int, out_ch: int, padding: int, norm_layer: Optional[NormLayer]):
        layers: List[nn.Module] = []
        for ch in (in_ch, out_ch):
            layers.append(nn.Conv2d(ch, out_ch, 3, padding=padding, bias=norm_layer is None))
            layers += [norm_layer(out_ch)] if norm_layer is not None else []
            layers.append(nn.ReLU(inplace=True))
        super().__init__(*layers)


class Up(nn.Module):
    """One expanding level: 2x2 up-convolution halving the channels (green arrow), concatenation
    with the contracting path's map (grey arrow), DoubleConv. (B, in_ch, h, w) + skip ->
    (B, in_ch / 2, 2h - 4, 2w - 4) unpadded, (B, in_ch / 2, skip's H, W) with padding 1."""

    def __init__(self, in_ch: int, padding: int, norm_layer: Optional[NormLayer]):
        super().__init__()
        self.up = nn.ConvTranspose2d(in_ch, in_ch // 2, 2, stride=2)
        self.conv = DoubleConv(in_ch, in_ch // 2, padding, norm_layer)
        self.crop = padding == 0

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = self.up(x)  # (B, in_ch / 2, 2h, 2w)
        if self.crop:  # unpadded: the skip is larger (Fig. 1's dashed crops)
            skip = center_crop(skip, *x.shape[-2:])
        else:  # padding 1: the skip is 1 px larger where a pool rounded an odd size down
            dh, dw = skip.shape[-2] - x.shape[-2], skip.shape[-1] - x.shape[-1]
            x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
        return self.conv(torch.cat([skip, x], 1))  # (B, in_ch, ...) -> (B, in_ch / 2, ...)


class UNet(nn.Module):
    """Fig. 1: contracting path 64 -> 1024 channels, expanding path back to 64, 1x1 to the classes.
    (B, in_channels, H, W) -> (B, num_classes, H - 184, W - 184) with valid padding (for H, W =
    188 + 16k), (B, num_classes, H, W) with same padding."""

    def __init__(self, num_classes: int = 2, in_channels: int = 1, padding: str = "valid", norm: Optional[str] = None):
        super().__init__()
        if padding not in _PADDING:
            raise ValueError(f"unknown padding {padding!r}; choose valid (the paper) or same")
        pad, norm_layer = _PADDING[padding], norm_layer_for(norm)
        chs = (in_channels, *_WIDTHS)
        self.down = nn.ModuleList(DoubleConv(chs[i], chs[i + 1], pad, norm_layer) for i in range(len(_WIDTHS)))
        self.up = nn.ModuleList(Up(ch, pad, norm_layer) for ch in reversed(_WIDTHS[1:]))
        self.head = nn.Conv2d(_WIDTHS[0], num_classes, 1)
        # Not the contracting path: what model.freeze=backbone trains (models/weights.py)
        self.head_layers = ["up", "head"]

        for m in self.modules():  # section 3: N(0, 2 / N), N = inputs of one neuron
            if isinstance(m, nn.Conv2d):
                fan_in = m.in_channels * m.kernel_size[0] * m.kernel_size[1]
            elif isinstance(m, nn.ConvTranspose2d):
                fan_in = m.in_channels  # a 2x2 stride-2 up-convolution: one kernel tap per output pixel
            else:
                continue
            nn.init.normal_(m.weight, 0, math.sqrt(2 / fan_in))
            if m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, level in enumerate(self.down):  # (B, 64, H - 4, ...) ... (B, 1024, (H - 124) / 16, ...) unpadded
            x = level(F.max_pool2d(x, 2) if i else x)  # 2x2 max-pool (red arrows) before levels 2-5
            skips.append(x)
        for up, skip in zip(self.up, reversed(skips[:-1])):
            x = up(x, skip)  # (B, 512, ...) ... (B, 64, H - 184, W - 184) unpadded
        return self.head(x)  # (B, num_classes, ...)


def _size_problem(size: int, padding: str = "valid", **_) -> Optional[str]:
    """Why U-Net cannot take a size px input (None if it can): with padding=valid only 188 + 16k px
    tile seamlessly (the output is centred on the input), and the output should cover at least a
    quarter of the input's pixels, else the figures score only a small centre (380 px and up)."""
    if padding != "valid":
        return None
    if (size - 188) % 16:
        lower, upper = size - (size - 188) % 16, size - (size - 188) % 16 + 16
        return (f"with model.padding=valid (the paper's unpadded convolutions) only sizes of 188 + 16k px tile "
                f"seamlessly: at {size} px the max-pools drop rows and the output is not centred on the input. "
                f"Use dataset.image_size={lower} or {upper}, or model.padding=same (output at the input size)")
    if 4 * (size - 184) ** 2 < size ** 2:
        return (f"with model.padding=valid (the paper's unpadded convolutions) a {size} px input gives a "
                f"{size - 184} px output, so only {100 * (size - 184) ** 2 / size ** 2:.2g}% of each image's pixels "
                f"would be scored (the paper predicts the border by mirroring the input; cnnbench does not). Use "
                f"model.padding=same (output at the input size), or dataset.image_size=380 or more of 188 + 16k "
                f"px (572 as in the paper)")
    return None


def _min_size(padding: str = "valid", **_) -> int:
    # valid: the 4 px bottom map -> 4 px out is the smallest tiling input, 188 = ((((4 + 4) * 2 + 4) * 2 + 4)
    # * 2 + 4) * 2 + 4; same: four 2x2 pools need 16 px
    return 188 if padding == "valid" else 16


@register_model("unet", family="unet", year=2015, min_size=_min_size, default_input=(1, 572, 572),
                default_classes=2, task="segmentation", size_check=_size_problem,
                paper="Ronneberger, Fischer & Brox, U-Net: Convolutional Networks for Biomedical Image Segmentation")
def unet(num_classes: int = 2, in_channels: int = 1, padding: str = "valid", norm: str = "none") -> UNet:
    """U-Net (Fig. 1). padding=valid (the paper): (B, C, H, W) -> (B, num_classes, H - 184, W - 184),
    572 -> 388 px, smallest 188 -> 4 px; the target is cropped to the output's centre. padding=same:
    (B, num_classes, H, W), H, W >= 16. Defaults: the paper's 1-channel cell images, 2 classes."""
    return UNet(num_classes, in_channels, padding, norm)
