"""dae.py: its loss and schedule against independent computations, a toy run in this
process that shows what the method claims (the reconstruction is learnt; the ex-post
densities are fitted to the eval-mode codes of the training split), and its user errors."""
import dataclasses
import math

import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli

import common
import dae
from conftest import RUN_OPTIONS, cli_error, log_records, recorded, train


def test_defaults_are_the_papers_setting():
    """Daly et al. Sec. 3 and Table 2: CIFAR-10, f = 128 on one conv per stage, 128 latents,
    100 epochs of batches of 128, Adam at 1e-3 after one warm-up epoch at 1e-4, a GMM of
    10 components; no augmentation, no latent norm, noise or frozen layer (Sec. 4's
    variants are options)."""
    paper = dict(dataset="cifar10", image_size=0, crop=0, flip=False, filters=128, depth=[1],
                 latent_dim=128, latent_norm="none", noise_std=0.0, freeze_latent=False,
                 batch_norm=True, epochs=100, schedule_epochs=0, batch_size=128, lr=1e-3,
                 warmup_lr=1e-4, gmm_components=10)
    assert dataclasses.asdict(dae.Args()) == {**paper, **RUN_OPTIONS}


def test_loss_is_the_bernoulli_negative_log_likelihood_per_pixel():
    """Guards the sign and the scale (mean over pixels and batch) of the only loss term."""
    g = torch.Generator().manual_seed(0)
    logits, x = torch.randn(2, 3, 4, 4, generator=g) * 3, torch.rand(2, 3, 4, 4, generator=g)
    expected = -Bernoulli(logits=logits, validate_args=False).log_prob(x).mean()
    assert dae.reconstruction_loss(logits, x).item() == pytest.approx(expected.item(), rel=1e-6)


def test_the_log_holds_each_epochs_mean_loss(tmp_path, monkeypatch):
    """Per epoch (numbered from 1): the mean of its steps' losses and the epoch's rate (the
    warm-up's 1e-4, then the schedule's 1e-3 x 0.1 per switch at int(0.33 E) and
    int(0.66 E): both at or before epoch 1 when E = 3). Adam with Keras' eps, 1e-7."""
    losses = recorded(monkeypatch, dae, "reconstruction_loss")
    folder = train(dae, tmp_path, dataset="digits", filters=4, latent_dim=3, epochs=3,
                   batch_size=400, gmm_components=1)
    log = log_records(folder)
    assert [r["epoch"] for r in log] == [1, 2, 3] and len(losses) == 3 * 3  # 1500 // 400
    for e, record in enumerate(log):
        mean = sum(loss.item() for loss in losses[3 * e:3 * e + 3]) / 3
        assert record["loss"] == pytest.approx(mean, rel=1e-5)
    assert [r["lr"] for r in log] == pytest.approx([1e-4, 1e-5, 1e-5], rel=1e-12)
    checkpoint = common.load_checkpoint(folder)
    adam = checkpoint["optimizer"]["param_groups"][0]
    assert adam["eps"] == 1e-7 and adam["betas"] == (0.9, 0.999)
    tracked = {v.item() for k, v in checkpoint["model"].items() if "num_batches" in k}
    assert tracked == {3 * 3}  # every training step, in train mode, and nothing else


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
    assert ln.encoder[1][1].eps == 1e-3  # Keras' LayerNormalization epsilon
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


# Daly et al.'s DAE rows as printed: Table 2 (CIFAR-10, 128 latents; BN: the latent batch
# norm), Table 3 (best latent sizes) and Sec. 4's best model; CelebA's Table 2 row is
# Table 3's at 128 latents. Data set, filters, depths, latents, norm: Test R, N(z; 0, 1),
# MVG, GMM ('-' where the paper gives none).
DALY_DAE_ROWS = """
    cifar10  32   1        128  none   60.20  288.8   99.60  90.55
    cifar10  64   1        128  none   48.05  372.30  85.38  77.36
    cifar10  128  1        128  none   45.21  282.3   82.49  73.78
    cifar10  128  1        128  bn     45.24  94.14   82.64  73.05
    cifar10  256  1        128  none   47.51  402.7   90.59  79.97
    cifar10  32   1        160  none   51.06  376.1   98.90  88.17
    cifar10  32   1        192  none   43.55  419.6   98.49  88.51
    cifar10  64   1        152  none   43.22  370.8   86.55  76.59
    cifar10  128  1        144  none   40.31  428.6   81.62  72.82
    cifar10  256  1        160  none   37.70  379.5   86.90  75.67
    cifar10  128  3,3,2,1  96   none   -      -       77.10  67.32
    celeba   32   1        384  none   32.50  474.4   62.77  51.58
    celeba   64   1        80   none   45.83  409.5   53.76  49.31
    celeba   64   1        384  none   29.62  502.9   55.67  45.80
    celeba   128  1        96   none   34.84  406.47  44.98  39.13
    celeba   128  1        128  none   31.85  426.9   46.96  39.10
"""


