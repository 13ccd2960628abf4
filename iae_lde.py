"""Incremental-latent autoencoder + latent density estimator (IAE + LDE, Yoo et al. 2020).

Paper: "Unprioritized autoencoder" (ICIP 2020; arXiv 1902.04294, "Density Estimation and
Incremental Learning of Latent Vector for Generative Autoencoders"), J. Yoo, H. Lee and
N. Kwak, https://arxiv.org/abs/1902.04294
Official code: https://github.com/yoojy31/unpriortized-autoencoder

The method, in two stages. Stage one trains a deterministic, fully convolutional autoencoder
whose code grows during training: at first only its first dimension reaches the decoder,
the others multiplied by zero, and the number of active dimensions rises linearly to all d
over W epochs (Sec. 3.4), so that the first dimensions learn the most salient factors. The
loss is pixel MSE plus a small perceptual loss (Eq. 5). Stage two freezes the encoder and
fits an autoregressive density to its codes (Sec. 3.3): p(z) = prod_i p(z_i | z_<i), each
factor a mixture of K Gaussians whose parameters come from dilated causal 1-D convolutions
over the code dimensions (Fig. 4). New images are decoded samples of that density, drawn
one dimension at a time. The LDE is offered as the sampler `lde` next to the ex-post N(0, I),
MVG and GMM, and `--fit-lde RUN` fits it to the codes of any run of this project.

Key equations:
    z = E(x) * m_t,  m_t = (1 .. 1, 0 .. 0) with a_t = min(d, int(d e_t / W + 1)) ones,
        e_t the fractional epoch; no mask after training                       Sec. 3.4
    L_AE = MSE(x, D(z)) + beta * L_Perc(x, D(z)),  beta = 0.1                  Eq. (5)
        L_Perc = 0.5 sum_l MSE(phi_l(x), phi_l(x_hat)), VGG19 relu1_1, relu2_1, conv3_1
    p(z) = prod_i p(z_i | z_<i)                                                Eq. (2)
    p(z_i | z_<i) = sum_k pi_ik N(z_i; mu_ik, sigma_ik^2)                     Eq. (3)
        pi = softmax, mu linear, sigma = exp, all from h_i, which sees z_<i only (Fig. 4)
    L_z = -(1/d) sum_i log p(z_i | z_<i)                                       Eq. (4)

Reproduce (the paper reports images and Parzen log-likelihoods, no FID):
    MNIST, Table 2 (d 8, W 96, no perceptual loss; the official LDE used epoch 390):
        python iae_lde.py --dataset mnist --epochs 390
        python iae_lde.py --parzen runs/iae_lde-mnist-<time>     # paper: 326 +- 2 nats
    AE + LDE (no incremental learning), any data set: add --warmup-epochs 0
    CIFAR-10 (d 256, W 128, perceptual 0.1; official LDE at epoch 250):
        python iae_lde.py --dataset cifar10 --epochs 250
    CelebA 64x64 (d 100, W 100; official LDE at epoch 150), Fig. 5 and 6:
        python iae_lde.py --dataset celeba --data-root DATA --epochs 150
    The LDE on another run, then its FID:  python iae_lde.py --fit-lde runs/dae-cifar10-<time>
        python eval.py runs/dae-cifar10-<time> --samplers lde gmm

Deviations and choices (where the paper is silent we follow the official code, [C]):
  - Autoencoder [C]: DCGAN-style, no fully connected layer: channels 64, 128, 256(, 512)
    to a 4x4 map, a conv to the 1x1 code; the decoder mirrors it (its first ConvT without
    BN or activation), tanh output on images in [-1, 1]. Orthogonal conv init, zero
    biases, BN weights from N(0, 0.02) (mean 0, sic). The decoder module returns 2y for the
    tanh pre-activation y, the logit of the same image in [0, 1] ((tanh(y) + 1) / 2 =
    sigmoid(2y)), so the shared sigmoid-based helpers (grids, eval.py) show the tanh output.
  - MNIST is 32x32 here (zero-padded, as in every file of this project): one more stride-2
    layer than the official 28-px model; the Parzen estimate cuts the border off again.
  - Schedules, d, W and the perceptual weight per data set as the official scripts [C]
    (Args and OFFICIAL below; folder and fake take CIFAR's, digits MNIST's).
  - Perceptual loss [C]: the third layer is conv3_1 before its ReLU (the paper says
    relu3_1); ImageNet normalisation; grey repeated to RGB. Only VGG19's first 11 feature
    layers are built, loaded from torchvision's ImageNet file (vgg19-dcbb9e9d.pth).
  - LDE [C]: ceil(log2 d) blocks Conv1d(kernel 2, dilation 2^i) -> BatchNorm1d ->
    LeakyReLU(0.2), channels 16, 32, ... capped at 1024 (the official list stops after 7
    layers; d = 256 needs 8), a 1x1 conv to 3K, N(0, 0.02) init. In training mode its BN
    pools statistics over all positions, the zeros included [C]; in eval mode it is exactly
    causal. The NLL uses logsumexp, not the official log(density + 1e-12); the codes are
    encoded once (eval mode, no flips), not per batch [equivalent].
  - Sampling [C]: z_i drawn from its mixture given z_<i, i = 1 .. d, temperature 1.
  - Parzen window (Table 2; Goodfellow et al.'s protocol): a Gaussian kernel on 10,000
    samples, its width chosen from 10 values log-spaced over [0.1, 1] on a validation set
    (the last tenth of the training split, at most 10,000 images, which the autoencoder
    has seen), mean log-likelihood of the test images +- standard error.
  - Under torchrun (README, "Several GPUs") the active-dimension schedule is the same in
    every process; stage two, the LDE, runs in rank 0 alone (its codes are small), and
    --fit-lde and --parzen take one process.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

import common
from common import arg

# (latent dim d, warm-up epochs W, perceptual weight) of the official scripts [C]
OFFICIAL = {"mnist": (8, 96, 0.0), "cifar10": (256, 128, 0.1), "celeba": (100, 100, 0.1)}
OFFICIAL.update(digits=OFFICIAL["mnist"], folder=OFFICIAL["cifar10"], fake=OFFICIAL["cifar10"])
PAPER_PARZEN = {"mnist": "AE + LDE 326 +- 2, IAE + LDE 326 +- 2 nats (28x28, d 8)"}  # Table 2
LDE_FILE = "lde_checkpoint.pt"  # stage two's progress, so that an interrupted fit continues


@dataclass
class Args:
    dataset: str = arg("cifar10", "data set", choices=common.DATASETS)
    data_root: str = arg("data", "folder of the data set (torchvision downloads into it)")
    image_size: int = arg(0, "image side; 0: the data set's own (64 for celeba, else 32)", low=0)
    crop: int = arg(0, "centre crop before resizing; 0: 140 for celeba, none otherwise", low=0)
    flip: bool = arg(False, "random horizontal flips (the official code uses none)")
    filters: int = arg(64, "width of the first conv; doubles per stride-2 layer", low=1)
    latent_dim: int = arg(-1, "code size d; -1: official (MNIST 8, CIFAR-10 256, CelebA 100)",
                          low=-1)
    warmup_epochs: float = arg(-1, "W, epochs until all d dims are active; 0: plain AE; -1: "
                               "official (96, 128, 100)", low=-1)
    perc_weight: float = arg(-1, "beta of Eq. (5); -1: official (0.1, 0 for MNIST)", low=-1)
    epochs: int = arg(200, "autoencoder epochs", low=1)
    batch_size: int = arg(128, "autoencoder batch size", low=1)
    lr: float = arg(1e-3, "Adam learning rate of the autoencoder", low=0)
    lr_drops: list[int] = arg([20, 50, 100, 200], "epochs at which the lr halves", low=0)
    components: int = arg(30, "K, Gaussians per dimension in the LDE", low=1)
    lde_max_channels: int = arg(1024, "widest LDE layer (channels 16, 32, ... up to it)", low=2)
    lde_epochs: int = arg(200, "LDE epochs", low=1)
    lde_batch_size: int = arg(128, "LDE batch size", low=1)
    lde_lr: float = arg(2e-4, "Adam learning rate of the LDE", low=0)
    lde_lr_drops: list[int] = arg([15, 35, 60, 100], "epochs at which the LDE lr halves", low=0)
    fit_lde: str = arg("", "only stage two: fit the LDE on the codes of this run (any method)")
    parzen: str = arg("", "only evaluate: Parzen log-likelihood of every sampler of this run")
    parzen_samples: int = arg(10000, "generated images for the Parzen window", low=1)
    gmm_components: int = arg(10, "components of the ex-post GMM", low=1)
    seed: int = arg(0, "seed of initialisation, batch order and samplers")
    device: str = arg("auto", "auto (cuda if available), cpu, cuda, cuda:N")
    compile: bool = arg(False, "torch.compile the autoencoder (worth it on CUDA only)")
    sync_bn: bool = arg(False, "under torchrun: batch-norm statistics over every process's "
                        "batch (SyncBatchNorm, CUDA)")
    out_dir: str = arg("runs", "parent folder of the run folders")
    resume: str = arg("", "run folder to continue from its last checkpoint")


def official(args: Args) -> Args:
    """The -1 settings replaced by the official per-data-set values."""
    d, warmup, perc = OFFICIAL[args.dataset]
    return Args(**{**vars(args), "latent_dim": d if args.latent_dim < 0 else args.latent_dim,
                   "warmup_epochs": warmup if args.warmup_epochs < 0 else args.warmup_epochs,
                   "perc_weight": perc if args.perc_weight < 0 else args.perc_weight})


# ----------------------------------------------------------------------------------------
# Stage one: the autoencoder with an incrementally growing code (Sec. 3.4, Eq. 5)
# ----------------------------------------------------------------------------------------


class ConvEncoder(nn.Sequential):
    def forward(self, x):  # [B, C, S, S] in [0, 1]
        return super().forward(x * 2 - 1).flatten(1)  # [B, d]


class ConvDecoder(nn.Sequential):
    def forward(self, z):  # [B, d]
        return 2 * super().forward(z[:, :, None, None])  # [B, C, S, S]: 2y, y pre-tanh


class IAE(nn.Module):
    def __init__(self, args: Args, channels: int, image_size: int):
        super().__init__()
        downs = int(math.log2(image_size)) - 2  # stride-2 layers: 32 px -> 3 (to 4x4)
        kernel = image_size // 2 ** downs  # the last conv maps kernel x kernel to 1 x 1
        if downs < 1 or kernel * 2 ** downs != image_size:
            raise common.UserError(f"images of side {image_size} do not halve down to 4..7 "
                                   f"pixels; use --image-size 32 or 64")
        widths = [args.filters * 2 ** i for i in range(downs)]  # 64, 128, 256 (, 512)
        down = [nn.Conv2d(channels, widths[0], 4, 2, 1), nn.LeakyReLU(0.2)]
        up = [nn.ConvTranspose2d(args.latent_dim, widths[-1], kernel, 1, 0)]  # no BN, no act
        for small, big in zip(widths, widths[1:]):
            down += [nn.Conv2d(small, big, 4, 2, 1), nn.BatchNorm2d(big), nn.LeakyReLU(0.2)]
        for big, small in zip(widths[::-1], widths[::-1][1:]):
            up += [nn.ConvTranspose2d(big, small, 4, 2, 1), nn.BatchNorm2d(small),
                   nn.LeakyReLU(0.2)]
        self.encoder = ConvEncoder(*down, nn.Conv2d(widths[-1], args.latent_dim, kernel))
        self.decoder = ConvDecoder(*up, nn.ConvTranspose2d(widths[0], channels, 4, 2, 1))
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
        return self.decoder(z), z  # logits [B, C, S, S], masked codes [B, d]


def active_dims(latent_dim: int, warmup_epochs: float, epoch: int, step: int, steps: int):
    """a_t, the code dimensions the decoder sees at step `step` of `epoch` [C]."""
    if warmup_epochs == 0:
        return latent_dim
    fractional_epoch = epoch + step / steps
    return min(latent_dim, int(latent_dim * fractional_epoch / warmup_epochs + 1))


VGG19_URL = "https://download.pytorch.org/models/vgg19-dcbb9e9d.pth"  # torchvision ImageNet


class Perceptual(nn.Module):
    """L_Perc of Eq. (5) on frozen VGG19 features relu1_1, relu2_1, conv3_1 [C]."""

    def __init__(self):
        super().__init__()
        conv = lambda a, b: nn.Conv2d(a, b, 3, padding=1)  # noqa: E731
        features = nn.Sequential(  # VGG19's features[:11], the same indices as torchvision
            conv(3, 64), nn.ReLU(), conv(64, 64), nn.ReLU(), nn.MaxPool2d(2),
            conv(64, 128), nn.ReLU(), conv(128, 128), nn.ReLU(), nn.MaxPool2d(2), conv(128, 256))
        try:
            state = torch.hub.load_state_dict_from_url(VGG19_URL, progress=False)
        except (OSError, RuntimeError) as error:
            raise common.missing_weights("the VGG19 weights for the perceptual loss",
                                         VGG19_URL, error) from None
        features.load_state_dict({key[len("features."):]: value for key, value in state.items()
                                  if key.startswith("features.") and int(key.split(".")[1]) < 11})
        self.slices = nn.ModuleList([features[:2], features[2:7], features[7:]])
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.requires_grad_(False).eval()

    def features(self, x):  # x [B, C, H, W] in [-1, 1]
        h = ((x.expand(-1, 3, -1, -1) + 1) / 2 - self.mean) / self.std
        outputs = []
        for layers in self.slices:
            h = layers(h)
            outputs.append(h)
        return outputs

    def forward(self, output, target):  # images in [-1, 1]
        with torch.no_grad():
            target_features = self.features(target)
        return 0.5 * sum(F.mse_loss(a, b) for a, b in zip(self.features(output), target_features))


def autoencoder_loss(logits, x, perceptual, perc_weight: float) -> torch.Tensor:
    """Eq. (5) on images in [-1, 1]: x_hat = tanh(y) = tanh(logits / 2)."""
    output, target = torch.tanh(logits.float() / 2), x * 2 - 1
    loss = F.mse_loss(output, target)
    if perc_weight > 0:
        loss = loss + perc_weight * perceptual(output, target)
    return loss


def train(args: Args, given: set):
    """Stage one; ends with the ex-post N(0, I), MVG and GMM. Returns (folder, args)."""
    args, checkpoint, device, train_images, test_images = common.start(args, given, "iae_lde")
    args = official(args)
    data_shape = train_images.shape[1], train_images.shape[-1]  # channels, image size
    model = IAE(args, *data_shape).to(device)
    perceptual = Perceptual().to(device) if args.perc_weight > 0 else None
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    optimizer = torch.optim.Adam(model.parameters(), lr=args.lr, betas=(0.5, 0.999))
    folder, start_epoch = common.open_run("iae_lde", args, checkpoint, model, optimizer)
    forward = common.parallel(model, args.compile, args.sync_bn)  # DDP under torchrun

    batch = common.local_batch(args.batch_size)  # this process's share (torchrun)
    steps = len(train_images) // batch
    state = checkpoint  # a resumed run that had finished all its epochs refits its samplers
    for epoch in range(start_epoch, args.epochs):
        lr = args.lr * 0.5 ** sum(epoch >= drop for drop in args.lr_drops)
        for group in optimizer.param_groups:
            group["lr"] = lr
        model.train()
        started, loss_sum = time.time(), torch.zeros((), device=device)
        bar = common.progress(common.batches(train_images, batch, args.seed, epoch, args.flip),
                              total=steps, desc=f"epoch {epoch + 1}/{args.epochs}")
        for step, x in enumerate(bar):
            active = active_dims(args.latent_dim, args.warmup_epochs, epoch, step, steps)
            with common.autocast(device):
                logits, _ = forward(x, active)
                loss = autoencoder_loss(logits, x, perceptual, args.perc_weight)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
            if step % 50 == 0:  # a sync every 50 steps: progress bar and divergence check
                bar.set_postfix(loss=f"{loss.item():.4f}", active=active)
                common.stop_if_diverged(loss.item(), epoch, folder)
        mean_loss = common.mean_over_processes(loss_sum).item() / steps
        common.stop_if_diverged(mean_loss, epoch, folder)
        seconds = time.time() - started
        common.log_epoch(folder, {"epoch": epoch + 1, "loss": mean_loss, "active_dims": active,
                                  "lr": lr, "seconds": seconds,
                                  "images_per_sec": steps * args.batch_size / seconds})
        common.save_test_reconstructions(model, test_images, folder)
        state = common.save_epoch(folder, "iae_lde", args, epoch, model, optimizer, data_shape)
    common.fit_ex_post(state, model, train_images, test_images, folder, args.seed,
                       args.gmm_components)
    return folder, args


# ----------------------------------------------------------------------------------------
# Stage two: the latent density estimator (Sec. 3.3, Fig. 4, Eq. 2-4)
# ----------------------------------------------------------------------------------------


class LDE(nn.Module):
    def __init__(self, latent_dim: int, components: int = 30, max_channels: int = 1024):
        super().__init__()
        self.latent_dim, self.components, self.max_channels = latent_dim, components, max_channels
        layers = math.ceil(math.log2(latent_dim))  # dilations 1, 2, .., 2^(layers-1)
        self.pad = 2 ** layers  # P zeros: the receptive field, P >= d
        widths = [2] + [min(16 * 2 ** i, max_channels) for i in range(layers)]
        blocks = []
        for i, (a, b) in enumerate(zip(widths, widths[1:])):
            blocks += [nn.Conv1d(a, b, 2, dilation=2 ** i), nn.BatchNorm1d(b), nn.LeakyReLU(0.2)]
        self.causal = nn.Sequential(*blocks)
        self.head = nn.Conv1d(widths[-1], 3 * components, 1)  # the mixture density network
        for m in self.modules():
            if isinstance(m, nn.Conv1d):
                nn.init.normal_(m.weight, 0.0, 0.02)
                nn.init.zeros_(m.bias)

    def forward(self, z):  # z [B, n], n <= d: the first n code dimensions
        n = z.shape[1]
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
    """The LDE as a latent sampler, like common.LatentSampler: sample, log_prob, state."""

    def __init__(self, lde: LDE):
        self.lde = lde.eval()

    @torch.no_grad()
    def sample(self, n: int, seed: int = 0, device="cpu") -> torch.Tensor:
        """n codes [n, d] drawn one dimension at a time, z_i ~ p(z_i | z_<i)."""
        lde, g = self.lde.to(device), torch.Generator(device).manual_seed(seed)
        z = torch.zeros(n, lde.latent_dim, device=device)
        for i in range(lde.latent_dim):  # position i's output ignores z_i (still 0) and on
            log_pi, mu, log_sigma = (p[:, i] for p in lde(z[:, :i + 1]))  # [n, K] each
            k = torch.multinomial(log_pi.exp(), 1, generator=g)  # [n, 1] component
            noise = torch.randn(n, 1, generator=g, device=device)
            z[:, i] = (mu.gather(1, k) + log_sigma.gather(1, k).exp() * noise)[:, 0]
        return z

    @torch.no_grad()
    def log_prob(self, codes: torch.Tensor) -> torch.Tensor:
        """log p(z) of Eq. (2) in nats for codes [N, d] -> [N]."""
        device = next(self.lde.parameters()).device
        return torch.cat([-mixture_nll(*self.lde(z), z).sum(1).double().cpu()
                          for z in codes.float().to(device).split(1000)])

    def state_dict(self) -> dict:
        lde = self.lde
        return {"module": "iae_lde", "latent_dim": lde.latent_dim, "components": lde.components,
                "max_channels": lde.max_channels, "weights": lde.state_dict()}

    @classmethod
    def from_state(cls, state: dict) -> LDESampler:
        lde = LDE(state["latent_dim"], state["components"], state["max_channels"])
        lde.load_state_dict(state["weights"])
        return cls(lde)


def sampler_from_state(state: dict) -> LDESampler:
    """What common.samplers_from_state calls for a stored LDE (its state names this file)."""
    return LDESampler.from_state(state)


LDE_SETTINGS = ("components", "lde_max_channels", "lde_batch_size", "lde_lr", "lde_lr_drops",
                "seed")


def train_lde(codes: torch.Tensor, args: Args, folder: Path, device, source: int = 0):
    """Eq. (4) by Adam on the codes [N, d]; continues from folder/LDE_FILE when that holds
    the same settings and codes from the same `source` (the encoder's epoch)."""
    torch.manual_seed(args.seed)
    lde = LDE(codes.shape[1], args.components, args.lde_max_channels).to(device)
    optimizer = torch.optim.Adam(lde.parameters(), lr=args.lde_lr, betas=(0.5, 0.999))
    settings = {"latent_dim": codes.shape[1], "source": source,
                **{k: getattr(args, k) for k in LDE_SETTINGS}}
    start = 0
    if (folder / LDE_FILE).exists():
        saved = torch.load(folder / LDE_FILE, map_location=device, weights_only=True)
        if saved["settings"] == settings:
            lde.load_state_dict(saved["model"])
            optimizer.load_state_dict(saved["optimizer"])
            start = saved["epoch"]
            print(f"continuing the LDE after its epoch {start}")
    if args.lde_batch_size > len(codes):
        raise common.UserError(f"--lde-batch-size {args.lde_batch_size} is larger than the "
                               f"{len(codes)} codes")
    codes, steps = codes.to(device), len(codes) // args.lde_batch_size
    for epoch in range(start, args.lde_epochs):
        lr = args.lde_lr * 0.5 ** sum(epoch >= drop for drop in args.lde_lr_drops)
        for group in optimizer.param_groups:
            group["lr"] = lr
        lde.train()
        started, loss_sum = time.time(), torch.zeros((), device=device)
        g = common.epoch_generator(args.seed, epoch)
        order = torch.randperm(len(codes), generator=g).to(device)
        for step in common.progress(range(steps), desc=f"LDE epoch {epoch + 1}/{args.lde_epochs}"):
            z = codes[order[step * args.lde_batch_size:(step + 1) * args.lde_batch_size]]
            loss = mixture_nll(*lde(z), z).mean()  # Eq. (4), also averaged over the batch
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_sum += loss.detach()
        nll = loss_sum.item() / steps
        common.stop_if_diverged(nll, epoch, folder)
        common.log_epoch(folder, {"stage": "lde", "epoch": epoch + 1, "nll_per_dim": nll,
                                  "lr": lr, "seconds": time.time() - started})
        common.atomic_save({"settings": settings, "epoch": epoch + 1, "model": lde.state_dict(),
                            "optimizer": optimizer.state_dict()}, folder / LDE_FILE)
    return LDESampler(lde)


def open_any_run(run_dir: str, args: Args, given: set):
    """A run of any method (its own load_run) and a loader of its data splits (uint8, CPU;
    --data-root when typed, else the run's own). Returns (method, run, device, load)."""
    method, device = common.method_of(run_dir), common.pick_device(args.device)
    run = method.load_run(run_dir, device)
    a, root = run.args, args.data_root if "data_root" in given else run.args["data_root"]
    return method, run, device, lambda split: common.load_images(
        a["dataset"], root, split, a["image_size"], a["crop"])


def fit_lde(run_dir: str, args: Args, given: set):
    """Stage two on any run with an encoder: encode its data, fit the LDE, store it in the
    run's checkpoint as the sampler `lde`, write samples_lde.png and compare the samplers'
    negative log-likelihood of the test codes."""
    method, run, device, load = open_any_run(run_dir, args, given)
    if not hasattr(method, "encode"):
        raise common.UserError(f"{run_dir} is a {method.__name__} run, which has no encoder; "
                               f"the LDE needs codes")
    folder = Path(run_dir)
    codes = {split: common.encode_all(lambda x: method.encode(run, x), load(split).to(device))
             for split in ("train", "test")}  # [N, d] each
    print(f"stage two: the LDE on {len(codes['train'])} codes of dimension "
          f"{codes['train'].shape[1]}")
    state = common.load_checkpoint(run_dir)
    run.samplers["lde"] = train_lde(codes["train"], args, folder, device, state["epoch"])
    state["samplers"]["lde"] = run.samplers["lde"].state_dict()
    common.atomic_save(state, folder / common.CHECKPOINT)
    common.save_grid(method.sample(run, 64, "lde", args.seed), folder / "samples_lde.png")
    nll = {name: -sampler.log_prob(codes["test"]).mean().item()
           for name, sampler in run.samplers.items()}
    common.log_epoch(folder, {"stage": "lde", "test_code_nll": nll})
    print("negative log-likelihood of the test codes, nats per code: " +
          ", ".join(f"{name} {value:.1f}" for name, value in nll.items()))
    return nll


# ----------------------------------------------------------------------------------------
# Parzen-window log-likelihood (Table 2) and the functions eval.py calls
# ----------------------------------------------------------------------------------------


def parzen_log_likelihood(samples, points, sigmas, batch_size: int = 200) -> torch.Tensor:
    """log p(x) under the Gaussian kernel density on samples [S, D], for each width sigma:
    log p(x) = logsumexp_s(-||x - s||^2 / (2 sigma^2)) - log S - (D/2) log(2 pi sigma^2).
    points [N, D] -> [len(sigmas), N], float64."""
    sigmas = torch.as_tensor(sigmas, dtype=torch.float64)[:, None, None]  # [W, 1, 1]
    n, dim = samples.shape
    rows = []
    for x in points.split(batch_size):
        dist2 = torch.cdist(x.double(), samples.double()) ** 2  # [b, S]
        rows.append(torch.logsumexp(-dist2 / (2 * sigmas ** 2), dim=2) - math.log(n)
                    - dim / 2 * torch.log(2 * math.pi * sigmas[..., 0] ** 2))
    return torch.cat(rows, dim=1)


def parzen(run_dir: str, args: Args, given: set) -> dict:
    """Table 2's protocol for every sampler of a run: width by validation, test mean +- s.e."""
    method, run, _, load = open_any_run(run_dir, args, given)
    train_images, test = load("train"), load("test")[:10000]
    valid = train_images[-min(10000, len(train_images) // 10):]
    cut = 2 if run.args["dataset"] == "mnist" else 0  # back to MNIST's own 28x28

    def flat(images):  # [N, C, S, S] in [0, 1] -> [N, D]
        return images[..., cut:images.shape[-1] - cut, cut:images.shape[-1] - cut].flatten(1).cpu()
    sigmas = torch.logspace(-1, 0, 10)
    results = {}
    for name in run.samplers:
        n = args.parzen_samples
        samples = torch.cat([flat(method.sample(run, min(500, n - i), name, args.seed + i))
                             for i in range(0, n, 500)])  # [n, D]
        best = parzen_log_likelihood(samples, flat(valid.float() / 255), sigmas).mean(1).argmax()
        ll = parzen_log_likelihood(samples, flat(test.float() / 255), sigmas[best:best + 1])[0]
        results[name] = {"log_likelihood": ll.mean().item(), "sigma": sigmas[best].item(),
                         "standard_error": (ll.std() / math.sqrt(len(ll))).item()}
        print(f"{name}: {results[name]['log_likelihood']:.1f} +- "
              f"{results[name]['standard_error']:.1f} nats (sigma {sigmas[best]:.3f})")
    if run.args["dataset"] in PAPER_PARZEN:
        print(f"paper (Table 2): {PAPER_PARZEN[run.args['dataset']]}")
    common.log_epoch(Path(run_dir), {"parzen": results, "samples": args.parzen_samples})
    return results


def load_run(run_dir: str, device: str = "cpu") -> common.Run:
    """A trained run: the model in eval mode on `device` and its fitted samplers (lde too)."""
    return common.load_run(run_dir, device, lambda args, shape: IAE(Args(**args), *shape))


# The autoencoder's decoder gives logits of [0, 1] images, so the shared functions apply.
encode, decode, sample = common.encode, common.decode, common.sample


def main(args: Args, given: set):
    if args.fit_lde and args.parzen:
        raise common.UserError("give --fit-lde or --parzen, not both")
    if (args.fit_lde or args.parzen) and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise common.UserError("--fit-lde and --parzen run in one process: start them with "
                               "python, not torchrun")
    if args.parzen:
        parzen(args.parzen, args, given)
    elif args.fit_lde:
        fit_lde(args.fit_lde, args, given)
    else:
        folder, args = train(args, given)
        rank = common.world()[0]
        common.end_processes()  # under torchrun, stage two runs in rank 0 alone
        if rank == 0:
            fit_lde(str(folder), args, given | {f.name for f in fields(Args)})
        print(f"done: grids, log.jsonl and checkpoint in {folder}")


if __name__ == "__main__":
    common.cli(main, Args, __doc__)
