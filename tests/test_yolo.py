"""YOLO v1 (Redmon et al. 2016): the paper's parameter count, the grid and halving rules, the loss
of equation 3 on hand-made cases, decoding, the evaluation output, one training step, and
`cnnbench train` on fashion_scenes' boxes with a narrow network on a 4 x 4 grid at 64 px."""

import math

import pytest
import torch

from cnnbench.models import yolo
from cnnbench.models.registry import get_model_info
from cnnbench.models.yolo import encode_targets, grid_for, yolo_loss, yolo_v1
from conftest import cnnbench, read_results
from test_detection import TINY_DETECTION
from test_segmentation_data import fake_fashion_mnist

# Fig. 3's convolutions: (in, out, kernel), written out from the figure
FIG3 = [(3, 64, 7), (64, 192, 3), (192, 128, 1), (128, 256, 3), (256, 256, 1), (256, 512, 3),
        *[(512, 256, 1), (256, 512, 3)] * 4, (512, 512, 1), (512, 1024, 3),
        *[(1024, 512, 1), (512, 1024, 3)] * 2, (1024, 1024, 3), (1024, 1024, 3), (1024, 1024, 3), (1024, 1024, 3)]


def n_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def hand_count(width: float, s: int = 7, b: int = 2, c: int = 20) -> int:
    """Fig. 3's layers with width times the channels: each convolution k² · in · out + out, the
    first fully connected layer S² · 1024w · 4096w + 4096w, the last 4096w · S²(5B + C) + S²(5B + C)."""
    def ch(n):
        return n if n == 3 else max(1, round(n * width))  # the image's channels are not scaled

    convs = sum(k * k * ch(i) * ch(o) + ch(o) for i, o, k in FIG3)
    hidden, out = ch(4096), s * s * (5 * b + c)
    return convs + s * s * ch(1024) * hidden + hidden + hidden * out + out


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return yolo_v1(num_classes=3, in_channels=3, grid=4, width=0.125)


def test_yolo_v1_has_the_papers_parameters():
    """Fig. 3 at 448 px, S = 7, B = 2, C = 20 (PASCAL VOC), counted by hand: the 24 convolutions
    (k² · in · out + out each) 9,472 + 110,784 + 24,704 + 295,168 + 65,792 + 1,180,160 + 4 x
    (131,328 + 1,180,160) + 262,656 + 4,719,616 + 2 x (524,800 + 4,719,616) + 4 x 9,438,208 =
    60,155,968; fc 7·7·1024 -> 4096: 205,520,896 + 4,096 = 205,524,992; fc 4096 -> 7·7·30 = 1,470:
    6,021,120 + 1,470 = 6,022,590. Total 271,703,550."""
    with torch.device("meta"):
        net = yolo_v1()
    assert len(FIG3) == 24 and sum(k * k * i * o + o for i, o, k in FIG3) == 60_155_968
    assert n_params(net) == hand_count(1.0) == 60_155_968 + 205_524_992 + 6_022_590 == 271_703_550
    with torch.device("meta"):  # narrower, another grid, boxes, classes: the same formula
        assert n_params(yolo_v1(num_classes=10, grid=4, boxes=3, width=0.25)) == hand_count(0.25, 4, 3, 10)
        assert n_params(yolo_v1(num_classes=3, grid=4, width=0.125)) == hand_count(0.125, 4, 2, 3)
    info = get_model_info("yolo_v1")
    assert (info.task, info.default_input, info.default_classes) == ("detection", (3, 448, 448), 20)
    assert net.head_layers == ["fc2"] and net.fc2.out_features == 7 * 7 * 30


def test_grid_for_is_7_from_112px_and_one_cell_per_16px_below():
    assert [grid_for(s) for s in (448, 300, 112)] == [7, 7, 7]
    assert [grid_for(s) for s in (111, 96, 64, 48, 32, 16, 8)] == [6, 6, 4, 3, 2, 2, 2]


