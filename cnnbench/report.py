"""Comparison tables and the report: every results.json below some folders, as one terminal table,
a CSV, a Markdown table, and a report (Markdown and self-contained HTML) with plots.

    cnnbench compare                      # every run below outputs/
    cnnbench compare outputs/2024-05-01 multirun/ --out reports/
    cnnbench compare outputs/sweeps/x --filter 'model=resnet*' --columns run,top1_err,params --sort params

`load_rows` turns the files into rows of raw numbers; `filter_rows`, `group_rows` (seeds averaged,
the latest run of each seed) and `sort_rows` select and order them; the `to_*` and `*_figure`
functions only present them.
"""

import base64
import csv
import difflib
import fnmatch
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
from typing import Any, NamedTuple

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cnnbench.errors import CnnbenchError
from cnnbench.track import (RESULTS_FORMAT, RESULTS_FORMAT_VERSION, atomic_write_bytes, atomic_write_text,
                            bookkeeping_keys, with_added_settings)

DEFAULT_PATHS = ["outputs"]  # where Hydra puts runs unless told otherwise

# CSV columns, in order: raw values from results.json (units as written there: counts, MACs per
# image, bytes, images/s, errors as fractions 0-1), plus `run`, `gmacs` and `path`.
CSV_COLUMNS = (
    "run", "model", "dataset", "optimizer", "seed", "status", "epochs",
    "params", "trainable_params", "macs", "gmacs", "flops",
    "activation_bytes", "param_bytes", "peak_memory_bytes", "peak_memory_kind",
    "train_images_per_s", "top1_err", "top5_err", "loss", "best_top1_err", "best_epoch",
    "wall_time_s", "error", "path",
)

# Columns that vary from seed to seed: a group of seeds always shows them as mean ± std.
MEASURED = ("peak_memory_bytes", "train_images_per_s", "top1_err", "top5_err", "loss",
            "best_top1_err", "best_epoch", "wall_time_s")

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
    from datetime import datetime

    try:
        return datetime.fromisoformat(data["written_at"]).timestamp()
    except (KeyError, TypeError, ValueError):
        return f.stat().st_mtime


def load_rows(paths: list[str]) -> list[dict[str, Any]]:
    """One row per usable results.json below paths: raw values (keys: CSV_COLUMNS) plus the run's
    `config` dict, per-epoch `history` list and `written` (seconds since the epoch; `written_at`, else
    the file's modification time): of two runs of one seed, the later written counts.

    Unusable files are skipped with a warning on stderr. Raises CnnbenchError when a path does
    not exist or nothing usable is found.
    """
    files = find_results(paths)
    first = Path(paths[0]).resolve()
    base = first if first.is_dir() else first.parent
    rows, skipped = [], 0
    for f in files:
        data, why = _read_result(f)
        if data is None:
            print(f"warning: skipping {f}: {why}", file=sys.stderr)
            skipped += 1
            continue
        row = {k: data.get(k) for k in CSV_COLUMNS}
        row["run"] = _run_name(f, base)
        row["gmacs"] = row["macs"] / 1e9 if _is_number(row["macs"]) else None
        row["path"] = str(f)
        row["config"] = data.get("config") if isinstance(data.get("config"), dict) else {}
        row["history"] = [h for h in data.get("history") or [] if isinstance(h, dict)]
        row["written"] = _written(data, f)
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

def value_of(row: dict[str, Any], name: str) -> Any:
    """A column's value, or a (dotted) key of the run's config, e.g. optimizer.lr; MISSING if the
    config lacks it."""
    if name in COLUMNS:
        return row.get(name)
    node: Any = row.get("config") or {}
    for part in name.split("."):
        if not isinstance(node, dict) or part not in node:
            return MISSING
        node = node[part]
    return node


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


def _config_keys(rows: list[dict[str, Any]]) -> list[str]:
    """Every dotted key that occurs in some run's config, leaves and sections."""
    keys: dict[str, None] = {}

    def walk(node: dict, prefix: str) -> None:
        for k, v in node.items():
            keys.setdefault(prefix + k, None)
            if isinstance(v, dict):
                walk(v, f"{prefix}{k}.")
    for r in rows:
        walk(r.get("config") or {}, "")
    return list(keys)


