"""rae.py and vae.py: their regularisers against independent computations, and every
variant end to end with eval.py."""
import json
import math

import pytest
import torch
from PIL import Image

import common
import rae
import vae
from conftest import run_eval, run_script


def test_kl_equals_torch_distributions():
    from torch.distributions import Normal, kl_divergence

    g = torch.Generator().manual_seed(0)
    mu, log_sigma = torch.randn(5, 7, generator=g), torch.randn(5, 7, generator=g) * 0.5
    expected = kl_divergence(Normal(mu, log_sigma.exp()), Normal(0.0, 1.0)).sum(1)
    assert torch.allclose(vae.kl_divergence(mu, log_sigma), expected, atol=1e-5)


def test_cv_vae_regulariser_is_half_squared_mean_norm_plus_a_constant():
    args = vae.Args(filters=4, latent_dim=6, fixed_std=0.7)
    model = vae.VAE(args, 3, 32).eval()
    mu, log_sigma = model.encoder.moments(torch.rand(4, 3, 32, 32))
    assert torch.allclose(log_sigma, torch.full_like(mu, math.log(0.7)))
    constant = 0.5 * 6 * (0.49 - 1 - math.log(0.49))
    assert torch.allclose(vae.kl_divergence(mu, log_sigma), 0.5 * mu.square().sum(1) + constant,
                          atol=1e-5)
    assert model.encoder.body.to_latent.out_features == 6  # no sigma head


def test_vae_default_weights():
    assert vae.kl_weight(vae.Args()) == 0.01
    assert vae.kl_weight(vae.Args(loss="gaussian")) == 0.024
    assert vae.kl_weight(vae.Args(loss="gaussian", fixed_std=0.7, dataset="mnist")) == 0.039


def test_gradient_penalty_equals_jacobian_computation():
    torch.manual_seed(0)
    decoder = common.Decoder(1, 32, filters=4, latent_dim=5).eval()  # samples independent
    z = torch.randn(3, 5)
    z.requires_grad_()
    got = rae.gradient_penalty(z, decoder(z))
    expected = []
    for zi in z.detach():  # d ||D(z)||^2 / dz = 2 J^T D(z), J the decoder's Jacobian at z
        out = lambda v: torch.sigmoid(decoder(v[None])).flatten()  # noqa: E731
        jacobian = torch.autograd.functional.jacobian(out, zi)  # [P, 5]
        grad = 2 * jacobian.T @ out(zi)
        expected.append(grad.square().sum())
    assert got.item() == pytest.approx(torch.stack(expected).mean().item(), rel=1e-4)
    rae.gradient_penalty(z, decoder(z)).backward()  # it can be trained through
    assert z.grad is not None and next(decoder.parameters()).grad is not None


@pytest.mark.parametrize("dataset, dense", [("cifar10", False), ("celeba", True)])
def test_l2_penalises_decoder_kernels_only(dataset, dense):
    args = rae.Args(dataset=dataset, filters=4, latent_dim=6, variant="rae-l2")
    model = rae.RAE(args, 3, 64 if dataset == "celeba" else 32)
    kernels = [m.weight for m in model.decoder.modules()
               if isinstance(m, (torch.nn.Conv2d, torch.nn.ConvTranspose2d))]
    if dense:
        kernels.append(model.decoder.from_latent.weight)
    expected = sum(w.detach().square().sum() for w in kernels)
    penalty = rae.decoder_l2(model, include_dense=dataset == "celeba")
    assert penalty.item() == pytest.approx(expected.item(), rel=1e-6)
    penalty.backward()
    assert all(p.grad is None for p in model.encoder.parameters())
    assert all(p.grad is None for n, p in model.decoder.named_parameters() if p.ndim == 1)
    assert (model.decoder.from_latent.weight.grad is not None) == dense


def test_spectral_norm_keeps_top_singular_value_near_one():
    torch.manual_seed(0)
    args = rae.Args(filters=4, latent_dim=6, variant="rae-sn", sn_layers="all")
    model = rae.RAE(args, 3, 32).train()
    for _ in range(30):  # one power iteration per forward pass
        model(torch.rand(8, 3, 32, 32))
    layers = [m for m in model.modules() if hasattr(m, "parametrizations")]
    assert len(layers) == 4 + 1 + 1 + 2 + 1  # encoder convs, both linears, ConvTs, output conv
    for layer in layers:  # a ConvT's matrix has its output channels (dim 1) as rows
        weight = layer.weight.detach()
        if isinstance(layer, torch.nn.ConvTranspose2d):
            weight = weight.transpose(0, 1)
        sigma = torch.linalg.matrix_norm(weight.flatten(1), 2)
        assert sigma.item() == pytest.approx(1.0, abs=0.05)
    decoder_only = rae.RAE(rae.Args(filters=4, latent_dim=6, variant="rae-sn"), 3, 32)
    assert not any(hasattr(m, "parametrizations") for m in decoder_only.encoder.modules())


def test_official_weights_are_converted_to_summed_losses():
    beta, reg = rae.weights(rae.Args(dataset="mnist", latent_dim=16, variant="rae-l2"), 1024)
    assert beta == pytest.approx(2 * 1024 * 1e-4 / 16) and reg == pytest.approx(1024 * 1e-7)
    beta, reg = rae.weights(rae.Args(variant="rae-gp"), 3072)
    assert reg == pytest.approx(3072 * 1e-7 / 128)
    assert rae.weights(rae.Args(variant="ae"), 3072) == (0, 0)


TINY = ["--dataset", "digits", "--filters", "4", "--latent-dim", "4", "--epochs", "2",
        "--batch-size", "64", "--gmm-components", "2", "--device", "cpu"]


@pytest.mark.parametrize("script, flags", [
    ("rae.py", ["--variant", "rae-l2"]), ("rae.py", ["--variant", "rae-gp"]),
    ("rae.py", ["--variant", "rae-sn", "--sn-layers", "all"]), ("rae.py", ["--variant", "rae"]),
    ("rae.py", ["--variant", "ae"]), ("vae.py", []), ("vae.py", ["--loss", "gaussian"]),
    ("vae.py", ["--loss", "gaussian", "--fixed-std", "0.7"]),
])
def test_variant_end_to_end_with_eval(script, flags, tmp_path, torch_home):
    result = run_script(script, *TINY, *flags, "--out-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    (folder,) = tmp_path.iterdir()
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2]
    assert all(math.isfinite(v) for r in log for v in r.values())
    for name in ("reconstructions", "interpolations", "samples_gmm", "samples_mvg"):
        with Image.open(folder / f"{name}.png") as grid:
            assert grid.size[0] > 32
    result = run_eval(torch_home, folder, "--num-samples", "8", "--batch-size", "8")
    assert result.returncode == 0, result.stderr
    columns = json.loads((folder / "metrics.json").read_text())["columns"]
    assert set(columns) == {"rec", "normal", "mvg", "gmm", "interp"}


def test_rae_validation_loss_drives_the_plateau_schedule(tmp_path):
    result = run_script("rae.py", *TINY, "--epochs", "3", "--patience", "1", "--out-dir", tmp_path)
    assert result.returncode == 0, result.stderr
    (folder,) = tmp_path.iterdir()
    log = [json.loads(line) for line in (folder / "log.jsonl").read_text().splitlines()]
    plateau = common.load_checkpoint(folder)["plateau"]
    assert plateau["patience"] == 1 and plateau["factor"] == 0.5
    assert plateau["best"] == pytest.approx(min(r["val_loss"] for r in log), rel=1e-3)
    assert plateau["last_epoch"] == 3
