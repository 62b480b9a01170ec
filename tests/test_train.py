"""`cnnbench train` end to end, in a subprocess as a user runs it: the record a run leaves."""

import math

import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.backend.event_processing.plugin_event_accumulator import \
    EventAccumulator as PluginEventAccumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from conftest import TINY, cnnbench, compose_cfg, read_results

from cnnbench import run
from cnnbench.errors import CnnbenchError
from cnnbench.track import load_checkpoint, save_checkpoint


def test_results_json_has_every_field_with_sane_values(tiny_run):
    r = read_results(tiny_run)
    assert r["format"] == "cnnbench.results" and r["format_version"] == 1
    assert r["status"] == "completed"
    assert (r["model"], r["dataset"], r["optimizer"], r["seed"]) == ("lenet5", "synthetic", "sgd", 0)
    assert r["params"] == r["trainable_params"] == 61_706
    # LeNet-5 at 32 px, per image: C1 117,600 + C3 240,000 + C5 48,000 + F6 10,080 + out 840 MACs
    assert r["macs"] == 416_520 and r["flops"] == 2 * r["macs"]
    assert r["param_bytes"] == 4 * 61_706
    # Saved for backward per image includes at least the input and C1's output (fp32).
    assert 4 * (32 * 32 + 6 * 28 * 28) <= r["activation_bytes"] < 100_000
    assert r["peak_memory_bytes"] > r["data_bytes"] and r["peak_memory_kind"] == "process_peak_rss"
    assert r["data_bytes"] == (64 + 32) * (32 * 32 + 8)  # uint8 images of 32x32, int64 labels
    assert r["train_images_per_s"] > 0
    assert r["epochs"] == 2 and len(r["history"]) == 2
    for key in ("top1_err", "top5_err", "best_top1_err"):
        assert 0 <= r[key] <= 1
    assert r["top5_err"] <= r["top1_err"] and r["loss"] > 0
    assert r["best_epoch"] in (1, 2) and r["wall_time_s"] > 0
    row = r["history"][-1]
    assert set(row) == {"epoch", "train_loss", "train_top1_err", "val_loss", "val_top1_err",
                        "val_top5_err", "lr", "seconds", "images_per_s", "skipped_steps", "data_wait_s",
                        "compute_s"}
    assert row["val_top1_err"] == r["top1_err"] and row["skipped_steps"] == 0
    assert 0 <= row["data_wait_s"] < row["seconds"] and row["compute_s"] == row["seconds"] - row["data_wait_s"]
    # Speed settings, resolved for the CPU and recorded; mfu needs a GPU's peak, and says so.
    assert (r["amp"], r["channels_last"], r["compile"], r["world_size"]) == ("off", False, False, 1)
    assert r["global_batch_size"] == r["batch_size"] and r["compile_s"] is None and r["compile_mode"] is None
    assert r["mfu"] is None and "no mfu on the CPU" in r["mfu_note"]
    assert r["data_wait_s"] == sum(h["data_wait_s"] for h in r["history"])
    env = r["env"]
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["threads"] >= 1
    assert {"cnnbench", "git_commit", "cuda", "device_name", "hostname"} <= set(env)
    # The machine, at the start and end: cores, load average, other processes' threads ready to run
    assert env["cpus"] >= 1 and env["threads"] <= env["cpus"]
    assert all(isinstance(env[k], (int, float)) for k in ("load_start", "load_end", "others_start", "others_end"))
    assert (r["busy_note"] is None) == (max(env["others_start"], env["others_end"]) < max(1, env["cpus"] / 4))
    assert r["train_images"] == 64 and r["train_images_used"] == 64 and r["data_workers"] is None
    assert r["config"]["model"]["name"] == "lenet5" and r["config"]["trainer"]["epochs"] == 2


