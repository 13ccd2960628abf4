"""rae.py: Eqs. (9)-(13) against independent computations and the official Keras loss,
the Keras learning-rate plateau on hand-worked curves, and toy runs in this process
showing that each variant optimises its own loss and that RAE-L2 shrinks the decoder."""
import dataclasses

import numpy as np
import pytest
import torch
import torch.nn as nn

import common
import rae
from conftest import log_records, train


def test_reconstruction_and_code_penalty():
    """Eq. (9): squared error summed over pixels; Eq. (10): ||z||^2 / 2; both batch means."""
    g = torch.Generator().manual_seed(0)
    logits, x = torch.randn(3, 3, 8, 8, generator=g), torch.rand(3, 3, 8, 8, generator=g)
    z = torch.randn(3, 5, generator=g)
    image = 1 / (1 + np.exp(-logits.double().numpy()))
    expected = ((image - x.double().numpy()) ** 2).reshape(3, -1).sum(1).mean()
    assert rae.reconstruction_loss(logits, x).item() == pytest.approx(expected, rel=1e-6)
    assert rae.latent_loss(z).item() == pytest.approx(0.5 * (z.double().numpy() ** 2).sum(1).mean(),
                                                      rel=1e-6)


def official_keras_terms(model, x, variant, beta_code, reg_code):
    """The official per-batch loss terms (models/rae/loss_functions.py, Keras' l2
    regulariser), written from their definition: mean squared error over pixels,
    beta_code times the mean over units of z^2, gamma_code times the mean over batch and
    units of the squared gradient of the summed squared outputs, lambda_code times the sum
    of squared kernels of the regularised layers; all but the last averaged over the batch."""
    z = model.encoder(x)
    output = torch.sigmoid(model.decoder(z))
    terms = {"rec": (output - x).square().mean((1, 2, 3)).mean(),
             "lz": beta_code * z.square().mean(1).mean(), "reg": torch.zeros(())}
    if variant == "rae-gp":
        (grad,) = torch.autograd.grad(output.square().sum(), z, retain_graph=True)
        terms["reg"] = reg_code * grad.square().mean()
    if variant == "rae-l2":
        kernels = [m.weight for m in model.decoder.modules() if isinstance(m, nn.ConvTranspose2d)]
        terms["reg"] = reg_code * sum(w.square().sum() for w in kernels)
    return terms


@pytest.mark.parametrize("dataset, variant", [("mnist", "rae-l2"), ("cifar10", "rae-gp"),
                                              ("cifar10", "rae"), ("cifar10", "ae"),
                                              ("cifar10", "rae-l2")])
def test_summed_loss_is_pixels_times_the_official_loss(dataset, variant):
    """With --beta / --reg-weight at -1, each weighted term of our Eq. (11) is P times the
    official one, P the number of pixels x channels: the official weights converted, sign
    and scale included, and their sum is rae_loss."""
    channels = 1 if dataset == "mnist" else 3
    args = rae.Args(dataset=dataset, variant=variant, filters=4, latent_dim=6)
    torch.manual_seed(0)
    model = rae.RAE(args, channels, 32).eval()
    x = torch.rand(5, channels, 32, 32)
    pixels = channels * 32 * 32
    beta, reg_weight = rae.weights(args, pixels)
    terms = rae.loss_terms(model, x, args)
    ours = {"rec": terms["rec"], "lz": beta * terms["lz"], "reg": reg_weight * terms["reg"]}
    official = official_keras_terms(model, x, variant, *rae.OFFICIAL[dataset][variant])
    for name in ours:
        assert ours[name].item() == pytest.approx(pixels * official[name].item(), rel=1e-5,
                                                  abs=1e-12), name
    total = rae.rae_loss(terms, beta, reg_weight).item()
    assert total == pytest.approx(pixels * sum(t.item() for t in official.values()), rel=1e-5)
    assert (official["reg"].item() > 0) == (variant in ("rae-gp", "rae-l2"))
    assert (official["lz"].item() > 0) == (variant != "ae")


