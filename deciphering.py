"""Deciphering autoencoders: generative autoencoding of dropout patterns (Maeda 2023).

From common.py: the data and the epoch's random order; the run machinery of its part two.
Paper: "Generative Autoencoding of Dropout Patterns", S. Maeda, 2023,
https://arxiv.org/abs/2310.01712; official code github.com/shuntama/deciphering-autoencoders

The method. Each training image x_i gets its own fixed random pattern z_i of active
channels ("ciphering"): after encoder stages 1, 2, 3 only 1 of 128, 4 of 256 and 16 of 512
channels are kept, a channel-wise dropout whose pattern never changes. An autoencoder
g_theta learns to turn z_i back into x_i ("deciphering") with LPIPS as its only loss; its
large encoder arranges the unrelated patterns smoothly in a 128-d latent space, its decoder
is small. A fresh pattern from the same distribution decodes to a new image: no prior, no
ex-post density. Regularisation: each target is shifted horizontally by a random r that the
decoder is told through an MLP (geometric), a high learning rate and strong weight decay.
Clustering the images (k-means), each cluster owning a block of stage 1's channels, helps.

    (1)  min_theta 1/N sum_i d(g_theta(z_i), x_i),            d = LPIPS
    (2)  min_theta 1/N sum_i d(g_theta(z_i, r), T(x_i, r)),    T = horizontal shift by r
    number of patterns C(128, 1) C(256, 4) C(512, 16) = 1.88e40

Reproduce (then `python eval.py RUN_DIR --num-samples 50000 [--ref train]`):
    CIFAR-10, Table 1 (FID 39.02 train / 42.73 test, IS 6.84 / 6.77): phase one, 1000
    epochs with the shift, then phase two, 2000 more without it, in one command (phase
    two's run folder is written beside phase one's):
        python deciphering.py --epochs 1000 --phase-two-epochs 2000
    or phase two later, from phase one's folder (it inherits every setting not typed):
        python deciphering.py --finetune-from runs/deciphering-cifar10-<time>
    Table 2, clusters (phase one only): --clusters 1 | 8 | 16 | 32 | 64
    Sec. 4, no geometric regularisation (FID 47.69 test, both phases): --max-shift 0
    CelebA, Fig. 3 (centre 160 -> 32x32, latent 256, no shift, lr /10 at 500 and 600):
        python deciphering.py --dataset celeba --data-root DATA --latent-dim 256 \\
            --max-shift 0 --epochs 650 --lr-drops 500 600
    Small offline run (digits; LPIPS needs the AlexNet weights once):
        python deciphering.py --dataset digits --widths 32 64 128 256 --active 1 2 4 \\
            --clusters 4 --latent-dim 32 --batch-size 64 --epochs 20

Deviations and choices (the paper where it speaks, else the official code):
  - The encoder reads fresh N(0, I) noise images (official; the paper does not say); masks
    multiply stages 1-3's activations without 1/p scaling. Network as the official code:
    18,112,771 parameters at latent 128, 20,079,619 at CelebA's 256; the shift enters as a
    sinusoidal embedding of 50 + 50 r / R, latent_dim wide, through an MLP 4 latent_dim
    wide; the decoder's transposed convs in groups of 128 input channels and its bottleneck
    blocks 64 channels wide (cout // max(1, cout // 64)), at any --widths.
  - Patterns drawn with torch from --pattern-seed 123 (the official draws them with
    numpy's global generator seeded 123: other patterns from the same distribution),
    redrawn where two coincide (unchecked in the official code), stored in the checkpoint.
    Clustering (official): float64 pixels standardised, PCA to 95% variance, k-means with
    n_init 10 (sklearn's default then) and --kmeans-seed 0. Flips (official): odd epochs
    flip every image and reverse its stage-3 pattern.
  - AdamW (official): the shift MLP at --lr / 10 unless --mlp-lr; LPIPS of images below
    128 px upsampled bilinearly to --lpips-size, larger ones as they are. Weight decay
    rises from 0 to 0.08 at epoch 0.4 E, then stays (the paper; the official code stops at
    0.0798); it covers every parameter (official).
  - EMA as the official code (ema_pytorch 0.2.3): every 10 steps, a copy up to step 100 and
    at step 110, then decay min(1 - (1 + t)^(-2/3), 0.99995), t = step - 100 (0.9997 after
    195k steps). BN statistics averaged too, the integer batch counter copied (ema_pytorch
    leaves it; no effect on outputs). Grids and eval.py use the EMA.
  - Phase two starts from phase one's online weights (the official README does not say;
    --finetune-ema takes the EMA), its patterns, a fresh AdamW and EMA (official), and every
    other setting of phase one not typed (batch, lr, LPIPS size, seed, flips, ...), with
    2000 epochs, no shift and no weight-decay warm-up; it prints what differs. It starts
    from a finished phase one only. With --phase-two-epochs, phase one's phase_two.json
    names the phase two its command started and the phase-one epoch it fine-tunes (written
    when that folder is made): --resume of phase one continues it, or starts phase two
    again where it has no checkpoint or phase one has trained on since.
  - Sampling ("uniform"): patterns uniform over channels (official: each cluster 1/32),
    noise input, r = 0, BN on the statistics of groups of up to 250 samples (the official
    sampler: train mode, batches of 250), n split into equal groups whatever eval.py's
    --batch-size. "clusters" draws stage 1's cluster with its training share (the paper is
    silent); "running-bn" uses BN's running statistics. Seeded (the official is not).
  - bf16 autocast (LPIPS in fp32) and channels_last on CUDA (official: fp32); a checkpoint
    with the optimizer every --save-every epochs (official: weights every 100 epochs).
    CelebA: the standard train partition (162,770 images, as the paper), crop 160 unless
    --crop.
  - Under torchrun (README, "Several GPUs") batch statistics are part of the method: the
    paper trains (and the official sampler normalises) over batches of 256, so with N GPUs
    use --sync-bn. k-means and the patterns are computed once for the whole training set.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import math
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common import arg

EMA_EVERY, EMA_AFTER, EMA_POWER = 10, 100, 2 / 3  # ema_pytorch settings of the official code
SAMPLE_BATCH = 250  # samples sharing BN statistics (official sampler)
# Setting names: the model and its patterns, which phase two always takes from phase one.
FROM_PHASE_ONE = ("dataset", "image_size", "crop", "widths", "active", "latent_dim",
                  "clusters", "pattern_seed", "kmeans_seed")
# Setting values: phase two's own unless typed (official: no shift, no weight-decay
# warm-up, 2000 epochs).
PHASE_TWO_DEFAULTS = {"epochs": 2000, "max_shift": 0, "wd_warmup": 0.0}
# Setting names phase two never inherits: what to fine-tune from, and how to resume.
NOT_INHERITED = ("finetune_from", "finetune_ema", "resume", "schedule_epochs", "phase_two_epochs")
# In phase one's folder: the phase-two run that its own command started, and the phase-one
# epoch that phase two fine-tunes (written when phase two's folder is made).
PHASE_TWO_FILE = "phase_two.json"


@dataclass
class Args:
    dataset: str = arg("cifar10", "data set", choices=common.DATASETS)
    data_root: str = arg("data", "folder of the data set (torchvision downloads into it)")
    image_size: int = arg(32, "image side (32 in the paper, CelebA included)", low=16)
    crop: int = arg(0, "centre crop before resizing; 0: 160 for celeba (Sec. 4), none "
                    "otherwise", low=0)
    widths: list[int] = arg([128, 256, 512, 1024], "channels of the four encoder stages", low=2)
    active: list[int] = arg([1, 4, 16], "active channels after encoder stages 1, 2, 3", low=1)
    latent_dim: int = arg(128, "latent units (256 for CelebA)", low=1)
    clusters: int = arg(32, "k-means clusters sharing out stage 1's channels (1: none)", low=1)
    pattern_seed: int = arg(123, "seed of the patterns (drawn with torch; the official "
                            "draws with numpy's seed 123)")
    kmeans_seed: int = arg(0, "seed of k-means (0: official)")
    max_shift: int = arg(8, "largest horizontal shift in pixels (0: no geometric reg.)", low=0)
    flip: bool = arg(True, "flip images and reverse stage-3 patterns on odd epochs")
    epochs: int = arg(1000, "training epochs (phase two: 2000 unless given)", low=1)
    schedule_epochs: int = arg(0, "epochs the weight-decay warm-up is a fraction of; 0: "
                               "--epochs (a run resumed with more --epochs keeps its own)", low=0)
    batch_size: int = arg(256, "batch size", low=1)
    lr: float = arg(2e-3, "AdamW learning rate", low=0)
    mlp_lr: float = arg(-1.0, "learning rate of the shift MLP; -1: --lr / 10 (official)",
                        low=-1)
    lr_drops: list[int] = arg([], "epochs from which the rates are x0.1 (CelebA: 500 600)", low=1)
    weight_decay: float = arg(0.08, "AdamW weight decay after the warm-up", low=0)
    wd_warmup: float = arg(0.4, "fraction of the epochs weight decay rises from 0 over", low=0)
    ema_decay: float = arg(0.99995, "cap of the EMA decay (reached after ~2.8M steps)", low=0)
    lpips_size: int = arg(128, "smaller images are upsampled to this side for LPIPS", low=32)
    finetune_from: str = arg("", "phase two: continue from this phase-one run folder (its "
                             "settings, 2000 epochs, no shift, unless typed)")
    finetune_ema: bool = arg(False, "phase two starts from the EMA weights, not the online")
    phase_two_epochs: int = arg(0, "then run phase two for this many epochs in the same "
                                "command (2000: the paper's protocol); 0: phase one only", low=0)
    save_every: int = arg(5, "epochs between checkpoints and sample grids", low=1)
    seed: int = arg(0, "seed of initialisation, batch order, shifts and noise")
    device: str = arg("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    compile: bool = arg(False, "torch.compile the model (worth it on CUDA only)")
    sync_bn: bool = arg(False, "torchrun: batch-norm statistics over all processes (SyncBatchNorm)")
    out_dir: str = arg("runs", "parent folder of the run folders")
    resume: str = arg("", "run folder to continue from its last checkpoint")


# -- Ciphering: one fixed dropout pattern per training image, stage 1 by cluster ---------
def pattern_count(widths, active) -> int:
    """Distinct patterns: prod_s C(widths_s, active_s), 1.88e40 at the defaults."""
    return math.prod(math.comb(c, k) for c, k in zip(widths, active))


def random_subsets(n: int, size: int, k: int, g: torch.Generator) -> torch.Tensor:
    """n uniform random k-subsets of range(size), each sorted: [n, k]."""
    return torch.rand(n, size, generator=g).topk(k, 1).indices.sort(1).values


def draw_patterns(labels: torch.Tensor, args: Args, g: torch.Generator) -> torch.Tensor:
    """Patterns [n, sum(active)]: active channel indices of stages 1, 2, 3 side by side.
    Stage 1's lie in the block of the image's cluster; stages 2 and 3 are uniform."""
    block = args.widths[0] // args.clusters  # stage 1's channels per cluster
    # [n, 1] block starts + [n, active_1] offsets in the block -> [n, active_1] channels
    first = labels[:, None] * block + random_subsets(len(labels), block, args.active[0], g)
    rest = [random_subsets(len(labels), c, k, g) for c, k in zip(args.widths[1:3], args.active[1:])]
    return torch.cat([first, *rest], 1)  # [n, active_1 + active_2 + active_3]


def make_patterns(labels: torch.Tensor, args: Args) -> torch.Tensor:
    """One distinct pattern per training image (duplicates redrawn), from --pattern-seed."""
    largest = torch.bincount(labels).max().item()
    per_cluster = pattern_count([args.widths[0] // args.clusters, *args.widths[1:3]], args.active)
    if per_cluster < largest:
        raise common.UserError(f"a cluster of {largest} images needs as many patterns, but "
                               f"--widths/--active/--clusters allow {per_cluster}")
    g = torch.Generator().manual_seed(args.pattern_seed)
    patterns, n = draw_patterns(labels, args, g), len(labels)
    while True:
        # Number the distinct patterns (inverse[i]: image i's); the first image holding each
        # keeps it, every later image with the same pattern draws a new one.
        _, inverse = torch.unique(patterns, dim=0, return_inverse=True)
        first_holder = torch.full((n,), n).scatter_reduce(0, inverse, torch.arange(n), "amin")
        repeated = torch.arange(n) != first_holder[inverse]
        if not repeated.any():
            return patterns
        patterns[repeated] = draw_patterns(labels[repeated], args, g)


def cluster_images(images: torch.Tensor, clusters: int, seed: int) -> torch.Tensor:
    """k-means labels [N] of the images: standardised pixels, PCA to 95% of the variance."""
    if clusters == 1:
        return torch.zeros(len(images), dtype=torch.long)
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import StandardScaler

    print(f"k-means: {clusters} clusters of {len(images)} images (PCA, then 10 restarts) ...")
    pixels = StandardScaler().fit_transform(images.flatten(1).double().cpu().numpy())
    reduced = PCA(0.95, svd_solver="full").fit_transform(pixels)
    labels = KMeans(clusters, n_init=10, random_state=seed).fit_predict(reduced)
    return torch.as_tensor(labels, dtype=torch.long)


def masks_of(patterns: torch.Tensor, args: Args) -> list[torch.Tensor]:
    """0/1 channel masks [B, widths_s] of stages 1, 2, 3 from patterns [B, sum(active)]."""
    return [torch.zeros(len(p), c, device=p.device).scatter_(1, p, 1.0)
            for p, c in zip(patterns.long().split(args.active, 1), args.widths)]


def flips(args: Args, epoch: int) -> bool:
    """The official flip schedule: odd epochs train on flipped images."""
    return args.flip and epoch % 2 == 1


def flip_patterns(patterns: torch.Tensor, args: Args) -> torch.Tensor:
    """The pattern of a flipped image: stage 3's channels in reverse order (official)."""
    stage3 = patterns[:, -args.active[2]:]
    return torch.cat([patterns[:, :-args.active[2]], args.widths[2] - 1 - stage3], 1)


