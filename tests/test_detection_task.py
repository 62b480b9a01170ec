"""The detection task (cnnbench/tasks/detection.py): flat targets and torchvision's lists, COCO mAP
against pycocotools run directly and against answers known by hand, a tiny Faster R-CNN stepped
through the task, the boxes drawn for TensorBoard, and the meter's share of the work under torchrun."""

import contextlib
import io
import json

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.nn as nn
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torchvision.models.detection import FasterRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNPredictor, TwoMLPHead
from torchvision.ops import MultiScaleRoIAlign, box_iou

from cnnbench import distributed
from cnnbench.tasks import Task, percent
from cnnbench.tasks.detection import (COST_KEYS, DETECTION, CocoMeter, coco_figures, draw_boxes, flatten_predictions,
                                      from_targets, to_targets)

pytestmark = pytest.mark.usefixtures("one_thread")

SIZE = 48  # px: the canvases of the tests (TASKS.md: 48-64 px keeps a Faster R-CNN step fast on 2 cores)


def output(boxes, classes, scores) -> dict:
    """One image's evaluation output as a torchvision detector gives it (labels = class + 1)."""
    return {"boxes": torch.tensor(boxes, dtype=torch.float32).view(-1, 4),
            "labels": torch.tensor(classes, dtype=torch.int64) + 1, "scores": torch.tensor(scores, dtype=torch.float32)}


def figures(outputs, y, names=("cat", "dog")) -> dict:
    meter = CocoMeter(len(names), list(names))
    meter.update(outputs, torch.tensor(y, dtype=torch.float32).view(-1, 6))
    return meter.compute()


