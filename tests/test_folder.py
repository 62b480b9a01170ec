"""Image folders: what enters the model is what the user has and sees. Class folders and not
tool leftovers, every pixel depth scaled by its range, the EXIF orientation applied, unreadable
files refilled, augmentation draws that do not depend on the workers, subsets that are honoured."""

import json
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_cfg

from cnnbench import cli, run
from cnnbench.data import build_data
from cnnbench.data.folder import balanced_subset, load_image
from cnnbench.errors import CnnbenchError

from test_data import dataset_conf


def folder(root: Path, classes=("cat", "dog"), n_train=4, n_val=2, size=8) -> Path:
    """root/{train,val}/<class>/<i>.png, 8-bit RGB; image i of class c is red 40 * c + 10 * i."""
    for split, n in (("train", n_train), ("val", n_val)):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (size, size), (40 * c + 10 * i, 0, 0)).save(root / split / name / f"{i}.png")
    return root


def textured(root: Path) -> Path:
    """Noise in every training image: crops and flips of a plain colour would all look alike."""
    for i, f in enumerate(sorted((root / "train").rglob("*.png"))):
        size = Image.open(f).size
        Image.fromarray(np.random.default_rng(i).integers(0, 255, (*size, 3), dtype=np.uint8)).save(f)
    return root


def folder_conf(root, **kw):
    return dataset_conf(**{**dict(name="imagefolder", root=str(root), num_classes=None, in_channels=3,
                                  mean=[0, 0, 0], std=[1, 1, 1], batch_size=2), **kw})


# ---------------------------------------------------------------------------------------------
# 1. What is a class
# ---------------------------------------------------------------------------------------------

def test_folders_that_tools_leave_are_neither_classes_nor_images(tmp_path):
    root = folder(tmp_path)
    leftovers = ["train/.ipynb_checkpoints/0-checkpoint.png", "val/.ipynb_checkpoints/0-checkpoint.png",
                 "train/__MACOSX/cat/._0.png", "train/@eaDir/0.png", "train/cat/.ipynb_checkpoints/1-checkpoint.png",
                 "train/cat/._0.png", "train/dog/.git/objects/x.png", "val/lost+found/1.png"]
    for name in leftovers:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8, 8)).save(root / name, format="PNG")
    train, val, info = build_data(folder_conf(root), torch.device("cpu"), 0, 8)
    assert info.num_classes == 2
    assert info.classes == [{"index": 0, "name": "cat", "train_images": 4, "val_images": 2},
                            {"index": 1, "name": "dog", "train_images": 4, "val_images": 2}]
    assert len(train.loader.dataset) == 8 and len(val.loader.dataset) == 4  # no leftover read as an image
    cfg = compose_cfg("dataset=imagefolder", f"dataset.root={root}", "model.num_classes=1")
    with pytest.raises(CnnbenchError, match="fewer than the 2 classes"):  # the up-front count agrees
        run.validate(cfg)


def test_a_class_missing_from_a_split_is_named(tmp_path):
    root = folder(tmp_path, classes=("cat", "dog", "emu"))
    for f in (root / "val" / "dog").iterdir():
        f.unlink()
    (root / "val" / "dog").rmdir()
    (root / "val" / "fox").mkdir()
    Image.new("RGB", (8, 8)).save(root / "val" / "fox" / "0.png")
    with pytest.raises(CnnbenchError) as e:
        build_data(folder_conf(root), torch.device("cpu"), 0, 8)
    assert f"different class folders: dog only in {root / 'train'}/; fox only in {root / 'val'}/." in str(e.value)


# ---------------------------------------------------------------------------------------------
# 2, 3. Pixels: every depth by its range, the orientation the file declares
# ---------------------------------------------------------------------------------------------

def _png16(path: Path, a: np.ndarray) -> None:
    """A 16-bit PNG written byte by byte (PIL writes none in colour): a (H, W) grey or (H, W, 3) RGB."""
    h, w = a.shape[:2]
    rows = b"".join(b"\x00" + a[y].astype(">u2").tobytes() for y in range(h))  # filter 0 per row

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    colour = 2 if a.ndim == 3 else 0
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, colour, 0, 0, 0))
                     + chunk(b"IDAT", zlib.compress(rows)) + chunk(b"IEND", b""))


def _tiff(path: Path, a: np.ndarray) -> None:
    Image.fromarray(a).save(path)  # int32 -> mode I (SampleFormat 2, signed), float32 -> mode F


