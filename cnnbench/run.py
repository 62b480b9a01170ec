"""The one door: a composed config becomes objects here, runs, and leaves its record.

Below this module everything receives typed arguments and built objects, never a DictConfig.
`validate(cfg)` checks what the schema cannot (names, ranges, sizes) without building anything,
so the CLI can refuse bad input before Hydra creates a run directory.
"""

import difflib
import errno
import json
import logging
import math
import os
import random
import shlex
import shutil
import signal
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, Optional

import numpy as np
import torch
import torch.nn as nn
from omegaconf import DictConfig, OmegaConf

from cnnbench import distributed, engine, measure, track
from cnnbench.tasks import Task, get_task
from cnnbench.tasks.classification import CLASSIFICATION
from cnnbench.errors import CnnbenchError, RunFailed, RunInterrupted
from cnnbench.data.folder import READER_VERSION as FOLDER_READER
from cnnbench.models import create_model, external, get_model_info, weights
from cnnbench.models.proposals import every_proposal
from cnnbench.report import gmacs

log = logging.getLogger("cnnbench")

# Which keys each optimizer takes besides lr and weight_decay (torch.optim's argument names).
_OPTIMIZERS = {
    "sgd": (torch.optim.SGD, ("momentum", "nesterov")),
    "adam": (torch.optim.Adam, ("betas", "eps")),
    "adamw": (torch.optim.AdamW, ("betas", "eps")),
    "adagrad": (torch.optim.Adagrad, ("eps",)),
    "rmsprop": (torch.optim.RMSprop, ("alpha", "eps", "momentum")),
}
_OPTIONAL_OPTIMIZER_KEYS = ("momentum", "nesterov", "betas", "eps", "alpha")
# What a checkpoint carries of results.json, so a resumed run reports the whole run (with the
# task's own figures: its record_keys and best_<score>).
_RESUMED_KEYS = ("history", "best_epoch", "epochs", "wall_time_s", "train_images_per_s", "schedule_changes",
                 "data_decode")
# What a resumed run may change: how long it trains and how it is watched, not what it computes.
_RESUMABLE_CHANGES = {"trainer.epochs", "trainer.eval_every", "trainer.log_every_steps", "trainer.max_eval_steps",
                      "trainer.checkpoint", "trainer.checkpoint_every_steps", "trainer.log_grad_norms",
                      "trainer.log_filters", "trainer.device", "trainer.on_nan"}
_AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _value(x):
    """Config enums -> their string; everything else unchanged."""
    return getattr(x, "value", x)


# ---------------------------------------------------------------------------------------------
# Validation: everything the schema cannot check, before any work
# ---------------------------------------------------------------------------------------------

# ModelConf's keys that are not architecture options (every model takes weights and freeze)
_NOT_OPTIONS = {"name", "num_classes", "in_channels", "weights", "freeze"}


def model_options(model_cfg) -> Dict[str, Any]:
    """The architecture options set in the config (null = the architecture's default), as plain values."""
    return {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else _value(v)
            for k, v in model_cfg.items() if k not in _NOT_OPTIONS and v is not None}


def image_size_for(cfg) -> int:
    """The px the model gets: dataset.image_size if set, else the native size raised to the
    model's minimum (LeNet-5 takes 32 px; Fashion-MNIST is 28)."""
    if cfg.dataset.image_size is not None:
        return cfg.dataset.image_size
    info = get_model_info(cfg.model.name)
    native, options = cfg.dataset.native_size, model_options(cfg.model)
    if info.external and external.fits(info.builder, cfg.model.in_channels, native, **options) is None:
        return native  # tried: it takes the native size (a fixed-size network need not take any other)
    size = max(native, info.min_input(in_channels=cfg.model.in_channels, **options))
    return min(size, info.max_size) if info.max_size else size


def resolve(cfg: DictConfig) -> DictConfig:
    """What the composed config means for this job, in place: `per_model` options for this model
    written onto model.* (a named model's options first refused if it lacks one; `any` applies
    where the model has the option), then the options left null whose default follows the input
    size (ModelInfo.sized_options: YOLO's grid), so that the record states them. Idempotent; the
    CLI calls it as each job's config is composed, validate() again for callers that compose
    themselves."""

    per_model = cfg.get("per_model") or {}
    if per_model:
        _apply_per_model(cfg, per_model)
    info = get_model_info(cfg.model.name)
    if info.sized_options is not None:  # options whose default follows the input size (YOLO's grid)
        for key, value in info.sized_options(image_size_for(cfg)).items():
            if cfg.model.get(key) is None:
                cfg.model[key] = value
    return cfg


def _apply_per_model(cfg: DictConfig, per_model) -> None:
    from cnnbench.config import ModelConf
    from cnnbench.models import list_models

    name, known = cfg.model.name, set(list_models(external=True))
    options = set(ModelConf.__dataclass_fields__) - _NOT_OPTIONS  # what some architectures have
    for model, given in per_model.items():  # every entry, whichever model runs: none is recorded unchecked
        if model != "any" and model not in known:
            guess = difflib.get_close_matches(model, known, n=1)
            raise CnnbenchError(f"per_model.{model}: there is no model {model!r}"
                                f"{f' (did you mean {guess[0]}?)' if guess else ''}. Name a model "
                                f"(`cnnbench models` lists them), or per_model.any for every model that has the "
                                f"option.")
        anywhere = options | {"weights", "freeze"}
        own = anywhere if model == "any" else set(get_model_info(model).options) | {"weights", "freeze"}
        unknown = sorted(set(given or {}) - anywhere)
        if unknown:
            raise CnnbenchError(f"per_model.{model}.{unknown[0]}: no model has an option {unknown[0]}; the options "
                                f"are {', '.join(sorted(anywhere))}. Remove it, or name one of them.")
        wrong = sorted(set(given or {}) - own)
        if wrong:
            raise CnnbenchError(f"per_model.{model}.{wrong[0]} does not apply to {model}: its options are "
                                f"{', '.join(sorted(own))}. Remove it, or use per_model.any.{wrong[0]} to give it "
                                f"only to the models that have it.")
    own = set(get_model_info(name).options) | {"weights", "freeze"}
    for model in ("any", name):
        for key, value in (per_model.get(model) or {}).items():
            if key not in own:
                continue  # per_model.any's option of other models: this one runs without it
            try:
                cfg.model[key] = value
            except Exception as e:  # the schema's type check (an enum value, a number)
                raise CnnbenchError(f"per_model.{model}.{key}={value}: {str(e).splitlines()[0]}. Give it a value "
                                    f"model.{key} takes.") from None


