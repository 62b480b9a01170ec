"""R-CNN (Girshick et al. 2014) and Fast R-CNN (Girshick 2015) on Selective Search's proposals:
the search (OpenCV's) and its cache, R-CNN's warp, the parameter counts, the costs each detector
counts in evaluation (proposals, CNN passes, the search's seconds), the refusals, and `cnnbench
train` end to end on 64 px scenes with narrow networks."""

import numpy as np
import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from cnnbench.errors import CnnbenchError
from cnnbench.models import create_model
from cnnbench.models.proposals import SelectiveSearch, Tally, to_uint8
from cnnbench.models.rcnn import Warp
from conftest import cnnbench, read_results
from test_detection import TINY_DETECTION
from test_segmentation_data import fake_fashion_mnist

NARROW = {"rcnn": ["model=rcnn", "model.backbone=lenet5", "model.warp=32", "model.proposals=32"],
          "fast_rcnn": ["model=fast_rcnn", "model.backbone=mobilenet_v2", "model.proposals=32"]}


def square_image(size=64, box=(16, 20, 40, 52)):
    """A (1, size, size) image: black, one white rectangle x1, y1, x2, y2 (exclusive)."""
    x = torch.zeros(1, size, size)
    x[:, box[1]:box[3], box[0]:box[2]] = 1.0
    return x


def images_of(*xs):
    t = torch.stack(xs)
    return ImageList(t, [tuple(x.shape[-2:]) for x in xs])


def test_to_uint8_stretches_the_image_and_orders_channels_for_opencv():
    x = torch.stack([torch.full((2, 3), -1.0), torch.full((2, 3), 0.0), torch.full((2, 3), 1.0)])  # R, G, B
    a = to_uint8(x)
    assert a.dtype == np.uint8 and a.shape == (2, 3, 3)
    assert a[0, 0].tolist() == [255, 128, 0]  # B, G, R: OpenCV's order; -1 -> 0, 1 -> 255
    assert to_uint8(torch.zeros(1, 4, 4)).shape == (4, 4, 3)  # grey repeated; a flat image does not divide by 0


def test_selective_search_finds_an_object_and_searches_an_image_once():
    from torchvision.ops import box_iou

    truth = torch.tensor([[16.0, 20.0, 40.0, 52.0]])
    search = SelectiveSearch("fast", top_n=2000).eval()
    proposals, losses = search(images_of(square_image()))
    assert losses == {} and proposals[0].dtype == torch.float32 and proposals[0].shape[1] == 4
    assert box_iou(truth, proposals[0]).max() > 0.9  # the square, as one region
    tally = search.tally
    assert tally.proposals == len(proposals[0]) and tally.proposal_s > 0
    first = tally.proposal_s
    # the same image again: from the cache, the seconds its search took counted again
    again, _ = search(images_of(square_image()))
    (_, seconds), = search.cache.values()
    assert torch.equal(again[0], proposals[0]) and 0 < seconds <= first
    assert tally.proposal_s - first >= seconds and tally.proposals == 2 * len(proposals[0])
    assert tally.proposal_wall_s < tally.proposal_s  # the hit spent (almost) nothing


def test_an_images_proposals_do_not_depend_on_what_was_searched_before():
    """OpenCV ranks regions with the C library's rand(): seeded per image, so a resume or a sweep's
    next job in the same process gets the same proposals (in the same order: top_n cuts it)."""
    from cnnbench.models.proposals import _c_srand

    scene = square_image(96) + square_image(96, (50, 8, 90, 40)) * 0.6 + square_image(96, (6, 60, 30, 90)) * 0.3
    first = SelectiveSearch("quality", top_n=2000).eval()(images_of(scene))[0][0]
    other = SelectiveSearch("quality", top_n=2000).eval()
    other(images_of(torch.rand(1, 96, 96)))  # something else first: rand() moves on
    if _c_srand() is None:
        pytest.skip("no C library srand here: proposals keep OpenCV's order")
    assert torch.equal(other(images_of(scene))[0][0], first) and len(first) > 3


