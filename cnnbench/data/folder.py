"""ImageFolder datasets (ImageNet layout: root/train/<class>/*.jpg, root/val/<class>/*.jpg), too big
for memory: decoded and cropped by DataLoader workers, copied to the device from pinned memory
without blocking, normalised there.

What enters the model is what an image viewer shows of what the user has:
- Class folders are the sub-folders of train/ and val/, less those that tools, notebooks, version
  control and operating systems leave behind (`ignored`); files inside such folders, and hidden
  files, are not images either. Every run logs the class list and records it (`classes`).
- Every pixel type PIL reads is scaled to 0-255 by its full range (`to_8bit`): 16-bit and 32-bit
  images are never clipped. The EXIF orientation a camera writes is applied.
- Each training image's random crop and flip are drawn from a generator seeded with (seed, epoch,
  image index): the same draws whatever the number of DataLoader workers or processes, and
  wherever a run was resumed.
- An image that cannot be decoded (truncated, corrupt, not an image) is counted and logged with
  one path and why. In training it is replaced by the next readable image of the split, so every
  batch keeps its size (BatchNorm cannot train on one image); in evaluation it is left out. A
  pass in which no image at all can be read stops the run with that path.
- dataset.decode=gpu (jpeg.py): the same files, order, crops and unreadable files; the JPEGs
  decoded, cropped and flipped on the GPU instead of by PIL in the workers."""

import contextlib
import itertools
import logging
import os
from pathlib import Path
from typing import List, Sequence

import numpy as np
import torch
from PIL import Image, ImageOps
from torch.utils.data import BatchSampler, DataLoader, DistributedSampler, Sampler, Subset
from torchvision import datasets
from torchvision.datasets.folder import IMG_EXTENSIONS, has_file_allowed_extension

from cnnbench import measure
from cnnbench.data.memory import Normalize
from cnnbench.errors import CnnbenchError

log = logging.getLogger("cnnbench")

# ---------------------------------------------------------------------------------------------
# What is a class, what is an image
# ---------------------------------------------------------------------------------------------

# Names that tools leave beside the data: never a class, never an image. Besides these, every name
# starting with "." (.ipynb_checkpoints, .git, .svn, .DS_Store, macOS's ._* copies, .Trash-1000)
# or "__" (__MACOSX from zip files, __pycache__).
IGNORED_NAMES = {"@eaDir",  # Synology's thumbnails
                 "$RECYCLE.BIN", "System Volume Information", "Thumbs.db", "desktop.ini",  # Windows
                 "lost+found"}  # ext2/3/4 file systems


def ignored(name: str) -> bool:
    """Whether a file or folder name is one that tools leave behind, not data."""
    return name.startswith((".", "__")) or name in IGNORED_NAMES


def class_folders(split: Path) -> List[str]:
    """The class names of a split (train/ or val/): its sub-folders, sorted, less the ignored ones."""
    return sorted(e.name for e in os.scandir(split) if e.is_dir() and not ignored(e.name))


# ---------------------------------------------------------------------------------------------
# Pixels: any depth PIL reads, scaled by its range; the orientation the file declares
# ---------------------------------------------------------------------------------------------

