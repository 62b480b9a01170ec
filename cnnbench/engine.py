"""The training and evaluation loops: plain PyTorch, no Hydra, no files.

Metrics accumulate on the device and are read once per logging interval, so the step itself
never waits for the host (on CUDA, `.item()` inside the step would serialise the pipeline).
"""

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable, Optional

import torch
import torch.nn as nn
import torch.nn.functional as F

AUX_WEIGHT = 0.3  # GoogLeNet's auxiliary classifiers: loss weight each (Szegedy et al. 2014, 5)


@dataclass
class StepConfig:
    """What one optimisation step needs besides the model, the data and the optimizer."""

    device: torch.device
    amp_dtype: Optional[torch.dtype] = None  # None = float32; torch.bfloat16 / torch.float16
    grad_clip: float = 0.0  # max global gradient norm; 0 = off
    label_smoothing: float = 0.0
    max_steps: int = 0  # stop the epoch after this many steps; 0 = all
    max_eval_steps: int = 0  # evaluate on this many batches only; 0 = all
    log_every: int = 50  # steps between reads of the running metrics


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


def _autocast(step: StepConfig):
    if step.amp_dtype is None:
        return nullcontext()
    return torch.autocast(step.device.type, dtype=step.amp_dtype)


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def train_one_epoch(model: nn.Module, loader: Iterable, optimizer: torch.optim.Optimizer,
                    scheduler, scaler: torch.amp.GradScaler, step: StepConfig, global_step: int,
                    on_log: Callable[[int, dict], None], on_step: Callable[[], None] = lambda: None) -> dict:
    """One pass over the training loader. Calls on_log(global_step, {"train/loss", "train/top1_err"})
    every step.log_every steps and on_step() after every step (the progress bar). Returns the
    epoch's loss, top-1 error, images, seconds and steady-state images/s."""
    model.train()
    n_steps = min(len(loader), step.max_steps) if step.max_steps else len(loader)
    warmup = min(10, n_steps // 10)  # steps left out of the throughput figure
    totals = torch.zeros(2, device=step.device)  # loss sum, top-1 errors: whole epoch
    window = torch.zeros(2, device=step.device)  # the same since the last log
    images = window_images = 0
    t0 = t_warm = time.perf_counter()
    for i, (x, y) in enumerate(loader):
        if i == n_steps:
            break
        if i == warmup:
            sync_device(step.device)
            t_warm = time.perf_counter()
        with _autocast(step):
            output = model(x)
            loss = classification_loss(output, y, step.label_smoothing)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if step.grad_clip > 0:
            scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
            nn.utils.clip_grad_norm_(model.parameters(), step.grad_clip)
        scaler.step(optimizer)
        scaler.update()
        scheduler.step()
        global_step += 1

        logits = output[0] if isinstance(output, tuple) else output
        with torch.no_grad():  # two small device ops a step; no host sync
            window += torch.stack([loss.detach().float() * len(y), (logits.argmax(1) != y).sum().float()])
        window_images += len(y)
        if global_step % step.log_every == 0 or i == n_steps - 1:
            loss_sum, errors = window.tolist()  # the one host sync per interval
            on_log(global_step, {"train/loss": loss_sum / window_images, "train/top1_err": errors / window_images})
            totals += window
            images += window_images
            window.zero_()
            window_images = 0
        on_step()
    sync_device(step.device)
    t1 = time.perf_counter()
    loss_sum, errors = totals.tolist()
    steady = (n_steps - warmup) * (images / max(n_steps, 1))  # images after the warm-up steps
    return {"loss": loss_sum / max(images, 1), "top1_err": errors / max(images, 1), "images": int(images),
            "seconds": t1 - t0, "images_per_s": steady / (t1 - t_warm) if t1 > t_warm else None,
            "global_step": global_step}


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, step: StepConfig) -> dict:
    """Loss, top-1 and top-5 error (fractions, 0-1) over the loader (its first step.max_eval_steps
    batches when set), in evaluation mode, and the number of images they cover."""
    model.eval()
    totals = torch.zeros(4, device=step.device)  # loss sum, top-1 errors, top-5 errors, images
    for i, (x, y) in enumerate(loader):
        if i == step.max_eval_steps > 0:
            break
        with _autocast(step):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y, reduction="sum")
        totals += torch.stack([loss, *topk_errors(logits, y, (1, 5)).float(),
                               torch.tensor(float(len(y)), device=step.device)])
    loss_sum, err1, err5, images = totals.tolist()
    return {"loss": loss_sum / images, "top1_err": err1 / images, "top5_err": err5 / images, "images": int(images)}
