"""iae_lde.py: the LDE's causality, widths and likelihood, the incremental code, the two
decoder outputs, the perceptual loss, the per-data-set settings, and both stages end to end
(--fit-lde and --resume with their own LDE settings)."""
import dataclasses
import json
import math
import os
import shutil
from unittest import mock

import numpy as np
import pytest
import torch
from scipy import stats

import common
import iae_lde as I
from conftest import RUN_OPTIONS, cli_error, log_records, recorded, train


def test_defaults_are_the_official_cifar10_scripts():
    """train_ae.sh / train_armdn.sh (53753c9) for CIFAR-10: ae00 (tanh, 64 filters), d 256,
    W 128, no perceptual loss, batch 128, Adam 1e-3 halved at 20, 50, 100, 200, the
    epoch-250 checkpoint; armdn00 with K 50, 200 epochs of batch 128, Adam 2e-4 halved at
    15, 35, 60, 100, the epoch best on held-out codes kept (ours: a tenth of the training
    codes; the official code validates on its validation split)."""
    official = dict(dataset="cifar10", image_size=0, crop=0, flip=False, filters=64,
                    latent_dim=256, warmup_epochs=128, perc_weight=0.0, output="tanh",
                    holdout=0, epochs=250, lde_components=50, batch_size=128, lr=1e-3,
                    lr_drops=[20, 50, 100, 200], lde_epochs=200, lde_batch_size=128,
                    lde_lr=2e-4, lde_lr_drops=[15, 35, 60, 100], lde_holdout=0.1, fit_lde="",
                    gmm_components=10)
    assert dataclasses.asdict(I.Args()) == {**official, **RUN_OPTIONS}


def lde_with_large_weights(d: int, components: int = 4, seed: int = 0) -> I.LDE:
    """An LDE in eval mode whose weights are large enough that every input visibly moves
    the outputs it may influence (the N(0, 0.02) init makes those effects ~1e-6)."""
    torch.manual_seed(seed)
    lde = I.LDE(d, components)
    for m in lde.modules():
        if isinstance(m, torch.nn.Conv1d):
            torch.nn.init.normal_(m.weight, 0, 0.5)
    return lde.eval()


@pytest.mark.parametrize("d", [1, 2, 13, 16])
def test_lde_is_causal(d):
    """The mixture of dimension j is unchanged when z_j, z_j+1, ... change, and does change
    with z_j-1 and with z_0 (the receptive field covers the whole code)."""
    lde = lde_with_large_weights(d)
    z = torch.randn(6, d)
    with torch.no_grad():
        base = torch.cat(lde(z), dim=2)  # [6, d, 3K]
        assert base.shape == (6, d, 3 * 4)
        for j in range(d):
            changed = z.clone()
            changed[:, j:] = torch.randn(6, d - j) * 3
            torch.testing.assert_close(torch.cat(lde(changed), 2)[:, :j + 1], base[:, :j + 1])
            if j > 0:
                for moved in (j - 1, 0):
                    nudged = z.clone()
                    nudged[:, moved] += 1
                    assert (torch.cat(lde(nudged), 2)[:, j] - base[:, j]).abs().max() > 1e-3


def test_nll_is_minus_log_of_the_mixture_density():
    lde = lde_with_large_weights(5, components=3)
    z = torch.randn(4, 5)
    with torch.no_grad():
        log_pi, mu, log_sigma = lde(z)
        nll = I.mixture_nll(log_pi, mu, log_sigma, z).double().numpy()  # [4, 5]
    pi, mu, sigma = (t.double().numpy() for t in (log_pi.exp(), mu, log_sigma.exp()))
    assert np.allclose(pi.sum(-1), 1)
    density = (pi * stats.norm.pdf(z.double().numpy()[..., None], mu, sigma)).sum(-1)
    assert np.allclose(nll, -np.log(density), rtol=1e-4, atol=1e-4)
    # Eq. (2): the sampler's log p(z) is the sum over the dimensions.
    assert np.allclose(I.LDESampler(lde, {}).log_prob(z).numpy(), -nll.sum(1), rtol=1e-4,
                       atol=1e-4)


def known_mixture(n: int, seed: int):
    """Samples and true log-density of a 3-D, 2-component Gaussian mixture with
    correlated dimensions (bimodal, so a single Gaussian fits it badly)."""
    weights = np.array([0.3, 0.7])
    means = np.array([[-2.0, 0.0, 1.0], [2.0, 1.0, -1.0]])
    covs = np.array([[[1.0, 0.8, 0.0], [0.8, 1.0, 0.3], [0.0, 0.3, 0.5]],
                     [[0.5, -0.2, 0.0], [-0.2, 0.4, 0.1], [0.0, 0.1, 0.3]]])
    rng = np.random.default_rng(seed)
    component = rng.choice(2, size=n, p=weights)
    x = np.stack([rng.multivariate_normal(means[k], covs[k]) for k in component])
    log_density = np.log(sum(w * stats.multivariate_normal(m, c).pdf(x)
                             for w, m, c in zip(weights, means, covs)))
    return torch.tensor(x, dtype=torch.float32), log_density


