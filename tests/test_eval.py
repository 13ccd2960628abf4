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
    """10,000 samples per column against the whole test split (Daly et al., Ghosh et al.),
    KID as torch-fidelity (100 subsets of 1,000), Parzen on 10,000 samples (Yoo et al.);
    every sampler the run offers; the run's own data folder."""
    protocol = dict(runs=[], num_samples=10000, ref="test", ref_size=0, samplers=[], data_root="",
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
    mean, _ = common.inception_score(spread)
    assert 1 < mean <= k  # each split: exp of the entropy of its classes, at most log k


def numpy_inception_score(logits: np.ndarray, splits: int = 10) -> tuple:
    """torch-fidelity's protocol in numpy: rows shuffled by numpy's generator seeded 2020,
    split i the rows i N // 10 .. (i + 1) N // 10, exp of the mean KL(p(y|x) || p(y))."""
    n = len(logits)
    logits = logits[np.random.RandomState(2020).permutation(n)]
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    parts = [p[i * n // splits:(i + 1) * n // splits] for i in range(splits)]
    scores = [np.exp((q * (np.log(q) - np.log(q.mean(0)))).sum(1).mean()) for q in parts]
    return np.mean(scores), np.std(scores)


def test_inception_score_shuffles_before_splitting_as_torch_fidelity():
    """Logits in class order (a class-sorted folder): split in order, each part holds one or
    two classes and IS drops; torch-fidelity shuffles first (seed 2020), and so do we."""
    g = torch.Generator().manual_seed(1)
    classes = torch.arange(205) // 21  # 10 classes, sorted, 205 rows: unequal splits
    logits = torch.randn(205, 10, generator=g).double() + 6 * torch.eye(10)[classes].double()
    ours = common.inception_score(logits)
    assert ours == pytest.approx(numpy_inception_score(logits.numpy()), rel=1e-9)
    in_order = np.mean([numpy_inception_score(part.numpy(), 1)[0]
                        for part in logits.tensor_split(torch.arange(1, 10) * 205 // 10)])
    assert ours[0] > 1.5 * in_order  # what splitting in file order would have given
    fidelity = pytest.importorskip("torch_fidelity.metric_isc")
    theirs = fidelity.isc_features_to_metric(logits.float(), splits=10)
    assert ours == pytest.approx((theirs["inception_score_mean"], theirs["inception_score_std"]),
                                 rel=1e-6)


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


def coverage(points, centres, k=3):
    """The share of points within some centre's distance to its k-th nearest other centre."""
    d = np.linalg.norm(centres.numpy()[:, None] - centres.numpy()[None], axis=2)
    radius = np.sort(d, axis=1)[:, k]  # [0] is the point itself
    to_centres = np.linalg.norm(points.numpy()[:, None] - centres.numpy()[None], axis=2)
    return float(np.mean((to_centres <= radius[None]).any(1)))


def test_precision_recall_equals_a_brute_force_count():
    """Kynkaanniemi et al.: a fake point is covered when it lies within the distance from
    some real point to that point's 3rd nearest other real point (and vice versa)."""
    g = torch.Generator().manual_seed(1)
    real, fake = torch.randn(50, 3, generator=g), torch.randn(50, 3, generator=g) * 2 + 0.5
    precision, recall = common.precision_recall(real, fake, batch=16)
    assert precision == pytest.approx(coverage(fake, real), abs=1e-9)
    assert common.precision_recall(real[:3], fake) == (None, None)  # no 3rd neighbour
    assert recall == pytest.approx(coverage(real, fake), abs=1e-9)
    # On the boundary counts as inside: real 0's 3rd neighbour is 3 away, as are the fakes.
    line = torch.arange(4.0)[:, None]
    assert common.precision_recall(line, torch.full((4, 1), -3.0)) == (1.0, 0.0)


def test_precision_recall_are_asymmetric_and_on_sets_of_equal_size():
    """Real data of two clusters, fakes of one: the fakes look real (precision near 1), but
    half the real data is missed (recall about 1/2); swapped, the reverse. Sets of unequal
    size are compared at equal size: the larger cut to torch-fidelity's seeded random subset,
    and the figures are those of torch-fidelity's code on those sets."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(200, 4, generator=g), torch.randn(200, 4, generator=g) + 20
    both, one = torch.cat([a[:100], b[:100]]), a[100:]  # 200 real, 100 fake
    precision, recall = common.precision_recall(both, one, batch=64)
    subset = both[np.random.RandomState(2020).choice(200, 100, replace=False)]
    assert (precision, recall) == pytest.approx((coverage(one, subset), coverage(subset, one)))
    assert precision > 0.75 and recall < 0.6  # fakes look real; half the real is missed
    assert common.precision_recall(one, both, batch=64) == pytest.approx((recall, precision))
    prc = pytest.importorskip("torch_fidelity.metric_prc")
    theirs = prc.prc_features_to_metric(one, subset, prc_neighborhood=3, prc_batch_size=64,
                                        save_cpu_ram=False, verbose=False)
    assert (precision, recall) == pytest.approx((theirs["precision"], theirs["recall"]))


def test_metrics_are_computed_with_tf32_off(monkeypatch):
    """The k-NN distances of precision / recall are matrix products: on a GPU, TF32 would
    move them in the third decimal; they run with TF32 off, as the Inception pass."""
    flags, cdist = [], torch.cdist
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", True)
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", True)
    monkeypatch.setattr(torch, "cdist", lambda *a, **k: flags.append(
        (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)) or cdist(*a, **k))
    common.precision_recall(torch.randn(20, 3), torch.randn(20, 3))
    assert flags and set(flags) == {(False, False)}
    assert torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32  # restored


@pytest.fixture(scope="module")
def dae_run(tmp_path_factory):
    import dae

    tmp = tmp_path_factory.mktemp("runs")
    return train(dae, tmp, dataset="digits", filters=4, latent_dim=4, epochs=1, batch_size=64,
                 gmm_components=2)


@pytest.fixture
def stub_inception(monkeypatch):
    """Tests of what eval.py does with the figures (table, files, cache) use the stand-in
    network below: the real one's 299-pixel passes take seconds an image on a CPU core."""
    monkeypatch.setattr(common, "Inception", StubInception)


def test_eval_writes_the_table_and_metrics(dae_run, stub_inception, tmp_path, capsys):
    args = eval_module.Args(runs=[str(dae_run)], num_samples=3, ref_size=3, batch_size=2,
                            device="cpu", samplers=["gmm"],
                            save_samples=str(tmp_path / "samples"))
    metrics = eval_module.main(args, set())[str(dae_run)]
    out = capsys.readouterr().out
    assert list(metrics["columns"]) == ["rec", "gmm", "interp"]
    for column in metrics["columns"].values():
        assert column["n"] == 3 and np.isfinite(column["fid"]) and column["fid"] >= 0
        assert 1.0 <= column["is_mean"] and column["precision"] is None  # 3 <= k samples
        assert np.isfinite(column["kid_mean"]) and column["kid_std"] is None  # whole sets
    assert metrics["smoke_test"] is True
    stored = json.loads((dae_run / "metrics.json").read_text())
    assert {**stored, "paper_fid": {}} == json.loads(json.dumps(metrics))  # paper: not stored
    assert stored["provenance"]["git_commit"]
    rows = [line for line in out.splitlines() if line.startswith("| ")]
    assert re.sub(r"\s", "", rows[0]) == \
        "|run|method|column|FID|paperFID|KIDx10^3|IS|precision(pool3)|recall(pool3)|"
    (rule,) = [line for line in out.splitlines() if line.startswith("|---")]
    assert rule.count("|") == rows[0].count("|")  # markdown: a rule cell per column
    assert [row.split("|")[3].strip() for row in rows[1:]] == ["REC", "GMM", "Interp"]
    gmm = metrics["columns"]["gmm"]
    assert rows[2].split("|")[6].strip() == f"{1000 * gmm['kid_mean']:.2f}"  # no spread
    assert "smoke tests only" in out and "against 3 images of the test split" in out
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


def test_metrics_are_reused_only_for_the_same_request(dae_run, stub_inception, means_only_fid,
                                                      monkeypatch, capsys):
    """A second call with the same request reads metrics.json; other samples, a changed
    checkpoint or metric code, or an unreadable metrics.json, compute afresh."""
    args = eval_module.Args(runs=[str(dae_run)], num_samples=3, ref_size=3, batch_size=3,
                            device="cpu", samplers=["gmm"])
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
    monkeypatch.setattr(eval_module, "METRIC_CODE", "corrected")  # a metric's code changed
    eval_module.evaluate(str(dae_run), eval_module.Args(**{**vars(args), "num_samples": 4}))
    assert len(calls) == 9
    (dae_run / "metrics.json").write_text('{"request": {"checkpo')  # a write killed half-way
    eval_module.evaluate(str(dae_run), eval_module.Args(**{**vars(args), "num_samples": 4}))
    assert len(calls) == 12 and json.loads((dae_run / "metrics.json").read_text())["columns"]


def test_one_table_for_several_runs(dae_run, stub_inception, tmp_path, capsys):
    """python eval.py RUN_A RUN_B --json FILE: one table, a row per run and column."""
    import vae

    other = train(vae, tmp_path, dataset="digits", filters=4, latent_dim=4, epochs=1,
                  batch_size=64, gmm_components=2)
    out_json = tmp_path / "table.json"
    with mock.patch.object(sys, "argv", ["eval.py", str(dae_run), str(other), "--num-samples",
                                         "3", "--ref-size", "3", "--samplers", "gmm",
                                         "--device", "cpu", "--json", str(out_json)]):
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
    mean, std = common.kernel_inception_distance(real, fake, subsets=3, subset_size=12)
    assert mean == pytest.approx(kid_by_loops(real.numpy().astype(np.float64),
                                              fake.numpy().astype(np.float64)), rel=1e-9)
    assert std is None  # every subset is the whole of both sets: no spread to show
    # Subsets of 6, drawn as torch-fidelity: numpy's generator seeded 2020, the generated
    # images' subset first, then the reference's; the loop formula on each, mean and std.
    mean, std = common.kernel_inception_distance(real, fake, subsets=4, subset_size=6)
    rng = np.random.RandomState(2020)
    values = []
    for _ in range(4):
        b = fake[rng.choice(12, 6, replace=False)].double().numpy()
        a = real[rng.choice(12, 6, replace=False)].double().numpy()
        values.append(kid_by_loops(a, b))
    assert mean == pytest.approx(np.mean(values)) and std == pytest.approx(np.std(values))
    swapped = common.kernel_inception_distance(fake, real, subsets=4, subset_size=6)[0]
    assert swapped != pytest.approx(mean)  # the subsets drawn follow the roles
    # Unbiased: two samples of one distribution average to 0; a shift is positive.
    same = [common.kernel_inception_distance(torch.randn(200, 5, generator=g),
                                             torch.randn(200, 5, generator=g), 1, 200)[0]
            for _ in range(20)]
    assert abs(np.mean(same)) < 3 * np.std(same) / np.sqrt(20)
    assert common.kernel_inception_distance(real, real + 1, 1, 12)[0] > 0
    assert common.kernel_inception_distance(real[:1], fake, 100, 1000) == (None, None)
    two = common.kernel_inception_distance(real[:2], fake[:2], 1, 1000)[0]  # the fewest
    assert two == pytest.approx(kid_by_loops(real[:2].double().numpy(),
                                             fake[:2].double().numpy()), rel=1e-9)


def test_kid_equals_torch_fidelity():
    """The same features, subsets and seed as torch-fidelity's KID (its input1 is the
    generated set, input2 the reference)."""
    kid = pytest.importorskip("torch_fidelity.metric_kid")
    g = torch.Generator().manual_seed(2)
    real, fake = torch.randn(40, 8, generator=g), torch.randn(30, 8, generator=g) * 1.5
    theirs = kid.kid_features_to_metric(fake.double(), real.double(), kid_subsets=7,
                                        kid_subset_size=20,
                                        kid_kernel="poly", kid_kernel_poly_degree=3,
                                        kid_kernel_poly_gamma=None, kid_kernel_poly_coef0=1,
                                        rng_seed=2020, verbose=False)
    ours = common.kernel_inception_distance(real, fake, subsets=7, subset_size=20)
    assert ours == pytest.approx((theirs["kernel_inception_distance_mean"],
                                  theirs["kernel_inception_distance_std"]), rel=1e-9)


def test_parzen_of_one_sample_is_a_gaussian():
    centre, points, sigma = torch.randn(1, 5).double(), torch.randn(7, 5).double(), 0.3
    got = eval_module.parzen_log_likelihood(centre, points, [sigma, 1.0])
    expected = stats.multivariate_normal(centre[0].numpy(), sigma ** 2 * np.eye(5)).logpdf(points)
    assert got.shape == (2, 7) and got.dtype == torch.float64
    assert np.allclose(got[0].numpy(), expected, rtol=1e-12, atol=0)  # the widths in float64


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


def test_parzen_split_never_chooses_the_width_on_training_images():
    """The width is chosen on the images the run held out where it has them, the test
    images (at most 10,000) scored; otherwise on a seeded random half of the test images,
    the other half scored (never the same image in both); MNIST's 2-pixel zero border (added
    to make 32x32) is cut off."""
    held, test = torch.arange(1495, 1500), torch.arange(20_000, 20_297)
    valid, scored, how = eval_module.parzen_split(test, held, seed=0)
    assert torch.equal(valid, held) and torch.equal(scored, test)
    assert how == "held-out training images"
    for none in (None, held[:0]):
        valid, scored, how = eval_module.parzen_split(test, none, seed=0)
        order = torch.randperm(297, generator=torch.Generator().manual_seed(0))
        assert torch.equal(scored, test[order[:148]])
        assert torch.equal(valid, test[order[148:296]])
        assert not set(valid.tolist()) & set(scored.tolist()) and "half of the test" in how
    assert not torch.equal(eval_module.parzen_split(test, None, seed=1)[0], valid)
    many = torch.arange(25_000)
    valid, scored, _ = eval_module.parzen_split(many, None, seed=0)
    assert len(valid) == len(scored) == 10_000
    assert torch.equal(eval_module.parzen_split(many, held, 0)[1], many[:10_000])
    digits = torch.rand(3, 1, 28, 28)
    padded = torch.nn.functional.pad(digits, (2, 2, 2, 2))  # what load_images gives MNIST
    torch.testing.assert_close(eval_module.parzen_points(padded, "mnist"), digits.flatten(1))
    torch.testing.assert_close(eval_module.parzen_points(padded, "digits"), padded.flatten(1))


def test_parzen_grid_is_widened_where_the_best_width_is_its_edge():
    """Samples of N(0, s^2 I) scored on points of the same: the best kernel width grows with
    s (about s / 3 for 500 samples in 2-D); where it lies outside 0.10 .. 0.29 the grid
    goes on by 0.01 past its edge until the best lies inside, and says so."""
    g = torch.Generator().manual_seed(0)
    widths = np.round(np.arange(1, 101) / 100, 2)  # 0.01 .. 1.00, every width it can reach
    for s, low, high in ((0.6, 0.1, 0.29), (1.5, 0.3, 1.0), (0.1, 0.01, 0.09)):
        samples, valid = (s * torch.randn(500, 2, generator=g) for _ in range(2))
        sigma, widened = eval_module.parzen_width(samples, valid)
        likelihood = lambda w: eval_module.parzen_log_likelihood(samples, valid, [w]).mean()  # noqa
        assert low <= sigma <= high and widened == (s != 0.6), (s, sigma)
        scores = [numpy_parzen(samples.double().numpy(), valid.double().numpy(), w).mean()
                  for w in widths]
        assert sigma == widths[int(np.argmax(scores))]  # the best of them all (unimodal)
        neighbours = [w for w in (round(sigma - 0.01, 2), round(sigma + 0.01, 2)) if w > 0]
        assert all(likelihood(sigma) >= likelihood(w) for w in neighbours)  # a maximum


def numpy_parzen(samples, points, sigma):
    """log p of each point under the Gaussian kernel density on the samples, by scipy."""
    from scipy.special import logsumexp

    d2 = ((points[:, None, :] - samples[None]) ** 2).sum(-1)
    dim = samples.shape[1]
    return (logsumexp(-d2 / (2 * sigma ** 2), axis=1) - np.log(len(samples))
            - dim / 2 * np.log(2 * np.pi * sigma ** 2))


def test_parzen_protocol(dae_run, monkeypatch):
    """--parzen-samples samples; the width of the grid 0.10 .. 0.29 whose mean log-likelihood
    of the validation points (a seeded half of the test digits: the run held none out) is
    highest; the other half's mean log-likelihood at that width, with its standard error
    (scipy)."""
    seen = []
    real = eval_module.parzen_log_likelihood
    monkeypatch.setattr(eval_module, "parzen_log_likelihood",
                        lambda *a: seen.append([torch.as_tensor(t).double().numpy() for t in a])
                        or real(*a))
    result = eval_module.parzen(str(dae_run), eval_module.Args(
        samplers=["gmm"], parzen_samples=30, device="cpu", seed=3))
    column = result["columns"]["gmm"]
    (samples, valid, _), *_, (again, test, _) = seen
    assert samples.shape == (30, 32 * 32) and np.array_equal(samples, again)
    import dae

    drawn = dae.sample(dae.load_run(str(dae_run)), 30, "gmm", 3)  # the samples of --seed 3
    assert np.allclose(samples, drawn.flatten(1).double().numpy())
    digits = common.load_images("digits", "", "test").flatten(1).double() / 255
    order = torch.randperm(297, generator=torch.Generator().manual_seed(3))
    assert np.allclose(valid, digits[order[148:296]].numpy())
    assert np.allclose(test, digits[order[:148]].numpy())
    grid = np.arange(0.1, 0.3, 0.01)
    scores = [numpy_parzen(samples, valid, sigma).mean() for sigma in grid]
    if 0 < np.argmax(scores) < len(grid) - 1:  # inside the grid: no widening
        assert column["sigma"] == pytest.approx(grid[np.argmax(scores)]) and not column["widened"]
    ll = numpy_parzen(samples, test, column["sigma"])
    assert len(ll) == 148 and column["log_likelihood"] == pytest.approx(ll.mean(), rel=1e-6)
    assert column["standard_error"] == pytest.approx(stats.sem(ll), rel=1e-6)
    assert result["width_on"] == "a random half of the test images (the other half scored)"


def test_parzen_scores_at_most_10000_test_images(dae_run, monkeypatch):
    load = common.load_images
    many = torch.randint(0, 256, (20_001, 1, 32, 32), dtype=torch.uint8)
    monkeypatch.setattr(common, "load_images", lambda name, root, split, *a: (
        many if split == "test" else load(name, root, split, *a)))
    seen = []
    real = eval_module.parzen_log_likelihood
    monkeypatch.setattr(eval_module, "parzen_log_likelihood",
                        lambda *a: seen.append(len(a[1])) or real(*a))
    monkeypatch.setattr(eval_module, "parzen_width", lambda samples, valid: (
        seen.append(len(valid)) or (0.2, False)))
    eval_module.parzen(str(dae_run), eval_module.Args(samplers=["gmm"], parzen_samples=2,
                                                      device="cpu"))
    assert seen == [10_000, 10_000]


def test_parzen_gives_each_samplers_nll_of_the_test_codes(dae_run, capsys):
    """With an encoder, each sampler's mean -log p(E(x)) over the test images scored (nats per code),
    by scipy: N(0, I) and the MVG of the stored mean and covariance (plus the 1e-6 jitter)."""
    import dae

    result = eval_module.parzen(str(dae_run), eval_module.Args(
        samplers=["normal", "mvg"], parzen_samples=2, device="cpu"))["columns"]
    run = dae.load_run(str(dae_run))
    scored = torch.randperm(297, generator=torch.Generator().manual_seed(0))[:148]
    with torch.no_grad():  # the codes of the test digits scored (the other half chose widths)
        x = common.load_images("digits", "", "test")[scored].float() / 255
        z = run.model.encoder(x).double().numpy()  # [148, 4], eval mode
    assert z.shape == (148, 4)
    normal = -stats.multivariate_normal(np.zeros(4), np.eye(4)).logpdf(z).mean()
    assert result["normal"]["code_nll"] == pytest.approx(normal, rel=1e-5)
    mvg = common.load_checkpoint(dae_run)["samplers"]["mvg"]
    mean, cov = mvg["means"][0].numpy(), mvg["covs"][0].numpy() + 1e-6 * np.eye(4)
    expected = -stats.multivariate_normal(mean, cov).logpdf(z).mean()
    assert result["mvg"]["code_nll"] == pytest.approx(expected, rel=1e-5)
    assert expected < normal  # the codes' own Gaussian fits them better than the prior
    result["lde"] = {**result["mvg"], "code_nll": None}  # a sampler of a run without an encoder
    table = eval_module.parzen_table({str(dae_run): {"method": "dae", "columns": result,
                                                     "paper": "326 +- 2",
                                                     "width_on": "somewhere"}}).splitlines()
    header, rows = table[0], dict(zip(("normal", "mvg", "lde"), table[2:]))
    assert header.split("|")[-2].strip() == "test-code NLL"
    assert all(line.count("|") == header.count("|") == 9 for line in table)  # the rule too
    assert rows["mvg"].endswith(f"| - | {result['mvg']['code_nll']:.2f} |")
    assert rows["lde"].endswith("| 326 +- 2 | - |")  # Table 2's figure on the LDE row alone


def test_parzen_of_every_sampler(dae_run, capsys):
    args = eval_module.Args(runs=[str(dae_run)], parzen=True, parzen_samples=40, device="cpu")
    result = eval_module.main(args, set())[str(dae_run)]
    scores = result["columns"]
    assert set(scores) == {"normal", "mvg", "gmm"} and result["paper"] == ""
    assert all(math.isfinite(s["log_likelihood"]) and s["standard_error"] > 0
               and (0.1 <= s["sigma"] <= 0.29) != s["widened"] for s in scores.values())
    logged = json.loads((dae_run / "log.jsonl").read_text().splitlines()[-1])
    assert logged["parzen"] == scores and logged["width_on"] == result["width_on"]
    out = capsys.readouterr().out
    assert "log-likelihood (nats)" in out and "| a random half of the test images" in out


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


def test_bad_input(dae_run, stub_inception, tmp_path, capsys):
    def error(*argv):
        return cli_error(eval_module, argv, capsys)

    assert "no checkpoint.pt" in error(tmp_path)
    (tmp_path / "checkpoint.pt").write_bytes(b"garbage")
    assert "could not be read" in error(tmp_path)
    last = error(dae_run, "--samplers", "lde", "--num-samples", "4", "--ref-size", "4")
    assert "no sampler lde" in last and "gmm" in last
    last = error(dae_run, "--num-samples", "1")
    assert "--num-samples" in last and "at least 2" in last
    assert "two folders" in error("--fid", tmp_path)
    assert "give run folders" in error()
    for side in (32, 40):  # a folder of images of two sizes
        Image.new("RGB", (side, side)).save(tmp_path / f"{side}.png")
    assert "differ in size" in error("--fid", tmp_path, tmp_path, "--device", "cpu")


def test_parzen_width_is_chosen_on_the_held_out_images(dae_run, monkeypatch):
    """Where the run's method holds images out (data_splits: the IAE's --holdout on MNIST,
    the RAE's validation images), the width is chosen on those, never seen in training, and
    the test split is scored."""
    import dae

    train_digits = common.load_images("digits", "", "train")  # the DAE run, as if it had
    monkeypatch.setattr(dae, "data_splits", lambda run_args, root: (  # held out the last 150
        train_digits[:1350], train_digits[1350:]), raising=False)
    seen = []
    real = eval_module.parzen_log_likelihood
    monkeypatch.setattr(eval_module, "parzen_log_likelihood",
                        lambda samples, points, sigmas: seen.append(points) or
                        real(samples, points, sigmas))
    eval_module.parzen(str(dae_run), eval_module.Args(samplers=["gmm"], parzen_samples=20,
                                                      device="cpu"))
    train_images = common.load_images("digits", "", "train")
    torch.testing.assert_close(seen[0], train_images[1350:].float().flatten(1) / 255)
    torch.testing.assert_close(seen[-1], common.load_images("digits", "", "test").float()
                               .flatten(1) / 255)


class StubInception(torch.nn.Module):
    """Stands in for common.Inception: 12-d "pool3" features and 10 "logits" that are two
    different fixed random linear maps of the 8-bit images (grey repeated to RGB), so that a
    metric fed one where the other belongs, or one set where another belongs, changes."""

    weights_digest = "stub"

    def __init__(self):
        super().__init__()
        g = torch.Generator().manual_seed(5)
        self.register_buffer("fc_weight", torch.zeros(10, 12))  # where the outputs go
        self.pool_map = torch.randn(3 * 32 * 32, 12, generator=g, dtype=torch.float64)
        self.logit_map = torch.randn(3 * 32 * 32, 10, generator=g, dtype=torch.float64) / 5

    def forward(self, images, logits=True):
        x = (images.float().clamp(0, 1) * 255).round().expand(-1, 3, -1, -1).flatten(1).double()
        return x / 255 @ self.pool_map, (x / 255 @ self.logit_map) if logits else None


def test_every_figure_equals_the_reference_libraries_on_the_same_features(dae_run, monkeypatch,
                                                                          tmp_path):
    """eval.py end to end, through its entry point, with a stand-in network of known
    features and logits: the reference is the whole test split; REC reconstructs exactly
    those images; FID equals pytorch-fid's, IS torch-fidelity's (on the logits, shuffled),
    KID torch-fidelity's (generated first), precision / recall torch-fidelity's (generated
    first, on equal-size sets), each computed here from the features the run produced."""
    import dae

    monkeypatch.setattr(common, "Inception", StubInception)
    outputs, real = {}, common.inception_outputs
    monkeypatch.setattr(common, "inception_outputs", lambda net, batches, total=None, desc="",
                        logits=True: outputs.setdefault(desc, real(net, batches, total, desc,
                                                                    logits)))
    args = eval_module.Args(runs=[str(dae_run)], num_samples=40, samplers=["gmm"], device="cpu",
                            kid_subsets=5, kid_subset_size=20, data_root=str(tmp_path))
    metrics = eval_module.main(args, set())[str(dae_run)]
    net, test = StubInception(), common.load_images("digits", "", "test")  # 297 digits
    torch.testing.assert_close(outputs["reference test"][0], net(test.float() / 255)[0])
    run = dae.load_run(str(dae_run))
    rec = dae.decode(run, dae.encode(run, test.float() / 255))
    torch.testing.assert_close(outputs["REC"][0], net(rec)[0])
    assert metrics["reference_images"] == 297 and metrics["columns"]["rec"]["n"] == 297
    from pytorch_fid.fid_score import calculate_frechet_distance

    fidelity = pytest.importorskip("torch_fidelity")
    from torch_fidelity import metric_isc, metric_kid, metric_prc

    ref = outputs["reference test"][0].numpy()
    for column, desc in (("rec", "REC"), ("gmm", "gmm"), ("interp", "Interp")):
        features, logits = outputs[desc]
        got = metrics["columns"][column]
        gen = features.numpy()
        fid = calculate_frechet_distance(gen.mean(0), np.cov(gen, rowvar=False), ref.mean(0),
                                         np.cov(ref, rowvar=False))
        assert got["fid"] == pytest.approx(fid, rel=1e-6, abs=1e-9)
        isc = metric_isc.isc_features_to_metric(logits, splits=10, rng_seed=2020)
        assert (got["is_mean"], got["is_std"]) == pytest.approx(
            (isc["inception_score_mean"], isc["inception_score_std"]), rel=1e-5)
        kid = metric_kid.kid_features_to_metric(
            features, outputs["reference test"][0], kid_subsets=5, kid_subset_size=20,
            kid_kernel="poly", kid_kernel_poly_degree=3, kid_kernel_poly_gamma=None,
            kid_kernel_poly_coef0=1, rng_seed=2020, verbose=False)
        assert got["kid_mean"] == pytest.approx(kid["kernel_inception_distance_mean"], rel=1e-9)
        n = len(gen)
        subset = ref if n == len(ref) else ref[np.random.RandomState(2020).choice(
            len(ref), n, replace=False)]
        prc = metric_prc.prc_features_to_metric(features.float(), torch.from_numpy(subset).float(),
                                                prc_neighborhood=3, prc_batch_size=1000,
                                                save_cpu_ram=False, verbose=False)
        assert (got["precision"], got["recall"]) == pytest.approx(
            (prc["precision"], prc["recall"]))
    assert fidelity.__version__


def test_the_paper_figure_needs_the_papers_samples_and_whole_reference():
    """A paper's figure is printed beside ours only for PAPER_SAMPLES samples against the
    whole split (and, by the method file's paper_fid, the paper's setting)."""
    class Method:
        PAPER_SAMPLES = 10_000

        @staticmethod
        def paper_fid(args, ref):
            return {"gmm": 73.78}

    whole, part = {"whole": True}, {"whole": False}
    figures = lambda n, ref: eval_module.paper_figures(  # noqa: E731
        Method, {}, eval_module.Args(num_samples=n), ref)
    assert figures(10_000, whole) == {"gmm": 73.78}
    assert figures(10_000, part) == {} and figures(5_000, whole) == {}
    assert eval_module.paper_figures(object, {}, eval_module.Args(), whole) == {}


def test_rec_and_interp_use_the_reference_images(dae_run, monkeypatch, tmp_path):
    """REC reconstructs the reference's own images and Interp draws its pairs from them: here
    a seeded random 6 of the training digits (--ref train --ref-size 6), whose features are
    the reference's."""
    monkeypatch.setattr(common, "Inception", StubInception)
    given = {}
    for name in ("reconstructed", "interpolated"):
        real = getattr(eval_module, name)
        monkeypatch.setattr(eval_module, name, lambda method, run, images, *a, _real=real,
                            _name=name: given.setdefault(_name, images.cpu()) is None or
                            _real(method, run, images, *a))
    metrics = eval_module.evaluate(str(dae_run), eval_module.Args(
        num_samples=4, ref="train", ref_size=6, samplers=["gmm"], device="cpu",
        data_root=str(tmp_path)))
    train_digits = common.load_images("digits", "", "train")
    chosen = train_digits[torch.randperm(1500, generator=torch.Generator().manual_seed(0))[:6]]
    assert torch.equal(given["reconstructed"], chosen)
    assert torch.equal(given["interpolated"], chosen)
    assert metrics["reference_images"] == 6 and metrics["columns"]["rec"]["n"] == 6
    assert metrics["columns"]["interp"]["n"] == 4


def test_the_is_path_is_torch_fidelitys(torch_home, monkeypatch):
    """IS logits: 8-bit images, TensorFlow 1's bilinear resize, (x - 128) / 128, the same
    weights: torch-fidelity's own extractor on the same images gives the same logits; the
    pool3 features follow pytorch-fid's input path, which differs."""
    fidelity = pytest.importorskip("torch_fidelity.feature_extractor_inceptionv3")
    from torch_fidelity.interpolate_compat_tensorflow import \
        interpolate_bilinear_2d_like_tensorflow1x

    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    images = (torch.rand(3, 3, 32, 32, generator=torch.Generator().manual_seed(0)) * 255).round()
    resized = common.tf1_bilinear(images, 299)
    assert torch.equal(resized, interpolate_bilinear_2d_like_tensorflow1x(
        images, size=(299, 299), align_corners=False))
    extractor = fidelity.FeatureExtractorInceptionV3(
        "inception-v3-compat", ["2048", "logits_unbiased"],
        feature_extractor_weights_path=str(torch_home / "hub" / "checkpoints" /
                                           common.INCEPTION_FILE))
    their_pool, their_logits = extractor(images.to(torch.uint8))
    pool, logits = common.Inception()(images / 255)
    torch.testing.assert_close(logits, their_logits.double(), rtol=1e-5, atol=1e-4)
    assert not torch.allclose(pool, their_pool.double(), rtol=1e-3)  # pytorch-fid's path


def test_fid_of_folders_reads_their_top_level_as_pytorch_fid(inception, tmp_path, monkeypatch):
    """--fid DIR DIR: the images at each folder's top level with pytorch-fid's suffixes,
    sorted; a sub-folder's images are not part of it (pytorch-fid reads none)."""
    images = common.load_images("fake", "", "train")[:6]
    write_pngs(tmp_path / "a", images[:3])
    write_pngs(tmp_path / "a" / "nested", images[3:])
    read = []
    real = common.inception_outputs
    monkeypatch.setattr(common, "inception_outputs", lambda net, batches, **k: real(
        net, (read.append(b) or b for b in batches), **k))
    mu, _ = eval_module.folder_stats(inception, str(tmp_path / "a"), 2)
    assert torch.equal(torch.cat(read), images[:3].float() / 255)
    (tmp_path / "only_nested" / "inside").mkdir(parents=True)
    write_pngs(tmp_path / "only_nested" / "inside", images[:2])
    with pytest.raises(common.UserError, match="holds no images at its top level"):
        eval_module.folder_stats(inception, str(tmp_path / "only_nested"), 2)


def test_an_unreadable_reference_cache_is_computed_again(torch_home, tmp_path, monkeypatch):
    """A cache left half-written (a kill, or two evaluations at once) is computed again and
    rewritten whole, never a traceback; the write goes through a temporary file."""
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    run_args = {"dataset": "digits", "image_size": 0, "crop": 0}
    first = eval_module.reference(common.Inception(), run_args, str(tmp_path), "test", 4, 4)
    (cache,) = (tmp_path / "fid-stats").glob("*.npz")
    cache.write_bytes(cache.read_bytes()[:100])
    again = eval_module.reference(common.Inception(), run_args, str(tmp_path), "test", 4, 4)
    torch.testing.assert_close(again["mu"], first["mu"])
    with np.load(cache) as stored:
        assert np.allclose(stored["mu"], first["mu"].numpy())
    assert [p.name for p in (tmp_path / "fid-stats").iterdir()] == [cache.name]


def test_the_tables_cells_are_their_figures():
    """Each cell of the table: FID, the paper's, KID x 1000 with its spread where it has one,
    IS with its spread, precision and recall; the smoke-test note only where one run is one.
    Parzen: the width, marked where the grid was widened, and where it was chosen."""
    column = {"fid": 12.345, "n": 10, "kid_mean": 0.0123, "kid_std": 0.0045, "is_mean": 3.21,
              "is_std": 0.12, "precision": 0.5, "recall": 0.25}
    whole = {**column, "kid_std": None, "precision": None}
    results = {"runs/a": {"method": "dae", "columns": {"gmm": column, "rec": whole},
                          "paper_fid": {"gmm": 73.78}, "smoke_test": False}}
    rows = [r.split("|")[1:-1] for r in eval_module.table(results).splitlines()[2:]]
    assert [c.strip() for c in rows[0]] == ["a", "dae", "GMM", "12.35", "73.78",
                                            "12.30 ± 4.50", "3.21 ± 0.12", "0.500", "0.250"]
    assert [c.strip() for c in rows[1]][3:] == ["12.35", "-", "12.30", "3.21 ± 0.12", "-",
                                                "0.250"]
    assert "smoke tests" not in eval_module.table(results)
    assert "smoke tests" in eval_module.table({"runs/a": {**results["runs/a"], "smoke_test": True}})
    parzen = {"runs/a": {"method": "iae_lde", "paper": "326 +- 2", "width_on": "held-out images",
                         "columns": {"lde": {"log_likelihood": 300.04, "standard_error": 2.0,
                                             "sigma": 0.31, "widened": True, "code_nll": 1.5},
                                     "gmm": {"log_likelihood": 1.0, "standard_error": 1.0,
                                             "sigma": 0.2, "widened": False}}}}
    lde, gmm = [r.split("|")[1:-1] for r in eval_module.parzen_table(parzen).splitlines()[2:]]
    assert [c.strip() for c in lde] == ["a", "iae_lde", "LDE", "300.0 ± 2.0",
                                        "0.31 (grid widened)", "held-out images", "326 +- 2",
                                        "1.50"]
    assert [c.strip() for c in gmm][4:] == ["0.20", "held-out images", "-", "-"]


def test_runs_without_a_checkpoint_leave_one_line_or_one_error(tmp_path, capsys):
    """Of two folders without a checkpoint, the error names the first; a run of another
    method given to a method file's load_run says whose it is."""
    import dae
    import deciphering

    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert f"{tmp_path / 'a'} has no checkpoint.pt" in cli_error(
        eval_module, [tmp_path / "a", tmp_path / "b"], capsys)
    run = train(dae, tmp_path, dataset="fake", filters=4, latent_dim=3, epochs=1, batch_size=64,
                gmm_components=2)
    with pytest.raises(common.UserError, match="is a dae run, not a deciphering run"):
        deciphering.load_run(str(run))


def test_the_data_root_typed_or_the_runs_own(dae_run, monkeypatch, tmp_path):
    """--data-root typed is where the reference and the Parzen images are read (the run's
    own --data-root otherwise), for every split read."""
    monkeypatch.setattr(common, "Inception", StubInception)
    roots, real = [], common.run_images
    monkeypatch.setattr(common, "run_images", lambda settings, split, data_root="": roots.append(
        (split, data_root or settings["data_root"])) or real(settings, split, data_root))
    typed = str(tmp_path / "elsewhere")
    args = dict(num_samples=3, ref_size=3, samplers=["gmm"], parzen_samples=3, device="cpu")
    eval_module.evaluate(str(dae_run), eval_module.Args(**args, data_root=typed))
    eval_module.parzen(str(dae_run), eval_module.Args(**args, data_root=typed))
    assert roots and all(root == typed for _, root in roots)
    own = common.load_checkpoint(dae_run)["args"]["data_root"]
    roots.clear()
    eval_module.parzen(str(dae_run), eval_module.Args(**args))
    assert roots == [("test", own)]


def test_the_paper_figure_of_a_run_at_the_papers_protocol(dae_run, stub_inception, monkeypatch,
                                                          tmp_path):
    """evaluate() asks the method file for the paper's figure only at its sample count
    against the whole split (here PAPER_SAMPLES 5 and the 297 test digits)."""
    import dae

    monkeypatch.setattr(dae, "PAPER_SAMPLES", 5)
    monkeypatch.setattr(dae, "paper_fid", lambda run_args, ref: {"gmm": 73.78, "ref": ref})
    args = dict(samplers=["gmm"], device="cpu", data_root=str(tmp_path))
    whole = eval_module.evaluate(str(dae_run), eval_module.Args(num_samples=5, **args))
    assert whole["paper_fid"] == {"gmm": 73.78, "ref": "test"}
    assert eval_module.evaluate(str(dae_run), eval_module.Args(num_samples=5, ref_size=10,
                                                               **args))["paper_fid"] == {}
    assert eval_module.evaluate(str(dae_run), eval_module.Args(num_samples=4, **args)
                                )["paper_fid"] == {}
