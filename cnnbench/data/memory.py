"""Datasets that fit in memory, held as one uint8 tensor on the training device.

Batches are cut, augmented and normalised there, a whole batch per tensor operation: no
per-sample Python, no PIL, no worker processes in the training loop (the airbench approach).
"""

import math
from typing import Iterator, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F

from cnnbench.errors import CnnbenchError
from cnnbench.tasks.segmentation import IGNORE  # masks: the value no loss or metric counts (PASCAL VOC's "void")

# (B, C, H, W) float32 normalised, and (B,) int64 labels | (B, H, W) int64 masks | (M, 6) float32 boxes
Batch = Tuple[torch.Tensor, torch.Tensor]

# Resizing the whole set up front is fastest; past this many bytes (e.g. CIFAR-10 at 224 px is
# 7.5 GB) each batch is resized as it is cut instead.
PRERESIZE_LIMIT_BYTES = 2 * 2**30


def resize_uint8(images: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """(N, C, H, W) uint8 -> (N, C, size, size) uint8, bilinear with antialiasing, in chunks."""
    out = torch.empty((images.shape[0], images.shape[1], size, size), dtype=torch.uint8,
                      device=images.device)
    for i in range(0, images.shape[0], chunk):
        x = F.interpolate(images[i:i + chunk].float(), size=(size, size), mode="bilinear",
                          antialias=True, align_corners=False)
        out[i:i + chunk] = x.round_().clamp_(0, 255).to(torch.uint8)
    return out


def resize_masks(masks: torch.Tensor, size: int, chunk: int = 4096) -> torch.Tensor:
    """(N, H, W) uint8 class indices -> (N, size, size), nearest neighbour (no new values: an average of
    two classes is no class). "nearest-exact" samples each output pixel's centre, as PIL's NEAREST does;
    "nearest" would shift the mask up and left by up to a pixel."""
    out = torch.empty((masks.shape[0], size, size), dtype=torch.uint8, device=masks.device)
    for i in range(0, masks.shape[0], chunk):
        out[i:i + chunk] = F.interpolate(masks[i:i + chunk, None], size=(size, size), mode="nearest-exact")[:, 0]
    return out


class Normalize:
    """uint8 (B, C, H, W) -> float32 (x / 255 - mean) / std, folded into one scale and one shift."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        # In place on a fresh float32 copy (copy=True: never on the caller's tensor). Not
        # torch.addcmul(shift, x, scale): on the CPU its broadcast over 3 channels ran 20x slower
        # (1.8 ms against 0.08 ms for 128 CIFAR-sized images).
        return x.to(torch.float32, copy=True).mul_(self.scale).add_(self.shift)


def crop_flip_draws(b: int, pad: int, gen: torch.Generator, device: torch.device):
    """The random numbers random_crop_flip uses for a batch of b images: offsets and flips."""
    dy = torch.randint(0, 2 * pad + 1, (b,), device=device, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=device, generator=gen)
    flip = torch.rand(b, device=device, generator=gen) < 0.5
    return dy, dx, flip


def random_crop_flip(x: torch.Tensor, pad: int, gen: Optional[torch.Generator], draws=None,
                     fill: int = 0) -> torch.Tensor:
    """Random crop with zero padding + horizontal flip, a different draw per image (He et al.
    2015, section 4.2). x: (B, C, H, W) uint8 on any device; draws: crop_flip_draws' output for
    these B images (drawn here when not given); fill: the padding's value (a mask's: IGNORE).

    One gather over the padded images, the flip folded into the column index: 4x faster on the
    CPU than indexing with four broadcast index tensors (0.8 against 3.3 ms for 128 CIFAR images)."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), value=fill)  # (B, C, H + 2p, W + 2p)
    dy, dx, flip = draws if draws is not None else crop_flip_draws(b, pad, gen, x.device)
    cols = torch.arange(w, device=x.device).expand(b, w)  # (B, W)
    cols = torch.where(flip[:, None], w - 1 - cols, cols) + dx[:, None]  # a flipped image reads right to left
    rows = dy[:, None] + torch.arange(h, device=x.device)  # (B, H)
    index = (rows[:, :, None] * (w + 2 * pad) + cols[:, None, :]).view(b, 1, h * w).expand(b, c, h * w)
    return padded.reshape(b, c, -1).gather(2, index).view(b, c, h, w)


