"""FCN: Long, Shelhamer & Darrell 2015, "Fully Convolutional Networks for Semantic Segmentation"
(CVPR 2015, arXiv:1411.4038), Fig. 3 and section 4, as built by the reference Caffe nets
(fcn.berkeleyvision.org, voc-fcn32s/16s/8s).

A classifier made fully convolutional: VGG-16's thirteen 3x3 convolutions and five max-pools, its
fully-connected layers recast as convolutions (fc6 a 7x7, fc7 a 1x1, 4096 maps each; section 3.1,
"convolutionalization"), a 1x1 convolution scoring each class on the stride-32 grid, and a
transposed convolution up-sampling the scores to the image (section 3.3). The skip nets refine
the coarse scores with scores from earlier, finer layers (section 4.2, Fig. 3):

- FCN-32s: score_fr, up-sampled 32x.
- FCN-16s: score_fr up-sampled 2x, plus a 1x1 scoring of pool4; the sum up-sampled 16x.
- FCN-8s: that sum up-sampled 2x again, plus a 1x1 scoring of pool3; the sum up-sampled 8x.

As in the reference nets: conv1_1 pads by 100 px so that any input, even 1 px, leaves fc6 at
least 1x1; the max-pools round up (Caffe's pooling); Caffe's Crop aligns each map with the next at
the offsets the nets use (score_pool4: 5, score_pool3: 9, the final scores: 19 for 32s, 27 for 16s,
31 for 8s), so the output is (B, num_classes, H, W) at the input size; score layers start at zero
(section 4.3: random initialisation was neither better nor faster); the transposed convolutions
have no bias.

Up-sampling (sections 3.3, 4.2, 4.3): every up-sampling starts as bilinear interpolation. The 2x
ones of the skip nets (upscore2, upscore_pool4) are learned, as the paper says (the released
prototxts, by contrast, freeze them: lr_mult 0); the final 32x / 16x / 8x one is fixed to bilinear (section
4.3): it is a buffer, not a parameter, so it is neither trained nor counted nor saved. It
up-samples each class's map on its own (a grouped transposed convolution), the function of the
reference's class-diagonal 21x21 kernel.

Parameters at 21 classes, 3 channels: FCN-32s 134,346,581 (Table 1: "134M"), FCN-16s 134,364,410,
FCN-8s 134,376,863. `norm` other than none adds a norm after each of the 13 VGG convolutions, as
torchvision's vgg16_bn does (not in the paper). `adapt_state_dict` turns an ImageNet VGG-16 state
dict (torchvision's or cnnbench's) into this network's, for model.weights.
"""

from typing import Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.models.layers import NormLayer, get_norm_layer, init_weights
from cnnbench.models.registry import register_model

# Simonyan & Zisserman 2014, Table 1, configuration D: each stage's 3x3 convolution widths; a 2x2/2
# max-pool ends each stage.
VGG16_STAGES = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))

_CONV1_PAD = 100  # px: conv1_1's padding in the reference nets; fc6 is >= 1x1 for any input size
_CROP = {32: (19,), 16: (5, 27), 8: (5, 9, 31)}  # px: Crop offsets of the reference nets, in order


# --- helpers ---------------------------------------------------------------------------------------

def norm_layer_for(norm) -> Optional[NormLayer]:
    """'none' (or None) -> no norm layer; 'batch' | 'layer' | 'instance' | 'group' -> its factory."""
    name = getattr(norm, "value", norm)
    return None if name in (None, "none") else get_norm_layer(name)


def bilinear_kernel(size: int) -> torch.Tensor:
    """(size, size) weights with which a size x size transposed convolution of stride size / 2
    interpolates bilinearly (the reference nets' surgery.upsample_filt)."""
    factor = (size + 1) // 2
    center = factor - 1 if size % 2 == 1 else factor - 0.5
    t = 1 - (torch.arange(size, dtype=torch.float32) - center).abs() / factor
    return t[:, None] * t[None, :]


def crop(x: torch.Tensor, offset: int, like: torch.Tensor) -> torch.Tensor:
    """Caffe's Crop layer: the window of x at (offset, offset) with like's height and width."""
    h, w = like.shape[-2:]
    return x[:, :, offset:offset + h, offset:offset + w]