def test_lde_fits_a_known_mixture(tmp_path):
    """Fitted (lr 2e-3 to converge in a short test) on 6000 samples, its test
    log-likelihood is within 0.1 nats of the true one, and its samples' mean and covariance
    match the mixture's (within what that gap allows)."""
    train, _ = known_mixture(6000, seed=0)
    test, true_log_density = known_mixture(3000, seed=1)
    args = I.Args(lde_components=10, lde_epochs=40, lde_lr=2e-3, lde_lr_drops=[25, 35], seed=0)
    sampler = I.train_lde(train, args, tmp_path, torch.device("cpu"))
    fitted = sampler.log_prob(test).numpy()
    assert abs(fitted.mean() - true_log_density.mean()) < 0.1, fitted.mean()
    mvg = common.fit_samplers(train, seed=0, gmm_components=1)["mvg"]
    single_gaussian = mvg.log_prob(test).numpy()
    assert fitted.mean() > single_gaussian.mean() + 0.3  # it found the two modes
    drawn = sampler.sample(20000, seed=3)
    assert not drawn.requires_grad  # no graph kept through the d sequential steps
    truth, _ = known_mixture(20000, seed=2)
    torch.testing.assert_close(drawn.mean(0), truth.mean(0), atol=0.08, rtol=0)
    # A 0.02-nat gap allows covariances ~0.15 off; sampling that ignored z_<i would miss the
    # cross-covariances (-1.7, 0.9) by their whole size.
    torch.testing.assert_close(torch.cov(drawn.T), torch.cov(truth.T), atol=0.25, rtol=0)
    assert torch.equal(sampler.sample(10, seed=4), sampler.sample(10, seed=4))


def test_the_lde_log_holds_each_epochs_mean_nll(tmp_path, monkeypatch):
    """Per epoch (from 1): the mean of its steps' Eq. (4) losses and the rate, 2e-4 halved
    at each of --lde-lr-drops passed (armdn00's Adam: betas 0.5, 0.999)."""
    codes, _ = known_mixture(640, seed=0)
    losses = recorded(monkeypatch, I, "mixture_nll")
    args = I.Args(lde_components=3, lde_epochs=3, lde_batch_size=320, lde_lr_drops=[1, 2],
                  lde_holdout=0.0, seed=0)
    state = {}  # a run's checkpoint, which keeps the fit
    sampler = I.train_lde(codes, args, tmp_path, torch.device("cpu"), state)
    log = [r for r in log_records(tmp_path) if r.get("stage") == "lde"]
    assert [r["epoch"] for r in log] == [1, 2, 3] and len(losses) == 3 * 2
    for e, record in enumerate(log):
        mean = sum(nll.mean().item() for nll in losses[2 * e:2 * e + 2]) / 2
        assert record["loss"] == pytest.approx(mean, rel=1e-5)
    assert [r["lr"] for r in log] == pytest.approx([2e-4, 1e-4, 5e-5], rel=1e-12)
    saved = common.load_checkpoint(tmp_path)["lde_fit"]["optimizer"]["param_groups"]
    assert saved[0]["betas"] == (0.5, 0.999) and sampler.settings["lde_epochs"] == 3


def test_stage_one_log_and_mask_follow_the_schedule(tmp_path, monkeypatch):
    """Stage one: each step's decoder sees a_t = min(d, int(d e_t / W + 1)) dimensions
    (Sec. 3.4; e_t the fractional epoch), the log holds each epoch's mean loss, its last
    a_t and its rate (1e-3 halved at each of --lr-drops passed; Adam betas 0.5, 0.999)."""
    actives = []
    forward = I.IAE.forward

    def spy(self, x, active):
        actives.append(active)
        return forward(self, x, active)

    monkeypatch.setattr(I.IAE, "forward", spy)
    losses = recorded(monkeypatch, I, "autoencoder_loss")
    folder, _ = train(I, tmp_path, dataset="digits", filters=4, latent_dim=6, warmup_epochs=2,
                      epochs=2, batch_size=400, lr_drops=[1], perc_weight=0.0, output="sigmoid",
                      gmm_components=1)
    steps = 1500 // 400
    expected = [min(6, int(6 * (e + s / steps) / 2 + 1)) for e in range(2) for s in range(steps)]
    assert actives[:6] == expected == [1, 2, 3, 4, 5, 6]
    log = [r for r in log_records(folder) if "active_dims" in r]
    assert [r["epoch"] for r in log] == [1, 2] and [r["active_dims"] for r in log] == [3, 6]
    for e, record in enumerate(log):
        mean = sum(loss.item() for loss in losses[3 * e:3 * e + 3]) / 3
        assert record["loss"] == pytest.approx(mean, rel=1e-5)
    assert [r["lr"] for r in log] == [1e-3, 5e-4]
    checkpoint = common.load_checkpoint(folder)
    assert checkpoint["optimizer"]["param_groups"][0]["betas"] == (0.5, 0.999)
    tracked = {v.item() for k, v in checkpoint["model"].items() if "num_batches" in k}
    assert tracked == {2 * 3}  # every training step, in train mode, and nothing else


