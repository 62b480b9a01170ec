"""coco_detection: an image folder and a COCO json per split, the format annotation tools (CVAT,
Label Studio, Roboflow, makesense.ai) export and COCO 2017 ships.

    dataset.root/
      train/*.jpg  annotations/instances_train.json      (or COCO 2017's names:
      val/*.jpg    annotations/instances_val.json          train2017/, annotations/instances_train2017.json)

The json is read with pycocotools' COCO: `images` ({id, file_name, width, height}, file_name relative
to the split's folder), `annotations` ({image_id, category_id, bbox [x, y, w, h] in px, iscrowd}),
`categories` ({id, name}). Category ids, whatever they are (COCO's run 1-90 with gaps), become classes
0..K-1 in id order, named from the json; detection has no background class.

Every image is decoded with PIL (no EXIF rotation, as torchvision's CocoDetection) and squashed to
image_size x image_size (the aspect ratio is not kept: a 640 x 480 photo's objects look 1.33x
narrower), bilinear with antialiasing; its boxes are scaled by the same factors, x and y apart. The
splits are then held on the device as uint8, as the other in-memory datasets.

Input that cannot be right stops the run with the file and the fix: a missing or unparseable json,
an annotation whose category or image is not in the json, an image file missing or unreadable, an
image whose pixels are not the size the json gives. Input that can be made right is, counted in
DataInfo.notes and the log: a box of zero or negative width or height is skipped; a box reaching
outside its image is clipped to it (skipped if nothing is left); a crowd annotation (iscrowd=1, a
region of many objects) is skipped, as torchvision's detection references do in training. An image
without annotations is kept: it trains as background only (its batch rows are none).
"""

import contextlib
import io
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
from PIL import Image

from cnnbench.data.folder import decoded
from cnnbench.data.memory import detection_loaders, images_holding
from cnnbench.errors import CnnbenchError

log = logging.getLogger("cnnbench")

_CACHE: Dict[tuple, dict] = {}  # the last folder read: a sweep's jobs decode the images once


# ---------------------------------------------------------------------------------------------
# Finding and reading the annotation files
# ---------------------------------------------------------------------------------------------

def find_split(root: Path, split: str) -> Tuple[Path, Path]:
    """(image folder, annotation file) of a split: root/<split>/ and root/annotations/instances_<split>.json,
    or COCO's root/<split>2017/ and instances_<split>2017.json (any year, the newest first)."""
    notes = root / "annotations"
    years = sorted({p.stem[len(f"instances_{split}"):] for p in notes.glob(f"instances_{split}20[0-9][0-9].json")},
                   reverse=True) if notes.is_dir() else []
    for year in ["", *years]:
        if (notes / f"instances_{split}{year}.json").is_file():
            return root / f"{split}{year}", notes / f"instances_{split}{year}.json"
    raise CnnbenchError(
        f"Dataset 'coco_detection' has no {split} annotations: neither {notes / f'instances_{split}.json'} nor "
        f"{notes / f'instances_{split}2017.json'} exists. Fix: point dataset.root at the folder holding {split}/ "
        f"and annotations/instances_{split}.json (COCO 2017: {split}2017/ and annotations/instances_{split}2017.json; "
        f"or set CNNBENCH_DATA); export the annotations in COCO format from your annotation tool. cnnbench "
        f"does not download COCO (19 GB): fetch it from cocodataset.org on purpose.")


def read_annotations(path: Path):
    """pycocotools' COCO over the json at path, checked for the three lists a detection set needs."""
    from pycocotools.coco import COCO

    try:
        with contextlib.redirect_stdout(io.StringIO()):  # it prints "loading annotations into memory..."
            coco = COCO(str(path))
    except (ValueError, AssertionError, OSError, KeyError, TypeError) as e:  # JSONDecodeError is a ValueError;
        # AssertionError: not an object at the top; KeyError, TypeError: an entry without its id or image_id
        why = f"{type(e).__name__}: {' '.join(str(e).split())}"
        raise CnnbenchError(f"{path} cannot be read as COCO json ({why}). Export the annotations again from your "
                            f"annotation tool in COCO format, or restore the file (a truncated copy is the usual "
                            f"cause).") from None
    for key in ("images", "categories"):
        if not isinstance(coco.dataset.get(key), list):
            raise CnnbenchError(f"{path} has no {key!r} list; a COCO detection file holds 'images', 'annotations' "
                                f"and 'categories'. Export it again in COCO (instances) format.")
    if not coco.dataset["categories"]:
        raise CnnbenchError(f"{path} lists no categories: its boxes could have no class. Export it again with "
                            f"the label set (COCO's 'categories': [{{'id': 1, 'name': ...}}, ...]).")
    return coco