def test_selective_search_keeps_top_n_and_gives_a_blank_image_the_whole_image():
    search = SelectiveSearch("quality", top_n=3).train()
    image = square_image(64) + square_image(64, (2, 2, 10, 30)) * 0.5
    proposals, _ = search(images_of(image, torch.zeros(1, 64, 64)))
    assert len(proposals[0]) == 3
    assert proposals[1].tolist() in ([[0.0, 0.0, 64.0, 64.0]], proposals[1].tolist()[:1])  # found nothing or little
    assert search.tally.proposals == 0  # training forwards are not evaluation costs


def test_rcnn_warp_dilates_for_context_and_resamples_to_its_size():
    """R-CNN Appendix A: a box dilated so that p = 16 px of the 227 px warped image are context (the
    same share at other warp sizes), then resampled to the warp size, whatever its aspect ratio.
    On a linear ramp bilinear resampling at pixel centres gives the pixels back."""
    from cnnbench.models.rcnn import Crops

    tally = Tally(passes=True)
    box = torch.tensor([[100.0, 100.0, 295.0, 295.0]])
    crops = Warp(227, tally=tally).eval()({"0": torch.zeros(1, 1, 8, 8)}, [box], [(400, 400)])
    assert crops.rois.tolist() == [[0.0, 84.0, 84.0, 311.0, 311.0]]  # 195 px + 16 px a side = 227 px
    assert tally.cnn_passes == 1  # one CNN pass per proposal
    assert Warp(32).context == pytest.approx(16 * 32 / 227)  # 2.3 px of a 32 px warp, not 16
    ramp = (torch.arange(40.0)[None, :] + 40 * torch.arange(40.0)[:, None])[None, None]  # (1, 1, 40, 40)
    same = Crops(ramp, torch.tensor([[0.0, 5.0, 5.0, 25.0, 25.0]]), 20).warped()
    torch.testing.assert_close(same[0, 0], ramp[0, 0, 5:25, 5:25])
    wide = Crops(ramp, torch.tensor([[0.0, 4.0, 4.0, 20.0, 12.0]]), 8).warped()  # 16 x 8 px to 8 x 8
    torch.testing.assert_close(wide[0, 0], ramp[0, 0, 4:12, 4:20:2] + 0.5)  # 2 px a column: their mean


def test_rcnn_runs_its_cnn_on_chunks_of_proposals_in_evaluation(monkeypatch):
    """The warped proposals of a batch are made and run CHUNK at a time (2,000 a image at 227 px
    would not fit at once): the same features as all at once."""
    import cnnbench.models.rcnn as rcnn
    from cnnbench.models.rcnn import Crops, WarpedCNN

    torch.manual_seed(0)
    head = WarpedCNN("lenet5", 1, 32).eval()
    crops = Crops(torch.randn(2, 1, 64, 64), torch.cat([torch.tensor([[0.0], [1.0]]).repeat(3, 1),
                                                        torch.rand(6, 2) * 30, 34 + torch.rand(6, 2) * 30], 1), 32)
    with torch.no_grad():
        whole = head(crops)
        monkeypatch.setattr(rcnn, "CHUNK", 4)
        torch.testing.assert_close(head(crops), whole)
    assert whole.shape == (6, head.out_features)


def test_rcnn_leaves_out_googlenets_auxiliary_classifiers():
    """Their outputs would be thrown away: parameters without gradients (torchrun's DDP stops on
    them) and MACs for nothing."""
    with torch.device("meta"):
        model = create_model("rcnn", num_classes=3, in_channels=3, backbone="googlenet")
    assert not [n for n, _ in model.named_parameters() if "aux" in n]


