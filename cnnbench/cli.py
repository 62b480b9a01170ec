"""The `cnnbench` command: train, resume, profile, compare, models.

    cnnbench train [-m] [GROUP=OPTION ...] [KEY=VALUE ...]   Hydra overrides; -m sweeps
    cnnbench resume RUN_DIR [KEY=VALUE ...]                  continue a run with its own overrides
    cnnbench compare [PATH ...] [--out DIR]                  one table of every run below PATHs
    cnnbench profile [--layers] [KEY=VALUE ...]               cost without training
    cnnbench models [PATTERN] [--input CxHxW] [--classes N]  the architectures cnnbench knows

Bad input exits with status 2 and a one-paragraph message; tracebacks only with
HYDRA_FULL_ERROR=1 or CNNBENCH_DEBUG=1.
"""

import argparse
import dataclasses
import difflib
import functools
import hashlib
import importlib.resources
import logging
import os
import re
import shlex
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
  resume    continue a run from its folder, with its own overrides: cnnbench resume RUN_DIR [trainer.epochs=N]
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
        options = group_options(group) if group in (*GROUPS, "experiment") else list(exc.options or [])
        guess = _option_guess(name, options)
        plus = "+" if group == "experiment" else ""
        unknown = f"Unknown {group} {name!r}{f' (did you mean {plus}{group}={guess}?)' if guess else ''}"
        if group in GROUPS:
            return (f"{unknown}. Known: {', '.join(options)}. Choose one with {group}=NAME"
                    f"{' (`cnnbench models` describes them)' if group == 'model' else ''}.")
        if group == "experiment":
            return (f"{unknown}. Known: {', '.join(options)}. "
                    f"Choose one with +experiment=NAME (the files are in conf/experiment/).")
        if options:  # another group, Hydra's own (hydra/launcher, say)
            return f"{unknown}. Known: {', '.join(options)}. Choose one with {group}=NAME."
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

        known = _sections().get(section) or (list(Config.__dataclass_fields__) if not section else [])
        guesses = _setting_guesses(leaf, section)
        hint = f" Did you mean {' or '.join(guesses)}?" if guesses else ""
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


def _sections() -> dict:
    """Each config section with keys of its own (model, dataset, ..., profile) -> its keys."""
    from cnnbench.config import Config

    return {name: [k.name for k in dataclasses.fields(f.default_factory)]
            for name, f in Config.__dataclass_fields__.items() if dataclasses.is_dataclass(f.default_factory)}


# Other training scripts' names for cnnbench's settings (torchvision's references, timm's train.py)
_ALIASES = {"learning_rate": "optimizer.lr", "wd": "optimizer.weight_decay", "opt": "optimizer",
            "b": "dataset.batch_size", "bs": "dataset.batch_size", "arch": "model", "data_path": "dataset.root",
            "data_dir": "dataset.root", "workers": "dataset.num_workers", "j": "dataset.num_workers",
            "sched": "scheduler", "lr_scheduler": "scheduler", "smoothing": "trainer.label_smoothing",
            "clip_grad": "trainer.grad_clip", "torchcompile": "trainer.compile", "output_dir": "hydra.run.dir",
            "output": "hydra.run.dir", "experiment": "+experiment"}


def _setting_guesses(name: str, section: str = "") -> List[str]:
    """The settings a misspelt or misplaced name may mean, best first: a close spelling in its own
    section (trainer.epoch -> trainer.epochs), the same name in another (epochs, trainer.lr ->
    trainer.epochs, optimizer.lr), another program's name for it (wd), a close spelling anywhere."""
    from cnnbench.config import Config

    sections, top = _sections(), list(Config.__dataclass_fields__)
    name = name.lower().replace("-", "_")
    if not section and name in top:
        return [name]
    own = difflib.get_close_matches(name, sections.get(section, []) if section else top, n=1)
    if own:
        return [f"{section}.{own[0]}" if section else own[0]]
    same = [f"{s}.{name}" for s, keys in sections.items() if name in keys and s != section]
    if same or name in _ALIASES:
        return same or [_ALIASES[name]]
    leaves = sorted({k for s, keys in sections.items() if s != section for k in keys})
    near = difflib.get_close_matches(name, leaves, n=1)
    return [f"{s}.{near[0]}" for s, keys in sections.items() if near and near[0] in keys and s != section]