def direct_coco(tmp_path, outputs, y, names=("cat", "dog"), cat_ids=None) -> np.ndarray:
    """COCOeval's 12 stats the way its README runs it: a ground-truth json file, a results json
    file, COCO(file).loadRes(file). cat_ids: evaluate those classes only (one class: its AP)."""
    gt = {"images": [{"id": i + 1, "width": SIZE, "height": SIZE} for i in range(len(outputs))],
          "categories": [{"id": c + 1, "name": n} for c, n in enumerate(names)],
          "annotations": [{"id": j + 1, "image_id": int(i) + 1, "category_id": int(c) + 1,
                           "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
                          for j, (i, c, x1, y1, x2, y2) in enumerate(y)]}
    results = [{"image_id": i + 1, "category_id": int(label), "bbox": [x1, y1, x2 - x1, y2 - y1], "score": float(s)}
               for i, o in enumerate(outputs)
               for (x1, y1, x2, y2), label, s in zip(o["boxes"].tolist(), o["labels"].tolist(), o["scores"].tolist())]
    (tmp_path / "gt.json").write_text(json.dumps(gt))
    (tmp_path / "dt.json").write_text(json.dumps(results))
    with contextlib.redirect_stdout(io.StringIO()):
        coco = COCO(str(tmp_path / "gt.json"))
        e = COCOeval(coco, coco.loadRes(str(tmp_path / "dt.json")), "bbox")
        if cat_ids is not None:
            e.params.catIds = cat_ids
        e.evaluate()
        e.accumulate()
        e.summarize()
    return e.stats


# A hand-made split of four 48 px images, two classes: a perfect pair, a shifted box, an image
# without objects or predictions, a medium-sized object with a false positive scored above it.
Y = [[0, 0, 4, 4, 20, 20], [0, 1, 24, 24, 44, 40],
     [1, 0, 10, 10, 22, 22],
     [3, 1, 2, 2, 42, 42]]
OUTPUTS = [output([[4, 4, 20, 20], [24, 24, 44, 40]], [0, 1], [0.9, 0.8]),
           output([[12, 10, 24, 22]], [0], [0.7]),  # shifted 2 px: IoU 10/14 = 0.71
           output([], [], []),
           output([[2, 2, 42, 42], [30, 2, 46, 12]], [1, 1], [0.6, 0.95])]


def test_flat_targets_become_torchvision_lists_and_back_with_an_image_without_objects():
    y = torch.tensor([[2, 1, 5, 6, 20, 30], [0, 0, 1, 2, 3, 4], [2, 2, 0, 0, 9, 9], [0, 1, 7, 7, 8, 8]])
    targets = to_targets(y, 4)
    assert len(targets) == 4
    assert targets[0]["boxes"].tolist() == [[1, 2, 3, 4], [7, 7, 8, 8]]
    assert targets[0]["labels"].tolist() == [1, 2] and targets[2]["labels"].tolist() == [2, 3]  # class + 1
    for empty in (1, 3):  # no objects: the shapes torchvision trains on
        assert targets[empty]["boxes"].shape == (0, 4) and targets[empty]["labels"].shape == (0,)
        assert targets[empty]["labels"].dtype == torch.int64 and targets[empty]["boxes"].dtype == torch.float32
    back = from_targets(targets)
    assert torch.equal(back, y[torch.tensor([1, 3, 0, 2])].float())  # image by image, each image's rows in order
    assert torch.equal(from_targets(to_targets(back, 4)), back)
    assert [t["boxes"].shape[0] for t in to_targets(torch.zeros(0, 6), 2)] == [0, 0]
    assert from_targets([]).shape == (0, 6)
    with pytest.raises(ValueError, match="image 4 of a batch of 4"):
        to_targets(torch.tensor([[4.0, 0, 0, 0, 1, 1]]), 4)


def test_predictions_flatten_to_classes_without_the_background():
    flat = flatten_predictions([output([], [], []), output([[1, 2, 3, 4]], [2], [0.5])])
    assert flat.tolist() == [[1, 2, 1, 2, 3, 4, 0.5]]


def test_the_meter_gives_what_pycocotools_gives_run_directly(tmp_path):
    got = figures(OUTPUTS, Y)
    stats = direct_coco(tmp_path, OUTPUTS, Y)
    for key, i in {"map": 0, "map50": 1, "map75": 2, "ap_small": 3, "ap_medium": 4, "mar100": 8}.items():
        assert got[key] == pytest.approx(stats[i], abs=1e-12), key
    assert stats[5] == -1 and got["ap_large"] is None  # no object over 96² px² on a 48 px canvas
    for c, name in enumerate(("cat", "dog")):  # per class: COCOeval restricted to that class
        assert got["per_class_ap"][name] == pytest.approx(direct_coco(tmp_path, OUTPUTS, Y, cat_ids=[c + 1])[0])
    assert got["loss"] is None and got["images"] == 4
    assert 0 < got["map"] < got["map50"] < 1  # the shift and the false positive cost something


def test_perfect_predictions_score_one_and_an_empty_image_changes_nothing():
    outputs = [output([[4, 4, 20, 20], [24, 24, 44, 40]], [0, 1], [0.9, 0.8]), output([], [], []),
               output([[10, 10, 22, 22]], [0], [0.7])]
    y = [[0, 0, 4, 4, 20, 20], [0, 1, 24, 24, 44, 40], [2, 0, 10, 10, 22, 22]]
    got = figures(outputs, y)
    for key in ("map", "map50", "map75", "mar100"):
        assert got[key] == pytest.approx(1.0), key
    assert got["per_class_ap"] == pytest.approx({"cat": 1.0, "dog": 1.0})
    assert got["images"] == 3


def test_a_shifted_box_counts_at_the_iou_thresholds_it_passes_only():
    truth, shifted = [10, 10, 20, 20], [12, 10, 22, 20]  # 10 px wide, shifted 2 px: IoU 8/12
    iou = box_iou(torch.tensor([truth], dtype=torch.float32), torch.tensor([shifted], dtype=torch.float32)).item()
    assert iou == pytest.approx(2 / 3)  # not exactly on a threshold (0.60 would be), so no rounding decides
    got = figures([output([shifted], [0], [0.9])], [[0, 0, *truth]], names=("cat",))
    assert got["map50"] == pytest.approx(1.0) and got["map75"] == 0.0
    assert got["map"] == pytest.approx(4 / 10)  # matched at 0.50, 0.55, 0.60, 0.65 of the ten thresholds
    assert got["mar100"] == pytest.approx(4 / 10)


def test_a_false_positive_scored_above_the_true_one_halves_the_precision():
    truth = [0, 0, 10, 10, 30, 30]
    false_first = figures([output([[10, 10, 30, 30], [0, 0, 8, 8]], [0, 0], [0.5, 0.9])], [truth], names=("cat",))
    assert false_first["map"] == pytest.approx(0.5) and false_first["mar100"] == pytest.approx(1.0)
    false_last = figures([output([[10, 10, 30, 30], [0, 0, 8, 8]], [0, 0], [0.9, 0.5])], [truth], names=("cat",))
    assert false_last["map"] == pytest.approx(1.0)  # ranked after every true one: costs no precision


def test_no_predictions_score_zero_and_no_objects_score_nothing():
    none = figures([output([], [], []), output([], [], [])], [[0, 0, 4, 4, 20, 20]])
    assert none["map"] == 0.0 and none["map50"] == 0.0 and none["mar100"] == 0.0
    assert none["per_class_ap"] == {"cat": 0.0, "dog": None}  # dog has no objects: no AP, left out of the mean
    nothing = figures([output([], [], [])], [])
    assert nothing["map"] is None and nothing["map50"] is None and nothing["images"] == 1
    assert CocoMeter(2, ["cat", "dog"]).compute()["map"] is None  # no images at all
    # Predictions of a class without objects count nowhere (COCO's rule): cat's AP is the mean
    only_cat = figures([output([[4, 4, 20, 20], [30, 30, 40, 40]], [0, 1], [0.9, 0.9])], [[0, 0, 4, 4, 20, 20]])
    assert only_cat["map"] == pytest.approx(1.0) and only_cat["per_class_ap"]["dog"] is None


def test_classes_beyond_the_names_are_numbered_and_sizes_default_to_the_boxes_extent():
    meter = CocoMeter(None, None)
    meter.update([output([[4, 4, 20, 20]], [2], [0.9])], torch.tensor([[0.0, 2, 4, 4, 20, 20]]))
    assert meter.sizes == [(20, 20)]
    assert list(meter.compute()["per_class_ap"]) == ["0", "1", "2"]
    got = coco_figures(np.zeros((0, 7)), np.zeros((0, 6)), [], ["a"])
    assert got["images"] == 0 and got["map"] is None and got["per_class_ap"] == {"a": None}


def tiny_faster_rcnn(classes: int = 2) -> FasterRCNN:
    """A Faster R-CNN of a few thousand weights: two stride-2 convolutions, one anchor size,
    3x3 RoIAlign, a 32-wide box head, 48 px in and out, a few dozen proposals."""
    torch.manual_seed(0)
    backbone = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1), nn.ReLU(), nn.Conv2d(8, 8, 3, 2, 1), nn.ReLU())
    backbone.out_channels = 8
    return FasterRCNN(backbone, rpn_anchor_generator=AnchorGenerator(((16,),), ((1.0,),)),
                      box_roi_pool=MultiScaleRoIAlign(["0"], 3, 2), box_head=TwoMLPHead(8 * 9, 32),
                      box_predictor=FastRCNNPredictor(32, classes + 1),  # + 1: torchvision's background
                      min_size=SIZE, max_size=SIZE, image_mean=[0.0] * 3, image_std=[1.0] * 3,
                      rpn_pre_nms_top_n_train=64, rpn_post_nms_top_n_train=32, rpn_pre_nms_top_n_test=64,
                      rpn_post_nms_top_n_test=32, rpn_batch_size_per_image=32, box_batch_size_per_image=16,
                      box_score_thresh=0.0)