def check_name(name: str, rows: list[dict[str, Any]], option: str) -> None:
    """Raise CnnbenchError unless name is a column or a config key of some run."""
    if name in COLUMNS:
        return
    config_keys = _config_keys(rows)
    if name in config_keys:
        return
    guess = ([k for k in config_keys if k.endswith("." + name)]  # lr -> optimizer.lr
             or difflib.get_close_matches(name, [*COLUMNS, *config_keys], n=1))
    hint = f" Did you mean {guess[0]}?" if guess else ""
    leaves = [k for k in config_keys if "." in k][:4] or ["optimizer.lr"]
    raise CnnbenchError(
        f"{option}: unknown column {name!r}.{hint} Known columns: {', '.join(COLUMNS)}; or a "
        f"dotted key of the runs' config (the `config` in results.json), e.g. {', '.join(leaves)}.")


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
    for k in CSV_COLUMNS:
        values = [r[k] for r in runs if _is_number(r[k])]
        if k == "seed" or not values:
            continue
        same = all(v == values[0] for v in values)
        row[k] = values[0] if same else statistics.fmean(values)
        if len(values) > 1 and (k in MEASURED or not same):
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


def sort_rows(rows: list[dict[str, Any]], by: str = "top1_err", descending: bool = False) -> list[dict[str, Any]]:
    """Ordered by a column or config key (numbers before text); rows without a value last;
    ties by run name. The default: best top-1 error first."""
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


def _peak_mem(r: dict[str, Any]) -> str:
    # CUDA max-allocated counts tensors only; process RSS counts the whole Python process, so a
    # CPU run's figure is not comparable with a GPU run's: mark it.
    text = _number("peak_memory_bytes", ",.1f", 2**-20)(r)
    return text + " RSS" if r["peak_memory_kind"] == "process_peak_rss" and text != NULL else text


class Column(NamedTuple):
    header: str  # in the terminal, Markdown and HTML tables
    cell: Callable[[dict[str, Any]], str]  # a row -> its text
    right: bool  # right-aligned (numbers)


def _text(key: str) -> Column:
    return Column(key, lambda r: _fmt(r.get(key), ""), False)


# Every column by name (the names --columns, --filter and --sort take); units in the headers:
# percent for errors (fractions in results.json), MB = 2^20 bytes, GMACs = 10^9 MACs per image.
COLUMNS: dict[str, Column] = {
    "run": _text("run"),
    "model": _text("model"),
    "dataset": _text("dataset"),
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
    "top1_err": Column("top-1 err %", _number("top1_err", ".2f", 100), True),  # last epoch
    "top5_err": Column("top-5 err %", _number("top5_err", ".2f", 100), True),
    "loss": Column("loss", _number("loss", ".4f"), True),  # validation, last epoch
    "best_top1_err": Column("best top-1 err %", _number("best_top1_err", ".2f", 100), True),
    "best_epoch": Column("best epoch", _number("best_epoch", ".3g"), True),
    "wall_time_s": Column("wall s", _number("wall_time_s", ",.1f"), True),
    "error": _text("error"),
    "path": _text("path"),
}

DEFAULT_COLUMNS = ("run", "model", "dataset", "optimizer", "seed", "n_seeds", "params", "gmacs",
                   "activation_bytes", "peak_memory_bytes", "train_images_per_s", "top1_err",
                   "top5_err", "epochs", "status")


def _config_column(key: str, rows: list[dict[str, Any]]) -> Column:
    right = any(_is_number(value_of(r, key)) for r in rows)
    return Column(key, lambda r: NULL if value_of(r, key) in (None, MISSING) else raw_text(value_of(r, key)),
                  right)


def resolve_columns(names: list[str] | None, rows: list[dict[str, Any]]) -> list[Column]:
    """Columns by name (COLUMNS or dotted config keys); None: DEFAULT_COLUMNS."""
    names = list(DEFAULT_COLUMNS) if names is None else names
    if not names:
        raise CnnbenchError("--columns is empty. Name the columns, comma-separated, e.g. "
                            f"--columns run,model,top1_err,params. Known columns: {', '.join(COLUMNS)}.")
    for name in names:
        check_name(name, rows, "--columns")
    return [COLUMNS.get(name) or _config_column(name, rows) for name in names]


