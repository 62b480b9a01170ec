"""Comparison tables: every results.json below some folders, as one terminal table, a CSV and a
Markdown file.

    cnnbench compare                      # every run below outputs/
    cnnbench compare outputs/2024-05-01 multirun/ --out reports/

`load_rows` turns the files into rows of raw numbers (one place to extend with filters or seed
grouping); the `to_*` functions only format them.
"""

import csv
import io
import json
import math
import sys
from pathlib import Path
from typing import Any, Callable

from rich.console import Console
from rich.table import Table
from rich.text import Text

from cnnbench.errors import CnnbenchError
from cnnbench.track import RESULTS_FORMAT, RESULTS_FORMAT_VERSION, atomic_write_text

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


# -----------------------------------------------------------------------------
# Finding and loading results

def find_results(paths: list[str]) -> list[Path]:
    """Every results.json at or below the given paths, sorted within each path, no duplicates."""
    found: dict[Path, None] = {}  # an ordered set, keyed by resolved path
    for p in map(Path, paths):
        if not p.exists():
            raise CnnbenchError(
                f"'{p}' does not exist. Point `cnnbench compare` at a folder that holds your "
                f"runs (Hydra writes them below outputs/ by default) or at a results.json file, "
                f"or run `cnnbench train` first.")
        files = [p] if p.is_file() else sorted(p.rglob("results.json"))
        for f in files:
            found.setdefault(f.resolve(), None)
    return list(found)


def _read_result(path: Path) -> tuple[dict | None, str]:
    """(the parsed results.json, "") or (None, why it cannot be compared)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # ValueError covers bad JSON and bad UTF-8
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


def load_rows(paths: list[str]) -> list[dict[str, Any]]:
    """One row of raw values (keys: CSV_COLUMNS) per usable results.json below paths.

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


