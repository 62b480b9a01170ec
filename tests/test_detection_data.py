"""Detection data: the detection loader (boxes follow flips and crops, dropped and counted; resume;
data-parallel shares; images without boxes), fashion_scenes' boxes, and COCO-format folders with
each bad input they can hold."""

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image
from test_segmentation_data import fake_fashion_mnist, raw, scenes_conf

from cnnbench.data import build_data, coco, memory
from cnnbench.data.memory import DetectionLoader, detection_loaders, resize_uint8
from cnnbench.errors import CnnbenchError

CPU = torch.device("cpu")
pytestmark = pytest.mark.usefixtures("one_thread")


# ---------------------------------------------------------------------------------------------
# DetectionLoader
# ---------------------------------------------------------------------------------------------

def ink(k: int) -> int:
    return 40 + 20 * k  # the pixel value of a box of class k: each box is a rectangle of its class's ink


def inked(n=24, size=32, seed=0):
    """n images with 0-2 filled rectangles each, a rectangle's pixels its class's ink (classes differ
    within an image, rectangles never touch), and their boxes (M, 6). Some rectangles sit at the
    edges, a few px wide, so that a crop removes them; every sixth image has none."""
    g = torch.Generator().manual_seed(seed)
    x = torch.zeros(n, 1, size, size, dtype=torch.uint8)
    rows = []
    for i in range(n):
        count = 0 if i % 6 == 0 else 1 + int(torch.randint(0, 2, (1,), generator=g))
        classes = torch.randperm(8, generator=g)[:count].tolist()
        for j, k in enumerate(classes):  # rectangle j in the left or right half
            w, h = (int(v) for v in torch.randint(1, 7, (2,), generator=g))
            x1 = [0, size // 2][j] + int(torch.randint(0, size // 2 - w + 1, (1,), generator=g))
            y1 = int(torch.randint(0, size - h + 1, (1,), generator=g))
            x[i, 0, y1:y1 + h, x1:x1 + w] = ink(k)
            rows.append([i, k, x1, y1, x1 + w, y1 + h])
    return x, torch.tensor(rows, dtype=torch.float32)


def ink_boxes(images: torch.Tensor) -> torch.Tensor:
    """The boxes the pixels show: per image, per class whose ink is present, the tight box around it."""
    rows = []
    for i, image in enumerate(images[:, 0]):
        for k in range(8):
            ys, xs = (image == ink(k)).nonzero(as_tuple=True)
            if len(ys):
                rows.append([i, k, int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1])
    return torch.tensor(rows, dtype=torch.float32).view(-1, 6)


def by_image(y: torch.Tensor) -> torch.Tensor:
    """Rows in (image, class) order, to compare sets of boxes."""
    return y[torch.argsort(y[:, 0] * 100 + y[:, 1])]


def test_boxes_follow_crops_and_flips_and_those_cropped_away_are_dropped_and_counted():
    x, boxes = inked()
    loader = DetectionLoader(x, boxes, 8, [0.0], [1.0], train=True, augment=True, seed=1)
    assert loader.pad == 4  # 32 px // 8
    kept = 0
    for epoch in range(4):
        loader.set_epoch(epoch)
        for xb, yb in loader:
            assert yb.dtype == torch.float32 and yb.shape[1] == 6
            # Each row is exactly the box of its class's ink in the augmented image: shifted, clipped, mirrored
            assert torch.equal(by_image(yb), ink_boxes(raw(xb)))
            assert (yb[:, 2:] >= 0).all() and (yb[:, 4:] <= 32).all() and (yb[:, 4:] - yb[:, 2:4] >= 1).all()
            kept += len(yb)
    assert loader.dropped_boxes > 0 and kept + loader.dropped_boxes == 4 * len(boxes)  # every image each epoch
    loader.pad = 0  # flips only: a flipped image's boxes are the source's, mirrored
    flipped = 0
    for xb, yb in loader:
        for b, image in enumerate(raw(xb)[:, 0]):
            i = next(i for i in range(len(x)) if torch.equal(image, x[i, 0]) or torch.equal(image, x[i, 0].flip(-1)))
            mine, source = yb[yb[:, 0] == b], boxes[boxes[:, 0] == i]
            if not torch.equal(image, x[i, 0]):
                source = torch.stack([source[:, 0], source[:, 1], 32 - source[:, 4], source[:, 3], 32 - source[:, 2],
                                      source[:, 5]], 1)
                flipped += 1
            assert torch.equal(by_image(mine)[:, 1:], by_image(source)[:, 1:])
    assert 0 < flipped < 24


def test_the_drop_rule_in_numbers():
    """A box shifted by the crop, clipped to the image; one left under 1 px wide is dropped."""
    y = torch.tensor([[0, 1, 2.0, 3.0, 10.0, 9.0], [1, 2, 0.0, 0.0, 1.5, 4.0]])
    draws = torch.tensor([4, 4]), torch.tensor([6, 4]), torch.tensor([False, True])  # dy, dx (4: no shift), flip
    out, keep = memory.crop_flip_boxes(y, 4, 16, 16, draws)
    # image 0: the crop starts at (x 2, y 0): [0, 3, 8, 9]; image 1: no shift, mirrored: [16 - 1.5, 0, 16, 4]
    assert torch.equal(out, torch.tensor([[0, 1, 0.0, 3.0, 8.0, 9.0], [1, 2, 14.5, 0.0, 16.0, 4.0]]))
    assert keep.tolist() == [True, True]
    unflipped = torch.tensor([False, False])
    _, keep = memory.crop_flip_boxes(y, 4, 16, 16, (torch.tensor([4, 4]), torch.tensor([4, 5]), unflipped))
    assert keep.tolist() == [True, False]  # image 1's box, shifted 1 px left: 0.5 px left


def test_a_resumed_epoch_and_the_data_parallel_shares_give_the_same_batches():
    x, boxes = inked()
    whole = DetectionLoader(x, boxes, 6, [0.0], [1.0], train=True, augment=True, seed=3)
    whole.set_epoch(2)
    batches = list(whole)
    assert len(whole) == 4 and whole.num_samples == 24 and whole.unreadable == frozenset() and whole.short_batches == 0
    whole.set_epoch(2, start=2)
    resumed = list(whole)
    assert len(resumed) == 2
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(resumed, batches[2:]))
    ranks = [DetectionLoader(x, boxes, 3, [0.0], [1.0], train=True, augment=True, seed=3, rank=r, world=2)
             for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    for (xb, yb), ((x0, y0), (x1, y1)) in zip(batches, zip(*ranks)):  # each rank: its half, augmented the same
        assert torch.equal(torch.cat([x0, x1]), xb)
        assert torch.equal(torch.cat([y0, y1 + torch.tensor([3.0, 0, 0, 0, 0, 0])]), yb)
    val = [DetectionLoader(x, boxes, 5, [0.0], [1.0], train=False, rank=r, world=2) for r in range(2)]
    seen = []
    for loader in val:
        for xb, yb in loader:
            assert torch.equal(by_image(yb), ink_boxes(raw(xb)))  # each image with its own boxes
            seen += [int(v) for v in raw(xb)[:, 0].flatten(1).sum(1)]
    assert sorted(seen) == sorted(int(v) for v in x[:, 0].flatten(1).sum(1))  # each image once, by one process


def test_images_without_boxes_yield_no_rows_and_batch_as_any():
    x, boxes = inked(n=12)
    only_first = boxes[boxes[:, 0] == 1]  # image 1's boxes and no others
    loader = DetectionLoader(x, only_first, 2, [0.0], [1.0], train=False)
    ys = [y for _, y in loader]
    assert len(ys) == 6 and [len(y) for y in ys] == [len(only_first)] + [0] * 5
    assert all(y.shape == (0, 6) and y.dtype == torch.float32 for y in ys[1:])
    none = DetectionLoader(x, torch.zeros(0, 6), 4, [0.0], [1.0], train=True, augment=True)
    assert [tuple(y.shape) for _, y in none] == [(0, 6)] * 3 and none.dropped_boxes == 0
    px, py = loader.preview(4)
    assert torch.equal(px, x[:4]) and torch.equal(py, only_first)  # preview: image 1's boxes as image 1


def test_resizing_up_front_or_per_batch_gives_the_same_batches_and_preview(monkeypatch):
    x, boxes = inked(n=12, size=16)
    conf = SimpleNamespace(name="t", batch_size=4, mean=[0.0], std=[1.0], augment=True)
    up_front = detection_loaders(x, boxes, x, boxes, conf, CPU, 0, 32)
    monkeypatch.setattr(memory, "PRERESIZE_LIMIT_BYTES", 0)
    per_batch = detection_loaders(x, boxes, x, boxes, conf, CPU, 0, 32)
    assert up_front[0].images.shape[-1] == 32 and per_batch[0].images.shape[-1] == 16
    assert per_batch[0].pad == 4 and torch.equal(per_batch[0].boxes, up_front[0].boxes)
    assert torch.equal(up_front[1].boxes[:, 2:], boxes[:, 2:] * 2)  # in px of what is yielded
    for a, b in zip(up_front, per_batch):
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
    px, py = per_batch[1].preview(3)
    assert px.shape == (3, 1, 32, 32) and torch.equal(px, up_front[1].images[:3])
    assert torch.equal(py, up_front[1].boxes[up_front[1].boxes[:, 0] < 3])


# ---------------------------------------------------------------------------------------------
# fashion_scenes
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    return fake_fashion_mnist(tmp_path_factory.mktemp("scenes"))


def test_scenes_serve_their_boxes_for_detection(fashion_root):
    seg_train, seg_val, _ = build_data(scenes_conf(fashion_root), CPU, 0, 48)
    train, val, info = build_data(scenes_conf(fashion_root), CPU, 0, 48, task="detection")
    assert isinstance(train, DetectionLoader) and torch.equal(train.images, seg_train.images)
    assert (info.task, info.num_classes, info.ignore_index, info.in_channels) == ("detection", 10, None, 1)
    assert train.names == val.names == [c["name"] for c in info.classes] and info.classes[0]["name"] == "T-shirt/top"
    assert [c["train_images"] > 0 for c in info.classes] == [True] * 5 + [False] * 5  # training items: classes 0-4
    assert [c["val_images"] > 0 for c in info.classes] == [False] * 5 + [True] * 5
    assert info.classes[2]["train_images"] == len(seg_train.boxes[seg_train.boxes[:, 1] == 2, 0].unique())
    assert info.notes == {"boxes": {"train": len(seg_train.boxes), "val": len(seg_val.boxes)}}
    assert info.bytes == 56 * 48 * 48 + (len(train.boxes) + len(val.boxes)) * 6 * 4
    rows = torch.cat([y + torch.tensor([8.0 * i, 0, 0, 0, 0, 0]) for i, (_, y) in enumerate(val)])
    assert torch.equal(rows, seg_val.boxes)  # unaugmented: the scene's boxes, in the scene's order
    big, big_val, _ = build_data(scenes_conf(fashion_root, num_classes=10), CPU, 0, 96, task="detection")
    assert big.images.shape[-1] == 96 and torch.equal(big_val.preview(16)[1][:, 2:], seg_val.boxes[:, 2:] * 2)
    with pytest.raises(CnnbenchError, match="masks of dataset=fashion_scenes go up to 10"):  # segmentation: 11
        build_data(scenes_conf(fashion_root, num_classes=10), CPU, 0, 48)
    with pytest.raises(CnnbenchError, match="dataset=fashion_scenes holds segmentation and detection data, not "
                                            "classification data"):
        build_data(scenes_conf(fashion_root), CPU, 0, 48, task="classification")


# ---------------------------------------------------------------------------------------------
# coco_detection
# ---------------------------------------------------------------------------------------------

CATEGORY = [3 + 4 * k for k in range(10)]  # scene class k is COCO category 3 + 4k: ids 3, 7, ..., 39


def write_coco(root, split, images, boxes, year="", width=None, extra=None):
    """A COCO folder's split from scenes: images (N, 1, H, W) uint8 as <root>/<split><year>/<i>.png (RGB,
    black columns added up to `width` px), boxes (M, 6) as annotations [x, y, w, h] with category 3 + 4k;
    categories listed in reverse id order. extra: more annotations, as dicts. Returns the json's path."""
    folder = root / f"{split}{year}"
    folder.mkdir(parents=True, exist_ok=True)
    (root / "annotations").mkdir(exist_ok=True)
    entries = []
    for i, image in enumerate(images[:, 0].numpy()):
        h, w = image.shape
        canvas = np.zeros((h, width or w), dtype=np.uint8)
        canvas[:, :w] = image
        Image.fromarray(np.stack([canvas] * 3, -1)).save(folder / f"{i:04d}.png")
        entries.append({"id": 100 + i, "file_name": f"{i:04d}.png", "width": width or w, "height": h})
    annotations = [{"id": j + 1, "image_id": 100 + int(b[0]), "category_id": CATEGORY[int(b[1])], "iscrowd": 0,
                    "bbox": [float(b[2]), float(b[3]), float(b[4] - b[2]), float(b[5] - b[3])]}
                   for j, b in enumerate(boxes)] + (extra or [])
    categories = [{"id": c, "name": f"class {c}", "supercategory": "fashion"} for c in reversed(CATEGORY)]
    path = root / "annotations" / f"instances_{split}{year}.json"
    path.write_text(json.dumps({"images": entries, "annotations": annotations, "categories": categories}))
    return path


def coco_conf(root, **kw):
    base = dict(name="coco_detection", root=str(root), download=False, batch_size=4, image_size=24, augment=False,
                num_classes=None, in_channels=3, native_size=24, mean=[0.0] * 3, std=[1.0] * 3, train_size=0,
                val_size=0, num_workers=0, val_fraction=0.0, canvas=96, max_items=4)
    return SimpleNamespace(**{**base, **kw})


@pytest.fixture(scope="module")
def scenes(fashion_root):
    """12 training and 6 validation scenes at 48 px with their boxes."""
    train, val, _ = build_data(scenes_conf(fashion_root), CPU, 0, 48, task="detection")
    return (train.images[:12], train.boxes[train.boxes[:, 0] < 12]), (val.images[:6], val.boxes[val.boxes[:, 0] < 6])


@pytest.mark.parametrize("year", ["", "2017"])
def test_a_coco_folder_is_read_back_with_classes_mapped_and_boxes_scaled(tmp_path, scenes, year):
    (x_tr, b_tr), (x_va, b_va) = scenes
    coco._CACHE.clear()
    write_coco(tmp_path, "train", x_tr, b_tr, year, width=64)  # 64 x 48 px: squashed to 24 x 24
    write_coco(tmp_path, "val", x_va, b_va, year)
    train, val, info = build_data(coco_conf(tmp_path), CPU, 0, 24)
    assert (info.task, info.num_classes, info.train_size, info.val_size) == ("detection", 10, 12, 6)
    holding = len(b_tr[b_tr[:, 1] == 1, 0].unique())  # training images with a class-1 box
    assert info.source == str(tmp_path) and holding > 0
    assert info.classes[1] == {"index": 1, "name": "class 7", "train_images": holding, "val_images": 0}
    assert train.names == [f"class {c}" for c in CATEGORY]  # ids in order: 3, 7, ... -> classes 0, 1, ...
    assert torch.equal(train.boxes, b_tr * torch.tensor([1, 1, 24 / 64, 24 / 48, 24 / 64, 24 / 48]))
    assert torch.equal(val.boxes, b_va * torch.tensor([1, 1, 0.5, 0.5, 0.5, 0.5]))
    assert val.images.shape == (6, 3, 24, 24) and torch.equal(val.images[:, 0], val.images[:, 2])  # grey as RGB
    assert (val.images[:, :1].float() - resize_uint8(x_va, 24).float()).abs().max() <= 1  # PIL's bilinear, squashed
    assert info.notes["boxes"] == {"train": len(b_tr), "val": len(b_va)} and info.notes["skipped_boxes"]["train"] == 0
    first, _, small = build_data(coco_conf(tmp_path, train_size=4, val_size=2), CPU, 0, 24)
    assert torch.equal(first.boxes, train.boxes[train.boxes[:, 0] < 4]) and (small.train_size, small.val_size) == (4, 2)


def test_coco_boxes_skipped_clipped_and_images_without_any_are_counted(tmp_path, scenes, caplog):
    (x_tr, b_tr), (x_va, b_va) = scenes
    coco._CACHE.clear()
    bad = [{"id": 900, "image_id": 100, "category_id": 3, "bbox": [5, 5, 0, 4]},  # zero width: skipped
           {"id": 901, "image_id": 100, "category_id": 3, "bbox": [5, 5, 4, -3]},  # inverted: skipped
           {"id": 902, "image_id": 101, "category_id": 7, "bbox": [-4, 40, 10, 20]},  # outside: clipped to 0-6, 40-48
           {"id": 903, "image_id": 101, "category_id": 7, "bbox": [50, 10, 8, 8]},  # wholly outside: skipped
           {"id": 904, "image_id": 101, "category_id": 7, "bbox": [1, 1, 8, 8], "iscrowd": 1}]  # crowd: skipped
    write_coco(tmp_path, "train", x_tr, b_tr[b_tr[:, 0] != 5], extra=bad)  # image 5: no annotations
    write_coco(tmp_path, "val", x_va, b_va)
    train, val, info = build_data(coco_conf(tmp_path, image_size=48, augment=True), CPU, 0, 48)
    assert info.notes["skipped_boxes"] == {"train": 3, "val": 0} and info.notes["clipped_boxes"]["train"] == 1
    assert info.notes["crowd_boxes"]["train"] == 1 and info.notes["images_without_boxes"] == {"train": 1, "val": 0}
    assert "3 train / 0 val" in caplog.text and "images without boxes (kept" in caplog.text
    assert [1, 1, 0, 40, 6, 48] in train.boxes.tolist()  # image 101: the second
    assert len(train) == 3 and train.offsets[6] == train.offsets[5]  # image 5 kept, with no rows
    for _, y in train:
        assert (y[:, 2:] >= 0).all() and (y[:, 4:] <= 48).all()


def test_bad_coco_inputs_name_the_file_and_the_fix(tmp_path, scenes):
    (x_tr, b_tr), (x_va, b_va) = scenes
    coco._CACHE.clear()
    with pytest.raises(CnnbenchError, match=r"no train annotations: neither .*annotations/instances_train.json nor "
                                            r".*instances_train2017.json exists. Fix: point dataset.root"):
        build_data(coco_conf(tmp_path), CPU, 0, 24)
    write_coco(tmp_path, "train", x_tr, b_tr)
    val_json = write_coco(tmp_path, "val", x_va, b_va)
    text = val_json.read_text()
    val_json.write_text(text[:len(text) // 2])  # truncated
    with pytest.raises(CnnbenchError, match=r"instances_val.json cannot be read as COCO json \(JSONDecodeError: .*"
                                            r"Export the annotations again"):
        build_data(coco_conf(tmp_path), CPU, 0, 24)
    write_coco(tmp_path, "val", x_va, b_va, extra=[{"id": 77, "image_id": 102, "category_id": 5, "bbox": [1, 1, 4, 4]}])
    with pytest.raises(CnnbenchError, match=r"instances_val.json: annotation 77 \(image 102, 0002.png\) has "
                                            r"category_id 5, which is not in its 'categories' \(ids 3, 7, 11"):
        build_data(coco_conf(tmp_path), CPU, 0, 24)
    write_coco(tmp_path, "val", x_va, b_va, extra=[{"id": 78, "image_id": 999, "category_id": 3, "bbox": [1, 1, 4, 4]}])
    with pytest.raises(CnnbenchError, match=r"1 annotation\(s\) name an image_id not in 'images'.*annotation 78"):
        build_data(coco_conf(tmp_path), CPU, 0, 24)
    write_coco(tmp_path, "val", x_va, b_va)
    (tmp_path / "val" / "0003.png").unlink()
    with pytest.raises(CnnbenchError, match=r"val/0003.png is missing: image 103 of .*instances_val.json. Copy"):
        build_data(coco_conf(tmp_path), CPU, 0, 24)
    (tmp_path / "val" / "0003.png").write_bytes(b"\x89PNG not a whole PNG")
    with pytest.raises(CnnbenchError, match=r"val/0003.png cannot be read as an image"):
        build_data(coco_conf(tmp_path), CPU, 0, 24)
    Image.new("RGB", (40, 48)).save(tmp_path / "val" / "0003.png")
    with pytest.raises(CnnbenchError, match=r"0003.png is 40 x 48 px but .*instances_val.json says 48 x 48"):
        build_data(coco_conf(tmp_path), CPU, 0, 24)
    write_coco(tmp_path, "val", x_va, b_va)
    with pytest.raises(CnnbenchError, match=r"dataset.num_classes=4, but .*instances_train.json lists 10 categories"):
        build_data(coco_conf(tmp_path, num_classes=4), CPU, 0, 24)
    with pytest.raises(CnnbenchError, match="holds detection data, not segmentation data"):
        build_data(coco_conf(tmp_path), CPU, 0, 24, task="segmentation")