def test_the_lde_kept_is_the_one_best_on_held_out_codes(tmp_path, monkeypatch):
    """A random quarter of the codes (--lde-holdout 0.25; not the last, as files sorted by
    class would make that one class) never trains; after each epoch their NLL per dimension
    is logged, and the LDE kept is that of the epoch where it was lowest (at a rate high
    enough that the epochs differ)."""
    codes, _ = known_mixture(800, seed=0)
    batches = []
    nll = I.mixture_nll
    monkeypatch.setattr(I, "mixture_nll", lambda *a: batches.append(a[-1]) or nll(*a))
    args = I.Args(lde_components=3, lde_epochs=8, lde_batch_size=100, lde_lr=0.1, lde_holdout=0.25,
                  seed=0)
    sampler = I.train_lde(codes, args, tmp_path, torch.device("cpu"))
    trained = torch.cat([z for z in batches if len(z) == 100])
    seen = set(map(tuple, trained.tolist()))
    is_held = torch.tensor([tuple(z) not in seen for z in codes.tolist()])
    assert len(trained) == 8 * 600 and is_held.sum() == 200
    assert 70 < is_held[:400].sum() < 130  # spread over the whole set, about half in each half
    held = [r["validation_loss"] for r in log_records(tmp_path) if r.get("stage") == "lde"]
    assert len(held) == 8 and len(set(held)) == 8
    best = int(np.argmin(held))
    assert best < 7 and sampler.settings["kept_epoch"] == best + 1  # not the last epoch
    kept = -sampler.log_prob(codes[is_held]).mean().item() / 3
    assert kept == pytest.approx(held[best], rel=1e-5)


