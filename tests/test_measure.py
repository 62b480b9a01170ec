"""Costs: MACs, activation bytes, parameter bytes."""

import time

import pytest
import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from cnnbench import measure
from cnnbench.models import create_model, get_model_info, list_models
from cnnbench.models.im2col import Im2colConv2d


def test_macs_of_a_convolution_and_a_linear_layer():
    def build():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 10 * 10, 5))

    # conv: 8 outputs x 10 x 10 positions x (3 x 3 x 3) MACs; linear: 800 x 5
    assert measure.count_macs(build, (3, 10, 10)) == 8 * 100 * 27 + 800 * 5


class Scale(nn.Module):
    """x * s with a learnable scalar: no MACs, but what follows it now needs its input's gradient,
    as every layer after a network's first does."""

    def __init__(self):
        super().__init__()
        self.s = nn.Parameter(torch.ones(()))

    def forward(self, x):
        return x * self.s


# (layer, input (C, H, W), forward MACs per image written out). A convolution: output positions x
# output channels x (input channels / groups) x kernel taps; a transposed convolution applies its
# kernel at each *input* position: input positions x input channels x (output channels / groups)
# x taps; out = (size + 2 padding - dilation (kernel - 1) - 1) // stride + 1 (torch.nn.Conv2d docs).
LAYERS = {
    "conv": (lambda: nn.Conv2d(4, 6, 3, padding=1), (4, 10, 10), 10 * 10 * 6 * 4 * 9),
    # out = (11 + 4 - 4 - 1) // 2 + 1 = 6
    "conv_strided_padded_dilated": (lambda: nn.Conv2d(4, 6, 3, stride=2, padding=2, dilation=2), (4, 11, 11),
                                    6 * 6 * 6 * 4 * 9),
    "conv_groups2": (lambda: nn.Conv2d(4, 6, 3, groups=2), (4, 10, 10), 8 * 8 * 6 * 2 * 9),
    "conv_depthwise": (lambda: nn.Conv2d(6, 6, 3, padding=1, groups=6, bias=False), (6, 10, 10), 10 * 10 * 6 * 1 * 9),
    "conv_transpose": (lambda: nn.ConvTranspose2d(4, 6, 4, stride=2, padding=1), (4, 5, 5), 5 * 5 * 4 * 6 * 16),
    "conv_transpose_groups2": (lambda: nn.ConvTranspose2d(4, 6, 3, stride=2, groups=2, output_padding=1), (4, 5, 5),
                               5 * 5 * 4 * 3 * 9),
    "linear": (lambda: nn.Linear(20, 7), (20,), 20 * 7),
}


@pytest.mark.parametrize("first", [True, False], ids=["first_layer", "inner_layer"])
@pytest.mark.parametrize("name", LAYERS)
def test_forward_backward_and_layer_macs_match_the_analytic_count(name, first):
    layer, shape, macs = LAYERS[name]
    build = (lambda: nn.Sequential(layer())) if first else (lambda: nn.Sequential(Scale(), layer()))
    assert measure.count_macs(build, shape) == macs
    # Backward of a convolution or linear layer: the input gradient and the weight gradient, each a
    # product as large as the forward's (dX = W^T dY, dW = dY X^T; Hobbhahn & Sevilla 2021, "What's
    # the backward-forward FLOP ratio for neural networks?"); no input gradient for the image.
    assert measure.count_train_macs(build, shape) == (2 if first else 3) * macs
    rows = measure.layer_table(build, shape)  # the layer is the last row; Scale's counts nothing
    assert rows[-1]["macs"] == macs == sum(row["macs"] for row in rows)


