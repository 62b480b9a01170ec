"""Object detection: a class and a box for every object (Girshick et al. 2014; Ren et al. 2015).

Targets are one flat float32 tensor per batch, y (M, 6), a row per object of the batch:
    [image index in the batch 0..B-1, class 0..K-1, x1, y1, x2, y2]
in pixels of the network's input, x2/y2 exclusive (a box [0, 0, 10, 10] covers 10 x 10 px); an
image without objects has no rows (the ultralytics layout: it fits an in-memory, on-device
dataset better than a list of dicts). Classes have no background class.

Detectors follow torchvision's interface (references/detection): in training
`model(images, targets) -> {loss name: loss}`, summed here; in evaluation
`model(images) -> [{"boxes", "labels", "scores"}]`, with images a list of (C, H, W) tensors and
targets a list of {"boxes": (n, 4) xyxy, "labels": (n,) int64}. torchvision keeps label 0 for
the background, so class k is label k + 1 going in (to_targets) and label l is class l - 1 coming
out (from_targets, flatten_predictions).

Figures: COCO's, computed by pycocotools (the reference every paper's table uses) over the whole
split, as fractions 0-1: mAP@[.5:.95] (the mean of AP at the IoU thresholds 0.50, 0.55, ..., 0.95,
101-point interpolated precision, over the classes with ground truth), AP50, AP75, AR@100 (recall
with at most 100 detections per image and class, averaged over the same thresholds and classes),
AP per class. There is no validation loss (CocoMeter says why).
"""

import contextlib
import copy
import io
import math
import time
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.nn as nn

from cnnbench import distributed
from cnnbench.models.proposals import Tally
from cnnbench.tasks import Meter, Task, percent

DRAW_SCORE = 0.5  # TensorBoard: predictions drawn from this score on
DRAW_SIZE = 192  # TensorBoard: px; smaller images are enlarged (nearest) so the class names stay readable


# -----------------------------------------------------------------------------
# The flat layout and torchvision's lists

def to_targets(y: torch.Tensor, batch: int) -> List[Dict[str, torch.Tensor]]:
    """y (M, 6) [image, class, x1, y1, x2, y2] -> batch dicts {"boxes": (n_i, 4) float32 xyxy,
    "labels": (n_i,) int64 = class + 1}, image by image (an image without objects: (0, 4) and (0,),
    which torchvision's detectors train on). The rows may come in any order. One host read (the
    objects per image: a list of tensors needs their sizes). Raises ValueError for an image
    index at or beyond batch."""
    image = y[:, 0].long()
    counts = torch.bincount(image, minlength=batch).tolist()  # the host read
    if len(counts) > batch:
        raise ValueError(f"a box names image {len(counts) - 1} of a batch of {batch} images")
    y = y[torch.argsort(image, stable=True)]  # image by image, each image's rows in their order
    boxes = y[:, 2:6].float()
    labels = y[:, 1].long() + 1  # torchvision: 0 is the background
    return [{"boxes": b, "labels": c} for b, c in zip(boxes.split(counts), labels.split(counts))]


def from_targets(targets: Sequence[Dict[str, torch.Tensor]], device: Optional[torch.device] = None) -> torch.Tensor:
    """The inverse of to_targets: a list of {"boxes": (n_i, 4), "labels": (n_i,)} -> y (M, 6)
    float32 [image, label - 1, x1, y1, x2, y2], image by image. device: of an empty list's y."""
    rows = [torch.cat([torch.full_like(t["labels"][:, None], i, dtype=torch.float32),
                       (t["labels"][:, None] - 1).float(), t["boxes"].float()], 1) for i, t in enumerate(targets)]
    return torch.cat(rows) if rows else torch.zeros(0, 6, device=device)


def flatten_predictions(outputs: Sequence[Dict[str, torch.Tensor]]) -> torch.Tensor:
    """An evaluation forward's list of {"boxes", "labels", "scores"} -> (P, 7) float32
    [image, class = label - 1, x1, y1, x2, y2, score], image by image; no host read."""
    rows = [torch.cat([torch.full_like(o["scores"][:, None], i, dtype=torch.float32),
                       (o["labels"][:, None] - 1).float(), o["boxes"].float(), o["scores"][:, None].float()], 1)
            for i, o in enumerate(outputs)]
    return torch.cat(rows) if rows else torch.zeros(0, 7)


