"""cnnbench's own cost: `cnnbench train` throughput against a bare PyTorch loop, same run.

    python benchmarks/overhead.py [--epochs 1] [--repeats 3] [--device cpu] [--model lenet5]

Both train LeNet-5 on Fashion-MNIST (in-memory tensors, batch 128, the same threads and device)
with SGD + Nesterov momentum. The bare loop has nothing but zero_grad / forward / backward / step
over pre-normalised float tensors; cnnbench runs its real path (run.train: uint8 data normalised
per batch on the device, scheduler, metrics, TensorBoard, checkpoints, results.json). Each side
reports steady-state images/s (the first 10 steps of each epoch left out, CUDA synchronised);
they alternate so that drifting clocks hit both; the ratio of medians is printed.
Target (issue 2): ratio >= 0.95 on the CPU.
"""

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from cnnbench import run  # noqa: E402
from cnnbench.cli import compose_config  # noqa: E402
from cnnbench.data import build_data  # noqa: E402
from cnnbench.engine import sync_device  # noqa: E402
from cnnbench.models import create_model  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

WARMUP = 10  # steps per epoch left out of the timing, as cnnbench does


def bare_loop(x, y, model_name, batch, epochs, lr, device) -> float:
    """Images/s of the plainest correct training loop over the same tensors."""
    torch.manual_seed(0)
    model = create_model(model_name, num_classes=10, in_channels=1).to(device)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    rates = []
    for _ in range(epochs):
        order = torch.randperm(len(x), device=device)
        steps = len(x) // batch
        for i in range(steps):
            if i == WARMUP:
                sync_device(device)
                t0 = time.perf_counter()
            idx = order[i * batch:(i + 1) * batch]
            loss = F.cross_entropy(model(x[idx]), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync_device(device)
        rates.append((steps - WARMUP) * batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def cnnbench_loop(cfg) -> float:
    with tempfile.TemporaryDirectory() as d:
        return run.train(cfg, Path(d) / "run")["train_images_per_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="lenet5")
    a = p.parse_args()

    cfg = compose_config([f"model={a.model}", f"trainer.device={a.device}", f"trainer.epochs={a.epochs}",
                          "trainer.progress=false"])
    device = run.resolve_device(a.device)
    train, _, _ = build_data(OmegaConf.to_object(cfg.dataset), device, 0, run.image_size_for(cfg))
    x = train.normalize(train.images)  # the bare loop gets its floats ready-made
    y = train.labels
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"{a.model}, batch {cfg.dataset.batch_size}, {len(x)} images x {a.epochs} epoch(s), {a.repeats} repeats")
    bare, ours = [], []
    for r in range(a.repeats):
        bare.append(bare_loop(x, y, a.model, cfg.dataset.batch_size, a.epochs, cfg.optimizer.lr, device))
        ours.append(cnnbench_loop(cfg))
        print(f"  repeat {r + 1}: bare {bare[-1]:,.0f} img/s, cnnbench {ours[-1]:,.0f} img/s")
    ratio = statistics.median(ours) / statistics.median(bare)
    pairwise = sorted(o / b for o, b in zip(ours, bare))
    print(f"median bare loop {statistics.median(bare):,.0f} img/s; cnnbench train {statistics.median(ours):,.0f} "
          f"img/s; ratio {ratio:.3f} (target >= 0.95); per-repeat ratios {pairwise[0]:.2f}-{pairwise[-1]:.2f}")


if __name__ == "__main__":
    main()
