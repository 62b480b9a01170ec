"""benchmarks/gpu.py waits for a GPU session; its --smoke mode runs every target's code at toy sizes
on the CPU, so that the script cannot rot unseen between the sessions that have a GPU. One run of
every target (about 50 s on 2 cores), then what each target wrote to its --out folder."""

import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FASHION_TABLE = ROOT / "conf" / "experiment" / "fashion_table.yaml"


def gpu_script(tmp, *args):
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu.py"), "--smoke", "--out", str(tmp / "out"),
                           "--work", str(tmp / "work"), *args],
                          cwd=tmp, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "CNNBENCH_DATA": str(tmp / "data"), "OMP_NUM_THREADS": "1"})


def rows(stdout: str) -> dict:
    """The printed table: figure -> value."""
    lines = [line.split(" | ") for line in stdout.splitlines() if line.startswith("| ") and "---" not in line]
    return {row[0].lstrip("| "): row[1].rstrip(" |") for row in lines[1:]}  # after the header


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu")
    r = gpu_script(tmp, "--repeats", "1")
    assert r.returncode == 0, r.stdout + r.stderr
    return r, rows(r.stdout), tmp / "out"


def saved(out: Path, target: str) -> dict:
    record = json.loads((out / f"{target}.json").read_text())
    assert record["target"] == target and record["smoke"] and record["env"]["torch"]
    assert record["rows"] and all(row["met"] is None for row in record["rows"])  # a smoke run judges nothing
    return record


def test_every_target_runs_and_judges_nothing(smoke):
    r, figures, out = smoke
    assert "FAILED" not in r.stdout and "NOT MET" not in r.stdout and " met " not in r.stdout
    for target in ("lenet5_profile", "lenet5", "resnet18", "resnet50", "jpeg", "fashion_table", "resnet50_fastest"):
        assert f"{target}: elapsed s" in figures
        assert saved(out, target)["status"] == "done"
    assert "total elapsed s" in figures
    for model in ("resnet50", "lenet5"):  # issue 6: each against its bare loop
        assert float(figures[f"{model}: cnnbench / bare"]) > 0


def test_lenet5_profile_compares_cnnbench_step_with_the_bare_loop(smoke):
    _, figures, out = smoke
    record = saved(out, "lenet5_profile")
    for side in ("cnnbench", "bare"):
        s = record[side]
        assert s["profiled_steps"] == record["window"]["profiled"] == 4
        assert s["ms_per_step"] > 0 and s["host_ms_per_step_median"] > 0 and s["outside_ops_us_per_step"] > 0
        assert {"op", "calls_per_step", "self_cpu_us_per_step", "device_us_per_step"} <= set(s["ops"][0])
    # the ranges that probing() names in cnnbench's epoch are cnnbench's alone
    only = {o["op"] for o in record["cnnbench_only"]}
    assert {"cnnbench: next batch", "cnnbench: scheduler.step", "cnnbench: task.train_step"} <= only
    assert "aten::mm" not in only  # the model's own ops are in both
    assert "lenet5_profile: cnnbench only: cnnbench: task.train_step" in figures
    assert any("unreliable under CUDA graphs" in figure for figure in figures)
    with tarfile.open(out / "lenet5_profile.tar.gz") as tar:  # one file in --out
        assert sorted(tar.getnames()) == ["lenet5_bare_trace.json", "lenet5_cnnbench_trace.json", "lenet5_profile.txt"]
        assert "cnnbench's host ops that the bare loop has not" in tar.extractfile("lenet5_profile.txt").read().decode()


