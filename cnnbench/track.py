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
    record = {"format": RESULTS_FORMAT, "format_version": RESULTS_FORMAT_VERSION, **results}
    atomic_write_text(path, json.dumps(_json_safe(record), indent=2) + "\n")


def save_checkpoint(path, state: Dict[str, Any]) -> None:
    import torch  # here, not at the top: `cnnbench compare` needs no torch

    state = {"format_version": CHECKPOINT_FORMAT_VERSION, **state}
    _atomic_write(path, lambda f: torch.save(state, f))


def load_checkpoint(path, model_name: str) -> Dict[str, Any]:
    """Load a checkpoint written by save_checkpoint, refusing anything else. Tensors and plain
    containers only (`weights_only=True`): a file cannot run code in cnnbench."""
    import torch

    from cnnbench.errors import CnnbenchError

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise CnnbenchError(f"Checkpoint {path} cannot be read ({type(e).__name__}: {str(e)[:200]}). It is "
                            f"truncated, corrupt or not a cnnbench checkpoint; start a new run instead "
                            f"of resuming.") from None
    if not isinstance(state, dict) or state.get("format_version") != CHECKPOINT_FORMAT_VERSION:
        raise CnnbenchError(f"Checkpoint {path} is not a cnnbench checkpoint of format version "
                            f"{CHECKPOINT_FORMAT_VERSION}. Start a new run instead of resuming.")
    if state.get("model") != model_name:
        raise CnnbenchError(f"Checkpoint {path} holds a {state.get('model')!r} model, but this run is "
                            f"model={model_name}. Resume with model={state.get('model')}, or start a "
                            f"new run directory.")
    return state


class TensorBoard:
    """Scalars while training, and one hparams record at the end, in the run directory itself
    (so `tensorboard --logdir outputs` names each run by its folder)."""

    def __init__(self, log_dir: Path, purge_step: Optional[int] = None):
        from torch.utils.tensorboard import SummaryWriter

        # purge_step: on resume, drop events at or after this step left by the killed run.
        self.writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    def scalars(self, values: Dict[str, float], step: int) -> None:
        for tag, v in values.items():
            if v is not None:
                self.writer.add_scalar(tag, v, step)

    def hparams(self, hparams: Dict[str, Any], metrics: Dict[str, float]) -> None:
        hp = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
        mt = {f"hparam/{k}": v for k, v in metrics.items() if v is not None}
        self.writer.add_hparams(hp, mt, run_name=".")  # "." = this run's folder, not a new one

    def close(self) -> None:
        self.writer.close()
