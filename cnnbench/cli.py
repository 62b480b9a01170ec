"""The `cnnbench` command: train, compare, models.

    cnnbench train [-m] [GROUP=OPTION ...] [KEY=VALUE ...]   Hydra overrides; -m sweeps
    cnnbench compare [PATH ...] [--out DIR]                  one table of every run below PATHs
    cnnbench profile [--layers] [KEY=VALUE ...]               cost without training
    cnnbench models [PATTERN] [--input CxHxW] [--classes N]  the architectures cnnbench knows

Bad input exits with status 2 and a one-paragraph message; tracebacks only with
HYDRA_FULL_ERROR=1 or CNNBENCH_DEBUG=1.
"""

import argparse
import difflib
import functools
import hashlib
import importlib.resources
import logging
import os
import re
import shutil
import signal
import sys
import tempfile
from pathlib import Path
from typing import List, Optional

from cnnbench.errors import CnnbenchError

try:  # installed: conf/ travels inside the package (pyproject.toml)
    CONF_DIR = str(importlib.resources.files("cnnbench.conf"))
except ModuleNotFoundError:  # a checkout on PYTHONPATH, not installed (benchmarks/device.md)
    CONF_DIR = str(Path(__file__).resolve().parents[1] / "conf")
GROUPS = ("model", "dataset", "optimizer", "scheduler", "trainer")
log = logging.getLogger("cnnbench")

USAGE = """usage: cnnbench COMMAND [ARGS]

commands:
  train     train a configuration (Hydra overrides: model=resnet18 dataset=cifar10 ...; -m to sweep)
  profile   cost without training: params, MACs, memory, latency and throughput per batch size
  compare   one table of every run found below the given paths (default: outputs/)
  models    list the architectures, with parameters and GMACs

`cnnbench COMMAND --help` for each command's options."""


def _debug() -> bool:
    return any(os.environ.get(v, "") not in ("", "0") for v in ("HYDRA_FULL_ERROR", "CNNBENCH_DEBUG"))


def _fail(message: str, code: int = 2) -> int:
    from rich.console import Console

    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}")
    return code


# ---------------------------------------------------------------------------------------------
# train
# ---------------------------------------------------------------------------------------------

def group_options(group: str) -> List[str]:
    return sorted(p.stem for p in Path(CONF_DIR, group).glob("*.yaml"))


def explain_config_error(exc: BaseException) -> str:
    """Hydra and OmegaConf composition errors, said in cnnbench's terms with the fix."""
    from hydra.errors import MissingConfigException, OverrideParseException
    from omegaconf.errors import (ConfigAttributeError, ConfigKeyError, MissingMandatoryValue,
                                  ValidationError)

    cause = exc  # the deepest exception in the chain that names a config key
    link = exc
    while link is not None:
        if getattr(link, "full_key", None):
            cause = link
        link = link.__cause__
    if isinstance(exc, MissingConfigException) and exc.missing_cfg_file:
        group, _, name = exc.missing_cfg_file.rpartition("/")
        if group in GROUPS:
            return (f"Unknown {group} {name!r}. Known: {', '.join(group_options(group))}. "
                    f"Choose one with {group}=NAME.")
        if group == "experiment":
            return (f"Unknown experiment {name!r}. Known: {', '.join(group_options(group))}. "
                    f"Choose one with +experiment=NAME (the files are in conf/experiment/).")
        if exc.options:  # another group, Hydra's own (hydra/launcher, say)
            return f"Unknown {group} {name!r}. Known: {', '.join(exc.options)}. Choose one with {group}=NAME."
        return (f"There is no config group {group!r} (from {exc.missing_cfg_file}). The groups are "
                f"{', '.join(GROUPS)} and +experiment; `cnnbench train --help` lists their options.")
    if isinstance(exc, OverrideParseException):
        return f"Cannot read the command line: {exc}. Overrides look like key=value, e.g. optimizer.lr=0.1."
    key = getattr(cause, "full_key", None) or ""
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key.startswith("hydra."):
        return (f"{key} is not a Hydra setting. `cnnbench train --cfg hydra` prints them all (hydra.run.dir, "
                f"hydra.sweep.dir, hydra.launcher.*, ...).")
    if isinstance(cause, (ConfigKeyError, ConfigAttributeError)) and key:
        section, _, leaf = key.rpartition(".")
        from cnnbench.config import Config

        node = Config.__dataclass_fields__.get(section)
        known = (list(node.default_factory().__dataclass_fields__) if node else
                 list(Config.__dataclass_fields__) if not section else [])
        guess = difflib.get_close_matches(leaf, known, n=1)
        hint = f" Did you mean {section + '.' if section else ''}{guess[0]}?" if guess else ""
        where = f"The {section or 'top-level'} settings are: {', '.join(known)}." if known else ""
        return f"{key} is not a cnnbench setting.{hint} {where} (Every key is listed in cnnbench/config.py.)"
    if isinstance(cause, ValidationError) and key:
        first = str(cause).splitlines()[0]
        return (f"{key}: {first}. Give {key} a value of the right type "
                f"(`cnnbench train --cfg job` shows the defaults).")
    if isinstance(cause, MissingMandatoryValue) and key:
        return f"{key} must be set: it has no default for this choice. Add {key}=... to the command line."
    return (f"{' '.join(str(exc).split()) or type(exc).__name__}. Overrides look like group=option or "
            f"key=value (model=resnet18, optimizer.lr=0.1); `cnnbench train --help` lists them.")


