"""Networks from outside the zoo: your own nn.Module (model=custom), any torchvision classifier,
any timm model, each measured as the zoo's are, recorded so a comparison says which network ran,
and every mistake answered before a run folder is written."""

import hashlib
import sys
from pathlib import Path

import pytest
import torch
import torchvision

from conftest import TINY, cnnbench, compose_cfg, read_results

from cnnbench import cli, measure, run
from cnnbench.errors import CnnbenchError
from cnnbench.models import create_model, get_model_info, list_models

MYNETS = '''
import torch.nn as nn


class TinyNet(nn.Module):
    """Two 3x3 convolutions, global pooling, a linear classifier: takes num_classes and in_channels."""

    def __init__(self, num_classes=10, in_channels=1, width=8):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(in_channels, width, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
                                  nn.Conv2d(width, 2 * width, 3, padding=1), nn.ReLU(), nn.AdaptiveAvgPool2d(1),
                                  nn.Flatten())
        self.head = nn.Linear(2 * width, num_classes)

    def forward(self, x):
        return self.head(self.body(x))


def fixed(width=4):
    """A factory function that takes neither num_classes nor in_channels: 1 channel, 10 classes,
    and a lazy classifier (its input size comes from the first forward)."""
    return nn.Sequential(nn.Conv2d(1, width, 5), nn.ReLU(), nn.Flatten(), nn.LazyLinear(10))


class SevenClasses(nn.Module):
    def __init__(self):
        super().__init__()
        self.f = nn.Sequential(nn.Conv2d(1, 4, 3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(4, 7))

    def forward(self, x):
        return self.f(x)


class Raises(nn.Module):
    def __init__(self, depth=3):
        super().__init__()
        raise ValueError(f"depth must be even, got {depth}")


NOT_A_MODEL = 42


def not_a_module():
    return "hello"
'''


@pytest.fixture
def mynets(tmp_path, monkeypatch) -> Path:
    """mynets.py in the current folder, as a user writes it."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "mynets.py").write_text(MYNETS)
    monkeypatch.setenv("CNNBENCH_DATA", str(tmp_path / "data"))
    return tmp_path / "mynets.py"


def tiny_net_params(width: int, classes: int, channels: int) -> int:
    """TinyNet's parameters, counted by hand: two convolutions (weights and biases) and the classifier."""
    return (channels * 9 * width + width) + (width * 9 * 2 * width + 2 * width) + (2 * width * classes + classes)


def test_a_custom_class_is_built_counted_and_sized_like_the_zoo(mynets):
    cfg = compose_cfg(*TINY, "model=custom", "model.target=mynets.TinyNet", "+model.args.width=16")
    run.validate(cfg)
    options = run.model_options(cfg.model)
    model = create_model("custom", num_classes=10, in_channels=1, **options)
    assert measure.count_params(model)[0] == tiny_net_params(16, 10, 1)  # num_classes and in_channels passed
    assert get_model_info("custom").min_input(in_channels=1, **options) == 2  # 1 px fails at the max-pool
    # MACs per image at 32 px, by hand: conv1 32*32*16*9, conv2 16*16*32*16*9, the classifier 32*10
    assert measure.count_macs(lambda: create_model("custom", num_classes=10, in_channels=1, **options),
                              (1, 32, 32)) == 32 * 32 * 16 * 9 + 16 * 16 * 32 * 16 * 9 + 32 * 10
    assert "custom" not in list_models() and "custom" in list_models(external=True)  # `cnnbench models`: the zoo


def test_a_factory_without_num_classes_trains_and_the_record_says_what_ran(mynets):
    r = run.train(compose_cfg(*TINY, "model=custom", "model.target=mynets.fixed", "dataset.num_classes=10"),
                  mynets.parent / "run")
    assert r["status"] == "completed" and r["model"] == "mynets.fixed"
    assert r["params"] == 4 * 25 + 4 + 4 * 28 * 28 * 10 + 10  # the lazy classifier sized by a first forward at 32 px
    source = r["model_source"]
    assert source["target"] == "mynets.fixed" and source["file"] == str(mynets)
    assert source["sha256"] == hashlib.sha256(mynets.read_bytes()).hexdigest()
    assert source["passed"] == [] and source["not_passed"] == ["num_classes", "in_channels"]


def test_resume_with_the_same_source_goes_on_and_with_a_changed_one_is_refused(mynets):
    run_dir = mynets.parent / "run"
    common = [*TINY, "model=custom", "model.target=mynets.TinyNet"]
    run.train(compose_cfg(*common, "trainer.epochs=1"), run_dir)
    mynets.write_text(MYNETS + "\n# the same network, another file\n")
    with pytest.raises(CnnbenchError, match=r"is now another file \(SHA-256 .*resuming would mix two networks"):
        run.check_run_dir(compose_cfg(*common, "trainer.epochs=2", "trainer.resume=true"), run_dir)
    mynets.write_text(MYNETS)  # put back as it was
    assert run.train(compose_cfg(*common, "trainer.epochs=2", "trainer.resume=true"), run_dir)["epochs"] == 2


