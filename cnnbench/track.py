"""What a run leaves behind: results.json, TensorBoard event files and checkpoints.

Every file is written to a temporary file in the same directory and renamed into place, so a
kill during a save leaves the previous good file, never half of a new one.
"""

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Dict, Optional

RESULTS_FORMAT = "cnnbench.results"
RESULTS_FORMAT_VERSION = 1
CHECKPOINT_FORMAT_VERSION = 1
_UMASK = os.umask(0o022)
os.umask(_UMASK)  # read the process umask (the only way is to set it and set it back)


# Config keys that change how a run is watched or fed, not what it computes: a finished run in a
# sweep folder is the same job as the one about to start when everything else agrees, and runs
# that differ only in these (and the seed) are repeats of one experiment in the report.
BOOKKEEPING_KEYS = {"trainer.resume", "trainer.skip_completed", "trainer.progress", "trainer.threads",
                    "dataset.root", "dataset.num_workers"}


# Settings added after runs were saved without them, at the value those runs trained with: a
# config from before trainer.compile_mode existed compiled in torch.compile's default mode; one
# from before dataset.val_fraction validated on val/; one from before per_model and the external
# networks (model.target, arch, args) had none of them.
ADDED_SETTINGS = {"trainer.compile_mode": "default", "dataset.val_fraction": 0.0, "per_model": {},
                  "model.target": None, "model.arch": None, "model.args": None, "dataset.decode": "auto"}


def with_added_settings(config: Dict[str, Any]) -> Dict[str, Any]:
    """A saved config with the settings added since it was written (ADDED_SETTINGS) filled in,
    so that an older run still resumes, and matches or groups with a new run of its config."""
    out = {section: dict(v) if isinstance(v, dict) else v for section, v in (config or {}).items()}
    for key, value in ADDED_SETTINGS.items():
        section, _, name = key.partition(".")
        if not name:  # a top-level setting
            out.setdefault(section, value)
        elif isinstance(out.get(section), dict):
            out[section].setdefault(name, value)
    return out


def bookkeeping_keys(*configs: Dict[str, Any]) -> set:
    """BOOKKEEPING_KEYS for runs of these configs: an image folder's root is its data, not where
    the files are kept, so there it counts."""
    if any((c.get("dataset") or {}).get("name") == "imagefolder" for c in configs):
        return BOOKKEEPING_KEYS - {"dataset.root"}
    return BOOKKEEPING_KEYS


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


def atomic_write_text(path, text: str) -> None:
    _atomic_write(path, lambda f: f.write(text.encode()))


def atomic_write_bytes(path, data: bytes) -> None:
    _atomic_write(path, lambda f: f.write(data))


