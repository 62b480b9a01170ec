"""The experiments in conf/experiment/, each run end to end through the real command as the README
tells users to try one: `cnnbench train +experiment=NAME trainer=smoke` (4 training steps and 4
evaluation batches per job), shrunk further where a comment says why. The experiment file alone
makes it a sweep; every job must complete and record the facts the experiment is about."""

import itertools
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from conftest import FASHION_MNIST, TINY, cnnbench, read_results

CONF = Path(__file__).resolve().parents[1] / "conf"
EXPERIMENTS = sorted(p.stem for p in (CONF / "experiment").glob("*.yaml"))

# The experiments read Fashion-MNIST; without it, TINY's synthetic grey images stand in.
SYNTHETIC = [o for o in TINY if o.startswith(("dataset=", "dataset.in_channels", "dataset.mean", "dataset.std"))]
DATA = [] if FASHION_MNIST.is_dir() else SYNTHETIC
# A smoke job reads at most 4 batches of each split, so only those images are loaded (and resized
# to the model's input: for AlexNet the 70,000 images would take seconds). One batch of 128 fits.
SUBSET = ["dataset.train_size=256", "dataset.val_size=128"]
# One thread: at these sizes, and on a machine running other tests too, handing each small
# operation to a second thread costs more than it saves (5-20x slower with two, measured).
ONE_THREAD = ["trainer.threads=1"]
# Fewer images per step where the batch size is not what the experiment is about: 4 steps of
# 128 images through ResNet-56 or VGG-11 take seconds each on a CPU.
SMALL_BATCH = ["dataset.batch_size=16"]


def run_experiment(name: str, tmp_path: Path, *overrides: str, data: list | None = None) -> list:
    """Run `cnnbench train +experiment=NAME trainer=smoke OVERRIDES`; the results of its jobs. data:
    the overrides that say where the data is (default DATA)."""
    sweep = tmp_path / name
    r = cnnbench("train", f"+experiment={name}", "trainer=smoke", f"hydra.sweep.dir={sweep}",
                 *(DATA if data is None else data),
                 *SUBSET, *ONE_THREAD, *overrides, cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir())
    missing = [p.name for p in jobs if not (p / "results.json").is_file()]
    assert not missing, f"job folders without results.json: {missing}"
    results = [read_results(p) for p in jobs]
    assert [r["status"] for r in results] == ["completed"] * len(jobs)
    return results


def swept(name: str) -> dict:
    """The experiment file's sweep: {key: [values]}."""
    params = OmegaConf.load(CONF / "experiment" / f"{name}.yaml").hydra.sweeper.params
    return {k: str(v).split(",") for k, v in params.items()}


def test_every_experiment_is_tested_here():
    tested = {n.removeprefix("test_experiment_") for n in globals() if n.startswith("test_experiment_")}
    assert sorted(tested) == EXPERIMENTS


@pytest.mark.parametrize("name", EXPERIMENTS)
def test_file_states_a_sweep_of_its_own(name):
    path = CONF / "experiment" / f"{name}.yaml"
    assert path.read_text().startswith("# @package _global_\n# "), "the package line, then what it shows"
    hydra = OmegaConf.to_container(OmegaConf.load(path), resolve=False)["hydra"]
    assert hydra["mode"] == "MULTIRUN" and hydra["sweeper"]["params"]  # a sweep without -m
    assert hydra["sweep"]["dir"] == f"outputs/experiments/{name}/${{now:%Y-%m-%d_%H-%M-%S}}"


