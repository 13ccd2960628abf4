"""eae.py: the Kozachenko-Leonenko estimator against scipy and closed forms, Eq. (2)'s value
and the direction it moves the codes, the affine-free latent batch norm, the L2 scope, and
a toy run in this process in which the entropy term raises the codes' entropy."""
import dataclasses
import math

import numpy as np
import pytest
import torch
import torch.nn as nn
from scipy import spatial, special, stats

import common
import eae
from conftest import cli_error, log_records, train


def scipy_entropy(z: np.ndarray, k: int = 1) -> float:
    """Kozachenko-Leonenko in float64 from a k-d tree: psi(N) - psi(k) + log V_d +
    (d/N) sum log eps_i,k."""
    n, d = z.shape
    distances, _ = spatial.cKDTree(z).query(z, k=k + 1)  # itself first
    log_volume = d / 2 * np.log(np.pi) - special.gammaln(d / 2 + 1)
    log_distances = np.log(distances[:, k])
    return special.digamma(n) - special.digamma(k) + log_volume + d * np.mean(log_distances)


@pytest.mark.parametrize("d", [2, 4])
def test_entropy_of_standard_normal_samples(d):
    # Tolerance 0.1 nats at N = 4000: seeds 0-4 gave errors of at most 0.05.
    z = torch.randn(4000, d, generator=torch.Generator().manual_seed(0))
    exact = stats.multivariate_normal(np.zeros(d), np.eye(d)).entropy()
    assert eae.normal_entropy(d) == pytest.approx(exact, rel=1e-12)
    assert eae.knn_entropy(z).item() == pytest.approx(exact, abs=0.1)


@pytest.mark.parametrize("k", [1, 3])
def test_entropy_equals_a_kd_tree_computation(k):
    z = torch.randn(300, 5, generator=torch.Generator().manual_seed(1)) * 2.0
    assert eae.knn_entropy(z, k).item() == pytest.approx(scipy_entropy(z.double().numpy(), k),
                                                         abs=1e-4)


def test_near_duplicate_codes_at_d_128_match_float64():
    """Distances between near neighbours at d = 128 (norms ~11, pairs 1e-3 apart): the
    estimate in fp32 equals the float64 one; the Gram expansion was off by ~1 nat here."""
    g = torch.Generator().manual_seed(4)
    base = torch.randn(50, 128, generator=g, dtype=torch.float64)
    z = torch.cat([base, base[:25] + 1e-4 * torch.randn(25, 128, generator=g,
                                                         dtype=torch.float64)])
    expected = scipy_entropy(z.numpy())
    assert eae.knn_entropy(z.float()).item() == pytest.approx(expected, abs=0.05)


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


def test_loss_value_is_reconstruction_minus_lambda_entropy_plus_l2():
    """Eq. (2) + L2, from numpy and scipy: sum over pixels of the squared error (batch
    mean) - lambda H_hat + lambda_L2 L2."""
    g = torch.Generator().manual_seed(5)
    logits, x = torch.randn(20, 1, 8, 8, generator=g), torch.rand(20, 1, 8, 8, generator=g)
    z, l2 = torch.randn(20, 3, generator=g), torch.tensor(7.0)
    args = eae.Args(reg_weight=0.3, l2=0.01)
    image = 1 / (1 + np.exp(-logits.double().numpy()))
    rec = ((image - x.double().numpy()) ** 2).reshape(20, -1).sum(1).mean()
    expected = rec - 0.3 * scipy_entropy(z.double().numpy()) + 0.01 * 7.0
    assert eae.eae_loss(logits, x, z, l2, args)["loss"].item() == pytest.approx(expected, rel=1e-5)


def mean_log_nearest_distance(z: torch.Tensor) -> float:
    distances, _ = spatial.cKDTree(z.double().numpy()).query(z.double().numpy(), k=2)
    return float(np.mean(np.log(distances[:, 1])))


def test_raising_lambda_pushes_the_codes_apart():
    """The sign: the part of the loss's gradient that lambda adds, followed downhill, moves
    every code's nearest neighbour further away on average and raises the entropy."""
    g = torch.Generator().manual_seed(6)
    logits, x = torch.randn(30, 1, 8, 8, generator=g), torch.rand(30, 1, 8, 8, generator=g)
    z0 = torch.randn(30, 4, generator=g)

    def gradient(reg_weight):
        z = z0.clone().requires_grad_()
        args = eae.Args(reg_weight=reg_weight, l2=0.0)
        eae.eae_loss(logits, x, z, torch.zeros(()), args)["loss"].backward()
        return z.grad

    step = z0 - 1e-3 * (gradient(1.0) - gradient(0.0))  # descent on lambda's part
    assert mean_log_nearest_distance(step) > mean_log_nearest_distance(z0) + 1e-4
    assert scipy_entropy(step.double().numpy()) > scipy_entropy(z0.double().numpy())