def _expand_sweeps(overrides: List[str]) -> List[List[str]]:
    """Every job Hydra's basic sweeper makes of these overrides: a later override of a key replaces
    an earlier one (the command line beats an experiment's sweeper params); a,b,c values multiply."""
    from hydra._internal.core_plugins.basic_sweeper import BasicSweeper
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(overrides)
    return BasicSweeper.split_arguments(parsed, None)[0]


# Keys given several values by the sweep (-m or an experiment), comma-separated. An environment
# variable rather than a global: joblib runs jobs in worker processes that inherit it.
_SWEPT_KEYS = "CNNBENCH_SWEPT_KEYS"


# What a file name cannot hold on Linux, macOS or Windows (the separators, : * ? " < > | and control
# characters), and % itself, the escape. Hydra's sweeps escape : as \: (trainer.device=cuda\:0).
_UNSAFE = frozenset('%/\\:*?"<>|\x7f') | {chr(c) for c in range(32)}
_NAME_MAX = 255  # bytes in one file name: ext4, XFS, APFS, and NTFS (255 UTF-16 units, fewer than bytes)


def _differs(task_overrides, swept: Optional[str] = None) -> List[str]:
    """The overrides of a sweep job that differ between its jobs, sorted. swept: the keys, bound in
    when the sweep is planned (Hydra ships resolvers to launcher processes), else from the
    environment."""
    swept = set((swept if swept is not None else os.environ.get(_SWEPT_KEYS, "")).split(","))
    return sorted(o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") in swept)


def _folder_name(text: str) -> str:
    """text as one valid file name, the same every time: unsafe characters percent-encoded
    (data/x -> data%2Fx, which meets neither data_x nor a literal data%2Fx, that is data%252Fx), and
    a name over 255 bytes cut to fit and ended with ~ and 8 hex digits of text's SHA-256."""
    name = "".join(f"%{ord(c):02X}" if c in _UNSAFE else c for c in text)
    if len(name.encode()) <= _NAME_MAX:
        return name
    tag = "~" + hashlib.sha256(text.encode()).hexdigest()[:8]
    head = name.encode()[:_NAME_MAX - len(tag)].decode(errors="ignore")  # no half character
    return re.sub(r"%[0-9A-F]?$", "", head) + tag  # nor half an escape


def _sweep_subdir(task_overrides, swept: Optional[str] = None) -> str:
    """A sweep job's folder name: only what differs between its jobs, e.g. model=resnet56,seed=1
    (Hydra's override_dirname would repeat every fixed override too), made a valid file name by
    _folder_name. The job's full overrides are in its .hydra/overrides.yaml."""
    return _folder_name(",".join(_differs(task_overrides, swept))) or "job"


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("cnnbench_sweep_subdir", _sweep_subdir, replace=True)


def _is_hydra_override(o: str) -> bool:
    return o.lstrip("+~").startswith("hydra")


def compose_config(overrides: List[str]):
    """The config `cnnbench train OVERRIDES` runs, composed by Hydra from conf/ and nothing run
    (tests and benchmarks start here)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cnnbench.config import register_configs

    register_configs()
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3"):
        return compose("config", overrides=list(overrides))


def _nearest_existing(path: Path) -> Path:
    """path, or the closest of its ancestors that exists."""
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def _check_output_dir(path: Path, key: str) -> None:
    """The folder Hydra is about to create must be creatable: its nearest existing ancestor is a
    writable directory (tried, when there is something to create: permissions do not bind root, and
    /proc or a read-only mount refuse anyone)."""
    parent = _nearest_existing(path)
    why = None
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        why = "is not a directory" if not parent.is_dir() else "is not writable"
    elif parent != path.absolute():
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".cnnbench-", dir=parent))
        except OSError as e:
            why = f"does not take new folders ({e.strerror or e})"
    if why:
        raise CnnbenchError(f"Cannot create the output folder {path}: {parent} {why}. Choose another place "
                            f"with {key}=... (or run from a folder you can write to).")


_PLANNED: dict = {}  # what preflight worked out: the run directory of a single run


def plan_jobs(overrides: List[str], multirun: bool) -> tuple:
    """(jobs, multirun): the overrides of every job the command line makes. An experiment can
    make a sweep by itself (hydra.mode: MULTIRUN with hydra.sweeper.params), so the primary
    config is composed first to see its mode and sweep parameters."""
    from hydra import compose
    from hydra.types import RunMode
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf, open_dict

    _PLANNED.pop("config", None)
    parsed = OverridesParser.create().parse_overrides(overrides)
    for o in parsed:
        if o.is_sweep_override() and next(iter(o.sweep_string_iterator()), None) is None:
            raise CnnbenchError(f"{o.input_line} gives {o.get_key_element()} no value at all, so the sweep would have "
                                f"no jobs. Give it at least one, e.g. {o.get_key_element()}=range(0,3).")
    first = [f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}" if o.is_sweep_override()
             else o.input_line for o in parsed]  # one job's worth, to read the hydra node
    primary = compose("config", overrides=first, return_hydra_config=True)
    multirun = multirun or primary.hydra.mode == RunMode.MULTIRUN
    for key, value in (("hydra.run.dir", primary.hydra.run.dir), ("hydra.sweep.dir", primary.hydra.sweep.dir)):
        if not str(value).strip():
            raise CnnbenchError(f"{key} is empty (an unset shell variable?), which would write the run into the "
                                f"current folder. Give a folder, e.g. {key}=outputs/mine, or leave {key} out for "
                                f"the default.")
        long = next((part for part in Path(str(value)).parts if len(part.encode()) > _NAME_MAX), None)
        if long:
            raise CnnbenchError(f"{key} names a folder of {len(long.encode())} bytes ({long[:40]}...); a file system "
                                f"takes at most {_NAME_MAX} bytes in one name. Choose a shorter {key}.")
    _PLANNED["run_dir"] = str(primary.hydra.run.dir)  # resolved now: torchrun's ranks share rank 0's
    run_dir = Path(_PLANNED["run_dir"])
    _PLANNED["had"] = {p.name for p in run_dir.iterdir()} if run_dir.is_dir() else None  # the user's folder
    _PLANNED["sweep_dir"] = str(primary.hydra.sweep.dir)
    subdir = OmegaConf.to_container(primary.hydra.sweep, resolve=False).get("subdir")
    _PLANNED["subdir"] = subdir
    _PLANNED["subdir_is_ours"] = "cnnbench_sweep_subdir" in str(subdir)  # else jobs' folders are the user's call
    _PLANNED["existing_ancestor"] = _nearest_existing(run_dir)  # a refused run cleans up to here
    _PLANNED["on_cluster"] = "slurm" in str(primary.hydra.launcher.get("_target_", "")).lower()
    if _PLANNED["on_cluster"] and not shutil.which("sbatch"):
        raise CnnbenchError("hydra/launcher=slurm submits each job with sbatch, which is not on this machine's "
                            "PATH. Run the sweep from a SLURM login node, or use hydra/launcher=joblib (or "
                            "submitit_local) to run it here.")
    _check_output_dir(Path(primary.hydra.sweep.dir if multirun else primary.hydra.run.dir),
                      "hydra.sweep.dir" if multirun else "hydra.run.dir")
    own = [o for o in overrides if not _is_hydra_override(o)]
    if not multirun:
        if first == list(overrides):  # the one job is the primary config: preflight need not compose it again
            with open_dict(primary):
                del primary["hydra"]
            _PLANNED["config"] = primary
        return [own], False
    params = primary.hydra.sweeper.get("params") or {}
    swept = [f"{k}={v}" for k, v in params.items()] + own
    keys = ",".join(o.get_key_element().lstrip("+~") for o in
                    OverridesParser.create().parse_overrides(swept) if o.is_sweep_override())
    os.environ[_SWEPT_KEYS] = keys
    OmegaConf.register_new_resolver("cnnbench_sweep_subdir", functools.partial(_sweep_subdir, swept=keys),
                                    replace=True)
    return _expand_sweeps(swept), True


_held: list = []  # the lock file of the run directory this process trains in, open until it exits


def _hold(run_dir: Path) -> None:
    """Claim run_dir for this process, so that a second `cnnbench train` into the same folder,
    started before the first has written anything there, is refused rather than interleaved. The
    lock file lives in the temporary folder, named after the folder's path: nothing is added to
    run_dir, and the lock goes with the process however it ends. (One machine: two machines
    sharing a file system are not covered.)"""
    import fcntl

    from cnnbench import distributed

    if not distributed.world().main:  # torchrun: rank 0 holds it for the run
        return
    key = hashlib.sha1(str(run_dir.absolute()).encode()).hexdigest()[:16]
    folder = Path(tempfile.gettempdir(), "cnnbench-locks")
    try:
        folder.mkdir(exist_ok=True)
        f = open(folder / f"{key}.lock", "a")
    except OSError:  # another user's folder, say: run unguarded rather than not at all
        return
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise CnnbenchError(f"Another cnnbench process is training in {run_dir} right now. Wait for it, or "
                            f"choose another hydra.run.dir.") from None
    _held.append(f)


def _release() -> None:
    while _held:
        _held.pop().close()


def _check_job_dir(cfg, job_dir: Path) -> None:
    """Refuse a sweep job whose folder holds a run it would have to overwrite: one of another
    config, an unreadable record, a checkpoint trainer.resume cannot use, or a completed run with
    trainer.skip_completed=false."""
    from cnnbench import run

    if cfg.trainer.resume:
        run.check_run_dir(cfg, job_dir)
        return
    before = run.earlier_record(cfg, job_dir)
    if before and before["status"] == "completed" and cfg.trainer.skip_completed is False:
        raise CnnbenchError(f"{job_dir} already holds a run, completed, and trainer.skip_completed=false says not "
                            f"to skip it; cnnbench will not overwrite it either. Leave trainer.skip_completed out "
                            f"to skip completed jobs, or run the sweep in a new folder.")


def _job_folder(job: List[str], num: int, hydra_args: List[str]) -> Optional[str]:
    """The folder, below hydra.sweep.dir, that Hydra will give sweep job number num: cnnbench's own
    name, or the user's hydra.sweep.subdir resolved as the launcher resolves it; None when that
    cannot be known before the job runs (${hydra.job.id}, which a SLURM launcher sets, say)."""
    if _PLANNED["subdir_is_ours"]:
        return _sweep_subdir(job)
    from hydra import compose
    from hydra.core.hydra_config import HydraConfig
    from omegaconf import OmegaConf

    held = HydraConfig.instance().cfg
    try:
        cfg = compose("config", overrides=hydra_args + job, return_hydra_config=True)
        cfg.hydra.job.num = num
        HydraConfig.instance().set_config(cfg)  # for ${hydra:...}
        return str(OmegaConf.select(cfg, "hydra.sweep.subdir", throw_on_missing=True))
    except Exception:  # known only to the launcher: Hydra checks nothing there either
        return None
    finally:
        HydraConfig.instance().cfg = held


def _claim_folder(folders: dict, folder: str, num: int, job: List[str]) -> None:
    """Refuse a sweep job whose folder an earlier job of the sweep has (folders: path -> (num, job)),
    or whose name is longer than a file system takes: refused now, not when Hydra makes it mid-sweep."""
    def named(n, overrides):  # as Hydra's log lists a job: #1 (seed=1)
        return f"#{n} ({' '.join(_differs(overrides)) or ' '.join(overrides) or 'no overrides'})"

    where = os.path.normpath(Path(_PLANNED["sweep_dir"], folder))
    long = [part for part in Path(folder).parts if len(part.encode()) > _NAME_MAX]
    if long:
        raise CnnbenchError(f"hydra.sweep.subdir gives sweep job {named(num, job)} a folder name of "
                            f"{len(long[0].encode())} bytes ({long[0][:40]}...); a file name takes at most "
                            f"{_NAME_MAX}. Shorten the pattern, or leave hydra.sweep.subdir out: cnnbench's own "
                            f"names are cut to fit.")
    first = folders.setdefault(os.path.abspath(where), (num, job))
    if first[0] == num:
        return
    fix = ("cnnbench names a job's folder by the values that differ between jobs, and these two have the "
           "same ones: give each value once (seed=0,1, not seed=1,1)" if _PLANNED["subdir_is_ours"] else
           f"hydra.sweep.subdir={_PLANNED['subdir']} names them alike, so the second would overwrite the "
           f"first: make it name what differs (${{hydra.job.num}} or ${{hydra.job.override_dirname}}), or "
           f"leave hydra.sweep.subdir out for cnnbench's own names (model=resnet56,seed=1)")
    raise CnnbenchError(f"Sweep jobs {named(*first)} and {named(num, job)} would both write into {where}; "
                        f"{fix}. Nothing was run.")


def preflight(overrides: List[str], multirun: bool) -> None:
    """Compose and validate every job before Hydra creates any directory, so bad input leaves
    nothing behind and touches no earlier run. In a sweep, a job that composes but fails
    validation (an image size one model cannot take, say) is announced here, recorded as failed
    when its turn comes, and the others run; a name or key that does not exist, or a job folder
    that holds a run of another config, stops the sweep."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cnnbench import run

    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="train"):
        try:
            jobs, multirun = plan_jobs(overrides, multirun)
        except CnnbenchError:
            raise
        except Exception as e:
            if _debug():
                raise
            raise CnnbenchError(explain_config_error(e)) from None
        hydra_args = [o for o in overrides if _is_hydra_override(o)]
        folders: dict = {}  # each job's folder, to refuse two jobs one folder
        for num, job in enumerate(jobs):
            try:
                cfg = _PLANNED.pop("config", None) or compose("config", overrides=job)
                run.validate(cfg)
            except CnnbenchError as e:
                if not multirun:
                    raise
                log.warning(f"warning: sweep job {_sweep_subdir(job)} will be recorded as failed: {e}")
            except Exception as e:
                if _debug():
                    raise
                where = f" (sweep job {_sweep_subdir(job)})" if multirun else ""
                raise CnnbenchError(explain_config_error(e) + where) from None
            folder = _job_folder(job, num, hydra_args) if multirun else None
            if folder is not None:
                _claim_folder(folders, folder, num, job)
            if multirun and _COMMAND["name"] == "train" and _PLANNED["subdir_is_ours"]:
                # A job folder whose run this job may not take up stops the sweep here, before Hydra
                # rewrites any job's .hydra/ or the sweep's multirun.yaml.
                _check_job_dir(cfg, Path(_PLANNED["sweep_dir"], folder))
    GlobalHydra.instance().clear()
    run_dir = Path(_PLANNED["run_dir"])
    if not multirun and _COMMAND["name"] == "train":
        _hold(run_dir)
        run.check_run_dir(cfg, run_dir, keep=True)  # train() takes the checkpoint read here
    elif not multirun:
        run.check_profile_dir(run_dir)