def test_a_faster_rcnn_step_trains_with_an_image_without_objects_and_predicts_lists():
    model = tiny_faster_rcnn()
    x = torch.randn(2, 3, SIZE, SIZE)
    y = torch.tensor([[0, 0, 4, 4, 20, 20], [0, 1, 24, 24, 44, 40]])  # image 1: no objects
    model.train()
    loss, sums = DETECTION.train_step(model, x, y, 0.0)
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    assert sums.tolist() == [2.0, 2.0] and sums.dtype == torch.float32  # objects, images
    model.eval()
    with torch.no_grad():
        out = DETECTION.predict(model, x)
    assert isinstance(out, list) and len(out) == 2
    assert all(o["boxes"].shape[1:] == (4,) and o["image_size"] == (SIZE, SIZE) for o in out)
    meter = DETECTION.meter(2, torch.device("cpu"), None, ["cat", "dog"])
    meter.update(out, y)
    got = meter.compute()
    assert got["images"] == 2 and 0 <= got["map"] <= 1 and meter.sizes == [(SIZE, SIZE)] * 2


def test_a_detector_is_profiled_with_one_box_per_image():
    y = DETECTION.probe_targets(3, SIZE, torch.device("cpu"))
    assert y.shape == (3, 6) and y[:, 0].tolist() == [0, 1, 2] and (y[:, 1] == 0).all()
    assert (y[:, 4:] > y[:, 2:4]).all() and (y[:, 2:] >= 0).all() and (y[:, 2:] <= SIZE).all()
    assert (DETECTION.probe_targets(1, 3, torch.device("cpu"))[:, 4:] > 0).all()  # a positive box even at 3 px
    model = tiny_faster_rcnn().train()
    x = torch.randn(3, 3, SIZE, SIZE)
    loss = DETECTION.probe_loss(model(list(x), to_targets(y, 3)))
    assert loss.ndim == 0 and torch.isfinite(loss)


