"""Ex-post latent samplers of common.py: N(0, I), MVG and GMM."""
import numpy as np
import torch

import common


def correlated_codes(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    mixing = torch.tensor([[2.0, 0.0, 0.0], [1.0, 0.5, 0.0], [-1.0, 0.3, 0.2]])
    return torch.randn(n, 3, generator=g) @ mixing.T + torch.tensor([1.0, -2.0, 3.0])


def test_mvg_reproduces_mean_and_covariance():
    codes = correlated_codes(5000)
    mvg = common.fit_samplers(codes, seed=0, gmm_components=2)["mvg"]
    z = mvg.sample(100_000, seed=1)
    assert z.shape == (100_000, 3) and z.dtype == torch.float32
    assert torch.allclose(z.mean(0).double(), codes.double().mean(0), atol=0.03)
    assert torch.allclose(torch.cov(z.T.double()), torch.cov(codes.T.double()), atol=0.05)


def test_normal_is_standard():
    normal = common.fit_samplers(correlated_codes(500), seed=0, gmm_components=1)["normal"]
    z = normal.sample(50_000, seed=0)
    assert torch.allclose(z.mean(0), torch.zeros(3), atol=0.03)
    assert torch.allclose(torch.cov(z.T), torch.eye(3), atol=0.03)


def three_clusters(n):
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[10.0, 0.0], [-10.0, 0.0], [0.0, 10.0]])
    labels = torch.multinomial(torch.tensor([0.5, 0.3, 0.2]), n, True, generator=g)
    return centres[labels] + 0.5 * torch.randn(n, 2, generator=g), centres


def test_gmm_round_trip_and_shuffled_samples():
    codes, centres = three_clusters(3000)
    gmm = common.fit_samplers(codes, seed=0, gmm_components=3)["gmm"]
    z = gmm.sample(20_000, seed=2)
    nearest = torch.cdist(z, centres).argmin(1)
    fractions = torch.bincount(nearest, minlength=3).float() / len(z)
    assert torch.allclose(fractions, torch.tensor([0.5, 0.3, 0.2]), atol=0.02)
    for k in range(3):
        assert torch.allclose(z[nearest == k].mean(0), centres[k], atol=0.05)
        assert torch.allclose(z[nearest == k].std(0), torch.full((2,), 0.5), atol=0.03)
    # Not grouped by component: the first 30 samples already visit every cluster.
    assert len(set(nearest[:30].tolist())) == 3


def test_same_seed_same_samples():
    samplers = common.fit_samplers(correlated_codes(500), seed=0, gmm_components=2)
    for sampler in samplers.values():
        assert torch.equal(sampler.sample(10, seed=5), sampler.sample(10, seed=5))
        assert not torch.equal(sampler.sample(10, seed=5), sampler.sample(10, seed=6))


def test_rank_deficient_codes_do_not_crash():
    base = torch.randn(400, 2)
    codes = torch.cat([base, base[:, :1], torch.zeros(400, 1)], 1)  # rank 2 of 4
    samplers = common.fit_samplers(codes, seed=0, gmm_components=10)
    for name, sampler in samplers.items():
        z = sampler.sample(1000, seed=0)
        assert torch.isfinite(z).all(), name
    z = samplers["mvg"].sample(1000, seed=0)
    assert torch.allclose(z[:, 0], z[:, 2], atol=1e-4)  # the degenerate direction is kept
    assert z[:, 3].abs().max() < 1e-4


