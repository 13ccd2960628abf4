"""eval.py and the evaluation helpers of common.py, offline: the real pytorch-fid loading
code runs on random-initialised Inception weights put where its loader looks."""
import dataclasses
import json
import math
import re
import sys
from unittest import mock

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats

import common
import eval as eval_module
from conftest import cli_error, train
from fakes import write_random_inception


def test_defaults_are_the_papers_protocol():
    """10,000 samples per column against the test split (Daly et al., Ghosh et al.), KID as
    torch-fidelity (100 subsets of 1,000), Parzen on 10,000 samples (Yoo et al.); every
    sampler the run offers; the run's own data folder."""
    protocol = dict(runs=[], num_samples=10000, ref="test", samplers=[], data_root="",
                    batch_size=250, device="auto", seed=0, kid_subsets=100,
                    kid_subset_size=1000, save_samples="", json="", parzen=False,
                    parzen_samples=10000, fid=[])
    assert dataclasses.asdict(eval_module.Args()) == protocol


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
        mu1 = torch.randn(d, generator=g, dtype=torch.float64)
        mu2 = torch.zeros(d, dtype=torch.float64)
        s1, s2 = random_covariance(d, g), random_covariance(d, g)
        ours = common.frechet_distance(mu1, s1, mu2, s2)
        theirs = calculate_frechet_distance(mu1.numpy(), s1.numpy(), mu2.numpy(), s2.numpy())
        assert ours == pytest.approx(theirs, rel=1e-6)
        with_root = common.frechet_distance(mu1, s1, mu2, s2, common.psd_sqrt(s1))
        assert with_root == pytest.approx(theirs, rel=1e-6)


def test_a_covariance_needs_two_samples():
    mean, cov = common.gaussian_stats(torch.tensor([[0.0, 1.0], [2.0, 5.0]]))
    torch.testing.assert_close(mean, torch.tensor([1.0, 3.0], dtype=torch.float64))
    torch.testing.assert_close(cov, torch.tensor([[2.0, 4.0], [4.0, 8.0]], dtype=torch.float64))
    with pytest.raises(common.UserError, match="at least 2 samples"):
        common.gaussian_stats(torch.zeros(1, 2))


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
    # Random logits against numpy: exp of the mean KL(p(y|x) || p(y)) on each of 10 parts in
    # order; their mean and np.std (ddof 0, as the reference implementations).
    logits = torch.randn(200, 7, generator=torch.Generator().manual_seed(1)).double() * 3
    p = torch.softmax(logits, 1).numpy()
    scores = [np.exp((q * (np.log(q) - np.log(q.mean(0)))).sum(1).mean()) for q in np.split(p, 10)]
    assert common.inception_score(logits) == pytest.approx((np.mean(scores), np.std(scores)))


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
    # Images as a PNG would store them: clipped to [0, 1] and rounded to 8 bits first.
    wild = images[:2].float() / 255 * 2 - 0.5 + 0.001  # values in [-0.5, 1.5], off the grid
    stored = ((wild.clamp(0, 1) * 255).round() / 255)
    torch.testing.assert_close(inception(wild)[0], inception(stored)[0], rtol=0, atol=0)


def test_missing_inception_weights_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(common.UserError) as error:
        common.Inception()
    message = str(error.value)
    assert common.INCEPTION_FILE in message and str(tmp_path / "hub" / "checkpoints") in message


def test_precision_recall_equals_a_brute_force_count():
    """Kynkaanniemi et al.: a fake point is covered when it lies within the distance from
    some real point to that point's 3rd nearest other real point (and vice versa)."""
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(60, 3, generator=g), torch.randn(50, 3, generator=g) * 2 + 0.5

    def coverage(points, centres):
        d = np.linalg.norm(centres.numpy()[:, None] - centres.numpy()[None], axis=2)
        radius = np.sort(d, axis=1)[:, 3]  # [0] is the point itself
        to_centres = np.linalg.norm(points.numpy()[:, None] - centres.numpy()[None], axis=2)
        return float(np.mean((to_centres <= radius[None]).any(1)))

    precision, recall = common.precision_recall(real, fake, batch=16)
    assert precision == pytest.approx(coverage(fake, real), abs=1e-9)
    assert common.precision_recall(real[:3], fake) == (None, None)  # no 3rd neighbour
    assert recall == pytest.approx(coverage(real, fake), abs=1e-9)
    # On the boundary counts as inside: real 0's 3rd neighbour is 3 away, as are the fakes.
    line = torch.arange(5.0)[:, None]
    assert common.precision_recall(line, torch.full((4, 1), -3.0)) == (1.0, 0.0)


