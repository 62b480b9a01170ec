"""dataset.decode=gpu: JPEGs decoded and cropped on the device (cnnbench/data/jpeg.py). There is no GPU
here: the device path runs on the CPU (torchvision's decode_jpeg with libjpeg-turbo, the crops in
float32 on CPU tensors) against the PIL path on the same folder. The same files, labels and order;
the same crops; the same unreadable files; pixels within the resize's rounding."""

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from conftest import compose_cfg

from cnnbench import cli, run
from cnnbench.data import build_data
from cnnbench.data.folder import build_imagefolder
from cnnbench.data.jpeg import upright
from cnnbench.errors import CnnbenchError

from test_folder import folder_conf

CPU = torch.device("cpu")


def photo(rng, width: int, height: int, mode: str = "RGB") -> Image.Image:
    """Gradients, stripes and grain: crops of it differ, and JPEG keeps it close."""
    yy, xx = np.mgrid[0:height, 0:width]
    a = np.stack([xx * 255 / width, yy * 255 / height, (xx + yy) * 128 / (width + height) + 60], -1)
    a += 40 * (np.sin(xx / 3 + rng.uniform(0, 6)) * np.cos(yy / 4))[..., None] + rng.normal(0, 12, a.shape)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8)).convert(mode)


SIZES = [(48, 64), (64, 40), (56, 56), (40, 52)]  # (width, height) px, for a 32 px crop


def jpeg_folder(root, n_train: int = 6, n_val: int = 3):
    """root/{train,val}/{cat,dog}/<i>.jpg of several sizes; among them in each class folder a grey JPEG (1), one a
    phone stored turned (2: EXIF orientation 6), a PNG (3) and a CMYK JPEG (4) when there are that many."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for name in ("cat", "dog"):
            (root / split / name).mkdir(parents=True)
            for i in range(n):
                path = root / split / name / f"{i}.{'png' if i == 3 else 'jpg'}"
                image = photo(rng, *SIZES[i % 4], mode={1: "L", 4: "CMYK"}.get(i, "RGB"))
                if i == 2:
                    exif = Image.Exif()
                    exif[0x0112] = 6  # Orientation: turn 90 degrees clockwise to view
                    image.save(path, exif=exif, quality=90)
                else:
                    image.save(path, quality=90)
    return root


def both(root, **kw):
    """The (train, val) loaders of the PIL path and of the device path (run on the CPU) for one folder."""
    conf = folder_conf(root, batch_size=4, **kw)
    return [build_imagefolder(conf, CPU, 3, 32, on_device=on_device)[:2] for on_device in (False, True)]


def passes(loader, epochs=(0, 1), start=0):
    out = []
    for epoch in epochs:
        loader.set_epoch(epoch, start)
        out += [(x.clone(), y.clone()) for x, y in loader]
    return out


def levels(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """|a - b| in levels of 255 of two normalised batches (mean 0, std 1: x / 255)."""
    return ((a - b) * 255).abs().round()


# The device path's difference from PIL's, in levels of 255 (max, mean over every pixel of two epochs):
# RGB, measured 1, 0.11-0.20: the decoders are the same libjpeg-turbo here and the crop boxes the same,
#   so what is left is the resize's rounding: PIL rounds after each of its two fixed-point passes (up
#   to half a level each), the device path once, from float32; 2 at the most.
# Grey, measured 5 (7 on other photos), 0.13-0.23: the device's decoder hands over the JPEG's own
#   luma; PIL decodes to RGB, clips it to 0-255 and computes luma again, which parts from it where a
#   colour clips.
# On a GPU, nvJPEG's IDCT and chroma upsampling add their own differences, not measured here.
TOLERANCE = {3: (2, 0.3), 1: (10, 0.3)}  # channels -> (max, mean) levels


@pytest.mark.parametrize("augment,channels", [(True, 3), (False, 3), (True, 1)])
def test_the_device_path_reads_what_the_pil_path_reads(augment, channels, tmp_path):
    root = jpeg_folder(tmp_path)
    (pil_train, pil_val), (dev_train, dev_val) = both(root, augment=augment, in_channels=channels,
                                                      mean=[0] * channels, std=[1] * channels)
    worst, mean = TOLERANCE[channels]
    for pil, dev in ((pil_train, dev_train), (pil_val, dev_val)):
        a, b = passes(pil), passes(dev)
        assert [y.tolist() for _, y in a] == [y.tolist() for _, y in b]  # the same images, in the same order
        diff = torch.cat([levels(xa, xb).flatten() for (xa, _), (xb, _) in zip(a, b, strict=True)])
        assert diff.max() <= worst and diff.mean() <= mean, (diff.max(), diff.mean())
    if augment:  # the crops are PIL's: another epoch's (other boxes, other flips) are far from them
        other = passes(pil_train, epochs=(1, 0))
        assert max(levels(xa, xb).max() for (xa, _), (xb, _) in zip(other, passes(dev_train))) > 50
    resumed = passes(dev_train, epochs=(1,), start=1)  # a pass resumed at batch 1
    assert all(torch.equal(xa, xb) for (xa, _), (xb, _) in zip(passes(dev_train, epochs=(1,))[1:], resumed,
                                                               strict=True))
    # What PIL decodes on the device path too (a PNG, a CMYK JPEG) is PIL's bit for bit
    pil_images, dev_images = (torch.cat([x for x, _ in passes(v, epochs=(0,))]) for v in (pil_val, dev_val))
    for i, (path, _) in enumerate(dev_val.loader.dataset.samples):
        if path.endswith(("3.png", "4.jpg")):
            assert torch.equal(pil_images[i], dev_images[i]), path


def test_shares_and_workers_are_the_pil_path_s(tmp_path):
    """Rank 1 of 2 under torchrun, its files read by two workers: the batches of the PIL path."""
    root = jpeg_folder(tmp_path, n_train=8)
    conf = folder_conf(root, batch_size=2, augment=True)
    pil = build_imagefolder(conf, CPU, 3, 32, rank=1, world=2, on_device=False)
    dev = build_imagefolder(folder_conf(root, batch_size=2, augment=True, num_workers=2), CPU, 3, 32, rank=1,
                            world=2, on_device=True)
    for a, b in ((pil[0], dev[0]), (pil[1], dev[1])):
        ours, theirs = passes(a), passes(b)
        assert [y.tolist() for _, y in ours] == [y.tolist() for _, y in theirs]
        assert max(levels(xa, xb).max() for (xa, _), (xb, _) in zip(ours, theirs)) <= TOLERANCE[3][0]
    assert len(dev[1].loader.dataset) == 3  # val images 1, 3, 5 of 6: each once, by one process


def corrupt_huffman_table(path) -> None:
    """A JPEG whose header reads (PIL opens it, the workers send it) but whose decoding fails (its
    Huffman table counts more codes than there are): found by the device's decoder, in the batch."""
    data = bytearray(path.read_bytes())
    table = data.index(b"\xff\xc4")  # DHT: marker, length, class/id, then 16 counts of codes
    data[table + 5:table + 21] = b"\xff" * 16
    path.write_bytes(bytes(data))


