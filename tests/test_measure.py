"""Costs: MACs, activation bytes, parameter bytes."""

import torch
import torch.nn as nn

from cnnbench import measure


def test_macs_of_a_convolution_and_a_linear_layer():
    def build():
        return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Flatten(), nn.Linear(8 * 10 * 10, 5))

    # conv: 8 outputs x 10 x 10 positions x (3 x 3 x 3) MACs; linear: 800 x 5
    assert measure.count_macs(build, (3, 10, 10)) == 8 * 100 * 27 + 800 * 5


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
