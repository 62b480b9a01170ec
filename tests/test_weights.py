"""Transfer learning: torchvision's files load, the classifier adapts, the backbone freezes, and
a file that does not fit (or holds code) is refused with the reason."""

import pytest
import torch
import torchvision

from conftest import TINY, cnnbench, compose_cfg, read_results

from cnnbench import run
from cnnbench.errors import CnnbenchError
from cnnbench.models import create_model, weights


def heads_of(name, shape=(3, 32, 32), **kw):
    return weights.final_layers(lambda: create_model(name, **kw), shape)


def test_final_layers_found_by_running_the_model():
    assert heads_of("resnet18") == ["fc"]
    assert heads_of("lenet5", (1, 32, 32)) == ["classifier.3"]
    assert heads_of("googlenet") == ["fc", "aux1", "aux2"]
    assert heads_of("vgg11", (3, 32, 32))[0].startswith("classifier.")


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v2", "densenet121"])
def test_torchvision_file_loads_and_gives_the_same_outputs(tmp_path, name):
    theirs = getattr(torchvision.models, name)().eval()
    state = theirs.state_dict()
    if name == "densenet121":  # the released files use the old key names: save them that way
        state = {k.replace("norm1.", "norm.1.").replace("conv1.", "conv.1.").replace("norm2.", "norm.2.")
                 .replace("conv2.", "conv.2.") if "denselayer" in k else k: v for k, v in state.items()}
    torch.save(state, tmp_path / "w.pth")
    ours = create_model(name)
    assert weights.load_weights(ours, str(tmp_path / "w.pth"), heads_of(name)) == []
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(ours.eval()(x), theirs(x), atol=1e-5)


def test_new_class_count_reinitialises_only_the_classifier(tmp_path):
    source = torchvision.models.resnet18()
    torch.save(source.state_dict(), tmp_path / "w.pth")
    ours = create_model("resnet18", num_classes=7)
    reinit = weights.load_weights(ours, str(tmp_path / "w.pth"), heads_of("resnet18", num_classes=7))
    assert reinit == ["fc.bias", "fc.weight"]
    assert torch.equal(ours.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert ours.fc.weight.shape == (7, 512)


def test_freeze_backbone_trains_only_the_head():
    model = create_model("resnet18", num_classes=5)
    weights.freeze_backbone(model, ["fc"])
    assert [n for n, p in model.named_parameters() if p.requires_grad] == ["fc.weight", "fc.bias"]
    model.train()
    assert not model.bn1.training and model.fc.training  # loaded statistics are kept
    before = model.bn1.running_mean.clone()
    model(torch.randn(4, 3, 32, 32))
    assert torch.equal(model.bn1.running_mean, before)


def test_a_file_that_does_not_fit_lists_the_keys(tmp_path):
    torch.save(torchvision.models.resnet34().state_dict(), tmp_path / "r34.pth")
    with pytest.raises(CnnbenchError, match=r"does not fit this model: unexpected \d+ \(layer1.2"):
        weights.load_weights(create_model("resnet18"), str(tmp_path / "r34.pth"), ["fc"])


class NotATensor:  # pickled as code, which weights_only=True refuses to run
    pass


def test_a_file_holding_pickled_code_is_refused(tmp_path):
    torch.save({"fc.weight": NotATensor()}, tmp_path / "evil.pth")
    with pytest.raises(CnnbenchError, match="refused: it is not a plain state dict"):
        weights.read_state_dict(str(tmp_path / "evil.pth"))


def test_train_from_weights_with_frozen_backbone_end_to_end(tmp_path):
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "w.pth")
    run_dir = tmp_path / "run"
    tiny = [a for a in TINY if not a.startswith("dataset.in_channels") and "mean" not in a and "std" not in a]
    r = cnnbench("train", *tiny, "model=resnet18", "model.stem=imagenet", f"model.weights={tmp_path / 'w.pth'}",
                 "model.freeze=backbone", "trainer.checkpoint=false", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = read_results(run_dir)
    assert res["params"] == 11_181_642 and res["trainable_params"] == 512 * 10 + 10
    assert "new 10-class classifier: fc.bias, fc.weight" in r.stdout


def test_missing_weights_file_is_refused_before_work():
    with pytest.raises(CnnbenchError, match="model.weights=nope.pth: no such file"):
        run.validate(compose_cfg("model=resnet18", "model.weights=nope.pth"))
