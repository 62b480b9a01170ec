"""Sweeps that survive real use: failed jobs recorded, re-runs skip or resume, joblib in parallel,
profiles in their own processes, every job in a folder of its own."""

import hashlib
import json
import mmap
import os
import re

import pytest
import torch

from cnnbench import cli, run
from cnnbench.errors import CnnbenchError
from conftest import TINY, cnnbench, compose_cfg, read_results


def test_failed_job_is_recorded_and_a_rerun_skips_what_completed(tmp_path):
    sweep = tmp_path / "sweep"
    tiny = [a for a in TINY if not a.startswith("dataset=")]
    args = ["train", "-m", *tiny, "dataset=mnist,synthetic", "dataset.root=nowhere", "dataset.download=false",
            f"hydra.sweep.dir={sweep}"]
    r = cnnbench(*args, cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "1 job(s) of the sweep did not complete" in " ".join(r.stderr.split())
    failed, done = read_results(sweep / "dataset=mnist"), read_results(sweep / "dataset=synthetic")
    assert failed["status"] == "failed" and "Dataset 'mnist' not found" in failed["error"]
    assert failed["model"] == "lenet5" and failed["config"]["dataset"]["name"] == "mnist"
    assert done["status"] == "completed"

    stamp = (sweep / "dataset=synthetic" / "results.json").stat().st_mtime_ns
    again = cnnbench(*args, cwd=tmp_path)
    assert again.returncode == 1
    assert "Skipping dataset=synthetic: already completed" in again.stdout
    assert (sweep / "dataset=synthetic" / "results.json").stat().st_mtime_ns == stamp  # untouched
    # the failed job ran again; its first attempt is kept, not overwritten
    assert read_results(sweep / "dataset=mnist" / "attempts" / "1")["error"] == failed["error"]
    assert read_results(sweep / "dataset=mnist")["status"] == "failed"
    table = cnnbench("compare", str(sweep), "--no-group", cwd=tmp_path)  # attempts/ are not rows
    assert table.returncode == 0 and table.stdout.count("dataset=mnist") == 1, table.stdout
    report = (sweep / "report.md").read_text()  # the report shows the failure, with its reason
    assert "failed" in report and "Dataset 'mnist' not found" in report

    # trainer.skip_completed=false, or another config in the same folders: refused before Hydra
    # writes anything, so no record, no job's .hydra/ and not the sweep's multirun.yaml is touched
    before = {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()}
    strict = cnnbench(*args, "trainer.skip_completed=false", cwd=tmp_path)
    assert strict.returncode == 2 and "already holds a run, completed" in " ".join(strict.stderr.split())
    other = cnnbench(*args, "optimizer.lr=0.05", cwd=tmp_path)
    assert other.returncode == 2 and "different config (optimizer.lr differ)" in " ".join(other.stderr.split())
    assert {p: p.read_bytes() for p in sweep.rglob("*") if p.is_file()} == before


def test_an_interrupted_job_resumes_when_the_sweep_runs_again(tmp_path, monkeypatch):
    sweep = tmp_path / "sweep"
    overrides = [*TINY, "trainer.epochs=2", "trainer.progress=false", "seed=1"]
    monkeypatch.setenv("CNNBENCH_DATA", str(tmp_path / "data"))
    real_epoch = run.engine.train_one_epoch
    calls = []

    def stop_in_second_epoch(*args, **kwargs):  # Ctrl-C during epoch 2
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(run.engine, "train_one_epoch", stop_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run.train(compose_cfg(*overrides), sweep / "seed=1")
    monkeypatch.setattr(run.engine, "train_one_epoch", real_epoch)
    assert read_results(sweep / "seed=1")["status"] == "interrupted"

    r = cnnbench("train", "-m", *TINY, "trainer.epochs=2", "trainer.progress=false", "seed=0,1",
                 f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "seed=1 was interrupted after 1 complete epoch(s): resuming it from last.pt" in r.stdout
    resumed, fresh = read_results(sweep / "seed=1"), read_results(sweep / "seed=0")
    assert resumed["status"] == fresh["status"] == "completed"
    assert [h["epoch"] for h in resumed["history"]] == [1, 2]


def test_joblib_runs_the_jobs_in_parallel_processes(tmp_path):
    sweep = tmp_path / "sweep"
    r = cnnbench("train", "-m", *TINY, "trainer.progress=false", "seed=0,1", "hydra/launcher=joblib",
                 "hydra.launcher.n_jobs=2", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    jobs = [read_results(sweep / f"seed={s}") for s in (0, 1)]
    assert [j["status"] for j in jobs] == ["completed", "completed"]
    assert [j["seed"] for j in jobs] == [0, 1]
    cores = os.cpu_count()
    assert all(j["config"]["trainer"]["threads"] == max(1, cores // 2) for j in jobs)  # cores shared out


def test_each_worker_claims_its_own_gpu(tmp_path):
    try:
        first = cli.claim_gpu(str(tmp_path), ["3", "5"], job_num=0)
        second = cli.claim_gpu(str(tmp_path), ["3", "5"], job_num=1)  # slot 0 is held: takes slot 1
    finally:
        for f in cli._claimed_gpu:
            f.close()
        cli._claimed_gpu.clear()
    assert (first, second) == ("3", "5")


def test_profile_sweep_measures_each_job_in_its_own_process(tmp_path):
    sweep = tmp_path / "sweep"
    r = cnnbench("profile", "-m", "model=lenet5,resnet20", "dataset=synthetic", "profile.batch_sizes=[2]",
                 "profile.warmup=1", "profile.repeats=1", "profile.train_step=false",
                 f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    found = {p: json.loads((sweep / p / "profile.json").read_text()) for p in ("model=lenet5", "model=resnet20")}
    pids = {f["pid"] for f in found.values()}
    assert len(pids) == 2 and os.getpid() not in pids
    assert found["model=resnet20"]["params"] == 269_722  # 3 input channels, 10 classes
    assert all(f["peak_memory_kind"] == "process_peak_rss" and f["peak_memory_bytes"] > 0 for f in found.values())
    assert "Profiling resnet20" in r.stdout  # the child's log reaches the terminal


def test_peak_memory_restarts_for_each_job():
    cpu = torch.device("cpu")
    run.measure.reset_peak_memory(cpu)  # forget what earlier tests in this process used
    base, _ = run.measure.peak_memory(cpu)
    # 64 MiB of fresh pages, given back on close: an anonymous mapping, not the allocator's (glibc
    # may serve even a tensor this large from memory it already holds, so that the RSS does not grow)
    big = mmap.mmap(-1, 64 * 2**20)
    big.write(b"x" * len(big))  # touch every page
    high, _ = run.measure.peak_memory(cpu)
    big.close()
    run.measure.reset_peak_memory(cpu)
    low, _ = run.measure.peak_memory(cpu)
    assert high >= base + 60 * 2**20 and low < high - 32 * 2**20


def test_job_folder_names_are_valid_distinct_and_the_same_every_time():
    def name(*overrides, swept="dataset.root"):
        return cli._sweep_subdir(["optimizer.lr=0.1", *overrides], swept=swept)  # lr: the same in every job

    assert name("seed=1", "model=resnet18", swept="model,seed") == "model=resnet18,seed=1"  # as before
    # percent-encoded, so data/x meets neither data_x nor a literal %2F
    assert [name(f"dataset.root={r}") for r in ("data/x", "data_x", "data%2Fx")] == [
        "dataset.root=data%2Fx", "dataset.root=data_x", "dataset.root=data%252Fx"]
    assert name("trainer.device=cuda\\:0", swept="trainer.device") == "trainer.device=cuda%5C%3A0"  # Hydra's \:
    assert name('dataset.root="a b"') == "dataset.root=%22a b%22"

    def long(root):  # over 255 bytes: cut to fit, ended with a hash of the whole override
        made = name(f"dataset.root={root}")
        assert len(made.encode()) <= 255 and "/" not in made
        assert made.endswith("~" + hashlib.sha256(f"dataset.root={root}".encode()).hexdigest()[:8])
        return made

    cuts = [long("/" * 300 + tail) for tail in ("a", "b", "xa", "xxa")]  # the cut falls in each place of %2F
    assert len(set(cuts)) == 4 and all(c.startswith("dataset.root=%2F%2F") for c in cuts)
    assert all(c.rsplit("~", 1)[0].endswith("%2F") for c in cuts)  # no half escape before the hash
    # 255 - 9 (the hash) - 13 (dataset.root=) leaves 233 bytes: 116 é of 2 bytes, not half of a 117th
    assert long("é" * 200).rsplit("~", 1)[0] == "dataset.root=" + "é" * 116


def _image_folder(root):
    from PIL import Image

    for split in ("train", "val"):
        for i in range(4):
            (root / split / f"c{i % 2}").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(root / split / f"c{i % 2}" / f"{i}.png")


def test_every_job_of_a_sweep_gets_a_folder_of_its_own(tmp_path):
    """data/x and data_x once shared a folder (/ became _); a name over 255 bytes ended the sweep
    with OSError. Now: four jobs, four folders, the same ones when the sweep runs again."""
    roots = ["data/x", "data_x", "d" * 200 + "/" + "1" * 100, "d" * 200 + "/" + "2" * 100]
    for root in roots:
        _image_folder(tmp_path / root)
    sweep = tmp_path / "sweep"
    args = ["train", "-m", "dataset=imagefolder", "trainer=smoke", "dataset.image_size=32", "dataset.batch_size=2",
            "dataset.num_workers=0", "dataset.mean=[0.5,0.5,0.5]", "dataset.std=[0.25,0.25,0.25]",
            "trainer.progress=false", f"dataset.root={','.join(roots)}", f"hydra.sweep.dir={sweep}"]
    r = cnnbench(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    folders = sorted(p for p in sweep.iterdir() if p.is_dir())
    assert len(folders) == 4 and all(len(p.name.encode()) <= 255 for p in folders)
    records = {read_results(p)["config"]["dataset"]["root"]: p for p in folders}
    assert sorted(records) == sorted(roots)  # each job in its own folder, its full value in the record
    assert records["data/x"].name == "dataset.root=data%2Fx" and records["data_x"].name == "dataset.root=data_x"
    assert all(read_results(p)["status"] == "completed" for p in folders)
    cut = records[roots[2]]
    assert f"dataset.root={roots[2]}" in (cut / ".hydra" / "overrides.yaml").read_text()  # the full override
    assert f"dataset.root={roots[2]}" in read_results(cut)["overrides"]  # and in the record

    again = cnnbench(*args, cwd=tmp_path)  # the same names again, so the jobs are found and skipped
    assert again.returncode == 0, again.stderr
    assert sorted(p for p in sweep.iterdir() if p.is_dir()) == folders
    assert again.stdout.count("already completed") == 4


@pytest.mark.parametrize("overrides", [
    ["seed=1,1"],
    ["seed=0,1", "hydra.sweep.subdir=same"],
    ["seed=0,1", "hydra.sweep.subdir=" + "x" * 300],
], ids=["a value given twice", "a subdir pattern that names no difference", "a subdir name too long"])
def test_jobs_without_a_folder_of_their_own_are_refused_before_anything_is_written(tmp_path, overrides):
    sweep = tmp_path / "sweep"
    r = cnnbench("train", "-m", *TINY, *overrides, f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    said = " ".join(r.stderr.split())
    assert r.returncode == 2 and "Traceback" not in r.stderr and said.startswith("error:"), r.stderr
    assert ("would both write into" in said) != ("a file name takes at most 255" in said)
    assert "#0 (seed=" in said and not sweep.exists()


def test_a_sweep_with_jobs_that_can_never_run_stops_before_the_first(tmp_path, monkeypatch, capsys):
    """model.stem=small for three models of which two have no stem: before, the third trained and the
    sweep exited 1; now nothing starts, and the message names both jobs and per_model."""
    monkeypatch.chdir(tmp_path)
    code = cli.main(["train", "-m", *TINY, "model=lenet5,resnet20,mobilenet_v2", "model.stem=small",
                     f"hydra.sweep.dir={tmp_path / 'sweep'}"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and "Traceback" not in err
    assert "2 of the sweep's 3 jobs can never run, so none was started: model=lenet5: model.stem does not apply to " \
           "lenet5" in err and "model=resnet20: model.stem does not apply to resnet20" in err
    assert "write +per_model.any.stem=... instead of model.stem=..." in err
    assert not (tmp_path / "sweep").exists()


def test_per_model_gives_an_option_only_to_the_models_that_have_it(tmp_path):
    def stem(*overrides):
        return run.resolve(compose_cfg(*TINY, *overrides)).model.stem

    assert stem("model=resnet18", "+per_model.any.stem=small") == "small"
    assert stem("model=resnet18", "+per_model.mobilenet_v2.stem=small") == "imagenet"  # another model's
    assert stem("model=lenet5", "+per_model.any.stem=small") is None  # LeNet-5 has no stem: runs without
    for overrides, message in [(["+per_model.lenet5.stem=small"], "per_model.lenet5.stem does not apply to lenet5"),
                               (["+per_model.resnt18.stem=small"], "no model 'resnt18' (did you mean resnet18?)"),
                               (["model=resnet18", "+per_model.any.stem=tiny"], "per_model.any.stem=tiny: "),
                               # another model's entry is checked too: nothing is recorded unchecked
                               (["+per_model.resnet20.stem=small"], "per_model.resnet20.stem does not apply to "
                                                                    "resnet20: its options are freeze, norm, weights"),
                               (["+per_model.any.stemm=small"], "per_model.any.stemm: no model has an option stemm")]:
        with pytest.raises(CnnbenchError, match=re.escape(message)):
            run.validate(compose_cfg(*TINY, *overrides))

    sweep = tmp_path / "sweep"
    args = ["train", "-m", *TINY, "model=lenet5,resnet18", "+per_model.any.stem=small", "dataset.image_size=32",
            f"hydra.sweep.dir={sweep}"]
    r = cnnbench(*args, cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    records = {p.name: read_results(p) for p in sweep.iterdir() if p.is_dir()}
    assert {name: rec["config"]["model"].get("stem") for name, rec in records.items()} == \
        {"model=lenet5": None, "model=resnet18": "small"}
    again = cnnbench(*args, cwd=tmp_path)  # the same sweep: each job matches its run and is skipped
    assert again.returncode == 0 and again.stdout.count("already completed") == 2, again.stdout + again.stderr
