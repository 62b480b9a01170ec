"""fashion_scenes: Fashion-MNIST items scattered on black canvases, with a class per pixel and a box
per item; a segmentation and detection dataset made from files already on most machines.
In the spirit of M2NIST and MultiMNIST (MNIST digits composited on one canvas).

How a canvas is made (the constants below):
- 1 to max_items items, the number drawn uniformly per canvas; training canvases take items of
  Fashion-MNIST's training split, validation canvases items of its test split (so no validation
  item was ever trained on; items are drawn with replacement, so one may appear on several canvases).
- Each item is resized from 28 px to a square side drawn uniformly in [0.3, 0.6] x canvas px
  (at least MIN_SIDE = 14 px; 29-58 px on a 96 px canvas), bilinear with antialiasing, and placed
  at a uniform position wholly inside the canvas.
- Overlap is limited: a position where the item's square and an earlier item's square share more
  than half of the smaller one is drawn again, up to 30 times; an item that never fits is left out
  (every canvas keeps its first; at the defaults 2.42 items per canvas remain of the 2.5 drawn).
  Not IoU: a 29 px square wholly inside a 58 px one has an IoU of only 0.25.
- The canvas is the pixelwise maximum of its items (where items overlap, both stay visible).

The mask, per pixel: an item "touches" a pixel where its resized intensity is above LOW (16 of
255); it "owns" it where it is at least HIGH (48).
- 0 (background): no item touches it; in particular every black pixel.
- k + 1: one item touches it and owns it; k is its Fashion-MNIST class.
- 255 (ignore): the label is ambiguous: two or more items touch it (overlap), or the one item that
  touches it is faint there (LOW < intensity < HIGH: the anti-aliased rim of an item, or a dark
  stretch inside one).
So an item's dark inner pixels (<= LOW, e.g. a black print on a shirt) are background, as they look.

Boxes (loader.boxes, float32 (M, 6) rows [canvas index, class 0-9, x1, y1, x2, y2]): one per item,
the tight box around the pixels it owns or would own without the overlap (intensity >= HIGH), in
px of the images the loader yields (x2, y2 exclusive: a one-pixel item at (3, 5) is [3, 5, 4, 6]).
Items lie wholly inside the canvas and are never hidden (maximum, not painted over), so all of an
item is visible. An item with no pixel >= HIGH after resizing (none in Fashion-MNIST at >= 14 px)
has no box and is not counted.

Everything is drawn from generators seeded with (seed, split, chunk of 1,000 canvases): the same
seed gives bit-identical canvases, and dataset.val_size=500 takes the first 500 of the default
2,000 (as the other datasets take the first N).
"""

from pathlib import Path
from typing import Dict, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from cnnbench.data.memory import IGNORE, detection_loaders, images_holding, segmentation_loaders
from cnnbench.errors import CnnbenchError

LOW, HIGH = 16, 48  # item intensity (0-255): <= LOW: not the item; >= HIGH: the item; between: ignored
SCALE = (0.3, 0.6)  # an item's side as a fraction of the canvas side
MIN_SIDE = 14  # px: half a Fashion-MNIST item, still recognisable
MAX_OVERLAP = 0.5  # placement: the largest share of the smaller of two items' squares they may share
TRIES = 30  # placement: positions drawn per item before it is left out
CHUNK = 1000  # canvases per generator: canvas i depends on the seed and i only
PAINT_BLOCK = 10_000  # canvases placed and painted together: ~370 MB of work tensors at 96 px
DEFAULT_TRAIN, DEFAULT_VAL = 10_000, 2_000  # canvases when dataset.train_size / val_size are 0

_CACHE: Dict[tuple, dict] = {}  # the last generated dataset: a sweep's jobs with one seed reuse it


# ---------------------------------------------------------------------------------------------
# Layout: where each item goes (small tensors, drawn per chunk)
# ---------------------------------------------------------------------------------------------

def _sides(canvas: int) -> Tuple[int, int]:
    lo = max(MIN_SIDE, round(SCALE[0] * canvas))
    return lo, max(lo, min(canvas, round(SCALE[1] * canvas)))


