"""`cnnbench profile`: cost without training, as a user runs it."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from conftest import cnnbench

from cnnbench import cli


@pytest.mark.parametrize("model_args,params", [
    (["model=lenet5", "dataset.in_channels=1", "dataset.mean=[0.5]", "dataset.std=[0.5]"], 61_706),
    (["model=resnet18", "model.stem=small", "dataset.image_size=16"], 11_173_962)])
def test_profile_two_models(tmp_path, model_args, params):
    run_dir = tmp_path / "prof"
    r = cnnbench("profile", "dataset=synthetic", *model_args, "trainer.device=cpu", "profile.batch_sizes=[1,4]",
                 "profile.repeats=2", "profile.warmup=1", "--layers", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    p = json.loads((run_dir / "profile.json").read_text())
    assert p["format"] == "cnnbench.profile" and p["params"] == params and p["flops"] == 2 * p["macs"]
    # backward computes input and weight gradients: about twice the forward again
    assert 2 * p["macs"] < p["train_macs"] <= 3 * p["macs"]
    assert sum(row["macs"] for row in p["layers"]) == p["macs"]  # every MAC belongs to a layer
    assert sum(row["params"] for row in p["layers"]) == p["params"]
    assert [b["batch_size"] for b in p["batches"]] == [1, 4]
    one, four = p["batches"]
    assert one["latency_ms"] > 0 and one["train_step_ms"] is None  # BatchNorm cannot train on 1 image
    assert four["train_images_per_s"] > 0 and four["peak_memory_bytes"] is None  # CPU: no device peak
    assert p["max_train_batch"] is None and p["activation_bytes"] > 0
    assert "layers (one image" in r.stdout and "conv" in r.stdout.lower()
    acc = EventAccumulator(str(run_dir))
    acc.Reload()
    assert [e.step for e in acc.Scalars("profile/latency_ms")] == [1, 4]
    before = (run_dir / "profile.json").read_bytes()
    again = cnnbench("profile", "dataset=synthetic", *model_args, f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert again.returncode == 2 and "already holds a profile" in again.stderr
    assert (run_dir / "profile.json").read_bytes() == before


def test_profile_lands_in_outputs_profiles_and_refuses_bad_sizes(tmp_path, monkeypatch, capsys):
    r = cnnbench("profile", "dataset=synthetic", "model=lenet5", "dataset.in_channels=1", "dataset.mean=[0.5]",
                 "dataset.std=[0.5]", "profile.batch_sizes=[2]", "profile.repeats=1", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert len(list((tmp_path / "outputs" / "profiles").glob("*_lenet5/profile.json"))) == 1
    monkeypatch.chdir(tmp_path)
    assert cli.main(["profile", "profile.batch_sizes=[0]"]) == 2
    assert "profile.batch_sizes=[0]" in capsys.readouterr().err
    # a training run's folder: refused with a profile's fix, not a training run's (trainer.resume)
    run_dir = tmp_path / "a-run"
    run_dir.mkdir()
    (run_dir / "results.json").write_text("{}")
    assert cli.main(["profile", f"hydra.run.dir={run_dir}"]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert "already holds a run; cnnbench will not write a profile into it" in err and "resume" not in err
