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
import common
from conftest import RUN_OPTIONS, log_records, recorded, train


def test_defaults_are_daly_et_als_baseline():
    """Daly et al.'s beta-VAE (Table 2): the DAE's backbone, schedule and GMM, BCE plus
    beta = 0.01 (the -1 default) times the KL, a learned sigma."""
    paper = dict(dataset="cifar10", image_size=0, crop=0, loss="bce", kl_weight=-1.0,
                 fixed_std=0.0, filters=128, depth=[1], latent_dim=128, epochs=100,
                 schedule_epochs=0, batch_size=128, lr=1e-3, warmup_lr=1e-4, gmm_components=10)
    assert dataclasses.asdict(vae.Args()) == {**paper, **RUN_OPTIONS}


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
    heads = model.encoder.heads  # the official log sigma: 5 tanh of the second d outputs
    with torch.no_grad():
        h = model.encoder.features(x) @ heads.weight[6:].T + heads.bias[6:]
    torch.testing.assert_close(log_sigma, 5 * torch.tanh(h), rtol=1e-5, atol=1e-6)


def test_codes_are_the_encoder_means(tmp_path):
    """encode gives mu, the first d outputs of the encoder's last linear layer (computed here
    from its weights): never log sigma, never a sampled z. The ex-post MVG is fitted to the
    means of the training images (the official RAE code fits mu), as REC and Interp use."""
    folder = train(vae, tmp_path, dataset="digits", filters=4, latent_dim=3, epochs=1,
                   batch_size=64, gmm_components=1)
    run = vae.load_run(folder)
    heads = run.model.encoder.heads
    x = common.load_images("digits", "", "train").float() / 255
    with torch.no_grad():
        features = run.model.encoder.features(x)
        mu = features @ heads.weight[:3].T + heads.bias[:3]
        codes = vae.encode(run, x)
    torch.testing.assert_close(codes, mu, rtol=1e-4, atol=1e-5)
    assert torch.equal(codes, vae.encode(run, x))  # deterministic
    assert not vae.encode(run, x).requires_grad  # no graph, even called outside no_grad
    torch.testing.assert_close(run.samplers["mvg"].means[0], mu.double().mean(0), rtol=0,
                               atol=1e-5)
    torch.testing.assert_close(run.samplers["mvg"].covs[0], torch.cov(mu.double().T), rtol=0,
                               atol=1e-5)


def test_the_log_holds_each_epochs_mean_terms(tmp_path, monkeypatch):
    """Per epoch (from 1): the means of its steps' reconstruction and KL terms, and the
    epoch's rate (Daly et al.'s warm-up, then the switched rate); Adam with eps 1e-7."""
    calls = recorded(monkeypatch, vae, "vae_loss")
    folder = train(vae, tmp_path, dataset="digits", filters=4, latent_dim=3, epochs=2,
                   batch_size=400, gmm_components=1)
    log = log_records(folder)
    assert [r["epoch"] for r in log] == [1, 2] and len(calls) == 2 * 3
    for e, record in enumerate(log):
        for name in ("reconstruction", "kl", "loss"):
            mean = sum(t[name].item() for t in calls[3 * e:3 * e + 3]) / 3
            assert record[name] == pytest.approx(mean, rel=1e-5), name
    assert [r["lr"] for r in log] == pytest.approx([1e-4, 1e-5], rel=1e-12)
    checkpoint = common.load_checkpoint(folder)
    adam = checkpoint["optimizer"]["param_groups"][0]
    assert adam["eps"] == 1e-7 and adam["betas"] == (0.9, 0.999)
    tracked = {v.item() for k, v in checkpoint["model"].items() if "num_batches" in k}
    assert tracked == {2 * 3}  # every training step, in train mode, and nothing else