def test_gradient_penalty_equals_jacobian_computation():
    """Eq. (12) per sample: ||d ||D(z)||^2 / dz||^2 = ||2 J^T D(z)||^2, J the Jacobian."""
    torch.manual_seed(0)
    decoder = common.Decoder(1, 32, filters=4, latent_dim=5).eval()  # samples independent
    z = torch.randn(3, 5, requires_grad=True)
    got = rae.gradient_penalty(z, decoder(z))
    expected = []
    for zi in z.detach():
        out = lambda v: torch.sigmoid(decoder(v[None])).flatten()  # noqa: E731
        jacobian = torch.autograd.functional.jacobian(out, zi)  # [P, 5]
        expected.append((2 * jacobian.T @ out(zi)).square().sum())
    assert got.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-4)
    got.backward()  # it is trained through
    assert z.grad is not None and decoder.from_latent.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("dataset, dense", [("cifar10", False), ("celeba", True)])
def test_l2_penalises_the_official_layers(dataset, dense):
    """Eq. (13) through loss_terms: gradient 2 W on the kernels of the decoder's three
    transposed convs (and its first Dense for CelebA, as the official code), nothing
    anywhere else: not the encoder, not biases, not batch norms."""
    size = 64 if dataset == "celeba" else 32
    args = rae.Args(dataset=dataset, filters=4, latent_dim=6, variant="rae-l2")
    model = rae.RAE(args, 3, size).eval()
    x = torch.rand(2, 3, size, size)
    rae.loss_terms(model, x, args)["reg"].backward()
    touched = [p for p in model.parameters() if p.grad is not None and p.grad.abs().sum() > 0]
    for p in touched:
        torch.testing.assert_close(p.grad, 2 * p.detach())
    penalised = {tuple(p.shape) for p in touched}
    assert len(penalised) == len(touched)
    if size == 32:  # 8x8x32 -> 16 -> 8 channels, output layer to 3
        expected = {(32, 16, 4, 4), (16, 8, 4, 4), (8, 3, 4, 4)}
    else:  # 8x8x32 -> 16 -> 8 -> 4, output to 3, 5x5 kernels
        expected = {(32, 16, 5, 5), (16, 8, 5, 5), (8, 4, 5, 5), (4, 3, 5, 5)}
    if dense:
        expected.add((8 * 8 * 32, 6))
    assert penalised == expected


def test_rae_sn_normalises_the_decoder_or_every_layer():
    parametrized = lambda m: [n for n, x in m.named_modules()  # noqa: E731
                              if nn.utils.parametrize.is_parametrized(x)]
    decoder_only = rae.RAE(rae.Args(filters=4, latent_dim=6, variant="rae-sn"), 3, 32)
    assert not parametrized(decoder_only.encoder) and len(parametrized(decoder_only.decoder)) == 4
    every = rae.RAE(rae.Args(filters=4, latent_dim=6, variant="rae-sn", sn_layers="all"), 3, 32)
    assert len(parametrized(every.encoder)) == 5 and len(parametrized(every.decoder)) == 4
    assert not parametrized(rae.RAE(rae.Args(filters=4, latent_dim=6, variant="rae"), 3, 32))


def halving_epochs(losses, patience, min_delta):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    plateau, halved = rae.KerasPlateau(optimizer, patience, min_delta), []
    for epoch, loss in enumerate(losses):
        before = optimizer.param_groups[0]["lr"]
        plateau.step(loss)
        if optimizer.param_groups[0]["lr"] == before / 2:
            halved.append(epoch)
    return halved


def test_keras_plateau_halving_epochs():
    """Worked by hand from Keras 2.3.1's rule: better = below best - min_delta (absolute);
    halve when `patience` epochs in a row were not better, then count again from zero."""
    flat = [10.0, 9.0] + [9.0] * 12  # epochs 2.. are not better than epoch 1
    assert halving_epochs(flat, patience=5, min_delta=0.1) == [6, 11]
    # 0.008 better each epoch: not better than epoch 0 by min_delta 0.1 until epoch 13
    assert halving_epochs([10 - 0.008 * e for e in range(14)], 5, 0.1) == [5, 10]
    assert halving_epochs([10 - 0.2 * e for e in range(11)], 5, 0.1) == []
    # one real improvement resets the count
    assert halving_epochs([10, 10, 10, 10, 9, 9, 9, 9, 9, 9], 5, 0.1) == [9]


