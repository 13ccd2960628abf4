"""The Tolstikhin / Ghosh backbone of common.py: shapes, layout, TensorFlow 'same' padding
against its definition, Keras' constants, and the spectral norm's matrix layout."""
import math

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import common


def layers(module, kind):
    return [m for m in module.modules() if isinstance(m, kind)]


@pytest.mark.parametrize("channels, size", [(1, 32), (3, 32), (3, 64), (3, 16)])
@pytest.mark.parametrize("depth", [1, [2], [3, 3, 2, 1]])
def test_shapes(channels, size, depth):
    encoder = common.Encoder(channels, size, filters=4, depth=depth)
    decoder = common.Decoder(channels, size, filters=4, depth=depth, latent_dim=6)
    features = encoder(torch.rand(3, channels, size, size))
    assert features.shape == (3, encoder.out_features) == (3, 32 * (size // 16) ** 2)
    assert decoder(torch.randn(3, 6)).shape == (3, channels, size, size)


def test_layer_layout():
    """Encoder stages f, 2f, 4f, 8f (strided conv last); decoder Linear to 8x8x8f, strided
    transposed convs 4f, 2f taking encoder stages 3 and 2's depths, a stride-1 output layer."""
    depth = [3, 3, 2, 1]
    encoder = common.Encoder(3, 32, filters=4, depth=depth)
    convs = layers(encoder, nn.Conv2d)
    assert [c.out_channels for c in convs if c.stride == (2, 2)] == [4, 8, 16, 32]
    assert len(convs) == sum(depth) and all(c.kernel_size == (4, 4) for c in convs)
    decoder = common.Decoder(3, 32, filters=4, depth=depth, latent_dim=6)
    assert decoder.from_latent.out_features == 8 * 8 * 32
    transposed = layers(decoder, nn.ConvTranspose2d)
    assert [(c.out_channels, c.stride) for c in transposed] == [(16, (2, 2)), (8, (2, 2)),
                                                                (3, (1, 1))]
    assert len(layers(decoder, nn.Conv2d)) == (2 - 1) + (3 - 1)  # stride-1 convs of stages
    big = common.Decoder(3, 64, filters=4, depth=1, latent_dim=6)
    assert [c.out_channels for c in layers(big, nn.ConvTranspose2d)] == [16, 8, 4, 3]
    assert all(c.kernel_size == (5, 5) for c in layers(big, nn.ConvTranspose2d))


def test_encoder_reads_images_in_minus_one_to_one():
    """The official MNIST / CIFAR-10 code feeds its nets images in [-1, 1]: images in [0, 1]
    reach the first conv as 2x - 1 (which matters without the batch norms after it)."""
    encoder = common.Encoder(3, 32, filters=4, depth=1)
    seen = []
    encoder.convs[0].register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
    x = torch.rand(2, 3, 32, 32)
    encoder(x)
    torch.testing.assert_close(seen[0], 2 * x - 1)


def tf_padding(side, kernel, stride):
    """TensorFlow's 'same' rule, as its documentation states it."""
    out = math.ceil(side / stride)
    total = max((out - 1) * stride + kernel - side, 0)
    return total // 2, total - total // 2


@pytest.mark.parametrize("kernel, stride", [(4, 2), (5, 2), (4, 1), (5, 1), (2, 2), (1, 1),
                                            (1, 2)])
def test_same_conv_pads_as_tensorflow(kernel, stride):
    torch.manual_seed(0)
    conv = common.SameConv(2, 3, kernel, stride)
    x = torch.randn(2, 2, 16, 16)
    before, after = tf_padding(16, kernel, stride)
    expected = F.conv2d(F.pad(x, (before, after, before, after)), conv[1].weight, conv[1].bias,
                        stride=stride)
    assert conv(x).shape == (2, 3, 16 // stride, 16 // stride)
    torch.testing.assert_close(conv(x), expected)


@pytest.mark.parametrize("kernel, stride", [(4, 2), (5, 2), (4, 1), (5, 1)])
def test_same_transposed_conv_is_the_adjoint_of_the_same_conv(kernel, stride):
    """TensorFlow's conv2d_transpose with 'same' padding is the gradient of conv2d with
    'same' padding: <conv(x), y> = <x, convT(y)> for every x, y with shared kernels."""
    torch.manual_seed(1)
    conv = common.SameConv(3, 2, kernel, stride)
    transposed = common.SameConvTranspose(2, 3, kernel, stride, )
    transposed.bias.data.zero_()
    transposed.weight.data.copy_(conv[1].weight.data)  # [2, 3, k, k]: conv 3->2, convT 2->3
    conv[1].bias.data.zero_()
    x = torch.randn(1, 3, 16, 16, requires_grad=True)
    y = torch.randn(1, 2, 16 // stride, 16 // stride)
    (grad,) = torch.autograd.grad((conv(x) * y).sum(), x)
    assert transposed(y).shape == x.shape
    torch.testing.assert_close(transposed(y), grad, rtol=1e-5, atol=1e-5)


def test_keras_constants():
    """Glorot-uniform kernels, zero biases, batch-norm momentum 0.99 (PyTorch 0.01), eps 1e-3."""
    torch.manual_seed(0)
    decoder = common.Decoder(3, 32, filters=8, depth=1, latent_dim=6)
    for bn in layers(decoder, nn.BatchNorm2d):
        assert (bn.momentum, bn.eps) == (0.01, 1e-3)
    linear = decoder.from_latent  # Glorot: U(-a, a), a = sqrt(6 / (fan_in + fan_out))
    bound = math.sqrt(6 / (6 + 8 * 8 * 64))
    assert linear.weight.abs().max() <= bound and linear.weight.abs().max() > 0.95 * bound
    assert torch.all(linear.bias == 0)


def keras_matrix(layer):
    """The matrix Keras' DenseSN / ConvSN2D / ConvSN2DTranspose normalise: its kernel
    (k, k, in, out) for a conv, (k, k, out, in) for a transposed conv, (in, out) dense,
    reshaped to [-1, last axis]."""
    w = layer.weight.detach()
    if isinstance(layer, nn.Linear):
        return w.T  # Keras kernel (in, out)
    return w.permute(2, 3, 1, 0).reshape(-1, w.shape[0])  # (k, k, in|out, out|in) -> [-1, .]


def test_spectral_norm_normalises_the_keras_matrix():
    torch.manual_seed(0)
    decoder = common.Decoder(3, 32, filters=4, depth=1, latent_dim=6)
    encoder = common.Encoder(3, 32, filters=4, depth=1)
    common.spectral_norm(decoder, encoder)
    decoder.train(), encoder.train()
    for _ in range(40):  # one power iteration per training forward pass
        decoder(torch.randn(4, 6))
        encoder(torch.rand(4, 3, 32, 32))
    normalised = [m for m in [*decoder.modules(), *encoder.modules()]
                  if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear))]
    assert len(normalised) == 1 + 3 + 4
    for layer in normalised:
        sigma = torch.linalg.matrix_norm(keras_matrix(layer), 2).item()
        assert sigma == pytest.approx(1.0, abs=0.03), layer


def test_bad_depth_or_size():
    with pytest.raises(common.UserError, match="--depth"):
        common.Encoder(3, 32, filters=4, depth=[1, 2])
    with pytest.raises(common.UserError, match="multiple of 16"):
        common.Encoder(3, 40, filters=4, depth=1)
    for size in (48, 128):
        with pytest.raises(common.UserError, match="16, 32 or 64"):
            common.Decoder(3, size, filters=4, depth=1, latent_dim=6)
    with pytest.raises(common.UserError, match="--depth"):
        common.Encoder(3, 32, filters=4, depth=[0])
    encoder = common.Encoder(1, 256, filters=4, depth=1)  # the encoder alone takes any size
    assert encoder(torch.rand(2, 1, 256, 256)).shape == (2, encoder.out_features) == (2, 8192)