def _pixel_range(im: Image.Image, a: np.ndarray):
    """(lo, hi, a) of a 16- or 32-bit image: the range its pixel type spans, as the file declares
    it where PIL keeps that (TIFF's BitsPerSample, SampleFormat and SMin/SMaxSampleValue tags;
    a PNG is at most 16 bits). im: the image as opened (a copy has no tags). Raises ValueError
    for float pixels outside the range."""
    tags = getattr(im, "tag_v2", {})

    def tag(number, default):
        value = tags.get(number, default)
        return value[0] if isinstance(value, tuple) else value

    if im.mode.startswith("I;16"):  # 16-bit unsigned grey, however stored (I;16, I;16B, ...)
        return 0, 65535, a
    if im.mode == "I":  # 32-bit signed in PIL; 16-bit PNGs were read as I by Pillow before 10.0
        bits = 16 if im.format == "PNG" else int(tag(258, 32))
        if im.format == "PNG" or tag(339, 1) == 1:  # SampleFormat 1: unsigned
            return 0, 2**bits - 1, a.view(np.uint32) if bits == 32 else a
        return -2**(bits - 1), 2**(bits - 1) - 1, a
    lo, hi = float(tag(340, 0.0)), float(tag(341, 1.0))  # F: float pixels, 0-1 unless the file says
    if a.size and not (lo <= float(a.min()) and float(a.max()) <= hi):
        raise ValueError(f"32-bit float pixels from {float(a.min()):g} to {float(a.max()):g}, outside "
                         f"{lo:g}-{hi:g}; save it as 0-1 floats or as 8/16-bit integers")
    return lo, hi, a


def to_8bit(im: Image.Image, opened: Image.Image = None) -> Image.Image:
    """A PIL image with 8 bits per channel. 16-bit grey (I;16*), 32-bit integer (I) and 32-bit float
    (F) pixels are scaled from the range of their type to 0-255 and rounded: a 16-bit pixel of
    30,146 (46% grey) becomes 117. PIL's own convert("RGB") clips such pixels at 255, so that a
    16-bit image arrives white. Modes of 8 bits or fewer a channel (1, L, P, RGB, RGBA, CMYK, ...;
    PIL reads 16-bit colour PNGs as RGB, keeping each value's high byte) are returned unchanged.
    opened: the image as read from its file, whose tags tell the range (im may be a turned copy)."""
    if not (im.mode.startswith("I") or im.mode == "F"):
        return im
    lo, hi, a = _pixel_range(opened or im, np.asarray(im))
    scaled = np.rint((a.astype(np.float64) - lo) * (255.0 / (hi - lo)))
    return Image.fromarray(scaled.astype(np.uint8), "L")


def load_image(path: str, channels: int) -> Image.Image:
    """The image a viewer shows: EXIF orientation applied (a phone photo held upright, stored
    sideways with Orientation 6, comes out upright), pixels scaled by their range (to_8bit), as RGB
    (channels=3) or grey (channels=1). Raises what PIL raises for a file it cannot decode."""
    with Image.open(path) as im:
        upright = ImageOps.exif_transpose(im)  # Pillow's reading of EXIF tag 274 (Orientation)
        return to_8bit(upright, im).convert("RGB" if channels == 3 else "L")


def decoded(path, fix: str) -> Image.Image:
    """The image at path, decoded as stored (no EXIF rotation: masks and boxes were drawn on the
    stored pixels); CnnbenchError naming the file and `fix` (what to do) when it cannot be:
    truncated, corrupt, not an image (PIL's UnidentifiedImageError is an OSError)."""
    try:
        with Image.open(path) as im:
            im.load()
            return im
    except OSError as e:
        raise CnnbenchError(f"{path} cannot be read as an image ({type(e).__name__}: {' '.join(str(e).split())}). "
                            f"{fix}") from None


