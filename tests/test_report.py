"""cnnbench compare: fake results.json files in tmp_path, no training."""

import csv
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import cnnbench

from cnnbench import report
from cnnbench.cli import compare_cli
from cnnbench.errors import CnnbenchError
from cnnbench.report import (
    bubble_figure,
    compare_main,
    curves_figure,
    group_rows,
    load_rows,
    sort_rows,
    throughput_figure,
)
from cnnbench.tasks.detection import DETECTION


@pytest.fixture(autouse=True)
def _no_rendering_unless_asked(request, monkeypatch):
    """Drawing the PNGs takes about a second per compare: tests that do not look at them get
    placeholder bytes; those that do ask for `real_plots`."""
    if "real_plots" not in request.fixturenames:
        monkeypatch.setattr(report, "render_plots", fake_plots)


def fake_plots(rows) -> dict[str, bytes]:
    """render_plots's file names, each task's, with placeholder bytes."""
    return {name: b"png" for task, _ in report.by_task(rows) for name, *_ in report.plots(task)}


@pytest.fixture
def real_plots():
    """Render the report's plots for real (see _no_rendering_unless_asked)."""


# What a run of each task records that the other's does not (fractions 0-1, as results.json has them).
FIGURES = {
    "classification": {"top1_err": 0.1234, "top5_err": 0.0012, "best_top1_err": 0.12},
    "segmentation": {"miou": 0.5, "pixel_acc": 0.9, "mean_class_acc": 0.6, "best_miou": 0.52,
                     "per_class_iou": {"background": 0.9, "shirt": 0.1}},
    "detection": {"map": 0.3, "map50": 0.5, "map75": 0.25, "mar100": 0.4, "best_map": 0.31,
                  "per_class_ap": {"shirt": 0.3}},
}
SCORES = {"classification": "top1_err", "segmentation": "miou", "detection": "map"}  # higher is better, but for errors


def make_result(task: str | None = None, **overrides) -> dict:
    """A valid results.json dict for a completed run; keyword arguments replace fields. task None:
    a classification run from before tasks (no "task" key); else that task's run, with its figures
    (FIGURES) and its "task" and "score"."""
    result = {
        "format": "cnnbench.results", "format_version": 1,
        "status": "completed", "error": None, "run_dir": "/somewhere/else",
        "model": "resnet18", "dataset": "cifar10", "optimizer": "sgd", "seed": 0,
        "params": 11173962, "trainable_params": 11173962,
        "macs": 556651520, "flops": 1113303040,
        "activation_bytes": 3 * 2**20, "param_bytes": 44695848,
        "peak_memory_bytes": 512 * 2**20, "peak_memory_kind": "cuda_max_memory_allocated",
        "train_images_per_s": 1234.5, "epochs": 2,
        "top1_err": 0.1234, "top5_err": 0.0012, "loss": 0.35,
        "best_top1_err": 0.12, "best_epoch": 2, "wall_time_s": 12.3,
        "history": [], "env": {}, "config": {},
    }
    if task is not None:
        for figures in FIGURES.values():
            for k in figures:
                result.pop(k, None)
        result.update(FIGURES[task], task=task,
                      score={"key": SCORES[task], "higher_is_better": not SCORES[task].endswith("_err")})
    result.update(overrides)
    return result


def write_run(root: Path, name: str, task: str | None = None, **overrides) -> Path:
    """Write root/name/results.json (make_result) and return the run folder."""
    run = root / name
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(make_result(task, **overrides)))
    return run


def read_csv(folder: Path) -> list[dict]:
    with open(folder / "comparison.csv", newline="") as f:
        return list(csv.DictReader(f))


def test_runs_sorted_by_top1_error_with_raw_numbers(tmp_path):
    write_run(tmp_path, "worse", model="lenet5", top1_err=0.30, params=61706)
    write_run(tmp_path, "better", model="resnet18", top1_err=0.05)

    assert compare_main([str(tmp_path)], None) == 0

    rows = read_csv(tmp_path)
    assert [r["run"] for r in rows] == ["better", "worse"]
    assert [r["model"] for r in rows] == ["resnet18", "lenet5"]
    assert rows[0]["top1_err"] == "0.05"  # a fraction, not a formatted percentage
    assert rows[1]["params"] == "61706"  # no thousands separator
    assert rows[0]["macs"] == "556651520"
    assert float(rows[0]["gmacs"]) == pytest.approx(0.55665152)