class _JobExit(SystemExit):
    """Raised by the task function to end `cnnbench train` with a status of its own choosing
    (Hydra lets SystemExit through; this subclass keeps it apart from Hydra's own exit 1)."""


_RUN_DIR = "CNNBENCH_RUN_DIR"  # torchrun ranks other than 0: the run directory rank 0 writes
_COMMAND = {"name": "train"}  # which command the Hydra task runs: train or profile
# In a sweep, each job that does not complete appends a line to this file; the launcher may run
# jobs in other processes (joblib), so a list in memory would not see them.
_FAILED_LOG = "CNNBENCH_FAILED_JOBS"


def _job_failed(run_dir: Path, message: str) -> None:
    line = f"{run_dir.name}: {message}"
    log.error(f"job {line}")
    path = os.environ.get(_FAILED_LOG)
    if path:
        with open(path, "a", encoding="utf-8") as f:
            f.write(" ".join(line.split()) + "\n")


# Parallel sweeps (hydra/launcher=joblib) run jobs in worker processes. With several GPUs each
# worker takes one for its lifetime and sees only that one; on the CPU the cores are shared out.
_PARENT_PID = "CNNBENCH_PARENT_PID"
_GPU_LOCKS = "CNNBENCH_GPU_LOCKS"  # a folder of lock files, one per GPU: gpu0.lock, gpu1.lock, ...
_claimed_gpu: list = []  # the open lock file this worker holds (released when the process ends)


