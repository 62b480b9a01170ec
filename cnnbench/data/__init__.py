"""Dataset builders: find the files (or download them), and return train and validation loaders
that yield normalised (B, C, H, W) float batches on the training device.

    train, val, info = build_data(dataset_conf, device, seed, image_size, task="detection")
"""

import gzip
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

import numpy as np
import torch

from cnnbench.data.memory import in_memory_loaders
from cnnbench.errors import CnnbenchError


@dataclass
class DataInfo:
    num_classes: int
    in_channels: int
    image_size: int  # px, square, as the model sees it
    train_size: int  # images in the training split (after dataset.train_size)
    val_size: int  # images in the validation split used
    source: str  # where the files were read from ("generated" for synthetic)
    bytes: int = 0  # the uint8 images and labels held on the training device (in-memory datasets)
    classes: Optional[list] = None  # [{index, name, train_images, val_images}], for the log and the record
    train_used: int = 0  # images trained on per epoch: whole batches (all processes), the rest left out
    workers: Optional[int] = None  # DataLoader worker processes (image folders); None: no loader processes
    decode: Optional[str] = None  # where image folders' JPEGs are decoded: cpu (PIL in the workers) | gpu (on the
    #                               device, dataset.decode); None: no files decoded (in-memory datasets)
    task: str = "classification"  # what the targets are: (B,) labels | segmentation: (B, H, W) class per pixel
    #                               | detection: (M, 6) boxes [image in batch, class, x1, y1, x2, y2] px
    ignore_index: Optional[int] = None  # segmentation: the mask value that no loss or metric counts (255)
    notes: Optional[dict] = None  # counts worth recording, e.g. detection's boxes skipped or clipped on reading


# The tasks each dataset's targets serve (cnnbench/tasks/): a model of another task is refused up front.
DATASET_TASKS = {"fashion_mnist": ("classification",), "mnist": ("classification",),
                 "cifar10": ("classification",), "cifar100": ("classification",),
                 "imagefolder": ("classification",), "synthetic": ("classification",),
                 "fashion_scenes": ("segmentation", "detection"), "voc_segmentation": ("segmentation",),
                 "coco_detection": ("detection",)}  # the first: what build_data serves when not told


# ---------------------------------------------------------------------------------------------
# MNIST family: four IDX files, plain or gzipped
# ---------------------------------------------------------------------------------------------

_IDX_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
              "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
_MNIST_LIKE = {  # config name -> (torchvision class name, extra folders to look in)
    "fashion_mnist": ("FashionMNIST", ["fashion-mnist", "fashion_mnist", "/usr/share/datasets/fashion-mnist"]),
    "mnist": ("MNIST", ["mnist", "/usr/share/datasets/mnist"]),
}


def _idx_path(folder: Path, stem: str) -> Optional[Path]:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


_IDX_CACHE: dict = {}  # (path, size, mtime) -> tensor: a sweep's jobs decompress each file once


def _read_idx_cached(path: Path) -> torch.Tensor:
    stat = path.stat()
    key = (str(path.resolve()), stat.st_size, stat.st_mtime_ns)
    if key not in _IDX_CACHE:
        _IDX_CACHE[key] = read_idx(path)
    return _IDX_CACHE[key]  # callers copy before changing it (slicing, .to(device), resizing)


def read_idx(path: Path) -> torch.Tensor:
    """An IDX file (LeCun's MNIST format): 2 zero bytes, a type byte (0x08 = uint8), the number
    of dimensions, each dimension as a big-endian int32, then the data."""
    raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise CnnbenchError(f"{path} is not an uint8 IDX file (bad header). Delete it and let "
                            f"cnnbench download it again, or reinstall the dataset package.")
    ndim = raw[3]
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(shape)):
        raise CnnbenchError(f"{path} is truncated: expected {int(np.prod(shape))} bytes of data, "
                            f"found {data.size}. Delete it and download or install it again.")
    return torch.from_numpy(data.reshape(shape).copy())