def _option_guess(name: str, options: List[str]) -> Optional[str]:
    """The option a name in another case or spelling means: ResNet50 -> resnet50, resnt18 ->
    resnet18, CIFAR-10 -> cifar10, fats -> fast; None when nothing is close."""
    def plain(s):
        return re.sub(r"[^a-z0-9]", "", s.lower())

    same = [o for o in options if plain(o) == plain(name)]
    near = difflib.get_close_matches(plain(name), [plain(o) for o in options], n=1)
    return same[0] if same else next((o for o in options if plain(o) == near[0]), None) if near else None


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


def _refuse_sweep(never: list, n_jobs: int) -> None:
    """Stop a sweep of which some jobs can never run: name each with its reason, and the fix."""
    listed = "; ".join(f"{_sweep_subdir(job)}: {why.split('. ')[0]}" for job, why in never[:6])
    more = f"; and {len(never) - 6} more" if len(never) > 6 else ""
    option = next((m.group(1) for _, why in never if (m := re.match(r"model\.(\w+) does not apply to ", why))), None)
    per_model = (f" To give model.{option} only to the models that have it, write +per_model.any.{option}=... "
                 f"instead of model.{option}=... (or +per_model.MODEL.{option}=... for one model)." if option else "")
    raise CnnbenchError(f"{len(never)} of the sweep's {n_jobs} jobs can never run, so none was started: "
                        f"{listed}{more}.{per_model} Or leave those combinations out of the sweep.")


def preflight(overrides: List[str], multirun: bool) -> None:
    """Compose and validate every job before Hydra creates any directory, so bad input leaves
    nothing behind and touches no earlier run. A sweep in which some job can never run (an option
    one model does not have, an image size one model cannot take) stops here, naming every such job
    and the fix, before the first job starts; so do a name or key that does not exist, and a job
    folder that holds a run of another config. What only a run finds (a missing dataset, an error
    while training) is recorded as that job's failure and the others run."""
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
        never = []  # (job, why) of sweep jobs that can never run
        for num, job in enumerate(jobs):
            try:
                cfg = _PLANNED.pop("config", None) or compose("config", overrides=job)
                run.validate(cfg)
            except CnnbenchError as e:
                if not multirun:
                    raise
                never.append((job, str(e)))
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
        if never:
            _refuse_sweep(never, len(jobs))
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
        from cnnbench.measure import usable_cpus

        cores = usable_cpus()
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
        run.resolve(cfg)  # per_model onto model.*, before the config is compared with a run already there
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
        raise _JobExit(_fail(f"interrupted; what was done so far is in {run_dir}. " + _how_to_continue(run_dir, hc),
                             code))
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


def _how_to_continue(run_dir: Path, hc) -> str:
    """The interrupt message's last sentence: the exact command that continues the run (last, and
    with no full stop after it, to be copied whole)."""
    from hydra.types import RunMode

    from cnnbench import distributed, run

    if _COMMAND["name"] != "train":
        return "Run the same command again to profile it."
    if not (run_dir / "checkpoints" / "last.pt").is_file():
        return ("No checkpoint was saved (trainer.checkpoint=false, or it stopped before the first), so it cannot "
                "be resumed: start it again, in a new folder.")
    world = distributed.world()
    how = f"{'torchrun <the same options> -m ' if world.active else ''}{run.resume_command(run_dir)}"
    if hc.mode == RunMode.MULTIRUN:
        return (f"To finish the whole sweep, run its command again with hydra.sweep.dir="
                f"{shlex.quote(str(Path(hc.sweep.dir).absolute()))}; to continue this job alone: {how}")
    return f"Continue it with: {how}"


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
    """The end of `cnnbench train`: the run's figures, then its folder on a line of its own, whole
    (the value a user copies: rich neither cuts nor breaks it; a terminal too narrow wraps it)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from cnnbench.report import gmacs

    from cnnbench.tasks import get_task

    table = Table(title=f"{r['model']} on {r['dataset']} — {r['status']}", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")  # values wrap between words, never end in "…"
    rows = [*get_task(r.get("task", "classification")).summary(r),  # the task's figures
            ("parameters", f"{r['params']:,}"),
            ("MACs per image", f"{gmacs(r['macs'])} G (FLOPs = 2 × MACs)"
             + (f". {r['macs_note']}" if r.get("macs_note") else "")),
            ("activations per image", f"{r['activation_bytes'] / 2**20:.2f} MiB"),
            ("peak memory", f"{(r['peak_memory_bytes'] or 0) / 2**20:,.0f} MiB ({r['peak_memory_kind']})"),
            ("training throughput", f"{r['train_images_per_s']:,.0f} images/s" if r["train_images_per_s"]
             else "— (a one-step epoch has no steady state)"),
            ("wall time", f"{r['wall_time_s']:.1f} s for {r['epochs']} epoch(s)")]
    for name, value in rows:
        table.add_row(name, value)
    console = Console()
    console.print(table)
    console.print(Text(f"run directory: {r['run_dir']}"), soft_wrap=True)  # one line, uncut
    if r.get("busy_note"):  # said once in the log, and here where the figures are
        console.print(Text(f"note: {r['busy_note']}", style="yellow"))


def versions() -> str:
    """`cnnbench --version`: cnnbench's version and what it runs on (for a bug report)."""
    import platform

    import hydra
    import torch

    from cnnbench import __version__

    if torch.version.cuda or getattr(torch.version, "hip", None):
        n = torch.cuda.device_count()
        kind = f"CUDA {torch.version.cuda}" if torch.version.cuda else f"ROCm {torch.version.hip}"
        accelerator = f"{kind}, {n or 'no'} GPU{'s' if n > 1 else ''} visible"
    else:
        accelerator = "CPU only"
    return (f"cnnbench {__version__} (torch {torch.__version__}, {accelerator}; Hydra {hydra.__version__}; "
            f"Python {platform.python_version()})")