def test_experiment_zoo(tmp_path):
    # One step per network, no checkpoints: VGG-11 and AlexNet have 129 M and 58 M weights, and an
    # Adam step over them takes seconds on a CPU (a checkpoint holds them three times over).
    results = run_experiment("zoo", tmp_path, *SMALL_BATCH, "trainer.max_steps_per_epoch=1",
                             "trainer.max_eval_steps=1", "trainer.checkpoint=false")
    models = swept("zoo")["model"]
    assert sorted(r["model"] for r in results) == sorted(models) and len(models) == 7
    by_model = {r["model"]: r for r in results}
    # each at the smallest size it takes: Fashion-MNIST's 28 px, raised where the network needs it
    if not DATA:
        sizes = {m: by_model[m]["input_shape"][1] for m in models}
        assert sizes == {"lenet5": 32, "alexnet": 67, "vgg11": 32, "googlenet": 28, "resnet18": 32,
                         "densenet121": 29, "mobilenet_v2": 28}
    # one budget: the same optimizer, schedule, epochs and batch for every network
    budgets = {str({k: r["config"][k] for k in ("optimizer", "scheduler", "trainer")}) for r in results}
    assert len(budgets) == 1 and len({r["batch_size"] for r in results}) == 1


def test_experiment_degradation(tmp_path):
    # The smoke budget's 4 steps as 2 epochs of 2, so that there is a curve: one point per epoch.
    results = run_experiment("degradation", tmp_path, *SMALL_BATCH, "trainer.epochs=2",
                             "trainer.max_steps_per_epoch=2", "trainer.max_eval_steps=2")
    by_model = {r["model"]: r for r in results}
    assert sorted(by_model) == ["plain20", "plain56", "resnet20", "resnet56"]
    for depth in (20, 56):  # the shortcut is the only difference: no parameters of its own
        assert by_model[f"plain{depth}"]["params"] == by_model[f"resnet{depth}"]["params"]
    for r in results:  # the curve the experiment is read from: training error at every epoch
        errors = [h["train_top1_err"] for h in r["history"]]
        assert [h["epoch"] for h in r["history"]] == [1, 2] and all(0 <= e <= 1 for e in errors)


def test_experiment_normalization(tmp_path):
    results = run_experiment("normalization", tmp_path)
    assert len(results) == 12
    done = {(r["config"]["model"]["norm"], r["config"]["dataset"]["batch_size"]) for r in results}
    assert done == set(itertools.product(["batch", "layer", "instance", "group"], [2, 8, 128]))
    assert {r["model"] for r in results} == {"resnet20"}
    assert {r["batch_size"] for r in results} == {2, 8, 128}
    # the same images for every job: one training subset, one number of epochs
    assert len({(r["config"]["dataset"]["train_size"], r["config"]["trainer"]["epochs"]) for r in results}) == 1


def test_experiment_optimizers(tmp_path):
    results = run_experiment("optimizers", tmp_path, *SMALL_BATCH)
    names = swept("optimizers")["optimizer"]
    assert len(results) == len(names) == 5 and {r["model"] for r in results} == {"lenet5"}
    ran = sorted((r["optimizer"], r["config"]["optimizer"]["lr"], r["config"]["optimizer"]["momentum"])
                 for r in results)
    own = sorted((c.name, c.lr, c.get("momentum")) for c in
                 (OmegaConf.load(CONF / "optimizer" / f"{n}.yaml") for n in names))
    assert ran == own  # each with its own file's learning rate
    assert ("sgd", 0.1, 0.0) in ran and ("sgd", 0.1, 0.9) in ran  # with and without momentum


def test_experiment_separable(tmp_path):
    results = run_experiment("separable", tmp_path, *SMALL_BATCH)
    by_kind = {r["config"]["model"]["separable"]: r for r in results}
    assert sorted(by_kind) == [False, True]
    standard, separable = by_kind[False], by_kind[True]
    assert standard["model"] == separable["model"] == "mobilenet_v1"
    # MobileNets section 3.1: 8 to 9 times fewer multiply-adds with 3x3 depthwise separable layers
    assert 8 < standard["macs"] / separable["macs"] < 9
    assert 8 < standard["params"] / separable["params"] < 9
    assert standard["train_images_per_s"] > 0 and separable["train_images_per_s"] > 0


