"""dae.py end to end as a user runs it, its pieces, and its errors for user mistakes."""
import json
import math

import pytest
import torch
from PIL import Image

import common
import dae
from conftest import run_script


def test_learning_rate_schedule():
    args = dae.Args(epochs=100)
    rates = [common.daly_learning_rate(e, args.epochs, args.lr, args.warmup_lr) for e in range(100)]
    assert rates[0] == 1e-4  # warm-up epoch
    assert set(rates[1:33]) == {1e-3}
    assert all(math.isclose(r, 1e-4) for r in rates[33:66])
    assert all(math.isclose(r, 1e-5) for r in rates[66:])


def test_reconstruction_loss_is_binary_cross_entropy():
    logits, x = torch.randn(2, 3, 4, 4), torch.rand(2, 3, 4, 4)
    p = torch.sigmoid(logits)
    expected = -(x * p.log() + (1 - x) * (1 - p).log()).mean()
    assert torch.allclose(dae.reconstruction_loss(logits, x), expected, atol=1e-6)


def test_digits_run_end_to_end(tmp_path):
    result = run_script("dae.py", "--dataset", "digits", "--filters", "8", "--latent-dim", "8",
                        "--epochs", "4", "--batch-size", "32", "--lr", "2e-3",
                        "--out-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    (folder,) = tmp_path.iterdir()
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    assert all(math.isfinite(r["bce"]) and r["images_per_sec"] > 0 for r in log)
    assert log[-1]["bce"] < log[0]["bce"] - 0.05  # it learns
    assert json.loads((folder / "args.json").read_text())["latent_dim"] == 8
    for name in ("reconstructions", "samples_normal", "samples_mvg", "samples_gmm"):
        with Image.open(folder / f"{name}.png") as grid:
            assert grid.size[0] == 8 * 33 + 1  # 8 images of 32 px per row, 1 px padding

    run = dae.load_run(folder)
    assert set(run.samplers) == {"normal", "mvg", "gmm"}
    images = dae.sample(run, 5, "gmm", seed=1)
    assert images.shape == (5, 1, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, dae.sample(run, 5, "gmm", seed=1))
    codes = dae.encode(run, images)
    assert codes.shape == (5, 8) and dae.decode(run, codes).shape == (5, 1, 32, 32)
    with pytest.raises(common.UserError, match="no 'lde' sampler"):
        dae.sample(run, 1, "lde")


def assert_one_line_error(result, *words):
    assert result.returncode != 0
    assert "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(("error:", "dae.py: error:")), result.stderr
    for word in words:
        assert word in last, result.stderr


@pytest.mark.parametrize("argv, words", [
    (["--epochs", "0"], ["--epochs", "at least 1"]),
    (["--latent-norm", "wn"], ["--latent-norm", "invalid choice"]),
    (["--depth", "3", "3"], ["--depth", "4 values"]),
    (["--filters", "wide"], ["--filters", "invalid int"]),
    (["--device", "cuda"], ["CUDA is not available"]),
    (["--batch-size", "5000"], ["larger than the 1500"]),
    (["--image-size", "40"], ["multiple of 16"]),
])
def test_bad_flags(argv, words, tmp_path):
    result = run_script("dae.py", "--dataset", "digits", "--filters", "4", "--epochs", "1",
                        "--out-dir", tmp_path, *argv)
    assert_one_line_error(result, *words)


def test_missing_and_empty_data_folder(tmp_path):
    missing = run_script("dae.py", "--dataset", "folder", "--data-root", tmp_path / "nope")
    assert_one_line_error(missing, "does not exist", "--data-root")
    (tmp_path / "empty").mkdir()
    empty = run_script("dae.py", "--dataset", "folder", "--data-root", tmp_path / "empty")
    assert_one_line_error(empty, "holds no images")


def test_resume_without_checkpoint(tmp_path):
    assert_one_line_error(run_script("dae.py", "--resume", tmp_path), "no checkpoint.pt")


@pytest.mark.parametrize("dataset", ["cifar10", "mnist"])
def test_torchvision_data_missing_offline(dataset, tmp_path):
    result = run_script("dae.py", "--dataset", dataset, "--data-root", tmp_path / "data")
    assert_one_line_error(result, "could not be downloaded", "--data-root",
                          str(tmp_path / "data"))