def _json_safe(value):
    """NaN and infinity are not JSON: write them as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def write_results(path, results: Dict[str, Any]) -> None:
    """results.json, atomically, stamped with the time of this write (`written_at`, UTC, ISO 8601):
    of two runs of one seed, `compare` counts the later one, and a copy keeps the time (cp resets
    a file's own)."""
    from datetime import datetime, timezone

    record = {"format": RESULTS_FORMAT, "format_version": RESULTS_FORMAT_VERSION, **results,
              "written_at": datetime.now(timezone.utc).isoformat(timespec="microseconds")}
    atomic_write_text(path, json.dumps(_json_safe(record), indent=2) + "\n")


def save_checkpoint(path, state: Dict[str, Any]) -> None:
    import torch  # here, not at the top: `cnnbench compare` needs no torch

    state = {"format_version": CHECKPOINT_FORMAT_VERSION, **state}
    _atomic_write(path, lambda f: torch.save(state, f))


def why_unloadable(e: Exception) -> tuple:
    """(refused, reason) for an exception of torch.load(..., weights_only=True): refused when the
    file holds pickled objects other than tensors (code, which cnnbench never runs), else the
    file is broken. The reason is one phrase, for a message."""
    import pickle
    import re

    text = " ".join(str(e).split())
    if isinstance(e, pickle.UnpicklingError):  # weights_only's refusal names the object
        found = re.search(r"GLOBAL ([\w.]+)", text)
        what = f" ({found.group(1).rstrip('.')})" if found else ""
        return True, (f"it holds pickled Python objects{what}, which could run code; cnnbench loads files "
                      f"with torch.load(weights_only=True) and never runs code from a file")
    first = text.split(". ")[0][:160]  # torch's first sentence says what failed
    error = f"{type(e).__name__}: {first}" if first else type(e).__name__
    return False, f"it is truncated, corrupt or not a file torch.save wrote ({error})"


def load_checkpoint(path, model_name: str, keep: bool = False) -> Dict[str, Any]:
    """Load a checkpoint written by save_checkpoint, refusing anything else. Tensors and plain
    containers only (`weights_only=True`): a file cannot run code in cnnbench. keep: hand this
    state to the next load of the same, unchanged file in this process instead of reading it
    again (the CLI's check before a resume; train() loads next)."""
    import torch

    from cnnbench.errors import CnnbenchError

    key = _file_key(path)  # taken before reading: a file replaced meanwhile is not the one kept
    handed = _KEPT.pop(key, None) if key else None
    forget_kept()  # a hand-over is for the very next load only
    try:
        state = handed if handed is not None else torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        refused, why = why_unloadable(e)
        raise CnnbenchError(f"Checkpoint {path} {'was refused' if refused else 'cannot be read'}: {why}. "
                            f"Resume only from a checkpoint cnnbench wrote, or start a new run (another "
                            f"hydra.run.dir, without trainer.resume).") from None
    if not isinstance(state, dict) or state.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        version = state.get("format_version") if isinstance(state, dict) else None
        raise CnnbenchError(f"Checkpoint {path} is not a cnnbench checkpoint of format version "
                            f"{CHECKPOINT_FORMAT_VERSION} (found {version!r}). Resume it with the cnnbench "
                            f"that wrote it, or start a new run (another hydra.run.dir, without trainer.resume).")
    if state.get("model") != model_name:
        raise CnnbenchError(f"Checkpoint {path} holds a {state.get('model')!r} model, but this run is "
                            f"model={model_name}. Resume it with its own overrides: cnnbench resume "
                            f"{Path(path).parent.parent}, or start a new run in another hydra.run.dir.")
    if keep and key is not None and _file_key(path) == key:
        _KEPT[key] = state
    return state


# A resumed run's checkpoint is read twice in one process: by the CLI's check, before Hydra
# touches the run folder, and by train(). The first read is handed to the second if the file is
# still the same one, unchanged (ResNet-50's 195 MiB took 0.25 s from the page cache; VGG-16's
# weights and momentum are 1.1 GB).
_KEPT: Dict[tuple, Dict[str, Any]] = {}


def _file_key(path) -> Optional[tuple]:
    """What identifies a file's contents without reading them: its path, inode, size and times."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (os.path.realpath(path), st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def forget_kept() -> None:
    """Drop a kept checkpoint that no load took (a command that ended before train() loaded it)."""
    _KEPT.clear()


# TensorBoard reads every file whose name holds "tfevents", in name order: this one, the run's
# HPARAMS record, sorts after the writer's own (events.out.tfevents.<seconds>.<host>...).
HPARAMS_FILE = "events.out.tfevents.hparams"


class TensorBoard:
    """Scalars while training, the first convolution's filters as images, and one hparams record
    at the end, in the run directory itself (so `tensorboard --logdir outputs` names each run by
    its folder, and a sweep's runs by what differs)."""

    def __init__(self, log_dir: Path, purge_step: Optional[int] = None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: on resume, drop events at or after this step left by the killed run.
        self.log_dir = Path(log_dir)
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, values: Dict[str, float], step: int) -> None:
        for tag, v in values.items():
            if v is not None:
                self.writer.add_scalar(tag, v, step)

    def image(self, tag: str, image, step: int) -> None:
        """One (3, H, W) image, floats in [0, 1] (a task's predictions beside the truth)."""
        self.writer.add_image(tag, image, step)

    def filters(self, model, step: int) -> None:
        """The model's first convolution (the stem, which sees the image) as one grid of its filters,
        tag `filters/<module name>`: what the network looks for. Each filter is scaled to its own
        min-max, so weak filters show as clearly as strong ones."""
        import torch.nn.functional as F
        from torch import nn
        from torchvision.utils import make_grid

        name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
        if conv is None:
            return
        w = conv.weight.detach().float().cpu()  # (out, in, kh, kw)
        if w.shape[1] != 3:  # RGB when the input is; else the mean over input channels: the
            w = w.mean(dim=1, keepdim=True)  # filter's response to a grey pattern (1 channel: itself)
        lo, hi = w.amin(dim=(1, 2, 3), keepdim=True), w.amax(dim=(1, 2, 3), keepdim=True)
        w = (w - lo) / (hi - lo).clamp_min(1e-12)
        # Enlarge each kernel pixel to a block (nearest): a 3x3 filter is otherwise 3 screen pixels.
        w = F.interpolate(w, scale_factor=max(1, 32 // max(w.shape[-2:])), mode="nearest")
        grid = make_grid(w, nrow=math.ceil(math.sqrt(len(w))), padding=2)  # (3, H, W) in [0, 1]
        self.writer.add_image(f"filters/{name}", grid, step)

    def hparams(self, hparams: Dict[str, Any], metrics: Dict[str, float]) -> None:
        """The run's one HPARAMS record, in an event file of its own, HPARAMS_FILE, which a later
        call replaces whole: a run resumed to train longer keeps one record, with its final settings
        and results (TensorBoard would list every record a run's files hold)."""
        import shutil

        from torch.utils.tensorboard.summary import hparams as hparams_summary, scalar
        from torch.utils.tensorboard.writer import FileWriter

        # Booleans as "true"/"false", as in the config: torch would record them as the numbers 0 and 1.
        hp = {k: (str(v).lower() if isinstance(v, bool) else v if isinstance(v, (int, float, str)) else str(v))
              for k, v in hparams.items()}
        mt = {f"hparam/{k}": v for k, v in metrics.items() if v is not None}
        scratch = Path(tempfile.mkdtemp(prefix=".hparams-", dir=self.log_dir))
        try:
            writer = FileWriter(str(scratch))  # what SummaryWriter.add_hparams writes, into one file
            for summary in (*hparams_summary(hp, mt), *(scalar(k, v) for k, v in mt.items())):
                writer.add_summary(summary)
            writer.close()
            (written,) = scratch.glob("*tfevents*")
            os.replace(written, self.log_dir / HPARAMS_FILE)
        finally:
            shutil.rmtree(scratch, ignore_errors=True)

    def close(self) -> None:
        self.writer.close()


class NoBoard:
    """What processes other than rank 0 log under torchrun: nothing (rank 0 writes the events)."""

    def scalars(self, values: Dict[str, float], step: int) -> None:
        pass

    def image(self, tag: str, image, step: int) -> None:
        pass

    def filters(self, model, step: int) -> None:
        pass

    def hparams(self, hparams: Dict[str, Any], metrics: Dict[str, float]) -> None:
        pass

    def close(self) -> None:
        pass