def test_tensorboard_events_read_back(tiny_run):
    acc = EventAccumulator(str(tiny_run))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/top1_err", "val/loss", "val/top1_err", "val/top5_err", "lr",
            "images_per_s"} <= tags
    steps = [e.step for e in acc.Scalars("train/loss")]
    assert steps == list(range(1, 9))  # log_every_steps=1, 4 steps x 2 epochs
    val = acc.Scalars("val/top1_err")
    assert [e.step for e in val] == [4, 8]
    assert math.isclose(val[-1].value, read_results(tiny_run)["top1_err"], rel_tol=1e-6)
    # The hparams record, read the way TensorBoard's HPARAMS tab reads it.
    hp = PluginEventAccumulator(str(tiny_run))
    hp.Reload()
    start = hp.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["model"].string_value == "lenet5" and hparams["batch_size"].number_value == 16
    assert {"hparam/top1_err", "hparam/params", "hparam/gmacs", "hparam/images_per_s"} <= set(hp.Tags()["tensors"])


def test_checkpoints_load_and_hold_the_final_weights(tiny_run):
    last = load_checkpoint(tiny_run / "checkpoints" / "last.pt", "lenet5")
    assert last["epoch"] == 2 and last["global_step"] == 8
    best = load_checkpoint(tiny_run / "checkpoints" / "best.pt", "lenet5")
    assert best["epoch"] == read_results(tiny_run)["best_epoch"]
    assert set(last["weights"]) == set(best["weights"])


