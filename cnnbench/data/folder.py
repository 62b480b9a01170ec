"""ImageFolder datasets (ImageNet layout: root/train/<class>/*.jpg, root/val/<class>/*.jpg), too big
for memory: decoded and cropped by DataLoader workers, copied to the device from pinned memory
without blocking, normalised there.

An image that cannot be decoded (truncated, corrupt, not an image) is left out of its batch and
counted; each pass over a split logs how many were skipped, with one path. A pass in which no
image at all can be read stops the run with that path."""

import itertools
import logging
import os
from pathlib import Path

import torch
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler, Subset
from torchvision import datasets

from cnnbench.data.memory import Normalize
from cnnbench.errors import CnnbenchError

log = logging.getLogger("cnnbench")


class SkippingImageFolder(datasets.ImageFolder):
    """torchvision's ImageFolder, except that a file that cannot be decoded gives (None, label,
    path) instead of raising in a worker and ending the run."""

    def __getitem__(self, index: int):
        path, target = self.samples[index]
        try:
            image = self.loader(path)  # PIL decodes here: truncated or corrupt files raise
        except Exception:  # OSError, SyntaxError, ValueError, DecompressionBombError, ...
            return None, target, path
        return self.transform(image), target, None


def collate_readable(samples):
    """Stack the readable images; the paths of the unreadable ones travel in the batch, since
    the workers that found them are other processes. -> ((B, C, H, W) uint8, (B,) labels, [path])"""
    good = [(x, y) for x, y, bad in samples if bad is None]
    unreadable = [bad for _, _, bad in samples if bad is not None]
    images = torch.stack([x for x, _ in good]) if good else torch.empty(0, dtype=torch.uint8)
    return images, torch.tensor([y for _, y in good], dtype=torch.long), unreadable


class FromBatch(Sampler):
    """This process's training batches, starting the pass at batch `start` (a resumed epoch)
    without loading the batches before it. The order comes from a DistributedSampler: one
    permutation per (seed, epoch), the same in every process, dealt out rank, rank + world, ...;
    so a step's global batch is the same set of images whatever the number of processes."""

    def __init__(self, shard: DistributedSampler, batch_size: int):
        self.shard, self.start = shard, 0
        self.batches = BatchSampler(shard, batch_size, drop_last=True)
        self.batch_size = batch_size  # per process

    def __iter__(self):
        return itertools.islice(iter(self.batches), self.start, None)

    def __len__(self) -> int:
        return len(self.batches)


class DeviceLoader:
    """Wraps a DataLoader of uint8 batches: moves each to the device and normalises it there."""

    def __init__(self, loader: DataLoader, mean, std, device: torch.device, train: bool, seed: int,
                 split: Path, world: int = 1):
        self.loader, self.device, self.train, self.seed = loader, device, train, seed
        self.split = split  # the folder the images come from, for messages
        self.normalize = Normalize(mean, std, device)
        self.num_samples = len(loader) * loader.batch_sampler.batch_size * world if train else None

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The next pass is epoch `epoch`, from batch `start`. The shuffle order of epoch e depends
        only on (seed, e), as for the in-memory loader."""
        if self.train:
            self.loader.batch_sampler.shard.set_epoch(epoch)
            self.loader.generator.manual_seed(self.seed * 1_000_003 + epoch)  # the workers' seeds
            self.loader.batch_sampler.start = start

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        read, skipped, example = 0, 0, None  # images decoded, images skipped, one skipped path
        try:
            for x, y, unreadable in self.loader:
                skipped += len(unreadable)
                example = example or next(iter(unreadable), None)
                if len(y) == 0:
                    continue  # every image of this batch was unreadable
                read += len(y)
                x = x.to(self.device, non_blocking=True)  # (B, C, H, W) uint8
                yield self.normalize(x), y.to(self.device, non_blocking=True)
            if skipped and not read:
                raise CnnbenchError(
                    f"None of the {skipped} images read from {self.split} could be decoded, e.g. {example} "
                    f"(truncated, corrupt or not an image). Check the files, or point dataset.root at a "
                    f"copy that opens.")
        finally:  # also when the epoch stops early (trainer.max_steps_per_epoch)
            if skipped and read:
                log.warning(f"{skipped} unreadable image(s) skipped in {self.split} this pass, e.g. "
                            f"{example} (truncated, corrupt or not an image).")


def build_imagefolder(conf, device: torch.device, seed: int, image_size: int, rank: int = 0, world: int = 1):
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
        train_set = SkippingImageFolder(str(root / "train"), transform=train_tf)
        val_set = SkippingImageFolder(str(root / "val"), transform=val_tf)
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
    # More workers than cores only adds switching (and PyTorch warns about it): cap them.
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    workers = min(conf.num_workers, cores)
    if workers < conf.num_workers:
        log.info(f"dataset.num_workers={conf.num_workers}, but this process may use {cores} core(s): "
                 f"{workers} DataLoader worker(s).")
    common = dict(num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0,
                  collate_fn=collate_readable)
    # The shuffle: epoch e's order is seeded with seed * 1_000_003 + e, as in the in-memory loader
    # (DistributedSampler adds the epoch). drop_last: every process gets the same number of images.
    shard = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                               seed=seed * 1_000_003, drop_last=True)
    gen = torch.Generator().manual_seed(seed)  # the workers' seeds
    train = DataLoader(train_set, batch_sampler=FromBatch(shard, conf.batch_size), generator=gen, **common)
    # Under torchrun each process evaluates images rank, rank + world, ...: each once, by one process
    # (not a DistributedSampler, which would pad the last round with repeated images).
    val_share = Subset(val_set, range(rank, len(val_set), world)) if world > 1 else val_set
    val = DataLoader(val_share, batch_size=conf.batch_size, shuffle=False, **common)
    if len(train) == 0:
        each = f" on each of {world} processes" if world > 1 else ""
        raise CnnbenchError(f"{root}/train has {len(train_set)} images, fewer than one batch of "
                            f"dataset.batch_size={conf.batch_size}{each}. Lower the batch size.")
    info = DataInfo(len(train_set.classes), 3, image_size, len(train) * conf.batch_size * world,
                    len(val_set), str(root))
    return (DeviceLoader(train, conf.mean, conf.std, device, True, seed, root / "train", world),
            DeviceLoader(val, conf.mean, conf.std, device, False, seed, root / "val"), info)
