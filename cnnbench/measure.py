"""What a model costs: parameters, multiply-accumulates, activation and peak memory, and the
environment a figure was measured in.

Conventions used everywhere in cnnbench: one MAC is one multiply-accumulate; FLOPs = 2 x MACs.
Both count convolutions and matrix products only (as torchvision and the papers do), per image,
forward pass unless named otherwise, measured by `torch.utils.flop_counter` with its formula for a
convolution's backward replaced (`_conv_backward_flops`).
"""

import glob
import os
import platform
import resource
import socket
import statistics
import subprocess
import sys
import time
from math import prod
from typing import Callable, Dict, Optional, Tuple

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


def _conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                         _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """FLOPs of aten.convolution_backward: the forward's for the input gradient and again for the
    weight gradient, each only if asked for (output_mask; none for an input that needs no gradient,
    such as the image into the first layer). Any stride, padding, dilation and groups; transposed too.

    Why each is the forward's: with im2col (Chellapilla et al. 2006; cnnbench/models/im2col.py), per
    image and group the forward is Wrow @ Xcol, (O/g x K) @ (K x L), and backward is Wrow^T @ dY,
    (K x O/g) @ (O/g x L), and dY @ Xcol^T, (O/g x L) @ (L x K): O/g * K * L MACs each (K = C/g * kh
    * kw, L = output positions). A transposed convolution is a convolution's input gradient: the same
    holds with input and output swapped. Hence backward = 2 x forward (Hobbhahn & Sevilla 2021,
    "What's the backward-forward FLOP ratio for neural networks?", Epoch AI).

    Replaces torch's conv_backward_flop (torch/utils/flop_counter.py; the same in a 2.4-era source and
    in 2.14.1), which counts the weight gradient as one convolution of the transposed input (C, B, H, W)
    by the transposed output gradient: C x O channel pairs where there are C/g x O, `groups` times too
    many (a 32-channel depthwise layer's weight gradient: 32 x its forward). Its input gradient is right."""
    positions = prod((x_shape if transposed else grad_out_shape)[2:])  # where the kernel is applied
    forward = x_shape[0] * prod(w_shape) * positions  # MACs; w: (O, C/g, kh, kw) or transposed (C, O/g, kh, kw)
    return 2 * forward * (bool(output_mask[0]) + bool(output_mask[1]))  # FLOPs = 2 x MACs


def _flop_counter() -> FlopCounterMode:
    """torch's counter (right for convolution forward and matrix products), with the corrected
    convolution backward. custom_mapping is there in torch 2.4 (the oldest cnnbench accepts) too."""
    return FlopCounterMode(display=False,
                           custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops})


def count_macs(build: Callable[[], nn.Module], input_shape: Tuple[int, int, int],
               forward: Optional[Callable] = None, image: Optional[torch.Tensor] = None) -> int:
    """MACs of one forward pass of one image, in evaluation mode (no auxiliary heads).

    The model is built on the meta device: shapes only, no memory, no arithmetic, so even VGG at
    224 px is counted in milliseconds. A model whose forward the meta device cannot run (a detector
    keeps the proposals that score best: data-dependent shapes) is counted on the CPU, on `image`
    ((C, H, W); else a seeded random one): its count then depends on that image and the weights.
    forward(model, x) runs the model (default model(x); a detector takes a list of images)."""
    try:
        with torch.device("meta"):
            model = build()
        return count_macs_of(model, input_shape, forward)
    except (NotImplementedError, RuntimeError):
        model = build()
        x = image[None] if image is not None else torch.randn(1, *input_shape,
                                                             generator=torch.Generator().manual_seed(0))
        return count_macs_of(model, input_shape, forward, x.cpu())


# Layers with no convolution or matrix product inside: they count 0 MACs in this convention, but
# the flop counter decomposes each into elementwise ops to look (BatchNorm: half of the time it
# takes to count a ResNet-50). While counting they are passed through unchanged; same shapes.
_NO_MACS = (nn.modules.batchnorm._NormBase, nn.GroupNorm, nn.LayerNorm, nn.LocalResponseNorm)