def test_jpeg_trains_from_a_written_folder_and_from_synthetic_data(smoke):
    _, figures, out = smoke
    record = saved(out, "jpeg")
    assert record["images"]["written"] == 64 + 16 and record["ratio"] > 0
    for run in ("jpeg", "synthetic"):
        assert record[run]["status"] == "completed" and record[run]["train_images_used"] == 64
        assert record[run]["data_wait_s"] >= 0 and record[run]["train_images_per_s"] > 0
    if record["decode_key"]:  # dataset.decode: on the CPU, decoded there
        assert record["jpeg"]["decode"] == "cpu"
        # the probe before the runs: the device path (forced on the CPU) against PIL's, one validation pass
        parity = record["parity"]
        assert parity["images"] == 16 and parity["labels_equal"] and parity["decode"] == "gpu"
        assert 0 <= parity["mean_levels"] <= parity["max_levels"] <= 10  # within the resize's rounding
        figure = next(f for f in figures if f.startswith("jpeg: 32 px JPEGs, device decode against PIL"))
        assert figures[figure] == f"{parity['max_levels']:.0f} / {parity['mean_levels']:.3f}"
    assert float(figures["jpeg: 32 px JPEGs / synthetic"]) == pytest.approx(record["ratio"], abs=1e-3)


def test_out_holds_at_most_8_whole_files(smoke):
    _, _, out = smoke  # a lent machine brings back at most 8 files; the partial ones are written in --work
    files = sorted(p.name for p in out.iterdir())
    assert len(files) <= 8 and not any(name.endswith((".tmp", ".part")) for name in files), files


def test_fashion_table_reports_each_job_of_the_experiment(smoke):
    _, figures, out = smoke
    record = saved(out, "fashion_table")
    if not FASHION_TABLE.exists():
        assert "does not exist" in record["skipped"]
        pytest.skip(f"{FASHION_TABLE.relative_to(ROOT)} is not written yet: its smoke step was skipped")
    assert record["rc"] == 0 and not record["timed_out"]
    assert record["command"].startswith("cnnbench train +experiment=fashion_table hydra.sweep.dir=")
    jobs = {job["model"]: job for job in record["jobs"]}
    assert set(jobs) == {"mobilenet_v2", "googlenet", "vgg16_bn", "alexnet_tv"}
    for model, job in jobs.items():
        assert job["status"] == "completed" and 0 <= job["test_accuracy"] <= 1 and job["train_s"] > 0
        assert f"model={model}" in job["command"] and "+experiment=fashion_table" in job["command"]
        assert job["record"]["history"]
        assert f"`{job['command']}`" == figures[f"fashion_table {model}: command"]


def test_resnet50_fastest_runs_each_candidate_in_its_own_process(smoke):
    _, figures, out = smoke
    record = saved(out, "resnet50_fastest")
    measured = record["candidates"]
    assert [c["candidate"] for c in measured] == ["reduce_overhead:256", "max_autotune_no_cudagraphs:256"]
    for c in measured:
        assert c["rc"] == 0 and not c["timed_out"] and c["seconds"] > 0
        assert c["cnnbench_images_per_s"] > 0 and c["bare_images_per_s"] > 0
        assert c["ratio"] == pytest.approx(c["cnnbench_images_per_s"] / c["bare_images_per_s"])
        assert {"mfu", "compile_s", "bare_compile_s"} <= set(c) and c["record"]["status"] == "completed"
    assert any("bare, which compiles second, with warm caches" in figure for figure in figures)
    assert record["fastest"] == max(measured, key=lambda c: c["cnnbench_images_per_s"])["candidate"]
    assert "resnet50_fastest: fastest (the preset to make)" in figures


def test_targets_past_the_budget_are_skipped_not_failed(tmp_path):
    r = gpu_script(tmp_path, "--budget-s", "1", "--only", "lenet5,fashion_table,resnet50_fastest")
    assert r.returncode == 0, r.stdout + r.stderr
    figures = rows(r.stdout)
    assert figures["lenet5"].startswith("skipped") and figures["fashion_table: skipped"]
    assert figures["resnet50_fastest: fastest"] == "none measured"
    assert json.loads((tmp_path / "out" / "lenet5.json").read_text())["status"] == "skipped"