def validate(cfg: DictConfig) -> None:
    """Raise CnnbenchError for values the typed schema accepts but that cannot work."""
    from cnnbench.config import Config

    resolve(cfg)

    known = list(Config.__dataclass_fields__)
    try:  # an interpolation that cannot resolve (${oc.env:UNSET}, ${no.such.key}) fails here, not mid-run
        OmegaConf.to_container(cfg, resolve=True)
    except Exception as e:
        key = getattr(e, "full_key", None) or "a setting"
        raise CnnbenchError(f"{key} cannot be resolved: {str(e).splitlines()[0]}. Fix or remove the ${{...}} "
                            f"in its value.") from None
    for key in cfg:  # the root is the one level the schema cannot close (Hydra adds to it)
        if key not in known:
            guess = difflib.get_close_matches(key, known, n=1)
            raise CnnbenchError(f"{key} is not a cnnbench setting.{f' Did you mean {guess[0]}?' if guess else ''} "
                                f"The top-level settings are: {', '.join(known)}.")
    m, d, o, s, t = cfg.model, cfg.dataset, cfg.optimizer, cfg.scheduler, cfg.trainer
    info = get_model_info(m.name)  # unknown name -> the list of known ones
    _check_task(info, _value(d.name))
    options = model_options(m)
    unknown = sorted(set(options) - set(info.options))
    if unknown:
        raise CnnbenchError(
            f"model.{unknown[0]} does not apply to {m.name}: its options are "
            f"{', '.join(info.options) or 'none'}. Remove model.{unknown[0]}=... from the command line.")

    def positive(key, value, kind="a positive number"):
        if value is None or not value > 0 or not math.isfinite(value):  # NaN compares false with anything
            raise CnnbenchError(f"{key}={value} is not allowed: it must be {kind}. Set {key} to {kind}.")

    if not 0 <= cfg.seed < 2**32:
        raise CnnbenchError(f"seed={cfg.seed} is outside what the generators take (0 to 2^32 - 1). Use a "
                            f"seed such as 0, 1, 2.")

    positive("dataset.batch_size", d.batch_size, "a positive integer")
    positive("optimizer.lr", o.lr)
    positive("trainer.epochs", t.epochs, "a positive integer")
    positive("trainer.eval_every", t.eval_every, "a positive integer")
    positive("trainer.log_every_steps", t.log_every_steps, "a positive integer")
    positive("dataset.in_channels", d.in_channels, "a positive integer")
    positive("dataset.native_size", d.native_size, "a positive integer (px)")
    for key, value in [("optimizer.weight_decay", o.weight_decay), ("trainer.grad_clip", t.grad_clip),
                       ("trainer.max_steps_per_epoch", t.max_steps_per_epoch),
                       ("trainer.max_eval_steps", t.max_eval_steps), ("trainer.threads", t.threads),
                       ("trainer.checkpoint_every_steps", t.checkpoint_every_steps),
                       ("dataset.train_size", d.train_size), ("dataset.val_size", d.val_size),
                       ("dataset.num_workers", d.num_workers or 0)]:
        if not value >= 0 or not math.isfinite(value):
            raise CnnbenchError(f"{key}={value} is {'negative' if value < 0 else 'not a number'}. Set it to 0 "
                                f"or more.")
    if t.threads > 1024:  # OpenMP with 100,000 threads crashes the process outright
        raise CnnbenchError(f"trainer.threads={t.threads} is far more than any machine's cores. Use 0 (one per "
                            f"core) or the number of cores to use.")
    if m.weights is not None and not Path(m.weights).expanduser().is_file():
        raise CnnbenchError(f"model.weights={m.weights}: no such file. Give the path of a .pth state dict.")
    for key, value in [("model.dropout", m.dropout), ("trainer.label_smoothing", t.label_smoothing),
                       ("dataset.val_fraction", d.val_fraction)]:
        if value is not None and not 0 <= value < 1:
            raise CnnbenchError(f"{key}={value} is outside [0, 1). Use a probability such as 0.5.")
    if d.num_classes is not None and d.num_classes < 1:
        raise CnnbenchError(f"dataset.num_classes={d.num_classes} must be at least 1.")
    task = get_task(info.task)
    for key, value in (("dataset.num_classes", d.num_classes), ("model.num_classes", m.num_classes)):
        if task.max_classes and value is not None and value > task.max_classes:  # segmentation: uint8 masks
            raise CnnbenchError(f"{key}={value}: {info.task} targets ({task.targets}) name at most "
                                f"{task.max_classes} classes, stored as 0-{task.max_classes - 1} with "
                                f"{task.max_classes} meaning ignored. Use {task.max_classes} classes or fewer.")
    classes = d.num_classes  # imagefolder: null, one class per folder under root/train
    train_dir = Path(d.root).expanduser() / "train"
    if classes is None and _value(d.name) == "imagefolder" and train_dir.is_dir():
        from cnnbench.data.folder import class_folders

        classes = len(class_folders(train_dir))
    if m.num_classes is not None and m.num_classes < 1:
        raise CnnbenchError(f"model.num_classes={m.num_classes} must be at least 1. Leave it unset: it follows "
                            f"the dataset.")
    if m.num_classes is not None and classes and m.num_classes < classes:
        raise CnnbenchError(
            f"model.num_classes={m.num_classes} is fewer than the {classes} classes of dataset={_value(d.name)}: "
            f"labels up to {classes - 1} would have no output. Leave model.num_classes unset (it "
            f"follows the dataset) or set it to {classes} or more.")
    _refuse_unused_settings(cfg)
    if _value(d.name) == "fashion_scenes":
        from cnnbench.data.scenes import check_config

        check_config(d, info.task)
    if _value(d.name) == "imagefolder" and d.in_channels not in (1, 3):
        raise CnnbenchError(f"dataset.in_channels={d.in_channels}: dataset=imagefolder reads images as grey (1) "
                            f"or RGB (3). Set dataset.in_channels=1 or 3, with as many dataset.mean and dataset.std "
                            f"values.")
    if len(d.mean) != d.in_channels or len(d.std) != d.in_channels or min(d.std) <= 0:
        raise CnnbenchError(f"dataset.mean and dataset.std need one value per channel "
                            f"({d.in_channels}), std > 0; got mean={list(d.mean)} std={list(d.std)}.")

    # Optimizer: its own keys only
    name = _value(o.name)
    _, own = _OPTIMIZERS[name]
    for key in _OPTIONAL_OPTIMIZER_KEYS:
        if o[key] is not None and key not in own:
            raise CnnbenchError(f"optimizer.{key} does not apply to {name}; {name} takes lr, weight_decay"
                                f"{''.join(', ' + k for k in own)}. Remove optimizer.{key}=...")
    if name == "sgd" and o.nesterov and not (o.momentum or 0) > 0:
        raise CnnbenchError("optimizer.nesterov=true needs optimizer.momentum > 0. Set momentum "
                            "(e.g. 0.9) or nesterov=false.")
    for key, fits, kind in (("momentum", lambda v: 0 <= v < math.inf, "0 or more, e.g. 0.9"),
                            ("eps", lambda v: 0 < v < math.inf, "a small positive number, e.g. 1e-8"),
                            ("alpha", lambda v: 0 <= v < 1, "in [0, 1), e.g. 0.99")):
        if o[key] is not None and not fits(o[key]):
            raise CnnbenchError(f"optimizer.{key}={o[key]} is not allowed for {name}: it must be {kind}.")
    if o.betas is not None and (len(o.betas) != 2 or not all(0 <= b < 1 for b in o.betas)):
        raise CnnbenchError(f"optimizer.betas={list(o.betas)} must be two numbers in [0, 1), e.g. [0.9,0.999].")

    # Scheduler
    sname = _value(s.name)
    if sname == "step":
        positive("scheduler.step_epochs", s.step_epochs, "a positive integer")
        positive("scheduler.gamma", s.gamma, "a positive factor, e.g. 0.1")
    if sname == "onecycle" and not (0 < s.pct_start < 1 and s.div_factor >= 1):
        raise CnnbenchError(f"scheduler.pct_start={s.pct_start} must be in (0, 1) and "
                            f"scheduler.div_factor={s.div_factor} at least 1.")
    if sname == "cosine" and (s.warmup_epochs < 0 or not 0 <= s.min_lr_ratio <= 1):
        raise CnnbenchError("scheduler.warmup_epochs must be >= 0 and scheduler.min_lr_ratio in [0, 1].")

    # The builder's own checks (option values such as model.alpha=0), on the meta device: no memory
    expected = m.num_classes if m.num_classes is not None else classes  # None: an image folder not found yet
    try:
        with torch.device("meta"):
            net = create_model(m.name, num_classes=expected or 2, in_channels=m.in_channels, **options)
    except (ValueError, TypeError, AssertionError) as e:
        raise CnnbenchError(f"{m.name} cannot be built with {', '.join(f'model.{k}={v}' for k, v in options.items())}: "
                            f"{e}. Change the value (conf/model/{m.name}.yaml lists the defaults).") from None

    # Input size against the architecture (an external network's: tried at this size)
    size = image_size_for(cfg)
    why = external.fits(info.builder, m.in_channels, size, **options) if info.external else None
    if why:
        raise CnnbenchError(f"dataset.image_size={size}{_size_source(cfg)} does not fit {model_label(m)}: at {size} px "
                            f"its forward pass raised {why}. Set dataset.image_size to a size it takes (it takes "
                            f"{info.min_input(in_channels=m.in_channels, **options)} px at the smallest, found by "
                            f"trying).")
    min_size = size if info.external else info.min_input(in_channels=m.in_channels, **options)
    if size < min_size:
        raise CnnbenchError(f"dataset.image_size={size}{_size_source(cfg)} is too small for {m.name}: it needs at "
                            f"least {min_size} px. Set dataset.image_size={min_size} or more (or leave it "
                            f"unset to use the smallest size the model takes).")
    why = info.size_check(size, **options) if info.size_check else None
    if why:
        raise CnnbenchError(f"dataset.image_size={size}{_size_source(cfg)} does not fit {m.name}: {why}.")
    if info.max_size and size > info.max_size:
        raise CnnbenchError(f"dataset.image_size={size}{_size_source(cfg)} is too large for {m.name}, which takes "
                            f"{info.max_size} px. Set dataset.image_size={info.max_size}.")
    if info.external:  # found by trying, as the zoo's are by their tests: a classifier's (B, classes)
        _check_output(net, m, size, expected)
    if d.batch_size == 1:  # every training batch has this size: can the model train on one image?
        try:  # a training-mode forward on the meta device: shapes only, milliseconds
            net.train()(torch.empty(1, m.in_channels, size, size, device="meta"))
        except Exception as e:  # BatchNorm: "Expected more than 1 value per channel when training"
            if "more than 1 value per channel" in str(e):
                raise CnnbenchError(f"dataset.batch_size=1: {m.name} cannot train on one image at a time, as its "
                                    f"BatchNorm normalises each channel over the batch and a {size} px image "
                                    f"leaves it one value ({str(e).split(', got ')[-1]}). Use dataset.batch_size=2 "
                                    f"or more (or a model.norm that does not use the batch, where {m.name} has "
                                    f"one).") from None

    p = cfg.profile
    if not p.batch_sizes or min(p.batch_sizes) < 1 or p.repeats < 1 or p.warmup < 0:
        raise CnnbenchError(f"profile.batch_sizes={list(p.batch_sizes)}, profile.repeats={p.repeats}, "
                            f"profile.warmup={p.warmup}: batch sizes and repeats must be at least 1 and "
                            f"warmup at least 0, e.g. profile.batch_sizes=[1,32,128].")

    # Device
    dev = t.device
    if not (dev in ("auto", "cpu", "cuda", "mps") or (dev.startswith("cuda:") and dev[5:].isdigit())):
        raise CnnbenchError(f"trainer.device={dev!r} is not a device. Use auto, cpu, cuda or cuda:N.")


