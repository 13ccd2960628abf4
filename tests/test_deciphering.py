"""deciphering.py: patterns, clustering, shift, schedules, EMA, LPIPS offline, and the two
training phases end to end with eval.py."""
import json
import math

import pytest
import torch
import torch.nn.functional as F
from PIL import Image

import common
import deciphering as D
from conftest import run_eval, run_with_weights

TINY = ["--dataset", "fake", "--widths", "16", "32", "64", "128", "--active", "1", "2", "4",
        "--clusters", "4", "--latent-dim", "16", "--batch-size", "32", "--lpips-size", "64",
        "--device", "cpu"]


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


def test_too_few_patterns_for_a_cluster_is_a_user_error():
    args = tiny_args(widths=[2, 2, 2, 16], active=[1, 1, 1], clusters=1)  # 8 patterns
    with pytest.raises(common.UserError, match="allow 8"):
        D.make_patterns(torch.zeros(9, dtype=torch.long), args)


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


def test_shift_position_and_embedding():
    positions = D.shift_position(torch.tensor([-8, -4, 0, 4, 8]), 8)
    assert positions.tolist() == [0, 25, 50, 75, 100]  # 100 (r + 8) / 16, as the official code
    assert D.shift_position(torch.tensor([0]), 0).tolist() == [50]
    embedding = D.sinusoidal(torch.tensor([0.0, 50.0]))
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


def test_ema_update():
    model = torch.nn.Sequential(torch.nn.Linear(3, 3), torch.nn.BatchNorm1d(3))
    ema = D.copy.deepcopy(model)
    with torch.no_grad():
        model[0].weight.add_(1.0)
    before = ema[0].weight.clone()
    D.update_ema(ema, model, 103, 0.99995)  # not a multiple of 10: no update
    assert torch.equal(ema[0].weight, before)
    D.update_ema(ema, model, 100, 0.99995)  # up to step 100: a copy
    assert torch.equal(ema[0].weight, model[0].weight)
    with torch.no_grad():
        model[0].weight.add_(1.0)
        model[1].running_mean.add_(2.0)
    D.update_ema(ema, model, 110, 0.99995)
    decay = 1 - 11 ** (-2 / 3)
    assert torch.allclose(ema[0].weight, model[0].weight - decay * 1.0)
    assert torch.allclose(ema[1].running_mean, torch.full((3,), 2.0 * (1 - decay)))


def test_network_matches_the_official_parameter_count():
    model = D.DecipheringAE(3, 32, [128, 256, 512, 1024], 128)
    assert sum(p.numel() for p in model.parameters()) == 18_112_771  # official Net(3, 128, ...)
    assert sum(p.numel() for p in model.shift_mlp.parameters()) == 131_712


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


def test_lpips_offline_on_random_weights(torch_home, monkeypatch, tmp_path):
    monkeypatch.setenv("TORCH_HOME", str(torch_home))
    net = D.load_lpips("cpu")
    x, y = torch.rand(2, 3, 32, 32) * 2 - 1, torch.rand(2, 3, 32, 32) * 2 - 1
    assert D.lpips_loss(net, x, x, 64).item() == pytest.approx(0, abs=1e-6)
    assert D.lpips_loss(net, x, y, 64).item() > 0
    grey = x[:, :1].requires_grad_()
    D.lpips_loss(net, grey, y[:, :1], 64).backward()
    assert grey.grad is not None and all(p.grad is None for p in net.parameters())
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # empty, and no network
    with pytest.raises(common.UserError, match=r"alexnet-owt-7be5be79\.pth .*not in .*checkpoints"):
        D.load_lpips("cpu")


def test_two_phases_end_to_end_then_eval(torch_home, tmp_path):
    result = run_with_weights(torch_home, "deciphering.py", *TINY, "--epochs", "3",
                              "--save-every", "2", "--out-dir", tmp_path / "one")
    assert result.returncode == 0, result.stderr
    assert "5,042,343,936" in result.stdout  # C(16,1) C(32,2) C(64,4)
    (phase_one,) = (tmp_path / "one").iterdir()
    log = [json.loads(line) for line in (phase_one / "log.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in log] == [1, 2, 3] and all(math.isfinite(r["lpips"]) for r in log)
    assert [r["weight_decay"] for r in log] == [0.0, 0.08, 0.08]
    checkpoint = common.load_checkpoint(phase_one)
    assert checkpoint["epoch"] == 2 and checkpoint["patterns"].shape == (256, 7)
    for name in ("samples", "reconstructions"):
        with Image.open(phase_one / f"{name}.png") as grid:
            assert grid.size[0] == 8 * 33 + 1

    result = run_with_weights(torch_home, "deciphering.py", "--finetune-from", phase_one,
                              "--epochs", "1", "--lpips-size", "64", "--latent-dim", "99",
                              "--out-dir", tmp_path / "two")
    assert result.returncode == 0, result.stderr
    assert "ignoring --latent-dim" in result.stdout
    (phase_two,) = (tmp_path / "two").iterdir()
    second = common.load_checkpoint(phase_two)
    assert second["args"]["max_shift"] == 0 and second["args"]["latent_dim"] == 16
    assert torch.equal(second["patterns"], checkpoint["patterns"])

    result = run_eval(torch_home, phase_two, "--num-samples", "40", "--batch-size", "20")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((phase_two / "metrics.json").read_text())
    assert set(metrics["columns"]) == {"uniform", "clusters", "running-bn"}
    assert all(math.isfinite(c["fid"]) for c in metrics["columns"].values())


def test_resume_gives_the_weights_of_an_uninterrupted_run(torch_home, tmp_path):
    common_flags = [*TINY, "--save-every", "1", "--max-shift", "4"]
    straight = run_with_weights(torch_home, "deciphering.py", *common_flags, "--epochs", "2",
                                "--out-dir", tmp_path / "a")
    first = run_with_weights(torch_home, "deciphering.py", *common_flags, "--epochs", "1",
                             "--out-dir", tmp_path / "b")
    assert straight.returncode == 0 and first.returncode == 0, straight.stderr + first.stderr
    (run_b,) = (tmp_path / "b").iterdir()
    resumed = run_with_weights(torch_home, "deciphering.py", "--resume", run_b, "--epochs", "2")
    assert resumed.returncode == 0, resumed.stderr
    (run_a,) = (tmp_path / "a").iterdir()
    a, b = common.load_checkpoint(run_a), common.load_checkpoint(run_b)
    for key in ("model", "ema"):
        assert all(torch.equal(a[key][k], b[key][k]) for k in a[key]), key


@pytest.mark.parametrize("argv, words", [
    (["--widths", "16", "32", "64"], ["--widths takes 4"]),
    (["--clusters", "5"], ["--clusters 5", "blocks"]),
    (["--resume", "RUN_OF_ANOTHER_METHOD"], ["is a dae run, not a deciphering run"]),
    (["--max-shift", "32"], ["--max-shift"]),
    (["--finetune-from", "nowhere"], ["nowhere", "checkpoint.pt"]),
])
def test_bad_flags_are_one_line_errors(argv, words, torch_home, tmp_path):
    if "RUN_OF_ANOTHER_METHOD" in argv:
        common.atomic_save({"method": "dae", "args": {}}, tmp_path / common.CHECKPOINT)
        argv = [tmp_path if a == "RUN_OF_ANOTHER_METHOD" else a for a in argv]
    result = run_with_weights(torch_home, "deciphering.py", *TINY, "--epochs", "1",
                              "--out-dir", tmp_path, *argv)
    assert result.returncode != 0 and "Traceback" not in result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error:") and all(w in last for w in words), result.stderr