@pytest.fixture(scope="module")
def dae_run(tmp_path_factory):
    import dae

    tmp = tmp_path_factory.mktemp("runs")
    return train(dae, tmp, dataset="digits", filters=4, latent_dim=4, epochs=1, batch_size=64,
                 gmm_components=2)


def test_eval_writes_the_table_and_metrics(dae_run, weights, tmp_path, capsys):
    args = eval_module.Args(runs=[str(dae_run)], num_samples=3, batch_size=2, device="cpu",
                            samplers=["gmm"], save_samples=str(tmp_path / "samples"))
    metrics = eval_module.main(args, set())[str(dae_run)]
    out = capsys.readouterr().out
    assert list(metrics["columns"]) == ["rec", "gmm", "interp"]
    for column in metrics["columns"].values():
        assert column["n"] == 3 and np.isfinite(column["fid"]) and column["fid"] >= 0
        assert 1.0 <= column["is_mean"] and column["precision"] is None  # 3 <= k samples
        assert np.isfinite(column["kid_mean"]) and column["kid_std"] >= 0
    assert metrics["smoke_test"] is True
    stored = json.loads((dae_run / "metrics.json").read_text())
    assert stored == json.loads(json.dumps(metrics))
    assert stored["provenance"]["git_commit"]
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert re.sub(r"\s", "", rows[0]) == \
        "|run|method|column|FID|paperFID|KIDx10^3|IS|precision|recall|"
    (rule,) = [line for line in out.splitlines() if line.startswith("|---")]
    assert rule.count("|") == rows[0].count("|")  # markdown: a rule cell per column
    assert [row.split("|")[3].strip() for row in rows[1:]] == ["REC", "GMM", "Interp"]
    gmm = metrics["columns"]["gmm"]
    assert rows[2].split("|")[6].strip() == \
        f"{1000 * gmm['kid_mean']:.2f} ± {1000 * gmm['kid_std']:.2f}"  # KID x 10^3
    assert "smoke tests only" in out
    assert len(list((tmp_path / "samples" / "gmm").glob("*.png"))) == 3
    again = eval_module.Args(**{**vars(args), "seed": 1})  # computed again, into the same folder
    eval_module.main(again, set())
    assert len(list((tmp_path / "samples" / "gmm").glob("*.png"))) == 3


@pytest.fixture
def means_only_fid(monkeypatch):
    """FID's square roots of 2048 x 2048 covariances take seconds on a CPU; tests of what
    eval.py does with the figures (cache, table) use |mu1 - mu2|^2 in its place."""
    monkeypatch.setattr(common, "psd_sqrt", lambda sigma: None)
    monkeypatch.setattr(common, "frechet_distance", lambda mu1, sigma1, mu2, sigma2, root1=None:
                        ((mu1 - mu2) ** 2).sum().item())


def test_metrics_are_reused_only_for_the_same_request(dae_run, weights, means_only_fid,
                                                      monkeypatch, capsys):
    """A second call with the same request reads metrics.json; other samples, or a changed
    checkpoint, compute afresh."""
    args = eval_module.Args(runs=[str(dae_run)], num_samples=3, batch_size=3, device="cpu",
                            samplers=["gmm"])
    first = eval_module.evaluate(str(dae_run), args)
    real_score = eval_module.score
    monkeypatch.setattr(eval_module, "score", lambda *a, **k: pytest.fail("computed again"))
    again = eval_module.evaluate(str(dae_run), args)
    assert again["columns"] == first["columns"] and "read from" in capsys.readouterr().out
    monkeypatch.setattr(eval_module, "score", real_score)
    calls = []
    monkeypatch.setattr(eval_module, "score",
                        lambda *a, **k: calls.append(a) or real_score(*a, **k))
    eval_module.evaluate(str(dae_run), eval_module.Args(**{**vars(args), "num_samples": 4}))
    assert len(calls) == 3
    state = torch.load(dae_run / "checkpoint.pt", weights_only=True)
    state["epoch"] += 0  # the same content written anew is the same checkpoint
    torch.save({**state, "note": "changed"}, dae_run / "checkpoint.pt")
    eval_module.evaluate(str(dae_run), eval_module.Args(**{**vars(args), "num_samples": 4}))
    assert len(calls) == 6


