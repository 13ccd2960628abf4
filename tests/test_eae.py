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
from conftest import RUN_OPTIONS, cli_error, log_records, recorded, train


def test_defaults_are_the_papers_cifar10_setting():
    """Ghose et al. (Sec. 5, appendix; Deviations for the values lost in extraction): the RAE
    backbone and batch 100, 128 latents, lambda 0.05, k = 1, L2 for CIFAR-10 (-1: 3e-3) and
    spectral norm for CelebA (auto), Adam 5e-4 decayed by 0.97 per epoch, 100 epochs."""
    paper = dict(dataset="cifar10", image_size=0, crop=0, flip=False, filters=128, depth=[1],
                 latent_dim=128, entropy_weight=0.05, k=1, l2_weight=-1.0, spectral_norm="auto",
                 epochs=100, batch_size=100, lr=5e-4, lr_decay=0.97, gmm_components=10)
    assert dataclasses.asdict(eae.Args()) == {**paper, **RUN_OPTIONS}


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


def test_duplicated_codes_are_1e_minus_6_apart():
    """Deviations: distances enter as 0.5 log(squared distance + 1e-12), so codes that all
    come in identical pairs each have eps = 1e-6: psi(N) - psi(1) + log V_d + d log 1e-6."""
    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(4)).repeat(2, 1)  # N = 10
    log_volume = 1.5 * math.log(math.pi) - special.gammaln(2.5)
    expected = special.digamma(10) - special.digamma(1) + log_volume + 3 * math.log(1e-6)
    assert eae.knn_entropy(z).item() == pytest.approx(expected, rel=1e-5)


def test_loss_value_is_reconstruction_minus_lambda_entropy_plus_l2():
    """Eq. (2) + L2, from numpy and scipy: sum over pixels of the squared error (batch
    mean) - lambda H_hat + lambda_L2 L2."""
    g = torch.Generator().manual_seed(5)
    logits, x = torch.randn(20, 1, 8, 8, generator=g), torch.rand(20, 1, 8, 8, generator=g)
    z, l2 = torch.randn(20, 3, generator=g), torch.tensor(7.0)
    args = eae.Args(entropy_weight=0.3, l2_weight=0.01)
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

    def gradient(weight):
        z = z0.clone().requires_grad_()
        args = eae.Args(entropy_weight=weight, l2_weight=0.0)
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
    assert [(r.l2_weight, r.spectral_norm) for r in resolved.values()] == [
        (3e-3, "none"), (0.0, "all"), (0.0, "none")]
    typed = eae.paper_regulariser(eae.Args(dataset="mnist", l2_weight=0.1,
                                           spectral_norm="decoder"))
    assert (typed.l2_weight, typed.spectral_norm) == (0.1, "decoder")
    off = eae.paper_regulariser(eae.Args(l2_weight=0.0, spectral_norm="none"))  # BN alone
    assert (off.l2_weight, off.spectral_norm) == (0.0, "none")


@pytest.mark.parametrize("where, encoder, decoder", [("none", 0, 0), ("decoder", 0, 4),
                                                     ("all", 5, 4)])
def test_spectral_norm_where_asked(where, encoder, decoder):
    """--spectral-norm decoder: its Linear and three transposed convs; all: also the
    encoder's four convs and the code's Linear (the latent batch norm has no weight)."""
    model = eae.EAE(eae.Args(filters=4, latent_dim=6, spectral_norm=where), 3, 32)
    normalised = lambda m: sum(nn.utils.parametrize.is_parametrized(x)  # noqa: E731
                               for x in m.modules())
    assert (normalised(model.encoder), normalised(model.decoder)) == (encoder, decoder)


def test_exponential_learning_rate_decay():
    args = eae.Args(lr=5e-4, lr_decay=0.97)
    assert [eae.learning_rate(args, e) for e in range(4)] == pytest.approx(
        [5e-4, 5e-4 * 0.97, 5e-4 * 0.97 ** 2, 5e-4 * 0.97 ** 3])


def test_the_entropy_term_raises_the_codes_entropy(tmp_path):
    """The same toy run with and without the entropy term (same seed): with it, the batch's
    entropy estimate ends higher than with the batch norm alone."""
    flags = dict(dataset="digits", filters=4, latent_dim=4, epochs=2, batch_size=50,
                 gmm_components=1)
    bn_only = log_records(train(eae, tmp_path / "bn", entropy_weight=0.0, **flags))[-1]
    folder = train(eae, tmp_path / "h", entropy_weight=1.0, **flags)
    entropic = log_records(folder)[-1]
    assert entropic["entropy"] > bn_only["entropy"] + 0.05, (bn_only, entropic)
    assert entropic["entropy_gap"] == pytest.approx(eae.normal_entropy(4) - entropic["entropy"])
    # The ex-post MVG is fitted to the codes of the training images, batch norms in eval mode.
    run = eae.load_run(folder)
    with torch.no_grad():
        codes = run.model.eval().encoder(common.load_images("digits", "", "train").float() / 255)
    torch.testing.assert_close(run.samplers["mvg"].means[0].float(), codes.mean(0), rtol=0,
                               atol=1e-5)