def test_paper_figures_are_the_papers_tables():
    """Each reported DAE setting gets exactly its row of the paper's tables."""
    for line in DALY_DAE_ROWS.strip().splitlines():
        dataset, filters, depth, latent, norm, *fids = line.split()
        args = {**dataclasses.asdict(dae.Args()), "dataset": dataset, "filters": int(filters),
                "depth": [int(d) for d in depth.split(",")], "latent_dim": int(latent),
                "latent_norm": norm}
        expected = {column: float(fid) for column, fid in
                    zip(("rec", "normal", "mvg", "gmm"), fids) if fid != "-"}
        assert dae.paper_fid(args) == expected, line


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
    assert [r["epoch"] for r in log] == [1, 2, 3] and all(r["loss"] > 0 for r in log)
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
    # reconstructions.png: the first 64 test digits, 8 rows of 8 each followed by its row
    # of reconstructions: 16 rows of 32 px images, a 1-pixel border around each
    from PIL import Image

    assert Image.open(folder / "reconstructions.png").size == (8 * 33 + 1, 16 * 33 + 1)


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


def test_the_grids_show_test_images_and_their_codes_decoded(digits_run):
    """interpolations.png: rows from test image 2i to test image 2i + 1 (its first and last
    columns, 8-bit), the decoded codes between; reconstructions.png: rows of test images,
    each followed by the row of their reconstructions."""
    from PIL import Image

    folder, _ = digits_run
    test = common.load_images("digits", "", "test")[:64]  # uint8 [64, 1, 32, 32]

    def cells(name, columns):  # the grid's images: 1-pixel padding, nrow = columns
        with Image.open(folder / name) as grid:
            pixels = torch.from_numpy(np.array(grid.convert("L")))
        rows = (pixels.shape[0] - 1) // 33
        return pixels[1:].view(rows, 33, -1)[:, :32, 1:].reshape(rows, 32, columns, 33)[
            ..., :32].permute(0, 2, 1, 3)  # [rows, columns, 32, 32]

    interpolations = cells("interpolations.png", 10)
    assert torch.equal(interpolations[:, 0], test[0:16:2, 0])
    assert torch.equal(interpolations[:, -1], test[1:16:2, 0])
    assert not torch.equal(interpolations[:, 1], test[0:16:2, 0])  # decoded, not copied
    reconstructions = cells("reconstructions.png", 8)
    assert torch.equal(reconstructions[0::2].flatten(0, 1), test[:, 0])
    assert not torch.equal(reconstructions[1::2].flatten(0, 1), test[:, 0])


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


def test_sync_bn_in_one_process_is_a_no_op_even_on_the_cpu(tmp_path):
    """--sync-bn only matters under torchrun (several processes, CUDA); in one process, as
    here, it is refused nowhere and changes nothing."""
    settings = dict(dataset="digits", filters=4, latent_dim=4, epochs=1, batch_size=64,
                    gmm_components=2)
    plain = train(dae, tmp_path / "plain", **settings)
    synced = train(dae, tmp_path / "synced", sync_bn=True, **settings)
    weights = [torch.load(folder / "checkpoint.pt", weights_only=True)["model"]
               for folder in (plain, synced)]
    for name, tensor in weights[0].items():
        assert torch.equal(weights[1][name], tensor), name


def test_a_batch_may_hold_every_training_image(tmp_path):
    """Digits' 1,500 training images in one batch: one step an epoch; one more is an error."""
    settings = dict(dataset="digits", filters=4, latent_dim=4, epochs=1, gmm_components=2)
    folder = train(dae, tmp_path, batch_size=1500, **settings)
    assert log_records(folder)[0]["epoch"] == 1
    with pytest.raises(common.UserError, match="larger than the 1500 training images"):
        train(dae, tmp_path / "other", batch_size=1501, **settings)