def vgg16_encoder_state(state: Dict[str, torch.Tensor], convs: Sequence[str]) -> Dict[str, torch.Tensor]:
    """Rename the 13 convolutions (and norms) of a VGG-16 state dict in torchvision's layout,
    `features.N.*` (vgg16: conv at N; vgg16_bn: conv at N, norm at N + 1), to `{conv}.0.*` and
    `{conv}.1.*` for the modules named in `convs`, in order. Other keys are kept as they are (a
    VGG-19's extra convolutions then show as unexpected keys, not as silently fresh ones)."""
    batch_norm = "features.1.weight" in state  # vgg16_bn: features.1 is the first norm, not a ReLU
    prefixes, n, ours = {}, 0, iter(convs)
    for stage in VGG16_STAGES:
        for _ in stage:
            conv = next(ours)
            prefixes[f"features.{n}."] = f"{conv}.0."
            if batch_norm:
                prefixes[f"features.{n + 1}."] = f"{conv}.1."
            n += 3 if batch_norm else 2  # conv, [norm], ReLU
        n += 1  # max-pool
    out = {}
    for key, value in state.items():
        prefix = ".".join(key.split(".")[:2]) + "."
        out[prefixes[prefix] + key[len(prefix):] if prefix in prefixes else key] = value
    return out


# --- blocks ----------------------------------------------------------------------------------------

class VGGConv(nn.Sequential):
    """3x3 convolution (with bias, as VGG's) -> [norm] -> ReLU: one of VGG-16's 13 convolutions."""

    def __init__(self, in_ch: int, out_ch: int, norm_layer: Optional[NormLayer], padding: int = 1):
        layers = [nn.Conv2d(in_ch, out_ch, 3, padding=padding)]
        layers += [norm_layer(out_ch)] if norm_layer is not None else []
        super().__init__(*layers, nn.ReLU(inplace=True))


def vgg16_stage(in_ch: int, widths: Sequence[int], norm_layer: Optional[NormLayer],
                first_padding: int = 1) -> List[nn.Module]:
    """One stage's convolutions: (B, in_ch, H, W) -> (B, widths[-1], H', W')."""
    convs = []
    for i, out_ch in enumerate(widths):
        convs.append(VGGConv(in_ch, out_ch, norm_layer, first_padding if i == 0 else 1))
        in_ch = out_ch
    return convs


def bilinear_upsampling(channels: int, factor: int) -> nn.ConvTranspose2d:
    """A learned 2 factor x 2 factor transposed convolution of stride factor, no bias, starting as
    bilinear interpolation of each channel on its own (section 3.3; surgery.interp)."""
    up = nn.ConvTranspose2d(channels, channels, 2 * factor, stride=factor, bias=False)
    with torch.no_grad():
        up.weight.zero_()
        up.weight[range(channels), range(channels)] = bilinear_kernel(2 * factor).to(up.weight)
    return up


# --- network ---------------------------------------------------------------------------------------

