"""YOLO v1: Redmon, Divvala, Girshick & Farhadi 2016, "You Only Look Once: Unified, Real-Time Object
Detection" (CVPR 2016, arXiv:1506.02640), Fig. 2-3 and section 2.

Detection as one regression: the image is divided into an S x S grid, and for each cell one
network pass predicts B boxes (x, y, sqrt w, sqrt h and a confidence, Pr(Object) * IoU) and C
class probabilities Pr(Class_i | Object), an S x S x (B * 5 + C) tensor (section 2, Fig. 2). The
network (section 2.1, Fig. 3): 24 convolutional layers, alternating 1x1 reductions and 3x3
convolutions after GoogLeNet, then two fully connected layers; S = 7, B = 2, C = 20 on PASCAL VOC
at 448 px.

Training (section 2.2, equation 3): the cell holding an object's centre is responsible for it, and
of its B predictors the one whose box has the highest IoU with the truth; sum-squared error on
x, y (offsets within the cell) and sqrt w, sqrt h (fractions of the image: square roots so that
an error weighs more on a small box), weighted lambda_coord = 5; the responsible predictor's
confidence regressed to its IoU, every other predictor's to 0 weighted lambda_noobj = 0.5; the
class probabilities of cells holding an object to the one-hot class.
Testing (section 2): each box's class-specific score, Pr(Class_i | Object) * confidence.

Limitations the paper states (section 2.4): each cell predicts only two boxes and one class, so
nearby objects (a flock of birds) are missed; boxes are read from coarse features after many
down-samplings; the loss weighs an error in a small box nearly as much as in a large one.

Choices, each the paper's unless said:
- No BatchNorm: v1 has none (YOLOv2, Redmon & Farhadi 2017, added it); convolutions have biases,
  leaky ReLU 0.1 after every layer but the last, which is linear; dropout 0.5 after the first
  fully connected layer (section 2.2).
- Trained from scratch: the paper pretrains the first 20 convolutions on ImageNet at 224 px
  (section 2.2). Without pretraining or normalisation, each layer's scale comes from its
  initialisation: He et al. 2015's fan-in rule for the leaky slope.
- Other input sizes: the paper's six halvings (the 7x7 convolution's and the last-but-two 3x3's
  stride 2, four max-pools) take 448 px to 7 x 7. At another size each halving is applied only
  while the map stays at least S cells (else stride 1 / no pool), then an adaptive average pool
  makes the map S x S (the identity at 448 px), so the first fully connected layer takes S * S *
  1024 inputs whatever the size, and the parameters depend only on S, B and C. A run's grid
  follows its input size where model.grid is null (grid_for(size): the paper's 7 from 112 px, one
  cell per 16 px below; run.resolve writes it into the config); the builder's own default is 7.
- Responsible predictor: highest IoU; where every one has IoU 0 (early in training) the one whose
  (x, y, w, h) is nearest the truth, as the authors' darknet release does (detection_layer.c).
- Two object centres in one cell: the larger box (area) is kept, the other is not learnt: the
  grid's one class per cell limit. Ties: the first listed.
- The outputs are linear, as the paper's; at test time the class probabilities and confidences
  are clamped to [0, 1] before their product (two negatives would make a positive score), and
  sqrt w, sqrt h clamped to >= 0 before squaring. Every class of every box is a candidate,
  as the paper's class-specific scores; NMS per class.
- Images are not resized to 448 px: the run's input size is the detector's.
Classes: num_classes object classes; no background class (YOLO has none: a box's confidence says
whether it holds an object).
"""

from typing import Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.ops import batched_nms

from cnnbench.models.registry import register_model

GRID = 7  # S: the paper's grid at 448 px (section 2)
BOXES = 2  # B: boxes per cell (section 2)
LAMBDA_COORD = 5.0  # weight of the box coordinates' errors (section 2.2)
LAMBDA_NOOBJ = 0.5  # weight of the confidence errors of predictors not responsible for an object (section 2.2)
LEAKY = 0.1  # slope of the leaky ReLU below 0 (section 2.2, equation 2)
SCORE_THRESH = 0.005  # evaluation: class scores kept from here: COCO AP only rises with low-score boxes added
NMS_IOU = 0.5  # evaluation: per-class non-maximum suppression (section 2.3: it adds 2-3% mAP)
DETECTIONS = 100  # evaluation: boxes kept per image, COCO's maxDets