def draw_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of one image's random transforms in one epoch: a function of (seed, epoch, index)
    alone, well mixed (NumPy's SeedSequence), 64 bits."""
    return int(np.random.SeedSequence([seed, epoch, index]).generate_state(1, np.uint64)[0])


@contextlib.contextmanager
def seeded(seed: int, epoch: int, index: int):
    """Inside: the CPU generator seeded with draw_seed(seed, epoch, index); after: as it was. Only
    the CPU's: torch.manual_seed would also reseed the GPU's, whose dropout draws are the run's
    where images are read in the training process (dataset.num_workers=0, or dataset.decode=gpu)."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(draw_seed(seed, epoch, index))
        yield


REFILL_TRIES = 16  # training: readable images looked for after an unreadable one, in split order
# What this reader makes of a folder; 1, before it: tool folders were classes, 16-bit images were
# clipped, EXIF orientation and dataset.train_size/val_size were ignored, augmentation was drawn
# per worker. A checkpoint records it: a resume does not change the data under a run.
READER_VERSION = 2


class FolderSplit(datasets.ImageFolder):
    """One split of an image folder: torchvision's ImageFolder, reading only what `ignored` lets
    through, with load_image, as `channels` channels.

    An item is asked for by index, or by (index, epoch) in training: the random transforms are then
    drawn from draw_seed(seed, epoch, index), in whichever process or worker reads it. refill
    (training): a file that cannot be decoded is replaced by the next readable one of the split
    (up to REFILL_TRIES files). Returns (image (C, H, W) uint8 or None if none was found, label,
    ["path (why)" of each unreadable file met])."""

    def __init__(self, root: Path, transform, channels: int, seed: int, refill: bool):
        self.channels, self.seed, self.refill = channels, seed, refill

        def is_image(path: str) -> bool:
            inside = Path(path).relative_to(root).parts  # <class>/.../<file>
            return has_file_allowed_extension(path, IMG_EXTENSIONS) and not any(ignored(p) for p in inside)

        super().__init__(str(root), transform=transform, is_valid_file=is_image)

    def find_classes(self, directory: str):
        classes = class_folders(Path(directory))
        if not classes:
            raise FileNotFoundError(f"no class folders in {directory}")
        return classes, {name: i for i, name in enumerate(classes)}

    def keep(self, indices: Sequence[int]) -> None:
        """Use only these images of the split (dataset.train_size / val_size)."""
        self.samples = self.imgs = [self.samples[i] for i in indices]
        self.targets = [label for _, label in self.samples]

    def __getitem__(self, key):
        index, epoch = key if isinstance(key, tuple) else (key, None)
        return self.item(index, epoch)

    def item(self, index: int, epoch=None, start: int = None, stop: int = None):
        """The item at index, from the files start (default: index) to stop (default: as far as
        refill goes). dataset.decode=gpu (jpeg.py) reads a file at a time, and carries on after
        a file that the GPU's decoder failed on."""
        unreadable = []
        for j in range(index if start is None else start, stop or index + (REFILL_TRIES if self.refill else 1)):
            path, label = self.samples[j % len(self.samples)]
            try:
                image = load_image(path, self.channels)
                break
            except Exception as e:  # OSError, SyntaxError, ValueError, DecompressionBombError, ...
                unreadable.append(f"{path} ({_why(e, path)})")
        else:
            return None, self.targets[index], unreadable
        if epoch is None:
            return self.transform(image), label, unreadable
        with seeded(self.seed, epoch, index):
            return self.transform(image), label, unreadable


def _why(e: Exception, path: str) -> str:
    """What PIL said, in one short line, without the path (said beside it)."""
    text = " ".join(str(e).replace(f"'{path}'", "").replace(path, "").split())[:120]
    return f"{type(e).__name__}: {text}" if text else type(e).__name__


def collate_readable(samples):
    """Stack the readable images; the unreadable files travel in the batch, since the workers that
    found them are other processes. -> ((B, C, H, W) uint8, (B,) labels, ["path (why)"])"""
    good = [(x, y) for x, y, _ in samples if x is not None]
    unreadable = [bad for _, _, found in samples for bad in found]
    images = torch.stack([x for x, _ in good]) if good else torch.empty(0, dtype=torch.uint8)
    return images, torch.tensor([y for _, y in good], dtype=torch.long), unreadable


def held_out(labels: Sequence[int], fraction: float) -> List[int]:
    """The indices of a validation split drawn from a training folder (dataset.val_fraction):
    `fraction` of each class's images, rounded, at least one and never all of a class of two or
    more, in a fixed random order (a generator seeded 0: every run of a folder validates on the
    same images). Sorted."""
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).tolist()
    by_class: dict = {}
    for i in order:
        by_class.setdefault(labels[i], []).append(i)
    picked = [i for members in by_class.values()
              for i in members[:min(max(1, round(fraction * len(members))), len(members) - 1)]]
    return sorted(picked)


