"""Runs that survive interruption and divergence and lose nothing: signals, SIGKILL at random
steps followed by a resume that ends bit-identical to an uninterrupted run, atomic files, a
diverging learning rate, a full disk, out of memory."""

import json
import os
import random
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch

from cnnbench import cli, engine, run, track
from cnnbench.models import create_model
from conftest import TINY, cnnbench, compose_cfg, read_results

# 3 epochs of 30 steps, a checkpoint after every step, augmentation on (the data order and the
# crop/flip draws must both be restored mid-epoch), deterministic kernels on one thread.
KILLABLE = [*TINY, "dataset.train_size=480", "trainer.max_steps_per_epoch=0", "trainer.epochs=3",
            "trainer.checkpoint_every_steps=1", "trainer.log_every_steps=4", "trainer.deterministic=true",
            "trainer.threads=1", "dataset.augment=true", "trainer.progress=false"]
METRICS = ("top1_err", "top5_err", "loss", "best_top1_err", "best_epoch", "epochs", "status")
shutil_usage = namedtuple("usage", "total used free")
HISTORY = ("epoch", "train_loss", "train_top1_err", "val_loss", "val_top1_err", "val_top5_err", "lr")


def start(run_dir: Path, cwd: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "CNNBENCH_DATA": str(cwd / "data")}
    env.pop("HYDRA_FULL_ERROR", None)
    return subprocess.Popen([sys.executable, "-m", "cnnbench", "train", *KILLABLE, *extra, f"hydra.run.dir={run_dir}"],
                            cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not (run_dir / "checkpoints" / "last.pt").exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.02)


def same_run(a: Path, b: Path) -> None:
    ra, rb = read_results(a), read_results(b)
    assert {k: ra[k] for k in METRICS} == {k: rb[k] for k in METRICS}
    assert [{k: h[k] for k in HISTORY} for h in ra["history"]] == [{k: h[k] for k in HISTORY} for h in rb["history"]]
    wa = track.load_checkpoint(a / "checkpoints" / "last.pt", "lenet5")["weights"]
    wb = track.load_checkpoint(b / "checkpoints" / "last.pt", "lenet5")["weights"]
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    cwd = tmp_path_factory.mktemp("reference")
    r = cnnbench("train", *KILLABLE, f"hydra.run.dir={cwd / 'run'}", cwd=cwd)
    assert r.returncode == 0, r.stderr
    return cwd / "run"


def test_sigkill_at_random_steps_then_resume_is_identical(tmp_path, reference):
    rng = random.Random(int(os.environ.get("CNNBENCH_KILL_SEED", "0")))
    kill_steps = []
    for k in range(3):
        late = 0.6  # s after the first checkpoint: somewhere in the 90 steps, on a slow machine
        while True:
            run_dir = tmp_path / f"killed{k}"
            proc = start(run_dir, tmp_path)
            wait_for_checkpoint(run_dir, proc)
            time.sleep(rng.uniform(0.0, late))
            proc.kill()
            proc.communicate()
            state = track.load_checkpoint(run_dir / "checkpoints" / "last.pt", "lenet5")  # never half-written
            assert read_results(run_dir)["status"] in ("running", "completed")
            if state["epoch"] < 3 or state["epoch_state"]:
                break
            # The run had trained its 3 epochs: nothing to resume (row 78). On a fast machine: sooner.
            shutil.rmtree(run_dir)
            late /= 2
        kill_steps.append(state["global_step"])
        resumed = cnnbench("train", *KILLABLE, "trainer.resume=true", f"hydra.run.dir={run_dir}", cwd=tmp_path)
        assert resumed.returncode == 0, resumed.stderr
        same_run(run_dir, reference)
    print("killed after steps", kill_steps)
    assert any(0 < s < 90 for s in kill_steps), kill_steps  # at least one kill landed mid-run


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_saves_the_position_and_the_run_resumes_identically(tmp_path, reference, sig, code):
    run_dir = tmp_path / "run"
    proc = start(run_dir, tmp_path, "trainer.epochs=3")
    wait_for_checkpoint(run_dir, proc)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == code, err
    results = read_results(run_dir)
    resume = run.resume_command(run_dir)  # cnnbench resume /tmp/.../run: the exact command, quoted if need be
    assert results["status"] == "interrupted" and results["error"].endswith(f"with: {resume}")
    assert "Traceback" not in err
    assert err.rstrip().endswith(f"what was done so far is in {run_dir}. Continue it with: {resume}")
    state = track.load_checkpoint(run_dir / "checkpoints" / "last.pt", "lenet5")
    assert 0 < state["global_step"] < 90
    if sig == signal.SIGINT:
        return  # the resume below is the same for both signals
    (tmp_path / "elsewhere").mkdir()
    resumed = cnnbench(*shlex.split(resume)[1:], cwd=tmp_path / "elsewhere")  # the command as printed
    assert resumed.returncode == 0, resumed.stderr
    same_run(run_dir, reference)