# Fig. 3, top to bottom: (kernel, channels, stride) for a convolution, "M" a 2x2 max-pool of stride 2
LAYERS = [(7, 64, 2), "M",
          (3, 192, 1), "M",
          (1, 128, 1), (3, 256, 1), (1, 256, 1), (3, 512, 1), "M",
          *[(1, 256, 1), (3, 512, 1)] * 4, (1, 512, 1), (3, 1024, 1), "M",
          *[(1, 512, 1), (3, 1024, 1)] * 2, (3, 1024, 1), (3, 1024, 2),
          (3, 1024, 1), (3, 1024, 1)]
HIDDEN = 4096  # the first fully connected layer's outputs


def grid_for(size: int) -> int:
    """The grid S for a size px canvas: the paper's 7 from 112 px (each cell 16 px or more), and
    below it one cell per 16 px, at least 2 (64 px -> 4, 96 px -> 6). Why: a 7 x 7 grid on a
    small canvas leaves cells of a few pixels, too small to hold an object's centre usefully, and
    more cells than the halvings can reach (see YOLOv1.forward_features)."""
    return GRID if size >= 112 else max(2, size // 16)


# --- parts ---------------------------------------------------------------------------------------

def _halved(n: int, conv: bool) -> int:
    # a stride-2 convolution padded k // 2 gives ceil(n / 2), a 2x2 pool floor(n / 2)
    return (n + 1) // 2 if conv else n // 2


class Conv(nn.Conv2d):
    """A k x k convolution padded to keep the size (Fig. 3). With stride 2 it halves the map along
    each side only where the result keeps at least `grid` cells; otherwise stride 1 on that side.
    (N, C, H, W) -> (N, channels, H', W')."""

    def __init__(self, in_channels: int, channels: int, kernel: int, stride: int, grid: int):
        super().__init__(in_channels, channels, kernel, stride, padding=kernel // 2)
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.stride == (1, 1):
            return super().forward(x)
        stride = tuple(2 if _halved(n, True) >= self.grid else 1 for n in x.shape[-2:])
        return F.conv2d(x, self.weight, self.bias, stride, self.padding)


class Pool(nn.Module):
    """2x2 max-pool of stride 2 (Fig. 3), skipped along a side where it would leave fewer than
    `grid` cells. (N, C, H, W) -> (N, C, H', W')."""

    def __init__(self, grid: int):
        super().__init__()
        self.grid = grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        kernel = tuple(2 if _halved(n, False) >= self.grid else 1 for n in x.shape[-2:])
        return x if kernel == (1, 1) else F.max_pool2d(x, kernel, kernel)


def _scaled(channels: int, width: float) -> int:
    return max(1, round(channels * width))


def features(in_channels: int, grid: int, width: float = 1.0) -> Tuple[nn.Sequential, int]:
    """Fig. 3's 24 convolutions (each followed by a leaky ReLU) and 4 max-pools, with width times
    the paper's channels: (module, channels out)."""
    layers: List[nn.Module] = []
    for v in LAYERS:
        if v == "M":
            layers.append(Pool(grid))
        else:
            kernel, channels, stride = v
            channels = _scaled(channels, width)
            layers += [Conv(in_channels, channels, kernel, stride, grid), nn.LeakyReLU(LEAKY, inplace=True)]
            in_channels = channels
    return nn.Sequential(*layers), in_channels


def box_iou_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU of boxes paired element by element: a, b (..., 4) x1y1x2y2 (broadcast) -> (...). 0 where
    both boxes are empty (no 0 / 0)."""
    inter = (torch.minimum(a[..., 2:], b[..., 2:]) - torch.maximum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    union = (a[..., 2:] - a[..., :2]).prod(-1) + (b[..., 2:] - b[..., :2]).prod(-1) - inter
    return inter / union.clamp(min=1e-12)


def boxes_scale(w: int, h: int, device) -> torch.Tensor:
    """(4,) [W, H, W, H]: px to fractions of the image and back."""
    return torch.tensor([w, h, w, h], dtype=torch.float32, device=device)


def _centre_size(boxes: torch.Tensor) -> torch.Tensor:
    # x1y1x2y2 -> [centre x, centre y, w, h]
    return torch.cat([(boxes[..., :2] + boxes[..., 2:]) / 2, boxes[..., 2:] - boxes[..., :2]], -1)


def decode(boxes: torch.Tensor) -> torch.Tensor:
    """The network's boxes to x1y1x2y2 fractions of the image: boxes (N, S, S, B, 4) [x, y,
    sqrt w, sqrt h], x and y the centre's offset in its cell (row i, column j of the grid: the
    tensor's dims 1 and 2) in cells, w and h fractions of the image -> (N, S, S, B, 4)."""
    s = boxes.shape[1]
    cells = torch.arange(s, device=boxes.device, dtype=boxes.dtype)
    cx = (boxes[..., 0] + cells[None, None, :, None]) / s  # column j: along dim 2
    cy = (boxes[..., 1] + cells[None, :, None, None]) / s  # row i: along dim 1
    w, h = boxes[..., 2].clamp(min=0).square(), boxes[..., 3].clamp(min=0).square()
    return torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], -1)


