"""Sweeps through Hydra's submitit launcher: submitit_local runs each job in a process of its own
(what a SLURM job does on its node), and hydra/launcher=slurm composes cnnbench's cluster settings."""

import pickle

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
