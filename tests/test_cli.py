"""The other commands, as a user types them: models, compare, --help, python -m cnnbench."""

import csv

from conftest import TINY, cnnbench, read_results


def test_models_lists_the_zoo_with_counts(tmp_path):
    r = cnnbench("models", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    for text in ("lenet5", "61,706", "resnet50", "25,557,032", "4.089", "He et al."):
        assert text in r.stdout
    small = cnnbench("models", "resnet18", "--input", "1x32x32", "--classes", "10", cwd=tmp_path)
    assert small.returncode == 0 and "1x32x32" in small.stdout and "resnet50" not in small.stdout
    assert "11,175,370" in small.stdout  # 1 input channel, 10 classes


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
    assert r.returncode == 0 and "train" in r.stdout and "compare" in r.stdout and "models" in r.stdout
    v = cnnbench("--version", cwd=tmp_path)
    assert v.returncode == 0 and v.stdout.startswith("cnnbench ")
