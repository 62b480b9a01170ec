"""The model zoo, parametrised over the registry: every architecture has its paper's parameter
count and cost, trains at its smallest input, refuses anything smaller, has a config file, and
the torchvision-compatible families load torchvision's weights and compute the same function.

Counting runs on the meta device (shapes only, no memory, no arithmetic); the rest on the CPU."""

import functools
import inspect
from pathlib import Path

import pytest
import torch
import torch.nn as nn
import torchvision
from omegaconf import OmegaConf
from torch.utils.flop_counter import FlopCounterMode

from conftest import on_meta

from cnnbench.measure import count_macs, count_params
from cnnbench.models import create_model, get_model_info, list_models
from cnnbench.models.layers import LocalResponseNorm

CONF_MODEL = Path(__file__).resolve().parents[1] / "conf" / "model"

# Parameters at the paper's input and classes (ModelInfo.default_input / default_classes).
PARAMS = {
    "lenet5": 61_706,
    "alexnet": 62_378_344, "alexnet_tv": 61_100_840,
    "vgg11": 132_863_336, "vgg13": 133_047_848, "vgg16": 138_357_544, "vgg19": 143_667_240,
    "vgg11_bn": 132_868_840, "vgg13_bn": 133_053_736, "vgg16_bn": 138_365_992, "vgg19_bn": 143_678_248,
    "googlenet": 13_004_888,  # with the auxiliary heads; 6,624,904 without (below)
    "resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
    "resnet101": 44_549_160, "resnet152": 60_192_808,
    "resnet20": 269_722, "resnet32": 464_154, "resnet44": 658_586, "resnet56": 853_018,
    "resnet110": 1_727_962,
    # option A shortcuts have no parameters, so the plain nets have exactly the ResNets' count
    "plain20": 269_722, "plain32": 464_154, "plain44": 658_586, "plain56": 853_018, "plain110": 1_727_962,
    "densenet121": 7_978_856, "densenet169": 14_149_480, "densenet201": 20_013_928,
    "mobilenet_v1": 4_231_976, "mobilenet_v2": 3_504_872,
}

# Multiply-accumulates at 224 px, 1000 classes, in G (torchvision's figures; MobileNet v1: paper).
MACS = {"alexnet_tv": 0.714, "vgg16": 15.470, "googlenet": 1.498, "resnet18": 1.814, "resnet50": 4.089,
        "densenet121": 2.834, "mobilenet_v1": 0.5687, "mobilenet_v2": 0.301}

# cnnbench name -> torchvision builder, for the families that keep torchvision's parameter names.
TORCHVISION = {"alexnet_tv": "alexnet", "googlenet": "googlenet", "mobilenet_v2": "mobilenet_v2",
               **{n: n for n in list_models("vgg*") + list_models("densenet*")
                  + ["resnet18", "resnet34", "resnet50", "resnet101", "resnet152"]}}
# ... of which these are also run, at a small input, to compare outputs.
SAME_OUTPUTS = {"alexnet_tv": 63, "vgg11_bn": 32, "googlenet": 32, "densenet121": 32, "mobilenet_v2": 32,
                "resnet18": 32, "resnet50": 32}

# Forward/backward is run for every model with its defaults and, for these, with stem=small too.
SMALL_STEM = ["vgg11_bn", "densenet121", "mobilenet_v1", "mobilenet_v2", "resnet18"]


# where the other tasks' models are tested
TASK_TESTS = "test_segmentation_models.py, test_detection.py, test_rcnn.py, test_yolo.py, test_ssd.py"
pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest.one_thread)


@functools.lru_cache(maxsize=None)
def meta_model(name: str, stem=None) -> nn.Module:
    """The model at its paper's classes and input channels, on the meta device, built once."""
    info = get_model_info(name)
    options = {"stem": stem} if stem else {}
    return on_meta(name, num_classes=info.default_classes, in_channels=info.default_input[0], **options)