def sort_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best top-1 error first; runs without one (failed early) last; ties by run name."""
    def key(r):
        has_err = _is_number(r["top1_err"])
        return (not has_err, r["top1_err"] if has_err else 0.0, r["run"])
    return sorted(rows, key=key)


# -----------------------------------------------------------------------------
# Formatting

NULL = "—"  # shown for a missing value (null in results.json)


def _fmt(value: Any, spec: str, scale: float = 1.0) -> str:
    """value * scale formatted with spec, NULL for null, as-is for anything not numeric."""
    if value is None:
        return NULL
    if not _is_number(value):
        return str(value)
    return format(value * scale if scale != 1 else value, spec)  # keep ints ints


def gmacs(macs) -> str:
    """10^9 MACs, 3 decimals; small networks (LeNet-5: 0.00042) keep 2 significant digits."""
    if not _is_number(macs):
        return NULL
    return f"{macs / 1e9:.3f}" if macs >= 1e7 else f"{macs / 1e9:.2g}"


def _peak_mem(r: dict[str, Any]) -> str:
    # CUDA max-allocated counts tensors only; process RSS counts the whole Python process, so a
    # CPU run's figure is not comparable with a GPU run's: mark it.
    text = _fmt(r["peak_memory_bytes"], ",.1f", 2**-20)
    return text + " RSS" if r["peak_memory_kind"] == "process_peak_rss" and text != NULL else text


# (header, formatter, right-aligned): one entry per column of the terminal and Markdown tables.
DISPLAY_COLUMNS: list[tuple[str, Callable[[dict[str, Any]], str], bool]] = [
    ("run", lambda r: _fmt(r["run"], ""), False),
    ("model", lambda r: _fmt(r["model"], ""), False),
    ("dataset", lambda r: _fmt(r["dataset"], ""), False),
    ("optimizer", lambda r: _fmt(r["optimizer"], ""), False),
    ("seed", lambda r: _fmt(r["seed"], ""), True),
    ("params", lambda r: _fmt(r["params"], ","), True),
    ("GMACs", lambda r: gmacs(r["macs"]), True),  # 10^9 MACs per image, forward
    ("act MB/img", lambda r: _fmt(r["activation_bytes"], ",.2f", 2**-20), True),  # MB = 2^20 B
    ("peak mem MB", _peak_mem, True),
    ("img/s", lambda r: _fmt(r["train_images_per_s"], ",.0f"), True),  # training throughput
    ("top-1 err %", lambda r: _fmt(r["top1_err"], ".2f", 100), True),  # fraction -> percent
    ("top-5 err %", lambda r: _fmt(r["top5_err"], ".2f", 100), True),
    ("epochs", lambda r: _fmt(r["epochs"], ""), True),
    ("status", lambda r: _fmt(r["status"], ""), False),
]

CAPTION = ("errors on the validation set after the last epoch; GMACs per image, forward; "
           "MB = 2^20 bytes; RSS = process peak memory (CPU runs)")

_STATUS_STYLE = {"failed": "red", "interrupted": "yellow", "running": "dim"}


def to_table(rows: list[dict[str, Any]]) -> Table:
    """A rich Table of the rows, formatted for people."""
    table = Table(title=f"cnnbench compare: {len(rows)} run(s)", caption=CAPTION)
    for header, _, right in DISPLAY_COLUMNS:
        # No wrapping: on a narrow screen rich shortens every column evenly (with "…"), which
        # reads better than names folded into slivers.
        table.add_column(header, justify="right" if right else "left", no_wrap=True)
    for r in rows:
        # Text, not str: a run folder named "[red]" must print as is, not as rich markup.
        cells = [Text(fmt(r)) for _, fmt, _ in DISPLAY_COLUMNS]
        table.add_row(*cells, style=_STATUS_STYLE.get(r["status"]))
    return table


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """A Markdown table of the rows, formatted for people, with the units underneath."""
    def line(cells):
        return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"
    lines = [line([h for h, _, _ in DISPLAY_COLUMNS]),
             "|" + "|".join("---:" if right else "---" for _, _, right in DISPLAY_COLUMNS) + "|"]
    lines += [line([fmt(r) for _, fmt, _ in DISPLAY_COLUMNS]) for r in rows]
    return "\n".join(lines) + f"\n\n{CAPTION}.\n"


def to_csv(rows: list[dict[str, Any]]) -> str:
    """The rows as CSV with raw values (errors as fractions, bytes, MACs); null -> empty cell."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buf.getvalue()


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
        raise CnnbenchError(f"--out '{d}' is a file; give a folder for comparison.csv and .md.")
    d.mkdir(parents=True, exist_ok=True)
    return d


def print_table(table: Table) -> None:
    """Print to the terminal; to a pipe or a file at full width, since there is no screen to fit."""
    console = Console()
    if not console.is_terminal:
        unbounded = console.options.update_width(10_000)  # characters
        console.width = max(console.width, console.measure(table, options=unbounded).maximum)
    console.print(table)


def compare_main(paths: list[str], out: str | None) -> int:
    """`cnnbench compare [PATH ...] [--out DIR]`: compare every run below PATHs (default outputs/).

    Prints one table sorted by top-1 error and writes comparison.csv (raw numbers) and
    comparison.md (formatted) into DIR (default: the first PATH, or its folder if it is a file).
    Files that are not cnnbench results are skipped with a warning. Returns the exit code.
    """
    paths = list(paths) or DEFAULT_PATHS
    rows = sort_rows(load_rows(paths))
    out_dir = _out_dir(paths, out)
    print_table(to_table(rows))
    atomic_write_text(out_dir / "comparison.csv", to_csv(rows))
    atomic_write_text(out_dir / "comparison.md", to_markdown(rows))
    print(f"wrote {out_dir / 'comparison.csv'} and {out_dir / 'comparison.md'}")
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
            fits = f"{min_px}" if info.max_size == min_px else f"{min_px}-{info.max_size}" if info.max_size else f"{min_px}+"
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
