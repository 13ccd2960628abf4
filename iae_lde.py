"""Incremental-latent autoencoder + latent density estimator (IAE + LDE, Yoo et al. 2020).

From common.py: fit_samplers (the ex-post samplers beside the LDE), the data, its batches
and encode / sample / decode; the run machinery of its part two.
Paper: "Unprioritized autoencoder" (ICIP 2020; arXiv 1902.04294, "Density Estimation and
Incremental Learning of Latent Vector for Generative Autoencoders"), J. Yoo, H. Lee and
N. Kwak, https://arxiv.org/abs/1902.04294; code https://github.com/yoojy31/unpriortized-autoencoder

Stage one trains a deterministic, fully convolutional autoencoder whose code grows: the
decoder sees only the first a_t code dimensions, the rest multiplied by zero, and a_t rises
linearly to all d over W epochs (Sec. 3.4), so that the first dimensions learn the most
salient factors; the loss is pixel MSE plus a small perceptual loss (Eq. 5). Stage two
fits an autoregressive density to the frozen encoder's codes (Sec. 3.3): each factor a
mixture of K Gaussians from dilated causal 1-D convolutions over the code (Fig. 4), sampled
one dimension at a time and decoded. It is the sampler `lde` beside the ex-post N(0, I),
MVG and GMM, of this run or (--fit-lde) of any.

Key equations:
    z = E(x) * m_t,  m_t = (1 .. 1, 0 .. 0) with a_t = min(d, int(d e_t / W + 1)) ones,
        e_t the fractional epoch; no mask after training                       Sec. 3.4
    L_AE = MSE(x, D(z)) + beta * L_Perc(x, D(z))                               Eq. (5)
        L_Perc = 0.5 sum_l MSE(phi_l(x), phi_l(x_hat)), VGG19 relu1_1, relu2_1, conv3_1
    p(z) = prod_i p(z_i | z_<i)                                                Eq. (2)
    p(z_i | z_<i) = sum_k pi_ik N(z_i; mu_ik, sigma_ik^2)                     Eq. (3)
        pi = softmax, mu linear, sigma = exp, all from h_i, which sees z_<i only (Fig. 4)
    L_z = -(1/d) sum_i log p(z_i | z_<i)                                       Eq. (4)

Reproduce (every per-data-set setting defaults to the official scripts', PER_DATASET):
    MNIST, Table 2 (Parzen log-likelihood; paper 326 +- 2 nats):
        python iae_lde.py --dataset mnist && python eval.py runs/iae_lde-mnist-<time> --parzen
    CIFAR-10: --dataset cifar10; CelebA 64x64 (Fig. 5, 6): --dataset celeba --data-root DATA
    AE + LDE (no incremental learning): add --warmup-epochs 0
    The LDE on another run:  python iae_lde.py --fit-lde runs/dae-cifar10-<time>

Deviations and choices (where the paper is silent we follow the official code, [C]):
  - Autoencoder [C]: DCGAN-style, no fully connected layer: channels 64, 128, 256(, 512) to
    a 4x4 map, a conv to the 1x1 code, the decoder its mirror (first ConvT without BN or
    activation); orthogonal conv init, zero biases, BN weights N(0, 0.02); tanh on [-1, 1]
    (ae00: CIFAR-10, CelebA) or sigmoid on [0, 1] (ae02: MNIST, digits), the MSE in that range.
  - MNIST is 32x32 (zero-padded): one more stride-2 layer, a 4x4 last kernel (official 28 px:
    7x7); Parzen cuts the border off. Its last 5,000 training images choose the Parzen width
    (official: 55k / 5k after an unseeded shuffle); digits' last 150.
  - Per data set [C]: d, W, beta, K, output and epochs of the official scripts; CIFAR-10's
    had no perceptual loss and K = 50 (train_armdn.sh, 53753c9; the paper: beta 0.1, K 30).
    digits takes MNIST's, folder CIFAR-10's. CelebA: 140 centre crop to 64.
  - Perceptual loss [C]: conv3_1 before its ReLU (the paper: relu3_1), ImageNet
    normalisation, grey repeated to RGB; torchvision's VGG19 file, first 11 layers.
  - LDE [C]: ceil(log2 d) blocks Conv1d(kernel 2, dilation 2^i) -> BatchNorm1d ->
    LeakyReLU(0.2) of 16, 32, 64, .. channels (armdn00's list ends at 4096, d <= 512; ours
    goes on), a 1x1 conv to 3K, N(0, 0.02) init; the head read as (pi, mu, sigma), the
    paper's order (official: (mu, sigma, pi), alike at init). Training-mode BN pools over all
    positions, the zero pad included [C]; eval mode is exactly causal. logsumexp, not
    log(density + 1e-12); codes encoded once (eval mode, no flips); sampling at temperature 1.
  - The LDE kept is the epoch with the lowest NLL of held-out codes: those of the run's
    --holdout images where it has them (MNIST: no training code is lost), else of a random
    tenth (--lde-holdout) of the training codes, left out of the fit. The official code fits
    every training code and keeps no epoch by validation: it logs a validation NLL and keeps
    snapshots at fixed epochs (MNIST 50, 90, 120, 150). On CIFAR-10 codes (README) the
    selection keeps epoch 36's, 0.08 nats per test code; the 200th epoch's scored 0.63.
  - torchrun: every process has the same a_t; stage two (also --fit-lde) is one process.
"""
from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torchvision.transforms import Normalize

