"""The tables as a user sees them: `cnnbench compare`, `cnnbench models` and the summary of
`cnnbench train`, run in a real pseudo-terminal 80 and 120 columns wide (COLUMNS unset, so rich
asks the terminal). Nothing is cut: no line is wider than the screen, nothing ends in "…", and
every number and path appears whole."""

import fcntl
import json
import os
import re
import struct
import subprocess
import sys
import termios
from pathlib import Path

import pytest
from conftest import TINY
from test_report import config, history, write_run

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07")  # colours, cursor moves, titles


def in_terminal(args: list[str], columns: int, cwd: Path) -> str:
    """Run `python ARGS` with stdin, stdout and stderr on a pseudo-terminal `columns` wide; its
    output as plain text (ANSI escapes removed, one "\\n" per line)."""
    leader, follower = os.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))  # rows, columns, px, px
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "HYDRA_FULL_ERROR", "CNNBENCH_DEBUG")}
    env.update(TERM="xterm-256color", CNNBENCH_DATA=str(cwd / "data"))
    proc = subprocess.Popen([sys.executable, *args], stdin=follower, stdout=follower, stderr=follower, cwd=cwd,
                            env=env, close_fds=True)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the child closed the terminal
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.wait(timeout=300) == 0, out.decode(errors="replace")
    return ANSI.sub("", out.decode()).replace("\r\n", "\n")


def assert_fits(lines: list[str], columns: int) -> None:
    too_wide = [line for line in lines if len(line) > columns]
    assert not too_wide, "\n".join(too_wide)
    assert not [line for line in lines if "…" in line], "\n".join(lines)


def write_sweep(root: Path) -> None:
    """A 3-run sweep over models, as `cnnbench train -m model=...` leaves it: 3 classes, one epoch."""
    for model, params, macs, err, speed in (("lenet5", 61_706, 416_520, 0.1516, 12_345.6),
                                            ("resnet20", 272_474, 41_000_000, 0.0912, 6_172.8),
                                            ("vgg11", 9_231_114, 153_000_000, 0.0871, 4_115.2)):
        write_run(root, f"model={model}", model=model, dataset="synthetic", params=params, trainable_params=params,
                  macs=macs, flops=2 * macs, top1_err=err, top5_err=0.0, num_classes=3, input_shape=[1, 32, 32],
                  peak_memory_kind="process_peak_rss", train_images_per_s=speed, epochs=1,
                  env={"device": "cpu", "device_name": "x86_64", "threads": 2, "cpus": 2, "load_start": 0.52},
                  config=config(model), history=history([0.5], [err]))


@pytest.mark.parametrize("columns", [80, 120])
def test_compare_fits_the_terminal(tmp_path, columns):
    sweep = tmp_path / "outputs" / "sweeps" / "three"
    write_sweep(sweep)

    out = in_terminal(["-m", "cnnbench", "compare", str(sweep)], columns, tmp_path)

    lines = out.splitlines()
    written = f"wrote into {sweep}{os.sep}"
    assert written in lines  # the folder, whole on its own line however long
    assert_fits([line for line in lines if line != written], columns)
    for number in ("61,706", "272,474", "9,231,114", "0.00042", "0.041", "0.153", "12,346", "6,173", "4,115",
                   "15.16", "9.12", "8.71"):
        assert re.search(rf"│ +{re.escape(number)} │", out), number  # a cell of its own, whole
    for run in ("model=lenet5", "model=resnet20", "model=vgg11"):
        assert f"│ {run} " in out
    said = " ".join(out.split())
    # the same for every run: said once, above the table
    assert "all runs: dataset=synthetic, optimizer=sgd, seed=0, input=1x32x32, device=x86_64, threads=2," in said
    assert "│ synthetic" not in out and "│ completed" not in out
    assert "top-3" in out and "top-5" not in out  # 3 classes: the top-5 error is the top-3 error
    if columns == 80:
        assert ("left out to fit 80 columns: act MB/img, peak mem MB (--columns brings them back: "
                "activation_bytes, peak_memory_bytes)") in said
    else:
        assert "left out" not in said and "act MB/img" in said and "300.0 RSS" not in said  # 512.0 RSS
        assert re.search(r"│ +512\.0 RSS │", out)


@pytest.mark.parametrize("columns", [80, 120])
def test_models_fits_the_terminal(tmp_path, columns):
    out = in_terminal(["-m", "cnnbench", "models", "[alm]*"], columns, tmp_path)

    lines = out.splitlines()
    assert_fits(lines, columns)
    for name, params in (("lenet5", "61,706"), ("alexnet", "62,378,344"), ("alexnet_tv", "61,100,840"),
                         ("mobilenet_v1", "4,231,976"), ("mobilenet_v2", "3,504,872")):
        assert re.search(rf"│ {name} +│.*│ +{params} │", out), name  # the name and its count on one line, whole
    # Titles would wrap into a sliver of a column: they are listed below the table, each once.
    table = out.split("papers:")[0]
    assert "Krizhevsky" not in table and "papers:" in out
    assert sum("Krizhevsky, Sutskever & Hinton" in line for line in lines) == 1
    if columns == 80:
        assert "left out to fit 80 columns: family" in " ".join(out.split())
    else:
        assert "│ mobilenet " in out and "left out" not in out  # the family fits at 120


def test_train_summary_prints_the_run_directory_whole(tmp_path):
    run_dir = tmp_path / "outputs" / "sweeps" / "three" / "model=lenet5,optimizer.lr=0.01,seed=0,trainer.epochs=1"
    out = in_terminal(["-m", "cnnbench", "train", *TINY, "trainer.checkpoint=false", f"hydra.run.dir='{run_dir}'"],
                      80, tmp_path)

    summary = out[out.index("lenet5 on synthetic — completed"):].splitlines()  # the log above is not a table
    assert f"run directory: {run_dir}" in summary  # one line, whole: copied as one string
    assert_fits([line for line in summary if not line.startswith("run directory: ")], 80)
    assert "top-1 / top-5 error" in out  # 10 classes

    # The same summary at 120 columns, and for a 3-class run, whose top-5 error is its top-3 error.
    results = json.loads((run_dir / "results.json").read_text())
    results["num_classes"] = 3
    (tmp_path / "three.json").write_text(json.dumps(results))
    code = "import json, sys; from cnnbench.cli import _summary; _summary(json.load(open(sys.argv[1])))"
    wide = in_terminal(["-c", code, str(tmp_path / "three.json")], 120, tmp_path).splitlines()
    assert_fits([line for line in wide if not line.startswith("run directory: ")], 120)
    assert f"run directory: {run_dir}" in wide
    assert any("top-1 / top-3 error" in line for line in wide) and f"{results['params']:,}" in "".join(wide)