CAPTION = ("errors on the validation set after the last epoch; GMACs per image, forward; "
           "MB = 2^20 bytes; RSS = process peak memory (CPU runs); a ± b: mean ± sample "
           "standard deviation over n seeds")

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


def to_table(rows: list[dict[str, Any]], columns: list[Column] | None = None) -> Table:
    """A rich Table of the rows, formatted for people."""
    columns = columns or resolve_columns(None, rows)
    note = repeats_note(rows)
    table = Table(title=f"cnnbench compare: {_n_runs(rows)} run(s){_grouping(rows)}",
                  caption=Text(CAPTION + (f"\n{note}." if note else "")))  # Text: run names are not markup
    for c in columns:
        # No wrapping: on a narrow screen rich shortens every column evenly (with "…"), which
        # reads better than names folded into slivers.
        table.add_column(c.header, justify="right" if c.right else "left", no_wrap=True)
    for r in rows:
        # Text, not str: a run folder named "[red]" must print as is, not as rich markup.
        table.add_row(*[Text(c.cell(r)) for c in columns], style=_STATUS_STYLE.get(r["status"]))
    return table


def _md_line(cells: list[str]) -> str:
    return "| " + " | ".join(c.replace("|", "\\|").replace("\n", " ") for c in cells) + " |"


def to_markdown(rows: list[dict[str, Any]], columns: list[Column] | None = None) -> str:
    """A Markdown table of the rows, formatted for people, with the units underneath."""
    columns = columns or resolve_columns(None, rows)
    lines = [_md_line([c.header for c in columns]),
             "|" + "|".join("---:" if c.right else "---" for c in columns) + "|"]
    lines += [_md_line([c.cell(r) for c in columns]) for r in rows]
    note = repeats_note(rows)
    return "\n".join(lines) + f"\n\n{CAPTION}.\n" + (f"\n{note}.\n" if note else "")


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV with raw values (errors as fractions, bytes, MACs); null -> empty cell."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n", extrasaction="ignore")
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
    # pile the small ones into one corner. Ticks at 1, 2, 5 x 10^k, written as plain numbers.
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    if values and min(values) > 0 and max(values) / min(values) > 10:
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}" if v >= 1000 else f"{v:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())


def _scatter(ax, points, x_key: str, sizes: list[float]) -> None:
    """Markers (gid "runs", one per row), ± std bars for groups of seeds, and run-name labels."""
    xs = [r[x_key] for _, r in points]
    ys = [100 * r["top1_err"] for _, r in points]
    ax.scatter(xs, ys, s=sizes, c=[_colour(i) for i, _ in points], alpha=0.55, edgecolors="black",
               linewidths=0.6, gid="runs", zorder=3)
    for (i, r), x, y, area in zip(points, xs, ys, sizes):
        std = r.get("std", {})
        if "top1_err" in std or x_key in std:
            ax.errorbar(x, y, yerr=100 * std.get("top1_err", 0.0), xerr=std.get(x_key, 0.0),
                        fmt="none", ecolor=_colour(i), capsize=3, zorder=2)
        off = 0.7 * math.sqrt(area) / 2 + 3  # points: beside the bubble's edge, not on it
        ax.annotate(r["run"], (x, y), xytext=(off, off), textcoords="offset points", fontsize=8)
    _log_x_if_wide(ax, xs)
    ax.margins(0.1)  # room for the largest bubbles and their labels
    ax.grid(True, which="both", alpha=0.3)
    ax.set_ylabel("top-1 error % (validation, last epoch)")


def _nothing_to_plot(ax, what: str) -> None:
    ax.text(0.5, 0.5, f"no run to plot: none has {what}", ha="center", va="center",
            transform=ax.transAxes)


def _count(n: float) -> str:
    for unit, size in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if n >= size:
            return f"{n / size:.3g}{unit}"
    return f"{n:g}"