def test_experiment_segmentation(tmp_path):
    # 32 px canvases from a small fake Fashion-MNIST, 2 steps of 2: each FCN image is a 232 px
    # VGG-16 pass (its 100 px padding), seconds a step on a CPU.
    from test_segmentation_data import fake_fashion_mnist

    root = fake_fashion_mnist(tmp_path / "fashion")
    results = run_experiment("segmentation", tmp_path, "dataset.canvas=32", "dataset.train_size=8",
                             "dataset.val_size=4", "dataset.batch_size=2", "trainer.max_steps_per_epoch=2",
                             "trainer.max_eval_steps=2", "trainer.checkpoint=false",
                             data=[f"dataset.root={root}"])
    by_model = {r["model"]: r for r in results}
    assert sorted(by_model) == sorted(swept("segmentation")["model"]) == ["fcn16s", "fcn32s", "fcn8s", "segnet",
                                                                          "unet"]
    assert {r["task"] for r in results} == {"segmentation"} and all(0 <= r["miou"] <= 1 for r in results)
    assert by_model["unet"]["config"]["model"]["padding"] == "same"  # per_model: output at the canvas size
    # the skips add only score layers and learned up-samplings: FCN-8s > 16s > 32s, by thousands
    assert by_model["fcn32s"]["params"] < by_model["fcn16s"]["params"] < by_model["fcn8s"]["params"]
    assert by_model["fcn8s"]["params"] - by_model["fcn32s"]["params"] < 20_000
    # less activation memory per image than any FCN (mostly FCN's 100 px padding: a 32 px canvas
    # enters VGG-16 as 232 px; README, Segmentation)
    assert by_model["segnet"]["activation_bytes"] < min(by_model[f"fcn{s}s"]["activation_bytes"] for s in (8, 16, 32))
    budgets = {str({k: r["config"][k] for k in ("optimizer", "scheduler", "trainer")}) for r in results}
    assert len(budgets) == 1


def test_experiment_rcnn_family(tmp_path):
    # 64 px canvases from a small fake Fashion-MNIST, one step of 2 images, one epoch; MobileNet v2
    # for VGG-16 and R-CNN's proposals warped to 32 px: R-CNN's VGG-16 at 224 px per proposal costs
    # minutes a step on a CPU. What the experiment is about holds at any size: the costs' split.
    from test_segmentation_data import fake_fashion_mnist

    root = fake_fashion_mnist(tmp_path / "fashion")
    results = run_experiment("rcnn_family", tmp_path, "dataset.canvas=64", "dataset.train_size=4",
                             "dataset.val_size=4", "dataset.batch_size=2", "trainer.epochs=1",
                             "trainer.max_steps_per_epoch=1", "trainer.max_eval_steps=2", "trainer.checkpoint=false",
                             "per_model.any.backbone=mobilenet_v2", "+per_model.rcnn.warp=32",
                             "+per_model.any.proposals=16", data=[f"dataset.root={root}"])
    by_model = {r["model"]: r for r in results}
    assert sorted(by_model) == sorted(swept("rcnn_family")["model"]) == ["fast_rcnn", "faster_rcnn", "rcnn"]
    assert {r["config"]["model"]["backbone"] for r in results} == {"mobilenet_v2"}  # one backbone for all
    assert all(r["task"] == "detection" and 0 <= r["map"] <= 1 and r["inference_images_per_s"] > 0 for r in results)
    rcnn, fast, faster = by_model["rcnn"], by_model["fast_rcnn"], by_model["faster_rcnn"]
    # R-CNN: the CNN once per proposal; Fast and Faster R-CNN: once per image
    assert rcnn["cnn_passes_per_image"] == rcnn["proposals_per_image"] > 1
    assert fast["cnn_passes_per_image"] == faster["cnn_passes_per_image"] == 1
    # Selective Search's seconds where it runs, none where the RPN proposes
    assert rcnn["proposal_s_per_image"] > 0 and fast["proposal_s_per_image"] > 0
    assert faster["proposal_s_per_image"] is None and faster["proposals_per_image"] > 0
    assert not any(r["config"]["dataset"]["augment"] for r in results)  # proposals searched once per image
    budgets = {str({k: r["config"][k] for k in ("optimizer", "scheduler", "trainer")}) for r in results}
    assert len(budgets) == 1


