"""Networks from outside the zoo, measured exactly as the zoo's are:

    cnnbench train model=custom model.target=mynets.TinyNet +model.args.width=32   # your own nn.Module
    cnnbench train model=torchvision model.arch=convnext_tiny dataset=cifar10      # any torchvision classifier
    cnnbench train model=timm model.arch=resnet50d                                 # any timm model (pip install timm)

Each is a builder like the zoo's, `(num_classes, in_channels, **options) -> nn.Module`, registered
apart from the papers' networks (registry.register_external), so that `cnnbench models` and the
zoo's tests list only those. What the zoo states by hand, these find by trying: the smallest input
a network takes (`min_size`, a forward pass per size on the meta device) and the shape of its output
(run.validate). `source()` says exactly which network ran, for the record: the import path, the
file and its SHA-256 (custom), or the library, its version and the architecture's name.
"""

import difflib
import functools
import hashlib
import importlib
import inspect
import json
import os
import sys
from typing import Any, Callable, Dict, Optional

import torch
import torch.nn as nn

from cnnbench.errors import CnnbenchError
from cnnbench.models.registry import register_external

MAX_SIZE_TRIED = 4096  # px: the largest square input min_size tries


# ---------------------------------------------------------------------------------------------
# model=custom: any importable nn.Module class, or a function returning one
# ---------------------------------------------------------------------------------------------

def import_target(target: Optional[str]) -> Any:
    """The object a dotted path names ("mynets.TinyNet"), its module imported from the current
    folder first, then the installed packages. Raises CnnbenchError naming what was not found and
    where cnnbench looked."""
    if not target or "." not in target:
        raise CnnbenchError(f"model=custom needs model.target=MODULE.NAME, the dotted path of an nn.Module class or "
                            f"of a function that returns one (got {target!r}), e.g. model.target=mynets.TinyNet for "
                            f"class TinyNet in mynets.py in the current folder.")
    module_name, _, attr = target.rpartition(".")
    here = os.getcwd()
    if here not in sys.path:  # the current folder first, as `python -m` does (the cnnbench script does not)
        sys.path.insert(0, here)
    local = os.path.join(here, *module_name.split("."))
    if os.path.isfile(local + ".py") or os.path.isdir(local):  # the user's own file: read as it is now
        for name in [n for n in sys.modules if n == module_name or n.startswith(module_name + ".")]:
            del sys.modules[name]  # (an earlier job of a sweep, or another folder's module of that name)
        importlib.invalidate_caches()
    try:
        module = importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        if e.name and module_name.startswith(e.name):  # the module itself, not one it imports
            raise CnnbenchError(f"model.target={target}: no module {module_name!r} in the current folder ({here}) or "
                                f"the installed packages. Put {module_name.replace('.', '/')}.py in {here}, run "
                                f"cnnbench from the folder that holds it, or install its package.") from None
        raise CnnbenchError(f"model.target={target}: importing {module_name} failed: {e}. Install what it "
                            f"imports.") from None
    except Exception as e:  # a syntax error, or code that raises as the module loads
        raise CnnbenchError(f"model.target={target}: importing {module_name} failed: {type(e).__name__}: "
                            f"{' '.join(str(e).split())}. Fix {getattr(e, 'filename', None) or module_name}.") from None
    if not hasattr(module, attr):
        names = [n for n in vars(module) if not n.startswith("_")]
        guess = difflib.get_close_matches(attr, names, n=1)
        raise CnnbenchError(f"model.target={target}: {module.__file__} has no {attr!r}"
                            f"{f' (did you mean {module_name}.{guess[0]}?)' if guess else ''}. Name a class or "
                            f"function defined there.")
    return getattr(module, attr)


