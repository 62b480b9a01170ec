"""Data: IDX files, the in-memory loader's batches and augmentation, missing-data messages."""

import gzip
import struct
from types import SimpleNamespace

import pytest
import torch

import cnnbench.data as data
from cnnbench.data import build_data, read_idx
from cnnbench.data.memory import InMemoryLoader, Normalize, random_crop_flip, resize_uint8
from cnnbench.errors import CnnbenchError


def write_idx(path, array: torch.Tensor, compress: bool):
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(struct.pack(">i", d) for d in array.shape)
    raw = header + array.numpy().tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def fake_mnist(folder, n_train=40, n_val=20, compress=True):
    folder.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(0)
    arrays = {"train-images-idx3-ubyte": torch.randint(0, 256, (n_train, 28, 28), generator=g, dtype=torch.uint8),
              "train-labels-idx1-ubyte": torch.arange(n_train, dtype=torch.uint8) % 10,
              "t10k-images-idx3-ubyte": torch.randint(0, 256, (n_val, 28, 28), generator=g, dtype=torch.uint8),
              "t10k-labels-idx1-ubyte": torch.arange(n_val, dtype=torch.uint8) % 10}
    for name, a in arrays.items():
        write_idx(folder / (name + (".gz" if compress else "")), a, compress)
    return arrays


def dataset_conf(**kw):
    base = dict(name="mnist", root="data", download=False, batch_size=8, image_size=None, augment=False,
                num_classes=10, in_channels=1, native_size=28, mean=[0.5], std=[0.5], train_size=0,
                val_size=0, num_workers=0, val_fraction=0.0)
    return SimpleNamespace(**{**base, **kw})


@pytest.mark.parametrize("compress", [True, False])
def test_idx_files_read_plain_or_gzipped(tmp_path, compress):
    arrays = fake_mnist(tmp_path / "MNIST" / "raw", compress=compress)
    train, val, info = build_data(dataset_conf(root=str(tmp_path)), torch.device("cpu"), 0, 28)
    assert torch.equal(train.images[:, 0], arrays["train-images-idx3-ubyte"])
    assert torch.equal(val.labels, arrays["t10k-labels-idx1-ubyte"].long())
    assert (info.train_size, info.val_size, info.source) == (40, 20, str(tmp_path / "MNIST" / "raw"))


def test_a_class_count_below_the_labels_is_refused_and_the_classes_are_named(tmp_path):
    fake_mnist(tmp_path / "MNIST" / "raw")  # labels 0-9
    with pytest.raises(CnnbenchError, match=r"dataset.num_classes=5, but the labels of dataset=mnist go up to 9"):
        build_data(dataset_conf(root=str(tmp_path), num_classes=5), torch.device("cpu"), 0, 28)
    _, _, info = build_data(dataset_conf(root=str(tmp_path)), torch.device("cpu"), 0, 28)
    assert info.classes[:2] == [{"index": 0, "name": "0 - zero", "train_images": 4, "val_images": 2},
                                {"index": 1, "name": "1 - one", "train_images": 4, "val_images": 2}]


def test_truncated_idx_file_is_reported(tmp_path):
    fake_mnist(tmp_path / "mnist", compress=False)
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CnnbenchError, match="truncated"):
        read_idx(path)


def test_missing_fashion_mnist_names_every_path_and_the_fixes(tmp_path, monkeypatch):
    monkeypatch.setitem(data._MNIST_LIKE, "fashion_mnist",
                        ("FashionMNIST", ["fashion-mnist", "fashion_mnist", str(tmp_path / "debian")]))
    with pytest.raises(CnnbenchError) as e:
        build_data(dataset_conf(name="fashion_mnist", root=str(tmp_path / "d")), torch.device("cpu"), 0, 28)
    msg = str(e.value)
    for part in ("d/FashionMNIST/raw", "d/fashion-mnist", str(tmp_path / "debian"), "dataset.root",
                 "apt-get install dataset-fashion-mnist", "dataset=synthetic", "download is off"):
        assert part in msg


def test_in_memory_loader_batches_order_and_normalisation():
    images = torch.arange(10, dtype=torch.uint8).view(10, 1, 1, 1).expand(10, 1, 4, 4).contiguous()
    labels = torch.arange(10)
    train = InMemoryLoader(images, labels, 4, [0.5], [0.25], train=True, seed=3)
    val = InMemoryLoader(images, labels, 4, [0.5], [0.25], train=False)
    assert len(train) == 2 and len(val) == 3  # training drops the partial batch
    seen = torch.cat([y for _, y in train])
    assert len(set(seen.tolist())) == 8  # a permutation, no repeats
    train.set_epoch(0)
    a = [y.tolist() for _, y in train]
    train.set_epoch(1)
    b = [y.tolist() for _, y in train]
    train.set_epoch(0)
    assert [y.tolist() for _, y in train] == a != b  # the order is a function of the epoch
    x, y = next(iter(val))
    expected = (y.float() / 255 - 0.5) / 0.25  # (pixel / 255 - mean) / std
    assert torch.allclose(x[:, 0, 0, 0], expected, atol=1e-6)
    assert [len(y) for _, y in val] == [4, 4, 2]