def test_lde_trains_with_batch_statistics(tmp_path):
    """armdn00 trains in train mode: every batch norm normalises with its batch's statistics
    and counts one update per optimizer step (640 codes, batches of 64: 10 steps an epoch),
    which moves its running mean off its initial zeros."""
    codes, _ = known_mixture(640, seed=0)
    args = I.Args(lde_components=3, lde_epochs=2, lde_batch_size=64, lde_holdout=0.0, seed=0)
    sampler = I.train_lde(codes, args, tmp_path, torch.device("cpu"))
    norms = [m for m in sampler.lde.modules() if isinstance(m, torch.nn.BatchNorm1d)]
    assert norms and all(m.num_batches_tracked.item() == 2 * 640 // 64 for m in norms)
    assert all(m.running_mean.abs().sum() > 0 for m in norms)
    assert not sampler.lde.training  # and samples, log_prob in eval mode


def test_an_interrupted_lde_fit_continues_exactly(tmp_path, monkeypatch, capsys):
    """A fit stopped in its second epoch, continued from the run's checkpoint.pt (where each
    epoch stores it), ends with the weights of a fit never stopped; a stored fit of other
    settings, or on the codes of another encoder epoch, is not continued."""
    codes, _ = known_mixture(640, seed=0)
    args = I.Args(lde_components=5, lde_epochs=2, lde_batch_size=64, seed=1)
    cpu = torch.device("cpu")
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
    straight = I.train_lde(codes, args, tmp_path / "a", cpu, {"epoch": 7})
    steps, real = [], I.mixture_nll

    def stop_in_epoch_two(*params):
        steps.append(1)
        if len(steps) == 10 + 2:  # epoch 1: 9 steps (576 codes) and the held-out NLL
            raise KeyboardInterrupt
        return real(*params)

    monkeypatch.setattr(I, "mixture_nll", stop_in_epoch_two)
    with pytest.raises(KeyboardInterrupt):
        I.train_lde(codes, args, tmp_path / "b", cpu, {"epoch": 7})
    monkeypatch.setattr(I, "mixture_nll", real)
    stored = common.load_checkpoint(tmp_path / "b")
    assert stored["lde_fit"]["epoch"] == 1 and stored["epoch"] == 7
    capsys.readouterr()
    continued = I.train_lde(codes, args, tmp_path / "b", cpu, stored)
    assert "continuing the LDE after its epoch 1" in capsys.readouterr().out
    for a, b in zip(straight.lde.state_dict().values(), continued.lde.state_dict().values()):
        assert torch.equal(a, b)
    assert continued.settings["kept_epoch"] == straight.settings["kept_epoch"]
    # The finished fit, as stored: the same settings and encoder epoch continue (nothing left
    # to do); codes of another encoder epoch, or other settings, get a fit of their own.
    (tmp_path / "c").mkdir()
    for epoch, changed, continues in ((7, {}, True), (8, {}, False),
                                      (7, {"lde_lr": 1e-3}, False), (7, {"lde_epochs": 3}, False)):
        state = {**common.load_checkpoint(tmp_path / "b"), "epoch": epoch}
        I.train_lde(codes, dataclasses.replace(args, **changed), tmp_path / "c", cpu, state)
        assert ("continuing the LDE after its epoch 2" in capsys.readouterr().out) == continues


def test_head_channels_are_pi_mu_sigma():
    """The 3K head channels are read in the paper's order: K mixture logits, K means, K log
    standard deviations (what a stored LDE's weights mean)."""
    lde = I.LDE(4, 3).eval()
    torch.nn.init.zeros_(lde.head.weight)
    bias = torch.tensor([0.1, 0.5, -0.2, 1.0, 2.0, 3.0, -1.0, 0.0, 0.3])
    with torch.no_grad():
        lde.head.bias.copy_(bias)
        log_pi, mu, log_sigma = lde(torch.randn(2, 4))  # [2, 4, 3] each
    torch.testing.assert_close(log_pi[0, 0], bias[:3].log_softmax(0))
    torch.testing.assert_close(mu[1, 3], bias[3:6])
    torch.testing.assert_close(log_sigma[1, 2], bias[6:])


def test_stored_lde_sampler_round_trips():
    """Through a checkpoint's sampler states, as eval.py loads it (common.py leaves the
    state to the file it names), with how it was fitted."""
    torch.manual_seed(0)
    lde = I.LDE(7, 3).eval()
    sampler = I.LDESampler(lde, {"lde_components": 3, "lde_epochs": 9})
    state = common.samplers_from_state({"lde": sampler.state_dict()})["lde"]
    assert isinstance(state, dict) and state["module"] == "iae_lde"
    restored = common.method_module(state["module"]).sampler_from_state(state)
    assert isinstance(restored, I.LDESampler) and restored.settings == sampler.settings
    assert torch.equal(restored.sample(20, seed=2), sampler.sample(20, seed=2))


# armdn00.py's channel list: input (value, mask), then one entry per dilated block.
OFFICIAL_NFS = (2, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096)


@pytest.mark.parametrize("d", [8, 64, 256])
def test_lde_widths_are_the_official_ones(d):
    """ceil(log2 d) dilated blocks with armdn00's widths (2048 channels for d = 256), then
    the 1x1 head to 3K channels."""
    lde = I.LDE(d, 5)
    convs = [m for m in lde.modules() if isinstance(m, torch.nn.Conv1d)]
    blocks = math.ceil(math.log2(d))
    expected = OFFICIAL_NFS[:blocks + 1] + (15,)
    assert [convs[0].in_channels] + [c.out_channels for c in convs] == list(expected)
    assert [c.dilation[0] for c in convs[:-1]] == [2 ** i for i in range(blocks)]
    assert convs[-1].kernel_size == (1,) and lde.pad == 2 ** blocks
    weights = torch.cat([c.weight.detach().flatten() for c in convs])  # armdn00: N(0, 0.02)
    assert abs(weights.mean()) < 0.001 and abs(weights.std() - 0.02) < 0.001
    assert all(torch.all(c.bias == 0) for c in convs)


def layer_specs(module) -> list[tuple]:
    """Each layer of a Sequential as (kind, its defining numbers)."""
    specs = []
    for m in module:
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            specs.append((type(m).__name__, m.in_channels, m.out_channels, m.kernel_size[0],
                          m.stride[0], m.padding[0]))
        elif isinstance(m, torch.nn.LeakyReLU):
            specs.append(("LeakyReLU", m.negative_slope))
        elif isinstance(m, torch.nn.BatchNorm2d):
            specs.append(("BatchNorm2d", m.num_features))
        else:
            specs.append((type(m).__name__,))
    return specs


@pytest.mark.parametrize("size, channels", [(32, 3), (64, 3), (32, 1)])
def test_autoencoder_is_the_official_dcgan_one(size, channels):
    """ae00 / ae02 [C]: conv 4x4 stride 2 pad 1 (no BN on the first), LeakyReLU 0.2, widths
    f, 2f, 4f (, 8f) down to 4x4, a 4x4 conv to the 1x1 code; the decoder its mirror, its
    first transposed conv without BN or activation. Orthogonal conv weights, zero biases,
    BN weights from N(0, 0.02)."""
    f, d = 8, 6
    model = I.IAE(I.Args(filters=f, latent_dim=d), channels, size)
    widths = [f, 2 * f, 4 * f] + ([8 * f] if size == 64 else [])
    down = [("Normalize",), ("Conv2d", channels, f, 4, 2, 1), ("LeakyReLU", 0.2)]
    for a, b in zip(widths, widths[1:]):
        down += [("Conv2d", a, b, 4, 2, 1), ("BatchNorm2d", b), ("LeakyReLU", 0.2)]
    down += [("Conv2d", widths[-1], d, 4, 1, 0), ("Flatten",)]
    up = [("Unflatten",), ("ConvTranspose2d", d, widths[-1], 4, 1, 0)]
    for a, b in zip(widths[::-1], widths[::-1][1:]):
        up += [("ConvTranspose2d", a, b, 4, 2, 1), ("BatchNorm2d", b), ("LeakyReLU", 0.2)]
    up += [("ConvTranspose2d", f, channels, 4, 2, 1), ("Tanh",)]
    assert layer_specs(model.encoder) == down and layer_specs(model.decoder) == up
    torch.manual_seed(0)
    wide = I.IAE(I.Args(filters=64, latent_dim=d), 3, 32)
    for m in wide.modules():
        if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d)):
            w = m.weight.detach().flatten(1)
            w = w if w.shape[0] <= w.shape[1] else w.T  # rows orthonormal
            torch.testing.assert_close(w @ w.T, torch.eye(len(w)), rtol=0, atol=1e-4)
            assert torch.all(m.bias == 0)
    gammas = torch.cat([m.weight.detach() for m in wide.modules()
                        if isinstance(m, torch.nn.BatchNorm2d)])  # 128 + 256 + 128 + 64
    assert abs(gammas.mean().item()) < 0.005 and abs(gammas.std().item() - 0.02) < 0.003


