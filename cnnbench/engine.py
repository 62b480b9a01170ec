"""The training and evaluation loops: plain PyTorch, no Hydra, no files, the same for every task.

What differs between tasks (the loss, the running figure, the evaluation figures) comes from the
StepConfig's task (cnnbench/tasks/): the loop never looks inside a target. Metrics accumulate on
the device and are read once per logging interval, so the step itself never waits for the host
(on CUDA, `.item()` inside the step would serialise the pipeline).
"""

import time
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Callable, Iterable, List, Optional

import torch
import torch.nn as nn

from cnnbench import distributed
from cnnbench.tasks import Task
from cnnbench.tasks.classification import CLASSIFICATION


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
    on_nan: str = "stop"  # a non-finite loss: stop (raise Diverged) | skip_step (leave the update out)
    channels_last: bool = False  # hand the model NHWC batches (the model's weights are NHWC too)
    distributed: bool = False  # torchrun: sum the running metrics over every process at each read
    cuda_graphs: bool = False  # the compiled model replays CUDA graphs: mark where each step starts
    task: Task = CLASSIFICATION  # the loss, the running figure and the evaluation's figures
    num_classes: Optional[int] = None  # the model's outputs (None: read from the scores)
    ignore_index: Optional[int] = None  # segmentation: the mask value no loss or figure counts
    class_names: Optional[List[str]] = None  # for per-class figures in the record


def _autocast(step: StepConfig):
    if step.amp_dtype is None:
        return nullcontext()
    return torch.autocast(step.device.type, dtype=step.amp_dtype)


def sync_device(device: torch.device) -> None:
    """Wait for the device's queued work, so that a clock read after it is honest."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class Diverged(ArithmeticError):
    """The loss stopped being a finite number (trainer.on_nan=stop)."""

    def __init__(self, step: int):
        super().__init__(f"the training loss is not finite (NaN or infinity) at step {step}")
        self.step = step


@dataclass
class EpochState:
    """Where an epoch stands: enough to continue it exactly after a restart (mid-epoch
    checkpoints carry it). Running sums stay on the device; they are read once per log interval."""

    step: int = 0  # batches done in this epoch
    # (3,) over the logged windows: the loss summed over images, and the running figure's numerator
    # and denominator (classification: top-1 errors and images; segmentation: right and labelled pixels)
    totals: Optional[torch.Tensor] = None
    window: Optional[torch.Tensor] = None  # (3,) the same since the last log
    images: int = 0  # images in totals
    window_images: int = 0  # images in window
    first_bad_step: Optional[torch.Tensor] = None  # () global step of the first non-finite loss, -1 = none
    skipped_steps: int = 0  # on_nan=skip_step: updates left out because the loss was not finite
    seconds: float = 0.0  # time spent in this epoch by earlier processes (a resumed epoch)

    def to(self, device: torch.device) -> "EpochState":
        for name, images in (("totals", self.images), ("window", self.window_images)):
            value = getattr(self, name)
            if value is not None and value.numel() == 2:  # saved by cnnbench before tasks: its denominator, the images
                value = torch.cat([value.cpu().float(), torch.tensor([float(images)])])
            setattr(self, name, torch.zeros(3, device=device) if value is None else value.to(device))
        bad = self.first_bad_step
        self.first_bad_step = torch.tensor(-1, device=device) if bad is None else bad.to(device)
        return self

    def state_dict(self) -> dict:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def train_one_epoch(model: nn.Module, loader, optimizer: torch.optim.Optimizer,
                    scheduler, scaler: torch.amp.GradScaler, step: StepConfig, global_step: int,
                    on_log: Callable[[int, dict], None],
                    on_step: Callable[[int, EpochState], bool] = lambda global_step, state: False,
                    state: Optional[EpochState] = None) -> dict:
    """One pass over the training loader, from batch state.step on (0 = the start; a resumed
    epoch goes on where its checkpoint left it, with the same data order).

    Calls on_log(global_step, {"train/loss", "train/<the task's figure>"}) every step.log_every steps, and
    on_step(global_step, state) after every step: the progress bar, mid-epoch checkpoints; it
    returns True to stop the epoch there (a signal). A non-finite loss raises Diverged at the next
    log read (step.on_nan="stop"), or skips that update (step.on_nan="skip_step", one host read
    per step). Returns the epoch's loss, its training figure (under the task's train_metric name:
    top1_err, pixel_acc), images, seconds, steady-state images/s, the global step, whether it
    stopped early, and its state."""
    model.train()
    task = step.task
    state = (state or EpochState()).to(step.device)
    n_steps = min(len(loader), step.max_steps) if step.max_steps else len(loader)
    run_steps = n_steps - state.step  # what this call does
    # Steps left out of the throughput figure: a tenth, at least the first (allocation, cuDNN
    # autotuning, torch.compile's compiling), at most 10. A one-step pass gives no figure.
    warmup = min(10, max(1, run_steps // 10))
    done = 0
    stopped = False
    data_wait = 0.0  # host seconds spent waiting for the next batch
    first_step = None  # seconds of this call's first step (with torch.compile: mostly compiling)
    batches = iter(loader)  # the caller has set the loader's epoch and start batch
    sync_device(step.device)  # work queued before the epoch (data drawn on the GPU) is not its time
    t0 = t_warm = time.perf_counter()
    while state.step < n_steps:
        t_fetch = time.perf_counter()
        try:
            x, y = next(batches)
        except StopIteration:
            break
        data_wait += time.perf_counter() - t_fetch
        if step.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        if done == 1:
            sync_device(step.device)
            first_step = time.perf_counter() - t0
        if done == warmup:
            sync_device(step.device)
            t_warm = time.perf_counter()
        if step.cuda_graphs:  # the last step's graph outputs may be overwritten from here on
            torch.compiler.cudagraph_mark_step_begin()
        with _autocast(step):
            loss, sums = task.train_step(model, x, y, step.label_smoothing)  # sums: (2,) detached
        optimizer.zero_grad(set_to_none=True)
        finite = torch.isfinite(loss)
        skip = step.on_nan == "skip_step" and not finite  # a host read per step, in this mode only
        if skip:
            state.skipped_steps += 1
        else:
            scaler.scale(loss).backward()
            if step.grad_clip > 0:
                scaler.unscale_(optimizer)  # clip the true gradients, not the scaled ones
                nn.utils.clip_grad_norm_(model.parameters(), step.grad_clip)
            scaler.step(optimizer)
            scaler.update()
        scheduler.step()
        global_step += 1
        state.step += 1
        done += 1

        if not skip:
            with torch.no_grad():  # small device ops a step; no host sync (a Python int is passed by value)
                state.window += torch.cat([loss.detach().float()[None] * len(x), sums.float()])
                state.first_bad_step = torch.where((state.first_bad_step < 0) & ~finite, global_step,
                                                   state.first_bad_step)
            state.window_images += len(x)
        if global_step % step.log_every == 0 or state.step == n_steps:
            log_window(state, global_step, step, on_log)
        if on_step(global_step, state) and state.step < n_steps:
            stopped = True
            break
    sync_device(step.device)
    t1 = time.perf_counter()
    if state.window_images:  # stopped between log steps
        log_window(state, global_step, step, on_log)
    elif state.images == 0 and state.skipped_steps:  # on_nan=skip_step, and not one finite loss
        raise Diverged(global_step)
    loss_sum, numerator, denominator = state.totals.tolist()
    steady = (done - warmup) * (state.images / max(state.step, 1))  # images after the warm-up steps
    return {"loss": loss_sum / max(state.images, 1), task.train_metric: numerator / max(denominator, 1),
            "images": int(state.images), "seconds": state.seconds + t1 - t0,
            "images_per_s": steady / (t1 - t_warm) if t1 > t_warm and done > warmup else None,
            "global_step": global_step, "stopped": stopped, "skipped_steps": state.skipped_steps,
            "data_wait_s": data_wait, "first_step_s": first_step, "state": state}


def check_finite(state: EpochState, step: StepConfig) -> None:
    """Raise Diverged if a loss of this epoch so far was not finite, in any process (one host read).
    Under torchrun, also folds the running window into the totals, summed over the processes, so
    that the state a checkpoint saves is the same in every process."""
    if step.distributed:
        _reduce_window(state, step)
        _fold_window(state)
    bad = int(state.first_bad_step)
    if bad >= 0:
        raise Diverged(bad)


def _reduce_window(state: EpochState, step: StepConfig) -> None:
    """torchrun: the window's sums and image count over every process; the first bad step of any."""
    counts = torch.cat([state.window, torch.tensor([float(state.window_images)], device=step.device)])
    distributed.all_sum(counts)
    state.window.copy_(counts[:3])
    state.window_images = int(counts[3])
    distributed.all_max(state.first_bad_step)