def test_detector_options_out_of_range_are_refused():
    for name, options, says in [("rcnn", {"proposals": 0}, "proposals must be 1 or more"),
                                ("fast_rcnn", {"proposals": -3}, "proposals must be 1 or more"),
                                ("faster_rcnn", {"proposals": 0}, "proposals must be 1 or more"),
                                ("rcnn", {"warp": 0}, "warp must be 8 px or more")]:
        with pytest.raises(ValueError, match=says):
            create_model(name, num_classes=3, in_channels=3, **options)


def test_every_proposal_gives_exactly_top_n_boxes_without_searching():
    """cnnbench models and profile: R-CNN and Fast R-CNN at their model.proposals, as a photograph
    would give Selective Search ~2,000 regions and a random image gives it few."""
    from cnnbench.models.proposals import every_proposal, spread_boxes

    model = create_model("fast_rcnn", num_classes=3, in_channels=1, backbone="mobilenet_v2", proposals=50)
    assert "exactly model.proposals (50)" in every_proposal(model)
    proposals, _ = model.rpn.eval()(images_of(torch.zeros(1, 64, 48)))
    assert proposals[0].shape == (50, 4) and torch.equal(proposals[0], spread_boxes(50, 64, 48))
    b = proposals[0]
    assert (b[:, :2] >= 0).all() and (b[:, 2] <= 48).all() and (b[:, 3] <= 64).all() and (b[:, 2:] > b[:, :2]).all()
    assert model.tally.proposals == 50 and every_proposal(create_model("ssd300", num_classes=3)) is None


def test_fast_rcnn_has_faster_rcnns_parameters_without_the_rpn():
    """Fast R-CNN on VGG-16 at VOC's 20 classes: Faster R-CNN's hand count (tests/test_detection.py,
    137,073,622) less its RPN (3x3 conv 2,359,808, objectness 4,617, boxes 18,468)."""
    with torch.device("meta"):
        model = create_model("fast_rcnn", num_classes=20, in_channels=3)
    assert sum(p.numel() for p in model.parameters()) == 137_073_622 - 2_359_808 - 4_617 - 18_468 == 134_690_729


def test_rcnn_has_alexnets_parameters_with_a_detection_head():
    """R-CNN on AlexNet at 20 classes: cnnbench's alexnet (Krizhevsky et al. 2012 in one tower:
    62,378,344 with its 1000 classes, tests/test_zoo.py) without fc8 (4096 x 1000 + 1000), plus
    the softmax over 21 (4096 x 21 + 21) and the per-class boxes (4096 x 84 + 84)."""
    with torch.device("meta"):
        model = create_model("rcnn", num_classes=20, in_channels=3)
        alexnet = create_model("alexnet", num_classes=1000, in_channels=3)
    assert sum(p.numel() for p in alexnet.parameters()) == 62_378_344
    expected = 62_378_344 - (4096 * 1000 + 1000) + (4096 * 21 + 21) + (4096 * 84 + 84)
    assert sum(p.numel() for p in model.parameters()) == expected == 58_711_529
    assert model.roi_heads.box_roi_pool.size == 227  # AlexNet's own input size, the paper's warp


