"""cnnbench compare: fake results.json files in tmp_path, no training."""

import csv
import json
from pathlib import Path

import pytest

from cnnbench.errors import CnnbenchError
from cnnbench.report import compare_main, load_rows


def make_result(**overrides) -> dict:
    """A valid results.json dict for a completed run; keyword arguments replace fields."""
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
    result.update(overrides)
    return result


def write_run(root: Path, name: str, **overrides) -> Path:
    """Write root/name/results.json and return the run folder."""
    run = root / name
    run.mkdir(parents=True)
    (run / "results.json").write_text(json.dumps(make_result(**overrides)))
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
