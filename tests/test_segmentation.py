"""Segmentation end to end: `cnnbench train` of each family on fashion_scenes (generated from a
small fake Fashion-MNIST), the record and TensorBoard it leaves, resume identity, `cnnbench
profile`, and `cnnbench compare` on the runs. Canvases of 32 px and a few steps: FCN's 100 px
padding makes each of its images cost a 232 px VGG-16 pass."""

import json

import pytest
import torch

from conftest import cnnbench, read_results
from test_segmentation_data import fake_fashion_mnist

from cnnbench.models import create_model

FASHION_NAMES = ["background", "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt",
                 "Sneaker", "Bag", "Ankle boot"]
TINY_SCENES = ["dataset=fashion_scenes", "dataset.canvas=32", "dataset.train_size=16", "dataset.val_size=4",
               "dataset.batch_size=4", "trainer.device=cpu", "trainer.progress=false", "trainer.threads=1",
               "+per_model.unet.padding=same"]


@pytest.fixture(scope="module")
def scenes_root(tmp_path_factory):
    return fake_fashion_mnist(tmp_path_factory.mktemp("fashion"))


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, scenes_root):
    """One sweep of a model of each family, 2 steps each (batch 2 for FCN: 232 px passes)."""
    cwd = tmp_path_factory.mktemp("seg")
    out = cwd / "sweep"
    r = cnnbench("train", "-m", "model=fcn8s,segnet,unet", *TINY_SCENES, "trainer.epochs=1",
                 "trainer.max_steps_per_epoch=2", "+per_model.fcn8s.dropout=0.5", f"dataset.root={scenes_root}",
                 f"hydra.sweep.dir={out}", cwd=cwd, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return cwd, out


@pytest.mark.parametrize("model", ["fcn8s", "segnet", "unet"])
def test_each_family_trains_and_records_its_segmentation_figures(sweep, model):
    _, out = sweep
    (run_dir,) = [p for p in out.iterdir() if p.name == f"model={model}"]
    r = read_results(run_dir)
    assert r["status"] == "completed" and r["task"] == "segmentation"
    assert r["score"] == {"key": "miou", "higher_is_better": True}
    assert 0 <= r["miou"] <= 1 and 0 <= r["pixel_acc"] <= 1 and r["best_miou"] == r["miou"] and r["best_epoch"] == 1
    assert list(r["per_class_iou"]) == FASHION_NAMES and [c["name"] for c in r["classes"]] == FASHION_NAMES
    row = r["history"][0]
    assert {"train_pixel_acc", "val_miou", "val_pixel_acc", "val_mean_class_acc"} <= set(row)
    assert row["val_miou"] == r["miou"] and "top1_err" not in r
    options = {"padding": "same"} if model == "unet" else {}
    with torch.device("meta"):
        net = create_model(model, num_classes=11, in_channels=1, **options)
    assert r["params"] == sum(p.numel() for p in net.parameters()) and r["num_classes"] == 11
    assert r["input_shape"] == [1, 32, 32] and r["macs"] > 0 and r["activation_bytes"] > 0
    assert (run_dir / "checkpoints" / "best.pt").is_file()


def test_tensorboard_has_the_figures_and_the_predicted_masks(sweep, scenes_root):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, out = sweep
    events = EventAccumulator(str(out / "model=unet"), size_guidance={"images": 0})
    events.Reload()
    assert {"val/miou", "val/pixel_acc", "val/loss", "train/pixel_acc"} <= set(events.Tags()["scalars"])
    (image,) = events.Images("val/segmentation")
    # rows of (image, truth, prediction) for the first 4 validation canvases: 3 tiles of 32 px + padding
    assert (image.width, image.height) == (3 * 34 + 2, 4 * 34 + 2)
    # the truth tiles are the validation masks in PASCAL VOC's colours, in order
    import io

    import numpy as np
    from omegaconf import OmegaConf
    from PIL import Image

    from cnnbench import run
    from cnnbench.cli import compose_config
    from cnnbench.data import build_data
    from cnnbench.tasks.segmentation import colour_masks

    cfg = run.resolve(compose_config(["model=unet", *TINY_SCENES, f"dataset.root={scenes_root}"]))
    _, val, _ = build_data(OmegaConf.to_object(cfg.dataset), torch.device("cpu"), cfg.seed, 32)
    _, truth = val.preview(4)
    grid = np.asarray(Image.open(io.BytesIO(image.encoded_image_string)).convert("RGB")).astype(int)
    for row in range(4):
        tile = grid[2 + 34 * row:34 + 34 * row, 36:68]  # column 1: the truth
        want = (colour_masks(truth[row:row + 1], 11)[0].permute(1, 2, 0).numpy() * 255).round()
        assert np.abs(tile - want).max() <= 1


def test_compare_shows_the_segmentation_table_sorted_by_miou(sweep):
    cwd, out = sweep
    r = cnnbench("compare", str(out), "--out", str(cwd / "cmp"), cwd=cwd, env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "mIoU %" in r.stdout and "top-1" not in r.stdout
    rows = [read_results(out / f"model={m}") for m in ("fcn8s", "segnet", "unet")]
    best = max(rows, key=lambda x: x["miou"])["model"]
    assert r.stdout.index(best) < min(r.stdout.index(m) for m in ("fcn8s", "segnet", "unet") if m != best)
    assert (cwd / "cmp" / "miou_vs_gmacs.png").is_file() and (cwd / "cmp" / "segmentation_curves.png").is_file()


def test_a_resumed_segmentation_run_is_the_run_that_was_not_interrupted(tmp_path, scenes_root):
    """Two epochs straight, or one and a resume to two (augmented: flips and crops of image and mask
    drawn from the epoch's generator): the same weights and figures, bit for bit."""
    common = ["model=unet", *TINY_SCENES, f"dataset.root={scenes_root}", "dataset.augment=true",
              "trainer.log_filters=false", "scheduler=none",  # a schedule's length would differ: 1 epoch or 2
              "optimizer=adam", "optimizer.lr=1e-4"]  # SGD at a constant 0.1 diverges
    straight = cnnbench("train", *common, "trainer.epochs=2", f"hydra.run.dir={tmp_path / 'a'}", cwd=tmp_path)
    first = cnnbench("train", *common, "trainer.epochs=1", f"hydra.run.dir={tmp_path / 'b'}", cwd=tmp_path)
    assert straight.returncode == first.returncode == 0, straight.stderr + first.stderr
    resumed = cnnbench("resume", str(tmp_path / "b"), "trainer.epochs=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    a, b = read_results(tmp_path / "a"), read_results(tmp_path / "b")
    assert [h["val_miou"] for h in a["history"]] == [h["val_miou"] for h in b["history"]]
    assert a["miou"] == b["miou"] and a["per_class_iou"] == b["per_class_iou"]
    wa = torch.load(tmp_path / "a" / "checkpoints" / "last.pt", weights_only=False)["weights"]
    wb = torch.load(tmp_path / "b" / "checkpoints" / "last.pt", weights_only=False)["weights"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_profile_times_a_segmentation_training_step(tmp_path):
    r = cnnbench("profile", "model=segnet", "dataset=fashion_scenes", "dataset.canvas=32",
                 "profile.batch_sizes=[2]", "profile.repeats=1", "profile.warmup=0", "trainer.device=cpu",
                 f"hydra.run.dir={tmp_path / 'p'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    p = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert p["task"] == "segmentation" and p["num_classes"] == 11 and p["input_shape"] == [1, 32, 32]
    assert p["batches"][0]["train_images_per_s"] > 0 and p["train_macs"] > 2 * p["macs"]


def test_a_bad_voc_folder_is_one_paragraph_and_leaves_no_run_folder(tmp_path):
    """A mask value above the classes, found while reading the data: exit 2, one paragraph naming the
    file and the fix, no traceback, and the run folder Hydra made is taken back."""
    import numpy as np

    from test_segmentation_data import write_voc

    images = np.zeros((3, 48, 48, 3), dtype=np.uint8)
    masks = np.zeros((3, 48, 48), dtype=np.uint8)
    masks[2, 0, 0] = 30
    write_voc(tmp_path / "voc", images, masks, {"train": [0, 2], "val": [1]})
    r = cnnbench("train", "model=unet", "model.padding=same", "dataset=voc_segmentation", "dataset.root=voc",
                 "dataset.image_size=32", "dataset.batch_size=2", "hydra.run.dir=outputs/run", cwd=tmp_path)
    err = " ".join(r.stderr.split())
    assert r.returncode == 2 and err.startswith("error: ") and "Traceback" not in err
    assert "2007_000002.png holds the value 30, but dataset.num_classes=21 allows 0-20 and 255" in err
    assert not (tmp_path / "outputs" / "run").exists()


def test_torchrun_sums_the_confusion_matrix_over_the_processes(tmp_path, scenes_root):
    """Two CPU processes each evaluate half of the validation canvases; the record's mIoU is the
    whole split's, exactly what one process computes with the same final weights."""
    import os
    import subprocess
    import sys

    from omegaconf import OmegaConf

    from cnnbench import engine, run
    from cnnbench.cli import compose_config
    from cnnbench.data import build_data
    from cnnbench.tasks import get_task

    overrides = ["model=unet", *TINY_SCENES, f"dataset.root={scenes_root}", "dataset.val_size=6",
                 "trainer.epochs=1", "trainer.log_filters=false"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "cnnbench", "train", *overrides, f"hydra.run.dir={tmp_path / 'ddp'}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    rec = read_results(tmp_path / "ddp")
    assert rec["world_size"] == 2 and rec["weights_in_sync"] is True and rec["val_images"] == 6

    cfg = compose_config(overrides)
    run.resolve(cfg)
    _, val, data = build_data(OmegaConf.to_object(cfg.dataset), torch.device("cpu"), cfg.seed, 32)
    model = create_model("unet", num_classes=11, in_channels=1, padding="same")
    model.load_state_dict(torch.load(tmp_path / "ddp" / "checkpoints" / "last.pt", weights_only=False)["weights"])
    step = engine.StepConfig(torch.device("cpu"), task=get_task("segmentation"), num_classes=11,
                             ignore_index=255, class_names=FASHION_NAMES)
    alone = engine.evaluate(model, val, step)
    assert alone["images"] == 6 and alone["miou"] == rec["miou"] and alone["per_class_iou"] == rec["per_class_iou"]