def bubble_figure(rows: list[dict[str, Any]]):
    """Top-1 error against GMACs per image, bubble area proportional to parameters: the
    accuracy-vs-operations chart of Canziani et al. 2016 (arXiv:1605.07678, Fig. 2), with error
    in place of accuracy. Returns a matplotlib Figure; one bubble per row, failed runs left out."""
    from matplotlib.lines import Line2D

    fig = _new_figure()
    ax = fig.add_subplot()
    points, _ = _plottable(rows, ("gmacs", "top1_err", "params"))
    if points:
        largest = max(r["params"] for _, r in points)
        area = [max(BUBBLE_AREA * r["params"] / largest, MIN_BUBBLE_AREA) for _, r in points]
        _scatter(ax, points, "gmacs", area)
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
        _nothing_to_plot(ax, "GMACs, parameters and a top-1 error")
    ax.set_xlabel("GMACs per image (10⁹ multiply-accumulates, forward pass)")
    ax.set_title("Top-1 error against operations (bubble area ∝ parameters)")
    return fig


def throughput_figure(rows: list[dict[str, Any]]):
    """Top-1 error against training images/s (median over epochs). Returns a matplotlib Figure;
    one point per row, failed runs left out."""
    fig = _new_figure()
    ax = fig.add_subplot()
    points, _ = _plottable(rows, ("train_images_per_s", "top1_err"))
    if points:
        _scatter(ax, points, "train_images_per_s", [60.0] * len(points))
    else:
        _nothing_to_plot(ax, "a training speed and a top-1 error")
    ax.set_xlabel("training images/s (median over epochs; on each run's own device)")
    ax.set_title("Top-1 error against training throughput")
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


