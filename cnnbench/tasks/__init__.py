"""What a network predicts decides its loss, its metrics and its record: one file per task.

    task = get_task("segmentation")
    loss, sums = task.train_step(model, x, y, label_smoothing)   # in the training loop
    meter = task.meter(num_classes, device, ignore_index)         # in evaluation
    meter.update(task.predict(model, x), y); figures = meter.compute()

The training loop (engine.py), the run (run.py) and the report (report.py) call only what `Task`
declares below, so a task adds a file here and its name to TASKS, and no branch anywhere else.
Targets are whatever the task's datasets yield: a (B,) tensor of labels, a (B, H, W) mask, or
(detection) an (M, 6) tensor of the batch's boxes [image, class, x1, y1, x2, y2]; the loop never
looks inside them.
"""

from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn


class Meter:
    """Evaluation figures accumulated over a whole split. `update` takes each batch's predictions
    and targets and keeps sums on the device (no host read per batch); `compute` sums them over
    torchrun's processes and returns the figures (a meter that needs every prediction at the end,
    such as COCO mAP, gathers them there instead)."""

    def update(self, output: Any, target: Any) -> None:
        raise NotImplementedError

    def compute(self) -> Dict[str, Any]:
        raise NotImplementedError


class Task:
    """The interface every task implements. Attributes:

    name: the task's name (a model's registry entry and a dataset declare it).
    score: the results.json key of the headline figure ("top1_err", "miou").
    higher_is_better: whether a larger score is better (mIoU) or worse (an error).
    train_metric: the name of the running training figure logged as train/<it> ("top1_err").
    history_keys: the validation figures each epoch's history row carries, as val_<key>.
    record_keys: the results.json keys the last evaluation fills (and a checkpoint carries).

    For `cnnbench compare` and its report (figures are fractions 0-1, shown as percent):
    figures: every figure of the task in results.json, key -> column header ("miou": "mIoU %"),
    best_<score> included; the report's columns, CSV fields and seed statistics come from these.
    caption: what the figures are, for a table's caption ("errors").
    columns: the task's figures in its table, after the cost columns ("top1_err", "top5_err").
    score_label: the score's axis label ("top-1 error %").
    plot_stem: the plots' file names start with it ("top1" -> top1_vs_gmacs.png).
    curves: ((history key, label) of the training panel, (history key, label) of the validation
    panel) of the per-epoch plot, and curves_file its file name.
    costs, cost_columns, costs_caption, inference_speed: what evaluating costs (below).
    """

    name: str
    score: str
    higher_is_better: bool
    train_metric: str
    history_keys: tuple
    record_keys: tuple
    targets: str  # what a target is, in words ("one label per image"), for the refusal of a mismatch
    class_counts: str  # what DataInfo.classes counts per class ("images")
    max_classes: Optional[int]  # the most classes its targets can name (uint8 masks with 255 ignored: 255)
    figures: Dict[str, str]
    caption: str
    columns: tuple
    score_label: str
    plot_stem: str
    curves: tuple
    curves_file: str
    # What a task's evaluation costs, where it measures it (evaluation_costs; detection): raw
    # numbers (images/s, counts, seconds), never shown as percent.
    costs: Dict[str, str] = {}  # results.json key -> column header
    cost_columns: tuple = ()  # the costs in the table, each where some run has it (all are in the CSV)
    costs_caption: str = ""  # what they are, for the table's caption
    inference_speed: Optional[str] = None  # the images/s key the report plots the score against (as ms per image)

    def train_step(self, model: nn.Module, x: torch.Tensor, y: Any, label_smoothing: float):
        """Forward in training mode and the loss. Returns (loss (), sums (2,)): the numerator and
        denominator of the running training figure, detached, on the device."""
        raise NotImplementedError

    def predict(self, model: nn.Module, x: torch.Tensor) -> Any:
        """The evaluation-mode forward (model.eval() set by the caller, no gradients)."""
        return model(x)

    def meter(self, num_classes: Optional[int], device: torch.device, ignore_index: Optional[int] = None,
              names: Optional[List[str]] = None) -> Meter:
        """A fresh Meter for one evaluation: num_classes outputs (None: read from the scores),
        ignore_index the target value nothing counts, names the classes' names for the record."""
        raise NotImplementedError

    def start_evaluation(self, model: nn.Module) -> None:
        """Called as an evaluation starts (engine.evaluate), before the first predict: a task that
        times or counts its evaluation forwards resets its counts here. Nothing by default."""

    def evaluation_costs(self, model: nn.Module, device: torch.device) -> Dict[str, Any]:
        """What the evaluation just ended cost, for its figures (and the record's task.record_keys):
        a detector's inference images/s, proposals and CNN passes per image. {} by default."""
        return {}

    def probe_loss(self, output: Any) -> torch.Tensor:
        """A loss for timing a training step without data (cnnbench profile): any target will do."""
        raise NotImplementedError

    def macs_note(self, options: Dict[str, Any], model: Optional[nn.Module] = None) -> Optional[str]:
        """What a run's MACs count, where it is not a fixed cost of the network (results.json's
        macs_note; options: the model's; model: the network). None: the MACs are the network's at
        the input size."""
        return None

    def cost_forward(self, model: nn.Module, x: torch.Tensor) -> Any:
        """The forward pass that cnnbench's cost measurements run (MACs, activation bytes, profile
        timings) on a batch x (B, C, H, W) without targets, in the model's current mode. A
        classifier or a segmenter: model(x); a detector takes a list of images, and in training
        made-up targets."""
        return model(x)

    def is_better(self, value: float, best: Optional[float]) -> bool:
        return best is None or (value > best if self.higher_is_better else value < best)

    def epoch_text(self, row: Dict[str, Any], classes: int) -> str:
        """The validation part of an epoch's log line ('' when the epoch was not evaluated)."""
        raise NotImplementedError

    def train_text(self, row: Dict[str, Any]) -> str:
        """The training figure of an epoch's log line ("top-1 err 9.70%")."""
        raise NotImplementedError

    def summary(self, results: Dict[str, Any]) -> List[tuple]:
        """(name, text) rows of the task's figures for the table `cnnbench train` ends with."""
        raise NotImplementedError

    def images(self, model: nn.Module, val_loader, step) -> Dict[str, torch.Tensor]:
        """TensorBoard images at an evaluation: tag -> (3, H, W) float in [0, 1]. None by default."""
        return {}

    def hparams_metrics(self, results: Dict[str, Any]) -> Dict[str, Optional[float]]:
        """The figures TensorBoard's HPARAMS table shows beside the run's settings."""
        return {k: results.get(k) for k in self.history_keys if k != "loss"}


def percent(x: Optional[float]) -> str:
    """A fraction (0-1) as a percentage with 2 decimals; "—" for None."""
    return "—" if x is None else f"{100 * x:.2f}%"


def get_task(name: str) -> Task:
    """The task of that name; KeyError for an unknown one (models and datasets name only these)."""
    from cnnbench.tasks.classification import CLASSIFICATION
    from cnnbench.tasks.detection import DETECTION
    from cnnbench.tasks.segmentation import SEGMENTATION

    return {t.name: t for t in (CLASSIFICATION, SEGMENTATION, DETECTION)}[name]


TASK_NAMES: List[str] = ["classification", "segmentation", "detection"]