def claim_gpu(lock_dir: str, visible: List[str], job_num: int) -> str:
    """Lock the first free GPU slot (waiting for slot job_num % n when all are taken) and return
    the CUDA device it stands for, from `visible` (the parent's CUDA_VISIBLE_DEVICES list)."""
    import fcntl

    for i in range(len(visible)):
        f = open(Path(lock_dir, f"gpu{i}.lock"), "a")
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.close()
            continue
        _claimed_gpu.append(f)
        return visible[i]
    i = job_num % len(visible)  # more workers than GPUs: wait for one
    f = open(Path(lock_dir, f"gpu{i}.lock"), "a")
    fcntl.flock(f, fcntl.LOCK_EX)
    _claimed_gpu.append(f)
    return visible[i]


def _share_resources(cfg, hc) -> None:
    """In a joblib worker: pin this process to one GPU (several GPUs) or to its share of the CPU
    cores (trainer.threads=0 would give every worker all of them)."""
    if os.environ.get(_PARENT_PID, str(os.getpid())) == str(os.getpid()):
        return  # jobs run one after another in this process: nothing to share
    lock_dir = os.environ.get(_GPU_LOCKS)
    if lock_dir and not _claimed_gpu and cfg.trainer.device in ("auto", "cuda"):
        visible = os.environ["CUDA_VISIBLE_DEVICES"].split(",")
        os.environ["CUDA_VISIBLE_DEVICES"] = claim_gpu(lock_dir, visible, hc.job.num)
    if cfg.trainer.threads == 0:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
        workers = hc.launcher.get("n_jobs") or 1  # joblib's workers share this machine; SLURM pins its own
        workers = cores if workers < 0 else workers
        cfg.trainer.threads = max(1, cores // workers)


def _task(cfg) -> Optional[dict]:
    """Hydra's task function: one job of `cnnbench train` or `cnnbench profile`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from cnnbench import run

    hc = HydraConfig.get()
    run_dir = Path(os.environ.get(_RUN_DIR) or hc.runtime.output_dir)  # torchrun: rank 0's, in every rank
    sweeping = hc.mode == RunMode.MULTIRUN
    command = _COMMAND["name"]
    if sweeping:
        _share_resources(cfg, hc)
    try:
        if command == "train":
            earlier = run.reuse_run_dir(cfg, run_dir, sweeping)
            results = earlier if earlier is not None else run.train(cfg, run_dir)
        elif sweeping:
            results = _profile_in_child(cfg, run_dir)
        else:
            results = run.profile(cfg, run_dir)
    except CnnbenchError as e:
        if _debug():
            raise
        if sweeping:  # the sweep goes on; this job is recorded as failed
            if command == "train":
                run.record_failure(cfg, run_dir, str(e))
            _job_failed(run_dir, str(e))
            return None
        _remove_if_empty(run_dir)
        raise _JobExit(_fail(str(e), e.exit_code))
    except KeyboardInterrupt as e:  # the sweep stops too: the user (or the scheduler) asked for it
        code = 128 + getattr(e, "signum", signal.SIGINT)
        if os.environ.get("SUBMITIT_EXECUTOR") and code - 128 not in (signal.SIGINT, signal.SIGTERM):
            try:  # submitit's own handler: requeue this job (it resumes from last.pt), then exit
                signal.getsignal(code - 128)(code - 128, None)
            except RuntimeError:  # no requeue left: the run stays interrupted, resumable by hand
                pass
        raise _JobExit(_fail(f"interrupted; what was done so far is in {run_dir}", code))
    except Exception as e:
        if _debug():
            raise
        message = f"{command} failed: {type(e).__name__}: {e}."
        if sweeping and command == "train":  # failed before train() wrote a record: compare still lists it
            run.record_failure(cfg, run_dir, message)
        if (run_dir / "results.json").is_file() and command == "train":
            message += f" The run's record is {run_dir / 'results.json'}."
        message += " Run again with CNNBENCH_DEBUG=1 for the traceback."
        if sweeping:
            _job_failed(run_dir, message)
            return None
        raise _JobExit(_fail(message, 1))
    if command == "train":
        if os.environ.get(_RUN_DIR) is None:  # torchrun: rank 0 speaks for the run
            _summary(results)
    else:
        from cnnbench.report import profile_tables

        profile_tables(results)
    return results


def _profile_in_child(cfg, run_dir: Path) -> dict:
    """Profile one sweep job in a fresh process, so its memory figures (peak RSS, the CUDA
    allocator's state) owe nothing to the jobs before it."""
    import multiprocessing

    from omegaconf import OmegaConf

    ctx = multiprocessing.get_context("spawn")  # not fork: a clean interpreter and CUDA context
    receive, send = ctx.Pipe(duplex=False)
    config = OmegaConf.to_container(cfg, resolve=True, enum_to_str=True)
    child = ctx.Process(target=_profile_child, args=(config, str(run_dir), send), name="cnnbench-profile")
    child.start()
    send.close()
    try:
        kind, payload = receive.recv()
    except EOFError:  # killed (out of memory, a signal) before it could answer
        kind, payload = "crash", f"the profiling process ended with exit code {child.exitcode}"
    finally:
        child.join()
    if kind == "ok":
        return payload
    if kind == "refused":
        raise CnnbenchError(payload)
    raise RuntimeError(payload)


def _profile_child(config: dict, run_dir: str, send) -> None:
    """The child side of _profile_in_child: rebuild the typed config, profile, send the result."""
    from omegaconf import OmegaConf

    from cnnbench import run
    from cnnbench.config import Config

    handlers = [logging.StreamHandler(sys.stdout), logging.FileHandler(Path(run_dir, "train.log"))]
    handlers[1].setFormatter(logging.Formatter("[%(asctime)s][%(levelname)s] %(message)s"))
    logging.basicConfig(level=logging.INFO, format="%(message)s", handlers=handlers)
    try:
        cfg = OmegaConf.merge(OmegaConf.structured(Config), config)
        send.send(("ok", run.profile(cfg, Path(run_dir))))
    except CnnbenchError as e:
        send.send(("refused", str(e)))
    except BaseException as e:  # reported by the parent, which carries on with the sweep
        send.send(("crash", f"{type(e).__name__}: {e}"))


def _remove_if_empty(run_dir: Path) -> None:
    """A run refused before it began leaves no directory behind: remove run_dir if it holds only
    what Hydra put there (.hydra/ and the log), and the empty folders above it that this command
    created (outputs/runs/, say). A folder that existed before the command is the user's: only
    what the command added to it goes. Under torchrun, rank 0's to do."""
    from cnnbench import distributed

    if not distributed.world().main:
        return
    had = _PLANNED.get("had")
    if had is not None and run_dir.absolute() == Path(_PLANNED["run_dir"]).absolute():
        for name in {".hydra", "train.log"} - had:
            path = run_dir / name
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
        return
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)
        existed = _PLANNED.get("existing_ancestor")
        parent = run_dir.absolute().parent
        while existed and parent != existed and existed in parent.parents and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def _summary(r: dict) -> None:
    from rich.console import Console
    from rich.table import Table

    from cnnbench.report import gmacs

    def pct(x):
        return "—" if x is None else f"{100 * x:.2f}%"

    table = Table(title=f"{r['model']} on {r['dataset']} — {r['status']}", show_header=False)
    rows = [("top-1 / top-5 error", f"{pct(r['top1_err'])} / {pct(r['top5_err'])}"),
            ("best top-1 error", f"{pct(r['best_top1_err'])} (epoch {r['best_epoch']})"),
            ("parameters", f"{r['params']:,}"),
            ("MACs per image", f"{gmacs(r['macs'])} G (FLOPs = 2 × MACs)"),
            ("activations per image", f"{r['activation_bytes'] / 2**20:.2f} MiB"),
            ("peak memory", f"{(r['peak_memory_bytes'] or 0) / 2**20:,.0f} MiB ({r['peak_memory_kind']})"),
            ("training throughput", f"{r['train_images_per_s']:,.0f} images/s" if r["train_images_per_s"]
             else "— (a one-step epoch has no steady state)"),
            ("wall time", f"{r['wall_time_s']:.1f} s for {r['epochs']} epoch(s)"),
            ("run directory", r["run_dir"])]
    for k, v in rows:
        table.add_row(k, v)
    Console().print(table)


def train_main(args: List[str]) -> int:
    return hydra_main("train", args)


def profile_main(args: List[str]) -> int:
    """`cnnbench profile [--layers] [overrides]`: the cost of the composed model, without training.
    Runs land in outputs/profiles/ unless hydra.run.dir says otherwise."""
    args = ["profile.layers=true" if a == "--layers" else a for a in args]
    if not any(a.startswith("hydra.run.dir=") for a in args):
        args.append("hydra.run.dir=outputs/profiles/${now:%Y-%m-%d_%H-%M-%S}_${model.name}")
    if not any(a.startswith("hydra.sweep.dir=") for a in args):
        args.append("hydra.sweep.dir=outputs/profiles/${now:%Y-%m-%d_%H-%M-%S}")
    return hydra_main("profile", args)


def _gpu_slots(args: List[str]) -> Optional[str]:
    """A joblib sweep on a machine with several GPUs: one worker per GPU (unless
    hydra.launcher.n_jobs says otherwise), each claiming its own (claim_gpu). Returns the lock
    folder, or None when there is nothing to share out."""
    if "hydra/launcher=joblib" not in args:
        return None
    import torch

    n = torch.cuda.device_count()
    if n < 2:
        return None
    asked = [a for a in args if a.lstrip("+").startswith("hydra.launcher.n_jobs=")]
    value = asked[-1].split("=", 1)[1] if asked else ""
    if value.lstrip("-").isdigit() and not 1 <= int(value) <= n:  # -1 is joblib's "one per core"
        # A worker past the GPU count would hold a job while it waits for another worker's GPU.
        log.warning(f"{asked[-1]} with {n} GPUs: running {n} workers, one per GPU.")
        for a in asked:
            args.remove(a)
        asked = []
    if not asked:
        args.append(f"hydra.launcher.n_jobs={n}")
    os.environ.setdefault("CUDA_VISIBLE_DEVICES", ",".join(map(str, range(n))))
    os.environ[_GPU_LOCKS] = tempfile.mkdtemp(prefix="cnnbench-gpus-")
    return os.environ[_GPU_LOCKS]


def hydra_main(command: str, args: List[str]) -> int:
    """Check every job, then hand the command line to Hydra, which runs `command` per job."""
    import hydra
    from hydra._internal.utils import get_args_parser

    from cnnbench import distributed, track
    from cnnbench.config import register_configs

    register_configs()
    flags = ("-m", "--multirun")  # Hydra takes them only before the overrides; users put them anywhere
    args = [a for a in args if a in flags] + [a for a in args if a not in flags]
    parsed = get_args_parser().parse_args(args)
    _register_resolvers()
    informational = parsed.help or parsed.hydra_help or parsed.cfg or parsed.info or parsed.shell_completion
    world = distributed.world()
    if world.active and (command != "train" or parsed.multirun):
        return _fail(f"torchrun starts one `cnnbench train` run over {world.size} processes; `cnnbench "
                     f"{command}{' -m' if parsed.multirun else ''}` does not run under it. Run sweeps without "
                     f"torchrun (hydra/launcher=slurm gives each job its own processes), profiles on one device.")
    _COMMAND["name"] = command
    if not informational:
        try:
            preflight(parsed.overrides, parsed.multirun or False)
        except CnnbenchError as e:
            _release()
            return _fail(str(e))
    rank_dir = None
    if world.active and not informational:  # every process trains in rank 0's run directory
        distributed.init()
        shared = distributed.broadcast(_PLANNED.get("run_dir"))
        args = [a for a in args if not a.startswith("hydra.run.dir=")]
        if world.main:
            args.append(f"hydra.run.dir={shared}")
        else:  # Hydra gets a scratch folder and no log file; the run's files are rank 0's to write
            rank_dir = tempfile.mkdtemp(prefix=f"cnnbench-rank{world.rank}-")
            args += [f"hydra.run.dir={rank_dir}", "hydra.output_subdir=null", "hydra/job_logging=disabled"]
            os.environ[_RUN_DIR] = shared
    main = hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")(_task)
    gpu_locks = _gpu_slots(args)
    argv0 = sys.argv[0]
    sys.argv = [f"cnnbench {command}", *args]
    # Jobs on a cluster's other machines append to this file: it must be on the shared file system.
    fd, failed_log = tempfile.mkstemp(prefix=".cnnbench-failed-", suffix=".txt",
                                      dir="." if _PLANNED.get("on_cluster") else None)
    os.close(fd)
    os.environ[_FAILED_LOG] = failed_log
    os.environ[_PARENT_PID] = str(os.getpid())
    try:
        main()
    except _JobExit as e:  # a job's own exit status
        return e.code
    except ValueError as e:  # Hydra's refusal of flag combinations, e.g. --cfg with -m
        return _fail(f"{e}. See `cnnbench {command} --help`.")
    except SystemExit as e:
        # Hydra exits 1 on errors it reports itself (composition): that is bad input here.
        return 2 if e.code == 1 else (e.code or 0)
    except Exception as e:  # a launcher's own failure (a cancelled SLURM job, say)
        if _debug():
            raise
        return _fail(f"the launcher stopped the sweep: {type(e).__name__}: {e}. Jobs that finished have their "
                     f"results.json; run the same sweep again to finish the rest.", 1)
    finally:
        sys.argv[0] = argv0
        _release()
        track.forget_kept()
        if rank_dir:
            shutil.rmtree(rank_dir, ignore_errors=True)
        distributed.finish()
        failed = Path(failed_log).read_text(encoding="utf-8").splitlines()
        os.unlink(failed_log)
        os.environ.pop(_FAILED_LOG, None)
        if gpu_locks:
            shutil.rmtree(gpu_locks, ignore_errors=True)
            os.environ.pop(_GPU_LOCKS, None)
    if failed:
        return _fail(f"{len(failed)} job(s) of the sweep did not complete (the others did): "
                     + "; ".join(failed), 1)
    return 0


# ---------------------------------------------------------------------------------------------
# compare, models
# ---------------------------------------------------------------------------------------------

def compare_cli(args: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="cnnbench compare", description="One table of every run (results.json) found below the "
        "paths; writes comparison.csv and .md, and report.md / report.html with plots (PNGs beside).",
        epilog="Runs that differ only in seed are averaged: mean ± sample standard deviation over the "
        "distinct seeds, and their number; of a seed run more than once, the run written last counts. "
        "Column names: run model dataset optimizer seed n_seeds status epochs params "
        "trainable_params macs gmacs flops activation_bytes param_bytes peak_memory_bytes "
        "peak_memory_kind train_images_per_s top1_err top5_err loss best_top1_err best_epoch "
        "wall_time_s error path, or any dotted config key (optimizer.lr).")
    p.add_argument("paths", nargs="*", default=["outputs"], help="folders to search (default: outputs)")
    p.add_argument("--out", help="where to write comparison.csv/.md and the report (default: the first path)")
    p.add_argument("--columns", metavar="A,B,...",
                   help="table columns, comma-separated, e.g. run,model,top1_err,params,optimizer.lr")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=PATTERN",
                   help="keep runs whose KEY (a column or config key) matches the shell-style PATTERN, "
                   "e.g. 'model=resnet*'; repeatable: all keys must match, a key given twice matches either")
    p.add_argument("--sort", default="top1_err", metavar="COLUMN",
                   help="order rows by this column or config key, rows without a value last (default: top1_err)")
    p.add_argument("--desc", action="store_true", help="sort in descending order (largest first)")
    p.add_argument("--no-group", action="store_true",
                   help="one row per run: do not average runs that differ only in seed")
    a = p.parse_args(args)
    from cnnbench.report import compare_main

    columns = None if a.columns is None else [c.strip() for c in a.columns.split(",") if c.strip()]
    return compare_main(a.paths, a.out, columns, a.filter, a.sort, a.desc, not a.no_group)