@pytest.mark.parametrize("size, grid, before_pool", [(448, 7, 7), (112, 7, 7), (96, 6, 6), (64, 4, 4), (64, 7, 8)])
def test_halvings_stop_at_the_grid(size, grid, before_pool):
    """448 px: 224 (7x7 conv, stride 2), 112, 56, 28, 14 (four pools), 7 (3x3 conv, stride 2), the
    paper's 7 x 7. 64 px, S = 4: 32, 16, 8, 4, and the last stride-2 conv keeps stride 1 (2 < 4).
    64 px, S = 7: the third pool would leave 4 < 7, so the map stays 8 x 8 and is averaged to 7 x 7."""
    with torch.device("meta"):
        net = yolo_v1(grid=grid, width=0.125).eval()
    x = torch.empty(1, 3, size, size, device="meta")
    assert net.features(x).shape[-2:] == (before_pool, before_pool)
    assert net.forward_features(x).shape[-2:] == (grid, grid)


def test_min_size_is_the_grid(model):
    info = get_model_info("yolo_v1")
    assert info.min_input() == 7 and info.min_input(grid=4) == 4
    model.eval()
    with torch.no_grad():
        assert isinstance(model([torch.randn(3, 4, 4)]), list)  # one pixel a cell
        with pytest.raises(RuntimeError):
            model([torch.randn(3, 3, 3)])


def test_evaluation_returns_per_class_nms_boxes():
    torch.manual_seed(1)
    net = yolo_v1(num_classes=3, in_channels=3, grid=4, width=0.125).eval()
    with torch.no_grad():
        net.fc2.bias.fill_(0.3)  # boxes of some size, scores above the threshold: candidates for NMS
        out = net([torch.randn(3, 64, 64) for _ in range(3)])
    assert isinstance(out, list) and len(out) == 3
    for o in out:
        assert set(o) == {"boxes", "labels", "scores"}
        p = len(o["scores"])
        assert 0 < p <= yolo.DETECTIONS and o["boxes"].shape == (p, 4) and o["labels"].shape == (p,)
        assert o["labels"].dtype == torch.int64 and o["labels"].min() >= 1 and o["labels"].max() <= 3
        assert (o["scores"] >= yolo.SCORE_THRESH).all() and (o["scores"] <= 1).all()
        assert (o["scores"][:-1] >= o["scores"][1:]).all()  # best first
        assert (o["boxes"] >= 0).all() and (o["boxes"] <= 64).all() and (o["boxes"][:, 2:] > o["boxes"][:, :2]).all()


def test_at_most_100_boxes_an_image():
    net = yolo_v1(num_classes=3, grid=8, width=1 / 64)
    out = torch.zeros(1, 8, 8, 2 * 5 + 3)
    out[..., 0:2], out[..., 5:7] = 0.25, 0.75  # two small, separate boxes a cell: nothing to suppress
    out[..., [2, 3, 7, 8]] = 0.1
    out[..., [4, 9]] = 0.9
    out[..., 10:] = torch.rand(1, 8, 8, 3) * 0.5 + 0.5  # 8 · 8 · 2 · 3 = 384 candidates above the threshold
    (o,) = net.postprocess(out, (128, 128))
    best = (out[..., None, 10:] * 0.9).expand(1, 8, 8, 2, 3).flatten().sort(descending=True).values[:100]
    torch.testing.assert_close(o["scores"], best)  # the 100 best of the 384


def test_a_box_encoded_by_hand_decodes_back(model):
    """A box 36 x 20 px at x1 = 30, y1 = 10 in a 96 px wide, 64 px high image: centre (48, 20) px =
    (0.5, 0.3125) of the image: column 2, row 1 of a 4 x 4 grid, offsets x = 0, y = 0.25; w = 0.375,
    h = 0.3125. Predictor 1 of that cell says so with confidence 0.9; class probabilities 0, 0.8,
    0.1: the box comes out as class 2 at 0.72 and class 3 at 0.09 (NMS is per class)."""
    box = [30.0, 10.0, 66.0, 30.0]
    out = torch.zeros(1, 4, 4, 13)
    out[0, 1, 2, 5:10] = torch.tensor([0.0, 0.25, math.sqrt(0.375), math.sqrt(0.3125), 0.9])
    out[0, 1, 2, 10:] = torch.tensor([0.0, 0.8, 0.1])
    (o,) = model.postprocess(out, (64, 96))
    assert o["labels"].tolist() == [2, 3]
    torch.testing.assert_close(o["scores"], torch.tensor([0.72, 0.09]))
    torch.testing.assert_close(o["boxes"], torch.tensor([box, box]), atol=1e-4, rtol=0)
    # and the truth's encoding is what was written
    obj, coords, truth, classes = encode_targets([{"boxes": torch.tensor([box]), "labels": torch.tensor([2])}],
                                                 4, 3, (64, 96))
    assert obj.nonzero().tolist() == [[0, 1, 2]] and classes[0, 1, 2].tolist() == [0, 1, 0]
    torch.testing.assert_close(coords[0, 1, 2], out[0, 1, 2, 5:9])


