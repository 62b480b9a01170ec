"""The segmentation experiment on one GPU, and cnnbench's overhead on a segmentation run.

    python benchmarks/segmentation.py [--out DIR] [--sweep DIR] [--epochs 5] [--models A,B] [--smoke]

1. `cnnbench train +experiment=segmentation` (FCN-32s/16s/8s, U-Net, SegNet on fashion_scenes, 96 px
   canvases, 10,000 training and 2,000 validation, 5 epochs), a job at a time, checkpoints off (disk
   writes, not training), then `cnnbench compare` on it: the table of the experiment's claims
   (comparison.md and two plots copied into DIR).
0. First, benchmarks/overhead.py --task segmentation: cnnbench's training images/s against a bare
   PyTorch loop on the same U-Net, canvases, batch, precision and memory format (on the GPU: 96 px,
   4,096 canvases, batch 64, bf16 autocast and channels_last on both sides).
Each step prints as it finishes; figures go to DIR/segmentation.json. --smoke runs the same code on
the CPU at toy sizes (32 px, 2 steps) and judges nothing: the rehearsal before a GPU call.
"""

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOKE = ["dataset.canvas=32", "dataset.train_size=8", "dataset.val_size=4", "dataset.batch_size=4",
         "trainer.max_steps_per_epoch=2", "trainer.device=cpu"]
FIGURES = ("model", "status", "params", "macs", "activation_bytes", "peak_memory_bytes", "peak_memory_kind",
           "train_images_per_s", "miou", "pixel_acc", "mean_class_acc", "best_miou", "best_epoch", "wall_time_s",
           "per_class_iou")


def cnnbench(*args: str) -> subprocess.CompletedProcess:
    print("$ cnnbench " + " ".join(args), flush=True)
    r = subprocess.run([sys.executable, "-m", "cnnbench", *args], cwd=ROOT, text=True, capture_output=True)
    print(r.stdout[-6000:] + r.stderr[-3000:], flush=True)
    return r


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="outputs/benchmarks/segmentation")
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--smoke", action="store_true")
    p.add_argument("--sweep", default="outputs/benchmarks/segmentation/sweep", help="where the runs go")
    p.add_argument("--models", default="fcn32s,fcn16s,fcn8s,unet,segnet",
                   help="jobs, each a model and optionally its own overrides: unet:model.norm=batch")
    p.add_argument("--no-overhead", action="store_true", help="leave out the overhead benchmark")
    a = p.parse_args()
    out = Path(a.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    import torch

    report = {"torch": torch.__version__, "device": torch.cuda.get_device_name() if torch.cuda.is_available()
              else "cpu", "epochs": a.epochs, "smoke": a.smoke}
    print(f"device {report['device']}, torch {report['torch']}", flush=True)

    if not a.no_overhead:  # first: short and bounded, whatever the jobs below take
        overhead = [sys.executable, str(ROOT / "benchmarks" / "overhead.py"), "--task", "segmentation"]
        overhead += (["--repeats", "1", "dataset.canvas=32", "dataset.train_size=64", "dataset.batch_size=4"]
                     if a.smoke else ["--device", "cuda", "--repeats", "3", "dataset.canvas=96",
                                      "dataset.train_size=4096", "dataset.batch_size=64"])
        print("$ " + " ".join(overhead), flush=True)
        r = subprocess.run(overhead, cwd=ROOT, text=True, capture_output=True)
        print(r.stdout + r.stderr[-3000:], flush=True)
        report["overhead"] = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else r.stderr[-500:]
        (out / "segmentation.json").write_text(json.dumps(report, indent=2))

    # The experiment's jobs one at a time (model=X narrows its sweep to one job), so that each job's
    # figures are saved as soon as it ends, even if a time limit stops the rest.
    sweep = Path(a.sweep).resolve()
    report["runs"] = []
    for job in a.models.split(","):  # "unet" or "unet:model.norm=batch": a model and its own overrides
        model, *extra = job.split(":")
        folder = sweep / job.replace(":", "_").replace("=", "-")  # Hydra reads = in a value as an override
        t0 = time.perf_counter()
        r = cnnbench("train", "+experiment=segmentation", f"model={model}", *extra, f"trainer.epochs={a.epochs}",
                     "trainer.checkpoint=false", "trainer.progress=false",
                     f"hydra.sweep.dir={folder}", *(SMOKE if a.smoke else []))
        res_file = next(iter(sorted(folder.glob("*/results.json"))), None)
        res = json.loads(res_file.read_text()) if res_file else {"model": model, "status": f"rc {r.returncode}"}
        row = {"job": job, **{k: res.get(k) for k in FIGURES}}
        row.update(history_val_miou=[h.get("val_miou") for h in res.get("history", [])],
                   job_s=time.perf_counter() - t0)
        report["runs"].append(row)
        (out / "segmentation.json").write_text(json.dumps(report, indent=2))
    r = cnnbench("compare", str(sweep), "--out", str(sweep / "compare"),
                 "--columns", "run,model,params,gmacs,activation_bytes,peak_memory_bytes,train_images_per_s,miou,"
                              "pixel_acc,mean_class_acc,best_miou,wall_time_s")
    for name in ("comparison.md", "miou_vs_gmacs.png", "segmentation_curves.png"):
        if (sweep / "compare" / name).is_file():
            shutil.copy(sweep / "compare" / name, out / name)


if __name__ == "__main__":
    main()