def _check_task(info, dataset: str) -> None:
    """A model and a dataset of different tasks (a classifier on masks, a segmenter on labels)
    are refused, naming the datasets and models that fit."""
    from cnnbench.data import DATASET_TASKS
    from cnnbench.models import list_models

    served = DATASET_TASKS.get(dataset, ("classification",))
    if info.task in served:
        return
    holds = " and ".join(served)
    targets = "; ".join(get_task(t).targets for t in served)
    fitting = [n for n, tasks in DATASET_TASKS.items() if info.task in tasks]
    models = [n for n in list_models() if get_model_info(n).task in served]
    shown = ", ".join(models[:8]) + (", ..." if len(models) > 8 else "")
    datasets = ", ".join(f"dataset={n}" for n in fitting)
    ours = get_task(info.task)
    if info.external:  # custom, torchvision and timm networks are trained as classifiers
        raise CnnbenchError(f"model={info.name} trains its network as a classifier (output (batch, classes)), and "
                            f"dataset={dataset} holds {holds} data (its targets: {targets}). "
                            f"cnnbench's {holds} networks are {shown}; or use model={info.name} on a "
                            f"{info.task} dataset ({datasets}).")
    raise CnnbenchError(f"model={info.name} is a {info.task} network, and dataset={dataset} holds "
                        f"{holds} data (its targets: {targets}; not {ours.targets}). Choose a {info.task} dataset "
                        f"for it ({datasets}), or a {' or '.join(served)} model for this dataset ({shown}; "
                        f"`cnnbench models` lists each with its task).")


def _size_source(cfg: DictConfig) -> str:
    """Where dataset.image_size came from when the user may not have set it: ' (the default of
    dataset=X, in conf/dataset/X.yaml)' if the dataset's file sets it to this value, else ''. (When
    it is null, the native size raised to the model's minimum: said so.)"""
    from cnnbench.cli import CONF_DIR

    name = _value(cfg.dataset.name)
    if cfg.dataset.image_size is None:
        return (f" (dataset.image_size is unset: the images' {cfg.dataset.native_size} px, raised to the smallest "
                f"size {cfg.model.name} takes)")
    path = Path(CONF_DIR, "dataset", f"{name}.yaml")
    if path.is_file() and OmegaConf.load(path).get("image_size") == cfg.dataset.image_size:
        return f" (the default of dataset={name}, in conf/dataset/{name}.yaml)"
    return ""


# Settings that one choice of a group reads, and the choice (other choices leave them at the
# schema's default): set for another choice, they would be recorded and ignored, so they are refused.
_USED_ONLY_BY = {
    "scheduler.warmup_epochs": "scheduler=cosine", "scheduler.min_lr_ratio": "scheduler=cosine",
    "scheduler.step_epochs": "scheduler=step", "scheduler.gamma": "scheduler=step",
    "scheduler.pct_start": "scheduler=onecycle", "scheduler.div_factor": "scheduler=onecycle",
    "dataset.num_workers": "dataset=imagefolder",  # in-memory datasets use no workers
    "dataset.val_fraction": "dataset=imagefolder",  # the others come with their test split
    "dataset.canvas": "dataset=fashion_scenes", "dataset.max_items": "dataset=fashion_scenes",
    "dataset.decode": "dataset=imagefolder",  # in-memory datasets decode nothing while training
}


def _refuse_unused_settings(cfg: DictConfig) -> None:
    """A setting is honoured or refused, never recorded and ignored (_USED_ONLY_BY, and a
    mid-epoch checkpoint interval without checkpoints)."""
    from cnnbench.config import Config

    defaults = OmegaConf.structured(Config)
    for key, reader in _USED_ONLY_BY.items():
        group, choice = reader.split("=")
        value = OmegaConf.select(cfg, key)
        if _value(cfg[group].name) != choice and value != OmegaConf.select(defaults, key):
            raise CnnbenchError(f"{key}={value} does not apply to {group}={_value(cfg[group].name)}: only {reader} "
                                f"reads it. Remove {key}=..., or choose {reader}.")
    t = cfg.trainer
    if t.checkpoint_every_steps and not t.checkpoint:
        raise CnnbenchError(f"trainer.checkpoint_every_steps={t.checkpoint_every_steps} saves checkpoints inside an "
                            f"epoch, but trainer.checkpoint=false writes none. Remove one of the two.")


def _check_output(net: nn.Module, m, size: int, classes: Optional[int]) -> None:
    """An external network's output for a batch of 2 images, on the meta device: (2, classes), or a
    tuple whose first element is (auxiliary heads in training)."""
    try:
        with torch.no_grad():
            out = net.eval()(torch.empty(2, m.in_channels, size, size, device="meta"))
    except Exception:  # a forward the meta device cannot run (it reads a value): checked in training
        return
    logits = out[0] if isinstance(out, (tuple, list)) else out
    shape = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
    if isinstance(logits, torch.Tensor) and logits.dim() == 2 and logits.shape[0] == 2 and \
            (classes is None or logits.shape[1] == classes):
        return
    what = f"model.target={m.target}" if m.name == "custom" else f"model.arch={m.arch}"
    want = f"(2, {classes})" if classes else "(2, classes)"
    raise CnnbenchError(f"{what} returns {shape} for a batch of 2 images of {size} px; cnnbench trains classifiers, "
                        f"whose output is (batch, classes) = {want}. Give it a num_classes argument (cnnbench passes "
                        f"it), or make its last layer give {classes or 'one score per class'}.")


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "mps" and not torch.backends.mps.is_available():
        raise CnnbenchError("trainer.device=mps but this machine has no usable Apple GPU (MPS). Use "
                            "trainer.device=cpu (or auto).")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise CnnbenchError(f"trainer.device={name} but this machine has no usable CUDA GPU. "
                            f"Use trainer.device=cpu (or auto).")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise CnnbenchError(f"trainer.device={name} but only {torch.cuda.device_count()} GPU(s) exist.")
    return device


# ---------------------------------------------------------------------------------------------
# Objects from config
# ---------------------------------------------------------------------------------------------

