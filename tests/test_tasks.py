"""The task layer (cnnbench/tasks/): each task's figures against an independent computation."""

import numpy as np
import pytest
import torch

from cnnbench.tasks import get_task
from cnnbench.tasks.segmentation import IGNORE, ConfusionMeter, align, colour_masks, palette, segmentation_loss


def numpy_figures(truth: np.ndarray, pred: np.ndarray, k: int) -> dict:
    """Long et al. 2015, section 5, written out pixel by pixel in NumPy over the whole split."""
    keep = truth != IGNORE
    t, p = truth[keep], pred[keep]
    iou, acc = [], []
    for c in range(k):
        inter = np.sum((t == c) & (p == c))
        union = np.sum((t == c) | (p == c))
        iou.append(inter / union if union else None)
        if np.sum(t == c):
            acc.append(inter / np.sum(t == c))
    present = [v for v in iou if v is not None]
    return {"miou": float(np.mean(present)), "pixel_acc": float(np.mean(t == p)),
            "mean_class_acc": float(np.mean(acc)), "iou": iou}


def test_confusion_meter_matches_numpy_over_the_split_not_per_image():
    """mIoU over the dataset's pixels (not averaged image by image: torchmetrics#2558), with
    ignored pixels and a class that never occurs (left out of the mean)."""
    g = torch.Generator().manual_seed(0)
    k, batches = 5, []
    for b in range(3):
        target = torch.randint(0, k - 1, (4, 9, 11), generator=g)  # class 4 never in the truth ...
        target[torch.rand(target.shape, generator=g) < 0.1] = IGNORE
        scores = torch.randn(4, k, 9, 11, generator=g)
        scores[:, 4] -= 10  # ... nor predicted
        batches.append((scores, target))
    meter = ConfusionMeter(k, torch.device("cpu"), IGNORE, names=list("abcde"))
    for scores, target in batches:
        meter.update(scores, target)
    got = meter.compute()
    truth = np.concatenate([t.numpy().ravel() for _, t in batches])
    pred = np.concatenate([s.argmax(1).numpy().ravel() for s, _ in batches])
    want = numpy_figures(truth, pred, k)
    for key in ("miou", "pixel_acc", "mean_class_acc"):
        assert got[key] == pytest.approx(want[key], abs=1e-12), key
    assert list(got["per_class_iou"]) == list("abcde") and got["per_class_iou"]["e"] is None
    assert [got["per_class_iou"][c] for c in "abcd"] == pytest.approx(want["iou"][:4], abs=1e-12)
    assert got["images"] == 12 and np.sum(got["confusion"]) == np.sum(truth != IGNORE)
    labelled = torch.cat([t.flatten() for _, t in batches]) != IGNORE
    losses = torch.cat([torch.nn.functional.cross_entropy(s, t, ignore_index=IGNORE, reduction="none").flatten()
                        for s, t in batches])
    assert got["loss"] == pytest.approx(losses[labelled].mean().item(), rel=1e-6)


def test_a_perfect_prediction_scores_one_and_per_image_averaging_would_differ():
    target = torch.zeros(2, 4, 4, dtype=torch.long)
    target[0, :2] = 1  # image 0: half class 1; image 1: all background
    scores = torch.nn.functional.one_hot(target, 2).permute(0, 3, 1, 2).float()
    meter = ConfusionMeter(2, torch.device("cpu"))
    meter.update(scores, target)
    assert meter.compute()["miou"] == 1.0
    wrong = scores.clone()
    wrong[1, :, 0, 0] = torch.tensor([0.0, 1.0])  # one background pixel of image 1 called class 1
    meter = ConfusionMeter(2, torch.device("cpu"))
    meter.update(wrong, target)
    # over the split: background 23/24, class 1 8/9 -> (23/24 + 8/9) / 2; per image it would be
    # image 0 (1 + 1) / 2 and image 1 (15/16 + 0) / 2, mean 0.734
    assert meter.compute()["miou"] == pytest.approx((23 / 24 + 8 / 9) / 2)


