"""Detection end to end (the first detector, Faster R-CNN): `cnnbench train` on fashion_scenes'
boxes, the record, TensorBoard, `cnnbench compare` and `cnnbench profile`. 64 px canvases, the
MobileNet v2 backbone and a few steps: a detector's step costs seconds on a CPU."""

import json

import pytest
import torch

from conftest import cnnbench, read_results
from test_segmentation_data import fake_fashion_mnist

FASHION = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
TINY_DETECTION = ["model=faster_rcnn", "model.backbone=mobilenet_v2", "dataset=fashion_scenes", "dataset.canvas=64",
                  "dataset.train_size=8", "dataset.val_size=4", "dataset.batch_size=4", "trainer=smoke",
                  "trainer.threads=1", "optimizer=adam", "optimizer.lr=1e-4", "trainer.progress=false"]


@pytest.fixture(scope="module")
def detection_run(tmp_path_factory):
    cwd = tmp_path_factory.mktemp("det")
    root = fake_fashion_mnist(cwd / "fashion")
    r = cnnbench("train", *TINY_DETECTION, f"dataset.root={root}", "hydra.run.dir=run", cwd=cwd, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    return cwd, cwd / "run", r.stdout


def test_faster_rcnn_trains_on_scene_boxes_and_records_coco_figures(detection_run):
    _, run_dir, stdout = detection_run
    r = read_results(run_dir)
    assert r["status"] == "completed" and r["task"] == "detection"
    assert r["score"] == {"key": "map", "higher_is_better": True}
    assert r["num_classes"] == 10 and [c["name"] for c in r["classes"]] == FASHION  # no background class
    for key in ("map", "map50", "map75", "mar100"):
        assert 0 <= r[key] <= 1, key
    assert list(r["per_class_ap"]) == FASHION and r["best_map"] == r["map"] and r["best_epoch"] == 1
    assert r.get("loss") is None  # no validation loss: a training-mode forward would move BatchNorm's statistics
    assert {"train_objects", "val_map", "val_map50"} <= set(r["history"][0])
    assert r["history"][0]["train_objects"] > 0  # objects per image in the training batches
    assert "proposals" in r["macs_note"] and r["macs"] > 0 and r["activation_bytes"] > 0
    # its evaluation MACs (300 proposals) are not what a training step runs (64 sampled): no MFU from them
    assert r["mfu"] is None and r["mfu_note"].startswith("no mfu: a two-stage detector's training forward")
    assert r["inference_images_per_s"] > 0 and 0 < r["proposals_per_image"] <= 300 and r["cnn_passes_per_image"] == 1
    assert r["data_notes"]["boxes"]["train"] > 0
    assert "mAP / AP50 / AP75 / AR@100" in stdout


def test_tensorboard_shows_the_detection_figures_and_boxes(detection_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _, run_dir, _ = detection_run
    events = EventAccumulator(str(run_dir), size_guidance={"images": 0})
    events.Reload()
    assert {"val/map", "val/map50", "train/objects", "train/loss"} <= set(events.Tags()["scalars"])
    assert "val/detection" in events.Tags()["images"]


def test_compare_gives_detection_its_own_table(detection_run):
    cwd, run_dir, _ = detection_run
    r = cnnbench("compare", str(run_dir), "--out", str(cwd / "cmp"), cwd=cwd, env={"COLUMNS": "200"})
    assert r.returncode == 0, r.stderr
    assert "mAP %" in r.stdout and "AP50 %" in r.stdout and "top-1" not in r.stdout
    assert (cwd / "cmp" / "map_vs_gmacs.png").is_file() and (cwd / "cmp" / "detection_curves.png").is_file()


def test_profile_times_a_detector_with_made_up_targets(tmp_path):
    r = cnnbench("profile", "model=faster_rcnn", "model.backbone=mobilenet_v2", "dataset=fashion_scenes",
                 "dataset.canvas=64", "profile.batch_sizes=[2]", "profile.repeats=1", "profile.warmup=0",
                 "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'p'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    p = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert p["task"] == "detection" and "proposals" in p["macs_note"]
    assert p["batches"][0]["train_images_per_s"] > 0 and p["train_macs"] > p["macs"] > 0


def test_faster_rcnn_has_the_papers_parameters():
    """Ren et al. 2015 with VGG-16 at PASCAL VOC's 20 classes, counted by hand: VGG-16's 13
    convolutions 14,714,688; RPN 3x3 conv 512 -> 512: 2,359,808; objectness 512 -> 9 (torchvision's
    one sigmoid per anchor; the paper's 2k softmax has 18): 4,617; box regression 512 -> 36: 18,468;
    fc6 25,088 -> 4,096: 102,764,544; fc7 4,096 -> 4,096: 16,781,312; class scores 4,096 -> 21
    (with the background): 86,037; boxes 4,096 -> 84: 344,148."""
    from cnnbench.models import create_model

    with torch.device("meta"):
        model = create_model("faster_rcnn", num_classes=20, in_channels=3)
    parts = [14_714_688, 2_359_808, 4_617, 18_468, 102_764_544, 16_781_312, 86_037, 344_148]
    assert sum(p.numel() for p in model.parameters()) == sum(parts) == 137_073_622


@pytest.mark.parametrize("name, options, size", [("faster_rcnn", {"backbone": "mobilenet_v2"}, 64),
                                                 ("ssd300", {}, 268),
                                                 ("fast_rcnn", {"backbone": "mobilenet_v2", "proposals": 8}, 64),
                                                 ("rcnn", {"backbone": "lenet5", "warp": 32, "proposals": 8}, 64),
                                                 ("yolo_v1", {"width": 0.125, "grid": 4}, 64)])
def test_a_detectors_macs_are_the_sum_over_its_layers(name, options, size):
    """measure's count of a detector (on the CPU: its proposals depend on the image) against the
    textbook count of the same forward: a convolution (output elements) x (in channels / groups) x
    kh x kw multiply-adds, a fully connected layer (rows) x in x out; RoI pooling, NMS and the box
    decoding none."""
    from cnnbench.measure import count_macs_of
    from cnnbench.models import create_model
    from cnnbench.tasks import get_task

    torch.manual_seed(0)
    model = create_model(name, num_classes=10, in_channels=3, **options).eval()
    x = torch.randn(1, 3, size, size, generator=torch.Generator().manual_seed(0))
    total = []

    def hook(m, inputs, out):
        if isinstance(m, torch.nn.Linear):
            total.append(inputs[0].numel() * m.out_features)
        else:
            total.append(out.numel() * m.in_channels // m.groups * m.weight.shape[2] * m.weight.shape[3])

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    with torch.no_grad():
        get_task("detection").cost_forward(model, x)
    for h in handles:
        h.remove()
    assert count_macs_of(model, (3, size, size), get_task("detection").cost_forward, x) == sum(total)
