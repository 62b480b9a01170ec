"""The default run on the real data: LeNet-5 learns Fashion-MNIST. Runs where the data is
installed (`apt-get install dataset-fashion-mnist`, as .ci/run does)."""

from pathlib import Path

import pytest

from conftest import cnnbench, read_results

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not DEBIAN.is_dir(),
                    reason="Fashion-MNIST is not installed (apt-get install dataset-fashion-mnist)")
def test_lenet5_one_epoch_on_fashion_mnist(tmp_path):
    run_dir = tmp_path / "run"
    r = cnnbench("train", "trainer.epochs=1", f"hydra.run.dir={run_dir}", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    res = read_results(run_dir)
    assert res["data_source"] == str(DEBIAN) and res["val_images"] == 10_000
    assert res["train_images"] == 60_000 and res["train_images_used"] == 59_904  # whole batches of 128
    assert "Training on 59,904 of the 60,000 training images each epoch: batches are whole" in r.stdout
    assert res["input_shape"] == [1, 32, 32]
    assert res["top1_err"] < 0.15
