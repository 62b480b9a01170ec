"""cnnbench's own cost: `cnnbench train` throughput against a bare PyTorch loop, same run.

    python benchmarks/overhead.py [--task classification|segmentation|detection] [--epochs 1] [--repeats 7]
                                  [--device cpu] [--model NAME] [OVERRIDE ...]

classification (default): both train LeNet-5 on Fashion-MNIST (in-memory tensors, batch 128).
segmentation: both train U-Net (model.padding=same) on fashion_scenes canvases, per-pixel
cross-entropy with 255 ignored (CPU: 48 px canvases, 512 of them, batch 16, no augmentation,
since the bare loop has none).
detection: both train Faster R-CNN (MobileNet v2 backbone) on fashion_scenes' boxes, the sum of
its losses (CPU: 64 px canvases, 256 of them, batch 8, no augmentation); the bare loop hands the
detector each image's boxes as torchvision's list of dicts, made once before timing.
Both sides use the same threads, device and optimizer (SGD + Nesterov momentum). The bare loop
has nothing but zero_grad / forward / backward / step over pre-normalised float tensors;
cnnbench runs its real path (run.train: uint8 data normalised per batch on the device, scheduler,
the task's running figures, TensorBoard, checkpoints, results.json). Each side reports
steady-state images/s (the first 10 steps of each epoch left out, CUDA synchronised); they
alternate so that drifting clocks hit both; the ratio of medians is printed. Targets: ratio >=
0.95 on the CPU (issue 2 for classification, 17 for segmentation, 18 for detection).
Extra arguments are config overrides for both sides (dataset.canvas=96 on a GPU, say).
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


# What each task trains on the CPU unless overridden: small enough for a few minutes per repeat.
CASES = {
    "classification": ["model=lenet5"],
    "segmentation": ["model=unet", "model.padding=same", "dataset=fashion_scenes", "dataset.canvas=48",
                     "dataset.train_size=512", "dataset.val_size=64", "dataset.batch_size=16", "dataset.augment=false",
                     "optimizer.lr=1e-3"],  # SGD at 0.1 diverges for U-Net, which stops cnnbench's run
    "detection": ["model=faster_rcnn", "model.backbone=mobilenet_v2", "dataset=fashion_scenes", "dataset.canvas=64",
                  "dataset.train_size=256", "dataset.val_size=16", "dataset.batch_size=8", "dataset.augment=false",
                  "optimizer.lr=1e-3"],
}


def pixel_loss(model, x, y, idx):
    """Classification and segmentation: cross-entropy of the scores, 255 ignored (unlabelled pixels)."""
    return F.cross_entropy(model(x).float(), y[idx], ignore_index=255)


def detection_loss(targets):
    """A detector's summed losses; targets: torchvision's dict per image of the split."""
    def loss(model, x, y, idx):
        return sum(model(list(x), [targets[i] for i in idx.tolist()]).values())
    return loss


def bare_loop(x, y, model_name, options, classes, batch, epochs, lr, device, amp=None, channels_last=False,
              loss_of=pixel_loss) -> float:
    """Images/s of the plainest correct training loop over the same tensors, with cnnbench's
    precision (amp: an autocast dtype or None) and memory format (on CUDA: bf16 and channels_last).
    loss_of(model, x, y, idx): the batch's loss (pixel_loss; detection_loss)."""
    torch.manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.preserve_format
    model = create_model(model_name, num_classes=classes, in_channels=x.shape[1], **options).to(device,
                                                                                                 memory_format=fmt)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    rates = []
    for _ in range(epochs):
        order = torch.randperm(len(x), device=device)
        steps = len(x) // batch
        warmup = min(WARMUP, max(1, steps // 10))  # as engine.train_one_epoch leaves out
        for i in range(steps):
            if i == warmup:
                sync_device(device)
                t0 = time.perf_counter()
            idx = order[i * batch:(i + 1) * batch]
            with torch.autocast(device.type, dtype=amp, enabled=amp is not None):
                loss = loss_of(model, x[idx].contiguous(memory_format=fmt), y, idx)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        sync_device(device)
        rates.append((steps - warmup) * batch / (time.perf_counter() - t0))
    return statistics.median(rates)


def rate(images_per_s: float) -> str:
    """Images/s to print: whole above 100, else one decimal (a detector on a CPU: 6.4)."""
    return f"{images_per_s:,.0f}" if images_per_s >= 100 else f"{images_per_s:.1f}"


def cnnbench_loop(cfg) -> float:
    with tempfile.TemporaryDirectory() as d:
        return run.train(cfg, Path(d) / "run")["train_images_per_s"]


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--device", default="cpu")
    p.add_argument("--task", default="classification", choices=sorted(CASES))
    p.add_argument("--model", default=None, help="another model of the task (default: lenet5 / unet)")
    p.add_argument("overrides", nargs="*", help="config overrides for both sides")
    a = p.parse_args()

    case = CASES[a.task] + ([f"model={a.model}"] if a.model else [])
    cfg = compose_config([*case, f"trainer.device={a.device}", f"trainer.epochs={a.epochs}",
                          "trainer.progress=false", "trainer.log_filters=false", *a.overrides])
    run.validate(cfg)
    device = run.resolve_device(a.device)
    train, _, data = build_data(OmegaConf.to_object(cfg.dataset), device, 0, run.image_size_for(cfg))
    x = train.normalize(train.images)  # the bare loop gets its floats ready-made
    y = train.labels.long()  # (N,) labels or (N, H, W) masks
    loss_of = pixel_loss
    if a.task == "detection":  # each image's boxes as torchvision's dict: label = class + 1 (0: background)
        from cnnbench.tasks.detection import to_targets

        y, loss_of = train.boxes, detection_loss(to_targets(train.boxes, len(x)))
    name, options = cfg.model.name, run.model_options(cfg.model)
    # What run.train resolves trainer.amp=auto and channels_last=null to: bf16 and NHWC on a GPU with
    # bf16 tensor cores, neither on the CPU; the bare loop gets the same
    cuda_bf16 = device.type == "cuda" and torch.cuda.get_device_capability(device) >= (8, 0)
    amp, channels_last = (torch.bfloat16 if cuda_bf16 else None), device.type == "cuda"
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} threads, {a.task}: "
          f"{name} {options or ''}, batch {cfg.dataset.batch_size}, {len(x)} images of {x.shape[-1]} px x "
          f"{a.epochs} epoch(s), {a.repeats} repeats")
    bare, ours = [], []
    for r in range(a.repeats):
        bare.append(bare_loop(x, y, name, options, data.num_classes, cfg.dataset.batch_size, a.epochs,
                              cfg.optimizer.lr, device, amp, channels_last, loss_of))
        ours.append(cnnbench_loop(cfg))
        print(f"  repeat {r + 1}: bare {rate(bare[-1])} img/s, cnnbench {rate(ours[-1])} img/s")
    ratio = statistics.median(ours) / statistics.median(bare)
    pairwise = sorted(o / b for o, b in zip(ours, bare))
    print(f"median bare loop {rate(statistics.median(bare))} img/s; cnnbench train {rate(statistics.median(ours))} "
          f"img/s; ratio {ratio:.3f} (target >= 0.95); per-repeat ratios {pairwise[0]:.2f}-{pairwise[-1]:.2f}")


if __name__ == "__main__":
    main()