def test_resume_continues_where_the_run_stopped(tmp_path):
    run_dir = tmp_path / "outputs" / "r"
    first = cnnbench("train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert first.returncode == 0, first.stderr
    # The same run, asked for 2 epochs: trains only the second.
    again = cnnbench("train", *TINY, "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert again.returncode == 2 and "already holds a run" in again.stderr
    before = (run_dir / "checkpoints" / "last.pt").read_bytes()
    other = cnnbench("train", *TINY, "trainer.epochs=2", "optimizer.lr=0.5", "trainer.resume=true",
                     f"hydra.run.dir={run_dir}", cwd=tmp_path)  # another experiment: refused, nothing touched
    assert other.returncode == 2 and "(optimizer.lr differ)" in " ".join(other.stderr.split())
    assert (run_dir / "checkpoints" / "last.pt").read_bytes() == before
    resumed = cnnbench("train", *TINY, "trainer.epochs=2", "trainer.resume=true",
                       f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "Resuming" in resumed.stdout
    r = read_results(run_dir)
    assert r["status"] == "completed" and r["epochs"] == 2
    assert [h["epoch"] for h in r["history"]] == [1, 2]
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 9))  # no gap, no repeat


def test_a_run_saved_before_a_setting_existed_still_resumes(tmp_path):
    """trainer.compile_mode came later: a checkpoint without it trained in the default mode, and
    resumes under a config that says so (track.ADDED_SETTINGS)."""
    run_dir = tmp_path / "r"
    run.train(compose_cfg(*TINY, "trainer.epochs=1"), run_dir)
    last = run_dir / "checkpoints" / "last.pt"
    state = load_checkpoint(last, "lenet5")
    del state["config"]["trainer"]["compile_mode"]
    save_checkpoint(last, state)
    resume = compose_cfg(*TINY, "trainer.epochs=2", "trainer.resume=true")
    assert run.check_run_dir(resume, run_dir)["epoch"] == 1
    assert run.train(resume, run_dir)["status"] == "completed"
    other = compose_cfg(*TINY, "trainer.epochs=3", "trainer.resume=true", "trainer.compile_mode=reduce_overhead")
    with pytest.raises(CnnbenchError, match=r"\(trainer.compile_mode differ\)"):
        run.check_run_dir(other, run_dir)


def test_resumed_run_matches_an_uninterrupted_one(tmp_path):
    """Resume restores weights, optimizer, schedule and data order: 1 epoch + 1 resumed epoch
    gives the numbers of 2 epochs in one go (constant lr, so the schedule is the same)."""
    same = [*TINY, "scheduler=none", "trainer.deterministic=true", "trainer.threads=1"]
    whole, split = tmp_path / "whole", tmp_path / "split"
    assert cnnbench("train", *same, "trainer.epochs=2", f"hydra.run.dir={whole}", cwd=tmp_path).returncode == 0
    assert cnnbench("train", *same, "trainer.epochs=1", f"hydra.run.dir={split}", cwd=tmp_path).returncode == 0
    r = cnnbench("train", *same, "trainer.epochs=2", "trainer.resume=true", f"hydra.run.dir={split}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    a, b = read_results(whole), read_results(split)
    for key in ("top1_err", "top5_err", "loss", "best_top1_err", "best_epoch"):
        assert a[key] == b[key], key
    assert [h["train_loss"] for h in a["history"]] == [h["train_loss"] for h in b["history"]]
    wa = load_checkpoint(whole / "checkpoints" / "last.pt", "lenet5")["weights"]
    wb = load_checkpoint(split / "checkpoints" / "last.pt", "lenet5")["weights"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)


def test_training_longer_recomputes_the_schedule_says_so_and_keeps_one_hparams_record(tmp_path, caplog):
    """onecycle, 1 epoch, then resumed to 2: the learning rate at the resumed step is the 2-epoch
    plan's (not the 1-epoch plan's 4e-7, then a jump at the next step), the log and the record say
    so, and TensorBoard's HPARAMS record is the run's final one (epochs=2), alone."""
    run_dir = tmp_path / "r"
    run.train(compose_cfg(*TINY, "trainer.epochs=1"), run_dir)
    r = run.train(compose_cfg(*TINY, "trainer.epochs=2", "trainer.resume=true"), run_dir)
    cfg = compose_cfg(*TINY, "trainer.epochs=2")
    opt = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), lr=cfg.optimizer.lr)
    plan = run.build_scheduler(opt, cfg.scheduler, cfg.optimizer.lr, 2, 4)  # 2 epochs of 4 steps
    (change,) = r["schedule_changes"]
    assert (change["step"], change["epochs_before"], change["epochs_after"]) == (4, 1, 2)
    assert change["lr_before"] < 1e-6 and math.isclose(change["lr_after"], cfg.optimizer.lr * plan.lr_lambdas[0](4))
    assert math.isclose(r["history"][1]["lr"], cfg.optimizer.lr * plan.lr_lambdas[0](8))
    assert "the onecycle schedule is recomputed for 2 epochs" in caplog.text
    hp = PluginEventAccumulator(str(run_dir))
    hp.Reload()
    start = hp.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    hparams = plugin_data_pb2.HParamsPluginData.FromString(start).session_start_info.hparams
    assert hparams["epochs"].number_value == 2
    assert [e.tensor_proto.float_val[0] for e in hp.Tensors("hparam/top1_err")] == [pytest.approx(r["top1_err"])]


@pytest.mark.parametrize("model_args", [["model=lenet5", "model.classic=true"],
                                        ["model=resnet18", "model.stem=small", "model.norm=group",
                                         "dataset.image_size=8"]])