def categories(coco, path: Path) -> Tuple[List[int], List[str]]:
    """The category ids in id order (class k is ids[k]) and their names."""
    try:
        cats = sorted(coco.dataset["categories"], key=lambda c: c["id"])
        return [int(c["id"]) for c in cats], [str(c.get("name", c["id"])) for c in cats]
    except (KeyError, TypeError, ValueError):
        raise CnnbenchError(f"{path}: a category has no integer 'id'. Each entry of 'categories' needs an 'id' and "
                            f"a 'name'; export the file again.") from None


# ---------------------------------------------------------------------------------------------
# One split: boxes from the json, pixels from the files
# ---------------------------------------------------------------------------------------------

def _boxes(coco, path: Path, images: List[dict], class_of: Dict[int, int], counts: Dict[str, int]) -> np.ndarray:
    """(M, 6) float32 [image index, class, x1, y1, x2, y2] in px of the stored images, clipped; counts
    the skipped (zero-area, inverted, wholly outside), clipped and crowd boxes."""
    rows = []
    for i, image in enumerate(images):
        width, height = image["width"], image["height"]
        for ann in coco.imgToAnns.get(image["id"], []):
            if ann.get("category_id") not in class_of:
                raise CnnbenchError(
                    f"{path}: annotation {ann.get('id')} (image {image['id']}, {image['file_name']}) has "
                    f"category_id {ann.get('category_id')}, which is not in its 'categories' (ids "
                    f"{', '.join(map(str, sorted(class_of)))}). Add the category to the file, or correct or delete "
                    f"the annotation, then export again.")
            if ann.get("iscrowd", 0):
                counts["crowd_boxes"] += 1
                continue
            try:
                x, y, w, h = (float(v) for v in ann["bbox"])
            except (KeyError, TypeError, ValueError):
                raise CnnbenchError(f"{path}: annotation {ann.get('id')} (image {image['file_name']}) has no 'bbox' "
                                    f"of four numbers [x, y, width, height]. Correct or delete it.") from None
            if not (w > 0 and h > 0):  # zero-area or inverted (NaN too)
                counts["skipped_boxes"] += 1
                continue
            x1, y1, x2, y2 = max(x, 0.0), max(y, 0.0), min(x + w, width), min(y + h, height)
            if (x1, y1, x2, y2) != (x, y, x + w, y + h):
                if x2 <= x1 or y2 <= y1:  # nothing of it inside the image
                    counts["skipped_boxes"] += 1
                    continue
                counts["clipped_boxes"] += 1
            rows.append((i, class_of[ann["category_id"]], x1, y1, x2, y2))
    return np.array(rows, dtype=np.float32).reshape(-1, 6)


def _read_image(folder: Path, path: Path, image: dict, size: int, channels: int) -> np.ndarray:
    """One image, (channels, size, size) uint8, squashed; checked against the json's width and height."""
    file = folder / image["file_name"]
    if not file.is_file():
        raise CnnbenchError(f"{file} is missing: image {image['id']} of {path}. Copy the image into {folder}, or "
                            f"delete its entry (and its annotations) from the json.")
    im = decoded(file, "Copy it again, or delete its entry (and annotations) from the json.").convert(
        "RGB" if channels == 3 else "L")
    if im.size != (image["width"], image["height"]):
        raise CnnbenchError(f"{file} is {im.size[0]} x {im.size[1]} px but {path} says {image['width']} x "
                            f"{image['height']}: its boxes are drawn for the latter and would land elsewhere. "
                            f"Export the annotations again for the image as it is, or replace the image.")
    im = im.resize((size, size), Image.Resampling.BILINEAR)  # PIL's bilinear antialiases when shrinking
    a = np.asarray(im)
    return a.transpose(2, 0, 1) if a.ndim == 3 else a[None]


def read_split(root: Path, split: str, size: int, channels: int, limit: int = 0) -> dict:
    """A split as held: images (N, C, size, size) uint8, boxes (M, 6) float32 in px of size, the category
    ids and names, the counts of boxes skipped or clipped, and where it came from. limit: the first N
    images as the json lists them (0: all)."""
    folder, path = find_split(root, split)
    coco = read_annotations(path)
    ids, names = categories(coco, path)
    images = coco.dataset["images"][:limit or None]
    for image in images:
        if not all(k in image for k in ("id", "file_name", "width", "height")):
            raise CnnbenchError(f"{path}: an entry of 'images' ({str(image)[:80]}) lacks one of id, file_name, "
                                f"width, height. Export the file again.")
    known = {image["id"] for image in coco.dataset["images"]}
    stray = [a for a in coco.dataset.get("annotations", []) if a.get("image_id") not in known]
    if stray:
        raise CnnbenchError(f"{path}: {len(stray)} annotation(s) name an image_id not in 'images' (the first: "
                            f"annotation {stray[0].get('id')}, image_id {stray[0].get('image_id')}). Add the images "
                            f"or delete those annotations, then export again.")
    counts = {"skipped_boxes": 0, "clipped_boxes": 0, "crowd_boxes": 0}
    boxes = torch.from_numpy(_boxes(coco, path, images, {c: k for k, c in enumerate(ids)}, counts))
    # PIL decodes and resizes outside the GIL: threads share the work
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        pixels = list(pool.map(lambda im: _read_image(folder, path, im, size, channels), images))
    x = torch.from_numpy(np.stack(pixels)) if pixels else torch.zeros(0, channels, size, size, dtype=torch.uint8)
    if len(images):  # boxes to px of the squashed images, each image its own factors
        wh = torch.tensor([[im["width"], im["height"]] for im in images], dtype=torch.float32)
        scale = (size / wh)[boxes[:, 0].long()].repeat(1, 2)  # (M, 4): sx, sy, sx, sy
        boxes[:, 2:] *= scale
    counts["images_without_boxes"] = len(images) - len(boxes[:, 0].unique())
    return {"images": x, "boxes": boxes, "ids": ids, "names": names, "counts": counts, "folder": folder,
            "path": path}