def build_optimizer(model: nn.Module, o, fused: bool = False) -> torch.optim.Optimizer:
    """torch.optim from the config. Unless decay_norm_and_bias, weight decay skips 1-d tensors
    (norm scales and shifts, biases): shrinking them regularises nothing useful. fused: one kernel
    for the whole update, where PyTorch has one (SGD, Adam, AdamW on CUDA); else its foreach
    (multi-tensor) default."""
    cls, own = _OPTIMIZERS[_value(o.name)]
    params = [p for p in model.parameters() if p.requires_grad]
    if o.decay_norm_and_bias or o.weight_decay == 0:
        groups = [{"params": params, "weight_decay": o.weight_decay}]
    else:
        groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": o.weight_decay},
                  {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    kwargs = {k: (tuple(o[k]) if k == "betas" else o[k]) for k in own if o[k] is not None}
    if fused and cls in (torch.optim.SGD, torch.optim.Adam, torch.optim.AdamW):
        kwargs["fused"] = True
    return cls([g for g in groups if g["params"]], lr=o.lr, **kwargs)


def build_scheduler(optimizer, s, lr: float, epochs: int, steps_per_epoch: int):
    """A per-step schedule over the whole run."""
    total = epochs * steps_per_epoch
    name = _value(s.name)
    # Plain numbers, read once (as the dataset's are): the factor runs every step for every
    # parameter group, and each read of a config node costs tens of microseconds (scheduler.step
    # took 56 us, now 5).
    s = OmegaConf.to_object(s)
    if name == "onecycle":
        # Smith & Topin 2018, as torch's OneCycleLR anneals it: half a cosine up from lr / div_factor
        # to lr over pct_start of the run, half a cosine down to lr / (div_factor * 1e4). Written
        # as a factor so that runs of a few steps work (OneCycleLR divides by zero there).
        up = max(1, round(s.pct_start * total))

        def factor(step):
            start, end, t = ((1 / s.div_factor, 1.0, step / up) if step < up else
                             (1.0, 1 / (s.div_factor * 1e4), (step - up) / max(1, total - up)))
            return end + (start - end) * 0.5 * (1 + math.cos(math.pi * min(t, 1.0)))
    elif name == "cosine":
        warm = int(s.warmup_epochs * steps_per_epoch)

        def factor(step):
            if step < warm:
                return (step + 1) / warm
            progress = (step - warm) / max(1, total - warm)
            return s.min_lr_ratio + (1 - s.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))
    elif name == "step":
        def factor(step):
            return s.gamma ** (step // (s.step_epochs * steps_per_epoch))
    else:
        def factor(step):
            return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


# torch.compile modes that capture CUDA graphs: each step then marks its start (engine.StepConfig)
CUDA_GRAPH_MODES = ("reduce_overhead", "max_autotune")


def _prepare(t, seed: int, world: distributed.World = distributed.World()) -> torch.device:
    """The process-wide settings a run or a profile starts from: device (under torchrun, the GPU
    of this process's local rank), threads, determinism, cuDNN autotuning, seeds."""
    device = resolve_device(t.device)
    if world.active:
        if t.compile and _value(t.compile_mode) in CUDA_GRAPH_MODES:  # before joining the process group
            raise CnnbenchError(f"trainer.compile_mode={_value(t.compile_mode)} captures CUDA graphs on GPUs, "
                                f"which cnnbench does not use under torchrun (DDP's gradient all-reduce runs between "
                                f"the graph's pieces). Use trainer.compile_mode=default or "
                                f"max_autotune_no_cudagraphs.")
        distributed.init()
        if device.type == "cuda":
            device = torch.device("cuda", world.local_rank)
        if t.sync_bn and device.type != "cuda":
            raise CnnbenchError("trainer.sync_bn=true needs CUDA (PyTorch's SyncBatchNorm runs on GPUs). "
                                "Remove it for CPU training.")
    if device.type == "cuda":  # the current device: CUDA events, streams and bare .cuda() calls use it
        if device.index is None:  # trainer.device=cuda or auto: the GPU CUDA calls current
            device = torch.device("cuda", torch.cuda.current_device())
        torch.cuda.set_device(device)
    # Set either way: an earlier job of a sweep in this process may have turned it on. warn_only:
    # a layer with no deterministic CUDA kernel (adaptive average pooling's backward to 7x7, as in
    # VGG and AlexNet) warns, naming itself, instead of ending the run.
    torch.use_deterministic_algorithms(bool(t.deterministic), warn_only=True)
    if t.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.benchmark = device.type == "cuda" and not t.deterministic
    _seed_everything(seed)
    return device


def _use_cores(t, device: torch.device, resumed_with: Optional[int] = None) -> Optional[float]:
    """Set torch's CPU threads for this job (every job: an earlier one in this process may have
    changed them): trainer.threads; else the count a resumed run was started with (another count
    sums in another order: a resume would not be bit-identical); else measure.compute_threads for
    the cores and the other processes ready to run now, but not with trainer.deterministic=true,
    whose results must not depend on the machine's load. Returns those other processes' runnable
    threads (None where the OS does not tell)."""
    others = measure.other_runnable()
    threads = t.threads or resumed_with or measure.compute_threads(
        measure.cores_per_process(), 0 if t.deterministic else others or 0)
    torch.set_num_threads(threads)
    return others


def _busy_note(env: dict) -> Optional[str]:
    """The warning for a run that shared the CPU (other processes' threads ready to run, at its start
    or end, a quarter of the cores or more), or None."""
    others = max(env.get("others_start") or 0, env.get("others_end") or 0)
    if others < max(1, env["cpus"] / 4):
        return None
    return (f"The machine was busy: {others:g} thread(s) of other processes were ready to run (1-minute load average "
            f"{env.get('load_start')} at the start, {env.get('load_end')} at the end, on {env['cpus']} cores), so "
            f"this run's images/s and seconds understate what the machine does alone. cnnbench used {env['threads']} "
            f"thread(s) (trainer.threads=0 leaves the busy cores out). Compare speed only with runs on an idle "
            f"machine (`cnnbench compare --columns run,model,train_images_per_s,env.load_start`).")


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # CPU and every CUDA device


def _rng_state(device: torch.device) -> dict:
    """Every generator's state, as tensors and plain values (a weights_only checkpoint holds no
    NumPy objects). Of the GPUs, only the training device's: a resume may see other GPUs (one
    torchrun process of a 4-GPU run goes on on 1 GPU; another CUDA_VISIBLE_DEVICES)."""
    name, keys, pos, has_gauss, gauss = np.random.get_state()
    numpy_state = {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "gauss": float(gauss)}
    state = {"python": random.getstate(), "numpy": numpy_state, "torch": torch.get_rng_state()}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def _set_rng_state(state: dict, device: torch.device) -> None:
    random.setstate(state["python"])
    n = state["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda")
    if isinstance(cuda, (list, tuple)):  # older checkpoints: every visible GPU's, in order
        cuda = cuda[device.index or 0] if device.type == "cuda" and (device.index or 0) < len(cuda) else None
    if cuda is not None and device.type == "cuda":
        torch.cuda.set_rng_state(cuda, device)


# ---------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------

@dataclass
class Run:
    """Paths of one run directory."""

    dir: Path

    @property
    def results(self) -> Path:
        return self.dir / "results.json"

    @property
    def last(self) -> Path:
        return self.dir / "checkpoints" / "last.pt"

    @property
    def best(self) -> Path:
        return self.dir / "checkpoints" / "best.pt"


def resume_command(run_dir: Path, *extra: str) -> str:
    """The command that continues the run in run_dir, ready to paste into a shell."""
    return " ".join(["cnnbench", "resume", shlex.quote(str(run_dir)), *extra])


def check_run_dir(cfg: DictConfig, run_dir: Path, keep: bool = False) -> Optional[Dict[str, Any]]:
    """Refuse to start a fresh run over an existing one, to resume nothing, or to resume from a
    checkpoint that is unreadable, of another model or of another config. The CLI calls it before
    Hydra writes into the folder, so a refusal leaves the earlier run as it was (keep: hand the
    checkpoint read to train()'s call, see track.load_checkpoint). Returns the checkpoint when
    resuming."""
    run = Run(run_dir)
    if cfg.trainer.resume:
        if not run.last.is_file():
            raise CnnbenchError(
                f"trainer.resume=true but {run.last} does not exist. Resume names the run directory "
                f"of an earlier run: cnnbench resume <that directory> (or cnnbench train <its overrides> "
                f"hydra.run.dir=<that directory> trainer.resume=true).")
        state = track.load_checkpoint(run.last, cfg.model.name, keep=keep)
        changed = [k for k in _config_differences(state.get("config") or {}, _config_dict(cfg))
                   if k not in _RESUMABLE_CHANGES]
        if changed:
            raise CnnbenchError(
                f"{run.last} was saved by a run with another config ({', '.join(changed[:6])} differ); resuming "
                f"would mix two experiments. Resume it with its own settings: {resume_command(run.dir)} (only "
                f"trainer.epochs and how the run is logged may change, e.g. trainer.epochs=N), or start a new run.")
        _check_source(state.get("model_source"), cfg, run)
        if _value(cfg.dataset.name) == "imagefolder" and state.get("folder_reader", 1) != FOLDER_READER:
            raise CnnbenchError(
                f"{run.last} was trained by an earlier cnnbench's image-folder reader, which read some folders and "
                f"images otherwise (tool folders as classes, 16-bit images clipped, EXIF orientation and "
                f"dataset.train_size ignored): resuming would change the data under the run. Start a new run "
                f"(another hydra.run.dir), or resume it with the cnnbench that wrote it.")
        done = state["epoch"]
        if done >= cfg.trainer.epochs and not state.get("epoch_state"):
            raise CnnbenchError(
                f"{run.dir} has trained {done} epoch(s) and trainer.epochs={cfg.trainer.epochs}: there is nothing "
                f"left to resume. To train it longer, raise trainer.epochs: "
                f"{resume_command(run.dir, f'trainer.epochs={2 * done}')}")
        return state
    if run.results.exists() or run.last.exists():
        raise CnnbenchError(
            f"{run_dir} already holds a run; cnnbench will not overwrite it. Add trainer.resume=true "
            f"to continue it, or choose another hydra.run.dir.")


def model_label(m) -> str:
    """The network's name in logs and records: the zoo's name, or what an external one is
    (mynets.TinyNet, torchvision:convnext_tiny, timm:resnet50d)."""
    if m.name == "custom":
        return str(m.target)
    return f"{m.name}:{m.arch}" if m.name in ("torchvision", "timm") else m.name


def _model_source(cfg) -> Optional[Dict[str, Any]]:
    """external.source for the configured network (None for the zoo's)."""
    return external.source(cfg.model.name, model_options(cfg.model), cfg.model.num_classes, cfg.model.in_channels)


def _check_source(saved: Optional[Dict[str, Any]], cfg, run: "Run") -> None:
    """A custom network whose source file changed since the checkpoint is another network: refused."""
    if not saved or not saved.get("sha256"):
        return
    now = _model_source(cfg) or {}
    if now.get("sha256") != saved["sha256"]:
        was, now_is = saved["sha256"][:12], str(now.get("sha256"))[:12]
        raise CnnbenchError(
            f"{run.last} was saved by {saved.get('target')} from {saved.get('file')} (SHA-256 {was}…), and "
            f"{now.get('file')} is now another file (SHA-256 {now_is}…); resuming would mix two networks. Put the "
            f"file back as it was, or start a new run (another hydra.run.dir).")


def _config_differences(old: Dict[str, Any], new: Dict[str, Any]) -> list:
    """Dotted keys whose values differ between two resolved configs (bookkeeping keys aside; old
    may come from an earlier version of cnnbench, without its later settings)."""
    old, new = track.with_added_settings(old), track.with_added_settings(new)
    diffs, ignored = [], track.bookkeeping_keys(old, new)
    for section in sorted(set(old) | set(new)):
        a, b = old.get(section), new.get(section)
        if isinstance(a, dict) and isinstance(b, dict):
            diffs += [f"{section}.{k}" for k in sorted(set(a) | set(b))
                      if f"{section}.{k}" not in ignored and a.get(k) != b.get(k)]
        elif a != b:
            diffs.append(section)
    return diffs


def _set_aside(run: "Run") -> Path:
    """Move an earlier failed attempt's files into attempts/N/ (nothing is deleted)."""
    n = 1
    while (run.dir / "attempts" / str(n)).exists():
        n += 1
    dest = run.dir / "attempts" / str(n)
    dest.mkdir(parents=True)
    for p in run.dir.iterdir():
        if p.name == "checkpoints" or p.name == "results.json" or p.name.startswith("events.out.tfevents"):
            os.replace(p, dest / p.name)
    return dest


def earlier_record(cfg: DictConfig, run_dir: Path) -> Optional[Dict[str, Any]]:
    """The results.json of the run already in run_dir (None if there is none); refused if it
    cannot be read or if that run had another config. The CLI asks this of every job of a sweep
    before Hydra writes into any of their folders."""
    path = Run(Path(run_dir)).results
    if not path.is_file():
        return None
    try:
        before = json.loads(path.read_text())
        before["status"]
    except (OSError, ValueError, KeyError, TypeError):
        raise CnnbenchError(f"{path} exists but cannot be read; cnnbench will not overwrite it. "
                            f"Move it away, or run the job in another folder.") from None
    diffs = _config_differences(before.get("config") or {}, _config_dict(cfg))
    if diffs:
        raise CnnbenchError(
            f"{run_dir} holds an earlier run with a different config ({', '.join(diffs[:6])} differ); "
            f"cnnbench will not overwrite it. Run the sweep in a new folder (leave hydra.sweep.dir "
            f"at its default), or add trainer.resume=true to extend those runs.")
    return before


def reuse_run_dir(cfg: DictConfig, run_dir: Path, sweeping: bool):
    """What to do with what run_dir already holds, before train() starts. Returns the earlier
    results when the job is already done (skip it), else None after setting trainer.resume when
    an interrupted run is to be continued. In a sweep (or with trainer.skip_completed=true):
    completed -> skipped; interrupted or killed (running, with a checkpoint) -> resumed; failed ->
    its files moved to attempts/N/ and run again. Only the same config is reused this way."""
    run = Run(Path(run_dir))
    skip = cfg.trainer.skip_completed if cfg.trainer.skip_completed is not None else sweeping
    if cfg.trainer.resume or not run.results.is_file() or not (skip or sweeping):
        return None  # train() decides: fresh, explicit resume, or refusal to overwrite
    before = earlier_record(cfg, run.dir)
    status = before["status"]
    if status == "completed" and skip:
        log.info(f"Skipping {run.dir.name}: already completed (trainer.skip_completed).")
        return before
    # Stopped with epochs to go: resume. Killed after its last epoch, before the record was closed:
    # run again (below), as there is nothing left to resume.
    if status in ("interrupted", "running") and run.last.is_file() and (before.get("epochs") or 0) < cfg.trainer.epochs:
        log.info(f"{run.dir.name} was {status if status != 'running' else 'killed'} after "
                 f"{before.get('epochs') or 0} complete epoch(s): resuming it from {run.last.name}.")
        cfg.trainer.resume = True
        return None
    if status in ("failed", "diverged", "interrupted", "running"):
        log.info(f"Running {run.dir.name} again: it {status if status != 'running' else 'was killed'}"
                 f"; the earlier attempt is kept in {_set_aside(run)}.")
        return None
    return None  # completed and skip_completed=false: train() refuses to overwrite


def record_failure(cfg: DictConfig, run_dir: Path, message: str) -> None:
    """A sweep job refused before training (bad value, missing data) still leaves a results.json
    with status failed, so the comparison shows it; an existing record is never replaced."""
    run = Run(Path(run_dir))
    if run.results.exists() or run.last.exists():
        return
    run.dir.mkdir(parents=True, exist_ok=True)
    track.write_results(run.results, {
        "status": "failed", "error": message, "run_dir": str(run.dir.resolve()), "model": model_label(cfg.model),
        "dataset": _value(cfg.dataset.name), "optimizer": _value(cfg.optimizer.name), "seed": cfg.seed,
        "epochs": 0, "history": [], "config": _config_dict(cfg), "overrides": _job_overrides()})


def _job_overrides() -> Optional[list]:
    """The overrides Hydra composed this job from (as in its .hydra/overrides.yaml); None outside Hydra."""
    from hydra.core.hydra_config import HydraConfig

    return list(HydraConfig.get().overrides.task) if HydraConfig.initialized() else None


def _config_dict(cfg: DictConfig) -> Dict[str, Any]:
    """The config as plain data, resolved where it can be (a bad value may not resolve)."""
    try:
        return OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    except Exception:
        return OmegaConf.to_container(cfg, resolve=False, enum_to_str=True)


def _build_model(m, num_classes: int, input_shape: tuple, task: Task,
                 image: Optional[torch.Tensor] = None) -> tuple[nn.Module, Dict[str, Any]]:
    """The configured network on the CPU, with model.weights loaded and model.freeze applied, and
    what it costs per image at input_shape (C, H, W): parameters, MACs and activation bytes, for
    the record. image: a validation image (C, H, W), normalised, for a network whose MACs depend
    on the image (a detector's proposals: measure.count_macs)."""
    options = model_options(m)

    def build():  # lazy layers (an external network's) take their shapes from a first forward
        return external.materialize(create_model(m.name, num_classes=num_classes, in_channels=input_shape[0],
                                                 **options), input_shape)

    model = build()
    if m.weights or _value(m.freeze) == "backbone":
        heads = weights.final_layers(build, input_shape)
        if m.weights:
            reinit = weights.load_weights(model, str(Path(m.weights).expanduser()), heads)
            log.info(f"Loaded {m.weights}" + (f"; new {num_classes}-class classifier: {', '.join(reinit)}"
                                             if reinit else ""))
        if _value(m.freeze) == "backbone":
            weights.freeze_backbone(model, heads)
            log.info(f"Training only {', '.join(heads)}; the rest is frozen.")
    params, trainable, param_bytes, training_only = measure.count_params(model)
    return model, {
        "params": params, "trainable_params": trainable,  # for inference (no auxiliary heads)
        "training_only_params": training_only,  # e.g. GoogLeNet's auxiliary classifiers
        "macs": (macs := measure.count_macs(build, input_shape, task.cost_forward, image)),
        "flops": 2 * macs,  # per image, forward pass; FLOPs = 2 x MACs
        "activation_bytes": measure.activation_bytes(build, input_shape, forward=task.cost_forward),
        "param_bytes": param_bytes,
        "macs_note": task.macs_note(options, model)}  # where the MACs depend on the image (a detector's proposals)


def _new_record(cfg: DictConfig, run: "Run", task: Task, data, facts: Dict[str, Any], input_shape: tuple,
                num_classes: int, optimizer, device, world, amp: str, channels_last: bool, used: int,
                others_start) -> Dict[str, Any]:
    """results.json as a run starts: what runs, where, and what the model costs; the figures of
    the task (task.record_keys, best_<score>) empty until the first evaluation."""
    m, d, t = cfg.model, cfg.dataset, cfg.trainer
    return {
        "status": "running", "error": None, "run_dir": str(run.dir.resolve()),
        "model": model_label(m), "dataset": _value(d.name), "optimizer": _value(cfg.optimizer.name),
        "seed": cfg.seed, "task": task.name,
        "score": {"key": task.score, "higher_is_better": task.higher_is_better},  # the headline figure
        "model_source": _model_source(cfg),  # an external network's import path and file hash, or library
        **facts,  # params, MACs (and what they count) and activation bytes per image at input_shape (_build_model)
        "peak_memory_bytes": None, "peak_memory_kind": None, "train_images_per_s": None,
        "input_shape": list(input_shape), "num_classes": num_classes, "batch_size": d.batch_size,
        "world_size": world.size, "global_batch_size": d.batch_size * world.size,  # batch_size is per process
        "amp": amp, "channels_last": channels_last, "compile": t.compile,
        "compile_mode": _value(t.compile_mode) if t.compile else None,
        "cudnn_benchmark": torch.backends.cudnn.benchmark, "fused_optimizer": bool(optimizer.defaults.get("fused")),
        "compile_s": None, "data_wait_s": None, "compute_s": None, "mfu": None,
        "mfu_note": measure.mfu_note(device, amp),
        "train_images": data.train_size, "train_images_used": used,  # the split; per epoch
        "val_images": data.val_size, "data_source": data.source,
        "classes": data.classes,  # [{index, name, train_images, val_images}]
        "schedule_changes": [],  # resumes that changed trainer.epochs: the schedule recomputed (_extend_schedule)
        "data_bytes": data.bytes,  # in-memory datasets: held on the device, so part of peak_memory_bytes
        "data_notes": data.notes,  # what reading the data skipped, clipped or counted (COCO boxes), by split
        "epochs": 0, **{k: None for k in task.record_keys},  # the last evaluation's figures
        f"best_{task.score}": None, "best_epoch": None, "wall_time_s": 0.0, "history": [],
        "env": {**measure.environment(device), "others_start": others_start},
        "data_workers": data.workers,  # DataLoader worker processes (image folders; null: none used)
        "data_decode": data.decode,  # an image folder's JPEGs decoded by: cpu (PIL in the workers) | gpu; null: none
        "busy_note": None,  # set when other processes competed for the CPU (_busy_note)
        "config": _config_dict(cfg),
        "overrides": _job_overrides(),  # the command line's, in full (a sweep job's folder name may be cut)
    }


def _resumed_keys(task: Task) -> tuple:
    """What a checkpoint carries of results.json for a run of this task."""
    return (*_RESUMED_KEYS, *task.record_keys, f"best_{task.score}")


def train(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    """Train the composed configuration and write its record into run_dir. Returns the results."""
    validate(cfg)
    run = Run(Path(run_dir))
    checkpoint = check_run_dir(cfg, run.dir)  # the state to resume from, checked; None for a new run
    m, d, o, s, t = cfg.model, cfg.dataset, cfg.optimizer, cfg.scheduler, cfg.trainer
    world = distributed.world()  # torchrun's processes; one without it
    device = _prepare(t, cfg.seed, world)
    others_start = _use_cores(t, device, checkpoint.get("threads") if checkpoint else None)
    distributed.barrier()  # every process has checked the run directory before rank 0 writes to it
    main = world.main  # only this process writes results, TensorBoard and checkpoints

    # Data first: a missing dataset fails before anything is written.
    from cnnbench.data import build_data

    image_size = image_size_for(cfg)
    if d.image_size is None and image_size != d.native_size:
        log.info(f"Resizing {d.native_size} px images to {image_size} px, the size {m.name} takes "
                 f"(set dataset.image_size to choose).")
    info = get_model_info(m.name)
    d_conf = OmegaConf.to_object(d)
    if checkpoint is not None and _value(d.decode) == "auto" and checkpoint["results"].get("data_decode") != "gpu":
        # A run that began decoding with PIL (or before dataset.decode existed) goes on with PIL: auto must not
        # switch it to the GPU's decoder, whose pixels round otherwise, mid-run
        d_conf.decode = "cpu"
    train_loader, val_loader, data = build_data(d_conf, device, cfg.seed, image_size,
                                                world.rank, world.size, task=info.task)
    # model.num_classes follows dataset.num_classes unless set; the data may count otherwise for the
    # model's task (fashion_scenes: 11 with the background for segmentation, 10 objects for detection)
    num_classes = data.num_classes if m.num_classes in (None, d.num_classes) else m.num_classes
    task = get_task(info.task)
    log.info(f"{len(data.classes)} classes (index name: train/val {task.class_counts}): " + ", ".join(
        f"{c['index']} {c['name']}: {c['train_images']}/{c['val_images']}" for c in data.classes))
    input_shape = (data.in_channels, image_size, image_size)
    preview = getattr(val_loader, "preview", None)  # in-memory datasets: their first validation image
    model, facts = _build_model(m, num_classes, input_shape, task,
                                val_loader.normalize(preview(1)[0])[0].cpu() if preview else None)
    macs = facts["macs"]

    # Speed: each setting resolved here and recorded in results.json.
    # auto: bf16 on GPUs with bf16 tensor cores (Ampere, compute capability 8.0, and later). Not
    # torch.cuda.is_bf16_supported(): it also says yes where bf16 is only emulated (V100, T4), slowly.
    amp = _value(t.amp) if _value(t.amp) != "auto" else (
        "bf16" if device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0) else "off")
    channels_last = t.channels_last if t.channels_last is not None else device.type == "cuda"
    model = model.to(device, memory_format=torch.channels_last if channels_last else torch.preserve_format)
    if t.sync_bn and world.active:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # statistics over the global batch
    # `model` stays the plain module (counts, checkpoints, filters); `net` is what trains: wrapped
    # for data parallelism (gradients averaged over the processes) and compiled, as asked.
    net = model
    if world.active:
        net = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    if t.compile:
        # Forget code compiled for earlier jobs of a sweep in this process: past 8 versions of one
        # forward (dynamo's recompile limit) torch.compile would quietly fall back to eager.
        torch._dynamo.reset()
        net = torch.compile(net, mode=_value(t.compile_mode).replace("_", "-"))

    steps_per_epoch = min(len(train_loader), t.max_steps_per_epoch) if t.max_steps_per_epoch else len(train_loader)
    used = steps_per_epoch * d.batch_size * world.size  # images trained on per epoch: whole batches, the steps taken
    optimizer = build_optimizer(model, o, fused=device.type == "cuda")
    scheduler = build_scheduler(optimizer, s, o.lr, t.epochs, steps_per_epoch)
    amp_dtype = _AMP_DTYPES[amp]
    scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype == torch.float16)
    step_cfg = engine.StepConfig(device, amp_dtype, t.grad_clip, t.label_smoothing, t.max_steps_per_epoch,
                                 t.max_eval_steps, t.log_every_steps, _value(t.on_nan), channels_last, world.active,
                                 cuda_graphs=t.compile and device.type == "cuda"
                                 and _value(t.compile_mode) in CUDA_GRAPH_MODES, task=task, num_classes=num_classes,
                                 ignore_index=data.ignore_index, class_names=[c["name"] for c in data.classes])

    results = _new_record(cfg, run, task, data, facts, input_shape, num_classes, optimizer, device, world, amp,
                          channels_last, used, others_start)
    if getattr(model, "proposal_source", None):  # a two-stage detector: its MACs are evaluation's, at its proposals
        macs_trained = None
        results["mfu_note"] = ("no mfu: a two-stage detector's training forward runs other proposals (a sample of "
                               "them per image) than the evaluation MACs count, so 3 x MACs is not what it trains on")
    else:
        macs_trained = macs
    start_epoch, global_step, prior_wall, resumed_epoch = 0, 0, 0.0, None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["weights"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        scaler.load_state_dict(checkpoint["scaler"])
        _set_rng_state(checkpoint["rng"], device)
        start_epoch, global_step = checkpoint["epoch"], checkpoint["global_step"]
        if checkpoint.get("epoch_state"):  # saved inside an epoch: go on from that batch
            resumed_epoch = engine.EpochState(**checkpoint["epoch_state"])
        results.update(checkpoint["results"])
        _extend_schedule(checkpoint, optimizer, scheduler, s, t.epochs, global_step, results)
        prior_wall = results["wall_time_s"]
        where = f", batch {resumed_epoch.step + 1}" if resumed_epoch else ""
        log.info(f"Resuming {run.dir} at epoch {start_epoch + 1}{where} (step {global_step}).")

    if used < data.train_size:
        batch = f"{d.batch_size} x {world.size} processes" if world.active else d.batch_size
        why = (f"trainer.max_steps_per_epoch={t.max_steps_per_epoch} steps of dataset.batch_size={batch}"
               if used < data.train_used else f"batches are whole (dataset.batch_size={batch})")
        log.info(f"Training on {used:,} of the {data.train_size:,} training images each epoch: {why}, so "
                 f"{data.train_size - used:,} are left out, others each epoch (the order is shuffled).")
    log.info(f"{model_label(m)}: {facts['params']:,} parameters, {gmacs(macs)} GMACs/image at {image_size} px; "
             f"{_value(d.name)} ({data.train_size:,} train / {data.val_size:,} val, {data.source}) "
             f"on {device}")

    def record() -> None:
        if main:
            track.write_results(run.results, results)

    if main:
        check_writable(run.dir, *(_checkpoint_bytes(model, optimizer) if t.checkpoint else ()))
    record()
    tb = track.TensorBoard(run.dir, purge_step=global_step + 1 if t.resume else None) if main else track.NoBoard()
    if t.log_filters and not t.resume:
        tb.filters(model, global_step)  # the filters before training (a resumed run has them)
    grad_weights = measure.layer_weights(model) if t.log_grad_norms else {}
    measure.reset_peak_memory(device)
    last_saved = f"{run.last} (epoch {start_epoch}, step {global_step})" if t.resume else None

    def save_last(epochs_done: int, step: int, epoch_state=None, epoch_seconds: float = 0.0) -> None:
        """checkpoints/last.pt: everything needed to go on from here, mid-epoch included."""
        nonlocal last_saved
        if epoch_state is not None:
            engine.check_finite(epoch_state, step_cfg)  # never save weights a non-finite loss has spoiled
            epoch_state = {**epoch_state.state_dict(), "seconds": epoch_seconds}
        results["wall_time_s"] = prior_wall + time.perf_counter() - t_start
        if not main:
            return
        track.save_checkpoint(run.last, {
            "model": m.name, "weights": model.state_dict(), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "scaler": scaler.state_dict(),
            "epoch": epochs_done, "epoch_state": epoch_state, "global_step": step, "rng": _rng_state(device),
            "results": {k: results[k] for k in _resumed_keys(task)}, "config": results["config"],
            "model_source": results["model_source"], "threads": torch.get_num_threads(),
            "folder_reader": FOLDER_READER})
        last_saved = f"{run.last} (epoch {epochs_done}, step {step})"

    # Read once, not per step (a config node read costs tens of microseconds)
    save_every = t.checkpoint_every_steps if t.checkpoint else 0
    log_every = t.log_every_steps
    t_start = time.perf_counter()
    try:
        with _StopRequest(together=world.active) as stop:
            for epoch in range(start_epoch, t.epochs):
                epoch_state, resumed_epoch = resumed_epoch, None
                train_loader.set_epoch(epoch, start=epoch_state.step if epoch_state else 0)
                seconds_before = epoch_state.seconds if epoch_state else 0.0
                t_epoch = time.perf_counter()
                with _progress(t.progress, epoch, t.epochs, steps_per_epoch, d.batch_size,
                               epoch_state.step if epoch_state else 0) as bar:
                    def on_log(step, values):
                        norms = {f"grad_norm/{k}": v for k, v in measure.grad_norms(grad_weights).items()}
                        tb.scalars({**values, "lr": optimizer.param_groups[0]["lr"], **norms}, step)
                        bar.show(values["train/loss"])

                    def on_step(step, state) -> bool:
                        bar.advance()
                        if save_every and step % save_every == 0 and state.step < steps_per_epoch:
                            save_last(epoch, step, state, seconds_before + time.perf_counter() - t_epoch)
                        # torchrun: the processes decide together, at log steps (they meet there anyway)
                        return (not world.active or step % log_every == 0) and stop.requested(device)

                    stats = engine.train_one_epoch(net, train_loader, optimizer, scheduler, scaler, step_cfg,
                                                   global_step, on_log, on_step, epoch_state)
                global_step = stats["global_step"]
                if stats["stopped"]:  # a signal, inside the epoch: save the position and go
                    save_last(epoch, global_step, stats["state"], seconds_before + time.perf_counter() - t_epoch)
                    raise RunInterrupted(stop.signum)
                row = {"epoch": epoch + 1, "train_loss": stats["loss"],
                       f"train_{task.train_metric}": stats[task.train_metric],
                       **{f"val_{k}": None for k in task.history_keys},
                       "lr": optimizer.param_groups[0]["lr"], "seconds": stats["seconds"],
                       "images_per_s": stats["images_per_s"], "skipped_steps": stats["skipped_steps"],
                       "data_wait_s": stats["data_wait_s"], "compute_s": stats["seconds"] - stats["data_wait_s"]}
                if t.compile and epoch == start_epoch and stats["first_step_s"] is not None:
                    results["compile_s"] = stats["first_step_s"]  # the first step: tracing and compiling
                if (epoch + 1) % t.eval_every == 0 or epoch + 1 == t.epochs:
                    # The plain module: evaluation needs no gradient averaging, and a compiled model
                    # would compile a second graph for evaluation mode.
                    val = engine.evaluate(model, val_loader, step_cfg)
                    improved = _record_evaluation(task, val, row, results)
                    tb.scalars({f"val/{k}": val[k] for k in task.history_keys}, global_step)
                    if main:
                        for tag, image in task.images(model, val_loader, step_cfg).items():
                            tb.image(tag, image, global_step)
                else:
                    improved = False
                tb.scalars({"images_per_s": stats["images_per_s"]}, global_step)
                results["history"].append(row)
                # An image folder's unreadable files are not images of the split (each one's place in a batch
                # went to the next readable image), nor are short batches trained on (summed over processes)
                lost = torch.tensor([len(train_loader.unreadable), train_loader.short_batches * d.batch_size],
                                    dtype=torch.float64, device=device)
                unreadable, short = (int(v) for v in distributed.all_sum(lost).tolist())
                results.update(train_images=data.train_size - unreadable, train_images_used=used - short)
                _record_totals(results, macs_trained, device, amp, world.size)
                results["wall_time_s"] = prior_wall + time.perf_counter() - t_start
                log.info(_epoch_line(row, t.epochs, num_classes, task))
                if t.checkpoint:
                    save_last(epoch + 1, global_step)
                    if improved and main:
                        track.save_checkpoint(run.best, {"model": m.name, "weights": model.state_dict(),
                                                         "epoch": epoch + 1, task.score: results[f"best_{task.score}"],
                                                         "config": results["config"]})
                record()
                if epoch + 1 < t.epochs and stop.requested(device):  # a signal during evaluation
                    raise RunInterrupted(stop.signum)
    except KeyboardInterrupt as e:
        signum = getattr(e, "signum", signal.SIGINT)
        how = "SIGINT (Ctrl-C)" if signum == signal.SIGINT else signal.Signals(signum).name
        saved = f"; continue it from {last_saved} with: {resume_command(run.dir)}" if last_saved else ""
        results.update(status="interrupted", error=f"interrupted by {how}{saved}")
        record()
        tb.close()
        raise
    except engine.Diverged as e:
        saved = (f"The last good checkpoint is {last_saved}." if last_saved else "No checkpoint was saved before it.")
        message = (f"{m.name} diverged: {e}. {saved} Lower optimizer.lr (it is {o.lr}), add trainer.grad_clip=1.0, "
                   f"or set trainer.on_nan=skip_step to leave such steps out.")
        results.update(status="diverged", error=message, diverged_step=e.step)
        record()
        tb.close()
        raise RunFailed(message) from None
    except Exception as e:
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:  # nothing more can be written, the record neither
            try:
                tb.close()
            except OSError:
                pass
            saved = f"{last_saved} is whole; " if last_saved else ""
            raise RunFailed(f"The disk holding {run.dir} is full ({e.filename or 'writing the run'}). The run stopped: "
                            f"{saved}free some space, then continue it with: {resume_command(run.dir)} (or start "
                            f"again with trainer.checkpoint=false).") from None
        oom = _out_of_memory(e, device, d.batch_size)
        results.update(status="failed", error=oom or f"{type(e).__name__}: {e}")
        record()
        tb.close()
        if oom:
            raise RunFailed(oom) from None
        raise

    if world.active:
        results["weights_in_sync"] = distributed.weights_agree(model)  # DDP's promise, checked
    results["status"] = "completed"
    results["wall_time_s"] = prior_wall + time.perf_counter() - t_start
    results["env"].update(load_end=measure.load_average(), others_end=measure.other_runnable())
    results["busy_note"] = _busy_note(results["env"])
    if results["busy_note"]:
        log.warning(results["busy_note"])
    record()
    if t.log_filters:
        tb.filters(model, global_step)  # what training made of them
    tb.hparams(
        {"model": model_label(m), "norm": _value(m.norm) or "default", "dataset": _value(d.name),
         "image_size": image_size, "augment": d.augment, "optimizer": _value(o.name), "lr": o.lr,
         "weight_decay": o.weight_decay, "scheduler": _value(s.name), "batch_size": d.batch_size,
         "epochs": t.epochs, "amp": amp, "label_smoothing": t.label_smoothing, "seed": cfg.seed},
        {**task.hparams_metrics(results), "params": facts["params"], "gmacs": macs / 1e9,
         "peak_memory_mb": results["peak_memory_bytes"] / 2**20,
         "images_per_s": results["train_images_per_s"]})
    tb.close()
    return results


def _record_evaluation(task: Task, val: Dict[str, Any], row: Dict[str, Any], results: Dict[str, Any]) -> bool:
    """An evaluation's figures into the epoch's history row (val_<key>) and the record (the task's
    record_keys, val_images, best_<score> and best_epoch). Returns whether the score improved."""
    row.update({f"val_{k}": val[k] for k in task.history_keys})
    results.update({k: val[k] for k in task.record_keys},
                   val_images=val["images"])  # fewer than the split with max_eval_steps
    best, score = f"best_{task.score}", val[task.score]
    improved = score is not None and task.is_better(score, results[best])
    if improved:
        results.update({best: score, "best_epoch": row["epoch"]})
    return improved


def _record_totals(results: Dict[str, Any], macs: Optional[int], device: torch.device, amp: str,
                   world_size: int) -> None:
    """The run's figures over its history so far: epochs, skipped steps, the steady-state images/s
    (median over epochs), seconds waiting for data and computing, MFU (None without macs: the
    forward MACs of what trains) and peak memory."""
    history = results["history"]
    results["epochs"] = history[-1]["epoch"]
    results["skipped_steps"] = sum(r.get("skipped_steps") or 0 for r in history)
    rates = [r["images_per_s"] for r in history if r["images_per_s"]]
    results["train_images_per_s"] = statistics.median(rates) if rates else None  # steady state
    results["data_wait_s"] = sum(r.get("data_wait_s") or 0.0 for r in history)
    results["compute_s"] = sum(r.get("compute_s") or 0.0 for r in history)
    results["mfu"] = measure.mfu(macs, results["train_images_per_s"], device, amp, world_size)
    results["peak_memory_bytes"], results["peak_memory_kind"] = measure.peak_memory(device)


def _extend_schedule(checkpoint: dict, optimizer, scheduler, s, epochs: int, step: int, results: dict) -> None:
    """A resume that changes trainer.epochs changes the learning-rate schedule's length: onecycle
    and cosine are recomputed for the new number of epochs, so that the remaining steps follow a
    run planned for that many epochs from the start (the steps already taken followed the old
    plan; step and none do not depend on the length). The learning rate at this step is set from
    the new plan now, rather than jumping at the next step, and the change is logged and recorded
    in results["schedule_changes"]."""
    before = (checkpoint.get("config") or {}).get("trainer", {}).get("epochs")
    if before is None or before == epochs:
        return
    old_lr = optimizer.param_groups[0]["lr"]
    for group, base, factor in zip(optimizer.param_groups, scheduler.base_lrs, scheduler.lr_lambdas):
        group["lr"] = base * factor(scheduler.last_epoch)
    scheduler._last_lr = [group["lr"] for group in optimizer.param_groups]
    new_lr = optimizer.param_groups[0]["lr"]
    results["schedule_changes"] = [*(results.get("schedule_changes") or []), {
        "step": step, "epochs_before": before, "epochs_after": epochs, "lr_before": old_lr, "lr_after": new_lr}]
    name = _value(s.name)
    if name in ("onecycle", "cosine"):
        log.warning(f"trainer.epochs is now {epochs}, was {before}: the {name} schedule is recomputed for {epochs} "
                    f"epochs, from this step on as if the run had been planned for {epochs} from the start (the "
                    f"steps so far followed the {before}-epoch plan). At step {step} the learning rate goes from "
                    f"{old_lr:.3g} to {new_lr:.3g}. results.json records it in schedule_changes.")


def _epoch_line(row: dict, epochs: int, classes: int, task: Task = CLASSIFICATION) -> str:
    """One epoch's line of the log, with the task's figures (task.train_text, task.epoch_text)."""
    rate = f"{row['images_per_s']:,.0f} img/s" if row["images_per_s"] else "—"
    return (f"epoch {row['epoch']}/{epochs} | train loss {row['train_loss']:.4f} {task.train_text(row)}"
            f"{task.epoch_text(row, classes)} | {rate} | {row['seconds']:.1f} s")


class _StopRequest:
    """SIGINT (Ctrl-C) and SIGTERM (a scheduler's pre-emption) while training: the first asks the
    loop to stop after the current step, save checkpoints/last.pt and results.json, and exit; a
    second exits at once. Files are only ever replaced by rename, so neither leaves one half-written."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, together: bool = False):
        self.signum = None
        self.previous = {}
        self.together = together  # torchrun: a stop is decided by every process at once
        self.signals = self.SIGNALS
        if os.environ.get("SUBMITIT_EXECUTOR"):  # a submitit (SLURM) job: its time-out/pre-emption signal too
            self.signals += (signal.Signals[f"SIG{os.environ.get('SUBMITIT_PREEMPT_SIGNAL', 'USR2')}"],)

    def _handle(self, signum, frame) -> None:
        if self.signum is not None:
            os._exit(128 + signum)
        self.signum = signum
        os.write(2, b"\nStopping after this step to save the run; signal again to quit at once.\n")

    def requested(self, device: torch.device) -> bool:
        """Whether to stop now. Under torchrun, whether any process was signalled (a collective:
        every process calls it at the same step, so they all stop at that step)."""
        if not self.together:
            return self.signum is not None
        flag = torch.tensor([0 if self.signum is None else self.signum], device=device)
        signum = int(distributed.all_max(flag))
        if signum and self.signum is None:
            self.signum = signum
        return bool(signum)

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python's rule for handlers
            self.previous = {s: signal.signal(s, self._handle) for s in self.signals}
        return self

    def __exit__(self, *exc):
        for s, handler in self.previous.items():
            signal.signal(s, handler)
        return False


def _checkpoint_bytes(model: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[int, int]:
    """About what (last.pt, best.pt) will take in bytes: best.pt holds the weights and buffers;
    last.pt those plus the optimizer's state (momentum buffers, Adam's two moments: up to two
    tensors per parameter)."""
    weights = sum(t.numel() * t.element_size() for t in model.state_dict().values())
    slots = {"SGD": 1, "RMSprop": 2, "Adagrad": 1}.get(type(optimizer).__name__, 2)
    params = sum(p.numel() * p.element_size() for p in model.parameters())
    return weights + slots * params, weights


RECORD_BYTES = 4 * 2**20  # results.json, train.log, event files: a few MiB for a long run with filter images


def check_writable(run_dir: Path, last_bytes: int = 0, best_bytes: int = 0) -> None:
    """Before the first step: the run directory takes a small write, and its disk has room for
    what the checkpoints will hold at their largest: last.pt, the temporary copy written beside it
    while it is replaced, and best.pt. Checkpoints already there (a resumed run) are counted as
    written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        track.atomic_write_text(run_dir / ".cnnbench-write-test", "ok\n")
        (run_dir / ".cnnbench-write-test").unlink()
    except OSError as e:
        raise CnnbenchError(f"Cannot write to the run directory {run_dir}: {e.strerror or e}. Choose a "
                            f"writable place with hydra.run.dir=... (hydra.sweep.dir=... in a sweep).") from None
    on_disk = sum(p.stat().st_size for p in (run_dir / "checkpoints").glob("*.pt") if p.is_file())
    need = max(2 * last_bytes + best_bytes - on_disk, last_bytes) + RECORD_BYTES
    free = shutil.disk_usage(run_dir).free
    if free < need:
        what = "last.pt, its temporary copy while it is replaced, best.pt, and " if last_bytes else ""
        fix = ("Free some space, write elsewhere with hydra.run.dir=..., or set trainer.checkpoint=false." if last_bytes
               else "Free some space, or write elsewhere with hydra.run.dir=...")
        raise CnnbenchError(
            f"The disk holding {run_dir} has {_mib(free)} MiB free, but this run needs about {_mib(need)} MiB more "
            f"({what}{_mib(RECORD_BYTES)} MiB for results.json, the log and TensorBoard's files). {fix}")


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f}" if n < 10 * 2**20 else f"{n / 2**20:,.0f}"