def test_one_table_for_several_runs(dae_run, weights, means_only_fid, tmp_path, capsys):
    """python eval.py RUN_A RUN_B --json FILE: one table, a row per run and column."""
    import vae

    other = train(vae, tmp_path, dataset="digits", filters=4, latent_dim=4, epochs=1,
                  batch_size=64, gmm_components=2)
    out_json = tmp_path / "table.json"
    with mock.patch.object(sys, "argv", ["eval.py", str(dae_run), str(other), "--num-samples",
                                         "3", "--samplers", "gmm", "--device", "cpu",
                                         "--json", str(out_json)]):
        common.cli(eval_module.main, eval_module.Args, eval_module.__doc__)
    rows = [line for line in capsys.readouterr().out.splitlines() if line.startswith("| ")]
    names = [(row.split("|")[1].strip(), row.split("|")[3].strip()) for row in rows[1:]]
    assert names == [(dae_run.name, c) for c in ("REC", "GMM", "Interp")] + \
        [(other.name, c) for c in ("REC", "GMM", "Interp")]
    table = json.loads(out_json.read_text())
    assert [m["method"] for m in table.values()] == ["dae", "vae"]


def kid_by_loops(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(a, b) = (a.b / D + 1)^3, written out pair by pair."""
    m, d = len(x), x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j)
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j)
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m))
    return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2 * xy / m ** 2


def test_kid_is_the_unbiased_polynomial_mmd():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(12, 5, generator=g), torch.randn(12, 5, generator=g) + 0.7
    mean, std = common.kernel_inception_distance(real, fake, subsets=3, subset_size=12, seed=0)
    assert mean == pytest.approx(kid_by_loops(real.numpy().astype(np.float64),
                                              fake.numpy().astype(np.float64)), rel=1e-9)
    assert std == pytest.approx(0, abs=1e-12)  # every subset is the whole set
    # Subsets of 6: each value is the loop formula on some 6 of each; their mean and std.
    mean, std = common.kernel_inception_distance(real, fake, subsets=4, subset_size=6, seed=3)
    gen = torch.Generator().manual_seed(3)
    values = []
    for _ in range(4):
        a = real[torch.randperm(12, generator=gen)[:6]].double().numpy()
        b = fake[torch.randperm(12, generator=gen)[:6]].double().numpy()
        values.append(kid_by_loops(a, b))
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values))
    # Unbiased: two samples of one distribution average to 0; a shift is positive.
    same = [common.kernel_inception_distance(torch.randn(200, 5, generator=g),
                                             torch.randn(200, 5, generator=g), 1, 200, 0)[0]
            for _ in range(20)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(20)
    assert common.kernel_inception_distance(real, real + 1, 1, 12, 0)[0] > 0
    assert common.kernel_inception_distance(real[:1], fake, 100, 1000, 0) == (None, None)
    two = common.kernel_inception_distance(real[:2], fake[:2], 1, 1000, 0)[0]  # the fewest
    assert two == pytest.approx(kid_by_loops(real[:2].double().numpy(),
                                             fake[:2].double().numpy()), rel=1e-9)


def test_parzen_of_one_sample_is_a_gaussian():
    centre, points, sigma = torch.randn(1, 5), torch.randn(7, 5), 0.3
    got = eval_module.parzen_log_likelihood(centre, points, [sigma, 1.0])
    expected = stats.multivariate_normal(centre[0].numpy(), sigma ** 2 * np.eye(5)).logpdf(points)
    assert got.shape == (2, 7)
    assert np.allclose(got[0].numpy(), expected)


def test_parzen_of_a_gaussian_matches_its_closed_form():
    """Kernel width sigma on many samples of N(m, s^2 I) tends to N(m, (s^2 + sigma^2) I)."""
    g = torch.Generator().manual_seed(0)
    mean, s, sigma = torch.tensor([1.0, -0.5]), 0.7, 0.4
    samples = mean + s * torch.randn(100_000, 2, generator=g)
    points = mean + s * torch.randn(200, 2, generator=g)  # where the samples are dense
    got = eval_module.parzen_log_likelihood(samples, points, [sigma])[0].numpy()
    expected = stats.multivariate_normal(mean.numpy(), (s ** 2 + sigma ** 2) * np.eye(2)
                                         ).logpdf(points)
    assert np.abs(got - expected).max() < 0.06 and abs(got.mean() - expected.mean()) < 0.01


def test_parzen_widths_are_the_official_grid():
    """eval_gen_img.py (53753c9): np.arange(0.1, 0.3, 0.01) for MNIST."""
    assert np.allclose(eval_module.PARZEN_SIGMAS.numpy(), np.arange(0.1, 0.3, 0.01))


def test_parzen_validation_and_points():
    """The width is chosen on the run's held-out images, or on the last tenth of its training
    images, at most 10,000; MNIST's 2-pixel zero border (added to make 32x32) is cut off."""
    assert torch.equal(eval_module.parzen_validation(torch.arange(1500), 5),
                       torch.arange(1495, 1500))
    assert torch.equal(eval_module.parzen_validation(torch.arange(1500), 0),
                       torch.arange(1350, 1500))
    assert torch.equal(eval_module.parzen_validation(torch.arange(100_010), 0),
                       torch.arange(90_010, 100_010))
    digits = torch.rand(3, 1, 28, 28)
    padded = torch.nn.functional.pad(digits, (2, 2, 2, 2))  # what load_images gives MNIST
    torch.testing.assert_close(eval_module.parzen_points(padded, "mnist"), digits.flatten(1))
    torch.testing.assert_close(eval_module.parzen_points(padded, "digits"), padded.flatten(1))


def numpy_parzen(samples, points, sigma):
    """log p of each point under the Gaussian kernel density on the samples, by scipy."""
    from scipy.special import logsumexp

    d2 = ((points[:, None, :] - samples[None]) ** 2).sum(-1)
    dim = samples.shape[1]
    return (logsumexp(-d2 / (2 * sigma ** 2), axis=1) - np.log(len(samples))
            - dim / 2 * np.log(2 * np.pi * sigma ** 2))


def test_parzen_protocol(dae_run, monkeypatch):
    """--parzen-samples samples; the width of the grid 0.10 .. 0.29 whose mean log-likelihood
    of the validation points (the last tenth of the run's training digits) is highest; the
    test images' mean log-likelihood at that width, with its standard error (scipy)."""
    seen = []
    real = eval_module.parzen_log_likelihood
    monkeypatch.setattr(eval_module, "parzen_log_likelihood",
                        lambda *a: seen.append([t.double().numpy() for t in a]) or real(*a))
    result = eval_module.parzen(str(dae_run), eval_module.Args(
        samplers=["gmm"], parzen_samples=30, device="cpu"))["columns"]["gmm"]
    (samples, valid, _), (again, test, _) = seen
    assert samples.shape == (30, 32 * 32) and np.array_equal(samples, again)
    train = common.load_images("digits", "", "train")[1350:].flatten(1).double() / 255
    assert np.allclose(valid, train.numpy())
    grid = np.arange(0.1, 0.3, 0.01)
    best = grid[np.argmax([numpy_parzen(samples, valid, sigma).mean() for sigma in grid])]
    assert result["sigma"] == pytest.approx(best)
    ll = numpy_parzen(samples, test, best)
    assert len(ll) == 297 and result["log_likelihood"] == pytest.approx(ll.mean(), rel=1e-6)
    assert result["standard_error"] == pytest.approx(stats.sem(ll), rel=1e-6)


def test_parzen_scores_at_most_10000_test_images(dae_run, monkeypatch):
    load = common.load_images
    many = torch.randint(0, 256, (10_001, 1, 32, 32), dtype=torch.uint8)
    monkeypatch.setattr(common, "load_images", lambda name, root, split, *a: (
        many if split == "test" else load(name, root, split, *a)))
    seen = []
    real = eval_module.parzen_log_likelihood
    monkeypatch.setattr(eval_module, "parzen_log_likelihood",
                        lambda *a: seen.append(len(a[1])) or real(*a))
    eval_module.parzen(str(dae_run), eval_module.Args(samplers=["gmm"], parzen_samples=2,
                                                      device="cpu"))
    assert seen == [150, 10_000]


def test_parzen_gives_each_samplers_nll_of_the_test_codes(dae_run, capsys):
    """With an encoder, each sampler's mean -log p(E(x)) over the test images (nats per code),
    by scipy: N(0, I) and the MVG of the stored mean and covariance (plus the 1e-6 jitter)."""
    import dae

    result = eval_module.parzen(str(dae_run), eval_module.Args(
        samplers=["normal", "mvg"], parzen_samples=2, device="cpu"))["columns"]
    run = dae.load_run(str(dae_run))
    with torch.no_grad():
        x = common.load_images("digits", "", "test").float() / 255
        z = run.model.encoder(x).double().numpy()  # [297, 4], eval mode
    assert z.shape == (297, 4)
    normal = -stats.multivariate_normal(np.zeros(4), np.eye(4)).logpdf(z).mean()
    assert result["normal"]["code_nll"] == pytest.approx(normal, rel=1e-5)
    mvg = common.load_checkpoint(dae_run)["samplers"]["mvg"]
    mean, cov = mvg["means"][0].numpy(), mvg["covs"][0].numpy() + 1e-6 * np.eye(4)
    expected = -stats.multivariate_normal(mean, cov).logpdf(z).mean()
    assert result["mvg"]["code_nll"] == pytest.approx(expected, rel=1e-5)
    assert expected < normal  # the codes' own Gaussian fits them better than the prior
    result["lde"] = {**result["mvg"], "code_nll": None}  # a sampler of a run without an encoder
    table = eval_module.parzen_table({str(dae_run): {"method": "dae", "columns": result,
                                                     "paper": "326 +- 2"}}).splitlines()
    header, rows = table[0], dict(zip(("normal", "mvg", "lde"), table[2:]))
    assert header.split("|")[-2].strip() == "test-code NLL"
    assert all(line.count("|") == header.count("|") == 8 for line in table)  # the rule too
    assert rows["mvg"].endswith(f"| - | {result['mvg']['code_nll']:.2f} |")
    assert rows["lde"].endswith("| 326 +- 2 | - |")  # Table 2's figure on the LDE row alone


def test_parzen_of_every_sampler(dae_run, capsys):
    args = eval_module.Args(runs=[str(dae_run)], parzen=True, parzen_samples=40, device="cpu")
    result = eval_module.main(args, set())[str(dae_run)]
    scores = result["columns"]
    assert set(scores) == {"normal", "mvg", "gmm"} and result["paper"] == ""
    assert all(math.isfinite(s["log_likelihood"]) and s["standard_error"] > 0
               and 0.1 <= s["sigma"] <= 0.29 for s in scores.values())
    assert json.loads((dae_run / "log.jsonl").read_text().splitlines()[-1])["parzen"] == scores
    assert "log-likelihood (nats)" in capsys.readouterr().out


def test_reference_statistics_are_those_of_the_reference_split(weights, tmp_path):
    net = common.Inception()
    run_args = {"dataset": "digits", "image_size": 0, "crop": 0}
    for split in ("train", "test"):
        ref = eval_module.reference(net, run_args, str(tmp_path), split, 5, 5)
        images = common.load_images("digits", "", split)
        chosen = images[torch.randperm(len(images), generator=torch.Generator().manual_seed(0))[:5]]
        features, _ = common.inception_outputs(net, [chosen.float() / 255])
        torch.testing.assert_close(ref["features"].float(), features.float(), rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ref["mu"], features.mean(0))


def test_reference_cache_is_never_read_with_other_weights_or_data(torch_home, tmp_path,
                                                                  monkeypatch):
    """The cached statistics carry the Inception weights' and the images' hashes: other
    weights (here: another random draw) or other images compute afresh; the same read the
    cache without running the network."""
    other_home = tmp_path / "other_home"
    write_random_inception(other_home, seed=1)
    run_args = {"dataset": "digits", "image_size": 0, "crop": 0}
    stats = {}
    for name, home in (("a", torch_home), ("b", other_home)):
        monkeypatch.setenv("TORCH_HOME", str(home))
        stats[name] = eval_module.reference(common.Inception(), run_args, str(tmp_path), "test",
                                            4, 4)
    assert len(list((tmp_path / "fid-stats").glob("*.npz"))) == 2
    assert not torch.allclose(stats["a"]["mu"], stats["b"]["mu"])
    other_data = eval_module.reference(common.Inception(), run_args, str(tmp_path), "train", 4, 4)
    assert len(list((tmp_path / "fid-stats").glob("*.npz"))) == 3
    assert not torch.allclose(other_data["mu"], stats["b"]["mu"])

    def no_network(*args, **kwargs):
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(common, "inception_outputs", no_network)
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    again = eval_module.reference(common.Inception(), run_args, str(tmp_path), "test", 4, 4)
    torch.testing.assert_close(again["mu"], stats["a"]["mu"])


class _Halves:
    """A stand-in method whose codes are the images' mean brightness and whose decoder
    paints that value: decode(encode) is then easy to follow."""

    @staticmethod
    def encode(run, x):
        return x.mean((1, 2, 3))[:, None]

    @staticmethod
    def decode(run, z):
        return z[:, :, None, None].expand(-1, 1, 2, 2)


def test_fewer_images_than_feature_dimensions_is_a_smoke_test():
    """A covariance of D = 2048 features needs 2048 images, generated and reference alike."""
    ref = {"features": torch.zeros(3000, 2048)}
    assert not eval_module.smoke_test({"gmm": {"n": 2048}, "rec": {"n": 5000}}, ref)
    assert eval_module.smoke_test({"gmm": {"n": 2047}, "rec": {"n": 5000}}, ref)
    assert eval_module.smoke_test({"gmm": {"n": 5000}}, {"features": torch.zeros(2047, 2048)})


def test_rec_decodes_the_codes_of_the_test_images_in_unit_range():
    test = torch.arange(10, dtype=torch.uint8)[:, None, None, None].expand(10, 1, 2, 2) * 20
    images = torch.cat(list(eval_module.reconstructed(_Halves, None, test, 3)))
    torch.testing.assert_close(images[:, 0, 0, 0], torch.arange(10) * 20 / 255)


def test_interp_decodes_the_midpoints_of_random_test_pairs():
    test = torch.arange(10, dtype=torch.uint8)[:, None, None, None].expand(10, 1, 2, 2) * 20
    args = eval_module.Args(batch_size=3, seed=4)
    images = torch.cat(list(eval_module.interpolated(_Halves, None, test, 7, args)))
    pairs = torch.randint(10, (7, 2), generator=torch.Generator().manual_seed(4))
    expected = (pairs[:, 0] + pairs[:, 1]).float() * 20 / 255 / 2
    torch.testing.assert_close(images[:, 0, 0, 0], expected)


def test_fid_of_two_folders_matches_pytorch_fid_features(inception, tmp_path, capsys):
    from pytorch_fid.fid_score import get_activations
    from pytorch_fid.inception import InceptionV3

    images = common.load_images("fake", "", "train")[:8]
    a = write_pngs(tmp_path / "a", images[:4])
    b = write_pngs(tmp_path / "b", images[4:])
    net = InceptionV3([3])
    stats = [(torch.from_numpy(f.mean(0)), torch.from_numpy(np.cov(f, rowvar=False)))
             for f in (get_activations(files, net, 2, num_workers=0) for files in (a, b))]
    expected = common.frechet_distance(*stats[0], *stats[1])
    eval_module.main(eval_module.Args(fid=[str(tmp_path / "a"), str(tmp_path / "b")],
                                      device="cpu"), set())
    assert float(capsys.readouterr().out.split("FID:")[1]) == pytest.approx(expected, rel=1e-4)


def test_bad_input(dae_run, weights, tmp_path, capsys):
    def error(*argv):
        return cli_error(eval_module, argv, capsys)

    assert "no checkpoint.pt" in error(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    assert "could not be read" in error(tmp_path)
    last = error(dae_run, "--samplers", "lde", "--num-samples", "4")
    assert "no sampler lde" in last and "gmm" in last
    last = error(dae_run, "--num-samples", "1")
    assert "--num-samples" in last and "at least 2" in last
    assert "two folders" in error("--fid", tmp_path)
    assert "give run folders" in error()
    for side in (32, 40):  # a folder of images of two sizes
        Image.new("RGB", (side, side)).save(tmp_path / f"{side}.png")
    assert "differ in size" in error("--fid", tmp_path, tmp_path, "--device", "cpu")


def test_parzen_width_is_chosen_on_the_held_out_images(dae_run, monkeypatch):
    """With --holdout N in the run (iae_lde.py on MNIST: 5,000), the width is chosen on the
    last N training images, never seen in training, and the test split is scored."""
    import dae

    loaded = dae.load_run  # the DAE run, as if it had held out its last 150 digits
    monkeypatch.setattr(dae, "load_run", lambda run_dir, device: loaded(run_dir, device)._replace(
        args={**loaded(run_dir, device).args, "holdout": 150}))
    seen = []
    real = eval_module.parzen_log_likelihood
    monkeypatch.setattr(eval_module, "parzen_log_likelihood",
                        lambda samples, points, sigmas: seen.append(points) or
                        real(samples, points, sigmas))
    eval_module.parzen(str(dae_run), eval_module.Args(samplers=["gmm"], parzen_samples=20,
                                                      device="cpu"))
    train_images = common.load_images("digits", "", "train")
    torch.testing.assert_close(seen[0], train_images[1350:].float().flatten(1) / 255)
    torch.testing.assert_close(seen[1], common.load_images("digits", "", "test").float()
                               .flatten(1) / 255)