def test_active_dims_schedule():
    d, warmup, steps = 10, 4, 25
    schedule = [I.active_dims(d, warmup, epoch, step, steps)
                for epoch in range(7) for step in range(steps)]
    assert schedule[0] == 1
    assert all(a == d for a in schedule[warmup * steps:])
    assert all(a <= b for a, b in zip(schedule, schedule[1:]))
    assert set(schedule[:warmup * steps]) == set(range(1, d + 1))  # grows through every size
    assert I.active_dims(d, warmup, 2, 0, steps) == int(d * 2 / warmup + 1)
    assert I.active_dims(d, 0, 0, 0, steps) == d  # W = 0: a plain AE


def test_masked_dims_reach_the_decoder_as_zeros():
    """Sec. 3.4: with a_t = 2 active dimensions the decoder reads (z_1, z_2, 0, .., 0), in
    training and in eval mode alike; with all d active it reads the encoder's code, which is
    what the samplers, eval.py and the grids encode with."""
    model = I.IAE(I.Args(filters=8, latent_dim=6), 3, 32)
    seen = []
    model.decoder.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    x = torch.rand(4, 3, 32, 32)
    for mode in (model.train, model.eval):
        mode()
        code = model.encoder(x)
        logits, z = model(x, active=2)
        assert logits.shape == (4, 3, 32, 32) and torch.equal(seen[-1], z)
        assert torch.all(z[:, 2:] == 0) and torch.equal(z[:, :2], code[:, :2])
    run = common.Run(model.eval(), {}, {}, None)
    _, full = model(x, active=6)
    assert torch.equal(I.encode(run, x), full) and torch.all(full != 0)


@pytest.mark.parametrize("output", ["tanh", "sigmoid"])
def test_decoder_output_and_loss_range(output):
    """ae00 ends in tanh(y) on images in [-1, 1], ae02 in sigmoid(y) on images in [0, 1] (y
    the last transposed conv's output): decode gives the image in [0, 1] and Eq. (5)'s MSE
    is taken in the model's own range, so tanh's is 4 times the [0, 1] MSE."""
    torch.manual_seed(0)
    model = I.IAE(I.Args(filters=8, latent_dim=6, output=output), 3, 32).eval()
    last = [m for m in model.decoder.modules() if isinstance(m, torch.nn.ConvTranspose2d)][-1]
    outputs = []
    last.register_forward_hook(lambda module, inputs, out: outputs.append(out))
    z = torch.randn(5, 6) * 3
    images = I.decode(common.Run(model, {}, {}, None, model.images), z)  # as load_run's
    y = outputs[-1]
    unit = (torch.tanh(y) + 1) / 2 if output == "tanh" else torch.sigmoid(y)
    torch.testing.assert_close(images, unit)
    x = torch.rand(5, 3, 32, 32)
    scale = 4 if output == "tanh" else 1
    mse = scale * (unit - x).square().mean()
    loss = I.autoencoder_loss(model.decoder(z), x, model.low, None, 0.0)
    assert loss.item() == pytest.approx(mse.item(), rel=1e-5)
    # The encoder reads x in [0, 1]: 2x - 1 (tanh) or x itself (sigmoid) reaches its first conv.
    first = next(m for m in model.encoder.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    first.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0]))
    model.encoder(x)
    torch.testing.assert_close(seen[-1], 2 * x - 1 if output == "tanh" else x)


def test_perceptual_term_sees_the_images_in_unit_range():
    """Eq. (5)'s beta * L_Perc on the decoded image in [0, 1] and x, whatever the output."""
    calls = []

    def perceptual(a, b):
        calls.append((a, b))
        return torch.tensor(2.0)

    x, y = torch.rand(2, 3, 8, 8), torch.rand(2, 3, 8, 8) * 2 - 1  # y: a tanh output
    loss = I.autoencoder_loss(y, x, -1.0, perceptual, 0.1)
    assert loss.item() == pytest.approx(((y - (2 * x - 1)) ** 2).mean().item() + 0.2, rel=1e-6)
    torch.testing.assert_close(calls[0][0], (y + 1) / 2)
    torch.testing.assert_close(calls[0][1], x)


def test_image_size_that_does_not_halve_is_an_error():
    """Sides that halve down to 4..7 pixels work, the smallest 8 (one stride-2 layer, a 4x4
    last kernel); 36 (to 4.5) and 4 (nothing to halve) are one-line errors."""
    small = I.IAE(I.Args(filters=2, latent_dim=3), 1, 8)
    assert small(torch.rand(2, 1, 8, 8), 3)[0].shape == (2, 1, 8, 8)
    for side in (36, 4):
        with pytest.raises(common.UserError, match="--image-size"):
            I.IAE(I.Args(filters=8, latent_dim=5), 3, side)