def encode_targets(targets: Sequence[Dict[str, torch.Tensor]], grid: int, num_classes: int,
                   size: Tuple[int, int]) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The truth on the grid, one object per cell (the larger where centres share a cell).
    targets: per image {"boxes": (n, 4) x1y1x2y2 px, "labels": (n,) 1..num_classes}; size (H, W)
    px. Returns, for N images: obj (N, S, S) 1.0 where a cell holds an object's centre; coords (N,
    S, S, 4) [x, y, sqrt w, sqrt h] as the network predicts them; boxes (N, S, S, 4) x1y1x2y2
    fractions of the image; classes (N, S, S, C) one-hot. Zeros elsewhere."""
    n, s = len(targets), grid
    device = targets[0]["boxes"].device if n else torch.device("cpu")
    h, w = size
    boxes = torch.cat([t["boxes"].reshape(-1, 4) for t in targets]).float() / boxes_scale(w, h, device)  # (M, 4)
    labels = torch.cat([t["labels"].reshape(-1) for t in targets]).long() - 1  # 0..C-1
    counts = [len(t["labels"]) for t in targets]
    image = torch.repeat_interleave(torch.arange(n, device=device), torch.tensor(counts, device=device),
                                    output_size=sum(counts))  # (M,) the image of each object
    centre, sides = (boxes[:, :2] + boxes[:, 2:]) / 2, (boxes[:, 2:] - boxes[:, :2]).clamp(min=0)  # (M, 2) each
    col_row = (centre * s).floor().clamp(0, s - 1).long()  # the cell holding the centre
    cell = (image * s + col_row[:, 1]) * s + col_row[:, 0]  # (M,) into the N * S * S cells

    # One object per cell: the largest, then the first listed. Scatter reductions, no loop.
    area, index = sides.prod(1), torch.arange(len(boxes), device=device)
    largest = torch.full((n * s * s,), -1.0, device=device).scatter_reduce(0, cell, area, "amax")
    first = torch.full((n * s * s,), len(boxes), device=device).scatter_reduce(
        0, cell, torch.where(area == largest[cell], index, len(boxes)), "amin")
    kept = first[cell] == index
    cell, labels = cell[kept], labels[kept]

    obj = torch.zeros(n * s * s, device=device)
    obj[cell] = 1.0
    coords = torch.zeros(n * s * s, 4, device=device)
    coords[cell] = torch.cat([centre[kept] * s - col_row[kept], sides[kept].sqrt()], 1)
    truth = torch.zeros(n * s * s, 4, device=device)
    truth[cell] = boxes[kept]
    classes = torch.zeros(n * s * s, num_classes, device=device)
    classes[cell, labels] = 1.0
    return obj.view(n, s, s), coords.view(n, s, s, 4), truth.view(n, s, s, 4), classes.view(n, s, s, num_classes)


def yolo_loss(out: torch.Tensor, targets: Sequence[Dict[str, torch.Tensor]], boxes: int, num_classes: int,
              size: Tuple[int, int]) -> Dict[str, torch.Tensor]:
    """Equation 3 of section 2.2, summed over the cells and predictors and divided by the images.
    out (N, S, S, B * 5 + C): per cell B x [x, y, sqrt w, sqrt h, confidence], then C class
    probabilities; targets as encode_targets'. Returns {"loss_coord", "loss_obj", "loss_noobj",
    "loss_class"}, each a scalar; an image without objects has only noobj terms."""
    n, s = out.shape[:2]
    obj, coords, truth, classes = encode_targets(targets, s, num_classes, size)
    pred = out[..., :boxes * 5].reshape(n, s, s, boxes, 5)  # (N, S, S, B, 5)
    probs = out[..., boxes * 5:]  # (N, S, S, C)

    with torch.no_grad():  # which predictor answers for the object, and its confidence target
        predicted = decode(pred[..., :4])  # (N, S, S, B, 4) fractions
        iou = box_iou_pairs(predicted, truth[..., None, :])  # (N, S, S, B)
        distance = (_centre_size(predicted) - _centre_size(truth)[..., None, :]).square().sum(-1)  # darknet: RMSE
        best = torch.where(iou.amax(-1) > 0, iou.argmax(-1), distance.argmin(-1))  # (N, S, S)
        responsible = F.one_hot(best, boxes).float() * obj[..., None]  # (N, S, S, B): 1obj_ij

    coord = (pred[..., :4] - coords[..., None, :]).square().sum(-1)  # (N, S, S, B)
    confidence = pred[..., 4]  # (N, S, S, B)
    return {
        "loss_coord": LAMBDA_COORD * (responsible * coord).sum() / n,
        "loss_obj": (responsible * (confidence - iou).square()).sum() / n,
        "loss_noobj": LAMBDA_NOOBJ * ((1 - responsible) * confidence.square()).sum() / n,
        "loss_class": (obj[..., None] * (probs - classes).square()).sum() / n,
    }


# --- network -------------------------------------------------------------------------------------

class YOLOv1(nn.Module):
    """YOLO v1 (Fig. 3). Training: model(images: list of (C, H, W) or (N, C, H, W), targets: list
    of {"boxes": (n, 4) x1y1x2y2 px, "labels": (n,) 1..num_classes}) -> {"loss_coord", "loss_obj",
    "loss_noobj", "loss_class"} (equation 3). Evaluation: model(images) -> list of {"boxes" (p, 4)
    x1y1x2y2 px, "labels" (p,) 1..num_classes, "scores" (p,)} per image, at most DETECTIONS, after
    per-class NMS. The images of a call share one size."""

    def __init__(self, num_classes: int = 20, in_channels: int = 3, grid: int = GRID, boxes: int = BOXES,
                 width: float = 1.0):
        super().__init__()
        self.num_classes, self.grid, self.boxes = num_classes, grid, boxes
        self.features, channels = features(in_channels, grid, width)
        self.pool = nn.AdaptiveAvgPool2d(grid)  # the identity at 448 px with S = 7
        hidden = _scaled(HIDDEN, width)
        self.fc1 = nn.Linear(grid * grid * channels, hidden)
        self.act = nn.LeakyReLU(LEAKY, inplace=True)
        self.dropout = nn.Dropout(0.5)  # section 2.2: after the first fully connected layer
        self.fc2 = nn.Linear(hidden, grid * grid * (boxes * 5 + num_classes))  # linear: the last layer
        self.head_layers = ["fc2"]  # the layer whose shape follows the classes (models/weights.py)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):  # He et al. 2015 for the leaky slope: no norm keeps the scale
                nn.init.kaiming_normal_(m.weight, a=LEAKY, mode="fan_in", nonlinearity="leaky_relu")
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc2.weight, 0, 0.01)  # small first predictions: confidences near 0

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        if min(x.shape[-2:]) < self.grid:  # a cell needs a pixel at least
            raise RuntimeError(f"YOLO v1 with a {self.grid} x {self.grid} grid needs inputs of at least "
                               f"{self.grid} px, not {tuple(x.shape[-2:])}")
        x = self.features(x)  # (N, 1024 width, S', S'): 448 px -> 7 x 7; each halving kept while >= S
        return self.pool(x)  # (N, 1024 width, S, S)

    def forward_head(self, x: torch.Tensor) -> torch.Tensor:
        x = self.dropout(self.act(self.fc1(torch.flatten(x, 1))))  # (N, 4096 width)
        return self.fc2(x).view(len(x), self.grid, self.grid, -1)  # (N, S, S, B * 5 + C)

    def forward(self, images: Union[torch.Tensor, Sequence[torch.Tensor]],
                targets: Optional[Sequence[Dict[str, torch.Tensor]]] = None):
        x = images if isinstance(images, torch.Tensor) else torch.stack(list(images))  # (N, C, H, W)
        out = self.forward_head(self.forward_features(x)).float()  # the loss and boxes in float32 under autocast
        if self.training:
            if targets is None:
                raise ValueError("YOLO v1 trains on targets: model(images, targets)")
            return yolo_loss(out, targets, self.boxes, self.num_classes, tuple(x.shape[-2:]))
        return self.postprocess(out, tuple(x.shape[-2:]))

    def postprocess(self, out: torch.Tensor, size: Tuple[int, int]) -> List[Dict[str, torch.Tensor]]:
        """out (N, S, S, B * 5 + C) -> per image {"boxes", "labels", "scores"}: every class of
        every box scored Pr(Class_i | Object) * confidence (section 2), boxes in px clipped to
        the image, scores from SCORE_THRESH, per-class NMS at NMS_IOU, the best DETECTIONS. On
        the meta device (shapes only: cnnbench's MAC counts) the selection, which reads values,
        is skipped and every candidate returned: it has no multiply-adds to count."""
        n, s, b, c = len(out), self.grid, self.boxes, self.num_classes
        h, w = size
        pred = out[..., :b * 5].reshape(n, s, s, b, 5)
        boxes = decode(pred[..., :4]) * boxes_scale(w, h, out.device)  # (N, S, S, B, 4) px
        boxes = torch.stack([boxes[..., 0].clamp(0, w), boxes[..., 1].clamp(0, h),
                             boxes[..., 2].clamp(0, w), boxes[..., 3].clamp(0, h)], -1)
        scores = out[..., None, b * 5:].clamp(0, 1) * pred[..., 4:5].clamp(0, 1)  # (N, S, S, B, C)
        boxes = boxes.reshape(n, -1, 1, 4).expand(-1, -1, c, -1).reshape(n, -1, 4)  # (N, S*S*B*C, 4)
        scores = scores.reshape(n, -1)  # (N, S*S*B*C): box by box, class by class
        labels = torch.arange(1, c + 1, device=out.device).repeat(s * s * b)  # (S*S*B*C,)
        if out.device.type == "meta":
            return [{"boxes": bx, "labels": labels, "scores": sc} for bx, sc in zip(boxes, scores)]
        image = torch.arange(n, device=out.device)[:, None].expand_as(scores).reshape(-1)
        boxes, scores, labels = boxes.reshape(-1, 4), scores.reshape(-1), labels.repeat(n)
        sides = boxes[:, 2:] - boxes[:, :2]
        keep = torch.nonzero((scores >= SCORE_THRESH) & (sides > 1e-2).all(1))[:, 0]  # torchvision's smallest box
        keep = keep[batched_nms(boxes[keep], scores[keep], image[keep] * c + labels[keep], NMS_IOU)]  # by score
        results = []
        for i in range(n):
            mine = keep[image[keep] == i][:DETECTIONS]
            results.append({"boxes": boxes[mine], "labels": labels[mine], "scores": scores[mine]})
        return results


# --- variants ------------------------------------------------------------------------------------

def _min_size(grid: Optional[int] = None, **_) -> int:
    # the grid's cells cover a pixel each at least: S px (7 by default)
    return grid or GRID


@register_model("yolo_v1", family="yolo", year=2016, min_size=_min_size, default_input=(3, 448, 448),
                default_classes=20, task="detection", sized_options=lambda size: {"grid": grid_for(size)},
                paper="Redmon, Divvala, Girshick & Farhadi, You Only Look Once: Unified, Real-Time Object Detection")
def yolo_v1(num_classes: int = 20, in_channels: int = 3, grid: Optional[int] = None, boxes: int = BOXES,
            width: float = 1.0) -> YOLOv1:
    """YOLO v1 (Fig. 3: 24 convolutions, 2 fully connected layers): an S x S grid (grid; None:
    the paper's 7, grid_for(size) suits small canvases) of `boxes` boxes and num_classes class
    probabilities per cell (no background class). width scales every layer's channels and the
    4096 hidden units (1.0: the paper's). Defaults: PASCAL VOC's 20 classes at 448 px, S = 7,
    B = 2, as the paper's: 271,703,550 parameters. Training: model(images, targets) ->
    {"loss_coord", "loss_obj", "loss_noobj", "loss_class"}; evaluation: model(images) -> list
    of {"boxes", "labels" (1..num_classes), "scores"}."""
    grid = GRID if grid is None else grid
    if grid < 1 or boxes < 1 or not width > 0:
        raise ValueError(f"grid={grid} and boxes={boxes} must be at least 1 and width={width} above 0")
    return YOLOv1(num_classes, in_channels, grid, boxes, width)
