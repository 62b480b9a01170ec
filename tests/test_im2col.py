"""The im2col reference convolution: agrees with F.conv2d forward and backward, passes gradcheck,
and trains LeNet-5 through the real command as model.conv_impl=im2col."""

import itertools

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from cnnbench.measure import count_macs
from cnnbench.models import create_model
from cnnbench.models.im2col import Im2colConv2d, im2col_conv2d

from conftest import TINY, cnnbench, read_results


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """These tensors are tiny: a second OpenMP thread only adds synchronisation (tens of ms per
    op on a busy 2-core machine), not speed."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# (in channels, out channels, groups): full, two groups, depthwise, depthwise with multiplier 2
GROUPINGS = {"g1": (4, 6, 1), "g2": (4, 6, 2), "depthwise": (4, 4, 4), "depthwise_x2": (4, 8, 4)}
GRID = list(itertools.product([1, 2], [0, 1, 2], GROUPINGS, [1, 3, 5], [1, 3]))


def conv_and_grads(conv, x, w, b, grad_y, **geometry):
    """Output and (dx, dw, db) of conv for the upstream gradient grad_y."""
    y = conv(x, w, b, **geometry)
    return (y, *torch.autograd.grad(y, (x, w, b), grad_y))


@pytest.mark.parametrize("stride, padding, grouping, kernel, batch", GRID,
                         ids=[f"s{s}-p{p}-{g}-k{k}-b{n}" for s, p, g, k, n in GRID])
def test_matches_conv2d_forward_and_backward(stride, padding, grouping, kernel, batch):
    c_in, c_out, groups = GROUPINGS[grouping]
    gen = torch.Generator().manual_seed(hash((stride, padding, grouping, kernel, batch)) % 2**31)
    x = torch.randn(batch, c_in, 11, 8, generator=gen, dtype=torch.float64, requires_grad=True)  # non-square
    w = torch.randn(c_out, c_in // groups, kernel, kernel, generator=gen, dtype=torch.float64, requires_grad=True)
    b = torch.randn(c_out, generator=gen, dtype=torch.float64, requires_grad=True)
    geometry = dict(stride=stride, padding=padding, groups=groups)
    expected = F.conv2d(x, w, b, **geometry)
    grad_y = torch.randn(expected.shape, generator=gen, dtype=torch.float64)  # not ones: every weight counts
    ours = conv_and_grads(im2col_conv2d, x, w, b, grad_y, **geometry)
    theirs = conv_and_grads(F.conv2d, x, w, b, grad_y, **geometry)
    for name, a, e in zip(("output", "input grad", "weight grad", "bias grad"), ours, theirs):
        assert a.shape == e.shape, name
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10, msg=name)


@pytest.mark.parametrize("dilation, stride, padding", [((2, 1), (1, 2), (2, 0)), (2, 3, 1), (3, 1, 3)])
def test_matches_conv2d_with_dilation_and_asymmetric_geometry(dilation, stride, padding):
    x = torch.randn(2, 6, 13, 10, dtype=torch.float64, requires_grad=True)
    w = torch.randn(9, 2, 3, 2, dtype=torch.float64, requires_grad=True)  # non-square kernel, 3 groups
    b = torch.randn(9, dtype=torch.float64, requires_grad=True)
    geometry = dict(stride=stride, padding=padding, dilation=dilation, groups=3)
    grad_y = torch.randn(F.conv2d(x, w, b, **geometry).shape, dtype=torch.float64)
    for a, e in zip(conv_and_grads(im2col_conv2d, x, w, b, grad_y, **geometry),
                    conv_and_grads(F.conv2d, x, w, b, grad_y, **geometry)):
        torch.testing.assert_close(a, e, rtol=1e-10, atol=1e-10)


def test_gradcheck_float64():
    x = torch.randn(2, 4, 6, 5, dtype=torch.float64, requires_grad=True)
    w = torch.randn(6, 2, 3, 3, dtype=torch.float64, requires_grad=True)
    b = torch.randn(6, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, w, b: im2col_conv2d(x, w, b, 2, 1, 1, 2), (x, w, b))
    assert torch.autograd.gradcheck(lambda x, w: im2col_conv2d(x, w, None, 1, 0, 2, 2), (x, w[:, :, :2]))


def test_backward_is_its_own_not_autograd_through_unfold():
    w = torch.randn(3, 2, 3, 3, requires_grad=True)
    y = im2col_conv2d(torch.randn(1, 2, 5, 5), w)
    assert type(y.grad_fn).__name__ == "_Im2colConv2dFunctionBackward"


# torch warns that its own conv pads a copy for an even 'same' kernel; so does Im2colConv2d
EVEN_SAME = pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
MODULE_CASES = [dict(), dict(bias=False, stride=2, dilation=2), dict(padding="valid"),
                dict(padding="same", padding_mode="reflect", groups=2),
                pytest.param(dict(padding="same", kernel_size=4), marks=EVEN_SAME)]


@pytest.mark.parametrize("kwargs", MODULE_CASES)
def test_module_is_a_drop_in_for_nn_conv2d(kwargs):
    kwargs = {"kernel_size": 3, **kwargs}
    torch.manual_seed(0)
    theirs = nn.Conv2d(4, 6, **kwargs)
    torch.manual_seed(0)
    ours = Im2colConv2d(4, 6, **kwargs)  # same constructor, same initialisation
    assert {k: v.shape for k, v in ours.state_dict().items()} == {k: v.shape for k, v in theirs.state_dict().items()}
    assert all(torch.equal(ours.state_dict()[k], v) for k, v in theirs.state_dict().items())
    x = torch.randn(2, 4, 9, 8)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ours(x[0]), theirs(x[0]), rtol=1e-5, atol=1e-5)  # unbatched


def test_autocast_bf16_runs_in_one_dtype():
    conv = Im2colConv2d(3, 8, 3, padding=1)
    x = torch.randn(2, 3, 8, 8)
    with torch.autocast("cpu", torch.bfloat16):
        y = conv(x)
        expected = F.conv2d(x, conv.weight, conv.bias, padding=1)
    assert y.dtype == expected.dtype == torch.bfloat16
    torch.testing.assert_close(y.float(), expected.float(), rtol=2e-2, atol=2e-2)
    y.float().sum().backward()
    assert conv.weight.grad.dtype == torch.float32 and torch.isfinite(conv.weight.grad).all()


# --- LeNet-5 with conv_impl=im2col ----------------------------------------------------------------

@pytest.mark.parametrize("classic", [False, True])
def test_lenet5_im2col_equals_torch_with_the_same_weights(classic):
    reference = create_model("lenet5", classic=classic).eval()
    im2col = create_model("lenet5", classic=classic, conv_impl="im2col").eval()
    assert sum(isinstance(m, Im2colConv2d) for m in im2col.modules()) == 3
    assert not any(isinstance(m, Im2colConv2d) for m in reference.modules())
    assert list(im2col.state_dict()) == list(reference.state_dict())
    assert sum(p.numel() for p in im2col.parameters()) == 61_706
    im2col.load_state_dict(reference.state_dict())  # strict
    x = torch.randn(4, 1, 32, 32)
    torch.testing.assert_close(im2col(x), reference(x), rtol=1e-5, atol=1e-5)
    reference(x).square().sum().backward()
    im2col(x).square().sum().backward()
    for (name, p), q in zip(reference.named_parameters(), im2col.parameters()):
        torch.testing.assert_close(q.grad, p.grad, rtol=1e-4, atol=1e-5, msg=name)


def test_lenet5_im2col_reports_the_same_macs():
    # FlopCounterMode sees the matrix products, so the run record counts the same 0.42 M MACs
    macs = [count_macs(lambda impl=impl: create_model("lenet5", conv_impl=impl), (1, 32, 32))
            for impl in ("torch", "im2col")]
    assert macs[0] == macs[1] > 0


def test_lenet5_refuses_an_unknown_conv_impl():
    with pytest.raises(ValueError, match="torch, im2col"):
        create_model("lenet5", conv_impl="winograd")


def test_train_lenet5_with_im2col_through_the_cli(tmp_path):
    run_dir = tmp_path / "outputs" / "im2col"
    # one thread: 4 steps of 16 images gain nothing from a second one but synchronisation
    r = cnnbench("train", *TINY, "model.conv_impl=im2col", "trainer.threads=1", f"hydra.run.dir={run_dir}",
                 cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    results = read_results(run_dir)
    assert results["status"] == "completed"
    assert results["config"]["model"]["conv_impl"] == "im2col"
    assert results["params"] == 61_706 and results["epochs"] == 1