def test_the_loss_never_is_nan_and_a_smaller_output_crops_the_target_to_its_centre():
    scores = torch.randn(2, 3, 4, 4, requires_grad=True)
    assert segmentation_loss(scores, torch.full((2, 4, 4), IGNORE)).item() == 0.0  # nothing labelled
    target = torch.arange(8 * 8).view(1, 8, 8).expand(2, 8, 8)
    assert torch.equal(align(scores, target), target[:, 2:6, 2:6])  # U-Net: valid convolutions
    with pytest.raises(ValueError):
        align(torch.randn(1, 3, 9, 9), target)


def test_training_sums_are_right_and_labelled_pixels():
    task = get_task("segmentation")
    model = torch.nn.Conv2d(1, 3, 1)
    x, y = torch.randn(2, 1, 5, 5), torch.randint(0, 3, (2, 5, 5))
    y[0, 0] = IGNORE
    loss, sums = task.train_step(model, x, y, 0.0)
    pred = model(x).argmax(1)
    assert sums.tolist() == [float(((pred == y) & (y != IGNORE)).sum()), 45.0]
    assert loss.item() == pytest.approx(segmentation_loss(model(x), y).item())


def test_the_classification_task_gives_what_the_engine_always_gave():
    task = get_task("classification")
    logits, y = torch.randn(6, 10), torch.randint(0, 10, (6,))
    meter = task.meter(10, torch.device("cpu"))
    meter.update(logits, y)
    got = meter.compute()
    assert got["top1_err"] == pytest.approx((logits.argmax(1) != y).float().mean().item())
    ranks = (-logits.numpy()).argsort(axis=1)[:, :5]  # each image's five best classes, in NumPy
    assert got["top5_err"] == np.mean([label not in top for label, top in zip(y.numpy(), ranks)])
    assert (task.score, task.higher_is_better, get_task("segmentation").higher_is_better) == ("top1_err", False, True)


def test_masks_are_coloured_by_pascal_voc_colours_and_ignored_pixels_white():
    assert palette(3).tolist() == [[0, 0, 0], [128, 0, 0], [0, 128, 0]]  # VOC: background, aeroplane, bicycle
    rgb = colour_masks(torch.tensor([[[0, 1, IGNORE]]]), 3)
    assert rgb[0, :, 0, 2].tolist() == [1.0, 1.0, 1.0]
    assert rgb[0, :, 0, 1].tolist() == pytest.approx([128 / 255, 0.0, 0.0])


class CropsTwo(torch.nn.Module):
    """A network whose output is smaller than its input, centred on it, as U-Net's unpadded layout:
    (B, 1, H, W) -> (B, 3, H - 4, W - 4)."""

    def __init__(self):
        super().__init__()
        self.score = torch.nn.Conv2d(1, 3, 1)

    def forward(self, x):
        return self.score(x)[:, :, 2:-2, 2:-2]


def test_an_output_smaller_than_its_input_is_scored_on_the_centre_only():
    """Loss, training sums, the confusion matrix and the TensorBoard tiles all use the mask cropped
    to the output's centre (Ronneberger et al. 2015, section 2): the border is not scored."""
    from types import SimpleNamespace

    task, model = get_task("segmentation"), CropsTwo()
    x, y = torch.randn(2, 1, 9, 9), torch.randint(0, 3, (2, 9, 9))
    loss, sums = task.train_step(model, x, y, 0.0)
    assert sums[1].item() == 2 * 5 * 5  # labelled pixels of the centre
    meter = ConfusionMeter(3, torch.device("cpu"))
    meter.update(model(x), y)
    got = meter.compute()
    assert np.sum(got["confusion"]) == 50
    centre = y[:, 2:7, 2:7]
    pred = model(x).argmax(1)
    assert got["pixel_acc"] == pytest.approx((pred == centre).float().mean().item())
    loader = SimpleNamespace(preview=lambda n: ((x[:n] * 50 + 128).clamp(0, 255).to(torch.uint8), y[:n]),
                             normalize=lambda raw: raw.float())
    grid = task.images(model, loader, SimpleNamespace(channels_last=False), n=2)["val/segmentation"]
    assert grid.shape == (3, 2 * (5 + 2) + 2, 3 * (5 + 2) + 2)  # 5 px tiles: the centre, image and masks alike
    truth_tile = grid[:, 2:7, 7 + 2:7 + 7]  # row 0, column 1
    assert torch.allclose(truth_tile, colour_masks(centre[:1], 3)[0])
