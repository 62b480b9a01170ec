"""LeNet-5 training step time: PyTorch's convolution against the im2col reference (model.conv_impl).

    python benchmarks/im2col.py [--batch 128] [--steps 20] [--warmup 5] [--repeats 7] [--threads 0]

Both models start from the same weights and train on the same random 1x32x32 batch (SGD with
Nesterov momentum, as cnnbench's default). Each repeat times `steps` training steps (zero_grad,
forward, backward, step) after `warmup` untimed ones; the two implementations alternate so that
drifting clocks and a busy machine hit both. Prints the median milliseconds per step of each and
their ratio (im2col / torch: above 1 means im2col is slower).
"""

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnnbench.engine import sync_device  # noqa: E402
from cnnbench.models import create_model  # noqa: E402

IMPLS = ("torch", "im2col")


def step_ms(model, opt, x, y, steps: int, warmup: int, device: torch.device) -> float:
    """Milliseconds per training step, warm-up steps left out."""

    def step():
        opt.zero_grad(set_to_none=True)
        F.cross_entropy(model(x), y).backward()
        opt.step()

    for _ in range(warmup):
        step()
    sync_device(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    sync_device(device)
    return 1e3 * (time.perf_counter() - t0) / steps


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=128, help="images per step (cnnbench's default)")
    p.add_argument("--steps", type=int, default=20, help="timed steps per repeat")
    p.add_argument("--warmup", type=int, default=5, help="untimed steps before each timing")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads; 0 = torch's default")
    p.add_argument("--device", default="cpu")
    a = p.parse_args()

    if a.threads:
        torch.set_num_threads(a.threads)
    device = torch.device(a.device)
    torch.manual_seed(0)
    x = torch.randn(a.batch, 1, 32, 32, device=device)
    y = torch.randint(0, 10, (a.batch,), device=device)
    runs = {}
    for impl in IMPLS:
        torch.manual_seed(0)  # the same initial weights for both
        model = create_model("lenet5", num_classes=10, in_channels=1, conv_impl=impl).to(device).train()
        opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
        runs[impl] = (model, opt)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, LeNet-5, "
          f"batch {a.batch}, {a.steps} timed steps after {a.warmup} warm-up steps, {a.repeats} repeats")
    times = {impl: [] for impl in IMPLS}
    for r in range(a.repeats):
        for impl in IMPLS:
            times[impl].append(step_ms(*runs[impl], x, y, a.steps, a.warmup, device))
        print(f"  repeat {r + 1}: " + ", ".join(f"{impl} {times[impl][-1]:.2f} ms" for impl in IMPLS))
    med = {impl: statistics.median(times[impl]) for impl in IMPLS}
    pairwise = sorted(i / t for i, t in zip(times["im2col"], times["torch"]))
    print(f"median ms/step: torch {med['torch']:.2f}, im2col {med['im2col']:.2f}; ratio im2col/torch "
          f"{med['im2col'] / med['torch']:.2f} (per-repeat ratios {pairwise[0]:.2f}-{pairwise[-1]:.2f})")


if __name__ == "__main__":
    main()
