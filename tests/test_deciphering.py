"""deciphering.py: patterns, clustering, shift, schedules, EMA, LPIPS offline, and the two
training phases end to end with eval.py."""
import dataclasses
import json
import math
import os
from pathlib import Path
from unittest import mock

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import common
import deciphering as D
from conftest import RUN_OPTIONS, cli_error, log_records, recorded, train


def test_defaults_are_the_papers_phase_one():
    """Maeda Sec. 3-4 and the official train.py: CIFAR-10 at 32 px, stages 128, 256, 512,
    1024 with 1, 4, 16 active channels, 128 latents, 32 clusters, shifts up to 8 pixels,
    odd epochs flipped, 1000 epochs of 256, AdamW 2e-3 (the MLP at -1: lr / 10), weight decay
    0.08 reached at 40% of the epochs, EMA capped at 0.99995, LPIPS at 128 px; patterns
    from numpy's seed 123 in the official code, k-means random_state 0."""
    paper = dict(dataset="cifar10", image_size=32, crop=0, widths=[128, 256, 512, 1024],
                 active=[1, 4, 16], latent_dim=128, clusters=32, pattern_seed=123,
                 kmeans_seed=0, max_shift=8, flip=True, epochs=1000, schedule_epochs=0,
                 batch_size=256, lr=2e-3, mlp_lr=-1.0, lr_drops=[], weight_decay=0.08,
                 wd_warmup=0.4, ema_decay=0.99995, lpips_size=128, finetune_from="",
                 finetune_ema=False, phase_two_epochs=0, save_every=5)
    assert dataclasses.asdict(D.Args()) == {**paper, **RUN_OPTIONS}

TINY = dict(dataset="fake", widths=[16, 32, 64, 128], active=[1, 2, 4], clusters=4, latent_dim=16,
            batch_size=32)


def tiny_args(**changes):
    return D.Args(**{"widths": [16, 32, 64, 128], "active": [1, 2, 4], "clusters": 4,
                     "latent_dim": 16, **changes})


def test_pattern_count_is_the_product_of_binomials():
    expected = 128 * math.comb(256, 4) * math.comb(512, 16)
    assert D.pattern_count([128, 256, 512], [1, 4, 16]) == expected
    assert f"{float(D.pattern_count([128, 256, 512], [1, 4, 16])):.3g}" == "1.88e+40"  # the paper
    assert D.pattern_count([4, 5], [2, 1]) == 6 * 5


def test_patterns_have_exact_counts_are_distinct_and_reproducible():
    args = tiny_args(widths=[8, 8, 8, 16], active=[1, 1, 2], clusters=2)  # 4 * 8 * 28 per cluster
    labels = torch.arange(400) % 2
    patterns = D.make_patterns(labels, args)
    assert patterns.shape == (400, 4)
    for mask, width, k in zip(D.masks_of(patterns, args), args.widths, args.active):
        assert mask.shape == (400, width) and torch.all(mask.sum(1) == k)
        assert set(mask.unique().tolist()) == {0.0, 1.0}
    assert len(torch.unique(patterns, dim=0)) == 400  # 400 draws of 896: duplicates redrawn
    assert torch.equal(patterns, D.make_patterns(labels, args))
    other_seed = D.dataclasses.replace(args, pattern_seed=1)
    assert not torch.equal(patterns, D.make_patterns(labels, other_seed))