@pytest.mark.parametrize("name", ["rcnn", "fast_rcnn"])
def test_each_detector_counts_its_proposals_and_cnn_passes_in_evaluation(name):
    torch.manual_seed(0)
    options = {"backbone": "lenet5", "warp": 32} if name == "rcnn" else {"backbone": "mobilenet_v2"}
    model = create_model(name, num_classes=3, in_channels=1, proposals=16, **options)
    images = [square_image(), square_image(64, (4, 4, 30, 20))]
    targets = [{"boxes": torch.tensor([[16.0, 20.0, 40.0, 52.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)}]  # no objects: trains
    losses = model.train()(images, targets)
    assert set(losses) == {"loss_classifier", "loss_box_reg"} and all(torch.isfinite(v) for v in losses.values())
    sum(losses.values()).backward()
    model.tally.reset()
    with torch.no_grad():
        out = model.eval()(images)
    assert [set(o) for o in out] == [{"boxes", "labels", "scores"}] * 2
    proposals = model.tally.proposals
    assert 0 < proposals <= 2 * 16
    # R-CNN: the whole CNN once per proposal; Fast R-CNN: once per image (None: the default, 1)
    assert model.tally.cnn_passes == (proposals if name == "rcnn" else None)


def test_evaluation_costs_are_per_image_and_split_the_search_from_the_network():
    from cnnbench.tasks.detection import DETECTION

    model = torch.nn.Module()
    model.tally = Tally(proposals=True, passes=True, search=True)
    DETECTION.start_evaluation(model)
    t = model.tally
    t.images, t.seconds, t.proposals, t.cnn_passes = 10, 3.0, 400, 400
    t.proposal_wall_s, t.proposal_s = 1.0, 2.5  # 1 s searching now, 1.5 s of cached searches
    costs = DETECTION.evaluation_costs(model, torch.device("cpu"))
    assert costs == pytest.approx({"inference_images_per_s": 10 / (2.0 + 2.5), "proposals_per_image": 40.0,
                                   "cnn_passes_per_image": 40.0, "proposal_s_per_image": 0.25,
                                   "network_s_per_image": 0.2})
    # the first batch of several is left out: its warm-up is no steady state
    t.batches, t.warm = 2, (2, 2.0, 80, 80, 0.5, 0.5)  # after batch 1: 2 images in 2 s, 0.5 s of it searching
    # the other 8 images: 1 s, 0.5 s of it searching (+ 1.5 s of cached searches): network 0.5 s, search 2 s
    assert DETECTION.evaluation_costs(model, torch.device("cpu")) == pytest.approx({
        "inference_images_per_s": 8 / (0.5 + 2.0), "proposals_per_image": 40.0, "cnn_passes_per_image": 40.0,
        "proposal_s_per_image": 0.25, "network_s_per_image": 0.5 / 8})
    single = torch.nn.Module()  # a single-shot detector counts nothing: one pass per image, no proposals
    DETECTION.start_evaluation(single)
    single.tally.images, single.tally.seconds = 4, 2.0
    assert DETECTION.evaluation_costs(single, torch.device("cpu")) == {
        "inference_images_per_s": 2.0, "proposals_per_image": None, "cnn_passes_per_image": 1.0,
        "proposal_s_per_image": None, "network_s_per_image": 0.5}


def test_rcnn_refuses_a_backbone_that_is_no_classifier_or_a_warp_it_cannot_take():
    with pytest.raises(CnnbenchError, match="fcn8s is a segmentation network"):
        create_model("rcnn", num_classes=3, in_channels=3, backbone="fcn8s")
    with pytest.raises(CnnbenchError, match="model.warp=40 px, but alexnet takes 67 px"):
        create_model("rcnn", num_classes=3, in_channels=3, warp=40)


def test_selective_search_without_opencvs_contrib_module_says_what_to_install(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "cv2", None)  # import cv2 fails
    search = SelectiveSearch().eval()
    with pytest.raises(CnnbenchError, match="pip install opencv-contrib-python-headless"):
        search(images_of(square_image()))


@pytest.fixture(scope="module")
def scenes(tmp_path_factory):
    return fake_fashion_mnist(tmp_path_factory.mktemp("rcnn") / "fashion")


@pytest.mark.parametrize("name", ["rcnn", "fast_rcnn"])
def test_cnnbench_trains_each_and_records_what_inference_costs(name, scenes, tmp_path):
    r = cnnbench("train", *TINY_DETECTION, *NARROW[name], f"dataset.root={scenes}", "hydra.run.dir=run",
                 cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    res = read_results(tmp_path / "run")
    assert res["status"] == "completed" and res["task"] == "detection" and 0 <= res["map"] <= 1
    assert res["inference_images_per_s"] > 0 and 0 < res["proposals_per_image"] <= 32
    assert res["proposal_s_per_image"] > 0 and res["network_s_per_image"] > 0
    passes = res["proposals_per_image"] if name == "rcnn" else 1.0
    assert res["cnn_passes_per_image"] == pytest.approx(passes)
    assert "Selective Search" in res["macs_note"] and res["macs"] > 0


@pytest.mark.parametrize("overrides, says", [
    (["model=rcnn", "model.backbone=unet"], "R-CNN runs a zoo classifier on each warped proposal; model.backbone=unet "
                                            "is a segmentation network"),
    (["model=fast_rcnn", "model.search=slow"], "Selective Search's mode is fast or quality, not 'slow'"),
    (["model=fast_rcnn", "model.backbone=alexnet"], "backbone must be vgg16, resnet50 or mobilenet_v2"),
    (["model=rcnn", "model.proposals=0"], "proposals must be 1 or more (the papers take ~2,000 an image), not 0")])
def test_an_unusable_rcnn_backbone_is_one_paragraph_and_exit_2(overrides, says, scenes, tmp_path):
    r = cnnbench("train", *overrides, "dataset=fashion_scenes", "dataset.canvas=64", f"dataset.root={scenes}",
                 "trainer=smoke", "hydra.run.dir=run", cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.startswith("error: ") and says in r.stderr and r.stderr.count("\n") == 1
    assert not (tmp_path / "run").exists()  # nothing written


def test_a_detection_run_stopped_after_an_epoch_resumes_to_the_same_weights(scenes, tmp_path, monkeypatch):
    """Resume identity for detection: R-CNN (Selective Search's cache is not in the checkpoint: the
    resumed run searches again and must find the same proposals), 2 epochs straight against 1
    epoch, a failure (the disk full) in the second, and a resume."""
    from cnnbench import engine, run
    from conftest import compose_cfg

    args = [a for a in TINY_DETECTION if a != "trainer.progress=false"] + NARROW["rcnn"] + [
        f"dataset.root={scenes}", "trainer.epochs=2", "trainer.max_steps_per_epoch=1", "trainer.progress=false"]
    straight = run.train(compose_cfg(*args), tmp_path / "straight")
    real_epoch, calls = engine.train_one_epoch, []

    def full_in_second_epoch(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(tmp_path / "stopped"))
        return real_epoch(*a, **k)

    monkeypatch.setattr(engine, "train_one_epoch", full_in_second_epoch)
    with pytest.raises(run.RunFailed):
        run.train(compose_cfg(*args), tmp_path / "stopped")
    monkeypatch.setattr(engine, "train_one_epoch", real_epoch)
    resumed = run.train(compose_cfg(*args, "trainer.resume=true"), tmp_path / "stopped")
    assert resumed["status"] == "completed" and resumed["epochs"] == 2
    a = torch.load(tmp_path / "straight" / "checkpoints" / "last.pt", weights_only=False)["weights"]
    b = torch.load(tmp_path / "stopped" / "checkpoints" / "last.pt", weights_only=False)["weights"]
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed["map"] == straight["map"] and resumed["per_class_ap"] == straight["per_class_ap"]
    assert resumed["proposals_per_image"] == straight["proposals_per_image"]


def test_profile_counts_and_times_fast_rcnn_at_exactly_its_proposals(tmp_path):
    import json

    r = cnnbench("profile", "model=fast_rcnn", "model.backbone=mobilenet_v2", "model.proposals=16",
                 "dataset=fashion_scenes", "dataset.canvas=64", "profile.batch_sizes=[2]", "profile.repeats=1",
                 "profile.warmup=0", "trainer.device=cpu", f"hydra.run.dir={tmp_path / 'p'}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    p = json.loads((tmp_path / "p" / "profile.json").read_text())
    assert p["proposals_note"].startswith("Counted and timed at exactly model.proposals (16) proposals")
    assert "Selective Search" in p["macs_note"] and p["macs"] > 0 and p["batches"][0]["infer_images_per_s"] > 0
