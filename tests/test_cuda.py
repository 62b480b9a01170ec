"""The paths that only a GPU takes: bf16, channels_last, compile and fused SGD on CUDA, the mfu
figure, fp16 with its scaler, the largest batch that fits, NCCL under torchrun, deterministic
kernels. Skipped without CUDA (CI has none); a session lent a GPU runs this file there
(benchmarks/device.md)."""

import json
import os
import subprocess
import sys

import pytest
import torch

from cnnbench import run, track
from conftest import compose_cfg, cnnbench, read_results

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

# 3-channel synthetic images, 48 training steps of 64: enough for steady-state timing
DATA = ["dataset=synthetic", "dataset.image_size=32", "dataset.batch_size=64", "dataset.train_size=3072",
        "dataset.val_size=256", "trainer.progress=false"]


def test_fast_preset_on_cuda_records_what_it_used_and_a_sane_mfu(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNBENCH_DATA", str(tmp_path / "data"))
    r = run.train(compose_cfg(*DATA, "model=resnet18", "model.stem=small", "trainer=fast", "trainer.epochs=2"),
                  tmp_path / "fast")
    assert r["status"] == "completed" and r["env"]["device"].startswith("cuda")
    assert (r["amp"], r["channels_last"], r["compile"]) == ("bf16", True, True)
    assert r["cudnn_benchmark"] is True and r["fused_optimizer"] is True
    assert r["compile_s"] > 0 and r["train_images_per_s"] > 0
    assert r["peak_memory_kind"] == "cuda_max_memory_allocated" and r["peak_memory_bytes"] > r["data_bytes"] > 0
    if r["mfu"] is not None:  # a GPU in measure.PEAK_TFLOPS
        assert 0 < r["mfu"] <= 1 and "dense bf16" in r["mfu_note"]
    else:
        assert "no peak FLOP/s known" in r["mfu_note"]
    assert 0 <= r["data_wait_s"] < r["wall_time_s"] and r["compute_s"] > 0
    state = track.load_checkpoint(tmp_path / "fast" / "checkpoints" / "last.pt", "resnet18")
    assert not any(k.startswith("_orig_mod") for k in state["weights"])


def test_fp16_on_cuda_with_a_gradient_scaler_resumes(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNBENCH_DATA", str(tmp_path / "data"))
    first = run.train(compose_cfg(*DATA, "model=resnet20", "trainer.amp=fp16", "trainer.epochs=1"), tmp_path / "half")
    assert first["amp"] == "fp16" and first["status"] == "completed"
    again = run.train(compose_cfg(*DATA, "model=resnet20", "trainer.amp=fp16", "trainer.epochs=2",
                                  "trainer.resume=true"), tmp_path / "half")
    assert again["status"] == "completed" and len(again["history"]) == 2
    scaler = track.load_checkpoint(tmp_path / "half" / "checkpoints" / "last.pt", "resnet20")["scaler"]
    assert scaler["scale"] > 0


def test_cuda_graphs_train_as_the_plain_compiled_model_does(tmp_path, monkeypatch):
    """compile_mode=reduce_overhead replays each step from CUDA graphs: the same training, so the
    same losses (float32, deterministic kernels; a constant lr, so that a 1-epoch run's schedule
    is a 2-epoch run's first half) and a checkpoint that resumes."""
    monkeypatch.setenv("CNNBENCH_DATA", str(tmp_path / "data"))
    common = ["dataset=synthetic", "dataset.in_channels=1", "dataset.mean=[0.5]", "dataset.std=[0.25]",
              "dataset.image_size=32", "dataset.batch_size=64", "dataset.train_size=1024", "dataset.val_size=128",
              "model=lenet5", "scheduler=none", "optimizer.lr=0.02", "trainer=fast", "trainer.amp=off",
              "trainer.deterministic=true", "trainer.log_every_steps=4", "trainer.progress=false"]
    plain = run.train(compose_cfg(*common, "trainer.epochs=2"), tmp_path / "plain")
    graphs = run.train(compose_cfg(*common, "trainer.epochs=1", "trainer.compile_mode=reduce_overhead"),
                       tmp_path / "graphs")
    assert graphs["compile_mode"] == "reduce_overhead" and plain["compile_mode"] == "default"
    resumed = run.train(compose_cfg(*common, "trainer.epochs=2", "trainer.compile_mode=reduce_overhead",
                                    "trainer.resume=true"), tmp_path / "graphs")
    assert resumed["status"] == "completed"
    for a, b in zip(plain["history"], resumed["history"]):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["val_loss"] == pytest.approx(b["val_loss"], rel=1e-4)


def test_synthetic_data_is_drawn_on_the_gpu_the_same_each_time():
    from cnnbench.data import _make_synthetic

    a, _ = _make_synthetic(10, 3, 64, 2048, 64, 0, torch.device("cuda"))
    b, _ = _make_synthetic(10, 3, 64, 2048, 64, 0, torch.device("cuda"))
    assert a[0].is_cuda and all(torch.equal(x, y) for x, y in zip(a, b))


def test_profile_finds_the_largest_training_batch(tmp_path):
    run_dir = tmp_path / "prof"
    r = cnnbench("profile", "model=resnet50", "dataset=synthetic", "dataset.image_size=224",
                 "profile.batch_sizes=[32,8]", "profile.find_max_batch=true", f"hydra.run.dir={run_dir}",
                 cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    p = json.loads((run_dir / "profile.json").read_text())
    # ResNet-50 at 224 px keeps ~100 MB of activations per image in fp32: hundreds fit, not 65,536.
    assert 32 <= p["max_train_batch"] < 65536
    assert p["peak_memory_kind"] == "cuda_max_memory_allocated"
    # The largest batch's peak: not the last batch size's (32 is profiled first), nor the probes'
    assert p["peak_memory_bytes"] == max(b["peak_memory_bytes"] for b in p["batches"])
    assert all(b["train_step_ms"] > 0 for b in p["batches"])


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="NCCL takes one GPU per process: needs two")
def test_torchrun_two_gpus_over_nccl(tmp_path):
    run_dir = tmp_path / "ddp"
    env = {**os.environ, "CNNBENCH_DATA": str(tmp_path / "data")}
    r = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                        "-m", "cnnbench", "train", *DATA, "model=resnet20", "trainer.epochs=1", "trainer.sync_bn=true",
                        f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=env, capture_output=True, text=True,
                       timeout=600)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    results = read_results(run_dir)
    assert results["status"] == "completed" and results["world_size"] == 2 and results["weights_in_sync"]
    assert results["global_batch_size"] == 128


def test_deterministic_on_cuda_warns_for_layers_without_a_deterministic_kernel(tmp_path):
    r = cnnbench("train", *DATA, "model=vgg11", "trainer.epochs=1",
                 "trainer.max_steps_per_epoch=4", "trainer.deterministic=true", f"hydra.run.dir={tmp_path / 'd'}",
                 cwd=tmp_path, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert read_results(tmp_path / "d")["status"] == "completed"
    assert read_results(tmp_path / "d")["cudnn_benchmark"] is False
    assert "does not have a deterministic implementation" in r.stderr  # VGG's 7x7 adaptive pooling, named
