"""Bad input: a one-paragraph message naming the problem and the fix, exit status 2, no
traceback, and nothing an earlier run left is touched. docs/errors.md catalogues every case here.

Every command runs in this process (cli.main), as `cnnbench ...` would run it: a subprocess
costs seconds of imports per case."""

import json
import os
import shlex
import tempfile
from pathlib import Path

import pytest
import torch
from PIL import Image

from conftest import TINY, cnnbench

from cnnbench import cli, report, track
from cnnbench.models import create_model

BAD_TRAIN_INPUTS = [
    (["model=unet"], "model=unet is a segmentation network, and dataset=synthetic holds classification data"),
    (["dataset=fashion_scenes"], "model=lenet5 is a classification network, and dataset=fashion_scenes holds "
                                 "segmentation and detection data (its targets: a class for every pixel; boxes"),
    (["model=unet", "dataset=fashion_scenes", "dataset.max_items=0"], "dataset.max_items=0: every canvas needs at"),
    (["model=unet", "dataset=fashion_scenes", "dataset.canvas=20"], "dataset.canvas=20 px is too small for"),
    (["dataset.canvas=64"], "dataset.canvas=64 does not apply to dataset=synthetic: only dataset=fashion_scenes"),
    (["model=unet", "dataset=fashion_scenes"], "dataset.image_size=188 (dataset.image_size is unset: the images' 96 "
     "px, raised to the smallest size unet takes) does not fit unet: with model.padding=valid (the paper's unpadded "
     "convolutions) a 188 px input gives a 4 px output, so only 0.045% of each image's pixels would be scored"),
    (["model=unet", "dataset=fashion_scenes", "dataset.image_size=200"], "at 200 px the max-pools drop rows and the "
     "output is not centred on the input. Use dataset.image_size=188 or 204, or model.padding=same"),
    (["model=unet", "model.padding=same", "dataset=fashion_scenes", "dataset.num_classes=300"],
     "dataset.num_classes=300: segmentation targets (a class for every pixel) name at most 255 classes"),
    (["model=torchvision", "model.arch=resnet18", "dataset=fashion_scenes"], "model=torchvision trains its network "
     "as a classifier (output (batch, classes)), and dataset=fashion_scenes holds segmentation and detection data"),
    (["model=foo"], "Unknown model 'foo'. Known: alexnet"),
    (["dataset=imagenet22k"], "Unknown dataset 'imagenet22k'. Known: cifar10"),
    (["optimizer=lion"], "Unknown optimizer 'lion'. Known: adagrad, adam"),
    (["scheduler=exp"], "Unknown scheduler 'exp'"),
    (["trainer=turbo"], "Unknown trainer 'turbo'"),
    (["optimizer.lr=abc"], "optimizer.lr: Value 'abc' of type 'str' could not be converted to Float"),
    (["optimizer.lrr=0.1"], "optimizer.lrr is not a cnnbench setting. Did you mean optimizer.lr?"),
    (["trainer.epoch=3"], "trainer.epoch is not a cnnbench setting. Did you mean trainer.epochs?"),
    (["sed=1"], "sed is not a cnnbench setting. Did you mean seed?"),
    (["+sed=1"], "sed is not a cnnbench setting. Did you mean seed?"),
    (["+experiment=nosuch"], "Unknown experiment 'nosuch'. Known: " + ", ".join(sorted(
        p.stem for p in (Path(__file__).parents[1] / "conf" / "experiment").glob("*.yaml")))
     + ". Choose one with +experiment=NAME"),
    (["dataset.batch_size=abc"], "dataset.batch_size: Value 'abc' of type 'str' could not be converted to Integer"),
    (["trainer.epochs=2.5"], "trainer.epochs: Value '2.5' of type 'float' could not be converted to Integer"),
    (["dataset.batch_size=0"], "dataset.batch_size=0 is not allowed: it must be a positive integer"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 is not allowed: it must be a positive number"),
    (["trainer.epochs=0"], "trainer.epochs=0 is not allowed"),
    (["model=alexnet", "model.dropout=1.5"], "model.dropout=1.5 is outside [0, 1)"),
    (["model=alexnet", "model.dropout=-0.1"], "model.dropout=-0.1 is outside [0, 1)"),
    (["model=resnet18", "model.dropout=0.5"], "model.dropout does not apply to resnet18"),
    (["dataset.num_workers=-1"], "dataset.num_workers=-1 is negative"),
    (["model.num_classes=5"], "model.num_classes=5 is fewer than the 10 classes of dataset=synthetic"),
    (["model.weights=nope.pth"], "model.weights=nope.pth: no such file"),
    (["trainer.label_smoothing=1.0"], "trainer.label_smoothing=1.0 is outside [0, 1)"),
    (["trainer.amp=fp8"], "trainer.amp: Invalid value 'fp8', expected one of ["),
    (["model=resnet18", "model.norm=batchy"], "expected one of [batch, layer, instance, group, none]"),
    (["model=resnet18", "dataset.image_size=16"], "too small for resnet18: it needs at least 32 px"),
    (["model=lenet5", "dataset.image_size=64"], "too large for lenet5, which takes 32 px"),
    (["model=resnet18", "model.classic=true"], "model.classic does not apply to resnet18"),
    (["optimizer=adam", "optimizer.momentum=0.9"], "optimizer.momentum does not apply to adam"),
    (["optimizer.nesterov=true", "optimizer.momentum=0"], "needs optimizer.momentum > 0"),
    (["trainer.checkpoint_every_steps=-1"], "trainer.checkpoint_every_steps=-1 is negative. Set it to 0 or more."),
    (["trainer.device=tpu"], "trainer.device='tpu' is not a device"),
    (["-m", "model=lenet5,nosuchnet"], "Unknown model 'nosuchnet'"),
    (["optimizer.lr=0.1=2"], "Cannot read the command line"),
    (["model=mobilenet_v1", "model.alpha=0"], "alpha (width multiplier) must be positive, got 0.0"),
    (["model.conv_impl=winograd"], "lenet5 cannot be built with"),
    (["-m", "--cfg=job", "seed=1,2"], "Only one of --run, --multirun, --cfg"),
    (["seed=-1"], "seed=-1 is outside what the generators take (0 to 2^32 - 1)"),
    (["optimizer=adam", "optimizer.eps=-1"], "optimizer.eps=-1.0 is not allowed for adam: it must be a small positive"),
    (["optimizer=sgd_plain", "optimizer.momentum=-1"], "optimizer.momentum=-1.0 is not allowed for sgd"),
    (["optimizer=rmsprop", "optimizer.alpha=2"], "optimizer.alpha=2.0 is not allowed for rmsprop: it must be in"),
    (["optimizer.lr=nan"], "optimizer.lr=nan is not allowed: it must be a positive number"),
    (["optimizer.lr=inf"], "optimizer.lr=inf is not allowed: it must be a positive number"),
    (["trainer.grad_clip=nan"], "trainer.grad_clip=nan is not a number. Set it to 0 or more."),
    (["scheduler=step", "scheduler.gamma=-1"], "scheduler.gamma=-1.0 is not allowed: it must be a positive factor"),
    (["dataset.native_size=0"], "dataset.native_size=0 is not allowed: it must be a positive integer (px)"),
    (["dataset.in_channels=0", "dataset.mean=[]", "dataset.std=[]"], "dataset.in_channels=0 is not allowed"),
    (["trainer.threads=100000"], "trainer.threads=100000 is far more than any machine's cores"),
    (["trainer.epochs=${oc.env:CNNBENCH_NO_SUCH_VARIABLE}"], "trainer.epochs cannot be resolved"),
    (["trainer.device=mps"], "trainer.device=mps but this machine has no usable Apple GPU"),
    (["hydra.run.dir="], "hydra.run.dir is empty (an unset shell variable?)"),
    (["-m", "seed=range(0,0)"], "seed=range(0,0) gives seed no value at all"),
    (["hydra/launcher=nosuch"], "Unknown hydra/launcher 'nosuch'. Known: basic, joblib"),
    (["hydra.nosuch=1"], "hydra.nosuch is not a Hydra setting"),
    (["=5"], "Overrides look like group=option or key=value"),
    (["scheduler.gamma=0.5"], "scheduler.gamma=0.5 does not apply to scheduler=onecycle: only scheduler=step read"),
    (["scheduler=cosine", "scheduler.pct_start=0.3"], "scheduler.pct_start=0.3 does not apply to scheduler=cosine"),
    (["dataset.num_workers=8"], "dataset.num_workers=8 does not apply to dataset=synthetic: only dataset=imagefolder"),
    (["dataset.decode=gpu"], "dataset.decode=gpu does not apply to dataset=synthetic: only dataset=imagefolder"),
    (["dataset.val_fraction=1"], "dataset.val_fraction=1.0 is outside [0, 1). Use a probability such as 0.5."),
    (["dataset.val_fraction=0.1"], "dataset.val_fraction=0.1 does not apply to dataset=synthetic: only "
                                   "dataset=imagefolder reads it"),
    (["model=resnet18", "dataset.batch_size=1"], "dataset.batch_size=1: resnet18 cannot train on one image at a time"),
    (["trainer.checkpoint=false", "trainer.checkpoint_every_steps=5"],
     "trainer.checkpoint_every_steps=5 saves checkpoints inside an epoch, but trainer.checkpoint=false writes none"),
    (["epochs=3"], "epochs is not a cnnbench setting. Did you mean trainer.epochs?"),
    (["lr=0.1"], "lr is not a cnnbench setting. Did you mean optimizer.lr?"),
    (["batch_size=64"], "batch_size is not a cnnbench setting. Did you mean dataset.batch_size?"),
    (["trainer.lr=0.1"], "trainer.lr is not a cnnbench setting. Did you mean optimizer.lr?"),
    (["alpha=0.5"], "alpha is not a cnnbench setting. Did you mean model.alpha or optimizer.alpha?"),
    (["model=ResNet50"], "Unknown model 'ResNet50' (did you mean model=resnet50?). Known: alexnet"),
    (["model=resnt18"], "Unknown model 'resnt18' (did you mean model=resnet18?)"),
    (["dataset=CIFAR10"], "Unknown dataset 'CIFAR10' (did you mean dataset=cifar10?)"),
    (["optimizer=Adam"], "Unknown optimizer 'Adam' (did you mean optimizer=adam?)"),
    (["scheduler=cosin"], "Unknown scheduler 'cosin' (did you mean scheduler=cosine?)"),
    (["trainer=fats"], "Unknown trainer 'fats' (did you mean trainer=fast?)"),
    (["+experiment=Zoo"], "Unknown experiment 'Zoo' (did you mean +experiment=zoo?)"),
    (["--model=resnet18"], "cnnbench train takes settings as KEY=VALUE, without dashes: --model=resnet18 is "
                           "model=resnet18. Run: cnnbench train model=resnet18 dataset=synthetic"),
    (["--epochs=3"], "--epochs=3 is trainer.epochs=3. Run: cnnbench train trainer.epochs=3 dataset=synthetic"),
    (["--multirn"], "--multirn is not an option of cnnbench train (did you mean --multirun?). Run: cnnbench train "
                    "--multirun dataset=synthetic"),
    (["--nosuch=1"], "--nosuch is not an option of cnnbench train (its options: -m/--multirun, --cfg job|hydra|all"),
    (["--cfg=jobs"], "argument --cfg/-c: invalid choice: 'jobs' (choose from 'job', 'hydra', 'all'). See `cnnbench "
                     "train --help`."),
]


@pytest.fixture
def existing_run(tmp_path, monkeypatch) -> Path:
    """An earlier run's directory, to prove bad input leaves it alone."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "outputs" / "earlier"
    (run / "checkpoints").mkdir(parents=True)
    (run / ".hydra").mkdir()
    (run / ".hydra" / "config.yaml").write_text("model:\n  name: lenet5\n")
    (run / "train.log").write_text("[2024-05-01 12:00:00][INFO] epoch 1/1 | train loss 2.30\n")
    (run / "results.json").write_text(json.dumps({"format": "cnnbench.results", "status": "completed"}))
    (run / "checkpoints" / "last.pt").write_bytes(b"weights")
    return run


def snapshot(root: Path) -> dict:
    return {p: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(root.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("args,message", BAD_TRAIN_INPUTS, ids=[" ".join(a) for a, _ in BAD_TRAIN_INPUTS])
def test_bad_train_input_is_refused_before_any_work(args, message, existing_run, capsys):
    outputs = existing_run.parent
    before = snapshot(outputs)
    flags = [a for a in args if a.startswith("-")]  # Hydra's flags come before the overrides
    code = cli.main(["train", *flags, *TINY, *[a for a in args if not a.startswith("-")]])
    err = capsys.readouterr().err
    assert code == 2
    assert message in " ".join(err.split()), err  # rich may wrap: compare with spaces normalised
    assert "Traceback" not in err
    assert snapshot(outputs) == before  # nothing new, nothing changed
    assert sorted(p.name for p in outputs.iterdir()) == ["earlier"]


@pytest.mark.parametrize("key", ["hydra.run.dir", "hydra.sweep.dir"])
def test_an_output_folder_name_too_long_for_a_file_system_is_refused(key, existing_run, capsys):
    before = snapshot(existing_run.parent)
    flags = ["-m"] if key == "hydra.sweep.dir" else []
    assert cli.main(["train", *flags, *TINY, f"{key}=outputs/{'x' * 300}/run"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"{key} names a folder of 300 bytes (xxxx" in err and "Traceback" not in err
    assert snapshot(existing_run.parent) == before


def test_resume_without_checkpoint_and_run_over_existing_run(existing_run, capsys):
    before = snapshot(existing_run.parent)
    assert cli.main(["train", *TINY, f"hydra.run.dir={existing_run}"]) == 2
    assert "already holds a run; cnnbench will not overwrite it" in " ".join(capsys.readouterr().err.split())
    empty = existing_run.parent / "empty"
    assert cli.main(["train", *TINY, "trainer.resume=true", f"hydra.run.dir={empty}"]) == 2
    assert "trainer.resume=true but" in " ".join(capsys.readouterr().err.split())
    assert snapshot(existing_run.parent) == before
    assert not empty.exists()


def test_a_refused_run_leaves_the_folder_the_user_had(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    missing = ["dataset=cifar10", f"dataset.root={tmp_path / 'no-data'}", "dataset.download=false"]
    mine, empty = tmp_path / "mine", tmp_path / "empty"
    mine.mkdir()
    empty.mkdir()
    (mine / "train.log").write_text("my notes\n")
    for folder in (mine, empty, tmp_path / "new" / "run"):  # refused in train(), after Hydra made its files
        assert cli.main(["train", *TINY, *missing, f"hydra.run.dir={folder}"]) == 2
        assert "not found" in capsys.readouterr().err
    assert sorted(os.listdir(mine)) == ["train.log"] and (mine / "train.log").read_text().startswith("my notes\n")
    assert empty.is_dir() and not any(empty.iterdir())
    assert not (tmp_path / "new").exists()  # made by the command, so taken back


def test_resuming_a_run_that_has_trained_all_its_epochs_is_refused_untouched(tmp_path, capsys):
    run_dir = tmp_path / "done"
    assert cli.main(["train", *TINY, f"hydra.run.dir={run_dir}"]) == 0
    before = snapshot(run_dir)
    for command in (["train", *TINY, "trainer.resume=true", f"hydra.run.dir={run_dir}"], ["resume", str(run_dir)]):
        assert cli.main(command) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert "has trained 1 epoch(s) and trainer.epochs=1: there is nothing left to resume" in err
        assert f"raise trainer.epochs: cnnbench resume {run_dir} trainer.epochs=2" in err and "Traceback" not in err
        assert snapshot(run_dir) == before


def test_a_finished_run_resumed_with_another_setting_is_refused_with_the_resume_command(tmp_path, capsys):
    run_dir = tmp_path / "done"
    assert cli.main(["train", *TINY, f"hydra.run.dir={run_dir}"]) == 0
    before = snapshot(run_dir)
    assert cli.main(["resume", str(run_dir), "trainer.epochs=2", "optimizer.lr=0.5"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "was saved by a run with another config (optimizer.lr differ)" in err
    assert f"Resume it with its own settings: cnnbench resume {run_dir} (only trainer.epochs" in err
    assert "Traceback" not in err and snapshot(run_dir) == before


def test_argparse_habits_are_answered_with_the_settings_they_mean(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for args, fix in [(["train", "--model", "resnet18", "--epochs", "3", "--lr", "0.1", "--batch-size", "64"],
                       "Run: cnnbench train model=resnet18 trainer.epochs=3 optimizer.lr=0.1 dataset.batch_size=64"),
                      (["train", "--batch_size", "64", "--compile", "dataset.mean=[0.5]"],
                       "Run: cnnbench train dataset.batch_size=64 trainer.compile=true 'dataset.mean=[0.5]'"),
                      (["train", "--resume", "outputs/run"], "to continue a run, use `cnnbench resume RUN_DIR`"),
                      (["profile", "--layer", "model=resnet50"],  # profile adds hydra.run.dir=... of its own
                       "--layer is not an option of cnnbench profile (did you mean --layers?). Run: cnnbench "
                       "profile --layers model=resnet50"),
                      (["profile", "model=resnet50", "--cfg"], "argument --cfg/-c: expected one argument")]:
        assert cli.main(args) == 2
        err = " ".join(capsys.readouterr().err.split())
        assert err.startswith("error: ") and fix in err and "Traceback" not in err, err
        assert "hydra.run.dir" not in err and "usage:" not in err  # nothing of cnnbench's own arguments
    assert not any(tmp_path.iterdir())


def test_a_second_run_into_a_folder_in_use_is_refused(tmp_path):
    run_dir = tmp_path / "busy"
    cli._hold(run_dir)  # as the first `cnnbench train` into it does, before it has written anything
    try:
        second = cnnbench("train", *TINY, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    finally:
        cli._release()
    assert second.returncode == 2 and "Another cnnbench process is training in" in " ".join(second.stderr.split())
    assert not run_dir.exists()


def test_the_sweep_flag_may_come_after_the_overrides(tmp_path):
    sweep = tmp_path / "sweep"
    assert cli.main(["train", *TINY, "-m", "seed=0,1", f"hydra.sweep.dir={sweep}"]) == 0
    assert sorted(p.name for p in sweep.iterdir() if p.is_dir()) == ["seed=0", "seed=1"]


# ---------------------------------------------------------------------------------------------
# Files that are missing, empty, broken, foreign or unsafe
# ---------------------------------------------------------------------------------------------

class RunsCode:
    """Pickles as a call to os.system: whoever unpickles it without weights_only=True creates
    `marker`. cnnbench must refuse it unread."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def png_folder(root: Path, train: int = 4, val: int = 2, classes=("cat", "dog")) -> Path:
    """An ImageFolder dataset of solid 8x8 PNGs: root/{train,val}/<class>/<i>.png."""
    for split, n in (("train", train), ("val", val)):
        for c, cls in enumerate(classes):
            (root / split / cls).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                Image.new("RGB", (8, 8), (255 * c, 0, 255 - 255 * c)).save(root / split / cls / f"{i}.png")
    return root


def half(path: Path) -> None:
    """Cut a file in half, as an interrupted copy would."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


IMAGEFOLDER = ["dataset=imagefolder", "dataset.image_size=32", "dataset.num_workers=0", "dataset.batch_size=2",
               "trainer=smoke"]


def _mnist_root_missing(tmp):
    return ["dataset=mnist", "dataset.root=nowhere", "dataset.download=false", "trainer=smoke"]


def _mnist_root_empty(tmp):
    (tmp / "empty").mkdir()
    return ["dataset=mnist", f"dataset.root={tmp / 'empty'}", "dataset.download=false", "trainer=smoke"]


def _cifar_root_missing(tmp):
    return ["dataset=cifar10", "dataset.root=nowhere", "dataset.download=false", "trainer=smoke"]


def _folder_root_missing(tmp):
    return [*IMAGEFOLDER, "dataset.root=nowhere"]


def _folder_root_empty(tmp):
    (tmp / "empty").mkdir()
    return [*IMAGEFOLDER, f"dataset.root={tmp / 'empty'}"]


def _folder_without_images(tmp):
    for split in ("train", "val"):
        (tmp / "imgs" / split / "cat").mkdir(parents=True)
    return [*IMAGEFOLDER, f"dataset.root={tmp / 'imgs'}"]


def _folder_classes_differ(tmp):
    png_folder(tmp / "imgs")
    for f in (tmp / "imgs" / "val" / "dog").iterdir():
        f.unlink()
    (tmp / "imgs" / "val" / "dog").rmdir()
    return [*IMAGEFOLDER, f"dataset.root={tmp / 'imgs'}"]


def _folder_of_four_channels(tmp):
    return [*IMAGEFOLDER, f"dataset.root={png_folder(tmp / 'imgs')}", "dataset.in_channels=4",
            "dataset.mean=[0.5,0.5,0.5,0.5]", "dataset.std=[0.5,0.5,0.5,0.5]"]


def _folder_smaller_than_a_batch(tmp):
    return [*IMAGEFOLDER, f"dataset.root={png_folder(tmp / 'imgs')}", "dataset.batch_size=64"]


def _folder_fewer_model_classes(tmp):
    return [*IMAGEFOLDER, f"dataset.root={png_folder(tmp / 'imgs')}", "model.num_classes=1"]


def _weights_of_another_architecture(tmp):
    torch.save(create_model("resnet20", num_classes=10, in_channels=1).state_dict(), tmp / "resnet20.pth")
    return [*TINY, f"model.weights={tmp / 'resnet20.pth'}"]


def _weights_holding_code(tmp):
    torch.save({"conv1.weight": RunsCode(tmp / "MARKER")}, tmp / "evil.pth")
    return [*TINY, f"model.weights={tmp / 'evil.pth'}"]


def _weights_truncated(tmp):
    torch.save(create_model("lenet5", num_classes=10, in_channels=1).state_dict(), tmp / "lenet5.pth")
    half(tmp / "lenet5.pth")
    return [*TINY, f"model.weights={tmp / 'lenet5.pth'}"]


def _weights_not_a_state_dict(tmp):
    torch.save([torch.zeros(3)], tmp / "list.pth")
    return [*TINY, f"model.weights={tmp / 'list.pth'}"]


BAD_FILES = [  # (make the files and return the arguments, the start of the message)
    (_mnist_root_missing, "Dataset 'mnist' not found, and download is off (dataset.download=false). "
                          "Looked in: nowhere/MNIST/raw"),
    (_mnist_root_empty, "Dataset 'mnist' not found, and download is off"),
    (_cifar_root_missing, "Dataset 'cifar10' not found, and torchvision could not read it"),
    (_folder_root_missing, "dataset=imagefolder needs nowhere/train, a folder with one sub-folder of images"),
    (_folder_root_empty, "/empty/train, a folder with one sub-folder of images per class, and it does not exist"),
    (_folder_without_images, "dataset=imagefolder could not read"),
    (_folder_classes_differ, "/imgs/val have different class folders: dog only in "),
    (_folder_of_four_channels, "dataset.in_channels=4: dataset=imagefolder reads images as grey (1) or RGB (3)"),
    (_folder_smaller_than_a_batch, "/imgs/train has 8 images, fewer than one batch of dataset.batch_size=64"),
    (_folder_fewer_model_classes, "model.num_classes=1 is fewer than the 2 classes of dataset=imagefolder"),
    (_weights_of_another_architecture,  # LeNet-5's tensors and the ResNet's, by name
     "resnet20.pth does not fit this model: missing 10 (classifier.1.bias, classifier.1.weight, classifier.3.bias, "
     "classifier.3.weight, features.0.bias, features.0.weight and 4 more); unexpected 116 (bn1.bias, "),
    (_weights_holding_code, "was refused: it is not a plain state dict of tensors; it holds pickled Python "
                            f"objects ({os.system.__module__}.system), which could run code"),
    (_weights_truncated, "cannot be read: it is truncated, corrupt or not a file torch.save wrote"),
    (_weights_not_a_state_dict, "holds no state dict"),
]


@pytest.mark.parametrize("make,message", BAD_FILES, ids=[f.__name__.strip("_") for f, _ in BAD_FILES])
def test_bad_files_are_refused_before_training(make, message, existing_run, capsys):
    tmp = existing_run.parent.parent
    args = make(tmp)
    before = snapshot(tmp)
    code = cli.main(["train", *args])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert message in err and "Traceback" not in err, err
    assert snapshot(tmp) == before  # no run record left, nothing changed
    assert not (tmp / "MARKER").exists()  # the pickled os.system call never ran


@pytest.fixture
def earlier_lenet5(tmp_path, monkeypatch) -> Path:
    """A finished LeNet-5 run's directory, as `cnnbench train` leaves it."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "outputs" / "earlier"
    (run / ".hydra").mkdir(parents=True)
    (run / ".hydra" / "config.yaml").write_text("model:\n  name: lenet5\n")
    (run / "train.log").write_text("[2024-05-01 12:00:00][INFO] epoch 1/1 | train loss 2.30\n")
    (run / "events.out.tfevents.1.host").write_bytes(b"events")
    track.write_results(run / "results.json", {"status": "completed", "model": "lenet5", "epochs": 1})
    model = create_model("lenet5", num_classes=10, in_channels=1)
    track.save_checkpoint(run / "checkpoints" / "last.pt", {"model": "lenet5", "weights": model.state_dict(),
                                                           "epoch": 1, "global_step": 4})
    return run


def _truncated_checkpoint(run):
    half(run / "checkpoints" / "last.pt")
    return []


def _checkpoint_of_another_model(run):
    return ["model=resnet18"]


def _checkpoint_holding_code(run):
    torch.save({"format_version": 1, "model": "lenet5", "weights": RunsCode(run.parent.parent / "MARKER")},
               run / "checkpoints" / "last.pt")
    return []


def _checkpoint_of_another_program(run):
    torch.save({"state_dict": {}}, run / "checkpoints" / "last.pt")
    return []


BAD_CHECKPOINTS = [
    (_truncated_checkpoint, "checkpoints/last.pt cannot be read: it is truncated, corrupt or not a file "
                            "torch.save wrote (RuntimeError: PytorchStreamReader failed reading zip archive"),
    (_checkpoint_of_another_model, "checkpoints/last.pt holds a 'lenet5' model, but this run is model=resnet18. "
                                   "Resume it with its own overrides: cnnbench resume "),
    (_checkpoint_holding_code, "checkpoints/last.pt was refused: it holds pickled Python objects "
                               f"({os.system.__module__}.system)"),
    (_checkpoint_of_another_program, "checkpoints/last.pt is not a cnnbench checkpoint of format version 1"),
]


def _hydra_files(root: Path) -> set:
    return {p for p in root.rglob("*") if ".hydra" in p.parts}


@pytest.mark.parametrize("spoil,message", BAD_CHECKPOINTS, ids=[f.__name__.strip("_") for f, _ in BAD_CHECKPOINTS])
def test_resume_from_a_bad_checkpoint_is_refused(spoil, message, earlier_lenet5, capsys):
    args = spoil(earlier_lenet5)
    before = snapshot(earlier_lenet5.parent)
    code = cli.main(["train", *TINY, *args, "trainer.resume=true", f"hydra.run.dir={earlier_lenet5}"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert message in err and "Traceback" not in err, err
    after = snapshot(earlier_lenet5.parent)
    hydra = _hydra_files(earlier_lenet5)  # see test_refused_resume_leaves_the_runs_hydra_config_alone
    assert {k: v for k, v in after.items() if k not in hydra} == {k: v for k, v in before.items() if k not in hydra}
    assert not (earlier_lenet5.parent.parent / "MARKER").exists()  # the pickled os.system call never ran


def _with_overrides(run: Path, *extra: str) -> Path:
    (run / ".hydra").mkdir(parents=True, exist_ok=True)
    (run / ".hydra" / "overrides.yaml").write_text("".join(f"- {o}\n" for o in [*TINY, *extra]))
    return run


def _no_folder_given(tmp):
    return []


def _a_folder_that_does_not_exist(tmp):
    return ["outputs/nope"]


def _a_misspelt_folder(tmp):
    return ["outputs/earlie"]


def _settings_before_the_folder(tmp):
    return ["trainer.epochs=3"]


def _the_checkpoint_file(tmp):
    return ["outputs/earlier/checkpoints/last.pt"]


def _an_empty_folder(tmp):
    (tmp / "empty").mkdir()
    return ["empty"]


def _a_run_without_checkpoints(tmp):
    run = _with_overrides(tmp / "nock", "trainer.checkpoint=false")
    track.write_results(run / "results.json", {"status": "completed", "config": {"trainer": {"checkpoint": False}}})
    return ["nock"]


def _a_sweep_folder(tmp):
    (tmp / "sweep").mkdir()
    (tmp / "sweep" / "multirun.yaml").write_text("hydra: {}\n")
    for job, status in (("seed=0", "completed"), ("seed=1", "interrupted")):
        (tmp / "sweep" / job / "checkpoints").mkdir(parents=True)
        (tmp / "sweep" / job / "checkpoints" / "last.pt").write_bytes(b"weights")
        track.write_results(tmp / "sweep" / job / "results.json", {"status": status})
    return ["sweep"]


def _a_run_without_its_overrides(tmp):
    return ["outputs/earlier"]


def _another_folder_for_the_run(tmp):
    _with_overrides(tmp / "outputs" / "earlier")
    return ["outputs/earlier", "hydra.run.dir=outputs/other"]


def _a_sweep_flag(tmp):
    return ["-m", "outputs/earlier"]


def _a_flag_for_a_setting(tmp):
    return ["outputs/earlier", "--epochs", "5"]


def _another_model(tmp):
    _with_overrides(tmp / "outputs" / "earlier")
    return ["outputs/earlier", "model=resnet18"]


BAD_RESUMES = [  # (make the files and return the arguments of `cnnbench resume`, the start of the message)
    (_no_folder_given, "cnnbench resume needs the folder of the run to continue: cnnbench resume RUN_DIR"),
    (_a_folder_that_does_not_exist, "outputs/nope does not exist. Give the folder of the run to continue"),
    (_a_misspelt_folder, "outputs/earlie does not exist (did you mean outputs/earlier?)"),
    (_settings_before_the_folder, "cnnbench resume takes the run's folder first, then settings: cnnbench resume "
                                  "RUN_DIR trainer.epochs=N"),
    (_the_checkpoint_file, "outputs/earlier/checkpoints/last.pt is a file; cnnbench resume takes the folder of the "
                           "run: cnnbench resume outputs/earlier"),
    (_an_empty_folder, "empty is not a run's folder: it holds no checkpoints/last.pt to continue from (a run with "
                       "trainer.checkpoint=false saves none, and cannot be resumed)"),
    (_a_run_without_checkpoints, "nock holds no checkpoints/last.pt, so there is nothing to resume from: it ran with "
                                 "trainer.checkpoint=false, which saves no checkpoint, and such a run cannot be "
                                 "resumed. Start it again: cnnbench train dataset=synthetic"),
    (_a_sweep_folder, "sweep is a sweep, not one run: resume one of its jobs (sweep/seed=1, sweep/seed=0), e.g. "
                      "cnnbench resume sweep/seed=1; or finish the whole sweep by running its command again with "
                      "hydra.sweep.dir=sweep"),
    (_a_run_without_its_overrides, "outputs/earlier has a checkpoint, but neither .hydra/overrides.yaml nor "
                                   "results.json says which overrides the run was started with"),
    (_another_folder_for_the_run, "hydra.run.dir=outputs/other: cnnbench resume continues the run in its own "
                                  "folder, outputs/earlier"),
    (_a_sweep_flag, "cnnbench resume continues one run, not a sweep"),
    (_a_flag_for_a_setting, "--epochs 5 is trainer.epochs=5. Run: cnnbench resume outputs/earlier trainer.epochs=5"),
    (_another_model, "checkpoints/last.pt holds a 'lenet5' model, but this run is model=resnet18"),
]


@pytest.mark.parametrize("make,message", BAD_RESUMES, ids=[f.__name__.strip("_") for f, _ in BAD_RESUMES])
def test_resume_refuses_what_it_cannot_continue(make, message, earlier_lenet5, capsys):
    tmp = earlier_lenet5.parent.parent
    args = make(tmp)
    before = snapshot(tmp)
    code = cli.main(["resume", *args])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert err.startswith("error: ") and message in err and "Traceback" not in err, err
    assert snapshot(tmp) == before


def test_refused_resume_leaves_the_runs_hydra_config_alone(earlier_lenet5, capsys):
    before = snapshot(earlier_lenet5)
    assert cli.main(["train", *TINY, "model=resnet18", "trainer.resume=true", f"hydra.run.dir={earlier_lenet5}"]) == 2
    assert snapshot(earlier_lenet5) == before


# ---------------------------------------------------------------------------------------------
# Unreadable images in an ImageFolder: skipped and counted, or a clear stop when none can be read
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("workers", [0, 1])
def test_unreadable_images_are_skipped_counted_and_logged(workers, tmp_path, monkeypatch):
    """ResNet-18's BatchNorm refuses a one-image batch in training (its last feature maps are 1x1 at
    32 px): with batches of 2, the run completes only if an unreadable file's batch is refilled to 2."""
    monkeypatch.chdir(tmp_path)
    root = png_folder(tmp_path / "imgs")
    half(root / "train" / "cat" / "0.png")  # truncated
    (root / "train" / "dog" / "1.png").write_bytes(b"not an image at all")  # garbage
    (root / "val" / "dog" / "0.png").write_bytes(b"")  # empty
    run_dir = tmp_path / "outputs" / "run"
    args = [*IMAGEFOLDER, "model=resnet18", f"dataset.root={root}", f"dataset.num_workers={workers}",
            f"hydra.run.dir={run_dir}", "trainer.max_steps_per_epoch=0"]
    assert cli.main(["train", *args]) == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["status"] == "completed" and results["val_images"] == 3  # 4 val images, 1 skipped
    assert results["train_images"] == 6  # 8 files, 2 unreadable: the images there are
    assert results["train_images_used"] == 8  # 4 whole batches of 2 each epoch, 2 places refilled
    log = (run_dir / "train.log").read_text()
    assert (f"2 unreadable image(s) skipped in {root / 'train'} this pass (each replaced by the next readable "
            f"image of the split, so that every batch keeps its size), e.g. {root / 'train' / 'cat' / '0.png'} "
            f"(") in log
    assert (f"1 unreadable image(s) skipped in {root / 'val'} this pass, e.g. {root / 'val' / 'dog' / '0.png'} "
            f"(UnidentifiedImageError: cannot identify image file)") in log


def test_a_folder_of_unreadable_images_stops_with_a_path(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    root = png_folder(tmp_path / "imgs")
    for f in (root / "train").rglob("*.png"):
        f.write_bytes(b"GIF89a garbage")
    run_dir = tmp_path / "outputs" / "run"
    assert cli.main(["train", *IMAGEFOLDER, f"dataset.root={root}", f"hydra.run.dir={run_dir}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"None of the 8 images read from {root / 'train'} could be decoded, e.g. {root / 'train'}/" in err
    assert "Traceback" not in err
    results = json.loads((run_dir / "results.json").read_text())  # the attempt is on record
    assert results["status"] == "failed" and "None of the 8 images" in results["error"]


# ---------------------------------------------------------------------------------------------
# cnnbench compare
# ---------------------------------------------------------------------------------------------

def write_results(folder: Path, **fields) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    record = {"format": "cnnbench.results", "format_version": 1, "status": "completed", "model": "lenet5",
              "top1_err": 0.1, "macs": 1, "params": 1, "history": [], "config": {}, **fields}
    (folder / "results.json").write_text(json.dumps(record))
    return folder


def _modes_are_ignored() -> bool:
    """True where a file's mode does not stop this process reading it (root, CAP_DAC_OVERRIDE)."""
    with tempfile.TemporaryDirectory() as d:
        f = Path(d, "locked")
        f.write_text("x")
        f.chmod(0)
        try:
            f.read_text()
            return True
        except PermissionError:
            return False


root_reads_anything = pytest.mark.skipif(_modes_are_ignored(), reason="this process reads files whatever their mode")


def _nowhere(tmp):
    return ["nope"]


def _empty_folder(tmp):
    (tmp / "empty").mkdir()
    return ["empty"]


def _empty_string(tmp):
    return [""]


def _only_a_future_format(tmp):
    write_results(tmp / "future" / "run", format_version=99)
    return ["future"]


def _a_dangling_link(tmp):
    (tmp / "moved" / "run").mkdir(parents=True)
    (tmp / "moved" / "run" / "results.json").symlink_to(tmp / "gone.json")
    return ["moved"]


def _an_unreadable_folder(tmp):
    write_results(tmp / "locked" / "run")
    (tmp / "locked").chmod(0)
    return ["locked"]


def _an_unreadable_file(tmp):
    (write_results(tmp / "runs" / "run") / "results.json").chmod(0)
    return ["runs"]


BAD_COMPARE = [
    (_nowhere, "'nope' does not exist. Point `cnnbench compare` at a folder that holds your runs"),
    (_empty_folder, "No usable results.json found below 'empty'. Each training run writes one"),
    (_empty_string, "An empty path was given to `cnnbench compare`"),
    (_only_a_future_format, "format_version 99 is newer than this cnnbench reads (1); upgrade cnnbench"),
    (_a_dangling_link, "moved/run/results.json: cannot be read (No such file or directory)"),
    pytest.param(_an_unreadable_folder, "'locked' cannot be read (Permission denied)", marks=root_reads_anything),
    pytest.param(_an_unreadable_file, "results.json: cannot be read (Permission denied)", marks=root_reads_anything),
]


def _unlock(tmp: Path) -> None:
    for p in (tmp / "locked", tmp / "runs" / "run" / "results.json"):
        if p.exists():
            p.chmod(0o755)


@pytest.mark.parametrize("make,message", BAD_COMPARE,
                         ids=[(c.values[0] if hasattr(c, "values") else c[0]).__name__.strip("_") for c in BAD_COMPARE])
def test_compare_refuses_what_it_cannot_read(make, message, existing_run, capsys):
    tmp = existing_run.parent.parent
    before = snapshot(existing_run.parent)
    args = make(tmp)
    try:
        code = cli.main(["compare", *args])
    finally:
        _unlock(tmp)
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2
    assert message in err and "Traceback" not in err, err
    assert not list(tmp.rglob("comparison.*")) and not list(tmp.rglob("report.*"))  # nothing written
    assert snapshot(existing_run.parent) == before


def test_compare_skips_a_future_format_beside_a_good_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(report, "render_plots", lambda rows: {name: b"png" for name, *_ in report.PLOTS})
    write_results(tmp_path / "runs" / "today")
    future = write_results(tmp_path / "runs" / "tomorrow", format_version=2)
    assert cli.main(["compare", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    err = " ".join(capsys.readouterr().err.split())
    assert f"warning: skipping {future / 'results.json'}: format_version 2 is newer than this cnnbench" in err
    assert (tmp_path / "report" / "comparison.csv").read_text().count("\n") == 2  # header + today


@root_reads_anything
def test_compare_skips_an_unreadable_folder_below_the_path(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(report, "render_plots", lambda rows: {name: b"png" for name, *_ in report.PLOTS})
    write_results(tmp_path / "runs" / "good")
    locked = write_results(tmp_path / "runs" / "locked")
    locked.chmod(0)
    try:
        assert cli.main(["compare", str(tmp_path / "runs"), "--out", str(tmp_path / "report")]) == 0
    finally:
        locked.chmod(0o755)
    err = " ".join(capsys.readouterr().err.split())
    assert f"warning: skipping {locked}: cannot be read (Permission denied)" in err

def test_unknown_command_and_bad_models_input(capsys):
    assert cli.main(["trian"]) == 2
    assert "did you mean train?" in capsys.readouterr().err
    assert cli.main(["models", "--input", "3x32"]) == 2
    assert "is not CxHxW" in capsys.readouterr().err
    assert cli.main(["models", "nosuch*"]) == 2
    assert "No model matches" in capsys.readouterr().err


def test_a_misspelt_flag_of_compare_or_models_gets_the_flag_it_is_close_to(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    for args, said in [(["compare", "--colums", "run,model"], "error: --colums is not an option of cnnbench "
                                                              "compare (did you mean --columns?). See `cnnbench "
                                                              "compare --help`."),
                       (["models", "--clases", "3"], "error: --clases is not an option of cnnbench models (did you "
                                                     "mean --classes?). See `cnnbench models --help`."),
                       (["models", "--input"], "error: argument --input: expected one argument. See `cnnbench "
                                               "models --help`.")]:
        assert cli.main(args) == 2
        captured = capsys.readouterr()
        assert " ".join(captured.err.split()) == said and "usage:" not in captured.out + captured.err
    assert not any(tmp_path.iterdir())


def test_every_row_of_the_catalogue_names_a_test_that_exists():
    """docs/errors.md: each row's test column names tests that exist, with the parameter ids they run."""
    import re

    tests = Path(__file__).parent
    ids = {" ".join(args) for args, _ in BAD_TRAIN_INPUTS}
    rows = [line for line in (tests.parent / "docs" / "errors.md").read_text().splitlines()
            if re.match(r"\| \d+b? \|", line)]
    assert len(rows) > 90
    for line in rows:
        for name in re.findall(r"`([^`]*test_[^`]*)`", line.rsplit(" | ", 2)[-1]):
            path, _, test = name.rpartition("::")
            test, _, param = test.partition("[")
            source = (tests.parent / path if path else tests / "test_errors.py").read_text()
            assert f"def {test}(" in source, line
            if test == "test_bad_train_input_is_refused_before_any_work":
                assert param[:-1] in ids, line  # the id without its closing bracket