# The flags each command takes besides its KEY=VALUE settings, as its error messages name them
_FLAGS = {"train": "-m/--multirun, --cfg job|hydra|all, --info, --help, --hydra-help, --version",
          "profile": "--layers, -m/--multirun, --cfg job|hydra|all, --info, --help, --version",
          "resume": "--help"}


def _argparse_error(parser: argparse.ArgumentParser, message: str):
    """An argparse refusal as one `error:` paragraph, a misspelt flag answered with the one it is
    close to (argparse prints its usage, under Python's program name, and exits)."""
    flags = [s for s in parser._option_string_actions if s.startswith("--")]
    unknown = re.fullmatch(r"unrecognized arguments: (.*)", message)
    if unknown:
        said = []
        for a in unknown[1].split():
            near = difflib.get_close_matches(a.partition("=")[0], flags, n=1) if a.startswith("-") else []
            said.append(f"{a} is not an option of {parser.prog}{f' (did you mean {near[0]}?)' if near else ''}"
                        if a.startswith("-") else f"{a} was not expected")
        message = "; ".join(said)
    raise CnnbenchError(f"{message}. See `{parser.prog} --help`.")


def _hydra_parser(command: str):
    """Hydra's own argument parser, for `cnnbench COMMAND`, whose refusals are one paragraph."""
    from hydra._internal.utils import get_args_parser

    parser = get_args_parser()
    parser.prog, parser.error = f"cnnbench {command}", functools.partial(_argparse_error, parser)
    return parser


def _flag(name: str, flags: List[str]) -> Optional[str]:
    """The flag name stands for: itself, or the one long flag it begins (--multi: --multirun), as
    argparse reads it."""
    if name in flags:
        return name
    longer = [f for f in flags if name.startswith("--") and f.startswith(name)]
    return longer[0] if len(longer) == 1 else None


def _flag_setting(name: str) -> List[str]:
    """The settings a --flag may stand for: --epochs -> trainer.epochs, --batch-size ->
    dataset.batch_size, --model -> model, --trainer.epochs -> trainer.epochs."""
    name = name.lstrip("-").replace("-", "_")
    section, _, leaf = name.rpartition(".")
    if section and leaf in _sections().get(section, []):
        return [name]
    return _setting_guesses(leaf, section)


def _takes_bool(key: str) -> bool:
    """Whether setting key is true or false (a bare --compile means trainer.compile=true)."""
    from cnnbench.config import Config

    section, _, leaf = key.partition(".")
    node = Config.__dataclass_fields__.get(section)
    if not leaf or node is None or not dataclasses.is_dataclass(node.default_factory):
        return False
    return {f.name: f.type for f in dataclasses.fields(node.default_factory)}.get(leaf) in (bool, Optional[bool])


def _number(text: str) -> bool:
    try:
        float(text)
        return True
    except ValueError:
        return False


