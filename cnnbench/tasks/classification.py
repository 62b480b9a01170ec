"""Classification: one label per image. Loss: cross-entropy; figures: top-1 and top-k error.

Targets are (B,) int64 labels; a classifier returns (B, classes) scores, or in training
(scores, [auxiliary scores, ...]) when it has auxiliary heads (GoogLeNet).
"""

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F

from cnnbench import distributed
from cnnbench.tasks import Meter, Task, percent

AUX_WEIGHT = 0.3  # GoogLeNet's auxiliary classifiers: loss weight each (Szegedy et al. 2014, 5)


def classification_loss(output, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Cross-entropy; a model with auxiliary heads returns (logits, [aux, ...]) in training."""
    if isinstance(output, tuple):
        logits, aux = output
        return (F.cross_entropy(logits, target, label_smoothing=label_smoothing)
                + AUX_WEIGHT * sum(F.cross_entropy(a, target, label_smoothing=label_smoothing) for a in aux))
    return F.cross_entropy(output, target, label_smoothing=label_smoothing)


def topk_errors(logits: torch.Tensor, target: torch.Tensor, ks=(1, 5)) -> torch.Tensor:
    """Number of images whose label is not among the top k predictions, for each k (k is capped
    at the number of classes, so top-5 on 3 classes is top-3: always right). (len(ks),) tensor."""
    kmax = min(max(ks), logits.shape[1])
    top = logits.topk(kmax, dim=1).indices  # (B, kmax)
    hit = top == target[:, None]  # (B, kmax)
    return torch.stack([(~hit[:, :min(k, kmax)].any(dim=1)).sum() for k in ks])


class TopKMeter(Meter):
    """Loss, top-1 and top-5 error (fractions, 0-1) over a split, summed on the device."""

    def __init__(self, device: torch.device):
        self.device = device
        self.totals = torch.zeros(3, device=device)  # loss sum, top-1 errors, top-5 errors
        self.images = 0  # counted on the host: no copy to the device per batch

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        loss = F.cross_entropy(output.float(), target, reduction="sum")
        self.totals += torch.stack([loss, *topk_errors(output, target, (1, 5)).float()])
        self.images += len(target)

    def compute(self) -> Dict[str, Any]:
        counts = torch.cat([self.totals, torch.tensor([float(self.images)], device=self.device)])
        loss_sum, err1, err5, images = distributed.all_sum(counts).tolist()  # every process's share
        return {"loss": loss_sum / images, "top1_err": err1 / images, "top5_err": err5 / images,
                "images": int(images)}


class Classification(Task):
    name = "classification"
    score = "top1_err"
    higher_is_better = False
    train_metric = "top1_err"
    history_keys = ("loss", "top1_err", "top5_err")
    record_keys = ("loss", "top1_err", "top5_err")
    targets = "one label per image"
    class_counts = "images"
    max_classes = None
    figures = {"top1_err": "top-1 err %",  # last epoch
               "top5_err": "top-5 err %",  # top-k, k = min(5, classes)
               "best_top1_err": "best top-1 err %"}
    caption = "errors"
    columns = ("top1_err", "top5_err")
    score_label = "top-1 error %"
    plot_stem = "top1"
    curves = (("train_top1_err", "top-1 error %"), ("val_top1_err", "top-1 error %"))
    curves_file = "error_curves.png"

    def train_step(self, model, x, y, label_smoothing: float):
        output = model(x)
        loss = classification_loss(output, y, label_smoothing)
        logits = output[0] if isinstance(output, tuple) else output
        with torch.no_grad():
            errors = (logits.argmax(1) != y).sum().float()
        return loss, torch.stack([errors, errors.new_full((), float(len(y)))])  # a fill kernel, no copy from the host

    def meter(self, num_classes: Optional[int], device: torch.device, ignore_index: Optional[int] = None,
              names=None) -> Meter:
        return TopKMeter(device)

    def probe_loss(self, output) -> torch.Tensor:
        logits = output[0] if isinstance(output, tuple) else output
        return classification_loss(output, torch.zeros(len(logits), dtype=torch.long, device=logits.device))

    def epoch_text(self, row: Dict[str, Any], classes: int) -> str:
        """Top-5 is top-k with k = min(5, classes) (topk_errors), and says so."""
        if row.get("val_loss") is None:
            return ""
        return (f" | val loss {row['val_loss']:.4f} top-1 err {100 * row['val_top1_err']:.2f}% "
                f"top-{min(5, classes)} err {100 * row['val_top5_err']:.2f}%")

    def summary(self, r: Dict[str, Any]) -> list:
        k = min(5, r.get("num_classes") or 5)  # the top-5 error is capped at the classes: top-3 of 3
        return [(f"top-1 / top-{k} error", f"{percent(r['top1_err'])} / {percent(r['top5_err'])}"),
                ("best top-1 error", f"{percent(r['best_top1_err'])} (epoch {r['best_epoch']})")]

    def train_text(self, row: Dict[str, Any]) -> str:
        return f"top-1 err {100 * row['train_top1_err']:.2f}%"


CLASSIFICATION = Classification()
