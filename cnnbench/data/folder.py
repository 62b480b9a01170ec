"""ImageFolder datasets (ImageNet layout: root/train/<class>/*.jpg, root/val/<class>/*.jpg), too big
for memory: decoded and cropped by DataLoader workers, copied to the device from pinned memory
without blocking, normalised there."""

import os
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from cnnbench.data.memory import Normalize
from cnnbench.errors import CnnbenchError


class DeviceLoader:
    """Wraps a DataLoader of uint8 batches: moves each to the device and normalises it there."""

    def __init__(self, loader: DataLoader, mean, std, device: torch.device, train: bool, seed: int):
        self.loader, self.device, self.train, self.seed = loader, device, train, seed
        self.normalize = Normalize(mean, std, device)
        self.num_samples = len(loader) * loader.batch_size if train else len(loader.dataset)

    def set_epoch(self, epoch: int) -> None:
        # The shuffle order of epoch e depends only on (seed, e), as for the in-memory loader.
        if self.train:
            self.loader.generator.manual_seed(self.seed * 1_000_003 + epoch)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for x, y in self.loader:
            x = x.to(self.device, non_blocking=True)  # (B, C, H, W) uint8
            yield self.normalize(x), y.to(self.device, non_blocking=True)


def build_imagefolder(conf, device: torch.device, seed: int, image_size: int):
    from torchvision import datasets
    from torchvision.transforms import v2 as T

    from cnnbench.data import DataInfo

    root = Path(os.path.expanduser(conf.root))
    for split in ("train", "val"):
        if not (root / split).is_dir():
            raise CnnbenchError(
                f"dataset=imagefolder needs {root / split}, a folder with one sub-folder of images "
                f"per class, and it does not exist. Set dataset.root to the folder holding train/ "
                f"and val/ (ImageNet layout).")
    to_uint8 = [T.PILToTensor()]
    if conf.augment:  # Szegedy et al. 2014 / torchvision's ImageNet recipe
        train_tf = T.Compose([T.RandomResizedCrop(image_size, antialias=True), T.RandomHorizontalFlip(), *to_uint8])
    else:
        train_tf = T.Compose([T.Resize(image_size * 256 // 224, antialias=True), T.CenterCrop(image_size), *to_uint8])
    val_tf = T.Compose([T.Resize(image_size * 256 // 224, antialias=True), T.CenterCrop(image_size), *to_uint8])
    try:
        train_set = datasets.ImageFolder(str(root / "train"), transform=train_tf)
        val_set = datasets.ImageFolder(str(root / "val"), transform=val_tf)
    except (FileNotFoundError, RuntimeError) as e:  # no class folders, or folders without images
        raise CnnbenchError(f"dataset=imagefolder could not read {root}: {e}. Each of train/ and "
                            f"val/ needs one sub-folder per class holding .jpg/.png images.") from None
    if train_set.classes != val_set.classes:
        raise CnnbenchError(f"{root}/train and {root}/val have different class folders "
                            f"({len(train_set.classes)} vs {len(val_set.classes)}). Make them match.")
    if conf.num_classes is not None and conf.num_classes != len(train_set.classes):
        raise CnnbenchError(f"{root}/train has {len(train_set.classes)} class folders but "
                            f"dataset.num_classes={conf.num_classes}. Set it to null (count them) "
                            f"or to {len(train_set.classes)}.")
    cuda = device.type == "cuda"
    workers = conf.num_workers
    common = dict(batch_size=conf.batch_size, num_workers=workers, pin_memory=cuda,
                  persistent_workers=workers > 0)
    gen = torch.Generator().manual_seed(seed)
    train = DataLoader(train_set, shuffle=True, drop_last=True, generator=gen, **common)
    val = DataLoader(val_set, shuffle=False, **common)
    if len(train) == 0:
        raise CnnbenchError(f"{root}/train has {len(train_set)} images, fewer than one batch of "
                            f"dataset.batch_size={conf.batch_size}. Lower the batch size.")
    info = DataInfo(len(train_set.classes), 3, image_size, len(train) * conf.batch_size,
                    len(val_set), str(root))
    return (DeviceLoader(train, conf.mean, conf.std, device, True, seed),
            DeviceLoader(val, conf.mean, conf.std, device, False, seed), info)