def _load_mnist_like(name: str, root: Path, download: bool):
    tv_name, extra = _MNIST_LIKE[name]
    candidates = [root / tv_name / "raw"] + [root / e for e in extra[:-1]] + [root, Path(extra[-1])]
    for folder in candidates:
        paths = [_idx_path(folder, stem) for stem in _IDX_FILES]
        if all(paths):
            x_tr, y_tr, x_va, y_va = (_read_idx_cached(p) for p in paths)
            return (x_tr[:, None], y_tr.long(), x_va[:, None], y_va.long()), str(folder), _names(tv_name)
    if download:
        import torchvision.datasets as tvd

        try:  # torchvision's own downloader: writes root/<Name>/raw/*
            getattr(tvd, tv_name)(str(root), train=True, download=True)
            getattr(tvd, tv_name)(str(root), train=False, download=True)
        except Exception as e:  # offline, proxy, disk: report with the fixes below
            _missing(name, candidates, f"the download failed ({_one_line(e)})")
        return _load_mnist_like(name, root, download=False)
    _missing(name, candidates, "download is off (dataset.download=false)")


def _names(tv_name: str) -> List[str]:
    import torchvision.datasets as tvd

    return list(getattr(tvd, tv_name).classes)  # e.g. FashionMNIST: "T-shirt/top", "Trouser", ...


def _one_line(e: Exception) -> str:
    return f"{type(e).__name__}: {' '.join(str(e).split())}"


def _missing(name: str, tried: List[Path], why: str):
    fixes = ["point dataset.root at a folder holding the files (or set CNNBENCH_DATA)",
             "connect to the network and keep dataset.download=true",
             "or try cnnbench without files: dataset=synthetic"]
    if name == "fashion_mnist":
        fixes.insert(0, "install Debian's copy: apt-get install dataset-fashion-mnist")
    raise CnnbenchError(
        f"Dataset {name!r} not found, and {why}. Looked in: {', '.join(str(p) for p in tried)}. "
        f"Fix: {'; '.join(fixes)}.")


# ---------------------------------------------------------------------------------------------
# CIFAR: torchvision's reader over the python pickles
# ---------------------------------------------------------------------------------------------

def _load_cifar(name: str, root: Path, download: bool):
    import torchvision.datasets as tvd

    cls = tvd.CIFAR10 if name == "cifar10" else tvd.CIFAR100
    folder = root / cls.base_folder
    try:
        tr = cls(str(root), train=True, download=download)
        va = cls(str(root), train=False, download=download)
    except RuntimeError as e:  # torchvision: "Dataset not found or corrupted."
        _missing(name, [folder], f"torchvision could not read it ({_one_line(e)})")
    except Exception as e:  # urllib errors when offline
        _missing(name, [folder], f"the download failed ({_one_line(e)})")

    def to_tensors(ds):  # (N, 32, 32, 3) uint8 numpy -> (N, 3, 32, 32)
        return torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous(), torch.tensor(ds.targets)

    return (*to_tensors(tr), *to_tensors(va)), str(folder), list(tr.classes)


# ---------------------------------------------------------------------------------------------
# Synthetic: random images whose label is learnable
# ---------------------------------------------------------------------------------------------

def _make_synthetic(num_classes: int, channels: int, size: int, n_train: int, n_val: int, seed: int,
                    device: torch.device = torch.device("cpu")):
    """Each class has a fixed random pattern; an image is its class pattern plus fresh noise, so a
    model can learn the labels (a training run on it shows a falling loss). Drawn on the training
    device: 15,000 images at 224 px take seconds on a GPU, a minute on a CPU. The same seed gives
    the same images on a CPU every time, and on the same GPU model (a GPU's generator draws other
    numbers than a CPU's, and may differ between GPU models)."""
    gen = torch.Generator(device=device).manual_seed(seed)
    patterns = torch.randn(num_classes, channels, size, size, generator=gen, device=device)

    def split(n):
        y = torch.randint(0, num_classes, (n,), generator=gen, device=device)
        x = torch.empty(n, channels, size, size, dtype=torch.uint8, device=device)
        for i in range(0, n, 1024):  # in chunks: float32 for 1,024 images at a time (2 x 0.6 GB at 224 px)
            noise = torch.randn(len(y[i:i + 1024]), channels, size, size, generator=gen, device=device)
            x[i:i + 1024] = noise.mul_(40).add_(patterns[y[i:i + 1024]], alpha=40).add_(128).round_().clamp_(0, 255)
        return x, y

    return (*split(n_train), *split(n_val)), "generated", None


