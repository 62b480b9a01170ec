"""Comparison tables and the report: every results.json below some folders, as terminal tables,
a CSV, Markdown tables, and a report (Markdown and self-contained HTML) with plots; one table and
one set of plots per task (classification, segmentation, detection), each from what its Task
declares.

    cnnbench compare                      # every run below outputs/
    cnnbench compare outputs/2024-05-01 multirun/ --out reports/
    cnnbench compare outputs/sweeps/x --filter 'model=resnet*' --columns run,top1_err,params --sort params

`load_rows` turns the files into rows of raw numbers; `filter_rows`, `group_rows` (seeds averaged,
the latest run of each seed), `by_task` and `sort_rows` select and order them; the `to_*` and
`*_figure` functions only present them, and `fit_table` fits a table to the terminal without
cutting a cell. What a task's table and plots show (its figures' columns, its score and which way
is better, its curves) comes from cnnbench.tasks.Task; that module imports torch, so it is imported
where a task is needed, not here.
"""

import base64
import csv
import difflib
import fnmatch
import functools
import html
import io
import json
import math
import os
import re
import statistics
import sys
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

from rich.cells import cell_len
from rich.console import Console
from rich.table import Table
from rich.text import Text

from cnnbench.errors import CnnbenchError
from cnnbench.track import (RESULTS_FORMAT, RESULTS_FORMAT_VERSION, atomic_write_bytes, atomic_write_text,
                            bookkeeping_keys, with_added_settings)

if TYPE_CHECKING:  # importing cnnbench.tasks imports torch: only where a task is needed
    from cnnbench.tasks import Task

DEFAULT_PATHS = ["outputs"]  # where Hydra puts runs unless told otherwise

# CSV columns, in order: raw values from results.json (units as written there: counts, MACs per
# image, bytes, images/s, errors, IoU and accuracies as fractions 0-1), plus `run`, `gmacs` and
# `path`; every task's figures (Task.figures), then its costs (Task.costs: inference images/s,
# proposals per image, ...) after train_images_per_s, empty where a run's task has none
# (csv_columns()).
CSV_COLUMNS = (
    "run", "task", "model", "dataset", "optimizer", "seed", "status", "epochs",
    "params", "trainable_params", "macs", "gmacs", "flops",
    "activation_bytes", "param_bytes", "peak_memory_bytes", "peak_memory_kind",
    "train_images_per_s", "loss", "best_epoch", "wall_time_s", "error", "path",
)

# Columns that vary from seed to seed: a group of seeds always shows them as mean ± std (with
# every task's figures and costs: measured()).
MEASURED = ("peak_memory_bytes", "train_images_per_s", "loss", "best_epoch", "wall_time_s")


@functools.cache
def task_figures() -> dict[str, str]:
    """Every task's figures, results.json key -> column header (Task.figures), in TASK_NAMES order:
    the tasks declare them, so a new task needs no change here."""
    from cnnbench.tasks import TASK_NAMES, get_task

    return {k: header for name in TASK_NAMES for k, header in get_task(name).figures.items()}


# What only some tasks declare, and what a task that does not declare it has: figures that are no
# fractions (costs, key -> column header: Detection's inference images/s, proposals and CNN passes
# per image), those of them in its table (cost_columns, each where some run has it), what the
# table's caption says of them (costs_caption), and the key of its inference images/s
# (inference_speed), for the plot of its score against inference time.
@functools.cache
def task_costs() -> dict[str, str]:
    """Every task's costs, results.json key -> column header (Task.costs), in TASK_NAMES order: raw
    numbers (images/s, counts, seconds), not fractions."""
    from cnnbench.tasks import TASK_NAMES, get_task

    return {k: header for name in TASK_NAMES for k, header in get_task(name).costs.items()}


def csv_columns() -> tuple[str, ...]:
    """CSV_COLUMNS with every task's figures, then its costs, after train_images_per_s."""
    at = CSV_COLUMNS.index("train_images_per_s") + 1
    return (*CSV_COLUMNS[:at], *task_figures(), *task_costs(), *CSV_COLUMNS[at:])


def measured() -> tuple[str, ...]:
    """MEASURED and every task's figures and costs."""
    return (*MEASURED, *task_figures(), *task_costs())


DEFAULT_TASK = "classification"  # the task of a results.json without a "task" key (written before tasks)

MISSING = object()  # a dotted config key that a run's config does not have


# -----------------------------------------------------------------------------
# Finding and loading results

def find_results(paths: list[str]) -> list[Path]:
    """Every results.json at or below the given paths, sorted within each path, no duplicates.
    Earlier attempts of a sweep job that was run again (<job>/attempts/N/) are left out: the
    job's own results.json is its record. A folder below a path that cannot be read is skipped
    with a warning; a path that cannot be read is an error."""
    found: dict[Path, None] = {}  # an ordered set, keyed by resolved path
    for p in map(Path, paths):
        if not p.exists():
            raise CnnbenchError(
                f"'{p}' does not exist. Point `cnnbench compare` at a folder that holds your "
                f"runs (Hydra writes them below outputs/ by default) or at a results.json file, "
                f"or run `cnnbench train` first.")
        unreadable: list[OSError] = []
        files = [p] if p.is_file() else sorted(Path(folder, "results.json") for folder, _, names in
                                               os.walk(p, onerror=unreadable.append) if "results.json" in names)
        for e in unreadable:
            if Path(e.filename) == p:
                raise CnnbenchError(f"'{p}' cannot be read ({e.strerror}). Give `cnnbench compare` a folder "
                                    f"you may list (check its permissions, e.g. ls -ld '{p}').")
            print(f"warning: skipping {e.filename}: cannot be read ({e.strerror}); runs below it are left out",
                  file=sys.stderr)
        for f in files:
            if f.parent.parent.name == "attempts" and (f.parent.parent.parent / "results.json").is_file():
                continue
            found.setdefault(f.resolve() if f.exists() else f.absolute(), None)  # a dangling link: itself
    return list(found)


def _read_result(path: Path) -> tuple[dict | None, str]:
    """(the parsed results.json, "") or (None, why it cannot be compared)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:  # permissions, a dangling link, a folder of that name
        return None, f"cannot be read ({e.strerror or e})"
    except ValueError as e:  # bad JSON and bad UTF-8
        return None, f"not readable JSON ({e})"
    if not isinstance(data, dict) or data.get("format") != RESULTS_FORMAT:
        return None, f'not a cnnbench results file (no "format": "{RESULTS_FORMAT}")'
    version = data.get("format_version")
    if not isinstance(version, int) or isinstance(version, bool):
        return None, f"format_version {version!r} is not an integer"
    if version > RESULTS_FORMAT_VERSION:
        return None, (f"format_version {version} is newer than this cnnbench reads "
                      f"({RESULTS_FORMAT_VERSION}); upgrade cnnbench to compare it")
    return data, ""


def _run_name(results_file: Path, base: Path) -> str:
    """The run's folder relative to base (the first path given), to tell rows apart."""
    run_dir = results_file.parent
    try:
        rel = run_dir.relative_to(base)
    except ValueError:  # the run lies under a later path
        return str(run_dir)
    return run_dir.name if rel == Path(".") else rel.as_posix()