# (write the file, its pixel values as the file holds them, their dtype, the range of its type)
PIXEL_TYPES = {
    "8-bit grey": (lambda p, a: Image.fromarray(a).save(p), [0, 38, 117, 255], np.uint8, (0, 255)),
    "16-bit grey": (_png16, [0, 9830, 30146, 65535], np.uint16, (0, 65535)),  # 0%, 15%, 46%, 100% grey
    "16-bit colour": (_png16, [0, 9830, 30146, 65535], np.uint16, (0, 65535)),
    "1-bit": (lambda p, a: Image.fromarray(a).save(p), [0, 1, 1, 0], bool, (0, 1)),
    "32-bit signed integer": (_tiff, [-2**31, -2**30, 2**30, 2**31 - 1], np.int32, (-2**31, 2**31 - 1)),
    "32-bit float": (_tiff, [0.0, 0.15, 0.46, 1.0], np.float32, (0.0, 1.0)),
}


@pytest.mark.parametrize("kind", PIXEL_TYPES)
def test_every_pixel_type_is_scaled_by_its_range_never_clipped(kind, tmp_path):
    write, values, dtype, (lo, hi) = PIXEL_TYPES[kind]
    a = np.array([values], dtype=dtype).repeat(2, axis=0)  # (2, 4): one value per column
    if kind == "16-bit colour":
        a = np.stack([a, a[:, ::-1], a], axis=-1)  # (2, 4, 3): green runs the other way
    path = tmp_path / f"img.{'tif' if kind.startswith('32') else 'png'}"
    write(path, a)
    expected = np.rint((np.asarray(values, dtype=np.float64) - lo) * 255 / (hi - lo))  # what a viewer shows
    rgb = np.asarray(load_image(str(path), channels=3))  # (2, 4, 3) uint8
    assert rgb[0, :, 0].tolist() == expected.tolist()
    assert rgb[0, :, 1].tolist() == (expected[::-1] if kind == "16-bit colour" else expected).tolist()
    assert np.asarray(load_image(str(path), channels=1)).shape == (2, 4)  # grey: one channel


def test_sixteen_bit_classes_reach_the_model_as_their_grey(tmp_path):
    """The reported case: 16-bit grey PNGs of 15% and 75% grey arrived as 255 (white) both."""
    for split in ("train", "val"):
        for name, grey in (("dark", 0.15), ("light", 0.75)):
            (tmp_path / split / name).mkdir(parents=True)
            for i in range(2):
                _png16(tmp_path / split / name / f"{i}.png", np.full((8, 8), round(grey * 65535)))
    conf = folder_conf(tmp_path, in_channels=1, mean=[0], std=[1], augment=False, batch_size=4)
    _, val, _ = build_data(conf, torch.device("cpu"), 0, 8)
    x, y = next(iter(val))
    assert x.shape == (4, 1, 8, 8)
    assert torch.allclose(x.mean((1, 2, 3)), torch.tensor([0.15, 0.15, 0.75, 0.75]), atol=1 / 255)


def test_float_pixels_outside_zero_to_one_are_unreadable_with_the_reason(tmp_path):
    _tiff(tmp_path / "depth.tif", np.array([[0.0, 3.5]], dtype=np.float32))
    with pytest.raises(ValueError, match="32-bit float pixels from 0 to 3.5, outside 0-1"):
        load_image(str(tmp_path / "depth.tif"), channels=3)


def test_exif_orientation_is_applied_as_a_viewer_does(tmp_path):
    """A phone held upright stores a 60 x 40 image and EXIF Orientation 6 (turn 90 degrees
    clockwise to view): a viewer shows 40 wide x 60 high, and so does cnnbench."""
    stored = Image.new("RGB", (60, 40), (0, 0, 255))
    stored.paste((255, 0, 0), (0, 0, 60, 10))  # the stored top rows: red
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation
    stored.save(tmp_path / "phone.jpg", exif=exif, quality=95)
    shown = load_image(str(tmp_path / "phone.jpg"), channels=3)
    assert shown.size == (40, 60)  # (width, height)
    a = np.asarray(shown).astype(int)
    assert a[30, -3, 0] > 200 and a[30, 3, 2] > 200  # the stored top is now the right-hand side


# ---------------------------------------------------------------------------------------------
# 4. Unreadable files: every training batch keeps its size
# ---------------------------------------------------------------------------------------------