def _take(t: torch.Tensor, idx: Union[slice, torch.Tensor]) -> torch.Tensor:
    # index_select, not t[idx]: the same gather, 5x faster on the CPU (28 against 150 us for 128
    # Fashion-MNIST images); a slice stays a view
    return t[idx] if isinstance(idx, slice) else t.index_select(0, idx)


class InMemoryLoader:
    """Iterates (images, labels) batches over uint8 tensors that already sit on the device.

    The order of epoch e comes from a generator seeded with (seed, e), so an epoch's batches are
    reproducible from its number alone: resuming needs no loader state beyond the epoch and the
    batch to start from.
    """

    # What a pass could not use (an image folder's unreadable files and short batches, folder.DeviceLoader): none here
    unreadable: frozenset = frozenset()
    short_batches = 0

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean, std,
                 train: bool, augment: bool = False, seed: int = 0, image_size: Optional[int] = None,
                 rank: int = 0, world: int = 1):
        self.images, self.labels = images, labels  # (N, C, H, W) uint8, (N,) int64
        self.batch_size, self.train, self.augment, self.seed = batch_size, train, augment, seed
        self.resize_to = image_size if image_size and image_size != images.shape[-1] else None
        self.pad = 4  # random crop's padding, px (He et al. 2015: 4 px on 32 px CIFAR images)
        self.normalize = Normalize(mean, std, images.device)
        self.epoch = self.start = 0
        # Data-parallel: every process draws the same order; a step's global batch is world x
        # batch_size consecutive images of it, and this process takes its slice. Validation images
        # are dealt out rank, rank + world, ...: each is seen once, by one process.
        self.rank, self.world = rank, world
        self.val_index = torch.arange(rank, images.shape[0], world, device=images.device) if world > 1 else None

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The next pass is epoch `epoch`, from batch `start` (a resumed epoch's position)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        if self.train:  # the last partial batch is dropped: equal steps keep BatchNorm and timings honest
            return self.images.shape[0] // (self.batch_size * self.world)
        n = len(self.val_index) if self.val_index is not None else self.images.shape[0]
        return math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        """Images per epoch, over all processes."""
        return len(self) * self.batch_size * self.world if self.train else self.images.shape[0]

    def __iter__(self) -> Iterator[Batch]:
        for idx, draws in self._plan():
            yield self._batch(idx, draws)

    def _plan(self):
        """(this process's indices, its crop-and-flip draws or None) for each batch of the pass."""
        device = self.images.device
        if not self.train:
            for i in range(len(self)):
                sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
                yield (self.val_index[sl] if self.val_index is not None else sl), None
            return
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed * 1_000_003 + self.epoch)
        order = torch.randperm(self.images.shape[0], device=device, generator=gen)
        step = self.batch_size * self.world  # images per step, all processes together
        mine = slice(self.rank * self.batch_size, (self.rank + 1) * self.batch_size)
        if self.augment:  # the draws the skipped batches would have made
            for _ in range(self.start):
                crop_flip_draws(step, self.pad, gen, device)
        for i in range(self.start, len(self)):
            idx = order[i * step:(i + 1) * step][mine]
            draws = [d[mine] for d in crop_flip_draws(step, self.pad, gen, device)] if self.augment else None
            yield idx, draws

    def _batch(self, idx, draws) -> Batch:
        x = _take(self.images, idx)
        if self.resize_to:
            x = resize_uint8(x, self.resize_to)
        if draws is not None:
            x = random_crop_flip(x, self.pad, None, draws)
        return self.normalize(x), _take(self.labels, idx)