# ---------------------------------------------------------------------------------------------
# The door
# ---------------------------------------------------------------------------------------------

def build_data(conf, device: torch.device, seed: int, image_size: int, rank: int = 0,
               world: int = 1, task: Optional[str] = None) -> Tuple[object, object, DataInfo]:
    """conf: a cnnbench.config.DatasetConf; image_size: the px the model gets (already checked
    against the model's minimum); rank, world: this process's share under torchrun; task: the
    model's task, which picks the targets of a dataset that serves several (fashion_scenes: masks or
    boxes); None: the dataset's first in DATASET_TASKS. Returns (train_loader, val_loader, info)."""
    name = getattr(conf.name, "value", conf.name)
    served = DATASET_TASKS.get(name, ("classification",))
    task = task or served[0]
    if task not in served:
        fitting = ", ".join(f"dataset={n}" for n, tasks in DATASET_TASKS.items() if task in tasks) or "none yet"
        raise CnnbenchError(f"dataset={name} holds {' and '.join(served)} data, not {task} data. Choose a {task} "
                            f"dataset ({fitting}), or a {served[0]} model for dataset={name}.")
    if name == "imagefolder":
        from cnnbench.data.folder import build_imagefolder

        return build_imagefolder(conf, device, seed, image_size, rank, world)
    if name == "fashion_scenes":
        from cnnbench.data.scenes import build_fashion_scenes, build_fashion_scenes_detection

        builder = build_fashion_scenes_detection if task == "detection" else build_fashion_scenes
        return builder(conf, device, seed, image_size, rank, world)
    if name == "coco_detection":
        from cnnbench.data.coco import build_coco_detection

        return build_coco_detection(conf, device, seed, image_size, rank, world)
    if name == "voc_segmentation":
        from cnnbench.data.voc import build_voc_segmentation

        return build_voc_segmentation(conf, device, seed, image_size, rank, world)
    root = Path(os.path.expanduser(conf.root))
    if name in _MNIST_LIKE:
        tensors, source, names = _load_mnist_like(name, root, conf.download)
    elif name in ("cifar10", "cifar100"):
        tensors, source, names = _load_cifar(name, root, conf.download)
    elif name == "synthetic":
        tensors, source, names = _make_synthetic(conf.num_classes, conf.in_channels, image_size,
                                          conf.train_size or 1024, conf.val_size or 256, seed, device)
    else:
        raise CnnbenchError(f"Unknown dataset {name!r}.")
    x_tr, y_tr, x_va, y_va = tensors
    if conf.train_size:
        x_tr, y_tr = x_tr[:conf.train_size], y_tr[:conf.train_size]
    if conf.val_size:
        x_va, y_va = x_va[:conf.val_size], y_va[:conf.val_size]
    if x_tr.shape[1] != conf.in_channels:
        raise CnnbenchError(f"Dataset {name!r} has {x_tr.shape[1]}-channel images but "
                            f"dataset.in_channels={conf.in_channels}. Remove the override.")
    train, val = in_memory_loaders(x_tr, y_tr, x_va, y_va, conf, device, seed, image_size, rank, world)
    x_tr, y_tr, x_va, y_va = train.images, train.labels, val.images, val.labels  # as held on the device
    labels = max(int(y_tr.max()), int(y_va.max()) if len(y_va) else 0) + 1  # classes the labels name
    n_classes = labels if conf.num_classes is None else conf.num_classes
    if n_classes < labels:
        raise CnnbenchError(f"dataset.num_classes={conf.num_classes}, but the labels of dataset={name} go up to "
                            f"{labels - 1}: {labels} classes. Leave dataset.num_classes at its default ({labels}).")
    names = (names or [])[:n_classes] + [str(i) for i in range(len(names or []), n_classes)]
    counts = [torch.bincount(y, minlength=n_classes).tolist() for y in (y_tr, y_va)]
    classes = [{"index": i, "name": n, "train_images": counts[0][i], "val_images": counts[1][i]}
               for i, n in enumerate(names)]
    held = sum(t.numel() * t.element_size() for t in (x_tr, y_tr, x_va, y_va))
    return train, val, DataInfo(n_classes, conf.in_channels, image_size, len(x_tr), len(x_va), source, held,
                                classes, train.num_samples)
