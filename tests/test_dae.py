"""dae.py: its loss and schedule against independent computations, a toy run in this
process that shows what the method claims (the reconstruction is learnt; the ex-post
densities are fitted to the eval-mode codes of the training split), and its user errors."""
import dataclasses
import math

import pytest
import torch
from torch.distributions import Bernoulli

import common
import dae
from conftest import cli_error, log_records, train


def test_loss_is_the_bernoulli_negative_log_likelihood_per_pixel():
    """Guards the sign and the scale (mean over pixels and batch) of the only loss term."""
    g = torch.Generator().manual_seed(0)
    logits, x = torch.randn(2, 3, 4, 4, generator=g) * 3, torch.rand(2, 3, 4, 4, generator=g)
    expected = -Bernoulli(logits=logits, validate_args=False).log_prob(x).mean()
    assert dae.reconstruction_loss(logits, x).item() == pytest.approx(expected.item(), rel=1e-6)


def test_daly_learning_rate_schedule():
    """Warm-up epoch at 1e-4, then 1e-3, x0.1 from epoch 33 and again from epoch 66 (E=100)."""
    rates = [common.daly_learning_rate(e, 100, 1e-3, 1e-4) for e in range(100)]
    expected = [1e-4] + [1e-3] * 32 + [1e-4] * 33 + [1e-5] * 34
    assert all(math.isclose(a, b) for a, b in zip(rates, expected)), rates


def test_latent_layer_variants():
    """Sec. 4: BN (affine) or LN on the code, SN of the latent Linear, a frozen latent layer."""
    x = torch.rand(64, 3, 32, 32)
    bn = dae.DAE(dae.Args(filters=4, latent_dim=6, latent_norm="bn"), 3, 32).train()
    z = bn.encoder(x)
    torch.testing.assert_close(z.mean(0), torch.zeros(6), rtol=0, atol=1e-5)
    assert sum(p.numel() for p in bn.encoder[1][1].parameters()) == 12  # gamma, beta
    ln = dae.DAE(dae.Args(filters=4, latent_dim=6, latent_norm="ln"), 3, 32)
    torch.testing.assert_close(ln.encoder(x).mean(1), torch.zeros(64), rtol=0, atol=1e-5)
    sn = dae.DAE(dae.Args(filters=4, latent_dim=6, latent_norm="sn"), 3, 32).train()
    for _ in range(30):  # one power iteration per training pass
        sn.encoder(x[:4])
    linear = sn.encoder[1][0]
    assert torch.linalg.matrix_norm(linear.weight.detach(), 2).item() == pytest.approx(1, abs=0.03)
    frozen = dae.DAE(dae.Args(filters=4, latent_dim=6, freeze_latent=True), 3, 32)
    before = [p.clone() for p in frozen.encoder[1].parameters()]
    first_conv = frozen.encoder[0].convs[0][1].weight.clone()
    optimizer = torch.optim.Adam(frozen.parameters(), lr=0.1)
    logits, _ = frozen(x[:8])
    reconstruction_loss = dae.reconstruction_loss(logits, x[:8])
    reconstruction_loss.backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, frozen.encoder[1].parameters()))
    assert not torch.equal(first_conv, frozen.encoder[0].convs[0][1].weight)


def test_decoder_input_noise_only_in_training():
    """Sec. 4: the decoder reads z + 0.5 eps in training, z itself in eval mode."""
    model = dae.DAE(dae.Args(filters=4, latent_dim=6, noise_std=0.5), 3, 32)
    seen = []
    model.decoder.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    x = torch.rand(4, 3, 32, 32)
    torch.manual_seed(3)
    _, z = model.train()(x)
    torch.manual_seed(3)
    torch.testing.assert_close(seen[-1], z + 0.5 * torch.randn(4, 6))
    _, z = model.eval()(x)
    assert torch.equal(seen[-1], z)