import common
from common import arg

# The official scripts' settings per data set [C]; main() applies them to every flag not typed.
PER_DATASET = {
    "mnist": dict(latent_dim=8, warmup_epochs=96, perc_weight=0.0, lde_components=30,
                  output="sigmoid", holdout=5000, epochs=390),
    "cifar10": dict(latent_dim=256, warmup_epochs=128, perc_weight=0.0, lde_components=50,
                    output="tanh", holdout=0, epochs=250),
    "celeba": dict(latent_dim=100, warmup_epochs=100, perc_weight=0.1, lde_components=30,
                   output="tanh", holdout=0, epochs=150)}
PER_DATASET.update(digits={**PER_DATASET["mnist"], "holdout": 150}, folder=PER_DATASET["cifar10"])
LDE_SETTINGS = ("lde_components", "lde_epochs", "lde_batch_size", "lde_lr", "lde_lr_drops",
                "lde_holdout")


@dataclasses.dataclass
class Args:
    dataset: str = arg("cifar10", "data set", choices=common.DATASETS)
    data_root: str = arg("data", "folder of the data set (torchvision downloads into it)")
    image_size: int = arg(0, "image side; 0: the data set's own (64 for celeba, else 32)", low=0)
    crop: int = arg(0, "centre crop before resizing; 0: 140 for celeba, none otherwise", low=0)
    flip: bool = arg(False, "random horizontal flips (the official code uses none)")
    filters: int = arg(64, "width of the first conv; doubles per stride-2 layer", low=1)
    # The next seven show CIFAR-10's defaults; other data sets get their own (PER_DATASET).
    latent_dim: int = arg(256, "code size d (MNIST 8, CelebA 100)", low=1)
    warmup_epochs: float = arg(128, "W: epochs to all d dims active, 0: plain AE (MNIST 96)", low=0)
    perc_weight: float = arg(0.0, "beta of Eq. (5) (CelebA 0.1)", low=0)
    output: str = arg("tanh", "decoder output (MNIST: sigmoid)", choices=("tanh", "sigmoid"))
    holdout: int = arg(0, "last training images left out for the Parzen width (MNIST 5000)", low=0)
    epochs: int = arg(250, "autoencoder epochs (MNIST 390, CelebA 150)", low=1)
    lde_components: int = arg(50, "K of the LDE (MNIST, CelebA 30)", low=1)
    batch_size: int = arg(128, "autoencoder batch size", low=1)
    lr: float = arg(1e-3, "Adam learning rate of the autoencoder", low=0)
    lr_drops: list[int] = arg([20, 50, 100, 200], "epochs at which the lr halves", low=0)
    lde_epochs: int = arg(200, "LDE epochs", low=1)
    lde_batch_size: int = arg(128, "LDE batch size", low=1)
    lde_lr: float = arg(2e-4, "Adam learning rate of the LDE", low=0)
    lde_lr_drops: list[int] = arg([15, 35, 60, 100], "epochs at which the LDE lr halves", low=0)
    lde_holdout: float = arg(0.1, "share of codes held out to pick the LDE epoch (0: last)", low=0)
    fit_lde: str = arg("", "only stage two: fit the LDE on the codes of this run (any method)")
    gmm_components: int = arg(10, "components of the ex-post GMM", low=1)
    seed: int = arg(0, "seed of initialisation, batch order and samplers")
    device: str = arg("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    compile: bool = arg(False, "torch.compile the autoencoder (worth it on CUDA only)")
    sync_bn: bool = arg(False, "torchrun: batch-norm statistics over all processes (SyncBatchNorm)")
    out_dir: str = arg("runs", "parent folder of the run folders")
    resume: str = arg("", "run folder to continue from its last checkpoint")


# -- Stage one: the autoencoder with an incrementally growing code (Sec. 3.4, Eq. 5) -----
class IAE(nn.Module):
    def __init__(self, args: Args, channels: int, image_size: int):
        super().__init__()
        downs = int(math.log2(image_size)) - 2  # stride-2 layers: 32 px -> 3 (to 4x4)
        kernel = image_size // 2 ** downs  # the last conv maps kernel x kernel to 1 x 1
        if downs < 1 or kernel * 2 ** downs != image_size:
            raise common.UserError(f"images of side {image_size} do not halve down to 4..7 "
                                   f"pixels; use --image-size 32 or 64")
        self.low = -1.0 if args.output == "tanh" else 0.0  # the model's range is [low, 1]
        widths = [args.filters * 2 ** i for i in range(downs)]  # 64, 128, 256 (, 512)
        to_range = Normalize([0.5] * channels, [0.5] * channels) if self.low else nn.Identity()
        down = [to_range,  # images in [0, 1] -> the model's range: 2x - 1 (tanh) or x
                nn.Conv2d(channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        up = [nn.Unflatten(1, (args.latent_dim, 1, 1)),  # [B, d] -> [B, d, 1, 1]
              nn.ConvTranspose2d(args.latent_dim, widths[-1], kernel, 1, 0)]  # no BN, no act
        for small, big in zip(widths, widths[1:]):
            down += [nn.Conv2d(small, big, 4, 2, 1), nn.BatchNorm2d(big), nn.LeakyReLU(0.2)]
        for big, small in zip(widths[::-1], widths[::-1][1:]):
            up += [nn.ConvTranspose2d(big, small, 4, 2, 1), nn.BatchNorm2d(small),
                   nn.LeakyReLU(0.2)]
        self.encoder = nn.Sequential(*down, nn.Conv2d(widths[-1], args.latent_dim, kernel),
                                     nn.Flatten())  # [B, C, S, S] in [0, 1] -> [B, d]
        self.decoder = nn.Sequential(*up, nn.ConvTranspose2d(widths[0], channels, 4, 2, 1),
                                     nn.Tanh() if self.low else nn.Sigmoid())  # in [low, 1]
        for m in self.modules():  # official init
            if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
                nn.init.orthogonal_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, x, active: int):  # x [B, C, S, S] in [0, 1]
        z = self.encoder(x)  # [B, d]
        z = z * (torch.arange(z.shape[1], device=z.device) < active)  # Sec. 3.4 mask m_t
        return self.decoder(z), z  # output [B, C, S, S] in [low, 1], masked codes [B, d]

    def images(self, z):  # codes [B, d] -> images [B, C, S, S] in [0, 1]
        return (self.decoder(z) - self.low) / (1 - self.low)


def active_dims(latent_dim: int, warmup_epochs: float, epoch: int, step: int, steps: int):
    """a_t, the code dimensions the decoder sees at step `step` of `epoch` [C]."""
    if warmup_epochs == 0:
        return latent_dim
    return min(latent_dim, int(latent_dim * (epoch + step / steps) / warmup_epochs + 1))  # e_t


class Perceptual(nn.Module):
    """L_Perc of Eq. (5) on frozen VGG19 features relu1_1, relu2_1, conv3_1 [C]."""
    URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"  # torchvision ImageNet

    def __init__(self):
        super().__init__()
        conv = lambda a, b: nn.Conv2d(a, b, 3, padding=1)  # noqa: E731
        features = nn.Sequential(  # VGG19's features[:11], the same indices as torchvision
            conv(3, 64), nn.ReLU(), conv(64, 64), nn.ReLU(), nn.MaxPool2d(2),
            conv(64, 128), nn.ReLU(), conv(128, 128), nn.ReLU(), nn.MaxPool2d(2), conv(128, 256))
        try:
            state = torch.hub.load_state_dict_from_url(self.URL, progress=False)
        except (OSError, RuntimeError) as error:
            raise common.missing_weights("the VGG19 weights for the perceptual loss",
                                         self.URL, error) from None
        features.load_state_dict({key[len("features."):]: value for key, value in state.items()
                                  if key.startswith("features.") and int(key.split(".")[1]) < 11})
        self.slices = nn.ModuleList([features[:2], features[2:7], features[7:]])
        self.normalize = Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])  # ImageNet
        self.requires_grad_(False).eval()

    def features(self, x):  # x [B, C, H, W] in [0, 1] -> the three layers' features
        h, outputs = self.normalize(x.expand(-1, 3, -1, -1)), []
        for layers in self.slices:
            outputs.append(h := layers(h))
        return outputs

    def forward(self, output, target):  # images in [0, 1]; fp32 under bf16 autocast too
        with torch.autocast(output.device.type, enabled=False):
            with torch.no_grad():
                target_features = self.features(target.float())
            return 0.5 * sum(F.mse_loss(a, b) for a, b in zip(self.features(output.float()),
                                                                target_features))