def test_perceptual_loss_is_half_the_summed_mse_of_three_vgg19_layers(weights):
    """Eq. (5)'s L_Perc [C]: 0.5 * sum of the MSEs of relu1_1, relu2_1 and conv3_1 (before
    its ReLU) of torchvision's VGG19 loaded from the same file, on ImageNet-normalised
    images in [0, 1]; no gradient reaches VGG19; grey images go in as RGB."""
    import torchvision

    perceptual = I.Perceptual()
    vgg = torchvision.models.vgg19()
    stored = torch.load(weights / "hub" / "checkpoints" / "vgg19-dcbb9e9d.pth", weights_only=True)
    vgg.features.load_state_dict({k[len("features."):]: v for k, v in stored.items()})
    mean = torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1)

    def layers(images):  # images in [0, 1] -> features 1 (relu1_1), 6 (relu2_1), 10 (conv3_1)
        h = (images - mean) / std
        return [vgg.features[:2](h), vgg.features[:7](h), vgg.features[:11](h)]

    g = torch.Generator().manual_seed(0)
    x = torch.rand(2, 3, 32, 32, generator=g)
    output = (x + 0.15 * torch.randn(2, 3, 32, 32, generator=g)).requires_grad_()
    expected = 0.5 * sum(((a - b) ** 2).mean() for a, b in zip(layers(output), layers(x)))
    loss = perceptual(output, x)
    assert loss.item() == pytest.approx(expected.item(), rel=1e-4)
    loss.backward()
    assert output.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in perceptual.parameters())
    grey = torch.rand(2, 1, 32, 32)
    assert perceptual(grey, grey * 0.5).item() == pytest.approx(
        perceptual(grey.expand(-1, 3, -1, -1), grey.expand(-1, 3, -1, -1) * 0.5).item())


def test_perceptual_weights_missing_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(common.UserError, match="vgg19-dcbb9e9d.pth"):
        I.Perceptual()


TINY = dict(filters=8, latent_dim=6, warmup_epochs=1, epochs=2, batch_size=32, lde_components=4,
            lde_epochs=3, lde_batch_size=32, gmm_components=2, perc_weight=0.1, device="cpu")


@pytest.fixture(scope="module")
def two_stage_run(tmp_path_factory, torch_home):
    """Both stages in this process, as `python iae_lde.py --dataset fake ...` runs them, with
    the perceptual loss (0.1, CelebA's) on random VGG19 weights."""
    tmp = tmp_path_factory.mktemp("iae")
    args = I.Args(dataset="fake", out_dir=str(tmp), data_root=str(tmp / "data"), **TINY)
    with mock.patch.dict(os.environ, {"TORCH_HOME": str(torch_home)}):
        I.main(args, set(TINY) | {"dataset", "out_dir", "data_root"})
    (run,) = tmp.glob("iae_lde-fake-*")
    return run


def test_both_stages_learn_and_store_every_sampler(two_stage_run):
    run = two_stage_run
    for name in ("samples_lde.png", "samples_gmm.png", "interpolations.png",
                 "reconstructions.png"):
        assert (run / name).stat().st_size > 0, name
    checkpoint = common.load_checkpoint(run)
    assert checkpoint["method"] == "iae_lde" and checkpoint["args"]["perc_weight"] == 0.1
    assert set(checkpoint["samplers"]) == {"normal", "mvg", "gmm", "lde"}
    records = log_records(run)
    stage_one = [r for r in records if "active_dims" in r]
    assert [r["active_dims"] for r in stage_one] == [6, 6]  # all 6 active from epoch 1 on (W=1)
    assert stage_one[-1]["loss"] < stage_one[0]["loss"]
    lde = [r["loss"] for r in records if r.get("stage") == "lde" and "epoch" in r]
    assert len(lde) == 3 and lde[-1] < lde[0]  # the LDE's NLL falls
    fit = checkpoint["lde_fit"]  # stage two's progress, kept in the run's one checkpoint
    assert fit["epoch"] == 3 and fit["settings"]["source"] == checkpoint["epoch"] == 1  # index


def fitted_codes(monkeypatch) -> tuple[list, list]:
    """The codes each train_lde call gets, and the data folder each load_images call reads."""
    codes, roots, fit, load = [], [], I.train_lde, common.load_images
    monkeypatch.setattr(I, "train_lde", lambda z, *a: codes.append(z) or fit(z, *a))
    monkeypatch.setattr(common, "load_images",
                        lambda name, root, *a: roots.append(root) or load(name, root, *a))
    return codes, roots


