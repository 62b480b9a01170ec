"""Starting from saved weights: load a state dict into a cnnbench model (torchvision's released
.pth files load into the matching family), re-initialise the classifier when the number of
classes differs, and freeze the backbone for a linear probe."""

import re
import types
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import torch
import torch.nn as nn

from cnnbench.errors import CnnbenchError
from cnnbench.track import why_unloadable

# torchvision's DenseNet files predate its current names: "denselayer1.norm.1.weight" is now
# "denselayer1.norm1.weight" (torchvision.models.densenet._load_state_dict does the same).
_OLD_DENSENET_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\."
                               r"((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def _map_keys(state: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    out = {}
    for key, value in state.items():
        key = key.removeprefix("module.")  # saved from DataParallel / DistributedDataParallel
        m = _OLD_DENSENET_KEY.match(key)
        out[m.group(1) + m.group(2) if m else key] = value
    return out


def read_state_dict(path: str) -> Dict[str, torch.Tensor]:
    """A state dict from a .pth file (torchvision's, or a cnnbench checkpoint), tensors only:
    `weights_only=True`, so a file holding pickled code is refused, never run."""
    if not Path(path).is_file():
        raise CnnbenchError(f"model.weights={path}: no such file. Give the path of a .pth state dict.")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        refused, why = why_unloadable(e)
        if refused:
            raise CnnbenchError(
                f"model.weights={path} was refused: it is not a plain state dict of tensors; {why}. Save "
                f"the weights alone, torch.save(model.state_dict(), path), from a source you trust.") from None
        raise CnnbenchError(f"model.weights={path} cannot be read: {why}. Download or save it again.") from None
    if isinstance(obj, dict):
        for key in ("weights", "state_dict", "model"):  # cnnbench checkpoints, other trainers
            if isinstance(obj.get(key), dict):
                obj = obj[key]
                break
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CnnbenchError(f"model.weights={path} holds no state dict (a mapping of names to tensors).")
    return _map_keys(obj)


def final_layers(build: Callable[[], nn.Module], input_shape: Tuple[int, int, int]) -> List[str]:
    """Names of the layers that produce class scores: the last layer with parameters to run in
    the forward pass, plus the heads a model uses only in training (GoogLeNet's auxiliaries).
    Found by running the model on the meta device (shapes only), so no family has to say, except
    one with several (FCN's score layers at three strides: its head_layers)."""
    with torch.device("meta"):
        model = build().eval()
    if getattr(model, "head_layers", None):
        return [*model.head_layers, *getattr(model, "training_only", ())]
    order: List[str] = []
    hooks = [m.register_forward_hook(lambda mod, i, o, name=name: order.append(name))
             for name, m in model.named_modules() if next(m.parameters(recurse=False), None) is not None]
    with torch.no_grad():
        model(torch.empty(1, *input_shape, device="meta"))
    for h in hooks:
        h.remove()
    return [order[-1], *getattr(model, "training_only", ())]


def load_weights(model: nn.Module, path: str, heads: List[str]) -> List[str]:
    """Load path into model. Classifier tensors (under `heads`) whose shape differs (another
    number of classes) keep their fresh initialisation; any other difference is an error listing
    the keys. Returns the names of the tensors left re-initialised."""
    state = read_state_dict(path)
    adapt = getattr(model, "adapt_state_dict", None)  # e.g. FCN: an ImageNet VGG-16's fc layers as convolutions
    if adapt is not None:
        state = adapt(state)
    own = model.state_dict()
    in_head = tuple(f"{h}." for h in heads)
    missing = sorted(k for k in own if k not in state and not k.endswith("num_batches_tracked"))
    unexpected = sorted(k for k in state if k not in own)
    mismatched = sorted(k for k in state if k in own and state[k].shape != own[k].shape)
    reinit = [k for k in mismatched if k.startswith(in_head)]
    wrong = [k for k in mismatched if k not in reinit]
    if missing or unexpected or wrong:
        def few(keys):
            return ", ".join(keys[:6]) + (f" and {len(keys) - 6} more" if len(keys) > 6 else "")

        parts = [f"missing {len(missing)} ({few(missing)})" if missing else "",
                 f"unexpected {len(unexpected)} ({few(unexpected)})" if unexpected else "",
                 "shape differs for " + few([f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in wrong])
                 if wrong else ""]
        raise CnnbenchError(
            f"model.weights={path} does not fit this model: {'; '.join(p for p in parts if p)}. Use weights "
            f"saved from the same architecture and options (model.norm, model.stem, ...), or drop model.weights.")
    model.load_state_dict({k: v for k, v in state.items() if k not in reinit}, strict=False)
    return reinit


def freeze_backbone(model: nn.Module, heads: List[str]) -> None:
    """Train only the classifier (a linear probe): every other parameter stops receiving
    gradients, and normalisation statistics stay as loaded (those layers stay in eval mode)."""
    in_head = tuple(f"{h}." for h in heads)
    for name, p in model.named_parameters():
        p.requires_grad_(name.startswith(in_head))
    for name, m in model.named_modules():
        if getattr(m, "track_running_stats", False) and not f"{name}.".startswith(in_head):
            m.train = types.MethodType(_always_eval, m)  # model.train() leaves it in eval mode


def _always_eval(self: nn.Module, mode: bool = True) -> nn.Module:
    return nn.Module.train(self, False)