def tally_of(model: nn.Module) -> Tally:
    """The model's Tally (models/proposals.py): its own where it counts proposals or CNN passes
    (R-CNN, Fast and Faster R-CNN); otherwise one given to it here, which counts images and
    seconds only (a single-shot detector: one CNN pass per image, no proposals)."""
    tally = getattr(model, "tally", None)
    if tally is None:
        tally = model.tally = Tally()
    return tally


def _synchronize(device: torch.device) -> None:
    # GPU work is queued: a clock read alone would time the queueing
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def sum_losses(losses: Dict[str, torch.Tensor]) -> torch.Tensor:
    """A detector's training output, {name: loss}, as one loss (torchvision's references sum it
    unweighted: each detector weighs its own parts)."""
    return sum(losses.values())


# -----------------------------------------------------------------------------
# COCO figures

COST_KEYS = ("inference_images_per_s", "proposals_per_image", "cnn_passes_per_image", "proposal_s_per_image",
             "network_s_per_image")  # evaluation_costs' figures
FIGURE_KEYS = ("map", "map50", "map75", "ap_small", "ap_medium", "ap_large", "mar100")
STATS = {"map": 0, "map50": 1, "map75": 2, "ap_small": 3, "ap_medium": 4, "ap_large": 5,
         "mar100": 8}  # their places in COCOeval.stats


def coco_figures(predictions: np.ndarray, truth: np.ndarray, sizes: Sequence[Tuple[int, int]],
                 names: Sequence[str]) -> Dict[str, Any]:
    """COCO's box figures by pycocotools over a split of len(sizes) images. predictions (P, 7)
    [image, class, x1, y1, x2, y2, score]; truth (G, 6) [image, class, x1, y1, x2, y2]; images
    0..N-1, sizes their (height, width) (recorded in the COCO images; COCOeval reads only the
    boxes); names the classes' names (classes beyond them are numbered; predictions of a class
    below 0 are left out). Returns {"map", "map50", "map75", "ap_small", "ap_medium", "ap_large",
    "mar100", "per_class_ap": {name: AP}, "images"}, fractions 0-1, None where COCO has no data
    (its -1): a figure without ground truth to measure, a class without objects (its false
    positives count nowhere, as in COCO)."""
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    predictions = predictions[predictions[:, 1] >= 0]
    top = int(max([-1] + [a[:, 1].max() for a in (predictions, truth) if len(a)]))
    names = list(names) + [str(c) for c in range(len(names), top + 1)]
    if not sizes:
        return {**dict.fromkeys(FIGURE_KEYS), "per_class_ap": dict.fromkeys(names), "images": 0}
    # 1-based ids: COCOeval takes a match id of 0 for "unmatched"
    dataset = {"images": [{"id": i + 1, "height": int(h), "width": int(w)} for i, (h, w) in enumerate(sizes)],
               "categories": [{"id": c + 1, "name": name} for c, name in enumerate(names)],
               "annotations": [{"id": j + 1, "image_id": int(r[0]) + 1, "category_id": int(r[1]) + 1,
                                "bbox": [r[2], r[3], r[4] - r[2], r[5] - r[3]],
                                "area": (r[4] - r[2]) * (r[5] - r[3]), "iscrowd": 0}
                               for j, r in enumerate(truth.astype(np.float64).tolist())]}
    detections = [{"image_id": int(r[0]) + 1, "category_id": int(r[1]) + 1,
                   "bbox": [r[2], r[3], r[4] - r[2], r[5] - r[3]], "score": r[6]}
                  for r in predictions.astype(np.float64).tolist()]
    with contextlib.redirect_stdout(io.StringIO()):  # pycocotools prints its progress and table
        gt = COCO()
        gt.dataset = dataset
        gt.createIndex()
        if detections:
            dt = gt.loadRes(detections)
        else:  # loadRes fails on an empty list; COCOeval scores no detections as AP 0 where there are objects
            dt = COCO()
            dt.dataset = {"images": dataset["images"], "categories": copy.deepcopy(dataset["categories"]),
                          "annotations": []}
            dt.createIndex()
        coco = COCOeval(gt, dt, "bbox")
        coco.evaluate()
        coco.accumulate()
        coco.summarize()
    precision = coco.eval["precision"]  # (IoU thresholds, recall points, classes, areas, max detections)
    per_class = {}
    for c, name in enumerate(names):
        p = precision[:, :, c, 0, -1]  # every area, 100 detections
        per_class[name] = float(p[p > -1].mean()) if (p > -1).any() else None
    figures = {k: (float(coco.stats[i]) if coco.stats[i] >= 0 else None) for k, i in STATS.items()}
    return {**figures, "per_class_ap": per_class, "images": len(sizes)}


