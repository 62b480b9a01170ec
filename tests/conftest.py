"""Shared test helpers: compose the real config, run the real command.

Tests run on the CPU with dataset=synthetic and tiny sizes unless they say otherwise; every
output goes below pytest's tmp_path."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cnnbench.cli import compose_config

FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

# A run that takes a few seconds on 2 CPU cores: 4 steps of 16 synthetic 32 px images.
TINY = ["dataset=synthetic", "trainer=smoke", "dataset.batch_size=16", "dataset.train_size=64",
        "dataset.val_size=32", "dataset.in_channels=1", "dataset.mean=[0.5]", "dataset.std=[0.25]"]


def compose_cfg(*overrides: str):
    """The config `cnnbench train OVERRIDES` would run, composed by Hydra from conf/."""
    return compose_config(overrides)


def cnnbench(*args: str, cwd: Path, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    """Run `python -m cnnbench ARGS` as a user would, in a fresh process."""
    full_env = {**os.environ, "CNNBENCH_DATA": str(cwd / "data"), **(env or {})}
    full_env.pop("HYDRA_FULL_ERROR", None)
    full_env.pop("CNNBENCH_DEBUG", None)
    return subprocess.run([sys.executable, "-m", "cnnbench", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True, timeout=timeout)


def read_results(run_dir: Path) -> dict:
    return json.loads((run_dir / "results.json").read_text())


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    """One finished tiny run (LeNet-5, 2 epochs), shared by the tests that only read it."""
    cwd = tmp_path_factory.mktemp("tiny")
    run_dir = cwd / "outputs" / "tiny"
    r = cnnbench("train", *TINY, "trainer.epochs=2", f"hydra.run.dir={run_dir}", cwd=cwd)
    assert r.returncode == 0, r.stdout + r.stderr
    return run_dir


@pytest.fixture
def one_thread():
    """One torch thread for the test: on tiny tensors, handing work between threads costs more than
    doing it. Files whose every test is such use it with `pytestmark = pytest.mark.usefixtures(...)`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def on_meta(name: str, **options) -> torch.nn.Module:
    """The registered model `name`, built on the meta device: shapes only, no memory."""
    from cnnbench.models import create_model

    with torch.device("meta"):
        return create_model(name, **options)