def check_flags(command: str, args: List[str], own=()) -> None:
    """Refuse a --flag that the command does not take, with the fix: a misspelt one gets the flag it
    is close to (--layer: --layers), another program's habit the setting it means (--model
    resnet18: model=resnet18, --epochs 3: trainer.epochs=3, --batch-size 64: dataset.batch_size=64),
    and, when every flag was understood, the whole command line as it should be."""
    hydras = [s for a in _hydra_parser(command)._actions for s in a.option_strings] if command != "resume" else []
    flags = [*own, *hydras]
    fixed, settings, notes, whole, i = [], [], [], True, 0
    while i < len(args):
        a = args[i]
        i += 1
        name, eq, value = a.partition("=")
        if not a.startswith("-") or a == "-" or name in own or _flag(name, hydras):  # argparse: --multi
            fixed.append(a)
            continue
        bare = name.lstrip("-")
        flag = difflib.get_close_matches(bare, [f[2:] for f in flags if f.startswith("--")], n=1, cutoff=0.75)
        if flag:
            notes.append(f"{name} is not an option of cnnbench {command} (did you mean --{flag[0]}?).")
            fixed.append(f"--{flag[0]}{eq}{value}")
            continue
        keys = _flag_setting(bare) if bare not in ("resume", "auto_resume") else []
        if not eq and i < len(args) and "=" not in args[i] and (not args[i].startswith("-") or _number(args[i])):
            value = args[i]  # --epochs 3, --lr -0.1
            i += 1
        shown = f"{name} {value}".strip() if not eq else a
        if bare in ("resume", "auto_resume"):
            notes.append(f"{shown}: to continue a run, use `cnnbench resume RUN_DIR` (RUN_DIR: the run's folder).")
            whole = False
        elif len(keys) != 1:
            notes.append(f"{name} is not an option of cnnbench {command} (its options: {_FLAGS[command]})"
                         + (f"; as a setting, it could be {' or '.join(keys)}." if keys else "."))
            whole = False
        else:
            key = keys[0]
            value = value or ("true" if _takes_bool(key) else "")  # --compile
            whole = whole and bool(value)
            settings.append(f"{shown} is {key}={value or 'VALUE'}")
            fixed.append(f"{key}={value or 'VALUE'}")
    if settings:
        notes.insert(0, f"cnnbench {command} takes settings as KEY=VALUE, without dashes: {', '.join(settings)}.")
    if command == "resume" and not any("=" not in a and not a.startswith("-") for a in fixed):
        fixed.insert(0, "RUN_DIR")  # the folder is the one thing resume cannot go without
    if notes:
        run = f" Run: cnnbench {command} {' '.join(shlex.quote(a) for a in fixed)}" if whole else (
            f" `cnnbench {command} --help` lists what it takes.")
        raise CnnbenchError(" ".join(notes) + run)


def train_main(args: List[str]) -> int:
    return hydra_main("train", args)


def profile_main(args: List[str]) -> int:
    """`cnnbench profile [--layers] [overrides]`: the cost of the composed model, without training.
    Runs land in outputs/profiles/ unless hydra.run.dir says otherwise."""
    if any(a in ("-h", "--help") for a in args):
        print(profile_help())
        return 0
    check_flags("profile", args, own=("--layers",))
    args = ["profile.layers=true" if a == "--layers" else a for a in args]
    internal = []  # added after the user's words are checked, so that no refusal quotes them
    if not any(a.startswith("hydra.run.dir=") for a in args):
        internal.append("hydra.run.dir=outputs/profiles/${now:%Y-%m-%d_%H-%M-%S}_${model.name}")
    if not any(a.startswith("hydra.sweep.dir=") for a in args):
        internal.append("hydra.sweep.dir=outputs/profiles/${now:%Y-%m-%d_%H-%M-%S}")
    return hydra_main("profile", args, internal)


def profile_help() -> str:
    """`cnnbench profile --help`: its own usage, its flag, its settings (with config.py's comments)."""
    import inspect
    import json

    from cnnbench.config import ProfileConf

    comments = dict(re.findall(r"^\s+(\w+):.*?#\s*(.+)$", inspect.getsource(ProfileConf), re.M))
    defaults = ProfileConf()
    values = {k: json.dumps(getattr(defaults, k), separators=(",", ":")) for k in ProfileConf.__dataclass_fields__}
    settings = "\n".join(f"  {f'profile.{k}={v}':<30} {comments.get(k, '')}" for k, v in values.items())
    groups = "\n".join(f"  {g}: {', '.join(group_options(g))}" for g in GROUPS)
    return f"""cnnbench profile: what a configuration costs, without training it: parameters, MACs and FLOPs
per image, activation and peak memory, and at each batch size the latency and images/s of inference
and of a training step. Printed, and saved in outputs/profiles/<date>_<time>_<model>/.

Usage: cnnbench profile [--layers] [-m] [GROUP=OPTION ...] [KEY=VALUE ...]

Options:
  --layers             also print one row per layer: output shape, parameters, MACs, output bytes
  -m, --multirun       profile every combination (model=resnet18,resnet50), each in a fresh process
  --cfg job            print the composed config, profile nothing
  -h, --help           this text (--version: cnnbench's, torch's and CUDA's versions)

Profile settings (their defaults; every other key is train's, `cnnbench train --help`):
{settings}

Config groups (pick one option each, e.g. model=resnet50):
{groups}

Examples:
  cnnbench profile model=resnet50 dataset=synthetic dataset.image_size=224 --layers
  cnnbench profile model=mobilenet_v2 dataset.image_size=224 'profile.batch_sizes=[1,32,128]'
  cnnbench profile -m model=resnet18,resnet50 dataset.image_size=224
hydra.run.dir=DIR chooses the folder. Tracebacks: CNNBENCH_DEBUG=1."""


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