def autoencoder_loss(output, x, low: float, perceptual, perc_weight: float) -> torch.Tensor:
    """Eq. (5): output in the model's range [low, 1], images x in [0, 1]."""
    output, target = output.float(), x * (1 - low) + low  # the data in [low, 1]
    loss = F.mse_loss(output, target)
    if perc_weight > 0:
        loss = loss + perc_weight * perceptual((output - low) / (1 - low), x)
    return loss


def without_holdout(args, images: torch.Tensor) -> torch.Tensor:
    """The training images stage one trains on: all but the last --holdout (MNIST's 5,000,
    which choose the Parzen width and the LDE's epoch)."""
    if args.holdout >= len(images):
        raise common.UserError(f"--holdout {args.holdout} leaves none of the {len(images)} "
                               f"training images")
    return images[:len(images) - args.holdout]


def train(args: Args, given: set):
    """Stage one; ends with the ex-post N(0, I), MVG and GMM. Returns (folder, args)."""
    args, checkpoint, device, train_images, test_images = common.start(
        args, given, "iae_lde", resumable=LDE_SETTINGS, keep=without_holdout)
    data_shape = tuple(train_images.shape[1:3])  # channels, image size (square images)
    model = IAE(args, *data_shape).to(device)
    perceptual = Perceptual().to(device) if args.perc_weight > 0 else None
    model = model.to(memory_format=common.memory_format(device))  # channels_last on CUDA
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.5, 0.999))
    folder, start_epoch = common.open_run("iae_lde", args, checkpoint, model, optimizer)
    wrapped = common.parallel(model, args.compile, args.sync_bn)  # DDP (torchrun), compiled

    state = checkpoint  # (a run resumed with no epoch left to train: its own)
    for epoch in range(start_epoch, args.epochs):
        lr = common.set_lr(optimizer, args.lr / 2 ** sum(epoch >= d for d in args.lr_drops))
        model.train()
        steps = common.Epoch(folder, args.seed, epoch, args.batch_size, total=args.epochs)
        for step, x in enumerate(steps.batches(train_images, args.flip)):  # [B, C, S, S]
            active = active_dims(args.latent_dim, args.warmup_epochs, epoch, step, steps.total)
            with common.autocast(device):
                output, _ = wrapped(x, active)
                loss = autoencoder_loss(output, x, model.low, perceptual, args.perc_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps.add(loss=loss)
        steps.end(active_dims=active, lr=lr)  # the epoch's mean loss, in log.jsonl
        common.save_test_reconstructions(model, test_images, folder, model.images)
        state = common.save_epoch(folder, "iae_lde", args, epoch, model, optimizer, data_shape)
    codes = common.gather_rows(common.encode_all(model.eval().encoder, train_images))  # [N, d]
    samplers = common.fit_samplers(codes, args.seed, args.gmm_components)
    common.keep_samplers(state, samplers, model, test_images, folder, args.seed, model.images)
    return folder, args


# -- Stage two: the latent density estimator (Sec. 3.3, Fig. 4, Eq. 2-4) -----------------
class LDE(nn.Module):
    def __init__(self, latent_dim: int, components: int):
        super().__init__()
        self.latent_dim, self.components = latent_dim, components
        layers = math.ceil(math.log2(latent_dim))  # dilations 1, 2, .., 2^(layers-1)
        self.pad = 2 ** layers  # P zeros: the receptive field, P >= d
        self.widths = [2] + [16 * 2 ** i for i in range(layers)]  # armdn00's 2, 16, 32, ..
        blocks = []
        for i, (a, b) in enumerate(zip(self.widths, self.widths[1:])):
            blocks += [nn.Conv1d(a, b, 2, dilation=2 ** i), nn.BatchNorm1d(b), nn.LeakyReLU(0.2)]
        self.causal = nn.Sequential(*blocks)
        self.head = nn.Conv1d(self.widths[-1], 3 * components, 1)  # the mixture density network
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z):  # z [B, n], n <= d: the first n code dimensions
        values = F.pad(z, (self.pad, 0))[:, :-1]  # [B, P + n - 1]: zeros p, z without its last
        mask = (torch.arange(values.shape[1], device=z.device) >= self.pad).to(z.dtype)
        h = torch.stack([values, mask.expand_as(values)], 1)  # [B, 2, P + n - 1]: (z, m)
        h = self.causal(h)  # [B, C, n]: h_i sees positions i .. i + P - 1, i.e. p and z_<i
        logits, mu, log_sigma = self.head(h).transpose(1, 2).chunk(3, dim=2)  # [B, n, K] each
        return logits.log_softmax(2), mu, log_sigma  # log pi, mu, log sigma of Eq. (3)


