"""The speed settings on the CPU path (bf16 autocast, channels_last, torch.compile), and
data-parallel training with torchrun: two CPU processes over gloo."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from cnnbench import run, track
from cnnbench.models import create_model
from conftest import TINY, cnnbench, compose_cfg, read_results


def test_bf16_autocast_and_channels_last_on_the_cpu(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNBENCH_DATA", str(tmp_path / "data"))
    plain = run.train(compose_cfg(*TINY), tmp_path / "plain")
    fast = run.train(compose_cfg(*TINY, "trainer.amp=bf16", "trainer.channels_last=true"), tmp_path / "fast")
    assert (fast["amp"], fast["channels_last"]) == ("bf16", True)
    assert (plain["amp"], plain["channels_last"]) == ("off", False)  # auto on the CPU
    # Same data, same initial weights: bf16 rounding moves the loss a little, not a lot.
    assert abs(fast["history"][0]["train_loss"] - plain["history"][0]["train_loss"]) < 0.05
    weights = track.load_checkpoint(tmp_path / "fast" / "checkpoints" / "last.pt", "lenet5")["weights"]
    assert all(torch.isfinite(w).all() for w in weights.values())


def test_fp16_trains_with_a_gradient_scaler_that_the_checkpoint_keeps(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNBENCH_DATA", str(tmp_path / "data"))
    plain = run.train(compose_cfg(*TINY), tmp_path / "plain")
    half = run.train(compose_cfg(*TINY, "trainer.amp=fp16"), tmp_path / "half")
    assert half["amp"] == "fp16" and half["status"] == "completed"
    assert abs(half["history"][0]["train_loss"] - plain["history"][0]["train_loss"]) < 0.05
    state = track.load_checkpoint(tmp_path / "half" / "checkpoints" / "last.pt", "lenet5")
    assert state["scaler"]["scale"] > 0 and state["scaler"]["_growth_tracker"] == 4  # 4 steps, none overflowed
    resumed = run.train(compose_cfg(*TINY, "trainer.amp=fp16", "trainer.epochs=2", "trainer.resume=true"),
                        tmp_path / "half")
    assert resumed["status"] == "completed" and len(resumed["history"]) == 2
    again = track.load_checkpoint(tmp_path / "half" / "checkpoints" / "last.pt", "lenet5")
    assert again["scaler"]["_growth_tracker"] == 8  # the scaler's count went on from the checkpoint


def test_compile_reports_its_first_step_apart(tmp_path):
    if shutil.which(os.environ.get("CXX", "g++")) is None and shutil.which("c++") is None:
        raise AssertionError("torch.compile on the CPU needs a C++ compiler (apt-get install g++)")
    # A process of its own, so that what Inductor writes goes below the test's folder and is removed
    # with it: a 150 MB precompiled header among it (kept: the test takes 37 s with it, 48 s without)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    # reduce_overhead: CUDA graphs on a GPU; on the CPU, Inductor's kernels as in the default mode
    p = cnnbench("train", *TINY, "trainer=fast", "trainer.compile_mode=reduce_overhead", "trainer.device=cpu",
                 "trainer.epochs=1",
                 "trainer.max_steps_per_epoch=4", "trainer.max_eval_steps=2", "trainer.log_every_steps=2",
                 f"hydra.run.dir={tmp_path / 'compiled'}", cwd=tmp_path, env={"TMPDIR": str(tmp)})
    assert p.returncode == 0, p.stderr
    r = read_results(tmp_path / "compiled")
    assert r["status"] == "completed" and r["compile"] is True and r["channels_last"] is True
    assert r["compile_mode"] == "reduce_overhead"
    assert r["compile_s"] > 0 and r["compile_s"] < r["wall_time_s"]
    state = track.load_checkpoint(tmp_path / "compiled" / "checkpoints" / "last.pt", "lenet5")
    assert not any(k.startswith("_orig_mod") for k in state["weights"])  # the plain module's keys


@pytest.mark.parametrize("name", ["googlenet", "densenet121", "mobilenet_v2", "resnet18"])
def test_compile_traces_each_family_whole(name):
    """trainer.compile: one graph per model, no graph breaks (each break is a return to Python
    between compiled pieces, a cost that would blur what the architecture itself costs). The
    families whose forward has the most Python in it: auxiliary heads in training mode, dense
    concatenations, conditional residuals, the ResNet family's blocks. Tracing only, no compiling."""
    model = create_model(name, num_classes=10, in_channels=3).train()
    torch._dynamo.reset()
    traced = torch._dynamo.explain(model)(torch.randn(2, 3, 32, 32))
    assert traced.graph_break_count == 0 and traced.graph_count == 1, traced.break_reasons