class Fixed(nn.Module):
    """A 'detector' that finds one box of class 1 in every image, scored 0.9, and one scored 0.3."""

    def forward(self, images):
        return [output([[24, 24, 40, 40], [2, 30, 12, 40]], [1, 0], [0.9, 0.3]) for _ in images]


class PreviewLoader:
    """What a detection loader gives images(): preview(n), normalize, names."""

    names = ["cat", "dog"]

    def __init__(self):
        self.x = torch.full((3, 1, SIZE, SIZE), 100, dtype=torch.uint8)  # grey, one channel
        self.y = torch.tensor([[0, 0, 4, 4, 20, 20], [2, 1, 8, 8, 30, 30]])

    def preview(self, n):
        return self.x[:n], self.y[self.y[:, 0] < n]

    def normalize(self, x):
        return x.float() / 255


def test_tensorboard_draws_the_truth_green_and_confident_predictions_red():
    got = DETECTION.images(Fixed(), PreviewLoader(), step=None)
    grid = got["val/detection"]
    assert grid.shape[0] == 3 and grid.dtype == torch.float32 and 0 <= grid.min() and grid.max() <= 1
    tile = draw_boxes(PreviewLoader().x[0], PreviewLoader().y[:1], flatten_predictions(Fixed()([0]))[:, :7],
                      names=PreviewLoader.names)
    s = tile.shape[-1] // SIZE  # enlarged for readable names
    assert s == 4 and tile.shape == (3, SIZE * s, SIZE * s)
    green, red, grey = [0, 128, 0], [255, 0, 0], [100, 100, 100]
    assert tile[:, 20 * s - 1, 12 * s].tolist() == green  # the true box's bottom edge (x2/y2 exclusive)
    assert tile[:, 40 * s - 1, 32 * s].tolist() == red  # the 0.9 prediction's bottom edge
    assert tile[:, 40 * s - 1, 7 * s].tolist() == grey  # the 0.3 prediction: not drawn
    assert torch.equal(grid[:, 2:2 + SIZE * s, 2:2 + SIZE * s], tile.float() / 255)  # the grid's first tile
    assert DETECTION.images(Fixed(), object(), step=None) == {}  # a loader without preview: no images


