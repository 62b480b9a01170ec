"""Sweeps through Hydra's submitit launcher: submitit_local runs each job in a process of its own
(what a SLURM job does on its node), and hydra/launcher=slurm composes cnnbench's cluster settings."""

import os
import pickle
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf

from cnnbench.cli import CONF_DIR
from cnnbench.config import register_configs
from conftest import TINY, cnnbench, read_results


def hydra_node(*overrides: str):
    """The hydra node of the config `cnnbench train OVERRIDES` composes (launcher included)."""
    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides), return_hydra_config=True).hydra


def test_submitit_local_sweep_completes_each_job_in_its_own_process(tmp_path):
    sweep = tmp_path / "sweep"
    r = cnnbench("train", "-m", *TINY, "trainer.progress=false", "trainer.threads=1", "seed=0,1",
                 "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    jobs = [read_results(sweep / f"seed={s}") for s in (0, 1)]  # named by what differs, not `job`
    assert [j["status"] for j in jobs] == ["completed", "completed"]
    assert [j["seed"] for j in jobs] == [0, 1]
    # submitit ran them: one folder per job below the sweep, each with the job's pickled result
    results = sorted((sweep / ".submitit").glob("*/*_result.pkl"))
    assert len(results) == 2
    outcomes = [pickle.loads(p.read_bytes()) for p in results]
    assert [o[0] for o in outcomes] == ["success", "success"]
    assert {o[1].return_value["seed"] for o in outcomes} == {0, 1}


def test_slurm_launcher_composes_with_cnnbench_settings(tmp_path, monkeypatch):
    monkeypatch.delenv("CNNBENCH_SLURM_PARTITION", raising=False)
    monkeypatch.delenv("CNNBENCH_SLURM_ACCOUNT", raising=False)
    launcher = hydra_node("hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path}").launcher
    assert launcher._target_.endswith("SlurmLauncher")
    assert (launcher.partition, launcher.account) == ("gpu", None)
    assert (launcher.nodes, launcher.tasks_per_node, launcher.gpus_per_node) == (1, 1, 1)
    assert launcher.timeout_min == 720 and launcher.max_num_timeout == 3 and launcher.signal_delay_s == 120
    assert launcher.submitit_folder == f"{tmp_path}/.submitit/%j"  # inside the sweep folder

    monkeypatch.setenv("CNNBENCH_SLURM_PARTITION", "a100")
    launcher = hydra_node("hydra/launcher=slurm", "hydra.launcher.timeout_min=60").launcher
    assert (launcher.partition, launcher.timeout_min) == ("a100", 60)
    assert OmegaConf.to_container(launcher, resolve=True)["partition"] == "a100"


def _job_processes(sweep: Path):
    """PIDs of the submitit job processes running jobs of this sweep (what SLURM would signal)."""
    for d in Path("/proc").iterdir():
        try:
            cmd = (d / "cmdline").read_bytes()
        except (OSError, ValueError):
            continue
        if b"submitit.core._submit" in cmd and str(sweep).encode() in cmd:
            yield int(d.name)


def test_preemption_saves_then_submitit_requeues_and_the_job_resumes(tmp_path):
    """USR2 is what a SLURM job gets before its time limit or a pre-emption. The job saves its
    position, submitit requeues it (submitit_local restarts it, as SLURM would), and the requeued
    job resumes mid-epoch and completes with the same figures as an uninterrupted run."""
    sweep = tmp_path / "sweep"
    args = [a for a in TINY if not a.startswith(("trainer=", "dataset.train_size"))]
    args += ["dataset.train_size=2048", "trainer.device=cpu", "trainer.epochs=3", "trainer.threads=1",
             "trainer.progress=false", "trainer.checkpoint_every_steps=20", "trainer.max_eval_steps=2"]
    env = {**os.environ, "CNNBENCH_DATA": str(tmp_path / "data")}
    sweeping = subprocess.Popen([sys.executable, "-m", "cnnbench", "train", "-m", *args, "seed=0",
                                 "hydra/launcher=submitit_local", f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                                env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    job = sweep / "job"  # one job: nothing differs between jobs to name it by
    deadline = time.monotonic() + 120
    while not (job / "checkpoints" / "last.pt").exists():  # training has begun: its handler is in place
        if sweeping.poll() is not None or time.monotonic() > deadline:
            sweeping.kill()
            raise AssertionError("no checkpoint appeared: " + sweeping.communicate(timeout=60)[0])
        time.sleep(0.05)
    pids = list(_job_processes(sweep))
    assert len(pids) == 1, "the job ended before it could be signalled"
    os.kill(pids[0], signal.SIGUSR2)
    out, _ = sweeping.communicate(timeout=300)
    assert sweeping.returncode == 0, out
    log = "".join(p.read_text() for p in (sweep / ".submitit").glob("*/*_log.*"))
    assert "Caught signal SIGUSR2" in log and "this job is preempted" in log
    resumed = [line for line in (job / "train.log").read_text().splitlines() if "Resuming" in line]
    assert len(resumed) == 1 and "at epoch 1, batch " in resumed[0]  # mid-epoch, from the saved position
    results = read_results(job)
    assert results["status"] == "completed" and len(results["history"]) == 3

    plain = cnnbench("train", *args, "seed=0", f"hydra.run.dir={tmp_path / 'plain'}", cwd=tmp_path)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    reference = read_results(tmp_path / "plain")
    figures = ("epoch", "train_loss", "train_top1_err", "val_loss", "val_top1_err")
    # The same weights and counts; a loss summed over differently cut windows may differ in float32's last digit.
    assert [{k: h[k] for k in figures} for h in results["history"]] == \
        [{k: pytest.approx(h[k], rel=1e-6) for k in figures} for h in reference["history"]]


def test_slurm_launcher_without_sbatch_is_refused_before_anything_is_written(tmp_path):
    no_sbatch = os.pathsep.join(p for p in os.environ["PATH"].split(os.pathsep)
                                if not (Path(p) / "sbatch").exists())
    r = cnnbench("train", "-m", *TINY, "seed=0,1", "hydra/launcher=slurm", f"hydra.sweep.dir={tmp_path / 'sweep'}",
                 cwd=tmp_path, env={"PATH": no_sbatch})
    assert r.returncode == 2 and "Traceback" not in r.stdout + r.stderr
    assert "sbatch, which is not on this machine's PATH" in r.stderr and "hydra/launcher=joblib" in r.stderr
    assert not (tmp_path / "sweep").exists() and not list(tmp_path.glob(".cnnbench-failed-*"))
