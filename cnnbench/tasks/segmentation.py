"""Semantic segmentation: a class for every pixel (Long et al. 2015; Ronneberger et al. 2015).

Targets are (B, H, W) int64 masks, 255 = ignore (a pixel no loss or figure counts: VOC's
object borders, fashion_scenes' ambiguous rims, crop padding). A segmenter returns (B, classes,
H', W') scores: at the input size, or smaller and centred on it (U-Net with unpadded
convolutions: 572 px in, 388 px out), in which case the mask is cropped to the same centre, as
in the U-Net paper's training (section 2).

Figures (the definitions of Long et al. 2015, section 5, over the whole split, not averaged
image by image) come from one confusion matrix summed on the device:
  pixel accuracy   sum_k n_kk / sum_k t_k
  mean class acc.  mean over classes present of n_kk / t_k
  IoU of class k   n_kk / (t_k + p_k - n_kk); mIoU = its mean over the classes that occur
                   (in the truth or the predictions: a class neither has is left out)
with n_kj the pixels of class k predicted as j, t_k = sum_j n_kj, p_k = sum_j n_jk.
"""

from typing import Any, Dict, List, Optional

import torch
import torch.nn.functional as F

from cnnbench import distributed
from cnnbench.tasks import Meter, Task, percent

IGNORE = 255  # the mask value of pixels without a label (the PASCAL VOC convention)