def count_macs_of(model: nn.Module, input_shape: Tuple[int, int, int], forward: Optional[Callable] = None,
                  x: Optional[torch.Tensor] = None) -> int:
    """count_macs for a model already built (on any device; meta is fastest), on x (1, C, H, W)
    if given."""
    device = next(model.parameters()).device
    forward = forward or _call
    counter = _flop_counter()
    skipped = [m for m in model.modules() if isinstance(m, _NO_MACS)]
    for m in skipped:
        m.forward = _pass_through  # an instance attribute: the class's forward is untouched
    try:
        with counter, torch.no_grad():
            forward(model.eval(), torch.empty(1, *input_shape, device=device) if x is None else x)
    finally:
        for m in skipped:
            del m.forward
    return counter.get_total_flops() // 2


def _pass_through(x: torch.Tensor) -> torch.Tensor:
    return x


def _call(model: nn.Module, x: torch.Tensor):
    return model(x)


def _total(output) -> torch.Tensor:
    """One scalar from whatever a forward returns, for a backward pass: scores, (scores, [auxiliary
    scores]), or a detector's dict of losses."""
    if isinstance(output, dict):
        return sum(output.values())
    if isinstance(output, tuple):
        return output[0].sum() + sum(a.sum() for a in output[1])
    return output.sum()


def activation_bytes(build: Callable[[], nn.Module], input_shape: Tuple[int, int, int], batch: int = 2,
                     forward: Optional[Callable] = None) -> int:
    """Bytes per image of the tensors the forward pass saves for backward (training mode, fp32).

    Counted with autograd's saved-tensor hooks, on the meta device (shapes only: no weights to
    initialise, no arithmetic; a model whose forward meta cannot run is counted on the CPU). Each
    storage counts once and parameters are excluded. This is what grows with batch size in
    training memory. forward(model, x) runs the model (default model(x); a detector also takes
    targets in training)."""
    try:
        return _saved_bytes(build, input_shape, batch, "meta", forward or _call)
    except (NotImplementedError, RuntimeError):
        return _saved_bytes(build, input_shape, batch, "cpu", forward or _call)


def _saved_bytes(build, input_shape, batch: int, device: str, forward: Callable) -> int:
    with torch.device(device):
        model = build().train()
        x = torch.randn(batch, *input_shape)
    params = {p.untyped_storage()._cdata for p in model.parameters()}  # storage identity, meta included
    seen: Dict[int, int] = {}

    def pack(t: torch.Tensor):
        storage = t.untyped_storage()
        if storage._cdata not in params:
            seen[storage._cdata] = max(seen.get(storage._cdata, 0), storage.nbytes())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward(model, x)
    del out
    return sum(seen.values()) // batch


# ---------------------------------------------------------------------------------------------
# The machine: cores, other work on it, and how many threads and workers to use
# ---------------------------------------------------------------------------------------------

def usable_cpus() -> int:
    """Cores this process may run on (its affinity mask: a container's or taskset's limit)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)


def cores_per_process() -> int:
    """usable_cpus, shared out among the processes torchrun started on this machine."""
    return max(1, usable_cpus() // int(os.environ.get("LOCAL_WORLD_SIZE", 1)))


def load_average() -> Optional[float]:
    """The 1-minute load average (runnable and waiting tasks, averaged), or None where there is none."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def _own_running_threads() -> int:
    running = 0
    for stat in glob.glob("/proc/self/task/*/stat"):
        try:
            with open(stat) as f:
                running += f.read().rsplit(")", 1)[1].split()[0] == "R"  # the field after the name: state
        except (OSError, IndexError):
            pass
    return running


