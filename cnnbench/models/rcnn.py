"""R-CNN and Fast R-CNN: detection on Selective Search's proposals, the two steps before Faster R-CNN.

R-CNN: Girshick, Donahue, Darrell & Malik 2014, "Rich feature hierarchies for accurate object
detection and semantic segmentation" (CVPR 2014, arXiv:1311.2524), Fig. 1 and section 2. About
2,000 Selective Search proposals per image; each is dilated so that 16 px of context surround it
at the warped size, warped to the CNN's input (227 x 227 for AlexNet, the aspect ratio lost),
and run through the whole CNN: one CNN pass per proposal. Its fc7 features are classified and
its box regressed. Here:
- one softmax over the classes + background and a per-class box regression on the fc7 features,
  trained end to end with the CNN (torchvision's RoI heads), where the paper trains per-class
  linear SVMs on frozen features after fine-tuning and regresses boxes from pool5 (section 2.3,
  Appendix C). Appendix B reports the softmax 50.9% mAP against the SVMs' 54.2% on VOC 2007: a
  cost of the choice, taken for one training stage instead of three;
- fine-tuning samples 16 proposals per image, a quarter of them foreground (IoU >= 0.5 with a
  box, the paper's rule; the rest background): at batch 8 (the rcnn_family experiment's) the
  paper's 128-window mini-batch of 32 foreground + 96 background (section 2.3), which it draws
  from all images of the batch. Every window is a whole CNN pass kept for backward: 64 a image
  at batch 8 took 24 GB of a CPU's memory with MobileNet v2 at 224 px;
- the CNN is any zoo classifier (`model.backbone`: alexnet, the paper's, by default), its last
  layer removed; `model.warp` px (the classifier's own input size by default: 227 for AlexNet).

Fast R-CNN: Girshick 2015, "Fast R-CNN" (ICCV 2015, arXiv:1504.08083), Fig. 1 and section 2. The
same proposals, but one CNN pass per image: each proposal is cut out of the last convolutional
feature map by RoI max pooling to 7 x 7 (section 2.1), then two fc layers feed a softmax over the
classes + background and per-class box regression, trained jointly with a multi-task loss
(section 2.3; 64 RoIs per image, 25% foreground). The head is Faster R-CNN's (models/
faster_rcnn.py) on the same zoo backbones (vgg16, the paper's, resnet50, mobilenet_v2), so that
Fast and Faster R-CNN differ only in where the proposals come from. Background: IoU < 0.5, as
torchvision's heads take it (the paper: [0.1, 0.5), lower ones unused).

Both find proposals on the CPU, image by image (models/proposals.py), and both report what their
evaluation costs (Tally): proposals per image, CNN passes per image, and the seconds of the
search. Classes: num_classes object classes; the background is the network's extra output 0.
"""

from typing import List, NamedTuple, Optional, Tuple

import torch
import torch.nn as nn
from torchvision.models.detection import FasterRCNN as TorchvisionFasterRCNN
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, roi_align

from cnnbench.errors import CnnbenchError
from cnnbench.models import weights
from cnnbench.models.faster_rcnn import NMS, Backbone, BatchOnly, RoIPool, backbone_of
from cnnbench.models.proposals import SelectiveSearch, Tally
from cnnbench.models.registry import create_model, get_model_info, register_model

ROIS_PER_IMAGE = 64  # Fast R-CNN section 2.3: mini-batches of 2 images x 64 RoIs, 25% foreground
WINDOWS_PER_IMAGE = 16  # R-CNN section 2.3: 128 windows a step (32 + 96), here at batch 8
FOREGROUND = 0.25
CONTEXT = 16  # R-CNN Appendix A: px of the 227 px warped image around the proposal ("p = 16")
CHUNK = 256  # R-CNN in evaluation: warped proposals through the CNN this many at a time (memory)


def _detector(backbone: nn.Module, box_roi_pool: nn.Module, box_head: nn.Module, features: int, num_classes: int,
              in_channels: int, search: str, proposals: int, tally: Tally, rois: int) -> TorchvisionFasterRCNN:
    """torchvision's two-stage detector with Selective Search in the RPN's place."""
    model = TorchvisionFasterRCNN(
        backbone, num_classes=None, box_roi_pool=box_roi_pool, box_head=box_head,
        box_predictor=FastRCNNPredictor(features, num_classes + 1),  # + 1: the background
        box_batch_size_per_image=rois, box_positive_fraction=FOREGROUND, box_nms_thresh=NMS)
    model.rpn = SelectiveSearch(search, proposals, tally)
    model.proposal_source = "selective_search"  # for the MACs' note (tasks/detection.py)
    model.transform = BatchOnly(in_channels)
    model.tally = tally
    model.head_layers = ["roi_heads.box_predictor"]  # the layer whose shapes follow the classes (weights.py)
    return model