def _flags_first(args: List[str], parser) -> List[str]:
    """Hydra's flags, each with its value, before the overrides: argparse takes no override after a
    flag, and users put flags anywhere (model=resnet18 --cfg job). A flag missing its value goes
    last, where argparse says so."""
    actions = {s: a for a in parser._actions for s in a.option_strings}
    flags, rest, dangling, i = [], [], [], 0
    while i < len(args):
        a = args[i]
        i += 1
        action = actions.get(_flag(a.partition("=")[0], list(actions))) if a.startswith("-") else None
        if action is None:
            rest.append(a)
            continue
        flags.append(a)
        if "=" not in a and (action.nargs is None or action.nargs == "?" and i < len(args)
                             and args[i] in (action.choices or ())):
            if i == len(args):
                dangling.append(flags.pop())
            else:
                flags.append(args[i])
                i += 1
    return flags + rest + dangling


def hydra_main(command: str, args: List[str], internal: List[str] = ()) -> int:
    """Check every job, then hand the command line to Hydra, which runs `command` per job.
    internal: overrides cnnbench adds (profile's folders), after the user's words are checked."""
    import hydra

    from cnnbench import distributed, track
    from cnnbench.config import register_configs

    if "--version" in args:
        print(versions())
        return 0
    check_flags(command, args)  # profile_main has taken its --layers out
    register_configs()
    parser = _hydra_parser(command)
    args = _flags_first(args, parser)
    parser.parse_args(args)  # a refusal quotes the user's words only
    args = [*args, *internal]
    parsed = parser.parse_args(args)
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
# resume
# ---------------------------------------------------------------------------------------------

def resume_help() -> str:
    """`cnnbench resume --help`."""
    import textwrap

    from cnnbench.run import _RESUMABLE_CHANGES

    changes = textwrap.fill(f"Only these may change: {', '.join(sorted(_RESUMABLE_CHANGES))}.", width=96,
                            initial_indent=" " * 14, subsequent_indent=" " * 14)
    return f"""usage: cnnbench resume RUN_DIR [KEY=VALUE ...]

Continue a run from its folder: an interrupted run where it stopped, a finished one for more
epochs. The overrides the run was started with are read from RUN_DIR/.hydra/overrides.yaml, so this
is `cnnbench train <those overrides> KEY=VALUE ... hydra.run.dir=RUN_DIR trainer.resume=true`, run
in the folder the run was started from (RUN_DIR/.hydra/hydra.yaml), where its relative paths
(dataset.root=data/x) mean what they meant.

  RUN_DIR     a run's folder (outputs/runs/<date>_<time>_<model>_<dataset>/), or one job's
              folder of a sweep (outputs/sweeps/<date>_<time>/<job>/)
  KEY=VALUE   replaces the run's own value of KEY: trainer.epochs=N trains to N epochs in all.
{changes}

Examples:
  cnnbench resume outputs/runs/2024-05-01_12-00-00_resnet20_cifar10
  cnnbench resume outputs/runs/2024-05-01_12-00-00_resnet20_cifar10 trainer.epochs=60
  cnnbench resume 'outputs/sweeps/2024-05-01_12-00-00/model=resnet56,seed=1'
A whole sweep is finished by running its command again with hydra.sweep.dir=<its folder>."""


_SET_BY_RESUME = ("hydra.run.dir", "hydra.sweep.dir", "hydra.mode", "trainer.resume")


def _override_key(override: str) -> str:
    return override.partition("=")[0].lstrip("+~")


def _shown(path: Path) -> str:
    """path as the user would type it here: relative below the current folder, else absolute."""
    path = path.absolute()
    return str(path.relative_to(Path.cwd())) if Path.cwd() in path.parents else str(path)


def _hydra_value(text: str) -> str:
    """text as one value in Hydra's override grammar: a folder name may hold = , [ ] and spaces."""
    return text if re.fullmatch(r"[\w/.@~-]+", text) else '"' + text.replace('"', '\\"') + '"'


