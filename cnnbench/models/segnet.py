"""SegNet: Badrinarayanan, Kendall & Cipolla 2017, "SegNet: A Deep Convolutional Encoder-Decoder
Architecture for Image Segmentation" (TPAMI, arXiv:1511.00561), Fig. 2 and section 3.

The encoder is VGG-16's thirteen 3x3 convolutions, each followed by batch normalisation and a
ReLU, without the fully-connected layers (section 3: 134M -> 14.7M encoder parameters). Each of
its five 2x2/2 max-pools remembers where every maximum came from (the paper stores 2 bits per
2x2 window; PyTorch's indices are int64, one per output value, and in training every layer's
input is saved for backward anyway: the saving the paper describes is at inference). The
decoder mirrors the encoder: it up-samples by putting each value back at its maximum's position
(max-unpooling with the stored indices, zeros elsewhere: no learned up-sampling, Fig. 3), then
densifies the sparse maps with 3x3 convolutions + batch norm + ReLU. The last decoder convolution
gives the class scores directly (no norm, no ReLU), for the soft-max classifier (section 3; the
reference SegNet-Tutorial segnet_train.prototxt: conv1_1_D -> SoftmaxWithLoss).

Every max-unpooling restores its encoder map's size exactly (output_size), so an odd size such as
36 px comes back at 36 px: (B, C, H, W) -> (B, num_classes, H, W) for any H, W >= 32 (five pools).
Convolutions keep their biases (as the reference prototxt's and torchvision's vgg16_bn), so
torchvision's vgg16_bn weights load into the encoder (`adapt_state_dict`). At 11 classes (CamVid)
and 3 channels: 29,449,355 parameters (encoder 14,723,136, decoder 14,726,219).
"""

from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.models.fcn import VGG16_STAGES, VGGConv, norm_layer_for, vgg16_encoder_state, vgg16_stage
from cnnbench.models.layers import NormLayer
from cnnbench.models.registry import register_model


def decoder_stage(widths: List[int], out_ch: int, norm_layer: Optional[NormLayer], last: bool) -> nn.Sequential:
    """The mirror of an encoder stage of `widths`: 3x3 convolutions at widths[-1], the last one
    narrowing to out_ch (the previous stage's width, or the classes: then a plain convolution)."""
    convs: List[nn.Module] = [VGGConv(widths[-1], widths[-1], norm_layer) for _ in widths[:-1]]
    convs.append(nn.Conv2d(widths[-1], out_ch, 3, padding=1) if last else VGGConv(widths[-1], out_ch, norm_layer))
    return nn.Sequential(*convs)


class SegNet(nn.Module):
    """Encoder (VGG-16's convolutions, pools that keep their indices) -> mirrored decoder
    (max-unpooling with those indices, convolutions) -> per-pixel class scores (Fig. 2).
    (B, in_channels, H, W) -> (B, num_classes, H, W)."""

    def __init__(self, num_classes: int = 11, in_channels: int = 3, norm: Optional[str] = "batch"):
        super().__init__()
        norm_layer = norm_layer_for(norm)
        stages, ch = [], in_channels
        for widths in VGG16_STAGES:
            stages.append(nn.Sequential(*vgg16_stage(ch, widths, norm_layer)))
            ch = widths[-1]
        self.encoder = nn.ModuleList(stages)
        decoder = []
        for i, widths in enumerate(VGG16_STAGES):  # mirrors encoder stage i, narrowing to stage i - 1's width
            out = VGG16_STAGES[i - 1][-1] if i > 0 else num_classes
            decoder.insert(0, decoder_stage(list(widths), out, norm_layer, last=i == 0))
        self.decoder = nn.ModuleList(decoder)  # deepest first, in the order it runs
        # Not the VGG-16-BN encoder that model.weights fills: what model.freeze=backbone trains
        # (models/weights.py); the last convolution gives the class scores
        self.head_layers = ["decoder"]
        # section 4: He et al.'s initialisation; norms at scale 1, shift 0
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_in", nonlinearity="relu")
                nn.init.zeros_(m.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        indices, sizes = [], []
        for stage in self.encoder:  # five stages: (B, 64, H, W) ... (B, 512, H/16, W/16) before each pool
            x = stage(x)
            sizes.append(x.shape[-2:])
            x, where = F.max_pool2d(x, 2, 2, return_indices=True)  # (B, C, H/2, W/2), rounded down
            indices.append(where)
        for stage, where, size in zip(self.decoder, reversed(indices), reversed(sizes)):
            x = F.max_unpool2d(x, where, 2, 2, output_size=size)  # sparse (B, C, 2h or 2h + 1, ...)
            x = stage(x)  # dense; the last stage gives (B, num_classes, H, W)
        return x

    def adapt_state_dict(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A VGG-16 classifier's state dict (torchvision's vgg16_bn layout, which cnnbench's shares;
        vgg16's too, for norm=none) as this network's: the 13 convolutions and their norms become
        the encoder (section 3: the encoder is initialised from VGG-16 trained on ImageNet); the
        fully-connected classifier.* are dropped; the decoder keeps the model's own fresh values,
        so the result loads strictly. Keys that fit nothing are passed on for the loader to name;
        a state dict already in this network's keys (a SegNet checkpoint) is returned as it is."""
        if "features.0.weight" not in state:
            return state
        convs = [f"encoder.{s}.{j}" for s, widths in enumerate(VGG16_STAGES) for j in range(len(widths))]
        out = {k: v for k, v in vgg16_encoder_state(state, convs).items() if not k.startswith("classifier.")}
        fresh = {k: v for k, v in self.state_dict().items() if k.startswith("decoder.")}
        return {**fresh, **out}


@register_model("segnet", family="segnet", year=2017, min_size=32, default_input=(3, 360, 480),
                default_classes=11, task="segmentation",
                paper="Badrinarayanan, Kendall & Cipolla, SegNet: A Deep Convolutional Encoder-Decoder Architecture "
                      "for Image Segmentation")
def segnet(num_classes: int = 11, in_channels: int = 3, norm: str = "batch") -> SegNet:
    """SegNet (Fig. 2): VGG-16 encoder, max-unpooling decoder. (B, C, H, W) -> (B, num_classes, H, W);
    H, W >= 32 (five 2x2 pools), any parity. Defaults: CamVid's 11 classes at 360 x 480 px."""
    return SegNet(num_classes, in_channels, norm)
