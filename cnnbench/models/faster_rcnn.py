"""Faster R-CNN: Ren, He, Girshick & Sun 2015, "Faster R-CNN: Towards Real-Time Object Detection
with Region Proposal Networks" (NeurIPS 2015, arXiv:1506.01497), Fig. 2-3 and section 3.

One CNN pass per image gives a feature map (VGG-16's conv5_3, stride 16, as in the paper; or the
zoo's ResNet-50 up to conv4 / MobileNet v2). A Region Proposal Network slides a 3x3 convolution
over it and, at every position, scores k anchors (3 scales x 3 aspect ratios, section 3.1.1) as
object or not and regresses each anchor's box: H x W x k proposals, of which the best after NMS
go on. RoI pooling cuts each proposal out of the same feature map to a fixed 7 x 7 grid (Fast
R-CNN, Girshick 2015, section 2.1), and two fully connected layers of 4096 feed a softmax over the
classes + background and a per-class box regression.

Built from torchvision's detection parts (torchvision.models.detection: GeneralizedRCNN's RPN,
RoI heads, losses, anchor matching, NMS), with these choices, each the paper's unless said:
- Anchors: scales 128, 256 and 512 px on the paper's ~600 px images, so 0.213, 0.427 and 0.853 of
  the image's shorter side here (`model.anchor_sizes`, fractions), ratios 1:2, 1:1, 2:1
  (`model.anchor_ratios`); they follow the input's size, computed at the first forward.
- RPN: an anchor is positive at IoU >= 0.7 with a box, negative below 0.3, 256 anchors per image,
  half positive at most (section 3.1.2). Different from the paper: torchvision scores each anchor
  with one sigmoid (k outputs), not a 2-way softmax (2k outputs): the same decision, k fewer
  weights per position.
- Proposals: 2,000 after NMS (IoU 0.7) per image in training, 300 in testing (section 3.3,
  Table 1's setting); `model.proposals` sets the test count.
- RoI pooling: max pooling to 7 x 7 at 1/16 scale (torchvision.ops.roi_pool), the paper's layer;
  torchvision's default is RoIAlign (Mask R-CNN's), which its FasterRCNN insists on by type, so
  RoIPool subclasses it.
- Box head: a proposal is a foreground example at IoU >= 0.5 with a box; torchvision calls
  everything below 0.5 background, where Fast R-CNN (section 2.3) takes [0.1, 0.5).
- Detections: per-class NMS at IoU 0.3 (the authors' released test code; torchvision's default
  is 0.5), at most 100 per image.
- Images are not resized (the paper rescales to 600 px): the run's input size is the detector's,
  and the data is already normalised, so torchvision's transform only batches.
Classes: num_classes object classes; the background is the network's extra output 0 (num_classes
+ 1 scores), as in the paper's K + 1.
"""

from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign, roi_pool

from cnnbench.models.proposals import Tally
from cnnbench.models.registry import create_model, register_model

ANCHOR_SIZES = (128 / 600, 256 / 600, 512 / 600)  # section 3.1.1's scales on its ~600 px images
ANCHOR_RATIOS = (0.5, 1.0, 2.0)  # height / width, as torchvision states them: 1:2, 1:1, 2:1
# Per-class NMS of the detections at test time: IoU 0.3, the authors' released test code
# (rbgirshick/py-faster-rcnn and fast-rcnn, cfg.TEST.NMS; R-CNN's likewise); torchvision's is 0.5
NMS = 0.3


# --- parts ---------------------------------------------------------------------------------------

class RoIPool(MultiScaleRoIAlign):
    """RoI max pooling (Fast R-CNN, section 2.1) on one feature map of known stride: each proposal
    (x1, y1, x2, y2 px) is split into output_size x output_size cells, each max-pooled.
    features {"0": (B, C, H/stride, W/stride)} -> (R, C, output_size, output_size) for R proposals.
    A MultiScaleRoIAlign by type only, since torchvision's FasterRCNN accepts no other class."""

    def __init__(self, stride: int, output_size: int = 7):
        super().__init__(["0"], output_size, sampling_ratio=0)
        self.stride = stride

    def forward(self, x, boxes: List[torch.Tensor], image_shapes: List[Tuple[int, int]]) -> torch.Tensor:
        return roi_pool(x["0"], boxes, self.output_size, spatial_scale=1.0 / self.stride)


class RelativeAnchors(AnchorGenerator):
    """Anchors whose sizes are fractions of the batch's (padded) shorter side, so that the paper's
    128-256-512 px on 600 px images become 20-41-82 px on a 96 px canvas. Recomputed when the size
    changes."""

    def __init__(self, fractions: Sequence[float] = ANCHOR_SIZES, ratios: Sequence[float] = ANCHOR_RATIOS):
        super().__init__(((1.0,) * len(fractions),), (tuple(ratios),))
        self.fractions, self.side = tuple(fractions), None

    def forward(self, image_list, feature_maps: List[torch.Tensor]) -> List[torch.Tensor]:
        side = min(image_list.tensors.shape[-2:])
        if side != self.side:
            self.sizes = (tuple(f * side for f in self.fractions),)
            self.cell_anchors = [self.generate_anchors(s, a) for s, a in zip(self.sizes, self.aspect_ratios)]
            self.side = side
        return super().forward(image_list, feature_maps)


class BatchOnly(GeneralizedRCNNTransform):
    """torchvision's detection transform without its resizing and normalisation: cnnbench's loaders
    hand over normalised images at the run's size. It still pads a batch to a multiple of 32 px."""

    def __init__(self, channels: int):
        super().__init__(min_size=1, max_size=1 << 16, image_mean=[0.0] * channels, image_std=[1.0] * channels)

    def resize(self, image, target=None):
        return image, target

    def normalize(self, image):
        return image