def test_two_centres_in_one_cell_keep_the_larger():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 12.0, 12.0], [40.0, 40.0, 60.0, 60.0],
                          [44.0, 44.0, 56.0, 56.0]])  # two pairs, each sharing a cell of 16 px
    obj, coords, truth, classes = encode_targets([{"boxes": boxes, "labels": torch.tensor([1, 2, 3, 1])}], 4, 3,
                                                 (64, 64))
    assert obj.sum() == 2 and obj[0, 0, 0] == obj[0, 3, 3] == 1
    assert classes[0, 0, 0].argmax() == 1 and classes[0, 3, 3].argmax() == 2  # the larger box's class
    torch.testing.assert_close(truth[0, 0, 0] * 64, boxes[1])
    torch.testing.assert_close(truth[0, 3, 3] * 64, boxes[2])


# One object in a 64 px image, S = 2, B = 2, C = 3: box (8, 8)-(40, 24) px, class label 2. Its centre
# (24, 16) px = (0.375, 0.25) of the image: cell row 0, column 0, offsets x = 0.75, y = 0.5; w = 0.5,
# h = 0.25 of the image.
TRUTH = {"boxes": torch.tensor([[8.0, 8.0, 40.0, 24.0]]), "labels": torch.tensor([2])}
EMPTY = {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}
RIGHT = [0.75, 0.5, math.sqrt(0.5), 0.5]  # the truth as the network says it


def _loss(cell_outputs):
    """Equation 3 on two 64 px images, the first with TRUTH, the second empty and predicting zeros;
    cell_outputs: the 13 outputs of the first image's cell (0, 0); every other output 0."""
    out = torch.zeros(2, 2, 2, 13)
    out[0, 0, 0] = torch.tensor(cell_outputs)
    return {k: v.item() for k, v in yolo_loss(out, [TRUTH, EMPTY], 2, 3, (64, 64)).items()}


def test_loss_is_zero_for_a_prediction_equal_to_the_truth():
    # predictor 0 exact with confidence 1 = its IoU, predictor 1 confidence 0, the one-hot class
    losses = _loss([*RIGHT, 1.0, 0, 0, 0, 0, 0, 0, 1, 0])
    assert losses == pytest.approx({"loss_coord": 0, "loss_obj": 0, "loss_noobj": 0, "loss_class": 0}, abs=1e-10)


def test_loss_the_responsible_predictor_targets_its_iou():
    """Predictor 0 is a dot at the cell's corner (IoU 0), confidence 0.6; predictor 1 has the right
    centre and half the width and height (IoU 1/4: its area over the truth's), confidence 0, so it
    is responsible: coord 5 · [(√0.25 - √0.5)² + (√0.125 - √0.25)²], obj (0 - 1/4)², noobj
    0.5 · 0.6², class (0 - 1)² for the class probabilities all 0; each over the batch's 2 images."""
    half = [0.75, 0.5, math.sqrt(0.25), math.sqrt(0.125)]
    losses = _loss([0, 0, 0.1, 0.1, 0.6, *half, 0.0, 0, 0, 0])
    coord = 5 * ((math.sqrt(0.25) - math.sqrt(0.5)) ** 2 + (math.sqrt(0.125) - 0.5) ** 2)
    assert losses == pytest.approx({"loss_coord": coord / 2, "loss_obj": 0.0625 / 2, "loss_noobj": 0.18 / 2,
                                    "loss_class": 1 / 2})


