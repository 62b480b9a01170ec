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
import importlib.resources
import itertools
import logging
import os
import shutil
import sys
from pathlib import Path
from typing import List, Optional

from cnnbench.errors import CnnbenchError

CONF_DIR = str(importlib.resources.files("cnnbench.conf"))
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
        return f"{exc}. Check the name after +experiment= or the group."
    if isinstance(exc, OverrideParseException):
        return f"Cannot read the command line: {exc}. Overrides look like key=value, e.g. optimizer.lr=0.1."
    key = getattr(cause, "full_key", None) or ""
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
    return f"{exc}".strip().replace("\n", " ")


def _expand_sweeps(overrides: List[str], multirun: bool) -> List[List[str]]:
    """The list of jobs Hydra's basic sweeper would run (one job without -m)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    if not multirun:
        return [overrides]
    parsed = OverridesParser.create().parse_overrides(overrides)
    choices = [[f"{o.get_key_element()}={v}" for v in o.sweep_string_iterator()] if o.is_sweep_override()
               else [o.input_line] for o in parsed]
    return [list(c) for c in itertools.product(*choices)]


_swept_keys: set = set()  # keys given several values on the command line (-m)


def _sweep_subdir(task_overrides) -> str:
    """A sweep job's folder name: only what differs between its jobs, e.g. model=resnet56,seed=1
    (Hydra's override_dirname would repeat every fixed override too)."""
    picked = sorted(o for o in task_overrides if o.split("=", 1)[0].lstrip("+~") in _swept_keys)
    return ",".join(picked).replace("/", "_") or "job"


def _register_resolvers(overrides: List[str], multirun: bool) -> None:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from omegaconf import OmegaConf

    _swept_keys.clear()
    if multirun:
        try:
            parsed = OverridesParser.create().parse_overrides(overrides)
            _swept_keys.update(o.get_key_element().lstrip("+~") for o in parsed if o.is_sweep_override())
        except Exception:  # preflight reports bad syntax
            pass
    OmegaConf.register_new_resolver("cnnbench_sweep_subdir", _sweep_subdir, replace=True)


def preflight(overrides: List[str], multirun: bool) -> None:
    """Compose and validate every job before Hydra creates any directory, so bad input leaves
    nothing behind and touches no earlier run."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    from cnnbench import run

    own = [o for o in overrides if not o.lstrip("+~").startswith("hydra")]
    try:
        jobs = _expand_sweeps(own, multirun)
    except Exception as e:
        raise CnnbenchError(explain_config_error(e)) from None
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONF_DIR, version_base="1.3", job_name="train"):
        for job in jobs:
            try:
                cfg = compose("config", overrides=job)
                run.validate(cfg)
            except CnnbenchError:
                raise
            except Exception as e:
                if _debug():
                    raise
                raise CnnbenchError(explain_config_error(e)) from None
    GlobalHydra.instance().clear()
    if not multirun:
        run_dir = next((o.split("=", 1)[1] for o in overrides if o.startswith("hydra.run.dir=")), None)
        if run_dir:
            run.check_run_dir(cfg, Path(run_dir))


_failed_jobs: List[str] = []  # in a sweep: the jobs that did not complete, for the exit status


class _JobExit(SystemExit):
    """Raised by the task function to end `cnnbench train` with a status of its own choosing
    (Hydra lets SystemExit through; this subclass keeps it apart from Hydra's own exit 1)."""


_COMMAND = {"name": "train"}  # which command the Hydra task runs: train or profile


def _task(cfg) -> Optional[dict]:
    """Hydra's task function: one job of `cnnbench train` or `cnnbench profile`."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    from cnnbench import run

    hc = HydraConfig.get()
    run_dir = Path(hc.runtime.output_dir)
    sweeping = hc.mode == RunMode.MULTIRUN
    command = _COMMAND["name"]
    try:
        results = run.train(cfg, run_dir) if command == "train" else run.profile(cfg, run_dir)
    except CnnbenchError as e:
        _remove_if_empty(run_dir)
        if _debug():
            raise
        if sweeping:  # the sweep goes on; this job is reported and skipped
            _failed_jobs.append(f"{run_dir.name}: {e}")
            log.error(f"job {_failed_jobs[-1]}")
            return None
        raise _JobExit(_fail(str(e)))
    except KeyboardInterrupt:
        raise _JobExit(_fail(f"interrupted; what was done so far is in {run_dir}", 130))
    except Exception as e:
        if _debug():
            raise
        record = " The run's record (status failed) is in " + str(run_dir) + "." if command == "train" else ""
        message = (f"{command} failed: {type(e).__name__}: {e}.{record} Run again with CNNBENCH_DEBUG=1 "
                   f"for the traceback.")
        if sweeping:
            _failed_jobs.append(f"{run_dir.name}: {message}")
            log.error(f"job {_failed_jobs[-1]}")
            return None
        raise _JobExit(_fail(message, 1))
    if command == "train":
        _summary(results)
    else:
        from cnnbench.report import profile_tables

        profile_tables(results)
    return results


def _remove_if_empty(run_dir: Path) -> None:
    """A run refused before it began leaves no directory behind: remove run_dir if it holds only
    what Hydra put there (.hydra/ and the log)."""
    if run_dir.is_dir() and {p.name for p in run_dir.iterdir()} <= {".hydra", "train.log"}:
        shutil.rmtree(run_dir, ignore_errors=True)


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
            ("training throughput", f"{r['train_images_per_s'] or 0:,.0f} images/s"),
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


def hydra_main(command: str, args: List[str]) -> int:
    """Check every job, then hand the command line to Hydra, which runs `command` per job."""
    import hydra
    from hydra._internal.utils import get_args_parser

    from cnnbench.config import register_configs

    register_configs()
    parsed = get_args_parser().parse_args(args)
    _register_resolvers(parsed.overrides, parsed.multirun)
    informational = parsed.help or parsed.hydra_help or parsed.cfg or parsed.info or parsed.shell_completion
    if not informational:
        try:
            preflight(parsed.overrides, parsed.multirun)
        except CnnbenchError as e:
            return _fail(str(e))
    main = hydra.main(config_path=CONF_DIR, config_name="config", version_base="1.3")(_task)
    argv0 = sys.argv[0]
    sys.argv = [f"cnnbench {command}", *args]
    _COMMAND["name"] = command
    _failed_jobs.clear()
    try:
        main()
    except _JobExit as e:  # a job's own exit status
        return e.code
    except ValueError as e:  # Hydra's refusal of flag combinations, e.g. --cfg with -m
        return _fail(f"{e}. See `cnnbench {command} --help`.")
    except SystemExit as e:
        # Hydra exits 1 on errors it reports itself (composition): that is bad input here.
        return 2 if e.code == 1 else (e.code or 0)
    finally:
        sys.argv[0] = argv0
    if _failed_jobs:
        return _fail(f"{len(_failed_jobs)} job(s) of the sweep did not complete (the others did): "
                     + "; ".join(_failed_jobs), 1)
    return 0


# ---------------------------------------------------------------------------------------------
# compare, models
# ---------------------------------------------------------------------------------------------

def compare_cli(args: List[str]) -> int:
    p = argparse.ArgumentParser(prog="cnnbench compare", description="One table of every run "
                                "(results.json) found below the paths; writes comparison.csv and .md.")
    p.add_argument("paths", nargs="*", default=["outputs"], help="folders to search (default: outputs)")
    p.add_argument("--out", help="where to write comparison.csv/.md (default: the first path)")
    a = p.parse_args(args)
    from cnnbench.report import compare_main

    return compare_main(a.paths, a.out)


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
        return _fail(str(e))
    except KeyboardInterrupt:
        return _fail("interrupted", 130)
