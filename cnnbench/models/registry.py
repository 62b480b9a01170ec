"""The model registry: every architecture is a builder function registered under a unique name.

    @register_model("resnet50", family="resnet", year=2015, paper="...", min_size=32)
    def resnet50(num_classes=1000, in_channels=3, **options) -> nn.Module: ...

`create_model("resnet50", num_classes=10)` builds one; `list_models("resnet*")` lists names.
Networks from outside the zoo (model=custom, torchvision, timm: models/external.py) are
registered apart: get_model_info and create_model know them, list_models lists only the zoo.
"""

import fnmatch
import inspect
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch.nn as nn

from cnnbench.errors import CnnbenchError


@dataclass(frozen=True)
class ModelInfo:
    name: str
    builder: Callable[..., nn.Module]
    family: str  # e.g. "resnet": one file in cnnbench/models per family
    year: int  # publication year of the paper
    paper: str  # authors, title
    default_input: Tuple[int, int, int]  # (C, H, W) the paper reports figures at
    default_classes: int  # classes the paper reports figures at
    min_size: Union[int, Callable[..., int]]  # smallest H = W accepted (may depend on options)
    max_size: Optional[int]  # largest H = W accepted; None = no limit
    external: bool = False  # not one of the papers' networks: options name it, sizes are found by trying
    task: str = "classification"  # what it predicts: classification | segmentation (| detection)
    size_check: Optional[Callable[..., Optional[str]]] = None  # (size, **options) -> why a size >= min is refused
    sized_options: Optional[Callable[[int], Dict[str, Any]]] = None  # size px -> defaults of options left null

    @property
    def options(self) -> List[str]:
        """Keyword options the builder takes besides num_classes and in_channels."""
        params = inspect.signature(self.builder).parameters
        return [p for p in params if p not in ("num_classes", "in_channels")]

    def min_input(self, in_channels: int = 3, **options) -> int:
        """The smallest H = W (px) the network takes with these options (an external network's, with
        in_channels channels, found by trying it)."""
        if self.external:
            return self.min_size(self.builder, in_channels=in_channels, **options)
        return self.min_size(**options) if callable(self.min_size) else self.min_size


_REGISTRY: Dict[str, ModelInfo] = {}


def register_model(name: str, *, family: str, year: int, paper: str, min_size, max_size=None,
                   default_input=(3, 224, 224), default_classes=1000, task: str = "classification",
                   size_check=None, sized_options=None):
    """Decorator: add a builder to the registry. Names are unique. task: what the network predicts
    (cnnbench/tasks/ has one file per task); a classifier returns (B, classes) scores, a segmenter
    (B, classes, H', W') per-pixel scores. size_check(size, **options): why an input size at or
    above the minimum still cannot be used (None if it can), for networks with more rules than a
    minimum (U-Net's unpadded layout). sized_options(size): the values of options that follow the
    input size (YOLO's grid), for those a config leaves null (run.resolve writes them in)."""

    def wrap(builder):
        if name in _REGISTRY:
            raise ValueError(f"model {name!r} is registered twice")
        _REGISTRY[name] = ModelInfo(name, builder, family, year, paper, tuple(default_input),
                                    default_classes, min_size, max_size, task=task, size_check=size_check,
                                    sized_options=sized_options)
        return builder

    return wrap


_EXTERNAL: Dict[str, ModelInfo] = {}


def register_external(name: str, builder: Callable[..., nn.Module], *, paper: str,
                      min_size: Callable[..., int]) -> None:
    """Add a builder of networks from outside the zoo (models/external.py); min_size(builder,
    in_channels, **options) finds the smallest input by trying."""
    _EXTERNAL[name] = ModelInfo(name, builder, family=name, year=0, paper=paper, default_input=(3, 224, 224),
                                default_classes=1000, min_size=min_size, max_size=None, external=True)


def list_models(pattern: str = "*", external: bool = False) -> List[str]:
    """Registered names matching a shell-style pattern, in registration order: the zoo's, and with
    external=True also custom, torchvision and timm."""
    return [n for n in (*_REGISTRY, *(_EXTERNAL if external else ())) if fnmatch.fnmatch(n, pattern)]


def get_model_info(name: str) -> ModelInfo:
    if name in _EXTERNAL:
        return _EXTERNAL[name]
    if name not in _REGISTRY:
        raise CnnbenchError(
            f"Unknown model {name!r}. Known models: {', '.join(_REGISTRY)}. "
            f"Choose one with model=NAME (`cnnbench models` shows them with their sizes).")
    return _REGISTRY[name]


def create_model(name: str, **kwargs) -> nn.Module:
    """Build a registered architecture; unknown options are an error, not ignored."""
    info = get_model_info(name)
    unknown = sorted(set(kwargs) - set(info.options) - {"num_classes", "in_channels"})
    if unknown:
        raise CnnbenchError(
            f"Model {name!r} has no option {', '.join(unknown)}; its options are: "
            f"{', '.join(info.options) or 'none'}. Remove the override or pick a model that has it.")
    return info.builder(**kwargs)