def test_markdown_and_csv_have_one_row_per_run(tmp_path):
    for i, err in enumerate([0.2, 0.1, 0.3]):
        write_run(tmp_path / "sweep", f"seed{i}", seed=i, top1_err=err)

    compare_main([str(tmp_path)], None)

    assert len(read_csv(tmp_path)) == 3
    md = (tmp_path / "comparison.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert len(table) == 2 + 3  # header, separator, one line per run
    assert "sweep/seed1" in table[2]  # best first, named relative to the given folder
    # Human formatting: percent with 2 decimals, GMACs with 3, thousands separators, MB = 2^20 B.
    assert "| 10.00 |" in table[2]
    assert "| 0.557 |" in table[2]
    assert "| 11,173,962 |" in table[2]
    assert "| 3.00 |" in table[2]
    assert "| 512.0 |" in table[2]


def test_corrupt_and_foreign_files_are_skipped_with_a_warning(tmp_path, capsys):
    write_run(tmp_path, "good")
    bad = tmp_path / "corrupt" / "results.json"
    bad.parent.mkdir()
    bad.write_text('{"format": "cnnbench.results", "format_version": 1, ')  # truncated write
    foreign = tmp_path / "foreign" / "results.json"
    foreign.parent.mkdir()
    foreign.write_text(json.dumps({"format": "othertool.results", "format_version": 1,
                                   "model": "resnet18", "top1_err": 0.01}))
    a_list = tmp_path / "list" / "results.json"
    a_list.parent.mkdir()
    a_list.write_text("[1, 2]")

    assert compare_main([str(tmp_path)], None) == 0

    warnings = capsys.readouterr().err.splitlines()  # one line per file, in path order
    assert len(warnings) == 3
    assert warnings[0].startswith(f"warning: skipping {bad.resolve()}: not readable JSON")
    assert warnings[1].startswith(f"warning: skipping {foreign.resolve()}: not a cnnbench")
    assert warnings[2].startswith(f"warning: skipping {a_list.resolve()}: not a cnnbench")
    assert [r["run"] for r in read_csv(tmp_path)] == ["good"]


def test_future_format_version_is_skipped(tmp_path, capsys):
    write_run(tmp_path, "today")
    write_run(tmp_path, "tomorrow", format_version=2)

    rows = load_rows([str(tmp_path)])

    assert [r["run"] for r in rows] == ["today"]
    err = capsys.readouterr().err
    assert "tomorrow" in err and "format_version 2" in err


def test_failed_run_with_null_metrics_comes_last(tmp_path):
    nulls = dict.fromkeys(["macs", "activation_bytes", "peak_memory_bytes", "train_images_per_s",
                           "top1_err", "top5_err", "loss", "best_top1_err", "best_epoch"])
    write_run(tmp_path, "a_failed", status="failed", error="CUDA out of memory", epochs=0, **nulls)
    write_run(tmp_path, "b_bad", top1_err=0.9)
    write_run(tmp_path, "c_good", top1_err=0.1)
    write_run(tmp_path, "d_stopped", status="interrupted", top1_err=0.5)

    compare_main([str(tmp_path)], None)

    rows = read_csv(tmp_path)
    assert [r["run"] for r in rows] == ["c_good", "d_stopped", "b_bad", "a_failed"]
    assert rows[-1]["status"] == "failed"
    assert rows[-1]["top1_err"] == ""  # null stays empty, not 0
    assert rows[-1]["error"] == "CUDA out of memory"
    last = (tmp_path / "comparison.md").read_text().splitlines()[5]
    assert last.startswith("| a_failed |") and "| failed |" in last and "| — |" in last


def test_no_results_names_the_path(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(CnnbenchError, match="cnnbench train") as e:
        compare_main([str(empty)], None)
    assert str(empty) in str(e.value)
    assert not (empty / "comparison.csv").exists()


def test_only_bad_files_is_an_error_too(tmp_path, capsys):
    write_run(tmp_path, "future", format_version=99)
    with pytest.raises(CnnbenchError, match="1 file"):
        compare_main([str(tmp_path)], None)
    assert "format_version 99" in capsys.readouterr().err


def test_nonexistent_path_is_an_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(CnnbenchError, match="does not exist") as e:
        compare_main([str(missing)], None)
    assert str(missing) in str(e.value)


def test_out_directory_is_honoured(tmp_path):
    runs = tmp_path / "runs"
    write_run(runs, "r1")
    out = tmp_path / "reports" / "today"  # does not exist yet

    compare_main([str(runs)], str(out))

    assert len(read_csv(out)) == 1
    assert (out / "comparison.md").exists()
    assert not (runs / "comparison.csv").exists()
    assert not list(out.glob(".*.tmp"))  # the atomic write left no temporary behind


def test_results_file_path_and_default_outputs_folder(tmp_path, monkeypatch):
    run = write_run(tmp_path / "outputs", "run1")
    monkeypatch.chdir(tmp_path)

    compare_main([str(run / "results.json")], None)  # a file: output goes beside it
    assert [r["run"] for r in read_csv(run)] == ["run1"]

    compare_main([], None)  # no path: outputs/
    assert [r["run"] for r in read_csv(tmp_path / "outputs")] == ["run1"]


def test_overlapping_paths_count_each_run_once(tmp_path):
    write_run(tmp_path, "r1")
    write_run(tmp_path, "r2", top1_err=0.5)
    other = write_run(tmp_path / "elsewhere", "r3", top1_err=0.9)

    rows = load_rows([str(tmp_path), str(tmp_path / "r1"), str(other)])

    assert sorted(r["run"] for r in rows) == ["elsewhere/r3", "r1", "r2"]


def test_terminal_table_shows_formatted_values(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("COLUMNS", "250")  # wide enough that rich does not wrap cells
    write_run(tmp_path, "[bold]odd", peak_memory_kind="process_peak_rss")

    compare_main([str(tmp_path)], None)

    out = capsys.readouterr().out
    assert "[bold]odd" in out  # printed as text, not taken for rich markup
    assert "11,173,962" in out and "12.34" in out and "1,234" in out
    assert "512.0 RSS" in out  # CPU peak memory is marked as not comparable with CUDA's


# -----------------------------------------------------------------------------
# The report: plots, seed groups, --filter / --columns / --sort

def history(train_errs: list[float], val_errs: list[float]) -> list[dict]:
    """Per-epoch rows as run.train writes them."""
    return [{"epoch": e, "train_loss": 1.0, "train_top1_err": t, "val_loss": 1.0, "val_top1_err": v,
             "val_top5_err": 0.01, "lr": 0.1, "seconds": 1.0, "images_per_s": 1000.0}
            for e, (t, v) in enumerate(zip(train_errs, val_errs), start=1)]


def config(model: str = "resnet20", seed: int = 0, lr: float = 0.1) -> dict:
    """The part of a resolved config that these tests vary."""
    return {"model": {"name": model, "norm": None}, "optimizer": {"name": "sgd", "lr": lr},
            "trainer": {"epochs": 2, "amp": "off"}, "seed": seed}


def write_zoo(root: Path) -> None:
    """Three completed networks whose GMACs span 1000x, and one failed run."""
    write_run(root, "lenet5", model="lenet5", params=61_706, macs=416_520, top1_err=0.30,
              train_images_per_s=50_000.0, config=config("lenet5"), history=history([0.5, 0.3], [0.45, 0.30]))
    write_run(root, "resnet20", model="resnet20", params=272_474, macs=41_000_000, top1_err=0.09,
              train_images_per_s=9_000.0, config=config("resnet20"), history=history([0.4, 0.05], [0.3, 0.09]))
    write_run(root, "vgg16", model="vgg16", params=14_700_000, macs=313_000_000, top1_err=0.07,
              train_images_per_s=2_000.0, config=config("vgg16"), history=history([0.3, 0.01], [0.2, 0.07]))
    # Failed in epoch 2, after epoch 1 was evaluated: it has numbers, but is no result.
    write_run(root, "broken", model="resnet110", status="failed", error="RuntimeError: CUDA out of memory",
              top1_err=0.5, config=config("resnet110"), history=history([0.6], [0.5]))


def bubbles(fig):
    """The one scatter of runs in a figure from report.py."""
    (collection,) = [c for ax in fig.axes for c in ax.collections if c.get_gid() == "runs"]
    return collection


def test_report_files_and_a_bubble_per_run(tmp_path, real_plots):
    write_zoo(tmp_path)

    assert compare_main([str(tmp_path)], None) == 0

    for name in ("report.md", "report.html", "top1_vs_gmacs.png", "top1_vs_images_per_s.png",
                 "error_curves.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    for png in ("top1_vs_gmacs.png", "top1_vs_images_per_s.png", "error_curves.png"):
        assert f"]({png})" in md  # linked beside it
    page = (tmp_path / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 3  # self-contained
    assert "<td>vgg16</td>" in page and "src='top1" not in page
    assert not list(tmp_path.glob(".*.tmp"))


def test_bubble_plot_one_bubble_per_run_area_by_parameters(tmp_path):
    write_zoo(tmp_path)
    rows = sort_rows(group_rows(load_rows([str(tmp_path)])))

    fig = bubble_figure(rows)

    points = bubbles(fig)
    ax = fig.axes[0]
    assert len(points.get_offsets()) == 3  # the failed run is not a point
    by_x = sorted(zip(points.get_offsets()[:, 0], points.get_sizes()))
    assert [x for x, _ in by_x] == pytest.approx([0.00041652, 0.041, 0.313])
    vgg, resnet = by_x[2][1], by_x[1][1]
    assert resnet / vgg == pytest.approx(272_474 / 14_700_000)  # area proportional to parameters
    assert {t.get_text() for t in ax.texts} == {"lenet5", "resnet20", "vgg16"}
    assert ax.get_xscale() == "log"  # 0.0004 to 0.3 GMACs
    assert "GMACs per image" in ax.get_xlabel() and "top-1 error %" in ax.get_ylabel()


def test_narrow_range_keeps_a_linear_axis_and_throughput_plot(tmp_path):
    write_run(tmp_path, "a", model="resnet20", macs=41_000_000, train_images_per_s=9_000.0, config=config("a"))
    write_run(tmp_path, "b", model="resnet32", macs=69_000_000, train_images_per_s=6_000.0, config=config("b"))
    rows = group_rows(load_rows([str(tmp_path)]))

    assert bubble_figure(rows).axes[0].get_xscale() == "linear"  # 1.7x: no log axis
    fig = throughput_figure(rows)
    assert sorted(bubbles(fig).get_offsets()[:, 0]) == [6_000.0, 9_000.0]
    assert fig.axes[0].get_xlabel().startswith("training images/s")


def test_error_curves_per_run_from_history(tmp_path):
    write_zoo(tmp_path)
    rows = sort_rows(group_rows(load_rows([str(tmp_path)])))

    fig = curves_figure(rows)

    train_ax, val_ax = fig.axes[:2]
    lines = {line.get_gid(): line for line in train_ax.get_lines()}
    assert set(lines) == {"lenet5", "resnet20", "vgg16"}  # not the failed run
    assert list(lines["resnet20"].get_xdata()) == [1, 2]
    assert list(lines["resnet20"].get_ydata()) == pytest.approx([40.0, 5.0])  # percent
    val = {line.get_gid(): line for line in val_ax.get_lines()}
    assert list(val["vgg16"].get_ydata()) == pytest.approx([20.0, 7.0])
    assert train_ax.get_ylabel() == "top-1 error %" and train_ax.get_xlabel() == "epoch"


def test_seeds_are_grouped_mean_std_and_count(tmp_path):
    for seed, err in enumerate([0.10, 0.12, 0.14]):
        write_run(tmp_path, f"lr=0.1,seed={seed}", seed=seed, top1_err=err, train_images_per_s=1000.0 + seed,
                  config=config(seed=seed), history=history([0.2 + seed / 10, 0.1], [0.3, err]))
    write_run(tmp_path, "lr=0.01,seed=0", top1_err=0.20, config=config(lr=0.01))  # another config
    write_run(tmp_path, "lr=0.1,seed=3", seed=3, status="failed", error="NaN loss", top1_err=None,
              config=config(seed=3))  # same config, but failed: not averaged in

    compare_main([str(tmp_path)], None)

    rows = sort_rows(group_rows(load_rows([str(tmp_path)])))
    assert [(r["run"], r["n_seeds"]) for r in rows] == [
        ("lr=0.1,seed=*", 3), ("lr=0.01,seed=0", 1), ("lr=0.1,seed=3", 1)]
    group = rows[0]
    assert group["top1_err"] == pytest.approx(0.12)
    assert group["std"]["top1_err"] == pytest.approx(0.02)  # sample standard deviation (n - 1)
    assert group["train_images_per_s"] == pytest.approx(1001.0)
    assert group["seed"] == "0, 1, 2" and group["params"] == 11173962  # equal values stay as they are
    assert rows[1]["std"] == {}

    table = [line for line in (tmp_path / "comparison.md").read_text().splitlines() if line.startswith("|")]
    assert table[0].startswith("| run | model | dataset | optimizer | seed | n seeds |")
    assert table[2].startswith("| lr=0.1,seed=* | resnet18 | cifar10 | sgd | 0, 1, 2 | 3 |")
    assert "| 12.00 ± 2.00 |" in table[2]
    assert len(table) == 2 + 3
    assert len(read_csv(tmp_path)) == 5  # the CSV keeps one row of raw numbers per run

    curve = {line.get_gid(): line for line in curves_figure(rows).axes[0].get_lines()}["lr=0.1,seed=*"]
    assert list(curve.get_ydata()) == pytest.approx([30.0, 10.0])  # epoch 1: mean of 20, 30, 40 %


def written_at(run: Path, seconds: float) -> None:
    """Set when run/results.json was last written (its modification time)."""
    os.utime(run / "results.json", (seconds, seconds))


def test_the_time_a_record_holds_beats_its_files_time(tmp_path):
    """cnnbench stamps each results.json with written_at; `cp -r` gives the copies new modification
    times, in whatever order it copied them, and the stamp still tells which run came last."""
    from cnnbench import track

    for name, err in (("first/seed=0", 0.04), ("second/seed=0", 0.05)):
        (tmp_path / name).mkdir(parents=True)
        track.write_results(tmp_path / name / "results.json", make_result(top1_err=err, config=config(seed=0)))
    written_at(tmp_path / "second/seed=0", 1_000)  # copied first: the older file
    written_at(tmp_path / "first/seed=0", 2_000)
    (row,) = group_rows(load_rows([str(tmp_path)]))
    assert (row["run"], row["top1_err"]) == ("second/seed=0", 0.05)


def test_a_seed_run_three_times_is_one_seed_its_latest_run(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # wide enough that rich does not wrap the title
    for name, err, when in (("a/seed=0", 0.043, 1_000), ("b/seed=0", 0.050, 3_000), ("[c]/seed=0", 0.047, 2_000)):
        written_at(write_run(tmp_path, name, top1_err=err, config=config(seed=0)), when)

    compare_main([str(tmp_path)], None)

    (row,) = group_rows(load_rows([str(tmp_path)]))
    assert row["n_seeds"] == 1 and row["seed"] == 0 and row["std"] == {}  # one seed: no spread to show
    assert (row["run"], row["top1_err"]) == ("b/seed=0", 0.050)  # written last, though not last by name
    assert [r["run"] for r in row["repeats"]] == ["a/seed=0", "[c]/seed=0"]
    md = (tmp_path / "comparison.md").read_text()
    table = md.split("\n\n")[0]
    assert "| b/seed=0 | resnet18 | cifar10 | sgd | 0 | 1 |" in table and "| 5.00 |" in table and "±" not in table
    note = "Left out, as earlier runs of a seed that was run again: a/seed=0, [c]/seed=0."
    assert note in md
    report_md = (tmp_path / "report.md").read_text()
    assert "3 run(s) below " in report_md and "in 1 row(s): 2 earlier run(s) of a seed left out;" in report_md
    assert note in report_md and "--no-group shows every run" in report_md
    assert note in (tmp_path / "report.html").read_text()
    out = " ".join(capsys.readouterr().out.split())
    assert "cnnbench compare: 3 run(s) in 1 row(s): 2 earlier run(s) of a seed left out" in out and note in out
    assert len(read_csv(tmp_path)) == 3  # the CSV keeps every run

    compare_cli([str(tmp_path), "--no-group"])
    md = (tmp_path / "comparison.md").read_text()
    assert all(f"| {name} |" in md for name in ("a/seed=0", "b/seed=0", "[c]/seed=0")) and "Left out" not in md


def test_a_repeated_seed_among_others_counts_once_in_mean_std_and_n(tmp_path, real_plots):
    old = write_run(tmp_path, "old/lr=0.1,seed=0", top1_err=0.10, config=config(seed=0),
                    history=history([0.2, 0.1], [0.2, 0.10]))
    new = write_run(tmp_path, "lr=0.1,seed=0", top1_err=0.30, config=config(seed=0),
                    history=history([0.4, 0.3], [0.4, 0.30]))
    one = write_run(tmp_path, "lr=0.1,seed=1", seed=1, top1_err=0.20, config=config(seed=1),
                    history=history([0.3, 0.2], [0.3, 0.20]))
    for run, when in ((old, 1_000), (new, 2_000), (one, 1_500)):
        written_at(run, when)

    (row,) = group_rows(load_rows([str(tmp_path)]))

    assert (row["run"], row["seed"], row["n_seeds"]) == ("lr=0.1,seed=*", "0, 1", 2)
    assert row["top1_err"] == pytest.approx(0.25)  # 0.30 and 0.20: the earlier 0.10 is left out
    assert row["std"]["top1_err"] == pytest.approx(statistics.stdev([0.30, 0.20]))
    assert [r["run"] for r in row["repeats"]] == ["old/lr=0.1,seed=0"]
    val = {line.get_gid(): line for line in curves_figure([row]).axes[1].get_lines()}["lr=0.1,seed=*"]
    assert list(val.get_ydata()) == pytest.approx([35.0, 25.0])
    bars = [seg[:, 1] for c in bubble_figure([row]).axes[0].collections if c.get_gid() != "runs"
            for seg in c.get_segments() if seg[0, 1] != seg[1, 1]]  # the vertical error bar
    assert [sorted(b) for b in bars] == [pytest.approx([25.0 - 100 * row["std"]["top1_err"],
                                                        25.0 + 100 * row["std"]["top1_err"]])]


def test_every_failed_run_of_a_seed_is_listed(tmp_path):
    for name, when in (("try1", 1_000), ("try2", 2_000)):
        written_at(write_run(tmp_path, name, status="failed", error=f"{name} ran out of memory", top1_err=None,
                             config=config(seed=0)), when)

    compare_main([str(tmp_path)], None)

    md = (tmp_path / "report.md").read_text()
    table = [line for line in md.split("## ")[0].splitlines() if line.startswith("|")]
    assert len(table) == 2 + 1 and table[2].startswith("| try2 |")  # one row: the latest
    assert "| try1 | failed | try1 ran out of memory |" in md and "| try2 | failed | try2 ran out of memory |" in md


def test_no_group_and_runs_without_config_stay_apart(tmp_path):
    for seed in range(2):
        write_run(tmp_path, f"cfg{seed}", seed=seed, config=config(seed=seed))
        write_run(tmp_path, f"old{seed}", seed=seed)  # no config recorded: cannot be matched

    assert [r["n_seeds"] for r in group_rows(load_rows([str(tmp_path)]))] == [2, 1, 1]
    compare_cli([str(tmp_path), "--no-group"])
    md = (tmp_path / "comparison.md").read_text()
    assert "| cfg0 |" in md and "| cfg1 |" in md and "±" not in md.split("\n\n")[0]


def test_filter_columns_and_sort(tmp_path):
    write_run(tmp_path, "r18", model="resnet18", params=11_000_000, top1_err=0.10, config=config("resnet18"))
    write_run(tmp_path, "r50", model="resnet50", params=25_000_000, top1_err=0.08,
              config=config("resnet50", lr=0.05))
    write_run(tmp_path, "vgg", model="vgg16", params=138_000_000, top1_err=0.09, config=config("vgg16"))
    write_run(tmp_path, "lenet", model="lenet5", params=61_706, top1_err=0.30, config=config("lenet5"))

    def table():
        md = (tmp_path / "comparison.md").read_text()
        return [line for line in md.splitlines() if line.startswith("|")]

    compare_cli([str(tmp_path), "--filter", "model=resnet*", "--columns", "run, params,optimizer.lr"])
    assert table()[0] == "| run | params | optimizer.lr |"
    assert table()[2:] == ["| r50 | 25,000,000 | 0.05 |", "| r18 | 11,000,000 | 0.1 |"]  # best first
    assert [r["run"] for r in read_csv(tmp_path)] == ["r50", "r18"]  # the CSV is filtered too
    assert "filtered by model=resnet*" in (tmp_path / "report.md").read_text()

    # Two patterns for one key: either; different keys: both. Config keys filter like columns.
    compare_cli([str(tmp_path), "--filter", "model=vgg*", "--filter", "model=lenet?",
                 "--filter", "optimizer.lr=0.1", "--columns", "run", "--sort", "params", "--desc"])
    assert table()[2:] == ["| vgg |", "| lenet |"]
    compare_cli([str(tmp_path), "--columns", "run", "--sort", "params"])
    assert table()[2:] == ["| lenet |", "| r18 |", "| r50 |", "| vgg |"]
    compare_cli([str(tmp_path), "--columns", "run", "--sort", "optimizer.lr"])
    assert table()[2] == "| r50 |"


@pytest.mark.parametrize("args, message", [
    (["--columns", "run,top1"], "unknown column 'top1'. Did you mean top1_err? Known columns: run, model"),
    (["--columns", ","], "--columns is empty"),
    (["--sort", "lr"], "Did you mean optimizer.lr?"),
    (["--filter", "model"], "'model' is not KEY=PATTERN"),
    (["--filter", "=resnet*"], "is not KEY=PATTERN"),
    (["--filter", "modle=resnet*"], "--filter: unknown column 'modle'. Did you mean model?"),
    (["--filter", "model=alexnet"], "No run matches the filters (1 run(s) found). Values present: model: resnet18"),
    (["--out", ""], "An empty path"),
])
def test_bad_options_name_the_problem_and_the_fix(tmp_path, args, message):
    write_run(tmp_path, "r1", config=config())
    with pytest.raises(CnnbenchError) as e:
        compare_cli([str(tmp_path), *args])
    assert message in str(e.value)
    assert "\n" not in str(e.value)  # one paragraph
    assert not (tmp_path / "report.md").exists()  # refused before writing anything


def test_an_output_folder_that_cannot_take_the_files_is_refused_whole(tmp_path, capsys, monkeypatch):
    from cnnbench import cli

    monkeypatch.setattr(report, "render_plots", fake_plots)
    write_run(tmp_path / "runs", "r1", config=config())
    out = tmp_path / "out"
    (out / "comparison.md").mkdir(parents=True)  # a folder where a file goes: the write fails midway
    assert cli.main(["compare", str(tmp_path / "runs"), "--out", str(out)]) == 2
    err = " ".join(capsys.readouterr().err.split())
    assert f"Cannot write the comparison files into {out}: Is a directory (comparison.md)" in err
    assert "--out DIR" in err
    assert "Traceback" not in err
    assert sorted(p.name for p in out.iterdir()) == ["comparison.csv", "comparison.md"]  # no half-written files


def test_an_image_folder_root_is_part_of_the_experiment():
    from cnnbench.run import _config_differences
    from cnnbench.track import bookkeeping_keys

    def cfg(name, root):
        return {"dataset": {"name": name, "root": root}, "seed": 0}
    # MNIST's root is only where its files are kept; an image folder's root is the data itself
    assert _config_differences(cfg("mnist", "/a"), cfg("mnist", "/b")) == []
    assert _config_differences(cfg("imagefolder", "/a"), cfg("imagefolder", "/b")) == ["dataset.root"]
    assert "dataset.root" not in bookkeeping_keys(cfg("imagefolder", "/a"))
    rows = [{"config": cfg("imagefolder", root), "status": "completed", "path": root, "seed": 0} for root in "ab"]
    assert report._group_key(rows[0]) != report._group_key(rows[1])  # two datasets, not two seeds of one


def test_bad_option_exits_2_without_traceback(tmp_path):
    write_run(tmp_path, "r1")
    r = cnnbench("compare", "", cwd=tmp_path)
    assert r.returncode == 2 and "empty path" in r.stderr and "Traceback" not in r.stderr


def test_failed_run_shows_in_report_but_not_in_plots(tmp_path):
    write_zoo(tmp_path)

    compare_main([str(tmp_path)], None)

    md = (tmp_path / "report.md").read_text()
    table = md.split("## ")[0]
    assert "| broken | resnet110 |" in table and "| failed |" in table
    assert "## Runs that did not complete" in md
    assert "| broken | failed | RuntimeError: CUDA out of memory |" in md
    assert "Not plotted: broken (failed)." in md
    page = (tmp_path / "report.html").read_text()
    assert "<td>RuntimeError: CUDA out of memory</td>" in page and "Not plotted: broken (failed)." in page


def test_report_module_does_not_import_matplotlib_until_plotting():
    code = "import sys, cnnbench.cli, cnnbench.report; assert 'matplotlib' not in sys.modules"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_a_run_saved_before_a_setting_existed_groups_with_a_new_run_at_its_default(tmp_path):
    old = config(seed=0)  # written before trainer.compile_mode: it compiled in the default mode
    new = config(seed=1)
    new["trainer"]["compile_mode"] = "default"
    other = config(seed=2)
    other["trainer"]["compile_mode"] = "reduce_overhead"
    for name, seed, cfg in (("seed=0", 0, old), ("seed=1", 1, new), ("graphs", 2, other)):
        write_run(tmp_path, name, seed=seed, config=cfg)
    rows = sort_rows(group_rows(load_rows([str(tmp_path)])))
    assert sorted(r["n_seeds"] for r in rows) == [1, 2]


def test_a_config_from_before_the_settings_added_since_groups_with_today_s(tmp_path):
    """Every key track.ADDED_SETTINGS fills in: a run saved without them is the same experiment."""
    from conftest import TINY, compose_cfg

    from cnnbench.run import _config_dict

    new = _config_dict(compose_cfg(*TINY))
    old = json.loads(json.dumps(new))
    del old["per_model"], old["dataset"]["val_fraction"], old["trainer"]["compile_mode"], old["dataset"]["decode"]
    for key in ("target", "arch", "args"):
        del old["model"][key]
    write_run(tmp_path, "seed=0", seed=0, config={**old, "seed": 0})
    write_run(tmp_path, "seed=1", seed=1, config={**new, "seed": 1})
    (row,) = group_rows(load_rows([str(tmp_path)]))
    assert row["n_seeds"] == 2


# -----------------------------------------------------------------------------
# Keys of results.json as columns; the top-k error named by its k; plot ticks and labels; the
# terminal table (tests/test_terminal.py runs it in a real terminal)

def test_any_key_of_results_json_is_a_column_a_filter_and_a_sort_key(tmp_path):
    for name, device, threads, load in (("gpu", "NVIDIA H200", 16, 0.5), ("cpu", "x86_64", 2, 3.25)):
        write_run(tmp_path, name, input_shape=[3, 32, 32], train_images_used=50_000, config=config(name),
                  env={"device_name": device, "threads": threads, "cpus": threads, "load_start": load,
                       **({"hostname": "node7"} if name == "cpu" else {})})

    compare_cli([str(tmp_path), "--columns", "run,env.device_name,env.threads,input_shape,env.load_start,"
                 "train_images_used,env.cpus", "--sort", "env.load_start", "--desc"])
    md = (tmp_path / "comparison.md").read_text().splitlines()
    assert md[0] == "| run | device | threads | input | load start | train images used | cpus |"
    assert md[2:4] == ["| cpu | x86_64 | 2 | 3x32x32 | 3.25 | 50,000 | 2 |",
                       "| gpu | NVIDIA H200 | 16 | 3x32x32 | 0.50 | 50,000 | 16 |"]
    compare_cli([str(tmp_path), "--filter", "env.device_name=NVIDIA*", "--columns", "run,env.hostname"])
    table = (tmp_path / "comparison.md").read_text().split("\n\n")[0]
    assert table.splitlines()[2:] == ["| gpu | — |"]  # a key only the other run has

    # Without --columns: the defaults, and device and threads because they differ between the rows.
    compare_cli([str(tmp_path)])
    header = (tmp_path / "comparison.md").read_text().splitlines()[0]
    assert header.startswith("| run | model | dataset | optimizer | seed | n seeds | device | threads | params |")
    assert "input" not in header  # the same for both

    for args, message in ((["--columns", "run,device"], "unknown column 'device'. Did you mean env.device_name?"),
                          (["--sort", "env.cpuz"], "unknown column 'env.cpuz'. Did you mean env.cpus?"),
                          (["--filter", "env.load_end=1*"], "--filter: unknown column 'env.load_end'.")):
        with pytest.raises(CnnbenchError) as e:
            compare_cli([str(tmp_path), *args])
        assert message in str(e.value) and "results.json" in str(e.value)


def test_a_results_json_value_of_a_seed_group_is_their_mean(tmp_path):
    for seed, load in enumerate([1.0, 2.0]):
        write_run(tmp_path, f"seed={seed}", seed=seed, config=config(seed=seed), env={"load_start": load, "threads": 4})
    (row,) = group_rows(load_rows([str(tmp_path)]))
    assert report.value_of(row, "env.load_start") == 1.5 and report.value_of(row, "env.threads") == 4


def test_the_top_k_error_is_named_by_its_k(tmp_path):
    write_run(tmp_path / "three", "a", num_classes=3, top5_err=0.0, config=config("a"))
    write_run(tmp_path / "three", "b", num_classes=3, top5_err=0.0, config=config("b"))
    write_run(tmp_path / "mixed", "ten", num_classes=10, top5_err=0.05, config=config("ten"))
    write_run(tmp_path / "mixed", "two", num_classes=2, top5_err=0.0, config=config("two"))

    compare_main([str(tmp_path / "three")], None)
    md = (tmp_path / "three" / "comparison.md").read_text()
    assert "| top-3 err % |" in md and "top-5" not in md  # 3 classes: top-5 of 3 is top-3, always 0
    assert "<th>top-3 err %</th>" in (tmp_path / "three" / "report.html").read_text()

    compare_main([str(tmp_path / "mixed")], None)
    table = (tmp_path / "mixed" / "comparison.md").read_text().split("\n\n")[0]
    assert "| top-5 err % |" in table and "| 0.00 (top-2) |" in table and "| 5.00 |" in table


def test_one_epoch_curves_tick_whole_epochs(tmp_path):
    write_run(tmp_path, "a", config=config("a"), history=history([0.5], [0.4]))
    write_run(tmp_path, "b", config=config("b"), history=history([0.6], [0.5]))

    fig = curves_figure(group_rows(load_rows([str(tmp_path)])))
    fig.draw_without_rendering()

    for ax in fig.axes[:2]:
        low, high = ax.get_xlim()
        ticks = [t for t in ax.get_xticks() if low <= t <= high]
        assert ticks == [1.0]  # not 0.945, 0.96, ... 1.05
        assert low < 1 - 0.25 and high > 1 + 0.25


def test_runs_outside_a_sweep_are_labelled_by_what_differs_clear_of_the_legend(tmp_path):
    for i, (model, lr, params, macs, err) in enumerate((("lenet5", 0.1, 61_706, 416_520, 0.15),
                                                        ("lenet5", 0.01, 61_706, 416_520, 0.13),
                                                        ("vgg11", 0.1, 9_231_114, 153_000_000, 0.16))):
        write_run(tmp_path, f"2026-11-29_20-14-4{i}_{model}_fashion_mnist", model=model, params=params, macs=macs,
                  top1_err=err, config=config(model, lr=lr), history=history([0.5, 0.4], [0.3, err]))
    rows = sort_rows(group_rows(load_rows([str(tmp_path)])))

    assert report.plot_labels(rows) == ["lenet5,lr=0.01", "lenet5,lr=0.1", "vgg11,lr=0.1"]
    fig = bubble_figure(rows)
    fig.draw_without_rendering()
    ax = fig.axes[0]
    labels = [t for t in ax.texts if t.get_text()]
    assert sorted(t.get_text() for t in labels) == ["lenet5,lr=0.01", "lenet5,lr=0.1", "vgg11,lr=0.1"]
    legend = ax.get_legend().get_window_extent()  # the key to bubble sizes, right of the axes
    for text in labels:  # vgg11's, top right, used to run into it
        box = text.get_window_extent()
        assert not box.overlaps(legend), text.get_text()
        assert fig.bbox.contains(box.x0, box.y0) and fig.bbox.contains(box.x1, box.y1), text.get_text()
    curves = curves_figure(rows)
    assert sorted(t.get_text() for t in curves.legends[0].get_texts()) == sorted(report.plot_labels(rows))
    compare_main([str(tmp_path)], None)
    note = "In the plots: lenet5,lr=0.01 = 2026-11-29_20-14-41_lenet5_fashion_mnist;"
    assert note in (tmp_path / "report.md").read_text()


def test_named_columns_are_shown_exactly_however_narrow_the_terminal(tmp_path):
    import io

    from rich.console import Console

    for name in ("a", "b"):
        write_run(tmp_path, f"a_long_run_name_{name}", config=config(name))
    rows = group_rows(load_rows([str(tmp_path)]))

    def shown(names, width):
        buf = io.StringIO()
        report.show_comparison(rows, names, Console(file=buf, width=width, force_terminal=True, color_system=None))
        return buf.getvalue()

    narrow = shown(["run", "dataset", "params", "macs", "top1_err"], 40)
    assert "11,173,962" in narrow and "556,651,520" in narrow and "…" not in narrow  # numbers whole
    assert "│ cifar10" in narrow and "all runs" not in narrow  # named: kept, though the same for every run
    assert "The table is 65 characters wide, the terminal 40" in " ".join(narrow.split())
    default = shown(None, 40)
    assert "all runs: model=resnet18, dataset=cifar10, optimizer=sgd" in " ".join(default.split())
    assert max(map(len, default.splitlines())) <= 40 and "…" not in default


# -----------------------------------------------------------------------------
# Tasks: classification and segmentation runs compared side by side, each in its own table and
# plots, from what its Task declares

def segmentation_history(train_accs: list[float], val_mious: list[float]) -> list[dict]:
    """Per-epoch rows as run.train writes them for a segmentation run."""
    return [{"epoch": e, "train_loss": 1.0, "train_pixel_acc": a, "val_loss": 1.0, "val_miou": m,
             "val_pixel_acc": 0.9, "val_mean_class_acc": 0.6, "lr": 0.1, "seconds": 1.0, "images_per_s": 100.0}
            for e, (a, m) in enumerate(zip(train_accs, val_mious), start=1)]


def write_tasks(root: Path) -> None:
    """Two classification runs, and three segmentation rows: fcn8s, segnet, and unet over two seeds."""
    write_run(root, "lenet5", "classification", model="lenet5", params=61_706, macs=416_520, top1_err=0.30,
              config=config("lenet5"), history=history([0.5, 0.3], [0.45, 0.30]))
    write_run(root, "resnet20", "classification", model="resnet20", params=272_474, macs=41_000_000, top1_err=0.09,
              config=config("resnet20"), history=history([0.4, 0.05], [0.3, 0.09]))
    seg = dict(dataset="fashion_scenes", epochs=2)
    write_run(root, "fcn8s", "segmentation", model="fcn8s", params=134_000_000, macs=20_000_000_000, miou=0.40,
              train_images_per_s=100.0, config=config("fcn8s"),
              history=segmentation_history([0.7, 0.8], [0.3, 0.40]), **seg)
    write_run(root, "segnet", "segmentation", model="segnet", params=29_000_000, macs=2_000_000_000, miou=0.55,
              train_images_per_s=300.0, config=config("segnet"),
              history=segmentation_history([0.8, 0.9], [0.5, 0.55]), **seg)
    for seed, miou in ((0, 0.50), (1, 0.54)):
        write_run(root, f"model=unet,seed={seed}", "segmentation", model="unet", seed=seed, params=31_000_000,
                  macs=50_000_000_000, miou=miou, train_images_per_s=80.0, config=config("unet", seed=seed),
                  history=segmentation_history([0.6, 0.7], [0.4, miou]), **seg)


def md_tables(md: str) -> dict[str, list[str]]:
    """The lines of each `## task` section's table in a comparison.md."""
    return {part.split("\n", 1)[0]: [line for line in part.splitlines() if line.startswith("|")]
            for part in md.split("## ")[1:]}


def test_each_task_has_its_table_columns_and_order(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")  # wide enough that rich does not wrap cells
    write_tasks(tmp_path)

    assert compare_main([str(tmp_path)], None) == 0

    out = capsys.readouterr().out
    titles = [out.index("cnnbench compare: 2 classification run(s)"),
              out.index("cnnbench compare: 4 segmentation run(s) in 3 row(s)")]
    assert titles == sorted(titles)  # classification first
    assert out.count("all runs: ") == 2 and "dataset=fashion_scenes" in out and "dataset=cifar10" in out
    assert "mIoU, pixel acc, class acc on the validation set" in out and "errors on the validation set" in out

    tables = md_tables((tmp_path / "comparison.md").read_text())
    assert list(tables) == ["classification", "segmentation"]
    classification, segmentation = tables["classification"], tables["segmentation"]
    assert "| top-1 err % | top-5 err % | epochs |" in classification[0] and "mIoU" not in classification[0]
    assert "| img/s | mIoU % | pixel acc % | class acc % | epochs | status |" in segmentation[0]
    assert "top-1" not in segmentation[0]
    assert [line.split(" | ")[0] for line in classification[2:]] == ["| resnet20", "| lenet5"]  # error: ascending
    assert [line.split(" | ")[0] for line in segmentation[2:]] == ["| segnet", "| model=unet,seed=*", "| fcn8s"]
    assert "| 52.00 ± 2.83 | 90.00 ± 0.00 | 60.00 ± 0.00 |" in segmentation[3]  # mean ± std over the seeds

    rows = read_csv(tmp_path)  # every run, every task's columns, raw fractions
    assert [(r["run"], r["task"]) for r in rows] == [
        ("resnet20", "classification"), ("lenet5", "classification"), ("segnet", "segmentation"),
        ("model=unet,seed=1", "segmentation"), ("model=unet,seed=0", "segmentation"), ("fcn8s", "segmentation")]
    assert (rows[0]["top1_err"], rows[0]["miou"]) == ("0.09", "")
    assert (rows[2]["miou"], rows[2]["pixel_acc"], rows[2]["mean_class_acc"], rows[2]["best_miou"]) == \
        ("0.55", "0.9", "0.6", "0.52")
    assert rows[2]["top1_err"] == ""
    assert "sorted by top1_err, miou (descending)." in (tmp_path / "report.md").read_text()


def test_an_explicit_sort_orders_every_table(tmp_path):
    write_tasks(tmp_path)

    compare_cli([str(tmp_path), "--sort", "params", "--desc", "--columns", "run,params"])

    tables = md_tables((tmp_path / "comparison.md").read_text())
    assert tables["classification"][2:] == ["| resnet20 | 272,474 |", "| lenet5 | 61,706 |"]
    assert [line.split(" | ")[0] for line in tables["segmentation"][2:]] == ["| fcn8s", "| model=unet,seed=*",
                                                                              "| segnet"]
    assert "sorted by params (descending)." in (tmp_path / "report.md").read_text()
    compare_cli([str(tmp_path), "--desc", "--columns", "run"])  # no --sort: each score, the largest first
    tables = md_tables((tmp_path / "comparison.md").read_text())
    assert tables["classification"][2:] == ["| lenet5 |", "| resnet20 |"]
    assert tables["segmentation"][2] == "| segnet |"


def test_one_task_alone_has_no_task_headings(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    write_tasks(tmp_path)

    compare_cli([str(tmp_path), "--filter", "task=segmentation"])

    md = (tmp_path / "comparison.md").read_text()
    assert "## " not in md and md.startswith("| run | model | dataset | optimizer | seed | n seeds |")
    assert "cnnbench compare: 4 run(s) in 3 row(s)" in capsys.readouterr().out
    report_md = (tmp_path / "report.md").read_text()
    assert "\n## mIoU against operations\n" in report_md and "top1" not in report_md
    assert "sorted by miou (descending)." in report_md
    assert sorted(p.name for p in tmp_path.glob("*.png")) == [
        "miou_vs_gmacs.png", "miou_vs_images_per_s.png", "segmentation_curves.png"]


def test_segmentation_plots_show_miou(tmp_path):
    write_tasks(tmp_path)
    rows = sort_rows(group_rows(load_rows([str(tmp_path)])))
    (_, classification), (task, segmentation) = report.by_task(rows)

    fig = bubble_figure(segmentation)  # the task: the rows'
    ax = fig.axes[0]
    assert sorted(bubbles(fig).get_offsets()[:, 1]) == pytest.approx([40.0, 52.0, 55.0])  # 100 * mIoU
    assert ax.get_ylabel() == "mIoU % (validation, last epoch)"
    assert ax.get_title() == "mIoU against operations (bubble area ∝ parameters)"
    fig = throughput_figure(segmentation, task)
    assert sorted(map(tuple, bubbles(fig).get_offsets())) == [(80.0, pytest.approx(52.0)), (100.0, 40.0),
                                                               (300.0, pytest.approx(55.0))]
    assert fig.axes[0].get_title() == "mIoU against training throughput"

    fig = curves_figure(segmentation)
    train_ax, val_ax = fig.axes[:2]
    assert list({line.get_gid(): line for line in train_ax.get_lines()}["segnet"].get_ydata()) == \
        pytest.approx([80.0, 90.0])  # training pixel accuracy
    assert list({line.get_gid(): line for line in val_ax.get_lines()}["model=unet,seed=*"].get_ydata()) == \
        pytest.approx([40.0, 52.0])  # validation mIoU, the seeds' mean
    assert (train_ax.get_ylabel(), val_ax.get_ylabel()) == ("pixel accuracy %", "mIoU %")
    assert fig.get_suptitle() == "Training pixel accuracy and validation mIoU per epoch"
    assert curves_figure(classification).get_suptitle() == "Top-1 error per epoch"
    with pytest.raises(ValueError, match="2 tasks"):
        bubble_figure(rows)


def test_report_has_each_task_s_plots(tmp_path, real_plots):
    write_tasks(tmp_path)

    compare_main([str(tmp_path)], None)

    names = ["top1_vs_gmacs.png", "top1_vs_images_per_s.png", "error_curves.png",
             "miou_vs_gmacs.png", "miou_vs_images_per_s.png", "segmentation_curves.png"]
    assert sorted(p.name for p in tmp_path.glob("*.png")) == sorted(names)
    for png in tmp_path.glob("*.png"):
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    md = (tmp_path / "report.md").read_text()
    sections = md.split("\n## ")
    assert [s.split("\n", 1)[0] for s in sections[1:]] == ["classification", "segmentation"]
    assert "### Top-1 error against operations" in sections[1] and "](top1_vs_gmacs.png)" in sections[1]
    assert "### mIoU against operations" in sections[2] and "](miou_vs_gmacs.png)" in sections[2]
    assert "### Training pixel accuracy and validation mIoU per epoch" in sections[2]
    assert "](segmentation_curves.png)" in sections[2] and "top1" not in sections[2]
    page = (tmp_path / "report.html").read_text()
    assert page.count("src='data:image/png;base64,") == 6
    assert page.index("<h2>classification</h2>") < page.index("<h3>Top-1 error against operations</h3>") \
        < page.index("<h2>segmentation</h2>") < page.index("<h3>mIoU against operations</h3>")


def test_a_run_of_a_task_this_version_does_not_know_is_skipped(tmp_path, capsys):
    write_run(tmp_path, "known", "segmentation")
    (tmp_path / "future").mkdir()
    (tmp_path / "future" / "results.json").write_text(json.dumps({**make_result("segmentation"), "task": "tracking"}))

    assert [r["task"] for r in load_rows([str(tmp_path)])] == ["segmentation"]
    assert "future/results.json: task 'tracking' is not one this cnnbench compares" in capsys.readouterr().err


# -----------------------------------------------------------------------------
# Detection: the inference costs (images/s, proposals and CNN passes per image) are numbers as
# measured, not fractions; runs from before they were recorded compare without them

def write_detectors(root: Path) -> None:
    """Faster R-CNN and SSD300 with their inference costs, R-CNN over two seeds, and a Fast R-CNN run
    from before the costs were recorded."""
    det = dict(dataset="fashion_scenes", epochs=2, macs=5_000_000_000)
    write_run(root, "faster_rcnn", "detection", model="faster_rcnn", map=0.30, inference_images_per_s=12.5,
              proposals_per_image=300, cnn_passes_per_image=1, proposal_s_per_image=None, network_s_per_image=0.08,
              config=config("faster_rcnn"), **det)
    write_run(root, "ssd300", "detection", model="ssd300", map=0.25, inference_images_per_s=1234.4,
              proposals_per_image=None, cnn_passes_per_image=1, proposal_s_per_image=None,
              network_s_per_image=0.0008, config=config("ssd300"), **det)
    for seed, speed in ((0, 0.04), (1, 0.05)):
        write_run(root, f"model=rcnn,seed={seed}", "detection", model="rcnn", seed=seed, map=0.20,
                  inference_images_per_s=speed, proposals_per_image=2000, cnn_passes_per_image=2000,
                  proposal_s_per_image=2.0, network_s_per_image=20.0, config=config("rcnn", seed=seed), **det)
    write_run(root, "fast_rcnn", "detection", model="fast_rcnn", map=0.28, config=config("fast_rcnn"), **det)


def test_detection_table_shows_inference_costs_as_measured(tmp_path):
    write_detectors(tmp_path)

    assert compare_main([str(tmp_path)], None) == 0

    md = (tmp_path / "comparison.md").read_text()
    table = [line for line in md.splitlines() if line.startswith("|")]
    assert "| mAP % | AP50 % | inference img/s | proposals/img | CNN passes/img | epochs |" in table[0]
    assert [line.split(" | ")[0] for line in table[2:]] == ["| faster_rcnn", "| fast_rcnn", "| ssd300",
                                                            "| model=rcnn,seed=*"]  # mAP, descending
    assert "| 30.00 | 50.00 | 12.5 | 300 | 1 |" in table[2]  # not 1250.00: no percent
    assert "| 28.00 | 50.00 | — | — | — |" in table[3]  # recorded before the costs
    assert "| 1,234 | — | 1 |" in table[4]  # single-shot: no proposals
    assert "| 0.045 ± 0.00707 | 2,000 ± 0 | 2,000 ± 0 |" in table[5]  # mean ± std over the seeds
    assert f"after the last epoch; {DETECTION.costs_caption}; GMACs per image" in md  # what the speed is

    rows = {r["run"]: r for r in read_csv(tmp_path)}  # raw numbers, every cost
    fields = list(rows["ssd300"])
    assert fields[fields.index("best_map") + 1:fields.index("loss")] == [
        "inference_images_per_s", "proposals_per_image", "cnn_passes_per_image", "proposal_s_per_image",
        "network_s_per_image"]
    assert (rows["faster_rcnn"]["inference_images_per_s"], rows["faster_rcnn"]["proposals_per_image"]) == \
        ("12.5", "300")
    assert (rows["ssd300"]["proposals_per_image"], rows["model=rcnn,seed=1"]["proposal_s_per_image"]) == ("", "2.0")
    assert rows["fast_rcnn"]["inference_images_per_s"] == ""


def test_cost_columns_only_where_some_run_has_them_and_older_runs_still_compare(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "250")
    write_run(tmp_path / "new", "ssd300", "detection", model="ssd300", inference_images_per_s=100.0,
              cnn_passes_per_image=1, proposals_per_image=None, config=config("ssd300"))
    write_run(tmp_path / "old", "fast_rcnn", "detection", model="fast_rcnn", config=config("fast_rcnn"))
    write_run(tmp_path / "old", "lenet5", "classification", model="lenet5", config=config("lenet5"))

    assert compare_main([str(tmp_path / "new")], None) == 0
    header = (tmp_path / "new" / "comparison.md").read_text().splitlines()[0]
    assert "| inference img/s | CNN passes/img |" in header and "proposals/img" not in header  # single-shot only
    assert "inference img/s" in capsys.readouterr().out

    assert compare_main([str(tmp_path / "old")], None) == 0
    tables = md_tables((tmp_path / "old" / "comparison.md").read_text())
    assert "| mAP % | AP50 % | epochs |" in tables["detection"][0]  # no column of dashes only
    assert "img/s |" in tables["classification"][0]
    assert "inference" not in (tmp_path / "old" / "comparison.md").read_text()  # neither column nor caption
    assert sorted(p.name for p in (tmp_path / "old").glob("map*.png")) == [
        "map_vs_gmacs.png", "map_vs_images_per_s.png", "map_vs_inference_ms.png"]
    assert not list((tmp_path / "old").glob("top1_vs_inference*"))  # a task without a speed has no such plot
    report_md = (tmp_path / "old" / "report.md").read_text()
    assert "### mAP against inference time\n\n![mAP against inference time](map_vs_inference_ms.png)" in report_md
    assert "Not plotted: fast_rcnn (no inference_images_per_s)." in report_md

    rows = sort_rows(group_rows(load_rows([str(tmp_path)])))
    detection = report.by_task(rows)[1][1]
    fig = report.inference_figure(detection)
    assert len(bubbles(fig).get_offsets()) == 1  # ssd300 alone
    assert "no run to plot" in report.inference_figure([r for r in detection if r["model"] == "fast_rcnn"]) \
        .axes[0].texts[0].get_text()
    order = report._drop_order(detection)  # in a narrow terminal the proposals go early, the speed late
    assert order.index("proposals_per_image") < order.index("train_images_per_s") \
        < order.index("inference_images_per_s") < order.index("gmacs")


def test_map_against_inference_ms_one_point_per_row(tmp_path):
    write_detectors(tmp_path)
    rows = sort_rows(group_rows(load_rows([str(tmp_path)])))
    ((task, detection),) = report.by_task(rows)

    fig = report.inference_figure(detection)

    ax = fig.axes[0]
    points = sorted(map(tuple, bubbles(fig).get_offsets()))
    assert points == [(pytest.approx(1000 / 1234.4), 25.0), (80.0, 30.0), (pytest.approx(22_500), 20.0)]  # ms, %
    assert ax.get_xscale() == "log"  # 0.8 ms to 22.5 s
    assert {t.get_text() for t in ax.texts} == {"faster_rcnn", "ssd300", "model=rcnn,seed=*"}  # not fast_rcnn
    assert ax.get_title() == "mAP against inference time" and ax.get_xlabel().startswith("inference ms per image")
    rcnn = report._inference_ms(detection[-1], "inference_images_per_s")
    assert rcnn["std"]["inference_ms"] == pytest.approx(statistics.stdev([25_000, 20_000]))  # of each seed's ms
    assert report.png_bytes(fig)[:8] == b"\x89PNG\r\n\x1a\n"
