"""SSD300 (Liu et al. 2016): torchvision's layout and parameter count, the paper's 8,732 default
boxes at 300 px, the smallest input, one training step, and `cnnbench train` on fashion_scenes'
boxes at that smallest size (268 px: a VGG-16 step costs seconds on a CPU)."""

import pytest
import torch
from torchvision.models.detection.image_list import ImageList

from cnnbench.models import create_model, get_model_info
from conftest import cnnbench, read_results
from test_segmentation_data import fake_fashion_mnist

MIN_SIZE = 268  # conv11_2 (unpadded 3x3) needs conv10_2's 3 x 3 map: 268 -> 34 (conv4_3) ... 3 -> 1


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return create_model("ssd300", num_classes=3, in_channels=3)


def test_ssd300_has_torchvisions_parameters():
    """torchvision's ssd300_vgg16 at num_classes=91 (background included) has 35,641,826
    parameters; cnnbench's num_classes does not count the background, so 90 here."""
    with torch.device("meta"):
        net = create_model("ssd300", num_classes=90, in_channels=3)
    assert sum(p.numel() for p in net.parameters()) == 35_641_826
    assert net.head.classification_head.num_columns == 91  # 90 objects + the background
    # PASCAL VOC's 20 (the default): 70 fewer scores per default box in the six 3x3 class layers,
    # on maps of 512, 1024, 512, 256, 256, 256 channels with 4, 6, 6, 6, 4, 4 boxes a cell
    fewer = 70 * sum(a * (9 * c + 1) for a, c in zip([4, 6, 6, 6, 4, 4], [512, 1024, 512, 256, 256, 256]))
    with torch.device("meta"):
        voc = create_model("ssd300", num_classes=20, in_channels=3)
    assert sum(p.numel() for p in voc.parameters()) == 35_641_826 - fewer == 26_285_486


def test_ssd300_makes_the_papers_8732_default_boxes_at_300px(model):
    images = torch.randn(1, 3, 300, 300)
    with torch.no_grad():
        features = list(model.eval().backbone(images).values())
    assert [f.shape[-1] for f in features] == [38, 19, 10, 5, 3, 1]  # conv4_3, conv7, conv8_2 ... conv11_2
    boxes = model.anchor_generator(ImageList(images, [(300, 300)]), features)
    assert boxes[0].shape == (8732, 4)  # 38²·4 + 19²·6 + 10²·6 + 5²·6 + 3²·4 + 1²·4
    assert get_model_info("ssd300").default_input == (3, 300, 300)


def test_ssd300_min_size_is_the_smallest_that_runs(model):
    assert get_model_info("ssd300").min_size == MIN_SIZE
    model.eval()
    with torch.no_grad():
        assert isinstance(model([torch.randn(3, MIN_SIZE, MIN_SIZE)]), list)
        with pytest.raises(RuntimeError):
            model([torch.randn(3, MIN_SIZE - 1, MIN_SIZE - 1)])


def test_ssd300_trains_a_step_and_predicts_at_its_smallest_size(model):
    images = [torch.randn(3, MIN_SIZE, MIN_SIZE) for _ in range(2)]
    targets = [{"boxes": torch.tensor([[10.0, 20.0, 120.0, 150.0]]), "labels": torch.tensor([1])},
               {"boxes": torch.tensor([[50.0, 40.0, 90.0, 200.0], [100.0, 100.0, 260.0, 230.0]]),
                "labels": torch.tensor([2, 3])}]
    model.train()
    losses = model(images, targets)
    assert set(losses) == {"classification", "bbox_regression"}
    assert all(torch.isfinite(v) and v > 0 for v in losses.values())
    sum(losses.values()).backward()
    assert model.head.classification_head.module_list[0].weight.grad.abs().sum() > 0
    model.eval()
    with torch.no_grad():
        out = model(images)
    assert isinstance(out, list) and len(out) == 2 and {"boxes", "labels", "scores"} <= set(out[0])


def test_ssd300_takes_one_channel_images():
    net = create_model("ssd300", num_classes=2, in_channels=1).eval()
    with torch.no_grad():
        assert isinstance(net([torch.randn(1, MIN_SIZE, MIN_SIZE)]), list)


def test_cnnbench_trains_ssd300_on_scene_boxes_at_its_smallest_size(tmp_path):
    root = fake_fashion_mnist(tmp_path / "fashion")
    r = cnnbench("train", "model=ssd300", "dataset=fashion_scenes", "dataset.canvas=96", f"dataset.root={root}",
                 "dataset.train_size=4", "dataset.val_size=2", "dataset.batch_size=2", "trainer=smoke",
                 "trainer.max_steps_per_epoch=2", "trainer.max_eval_steps=1", "trainer.threads=1",
                 "trainer.progress=false", "hydra.run.dir=run", cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    res = read_results(tmp_path / "run")
    assert res["status"] == "completed" and res["task"] == "detection" and res["model"] == "ssd300"
    assert list(res["input_shape"])[-2:] == [MIN_SIZE, MIN_SIZE]  # the 96 px canvas raised to the minimum
    assert 0 <= res["map"] <= 1