def test_a_covariance_rounded_below_zero_samples_as_its_positive_part():
    """Sigma = Q diag(2, 1, -1e-10) Q^T (a zero eigenvalue that rounding pushed below 0):
    samples are finite, with covariance Q diag(2, 1, 0) Q^T."""
    generator = torch.Generator().manual_seed(0)
    q, _ = torch.linalg.qr(torch.randn(3, 3, dtype=torch.float64, generator=generator))
    cov = q @ torch.diag(torch.tensor([2.0, 1.0, -1e-10], dtype=torch.float64)) @ q.T
    assert torch.linalg.eigvalsh(cov).min() < 0
    z = common.LatentSampler(torch.ones(1), torch.zeros(1, 3), cov[None]).sample(20000, seed=0)
    assert torch.isfinite(z).all()
    expected = q @ torch.diag(torch.tensor([2.0, 1.0, 0.0], dtype=torch.float64)) @ q.T
    torch.testing.assert_close(torch.cov(z.double().T), expected, atol=0.06, rtol=0)


def test_state_survives_a_safe_checkpoint(tmp_path):
    samplers = common.fit_samplers(correlated_codes(500), seed=0, gmm_components=2)
    common.atomic_save({"samplers": {k: s.state_dict() for k, s in samplers.items()}},
                       tmp_path / "c.pt")
    stored = torch.load(tmp_path / "c.pt", weights_only=True)["samplers"]
    restored = common.samplers_from_state(stored)
    for name in samplers:
        assert torch.equal(restored[name].sample(50, 3), samplers[name].sample(50, 3))


def test_log_prob_equals_scipy_mixture_density():
    """log sum_k w_k N(z; mu_k, Sigma_k) (the 1e-6 ridge aside) against scipy, sign and scale."""
    from scipy import stats

    codes, _ = three_clusters(600)
    gmm = common.fit_samplers(codes, seed=0, gmm_components=3)["gmm"]
    points = codes[:20] + torch.randn(20, 2)  # near the data: densities far from 0
    density = sum(w * stats.multivariate_normal(m.numpy(), c.numpy() + 1e-6 * np.eye(2)).pdf(
        points.numpy()) for w, m, c in zip(gmm.weights, gmm.means, gmm.covs))
    np.testing.assert_allclose(gmm.log_prob(points).numpy(), np.log(density), rtol=1e-6)


def test_gmm_is_the_rae_codes_scikit_learn_fit(monkeypatch):
    """The RAE code's ex-post density: GaussianMixture(10, covariance_type='full',
    max_iter=2000, tol=1e-3), every other option at scikit-learn's default, seeded."""
    import sklearn.mixture

    official = dict(n_components=10, covariance_type="full", max_iter=2000, tol=1e-3,
                    reg_covar=1e-6, n_init=1, init_params="kmeans", random_state=7)
    made = []

    class Recorded(sklearn.mixture.GaussianMixture):
        def fit(self, x, y=None):
            made.append(self.get_params())
            return super().fit(x, y)

    monkeypatch.setattr(sklearn.mixture, "GaussianMixture", Recorded)
    codes = correlated_codes(400)
    gmm = common.fit_samplers(codes, seed=7, gmm_components=10)["gmm"]
    (params,) = made
    assert {k: params[k] for k in official} == official
    reference = sklearn.mixture.GaussianMixture(**official).fit(codes.double().numpy())
    np.testing.assert_allclose(gmm.means.numpy(), reference.means_, rtol=1e-10)


def test_codes_that_carry_a_graph_are_fitted_as_values():
    codes = correlated_codes(300).requires_grad_()
    mvg = common.fit_samplers(codes * 1.0, seed=0, gmm_components=2)["mvg"]
    assert not mvg.means.requires_grad
    torch.testing.assert_close(mvg.means[0], codes.detach().double().mean(0))


def test_encode_all_is_the_encoder_in_batches_without_a_graph():
    """Codes of uint8 images: the encoder on x / 255, batch by batch (the last one short),
    float32 on the CPU, with no graph kept (the whole training set goes through it)."""
    encoder = torch.nn.Linear(12, 3)
    images = torch.randint(0, 256, (1100, 12), dtype=torch.uint8)
    codes = common.encode_all(encoder, images, batch_size=500)
    with torch.no_grad():
        expected = encoder(images.float() / 255)
    torch.testing.assert_close(codes, expected)
    assert codes.dtype == torch.float32 and not codes.requires_grad