def test_no_batch_norm_removes_every_batch_norm():
    model = dae.DAE(dae.Args(filters=4, latent_dim=6, batch_norm=False), 3, 32)
    assert not [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert len([m for m in dae.DAE(dae.Args(filters=4), 3, 32).modules()
                if isinstance(m, torch.nn.BatchNorm2d)]) == 4 + 2


@pytest.mark.parametrize("changes", [dict(noise_std=0.5), dict(freeze_latent=True),
                                     dict(batch_norm=False), dict(epochs=50), dict(lr=1e-4),
                                     dict(flip=True), dict(latent_dim=100)])
def test_paper_figure_only_for_the_papers_setting(changes):
    """Table 2's f=128 row is printed for the default run; any other setting that matters
    (or an unreported one) prints none, and no figure is against the training split."""
    args = dataclasses.asdict(dae.Args())
    assert dae.paper_fid(args)["gmm"] == 73.78 and dae.paper_fid(args, "train") == {}
    assert dae.paper_fid({**args, **changes}) == {}
    celeba = {**args, "dataset": "celeba", "latent_dim": 128}
    assert dae.paper_fid(celeba)["gmm"] == 39.10  # Table 3 keys it at 128 latents
    assert dae.paper_fid({**celeba, "latent_dim": 64}) == {}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("dae")
    folder = train(dae, tmp, dataset="digits", filters=4, latent_dim=4, epochs=3,
                   batch_size=64, lr=2e-3, gmm_components=2)
    return folder, tmp


def test_training_lowers_the_test_bce_and_writes_the_run(digits_run):
    """The trained model reconstructs held-out digits better than its initial weights (the
    same seed), by the BCE computed here from torch.distributions (batch statistics in the
    batch norms: after 69 steps their running averages, momentum 0.01, are half-formed)."""
    folder, _ = digits_run
    log = log_records(folder)
    assert [r["epoch"] for r in log] == [1, 2, 3] and all(r["bce"] > 0 for r in log)
    test = common.load_images("digits", "", "test").float() / 255

    def test_bce(model):
        with torch.no_grad():
            logits, _ = model.train()(test)
        return -Bernoulli(logits=logits, validate_args=False).log_prob(test).mean().item()

    torch.manual_seed(0)  # what train() seeds before building the model
    initial = dae.DAE(dae.Args(filters=4, latent_dim=4), 1, 32)
    trained = dae.load_run(folder).model
    assert test_bce(trained) < test_bce(initial) - 0.05
    for name in ("reconstructions", "interpolations", "samples_normal", "samples_mvg",
                 "samples_gmm"):
        assert (folder / f"{name}.png").stat().st_size > 0


def test_ex_post_densities_are_fitted_to_eval_mode_codes_of_the_training_split(digits_run):
    """MVG = mean and covariance of E(x) over the training images, E with batch norm's
    running statistics; N(0, I) is the standard normal; samples decode into [0, 1]."""
    folder, tmp = digits_run
    run = dae.load_run(folder)
    train_images = common.load_images("digits", "", "train").float() / 255
    with torch.no_grad():
        codes = run.model.eval().encoder(train_images).double()  # [1500, 4]
    mvg = run.samplers["mvg"]
    torch.testing.assert_close(mvg.means[0], codes.mean(0), rtol=0, atol=1e-5)
    torch.testing.assert_close(mvg.covs[0], torch.cov(codes.T), rtol=0, atol=1e-5)
    normal = run.samplers["normal"]
    assert torch.equal(normal.means, torch.zeros(1, 4, dtype=torch.float64))
    assert torch.equal(normal.covs[0], torch.eye(4, dtype=torch.float64))
    assert run.samplers["gmm"].weights.sum().item() == pytest.approx(1.0)
    images = dae.sample(run, 5, "gmm", seed=1)
    assert images.shape == (5, 1, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, dae.sample(run, 5, "gmm", seed=1))
    with pytest.raises(common.UserError, match="no 'lde' sampler"):
        dae.sample(run, 1, "lde")


@pytest.mark.parametrize("argv, words", [
    (["--epochs", "0"], ["--epochs", "at least 1"]),
    (["--latent-norm", "wn"], ["--latent-norm", "invalid choice"]),
    (["--depth", "3", "3"], ["--depth", "4 values"]),
    (["--filters", "wide"], ["--filters", "invalid int"]),
    pytest.param(["--device", "cuda"], ["CUDA is not available"], marks=pytest.mark.skipif(
        torch.cuda.is_available(), reason="CUDA is available here")),
    (["--batch-size", "5000"], ["larger than the 1500"]),
    (["--image-size", "40"], ["multiple of 16"]),
    (["--resume", "no/such/run"], ["no checkpoint.pt"]),
])
def test_user_mistakes_are_one_line_errors(argv, words, tmp_path, capsys):
    last = cli_error(dae, ["--dataset", "digits", "--filters", "4", "--epochs", "1",
                           "--out-dir", tmp_path, *argv], capsys)
    assert last.startswith(("error:", "dae.py: error:")) and all(w in last for w in words), last


def test_resume_with_more_epochs_keeps_the_run_schedule(tmp_path):
    """Started for 2 epochs (drops at int(0.66) = 0 and int(1.32) = 1), resumed to 5: the
    new epochs keep the 2-epoch schedule's last rate, 1e-5; a 5-epoch schedule would jump
    back to 1e-4 in epoch 3 (drops at 1 and 3)."""
    folder = train(dae, tmp_path, dataset="digits", filters=4, latent_dim=4, epochs=2,
                   batch_size=64, gmm_components=1)
    dae.train(dae.Args(resume=str(folder), epochs=5), {"resume", "epochs"})
    assert [r["lr"] for r in log_records(folder)] == pytest.approx([1e-4, 1e-5, 1e-5, 1e-5, 1e-5])
    assert common.load_checkpoint(folder)["args"]["schedule_epochs"] == 2