# --- Fast R-CNN ----------------------------------------------------------------------------------

@register_model("fast_rcnn", family="rcnn", year=2015, min_size=lambda backbone="vgg16", **_: 32 if backbone ==
                "mobilenet_v2" else 16, default_input=(3, 600, 600), default_classes=20, task="detection",
                paper="Girshick, Fast R-CNN")
def fast_rcnn(num_classes: int = 20, in_channels: int = 3, backbone: str = "vgg16", search: str = "fast",
              proposals: int = 2000) -> TorchvisionFasterRCNN:
    """Fast R-CNN: one pass of the backbone (vgg16: conv5_3, as the paper; resnet50; mobilenet_v2)
    per image, RoI max pooling (7 x 7) of each of the first `proposals` Selective Search boxes
    (search: fast | quality), two fc layers (4096 for VGG-16, 1024 otherwise), a softmax over
    num_classes + 1 and per-class boxes. Training: model(images, targets) -> {"loss_classifier",
    "loss_box_reg"}; evaluation: model(images) -> list of {"boxes", "labels", "scores"} after
    per-class NMS (IoU 0.3, the released test code's). Defaults: VOC's 20 classes at ~600 px
    (Table 1)."""
    body, channels, stride, width = backbone_of(backbone, in_channels)
    tally = Tally(proposals=True, search=True)  # one CNN pass per image
    return _detector(Backbone(body, channels), RoIPool(stride, 7), TwoMLPHead(channels * 7 * 7, width), width,
                     num_classes, in_channels, search, proposals, tally, ROIS_PER_IMAGE)


# --- R-CNN ---------------------------------------------------------------------------------------

class Pixels(nn.Identity):
    """R-CNN's "backbone": none. The RoI head reads the image itself (features {"0": images})."""

    def __init__(self, channels: int):
        super().__init__()
        self.out_channels = channels


class Crops(NamedTuple):
    """The proposals to warp, not yet warped: images (B, C, H, W) and rois (R, 5) [image index, x1,
    y1, x2, y2] px, already dilated for context. WarpedCNN warps them a chunk at a time."""

    images: torch.Tensor
    rois: torch.Tensor
    size: int

    def warped(self, rows: slice = slice(None)) -> torch.Tensor:
        """rows of the proposals cut out and resampled (bilinear) to size x size: (r, C, size, size)."""
        return roi_align(self.images, self.rois[rows], (self.size, self.size), spatial_scale=1.0, sampling_ratio=2,
                         aligned=True)


class Warp(MultiScaleRoIAlign):
    """R-CNN's warp (section 2.1, Appendix A): each proposal (x1, y1, x2, y2 px) dilated so that
    `context` px of the warped size surround it (p = 16 of 227 px in the paper: here 16 x size /
    227, the same share at any warp size), then cut out of the image and resampled (bilinear,
    torchvision.ops.roi_align) to size x size, whatever its aspect ratio. Image outside the image
    reads 0, the mean of a normalised image: the paper pads with the image mean too.
    features {"0": (B, C, H, W)} -> Crops for R proposals, warped by WarpedCNN a chunk at a time
    (2,000 proposals of 128 images at 227 px would hold 158 GB at once). Counts, in evaluation,
    one CNN pass per proposal. A MultiScaleRoIAlign by type only (torchvision's FasterRCNN asks)."""

    def __init__(self, size: int, tally: Optional[Tally] = None):
        super().__init__(["0"], size, sampling_ratio=2)
        self.size, self.tally = size, tally
        self.context = CONTEXT * size / 227

    def forward(self, x, boxes: List[torch.Tensor], image_shapes: List[Tuple[int, int]]) -> Crops:
        if not self.training and self.tally is not None:
            self.tally.cnn_passes += sum(len(b) for b in boxes)
        grow = self.size / (self.size - 2 * self.context)  # box side / what the box keeps of the warped side
        rois = []
        for i, b in enumerate(boxes):
            centre, half = (b[:, :2] + b[:, 2:]) / 2, (b[:, 2:] - b[:, :2]) * (grow / 2)
            rois.append(torch.cat([torch.full_like(b[:, :1], i), centre - half, centre + half], 1))
        return Crops(x["0"], torch.cat(rois) if rois else x["0"].new_zeros(0, 5), self.size)