def log_window(state: EpochState, global_step: int, step: StepConfig, on_log) -> None:
    """Read the running sums (the one host sync per log interval), report them, fold them into
    the epoch's totals. Raises Diverged if a loss since the start of the epoch was not finite."""
    if step.distributed:
        _reduce_window(state, step)
    loss_sum, numerator, denominator, bad = torch.cat([state.window, state.first_bad_step.float()[None]]).tolist()
    if bad >= 0:
        raise Diverged(int(bad))
    if state.window_images:  # 0 when every step since the last log was skipped (on_nan=skip_step)
        on_log(global_step, {"train/loss": loss_sum / state.window_images,
                             f"train/{step.task.train_metric}": numerator / max(denominator, 1)})
    _fold_window(state)


def _fold_window(state: EpochState) -> None:
    """Add the running window to the epoch's totals and start a new window."""
    state.totals += state.window
    state.images += state.window_images
    state.window.zero_()
    state.window_images = 0


@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, step: StepConfig) -> dict:
    """The task's evaluation figures over the loader (its first step.max_eval_steps batches when
    set), in evaluation mode, summed over torchrun's processes: classification's loss, top-1 and
    top-5 error (fractions, 0-1); segmentation's loss, mIoU, pixel accuracy, ...; detection's
    COCO figures and what inference cost (task.evaluation_costs); and the number of images they
    cover."""
    model.eval()
    meter = step.task.meter(step.num_classes, step.device, step.ignore_index, step.class_names)
    step.task.start_evaluation(model)
    for i, (x, y) in enumerate(loader):
        if i == step.max_eval_steps > 0:
            break
        if step.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        with _autocast(step):
            output = step.task.predict(model, x)
        meter.update(output, y)
    return {**meter.compute(), **step.task.evaluation_costs(model, step.device)}