def test_experiment_detection(tmp_path):
    # SSD's smallest input (268 px), one step of 2 images; YOLO at a quarter of its width (its
    # 205 M-parameter first fc layer alone takes seconds to initialise) and Faster R-CNN on
    # MobileNet v2 for VGG-16: the experiment's point, one table of mAP against inference speed.
    from test_segmentation_data import fake_fashion_mnist

    root = fake_fashion_mnist(tmp_path / "fashion")
    results = run_experiment("detection", tmp_path, "dataset.canvas=64", "dataset.image_size=268",
                             "dataset.train_size=2", "dataset.val_size=2", "dataset.batch_size=2", "trainer.epochs=1",
                             "trainer.max_steps_per_epoch=1", "trainer.max_eval_steps=1", "trainer.checkpoint=false",
                             "per_model.faster_rcnn.backbone=mobilenet_v2", "+per_model.yolo_v1.width=0.25",
                             data=[f"dataset.root={root}"])
    by_model = {r["model"]: r for r in results}
    assert sorted(by_model) == sorted(swept("detection")["model"]) == ["faster_rcnn", "ssd300", "yolo_v1"]
    assert {tuple(r["input_shape"]) for r in results} == {(1, 268, 268)}  # one input size for all
    assert by_model["yolo_v1"]["config"]["model"]["grid"] == 7  # the paper's grid from 112 px
    for r in results:
        assert r["task"] == "detection" and 0 <= r["map"] <= 1 and r["inference_images_per_s"] > 0
        assert r["cnn_passes_per_image"] == 1
    assert by_model["ssd300"]["proposals_per_image"] is None and by_model["yolo_v1"]["proposals_per_image"] is None
    assert by_model["faster_rcnn"]["proposals_per_image"] > 0
    budgets = {str({k: r["config"][k] for k in ("optimizer", "scheduler", "trainer")}) for r in results}
    assert len(budgets) == 1


def test_experiment_fashion_table(tmp_path):
    # One step of 16 images per network, no checkpoints (VGG-16's 134 M weights: an AdamW step and
    # a checkpoint of them take seconds on a CPU); trainer=smoke replaces trainer=fast here, so
    # nothing is compiled on the CPU, and one epoch of the experiment's 20.
    results = run_experiment("fashion_table", tmp_path, *SMALL_BATCH, "trainer.epochs=1",
                             "trainer.max_steps_per_epoch=1", "trainer.max_eval_steps=1", "trainer.checkpoint=false")
    by_model = {r["model"]: r for r in results}
    assert sorted(by_model) == sorted(swept("fashion_table")["model"]) == ["alexnet_tv", "googlenet", "mobilenet_v2",
                                                                           "vgg16_bn"]
    # each at the smallest size it takes, MobileNet v2 with its small stem (per_model)
    if not DATA:
        assert {m: r["input_shape"] for m, r in by_model.items()} == {
            "mobilenet_v2": [1, 28, 28], "googlenet": [1, 28, 28], "vgg16_bn": [1, 32, 32], "alexnet_tv": [1, 63, 63]}
    assert by_model["mobilenet_v2"]["config"]["model"]["stem"] == "small"
    assert by_model["vgg16_bn"]["config"]["model"]["stem"] == "imagenet"  # five max-pools: 1x1 at 32 px
    # one budget: the same optimizer, schedule, trainer and batch for every network, the file's recipe
    budgets = {str({k: r["config"][k] for k in ("optimizer", "scheduler", "trainer")}) for r in results}
    assert len(budgets) == 1 and {r["batch_size"] for r in results} == {16}
    run = results[0]["config"]
    assert (run["optimizer"]["name"], run["optimizer"]["lr"], run["scheduler"]["name"]) == ("adamw", 2e-3, "onecycle")
    assert run["trainer"]["label_smoothing"] == 0.1 and all(r["config"]["dataset"]["augment"] for r in results)
    # what the GPU run gets without the test's overrides: trainer=fast, 20 epochs of batch 512
    from conftest import compose_cfg

    cfg = compose_cfg("+experiment=fashion_table", "model=mobilenet_v2")
    assert cfg.trainer.compile and cfg.trainer.channels_last and cfg.trainer.amp == "auto"
    assert (cfg.trainer.epochs, cfg.dataset.batch_size, cfg.dataset.image_size) == (20, 512, None)
