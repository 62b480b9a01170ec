"""The segmentation families: FCN-32s/16s/8s, U-Net and SegNet have their papers' parameter counts
(by hand below), give per-pixel scores at the sizes their papers say, train one step, and start
from an ImageNet VGG-16's weights.

Counting and most shapes run on the meta device (shapes only); one real step per family on the CPU."""

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from conftest import compose_cfg, on_meta

from cnnbench.models import create_model, fcn, get_model_info, list_models, weights
from cnnbench.run import model_options

SEGMENTERS = ["fcn32s", "fcn16s", "fcn8s", "unet", "segnet"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny tensors (conftest.one_thread)


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def conv(c_in: int, c_out: int, k: int = 3, bias: bool = True) -> int:
    """Parameters of a k x k convolution (or transposed convolution): weights + biases."""
    return c_in * c_out * k * k + (c_out if bias else 0)


def meta_out(model: nn.Module, *shape: int) -> tuple:
    return tuple(model.eval()(torch.empty(*shape, device="meta")).shape)


def one_step(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """A training forward and backward; every parameter must get a finite, non-zero gradient."""
    out = model.train()(x)
    out.square().mean().backward()
    for name, p in model.named_parameters():
        assert p.grad is not None and p.grad.isfinite().all(), name
        assert p.grad.abs().sum() > 0, f"{name}: no gradient reaches it"
    return out


# --- registry ------------------------------------------------------------------------------------

def test_registered_as_segmenters_in_publication_order():
    """FCN (CVPR 2015), U-Net (MICCAI 2015), SegNet (TPAMI 2017), after the classifiers and before
    the detectors."""
    tasks = [get_model_info(n).task for n in list_models()]
    assert tasks == sorted(tasks, key=["classification", "segmentation", "detection"].index)
    assert [n for n in list_models() if get_model_info(n).task == "segmentation"] == SEGMENTERS
    for name in SEGMENTERS:
        info = get_model_info(name)
        assert info.task == "segmentation" and info.options  # and conf/model/NAME.yaml: tests/test_zoo.py
    assert [get_model_info(n).year for n in SEGMENTERS] == [2015, 2015, 2015, 2015, 2017]
    assert get_model_info("unet").default_input == (1, 572, 572) and get_model_info("unet").default_classes == 2
    assert get_model_info("segnet").default_classes == 11 and get_model_info("fcn8s").default_classes == 21


def test_unet_padding_option_reaches_the_builder_from_the_config():
    """model.padding (ModelConf) is passed to U-Net like any architecture option."""
    cfg = compose_cfg("model=unet", "model.padding=same")
    assert model_options(cfg.model)["padding"] == "same"
    model = on_meta("unet", **model_options(cfg.model))
    assert meta_out(model, 1, 1, 48, 48) == (1, 2, 48, 48)


# --- FCN -----------------------------------------------------------------------------------------

VGG16_CONVS = (conv(3, 64) + conv(64, 64) + conv(64, 128) + conv(128, 128) + conv(128, 256) + 2 * conv(256, 256)
               + conv(256, 512) + 5 * conv(512, 512))  # Simonyan & Zisserman, Table 1, D: 13 convolutions
FC6, FC7 = conv(512, 4096, 7), conv(4096, 4096, 1)  # section 3.1: the FC layers as 7x7 and 1x1 convolutions
SCORE_FR, SCORE_POOL4, SCORE_POOL3 = conv(4096, 21, 1), conv(512, 21, 1), conv(256, 21, 1)
UPSCORE_2X = conv(21, 21, 4, bias=False)  # learned 2x up-sampling, 4x4, no bias
FCN_PARAMS = {"fcn32s": VGG16_CONVS + FC6 + FC7 + SCORE_FR,  # the fixed 64x64 up-sampling is not a parameter
              "fcn16s": VGG16_CONVS + FC6 + FC7 + SCORE_FR + SCORE_POOL4 + UPSCORE_2X,
              "fcn8s": VGG16_CONVS + FC6 + FC7 + SCORE_FR + SCORE_POOL4 + UPSCORE_2X + SCORE_POOL3 + UPSCORE_2X}


def test_fcn_parameters_by_hand():
    """Long et al. 2015, Table 1: FCN-VGG16 "134M" parameters at 21 classes (PASCAL VOC)."""
    assert (VGG16_CONVS, FC6, FC7, SCORE_FR) == (14_714_688, 102_764_544, 16_781_312, 86_037)
    assert FCN_PARAMS == {"fcn32s": 134_346_581, "fcn16s": 134_364_410, "fcn8s": 134_376_863}
    for name, count in FCN_PARAMS.items():
        model = on_meta(name, num_classes=21, in_channels=3)
        assert n_params(model) == count
        assert round(count / 1e6) == 134


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_fcn_final_upsampling_is_fixed_and_intermediate_ones_learned(name):
    """Section 4.3: the final up-sampling is fixed to bilinear interpolation (a buffer: not trained, not
    counted, not saved); the intermediate 2x ones start bilinear and are learned (section 4.2)."""
    model = on_meta(name, num_classes=5)
    stride = int(name[3:-1])
    assert model.upscore.shape == (5, 1, 2 * stride, 2 * stride)  # one kernel per class (groups = classes)
    assert "upscore" not in dict(model.named_parameters()) and "upscore" not in model.state_dict()
    learned = [n for n, _ in model.named_parameters() if "upscore" in n]
    assert learned == {"fcn32s": [], "fcn16s": ["upscore2.weight"],
                       "fcn8s": ["upscore2.weight", "upscore_pool4.weight"]}[name]


@pytest.mark.parametrize("factor", [2, 8, 32])
def test_bilinear_kernel_interpolates(factor):
    """Section 3.3: up-sampling by f is a transposed convolution of stride f; with the bilinear kernel
    (surgery.upsample_filt) a linear ramp comes out a linear ramp, 1/f per output pixel."""
    ramp = torch.arange(6.0).expand(1, 1, 6, 6)  # value = column
    up = F.conv_transpose2d(ramp, fcn.bilinear_kernel(2 * factor)[None, None], stride=factor)
    inner = up[0, 0, 2 * factor:-2 * factor, 2 * factor:-2 * factor]  # away from the borders
    torch.testing.assert_close(inner.diff(dim=1), torch.full_like(inner[:, 1:], 1 / factor))
    torch.testing.assert_close(inner.diff(dim=0), torch.zeros_like(inner[1:]))
    learned = fcn.bilinear_upsampling(3, factor)  # starts bilinear, each class on its own
    torch.testing.assert_close(learned.weight[1, 1], fcn.bilinear_kernel(2 * factor))
    assert learned.weight[0, 1].abs().sum() == 0


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_fcn_output_is_at_the_input_size(name):
    """Reference nets: conv1_1 pads 100 px and Crop at offsets 19 / 5, 27 / 5, 9, 31 align the
    up-sampled scores with the image, so any size works: (B, C, H, W) -> (B, classes, H, W)."""
    model = on_meta(name, num_classes=4)
    assert get_model_info(name).min_input() == 1
    for h, w in [(1, 1), (32, 32), (33, 47), (48, 40), (100, 99), (500, 375)]:
        assert meta_out(model, 2, 3, h, w) == (2, 4, h, w)


def image_coords(m: tuple, layers) -> tuple:
    """Caffe's coord_map by hand: m = (a, b) says a map's pixel y sits at image coordinate a y + b; a
    layer of kernel k, stride s, padding p puts its output pixel y at its input's s y + (k - 1) / 2 - p,
    a transposed one at (y - (k - 1) / 2) / s."""
    for layer in layers:
        if isinstance(layer, (nn.Conv2d, nn.MaxPool2d)):
            k, s, p = (v if isinstance(v, int) else v[0] for v in (layer.kernel_size, layer.stride, layer.padding))
            m = (m[0] * s, m[0] * ((k - 1) / 2 - p) + m[1])
        elif isinstance(layer, nn.ConvTranspose2d):
            k, s = layer.kernel_size[0], layer.stride[0]
            m = (m[0] / s, m[1] - m[0] * (k - 1) / 2 / s)
    return m


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s", "fcn8s"])
def test_fcn_crops_align_every_map_with_the_image(name):
    """The reference nets' Crop offsets (19; 5, 27; 5, 9, 31) follow from the layers (coord_map): with
    them each skip's scores sit on the same image points as the up-sampled scores they are added to,
    and the output's pixel (i, j) is the image's pixel (i, j)."""
    model = on_meta(name, num_classes=2)
    crops = iter(fcn._CROP[model.stride])
    pool3 = image_coords((1.0, 0.0), [*model.conv1.modules(), *model.conv2.modules(), *model.conv3.modules()])
    pool4 = image_coords(pool3, model.conv4.modules())
    score = image_coords(pool4, [*model.conv5.modules(), *model.fc6.modules(), *model.fc7.modules()])
    assert pool3 == (8, -95.5) and score == (32, 12.5)
    for up, side, pool in [("upscore2", "score_pool4", pool4), ("upscore_pool4", "score_pool3", pool3)][:{
            32: 0, 16: 1, 8: 2}[model.stride]]:
        score = image_coords(score, [getattr(model, up)])
        offset = next(crops)
        assert image_coords(pool, [getattr(model, side)]) == (score[0], score[1] - score[0] * offset)
    final = image_coords(score, [nn.ConvTranspose2d(1, 1, 2 * model.stride, model.stride)])  # the fixed one
    assert (final[0], final[1] + next(crops)) == (1.0, 0.0)


@pytest.mark.parametrize("name", ["fcn32s", "fcn16s"])
def test_fcn_step_reaches_every_parameter_on_meta(name):
    """The graph of FCN-32s and 16s (fcn8s, which has every layer they have, runs for real below):
    a training step's gradient reaches each parameter. On the meta device: an FCN step costs ~4 s
    on 2 CPU cores at any size (conv1_1's 100 px padding)."""
    model = on_meta(name, num_classes=3)
    out = model.train()(torch.empty(2, 3, 40, 40, device="meta"))
    assert out.shape == (2, 3, 40, 40)
    out.sum().backward()
    assert all(p.grad is not None for p in model.parameters())


def test_fcn8s_trains_one_step_on_the_cpu():
    """Fig. 3's FCN-8s: scores at 32 px in, every parameter (both skips, both learned up-samplings)
    gets a finite gradient. The score layers start at zero (section 4.3), which would stop the gradient
    below them on the first step: here they start random so that every path is checked."""
    torch.manual_seed(0)
    model = create_model("fcn8s", num_classes=3)
    assert all(m.weight.abs().sum() == 0 for m in (model.score_fr, model.score_pool4, model.score_pool3))
    for m in (model.score_fr, model.score_pool4, model.score_pool3):
        nn.init.normal_(m.weight, 0, 0.01)
    out = one_step(model, torch.randn(1, 3, 32, 32))  # one image: it is a 232 px VGG-16 pass (the padding)
    assert out.shape == (1, 3, 32, 32) and out.isfinite().all()


# --- U-Net ---------------------------------------------------------------------------------------

def double(c_in: int, c_out: int) -> int:
    return conv(c_in, c_out) + conv(c_out, c_out)


UNET_PARAMS = (double(1, 64) + double(64, 128) + double(128, 256) + double(256, 512) + double(512, 1024)  # down
               + sum(conv(c, c // 2, 2) + double(c, c // 2) for c in (1024, 512, 256, 128))  # up-conv, 2 convs
               + conv(64, 2, 1))  # 1x1 to the classes


def test_unet_parameters_by_hand():
    """Ronneberger et al. 2015, Fig. 1: 1 channel in, 2 classes, 23 convolutional layers."""
    assert UNET_PARAMS == 31_030_658
    model = on_meta("unet", num_classes=2, in_channels=1)
    assert n_params(model) == UNET_PARAMS
    layers = [m for m in model.modules() if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d))]
    assert len(layers) == 23  # section 2: "In total the network has 23 convolutional layers."


def test_unet_valid_is_572_to_388_and_smallest_188_to_4():
    """Fig. 1: an unpadded U-Net maps a 572 x 572 tile to a 388 x 388 output. The smallest input with
    an even size at every pool (section 2, seamless tiling) is 188 px, giving 4 px; 187 px leaves nothing."""
    model = on_meta("unet")
    assert meta_out(model, 1, 1, 572, 572) == (1, 2, 388, 388)
    assert get_model_info("unet").min_input() == get_model_info("unet").min_input(padding="valid") == 188
    assert meta_out(model, 1, 1, 188, 188 + 16) == (1, 2, 4, 20)  # each 16 px more in is 16 px more out
    with pytest.raises(RuntimeError):
        meta_out(model, 1, 1, 187, 187)


def test_unet_same_keeps_the_size():
    """padding=same (not the paper's): the output is at the input size, odd sizes included; 16 px at
    the smallest (four 2x2 pools)."""
    model = on_meta("unet", padding="same", num_classes=3)
    assert get_model_info("unet").min_input(padding="same") == 16
    for h, w in [(96, 96), (16, 16), (36, 45), (33, 47)]:
        assert meta_out(model, 2, 1, h, w) == (2, 3, h, w)
    with pytest.raises(RuntimeError):
        meta_out(model, 1, 1, 15, 15)


@pytest.mark.parametrize("norm", ["none", "batch"])
def test_unet_trains_one_step_on_the_cpu(norm):
    """Fig. 1 with padding 1 at 32 px; norm=batch puts a norm after each 3x3 convolution."""
    torch.manual_seed(0)
    model = create_model("unet", num_classes=3, in_channels=1, padding="same", norm=norm)
    assert any(isinstance(m, nn.BatchNorm2d) for m in model.modules()) == (norm == "batch")
    out = one_step(model, torch.randn(2, 1, 32, 32))
    assert out.shape == (2, 3, 32, 32) and out.isfinite().all()


# --- SegNet --------------------------------------------------------------------------------------

def conv_bn(c_in: int, c_out: int) -> int:
    return conv(c_in, c_out) + 2 * c_out  # + batch norm's scale and shift


SEGNET_ENCODER = (conv_bn(3, 64) + conv_bn(64, 64) + conv_bn(64, 128) + conv_bn(128, 128) + conv_bn(128, 256)
                  + 2 * conv_bn(256, 256) + conv_bn(256, 512) + 5 * conv_bn(512, 512))
SEGNET_DECODER = (3 * conv_bn(512, 512)  # decoder 5
                  + 2 * conv_bn(512, 512) + conv_bn(512, 256)  # decoder 4
                  + 2 * conv_bn(256, 256) + conv_bn(256, 128)  # decoder 3
                  + conv_bn(128, 128) + conv_bn(128, 64)  # decoder 2
                  + conv_bn(64, 64) + conv(64, 11))  # decoder 1: the last convolution gives the scores, no norm


def test_segnet_parameters_by_hand():
    """Badrinarayanan et al. 2017: the encoder is VGG-16's 13 convolutions (section 3: 14.7M parameters,
    biases included; + 8,448 in the norms), the decoder mirrors it (Fig. 2). At CamVid's 11 classes and 3
    channels 29,449,355 trainable; with the norms' running statistics (15,872 values, which a saved model
    also holds) 29,465,227: the ~29.5M quoted for SegNet."""
    assert (SEGNET_ENCODER, SEGNET_DECODER) == (14_723_136, 14_726_219)
    model = on_meta("segnet", num_classes=11, in_channels=3)
    assert n_params(model.encoder) == SEGNET_ENCODER and n_params(model.decoder) == SEGNET_DECODER
    assert n_params(model) == SEGNET_ENCODER + SEGNET_DECODER == 29_449_355
    assert round(SEGNET_ENCODER - 8_448, -5) == 14_700_000
    running = sum(b.numel() for n, b in model.named_buffers() if n.endswith(("running_mean", "running_var")))
    assert running == 15_872 and round(n_params(model) + running, -5) == 29_500_000


def test_segnet_keeps_any_size_from_32_px():
    """Max-unpooling restores each encoder map's own size (output_size), so an odd size comes back
    whole; five 2x2 pools need 32 px."""
    model = on_meta("segnet", num_classes=4)
    assert get_model_info("segnet").min_input() == 32
    for h, w in [(32, 32), (33, 47), (360, 480)]:
        assert meta_out(model, 2, 3, h, w) == (2, 4, h, w)
    with pytest.raises(RuntimeError):
        meta_out(model, 1, 3, 31, 31)


def test_segnet_trains_one_step_at_an_odd_size_and_unpools_sparsely():
    """Fig. 3: the decoder up-samples by putting each value back where its 2x2 window's maximum was,
    zeros elsewhere; then convolves. At 36 px (36 -> 18 -> 9 -> 4 -> 2 -> 1) the output is 36 px."""
    torch.manual_seed(0)
    model = create_model("segnet", num_classes=3)
    seen = []
    model.decoder[4].register_forward_pre_hook(lambda m, args: seen.append(args[0].detach()))
    out = one_step(model, torch.randn(2, 3, 36, 36))
    assert out.shape == (2, 3, 36, 36) and out.isfinite().all()
    unpooled = seen[0]  # (2, 64, 36, 36): the input of the last decoder stage
    assert unpooled.shape == (2, 64, 36, 36)
    nonzero_per_window = F.avg_pool2d((unpooled != 0).float(), 2) * 4  # at most the one maximum
    assert nonzero_per_window.max() == 1


# --- ImageNet weights ------------------------------------------------------------------------------

def test_fcn32s_starts_from_torchvision_vgg16(tmp_path):
    """Section 3.1 "convolutionalization": VGG-16's fc6 (25088 -> 4096) is a 7x7 convolution over pool5,
    fc7 a 1x1; the 13 convolutions keep their weights; the 1000-class classifier is dropped and the
    class scores start at zero (section 4.3)."""
    theirs = torchvision.models.vgg16(weights=None).eval()
    torch.save(theirs.state_dict(), tmp_path / "vgg16.pth")
    model = create_model("fcn32s", num_classes=21)
    model.load_state_dict(model.adapt_state_dict(weights.read_state_dict(str(tmp_path / "vgg16.pth"))), strict=True)
    assert torch.equal(model.conv1[0][0].weight, theirs.features[0].weight)
    assert torch.equal(model.conv5[2][0].weight, theirs.features[28].weight)  # conv5_3
    assert torch.equal(model.fc6[0].weight, theirs.classifier[0].weight.view(4096, 512, 7, 7))
    assert torch.equal(model.fc7[0].bias, theirs.classifier[3].bias)
    assert model.score_fr.weight.abs().sum() == 0
    pool5 = torch.randn(1, 512, 7, 7)  # the 7x7 convolution computes the fully-connected layer
    with torch.no_grad():
        torch.testing.assert_close(model.fc6[0](pool5).flatten(1), theirs.classifier[0](pool5.flatten(1)),
                                   rtol=1e-4, atol=1e-5)


def vgg16_bn_features() -> dict:
    """A torchvision vgg16_bn state dict with random encoder values (its classifier's are not read)."""
    with torch.device("meta"):
        keys = torchvision.models.vgg16_bn(weights=None).state_dict()
    return {k: (torch.randn(v.shape) if v.is_floating_point() else torch.zeros(v.shape, dtype=v.dtype))
            if k.startswith("features.") else torch.empty(v.shape, dtype=v.dtype) for k, v in keys.items()}


def test_segnet_encoder_starts_from_torchvision_vgg16_bn():
    """Section 3: SegNet's encoder is VGG-16's 13 convolutions with batch norm, initialised from
    ImageNet; the decoder keeps its own initialisation."""
    torch.manual_seed(0)
    state = vgg16_bn_features()
    model = create_model("segnet", num_classes=11)
    decoder = {k: v.clone() for k, v in model.decoder.state_dict().items()}
    model.load_state_dict(model.adapt_state_dict(state), strict=True)
    assert torch.equal(model.encoder[0][0][0].weight, state["features.0.weight"])
    assert torch.equal(model.encoder[0][0][1].running_var, state["features.1.running_var"])
    assert torch.equal(model.encoder[4][2][1].bias, state["features.41.bias"])  # conv5_3's norm
    assert all(torch.equal(v, model.decoder.state_dict()[k]) for k, v in decoder.items())


def test_fcn_with_norm_maps_vgg16_bn_and_refuses_vgg19():
    """The same mapping gives FCN with norm=batch torchvision's vgg16_bn; a VGG-19 state dict does
    not fit VGG-16's 13 convolutions and fails a strict load, naming the keys; an FCN checkpoint's own
    keys pass through unchanged."""
    state = vgg16_bn_features()
    model = on_meta("fcn8s", norm="batch")
    adapted = model.adapt_state_dict(state)
    assert adapted["conv4.2.1.running_mean"] is state["features.31.running_mean"]  # conv4_3's norm
    model.load_state_dict(adapted, strict=True, assign=True)
    with torch.device("meta"):
        vgg19 = torchvision.models.vgg19(weights=None).state_dict()
    with pytest.raises(RuntimeError, match="Unexpected key"):
        on_meta("fcn32s").load_state_dict(on_meta("fcn32s").adapt_state_dict(vgg19), strict=True)
    own = on_meta("fcn32s").state_dict()
    assert on_meta("fcn32s").adapt_state_dict(own) is own


def test_fcn_weights_of_another_class_count_load_with_every_score_layer_fresh(tmp_path):
    """An FCN checkpoint of 21 classes (VOC) into a 5-class FCN-8s: the three strides' score layers
    and the learned up-samplings are re-initialised (head_layers), everything else loads."""
    from cnnbench.models import create_model, weights

    path = tmp_path / "fcn8s_voc.pth"
    voc = create_model("fcn8s", num_classes=21, in_channels=3)
    torch.save(voc.state_dict(), path)
    model = create_model("fcn8s", num_classes=5, in_channels=3)
    heads = weights.final_layers(lambda: create_model("fcn8s", num_classes=5, in_channels=3), (3, 32, 32))
    fresh = weights.load_weights(model, str(path), heads)
    assert sorted({k.rsplit(".", 1)[0] for k in fresh}) == sorted(heads) == sorted(
        ["score_fr", "upscore2", "score_pool4", "upscore_pool4", "score_pool3"])
    assert torch.equal(model.fc6[0].weight, voc.fc6[0].weight)


@pytest.mark.parametrize("name, trained", [("segnet", ("decoder.",)), ("unet", ("up.", "head.")),
                                           ("fcn8s", ("score_", "upscore"))])
def test_freezing_the_backbone_trains_everything_after_the_encoder(name, trained):
    """model.freeze=backbone on a segmenter: the layers its model.weights fill (VGG-16's convolutions,
    U-Net's contracting path) are frozen; the decoder, which no classifier's weights fill, trains."""
    options = {"padding": "same"} if name == "unet" else {}

    def build():
        return create_model(name, num_classes=5, in_channels=3, **options)

    model = build()
    weights.freeze_backbone(model, weights.final_layers(build, (3, 32, 32)))
    for key, p in model.named_parameters():
        assert p.requires_grad == key.startswith(trained), key


@pytest.mark.parametrize("name, options", [("fcn8s", {}), ("unet", {}), ("unet", {"padding": "same"}), ("segnet", {})])
def test_macs_are_the_sum_over_layers_of_output_size_times_kernel(name, options):
    """MACs counted by torch's flop counter (measure.count_macs) against the textbook count,
    layer by layer: a convolution does (output elements) x (in channels / groups) x kh x kw
    multiply-adds, a transposed one (input elements) x (out channels / groups) x kh x kw. FCN-8s's
    fixed final up-sampling (a buffer, not a module: Long et al. 2015, section 4.3) is a grouped
    16 x 16 transposed convolution on the fused stride-8 scores, counted the same way by hand."""
    from cnnbench.measure import count_macs

    size = 188 if name == "unet" and not options else 64
    model = on_meta(name, num_classes=5, in_channels=3, **options).eval()
    total, shapes = [], {}

    def hook(m, inputs, out):
        k = m.weight.shape[2] * m.weight.shape[3]
        if isinstance(m, nn.ConvTranspose2d):
            total.append(inputs[0].numel() * m.out_channels // m.groups * k)
            shapes[m] = out.shape
        else:
            total.append(out.numel() * m.in_channels // m.groups * k)

    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            m.register_forward_hook(hook)
    model(torch.empty(1, 3, size, size, device="meta"))
    if name == "fcn8s":  # its input is upscore_pool4's output (plus the pool3 scores): 1 channel per group
        total.append(shapes[model.upscore_pool4].numel() * 16 * 16)
    build = lambda: create_model(name, num_classes=5, in_channels=3, **options)  # noqa: E731
    assert count_macs(build, (3, size, size)) == sum(total)