def test_latent_batch_norm_has_no_affine_parameters():
    """Sec. 3: over a training batch each code unit has mean 0 and variance v / (v + eps)."""
    model = eae.EAE(eae.Args(filters=4, latent_dim=6), 3, 32).train()
    x = torch.rand(50, 3, 32, 32)
    _, z = model(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(6), rtol=0, atol=1e-5)
    raw = model.encoder[:2](x)  # the code before the batch norm
    variance, eps = raw.var(0, unbiased=False), model.encoder[2].eps
    torch.testing.assert_close(z.var(0, unbiased=False), variance / (variance + eps), rtol=0,
                               atol=1e-4)
    assert isinstance(model.encoder[2], nn.BatchNorm1d) and not model.encoder[2].affine


def test_l2_penalises_the_decoders_transposed_convs_only():
    """As RAE-L2 on CIFAR-10: gradient 2 W on the three transposed convs' kernels, none on
    the decoder's first Linear, biases, batch norms or the encoder."""
    model = eae.EAE(eae.Args(filters=4, latent_dim=6), 3, 32)
    eae.decoder_l2(model).backward()
    touched = {tuple(p.shape) for p in model.parameters() if p.grad is not None}
    assert touched == {(32, 16, 4, 4), (16, 8, 4, 4), (8, 3, 4, 4)}
    for p in model.parameters():
        if p.grad is not None:
            torch.testing.assert_close(p.grad, 2 * p.detach())


def test_regulariser_per_data_set():
    """L2 3e-3 for CIFAR-10 only, spectral norm on every layer for CelebA only."""
    resolved = {d: eae.paper_regulariser(eae.Args(dataset=d))
                for d in ("cifar10", "celeba", "mnist")}
    assert [(r.l2, r.spectral_norm) for r in resolved.values()] == [
        (3e-3, "none"), (0.0, "all"), (0.0, "none")]
    typed = eae.paper_regulariser(eae.Args(dataset="mnist", l2=0.1, spectral_norm="decoder"))
    assert (typed.l2, typed.spectral_norm) == (0.1, "decoder")


def test_exponential_learning_rate_decay():
    args = eae.Args(lr=5e-4, lr_decay=0.97)
    assert [eae.learning_rate(args, e) for e in range(4)] == pytest.approx(
        [5e-4, 5e-4 * 0.97, 5e-4 * 0.97 ** 2, 5e-4 * 0.97 ** 3])


def test_the_entropy_term_raises_the_codes_entropy(tmp_path):
    """The same toy run with and without the entropy term (same seed): with it, the batch's
    entropy estimate ends higher than with the batch norm alone."""
    flags = dict(dataset="digits", filters=4, latent_dim=4, epochs=2, batch_size=50,
                 gmm_components=1)
    bn_only = log_records(train(eae, tmp_path / "bn", reg_weight=0.0, **flags))[-1]
    folder = train(eae, tmp_path / "h", reg_weight=1.0, **flags)
    entropic = log_records(folder)[-1]
    assert entropic["entropy"] > bn_only["entropy"] + 0.05, (bn_only, entropic)
    assert entropic["entropy_gap"] == pytest.approx(eae.normal_entropy(4) - entropic["entropy"])
    # The ex-post MVG is fitted to the codes of the training images, batch norms in eval mode.
    run = eae.load_run(folder)
    with torch.no_grad():
        codes = run.model.eval().encoder(common.load_images("digits", "", "train").float() / 255)
    torch.testing.assert_close(run.samplers["mvg"].means[0].float(), codes.mean(0), rtol=0,
                               atol=1e-5)


def test_too_few_codes_per_process_for_k(tmp_path, capsys):
    last = cli_error(eae, ["--dataset", "fake", "--k", "5", "--batch-size", "4", "--device",
                           "cpu", "--out-dir", tmp_path], capsys)
    assert "--k 5 needs batches of more than 5 codes" in last


@pytest.mark.parametrize("changes", [dict(reg_weight=0.0), dict(l2=0.0), dict(k=3),
                                     dict(latent_dim=64), dict(lr_decay=0.99),
                                     dict(spectral_norm="all"), dict(batch_size=128)])
def test_paper_figure_only_for_the_papers_setting(changes):
    resolved = dataclasses.asdict(eae.paper_regulariser(eae.Args()))
    assert eae.paper_fid(resolved)["normal"] == 85.26 and eae.paper_fid(resolved, "train") == {}
    assert eae.paper_fid({**resolved, **changes}) == {}
    celeba = dataclasses.asdict(eae.paper_regulariser(eae.Args(
        dataset="celeba", latent_dim=64, lr=1e-3, epochs=70)))
    assert eae.paper_fid(celeba)["gmm"] == 39.76