# ---------------------------------------------------------------------------------------------
# The builder
# ---------------------------------------------------------------------------------------------

def build_coco_detection(conf, device: torch.device, seed: int, image_size: int, rank: int = 0, world: int = 1):
    """Training and validation DetectionLoaders over a COCO-format folder (module docstring), every image
    squashed to image_size px square with its boxes, and their DataInfo. conf: a DatasetConf;
    dataset.num_classes null takes the json's categories (K, no background); dataset.train_size /
    val_size take the first N images each json lists."""
    from cnnbench.data import DataInfo

    if conf.in_channels not in (1, 3):
        raise CnnbenchError(f"dataset.in_channels={conf.in_channels}: dataset=coco_detection reads images as grey "
                            f"(1) or RGB (3). Set dataset.in_channels=3 (or 1), with as many mean and std values.")
    root = Path(os.path.expanduser(conf.root))
    files = [find_split(root, s)[1] for s in ("train", "val")]  # both found before any is read
    key = (tuple((str(p.resolve()), p.stat().st_size, p.stat().st_mtime_ns) for p in files), image_size,
           conf.in_channels, conf.train_size, conf.val_size)
    if key not in _CACHE:
        _CACHE.clear()  # one folder at a time
        _CACHE[key] = {s: read_split(root, s, image_size, conf.in_channels, n)
                       for s, n in (("train", conf.train_size), ("val", conf.val_size))}
    tr, va = _CACHE[key]["train"], _CACHE[key]["val"]
    if tr["ids"] != va["ids"]:
        raise CnnbenchError(f"{tr['path']} and {va['path']} list different categories (ids {tr['ids'][:10]} and "
                            f"{va['ids'][:10]}): a class would mean one thing in training and another in validation. "
                            f"Export both splits with the same label set.")
    k = len(tr["ids"])
    n_classes = k if conf.num_classes is None else conf.num_classes
    if n_classes < k:
        raise CnnbenchError(f"dataset.num_classes={conf.num_classes}, but {tr['path']} lists {k} categories. Leave "
                            f"dataset.num_classes at null (it follows the json).")
    train, val = detection_loaders(tr["images"], tr["boxes"], va["images"], va["boxes"], conf, device, seed,
                                   image_size, rank, world)
    names = tr["names"] + [str(i) for i in range(k, n_classes)]
    train.names = val.names = names
    counts = [images_holding(s["boxes"], len(s["images"]), n_classes) for s in (tr, va)]
    classes = [{"index": i, "name": name, "train_images": counts[0][i], "val_images": counts[1][i]}
               for i, name in enumerate(names)]
    notes = {what: {"train": tr["counts"][what], "val": va["counts"][what]} for what in tr["counts"]}
    notes["boxes"] = {"train": len(tr["boxes"]), "val": len(va["boxes"])}
    _log_notes(notes, tr["path"], va["path"])
    held = sum(t.numel() * t.element_size() for t in (train.images, train.boxes, val.images, val.boxes))
    return train, val, DataInfo(n_classes, conf.in_channels, image_size, len(tr["images"]), len(va["images"]),
                                str(root), held, classes, train.num_samples, task="detection", notes=notes)


def _log_notes(notes: dict, *paths: Optional[Path]) -> None:
    said = {"skipped_boxes": "boxes skipped (zero or negative width or height, or wholly outside the image)",
            "clipped_boxes": "boxes clipped to their image", "crowd_boxes": "crowd annotations skipped (iscrowd=1)",
            "images_without_boxes": "images without boxes (kept: they train as background)"}
    parts = [f"{text}: {notes[k]['train']} train / {notes[k]['val']} val" for k, text in said.items()
             if notes[k]["train"] or notes[k]["val"]]
    if parts:
        log.warning(f"coco_detection ({', '.join(str(p) for p in paths)}): " + "; ".join(parts) + ".")
