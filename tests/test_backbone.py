"""The Tolstikhin / Ghosh backbone of common.py: shapes and every option."""
import pytest
import torch
import torch.nn as nn

import common


def convs(module, kind):
    return [m for m in module.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("channels, size", [(1, 32), (3, 32), (3, 64)])
@pytest.mark.parametrize("depth", [1, [2], [3, 3, 2, 1]])
def test_shapes(channels, size, depth):
    encoder = common.Encoder(channels, size, filters=4, depth=depth, latent_dim=6)
    decoder = common.Decoder(channels, size, filters=4, depth=depth, latent_dim=6)
    z = encoder(torch.rand(3, channels, size, size))
    assert z.shape == (3, 6)
    assert decoder(z).shape == (3, channels, size, size)


def test_layer_layout():
    depth = [3, 3, 2, 1]
    encoder = common.Encoder(3, 32, filters=4, depth=depth, latent_dim=6)
    strided = [c for c in convs(encoder, nn.Conv2d) if c.stride == (2, 2)]
    assert [c.out_channels for c in strided] == [4, 8, 16, 32]  # f, 2f, 4f, 8f
    assert len(convs(encoder, nn.Conv2d)) == sum(depth)
    assert all(c.kernel_size == (4, 4) for c in convs(encoder, nn.Conv2d))
    assert encoder.to_latent.in_features == 32 * 2 * 2
    decoder = common.Decoder(3, 32, filters=4, depth=depth, latent_dim=6)
    assert decoder.from_latent.out_features == 8 * 8 * 32  # 8x8x8f
    assert [c.out_channels for c in convs(decoder, nn.ConvTranspose2d)] == [16, 8]  # 4f, 2f
    # Decoder stages 4f, 2f take the depths of encoder stages 3 and 2 (2 and 3).
    assert len(convs(decoder, nn.Conv2d)) == (2 - 1) + (3 - 1) + 1  # + output layer
    big = common.Decoder(3, 64, filters=4, latent_dim=6)
    assert [c.out_channels for c in convs(big, nn.ConvTranspose2d)] == [16, 8, 4]
    assert all(c.kernel_size == (5, 5) for c in convs(big, nn.ConvTranspose2d))


def test_bad_depth_or_size():
    with pytest.raises(common.UserError, match="--depth"):
        common.Encoder(3, 32, filters=4, depth=[1, 2], latent_dim=6)
    with pytest.raises(common.UserError, match="multiple of 16"):
        common.Encoder(3, 40, filters=4, latent_dim=6)


def test_batch_norm_latent():
    encoder = common.Encoder(3, 32, filters=4, latent_dim=6, latent_norm="bn-noaffine").train()
    z = encoder(torch.rand(64, 3, 32, 32))
    assert torch.allclose(z.mean(0), torch.zeros(6), atol=1e-5)
    assert torch.allclose(z.var(0, unbiased=False), torch.ones(6), atol=1e-2)  # eps 1e-3
    assert not any(True for _ in encoder.latent_norm.parameters())
    affine = common.Encoder(3, 32, filters=4, latent_dim=6, latent_norm="bn")
    assert sum(p.numel() for p in affine.latent_norm.parameters()) == 12  # gamma, beta


def test_layer_norm_latent():
    encoder = common.Encoder(3, 32, filters=4, latent_dim=6, latent_norm="ln")
    z = encoder(torch.rand(5, 3, 32, 32))
    assert torch.allclose(z.mean(1), torch.zeros(5), atol=1e-5)


def largest_singular_value(layer):
    return torch.linalg.matrix_norm(layer.weight.detach().flatten(1), ord=2).item()


def test_spectral_norm_latent_layer():
    encoder = common.Encoder(3, 32, filters=4, latent_dim=6, latent_norm="sn").train()
    for _ in range(30):  # each training forward pass runs one power iteration
        encoder(torch.rand(2, 3, 32, 32))
    assert abs(largest_singular_value(encoder.to_latent) - 1) < 0.05
    assert not any(nn.utils.parametrize.is_parametrized(c) for c in convs(encoder, nn.Conv2d))


@pytest.mark.parametrize("where, in_encoder", [("decoder", False), ("all", True)])
def test_spectral_norm_on_layers(where, in_encoder):
    encoder = common.Encoder(3, 32, filters=4, latent_dim=6, spectral_norm=where)
    decoder = common.Decoder(3, 32, filters=4, latent_dim=6, spectral_norm=where)
    layers = convs(decoder, nn.Conv2d) + convs(decoder, nn.ConvTranspose2d) + [decoder.from_latent]
    assert all(nn.utils.parametrize.is_parametrized(m) for m in layers)
    assert nn.utils.parametrize.is_parametrized(convs(encoder, nn.Conv2d)[0]) == in_encoder
    decoder.train()
    for _ in range(30):
        decoder(torch.randn(2, 6))
    assert abs(largest_singular_value(decoder.from_latent) - 1) < 0.05


def test_decoder_noise_only_in_training():
    decoder = common.Decoder(3, 32, filters=4, latent_dim=6, noise_std=0.5)
    z = torch.randn(2, 6)
    decoder.eval()
    assert torch.equal(decoder(z), decoder(z))
    decoder.train()
    torch.manual_seed(0)
    a = decoder(z)
    torch.manual_seed(0)
    noisy = z + 0.5 * torch.randn_like(z)
    quiet = common.Decoder(3, 32, filters=4, latent_dim=6).train()
    quiet.load_state_dict(decoder.state_dict())
    assert torch.allclose(a, quiet(noisy), atol=1e-6)  # exactly z + 0.5 * eps was decoded


def test_frozen_latent_layer_stays_put():
    encoder = common.Encoder(3, 32, filters=4, latent_dim=6, freeze_latent=True)
    before = [p.clone() for p in encoder.to_latent.parameters()]
    first_conv = convs(encoder, nn.Conv2d)[0].weight.clone()
    optimizer = torch.optim.Adam(encoder.parameters(), lr=0.1)
    encoder(torch.rand(4, 3, 32, 32)).square().sum().backward()
    optimizer.step()
    assert all(torch.equal(a, b) for a, b in zip(before, encoder.to_latent.parameters()))
    assert not torch.equal(first_conv, convs(encoder, nn.Conv2d)[0].weight)