class CocoMeter(Meter):
    """COCO mAP over a split: every prediction and true box kept on the host, scored at the end by
    pycocotools (coco_figures). Unlike the summing meters it copies to the host once per batch
    (predictions and truth in one copy): COCO matching needs every box of the split, sorted by
    score, so there is no sum to keep on the device. Under torchrun every process's boxes are
    gathered to rank 0, scored there, and the figures broadcast to all.

    No validation loss ("loss" is None): a torchvision detector computes its losses only in
    training mode, and a training-mode forward under no_grad would update BatchNorm's running
    statistics with the validation images (vision#1574) - the evaluation would change the model.

    COCO's object sizes are absolute: small under 32² px², medium 32²-96², large over 96² (box
    area). On the 48-96 px canvases of cnnbench's small runs almost every object is small and
    none can be large (a 96 px image is 96² px²), so ap_large, and often ap_medium, are None (COCO's
    -1: no objects of that size); mAP covers every size."""

    def __init__(self, num_classes: Optional[int] = None, names: Optional[List[str]] = None):
        names = list(names or [])[:num_classes] if num_classes else list(names or [])
        self.names = names + [str(i) for i in range(len(names), num_classes or 0)]  # more classes than names: numbered
        self.predictions: List[np.ndarray] = []  # (P, 7) per batch, image numbered in the split
        self.truth: List[np.ndarray] = []  # (G, 6) per batch
        self.sizes: List[Tuple[int, int]] = []  # (height, width) per image
        self.images = 0

    def update(self, outputs: Sequence[Dict[str, torch.Tensor]], target: torch.Tensor) -> None:
        """outputs: the evaluation forward's list (Detection.predict adds each image's
        "image_size"; without it an image's size is its boxes' extent); target: y (M, 6)."""
        pred = flatten_predictions(outputs)
        both = torch.cat([pred.to(target.device), nn.functional.pad(target.float(), (0, 1))]).cpu().numpy()  # the copy
        pred, truth = both[:len(pred)], both[len(pred):, :6]
        pred[:, 0] += self.images
        truth[:, 0] += self.images
        for i, o in enumerate(outputs):
            size = o.get("image_size")
            if size is None:
                boxes = np.concatenate([pred[pred[:, 0] == self.images + i, 2:6],
                                        truth[truth[:, 0] == self.images + i, 2:6]])
                size = (math.ceil(boxes[:, 3].max(initial=1)), math.ceil(boxes[:, 2].max(initial=1)))
            self.sizes.append((int(size[0]), int(size[1])))
        self.predictions.append(pred)
        self.truth.append(truth)
        self.images += len(outputs)

    def compute(self) -> Dict[str, Any]:
        mine = (_stack(self.predictions, 7), _stack(self.truth, 6), self.sizes)
        shares = distributed.gather_objects(mine)  # rank 0: every process's; None elsewhere
        figures = None
        if shares is not None:
            predictions, truth, sizes, offset = [], [], [], 0
            for p, t, s in shares:  # images numbered after the earlier processes' images
                p, t = p.copy(), t.copy()
                p[:, 0] += offset
                t[:, 0] += offset
                predictions.append(p)
                truth.append(t)
                sizes += s
                offset += len(s)
            figures = {"loss": None, **coco_figures(_stack(predictions, 7), _stack(truth, 6), sizes, self.names)}
        return distributed.broadcast(figures)


def _stack(arrays: List[np.ndarray], columns: int) -> np.ndarray:
    return np.concatenate(arrays) if arrays else np.zeros((0, columns), dtype=np.float32)


# -----------------------------------------------------------------------------
# TensorBoard images