def mixture_nll(log_pi, mu, log_sigma, z) -> torch.Tensor:
    """-log p(z_i | z_<i) of Eq. (3) for every dimension: [B, n, K] params, z [B, n] -> [B, n]."""
    log_normal = (-0.5 * ((z[..., None] - mu) * torch.exp(-log_sigma)) ** 2 - log_sigma
                  - 0.5 * math.log(2 * math.pi))
    return -torch.logsumexp(log_pi + log_normal, dim=2)


class LDESampler:
    """The LDE as a latent sampler like common.LatentSampler; `settings`: how it was fitted."""

    def __init__(self, lde: LDE, settings: dict):
        self.lde, self.settings = lde.eval(), settings

    @torch.no_grad()
    def sample(self, n: int, seed: int, device="cpu") -> torch.Tensor:
        """n codes [n, d] drawn one dimension at a time, z_i ~ p(z_i | z_<i)."""
        lde, g = self.lde.to(device), torch.Generator(device).manual_seed(seed)
        z = torch.zeros(n, lde.latent_dim, device=device)
        for i in range(lde.latent_dim):  # position i's output ignores z_i (still 0) and on
            log_pi, mu, log_sigma = (p[:, i] for p in lde(z[:, :i + 1]))  # [n, K] each
            k = torch.multinomial(log_pi.exp(), 1, generator=g)  # [n, 1] component
            noise = torch.randn(n, 1, generator=g, device=device)
            z[:, i] = (mu.gather(1, k) + log_sigma.gather(1, k).exp() * noise).squeeze(1)
        return z

    @torch.no_grad()
    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        """log p(z) of Eq. (2) in nats for codes [N, d] -> [N]."""
        device = next(self.lde.parameters()).device
        return torch.cat([-mixture_nll(*self.lde(z), z).sum(1).double().cpu()
                          for z in codes.float().to(device).split(1000)])

    def state_dict(self) -> dict:
        return {"module": "iae_lde", "latent_dim": self.lde.latent_dim,
                "components": self.lde.components, "settings": self.settings,
                "weights": self.lde.state_dict()}