class WarpedCNN(nn.Module):
    """The zoo classifier `name` without its last layer (and without auxiliary classifiers:
    GoogLeNet's): Crops of R proposals -> (R, out_features) features (AlexNet's fc7: 4096), each
    proposal warped to size x size px and run through the whole network. In evaluation CHUNK
    proposals at a time are warped and run, to bound the memory."""

    def __init__(self, name: str, in_channels: int, size: int):
        super().__init__()
        info = get_model_info(name)
        if info.task != "classification" or info.external:
            raise CnnbenchError(
                f"R-CNN runs a zoo classifier on each warped proposal; model.backbone={name} is "
                f"{'not one of the zoo' if info.external else 'a ' + info.task + ' network'}. Choose a classifier "
                f"(alexnet, the paper's; vgg16, resnet50, mobilenet_v2, lenet5, ...: `cnnbench models`).")
        smallest = info.min_input(in_channels)
        if size < smallest or (info.max_size is not None and size > info.max_size):
            raise CnnbenchError(
                f"R-CNN warps each proposal to model.warp={size} px, but {name} takes {smallest}"
                f"{'' if info.max_size is None else f'-{info.max_size}'} px. Set model.warp to a size {name} takes "
                f"(its own: {info.default_input[1]} px), or choose another model.backbone.")

        extra = {"aux_logits": False} if "aux_logits" in info.options else {}  # their outputs would go unused

        def build():
            return create_model(name, num_classes=1, in_channels=in_channels, **extra)

        last = weights.final_layers(build, (in_channels, size, size))[0]
        self.net = build()
        self.net.set_submodule(last, nn.Identity())
        with torch.device("meta"):
            probe = build()
            probe.set_submodule(last, nn.Identity())
            self.out_features = self._features(probe.eval(), torch.empty(1, in_channels, size, size)).shape[1]

    @staticmethod
    def _features(net: nn.Module, x: torch.Tensor) -> torch.Tensor:
        out = net(x)
        return (out[0] if isinstance(out, tuple) else out).flatten(1)  # GoogLeNet in training: (scores, aux)

    def forward(self, crops: Crops) -> torch.Tensor:
        rows = len(crops.rois)
        if self.training or rows <= CHUNK:
            return self._features(self.net, crops.warped())
        return torch.cat([self._features(self.net, crops.warped(slice(i, i + CHUNK))) for i in range(0, rows, CHUNK)])


@register_model("rcnn", family="rcnn", year=2014, min_size=16, default_input=(3, 500, 500), default_classes=20,
                task="detection",
                paper="Girshick, Donahue, Darrell & Malik, Rich feature hierarchies for accurate object detection "
                      "and semantic segmentation")
def rcnn(num_classes: int = 20, in_channels: int = 3, backbone: str = "alexnet", warp: Optional[int] = None,
         search: str = "fast", proposals: int = 2000) -> TorchvisionFasterRCNN:
    """R-CNN: the first `proposals` Selective Search boxes (search: fast | quality) of each image,
    each warped to `warp` px (default: the backbone's own input size, 227 for AlexNet) with 16 px
    of context, each through the zoo classifier `backbone` (its last layer removed), a softmax over
    num_classes + 1 and per-class boxes on its features. Training: model(images, targets) ->
    {"loss_classifier", "loss_box_reg"}; evaluation: model(images) -> list of {"boxes", "labels",
    "scores"} after per-class NMS (IoU 0.3, the released test code's). Defaults: VOC's 20 classes,
    ~500 px images."""
    size = get_model_info(backbone).default_input[1] if warp is None else warp
    if size < 8:
        raise ValueError(f"warp must be 8 px or more (the paper's: 227), not {size}")
    tally = Tally(proposals=True, passes=True, search=True)
    head = WarpedCNN(backbone, in_channels, size)
    return _detector(Pixels(in_channels), Warp(size, tally), head, head.out_features, num_classes,
                     in_channels, search, proposals, tally, WINDOWS_PER_IMAGE)