class FCN(nn.Module):
    """VGG-16 made fully convolutional, scoring classes on the stride-32 grid and up-sampling the
    scores to the image, with skips from pool4 (stride 16, 8) and pool3 (stride 8): Fig. 3.
    (B, in_channels, H, W) -> (B, num_classes, H, W) scores (logits) per pixel."""

    def __init__(self, stride: int, num_classes: int = 21, in_channels: int = 3, norm: Optional[str] = None,
                 dropout: float = 0.5):
        super().__init__()
        if stride not in _CROP:
            raise ValueError(f"FCN output stride must be 32, 16 or 8, got {stride}")
        self.stride = stride
        norm_layer = norm_layer_for(norm)
        stages, ch = [], in_channels
        for i, widths in enumerate(VGG16_STAGES):
            convs = vgg16_stage(ch, widths, norm_layer, _CONV1_PAD if i == 0 else 1)
            stages.append(nn.Sequential(*convs, nn.MaxPool2d(2, stride=2, ceil_mode=True)))  # Caffe rounds up
            ch = widths[-1]
        self.conv1, self.conv2, self.conv3, self.conv4, self.conv5 = stages  # each ends with pool1..pool5
        # section 3.1: fc6 and fc7 as convolutions; dropout as in VGG (the reference nets' drop6, drop7)
        self.fc6 = nn.Sequential(nn.Conv2d(512, 4096, 7), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.fc7 = nn.Sequential(nn.Conv2d(4096, 4096, 1), nn.ReLU(inplace=True), nn.Dropout(dropout))
        self.score_fr = nn.Conv2d(4096, num_classes, 1)
        if stride <= 16:
            self.upscore2 = bilinear_upsampling(num_classes, 2)  # learned (section 4.2)
            self.score_pool4 = nn.Conv2d(512, num_classes, 1)
        if stride == 8:
            self.upscore_pool4 = bilinear_upsampling(num_classes, 2)  # learned
            self.score_pool3 = nn.Conv2d(256, num_classes, 1)
        # the final up-sampling by `stride`: fixed bilinear (section 4.3), one kernel per class, not a parameter
        kernel = bilinear_kernel(2 * stride).expand(num_classes, 1, 2 * stride, 2 * stride).contiguous()
        self.register_buffer("upscore", kernel, persistent=False)

        # The layers whose shapes follow the classes: re-initialised when model.weights has another
        # class count, trained alone with model.freeze=backbone (models/weights.py)
        self.head_layers = [n for n in ("score_fr", "upscore2", "score_pool4", "upscore_pool4", "score_pool3")
                            if hasattr(self, n)]
        init_weights(self)  # He-normal convolutions (torchvision's VGG initialisation)
        for score in (self.score_fr, getattr(self, "score_pool4", None), getattr(self, "score_pool3", None)):
            if score is not None:  # section 4.3: zero-initialised class scores
                nn.init.zeros_(score.weight)
                nn.init.zeros_(score.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pool3 = self.conv3(self.conv2(self.conv1(x)))  # (B, 256, ceil((H + 198) / 8), ...)
        pool4 = self.conv4(pool3)  # (B, 512, ceil((H + 198) / 16), ...)
        pool5 = self.conv5(pool4)  # (B, 512, ceil((H + 198) / 32), ...)
        score = self.score_fr(self.fc7(self.fc6(pool5)))  # (B, classes, h, w), h = ceil((H + 198) / 32) - 6
        offsets = iter(_CROP[self.stride])
        if self.stride <= 16:
            score = self.upscore2(score)  # (B, classes, 2h + 2, 2w + 2)
            score = score + crop(self.score_pool4(pool4), next(offsets), score)  # fuse_pool4
        if self.stride == 8:
            score = self.upscore_pool4(score)  # (B, classes, 4h + 6, 4w + 6)
            score = score + crop(self.score_pool3(pool3), next(offsets), score)  # fuse_pool3
        up = F.conv_transpose2d(score, self.upscore.to(score.dtype), stride=self.stride, groups=score.shape[1])
        return crop(up, next(offsets), x)  # (B, classes, H, W)

    def adapt_state_dict(self, state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
        """A VGG-16 classifier's state dict (torchvision's vgg16 / vgg16_bn layout, which cnnbench's
        VGG shares: features.N.*, classifier.0 Linear 25088 -> 4096, classifier.3 4096 -> 4096) as
        this network's: the 13 convolutions (and norms) renamed, fc6 and fc7 reshaped into 7x7 and
        1x1 kernels (section 3.1: a fully-connected layer is a convolution whose kernel covers its
        whole input; torchvision flattens (512, 7, 7) channel-major, as a kernel is laid out), the
        1000-class classifier.6 dropped ("decapitated", section 4.1). The layers the classifier has no
        counterpart for, score_* and upscore*, keep the model's own fresh values (zero scores,
        bilinear up-sampling), so the result loads strictly. Keys that fit nothing are passed on
        for the loader to name; a state dict already in this network's keys (an FCN checkpoint) is
        returned as it is."""
        if "features.0.weight" not in state:
            return state
        convs = [f"conv{s + 1}.{j}" for s, widths in enumerate(VGG16_STAGES) for j in range(len(widths))]
        out = vgg16_encoder_state(state, convs)
        for fc, name, shape in (("classifier.0", "fc6.0", (4096, 512, 7, 7)),
                                ("classifier.3", "fc7.0", (4096, 4096, 1, 1))):
            if f"{fc}.weight" in out:
                out[f"{name}.weight"] = out.pop(f"{fc}.weight").reshape(shape)
                out[f"{name}.bias"] = out.pop(f"{fc}.bias")
        out = {k: v for k, v in out.items() if not k.startswith("classifier.6.")}  # the ImageNet classifier
        fresh = {k: v for k, v in self.state_dict().items() if k.startswith(("score", "upscore"))}
        return {**fresh, **out}


# --- variants --------------------------------------------------------------------------------------

_PAPER = "Long, Shelhamer & Darrell, Fully Convolutional Networks for Semantic Segmentation"


def _fcn(name: str, stride: int):
    def build(num_classes: int = 21, in_channels: int = 3, norm: str = "none", dropout: float = 0.5) -> FCN:
        return FCN(stride, num_classes, in_channels, norm, dropout)

    build.__name__ = name
    build.__doc__ = (f"FCN-{stride}s (Fig. 3): VGG-16 scored at stride 32"
                     f"{', refined with pool4' if stride <= 16 else ''}{' and pool3' if stride == 8 else ''}, "
                     f"up-sampled to the input size. (B, C, H, W) -> (B, num_classes, H, W).")
    # any size: conv1_1's 100 px padding leaves fc6 >= 1x1 even for a 1 px image
    return register_model(name, family="fcn", year=2015, paper=_PAPER, min_size=1, default_input=(3, 500, 500),
                          default_classes=21, task="segmentation")(build)


fcn32s = _fcn("fcn32s", 32)
fcn16s = _fcn("fcn16s", 16)
fcn8s = _fcn("fcn8s", 8)
