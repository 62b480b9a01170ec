"""The loops and the objects run.py builds from config: metrics, losses, optimizers, schedules."""

import math

import pytest
import torch
import torch.nn as nn

from conftest import compose_cfg

from cnnbench import engine, run
from cnnbench.models import create_model
from cnnbench.tasks.classification import classification_loss, topk_errors


def test_topk_errors_counts_misses_and_caps_k_at_the_class_count():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    target = torch.tensor([1, 2, 0])
    # top-1: right, wrong, wrong. top-5 on 3 classes = top-3: always right.
    assert topk_errors(logits, target, (1, 5)).tolist() == [2, 0]
    many = torch.eye(10)[:4] * 5  # image i predicts class i first
    assert topk_errors(many, torch.tensor([0, 1, 9, 9]), (1, 5)).tolist() == [2, 2]


def test_auxiliary_outputs_add_weighted_losses():
    logits, aux = torch.randn(4, 3), [torch.randn(4, 3), torch.randn(4, 3)]
    y = torch.tensor([0, 1, 2, 0])
    ce = nn.functional.cross_entropy
    expected = ce(logits, y) + 0.3 * (ce(aux[0], y) + ce(aux[1], y))
    assert torch.allclose(classification_loss((logits, aux), y), expected)


def test_sgd_skips_weight_decay_on_norm_and_bias():
    model = create_model("resnet18", num_classes=10)
    opt = run.build_optimizer(model, compose_cfg("optimizer=sgd").optimizer)
    decayed, plain = opt.param_groups
    assert decayed["weight_decay"] == 5e-4 and plain["weight_decay"] == 0
    assert all(p.ndim > 1 for p in decayed["params"]) and all(p.ndim == 1 for p in plain["params"])
    assert opt.defaults["nesterov"] and opt.defaults["momentum"] == 0.9
    assert len(decayed["params"]) + len(plain["params"]) == len(list(model.parameters()))
    together = run.build_optimizer(model, compose_cfg("optimizer.decay_norm_and_bias=true").optimizer)
    assert len(together.param_groups) == 1


@pytest.mark.parametrize("name,cls", [("adam", torch.optim.Adam), ("adamw", torch.optim.AdamW),
                                      ("adagrad", torch.optim.Adagrad), ("rmsprop", torch.optim.RMSprop)])
def test_every_optimizer_builds(name, cls):
    opt = run.build_optimizer(nn.Linear(3, 2), compose_cfg(f"optimizer={name}").optimizer)
    assert isinstance(opt, cls)


def lrs(scheduler_args, epochs=4, steps=10, lr=0.1):
    cfg = compose_cfg(*scheduler_args, f"optimizer.lr={lr}")
    opt = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=lr)
    sched = run.build_scheduler(opt, cfg.scheduler, lr, epochs, steps)
    out = []
    for _ in range(epochs * steps):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def test_schedules():
    one = lrs(["scheduler=onecycle"])
    assert math.isclose(one[0], 0.1 / 25) and math.isclose(max(one), 0.1) and one.index(max(one)) == 10
    assert one[-1] < 0.1 / 25 and one == sorted(one[:11]) + one[11:]
    cos = lrs(["scheduler=cosine", "scheduler.warmup_epochs=1"])
    assert math.isclose(cos[9], 0.1) and cos[:10] == sorted(cos[:10]) and cos[-1] < 0.001
    step = lrs(["scheduler=step", "scheduler.step_epochs=2"])
    assert step[19] == 0.1 and math.isclose(step[20], 0.01)
    assert set(lrs(["scheduler=none"])) == {0.1}
    assert len(lrs(["scheduler=onecycle"], epochs=1, steps=1)) == 1  # a 1-step run works
    # a setting that names another (Hydra interpolation) means its value
    assert lrs(["scheduler=step", "scheduler.step_epochs=${trainer.epochs}", "trainer.epochs=2"]) == step


def test_image_size_defaults_to_native_raised_to_the_model_minimum():
    assert run.image_size_for(compose_cfg()) == 32  # Fashion-MNIST 28 px -> LeNet-5's 32
    assert run.image_size_for(compose_cfg("model=resnet18", "model.stem=small")) == 28
    assert run.image_size_for(compose_cfg("model=resnet50", "dataset=cifar10")) == 32
    assert run.image_size_for(compose_cfg("model=resnet50", "dataset.image_size=224")) == 224


def test_train_one_epoch_lowers_the_loss():
    torch.manual_seed(0)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = engine.StepConfig(torch.device("cpu"), log_every=2)
    loader = [(x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)]
    logged = []
    first = engine.train_one_epoch(model, loader, opt, sched, scaler, step, 0, lambda s, v: logged.append(s))
    for _ in range(5):
        last = engine.train_one_epoch(model, loader, opt, sched, scaler, step, 0, lambda s, v: None)
    assert last["loss"] < first["loss"] / 2 and first["images"] == 64 and first["global_step"] == 8
    assert logged == [2, 4, 6, 8]
    val = engine.evaluate(model, loader, step)
    assert val["top1_err"] < 0.2 and val["top5_err"] == 0  # 2 classes: top-5 is always right