def test_the_task_declares_what_the_run_and_the_report_read():
    assert isinstance(DETECTION, Task) and DETECTION.name == "detection" and DETECTION.score == "map"
    assert DETECTION.higher_is_better and DETECTION.is_better(0.3, 0.2) and not DETECTION.is_better(0.1, 0.2)
    assert "loss" not in DETECTION.history_keys and set(DETECTION.history_keys) <= set(DETECTION.record_keys)
    assert set(DETECTION.figures) - {"best_map"} <= set(DETECTION.record_keys)
    assert set(DETECTION.columns) <= set(DETECTION.figures)
    assert {k for k, _ in DETECTION.curves} <= {f"val_{k}" for k in DETECTION.history_keys}
    meter_keys = set(figures(OUTPUTS, Y)) | set(COST_KEYS)  # the meter's and evaluation_costs'
    assert set(DETECTION.record_keys) | set(DETECTION.history_keys) | {"images"} <= meter_keys
    assert set(DETECTION.costs) == set(COST_KEYS) and set(DETECTION.cost_columns) <= set(COST_KEYS)
    assert DETECTION.hparams_metrics({"map": 0.5, "map50": 0.7, "map75": 0.1}) == {"map": 0.5, "map50": 0.7}


def test_the_log_lines_and_the_summary_show_the_figures():
    row = {"train_objects": 2.5, "val_map": 0.4125, "val_map50": 0.75}
    assert DETECTION.train_text(row) == "objects/image 2.50"
    assert DETECTION.epoch_text(row, 2) == " | val mAP 41.25% AP50 75.00%"
    assert DETECTION.epoch_text({"val_map": None, "val_map50": None}, 2) == ""
    r = {"map": 0.4, "map50": 0.7, "map75": 0.35, "mar100": 0.5, "best_map": 0.45, "best_epoch": 3,
         "per_class_ap": {"cat": 0.5, "dog": None}}
    assert DETECTION.summary(r) == [("mAP / AP50 / AP75 / AR@100", "40.00% / 70.00% / 35.00% / 50.00%"),
                                    ("best mAP", "45.00% (epoch 3)"),
                                    ("AP per class", f"cat 50.00%, dog {percent(None)}")]


def shares(world: int) -> list:
    """The split's images dealt to `world` processes in turn: (outputs, y) of each, images renumbered."""
    out = []
    for rank in range(world):
        mine = [i for i in range(len(OUTPUTS)) if i % world == rank]
        y = [[mine.index(r[0]), *r[1:]] for r in Y if r[0] in mine]
        out.append(([OUTPUTS[i] for i in mine], torch.tensor(y, dtype=torch.float32).view(-1, 6)))
    return out


def test_under_torchrun_rank_0_scores_every_processs_boxes_and_all_get_its_figures(monkeypatch):
    """Two processes simulated in one: rank 1's compute hands its boxes over and receives rank 0's
    figures; rank 0 numbers rank 1's images after its own. The figures are the whole split's."""
    whole = figures(OUTPUTS, Y)  # one process
    meters = [CocoMeter(2, ["cat", "dog"]) for _ in range(2)]
    for meter, (outputs, y) in zip(meters, shares(2)):
        meter.update(outputs, y)
    sent = []
    monkeypatch.setattr(distributed, "gather_objects", lambda obj: sent.append(obj))  # rank 1: None back
    monkeypatch.setattr(distributed, "broadcast", lambda obj: "rank 0's figures" if obj is None else obj)
    assert meters[1].compute() == "rank 0's figures"
    monkeypatch.setattr(distributed, "gather_objects", lambda obj: [obj, *sent])  # rank 0: every share
    assert meters[0].compute() == whole


def test_a_process_group_gathers_and_broadcasts_the_meters_figures(tmp_path):
    """The collectives themselves, in a one-process gloo group (two processes would take
    seconds to start): gather_objects returns [obj] on rank 0, and the meter goes through it."""
    dist.init_process_group("gloo", store=dist.FileStore(str(tmp_path / "store"), 1), rank=0, world_size=1)
    try:
        assert distributed.gather_objects({"boxes": 3}) == [{"boxes": 3}]
        meter = CocoMeter(2, ["cat", "dog"])
        meter.update(OUTPUTS, torch.tensor(Y, dtype=torch.float32))
        assert meter.compute() == figures(OUTPUTS, Y)
    finally:
        dist.destroy_process_group()
