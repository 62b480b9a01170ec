"""Segmentation data: generated Fashion-MNIST scenes (masks, boxes, determinism), the segmentation
loader (image and mask augmented together, resume, data-parallel shares) and PASCAL VOC folders."""

import gzip
import struct
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from cnnbench.data import build_data, memory, scenes
from cnnbench.data.memory import IGNORE, SegmentationLoader, resize_masks, segmentation_loaders
from cnnbench.errors import CnnbenchError

CPU = torch.device("cpu")
TRAIN_INK, TEST_INK = 150, 250  # the intensity of the fake training and test items: tells them apart


# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------

def write_idx(path, array: torch.Tensor):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    path.write_bytes(gzip.compress(header + array.numpy().tobytes()))


def fake_fashion_mnist(root, n_train=200, n_test=100):
    """root/FashionMNIST/raw: each item a filled rectangle (training items TRAIN_INK, test items
    TEST_INK); training labels 0-4, test labels 5-9, so a mask tells which split an item came from."""
    folder = root / "FashionMNIST" / "raw"
    folder.mkdir(parents=True)
    g = torch.Generator().manual_seed(0)

    def items(n, ink):
        x = torch.zeros(n, 28, 28, dtype=torch.uint8)
        top, left = torch.randint(2, 8, (n,), generator=g), torch.randint(2, 8, (n,), generator=g)
        bottom, right = torch.randint(20, 26, (n,), generator=g), torch.randint(20, 26, (n,), generator=g)
        for i in range(n):
            x[i, top[i]:bottom[i], left[i]:right[i]] = ink
        return x

    write_idx(folder / "train-images-idx3-ubyte.gz", items(n_train, TRAIN_INK))
    write_idx(folder / "train-labels-idx1-ubyte.gz", (torch.arange(n_train) % 5).to(torch.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", items(n_test, TEST_INK))
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", (5 + torch.arange(n_test) % 5).to(torch.uint8))
    return root


def scenes_conf(root, **kw):
    base = dict(name="fashion_scenes", root=str(root), download=False, batch_size=8, image_size=None, augment=False,
                num_classes=11, in_channels=1, native_size=48, mean=[0.0], std=[1.0], train_size=40, val_size=16,
                num_workers=0, val_fraction=0.0, canvas=48, max_items=4)
    return SimpleNamespace(**{**base, **kw})


def raw(x: torch.Tensor) -> torch.Tensor:
    """Normalised batch (mean 0, std 1) -> its uint8 pixels."""
    return (x * 255).round().to(torch.uint8)


def write_voc(root, images, masks, split_ids):
    """A PASCAL VOC folder: images (N, H, W, 3) uint8 as JPEGImages/<id>.jpg, masks (N, H, W) uint8 as
    SegmentationClass/<id>.png (palette PNGs: the values are palette indices), split_ids
    {"train": [indices], "val": [indices]} as ImageSets/Segmentation/<split>.txt; ids "2007_%06d"."""
    from PIL import Image

    for d in ("JPEGImages", "SegmentationClass", "ImageSets/Segmentation"):
        (root / d).mkdir(parents=True, exist_ok=True)
    colours = np.random.default_rng(0).integers(0, 256, (256, 3), dtype=np.uint8).ravel().tolist()
    for i, (image, mask) in enumerate(zip(images, masks)):
        Image.fromarray(np.ascontiguousarray(image)).save(root / "JPEGImages" / f"2007_{i:06d}.jpg", quality=95)
        png = Image.frombytes("P", (mask.shape[1], mask.shape[0]), np.ascontiguousarray(mask).tobytes())
        png.putpalette(colours)
        png.save(root / "SegmentationClass" / f"2007_{i:06d}.png")
    for split, ids in split_ids.items():
        (root / "ImageSets" / "Segmentation" / f"{split}.txt").write_text("".join(f"2007_{i:06d}\n" for i in ids))
    return root


def voc_conf(root, **kw):
    base = dict(name="voc_segmentation", root=str(root), download=False, batch_size=2, image_size=48, augment=False,
                num_classes=21, in_channels=3, native_size=48, mean=[0.0] * 3, std=[1.0] * 3, train_size=0,
                val_size=0, num_workers=0, val_fraction=0.0, canvas=96, max_items=4)
    return SimpleNamespace(**{**base, **kw})


@pytest.fixture(scope="module")
def fashion_root(tmp_path_factory):
    return fake_fashion_mnist(tmp_path_factory.mktemp("scenes"))


@pytest.fixture(scope="module")
def built(fashion_root):
    return build_data(scenes_conf(fashion_root), CPU, 0, 48)


# ---------------------------------------------------------------------------------------------
# fashion_scenes
# ---------------------------------------------------------------------------------------------

def test_scenes_are_the_same_for_a_seed_and_differ_for_another(fashion_root, built):
    train, val, info = built
    scenes._CACHE.clear()  # generated afresh, not the cached tensors
    again, again_val, _ = build_data(scenes_conf(fashion_root), CPU, 0, 48)
    assert all(torch.equal(a, b) for a, b in [(train.images, again.images), (train.masks, again.masks),
                                               (train.boxes, again.boxes), (val.images, again_val.images)])
    other, _, _ = build_data(scenes_conf(fashion_root), CPU, 1, 48)
    assert not torch.equal(other.images, train.images)
    fewer, fewer_val, _ = build_data(scenes_conf(fashion_root, train_size=24, val_size=8), CPU, 0, 48)
    assert torch.equal(fewer.images, train.images[:24]) and torch.equal(fewer_val.masks, val.masks[:8])  # first N
    assert info.task == "segmentation" and info.ignore_index == 255 and info.num_classes == 11
    assert info.source == f"generated from {fashion_root / 'FashionMNIST' / 'raw'}"
    assert (info.train_size, info.val_size, info.train_used) == (40, 16, 40)
    assert info.classes[0] == {"index": 0, "name": "background", "train_images": 40, "val_images": 16}
    assert info.classes[1]["name"] == "T-shirt/top" and info.classes[10]["name"] == "Ankle boot"
    assert info.bytes == 56 * 48 * 48 * 2 + (len(train.boxes) + len(val.boxes)) * 6 * 4


def test_masks_label_items_background_and_ambiguous_pixels(built):
    for loader, classes in zip(built[:2], (range(1, 6), range(6, 11))):  # training items 0-4, test items 5-9
        x, m = loader.images[:, 0], loader.masks
        assert set(m.unique().tolist()) <= {0, *classes, IGNORE}
        assert (m[x == 0] == 0).all() and (m[x >= scenes.HIGH] != 0).all()  # black: background; ink: not
        assert (m[x <= scenes.LOW] == 0).all()
        rim = (x > scenes.LOW) & (x < scenes.HIGH)
        assert rim.any() and (m[rim] == IGNORE).all()  # anti-aliased rims are ignored
    assert built[0].images.max() == TRAIN_INK and built[1].images.max() == TEST_INK  # each split's own items


def test_boxes_are_tight_around_each_item_and_hold_every_labelled_pixel(built):
    for loader in built[:2]:
        x, m, boxes = loader.images[:, 0], loader.masks, loader.boxes
        n = len(x)
        assert boxes.shape[1] == 6 and set(boxes[:, 0].long().tolist()) == set(range(n))  # every canvas has items
        covered = torch.zeros(n, 11, 48, 48, dtype=torch.bool)
        for c, k, x1, y1, x2, y2 in boxes.long().tolist():
            assert 0 <= x1 < x2 <= 48 and 0 <= y1 < y2 <= 48
            assert (m[c, y1:y2, x1:x2] == k + 1).any()  # the item's class is in the mask
            inside = x[c, y1:y2, x1:x2] >= scenes.HIGH
            assert inside[0].any() and inside[-1].any() and inside[:, 0].any() and inside[:, -1].any()  # tight
            covered[c, k + 1, y1:y2, x1:x2] = True
        labelled = (m > 0) & (m < IGNORE)
        c, yy, xx = labelled.nonzero(as_tuple=True)
        assert covered[c, m[c, yy, xx].long(), yy, xx].all()  # each labelled pixel is in a box of its class


def test_scenes_resized_and_checked(fashion_root, built):
    train, val, info = build_data(scenes_conf(fashion_root), CPU, 0, 96)
    assert train.images.shape[-1] == 96 and train.masks.shape[-1] == 96 and info.image_size == 96
    assert torch.equal(train.boxes[:, 2:], built[0].boxes[:, 2:] * 2)  # boxes in px of what is yielded
    assert torch.equal(train.masks, resize_masks(built[0].masks, 96))
    with pytest.raises(CnnbenchError, match="1-channel images but dataset.in_channels=3. Remove the override"):
        build_data(scenes_conf(fashion_root, in_channels=3), CPU, 0, 48)
    with pytest.raises(CnnbenchError, match="has 40 images, fewer than one batch of dataset.batch_size=64"):
        build_data(scenes_conf(fashion_root, batch_size=64), CPU, 0, 48)
    with pytest.raises(CnnbenchError, match="masks of dataset=fashion_scenes go up to 10"):
        build_data(scenes_conf(fashion_root, num_classes=10), CPU, 0, 48)


def test_the_config_takes_native_size_from_the_canvas():
    from omegaconf import OmegaConf

    from cnnbench.cli import compose_config

    d = OmegaConf.to_object(compose_config(["dataset=fashion_scenes", "dataset.canvas=64"]).dataset)
    assert (d.native_size, d.num_classes, d.train_size, d.augment) == (64, None, 10000, True)  # None: per task
    v = OmegaConf.to_object(compose_config(["dataset=voc_segmentation"]).dataset)
    assert (v.num_classes, v.image_size, v.in_channels, v.download) == (21, 256, 3, False)


# ---------------------------------------------------------------------------------------------
# SegmentationLoader
# ---------------------------------------------------------------------------------------------

def paired(n=24, size=16):
    """Images of values 1-250 and masks that are a function of them (value % 11): any mix-up between
    an image's pixels and its mask's shows."""
    x = torch.randint(1, 251, (n, 1, size, size), generator=torch.Generator().manual_seed(0), dtype=torch.uint8)
    return x, x[:, 0] % 11


def test_augmentation_moves_image_and_mask_together_and_pads_the_mask_with_ignore():
    x, m = paired()
    loader = SegmentationLoader(x, m, 8, [0.0], [1.0], train=True, augment=True, seed=1)
    assert loader.pad == 2  # 16 px // 8
    padded = 0
    for xb, yb in loader:
        assert yb.dtype == torch.int64 and yb.shape == (8, 16, 16)
        pixels = raw(xb)[:, 0]
        pad = pixels == 0  # the images' own values are 1-250: 0 is padding
        assert torch.equal(pad, yb == IGNORE)  # padding, and only padding, is ignored in the mask
        assert torch.equal(yb[~pad], (pixels[~pad] % 11).long())  # every pixel kept its own label
        padded += int(pad.any())
    assert padded > 0
    loader.pad = 0  # flips only: a flipped image and its mask are the source's, mirrored
    flipped = 0
    for xb, yb in loader:
        for image, mask in zip(raw(xb)[:, 0], yb):
            i = next(i for i in range(len(x)) if torch.equal(image, x[i, 0]) or torch.equal(image, x[i, 0].flip(-1)))
            mirrored = not torch.equal(image, x[i, 0])
            assert torch.equal(mask, (m[i].flip(-1) if mirrored else m[i]).long())
            flipped += mirrored
    assert 0 < flipped < 24


def test_a_resumed_epoch_and_the_data_parallel_shares_give_the_same_batches():
    x, m = paired()
    whole = SegmentationLoader(x, m, 6, [0.0], [1.0], train=True, augment=True, seed=3)
    whole.set_epoch(2)
    batches = list(whole)
    assert len(whole) == 4 and whole.num_samples == 24
    whole.set_epoch(2, start=2)
    resumed = list(whole)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(resumed, batches[2:]))
    assert len(resumed) == 2
    ranks = [SegmentationLoader(x, m, 3, [0.0], [1.0], train=True, augment=True, seed=3, rank=r, world=2)
             for r in range(2)]
    for r in ranks:
        r.set_epoch(2)
    for b, (r0, r1) in zip(batches, zip(*ranks)):  # each rank: its half of the global batch, augmented the same
        assert torch.equal(torch.cat([r0[0], r1[0]]), b[0]) and torch.equal(torch.cat([r0[1], r1[1]]), b[1])
    ids = torch.arange(1, 25, dtype=torch.uint8).view(24, 1, 1, 1).expand(24, 1, 4, 4).contiguous()
    plain = [SegmentationLoader(ids, ids[:, 0], 3, [0.0], [1.0], train=True, rank=r, world=2) for r in range(2)]
    for a, b in zip(*plain):
        one, two = set(raw(a[0])[:, 0, 0, 0].tolist()), set(raw(b[0])[:, 0, 0, 0].tolist())
        assert len(one) == len(two) == 3 and not one & two  # disjoint shares
    val = [SegmentationLoader(ids, ids[:, 0], 5, [0.0], [1.0], train=False, rank=r, world=2) for r in range(2)]
    seen = [int(v) for loader in val for _, y in loader for v in y[:, 0, 0]]
    assert sorted(seen) == list(range(1, 25))  # validation: each image once, by one process


def test_resizing_up_front_or_per_batch_gives_the_same_batches_and_preview(monkeypatch):
    x, m = paired(n=12, size=16)
    conf = SimpleNamespace(name="t", batch_size=4, mean=[0.0], std=[1.0], augment=True)
    up_front = segmentation_loaders(x, m, x, m, conf, CPU, 0, 24)
    monkeypatch.setattr(memory, "PRERESIZE_LIMIT_BYTES", 0)
    per_batch = segmentation_loaders(x, m, x, m, conf, CPU, 0, 24)
    assert up_front[0].images.shape[-1] == 24 and per_batch[0].images.shape[-1] == 16
    for a, b in zip(up_front, per_batch):
        for (xa, ya), (xb, yb) in zip(a, b):
            assert torch.equal(xa, xb) and torch.equal(ya, yb)
        assert set(torch.cat([y.view(-1) for _, y in a]).tolist()) <= set(m.view(-1).tolist()) | {IGNORE}
    px, py = per_batch[1].preview(4)
    assert px.dtype == torch.uint8 and px.shape == (4, 1, 24, 24) and py.shape == (4, 24, 24)
    assert torch.equal(px, up_front[1].images[:4]) and torch.equal(py, up_front[1].masks[:4].long())


# ---------------------------------------------------------------------------------------------
# voc_segmentation
# ---------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def voc_scenes(built):
    """6 scenes as colour photos with VOC-style masks: 0-10 and the 255 outline."""
    train = built[0]
    return train.images[:6, 0, :, :, None].expand(6, 48, 48, 3).numpy(), train.masks[:6].numpy()


@pytest.mark.parametrize("where", ["VOC2012", "VOCdevkit", "above"])
def test_a_voc_folder_is_found_and_read_back(tmp_path, voc_scenes, where):
    images, masks = voc_scenes
    write_voc(tmp_path / "VOCdevkit" / "VOC2012", images, masks, {"train": [0, 1, 2, 3], "val": [4, 5]})
    root = {"VOC2012": tmp_path / "VOCdevkit" / "VOC2012", "VOCdevkit": tmp_path / "VOCdevkit",
            "above": tmp_path}[where]
    train, val, info = build_data(voc_conf(root), CPU, 0, 48)
    assert torch.equal(train.masks, torch.from_numpy(masks[:4])) and torch.equal(val.masks, torch.from_numpy(masks[4:]))
    assert (train.images.float() - torch.from_numpy(images[:4]).permute(0, 3, 1, 2).float()).abs().mean() < 4  # JPEG
    assert info.source == str(tmp_path / "VOCdevkit" / "VOC2012") and info.num_classes == 21
    assert info.task == "segmentation" and info.ignore_index == 255 and (info.train_size, info.val_size) == (4, 2)
    assert [c["name"] for c in info.classes[:3]] == ["background", "aeroplane", "bicycle"]
    assert info.classes[0]["train_images"] == 4
    small, _, _ = build_data(voc_conf(root, image_size=24), CPU, 0, 24)  # nearest: every other pixel, no new values
    assert torch.equal(small.masks, torch.from_numpy(masks[:4, 1::2, 1::2]))
    assert torch.equal(small.masks, resize_masks(torch.from_numpy(masks[:4]), 24))


def test_bad_voc_inputs_name_the_file(tmp_path, voc_scenes):
    from PIL import Image

    images, masks = voc_scenes
    ids = {"train": [0, 1, 2, 3], "val": [4, 5]}
    folder = write_voc(tmp_path / "VOC2012", images, masks, ids)
    png = folder / "SegmentationClass" / "2007_000002.png"
    bad = masks.copy()
    bad[2, 0, 0] = 30
    write_voc(folder, images, bad, ids)
    with pytest.raises(CnnbenchError, match=r"2007_000002.png holds the value 30, but dataset.num_classes=21"):
        build_data(voc_conf(folder), CPU, 0, 48)
    Image.fromarray(masks[2, :40]).convert("P").save(png)
    with pytest.raises(CnnbenchError, match=r"2007_000002.png is 48 x 40 px but its image .*_000002.jpg is 48 x 48"):
        build_data(voc_conf(folder), CPU, 0, 48)
    Image.fromarray(images[2]).save(png)
    with pytest.raises(CnnbenchError, match=r"2007_000002.png has PIL mode RGB; a VOC mask is a palette"):
        build_data(voc_conf(folder), CPU, 0, 48)
    png.unlink()
    with pytest.raises(CnnbenchError, match=r"2007_000002.png is missing: the mask of id '2007_000002'"):
        build_data(voc_conf(folder), CPU, 0, 48)
    write_voc(folder, images, masks, ids)
    (folder / "JPEGImages" / "2007_000005.jpg").unlink()
    with pytest.raises(CnnbenchError, match=r"2007_000005.jpg is missing: the image of id '2007_000005'"):
        build_data(voc_conf(folder), CPU, 0, 48)
    (folder / "JPEGImages" / "2007_000003.jpg").write_bytes(b"\xff\xd8 not a whole JPEG")
    with pytest.raises(CnnbenchError, match=r"2007_000003.jpg cannot be read as an image .* Extract it again"):
        build_data(voc_conf(folder), CPU, 0, 48)
    with pytest.raises(CnnbenchError) as e:
        build_data(voc_conf(tmp_path / "nothing"), CPU, 0, 48)
    for part in ("nothing/VOCdevkit/VOC2012", "JPEGImages/", "dataset.root", "dataset.download=true",
                 "download is off"):
        assert part in str(e.value)