def shapes_only(name: str, options: dict) -> bool:
    # VGG's 103 M-weight first FC layer makes each real run cost seconds (memory traffic, not
    # arithmetic). vgg11_bn runs for real; the other VGGs, which share every line of its code, run
    # on the meta device: their shapes and gradient flow are checked, their values are not.
    return name.startswith("vgg") and (name, options) != ("vgg11_bn", {})


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def macs(model: nn.Module, size: int = 224) -> float:
    """Multiply-accumulates of one eval-mode forward pass (FLOPs / 2)."""
    with FlopCounterMode(display=False) as counter:
        model.eval()(torch.zeros(1, 3, size, size, device=next(model.parameters()).device))
    return counter.get_total_flops() / 2


def torchvision_model(name: str, **kwargs) -> nn.Module:
    builder = getattr(torchvision.models, TORCHVISION[name])
    if name == "googlenet":
        kwargs.update(aux_logits=True, init_weights=True)
    return builder(weights=None, **kwargs)


# --- size and cost ------------------------------------------------------------------------------

def classifier(name: str) -> bool:
    # segmentation models' counts, shapes and steps are checked in test_segmentation_models.py
    return get_model_info(name).task == "classification"


def test_every_registered_model_has_a_parameter_count_here():
    assert sorted(PARAMS) == sorted(n for n in list_models() if classifier(n))


@pytest.mark.parametrize("name", list_models())
def test_parameter_count(name):
    if not classifier(name):
        pytest.skip(f"not a classifier: its count is in its task's tests ({TASK_TESTS})")
    assert n_params(meta_model(name)) == PARAMS[name]


def test_googlenet_parameters_without_auxiliary_heads():
    assert n_params(on_meta("googlenet", aux_logits=False)) == 6_624_904


@pytest.mark.parametrize("name", sorted(MACS))
def test_macs_at_224px(name):
    assert macs(meta_model(name)) / 1e9 == pytest.approx(MACS[name], rel=0.01)


@pytest.mark.parametrize("alpha, params, mmacs", [(0.75, 2.6e6, 325), (0.5, 1.3e6, 149), (0.25, 0.5e6, 41)])
def test_mobilenet_v1_width_multiplier_matches_table_6(alpha, params, mmacs):
    model = on_meta("mobilenet_v1", alpha=alpha)
    assert n_params(model) == pytest.approx(params, abs=0.05e6)  # the paper rounds to 0.1 M
    assert macs(model) / 1e6 == pytest.approx(mmacs, rel=0.02)



def test_mobilenet_v1_without_separable_convolutions_is_table_4s_conv_mobilenet():
    # Table 4: "Conv MobileNet" (full 3x3 convolutions) 29.3 M parameters, 4866 M mult-adds; the
    # separable one 4.2 M and 569 M. The gap is the factoring's saving (section 3.1, equation 5).
    def build():
        return create_model("mobilenet_v1", separable=False)

    params, *_ = count_params(on_meta("mobilenet_v1", separable=False))
    conv_macs = count_macs(build, (3, 224, 224))
    assert (params, conv_macs) == (29_294_088, 4_867_293_184)
    assert params == pytest.approx(29.3e6, rel=0.01) and conv_macs == pytest.approx(4866e6, rel=0.01)
    separable_macs = count_macs(lambda: create_model("mobilenet_v1"), (3, 224, 224))
    assert 8 < conv_macs / separable_macs < 9  # "8 to 9 times less computation" (section 3.1)

# --- training at the smallest input -------------------------------------------------------------

FORWARD_CASES = [(n, {}) for n in list_models()] + [(n, {"stem": "small"}) for n in SMALL_STEM]
FORWARD_IDS = [f"{n}{'-small' if o else ''}" for n, o in FORWARD_CASES]


@pytest.mark.parametrize("name, options", FORWARD_CASES, ids=FORWARD_IDS)
def test_forward_backward_at_min_size(name, options):
    if not classifier(name):
        pytest.skip(f"not a classifier: its output is checked in its task's tests ({TASK_TESTS})")
    torch.manual_seed(0)
    info = get_model_info(name)
    size = info.min_input(**options)
    device = torch.device("meta" if shapes_only(name, options) else "cpu")
    with device:
        model = create_model(name, num_classes=3, **options).train()
    out = model(torch.randn(2, info.default_input[0], size, size, device=device))
    outputs = [out[0], *out[1]] if isinstance(out, tuple) else [out]  # GoogLeNet: auxiliary heads
    for o in outputs:
        assert o.shape == (2, 3)
        assert device.type == "meta" or o.isfinite().all()
    sum(o.square().mean() for o in outputs).backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{pname} got no gradient"
        assert device.type == "meta" or p.grad.sum().isfinite(), f"{pname}: non-finite gradient"


