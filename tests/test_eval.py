"""eval.py and the evaluation helpers of common.py, offline: the real pytorch-fid loading
code runs on random-initialised Inception weights put where its loader looks."""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image

import common
from conftest import run_eval, run_script


@pytest.fixture
def inception(torch_home, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    return common.Inception()


def random_covariance(d, g):
    a = torch.randn(d, 2 * d, generator=g, dtype=torch.float64)
    return a @ a.T / (2 * d) + 0.1 * torch.eye(d, dtype=torch.float64)


def test_frechet_distance_equals_pytorch_fid():
    from pytorch_fid.fid_score import calculate_frechet_distance

    g = torch.Generator().manual_seed(0)
    for d in (2, 16, 64):
        mu1, mu2 = torch.randn(d, generator=g, dtype=torch.float64), torch.zeros(d, dtype=torch.float64)
        s1, s2 = random_covariance(d, g), random_covariance(d, g)
        ours = common.frechet_distance(mu1, s1, mu2, s2)
        theirs = calculate_frechet_distance(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy())
        assert ours == pytest.approx(theirs, rel=1e-6)


def test_frechet_distance_closed_form_for_diagonal_gaussians():
    mu1, mu2 = torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0.0, 2.5, -1.0])
    var1, var2 = torch.tensor([1.0, 4.0, 0.25]), torch.tensor([9.0, 1.0, 0.25])
    expected = ((mu1 - mu2) ** 2).sum() + ((var1.sqrt() - var2.sqrt()) ** 2).sum()
    got = common.frechet_distance(mu1, torch.diag(var1), mu2, torch.diag(var2))
    assert got == pytest.approx(expected.item(), rel=1e-10)


def test_inception_score_bounds():
    same = torch.zeros(100, 10)
    same[:, 3] = 50.0  # every image: class 3, confidently
    assert common.inception_score(same)[0] == pytest.approx(1.0, abs=1e-9)
    k = 5
    spread = torch.full((10 * k * 4, 10), -50.0)
    spread[torch.arange(len(spread)), torch.arange(len(spread)) % k] = 50.0
    mean, std = common.inception_score(spread)
    assert mean == pytest.approx(k, rel=1e-6) and std == pytest.approx(0, abs=1e-6)


def test_precision_recall():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(300, 8, generator=g)
    assert common.precision_recall(real, real.clone(), batch=64) == (1.0, 1.0)
    far = torch.randn(300, 8, generator=g) + 100.0
    precision, recall = common.precision_recall(real, far, batch=64)
    assert precision == 0.0 and recall == 0.0
    half = torch.cat([real[:150], far[:150]])  # half the fakes fall on the real data
    precision, _ = common.precision_recall(real, half, batch=64)
    assert 0.45 <= precision <= 0.55


def write_pngs(folder, images):
    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, image in enumerate(images):
        files.append(folder / f"{i:03d}.png")
        Image.fromarray(image.permute(1, 2, 0).numpy()).save(files[-1])
    return files


def test_features_equal_pytorch_fid_get_activations(inception, tmp_path):
    from pytorch_fid.fid_score import get_activations
    from pytorch_fid.inception import InceptionV3

    images = common.load_images("fake", "", "test")[:6]  # uint8 [6, 3, 32, 32]
    files = write_pngs(tmp_path, images)
    theirs = get_activations(files, InceptionV3([3]), batch_size=3, num_workers=0)
    ours, logits = common.inception_outputs(inception, [images.float() / 255])
    assert ours.shape == (6, 2048) and logits.shape == (6, 1008)
    scale = np.abs(theirs).max()
    assert 1e-2 < scale < 1e3 and ours.std(0).mean() > 1e-3 * scale  # tells images apart
    assert np.allclose(ours.numpy(), theirs, rtol=1e-4, atol=1e-5 * scale)


def test_missing_inception_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(common.UserError) as error:
        common.Inception()
    message = str(error.value)
    assert common.INCEPTION_FILE in message and str(tmp_path / "hub" / "checkpoints") in message