def _out_of_memory(e: Exception, device: torch.device, batch_size: int) -> Optional[str]:
    """The message for an out-of-memory error, or None if e is something else."""
    if isinstance(e, torch.OutOfMemoryError) or "CUDA out of memory" in str(e):
        peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0
        total = torch.cuda.get_device_properties(device).total_memory if device.type == "cuda" else 0
        return (f"{device} ran out of memory at dataset.batch_size={batch_size} (peak "
                f"{peak / 2**20:,.0f} MiB allocated of {total / 2**20:,.0f} MiB). Lower dataset.batch_size, "
                f"or find the largest batch that fits with `cnnbench profile model=... "
                f"profile.find_max_batch=true` (it counts in fp32 with plain SGD and no data set on the device: "
                f"a guide, not a promise).")
    if isinstance(e, RuntimeError) and "can't allocate memory" in str(e):
        return (f"The machine ran out of memory at dataset.batch_size={batch_size}: {e}. Lower "
                f"dataset.batch_size (or dataset.image_size), or use a machine with more memory.")
    return None


class _progress:
    """A rich progress bar for one epoch, shown only on a terminal (no noise in logs or CI)."""

    def __init__(self, enabled: bool, epoch: int, epochs: int, steps: int, batch_size: int, done: int = 0):
        from rich.console import Console

        self.console = Console()
        self.enabled = enabled and self.console.is_terminal
        self.epoch, self.epochs, self.steps, self.batch_size = epoch, epochs, steps, batch_size
        self.done = done  # steps of this epoch done before a resume

    def __enter__(self):
        if self.enabled:
            from rich.progress import (BarColumn, MofNCompleteColumn, Progress, TextColumn,
                                       TimeRemainingColumn)

            images_per_s = TextColumn("{task.fields[rate]}")
            self.bar = Progress(TextColumn(f"epoch {self.epoch + 1}/{self.epochs}"), BarColumn(),
                                MofNCompleteColumn(), TextColumn("loss {task.fields[loss]}"), images_per_s,
                                TimeRemainingColumn(), console=self.console, transient=True)
            self.task = self.bar.add_task("train", total=self.steps, completed=self.done, loss="…", rate="")
            self.bar.start()
        return self

    def advance(self) -> None:
        if self.enabled:
            self.bar.advance(self.task)

    def show(self, loss: float) -> None:
        if self.enabled:
            speed = self.bar.tasks[0].speed  # steps/s over rich's recent window
            rate = f"{speed * self.batch_size:,.0f} img/s" if speed else ""
            self.bar.update(self.task, loss=f"{loss:.4f}", rate=rate)

    def __exit__(self, *exc):
        if self.enabled:
            self.bar.stop()
        return False


