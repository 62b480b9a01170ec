"""Sweeps that survive real use: failed jobs recorded, re-runs skip or resume, joblib in parallel,
profiles in their own processes."""

import json
import os

import pytest
import torch

from cnnbench import cli, run
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
    big = torch.ones(64 * 2**20 // 4)  # 64 MiB, returned to the system when freed (mmap)
    high, _ = run.measure.peak_memory(cpu)
    del big
    run.measure.reset_peak_memory(cpu)
    low, _ = run.measure.peak_memory(cpu)
    assert high >= base + 60 * 2**20 and low < high - 32 * 2**20