def draw_boxes(image: torch.Tensor, truth: torch.Tensor, predictions: torch.Tensor,
               names: Optional[Sequence[str]] = None, min_score: float = DRAW_SCORE) -> torch.Tensor:
    """One image with its true boxes (green, class names) and its predictions scoring min_score
    or more (red, class name and score). image (C, H, W) uint8; truth (n, 6) and predictions
    (p, 7) in the flat layouts (their image column is not read). Enlarged (nearest) to about
    DRAW_SIZE px; a box's lines run on the first and last pixels it covers (x2/y2 exclusive).
    Returns (3, H', W') uint8 on the CPU."""
    from torchvision.utils import draw_bounding_boxes

    def name(c: float) -> str:
        c = int(c)
        return names[c] if names is not None and 0 <= c < len(names) else str(c)

    image = image.cpu()
    image = image.expand(3, -1, -1) if image.shape[0] == 1 else image[:3]
    scale = max(1, math.ceil(DRAW_SIZE / max(image.shape[-2:])))
    image = image.repeat_interleave(scale, -2).repeat_interleave(scale, -1)
    truth, predictions = truth.cpu().float(), predictions.cpu().float()
    predictions = predictions[predictions[:, 6] >= min_score]

    def pixels(boxes):  # exclusive px -> the enlarged image's first and last pixels (drawn inclusive)
        boxes = boxes * scale
        return torch.cat([boxes[:, :2], torch.maximum(boxes[:, 2:] - 1, boxes[:, :2])], 1)

    if len(truth):
        image = draw_bounding_boxes(image, pixels(truth[:, 2:6]), [name(c) for c in truth[:, 1]], colors="green")
    if len(predictions):
        labels = [f"{name(c)} {s:.2f}" for c, s in zip(predictions[:, 1], predictions[:, 6].tolist())]
        image = draw_bounding_boxes(image, pixels(predictions[:, 2:6]), labels, colors="red")
    return image


# -----------------------------------------------------------------------------
# The task