def check_profile_dir(run_dir: Path) -> None:
    """A profile goes into a folder that holds neither a profile nor a training run."""
    held = next((what for name, what in (("profile.json", "profile"), ("results.json", "run"))
                 if (run_dir / name).exists()), None)
    if held:
        raise CnnbenchError(f"{run_dir} already holds a {held}; cnnbench will not write a profile into it. Choose "
                            f"another hydra.run.dir, or leave it out (profiles go to outputs/profiles/).")


def profile(cfg: DictConfig, run_dir: Path) -> Dict[str, Any]:
    """`cnnbench profile`: what the composed model costs, measured without training or data.
    Writes profile.json and TensorBoard scalars (x axis: batch size) into run_dir."""
    validate(cfg)
    check_profile_dir(Path(run_dir))
    m, t, p = cfg.model, cfg.trainer, cfg.profile
    device = _prepare(t, cfg.seed)
    _use_cores(t, device)
    image_size = image_size_for(cfg)
    input_shape = (m.in_channels, image_size, image_size)
    info = get_model_info(m.name)
    task = get_task(info.task)
    num_classes = m.num_classes or info.default_classes  # imagefolder counts its folders; the paper's count
    options = model_options(m)

    def build():
        # R-CNN and Fast R-CNN at exactly model.proposals proposals: a random image gives Selective Search few
        net = external.materialize(create_model(m.name, num_classes=num_classes, in_channels=m.in_channels,
                                                **options), input_shape)
        every_proposal(net)
        return net

    model = build().to(device)
    params, trainable, param_bytes, training_only = measure.count_params(model)
    macs = measure.count_macs(build, input_shape, task.cost_forward)
    train_macs = measure.count_train_macs(build, input_shape, task.cost_forward)
    log.info(f"Profiling {m.name} at {'x'.join(map(str, input_shape))} on {device}: {params:,} parameters, "
             f"{gmacs(macs)} GMACs/image")
    rows = [measure.speed(model, input_shape, b, device, p.warmup, p.repeats, p.train_step, task.probe_loss,
                          task.cost_forward) for b in p.batch_sizes]
    peak, kind = measure.peak_memory(device)  # before find_max_batch's probes, which fill the device on purpose
    # CUDA: speed() starts the count afresh for each batch size, so the profile's peak is the largest of theirs
    peak = max([peak] + [row["peak_memory_bytes"] for row in rows if row["peak_memory_bytes"]])
    result = {
        "format": "cnnbench.profile", "format_version": 1, "model": model_label(m), "model_source": _model_source(cfg),
        "task": task.name, "input_shape": list(input_shape), "num_classes": num_classes, "device": str(device),
        "params": params, "trainable_params": trainable, "training_only_params": training_only,
        "param_bytes": param_bytes,
        "macs": macs, "flops": 2 * macs,  # per image, forward, evaluation mode
        "train_macs": train_macs, "train_flops": 2 * train_macs,  # per image, forward + backward
        "macs_note": task.macs_note(options, model),
        "proposals_note": every_proposal(model),  # R-CNN, Fast R-CNN: what their figures leave out
        "activation_bytes": measure.activation_bytes(build, input_shape, forward=task.cost_forward),  # per image, kept
        "batches": rows,  # latency and throughput per batch size (medians; warm-up excluded)
        "max_train_batch": (measure.max_train_batch(model, input_shape, device, loss=task.probe_loss,
                                                    forward=task.cost_forward)
                            if p.find_max_batch and device.type == "cuda" else None),
        "layers": measure.layer_table(build, input_shape) if p.layers else None,
        "env": measure.environment(device),
        "pid": os.getpid(),  # the process that measured: in a sweep, each job has its own
        "config": OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
    }
    result["peak_memory_bytes"], result["peak_memory_kind"] = peak, kind
    if p.find_max_batch and device.type != "cuda":
        log.info("profile.find_max_batch needs CUDA: a CPU's limit is the machine's memory, not a device's.")
    run_dir = Path(run_dir)
    track.atomic_write_text(run_dir / "profile.json", json.dumps(result, indent=2) + "\n")
    tb = track.TensorBoard(run_dir)
    for row in rows:
        tb.scalars({f"profile/{k}": row[k] for k in ("latency_ms", "infer_images_per_s", "train_images_per_s",
                                                     "peak_memory_bytes")}, row["batch_size"])
    tb.close()
    return result