@pytest.fixture(scope="module")
def dae_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    result = run_script("dae.py", "--dataset", "digits", "--filters", "4", "--latent-dim", "4",
                        "--epochs", "1", "--batch-size", "64", "--gmm-components", "2",
                        "--data-root", out / "data", "--out-dir", out)
    assert result.returncode == 0, result.stderr
    return next(out.glob("dae-digits-*"))




def test_eval_end_to_end(dae_run, torch_home, tmp_path):
    result = run_eval(torch_home, dae_run, "--num-samples", "12", "--batch-size", "6",
                      "--save-samples", tmp_path / "samples")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((dae_run / "metrics.json").read_text())
    assert list(metrics["columns"]) == ["rec", "normal", "mvg", "gmm", "interp"]
    for column in metrics["columns"].values():
        assert column["n"] == 12 and np.isfinite(column["fid"]) and column["fid"] >= 0
        assert 1.0 <= column["is_mean"] and 0 <= column["precision"] <= 1
    assert metrics["smoke_test"] is True
    lines = result.stdout.splitlines()
    header = next(line for line in lines if line.startswith("| |"))
    assert re.sub(r"\s", "", header) == "||REC|N(0,I)|MVG|GMM|Interp|"
    assert any(line.startswith("| FID |") for line in lines)
    assert "smoke tests only" in result.stdout
    assert len(list((tmp_path / "samples" / "gmm").glob("*.png"))) == 12
    assert list((dae_run.parent / "data" / "fid-stats").glob("digits-test-*-n12.npz"))


def test_fid_of_two_folders_matches_pytorch_fid_features(inception, tmp_path, torch_home):
    from pytorch_fid.fid_score import get_activations
    from pytorch_fid.inception import InceptionV3

    images = common.load_images("fake", "", "train")[:16]
    a = write_pngs(tmp_path / "a", images[:8])
    b = write_pngs(tmp_path / "b", images[8:])
    net = InceptionV3([3])
    stats = [(torch.from_numpy(f.mean(0)), torch.from_numpy(np.cov(f, rowvar=False)))
             for f in (get_activations(files, net, 4, num_workers=0) for files in (a, b))]
    expected = common.frechet_distance(*stats[0], *stats[1])
    result = run_eval(torch_home, "--fid", tmp_path / "a", tmp_path / "b", "--device", "cpu")
    assert result.returncode == 0, result.stderr
    assert float(result.stdout.split("FID:")[1]) == pytest.approx(expected, rel=1e-4)
    same = run_eval(torch_home, "--fid", tmp_path / "a", tmp_path / "a")
    # Zero up to the rounding that sqrt amplifies on a rank-7 covariance in 2048-d.
    assert abs(float(same.stdout.split("FID:")[1])) < 1e-4 * stats[0][1].trace().item()


def assert_one_line_error(result, *words):
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert "error:" in last, result.stderr
    for word in words:
        assert word in last, result.stderr


def test_bad_input(dae_run, torch_home, tmp_path):
    assert_one_line_error(run_eval(torch_home, tmp_path), "no checkpoint.pt")
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    assert_one_line_error(run_eval(torch_home, tmp_path), "could not be read")
    assert_one_line_error(run_eval(torch_home, dae_run, "--samplers", "lde", "--num-samples", "4"),
                          "no sampler lde", "gmm")
    assert_one_line_error(run_eval(torch_home, dae_run, "--num-samples", "1"),
                          "--num-samples", "at least 2")
    assert_one_line_error(run_eval(tmp_path / "empty_home", dae_run, "--num-samples", "4"),
                          common.INCEPTION_FILE, str(tmp_path / "empty_home" / "hub"))
    assert_one_line_error(run_eval(torch_home, "--fid", tmp_path), "two folders")
    assert_one_line_error(run_eval(torch_home), "give a run folder")