@pytest.mark.parametrize("k", [4, 5])
def test_too_few_codes_per_process_for_k(k, fake_folder, tmp_path, capsys):
    """The k-th neighbour of a code needs k other codes in its batch: k < batch."""
    last = cli_error(eae, ["--dataset", "folder", "--data-root", fake_folder, "--k", k,
                           "--batch-size", "4", "--device", "cpu", "--out-dir", tmp_path],
                     capsys)
    assert f"--k {k} needs batches of more than {k} codes" in last


def test_the_log_holds_each_epochs_mean_terms(tmp_path, monkeypatch):
    """Per epoch (numbered from 1): the means over its steps of the reconstruction, entropy
    and L2 terms the loss was made of, N(0, I)'s entropy 0.5 d log(2 pi e) minus that, and
    the epoch's rate, 5e-4 x 0.97^e. The optimizer is Adam with Keras' eps, 1e-7."""
    calls = recorded(monkeypatch, eae, "eae_loss")
    folder = train(eae, tmp_path, dataset="digits", filters=4, latent_dim=3, epochs=2,
                   batch_size=400, l2_weight=0.01, gmm_components=1)
    seen = [{k: float(v) for k, v in terms.items()} for terms in calls]
    log = log_records(folder)
    assert [r["epoch"] for r in log] == [1, 2] and len(seen) == 2 * 3  # 1500 // 400 steps
    for e, record in enumerate(log):
        steps = seen[3 * e:3 * e + 3]
        for name in ("reconstruction", "entropy", "decoder_penalty", "loss"):
            assert record[name] == pytest.approx(np.mean([t[name] for t in steps]), rel=1e-5)
        gap = 0.5 * 3 * math.log(2 * math.pi * math.e) - record["entropy"]
        # A difference of two float32 figures near 4 nats: good to a few 1e-7 absolute.
        assert record["entropy_gap"] == pytest.approx(gap, rel=0, abs=2e-6)
        assert record["lr"] == pytest.approx(5e-4 * 0.97 ** e, rel=1e-12)
    checkpoint = common.load_checkpoint(folder)
    adam = checkpoint["optimizer"]["param_groups"][0]
    assert adam["eps"] == 1e-7 and adam["betas"] == (0.9, 0.999)
    tracked = {v.item() for k, v in checkpoint["model"].items() if "num_batches" in k}
    assert tracked == {2 * 3}  # every training step, in train mode, and nothing else


# The appendix's Table 1, EAE rows: Isotropic (N(0, I)), MVG, GMM and Reconstruction.
GHOSE_TABLE_1 = """
    cifar10  85.26  80.07  73.12  29.77
    celeba   44.63  42.92  39.76  40.26
"""


def test_paper_figures_are_table_1():
    """The paper's setting per data set: CIFAR-10 with L2 (3e-3) and no spectral norm,
    128 latents; CelebA with spectral norm on every layer, no L2, 64 latents, lr 1e-3,
    70 epochs (Deviations); the rest as the defaults."""
    settings = {"cifar10": dict(l2_weight=3e-3, spectral_norm="none", latent_dim=128),
                "celeba": dict(l2_weight=0.0, spectral_norm="all", latent_dim=64, lr=1e-3,
                               epochs=70)}
    for line in GHOSE_TABLE_1.strip().splitlines():
        dataset, *fids = line.split()
        args = {**dataclasses.asdict(eae.Args()), "dataset": dataset, **settings[dataset]}
        expected = dict(zip(("normal", "mvg", "gmm", "rec"), map(float, fids)))
        assert eae.paper_fid(args) == expected, line


@pytest.mark.parametrize("changes", [dict(entropy_weight=0.0), dict(l2_weight=0.0), dict(k=3),
                                     dict(latent_dim=64), dict(lr_decay=0.99),
                                     dict(spectral_norm="all"), dict(batch_size=128)])
def test_paper_figure_only_for_the_papers_setting(changes):
    resolved = dataclasses.asdict(eae.paper_regulariser(eae.Args()))
    assert eae.paper_fid(resolved)["normal"] == 85.26 and eae.paper_fid(resolved, "train") == {}
    assert eae.paper_fid({**resolved, **changes}) == {}
    celeba = dataclasses.asdict(eae.paper_regulariser(eae.Args(
        dataset="celeba", latent_dim=64, lr=1e-3, epochs=70)))
    assert eae.paper_fid(celeba)["gmm"] == 39.76