def balanced_subset(labels: Sequence[int], n: int) -> List[int]:
    """n of the indices, the classes taking turns (each class as equal a share as its images allow),
    each class's images in a fixed random order: a generator seeded 0, not the run's seed, so that
    every run of a folder at one size trains on the same images. Sorted; all of them for n = 0."""
    if not n or n >= len(labels):
        return list(range(len(labels)))
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).tolist()
    taken: dict = {}
    turn = {}
    for i in order:  # the k-th image of its class in the random order takes turn k
        turn[i] = taken[labels[i]] = taken.get(labels[i], -1) + 1
    return sorted(sorted(order, key=turn.__getitem__)[:n])


class FromBatch(Sampler):
    """This process's training batches, starting the pass at batch `start` (a resumed epoch)
    without loading the batches before it. The order comes from a DistributedSampler: one
    permutation per (seed, epoch), the same in every process, dealt out rank, rank + world, ...;
    so a step's global batch is the same set of images whatever the number of processes. Each
    image is asked for as (index, epoch), for FolderSplit's random draws."""

    def __init__(self, shard: DistributedSampler, batch_size: int):
        self.shard, self.start = shard, 0
        self.batches = BatchSampler(shard, batch_size, drop_last=True)
        self.batch_size = batch_size  # per process

    def __iter__(self):
        epoch = self.shard.epoch
        return ([(i, epoch) for i in batch] for batch in itertools.islice(iter(self.batches), self.start, None))

    def __len__(self) -> int:
        return len(self.batches)