def align(output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """The target cropped to the output's centre when the network's output is smaller than its
    input (unpadded convolutions); (B, H', W'). Raises ValueError for an output larger than the
    target. (A network whose output is not centred on its input is refused before a run: U-Net's
    sizes, models/unet.py.)"""
    (h, w), (th, tw) = output.shape[-2:], target.shape[-2:]
    if (h, w) == (th, tw):
        return target
    if h > th or w > tw:
        raise ValueError(f"the network's output is {h}x{w} px, larger than its {th}x{tw} px target")
    top, left = (th - h) // 2, (tw - w) // 2
    return target[:, top:top + h, left:left + w]


def segmentation_loss(output: torch.Tensor, target: torch.Tensor, label_smoothing: float = 0.0) -> torch.Tensor:
    """Per-pixel cross-entropy, averaged over the labelled pixels (0 for a batch with none: never
    NaN, which F.cross_entropy's mean would give). output (B, K, H', W'); target (B, H, W)."""
    target = align(output, target)
    total = F.cross_entropy(output.float(), target, ignore_index=IGNORE, reduction="sum",
                            label_smoothing=label_smoothing)
    return total / (target != IGNORE).sum().clamp_min(1)


def palette(n: int) -> torch.Tensor:
    """(n, 3) uint8 colours for class indices: PASCAL VOC's colour map (the bits of the index
    spread over R, G and B), so VOC masks look as they do in the dataset; 0 = black."""
    colours = torch.zeros(n, 3, dtype=torch.uint8)
    for i in range(n):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        colours[i] = torch.tensor([r, g, b])
    return colours


def colour_masks(masks: torch.Tensor, num_classes: int) -> torch.Tensor:
    """(N, H, W) class indices -> (N, 3, H, W) float in [0, 1]; ignored pixels white."""
    table = torch.cat([palette(num_classes), torch.full((1, 3), 255, dtype=torch.uint8)]).to(masks.device)
    index = torch.where(masks.long() >= num_classes, num_classes, masks.long())
    return table[index].permute(0, 3, 1, 2).float() / 255


class ConfusionMeter(Meter):
    """The (K, K) confusion matrix of a split (rows: true class, columns: predicted), the loss
    summed over labelled pixels, on the device: one scatter-add per batch, no host read (a boolean
    index, or torch.bincount's size check, would wait for the device)."""

    def __init__(self, num_classes: int, device: torch.device, ignore_index: Optional[int] = IGNORE,
                 names: Optional[List[str]] = None):
        self.k, self.device = num_classes, device
        names = list(names or [])[:num_classes]  # a model with more outputs than the data's classes: numbered
        self.names = names + [str(i) for i in range(len(names), num_classes)]
        self.ignore = IGNORE if ignore_index is None else ignore_index
        self.matrix = torch.zeros(num_classes * num_classes + 1, dtype=torch.int64, device=device)  # + 1: ignored
        self.loss = torch.zeros((), dtype=torch.float64, device=device)
        self.images = 0

    def update(self, output: torch.Tensor, target: torch.Tensor) -> None:
        target = align(output, target)
        self.loss += F.cross_entropy(output.float(), target, ignore_index=self.ignore, reduction="sum").double()
        # Every other value is a class below k: the data is checked as it loads (and cross-entropy refuses more)
        cell = torch.where(target != self.ignore, target * self.k + output.argmax(1), self.k * self.k)  # (B, H, W)
        self.matrix.scatter_add_(0, cell.flatten(), torch.ones_like(cell.flatten()))
        self.images += len(target)

    def compute(self) -> Dict[str, Any]:
        counts = torch.cat([self.matrix[:-1].double(), self.loss[None],
                            torch.tensor([float(self.images)], dtype=torch.float64, device=self.device)])
        counts = distributed.all_sum(counts).cpu()
        matrix = counts[:self.k * self.k].view(self.k, self.k)
        figures = confusion_figures(matrix)
        labelled = matrix.sum().item()
        per_class = dict(zip(self.names, figures.pop("iou")))
        return {"loss": counts[-2].item() / max(labelled, 1), **figures, "per_class_iou": per_class,
                "confusion": matrix.long().tolist(), "images": int(counts[-1].item())}


def confusion_figures(matrix: torch.Tensor) -> Dict[str, Any]:
    """Pixel accuracy, mean class accuracy, per-class IoU and mIoU (fractions, 0-1) of a (K, K)
    confusion matrix (rows true, columns predicted); a class without pixels in the truth or the
    predictions has IoU None and is left out of the mean (None too if no class has any)."""
    m = matrix.double()
    hit, truth, predicted = m.diagonal(), m.sum(1), m.sum(0)
    union = truth + predicted - hit
    iou = [(h / u).item() if u > 0 else None for h, u in zip(hit, union)]
    present = [v for v in iou if v is not None]
    class_acc = [(h / t).item() for h, t in zip(hit, truth) if t > 0]
    total = truth.sum().item()
    return {"miou": sum(present) / len(present) if present else None,
            "pixel_acc": hit.sum().item() / total if total else None,
            "mean_class_acc": sum(class_acc) / len(class_acc) if class_acc else None, "iou": iou}


class Segmentation(Task):
    name = "segmentation"
    score = "miou"
    higher_is_better = True
    train_metric = "pixel_acc"
    history_keys = ("loss", "miou", "pixel_acc", "mean_class_acc")
    record_keys = ("loss", "miou", "pixel_acc", "mean_class_acc", "per_class_iou", "confusion")
    targets = "a class for every pixel"
    class_counts = "images holding it"
    max_classes = IGNORE  # uint8 masks, 255 = ignore: classes 0-254
    figures = {"miou": "mIoU %",  # last epoch; mean IoU over the classes present
               "pixel_acc": "pixel acc %", "mean_class_acc": "class acc %",  # mean over the classes present
               "best_miou": "best mIoU %"}
    caption = "mIoU, pixel acc, class acc"
    columns = ("miou", "pixel_acc", "mean_class_acc")
    score_label = "mIoU %"
    plot_stem = "miou"
    curves = (("train_pixel_acc", "pixel accuracy %"), ("val_miou", "mIoU %"))
    curves_file = "segmentation_curves.png"

    def train_step(self, model, x, y, label_smoothing: float):
        output = model(x)
        loss = segmentation_loss(output, y, label_smoothing)
        with torch.no_grad():
            target = align(output, y)
            labelled = target != IGNORE
            right = ((output.argmax(1) == target) & labelled).sum().float()
        return loss, torch.stack([right, labelled.sum().float()])

    def meter(self, num_classes: int, device: torch.device, ignore_index: Optional[int] = IGNORE,
              names: Optional[List[str]] = None) -> Meter:
        return ConfusionMeter(num_classes, device, ignore_index, names)

    def probe_loss(self, output) -> torch.Tensor:
        return F.cross_entropy(output, torch.zeros(output.shape[:1] + output.shape[2:], dtype=torch.long,
                                                   device=output.device))

    def epoch_text(self, row: Dict[str, Any], classes: int) -> str:
        if row.get("val_loss") is None:
            return ""
        return (f" | val loss {row['val_loss']:.4f} mIoU {100 * (row['val_miou'] or 0):.2f}% "
                f"pixel acc {100 * (row['val_pixel_acc'] or 0):.2f}%")

    def summary(self, r: Dict[str, Any]) -> list:
        per_class = ", ".join(f"{name} {percent(v)}" for name, v in (r.get("per_class_iou") or {}).items())
        return [("mIoU / pixel acc. / mean class acc.",
                 f"{percent(r['miou'])} / {percent(r['pixel_acc'])} / {percent(r['mean_class_acc'])}"),
                ("best mIoU", f"{percent(r['best_miou'])} (epoch {r['best_epoch']})"),
                ("IoU per class", per_class or "—")]

    def train_text(self, row: Dict[str, Any]) -> str:
        return f"pixel acc {100 * row['train_pixel_acc']:.2f}%"

    @torch.no_grad()
    def images(self, model, val_loader, step, n: int = 8) -> Dict[str, torch.Tensor]:
        """A fixed set of validation images (the split's first n), each beside its true mask and the
        model's prediction, coloured by class (palette): one grid, rows of (image, truth, prediction)."""
        from torchvision.utils import make_grid

        preview = getattr(val_loader, "preview", None)
        if preview is None:
            return {}
        raw, truth = preview(n)  # (n, C, H, W) uint8, (n, H, W)
        model.eval()
        x = val_loader.normalize(raw)
        if step.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        output = model(x).float()
        k = output.shape[1]
        truth = align(output, truth)
        h, w = truth.shape[-2:]
        top, left = (raw.shape[-2] - h) // 2, (raw.shape[-1] - w) // 2
        image = raw[:, :, top:top + h, left:left + w].float() / 255
        image = image.expand(-1, 3, -1, -1) if image.shape[1] == 1 else image[:, :3]
        tiles = torch.stack([image, colour_masks(truth, k), colour_masks(output.argmax(1), k)], 1)  # (n, 3, 3, H, W)
        return {"val/segmentation": make_grid(tiles.flatten(0, 1).cpu(), nrow=3, padding=2, pad_value=0.5)}


SEGMENTATION = Segmentation()