@pytest.mark.parametrize("groups", [1, 2, 8])
def test_conv_backward_matches_its_im2col_products(groups):
    # Im2colConv2d computes forward and backward as explicit matrix products, which the flop counter
    # counts right: an independent check of the convolution backward formula, grouped or not.
    def build(conv):
        return lambda: nn.Sequential(Scale(), conv(8, 8, 3, padding=1, groups=groups))

    assert measure.count_train_macs(build(Im2colConv2d), (8, 6, 6)) == \
        measure.count_train_macs(build(nn.Conv2d), (8, 6, 6)) == 3 * 6 * 6 * 8 * (8 // groups) * 9


def test_mobilenet_v2_trains_at_three_times_its_forward_less_the_first_layer():
    # torch's own formula counted its depthwise layers' weight gradients groups times over: 20.4x
    def build():
        return create_model("mobilenet_v2")

    forward, train = measure.count_macs(build, (3, 224, 224)), measure.count_train_macs(build, (3, 224, 224))
    stem = measure.layer_table(build, (3, 224, 224))[0]  # 3x3 stride-2 conv on the image: no input gradient
    assert stem["name"] == "features.0.0" and stem["macs"] == 112 * 112 * 32 * 3 * 9
    assert train == 3 * forward - stem["macs"] and 2.5 < train / forward < 3


def _train_mode_forward_macs(model: nn.Module, shape) -> int:
    with FlopCounterMode(display=False) as counter:  # auxiliary heads included, as in count_train_macs
        model.train()(torch.empty(2, *shape, device="meta"))
    return counter.get_total_flops() // 2 // 2  # per image; 1 MAC = 2 FLOPs


# One model per family, the first registered (reversed: the last write wins): every block type in
# the zoo in about 3 s; the whole registry takes 11 s on 2 cores.
FAMILIES = list({get_model_info(name).family: name for name in reversed(list_models())}.values())


@pytest.mark.parametrize("name", FAMILIES)
def test_every_family_trains_at_three_times_its_forward(name):
    info = get_model_info(name)
    if info.task == "detection":  # training samples 2,000 proposals, evaluation keeps 300: other work
        pytest.skip("a detector's training forward is not its evaluation forward")
    shape = (info.default_input[0], info.min_input(), info.min_input())
    with torch.device("meta"):
        model = nn.Sequential(Scale(), create_model(name))  # every layer needs its input's gradient
    fixed = [(m, n) for m in model.modules() for n, b in m.named_buffers(recurse=False) if b.dim() == 4]
    for module, buffer in fixed:  # FCN's up-sampling fixed to bilinear: a weight, but no gradient to compute
        weight = module._buffers.pop(buffer)
        setattr(module, buffer, nn.Parameter(weight))  # trainable here, so backward = 2 x forward holds
    # backward = 2 x forward exactly, so only convolutions and matrix products are counted, all right
    assert measure.count_train_macs(lambda: model, shape) == 3 * _train_mode_forward_macs(model, shape)


def test_activation_bytes_count_saved_tensors_once_without_parameters():
    def build():
        return nn.Sequential(nn.Linear(100, 50), nn.ReLU(), nn.Linear(50, 10))

    # Saved for backward, per image: the input of each Linear (100 and 50 floats) and ReLU's
    # output, which is the second Linear's input (one storage, counted once).
    assert measure.activation_bytes(build, (100,), batch=4) == 4 * (100 + 50)


def test_count_params_and_bytes():
    model = nn.Linear(10, 3)
    model.bias.requires_grad_(False)
    assert measure.count_params(model) == (33, 30, 132, 0)


def test_training_only_heads_are_counted_apart():
    from cnnbench.models import create_model

    with torch.device("meta"):
        params, trainable, _, aux = measure.count_params(create_model("googlenet"))
    assert (params, trainable, aux) == (6_624_904, 6_624_904, 13_004_888 - 6_624_904)


def test_environment_names_the_versions():
    env = measure.environment(torch.device("cpu"))
    assert env["torch"] == torch.__version__ and env["device"] == "cpu" and env["cuda"] is None


def test_threads_and_workers_are_chosen_for_the_cores_and_the_load():
    default = measure._TORCH_THREADS
    assert measure.compute_threads(2, others=0) == min(default, 2)
    assert measure.compute_threads(16, others=0) == min(default, 16)
    assert measure.compute_threads(2, others=3) == 1  # three busy threads on 2 cores: one thread
    assert measure.data_workers("cpu", 2) == 0  # 2 cores: no workers
    assert measure.data_workers("cpu", 16) == 4  # a quarter decode
    assert measure.data_workers("cuda", 16) == 8  # workers feed the GPU
    assert measure.data_workers("cpu", 2, asked=5) == 2  # given: kept, capped at the cores


def test_other_processes_ready_to_run_are_seen_and_ours_are_not():
    import subprocess
    import sys

    if measure.other_runnable() is None:
        pytest.skip("no /proc/loadavg here")
    spin = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.3)  # started and spinning
        assert measure.other_runnable() >= 1
    finally:
        spin.kill()
        spin.wait()