def _run_overrides(run_dir: Path) -> Optional[List[str]]:
    """The overrides the run was composed from: its .hydra/overrides.yaml, else results.json's."""
    import json

    import yaml

    for path, read in ((run_dir / ".hydra" / "overrides.yaml", yaml.safe_load),
                       (run_dir / "results.json", lambda text: json.loads(text).get("overrides"))):
        try:
            overrides = read(path.read_text(encoding="utf-8"))
        except (OSError, ValueError, AttributeError, yaml.YAMLError):
            continue
        if isinstance(overrides, list) and all(isinstance(o, str) for o in overrides):
            return overrides
    return None


def _record(run_dir: Path) -> dict:
    import json

    try:
        record = json.loads((run_dir / "results.json").read_text(encoding="utf-8"))
        return record if isinstance(record, dict) else {}
    except (OSError, ValueError):
        return {}


def _resumable(given: str) -> Path:
    """The run folder RUN_DIR names, absolute; refused with the fix when there is no run to continue
    there: no such folder, a file, a sweep's folder (its jobs are named), a run without a checkpoint."""
    path = Path(given).absolute()
    folder_first = " cnnbench resume takes the run's folder first, then settings: cnnbench resume RUN_DIR " \
                   "trainer.epochs=N."
    if not path.exists():
        near = (difflib.get_close_matches(path.name, [p.name for p in path.parent.iterdir() if p.is_dir()], n=1)
                if path.parent.is_dir() else [])
        hint = f" (did you mean {shlex.quote(_shown(path.parent / near[0]))}?)" if near else ""
        raise CnnbenchError(f"{given} does not exist{hint}. Give the folder of the run to continue: "
                            f"outputs/runs/<date>_<time>_<model>_<dataset>, or a sweep job's "
                            f"outputs/sweeps/<date>_<time>/<job>." + (folder_first if "=" in given else ""))
    if path.is_file():
        folder = path.parent.parent if path.parent.name == "checkpoints" else path.parent
        fix = (f": cnnbench resume {shlex.quote(_shown(folder))}" if (folder / "checkpoints" / "last.pt").is_file()
               else ".")
        raise CnnbenchError(f"{given} is a file; cnnbench resume takes the folder of the run{fix}")
    if (path / "checkpoints" / "last.pt").is_file():
        return path
    runs = sorted((p.parent.parent for depth in range(1, 4)
                   for p in path.glob("/".join(["*"] * depth) + "/checkpoints/last.pt")),
                  key=lambda run: (_record(run).get("status") == "completed", str(run)))  # unfinished first
    if runs:
        sweep = (path / "multirun.yaml").is_file()
        listed = ", ".join(_shown(run) for run in runs[:4]) + (f" and {len(runs) - 4} more" if len(runs) > 4 else "")
        whole = (f"; or finish the whole sweep by running its command again with hydra.sweep.dir="
                 f"{shlex.quote(_shown(path))} (completed jobs are skipped, interrupted ones resumed)" if sweep else "")
        raise CnnbenchError(f"{given} is {'a sweep' if sweep else 'a folder of runs'}, not one run: resume one of "
                            f"its {'jobs' if sweep else 'runs'} ({listed}), e.g. cnnbench resume "
                            f"{shlex.quote(_shown(runs[0]))}{whole}.")
    if (path / "results.json").is_file():
        config = _record(path).get("config") or {}
        why = ("it ran with trainer.checkpoint=false, which saves no checkpoint, and such a run cannot be resumed"
               if (config.get("trainer") or {}).get("checkpoint") is False else
               "it stopped before its first checkpoint was saved")
        overrides = _run_overrides(path)
        again = (f" Start it again: cnnbench train {' '.join(shlex.quote(o) for o in overrides)}".rstrip()
                 if overrides is not None else " Start it again with the overrides it ran with.")
        raise CnnbenchError(f"{given} holds no checkpoints/last.pt, so there is nothing to resume from: {why}."
                            f"{again}")
    raise CnnbenchError(f"{given} is not a run's folder: it holds no checkpoints/last.pt to continue from (a run "
                        f"with trainer.checkpoint=false saves none, and cannot be resumed). Give the folder a "
                        f"`cnnbench train` run wrote, e.g. outputs/runs/<date>_<time>_<model>_<dataset>.")


