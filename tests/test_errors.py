"""Bad input: a one-paragraph message naming the problem and the fix, exit status 2, no
traceback, and nothing an earlier run left is touched."""

import json
from pathlib import Path

import pytest

from conftest import TINY, cnnbench

from cnnbench import cli

BAD_TRAIN_INPUTS = [
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
    (["dataset.batch_size=0"], "dataset.batch_size=0 is not allowed: it must be a positive integer"),
    (["optimizer.lr=-0.1"], "optimizer.lr=-0.1 is not allowed: it must be a positive number"),
    (["trainer.epochs=0"], "trainer.epochs=0 is not allowed"),
    (["model=resnet18", "model.dropout=1.5"], "model.dropout does not apply to resnet18"),
    (["trainer.label_smoothing=1.0"], "trainer.label_smoothing=1.0 is outside [0, 1)"),
    (["trainer.amp=fp8"], "expected one of [off, bf16, fp16]"),
    (["model=resnet18", "model.norm=batchy"], "expected one of [batch, layer, instance, group, none]"),
    (["model=resnet18", "dataset.image_size=16"], "too small for resnet18: it needs at least 32 px"),
    (["model=lenet5", "dataset.image_size=64"], "too large for lenet5, which takes 32 px"),
    (["model=resnet18", "model.classic=true"], "model.classic does not apply to resnet18"),
    (["optimizer=adam", "optimizer.momentum=0.9"], "optimizer.momentum does not apply to adam"),
    (["optimizer.nesterov=true", "optimizer.momentum=0"], "needs optimizer.momentum > 0"),
    (["trainer.device=tpu"], "trainer.device='tpu' is not a device"),
    (["-m", "model=lenet5,nosuchnet"], "Unknown model 'nosuchnet'"),
    (["optimizer.lr=0.1=2"], "Cannot read the command line"),
    (["model=mobilenet_v1", "model.alpha=0"], "alpha (width multiplier) must be positive, got 0.0"),
    (["model.conv_impl=winograd"], "lenet5 cannot be built with"),
    (["-m", "--cfg=job", "seed=1,2"], "Only one of --run, --multirun, --cfg"),
]


@pytest.fixture
def existing_run(tmp_path, monkeypatch) -> Path:
    """An earlier run's directory, to prove bad input leaves it alone."""
    monkeypatch.chdir(tmp_path)
    run = tmp_path / "outputs" / "earlier"
    (run / "checkpoints").mkdir(parents=True)
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


def test_resume_without_checkpoint_and_run_over_existing_run(existing_run, capsys):
    assert cli.main(["train", *TINY, f"hydra.run.dir={existing_run}"]) == 2
    assert "already holds a run" in capsys.readouterr().err
    empty = existing_run.parent / "empty"
    assert cli.main(["train", *TINY, "trainer.resume=true", f"hydra.run.dir={empty}"]) == 2
    assert "trainer.resume=true but" in " ".join(capsys.readouterr().err.split())
    assert (existing_run / "checkpoints" / "last.pt").read_bytes() == b"weights"


@pytest.mark.parametrize("args,message", [
    (["dataset=mnist", "dataset.root=nowhere", "dataset.download=false"], "Dataset 'mnist' not found"),
    (["dataset=cifar10", "dataset.root=nowhere", "dataset.download=false"], "Dataset 'cifar10' not found"),
    (["dataset=imagefolder", "model=resnet18", "dataset.root=nowhere"], "needs nowhere/train"),
])
def test_missing_dataset_fails_before_training_without_traceback(tmp_path, args, message):
    r = cnnbench("train", *args, "trainer=smoke", cwd=tmp_path)
    assert r.returncode == 2
    assert message in " ".join(r.stderr.split()) and "Traceback" not in r.stderr
    if "mnist" in args[0]:
        assert "nowhere/MNIST/raw" in r.stderr and "dataset=synthetic" in r.stderr
    assert not (tmp_path / "outputs").exists() or not any((tmp_path / "outputs").rglob("results.json"))


def test_imagefolder_without_images(tmp_path):
    for split in ("train", "val"):
        (tmp_path / "imgs" / split / "cat").mkdir(parents=True)
    r = cnnbench("train", "dataset=imagefolder", "model=resnet18", f"dataset.root={tmp_path / 'imgs'}",
                 "trainer=smoke", cwd=tmp_path)
    assert r.returncode == 2 and "could not read" in r.stderr and "Traceback" not in r.stderr
    assert not list((tmp_path / "outputs").rglob("results.json")) if (tmp_path / "outputs").exists() else True


def test_unknown_command_and_bad_models_input(capsys):
    assert cli.main(["trian"]) == 2
    assert "did you mean train?" in capsys.readouterr().err
    assert cli.main(["models", "--input", "3x32"]) == 2
    assert "is not CxHxW" in capsys.readouterr().err
    assert cli.main(["models", "nosuch*"]) == 2
    assert "No model matches" in capsys.readouterr().err
