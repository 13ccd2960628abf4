"""vae.py: the KL, both reconstruction forms and the negative ELBO against
torch.distributions and numpy; the reparameterisation; and a toy run in this process
showing that a larger beta buys a smaller KL."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, Normal, kl_divergence

import vae
from conftest import log_records, train


def gaussian_posterior(seed=0, batch=5, d=7):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, d, generator=g), torch.randn(batch, d, generator=g) * 0.5


def test_kl_equals_torch_distributions():
    mu, log_sigma = gaussian_posterior()
    expected = kl_divergence(Normal(mu, log_sigma.exp()), Normal(0.0, 1.0)).sum(1)
    torch.testing.assert_close(vae.kl_divergence(mu, log_sigma), expected, rtol=1e-5, atol=1e-5)


def test_cv_vae_kl_is_half_squared_mean_norm_plus_a_constant():
    """With sigma fixed at 0.7 the KL is ||mu||^2 / 2 + d/2 (s^2 - 1 - log s^2): the CV-VAE's
    regulariser on the code, and the encoder has no sigma head."""
    args = vae.Args(filters=4, latent_dim=6, fixed_std=0.7)
    model = vae.VAE(args, 3, 32).eval()
    mu, log_sigma = model.encoder.moments(torch.rand(4, 3, 32, 32))
    assert torch.allclose(log_sigma, torch.full_like(mu, math.log(0.7)))
    constant = 0.5 * 6 * (0.49 - 1 - math.log(0.49))
    torch.testing.assert_close(vae.kl_divergence(mu, log_sigma),
                               0.5 * mu.square().sum(1) + constant, rtol=1e-5, atol=1e-5)
    assert model.encoder.heads.out_features == 6


def test_bce_reconstruction_is_the_bernoulli_nll_per_pixel():
    g = torch.Generator().manual_seed(1)
    logits, x = torch.randn(3, 3, 8, 8, generator=g) * 2, torch.rand(3, 3, 8, 8, generator=g)
    expected = -Bernoulli(logits=logits, validate_args=False).log_prob(x).mean()
    got = vae.reconstruction_loss(logits, x, "bce")
    assert got.item() == pytest.approx(expected.item(), rel=1e-6)


def test_gaussian_reconstruction_sums_positions_and_averages_channels():
    """Ghosh et al.'s form: per image, sum over the H x W positions of the channel-mean
    squared error; then the mean over the batch (numpy, written apart from the code)."""
    g = torch.Generator().manual_seed(2)
    logits, x = torch.randn(4, 3, 8, 8, generator=g), torch.rand(4, 3, 8, 8, generator=g)
    image = 1 / (1 + np.exp(-logits.double().numpy()))
    per_image = ((image - x.double().numpy()) ** 2).sum(axis=(1, 2, 3)) / 3
    got = vae.reconstruction_loss(logits, x, "gaussian")
    assert got.item() == pytest.approx(per_image.mean(), rel=1e-6)


@pytest.mark.parametrize("form", ["bce", "gaussian"])
def test_negative_elbo_adds_beta_times_the_kl(form):
    g = torch.Generator().manual_seed(3)
    logits, x = torch.randn(5, 1, 8, 8, generator=g), torch.rand(5, 1, 8, 8, generator=g)
    mu, log_sigma = gaussian_posterior(4)
    kl = kl_divergence(Normal(mu, log_sigma.exp()), Normal(0.0, 1.0)).sum(1).mean()
    if form == "bce":
        rec = -Bernoulli(logits=logits, validate_args=False).log_prob(x).mean()
    else:
        rec = (torch.sigmoid(logits) - x).square().sum((1, 2, 3)).mean()  # one channel
    for beta in (0.0, 0.01, 2.0):
        terms = vae.vae_loss(logits, x, mu, log_sigma, form, beta)
        assert terms["loss"].item() == pytest.approx((rec + beta * kl).item(), rel=1e-5)


def test_decoder_sees_the_reparameterised_code():
    """z = mu + sigma * eps with eps ~ N(0, I): the decoder's input, rebuilt from the same
    random stream."""
    model = vae.VAE(vae.Args(filters=4, latent_dim=6), 3, 32).eval()
    x = torch.rand(4, 3, 32, 32)
    seen = []
    model.decoder.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    torch.manual_seed(7)
    _, mu, log_sigma = model(x)
    torch.manual_seed(7)
    eps = torch.randn(4, 6)
    torch.testing.assert_close(seen[0], mu + log_sigma.exp() * eps)
    assert log_sigma.abs().max() <= 5  # bounded: 5 tanh(.)


def test_default_kl_weights():
    """beta = 0.01 (Daly et al.), and Ghosh et al.'s official per-data-set weights."""
    assert vae.kl_weight(vae.Args()) == 0.01
    assert vae.kl_weight(vae.Args(loss="gaussian")) == 0.024
    assert vae.kl_weight(vae.Args(loss="gaussian", fixed_std=0.7, dataset="mnist")) == 0.039
    assert vae.kl_weight(vae.Args(kl_weight=0.5)) == 0.5


def test_a_larger_beta_gives_a_smaller_kl(tmp_path):
    """The same toy run at beta 1e-5 and 1: the KL that training ends with falls with
    beta, the reconstruction pays for it."""
    flags = dict(dataset="digits", filters=4, latent_dim=4, epochs=2, batch_size=16,
                 gmm_components=1, warmup_lr=3e-3, lr=0.3)  # epoch 2 at 0.3 x 0.01
    small = log_records(train(vae, tmp_path / "small", kl_weight=1e-5, **flags))[-1]
    large = log_records(train(vae, tmp_path / "large", kl_weight=1.0, **flags))[-1]
    assert large["kl"] < 0.75 * small["kl"], (small, large)
    assert large["reconstruction"] > small["reconstruction"]


@pytest.mark.parametrize("changes", [dict(loss="gaussian"), dict(kl_weight=0.05),
                                     dict(fixed_std=0.7), dict(dataset="mnist"),
                                     dict(epochs=70), dict(latent_dim=100)])
def test_paper_figure_only_for_the_papers_setting(changes):
    args = dataclasses.asdict(vae.Args())
    assert vae.paper_fid(args)["gmm"] == 94.21 and vae.paper_fid(args, "train") == {}
    assert vae.paper_fid({**args, "filters": 128, "latent_dim": 384})["gmm"] == 80.01
    assert vae.paper_fid({**args, **changes}) == {}