def test_loss_without_overlap_makes_the_nearest_predictor_responsible():
    # both IoU 0 (predictor 1 has the right centre but no width): the nearer, 1, is responsible
    losses = _loss([0, 0, 0.1, 0.1, 0.4, 0.75, 0.5, 0.0, 0.0, 0.3, 0, 1, 0])
    assert losses["loss_obj"] == pytest.approx(0.3 ** 2 / 2) and losses["loss_noobj"] == pytest.approx(0.5 * 0.16 / 2)
    assert losses["loss_coord"] == pytest.approx(5 * (0.5 + 0.25) / 2) and losses["loss_class"] == 0


def test_one_training_step_with_an_image_without_objects(model):
    torch.manual_seed(2)
    net = yolo_v1(num_classes=3, in_channels=3, grid=4, width=0.125).train()
    images = [torch.randn(3, 64, 64) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[4.0, 6.0, 30.0, 40.0], [33.0, 20.0, 60.0, 63.0]]),
                "labels": torch.tensor([1, 3])}, EMPTY]
    losses = net(images, targets)
    assert set(losses) == {"loss_coord", "loss_obj", "loss_noobj", "loss_class"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    before = net.fc2.weight.detach().clone()
    opt = torch.optim.SGD(net.parameters(), lr=1e-3)
    sum(losses.values()).backward()
    assert all(p.grad is not None and p.grad.isfinite().all() for p in net.parameters())
    opt.step()
    assert not torch.equal(before, net.fc2.weight)
    empty = net(images, [EMPTY, EMPTY])  # no objects at all: only the noobj term, and no NaN
    assert all(v.isfinite() for v in empty.values()) and empty["loss_noobj"] > 0
    assert empty["loss_coord"] == empty["loss_obj"] == empty["loss_class"] == 0
    sum(empty.values()).backward()
    assert all(p.grad.isfinite().all() for p in net.parameters())


def test_macs_are_counted_on_the_meta_device_at_448px():
    """A fixed count, unlike a two-stage detector's: the evaluation forward runs on the meta device
    (the box selection, which reads values, is skipped there) and counts the textbook sum: a
    convolution (output elements) x in x k², a fully connected layer in x out."""
    from cnnbench.measure import count_macs_of

    with torch.device("meta"):
        net = yolo_v1().eval()
    total = []

    def hook(m, inputs, out):
        if isinstance(m, torch.nn.Linear):
            total.append(m.in_features * m.out_features)
        else:
            total.append(out.numel() * m.in_channels * m.weight.shape[2] * m.weight.shape[3])

    layers = [m for m in net.modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]
    handles = [m.register_forward_hook(hook) for m in layers]
    with torch.no_grad():
        net([torch.empty(3, 448, 448, device="meta")])
    for h in handles:
        h.remove()
    assert len(total) == 26
    assert count_macs_of(net, (3, 448, 448)) == sum(total)


def test_cnnbench_trains_a_narrow_yolo_v1_on_scene_boxes(tmp_path):
    root = fake_fashion_mnist(tmp_path / "fashion")
    overrides = [o for o in TINY_DETECTION if not o.startswith("model")]
    r = cnnbench("train", "model=yolo_v1", "model.width=0.125", "model.grid=4", *overrides, f"dataset.root={root}",
                 "hydra.run.dir=run", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    res = read_results(tmp_path / "run")
    assert res["status"] == "completed" and res["task"] == "detection" and res["model"] == "yolo_v1"
    assert list(res["input_shape"])[-2:] == [64, 64]
    assert 0 <= res["map"] <= 1 and 0 <= res["map50"] <= 1


def test_a_runs_grid_follows_its_input_size_unless_set():
    """model.grid=null: run.resolve writes grid_for(the run's input size) into the config, so the
    record states the grid the network was built with."""
    from cnnbench import run
    from conftest import compose_cfg

    def grid(*overrides):
        cfg = compose_cfg("model=yolo_v1", "dataset=fashion_scenes", *overrides)
        run.validate(cfg)
        return cfg.model.grid

    assert grid() == 6 and grid("dataset.canvas=64") == 4  # one cell per 16 px on small canvases
    assert grid("dataset.image_size=448") == 7  # the paper's
    assert grid("dataset.canvas=64", "model.grid=3") == 3  # a grid given is kept
