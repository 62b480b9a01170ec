"""The other commands, as a user types them: models, compare, resume, --help, --version, python -m
cnnbench."""

import csv
from pathlib import Path

import torch
import yaml

from conftest import TINY, cnnbench, read_results

from cnnbench import __version__, cli


def test_models_lists_the_zoo_with_counts(tmp_path):
    r = cnnbench("models", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for text in ("lenet5", "61,706", "resnet50", "25,557,032", "4.089", "He et al."):
        assert text in r.stdout
    small = cnnbench("models", "resnet18", "--input", "1x32x32", "--classes", "10", cwd=tmp_path)
    assert small.returncode == 0 and "1x32x32" in small.stdout and "resnet50" not in small.stdout
    assert "11,175,370" in small.stdout  # 1 input channel, 10 classes
    # the detectors: R-CNN at exactly its 2,000 proposals (2,000 x AlexNet's 1.135 GMACs at 227 px);
    # YOLO's grid following the input (64 px: 4 x 4, 129,235,488 parameters at 20 classes)
    for text in ("rcnn", "58,711,529", "2263.180 *", "yolo_v1", "271,703,550", "20.285",
                 "R-CNN and Fast R-CNN are counted at exactly their model.proposals (2,000)"):
        assert text in " ".join(r.stdout.split()), text
    yolo = cnnbench("models", "yolo_v1", "--input", "3x64x64", cwd=tmp_path)
    assert yolo.returncode == 0 and "129,235,488" in yolo.stdout and "1.142" in yolo.stdout


def test_compare_two_runs(tmp_path, tiny_run):
    other = tmp_path / "outputs" / "other"
    r = cnnbench("train", *TINY, "model=resnet18", "model.stem=small", "dataset.image_size=8",
                 "optimizer=adam", "trainer.checkpoint=false", f"hydra.run.dir={other}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    # tiny_run lives elsewhere: compare both folders, write the tables to a third
    out = tmp_path / "report"
    c = cnnbench("compare", str(tmp_path / "outputs"), str(tiny_run), "--out", str(out), cwd=tmp_path)
    assert c.returncode == 0, c.stderr
    rows = list(csv.DictReader((out / "comparison.csv").open()))
    assert sorted(r["model"] for r in rows) == ["lenet5", "resnet18"]
    errs = [float(r["top1_err"]) for r in rows]
    assert errs == sorted(errs)
    assert {r["optimizer"] for r in rows} == {"sgd", "adam"}
    assert "| lenet5 |" in (out / "comparison.md").read_text()
    assert "resnet18" in c.stdout and "lenet5" in c.stdout
    assert read_results(other)["params"] == int(next(r for r in rows if r["model"] == "resnet18")["params"])


def test_compare_with_nothing_to_compare(tmp_path):
    (tmp_path / "empty").mkdir()
    r = cnnbench("compare", "empty", cwd=tmp_path)
    assert r.returncode == 2 and "No usable results.json" in r.stderr and "Traceback" not in r.stderr


def test_top_level_help_and_version(tmp_path):
    r = cnnbench("--help", cwd=tmp_path)
    assert r.returncode == 0 and all(c in r.stdout for c in ("train", "resume", "profile", "compare", "models"))
    v = cnnbench("--version", cwd=tmp_path)
    assert v.returncode == 0 and v.stdout.startswith(f"cnnbench {__version__} (torch {torch.__version__}, ")
    assert ("CUDA" if torch.version.cuda else "CPU only") in v.stdout


def test_each_command_has_its_own_help_and_version(capsys):
    assert cli.main(["train", "--version"]) == 0  # not Hydra's
    assert capsys.readouterr().out.startswith(f"cnnbench {__version__} (torch {torch.__version__}, ")
    assert cli.main(["profile", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("cnnbench profile:") and "Usage: cnnbench profile [--layers]" in out
    assert "profile.batch_sizes=[1,32]" in out and "cnnbench train:" not in out
    assert cli.main(["resume", "--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: cnnbench resume RUN_DIR [KEY=VALUE ...]") and "trainer.epochs=N" in out


def test_resume_continues_a_run_from_another_folder_with_its_own_overrides(tmp_path, monkeypatch, capsys):
    """`cnnbench resume RUN_DIR trainer.epochs=2` = the run's own overrides (model=resnet20 among them)
    with trainer.epochs replaced, run in the folder the run was started from."""
    started, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    started.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(started)
    assert cli.main(["train", *TINY, "model=resnet20", "trainer.epochs=1", "hydra.run.dir=outputs/run"]) == 0
    run_dir = started / "outputs" / "run"
    monkeypatch.chdir(elsewhere)
    assert cli.main(["resume", str(run_dir), "trainer.epochs=2"]) == 0
    assert f"Resuming {run_dir}: cnnbench train dataset=synthetic" in capsys.readouterr().out
    assert Path.cwd() == elsewhere and not any(elsewhere.iterdir())  # back, and nothing written here
    r = read_results(run_dir)
    assert (r["status"], r["epochs"], r["model"], len(r["history"])) == ("completed", 2, "resnet20", 2)
    assert "model=resnet20" in r["overrides"] and "trainer.epochs=2" in r["overrides"]
    assert "trainer.epochs=1" not in r["overrides"]
    hydra = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text())["hydra"]
    assert hydra["runtime"]["cwd"] == str(started)  # relative paths meant what they meant at the start


def test_resume_continues_one_job_of_an_experiment_sweep(tmp_path, monkeypatch, capsys):
    """A sweep job's .hydra/overrides.yaml holds the job's own overrides, +experiment=optimizers
    among them, whose hydra.mode is MULTIRUN: resume runs that one job, in its folder."""
    monkeypatch.chdir(tmp_path)
    assert cli.main(["train", "+experiment=optimizers", "optimizer=adam", *TINY, "trainer.epochs=1",
                     "hydra.sweep.dir=sweep"]) == 0
    assert cli.main(["resume", "sweep"]) == 2  # the sweep's folder: its jobs are named
    assert "e.g. cnnbench resume sweep/optimizer=adam;" in " ".join(capsys.readouterr().err.split())
    assert cli.main(["resume", "sweep/optimizer=adam", "trainer.epochs=2"]) == 0
    r = read_results(tmp_path / "sweep" / "optimizer=adam")
    assert (r["status"], r["epochs"], r["optimizer"], r["model"]) == ("completed", 2, "adam", "lenet5")
    assert sorted(p.name for p in (tmp_path / "sweep").iterdir()) == ["multirun.yaml", "optimizer=adam"]


def test_every_package_is_installed_by_a_plain_pip_install():
    """pyproject's explicit package list: a sub-package missing from it (cnnbench/tasks/ once was)
    works from a checkout and an editable install, and is absent from `pip install .`."""
    import tomllib

    root = Path(__file__).resolve().parents[1]
    listed = set(tomllib.loads((root / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {".".join(p.parent.relative_to(root).parts) for p in (root / "cnnbench").rglob("__init__.py")}
    assert found <= listed, sorted(found - listed)