def test_a_torchvision_classifier_has_torchvision_s_own_parameter_count():
    for arch, channels in (("resnet18", 3), ("mobilenet_v3_small", 1)):
        with torch.device("meta"):
            ours = create_model("torchvision", num_classes=10, in_channels=channels, arch=arch)
            theirs = torchvision.models.get_model(arch, weights=None, num_classes=10)
        assert measure.count_params(ours)[0] == sum(p.numel() for p in theirs.parameters())
    cfg = compose_cfg(*TINY, "model=torchvision", "model.arch=mobilenet_v3_small")  # 1-channel images
    run.validate(cfg)
    assert run.image_size_for(cfg) == 32 and get_model_info("torchvision").min_input(arch="resnet18") == 1


def test_torchvision_s_own_weights_load_with_a_new_classifier(tmp_path):
    """model.weights=PATH as for the zoo: a 1000-class file into a 10-class network, fc re-initialised."""
    from cnnbench.models import weights

    torch.save(torchvision.models.resnet18(num_classes=1000).state_dict(), tmp_path / "r18.pth")

    def build():
        return create_model("torchvision", num_classes=10, in_channels=3, arch="resnet18")

    model = build()
    heads = weights.final_layers(build, (3, 32, 32))
    assert heads == ["fc"] and weights.load_weights(model, str(tmp_path / "r18.pth"), heads) == ["fc.bias", "fc.weight"]
    assert torch.equal(model.conv1.weight, torch.load(tmp_path / "r18.pth", weights_only=True)["conv1.weight"])


def test_a_timm_model_has_timm_s_own_parameter_count():
    timm = pytest.importorskip("timm")
    with torch.device("meta"):
        ours = create_model("timm", num_classes=10, in_channels=1, arch="resnet10t")
        theirs = timm.create_model("resnet10t", pretrained=False, num_classes=10, in_chans=1)
    assert measure.count_params(ours)[0] == sum(p.numel() for p in theirs.parameters())
    run.validate(compose_cfg(*TINY, "model=timm", "model.arch=resnet10t"))


def test_a_mixed_sweep_is_one_comparison(mynets):
    sweep = mynets.parent / "sweep"
    r = cnnbench("train", "-m", *TINY, "model=lenet5,custom", "+per_model.custom.target=mynets.TinyNet",
                 f"hydra.sweep.dir={sweep}", cwd=mynets.parent)
    assert r.returncode == 0, r.stderr
    assert read_results(sweep / "model=custom")["model_source"]["file"] == str(mynets)
    table = cnnbench("compare", str(sweep), "--columns", "run,model,params", cwd=mynets.parent)
    assert table.returncode == 0
    rows = [line for line in (sweep / "comparison.md").read_text().splitlines() if line.startswith("| model=")]
    assert sorted(rows) == [f"| model=custom | mynets.TinyNet | {tiny_net_params(8, 10, 1):,} |",
                            "| model=lenet5 | lenet5 | 61,706 |"]


def test_models_describes_a_custom_network(mynets, capsys):
    assert cli.main(["models", "--custom", "mynets.TinyNet", "--arg", "width=16", "--input", "1x28x28",
                     "--classes", "10"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert f"{tiny_net_params(16, 10, 1):,}" in out and "given num_classes, in_channels" in out
    assert "smallest input │ 2 px" in out and str(mynets) in out and "MiB kept for backward" in out


BAD = [  # (overrides, the start of the message)
    (["model=custom"], "model=custom needs model.target=MODULE.NAME"),
    (["model=custom", "model.target=nomod.Net"], "model.target=nomod.Net: no module 'nomod' in the current folder"),
    (["model=custom", "model.target=mynets.TinyNt"], "has no 'TinyNt' (did you mean mynets.TinyNet?)"),
    (["model=custom", "model.target=mynets.NOT_A_MODEL"], "model.target=mynets.NOT_A_MODEL names 42, not an nn.Module"),
    (["model=custom", "model.target=mynets.not_a_module"], "model.target=mynets.not_a_module gave a str, not a "
                                                          "torch.nn.Module"),
    (["model=custom", "model.target=mynets.Raises"], "mynets.Raises() raised ValueError: depth must be even, got 3"),
    (["model=custom", "model.target=mynets.SevenClasses"],
     "model.target=mynets.SevenClasses returns (2, 7) for a batch of 2 images of 32 px; cnnbench trains classifiers, "
     "whose output is (batch, classes) = (2, 10)"),
    (["model=torchvision", "model.arch=resnet181"], "has no classification model of that name (did you mean "
                                                    "resnet18 or"),
    (["model=timm", "model.arch=resnet10x"], "model.arch=resnet10x: timm"),
    (["model=lenet5", "model.target=mynets.TinyNet"], "model.target does not apply to lenet5"),
]


@pytest.mark.parametrize("overrides,message", BAD, ids=[" ".join(o) for o, _ in BAD])
def test_each_bad_network_is_refused_before_a_run_folder_is_written(overrides, message, mynets, capsys):
    if overrides[0] == "model=timm":
        pytest.importorskip("timm")
    code = cli.main(["train", *TINY, *overrides, f"hydra.run.dir={mynets.parent / 'run'}"])
    err = " ".join(capsys.readouterr().err.split())
    assert code == 2 and message in err and "Traceback" not in err, err
    assert not (mynets.parent / "run").exists()


def test_a_missing_timm_is_named_with_the_install_command(mynets, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "timm", None)  # import timm raises ImportError, as where it is not installed
    assert cli.main(["train", *TINY, "model=timm", "model.arch=resnet10t"]) == 2
    assert "model=timm needs the timm package, which is not installed. Install it with `pip install " \
           "'cnnbench[timm]'`" in " ".join(capsys.readouterr().err.split())