class SegmentationLoader(InMemoryLoader):
    """Iterates (images, masks) batches: x (B, C, H, W) float32 normalised, y (B, H, W) int64, one class
    per pixel, IGNORE (255) where no loss or metric counts. The same order, resume and data-parallel
    share as InMemoryLoader; an image and its mask are cropped and flipped by the same draw, with
    padding of size // 8 px (4 px at 32 px, as in He et al. 2015) that is 0 in the image and IGNORE in
    the mask: padding is not background."""

    def __init__(self, images: torch.Tensor, masks: torch.Tensor, batch_size: int, mean, std,
                 train: bool, augment: bool = False, seed: int = 0, image_size: Optional[int] = None,
                 rank: int = 0, world: int = 1):
        super().__init__(images, masks, batch_size, mean, std, train, augment, seed, image_size, rank, world)
        self.masks = masks  # (N, H, W) uint8 (self.labels is the same tensor)
        self.pad = (self.resize_to or images.shape[-1]) // 8

    def _batch(self, idx, draws) -> Batch:
        x, m = _take(self.images, idx), _take(self.masks, idx)  # (B, C, H, W), (B, H, W) uint8
        if self.resize_to:
            x, m = resize_uint8(x, self.resize_to), resize_masks(m, self.resize_to)
        if draws is not None:
            x = random_crop_flip(x, self.pad, None, draws)
            m = random_crop_flip(m[:, None], self.pad, None, draws, fill=IGNORE)[:, 0]
        return self.normalize(x), m.long()

    def preview(self, n: int = 8) -> Tuple[torch.Tensor, torch.Tensor]:
        """The first n images of the split, whatever the rank, as the model sees them but not
        normalised: (n, C, H, W) uint8 and their masks (n, H, W) int64. For TensorBoard."""
        x, m = self.images[:n], self.masks[:n]
        if self.resize_to:
            x, m = resize_uint8(x, self.resize_to), resize_masks(m, self.resize_to)
        return x, m.long()



# ---------------------------------------------------------------------------------------------
# Detection: boxes as one flat tensor per batch (ultralytics' layout, with a batch-index column)
# ---------------------------------------------------------------------------------------------

def scale_boxes(boxes: torch.Tensor, height: int, width: int, size: int) -> torch.Tensor:
    """(M, 6) rows [image, class, x1, y1, x2, y2] in px of height x width images -> px of the same
    images squashed to size x size (x by size / width, y by size / height)."""
    if (height, width) == (size, size):
        return boxes
    sx, sy = size / width, size / height
    return boxes * torch.tensor([1, 1, sx, sy, sx, sy], dtype=boxes.dtype, device=boxes.device)


def crop_flip_boxes(y: torch.Tensor, pad: int, height: int, width: int, draws) -> Tuple[torch.Tensor, torch.Tensor]:
    """The boxes of a batch (M, 6) [batch index, class, x1, y1, x2, y2], moved as random_crop_flip moves
    their images by the same draws: shifted by the crop's offset, clipped to the image, then mirrored
    (x1' = W - x2, x2' = W - x1). Returns the boxes and whether each is kept: a box left under 1 px wide
    or high (cropped away, or nearly) is not."""
    dy, dx, flip = draws
    b = y[:, 0].long()  # (M,) each box's image in the batch
    sx, sy = (dx[b] - pad).to(y.dtype), (dy[b] - pad).to(y.dtype)  # the crop's top-left corner, px of the image
    x1, x2 = (y[:, 2] - sx).clamp(0, width), (y[:, 4] - sx).clamp(0, width)
    y1, y2 = (y[:, 3] - sy).clamp(0, height), (y[:, 5] - sy).clamp(0, height)
    mirrored = flip[b]
    x1, x2 = torch.where(mirrored, width - x2, x1), torch.where(mirrored, width - x1, x2)
    keep = (x2 - x1 >= 1) & (y2 - y1 >= 1)
    return torch.stack([y[:, 0], y[:, 1], x1, y1, x2, y2], 1), keep