def resume_args(run_dir: Path, extra: List[str]) -> List[str]:
    """The `cnnbench train` arguments that continue the run in run_dir: its own overrides, less
    those an extra one replaces (the same key) and those resume sets, then the extras, the folder,
    single-run mode (a sweep job's +experiment may ask for a sweep) and trainer.resume=true."""
    own = _run_overrides(run_dir)
    if own is None:
        raise CnnbenchError(f"{_shown(run_dir)} has a checkpoint, but neither .hydra/overrides.yaml nor results.json "
                            f"says which overrides the run was started with. Continue it by hand: cnnbench train "
                            f"<its overrides> hydra.run.dir={shlex.quote(_shown(run_dir))} trainer.resume=true.")
    replaced = {_override_key(o) for o in extra} | set(_SET_BY_RESUME)
    return [*(o for o in own if _override_key(o) not in replaced),
            *(o for o in extra if _override_key(o) != "trainer.resume"),
            f"hydra.run.dir={_hydra_value(str(run_dir))}", "hydra.mode=RUN", "trainer.resume=true"]


def _started_in(run_dir: Path) -> Optional[Path]:
    """The folder the run was started from (hydra.runtime.cwd in its .hydra/hydra.yaml)."""
    import yaml

    try:
        cwd = yaml.safe_load((run_dir / ".hydra" / "hydra.yaml").read_text(encoding="utf-8"))["hydra"]["runtime"]["cwd"]
    except (OSError, yaml.YAMLError, KeyError, TypeError):
        return None
    return Path(cwd) if isinstance(cwd, str) and cwd else None


def resume_main(args: List[str]) -> int:
    """`cnnbench resume RUN_DIR [KEY=VALUE ...]`: `cnnbench train` with the run's own overrides,
    the extra ones in place of the same keys, hydra.run.dir=RUN_DIR and trainer.resume=true, run in
    the folder the run was started from."""
    if any(a in ("-h", "--help") for a in args):
        print(resume_help())
        return 0
    if "--version" in args:
        print(versions())
        return 0
    if any(a in ("-m", "--multirun") for a in args):
        raise CnnbenchError("cnnbench resume continues one run, not a sweep. To finish a sweep, run its command "
                            "again with hydra.sweep.dir=<its folder>; to continue one of its jobs, cnnbench resume "
                            "<the job's folder>.")
    check_flags("resume", args, own=("-h", "--help", "--version"))
    if not args:
        raise CnnbenchError("cnnbench resume needs the folder of the run to continue: cnnbench resume RUN_DIR "
                            "[trainer.epochs=N] (`cnnbench resume --help`).")
    run_dir = _resumable(args[0])
    moved = [o for o in args[1:] if _override_key(o) in ("hydra.run.dir", "hydra.sweep.dir")]
    if moved:
        raise CnnbenchError(f"{moved[0]}: cnnbench resume continues the run in its own folder, {args[0]}. Leave "
                            f"{_override_key(moved[0])} out, or start a new run (cnnbench train ...) to train "
                            f"elsewhere.")
    train_args = resume_args(run_dir, args[1:])
    here, started = os.getcwd(), _started_in(run_dir)
    if started is not None and not started.is_dir():
        print(f"warning: {started}, where the run was started, is not a folder here: relative paths among its "
              f"overrides (dataset.root, model.weights) are read from {here} instead.", file=sys.stderr)
    print(f"Resuming {_shown(run_dir)}: cnnbench train {' '.join(shlex.quote(a) for a in train_args)}"
          + (f" (in {started})" if started is not None and started.is_dir() and started != Path(here) else ""))
    try:
        if started is not None and started.is_dir():
            os.chdir(started)
        return hydra_main("train", train_args)
    finally:
        os.chdir(here)


# ---------------------------------------------------------------------------------------------
# compare, models
# ---------------------------------------------------------------------------------------------

