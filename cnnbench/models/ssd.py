"""SSD: Liu, Anguelov, Erhan, Szegedy, Reed, Fu & Berg 2016, "SSD: Single Shot MultiBox Detector"
(ECCV 2016, arXiv:1512.02325), Fig. 2 and section 2.

One pass, no proposals: VGG-16 (pool5 made 3x3 stride 1, fc6 and fc7 turned into a dilated 3x3
conv6 and a 1x1 conv7, section 3) then extra layers that halve the map, and a 3x3 convolution on
each of six feature maps (conv4_3, L2-normalised with a learnt scale, conv7, conv8_2 ... conv11_2:
38, 19, 10, 5, 3 and 1 cells at 300 px) scores every default box for the K + 1 classes and
regresses its offsets. Early, large maps see small objects; late, small ones large objects.

Built from torchvision's ssd300_vgg16 (its layout: 35,641,826 parameters at 91 outputs), with:
- Default boxes: 4 or 6 a cell (aspect ratios 1, 2, 1/2 and 3, 1/3 on conv7 ... conv9_2), 8,732
  at 300 px (section 2.2's count). Scales are torchvision's (0.07 ... 1.05 of the image, the
  authors' COCO setting; the paper's VOC setting is 0.1 on conv4_3, then 0.2 ... 0.9). Centres at
  ((i + 0.5) / |f_k|, (j + 0.5) / |f_k|) of each map, the paper's formula, where torchvision puts
  them every 8, 16, 32, 64, 100, 300 px (the Caffe release's steps, right only at 300 px): here
  they follow the input's size.
- Matching and loss: a default box is positive at IoU > 0.5 with a box (and each box's best box
  is positive), smooth L1 on the offsets, softmax cross-entropy on the classes, the negatives with
  the highest loss kept at 3:1 to the positives (hard negative mining, section 2.2).
- Images are not resized to 300 px nor renormalised (cnnbench's loaders hand over normalised
  images at the run's size), nor padded: the transform only batches.
- in_channels != 3: the first convolution takes in_channels maps (freshly initialised).
Classes: num_classes object classes; the network has num_classes + 1 outputs, the extra one
(output 0) the background, as the paper's c + 1. So num_classes=90 is torchvision's 91.
"""

import torch.nn as nn
from torchvision.models.detection.ssd import SSD, ssd300_vgg16
from torchvision.models.detection.anchor_utils import DefaultBoxGenerator

from cnnbench.models.faster_rcnn import BatchOnly
from cnnbench.models.registry import register_model

ASPECT_RATIOS = [[2], [2, 3], [2, 3], [2, 3], [2], [2]]  # per map: {1, 2, 1/2} or {1, 2, 1/2, 3, 1/3}
SCALES = [0.07, 0.15, 0.33, 0.51, 0.69, 0.87, 1.05]  # box side / image side per map (+ one for s'_k)


@register_model("ssd300", family="ssd", year=2016, min_size=268, default_input=(3, 300, 300), default_classes=20,
                task="detection",
                paper="Liu, Anguelov, Erhan, Szegedy, Reed, Fu & Berg, SSD: Single Shot MultiBox Detector")
def ssd300(num_classes: int = 20, in_channels: int = 3) -> SSD:
    """SSD300 (VGG-16 base, six feature maps, 8,732 default boxes at 300 px). num_classes counts
    the objects only: the network scores num_classes + 1 (the background). Defaults: PASCAL VOC's
    20 classes at 300 px, as the paper's Table 1. The smallest input is 268 px: conv11_2, an
    unpadded 3x3 convolution, needs a 3 x 3 conv10_2 map. Training: model(images, targets) ->
    {"classification", "bbox_regression"}; evaluation: model(images) -> list of {"boxes",
    "labels" (1..num_classes), "scores"}."""
    model = ssd300_vgg16(weights=None, weights_backbone=None, num_classes=num_classes + 1)  # + 1: background
    model.anchor_generator = DefaultBoxGenerator(ASPECT_RATIOS, scales=SCALES)  # no steps: centres follow the maps
    model.transform = BatchOnly(in_channels)
    model.transform.size_divisible = 1  # as torchvision's SSD: no padding, the maps are the input's
    if in_channels != 3:
        model.backbone.features[0] = nn.Conv2d(in_channels, 64, kernel_size=3, padding=1)
    # The layers whose shapes follow the classes, and the box offsets beside them (models/weights.py)
    model.head_layers = ["head.classification_head", "head.regression_head"]
    return model