def _toy(seed=0):
    torch.manual_seed(seed)
    x = torch.randn(64, 8)
    y = (x[:, 0] > 0).long()
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 / (1 + s))
    return model, opt, sched, [(x[i:i + 8], y[i:i + 8]) for i in range(0, 64, 8)]


def test_an_epoch_stopped_and_continued_from_its_state_matches_one_pass():
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    step = engine.StepConfig(torch.device("cpu"), log_every=3)
    model, opt, sched, batches = _toy()
    whole = engine.train_one_epoch(model, batches, opt, sched, scaler, step, 0, lambda s, v: None)

    model2, opt2, sched2, _ = _toy()
    stop_at_5 = engine.train_one_epoch(model2, batches, opt2, sched2, scaler, step, 0, lambda s, v: None,
                                       lambda s, state: s == 5)
    assert stop_at_5["stopped"] and stop_at_5["global_step"] == 5 and stop_at_5["state"].step == 5
    class FromBatch(list):  # a loader that, like InMemoryLoader, starts where set_epoch says
        start = 0

        def __iter__(self):
            return iter(self[self.start:])

    later = FromBatch(batches)
    later.start = 5
    rest = engine.train_one_epoch(model2, later, opt2, sched2, scaler, step, 5, lambda s, v: None,
                                  state=stop_at_5["state"])
    assert rest["global_step"] == 8 and rest["images"] == whole["images"] == 64 and not rest["stopped"]
    assert (rest["loss"], rest["top1_err"]) == (whole["loss"], whole["top1_err"])  # the same sums, exactly
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), model2.parameters()))


def test_a_non_finite_loss_stops_the_run_at_its_step_or_is_skipped():
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    model, opt, sched, batches = _toy()
    batches[3] = (torch.full_like(batches[3][0], float("nan")), batches[3][1])  # step 4 sees NaN
    with pytest.raises(engine.Diverged) as e:
        engine.train_one_epoch(model, batches, opt, sched, scaler, engine.StepConfig(torch.device("cpu"),
                               log_every=50), 0, lambda s, v: None)
    assert e.value.step == 4  # exact, although the loss was only read at the end of the epoch

    model, opt, sched, _ = _toy()
    skip = engine.StepConfig(torch.device("cpu"), log_every=2, on_nan="skip_step")
    r = engine.train_one_epoch(model, batches, opt, sched, scaler, skip, 0, lambda s, v: None)
    assert r["skipped_steps"] == 1 and r["images"] == 56 and math.isfinite(r["loss"])
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_running_sums_weigh_each_batch_and_find_the_first_bad_step_long_before_a_read():
    """Batches of unequal size are weighted by their images; the non-finite step is exact, with
    hundreds of steps between reads of the running sums."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 2))
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # no learning: each batch's loss is known beforehand
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    n = 300
    batches = [(torch.randn(3 + i % 5, 8), torch.randint(0, 2, (3 + i % 5,))) for i in range(n)]
    with torch.no_grad():
        expected = sum(nn.functional.cross_entropy(model(x), y).item() * len(y) for x, y in batches)
    step = engine.StepConfig(torch.device("cpu"), log_every=10_000)
    r = engine.train_one_epoch(model, batches, opt, sched, scaler, step, 0, lambda s, v: None)
    assert r["images"] == sum(len(y) for _, y in batches)
    assert r["loss"] == pytest.approx(expected / r["images"], rel=1e-5)

    bad = 270  # the 1-based step of the NaN
    batches[bad - 1] = (torch.full_like(batches[bad - 1][0], float("nan")), batches[bad - 1][1])
    with pytest.raises(engine.Diverged) as e:
        engine.train_one_epoch(model, batches, opt, sched, scaler, step, 0, lambda s, v: None)
    assert e.value.step == bad


def test_an_epoch_state_saved_before_tasks_resumes_with_its_images_as_the_denominator():
    """Mid-epoch checkpoints of the cnnbench before tasks held (2,) sums: loss and top-1 errors over
    images. Their running figure's denominator, the images, becomes the third sum."""
    old = engine.EpochState(step=3, totals=torch.tensor([6.0, 2.0]), window=torch.tensor([1.5, 1.0]),
                            images=12, window_images=4).to(torch.device("cpu"))
    assert old.totals.tolist() == [6.0, 2.0, 12.0] and old.window.tolist() == [1.5, 1.0, 4.0]
    fresh = engine.EpochState().to(torch.device("cpu"))
    assert fresh.totals.tolist() == [0.0, 0.0, 0.0]