def curves_figure(rows: list[dict[str, Any]]):
    """Training and validation top-1 error per epoch, one line per row (seeds: mean, band ± std),
    as in the degradation plots of He et al. 2016 (Fig. 1). Returns a matplotlib Figure."""
    from matplotlib.ticker import MaxNLocator

    fig = _new_figure(11.0, 5.0)
    axes = fig.subplots(1, 2, sharey=True)
    drawn = 0
    for i, r in enumerate(rows):
        if r["status"] == "failed":
            continue
        for ax, key in zip(axes, ("train_top1_err", "val_top1_err")):
            epochs, mean, std = _curve(r.get("runs", [r]), key)
            if not epochs:
                continue
            ax.plot(epochs, mean, marker="o", markersize=3, color=_colour(i), gid=r["run"], label=r["run"])
            if any(std):
                ax.fill_between(epochs, [m - s for m, s in zip(mean, std)], [m + s for m, s in zip(mean, std)],
                                color=_colour(i), alpha=0.2, linewidth=0)
            drawn += 1
    for ax, title in zip(axes, ("training set (during each epoch)", "validation set (after each evaluated epoch)")):
        ax.set_title(title, fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # no epoch 1.5
        ax.grid(True, alpha=0.3)
    axes[0].set_ylabel("top-1 error %")
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
    fig.suptitle("Top-1 error per epoch")
    return fig


def png_bytes(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    return buf.getvalue()


# -----------------------------------------------------------------------------
# The report: the table, the plots and the runs that did not complete, as Markdown and as one
# self-contained HTML file (images inline as base64)

PLOTS = (  # (file name, title, figure function, values a point needs)
    ("top1_vs_gmacs.png", "Top-1 error against operations", bubble_figure, ("gmacs", "top1_err", "params")),
    ("top1_vs_images_per_s.png", "Top-1 error against training throughput", throughput_figure,
     ("train_images_per_s", "top1_err")),
    ("error_curves.png", "Training and validation error per epoch", curves_figure, ()),
)


def _selection_note(paths: list[str], filters: dict[str, list[str]], sort: str, descending: bool,
                    rows: list[dict[str, Any]]) -> str:
    text = f"{_n_runs(rows)} run(s) below {', '.join(paths)}{_grouping(rows)}"
    if filters:
        text += "; filtered by " + ", ".join(f"{k}={'|'.join(p)}" for k, p in filters.items())
    return text + f"; sorted by {sort}{' (descending)' if descending else ''}."


def _not_completed(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Every run that did not complete, earlier runs of a seed included: the list is of runs."""
    return [run for r in rows for run in [*r.get("runs", [r]), *r.get("repeats", ())] if run["status"] != "completed"]


def _left_out(rows: list[dict[str, Any]], keys: tuple[str, ...]) -> str:
    """'Not plotted: run (why), ...' for one plot, or ''."""
    runs = (_plottable(rows, keys)[1] if keys else
            [f"{r['run']} (failed)" for r in rows if r["status"] == "failed"])
    return f"Not plotted: {', '.join(runs)}." if runs else ""


def to_report_markdown(rows, columns, note: str, images: dict[str, bytes]) -> str:
    """report.md: the table, the plots (PNG files beside it) and the runs that did not complete."""
    parts = [f"# cnnbench report\n\n{note}\n\n", to_markdown(rows, columns)]
    for name, title, _, keys in PLOTS:
        parts.append(f"\n## {title}\n\n![{title}]({name})\n")
        if name in images and _left_out(rows, keys):
            parts.append(f"\n{_left_out(rows, keys)}\n")
    bad = _not_completed(rows)
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


def to_report_html(rows, columns, note: str, images: dict[str, bytes]) -> str:
    """report.html: as report.md, in one file, the plots inline."""
    head = (f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>cnnbench report</title>"
            f"<style>{_HTML_STYLE}</style></head><body>\n<h1>cnnbench report</h1>\n<p>{html.escape(note)}</p>\n")
    parts = [head,
             _html_table([c.header for c in columns],
                         [(r["status"] or "", [(c.cell(r), c.right) for c in columns]) for r in rows]),
             f"<p><small>{html.escape(CAPTION)}.</small></p>\n"]
    if repeats_note(rows):
        parts.append(f"<p>{html.escape(repeats_note(rows))}.</p>\n")
    for name, title, _, keys in PLOTS:
        if name in images:
            data = base64.b64encode(images[name]).decode("ascii")
            parts.append(f"<h2>{html.escape(title)}</h2>\n<img alt='{html.escape(title)}' "
                         f"src='data:image/png;base64,{data}'>\n<p>{html.escape(_left_out(rows, keys))}</p>\n")
    bad = _not_completed(rows)
    if bad:
        parts.append("<h2>Runs that did not complete</h2>\n" + _html_table(
            ["run", "status", "error"],
            [(r["status"] or "", [(r["run"], False), (_fmt(r["status"], ""), False), (_fmt(r["error"], ""), False)])
             for r in bad]))
    parts.append(f"<p><small>written by cnnbench compare, {datetime.now():%Y-%m-%d %H:%M}</small></p>\n"
                 "</body></html>\n")
    return "".join(parts)


def render_plots(rows: list[dict[str, Any]]) -> dict[str, bytes]:
    """{file name: PNG} for every plot of the report."""
    return {name: png_bytes(figure(rows)) for name, _, figure, _ in PLOTS}


def write_report(out_dir: Path, rows, columns, note: str) -> list[Path]:
    """report.md, report.html and the PNGs into out_dir; returns the paths written."""
    images = render_plots(rows)
    for name, data in images.items():
        atomic_write_bytes(out_dir / name, data)
    atomic_write_text(out_dir / "report.md", to_report_markdown(rows, columns, note, images))
    atomic_write_text(out_dir / "report.html", to_report_html(rows, columns, note, images))
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
                 filters: list[str] = (), sort: str = "top1_err", descending: bool = False,
                 group_seeds: bool = True) -> int:
    """`cnnbench compare [PATH ...] [--out DIR] [--columns A,B] [--filter KEY=PATTERN]
    [--sort COLUMN [--desc]] [--no-group]`: compare every run below PATHs (default outputs/).

    Keeps the runs matching every filter (shell-style patterns; a key given twice matches either),
    averages runs that differ only in seed (mean ± sample std over n distinct seeds; of a seed run
    more than once, the run whose results.json was written last counts), prints one table sorted
    by SORT (default top-1 error, best first) and writes into DIR (default: the first PATH, or its
    folder if it is a file): comparison.csv (raw numbers, one row per run), comparison.md, and
    report.md / report.html with plots (PNGs beside them). Files that are not cnnbench results
    are skipped with a warning. Returns the exit code.
    """
    paths = list(paths) or DEFAULT_PATHS
    if any(not str(p).strip() for p in paths) or (out is not None and not out.strip()):
        raise CnnbenchError("An empty path was given to `cnnbench compare` (e.g. an unset shell "
                            "variable). Name the folders that hold your runs, and a folder for --out.")
    runs = load_rows(paths)
    selected = parse_filters(list(filters), runs)
    chosen = resolve_columns(columns, runs)
    check_name(sort, runs, "--sort")
    kept = filter_rows(runs, selected)
    if not kept:
        seen = {k: sorted({raw_text(value_of(r, k)) for r in runs}) for k in selected}
        raise CnnbenchError(
            f"No run matches the filters ({len(runs)} run(s) found). Values present: "
            + "; ".join(f"{k}: {', '.join(v[:12]) or '(empty)'}{' …' if len(v) > 12 else ''}" for k, v in seen.items())
            + ". Patterns are shell-style and case-sensitive; quote them so the shell leaves * alone.")
    rows = sort_rows(group_rows(kept, seeds=group_seeds), sort, descending)
    try:
        out_dir = _out_dir(paths, out)
    except OSError as e:  # cannot create it: read-only, or a file on its path
        raise _unwritable(e, out or paths[0]) from None
    print_table(to_table(rows, chosen))
    try:
        atomic_write_text(out_dir / "comparison.csv", to_csv(sort_rows(kept, sort, descending)))
        atomic_write_text(out_dir / "comparison.md", to_markdown(rows, chosen))
        report = write_report(out_dir, rows, chosen, _selection_note(paths, selected, sort, descending, rows))
    except OSError as e:  # full, read-only, or a folder where a file goes
        raise _unwritable(e, out_dir) from None
    print(f"wrote {out_dir / 'comparison.csv'}, {out_dir / 'comparison.md'} and "
          f"{report[0]} (also {', '.join(p.name for p in report[1:])})")
    return 0


# -----------------------------------------------------------------------------
# The model zoo

def models_table(pattern: str = "*", input_shape: tuple | None = None, classes: int | None = None) -> Table:
    """`cnnbench models`: every registered architecture with its parameters and GMACs, counted on
    the meta device (shapes only, no arithmetic), at each paper's input or at input_shape."""
    import torch

    from cnnbench.measure import count_macs_of, count_params
    from cnnbench.models import create_model, get_model_info, list_models

    names = list_models(pattern)
    if not names:
        raise CnnbenchError(f"No model matches {pattern!r}. Known models: {', '.join(list_models())}.")
    at = "x".join(map(str, input_shape)) if input_shape else "each paper's input size"
    table = Table(title=f"cnnbench models ({len(names)}), counted at {at}",
                  caption="GMACs: 10^9 multiply-accumulates per image, forward; FLOPs = 2 x MACs")
    for header in ("name", "family", "year", "paper", "input", "classes", "params", "GMACs", "min px"):
        table.add_column(header, justify="right" if header in ("params", "GMACs", "min px", "year") else "left")
    for name in names:
        info = get_model_info(name)
        shape = input_shape or info.default_input
        n_classes = classes or info.default_classes
        min_px = info.min_input()

        if not min_px <= shape[1] <= (info.max_size or shape[1]):
            fits = (f"{min_px}" if info.max_size == min_px
                    else f"{min_px}-{info.max_size}" if info.max_size else f"{min_px}+")
            params, macs = "—", f"needs {fits} px"
        else:
            with torch.device("meta"):  # shapes only: no memory, no arithmetic
                model = create_model(name, num_classes=n_classes, in_channels=shape[0])
            params = f"{count_params(model)[0]:,}"  # for inference: no auxiliary heads
            macs = gmacs(count_macs_of(model, shape))
        table.add_row(name, info.family, str(info.year), Text(info.paper), "x".join(map(str, shape)),
                      str(n_classes), params, macs, str(min_px))
    print_table(table)
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