def sampler_from_state(state: dict) -> LDESampler:
    """A stored LDE rebuilt (its state names this file: eval.py finds it so in any run)."""
    lde = LDE(state["latent_dim"], state["components"])
    lde.load_state_dict(state["weights"])
    return LDESampler(lde, state["settings"])


def train_lde(codes: torch.Tensor, args: Args, folder: Path, device, state: dict | None = None,
              held: torch.Tensor | None = None):
    """Eq. (4) by Adam on the codes [N, d]; the epoch kept has the lowest NLL of `held`, the
    codes of images the run held out (MNIST), else of a random --lde-holdout share of `codes`
    left out of the fit. With `state`, the run's checkpoint, the fit is stored in it each
    epoch (a stopped fit of the same settings and encoder epoch continues from there); a
    checkpoint rewritten meanwhile by another process (a run still training) stops it."""
    torch.manual_seed(args.seed)
    lde = LDE(codes.shape[1], args.lde_components).to(device)
    optimizer = torch.optim.Adam(lde.parameters(), lr=args.lde_lr, betas=(0.5, 0.999))
    own = held is not None and len(held) > 0  # the run's held-out images' codes
    settings = {"latent_dim": codes.shape[1], "source": (state or {}).get("epoch", 0),
                "seed": args.seed, "held_out_codes": len(held) if own else 0,
                **{k: getattr(args, k) for k in LDE_SETTINGS}}
    start, best = 0, {"nll": math.inf, "epoch": 0, "model": {}}  # on the held-out codes
    stored = (state or {}).get("lde_fit", {})
    if stored.get("settings") == settings:  # the same fit, stopped (or done): it continues
        lde.load_state_dict(stored["model"])
        optimizer.load_state_dict(stored["optimizer"])
        start, best = stored["epoch"], stored["best"]
        print(f"continuing the LDE after its epoch {start}")
    if not own:  # a random share of the codes (not the last: files may be sorted by class)
        cut = int(len(codes) * args.lde_holdout)
        order = torch.randperm(len(codes), generator=torch.Generator().manual_seed(args.seed))
        codes, held = codes[order[cut:]], codes[order[:cut]]
    codes = codes.to(device)
    path = folder / common.CHECKPOINT
    stamp = lambda: path.stat().st_mtime_ns if path.exists() else None  # noqa: E731
    written = stamp()  # the checkpoint as this fit last saw it
    if args.lde_batch_size > len(codes):
        raise common.UserError(f"--lde-batch-size {args.lde_batch_size} is larger than the "
                               f"{len(codes)} codes it trains on")
    for epoch in range(start, args.lde_epochs):
        lr = common.set_lr(optimizer, args.lde_lr / 2 ** sum(epoch >= d for d in args.lde_lr_drops))
        lde.train()
        steps = common.Epoch(folder, args.seed, epoch, args.lde_batch_size,
                             total=args.lde_epochs, label="LDE epoch")
        for index in steps.orders(len(codes), device):  # [B] rows of the codes
            z = codes[index]  # [B, d]
            loss = mixture_nll(*lde(z), z).mean()  # Eq. (4), also averaged over the batch
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            steps.add(loss=loss)
        held_out = {}
        if len(held):  # eval mode: batch norms with their running statistics; nats per dim
            nll = -LDESampler(lde, {}).log_prob(held).mean().item() / codes.shape[1]
            held_out["validation_loss"] = nll
            if nll < best["nll"]:
                best = {"nll": nll, "epoch": epoch + 1,
                        "model": {k: v.clone() for k, v in lde.state_dict().items()}}
        steps.end(stage="lde", **held_out, lr=lr)  # the epoch's mean NLL per dim, in log.jsonl
        if state is not None:
            if stamp() != written:
                raise common.UserError(f"{path} was rewritten while the LDE was fitted (is the "
                                       f"run still training?); the LDE is not stored")
            state["lde_fit"] = {"settings": settings, "epoch": epoch + 1, "best": best,
                                "model": lde.state_dict(), "optimizer": optimizer.state_dict()}
            common.atomic_save(state, path)
            written = stamp()
            common.LAST_SAVED[:] = [folder, f"the LDE fit of epoch {epoch + 1}",
                                    "--fit-lde" if args.fit_lde else "--resume"]
    if best["model"]:
        lde.load_state_dict(best["model"])
        print(f"the LDE of epoch {best['epoch']} is kept: held-out NLL {best['nll']:.4f} per dim")
    kept = best["epoch"] or args.lde_epochs
    return LDESampler(lde, {**settings, "kept_epoch": kept})


