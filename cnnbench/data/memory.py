"""Datasets that fit in memory, held as one uint8 tensor on the training device.

Batches are cut, augmented and normalised there, a whole batch per tensor operation: no
per-sample Python, no PIL, no worker processes in the training loop (the airbench approach).
"""

import math
from typing import Iterator, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

Batch = Tuple[torch.Tensor, torch.Tensor]  # (B, C, H, W) float32 normalised, (B,) int64

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


class Normalize:
    """uint8 (B, C, H, W) -> float32 (x / 255 - mean) / std, folded into one multiply-add."""

    def __init__(self, mean: Sequence[float], std: Sequence[float], device: torch.device):
        std_t = torch.tensor(std, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        mean_t = torch.tensor(mean, dtype=torch.float32, device=device).view(1, -1, 1, 1)
        self.scale = 1.0 / (255.0 * std_t)
        self.shift = -mean_t / std_t

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x.float(), self.scale)


def crop_flip_draws(b: int, pad: int, gen: torch.Generator, device: torch.device):
    """The random numbers random_crop_flip uses for a batch of b images: offsets and flips."""
    dy = torch.randint(0, 2 * pad + 1, (b,), device=device, generator=gen)
    dx = torch.randint(0, 2 * pad + 1, (b,), device=device, generator=gen)
    flip = torch.rand(b, device=device, generator=gen) < 0.5
    return dy, dx, flip


def random_crop_flip(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random crop with zero padding + horizontal flip, a different draw per image (He et al.
    2015, section 4.2). x: (B, C, H, W) uint8 on any device."""
    b, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))  # (B, C, H + 2p, W + 2p)
    dy, dx, flip = crop_flip_draws(b, pad, gen, x.device)
    rows = (dy[:, None] + torch.arange(h, device=x.device))[:, None, :, None]  # (B, 1, H, 1)
    cols = (dx[:, None] + torch.arange(w, device=x.device))[:, None, None, :]  # (B, 1, 1, W)
    batch = torch.arange(b, device=x.device)[:, None, None, None]
    chan = torch.arange(c, device=x.device)[None, :, None, None]
    out = padded[batch, chan, rows, cols]  # (B, C, H, W)
    return torch.where(flip[:, None, None, None], out.flip(3), out)


class InMemoryLoader:
    """Iterates (images, labels) batches over uint8 tensors that already sit on the device.

    The order of epoch e comes from a generator seeded with (seed, e), so an epoch's batches are
    reproducible from its number alone: resuming needs no loader state beyond the epoch and the
    batch to start from.
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, batch_size: int, mean, std,
                 train: bool, augment: bool = False, seed: int = 0, image_size: Optional[int] = None):
        self.images, self.labels = images, labels  # (N, C, H, W) uint8, (N,) int64
        self.batch_size, self.train, self.augment, self.seed = batch_size, train, augment, seed
        self.resize_to = image_size if image_size and image_size != images.shape[-1] else None
        self.normalize = Normalize(mean, std, images.device)
        self.epoch = self.start = 0

    def set_epoch(self, epoch: int, start: int = 0) -> None:
        """The next pass is epoch `epoch`, from batch `start` (a resumed epoch's position)."""
        self.epoch, self.start = epoch, start

    def __len__(self) -> int:
        n = self.images.shape[0]
        # Training drops the last partial batch: equal-sized steps keep BatchNorm and timings honest.
        return n // self.batch_size if self.train else math.ceil(n / self.batch_size)

    @property
    def num_samples(self) -> int:
        return len(self) * self.batch_size if self.train else self.images.shape[0]

    def __iter__(self) -> Iterator[Batch]:
        device = self.images.device
        gen = torch.Generator(device=device)
        gen.manual_seed(self.seed * 1_000_003 + self.epoch)
        n = self.images.shape[0]
        order = torch.randperm(n, device=device, generator=gen) if self.train else None
        if self.augment and self.train:  # the draws the skipped batches would have made
            for _ in range(self.start):
                crop_flip_draws(self.batch_size, 4, gen, device)
        for i in range(self.start if self.train else 0, len(self)):
            sl = slice(i * self.batch_size, (i + 1) * self.batch_size)
            idx = order[sl] if order is not None else None
            x = self.images[idx] if idx is not None else self.images[sl]
            y = self.labels[idx] if idx is not None else self.labels[sl]
            if self.resize_to:
                x = resize_uint8(x, self.resize_to)
            if self.augment and self.train:
                x = random_crop_flip(x, pad=4, gen=gen)
            yield self.normalize(x), y
