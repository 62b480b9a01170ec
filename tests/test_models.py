"""LeNet-5 and ResNet: the paper's counts, torchvision's layout, options, the registry."""

import pytest
import torch
import torchvision

from cnnbench.errors import CnnbenchError
from cnnbench.measure import count_macs
from cnnbench.models import create_model, get_model_info, list_models


@pytest.mark.parametrize("name,params", [("resnet18", 11_689_512), ("resnet34", 21_797_672),
                                         ("resnet50", 25_557_032), ("resnet101", 44_549_160),
                                         ("resnet152", 60_192_808)])
def test_resnet_parameter_counts_match_the_paper(name, params):
    with torch.device("meta"):
        assert sum(p.numel() for p in create_model(name).parameters()) == params


def test_resnet50_macs_at_224_px():
    macs = count_macs(lambda: create_model("resnet50"), (3, 224, 224))
    assert abs(macs / 4.089e9 - 1) < 0.01  # torchvision's published 4.09 GMACs


def test_lenet5_has_61706_parameters_and_classic_variant():
    model = create_model("lenet5", num_classes=10)
    assert sum(p.numel() for p in model.parameters()) == 61_706
    classic = create_model("lenet5", classic=True)
    assert any(isinstance(m, torch.nn.Tanh) for m in classic.modules())
    assert any(isinstance(m, torch.nn.AvgPool2d) for m in classic.modules())
    assert create_model("lenet5")(torch.randn(2, 1, 32, 32)).shape == (2, 10)


@pytest.mark.parametrize("name", ["resnet18", "resnet50"])
def test_resnet_matches_torchvision_weights_and_outputs(name):
    ours, theirs = create_model(name).eval(), getattr(torchvision.models, name)().eval()
    ours.load_state_dict(theirs.state_dict())  # strict: every key has the same name and shape
    x = torch.randn(1, 3, 64, 64)
    assert torch.allclose(ours(x), theirs(x), atol=1e-5)


@pytest.mark.parametrize("norm", ["batch", "layer", "instance", "group", "none"])
def test_resnet_norm_and_small_stem(norm):
    model = create_model("resnet18", num_classes=7, in_channels=1, norm=norm, stem="small")
    size = get_model_info("resnet18").min_input(stem="small", norm=norm)
    out = model(torch.randn(2, 1, size, size))  # the smallest input it accepts
    out.sum().backward()
    assert out.shape == (2, 7) and torch.isfinite(out).all()
    assert all(p.grad is not None for p in model.parameters())
    assert get_model_info("resnet18").min_input(stem="small") == 8
    assert get_model_info("resnet18").min_input() == 32


def test_zero_init_residual_starts_blocks_as_identity():
    model = create_model("resnet50", zero_init_residual=True)
    assert all(b.bn3.weight.detach().abs().sum() == 0 for stage in (model.layer1, model.layer4) for b in stage)


def test_registry_lists_and_refuses():
    assert list_models("resnet1*")[:2] == ["resnet18", "resnet101"]
    with pytest.raises(CnnbenchError, match="Unknown model 'resnet19'. Known models: .*lenet5"):
        create_model("resnet19")
    with pytest.raises(CnnbenchError, match="has no option classic"):
        create_model("resnet18", classic=True)