def _overlap(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """(..., T, 4) and (..., J, 4) boxes [y1, x1, y2, x2] -> (..., T, J) intersection over the smaller area."""
    a, b = a[..., :, None, :].float(), b[..., None, :, :].float()
    h = (torch.minimum(a[..., 2], b[..., 2]) - torch.maximum(a[..., 0], b[..., 0])).clamp(min=0)
    w = (torch.minimum(a[..., 3], b[..., 3]) - torch.maximum(a[..., 1], b[..., 1])).clamp(min=0)
    area = lambda t: (t[..., 2] - t[..., 0]) * (t[..., 3] - t[..., 1])  # noqa: E731
    return h * w / torch.minimum(area(a), area(b))


def _draw(gen: torch.Generator, pool: int, canvas: int, max_items: int) -> Dict[str, torch.Tensor]:
    """The random numbers of CHUNK canvases, (CHUNK, max_items, ...) each: how many items, which,
    their sides and TRIES candidate squares [y1, x1, y2, x2] per item."""
    n, lo, hi = CHUNK, *_sides(canvas)
    count = torch.randint(1, max_items + 1, (n,), generator=gen)
    src = torch.randint(0, pool, (n, max_items), generator=gen)
    side = torch.randint(lo, hi + 1, (n, max_items), generator=gen)
    u = torch.rand(n, max_items, TRIES, 2, generator=gen)
    yx = (u * (canvas - side + 1)[:, :, None, None]).long()  # (n, J, T, 2): top-left corners
    wanted = torch.arange(max_items) < count[:, None]  # (n, J)
    return {"src": src, "side": side, "squares": torch.cat([yx, yx + side[:, :, None, None]], -1), "wanted": wanted}


def _place(draws: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Each canvas's items in turn, at the first candidate square that overlaps no earlier item's
    too much: (n, J) source item, side, top-left y and x, and whether it is placed."""
    squares = draws["squares"]  # (n, J, T, 4)
    n, j_max = squares.shape[:2]
    rows = torch.arange(n)
    chosen = torch.zeros(n, j_max, 4, dtype=torch.long)
    placed = torch.zeros(n, j_max, dtype=torch.bool)
    for j in range(j_max):
        clear = _overlap(squares[:, j], chosen[:, :j]) <= MAX_OVERLAP  # (n, T, j)
        ok = (clear | ~placed[:, None, :j]).all(-1)  # (n, T)
        first = ok.long().argmax(1)  # the first square that fits (0 when none does)
        chosen[:, j] = squares[rows, j, first]
        placed[:, j] = ok.any(1) & draws["wanted"][:, j]
    return {"src": draws["src"], "side": draws["side"], "y": chosen[..., 0], "x": chosen[..., 1], "placed": placed}


# ---------------------------------------------------------------------------------------------
# Painting: items resized in groups of one side, pasted with flat indices
# ---------------------------------------------------------------------------------------------

def _paint(items: torch.Tensor, labels: torch.Tensor, lay: Dict[str, torch.Tensor], first: int, canvas: int):
    """Paint one chunk. items: (P, 28, 28) uint8; labels: (P,) int64; first: the chunk's first
    canvas index. Returns images (n, canvas, canvas), masks (n, canvas, canvas), boxes (M, 6)."""
    n = lay["src"].shape[0]
    cell, where = lay["placed"].nonzero(as_tuple=True)  # canvas in the chunk, item slot; canvas-major
    src, side, y, x = (lay[k][cell, where] for k in ("src", "side", "y", "x"))
    cls = labels[src]
    image = torch.zeros(n * canvas * canvas, dtype=torch.uint8)  # flat: canvas, row, column
    label = torch.zeros_like(image)  # the class + 1 of an item that owns the pixel
    touches = torch.zeros_like(image)  # how many items touch the pixel
    faint = torch.zeros_like(image)  # 1: a touching item is faint here
    box = torch.zeros(len(src), 4)  # x1, y1, x2, y2
    has_box = torch.zeros(len(src), dtype=torch.bool)
    for s in side.unique().tolist():
        g = (side == s).nonzero()[:, 0]
        v = F.interpolate(items[src[g], None].float(), size=(s, s), mode="bilinear", antialias=True,
                          align_corners=False).round_().clamp_(0, 255).to(torch.uint8).view(len(g), s * s)
        offsets = (torch.arange(s)[:, None] * canvas + torch.arange(s)).view(-1)  # (s * s,)
        idx = ((cell[g] * canvas + y[g]) * canvas + x[g])[:, None] + offsets  # (G, s * s) into the flat canvases
        touch, own = v > LOW, v >= HIGH
        idx, code = idx.view(-1), own * (cls[g, None] + 1).to(torch.uint8)  # (G * s * s,), (G, s * s)
        # Scatters, no boolean indexing (3x faster); max and sum do not depend on the order of items
        image.scatter_reduce_(0, idx, v.view(-1), "amax")
        touches.index_add_(0, idx, touch.view(-1).to(torch.uint8))
        faint.scatter_reduce_(0, idx, (touch & ~own).view(-1).to(torch.uint8), "amax")
        label.scatter_reduce_(0, idx, code.view(-1), "amax")  # where two items own a pixel: 255 below
        own = own.view(len(g), s, s)
        r, c = own.any(2), own.any(1)  # (G, s): rows, columns with an owned pixel
        y1, x1 = r.long().argmax(1), c.long().argmax(1)
        y2, x2 = s - r.flip(1).long().argmax(1), s - c.flip(1).long().argmax(1)
        box[g] = torch.stack([x1 + x[g], y1 + y[g], x2 + x[g], y2 + y[g]], 1).float()
        has_box[g] = r.any(1)
    mask = torch.where(faint.bool() | (touches > 1), torch.tensor(IGNORE, dtype=torch.uint8), label)
    boxes = torch.cat([(cell + first)[:, None].float(), cls[:, None].float(), box], 1)[has_box]
    return image.view(n, canvas, canvas), mask.view(n, canvas, canvas), boxes


def generate(items: torch.Tensor, labels: torch.Tensor, n: int, canvas: int, max_items: int, seed: int,
             split: int) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """n canvases from items (P, 28, 28) uint8 with labels (P,): images (n, 1, canvas, canvas) uint8,
    masks (n, canvas, canvas) uint8, boxes (M, 6) float32. split: 0 training, 1 validation (another
    generator). On the CPU, deterministic."""
    chunks = []
    for chunk in range(-(-n // CHUNK)):  # drawn a whole chunk at a time, so canvas i depends on i only
        state = np.random.SeedSequence([seed, split, chunk]).generate_state(1, dtype=np.uint64)[0]
        chunks.append(_draw(torch.Generator().manual_seed(int(state)), len(items), canvas, max_items))
    draws = {k: torch.cat([c[k] for c in chunks])[:n] for k in chunks[0]}
    # All canvases in a few large tensor operations: each operation costs a thread synchronisation,
    # and 300 small ones took 30 s on 2 busy cores where 30 large ones take 1 s. Painted
    # PAINT_BLOCK canvases at a time to bound the memory.
    images, masks, boxes = [], [], []
    for first in range(0, n, PAINT_BLOCK):
        lay = _place({k: t[first:first + PAINT_BLOCK] for k, t in draws.items()})
        image, mask, box = _paint(items, labels, lay, first, canvas)
        images.append(image)
        masks.append(mask)
        boxes.append(box)
    return torch.cat(images)[:, None], torch.cat(masks), torch.cat(boxes)


# ---------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------

def _scenes(root: Path, download: bool, seed: int, canvas: int, max_items: int, n_train: int, n_val: int):
    """The generated canvases, from the cache when the same files and settings made them."""
    from cnnbench.data import _IDX_FILES, _idx_path, _load_mnist_like

    (x_tr, y_tr, x_va, y_va), source, names = _load_mnist_like("fashion_mnist", root, download)
    files = tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns)
                  for p in (_idx_path(Path(source), stem) for stem in _IDX_FILES))
    key = (files, seed, canvas, max_items, n_train, n_val)
    if key not in _CACHE:
        _CACHE.clear()  # one dataset at a time: 221 MB at the defaults
        _CACHE[key] = {"train": generate(x_tr[:, 0], y_tr, n_train, canvas, max_items, seed, 0),
                       "val": generate(x_va[:, 0], y_va, n_val, canvas, max_items, seed, 1),
                       "source": source, "names": names}
    return _CACHE[key]


def check_config(conf, task: str = "segmentation") -> None:
    """The settings of dataset=fashion_scenes that cannot work, refused with the fix (run.validate
    calls this before any work; the builder again, for callers of build_data). task: the model's;
    detection takes the 10 Fashion-MNIST classes whatever dataset.num_classes says (its 11 counts the
    segmentation masks' background)."""
    if conf.canvas < 2 * MIN_SIDE:
        raise CnnbenchError(f"dataset.canvas={conf.canvas} px is too small for Fashion-MNIST items of at least "
                            f"{MIN_SIDE} px. Set dataset.canvas={2 * MIN_SIDE} or more (the default is 96).")
    if conf.max_items < 1:
        raise CnnbenchError(f"dataset.max_items={conf.max_items}: every canvas needs at least one item. Set "
                            f"dataset.max_items to 1 or more (the default is 4).")
    if conf.in_channels != 1:
        raise CnnbenchError(f"Dataset 'fashion_scenes' has 1-channel images but dataset.in_channels="
                            f"{conf.in_channels}. Remove the override.")
    if task == "segmentation" and (11 if conf.num_classes is None else conf.num_classes) < 11:
        raise CnnbenchError(f"dataset.num_classes={conf.num_classes}, but the masks of dataset=fashion_scenes go up "
                            f"to 10: 11 classes (background and the 10 Fashion-MNIST classes). Leave "
                            f"dataset.num_classes at its default (11).")


def build_fashion_scenes(conf, device: torch.device, seed: int, image_size: int, rank: int = 0, world: int = 1):
    """Training and validation SegmentationLoaders over generated Fashion-MNIST scenes, and their
    DataInfo. conf: a DatasetConf (canvas, max_items, train_size, val_size, ...). The loaders'
    `boxes` hold one box per item (module docstring); build_fashion_scenes_detection serves them."""
    from cnnbench.data import DataInfo

    check_config(conf)
    n_classes = 11 if conf.num_classes is None else conf.num_classes
    n_train, n_val = conf.train_size or DEFAULT_TRAIN, conf.val_size or DEFAULT_VAL
    scenes = _scenes(Path(conf.root).expanduser(), conf.download, seed, conf.canvas, conf.max_items, n_train, n_val)
    (x_tr, m_tr, b_tr), (x_va, m_va, b_va) = scenes["train"], scenes["val"]
    train, val = segmentation_loaders(x_tr, m_tr, x_va, m_va, conf, device, seed, image_size, rank, world)
    scale = torch.tensor([1, 1] + [image_size / conf.canvas] * 4)  # boxes in px of the images yielded
    train.boxes, val.boxes = (b.mul(scale).to(device) for b in (b_tr, b_va))

    names = ["background"] + scenes["names"]
    names += [str(i) for i in range(len(names), n_classes)]

    counts = [[n] + images_holding(b, n, 10) + [0] * (n_classes - 11)  # canvases holding each class: background in all
              for n, b in ((n_train, b_tr), (n_val, b_va))]
    classes = [{"index": i, "name": name, "train_images": counts[0][i], "val_images": counts[1][i]}
               for i, name in enumerate(names)]
    held = sum(t.numel() * t.element_size() for t in (train.images, train.masks, train.boxes,
                                                       val.images, val.masks, val.boxes))
    return train, val, DataInfo(n_classes, 1, image_size, n_train, n_val, f"generated from {scenes['source']}",
                                held, classes, train.num_samples, task="segmentation", ignore_index=IGNORE)


def build_fashion_scenes_detection(conf, device: torch.device, seed: int, image_size: int, rank: int = 0,
                                   world: int = 1):
    """Training and validation DetectionLoaders over the same generated scenes as build_fashion_scenes
    (the same seed, the same canvases): their boxes, one per item, classes 0-9 (the Fashion-MNIST
    classes; detection has no background class, so num_classes is 10 whatever dataset.num_classes
    says: its default 11 counts the segmentation masks' background). And their DataInfo."""
    from cnnbench.data import DataInfo

    check_config(conf, "detection")
    n_train, n_val = conf.train_size or DEFAULT_TRAIN, conf.val_size or DEFAULT_VAL
    scenes = _scenes(Path(conf.root).expanduser(), conf.download, seed, conf.canvas, conf.max_items, n_train, n_val)
    (x_tr, _, b_tr), (x_va, _, b_va) = scenes["train"], scenes["val"]
    train, val = detection_loaders(x_tr, b_tr, x_va, b_va, conf, device, seed, image_size, rank, world)
    train.names = val.names = list(scenes["names"])
    counts = images_holding(b_tr, n_train, 10), images_holding(b_va, n_val, 10)
    classes = [{"index": i, "name": name, "train_images": counts[0][i], "val_images": counts[1][i]}
               for i, name in enumerate(train.names)]
    held = sum(t.numel() * t.element_size() for t in (train.images, train.boxes, val.images, val.boxes))
    notes = {"boxes": {"train": len(b_tr), "val": len(b_va)}}
    return train, val, DataInfo(10, 1, image_size, n_train, n_val, f"generated from {scenes['source']}", held,
                                classes, train.num_samples, task="detection", notes=notes)