def test_train_other_models_and_optimizers(tmp_path, model_args):
    run_dir = tmp_path / "run"
    r = cnnbench("train", *TINY, *model_args, "optimizer=adamw", "scheduler=cosine", "trainer.checkpoint=false",
                 f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = read_results(run_dir)
    assert res["optimizer"] == "adamw" and res["config"]["scheduler"]["name"] == "cosine"
    assert res["status"] == "completed"


def test_synthetic_data_is_learnable(tmp_path):
    run_dir = tmp_path / "run"
    r = cnnbench("train", *TINY, "dataset.train_size=1024", "dataset.val_size=256",
                 "trainer.max_steps_per_epoch=0", "trainer.max_eval_steps=0", "trainer.epochs=3",
                 "optimizer.lr=0.02", "trainer.log_every_steps=16", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = read_results(run_dir)
    assert res["top1_err"] < 0.5  # chance is 0.9


def test_multirun_sweeps_every_combination(tmp_path):
    sweep = tmp_path / "sweep"
    r = cnnbench("train", "-m", *TINY, "model=lenet5", "seed=0,1", f"hydra.sweep.dir={sweep}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    found = sorted(p.parent.name for p in sweep.rglob("results.json"))
    assert found == ["seed=0", "seed=1"]  # a job's folder names what differs, nothing else
    seeds = {read_results(sweep / name)["seed"] for name in found}
    assert seeds == {0, 1}
    # Different seeds, different initial weights: the losses differ.
    losses = {read_results(sweep / name)["history"][0]["train_loss"] for name in found}
    assert len(losses) == 2


def test_help_lists_groups_and_options(tmp_path):
    r = cnnbench("train", "--help", cwd=tmp_path)
    assert r.returncode == 0
    for line in ("model:", "lenet5", "resnet50", "dataset:", "fashion_mnist", "synthetic",
                 "optimizer:", "adamw", "rmsprop", "scheduler:", "onecycle", "trainer:"):
        assert line in r.stdout


def test_default_config_is_lenet5_on_fashion_mnist():
    from conftest import compose_cfg

    cfg = compose_cfg()
    assert (cfg.model.name, str(cfg.dataset.name), str(cfg.optimizer.name), str(cfg.scheduler.name)) == \
        ("lenet5", "fashion_mnist", "sgd", "onecycle")
    assert cfg.model.num_classes == cfg.dataset.num_classes == 10
    cifar = compose_cfg("dataset=cifar100", "model=resnet18")
    assert cifar.model.num_classes == 100 and cifar.model.in_channels == 3


def test_the_log_names_top_k_as_it_is_and_a_busy_machine_is_said():
    row = {"epoch": 1, "train_loss": 1.0, "train_top1_err": 0.5, "val_loss": 1.0, "val_top1_err": 0.5,
           "val_top5_err": 0.0, "images_per_s": 100.0, "seconds": 1.0}
    assert "top-3 err 0.00%" in run._epoch_line(row, 1, classes=3)  # k = min(5, classes): top-3, always right
    assert "top-5 err" in run._epoch_line(row, 1, classes=10)
    env = {"cpus": 2, "threads": 1, "load_start": 3.1, "load_end": 2.9, "others_start": 2, "others_end": 0}
    assert "The machine was busy: 2 thread(s) of other processes were ready to run" in run._busy_note(env)
    assert run._busy_note({**env, "others_start": 0}) is None
    assert run._busy_note({**env, "cpus": 64, "others_start": 8}) is None  # 8 of 64 cores: not a quarter


def test_threads_follow_the_load_but_not_in_a_deterministic_or_resumed_run(monkeypatch):
    from types import SimpleNamespace

    cpu = torch.device("cpu")
    monkeypatch.setattr(run.measure, "other_runnable", lambda: 5.0)  # a busy machine
    monkeypatch.setattr(run.measure, "cores_per_process", lambda: 2)
    default = min(run.measure._TORCH_THREADS, 2)
    try:
        assert run._use_cores(SimpleNamespace(threads=0, deterministic=False), cpu) == 5.0
        assert torch.get_num_threads() == 1  # the busy cores left out
        run._use_cores(SimpleNamespace(threads=0, deterministic=True), cpu)
        assert torch.get_num_threads() == default  # results that must not depend on the load
        run._use_cores(SimpleNamespace(threads=0, deterministic=False), cpu, resumed_with=2)
        assert torch.get_num_threads() == 2  # as the run began: the same sums
        run._use_cores(SimpleNamespace(threads=1, deterministic=True), cpu, resumed_with=2)
        assert torch.get_num_threads() == 1  # given: kept
    finally:
        torch.set_num_threads(run.measure._TORCH_THREADS)
