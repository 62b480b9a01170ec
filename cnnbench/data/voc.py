"""voc_segmentation: a PASCAL VOC segmentation folder, read once, held in memory on the device.

The layout VOC ships (and tools that export "VOC segmentation" write):
    JPEGImages/<id>.jpg                 photos
    SegmentationClass/<id>.png          palette PNGs: each pixel's palette index is its class,
                                        0 background, 1-20 the objects, 255 "void" (ignored)
    ImageSets/Segmentation/train.txt    one id per line (val.txt: the validation ids)

Every image is squashed to image_size x image_size (the aspect ratio is not kept: VOC photos are
about 500 x 375, so objects look 1.33x narrower or taller), bilinear with antialiasing; its mask by
nearest neighbour, so no new class values appear. The files are read with PIL directly, one reader
for every layout (torchvision's VOCSegmentation opens the same two files per id but only under
root/VOCdevkit/VOC<year>); torchvision's downloader fetches them when dataset.download=true.
"""

import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

import numpy as np
import torch
from PIL import Image

from cnnbench.data.folder import decoded
from cnnbench.data.memory import IGNORE, segmentation_loaders
from cnnbench.errors import CnnbenchError

CLASSES = ["background", "aeroplane", "bicycle", "bird", "boat", "bottle", "bus", "car", "cat", "chair", "cow",
           "diningtable", "dog", "horse", "motorbike", "person", "pottedplant", "sheep", "sofa", "train",
           "tvmonitor"]  # the devkit's order: class k is palette index k

_CACHE: Dict[tuple, dict] = {}  # the last folder read: a sweep's jobs decode the photos once


def _is_voc(folder: Path) -> bool:
    return all((folder / part).is_dir() for part in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"))


def _candidates(root: Path) -> List[Path]:
    """Where a VOC folder may be: root itself, root/VOC<year>, root/VOCdevkit/VOC<year> (newest year first)."""
    found = [root]
    for parent in (root, root / "VOCdevkit"):
        years = sorted(parent.glob("VOC20*"), reverse=True) if parent.is_dir() else []
        found += years or [parent / "VOC2012"]
    return found


def find_voc(root: Path, download: bool) -> Path:
    """The VOC folder under dataset.root, downloaded with torchvision's VOCSegmentation (VOC 2012,
    2 GB, into root/VOCdevkit/VOC2012) when missing and download is true."""
    tried = _candidates(root)
    for folder in tried:
        if _is_voc(folder):
            return folder
    why = "download is off (dataset.download=false)"
    if download:
        import torchvision.datasets as tvd

        try:
            tvd.VOCSegmentation(str(root), year="2012", image_set="trainval", download=True)
        except Exception as e:  # offline, proxy, disk, the mirror down
            why = f"the download failed ({type(e).__name__}: {' '.join(str(e).split())})"
        else:
            return find_voc(root, download=False)
    raise CnnbenchError(
        f"Dataset 'voc_segmentation' not found, and {why}. Looked for a folder holding JPEGImages/, "
        f"SegmentationClass/ and ImageSets/Segmentation/ at: {', '.join(str(p) for p in tried)}. Fix: point "
        f"dataset.root at the VOC2012 folder, at VOCdevkit/ or at the folder holding VOCdevkit/ (or set "
        f"CNNBENCH_DATA); or set dataset.download=true to fetch VOC 2012 (2 GB) with torchvision's downloader.")


def _ids(folder: Path, split: str) -> List[str]:
    path = folder / "ImageSets" / "Segmentation" / f"{split}.txt"
    if not path.is_file():
        raise CnnbenchError(f"{path} is missing: it lists the {split} images' ids, one per line. Restore it from the "
                            f"VOC archive, or write it (ids are the file names in JPEGImages/ without .jpg).")
    return [line.split()[0] for line in path.read_text().splitlines() if line.strip()]


def _read(folder: Path, image_id: str, size: int, num_classes: int) -> Tuple[np.ndarray, np.ndarray]:
    """One image (3, size, size) uint8 and its mask (size, size) uint8, checked."""
    image_path = folder / "JPEGImages" / f"{image_id}.jpg"
    mask_path = folder / "SegmentationClass" / f"{image_id}.png"
    for path, what in ((image_path, "image"), (mask_path, "mask")):
        if not path.is_file():
            raise CnnbenchError(f"{path} is missing: the {what} of id {image_id!r}, listed in ImageSets/Segmentation. "
                                f"Restore the file, or remove the id from the list.")
    # No EXIF rotation: the masks were drawn on the pixels as stored
    fix = f"Extract it again from the VOC archive, or remove id {image_id!r} from ImageSets/Segmentation."
    image = decoded(image_path, fix).convert("RGB")
    mask = decoded(mask_path, fix)
    if mask.mode not in ("P", "L"):  # an RGB rendering of the palette holds colours, not class indices
        raise CnnbenchError(f"{mask_path} has PIL mode {mask.mode}; a VOC mask is a palette ('P') or grey ('L') PNG "
                            f"whose pixel values are class indices. Save it as a palette PNG (as VOC ships "
                            f"SegmentationClass/), not converted to RGB.")
    if image.size != mask.size:
        raise CnnbenchError(f"{mask_path} is {mask.size[0]} x {mask.size[1]} px but its image {image_path} is "
                            f"{image.size[0]} x {image.size[1]} px: a mask must cover its image pixel for pixel. "
                            f"Replace one of them, or remove the id from ImageSets/Segmentation.")
    values = np.asarray(mask)
    if values.max() >= num_classes:  # only then look for values other than IGNORE
        bad = [int(v) for v in np.unique(values) if num_classes <= v != IGNORE]
        if bad:
            raise CnnbenchError(f"{mask_path} holds the value{'s' if len(bad) > 1 else ''} "
                                f"{', '.join(map(str, bad[:5]))}, but dataset.num_classes={num_classes} allows "
                                f"0-{num_classes - 1} and {IGNORE} (ignored). Fix the mask, or set "
                                f"dataset.num_classes to its largest class + 1.")
    image = image.resize((size, size), Image.Resampling.BILINEAR)  # PIL's bilinear antialiases when shrinking
    mask = mask.resize((size, size), Image.Resampling.NEAREST)
    return np.asarray(image).transpose(2, 0, 1), np.asarray(mask)


def _read_split(folder: Path, split: str, size: int, num_classes: int):
    ids = _ids(folder, split)
    # PIL decodes and resizes outside the GIL: threads share the work
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        read = list(pool.map(lambda i: _read(folder, i, size, num_classes), ids))
    if not read:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8), torch.zeros(0, size, size, dtype=torch.uint8)
    images, masks = zip(*read)
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(masks))