def test_an_unreadable_training_image_is_replaced_and_every_batch_is_full(tmp_path):
    root = folder(tmp_path, n_train=3)
    (root / "train" / "cat" / "1.png").write_bytes(b"not an image")
    (root / "train" / "dog" / "2.png").write_bytes(b"")
    train, _, info = build_data(folder_conf(root), torch.device("cpu"), 0, 8)
    for epoch in range(3):
        train.set_epoch(epoch)
        sizes = [len(y) for _, y in train]
        assert sizes == [2, 2, 2]  # 6 files, 2 unreadable: each slot refilled from the next readable file
    assert len(train.unreadable) == 2 and train.short_batches == 0  # the record: 6 - 2 = 4 readable images
    assert (info.train_size, info.train_used) == (6, 6)


# ---------------------------------------------------------------------------------------------
# 5. Augmentation draws: a function of (seed, epoch, image), whatever the workers
# ---------------------------------------------------------------------------------------------

def _pass(loader, epoch, start=0):
    loader.set_epoch(epoch, start)
    return [(x.clone(), y.clone()) for x, y in loader]


def test_augmentation_draws_do_not_depend_on_workers_or_where_a_pass_starts(tmp_path):
    root = textured(folder(tmp_path, n_train=6, size=24))

    def loader(workers):
        conf = folder_conf(root, augment=True, num_workers=workers, batch_size=4)
        return build_data(conf, torch.device("cpu"), 7, 16)[0]

    inline, two = loader(0), loader(2)
    straight = [_pass(two, 0), _pass(two, 1)]  # persistent workers carry on from epoch 0 to 1
    for epoch in (0, 1):
        reference = _pass(inline, epoch)
        for (a, ya), (b, yb) in zip(reference, straight[epoch], strict=True):
            assert torch.equal(a, b) and torch.equal(ya, yb)
        later = _pass(loader(2), epoch, start=1)  # a fresh process resuming at batch 1
        assert all(torch.equal(a, b) for (a, _), (b, _) in zip(reference[1:], later, strict=True))

    def images(batches):
        return sorted(x.numpy().tobytes() for b, _ in batches for x in b)

    assert images(straight[0]) != images(straight[1])  # the same files, other crops: the draws are real


def test_a_resumed_run_with_augmenting_workers_ends_with_the_same_weights(tmp_path):
    root = folder(tmp_path / "imgs", n_train=6, size=20)
    textured(root)
    common = ["dataset=imagefolder", f"dataset.root={root}", "dataset.augment=true", "dataset.num_workers=2",
              "model=mobilenet_v1", "model.stem=small", "model.alpha=0.25", "model.dropout=0.5",  # dropout draws
              "dataset.batch_size=4", "dataset.image_size=32", "trainer.deterministic=true", "scheduler=none",
              "trainer.threads=1",  # the same sums whatever the machine's load
              "trainer.device=cpu", "trainer.log_filters=false", "trainer.progress=false"]
    run.train(compose_cfg(*common, "trainer.epochs=2"), tmp_path / "straight")
    run.train(compose_cfg(*common, "trainer.epochs=1"), tmp_path / "resumed")
    run.train(compose_cfg(*common, "trainer.epochs=2", "trainer.resume=true"), tmp_path / "resumed")
    a, b = (torch.load(tmp_path / d / "checkpoints" / "last.pt", weights_only=True)["weights"]
            for d in ("straight", "resumed"))
    assert all(torch.equal(a[k], b[k]) for k in a)
    history = [json.loads((tmp_path / d / "results.json").read_text())["history"] for d in ("straight", "resumed")]
    assert [r["train_loss"] for r in history[0]] == [r["train_loss"] for r in history[1]]


# ---------------------------------------------------------------------------------------------
# 6. Subsets are honoured
# ---------------------------------------------------------------------------------------------

def test_train_and_val_size_take_a_fixed_balanced_subset(tmp_path):
    root = folder(tmp_path, n_train=12, n_val=6)
    conf = folder_conf(root, train_size=6, val_size=3)
    train, val, info = build_data(conf, torch.device("cpu"), 0, 8)
    assert (info.train_size, info.val_size) == (6, 3)
    assert [(c["train_images"], c["val_images"]) for c in info.classes] == [(3, 2), (3, 1)]  # classes take turns
    again = build_data(conf, torch.device("cpu"), 5, 8)[0]  # another run seed: the same images
    assert again.loader.dataset.samples == train.loader.dataset.samples
    assert {5, 6} <= set(balanced_subset([0] * 5 + [1] * 2, 6))  # the small class gives all it has