def test_default_kl_weights():
    """beta = 0.01 (Daly et al.), and Ghosh et al.'s official per-data-set embedding_weight
    (configurations/config.py) for the VAE and the CV-VAE (sigma 0.7); typed as typed."""
    assert vae.kl_weight(vae.Args()) == 0.01
    official = {"mnist": (0.312, 0.0195 * 2), "cifar10": (0.024, 9e-4), "celeba": (0.09024, 0.01),
                "digits": (0.024, 9e-4)}  # other data sets: CIFAR-10's
    for dataset, (learned, fixed) in official.items():
        assert vae.kl_weight(vae.Args(loss="gaussian", dataset=dataset)) == learned
        assert vae.kl_weight(vae.Args(loss="gaussian", dataset=dataset, fixed_std=0.7)) == fixed
    assert vae.kl_weight(vae.Args(kl_weight=0.5)) == 0.5
    assert vae.kl_weight(vae.Args(kl_weight=0.0)) == 0.0  # no KL at all


def test_a_larger_beta_gives_a_smaller_kl(tmp_path):
    """The same toy run at beta 1e-5 and 1: the KL that training ends with falls with
    beta, the reconstruction pays for it."""
    flags = dict(dataset="digits", filters=4, latent_dim=4, epochs=2, batch_size=16,
                 gmm_components=1, warmup_lr=3e-3, lr=0.3)  # epoch 2 at 0.3 x 0.01
    small = log_records(train(vae, tmp_path / "small", kl_weight=1e-5, **flags))[-1]
    large = log_records(train(vae, tmp_path / "large", kl_weight=1.0, **flags))[-1]
    assert large["kl"] < 0.75 * small["kl"], (small, large)
    assert large["reconstruction"] > small["reconstruction"]


# Daly et al.'s VAE rows as printed: Table 2 (CIFAR-10, 128 latents) and Table 3 (best
# latent sizes). Data set, filters, latents: Test R, N(z; 0, 1), MVG, GMM.
DALY_VAE_ROWS = """
    cifar10  32   128  79.06  100.1  101.0  94.40
    cifar10  64   128  78.35  99.49  101.0  93.60
    cifar10  128  128  76.20  99.62  101.9  94.21
    cifar10  256  128  93.49  112.0  112.5  108.6
    cifar10  32   256  62.69  96.14  95.77  87.67
    cifar10  32   384  56.07  95.29  95.25  88.77
    cifar10  32   512  52.08  96.59  94.79  89.14
    cifar10  64   384  51.59  89.77  89.92  82.35
    cifar10  64   512  46.01  90.95  89.45  83.06
    cifar10  128  384  46.98  87.29  86.65  80.01
    cifar10  256  512  39.50  82.34  83.45  78.95
    cifar10  256  768  37.27  87.68  85.25  78.91
    celeba   32   768  39.83  54.53  52.10  48.03
    celeba   64   768  38.42  50.34  47.73  43.23
    celeba   128  384  40.04  49.09  49.07  47.30
    celeba   128  768  36.93  50.67  47.70  42.91
"""


def test_paper_figures_are_the_papers_tables():
    for line in DALY_VAE_ROWS.strip().splitlines():
        dataset, filters, latent, *fids = line.split()
        args = {**dataclasses.asdict(vae.Args()), "dataset": dataset, "filters": int(filters),
                "latent_dim": int(latent)}
        expected = dict(zip(("rec", "normal", "mvg", "gmm"), map(float, fids)))
        assert vae.paper_fid(args) == expected, line


@pytest.mark.parametrize("changes", [dict(loss="gaussian"), dict(kl_weight=0.05),
                                     dict(fixed_std=0.7), dict(dataset="mnist"),
                                     dict(epochs=70), dict(latent_dim=100)])
def test_paper_figure_only_for_the_papers_setting(changes):
    args = dataclasses.asdict(vae.Args())
    assert vae.paper_fid(args)["gmm"] == 94.21 and vae.paper_fid(args, "train") == {}
    assert vae.paper_fid({**args, "filters": 128, "latent_dim": 384})["gmm"] == 80.01
    assert vae.paper_fid({**args, **changes}) == {}