def data_splits(run_args: dict, data_root: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(the images a run trained on, the images it held out): the training split without,
    and with only, its last --holdout images (uint8)."""
    images = common.run_images(run_args, "train", data_root)
    trained = without_holdout(Args(**run_args), images)
    return trained, images[len(trained):]


def fit_lde(run_dir: str, args: Args, given: set):
    """Stage two on any finished run with an encoder: the LDE of the codes of the images it
    trained on, its epoch chosen on those it held out where it has them (common.run_splits);
    stored in its checkpoint as the sampler `lde`; samples_lde.png. (Test codes: eval.py.)"""
    method, folder = common.method_of(run_dir), Path(run_dir)
    if not hasattr(method, "encode"):
        raise common.UserError(f"{run_dir} is a {method.__name__} run, which has no encoder; "
                               f"the LDE needs codes")
    device, state = common.pick_device(args.device), common.load_checkpoint(run_dir)
    if not state["samplers"]:
        raise common.UserError(f"{run_dir} has not finished training (its checkpoint holds no "
                               f"samplers yet); finish it with --resume first")
    common.LAST_SAVED[:] = [folder, f"the checkpoint of epoch {state['epoch'] + 1}",
                            "--fit-lde" if args.fit_lde else "--resume"]
    run = method.load_run(run_dir, device)
    root = args.data_root if "data_root" in given else run.args["data_root"]
    images, held = common.run_splits(method, run.args, root)
    encode = lambda x: common.encode_all(lambda b: method.encode(run, b), x.to(device))  # noqa
    codes, held = encode(images), encode(held) if len(held) else None  # [N, d] each
    print(f"stage two: the LDE on {len(codes)} codes of dimension {codes.shape[1]}")
    if "lde" in state["samplers"]:
        print(f"replacing the run's LDE, fitted with {state['samplers']['lde']['settings']}")
    run.samplers["lde"] = train_lde(codes, args, folder, device, state, held)
    state["samplers"]["lde"] = run.samplers["lde"].state_dict()
    common.atomic_save(state, folder / common.CHECKPOINT)
    common.save_grid(method.sample(run, 64, "lde", args.seed), folder / "samples_lde.png")


# -- Sampling: codes from a sampler (the LDE or an ex-post one), decoded by the IAE -------
def load_run(run_dir: str, device: str = "cpu") -> common.Run:
    """A trained run: the model in eval mode on `device`, decoding with its own output range
    (IAE.images), and its samplers, the LDE rebuilt."""
    run = common.load_run(run_dir, device, lambda args, shape: IAE(Args(**args), *shape))
    samplers = {k: sampler_from_state(v) if isinstance(v, dict) else v
                for k, v in run.samplers.items()}
    return run._replace(samplers=samplers, images=run.model.images)


encode, decode, sample = common.encode, common.decode, common.sample  # decode: run.images


def with_dataset_defaults(args: Args, given: set, run_args: dict | None = None) -> Args:
    """The official per-data-set settings (PER_DATASET) for every flag not typed; with
    `run_args` (--fit-lde), the LDE settings of that run instead, where it has them."""
    dataset = run_args["dataset"] if run_args else args.dataset
    defaults = {**PER_DATASET[dataset], **(run_args or {})}
    names = LDE_SETTINGS + ("seed",) if run_args else tuple(PER_DATASET[dataset])
    return dataclasses.replace(args, **{k: defaults[k] for k in names
                                        if k in defaults and k not in given})


def main(args: Args, given: set):
    if args.fit_lde:  # K and the LDE schedule: typed, else the run's own, else its data set's
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            raise common.UserError("--fit-lde runs in one process: start it with python")
        args = with_dataset_defaults(args, given, common.load_checkpoint(args.fit_lde)["args"])
        return fit_lde(args.fit_lde, args, given)
    if not args.resume:  # d, W, beta, K, output, holdout and epochs of the official scripts
        args = with_dataset_defaults(args, given)
    folder, args = train(args, given)
    if common.end_processes() == 0:  # under torchrun, stage two runs in rank 0 alone
        fit_lde(str(folder), args, {"data_root"})
    print(f"done: grids, log.jsonl and checkpoint in {folder}")


# -- The paper's figures, which eval.py prints beside ours -----------------------------
PAPER_PARZEN = "326 +- 2 nats, AE + LDE and IAE + LDE alike (Table 2; 28x28, ours 32x32)"


def paper_parzen(run_args: dict, samples: int) -> str:
    """Table 2's figure, which eval.py --parzen prints beside ours for the official MNIST run
    (every setting the official scripts') and 10,000 samples; empty for any other run."""
    official = dataclasses.asdict(with_dataset_defaults(Args(dataset="mnist"), set()))
    return PAPER_PARZEN if samples == 10000 and not common.off_paper(run_args, official) else ""


if __name__ == "__main__":
    common.cli(main, Args, __doc__)