def test_patterns_reach_every_channel_of_each_stage():
    """Stage 1 within the cluster's block; stages 2 and 3 uniform over all their channels."""
    args = tiny_args()  # widths 16, 32, 64; active 1, 2, 4; 4 clusters of 4 channels
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(2000) % 4
    first, second, third = D.draw_patterns(labels, args, g).split(args.active, 1)
    assert torch.equal(first[:, 0] // 4, labels)
    assert set(second.flatten().tolist()) == set(range(32))
    assert set(third.flatten().tolist()) == set(range(64))


def test_too_few_patterns_for_a_cluster_is_a_user_error():
    args = tiny_args(widths=[2, 2, 2, 16], active=[1, 1, 1], clusters=1)  # 8 patterns
    with pytest.raises(common.UserError, match="allow 8"):
        D.make_patterns(torch.zeros(9, dtype=torch.long), args)
    # A cluster's share of stage 1 (8 // 2 = 4 channels) times stages 2 and 3 (4 x 4): 64
    # patterns, enough for 40 or exactly 64 images of one cluster, not for 65.
    args = tiny_args(widths=[8, 4, 4, 2], active=[1, 1, 1], clusters=2)
    for labels in (torch.tensor([0] * 40 + [1] * 10), torch.tensor([1] * 64)):
        assert len(torch.unique(D.make_patterns(labels, args), dim=0)) == len(labels)
    wide = tiny_args(widths=[4, 8, 8, 2], active=[1, 1, 1], clusters=1)  # 4 x 8 x 8 = 256
    assert len(torch.unique(D.make_patterns(torch.zeros(200, dtype=torch.long), wide),
                            dim=0)) == 200
    with pytest.raises(common.UserError, match="allow 64"):
        D.make_patterns(torch.tensor([0] * 65), args)


def test_first_stage_channel_lies_in_the_block_of_its_cluster():
    images = common.load_images("fake", "", "train")
    args = tiny_args()
    labels = D.cluster_images(images, args.clusters, seed=0)
    assert labels.shape == (len(images),) and set(labels.tolist()) == set(range(4))
    first = D.make_patterns(labels, args)[:, 0]
    block = args.widths[0] // args.clusters
    assert torch.all(first // block == labels)


def reference_shift(image, r):
    """One image, the official way: reflect-pad |r| columns on one side, crop the other."""
    if r > 0:
        return F.pad(image[None], (r, 0, 0, 0), mode="reflect")[0, ..., :-r]
    if r < 0:
        return F.pad(image[None], (0, -r, 0, 0), mode="reflect")[0, ..., -r:]
    return image


def test_vectorised_shift_equals_a_per_image_loop_for_every_shift():
    x = torch.rand(17, 3, 32, 32)
    shifts = torch.arange(-8, 9)  # every value once
    shifted = D.shift_images(x, shifts, 8)
    for image, r, got in zip(x, shifts.tolist(), shifted):
        assert torch.equal(got, reference_shift(image, r)), r
    assert torch.equal(shifted[12, ..., 4:], x[12, ..., :-4])  # r = 4: content moved right
    assert torch.equal(D.shift_images(x, torch.zeros(17, dtype=torch.long), 0), x)
    one = D.shift_images(x[:3], torch.tensor([-1, 0, 1]), 1)  # the smallest range, R = 1
    for image, r, got in zip(x[:3], (-1, 0, 1), one):
        assert torch.equal(got, reference_shift(image, r)), r


def test_shift_position_and_embedding():
    positions = D.shift_position(torch.tensor([-8, -4, 0, 4, 8]), 8)
    assert positions.tolist() == [0, 25, 50, 75, 100]  # 100 (r + 8) / 16, as the official code
    assert D.shift_position(torch.tensor([0]), 0).tolist() == [50]
    assert D.shift_position(torch.tensor([-1, 0, 1]), 1).tolist() == [0, 50, 100]
    embedding = D.sinusoidal(torch.tensor([0.0, 50.0]), 128)
    assert embedding.shape == (2, 128)
    k = torch.arange(64)
    frequencies = 10000 ** (-k / 63)
    assert torch.allclose(embedding[1, :64], torch.sin(50 * frequencies), atol=1e-5)
    assert torch.allclose(embedding[1, 64:], torch.cos(50 * frequencies), atol=1e-5)
    assert torch.equal(embedding[0], torch.cat([torch.zeros(64), torch.ones(64)]))


def test_flip_schedule_reverses_stage_three_exactly_when_it_flips():
    args = tiny_args()
    patterns = D.make_patterns(torch.arange(50) % 4, args)
    assert [D.flips(args, e) for e in range(5)] == [False, True, False, True, False]
    assert not any(D.flips(D.dataclasses.replace(args, flip=False), e) for e in range(5))
    flipped = D.masks_of(D.flip_patterns(patterns, args), args)
    original = D.masks_of(patterns, args)
    assert torch.equal(flipped[0], original[0]) and torch.equal(flipped[1], original[1])
    assert torch.equal(flipped[2], original[2].flip(1))


def test_weight_decay_warm_up():
    args = D.Args(epochs=1000)  # warm-up over int(0.4 * 1000) = 400 epochs
    assert D.weight_decay(args, 0) == 0.0
    assert D.weight_decay(args, 200) == pytest.approx(0.04)
    assert D.weight_decay(args, 399) == pytest.approx(0.08 * 399 / 400)
    assert D.weight_decay(args, 400) == D.weight_decay(args, 999) == 0.08
    assert D.weight_decay(D.Args(epochs=2000, wd_warmup=0.0), 0) == 0.08  # phase two


def ema_pytorch_decay(updates_called):
    """ema_pytorch's get_current_decay, written from its source: after `updates_called`
    calls of update() its step counter is that, and epoch = step - update_after_step - 1."""
    epoch = max(updates_called - 100 - 1, 0)
    return 0.0 if epoch <= 0 else min(1 - (1 + epoch) ** (-2 / 3), 0.99995)


@pytest.mark.parametrize("step", [0, 100, 101, 110, 1000, 195_000, 390_000, 3_000_000])
def test_ema_decay_follows_the_official_schedule(step):
    assert D.ema_decay(step, 0.99995) == pytest.approx(ema_pytorch_decay(step + 1), abs=1e-12)


class EmaPytorch023:
    """ema_pytorch 0.2.3's EMA.update (beta 0.99995, update_after_step 100, update_every
    10), written from its source: a step counter, copies up to step 100, its `initted` flag
    (one more copy at the first update after that), then lerp with get_current_decay."""

    def __init__(self, ema):
        self.ema, self.step, self.initted = ema, 0, False

    def floats(self, model):
        return [t for t in model.state_dict().values() if t.dtype == torch.float]

    def update(self, model):
        step, self.step = self.step, self.step + 1
        if step % 10:
            return
        if step <= 100 or not self.initted:
            for a, b in zip(self.floats(self.ema), self.floats(model)):
                a.copy_(b)
            if step <= 100:
                return
            self.initted = True
        decay = ema_pytorch_decay(self.step)
        for a, b in zip(self.floats(self.ema), self.floats(model)):
            a.lerp_(b, 1 - decay)


def test_ema_equals_ema_pytorch_step_by_step():
    """300 steps of a changing model: our EMA and ema_pytorch's agree at every step."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ours, theirs = D.copy.deepcopy(model), EmaPytorch023(D.copy.deepcopy(model))
    for step in range(300):
        with torch.no_grad():
            model[0].weight.add_(torch.randn(3, 3))
            model[1].running_mean.add_(torch.randn(3))
        D.update_ema(ours, model, step, 0.99995)
        theirs.update(model)
        for a, b in zip(theirs.floats(ours), theirs.floats(theirs.ema)):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-6)
        if step == 110:  # the first update after the warm-up is one more copy
            assert torch.equal(ours[0].weight, model[0].weight)


def test_network_matches_the_official_parameter_count():
    """The official Net(3, latent) has 18,112,771 parameters at latent 128 and 20,079,619
    at CelebA's 256: the shift MLP and the decoder's first layer follow the latent size."""
    model = D.DecipheringAE(3, 32, [128, 256, 512, 1024], 128)
    assert sum(p.numel() for p in model.parameters()) == 18_112_771
    assert sum(p.numel() for p in model.shift_mlp.parameters()) == 131_712
    celeba = D.DecipheringAE(3, 32, [128, 256, 512, 1024], 256)
    assert sum(p.numel() for p in celeba.parameters()) == 20_079_619


def kinds(module) -> list[str]:
    return [type(m).__name__ for m in module]


def test_layers_are_the_official_ones():
    """model.py: each encoder stage conv 2x2 stride 2 -> BN -> LReLU -> conv 3x3 -> BN ->
    LReLU; ResBlock conv3 BN LReLU conv3 BN, the bottleneck 1x1 BN LReLU 3x3 BN LReLU 1x1 BN,
    both without an activation after the sum, which adds the body to the input. The
    encoder's last feature map is S / 16 wide whatever S (64 and 256 px here)."""
    model = D.DecipheringAE(3, 32, [16, 32, 64, 128], 16)
    stage = model.encoder_stages[0]
    assert kinds(stage) == ["Conv2d", "BatchNorm2d", "LeakyReLU"] * 2
    assert stage[0].kernel_size == stage[0].stride == (2, 2) and stage[3].kernel_size == (3, 3)
    blocks = [m for m in model.decoder if isinstance(m, D.ResBlock)]
    assert kinds(blocks[0].body) == ["Conv2d", "BatchNorm2d", "LeakyReLU", "Conv2d",
                                     "BatchNorm2d", "LeakyReLU", "Conv2d", "BatchNorm2d"]
    assert kinds(blocks[-1].body) == ["Conv2d", "BatchNorm2d", "LeakyReLU", "Conv2d",
                                      "BatchNorm2d"]
    x = torch.randn(2, 8, 4, 4)
    for block in (D.ResBlock(8), D.Bottleneck(8, 4)):
        last = block.body[-1]  # the body's final BN, set to output 1 everywhere
        torch.nn.init.zeros_(last.weight)
        torch.nn.init.ones_(last.bias)
        torch.testing.assert_close(block.eval()(x), x + 1)
    for size in (64, 256):
        big = D.DecipheringAE(3, size, [16, 32, 64, 128], 16)
        assert big.to_latent.in_features == big.from_latent.out_features == 128 * (size // 16) ** 2


def test_decoder_groups_and_bottlenecks_at_other_widths():
    """Official formulas at widths 32..256: transposed convs in groups of 128 input channels
    (256 -> 2 groups, 128 and 64 -> 1), bottlenecks 64 wide but never wider than the stage
    (128 -> 64, 64 -> 64, 32 -> 32)."""
    model = D.DecipheringAE(3, 32, [32, 64, 128, 256], 16)
    transposed = [m for m in model.decoder if isinstance(m, torch.nn.ConvTranspose2d)]
    assert [m.groups for m in transposed] == [2, 1, 1, 1]
    blocks = [m for m in model.decoder if isinstance(m, D.ResBlock)]
    assert [b.body[0].out_channels for b in blocks] == [64, 64, 64, 64, 32, 32, 16, 16]
    odd = D.DecipheringAE(3, 32, [126, 128, 128, 128], 16)  # 126 // (126 // 64) = 126
    blocks = [m for m in odd.decoder if isinstance(m, D.Bottleneck)]
    assert [b.body[0].out_channels for b in blocks] == [64, 64, 64, 64, 126, 126]


def test_masked_channels_do_not_reach_the_next_stage():
    args = tiny_args()
    model = D.DecipheringAE(3, 32, args.widths, args.latent_dim).eval()
    patterns = D.make_patterns(torch.arange(4) % 4, args)
    masks = D.masks_of(patterns, args)
    seen = []
    model.encoder_stages[1].register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
    out = model(torch.randn(4, 3, 32, 32), masks, torch.full((4,), 50.0))
    assert out.shape == (4, 3, 32, 32)
    active = seen[0].abs().amax((2, 3)) > 0  # [4, 16]: channels of stage 1 that are non-zero
    assert torch.all(active <= masks[0].bool())


def test_sampling_with_batch_statistics_leaves_running_statistics_alone():
    args = tiny_args()
    model = D.DecipheringAE(3, 32, args.widths, args.latent_dim).eval()
    before = {k: v.clone() for k, v in model.state_dict().items() if "running" in k}
    uniform = torch.full((4,), 0.25)
    run = common.Run(model, D.dataclasses.asdict(args), {"uniform": uniform, "running-bn": uniform},
                     None)
    images = D.sample(run, 6, "uniform", seed=3)
    assert images.shape == (6, 3, 32, 32) and 0 <= images.min() and images.max() <= 1
    assert torch.equal(images, D.sample(run, 6, "uniform", seed=3))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
    assert not model.training
    assert not torch.allclose(images, D.sample(run, 6, "running-bn", seed=3))
    with pytest.raises(common.UserError, match="no 'gmm' sampler"):
        D.sample(run, 1, "gmm")


def official_embedding(position: float, dim: int) -> torch.Tensor:
    """model.py's sinusoidal embedding of the MLP's position: dim / 2 sines, then as many
    cosines, of position * exp(-k ln(10^4) / (dim / 2 - 1))."""
    k = torch.arange(dim // 2, dtype=torch.float64)
    angles = position * torch.exp(-k * math.log(10000) / (dim // 2 - 1))
    return torch.cat([angles.sin(), angles.cos()]).float()


@pytest.mark.parametrize("sampler", ["uniform", "running-bn"])
def test_samples_are_decoded_without_a_shift(sampler):
    """sample.py decodes with r = 50, the middle of [0, 100] (no shift): the MLP reads the
    embedding of 50 for every sample, never 0 (a shift of -R)."""
    args = tiny_args()
    model = D.DecipheringAE(3, 32, args.widths, args.latent_dim).eval()
    seen = []
    model.shift_mlp.register_forward_pre_hook(lambda m, inputs: seen.append(inputs[0]))
    uniform = torch.full((4,), 0.25)
    run = common.Run(model, D.dataclasses.asdict(args), {sampler: uniform}, None)
    D.sample(run, 3, sampler, seed=0)
    expected = official_embedding(50.0, args.latent_dim).expand(3, -1)
    torch.testing.assert_close(torch.cat(seen), expected, rtol=0, atol=1e-5)


def test_lpips_reads_images_in_minus_one_to_one(weights, monkeypatch, tmp_path):
    """d of Eq. (2) is LPIPS on images in [-1, 1]: it equals the lpips package's own scaling
    of the same images given in [0, 1] (normalize=True); it is 0 for equal images, reaches
    the decoder's output only, and a missing AlexNet file is a one-line error."""
    net = D.load_lpips("cpu")
    g = torch.Generator().manual_seed(0)
    x, y = (torch.rand(2, 3, 32, 32, generator=g) * 2 - 1 for _ in range(2))
    expected = net((x + 1) / 2, (y + 1) / 2, normalize=True).mean()
    assert D.lpips_loss(net, x, y, 32).item() == pytest.approx(expected.item(), rel=1e-5)
    assert D.lpips_loss(net, x, x, 64).item() == pytest.approx(0, abs=1e-6)
    # train.py: nn.Upsample(size=128, mode='bilinear') of both images, then LPIPS; images of
    # 128 px or more as they are.
    up = torch.nn.Upsample(size=64, mode="bilinear")
    expected = net(up(x), up(y)).mean()
    assert D.lpips_loss(net, x, y, 64).item() == pytest.approx(expected.item(), rel=1e-5)
    large = [torch.rand(2, 3, 128, 128, generator=g) * 2 - 1 for _ in range(2)]
    assert D.lpips_loss(net, *large, 64).item() == pytest.approx(
        net(*large).mean().item(), rel=1e-5)
    grey = x[:, :1].requires_grad_()
    D.lpips_loss(net, grey, y[:, :1], 64).backward()
    assert grey.grad is not None and all(p.grad is None for p in net.parameters())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty, and no network
    with pytest.raises(common.UserError, match=r"alexnet-owt-7be5be79\.pth .*not in .*checkpoints"):
        D.load_lpips("cpu")


@pytest.mark.parametrize("epoch", [0, 1])
def test_training_batch(epoch):
    """Eq. (2)'s pieces for a batch: the target is T(x_i, r_i) in [-1, 1] (flipped on odd
    epochs, with the stage-3 pattern reversed), the MLP reads 50 + 50 r / R, the encoder
    reads N(0, I) noise."""
    args = tiny_args(max_shift=4)
    images = torch.randint(0, 256, (6, 3, 32, 32), dtype=torch.uint8)
    images[0, :, 0, 0], images[0, :, 0, 1] = 0, 255
    patterns = D.make_patterns(torch.arange(6) % 4, args)
    torch.manual_seed(1)
    noise, masks, position, target = D.training_batch(images, patterns, args, epoch)
    torch.manual_seed(1)
    shifts = torch.randint(-4, 5, (6,))
    x = images.double() / 127.5 - 1
    if epoch == 1:
        x = x.flip(3)
    for image, r, got in zip(x, shifts.tolist(), target):
        torch.testing.assert_close(got.double(), reference_shift(image, r))
    assert target.min() >= -1 and target.max() <= 1 and x[0].min() == -1 and x[0].max() == 1
    torch.testing.assert_close(position, 50 + 50 * shifts.float() / 4)
    expected = D.flip_patterns(patterns, args) if epoch == 1 else patterns
    for mask, exact in zip(masks, D.masks_of(expected, args)):
        assert torch.equal(mask, exact)
    assert noise.shape == (6, 3, 32, 32) and abs(noise.std().item() - 1) < 0.05


@pytest.fixture(scope="module")
def phase_one(tmp_path_factory, torch_home):
    tmp = tmp_path_factory.mktemp("deciphering")
    with mock.patch.dict(os.environ, {"TORCH_HOME": str(torch_home)}):
        folder = train(D, tmp, **TINY, epochs=3, save_every=2, lpips_size=64)
    return folder


def test_phase_one_learns_and_writes_its_run(phase_one, capsys):
    log = log_records(phase_one)
    assert [r["epoch"] for r in log] == [1, 2, 3] and all(math.isfinite(r["loss"]) for r in log)
    assert log[-1]["loss"] < log[0]["loss"]  # the patterns are being deciphered
    assert [r["weight_decay"] for r in log] == [0.0, 0.08, 0.08]  # int(0.4 * 3) = 1 epoch
    checkpoint = common.load_checkpoint(phase_one)
    assert checkpoint["epoch"] == 2 and checkpoint["patterns"].shape == (256, 7)
    for name in ("samples", "reconstructions"):
        with Image.open(phase_one / f"{name}.png") as grid:  # 64 images: 8 rows of 8
            assert grid.size == (8 * 33 + 1, 8 * 33 + 1)


def test_phase_two_inherits_phase_one_and_says_what_changes(phase_one, weights, tmp_path,
                                                            capsys):
    args = D.Args(finetune_from=str(phase_one), epochs=1, lr=1e-3, latent_dim=99,
                  device="cpu", out_dir=str(tmp_path))
    folder = D.train(args, {"finetune_from", "epochs", "lr", "latent_dim", "device", "out_dir"})
    out = capsys.readouterr().out
    assert "ignoring --latent-dim" in out
    for change in ("epochs 3 -> 1", "max_shift 8 -> 0", "wd_warmup 0.4 -> 0.0",
                   "lr 0.002 -> 0.001"):
        assert change in out, out
    second, first = common.load_checkpoint(folder), common.load_checkpoint(phase_one)
    for key in ("batch_size", "lpips_size", "latent_dim", "data_root", "seed", "flip"):
        assert second["args"][key] == first["args"][key], key  # inherited, not reset
    assert second["args"]["max_shift"] == 0 and second["args"]["lr"] == 1e-3
    assert torch.equal(second["patterns"], first["patterns"])
    assert not (phase_one / D.PHASE_TWO_FILE).exists()  # an experiment of its own: no link
    run = D.load_run(folder)
    assert set(run.samplers) == {"uniform", "clusters", "running-bn"}
    # Stage 1's cluster probabilities: 1 / K each, or the clusters' training shares.
    labels = second["labels"].tolist()
    shares = torch.tensor([labels.count(c) / len(labels) for c in range(4)])
    torch.testing.assert_close(run.samplers["clusters"], shares)
    torch.testing.assert_close(run.samplers["uniform"], torch.full((4,), 0.25))
    assert not run.model.training  # load_run hands eval.py an eval-mode model
    images = D.sample(run, 5, "clusters", seed=0)
    assert images.shape == (5, 3, 32, 32) and 0 <= images.min() and images.max() <= 1


def test_both_phases_in_one_command_and_resumed(weights, tmp_path, capsys):
    """--phase-two-epochs: phase one, then phase two beside it; --resume of phase one then
    continues phase two (here: finished) instead of starting another."""
    settings = dict(**TINY, epochs=1, phase_two_epochs=1, lpips_size=32, device="cpu",
                    out_dir=str(tmp_path), data_root=str(tmp_path / "data"))
    D.main(D.Args(**settings), set(settings))
    (one,), (two,) = tmp_path.glob("deciphering-fake-*"), tmp_path.glob("deciphering-finetune-*")
    second = common.load_checkpoint(two)["args"]
    assert second["finetune_from"] == str(one) and second["epochs"] == 1
    assert second["max_shift"] == 0 and second["batch_size"] == 32
    assert "needs phase two" not in capsys.readouterr().out
    D.main(D.Args(resume=str(one)), {"resume"})
    assert len(list(tmp_path.glob("deciphering-*"))) == 2


def test_phase_two_untyped_is_the_official_fine_tuning(phase_one, monkeypatch):
    """The official README's phase two: 2000 epochs, no shift, weight decay from the start.
    Phase one's folder is kept as an absolute path, so that eval.py finds it from anywhere."""
    monkeypatch.chdir(phase_one.parent)
    args, _ = D.phase_two_args(D.Args(finetune_from=phase_one.name), {"finetune_from"})
    assert (args.epochs, args.max_shift, args.wd_warmup) == (2000, 0, 0.0)
    assert args.finetune_from == str(phase_one.resolve())


def test_the_mlp_learns_at_a_tenth_of_the_rate_unless_typed():
    """train.py: AdamW group of the MLP at lr / 10, whatever lr is (phase two's too); a
    typed --mlp-lr as it is, 0 (a frozen MLP) included."""
    assert D.mlp_rate(D.Args()) == pytest.approx(2e-4)
    assert D.mlp_rate(D.Args(lr=1e-3)) == pytest.approx(1e-4)
    assert D.mlp_rate(D.Args(lr=1e-3, mlp_lr=5e-4)) == 5e-4
    assert D.mlp_rate(D.Args(mlp_lr=0.0)) == 0.0


@pytest.mark.parametrize("widths, active, clusters, latent, error", [
    ([16, 32, 64, 128], [4, 2, 4], 4, 16, ""),  # stage 1's blocks of 4, each 4 active: fine
    ([16, 32, 64, 128], [1, 2, 64], 4, 16, ""),  # every stage-3 channel active: fine
    ([12, 16, 32, 64], [1, 2, 4], 8, 16, "--clusters 8"),  # 12 channels do not cut into 8
    ([16, 32, 64, 128], [5, 2, 4], 4, 16, "--clusters 4"),  # 5 active in blocks of 4
    ([16, 32, 64, 128], [1, 2, 65], 4, 16, "--active exceeds"),
    ([16, 32, 64, 128], [1, 2, 4], 4, 15, "--latent-dim must be even"),
])
def test_settings_checked_before_training(widths, active, clusters, latent, error):
    args = tiny_args(widths=widths, active=active, clusters=clusters, latent_dim=latent)
    if error:
        with pytest.raises(common.UserError, match=error):
            D.check(args)
    else:
        D.check(args)


def test_celeba_is_cropped_to_160_unless_typed(monkeypatch):
    """Sec. 4: CelebA's central 160 x 160 pixels, resized to 32 x 32."""
    seen = []

    def stop(args, *rest, **kwargs):
        seen.append(args)
        raise KeyboardInterrupt

    monkeypatch.setattr(common, "start", stop)
    for typed in ({}, {"crop": 140}):
        with pytest.raises(KeyboardInterrupt):
            D.set_up(D.Args(dataset="celeba", **typed), set(typed))
    assert [a.crop for a in seen] == [160, 140]


def test_kmeans_is_the_official_pipeline(monkeypatch):
    """gen_masks.py: StandardScaler on float64 (numpy's default) pixels, PCA keeping 95% of
    the variance (full SVD), KMeans(k, random_state=0) with sklearn <= 1.3's n_init 10; one
    cluster needs no k-means, two are two."""
    from sklearn import cluster, decomposition
    from sklearn.preprocessing import StandardScaler

    seen = []
    fit = StandardScaler.fit_transform
    monkeypatch.setattr(StandardScaler, "fit_transform",
                        lambda self, x, *a, **k: seen.append(x.dtype) or fit(self, x, *a, **k))
    for module, name in ((decomposition, "PCA"), (cluster, "KMeans")):
        real = getattr(module, name)
        monkeypatch.setattr(module, name, lambda *a, _real=real, **k: seen.append((a, k)) or
                            _real(*a, **k))
    images = common.load_images("fake", "", "train")
    labels = D.cluster_images(images, 4, seed=0)
    assert seen == [np.float64, ((0.95,), {"svd_solver": "full"}),
                    ((4,), {"n_init": 10, "random_state": 0})]
    assert set(labels.tolist()) == {0, 1, 2, 3}
    assert set(D.cluster_images(images, 2, seed=0).tolist()) == {0, 1}
    assert torch.equal(D.cluster_images(images, 1, seed=0), torch.zeros(256, dtype=torch.long))


def test_phase_one_alone_ends_with_the_phase_two_command(phase_one, weights, capsys):
    """Also: settings are checked after --resume has restored the run's own, so a flag the
    resume ignores (--clusters 5 would not cut 16 channels evenly) is no error."""
    D.main(D.Args(resume=str(phase_one), clusters=5), {"resume", "clusters"})
    out = capsys.readouterr().out
    assert "ignoring --clusters" in out
    assert f"python deciphering.py --finetune-from {phase_one}" in out


class RecordingAdamW(torch.optim.AdamW):
    """AdamW that notes, at every step, each parameter group's learning rate, weight decay
    and parameter shapes."""

    steps = []

    def step(self, closure=None):
        RecordingAdamW.steps.append([(g["lr"], g["weight_decay"], [tuple(p.shape) for p in
                                                                   g["params"]])
                                     for g in self.param_groups])
        return super().step(closure)


def test_training_follows_the_official_optimizer_and_the_papers_lr_drops(weights, tmp_path,
                                                                        monkeypatch):
    """train.py's AdamW: the shift MLP's parameters at lr / 10, all others at lr. The
    paper's CelebA footnote: lr for the first 500 epochs, / 10 for the next 100, / 100 for
    the last 50, here scaled down to 1, 1 and 2 epochs (--lr-drops 1 2). LPIPS compares
    both images upsampled to --lpips-size (64 here, from 32 px). The EMA is told each
    optimizer step's number."""
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    RecordingAdamW.steps = []
    shapes = []
    load = D.load_lpips

    def spied_lpips(device):
        net = load(device)
        net.register_forward_pre_hook(lambda m, inputs: shapes.append(
            [tuple(i.shape[-2:]) for i in inputs[:2]]))
        return net

    monkeypatch.setattr(D, "load_lpips", spied_lpips)
    losses = recorded(monkeypatch, D, "lpips_loss")
    ema_steps = []
    update = D.update_ema
    monkeypatch.setattr(D, "update_ema", lambda ema, model, step, cap: (
        ema_steps.append(step), update(ema, model, step, cap)))
    saved = recorded(monkeypatch, common, "save_epoch")
    flags = {**TINY, "batch_size": 128}  # two steps per epoch
    folder = train(D, tmp_path, **flags, epochs=4, lr_drops=[1, 2], lpips_size=64,
                   save_every=3)
    scale = [1.0] * 1 + [0.1] * (2 - 1) + [0.01] * (4 - 2)  # by epoch, as the footnote
    decay = [0.0, 0.08, 0.08, 0.08]  # reached at epoch int(0.4 x 4) = 1
    mlp = [(64, 16), (64,), (16, 64), (16,)]  # latent 16: Linear(16, 64), Linear(64, 16)
    assert [state["epoch"] for state in saved] == [2, 3]  # every 3rd epoch, and the last
    assert len(RecordingAdamW.steps) == 8
    for step, groups in enumerate(RecordingAdamW.steps):
        rates = {("mlp" if shapes_ == mlp else "rest"): lr for lr, _, shapes_ in groups}
        assert rates == pytest.approx({"rest": 2e-3 * scale[step // 2],
                                       "mlp": 2e-4 * scale[step // 2]}), step
        assert [wd for _, wd, _ in groups] == [decay[step // 2]] * 2
    assert shapes and all(pair == [(64, 64), (64, 64)] for pair in shapes)
    assert ema_steps == list(range(8))  # the optimizer steps, counted across the epochs
    log = log_records(folder)
    assert [r["epoch"] for r in log] == [1, 2, 3, 4]
    for e, record in enumerate(log):
        assert record["loss"] == pytest.approx((losses[2 * e] + losses[2 * e + 1]).item() / 2,
                                                rel=1e-5)
        assert record["lr"] == pytest.approx(2e-3 * scale[e]) and record["weight_decay"] == decay[e]
    model = common.load_checkpoint(folder)["model"]
    assert {v.item() for k, v in model.items() if "num_batches" in k} == {4 * 2}  # train mode


def test_resume_gives_the_weights_of_an_uninterrupted_run(weights, tmp_path):
    flags = dict(**TINY, save_every=1, max_shift=4, lpips_size=32)
    straight = train(D, tmp_path / "a", **flags, epochs=2)
    interrupted = train(D, tmp_path / "b", **flags, epochs=1)
    D.train(D.Args(resume=str(interrupted), epochs=2), {"resume", "epochs"})
    a, b = common.load_checkpoint(straight), common.load_checkpoint(interrupted)
    assert a["epoch"] == b["epoch"] == 1
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


STOPS = {  # where a two-phase run (2 + 2 epochs of 2 steps, a checkpoint per epoch) stops
    "in phase one, after its first checkpoint": ("training_batch", 3),
    "right after phase one": ("phase_two_args", 1),
    "in phase two, before its first checkpoint": ("training_batch", 5),
    "in phase two, after its first checkpoint": ("training_batch", 7),
}


@pytest.mark.slow
@pytest.mark.parametrize("stop", list(STOPS))
def test_a_two_phase_run_stopped_anywhere_resumes_as_if_never_stopped(stop, weights, tmp_path,
                                                                      monkeypatch):
    """Ctrl-C at each boundary of --phase-two-epochs, then the command the run prints
    (--resume of the folder of its last checkpoint): phase two ends with the weights and
    EMA of a run never stopped, and phase one points at that phase two."""
    settings = dict(**{**TINY, "batch_size": 128}, epochs=2, phase_two_epochs=2, save_every=1,
                    lpips_size=32, device="cpu", data_root=str(tmp_path / "data"))

    def run(folder):
        D.main(D.Args(**settings, out_dir=str(folder)), set(settings) | {"out_dir"})
        (one,) = folder.glob("deciphering-fake-*")
        return one, Path(json.loads((one / D.PHASE_TWO_FILE).read_text())["phase_two"])

    _, straight = run(tmp_path / "straight")
    name, at = STOPS[stop]
    calls, real = [], getattr(D, name)

    def interrupt(*args, **kwargs):
        calls.append(1)
        if len(calls) == at:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(D, name, interrupt)
    common.LAST_SAVED.clear()
    with pytest.raises(KeyboardInterrupt):
        run(tmp_path / "stopped")
    monkeypatch.setattr(D, name, real)
    D.main(D.Args(resume=str(common.LAST_SAVED[0])), {"resume"})  # the printed command
    (one,) = (tmp_path / "stopped").glob("deciphering-fake-*")
    two = Path(json.loads((one / D.PHASE_TWO_FILE).read_text())["phase_two"])
    assert two.is_absolute()
    a, b = common.load_checkpoint(straight), common.load_checkpoint(two)
    assert a["epoch"] == b["epoch"] == 1
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


@pytest.mark.parametrize("argv, words", [
    (["--widths", "16", "32", "64"], ["--widths takes 4"]),
    (["--clusters", "5"], ["--clusters 5", "blocks"]),
    (["--resume", "RUN_OF_ANOTHER_METHOD"], ["is a dae run, not a deciphering run"]),
    (["--max-shift", "32"], ["--max-shift"]),
    (["--finetune-from", "nowhere"], ["nowhere", "checkpoint.pt"]),
    (["--finetune-from", "nowhere", "--phase-two-epochs", "3"], ["--phase-two-epochs", "--epochs"]),
    (["--dataset", "digits", "--image-size", "48", "--batch-size", "1600"], ["larger than"]),
])
def test_bad_flags_are_one_line_errors(argv, words, weights, fake_folder, tmp_path, capsys):
    if "RUN_OF_ANOTHER_METHOD" in argv:
        common.atomic_save({"method": "dae", "args": {}}, tmp_path / common.CHECKPOINT)
        argv = [tmp_path if a == "RUN_OF_ANOTHER_METHOD" else a for a in argv]
    tiny = ["--dataset", "folder", "--data-root", fake_folder, "--widths", "16", "32", "64",
            "128", "--active", "1", "2", "4", "--clusters", "4", "--latent-dim", "16",
            "--batch-size", "32", "--device", "cpu"]
    last = cli_error(D, [*tiny, "--epochs", "1", "--out-dir", tmp_path, *argv], capsys)
    assert last.startswith("error:") and all(w in last for w in words), last


def test_250_samples_share_their_batch_statistics():
    """The official sampler: the model in train mode on a batch of 250 (its BN uses that
    batch's statistics), outputs clamped to [-1, 1], then mapped to [0, 1]."""
    args = tiny_args()
    torch.manual_seed(0)
    model = D.DecipheringAE(3, 32, args.widths, args.latent_dim).eval()
    with torch.no_grad():
        model.decoder[-1].weight.mul_(30)  # outputs well beyond [-1, 1]
    g = torch.Generator().manual_seed(1)
    patterns = D.draw_patterns(torch.randint(4, (250,), generator=g), args, g)
    noise = torch.randn(250, 3, 32, 32, generator=g)
    with torch.no_grad():
        raw = D.copy.deepcopy(model).train()(noise, D.masks_of(patterns, args),
                                              torch.full((250,), 50.0))
    assert raw.min() < -1 and raw.max() > 1
    torch.testing.assert_close(D.generate(model, patterns, noise, args),
                               (raw.clamp(-1, 1) + 1) / 2)


def test_samples_do_not_depend_on_how_eval_asks_for_them():
    """Batch norm sees the sampler's own groups (n split evenly, none above 250), so eval.py's
    --batch-size (100, 250, a remainder of 1) changes nothing; 251 samples are two groups of
    126 and 125, the first of which decodes alone to the same images."""
    import eval as eval_module

    args = tiny_args()
    torch.manual_seed(0)
    model = D.DecipheringAE(3, 32, args.widths, args.latent_dim).eval()
    uniform = torch.full((4,), 0.25)
    run = common.Run(model, D.dataclasses.asdict(args), {"uniform": uniform}, None)
    batches = {size: torch.cat(list(eval_module.generated(
        D, run, "uniform", 251, eval_module.Args(batch_size=size), None)))
        for size in (100, 250)}
    assert torch.equal(batches[100], batches[250])
    g = torch.Generator().manual_seed(0)  # what sample() draws from seed 0, in its order
    labels = torch.multinomial(uniform, 251, replacement=True, generator=g)
    patterns = D.draw_patterns(labels, args, g)
    noise = torch.randn(251, 3, 32, 32, generator=g)
    first_group = D.generate(model, patterns[:126], noise[:126], args)
    torch.testing.assert_close(batches[100][:126], first_group)


@pytest.mark.parametrize("phase_one, phase_two, ref, expected", [
    ({"clusters": 1}, None, "test", 48.72), ({"clusters": 8}, None, "test", 42.83),
    ({"clusters": 16}, None, "test", 45.88), ({}, None, "test", 44.15),
    ({"clusters": 64}, None, "test", 44.39), ({"clusters": 4}, None, "test", None),
    ({}, None, "train", None), ({"max_shift": 0}, None, "test", None),
    ({"batch_size": 128}, None, "test", None),
    ({}, {}, "test", 42.73), ({}, {}, "train", 39.02), ({"max_shift": 0}, {}, "test", 47.69),
    ({"max_shift": 0}, {}, "train", None), ({"clusters": 8}, {}, "test", None),
    ({}, {"epochs": 1000}, "test", None), ({}, {"lr": 1e-3}, "test", None),
    ({"epochs": 500}, {}, "test", None),
])
def test_paper_figure_only_for_the_papers_settings(phase_one, phase_two, ref, expected,
                                                   tmp_path):
    one = {**D.dataclasses.asdict(D.Args()), **phase_one}
    if phase_two is None:
        args = one
    else:
        (tmp_path / "args.json").write_text(json.dumps(one))
        official = {"epochs": 2000, "max_shift": 0, "wd_warmup": 0.0}  # README, phase two
        two = {**one, **official, "finetune_from": str(tmp_path), **phase_two}
        args = {**two, "phase_two_epochs": 0}
    assert D.paper_fid(args, ref) == ({} if expected is None else {"uniform": expected})