def _written(data: dict, f: Path) -> float:
    """When the record was last written (seconds since the epoch): its `written_at`, or for records
    from before it existed, the file's modification time."""
    try:
        return datetime.fromisoformat(data["written_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return f.stat().st_mtime


def load_rows(paths: list[str]) -> list[dict[str, Any]]:
    """One row per usable results.json below paths: raw values (keys: CSV_COLUMNS) plus the run's
    `config` dict, per-epoch `history` list, `written` (seconds since the epoch; `written_at`, else
    the file's modification time: of two runs of one seed, the later written counts) and the whole
    file as `record`.

    Unusable files are skipped with a warning on stderr. Raises CnnbenchError when a path does
    not exist or nothing usable is found.
    """
    from cnnbench.tasks import TASK_NAMES

    files = find_results(paths)
    first = Path(paths[0]).resolve()
    base = first if first.is_dir() else first.parent
    rows, skipped = [], 0
    for f in files:
        data, why = _read_result(f)
        if data is not None and data.get("task", DEFAULT_TASK) not in TASK_NAMES:
            data, why = None, (f"task {data.get('task')!r} is not one this cnnbench compares "
                               f"({', '.join(TASK_NAMES)}); upgrade cnnbench to compare it")
        if data is None:
            print(f"warning: skipping {f}: {why}", file=sys.stderr)
            skipped += 1
            continue
        row = {k: data.get(k) for k in csv_columns()}
        row["run"] = _run_name(f, base)
        row["task"] = data.get("task", DEFAULT_TASK)
        row["gmacs"] = row["macs"] / 1e9 if _is_number(row["macs"]) else None
        row["path"] = str(f)
        row["config"] = data.get("config") if isinstance(data.get("config"), dict) else {}
        row["history"] = [h for h in data.get("history") or [] if isinstance(h, dict)]
        row["written"] = _written(data, f)
        row["record"] = data  # the whole results.json: any dotted key of it is a column (env.device_name)
        rows.append(row)
    if not rows:
        where = ", ".join(f"'{p}'" for p in paths)
        note = f" ({skipped} file(s) skipped, see the warnings above)" if skipped else ""
        raise CnnbenchError(
            f"No usable results.json found below {where}{note}. Each training run writes one "
            f"into its output folder: run `cnnbench train` first, or point `cnnbench compare` "
            f"at the folder that holds your runs.")
    return rows


def _is_number(x: Any) -> bool:
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x)


# -----------------------------------------------------------------------------
# Selecting: values by name, filters, seed groups, order

def _dotted(node: Any, name: str) -> Any:
    """node["a"]["b"] for name "a.b"; MISSING if there is no such key."""
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


def _common(values: list[Any]) -> Any:
    """One value for a row of several seeds: theirs if they agree, else their mean if numbers,
    else the distinct values, comma-separated (as `seed` is). Runs without one are left out."""
    values = [v for v in values if v is not MISSING]
    if not values:
        return MISSING
    if all(v == values[0] for v in values):
        return values[0]
    if all(_is_number(v) for v in values):
        return statistics.fmean(values)
    return ", ".join(dict.fromkeys(raw_text(v) for v in values))


def value_of(row: dict[str, Any], name: str) -> Any:
    """A column's value, else a dotted key of the run's config (optimizer.lr), else of its
    results.json (env.device_name, input_shape); MISSING if neither has it. For a row of several
    seeds a results.json value is the runs' common value (see _common)."""
    if name in known_columns():
        return row.get(name)
    value = _dotted(row.get("config") or {}, name)
    if value is MISSING:
        value = _common([_dotted(r.get("record") or {}, name) for r in row.get("runs") or [row]])
    return value


def raw_text(value: Any) -> str:
    """A value as text to match patterns against: as in the CSV (null -> ""), booleans and lists
    as in the YAML config (true, [0.5])."""
    if value is None or value is MISSING:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return str(value)


def _keys(rows: list[dict[str, Any]], part: str) -> list[str]:
    """Every dotted key that occurs in some run's `config` or `record` (its results.json, less the
    config, which has keys of its own), leaves and sections."""
    keys: dict[str, None] = {}

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            if prefix or part != "record" or k != "config":
                keys.setdefault(prefix + k, None)
                if isinstance(v, dict):
                    walk(v, f"{prefix}{k}.")
    for r in rows:
        walk(r.get(part) or {}, "")
    return list(keys)


def check_name(name: str, rows: list[dict[str, Any]], option: str) -> None:
    """Raise CnnbenchError unless name is a column, or a dotted key of some run's config or
    results.json."""
    if name in known_columns():
        return
    config_keys, record_keys = _keys(rows, "config"), _keys(rows, "record")
    if name in config_keys or name in record_keys:
        return
    guess = ([k for k, c in RECORD_COLUMNS.items() if c.header == name and k in record_keys]  # device
             or [k for k in config_keys if k.endswith("." + name)]  # lr -> optimizer.lr
             or [k for k in record_keys if k.endswith("." + name)]  # cpus -> env.cpus
             or difflib.get_close_matches(name, [*known_columns(), *config_keys, *record_keys], n=1))
    hint = f" Did you mean {guess[0]}?" if guess else ""
    leaves = [k for k in config_keys if "." in k][:3] or ["optimizer.lr"]
    recorded = [k for k in RECORD_COLUMNS if k in record_keys][:4] or ["env.device_name", "input_shape"]
    raise CnnbenchError(
        f"{option}: unknown column {name!r}.{hint} Known columns: {', '.join(known_columns())}; or a dotted "
        f"key of the runs' results.json (e.g. {', '.join(recorded)}) or of their config (e.g. {', '.join(leaves)}).")


def parse_filters(specs: list[str], rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    """--filter KEY=PATTERN options as {KEY: [PATTERN, ...]}; raises CnnbenchError if malformed."""
    filters: dict[str, list[str]] = {}
    for spec in specs:
        key, sep, pattern = spec.partition("=")
        key = key.strip()
        if not sep or not key:
            raise CnnbenchError(
                f"--filter {spec!r} is not KEY=PATTERN. Write e.g. --filter 'model=resnet*' or "
                f"--filter optimizer.name=sgd: a column or dotted config key, '=', and a shell-style "
                f"pattern (* ? [abc]); repeat --filter for more conditions.")
        check_name(key, rows, "--filter")
        if key == "n_seeds":
            raise CnnbenchError("--filter n_seeds: filters pick runs before seeds are grouped, so "
                                "every run has n_seeds=1. Filter on seed or status instead.")
        filters.setdefault(key, []).append(pattern)
    return filters


def filter_rows(rows: list[dict[str, Any]], filters: dict[str, list[str]]) -> list[dict[str, Any]]:
    """The runs whose value of every filtered key matches one of that key's patterns (shell-style,
    case-sensitive, on the raw value: errors as fractions, null as empty)."""
    def keep(r):
        return all(any(fnmatch.fnmatchcase(raw_text(value_of(r, k)), p) for p in patterns)
                   for k, patterns in filters.items())
    return [r for r in rows if keep(r)]


def _group_key(r: dict[str, Any]) -> tuple:
    # Runs whose config differs only in seed, with the same outcome, are one experiment repeated;
    # a run without a config (older files) cannot be matched, so it stands alone.
    if not r.get("config"):
        return ("run", r["path"])
    ignored = bookkeeping_keys(r["config"])
    config = {section: ({k: v for k, v in values.items() if f"{section}.{k}" not in ignored}
                        if isinstance(values, dict) else values)
              for section, values in with_added_settings(r["config"]).items() if section != "seed"}
    return ("config", json.dumps(config, sort_keys=True, default=str), r["status"])


def _seed_order(r: dict[str, Any]) -> tuple:
    return (0, r["seed"], "") if _is_number(r["seed"]) else (1, 0, str(r["seed"]))


def _group_name(runs: list[dict[str, Any]]) -> str:
    """Sweep folders name the seed (model=resnet18,seed=1): the group is model=resnet18,seed=*."""
    names = {re.sub(rf"(^|[,/]){re.escape('seed=' + str(r['seed']))}(?=$|[,/])", r"\1seed=*", r["run"])
             for r in runs}
    if len(names) == 1 and "seed=*" in next(iter(names)):
        return names.pop()
    return f"{runs[0]['run']} (+{len(runs) - 1} more)"


def _latest_per_seed(runs: list[dict[str, Any]]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(the latest run of each seed, the earlier runs of those seeds). A seed run again is one
    measurement taken again, not another sample: with deterministic settings it repeats the same
    numbers, and it is usually run again because something changed (the code, the machine), so the
    run whose results.json was written last stands for its seed."""
    latest: dict[str, dict[str, Any]] = {}
    for r in sorted(runs, key=lambda r: (r.get("written", 0.0), r["path"])):  # ties: by path
        latest[raw_text(r["seed"])] = r
    counted = list(latest.values())
    earlier = [r for r in runs if all(r is not c for c in counted)]
    return counted, sorted(earlier, key=lambda r: (_seed_order(r), r.get("written", 0.0)))


def _merge(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """One row for a group of seeds: the latest run of each seed counts (the earlier ones are kept
    in `repeats`); numbers averaged, sample standard deviation (n-1) over distinct seeds in `std`."""
    runs, repeats = _latest_per_seed(runs)
    runs = sorted(runs, key=_seed_order)
    row = {**runs[0], "n_seeds": len(runs), "runs": runs, "repeats": repeats, "std": {}}
    if len(runs) == 1:
        return row
    row.update(run=_group_name(runs), seed=", ".join(str(r["seed"]) for r in runs),
               path=", ".join(r["path"] for r in runs),
               error="; ".join(dict.fromkeys(r["error"] for r in runs if r["error"])) or None)
    for k in csv_columns():
        values = [r[k] for r in runs if _is_number(r[k])]
        if k == "seed" or not values:
            continue
        same = all(v == values[0] for v in values)
        row[k] = values[0] if same else statistics.fmean(values)
        if len(values) > 1 and (k in measured() or not same):
            row["std"][k] = statistics.stdev(values)
    return row


def group_rows(rows: list[dict[str, Any]], seeds: bool = True) -> list[dict[str, Any]]:
    """With seeds=True, runs that differ only in `seed` (same config otherwise, same status) become
    one row: mean, sample standard deviation in row["std"], n_seeds (distinct seeds), the runs
    averaged in row["runs"]. Of several runs of one seed the latest counts; the earlier ones are in
    row["repeats"] and in no figure. With seeds=False every run is a row of its own (n_seeds = 1)."""
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault(_group_key(r) if seeds else ("run", r["path"]), []).append(r)
    return [_merge(runs) for runs in groups.values()]


def by_task(rows: list[dict[str, Any]]) -> list[tuple["Task", list[dict[str, Any]]]]:
    """[(task, its rows, in their order)] for each task the rows have, in cnnbench.tasks.TASK_NAMES
    order (classification first): each task has a table and plots of its own."""
    from cnnbench.tasks import TASK_NAMES, get_task

    def task_name(r):
        return r.get("task") or DEFAULT_TASK
    return [(get_task(name), [r for r in rows if task_name(r) == name]) for name in TASK_NAMES
            if any(task_name(r) == name for r in rows)]


def _tasks(rows: list[dict[str, Any]]) -> list["Task"]:
    """The rows' tasks (by_task's order); classification for no rows."""
    return [task for task, _ in by_task(rows)] or [_task_of([])]


def _task_of(rows: list[dict[str, Any]]) -> "Task":
    """The task of rows of one task (a plot is of one task's rows); classification for no rows."""
    from cnnbench.tasks import get_task

    tasks = by_task(rows)
    if len(tasks) > 1:
        raise ValueError(f"rows of {len(tasks)} tasks ({', '.join(t.name for t, _ in tasks)}): "
                         f"give one task's rows (report.by_task splits them)")
    return tasks[0][0] if tasks else get_task(DEFAULT_TASK)


def sort_rows(rows: list[dict[str, Any]], by: str | None = None, descending: bool = False) -> list[dict[str, Any]]:
    """Ordered by a column or config key (numbers before text); rows without a value last;
    ties by run name. by None (the default): each task's rows together (by_task), each by the
    task's score, best first (top-1 error ascending, mIoU descending), or with descending, the
    largest first."""
    if by is None:
        return [r for task, group in by_task(rows)
                for r in sort_rows(group, task.score, descending or task.higher_is_better)]

    def value_key(r):
        v = value_of(r, by)
        return (0, v, "") if _is_number(v) else (1, 0, raw_text(v))
    by_name = sorted(rows, key=lambda r: r["run"])
    present = [r for r in by_name if value_of(r, by) not in (None, MISSING)]
    absent = [r for r in by_name if value_of(r, by) in (None, MISSING)]
    return sorted(present, key=value_key, reverse=descending) + absent  # stable: ties stay by name


# -----------------------------------------------------------------------------
# Formatting

NULL = "—"  # shown for a missing value (null in results.json)


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    """value * scale formatted with spec, NULL for null, as-is for anything not numeric."""
    if value is None or value is MISSING:
        return NULL
    if not _is_number(value):
        return str(value)
    return format(value * scale if scale != 1 else value, spec)  # keep ints ints


def gmacs(macs) -> str:
    """10^9 MACs, 3 decimals; small networks (LeNet-5: 0.00042) keep 2 significant digits."""
    if not _is_number(macs):
        return NULL
    return f"{macs / 1e9:.3f}" if macs >= 1e7 else f"{macs / 1e9:.2g}"


def _with_std(key: str, show: Callable[[Any], str]) -> Callable[[dict[str, Any]], str]:
    """A cell: show(value), and ' ± ' show(std) for a group of seeds."""
    def cell(r):
        std = r.get("std", {}).get(key)
        return show(r.get(key)) + (f" ± {show(std)}" if std is not None else "")
    return cell


def _number(key: str, spec: str, scale: float = 1.0) -> Callable[[dict[str, Any]], str]:
    return _with_std(key, lambda v: _fmt(v, spec, scale))


def _significant(value: Any) -> str:
    """A rate, count or time as measured: from 100 on whole, with separators (1,234), below it to 3
    significant digits (12.3, 0.0512: an R-CNN's images/s on a CPU); NULL for null."""
    if not _is_number(value):
        return _fmt(value, "")
    return f"{value:,.0f}" if abs(value) >= 100 else f"{value:.3g}"


def _peak_mem(r: dict[str, Any]) -> str:
    # CUDA max-allocated counts tensors only; process RSS counts the whole Python process, so a
    # CPU run's figure is not comparable with a GPU run's: mark it.
    text = _number("peak_memory_bytes", ",.1f", 2**-20)(r)
    return text + " RSS" if r["peak_memory_kind"] == "process_peak_rss" and text != NULL else text


class Column(NamedTuple):
    header: str  # in the terminal, Markdown and HTML tables
    cell: Callable[[dict[str, Any]], str]  # a row -> its text
    right: bool  # right-aligned (numbers): in the terminal never broken over lines
    name: str = ""  # what --columns calls it
    fold: bool = False  # in the terminal, may break anywhere (names, paths, messages); else between words
    least: int = 0  # characters: in the terminal, narrower than this it is left out instead


def _text(key: str, fold: bool = False) -> Column:
    return Column(key, lambda r: _fmt(r.get(key), ""), False, fold=fold)


# Every column by name (the names --columns, --filter and --sort take); units in the headers:
# percent for errors, IoU and accuracies (fractions in results.json), MB = 2^20 bytes, GMACs =
# 10^9 MACs per image.
COLUMNS: dict[str, Column] = {
    "run": _text("run", fold=True),
    "model": _text("model"),
    "dataset": _text("dataset"),
    "task": _text("task"),  # classification, segmentation
    "optimizer": _text("optimizer"),
    "seed": Column("seed", lambda r: _fmt(r["seed"], ""), True),
    "n_seeds": Column("n seeds", lambda r: _fmt(r.get("n_seeds", 1), ""), True),
    "status": _text("status"),
    "epochs": Column("epochs", _number("epochs", ""), True),
    "params": Column("params", _number("params", ","), True),
    "trainable_params": Column("trainable params", _number("trainable_params", ","), True),
    "macs": Column("MACs", _number("macs", ","), True),
    "gmacs": Column("GMACs", _with_std("macs", gmacs), True),  # per image, forward
    "flops": Column("GFLOPs", _with_std("flops", gmacs), True),  # 2 x MACs
    "activation_bytes": Column("act MB/img", _number("activation_bytes", ",.2f", 2**-20), True),
    "param_bytes": Column("param MB", _number("param_bytes", ",.1f", 2**-20), True),
    "peak_memory_bytes": Column("peak mem MB", _peak_mem, True),
    "peak_memory_kind": _text("peak_memory_kind"),
    "train_images_per_s": Column("img/s", _number("train_images_per_s", ",.0f"), True),  # training
    "loss": Column("loss", _number("loss", ".4f"), True),  # validation, last epoch
    "best_epoch": Column("best epoch", _number("best_epoch", ".3g"), True),
    "wall_time_s": Column("wall s", _number("wall_time_s", ",.1f"), True),
    "error": _text("error", fold=True),
    "path": _text("path", fold=True),
}


@functools.cache
def known_columns() -> dict[str, Column]:
    """Every column by name: COLUMNS, with every task's figures (task_figures(): percent of a
    fraction, 2 decimals) and then its costs (task_costs(): as measured, _significant) after img/s."""
    at = list(COLUMNS).index("train_images_per_s") + 1
    figures = {k: Column(header, _number(k, ".2f", 100), True) for k, header in task_figures().items()}
    costs = {k: Column(header, _with_std(k, _significant), True) for k, header in task_costs().items()}
    return {**dict(list(COLUMNS.items())[:at]), **figures, **costs, **dict(list(COLUMNS.items())[at:])}


def _recorded(key: str, show: Callable[[Any], str] = raw_text) -> Callable[[dict[str, Any]], str]:
    """A cell: show(value) of a dotted results.json key, NULL where the run has none."""
    return lambda r: NULL if value_of(r, key) in (None, MISSING) else show(value_of(r, key))


def _shape(value: Any) -> str:
    return "x".join(map(str, value)) if isinstance(value, list) else raw_text(value)  # [3, 32, 32] -> 3x32x32


# Keys of results.json (outside its config) that have a short header: where and on what a run ran.
# Any other dotted key works too, headed by its name (--columns env.torch,batch_size).
RECORD_COLUMNS: dict[str, Column] = {
    "env.device_name": Column("device", _recorded("env.device_name"), False),  # GPU model or CPU architecture
    "env.threads": Column("threads", _recorded("env.threads"), True),  # torch's intra-op threads
    "env.cpus": Column("cpus", _recorded("env.cpus"), True),  # cores the process may use
    "env.load_start": Column("load start", _recorded("env.load_start", lambda v: _fmt(v, ".2f")), True),
    "env.load_end": Column("load end", _recorded("env.load_end", lambda v: _fmt(v, ".2f")), True),  # 1-min avg
    "input_shape": Column("input", _recorded("input_shape", _shape), False),  # CxHxW
    "num_classes": Column("classes", _recorded("num_classes"), True),
    "train_images_used": Column("train images used", _recorded("train_images_used", lambda v: _fmt(v, ",")), True),
}

# The compare table's columns; each task's figures (Task.columns: top1_err, top5_err; miou,
# pixel_acc, mean_class_acc), then those of its cost columns that some row has, go before epochs.
DEFAULT_COLUMNS = ("run", "model", "dataset", "optimizer", "seed", "n_seeds", "params", "gmacs",
                   "activation_bytes", "peak_memory_bytes", "train_images_per_s", "epochs", "status")
# Shown after n_seeds where they differ between the rows: a figure measured on another device,
# with other threads or at another input size is not the same measurement. In the terminal, where
# they are the same for all rows, they are named on the line above the table.
SETUP_COLUMNS = ("input_shape", "env.device_name", "env.threads")


def _shown_costs(task: "Task", rows: list[dict[str, Any]]) -> list[str]:
    """The task's cost columns (Task.cost_columns) that some row has a number for: a detection
    table from before they were recorded, or of single-shot detectors only, goes without the
    columns that would say nothing there (proposals per image)."""
    return [k for k in task.cost_columns if any(_is_number(r.get(k)) for r in rows)]


def default_columns(rows: list[dict[str, Any]], setup: tuple[str, ...] | None = None) -> list[str]:
    """DEFAULT_COLUMNS with the figures of the rows' task (Task.columns; of each of their tasks, for
    rows of several), then those of its cost columns that some row has (_shown_costs), before
    epochs, and after n_seeds those of SETUP_COLUMNS whose value differs between the rows (or the
    setup columns given)."""
    if setup is None:
        setup = tuple(k for k in SETUP_COLUMNS if len({raw_text(value_of(r, k)) for r in rows}) > 1)
    figures = [k for task in _tasks(rows) for k in (*task.columns, *_shown_costs(task, rows))]
    at, before = DEFAULT_COLUMNS.index("n_seeds") + 1, DEFAULT_COLUMNS.index("epochs")
    return [*DEFAULT_COLUMNS[:at], *setup, *DEFAULT_COLUMNS[at:before], *figures, *DEFAULT_COLUMNS[before:]]


def _top_k(r: dict[str, Any]) -> int:
    """The k of a run's top-5 error: the top-k error is capped at the number of classes (with 3
    classes the top-5 error is the top-3 error: always 0). 5 where the record does not say."""
    n = value_of(r, "num_classes")
    return min(5, n) if _is_number(n) and n >= 1 else 5


def _top5_column(rows: list[dict[str, Any]]) -> Column:
    """top5_err labelled as what it is: 'top-3 err %' if every row has 3 classes; where the rows
    differ, 'top-5 err %' and the capped cells say their k."""
    ks = {_top_k(r) for r in rows}
    number = _number("top5_err", ".2f", 100)
    if len(ks) == 1:
        return Column(f"top-{ks.pop()} err %", number, True)
    return Column("top-5 err %", lambda r: number(r) + (f" (top-{_top_k(r)})" if _top_k(r) < 5 else ""), True)


def _key_column(key: str, rows: list[dict[str, Any]]) -> Column:
    """A dotted key of the config or results.json, headed by its name."""
    def show(value):
        text = raw_text(value)  # as written in the config, but a mean over seeds to 4 digits
        return format(value, ".4g") if isinstance(value, float) and len(text) > 8 else text
    return Column(key, _recorded(key, show), any(_is_number(value_of(r, key)) for r in rows), fold=True)


def column(name: str, rows: list[dict[str, Any]]) -> Column:
    """The column of a (known) name, for these rows."""
    if name == "top5_err":
        c = _top5_column(rows)
    else:
        c = known_columns().get(name) or RECORD_COLUMNS.get(name) or _key_column(name, rows)
    return c._replace(name=name)


def resolve_columns(names: list[str] | None, rows: list[dict[str, Any]]) -> list[Column]:
    """Columns by name (known_columns(), or dotted keys of the config or of results.json); None: the
    default_columns for the rows. Raises CnnbenchError for a name no run has."""
    names = default_columns(rows) if names is None else names
    if not names:
        raise CnnbenchError("--columns is empty. Name the columns, comma-separated, e.g. "
                            f"--columns run,model,top1_err,params. Known columns: {', '.join(known_columns())}.")
    for name in names:
        check_name(name, rows, "--columns")
    return [column(name, rows) for name in names]


CAPTION = ("GMACs per image, forward; MB = 2^20 bytes; RSS = process peak memory (CPU runs); a ± b: mean ± "
           "sample standard deviation over n seeds")


def caption(rows: list[dict[str, Any]]) -> str:
    """A table's caption: what its figures are (Task.caption: "errors"; "mIoU, pixel acc, class acc")
    and the units."""
    figures = [task.caption for task in _tasks(rows)]
    costs = "".join(f"{task.costs_caption}; " for task in _tasks(rows)
                    if task.costs_caption and _shown_costs(task, rows))
    return f"{'; '.join(figures)} on the validation set after the last epoch; {costs}{CAPTION}"


_STATUS_STYLE = {"failed": "red", "interrupted": "yellow", "running": "dim"}


def _n_runs(rows: list[dict[str, Any]]) -> int:
    """Every run the rows stand for, the repeats of a seed left out of them included."""
    return sum(r.get("n_seeds", 1) + len(r.get("repeats", ())) for r in rows)


def _grouping(rows: list[dict[str, Any]]) -> str:
    """' in M row(s): how', or '' when every run is a row."""
    if _n_runs(rows) == len(rows):
        return ""
    how = []
    if any(r.get("n_seeds", 1) > 1 for r in rows):
        how.append("runs that differ only in seed averaged")
    n_repeats = sum(len(r.get("repeats", ())) for r in rows)
    if n_repeats:
        how.append(f"{n_repeats} earlier run(s) of a seed left out")
    return f" in {len(rows)} row(s): {', '.join(how)}"


def repeats_note(rows: list[dict[str, Any]]) -> str:
    """'Left out: ...' naming the earlier runs of a seed that a row does not count, or ''."""
    repeats = [r for row in rows for r in row.get("repeats", ())]
    if not repeats:
        return ""
    return (f"Left out, as earlier runs of a seed that was run again: {', '.join(r['run'] for r in repeats)}. "
            f"The run of each seed whose results.json was written last is the one counted; --no-group shows every run")


# -----------------------------------------------------------------------------
# The terminal: tables that fit the screen. A number or a path is never cut: text breaks between
# words, run names and paths fold, and where that is not enough whole columns are left out, with a
# note naming them. The files (CSV, Markdown, the report) always have every column.

FOLD_WIDTH = 16  # characters: a run name folds down to this before columns are left out
# Characters a rich Table (default box, padding) adds: the rule at the left edge, and per column a
# space either side and the rule after it.
EDGE, PER_COLUMN = 1, 3

# The compare table's default columns, the first to be left out first; run and the task's score
# (top-1 error, mIoU) never are. Memory first, then the task's other figures (top-5 error; pixel
# and class accuracy) and cost columns (proposals per image: _drop_order puts them here) and the
# settings, last what a comparison is for: the model and its cost (parameters, GMACs, training
# images/s, and after it a detector's inference images/s).
DROP_ORDER = ("activation_bytes", "peak_memory_bytes", "epochs", "n_seeds", "seed",
              "input_shape", "optimizer", "dataset", "env.threads", "env.device_name",
              "train_images_per_s", "status", "gmacs", "params", "model")
# What a run was and how it ended, as opposed to what it measured: with the same value in every
# row, the terminal names it on a line above the table instead of repeating it in a column.
CONTEXT = ("model", "dataset", "optimizer", "seed", "n_seeds", "epochs", "status", *SETUP_COLUMNS)


def _drop_order(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """DROP_ORDER with the figures and cost columns of the rows' tasks, other than their score and
    inference speed, after the memory columns; their inference speed after training images/s."""
    tasks = _tasks(rows)
    speeds = tuple(task.inference_speed for task in tasks if task.inference_speed)
    figures = tuple(k for task in tasks for k in (*task.columns, *task.cost_columns)
                    if k != task.score and k not in speeds)
    at = DROP_ORDER.index("train_images_per_s") + 1
    return (*DROP_ORDER[:2], *figures, *DROP_ORDER[2:at], *speeds, *DROP_ORDER[at:])


def _least_width(c: Column, texts: list[str]) -> int:
    """The narrowest column c can be without cutting a cell: a header breaks between words, a
    number never breaks, a name or path folds down to FOLD_WIDTH, other text breaks between words;
    and no narrower than c.least."""
    header = max(map(cell_len, c.header.split()), default=1)
    if c.right:
        body = max(map(cell_len, texts), default=0)
    elif c.fold:
        body = min(max(map(cell_len, texts), default=0), FOLD_WIDTH)
    else:
        body = max((cell_len(word) for t in texts for word in t.split()), default=0)
    natural = max(cell_len(c.header), *map(cell_len, texts))
    return max(header, body, min(c.least, natural))


def fit_table(columns: list[Column], rows: list[dict[str, Any]], width: int | None,
              drop_order: tuple[str, ...] = (), **options) -> tuple[Table, list[Column]]:
    """A rich Table of the rows, at most `width` characters wide (None: as wide as its cells), that
    cuts no cell: columns narrow by wrapping text (_least_width), then whole columns are left out,
    by name in drop_order, until the rest fit; the width left over widens the columns in their
    order, up to their widest cell (a number's column all the way or not at all). Returns the
    table and the columns left out; options go to Table (title, caption)."""
    texts = [[c.cell(r) for r in rows] for c in columns]
    natural = [max(cell_len(c.header), *map(cell_len, t)) for c, t in zip(columns, texts)]
    least = [_least_width(c, t) for c, t in zip(columns, texts)]
    kept = list(range(len(columns)))

    def needed() -> int:
        return EDGE + sum(least[i] + PER_COLUMN for i in kept)
    for name in drop_order if width is not None else ():
        if needed() <= width:
            break
        kept = [i for i in kept if columns[i].name != name]
    spare = math.inf if width is None else width - needed()
    table = Table(**options)
    for i in kept:
        grow = max(0, min(spare, natural[i] - least[i]))
        if columns[i].right and grow < natural[i] - least[i]:
            grow = 0  # a number's header on one line or wrapped; not split at a random word
        spare -= grow
        table.add_column(columns[i].header, justify="right" if columns[i].right else "left",
                         width=least[i] + grow, overflow="fold")  # a word wider breaks, never ends in "…"
    for n, r in enumerate(rows):
        # Text, not str: a run folder named "[red]" must print as is, not as rich markup.
        table.add_row(*[Text(texts[i][n]) for i in kept], style=_STATUS_STYLE.get(r.get("status")))
    return table, [columns[i] for i in range(len(columns)) if i not in kept]


def print_whole(table: Table, console: Console) -> None:
    """Print a table uncropped: one wider than the screen (named --columns that do not fit) comes
    out at its own width, and the terminal wraps its lines, rather than rich cutting them."""
    wide = console.measure(table, options=console.options.update_width(10_000)).maximum  # characters
    if wide <= console.width:
        console.print(table)
        return
    if console.is_terminal:
        console.print(Text(f"The table is {wide} characters wide, the terminal {console.width}: its lines wrap. "
                           f"Name fewer --columns, or widen the terminal."), style="yellow")
    width, console.width = console.width, wide
    console.print(table, crop=False)
    console.width = width


def _left_out_note(left_out: list[Column], width: int, hint: str) -> str:
    return f"left out to fit {width} columns: {', '.join(c.header for c in left_out)} ({hint})"


def to_table(rows: list[dict[str, Any]], columns: list[Column] | None = None, width: int | None = None,
             drop_order: tuple[str, ...] = (), task: str = "") -> tuple[Table, list[Column]]:
    """The comparison as a rich Table at most `width` characters wide (see fit_table), and the
    columns left out to fit. task: a task's name for the title ("5 segmentation run(s)"), where
    several tasks are compared."""
    columns = columns or resolve_columns(None, rows)
    note = repeats_note(rows)
    runs = f"{task} run(s)" if task else "run(s)"
    return fit_table(columns, rows, width, drop_order,
                     title=f"cnnbench compare: {_n_runs(rows)} {runs}{_grouping(rows)}",
                     caption=Text(caption(rows) + (f"\n{note}." if note else "")))  # Text: run names are not markup


def show_comparison(rows: list[dict[str, Any]], names: list[str] | None = None, console: Console | None = None,
                    task: str = "") -> None:
    """The comparison in the terminal. By default (names None) the default columns and
    SETUP_COLUMNS: those of CONTEXT whose value is the same in every row are named on a line above
    the table ("all runs: dataset=cifar10, optimizer=sgd, ..."), and columns that still do not fit
    the screen are left out in DROP_ORDER (_drop_order), with a note below naming them. With names
    (--columns), exactly those columns, wrapped to fit, or wider than the screen if they must be. To
    a pipe or a file, at full width: there is no screen to fit. task: named in the title (to_table)."""
    console = console or Console()
    width = console.width if console.is_terminal else None
    if names is None:
        columns = [column(n, rows) for n in default_columns(rows, SETUP_COLUMNS)]
        same = [c for c in columns if c.name in CONTEXT and len({c.cell(r) for r in rows}) == 1]
        columns = [c for c in columns if c.name not in {s.name for s in same}]
        shown = [f"{c.header}={c.cell(rows[0]).replace(', ', ',')}" for c in same  # seed=0,1,2
                 if c.cell(rows[0]) != NULL and not (c.name == "n_seeds" and c.cell(rows[0]) == "1")]
        if shown:
            console.print(Text("all runs: " + ", ".join(shown)))
    else:
        columns = [column(n, rows) for n in names]
    table, left_out = to_table(rows, columns, width, _drop_order(rows) if names is None else (), task)
    print_whole(table, console)
    if left_out:
        console.print(Text(_left_out_note(left_out, width, "--columns brings them back: " +
                                          ", ".join(c.name for c in left_out))))


def _md_line(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def to_markdown(rows: list[dict[str, Any]], columns: list[Column] | None = None) -> str:
    """A Markdown table of the rows, formatted for people, with the units underneath."""
    columns = columns or resolve_columns(None, rows)
    lines = [_md_line([c.header for c in columns]),
             "|" + "|".join("---:" if c.right else "---" for c in columns) + "|"]
    lines += [_md_line([c.cell(r) for c in columns]) for r in rows]
    note = repeats_note(rows)
    return "\n".join(lines) + f"\n\n{caption(rows)}.\n" + (f"\n{note}.\n" if note else "")


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV with raw values (errors as fractions, bytes, MACs); null -> empty cell."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=csv_columns(), lineterminator="\n", extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


# -----------------------------------------------------------------------------
# Plots: matplotlib Figures without pyplot (no global state, no display), imported only here so
# that `cnnbench train` does not pay for it. One point per row of the table, in the row's colour.

BUBBLE_AREA = 2000.0  # points^2 for the largest network's bubble
MIN_BUBBLE_AREA = 15.0  # points^2: LeNet-5 next to VGG-16 would be 0.9 otherwise


def _colour(i: int) -> str:
    return f"C{i % 10}"  # matplotlib's default cycle: the same row has the same colour everywhere


def _plottable(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> tuple[list[tuple[int, dict]], list[str]]:
    """([(row index, row)] to plot, ["run (why not)"]): failed runs and missing values left out."""
    points, left_out = [], []
    for i, r in enumerate(rows):
        if r["status"] == "failed":
            left_out.append(f"{r['run']} (failed)")
        elif not all(_is_number(r.get(k)) for k in keys):
            left_out.append(f"{r['run']} (no {', '.join(k for k in keys if not _is_number(r.get(k)))})")
        else:
            points.append((i, r))
    return points, left_out


def _new_figure(width: float = 8.0, height: float = 5.5):
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), layout="constrained")  # inches


def _log_x_if_wide(ax, values: list[float]) -> None:
    # Networks span orders of magnitude (LeNet-5 0.0004 GMACs, VGG-16 15.5): a linear axis would
    # pile the small ones into one corner. Ticks at 1, 2, 5 x 10^k, written as plain numbers; over
    # more than three decades (an SSD's 1 ms and an R-CNN's 20 s per image) at 10^k alone, as the
    # labels would run into each other.
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if values and min(values) > 0 and max(values) / min(values) > 10:
        ax.set_xscale("log")
        subs = (1.0, 2.0, 5.0) if max(values) / min(values) <= 1e3 else (1.0,)
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=subs))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1000 else f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def _config_leaves(config: dict, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of every leaf of a config."""
    leaves = {}
    for k, v in config.items():
        if isinstance(v, dict):
            leaves.update(_config_leaves(v, f"{prefix}{k}."))
        else:
            leaves[prefix + k] = v
    return leaves


def plot_labels(rows: list[dict[str, Any]]) -> list[str]:
    """A short name for each row in the plots. A sweep job's folder already names what differs
    (model=resnet56,seed=1) and is kept; a run outside a sweep, whose folder is a time and a model
    (2026-11-29_20-14-40_lenet5_fashion_mnist), is named by up to three config keys that differ
    between the rows, the model by its name alone (lenet5,lr=0.01), else by its model. Labels that
    would still be the same are the rows' run names, or get #2, #3."""
    leaves = [_config_leaves(r.get("config") or {}) for r in rows]
    ignored = bookkeeping_keys(*[r.get("config") or {} for r in rows])
    keys = sorted(dict.fromkeys(k for row in leaves for k in row), key=lambda k: k != "model.name")  # model first
    differ = [k for k in keys if k not in ignored and len({raw_text(row.get(k)) for row in leaves}) > 1]

    def label(r, config):
        folder = r["run"].rsplit("/", 1)[-1]
        if "=" in folder or not config:
            return folder if "=" in folder else _fmt(r.get("model"), "")
        parts = [raw_text(config.get(k)) if k == "model.name" else
                 f"{k.rsplit('.', 1)[0] if k.endswith('.name') else k.rsplit('.', 1)[-1]}={raw_text(config.get(k))}"
                 for k in differ[:3]]
        return ",".join(parts) or _fmt(r.get("model"), "")
    labels = [label(r, config) for r, config in zip(rows, leaves)]
    labels = [r["run"] if labels.count(text) > 1 else text for r, text in zip(rows, labels)]
    seen: dict[str, int] = {}
    for i, text in enumerate(labels):
        seen[text] = seen.get(text, 0) + 1
        if seen[text] > 1:
            labels[i] = f"{text} #{seen[text]}"
    return labels


def _bare(label: str) -> str:
    """An axis label as the name of its figure: "top-1 error %" -> "top-1 error"."""
    return label.removesuffix(" %")


def _capital(text: str) -> str:
    """text to start a title: "top-1 error" -> "Top-1 error"; a first word with capitals of its own
    stays as it is ("mIoU")."""
    first = text.split(" ", 1)[0]
    return text[:1].upper() + text[1:] if first == first.lower() else text


def _names(task: "Task") -> dict[str, str]:
    """What the titles and file names of a task's plots say: {stem} and {curves_file} (its file
    names), {score} (its results.json key), {Score} ("Top-1 error", "mIoU") and {curves}, the two
    panels of its per-epoch plot: one figure on both sets is named by its kind ("Training and
    validation error"), two by their names ("Training pixel accuracy and validation mIoU")."""
    (train_key, train), (val_key, val) = task.curves
    train, val = _bare(train), _bare(val)
    first, second = (("Training", "validation") if train_key.startswith("train_") else ("Validation", "validation"))
    curves = (f"Training and validation {train.split()[-1]}" if train == val else
              f"{first} {train} and {second} {val}")
    return {"stem": task.plot_stem, "curves_file": task.curves_file, "score": task.score,
            "Score": _capital(_bare(task.score_label)), "curves": curves,
            "speed": task.inference_speed or ""}


def _scatter(ax, points, x_key: str, sizes: list[float], labels: list[str], task: "Task") -> None:
    """Markers (gid "runs", one per row) at the task's score (percent), ± std bars for groups of
    seeds, and each row's label (plot_labels) beside its marker, on the side towards the middle of
    the axes."""
    y_key = task.score
    xs = [r[x_key] for _, r in points]
    ys = [100 * r[y_key] for _, r in points]
    ax.scatter(xs, ys, s=sizes, c=[_colour(i) for i, _ in points], alpha=0.55, edgecolors="black",
               linewidths=0.6, gid="runs", zorder=3)
    _log_x_if_wide(ax, xs)
    ax.margins(0.1)  # room for the largest bubbles and their labels
    ax.autoscale_view()
    to_axes = ax.transData + ax.transAxes.inverted()  # data -> fraction of the axes
    for (i, r), x, y, area in zip(points, xs, ys, sizes):
        std = r.get("std", {})
        if y_key in std or x_key in std:
            ax.errorbar(x, y, yerr=100 * std.get(y_key, 0.0), xerr=std.get(x_key, 0.0),
                        fmt="none", ecolor=_colour(i), capsize=3, zorder=2)
        off = 0.7 * math.sqrt(area) / 2 + 3  # points: beside the bubble's edge, not on it
        left = to_axes.transform((x, y))[0] > 0.6  # right of the middle: the label goes left, inside the axes
        ax.annotate(labels[i], (x, y), xytext=(-off if left else off, off), textcoords="offset points",
                    ha="right" if left else "left", fontsize=8)
    ax.grid(True, which="both", alpha=0.3)
    ax.set_ylabel(f"{task.score_label} (validation, last epoch)")


def _nothing_to_plot(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no run to plot: none has {what}", ha="center", va="center",
            transform=ax.transAxes)


def _count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


def bubble_figure(rows: list[dict[str, Any]], task: "Task | None" = None):
    """The task's score (top-1 error, mIoU) against GMACs per image, bubble area proportional to
    parameters: the accuracy-vs-operations chart of Canziani et al. 2016 (arXiv:1605.07678,
    Fig. 2), with the task's score in place of accuracy. rows: of one task (task None: theirs).
    Returns a matplotlib Figure; one bubble per row, failed runs left out."""
    from matplotlib.lines import Line2D

    task = task or _task_of(rows)
    fig = _new_figure()
    ax = fig.add_subplot()
    points, _ = _plottable(rows, ("gmacs", task.score, "params"))
    if points:
        largest = max(r["params"] for _, r in points)
        area = [max(BUBBLE_AREA * r["params"] / largest, MIN_BUBBLE_AREA) for _, r in points]
        _scatter(ax, points, "gmacs", area, plot_labels(rows), task)
        # Key: powers of ten within the range of parameters, drawn at the same scale.
        smallest = min(r["params"] for _, r in points)
        refs = [10**k for k in range(math.ceil(math.log10(smallest)), math.floor(math.log10(largest)) + 1)]
        refs = refs[-3:] or [largest]
        handles = [Line2D([], [], ls="", marker="o", color="grey", alpha=0.55,
                          markersize=math.sqrt(max(BUBBLE_AREA * v / largest, MIN_BUBBLE_AREA)),
                          label=f"{_count(v)} params") for v in refs]
        widest = max(h.get_markersize() for h in handles)  # points; legend lengths are in font sizes
        ax.legend(handles=handles, title="area ∝ parameters", loc="upper left", bbox_to_anchor=(1.02, 1),
                  labelspacing=widest / 20, handlelength=widest / 10, borderpad=1.0, frameon=False)
    else:
        _nothing_to_plot(ax, f"GMACs, parameters and {_bare(task.score_label)}")
    ax.set_xlabel("GMACs per image (10⁹ multiply-accumulates, forward pass)")
    ax.set_title(f"{_names(task)['Score']} against operations (bubble area ∝ parameters)")
    return fig


def throughput_figure(rows: list[dict[str, Any]], task: "Task | None" = None):
    """The task's score against training images/s (median over epochs). rows: of one task (task
    None: theirs). Returns a matplotlib Figure; one point per row, failed runs left out."""
    task = task or _task_of(rows)
    fig = _new_figure()
    ax = fig.add_subplot()
    points, _ = _plottable(rows, ("train_images_per_s", task.score))
    if points:
        _scatter(ax, points, "train_images_per_s", [60.0] * len(points), plot_labels(rows), task)
    else:
        _nothing_to_plot(ax, f"a training speed and {_bare(task.score_label)}")
    ax.set_xlabel("training images/s (median over epochs; on each run's own device)")
    ax.set_title(f"{_names(task)['Score']} against training throughput")
    return fig


def _inference_ms(r: dict[str, Any], speed: str) -> dict[str, Any]:
    """The row with `inference_ms`, ms per image (1000 / its images/s): for a group of seeds the mean
    of each run's ms, and their sample std in std["inference_ms"]."""
    ms = [1000 / run[speed] for run in r.get("runs", [r]) if _is_number(run.get(speed)) and run[speed] > 0]
    std = {**r.get("std", {}), **({"inference_ms": statistics.stdev(ms)} if len(ms) > 1 else {})}
    return {**r, "inference_ms": statistics.fmean(ms), "std": std}


def inference_figure(rows: list[dict[str, Any]], task: "Task | None" = None):
    """The task's score against inference time per image, ms = 1000 / the images/s of its whole
    evaluation forward (Task.inference_speed), as detectors are compared (Huang et al. 2017,
    "Speed/accuracy trade-offs for modern convolutional object detectors": mAP against GPU time).
    rows: of one task (task None: theirs). Returns a matplotlib Figure; one point per row, failed
    runs and runs without the speed (older records) left out."""
    task = task or _task_of(rows)
    speed = task.inference_speed
    fig = _new_figure()
    ax = fig.add_subplot()
    points, _ = _plottable(rows, (speed, task.score)) if speed else ([], [])
    points = [(i, _inference_ms(r, speed)) for i, r in points if r[speed] > 0]
    if points:
        _scatter(ax, points, "inference_ms", [60.0] * len(points), plot_labels(rows), task)
    else:
        _nothing_to_plot(ax, f"an inference speed and {_bare(task.score_label)}")
    ax.set_xlabel("inference ms per image (whole forward, proposals and NMS included; each run's own device)")
    ax.set_title(f"{_names(task)['Score']} against inference time")
    return fig


def _curve(runs: list[dict[str, Any]], key: str) -> tuple[list, list, list]:
    """(epochs, mean, sample std) of a history key over the runs of a row, epoch by epoch."""
    by_epoch: dict[int, list[float]] = {}
    for r in runs:
        for h in r["history"]:
            if _is_number(h.get("epoch")) and _is_number(h.get(key)):
                by_epoch.setdefault(h["epoch"], []).append(100 * h[key])
    epochs = sorted(by_epoch)
    return (epochs, [statistics.fmean(by_epoch[e]) for e in epochs],
            [statistics.stdev(by_epoch[e]) if len(by_epoch[e]) > 1 else 0.0 for e in epochs])


def curves_figure(rows: list[dict[str, Any]], task: "Task | None" = None):
    """The task's training and validation figures per epoch (Task.curves: top-1 error on both sets;
    pixel accuracy, then mIoU), one line per row (seeds: mean, band ± std), as in the degradation
    plots of He et al. 2016 (Fig. 1). rows: of one task (task None: theirs). Returns a matplotlib
    Figure."""
    from matplotlib.ticker import MaxNLocator

    task = task or _task_of(rows)
    (train_key, train_label), (val_key, val_label) = task.curves
    fig = _new_figure(11.0, 5.0)
    axes = fig.subplots(1, 2, sharey=train_label == val_label)  # one figure on both panels: one scale
    drawn, shown = 0, []  # lines, epochs drawn
    labels = plot_labels(rows)
    for i, r in enumerate(rows):
        if r["status"] == "failed":
            continue
        for ax, key in zip(axes, (train_key, val_key)):
            epochs, mean, std = _curve(r.get("runs", [r]), key)
            if not epochs:
                continue
            ax.plot(epochs, mean, marker="o", markersize=3, color=_colour(i), gid=r["run"], label=labels[i])
            shown += epochs
            if any(std):
                ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=_colour(i), alpha=0.2, linewidth=0)
            drawn += 1
    sets = {"train": "training set (during each epoch)", "val": "validation set (after each evaluated epoch)"}
    for ax, (key, label) in zip(axes, task.curves):  # each panel named by its set and, if they differ, its figure
        title = sets[key.split("_", 1)[0]]
        ax.set_title(title if task.curves[0][1] == task.curves[1][1] else f"{_bare(label)}, {title}", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))  # no epoch 1.5, even with one epoch
        if shown:  # half an epoch either side: one epoch is a point at 1, not at 0.945 ... 1.05
            ax.set_xlim(min(shown) - 0.5, max(shown) + 0.5)
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel(train_label)
    if val_label != train_label:
        axes[1].set_ylabel(val_label)
    if drawn:
        legend = {}  # label -> handle, each row once even if only one panel has its curve
        for ax in axes:
            for handle, label in zip(*ax.get_legend_handles_labels()):
                legend.setdefault(label, handle)
        # Below the panels, as many columns as the longest run name allows (~170 characters fit).
        ncols = max(1, min(len(legend), 170 // (max(map(len, legend)) + 8)))
        fig.legend(list(legend.values()), list(legend), loc="outside lower center", ncols=ncols, fontsize=8)
    else:
        _nothing_to_plot(axes[0], "a per-epoch history")
    fig.suptitle(f"{_capital(_bare(train_label)) if train_label == val_label else _names(task)['curves']} per epoch")
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


# -----------------------------------------------------------------------------
# The report: the table, the plots and the runs that did not complete, as Markdown and as one
# self-contained HTML file (images inline as base64)

# Each task's plots: (file name, title, figure function, values a point needs), with the task's
# names (_names) in braces: top1_vs_gmacs.png, "Top-1 error against operations"; miou_vs_gmacs.png.
# A plot that needs the {speed} is drawn for the tasks that record one (Task.inference_speed) only.
PLOTS = (
    ("{stem}_vs_gmacs.png", "{Score} against operations", bubble_figure, ("gmacs", "{score}", "params")),
    ("{stem}_vs_images_per_s.png", "{Score} against training throughput", throughput_figure,
     ("train_images_per_s", "{score}")),
    ("{stem}_vs_inference_ms.png", "{Score} against inference time", inference_figure, ("{speed}", "{score}")),
    ("{curves_file}", "{curves} per epoch", curves_figure, ()),
)


def plots(task: "Task") -> list[tuple[str, str, Callable, tuple[str, ...]]]:
    """PLOTS for one task, its names filled in: (file name, title, figure function, keys)."""
    names = _names(task)
    return [(name.format(**names), title.format(**names), figure, tuple(k.format(**names) for k in keys))
            for name, title, figure, keys in PLOTS if names["speed"] or "{speed}" not in keys]


class Section(NamedTuple):
    """One task's part of the comparison: its table (rows in order, columns) and its plots."""
    task: "Task"
    rows: list[dict[str, Any]]
    columns: list[Column]


def sections_of(rows: list[dict[str, Any]], names: list[str] | None = None, sort: str | None = None,
                descending: bool = False) -> list[Section]:
    """The rows split by task (by_task), each task's sorted by `sort` (sort_rows; None: by its
    score, best first), with the columns named (--columns), or else its default columns."""
    sections = []
    for task, group in by_task(rows):
        group = sort_rows(group, sort, descending)
        sections.append(Section(task, group, [column(name, group) for name in names or default_columns(group)]))
    return sections


def _selection_note(paths: list[str], filters: dict[str, list[str]], sort: str | None, descending: bool,
                    rows: list[dict[str, Any]]) -> str:
    text = f"{_n_runs(rows)} run(s) below {', '.join(paths)}{_grouping(rows)}"
    if filters:
        text += "; filtered by " + ", ".join(f"{k}={'|'.join(p)}" for k, p in filters.items())
    orders = ([(sort, descending)] if sort is not None else  # else each task's by its score, best first
              [(task.score, descending or task.higher_is_better) for task in _tasks(rows)])
    return text + "; sorted by " + ", ".join(f"{key}{' (descending)' if desc else ''}" for key, desc in orders) + "."


def _not_completed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every run that did not complete, earlier runs of a seed included: the list is of runs."""
    return [run for r in rows for run in [*r.get("runs", [r]), *r.get("repeats", ())] if run["status"] != "completed"]


def _left_out(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> str:
    """'Not plotted: run (why), ...' for one plot, or ''."""
    runs = (_plottable(rows, keys)[1] if keys else
            [f"{r['run']} (failed)" for r in rows if r["status"] == "failed"])
    return f"Not plotted: {', '.join(runs)}." if runs else ""


def _labels_note(rows: list[dict[str, Any]]) -> str:
    """'In the plots: label = run, ...' for the rows whose plot label is not (the end of) their run's
    name, or ''."""
    named = [f"{label} = {r['run']}" for r, label in zip(rows, plot_labels(rows)) if not r["run"].endswith(label)]
    return f"In the plots: {'; '.join(named)}." if named else ""


def to_comparison_markdown(sections: list[Section]) -> str:
    """comparison.md: each task's table (to_markdown), under a heading naming the task where there
    are several."""
    if len(sections) == 1:
        return to_markdown(sections[0].rows, sections[0].columns)
    return "\n".join(f"## {s.task.name}\n\n{to_markdown(s.rows, s.columns)}" for s in sections)


def to_report_markdown(sections: list[Section], note: str, images: dict[str, bytes]) -> str:
    """report.md: each task's table and plots (PNG files beside it; a section per task where there
    are several), then the runs that did not complete."""
    several = len(sections) > 1
    parts = [f"# cnnbench report\n\n{note}\n\n"]
    for i, s in enumerate(sections):
        if several:
            parts.append(f"{'' if i == 0 else chr(10)}## {s.task.name}\n\n")
        parts.append(to_markdown(s.rows, s.columns))
        if _labels_note(s.rows):
            parts.append(f"\n{_labels_note(s.rows)}\n")
        for name, title, _, keys in plots(s.task):
            parts.append(f"\n{'###' if several else '##'} {title}\n\n![{title}]({name})\n")
            if name in images and _left_out(s.rows, keys):
                parts.append(f"\n{_left_out(s.rows, keys)}\n")
    bad = _not_completed([r for s in sections for r in s.rows])
    if bad:
        parts.append("\n## Runs that did not complete\n\n" + _md_line(["run", "status", "error"]) +
                     "\n|---|---|---|\n" +
                     "\n".join(_md_line([r["run"], _fmt(r["status"], ""), _fmt(r["error"], "")]) for r in bad) + "\n")
    return "".join(parts)


_HTML_STYLE = """body{font-family:system-ui,sans-serif;margin:2em;max-width:80em}
table{border-collapse:collapse;font-size:0.9em}th,td{border:1px solid #ccc;padding:0.25em 0.6em}
th{background:#f3f3f3}td.r{text-align:right;font-variant-numeric:tabular-nums}
tr.failed{color:#b00}tr.interrupted{color:#a60}img{max-width:100%}"""


def _html_table(header: list[str], body: list[tuple[str, list[tuple[str, bool]]]]) -> str:
    """header cells; body: (row class, [(cell text, right-aligned)])."""
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    lines = [f'<tr class="{html.escape(cls)}">' +
             "".join(f'<td{" class=r" if right else ""}>{html.escape(text)}</td>' for text, right in cells) +
             "</tr>" for cls, cells in body]
    return f"<table><tr>{head}</tr>\n" + "\n".join(lines) + "</table>\n"


def to_report_html(sections: list[Section], note: str, images: dict[str, bytes]) -> str:
    """report.html: as report.md, in one file, the plots inline."""
    head = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>cnnbench report</title>"
            f"<style>{_HTML_STYLE}</style></head><body>\n<h1>cnnbench report</h1>\n<p>{html.escape(note)}</p>\n")
    several = len(sections) > 1
    h = "h3" if several else "h2"
    parts = [head]
    for s in sections:
        rows, columns = s.rows, s.columns
        if several:
            parts.append(f"<h2>{html.escape(s.task.name)}</h2>\n")
        parts += [_html_table([c.header for c in columns],
                              [(r["status"] or "", [(c.cell(r), c.right) for c in columns]) for r in rows]),
                  f"<p><small>{html.escape(caption(rows))}.</small></p>\n"]
        if repeats_note(rows):
            parts.append(f"<p>{html.escape(repeats_note(rows))}.</p>\n")
        if _labels_note(rows):
            parts.append(f"<p>{html.escape(_labels_note(rows))}</p>\n")
        for name, title, _, keys in plots(s.task):
            if name in images:
                data = base64.b64encode(images[name]).decode("ascii")
                parts.append(f"<{h}>{html.escape(title)}</{h}>\n<img alt='{html.escape(title)}' "
                             f"src='data:image/png;base64,{data}'>\n<p>{html.escape(_left_out(rows, keys))}</p>\n")
    bad = _not_completed([r for s in sections for r in s.rows])
    if bad:
        parts.append("<h2>Runs that did not complete</h2>\n" + _html_table(
            ["run", "status", "error"],
            [(r["status"] or "", [(r["run"], False), (_fmt(r["status"], ""), False), (_fmt(r["error"], ""), False)])
             for r in bad]))
    parts.append(f"<p><small>written by cnnbench compare, {datetime.now():%Y-%m-%d %H:%M}</small></p>\n"
                 "</body></html>\n")
    return "".join(parts)


def render_plots(rows: list[dict[str, Any]]) -> dict[str, bytes]:
    """{file name: PNG} for every plot of the report: each task's (plots), of its rows in their order."""
    return {name: png_bytes(figure(group, task)) for task, group in by_task(rows) for name, _, figure, _ in plots(task)}


def write_report(out_dir: Path, sections: list[Section], note: str) -> list[Path]:
    """report.md, report.html and the PNGs into out_dir; returns the paths written."""
    images = render_plots([r for s in sections for r in s.rows])
    for name, data in images.items():
        atomic_write_bytes(out_dir / name, data)
    atomic_write_text(out_dir / "report.md", to_report_markdown(sections, note, images))
    atomic_write_text(out_dir / "report.html", to_report_html(sections, note, images))
    return [out_dir / "report.md", out_dir / "report.html", *(out_dir / name for name in images)]


# -----------------------------------------------------------------------------
# The command

def _out_dir(paths: list[str], out: str | None) -> Path:
    """--out if given, else the first path if it is a folder, else its parent."""
    if out is not None:
        d = Path(out)
    else:
        first = Path(paths[0])
        d = first if first.is_dir() else first.parent
    if d.exists() and not d.is_dir():
        raise CnnbenchError(f"--out '{d}' is a file; give a folder for comparison.csv, .md and the report.")
    d.mkdir(parents=True, exist_ok=True)
    return d


def _unwritable(e: OSError, where) -> CnnbenchError:
    target = f" ({Path(e.filename2).name})" if e.filename2 else ""  # a rename onto a folder, say
    return CnnbenchError(f"Cannot write the comparison files into {where}: {e.strerror or e}{target}. Files "
                         f"already there are whole (each is written to a temporary file, then renamed). Choose a "
                         f"writable folder with --out DIR, or free some space.")


def print_table(table: Table) -> None:
    """Print to the terminal; to a pipe or a file at full width, since there is no screen to fit."""
    console = Console()
    if not console.is_terminal:
        unbounded = console.options.update_width(10_000)  # characters
        console.width = max(console.width, console.measure(table, options=unbounded).maximum)
    console.print(table)


def compare_main(paths: list[str], out: str | None, columns: list[str] | None = None,
                 filters: list[str] = (), sort: str | None = None, descending: bool = False,
                 group_seeds: bool = True) -> int:
    """`cnnbench compare [PATH ...] [--out DIR] [--columns A,B] [--filter KEY=PATTERN]
    [--sort COLUMN [--desc]] [--no-group]`: compare every run below PATHs (default outputs/).

    Keeps the runs matching every filter (shell-style patterns; a key given twice matches either),
    averages runs that differ only in seed (mean ± sample std over n distinct seeds; of a seed run
    more than once, the run whose results.json was written last counts), prints one table per task
    (classification, segmentation, detection), each sorted by SORT (default: the task's score, best
    first: top-1 error ascending, mIoU and mAP descending), and writes into DIR (default: the first
    PATH, or its folder if it is a file): comparison.csv (raw numbers, one row per run, every task's
    columns), comparison.md (a table per task), and report.md / report.html with each task's table
    and plots (PNGs beside them). Files that are not cnnbench results are skipped with a warning.
    Returns the exit code.
    """
    paths = list(paths) or DEFAULT_PATHS
    if any(not str(p).strip() for p in paths) or (out is not None and not out.strip()):
        raise CnnbenchError("An empty path was given to `cnnbench compare` (e.g. an unset shell "
                            "variable). Name the folders that hold your runs, and a folder for --out.")
    runs = load_rows(paths)
    selected = parse_filters(list(filters), runs)
    resolve_columns(columns, runs)  # every name checked before anything is written
    if sort is not None:
        check_name(sort, runs, "--sort")
    kept = filter_rows(runs, selected)
    if not kept:
        seen = {k: sorted({raw_text(value_of(r, k)) for r in runs}) for k in selected}
        raise CnnbenchError(
            f"No run matches the filters ({len(runs)} run(s) found). Values present: "
            + "; ".join(f"{k}: {', '.join(v[:12]) or '(empty)'}{' …' if len(v) > 12 else ''}" for k, v in seen.items())
            + ". Patterns are shell-style and case-sensitive; quote them so the shell leaves * alone.")
    sections = sections_of(group_rows(kept, seeds=group_seeds), columns, sort, descending)
    rows = [r for s in sections for r in s.rows]
    try:
        out_dir = _out_dir(paths, out)
    except OSError as e:  # cannot create it: read-only, or a file on its path
        raise _unwritable(e, out or paths[0]) from None
    console = Console()
    for i, s in enumerate(sections):
        if i:
            console.print()
        show_comparison(s.rows, columns, console, s.task.name if len(sections) > 1 else "")
    try:
        atomic_write_text(out_dir / "comparison.csv", to_csv(sort_rows(kept, sort, descending)))
        atomic_write_text(out_dir / "comparison.md", to_comparison_markdown(sections))
        report = write_report(out_dir, sections, _selection_note(paths, selected, sort, descending, rows))
    except OSError as e:  # full, read-only, or a folder where a file goes
        raise _unwritable(e, out_dir) from None
    # The folder whole, on its own line: a path wider than the screen is wrapped by the terminal
    # (it copies as one), not broken by rich.
    console.print(Text(f"wrote into {out_dir}{os.sep}"), soft_wrap=True)
    console.print(Text(f"comparison.csv, comparison.md, {', '.join(p.name for p in report)}"))
    return 0


# -----------------------------------------------------------------------------
# The model zoo

MODEL_COLUMNS = ("name", "task", "family", "year", "paper", "input", "classes", "params", "GMACs", "min px")
MODEL_DROP_ORDER = ("paper", "family", "year", "min px", "classes", "input", "task")  # the first left out first
PAPER_WIDTH = 40  # characters: a paper title wrapped narrower than this goes below the table instead


def models_table(pattern: str = "*", input_shape: tuple | None = None, classes: int | None = None,
                 console: Console | None = None) -> Table:
    """`cnnbench models`: every registered architecture with its parameters and GMACs, counted on
    the meta device (shapes only, no arithmetic), at each paper's input or at input_shape. Fits the
    terminal: names and numbers are never cut; paper titles that would wrap into a narrow column are
    listed below the table, and columns that still do not fit are left out in MODEL_DROP_ORDER."""
    import torch

    from cnnbench.measure import count_macs, count_macs_of, count_params
    from cnnbench.models import create_model, get_model_info, list_models
    from cnnbench.models.proposals import every_proposal
    from cnnbench.tasks import get_task

    names = list_models(pattern)
    if not names:
        raise CnnbenchError(f"No model matches {pattern!r}. Known models: {', '.join(list_models())}.")
    rows, starred = [], False
    for name in names:
        info = get_model_info(name)
        shape = input_shape or info.default_input
        n_classes = classes or info.default_classes
        sized = info.sized_options(shape[1]) if info.sized_options else {}  # YOLO's grid follows the size
        min_px = info.min_input(**sized)

        if not min_px <= shape[1] <= (info.max_size or shape[1]):
            fits = (f"{min_px}" if info.max_size == min_px
                    else f"{min_px}-{info.max_size}" if info.max_size else f"{min_px}+")
            params, macs = "—", f"needs {fits} px"
        else:
            def build(count=None, name=name, n_classes=n_classes, shape=shape, sized=sized):
                net = create_model(name, num_classes=n_classes, in_channels=shape[0], **sized)
                every_proposal(net, count)  # R-CNN, Fast R-CNN: at exactly this many proposals
                return net

            with torch.device("meta"):  # shapes only: no memory, no arithmetic
                model = build()
            params = f"{count_params(model)[0]:,}"  # for inference: no auxiliary heads
            try:
                macs = gmacs(count_macs_of(model, shape))
            except (NotImplementedError, RuntimeError):  # a detector: proposals kept by their scores,
                task = get_task(info.task)  # data-dependent shapes the meta device cannot run; on the CPU
                search = next((m for m in model.modules() if getattr(m, "fixed", None)), None)
                if search is None:
                    macs = count_macs(build, shape, task.cost_forward)
                else:  # R-CNN and Fast R-CNN cost the same per proposal: two counts give the line
                    one, two = (count_macs(lambda k=k: build(k), shape, task.cost_forward) for k in (1, 2))
                    macs = one + (search.fixed - 1) * (two - one)
                macs = gmacs(macs) + " *"
                starred = True
        rows.append(dict(zip(MODEL_COLUMNS, (name, info.task, info.family, str(info.year), info.paper,
                                             "x".join(map(str, shape)), str(n_classes), params, macs, str(min_px)))))
    columns = [Column(h, lambda r, h=h: r[h], h in ("year", "params", "GMACs", "min px"), name=h,
                      least=PAPER_WIDTH if h == "paper" else 0) for h in MODEL_COLUMNS]
    console = console or Console()
    width = console.width if console.is_terminal else None  # a pipe or a file: every column, whole
    at = "x".join(map(str, input_shape)) if input_shape else "each paper's input size"
    table, left_out = fit_table(columns, rows, width, MODEL_DROP_ORDER,
                                title=f"cnnbench models ({len(names)}), counted at {at}",
                                caption="GMACs: 10^9 multiply-accumulates per image, forward; FLOPs = 2 x MACs"
                                + ("\n* counted on the CPU in evaluation mode, on a seeded random image with the "
                                   "weights as initialised: Faster R-CNN's proposals, and so its MACs, depend on both; "
                                   "R-CNN and Fast R-CNN are counted at exactly their model.proposals (2,000) "
                                   "proposals, Selective Search having no MACs" if starred else ""))
    print_whole(table, console)
    if any(c.name == "paper" for c in left_out):  # each paper once, after the models from it
        papers: dict[str, list[str]] = {}
        for r in rows:
            papers.setdefault(r["paper"], []).append(r["name"])
        grid = Table.grid(padding=(0, 2), pad_edge=True)  # characters: an indent, and between the columns
        grid.add_column(overflow="fold", max_width=console.width // 3)
        grid.add_column(overflow="fold")
        for paper, models in papers.items():
            grid.add_row(Text(", ".join(models)), Text(paper))
        console.print(Text("papers:"), grid)
        left_out = [c for c in left_out if c.name != "paper"]
    if left_out:
        console.print(Text(_left_out_note(left_out, width, "a wider terminal shows them")))
    return table


def external_model_table(name: str, options: dict, input_shape: tuple | None = None, classes: int | None = None,
                         console: Console | None = None) -> Table:
    """`cnnbench models --custom mynets.TinyNet` (or --torchvision / --timm ARCH): what the zoo's
    table says of a network from outside it, counted the same way on the meta device, and what the
    zoo's do not need: activation memory, the smallest input (found by trying) and where it came from."""
    import torch

    from cnnbench import measure
    from cnnbench.models import create_model, external, get_model_info

    info = get_model_info(name)
    shape = input_shape or (3, 224, 224)
    n_classes = classes or 1000
    min_px = info.min_input(in_channels=shape[0], **options)
    if shape[1] < min_px:
        raise CnnbenchError(f"The network needs at least {min_px} px; --input {'x'.join(map(str, shape))} is smaller. "
                            f"Give --input {shape[0]}x{min_px}x{min_px} or more.")

    def build():
        return external.materialize(create_model(name, num_classes=n_classes, in_channels=shape[0], **options), shape)

    with torch.device("meta"):  # shapes only
        model = build()
    params, trainable, param_bytes, _ = measure.count_params(model)
    source = external.source(name, options, n_classes, shape[0]) or {}
    origin = (f"{source.get('file')} (SHA-256 {str(source.get('sha256'))[:12]}…)" if name == "custom"
              else f"{source.get('library')} {source.get('version')}")
    passed = (f"; given {', '.join(source['passed'])}" if source.get("passed") else "") + \
        (f"; not given {', '.join(source['not_passed'])} (it takes none)" if source.get("not_passed") else "")
    rows = [("network", f"{options.get('target') or name + ':' + str(options.get('arch'))}{passed}"),
            ("input", "x".join(map(str, shape))), ("classes", str(n_classes)),
            ("parameters", f"{params:,} ({param_bytes / 2**20:,.2f} MiB; {trainable:,} trainable)"),
            ("GMACs per image", f"{gmacs(measure.count_macs(build, shape))} forward, "
                                f"{gmacs(measure.count_train_macs(build, shape))} forward + backward"),
            ("activations per image", f"{measure.activation_bytes(build, shape) / 2**20:,.2f} MiB kept for backward "
                                      f"(fp32)"),
            ("smallest input", f"{min_px} px (found by trying it on the meta device)")]
    table = Table(title=f"cnnbench models: {rows[0][1].split(';')[0]}", show_header=False)
    table.add_column(no_wrap=True)
    table.add_column(overflow="fold")
    for k, v in rows:
        table.add_row(k, v)
    console = console or Console()
    console.print(table)
    console.print(Text(f"from: {origin}"), soft_wrap=True)  # a path: whole, on a line of its own
    return table


def profile_tables(r: dict) -> None:
    """`cnnbench profile`: the cost summary, one row per batch size, and the per-layer table."""
    mib = 2**-20
    summary = Table(title=f"{r['model']} at {'x'.join(map(str, r['input_shape']))} on {r['device']}",
                    show_header=False)
    for k, v in [("parameters", f"{r['params']:,} ({r['param_bytes'] * mib:,.1f} MiB)"),
                 ("MACs / FLOPs per image, forward", f"{gmacs(r['macs'])} G / {gmacs(r['flops'])} G"),
                 ("MACs per image, forward + backward", f"{gmacs(r['train_macs'])} G"),
                 ("activations kept for backward", f"{r['activation_bytes'] * mib:,.2f} MiB per image"),
                 ("largest training batch", str(r["max_train_batch"] or "— (profile.find_max_batch, CUDA)"))]:
        summary.add_row(k, v)
    print_table(summary)
    speed = Table(title="speed (medians, warm-up excluded)")
    for h in ("batch", "latency ms", "inference img/s", "train step ms", "train img/s", "peak MiB"):
        speed.add_column(h, justify="right")
    for b in r["batches"]:
        speed.add_row(str(b["batch_size"]), _fmt(b["latency_ms"], ",.2f"), _fmt(b["infer_images_per_s"], ",.0f"),
                      _fmt(b["train_step_ms"], ",.2f"), _fmt(b["train_images_per_s"], ",.0f"),
                      _fmt(b["peak_memory_bytes"], ",.0f", mib))
    print_table(speed)
    if r["layers"]:
        layers = Table(title="layers (one image, evaluation mode)")
        for h in ("name", "type", "output", "params", "MACs", "output KiB"):
            layers.add_column(h, justify="right" if h in ("params", "MACs", "output KiB") else "left")
        for row in r["layers"]:
            layers.add_row(row["name"], row["type"], "x".join(map(str, row["output_shape"])), f"{row['params']:,}",
                           f"{row['macs']:,}", f"{row['activation_bytes'] / 1024:,.1f}")
        print_table(layers)