def test_fit_lde_on_a_dae_run(tmp_path, monkeypatch):
    """--fit-lde on another method's run: the LDE fits the codes of all the training images
    (a DAE holds none out), read from the run's data folder unless --data-root is typed, and
    becomes one of the run's samplers."""
    import dae

    folder = train(dae, tmp_path, dataset="digits", filters=4, latent_dim=4, epochs=1,
                   batch_size=64, gmm_components=2)
    with torch.no_grad():
        expected = dae.load_run(folder).model.encoder(
            common.load_images("digits", "", "train").float() / 255)  # [1500, 4]
    codes, roots = fitted_codes(monkeypatch)
    I.fit_lde(str(folder), I.Args(lde_components=3, lde_epochs=1, device="cpu"), set())
    assert codes[0].shape == (1500, 4) and roots == [str(tmp_path / "data")]
    assert not codes[0].requires_grad  # encoded without a graph (1,500 images' worth)
    torch.testing.assert_close(codes[0], expected)
    elsewhere = str(tmp_path / "elsewhere")
    I.fit_lde(str(folder), I.Args(lde_components=3, lde_epochs=1, device="cpu",
                                  data_root=elsewhere), {"data_root"})
    assert roots[-1] == elsewhere
    assert (folder / "samples_lde.png").stat().st_size > 0
    import eval as eval_module

    assert isinstance(dae.load_run(folder).samplers["lde"], dict)  # for iae_lde.py to rebuild
    loaded = eval_module.loaded(dae, folder, "cpu")  # as eval.py loads the run
    assert isinstance(loaded.samplers["lde"], I.LDESampler)
    images = dae.sample(loaded, 5, "lde", seed=1)
    assert images.shape == (5, 1, 32, 32) and 0 <= images.min() and images.max() <= 1


@pytest.mark.parametrize("argv, words", [
    (["--dataset", "digits", "--image-size", "36", "--perc-weight", "0"], ["--image-size"]),
    (["--fit-lde", "no/such/run"], ["no checkpoint.pt"]),
])
def test_user_errors(argv, words, tmp_path, capsys):
    last = cli_error(I, [*argv, "--device", "cpu", "--out-dir", tmp_path], capsys)
    assert last.startswith("error:") and all(word in last for word in words), last


