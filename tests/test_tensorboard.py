"""What TensorBoard shows of a run and of a sweep: scalars, per-layer gradient norms, the first
convolution's filters, and the HPARAMS comparison; read from the event files and from a real
`tensorboard` server."""

import contextlib
import io
import json
import math
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from torch import nn

from conftest import TINY, cnnbench, compose_cfg

from cnnbench import measure, run, track
from cnnbench.models import create_model

SWEEP = [*TINY, "trainer.log_every_steps=2"]  # 4 steps: train scalars and gradient norms at 2 and 4
HPARAMS = {"model", "norm", "dataset", "image_size", "augment", "optimizer", "lr", "weight_decay",
           "scheduler", "batch_size", "epochs", "amp", "label_smoothing", "seed"}
METRICS = {"hparam/top1_err", "hparam/top5_err", "hparam/params", "hparam/gmacs", "hparam/peak_memory_mb",
           "hparam/images_per_s"}


def _lenet_layers() -> set:
    """LeNet-5's convolution and linear layers, by module name (their weights are 4-D and 2-D)."""
    model = create_model("lenet5", num_classes=10, in_channels=1)
    return {n.rsplit(".", 1)[0] for n, p in model.named_parameters() if n.endswith("weight") and p.dim() in (2, 4)}


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A finished two-run sweep (seed=0,1): one folder per job, named by what differs."""
    tmp = tmp_path_factory.mktemp("tb")
    r = cnnbench("train", "-m", "seed=0,1", *SWEEP, f"hydra.sweep.dir={tmp}/sweep", cwd=tmp)
    assert r.returncode == 0, r.stdout + r.stderr
    return tmp / "sweep"


def _accumulator(run_dir) -> EventAccumulator:
    acc = EventAccumulator(str(run_dir), size_guidance={"images": 0, "scalars": 0})  # 0 = keep all
    acc.Reload()
    return acc


def test_event_files_hold_filters_at_start_and_end_and_grad_norms_at_log_steps(sweep):
    acc = _accumulator(sweep / "seed=0")
    assert acc.Tags()["images"] == ["filters/features.0"]  # LeNet-5's C1
    start, end = acc.Images("filters/features.0")
    assert (start.step, end.step) == (0, 4)
    assert start.encoded_image_string != end.encoded_image_string  # training changed the filters
    grad_tags = {t for t in acc.Tags()["scalars"] if t.startswith("grad_norm/")}
    assert grad_tags == {f"grad_norm/{name}" for name in _lenet_layers()}
    for tag in grad_tags:
        events = acc.Scalars(tag)
        assert [e.step for e in events] == [2, 4]  # every log_every_steps, nothing in between
        assert all(math.isfinite(e.value) and e.value > 0 for e in events)
    assert [e.step for e in acc.Scalars("train/loss")] == [2, 4]


@contextlib.contextmanager
def tensorboard_server(logdir, log_path):
    """`tensorboard --logdir LOGDIR` on a free local port, answering: yields its base URL. The
    server is stopped on the way out, whatever happened."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    base = f"http://127.0.0.1:{port}"
    with open(log_path, "w") as log:
        # Python data loading (no Rust data server); the logs are read once, before serving.
        server = subprocess.Popen([sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
                                   "--port", str(port), "--host", "127.0.0.1", "--load_fast=false",
                                   "--reload_task=blocking", "--reload_interval=0"],
                                  stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 60
            while True:
                assert server.poll() is None, f"tensorboard exited: {Path(log_path).read_text()}"
                try:
                    urllib.request.urlopen(f"{base}/data/runs", timeout=5).close()
                    break
                except OSError:
                    assert time.monotonic() < deadline, "tensorboard did not answer in 60 s"
                    time.sleep(0.3)
            yield base
        finally:
            server.terminate()
            try:
                server.wait(timeout=10)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()


def test_tensorboard_server_shows_the_sweep(sweep, tmp_path):
    """Ask a real TensorBoard's HTTP API what a user's browser would: the runs of a sweep, their
    scalars and images, and the HPARAMS comparison."""
    with tensorboard_server(sweep, tmp_path / "tensorboard.log") as base:
        def get(path):
            with urllib.request.urlopen(base + path, timeout=10) as r:
                return r.read()

        def post(path, body: dict):
            request = urllib.request.Request(base + path, data=json.dumps(body).encode(), method="POST",
                                             headers={"Content-Type": "application/json",
                                                      "X-XSRF-Protected": "1"})
            with urllib.request.urlopen(request, timeout=10) as r:
                return json.loads(r.read())

        # One log tree, one run per job, named by what differs.
        runs = json.loads(get("/data/runs"))
        assert sorted(runs) == ["seed=0", "seed=1"]
        scalars = json.loads(get("/data/plugin/scalars/tags"))
        for name in runs:
            assert {"train/loss", "val/top1_err", "lr", "images_per_s"} <= set(scalars[name])
            assert {f"grad_norm/{layer}" for layer in _lenet_layers()} <= set(scalars[name])
        q = urllib.parse.urlencode({"run": "seed=1", "tag": "grad_norm/features.0"})
        assert [step for _, step, _ in json.loads(get(f"/data/plugin/scalars/scalars?{q}"))] == [2, 4]
        images = json.loads(get("/data/plugin/images/tags"))
        assert {name: list(tags) for name, tags in images.items()} == {n: ["filters/features.0"] for n in runs}
        q = urllib.parse.urlencode({"run": "seed=0", "tag": "filters/features.0"})
        samples = json.loads(get(f"/data/plugin/images/images?{q}"))
        assert [s["step"] for s in samples] == [0, 4]
        assert get(f"/data/plugin/images/individualImage?{samples[-1]['query']}").startswith(b"\x89PNG")

        # HPARAMS: the hyperparameters and the cost and error metrics its table and scatter plot use.
        experiment = post("/data/plugin/hparams/experiment", {"experimentName": ""})
        assert {h["name"] for h in experiment["hparamInfos"]} == HPARAMS
        assert {m["name"]["tag"] for m in experiment["metricInfos"]} == METRICS
        groups = post("/data/plugin/hparams/session_groups", {
            "experimentName": "", "startIndex": 0, "sliceSize": 100,
            "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]})
        groups = {g["name"]: g for g in groups["sessionGroups"]}
        assert sorted(groups) == ["seed=0", "seed=1"]
        for name, group in groups.items():
            hp = group["hparams"]
            assert set(hp) == HPARAMS and hp["seed"] == int(name[-1])
            assert (hp["model"], hp["norm"], hp["scheduler"], hp["amp"], hp["augment"]) == \
                ("lenet5", "default", "onecycle", "off", "false")
            assert hp["image_size"] == 32 and hp["weight_decay"] == 5e-4
            metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
            assert set(metrics) == METRICS
            assert metrics["hparam/params"] == 61_706 and metrics["hparam/gmacs"] > 0
            assert metrics["hparam/peak_memory_mb"] > 0 and metrics["hparam/images_per_s"] > 0
            assert [s["status"] for s in group["sessions"]] == ["STATUS_SUCCESS"]


@pytest.mark.parametrize("in_channels", [1, 3])
def test_filters_image_is_a_grid_of_min_max_scaled_filters(tmp_path, in_channels):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(in_channels, 4, 3), nn.ReLU(), nn.Conv2d(4, 8, 3))
    tb = track.TensorBoard(tmp_path)
    tb.filters(model, step=7)
    tb.close()
    acc = _accumulator(tmp_path)
    (event,) = acc.Images("filters/0")  # the first convolution only
    assert event.step == 7
    image = np.asarray(Image.open(io.BytesIO(event.encoded_image_string)).convert("RGB"))  # (H, W, 3)
    # 4 filters of 3x3, each pixel a 10x10 block, in a 2x2 grid with 2 px padding around each.
    assert (event.height, event.width) == (66, 66)
    for row in range(2):
        for col in range(2):
            tile = image[2 + 32 * row:32 + 32 * row, 2 + 32 * col:32 + 32 * col]
            assert (tile.min(), tile.max()) == (0, 255)  # each filter spans the full range
    grey = bool((image[..., 0] == image[..., 1]).all() and (image[..., 1] == image[..., 2]).all())
    assert grey == (in_channels == 1)  # RGB filters for RGB input


def test_grad_norms_are_the_per_layer_gradient_norms():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 6 * 6, 3),
                          nn.Linear(3, 2))
    model[4].weight.requires_grad_(False)  # frozen: not reported
    weights = measure.layer_weights(model)
    assert list(weights) == ["0", "3"]  # convolutions and linear layers only; BatchNorm is not one
    assert measure.grad_norms(weights) == {}  # no gradients yet
    model(torch.randn(5, 1, 8, 8)).sum().backward()
    norms = measure.grad_norms(weights)
    assert list(norms) == ["0", "3"]
    for name, value in norms.items():
        assert math.isclose(value, torch.linalg.vector_norm(weights[name].grad).item(), rel_tol=1e-6)


def test_switches_off_and_resume_keeps_the_start_image(tmp_path):
    """trainer.log_filters / log_grad_norms = false write neither; a resumed run does not write a
    second start image (the first run's stays), only the end one."""
    run_dir = tmp_path / "run"
    run.train(compose_cfg(*TINY, "trainer.log_filters=false", "trainer.log_grad_norms=false"), run_dir)
    acc = _accumulator(run_dir)
    assert acc.Tags()["images"] == []
    assert not any(t.startswith("grad_norm/") for t in acc.Tags()["scalars"])
    run.train(compose_cfg(*TINY, "trainer.epochs=2", "trainer.resume=true"), run_dir)
    acc = _accumulator(run_dir)
    assert [e.step for e in acc.Images("filters/features.0")] == [8]
    assert [e.step for e in acc.Scalars("grad_norm/features.0")] == [5, 6, 7, 8]