def compare_cli(args: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="cnnbench compare", description="One table of every run (results.json) found below the "
        "paths; writes comparison.csv and .md, and report.md / report.html with plots (PNGs beside).",
        epilog="Runs that differ only in seed are averaged: mean ± sample standard deviation over the "
        "distinct seeds, and their number; of a seed run more than once, the run written last counts. "
        "Each task's runs (classification, segmentation) get a table of their own. "
        "Column names: run model dataset task optimizer seed n_seeds status epochs params "
        "trainable_params macs gmacs flops activation_bytes param_bytes peak_memory_bytes "
        "peak_memory_kind train_images_per_s top1_err top5_err (top-k, k = min(5, classes)) loss best_top1_err "
        "miou pixel_acc mean_class_acc best_miou best_epoch wall_time_s error path; any dotted key of results.json, "
        "e.g. env.device_name env.threads "
        "env.cpus env.load_start env.load_end input_shape num_classes train_images_used; or of its config "
        "(optimizer.lr). In a terminal the table fits the screen: columns with one value for every run are "
        "named above it, and columns that do not fit are left out, named below it (--columns shows exactly "
        "the columns named).")
    p.error = functools.partial(_argparse_error, p)  # one paragraph, did-you-mean for a misspelt flag
    p.add_argument("paths", nargs="*", default=["outputs"], help="folders to search (default: outputs)")
    p.add_argument("--out", help="where to write comparison.csv/.md and the report (default: the first path)")
    p.add_argument("--columns", metavar="A,B,...",
                   help="table columns, comma-separated, e.g. run,model,top1_err,params,optimizer.lr,env.device_name")
    p.add_argument("--filter", action="append", default=[], metavar="KEY=PATTERN",
                   help="keep runs whose KEY (a column, or a dotted key of results.json or of its config) "
                   "matches the shell-style PATTERN, "
                   "e.g. 'model=resnet*'; repeatable: all keys must match, a key given twice matches either")
    p.add_argument("--sort", default=None, metavar="COLUMN",
                   help="order every table's rows by this column or key, rows without a value last (default: "
                   "each task's score, best first: top1_err ascending, miou descending)")
    p.add_argument("--desc", action="store_true", help="sort in descending order (largest first)")
    p.add_argument("--no-group", action="store_true",
                   help="one row per run: do not average runs that differ only in seed")
    a = p.parse_args(args)
    from cnnbench.report import compare_main

    columns = None if a.columns is None else [c.strip() for c in a.columns.split(",") if c.strip()]
    return compare_main(a.paths, a.out, columns, a.filter, a.sort, a.desc, not a.no_group)


def models_cli(args: List[str]) -> int:
    p = argparse.ArgumentParser(prog="cnnbench models", description="The architectures cnnbench "
                                "knows, with parameters and multiply-accumulates (MACs) per image.",
                                epilog="In a terminal the table fits the screen: paper titles that would wrap "
                                "into a narrow column are listed below it, and columns that still do not fit "
                                "are left out, named below it. Piped, every column.")
    p.error = functools.partial(_argparse_error, p)
    p.add_argument("pattern", nargs="?", default="*", help="shell pattern, e.g. 'resnet*'")
    p.add_argument("--input", help="CxHxW to count at, e.g. 1x32x32 (default: each paper's size)")
    p.add_argument("--classes", type=int, help="number of classes (default: each paper's)")
    p.add_argument("--custom", metavar="MODULE.NAME", help="your own network instead: an nn.Module class or a "
                   "function returning one, imported from the current folder first (as model=custom model.target=)")
    p.add_argument("--torchvision", metavar="ARCH", help="a torchvision classifier instead (as model=torchvision)")
    p.add_argument("--timm", metavar="ARCH", help="a timm network instead (as model=timm; needs timm)")
    p.add_argument("--arg", action="append", default=[], metavar="KEY=VALUE",
                   help="a keyword argument for --custom/--torchvision/--timm (as +model.args.KEY=VALUE); repeatable")
    a = p.parse_args(args)
    from cnnbench.report import external_model_table, models_table

    shape = None
    if a.input:
        try:
            shape = tuple(int(v) for v in a.input.lower().split("x"))
            assert len(shape) == 3 and min(shape) > 0
        except (ValueError, AssertionError):
            raise CnnbenchError(f"--input {a.input!r} is not CxHxW, e.g. 3x224x224 or 1x32x32.") from None
    if a.classes is not None and a.classes < 1:
        raise CnnbenchError(f"--classes {a.classes} must be at least 1.")
    chosen = [(k, v) for k, v in (("custom", a.custom), ("torchvision", a.torchvision), ("timm", a.timm)) if v]
    if len(chosen) > 1 or (a.arg and not chosen):
        raise CnnbenchError("Give one of --custom, --torchvision and --timm (with --arg KEY=VALUE for its arguments), "
                            "or none for the zoo.")
    if chosen:
        import ast

        def value(text):
            try:
                return ast.literal_eval(text)  # numbers, booleans, lists; anything else is a string
            except (ValueError, SyntaxError):
                return text

        bad = [s for s in a.arg if "=" not in s]
        if bad:
            raise CnnbenchError(f"--arg {bad[0]} is not KEY=VALUE, e.g. --arg width=32.")
        kind, what = chosen[0]
        options = {"target" if kind == "custom" else "arch": what,
                   "args": {k: value(v) for k, v in (s.split("=", 1) for s in a.arg)}}
        external_model_table(kind, options, shape, a.classes)
        return 0
    models_table(a.pattern, shape, a.classes)
    return 0


COMMANDS = {"train": train_main, "resume": resume_main, "profile": profile_main, "compare": compare_cli,
            "models": models_cli}


def main(argv: Optional[List[str]] = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help", "help"):
        print(USAGE)
        return 0
    if argv[0] == "--version":
        print(versions())
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