def test_torchrun_two_cpu_processes(tmp_path):
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "CNNBENCH_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    args = [a for a in TINY if not a.startswith("dataset.train_size")] + ["dataset.train_size=128",
                                                                          "trainer.max_steps_per_epoch=0"]
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "cnnbench", "train", *args, "trainer.epochs=2", f"hydra.run.dir={run_dir}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["world_size"] == 2
    assert results["batch_size"] == 16 and results["global_batch_size"] == 32
    assert results["weights_in_sync"] is True  # every rank ended with rank 0's weights
    # 128 images, 2 processes x 16 per step: 4 steps an epoch, every image once
    assert results["train_images"] == results["train_images_used"] == 128 and results["history"][-1]["epoch"] == 2
    assert len(list(tmp_path.rglob("results.json"))) == 1  # only rank 0 writes
    assert {p.parent for p in tmp_path.rglob("events.out.tfevents.*")} == {run_dir}
    assert r.stdout.count("lenet5 on synthetic — completed") == 1  # and only rank 0 speaks
    last = track.load_checkpoint(run_dir / "checkpoints" / "last.pt", "lenet5")
    assert last["global_step"] == 8
    assert json.loads((run_dir / "results.json").read_text())["val_images"] == 32


def test_torchrun_shards_an_image_folder(tmp_path):
    from PIL import Image

    for split, n in (("train", 8), ("val", 3)):  # 16 training images, 6 validation images
        for c, cls in enumerate(("cat", "dog")):
            (tmp_path / "imgs" / split / cls).mkdir(parents=True)
            for i in range(n):
                image = Image.new("RGB", (8, 8), (255 * c, 40 * i, 255 - 255 * c))
                image.save(tmp_path / "imgs" / split / cls / f"{i}.png")
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "cnnbench", "train", "dataset=imagefolder", f"dataset.root={tmp_path / 'imgs'}",
                        "model=lenet5", "dataset.image_size=32", "dataset.num_workers=0", "dataset.batch_size=4",
                        "trainer=smoke", "trainer.max_steps_per_epoch=0", "trainer.max_eval_steps=0",
                        f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = read_results(run_dir)
    # 16 images, a global batch of 2 x 4: 2 steps; every validation image counted once
    assert results["status"] == "completed" and results["global_batch_size"] == 8
    assert results["train_images"] == results["train_images_used"] == 16
    assert results["val_images"] == 6 and results["weights_in_sync"]
    assert track.load_checkpoint(run_dir / "checkpoints" / "last.pt", "lenet5")["global_step"] == 2


@pytest.mark.parametrize("setting, says, fix", [
    ("trainer.sync_bn=true", "trainer.sync_bn=true needs CUDA", "Remove it"),
    ("trainer.compile_mode=reduce_overhead", "trainer.compile_mode=reduce_overhead captures CUDA graphs on GPUs",
     "Use trainer.compile_mode=default"),
], ids=["sync_bn_on_the_cpu", "cuda_graphs"])
def test_a_setting_torchrun_cannot_take_is_refused_with_the_fix(tmp_path, setting, says, fix):
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "CNNBENCH_DATA": str(tmp_path / "data"), "OMP_NUM_THREADS": "1"}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "cnnbench", "train", *TINY, "trainer.compile=true", setting, f"hydra.run.dir={run_dir}"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    lines = (r.stdout + r.stderr).splitlines()
    out = " ".join(" ".join(lines).split())
    assert r.returncode != 0 and out.count(f"error: {says}") == 2 and fix in out  # each process says it
    assert "failed (exitcode: 2)" in out  # the processes' own status, as torchrun reports it
    # torchrun reports a failed child with its own traceback (ChildFailedError); none comes from cnnbench
    assert not any(line.strip().startswith("File") and "/cnnbench/" in line for line in lines)
    assert not (run_dir / "results.json").exists()