def other_runnable(looks: int = 5) -> Optional[float]:
    """Threads of other processes ready to run now: Linux's count of runnable threads
    (/proc/loadavg, 4th field) less this process's own, the median of `looks` looks 2 ms apart.
    None where /proc does not tell. Unlike the load average, it owes nothing to this process's
    own last minute (an earlier job of a sweep, in the same process)."""
    counts = []
    for i in range(looks):
        try:
            with open("/proc/loadavg") as f:
                running = int(f.read().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return None
        counts.append(max(0, running - _own_running_threads()))
        if i + 1 < looks:
            time.sleep(0.002)
    return statistics.median(counts)


_TORCH_THREADS = torch.get_num_threads()  # torch's default as the process started (OMP_NUM_THREADS, cores)


def compute_threads(cores: int, others: float) -> int:
    """torch's CPU threads when trainer.threads=0: its default, but no more than the cores other
    processes leave (cores: this process's, under torchrun its share; others: other processes'
    threads ready to run, other_runnable). Threads that wait for a core stall each other: with three
    busy processes on 2 cores, ResNet-20 trained at 106 images/s on 2 threads and 239 on 1. The
    DataLoader workers are not counted: they sleep once their batches are ready (taking a thread
    from ResNet-18 for two workers cost it a third, 220 -> 150 images/s)."""
    return max(1, min(_TORCH_THREADS, cores - round(others)))


def data_workers(device_type: str, cores: int, asked: Optional[int] = None) -> int:
    """An image folder's DataLoader workers: dataset.num_workers capped at the cores, or when null
    on CUDA all the cores but the one that feeds the GPU, at most 8, and on the CPU a quarter of
    them (none on 2 or 3: CPU training is bound by its arithmetic, and on 2 cores ResNet-18 at 64 px
    from JPEGs trained at 220 images/s with no workers or two alike)."""
    if asked is not None:
        return min(asked, cores)
    return min(8, max(1, cores - 1)) if device_type == "cuda" else cores // 4


def reset_peak_memory(device: torch.device) -> None:
    """Start the peak-memory count afresh, so that a sweep's later jobs in the same process are not
    charged for the earlier ones. CPU: Linux resets the process's high-water mark (VmHWM) to its
    current resident size when 5 is written to /proc/self/clear_refs."""
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
        return
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not Linux, or not allowed: the count runs from the process's start
        pass


def peak_memory(device: torch.device) -> Tuple[int, str]:
    """(bytes, what they are). CUDA: the allocator's peak since the last reset (tensors only).
    CPU: the process's peak resident set size since reset_peak_memory (Linux; else since the
    process began), which also holds Python, libraries and the data set, so it is an upper bound
    on what training needed."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device), "cuda_max_memory_allocated"
    try:
        with open("/proc/self/status") as f:
            hwm = next(line for line in f if line.startswith("VmHWM:"))
        return int(hwm.split()[1]) * 1024, "process_peak_rss"  # the file says kB
    except (OSError, StopIteration, ValueError):
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
        return (rss if sys.platform == "darwin" else rss * 1024), "process_peak_rss"


def layer_weights(model: nn.Module) -> dict[str, torch.Tensor]:
    """The weight of every trainable convolution and linear layer, by module name, input to output
    (registration order): the tensors whose gradients grad_norms reads."""
    return {name: m.weight for name, m in model.named_modules()
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.weight.requires_grad}


def grad_norms(weights: dict[str, torch.Tensor]) -> dict[str, float]:
    """The L2 norm of each weight's gradient (weights without one are left out), computed on the
    device and read with one host transfer. Call it between the optimizer step and the next
    zero_grad: these are the gradients the step used (unscaled, after any clipping)."""
    named = [(name, w.grad) for name, w in weights.items() if w.grad is not None]
    if not named:
        return {}
    norms = torch._foreach_norm([g for _, g in named])  # fused, as clip_grad_norm_ does: no per-layer launches
    return dict(zip([name for name, _ in named], torch.stack(norms).tolist()))


def _git_commit() -> str | None:
    here = os.path.dirname(os.path.abspath(__file__))
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


# Dense peak FLOP/s of a GPU's tensor cores (no structured sparsity), by the precision training
# runs its convolutions and matrix products in: NVIDIA's datasheets (H100 SXM/PCIe and H200:
# "NVIDIA H100 Tensor Core GPU" and "NVIDIA H200" datasheets; A100: "NVIDIA A100 Tensor Core GPU"
# datasheet, SXM). fp32 is "tf32" when PyTorch lets cuDNN use TF32 for convolutions (its default).
PEAK_TFLOPS = {
    "H100 SXM": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "H100 PCIe": {"bf16": 756.5, "fp16": 756.5, "tf32": 378.0, "fp32": 51.2},
    "H200": {"bf16": 989.4, "fp16": 989.4, "tf32": 494.7, "fp32": 66.9},
    "A100": {"bf16": 312.0, "fp16": 312.0, "tf32": 156.0, "fp32": 19.5},
}


def _peak_key(device: torch.device) -> Optional[str]:
    name = torch.cuda.get_device_name(device)  # e.g. "NVIDIA H100 80GB HBM3" (SXM), "NVIDIA H100 PCIe"
    # H100 NVL / H200 NVL: other clocks and power, not in the table. A MIG slice ("... MIG 3g.40gb")
    # has a fraction of the GPU's cores: the whole GPU's peak would understate its mfu.
    if "NVL" in name or "MIG" in name:
        return None
    if "H200" in name:
        return "H200"
    if "H100" in name:
        return "H100 PCIe" if "PCIe" in name else "H100 SXM"
    return "A100" if "A100" in name else None


def _precision(amp: str) -> str:
    if amp in ("bf16", "fp16"):
        return amp
    return "tf32" if torch.backends.cudnn.allow_tf32 else "fp32"


def mfu_note(device: torch.device, amp: str) -> str:
    """What the mfu figure is measured against, or why there is none."""
    if device.type != "cuda":
        return "no mfu on the CPU: cnnbench keeps peak FLOP/s for NVIDIA data-centre GPUs only"
    key = _peak_key(device)
    if key is None:
        name = torch.cuda.get_device_name(device)
        if "MIG" in name:
            return f"no mfu on {name}: a MIG slice has a fraction of the GPU's peak FLOP/s"
        return f"no peak FLOP/s known for {name} (measure.PEAK_TFLOPS)"
    return f"against {PEAK_TFLOPS[key][_precision(amp)]} TFLOP/s, {key} dense {_precision(amp)} (datasheet)"


def mfu(macs_per_image: int, images_per_s: Optional[float], device: torch.device, amp: str,
        processes: int = 1) -> Optional[float]:
    """Model FLOP/s utilisation of training: 3 x forward FLOPs per image (forward, and backward's
    two products) x images/s, over the dense peak of the GPUs used. None on the CPU or an unknown GPU."""
    if device.type != "cuda" or not images_per_s or not macs_per_image:
        return None
    key = _peak_key(device)
    if key is None:
        return None
    achieved = 3 * 2 * macs_per_image * images_per_s  # FLOP/s; 1 MAC = 2 FLOPs
    return achieved / (PEAK_TFLOPS[key][_precision(amp)] * 1e12 * processes)


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
        "cpus": usable_cpus(),  # cores this process may use
        "load_start": load_average(),  # 1-minute load average when the run began
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
    }


def count_train_macs(build: Callable[[], nn.Module], input_shape: Tuple[int, int, int],
                     forward: Optional[Callable] = None) -> int:
    """MACs of one training step's forward + backward for one image (training mode, so auxiliary
    heads count), on the meta device (on the CPU, seeded random images, for a model the meta
    device cannot run). 3 x the forward less the first layer's share: backward computes the
    gradients of each layer's input and weights, each costing the layer's forward, except the
    image's, which nothing needs (nor the weights of frozen layers). forward(model, x) as in
    count_macs."""
    try:
        return _train_macs(build, input_shape, forward or _call, "meta")
    except (NotImplementedError, RuntimeError):
        return _train_macs(build, input_shape, forward or _call, "cpu")


def _train_macs(build, input_shape, forward: Callable, device: str) -> int:
    with torch.device(device):
        model = build().train()
        # 2: BatchNorm needs more than one value per channel
        x = (torch.empty(2, *input_shape) if device == "meta" else
             torch.randn(2, *input_shape, generator=torch.Generator().manual_seed(0)))
    counter = _flop_counter()
    with counter:
        _total(forward(model, x)).backward()
    return counter.get_total_flops() // 2 // 2


def layer_table(build: Callable[[], nn.Module], input_shape: Tuple[int, int, int]) -> list:
    """One row per leaf module, in execution order: name, output shape (one image), parameters,
    MACs and output bytes (fp32), measured on the meta device in evaluation mode."""
    with torch.device("meta"):
        model = build().eval()
    rows = []

    def hook(module, inputs, output, name):
        if isinstance(output, torch.Tensor):
            rows.append({"name": name, "type": type(module).__name__, "output_shape": list(output.shape[1:]),
                         "params": sum(p.numel() for p in module.parameters(recurse=False)),
                         "activation_bytes": output[0].numel() * 4})

    leaves = [(n, m) for n, m in model.named_modules() if n and not list(m.children())]
    handles = [m.register_forward_hook(lambda mod, i, o, n=n: hook(mod, i, o, n)) for n, m in leaves]
    counter = _flop_counter()
    with counter, torch.no_grad():
        model(torch.empty(1, *input_shape, device="meta"))
    for h in handles:
        h.remove()
    prefix = type(model).__name__ + "."
    flops = {k.removeprefix(prefix): sum(v.values()) for k, v in counter.get_flop_counts().items()}
    for row in rows:
        row["macs"] = flops.get(row["name"], 0) // 2
    return rows


def time_it(fn: Callable[[], None], device: torch.device, warmup: int, repeats: int) -> float:
    """Median seconds of fn() over `repeats` calls after `warmup` untimed ones. On CUDA each call
    is bracketed by CUDA events, so the figure is GPU time, not launch time."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)  # ms -> s
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def speed(model: nn.Module, input_shape: Tuple[int, int, int], batch: int, device: torch.device,
          warmup: int, repeats: int, train_step: bool, loss: Optional[Callable] = None,
          forward: Optional[Callable] = None) -> dict:
    """Inference latency and throughput, and training-step throughput, at one batch size; on
    CUDA also the peak memory of the training step. loss(output) -> scalar: the task's loss
    against any target (default: a classifier's cross-entropy against class 0); forward(model, x)
    runs the model (default model(x); a detector takes a list, and targets in training)."""
    forward = forward or _call
    x = torch.randn(batch, *input_shape, device=device)
    model.eval()
    with torch.no_grad():
        infer = time_it(lambda: forward(model, x), device, warmup, repeats)
    row = {"batch_size": batch, "latency_ms": 1000 * infer, "infer_images_per_s": batch / infer,
           "train_step_ms": None, "train_images_per_s": None, "peak_memory_bytes": None}
    if train_step and batch > 1:  # BatchNorm cannot train on one image
        if loss is None:
            from cnnbench.tasks.classification import CLASSIFICATION

            loss = CLASSIFICATION.probe_loss
        opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=1e-9)
        model.train()
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(device)

        def step():
            opt.zero_grad(set_to_none=True)
            loss(forward(model, x)).backward()
            opt.step()

        t = time_it(step, device, warmup, repeats)
        row.update(train_step_ms=1000 * t, train_images_per_s=batch / t)
        if device.type == "cuda":
            row["peak_memory_bytes"] = torch.cuda.max_memory_allocated(device)
    return row