@pytest.fixture(scope="module")
def variant_runs(tmp_path_factory):
    """Each variant one epoch from the same seed (and the same initial weights)."""
    tmp = tmp_path_factory.mktemp("rae")
    flags = dict(dataset="digits", filters=4, latent_dim=4, epochs=1, batch_size=64,
                 gmm_components=1)
    return {variant: train(rae, tmp / variant, variant=variant, **flags)
            for variant in rae.VARIANTS}


def test_each_variant_optimises_its_own_loss(variant_runs):
    models = {v: common.load_checkpoint(folder)["model"] for v, folder in variant_runs.items()}
    weight = "decoder.convs.0.weight"  # the first transposed conv (original or SN'd)
    kernels = {v: m.get(weight, m.get("decoder.convs.0.parametrizations.weight.original"))
               for v, m in models.items()}
    for a in rae.VARIANTS:
        for b in rae.VARIANTS:
            if a < b:
                assert not torch.allclose(kernels[a], kernels[b]), (a, b)
    log = {v: log_records(folder)[-1] for v, folder in variant_runs.items()}
    assert log["ae"]["reg"] == 0 and log["rae"]["reg"] == 0 and log["rae-l2"]["reg"] > 0
    assert log["rae-gp"]["reg"] > 0


def test_rae_l2_ends_with_smaller_decoder_kernels_than_ae(tmp_path):
    flags = dict(dataset="digits", filters=4, latent_dim=4, epochs=2, batch_size=64,
                 gmm_components=1, beta=0.0)
    norms = {}
    for variant, reg_weight in (("ae", 0.0), ("rae-l2", 10.0)):
        state = common.load_checkpoint(train(rae, tmp_path / variant, variant=variant,
                                             reg_weight=reg_weight, **flags))["model"]
        norms[variant] = sum(w.square().sum().item() for k, w in state.items()
                             if k.startswith("decoder.convs") and w.ndim == 4)
    assert norms["rae-l2"] < 0.85 * norms["ae"], norms


def test_the_validation_plateau_drives_the_learning_rate(tmp_path):
    """At lr 1e-7 no epoch improves the validation loss by 1e-4 per pixel: with patience 1
    Keras halves after every epoch but the first (PyTorch's default rule would wait one
    epoch more and halve at a relative threshold). The samplers see the training part only."""
    folder = train(rae, tmp_path, dataset="digits", filters=4, latent_dim=4, epochs=4,
                   batch_size=64, gmm_components=1, lr=1e-7, patience=1)
    assert [r["lr"] for r in log_records(folder)] == pytest.approx([1e-7, 1e-7, 5e-8, 2.5e-8])
    assert common.load_checkpoint(folder)["plateau"]["wait"] == 0


@pytest.mark.parametrize("changes", [dict(beta=0.1), dict(reg_weight=1e-3), dict(epochs=50),
                                     dict(lr=1e-3), dict(sn_layers="all"), dict(latent_dim=64),
                                     dict(batch_size=128)])
def test_paper_figure_only_for_the_official_setting(changes):
    """Table 1 beside ours only for the official run; CIFAR-10 RAE-GP's is 70 epochs."""
    args = rae.official_settings("cifar10", "rae-sn")
    assert rae.paper_fid(args)["gmm"] == 75.30 and rae.paper_fid(args, "train") == {}
    assert rae.paper_fid({**args, **changes}) == {}
    gp = dataclasses.asdict(rae.Args(variant="rae-gp"))
    assert rae.paper_fid(gp) == {} and rae.paper_fid({**gp, "epochs": 70})["gmm"] == 76.33
    celeba = dataclasses.asdict(rae.Args(dataset="celeba", latent_dim=64, lr=1e-3, epochs=70))
    assert rae.paper_fid(celeba)["gmm"] == 47.97