class DeviceLoader:
    """Wraps a DataLoader of uint8 batches: moves each to the device and normalises it there. With
    a decoder (dataset.decode=gpu, cnnbench/data/jpeg.py), the batches hold JPEG files' bytes, which
    it decodes and crops on the device first.

    Training: a batch still short after FolderSplit's refills (more than REFILL_TRIES unreadable
    files in a row) is left out, so that every batch the model sees has the configured size.
    `unreadable` holds every unreadable file met ("path (why)"), `short_batches` the batches the
    last pass left out."""

    def __init__(self, loader: DataLoader, mean, std, device: torch.device, train: bool, split: Path,
                 decoder=None):
        self.loader, self.device, self.train, self.decoder = loader, device, train, decoder
        self.split = split  # the folder the images come from, for messages
        self.normalize = Normalize(mean, std, device)
        self.unreadable: set = set()  # "path (why)" of every unreadable file met
        self.short_batches = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The next pass is epoch `epoch`, from batch `start`. The shuffle order of epoch e depends
        only on (seed, e), as for the in-memory loader; so do the random transforms (FolderSplit)."""
        if self.train:
            self.loader.batch_sampler.shard.set_epoch(epoch)
            self.loader.batch_sampler.start = start

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        read, unreadable, short, short_images = 0, set(), 0, 0  # this pass
        full = self.loader.batch_sampler.batch_size if self.train else 1
        try:
            for batch in self.loader:
                x, y, found = self.decoder(batch) if self.decoder else batch
                unreadable.update(found)
                if len(y) < full:  # empty, or a training batch that more unreadable files than refills shrank
                    short, short_images = short + (len(y) > 0), short_images + len(y)
                    continue
                read += len(y)
                x = x.to(self.device, non_blocking=True)  # (B, C, H, W) uint8
                yield self.normalize(x), y.to(self.device, non_blocking=True)
            if unreadable and not read:
                raise CnnbenchError(
                    f"None of the {len(unreadable)} images read from {self.split} could be decoded, e.g. "
                    f"{min(unreadable)}. Check the files (truncated, corrupt or not an image), or point "
                    f"dataset.root at a copy that opens.")
        finally:  # also when the epoch stops early (trainer.max_steps_per_epoch)
            if self.decoder:
                self.decoder.end_pass(self.split)
            self.unreadable |= unreadable
            self.short_batches = short
            if unreadable and read:
                refilled = (" (each replaced by the next readable image of the split, so that every batch "
                            "keeps its size)" if self.train else "")
                log.warning(f"{len(unreadable)} unreadable image(s) skipped in {self.split} this pass{refilled}, "
                            f"e.g. {min(unreadable)}.")
            if short:
                log.warning(f"{short} training batch(es) of {self.split} left out this pass: more than "
                            f"{REFILL_TRIES} unreadable images in a row left them short of "
                            f"dataset.batch_size={full} ({short_images} readable images unused).")


def _class_table(classes: List[str], train: FolderSplit, val: FolderSplit) -> List[dict]:
    """[{index, name, train_images, val_images}] for the record and the log."""
    count = [np.bincount(s.targets, minlength=len(classes)) for s in (train, val)]
    return [{"index": i, "name": name, "train_images": int(count[0][i]), "val_images": int(count[1][i])}
            for i, name in enumerate(classes)]


def build_imagefolder(conf, device: torch.device, seed: int, image_size: int, rank: int = 0, world: int = 1,
                      on_device: bool = None):
    """Train and validation loaders of an image folder, and its DataInfo. on_device: decode the JPEGs on
    `device` (dataset.decode=gpu, jpeg.py); None: as dataset.decode and the device say (the tests run
    the GPU's path on the CPU)."""
    from torchvision.transforms import v2 as T

    from cnnbench.data import DataInfo
    from cnnbench.data.jpeg import DeviceDecoder, EncodedSplit, collate_encoded, decode_on_device

    root = Path(os.path.expanduser(conf.root))
    for split in ("train",) if conf.val_fraction else ("train", "val"):
        if not (root / split).is_dir():
            no_val = (" Or, for a folder without val/, validate on a share of train/: dataset.val_fraction=0.1."
                      if split == "val" and (root / "train").is_dir() else "")
            raise CnnbenchError(
                f"dataset=imagefolder needs {root / split}, a folder with one sub-folder of images "
                f"per class, and it does not exist. Set dataset.root to the folder holding train/ "
                f"and val/ (ImageNet layout).{no_val}")
    if on_device is None:
        on_device = decode_on_device(conf, device)
    to_uint8 = [T.PILToTensor()]
    # Szegedy et al. 2014 / torchvision's ImageNet recipe. The GPU's decoder (jpeg.py) draws its crops
    # and flips with these same objects, from the same seeds.
    crop, flip = (T.RandomResizedCrop(image_size, antialias=True), T.RandomHorizontalFlip()) if conf.augment \
        else (None, None)
    resize = image_size * 256 // 224  # px of the shorter side, before the centre crop
    centre = [T.Resize(resize, antialias=True), T.CenterCrop(image_size)]
    train_tf = T.Compose([crop, flip, *to_uint8] if conf.augment else [*centre, *to_uint8])
    val_tf = T.Compose([*centre, *to_uint8])
    Split, draws = (EncodedSplit, dict(crop=crop, flip=flip)) if on_device else (FolderSplit, {})
    try:
        train_set = Split(root / "train", train_tf, conf.in_channels, seed, refill=True, **draws)
        val_set = Split(root / ("train" if conf.val_fraction else "val"), val_tf, conf.in_channels, seed,
                        refill=False)
    except (FileNotFoundError, RuntimeError) as e:  # no class folders, or folders without images
        raise CnnbenchError(f"dataset=imagefolder could not read {root}: {e}. Each of train/ and "
                            f"val/ needs one sub-folder per class holding .jpg/.png images.") from None
    if train_set.classes != val_set.classes:
        only = [f"{', '.join(sorted(set(a.classes) - set(b.classes)))} only in {a.root}/"
                for a, b in ((train_set, val_set), (val_set, train_set)) if set(a.classes) - set(b.classes)]
        raise CnnbenchError(f"{root}/train and {root}/val have different class folders: {'; '.join(only)}. "
                            f"Each class needs a folder in both, with the same name.")
    classes = train_set.classes
    if conf.val_fraction:  # both splits read train/: the held-out images validate, the rest train
        val = set(held_out(train_set.targets, conf.val_fraction))
        val_set.keep(sorted(val))
        train_set.keep([i for i in range(len(train_set.samples)) if i not in val])
        log.info(f"Validating on {len(val_set.samples):,} images held out of {root / 'train'} "
                 f"(dataset.val_fraction={conf.val_fraction}), training on the other {len(train_set.samples):,}.")
    if conf.num_classes is not None and conf.num_classes != len(classes):
        raise CnnbenchError(f"{root}/train has {len(classes)} class folders but "
                            f"dataset.num_classes={conf.num_classes}. Set it to null (count them) "
                            f"or to {len(classes)}.")
    train_set.keep(balanced_subset(train_set.targets, conf.train_size))  # all of them for 0
    val_set.keep(balanced_subset(val_set.targets, conf.val_size))
    cuda = device.type == "cuda"
    # null: chosen for the cores and the device; more workers than cores only adds switching (and
    # PyTorch warns about it): capped.
    cores = measure.cores_per_process()
    workers = measure.data_workers(device.type, cores, conf.num_workers)
    if conf.num_workers is not None and workers < conf.num_workers:
        log.info(f"dataset.num_workers={conf.num_workers}, but this process may use {cores} core(s): "
                 f"{workers} DataLoader worker(s).")
    # generator: the loaders' own, so that starting their workers draws nothing from the global
    # generator (a resumed run starts them once more than one never stopped: its dropout would
    # differ); the images' random draws are FolderSplit's, seeded per image.
    common = dict(num_workers=workers, pin_memory=cuda, persistent_workers=workers > 0,
                  collate_fn=collate_encoded if on_device else collate_readable,
                  generator=torch.Generator().manual_seed(seed))
    # The shuffle: epoch e's order is seeded with seed * 1_000_003 + e, as in the in-memory loader
    # (DistributedSampler adds the epoch). drop_last: every process gets the same number of images.
    shard = DistributedSampler(train_set, num_replicas=world, rank=rank, shuffle=True,
                               seed=seed * 1_000_003, drop_last=True)
    train = DataLoader(train_set, batch_sampler=FromBatch(shard, conf.batch_size), **common)
    # Under torchrun each process evaluates images rank, rank + world, ...: each once, by one process
    # (not a DistributedSampler, which would pad the last round with repeated images).
    val_share = Subset(val_set, range(rank, len(val_set), world)) if world > 1 else val_set
    val = DataLoader(val_share, batch_size=conf.batch_size, shuffle=False, **common)
    if len(train) == 0:
        each = f" on each of {world} processes" if world > 1 else ""
        raise CnnbenchError(f"{root}/train has {len(train_set)} images, fewer than one batch of "
                            f"dataset.batch_size={conf.batch_size}{each}. Lower the batch size.")
    info = DataInfo(len(classes), conf.in_channels, image_size, len(train_set), len(val_set), str(root),
                    classes=_class_table(classes, train_set, val_set), train_used=len(train) * conf.batch_size * world,
                    workers=workers, decode="gpu" if on_device else "cpu")
    if on_device:
        log.info(f"Decoding the JPEGs of {root} on {device} (dataset.decode), cropping and flipping them there; "
                 f"the DataLoader workers read the files, and decode with PIL only what the GPU's decoder does "
                 f"not take (PNG, CMYK, ...).")
    decoders = [DeviceDecoder(s, device, image_size, resize) if on_device else None for s in (train_set, val_set)]
    return (DeviceLoader(train, conf.mean, conf.std, device, True, root / "train", decoders[0]),
            DeviceLoader(val, conf.mean, conf.std, device, False, root / "val", decoders[1]), info)