# -- Network (official architecture): large encoder of the masked noise, small decoder ---
def conv_bn(conv: nn.Module, act: bool = True) -> list[nn.Module]:
    return [conv, nn.BatchNorm2d(conv.out_channels)] + ([nn.LeakyReLU()] if act else [])


class ResBlock(nn.Module):
    """x + BN(conv3(LReLU(BN(conv3(x))))), no activation after the sum."""

    def __init__(self, ch: int):
        super().__init__()
        self.body = nn.Sequential(*conv_bn(nn.Conv2d(ch, ch, 3, padding=1)),
                                  *conv_bn(nn.Conv2d(ch, ch, 3, padding=1), act=False))

    def forward(self, x):
        return x + self.body(x)


class Bottleneck(ResBlock):
    """x + BN(1x1(LReLU(BN(3x3(LReLU(BN(1x1(x)))))))), `inner` channels wide inside."""

    def __init__(self, ch: int, inner: int):
        nn.Module.__init__(self)
        self.body = nn.Sequential(*conv_bn(nn.Conv2d(ch, inner, 1)),
                                  *conv_bn(nn.Conv2d(inner, inner, 3, padding=1)),
                                  *conv_bn(nn.Conv2d(inner, ch, 1), act=False))


def sinusoidal(position: torch.Tensor, dim: int) -> torch.Tensor:
    """[B] -> [B, dim]: sin and cos of position * 10000^(-k / (dim/2 - 1)), k < dim/2."""
    k = torch.arange(dim // 2, device=position.device)
    angles = position.float()[:, None] * torch.exp(-math.log(10000) * k / (dim // 2 - 1))
    return torch.cat([angles.sin(), angles.cos()], 1)


class DecipheringAE(nn.Module):
    def __init__(self, channels: int, image_size: int, widths, latent_dim: int):
        super().__init__()
        w1, w2, w3, w4 = widths
        self.bottleneck_side, self.w4, self.latent_dim = image_size // 16, w4, latent_dim
        self.encoder_stages = nn.ModuleList(nn.Sequential(
            *conv_bn(nn.Conv2d(cin, cout, 2, stride=2)),
            *conv_bn(nn.Conv2d(cout, cout, 3, padding=1))) for cin, cout in
            zip([channels, w1, w2, w3], widths))
        self.to_latent = nn.Linear(w4 * self.bottleneck_side ** 2, latent_dim)
        # The shift r: a sinusoidal embedding of latent_dim, an MLP 4x as wide, latent_dim out.
        self.shift_mlp = nn.Sequential(nn.Linear(latent_dim, 4 * latent_dim), nn.LeakyReLU(),
                                       nn.Linear(4 * latent_dim, latent_dim))
        self.from_latent = nn.Linear(2 * latent_dim, w4 * self.bottleneck_side ** 2)
        layers = [nn.BatchNorm2d(w4), nn.LeakyReLU()]
        for cin, cout in [(w4, w3), (w3, w2), (w2, w1)]:
            # Upsampling by a transposed conv in groups of 128 input channels, then two
            # bottleneck blocks 64 channels wide (at most cout): a small decoder (Sec. 3).
            layers += conv_bn(nn.ConvTranspose2d(cin, cout, 2, stride=2, groups=max(1, cin // 128)))
            inner = cout // max(1, cout // 64)
            layers += [Bottleneck(cout, inner), Bottleneck(cout, inner)]
        layers += conv_bn(nn.ConvTranspose2d(w1, w1 // 2, 2, stride=2))
        layers += [ResBlock(w1 // 2), ResBlock(w1 // 2), nn.Conv2d(w1 // 2, channels, 3, padding=1)]
        self.decoder = nn.Sequential(*layers)

    def encode(self, noise, masks):  # noise [B, C, S, S]; masks [B, w1], [B, w2], [B, w3]
        h = noise
        for stage, mask in zip(self.encoder_stages, [*masks, None]):
            h = stage(h)  # [B, w_s, S / 2^s, S / 2^s]
            if mask is not None:  # channel-wise dropout with the image's fixed pattern
                h = h * mask.to(h.dtype)[:, :, None, None]
        return self.to_latent(h.flatten(1))  # [B, latent]

    def decode(self, latent, position):  # latent [B, latent], position [B] in [0, 100]
        shift = self.shift_mlp(sinusoidal(position, self.latent_dim))  # [B, latent]
        h = self.from_latent(torch.cat([latent, shift.to(latent.dtype)], 1))
        side = self.bottleneck_side
        return self.decoder(h.view(-1, self.w4, side, side))  # [B, C, S, S]

    def forward(self, noise, masks, position):
        return self.decode(self.encode(noise, masks), position)


# -- Geometric regularisation, loss, schedules, EMA --------------------------------------
def shift_images(x: torch.Tensor, shifts: torch.Tensor, max_shift: int) -> torch.Tensor:
    """T(x, r): each image's content moved r columns right (left for r < 0), the uncovered
    columns filled by reflection (edge not repeated); the whole batch at once."""
    if max_shift == 0:
        return x
    padded = F.pad(x, (max_shift, max_shift, 0, 0), mode="reflect")  # [B, C, H, W + 2R]
    columns = torch.arange(x.shape[-1], device=x.device) - shifts[:, None] + max_shift  # [B, W]
    return padded.gather(3, columns[:, None, None, :].expand(x.shape))


def shift_position(shifts: torch.Tensor, max_shift: int) -> torch.Tensor:
    """What the MLP reads: r in [-R, R] -> 50 + 50 r / R in [0, 100]; 50 when R = 0."""
    return 50 + 50 * shifts.float() / max(max_shift, 1)


def load_lpips(device) -> nn.Module:
    """LPIPS v0.1 on AlexNet (the `lpips` package; frozen, eval mode)."""
    import lpips
    import torchvision

    url = torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url
    try:
        with warnings.catch_warnings():  # lpips uses torchvision's deprecated `pretrained`
            warnings.simplefilter("ignore")
            net = lpips.LPIPS(net="alex", verbose=False)
    except (OSError, RuntimeError) as error:
        raise common.missing_weights("the AlexNet weights for LPIPS", url, error) from None
    return net.to(device).eval().requires_grad_(False)


def lpips_loss(lpips_net, output, target, size: int) -> torch.Tensor:
    """d of Eq. (2): LPIPS of the images, upsampled to size x size where smaller, mean over
    the batch (a grey image is broadcast to RGB by LPIPS's own scaling layer)."""
    def up(x):  # the official code upsamples images below 128 px only; fp32
        small = x.shape[-1] < size
        x = x.float()
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False) if small else x
    with torch.autocast(output.device.type, enabled=False):  # fp32 under bf16 autocast too
        return lpips_net(up(output), up(target)).mean()


def training_batch(images: torch.Tensor, patterns: torch.Tensor, args: Args, epoch: int):
    """The inputs and target of Eq. (2) for uint8 images [B, C, S, S] and their patterns
    [B, sum(active)]: (noise input, masks of stages 1-3, the MLP's position, T(x_i, r))."""
    x = images.float().div_(127.5).sub_(1)  # [B, C, S, S] in [-1, 1], LPIPS's range
    if flips(args, epoch):  # the image flipped, its stage-3 pattern reversed
        x, patterns = x.flip(3), flip_patterns(patterns, args)
    x = x.contiguous(memory_format=common.memory_format(x.device))  # channels_last on CUDA
    shifts = torch.randint(-args.max_shift, args.max_shift + 1, (len(x),), device=x.device)
    target = shift_images(x, shifts, args.max_shift)  # T(x_i, r)
    noise = torch.randn_like(x)  # the encoder's input
    return noise, masks_of(patterns, args), shift_position(shifts, args.max_shift), target


def mlp_rate(args: Args) -> float:
    """The shift MLP's learning rate: --mlp-lr, or the official --lr / 10."""
    return args.mlp_lr if args.mlp_lr >= 0 else args.lr / 10


def weight_decay(args: Args, epoch: int) -> float:
    """0 at epoch 0, rising linearly to --weight-decay at epoch int(wd_warmup E), then flat."""
    warmup = int(args.wd_warmup * (args.schedule_epochs or args.epochs))
    return args.weight_decay * min(epoch / warmup, 1.0) if warmup else args.weight_decay


def ema_decay(step: int, cap: float) -> float:
    """Decay of the EMA update after optimizer step `step` (0-based): ema_pytorch's warm-up
    1 - (1 + t)^(-2/3), t = step - 100, capped; 0 (a copy) up to step 100."""
    t = max(step - EMA_AFTER, 0)
    return min(1 - (1 + t) ** -EMA_POWER, cap)


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, step: int, cap: float):
    """Every 10th step: ema = decay ema + (1 - decay) model, weights and float buffers. As
    ema_pytorch 0.2.3, a copy up to step 100 and once more at the first update after it
    (step 110: its `initted` flag), then the running average."""
    if step % EMA_EVERY == 0:
        decay = 0.0 if step <= EMA_AFTER + EMA_EVERY else ema_decay(step, cap)
        for average, current in zip(ema.state_dict().values(), model.state_dict().values()):
            if average.is_floating_point():
                average.lerp_(current, 1 - decay)
            else:
                average.copy_(current)


# -- Training ----------------------------------------------------------------------------
def check(args: Args):
    """Settings argparse cannot check alone, each a one-line error."""
    for failed, message in [
            (len(args.widths) != 4 or len(args.active) != 3, "--widths takes 4 values, --active 3"),
            (args.image_size % 16, "--image-size must be a multiple of 16"),
            (args.widths[0] % args.clusters or args.active[0] > args.widths[0] // args.clusters,
             f"--clusters {args.clusters} must cut stage 1 into blocks of --active[0] or more"),
            (any(k > c for k, c in zip(args.active, args.widths)), "--active exceeds --widths"),
            (args.max_shift >= args.image_size, "--max-shift must be below the image size"),
            (args.latent_dim % 2, "--latent-dim must be even: the shift's sines and cosines")]:
        if failed:
            raise common.UserError(message)


def phase_two_args(args: Args, given: set) -> tuple[Args, dict]:
    """--finetune-from: every setting of phase one but those typed now; the model and its
    patterns (FROM_PHASE_ONE) always phase one's; 2000 epochs, no shift and no weight-decay
    warm-up (PHASE_TWO_DEFAULTS) unless typed. Says which settings differ from phase one's."""
    if args.phase_two_epochs:
        raise common.UserError("--phase-two-epochs runs phase two after phase one; from "
                               "--finetune-from, give phase two's length as --epochs")
    phase_one = common.load_checkpoint(args.finetune_from, method="deciphering")
    if phase_one["epoch"] + 1 < phase_one["args"]["epochs"]:
        raise common.UserError(f"{args.finetune_from} stopped at epoch {phase_one['epoch'] + 1} "
                               f"of its {phase_one['args']['epochs']}; phase two fine-tunes a "
                               f"finished phase one: --resume it first")
    stored = dataclasses.asdict(Args(**phase_one["args"]))
    ignored = sorted(k for k in FROM_PHASE_ONE if k in given and getattr(args, k) != stored[k])
    if ignored:
        print(f"phase two: ignoring {common.flags(ignored)}; the phase-one model keeps its own")
    values = {k: v for k, v in stored.items() if k not in NOT_INHERITED}
    values.update({k: getattr(args, k) for k in given if k not in FROM_PHASE_ONE})
    values.update({k: v for k, v in PHASE_TWO_DEFAULTS.items() if k not in given})
    values.update({k: getattr(args, k) for k in NOT_INHERITED})
    values["finetune_from"] = str(Path(args.finetune_from).resolve())  # eval.py, any folder
    changes = [f"{k} {stored[k]} -> {values[k]}" for k in values
               if k not in NOT_INHERITED and values[k] != stored[k]]
    print(f"phase two from {args.finetune_from}: " + (", ".join(changes) or "no changes"))
    return Args(**values), phase_one


@dataclass
class Training:
    """Everything the loop needs, set up by set_up()."""
    args: Args
    folder: Path
    start_epoch: int
    device: torch.device
    images: torch.Tensor  # uint8 [N, C, S, S] on the device (this process's shard)
    patterns: torch.Tensor  # every training image's pattern [N_all, sum(active)], CPU
    labels: torch.Tensor  # every training image's cluster [N_all], CPU
    model: nn.Module
    ema: nn.Module
    optimizer: torch.optim.Optimizer
    wrapped: nn.Module  # what the step calls: the model in DDP (torchrun), compiled
    lpips_net: nn.Module
    first_images: torch.Tensor  # 32 training images, uint8, CPU, for reconstructions.png


def set_up(args: Args, given: set, link: Path | None = None) -> Training:
    """Phase two's settings, --resume, data, patterns (k-means once), model, AdamW (the
    MLP with its own rate), LPIPS, EMA (phase two: a new one, official) and the run folder;
    `link`: phase one's record of the phase two its command starts, written at once."""
    phase_one = None
    if args.finetune_from and not args.resume:
        args, phase_one = phase_two_args(args, given)
    if args.dataset == "celeba" and not args.crop:
        args = dataclasses.replace(args, crop=160)  # Sec. 4: the central 160 x 160 pixels
    args, checkpoint, device, train_images, _ = common.start(args, given, "deciphering")
    check(args)
    all_images = common.gather_rows(train_images)  # every process's shard (torchrun)
    n, channels = len(all_images), train_images.shape[1]
    model = DecipheringAE(channels, args.image_size, args.widths, args.latent_dim).to(device)
    model = model.to(memory_format=common.memory_format(device))  # channels_last on CUDA
    if checkpoint or phase_one:  # the run's own patterns: one per training image, fixed
        labels, patterns = ((checkpoint or phase_one)[k].long() for k in ("labels", "patterns"))
        if len(patterns) != n:
            raise common.UserError(f"the run has patterns for {len(patterns)} images but the "
                                   f"data set has {n}; point --data-root at the same data")
    else:
        labels = None  # k-means once (by rank 0 under torchrun), then shared
        if common.is_main():
            labels = cluster_images(all_images, args.clusters, args.kmeans_seed)
        labels = common.broadcast(labels)
        patterns = make_patterns(labels, args)
    if phase_one and not checkpoint:
        model.load_state_dict(phase_one["ema" if args.finetune_ema else "model"])
    count = pattern_count(args.widths, args.active)
    print(f"{n} images, each with its own of {count:,} (~{float(count):.3g}) possible patterns")
    others = [p for name, p in model.named_parameters() if not name.startswith("shift_mlp.")]
    optimizer = torch.optim.AdamW([{"params": others},
                                   {"params": list(model.shift_mlp.parameters())}], lr=args.lr)
    lpips_net = load_lpips(device)  # before open_run restores the RNG: building it draws
    method = "deciphering-finetune" if args.finetune_from else "deciphering"
    folder, start_epoch = common.open_run(method, args, checkpoint, model, optimizer)
    if link is not None and common.is_main():  # before phase two's first checkpoint
        record = {"phase_two": str(folder.resolve()), "from_epoch": phase_one["epoch"]}
        tmp = link.with_name(f".{link.name}.tmp")
        tmp.write_text(json.dumps(record))
        tmp.replace(link)
    ema = copy.deepcopy(model).requires_grad_(False)
    if checkpoint:
        ema.load_state_dict(checkpoint["ema"])
    return Training(args, folder, start_epoch, device, train_images, patterns, labels, model,
                    ema, optimizer, common.parallel(model, args.compile, args.sync_bn),
                    lpips_net, all_images[:32].cpu())


def train(args: Args, given: set, link: Path | None = None) -> Path:
    """Eq. (2) by AdamW with LPIPS, each image deciphered from its own pattern; returns the
    run folder. Phase two (--finetune-from) is the same loop without the shift."""
    training = set_up(args, given, link)
    args, device, folder, images = training.args, training.device, training.folder, training.images
    model, ema, optimizer = training.model, training.ema, training.optimizer
    patterns = common.shard(training.patterns).to(device)  # those of this process's images
    fixed = torch.Generator().manual_seed(args.seed)  # grids comparable across epochs
    grid_patterns = draw_patterns(torch.randint(args.clusters, (64,), generator=fixed), args, fixed)
    grid_noise = torch.randn(64, images.shape[1], args.image_size, args.image_size, generator=fixed)
    for epoch in range(training.start_epoch, args.epochs):
        lr_scale, wd = 0.1 ** sum(epoch >= e for e in args.lr_drops), weight_decay(args, epoch)
        for group, lr in zip(optimizer.param_groups, (args.lr, mlp_rate(args))):
            group["lr"], group["weight_decay"] = lr * lr_scale, wd
        model.train()
        steps = common.Epoch(folder, args.seed, epoch, args.batch_size, total=args.epochs)
        for step, index in enumerate(steps.orders(len(images), device)):  # [B] training images
            noise, masks, position, target = training_batch(
                images[index], patterns[index], args, epoch)
            with common.autocast(device):
                output = training.wrapped(noise, masks, position)  # g_theta(z_i, r)
                loss = lpips_loss(training.lpips_net, output, target, args.lpips_size)  # Eq. (2)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            update_ema(ema, model, epoch * steps.total + step, args.ema_decay)
            steps.add(loss=loss)
        steps.end(lr=args.lr * lr_scale, weight_decay=wd)  # the epoch's mean LPIPS, in log.jsonl
        if (epoch + 1) % args.save_every == 0 or epoch + 1 == args.epochs:
            common.save_epoch(folder, "deciphering", args, epoch, model, optimizer,
                              (images.shape[1], args.image_size), ema=ema.state_dict(),
                              patterns=training.patterns.short(), labels=training.labels)
            # 64 fixed new patterns, and 32 training images each with its own decoded
            common.save_grid(generate(ema, grid_patterns, grid_noise, args),
                             folder / "samples.png")
            decoded = generate(ema, training.patterns[:32], grid_noise[:32], args)
            common.save_reconstructions(training.first_images / 255, decoded.cpu(),
                                        folder / "reconstructions.png")
    print(f"done: grids, log.jsonl and checkpoint in {folder}")
    return folder


# -- Sampling: new patterns decoded; the functions eval.py calls -------------------------
@torch.no_grad()
def generate(model, patterns, noise, args: Args, running_bn: bool = False) -> torch.Tensor:
    """Images [n, C, S, S] in [0, 1] decoded from patterns and input noise, shift 0. Unless
    running_bn, BN normalises groups of at most 250 (the official sampler's batches; the n
    split as evenly as can be, so no group is tiny) with their own statistics, in a copy of
    the model: the images depend on the patterns and noise, never on a caller's chunks."""
    device = next(model.parameters()).device
    model = copy.deepcopy(model).train(not running_bn)  # the caller's model stays as it is
    groups = math.ceil(len(patterns) / SAMPLE_BATCH)  # as equal as can be, none above 250
    images = []
    for p, z in zip(patterns.tensor_split(groups), noise.tensor_split(groups)):
        position = torch.full((len(p),), 50.0, device=device)
        with common.autocast(device):
            images.append(model(z.to(device), masks_of(p.to(device), args), position).float())
    return (torch.cat(images).clamp(-1, 1) + 1) / 2


def sample(run: common.Run, n: int, sampler: str = "uniform", seed: int = 0) -> torch.Tensor:
    """n new images [n, C, S, S] in [0, 1] from fresh patterns: stage-1 cluster drawn with
    the sampler's probabilities, channels uniform within it and in stages 2 and 3."""
    if sampler not in run.samplers:
        raise common.UserError(f"a deciphering run has no '{sampler}' sampler (it has "
                               f"{', '.join(run.samplers)})")
    args, g = Args(**run.args), torch.Generator().manual_seed(seed)
    labels = torch.multinomial(run.samplers[sampler], n, replacement=True, generator=g)
    patterns = draw_patterns(labels, args, g)
    channels = run.model.decoder[-1].out_channels
    noise = torch.randn(n, channels, args.image_size, args.image_size, generator=g)
    return generate(run.model, patterns, noise, args, running_bn=sampler == "running-bn")


def load_run(run_dir: str, device: str = "cpu") -> common.Run:
    """A trained run: its EMA model on `device`, and the stage-1 cluster probabilities of
    each sampler: uniform, or the clusters' shares of the training set."""
    checkpoint = common.load_checkpoint(run_dir, method="deciphering")
    args, channels = Args(**checkpoint["args"]), checkpoint["data_shape"][0]
    model = DecipheringAE(channels, args.image_size, args.widths, args.latent_dim)
    model.load_state_dict(checkpoint["ema"])
    uniform = torch.full((args.clusters,), 1.0 / args.clusters)
    labels = checkpoint["labels"].long()  # with one cluster, "clusters" is "uniform"
    shares = torch.bincount(labels, minlength=args.clusters) / len(labels)
    samplers = {"uniform": uniform, "running-bn": uniform, "clusters": shares}
    return common.Run(model.to(device).eval(), checkpoint["args"], samplers, Path(run_dir))


def main(args: Args, given: set):
    """Phase one or two; with --phase-two-epochs N, phase one and then phase two (beside
    it), the paper's whole protocol in one command. --resume continues either phase; that
    of phase one continues the phase two its command started, where phase two has a
    checkpoint and fine-tunes the phase one there is now, else starts it (again)."""
    folder = train(args, given)
    done = common.broadcast({k: v for k, v in common.load_checkpoint(folder).items()
                             if k in ("args", "epoch")} if common.is_main() else None)
    if done["args"]["finetune_from"]:
        return
    if not done["args"]["phase_two_epochs"]:
        print(f"phase one is done; Table 1 (FID 42.73) needs phase two, 2000 epochs without "
              f"the shift:\n    python deciphering.py --finetune-from {folder}")
        return
    link = Path(folder) / PHASE_TWO_FILE
    typed = {k: getattr(args, k) for k in ("device", "compile") if k in given}  # go on too
    epochs = {"epochs": done["args"]["phase_two_epochs"]}
    record = json.loads(link.read_text()) if link.is_file() else None
    if record and record["from_epoch"] == done["epoch"] and \
            (Path(record["phase_two"]) / common.CHECKPOINT).is_file():
        train(Args(resume=record["phase_two"], **epochs, **typed), {"resume", "epochs", *typed})
        return
    if record:
        print(f"starting phase two again: {record['phase_two']} "
              + ("has no checkpoint" if record["from_epoch"] == done["epoch"] else
                 f"fine-tunes phase one's epoch {record['from_epoch'] + 1}, not its last"))
    train(Args(finetune_from=str(folder), **epochs, **typed), {"finetune_from", "epochs", *typed},
          link)


# -- The paper's figures, which eval.py prints beside ours -----------------------------
# The paper's FIDs of the `uniform` sampler. After phase one alone: Table 2, by clusters
# (PAPER_KEY; test split, which the text compares it with). After both phases (phase one
# read from --finetune-from's args.json): Table 1 by reference split, and Sec. 4's 47.69
# (test) when phase one had no shift: BOTH_PHASES, by phase one's max_shift and the split.
PAPER_KEY = ("clusters",)
PAPER_FID = {(1,): {"uniform": 48.72}, (8,): {"uniform": 42.83}, (16,): {"uniform": 45.88},
             (32,): {"uniform": 44.15}, (64,): {"uniform": 44.39}}
BOTH_PHASES = {(8, "train"): 39.02, (8, "test"): 42.73, (0, "test"): 47.69}
# Each figure above: 50,000 samples (the official sampler); eval.py prints it beside ours
# only for as many samples, against the whole split.
PAPER_SAMPLES = 50_000


def paper_settings(key: tuple = (), phase_two: bool = False, **settings) -> dict:
    """Every setting that matters of the paper's run (Args' defaults, the key's, and phase
    two's own with phase_two), whatever the run keeps for itself (NOT_INHERITED)."""
    paper = {**dataclasses.asdict(Args()), **dict(zip(PAPER_KEY, key)),
             **(PHASE_TWO_DEFAULTS if phase_two else {}), **settings}
    return {k: v for k, v in paper.items() if k not in (*NOT_INHERITED, "save_every")}


def paper_fid(args: dict, ref: str = "test") -> dict:
    """The paper's FID of the `uniform` sampler for this run, only where every setting that
    matters is the paper's (PAPER_FID, BOTH_PHASES)."""
    if not args["finetune_from"]:
        return common.paper_row(args, ref, PAPER_FID, PAPER_KEY, paper_settings)
    phase_one_file = Path(args["finetune_from"]) / "args.json"
    if common.off_paper(args, paper_settings(phase_two=True)):
        return {}
    if not phase_one_file.is_file():
        print(f"no paper figure: phase one's {phase_one_file} is not there to check its settings")
        return {}
    phase_one = json.loads(phase_one_file.read_text())
    key = (phase_one["max_shift"], ref)
    shift = paper_settings(max_shift=phase_one["max_shift"])
    found = key in BOTH_PHASES and not common.off_paper(phase_one, shift)
    return {"uniform": BOTH_PHASES[key]} if found else {}


if __name__ == "__main__":
    common.cli(main, Args, __doc__)