class Detection(Task):
    """Detection with torchvision-style detectors on the flat targets above. The running training
    figure is objects per image (rows of y over images: free, no host read); the loss is the sum
    of the detector's losses; label smoothing does not apply (torchvision's box losses take none)
    and is ignored."""

    name = "detection"
    score = "map"
    higher_is_better = True
    train_metric = "objects"  # objects per image in the batches trained on
    history_keys = ("map", "map50")  # no "loss": CocoMeter has none (BatchNorm, vision#1574)
    record_keys = ("map", "map50", "map75", "mar100", "per_class_ap", *COST_KEYS)
    targets = "boxes with classes"
    class_counts = "images holding it"
    max_classes = None
    figures = {"map": "mAP %",  # last epoch; COCO mAP@[.5:.95]
               "map50": "AP50 %", "map75": "AP75 %",  # AP at IoU 0.5 and 0.75
               "mar100": "AR@100 %",  # recall, at most 100 detections per image
               "best_map": "best mAP %"}
    caption = "COCO mAP, AP50, AP75, AR@100"
    columns = ("map", "map50")
    # The report's figures that are no fractions (shown as they are, not as percent), key -> header:
    # what the last evaluation cost (Girshick 2015 and Ren et al. 2015 compare detectors by test time).
    costs = {"inference_images_per_s": "inference img/s",  # the whole model(images): proposals and NMS included
             "proposals_per_image": "proposals/img",  # scored by the RoI head; None: single-shot (SSD, YOLO)
             "cnn_passes_per_image": "CNN passes/img",  # 1; R-CNN: one per proposal
             "proposal_s_per_image": "proposal s/img",  # Selective Search on the CPU; None: the network's
             "network_s_per_image": "network s/img"}  # the rest of the forward
    # In the table after the figures, each where some run has it; the others in the CSV and by --columns.
    cost_columns = ("inference_images_per_s", "proposals_per_image", "cnn_passes_per_image")
    costs_caption = ("inference img/s: the whole forward, proposals and NMS included, over the last evaluation "
                     "(its first batch left out; under torchrun, all processes together)")
    inference_speed = "inference_images_per_s"  # the score against inference ms per image: map_vs_inference_ms.png
    score_label = "mAP %"
    plot_stem = "map"
    # The report draws history keys as percentages, and the only training figure, objects per
    # image, is no fraction: both panels are validation figures, AP50 and mAP.
    curves = (("val_map50", "AP50 %"), ("val_map", "mAP %"))
    curves_file = "detection_curves.png"

    def train_step(self, model, x, y, label_smoothing: float):
        losses = model(list(x), to_targets(y, len(x)))  # {"loss_classifier": ..., "loss_box_reg": ..., ...}
        sums = x.new_full((2,), float(len(x)), dtype=torch.float32)  # fill kernels: the sizes are known on
        sums[0].fill_(float(len(y)))  # the host, so no copy from it
        return sum_losses(losses), sums

    def predict(self, model, x):
        """model(list(x)), each image's dict with its "image_size" (H, W) added for the record. In
        float32 whatever trainer.amp says: under bf16 autocast torchvision decodes the boxes in
        bf16, which steps by 2 px between 256 and 512 px and would lower AP75 and mAP. Timed: the
        whole call (proposals and NMS included; on CUDA between two synchronisations) goes into
        the model's Tally (models/proposals.py), read by evaluation_costs; the Tally as it stood
        after an evaluation's first batch is kept, to leave that batch's warm-up out."""
        size, tally = tuple(x.shape[-2:]), tally_of(model)
        _synchronize(x.device)
        t0 = time.perf_counter()
        with torch.autocast(x.device.type, enabled=False):
            outputs = model(list(x.float()))
        _synchronize(x.device)
        tally.seconds += time.perf_counter() - t0
        tally.images += len(x)
        tally.batches += 1
        if tally.batches == 1:
            tally.warm = tally.totals()
        return [{**o, "image_size": size} for o in outputs]

    def start_evaluation(self, model) -> None:
        tally_of(model).reset()

    def evaluation_costs(self, model, device: torch.device) -> Dict[str, Any]:
        """The evaluation's cost per image, from the model's Tally, over every torchrun process:
        inference_images_per_s (images over the seconds of model(images), proposals and NMS
        included; Selective Search's seconds as computing them took, even when cached: the
        slowest process's time, all processes' images); proposals_per_image (None for a
        single-shot detector); cnn_passes_per_image (1 unless the model counts them: R-CNN's one
        per proposal); proposal_s_per_image (Selective Search; None where the network proposes)
        and network_s_per_image (the rest of the forward), seconds. The first batch is left out
        where there are more (its cuDNN autotuning and lazy initialisation are no steady state),
        as the training figures leave out their first steps."""
        t = tally_of(model)
        totals = torch.tensor(t.totals(), dtype=torch.float64)
        if t.batches > 1:
            totals -= torch.tensor(t.warm, dtype=torch.float64)
        images, seconds, proposals, passes, search, search_wall = totals.tolist()
        network = max(seconds - search_wall, 0.0)
        counts = distributed.all_sum(torch.tensor([images, proposals, passes, network, search],
                                                  dtype=torch.float64, device=device)).tolist()
        slowest = distributed.all_max(torch.tensor([network + search], dtype=torch.float64, device=device)).item()
        images, proposals, passes, network, search = counts
        if not images:
            return dict.fromkeys(COST_KEYS)
        return {"inference_images_per_s": images / slowest if slowest > 0 else None,
                "proposals_per_image": None if t.proposals is None else proposals / images,
                "cnn_passes_per_image": 1.0 if t.cnn_passes is None else passes / images,
                "proposal_s_per_image": None if t.proposal_s is None else search / images,
                "network_s_per_image": network / images}

    def macs_note(self, options: Dict[str, Any], model: Optional[nn.Module] = None) -> Optional[str]:
        """By where the model's proposals come from (its proposal_source): a Region Proposal
        Network's or Selective Search's (whose MACs follow the proposals, Selective Search's own
        uncounted), or none (a single-shot detector: a fixed cost but for NMS)."""
        where = ("in evaluation mode on one image at the run's input size (a run's: its first validation image; "
                 "cnnbench models and profile: a seeded random one)")
        source = getattr(model, "proposal_source", None)
        proposals = options.get("proposals") or getattr(getattr(model, "rpn", None), "top_n", None) or 300
        if source is None:
            return (f"Counted {where}: the network's forward, a fixed cost at this size. The NMS after it is not "
                    f"counted (no multiply-adds; its time is in inference_images_per_s).")
        if source == "selective_search":
            return (f"Not a fixed cost: the RoI head's MACs grow with the Selective Search proposals it takes (at most "
                    f"{proposals}, model.proposals; R-CNN runs its whole CNN once per proposal). Counted {where}. "
                    f"Selective Search runs on the CPU outside the network and counts no MACs: its time is "
                    f"proposal_s_per_image.")
        return (f"Not a fixed cost: a two-stage detector's MACs grow with the proposals its RoI head takes. Counted "
                f"{where}, with the weights as initialised, keeping at most {proposals} proposals after NMS "
                f"(model.proposals); trained weights keep other proposals.")

    def cost_forward(self, model, x):
        """A detector's forward without data: in training with probe_targets (one box per image),
        in evaluation on the list of images."""
        if model.training:
            return model(list(x), to_targets(self.probe_targets(len(x), x.shape[-1], x.device), len(x)))
        return model(list(x))

    def meter(self, num_classes: Optional[int], device: torch.device, ignore_index: Optional[int] = None,
              names: Optional[List[str]] = None) -> Meter:
        """num_classes: the dataset's object classes (no background); classes beyond it are numbered."""
        return CocoMeter(num_classes, names)

    def probe_targets(self, batch: int, size: int, device: torch.device) -> torch.Tensor:
        """Targets for timing a training step without data (cnnbench profile): y (batch, 6), one
        box of class 0 per image, the middle half of a size x size image. A detector's training
        forward needs targets: the profile times task.train_step(model, x, probe_targets(...)),
        whose output is probe_loss's input."""
        lo, hi = size // 4, max(size // 4 + 1, size - size // 4)
        y = torch.tensor([[0.0, 0.0, lo, lo, hi, hi]], device=device).repeat(batch, 1)
        y[:, 0] = torch.arange(batch, device=device)
        return y

    def probe_loss(self, output) -> torch.Tensor:
        """The loss of a detector's training output, a dict of losses (see probe_targets: a
        detector is timed with targets, model(images, to_targets(probe_targets(...)))), summed."""
        return sum_losses(output)

    def epoch_text(self, row: Dict[str, Any], classes: int) -> str:
        if row.get("val_map") is None and row.get("val_map50") is None:  # not evaluated (or nothing to find)
            return ""
        return f" | val mAP {percent(row['val_map'])} AP50 {percent(row['val_map50'])}"

    def train_text(self, row: Dict[str, Any]) -> str:
        return f"objects/image {row['train_objects']:.2f}"

    def summary(self, r: Dict[str, Any]) -> list:
        per_class = ", ".join(f"{name} {percent(v)}" for name, v in (r.get("per_class_ap") or {}).items())
        return [("mAP / AP50 / AP75 / AR@100",
                 f"{percent(r['map'])} / {percent(r['map50'])} / {percent(r['map75'])} / {percent(r['mar100'])}"),
                ("best mAP", f"{percent(r['best_map'])} (epoch {r['best_epoch']})"),
                ("AP per class", per_class or "—")]

    @torch.no_grad()
    def images(self, model, val_loader, step, n: int = 8) -> Dict[str, torch.Tensor]:
        """A fixed set of validation images (the split's first n, from the loader's preview), each
        with its true boxes (green) and the predictions scoring DRAW_SCORE or more (red), labelled
        with the loader's class names (numbers without them): one grid, 4 images a row."""
        from torchvision.utils import make_grid

        preview = getattr(val_loader, "preview", None)
        if preview is None:
            return {}
        raw, truth = preview(n)  # (n, C, H, W) uint8, (M, 6)
        model.eval()
        predictions = flatten_predictions(self.predict(model, val_loader.normalize(raw))).cpu()
        truth = truth.cpu()
        names = getattr(val_loader, "names", None)
        tiles = [draw_boxes(raw[i], truth[truth[:, 0] == i], predictions[predictions[:, 0] == i], names)
                 for i in range(len(raw))]
        return {"val/detection": make_grid(torch.stack(tiles).float() / 255, nrow=4, padding=2, pad_value=0.5)}


DETECTION = Detection()