@pytest.mark.parametrize("name, options", FORWARD_CASES, ids=FORWARD_IDS)
def test_min_size_is_tight(name, options):
    info = get_model_info(name)
    size = info.min_input(**options)
    if size == 1 or info.family == "resnet":
        # ResNet declares the size whose last stage is 1x1 (32 px, 8 with the small stem): a
        # choice, since padding lets its forward run smaller. Nothing to refuse below 1 px.
        pytest.skip("no tighter minimum to check")
    model = meta_model(name, **options).eval()
    with pytest.raises(RuntimeError):
        model(torch.zeros(1, info.default_input[0], size - 1, size - 1, device="meta"))


def test_googlenet_auxiliary_outputs_only_in_training():
    torch.manual_seed(0)
    model = create_model("googlenet", num_classes=4)
    x = torch.randn(2, 3, 32, 32)
    logits, aux = model.train()(x)
    assert logits.shape == (2, 4) and [a.shape for a in aux] == [(2, 4), (2, 4)]
    out = model.eval()(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 4)
    out.sum().backward()  # in eval the auxiliary heads are not run, so get no gradient
    for pname, p in model.named_parameters():
        assert (p.grad is None) == pname.startswith(("aux1.", "aux2.")), pname
    plain = create_model("googlenet", num_classes=4, aux_logits=False).train()
    assert isinstance(plain(x), torch.Tensor)
    assert not any(n.startswith("aux") for n, _ in plain.named_parameters())


def test_local_response_norm_is_the_papers_formula():
    # Krizhevsky et al. 2012, section 3.3: b_i = a_i / (k + alpha * sum_{|j - i| <= n/2} a_j^2)^beta
    a = torch.randn(1, 8, 3, 3) * 30  # large enough that the normalisation matters
    k, n, alpha, beta = 2.0, 5, 1e-4, 0.75
    window = [a[:, max(0, i - n // 2):i + n // 2 + 1].square().sum(1) for i in range(8)]
    expected = torch.stack([a[:, i] / (k + alpha * window[i]) ** beta for i in range(8)], 1)
    torch.testing.assert_close(LocalResponseNorm()(a), expected)


# --- torchvision compatibility --------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(TORCHVISION))
def test_torchvision_state_dict_loads_strictly(name):
    with torch.device("meta"):
        theirs = torchvision_model(name)
    meta_model(name).load_state_dict(theirs.state_dict(), strict=True)  # raises on any key mismatch


@pytest.mark.parametrize("name", sorted(SAME_OUTPUTS))
def test_same_outputs_as_torchvision(name):
    torch.manual_seed(0)
    theirs = torchvision_model(name, num_classes=7)
    for m in theirs.modules():  # non-trivial statistics and affines, so a wrong eps or order shows
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.normal_(0, 0.2)
            m.running_var.uniform_(0.5, 2.0)
            nn.init.normal_(m.weight, 1.0, 0.2)
            nn.init.normal_(m.bias, 0.0, 0.2)
    ours = on_meta(name, num_classes=7)
    ours.load_state_dict(theirs.state_dict(), strict=True, assign=True)  # takes their tensors
    x = torch.randn(2, 3, SAME_OUTPUTS[name], SAME_OUTPUTS[name])
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), theirs.eval()(x), rtol=1e-4, atol=1e-5)


# --- configuration --------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list_models())
def test_config_file_states_the_builders_defaults(name):
    path = CONF_MODEL / f"{name}.yaml"
    assert path.exists(), f"conf/model/{name}.yaml is missing"
    conf = OmegaConf.to_container(OmegaConf.load(path))
    assert conf.pop("name") == name
    defaults = {k: p.default for k, p in inspect.signature(get_model_info(name).builder).parameters.items()}
    assert sorted(conf) == sorted(get_model_info(name).options)  # every option, nothing else
    assert conf == {k: defaults[k] for k in conf}