def test_unreadable_files_are_counted_and_replaced_as_on_the_pil_path(tmp_path):
    root = jpeg_folder(tmp_path)
    (root / "train" / "cat" / "0.jpg").write_bytes(b"not an image")  # no JPEG marker: PIL says so, in a worker
    data = (root / "train" / "dog" / "5.jpg").read_bytes()
    (root / "train" / "dog" / "5.jpg").write_bytes(data[:len(data) // 2])  # cut short: PIL, in a worker
    corrupt_huffman_table(root / "train" / "dog" / "0.jpg")  # decoding fails: PIL, in the training process
    corrupt_huffman_table(root / "val" / "cat" / "0.jpg")
    (pil_train, pil_val), (dev_train, dev_val) = both(root, augment=True)
    for pil, dev in ((pil_train, dev_train), (pil_val, dev_val)):
        a, b = passes(pil), passes(dev)
        assert [y.tolist() for _, y in a] == [y.tolist() for _, y in b]  # the same refills, the same batches
        assert max(levels(xa, xb).max() for (xa, _), (xb, _) in zip(a, b)) <= TOLERANCE[3][0]
        assert dev.unreadable == pil.unreadable and dev.short_batches == pil.short_batches
    assert len(dev_train.unreadable) == 3 and len(dev_val.unreadable) == 1
    assert sum(len(y) for _, y in passes(dev_val, epochs=(0,))) == 5  # 6 images, one left out
    assert {dev_train.loader.dataset.samples[i][0] for i in dev_train.decoder.refused} == \
        {str(root / "train" / "dog" / "0.jpg")}  # PIL reads it from now on


def test_exif_orientations_turn_as_pil_turns_them():
    stored = np.random.default_rng(0).integers(0, 255, (3, 5, 3), dtype=np.uint8)  # 5 wide, 3 high
    turns = {2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180, 4: Image.Transpose.FLIP_TOP_BOTTOM,
             5: Image.Transpose.TRANSPOSE, 6: Image.Transpose.ROTATE_270, 7: Image.Transpose.TRANSVERSE,
             8: Image.Transpose.ROTATE_90}  # PIL's exif_transpose
    for orientation in range(1, 9):
        want = Image.fromarray(stored)
        want = want.transpose(turns[orientation]) if orientation in turns else want
        got = upright(torch.from_numpy(stored).permute(2, 0, 1), orientation)
        assert torch.equal(got.permute(1, 2, 0), torch.from_numpy(np.array(want))), orientation


def test_decode_auto_is_pil_on_the_cpu_and_gpu_is_refused_there(tmp_path, monkeypatch, capsys):
    root = jpeg_folder(tmp_path / "imgs", n_train=2, n_val=1)
    for decode in ("auto", "cpu"):
        train, _, info = build_data(folder_conf(root, decode=decode), CPU, 0, 32)
        assert info.decode == "cpu" and train.decoder is None
    with pytest.raises(CnnbenchError, match="dataset.decode=gpu decodes the JPEGs with the GPU's decoder"):
        build_data(folder_conf(root, decode="gpu"), CPU, 0, 32)
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "outputs" / "run"
    code = cli.main(["train", "dataset=imagefolder", f"dataset.root={root}", "dataset.decode=gpu", "trainer.device=cpu",
                     "dataset.image_size=32", "dataset.batch_size=2", "trainer=smoke", f"hydra.run.dir={run_dir}"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: dataset.decode=gpu decodes the JPEGs with the GPU's decoder (nvJPEG), "
                                        "but this run trains on cpu. Set dataset.decode=auto")
    assert "\n\n" not in err.strip() and "Traceback" not in err  # one paragraph
    assert not run_dir.exists()  # refused before anything was written


def test_a_gpu_whose_torchvision_cannot_decode_there_falls_back_to_pil_or_is_refused(monkeypatch, caplog):
    """auto on such a GPU (a torchvision built without nvJPEG): PIL, with a warning; gpu: refused."""
    from cnnbench.data import jpeg

    assert jpeg._decoder_fails(CPU) is None  # the probe decodes on a device that can
    monkeypatch.setattr(jpeg, "_decoder_fails", lambda device: "not compiled with nvJPEG support")
    cuda = torch.device("cuda")  # never used: the probe says no
    assert jpeg.decode_on_device(folder_conf("imgs", decode="auto"), cuda) is False
    assert "Decoding JPEGs with PIL in the DataLoader workers: torchvision cannot decode one on cuda" in caplog.text
    with pytest.raises(CnnbenchError, match=r"dataset.decode=gpu, but torchvision cannot decode a JPEG on cuda: not "
                                            r"compiled with nvJPEG support. Set dataset.decode=cpu"):
        jpeg.decode_on_device(folder_conf("imgs", decode="gpu"), cuda)


def test_a_run_trains_through_the_device_path(tmp_path, monkeypatch, caplog):
    """The real entry point, with the device path forced on the CPU: it trains, and says what PIL decoded."""
    monkeypatch.setattr("cnnbench.data.jpeg.decode_on_device", lambda conf, device: True)
    root = jpeg_folder(tmp_path / "imgs", n_train=4, n_val=2)
    (root / "train" / "cat" / "0.jpg").write_bytes(b"not an image")  # replaced by cat/1.jpg, a JPEG: on the device
    caplog.set_level("INFO", logger="cnnbench")
    run.train(compose_cfg("dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=32",
                          "dataset.batch_size=2", "dataset.num_workers=0", "trainer=smoke"), tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["status"] == "completed" and results["train_images"] == 7  # 8 files, one unreadable
    assert f"Decoding the JPEGs of {root} on cpu" in caplog.text
    assert f"2 of the 8 images read from {root / 'train'} this pass were decoded by PIL" in caplog.text  # PNG, CMYK


def test_a_run_begun_with_pil_resumes_with_pil_whatever_auto_would_choose(tmp_path, monkeypatch):
    """auto must not switch a run's decoder mid-run (the GPU's pixels round otherwise): a run whose
    checkpoint says PIL decoded it (or that predates dataset.decode) goes on with PIL, even where
    auto would now pick the GPU's (here decode_on_device is handed "cpu", not "auto")."""
    from cnnbench.data import jpeg

    asked = []
    real = jpeg.decode_on_device
    monkeypatch.setattr(jpeg, "decode_on_device",
                        lambda conf, device: asked.append(str(conf.decode)) or real(conf, device))
    root = jpeg_folder(tmp_path / "imgs", n_train=4, n_val=2)
    args = ["dataset=imagefolder", f"dataset.root={root}", "dataset.image_size=32", "dataset.batch_size=2",
            "dataset.num_workers=0", "trainer=smoke", "trainer.max_steps_per_epoch=1", "trainer.max_eval_steps=1"]
    run.train(compose_cfg(*args, "trainer.epochs=1"), tmp_path / "run")
    assert asked == ["auto"]
    resumed = run.train(compose_cfg(*args, "trainer.epochs=2", "trainer.resume=true"), tmp_path / "run")
    assert asked == ["auto", "cpu"] and resumed["data_decode"] == "cpu" and resumed["epochs"] == 2


def test_only_whole_grey_or_rgb_jpegs_go_to_the_device(tmp_path):
    from cnnbench.data.jpeg import jpeg_header

    def saved(image, **kw):
        buffer = io.BytesIO()
        image.save(buffer, **kw)
        return buffer.getvalue()

    rgb = saved(Image.new("RGB", (40, 30)), format="JPEG")
    assert jpeg_header(rgb) == (30, 40, 1)
    assert jpeg_header(saved(Image.new("L", (40, 30)), format="JPEG")) == (30, 40, 1)
    exif = Image.Exif()
    exif[0x0112] = 8
    assert jpeg_header(saved(Image.new("RGB", (40, 30)), format="JPEG", exif=exif)) == (40, 30, 8)  # upright: 30 wide
    assert jpeg_header(saved(Image.new("CMYK", (40, 30)), format="JPEG")) is None
    assert jpeg_header(saved(Image.new("RGB", (40, 30)), format="PNG")) is None
    assert jpeg_header(rgb[:len(rgb) // 2]) is None  # cut short