def test_a_second_signal_exits_at_once_leaving_good_files(tmp_path):
    run_dir = tmp_path / "run"
    proc = start(run_dir, tmp_path, "trainer.epochs=50")
    wait_for_checkpoint(run_dir, proc)
    proc.send_signal(signal.SIGINT)
    proc.send_signal(signal.SIGINT)
    proc.communicate(timeout=60)
    assert proc.returncode == 130  # 128 + SIGINT
    json.loads((run_dir / "results.json").read_text())  # whole
    track.load_checkpoint(run_dir / "checkpoints" / "last.pt", "lenet5")  # whole


def test_a_failed_write_leaves_the_previous_file(tmp_path, monkeypatch):
    target = tmp_path / "results.json"
    track.write_results(target, {"status": "completed", "top1_err": 0.1})
    good = target.read_bytes()

    def dies_half_way(obj, f, *a, **k):
        f.write(b"\x80half a checkpoint")
        raise KeyboardInterrupt  # the process is stopped inside the write

    monkeypatch.setattr(json, "dumps", lambda *a, **k: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        track.write_results(target, {"status": "running"})
    assert target.read_bytes() == good
    ckpt = tmp_path / "last.pt"
    track.save_checkpoint(ckpt, {"model": "lenet5", "weights": {"w": torch.ones(2)}})
    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        track.save_checkpoint(ckpt, {"model": "lenet5", "weights": {"w": torch.zeros(2)}})
    assert torch.equal(track.load_checkpoint(ckpt, "lenet5")["weights"]["w"], torch.ones(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "results.json"]  # no temporary left


def test_divergence_stops_with_the_step_and_the_last_good_checkpoint(tmp_path):
    run_dir = tmp_path / "run"
    r = cnnbench("train", *TINY, "trainer.epochs=3", "optimizer.lr=1e6", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 1 and "Traceback" not in r.stderr
    message = " ".join(r.stderr.split())
    results = read_results(run_dir)
    assert results["status"] == "diverged" and results["diverged_step"] >= 1
    assert f"at step {results['diverged_step']}" in message and "Lower optimizer.lr" in message



def test_skip_step_leaves_non_finite_updates_out(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNBENCH_DATA", str(tmp_path / "data"))
    from cnnbench.tasks import classification

    real = classification.classification_loss
    calls = []

    def nan_on_second_step(*a, **k):
        calls.append(1)
        loss = real(*a, **k)
        return loss * float("nan") if len(calls) == 2 else loss

    monkeypatch.setattr(classification, "classification_loss", nan_on_second_step)  # the task's loss
    results = run.train(compose_cfg(*TINY, "trainer.on_nan=skip_step"), tmp_path / "run")
    assert results["status"] == "completed" and results["skipped_steps"] == 1
    assert results["history"][0]["skipped_steps"] == 1 and results["top1_err"] is not None


def test_a_sweep_with_a_diverging_job_completes_the_others(tmp_path):
    sweep = tmp_path / "sweep"
    r = cnnbench("train", "-m", *TINY, "optimizer.lr=0.01,1e6", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 1 and "1 job(s) of the sweep did not complete" in " ".join(r.stderr.split())
    assert read_results(sweep / "optimizer.lr=0.01")["status"] == "completed"
    assert read_results(sweep / "optimizer.lr=1000000.0")["status"] == "diverged"


def test_a_full_disk_is_found_before_training(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNBENCH_DATA", str(tmp_path / "data"))
    monkeypatch.setattr(run.shutil, "disk_usage", lambda path: shutil_usage(total=2**30, used=2**30 - 1024, free=1024))
    with pytest.raises(run.CnnbenchError, match="MiB free, but this run needs about"):
        run.train(compose_cfg(*TINY), tmp_path / "run")
    assert not (tmp_path / "run" / "results.json").exists()
    assert cli.main(["train", *TINY, "hydra.run.dir=/proc/version/run"]) == 2  # not a directory
    assert cli.main(["train", *TINY, "hydra.run.dir=/proc/cnnbench-run"]) == 2  # takes no folders, root's neither


def test_the_disk_check_counts_the_checkpoints_at_their_largest(tmp_path, monkeypatch):
    # ResNet-18 with Adam: best.pt holds the weights, last.pt the weights and both moments
    model = create_model("resnet18")
    last, best = run._checkpoint_bytes(model, torch.optim.Adam(model.parameters()))
    params = sum(p.numel() for p in model.parameters()) * 4
    assert best > params and last == best + 2 * params
    assert run._checkpoint_bytes(model, torch.optim.SGD(model.parameters(), lr=0.1))[0] == best + params

    def free(n):
        monkeypatch.setattr(run.shutil, "disk_usage", lambda path: shutil_usage(total=2**40, used=0, free=n))

    record = run.RECORD_BYTES  # results.json, the log, the event files
    free(2 * last + best + record)
    run.check_writable(tmp_path / "run", last, best)
    free(2 * last + best + record - 1)
    with pytest.raises(run.CnnbenchError, match=f"needs about {(2 * last + best + record) / 2**20:,.0f} MiB more"):
        run.check_writable(tmp_path / "run", last, best)
    # a resumed run: the checkpoints already written take no more room; the temporary copy still does
    ckpt = tmp_path / "run" / "checkpoints"
    ckpt.mkdir()
    (ckpt / "last.pt").write_bytes(b"x" * 1000)
    free(2 * last + best + record - 1000)
    run.check_writable(tmp_path / "run", last, best)
    (ckpt / "best.pt").write_bytes(b"x" * (2 * last))
    free(last + record - 1)
    with pytest.raises(run.CnnbenchError, match="MiB free"):
        run.check_writable(tmp_path / "run", last, best)
    # no checkpoints: the record alone, in figures that tell small sizes apart
    free(record - 2**20)
    with pytest.raises(run.CnnbenchError, match=r"has 3\.0 MiB free, but this run needs about 4\.0 MiB more"):
        run.check_writable(tmp_path / "run2")


def test_a_disk_that_fills_during_the_run_stops_it_resumably(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNBENCH_DATA", str(tmp_path / "data"))
    real_epoch = engine.train_one_epoch
    calls = []

    def full_in_second_epoch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(28, "No space left on device", str(tmp_path / "run" / "events"))
        return real_epoch(*args, **kwargs)

    monkeypatch.setattr(engine, "train_one_epoch", full_in_second_epoch)
    with pytest.raises(run.RunFailed) as e:
        run.train(compose_cfg(*TINY, "trainer.epochs=2"), tmp_path / "run")
    message = " ".join(str(e.value).split())
    assert "is full" in message and "last.pt (epoch 1, step 4) is whole" in message
    assert f"continue it with: cnnbench resume {tmp_path / 'run'} (or start again" in message
    monkeypatch.setattr(engine, "train_one_epoch", real_epoch)  # space freed: the run goes on
    again = run.train(compose_cfg(*TINY, "trainer.epochs=2", "trainer.resume=true"), tmp_path / "run")
    assert again["status"] == "completed" and again["epochs"] == 2


def test_out_of_memory_is_reported_with_the_batch_size(tmp_path, monkeypatch):
    monkeypatch.setenv("CNNBENCH_DATA", str(tmp_path / "data"))

    def oom(*a, **k):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: "
                           "you tried to allocate 1099511627776 bytes.")

    monkeypatch.setattr(engine, "train_one_epoch", oom)
    with pytest.raises(run.RunFailed, match="ran out of memory at dataset.batch_size=16"):
        run.train(compose_cfg(*TINY), tmp_path / "run")
    assert read_results(tmp_path / "run")["status"] == "failed"


def test_a_resumed_run_reads_its_checkpoint_once(tmp_path, monkeypatch):
    """The CLI checks the checkpoint before Hydra touches the folder, and train() loads it: one
    read of the file between them, and none handed over once the file has changed."""
    monkeypatch.chdir(tmp_path)
    run_dir = tmp_path / "outputs" / "run"
    args = [*TINY, "trainer.progress=false", f"hydra.run.dir={run_dir}"]
    assert cli.main(["train", *args, "trainer.epochs=1"]) == 0
    reads = []
    real_load = torch.load
    monkeypatch.setattr(torch, "load", lambda path, *a, **k: reads.append(Path(path)) or real_load(path, *a, **k))
    assert cli.main(["train", *args, "trainer.epochs=2", "trainer.resume=true"]) == 0
    assert read_results(run_dir)["epochs"] == 2
    assert reads.count(run_dir / "checkpoints" / "last.pt") == 1

    last = run_dir / "checkpoints" / "last.pt"
    reads.clear()
    state = track.load_checkpoint(last, "lenet5", keep=True)
    assert track.load_checkpoint(last, "lenet5") is state and len(reads) == 1  # handed over
    assert track.load_checkpoint(last, "lenet5") is not state and len(reads) == 2  # once only
    track.load_checkpoint(last, "lenet5", keep=True)
    track.save_checkpoint(last, {**state, "global_step": -1})  # replaced since
    assert track.load_checkpoint(last, "lenet5")["global_step"] == -1 and len(reads) == 4
