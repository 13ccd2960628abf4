"""eae.py: the Kozachenko-Leonenko estimator, the latent batch norm, end to end."""
import json
import math

import numpy as np
import pytest
import torch
from scipy import spatial, special, stats

import eae
from conftest import run_eval, run_script


@pytest.mark.parametrize("d", [2, 4])
def test_entropy_of_standard_normal_samples(d):
    # Tolerance 0.1 nats at N = 4000: seeds 0-4 gave errors of at most 0.05.
    z = torch.randn(4000, d, generator=torch.Generator().manual_seed(0))
    exact = stats.multivariate_normal(np.zeros(d), np.eye(d)).entropy()
    assert eae.normal_entropy(d) == pytest.approx(exact, rel=1e-12)
    assert eae.knn_entropy(z).item() == pytest.approx(exact, abs=0.1)


@pytest.mark.parametrize("k", [1, 3])
def test_entropy_equals_an_independent_computation(k):
    z = torch.randn(300, 5, generator=torch.Generator().manual_seed(1)) * 2.0
    n, d = z.shape
    distances, _ = spatial.cKDTree(z.numpy()).query(z.numpy(), k=k + 1)  # itself first
    log_volume = d / 2 * np.log(np.pi) - special.gammaln(d / 2 + 1)
    expected = (special.digamma(n) - special.digamma(k) + log_volume
                + d * np.mean(np.log(distances[:, k])))
    assert eae.knn_entropy(z, k).item() == pytest.approx(expected, abs=1e-4)


def test_scaling_adds_d_log_s():
    z = torch.randn(500, 8, generator=torch.Generator().manual_seed(2))
    for s in (0.5, 3.0):
        shift = eae.knn_entropy(s * z).item() - eae.knn_entropy(z).item()
        assert shift == pytest.approx(8 * math.log(s), abs=1e-3)


def test_gradients_finite_with_duplicated_codes():
    z = torch.randn(16, 4, generator=torch.Generator().manual_seed(3))
    z = torch.cat([z, z[:4]]).requires_grad_()  # four codes appear twice
    entropy = eae.knn_entropy(z)
    entropy.backward()
    assert torch.isfinite(entropy) and torch.isfinite(z.grad).all()


def test_latent_batch_norm_moments_and_l2_scope():
    args = eae.Args(filters=4, latent_dim=6)
    model = eae.EAE(args, 3, 32).train()
    x = torch.rand(50, 3, 32, 32)
    _, z = model(x)
    assert torch.allclose(z.mean(0), torch.zeros(6), atol=1e-5)
    raw = model.encoder.to_latent(model.encoder.convs(x * 2 - 1))  # the code before the BN
    variance = raw.var(0, unbiased=False)
    eps = model.encoder.latent_norm.eps
    assert torch.allclose(z.var(0, unbiased=False), variance / (variance + eps), atol=1e-4)
    assert not list(model.encoder.latent_norm.parameters())  # no affine scale or shift
    decoder_kernels = [p for n, p in model.decoder.named_parameters() if p.ndim > 1]
    expected = sum(p.square().sum() for p in decoder_kernels)
    assert torch.allclose(eae.decoder_l2(model), expected)
    assert len(decoder_kernels) == 4  # linear, two transposed convs, output conv


@pytest.mark.parametrize("reg_weight", ["0.05", "0"])
def test_digits_run_end_to_end(reg_weight, tmp_path, torch_home):
    result = run_script("eae.py", "--dataset", "digits", "--filters", "8", "--latent-dim", "8",
                        "--epochs", "3", "--batch-size", "50", "--gmm-components", "2",
                        "--reg-weight", reg_weight, "--out-dir", tmp_path / "runs",
                        "--data-root", tmp_path / "data")
    assert result.returncode == 0, result.stderr
    (folder,) = (tmp_path / "runs").iterdir()
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3]
    for r in log:
        assert math.isfinite(r["reconstruction"]) and math.isfinite(r["entropy"])
        assert r["entropy_gap"] == pytest.approx(eae.normal_entropy(8) - r["entropy"])
    assert log[-1]["reconstruction"] < log[0]["reconstruction"]
    assert log[1]["lr"] == pytest.approx(5e-4 * 0.97)
    for name in ("reconstructions", "samples_normal", "samples_mvg", "samples_gmm"):
        assert (folder / f"{name}.png").stat().st_size > 0
    if reg_weight == "0.05":
        evaluated = run_eval(torch_home, folder, "--num-samples", "8", "--batch-size", "8",
                             "--samplers", "normal")
        assert evaluated.returncode == 0, evaluated.stderr
        metrics = json.loads((folder / "metrics.json").read_text())
        assert list(metrics["columns"]) == ["rec", "normal", "interp"]


def test_too_few_codes_for_k(tmp_path):
    result = run_script("eae.py", "--dataset", "fake", "--k", "5", "--batch-size", "4",
                        "--out-dir", tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert "--k 5 needs a batch of more than 5 codes" in result.stderr.strip().splitlines()[-1]