def test_the_record_holds_the_classes_and_the_subset(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    root = folder(tmp_path / "imgs", n_train=12, n_val=6)
    (root / "train" / ".ipynb_checkpoints").mkdir()
    Image.new("RGB", (8, 8)).save(root / "train" / ".ipynb_checkpoints" / "0-checkpoint.png")
    run_dir = tmp_path / "run"
    assert cli.main(["train", "dataset=imagefolder", f"dataset.root={root}", "dataset.train_size=12",
                     "dataset.val_size=3", "dataset.batch_size=2", "dataset.num_workers=0", "dataset.image_size=32",
                     "trainer=smoke", f"hydra.run.dir={run_dir}"]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    # 12 images, but trainer=smoke stops each epoch after 4 steps of 2: 8 trained on, and the log says so
    assert (results["train_images"], results["train_images_used"], results["val_images"]) == (12, 8, 3)
    assert results["classes"] == [{"index": 0, "name": "cat", "train_images": 6, "val_images": 2},
                                  {"index": 1, "name": "dog", "train_images": 6, "val_images": 1}]
    log = (run_dir / "train.log").read_text()
    assert "2 classes (index name: train/val images): 0 cat: 6/2, 1 dog: 6/1" in log
    assert "Training on 8 of the 12 training images each epoch: trainer.max_steps_per_epoch=4 steps of " \
           "dataset.batch_size=2, so 4 are left out" in log


def test_an_input_size_the_user_never_set_is_named_with_where_it_came_from(tmp_path):
    """model=lenet5 dataset=imagefolder: 224 px is imagefolder.yaml's, not the user's."""
    with pytest.raises(CnnbenchError, match=r"dataset.image_size=224 \(the default of dataset=imagefolder, in "
                                            r"conf/dataset/imagefolder.yaml\) is too large for lenet5"):
        run.validate(compose_cfg("dataset=imagefolder", f"dataset.root={tmp_path}"))
    with pytest.raises(CnnbenchError, match=r"dataset.image_size=64 is too large for lenet5"):  # the user's own
        run.validate(compose_cfg("dataset=imagefolder", f"dataset.root={tmp_path}", "dataset.image_size=64"))


def test_a_folder_without_val_validates_on_a_fixed_share_of_train(tmp_path):
    root = folder(tmp_path, n_train=8)
    for f in (root / "val").rglob("*.png"):
        f.unlink()
    for d in (root / "val").iterdir():
        d.rmdir()
    (root / "val").rmdir()
    with pytest.raises(CnnbenchError, match=r"Or, for a folder without val/, validate on a share of train/: "
                                            r"dataset.val_fraction=0.1"):
        build_data(folder_conf(root), torch.device("cpu"), 0, 8)
    train, val, info = build_data(folder_conf(root, val_fraction=0.25), torch.device("cpu"), 0, 8)
    assert [(c["train_images"], c["val_images"]) for c in info.classes] == [(6, 2), (6, 2)]
    held = {p for p, _ in val.loader.dataset.samples}
    assert held.isdisjoint(p for p, _ in train.loader.dataset.samples)  # no image in both
    again = build_data(folder_conf(root, val_fraction=0.25), torch.device("cpu"), 9, 8)[1]
    assert {p for p, _ in again.loader.dataset.samples} == held  # another seed: the same held-out images


def test_a_run_of_the_earlier_folder_reader_is_not_resumed_with_this_one(tmp_path):
    root = folder(tmp_path / "imgs", n_train=4)
    common = ["dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=32", "dataset.num_workers=0",
              "dataset.batch_size=4", "trainer=smoke"]
    run.train(compose_cfg(*common, "trainer.epochs=1"), tmp_path / "run")
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    del state["folder_reader"]  # as an earlier cnnbench saved it
    torch.save(state, last)
    with pytest.raises(CnnbenchError, match="trained by an earlier cnnbench's image-folder reader"):
        run.check_run_dir(compose_cfg(*common, "trainer.epochs=2", "trainer.resume=true"), tmp_path / "run")


def test_a_network_that_takes_one_size_only_is_tried_at_the_run_s(tmp_path):
    """ViT-B/16 takes 224 px and no other: accepted at 224, refused elsewhere with the reason."""
    vit = ["model=torchvision", "model.arch=vit_b_16", "dataset=synthetic", "trainer=smoke"]
    run.validate(compose_cfg(*vit, "dataset.image_size=224"))
    with pytest.raises(CnnbenchError, match="takes 224 px but not every size above some smallest one"):
        run.validate(compose_cfg(*vit, "dataset.image_size=64"))