def models_cli(args: List[str]) -> int:
    p = argparse.ArgumentParser(prog="cnnbench models", description="The architectures cnnbench "
                                "knows, with parameters and multiply-accumulates (MACs) per image.")
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'resnet*'")
    p.add_argument("--input", help="CxHxW to count at, e.g. 1x32x32 (default: each paper's size)")
    p.add_argument("--classes", type=int, help="number of classes (default: each paper's)")
    a = p.parse_args(args)
    from cnnbench.report import models_table

    shape = None
    if a.input:
        try:
            shape = tuple(int(v) for v in a.input.lower().split("x"))
            assert len(shape) == 3 and min(shape) > 0
        except (ValueError, AssertionError):
            raise CnnbenchError(f"--input {a.input!r} is not CxHxW, e.g. 3x224x224 or 1x32x32.") from None
    if a.classes is not None and a.classes < 1:
        raise CnnbenchError(f"--classes {a.classes} must be at least 1.")
    models_table(a.pattern, shape, a.classes)
    return 0


COMMANDS = {"train": train_main, "profile": profile_main, "compare": compare_cli, "models": models_cli}


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] == "--version":
        from cnnbench import __version__

        print(f"cnnbench {__version__}")
        return 0
    command = COMMANDS.get(argv[0])
    if command is None:
        guess = difflib.get_close_matches(argv[0], COMMANDS, n=1)
        return _fail(f"unknown command {argv[0]!r}{f' (did you mean {guess[0]}?)' if guess else ''}. "
                     f"Commands: {', '.join(COMMANDS)}. See `cnnbench --help`.")
    try:
        return command(argv[1:])
    except CnnbenchError as e:
        if _debug():
            raise
        return _fail(str(e), e.exit_code)
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