def build_voc_segmentation(conf, device: torch.device, seed: int, image_size: int, rank: int = 0, world: int = 1):
    """Training and validation SegmentationLoaders over a PASCAL VOC folder (train.txt, val.txt),
    every image squashed to image_size px square, and their DataInfo. conf: a DatasetConf."""
    from cnnbench.data import DataInfo

    if conf.in_channels != 3:
        raise CnnbenchError(f"Dataset 'voc_segmentation' has 3-channel images but dataset.in_channels="
                            f"{conf.in_channels}. Remove the override.")
    n_classes = len(CLASSES) if conf.num_classes is None else conf.num_classes
    folder = find_voc(Path(conf.root).expanduser(), conf.download)
    lists = [folder / "ImageSets" / "Segmentation" / f"{s}.txt" for s in ("train", "val")]
    key = (str(folder.resolve()), tuple((p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
                                        for p in lists), image_size, n_classes)
    if key not in _CACHE:
        _CACHE.clear()  # one folder at a time: 0.8 GB for VOC 2012 at 256 px
        _CACHE[key] = {split: _read_split(folder, split, image_size, n_classes) for split in ("train", "val")}
    (x_tr, m_tr), (x_va, m_va) = _CACHE[key]["train"], _CACHE[key]["val"]
    if conf.train_size:
        x_tr, m_tr = x_tr[:conf.train_size], m_tr[:conf.train_size]
    if conf.val_size:
        x_va, m_va = x_va[:conf.val_size], m_va[:conf.val_size]
    counts = _images_with(m_tr, n_classes), _images_with(m_va, n_classes)
    train, val = segmentation_loaders(x_tr, m_tr, x_va, m_va, conf, device, seed, image_size, rank, world)
    # VOC's names for its 21 indices; a VOC-layout folder of yours with more classes: numbers for the rest
    names = [*CLASSES[:n_classes], *(str(i) for i in range(len(CLASSES), n_classes))]
    classes = [{"index": i, "name": name, "train_images": counts[0][i], "val_images": counts[1][i]}
               for i, name in enumerate(names)]
    held = sum(t.numel() * t.element_size() for t in (train.images, train.masks, val.images, val.masks))
    return train, val, DataInfo(n_classes, 3, image_size, len(x_tr), len(x_va), str(folder), held, classes,
                                train.num_samples, task="segmentation", ignore_index=IGNORE)


def _images_with(masks: torch.Tensor, n_classes: int) -> List[int]:
    """How many of the (N, H, W) masks hold each class, as resized (a speck may vanish)."""
    counts = torch.zeros(n_classes, dtype=torch.long)
    for m in masks:
        counts += torch.bincount(m.view(-1).long(), minlength=256)[:n_classes] > 0  # values < 256: uint8 masks
    return counts.tolist()