def max_train_batch(model: nn.Module, input_shape: Tuple[int, int, int], device: torch.device,
                    limit: int = 65536, loss: Optional[Callable] = None, forward: Optional[Callable] = None) -> int:
    """CUDA: the largest training batch, up to limit, whose fp32 step fits in memory (doubling,
    then bisection); 0 if not even 2 fit (BatchNorm cannot train on one image)."""
    def fits(batch: int) -> bool:
        try:
            speed(model, input_shape, batch, device, warmup=0, repeats=1, train_step=True, loss=loss,
                  forward=forward)
            return True
        except torch.cuda.OutOfMemoryError:
            return False
        except RuntimeError as e:  # cuDNN and cuBLAS report a failed allocation in their own words
            if "ALLOC_FAILED" in str(e) or "out of memory" in str(e):
                return False
            raise
        finally:
            model.zero_grad(set_to_none=True)
            torch.cuda.empty_cache()

    lo, hi = 0, 2
    while True:  # double until a batch does not fit, or the limit does
        batch = min(hi, limit)
        if not fits(batch):
            hi = batch
            break
        lo = batch
        if batch == limit:
            return lo
        hi *= 2
    if lo == 0:
        return 0
    while hi - lo > 1:  # lo fits, hi does not
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if fits(mid) else (lo, mid)
    return lo