def test_random_crop_flip_shifts_and_mirrors_whole_images():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(1, 256, (64, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(x, pad=2, gen=g)
    assert out.shape == x.shape and out.dtype == torch.uint8
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    for i in range(64):  # every output is one 8x8 window of the padded image, maybe mirrored
        windows = [padded[i, :, dy:dy + 8, dx:dx + 8] for dy in range(5) for dx in range(5)]
        assert any(torch.equal(out[i], w) or torch.equal(out[i], w.flip(2)) for w in windows)
    assert not torch.equal(out, x)  # something moved
    assert (out == 0).any()  # zero padding shows at some edge


def test_normalize_and_resize():
    norm = Normalize([0.5, 0.25], [0.5, 0.25], torch.device("cpu"))
    x = torch.full((1, 2, 2, 2), 255, dtype=torch.uint8)
    assert torch.allclose(norm(x)[0, :, 0, 0], torch.tensor([1.0, 3.0]))
    img = torch.full((3, 1, 28, 28), 77, dtype=torch.uint8)
    assert torch.equal(resize_uint8(img, 32), torch.full((3, 1, 32, 32), 77, dtype=torch.uint8))


def test_synthetic_data_and_subsets():
    conf = dataset_conf(name="synthetic", in_channels=3, mean=[0.5] * 3, std=[0.25] * 3, train_size=50, val_size=10)
    train, val, info = build_data(conf, torch.device("cpu"), 0, 16)
    assert train.images.shape == (50, 3, 16, 16) and val.images.shape == (10, 3, 16, 16)
    assert (info.train_size, info.train_used, info.val_size) == (50, 48, 10)  # 6 full batches of 8
    again, _, _ = build_data(conf, torch.device("cpu"), 0, 16)
    assert torch.equal(again.images, train.images)  # the same seed makes the same data
    with pytest.raises(CnnbenchError, match="fewer than one batch"):
        build_data(dataset_conf(name="synthetic", batch_size=64, train_size=50, val_size=10),
                   torch.device("cpu"), 0, 8)


def test_imagefolder_reads_class_folders(tmp_path):
    from PIL import Image

    for split, n in (("train", 4), ("val", 2)):
        for cls, colour in (("cat", (255, 0, 0)), ("dog", (0, 0, 255))):
            (tmp_path / split / cls).mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40, 30), colour).save(tmp_path / split / cls / f"{i}.png")
    conf = dataset_conf(name="imagefolder", root=str(tmp_path), num_classes=None, in_channels=3,
                        mean=[0, 0, 0], std=[1, 1, 1], batch_size=4)
    train, val, info = build_data(conf, torch.device("cpu"), 0, 16)
    assert info.num_classes == 2 and info.train_size == 8 and info.val_size == 4
    assert info.bytes == 0  # read from disk a batch at a time: nothing held on the device
    x, y = next(iter(val))
    assert x.shape == (4, 3, 16, 16)
    red = x[:, 0].mean((1, 2)) > 0.9  # class 0 = cat = red, read back through decode and crop
    assert torch.equal(red, y == 0)


def _batch_ids(loader, epoch, start=0):
    """The images of each batch of a training pass, as sets of ids read back from the pixels."""
    loader.set_epoch(epoch, start)
    return [set(torch.round(x[:, 0].mean((1, 2)) * 255 / 10).long().tolist()) for x, _ in loader]


def test_a_global_batch_is_the_same_images_whatever_the_number_of_processes(tmp_path):
    """torchrun: each process takes its share of every step's global batch, from one order per
    (seed, epoch); a resumed epoch starts at its batch. Both loaders: an image folder (through
    DistributedSampler) and in-memory tensors (by index)."""
    from PIL import Image

    for split in ("train", "val"):
        for i in range(24):  # image i is red 10 * i: its id is read back from the pixels
            (tmp_path / split / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (10 * i, 0, 0)).save(tmp_path / split / f"c{i % 2}" / f"{i}.png")
    folder = dict(name="imagefolder", root=str(tmp_path), num_classes=None, in_channels=3, mean=[0, 0, 0],
                  std=[1, 1, 1])
    x = torch.arange(24, dtype=torch.uint8).mul(10).view(24, 1, 1, 1).expand(24, 3, 8, 8).contiguous()
    memory = dict(name="synthetic", in_channels=3, mean=[0, 0, 0], std=[1, 1, 1], train_size=24, val_size=8)
    for kind in (folder, memory):
        def loaders(batch, world):
            conf = dataset_conf(**kind, batch_size=batch)
            built = [build_data(conf, torch.device("cpu"), 3, 8, rank, world)[0] for rank in range(world)]
            if kind is memory:  # the same tensors as the folder's, ids 0-23
                for loader in built:
                    loader.images, loader.labels = x, torch.zeros(24, dtype=torch.long)
            return built
        (one,), (r0, r1) = loaders(6, 1), loaders(3, 2)
        whole = _batch_ids(one, epoch=2)
        assert len(whole) == 4 and set().union(*whole) == set(range(24))  # every image once
        assert [a | b for a, b in zip(_batch_ids(r0, 2), _batch_ids(r1, 2))] == whole
        assert all(not a & b for a, b in zip(_batch_ids(r0, 2), _batch_ids(r1, 2)))  # disjoint shares
        assert _batch_ids(one, epoch=2, start=1) == whole[1:]  # a resumed epoch: the same batches on
        assert _batch_ids(one, epoch=3) != whole  # a new order each epoch