def test_fit_lde_under_torchrun_is_refused(monkeypatch):
    """Stage two runs in one process; two torchrun processes get one sentence, not a run."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(common.UserError, match="one process"):
        I.main(I.Args(fit_lde="no/such/run"), {"fit_lde"})


# The official scripts' settings: train_ae.sh / train_armdn*.sh of 53753c9 (d, W, perceptual
# weight, K, model ae00 = tanh / ae02 = sigmoid, the checkpoint epoch the LDE was fitted on)
# and split_dataset.sh (MNIST 55k / 5k).
OFFICIAL = {"mnist": (8, 96, 0.0, 30, "sigmoid", 5000, 390),
            "cifar10": (256, 128, 0.0, 50, "tanh", 0, 250),
            "celeba": (100, 100, 0.1, 30, "tanh", 0, 150)}
FIELDS = ("latent_dim", "warmup_epochs", "perc_weight", "lde_components", "output", "holdout",
          "epochs")


@pytest.mark.parametrize("dataset", sorted(OFFICIAL))
def test_untyped_settings_are_the_official_scripts(dataset):
    args = I.with_dataset_defaults(I.Args(dataset=dataset), set())
    assert tuple(getattr(args, k) for k in FIELDS) == OFFICIAL[dataset]
    typed = I.with_dataset_defaults(I.Args(dataset=dataset, latent_dim=3, lde_components=2),
                                    {"latent_dim", "lde_components"})
    assert (typed.latent_dim, typed.lde_components) == (3, 2)
    assert typed.epochs == OFFICIAL[dataset][6]


def test_table_2s_figure_is_printed_only_for_the_official_mnist_run():
    """eval.py --parzen prints 326 +- 2 nats (Table 2) beside the official MNIST run with
    10,000 samples (the paper's Parzen protocol), and beside nothing else."""
    official = dataclasses.asdict(I.Args(dataset="mnist", **dict(zip(FIELDS, OFFICIAL["mnist"]))))
    assert "326 +- 2" in I.paper_parzen(official, 10000)
    assert I.paper_parzen({**official, "seed": 3, "device": "cpu"}, 10000)  # not settings
    for samples in (9999, 10001):
        assert I.paper_parzen(official, samples) == ""
    for changed in ({"latent_dim": 16}, {"output": "tanh"}, {"dataset": "digits"},
                    {"lde_components": 50}):
        assert I.paper_parzen({**official, **changed}, 10000) == ""


def test_held_out_images_never_reach_training(tmp_path):
    """--holdout N (MNIST 5,000 of 60,000; digits 150 of 1,500): the first images train, the
    last N are only for choosing the Parzen width."""
    args = I.Args(dataset="digits", holdout=150, batch_size=64, device="cpu",
                  data_root=str(tmp_path))
    _, _, _, train_images, _ = common.start(args, set(), keep=I.without_holdout)
    full = common.load_images("digits", "", "train")
    assert len(full) == 1500 and torch.equal(train_images, full[:1350])
    trained, held = I.data_splits(dataclasses.asdict(args), "")  # as --fit-lde and eval.py
    assert torch.equal(trained, full[:1350]) and torch.equal(held, full[1350:])
    seen = []
    start = common.start
    with mock.patch.object(common, "start", lambda *a, **k: seen.append(k) or start(*a, **k)):
        with pytest.raises(StopIteration):  # (stopped once start has been called)
            with mock.patch.object(I, "IAE", mock.Mock(side_effect=StopIteration)):
                I.train(args, set())
    assert seen[0]["keep"] is I.without_holdout  # what stage one trains on
    with pytest.raises(common.UserError, match="--holdout"):
        common.start(I.Args(dataset="digits", holdout=1500, device="cpu"), set(),
                     keep=I.without_holdout)


DIGITS = dict(dataset="digits", filters=4, latent_dim=3, warmup_epochs=1, epochs=1,
              batch_size=64, lde_components=3, lde_epochs=2, lde_batch_size=64, gmm_components=2)


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    """`python iae_lde.py --dataset digits ...`: MNIST's model (sigmoid, no perceptual loss)."""
    tmp = tmp_path_factory.mktemp("digits")
    args = I.Args(out_dir=str(tmp), device="cpu", **DIGITS)
    I.main(args, set(DIGITS) | {"out_dir", "device"})
    (run,) = tmp.glob("iae_lde-digits-*")
    return run


def test_digits_run_has_mnist_model_and_split(digits_run):
    stored = common.load_checkpoint(digits_run)
    assert stored["args"]["output"] == "sigmoid" and stored["args"]["holdout"] == 150
    assert stored["args"]["perc_weight"] == 0.0
    assert stored["samplers"]["lde"]["settings"]["lde_epochs"] == 2
    records = log_records(digits_run)
    assert sum(1 for r in records if r.get("stage") == "lde" and "epoch" in r) == 2
    provenance = json.loads((digits_run / "args.json").read_text())["provenance"]
    assert set(provenance["versions"]) == {"torch", "torchvision", "lpips", "pytorch-fid"}


def test_fit_lde_takes_the_runs_own_settings_and_says_what_it_replaces(digits_run, tmp_path,
                                                                       capsys):
    """--fit-lde RUN with nothing typed refits with the run's K and schedule (the finished
    fit is kept, not redone); a typed --lde-epochs 1 fits anew and the sampler says so."""
    digits_run = shutil.copytree(digits_run, tmp_path / "run")  # the fixture stays as trained
    capsys.readouterr()
    I.main(I.Args(fit_lde=str(digits_run), device="cpu"), {"fit_lde", "device"})
    out = capsys.readouterr().out
    assert "replacing the run's LDE, fitted with {" in out
    assert "'lde_components': 3" in out and "'lde_epochs': 2" in out
    assert "continuing the LDE after its epoch 2" in out
    I.main(I.Args(fit_lde=str(digits_run), lde_epochs=1, device="cpu"),
           {"fit_lde", "lde_epochs", "device"})
    assert "continuing" not in capsys.readouterr().out
    settings = common.load_checkpoint(digits_run)["samplers"]["lde"]["settings"]
    assert settings["lde_epochs"] == 1 and settings["lde_components"] == 3


def test_the_lde_fits_the_codes_of_the_images_the_run_trained_on(digits_run, tmp_path,
                                                                 monkeypatch):
    """An IAE run that held out 150 digits for the Parzen width: the LDE's codes are those of
    the first 1,350 training digits, as the encoder (eval mode) gives them."""
    digits_run = shutil.copytree(digits_run, tmp_path / "run")
    codes, _ = fitted_codes(monkeypatch)
    I.fit_lde(str(digits_run), I.Args(lde_components=3, lde_epochs=1, device="cpu"), set())
    with torch.no_grad():
        expected = I.load_run(str(digits_run)).model.encoder(
            common.load_images("digits", "", "train")[:1350].float() / 255)
    assert codes[0].shape == (1350, 3)
    torch.testing.assert_close(codes[0], expected)


def test_resume_honours_the_lde_flags(digits_run, tmp_path, capsys):
    """--resume of a finished run with --lde-epochs 3: the autoencoder keeps its settings,
    stage two runs to epoch 3."""
    digits_run = shutil.copytree(digits_run, tmp_path / "run")  # the fixture stays as trained
    capsys.readouterr()
    I.main(I.Args(resume=str(digits_run), lde_epochs=3, device="cpu"),
           {"resume", "lde_epochs", "device"})
    out = capsys.readouterr().out
    assert "ignoring" not in out
    assert common.load_checkpoint(digits_run)["samplers"]["lde"]["settings"]["lde_epochs"] == 3
    assert [r["epoch"] for r in log_records(digits_run) if r.get("stage") == "lde"
            and "epoch" in r][-1] == 3


def test_without_held_out_codes_the_last_epoch_is_kept(tmp_path):
    """--lde-holdout 0: every code trains, nothing to choose by, and the last epoch's LDE
    is kept; a batch may hold every code (one step an epoch), one more is an error."""
    codes, _ = known_mixture(100, seed=0)
    args = I.Args(lde_components=2, lde_epochs=2, lde_batch_size=100, lde_holdout=0.0, seed=0)
    sampler = I.train_lde(codes, args, tmp_path, torch.device("cpu"))
    assert sampler.settings["kept_epoch"] == 2
    assert sampler.settings["latent_dim"] == codes.shape[1] == 3 != len(codes)  # d, not N
    records = [r for r in log_records(tmp_path) if r.get("stage") == "lde"]
    assert [r["epoch"] for r in records] == [1, 2] and "validation_loss" not in records[0]
    too_big = dataclasses.replace(args, lde_batch_size=101)
    with pytest.raises(common.UserError, match="larger than the 100 codes"):
        I.train_lde(codes, too_big, tmp_path / "other", torch.device("cpu"))