class DetectionLoader(InMemoryLoader):
    """Iterates (images, boxes) batches: x (B, C, H, W) float32 normalised, y (M, 6) float32 with one row
    per object of the batch, [image index in the batch 0..B-1, class 0..K-1, x1, y1, x2, y2] in px of x
    (x2, y2 exclusive); an image without objects has no rows. The same order, resume and data-parallel
    share as InMemoryLoader; an image and its boxes are cropped and flipped by the same draw (padding
    size // 8 px, as SegmentationLoader), and the boxes cropped away are dropped and counted
    (dropped_boxes).

    boxes: (M, 6) rows [image index in the split, class, x1, y1, x2, y2] in px of `images`; held sorted
    by image and scaled to px of image_size, with CSR offsets (image i's rows are
    boxes[offsets[i]:offsets[i + 1]]), so a batch's rows are a few gathers. Host synchronisations: a
    training batch (or a validation one under torchrun) reads its row count (one per batch, to size the
    gather), and an augmented one its kept boxes (one more); a validation batch on one process none."""

    def __init__(self, images: torch.Tensor, boxes: torch.Tensor, batch_size: int, mean, std,
                 train: bool, augment: bool = False, seed: int = 0, image_size: Optional[int] = None,
                 rank: int = 0, world: int = 1):
        super().__init__(images, boxes, batch_size, mean, std, train, augment, seed, image_size, rank, world)
        n, (h, w) = images.shape[0], images.shape[-2:]
        self.size = (self.resize_to, self.resize_to) if self.resize_to else (h, w)  # px of the images yielded
        self.pad = self.size[1] // 8
        boxes = boxes.to(images.device, torch.float32)
        boxes = boxes.index_select(0, boxes[:, 0].argsort(stable=True))  # by image, in their own order
        self.boxes = self.labels = scale_boxes(boxes, h, w, self.size[1]) if self.resize_to else boxes
        counts = torch.bincount(self.boxes[:, 0].long(), minlength=n)
        self.offsets = torch.cat([counts.new_zeros(1), counts.cumsum(0)])  # (N + 1,) on the device
        self.host_offsets = self.offsets.tolist()  # for consecutive images: no device read per batch
        self.names: Optional[list] = None  # the classes' names (no background), set by the builder
        self._dropped = torch.zeros((), dtype=torch.long, device=images.device)

    @property
    def dropped_boxes(self) -> int:
        """Boxes this process's augmentation cropped away (under 1 px left) since the loader was made."""
        return int(self._dropped)

    def _rows(self, idx) -> torch.Tensor:
        """The boxes of images idx, (M, 6), with column 0 their position in idx."""
        if isinstance(idx, slice):  # consecutive images: one slice of the rows
            first, last = idx.start, min(idx.stop, self.images.shape[0])
            y = self.boxes[self.host_offsets[first]:self.host_offsets[last]].clone()
            y[:, 0] -= first
            return y
        starts = self.offsets.index_select(0, idx)
        counts = self.offsets.index_select(0, idx + 1) - starts  # (B,) boxes per image
        total = int(counts.sum())  # the batch's host synchronisation: how many rows
        position = torch.repeat_interleave(torch.arange(len(idx), device=idx.device), counts, output_size=total)
        before = counts.cumsum(0) - counts  # rows of the earlier images of the batch
        rows = starts[position] + torch.arange(total, device=idx.device) - before[position]
        y = self.boxes.index_select(0, rows)
        y[:, 0] = position.to(y.dtype)
        return y

    def _batch(self, idx, draws) -> Batch:
        x, y = _take(self.images, idx), self._rows(idx)
        if self.resize_to:
            x = resize_uint8(x, self.resize_to)
        if draws is not None:
            x = random_crop_flip(x, self.pad, None, draws)
            y, keep = crop_flip_boxes(y, self.pad, *self.size, draws)
            self._dropped += (~keep).sum()
            y = y[keep]  # an augmented batch's second host synchronisation
        return self.normalize(x), y

    def preview(self, n: int = 8) -> Tuple[torch.Tensor, torch.Tensor]:
        """The first n images of the split, whatever the rank, as the model sees them but not
        normalised: (n, C, H, W) uint8 and their boxes (M, 6), column 0 the image 0..n-1. For TensorBoard."""
        x = self.images[:n]
        if self.resize_to:
            x = resize_uint8(x, self.resize_to)
        return x, self._rows(slice(0, len(x)))