def backbone_of(name: str, in_channels: int) -> Tuple[nn.Module, int, int, int]:
    """The zoo network `name` cut where the paper's detector takes its features: (module, channels,
    stride, head width). vgg16: conv5_3 + ReLU (stride 16, 512 maps; the paper's); resnet50: up to
    conv4_x (stride 16, 1024 maps; He et al. 2016's Faster R-CNN takes conv4 for RoI pooling);
    mobilenet_v2: all its convolutions (stride 32, 1280 maps). Head width: the two fc layers, 4096
    as VGG-16's fc6/fc7, 1024 for the lighter backbones."""
    if name == "vgg16":
        net = create_model("vgg16", num_classes=1, in_channels=in_channels)
        return net.features[:30], 512, 16, 4096  # without pool5: RoI pooling takes its place
    if name == "resnet50":
        net = create_model("resnet50", num_classes=1, in_channels=in_channels)
        body = nn.Sequential(net.conv1, net.bn1, net.relu, net.maxpool, net.layer1, net.layer2, net.layer3)
        return body, 1024, 16, 1024
    if name == "mobilenet_v2":
        net = create_model("mobilenet_v2", num_classes=1, in_channels=in_channels)
        return net.features, 1280, 32, 1024
    raise ValueError(f"backbone must be vgg16, resnet50 or mobilenet_v2, not {name!r}")


class Backbone(nn.Sequential):
    """A zoo backbone with the `out_channels` torchvision's detectors read."""

    def __init__(self, body: nn.Module, out_channels: int):
        super().__init__(*body) if isinstance(body, nn.Sequential) else super().__init__(body)
        self.out_channels = out_channels


# --- network -------------------------------------------------------------------------------------

class FasterRCNN(TorchvisionFasterRCNN):
    """Faster R-CNN (Fig. 2) on a zoo backbone. Training: model(images: list of (C, H, W),
    targets: list of {"boxes": (n, 4) x1y1x2y2 px, "labels": (n,) 1..num_classes}) -> {loss name:
    loss}: the RPN's objectness and box losses and the detection head's classification and box
    losses (the paper's 4-step alternating training replaced by joint training, section 3.2's
    "approximate joint training", as torchvision does). Evaluation: model(images) -> list of
    {"boxes", "labels", "scores"} per image, after per-class NMS (IoU 0.3, the released code's)."""

    def __init__(self, num_classes: int = 20, in_channels: int = 3, backbone: str = "vgg16",
                 anchor_sizes: Sequence[float] = ANCHOR_SIZES, anchor_ratios: Sequence[float] = ANCHOR_RATIOS,
                 proposals: int = 300):
        body, channels, stride, width = backbone_of(backbone, in_channels)
        if proposals < 1:
            raise ValueError(f"proposals must be 1 or more (the paper keeps 300 in testing), not {proposals}")
        anchors = RelativeAnchors(anchor_sizes, anchor_ratios)
        super().__init__(
            Backbone(body, channels), num_classes=None, rpn_anchor_generator=anchors,
            rpn_pre_nms_top_n_train=12000, rpn_post_nms_top_n_train=2000,  # section 3.3
            rpn_pre_nms_top_n_test=6000, rpn_post_nms_top_n_test=proposals,
            box_roi_pool=RoIPool(stride, 7),
            box_head=TwoMLPHead(channels * 7 * 7, width),
            box_predictor=FastRCNNPredictor(width, num_classes + 1),  # + 1: the background
            box_nms_thresh=NMS)
        self.transform = BatchOnly(in_channels)
        self.stride = stride
        # Proposals per image in evaluation, for the record (tasks/detection.py); one CNN pass per image
        self.tally = self.rpn.tally = Tally(proposals=True)
        self.proposal_source = "rpn"  # for the MACs' note (tasks/detection.py)
        self.rpn.register_forward_hook(_count_proposals)
        # The layers whose shapes follow the classes (models/weights.py)
        self.head_layers = ["roi_heads.box_predictor"]


def _count_proposals(rpn: nn.Module, inputs, output) -> None:
    if not rpn.training:
        rpn.tally.count_proposals(output[0])  # output: (proposals per image, losses)


def _min_size(backbone: str = "vgg16", **_) -> int:
    # the feature map needs a cell: one stride (32 px for MobileNet v2); VGG-16's 4 pools need 16
    return 32 if backbone == "mobilenet_v2" else 16


@register_model("faster_rcnn", family="faster_rcnn", year=2015, min_size=_min_size, default_input=(3, 600, 600),
                default_classes=20, task="detection",
                paper="Ren, He, Girshick & Sun, Faster R-CNN: Towards Real-Time Object Detection with Region "
                      "Proposal Networks")
def faster_rcnn(num_classes: int = 20, in_channels: int = 3, backbone: str = "vgg16",
                anchor_sizes: Optional[Sequence[float]] = None, anchor_ratios: Optional[Sequence[float]] = None,
                proposals: int = 300) -> FasterRCNN:
    """Faster R-CNN with the paper's VGG-16 (or backbone=resnet50 | mobilenet_v2); anchor_sizes as
    fractions of the image's shorter side, anchor_ratios height / width; proposals kept per image
    in evaluation. Defaults: PASCAL VOC's 20 classes at ~600 px, as the paper's Table 2."""
    return FasterRCNN(num_classes, in_channels, backbone, tuple(anchor_sizes or ANCHOR_SIZES),
                      tuple(anchor_ratios or ANCHOR_RATIOS), proposals)
