"""What a model costs: parameters, multiply-accumulates, activation and peak memory, and the
environment a figure was measured in.

Conventions used everywhere in cnnbench: one MAC is one multiply-accumulate; FLOPs = 2 x MACs.
Both count convolutions and matrix products only (as torchvision and the papers do), per image,
forward pass, measured by `torch.utils.flop_counter`.
"""

import os
import platform
import resource
import socket
import subprocess
import sys
from typing import Callable, Dict, Tuple

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> Tuple[int, int, int, int]:
    """(parameters, trainable parameters, parameter bytes, training-only parameters).

    The first three count the network as it runs for inference: submodules a model lists in
    `training_only` (GoogLeNet's auxiliary classifiers) are left out and counted in the fourth."""
    prefixes = tuple(f"{name}." for name in getattr(model, "training_only", ()))
    params, extra = [], 0
    for name, p in model.named_parameters():
        if name.startswith(prefixes):
            extra += p.numel()
        else:
            params.append(p)
    return (sum(p.numel() for p in params), sum(p.numel() for p in params if p.requires_grad),
            sum(p.numel() * p.element_size() for p in params), extra)


def count_macs(build: Callable[[], nn.Module], input_shape: Tuple[int, int, int]) -> int:
    """MACs of one forward pass of one image, in evaluation mode (no auxiliary heads).

    The model is built on the meta device: shapes only, no memory, no arithmetic, so even VGG at
    224 px is counted in milliseconds."""
    with torch.device("meta"):
        model = build()
    return count_macs_of(model, input_shape)


def count_macs_of(model: nn.Module, input_shape: Tuple[int, int, int]) -> int:
    """count_macs for a model already built (on any device; meta is fastest)."""
    device = next(model.parameters()).device
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(torch.empty(1, *input_shape, device=device))
    return counter.get_total_flops() // 2


def activation_bytes(build: Callable[[], nn.Module], input_shape: Tuple[int, int, int], batch: int = 2) -> int:
    """Bytes per image of the tensors the forward pass saves for backward (training mode, fp32).

    Counted with autograd's saved-tensor hooks on a CPU copy of the model; each storage counts
    once and parameters are excluded. This is what grows with batch size in training memory."""
    model = build().train()
    param_ptrs = {p.untyped_storage().data_ptr() for p in model.parameters()}
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        ptr = storage.data_ptr()
        if ptr not in param_ptrs:
            seen[ptr] = max(seen.get(ptr, 0), storage.nbytes())
        return t

    x = torch.randn(batch, *input_shape)
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(seen.values()) // batch


def peak_memory(device: torch.device) -> Tuple[int, str]:
    """(bytes, what they are). CUDA: the allocator's peak since the last reset (tensors only).
    CPU: the process's peak resident set size, which also holds Python, libraries and the data
    set, so it is an upper bound on what training needed."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return (rss if sys.platform == "darwin" else rss * 1024), "process_peak_rss"


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


def environment(device: torch.device) -> dict:
    """Where a figure came from: versions, device, threads, host."""
    from cnnbench import __version__

    cuda = device.type == "cuda"
    return {
        "cnnbench": __version__,
        "git_commit": _git_commit(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if cuda else (platform.processor() or platform.machine()),
        "threads": torch.get_num_threads(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
    }