def images_holding(boxes: torch.Tensor, n: int, n_classes: int) -> list:
    """How many of n images hold each class, from their boxes (M, 6) [image, class, ...]: the
    per-class counts DataInfo.classes gives."""
    has = torch.zeros(n, n_classes, dtype=torch.bool)
    has[boxes[:, 0].long(), boxes[:, 1].long()] = True
    return has.sum(0).tolist()


# ---------------------------------------------------------------------------------------------
# Both splits at once
# ---------------------------------------------------------------------------------------------

_LOADERS = {"labels": InMemoryLoader, "masks": SegmentationLoader, "boxes": DetectionLoader}


def in_memory_loaders(x_tr: torch.Tensor, y_tr: torch.Tensor, x_va: torch.Tensor, y_va: torch.Tensor,
                      conf, device: torch.device, seed: int, image_size: int, rank: int = 0, world: int = 1,
                      targets: str = "labels"):
    """Training and validation loaders over uint8 images (N, C, H, W) on the CPU and their targets:
    targets="labels": (N,) labels (InMemoryLoader); "masks": (N, H, W) masks (SegmentationLoader);
    "boxes": (M, 6) boxes [image, class, x1, y1, x2, y2] in px of the images (DetectionLoader). The
    images (and masks, and boxes) are resized to image_size once, up front, when the result fits
    PRERESIZE_LIMIT_BYTES (else each batch as it is cut: the loader scales the boxes once), then moved
    to the device. conf: a DatasetConf (batch_size, mean, std, augment, name). Raises CnnbenchError when
    the training split has fewer images than one batch (on each process)."""
    masks = targets == "masks"
    per_image = (x_tr.shape[1] + masks) * image_size * image_size  # the image's channels (and the mask)
    if x_tr.shape[-1] != image_size and (len(x_tr) + len(x_va)) * per_image <= PRERESIZE_LIMIT_BYTES:
        if targets == "boxes":
            (h, w), (hv, wv) = x_tr.shape[-2:], x_va.shape[-2:]
            y_tr, y_va = scale_boxes(y_tr, h, w, image_size), scale_boxes(y_va, hv, wv, image_size)
        x_tr, x_va = resize_uint8(x_tr, image_size), resize_uint8(x_va, image_size)
        if masks:
            y_tr, y_va = resize_masks(y_tr, image_size), resize_masks(y_va, image_size)
    x_tr, y_tr, x_va, y_va = (t.to(device) for t in (x_tr, y_tr, x_va, y_va))
    loader = _LOADERS[targets]
    common = dict(batch_size=conf.batch_size, mean=conf.mean, std=conf.std, seed=seed,
                  image_size=image_size, rank=rank, world=world)
    train = loader(x_tr, y_tr, train=True, augment=conf.augment, **common)
    val = loader(x_va, y_va, train=False, **common)
    if len(train) == 0:
        each = f" on each of {world} processes" if world > 1 else ""
        raise CnnbenchError(f"The training split has {len(x_tr)} images, fewer than one batch of "
                            f"dataset.batch_size={conf.batch_size}{each}. Lower the batch size or use more data.")
    return train, val


def segmentation_loaders(x_tr, m_tr, x_va, m_va, conf, device, seed, image_size, rank=0, world=1):
    """in_memory_loaders over images and (N, H, W) masks: SegmentationLoaders."""
    return in_memory_loaders(x_tr, m_tr, x_va, m_va, conf, device, seed, image_size, rank, world, targets="masks")


def detection_loaders(x_tr, b_tr, x_va, b_va, conf, device, seed, image_size, rank=0, world=1):
    """in_memory_loaders over images and their (M, 6) boxes in px of the images: DetectionLoaders."""
    return in_memory_loaders(x_tr, b_tr, x_va, b_va, conf, device, seed, image_size, rank, world, targets="boxes")
