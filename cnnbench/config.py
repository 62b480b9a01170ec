"""Typed schemas for every config group.

Hydra merges the YAML files in conf/ onto these dataclasses, so a misspelt key (`optimizer.lrr`)
or a value of the wrong type (`optimizer.lr=abc`) fails at composition, before any work. Every
field has a default and a comment with its unit; the YAML files state only what differs.
"""

from dataclasses import dataclass, field
from enum import Enum
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore


class Choice(str, Enum):
    """A config choice; prints as its value (run directory names, logs, results.json)."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)


class OnNan(Choice):
    stop = "stop"  # end the run with status diverged (checked once per log interval, no extra sync)
    skip_step = "skip_step"  # leave that update out and go on (reads the loss every step)


class Amp(Choice):
    auto = "auto"  # bf16 on a GPU with bf16 tensor cores (Ampere and later), else off
    off = "off"  # float32 throughout
    bf16 = "bf16"  # autocast to bfloat16, no loss scaling needed
    fp16 = "fp16"  # autocast to float16 with a gradient scaler


class CompileMode(Choice):  # torch.compile's modes, with _ for its -
    default = "default"  # Inductor's kernels, launched one by one from Python
    reduce_overhead = "reduce_overhead"  # also CUDA graphs: a step's launches replayed as one (small models)
    max_autotune = "max_autotune"  # also autotuned matrix-product kernels and CUDA graphs (long compile)
    max_autotune_no_cudagraphs = "max_autotune_no_cudagraphs"


class Norm(Choice):
    batch = "batch"
    layer = "layer"
    instance = "instance"
    group = "group"
    none = "none"


class Freeze(Choice):
    none = "none"  # train every layer
    backbone = "backbone"  # train only the classifier (a linear probe of the loaded features)


class Stem(Choice):
    imagenet = "imagenet"  # 7x7 stride-2 conv + 3x3 max-pool: 4x down-sampling, for 224 px
    small = "small"  # 3x3 stride-1 conv, no pool: for 28-32 px images (CIFAR, MNIST)


class OptimizerName(Choice):
    sgd = "sgd"
    adam = "adam"
    adamw = "adamw"
    adagrad = "adagrad"
    rmsprop = "rmsprop"


class SchedulerName(Choice):
    none = "none"
    step = "step"
    cosine = "cosine"
    onecycle = "onecycle"


class Decode(Choice):
    auto = "auto"  # gpu when the run trains on a CUDA GPU, else cpu
    cpu = "cpu"  # PIL in the DataLoader workers
    gpu = "gpu"  # the GPU's JPEG decoder (nvJPEG), crops and flips on the GPU; other files with PIL


class DatasetName(Choice):
    fashion_mnist = "fashion_mnist"
    mnist = "mnist"
    cifar10 = "cifar10"
    cifar100 = "cifar100"
    imagefolder = "imagefolder"
    synthetic = "synthetic"
    fashion_scenes = "fashion_scenes"  # segmentation (and detection): Fashion-MNIST items placed on canvases
    voc_segmentation = "voc_segmentation"  # segmentation: a PASCAL VOC folder (JPEGImages, SegmentationClass)
    coco_detection = "coco_detection"  # detection: image folders and COCO json annotations (train/, val/)


@dataclass
class ModelConf:
    name: str = "lenet5"  # a registered architecture: `cnnbench models` lists them
    num_classes: Optional[int] = "${dataset.num_classes}"  # output classes (from the dataset)
    in_channels: int = "${dataset.in_channels}"  # input image channels (from the dataset)
    # Architecture options. null means "the architecture's own default"; setting one that the
    # architecture does not have is an error, not silently ignored.
    norm: Optional[Norm] = None  # normalisation layer: batch | layer | instance | group | none
    stem: Optional[Stem] = None  # imagenet (4x early down-sampling) | small (none, for 28-32 px)
    dropout: Optional[float] = None  # dropout probability where the paper puts it, in [0, 1)
    classic: Optional[bool] = None  # LeNet-5: tanh and average pooling, as in LeCun 1998
    zero_init_residual: Optional[bool] = None  # ResNet: start each residual branch's last norm at 0
    alpha: Optional[float] = None  # MobileNet v1 width multiplier: alpha x the paper's channels
    separable: Optional[bool] = None  # MobileNet v1: depthwise-separable blocks (false: full 3x3 convs)
    aux_logits: Optional[bool] = None  # GoogLeNet: the two auxiliary classifiers (training only)
    conv_impl: Optional[str] = None  # LeNet-5: torch (cuDNN/oneDNN) | im2col (the textbook reference)
    padding: Optional[str] = None  # U-Net: valid (unpadded 3x3 convs, as in the paper) | same (output at input size)
    backbone: Optional[str] = None  # faster_rcnn, fast_rcnn: the zoo network it detects with: vgg16 (the paper)
    #                                 | resnet50 | mobilenet_v2; rcnn: any zoo classifier (alexnet, the paper's)
    anchor_sizes: Optional[List[float]] = None  # faster_rcnn: anchor scales, fractions of the image's shorter side
    anchor_ratios: Optional[List[float]] = None  # faster_rcnn: anchor aspect ratios, height / width
    proposals: Optional[int] = None  # faster_rcnn: region proposals kept per image in evaluation (the paper: 300);
    #                                  rcnn, fast_rcnn: Selective Search boxes kept per image (the papers: ~2,000)
    search: Optional[str] = None  # rcnn, fast_rcnn: Selective Search mode: fast (the papers') | quality
    warp: Optional[int] = None  # rcnn: px each proposal is warped to (null: the backbone's input size, 227 for AlexNet)
    grid: Optional[int] = None  # yolo_v1: S, cells a side (null: 7, the paper's; fewer on canvases under 112 px)
    boxes: Optional[int] = None  # yolo_v1: B, boxes predicted per cell (the paper: 2)
    width: Optional[float] = None  # yolo_v1: x the paper's channels and fc width (1.0: the paper's)
    # Networks from outside the zoo (cnnbench/models/external.py)
    target: Optional[str] = None  # model=custom: MODULE.NAME of an nn.Module class or a function returning one
    arch: Optional[str] = None  # model=torchvision | timm: the library's name for the network (convnext_tiny)
    args: Optional[Dict[str, Any]] = None  # custom, torchvision, timm: keyword arguments (+model.args.width=32)
    # Transfer learning (any architecture)
    weights: Optional[str] = None  # a .pth state dict to start from (torchvision's files load too)
    freeze: Freeze = Freeze.none  # none | backbone: train only the classifier


@dataclass
class DatasetConf:
    name: DatasetName = DatasetName.fashion_mnist  # which reader: see conf/dataset/
    root: str = "${oc.env:CNNBENCH_DATA,data}"  # directory holding (or receiving) the files
    download: bool = True  # fetch from the official mirrors when the files are missing
    batch_size: int = 128  # training images per step (evaluation uses the same)
    image_size: Optional[int] = None  # resize to this many px square; null = native size,
    #                                   raised to the model's minimum when smaller
    augment: bool = False  # random crop (padding 4) + horizontal flip, done on the device
    num_classes: Optional[int] = 10  # classes; null = count the class folders (imagefolder)
    in_channels: int = 1  # image channels
    native_size: int = 28  # px of the stored images (synthetic: the size generated)
    mean: List[float] = field(default_factory=lambda: [0.5])  # per-channel mean, 0-1 scale
    std: List[float] = field(default_factory=lambda: [0.5])  # per-channel std, 0-1 scale
    train_size: int = 0  # use N training images: the first N, or an image folder's fixed class-balanced draw;
    #                      0 = all (synthetic: how many to generate)
    val_size: int = 0  # the same for the validation images
    num_workers: Optional[int] = None  # DataLoader worker processes (imagefolder only); null = chosen for the
    #                                    cores and device (measure.data_workers)
    val_fraction: float = 0.0  # imagefolder: validate on this fraction of train/ (each class's, a fixed
    #                            draw) instead of val/, for folders that have none; 0 = val/
    decode: Decode = Decode.auto  # imagefolder: where JPEGs are decoded: auto (gpu on CUDA, else cpu) | cpu (PIL
    #                               in the DataLoader workers) | gpu (the GPU's decoder, crops on the GPU)
    canvas: int = 96  # fashion_scenes: px of each generated square canvas
    max_items: int = 4  # fashion_scenes: 1 to this many Fashion-MNIST items per canvas


@dataclass
class OptimizerConf:
    name: OptimizerName = OptimizerName.sgd  # torch.optim class: sgd|adam|adamw|adagrad|rmsprop
    lr: float = 0.1  # peak learning rate (the schedule scales it)
    weight_decay: float = 5e-4  # L2 penalty (decoupled for adamw)
    decay_norm_and_bias: bool = False  # false: norm weights and biases get no weight decay
    # Options only some optimizers have; null = not used by this optimizer.
    momentum: Optional[float] = None  # sgd, rmsprop: momentum factor
    nesterov: Optional[bool] = None  # sgd: Nesterov momentum
    betas: Optional[List[float]] = None  # adam, adamw: (beta1, beta2) moment decay rates
    eps: Optional[float] = None  # adam, adamw, adagrad, rmsprop: denominator term
    alpha: Optional[float] = None  # rmsprop: squared-gradient smoothing constant


@dataclass
class SchedulerConf:
    name: SchedulerName = SchedulerName.onecycle  # none | step | cosine | onecycle
    warmup_epochs: float = 0.0  # cosine: linear warm-up from 0 over this many epochs
    min_lr_ratio: float = 0.0  # cosine: final lr as a fraction of optimizer.lr
    step_epochs: int = 30  # step: multiply lr by gamma every this many epochs
    gamma: float = 0.1  # step: decay factor
    pct_start: float = 0.25  # onecycle: fraction of training spent rising to optimizer.lr
    div_factor: float = 25.0  # onecycle: starting lr = optimizer.lr / div_factor


@dataclass
class TrainerConf:
    epochs: int = 5  # passes over the training set
    device: str = "auto"  # auto (cuda when available, else cpu) | cpu | cuda | cuda:N
    amp: Amp = Amp.auto  # mixed precision: auto (bf16 on Ampere and later GPUs, else off) | off | bf16 | fp16
    channels_last: Optional[bool] = None  # NHWC memory format for conv nets; null = on for CUDA, off on CPU
    compile: bool = False  # torch.compile the model (its first step's compile time is reported apart)
    compile_mode: CompileMode = CompileMode.default  # default | reduce_overhead (CUDA graphs) | max_autotune
    #                                                  | max_autotune_no_cudagraphs; used with compile=true
    sync_bn: bool = False  # torchrun: BatchNorm statistics over the global batch (CUDA)
    grad_clip: float = 0.0  # max global gradient norm; 0 = no clipping
    label_smoothing: float = 0.0  # cross-entropy label smoothing, in [0, 1)
    eval_every: int = 1  # evaluate on the validation split every N epochs (and at the end)
    log_every_steps: int = 50  # TensorBoard train scalars (and gradient norms) every N optimizer steps
    log_grad_norms: bool = True  # per-layer gradient norms in TensorBoard at each log step
    log_filters: bool = True  # the first convolution's filters as an image, at the start and end
    max_steps_per_epoch: int = 0  # stop each epoch after N steps; 0 = the whole training set
    max_eval_steps: int = 0  # evaluate on the first N validation batches only; 0 = all of them
    skip_completed: Optional[bool] = None  # a job whose results.json says completed is not run
    #                                        again; null = true in sweeps (-m), false otherwise
    checkpoint: bool = True  # write checkpoints/last.pt each epoch and best.pt on improvement
    checkpoint_every_steps: int = 0  # also save last.pt every N steps inside an epoch; 0 = at epoch ends
    on_nan: OnNan = OnNan.stop  # a non-finite training loss: stop (status diverged) | skip_step
    resume: bool = False  # continue from checkpoints/last.pt in the run directory
    threads: int = 0  # CPU threads for torch; 0 = chosen: torch's default (one per core) less the cores other
    #                   processes take (measure.compute_threads); a resumed run keeps its own
    deterministic: bool = False  # deterministic kernels where PyTorch has them (slower); a layer without one warns
    progress: bool = True  # rich progress bar (shown only on a terminal)


@dataclass
class ProfileConf:
    """`cnnbench profile`: cost without training."""

    batch_sizes: List[int] = field(default_factory=lambda: [1, 32])  # images per timed batch
    warmup: int = 3  # untimed iterations before each timing (allocator, cuDNN autotuning)
    repeats: int = 10  # timed iterations per batch size; medians are reported
    train_step: bool = True  # also time forward + backward + optimizer step
    layers: bool = False  # print a per-layer table: output shape, parameters, MACs, activation bytes
    find_max_batch: bool = False  # CUDA: the largest training batch that fits in memory


@dataclass
class Config:
    model: ModelConf = field(default_factory=ModelConf)
    dataset: DatasetConf = field(default_factory=DatasetConf)
    optimizer: OptimizerConf = field(default_factory=OptimizerConf)
    scheduler: SchedulerConf = field(default_factory=SchedulerConf)
    trainer: TrainerConf = field(default_factory=TrainerConf)
    profile: ProfileConf = field(default_factory=ProfileConf)
    seed: int = 0  # seeds Python, NumPy and torch (weights, data order, augmentation)
    # Model options for some models only, so that one sweep can give each model its own:
    # +per_model.resnet20.stem=small (that model; it must have the option), +per_model.any.stem=small
    # (every model that has the option; the others run without it). Applied onto model.* (run.resolve).
    per_model: Dict[str, Dict[str, Any]] = field(default_factory=dict)


def register_configs() -> None:
    """Put the schemas where the YAML defaults lists can find them."""
    ConfigStore.instance().store(name="cnnbench_schema", node=Config)