def _takes(fn: Callable, name: str) -> bool:
    """Whether fn (a class: its __init__) takes a keyword argument `name`."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False
    return name in params or any(p.kind == p.VAR_KEYWORD for p in params.values())


def custom(num_classes: int = 10, in_channels: int = 3, target: Optional[str] = None,
           args: Optional[Dict[str, Any]] = None) -> nn.Module:
    """Your own network: model.target names an nn.Module class or a function returning one;
    model.args are its keyword arguments. num_classes and in_channels are passed when it takes
    them (source() records which); run.validate checks its output is (B, classes)."""
    obj = import_target(target)
    if not callable(obj):
        raise CnnbenchError(f"model.target={target} names {obj!r}, not an nn.Module class or a function that "
                            f"returns one.")
    kwargs = dict(args or {})
    for name, value in (("num_classes", num_classes), ("in_channels", in_channels)):
        if _takes(obj, name):
            kwargs.setdefault(name, value)
    try:
        model = obj(**kwargs)
    except Exception as e:
        given = ", ".join(f"{k}={v!r}" for k, v in kwargs.items())
        raise CnnbenchError(f"model.target={target}: {target}({given}) raised {type(e).__name__}: "
                            f"{' '.join(str(e).split())}. Fix the arguments (+model.args.NAME=VALUE) or the "
                            f"code.") from None
    if not isinstance(model, nn.Module):
        raise CnnbenchError(f"model.target={target} gave a {type(model).__name__}, not a torch.nn.Module. Name an "
                            f"nn.Module class or a function that returns an instance of one.")
    return model


# ---------------------------------------------------------------------------------------------
# model=torchvision, model=timm: a library's classifier by name, without weights (offline)
# ---------------------------------------------------------------------------------------------

def _unknown(arch: Optional[str], library: str, names: list) -> CnnbenchError:
    guess = " or ".join(difflib.get_close_matches(str(arch), names, n=3))
    return CnnbenchError(f"model.arch={arch}: {library} has no classification model of that name"
                         f"{f' (did you mean {guess}?)' if guess else ''}. It has {len(names)}: "
                         f"{', '.join(names[:12])}, ...")


def _repeat_grey(model: nn.Module) -> nn.Module:
    """A 3-channel network fed 1-channel images: the grey channel repeated to RGB before its
    first layer (a forward pre-hook: no parameters, the state dict's keys unchanged)."""
    model.register_forward_pre_hook(lambda module, inputs: (inputs[0].expand(-1, 3, -1, -1), *inputs[1:]))
    return model


def torchvision_model(num_classes: int = 1000, in_channels: int = 3, arch: Optional[str] = None,
                      args: Optional[Dict[str, Any]] = None) -> nn.Module:
    """Any classification builder torchvision.models lists, built without weights (model.weights
    loads a file). GoogLeNet and Inception v3 are built without their auxiliary heads unless
    +model.args.aux_logits=true (their training outputs are named tuples). 1-channel images are
    repeated to RGB (torchvision's networks take 3 channels)."""
    from torchvision import models

    names = models.list_models(module=models)
    if arch not in names:
        raise _unknown(arch, f"torchvision {_version('torchvision')}", names)
    if in_channels not in (1, 3):
        raise CnnbenchError(f"model=torchvision takes 1- or 3-channel images (torchvision's networks take RGB; grey "
                            f"is repeated to it), not {in_channels}. Use model=custom for {in_channels} channels.")
    kwargs = dict(args or {})
    if arch in ("googlenet", "inception_v3"):
        kwargs.setdefault("aux_logits", False)
        kwargs.setdefault("init_weights", True)  # torchvision warns when it must choose
    model = models.get_model(arch, weights=None, num_classes=num_classes, **kwargs)
    return _repeat_grey(model) if in_channels == 1 else model


def timm_model(num_classes: int = 1000, in_channels: int = 3, arch: Optional[str] = None,
               args: Optional[Dict[str, Any]] = None) -> nn.Module:
    """Any model timm.create_model builds (timm is an optional extra: pip install cnnbench[timm]),
    without pretrained weights; timm adapts the first layer to in_channels itself."""
    try:
        import timm
    except ImportError:
        raise CnnbenchError("model=timm needs the timm package, which is not installed. Install it with "
                            "`pip install 'cnnbench[timm]'` (or `pip install timm`).") from None
    names = timm.list_models()
    if arch not in names:
        raise _unknown(arch, f"timm {timm.__version__}", names)
    return timm.create_model(arch, pretrained=False, num_classes=num_classes, in_chans=in_channels, **(args or {}))


def materialize(model: nn.Module, input_shape) -> nn.Module:
    """A network with lazy layers (nn.LazyLinear, nn.LazyConv2d) gets their shapes from its first
    forward pass: run one on a zero batch of 2 images of input_shape (C, H, W), in evaluation mode,
    where the network is (the meta device included), so that its parameters can be counted, saved
    and optimized. Other networks are returned untouched."""
    from torch.nn.modules.lazy import LazyModuleMixin

    if any(isinstance(m, LazyModuleMixin) and m.has_uninitialized_params() for m in model.modules()):
        device = next(model.parameters()).device
        training = model.training
        with torch.no_grad():
            model.eval()(torch.zeros(2, *input_shape, device=device))
        model.train(training)
    return model


# ---------------------------------------------------------------------------------------------
# What the zoo states by hand: the smallest input, and where the network came from
# ---------------------------------------------------------------------------------------------

def fits(builder: Callable[..., nn.Module], in_channels: int, size: int, **options) -> Optional[str]:
    """None if the network takes one square image of `size` px with in_channels channels, else
    what its forward pass raised ("TypeName: message"). Tried on the meta device (shapes only), or,
    for a network whose forward the meta device cannot run (one that reads a value, .item()), with a
    real zero image on the CPU. Raises CnnbenchError when the network cannot be built."""
    return _trial(builder, in_channels, json.dumps(options, sort_keys=True, default=str))(size)


def min_size(builder: Callable[..., nn.Module], in_channels: int = 3, **options) -> int:
    """The smallest square input (px) the network takes, found by trying (fits): 1 px, then
    doubling, then bisecting. Assumes a size that works works at any larger size, as for networks
    that end in global pooling; a fixed-size network (a ViT takes 224 px and no other) gets a
    CnnbenchError that says so, as does one that takes nothing up to MAX_SIZE_TRIED px."""
    error = _trial(builder, in_channels, json.dumps(options, sort_keys=True, default=str))
    if error(1) is None:
        return 1
    lo, hi = 1, 2  # lo fails; find an hi that works
    while error(hi) is not None:
        lo, hi = hi, hi * 2
        if hi > MAX_SIZE_TRIED:
            if error(224) is None:
                raise CnnbenchError("The network takes 224 px but not every size above some smallest one (a "
                                    "fixed-size network, such as a ViT): set dataset.image_size to a size it takes, "
                                    "e.g. 224.")
            raise CnnbenchError(f"The network takes no square input from 1 to {MAX_SIZE_TRIED} px with {in_channels} "
                                f"channel(s): at 224 px it raised {error(224)}. Check its first layer's input "
                                f"channels and its forward.")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if error(mid) is None else (mid, hi)
    return hi


@functools.lru_cache(maxsize=16)
def _trial(builder, in_channels: int, options: str) -> Callable[[int], Optional[str]]:
    """fits() for one network: built once on the meta device, tried at each size once."""
    kwargs = dict(num_classes=2, in_channels=in_channels, **json.loads(options))
    with torch.device("meta"):
        model = builder(**kwargs).eval()
    on_cpu = []  # built when the meta device cannot run the forward pass

    @functools.lru_cache(maxsize=None)
    def error(size: int) -> Optional[str]:
        try:
            with torch.no_grad():
                model(torch.empty(1, in_channels, size, size, device="meta"))
            return None
        except Exception as e:
            said = f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"
            if "meta" not in str(e):
                return said
        if not on_cpu:
            on_cpu.append(builder(**kwargs).eval())
        try:
            with torch.no_grad():
                on_cpu[0](torch.zeros(1, in_channels, size, size))
            return None
        except Exception as e:
            return f"{type(e).__name__}: {' '.join(str(e).split())[:300]}"

    return error


def _version(package: str) -> Optional[str]:
    try:
        return importlib.import_module(package).__version__
    except ImportError:
        return None


def source(name: str, options: Dict[str, Any], num_classes: int, in_channels: int) -> Optional[Dict[str, Any]]:
    """Which network ran, for results.json (None for the zoo's): custom: the import path, the file
    and its SHA-256, and which of num_classes and in_channels it was given; torchvision and timm:
    the library, its version and the architecture."""
    if name == "custom":
        obj = import_target(options.get("target"))
        path = inspect.getsourcefile(obj) if inspect.isclass(obj) or inspect.isfunction(obj) else None
        path = path or getattr(sys.modules.get(getattr(obj, "__module__", "")), "__file__", None)
        digest = hashlib.sha256(open(path, "rb").read()).hexdigest() if path and os.path.isfile(path) else None
        given = [k for k in ("num_classes", "in_channels") if _takes(obj, k)]
        return {"kind": "custom", "target": options.get("target"), "args": dict(options.get("args") or {}),
                "file": os.path.abspath(path) if path else None, "sha256": digest,
                "passed": given, "not_passed": [k for k in ("num_classes", "in_channels") if k not in given]}
    if name in ("torchvision", "timm"):
        return {"kind": name, "library": name, "version": _version(name), "arch": options.get("arch"),
                "args": dict(options.get("args") or {}),
                "grey_repeated_to_rgb": name == "torchvision" and in_channels == 1}
    return None


register_external("custom", custom, paper="your own nn.Module (model.target)", min_size=min_size)
register_external("torchvision", torchvision_model, paper="torchvision.models (model.arch)", min_size=min_size)
register_external("timm", timm_model, paper="timm (model.arch; pip install timm)", min_size=min_size)
